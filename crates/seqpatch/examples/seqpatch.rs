//! Scans gateway payloads (each file is one; standard input holds one per
//! line), and prints what `seqpatch` finds and the payload rewritten with a
//! new `s`.
//!
//! ```text
//! cargo run -p seqpatch --example seqpatch -- testdata/json/*.json
//! echo '{"d":{"s":1},"op":0,"s":7,"t":"X"}' | cargo run -p seqpatch --example seqpatch
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead, Read};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        let mut stdin = Vec::new();
        if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
            eprintln!("error: reading standard input: {e}");
            return ExitCode::FAILURE;
        }
        for (number, line) in stdin.lines().enumerate() {
            match line {
                Ok(line) if !line.trim().is_empty() => {
                    inputs.push((format!("<stdin>:{}", number + 1), line.into_bytes()));
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("error: reading standard input: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    for path in paths {
        match std::fs::read(&path) {
            Ok(bytes) => inputs.push((path, bytes)),
            Err(e) => {
                eprintln!("error: reading {path}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }

    let mut failed = false;
    for (name, payload) in &inputs {
        match seqpatch::scan(payload) {
            Ok(scan) => {
                let mut out = Vec::with_capacity(payload.len() + 8);
                scan.rewrite(payload, 1_000_000, &mut out);
                println!(
                    "{name}: op={} t={:?} s={:?} d={} bytes\n  s=1000000: {}",
                    scan.op(),
                    scan.event_type(payload),
                    scan.seq(),
                    scan.d_range().map_or(0, |d| d.len()),
                    shorten(&String::from_utf8_lossy(&out)),
                );
            }
            Err(e) => {
                failed = true;
                println!("{name}: error: {e}");
            }
        }
    }
    println!("implementation: {:?}", seqpatch::Isa::best());
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn shorten(text: &str) -> String {
    const MAX: usize = 160;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}
