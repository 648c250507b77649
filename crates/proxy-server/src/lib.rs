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
mod handover;
mod keep;
mod limits;
mod metrics;
mod prelude;
mod protocol;
mod server;
mod session;

pub use crate::config::{ClientCompression, Limits, ServerConfig};
pub use crate::connection::LOG_MARGIN;
pub use crate::server::{Proxy, listener, recorder};

/// The client side's state machines on arbitrary input, for the fuzz
/// targets in `fuzz/`; not an API.
#[doc(hidden)]
pub mod fuzzing {
    use std::time::Duration;

    use fastwebsockets::OpCode;
    use tokio::time::Instant;

    use crate::connection::Assembler;
    use crate::protocol::{Close, Protocol, ProtocolLimits, Request};

    /// The close codes a payload may be answered with: Discord's.
    pub const CLOSE_CODES: [u16; 5] = [4001, 4002, 4003, 4005, 4008];

    /// Feeds `payloads` to one connection's protocol, a second apart, the
    /// first after `authenticate_after` payloads marking it identified;
    /// returns, for each, the close code it was answered with (`None`: a
    /// heartbeat, IDENTIFY, RESUME or command). Stops at the first close,
    /// as the connection would.
    #[must_use]
    pub fn protocol(payloads: &[&[u8]], authenticate_after: usize) -> Vec<Option<u16>> {
        let limits = ProtocolLimits {
            heartbeat_interval: Duration::from_secs(41),
            max_message_bytes: 4096,
            identify_timeout: Duration::from_mins(5),
            max_early_heartbeats: 8,
        };
        let start = Instant::now();
        let mut protocol = Protocol::new(limits, start);
        let mut outcomes = Vec::with_capacity(payloads.len());
        for (i, payload) in payloads.iter().enumerate() {
            if i == authenticate_after {
                protocol.authenticated();
            }
            let now = start + Duration::from_secs(u64::try_from(i).unwrap_or(u64::MAX));
            match protocol.handle_payload(payload, now) {
                Request::Close(Close { code, .. }) => {
                    outcomes.push(Some(code));
                    break;
                }
                Request::Command(command) => {
                    assert!(matches!(command.op, 3 | 4 | 8 | 31), "{command:?}");
                    assert_eq!(&command.payload[..], *payload);
                    outcomes.push(None);
                }
                _ => outcomes.push(None),
            }
        }
        outcomes
    }

    /// Reads `bytes` as a shard's kept client sessions (a `sessions-<id>`
    /// blob of upstream session `s`, or the sessions part alone) and puts
    /// them back; looks up a few `s` in each. Returns how many were put
    /// back, or `None` if the bytes were refused.
    #[must_use]
    pub fn restore_sessions(bytes: &[u8]) -> Option<usize> {
        let sessions = crate::session::Sessions::default();
        let now = Instant::now();
        let part = match crate::keep::read(bytes, "s") {
            Ok((_, part)) => part,
            Err(_) => bytes,
        };
        let count = sessions.restore(0, part, Duration::ZERO, now).ok()?;
        sessions.probe();
        Some(count)
    }

    /// The sessions part of a checkpoint of one client session served with
    /// a few runs: the fuzz target's seed.
    #[must_use]
    pub fn sample_sessions() -> Vec<u8> {
        crate::session::Sessions::sample().checkpoint(0, Instant::now())
    }

    /// Feeds websocket data frames (`opcode`, `fin`, payload) to the
    /// message assembler with a limit of `max` bytes; returns the length of
    /// each whole message, or the close code that ends the connection.
    /// Whatever the frames, no message over `max` comes out.
    #[must_use]
    pub fn assemble(frames: &[(u8, bool, &[u8])], max: usize) -> Vec<Result<usize, u16>> {
        let mut assembler = Assembler::new(max);
        let mut outcomes = Vec::new();
        for &(opcode, fin, payload) in frames {
            let opcode = match opcode % 3 {
                0 => OpCode::Continuation,
                1 => OpCode::Text,
                _ => OpCode::Binary,
            };
            match assembler.push(opcode, fin, payload) {
                Ok(Some((_, message))) => {
                    assert!(message.len() <= max);
                    outcomes.push(Ok(message.len()));
                }
                Ok(None) => {}
                Err(close) => {
                    outcomes.push(Err(close.code));
                    break;
                }
            }
        }
        outcomes
    }
}
