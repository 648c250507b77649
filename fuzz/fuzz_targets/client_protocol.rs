//! The client side of the gateway protocol on arbitrary input: what a bot,
//! or anyone with the proxy's port, can send.
//!
//! The input is cut at `0xff` bytes (never in UTF-8) into payloads, fed to
//! one connection's `Protocol` (identified after the number of payloads
//! the first byte says), and, cut the same way into websocket frames, to
//! the message assembler. Nothing may panic; every outcome is a request
//! or a close with one of Discord's codes; no message over the limit is
//! ever assembled.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_server::fuzzing;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let payloads: Vec<&[u8]> = rest.split(|&b| b == 0xff).collect();
    let outcomes = fuzzing::protocol(&payloads, usize::from(first % 8));
    for code in outcomes.iter().flatten() {
        assert!(fuzzing::CLOSE_CODES.contains(code), "close {code}");
    }
    assert!(outcomes.len() <= payloads.len());

    let frames: Vec<(u8, bool, &[u8])> = payloads
        .iter()
        .map(|payload| match payload.split_first() {
            Some((&head, body)) => (head, head & 0x80 != 0, body),
            None => (1, true, &payload[..]),
        })
        .collect();
    let max = 64 + usize::from(first) * 16;
    for outcome in fuzzing::assemble(&frames, max) {
        match outcome {
            Ok(len) => assert!(len <= max),
            Err(code) => assert_eq!(code, 4002),
        }
    }
});
