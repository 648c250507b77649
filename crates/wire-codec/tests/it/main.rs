//! The integration tests of `wire-codec`: one binary, so that the counting
//! allocator below sees every test.

// Test code: a panic is a failed assertion, and notes go to stderr.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

// A counting global allocator needs `unsafe`; it only forwards to `System`.
#[allow(unsafe_code)]
mod alloc;
mod interop;
mod limits;
mod roundtrip;
mod shared;

use wire_codec::{Compression, Decoded, Decoder, Encoder};

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

/// The three compressed modes.
const COMPRESSED: [Compression; 3] = [
    Compression::ZlibStream,
    Compression::ZstdStream,
    Compression::ZlibPayload,
];

/// Gateway-shaped payloads: the frames in `testdata/json`.
fn frames() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/json");
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

/// Encodes every payload as its own message.
fn encode_all(compression: Compression, payloads: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut encoder = Encoder::new(compression).unwrap();
    payloads
        .iter()
        .map(|p| {
            let mut out = Vec::new();
            encoder.encode(p, &mut out).unwrap();
            out
        })
        .collect()
}

/// Decodes every message with this crate's decoder.
fn decode_all(compression: Compression, messages: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut decoder = Decoder::new(compression, 1 << 24).unwrap();
    messages
        .iter()
        .map(|m| {
            let mut out = Vec::new();
            assert_eq!(decoder.decode(m, &mut out).unwrap(), Decoded::Message);
            out
        })
        .collect()
}
