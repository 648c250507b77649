//! Crossing a container 64 bytes at a time, from four byte-class bitmasks.
//!
//! Each vector implementation only has to say, for a 64-byte block, which
//! bytes are `"`, `\`, an opening bracket or a closing bracket ([`Masks`]).
//! Everything else — which bytes are escaped, which are inside strings, and
//! where the nesting depth returns to zero — is plain integer arithmetic on
//! those masks, shared by all of them, and follows the rules of
//! [`crate::scalar`] exactly.

use crate::error::{Error, ErrorKind};

/// Bit `i` of each mask describes byte `i` of a 64-byte block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Masks {
    pub(crate) quote: u64,
    pub(crate) backslash: u64,
    pub(crate) open: u64,
    pub(crate) close: u64,
}

/// The state that crosses from one block to the next.
#[derive(Clone, Copy, Debug, Default)]
struct Carry {
    /// 1 if the first byte of the next block is escaped.
    escaped: u64,
    /// All ones if the next block starts inside a string.
    in_string: u64,
}

/// Which bytes of the block are escaped by an unescaped backslash before them.
#[inline]
fn escaped(backslash: u64, carry: &mut Carry) -> u64 {
    let mut escaped = carry.escaped;
    // A backslash that is itself escaped escapes nothing.
    let mut starts = backslash & !escaped;
    carry.escaped = 0;
    while starts != 0 {
        let i = starts.trailing_zeros();
        if i == 63 {
            carry.escaped = 1;
            break;
        }
        let next = 1u64 << (i + 1);
        escaped |= next;
        starts &= !((1u64 << i) | next);
    }
    escaped
}

/// Bit `i` set iff an odd number of bits at or below `i` are set.
#[inline]
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

/// Crosses the container that opens at `buf[start]` (`{` or `[`) and returns
/// the index just past its closing bracket, computing each block's masks with
/// `masks`.
///
/// `masks` is inlined into each caller, so a caller compiled with a target
/// feature gets the whole loop compiled with it.
// `always`: without inlining, the loop would be compiled without the
// caller's target features and call `masks` through a function boundary.
#[allow(clippy::inline_always)]
#[inline(always)]
pub(crate) fn skip_container(
    buf: &[u8],
    start: usize,
    masks: impl Fn(&[u8; 64]) -> Masks,
) -> Result<usize, Error> {
    debug_assert!(matches!(buf.get(start), Some(b'{' | b'[')));
    let mut carry = Carry::default();
    let mut depth = 0u64;
    let mut at = start;
    let mut padded = [0u8; 64];
    while at < buf.len() {
        let rest = &buf[at..];
        let block: &[u8; 64] = if let Some(full) = rest.first_chunk::<64>() {
            full
        } else {
            // The last, short block, padded with zeros: a zero byte is none
            // of the four classes.
            padded[..rest.len()].copy_from_slice(rest);
            &padded
        };
        let m = masks(block);
        let escaped = escaped(m.backslash, &mut carry);
        let quotes = m.quote & !escaped;
        let in_string = prefix_xor(quotes) ^ carry.in_string;
        carry.in_string = 0u64.wrapping_sub(in_string >> 63);
        let structural = !in_string & !escaped;
        let open = m.open & structural;
        let close = m.close & structural;

        let closes = u64::from(close.count_ones());
        if depth > closes {
            // The depth cannot reach zero inside this block.
            depth = depth + u64::from(open.count_ones()) - closes;
        } else {
            let mut brackets = open | close;
            while brackets != 0 {
                let i = brackets.trailing_zeros();
                let bit = 1u64 << i;
                if open & bit != 0 {
                    depth += 1;
                } else {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(at + i as usize + 1);
                    }
                }
                brackets &= !bit;
            }
        }
        at += 64;
    }
    Err(Error::new(ErrorKind::UnexpectedEnd, buf.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_xor_marks_the_inside_of_quote_pairs() {
        assert_eq!(prefix_xor(0b1001), 0b0111);
        assert_eq!(prefix_xor(1 << 63), 1 << 63);
        assert_eq!(prefix_xor(1), u64::MAX);
    }

    #[test]
    fn escapes_pair_up_runs_of_backslashes() {
        let mut carry = Carry::default();
        // `\\\"`: bytes 0 and 2 escape bytes 1 and 3.
        assert_eq!(escaped(0b0111, &mut carry), 0b1010);
        assert_eq!(carry.escaped, 0);
        // A backslash in the last byte escapes the next block's first byte.
        assert_eq!(escaped(1 << 63, &mut carry), 0);
        assert_eq!(carry.escaped, 1);
        // ...which, being a backslash, then escapes nothing.
        assert_eq!(escaped(1, &mut carry), 1);
        assert_eq!(carry.escaped, 0);
    }
}
