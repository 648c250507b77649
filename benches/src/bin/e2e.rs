//! The end-to-end benchmark: `discord-sim`, a proxy and client processes on
//! loopback, each its own process, measured side by side with the direct
//! path (the same clients connected straight to the sim).
//!
//! ```text
//! cargo run --release -p benches --bin e2e                 # everything (~13 min)
//! cargo run --release -p benches --bin e2e -- --quick      # a smoke run (< 1 min)
//! cargo run --release -p benches --bin e2e -- --only latency,memory --runs 5
//! cargo run --release -p benches --bin e2e -- --proxy-cmd "sh my-proxy.sh"
//! ```
//!
//! `--help` lists every option. It measures throughput, added latency, the
//! proxy's CPU per delivered event, its RSS per shard, guild and member
//! for three cache presets, its RSS in steady state (a client per shard,
//! the stream running) and per idle shard, and a reconnect storm, and
//! prints Markdown tables (progress goes to stderr). `docs/performance.md`
//! explains the method and holds the results; `docs/BENCHMARKING.md` the
//! contract for driving another proxy with `--proxy-cmd`.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::too_many_lines,
    reason = "a benchmark program: it reports on its terminal and works in rates"
)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use benches::e2e::{Histogram, clock_ticks, now_us, table, tree_stat};

#[path = "e2e/cluster.rs"]
mod cluster_section;
use serde_json::Value;

/// `GUILDS | GUILD_MESSAGES`: the sim then sends a session its messages
/// (three quarters `MESSAGE_CREATE`, ~1.1 KB on average with the rest)
/// and its guild events, about 46 % of the shard's mixed stream. The whole
/// mix (every intent) averages ~750 bytes.
const INTENTS_1KB: u64 = 1 | 1 << 9;

/// The share of the sim's stream that [`INTENTS_1KB`] lets through, to
/// turn a wanted delivered rate into the sim's `--events-per-sec`; the
/// delivered rate is measured and reported, not assumed.
const SHARE_1KB: f64 = 0.46;

const USAGE: &str = "usage: e2e [options]

  --quick                 a smoke run: small sizes, one run, no search (< 1 min)
  --runs N                runs of each measurement, medians reported (default 3)
  --only LIST             comma-separated: throughput,latency,memory,steady,storm,
                          cluster (default all; cluster needs nats-server)
  --proxy-cmd CMD         the proxy under test, started with `sh -c CMD` and the
                          environment of the contract (docs/BENCHMARKING.md);
                          repeat to compare proxies; default: this repository's
                          gateway-proxy through benches/e2e/gateway-proxy.sh
  --proxy-name NAME       a name for each --proxy-cmd, in order
  --no-build              do not run `cargo build` for the sim, proxy and client
  --bin-dir DIR           where discord-sim, gateway-proxy and e2e_client are
                          (default: next to this program)
  --intents N             what the clients and proxies identify with
                          (default 513: GUILDS | GUILD_MESSAGES, ~1.1 KB events)
 throughput:
  --tp-clients LIST       clients per shard (default 1,4,16)
  --tp-compression LIST   none,zlib-stream,zstd-stream (default all three)
  --tp-window S           seconds measured per trial (default 2)
  --tp-direct BOOL        also search the direct path with 1 client (default true)
 latency:
  --lat-rate N            delivered events/s in all (default 10000)
  --lat-clients N         clients, one per shard (default 16)
  --lat-window S          seconds measured (default 5)
  --lat-compression C     none, zlib-stream or zstd-stream (default none)
 memory:
  --mem-shards S --mem-guilds G --mem-members M
                          the world: S shards, G guilds in all, M members each
                          (default 4, 1000, 100)
 steady (memory as deployments run: a client per shard, the stream running):
  --steady-shards S       shards, one client each (default 4)
  --steady-rate R         the sim's events/s per shard (default 1500; the intents
                          let through about 46 % of them)
  --steady-secs T         seconds of stream, RSS sampled every second (default 60)
  --steady-compression C  the clients' compression (default zlib-stream)
  --steady-guilds G --steady-members M
                          guilds per shard, members each (default 100, 10)
  --idle-shards N         the idle cost: 1 shard against 1+N shards with no guild
                          (default 64)
 storm:
  --storm-clients N       clients connecting at once (default 100)
  --storm-procs N         processes they are spread over (default 4)
  --storm-guilds G --storm-members M
                          guilds of the one shard, members each (default 100, 100)";

#[derive(Clone, Debug)]
struct Args {
    quick: bool,
    runs: usize,
    only: Vec<String>,
    proxies: Vec<ProxySpec>,
    build: bool,
    bin_dir: PathBuf,
    intents: u64,
    tp_clients: Vec<usize>,
    tp_compression: Vec<String>,
    tp_window: f64,
    tp_direct: bool,
    lat_rate: f64,
    lat_clients: u32,
    lat_window: f64,
    lat_compression: String,
    mem_shards: u32,
    mem_guilds: u32,
    mem_members: u32,
    steady_shards: u32,
    steady_rate: u32,
    steady_secs: u32,
    steady_compression: String,
    steady_guilds: u32,
    steady_members: u32,
    idle_shards: u32,
    storm_clients: usize,
    storm_procs: usize,
    storm_guilds: u32,
    storm_members: u32,
}

#[derive(Clone, Debug)]
struct ProxySpec {
    name: String,
    cmd: String,
}

fn parse_args() -> Result<Args, String> {
    let own_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let mut args = Args {
        quick: false,
        runs: 3,
        only: vec![],
        proxies: vec![],
        build: true,
        bin_dir: own_dir,
        intents: INTENTS_1KB,
        tp_clients: vec![1, 4, 16],
        tp_compression: vec![
            "none".to_owned(),
            "zlib-stream".to_owned(),
            "zstd-stream".to_owned(),
        ],
        tp_window: 2.0,
        tp_direct: true,
        lat_rate: 10_000.0,
        lat_clients: 16,
        lat_window: 5.0,
        lat_compression: "none".to_owned(),
        mem_shards: 4,
        mem_guilds: 1000,
        mem_members: 100,
        steady_shards: 4,
        steady_rate: 1500,
        steady_secs: 60,
        steady_compression: "zlib-stream".to_owned(),
        steady_guilds: 100,
        steady_members: 10,
        idle_shards: 64,
        storm_clients: 100,
        storm_procs: 4,
        storm_guilds: 100,
        storm_members: 100,
    };
    let mut cmds = Vec::new();
    let mut names = Vec::new();
    let mut it = std::env::args().skip(1);
    let mut explicit = Vec::new();
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_owned());
        }
        if flag == "--quick" {
            args.quick = true;
            continue;
        }
        if flag == "--no-build" {
            args.build = false;
            continue;
        }
        let value = it
            .next()
            .ok_or(format!("{flag} needs a value\n\n{USAGE}"))?;
        let bad = |what: &str| format!("{flag}: expected {what}, got {value:?}");
        let num = || value.parse::<f64>().map_err(|_| bad("a number"));
        let int = || value.parse::<u32>().map_err(|_| bad("a whole number"));
        let list = || -> Vec<String> { value.split(',').map(|s| s.trim().to_owned()).collect() };
        explicit.push(flag.clone());
        match flag.as_str() {
            "--runs" => args.runs = int()?.max(1) as usize,
            "--only" => args.only = list(),
            "--proxy-cmd" => cmds.push(value.clone()),
            "--proxy-name" => names.push(value.clone()),
            "--bin-dir" => args.bin_dir = PathBuf::from(&value),
            "--intents" => args.intents = value.parse().map_err(|_| bad("a bitfield"))?,
            "--tp-clients" => {
                args.tp_clients = list()
                    .iter()
                    .map(|s| s.parse().map_err(|_| bad("numbers")))
                    .collect::<Result<_, _>>()?;
            }
            "--tp-compression" => args.tp_compression = list(),
            "--tp-window" => args.tp_window = num()?,
            "--tp-direct" => args.tp_direct = value == "true",
            "--lat-rate" => args.lat_rate = num()?,
            "--lat-clients" => args.lat_clients = int()?.max(1),
            "--lat-window" => args.lat_window = num()?,
            "--lat-compression" => args.lat_compression.clone_from(&value),
            "--mem-shards" => args.mem_shards = int()?.max(1),
            "--mem-guilds" => args.mem_guilds = int()?,
            "--mem-members" => args.mem_members = int()?,
            "--steady-shards" => args.steady_shards = int()?.max(1),
            "--steady-rate" => args.steady_rate = int()?,
            "--steady-secs" => args.steady_secs = int()?.max(1),
            "--steady-compression" => args.steady_compression.clone_from(&value),
            "--steady-guilds" => args.steady_guilds = int()?,
            "--steady-members" => args.steady_members = int()?,
            "--idle-shards" => args.idle_shards = int()?.max(1),
            "--storm-clients" => args.storm_clients = int()?.max(1) as usize,
            "--storm-procs" => args.storm_procs = int()?.max(1) as usize,
            "--storm-guilds" => args.storm_guilds = int()?,
            "--storm-members" => args.storm_members = int()?,
            other => return Err(format!("unknown option {other}\n\n{USAGE}")),
        }
    }
    for o in &args.only {
        if !matches!(
            o.as_str(),
            "throughput" | "latency" | "memory" | "steady" | "storm" | "cluster"
        ) {
            return Err(format!("--only: unknown section {o:?}\n\n{USAGE}"));
        }
    }
    for c in args.tp_compression.iter().chain([&args.steady_compression]) {
        if !matches!(c.as_str(), "none" | "zlib-stream" | "zstd-stream") {
            return Err(format!("unknown compression {c:?}"));
        }
    }
    if args.quick {
        // Smaller sizes, unless given.
        let set = |flag: &str| explicit.iter().any(|f| f == flag);
        if !set("--runs") {
            args.runs = 1;
        }
        if !set("--tp-clients") {
            args.tp_clients = vec![1, 4];
        }
        if !set("--tp-window") {
            args.tp_window = 1.0;
        }
        if !set("--lat-window") {
            args.lat_window = 1.0;
        }
        if !set("--mem-guilds") {
            args.mem_guilds = 40;
        }
        if !set("--mem-members") {
            args.mem_members = 50;
        }
        if !set("--mem-shards") {
            args.mem_shards = 2;
        }
        if !set("--steady-secs") {
            args.steady_secs = 10;
        }
        if !set("--steady-shards") {
            args.steady_shards = 2;
        }
        if !set("--idle-shards") {
            args.idle_shards = 8;
        }
        if !set("--storm-clients") {
            args.storm_clients = 20;
        }
        if !set("--storm-guilds") {
            args.storm_guilds = 20;
        }
    }
    if cmds.is_empty() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/gateway-proxy.sh");
        args.proxies.push(ProxySpec {
            name: "gateway-proxy".to_owned(),
            cmd: format!("exec sh {}", shell_quote(&script.to_string_lossy())),
        });
    } else {
        for (i, cmd) in cmds.into_iter().enumerate() {
            let name = names
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("proxy {}", i + 1));
            args.proxies.push(ProxySpec { name, cmd });
        }
    }
    Ok(args)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

