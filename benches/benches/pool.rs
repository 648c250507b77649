//! `shard-pool`: the cost of the pipeline per event, and how long a pool of
//! 64 shards takes to be ready against the time identify pacing allows.
//!
//! ```text
//! cargo bench -p benches --bench pool
//! ```
//!
//! Per event: a 1 KB `MESSAGE_CREATE` (`testdata/json/message_create.json`
//! with a fresh `s` each time, made outside the timed part) through
//! `Pipeline::handle` (scan, the cache's check, numbering) and handed to a
//! broadcast channel with one subscriber; with the default cache flags,
//! which never parse a message, and for comparison a `PRESENCE_UPDATE` with
//! presences cached, which the cache does parse. Criterion medians.
//!
//! Start-up: 64 shards against `discord-sim` with `max_concurrency` 16 and a
//! 1 s identify window, from `Pool::start` to every shard ready (READY and
//! all its guilds), median of three runs, beside the minimum pacing allows:
//! four identifies per bucket, three windows apart. Then the same pool
//! restarted from its checkpoints (frozen, checkpointed, closed resumably,
//! started again on the same directory): every shard RESUMEs, so pacing
//! does not apply.
//!
//! Checkpoints of a big shard: 2500 guilds of 50 members, members cached;
//! how long its events wait for a checkpoint (the copy under its locks),
//! how long writing one takes in all (to a directory: encode, write,
//! fsync, rename), its size per guild and per member, and how long a pool
//! takes from `Pool::start` (which reads it back) to ready.
#![allow(
    missing_docs,
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::cast_precision_loss
)]

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use benches::report::{fmt_ns, median_ns};
use bytes::Bytes;
use criterion::{BatchSize, Criterion};
use discord_sim::{KNOWN_INTENTS, Sim, SimConfig};
use shard_pool::{DirStore, Flags, Pipeline, Pool, PoolConfig, ShardEvent};
use tokio::sync::broadcast;

const MESSAGE: &str = include_str!("../../testdata/json/message_create.json");
const PRESENCE: &str = include_str!("../../testdata/json/presence_update.json");
const READY: &[u8] = br#"{"t":"READY","s":1,"op":0,"d":{"v":10,"user":{"id":"10","username":"bot","discriminator":"0","avatar":null,"mfa_enabled":true},"guilds":[],"session_id":"x","resume_gateway_url":"ws://x","application":{"id":"10","flags":0}}}"#;

/// The fixture's `t` and `d`, to write again with any `s`.
fn parts(fixture: &str) -> (String, Vec<u8>) {
    let bytes = fixture.trim().as_bytes();
    let scan = seqpatch::scan_complete(bytes).unwrap();
    let t = scan.event_type(bytes).unwrap().to_owned();
    (t, scan.d(bytes).unwrap().to_vec())
}

fn payload(t: &str, seq: u64, d: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(d.len() + 64);
    out.extend_from_slice(b"{\"t\":\"");
    out.extend_from_slice(t.as_bytes());
    out.extend_from_slice(b"\",\"s\":");
    out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    out.extend_from_slice(b",\"op\":0,\"d\":");
    out.extend_from_slice(d);
    out.push(b'}');
    Bytes::from(out)
}

fn per_event(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline");
    let mut presences = Flags::default();
    presences.presences = true;
    for (name, fixture, flags) in [
        ("message_default_flags", MESSAGE, Flags::default()),
        ("presence_cached", PRESENCE, presences),
    ] {
        let (t, d) = parts(fixture);
        let mut pipeline = Pipeline::new(flags);
        pipeline.handle(Bytes::from_static(READY));
        let (tx, rx) = broadcast::channel::<ShardEvent>(1024);
        let mut seq = 1;
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    seq += 1;
                    payload(&t, seq, &d)
                },
                |p| {
                    if let Some(event) = pipeline.handle(p) {
                        let _ = tx.send(event);
                    }
                },
                BatchSize::SmallInput,
            );
        });
        assert_eq!(pipeline.index(), seq, "every event was handed on");
        drop(rx);
    }
    group.finish();
}

/// A directory of its own for checkpoints, emptied.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bench-pool-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Seconds from `Pool::start` to every shard ready: fresh, then restarted
/// from the checkpoints the fresh pool wrote at shutdown.
fn startup(shards: u32, max_concurrency: u32, window: Duration) -> (f64, f64) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = scratch("startup");
    let times = runtime.block_on(async {
        let mut config = SimConfig::default();
        config.shards = shards;
        config.guilds = shards * 2;
        config.max_concurrency = max_concurrency;
        config.identify_interval = window;
        let sim = Sim::start(config).await.unwrap();
        let mut pool_config = PoolConfig::new(sim.token(), KNOWN_INTENTS);
        pool_config.api_base = Some(sim.api_base());
        pool_config.identify_window = window;
        pool_config.store = Some(Arc::new(DirStore::open(&dir).unwrap()));
        let start = tokio::time::Instant::now();
        let pool = Pool::start(pool_config.clone()).await.unwrap();
        pool.ready().await.unwrap();
        let fresh = start.elapsed().as_secs_f64();
        assert_eq!(sim.identifies_refused(), 0, "paced as the sim asks");
        pool.freeze();
        assert_eq!(pool.checkpoint().await.written, shards as usize);
        pool.shutdown_resumable().await;
        drop(pool);
        let start = tokio::time::Instant::now();
        let pool = Pool::start(pool_config).await.unwrap();
        pool.ready().await.unwrap();
        let restarted = start.elapsed().as_secs_f64();
        assert_eq!(
            sim.identifies(),
            u64::from(shards),
            "no identify on restart"
        );
        assert_eq!(sim.resumes(), u64::from(shards));
        black_box(pool);
        (fresh, restarted)
    });
    let _ = std::fs::remove_dir_all(dir);
    times
}

