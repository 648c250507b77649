//! The proxy's own restart, as an operator does it: the binary with
//! `state_dir`, stopped with SIGTERM or SIGINT or killed with SIGKILL, then
//! started again. Every shard RESUMEs upstream (the sim sees no second
//! IDENTIFY), and a client RESUMEs against the new process and gets every
//! event it missed, exactly once and in order. A checkpoint that is stale,
//! of another bot token, truncated or garbled costs an identify and one log
//! line saying why.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used)]
#![cfg(unix)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::Process;
use discord_sim::{GatewayClient, KNOWN_INTENTS, Received, Sim, SimConfig};
use serde_json::Value;

/// A directory of its own, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "gateway-proxy-restart-{test}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `env` and the checkpoints in `state`.
fn with_state<'a>(state: &'a Scratch, env: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let dir = state.0.to_str().expect("a UTF-8 temp path");
    let mut all = vec![("GATEWAY_PROXY_STATE_DIR", dir)];
    all.extend_from_slice(env);
    all
}

fn sim_config() -> SimConfig {
    let mut config = SimConfig::default();
    config.shards = 2;
    config.events_per_sec = 200;
    config.identify_interval = Duration::from_millis(200);
    config
}

async fn sim() -> Sim {
    Sim::start(sim_config()).await.unwrap()
}

/// A client identified on shard 0 of 2 at `addr`, past READY and its
/// guilds: the client, its session id and its last `s`.
async fn identified(sim: &Sim, addr: SocketAddr) -> (GatewayClient, String, u64) {
    let (mut client, _) = GatewayClient::connect(addr, "v=10&encoding=json")
        .await
        .unwrap();
    client.set_timeout(Duration::from_secs(10));
    client
        .identify(sim.token(), [0, 2], KNOWN_INTENTS)
        .await
        .unwrap();
    let ready = client.payload().await.unwrap();
    assert_eq!(ready["t"], "READY", "{ready}");
    let session = ready["d"]["session_id"].as_str().unwrap().to_owned();
    let guilds = ready["d"]["guilds"].as_array().unwrap().len() as u64;
    for _ in 0..guilds {
        client.payload().await.unwrap();
    }
    (client, session, 1 + guilds)
}

fn marker(payload: &Value) -> Option<u64> {
    payload["d"]["_sim"]["n"].as_u64()
}

/// Reads dispatches until `count` carry a marker, checking that `s` counts
/// up by one from `last`; collects the markers.
async fn marked(client: &mut GatewayClient, last: &mut u64, count: usize, seen: &mut Vec<u64>) {
    let mut taken = 0;
    while taken < count {
        let payload = client.payload().await.unwrap();
        let Some(s) = payload["s"].as_u64() else {
            continue;
        };
        assert_eq!(s, *last + 1, "contiguous s: {payload}");
        *last = s;
        if let Some(n) = marker(&payload) {
            seen.push(n);
            taken += 1;
        }
    }
}

/// RESUMEs `session` from `last` at `addr`: the replay, then RESUMED, each
/// `s` one above the one before; the markers replayed go into `seen`.
async fn resume(
    sim: &Sim,
    addr: SocketAddr,
    session: &str,
    last: &mut u64,
    seen: &mut Vec<u64>,
) -> GatewayClient {
    let (mut client, _) = GatewayClient::connect(addr, "v=10&encoding=json")
        .await
        .unwrap();
    client.set_timeout(Duration::from_secs(10));
    client.resume(sim.token(), session, *last).await.unwrap();
    loop {
        let payload = client.payload().await.unwrap();
        let s = payload["s"]
            .as_u64()
            .unwrap_or_else(|| panic!("a RESUME answered with {payload}"));
        assert_eq!(s, *last + 1, "{payload}");
        *last = s;
        if payload["t"] == "RESUMED" {
            return client;
        }
        seen.extend(marker(&payload));
    }
}

/// Reads until the server closes, each `s` one above `last`, collecting
/// the markers; returns the close code.
async fn until_close(
    client: &mut GatewayClient,
    last: &mut u64,
    seen: &mut Vec<u64>,
) -> Option<u16> {
    loop {
        match client.recv().await.unwrap() {
            Received::Close(code) => return code,
            Received::Payload(payload) => {
                if let Some(s) = payload["s"].as_u64() {
                    assert_eq!(s, *last + 1);
                    *last = s;
                    seen.extend(marker(&payload));
                }
            }
            other => panic!("{other:?}"),
        }
    }
}

fn assert_contiguous(seen: &[u64]) {
    for pair in seen.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "markers go up by one: {seen:?}");
    }
}

