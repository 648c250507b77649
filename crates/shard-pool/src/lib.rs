//! Every upstream Discord shard of a range, connected up front: identifies
//! paced, guild state kept, dispatches handed on in order, exactly once.
//!
//! A [`Pool`] asks `GET /gateway/bot` (through twilight-http) for the shard
//! count and the identify limits, refuses to start when the day's
//! identifies would not cover its shards, and runs one twilight-gateway
//! shard per id in `shard_start..shard_end`, each in its own task. Each
//! upstream payload goes through one pipeline:
//!
//! 1. `seqpatch::scan` finds `op`, `t`, `s` and `d` without parsing; only
//!    dispatches go on.
//! 2. The shard's `state_cache::Cache` applies it, if its flags need that
//!    dispatch (most are never parsed).
//! 3. It gets the shard's next event index and goes to every subscriber as
//!    [`ShardEvent::Dispatch`]: the payload as `Bytes`, byte for byte, and
//!    its scan.
//!
//! A dispatch that a resume replays a second time is dropped, so
//! subscribers see each once, in order, across upstream reconnects. A new
//! READY (the upstream session was replaced) is handed on as
//! [`ShardEvent::Reset`]: what happened in between is lost upstream, so the
//! proxy ends its clients' sessions and they identify again.
//!
//! Seams for running across processes, all in [`PoolConfig`]: a shared
//! identify [`Queue`], a checkpoint [`Store`], a [`Tap`] that gets a copy
//! of every event, and a [`Source`] of the shards other processes run,
//! which [`Pool::shard`] then follows (their owner's checkpoint and events
//! fed through this process's own [`Pipeline`], so state and numbering are
//! the owner's). The `cluster` crate fills them with NATS JetStream.
//!
//! ```no_run
//! # async fn run() -> Result<(), shard_pool::Error> {
//! use shard_pool::{Pool, PoolConfig, ShardEvent};
//!
//! let mut config = PoolConfig::new("my-token", 1 | 1 << 9);
//! config.api_base = Some("http://127.0.0.1:9001/api".to_owned());
//! let pool = Pool::start(config).await?;
//! let shard = &pool.shards()[0];
//! shard.ready().await;
//!
//! // A client's READY, and every event after it.
//! let mut snapshot = shard.snapshot(|cache| cache.guild_ids().count());
//! println!("{} guilds, state at event {}", snapshot.value, snapshot.index);
//! while let Ok(event) = snapshot.events.recv().await {
//!     if let ShardEvent::Dispatch(dispatch) = event {
//!         println!("{} {:?}", dispatch.index(), dispatch.event_type());
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Checkpoints
//!
//! With [`PoolConfig::store`] (a [`Store`]: [`DirStore`] for a directory),
//! [`Pool::checkpoint`] writes each shard's state at one index (its
//! upstream session, numbering, ring and state cache), and the next
//! [`Pool::start`] on the same store RESUMEs every shard whose checkpoint is
//! fresh and of the same bot and settings, instead of identifying: nothing
//! is paced, no identify is spent, and Discord replays what came after the
//! checkpoint, which the pipeline numbers as before. [`Pool::freeze`] then
//! [`Pool::shutdown_resumable`] end a process so that the next one can.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use shard_pool::{DirStore, Pool, PoolConfig};
//!
//! let mut config = PoolConfig::new("my-token", 1 | 1 << 9);
//! config.store = Some(Arc::new(DirStore::open("/var/lib/gateway-proxy")?));
//! let pool = Pool::start(config.clone()).await?; // RESUMEs what it can
//! pool.ready().await?;
//! pool.checkpoint().await; // now and then, for a crash
//! pool.freeze();
//! pool.checkpoint().await;
//! pool.shutdown_resumable().await; // the next start RESUMEs every shard
//! # Ok(()) }
//! ```
//!
//! # Pacing
//!
//! Identifies wait for their turn in a [`Queue`]: by default a
//! [`PacedQueue`] (bucket `shard_id % max_concurrency`, one identify per
//! bucket per window, the daily limit); a deployment across machines plugs
//! in a shared one.
//!
//! # Compression
//!
//! Upstream uses zstd-stream by default; build with
//! `--no-default-features --features zlib` for zlib-stream, or with
//! `--no-default-features` for none (plain JSON: no decoder per shard, six
//! times the bytes). twilight chooses at compile time, and zstd wins when
//! both are on; `gateway-proxy`'s features choose for the binary.

mod checkpoint;
mod config;
mod error;
mod follow;
mod pipeline;
mod pool;
mod queue;
mod remote;
mod rest;
mod ring;
mod shard;
mod store;
mod tap;
mod token;

pub use crate::checkpoint::{
    Reader as CheckpointReader, age, put_bytes, put_str, unix_ms, wall_clock,
};
pub use crate::config::{Activity, DISCORD_GATEWAY, PoolConfig, Presence};
pub use crate::error::{Error, ErrorKind};
pub use crate::follow::{Follower, Gone};
pub use crate::pipeline::{
    Audience, Dispatch, MAX_NONCES, Pipeline, ShardEvent, Upstream, VoiceCommand, VoicePhase,
};
pub use crate::pool::{Checkpointed, Pool};
pub use crate::queue::{PacedQueue, Queue, identify_spacing};
pub use crate::remote::{
    Command, CommandFuture, CommandSink, FenceFuture, Followed, FollowedStatus, Outcome, Route,
    Source,
};
pub use crate::rest::GatewayInfo;
pub use crate::ring::RingStats;
pub use crate::shard::{
    CheckpointStats, MAX_LOG_REPLAY, ShardHandle, ShardState, ShardStatus, Snapshot,
};
pub use crate::store::{
    DirStore, Holding, MAX_NAME, Store, StoreError, StoreErrorKind, StoreFuture, check_name,
};
pub use crate::tap::{Tap, Tapped};
pub use crate::token::Token;
pub use state_cache::{Cache, Flags, Session};

