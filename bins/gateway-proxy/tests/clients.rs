//! Real client libraries, unmodified, through the proxy to `discord-sim`:
//! each client program (under `tests/clients/`) asserts inside itself and
//! its exit code is checked here.
//!
//! The harness starts the sim, a pool and a proxy in this process, points
//! the sim's REST `/gateway/bot` at the proxy (discord.js finds the
//! gateway only there), writes a run file (URLs, token, shard count and
//! the ground truth of every guild) and runs the program. When it prints
//! `READY_OK`, the stream (held until then, so that the truth is exact)
//! goes on, and a second later the proxy closes every client (or, in the
//! restart tests, is shut down and a new proxy started from its
//! checkpoints on the same port): the library must resume and lose
//! nothing; then it pauses the sim's stream (`POST /_sim/pause`, which
//! gives each shard's last marker), waits for every marker and compares
//! its guild cache with the sim's world again (`GET /_sim/guilds`). The
//! program prints `DONE` and exits 0, or names what failed and exits 1.
//!
//! A missing interpreter or library skips a test with a note, unless
//! `GATEWAY_PROXY_REQUIRE_CLIENTS=1` (as in CI).

// Test code: a panic is a failed assertion, and notes go to stderr.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use discord_sim::{KNOWN_INTENTS, Sim, SimConfig};
use proxy_server::{Proxy, ServerConfig};
use serde_json::json;
use shard_pool::{DirStore, Flags, Pool, PoolConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn required() -> bool {
    std::env::var("GATEWAY_PROXY_REQUIRE_CLIENTS").is_ok_and(|v| v == "1")
}

/// Whether `program --version`-style probe `args` succeeds.
async fn available(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .current_dir(repo())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

struct Stack {
    sim: Sim,
    proxy: tokio::sync::Mutex<Option<Proxy>>,
    /// Where the proxy listens, across restarts.
    addr: SocketAddr,
    /// With checkpoints: what the next pool and proxy start with, and
    /// their directory.
    restart: Option<(PoolConfig, ServerConfig, PathBuf)>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some((_, _, dir)) = &self.restart {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// What the harness does to the clients once they are ready.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Disrupt {
    /// The proxy closes every client with 4000.
    Disconnect,
    /// The proxy shuts down (checkpoints, 4000 to clients, a resumable
    /// close upstream) and a new one starts from its checkpoints on the
    /// same port.
    Restart,
}

/// A stack whose proxy's configuration `tweak` changes first.
async fn stack_with(shards: u32, tweak: impl FnOnce(&mut ServerConfig)) -> Stack {
    stack_for(shards, Disrupt::Disconnect, tweak).await
}

/// The sim every client program runs against: `shards` shards of three
/// guilds, every guild available, 30 members each, 100 events a second
/// per shard, and quick identifies.
fn world(shards: u32) -> SimConfig {
    let mut config = SimConfig::default();
    config.shards = shards;
    config.guilds = 3 * shards;
    config.unavailable_guilds = 0;
    config.members_per_guild = 30;
    config.events_per_sec = 100;
    config.max_concurrency = shards;
    config.identify_interval = Duration::from_millis(100);
    config
}

/// A stack ready for `disrupt`, whose proxy's configuration `tweak`
/// changes first.
async fn stack_for(shards: u32, disrupt: Disrupt, tweak: impl FnOnce(&mut ServerConfig)) -> Stack {
    let sim = Sim::start(world(shards)).await.unwrap();
    let mut pool = PoolConfig::new(sim.token(), KNOWN_INTENTS);
    pool.api_base = Some(sim.api_base());
    pool.gateway_url = Some(sim.gateway_url().to_owned());
    pool.identify_window = Duration::from_millis(100);
    pool.cache = Flags::ALL;
    let dir = std::env::temp_dir().join(format!("gateway-proxy-clients-{}", sim.addr().port()));
    if disrupt == Disrupt::Restart {
        let _ = std::fs::remove_dir_all(&dir);
        pool.store = Some(Arc::new(DirStore::open(&dir).unwrap()));
    }
    let pool_config = pool.clone();
    let pool = Pool::start(pool).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), pool.ready())
        .await
        .unwrap()
        .unwrap();
    let mut server = ServerConfig::new(([127, 0, 0, 1], 0).into(), sim.token());
    tweak(&mut server);
    // Shared with the proxy that replaces it, as the binary does.
    let listener = proxy_server::listener(server.bind, disrupt == Disrupt::Restart).unwrap();
    let proxy = Proxy::start_on(listener, server.clone(), pool)
        .await
        .unwrap();
    let addr = proxy.addr();
    sim.advertise_gateway(format!("ws://{addr}"));
    server.bind = addr;
    Stack {
        sim,
        proxy: tokio::sync::Mutex::new(Some(proxy)),
        addr,
        restart: (disrupt == Disrupt::Restart).then_some((pool_config, server, dir)),
    }
}

impl Stack {
    /// Closes every client, or restarts the proxy from its checkpoints.
    async fn disrupt(&self) {
        let mut proxy = self.proxy.lock().await;
        let Some((pool, server, _)) = &self.restart else {
            proxy.as_ref().unwrap().disconnect_clients();
            return;
        };
        // The next proxy's listener first: a client closed by the old one
        // reconnects into its backlog, never refused.
        let listener = proxy_server::listener(self.addr, true).unwrap();
        proxy.take().unwrap().shutdown().await;
        let identifies = self.sim.identifies();
        let pool = Pool::start(pool.clone()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), pool.ready())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(self.sim.identifies(), identifies, "the restart identified");
        assert!(pool.shards().iter().all(|s| s.status().restored));
        *proxy = Some(
            Proxy::start_on(listener, server.clone(), pool)
                .await
                .unwrap(),
        );
    }
}

