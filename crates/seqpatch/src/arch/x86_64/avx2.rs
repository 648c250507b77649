//! AVX2: two 32-byte lanes per 64-byte block.

use core::arch::x86_64::{
    __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_or_si256,
    _mm256_set1_epi8,
};

use crate::block::{self, Masks};
use crate::error::Error;

/// Whether this CPU can run [`skip_container`].
pub(crate) fn is_available() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// Crosses the container opening at `buf[start]`; see
/// [`crate::scalar::skip_container`] for the rules.
///
/// # Safety
///
/// The CPU must support AVX2 ([`is_available`]).
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn skip_container(buf: &[u8], start: usize) -> Result<usize, Error> {
    block::skip_container(buf, start, |block| masks(block))
}

#[target_feature(enable = "avx2")]
#[inline]
fn masks(block: &[u8; 64]) -> Masks {
    let quote = _mm256_set1_epi8(b'"'.cast_signed());
    let backslash = _mm256_set1_epi8(b'\\'.cast_signed());
    // `[` | 0x20 == `{` and `]` | 0x20 == `}`; no other bytes map there.
    let case = _mm256_set1_epi8(0x20);
    let open = _mm256_set1_epi8(b'{'.cast_signed());
    let close = _mm256_set1_epi8(b'}'.cast_signed());
    let bits = |v: __m256i| u64::from(_mm256_movemask_epi8(v).cast_unsigned());

    let mut m = Masks::default();
    for (lane, chunk) in block.chunks_exact(32).enumerate() {
        // SAFETY: `chunk` is 32 readable bytes and `loadu` has no alignment
        // requirement.
        let v = unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) };
        let folded = _mm256_or_si256(v, case);
        let shift = lane * 32;
        m.quote |= bits(_mm256_cmpeq_epi8(v, quote)) << shift;
        m.backslash |= bits(_mm256_cmpeq_epi8(v, backslash)) << shift;
        m.open |= bits(_mm256_cmpeq_epi8(folded, open)) << shift;
        m.close |= bits(_mm256_cmpeq_epi8(folded, close)) << shift;
    }
    m
}
