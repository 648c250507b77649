//! The proxy's port open to anyone: each test runs the real binary as a
//! child process against `discord-sim`, does one bad thing to it over a
//! raw socket, and asserts that the proxy's memory stays bounded (its
//! `VmRSS`) and that a well-behaved client of the same shard lost nothing.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::http_get;
use discord_sim::{GatewayClient, KNOWN_INTENTS, Sim, SimConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// The proxy binary, running against a sim.
struct Proxy {
    child: Child,
    addr: SocketAddr,
    sim: Sim,
    _dir: TempDir,
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Proxy {
    /// Starts a sim and the proxy binary on it, with `extra` keys merged
    /// into the config file (`limits` among them).
    async fn start(sim: impl FnOnce(&mut SimConfig), extra: &str) -> Self {
        Self::start_limited(sim, extra, None).await
    }

    /// [`Proxy::start`], with the process's file descriptors limited to
    /// `fds` (`ulimit -n`) if given.
    async fn start_limited(
        sim: impl FnOnce(&mut SimConfig),
        extra: &str,
        fds: Option<u32>,
    ) -> Self {
        let mut config = SimConfig::default();
        config.events_per_sec = 300;
        config.identify_interval = Duration::from_millis(100);
        sim(&mut config);
        let sim = Sim::start(config).await.unwrap();
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let dir = std::env::temp_dir().join(format!("gateway-proxy-abuse-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.json");
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(",{extra}")
        };
        std::fs::write(
            &file,
            format!(
                r#"{{"token":"{}","intents":{KNOWN_INTENTS},"api_base":"{}","bind":"127.0.0.1",
                   "port":{port},"log_level":"warn","cache":{{"members":true}}{extra}}}"#,
                sim.token(),
                sim.api_base()
            ),
        )
        .unwrap();
        let binary = env!("CARGO_BIN_EXE_gateway-proxy");
        let mut command = match fds {
            // `exec` keeps the pid: the child is the proxy itself.
            Some(fds) => {
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg(format!(r#"ulimit -n {fds} && exec "$0" "$@""#))
                    .arg(binary);
                shell
            }
            None => Command::new(binary),
        };
        // Only the config file: no TOKEN or GATEWAY_PROXY_* of the test's
        // own environment (CI sets some for the harness).
        let mut child = command
            .env_clear()
            .arg("--config")
            .arg(&file)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::time::timeout(Duration::from_mins(1), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("serving on") {
                    return;
                }
            }
            panic!("the proxy exited before serving");
        })
        .await
        .unwrap();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            sim,
            _dir: TempDir(dir),
        }
    }

    /// The proxy's resident memory, in bytes.
    fn rss(&self) -> u64 {
        let pid = self.child.id().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kb * 1024
    }

    /// A client connected with `query` and identified on shard 0, past
    /// READY (which it returns).
    async fn identified(&self, query: &str) -> (GatewayClient, serde_json::Value) {
        let (mut client, _) = GatewayClient::connect(self.addr, query).await.unwrap();
        client.set_timeout(Duration::from_secs(20));
        client
            .identify(self.sim.token(), [0, 1], 513)
            .await
            .unwrap();
        let ready = client.dispatch("READY").await.unwrap();
        (client, ready)
    }

    /// The CPU time the proxy has used.
    fn cpu(&self) -> Duration {
        let pid = self.child.id().unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // After the command name in parentheses: state is field 3, utime
        // and stime are 14 and 15, in clock ticks (100 a second here).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    }

    /// A client identified on shard 0, reading every event into a list of
    /// markers in the background.
    async fn good_client(&self) -> GoodClient {
        let (mut client, ready) = self
            .identified("v=10&encoding=json&compress=zstd-stream")
            .await;
        let guilds = ready["d"]["guilds"].as_array().unwrap().len();
        for _ in 0..guilds {
            client.payload().await.unwrap();
        }
        let markers = Arc::new(Mutex::new(Vec::new()));
        let seen = markers.clone();
        let task = tokio::spawn(async move {
            let mut beat = tokio::time::interval(Duration::from_secs(20));
            loop {
                tokio::select! {
                    _ = beat.tick() => {
                        if client.send(r#"{"op":1,"d":null}"#).await.is_err() {
                            return;
                        }
                    }
                    payload = client.payload() => {
                        let Ok(payload) = payload else { return };
                        if let Some(n) = payload["d"]["_sim"]["n"].as_u64() {
                            seen.lock().unwrap().push(n);
                        }
                    }
                }
            }
        });
        GoodClient { markers, task }
    }

    /// A gauge or counter of `/metrics` (the first series of that name),
    /// as a whole number.
    async fn metric(&self, name: &str) -> u64 {
        let (_, body) = http_get(self.addr, "/metrics").await;
        body.lines()
            .find(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// A client that behaves, reading the shard's events all along.
struct GoodClient {
    markers: Arc<Mutex<Vec<u64>>>,
    task: JoinHandle<()>,
}

impl GoodClient {
    /// Asserts that it is still connected and got every event since it
    /// identified, in order, and more than `at_least` of them.
    async fn lost_nothing(self, at_least: usize) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!self.task.is_finished(), "the good client was disconnected");
        self.task.abort();
        let markers = self.markers.lock().unwrap().clone();
        assert!(
            markers.len() > at_least,
            "the good client got {} events",
            markers.len()
        );
        for pair in markers.windows(2) {
            assert_eq!(pair[1], pair[0] + 1, "an event was lost or repeated");
        }
    }
}

/// A websocket connection past its handshake, spoken to in raw frames.
async fn raw_websocket(addr: SocketAddr, query: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /?{query} HTTP/1.1\r\nhost: {addr}\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

/// One client frame (masked, as clients must).
fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(fin) << 7 | opcode];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | u8::try_from(n).unwrap()),
        n @ 126..=65535 => {
            out.push(0xfe);
            out.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
        }
        n => {
            out.push(0xff);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x12, 0x34, 0x56, 0x78];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

