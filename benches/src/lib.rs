//! Fixtures and baselines shared by the benchmarks.
//!
//! The payloads are the captured-shape frames in `testdata/json` plus
//! `GUILD_CREATE`s generated here at the sizes the benchmarks name. The
//! baselines are what `seqpatch` is measured against: a memcpy, the naive
//! rewrite at the first `"s":` (what twilight's raw-payload scanner does), a
//! sonic-rs lookup, and a full `serde_json` parse and re-serialisation.

use std::fmt::Write as _;

pub mod e2e;
pub mod report;
pub mod stream;

/// One benchmark payload: a name and its bytes in Discord's key order.
#[derive(Clone, Debug)]
pub struct Payload {
    /// A short name, used as the benchmark id.
    pub name: &'static str,
    /// `{"t":…,"s":…,"op":…,"d":…}`, compact.
    pub discord_order: Vec<u8>,
}

impl Payload {
    /// The same payload with `d` first: `{"d":…,"op":…,"s":…,"t":…}`.
    ///
    /// # Panics
    ///
    /// If the payload is not a valid dispatch (fixtures are).
    #[must_use]
    pub fn d_first(&self) -> Vec<u8> {
        let p = &self.discord_order;
        let scan = seqpatch::scan_complete(p).expect("fixture scans");
        let t = &p[scan.event_type_range().expect("fixture has t")];
        let s = &p[scan.seq_range().expect("fixture has s")];
        let d = scan.d(p).expect("fixture has d");
        let mut out = b"{\"d\":".to_vec();
        out.extend_from_slice(d);
        out.extend_from_slice(format!(",\"op\":{},\"s\":", scan.op()).as_bytes());
        out.extend_from_slice(s);
        out.extend_from_slice(b",\"t\":");
        out.extend_from_slice(t);
        out.push(b'}');
        out
    }
}

/// The payloads the `seqpatch` benchmark measures: 0.4 KB `PRESENCE_UPDATE`,
/// 1 KB `MESSAGE_CREATE`, and 30 KB and 700 KB `GUILD_CREATE`.
#[must_use]
pub fn payloads() -> Vec<Payload> {
    let trim = |bytes: &[u8]| bytes.trim_ascii_end().to_vec();
    vec![
        Payload {
            name: "presence_update_0.4k",
            discord_order: trim(include_bytes!("../../testdata/json/presence_update.json")),
        },
        Payload {
            name: "message_create_1k",
            discord_order: trim(include_bytes!("../../testdata/json/message_create.json")),
        },
        Payload {
            name: "guild_create_30k",
            discord_order: guild_create(32, 16, 10),
        },
        Payload {
            name: "guild_create_700k",
            discord_order: guild_create(950, 200, 50),
        },
    ]
}

