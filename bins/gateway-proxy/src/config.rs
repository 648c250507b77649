//! `config.json`, compatible with the original gateway-proxy's.
//!
//! [`load`] layers three sources, the later winning key by key:
//!
//! 1. built-in defaults (the `#[serde(default)]`s below);
//! 2. the JSON file: the path given (the `--config` flag), else the
//!    `GATEWAY_PROXY_CONFIG` environment variable, else `./config.json`
//!    (only this last one may be missing);
//! 3. the environment: `TOKEN` for `token`, then `GATEWAY_PROXY_<KEY>`
//!    with `__` between nested keys (`GATEWAY_PROXY_CACHE__MEMBERS=false`),
//!    values parsed as figment's `Env` parses them.
//!
//! Every error is one [`ConfigError`] naming where the bad value came from
//! (the file or the environment variable), the key and what was expected.
//! `docs/configuration.md` documents every key.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::error::{Actual, Kind};
use figment::providers::{Format, Json};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use proxy_server::{ClientCompression, Limits, ServerConfig};
use serde::{Deserialize, Deserializer, Serialize};
use shard_pool::{Activity, Flags, PoolConfig, Presence, Token};

/// The exit code of the binary when the configuration is bad: `EX_USAGE`
/// of `sysexits.h`, so supervisors can tell a config error (do not restart
/// in a loop) from a crash.
pub const EXIT_CONFIG: i32 = 64;

/// The config file read when none is given.
pub const DEFAULT_PATH: &str = "config.json";

/// The environment variable that names the config file when no path is
/// given (it is not a config key).
pub const CONFIG_PATH_VAR: &str = "GATEWAY_PROXY_CONFIG";

/// The prefix of the environment variables that set config keys.
pub const ENV_PREFIX: &str = "GATEWAY_PROXY_";

/// The environment variable that sets `token`, as in the original.
pub const TOKEN_VAR: &str = "TOKEN";

/// The statuses Discord accepts in IDENTIFY's presence.
pub const STATUSES: &[&str] = &["online", "idle", "dnd", "invisible", "offline"];

/// Keys whose values are strings: their environment variables are taken
/// as they are, never parsed (a `GATEWAY_PROXY_ACTIVITY__NAME=1234` is the
/// name "1234", not a number).
const STRING_KEYS: &[&str] = &[
    "log_level",
    "token",
    "status",
    "externally_accessible_url",
    "twilight_http_proxy",
    "gateway_url",
    "api_base",
    "bind",
    "activity.name",
    "activity.url",
    "state_dir",
    "cluster.nats_url",
    "cluster.name",
    "cluster.node_id",
    "cluster.storage",
];

/// How much further back than its connection dropped a resume reads a
/// cluster's event log ([`proxy_server::LOG_MARGIN`]: the nodes' and NATS'
/// clocks may differ this much), so what the stream must keep beyond
/// `session_ttl_secs`.
const RESUME_LOG_MARGIN_SECS: u64 = proxy_server::LOG_MARGIN.as_secs();

/// The name of the metadata of the environment layers, to tell them from
/// the file when naming where a value came from.
const ENV_METADATA: &str = "environment variable";

