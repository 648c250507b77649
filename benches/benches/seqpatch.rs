//! `seqpatch` against its baselines, then a table of the figures.
//!
//! ```text
//! cargo bench -p benches --bench seqpatch
//! ```
//!
//! For each payload (0.4 KB `PRESENCE_UPDATE`, 1 KB `MESSAGE_CREATE`, 30 KB
//! and 700 KB `GUILD_CREATE`), in Discord's key order and with `d` first:
//! - `memcpy`: copying the payload into a reused buffer, the floor;
//! - `scan`: `seqpatch::scan`;
//! - `scan_patch`: `scan` plus the patched payload as three slices, ready
//!   for a vectored write (no copy);
//! - `scan_rewrite`: `scan` plus writing the patched payload into a reused
//!   buffer, with a new `s` of another width (three copies);
//! - `scan_rewrite_same_width`: the same with a new `s` as wide as the old
//!   (one copy, the digits written over in place), which is what the proxy
//!   does per uncompressed client in the usual case (without the scan,
//!   made once per event);
//! - `naive_rewrite`: the rewrite at the first `"s":` in the text;
//! - `sonic_lookup`: finding `s` with sonic-rs's checked object iterator;
//! - `serde_rewrite`: a full `serde_json` parse and re-serialisation.
//!
//! Then every available implementation crossing `d` (`scan_complete` with
//! `d` first), and the naive rewrite on a payload where it is wrong. Last,
//! the medians are printed as a table (from criterion's own estimates).
#![allow(missing_docs, clippy::print_stdout, clippy::cast_precision_loss)]

use std::hint::black_box;
use std::time::Duration;

use benches::report::{fmt_ns, median_ns};
use benches::{NESTED_S, naive_rewrite, payloads, serde_rewrite, sonic_seq};
use criterion::{BenchmarkId, Criterion, Throughput};
use seqpatch::{Isa, Scanner};

const ORDERS: [&str; 2] = ["discord_order", "d_first"];
const METHODS: [&str; 8] = [
    "memcpy",
    "scan",
    "scan_patch",
    "scan_rewrite",
    "scan_rewrite_same_width",
    "naive_rewrite",
    "sonic_lookup",
    "serde_rewrite",
];

fn baselines(c: &mut Criterion) {
    let finder = memchr::memmem::Finder::new(b"\"s\":");
    for payload in payloads() {
        let mut group = c.benchmark_group(format!("seqpatch_{}", payload.name));
        for (order, bytes) in ORDERS
            .into_iter()
            .zip([payload.discord_order.clone(), payload.d_first()])
        {
            group.throughput(Throughput::Bytes(bytes.len() as u64));
            let mut out = Vec::with_capacity(bytes.len() + 32);
            let bytes = bytes.as_slice();
            group.bench_function(BenchmarkId::new("memcpy", order), |b| {
                b.iter(|| {
                    out.clear();
                    out.extend_from_slice(black_box(bytes));
                    black_box(&out);
                });
            });
            group.bench_function(BenchmarkId::new("scan", order), |b| {
                b.iter(|| seqpatch::scan(black_box(bytes)));
            });
            group.bench_function(BenchmarkId::new("scan_patch", order), |b| {
                b.iter(|| {
                    seqpatch::scan(black_box(bytes)).map(|scan| {
                        scan.patch(bytes, black_box(1_000_000))
                            .slices()
                            .map(<[u8]>::len)
                    })
                });
            });
            group.bench_function(BenchmarkId::new("scan_rewrite", order), |b| {
                b.iter(|| {
                    out.clear();
                    if let Ok(scan) = seqpatch::scan(black_box(bytes)) {
                        scan.rewrite(bytes, black_box(1_000_000), &mut out);
                    }
                    black_box(&out);
                });
            });
            // A new `s` as wide as the payload's: one copy, the digits
            // written over in place.
            let same_width = seqpatch::scan(bytes)
                .ok()
                .and_then(|scan| scan.seq())
                .map_or(1, |s| if s % 10 == 9 { s - 1 } else { s + 1 });
            group.bench_function(BenchmarkId::new("scan_rewrite_same_width", order), |b| {
                b.iter(|| {
                    out.clear();
                    if let Ok(scan) = seqpatch::scan(black_box(bytes)) {
                        scan.rewrite(bytes, black_box(same_width), &mut out);
                    }
                    black_box(&out);
                });
            });
            group.bench_function(BenchmarkId::new("naive_rewrite", order), |b| {
                b.iter(|| {
                    out.clear();
                    naive_rewrite(&finder, black_box(bytes), black_box(1_000_000), &mut out);
                    black_box(&out);
                });
            });
            group.bench_function(BenchmarkId::new("sonic_lookup", order), |b| {
                b.iter(|| sonic_seq(black_box(bytes)));
            });
            group.bench_function(BenchmarkId::new("serde_rewrite", order), |b| {
                b.iter(|| {
                    out.clear();
                    serde_rewrite(black_box(bytes), black_box(1_000_000), &mut out);
                    black_box(&out);
                });
            });
        }
        group.finish();
    }
}

