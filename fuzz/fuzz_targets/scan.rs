//! Differential fuzzing of `seqpatch`: every implementation against every
//! other, and all of them against `serde_json`.
//!
//! For any input, every [`Isa`] must give the same result, and nothing may
//! panic. Where `serde_json` parses the input as an object, the scan must
//! agree with it on `op`, `s`, `t` and `d`, fail exactly where the top level
//! is not a gateway payload, and the rewrite must change `s` and nothing
//! else.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seqpatch::{Isa, Scanner};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// A top-level object's members in order, duplicates kept.
#[derive(Debug, PartialEq)]
struct Members(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Value>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(V)
    }
}

impl Members {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn expected(&self) -> Option<(u64, Option<u64>)> {
        for key in ["op", "s", "t", "d"] {
            if self.0.iter().filter(|(k, _)| k == key).count() > 1 {
                return None;
            }
        }
        let op = self.get("op")?.as_u64()?;
        let seq = match self.get("s") {
            None | Some(Value::Null) => None,
            Some(s) => Some(s.as_u64()?),
        };
        match self.get("t") {
            None | Some(Value::Null | Value::String(_)) => Some((op, seq)),
            Some(_) => None,
        }
    }
}

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
    let mut want = oracle.0;
    match want.iter_mut().find(|(k, _)| k == "s") {
        Some((_, v)) => *v = Value::from(424_242),
        None => want.insert(0, ("s".to_owned(), Value::from(424_242))),
    }
    let rewritten: Members = serde_json::from_slice(&out).expect("the rewrite parses");
    assert_eq!(rewritten, Members(want));
});