const TEXT: u8 = 1;
const CONTINUATION: u8 = 0;
const PING: u8 = 9;

/// Reads server frames until a close; returns its code, or `None` if the
/// connection ended without one.
async fn close_code(tcp: &mut TcpStream) -> Option<u16> {
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        // Parse the frames buffered so far.
        while buffer.len() >= 2 {
            let len = usize::from(buffer[1] & 0x7f);
            let (header, len) = match len {
                126 if buffer.len() >= 4 => {
                    (4, usize::from(u16::from_be_bytes([buffer[2], buffer[3]])))
                }
                127 if buffer.len() >= 10 => (
                    10,
                    usize::try_from(u64::from_be_bytes(buffer[2..10].try_into().unwrap())).unwrap(),
                ),
                126 | 127 => break,
                n => (2, n),
            };
            if buffer.len() < header + len {
                break;
            }
            if buffer[0] & 0x0f == 8 {
                return (len >= 2)
                    .then(|| u16::from_be_bytes([buffer[header], buffer[header + 1]]));
            }
            buffer.drain(..header + len);
        }
        match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => return None,
            Ok(Ok(n)) => buffer.extend_from_slice(&chunk[..n]),
            Err(elapsed) => panic!("no close within 30 s ({elapsed})"),
        }
    }
}

const MIB: u64 = 1 << 20;

#[tokio::test]
async fn a_fragment_flood_is_refused_with_4002_before_it_is_buffered() {
    let proxy = Proxy::start(|_| {}, "").await;
    let good = proxy.good_client().await;
    let before = proxy.rss();
    let mut tcp = raw_websocket(proxy.addr, "v=10&encoding=json").await;
    let mut sent = tcp
        .write_all(&frame(TEXT, false, &[b'x'; 1000]))
        .await
        .is_ok();
    let chunk = frame(CONTINUATION, false, &[b'x'; 8000]);
    let mut bytes = 0u64;
    // Up to 100 MB, or until the proxy hangs up.
    while sent && bytes < 100 * MIB {
        sent = tcp.write_all(&chunk).await.is_ok();
        bytes += chunk.len() as u64;
    }
    assert!(!sent, "the proxy took {bytes} bytes of one message");
    let grown = proxy.rss().saturating_sub(before);
    assert!(grown < 16 * MIB, "RSS grew by {grown} bytes");
    // It said why, before the rest came (4002 decode error).
    let mut tcp = raw_websocket(proxy.addr, "v=10&encoding=json").await;
    tcp.write_all(&frame(TEXT, false, &[b'{'; 3000]))
        .await
        .unwrap();
    tcp.write_all(&frame(CONTINUATION, true, &[b'x'; 3000]))
        .await
        .unwrap();
    assert_eq!(close_code(&mut tcp).await, Some(4002));
    good.lost_nothing(10).await;
}

