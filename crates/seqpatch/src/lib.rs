//! Find the top-level `op`, `t`, `s` and `d` of a Discord gateway payload
//! without parsing it, and rewrite `s`.
//!
//! A gateway proxy relays each upstream dispatch to many clients, each with
//! its own sequence number. Parsing every payload into a DOM to change one
//! number costs far more than the relay itself; finding the first `"s":` in
//! the text is fast but wrong as soon as `d` comes first or a message
//! contains `"s":`. This crate reads the top level of the JSON object and
//! nothing else, and is right for every key order, any whitespace, nested
//! `"s"` keys and strings that contain them.
//!
//! ```
//! let payload = br#"{"t":"MESSAGE_CREATE","s":41,"op":0,"d":{"content":"\"s\":7"}}"#;
//!
//! let scan = seqpatch::scan(payload)?;
//! assert_eq!(scan.op(), 0);
//! assert_eq!(scan.seq(), Some(41));
//! assert_eq!(scan.event_type(payload), Some("MESSAGE_CREATE"));
//! assert_eq!(scan.d(payload), Some(&br#"{"content":"\"s\":7"}"#[..]));
//!
//! // Into a buffer the caller owns and reuses...
//! let mut out = Vec::new();
//! scan.rewrite(payload, 1_000, &mut out);
//! assert_eq!(out, br#"{"t":"MESSAGE_CREATE","s":1000,"op":0,"d":{"content":"\"s\":7"}}"#);
//!
//! // ...or as three slices for a vectored write, without copying the payload...
//! // (and `scan.envelope(payload, 1_000)` writes any key order as Discord's
//! // own `{"t":…,"s":…,"op":…,"d":…}`, compact).
//! let patched = scan.patch(payload, 1_000);
//! let [head, number, tail] = patched.slices();
//! assert_eq!((head, number), (&br#"{"t":"MESSAGE_CREATE","s":"#[..], &b"1000"[..]));
//! assert_eq!(tail, br#","op":0,"d":{"content":"\"s\":7"}}"#);
//! # Ok::<(), seqpatch::Error>(())
//! ```
//!
//! # How far a payload is read
//!
//! - [`scan`] reads members until it has seen all four keys. When `d` is the
//!   last of them, as in Discord's order `t, s, op, d`, its value is not read
//!   at all: the cost is the same for a 100-byte heartbeat ACK and a
//!   megabyte `GUILD_CREATE`.
//! - [`scan_complete`] reads every member to the end; use it for payloads
//!   from untrusted peers.
//! - Both check the top level completely and step over other values
//!   structurally (strings closed, brackets balanced); neither validates the
//!   inside of `d`. See [`Scanner::scan_complete`] for the exact contract.
//!
//! # Speed
//!
//! Stepping over a large value (`d` first, or unknown members) is done 64
//! bytes at a time with SSE2 or AVX2, chosen once per process at run time
//! ([`Isa::best`]). The `simd` feature (on by default) turns these paths on;
//! without it, or on other architectures, the scalar reference runs. They
//! all give identical results.
//!
//! # Panics
//!
//! Nothing here panics on any input bytes. Methods of [`Scan`] that take a
//! `payload` panic if it is shorter than the payload that was scanned.

// `unsafe` is allowed only where the vector intrinsics are, and where the
// dispatch calls them after detection.
#[allow(unsafe_code)]
mod arch;
// Shared by the vector implementations; built where there is one.
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
mod block;
#[allow(unsafe_code)]
mod dispatch;
mod error;
mod patch;
mod scalar;
mod scan;

#[cfg(test)]
mod tests;

pub use crate::dispatch::Isa;
pub use crate::error::{Error, ErrorKind};
pub use crate::patch::{Envelope, Patched};
pub use crate::scan::{Scan, Scanner};

/// Scans a gateway payload with the fastest implementation available,
/// reading no further than it must; see [`Scanner::scan`].
///
/// # Errors
///
/// If the payload is not a gateway payload; see [`Scanner::scan`].
pub fn scan(payload: &[u8]) -> Result<Scan, Error> {
    Scanner::new().scan(payload)
}

/// Scans a whole gateway payload, every top-level member to the end; see
/// [`Scanner::scan_complete`].
///
/// # Errors
///
/// If the payload is not a gateway payload; see [`Scanner::scan`].
pub fn scan_complete(payload: &[u8]) -> Result<Scan, Error> {
    Scanner::new().scan_complete(payload)
}