/// The whole configuration: every key of the original gateway-proxy with
/// its name and meaning, plus the new ones (`gateway_url`, `api_base`,
/// `bind`, `session_ttl_secs`, `replay_max_events`, `replay_max_bytes`,
/// `large_threshold`, and `cache.threads`, `cache.soundboard_sounds`).
///
/// Build it with [`load`]; [`Config::pool_config`] and
/// [`Config::server_config`] turn it into what the two halves of the proxy
/// take.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The tracing filter, e.g. `info` or `gateway_proxy=debug,info`.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// The bot token (with or without `Bot `). Required: an empty token is
    /// an error of [`Config::validate`].
    #[serde(default)]
    pub token: String,
    /// The gateway intents bitfield every shard identifies with. Required.
    pub intents: u64,
    /// The port clients and HTTP requests (`/metrics`, `/shard-count`,
    /// `/health`, `/ready`) come to.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The activity every shard identifies with; `{{shard}}` in its name
    /// is replaced by each shard's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<ActivityConfig>,
    /// `online`, `idle`, `dnd`, `invisible` or `offline`.
    #[serde(default = "default_status")]
    pub status: String,
    /// How many events may wait for one client before it counts as too
    /// slow and is disconnected (it may resume).
    #[serde(default = "default_backpressure")]
    pub backpressure: usize,
    /// Where clients reconnect to resume (READY's `resume_gateway_url`);
    /// empty means `ws://127.0.0.1:{port}`, which [`load`] fills in.
    #[serde(default)]
    pub externally_accessible_url: String,
    /// Whether a client's IDENTIFY must carry `token` (close 4004 if not).
    #[serde(default = "default_true")]
    pub validate_token: bool,
    /// The bot's total shard count; `None` asks Discord
    /// (`GET /gateway/bot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
    /// The first shard this proxy runs (inclusive).
    #[serde(default)]
    pub shard_start: u32,
    /// The shard after the last one this proxy runs (exclusive); `None`
    /// runs up to the total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_end: Option<u32>,
    /// The original's REST proxy, `ip:port`, spoken to over HTTP;
    /// `api_base` wins over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twilight_http_proxy: Option<String>,
    /// What each shard's state cache keeps.
    #[serde(default)]
    pub cache: CacheConfig,
    /// The upstream gateway, e.g. `ws://127.0.0.1:9000`; `None` takes the
    /// URL `GET /gateway/bot` gives (Discord's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_url: Option<String>,
    /// The upstream REST base, e.g. `http://127.0.0.1:9001/api`; `None` is
    /// Discord's. Wins over `twilight_http_proxy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_base: Option<String>,
    /// The address to listen on; the proxy listens on `bind:port`.
    #[serde(default = "default_bind", deserialize_with = "ip_addr")]
    pub bind: IpAddr,
    /// How long, in seconds, a disconnected client's session can still be
    /// resumed.
    #[serde(default = "default_session_ttl_secs")]
    pub session_ttl_secs: u64,
    /// The most dispatches each shard's ring keeps (a cap per shard).
    #[serde(default = "default_replay_max_events")]
    pub replay_max_events: usize,
    /// The most bytes the rings of all shards keep together: one budget.
    #[serde(default = "default_replay_max_bytes")]
    pub replay_max_bytes: usize,
    /// The most bytes one shard's ring keeps, under the shared budget;
    /// absent: the budget alone.
    #[serde(default)]
    pub replay_shard_max_bytes: Option<usize>,
    /// IDENTIFY's `large_threshold`, 50 to 250: guilds with more members
    /// come without their offline members.
    #[serde(default = "default_large_threshold")]
    pub large_threshold: u64,
    /// What a peer can make the proxy hold, and for how long.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// How clients that ask for compression get it.
    #[serde(default)]
    pub client_compression: ClientCompressionConfig,
    /// The directory where each shard's checkpoint is kept, so that a
    /// restart (or a crash) of the proxy RESUMEs every upstream session
    /// and keeps every client session; absent: none, a restart
    /// identifies every shard again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,
    /// How often, in seconds, checkpoints are written while running (with
    /// `state_dir`); 0: only at shutdown.
    #[serde(default = "default_checkpoint_interval_secs")]
    pub checkpoint_interval_secs: u64,
    /// The oldest checkpoint, in seconds, a shard starts from; an older
    /// one is passed over and the shard identifies.
    #[serde(default = "default_checkpoint_max_age_secs")]
    pub checkpoint_max_age_secs: u64,
    /// How voice is handled.
    #[serde(default)]
    pub voice: VoiceConfig,
    /// Several proxies on NATS JetStream; off unless `cluster.nats_url`.
    #[serde(default)]
    pub cluster: ClusterSection,
}

/// The `cluster` key: off unless `nats_url` is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// The NATS server (or servers, comma-separated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_url: Option<String>,
    /// The namespace of every stream, bucket and subject; absent: `gp-`
    /// and the application id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// This node's name; absent: the host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// `file` or `memory`: where JetStream keeps the cluster's data.
    pub storage: String,
    /// How many NATS servers keep each stream and bucket.
    pub replicas: usize,
    /// The oldest event the event log keeps, in seconds (at least
    /// `session_ttl_secs`).
    pub stream_max_age_secs: u64,
    /// The most bytes the event log keeps.
    pub stream_max_bytes: u64,
    /// How long a shard's lease lasts unless its node renews it, in
    /// seconds: how soon a standby node takes over.
    pub lease_secs: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            nats_url: None,
            name: None,
            node_id: None,
            storage: "file".to_owned(),
            replicas: 1,
            stream_max_age_secs: 600,
            stream_max_bytes: 1 << 30,
            lease_secs: 10,
        }
    }
}

/// The `voice` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VoiceConfig {
    /// Whether the bot leaves a guild's voice channel when the client
    /// session that owns it ends for good.
    pub leave_on_owner_loss: bool,
}

impl Default for VoiceConfig {
    fn default() -> Self {
        Self {
            leave_on_owner_loss: true,
        }
    }
}

/// The `client_compression` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientCompressionConfig {
    /// zlib level, 0–9, of zlib-stream and payload compression.
    pub zlib_level: u32,
    /// Compress each dispatch once for all zlib clients of its shard.
    pub zlib_shared: bool,
    /// zlib-stream clients of a shard from which they share bodies.
    pub zlib_shared_min_clients: usize,
    /// zstd level, 1–22, of zstd-stream.
    pub zstd_level: i32,
}

impl Default for ClientCompressionConfig {
    fn default() -> Self {
        let defaults = ClientCompression::default();
        Self {
            zlib_level: defaults.zlib_level,
            zlib_shared: defaults.zlib_shared,
            zlib_shared_min_clients: defaults.zlib_shared_min_clients,
            zstd_level: defaults.zstd_level,
        }
    }
}

impl From<ClientCompressionConfig> for ClientCompression {
    fn from(config: ClientCompressionConfig) -> Self {
        let mut compression = Self::default();
        compression.zlib_level = config.zlib_level;
        compression.zlib_shared = config.zlib_shared;
        compression.zlib_shared_min_clients = config.zlib_shared_min_clients;
        compression.zstd_level = config.zstd_level;
        compression
    }
}

