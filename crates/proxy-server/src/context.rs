//! What every connection of a proxy shares: the pool, the sessions, the
//! routes of answers, the counters.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use shard_pool::{Command, Pool, Route};
use wire_codec::Compression;

use crate::config::ServerConfig;
use crate::keep::Kept;
use crate::limits::{Admission, Budgets};
use crate::prelude::Prelude;
use crate::protocol::{Protocol, ProtocolLimits};
use crate::session::{Session, Sessions};
use tokio::time::Instant;

/// The answer to a heartbeat.
pub(crate) const HEARTBEAT_ACK: &[u8] = br#"{"t":null,"s":null,"op":11,"d":null}"#;

/// The close of a shutdown whose sessions end with the process: 1001,
/// going away.
pub(crate) const SHUTDOWN: (u16, &str) = (1001, "the proxy is shutting down");

/// The close of a shutdown whose sessions a checkpoint keeps: 4000, which
/// clients answer by resuming (against the next process).
pub(crate) const RESTART: (u16, &str) = (4000, "the proxy is restarting; resume");

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) replayed: AtomicU64,
    pub(crate) lagging_closed: AtomicU64,
    /// Connections refused at accept: over `max_connections`, over
    /// `max_connections_per_ip`.
    pub(crate) refused: [AtomicU64; 2],
    /// Clients closed for a command Discord would refuse (4002).
    pub(crate) invalid_commands: AtomicU64,
    /// Clients closed for sending more than their share of a shard's
    /// command budget (4008).
    pub(crate) over_budget: AtomicU64,
    /// Op 4s not sent: another session owned the guild's voice.
    pub(crate) voice_refused: AtomicU64,
    /// Connections closed without IDENTIFY or RESUME in time.
    pub(crate) identify_timeouts: AtomicU64,
    /// Bytes written to clients, by compression (none, zlib-stream,
    /// zstd-stream, payload zlib).
    pub(crate) bytes_out: [AtomicU64; 4],
    /// Connections identified or resumed, by shard.
    pub(crate) clients: Mutex<HashMap<u32, i64>>,
    /// The heartbeat latency last recorded in the histogram, by shard.
    pub(crate) latencies: Mutex<HashMap<u32, Duration>>,
}

impl Counters {
    pub(crate) fn bytes(&self, compression: Compression, n: usize) {
        let slot = compression_slot(compression);
        self.bytes_out[slot].fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn client(&self, shard: u32, delta: i64) {
        *lock(&self.clients).entry(shard).or_default() += delta;
    }

    /// Connections serving a session of `shard`.
    pub(crate) fn clients_of(&self, shard: u32) -> usize {
        let clients = lock(&self.clients).get(&shard).copied().unwrap_or(0);
        usize::try_from(clients).unwrap_or(0)
    }
}

pub(crate) fn compression_slot(compression: Compression) -> usize {
    match compression {
        Compression::ZlibStream => 1,
        Compression::ZstdStream => 2,
        Compression::ZlibPayload => 3,
        _ => 0,
    }
}

/// The names of the compression slots, for metric labels.
pub(crate) const COMPRESSION_NAMES: [&str; 4] =
    ["none", "zlib-stream", "zstd-stream", "zlib-payload"];

/// zlib-stream clients following each shard: whether they get shared
/// bodies depends on how many there are.
#[derive(Debug, Default)]
pub(crate) struct ZlibStreams(Mutex<HashMap<u32, Arc<AtomicUsize>>>);

impl ZlibStreams {
    /// Counts a zlib-stream client of `shard` for as long as the result
    /// lives.
    pub(crate) fn join(&self, shard: u32) -> ZlibStream {
        let count = lock(&self.0).entry(shard).or_default().clone();
        count.fetch_add(1, Ordering::Relaxed);
        ZlibStream(count)
    }
}

/// One zlib-stream client of a shard, counted until dropped.
#[derive(Debug)]
pub(crate) struct ZlibStream(Arc<AtomicUsize>);

impl ZlibStream {
    /// The shard's zlib-stream clients now, this one included.
    pub(crate) fn clients(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

impl Drop for ZlibStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Everything a connection needs.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) config: ServerConfig,
    pub(crate) pool: Arc<Pool>,
    pub(crate) sessions: Sessions,
    /// Where the sessions are kept for the next process, with checkpoints.
    pub(crate) kept: Kept,
    pub(crate) counters: Counters,
    pub(crate) zlib_streams: ZlibStreams,
    /// Connections open, in all and per address.
    pub(crate) admission: Arc<Admission>,
    /// Each shard's command budget.
    pub(crate) budgets: Budgets,
    /// HELLO and the ACKs before IDENTIFY, compressed once: zlib-stream,
    /// zstd-stream.
    preludes: [Option<Prelude>; 2],
    /// What every connection's protocol is bounded by.
    pub(crate) protocol: ProtocolLimits,
    pub(crate) hello: Bytes,
    /// Set when the proxy shuts down, to the close every connection gets:
    /// [`SHUTDOWN`], or [`RESTART`] when a checkpoint keeps the sessions.
    pub(crate) shutdown: tokio::sync::watch::Sender<Option<(u16, &'static str)>>,
    /// Held by whoever writes checkpoints: one at a time, and none after
    /// the last one, at shutdown.
    pub(crate) checkpointing: tokio::sync::Mutex<()>,
    /// Counts requests to disconnect every client (resumable).
    pub(crate) disconnect: tokio::sync::watch::Sender<u64>,
    next_session: AtomicU64,
    next_connection: AtomicU64,
    session_salt: u64,
}

impl Context {
    pub(crate) fn new(config: ServerConfig, pool: Arc<Pool>) -> Self {
        let limits = &config.limits;
        let protocol = ProtocolLimits {
            heartbeat_interval: config.heartbeat_interval,
            max_message_bytes: limits.max_message_bytes,
            identify_timeout: limits.identify_timeout,
            max_early_heartbeats: ProtocolLimits::early_heartbeats(
                config.heartbeat_interval,
                limits.identify_timeout,
            ),
        };
        let hello = Protocol::hello(config.heartbeat_interval);
        let prelude = |compression| {
            Prelude::new(
                compression,
                config.client_compression.level(compression),
                &hello,
                HEARTBEAT_ACK,
                protocol.max_early_heartbeats,
            )
            .map_err(|error| tracing::warn!(%error, "cannot precompress HELLO"))
            .ok()
        };
        let preludes = [
            prelude(Compression::ZlibStream),
            prelude(Compression::ZstdStream),
        ];
        let kept = Kept::new(&pool);
        Self {
            admission: Admission::new(limits.max_connections, limits.max_connections_per_ip),
            budgets: Budgets::new(limits.shard_commands_per_minute),
            preludes,
            protocol,
            hello,
            config,
            pool,
            sessions: Sessions::default(),
            kept,
            counters: Counters::default(),
            zlib_streams: ZlibStreams::default(),
            shutdown: tokio::sync::watch::Sender::new(None),
            checkpointing: tokio::sync::Mutex::new(()),
            disconnect: tokio::sync::watch::Sender::new(0),
            next_session: AtomicU64::new(1),
            next_connection: AtomicU64::new(1),
            session_salt: RandomState::new().hash_one(0x5e55_1045u64),
        }
    }

