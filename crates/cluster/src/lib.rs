//! The gateway proxy across machines, on NATS JetStream.
//!
//! One proxy holds a few hundred shards; a bot that outgrows a machine, or
//! must outlive one, runs several proxies (nodes) on one NATS JetStream
//! server or cluster. Everything the nodes share goes through it, under one
//! namespace ([`ClusterConfig::name`]):
//!
//! - **Identify pacing** ([`KvQueue`]): twilight's [`Queue`] over a
//!   key-value bucket. A turn of rate-limit bucket `shard % max_concurrency`
//!   is the successful *create* of that bucket's key, and the key expires
//!   after the identify window and its margin, so however many nodes start
//!   at once, Discord sees at most `max_concurrency` identifies per window.
//!   The day's identifies are one count, shared.
//! - **Checkpoints** ([`JetStreamStore`]): the durable-sessions [`Store`] as
//!   a JetStream object store, so that a checkpoint written by one node can
//!   be read by any other.
//! - **The event log** ([`EventLog`]): every event of the node's shards,
//!   published to a stream with its index, `s`, session and audience, as
//!   the pool's [`Tap`].
//! - **Any node serves any shard** ([`NatsSource`]): the pool's [`Source`]
//!   for the shards other nodes run: their events read back from the log
//!   into this node's own pipeline, their clients' commands sent to the
//!   node that runs them, which answers them ([`serve_commands`], through
//!   the proxy's [`CommandSink`]).
//! - **Client sessions across nodes** ([`Cluster::sessions`], a
//!   [`KvStore`]): a session whose connection dropped, for any node to
//!   take when its client resumes there.
//!
//! Without a `cluster.nats_url` none of this runs: a single proxy keeps its
//! checkpoints in a directory and paces its own identifies.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use cluster::{Cluster, ClusterConfig};
//! use shard_pool::{GatewayInfo, Pool, PoolConfig};
//!
//! let mut pool_config = PoolConfig::new("my-token", 1 | 1 << 9);
//! pool_config.shard_start = 0;
//! pool_config.shard_end = Some(4); // this node's shards; others run the rest
//!
//! let config = ClusterConfig::new("nats://127.0.0.1:4222", "my-bot", "node-a");
//! let cluster = Cluster::connect(config).await?;
//! let gateway = GatewayInfo::fetch(&pool_config).await?;
//! pool_config.queue = Some(Arc::new(cluster.identify_queue(&gateway, pool_config.identify_window).await?));
//! pool_config.store = Some(Arc::new(cluster.store().await?));
//! pool_config.tap = Some(Arc::new(cluster.event_log(Default::default()).await?));
//! pool_config.source = Some(Arc::new(cluster.source()));
//! pool_config.gateway = Some(gateway);
//! let pool = Pool::start(pool_config).await?;
//! pool.ready().await?;
//! // Every shard of the bot, this node's or followed from another's.
//! let shard = pool.shard(7).ok_or("no such shard")?;
//! shard.ready().await?;
//! # Ok(()) }
//! ```
//!
//! [`Queue`]: shard_pool::Queue
//! [`Tap`]: shard_pool::Tap
//! [`Store`]: shard_pool::Store
//! [`Source`]: shard_pool::Source
//! [`CommandSink`]: shard_pool::CommandSink

mod changes;
mod error;
mod follow;
mod lease;
mod log;
mod members;
mod queue;
mod store;
#[doc(hidden)]
pub mod testing;

use std::fmt;
use std::time::Duration;

use async_nats::jetstream;

pub use crate::changes::Changes;
pub use crate::error::{Error, ErrorKind};
pub use crate::follow::{Commands, NatsSource, serve_commands};
pub use crate::lease::{LeaseLost, Leases, Take};
pub use crate::log::{EventLog, LogLimits, LogStats, headers, parse_audience};
pub use crate::members::{Member, Members, share};
pub use crate::queue::KvQueue;
pub use crate::store::{JetStreamStore, KvStore};

/// Where a JetStream stream or bucket keeps its messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Storage {
    /// On disk: survives a restart of the NATS server.
    #[default]
    File,
    /// In memory: faster, lost when the server restarts.
    Memory,
}

impl Storage {
    fn of(self) -> jetstream::stream::StorageType {
        match self {
            Self::File => jetstream::stream::StorageType::File,
            Self::Memory => jetstream::stream::StorageType::Memory,
        }
    }
}

