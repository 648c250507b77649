//! The binary as a cluster: nodes (processes) on one real NATS server (on a
//! free port, JetStream in a temp dir) in front of the simulated Discord.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used)]
#![cfg(unix)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Process;
use discord_sim::{GatewayClient, KNOWN_INTENTS, Sim, SimConfig};
use serde_json::Value;
use tokio::time::Instant;

/// A real NATS server, the sim (2 shards, 6 guilds, `rate` events a second
/// per shard) and the nodes [`TWO`] on them, with `extra` in their
/// environment; `None` (the test is skipped) without a `nats-server`.
async fn two_nodes(
    test: &str,
    rate: u32,
    extra: &[(&str, &str)],
) -> Option<(cluster::testing::NatsServer, Sim, Vec<Process>)> {
    let nats = cluster::testing::nats(test)?;
    let sim = two_shards(rate).await;
    let nodes = start_nodes(&sim, &nats, test, &TWO, 2, extra, SERVING).await;
    Some((nats, sim, nodes))
}

/// The sim of the two-shard tests: 6 guilds, `rate` events a second per
/// shard, both shards able to identify at once.
async fn two_shards(rate: u32) -> Sim {
    let mut config = SimConfig::default();
    config.shards = 2;
    config.max_concurrency = 2;
    config.guilds = 6;
    config.events_per_sec = rate;
    Sim::start(config).await.unwrap()
}

/// Two nodes: `a` runs shard 0, `b` shard 1.
const TWO: [(&str, u32, u32); 2] = [("a", 0, 1), ("b", 1, 2)];

/// How long a node may take to serve.
const SERVING: Duration = Duration::from_secs(30);