/// What a client program runs against: the sim, and what the harness does
/// to the program's connections once it is ready.
trait Harness {
    fn sim(&self) -> &Sim;
    /// Where clients connect.
    fn addr(&self) -> SocketAddr;
    /// Closes every client (or restarts the proxy, or moves them).
    async fn disrupt(&self);
}

impl Harness for Stack {
    fn sim(&self) -> &Sim {
        &self.sim
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn disrupt(&self) {
        Stack::disrupt(self).await;
    }
}

/// Holds the stream, lets the proxy catch up, and writes the run file.
async fn run_file(stack: &impl Harness, name: &str) -> PathBuf {
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.sim().pause_stream();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let world = stack.sim().world();
    let guilds: serde_json::Map<String, serde_json::Value> = world
        .guilds
        .iter()
        .map(|g| {
            (
                g.id.to_string(),
                json!({
                    "name": g.name,
                    "channels": g.channels.len(),
                    "roles": g.roles.len(),
                    "members": g.member_count(),
                }),
            )
        })
        .collect();
    // The upstream session of each shard: a voice server checks it.
    let upstream: serde_json::Map<String, serde_json::Value> = stack
        .sim()
        .connections()
        .iter()
        .filter(|c| c.open)
        .filter_map(|c| Some((c.shard?.to_string(), json!(c.session_id.clone()?))))
        .collect();
    let run = json!({
        "upstream_sessions": upstream,
        "gateway": format!("ws://{}", stack.addr()),
        "rest": stack.sim().api_base(),
        "token": stack.sim().token(),
        "shards": stack.sim().config().shards,
        "guilds": guilds,
    });
    let path =
        std::env::temp_dir().join(format!("gateway-proxy-{name}-{}.json", std::process::id()));
    std::fs::write(&path, run.to_string()).unwrap();
    path
}

/// Runs a client program to its end, driving the stream and the forced
/// disconnect; panics with its output unless it printed `DONE` and exited 0.
async fn drive(stack: &impl Harness, mut command: Command) {
    let mut child = command
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let mut output = String::new();
    let mut done = false;
    let mut lines = BufReader::new(stdout).lines();
    let outcome = tokio::time::timeout(Duration::from_secs(150), async {
        while let Ok(Some(line)) = lines.next_line().await {
            output.push_str(&line);
            output.push('\n');
            if line.starts_with("READY_OK") {
                stack.sim().resume_stream();
                tokio::time::sleep(Duration::from_secs(1)).await;
                stack.disrupt().await;
            }
            done |= line.starts_with("DONE");
        }
        child.wait().await
    })
    .await;
    let Ok(status) = outcome else {
        let _ = child.kill().await;
        panic!("the client did not finish in 150 s:\n{output}");
    };
    let status = status.unwrap();
    let errors = errors.await.unwrap();
    assert!(
        status.success() && done,
        "client failed ({status}):\n--- stdout\n{output}--- stderr\n{errors}"
    );
    eprintln!("{output}");
}

/// How discord.py's connections are compressed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dpy {
    ZstdStream,
    /// zlib-stream, each client its own stream (one client per shard is
    /// below `zlib_shared_min_clients`).
    ZlibStream,
    /// zlib-stream with shared bodies from the first client on, mixed
    /// with the connection's own messages (HELLO, ACKs, READY).
    ZlibShared,
}