/// How a node joins its cluster. Start from [`ClusterConfig::new`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// The NATS server (or servers, comma-separated): `nats://host:4222`.
    pub nats_url: String,
    /// The cluster's namespace: every stream, bucket and subject is named
    /// after it, so that several bots can share one NATS. 1 to 32 of
    /// `A-Z a-z 0-9 - _`.
    pub name: String,
    /// This node's name, in logs, `/ready` and what it writes to NATS. 1 to
    /// 64 of `A-Z a-z 0-9 - _ .`.
    pub node_id: String,
    /// Where the event log and the checkpoints are kept.
    pub storage: Storage,
    /// How many servers of a NATS cluster keep each stream (1 to 5).
    pub replicas: usize,
    /// How long a shard's lease lasts unless its node renews it (see
    /// [`Leases`]): how soon a node with the same range takes over the
    /// shards of one that died. 2 s to 5 min.
    pub lease: Duration,
}

impl ClusterConfig {
    /// A node `node_id` of cluster `name` on the NATS server at `nats_url`,
    /// file storage, one replica.
    #[must_use]
    pub fn new(
        nats_url: impl Into<String>,
        name: impl Into<String>,
        node_id: impl Into<String>,
    ) -> Self {
        Self {
            nats_url: nats_url.into(),
            name: name.into(),
            node_id: node_id.into(),
            storage: Storage::File,
            replicas: 1,
            lease: Duration::from_secs(10),
        }
    }

    /// Checks every value; the error names the key and what it must be.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for the first wrong value.
    pub fn validate(&self) -> Result<(), Error> {
        if self.nats_url.trim().is_empty() {
            return Err(Error::config(
                "cluster.nats_url is empty: expected nats://host:port",
            ));
        }
        if !valid_name(&self.name, 32, false) {
            return Err(Error::config(format!(
                "cluster.name {:?}: expected 1 to 32 of A-Z, a-z, 0-9, '-' and '_' \
                 (it names NATS streams and buckets)",
                self.name
            )));
        }
        if !valid_name(&self.node_id, 64, true) {
            return Err(Error::config(format!(
                "cluster.node_id {:?}: expected 1 to 64 of A-Z, a-z, 0-9, '-', '_' and '.'",
                self.node_id
            )));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(Error::config(format!(
                "cluster.replicas {}: JetStream keeps 1 to 5 replicas",
                self.replicas
            )));
        }
        if !(Duration::from_secs(2)..=Duration::from_mins(5)).contains(&self.lease) {
            return Err(Error::config(format!(
                "cluster.lease_secs {}: expected 2 to 300",
                self.lease.as_secs()
            )));
        }
        Ok(())
    }

    /// The default `name` for the bot whose token this is: `gp-` and its
    /// application id, which the token's first part encodes; for a token
    /// that does not (a test's), `gp-` and a hash of it.
    #[must_use]
    pub fn default_name(token: &shard_pool::Token) -> String {
        match application_id(token.expose()) {
            Some(id) => format!("gp-{id}"),
            None => format!("gp-{}", token_hash(token.expose())),
        }
    }
}

/// The application id a bot token starts with: base64 of its digits.
fn application_id(token: &str) -> Option<u64> {
    let token = token.strip_prefix("Bot ").unwrap_or(token);
    let first = token.split('.').next()?;
    let digits = decode_base64(first)?;
    let text = std::str::from_utf8(&digits).ok()?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Base64 as tokens use it: standard alphabet, padded or not.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    ENGINE.decode(text).ok()
}

/// A short, stable name for a token that is not a bot token: the first 8
/// bytes of its SHA-256, in hex.
fn token_hash(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut first = [0; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    format!("{:016x}", u64::from_be_bytes(first))
}

fn valid_name(name: &str, max: usize, dots: bool) -> bool {
    (1..=max).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (dots && b == b'.'))
}

/// A node's connection to its cluster: one NATS connection for everything.
/// Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    config: ClusterConfig,
    jetstream: jetstream::Context,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A lost connection is tried again after this, times the attempts so far.
const RECONNECT_STEP: Duration = Duration::from_millis(250);

/// The longest wait between two tries to reconnect.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// How long connecting to NATS at start may take before the node gives up
/// with an error (once connected, the client reconnects for ever).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The oldest NATS server the cluster runs on (major, minor): async-nats
/// cannot read 2.9's account information, which it asks for to create a
/// key-value bucket (measured with Debian 12's 2.9.10; 2.10.25 passes the
/// crate's tests).
const MIN_SERVER: (u64, u64) = (2, 10);

