//! `gateway-proxy`: a Discord gateway proxy. See the README.

use std::process::ExitCode;

use gateway_proxy::{Options, USAGE, start_until};

#[allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the binary talks to its user"
)]
fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        // Listened for from the start to the end: a signal that came
        // between two listeners would be lost.
        let mut stop = Stop::new();
        let running = match start_until(&options, std::env::vars().collect(), stop.wait()).await {
            Ok(Some(running)) => running,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gateway-proxy: {e}");
                return ExitCode::from(u8::try_from(e.code).unwrap_or(1));
            }
        };
        let mut addr = running.addr();
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        println!("gateway-proxy is serving on ws://{addr}");
        if let Some(sim) = running.sim() {
            println!(
                "\nSimulating Discord: {} shards, REST {}.\n\
                 Point a bot's gateway URL at ws://{} and identify with the token `{}`;\n\
                 `curl http://{}/metrics` shows what it does. Ctrl-C stops.",
                sim.config().shards,
                sim.api_base(),
                addr,
                running.token(),
                addr,
            );
        }
        stop.wait().await;
        tracing::info!("shutting down");
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// SIGINT or SIGTERM.
struct Stop {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Stop {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signals = signal(SignalKind::terminate())
                .and_then(|term| Ok((term, signal(SignalKind::interrupt())?)))
                .ok();
            Self { signals }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves at the next SIGINT or SIGTERM (one that came since the
    /// last included).
    async fn wait(&mut self) {
        #[cfg(unix)]
        if let Some((term, interrupt)) = &mut self.signals {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
