//! What the encoders write decodes, message by message, in the reference
//! decoders (flate2 and zstd used directly, as clients use them) and in this
//! crate's decoders.

use flate2::{Decompress, FlushDecompress};
use proptest::prelude::*;
use wire_codec::{Compression, Decoded, Decoder, Encoder};

use super::{COMPRESSED, decode_all, encode_all, frames};

/// A zlib-stream client: one `Decompress` for the connection, sync flush
/// per message (twilight, discord.py).
pub(super) fn reference_zlib_stream(messages: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut ctx = Decompress::new(true);
    messages
        .iter()
        .map(|m| {
            assert!(
                m.ends_with(&[0, 0, 0xff, 0xff]),
                "every message ends with the sync flush"
            );
            let mut out = Vec::with_capacity(1 << 20);
            ctx.decompress_vec(m, &mut out, FlushDecompress::Sync)
                .unwrap();
            out
        })
        .collect()
}

/// A zstd-stream client: one `DCtx` for the connection, each message
/// decompressed until its input is consumed (twilight).
fn reference_zstd_stream(messages: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut ctx = zstd::zstd_safe::DCtx::create();
    messages
        .iter()
        .map(|m| {
            let mut out = Vec::with_capacity(1 << 20);
            let mut input = zstd::zstd_safe::InBuffer::around(m);
            while input.pos() < m.len() {
                let mut output = zstd::zstd_safe::OutBuffer::around_pos(&mut out, 0);
                ctx.decompress_stream(&mut output, &mut input).unwrap();
            }
            out
        })
        .collect()
}

/// A payload-compression client: each message on its own (`zlib.inflate`).
pub(super) fn reference_zlib_payload(messages: &[Vec<u8>]) -> Vec<Vec<u8>> {
    messages
        .iter()
        .map(|m| {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(&m[..]), &mut out)
                .unwrap();
            out
        })
        .collect()
}

fn reference(compression: Compression, messages: &[Vec<u8>]) -> Vec<Vec<u8>> {
    match compression {
        Compression::ZlibStream => reference_zlib_stream(messages),
        Compression::ZstdStream => reference_zstd_stream(messages),
        Compression::ZlibPayload => reference_zlib_payload(messages),
        _ => messages.to_vec(),
    }
}

/// Every compressed mode writes `payloads` so that the reference decoders
/// and this crate's decoder read them back.
fn assert_round_trips(payloads: &[Vec<u8>]) {
    for compression in COMPRESSED {
        let messages = encode_all(compression, payloads);
        assert_eq!(
            reference(compression, &messages),
            payloads,
            "{compression:?}"
        );
        assert_eq!(
            decode_all(compression, &messages),
            payloads,
            "{compression:?}"
        );
    }
}

#[test]
fn frames_decode_in_the_reference_decoders() {
    assert_round_trips(&frames());
}

#[test]
fn streams_start_as_discords_do() {
    let payloads = frames();
    let zlib = encode_all(Compression::ZlibStream, &payloads);
    assert_eq!(
        zlib[0][..2],
        [0x78, 0x9c],
        "zlib header of the default level"
    );
    assert_ne!(
        zlib[1][..2],
        [0x78, 0x9c],
        "later messages continue the stream"
    );
    let zstd = encode_all(Compression::ZstdStream, &payloads);
    // Magic, a frame header without content size or checksum, and Discord's
    // 256 KiB window.
    assert_eq!(zstd[0][..6], [0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x40]);
    assert_ne!(
        zstd[1][..4],
        [0x28, 0xb5, 0x2f, 0xfd],
        "one frame per connection"
    );
    for m in encode_all(Compression::ZlibPayload, &payloads) {
        assert_eq!(m[..2], [0x78, 0x9c], "each payload its own stream");
    }
}

#[test]
fn an_empty_payload_is_still_a_whole_message() {
    assert_round_trips(&[b"{}".to_vec(), Vec::new(), Vec::new(), b"{}".to_vec()]);
}

#[test]
fn plain_is_the_payload_itself() {
    let payloads = frames();
    assert_eq!(encode_all(Compression::None, &payloads), payloads);
    assert_eq!(decode_all(Compression::None, &payloads), payloads);
}

#[test]
fn reset_starts_a_new_connection() {
    let payloads = frames();
    for compression in COMPRESSED {
        let mut encoder = Encoder::new(compression).unwrap();
        let mut decoder = Decoder::new(compression, 1 << 20).unwrap();
        let mut message = Vec::new();
        encoder.encode(&payloads[0], &mut message).unwrap();
        let mut out = Vec::new();
        decoder.decode(&message, &mut out).unwrap();

        // A new connection: both sides start over, and a fresh client
        // (the reference decoder) reads what the encoder now writes.
        encoder.reset().unwrap();
        decoder.reset().unwrap();
        let messages: Vec<Vec<u8>> = payloads
            .iter()
            .map(|p| {
                let mut m = Vec::new();
                encoder.encode(p, &mut m).unwrap();
                m
            })
            .collect();
        assert_eq!(
            reference(compression, &messages),
            payloads,
            "{compression:?}"
        );
        for (m, p) in messages.iter().zip(&payloads) {
            out.clear();
            decoder.decode(m, &mut out).unwrap();
            assert_eq!(&out, p);
        }
    }
}

#[test]
fn zlib_stream_messages_split_across_websocket_messages() {
    let payloads = frames();
    let messages = encode_all(Compression::ZlibStream, &payloads);
    let mut decoder = Decoder::new(Compression::ZlibStream, 1 << 20).unwrap();
    for (m, p) in messages.iter().zip(&payloads) {
        let mut out = Vec::new();
        let cut = m.len() / 2;
        assert_eq!(
            decoder.decode(&m[..cut], &mut out).unwrap(),
            Decoded::Partial
        );
        assert!(out.is_empty());
        assert_eq!(
            decoder.decode(&m[cut..], &mut out).unwrap(),
            Decoded::Message
        );
        assert_eq!(&out, p);
    }
}

fn payloads() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            "[a-z\"{}:, ]{0,2000}".prop_map(String::into_bytes),
            (1usize..200_000).prop_map(|n| vec![b'a'; n]),
        ],
        1..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_messages_round_trip_in_every_mode(payloads in payloads()) {
        for compression in COMPRESSED.into_iter().chain([Compression::None]) {
            let messages = encode_all(compression, &payloads);
            prop_assert_eq!(&reference(compression, &messages), &payloads);
            prop_assert_eq!(&decode_all(compression, &messages), &payloads);
        }
    }

    #[test]
    fn parts_encode_as_their_concatenation(payload in prop::collection::vec(any::<u8>(), 0..3000), a in 0usize..3000, b in 0usize..3000) {
        let (a, b) = (a.min(payload.len()), b.min(payload.len()));
        let (a, b) = (a.min(b), a.max(b));
        for compression in COMPRESSED {
            let mut encoder = Encoder::new(compression).unwrap();
            let mut message = Vec::new();
            encoder.encode_parts(&[&payload[..a], &payload[a..b], &payload[b..]], &mut message).unwrap();
            prop_assert_eq!(&decode_all(compression, &[message]), &vec![payload.clone()]);
        }
    }
}