/// Whether the server at `url`, which introduced itself with `info`, can
/// hold a cluster: JetStream on, and a version from [`MIN_SERVER`] on (a
/// version that does not read as `major.minor…` is let through).
fn check_server(url: &str, info: &async_nats::ServerInfo) -> Result<(), Error> {
    let doing = || format!("connecting to NATS at {url}");
    if !info.jetstream {
        return Err(Error::nats(
            doing(),
            "the server does not have JetStream on: start it with -js \
             (or a jetstream block in its configuration)",
        ));
    }
    let mut parts = info.version.split(['.', '-']).map(str::parse::<u64>);
    if let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next())
        && (major, minor) < MIN_SERVER
    {
        return Err(Error::nats(
            doing(),
            format!(
                "the server is version {}; the cluster needs {}.{} or later",
                info.version, MIN_SERVER.0, MIN_SERVER.1
            ),
        ));
    }
    Ok(())
}

impl Cluster {
    /// Connects to NATS. Once connected, a lost connection is retried for
    /// ever in the background; what needs NATS meanwhile waits or fails
    /// and is retried (each says which).
    ///
    /// # Errors
    ///
    /// A wrong configuration value, NATS not reachable within 10 s, or a
    /// server without JetStream or older than 2.10.
    pub async fn connect(config: ClusterConfig) -> Result<Self, Error> {
        config.validate()?;
        let url = config.nats_url.clone();
        let node = config.node_id.clone();
        let options = async_nats::ConnectOptions::new()
            .name(format!("gateway-proxy {}/{node}", config.name))
            .connection_timeout(CONNECT_TIMEOUT)
            // Back soon after a restart of the server: tries a few times a
            // second at first, then every two seconds.
            .reconnect_delay_callback(|attempts| {
                let attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
                RECONNECT_STEP
                    .saturating_mul(attempts)
                    .min(MAX_RECONNECT_DELAY)
            })
            .event_callback(move |event| {
                let node = node.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!(node, "connected to NATS");
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!(node, "lost the connection to NATS; reconnecting");
                        }
                        other => tracing::debug!(node, event = %other, "NATS"),
                    }
                }
            });
        let client = tokio::time::timeout(CONNECT_TIMEOUT, options.connect(url.as_str()))
            .await
            .map_err(|_| Error::nats(format!("connecting to NATS at {url}"), "timed out"))?
            .map_err(|e| Error::nats(format!("connecting to NATS at {url}"), e))?;
        check_server(&url, &client.server_info())?;
        Ok(Self {
            config,
            jetstream: jetstream::new(client),
        })
    }

    /// The configuration it was started with.
    #[must_use]
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The name of one of the cluster's streams or buckets: `{name}-{what}`.
    pub(crate) fn named(&self, what: &str) -> String {
        format!("{}-{what}", self.config.name)
    }

    pub(crate) fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// The key-value bucket `{name}-{what}` (history 1, entries expire
    /// `max_age` after their last write), created if missing, with this
    /// cluster's storage and replicas.
    pub(crate) async fn key_value(
        &self,
        what: &str,
        description: String,
        max_age: Duration,
    ) -> Result<jetstream::kv::Store, Error> {
        let bucket = self.named(what);
        self.jetstream
            .create_or_update_key_value(jetstream::kv::Config {
                bucket: bucket.clone(),
                description,
                history: 1,
                max_age,
                storage: self.config.storage.of(),
                num_replicas: self.config.replicas,
                ..jetstream::kv::Config::default()
            })
            .await
            .map_err(|e| Error::nats(format!("creating the key-value bucket {bucket}"), e))
    }

    /// The identify queue shared by every node of the cluster, for the
    /// limits `gateway` (`GET /gateway/bot`) gives and identify window
    /// `window`; see [`KvQueue`].
    ///
    /// # Errors
    ///
    /// If its buckets cannot be created or opened.
    pub async fn identify_queue(
        &self,
        gateway: &shard_pool::GatewayInfo,
        window: Duration,
    ) -> Result<KvQueue, Error> {
        KvQueue::open(self, gateway, window).await
    }

    /// The node's event log, kept within `limits`; see [`EventLog`]. Give
    /// it to the pool as its tap ([`shard_pool::PoolConfig::tap`]).
    ///
    /// # Errors
    ///
    /// If its stream cannot be created or updated.
    pub async fn event_log(&self, limits: LogLimits) -> Result<EventLog, Error> {
        EventLog::open(self, limits).await
    }

    /// The pool's source of the shards other nodes run; see
    /// [`NatsSource`]. Give it to the pool
    /// ([`shard_pool::PoolConfig::source`]) with the cluster's
    /// [`store`](Self::store).
    #[must_use]
    pub fn source(&self) -> NatsSource {
        NatsSource::new(self)
    }

    /// Where nodes hand each other the client sessions whose connection
    /// dropped, so that a client resumes on any node: the key-value bucket
    /// `{name}-sessions`, whose entries expire after `ttl` (the session
    /// ttl, and a minute for the node that handed one over to see it
    /// expire).
    ///
    /// # Errors
    ///
    /// If the bucket cannot be created or opened.
    pub async fn sessions(&self, ttl: Duration) -> Result<KvStore, Error> {
        KvStore::open(self, "sessions", ttl + Duration::from_mins(1)).await
    }

    /// The leases of shards this node runs; see [`Leases`]. Take one
    /// ([`Leases::take`]) before running its shard, and stop when one is
    /// lost ([`Leases::keep`]).
    ///
    /// # Errors
    ///
    /// If the bucket cannot be created or opened.
    pub async fn leases(&self) -> Result<Leases, Error> {
        Leases::open(self, self.config.lease).await
    }

    /// This node's entry among the live nodes, announcing `preferred` (its
    /// configured shard range, if any); see [`Members`] and [`share`].
    ///
    /// # Errors
    ///
    /// If the bucket cannot be created or opened.
    pub async fn members(&self, preferred: Option<std::ops::Range<u32>>) -> Result<Members, Error> {
        Members::open(self, self.config.lease, preferred).await
    }

    /// The cluster's checkpoint store; see [`JetStreamStore`].
    ///
    /// # Errors
    ///
    /// If its object store cannot be created or opened.
    pub async fn store(&self) -> Result<JetStreamStore, Error> {
        JetStreamStore::open(self).await
    }
}

