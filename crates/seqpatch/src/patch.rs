//! Writing a payload with a new sequence number.

use crate::scan::Scan;

/// A payload with its `s` replaced, as three slices: the bytes before the
/// number, the number, and the bytes after it.
///
/// Nothing is copied until [`write_to`](Self::write_to); a writer can also
/// send [`slices`](Self::slices) vectored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patched<'p> {
    head: &'p [u8],
    middle: Middle,
    tail: &'p [u8],
}

/// The replacement text, `N` or `"s":N,`, kept inline: `buf[start..end]`.
///
/// The digits are always written right-aligned in `buf[4..28]` (with leading
/// zero digits before them) by three eight-byte stores; `"s":` goes just
/// before the first significant digit and `,` at `buf[28]` when a whole
/// member is inserted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Middle {
    buf: [u8; 29],
    start: u8,
    end: u8,
}

impl Middle {
    /// Just the number.
    fn number(seq: u64) -> Self {
        let mut buf = [0; 29];
        let start = write_decimal(seq, &mut buf);
        Self {
            buf,
            start,
            end: 28,
        }
    }

    /// `"s":N,`, a whole member to insert.
    fn member(seq: u64) -> Self {
        let mut buf = [0; 29];
        let start = write_decimal(seq, &mut buf) - 4;
        let at = usize::from(start);
        buf[at..at + 4].copy_from_slice(b"\"s\":");
        buf[28] = b',';
        Self {
            buf,
            start,
            end: 29,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[usize::from(self.start)..usize::from(self.end)]
    }
}

/// Writes `n` in decimal right-aligned into `buf[4..28]` and returns the
/// index of its first significant digit.
fn write_decimal(n: u64, buf: &mut [u8; 29]) -> u8 {
    const E8: u64 = 100_000_000;
    // u64::MAX < 10^20, so the first part has at most four digits.
    for (i, part) in [n / (E8 * E8), n / E8 % E8, n % E8].into_iter().enumerate() {
        let at = 4 + 8 * i;
        buf[at..at + 8].copy_from_slice(&eight_digits(part).to_le_bytes());
    }
    // At most 20 digits, so the result is at least 8.
    #[allow(clippy::cast_possible_truncation)]
    let digits = n.checked_ilog10().map_or(1, |log| log + 1) as u8;
    28 - digits
}

/// The eight decimal digits of `n < 10^8`, as ASCII, most significant first
/// in memory (little-endian), computed in one register.
fn eight_digits(n: u64) -> u64 {
    debug_assert!(n < 100_000_000);
    // Two four-digit halves in 32-bit lanes, the high half in the low lane.
    let x = (n / 10_000) | ((n % 10_000) << 32);
    // Every lane is below 10^4, where x / 100 == (x * 10486) >> 20.
    let hundreds = ((x * 10_486) >> 20) & 0x0000_007f_0000_007f;
    let y = hundreds | ((x - hundreds * 100) << 16);
    // Every 16-bit lane is below 100, where y / 10 == (y * 103) >> 10.
    let tens = ((y * 103) >> 10) & 0x000f_000f_000f_000f;
    let z = tens | ((y - tens * 10) << 8);
    z + 0x3030_3030_3030_3030
}

impl Patched<'_> {
    /// The three parts, in order.
    #[must_use]
    pub fn slices(&self) -> [&[u8]; 3] {
        [self.head, self.middle.as_bytes(), self.tail]
    }

    /// The length of the patched payload in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.head.len() + self.middle.as_bytes().len() + self.tail.len()
    }

    /// Always `false`: a patched payload holds at least `{`, `s` and `}`.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Appends the patched payload to `out`, reserving once.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.reserve(self.len());
        out.extend_from_slice(self.head);
        out.extend_from_slice(self.middle.as_bytes());
        out.extend_from_slice(self.tail);
    }
}

/// A payload rewritten into the canonical envelope,
/// `{"t":T,"s":N,"op":OP,"d":D}`, compact, in that order, whatever the order
/// and whitespace of the original: five slices, `t`'s and `d`'s values
/// borrowed from the payload untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope<'p> {
    t: &'p [u8],
    /// `,"s":N,"op":OP,"d":`, inline: at most 5 + 20 + 6 + 20 + 5 bytes.
    middle: [u8; 56],
    middle_len: u8,
    d: &'p [u8],
}

