//! How the client side is served.

use std::net::SocketAddr;
use std::time::Duration;

/// The client side's configuration; the binary fills it from `config.json`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Where to listen: HTTP endpoints and websocket upgrades on one port.
    pub bind: SocketAddr,
    /// The bot token clients must present (with `validate_token`).
    pub token: String,
    /// Whether a client's IDENTIFY token must equal `token` (4004 if not).
    pub validate_token: bool,
    /// READY's `resume_gateway_url`: where clients reconnect to resume;
    /// empty for `ws://` and the address the proxy listens on.
    pub externally_accessible_url: String,
    /// Events that may wait for one client before it counts as too slow and
    /// is closed (resumable).
    pub backpressure: usize,
    /// How long a disconnected client's session can still be resumed.
    pub session_ttl: Duration,
    /// HELLO's `heartbeat_interval`.
    pub heartbeat_interval: Duration,
}

impl ServerConfig {
    /// Defaults for serving `token` on `bind`.
    #[must_use]
    pub fn new(bind: SocketAddr, token: impl Into<String>) -> Self {
        Self {
            bind,
            token: token.into(),
            validate_token: true,
            externally_accessible_url: String::new(),
            backpressure: 100,
            session_ttl: Duration::from_mins(5),
            heartbeat_interval: Duration::from_millis(41_250),
        }
    }
}
