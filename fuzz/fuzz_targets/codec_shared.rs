//! `wire-codec` shared deflate bodies: any events (head and tail), any
//! middles, interleaved any way with the connection's own messages from an
//! encoder made independent after a prelude, or one whose history is cut
//! after each shared body (as the proxy does), at any levels, decode as
//! the plain payloads in a zlib-stream connection; and every body written for
//! payload compression is a complete zlib stream of its payload, checksum
//! included.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use wire_codec::{Compression, Decoded, Decoder, Encoder, SharedCompressor};

#[derive(Arbitrary, Debug)]
enum Op {
    /// The connection's own message, through its encoder.
    Own(Vec<u8>),
    /// Event `event` (modulo their number) with `middle` between its head
    /// and tail.
    Shared { event: u8, middle: Vec<u8> },
}

#[derive(Arbitrary, Debug)]
struct Input {
    encoder_level: u8,
    /// The encoder cuts its history after each shared body
    /// (`Encoder::cut_history`) instead of being made independent.
    cut: bool,
    shared_level: u8,
    /// Messages written before the encoder is made independent, after
    /// HELLO (the prelude: ACKs, here any payloads).
    prelude: Vec<Vec<u8>>,
    /// Heads and tails.
    events: Vec<(Vec<u8>, Vec<u8>)>,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    if input.events.is_empty() {
        return;
    }
    let mut compressor = SharedCompressor::new(u32::from(input.shared_level % 10));
    let bodies: Vec<_> = input
        .events
        .iter()
        .map(|(head, tail)| {
            compressor
                .compress(head, tail)
                .expect("compressing never fails")
        })
        .collect();

    let level = i32::from(input.encoder_level % 10);
    let mut encoder = Encoder::with_level(Compression::ZlibStream, level).expect("an encoder");
    let mut stream = Decoder::new(Compression::ZlibStream, 1 << 24).expect("a decoder");
    let mut payload = Decoder::new(Compression::ZlibPayload, 1 << 24).expect("a decoder");
    let (mut message, mut out) = (Vec::new(), Vec::new());
    let mut read = |decoder: &mut Decoder, message: &[u8], want: &[&[u8]]| {
        out.clear();
        let decoded = decoder
            .decode(message, &mut out)
            .expect("our own output decodes");
        assert_eq!(decoded, Decoded::Message);
        assert_eq!(out, want.concat());
    };

    // The connection's first message is always HELLO from its own
    // encoder: it carries the zlib header, which shared bodies never do.
    let hello = &br#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}"#[..];
    for plain in std::iter::once(hello).chain(input.prelude.iter().map(Vec::as_slice)) {
        message.clear();
        encoder
            .encode(plain, &mut message)
            .expect("encoding never fails");
        read(&mut stream, &message, &[plain]);
    }
    if !input.cut {
        encoder.set_independent();
    }
    for op in &input.ops {
        message.clear();
        match op {
            Op::Own(plain) => {
                encoder
                    .encode(plain, &mut message)
                    .expect("encoding never fails");
                read(&mut stream, &message, &[plain]);
            }
            Op::Shared { event, middle } => {
                let i = usize::from(*event) % bodies.len();
                let (head, tail) = &input.events[i];
                bodies[i].write_stream(middle, &mut message);
                read(&mut stream, &message, &[head, middle, tail]);
                message.clear();
                bodies[i].write_payload(middle, &mut message);
                read(&mut payload, &message, &[head, middle, tail]);
                if input.cut {
                    encoder.cut_history();
                }
            }
        }
    }
});