/// A big shard's checkpoints: what they cost and weigh.
struct BigShard {
    guilds: u32,
    members: u64,
    held: Vec<Duration>,
    took: Vec<Duration>,
    bytes: usize,
    /// From `Pool::start` (reading the checkpoint back) to ready.
    restart: Duration,
}

fn big_shard(guilds: u32, members_per_guild: u32, writes: usize) -> BigShard {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = scratch("big");
    let big = runtime.block_on(async {
        let mut config = SimConfig::default();
        config.shards = 1;
        config.guilds = guilds;
        config.members_per_guild = members_per_guild;
        config.events_per_sec = 200;
        config.identify_interval = Duration::from_millis(100);
        let sim = Sim::start(config).await.unwrap();
        let mut pool_config = PoolConfig::new(sim.token(), KNOWN_INTENTS);
        pool_config.api_base = Some(sim.api_base());
        pool_config.identify_window = Duration::from_millis(100);
        pool_config.cache.members = true;
        pool_config.store = Some(Arc::new(DirStore::open(&dir).unwrap()));
        let pool = Pool::start(pool_config.clone()).await.unwrap();
        pool.ready().await.unwrap();
        // A client served: the ring keeps what comes.
        let _follower = pool.shards()[0].subscribe();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (mut held, mut took, mut bytes) = (Vec::new(), Vec::new(), 0);
        for _ in 0..writes {
            assert_eq!(pool.checkpoint().await.written, 1);
            let stats = pool.shards()[0].status().checkpoint.unwrap();
            held.push(stats.held);
            took.push(stats.took);
            bytes = stats.bytes;
        }
        let members = pool.shards()[0].status().cache.members as u64;
        pool.freeze();
        pool.checkpoint().await;
        pool.shutdown_resumable().await;
        drop(pool);
        let start = tokio::time::Instant::now();
        let pool = Pool::start(pool_config).await.unwrap();
        pool.ready().await.unwrap();
        let restart = start.elapsed();
        assert!(pool.shards()[0].status().restored);
        held.sort();
        took.sort();
        BigShard {
            guilds,
            members,
            held,
            took,
            bytes,
            restart,
        }
    });
    let _ = std::fs::remove_dir_all(dir);
    big
}

fn main() {
    let since = benches::report::run_started();
    let smoke = std::env::args().any(|a| a == "--test");
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .configure_from_args();
    per_event(&mut c);
    c.final_summary();

    let (shards, max_concurrency, window, runs) = if smoke {
        (8, 4, Duration::from_millis(200), 1)
    } else {
        (64, 16, Duration::from_secs(1), 3)
    };
    let (mut times, mut restarts): (Vec<f64>, Vec<f64>) = (0..runs)
        .map(|_| startup(shards, max_concurrency, window))
        .unzip();
    times.sort_by(f64::total_cmp);
    restarts.sort_by(f64::total_cmp);
    let big = if smoke {
        big_shard(50, 5, 1)
    } else {
        big_shard(2500, 50, 5)
    };
    let rounds = shards.div_ceil(max_concurrency);
    let minimum = f64::from(rounds - 1) * window.as_secs_f64();

    println!("\n## shard-pool: pipeline cost per event (criterion medians)\n");
    println!("| event | flags | time |");
    println!("|---|---|---:|");
    for (name, event, flags) in [
        (
            "message_default_flags",
            "1 KB MESSAGE_CREATE",
            "default (not parsed)",
        ),
        (
            "presence_cached",
            "PRESENCE_UPDATE",
            "presences (parsed, cached)",
        ),
    ] {
        let time = median_ns("pipeline", name, "", since).map_or_else(|| "—".to_owned(), fmt_ns);
        println!("| {event} | {flags} | {time} |");
    }
    println!(
        "\n## shard-pool: {shards} shards ready, max_concurrency {max_concurrency}, {} ms window (median of {runs})\n",
        window.as_millis()
    );
    println!("| start | measured | pacing's minimum ({rounds} rounds) | ratio |");
    println!("|---|---:|---:|---:|");
    let median = times[times.len() / 2];
    println!(
        "| fresh (identify) | {median:.2} s | {minimum:.2} s | {:.2} |",
        median / minimum
    );
    let restarted = restarts[restarts.len() / 2];
    println!("| restarted (RESUME from checkpoints) | {restarted:.3} s | — | — |");

    let held = big.held[big.held.len() / 2];
    let took = big.took[big.took.len() / 2];
    println!(
        "\n## shard-pool: checkpoints of one shard, {} guilds, {} members cached (median of {})\n",
        big.guilds,
        big.members,
        big.held.len()
    );
    println!(
        "| events wait (copy under the locks) | write in all | size | per guild | per member | restart to ready |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {:.1} ms | {:.1} ms | {:.1} MB | {:.0} B | {:.0} B | {:.0} ms |",
        held.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e3,
        big.bytes as f64 / 1e6,
        big.bytes as f64 / f64::from(big.guilds),
        big.bytes as f64 / big.members.max(1) as f64,
        big.restart.as_secs_f64() * 1e3,
    );
}