/// The `limits` key: every bound on what a peer can make the proxy hold.
/// The defaults are safe for a port open to anyone (docs/operations.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// The most bytes one client message may hold across its fragments.
    pub max_message_bytes: usize,
    /// Control frames that may wait for a client that does not read.
    pub max_control_frames: usize,
    /// Seconds a connection may stay without IDENTIFY or RESUME.
    pub identify_timeout_secs: u64,
    /// Seconds one write to a client may take.
    pub write_timeout_secs: u64,
    /// Seconds a connection may take to send its HTTP request headers.
    pub http_header_timeout_secs: u64,
    /// Connections open at once, in all.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_connections_per_ip: usize,
    /// Commands sent upstream per shard per minute, shared by its clients.
    pub shard_commands_per_minute: u32,
    /// The kernel send buffer of each client connection (`SO_SNDBUF`).
    pub socket_send_buffer_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            max_message_bytes: limits.max_message_bytes,
            max_control_frames: limits.max_control_frames,
            identify_timeout_secs: limits.identify_timeout.as_secs(),
            write_timeout_secs: limits.write_timeout.as_secs(),
            http_header_timeout_secs: limits.http_header_timeout.as_secs(),
            max_connections: limits.max_connections,
            max_connections_per_ip: limits.max_connections_per_ip,
            shard_commands_per_minute: limits.shard_commands_per_minute,
            socket_send_buffer_bytes: limits.socket_send_buffer_bytes,
        }
    }
}

impl From<LimitsConfig> for Limits {
    fn from(config: LimitsConfig) -> Self {
        let mut limits = Limits::default();
        limits.max_message_bytes = config.max_message_bytes;
        limits.max_control_frames = config.max_control_frames;
        limits.identify_timeout = Duration::from_secs(config.identify_timeout_secs);
        limits.write_timeout = Duration::from_secs(config.write_timeout_secs);
        limits.http_header_timeout = Duration::from_secs(config.http_header_timeout_secs);
        limits.max_connections = config.max_connections;
        limits.max_connections_per_ip = config.max_connections_per_ip;
        limits.shard_commands_per_minute = config.shard_commands_per_minute;
        limits.socket_send_buffer_bytes = config.socket_send_buffer_bytes;
        limits
    }
}

/// The `activity` key: the original's (twilight's minimal activity).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivityConfig {
    /// `type`: 0 playing, 1 streaming, 2 listening, 3 watching, 4 custom,
    /// 5 competing.
    #[serde(rename = "type")]
    pub kind: u8,
    /// The name; `{{shard}}` is replaced by each shard's id.
    pub name: String,
    /// The stream URL (streaming only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The `cache` key: the original's eleven switches plus `threads` and
/// `soundboard_sounds`. A missing switch takes [`Flags::default`]'s value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "one switch per resource, as in the config"
)]
pub struct CacheConfig {
    /// Guild channels (not threads).
    pub channels: bool,
    /// Presences of members who are not offline.
    pub presences: bool,
    /// Custom emojis.
    pub emojis: bool,
    /// The bot's own member in each guild, even with `members` off.
    pub current_member: bool,
    /// Every member Discord sends.
    pub members: bool,
    /// Roles; off keeps only `@everyone`.
    pub roles: bool,
    /// Scheduled events.
    pub scheduled_events: bool,
    /// Stage instances.
    pub stage_instances: bool,
    /// Stickers.
    pub stickers: bool,
    /// Members' user objects follow `PRESENCE_UPDATE`'s user fields.
    pub users: bool,
    /// Voice states.
    pub voice_states: bool,
    /// Active threads (new).
    pub threads: bool,
    /// Soundboard sounds (new).
    pub soundboard_sounds: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self::from(Flags::default())
    }
}

impl From<Flags> for CacheConfig {
    fn from(flags: Flags) -> Self {
        Self {
            channels: flags.channels,
            presences: flags.presences,
            emojis: flags.emojis,
            current_member: flags.current_member,
            members: flags.members,
            roles: flags.roles,
            scheduled_events: flags.scheduled_events,
            stage_instances: flags.stage_instances,
            stickers: flags.stickers,
            users: flags.users,
            voice_states: flags.voice_states,
            threads: flags.threads,
            soundboard_sounds: flags.soundboard_sounds,
        }
    }
}