/// The environment of node `node` of cluster `name` on `nats`, running
/// shards `start..end` of `total`.
fn node_env(nats: &str, name: &str, node: &str, shards: (u32, u32, u32)) -> Vec<(String, String)> {
    let (start, end, total) = shards;
    [
        ("GATEWAY_PROXY_CLUSTER__NATS_URL", nats.to_owned()),
        ("GATEWAY_PROXY_CLUSTER__NAME", name.to_owned()),
        ("GATEWAY_PROXY_CLUSTER__NODE_ID", node.to_owned()),
        ("GATEWAY_PROXY_SHARDS", total.to_string()),
        ("GATEWAY_PROXY_SHARD_START", start.to_string()),
        ("GATEWAY_PROXY_SHARD_END", end.to_string()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// The nodes `(name, start, end)` of cluster `cluster` (of `total` shards),
/// started at once with `extra` in their environment, once each serves
/// (within `limit`).
async fn start_nodes(
    sim: &Sim,
    nats: &cluster::testing::NatsServer,
    cluster: &str,
    nodes: &[(&str, u32, u32)],
    total: u32,
    extra: &[(&str, &str)],
    limit: Duration,
) -> Vec<Process> {
    let mut spawned = Vec::new();
    for &(node, start, end) in nodes {
        let mut env = node_env(&nats.url(), cluster, node, (start, end, total));
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        spawned.push(Process::spawn(sim, &borrowed(&env)));
    }
    let mut serving = Vec::new();
    for (process, ready) in spawned {
        serving.push(process.serving_within(ready, limit).await);
    }
    serving
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_started_at_once_identify_paced_across_them() {
    let Some(nats) = cluster::testing::nats("three_nodes") else {
        return;
    };
    let mut config = SimConfig::default();
    config.shards = 12;
    config.max_concurrency = 2;
    config.guilds = 24;
    config.events_per_sec = 20;
    let sim = Sim::start(config).await.unwrap();
    // Discord's window (the sim's default, 5 s): the nodes pace by it.
    let window = sim.config().identify_interval;
    let start = Instant::now();
    let ranges = [("a", 0, 4), ("b", 4, 8), ("c", 8, 12)];
    let nodes = start_nodes(
        &sim,
        &nats,
        "three",
        &ranges,
        12,
        &[],
        Duration::from_secs(90),
    )
    .await;
    let took = start.elapsed();
    let logs: Vec<String> = nodes.iter().map(Process::log).collect();
    assert_eq!(sim.identifies_refused(), 0, "{logs:#?}");
    assert_eq!(sim.identifies(), 12, "{logs:#?}");
    // Six shards per bucket: five spacings from the first identify to the
    // last; then the last shard's READY and guilds.
    let minimum = shard_pool::identify_spacing(window) * 5;
    assert!(
        took >= minimum,
        "all ready after {took:?}: under pacing's minimum {minimum:?}"
    );
    assert!(
        took <= minimum + minimum / 10,
        "all ready after {took:?}: more than 10 % over pacing's minimum {minimum:?}"
    );
    for (node, log) in ["a", "b", "c"].iter().zip(&logs) {
        assert!(log.contains("joined the cluster"), "{node}: {log}");
    }
    // Every node publishes its shards' events: one subject per shard.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut stream = async_nats::jetstream::new(client)
        .get_stream("three-events")
        .await
        .unwrap();
    let state = stream.info().await.unwrap().state.clone();
    assert_eq!(state.subjects_count, 12, "{state:?}");
    assert!(
        state.messages >= 12 * 25,
        "each shard's READY, guilds and events: {state:?}"
    );
}

/// A client of `addr` identified for `shard` of `total`: READY's `d` and
/// each `GUILD_CREATE`'s `d`, in the order they came.
async fn load(
    addr: std::net::SocketAddr,
    token: &str,
    shard: u32,
    total: u32,
) -> (GatewayClient, Value, Vec<Value>) {
    let (mut client, _hello) = GatewayClient::connect(addr, "v=10&encoding=json")
        .await
        .unwrap();
    client.set_timeout(Duration::from_secs(40));
    client
        .identify(token, [shard, total], KNOWN_INTENTS)
        .await
        .unwrap();
    let ready = client.payload().await.unwrap();
    assert_eq!(ready["t"], "READY", "shard {shard} on {addr}: {ready}");
    let count = ready["d"]["guilds"].as_array().unwrap().len();
    let mut guilds = Vec::new();
    while guilds.len() < count {
        let payload = client.payload().await.unwrap();
        if payload["t"] == "GUILD_CREATE" {
            guilds.push(payload["d"].clone());
        }
    }
    (client, ready["d"].clone(), guilds)
}

/// Reads dispatches up to the one with marker `last`: their markers, after
/// checking that `s` goes up by one.
async fn markers_until(client: &mut GatewayClient, last: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    let mut s = None;
    loop {
        let payload = client.payload().await.unwrap();
        if payload["op"] != 0 {
            continue;
        }
        let seq = payload["s"].as_u64().unwrap();
        if let Some(s) = s {
            assert_eq!(seq, s + 1, "s goes up by one: {payload}");
        }
        s = Some(seq);
        if let Some(n) = payload["d"]["_sim"]["n"].as_u64() {
            seen.push(n);
            if n == last {
                return seen;
            }
        }
    }
}

/// Reads up to the dispatch with marker `marker`, asserting that none
/// before it is a `t`: it went to another client.
async fn none_until(client: &mut GatewayClient, t: &str, marker: u64) {
    loop {
        let payload = client.payload().await.unwrap();
        assert_ne!(payload["t"], t, "{payload}");
        if payload["d"]["_sim"]["n"].as_u64() == Some(marker) {
            return;
        }
    }
}

/// READY's `d` without what is each client's own.
fn shared_part(ready: &Value) -> Value {
    let mut ready = ready.clone();
    let d = ready.as_object_mut().unwrap();
    d.remove("session_id");
    d.remove("resume_gateway_url");
    ready
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_serves_every_shard_the_same_state_and_events() {
    const TOTAL: u32 = 6;
    let Some(nats) = cluster::testing::nats("every_shard") else {
        return;
    };
    let mut config = SimConfig::default();
    config.shards = TOTAL;
    config.max_concurrency = 6;
    config.guilds = 18;
    config.events_per_sec = 30;
    let sim = Sim::start(config).await.unwrap();
    // Three nodes of two shards each, and one that runs none and serves
    // them all.
    let ranges = [("a", 0, 2), ("b", 2, 4), ("c", 4, 6), ("d", 0, 0)];
    let nodes = start_nodes(&sim, &nats, "every", &ranges, TOTAL, &[], SERVING).await;
    // The stream held still, so that every node's state is the same one.
    sim.pause_stream();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let world = sim.world();
    let mut clients = Vec::new();
    for shard in 0..TOTAL {
        let mut loaded = Vec::new();
        for node in &nodes {
            loaded.push(load(node.addr, sim.token(), shard, TOTAL).await);
        }
        let truth: BTreeSet<String> = world
            .guilds_of(shard, TOTAL)
            .map(|guild| guild.id.to_string())
            .collect();
        let (_, ready, guilds) = &loaded[0];
        let ids: BTreeSet<String> = guilds
            .iter()
            .map(|guild| guild["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, truth, "shard {shard}: the sim's guilds");
        for (node, (_, other_ready, other_guilds)) in loaded.iter().enumerate().skip(1) {
            assert_eq!(
                shared_part(other_ready),
                shared_part(ready),
                "shard {shard}: READY on node {node}"
            );
            assert_eq!(other_guilds, guilds, "shard {shard}: guilds on node {node}");
        }
        clients.extend(loaded.into_iter().map(|(client, _, _)| (shard, client)));
    }
    sim.resume_stream();
    // Every event once and in order, on every node: the sim's markers.
    let mut first = Vec::new();
    let mut last = Vec::new();
    for shard in 0..TOTAL {
        first.push(sim.emit(shard, "GP_MARKER", "{}").unwrap());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for shard in 0..TOTAL {
        last.push(sim.emit(shard, "GP_MARKER", "{}").unwrap());
    }
    for (shard, client) in &mut clients {
        let i = *shard as usize;
        let seen = markers_until(client, last[i]).await;
        let from = seen.iter().position(|&n| n == first[i]).unwrap();
        let expected: Vec<u64> = (first[i]..=last[i]).collect();
        assert_eq!(
            seen[from..],
            expected[..],
            "shard {shard}: every marker once, in order"
        );
    }
    assert_eq!(sim.lagged(), 0);
    for node in &nodes {
        let log = node.log();
        assert!(!log.contains("following broke"), "{log}");
        // Every shard, each followed once: another node's to serve its
        // clients, its own to take it over from the log before it runs it.
        assert_eq!(
            log.matches("following a shard another node runs").count(),
            6,
            "{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_chunks_asked_on_another_node_reach_that_client_alone() {
    let Some((_nats, sim, nodes)) = two_nodes("chunks", 10, &[]).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    // Shard 0 runs on a; two of its clients on b, one on a.
    let (mut asker, _, guilds) = load(b.addr, sim.token(), 0, 2).await;
    let (mut other, _, _) = load(b.addr, sim.token(), 0, 2).await;
    let (mut local, _, _) = load(a.addr, sim.token(), 0, 2).await;
    let guild = guilds[0]["id"].as_str().unwrap().to_owned();
    asker
        .send(&format!(
            r#"{{"op":8,"d":{{"guild_id":"{guild}","query":"","limit":0,"nonce":"from-b"}}}}"#
        ))
        .await
        .unwrap();
    let chunk = asker.dispatch("GUILD_MEMBERS_CHUNK").await.unwrap();
    assert_eq!(chunk["d"]["nonce"], "from-b", "{chunk}");
    assert_eq!(chunk["d"]["guild_id"], guild.as_str());
    // The others read on to a marker sent after the answer: no chunk.
    let marker = sim.emit(0, "GP_MARKER", "{}").unwrap();
    for client in [&mut other, &mut local] {
        none_until(client, "GUILD_MEMBERS_CHUNK", marker).await;
    }
    // Metrics are brought up to date once a second.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, metrics) = common::http_get(b.addr, "/metrics").await;
    assert!(metrics.contains("state=\"following\""), "{metrics}");
    // The cluster's own metrics are there too: b follows shard 0 and
    // publishes shard 1's events.
    assert!(
        metrics.contains("gateway_stream_lag_messages{shard=\"0\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_event_log_published_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_identify_turns_total"),
        "{metrics}"
    );
    // /ready says how far behind the log b's follower of shard 0 is, and
    // that a runs it.
    let (_, ready) = common::http_get(b.addr, "/ready").await;
    let ready: Value = serde_json::from_str(&ready).unwrap();
    let followed = &ready["followed"]["0"];
    assert!(followed["lag_messages"].as_u64().is_some(), "{ready}");
    assert!(followed["lag_seconds"].as_f64().is_some(), "{ready}");
    assert_eq!(followed["owner"], "a", "{ready}");
    assert!(ready["followed"].get("1").is_none(), "b runs 1: {ready}");
    // Discord closes shard 0 for good: its clients on both nodes are
    // closed with Discord's code, the follower's through the event log.
    assert_eq!(sim.control(0, discord_sim::Control::Close(4014)), 1);
    for client in [&mut other, &mut local] {
        assert_eq!(client.close_code().await.unwrap(), Some(4014));
    }
    let (_, ready) = common::http_get(b.addr, "/ready").await;
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["node"], "b", "{ready}");
    assert_eq!(ready["shards"]["1"], "active", "{ready}");
    assert_eq!(ready["shards"]["0"], "following:4014", "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_drops_on_one_node_resumes_on_another_and_misses_nothing() {
    let debug = [("GATEWAY_PROXY_LOG_LEVEL", "info,proxy_server=debug")];
    let Some((_nats, sim, nodes)) = two_nodes("handover", 20, &debug).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    // Two moves: a node that follows the shard to its owner, and the
    // owner to a node that follows it.
    for (shard, from, to) in [(1, a, b), (0, a, b)] {
        drop_and_resume(&sim, shard, from, to, 5).await;
    }
    for node in [a, b] {
        let log = node.log();
        assert!(!log.contains("not handed over"), "{log}");
    }
}

/// Reads on (the stream goes on) to a marker sent now, and returns the
/// `s` it came with (where the client stands) and the marker.
async fn last_seq(client: &mut GatewayClient, shard: u32, sim: &Sim) -> (u64, u64) {
    let marker = sim.emit(shard, "GP_MARKER", "{}").unwrap();
    loop {
        let payload = client.payload().await.unwrap();
        if payload["op"] == 0 && payload["d"]["_sim"]["n"].as_u64() == Some(marker) {
            return (payload["s"].as_u64().unwrap(), marker);
        }
    }
}

/// A client that reads a shard's markers through closes: a close is
/// answered with a RESUME on the same node, as a library does.
struct Reader {
    client: GatewayClient,
    addr: std::net::SocketAddr,
    session: String,
    seq: u64,
    markers: Vec<u64>,
    resumes: usize,
}

impl Reader {
    async fn new(addr: std::net::SocketAddr, token: &str, shard: u32, total: u32) -> Self {
        let (client, ready, guilds) = load(addr, token, shard, total).await;
        Self {
            client,
            addr,
            session: ready["session_id"].as_str().unwrap().to_owned(),
            // READY, then one GUILD_CREATE per guild.
            seq: 1 + guilds.len() as u64,
            markers: Vec::new(),
            resumes: 0,
        }
    }

    /// Reads until marker `last`, resuming after a close (at most 5).
    async fn until(&mut self, token: &str, last: u64) {
        while self.markers.last() != Some(&last) {
            let payload = match self.client.payload().await {
                Ok(payload) => payload,
                Err(discord_sim::ClientError::Closed(code)) => {
                    assert!(self.resumes < 5, "closed again ({code:?})");
                    self.resumes += 1;
                    let (client, _) = GatewayClient::connect(self.addr, "v=10&encoding=json")
                        .await
                        .unwrap();
                    self.client = client;
                    self.client.set_timeout(Duration::from_mins(1));
                    self.client
                        .resume(token, &self.session, self.seq)
                        .await
                        .unwrap();
                    continue;
                }
                Err(error) => panic!("reading: {error}"),
            };
            assert_ne!(payload["op"], 9, "the session ended: {payload}");
            if payload["op"] != 0 {
                continue;
            }
            let s = payload["s"].as_u64().unwrap();
            assert_eq!(s, self.seq + 1, "no gap, no repeat: {payload}");
            self.seq = s;
            if let Some(n) = payload["d"]["_sim"]["n"].as_u64() {
                self.markers.push(n);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarting_under_load_costs_local_clients_nothing_and_followers_no_gap() {
    let often = [("GATEWAY_PROXY_CHECKPOINT_INTERVAL_SECS", "2")];
    let Some((mut nats, sim, nodes)) = two_nodes("nats_restart", 50, &often).await else {
        return;
    };
    let token = sim.token().to_owned();
    // On each node: its own shard (local) and the other's (followed).
    let mut local = Vec::new();
    let mut followed = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let own = u32::try_from(i).unwrap();
        local.push((own, Reader::new(node.addr, &token, own, 2).await));
        followed.push((1 - own, Reader::new(node.addr, &token, 1 - own, 2).await));
    }
    for (shard, reader) in local.iter_mut().chain(&mut followed) {
        let marker = sim.emit(*shard, "GP_MARKER", "{}").unwrap();
        reader.until(&token, marker).await;
    }
    nats.stop();
    // NATS away: the nodes' own clients go on as if nothing happened.
    for (shard, reader) in &mut local {
        let marker = sim.emit(*shard, "GP_MARKER", "{}").unwrap();
        tokio::time::timeout(Duration::from_secs(5), reader.until(&token, marker))
            .await
            .expect("a local client keeps receiving while NATS is away");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.restart();
    // Back: the followers catch up, never skipping an event.
    let last = [
        sim.emit(0, "GP_MARKER", "{}").unwrap(),
        sim.emit(1, "GP_MARKER", "{}").unwrap(),
    ];
    for (shard, reader) in local.iter_mut().chain(&mut followed) {
        let first = reader.markers[0];
        tokio::time::timeout(
            Duration::from_mins(1),
            reader.until(&token, last[*shard as usize]),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "shard {shard} not caught up: {:?}\n{}\n{}",
                reader.markers.last(),
                nodes[0].log(),
                nodes[1].log()
            )
        });
        let expected: Vec<u64> = (first..=last[*shard as usize]).collect();
        assert_eq!(
            reader.markers, expected,
            "shard {shard}: every event once, in order"
        );
    }
    for (_, reader) in &local {
        assert_eq!(reader.resumes, 0, "a local client was never closed");
    }
}

/// A client of `shard` on `from` reads a while, drops, misses `missed`
/// marked events and RESUMEs on `to`: it gets every one it missed once,
/// in order, then RESUMED, then the live ones.
/// How a client's connection to its node ends.
enum Ending<'a> {
    /// The connection is closed (4000): the node hands the session over.
    Closed(&'a Process),
    /// The node is killed (kill -9): it hands nothing over.
    Killed(Box<Process>),
    /// NATS stops before the client reads its last event, so that the
    /// node never publishes it; then the node is killed, and NATS starts
    /// again.
    KilledUnpublished(Box<Process>, &'a mut cluster::testing::NatsServer),
}

impl Ending<'_> {
    fn node(&self) -> &Process {
        match self {
            Ending::Closed(node) => node,
            Ending::Killed(node) | Ending::KilledUnpublished(node, _) => node,
        }
    }
}

async fn drop_and_resume(sim: &Sim, shard: u32, from: &Process, to: &Process, missed: usize) {
    end_and_resume(sim, shard, Ending::Closed(from), to, missed).await;
}

/// A client of `shard` on `from`'s node reads a marker; its connection
/// ends as `from` says; `missed` markers come meanwhile; it resumes on
/// `to` and gets every one of them once, in order, then RESUMED, then on.
async fn end_and_resume(sim: &Sim, shard: u32, mut from: Ending<'_>, to: &Process, missed: usize) {
    let (mut client, ready, _) = load(from.node().addr, sim.token(), shard, 2).await;
    let session = ready["session_id"].as_str().unwrap().to_owned();
    let before = sim.emit(shard, "GP_MARKER", "{}").unwrap();
    let seen = markers_until(&mut client, before).await;
    assert_eq!(seen.last(), Some(&before));
    if let Ending::KilledUnpublished(_, nats) = &mut from {
        nats.stop();
    }
    // Where the client stands: the `s` of the marker it read last.
    let (seq, read) = last_seq(&mut client, shard, sim).await;
    let from_log = match from {
        Ending::Closed(node) => {
            client.close(4000).await.unwrap();
            node.log()
        }
        Ending::Killed(node) => (*node).signal("KILL").await.1,
        Ending::KilledUnpublished(node, nats) => {
            let log = (*node).signal("KILL").await.1;
            nats.restart();
            log
        }
    };
    let missed: Vec<u64> = (0..missed)
        .map(|_| sim.emit(shard, "GP_MARKER", "{}").unwrap())
        .collect();
    let (mut resumed, _hello) = GatewayClient::connect(to.addr, "v=10&encoding=json")
        .await
        .unwrap();
    resumed.set_timeout(Duration::from_secs(20));
    resumed.resume(sim.token(), &session, seq).await.unwrap();
    let after = sim.emit(shard, "GP_MARKER", "{}").unwrap();
    let mut markers = Vec::new();
    let mut s = seq;
    let mut came = false;
    let mut again = 0;
    while !markers.contains(&after) || !came {
        let payload = match resumed.payload().await {
            Ok(payload) => payload,
            // Fell behind a small ring: resumes again, as libraries do.
            Err(discord_sim::ClientError::Closed(Some(4000))) if again < 5 => {
                again += 1;
                resumed = GatewayClient::connect(to.addr, "v=10&encoding=json")
                    .await
                    .unwrap()
                    .0;
                resumed.set_timeout(Duration::from_secs(20));
                resumed.resume(sim.token(), &session, s).await.unwrap();
                continue;
            }
            Err(error) => panic!("shard {shard}: {error}"),
        };
        assert_ne!(
            payload["op"],
            9,
            "shard {shard}: the session was not resumed: {payload}\n{from_log}\n{}",
            to.log()
        );
        if payload["op"] != 0 {
            continue;
        }
        if payload["t"] == "RESUMED" {
            came = true;
        }
        // RESUMED takes an `s` as any dispatch.
        assert_eq!(
            payload["s"].as_u64(),
            Some(s + 1),
            "shard {shard}: {payload}\n{from_log}\n{}",
            to.log()
        );
        s += 1;
        if let Some(n) = payload["d"]["_sim"]["n"].as_u64() {
            markers.push(n);
        }
    }
    let expected: Vec<u64> = (read + 1..=after).collect();
    assert_eq!(
        markers[..expected.len()],
        expected,
        "shard {shard}: every event missed once, in order, then on"
    );
    assert!(missed.iter().all(|n| markers.contains(n)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_node_is_killed_resumes_on_another_and_misses_nothing() {
    let Some((_nats, sim, mut nodes)) = two_nodes("killed", 20, &[]).await else {
        return;
    };
    let b = nodes.remove(1);
    let a = &nodes[0];
    // A client of shard 0 (a's) on b, which b follows: b is killed, so
    // it hands nothing over; the record it wrote when it began serving
    // the session lets a take it, and a counts what the client got since.
    end_and_resume(&sim, 0, Ending::Killed(Box::new(b)), a, 20).await;
    assert!(
        a.log()
            .contains("a session resumed from past its checkpoint"),
        "{}",
        a.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_a_killed_shards_node_resumes_on_the_node_that_takes_the_shard_over() {
    // Two-second leases: b takes shard 0 over two seconds after a dies.
    let short = [("GATEWAY_PROXY_CLUSTER__LEASE_SECS", "2")];
    let Some((mut nats, sim, mut nodes)) = two_nodes("killed_owner", 20, &short).await else {
        return;
    };
    let a = nodes.remove(0);
    let b = &nodes[0];
    // A client of shard 0 on a, which runs it: a is killed, and the
    // client resumes on b at once, while b only follows the shard. The
    // last event the client read never reached the log (NATS was away):
    // the resume waits for b to take the shard over, whose RESUME has
    // Discord replay it, numbered as a numbered it.
    let ending = Ending::KilledUnpublished(Box::new(a), &mut nats);
    end_and_resume(&sim, 0, ending, b, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_node_is_killed_resumes_past_the_rings_from_the_event_log() {
    // Rings of 8 events: by the time the client resumes, the place its
    // node's record gives is in no ring (as on a node that began following
    // the shard from a later checkpoint): what the client got since it is
    // counted over the event log.
    let small = [("GATEWAY_PROXY_REPLAY_MAX_EVENTS", "8")];
    let Some((_nats, sim, mut nodes)) = two_nodes("killed_ring", 20, &small).await else {
        return;
    };
    let b = nodes.remove(1);
    let a = &nodes[0];
    end_and_resume(&sim, 0, Ending::Killed(Box::new(b)), a, 40).await;
    let log = a.log();
    assert!(
        log.contains("a session resumed from past its checkpoint"),
        "{log}"
    );
    assert!(log.contains("read from the event log"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_past_the_ring_is_replayed_from_the_event_log() {
    // Rings of 8 events: the 40 a client misses are in the log alone.
    let small = [("GATEWAY_PROXY_REPLAY_MAX_EVENTS", "8")];
    let Some((_nats, sim, nodes)) = two_nodes("past_ring", 20, &small).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    // The shard's own node, then one that follows it. b follows the shard
    // before the client drops: else it would start following from the
    // log's beginning on the RESUME, and the client's place could still
    // be in its ring while it catches up (served right, but not from the
    // log, which is what this test is about).
    drop_and_resume(&sim, 0, a, a, 40).await;
    let _watcher = load(b.addr, sim.token(), 0, 2).await;
    drop_and_resume(&sim, 0, a, b, 40).await;
    for node in [a, b] {
        let log = node.log();
        assert!(log.contains("read from the event log"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shards_node_budgets_other_nodes_clients_with_its_own() {
    let ten = [("GATEWAY_PROXY_LIMITS__SHARD_COMMANDS_PER_MINUTE", "10")];
    let Some((_nats, sim, nodes)) = two_nodes("budget", 10, &ten).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    // Shard 0 has a client on its own node, a: a client of it on b may use
    // half of its budget, although it is b's only client of the shard.
    let (_local, _, _) = load(a.addr, sim.token(), 0, 2).await;
    let (mut remote, _, _) = load(b.addr, sim.token(), 0, 2).await;
    let presence = r#"{"op":3,"d":{"since":null,"activities":[],"status":"online","afk":false}}"#;
    for _ in 0..5 {
        remote.send(presence).await.unwrap();
    }
    // Answered in order: the sixth is over its share at a.
    remote.send(presence).await.unwrap();
    assert_eq!(
        remote.close_code().await.unwrap(),
        Some(4008),
        "{}",
        b.log()
    );
    let presences = || {
        sim.connections()
            .iter()
            .filter(|c| c.shard == Some(0))
            .map(|c| {
                c.received
                    .iter()
                    .filter(|p| p.contains(r#""op":3"#))
                    .count()
            })
            .sum::<usize>()
    };
    for _ in 0..100 {
        if presences() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(presences(), 5, "five sent upstream, the sixth not");
}

/// How many payloads with `needle` in them shard `shard`'s node sent the
/// sim so far.
fn upstream(sim: &Sim, shard: u32, needle: &str) -> usize {
    sim.connections()
        .iter()
        .filter(|c| c.shard == Some(shard))
        .map(|c| c.received.iter().filter(|p| p.contains(needle)).count())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soundboard_sounds_asked_on_another_node_reach_the_shards_clients() {
    let Some((_nats, sim, nodes)) = two_nodes("sounds", 0, &[]).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    // Shard 0 runs on a; the asking client is on b.
    let (mut asker, _, guilds) = load(b.addr, sim.token(), 0, 2).await;
    let (mut local, _, _) = load(a.addr, sim.token(), 0, 2).await;
    let guild = guilds[0]["id"].as_str().unwrap().to_owned();
    asker
        .send(&format!(r#"{{"op":31,"d":{{"guild_ids":["{guild}"]}}}}"#))
        .await
        .unwrap();
    // Discord's answer (no nonce to route it by) reaches every client of
    // the shard: the asker through the event log.
    for client in [&mut asker, &mut local] {
        let sounds = client.dispatch("SOUNDBOARD_SOUNDS").await.unwrap();
        assert_eq!(sounds["d"]["guild_id"], guild.as_str(), "{sounds}");
    }
    assert_eq!(
        upstream(&sim, 0, r#""op":31"#),
        1,
        "sent upstream once, by a"
    );
}

/// Sends `payload` straight onto the commands subject of shard 0 of
/// cluster `name`, as another node sends its client's command, with route
/// `route`: the answer.
async fn forged(nats: &async_nats::Client, name: &str, payload: &str, route: &str) -> String {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Gp-Session", "forged");
    headers.insert("Gp-Route", route);
    let subject = format!("{name}.commands.0");
    let answer = nats
        .request_with_headers(subject, headers, payload.to_owned().into())
        .await
        .unwrap();
    String::from_utf8(answer.payload.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shards_node_checks_commands_from_nats_as_its_own_clients() {
    let Some((nats, sim, nodes)) = two_nodes("forged", 0, &[]).await else {
        return;
    };
    let client = async_nats::connect(nats.url()).await.unwrap();
    let ask =
        |payload: &'static str, route: &'static str| forged(&client, "forged", payload, route);
    // What a client's node would close with 4002, published by something
    // else: refused by a, which runs shard 0, with the reason.
    let away = r#"{"op":3,"d":{"since":null,"activities":[],"status":"away","afk":false}}"#;
    let answer = ask(away, "plain").await;
    assert!(
        answer.starts_with("error:invalid command: op 3: status"),
        "{answer}"
    );
    let answer = ask(r#"{"op":2,"d":{"token":"x"}}"#, "plain").await;
    assert!(answer.contains("not a command"), "{answer}");
    // A valid op 8 whose route would hand its chunks to another nonce.
    let op8 = r#"{"op":8,"d":{"guild_id":"1","query":"","limit":0,"nonce":"mine"}}"#;
    let answer = ask(op8, "chunks:theirs").await;
    assert!(answer.contains("route"), "{answer}");
    // A valid one goes through.
    let online = r#"{"op":3,"d":{"since":null,"activities":[],"status":"online","afk":false}}"#;
    assert_eq!(ask(online, "plain").await, "sent");
    for _ in 0..100 {
        if upstream(&sim, 0, r#""op":3"#) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream(&sim, 0, r#""op":3"#), 1, "the valid one alone");
    assert_eq!(upstream(&sim, 0, r#""op":8"#), 0);
    let log = nodes[0].log();
    assert!(
        log.contains("a command from another node refused: invalid"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_server_update_reaches_its_owner_on_another_node_alone() {
    let Some((_nats, sim, nodes)) = two_nodes("voice", 0, &[]).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    // Shard 0 runs on a. Its voice is owned by a client on b.
    let (mut owner, _, guilds) = load(b.addr, sim.token(), 0, 2).await;
    let (mut bystander, _, _) = load(b.addr, sim.token(), 0, 2).await;
    let (mut other, _, _) = load(a.addr, sim.token(), 0, 2).await;
    let guild = &guilds[0];
    let id = guild["id"].as_str().unwrap();
    let channel = guild["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == 2)
        .unwrap()["id"]
        .as_str()
        .unwrap();
    let op4 = |channel: &str| {
        format!(
            r#"{{"op":4,"d":{{"guild_id":"{id}","channel_id":"{channel}","self_mute":false,"self_deaf":false}}}}"#
        )
    };
    owner.send(&op4(channel)).await.unwrap();
    let server = owner.dispatch("VOICE_SERVER_UPDATE").await.unwrap();
    assert_eq!(server["d"]["guild_id"], id);
    // Another client's join of the guild, on the shard's own node: refused
    // there, since b's client owns the guild's voice.
    other.send(&op4(channel)).await.unwrap();
    let marker = sim.emit(0, "GP_MARKER", "{}").unwrap();
    for client in [&mut bystander, &mut other] {
        none_until(client, "VOICE_SERVER_UPDATE", marker).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, metrics) = common::http_get(a.addr, "/metrics").await;
    assert!(
        metrics.contains("gateway_voice_commands_refused_total 1"),
        "{metrics}"
    );
    // The owner's session ends (1000) on b: a, which runs the shard, hears
    // of it and takes the bot out of the channel.
    let leave = format!(r#""guild_id":"{id}","channel_id":null"#);
    assert_eq!(upstream(&sim, 0, &leave), 0);
    owner.close(1000).await.unwrap();
    for _ in 0..250 {
        if upstream(&sim, 0, &leave) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstream(&sim, 0, &leave), 1, "{}", b.log());
}

/// Waits until `node`'s `/ready` says it runs `shards` (and follows the
/// others).
async fn runs(node: &Process, shards: &[u32], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (_, body) = common::http_get(node.addr, "/ready").await;
        let ready: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let run: Vec<u32> = ready["shards"]
            .as_object()
            .map(|shards| {
                shards
                    .iter()
                    .filter(|(_, state)| state.as_str() != Some("following"))
                    .filter_map(|(id, _)| id.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        if run == shards {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} runs {run:?}, not {shards:?}:\n{}",
            node.addr,
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_takes_its_share_by_handover_and_the_shards_of_one_that_dies() {
    let Some(nats) = cluster::testing::nats("standby") else {
        return;
    };
    let sim = two_shards(20).await;
    let quick = [
        ("GATEWAY_PROXY_CLUSTER__LEASE_SECS", "2"),
        ("GATEWAY_PROXY_CHECKPOINT_INTERVAL_SECS", "1"),
    ];
    let both = [("a", 0, 2)];
    let mut nodes = start_nodes(&sim, &nats, "standby", &both, 2, &quick, SERVING).await;
    let a = nodes.remove(0);
    runs(&a, &[0, 1], Duration::from_secs(5)).await;
    let identifies = sim.identifies();
    // b, with the same range, serves at once (following both shards), and
    // takes its fair share, one shard, which a hands over cleanly.
    let mut env = node_env(&nats.url(), "standby", "b", (0, 2, 2));
    env.extend(
        quick
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let (b, serving) = Process::spawn(&sim, &borrowed(&env));
    let b = b.serving_within(serving, Duration::from_secs(10)).await;
    runs(&b, &[1], Duration::from_secs(10)).await;
    runs(&a, &[0], Duration::from_secs(5)).await;
    assert!(a.log().contains("shard handed over"), "{}", a.log());
    assert_eq!(sim.identifies(), identifies, "handed over: resumed");
    let (mut client, _, _) = load(b.addr, sim.token(), 0, 2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, _) = a.signal("KILL").await;
    // a's lease expires; b takes shard 0 and resumes its session from the
    // checkpoint and the log: no identify, and b's client of shard 0 reads
    // on.
    runs(&b, &[0, 1], Duration::from_secs(15)).await;
    assert_eq!(sim.identifies(), identifies, "{}", b.log());
    assert!(sim.resumes() >= 2, "{}", b.log());
    let marker = sim.emit(0, "GP_MARKER", "{}").unwrap();
    let seen = markers_until(&mut client, marker).await;
    assert_eq!(seen.last(), Some(&marker));
    let (_, ready, guilds) = load(b.addr, sim.token(), 1, 2).await;
    assert_eq!(ready["shard"], serde_json::json!([1, 2]));
    assert!(!guilds.is_empty());
}
