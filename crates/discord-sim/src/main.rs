//! `discord-sim`: run the fake Discord until stopped.
//!
//! ```text
//! discord-sim --shards 4 --guilds 100 --events-per-sec 50 [--port 9000] [--seed 1] [--token T]
//! ```

// A command-line program: it talks to its terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use discord_sim::{KeyOrder, Sim, SimConfig};

const USAGE: &str = "usage: discord-sim [--port N] [--shards N] [--guilds N] [--members N] \
[--events-per-sec N] [--seed N] [--token T] [--max-concurrency N] [--unavailable N] \
[--key-order discord|mixed]";

fn parse(args: impl Iterator<Item = String>) -> Result<SimConfig, String> {
    let mut config = SimConfig::default();
    config.guilds = 100;
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_owned());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = || -> Result<u32, String> {
            value
                .parse()
                .map_err(|_| format!("{flag}: expected a whole number, got {value:?}"))
        };
        match flag.as_str() {
            "--port" => config.bind.set_port(
                u16::try_from(number()?).map_err(|_| format!("--port: {value} is not a port"))?,
            ),
            "--shards" => config.shards = number()?.max(1),
            "--guilds" => config.guilds = number()?,
            "--members" => config.members_per_guild = number()?,
            "--events-per-sec" => config.events_per_sec = number()?,
            "--seed" => config.seed = u64::from(number()?),
            "--max-concurrency" => config.max_concurrency = number()?.max(1),
            "--unavailable" => config.unavailable_guilds = number()?,
            "--token" => config.token.clone_from(&value),
            "--key-order" => {
                config.key_order = match value.as_str() {
                    "discord" => KeyOrder::Discord,
                    "mixed" => KeyOrder::Mixed,
                    _ => {
                        return Err(format!(
                            "--key-order: expected discord or mixed, got {value:?}"
                        ));
                    }
                };
            }
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    Ok(config)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let config = match parse(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(64);
        }
    };
    let sim = match Sim::start(config).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("discord-sim: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("gateway_url {}", sim.gateway_url());
    println!("api_base    {}", sim.api_base());
    println!("token       {}", sim.token());
    println!(
        "shards {}, guilds {}, {} events/s per shard; Ctrl-C to stop",
        sim.config().shards,
        sim.world().guilds.len(),
        sim.config().events_per_sec
    );
    let _ = tokio::signal::ctrl_c().await;
    ExitCode::SUCCESS
}
