//! What every connection of a proxy shares: the pool, the sessions, the
//! routes of answers, the counters.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use shard_pool::Pool;
use tokio::time::Instant;
use wire_codec::Compression;

use crate::config::ServerConfig;
use crate::session::Sessions;

/// How long a nonce or a voice request routes its answers.
const ROUTE_TTL: Duration = Duration::from_mins(5);

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Which session asked for what, so that the answer goes to it alone.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    /// Op 8 nonces: the session that sent each.
    nonces: Mutex<HashMap<String, (String, Instant)>>,
    /// The session that last sent op 4 for each guild.
    voice: Mutex<HashMap<u64, (String, Instant)>>,
}

impl Routes {
    pub(crate) fn nonce(&self, nonce: String, session: &str, now: Instant) {
        let mut nonces = lock(&self.nonces);
        nonces.retain(|_, (_, at)| now.duration_since(*at) < ROUTE_TTL);
        nonces.insert(nonce, (session.to_owned(), now));
    }

    pub(crate) fn voice(&self, guild: u64, session: &str, now: Instant) {
        let mut voice = lock(&self.voice);
        voice.retain(|_, (_, at)| now.duration_since(*at) < ROUTE_TTL);
        voice.insert(guild, (session.to_owned(), now));
    }

    /// The session a member chunk with `nonce` is for, if one asked.
    pub(crate) fn nonce_owner(&self, nonce: &str) -> Option<String> {
        lock(&self.nonces).get(nonce).map(|(s, _)| s.clone())
    }

    /// The session a voice server update of `guild` is for, if one asked.
    pub(crate) fn voice_owner(&self, guild: u64) -> Option<String> {
        lock(&self.voice).get(&guild).map(|(s, _)| s.clone())
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) replayed: AtomicU64,
    pub(crate) lagging_closed: AtomicU64,
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

/// Everything a connection needs.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) config: ServerConfig,
    pub(crate) pool: Arc<Pool>,
    pub(crate) sessions: Sessions,
    pub(crate) routes: Routes,
    pub(crate) counters: Counters,
    /// Turns true when the proxy shuts down: every connection closes.
    pub(crate) shutdown: tokio::sync::watch::Sender<bool>,
    /// Counts requests to disconnect every client (resumable).
    pub(crate) disconnect: tokio::sync::watch::Sender<u64>,
    next_session: AtomicU64,
    session_salt: u64,
}

impl Context {
    pub(crate) fn new(config: ServerConfig, pool: Arc<Pool>) -> Self {
        Self {
            config,
            pool,
            sessions: Sessions::default(),
            routes: Routes::default(),
            counters: Counters::default(),
            shutdown: tokio::sync::watch::Sender::new(false),
            disconnect: tokio::sync::watch::Sender::new(0),
            next_session: AtomicU64::new(1),
            session_salt: RandomState::new().hash_one(0x5e55_1045u64),
        }
    }

    /// A new session id: 32 hex digits, as Discord's.
    pub(crate) fn session_id(&self) -> String {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        let mixed = RandomState::new().hash_one(n) ^ self.session_salt;
        format!("{mixed:016x}{n:016x}")
    }
}
