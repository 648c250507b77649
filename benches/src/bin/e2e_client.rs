//! A client process of the end-to-end benchmark (`e2e`).
//!
//! ```text
//! e2e_client --addr 127.0.0.1:PORT --token T [--query Q] [--shard I --shards N]
//!            [--intents BITS] [--connections C] [--start-at-us T0]
//!            [--window-start-us A --window-end-us B] [--deadline-us D]
//! ```
//!
//! Each of its `C` connections (on one thread) waits until `T0` (Unix µs),
//! connects, identifies for shard `I` of `N`, waits for READY and one
//! `GUILD_CREATE` (or `GUILD_DELETE`) per guild READY lists, then reads the
//! stream: every dispatch's `s` must follow the last one (no gap), its
//! `_sim` marker's `n` must grow, and for dispatches the sim made within
//! `[A, B)` it counts the payload and records its latency (now minus
//! `sent_at_us`, both Unix wall time). It stops at the first dispatch made
//! at or after `B` (or at `D`), and prints one JSON object on stdout: each
//! connection's timings and counts, the merged latency histogram, and the
//! process's own CPU ticks and RSS. Without a window it stops once the
//! guilds are in (a probe, or the reconnect storm).
//!
//! It heartbeats as HELLO asks, so it can run for as long as needed.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::too_many_lines,
    reason = "a benchmark's child process: it reports on stdout, and its read loop is one piece"
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use benches::e2e::{Histogram, marker, now_us, proc_stat};
use discord_sim::{ClientError, GatewayClient};
use serde_json::{Value, json};

#[derive(Clone, Debug)]
struct Args {
    addr: SocketAddr,
    token: String,
    query: String,
    shard: u32,
    shards: u32,
    intents: u64,
    connections: usize,
    start_at_us: u64,
    window: Option<(u64, u64)>,
    deadline_us: u64,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        token: String::new(),
        query: "v=10&encoding=json".to_owned(),
        shard: 0,
        shards: 1,
        intents: discord_sim::KNOWN_INTENTS,
        connections: 1,
        start_at_us: 0,
        window: None,
        deadline_us: 0,
    };
    let (mut start, mut end) = (None, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {value}"))
        };
        match flag.as_str() {
            "--addr" => args.addr = value.parse().map_err(|_| format!("bad --addr {value}"))?,
            "--token" => args.token.clone_from(&value),
            "--query" => args.query.clone_from(&value),
            "--shard" => args.shard = u32::try_from(num()?).map_err(|e| e.to_string())?,
            "--shards" => args.shards = u32::try_from(num()?).map_err(|e| e.to_string())?,
            "--intents" => args.intents = num()?,
            "--connections" => {
                args.connections = usize::try_from(num()?).map_err(|e| e.to_string())?;
            }
            "--start-at-us" => args.start_at_us = num()?,
            "--window-start-us" => start = Some(num()?),
            "--window-end-us" => end = Some(num()?),
            "--deadline-us" => args.deadline_us = num()?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    if let (Some(start), Some(end)) = (start, end) {
        args.window = Some((start, end));
    }
    if args.deadline_us == 0 {
        args.deadline_us = args
            .window
            .map_or(now_us() + 120_000_000, |(_, end)| end + 10_000_000);
    }
    Ok(args)
}

/// What one connection saw.
#[derive(Debug, Default)]
struct Conn {
    connected_us: u64,
    ready_us: u64,
    guilds: u64,
    guilds_us: u64,
    /// Dispatches after the guilds, in all.
    dispatches: u64,
    /// `s` that did not follow the one before.
    s_gaps: u64,
    /// Marker `n` that did not follow the one before (+1).
    n_jumps: u64,
    /// Marker `n` at or below the one before (repeated or reordered).
    n_back: u64,
    /// In the window: dispatches, their bytes, first and last marker `n`.
    window_events: u64,
    window_bytes: u64,
    window_first_n: u64,
    window_last_n: u64,
    /// Dispatches whose `d` carries no marker (in the window's time).
    unmarked: u64,
    /// Payload bytes and counts by event name, in the window.
    sizes: HashMap<String, (u64, u64)>,
    /// Ended with this instead of reaching the window's end.
    error: Option<String>,
    completed: bool,
}

impl Conn {
    fn to_json(&self) -> Value {
        let mut sizes: Vec<(&String, &(u64, u64))> = self.sizes.iter().collect();
        sizes.sort_by_key(|entry| std::cmp::Reverse(entry.1.0));
        json!({
            "connected_us": self.connected_us,
            "ready_us": self.ready_us,
            "guilds": self.guilds,
            "guilds_us": self.guilds_us,
            "dispatches": self.dispatches,
            "s_gaps": self.s_gaps,
            "n_jumps": self.n_jumps,
            "n_back": self.n_back,
            "window_events": self.window_events,
            "window_bytes": self.window_bytes,
            "window_first_n": self.window_first_n,
            "window_last_n": self.window_last_n,
            "unmarked": self.unmarked,
            "sizes": sizes.iter().map(|(t, (n, b))| json!([t, n, b])).collect::<Vec<_>>(),
            "error": self.error,
            "completed": self.completed,
        })
    }
}

fn event_type(payload: &[u8], scan: &seqpatch::Scan) -> String {
    scan.event_type(payload).unwrap_or("").to_owned()
}

async fn run(args: Args, histogram: &mut Histogram) -> Conn {
    let mut conn = Conn::default();
    if let Err(e) = session(&args, histogram, &mut conn).await {
        conn.error = Some(e);
    }
    conn
}

