//! The shard pool against `discord-sim` on loopback: start-up, pacing,
//! order, and the faults Discord throws at a shard.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

mod faults;
mod follow;
mod restart;
mod start;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use discord_sim::{KNOWN_INTENTS, Sim, SimConfig};
use serde_json::Value;
use shard_pool::{DirStore, Dispatch, Follower, Pool, PoolConfig, ShardEvent, Store};

/// A directory of its own, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("shard-pool-restart-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }

    fn store(&self) -> Arc<dyn Store> {
        Arc::new(DirStore::open(&self.0).unwrap())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A sim with quick identify buckets and a steady stream.
async fn sim(configure: impl FnOnce(&mut SimConfig)) -> Sim {
    let mut config = SimConfig::default();
    config.identify_interval = Duration::from_millis(200);
    config.events_per_sec = 200;
    configure(&mut config);
    Sim::start(config).await.unwrap()
}

/// A pool config pointed at the sim, pacing as the sim does.
fn config(sim: &Sim) -> PoolConfig {
    let mut config = PoolConfig::new(sim.token(), KNOWN_INTENTS);
    config.api_base = Some(sim.api_base());
    config.identify_window = sim.config().identify_interval;
    config
}

/// Waits up to `seconds` for `pool` to be ready.
async fn ready(pool: &Pool, seconds: u64) {
    tokio::time::timeout(Duration::from_secs(seconds), pool.ready())
        .await
        .unwrap_or_else(|_| panic!("not ready after {seconds} s: {:#?}", pool.status()))
        .unwrap();
}

/// The `_sim` marker of a dispatch: (shard, n).
fn marker(dispatch: &Dispatch) -> Option<(u64, u64)> {
    let d: Value = serde_json::from_slice(dispatch.scan().d(dispatch.payload())?).ok()?;
    let marker = d.get("_sim")?;
    Some((marker["shard"].as_u64()?, marker["n"].as_u64()?))
}

/// Receives the shard's next `count` dispatches that carry a marker; panics
/// on a reset, a lag or a wait over 10 s.
async fn marked(events: &mut Follower, count: usize) -> Vec<(u64, u64)> {
    let mut seen = Vec::with_capacity(count);
    let mut last_index = None;
    while seen.len() < count {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("an event within 10 s")
            .expect("no lag");
        if let Some(last) = last_index {
            assert_eq!(event.index(), last + 1, "indexes have no gap");
        }
        last_index = Some(event.index());
        match event {
            ShardEvent::Dispatch(dispatch) => seen.extend(marker(&dispatch)),
            ShardEvent::Reset { .. } => panic!("unexpected reset"),
            ShardEvent::Closed { code, .. } => panic!("unexpected fatal close {code}"),
        }
    }
    seen
}

/// Asserts the markers count up by one: nothing lost, nothing repeated.
fn assert_contiguous(markers: &[(u64, u64)]) {
    for pair in markers.windows(2) {
        assert_eq!(
            (pair[1].0, pair[1].1),
            (pair[0].0, pair[0].1 + 1),
            "markers go up by one: {markers:?}"
        );
    }
}
