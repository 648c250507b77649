//! Shared deflate bodies, mixed into a connection's stream with the
//! connection's own messages, decode in this crate's decoder, in flate2
//! used directly (as twilight does) and in Python's `zlib` (as discord.py
//! does), byte for byte as the plain payloads.

use flate2::{Decompress, FlushDecompress, Status};
use proptest::prelude::*;
use wire_codec::{Compression, Decoded, Decoder, Encoder, SharedBody, SharedCompressor};

use super::frames;
use super::interop::python_decode;
use super::roundtrip::{reference_zlib_payload, reference_zlib_stream};

const HELLO: &[u8] = br#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}"#;
const ACK: &[u8] = br#"{"t":null,"s":null,"op":11,"d":null}"#;

/// A dispatch without its `s`: `{"t":"NAME","s":` and `,"op":0,"d":…}`.
#[derive(Clone, Debug)]
struct Event {
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl Event {
    fn new(name: &str, d: &[u8]) -> Self {
        Self {
            head: format!(r#"{{"t":"{name}","s":"#).into_bytes(),
            tail: [&br#","op":0,"d":"#[..], d, b"}"].concat(),
        }
    }

    fn payload(&self, middle: &[u8]) -> Vec<u8> {
        [&self.head[..], middle, &self.tail].concat()
    }
}

/// The dispatches of `testdata/json` cut around their `s`, and every frame
/// as the `d` of a made-up event.
fn events() -> Vec<Event> {
    let mut events = Vec::new();
    for frame in frames() {
        let frame = frame.trim_ascii_end();
        if frame.starts_with(b"{\"t\":\"")
            && let Some(at) = frame.windows(4).position(|w| w == b"\"s\":")
        {
            let start = at + 4;
            let digits = frame[start..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if digits > 0 {
                events.push(Event {
                    head: frame[..start].to_vec(),
                    tail: frame[start + digits..].to_vec(),
                });
            }
        }
        events.push(Event::new("MADE_UP", frame));
        // `d` first, as seqpatch allows: a long head, a short tail.
        events.push(Event {
            head: [&b"{\"d\":"[..], frame, b",\"op\":0,\"s\":"].concat(),
            tail: b",\"t\":\"MADE_UP\"}".to_vec(),
        });
    }
    events.push(Event::new(
        "TYPING_START",
        br#"{"user_id":"80351110224678912","timestamp":1732780800,"channel_id":"1133370412537544700"}"#,
    ));
    events.push(Event::new(
        "MESSAGE_DELETE_BULK",
        &[b"[", &frames().join(&b","[..])[..], b"]"].concat(),
    ));
    assert!(events.len() >= 12, "testdata/json is there");
    events
}

/// Sequence numbers of every length from 1 to 20 digits (`u64::MAX` has
/// 20), the first digit never a zero.
fn seqs() -> Vec<Vec<u8>> {
    (1..=20u32)
        .map(|digits| {
            let n = 10u64.pow(digits - 1) + u64::from(digits) * 7 % 10u64.pow(digits - 1).max(1);
            n.to_string().into_bytes()
        })
        .chain([u64::MAX.to_string().into_bytes()])
        .collect()
}

/// Pseudo-random bytes: incompressible.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// The events at the edges: empty head, tail or both, a large tail
/// (several deflate blocks), incompressible bytes, and bytes that look
/// like a flush.
fn edge_events() -> Vec<Event> {
    let big: Vec<u8> = frames()
        .concat()
        .iter()
        .copied()
        .cycle()
        .take(150_000)
        .collect();
    vec![
        Event {
            head: Vec::new(),
            tail: b",\"op\":0,\"d\":{}}".to_vec(),
        },
        Event {
            head: b"{\"t\":\"X\",\"s\":".to_vec(),
            tail: Vec::new(),
        },
        Event {
            head: Vec::new(),
            tail: Vec::new(),
        },
        Event::new("GUILD_CREATE", &big),
        Event {
            head: noise(300, 1),
            tail: noise(120_000, 2),
        },
        Event {
            head: b"\x00\x00\xff\xff".to_vec(),
            tail: b"\x00\x00\x00\xff\xff".to_vec(),
        },
    ]
}

/// One message of a mixed stream.
enum Step<'a> {
    /// The connection's own message, through its encoder.
    Own(&'a [u8]),
    /// Event `.0` (an index into the bodies) with `.1` between head and tail.
    Shared(usize, &'a [u8]),
}

/// Writes a zlib-stream connection as the proxy would: HELLO (and `acks`
/// ACKs) in the ordinary mode, as the prelude does, then the encoder made
/// independent and `steps` mixed. Returns the messages and the payloads
/// they must decode to.
fn zlib_stream(
    level: i32,
    acks: usize,
    bodies: &[(Event, SharedBody)],
    steps: &[Step<'_>],
    mix: Mix,
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut encoder = Encoder::with_level(Compression::ZlibStream, level).unwrap();
    let (mut messages, mut payloads) = (Vec::new(), Vec::new());
    for payload in std::iter::once(HELLO).chain(std::iter::repeat_n(ACK, acks)) {
        let mut message = Vec::new();
        encoder.encode(payload, &mut message).unwrap();
        messages.push(message);
        payloads.push(payload.to_vec());
    }
    if mix == Mix::Independent {
        encoder.set_independent();
    }
    assert_eq!(encoder.is_independent(), mix == Mix::Independent);
    for step in steps {
        let mut message = Vec::new();
        match *step {
            Step::Own(payload) => {
                encoder.encode(payload, &mut message).unwrap();
                payloads.push(payload.to_vec());
            }
            Step::Shared(i, middle) => {
                let (event, body) = &bodies[i];
                body.write_stream(middle, &mut message);
                payloads.push(event.payload(middle));
                if mix == Mix::Cut {
                    encoder.cut_history();
                }
            }
        }
        messages.push(message);
    }
    (messages, payloads)
}

/// How the connection's own messages keep clear of the shared bodies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mix {
    /// `set_independent` after the prelude: every own message.
    Independent,
    /// `cut_history` after each shared body: the next own message only.
    Cut,
}

/// Every reader of a zlib-stream connection reads `messages` as `payloads`:
/// this crate's decoder and flate2 directly; and each message after the
/// prelude (`first` of them) also on its own, with a raw inflater that
/// has seen nothing before it, which fails if it refers to any earlier
/// message.
fn assert_zlib_stream_reads(messages: &[Vec<u8>], payloads: &[Vec<u8>], first: usize) {
    assert_eq!(reference_zlib_stream(messages), payloads);
    let mut decoder = Decoder::new(Compression::ZlibStream, 1 << 24).unwrap();
    for (i, (message, payload)) in messages.iter().zip(payloads).enumerate() {
        let mut out = Vec::new();
        assert_eq!(decoder.decode(message, &mut out).unwrap(), Decoded::Message);
        assert_eq!(&out, payload, "message {i}");
    }
    for (i, (message, payload)) in messages.iter().zip(payloads).enumerate().skip(first) {
        assert_eq!(&inflate_alone(message), payload, "message {i} on its own");
    }
}

/// Raw-inflates one zlib-stream message with no history.
fn inflate_alone(message: &[u8]) -> Vec<u8> {
    let mut ctx = Decompress::new(false);
    let mut out = Vec::with_capacity(1 << 20);
    loop {
        let before = ctx.total_in();
        let consumed = usize::try_from(before).unwrap();
        let status = ctx
            .decompress_vec(&message[consumed..], &mut out, FlushDecompress::Sync)
            .unwrap_or_else(|e| panic!("refers to an earlier message: {e}"));
        assert_eq!(status, Status::Ok);
        if ctx.total_in() == message.len() as u64 {
            return out;
        }
        out.reserve(1 << 20);
    }
}

/// The header zlib (flate2) starts a stream with at `level`.
fn zlib_header(level: u32) -> [u8; 2] {
    let mut ctx = flate2::Compress::new(flate2::Compression::new(level), true);
    let mut out = Vec::with_capacity(64);
    ctx.compress_vec(b"", &mut out, flate2::FlushCompress::Finish)
        .unwrap();
    [out[0], out[1]]
}

fn compress_all(level: u32, events: &[Event]) -> Vec<(Event, SharedBody)> {
    let mut compressor = SharedCompressor::new(level);
    events
        .iter()
        .map(|e| (e.clone(), compressor.compress(&e.head, &e.tail).unwrap()))
        .collect()
}

/// The connection's own messages after the prelude.
fn own_messages() -> Vec<Vec<u8>> {
    let mut own = vec![
        br#"{"t":"READY","s":1,"op":0,"d":{"v":10,"session_id":"abc","resume_gateway_url":"ws://localhost"}}"#.to_vec(),
        ACK.to_vec(),
        HELLO.to_vec(),
        br#"{"t":null,"s":null,"op":9,"d":true}"#.to_vec(),
        Vec::new(),
    ];
    own.extend(frames());
    own
}

/// A mix: each event with every length of digits, the connection's own
/// messages in between, repeated so that history matters.
fn mixed_steps<'a>(bodies: usize, seqs: &'a [Vec<u8>], own: &'a [Vec<u8>]) -> Vec<Step<'a>> {
    let mut steps = Vec::new();
    let mut k = 0;
    for round in 0..2 {
        for (i, seq) in seqs.iter().enumerate() {
            for event in 0..bodies {
                if (event + i + round) % 3 == 0 {
                    steps.push(Step::Own(&own[k % own.len()]));
                    k += 1;
                }
                steps.push(Step::Shared(event, seq));
            }
        }
    }
    steps.push(Step::Own(&own[0]));
    steps
}

#[test]
fn a_mixed_zlib_stream_reads_as_the_plain_payloads() {
    let events = events();
    let (seqs, own) = (seqs(), own_messages());
    for (encoder_level, shared_level) in [(6, 6), (6, 1), (1, 6), (9, 9), (0, 0), (3, 3)] {
        let bodies = compress_all(shared_level, &events);
        let steps = mixed_steps(bodies.len(), &seqs, &own);
        for acks in [0, 2] {
            let (messages, payloads) =
                zlib_stream(encoder_level, acks, &bodies, &steps, Mix::Independent);
            assert_eq!(
                messages[0][..2],
                zlib_header(encoder_level.cast_unsigned()),
                "header"
            );
            assert_zlib_stream_reads(&messages, &payloads, 1 + acks);
        }
    }
}

#[test]
fn edge_cases_in_a_zlib_stream() {
    let events = edge_events();
    let own = own_messages();
    let middles: [&[u8]; 5] = [
        b"",
        b"7",
        b"18446744073709551615",
        &noise(70_000, 3),
        &vec![0; 200_000],
    ];
    for level in [0, 1, 6, 9] {
        let bodies = compress_all(level, &events);
        let mut steps = Vec::new();
        for (i, middle) in middles.iter().enumerate() {
            for event in 0..bodies.len() {
                steps.push(Step::Shared(event, middle));
                if event % 2 == 0 {
                    steps.push(Step::Own(&own[(i + event) % own.len()]));
                }
            }
        }
        let (messages, payloads) = zlib_stream(6, 1, &bodies, &steps, Mix::Independent);
        assert_zlib_stream_reads(&messages, &payloads, 2);
    }
}

/// The other way to mix: the encoder keeps its history, and only the
/// message after each shared body is cut from it (`cut_history`). Every
/// reader reads it right, and own messages in a row still refer to each
/// other (so they are smaller than independent ones).
#[test]
fn cutting_history_after_each_shared_body_reads_as_the_plain_payloads() {
    let events = events();
    let (seqs, own) = (seqs(), own_messages());
    for level in [1i32, 6] {
        let bodies = compress_all(level.cast_unsigned(), &events);
        let steps = mixed_steps(bodies.len(), &seqs, &own);
        let (messages, payloads) = zlib_stream(level, 0, &bodies, &steps, Mix::Cut);
        // Own messages may refer to earlier ones: none is read alone.
        assert_zlib_stream_reads(&messages, &payloads, messages.len());
    }
    // Own messages in a row keep referring to each other: the second of
    // two equal frames is a few bytes, not a second compression.
    let mut encoder = Encoder::with_level(Compression::ZlibStream, 1).unwrap();
    let frame = &own[0];
    let mut first = Vec::new();
    encoder.encode(frame, &mut first).unwrap();
    encoder.cut_history();
    let mut cut = Vec::new();
    encoder.encode(frame, &mut cut).unwrap();
    let mut again = Vec::new();
    encoder.encode(frame, &mut again).unwrap();
    assert!(
        again.len() * 3 < cut.len(),
        "{} against {}",
        again.len(),
        cut.len()
    );
    let mut decoder = Decoder::new(Compression::ZlibStream, 1 << 20).unwrap();
    for message in [&first, &cut, &again] {
        let mut out = Vec::new();
        decoder.decode(message, &mut out).unwrap();
        assert_eq!(&out, frame);
    }
    // Cut before anything was written: nothing to cut, the header stays.
    let mut fresh = Encoder::new(Compression::ZlibStream).unwrap();
    fresh.cut_history();
    let mut message = Vec::new();
    fresh.encode(HELLO, &mut message).unwrap();
    assert_eq!(message[..2], zlib_header(6));
}

/// The negative control: the same mix, but the encoder left in its
/// ordinary mode, reads wrong (or fails) in a client; which is what
/// [`Encoder::set_independent`] is for.
#[test]
fn without_independence_the_mix_breaks() {
    let events = events();
    let bodies = compress_all(6, &events);
    let mut encoder = Encoder::new(Compression::ZlibStream).unwrap();
    let mut decoder = Decoder::new(Compression::ZlibStream, 1 << 24).unwrap();
    let mut out = Vec::new();
    let mut message = Vec::new();
    encoder.encode(HELLO, &mut message).unwrap();
    decoder.decode(&message, &mut out).unwrap();
    message.clear();
    bodies[0].1.write_stream(b"12", &mut message);
    decoder.decode(&message, &mut out).unwrap();
    // HELLO again: the encoder refers to the first HELLO at a distance
    // that, in the client's window, now lands in the shared message.
    message.clear();
    encoder.encode(HELLO, &mut message).unwrap();
    out.clear();
    let read = decoder.decode(&message, &mut out);
    assert!(read.is_err() || out != HELLO, "the control must break");
}

#[test]
fn independence_before_the_first_message_keeps_the_header() {
    let bodies = compress_all(6, &events());
    let mut encoder = Encoder::new(Compression::ZlibStream).unwrap();
    encoder.set_independent();
    let mut messages = vec![Vec::new(), Vec::new(), Vec::new()];
    encoder.encode(HELLO, &mut messages[0]).unwrap();
    assert_eq!(messages[0][..2], [0x78, 0x9c]);
    bodies[1].1.write_stream(b"3", &mut messages[1]);
    encoder.encode(HELLO, &mut messages[2]).unwrap();
    let payloads = vec![HELLO.to_vec(), bodies[1].0.payload(b"3"), HELLO.to_vec()];
    assert_zlib_stream_reads(&messages, &payloads, 1);
    // No leading flush was needed: nothing came before.
    let mut fresh = Encoder::new(Compression::ZlibStream).unwrap();
    let mut plain_first = Vec::new();
    fresh.encode(HELLO, &mut plain_first).unwrap();
    assert_eq!(messages[0].len(), plain_first.len());
}

#[test]
fn independence_after_priming_costs_one_leading_flush() {
    // A primed encoder made independent writes the leading full flush
    // (an empty stored block, five bytes) once, then full flushes.
    let mut encoder = Encoder::new(Compression::ZlibStream).unwrap();
    let mut message = Vec::new();
    encoder.encode(HELLO, &mut message).unwrap();
    encoder.set_independent();
    encoder.set_independent(); // twice is once
    message.clear();
    encoder.encode(ACK, &mut message).unwrap();
    assert_eq!(message[..5], [0, 0, 0, 0xff, 0xff], "leading full flush");
    let mut second = Vec::new();
    encoder.encode(ACK, &mut second).unwrap();
    assert_eq!(
        second,
        message[5..],
        "then each message alone, the same bytes"
    );
    assert!(second.ends_with(&[0, 0, 0xff, 0xff]));
}

#[test]
fn independence_is_a_setting_of_zlib_stream_only() {
    let payloads = frames();
    for compression in [
        Compression::ZstdStream,
        Compression::ZlibPayload,
        Compression::None,
    ] {
        let mut plain = Encoder::new(compression).unwrap();
        let mut independent = Encoder::new(compression).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        plain.encode(&payloads[0], &mut a).unwrap();
        independent.encode(&payloads[0], &mut b).unwrap();
        let was = independent.is_independent();
        independent.set_independent();
        assert_eq!(independent.is_independent(), was, "{compression:?}");
        for p in &payloads {
            a.clear();
            b.clear();
            plain.encode(p, &mut a).unwrap();
            independent.encode(p, &mut b).unwrap();
            assert_eq!(a, b, "{compression:?}: the same bytes");
        }
    }
    assert!(
        !Encoder::new(Compression::ZstdStream)
            .unwrap()
            .is_independent()
    );
    assert!(
        Encoder::new(Compression::ZlibPayload)
            .unwrap()
            .is_independent()
    );
    assert!(
        !Encoder::new(Compression::ZlibStream)
            .unwrap()
            .is_independent()
    );
}

#[test]
fn independence_stays_on_across_reset() {
    let mut encoder = Encoder::new(Compression::ZlibStream).unwrap();
    let mut message = Vec::new();
    encoder.encode(HELLO, &mut message).unwrap();
    encoder.set_independent();
    encoder.reset().unwrap();
    assert!(encoder.is_independent());
    let mut messages = vec![Vec::new(), Vec::new()];
    encoder.encode(HELLO, &mut messages[0]).unwrap();
    assert_eq!(messages[0][..2], [0x78, 0x9c], "a new stream");
    encoder.encode(HELLO, &mut messages[1]).unwrap();
    assert_zlib_stream_reads(&messages, &[HELLO.to_vec(), HELLO.to_vec()], 1);
}

/// Writes every event with every middle for payload compression.
fn payload_messages(
    bodies: &[(Event, SharedBody)],
    middles: &[&[u8]],
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut messages, mut payloads) = (Vec::new(), Vec::new());
    for middle in middles {
        for (event, body) in bodies {
            let mut message = Vec::new();
            body.write_payload(middle, &mut message);
            messages.push(message);
            payloads.push(event.payload(middle));
        }
    }
    (messages, payloads)
}

fn assert_payloads_read(messages: &[Vec<u8>], payloads: &[Vec<u8>]) {
    // flate2's reader checks the Adler-32; so does this crate's decoder.
    assert_eq!(reference_zlib_payload(messages), payloads);
    let mut decoder = Decoder::new(Compression::ZlibPayload, 1 << 24).unwrap();
    for (message, payload) in messages.iter().zip(payloads) {
        let mut out = Vec::new();
        decoder.decode(message, &mut out).unwrap();
        assert_eq!(&out, payload);
    }
}

#[test]
fn payload_compression_reads_as_the_plain_payloads() {
    let seqs = seqs();
    let mut middles: Vec<&[u8]> = seqs.iter().map(Vec::as_slice).collect();
    middles.push(b"");
    let events = events();
    for level in 0..=9 {
        let bodies = compress_all(level, &events);
        let (messages, payloads) = payload_messages(&bodies, &middles);
        for m in &messages {
            assert_eq!(m[..2], zlib_header(level), "zlib's header at level {level}");
        }
        assert_payloads_read(&messages, &payloads);
    }
}

#[test]
fn edge_cases_in_payload_compression() {
    let big = noise(70_000, 9);
    let middles: [&[u8]; 4] = [b"", b"1", &big, &vec![b'9'; 65_535]];
    for level in [0, 1, 6, 9] {
        let bodies = compress_all(level, &edge_events());
        let (messages, payloads) = payload_messages(&bodies, &middles);
        assert_payloads_read(&messages, &payloads);
    }
}

#[test]
fn a_corrupted_checksum_is_caught() {
    // The checksum is really checked, so the payload tests above test it.
    let bodies = compress_all(6, &events());
    let mut message = Vec::new();
    bodies[0].1.write_payload(b"5", &mut message);
    let last = message.len() - 1;
    message[last] ^= 1;
    let mut decoder = Decoder::new(Compression::ZlibPayload, 1 << 20).unwrap();
    assert!(decoder.decode(&message, &mut Vec::new()).is_err());
}

#[test]
fn a_stream_message_is_the_body_and_the_middle() {
    let mut compressor = SharedCompressor::new(6);
    let event = &events()[0];
    let body = compressor.compress(&event.head, &event.tail).unwrap();
    for middle in [&b""[..], b"1", b"18446744073709551615"] {
        let mut message = Vec::new();
        body.write_stream(middle, &mut message);
        assert_eq!(message.len(), body.compressed_len() + 4 + middle.len());
        let mut payload = Vec::new();
        body.write_payload(middle, &mut payload);
        assert_eq!(payload.len(), message.len() + 8);
        assert_eq!(payload[2..payload.len() - 6], message);
    }
    // Appends: what was in the buffer stays.
    let mut out = b"keep".to_vec();
    body.write_stream(b"1", &mut out);
    assert!(out.starts_with(b"keep"));
    // Clones share the bytes and write the same.
    let clone = body.clone();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    body.write_stream(b"2", &mut a);
    clone.write_stream(b"2", &mut b);
    assert_eq!(a, b);
}

#[test]
fn types_cross_threads() {
    fn check<T: Send + Sync + std::fmt::Debug>() {}
    check::<SharedBody>();
    check::<SharedCompressor>();
    check::<Encoder>();
}

#[test]
fn python_zlib_reads_shared_bodies() {
    let events = events();
    let (seqs, own) = (seqs(), own_messages());
    let bodies = compress_all(6, &events);
    let steps = mixed_steps(bodies.len(), &seqs, &own);
    let (messages, payloads) = zlib_stream(6, 1, &bodies, &steps, Mix::Independent);
    assert_eq!(python_decode("zlib-stream", &messages).unwrap(), payloads);

    let edges = compress_all(1, &edge_events());
    let mut steps = Vec::new();
    for event in 0..edges.len() {
        steps.push(Step::Shared(event, b"123"));
        steps.push(Step::Own(&own[event % own.len()]));
        steps.push(Step::Shared(event, b""));
    }
    let (messages, payloads) = zlib_stream(6, 0, &edges, &steps, Mix::Independent);
    assert_eq!(python_decode("zlib-stream", &messages).unwrap(), payloads);

    let mut middles: Vec<&[u8]> = seqs.iter().map(Vec::as_slice).collect();
    middles.push(b"");
    let (messages, payloads) = payload_messages(&bodies, &middles);
    assert_eq!(python_decode("payload", &messages).unwrap(), payloads);
    let (messages, payloads) = payload_messages(&edges, &[b"", b"42"]);
    assert_eq!(python_decode("payload", &messages).unwrap(), payloads);
}

/// One step of a generated connection.
#[derive(Clone, Debug)]
enum Op {
    Own(Vec<u8>),
    Shared { event: usize, middle: Vec<u8> },
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..max),
        "[a-z\"{}:, 0-9]{0,300}".prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any heads, tails and middles, interleaved any way with the
    /// connection's own messages, at any levels.
    #[test]
    fn any_mix_reads_as_the_plain_payloads(
        parts in prop::collection::vec((bytes(2000), bytes(5000)), 1..6),
        ops in prop::collection::vec(
            prop_oneof![
                bytes(3000).prop_map(Op::Own),
                (any::<usize>(), prop_oneof![
                    "[0-9]{0,20}".prop_map(String::into_bytes),
                    prop::collection::vec(any::<u8>(), 0..300),
                ]).prop_map(|(event, middle)| Op::Shared { event, middle }),
            ],
            0..40,
        ),
        encoder_level in 0i32..=9,
        shared_level in 0u32..=9,
        acks in 0usize..3,
    ) {
        let events: Vec<Event> = parts
            .into_iter()
            .map(|(head, tail)| Event { head, tail })
            .collect();
        let bodies = compress_all(shared_level, &events);
        let steps: Vec<Step<'_>> = ops
            .iter()
            .map(|op| match op {
                Op::Own(payload) => Step::Own(payload),
                Op::Shared { event, middle } => Step::Shared(event % bodies.len(), middle),
            })
            .collect();
        let (messages, payloads) = zlib_stream(encoder_level, acks, &bodies, &steps, Mix::Independent);
        assert_zlib_stream_reads(&messages, &payloads, 1 + acks);

        let middles: Vec<&[u8]> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Shared { middle, .. } => Some(middle.as_slice()),
                Op::Own(_) => None,
            })
            .chain([&b"0"[..]])
            .collect();
        let (messages, payloads) = payload_messages(&bodies, &middles);
        assert_payloads_read(&messages, &payloads);
    }
}
