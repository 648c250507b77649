//! What Discord does to a shard, and what subscribers then see: resumes
//! lose and repeat nothing; a new session is a reset; a fatal close stops
//! one shard and no other.

use std::time::Duration;

use discord_sim::Control;
use shard_pool::{Pool, ShardEvent, ShardState};

use super::{assert_contiguous, config, marked, ready, sim};

/// After `control`, the shard resumes: the markers its subscriber sees run
/// on with no gap and no repeat, and the sim saw a RESUME, not a second
/// IDENTIFY.
async fn resumes_without_loss(control: Control) {
    let sim = sim(|c| c.events_per_sec = 300).await;
    let pool = Pool::start(config(&sim)).await.unwrap();
    ready(&pool, 10).await;
    let shard = &pool.shards()[0];
    let mut events = shard.subscribe();
    let mut markers = marked(&mut events, 30).await;
    assert_eq!(sim.control(0, control), 1, "one connection was told");
    markers.extend(marked(&mut events, 300).await);
    assert_contiguous(&markers);
    let resumed = sim
        .connections()
        .iter()
        .flat_map(|c| c.received.clone())
        .filter(|text| text.contains(r#""op":6"#))
        .count();
    assert_eq!(resumed, 1, "one RESUME");
    assert_eq!(sim.identifies_remaining(), 999, "one IDENTIFY in all");
    assert_eq!(sim.lagged(), 0);
    let status = shard.status();
    assert_eq!(status.state, ShardState::Active);
}

#[tokio::test]
async fn a_dropped_tcp_connection_resumes_with_no_loss_or_repeat() {
    resumes_without_loss(Control::Cut).await;
}

#[tokio::test]
async fn reconnect_resumes_with_no_loss_or_repeat() {
    resumes_without_loss(Control::Reconnect).await;
}

#[tokio::test]
async fn a_resumable_invalid_session_resumes_with_no_loss_or_repeat() {
    resumes_without_loss(Control::InvalidSession(true)).await;
}

#[tokio::test]
async fn a_closed_session_is_identified_again_and_handed_on_as_a_reset() {
    let sim = sim(|c| c.guilds = 3).await;
    let pool = Pool::start(config(&sim)).await.unwrap();
    ready(&pool, 10).await;
    let shard = &pool.shards()[0];
    let mut events = shard.subscribe();
    let first = events.index();
    assert_eq!(sim.control(0, Control::InvalidSession(false)), 1);
    let reset = loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap()
            .unwrap();
        if let ShardEvent::Reset { index } = event {
            break index;
        }
    };
    assert!(reset > first);
    // The new session's guilds follow the reset, and the shard is ready again.
    tokio::time::timeout(Duration::from_secs(10), shard.ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(shard.status().pending_guilds, 0);
    assert_eq!(sim.identifies_remaining(), 998, "identified twice");
}

#[tokio::test]
async fn authentication_failed_stops_that_shard_and_no_other() {
    let sim = sim(|c| c.shards = 2).await;
    let pool = Pool::start(config(&sim)).await.unwrap();
    ready(&pool, 10).await;
    assert_eq!(sim.control(1, Control::Close(4004)), 1);
    let stopped = pool.shard(1).unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while stopped.status().state != ShardState::FatallyClosed {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(stopped.status().close_code, Some(4004));
    assert!(!stopped.is_ready());
    assert_eq!(stopped.fatal_close(), Some(4004));
    let error = stopped.ready().await.unwrap_err().to_string();
    assert!(
        error.contains("4004") && error.contains("token"),
        "says what to change: {error}"
    );
    let alive = pool.shard(0).unwrap();
    let mut events = alive.subscribe();
    assert_contiguous(&marked(&mut events, 30).await);
    assert_eq!(alive.status().state, ShardState::Active);
}

#[tokio::test]
async fn a_follower_counts_as_behind_while_the_ring_still_holds_what_it_missed() {
    let sim = sim(|c| c.events_per_sec = 2000).await;
    let pool = Pool::start(config(&sim)).await.unwrap();
    ready(&pool, 10).await;
    let shard = &pool.shards()[0];
    // A client is served: the ring keeps events from here on.
    let snapshot = shard.snapshot(|_| ());
    let (start, mut events) = (snapshot.index, snapshot.events);
    assert!(!shard.behind(start, 300), "nothing new yet");
    // Never read, until it counts as behind.
    tokio::time::timeout(Duration::from_secs(10), async {
        while !shard.behind(start, 300) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("300 events behind, it counts as behind");
    assert!(!shard.behind(shard.head(), 300), "the newest is not behind");
    // Past the raw part of the ring: some of it is read back unpacked.
    let head = shard.head();
    let mut taken = Vec::new();
    while taken.last().map_or(start, ShardEvent::index) < head {
        events
            .take(1 << 20, &mut taken)
            .expect("nothing it missed is gone");
    }
    let indexes: Vec<u64> = taken.iter().map(ShardEvent::index).collect();
    let expected: Vec<u64> = (start + 1..=indexes.last().copied().unwrap_or(start)).collect();
    assert_eq!(indexes, expected, "every event once, in order");
    // A resume from the start finds the same events.
    let (mut resumed, _) = shard
        .subscribe_from(start)
        .expect("what it missed is in the ring");
    let mut again = Vec::new();
    resumed.take(usize::MAX, &mut again).unwrap();
    assert_eq!(again.first().map(ShardEvent::index), Some(start + 1));
    for (a, b) in taken.iter().zip(&again) {
        let (ShardEvent::Dispatch(a), ShardEvent::Dispatch(b)) = (a, b) else {
            panic!("dispatches only")
        };
        assert_eq!(a.payload(), b.payload(), "byte for byte, packed or not");
    }
}
