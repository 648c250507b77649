//! The one place that decides which implementation crosses containers.
//!
//! Detection runs once per process; its answer is cached in [`BEST`].

use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::Error;

/// An implementation of the container crossing that [`Scanner`](crate::Scanner)
/// uses for the values it has to step over.
///
/// All of them give identical results for every input; they differ only in
/// speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Isa {
    /// One byte at a time; the reference implementation. Always available.
    Scalar,
    /// x86-64 SSE2, 16 bytes per instruction.
    Sse2,
    /// x86-64 AVX2, 32 bytes per instruction.
    Avx2,
}

impl Isa {
    /// Every implementation, slowest first.
    pub const ALL: [Self; 3] = [Self::Scalar, Self::Sse2, Self::Avx2];

    /// Whether this build and this CPU can run the implementation.
    ///
    /// The vector ones need the `simd` feature (on by default) and x86-64.
    #[must_use]
    pub fn is_available(self) -> bool {
        match self {
            Self::Scalar => true,
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            Self::Sse2 => crate::arch::x86_64::sse2::is_available(),
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            Self::Avx2 => crate::arch::x86_64::avx2::is_available(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The fastest implementation available here, detected once per process.
    #[must_use]
    pub fn best() -> Self {
        match BEST.load(Ordering::Relaxed) {
            UNKNOWN => {
                let best = Self::detect();
                BEST.store(best as u8, Ordering::Relaxed);
                best
            }
            cached => Self::from_u8(cached),
        }
    }

    fn detect() -> Self {
        Self::ALL
            .into_iter()
            .rev()
            .find(|isa| isa.is_available())
            .unwrap_or(Self::Scalar)
    }

    fn from_u8(value: u8) -> Self {
        Self::ALL
            .into_iter()
            .find(|isa| *isa as u8 == value)
            .unwrap_or(Self::Scalar)
    }

    /// Crosses the container opening at `buf[start]`.
    ///
    /// Callers must only hold an `Isa` for which [`Isa::is_available`] is
    /// true; [`Scanner`](crate::Scanner) guarantees it.
    #[inline]
    pub(crate) fn skip_container(self, buf: &[u8], start: usize) -> Result<usize, Error> {
        match self {
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            Self::Sse2 => {
                debug_assert!(self.is_available());
                // SAFETY: a `Scanner` only holds `Sse2` after `is_available`
                // said this CPU has SSE2.
                unsafe { crate::arch::x86_64::sse2::skip_container(buf, start) }
            }
            #[cfg(all(feature = "simd", target_arch = "x86_64"))]
            Self::Avx2 => {
                debug_assert!(self.is_available());
                // SAFETY: a `Scanner` only holds `Avx2` after `is_available`
                // said this CPU has AVX2.
                unsafe { crate::arch::x86_64::avx2::skip_container(buf, start) }
            }
            _ => crate::scalar::skip_container(buf, start),
        }
    }
}

const UNKNOWN: u8 = u8::MAX;
static BEST: AtomicU8 = AtomicU8::new(UNKNOWN);
