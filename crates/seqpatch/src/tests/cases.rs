//! Fixed cases: the shapes real peers send, and every way to get it wrong.

use super::{FRAMES, scan_everywhere};
use crate::{ErrorKind, scan, scan_complete};

fn rewritten(payload: &[u8], seq: u64) -> String {
    let mut out = Vec::new();
    scan(payload).unwrap().rewrite(payload, seq, &mut out);
    String::from_utf8(out).unwrap()
}

fn error(payload: &str) -> ErrorKind {
    let (lazy, complete) = scan_everywhere(payload.as_bytes());
    let kind = complete.unwrap_err().kind();
    assert_eq!(
        lazy.unwrap_err().kind(),
        kind,
        "lazy and complete disagree on {payload}"
    );
    kind
}

#[test]
fn discord_order_is_read_without_crossing_d() {
    let payload = br#"{"t":"GUILD_CREATE","s":2,"op":0,"d":{"id":"1","members":[{"s":1}]}}"#;
    let scan = scan(payload).unwrap();
    assert_eq!(scan.op(), 0);
    assert_eq!(scan.seq(), Some(2));
    assert_eq!(scan.event_type(payload), Some("GUILD_CREATE"));
    assert_eq!(
        scan.d(payload),
        Some(&br#"{"id":"1","members":[{"s":1}]}"#[..])
    );
    assert_eq!(scan.seq_range(), Some(24..25));
}

#[test]
fn d_first_with_nested_and_quoted_s_keys() {
    let payload = include_bytes!("../../../../testdata/json/d_first.json");
    let scan = scan(payload).unwrap();
    assert_eq!((scan.op(), scan.seq()), (0, Some(12)));
    assert_eq!(scan.event_type(payload), Some("MESSAGE_UPDATE"));
    let out = rewritten(payload, 7);
    assert!(out.contains(r#""s" : 7 ,"#), "{out}");
    assert!(out.starts_with(r#"{"d":{"s":99,"#), "{out}");
}

#[test]
fn a_number_as_wide_is_written_over_in_place_and_any_other_width_spliced() {
    let payload = br#"{"t":"MESSAGE_CREATE","s":4521,"op":0,"d":{"s":1,"content":"x"}}"#;
    let scan = scan(payload).unwrap();
    for (seq, want) in [
        (1234, "1234"),
        (9999, "9999"),
        (7, "7"),
        (123_456, "123456"),
        (u64::MAX, "18446744073709551615"),
    ] {
        // Appended after what the buffer already holds.
        let mut out = b"[frame]".to_vec();
        scan.rewrite(payload, seq, &mut out);
        let want = format!(
            r#"[frame]{{"t":"MESSAGE_CREATE","s":{want},"op":0,"d":{{"s":1,"content":"x"}}}}"#
        );
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }
}

#[test]
fn null_and_missing_s_are_rewritten() {
    assert_eq!(
        rewritten(br#"{"t":null,"s":null,"op":0,"d":{}}"#, 5),
        r#"{"t":null,"s":5,"op":0,"d":{}}"#
    );
    assert_eq!(
        rewritten(br#"{"op":0,"d":{}}"#, 5),
        r#"{"s":5,"op":0,"d":{}}"#
    );
    assert_eq!(
        rewritten(br#" { "op" : 0 } "#, u64::MAX),
        r#" {"s":18446744073709551615, "op" : 0 } "#
    );
}

#[test]
fn envelopes_are_canonical() {
    let payload =
        b" {\n \"d\" : {\"s\":1} , \"op\":0, \"x\":[], \"t\" : \"MESSAGE_CREATE\", \"s\":9}";
    let mut out = Vec::new();
    scan(payload)
        .unwrap()
        .envelope(payload, 10)
        .write_to(&mut out);
    assert_eq!(out, br#"{"t":"MESSAGE_CREATE","s":10,"op":0,"d":{"s":1}}"#);
    // In Discord's order, compact, it is the rewrite itself.
    let discord = br#"{"t":"READY","s":1,"op":0,"d":{"v":10}}"#;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let scan = scan(discord).unwrap();
    scan.envelope(discord, 77).write_to(&mut a);
    scan.rewrite(discord, 77, &mut b);
    assert_eq!(a, b);
    // Missing `t` and `d` are null.
    out.clear();
    super::super::scan(br#"{"op":11}"#)
        .unwrap()
        .envelope(br#"{"op":11}"#, 3)
        .write_to(&mut out);
    assert_eq!(out, br#"{"t":null,"s":3,"op":11,"d":null}"#);
}

#[test]
fn client_payloads_in_any_shape() {
    for (payload, op, d) in [
        (r#"{"op":1,"d":null}"#, 1, Some("null")),
        (r#"{"op":1,"d":251}"#, 1, Some("251")),
        (r#"{"d":{"token":"x"},"op":2}"#, 2, Some(r#"{"token":"x"}"#)),
        (r#"{"op":11}"#, 11, None),
        (
            "\t{\r\n\"op\" :\n4 ,\"d\":\"a\\\"b\"\n}\n",
            4,
            Some(r#""a\"b""#),
        ),
    ] {
        let (lazy, complete) = scan_everywhere(payload.as_bytes());
        let scan = complete.unwrap();
        assert_eq!(lazy.unwrap(), scan);
        assert_eq!(scan.op(), op, "{payload}");
        assert_eq!(scan.seq(), None);
        assert_eq!(scan.event_type(payload.as_bytes()), None);
        assert_eq!(
            scan.d(payload.as_bytes())
                .map(|d| std::str::from_utf8(d).unwrap()),
            d
        );
    }
}

#[test]
fn escaped_keys_are_decoded_and_quoted_keys_never_match() {
    let payload = br#"{"\u0073":3,"op":0,"x":"\"s\":4","\u006fp\u0000":9}"#;
    let (lazy, complete) = scan_everywhere(payload);
    let scan = complete.unwrap();
    assert_eq!(lazy.unwrap(), scan);
    assert_eq!((scan.op(), scan.seq()), (0, Some(3)));
    assert_eq!(
        rewritten(payload, 8),
        r#"{"\u0073":8,"op":0,"x":"\"s\":4","\u006fp\u0000":9}"#
    );
}

#[test]
fn every_frame_in_testdata_scans_both_ways() {
    for (name, payload) in FRAMES {
        let (lazy, complete) = scan_everywhere(payload);
        let (lazy, complete) = (lazy.unwrap(), complete.unwrap());
        assert_eq!(lazy, complete, "{name}");
    }
}

#[test]
fn members_after_a_last_d_are_read_only_by_scan_complete() {
    let payload = br#"{"t":null,"s":1,"op":0,"d":{},"x":{}}"#;
    let lazy = scan(payload).unwrap();
    assert_eq!(lazy.d(payload), Some(&br#"{},"x":{}"#[..]));
    let complete = scan_complete(payload).unwrap();
    assert_eq!(complete.d(payload), Some(&b"{}"[..]));
}

#[test]
fn malformed_top_levels_are_errors() {
    assert_eq!(error(""), ErrorKind::NotAnObject);
    assert_eq!(error("[1]"), ErrorKind::NotAnObject);
    assert_eq!(error("{}"), ErrorKind::MissingOp);
    assert_eq!(error(r#"{"d":1}"#), ErrorKind::MissingOp);
    assert_eq!(error(r#"{"op":1"#), ErrorKind::UnexpectedEnd);
    assert_eq!(error(r#"{"op":1,}"#), ErrorKind::UnexpectedByte(b'}'));
    assert_eq!(error(r#"{"op" 1}"#), ErrorKind::UnexpectedByte(b'1'));
    assert_eq!(error(r#"{"op":1 "d":2}"#), ErrorKind::UnexpectedByte(b'"'));
    assert_eq!(error("{op:1}"), ErrorKind::UnexpectedByte(b'o'));
    assert_eq!(error(r#"{"op":1}x"#), ErrorKind::TrailingBytes);
    assert_eq!(error(r#"{"op":1}{}"#), ErrorKind::TrailingBytes);
    assert_eq!(
        error(r#"{"op":1,"d":tru}"#),
        ErrorKind::UnexpectedByte(b't')
    );
    assert_eq!(error(r#"{"op":1,"d":01}"#), ErrorKind::UnexpectedByte(b'1'));
    assert_eq!(error(r#"{"op":1,"d":1.}"#), ErrorKind::InvalidNumber);
    assert_eq!(error(r#"{"op":1,"d":{"a":[1}"#), ErrorKind::UnexpectedEnd);
    assert_eq!(error(r#"{"op":1,"d":"abc}"#), ErrorKind::UnexpectedEnd);
    assert_eq!(error("{\"op\":1,\"x\u{1}\":2}"), ErrorKind::InvalidString);
    assert_eq!(error(r#"{"op":1,"\q":2}"#), ErrorKind::InvalidString);
    assert_eq!(error(r#"{"op":1,"\ud800":2}"#), ErrorKind::InvalidString);
    assert_eq!(error(r#"{"op":1,"\udc00":2}"#), ErrorKind::InvalidString);
}

#[test]
fn op_s_and_t_must_have_gateway_types() {
    for bad in [
        r#""1""#,
        "-1",
        "1.0",
        "1e2",
        "null",
        "18446744073709551616",
        "{}",
        "01",
    ] {
        assert_eq!(
            error(&format!(r#"{{"op":{bad}}}"#)),
            ErrorKind::InvalidOp,
            "op {bad}"
        );
    }
    for bad in [
        r#""1""#,
        "-1",
        "2.5",
        "1E2",
        "true",
        "18446744073709551616",
        "[]",
    ] {
        assert_eq!(
            error(&format!(r#"{{"s":{bad},"op":0}}"#)),
            ErrorKind::InvalidSeq,
            "s {bad}"
        );
    }
    for bad in ["1", "true", "{}", "[]"] {
        assert_eq!(
            error(&format!(r#"{{"t":{bad},"op":0}}"#)),
            ErrorKind::InvalidEventType,
            "t {bad}"
        );
    }
}

#[test]
fn duplicate_gateway_keys_are_errors() {
    assert_eq!(error(r#"{"op":1,"op":2}"#), ErrorKind::DuplicateKey("op"));
    assert_eq!(
        error(r#"{"s":1,"op":0,"\u0073":2}"#),
        ErrorKind::DuplicateKey("s")
    );
    assert_eq!(
        error(r#"{"d":1,"op":0,"d":2}"#),
        ErrorKind::DuplicateKey("d")
    );
    // Other keys may repeat, as JSON allows.
    assert!(scan_complete(br#"{"x":1,"op":0,"x":2}"#).is_ok());
}

#[test]
fn truncated_discord_payloads_are_errors() {
    let full = br#"{"t":"X","s":1,"op":0,"d":{"a":{"b":1}}}"#;
    for cut in 0..full.len() {
        let (lazy, complete) = scan_everywhere(&full[..cut]);
        assert!(complete.is_err(), "cut at {cut}");
        // Lazy reading checks only the ends of `d`: a cut that leaves them
        // matching (`{"a":{"b":1}}` -> `{"a":{"b":1}`) is not noticed.
        if cut != full.len() - 1 {
            assert!(lazy.is_err(), "cut at {cut}: {lazy:?}");
        }
    }
}

#[test]
fn errors_say_what_and_where() {
    let err = scan(br#"{"op":1, "s":"x"}"#).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidSeq);
    assert_eq!(err.offset(), 13);
    assert_eq!(
        err.to_string(),
        "\"s\" is neither null nor an unsigned 64-bit integer at byte 13"
    );
}

#[test]
fn public_types_cross_tasks() {
    fn shareable<T: Send + Sync + std::fmt::Debug + 'static>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    shareable::<crate::Scan>();
    shareable::<crate::Scanner>();
    shareable::<crate::Isa>();
    shareable::<crate::Error>();
    shareable::<crate::Patched<'static>>();
    shareable::<crate::Envelope<'static>>();
    error::<crate::Error>();
}