/// Checkpoints read back from arbitrary bytes, for the fuzz targets in
/// `fuzz/`; not an API.
#[doc(hidden)]
pub mod fuzzing {
    use std::time::Duration;

    use bytes::Bytes;
    use tokio::time::Instant;

    use crate::checkpoint::{self, Identity};
    use crate::pipeline::{Pipeline, ShardEvent};
    use crate::ring::{Found, Piece, ReplayBudget, Ring, RingLimits};
    use crate::token::Token;
    use state_cache::Flags;

    /// The identity the fuzz targets' checkpoints are written for.
    fn identity() -> Identity {
        Identity::new(&Token::new("fuzz"), 1, 513, Flags::default())
    }

    /// The READY of the fuzz targets' seeds.
    const READY: &str = r#"{"t":"READY","s":1,"op":0,"d":{"v":10,"user":{"id":"10","username":"bot"},"guilds":[{"id":"20","unavailable":true}],"session_id":"s","resume_gateway_url":"ws://r","application":{"id":"10","flags":0}}}"#;

    /// A pipeline checkpoint after READY alone: the fuzz target's minimal
    /// seed (`seed-min`).
    #[must_use]
    pub fn sample_pipeline() -> Vec<u8> {
        let mut pipeline = Pipeline::new(Flags::default());
        let _ = pipeline.handle(Bytes::from_static(READY.as_bytes()));
        let mut out = Vec::new();
        pipeline.checkpoint(&mut out);
        out
    }

    /// A whole shard checkpoint of a few events, some of them packed, with
    /// a routed member chunk and a guild's voice (owner and voice server):
    /// the fuzz target's seed (`seed-shard`).
    #[must_use]
    pub fn sample_shard() -> Vec<u8> {
        let mut pipeline = Pipeline::new(Flags::default());
        let mut ring = Ring::new(limits());
        ring.serve();
        let now = Instant::now();
        let mut payloads = vec![READY.to_owned()];
        payloads.push(r#"{"t":"GUILD_CREATE","s":2,"op":0,"d":{"id":"20","name":"g","roles":[],"channels":[]}}"#.to_owned());
        payloads.push(r#"{"t":"GUILD_MEMBERS_CHUNK","s":3,"op":0,"d":{"guild_id":"20","members":[],"nonce":"n","chunk_index":0,"chunk_count":1}}"#.to_owned());
        for s in 4..59 {
            payloads.push(format!(
                r#"{{"t":"TYPING_START","s":{s},"op":0,"d":{{"channel_id":"30","n":{s}}}}}"#
            ));
        }
        payloads.push(r#"{"t":"VOICE_SERVER_UPDATE","s":59,"op":0,"d":{"token":"t","guild_id":"20","endpoint":"e"}}"#.to_owned());
        pipeline.route_chunks("n", "fuzz-session");
        for payload in payloads {
            if payload.contains("VOICE_SERVER_UPDATE") {
                // Guild 20 is the shard's by now.
                let _ = pipeline.voice_command(20, "fuzz-session", Some(30), |_| true);
            }
            if let Some(event) = pipeline.handle(Bytes::from(payload)) {
                if matches!(event, ShardEvent::Reset { .. }) {
                    ring.push(&event, now);
                    ring.serve();
                } else {
                    ring.push(&event, now);
                }
            }
        }
        ring.pack(now + Duration::from_secs(30));
        let mut out = Vec::new();
        pipeline.checkpoint(&mut out);
        let taken = checkpoint::Taken {
            shard: 0,
            pipeline: out,
            ring: ring.image(),
            at: now,
            held: Duration::ZERO,
        };
        taken.encode(&identity(), checkpoint::wall_clock())
    }

    fn limits() -> RingLimits {
        RingLimits {
            max_events: 1 << 20,
            max_bytes: usize::MAX,
            // Never by age: what a checkpoint holds must not depend on
            // when it is read (the seeds are files written once).
            max_age: Duration::MAX,
            raw_events: 4,
            budget: ReplayBudget::new(usize::MAX),
            keep_unserved: false,
        }
    }

    /// Reads `bytes` as shard 0's checkpoint; if it is one, puts its ring
    /// back and reads every event in it (small blocks unpacked). Returns
    /// how many events that was, or `None` if the checkpoint was refused.
    #[must_use]
    pub fn restore_shard(bytes: &[u8]) -> Option<usize> {
        let restored = checkpoint::restore(
            bytes,
            &identity(),
            0,
            Flags::default(),
            Duration::MAX,
            checkpoint::wall_clock(),
        )
        .ok()?;
        let (head, index) = (restored.ring.head(), restored.pipeline.index());
        assert_eq!(head, index, "a restored ring ends where its pipeline does");
        let ring = Ring::restored(limits(), restored.ring, Instant::now());
        let (floor, _) = ring.window();
        let mut pieces = Vec::new();
        let mut events = 0;
        if ring.read(floor, usize::MAX, &mut pieces) == Found::Events {
            for piece in pieces {
                match piece {
                    Piece::Raw(_) => events += 1,
                    Piece::Packed(block) => {
                        if block.payload_len() <= 1 << 20 {
                            events += block.unpack().map_or(0, |d| d.len());
                        }
                    }
                }
            }
        }
        Some(events)
    }
}