impl From<CacheConfig> for Flags {
    fn from(cache: CacheConfig) -> Self {
        let mut flags = Flags::default();
        flags.channels = cache.channels;
        flags.presences = cache.presences;
        flags.emojis = cache.emojis;
        flags.current_member = cache.current_member;
        flags.members = cache.members;
        flags.roles = cache.roles;
        flags.scheduled_events = cache.scheduled_events;
        flags.stage_instances = cache.stage_instances;
        flags.stickers = cache.stickers;
        flags.users = cache.users;
        flags.voice_states = cache.voice_states;
        flags.threads = cache.threads;
        flags.soundboard_sounds = cache.soundboard_sounds;
        flags
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

const fn default_port() -> u16 {
    7878
}

fn default_status() -> String {
    "online".to_owned()
}

const fn default_backpressure() -> usize {
    100
}

const fn default_true() -> bool {
    true
}

const fn default_bind() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}

const fn default_session_ttl_secs() -> u64 {
    300
}

const fn default_checkpoint_interval_secs() -> u64 {
    30
}

const fn default_checkpoint_max_age_secs() -> u64 {
    120
}

const fn default_replay_max_events() -> usize {
    1 << 20
}

const fn default_replay_max_bytes() -> usize {
    256 << 20
}

const fn default_large_threshold() -> u64 {
    250
}

/// `bind`: an IP address written as a string, with an error that says so.
fn ip_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        serde::de::Error::invalid_value(
            serde::de::Unexpected::Str(&text),
            &"an IP address such as 0.0.0.0 or ::",
        )
    })
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("log_level", &self.log_level)
            .field("token", &"…")
            .field("intents", &self.intents)
            .field("port", &self.port)
            .field("activity", &self.activity)
            .field("status", &self.status)
            .field("backpressure", &self.backpressure)
            .field("externally_accessible_url", &self.externally_accessible_url)
            .field("validate_token", &self.validate_token)
            .field("shards", &self.shards)
            .field("shard_start", &self.shard_start)
            .field("shard_end", &self.shard_end)
            .field("twilight_http_proxy", &self.twilight_http_proxy)
            .field("cache", &self.cache)
            .field("gateway_url", &self.gateway_url)
            .field("api_base", &self.api_base)
            .field("bind", &self.bind)
            .field("session_ttl_secs", &self.session_ttl_secs)
            .field("replay_max_events", &self.replay_max_events)
            .field("replay_max_bytes", &self.replay_max_bytes)
            .field("replay_shard_max_bytes", &self.replay_shard_max_bytes)
            .field("client_compression", &self.client_compression)
            .field("large_threshold", &self.large_threshold)
            .field("limits", &self.limits)
            .field("state_dir", &self.state_dir)
            .field("checkpoint_interval_secs", &self.checkpoint_interval_secs)
            .field("checkpoint_max_age_secs", &self.checkpoint_max_age_secs)
            .field("voice", &self.voice)
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl Config {
    /// Checks what types alone cannot: a token is set, `status` is one
    /// Discord knows, `large_threshold` is within 50 to 250, the shard
    /// range is in order and within `shards`, `log_level` is a tracing
    /// filter, `activity.type` is 0 to 5, `backpressure` is at least 1.
    ///
    /// [`load`] calls it and adds where the bad value came from.
    ///
    /// # Errors
    ///
    /// The first problem found, naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| Err(ConfigError::invalid(key, message));
        if self.token.trim().is_empty() {
            return invalid(
                "token",
                format!(
                    "expected the bot token, found nothing (set \"token\" in the config file \
                     or the {TOKEN_VAR} environment variable)"
                ),
            );
        }
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return invalid(
                "log_level",
                format!(
                    "expected a tracing filter such as \"info\" or \"gateway_proxy=debug,info\", \
                     found {:?} ({error})",
                    self.log_level
                ),
            );
        }
        if !STATUSES.contains(&self.status.as_str()) {
            return invalid(
                "status",
                format!(
                    "expected one of {}, found {:?}",
                    quoted_list(STATUSES),
                    self.status
                ),
            );
        }
        if let Some(activity) = &self.activity
            && activity.kind > 5
        {
            return invalid(
                "activity.type",
                format!(
                    "expected an activity type from 0 to 5 (0 playing, 1 streaming, 2 listening, \
                     3 watching, 4 custom, 5 competing), found {}",
                    activity.kind
                ),
            );
        }
        if !(50..=250).contains(&self.large_threshold) {
            return invalid(
                "large_threshold",
                format!(
                    "expected an integer from 50 to 250, found {}",
                    self.large_threshold
                ),
            );
        }
        if self.backpressure == 0 {
            return invalid(
                "backpressure",
                "expected at least 1 event, found 0".to_owned(),
            );
        }
        if self.replay_max_events < 4 {
            return invalid(
                "replay_max_events",
                format!("expected at least 4, found {}", self.replay_max_events),
            );
        }
        self.validate_checkpoints()?;
        self.validate_cluster()?;
        self.validate_limits()?;
        let compression = &self.client_compression;
        if compression.zlib_level > 9 {
            return invalid(
                "client_compression.zlib_level",
                format!("expected 0 to 9, found {}", compression.zlib_level),
            );
        }
        if compression.zlib_shared_min_clients == 0 {
            return invalid(
                "client_compression.zlib_shared_min_clients",
                "expected at least 1, found 0".to_owned(),
            );
        }
        if !(1..=22).contains(&compression.zstd_level) {
            return invalid(
                "client_compression.zstd_level",
                format!("expected 1 to 22, found {}", compression.zstd_level),
            );
        }
        self.validate_shards()
    }

    fn validate_checkpoints(&self) -> Result<(), ConfigError> {
        if self.checkpoint_max_age_secs == 0 {
            return Err(ConfigError::invalid(
                "checkpoint_max_age_secs",
                "expected at least 1 second, found 0".to_owned(),
            ));
        }
        if self
            .state_dir
            .as_deref()
            .is_some_and(|dir| dir.trim().is_empty())
        {
            return Err(ConfigError::invalid(
                "state_dir",
                "expected a directory, found an empty string (leave the key out for none)"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let section = &self.cluster;
        if section.nats_url.is_none() {
            return Ok(());
        }
        let Some(config) = self.cluster_config() else {
            return Ok(());
        };
        if let Err(error) = config.validate() {
            let message = error.to_string();
            let key = [
                "cluster.nats_url",
                "cluster.name",
                "cluster.node_id",
                "cluster.replicas",
                "cluster.lease_secs",
            ]
            .into_iter()
            .find(|key| message.starts_with(key))
            .unwrap_or("cluster");
            return Err(ConfigError::invalid(key, message));
        }
        let oldest = self.session_ttl_secs.saturating_add(RESUME_LOG_MARGIN_SECS);
        if section.stream_max_age_secs < oldest {
            return Err(ConfigError::invalid(
                "cluster.stream_max_age_secs",
                format!(
                    "expected at least session_ttl_secs + {RESUME_LOG_MARGIN_SECS} ({oldest}): \
                     a session resumed on another node replays from the event log, from a \
                     minute before its connection dropped, found {}",
                    section.stream_max_age_secs
                ),
            ));
        }
        if section.stream_max_bytes < 1 << 20 {
            return Err(ConfigError::invalid(
                "cluster.stream_max_bytes",
                format!(
                    "expected at least 1048576 (1 MiB), found {}",
                    section.stream_max_bytes
                ),
            ));
        }
        if !["file", "memory"].contains(&section.storage.as_str()) {
            return Err(ConfigError::invalid(
                "cluster.storage",
                format!(
                    "expected \"file\" or \"memory\", found {:?}",
                    section.storage
                ),
            ));
        }
        Ok(())
    }

    /// The cluster this node joins, with the defaults filled in (the name
    /// from the token, the node id from the host name); `None` without
    /// `cluster.nats_url`.
    #[must_use]
    pub fn cluster_config(&self) -> Option<cluster::ClusterConfig> {
        let section = &self.cluster;
        let url = section.nats_url.clone()?;
        let name = section.name.clone().unwrap_or_else(|| {
            cluster::ClusterConfig::default_name(&Token::new(self.token.clone()))
        });
        let node = section.node_id.clone().unwrap_or_else(host_name);
        let mut config = cluster::ClusterConfig::new(url, name, node);
        config.storage = if section.storage == "memory" {
            cluster::Storage::Memory
        } else {
            cluster::Storage::File
        };
        config.replicas = section.replicas;
        config.lease = Duration::from_secs(section.lease_secs);
        Some(config)
    }

    /// The event log's bounds (with `cluster.nats_url`).
    #[must_use]
    pub fn log_limits(&self) -> cluster::LogLimits {
        let mut limits = cluster::LogLimits::default();
        limits.max_age = Duration::from_secs(self.cluster.stream_max_age_secs);
        limits.max_bytes = self.cluster.stream_max_bytes;
        limits
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        let at_least = |key: &str, value: u64, least: u64, unit: &str| {
            if value < least {
                return Err(ConfigError::invalid(
                    &format!("limits.{key}"),
                    format!("expected at least {least} {unit}, found {value}"),
                ));
            }
            Ok(())
        };
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        // Discord's own limit: a smaller one would refuse what real
        // libraries send.
        at_least(
            "max_message_bytes",
            count(limits.max_message_bytes),
            4096,
            "bytes",
        )?;
        at_least(
            "max_control_frames",
            count(limits.max_control_frames),
            1,
            "frame",
        )?;
        at_least(
            "identify_timeout_secs",
            limits.identify_timeout_secs,
            1,
            "second",
        )?;
        at_least("write_timeout_secs", limits.write_timeout_secs, 1, "second")?;
        at_least(
            "http_header_timeout_secs",
            limits.http_header_timeout_secs,
            1,
            "second",
        )?;
        at_least(
            "max_connections",
            count(limits.max_connections),
            1,
            "connection",
        )?;
        at_least(
            "max_connections_per_ip",
            count(limits.max_connections_per_ip),
            1,
            "connection",
        )?;
        at_least(
            "socket_send_buffer_bytes",
            count(limits.socket_send_buffer_bytes),
            4096,
            "bytes",
        )?;
        at_least(
            "shard_commands_per_minute",
            u64::from(limits.shard_commands_per_minute),
            1,
            "command",
        )?;
        if limits.shard_commands_per_minute > 118 {
            return Err(ConfigError::invalid(
                "limits.shard_commands_per_minute",
                format!(
                    "expected at most 118 (Discord closes a shard that sends more than 120 \
                     payloads a minute, heartbeats included), found {}",
                    limits.shard_commands_per_minute
                ),
            ));
        }
        Ok(())
    }

    fn validate_shards(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| Err(ConfigError::invalid(key, message));
        if self.shards == Some(0) {
            return invalid("shards", "expected at least 1 shard, found 0".to_owned());
        }
        // A node of a cluster may run no shard and serve clients of the
        // others' (shard_end equal to shard_start).
        let serving_only = self.cluster.nats_url.is_some();
        if let Some(end) = self.shard_end
            && (end < self.shard_start || (end == self.shard_start && !serving_only))
        {
            return invalid(
                "shard_end",
                format!(
                    "expected a shard after shard_start ({}; shard_end is exclusive; equal to it \
                     only for a node of a cluster that runs no shard), found {end}",
                    self.shard_start
                ),
            );
        }
        if let Some(total) = self.shards {
            if let Some(end) = self.shard_end
                && end > total
            {
                return invalid(
                    "shard_end",
                    format!(
                        "expected at most shards ({total}; shard_end is exclusive), found {end}"
                    ),
                );
            }
            if self.shard_start >= total {
                return invalid(
                    "shard_start",
                    format!(
                        "expected a shard below shards ({total}), found {}",
                        self.shard_start
                    ),
                );
            }
        }
        Ok(())
    }

    /// Where the proxy listens: `bind:port`.
    #[must_use]
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.port)
    }

    /// `externally_accessible_url`, or `ws://127.0.0.1:{port}` if it is
    /// empty.
    #[must_use]
    pub fn resume_url(&self) -> String {
        if self.externally_accessible_url.is_empty() {
            format!("ws://127.0.0.1:{}", self.port)
        } else {
            self.externally_accessible_url.clone()
        }
    }

    /// The shard pool's configuration: token, intents, the shard range,
    /// the upstream URLs, the presence (`status` and `activity`), the
    /// `large_threshold`, the cache flags and the replay ring's bounds;
    /// everything else keeps
    /// [`PoolConfig::new`]'s defaults.
    #[must_use]
    pub fn pool_config(&self) -> PoolConfig {
        let mut pool = PoolConfig::new(self.token.clone(), self.intents);
        pool.shards = self.shards;
        pool.shard_start = self.shard_start;
        pool.shard_end = self.shard_end;
        pool.gateway_url.clone_from(&self.gateway_url);
        pool.api_base.clone_from(&self.api_base);
        pool.twilight_http_proxy
            .clone_from(&self.twilight_http_proxy);
        let mut presence = Presence::default();
        presence.status.clone_from(&self.status);
        presence.activity = self.activity.as_ref().map(|configured| {
            let mut activity = Activity::new(configured.kind, configured.name.clone());
            activity.url.clone_from(&configured.url);
            activity
        });
        pool.presence = presence;
        pool.large_threshold = self.large_threshold;
        pool.cache = self.cache.into();
        pool.replay_max_events = self.replay_max_events;
        pool.replay_max_bytes = self.replay_max_bytes;
        pool.replay_shard_max_bytes = self.replay_shard_max_bytes;
        // Nothing older can be asked for: a session resumes within its ttl.
        pool.replay_max_age = Duration::from_secs(self.session_ttl_secs);
        pool.checkpoint_max_age = Duration::from_secs(self.checkpoint_max_age_secs);
        pool
    }

    /// The client side's configuration: `bind:port`, the token and
    /// `validate_token`, `externally_accessible_url`, `backpressure` and the
    /// session TTL; the heartbeat interval keeps
    /// [`ServerConfig::new`]'s default.
    #[must_use]
    pub fn server_config(&self) -> ServerConfig {
        let mut server = ServerConfig::new(self.listen_addr(), self.token.clone());
        server.validate_token = self.validate_token;
        server.externally_accessible_url = self.resume_url();
        server.backpressure = self.backpressure;
        server.session_ttl = Duration::from_secs(self.session_ttl_secs);
        server.limits = self.limits.into();
        server.client_compression = self.client_compression.into();
        server.checkpoint_interval = Duration::from_secs(self.checkpoint_interval_secs);
        server.voice_leave_on_owner_loss = self.voice.leave_on_owner_loss;
        server
    }
}

