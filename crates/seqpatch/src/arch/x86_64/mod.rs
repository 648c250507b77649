//! x86-64: SSE2 (every x86-64 CPU) and AVX2 (detected at run time).

pub(crate) mod avx2;
pub(crate) mod sse2;
