//! The integration tests of `discord-sim`: real clients on loopback.
//!
//! twilight-gateway 0.18 is the real client (zstd-stream, as it ships); the
//! sim's own `GatewayClient` covers what twilight never sends: zlib-stream,
//! payload compression, bad frames and every close code.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

mod admin;
mod protocol;
mod rest;
mod truth;
mod twilight;

use discord_sim::{Sim, SimConfig};
use serde_json::Value;

/// A sim for tests: quick identifies, a few guilds on each shard.
async fn sim(configure: impl FnOnce(&mut SimConfig)) -> Sim {
    let mut config = SimConfig::default();
    config.identify_interval = std::time::Duration::ZERO;
    config.guilds = 6;
    configure(&mut config);
    Sim::start(config).await.unwrap()
}

/// The session id of a READY payload.
fn session_id(ready: &Value) -> String {
    ready["d"]["session_id"].as_str().unwrap().to_owned()
}
