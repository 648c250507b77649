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

/// The replacement text: `N`, or `"s":N,` where the payload had no `s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Middle {
    buf: [u8; Self::CAPACITY],
    len: u8,
}

impl Middle {
    /// `"s":` + 20 digits + `,`.
    const CAPACITY: usize = 25;

    fn new(prefix: &[u8], seq: u64, suffix: &[u8]) -> Self {
        let mut digits = itoa::Buffer::new();
        let mut middle = Self {
            buf: [0; Self::CAPACITY],
            len: 0,
        };
        for part in [prefix, digits.format(seq).as_bytes(), suffix] {
            let at = usize::from(middle.len);
            middle.buf[at..at + part.len()].copy_from_slice(part);
            // At most 25 bytes in all.
            #[allow(clippy::cast_possible_truncation)]
            {
                middle.len += part.len() as u8;
            }
        }
        middle
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
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
        self.head.len() + usize::from(self.middle.len) + self.tail.len()
    }

    /// Always `false`: a patched payload holds at least `{`, `s` and `}`.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Appends the patched payload to `out`, reserving once.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.reserve(self.len());
        for part in self.slices() {
            out.extend_from_slice(part);
        }
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
                middle: Middle::new(b"", seq, b""),
                tail: &payload[value.end..],
            }
        } else {
            // A scanned payload always has `op`, so a member follows.
            let open = self.open as usize + 1;
            Patched {
                head: &payload[..open],
                middle: Middle::new(b"\"s\":", seq, b","),
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