fn implementations(c: &mut Criterion) {
    for payload in payloads() {
        let bytes = payload.d_first();
        let mut group = c.benchmark_group(format!("seqpatch_isa_{}", payload.name));
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        for scanner in Isa::ALL.into_iter().filter_map(Scanner::with_isa) {
            let id = format!("{:?}", scanner.isa()).to_lowercase();
            group.bench_function(BenchmarkId::new("scan_complete", id), |b| {
                b.iter(|| scanner.scan_complete(black_box(&bytes)));
            });
        }
        group.finish();
    }
}

fn wrong_answer(c: &mut Criterion) {
    let finder = memchr::memmem::Finder::new(b"\"s\":");
    let (mut naive, mut ours) = (Vec::new(), Vec::new());
    naive_rewrite(&finder, NESTED_S, 9, &mut naive);
    if let Ok(scan) = seqpatch::scan(NESTED_S) {
        scan.rewrite(NESTED_S, 9, &mut ours);
    }
    println!("\nA payload with `d` first and `\"s\"` keys inside it, rewritten to s=9:");
    println!(
        "  input:  {}",
        String::from_utf8_lossy(NESTED_S.trim_ascii_end())
    );
    println!(
        "  naive:  {}   <- wrong: a nested s changed",
        String::from_utf8_lossy(naive.trim_ascii_end())
    );
    println!(
        "  ours:   {}\n",
        String::from_utf8_lossy(ours.trim_ascii_end())
    );
    let mut group = c.benchmark_group("seqpatch_nested_s");
    group.bench_function("naive_rewrite_wrong", |b| {
        b.iter(|| {
            naive.clear();
            naive_rewrite(&finder, black_box(NESTED_S), 9, &mut naive);
        });
    });
    group.bench_function("scan_rewrite", |b| {
        b.iter(|| {
            ours.clear();
            if let Ok(scan) = seqpatch::scan(black_box(NESTED_S)) {
                scan.rewrite(NESTED_S, 9, &mut ours);
            }
        });
    });
    group.finish();
}

fn print_table(since: std::time::SystemTime) {
    println!(
        "\n## seqpatch: median ns per payload (GB/s), and the ratio to memcpy of the same payload\n"
    );
    println!("| payload | order | bytes | {} |", METHODS.join(" | "));
    println!("|---|---|---:|{}", "---:|".repeat(METHODS.len()));
    for payload in payloads() {
        for (order, bytes) in ORDERS
            .into_iter()
            .zip([payload.discord_order.len(), payload.d_first().len()])
        {
            let group = format!("seqpatch_{}", payload.name);
            let memcpy = median_ns(&group, "memcpy", order, since);
            let cells: Vec<String> = METHODS
                .iter()
                .map(
                    |method| match (median_ns(&group, method, order, since), memcpy) {
                        (Some(ns), Some(floor)) => {
                            format!(
                                "{} ({:.2} GB/s, {:.2}×)",
                                fmt_ns(ns),
                                bytes as f64 / ns,
                                ns / floor
                            )
                        }
                        (Some(ns), None) => {
                            format!("{} ({:.2} GB/s)", fmt_ns(ns), bytes as f64 / ns)
                        }
                        _ => "–".to_owned(),
                    },
                )
                .collect();
            println!(
                "| {} | {order} | {bytes} | {} |",
                payload.name,
                cells.join(" | ")
            );
        }
    }
    println!("\n## seqpatch: scan_complete with d first, per implementation (median ns, GB/s)\n");
    println!(
        "| payload | {} |",
        Isa::ALL.map(|isa| format!("{isa:?}")).join(" | ")
    );
    println!("|---|{}", "---:|".repeat(Isa::ALL.len()));
    for payload in payloads() {
        let bytes = payload.d_first().len();
        let group = format!("seqpatch_isa_{}", payload.name);
        let cells: Vec<String> = Isa::ALL
            .iter()
            .map(|isa| {
                let id = format!("{isa:?}").to_lowercase();
                median_ns(&group, "scan_complete", &id, since).map_or_else(
                    || "–".to_owned(),
                    |ns| format!("{} ({:.2} GB/s)", fmt_ns(ns), bytes as f64 / ns),
                )
            })
            .collect();
        println!("| {} | {} |", payload.name, cells.join(" | "));
    }
}

fn main() {
    let since = benches::report::run_started();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    wrong_answer(&mut c);
    baselines(&mut c);
    implementations(&mut c);
    c.final_summary();
    print_table(since);
}
