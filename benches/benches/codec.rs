//! `wire-codec`: encode and decode throughput and compression ratio on one
//! realistic event stream, for every mode, backend and level, side by side,
//! then a table.
//!
//! ```text
//! cargo bench -p benches --bench codec
//! ```
//!
//! The stream is `benches::stream::event_stream(SEED, EVENTS)`: mostly
//! `PRESENCE_UPDATE` and `MESSAGE_CREATE`, 1 % 30 KB `GUILD_CREATE`. One
//! iteration encodes (or decodes) the whole stream as one connection, one
//! message per event, into a reused buffer. Throughput is in MB/s of
//! uncompressed JSON; the ratio is compressed bytes over JSON bytes.
//!
//! zlib backends: flate2 with zlib-rs is what `wire-codec` uses; `miniz_oxide`
//! is driven directly (flate2 links one backend per build), with the same
//! calls flate2 makes. zlib-ng needs cmake, which this machine lacks.
//!
//! A second group, `codec_shared`, compares the ways of sending one event
//! to many clients (`docs/performance.md`, "Shared deflate bodies"), on
//! `discord-sim`'s stream as the end-to-end benchmark's clients see it
//! (`GUILDS | GUILD_MESSAGES`, ~1 KB events): each client's own zlib or
//! zstd stream, against [`SharedCompressor`] once per event and a
//! [`SharedBody`] copy per client. Run it alone with
//! `cargo bench -p benches --bench codec -- codec_shared`.
#![allow(missing_docs, clippy::print_stdout, clippy::cast_precision_loss)]

use std::hint::black_box;
use std::time::Duration;

use benches::report::{fmt_ns, median_ns};
use benches::stream::event_stream;
use criterion::{BenchmarkId, Criterion, Throughput};
use miniz_oxide::deflate::core::{CompressorOxide, create_comp_flags_from_zip_params};
use miniz_oxide::inflate::stream::InflateState;
use miniz_oxide::{DataFormat, MZFlush};
use wire_codec::{Compression, Decoder, Encoder, SharedBody, SharedCompressor};

const SEED: u64 = 0x5eed;
const EVENTS: usize = 2_000;

/// One row of the table: a mode, a backend and a level.
#[derive(Clone, Copy)]
struct Case {
    id: &'static str,
    compression: Compression,
    miniz: bool,
    level: i32,
}

const CASES: [Case; 7] = [
    Case {
        id: "zlib-stream_zlib-rs_6",
        compression: Compression::ZlibStream,
        miniz: false,
        level: 6,
    },
    Case {
        id: "zlib-stream_miniz_oxide_6",
        compression: Compression::ZlibStream,
        miniz: true,
        level: 6,
    },
    Case {
        id: "zlib-stream_zlib-rs_1",
        compression: Compression::ZlibStream,
        miniz: false,
        level: 1,
    },
    Case {
        id: "zstd-stream_1",
        compression: Compression::ZstdStream,
        miniz: false,
        level: 1,
    },
    Case {
        id: "zstd-stream_2",
        compression: Compression::ZstdStream,
        miniz: false,
        level: 2,
    },
    Case {
        id: "zstd-stream_3",
        compression: Compression::ZstdStream,
        miniz: false,
        level: 3,
    },
    Case {
        id: "zlib-payload_zlib-rs_6",
        compression: Compression::ZlibPayload,
        miniz: false,
        level: 6,
    },
];

/// zlib-stream through `miniz_oxide` directly: one compressor per connection,
/// a sync flush per message.
struct MinizEncoder(Box<CompressorOxide>);

impl MinizEncoder {
    fn new(level: i32) -> Self {
        let flags = create_comp_flags_from_zip_params(level, 15, 0);
        Self(Box::new(CompressorOxide::new(flags)))
    }

    fn encode(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        loop {
            let at = out.len();
            let room = input.len() / 2 + 64;
            out.resize(at + room, 0);
            let r = miniz_oxide::deflate::stream::deflate(
                &mut self.0,
                input,
                &mut out[at..],
                MZFlush::Sync,
            );
            out.truncate(at + r.bytes_written);
            input = &input[r.bytes_consumed..];
            // The flush is complete once it leaves room unused.
            if input.is_empty() && r.bytes_written < room {
                return;
            }
        }
    }
}

/// The matching `miniz_oxide` zlib-stream decoder.
struct MinizDecoder(Box<InflateState>);

impl MinizDecoder {
    fn new() -> Self {
        Self(InflateState::new_boxed(DataFormat::Zlib))
    }

