//! Shard leases: one node at a time runs a shard; a standby takes it once
//! the holder stops renewing; the holder then learns it lost it.

use std::time::Duration;

use cluster::testing;
use cluster::{Cluster, ClusterConfig};

async fn leasing(nats: &testing::NatsServer, node: &str) -> Cluster {
    let mut config = ClusterConfig::new(nats.url(), "leases", node);
    config.lease = Duration::from_secs(2);
    Cluster::connect(config).await.unwrap()
}

#[tokio::test]
async fn a_standby_takes_a_lease_once_its_holder_stops_renewing_and_the_holder_learns_it() {
    let Some(nats) = testing::nats("leases") else {
        return;
    };
    let a = leasing(&nats, "a").await.leases().await.unwrap();
    let b = leasing(&nats, "b").await.leases().await.unwrap();
    a.acquire(0..2).await.unwrap();
    // a renews: b waits for as long as it does.
    let keeping = tokio::spawn({
        let a = a.clone();
        async move { a.keep().await }
    });
    let waiting = tokio::time::timeout(Duration::from_secs(4), b.acquire(0..2)).await;
    assert!(waiting.is_err(), "b took a lease a renews");
    // a stops renewing (as a node that died): b has them a lease later.
    keeping.abort();
    tokio::time::timeout(Duration::from_secs(6), b.acquire(0..2))
        .await
        .expect("b takes the leases once they expire")
        .unwrap();
    // a, back, finds its leases gone at its next renewal.
    let lost = tokio::time::timeout(Duration::from_secs(3), a.keep())
        .await
        .expect("a learns it");
    assert_eq!(lost.shard, 0);
    assert_eq!(lost.why, "another node holds it now");
    // A clean stop gives the leases back at once.
    b.release().await;
    tokio::time::timeout(Duration::from_secs(1), a.acquire(0..2))
        .await
        .expect("released leases are free at once")
        .unwrap();
}
