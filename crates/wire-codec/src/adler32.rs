//! Adler-32, the checksum that ends a zlib stream: computed in one pass,
//! continued over more bytes, and combined from two parts' checksums
//! without reading the parts again.
//!
//! A checksum is two sums modulo 65,521: `a`, one plus every byte, and `b`,
//! the sum of the successive values of `a`; it is written `b << 16 | a`.

/// The modulus: the largest prime below 2^16.
const BASE: u32 = 65_521;

/// Bytes summed between two reductions: zlib's `NMAX`, the most for which
/// `b` cannot pass 2^32 even if every byte is 255.
const NMAX: usize = 5552;

/// The checksum of no bytes: where every stream starts.
pub(crate) const EMPTY: u32 = 1;

/// The checksum of the bytes that gave `adler`, then `data`.
///
/// The plain recurrence, reduced every [`NMAX`] bytes: about a byte per
/// cycle, which on this project's machine beat the block-weighted forms
/// (sums of 16 bytes with weights 16 to 1) by a third; those pay only with
/// SIMD.
pub(crate) fn update(adler: u32, data: &[u8]) -> u32 {
    let (mut a, mut b) = (adler & 0xffff, adler >> 16);
    for chunk in data.chunks(NMAX) {
        for &x in chunk {
            a += u32::from(x);
            b += a;
        }
        a %= BASE;
        b %= BASE;
    }
    (b << 16) | a
}

/// The checksum of `A` then `B`, from the checksum of `A`, the checksum of
/// `B` and the length of `B` modulo [`BASE`] (zlib's `adler32_combine`).
///
/// With `n = len(B)`, and `B`'s sums started from 1 as every checksum's
/// are: `a = a1 + a2 - 1`, since the 1 is counted once; and
/// `b = b1 + b2 + n * (a1 - 1)`, since each of the `n` values of `a` summed
/// into `b` while reading `B` carries `A`'s bytes, `a1 - 1`, on top of what
/// `b2` counted.
pub(crate) fn combine(adler1: u32, adler2: u32, len2_mod: u32) -> u32 {
    let base = u64::from(BASE);
    let (a1, b1) = (u64::from(adler1 & 0xffff), u64::from(adler1 >> 16));
    let (a2, b2) = (u64::from(adler2 & 0xffff), u64::from(adler2 >> 16));
    let n = u64::from(len2_mod % BASE);
    let a = (a1 + a2 + base - 1) % base;
    let b = (b1 + b2 + n * (a1 + base - 1)) % base;
    // Both are below BASE, so they fit in 16 bits.
    #[allow(clippy::cast_possible_truncation)]
    let adler = ((b << 16) | a) as u32;
    adler
}

/// `len` modulo [`BASE`], as [`combine`] takes it.
pub(crate) fn len_mod(len: usize) -> u16 {
    // Below BASE, which is below 2^16.
    #[allow(clippy::cast_possible_truncation)]
    let rem = (len as u64 % u64::from(BASE)) as u16;
    rem
}

#[cfg(test)]
mod tests {
    use flate2::{Compress, FlushCompress};

    use super::*;

    /// The checksum as zlib (zlib-rs, through flate2) computes it: the last
    /// four bytes of a zlib stream, big-endian.
    fn reference(data: &[u8]) -> u32 {
        let mut ctx = Compress::new(flate2::Compression::none(), true);
        let mut out = Vec::with_capacity(data.len() + data.len() / 1000 * 5 + 64);
        ctx.compress_vec(data, &mut out, FlushCompress::Finish)
            .unwrap();
        assert_eq!(
            ctx.total_in(),
            data.len() as u64,
            "one call compresses it all"
        );
        u32::from_be_bytes(out[out.len() - 4..].try_into().unwrap())
    }

    /// Random bytes from a seeded xorshift, and the worst cases for the
    /// sums: all zero and all 255.
    fn inputs(len: usize, seed: u64) -> [Vec<u8>; 3] {
        let mut state = seed | 1;
        let random = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect();
        [random, vec![0; len], vec![0xff; len]]
    }

    const LENGTHS: [usize; 14] = [
        0, 1, 2, 15, 16, 17, 5551, 5552, 5553, 11_104, 65_520, 65_521, 65_522, 200_003,
    ];

    #[test]
    fn update_matches_zlib() {
        assert_eq!(update(EMPTY, b""), 1);
        // The example of RFC 1950's era: "Wikipedia" is 0x11E60398.
        assert_eq!(update(EMPTY, b"Wikipedia"), 0x11e6_0398);
        for (i, len) in LENGTHS.into_iter().enumerate() {
            for data in inputs(len, i as u64) {
                assert_eq!(update(EMPTY, &data), reference(&data), "{len} bytes");
            }
        }
    }

    #[test]
    fn update_continues_a_checksum() {
        for data in inputs(70_000, 3) {
            for cut in [0, 1, 4096, 5000, 65_521, 69_999, 70_000] {
                let head = update(EMPTY, &data[..cut]);
                assert_eq!(update(head, &data[cut..]), reference(&data), "{cut}");
            }
        }
    }

    #[test]
    fn combine_equals_the_checksum_of_the_concatenation() {
        for (i, len1) in LENGTHS.into_iter().enumerate() {
            for (j, len2) in LENGTHS.into_iter().enumerate() {
                let [x, zeros, ones] = inputs(len1 + len2, (i * 31 + j) as u64);
                for data in [x, zeros, ones] {
                    let (a, b) = data.split_at(len1);
                    let combined =
                        combine(update(EMPTY, a), update(EMPTY, b), u32::from(len_mod(len2)));
                    assert_eq!(combined, reference(&data), "{len1} + {len2}");
                }
            }
        }
    }

    #[test]
    fn len_mod_wraps_at_the_modulus() {
        assert_eq!(len_mod(0), 0);
        assert_eq!(len_mod(65_520), 65_520);
        assert_eq!(len_mod(65_521), 0);
        assert_eq!(len_mod(65_522 + 65_521), 1);
    }
}