async fn discord_py(mode: Dpy) {
    discord_py_through(mode, Disrupt::Disconnect).await;
}

async fn discord_py_through(mode: Dpy, disrupt: Disrupt) {
    let zlib = mode != Dpy::ZstdStream;
    let probe = ["-c", "import discord, zstandard"];
    if !available("python3", &probe).await {
        assert!(
            !required(),
            "python3 with discord.py and zstandard is required"
        );
        eprintln!(
            "note: discord.py not installed; pip install -r tests/clients/discordpy/requirements.txt"
        );
        return;
    }
    let stack = stack_for(2, disrupt, |config| {
        if mode == Dpy::ZlibShared {
            config.client_compression.zlib_shared_min_clients = 1;
        }
    })
    .await;
    let name = match (mode, disrupt) {
        (_, Disrupt::Restart) => "dpy-restart",
        (Dpy::ZstdStream, _) => "dpy-zstd",
        (Dpy::ZlibStream, _) => "dpy-zlib",
        (Dpy::ZlibShared, _) => "dpy-zlib-shared",
    };
    let run = run_file(&stack, name).await;
    let mut command = Command::new("python3");
    command.arg("tests/clients/discordpy/bot.py").arg(&run);
    if zlib {
        command.arg("zlib");
    }
    drive(&stack, command).await;
    // The run used the compression it was about.
    let wanted = if zlib { "zlib-stream" } else { "zstd-stream" };
    assert!(
        bytes_out(&stack, wanted).await > 0,
        "no bytes went out {wanted}"
    );
}

