//! Tests that reach inside the crate: every implementation against the
//! scalar reference, and everything against a full JSON parser.

mod cases;
mod members;
mod oracle;
mod sweep;

use crate::{Isa, Scan, Scanner};

/// Every scanner this build and CPU can run.
fn scanners() -> Vec<Scanner> {
    Isa::ALL.into_iter().filter_map(Scanner::with_isa).collect()
}

/// The payloads in `testdata/json`, shared with the benchmarks and the fuzz
/// corpus.
pub(crate) const FRAMES: &[(&str, &[u8])] = &[
    (
        "hello",
        include_bytes!("../../../../testdata/json/hello.json"),
    ),
    (
        "heartbeat_ack",
        include_bytes!("../../../../testdata/json/heartbeat_ack.json"),
    ),
    (
        "resumed",
        include_bytes!("../../../../testdata/json/resumed.json"),
    ),
    (
        "presence_update",
        include_bytes!("../../../../testdata/json/presence_update.json"),
    ),
    (
        "message_create",
        include_bytes!("../../../../testdata/json/message_create.json"),
    ),
    (
        "d_first",
        include_bytes!("../../../../testdata/json/d_first.json"),
    ),
    (
        "client_identify",
        include_bytes!("../../../../testdata/json/client_identify.json"),
    ),
];

/// Scans with every implementation, both ways, asserts they all agree, and
/// returns the lazy and the complete result.
fn scan_everywhere(payload: &[u8]) -> (Result<Scan, crate::Error>, Result<Scan, crate::Error>) {
    let reference = Scanner::with_isa(Isa::Scalar).unwrap();
    let lazy = reference.scan(payload);
    let complete = reference.scan_complete(payload);
    // The Discord-order fast path must never change an answer.
    assert_eq!(
        reference.scan_members(payload, true),
        lazy,
        "fast path vs general path"
    );
    for scanner in scanners() {
        assert_eq!(scanner.scan(payload), lazy, "{:?} scan", scanner.isa());
        assert_eq!(
            scanner.scan_complete(payload),
            complete,
            "{:?} scan_complete",
            scanner.isa()
        );
    }
    (lazy, complete)
}
