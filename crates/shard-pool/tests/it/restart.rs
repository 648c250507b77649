//! Checkpoints across pools: a pool started from another's checkpoints
//! RESUMEs upstream instead of identifying, and numbers every event as the
//! other did; a checkpoint that is stale, foreign or damaged, or a RESUME
//! Discord refuses, means an identify, never a crash.

use std::sync::Arc;
use std::time::Duration;

use discord_sim::Sim;
use shard_pool::{Flags, Follower, Holding, Pool, PoolConfig, ShardEvent};

use super::{Scratch, assert_contiguous, config, marked, ready, sim};

fn with_store(sim: &Sim, scratch: &Scratch) -> PoolConfig {
    let mut config = config(sim);
    config.store = Some(scratch.store());
    config
}

/// A pool whose shards follow the stream a while, with a client served on
/// shard 0 (so that its ring keeps what it is sent): the follower, and the
/// last marker it took.
async fn running(sim: &Sim, scratch: &Scratch) -> (Pool, Follower, (u64, u64)) {
    let pool = Pool::start(with_store(sim, scratch)).await.unwrap();
    ready(&pool, 10).await;
    let mut events = pool.shards()[0].subscribe();
    let markers = marked(&mut events, 20).await;
    (pool, events, markers[markers.len() - 1])
}

