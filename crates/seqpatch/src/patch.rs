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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Middle {
    buf: [u8; 25],
    start: u8,
    end: u8,
}

impl Middle {
    /// Just the number.
    fn number(seq: u64) -> Self {
        let mut buf = [0; 25];
        let start = write_decimal(seq, &mut buf, 20);
        Self {
            buf,
            start,
            end: 20,
        }
    }

    /// `"s":N,`, a whole member to insert.
    fn member(seq: u64) -> Self {
        let mut buf = [0; 25];
        let start = write_decimal(seq, &mut buf, 24) - 4;
        buf[usize::from(start)..usize::from(start) + 4].copy_from_slice(b"\"s\":");
        buf[24] = b',';
        Self {
            buf,
            start,
            end: 25,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[usize::from(self.start)..usize::from(self.end)]
    }
}

/// Writes `n` in decimal into `buf`, ending just before `end`, and returns
/// where it starts. `end` must be at least 20 (`u64::MAX` has 20 digits).
// Every cast is of a value below 200.
#[allow(clippy::cast_possible_truncation)]
fn write_decimal(mut n: u64, buf: &mut [u8; 25], end: usize) -> u8 {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let mut at = end;
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        at -= 2;
        buf[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        at -= 2;
        buf[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        buf[at] = b'0' + n as u8;
    }
    at as u8
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

impl Scan {
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
    /// [`patch`](Self::patch).
    pub fn rewrite(&self, payload: &[u8], seq: u64, out: &mut Vec<u8>) {
        self.patch(payload, seq).write_to(out);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn decimal_is_to_string(n in prop_oneof![any::<u64>(), 0u64..1000, Just(u64::MAX)]) {
            let (number, member) = (Middle::number(n), Middle::member(n));
            prop_assert_eq!(number.as_bytes(), n.to_string().into_bytes());
            prop_assert_eq!(member.as_bytes(), format!("\"s\":{n},").into_bytes());
        }
    }
}
