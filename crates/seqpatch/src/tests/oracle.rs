//! Generated payloads, checked against `serde_json`.
//!
//! The generator writes JSON text itself, so that it controls what a
//! serializer would not vary: key order, whitespace everywhere, escapes
//! (including escaped top-level keys), nested and quoted `"s"`/`"op"`/`"t"`,
//! unicode, and deep nesting.

use std::fmt::Write as _;

use proptest::prelude::*;
use serde::Deserialize;
use serde_json::Value;

use super::members::Members;
use super::scan_everywhere;
use crate::{Isa, Scanner};

/// A JSON value to be written out.
#[derive(Clone, Debug)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z_]{0,12}",
        1 => Just(r#""s":1"#.to_owned()),
        1 => Just(r#"{"op":2,"t":"X","s":3}"#.to_owned()),
        1 => Just(r#"\"s\":"#.to_owned()),
        1 => Just("\\".to_owned()),
        1 => Just("\\\\\\\"".to_owned()),
        1 => Just("{[}]\"".to_owned()),
        1 => "\\PC{0,8}",
        1 => "[\u{0}-\u{1f}\u{7f}]{1,4}",
        1 => Just("日本語 ✓ 🦀".to_owned()),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just("s".to_owned()),
        1 => Just("op".to_owned()),
        1 => Just("t".to_owned()),
        1 => Just("d".to_owned()),
        4 => text(),
    ]
}

fn json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::Int),
        prop_oneof![Just(0.5), Just(-1.25e-7), Just(6.02e23), Just(1e300)].prop_map(Json::Float),
        text().prop_map(Json::Str),
    ];
    leaf.prop_recursive(24, 128, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Arr),
            prop::collection::vec((key(), inner), 0..6).prop_map(Json::Obj),
        ]
    })
}

/// A top-level member's value: mostly what the gateway allows, sometimes not.
fn op_value() -> impl Strategy<Value = Json> {
    prop_oneof![
        8 => (0i64..64).prop_map(Json::Int),
        1 => Just(Json::Int(i64::MAX)),
        1 => json(),
    ]
}

fn seq_value() -> impl Strategy<Value = Json> {
    prop_oneof![
        6 => (0i64..i64::MAX).prop_map(Json::Int),
        3 => Just(Json::Null),
        1 => json(),
    ]
}

fn event_type_value() -> impl Strategy<Value = Json> {
    prop_oneof![
        6 => "[A-Z_]{1,24}".prop_map(Json::Str),
        3 => Just(Json::Null),
        1 => json(),
    ]
}

/// The members of a top-level object, in some order.
fn members() -> impl Strategy<Value = Vec<(String, Json)>> {
    (
        prop::option::weighted(0.95, op_value()),
        prop::option::weighted(0.8, seq_value()),
        prop::option::weighted(0.8, event_type_value()),
        prop::option::weighted(0.9, json()),
        prop::collection::vec(("[a-z]{2,6}|\\PC{0,4}", json()), 0..3),
    )
        .prop_flat_map(|(op, s, t, d, extra)| {
            let mut members: Vec<(String, Json)> = [("op", op), ("s", s), ("t", t), ("d", d)]
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_owned(), v?)))
                .collect();
            members.extend(
                extra
                    .into_iter()
                    .filter(|(k, _)| !["op", "s", "t", "d"].contains(&k.as_str())),
            );
            Just(members).prop_shuffle()
        })
}

/// Writes JSON with whitespace and escapes chosen by `choices`.
struct Writer<'a> {
    out: String,
    choices: &'a [u8],
    next: usize,
}

impl Writer<'_> {
    fn choose(&mut self) -> u8 {
        let c = self
            .choices
            .get(self.next % self.choices.len().max(1))
            .copied()
            .unwrap_or(0);
        self.next += 1;
        c
    }

    fn whitespace(&mut self) {
        const WS: [&str; 8] = ["", "", "", "", " ", "\n", "\t ", "\r\n  "];
        let c = self.choose();
        self.out.push_str(WS[usize::from(c) % WS.len()]);
    }

    fn string(&mut self, s: &str) {
        self.out.push('"');
        for ch in s.chars() {
            let c = self.choose();
            match ch {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' if c.is_multiple_of(2) => self.out.push_str("\\n"),
                ch if (ch as u32) < 0x20 || c.is_multiple_of(16) => {
                    let mut units = [0u16; 2];
                    for unit in ch.encode_utf16(&mut units) {
                        let _ = write!(self.out, "\\u{unit:04x}");
                    }
                }
                '/' if c.is_multiple_of(2) => self.out.push_str("\\/"),
                ch => self.out.push(ch),
            }
        }
        self.out.push('"');
    }

    fn value(&mut self, v: &Json) {
        match v {
            Json::Null => self.out.push_str("null"),
            Json::Bool(b) => self.out.push_str(if *b { "true" } else { "false" }),
            Json::Int(i) => self.out.push_str(&i.to_string()),
            Json::Float(f) => {
                let _ = write!(self.out, "{f:e}");
            }
            Json::Str(s) => self.string(s),
            Json::Arr(items) => {
                self.out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.whitespace();
                    self.value(item);
                    self.whitespace();
                }
                self.out.push(']');
            }
            Json::Obj(members) => self.object(members),
        }
    }

    fn object(&mut self, members: &[(String, Json)]) {
        self.out.push('{');
        for (i, (k, v)) in members.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.whitespace();
            self.string(k);
            self.whitespace();
            self.out.push(':');
            self.whitespace();
            self.value(v);
            self.whitespace();
        }
        self.out.push('}');
    }
}

