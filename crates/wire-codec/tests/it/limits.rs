//! Bad input gets an error that says what was wrong, never a panic, and
//! never more memory than the limit.

use proptest::prelude::*;
use wire_codec::{Compression, Decoded, Decoder, Encoder, Error};

use super::{COMPRESSED, encode_all};

#[test]
fn a_decompression_bomb_stops_at_the_limit() {
    let bomb = vec![0u8; 64 << 20];
    let limit = 1 << 20;
    for compression in COMPRESSED {
        let message = &encode_all(compression, std::slice::from_ref(&bomb))[0];
        assert!(
            message.len() < 1 << 20,
            "{compression:?}: {} bytes",
            message.len()
        );
        let mut decoder = Decoder::new(compression, limit).unwrap();
        let mut out = Vec::new();
        let err = decoder.decode(message, &mut out).unwrap_err();
        assert!(
            matches!(err, Error::MessageTooLarge { limit: l } if l == limit),
            "{err}"
        );
        assert!(
            out.capacity() < 2 * limit,
            "{compression:?}: grew to {}",
            out.capacity()
        );
    }
}

#[test]
fn a_message_just_at_the_limit_is_accepted() {
    let payload = vec![b'x'; 4096];
    for compression in COMPRESSED.into_iter().chain([Compression::None]) {
        let message = &encode_all(compression, std::slice::from_ref(&payload))[0];
        let mut out = Vec::new();
        let mut decoder = Decoder::new(compression, 4096).unwrap();
        assert_eq!(decoder.decode(message, &mut out).unwrap(), Decoded::Message);
        let mut decoder = Decoder::new(compression, 4095).unwrap();
        assert!(matches!(
            decoder.decode(message, &mut Vec::new()),
            Err(Error::MessageTooLarge { limit: 4095 })
        ));
    }
}

#[test]
fn zlib_stream_buffers_no_more_than_the_limit_waiting_for_a_suffix() {
    let mut decoder = Decoder::new(Compression::ZlibStream, 10_000).unwrap();
    let mut out = Vec::new();
    for _ in 0..9 {
        assert_eq!(
            decoder.decode(&[1; 1000], &mut out).unwrap(),
            Decoded::Partial
        );
    }
    let err = decoder.decode(&[1; 1001], &mut out).unwrap_err();
    assert_eq!(
        err.to_string(),
        "message larger than the limit of 10000 bytes"
    );
}

#[test]
fn garbage_is_corrupt_and_says_which_codec() {
    let garbage = b"this is not compressed at all\x00\x00\xff\xff";
    for (compression, codec) in [
        (Compression::ZlibStream, "zlib"),
        (Compression::ZstdStream, "zstd"),
        (Compression::ZlibPayload, "zlib"),
    ] {
        let mut decoder = Decoder::new(compression, 1 << 20).unwrap();
        let err = decoder.decode(garbage, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { codec: c, .. } if *c == codec),
            "{compression:?}: {err}"
        );
        assert!(
            err.to_string()
                .starts_with(&format!("invalid {codec} data: ")),
            "{err}"
        );
    }
}

#[test]
fn a_truncated_payload_stream_is_truncated() {
    let message = &encode_all(Compression::ZlibPayload, &[b"{\"op\":11}".to_vec()])[0];
    let mut decoder = Decoder::new(Compression::ZlibPayload, 1 << 20).unwrap();
    let err = decoder
        .decode(&message[..message.len() - 3], &mut Vec::new())
        .unwrap_err();
    assert!(matches!(err, Error::Truncated), "{err}");
    // The decoder is fine for the next message.
    let mut out = Vec::new();
    decoder.decode(message, &mut out).unwrap();
    assert_eq!(out, b"{\"op\":11}");
}

#[test]
fn a_zlib_stream_that_ends_mid_connection_is_corrupt() {
    // A complete zlib stream (what payload compression sends) is not a
    // zlib-stream message: its end would end the connection's stream.
    let mut encoder = Encoder::new(Compression::ZlibPayload).unwrap();
    let mut message = Vec::new();
    encoder.encode(b"{}", &mut message).unwrap();
    message.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut decoder = Decoder::new(Compression::ZlibStream, 1 << 20).unwrap();
    assert!(matches!(
        decoder.decode(&message, &mut Vec::new()),
        Err(Error::Corrupt { codec: "zlib", .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary bytes, split arbitrarily into messages: never a panic,
    /// never more than the limit (plus one read chunk) in memory.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..4000),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        suffix in any::<bool>(),
    ) {
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        cuts.sort_unstable();
        for compression in COMPRESSED {
            let mut decoder = Decoder::new(compression, 8192).unwrap();
            let mut start = 0;
            for &cut in cuts.iter().chain([&bytes.len()]) {
                let mut message = bytes[start..cut].to_vec();
                if suffix {
                    message.extend_from_slice(&[0, 0, 0xff, 0xff]);
                }
                start = cut;
                let mut out = Vec::new();
                if decoder.decode(&message, &mut out).is_err() {
                    break;
                }
                prop_assert!(out.len() <= 8192);
            }
        }
    }
}