/// The second process resumed both shards and identified none.
fn assert_resumed_upstream(sim: &Sim, log: &str) {
    assert_eq!(sim.identifies(), 2, "no IDENTIFY after the restart:\n{log}");
    assert_eq!(sim.resumes(), 2, "a RESUME per shard:\n{log}");
    assert_eq!(
        log.matches("resuming the upstream session of a checkpoint")
            .count(),
        2,
        "{log}"
    );
}

/// Stops a process serving a client with `signal` (TERM or INT), starts
/// the next on the same `state_dir`, and checks that it RESUMEs every
/// shard and that the client RESUMEs against it and loses nothing.
async fn stopped_then_resumed(signal: &str) {
    let sim = sim().await;
    let state = Scratch::new(&format!("sig{}", signal.to_lowercase()));
    let first = Process::start(&sim, &with_state(&state, &[])).await;
    let (mut client, session, mut last) = identified(&sim, first.addr).await;
    let mut seen = Vec::new();
    marked(&mut client, &mut last, 30, &mut seen).await;
    let (code, log) = first.signal(signal).await;
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("checkpoints written"), "{log}");
    // The client was told to resume, after every event it was sent.
    assert_eq!(
        until_close(&mut client, &mut last, &mut seen).await,
        Some(4000)
    );
    let upstream = sim.connections();
    assert!(
        upstream
            .iter()
            .all(|c| !c.open && c.close_code != Some(1000)),
        "upstream closed resumably: {:?}",
        upstream.iter().map(|c| c.close_code).collect::<Vec<_>>()
    );

    let second = Process::start(&sim, &with_state(&state, &[])).await;
    assert_resumed_upstream(&sim, &second.log());
    let mut client = resume(&sim, second.addr, &session, &mut last, &mut seen).await;
    marked(&mut client, &mut last, 30, &mut seen).await;
    assert_contiguous(&seen);
    assert!(
        second.log().contains("client sessions restored"),
        "{}",
        second.log()
    );
}

#[tokio::test]
async fn after_sigterm_the_next_process_resumes_and_the_client_loses_nothing() {
    stopped_then_resumed("TERM").await;
}

#[tokio::test]
async fn after_sigint_the_next_process_resumes_and_the_client_loses_nothing() {
    stopped_then_resumed("INT").await;
}

