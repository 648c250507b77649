//! The client side of the gateway proxy: bots connect to it exactly as they
//! would to Discord.
//!
//! A [`Proxy`] listens on one port for HTTP (`/metrics`, `/shard-count`,
//! `/health`, `/ready`) and, on any path, websocket upgrades that speak
//! Discord's gateway protocol. Each client gets HELLO, answers to its
//! heartbeats, and on IDENTIFY a READY and one `GUILD_CREATE` (or
//! `GUILD_DELETE`) per guild of its shard from the shard's state cache,
//! then the shard's live dispatches with its own sequence numbers, in
//! Discord's envelope, compressed as it asked. A client that drops can
//! RESUME within `session_ttl` and gets every event it missed from the
//! shard's replay ring, then RESUMED.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use proxy_server::{Proxy, ServerConfig};
//! use shard_pool::{Pool, PoolConfig};
//!
//! let pool = Pool::start(PoolConfig::new("token", 1 | 1 << 9)).await?;
//! let proxy = Proxy::start(ServerConfig::new(([0, 0, 0, 0], 7878).into(), "token"), pool).await?;
//! println!("bots connect to ws://{}", proxy.addr());
//! # Ok(()) }
//! ```
//!
//! # Differences from Discord
//!
//! Every client of a shard gets every dispatch of the upstream session,
//! whatever intents it identified with (the upstream identified with the
//! configured ones). Member chunks and voice server updates go only to the
//! client that asked for them.

mod config;
mod connection;
mod context;
mod limits;
mod metrics;
mod prelude;
mod protocol;
mod server;
mod session;

pub use crate::config::{Limits, ServerConfig};
pub use crate::server::Proxy;
