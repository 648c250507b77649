//! How long ten clients identifying at once stall a shard's event task.
//!
//! A `discord-sim` shard of 1,000 guilds (100 members each, all cached)
//! streams events at a steady rate into a pool; a subscriber takes every
//! event the pool hands on and measures its delay from the sim's
//! `sent_at_us`. Ten tasks then serve a client's READY and `GUILD_CREATE`s
//! from the shard at the same moment, two ways, in alternating rounds:
//!
//! - `under lock`: every payload written inside `ShardHandle::snapshot`'s
//!   closure, under the shard's lock (how IDENTIFY was served before);
//! - `snapshot`: only `Cache::snapshot` under the lock (a copy of `Arc`s),
//!   the payloads written after it is released (how it is served now).
//!
//! It prints, per way, the median over rounds of the worst event delay and
//! of the p99 during the burst, and of the time the lock was held per
//! client. Run: `cargo run --release -p benches --bin stall [-- ROUNDS]`.

use std::sync::Arc;
use std::time::Duration;

use benches::e2e::{Histogram, now_us};
use bytes::Bytes;
use discord_sim::{KNOWN_INTENTS, Sim, SimConfig};
use shard_pool::{Cache, Flags, Pool, PoolConfig, Session, ShardEvent, ShardHandle};
use tokio::sync::Mutex;
use tokio::time::Instant;

const CLIENTS: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    UnderLock,
    Snapshot,
}

/// One client's READY and guilds, the old way: all written under the lock.
fn under_lock(shard: &ShardHandle) -> (Duration, usize) {
    let snapshot = shard.snapshot(|cache: &Cache| {
        let start = Instant::now();
        let mut payloads = Vec::with_capacity(cache.guild_ids().len() + 1);
        let mut ready = Vec::new();
        let _ = cache.write_ready(1, session(), &mut ready);
        payloads.push(Bytes::from(ready));
        for (seq, guild) in (2..).zip(cache.guild_ids()) {
            let mut out = Vec::new();
            cache.write_guild(guild, seq, &mut out);
            payloads.push(Bytes::from(out));
        }
        (payloads, start.elapsed())
    });
    let (payloads, held) = snapshot.value;
    (held, payloads.iter().map(Bytes::len).sum())
}

/// The same, the new way: a snapshot under the lock, written after.
fn snapshot(shard: &ShardHandle) -> (Duration, usize) {
    let snapshot = shard.snapshot(|cache: &Cache| {
        let start = Instant::now();
        (cache.snapshot(), start.elapsed())
    });
    let (cache, held) = snapshot.value;
    let mut ready = Vec::new();
    let _ = cache.write_ready(1, session(), &mut ready);
    let mut bytes = ready.len();
    for (seq, guild) in (2..).zip(cache.into_guilds()) {
        let mut out = Vec::new();
        guild.write(seq, &mut out);
        bytes += out.len();
    }
    (held, bytes)
}

fn session() -> Session<'static> {
    Session {
        session_id: "0123456789abcdef0123456789abcdef",
        resume_gateway_url: "ws://127.0.0.1:7878",
    }
}

/// What the rounds of one way measured, one entry per round (µs).
struct Rounds {
    way: Way,
    worst: Vec<u64>,
    p99: Vec<u64>,
    held: Vec<u64>,
    bytes: usize,
}

/// Event delays (µs) seen by the subscriber since the last take.
type Delays = Arc<Mutex<Vec<u64>>>;

fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// The sim and a pool on it, every shard ready.
async fn start() -> (Sim, Pool) {
    let mut config = SimConfig::default();
    config.guilds = 1000;
    config.members_per_guild = 100;
    config.events_per_sec = 2000;
    config.identify_interval = Duration::from_millis(100);
    let sim = Sim::start(config).await.expect("sim");
    let mut pool_config = PoolConfig::new(sim.token(), KNOWN_INTENTS);
    pool_config.api_base = Some(sim.api_base());
    pool_config.identify_window = Duration::from_millis(100);
    let mut flags = Flags::default();
    flags.members = true;
    pool_config.cache = flags;
    let pool = Pool::start(pool_config).await.expect("pool");
    pool.ready().await.expect("ready");
    (sim, pool)
}

#[allow(clippy::print_stdout, reason = "a benchmark prints its figures")]
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(6);
    let (_sim, pool) = start().await;
    let shard = pool.shards()[0].clone();
    let stats = shard.status().cache;
    println!(
        "shard: {} guilds, {} members cached, {} MiB of cache; {} events/s",
        stats.guilds,
        stats.members,
        stats.bytes >> 20,
        2000
    );

    let delays: Delays = Arc::default();
    let mut events = shard.subscribe();
    let seen = delays.clone();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            let received = now_us();
            if let ShardEvent::Dispatch(dispatch) = event
                && let Some(sent) = sent_at(dispatch.payload())
            {
                seen.lock().await.push(received.saturating_sub(sent));
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut results = [Way::UnderLock, Way::Snapshot].map(|way| Rounds {
        way,
        worst: Vec::new(),
        p99: Vec::new(),
        held: Vec::new(),
        bytes: 0,
    });
    for round in 0..rounds * 2 {
        let way = if round % 2 == 0 {
            Way::UnderLock
        } else {
            Way::Snapshot
        };
        delays.lock().await.clear();
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let shard = shard.clone();
                tokio::task::spawn_blocking(move || match way {
                    Way::UnderLock => under_lock(&shard),
                    Way::Snapshot => snapshot(&shard),
                })
            })
            .collect();
        let mut held = Vec::new();
        let mut bytes = 0;
        for task in tasks {
            let (h, b) = task.await.expect("task");
            held.push(u64::try_from(h.as_micros()).unwrap_or(u64::MAX));
            bytes = b;
        }
        // The events that were waiting come through.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut burst = Histogram::default();
        for delay in std::mem::take(&mut *delays.lock().await) {
            burst.record(delay);
        }
        let entry = &mut results[usize::from(way == Way::Snapshot)];
        entry.worst.push(burst.max());
        entry.p99.push(burst.quantile(0.99));
        entry.held.push(held.iter().copied().max().unwrap_or(0));
        entry.bytes = bytes;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    println!(
        "{CLIENTS} clients identifying at once, {rounds} rounds each way, medians over rounds:"
    );
    println!(
        "| way | payload per client | lock held per client (longest) | worst event delay | p99 event delay |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for mut rounds in results {
        println!(
            "| {} | {:.1} MB | {} µs | {:.1} ms | {:.1} ms |",
            match rounds.way {
                Way::UnderLock => "under lock (before)",
                Way::Snapshot => "snapshot (now)",
            },
            mb(rounds.bytes),
            median(&mut rounds.held),
            ms(median(&mut rounds.worst)),
            ms(median(&mut rounds.p99)),
        );
    }
}

#[allow(clippy::cast_precision_loss, reason = "a figure to print")]
fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}

#[allow(clippy::cast_precision_loss, reason = "a figure to print")]
fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The sim's `sent_at_us` marker of a dispatch.
fn sent_at(payload: &[u8]) -> Option<u64> {
    let at = memchr::memmem::rfind(payload, b"\"sent_at_us\":")? + 13;
    let digits = payload[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&payload[at..at + digits])
        .ok()?
        .parse()
        .ok()
}
