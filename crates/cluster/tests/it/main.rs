//! The cluster's pieces against a real NATS server (started by each test
//! on a free port, JetStream in a temp dir) and the simulated Discord.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

mod connect;
mod fence;
mod lease;
mod log;
mod queue;
mod store;

use cluster::testing::NatsServer;
use cluster::{Cluster, ClusterConfig};

/// A node of cluster `name` on `nats`.
async fn node(nats: &NatsServer, name: &str, node: &str) -> Cluster {
    Cluster::connect(ClusterConfig::new(nats.url(), name, node))
        .await
        .unwrap()
}
