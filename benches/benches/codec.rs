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
#![allow(missing_docs, clippy::print_stdout, clippy::cast_precision_loss)]

use std::hint::black_box;
use std::time::Duration;

use benches::report::{fmt_ns, median_ns};
use benches::stream::event_stream;
use criterion::{BenchmarkId, Criterion, Throughput};
use miniz_oxide::deflate::core::{CompressorOxide, create_comp_flags_from_zip_params};
use miniz_oxide::inflate::stream::InflateState;
use miniz_oxide::{DataFormat, MZFlush};
use wire_codec::{Compression, Decoder, Encoder};

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

fn main() {
    let since = benches::report::run_started();
    let stream = event_stream(SEED, EVENTS);
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .configure_from_args();
    bench(&mut c, &stream);
    c.final_summary();
    print_table(&stream, since);
}
