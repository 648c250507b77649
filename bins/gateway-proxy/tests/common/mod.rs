//! What the binary's process tests share: the binary as a child process,
//! its log, its address once it serves, and a signal to end it.

// Not every test file uses every helper.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use discord_sim::{KNOWN_INTENTS, Sim};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// A running proxy process: where it serves, and what it logged so far.
pub(crate) struct Process {
    child: Child,
    pub(crate) addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Process {
    /// Starts the binary on `sim` with `env` on top of the tests' own,
    /// and waits until it serves.
    pub(crate) async fn start(sim: &Sim, env: &[(&str, &str)]) -> Self {
        let (process, serving) = Self::spawn(sim, env);
        process.serving(serving).await
    }

    /// Waits until the process serves (30 s at most).
    pub(crate) async fn serving(self, serving: tokio::sync::oneshot::Receiver<SocketAddr>) -> Self {
        self.serving_within(serving, Duration::from_secs(30)).await
    }

    /// Waits until the process serves, `limit` at most.
    pub(crate) async fn serving_within(
        mut self,
        serving: tokio::sync::oneshot::Receiver<SocketAddr>,
        limit: Duration,
    ) -> Self {
        self.addr = tokio::time::timeout(limit, serving)
            .await
            .unwrap_or_else(|_| panic!("not serving after {limit:?}:\n{}", self.log()))
            .unwrap_or_else(|_| panic!("ended before serving:\n{}", self.log()));
        self
    }

    /// Starts the binary on `sim` with `env` on top of the tests' own; the
    /// receiver gets its address once it serves.
    pub(crate) fn spawn(
        sim: &Sim,
        env: &[(&str, &str)],
    ) -> (Self, tokio::sync::oneshot::Receiver<SocketAddr>) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gateway-proxy"));
        command
            .env_clear()
            .env("TOKEN", sim.token())
            .env("GATEWAY_PROXY_API_BASE", sim.api_base())
            .env("GATEWAY_PROXY_INTENTS", KNOWN_INTENTS.to_string())
            .env("GATEWAY_PROXY_PORT", "0")
            .env("GATEWAY_PROXY_BIND", "127.0.0.1")
            .env("GATEWAY_PROXY_LOG_LEVEL", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let kept = log.clone();
        tokio::spawn(async move {
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix("gateway-proxy is serving on ws://")
                    && let Some(tx) = addr_tx.take()
                {
                    let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                }
                let mut log = kept.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = SocketAddr::from(([0, 0, 0, 0], 0));
        (Self { child, addr, log }, addr_rx)
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends `signal` (TERM, KILL) and waits for the process to end.
    pub(crate) async fn signal(mut self, signal: &str) -> (Option<i32>, String) {
        let Some(pid) = self.child.id() else {
            let ended = self.child.try_wait();
            panic!("ended before {signal} ({ended:?}):\n{}", self.log());
        };
        let pid = pid.to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("not stopped 20 s after {signal}:\n{}", self.log()))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        (status.code(), self.log())
    }
}

/// `GET path` of the proxy's HTTP side over a plain socket: the status
/// and the body.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