/// This machine's host name (a node's default id), as the kernel has it,
/// else `node`; cut to what a node id may hold.
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(64)
        .collect();
    if name.is_empty() {
        "node".to_owned()
    } else {
        name
    }
}

/// Loads the configuration: defaults < the JSON file < the environment.
///
/// `path` is the `--config` flag; without it, `GATEWAY_PROXY_CONFIG` from
/// `env` names the file, and without that `./config.json` is read if it
/// exists. `env` is the environment (`std::env::vars()` in the binary,
/// explicit pairs in tests): `TOKEN` sets `token`, and
/// `GATEWAY_PROXY_<KEY>` sets `<key>` (case-insensitive, `__` between
/// nested keys, so `GATEWAY_PROXY_CACHE__MEMBERS=false` sets
/// `cache.members`), winning over `TOKEN`. Values are parsed as figment's
/// `Env` parses them (`false`, `16`), except for keys that are strings,
/// which are taken as they are. Unknown keys, in the file or the
/// environment, are errors. The result is [validated](Config::validate).
///
/// # Errors
///
/// A [`ConfigError`] naming the file or environment variable, the key and
/// what was expected: a file that was named but does not exist, a file
/// that is not JSON, an unknown key, a value of the wrong type, a missing
/// `intents`, or a failed [`Config::validate`].
pub fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = env.into_iter().collect();
    let (path, explicit) = match path {
        Some(path) => (path.to_path_buf(), true),
        None => match env.iter().rev().find(|(key, value)| {
            key.trim().eq_ignore_ascii_case(CONFIG_PATH_VAR) && !value.is_empty()
        }) {
            Some((_, value)) => (PathBuf::from(value), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        },
    };
    let exists = path.exists();
    let file_label = if exists {
        path.display().to_string()
    } else if explicit {
        return Err(ConfigError {
            origin: Some(path.display().to_string()),
            key: None,
            problem: Problem::Other("the config file was given but does not exist".to_owned()),
        });
    } else {
        format!("{} (not found)", path.display())
    };

    let mut figment = Figment::new();
    if exists {
        figment = figment.merge(Json::file_exact(&path));
    }
    let figment = figment
        .merge(EnvLayer::token(&env))
        .merge(EnvLayer::prefixed(&env));

    let mut config: Config = figment
        .extract()
        .map_err(|error| ConfigError::from_figment(error, &file_label))?;
    if config.externally_accessible_url.is_empty() {
        config.externally_accessible_url = config.resume_url();
    }
    config.validate().map_err(|mut error| {
        if let Some(key) = &error.key {
            error.origin = origin_of(&figment, key, &file_label);
        }
        error
    })?;
    Ok(config)
}

