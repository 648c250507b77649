//! `wire-codec` decoders on arbitrary bytes, split arbitrarily into
//! messages: never a panic, never more than the limit in memory.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use wire_codec::{Compression, Decoder};

#[derive(Arbitrary, Debug)]
struct Input {
    mode: u8,
    limit: u16,
    /// Append `00 00 ff ff` to every message, so that zlib-stream decodes.
    suffix: bool,
    /// Where `bytes` is cut into messages.
    cuts: Vec<u16>,
    bytes: Vec<u8>,
}

const MODES: [Compression; 3] = [
    Compression::ZlibStream,
    Compression::ZstdStream,
    Compression::ZlibPayload,
];

fuzz_target!(|input: Input| {
    let compression = MODES[usize::from(input.mode) % MODES.len()];
    let limit = usize::from(input.limit) + 1;
    let Ok(mut decoder) = Decoder::new(compression, limit) else {
        return;
    };
    let mut cuts: Vec<usize> = input
        .cuts
        .iter()
        .map(|&c| usize::from(c) % (input.bytes.len() + 1))
        .collect();
    cuts.sort_unstable();
    cuts.push(input.bytes.len());
    let mut start = 0;
    let mut out = Vec::new();
    for cut in cuts {
        let mut message = input.bytes[start..cut].to_vec();
        start = cut;
        if input.suffix {
            message.extend_from_slice(&[0, 0, 0xff, 0xff]);
        }
        out.clear();
        let result = decoder.decode(&message, &mut out);
        // One read chunk (32 KiB) past the limit at most, whatever happened.
        assert!(out.len() <= limit + 32 * 1024 + 1, "{} > {limit}", out.len());
        if result.is_err() {
            return;
        }
        assert!(out.len() <= limit, "{} > {limit}", out.len());
    }
});