#[tokio::test]
async fn a_client_that_pings_and_never_reads_is_dropped() {
    let proxy = Proxy::start(|_| {}, "").await;
    let good = proxy.good_client().await;
    let before = proxy.rss();
    let tcp = raw_websocket(proxy.addr, "v=10&encoding=json").await;
    // Never read: keep the receive window small so pongs back up.
    let (_read, mut write) = tcp.into_split();
    let ping = frame(PING, true, &[b'p'; 125]);
    let burst: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 1000)
        .collect();
    let mut sent = 0u64;
    let ended = tokio::time::timeout(Duration::from_mins(1), async {
        while write.write_all(&burst).await.is_ok() {
            sent += burst.len() as u64;
            if sent > 500 * MIB {
                return false;
            }
        }
        true
    })
    .await;
    assert_eq!(
        ended,
        Ok(true),
        "the proxy kept taking pings ({sent} bytes)"
    );
    let grown = proxy.rss().saturating_sub(before);
    assert!(grown < 32 * MIB, "RSS grew by {grown} bytes");
    good.lost_nothing(10).await;
}

#[tokio::test]
async fn a_thousand_connections_that_never_identify_cost_little_and_time_out() {
    let proxy = Proxy::start(
        |_| {},
        r#""limits":{"identify_timeout_secs":3,"max_connections_per_ip":1200}"#,
    )
    .await;
    let good = proxy.good_client().await;
    let before = proxy.rss();
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(raw_websocket(proxy.addr, "v=10&encoding=json&compress=zstd-stream").await);
    }
    let grown = proxy.rss().saturating_sub(before);
    assert!(
        grown < 48 * MIB,
        "1000 idle connections grew RSS by {grown} bytes ({} per connection)",
        grown / 1000
    );
    // Past the identify timeout every one is closed with 4003.
    for tcp in idle.iter_mut().take(20) {
        assert_eq!(close_code(tcp).await, Some(4003));
    }
    drop(idle);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        proxy.metric("gateway_connections").await,
        1,
        "only the good client"
    );
    good.lost_nothing(10).await;
}

#[tokio::test]
async fn connections_over_the_per_address_limit_are_refused_with_503() {
    let proxy = Proxy::start(|_| {}, r#""limits":{"max_connections_per_ip":5}"#).await;
    let good = proxy.good_client().await;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(raw_websocket(proxy.addr, "v=10&encoding=json").await);
    }
    let (status, body) = http_get(proxy.addr, "/health").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("max_connections_per_ip"), "{body}");
    drop(open);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(http_get(proxy.addr, "/health").await.0, 200);
    good.lost_nothing(5).await;
}

#[tokio::test]
async fn slowloris_headers_are_cut_off() {
    let proxy = Proxy::start(|_| {}, r#""limits":{"http_header_timeout_secs":2}"#).await;
    let good = proxy.good_client().await;
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        slow.push(tcp);
    }
    let started = tokio::time::Instant::now();
    for tcp in &mut slow {
        // One more header line a second: never done.
        let _ = tcp.write_all(b"x-slow: 1\r\n").await;
    }
    for tcp in &mut slow {
        let mut buffer = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buffer)).await;
        // Closed (0 bytes or reset), possibly after a 408.
        let n = read
            .expect("the proxy kept a slow request open")
            .unwrap_or(0);
        assert!(
            n == 0 || buffer.starts_with(b"HTTP/1.1 408"),
            "{:?}",
            &buffer[..n]
        );
    }
    assert!(started.elapsed() < Duration::from_secs(8));
    good.lost_nothing(5).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_during_identify_is_let_go() {
    let proxy = Proxy::start(
        |c| {
            c.guilds = 40;
            c.members_per_guild = 3000;
        },
        r#""limits":{"write_timeout_secs":2}"#,
    )
    .await;
    let good = proxy.good_client().await;
    let before = proxy.rss();
    let mut stalled = Vec::new();
    for _ in 0..5 {
        let mut tcp = raw_websocket(proxy.addr, "v=10&encoding=json").await;
        let identify = format!(
            r#"{{"op":2,"d":{{"token":"{}","intents":513,"properties":{{}},"shard":[0,1]}}}}"#,
            proxy.sim.token()
        );
        tcp.write_all(&frame(TEXT, true, identify.as_bytes()))
            .await
            .unwrap();
        stalled.push(tcp);
    }
    // Past the write timeout (and the writer's grace) every stalled
    // connection is let go; the socket stays open on its side only.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        proxy.metric("gateway_connections").await,
        1,
        "only the good client"
    );
    let grown = proxy.rss().saturating_sub(before);
    assert!(grown < 96 * MIB, "RSS grew by {grown} bytes");
    assert_eq!(
        proxy.metric("gateway_clients").await,
        1,
        "no stalled client was served"
    );
    drop(stalled);
    good.lost_nothing(10).await;
}