    /// Saves what a connection sent in session `id` and lets it go:
    /// resumable until the ttl, or ended (see [`Context::session_ended`]).
    pub(crate) fn detach(
        self: &Arc<Self>,
        id: &str,
        session: Session,
        resumable: bool,
        now: Instant,
    ) {
        let shard = session.shard;
        self.sessions.detach(id, session, resumable, now);
        if resumable {
            crate::handover::hand_over(self, id, now);
        } else {
            self.session_ended(id, shard);
        }
    }

    /// Session `id` of shard `shard` is over for good (closed with 1000 or
    /// 1001, its ttl passed, its upstream session replaced): the voice it
    /// owned is left (`voice_leave_on_owner_loss`) or freed, by the shard
    /// here or, if another node runs it, there. Only its own shard can
    /// have given it a guild's voice.
    pub(crate) fn session_ended(&self, id: &str, shard: u32) {
        crate::handover::forget(self, id);
        let leave = self.config.voice_leave_on_owner_loss;
        // A session served here had its shard run or followed here.
        let Some(shard) = self.pool.shard(shard) else {
            return;
        };
        if shard.is_local() {
            let guilds = shard.voice_session_ended(id, leave);
            if !guilds.is_empty() {
                tracing::info!(
                    shard = shard.id(),
                    ?guilds,
                    leave,
                    "the session that owned their voice ended"
                );
            }
            return;
        }
        let ended = Command::new(String::new(), id, Route::Ended { leave });
        tokio::spawn(async move {
            if let Err(error) = shard.command(ended, |_| false).await {
                tracing::warn!(shard = shard.id(), %error, "session end not delivered to the shard's node");
            }
        });
    }

    /// The precompressed start of every connection of a stream
    /// compression.
    pub(crate) fn prelude(&self, compression: Compression) -> Option<&Prelude> {
        match compression {
            Compression::ZlibStream => self.preludes[0].as_ref(),
            Compression::ZstdStream => self.preludes[1].as_ref(),
            _ => None,
        }
    }

    /// A number for a new connection, unique in this process.
    pub(crate) fn connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// A new session id: 32 hex digits, as Discord's.
    pub(crate) fn session_id(&self) -> String {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        let mixed = RandomState::new().hash_one(n) ^ self.session_salt;
        format!("{mixed:016x}{n:016x}")
    }
}