/// `gateway_bytes_out_total` of one compression, from `/metrics`.
async fn bytes_out(stack: &Stack, compression: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Metrics are brought up to date once a second.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut tcp = tokio::net::TcpStream::connect(stack.addr).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    tcp.read_to_string(&mut body).await.unwrap();
    let prefix = format!("gateway_bytes_out_total{{compression=\"{compression}\"}} ");
    body.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn discord_py_with_zstd_stream() {
    discord_py(Dpy::ZstdStream).await;
}

#[tokio::test]
async fn discord_py_with_zlib_stream() {
    discord_py(Dpy::ZlibStream).await;
}

#[tokio::test]
async fn discord_py_with_zlib_stream_shared_bodies() {
    discord_py(Dpy::ZlibShared).await;
}

/// A voice client, unmodified, through the proxy up to its voice
/// websocket (intercepted: no voice server exists here): `program` is
/// `python3` or `node`, `script` its file. Its process then crashes (ends
/// without closing), and a new one (a new IDENTIFY) joins the channel the
/// bot is still in: the proxy sends a leave then the join, and the
/// library reaches its voice websocket again.
async fn voice(program: &str, script: &str) {
    let stack = stack_with(2, |_| {}).await;
    let run = run_file(&stack, &format!("voice-{program}")).await;
    stack.sim.resume_stream();
    for mode in ["crash", "rejoin"] {
        let mut command = Command::new(program);
        command.arg(script).arg(&run).arg(mode);
        drive(&stack, command).await;
    }
    // Upstream: the first join, then the rejoin's leave and join, all of
    // one guild and one channel (then whatever the library sends as it
    // ends: discord.py leaves on the way out of its failed connect).
    let sent = upstream_op4(&stack.sim);
    let guilds: BTreeSet<_> = sent.iter().map(|(guild, _)| guild.clone()).collect();
    assert_eq!(guilds.len(), 1, "{sent:?}");
    let channels: Vec<_> = sent.iter().map(|(_, channel)| channel.clone()).collect();
    let joined = channels.first().cloned().flatten();
    assert!(joined.is_some(), "{sent:?}");
    assert_eq!(
        channels.get(..3),
        Some(&[joined.clone(), None, joined][..]),
        "{sent:?}"
    );
}

/// The op 4s the sim received, oldest first: each one's guild and channel
/// (ids as strings, whether sent as strings or, as discord.py does, as
/// numbers).
fn upstream_op4(sim: &Sim) -> Vec<(Option<String>, Option<String>)> {
    let id = |value: &serde_json::Value| match value {
        serde_json::Value::String(id) => Some(id.clone()),
        serde_json::Value::Number(id) => Some(id.to_string()),
        _ => None,
    };
    let mut connections = sim.connections();
    connections.sort_by_key(|c| c.id);
    connections
        .iter()
        .flat_map(|c| c.received.clone())
        .filter_map(|text| {
            let payload: serde_json::Value = serde_json::from_str(&text).ok()?;
            (payload["op"] == 4).then(|| {
                (
                    id(&payload["d"]["guild_id"]),
                    id(&payload["d"]["channel_id"]),
                )
            })
        })
        .collect()
}

#[tokio::test]
async fn discord_py_voice_client_reaches_its_voice_socket_and_again_after_a_crash() {
    let probe = ["-c", "import discord, nacl, davey"];
    if !available("python3", &probe).await {
        assert!(!required(), "python3 with discord.py[voice] is required");
        eprintln!(
            "note: discord.py[voice] not installed; pip install -r tests/clients/discordpy/requirements.txt"
        );
        return;
    }
    voice("python3", "tests/clients/discordpy/voice.py").await;
}

#[tokio::test]
async fn discordjs_voice_reaches_its_voice_socket_and_again_after_a_crash() {
    if !node_ready().await {
        return;
    }
    voice("node", "tests/clients/js/voice.js").await;
}

#[tokio::test]
async fn discord_py_across_a_proxy_restart() {
    discord_py_through(Dpy::ZlibStream, Disrupt::Restart).await;
}

/// Whether `node` runs and the npm packages of `tests/clients/js` are
/// installed; notes how to install them when not (a failure when required).
async fn node_ready() -> bool {
    let installed = repo().join("tests/clients/js/node_modules").is_dir();
    if installed && available("node", &["--version"]).await {
        return true;
    }
    assert!(
        !required(),
        "node and the packages of tests/clients/js (npm ci) are required"
    );
    eprintln!("note: node or its packages missing; npm ci --prefix tests/clients/js");
    false
}

#[tokio::test]
async fn discord_js() {
    discord_js_through(Disrupt::Disconnect).await;
}

#[tokio::test]
async fn discord_js_across_a_proxy_restart() {
    discord_js_through(Disrupt::Restart).await;
}

async fn discord_js_through(disrupt: Disrupt) {
    if !node_ready().await {
        return;
    }
    let stack = stack_for(2, disrupt, |_| {}).await;
    let name = match disrupt {
        Disrupt::Disconnect => "discordjs",
        Disrupt::Restart => "discordjs-restart",
    };
    let run = run_file(&stack, name).await;
    let mut command = Command::new("node");
    command.arg("tests/clients/js/discordjs.js").arg(&run);
    drive(&stack, command).await;
}

/// @discordjs/ws in `mode` (see `ws.js`), whose bytes go out as
/// `compression` (a `/metrics` label). zlib-stream clients get shared
/// bodies from the first one on.
async fn discordjs_ws(mode: &str, compression: &str) {
    if !node_ready().await {
        return;
    }
    let stack = stack_with(2, |config| {
        config.client_compression.zlib_shared_min_clients = 1;
    })
    .await;
    let run = run_file(&stack, &format!("discordjs-ws-{mode}")).await;
    let mut command = Command::new("node");
    command.arg("tests/clients/js/ws.js").arg(&run).arg(mode);
    if mode == "payload" {
        // @discordjs/ws inflates each payload on libuv's thread pool and
        // hands it on when done, not in order: with one thread they finish
        // in order, so the order checked is the proxy's (docs/clients.md).
        command.env("UV_THREADPOOL_SIZE", "1");
    }
    drive(&stack, command).await;
    assert!(
        bytes_out(&stack, compression).await > 0,
        "no bytes went out {compression}"
    );
}

#[tokio::test]
async fn discordjs_ws_with_payload_compression() {
    discordjs_ws("payload", "zlib-payload").await;
}

#[tokio::test]
async fn discordjs_ws_with_zlib_stream_read_by_node_zlib() {
    discordjs_ws("zlib-native", "zlib-stream").await;
}

#[tokio::test]
async fn discordjs_ws_with_zlib_stream_read_by_zlib_sync() {
    discordjs_ws("zlib-sync", "zlib-stream").await;
}

/// A TCP relay in front of a cluster's nodes, as a load balancer is: every
/// connection goes to the node it points at, and [`Relay::switch`] cuts
/// them all and points the next ones at another node, where the clients
/// resume.
struct Relay {
    addr: SocketAddr,
    target: Arc<std::sync::Mutex<SocketAddr>>,
    cut: tokio::sync::broadcast::Sender<()>,
}

impl Relay {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(std::sync::Mutex::new(addr));
        let (cut, _) = tokio::sync::broadcast::channel(1);
        let (to, cuts) = (target.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let node = *to.lock().unwrap();
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(node).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.recv() => {}
                    }
                });
            }
        });
        Self { addr, target, cut }
    }

    fn point_at(&self, node: SocketAddr) {
        *self.target.lock().unwrap() = node;
    }

    /// Cuts every connection; the next go to `node`.
    fn switch(&self, node: SocketAddr) {
        self.point_at(node);
        let _ = self.cut.send(());
    }
}