// ---------------------------------------------------------------------------
// Child processes: each in its own process group, killed with it on drop,
// on panic (drop runs while unwinding) and on SIGINT/SIGTERM/SIGHUP.

/// Process groups of the children still running.
static GROUPS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// The scratch directory (logs), removed on an interruption too.
static SCRATCH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

fn watch_signals() {
    std::thread::spawn(|| {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut hup)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
        });
        let groups = std::mem::take(
            &mut *GROUPS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for pgid in groups {
            kill_group(pgid);
        }
        if let Some(scratch) = SCRATCH.get() {
            let _ = std::fs::remove_dir_all(scratch);
        }
        eprintln!("e2e: interrupted; child processes killed");
        std::process::exit(130);
    });
}

/// A child process, killed (with its process group) when dropped.
struct Proc {
    child: Option<Child>,
    pid: u32,
}

impl Proc {
    fn spawn(mut command: Command) -> Result<Self, String> {
        command.process_group(0);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {command:?}: {e}"))?;
        let pid = child.id();
        GROUPS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(pid);
        Ok(Self {
            child: Some(child),
            pid,
        })
    }

    /// Waits for it to exit and returns its stdout, killing it at `deadline_us`.
    fn output(mut self, deadline_us: u64) -> Result<String, String> {
        let mut child = self.child.take().ok_or("no child")?;
        let mut stdout = child.stdout.take().ok_or("stdout not piped")?;
        let reader = std::thread::spawn(move || {
            let mut out = String::new();
            let _ = stdout.read_to_string(&mut out);
            out
        });
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if now_us() > deadline_us {
                kill_group(self.pid);
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.forget();
        reader.join().map_err(|_| "reader panicked".to_owned())
    }

    fn forget(&self) {
        GROUPS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|&g| g != self.pid);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        kill_group(self.pid);
        if let Some(child) = &mut self.child {
            let _ = child.wait();
        }
        self.forget();
    }
}

// ---------------------------------------------------------------------------
// The sim, the proxies and the clients.

struct Bins {
    sim: PathBuf,
    proxy: PathBuf,
    client: PathBuf,
    scratch: PathBuf,
}

struct SimProc {
    proc: Proc,
    addr: SocketAddr,
    gateway_url: String,
    api_base: String,
    token: String,
}

#[derive(Clone, Copy, Debug)]
struct World {
    shards: u32,
    guilds: u32,
    members: u32,
    /// The sim's `--events-per-sec`, per shard.
    rate: u32,
}

fn start_sim(bins: &Bins, world: World) -> Result<SimProc, String> {
    let mut command = Command::new(&bins.sim);
    command
        .args(["--port", "0", "--seed", "1"])
        .args(["--shards", &world.shards.to_string()])
        .args(["--guilds", &world.guilds.to_string()])
        .args(["--members", &world.members.to_string()])
        .args(["--events-per-sec", &world.rate.to_string()])
        .args(["--max-concurrency", &world.shards.to_string()])
        .current_dir(&bins.scratch)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file(bins, "discord-sim")?);
    let mut proc = Proc::spawn(command)?;
    let stdout = proc
        .child
        .as_mut()
        .and_then(|c| c.stdout.take())
        .ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut gateway_url, mut api_base, mut token) = (None, None, None);
    while gateway_url.is_none() || api_base.is_none() || token.is_none() {
        let line = lines
            .next()
            .ok_or("discord-sim ended before printing its address (see its log)")?
            .map_err(|e| e.to_string())?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("gateway_url"), Some(v)) => gateway_url = Some(v.to_owned()),
            (Some("api_base"), Some(v)) => api_base = Some(v.to_owned()),
            (Some("token"), Some(v)) => token = Some(v.to_owned()),
            _ => {}
        }
    }
    let gateway_url = gateway_url.unwrap_or_default();
    let addr = gateway_url
        .trim_start_matches("ws://")
        .parse()
        .map_err(|_| format!("cannot read the sim's address from {gateway_url}"))?;
    // Keep reading stdout so the sim never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Ok(SimProc {
        proc,
        addr,
        gateway_url,
        api_base: api_base.unwrap_or_default(),
        token: token.unwrap_or_default(),
    })
}

fn log_file(bins: &Bins, name: &str) -> Result<Stdio, String> {
    std::fs::File::create(bins.scratch.join(format!("{name}.log")))
        .map(Stdio::from)
        .map_err(|e| format!("cannot create a log file: {e}"))
}

/// The cache presets of the memory measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Preset {
    Minimal,
    Members,
    Full,
}

impl Preset {
    fn name(self) -> &'static str {
        match self {
            Self::Minimal => "minimal",
            Self::Members => "members",
            Self::Full => "full",
        }
    }
}

