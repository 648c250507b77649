//! How the client side is served.

use std::net::SocketAddr;
use std::time::Duration;

use shard_pool::Token;

/// The client side's configuration; the binary fills it from `config.json`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Where to listen: HTTP endpoints and websocket upgrades on one port.
    pub bind: SocketAddr,
    /// The bot token clients must present (with `validate_token`).
    pub token: Token,
    /// Whether a client's IDENTIFY token must equal `token` (4004 if not).
    pub validate_token: bool,
    /// READY's `resume_gateway_url`: where clients reconnect to resume;
    /// empty for `ws://` and the address the proxy listens on.
    pub externally_accessible_url: String,
    /// How many events a client may be behind its shard for a second
    /// without catching up before it counts as too slow and is closed
    /// (resumable).
    pub backpressure: usize,
    /// How long a disconnected client's session can still be resumed.
    pub session_ttl: Duration,
    /// HELLO's `heartbeat_interval`.
    pub heartbeat_interval: Duration,
    /// What a peer can make the proxy hold, and for how long.
    pub limits: Limits,
    /// How what clients get is compressed, for those that ask.
    pub client_compression: ClientCompression,
    /// How often every shard's checkpoint is written, when the pool keeps
    /// checkpoints (`shard_pool::PoolConfig::store`): after a crash the
    /// next process resumes from the last one. Zero: only at shutdown.
    pub checkpoint_interval: Duration,
    /// Whether the bot leaves a guild's voice channel when the client
    /// session that owns the guild's voice ends for good (closed with 1000
    /// or 1001, its ttl passed, or its upstream session replaced), so that
    /// it does not stay in the channel with nobody driving it.
    pub voice_leave_on_owner_loss: bool,
    /// Where a client session whose connection dropped is kept for any
    /// node of a cluster to take, so that its client may RESUME on any of
    /// them (`None`: on this process alone). Records are small; the store
    /// should forget them a little after `session_ttl` (a cluster's
    /// bucket does).
    pub handover: Option<std::sync::Arc<dyn shard_pool::Store>>,
    /// This node's name in a cluster: `/ready` says it, beside the shards
    /// it runs and those it follows.
    pub node: Option<String>,
}

/// How the proxy compresses what it sends to clients that ask for
/// compression. `docs/performance.md` has the measurements behind the
/// defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientCompression {
    /// The zlib level (0–9) of zlib-stream and of payload compression.
    pub zlib_level: u32,
    /// Whether each dispatch may be compressed once for every zlib client
    /// of its shard (shared deflate bodies: each client's message is a
    /// copy with its own `s`), rather than in each client's own stream,
    /// which compresses better and costs a compression per client.
    /// Payload-compressed clients always share then (a message of their
    /// own compresses no better); zlib-stream clients share from
    /// [`zlib_shared_min_clients`](Self::zlib_shared_min_clients) on.
    pub zlib_shared: bool,
    /// How many zlib-stream clients a shard must have before they get
    /// shared bodies; with fewer, each client's own stream costs less
    /// per delivery than compressing a shared body from an empty window.
    pub zlib_shared_min_clients: usize,
    /// The zstd level (1–22) of zstd-stream.
    pub zstd_level: i32,
}

impl Default for ClientCompression {
    fn default() -> Self {
        Self {
            zlib_level: 1,
            zlib_shared: true,
            zlib_shared_min_clients: 3,
            zstd_level: 1,
        }
    }
}

impl ClientCompression {
    /// The level of an encoder of `compression`.
    #[must_use]
    pub fn level(&self, compression: wire_codec::Compression) -> i32 {
        match compression {
            wire_codec::Compression::ZstdStream => self.zstd_level,
            _ => i32::try_from(self.zlib_level).unwrap_or(9),
        }
    }
}

/// Everything a peer can make the proxy hold is bounded by one of these.
/// The defaults are safe for a port open to anyone; `docs/operations.md`
/// says what each costs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// The most bytes one client message may hold, across all its
    /// fragments (Discord's limit is 4096). A message over it is refused
    /// with 4002 before more of it is buffered.
    pub max_message_bytes: usize,
    /// Control frames (pongs, the close echo) that may wait for a client
    /// that does not read; past it the connection is dropped.
    pub max_control_frames: usize,
    /// How long a connection may stay without IDENTIFY or RESUME after
    /// HELLO; then it is closed with 4003.
    pub identify_timeout: Duration,
    /// How long one write to a client may take (the client not reading):
    /// past it the connection is dropped, and its session stays resumable.
    pub write_timeout: Duration,
    /// How long a connection may take to send its HTTP request headers.
    pub http_header_timeout: Duration,
    /// Connections open at once, in all.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_connections_per_ip: usize,
    /// Commands (ops 3, 4, 8, 31) the proxy sends upstream per shard per
    /// minute, shared fairly by the shard's clients. Discord allows 120
    /// payloads a minute on a connection, heartbeats included.
    pub shard_commands_per_minute: u32,
    /// The kernel's send buffer of each client connection (`SO_SNDBUF`;
    /// Linux doubles it). It bounds what a client that does not read keeps
    /// in the kernel, and how far behind what was written to it a slow
    /// client can be before the proxy sees it.
    pub socket_send_buffer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4096,
            max_control_frames: 16,
            identify_timeout: Duration::from_mins(5),
            write_timeout: Duration::from_secs(10),
            http_header_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            shard_commands_per_minute: 110,
            socket_send_buffer_bytes: 256 * 1024,
        }
    }
}

impl ServerConfig {
    /// Defaults for serving `token` on `bind`.
    #[must_use]
    pub fn new(bind: SocketAddr, token: impl Into<Token>) -> Self {
        Self {
            bind,
            token: token.into(),
            validate_token: true,
            externally_accessible_url: String::new(),
            backpressure: 100,
            session_ttl: Duration::from_mins(5),
            heartbeat_interval: Duration::from_millis(41_250),
            limits: Limits::default(),
            client_compression: ClientCompression::default(),
            checkpoint_interval: Duration::from_secs(30),
            voice_leave_on_owner_loss: true,
            handover: None,
            node: None,
        }
    }
}