#[tokio::test]
async fn a_new_process_started_before_the_old_one_stops_takes_over_with_no_refused_connection() {
    let sim = sim().await;
    let state = Scratch::new("overlap");
    let first = Process::start(&sim, &with_state(&state, &[])).await;
    let (mut client, session, mut last) = identified(&sim, first.addr).await;
    let mut seen = Vec::new();
    marked(&mut client, &mut last, 30, &mut seen).await;
    // The new binary on the same port: it waits for the old one's
    // checkpoints, its listener already open.
    let port = first.addr.port().to_string();
    let (second, serving) =
        Process::spawn(&sim, &with_state(&state, &[("GATEWAY_PROXY_PORT", &port)]));
    tokio::time::timeout(Duration::from_secs(30), async {
        while !second
            .log()
            .contains("another gateway-proxy holds state_dir")
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the second did not wait:\n{}", second.log()));
    let addr = first.addr;
    let stopping = tokio::spawn(first.signal("TERM"));
    // The client is closed with 4000 and RESUMEs at once, as discord.py
    // does: its connection is taken (by the new process), not refused.
    assert_eq!(
        until_close(&mut client, &mut last, &mut seen).await,
        Some(4000)
    );
    let mut client = resume(&sim, addr, &session, &mut last, &mut seen).await;
    let (code, _) = stopping.await.unwrap();
    assert_eq!(code, Some(0));
    let second = second.serving(serving).await;
    assert_eq!(second.addr.port(), addr.port());
    marked(&mut client, &mut last, 30, &mut seen).await;
    assert_contiguous(&seen);
    assert_resumed_upstream(&sim, &second.log());
}

#[tokio::test]
async fn after_sigkill_the_next_process_resumes_from_the_periodic_checkpoint() {
    let sim = sim().await;
    let state = Scratch::new("sigkill");
    let every_second = [("GATEWAY_PROXY_CHECKPOINT_INTERVAL_SECS", "1")];
    let first = Process::start(&sim, &with_state(&state, &every_second)).await;
    let (mut client, session, mut last) = identified(&sim, first.addr).await;
    let mut seen = Vec::new();
    // Long enough for periodic checkpoints while the client is served.
    marked(&mut client, &mut last, 500, &mut seen).await;
    let (code, log) = first.signal("KILL").await;
    assert_eq!(code, None, "killed: {log}");
    drop(client);

    let second = Process::start(&sim, &with_state(&state, &every_second)).await;
    assert_resumed_upstream(&sim, &second.log());
    let mut client = resume(&sim, second.addr, &session, &mut last, &mut seen).await;
    marked(&mut client, &mut last, 30, &mut seen).await;
    assert_contiguous(&seen);
}

#[tokio::test]
async fn a_stale_checkpoint_identifies_with_one_line_saying_so() {
    let sim = sim().await;
    let state = Scratch::new("stale");
    let first = Process::start(&sim, &with_state(&state, &[])).await;
    let (code, _) = first.signal("TERM").await;
    assert_eq!(code, Some(0));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = Process::start(
        &sim,
        &with_state(&state, &[("GATEWAY_PROXY_CHECKPOINT_MAX_AGE_SECS", "1")]),
    )
    .await;
    let log = second.log();
    assert_eq!(sim.resumes(), 0, "{log}");
    assert_eq!(sim.identifies(), 4, "{log}");
    assert_eq!(
        log.matches("over checkpoint_max_age_secs: identifying")
            .count(),
        2,
        "{log}"
    );
}

#[tokio::test]
async fn a_checkpoint_of_another_token_identifies_every_shard_with_one_line_saying_so() {
    let sim = sim().await;
    let state = Scratch::new("token");
    let first = Process::start(&sim, &with_state(&state, &[])).await;
    let (code, log) = first.signal("TERM").await;
    assert_eq!(code, Some(0), "{log}");
    let upstream = sim.connections().len();
    // The same Discord for another bot: a sim that accepts only its token,
    // which the next process is given.
    let mut config = sim_config();
    config.token = "another-bot-token".to_owned();
    let other = Sim::start(config).await.unwrap();
    let second = Process::start(&other, &with_state(&state, &[])).await;
    let log = second.log();
    assert_eq!(other.identifies(), 2, "every shard identified:\n{log}");
    assert_eq!(other.resumes() + sim.resumes(), 0, "no RESUME:\n{log}");
    assert_eq!(
        sim.connections().len(),
        upstream,
        "nothing tried the old bot's sessions:\n{log}"
    );
    assert_eq!(
        log.matches(
            "checkpoints not used, every shard identifies: the checkpoint is of another bot token"
        )
        .count(),
        1,
        "{log}"
    );
    assert!(!log.contains("resuming the upstream session"), "{log}");
}

/// `DirStore`'s file header: magic, version, reserved, length, CRC-32.
const BLOB_HEADER: usize = 20;

/// Stops a process with SIGTERM, changes shard 0's checkpoint file with
/// `damage`, and starts the next: shard 0 identifies, shard 1 RESUMEs.
/// Returns the next process's log.
async fn after_damage(test: &str, damage: impl FnOnce(&mut Vec<u8>)) -> String {
    let sim = sim().await;
    let state = Scratch::new(test);
    let first = Process::start(&sim, &with_state(&state, &[])).await;
    let (code, log) = first.signal("TERM").await;
    assert_eq!(code, Some(0), "{log}");
    let file = state.0.join("shard-0");
    let mut bytes = std::fs::read(&file).unwrap();
    damage(&mut bytes);
    std::fs::write(&file, bytes).unwrap();
    let second = Process::start(&sim, &with_state(&state, &[])).await;
    let log = second.log();
    assert_eq!(sim.identifies(), 3, "shard 0 identified again:\n{log}");
    assert_eq!(sim.resumes(), 1, "shard 1 resumed:\n{log}");
    log
}

#[tokio::test]
async fn a_truncated_checkpoint_identifies_with_one_line_saying_so() {
    let mut whole = 0;
    let log = after_damage("truncated", |bytes| {
        whole = bytes.len();
        bytes.truncate(whole / 2);
    })
    .await;
    let line = format!(
        "the checkpoint is unusable: blob \"shard-0\" is corrupt: the header says {} bytes, \
         the file holds {}: identifying",
        whole - BLOB_HEADER,
        whole / 2 - BLOB_HEADER
    );
    assert_eq!(log.matches(&line).count(), 1, "{line} in\n{log}");
}

#[tokio::test]
async fn a_garbled_checkpoint_identifies_with_one_line_saying_so() {
    let log = after_damage("garbled", |bytes| {
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
    })
    .await;
    let line = "the checkpoint is unusable: blob \"shard-0\" is corrupt: the checksum does not \
                match: identifying";
    assert_eq!(log.matches(line).count(), 1, "{line} in\n{log}");
}
