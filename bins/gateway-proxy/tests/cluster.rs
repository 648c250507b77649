//! The binary as a cluster: nodes (processes) on one real NATS server (on a
//! free port, JetStream in a temp dir) in front of the simulated Discord.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used)]
#![cfg(unix)]

mod common;

use std::time::Duration;

use common::Process;
use discord_sim::{Sim, SimConfig};
use tokio::time::Instant;

/// The environment of node `node` of cluster `name` on `nats`, running
/// shards `start..end` of `total`.
fn node_env(nats: &str, name: &str, node: &str, shards: (u32, u32, u32)) -> Vec<(String, String)> {
    let (start, end, total) = shards;
    [
        ("GATEWAY_PROXY_CLUSTER__NATS_URL", nats.to_owned()),
        ("GATEWAY_PROXY_CLUSTER__NAME", name.to_owned()),
        ("GATEWAY_PROXY_CLUSTER__NODE_ID", node.to_owned()),
        ("GATEWAY_PROXY_SHARDS", total.to_string()),
        ("GATEWAY_PROXY_SHARD_START", start.to_string()),
        ("GATEWAY_PROXY_SHARD_END", end.to_string()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_started_at_once_identify_paced_across_them() {
    let Some(nats) = cluster::testing::nats("three_nodes") else {
        return;
    };
    let mut config = SimConfig::default();
    config.shards = 12;
    config.max_concurrency = 2;
    config.guilds = 24;
    config.events_per_sec = 20;
    let sim = Sim::start(config).await.unwrap();
    // Discord's window (the sim's default, 5 s): the nodes pace by it.
    let window = sim.config().identify_interval;
    let start = Instant::now();
    let mut spawned = Vec::new();
    for (i, node) in ["a", "b", "c"].into_iter().enumerate() {
        let first = u32::try_from(i).unwrap() * 4;
        let env = node_env(&nats.url(), "three", node, (first, first + 4, 12));
        spawned.push(Process::spawn(&sim, &borrowed(&env)));
    }
    let mut nodes = Vec::new();
    for (process, serving) in spawned {
        nodes.push(
            process
                .serving_within(serving, Duration::from_secs(90))
                .await,
        );
    }
    let took = start.elapsed();
    let logs: Vec<String> = nodes.iter().map(Process::log).collect();
    assert_eq!(sim.identifies_refused(), 0, "{logs:#?}");
    assert_eq!(sim.identifies(), 12, "{logs:#?}");
    // Six shards per bucket: five spacings from the first identify to the
    // last; then the last shard's READY and guilds.
    let minimum = shard_pool::identify_spacing(window) * 5;
    assert!(
        took >= minimum,
        "all ready after {took:?}: under pacing's minimum {minimum:?}"
    );
    assert!(
        took <= minimum + minimum / 10,
        "all ready after {took:?}: more than 10 % over pacing's minimum {minimum:?}"
    );
    for (node, log) in ["a", "b", "c"].iter().zip(&logs) {
        assert!(log.contains("joined the cluster"), "{node}: {log}");
    }
    // Every node publishes its shards' events: one subject per shard.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut stream = async_nats::jetstream::new(client)
        .get_stream("three-events")
        .await
        .unwrap();
    let state = stream.info().await.unwrap().state.clone();
    assert_eq!(state.subjects_count, 12, "{state:?}");
    assert!(
        state.messages >= 12 * 25,
        "each shard's READY, guilds and events: {state:?}"
    );
}