    fn decode(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        loop {
            let at = out.len();
            out.resize(at + 32 * 1024, 0);
            let r = miniz_oxide::inflate::stream::inflate(
                &mut self.0,
                input,
                &mut out[at..],
                MZFlush::Sync,
            );
            out.truncate(at + r.bytes_written);
            input = &input[r.bytes_consumed..];
            if input.is_empty() && r.bytes_written < 32 * 1024 {
                return;
            }
        }
    }
}

/// One connection's encoder and decoder for a case, whichever backend.
// One per benchmark case: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Codec {
    Miniz(MinizEncoder, MinizDecoder),
    Wire(Encoder, Decoder),
}

impl Codec {
    fn new(case: Case) -> Self {
        if case.miniz {
            Self::Miniz(MinizEncoder::new(case.level), MinizDecoder::new())
        } else {
            Self::Wire(
                Encoder::with_level(case.compression, case.level).expect("an encoder"),
                Decoder::new(case.compression, 1 << 20).expect("a decoder"),
            )
        }
    }

    /// A new connection: fresh contexts on both sides.
    fn reset(&mut self, case: Case) {
        match self {
            Self::Miniz(..) => *self = Self::new(case),
            Self::Wire(encoder, decoder) => {
                encoder.reset().expect("reset");
                decoder.reset().expect("reset");
            }
        }
    }

    fn encode(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        match self {
            Self::Miniz(encoder, _) => encoder.encode(payload, out),
            Self::Wire(encoder, _) => encoder.encode(payload, out).expect("encoding"),
        }
    }

    fn decode(&mut self, message: &[u8], out: &mut Vec<u8>) {
        match self {
            Self::Miniz(_, decoder) => decoder.decode(message, out),
            Self::Wire(_, decoder) => {
                decoder.decode(message, out).expect("decoding");
            }
        }
    }
}

fn encode_stream(case: Case, stream: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut codec = Codec::new(case);
    stream
        .iter()
        .map(|event| {
            let mut message = Vec::new();
            codec.encode(event, &mut message);
            message
        })
        .collect()
}