/// Two nodes of a cluster (processes, on a real NATS server) behind a
/// relay: node `a` runs shard 0, node `b` shard 1. Clients start on the
/// node `first` names and are moved to the other one.
struct Cluster {
    sim: Sim,
    _nats: cluster::testing::NatsServer,
    nodes: Vec<common::Process>,
    relay: Relay,
    /// The node clients are moved to.
    then: usize,
}

impl Cluster {
    async fn start(test: &str, first: usize) -> Option<Self> {
        let nats = cluster::testing::nats(test)?;
        let sim = Sim::start(world(2)).await.unwrap();
        let relay = Relay::start().await;
        let url = format!("ws://{}", relay.addr);
        let mut nodes = Vec::new();
        for (shard, node) in [(0, "a"), (1, "b")] {
            let env = [
                ("GATEWAY_PROXY_CLUSTER__NATS_URL", nats.url()),
                ("GATEWAY_PROXY_CLUSTER__NAME", test.to_owned()),
                ("GATEWAY_PROXY_CLUSTER__NODE_ID", node.to_owned()),
                ("GATEWAY_PROXY_SHARDS", "2".to_owned()),
                ("GATEWAY_PROXY_SHARD_START", shard.to_string()),
                ("GATEWAY_PROXY_SHARD_END", (shard + 1).to_string()),
                ("GATEWAY_PROXY_EXTERNALLY_ACCESSIBLE_URL", url.clone()),
            ];
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (process, serving) = common::Process::spawn(&sim, &env);
            nodes.push(process.serving(serving).await);
        }
        relay.point_at(nodes[first].addr);
        sim.advertise_gateway(url);
        Some(Self {
            sim,
            _nats: nats,
            nodes,
            relay,
            then: 1 - first,
        })
    }
}

impl Harness for Cluster {
    fn sim(&self) -> &Sim {
        &self.sim
    }

    fn addr(&self) -> SocketAddr {
        self.relay.addr
    }

    async fn disrupt(&self) {
        self.relay.switch(self.nodes[self.then].addr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_py_on_one_node_of_a_cluster_resumes_on_another() {
    let probe = ["-c", "import discord, zstandard"];
    if !available("python3", &probe).await {
        assert!(!required(), "python3 with discord.py is required");
        eprintln!("note: discord.py not installed");
        return;
    }
    let Some(cluster) = Cluster::start("dpy", 0).await else {
        return;
    };
    let run = run_file(&cluster, "dpy-cluster").await;
    let mut command = Command::new("python3");
    command.arg("tests/clients/discordpy/bot.py").arg(&run);
    drive(&cluster, command).await;
    for node in &cluster.nodes {
        let log = node.log();
        assert!(!log.contains("following broke"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_js_with_auto_shards_on_one_node_of_a_cluster_resumes_on_another() {
    if !node_ready().await {
        return;
    }
    let Some(cluster) = Cluster::start("djs", 1).await else {
        return;
    };
    let run = run_file(&cluster, "discordjs-cluster").await;
    let mut command = Command::new("node");
    command
        .arg("tests/clients/js/discordjs.js")
        .arg(&run)
        .arg("auto");
    drive(&cluster, command).await;
    for node in &cluster.nodes {
        let log = node.log();
        assert!(!log.contains("following broke"), "{log}");
    }
}
