//! Identify pacing across nodes: each rate-limit bucket takes one turn per
//! window whichever node asks, turns nobody waits for are given back, and
//! the day's identifies are one count.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster::KvQueue;
use cluster::testing::{NatsServer, nats};
use discord_sim::{Sim, SimConfig};
use shard_pool::{GatewayInfo, PoolConfig, Queue};
use tokio::time::Instant;

use super::node;

/// The identify limits `GET /gateway/bot` gives, as the sim answers it,
/// then set to these.
async fn gateway(max_concurrency: u32, remaining: u32, reset_after: Duration) -> GatewayInfo {
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    let mut config = PoolConfig::new(sim.token(), 1);
    config.api_base = Some(sim.api_base());
    let mut info = GatewayInfo::fetch(&config).await.unwrap();
    info.max_concurrency = max_concurrency;
    info.remaining = remaining;
    info.reset_after = reset_after;
    info.total = 1000;
    info
}

/// The identify queues of nodes `a` and `b` of cluster `name`.
async fn queues(
    nats: &NatsServer,
    name: &str,
    info: &GatewayInfo,
    window: Duration,
) -> [KvQueue; 2] {
    let mut both = Vec::new();
    for id in ["a", "b"] {
        let cluster = node(nats, name, id).await;
        both.push(cluster.identify_queue(info, window).await.unwrap());
    }
    both.try_into().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_each_bucket_one_turn_per_window() {
    let Some(nats) = nats("queue_pacing") else {
        return;
    };
    let window = Duration::from_millis(400);
    let spacing = shard_pool::identify_spacing(window);
    let info = gateway(2, 1000, Duration::from_hours(1)).await;
    let mut queues = Vec::new();
    for name in ["a", "b", "c"] {
        let cluster = node(&nats, "pacing", name).await;
        queues.push(cluster.identify_queue(&info, window).await.unwrap());
    }
    let start = Instant::now();
    let turns = Arc::new(Mutex::new(Vec::new()));
    let mut waits = Vec::new();
    // 12 shards, 4 per node, all asking at once.
    for id in 0..12_u32 {
        let turn = queues[(id / 4) as usize].enqueue(id);
        let turns = turns.clone();
        waits.push(tokio::spawn(async move {
            turn.await.unwrap();
            turns.lock().unwrap().push((id, start.elapsed()));
        }));
    }
    for wait in waits {
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .expect("every turn within 20 s")
            .unwrap();
    }
    let turns = turns.lock().unwrap().clone();
    for bucket in 0..2 {
        let mut times: Vec<Duration> = turns
            .iter()
            .filter(|(id, _)| id % 2 == bucket)
            .map(|&(_, at)| at)
            .collect();
        times.sort();
        assert_eq!(times.len(), 6);
        for pair in times.windows(2) {
            let gap = pair[1].saturating_sub(pair[0]);
            assert!(
                gap >= window,
                "bucket {bucket}: two turns {gap:?} apart, under the window: {times:?}"
            );
        }
    }
    // Pacing's minimum is five spacings after the first turn; allow 10 %
    // and a little for the first round trips.
    let last = turns.iter().map(|&(_, at)| at).max().unwrap();
    let minimum = spacing * 5;
    assert!(
        last <= minimum + minimum / 10 + Duration::from_millis(200),
        "the last turn came {last:?} after the start; pacing's minimum is {minimum:?}"
    );
    assert!(
        last >= minimum,
        "{last:?} < {minimum:?}: a bucket went twice in a window"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_nobody_waits_for_is_given_back() {
    let Some(nats) = nats("queue_refund") else {
        return;
    };
    let window = Duration::from_secs(5);
    let info = gateway(1, 1000, Duration::from_hours(1)).await;
    let [a, b] = queues(&nats, "refund", &info, window).await;
    let start = Instant::now();
    a.enqueue(0).await.unwrap();
    // Shard 1 stops waiting: its turn (the next, 5 s on) is never taken.
    drop(a.enqueue(1));
    // Shard 2 on the other node waits out shard 0's window, not shard 1's.
    b.enqueue(2).await.unwrap();
    let took = start.elapsed();
    assert!(
        took >= window && took < window * 2,
        "shard 2 went {took:?} after the start; expected one window"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_days_identifies_are_one_count_across_nodes() {
    let Some(nats) = nats("queue_day") else {
        return;
    };
    let window = Duration::from_millis(100);
    // Two identifies left, the day resets in 1.5 s.
    let info = gateway(4, 2, Duration::from_millis(1500)).await;
    let [a, b] = queues(&nats, "day", &info, window).await;
    let start = Instant::now();
    a.enqueue(0).await.unwrap();
    b.enqueue(1).await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(1), "two were left");
    // Another bucket, another node: no identify left until the reset.
    a.enqueue(2).await.unwrap();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1400),
        "the third identify went after {took:?}, before the day's reset"
    );
}

/// `queue`'s day count once `wanted` holds of it (10 s at most).
async fn day_until(queue: &KvQueue, wanted: impl Fn(u32) -> bool) -> Duration {
    for _ in 0..100 {
        if let Some((remaining, reset)) = queue.identifies()
            && wanted(remaining)
        {
            return reset;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the day's count is {:?}", queue.identifies());
}

/// A node that takes no turn still has the day's count (for its gauges),
/// read from the cluster's state, and its reset counts down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_takes_no_turn_reads_the_days_count() {
    let Some(nats) = nats("queue_day") else {
        return;
    };
    let info = gateway(1, 1000, Duration::from_hours(1)).await;
    let cluster = node(&nats, "day", "a").await;
    let queue = cluster
        .identify_queue(&info, Duration::from_millis(400))
        .await
        .unwrap();
    // Nobody identified yet: Discord's figures.
    let reset = day_until(&queue, |remaining| remaining == 1000).await;
    assert!(reset <= Duration::from_hours(1) && reset > Duration::from_mins(59));
    // Another node identifies and writes the count: read within 5 s.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let state = async_nats::jetstream::new(client)
        .get_key_value("day-state")
        .await
        .unwrap();
    let now = shard_pool::unix_ms(shard_pool::wall_clock());
    let count = format!("500 1000 {}", now + 7_200_000);
    state.put("identify-day", count.into()).await.unwrap();
    let first = day_until(&queue, |remaining| remaining == 500).await;
    assert!(first > Duration::from_mins(119), "{first:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = queue.identifies().unwrap();
    assert!(later.1 + Duration::from_secs(1) < first, "{later:?}");
}
