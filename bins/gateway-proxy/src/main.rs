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
        let running =
            match start_until(&options, std::env::vars().collect(), shutdown_signal()).await {
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
        shutdown_signal().await;
        tracing::info!("shutting down");
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