#[tokio::test]
async fn malformed_commands_duplicate_keys_and_floods_close_only_their_client() {
    let proxy = Proxy::start(|_| {}, r#""limits":{"shard_commands_per_minute":20}"#).await;
    let good = proxy.good_client().await;
    for bad in [
        r#"{"op":3,"d":"x"}"#,
        r#"{"op":4,"d":{"guild_id":"1","channel_id":"x","self_mute":false,"self_deaf":false}}"#,
        r#"{"op":8,"d":{"guild_id":"1"}}"#,
        r#"{"op":31,"d":{"guild_ids":"1"}}"#,
        r#"{"op":8,"d":{"guild_id":"1","guild_id":"2","query":"","limit":0}}"#,
        r#"{"op":1,"op":8,"d":null}"#,
    ] {
        let (mut client, _) = proxy.identified("v=10&encoding=json").await;
        client.send(bad).await.unwrap();
        assert_eq!(client.close_code().await.unwrap(), Some(4002), "{bad}");
    }
    // A flood: the client alone on its shard with the good one has half
    // the budget (10), and is closed with 4008 past it.
    let (mut flooder, _) = proxy.identified("v=10&encoding=json").await;
    let presence = r#"{"op":3,"d":{"since":null,"activities":[],"status":"online","afk":false}}"#;
    for _ in 0..30 {
        if flooder.send(presence).await.is_err() {
            break;
        }
    }
    assert_eq!(flooder.close_code().await.unwrap(), Some(4008));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let upstream_commands: usize = proxy
        .sim
        .connections()
        .iter()
        .map(|log| {
            log.received
                .iter()
                .filter(|p| p.contains(r#""op":3"#))
                .count()
        })
        .sum();
    assert!(
        (1..=20).contains(&upstream_commands),
        "{upstream_commands} presence updates reached Discord"
    );
    good.lost_nothing(10).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_during_a_replay_is_let_go() {
    let proxy = Proxy::start(
        |c| c.events_per_sec = 2000,
        r#""limits":{"write_timeout_secs":2}"#,
    )
    .await;
    let good = proxy.good_client().await;
    // A session that drops after READY and the guilds.
    let (client, ready) = proxy.identified("v=10&encoding=json").await;
    let session = ready["d"]["session_id"].as_str().unwrap().to_owned();
    // Its `s` after the guilds, from which everything since is replayed.
    let seq = 1 + ready["d"]["guilds"].as_array().unwrap().len();
    drop(client);
    // Seconds of events for its replay: more than socket buffers hold.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = proxy.rss();
    // It resumes, and reads none of the thousands of events replayed.
    let mut stalled = raw_websocket(proxy.addr, "v=10&encoding=json").await;
    let resume = format!(
        r#"{{"op":6,"d":{{"token":"{}","session_id":"{session}","seq":{seq}}}}}"#,
        proxy.sim.token()
    );
    stalled
        .write_all(&frame(TEXT, true, resume.as_bytes()))
        .await
        .unwrap();
    // Let go within the write timeout and the writer's grace, once the
    // socket buffers are full.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while proxy.metric("gateway_connections").await > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled replay is still served"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let grown = proxy.rss().saturating_sub(before);
    assert!(grown < 48 * MIB, "RSS grew by {grown} bytes");
    drop(stalled);
    good.lost_nothing(10).await;
}

#[tokio::test]
async fn out_of_file_descriptors_the_proxy_pauses_instead_of_spinning() {
    let proxy = Proxy::start_limited(
        |_| {},
        r#""limits":{"http_header_timeout_secs":60}"#,
        Some(64),
    )
    .await;
    let good = proxy.good_client().await;
    // More connections than the proxy has descriptors: the rest wait in
    // the listen backlog, and every accept fails with EMFILE.
    let mut open = Vec::new();
    for _ in 0..120 {
        open.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = proxy.cpu();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = proxy.cpu().saturating_sub(before);
    assert!(
        used < Duration::from_millis(600),
        "{used:?} of CPU in 3 s with accept failing"
    );
    // Descriptors come back: it accepts again.
    drop(open);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        let request = b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
        let mut response = Vec::new();
        let answered = tokio::time::timeout(Duration::from_secs(2), async {
            tcp.write_all(request).await.ok()?;
            tcp.read_to_end(&mut response).await.ok()
        })
        .await;
        if matches!(answered, Ok(Some(_))) && response.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "it never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    good.lost_nothing(10).await;
}