fn write(members: &[(String, Json)], choices: &[u8]) -> Vec<u8> {
    let mut w = Writer {
        out: String::new(),
        choices,
        next: 0,
    };
    w.whitespace();
    w.object(members);
    w.whitespace();
    w.out.into_bytes()
}

impl Members {
    /// Whether `scan` reads less than `scan_complete`: all four keys
    /// present, `d` the last of them, and some other member after it.
    fn lazy_stops_early(&self) -> bool {
        let position = |key: &str| self.0.iter().position(|(k, _)| k == key);
        let (Some(op), Some(s), Some(t), Some(d)) =
            (position("op"), position("s"), position("t"), position("d"))
        else {
            return false;
        };
        d > op.max(s).max(t) && d + 1 < self.0.len()
    }
}

fn parse<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> T {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(bytes));
    })
}

fn check(payload: &[u8], new_seq: u64) {
    let oracle: Members = parse(payload);
    let (lazy, complete) = scan_everywhere(payload);
    let Some((op, seq)) = oracle.expected() else {
        assert!(complete.is_err(), "expected an error, got {complete:?}");
        return;
    };
    let scan = complete.unwrap_or_else(|e| panic!("{e} in {}", String::from_utf8_lossy(payload)));
    assert_eq!((scan.op(), scan.seq()), (op, seq));
    assert_eq!(
        parse::<Value>(&payload[scan.op_range()]),
        oracle.get("op").cloned().unwrap()
    );
    for (key, range) in [
        ("s", scan.seq_range()),
        ("t", scan.event_type_range()),
        ("d", scan.d_range()),
    ] {
        let found = range.map(|r| parse::<Value>(&payload[r]));
        assert_eq!(found.as_ref(), oracle.get(key), "{key}");
    }

    let mut out = Vec::new();
    scan.rewrite(payload, new_seq, &mut out);
    assert_eq!(parse::<Members>(&out), oracle.clone().with_seq(new_seq));

    // The canonical envelope: the four keys in Discord's order, compact,
    // with the payload's own `t` and `d`.
    out.clear();
    scan.envelope(payload, new_seq).write_to(&mut out);
    let envelope = parse::<Members>(&out);
    let keys: Vec<&str> = envelope.0.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["t", "s", "op", "d"]);
    assert_eq!(envelope.get("s"), Some(&Value::from(new_seq)));
    assert_eq!(envelope.get("op"), oracle.get("op"));
    for key in ["t", "d"] {
        assert_eq!(
            envelope.get(key),
            Some(oracle.get(key).unwrap_or(&Value::Null)),
            "{key}"
        );
    }
    let raw = |range: Option<std::ops::Range<usize>>| {
        range.map_or("null".to_owned(), |r| {
            String::from_utf8_lossy(&payload[r]).into_owned()
        })
    };
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!(
            r#"{{"t":{},"s":{new_seq},"op":{op},"d":{}}}"#,
            raw(scan.event_type_range()),
            raw(scan.d_range())
        )
    );

    let lazy = lazy.unwrap_or_else(|e| {
        panic!(
            "scan: {e} where scan_complete succeeds: {}",
            String::from_utf8_lossy(payload)
        )
    });
    if oracle.lazy_stops_early() && lazy != scan {
        // `d` was taken to run to the closing brace, members after it and all.
        assert_eq!((lazy.op(), lazy.seq()), (op, seq));
        let (lazy_d, d) = (lazy.d_range().unwrap(), scan.d_range().unwrap());
        assert_eq!(lazy_d.start, d.start);
        let close = payload.iter().rposition(|&b| b == b'}').unwrap();
        assert!(
            payload[lazy_d.end..close]
                .iter()
                .all(u8::is_ascii_whitespace)
        );
    } else {
        assert_eq!(lazy, scan);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn scans_agree_with_serde_json(
        members in members(),
        choices in prop::collection::vec(any::<u8>(), 1..64),
        new_seq in any::<u64>(),
    ) {
        check(&write(&members, &choices), new_seq);
    }

    #[test]
    fn compact_payloads_in_discord_order_agree_with_serde_json(
        t in "[A-Z_]{1,24}",
        s in any::<u64>(),
        op in 0u64..64,
        d in json(),
        new_seq in any::<u64>(),
    ) {
        let mut w = Writer { out: String::new(), choices: &[0], next: 0 };
        w.value(&d);
        let payload = format!(r#"{{"t":"{t}","s":{s},"op":{op},"d":{}}}"#, w.out);
        check(payload.as_bytes(), new_seq);
    }

    /// Arbitrary bytes, heavy in the characters that matter: every vector
    /// implementation crosses exactly as the scalar one does, or fails as it
    /// does.
    #[test]
    fn every_isa_crosses_like_the_scalar_one(
        body in prop::collection::vec(
            prop::sample::select(&b"{}[]\"\\a \xff"[..]), 0..400),
        open in prop::sample::select(&b"{["[..]),
    ) {
        let mut buf = vec![open];
        buf.extend(body);
        let reference = crate::scalar::skip_container(&buf, 0);
        for isa in Isa::ALL.into_iter().filter(|isa| isa.is_available()) {
            prop_assert_eq!(isa.skip_container(&buf, 0), reference, "{:?}", isa);
        }
        if let Some(scanner) = Scanner::with_isa(Isa::Scalar) {
            // And a whole payload built around it never panics.
            let mut payload = br#"{"op":0,"d":"#.to_vec();
            payload.extend(&buf);
            payload.push(b'}');
            let _ = scanner.scan(&payload);
        }
    }
}
