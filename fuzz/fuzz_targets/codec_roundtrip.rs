//! `wire-codec` round trip: any sequence of messages, encoded then decoded,
//! is the identity in every mode, at every level, whether a payload is
//! given whole or in parts.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use wire_codec::{Compression, Decoded, Decoder, Encoder};

#[derive(Arbitrary, Debug)]
struct Input {
    mode: u8,
    level: u8,
    /// Each payload with a cut point: encoded as two parts.
    messages: Vec<(Vec<u8>, u16)>,
}

const MODES: [Compression; 4] = [
    Compression::None,
    Compression::ZlibStream,
    Compression::ZstdStream,
    Compression::ZlibPayload,
];

fuzz_target!(|input: Input| {
    let compression = MODES[usize::from(input.mode) % MODES.len()];
    let level = i32::from(input.level % 23);
    let mut encoder = Encoder::with_level(compression, level).expect("an encoder");
    let mut decoder = Decoder::new(compression, 1 << 20).expect("a decoder");
    let (mut message, mut payload) = (Vec::new(), Vec::new());
    for (bytes, cut) in &input.messages {
        let cut = usize::from(*cut) % (bytes.len() + 1);
        message.clear();
        encoder
            .encode_parts(&[&bytes[..cut], &bytes[cut..]], &mut message)
            .expect("encoding never fails");
        payload.clear();
        let decoded = decoder.decode(&message, &mut payload).expect("our own output decodes");
        assert_eq!(decoded, Decoded::Message);
        assert_eq!(&payload, bytes);
    }
});