/// A `GUILD_CREATE` dispatch shaped like Discord's, with the given numbers of
/// members (and as many presences), channels and roles.
#[must_use]
pub fn guild_create(members: usize, channels: usize, roles: usize) -> Vec<u8> {
    let guild = 1_133_370_411_937_771_600_u64;
    let mut d = String::with_capacity(members * 700 + channels * 300 + 4096);
    let _ = write!(
        d,
        r#"{{"id":"{guild}","name":"Rust \"s\": Gateway Enjoyers","icon":"a_0f1e2d3c4b5a69788796a5b4c3d2e1f0","owner_id":"80351110224678912","afk_timeout":300,"verification_level":1,"default_message_notifications":1,"explicit_content_filter":2,"features":["COMMUNITY","NEWS","ANIMATED_ICON","INVITE_SPLASH"],"mfa_level":1,"premium_tier":2,"premium_subscription_count":9,"preferred_locale":"en-US","nsfw_level":0,"max_members":500000,"max_video_channel_users":25,"joined_at":"2023-07-25T20:18:36.713000+00:00","large":true,"unavailable":false,"member_count":{members},"lazy":true,"version":1732780800000,"#
    );
    d.push_str(r#""roles":["#);
    for r in 0..roles {
        if r > 0 {
            d.push(',');
        }
        let _ = write!(
            d,
            r#"{{"version":1732780800000,"unicode_emoji":null,"tags":{{}},"position":{r},"permissions":"1071698660929","name":"role {r}","mentionable":false,"managed":false,"id":"{}","icon":null,"hoist":false,"flags":0,"color":3447003,"colors":{{"primary_color":3447003,"secondary_color":null,"tertiary_color":null}}}}"#,
            guild + r as u64
        );
    }
    d.push_str(r#"],"channels":["#);
    for c in 0..channels {
        if c > 0 {
            d.push(',');
        }
        let _ = write!(
            d,
            r#"{{"version":1732780800000,"type":0,"topic":"Channel {c}: talk about {{\"op\":0,\"s\":{c}}} here","rate_limit_per_user":0,"position":{c},"permission_overwrites":[{{"type":0,"id":"{guild}","deny":"1024","allow":"0"}}],"parent_id":"1133370412537544700","nsfw":false,"name":"general-{c}","last_message_id":"1311245068558139443","id":"{}","flags":0}}"#,
            guild + 10_000 + c as u64
        );
    }
    d.push_str(r#"],"members":["#);
    for m in 0..members {
        if m > 0 {
            d.push(',');
        }
        let _ = write!(
            d,
            r#"{{"user":{{"username":"user{m}","public_flags":0,"id":"{}","global_name":"User {m}","discriminator":"0","clan":null,"avatar_decoration_data":null,"avatar":"a1b2c3d4e5f60718293a4b5c6d7e8f90"}},"roles":["{}"],"premium_since":null,"pending":false,"nick":null,"mute":false,"joined_at":"2024-02-11T10:07:33.123000+00:00","flags":0,"deaf":false,"communication_disabled_until":null,"banner":null,"avatar":null}}"#,
            290_926_444_748_734_466_u64 + m as u64,
            guild + (m % roles.max(1)) as u64
        );
    }
    d.push_str(r#"],"presences":["#);
    for m in 0..members {
        if m > 0 {
            d.push(',');
        }
        let _ = write!(
            d,
            r#"{{"user":{{"id":"{}"}},"status":"online","client_status":{{"desktop":"online"}},"activities":[{{"type":4,"state":"\"s\": {m} \\o/","name":"Custom Status","id":"custom","created_at":1732781512345}}]}}"#,
            290_926_444_748_734_466_u64 + m as u64
        );
    }
    d.push_str(r#"],"emojis":[],"stickers":[],"threads":[],"stage_instances":[],"guild_scheduled_events":[],"soundboard_sounds":[],"voice_states":[]}"#);
    format!(r#"{{"t":"GUILD_CREATE","s":2,"op":0,"d":{d}}}"#).into_bytes()
}

/// A dispatch with `d` first whose `d` holds `"s"` keys of its own.
pub const NESTED_S: &[u8] = include_bytes!("../../testdata/json/d_first.json");

/// The naive rewrite: the value after the first `"s":` anywhere in the text,
/// replaced by `seq`. Returns `false` where there is no such key.
///
/// This is what a raw-text search does (twilight's `GatewayEventDeserializer`
/// finds keys this way): fast, and wrong as soon as a string or a nested
/// object holds `"s":` before the top-level key.
pub fn naive_rewrite(
    finder: &memchr::memmem::Finder<'_>,
    payload: &[u8],
    seq: u64,
    out: &mut Vec<u8>,
) -> bool {
    let Some(at) = finder.find(payload) else {
        return false;
    };
    let start = at + 4;
    let rest = &payload[start..];
    let len = if rest.starts_with(b"null") {
        4
    } else {
        rest.iter().take_while(|b| b.is_ascii_digit()).count()
    };
    out.extend_from_slice(&payload[..start]);
    out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    out.extend_from_slice(&payload[start + len..]);
    true
}

/// `s` looked up with sonic-rs, as a proxy built on it would: iterate the
/// top-level object (checked, not `unsafe`) and stop at `s`.
#[must_use]
pub fn sonic_seq(payload: &[u8]) -> Option<u64> {
    use sonic_rs::JsonValueTrait as _;
    for member in sonic_rs::to_object_iter(payload) {
        let (key, value) = member.ok()?;
        if key == "s" {
            return value.as_u64();
        }
    }
    None
}

/// The full parse: `serde_json` into a DOM, `s` replaced, serialised again.
///
/// # Panics
///
/// If the payload is not JSON (fixtures are).
pub fn serde_rewrite(payload: &[u8], seq: u64, out: &mut Vec<u8>) {
    let mut value: serde_json::Value = serde_json::from_slice(payload).expect("fixture parses");
    value["s"] = seq.into();
    serde_json::to_writer(out, &value).expect("a Vec never fails");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_have_the_sizes_the_benchmark_names() {
        let sizes: Vec<usize> = payloads().iter().map(|p| p.discord_order.len()).collect();
        for (size, (low, high)) in sizes.iter().zip([
            (300, 500),
            (900, 1100),
            (27_000, 33_000),
            (650_000, 750_000),
        ]) {
            assert!((low..high).contains(size), "{sizes:?}");
        }
    }

    #[test]
    fn every_fixture_is_json_in_both_orders_and_baselines_agree() {
        let finder = memchr::memmem::Finder::new(b"\"s\":");
        for p in payloads() {
            for bytes in [p.discord_order.clone(), p.d_first()] {
                let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                let seq = v["s"].as_u64();
                assert_eq!(seqpatch::scan(&bytes).unwrap().seq(), seq, "{}", p.name);
                assert_eq!(sonic_seq(&bytes), seq, "{}", p.name);
            }
            let mut naive = Vec::new();
            assert!(naive_rewrite(&finder, &p.discord_order, 9, &mut naive));
            let mut ours = Vec::new();
            seqpatch::scan(&p.discord_order)
                .unwrap()
                .rewrite(&p.discord_order, 9, &mut ours);
            assert_eq!(naive, ours, "{}: in Discord's order both are right", p.name);
        }
    }

    #[test]
    fn naive_rewrite_is_wrong_where_d_first_has_a_nested_s() {
        let finder = memchr::memmem::Finder::new(b"\"s\":");
        let payload = NESTED_S;
        let mut naive = Vec::new();
        assert!(naive_rewrite(&finder, payload, 9, &mut naive));
        let naive: serde_json::Value = serde_json::from_slice(&naive).unwrap();
        assert_eq!(naive["s"], 12, "the top-level s is left alone");
        assert_eq!(naive["d"]["s"], 9, "a nested s is changed instead");

        let mut ours = Vec::new();
        seqpatch::scan(payload)
            .unwrap()
            .rewrite(payload, 9, &mut ours);
        let ours: serde_json::Value = serde_json::from_slice(&ours).unwrap();
        assert_eq!((&ours["s"], &ours["d"]["s"]), (&9.into(), &99.into()));
    }
}
