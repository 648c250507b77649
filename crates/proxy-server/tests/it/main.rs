//! The proxy against `discord-sim` on loopback: Discord's protocol towards
//! clients, their sessions, and nothing lost on the way.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

mod hardening;
mod http;
mod promtool;
mod protocol;
mod restart;
mod sessions;
mod twilight;
mod voice;

use std::time::Duration;

use discord_sim::{GatewayClient, KNOWN_INTENTS, Sim, SimConfig};
use proxy_server::{Proxy, ServerConfig};
use serde_json::Value;
use shard_pool::{Flags, Pool, PoolConfig};

/// A sim, a pool on it and a proxy on the pool.
struct Setup {
    sim: Sim,
    proxy: Proxy,
}

impl Setup {
    async fn new(
        sim_config: impl FnOnce(&mut SimConfig),
        configure: impl FnOnce(&mut PoolConfig, &mut ServerConfig),
    ) -> Self {
        let sim = Self::sim(sim_config).await;
        let mut pool = PoolConfig::new(sim.token(), KNOWN_INTENTS);
        pool.api_base = Some(sim.api_base());
        pool.identify_window = sim.config().identify_interval;
        pool.cache = Flags::ALL;
        let mut server = ServerConfig::new(([127, 0, 0, 1], 0).into(), sim.token());
        configure(&mut pool, &mut server);
        let pool = Pool::start(pool).await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), pool.ready())
            .await
            .unwrap()
            .unwrap();
        let proxy = Proxy::start(server, pool).await.unwrap();
        Self { sim, proxy }
    }

    /// A sim with quick identify buckets, as `sim_config` changes it.
    async fn sim(sim_config: impl FnOnce(&mut SimConfig)) -> Sim {
        let mut config = SimConfig::default();
        config.identify_interval = Duration::from_millis(100);
        sim_config(&mut config);
        Sim::start(config).await.unwrap()
    }

    /// A client connected to the proxy with `query`, past HELLO.
    async fn client(&self, query: &str) -> GatewayClient {
        let (mut client, hello) = GatewayClient::connect(self.proxy.addr(), query)
            .await
            .unwrap();
        assert_eq!(hello["op"], 10);
        client.set_timeout(Duration::from_secs(10));
        client
    }

    /// A client identified on `shard` of `count`, past READY; returns it,
    /// READY, and the guild payloads that followed.
    async fn identified(&self, shard: u32, count: u32) -> (GatewayClient, Value, Vec<Value>) {
        let mut client = self.client("v=10&encoding=json").await;
        client
            .identify(self.sim.token(), [shard, count], KNOWN_INTENTS)
            .await
            .unwrap();
        let ready = client.payload().await.unwrap();
        assert_eq!(ready["t"], "READY", "{ready}");
        let guilds = ready["d"]["guilds"].as_array().unwrap().len();
        let mut creates = Vec::new();
        for _ in 0..guilds {
            creates.push(client.payload().await.unwrap());
        }
        (client, ready, creates)
    }

    /// A client connected with `query` and identified with `intents` and
    /// IDENTIFY's `compress` flag, past READY; returns it, READY, and the
    /// guild payloads that followed.
    async fn identified_with(
        &self,
        query: &str,
        intents: u64,
        compress: bool,
    ) -> (GatewayClient, Value, Vec<Value>) {
        let mut client = self.client(query).await;
        let identify = format!(
            r#"{{"op":2,"d":{{"token":"{}","intents":{intents},"properties":{{}},"compress":{compress}}}}}"#,
            self.sim.token()
        );
        client.send(&identify).await.unwrap();
        let ready = client.payload().await.unwrap();
        assert_eq!(ready["t"], "READY", "{query}: {ready}");
        let guilds = ready["d"]["guilds"].as_array().unwrap().len();
        let mut creates = Vec::new();
        for _ in 0..guilds {
            creates.push(client.payload().await.unwrap());
        }
        (client, ready, creates)
    }
}

/// The `_sim` marker number of a dispatch, if it has one.
fn marker(payload: &Value) -> Option<u64> {
    payload["d"]["_sim"]["n"].as_u64()
}

/// Reads dispatches until `count` carry a marker; returns (s, marker) of
/// each, and asserts that `s` counts up by one from `after`.
async fn marked(client: &mut GatewayClient, after: u64, count: usize) -> Vec<(u64, u64)> {
    let mut seen = Vec::with_capacity(count);
    let mut last = after;
    while seen.len() < count {
        let payload = client.payload().await.unwrap();
        if payload["op"] != 0 {
            continue;
        }
        let s = payload["s"].as_u64().unwrap();
        assert_eq!(s, last + 1, "contiguous s: {payload}");
        last = s;
        if let Some(n) = marker(&payload) {
            seen.push((s, n));
        }
    }
    seen
}

/// Asserts the markers count up by one: nothing lost, repeated or
/// reordered.
fn assert_contiguous(markers: &[(u64, u64)]) {
    for pair in markers.windows(2) {
        assert_eq!(pair[1].1, pair[0].1 + 1, "markers go up by one");
    }
}
