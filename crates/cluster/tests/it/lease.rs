//! Shard leases: one node at a time runs a shard; another takes it once
//! the holder stops renewing, in a higher term; the holder then learns it
//! lost it. The live nodes: each sees the others, and one that stops
//! beating drops out.

use std::time::Duration;

use cluster::testing;
use cluster::{Changes, Cluster, ClusterConfig, Leases, Take};
use shard_pool::Holding as _;

async fn leasing(nats: &testing::NatsServer, node: &str) -> Cluster {
    let mut config = ClusterConfig::new(nats.url(), "leases", node);
    config.lease = Duration::from_secs(2);
    Cluster::connect(config).await.unwrap()
}

/// Takes shards 0 and 1, waiting up to `within` for them: their terms.
async fn take_both(leases: &Leases, within: Duration) -> Option<Vec<u64>> {
    let deadline = tokio::time::Instant::now() + within;
    let mut terms = Vec::new();
    for shard in 0..2 {
        loop {
            match leases.take(shard).await.unwrap() {
                Take::Taken { term } => break terms.push(term),
                Take::Held { .. } if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => return None,
            }
        }
    }
    Some(terms)
}

#[tokio::test]
async fn a_lease_goes_to_another_node_once_its_holder_stops_renewing_and_the_holder_learns_it() {
    let Some(nats) = testing::nats("leases") else {
        return;
    };
    let a = leasing(&nats, "a").await.leases().await.unwrap();
    let b = leasing(&nats, "b").await.leases().await.unwrap();
    let first = take_both(&a, Duration::ZERO).await.expect("free");
    assert_eq!(a.held().await, [0, 1]);
    // Only the holder may write the shards' checkpoints.
    assert!(a.holds(0) && a.holds(1) && !b.holds(0));
    // a renews: b cannot take them for as long as it does.
    let keeping = tokio::spawn({
        let a = a.clone();
        async move { a.keep().await }
    });
    assert_eq!(b.take(0).await.unwrap(), Take::Held { by: "a".to_owned() });
    assert!(take_both(&b, Duration::from_secs(4)).await.is_none());
    assert!(a.holds(0) && a.holds(1), "renewed: still a's to write");
    // a stops renewing (as a node that died, or one paused): b has them a
    // lease later, in higher terms; by then a no longer writes them.
    keeping.abort();
    let second = take_both(&b, Duration::from_secs(6))
        .await
        .expect("b takes the leases once they expire");
    assert!(
        !a.holds(0) && !a.holds(1),
        "a stopped writing before b took them"
    );
    assert!(b.holds(0) && b.holds(1));
    assert!(
        second.iter().zip(&first).all(|(b, a)| b > a),
        "{first:?} {second:?}"
    );
    // a, back, finds its leases gone at its next renewal.
    let lost = tokio::time::timeout(Duration::from_secs(3), a.keep())
        .await
        .expect("a learns it");
    assert_eq!(lost.shard, 0);
    assert_eq!(lost.why, "another node holds it now");
    // A lease given back is free at once.
    b.release(0).await;
    assert_eq!(b.held().await, [1]);
    assert!(!b.holds(0) && b.holds(1));
    assert!(matches!(a.take(0).await.unwrap(), Take::Taken { .. }));
    b.release_all().await;
    assert!(b.held().await.is_empty());
    assert!(matches!(a.take(1).await.unwrap(), Take::Taken { .. }));
}

#[tokio::test]
async fn live_nodes_are_those_that_beat_and_share_the_shards() {
    let Some(nats) = testing::nats("members") else {
        return;
    };
    let a = leasing(&nats, "a").await.members(Some(0..2)).await.unwrap();
    let b = leasing(&nats, "b").await.members(None).await.unwrap();
    a.beat().await.unwrap();
    b.beat().await.unwrap();
    let live = a.live().await.unwrap();
    let names: Vec<&str> = live.iter().map(|m| m.node.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(live[0].preferred, Some(0..2));
    assert_eq!(live[1].preferred, None);
    assert_eq!(
        cluster::share(4, &live, "a")
            .into_iter()
            .collect::<Vec<_>>(),
        [0, 1]
    );
    assert_eq!(
        cluster::share(4, &live, "b")
            .into_iter()
            .collect::<Vec<_>>(),
        [2, 3]
    );
    // A clean stop: gone at once.
    b.leave().await;
    assert_eq!(a.live().await.unwrap().len(), 1);
    // A node that stops beating drops out a lease (2 s) later: when the
    // server expires its entry (up to a second late with 2.10).
    let beat = tokio::time::Instant::now();
    b.beat().await.unwrap();
    assert_eq!(a.live().await.unwrap().len(), 2);
    let live = loop {
        a.beat().await.unwrap();
        let live = a.live().await.unwrap();
        if live.len() == 1 {
            break live;
        }
        assert!(beat.elapsed() < Duration::from_secs(5), "{live:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(beat.elapsed() >= Duration::from_secs(2), "{live:?}");
    assert_eq!(cluster::share(4, &live, "a").len(), 4);
}

#[tokio::test]
async fn a_given_back_lease_and_nodes_joining_or_leaving_call_for_a_round_at_once() {
    let Some(nats) = testing::nats("changes") else {
        return;
    };
    let a = leasing(&nats, "a").await;
    let (a_leases, a_members) = (a.leases().await.unwrap(), a.members(None).await.unwrap());
    let b = leasing(&nats, "b").await;
    let (b_leases, b_members) = (b.leases().await.unwrap(), b.members(None).await.unwrap());
    // b's placement, told of each change.
    let (told, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let mut watch = Changes::new(&b_leases, &b_members);
    let watching = tokio::spawn(async move {
        loop {
            watch.next().await;
            if told.send(()).is_err() {
                return;
            }
        }
    });
    // The watch opens as the task starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    a_members.beat().await.unwrap();
    assert!(told_within(&mut changes).await, "a node joins");
    a_members.beat().await.unwrap();
    assert!(matches!(
        a_leases.take(0).await.unwrap(),
        Take::Taken { .. }
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        changes.try_recv().is_err(),
        "a beat and a lease taken are no news"
    );
    a_leases.release(0).await;
    assert!(told_within(&mut changes).await, "a lease given back");
    a_members.leave().await;
    assert!(told_within(&mut changes).await, "a node leaves");
    watching.abort();
}

/// Whether `changes` says something within two seconds.
async fn told_within(changes: &mut tokio::sync::mpsc::UnboundedReceiver<()>) -> bool {
    tokio::time::timeout(Duration::from_secs(2), changes.recv())
        .await
        .is_ok()
}
