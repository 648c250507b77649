//! Vector implementations, one module per instruction set.
//!
//! Each one only computes a block's [`Masks`](crate::block::Masks); the
//! crossing itself is [`crate::block::skip_container`]. Which one runs is
//! decided once, in [`crate::dispatch`].

#[cfg(all(feature = "simd", target_arch = "x86_64"))]
pub(crate) mod x86_64;