/// Where the value of the dotted `key` came from, if not from a default.
fn origin_of(figment: &Figment, key: &str, file_label: &str) -> Option<String> {
    let metadata = figment.find_metadata(key)?;
    let path: Vec<&str> = key.split('.').collect();
    Some(describe_origin(metadata, &path, file_label))
}

fn describe_origin(metadata: &Metadata, path: &[impl AsRef<str>], file_label: &str) -> String {
    if metadata.name == ENV_METADATA {
        format!(
            "{ENV_METADATA} {}",
            metadata.interpolate(&Profile::Default, path)
        )
    } else {
        file_label.to_owned()
    }
}

/// One environment layer: figment's `Env`, over given pairs instead of the
/// process's environment.
struct EnvLayer {
    /// Dotted key, value: already parsed.
    entries: Vec<(String, Value)>,
    /// The variable for a key path, for error messages.
    var_name: fn(&[&str]) -> String,
}

impl EnvLayer {
    /// `TOKEN` (any case), always a string.
    fn token(env: &[(String, String)]) -> Self {
        let entries = env
            .iter()
            .filter(|(key, _)| key.trim().eq_ignore_ascii_case(TOKEN_VAR))
            .map(|(_, value)| ("token".to_owned(), Value::from(value.clone())))
            .collect();
        Self {
            entries,
            var_name: |_| TOKEN_VAR.to_owned(),
        }
    }