async fn session(args: &Args, histogram: &mut Histogram, conn: &mut Conn) -> Result<(), String> {
    let wait = args.start_at_us.saturating_sub(now_us());
    if wait > 0 {
        tokio::time::sleep(Duration::from_micros(wait)).await;
    }
    let fail = |what: &str, e: ClientError| format!("{what}: {e}");
    let (mut client, hello) = GatewayClient::connect(args.addr, &args.query)
        .await
        .map_err(|e| fail("connect", e))?;
    conn.connected_us = now_us();
    let interval_us = hello["d"]["heartbeat_interval"]
        .as_u64()
        .unwrap_or(41_250)
        .max(1)
        * 1000;
    let mut next_heartbeat = now_us() + interval_us / 2;
    client
        .identify(&args.token, [args.shard, args.shards], args.intents)
        .await
        .map_err(|e| fail("identify", e))?;
    client.set_timeout(Duration::from_millis(500));
    let mut last_s: Option<u64> = None;
    let mut last_n: Option<u64> = None;
    let mut expected_guilds: Option<u64> = None;
    loop {
        let now = now_us();
        if now >= args.deadline_us {
            return Err("deadline reached".to_owned());
        }
        if now >= next_heartbeat {
            let seq = last_s.map_or("null".to_owned(), |s| s.to_string());
            client
                .send(&format!(r#"{{"op":1,"d":{seq}}}"#))
                .await
                .map_err(|e| fail("heartbeat", e))?;
            next_heartbeat = now + interval_us / 2;
        }
        let payload = match client.recv_bytes().await {
            Ok(payload) => payload,
            Err(ClientError::Timeout) => continue,
            Err(e) => return Err(fail("receive", e)),
        };
        let received_us = now_us();
        let Ok(scan) = seqpatch::scan(&payload) else {
            return Err(format!(
                "unreadable payload: {}",
                String::from_utf8_lossy(&payload[..payload.len().min(200)])
            ));
        };
        match scan.op() {
            0 => {}
            7 | 9 => return Err(format!("op {} from the server", scan.op())),
            _ => continue,
        }
        if let Some(s) = scan.seq() {
            if last_s.is_some_and(|last| s != last + 1) {
                conn.s_gaps += 1;
            }
            last_s = Some(s);
        }
        let Some(expected) = expected_guilds else {
            if scan.event_type(&payload) == Some("READY") {
                let ready: Value = serde_json::from_slice(&payload)
                    .map_err(|e| format!("READY is not JSON: {e}"))?;
                let guilds = ready["d"]["guilds"].as_array().map_or(0, Vec::len) as u64;
                conn.ready_us = received_us;
                expected_guilds = Some(guilds);
                if guilds == 0 {
                    conn.guilds_us = received_us;
                    if args.window.is_none() {
                        conn.completed = true;
                        return Ok(());
                    }
                }
            }
            continue;
        };
        if conn.guilds < expected {
            // The start-up guilds; markers in them are stale (kept in a
            // cached guild by an earlier GUILD_UPDATE).
            if matches!(
                scan.event_type(&payload),
                Some("GUILD_CREATE" | "GUILD_DELETE")
            ) {
                conn.guilds += 1;
                if conn.guilds == expected {
                    conn.guilds_us = received_us;
                    if args.window.is_none() {
                        conn.completed = true;
                        return Ok(());
                    }
                }
            }
            continue;
        }
        conn.dispatches += 1;
        let Some(m) = marker(&payload) else {
            conn.unmarked += 1;
            continue;
        };
        if let Some(last) = last_n {
            if m.n <= last {
                conn.n_back += 1;
            } else if m.n != last + 1 {
                conn.n_jumps += 1;
            }
        }
        last_n = Some(m.n);
        let Some((start, end)) = args.window else {
            continue;
        };
        if m.sent_at_us >= end {
            conn.completed = true;
            return Ok(());
        }
        if m.sent_at_us < start {
            continue;
        }
        if conn.window_events == 0 {
            conn.window_first_n = m.n;
        }
        conn.window_last_n = m.n;
        conn.window_events += 1;
        conn.window_bytes += payload.len() as u64;
        histogram.record(received_us.saturating_sub(m.sent_at_us));
        let entry = conn
            .sizes
            .entry(event_type(&payload, &scan))
            .or_insert((0, 0));
        entry.0 += 1;
        entry.1 += payload.len() as u64;
    }
}

fn main() {
    let args = match parse() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("e2e_client: {message}");
            std::process::exit(64);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let results = runtime.block_on(async {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let tasks: Vec<_> = (0..args.connections)
                    .map(|_| {
                        let args = args.clone();
                        tokio::task::spawn_local(async move {
                            let mut histogram = Histogram::new();
                            let conn = run(args, &mut histogram).await;
                            (conn, histogram)
                        })
                    })
                    .collect();
                let mut results = Vec::new();
                for task in tasks {
                    if let Ok(result) = task.await {
                        results.push(result);
                    }
                }
                results
            })
            .await
    });
    let mut histogram = Histogram::new();
    for (_, h) in &results {
        histogram.merge(h);
    }
    let me = proc_stat(std::process::id()).unwrap_or_default();
    let out = json!({
        "shard": args.shard,
        "cpu_ticks": me.cpu_ticks,
        "rss_kb": me.rss_kb,
        "hwm_kb": me.hwm_kb,
        "latency_us": histogram.to_json(),
        "connections": results.iter().map(|(c, _)| c.to_json()).collect::<Vec<_>>(),
    });
    println!("{out}");
}