fn bench(c: &mut Criterion, stream: &[Vec<u8>]) {
    let raw: usize = stream.iter().map(Vec::len).sum();
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Bytes(raw as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    for case in CASES {
        let messages = encode_stream(case, stream);
        let mut out = Vec::with_capacity(64 * 1024);
        let mut codec = Codec::new(case);
        group.bench_function(BenchmarkId::new("encode", case.id), |b| {
            b.iter(|| {
                codec.reset(case);
                for event in stream {
                    out.clear();
                    codec.encode(black_box(event), &mut out);
                }
            });
        });
        group.bench_function(BenchmarkId::new("decode", case.id), |b| {
            b.iter(|| {
                codec.reset(case);
                for message in &messages {
                    out.clear();
                    codec.decode(black_box(message), &mut out);
                }
            });
        });
    }
    group.finish();
}

fn print_table(stream: &[Vec<u8>], since: std::time::SystemTime) {
    let raw: usize = stream.iter().map(Vec::len).sum();
    println!(
        "\n## wire-codec: {EVENTS} events, {:.2} MB of JSON (seed {SEED:#x}); MB/s of JSON, medians\n",
        raw as f64 / 1e6
    );
    println!("| mode | backend | level | ratio | encode | decode | encode time per event |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for case in CASES {
        let compressed: usize = encode_stream(case, stream).iter().map(Vec::len).sum();
        let mbps = |op: &str| {
            median_ns("codec", op, case.id, since)
                .map(|ns| (format!("{:.0} MB/s", raw as f64 / ns * 1e3), ns))
        };
        let (encode, encode_ns) =
            mbps("encode").map_or(("–".to_owned(), None), |(s, ns)| (s, Some(ns)));
        let decode = mbps("decode").map_or("–".to_owned(), |(s, _)| s);
        let per_event = encode_ns.map_or("–".to_owned(), |ns| fmt_ns(ns / EVENTS as f64));
        let mut parts = case.id.split('_');
        let mode = parts.next().unwrap_or("");
        let backend = if case.compression == Compression::ZstdStream {
            "zstd (libzstd 1.5)"
        } else if case.miniz {
            "miniz_oxide"
        } else {
            "zlib-rs"
        };
        println!(
            "| {mode} | {backend} | {} | {:.3} | {encode} | {decode} | {per_event} |",
            case.level,
            compressed as f64 / raw as f64
        );
    }
}

/// The intents of the end-to-end benchmark: `GUILDS | GUILD_MESSAGES`.
const SIM_INTENTS: u64 = 1 | 1 << 9;

/// One dispatch of the sim's stream, cut around its `s`.
struct Dispatch {
    head: Vec<u8>,
    seq: Vec<u8>,
    tail: Vec<u8>,
}

impl Dispatch {
    fn len(&self) -> usize {
        self.head.len() + self.seq.len() + self.tail.len()
    }
}

/// `EVENTS` dispatches of `discord-sim`'s stream that [`SIM_INTENTS`] let
/// through, in Discord's envelope, numbered from 1.
fn sim_stream() -> Vec<Dispatch> {
    let mut config = discord_sim::SimConfig::default();
    (config.guilds, config.members_per_guild) = (100, 10);
    let mut world = discord_sim::World::generate(&config);
    let mut stream = discord_sim::EventStream::new(&world, SEED, 0, 1);
    let mut out = Vec::with_capacity(EVENTS);
    while out.len() < EVENTS {
        let dispatch = stream.next(&mut world).expect("the shard has guilds");
        if discord_sim::intent_of(&dispatch.t).is_none_or(|bit| bit & SIM_INTENTS != 0) {
            out.push(Dispatch {
                head: format!(r#"{{"t":"{}","s":"#, dispatch.t).into_bytes(),
                seq: (out.len() + 1).to_string().into_bytes(),
                tail: format!(r#","op":0,"d":{}}}"#, dispatch.d).into_bytes(),
            });
        }
    }
    out
}

/// A way of sending the stream, for the ratio and time tables.
#[derive(Clone, Copy)]
enum Scheme {
    /// Each client's own stream (zlib-stream or zstd-stream) at a level.
    Own(Compression, i32),
    /// Each client's own zlib stream at a level, made independent (as a
    /// connection's own messages are once it gets shared bodies).
    Independent(i32),
    /// A shared body per event at a level, written as zlib-stream messages.
    Shared(u32),
    /// The same, written for payload compression.
    SharedPayload(u32),
}

/// The compressed bytes of the whole stream for one client.
fn compressed_bytes(scheme: Scheme, stream: &[Dispatch]) -> usize {
    let mut out = Vec::new();
    match scheme {
        Scheme::Own(_, level) | Scheme::Independent(level) => {
            let mut encoder = match scheme {
                Scheme::Own(compression, _) => Encoder::with_level(compression, level),
                _ => Encoder::with_level(Compression::ZlibStream, level),
            }
            .expect("an encoder");
            if matches!(scheme, Scheme::Independent(_)) {
                encoder.set_independent();
            }
            for d in stream {
                encoder
                    .encode_parts(&[&d.head, &d.seq, &d.tail], &mut out)
                    .expect("encoding");
            }
        }
        Scheme::Shared(level) | Scheme::SharedPayload(level) => {
            let mut compressor = SharedCompressor::new(level);
            for d in stream {
                let body = compressor.compress(&d.head, &d.tail).expect("compressing");
                if matches!(scheme, Scheme::Shared(_)) {
                    body.write_stream(&d.seq, &mut out);
                } else {
                    body.write_payload(&d.seq, &mut out);
                }
            }
        }
    }
    out.len()
}

const SHARED_LEVELS: [u32; 5] = [1, 2, 3, 6, 9];

fn bench_shared(c: &mut Criterion, stream: &[Dispatch]) {
    let raw: usize = stream.iter().map(Dispatch::len).sum();
    let mut group = c.benchmark_group("codec_shared");
    group.throughput(Throughput::Bytes(raw as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    let mut out = Vec::with_capacity(64 * 1024);
    let own = SHARED_LEVELS
        .map(|level| ("zlib-stream", Compression::ZlibStream, level.cast_signed()))
        .into_iter()
        .chain([
            ("zstd-stream", Compression::ZstdStream, 1),
            ("zstd-stream", Compression::ZstdStream, 3),
            ("zlib-stream_independent", Compression::ZlibStream, 1),
            ("zlib-stream_independent", Compression::ZlibStream, 6),
            ("zlib-payload", Compression::ZlibPayload, 1),
            ("zlib-payload", Compression::ZlibPayload, 6),
        ]);
    for (name, compression, level) in own {
        let mut encoder = Encoder::with_level(compression, level).expect("an encoder");
        if name.ends_with("independent") {
            encoder.set_independent();
        }
        group.bench_function(BenchmarkId::new(name, format!("L{level}")), |b| {
            b.iter(|| {
                encoder.reset().expect("reset");
                for d in stream {
                    out.clear();
                    encoder
                        .encode_parts(&[&d.head, black_box(&d.seq), &d.tail], &mut out)
                        .expect("encoding");
                }
            });
        });
    }
    for level in SHARED_LEVELS {
        let mut compressor = SharedCompressor::new(level);
        group.bench_function(
            BenchmarkId::new("shared_compress", format!("L{level}")),
            |b| {
                b.iter(|| {
                    for d in stream {
                        black_box(
                            compressor
                                .compress(black_box(&d.head), &d.tail)
                                .expect("compressing"),
                        );
                    }
                });
            },
        );
    }
    let mut compressor = SharedCompressor::new(6);
    let bodies: Vec<SharedBody> = stream
        .iter()
        .map(|d| compressor.compress(&d.head, &d.tail).expect("compressing"))
        .collect();
    group.bench_function(BenchmarkId::new("shared_write", "stream"), |b| {
        b.iter(|| {
            for (body, d) in bodies.iter().zip(stream) {
                out.clear();
                body.write_stream(black_box(&d.seq), &mut out);
            }
        });
    });
    group.bench_function(BenchmarkId::new("shared_write", "payload"), |b| {
        b.iter(|| {
            for (body, d) in bodies.iter().zip(stream) {
                out.clear();
                body.write_payload(black_box(&d.seq), &mut out);
            }
        });
    });
    group.finish();
}

fn print_shared_tables(stream: &[Dispatch], since: std::time::SystemTime) {
    let raw: usize = stream.iter().map(Dispatch::len).sum();
    let per_event = |function: &str, parameter: &str| {
        median_ns("codec_shared", function, parameter, since).map(|ns| ns / stream.len() as f64)
    };
    let Some(write) = per_event("shared_write", "stream") else {
        return;
    };
    let write_payload = per_event("shared_write", "payload");
    println!(
        "\n## Shared deflate bodies: discord-sim, {} dispatches (intents {SIM_INTENTS}), {:.0} B each on average; medians per event\n",
        stream.len(),
        raw as f64 / stream.len() as f64
    );
    println!(
        "`SharedBody::write_stream` per client: {}; `write_payload`: {}.\n",
        fmt_ns(write),
        write_payload.map_or("–".to_owned(), fmt_ns)
    );
    println!(
        "| scheme | level | ratio | once per event | per client and event | per delivery, 1 client | 4 clients | 16 clients |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let ratio = |scheme| compressed_bytes(scheme, stream) as f64 / raw as f64;
    let row = |name: &str, level: String, ratio: f64, once: Option<f64>, each: Option<f64>| {
        let cell = |ns: Option<f64>| ns.map_or("–".to_owned(), fmt_ns);
        let per = |n: f64| match (once, each) {
            (Some(once), Some(each)) => fmt_ns(once / n + each),
            (None, Some(each)) => fmt_ns(each),
            _ => "–".to_owned(),
        };
        println!(
            "| {name} | {level} | {ratio:.3} | {} | {} | {} | {} | {} |",
            cell(once),
            cell(each),
            per(1.0),
            per(4.0),
            per(16.0)
        );
    };
    for level in SHARED_LEVELS {
        let own = per_event("zlib-stream", &format!("L{level}"));
        let scheme = Scheme::Own(Compression::ZlibStream, level.cast_signed());
        row(
            "zlib-stream, per client",
            level.to_string(),
            ratio(scheme),
            None,
            own,
        );
    }
    for level in SHARED_LEVELS {
        let once = per_event("shared_compress", &format!("L{level}"));
        row(
            "zlib-stream, shared body",
            level.to_string(),
            ratio(Scheme::Shared(level)),
            once,
            Some(write),
        );
    }
    for level in [1, 3] {
        let own = per_event("zstd-stream", &format!("L{level}"));
        row(
            "zstd-stream, per client",
            level.to_string(),
            ratio(Scheme::Own(Compression::ZstdStream, level)),
            None,
            own,
        );
    }
    for level in [1, 6] {
        let own = per_event("zlib-stream_independent", &format!("L{level}"));
        row(
            "zlib-stream, per client, independent",
            level.to_string(),
            ratio(Scheme::Independent(level)),
            None,
            own,
        );
    }
    for level in [1u32, 6] {
        let scheme = Scheme::Own(Compression::ZlibPayload, level.cast_signed());
        let own = per_event("zlib-payload", &format!("L{level}"));
        row(
            "zlib payload, per client",
            level.to_string(),
            ratio(scheme),
            None,
            own,
        );
        let once = per_event("shared_compress", &format!("L{level}"));
        row(
            "zlib payload, shared body",
            level.to_string(),
            ratio(Scheme::SharedPayload(level)),
            once,
            write_payload,
        );
    }
}

fn main() {
    let since = benches::report::run_started();
    let stream = event_stream(SEED, EVENTS);
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .configure_from_args();
    bench(&mut c, &stream);
    let sim = sim_stream();
    bench_shared(&mut c, &sim);
    c.final_summary();
    print_table(&stream, since);
    print_shared_tables(&sim, since);
}