/// Every `(index, marker)` the follower takes until `count` markers.
async fn indexed(events: &mut Follower, count: usize) -> Vec<(u64, (u64, u64))> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("an event within 10 s")
            .expect("no lag");
        match event {
            ShardEvent::Dispatch(dispatch) => {
                if let Some(marker) = super::marker(&dispatch) {
                    seen.push((dispatch.index(), marker));
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    seen
}

#[tokio::test]
async fn a_graceful_stop_then_start_resumes_every_shard_and_loses_nothing() {
    let sim = sim(|c| c.shards = 2).await;
    let scratch = Scratch::new("graceful");
    let (pool, mut events, marker) = running(&sim, &scratch).await;
    pool.freeze();
    // The follower takes what is left: everything up to where the shard
    // stopped, the checkpoint's index.
    let mut last_marker = Some(marker);
    while let Ok(Ok(event)) = tokio::time::timeout(Duration::from_millis(300), events.recv()).await
    {
        if let ShardEvent::Dispatch(dispatch) = &event {
            last_marker = super::marker(dispatch).or(last_marker);
        }
    }
    let last = events.index();
    assert_eq!(last, pool.shards()[0].head(), "nothing after the freeze");
    let done = pool.checkpoint().await;
    assert_eq!((done.written, done.skipped, done.failed), (2, 0, 0));
    pool.shutdown_resumable().await;
    drop(pool);
    let identifies = sim.identifies();
    assert_eq!(identifies, 2);

    let again = Pool::start(with_store(&sim, &scratch)).await.unwrap();
    ready(&again, 10).await;
    assert_eq!(sim.identifies(), identifies, "no IDENTIFY");
    assert_eq!(sim.resumes(), 2, "a RESUME per shard");
    for shard in again.shards() {
        let status = shard.status();
        assert!(status.restored, "{status:?}");
    }
    // A client that had taken everything up to the stop goes on from
    // there: the next index, the next marker, nothing lost or repeated.
    let shard = &again.shards()[0];
    let (mut resumed, _) = shard.subscribe_from(last).expect("the ring holds on");
    let after = indexed(&mut resumed, 100).await;
    assert_eq!(after[0].0, last + 1, "the next index");
    let (shard_id, n) = last_marker.expect("markers before the stop");
    let mut markers = vec![(shard_id, n)];
    markers.extend(after.iter().map(|(_, m)| *m));
    assert_contiguous(&markers);
}

#[tokio::test]
async fn after_a_crash_the_events_since_the_checkpoint_get_the_same_indexes() {
    let sim = sim(|c| c.shards = 1).await;
    let scratch = Scratch::new("crash");
    let (pool, mut events, _) = running(&sim, &scratch).await;
    // A periodic checkpoint: the shard does not stop for it.
    let done = pool.checkpoint().await;
    assert_eq!(done.written, 1);
    let checkpointed = pool.shards()[0].status().checkpoint.expect("recorded");
    assert!(checkpointed.held <= checkpointed.took, "{checkpointed:?}");
    assert!(
        checkpointed.took < Duration::from_secs(5),
        "{checkpointed:?}"
    );
    assert!(checkpointed.bytes > 100, "{checkpointed:?}");
    let seen = indexed(&mut events, 60).await;
    // A crash: the tasks stop, the connection drops without a close.
    drop(events);
    drop(pool);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let again = Pool::start(with_store(&sim, &scratch)).await.unwrap();
    ready(&again, 10).await;
    assert_eq!(sim.identifies(), 1, "no second IDENTIFY");
    assert_eq!(sim.resumes(), 1);
    // Discord replayed what came after the checkpoint: the new pool
    // numbers it exactly as the old one did, so client sessions line up.
    let first = seen[0].0 - 1;
    let (mut replayed, _) = again.shards()[0]
        .subscribe_from(first)
        .expect("held from the checkpoint on");
    let again_seen = indexed(&mut replayed, 120).await;
    assert_eq!(
        &again_seen[..seen.len()],
        &seen[..],
        "same indexes, same events"
    );
    let markers: Vec<_> = again_seen.iter().map(|(_, m)| *m).collect();
    assert_contiguous(&markers);
}

/// Starts a pool from the checkpoint `break_it` leaves; asserts that every
/// shard identified (no RESUME) and the pool runs.
async fn identifies_instead(test: &str, break_it: impl FnOnce(&Scratch, &mut PoolConfig)) {
    let sim = sim(|c| c.shards = 1).await;
    let scratch = Scratch::new(test);
    let (pool, events, _) = running(&sim, &scratch).await;
    drop(events);
    pool.freeze();
    assert_eq!(pool.checkpoint().await.written, 1);
    pool.shutdown_resumable().await;
    drop(pool);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut config = with_store(&sim, &scratch);
    break_it(&scratch, &mut config);
    let again = Pool::start(config).await.unwrap();
    ready(&again, 10).await;
    assert_eq!(sim.resumes(), 0, "{test}: no RESUME");
    assert_eq!(sim.identifies(), 2, "{test}: identified again");
    assert!(!again.shards()[0].status().restored);
    let mut events = again.shards()[0].subscribe();
    let markers = marked(&mut events, 20).await;
    assert!(
        markers.windows(2).all(|pair| pair[0] < pair[1]),
        "{markers:?}"
    );
}

#[tokio::test]
async fn a_stale_checkpoint_is_passed_over() {
    identifies_instead("stale", |_, config| {
        // The checkpoint was written at least 300 ms ago (see below).
        config.checkpoint_max_age = Duration::from_millis(100);
    })
    .await;
}

#[tokio::test]
async fn a_checkpoint_of_other_settings_is_passed_over() {
    identifies_instead("flags", |_, config| config.cache = Flags::ALL).await;
    identifies_instead("intents", |_, config| config.intents &= !(1 << 8)).await;
}

#[tokio::test]
async fn a_damaged_checkpoint_is_passed_over() {
    let blob = |scratch: &Scratch| scratch.0.join("shard-0");
    identifies_instead("truncated", |scratch, _| {
        let bytes = std::fs::read(blob(scratch)).unwrap();
        std::fs::write(blob(scratch), &bytes[..bytes.len() / 2]).unwrap();
    })
    .await;
    identifies_instead("garbled", |scratch, _| {
        let mut bytes = std::fs::read(blob(scratch)).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        std::fs::write(blob(scratch), bytes).unwrap();
    })
    .await;
    identifies_instead("manifest", |scratch, _| {
        std::fs::write(scratch.0.join("manifest"), b"not a manifest").unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_refused_resume_identifies_and_followers_see_a_reset() {
    let sim = sim(|c| c.shards = 1).await;
    let scratch = Scratch::new("refused");
    let (pool, events, _) = running(&sim, &scratch).await;
    drop(events);
    pool.freeze();
    assert_eq!(pool.checkpoint().await.written, 1);
    let head = pool.shards()[0].head();
    // A normal close: Discord forgets the session the checkpoint holds.
    pool.shutdown().await;
    drop(pool);

    let again = Pool::start(with_store(&sim, &scratch)).await.unwrap();
    let (mut events, _) = again.shards()[0]
        .subscribe_from(head)
        .expect("the restored ring");
    ready(&again, 10).await;
    assert_eq!(sim.resumes_refused(), 1);
    assert_eq!(sim.identifies(), 2);
    assert!(!again.shards()[0].status().restored);
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(event, ShardEvent::Reset { index } if index == head + 1),
        "{event:?}"
    );
}

/// Says that shard 0 is no longer surely this process's (as a cluster
/// node whose lease on it was not renewed in time).
#[derive(Debug)]
struct LostShard0;

impl Holding for LostShard0 {
    fn holds(&self, shard: u32) -> bool {
        shard != 0
    }
}

#[tokio::test]
async fn a_shard_no_longer_surely_held_gets_no_checkpoint_written() {
    let sim = sim(|c| c.shards = 2).await;
    let scratch = Scratch::new("holding");
    let mut config = with_store(&sim, &scratch);
    config.holding = Some(Arc::new(LostShard0));
    let pool = Pool::start(config).await.unwrap();
    ready(&pool, 10).await;
    assert!(!pool.holds(0) && pool.holds(1));
    // What the shard's next owner wrote stays as it is.
    let store = scratch.store();
    let theirs = bytes::Bytes::from_static(b"the next owner's checkpoint");
    store.put("shard-0", theirs.clone()).await.unwrap();
    let done = pool.checkpoint().await;
    assert_eq!((done.written, done.failed), (1, 1), "{done:?}");
    assert_eq!(store.get("shard-0").await.unwrap(), Some(theirs));
    assert!(store.get("shard-1").await.unwrap().is_some());
    pool.shutdown().await;
}