    /// `GATEWAY_PROXY_<KEY>` (any case) but `GATEWAY_PROXY_CONFIG`, nested
    /// with `__`.
    fn prefixed(env: &[(String, String)]) -> Self {
        let entries = env
            .iter()
            .filter_map(|(key, value)| {
                let key = key.trim();
                let prefix = key.get(..ENV_PREFIX.len())?;
                if !prefix.eq_ignore_ascii_case(ENV_PREFIX)
                    || key.eq_ignore_ascii_case(CONFIG_PATH_VAR)
                {
                    return None;
                }
                let segments: Vec<String> = key[ENV_PREFIX.len()..]
                    .split("__")
                    .map(str::to_ascii_lowercase)
                    .collect();
                if segments.iter().any(String::is_empty) {
                    return None;
                }
                let dotted = segments.join(".");
                let value = if STRING_KEYS.contains(&dotted.as_str()) {
                    Value::from(value.clone())
                } else {
                    let Ok(parsed) = value.parse::<Value>();
                    parsed
                };
                Some((dotted, value))
            })
            .collect();
        Self {
            entries,
            var_name: |path| format!("{ENV_PREFIX}{}", path.join("__").to_ascii_uppercase()),
        }
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        let var_name = self.var_name;
        Metadata::named(ENV_METADATA).interpolater(move |_: &Profile, path: &[&str]| var_name(path))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, value) in &self.entries {
            let path: Vec<&str> = key.split('.').collect();
            insert(&mut dict, &path, value.clone());
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Sets `path` in `dict` to `value`, creating (or replacing non-object
/// values with) objects on the way.
fn insert(dict: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry((*first).to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

/// A configuration that cannot be used: one message naming where the bad
/// value came from (the file or the environment variable), the key and
/// what was expected. The binary prints it and exits with
/// [`EXIT_CONFIG`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    origin: Option<String>,
    key: Option<String>,
    problem: Problem,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Problem {
    /// The key is not one of `expected`.
    Unknown(&'static [&'static str]),
    /// A required key is missing.
    Missing,
    /// The key's value is wrong: what was expected and found.
    Invalid(String),
    /// Something about the source as a whole (no key).
    Other(String),
}

impl ConfigError {
    fn invalid(key: &str, message: String) -> Self {
        Self {
            origin: None,
            key: Some(key.to_owned()),
            problem: Problem::Invalid(message),
        }
    }

    /// Where the bad value came from: the config file's path (as given),
    /// `environment variable GATEWAY_PROXY_…`, or `None` for a default.
    #[must_use]
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    /// The dotted key at fault (`cache.members`), if the error is about
    /// one.
    #[must_use]
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    fn from_figment(error: figment::Error, file_label: &str) -> Self {
        let key = (!error.path.is_empty()).then(|| error.path.join("."));
        let origin = error
            .metadata
            .as_ref()
            .map(|metadata| describe_origin(metadata, &error.path, file_label));
        match error.kind {
            Kind::UnknownField(_, expected) => Self {
                origin,
                key,
                problem: Problem::Unknown(expected),
            },
            Kind::MissingField(field) => {
                let mut path = error.path;
                path.push(field.into_owned());
                Self {
                    // A missing key is missing from the file (or from
                    // everywhere): name the file.
                    origin: Some(file_label.to_owned()),
                    key: Some(path.join(".")),
                    problem: Problem::Missing,
                }
            }
            Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => Self {
                origin,
                key,
                problem: Problem::Invalid(format!(
                    "expected {}, found {}",
                    describe_expected(&expected),
                    describe_actual(&actual)
                )),
            },
            Kind::UnknownVariant(found, expected) => Self {
                origin,
                key,
                problem: Problem::Invalid(format!(
                    "expected one of {}, found {found:?}",
                    quoted_list(expected)
                )),
            },
            kind => {
                let message = kind.to_string();
                let problem = if key.is_some() {
                    Problem::Invalid(message)
                } else {
                    Problem::Other(message)
                };
                Self {
                    origin,
                    key,
                    problem,
                }
            }
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        let key = self.key.as_deref().unwrap_or("");
        match &self.problem {
            Problem::Unknown(expected) => {
                write!(
                    f,
                    "unknown key \"{key}\" (expected one of {})",
                    quoted_list(expected)
                )
            }
            Problem::Missing => {
                write!(f, "missing key \"{key}\"")?;
                if key == "intents" {
                    write!(
                        f,
                        ": expected the gateway intents bitfield, e.g. 513 \
                         (or set {ENV_PREFIX}INTENTS)"
                    )?;
                }
                Ok(())
            }
            Problem::Invalid(message) => match &self.key {
                Some(key) => write!(f, "key \"{key}\": {message}"),
                None => f.write_str(message),
            },
            Problem::Other(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// `"a", "b", "c"`.
fn quoted_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|item| format!("\"{item}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Serde's expectation, in words for people who write JSON.
fn describe_expected(expected: &str) -> String {
    match expected {
        "u8" => "an integer from 0 to 255".to_owned(),
        "u16" => "an integer from 0 to 65535".to_owned(),
        "u32" => "an integer from 0 to 4294967295".to_owned(),
        "u64" | "usize" => "a non-negative integer".to_owned(),
        _ if expected.starts_with("struct ") => "an object".to_owned(),
        _ => expected.to_owned(),
    }
}

/// What was found, in JSON's words.
fn describe_actual(actual: &Actual) -> String {
    match actual {
        Actual::Bool(value) => format!("boolean {value}"),
        Actual::Unsigned(value) => format!("integer {value}"),
        Actual::Signed(value) => format!("integer {value}"),
        Actual::Float(value) => format!("number {value}"),
        Actual::Str(value) => format!("string {value:?}"),
        Actual::Map => "an object".to_owned(),
        Actual::Seq => "an array".to_owned(),
        Actual::Unit | Actual::Option => "null".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(pairs: &[(&str, &str)]) -> Dict {
        let env: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let data = EnvLayer::prefixed(&env).data().unwrap();
        data.get(&Profile::Default).cloned().unwrap_or_default()
    }

    #[test]
    fn env_values_parse_like_figment_env() {
        let dict = layer(&[
            ("GATEWAY_PROXY_CACHE__MEMBERS", "false"),
            ("gateway_proxy_shards", "16"),
            ("GATEWAY_PROXY_BIND", "127.0.0.1"),
            ("GATEWAY_PROXY_ACTIVITY__NAME", "1234"),
            ("GATEWAY_PROXY_CONFIG", "x.json"),
            ("GATEWAY_PROXY___BAD", "1"),
            ("OTHER", "1"),
        ]);
        let value = Value::from(dict);
        assert_eq!(
            value.find_ref("cache.members").unwrap().to_bool(),
            Some(false)
        );
        assert_eq!(value.find_ref("shards").unwrap().to_u128(), Some(16));
        assert_eq!(value.find_ref("bind").unwrap().as_str(), Some("127.0.0.1"));
        assert_eq!(
            value.find_ref("activity.name").unwrap().as_str(),
            Some("1234")
        );
        assert!(value.find_ref("config").is_none());
        assert_eq!(value.into_dict().unwrap().len(), 4);
    }

    #[test]
    fn env_var_names_come_back_in_errors() {
        let env = EnvLayer::prefixed(&[]);
        assert_eq!(
            env.metadata()
                .interpolate(&Profile::Default, &["cache", "members"]),
            "GATEWAY_PROXY_CACHE__MEMBERS"
        );
    }
}
