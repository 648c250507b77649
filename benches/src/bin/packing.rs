//! What packing the replay ring's history costs: `discord-sim`'s stream
//! (the intents the e2e benchmark uses), concatenated into blocks of N
//! dispatches and compressed with zstd at a level, as `shard_pool`'s ring
//! packs them. Prints, per block size and level, the ratio (payload bytes
//! per packed byte) and the median over five passes of the time per
//! dispatch to pack and to unpack.
//!
//! Run: `cargo run --release -p benches --bin packing`.

#![allow(
    clippy::print_stdout,
    clippy::cast_precision_loss,
    reason = "a benchmark program: it reports on its terminal and works in rates"
)]

use tokio::time::Instant;

const SEED: u64 = 0x5eed;
const EVENTS: usize = 8_192;
/// `GUILDS | GUILD_MESSAGES`, as `e2e --intents` by default.
const INTENTS: u64 = 1 | 1 << 9;

fn stream() -> Vec<Vec<u8>> {
    let mut config = discord_sim::SimConfig::default();
    (config.guilds, config.members_per_guild) = (200, 10);
    let mut world = discord_sim::World::generate(&config);
    let mut stream = discord_sim::EventStream::new(&world, SEED, 0, 1);
    let mut out = Vec::with_capacity(EVENTS);
    while out.len() < EVENTS {
        let Some(d) = stream.next(&mut world) else {
            break;
        };
        if discord_sim::intent_of(&d.t).is_none_or(|bit| bit & INTENTS != 0) {
            let s = out.len() + 1;
            out.push(format!(r#"{{"t":"{}","s":{s},"op":0,"d":{}}}"#, d.t, d.d).into_bytes());
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> std::io::Result<()> {
    let events = stream();
    let bytes: usize = events.iter().map(Vec::len).sum();
    println!(
        "## Replay blocks: discord-sim, {} dispatches (intents {INTENTS}), {:.0} B each on average\n",
        events.len(),
        bytes as f64 / events.len() as f64
    );
    println!(
        "| dispatches a block | zstd level | ratio | pack, µs per dispatch | unpack, µs per dispatch |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for block in [32, 64, 128] {
        let blocks: Vec<Vec<u8>> = events
            .chunks_exact(block)
            .map(<[Vec<u8>]>::concat)
            .collect();
        let n = (blocks.len() * block) as f64;
        for level in [-5, -1, 1, 3] {
            let mut compressor = zstd::bulk::Compressor::new(level)?;
            let mut decompressor = zstd::bulk::Decompressor::new()?;
            let (mut pack, mut unpack) = (Vec::new(), Vec::new());
            let mut packed_len = 0;
            let mut raw_len = 0;
            for _ in 0..5 {
                let start = Instant::now();
                let packed: Vec<Vec<u8>> = blocks
                    .iter()
                    .map(|b| compressor.compress(b))
                    .collect::<Result<_, _>>()?;
                pack.push(start.elapsed().as_secs_f64() * 1e6 / n);
                let start = Instant::now();
                for (p, b) in packed.iter().zip(&blocks) {
                    let out = decompressor.decompress(p, b.len())?;
                    assert_eq!(out.len(), b.len());
                }
                unpack.push(start.elapsed().as_secs_f64() * 1e6 / n);
                packed_len = packed.iter().map(Vec::len).sum::<usize>();
                raw_len = blocks.iter().map(Vec::len).sum::<usize>();
            }
            println!(
                "| {block} | {level} | {:.2} | {:.2} | {:.2} |",
                raw_len as f64 / packed_len as f64,
                median(pack),
                median(unpack)
            );
        }
    }
    Ok(())
}