struct ProxyProc {
    proc: Proc,
    addr: SocketAddr,
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

/// Starts a proxy with the contract's environment and waits until it
/// serves every shard.
fn start_proxy(
    bins: &Bins,
    spec: &ProxySpec,
    sim: &SimProc,
    shards: u32,
    intents: u64,
    preset: Preset,
) -> Result<ProxyProc, String> {
    let port = free_port()?;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(&spec.cmd)
        .env("PROXY_PORT", port.to_string())
        .env("PROXY_HOST", "127.0.0.1")
        .env("UPSTREAM_GATEWAY_URL", &sim.gateway_url)
        .env("UPSTREAM_API_BASE", &sim.api_base)
        .env("DISCORD_TOKEN", &sim.token)
        .env("SHARDS", shards.to_string())
        .env("INTENTS", intents.to_string())
        .env("CACHE", preset.name())
        .env("E2E_GATEWAY_PROXY_BIN", &bins.proxy)
        .current_dir(&bins.scratch)
        .stdin(Stdio::null())
        .stdout(log_file(bins, "proxy.out")?)
        .stderr(log_file(bins, "proxy")?);
    let mut proc = Proc::spawn(command)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = now_us() + 120_000_000;
    loop {
        if let Some(child) = proc.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            let log = std::fs::read_to_string(bins.scratch.join("proxy.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            return Err(format!(
                "the proxy `{}` exited with {status} before it was ready; its log ends:\n{}",
                spec.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        if now_us() > deadline {
            return Err(format!("the proxy `{}` was not ready in 120 s", spec.name));
        }
        match http_status(addr, "/ready") {
            Some(200) => break,
            // No /ready: ready once a client of every shard gets READY and
            // its guilds.
            Some(404) if probe(bins, addr, &sim.token, shards, intents) => break,
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    proc.child.as_mut().map(|c| c.stdout.take());
    Ok(ProxyProc { proc, addr })
}

/// `GET path` over HTTP/1.0: the status code, if it answers.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(tcp, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut head = [0u8; 32];
    let n = tcp.read(&mut head).ok()?;
    std::str::from_utf8(&head[..n])
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn probe(bins: &Bins, addr: SocketAddr, token: &str, shards: u32, intents: u64) -> bool {
    (0..shards).all(|shard| {
        let clients = spawn_clients(
            bins,
            &ClientSpec {
                addr,
                token: token.to_owned(),
                query: "v=10&encoding=json".to_owned(),
                shards,
                intents,
                start_at_us: 0,
                window: None,
                deadline_us: now_us() + 10_000_000,
            },
            &[(shard, 1)],
        );
        clients.is_ok_and(|clients| {
            collect(clients, now_us() + 12_000_000)
                .iter()
                .all(|o| o.connections.iter().all(|c| c.completed))
        })
    })
}

#[derive(Clone, Debug)]
struct ClientSpec {
    addr: SocketAddr,
    token: String,
    query: String,
    shards: u32,
    intents: u64,
    start_at_us: u64,
    window: Option<(u64, u64)>,
    deadline_us: u64,
}

/// Starts one client process per `(shard, connections)`.
fn spawn_clients(
    bins: &Bins,
    spec: &ClientSpec,
    procs: &[(u32, usize)],
) -> Result<Vec<Proc>, String> {
    procs
        .iter()
        .map(|&(shard, connections)| {
            let mut command = Command::new(&bins.client);
            command
                .args(["--addr", &spec.addr.to_string()])
                .args(["--token", &spec.token])
                .args(["--query", &spec.query])
                .args(["--shard", &shard.to_string()])
                .args(["--shards", &spec.shards.to_string()])
                .args(["--intents", &spec.intents.to_string()])
                .args(["--connections", &connections.to_string()])
                .args(["--start-at-us", &spec.start_at_us.to_string()])
                .args(["--deadline-us", &spec.deadline_us.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            if let Some((start, end)) = spec.window {
                command
                    .args(["--window-start-us", &start.to_string()])
                    .args(["--window-end-us", &end.to_string()]);
            }
            Proc::spawn(command)
        })
        .collect()
}

/// What one client connection reported.
#[derive(Clone, Debug, Default)]
struct ConnOut {
    shard: u32,
    connected_us: u64,
    guilds: u64,
    guilds_us: u64,
    s_gaps: u64,
    n_back: u64,
    window_events: u64,
    window_bytes: u64,
    window_first_n: u64,
    window_last_n: u64,
    sizes: Vec<(String, u64, u64)>,
    error: Option<String>,
    completed: bool,
}

/// What one client process reported.
#[derive(Clone, Debug, Default)]
struct ClientOut {
    cpu_ticks: u64,
    latency: Histogram,
    connections: Vec<ConnOut>,
}

fn collect(procs: Vec<Proc>, deadline_us: u64) -> Vec<ClientOut> {
    procs
        .into_iter()
        .map(|proc| {
            let text = proc.output(deadline_us).unwrap_or_default();
            parse_client(&text).unwrap_or_else(|| ClientOut {
                connections: vec![ConnOut {
                    error: Some("the client process printed no result".to_owned()),
                    ..ConnOut::default()
                }],
                ..ClientOut::default()
            })
        })
        .collect()
}

fn parse_client(text: &str) -> Option<ClientOut> {
    let v: Value = serde_json::from_str(text.trim()).ok()?;
    let u = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    let shard = u32::try_from(u(&v, "shard")).unwrap_or(0);
    Some(ClientOut {
        cpu_ticks: u(&v, "cpu_ticks"),
        latency: Histogram::from_json(&v["latency_us"])?,
        connections: v["connections"]
            .as_array()?
            .iter()
            .map(|c| ConnOut {
                shard,
                connected_us: u(c, "connected_us"),
                guilds: u(c, "guilds"),
                guilds_us: u(c, "guilds_us"),
                s_gaps: u(c, "s_gaps"),
                n_back: u(c, "n_back"),
                window_events: u(c, "window_events"),
                window_bytes: u(c, "window_bytes"),
                window_first_n: u(c, "window_first_n"),
                window_last_n: u(c, "window_last_n"),
                sizes: c["sizes"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|s| {
                                (
                                    s[0].as_str().unwrap_or("").to_owned(),
                                    s[1].as_u64().unwrap_or(0),
                                    s[2].as_u64().unwrap_or(0),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                error: c["error"].as_str().map(str::to_owned),
                completed: c["completed"].as_bool().unwrap_or(false),
            })
            .collect(),
    })
}

// ---------------------------------------------------------------------------
// One streaming trial: a sim at a rate, a path (direct or a proxy), clients.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path_ {
    Direct,
    Proxy(usize),
}

struct Trial {
    world: World,
    path: Path_,
    clients_per_shard: usize,
    compression: String,
    intents: u64,
    warm_s: f64,
    window_s: f64,
}

#[derive(Clone, Debug, Default)]
struct TrialOut {
    /// Dispatches delivered in the window, summed over clients.
    deliveries: u64,
    /// Delivered per second per client (mean).
    per_client_rate: f64,
    /// The sim's dispatches per second per shard in the window (its `n`).
    generated_rate: f64,
    bytes: u64,
    latency: Histogram,
    proxy_ticks: u64,
    sim_ticks: u64,
    client_ticks: u64,
    errors: Vec<String>,
    /// Why it does not count as sustained, if it does not.
    failure: Option<String>,
    sizes: BTreeMap<String, (u64, u64)>,
}

impl TrialOut {
    fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

fn query(compression: &str) -> String {
    match compression {
        "none" => "v=10&encoding=json".to_owned(),
        c => format!("v=10&encoding=json&compress={c}"),
    }
}

fn run_trial(args: &Args, bins: &Bins, trial: &Trial) -> Result<TrialOut, String> {
    let sim = start_sim(bins, trial.world)?;
    let proxy = match trial.path {
        Path_::Direct => None,
        Path_::Proxy(i) => Some(start_proxy(
            bins,
            &args.proxies[i],
            &sim,
            trial.world.shards,
            trial.intents,
            Preset::Minimal,
        )?),
    };
    let addr = proxy.as_ref().map_or(sim.addr, |p| p.addr);
    let procs: Vec<(u32, usize)> = (0..trial.world.shards)
        .flat_map(|shard| (0..trial.clients_per_shard).map(move |_| (shard, 1)))
        .collect();
    let setup_s = 1.0 + 0.03 * procs.len() as f64;
    let window_start = now_us() + ((setup_s + trial.warm_s) * 1e6) as u64;
    let window_end = window_start + (trial.window_s * 1e6) as u64;
    let spec = ClientSpec {
        addr,
        token: sim.token.clone(),
        query: query(&trial.compression),
        shards: trial.world.shards,
        intents: trial.intents,
        start_at_us: 0,
        window: Some((window_start, window_end)),
        deadline_us: window_end + 8_000_000,
    };
    let clients = spawn_clients(bins, &spec, &procs)?;
    let proxy_pid = proxy.as_ref().map(|p| p.proc.pid);
    sleep_until(window_start);
    let proxy_before = proxy_pid.map(tree_stat).unwrap_or_default();
    let sim_before = tree_stat(sim.proc.pid);
    sleep_until(window_end);
    let proxy_after = proxy_pid.map(tree_stat).unwrap_or_default();
    let sim_after = tree_stat(sim.proc.pid);
    let outs = collect(clients, window_end + 10_000_000);
    drop(proxy);
    drop(sim);

    let mut out = TrialOut {
        proxy_ticks: proxy_after.cpu_ticks.saturating_sub(proxy_before.cpu_ticks),
        sim_ticks: sim_after.cpu_ticks.saturating_sub(sim_before.cpu_ticks),
        ..TrialOut::default()
    };
    let mut by_shard: BTreeMap<u32, Vec<&ConnOut>> = BTreeMap::new();
    for client in &outs {
        out.latency.merge(&client.latency);
        out.client_ticks += client.cpu_ticks;
        for conn in &client.connections {
            by_shard.entry(conn.shard).or_default().push(conn);
            out.deliveries += conn.window_events;
            out.bytes += conn.window_bytes;
            if let Some(e) = &conn.error {
                out.errors.push(e.clone());
            }
            for (t, n, b) in &conn.sizes {
                let e = out.sizes.entry(t.clone()).or_default();
                e.0 += n;
                e.1 += b;
            }
        }
    }
    let conns: usize = by_shard.values().map(Vec::len).sum();
    out.per_client_rate = out.deliveries as f64 / conns.max(1) as f64 / trial.window_s;
    let generated: Vec<f64> = by_shard
        .values()
        .map(|conns| {
            let first = conns.iter().map(|c| c.window_first_n).min().unwrap_or(0);
            let last = conns.iter().map(|c| c.window_last_n).max().unwrap_or(0);
            (last.saturating_sub(first) + 1) as f64 / trial.window_s
        })
        .collect();
    out.generated_rate = generated.iter().sum::<f64>() / generated.len().max(1) as f64;
    let wanted = f64::from(trial.world.rate);
    out.failure = if let Some(e) = out.errors.first() {
        Some(format!("a client failed: {e}"))
    } else if let Some(c) = by_shard.values().flatten().find(|c| !c.completed) {
        Some(format!("a client of shard {} did not finish", c.shard))
    } else if by_shard
        .values()
        .flatten()
        .any(|c| c.s_gaps > 0 || c.n_back > 0)
    {
        Some("a gap or reordering in a client's stream".to_owned())
    } else if by_shard.values().any(|conns| {
        conns
            .iter()
            .any(|c| c.window_events != conns[0].window_events)
    }) {
        Some("clients of a shard received different counts (loss)".to_owned())
    } else if out.deliveries == 0 {
        Some("nothing delivered".to_owned())
    } else if out.generated_rate < 0.9 * wanted {
        Some(format!(
            "the sim made {:.0}/s of {wanted:.0}/s asked (flow control or CPU)",
            out.generated_rate
        ))
    } else if out.latency.quantile(0.99) > 100_000 {
        Some(format!(
            "p99 latency {} ms: a queue is growing",
            out.latency.quantile(0.99) / 1000
        ))
    } else {
        None
    };
    Ok(out)
}

fn sleep_until(t_us: u64) {
    let now = now_us();
    if t_us > now {
        std::thread::sleep(Duration::from_micros(t_us - now));
    }
}

// ---------------------------------------------------------------------------
// Formatting and statistics.

fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        f64::midpoint(v[mid - 1], v[mid])
    }
}

fn us(v: f64) -> String {
    if !v.is_finite() {
        "–".to_owned()
    } else if v.abs() >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else if v.abs() >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

fn count(v: f64) -> String {
    if !v.is_finite() {
        return "–".to_owned();
    }
    let n = v.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn bytes(v: f64) -> String {
    if !v.is_finite() {
        "–".to_owned()
    } else if v.abs() >= 10.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", v / 1024.0 / 1024.0)
    } else if v.abs() >= 10.0 * 1024.0 {
        format!("{:.0} KiB", v / 1024.0)
    } else {
        format!("{v:.0} B")
    }
}

/// Proxy CPU seconds per million deliveries.
fn cpu_per_million(ticks: u64, deliveries: u64, hz: u64) -> f64 {
    if deliveries == 0 {
        return f64::NAN;
    }
    ticks as f64 / hz as f64 / deliveries as f64 * 1e6
}

// ---------------------------------------------------------------------------
// 1 and 3: throughput, with the proxy's CPU per delivery.

struct TpResult {
    compression: String,
    clients: usize,
    path: Path_,
    /// Per run: the best passing trial.
    runs: Vec<Option<TrialOut>>,
}

fn throughput(args: &Args, bins: &Bins, hz: u64, report: &mut String) -> Result<(), String> {
    let mut results: Vec<TpResult> = Vec::new();
    let mut paths: Vec<(Path_, usize)> = Vec::new();
    for &clients in &args.tp_clients {
        for i in 0..args.proxies.len() {
            paths.push((Path_::Proxy(i), clients));
        }
    }
    if args.tp_direct {
        paths.insert(0, (Path_::Direct, 1));
    }
    for compression in &args.tp_compression {
        for &(path, clients) in &paths {
            results.push(TpResult {
                compression: compression.clone(),
                clients,
                path,
                runs: vec![],
            });
        }
    }
    let started = now_us();
    for run in 0..args.runs {
        let mut hint: BTreeMap<String, (f64, usize)> = BTreeMap::new();
        for result in &mut results {
            let previous = result
                .runs
                .iter()
                .flatten()
                .map(|t| t.generated_rate)
                .fold(f64::NAN, f64::max);
            let path_name = path_name(args, result.path);
            let mut trial = |rate: f64| -> Result<TrialOut, String> {
                let t = Trial {
                    // Enough guilds that the stream's growth (members,
                    // threads, roles added) spreads thin: events stay ~1 KB
                    // even after a million of them.
                    world: World {
                        shards: 1,
                        guilds: 200,
                        members: 10,
                        rate: rate.round().max(1.0) as u32,
                    },
                    path: result.path,
                    clients_per_shard: result.clients,
                    compression: result.compression.clone(),
                    intents: args.intents,
                    warm_s: 0.5,
                    window_s: args.tp_window,
                };
                let out = run_trial(args, bins, &t)?;
                eprintln!(
                    "  throughput run {} {} {} x{}: asked {:.0}/s, made {:.0}/s, {:.0}/s per client, p99 {}, proxy {} ticks: {}",
                    run + 1,
                    path_name,
                    result.compression,
                    result.clients,
                    rate,
                    out.generated_rate,
                    out.per_client_rate,
                    us(out.latency.quantile(0.99) as f64),
                    out.proxy_ticks,
                    out.failure.as_deref().unwrap_or("sustained"),
                );
                Ok(out)
            };
            let best = if args.quick {
                // One trial at a modest rate: does it run, without loss?
                let out = trial(4000.0)?;
                if let Some(failure) = &out.failure {
                    return Err(format!(
                        "{} {} with {} clients: {failure}",
                        path_name, result.compression, result.clients
                    ));
                }
                Some(out)
            } else {
                let start = if previous.is_finite() {
                    previous
                } else {
                    // Start from what the configuration before sustained
                    // (fewer clients, or the direct path), scaled by a
                    // guess; the search corrects it.
                    hint.get(&result.compression)
                        .map(|&(rate, clients)| {
                            rate * 0.7 * (clients as f64 / result.clients as f64).sqrt()
                        })
                        .or_else(|| hint.values().next().map(|&(rate, _)| rate * 0.6))
                        .unwrap_or(150_000.0)
                };
                let factor = if previous.is_finite() { 1.2 } else { 1.5 };
                search(start, factor, &mut trial)?
            };
            if let Some(best) = &best {
                hint.insert(
                    result.compression.clone(),
                    (best.generated_rate, result.clients),
                );
            }
            result.runs.push(best);
        }
        eprintln!(
            "throughput: run {} of {} done after {:.0} s",
            run + 1,
            args.runs,
            (now_us() - started) as f64 / 1e6
        );
    }

    let _ = writeln!(
        report,
        "\n### Throughput: the highest sustained rate, 1 shard\n\n\
         Per run, the highest rate of the sim (searched in steps of 1.5× up and down, 1.2× \
         from an earlier run's result, then bisected to within 15 %) at which every client received every event with no gap, no client was closed, \
         the sim made at least 90 % of the asked rate and p99 latency stayed under 100 ms. \
         Median over {} run(s). Events: the sim's stream as seen with intents {} \
         (mean size below). The sim, the proxy and every client share this machine's cores.\n",
        args.runs, args.intents
    );
    let mut rows = Vec::new();
    for r in &results {
        let ok: Vec<&TrialOut> = r.runs.iter().flatten().collect();
        let per_client = median(&ok.iter().map(|t| t.per_client_rate).collect::<Vec<_>>());
        let deliveries = median(
            &ok.iter()
                .map(|t| t.per_client_rate * r.clients as f64)
                .collect::<Vec<_>>(),
        );
        let cpu = median(
            &ok.iter()
                .map(|t| cpu_per_million(t.proxy_ticks, t.deliveries, hz))
                .collect::<Vec<_>>(),
        );
        let per_core = 1e6 / cpu;
        let size = median(
            &ok.iter()
                .map(|t| t.bytes as f64 / t.deliveries.max(1) as f64)
                .collect::<Vec<_>>(),
        );
        let p99 = median(
            &ok.iter()
                .map(|t| t.latency.quantile(0.99) as f64)
                .collect::<Vec<_>>(),
        );
        let cores = |f: &dyn Fn(&TrialOut) -> u64| {
            median(
                &ok.iter()
                    .map(|t| f(t) as f64 / hz as f64 / args.tp_window)
                    .collect::<Vec<_>>(),
            )
        };
        let split = format!(
            "{:.2} / {:.2} / {:.2}",
            cores(&|t| t.sim_ticks),
            cores(&|t| t.proxy_ticks),
            cores(&|t| t.client_ticks)
        );
        let is_proxy = matches!(r.path, Path_::Proxy(_));
        rows.push(vec![
            r.compression.clone(),
            path_name(args, r.path),
            r.clients.to_string(),
            count(per_client),
            count(deliveries),
            if is_proxy {
                format!("{cpu:.2}")
            } else {
                "–".to_owned()
            },
            if is_proxy {
                count(per_core)
            } else {
                "–".to_owned()
            },
            us(p99),
            bytes(size),
            split,
            format!("{}/{}", ok.len(), r.runs.len()),
        ]);
    }
    report.push_str(&table(
        &[
            "compression",
            "path",
            "clients",
            "events/s per client",
            "client-deliveries/s",
            "proxy CPU s per M deliveries",
            "deliveries per proxy CPU-second",
            "p99 at that rate",
            "mean event",
            "cores: sim / proxy / clients",
            "runs sustained",
        ],
        3,
        &rows,
    ));
    Ok(())
}

/// Steps of `factor` up until a trial fails (down until one passes), then
/// bisecting (geometric)
/// until the bounds are within 15 %; the best passing trial.
fn search(
    start: f64,
    factor: f64,
    trial: &mut dyn FnMut(f64) -> Result<TrialOut, String>,
) -> Result<Option<TrialOut>, String> {
    let mut best: Option<(f64, TrialOut)> = None;
    let mut failed: Option<f64> = None;
    let mut rate = start.clamp(50.0, 700_000.0);
    for _ in 0..8 {
        let out = trial(rate)?;
        if out.passed() {
            best = Some((rate, out));
        } else {
            failed = Some(failed.map_or(rate, |f: f64| f.min(rate)));
        }
        let next = match (&best, failed) {
            (Some((lo, _)), Some(hi)) => {
                if hi / lo <= 1.15 {
                    break;
                }
                (lo * hi).sqrt()
            }
            (Some((lo, _)), None) => lo * factor,
            (None, Some(hi)) => hi / factor,
            (None, None) => rate,
        };
        if !(50.0..=700_000.0).contains(&next) {
            break;
        }
        rate = next;
    }
    Ok(best.map(|(_, out)| out))
}

fn path_name(args: &Args, path: Path_) -> String {
    match path {
        Path_::Direct => "direct".to_owned(),
        Path_::Proxy(i) => args.proxies[i].name.clone(),
    }
}

// ---------------------------------------------------------------------------
// 2: added latency at a fixed rate, direct and through each proxy.

fn latency(args: &Args, bins: &Bins, hz: u64, report: &mut String) -> Result<(), String> {
    let shards = args.lat_clients;
    let per_shard = args.lat_rate / f64::from(shards);
    let sim_rate = (per_shard / SHARE_1KB).ceil() as u32;
    let mut paths = vec![Path_::Direct];
    paths.extend((0..args.proxies.len()).map(Path_::Proxy));
    let mut outs: Vec<Vec<TrialOut>> = vec![vec![]; paths.len()];
    for run in 0..args.runs {
        // Alternate the order from run to run, against drift.
        let order: Vec<usize> = if run % 2 == 0 {
            (0..paths.len()).collect()
        } else {
            (0..paths.len()).rev().collect()
        };
        for i in order {
            let t = Trial {
                world: World {
                    shards,
                    guilds: shards * 4,
                    members: 20,
                    rate: sim_rate,
                },
                path: paths[i],
                clients_per_shard: 1,
                compression: args.lat_compression.clone(),
                intents: args.intents,
                warm_s: 1.0,
                window_s: args.lat_window,
            };
            let out = run_trial(args, bins, &t)?;
            eprintln!(
                "  latency run {} {}: {:.0} events/s delivered, p50 {} p99 {} p99.9 {}{}",
                run + 1,
                path_name(args, paths[i]),
                out.deliveries as f64 / args.lat_window,
                us(out.latency.quantile(0.5) as f64),
                us(out.latency.quantile(0.99) as f64),
                us(out.latency.quantile(0.999) as f64),
                out.failure
                    .as_deref()
                    .map(|f| format!(" ({f})"))
                    .unwrap_or_default(),
            );
            if args.quick
                && let Some(failure) = &out.failure
            {
                return Err(format!("{}: {failure}", path_name(args, paths[i])));
            }
            outs[i].push(out);
        }
    }
    let q = |t: &TrialOut, q: f64| t.latency.quantile(q) as f64;
    let med =
        |v: &[TrialOut], f: &dyn Fn(&TrialOut) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    let direct = &outs[0];
    let _ = writeln!(
        report,
        "\n### Added latency: {} events/s over {} clients (one per shard), {}\n\n\
         From the sim's `sent_at_us` to the client's receipt (both Unix wall time, same \
         machine), every event of a {:.0} s window after {:.0} s of warm-up; each path with \
         its own sim in turn, the order alternating between runs; medians over {} run(s) of \
         each run's percentiles. \"Added\" is the path's figure minus the direct path's, run by run.\n",
        count(args.lat_rate),
        shards,
        args.lat_compression,
        args.lat_window,
        1.0,
        args.runs,
    );
    let mut rows = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let v = &outs[i];
        let added = |quant: f64| {
            median(
                &v.iter()
                    .zip(direct)
                    .map(|(p, d)| q(p, quant) - q(d, quant))
                    .collect::<Vec<_>>(),
            )
        };
        let is_proxy = matches!(path, Path_::Proxy(_));
        let cpu = med(v, &|t| cpu_per_million(t.proxy_ticks, t.deliveries, hz));
        let ok = v.iter().filter(|t| t.passed()).count();
        rows.push(vec![
            path_name(args, *path),
            count(med(v, &|t| t.deliveries as f64 / args.lat_window)),
            us(med(v, &|t| q(t, 0.5))),
            us(med(v, &|t| q(t, 0.99))),
            us(med(v, &|t| q(t, 0.999))),
            us(med(v, &|t| t.latency.max() as f64)),
            if is_proxy {
                us(added(0.5))
            } else {
                "–".to_owned()
            },
            if is_proxy {
                us(added(0.99))
            } else {
                "–".to_owned()
            },
            if is_proxy {
                us(added(0.999))
            } else {
                "–".to_owned()
            },
            if is_proxy {
                format!(
                    "{:.2}×",
                    med(v, &|t| q(t, 0.99)) / med(direct, &|t| q(t, 0.99))
                )
            } else {
                "1.00×".to_owned()
            },
            if is_proxy {
                format!("{cpu:.2}")
            } else {
                "–".to_owned()
            },
            format!("{ok}/{}", v.len()),
        ]);
    }
    report.push_str(&table(
        &[
            "path",
            "events/s delivered",
            "p50",
            "p99",
            "p99.9",
            "max",
            "added p50",
            "added p99",
            "added p99.9",
            "p99 / direct",
            "proxy CPU s per M deliveries",
            "runs clean",
        ],
        1,
        &rows,
    ));
    // What the events were.
    let mut sizes: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for t in outs.iter().flatten() {
        for (k, (n, b)) in &t.sizes {
            let e = sizes.entry(k.clone()).or_default();
            e.0 += n;
            e.1 += b;
        }
    }
    let total: u64 = sizes.values().map(|v| v.0).sum();
    let total_bytes: u64 = sizes.values().map(|v| v.1).sum();
    let mut top: Vec<_> = sizes.into_iter().collect();
    top.sort_by_key(|entry| std::cmp::Reverse(entry.1.0));
    let _ = writeln!(
        report,
        "\nEvents received: mean {} per payload; {}.",
        bytes(total_bytes as f64 / total.max(1) as f64),
        top.iter()
            .take(3)
            .map(|(t, (n, b))| format!(
                "{t} {:.0} % ({})",
                *n as f64 * 100.0 / total.max(1) as f64,
                bytes(*b as f64 / (*n).max(1) as f64)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 4: memory per shard, guild and member, for each cache preset.

fn memory(args: &Args, bins: &Bins, report: &mut String) -> Result<(), String> {
    let (s, g, m) = (
        args.mem_shards,
        args.mem_guilds.max(args.mem_shards),
        args.mem_members,
    );
    // The worlds, each a step over the one before: one shard and one guild;
    // S shards with a guild each; S shards with G guilds; and with M members.
    let worlds = [
        World {
            shards: 1,
            guilds: 1,
            members: 0,
            rate: 0,
        },
        World {
            shards: s,
            guilds: s,
            members: 0,
            rate: 0,
        },
        World {
            shards: s,
            guilds: g,
            members: 0,
            rate: 0,
        },
        World {
            shards: s,
            guilds: g,
            members: m,
            rate: 0,
        },
    ];
    let presets = [Preset::Minimal, Preset::Members, Preset::Full];
    // [proxy][preset][world] -> RSS in KiB per run.
    let mut rss =
        vec![vec![vec![Vec::<f64>::new(); worlds.len()]; presets.len()]; args.proxies.len()];
    for run in 0..args.runs {
        for (pi, _) in args.proxies.iter().enumerate() {
            for (ci, preset) in presets.iter().enumerate() {
                for (wi, world) in worlds.iter().enumerate() {
                    let sim = start_sim(bins, *world)?;
                    let proxy = start_proxy(
                        bins,
                        &args.proxies[pi],
                        &sim,
                        world.shards,
                        discord_sim::KNOWN_INTENTS,
                        *preset,
                    )?;
                    // Let start-up's transient buffers go.
                    std::thread::sleep(Duration::from_millis(500));
                    let stat = tree_stat(proxy.proc.pid);
                    eprintln!(
                        "  memory run {} {} {}: {} shards x {} guilds x {} members: RSS {} KiB (peak {} KiB)",
                        run + 1,
                        args.proxies[pi].name,
                        preset.name(),
                        world.shards,
                        world.guilds,
                        world.members,
                        stat.rss_kb,
                        stat.hwm_kb
                    );
                    rss[pi][ci][wi].push(stat.rss_kb as f64 * 1024.0);
                    drop(proxy);
                    drop(sim);
                }
            }
        }
    }
    let _ = writeln!(
        report,
        "\n### Memory: proxy RSS for {s} shards × {g} guilds × {m} members\n\n\
         `VmRSS` of the proxy's processes once `/ready` answers 200 (and 0.5 s more), the \
         stream stopped. Steps: 1 shard with 1 guild (the empty baseline); {s} shards with \
         one guild each (per shard = the difference / {}); {g} guilds (per guild = the \
         difference / {}); {m} members in each guild (per member = the difference / {}). \
         Each guild also has the sim's 8 channels, 5 roles, 2 threads and 7 presences \
         (presences count in the per-member figure when cached). Every intent. Medians \
         over {} run(s). minimal = the defaults (channels, roles, threads, own member); \
         members = + `cache.members`; full = every cache flag.\n",
        (s - 1).max(1),
        g - s,
        u64::from(g) * u64::from(m),
        args.runs
    );
    let mut rows = Vec::new();
    for (pi, proxy) in args.proxies.iter().enumerate() {
        for (ci, preset) in presets.iter().enumerate() {
            let r: Vec<f64> = rss[pi][ci].iter().map(|v| median(v)).collect();
            let per_shard = (r[1] - r[0]) / f64::from((s - 1).max(1));
            let per_guild = (r[2] - r[1]) / f64::from((g - s).max(1));
            let per_member = (r[3] - r[2]) / (f64::from(g) * f64::from(m)).max(1.0);
            rows.push(vec![
                proxy.name.clone(),
                preset.name().to_owned(),
                bytes(r[0]),
                bytes(per_shard),
                bytes(per_guild),
                bytes(per_member),
                bytes(r[3]),
                bytes((r[3] - r[0]) / f64::from(s)),
            ]);
        }
    }
    report.push_str(&table(
        &[
            "proxy",
            "cache",
            "empty baseline",
            "per shard",
            "per guild",
            "per member",
            "whole world",
            "world per shard (over baseline)",
        ],
        2,
        &rows,
    ));
    Ok(())
}

// ---------------------------------------------------------------------------
// 5: memory as deployments run: a client per shard with the stream running,
// and what an idle shard costs.

/// A request to the sim's admin routes (`/_sim/...`, on its gateway port):
/// the body of a 200 answer.
fn sim_admin(sim: &SimProc, method: &str, path: &str) -> Result<String, String> {
    let fail = |e: std::io::Error| format!("{method} {path} to the sim: {e}");
    let mut tcp = TcpStream::connect_timeout(&sim.addr, Duration::from_secs(2)).map_err(fail)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(fail)?;
    write!(
        tcp,
        "{method} {path} HTTP/1.0\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
        sim.addr
    )
    .map_err(fail)?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).map_err(fail)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    if head.split_whitespace().nth(1) != Some("200") {
        return Err(format!(
            "{method} {path} to the sim: {}",
            head.lines().next().unwrap_or("no answer")
        ));
    }
    Ok(body.to_owned())
}

/// The sim's world, from `GET /_sim/guilds`: what the proxy's cache
/// follows.
#[derive(Clone, Copy, Debug, Default)]
struct WorldCounts {
    guilds: u64,
    /// The fewest and the most guilds of one shard.
    per_shard: (u64, u64),
    members: u64,
    channels: u64,
    threads: u64,
    roles: u64,
}

fn world_counts(sim: &SimProc, shards: u32) -> Result<WorldCounts, String> {
    let body = sim_admin(sim, "GET", "/_sim/guilds")?;
    let guilds: Value =
        serde_json::from_str(&body).map_err(|e| format!("/_sim/guilds is not JSON: {e}"))?;
    let guilds = guilds.as_array().ok_or("/_sim/guilds is not a list")?;
    let sum = |key: &str| guilds.iter().map(|g| g[key].as_u64().unwrap_or(0)).sum();
    let mut per_shard = vec![0u64; shards as usize];
    for guild in guilds {
        let shard = guild["shard"].as_u64().unwrap_or(0) as usize;
        if let Some(n) = per_shard.get_mut(shard) {
            *n += 1;
        }
    }
    Ok(WorldCounts {
        guilds: guilds.len() as u64,
        per_shard: (
            per_shard.iter().copied().min().unwrap_or(0),
            per_shard.iter().copied().max().unwrap_or(0),
        ),
        members: sum("member_count"),
        channels: sum("channels"),
        threads: sum("threads"),
        roles: sum("roles"),
    })
}

/// One steady-state run of one proxy.
#[derive(Clone, Debug, Default)]
struct SteadyRun {
    /// RSS in KiB once ready, with no client and the stream stopped.
    baseline_kb: u64,
    /// RSS in KiB each second of the stream: `[0]` with the clients in,
    /// just before the stream starts, `[k]` after `k` seconds.
    series_kb: Vec<u64>,
    /// Dispatches delivered, summed over the clients.
    deliveries: u64,
    /// The sim's dispatches per second per shard (from its markers).
    made_rate: f64,
    /// The world before and after the stream.
    world: (WorldCounts, WorldCounts),
    /// Why the run is not clean (a client lost events or was closed).
    failure: Option<String>,
}

fn steady_run(args: &Args, bins: &Bins, spec: &ProxySpec) -> Result<SteadyRun, String> {
    let s = args.steady_shards;
    let secs = u64::from(args.steady_secs);
    let sim = start_sim(
        bins,
        World {
            shards: s,
            guilds: args.steady_guilds * s,
            members: args.steady_members,
            rate: args.steady_rate,
        },
    )?;
    // Stopped until every client is in: the baseline is the cache alone,
    // and every client sees the whole stream.
    sim_admin(&sim, "POST", "/_sim/pause")?;
    let proxy = start_proxy(bins, spec, &sim, s, args.intents, Preset::Minimal)?;
    std::thread::sleep(Duration::from_millis(500));
    let mut run = SteadyRun {
        baseline_kb: tree_stat(proxy.proc.pid).rss_kb,
        ..SteadyRun::default()
    };
    let before = world_counts(&sim, s)?;
    let start = now_us() + 2_000_000 + 100_000 * u64::from(s);
    let end = start + secs * 1_000_000;
    let procs: Vec<(u32, usize)> = (0..s).map(|shard| (shard, 1)).collect();
    let clients = spawn_clients(
        bins,
        &ClientSpec {
            addr: proxy.addr,
            token: sim.token.clone(),
            query: query(&args.steady_compression),
            shards: s,
            intents: args.intents,
            start_at_us: 0,
            window: Some((start, end)),
            deadline_us: end + 15_000_000,
        },
        &procs,
    )?;
    sleep_until(start);
    run.series_kb.push(tree_stat(proxy.proc.pid).rss_kb);
    sim_admin(&sim, "POST", "/_sim/resume")?;
    for k in 1..=secs {
        sleep_until(start + k * 1_000_000);
        let rss = tree_stat(proxy.proc.pid).rss_kb;
        run.series_kb.push(rss);
        if k % 10 == 0 || k == secs {
            eprintln!(
                "    {}: {k} s of stream, RSS {}",
                spec.name,
                bytes(rss as f64 * 1024.0)
            );
        }
    }
    let outs = collect(clients, end + 20_000_000);
    let after = world_counts(&sim, s)?;
    drop(proxy);
    drop(sim);
    run.world = (before, after);
    let conns: Vec<&ConnOut> = outs.iter().flat_map(|o| &o.connections).collect();
    run.deliveries = conns.iter().map(|c| c.window_events).sum();
    run.made_rate = conns
        .iter()
        .map(|c| (c.window_last_n.saturating_sub(c.window_first_n) + 1) as f64 / secs as f64)
        .sum::<f64>()
        / conns.len().max(1) as f64;
    run.failure = if let Some(e) = conns.iter().find_map(|c| c.error.clone()) {
        Some(format!("a client failed: {e}"))
    } else if conns.len() != s as usize {
        Some(format!("{} of {s} clients reported", conns.len()))
    } else if let Some(c) = conns.iter().find(|c| !c.completed) {
        Some(format!("the client of shard {} did not finish", c.shard))
    } else if let Some(c) = conns.iter().find(|c| c.s_gaps > 0 || c.n_back > 0) {
        Some(format!(
            "the client of shard {}: {} gaps in s, {} markers repeated or reordered",
            c.shard, c.s_gaps, c.n_back
        ))
    } else if let Some(c) = conns.iter().find(|c| c.guilds_us > start) {
        Some(format!(
            "the client of shard {} had its guilds only after the stream started",
            c.shard
        ))
    } else if run.deliveries == 0 {
        Some("nothing delivered".to_owned())
    } else {
        None
    };
    Ok(run)
}

/// RSS in KiB of a proxy once ready with `shards` shards and no guild, no
/// client, no stream.
fn idle_rss(args: &Args, bins: &Bins, spec: &ProxySpec, shards: u32) -> Result<u64, String> {
    let world = World {
        shards,
        guilds: 0,
        members: 0,
        rate: 0,
    };
    let sim = start_sim(bins, world)?;
    let proxy = start_proxy(bins, spec, &sim, shards, args.intents, Preset::Minimal)?;
    // Let start-up's transient buffers go.
    std::thread::sleep(Duration::from_millis(500));
    let rss = tree_stat(proxy.proc.pid).rss_kb;
    drop(proxy);
    drop(sim);
    Ok(rss)
}

/// The variables of this program's environment that name a replay bound
/// (they reach the proxy): `GATEWAY_PROXY_REPLAY_MAX_BYTES=…`, or
/// "default".
fn replay_budget() -> String {
    let mut set: Vec<String> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.to_string_lossy().into_owned();
            k.to_ascii_uppercase()
                .contains("REPLAY")
                .then(|| format!("`{k}={}`", v.to_string_lossy()))
        })
        .collect();
    set.sort();
    if set.is_empty() {
        "default".to_owned()
    } else {
        set.join(", ")
    }
}

fn steady(args: &Args, bins: &Bins, report: &mut String) -> Result<(), String> {
    let s = args.steady_shards;
    let n = args.idle_shards;
    let secs = args.steady_secs;
    let mut runs: Vec<Vec<SteadyRun>> = vec![vec![]; args.proxies.len()];
    // [proxy] -> (RSS with 1 shard, with 1 + N), KiB, per run.
    let mut idle: Vec<Vec<(f64, f64)>> = vec![vec![]; args.proxies.len()];
    for run in 0..args.runs {
        for (pi, spec) in args.proxies.iter().enumerate() {
            eprintln!(
                "  steady run {} {}: {s} shards, {} events/s per shard, {secs} s, {}",
                run + 1,
                spec.name,
                args.steady_rate,
                args.steady_compression
            );
            let out = steady_run(args, bins, spec)?;
            eprintln!(
                "  steady run {} {}: baseline {}, clients in {}, at the end {}, {} delivered{}",
                run + 1,
                spec.name,
                bytes(out.baseline_kb as f64 * 1024.0),
                bytes(out.series_kb[0] as f64 * 1024.0),
                bytes(out.series_kb.last().copied().unwrap_or(0) as f64 * 1024.0),
                count(out.deliveries as f64),
                out.failure
                    .as_deref()
                    .map(|f| format!(" ({f})"))
                    .unwrap_or_default()
            );
            if args.quick
                && let Some(failure) = &out.failure
            {
                return Err(format!("{}: {failure}", spec.name));
            }
            runs[pi].push(out);
            let one = idle_rss(args, bins, spec, 1)?;
            let many = idle_rss(args, bins, spec, 1 + n)?;
            eprintln!(
                "  idle run {} {}: 1 shard {} KiB, {} shards {} KiB",
                run + 1,
                spec.name,
                one,
                1 + n,
                many
            );
            idle[pi].push((one as f64, many as f64));
        }
    }

    // Steady state.
    let marks: Vec<u32> = {
        let mut marks: Vec<u32> = [10, 30, secs].into_iter().filter(|&k| k <= secs).collect();
        marks.dedup();
        marks
    };
    let world = runs
        .iter()
        .flatten()
        .next()
        .map(|r| r.world)
        .unwrap_or_default();
    let (w0, w1) = world;
    let _ = writeln!(
        report,
        "\n### Steady state under load: {s} shards, a {} client each, {} events/s per shard for {secs} s\n\n\
         `VmRSS` of the proxy's processes: once `/ready` answers 200 (and 0.5 s more) with the \
         sim's stream stopped and no client (the baseline: the cache); with one {} client \
         per shard connected, just before the stream starts; then every second of a {secs} s \
         stream of {} events/s per shard made by the sim, of which the clients' intents ({}) \
         let through about 46 % (delivered below). Growth per shard = (RSS at {secs} s − \
         baseline) / {s}. Every client checks that `s` never skips and the sim's markers \
         never go back; a run is clean if no client lost an event, was closed or fell behind \
         the stream's start. World: {} guilds ({}–{} per shard), {} members, {} channels, {} \
         threads, {} roles at the start; after the stream {} members, {} channels, {} threads, \
         {} roles (the stream adds and removes them; the proxy caches channels, roles and \
         threads). Default cache flags. Medians over {} run(s).\n",
        args.steady_compression,
        count(f64::from(args.steady_rate)),
        args.steady_compression,
        count(f64::from(args.steady_rate)),
        args.intents,
        w0.guilds,
        w0.per_shard.0,
        w0.per_shard.1,
        count(w0.members as f64),
        count(w0.channels as f64),
        count(w0.threads as f64),
        count(w0.roles as f64),
        count(w1.members as f64),
        count(w1.channels as f64),
        count(w1.threads as f64),
        count(w1.roles as f64),
        args.runs,
    );
    let budget = replay_budget();
    let mib = |kb: f64| bytes(kb * 1024.0);
    let mut rows = Vec::new();
    for (pi, proxy) in args.proxies.iter().enumerate() {
        let v = &runs[pi];
        let med = |f: &dyn Fn(&SteadyRun) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
        let at = |k: u32| {
            med(&|r| {
                r.series_kb
                    .get(k as usize)
                    .map_or(f64::NAN, |&kb| kb as f64)
            })
        };
        let mut row = vec![
            proxy.name.clone(),
            mib(med(&|r| r.baseline_kb as f64)),
            mib(at(0)),
        ];
        row.extend(marks.iter().map(|&k| mib(at(k))));
        row.push(mib(med(&|r| {
            r.series_kb.iter().copied().max().unwrap_or(0) as f64
        })));
        row.push(mib(med(&|r| {
            (r.series_kb.get(secs as usize).copied().unwrap_or(0) as f64 - r.baseline_kb as f64)
                / f64::from(s)
        })));
        row.push(count(med(&|r| r.deliveries as f64)));
        row.push(count(med(&|r| {
            r.deliveries as f64 / f64::from(s) / f64::from(secs)
        })));
        row.push(count(med(&|r| r.made_rate)));
        row.push(budget.clone());
        row.push(format!(
            "{}/{}",
            v.iter().filter(|r| r.failure.is_none()).count(),
            v.len()
        ));
        rows.push(row);
    }
    let mark_names: Vec<String> = marks.iter().map(|k| format!("at {k} s")).collect();
    let mut header = vec![
        "proxy",
        "baseline (ready, no client)",
        "clients in, no stream",
    ];
    header.extend(mark_names.iter().map(String::as_str));
    header.extend([
        "max",
        "growth per shard",
        "events delivered",
        "delivered/s per client",
        "sim made/s per shard",
        "replay budget",
        "runs clean",
    ]);
    report.push_str(&table(&header, 1, &rows));
    // The series, to see whether RSS levels off.
    let step = (secs / 6).max(1) as usize;
    for (pi, proxy) in args.proxies.iter().enumerate() {
        for (ri, r) in runs[pi].iter().enumerate() {
            let _ = writeln!(
                report,
                "\n{} run {}, RSS every {step} s of the stream: {}.{}",
                proxy.name,
                ri + 1,
                r.series_kb
                    .iter()
                    .step_by(step)
                    .map(|&kb| format!("{:.1}", kb as f64 / 1024.0))
                    .collect::<Vec<_>>()
                    .join(", ")
                    + " MiB",
                r.failure
                    .as_deref()
                    .map(|f| format!(" Not clean: {f}."))
                    .unwrap_or_default()
            );
        }
    }

    // Idle shards.
    let _ = writeln!(
        report,
        "\n### Idle cost per shard: 1 shard against {} shards, no guild\n\n\
         `VmRSS` of the proxy's processes once `/ready` answers 200 (and 0.5 s more), the sim \
         with no guild at all (every shard's READY lists none), no client, no stream; per \
         shard = the difference / {n}. Intents {}, default cache flags, replay budget {} \
         (a shard's ring may take memory before any event). Medians over {} run(s).\n",
        1 + n,
        args.intents,
        replay_budget(),
        args.runs
    );
    let rows: Vec<Vec<String>> = args
        .proxies
        .iter()
        .enumerate()
        .map(|(pi, p)| {
            let one = median(&idle[pi].iter().map(|t| t.0).collect::<Vec<_>>());
            let many = median(&idle[pi].iter().map(|t| t.1).collect::<Vec<_>>());
            let per = median(
                &idle[pi]
                    .iter()
                    .map(|t| (t.1 - t.0) / f64::from(n))
                    .collect::<Vec<_>>(),
            );
            vec![p.name.clone(), mib(one), mib(many), format!("{per:.0} KiB")]
        })
        .collect();
    report.push_str(&table(
        &[
            "proxy",
            "1 shard",
            &format!("{} shards", 1 + n),
            "per shard",
        ],
        1,
        &rows,
    ));
    Ok(())
}

// ---------------------------------------------------------------------------
// 6: reconnect storm.

fn storm(args: &Args, bins: &Bins, report: &mut String) -> Result<(), String> {
    let n = args.storm_clients;
    let procs = args.storm_procs.min(n);
    let mut times: Vec<Vec<(f64, f64, f64)>> = vec![vec![]; args.proxies.len()];
    for run in 0..args.runs {
        for (pi, spec) in args.proxies.iter().enumerate() {
            let world = World {
                shards: 1,
                guilds: args.storm_guilds,
                members: args.storm_members,
                rate: 0,
            };
            let sim = start_sim(bins, world)?;
            let proxy = start_proxy(bins, spec, &sim, 1, args.intents, Preset::Minimal)?;
            let start = now_us() + 1_000_000;
            let split: Vec<(u32, usize)> = (0..procs)
                .map(|i| (0, n / procs + usize::from(i < n % procs)))
                .collect();
            let clients = spawn_clients(
                bins,
                &ClientSpec {
                    addr: proxy.addr,
                    token: sim.token.clone(),
                    query: "v=10&encoding=json".to_owned(),
                    shards: 1,
                    intents: args.intents,
                    start_at_us: start,
                    window: None,
                    deadline_us: start + 60_000_000,
                },
                &split,
            )?;
            let outs = collect(clients, start + 65_000_000);
            drop(proxy);
            drop(sim);
            let conns: Vec<&ConnOut> = outs.iter().flat_map(|o| &o.connections).collect();
            let done: Vec<f64> = conns
                .iter()
                .filter(|c| c.completed && c.guilds == u64::from(args.storm_guilds))
                .map(|c| c.guilds_us.saturating_sub(start) as f64)
                .collect();
            if done.len() != n {
                let error = conns
                    .iter()
                    .find_map(|c| c.error.clone())
                    .unwrap_or_default();
                return Err(format!(
                    "storm: {} of {n} clients got READY and every guild ({error})",
                    done.len()
                ));
            }
            let all = done.iter().copied().fold(0.0, f64::max);
            let mid = median(&done);
            let connected = median(
                &conns
                    .iter()
                    .map(|c| c.connected_us.saturating_sub(start) as f64)
                    .collect::<Vec<_>>(),
            );
            eprintln!(
                "  storm run {} {}: {n} clients all in after {}, median client {}",
                run + 1,
                spec.name,
                us(all),
                us(mid)
            );
            times[pi].push((all, mid, connected));
        }
    }
    let _ = writeln!(
        report,
        "\n### Reconnect storm: {n} clients at once, 1 shard of {} guilds × {} members\n\n\
         {n} connections in {procs} client processes start at the same instant; each \
         connects, identifies, and receives READY and every `GUILD_CREATE` from the proxy's \
         cache (default cache flags). Median over {} run(s). The direct path cannot be \
         measured: Discord (and the sim) accept one IDENTIFY per shard bucket every 5 s, so \
         {n} identifies would take at least {} s.\n",
        args.storm_guilds,
        args.storm_members,
        args.runs,
        (n.saturating_sub(1)) * 5
    );
    let rows: Vec<Vec<String>> = args
        .proxies
        .iter()
        .enumerate()
        .map(|(pi, p)| {
            vec![
                p.name.clone(),
                n.to_string(),
                us(median(&times[pi].iter().map(|t| t.0).collect::<Vec<_>>())),
                us(median(&times[pi].iter().map(|t| t.1).collect::<Vec<_>>())),
                us(median(&times[pi].iter().map(|t| t.2).collect::<Vec<_>>())),
            ]
        })
        .collect();
    report.push_str(&table(
        &[
            "proxy",
            "clients",
            "all clients ready with every guild",
            "median client",
            "median connect (HELLO)",
        ],
        1,
        &rows,
    ));
    Ok(())
}

// ---------------------------------------------------------------------------

/// Builds the sim and the proxy as `cargo build -p discord-sim -p
/// gateway-proxy` would (on their own, so that the benches' features do
/// not change them), then the client, in this program's profile.
fn build(args: &Args) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let release = args.bin_dir.ends_with("release");
    for packages in [
        &["-p", "discord-sim", "-p", "gateway-proxy"][..],
        &["-p", "benches", "--bin", "e2e_client"][..],
    ] {
        let mut command = Command::new(&cargo);
        command.arg("build").args(packages);
        if release {
            command.arg("--release");
        }
        command.current_dir(env!("CARGO_MANIFEST_DIR"));
        clean_cargo_env(&mut command, &args.bin_dir);
        eprintln!("e2e: cargo build {}", packages.join(" "));
        let status = command
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build failed: {status}"));
        }
    }
    Ok(())
}

/// Takes out what `cargo run` adds to this program's environment (the
/// package's variables, and its target directory in `LD_LIBRARY_PATH`):
/// with them, the nested build would see a changed environment and rebuild
/// the proxy's dependencies, and again at the next plain `cargo build`.
fn clean_cargo_env(command: &mut Command, bin_dir: &Path) {
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || matches!(
                name.as_ref(),
                "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
            )
        {
            command.env_remove(&key);
        }
    }
    if let Some(paths) = std::env::var_os("LD_LIBRARY_PATH") {
        let target = bin_dir.parent().unwrap_or(bin_dir);
        let kept: Vec<PathBuf> = std::env::split_paths(&paths)
            .filter(|p| !p.starts_with(target))
            .collect();
        if kept.is_empty() {
            command.env_remove("LD_LIBRARY_PATH");
        } else if let Ok(joined) = std::env::join_paths(kept) {
            command.env("LD_LIBRARY_PATH", joined);
        }
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    format!("{cores} cores ({cpu})")
}

/// One part of the report: writes its tables, or says why it could not.
type Section<'a> = dyn Fn(&mut String) -> Result<(), String> + 'a;

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(64);
        }
    };
    watch_signals();
    if args.build
        && let Err(e) = build(&args)
    {
        eprintln!("e2e: {e}");
        std::process::exit(1);
    }
    let scratch = std::env::temp_dir().join(format!("e2e-bench-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&scratch) {
        eprintln!("e2e: cannot create {}: {e}", scratch.display());
        std::process::exit(1);
    }
    let _ = SCRATCH.set(scratch.clone());
    let bins = Bins {
        sim: args.bin_dir.join("discord-sim"),
        proxy: args.bin_dir.join("gateway-proxy"),
        client: args.bin_dir.join("e2e_client"),
        scratch: scratch.clone(),
    };
    for bin in [&bins.sim, &bins.proxy, &bins.client] {
        if !bin.exists() {
            eprintln!(
                "e2e: {} is missing (build it, or drop --no-build)",
                bin.display()
            );
            std::process::exit(1);
        }
    }
    let hz = clock_ticks();
    let wants = |what: &str| args.only.is_empty() || args.only.iter().any(|o| o == what);
    let mut report = String::new();
    let _ = writeln!(
        report,
        "## End-to-end: {}\n\nMachine: {}, clock ticks {hz}/s. Proxies: {}.{}",
        if args.quick { "quick run" } else { "full run" },
        machine(),
        args.proxies
            .iter()
            .map(|p| format!("`{}`", p.name))
            .collect::<Vec<_>>()
            .join(", "),
        if args.quick {
            " Quick mode: small sizes, one run, no rate search: the figures only show that \
             every path runs without loss."
        } else {
            ""
        }
    );
    let started = now_us();
    let sections: [(&str, &Section<'_>); 6] = [
        ("latency", &|r| latency(&args, &bins, hz, r)),
        ("cluster", &|r| {
            cluster_section::cluster(&args, &bins, hz, r)
        }),
        ("memory", &|r| memory(&args, &bins, r)),
        ("steady", &|r| steady(&args, &bins, r)),
        ("storm", &|r| storm(&args, &bins, r)),
        ("throughput", &|r| throughput(&args, &bins, hz, r)),
    ];
    let mut failed = false;
    for (name, section) in sections {
        if !wants(name) {
            continue;
        }
        eprintln!("e2e: {name}");
        if let Err(e) = section(&mut report) {
            eprintln!("e2e: {name} failed: {e}");
            let _ = writeln!(report, "\n### {name}: failed\n\n{e}");
            failed = true;
        }
    }
    let _ = writeln!(
        report,
        "\n(whole run: {:.0} s)",
        (now_us() - started) as f64 / 1e6
    );
    println!("{report}");
    if failed {
        eprintln!("e2e: logs kept in {}", scratch.display());
        std::process::exit(1);
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
