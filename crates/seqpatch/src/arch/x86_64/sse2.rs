//! SSE2: four 16-byte lanes per 64-byte block.
//!
//! SSE2 is part of the x86-64 baseline; it is still detected, like every
//! other path, so that the dispatch has one shape.

use core::arch::x86_64::{
    __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
};

use crate::block::{self, Masks};
use crate::error::Error;

/// Whether this CPU can run [`skip_container`].
pub(crate) fn is_available() -> bool {
    std::arch::is_x86_feature_detected!("sse2")
}

/// Crosses the container opening at `buf[start]`; see
/// [`crate::scalar::skip_container`] for the rules.
///
/// # Safety
///
/// The CPU must support SSE2 ([`is_available`]).
#[target_feature(enable = "sse2")]
pub(crate) unsafe fn skip_container(buf: &[u8], start: usize) -> Result<usize, Error> {
    block::skip_container(buf, start, |block| masks(block))
}

#[target_feature(enable = "sse2")]
#[inline]
fn masks(block: &[u8; 64]) -> Masks {
    let quote = _mm_set1_epi8(b'"'.cast_signed());
    let backslash = _mm_set1_epi8(b'\\'.cast_signed());
    // `[` | 0x20 == `{` and `]` | 0x20 == `}`; no other bytes map there.
    let case = _mm_set1_epi8(0x20);
    let open = _mm_set1_epi8(b'{'.cast_signed());
    let close = _mm_set1_epi8(b'}'.cast_signed());
    let bits = |v: __m128i| u64::from(_mm_movemask_epi8(v).cast_unsigned() & 0xffff);

    let mut m = Masks::default();
    for (lane, chunk) in block.chunks_exact(16).enumerate() {
        // SAFETY: `chunk` is 16 readable bytes and `loadu` has no alignment
        // requirement.
        let v = unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) };
        let folded = _mm_or_si128(v, case);
        let shift = lane * 16;
        m.quote |= bits(_mm_cmpeq_epi8(v, quote)) << shift;
        m.backslash |= bits(_mm_cmpeq_epi8(v, backslash)) << shift;
        m.open |= bits(_mm_cmpeq_epi8(folded, open)) << shift;
        m.close |= bits(_mm_cmpeq_epi8(folded, close)) << shift;
    }
    m
}