/// A std mutex's guard; a poisoned one is taken all the same (what it
/// guards stays consistent: no code here panics while holding it).
pub(crate) fn locked<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_name_is_the_application_id() {
        // "123456789012345678" in base64, as Discord's tokens begin.
        let token = shard_pool::Token::new("MTIzNDU2Nzg5MDEyMzQ1Njc4.GhIjKl.secret");
        assert_eq!(ClusterConfig::default_name(&token), "gp-123456789012345678");
        let bot = shard_pool::Token::new("Bot MTIzNDU2Nzg5MDEyMzQ1Njc4.GhIjKl.secret");
        assert_eq!(ClusterConfig::default_name(&bot), "gp-123456789012345678");
        let other = ClusterConfig::default_name(&shard_pool::Token::new("sim-token"));
        assert!(other.starts_with("gp-") && other.len() == 19, "{other}");
        let config = ClusterConfig::new("nats://x", other, "n");
        assert!(config.validate().is_ok());
    }

    #[test]
    fn a_server_without_jetstream_or_older_than_2_10_is_refused() {
        let info = |version: &str, jetstream: bool| async_nats::ServerInfo {
            version: version.to_owned(),
            jetstream,
            ..async_nats::ServerInfo::default()
        };
        let url = "nats://127.0.0.1:4222";
        for fine in ["2.10.0", "2.15.1", "3.0.0", "2.11.0-RC.1", "v-unknown", ""] {
            assert!(check_server(url, &info(fine, true)).is_ok(), "{fine}");
        }
        let old = check_server(url, &info("2.9.10", true))
            .unwrap_err()
            .to_string();
        assert!(
            old.contains("version 2.9.10") && old.contains("2.10 or later"),
            "{old}"
        );
        assert!(old.contains(url), "{old}");
        let off = check_server(url, &info("2.15.1", false))
            .unwrap_err()
            .to_string();
        assert!(off.contains("JetStream"), "{off}");
    }

    #[test]
    fn wrong_values_are_named() {
        let check = |f: fn(&mut ClusterConfig), key: &str| {
            let mut config = ClusterConfig::new("nats://127.0.0.1:4222", "bot", "node-1.a");
            assert!(config.validate().is_ok());
            f(&mut config);
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(key), "{error}");
        };
        check(|c| c.nats_url = " ".into(), "cluster.nats_url");
        check(|c| c.name = "a.b".into(), "cluster.name");
        check(|c| c.name = "x".repeat(33), "cluster.name");
        check(|c| c.node_id = String::new(), "cluster.node_id");
        check(|c| c.node_id = "a b".into(), "cluster.node_id");
        check(|c| c.replicas = 0, "cluster.replicas");
        check(|c| c.lease = Duration::from_secs(1), "cluster.lease_secs");
    }
}