impl Envelope<'_> {
    /// The five parts, in order: `{"t":`, `t`, `,"s":N,"op":OP,"d":`, `d`,
    /// `}`.
    #[must_use]
    pub fn slices(&self) -> [&[u8]; 5] {
        [
            b"{\"t\":",
            self.t,
            &self.middle[..usize::from(self.middle_len)],
            self.d,
            b"}",
        ]
    }

    /// The length of the envelope in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.slices().iter().map(|s| s.len()).sum()
    }

    /// Always `false`: an envelope holds at least its four keys.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Appends the envelope to `out`, reserving once.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.reserve(self.len());
        for part in self.slices() {
            out.extend_from_slice(part);
        }
    }
}

impl Scan {
    /// The payload in the canonical envelope with `s` set to `seq`:
    /// `{"t":…,"s":seq,"op":…,"d":…}`, compact, in Discord's key order. A
    /// missing `t` or `d` is written as `null`; members other than the four
    /// are dropped. The values of `t` and `d` are the payload's own bytes.
    ///
    /// Clients that find `op`, `s` and `t` by plain text search (twilight)
    /// need exactly this order, so a proxy writes every payload this way.
    #[must_use]
    pub fn envelope<'p>(&self, payload: &'p [u8], seq: u64) -> Envelope<'p> {
        let mut middle = [0u8; 56];
        let mut len = 0;
        let (seq, op) = (Middle::number(seq), Middle::number(self.op));
        for part in [
            b",\"s\":",
            seq.as_bytes(),
            b",\"op\":",
            op.as_bytes(),
            b",\"d\":",
        ] {
            middle[len..len + part.len()].copy_from_slice(part);
            len += part.len();
        }
        Envelope {
            t: self
                .event_type_range()
                .map_or(&b"null"[..], |r| &payload[r]),
            middle,
            // At most 56.
            #[allow(clippy::cast_possible_truncation)]
            middle_len: len as u8,
            d: self.d_range().map_or(&b"null"[..], |r| &payload[r]),
        }
    }

    /// The payload with `s` set to `seq`.
    ///
    /// Where `s` was a number or `null`, just that value is replaced; where
    /// the payload had no `s`, `"s":seq,` is inserted as its first member.
    /// Every other byte is kept as it was.
    #[must_use]
    pub fn patch<'p>(&self, payload: &'p [u8], seq: u64) -> Patched<'p> {
        if let Some(value) = self.seq_range() {
            Patched {
                head: &payload[..value.start],
                middle: Middle::number(seq),
                tail: &payload[value.end..],
            }
        } else {
            // A scanned payload always has `op`, so a member follows.
            let open = self.open as usize + 1;
            Patched {
                head: &payload[..open],
                middle: Middle::member(seq),
                tail: &payload[open..],
            }
        }
    }

    /// Appends the payload with `s` set to `seq` to `out`; see
    /// [`patch`](Self::patch). Where the new number is as wide as the old
    /// one (the usual case: a client's `s` is near the shard's), the
    /// payload is copied once and the digits are written over in place.
    pub fn rewrite(&self, payload: &[u8], seq: u64, out: &mut Vec<u8>) {
        let patched = self.patch(payload, seq);
        if let Some(value) = self.seq_range() {
            let digits = patched.middle.as_bytes();
            if digits.len() == value.len() {
                let start = out.len();
                out.extend_from_slice(payload);
                out[start + value.start..start + value.end].copy_from_slice(digits);
                return;
            }
        }
        patched.write_to(out);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn decimal_is_to_string(n in prop_oneof![
            any::<u64>(), 0u64..1000, Just(0), Just(u64::MAX), Just(10u64.pow(8)), Just(10u64.pow(16)),
        ]) {
            let (number, member) = (Middle::number(n), Middle::member(n));
            prop_assert_eq!(number.as_bytes(), n.to_string().into_bytes());
            prop_assert_eq!(member.as_bytes(), format!("\"s\":{n},").into_bytes());
        }

        #[test]
        fn eight_digits_is_format(n in 0u64..100_000_000) {
            prop_assert_eq!(eight_digits(n).to_le_bytes().to_vec(), format!("{n:08}").into_bytes());
        }
    }
}
