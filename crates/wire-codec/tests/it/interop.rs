//! What the encoders write decodes in Python's `zlib.decompressobj()` and
//! `zstandard`'s streaming decompressor: what discord.py uses.
//!
//! Needs `python3`; the zstd half needs the `zstandard` package, which
//! `.ci/run` installs. Outside CI a missing `zstandard` skips that half with
//! a note; in CI (`CI` set) it fails.

use std::io::Write as _;
use std::process::{Command, Stdio};

use wire_codec::Compression;

use super::{encode_all, frames};

/// The decoder side of discord.py, in the same calls it makes. Reads
/// length-prefixed messages on stdin and writes the payloads back the same
/// way.
const DECODER: &str = r#"
import struct, sys, zlib
mode = sys.argv[1]
if mode == "zlib-stream":
    ctx = zlib.decompressobj()
    decode = lambda m: ctx.decompress(m)
elif mode == "zstd-stream":
    try:
        import zstandard
    except ImportError:
        sys.exit(3)
    ctx = zstandard.ZstdDecompressor().decompressobj()
    decode = lambda m: ctx.decompress(m)
else:
    decode = zlib.decompress
data = sys.stdin.buffer.read()
out = sys.stdout.buffer
while data:
    (n,) = struct.unpack(">I", data[:4])
    message, data = data[4 : 4 + n], data[4 + n :]
    if mode == "zlib-stream":
        assert message.endswith(b"\x00\x00\xff\xff"), "suffix"
    payload = decode(message)
    out.write(struct.pack(">I", len(payload)) + payload)
"#;

/// Runs the Python decoder; `None` if it says its module is missing.
pub(super) fn python_decode(mode: &str, messages: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
    let mut child = Command::new("python3")
        .args(["-c", DECODER, mode])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 is needed for the interoperability tests");
    let mut input = Vec::new();
    for m in messages {
        input.extend_from_slice(&u32::try_from(m.len()).unwrap().to_be_bytes());
        input.extend_from_slice(m);
    }
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    if output.status.code() == Some(3) {
        return None;
    }
    assert!(output.status.success(), "python3 failed for {mode}");
    let mut payloads = Vec::new();
    let mut data = &output.stdout[..];
    while !data.is_empty() {
        let n = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
        payloads.push(data[4..4 + n].to_vec());
        data = &data[4 + n..];
    }
    Some(payloads)
}

fn check(compression: Compression, mode: &str) {
    let mut payloads = frames();
    // And a large one, so that messages span several deflate blocks and
    // zstd blocks.
    payloads.push(
        payloads
            .iter()
            .flatten()
            .copied()
            .cycle()
            .take(300_000)
            .collect(),
    );
    let messages = encode_all(compression, &payloads);
    match python_decode(mode, &messages) {
        Some(decoded) => assert_eq!(decoded, payloads, "{mode}"),
        None if std::env::var_os("CI").is_some() => {
            panic!("the Python package `zstandard` is missing; .ci/run installs it")
        }
        None => eprintln!("skipped {mode}: pip install zstandard to run it"),
    }
}

#[test]
fn python_zlib_decompressobj_reads_zlib_stream() {
    check(Compression::ZlibStream, "zlib-stream");
}

#[test]
fn python_zstandard_decompressobj_reads_zstd_stream() {
    check(Compression::ZstdStream, "zstd-stream");
}

#[test]
fn python_zlib_decompress_reads_payload_compression() {
    check(Compression::ZlibPayload, "payload");
}
