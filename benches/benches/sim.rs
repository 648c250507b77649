//! How fast `discord-sim` generates and sends dispatches, from one core.
//!
//! ```text
//! cargo bench -p benches --bench sim
//! ```
//!
//! The sim runs alone on a single-threaded runtime (one core); a client on
//! another thread reads one shard's uncompressed stream and checks that the
//! `_sim` markers have no gap. The sim is asked for far more than it can do,
//! so the delivered rate is its ceiling. Each run lasts three seconds after
//! READY; the median of five runs is printed.
#![allow(
    missing_docs,
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::cast_precision_loss
)]

use std::time::Duration;

use discord_sim::{GatewayClient, Sim, SimConfig};

/// Reads one shard's stream for `seconds` after READY; returns dispatches
/// per second.
async fn consume(addr: std::net::SocketAddr, token: String, seconds: f64) -> f64 {
    let (mut client, _) = GatewayClient::connect(addr, "v=10&encoding=json")
        .await
        .unwrap();
    // Every intent, so that the session gets every dispatch of the shard.
    client
        .identify(&token, [0, 1], discord_sim::KNOWN_INTENTS)
        .await
        .unwrap();
    client.dispatch("READY").await.unwrap();
    let start = tokio::time::Instant::now();
    // The marker is found by text, not by parsing: the client must not be
    // the bottleneck.
    let finder = memchr::memmem::Finder::new(b"\"_sim\":{\"shard\":0,\"n\":");
    let mut last_n = 0u64;
    let mut count = 0u64;
    loop {
        let payload = client.recv_bytes().await.unwrap();
        let Some(at) = finder.find(&payload) else {
            continue;
        };
        let digits = &payload[at + finder.needle().len()..];
        let len = digits.iter().position(|b| !b.is_ascii_digit()).unwrap();
        let n: u64 = std::str::from_utf8(&digits[..len])
            .unwrap()
            .parse()
            .unwrap();
        assert!(last_n == 0 || n == last_n + 1, "gap: {last_n} then {n}");
        last_n = n;
        count += 1;
        let elapsed = start.elapsed().as_secs_f64();
        if elapsed >= seconds {
            return count as f64 / elapsed;
        }
    }
}

fn main() {
    // `cargo bench -- --test` (CI) checks that the bench runs: one short run.
    let smoke = std::env::args().any(|a| a == "--test");
    let (runs, seconds) = if smoke { (1, 0.5) } else { (5, 3.0) };
    let mut rates = Vec::new();
    for _ in 0..runs {
        let (tx, rx) = std::sync::mpsc::channel();
        let sim_thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut config = SimConfig::default();
                config.guilds = 20;
                config.events_per_sec = 2_000_000;
                config.replay_capacity = 1024;
                let sim = Sim::start(config).await.unwrap();
                tx.send((sim.addr(), sim.token().to_owned())).unwrap();
                tokio::time::sleep(Duration::from_secs_f64(seconds + 2.0)).await;
                assert_eq!(sim.lagged(), 0, "the session kept up with its shard");
            });
        });
        let (addr, token) = rx.recv().unwrap();
        let client = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rates.push(client.block_on(consume(addr, token, seconds)));
        sim_thread.join().unwrap();
    }
    rates.sort_by(f64::total_cmp);
    println!("\n## discord-sim: dispatches generated and delivered per second, one core\n");
    println!("| runs | min | median | max |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {} | {:.0} | {:.0} | {:.0} |",
        rates.len(),
        rates[0],
        rates[rates.len() / 2],
        rates[rates.len() - 1]
    );
}
