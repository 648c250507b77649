//! Differential fuzzing of `seqpatch`: every implementation against every
//! other, and all of them against `serde_json`.
//!
//! For any input, every [`Isa`] must give the same result, and nothing may
//! panic. Where `serde_json` parses the input as an object, the scan must
//! agree with it on `op`, `s`, `t` and `d`, fail exactly where the top level
//! is not a gateway payload, and the rewrite must change `s` and nothing
//! else; the canonical envelope has the four keys in Discord's order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seqpatch::{Isa, Scanner};
use serde_json::Value;

#[path = "../../crates/seqpatch/src/tests/members.rs"]
mod members;

use members::Members;

fuzz_target!(|data: &[u8]| {
    let scanners: Vec<Scanner> = Isa::ALL.into_iter().filter_map(Scanner::with_isa).collect();
    let lazy = scanners[0].scan(data);
    let complete = scanners[0].scan_complete(data);
    for scanner in &scanners[1..] {
        assert_eq!(scanner.scan(data), lazy, "{:?}", scanner.isa());
        assert_eq!(scanner.scan_complete(data), complete, "{:?}", scanner.isa());
    }
    if let (Ok(lazy), Ok(complete)) = (&lazy, &complete) {
        assert_eq!((lazy.op(), lazy.seq()), (complete.op(), complete.seq()));
    }

    let Ok(oracle) = serde_json::from_slice::<Members>(data) else {
        return;
    };
    let Some((op, seq)) = oracle.expected() else {
        assert!(complete.is_err(), "{complete:?}");
        return;
    };
    let scan = complete.expect("a gateway payload that serde_json reads");
    assert_eq!((scan.op(), scan.seq()), (op, seq));
    for (key, range) in [
        ("op", Some(scan.op_range())),
        ("s", scan.seq_range()),
        ("t", scan.event_type_range()),
        ("d", scan.d_range()),
    ] {
        let found = range.map(|r| serde_json::from_slice::<Value>(&data[r]).expect("a value"));
        assert_eq!(found.as_ref(), oracle.get(key), "{key}");
    }

    let mut out = Vec::new();
    scan.rewrite(data, 424_242, &mut out);
    let rewritten: Members = serde_json::from_slice(&out).expect("the rewrite parses");
    assert_eq!(rewritten, oracle.clone().with_seq(424_242));

    // The canonical envelope: t, s, op, d in that order, the payload's own
    // t and d.
    out.clear();
    scan.envelope(data, 424_242).write_to(&mut out);
    let envelope: Members = serde_json::from_slice(&out).expect("the envelope parses");
    let keys: Vec<&str> = envelope.0.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["t", "s", "op", "d"]);
    for key in ["t", "d"] {
        assert_eq!(envelope.get(key), Some(oracle.get(key).unwrap_or(&Value::Null)));
    }
});
