//! Every fixed case moved across offsets and paddings, so that each
//! structural byte lands at every position of a 64-byte block (twice the
//! widest vector, AVX2's 32 bytes, and then some).

use super::{FRAMES, scan_everywhere};
use std::ops::Range;

use crate::{Isa, Scan};

/// Cases whose `d` has strings, escapes and brackets in awkward places.
const CASES: &[&[u8]] = &[
    br#"{"d":{"a":"}\"]","b":[[[{}]]],"c":"\\"},"op":0,"s":1}"#,
    br#"{"d":["\\\\\"{","\\\\",{"s":[]}],"op":1}"#,
    br#"{"d":"{[\"]}","op":3}"#,
];

/// The scan of the same payload with `by` bytes of whitespace before it.
fn shifted(scan: &Scan, by: usize) -> impl Fn(&Scan) -> bool {
    let at = move |r: Range<usize>| r.start + by..r.end + by;
    let want = (
        scan.op(),
        scan.seq(),
        at(scan.op_range()),
        scan.seq_range().map(at),
        scan.event_type_range().map(at),
        scan.d_range().map(at),
    );
    move |got: &Scan| {
        let got = (
            got.op(),
            got.seq(),
            got.op_range(),
            got.seq_range(),
            got.event_type_range(),
            got.d_range(),
        );
        got == want
    }
}

#[test]
fn fixed_cases_at_every_offset_and_padding() {
    // A run of 130 backslashes: 65 escaped backslashes across block edges.
    let backslashes = format!(r#"{{"d":{{"x":"{}"}},"op":2}}"#, r"\\".repeat(65));
    let cases = CASES
        .iter()
        .copied()
        .chain(FRAMES.iter().map(|(_, p)| *p))
        .chain([backslashes.as_bytes()]);
    for payload in cases {
        let (_, reference) = scan_everywhere(payload);
        let reference =
            reference.unwrap_or_else(|e| panic!("{e} in {}", String::from_utf8_lossy(payload)));
        for pad in 0..=128 {
            for (before, after) in [(pad, 0), (0, pad), (pad, 129 - pad)] {
                // `before` spaces move every byte; the buffer's start moves
                // the alignment too.
                let mut buf = vec![b'x'; pad % 7];
                let start = buf.len();
                buf.extend(std::iter::repeat_n(b' ', before));
                buf.extend_from_slice(payload);
                buf.extend(std::iter::repeat_n(b'\n', after));
                let padded = &buf[start..];
                let (lazy, complete) = scan_everywhere(padded);
                let same = shifted(&reference, before);
                assert!(same(&complete.unwrap()), "pad {before}/{after}");
                assert!(same(&lazy.unwrap()), "lazy, pad {before}/{after}");
            }
        }
    }
}

#[test]
fn containers_at_every_block_position() {
    // A value with every structural class, preceded by a growing string so
    // that each class crosses each block boundary.
    let tail = br#"{"k":["\\\"",{"a":"]}"},"\\\\"],"z":{}}"#;
    for pad in 0..=130 {
        let mut d = format!(r#"["{}","#, "a".repeat(pad)).into_bytes();
        d.extend_from_slice(tail);
        d.push(b']');
        let end = crate::scalar::skip_container(&d, 0);
        assert_eq!(end, Ok(d.len()), "pad {pad}");
        for isa in Isa::ALL.into_iter().filter(|isa| isa.is_available()) {
            assert_eq!(isa.skip_container(&d, 0), end, "{isa:?}, pad {pad}");
            // Cut anywhere, it must fail the same way everywhere.
            for cut in (1..d.len()).step_by(7) {
                assert_eq!(
                    isa.skip_container(&d[..cut], 0),
                    crate::scalar::skip_container(&d[..cut], 0),
                    "{isa:?}, pad {pad}, cut {cut}"
                );
            }
        }
    }
}
