//! The cache against hand-written dispatches shaped as Discord sends them
//! (snowflakes as strings, image hashes, timestamps with and without the
//! fraction, escaped and non-ASCII strings, floats, fields nobody knows
//! yet): one test per rule of what each dispatch does to the state, and
//! what comes back out as READY and `GUILD_CREATE`/`GUILD_DELETE`.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use state_cache::{Cache, ErrorKind, Flags, Session, Snapshot, SnapshotGuild, SnapshotGuilds};

const GUILD: u64 = 1_100_000_000_000_000_100;
/// Listed in READY, never created: stays unavailable.
const DOWN: u64 = 1_100_000_000_000_000_200;
/// A guild the cache has never heard of.
const STRANGER: &str = "1100000000000000999";
const BOT: &str = "1300000000000000010";
const ALICE: &str = "1200000000000000001";
const BOB: &str = "1200000000000000002";
const CAROL: &str = "1200000000000000003";
const MODS: &str = "1120000000000000001";
const GENERAL: &str = "1110000000000000002";
const HELP: &str = "1110000000000000004";
const BIKESHED: &str = "1130000000000000001";
const LIFETIMES: &str = "1130000000000000002";

const SESSION: Session<'static> = Session {
    session_id: "0123456789abcdef0123456789abcdef",
    resume_gateway_url: "ws://proxy.internal:7878",
};

const READY: &str = r#"{"v":10,"user_settings":{},"user":{"id":"1300000000000000010","username":"proxy-bot","discriminator":"0","global_name":null,"avatar":"0123456789abcdef0123456789abcdef","bot":true,"mfa_enabled":true,"verified":true,"email":null,"flags":0,"public_flags":524288,"banner":null,"accent_color":null},"session_type":"normal","session_id":"9f8e7d6c5b4a39281706f5e4d3c2b1a0","resume_gateway_url":"wss://gateway-us-east1-b.discord.gg","guilds":[{"id":"1100000000000000100","unavailable":true},{"id":"1100000000000000200","unavailable":true}],"presences":[],"private_channels":[],"relationships":[],"guild_join_requests":[],"geo_ordered_rtc_regions":["us-east","us-central","atlanta"],"auth":{},"shard":[0,1],"application":{"id":"1300000000000000010","flags":565248},"_trace":["[\"gateway-prd-us-east1-b-7x9k\",{\"micros\":91023,\"calls\":[\"id_created\",{\"micros\":712,\"calls\":[]}]}]"]}"#;

/// A guild with something in every list, and unknown fields on the guild,
/// a role, a channel and a member.
const GUILD_CREATE: &str = r#"{
  "id": "1100000000000000100",
  "name": "Rust \"Crabs\" \\ café ✓",
  "icon": "a_1a2b3c4d5e6f70819a2b3c4d5e6f7081",
  "splash": null,
  "banner": "0123456789abcdef0123456789abcdef",
  "description": "line one\nline two\ttabbed \u00e9 \ud83e\udd80",
  "owner_id": "1200000000000000001",
  "afk_channel_id": null,
  "afk_timeout": 300,
  "verification_level": 1,
  "default_message_notifications": 1,
  "explicit_content_filter": 2,
  "features": ["COMMUNITY", "NEWS", "ANIMATED_ICON"],
  "mfa_level": 0,
  "application_id": null,
  "system_channel_id": "1110000000000000002",
  "system_channel_flags": 0,
  "rules_channel_id": "1110000000000000002",
  "max_presences": null,
  "max_members": 500000,
  "vanity_url_code": null,
  "premium_tier": 2,
  "premium_subscription_count": 9,
  "preferred_locale": "en-US",
  "public_updates_channel_id": "1110000000000000002",
  "max_video_channel_users": 25,
  "max_stage_video_channel_users": 50,
  "nsfw_level": 0,
  "premium_progress_bar_enabled": true,
  "safety_alerts_channel_id": null,
  "incidents_data": null,
  "hub_type": null,
  "latest_onboarding_question_id": null,
  "home_header": null,
  "version": 1712345678901,
  "embedded_activities": [],
  "activity_instances": [],
  "application_command_counts": {"1": 4, "2": 1},
  "lazy": true,
  "large": false,
  "joined_at": "2024-01-01T00:00:00.123456+00:00",
  "member_count": 4,
  "unavailable": false,
  "future_field": {"nested": [1, 2.5, "x"]},
  "roles": [
    {"id": "1100000000000000100", "name": "@everyone", "description": null, "permissions": "2222085186636353", "position": 0, "color": 0, "colors": {"primary_color": 0, "secondary_color": null, "tertiary_color": null}, "hoist": false, "managed": false, "mentionable": false, "icon": null, "unicode_emoji": null, "flags": 0},
    {"id": "1120000000000000001", "name": "Mods ✓", "description": null, "permissions": "1099511627775", "position": 1, "color": 3447003, "colors": {"primary_color": 3447003, "secondary_color": null, "tertiary_color": null}, "hoist": true, "managed": false, "mentionable": true, "icon": "0123456789abcdef0123456789abcdef", "unicode_emoji": null, "flags": 0, "tags": {}, "future_field": {"nested": [1, 2.5, "x"]}}
  ],
  "emojis": [
    {"id": "1140000000000000001", "name": "ferris", "roles": [], "require_colons": true, "managed": false, "animated": true, "available": true}
  ],
  "stickers": [
    {"id": "1150000000000000001", "name": "crab", "tags": "🦀", "type": 2, "format_type": 1, "description": "a crab", "asset": "", "available": true, "guild_id": "1100000000000000100"}
  ],
  "channels": [
    {"id": "1110000000000000001", "type": 4, "name": "Text Channels", "position": 0, "flags": 0, "permission_overwrites": [], "version": "1700000000000"},
    {"id": "1110000000000000002", "type": 0, "name": "general", "position": 0, "parent_id": "1110000000000000001", "topic": "a \"quoted\" \\ back\nslash ✓", "nsfw": false, "rate_limit_per_user": 0, "last_message_id": "1190000000000000001", "last_pin_timestamp": "2023-12-31T23:59:59+00:00", "flags": 0, "permission_overwrites": [{"id": "1100000000000000100", "type": 0, "allow": "0", "deny": "2048"}], "future_field": {"nested": [1, 2.5, "x"]}},
    {"id": "1110000000000000003", "type": 2, "name": "Voice", "position": 1, "parent_id": "1110000000000000001", "bitrate": 64000, "user_limit": 0, "rtc_region": null, "video_quality_mode": 1, "last_message_id": null, "rate_limit_per_user": 0, "nsfw": false, "flags": 0, "permission_overwrites": [], "status": null, "voice_background_display": null},
    {"id": "1110000000000000004", "type": 0, "name": "help", "position": 2, "parent_id": "1110000000000000001", "topic": null, "nsfw": false, "rate_limit_per_user": 5, "last_message_id": null, "flags": 0, "permission_overwrites": []}
  ],
  "threads": [
    {"id": "1130000000000000001", "type": 11, "guild_id": "1100000000000000100", "parent_id": "1110000000000000002", "owner_id": "1200000000000000001", "name": "bikeshed", "last_message_id": "1190000000000000002", "message_count": 3, "member_count": 2, "rate_limit_per_user": 0, "flags": 0, "total_message_sent": 3, "thread_metadata": {"archived": false, "auto_archive_duration": 1440, "archive_timestamp": "2024-01-02T03:04:05.678900+00:00", "locked": false, "create_timestamp": "2024-01-02T03:04:05.678900+00:00"}, "member": {"id": "1130000000000000001", "user_id": "1300000000000000010", "join_timestamp": "2024-01-02T03:04:05.678900+00:00", "flags": 1, "muted": false, "mute_config": null}},
    {"id": "1130000000000000002", "type": 11, "guild_id": "1100000000000000100", "parent_id": "1110000000000000004", "owner_id": "1200000000000000002", "name": "how do lifetimes work", "last_message_id": null, "message_count": 0, "member_count": 1, "rate_limit_per_user": 0, "flags": 0, "total_message_sent": 0, "thread_metadata": {"archived": false, "auto_archive_duration": 60, "archive_timestamp": "2024-01-03T00:00:00+00:00", "locked": false}}
  ],
  "members": [
    {"user": {"id": "1300000000000000010", "username": "proxy-bot", "discriminator": "0", "global_name": null, "avatar": "0123456789abcdef0123456789abcdef", "bot": true, "public_flags": 524288, "avatar_decoration_data": null, "primary_guild": null}, "roles": ["1120000000000000001"], "nick": null, "avatar": null, "banner": null, "joined_at": "2024-01-01T00:00:00.123456+00:00", "premium_since": null, "deaf": false, "mute": false, "pending": false, "flags": 0, "communication_disabled_until": null, "unusual_dm_activity_until": null},
    {"user": {"id": "1200000000000000001", "username": "alice", "discriminator": "0", "global_name": "Alice ✓", "avatar": "a_fedcba9876543210fedcba9876543210", "public_flags": 64, "clan": null}, "roles": ["1120000000000000001"], "nick": "al \"the\" admin", "avatar": null, "joined_at": "2020-05-17T08:00:00+00:00", "premium_since": "2023-06-30T12:34:56.000000+00:00", "deaf": false, "mute": false, "pending": false, "flags": 0, "communication_disabled_until": null, "future_field": {"nested": [1, 2.5, "x"]}},
    {"user": {"id": "1200000000000000002", "username": "bob", "discriminator": "0", "global_name": null, "avatar": null}, "roles": [], "nick": null, "joined_at": "2021-01-01T00:00:00.000001+00:00", "premium_since": null, "deaf": true, "mute": false, "pending": false, "flags": 2, "communication_disabled_until": null}
  ],
  "presences": [
    {"user": {"id": "1200000000000000001"}, "status": "online", "client_status": {"desktop": "online"}, "activities": [{"type": 4, "name": "Custom Status", "state": "shipping 🚀", "id": "custom", "created_at": 1704067200000}], "broadcast": null},
    {"user": {"id": "1200000000000000002"}, "status": "idle", "client_status": {"mobile": "idle"}, "activities": [], "broadcast": null}
  ],
  "voice_states": [
    {"channel_id": "1110000000000000003", "user_id": "1200000000000000002", "session_id": "0f1e2d3c4b5a69788796a5b4c3d2e1f0", "deaf": true, "mute": false, "self_deaf": false, "self_mute": true, "self_video": false, "suppress": false, "request_to_speak_timestamp": null}
  ],
  "stage_instances": [
    {"id": "1170000000000000001", "guild_id": "1100000000000000100", "channel_id": "1110000000000000003", "topic": "Ask me anything", "privacy_level": 2, "discoverable_disabled": false, "guild_scheduled_event_id": null}
  ],
  "guild_scheduled_events": [
    {"id": "1180000000000000001", "guild_id": "1100000000000000100", "channel_id": "1110000000000000003", "creator_id": "1200000000000000001", "name": "Office hours", "description": null, "scheduled_start_time": "2024-02-01T18:00:00+00:00", "scheduled_end_time": null, "privacy_level": 2, "status": 1, "entity_type": 2, "entity_id": null, "entity_metadata": null, "image": null, "recurrence_rule": null}
  ],
  "soundboard_sounds": [
    {"sound_id": "1160000000000000001", "name": "quack", "volume": 1.0, "emoji_id": null, "emoji_name": "🦆", "guild_id": "1100000000000000100", "available": true, "user": {"id": "1200000000000000001", "username": "alice", "discriminator": "0", "global_name": "Alice ✓", "avatar": "a_fedcba9876543210fedcba9876543210"}}
  ]
}"#;

// ---------------------------------------------------------------- helpers

/// A cache with `flags` fed READY (two guilds) and one `GUILD_CREATE`.
fn loaded(flags: Flags) -> Cache {
    let mut cache = Cache::new(flags);
    cache.apply("READY", READY.as_bytes()).unwrap();
    cache
        .apply("GUILD_CREATE", GUILD_CREATE.as_bytes())
        .unwrap();
    cache
}

/// `Flags::NONE` with some switches on.
fn only(set: impl FnOnce(&mut Flags)) -> Flags {
    let mut flags = Flags::NONE;
    set(&mut flags);
    flags
}

/// Applies a dispatch that must apply, and checks that the totals the
/// cache keeps for `stats()` are what a walk over it counts.
fn apply(cache: &mut Cache, t: &str, d: &str) {
    cache
        .apply(t, d.as_bytes())
        .unwrap_or_else(|e| panic!("{t}: {e}"));
    assert_eq!(cache.stats(), cache.walked_stats(), "after {t}");
}

/// Fails unless `text` has no whitespace outside its strings.
fn assert_compact(text: &str) {
    let (mut in_string, mut escaped) = (false, false);
    for (i, c) in text.char_indices() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else {
            assert!(
                !c.is_whitespace(),
                "whitespace at {i}: {}",
                &text[i.saturating_sub(40)..]
            );
        }
    }
    assert!(!in_string, "unterminated string");
}

/// Parses a payload after checking its envelope: `t`, `s`, `op`, `d` in
/// that order, compact.
fn envelope(out: &[u8], t: &str, seq: u64) -> Value {
    let text = std::str::from_utf8(out).unwrap();
    let head = format!(r#"{{"t":"{t}","s":{seq},"op":0,"d":"#);
    assert!(
        text.starts_with(&head),
        "envelope: {}",
        &text[..text.len().min(80)]
    );
    assert_compact(text);
    let payload: Value = serde_json::from_str(text).unwrap();
    assert_eq!(payload.as_object().unwrap().len(), 4, "t, s, op, d only");
    assert_eq!(payload["op"], 0);
    assert_eq!(payload["s"], seq);
    payload
}

/// The `d` of guild `id`'s payload, which must be a `GUILD_CREATE`.
fn guild(cache: &Cache, id: u64) -> Value {
    let mut out = Vec::new();
    assert!(cache.write_guild(id, 5, &mut out), "guild {id} is held");
    envelope(&out, "GUILD_CREATE", 5)["d"].take()
}

/// The `d` of the READY a client gets.
fn ready(cache: &Cache) -> Value {
    let mut out = Vec::new();
    cache.write_ready(1, SESSION, &mut out).unwrap();
    envelope(&out, "READY", 1)["d"].take()
}

/// READY and every guild's payload, as the bytes a client would get.
fn payloads(cache: &Cache) -> Vec<u8> {
    let mut out = Vec::new();
    if cache.write_ready(1, SESSION, &mut out).is_err() {
        out.extend_from_slice(b"no READY");
    }
    for (seq, id) in (2..).zip(cache.guild_ids()) {
        assert!(cache.write_guild(id, seq, &mut out));
    }
    out
}

/// What [`payloads`] gives for the cache, from a snapshot of it: the same
/// bytes whether the guilds are written by id or one by one.
fn snapshot_payloads(snapshot: &Snapshot) -> Vec<u8> {
    let mut out = Vec::new();
    if snapshot.write_ready(1, SESSION, &mut out).is_err() {
        out.extend_from_slice(b"no READY");
    }
    let mut by_id = out.clone();
    assert_eq!(snapshot.guild_ids().len(), snapshot.len());
    for (seq, id) in (2..).zip(snapshot.guild_ids()) {
        assert!(snapshot.write_guild(id, seq, &mut by_id));
    }
    let ids: Vec<u64> = snapshot.guild_ids().collect();
    let guilds = snapshot.clone().into_guilds();
    assert_eq!(guilds.len(), ids.len());
    for ((seq, guild), id) in (2..).zip(guilds).zip(ids) {
        assert_eq!(guild.id(), id);
        guild.write(seq, &mut out);
    }
    assert_eq!(out, by_id, "into_guilds writes what write_guild writes");
    out
}

/// The id an item of a `GUILD_CREATE` list is known by.
fn item_id(item: &Value) -> &str {
    item.get("id")
        .or_else(|| item.get("sound_id"))
        .or_else(|| item.get("user_id"))
        .or_else(|| item.pointer("/user/id"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The ids of a list, sorted.
fn ids(list: &Value) -> Vec<&str> {
    let mut ids: Vec<&str> = list.as_array().unwrap().iter().map(item_id).collect();
    ids.sort_unstable();
    ids
}

/// The item `id` of a list.
fn item<'a>(list: &'a Value, id: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|i| item_id(i) == id)
        .unwrap_or_else(|| panic!("no {id} in {list}"))
}

fn has(list: &Value, id: &str) -> bool {
    list.as_array().unwrap().iter().any(|i| item_id(i) == id)
}

/// Lists sorted by id: members and presences come back in no order.
fn sorted(mut d: Value) -> Value {
    for list in d.as_object_mut().unwrap().values_mut() {
        if let Some(items) = list.as_array_mut() {
            items.sort_by(|a, b| item_id(a).cmp(item_id(b)));
        }
    }
    d
}

fn original() -> Value {
    serde_json::from_str(GUILD_CREATE).unwrap()
}

// ------------------------------------------------------------------ tests

#[test]
fn every_field_comes_back_as_the_same_value_unknown_ones_included() {
    let cache = loaded(Flags::ALL);
    let d = guild(&cache, GUILD);
    assert_eq!(sorted(d.clone()), sorted(original()));

    let future = json!({"nested": [1, 2.5, "x"]});
    assert_eq!(d["future_field"], future, "on the guild");
    assert_eq!(item(&d["members"], ALICE)["future_field"], future);
    assert_eq!(item(&d["channels"], GENERAL)["future_field"], future);
    assert_eq!(item(&d["roles"], MODS)["future_field"], future);
    assert!(d["future_field"]["nested"][1].is_f64());

    let volume = &d["soundboard_sounds"][0]["volume"];
    assert!(volume.is_f64(), "1.0 stays a float: {volume}");
    assert_eq!(volume.as_f64(), Some(1.0));

    assert_eq!(
        item(&d["channels"], GENERAL)["topic"],
        "a \"quoted\" \\ back\nslash ✓"
    );
    assert_eq!(d["name"], "Rust \"Crabs\" \\ café ✓");
    assert_eq!(d["description"], "line one\nline two\ttabbed é 🦀");
    assert_eq!(item(&d["members"], ALICE)["nick"], "al \"the\" admin");
    // Hashes, timestamps (both forms) and snowflakes as they came.
    assert_eq!(d["icon"], "a_1a2b3c4d5e6f70819a2b3c4d5e6f7081");
    assert_eq!(d["joined_at"], "2024-01-01T00:00:00.123456+00:00");
    assert_eq!(
        item(&d["members"], ALICE)["joined_at"],
        "2020-05-17T08:00:00+00:00"
    );
    assert_eq!(
        item(&d["members"], BOB)["joined_at"],
        "2021-01-01T00:00:00.000001+00:00"
    );
    assert_eq!(d["version"], 1_712_345_678_901_u64);
    assert_eq!(
        item(&d["channels"], "1110000000000000001")["version"],
        "1700000000000"
    );

    // An update's own unknown fields are kept too.
    let mut cache = cache;
    apply(
        &mut cache,
        "CHANNEL_UPDATE",
        r#"{"id":"1110000000000000004","type":0,"guild_id":"1100000000000000100","name":"help-✓","position":2,"parent_id":"1110000000000000001","topic":"tab\there \"q\" \\","nsfw":false,"rate_limit_per_user":5,"last_message_id":null,"flags":0,"permission_overwrites":[],"icon_emoji":{"id":null,"name":"🆘"},"theme_color":null,"brand_new":{"a":[-1,0.25,null,true]}}"#,
    );
    let help = item(&guild(&cache, GUILD)["channels"], HELP).clone();
    assert_eq!(help["brand_new"], json!({"a": [-1, 0.25, null, true]}));
    assert_eq!(help["topic"], "tab\there \"q\" \\");
    assert_eq!(help["icon_emoji"]["name"], "🆘");
    assert!(
        help.get("guild_id").is_none(),
        "channels in GUILD_CREATE have no guild_id"
    );
}

#[test]
fn bad_dispatches_are_errors_that_change_nothing() {
    let mut cache = loaded(Flags::ALL);
    let before = payloads(&cache);
    let member_without_guild = r#"{"user":{"id":"1200000000000000003","username":"carol","discriminator":"0","global_name":null,"avatar":null},"roles":[],"nick":null,"joined_at":"2024-05-01T10:00:00.000000+00:00","premium_since":null,"deaf":false,"mute":false,"pending":false,"flags":0}"#;
    let ready_without_user = r#"{"v":10,"session_id":"x","resume_gateway_url":"wss://gateway.discord.gg","guilds":[{"id":"1100000000000000300","unavailable":true}],"application":{"id":"1","flags":0}}"#;
    let cases: [(&str, &str, &str); 6] = [
        ("GUILD_CREATE", r#"{"id":"#, "json"),
        // Keys never seen before, then broken.
        (
            "CHANNEL_UPDATE",
            r#"{"never_seen_key":1,"id":"1110000000000000002","#,
            "json",
        ),
        ("GUILD_UPDATE", "[]", "shape"),
        ("GUILD_MEMBER_ADD", member_without_guild, "shape"),
        ("READY", ready_without_user, "shape"),
        // The guild is there, the member is not a member.
        (
            "GUILD_MEMBER_UPDATE",
            r#"{"guild_id":"1100000000000000100","roles":[]}"#,
            "shape",
        ),
    ];
    for (t, d, kind) in cases {
        let err = cache.apply(t, d.as_bytes()).unwrap_err();
        match (kind, err.kind()) {
            ("json", ErrorKind::Json(message)) => assert!(!message.is_empty()),
            ("shape", ErrorKind::Shape(expected)) => assert!(!expected.is_empty()),
            _ => panic!("{t}: expected a {kind} error, got {err:?}"),
        }
        assert_eq!(err.event(), t);
        let shown = err.to_string();
        assert!(shown.starts_with(t), "{shown}");
        assert_eq!(payloads(&cache), before, "{t} changed the cache: {shown}");
    }
    let err = cache
        .apply("GUILD_MEMBER_ADD", member_without_guild.as_bytes())
        .unwrap_err();
    assert!(err.to_string().contains("guild_id"), "{err}");
    let err = cache
        .apply("READY", ready_without_user.as_bytes())
        .unwrap_err();
    assert!(err.to_string().contains("user"), "{err}");

    // The cache still works after the errors.
    apply(
        &mut cache,
        "GUILD_DELETE",
        r#"{"id":"1100000000000000100"}"#,
    );
    assert_eq!(cache.guild_ids().collect::<Vec<_>>(), [DOWN]);
}

#[test]
fn dispatches_about_guilds_not_held_change_nothing() {
    let mut cache = loaded(Flags::ALL);
    let before = payloads(&cache);
    let ids_before: Vec<u64> = cache.guild_ids().collect();
    let about_stranger = [
        ("GUILD_UPDATE", r#"{"id":"1100000000000000999","name":"elsewhere","icon":null,"roles":[],"emojis":[],"stickers":[]}"#.to_owned()),
        ("GUILD_MEMBER_ADD", format!(r#"{{"guild_id":"{STRANGER}","user":{{"id":"{CAROL}","username":"carol","discriminator":"0","avatar":null}},"roles":[],"joined_at":"2024-05-01T10:00:00+00:00","deaf":false,"mute":false,"flags":0}}"#)),
        ("GUILD_MEMBER_REMOVE", format!(r#"{{"guild_id":"{STRANGER}","user":{{"id":"{ALICE}","username":"alice","discriminator":"0","avatar":null}}}}"#)),
        ("GUILD_MEMBER_UPDATE", format!(r#"{{"guild_id":"{STRANGER}","user":{{"id":"{ALICE}","username":"alice","discriminator":"0","avatar":null}},"roles":[],"nick":"x"}}"#)),
        ("GUILD_MEMBERS_CHUNK", format!(r#"{{"guild_id":"{STRANGER}","members":[{{"user":{{"id":"{CAROL}","username":"carol","discriminator":"0","avatar":null}},"roles":[],"deaf":false,"mute":false}}],"chunk_index":0,"chunk_count":1,"presences":[{{"user":{{"id":"{CAROL}"}},"status":"online","activities":[],"client_status":{{"web":"online"}}}}]}}"#)),
        ("GUILD_ROLE_CREATE", format!(r#"{{"guild_id":"{STRANGER}","role":{{"id":"1120000000000000009","name":"new","permissions":"0","position":1,"color":0,"hoist":false,"managed":false,"mentionable":false,"flags":0}}}}"#)),
        ("GUILD_ROLE_DELETE", format!(r#"{{"guild_id":"{STRANGER}","role_id":"{MODS}"}}"#)),
        ("CHANNEL_CREATE", format!(r#"{{"id":"1110000000000000009","type":0,"guild_id":"{STRANGER}","name":"new","position":9,"permission_overwrites":[]}}"#)),
        ("CHANNEL_DELETE", format!(r#"{{"id":"{GENERAL}","type":0,"guild_id":"{STRANGER}","name":"general"}}"#)),
        ("THREAD_LIST_SYNC", format!(r#"{{"guild_id":"{STRANGER}","threads":[],"members":[]}}"#)),
        ("PRESENCE_UPDATE", format!(r#"{{"user":{{"id":"{ALICE}","username":"mallory"}},"guild_id":"{STRANGER}","status":"offline","activities":[],"client_status":{{}}}}"#)),
        ("VOICE_STATE_UPDATE", format!(r#"{{"guild_id":"{STRANGER}","channel_id":null,"user_id":"{BOB}","session_id":"0f1e2d3c4b5a69788796a5b4c3d2e1f0","deaf":false,"mute":false,"self_deaf":false,"self_mute":false,"self_video":false,"suppress":false,"request_to_speak_timestamp":null}}"#)),
        ("GUILD_EMOJIS_UPDATE", format!(r#"{{"guild_id":"{STRANGER}","emojis":[]}}"#)),
        ("GUILD_SOUNDBOARD_SOUND_DELETE", format!(r#"{{"sound_id":"1160000000000000001","guild_id":"{STRANGER}"}}"#)),
        ("SOUNDBOARD_SOUNDS", format!(r#"{{"soundboard_sounds":[],"guild_id":"{STRANGER}"}}"#)),
    ];
    for (t, d) in &about_stranger {
        assert!(cache.wants(t), "{t}");
        apply(&mut cache, t, d);
        assert_eq!(payloads(&cache), before, "{t} about a stranger guild");
    }
    // Nor about a guild that is unavailable: it stays a GUILD_DELETE.
    for (t, d) in &about_stranger {
        let d = d.replace(STRANGER, &DOWN.to_string());
        apply(&mut cache, t, &d);
        assert_eq!(payloads(&cache), before, "{t} about an unavailable guild");
    }
    // A DM's pins (no guild_id) are not about any guild.
    apply(
        &mut cache,
        "CHANNEL_PINS_UPDATE",
        r#"{"channel_id":"1190000000000000077","last_pin_timestamp":"2024-04-01T00:00:00+00:00"}"#,
    );
    // Dispatches the cache does not need are not even parsed.
    assert!(!cache.wants("MESSAGE_CREATE"));
    cache.apply("MESSAGE_CREATE", b"{\"id\":").unwrap();
    cache.apply("NOT_A_DISPATCH", b"[]").unwrap();
    assert_eq!(payloads(&cache), before);
    assert_eq!(cache.guild_ids().collect::<Vec<_>>(), ids_before);
}

#[test]
fn ready_is_needed_first_and_a_second_ready_starts_over() {
    let mut cache = Cache::new(Flags::default());
    let err = cache.write_ready(1, SESSION, &mut Vec::new()).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::NoReady), "{err:?}");
    assert!(err.to_string().contains("READY"), "{err}");

    apply(&mut cache, "READY", READY);
    apply(&mut cache, "GUILD_CREATE", GUILD_CREATE);
    let d = ready(&cache);
    assert_eq!(
        d["guilds"],
        json!([
            {"id": GUILD.to_string(), "unavailable": true},
            {"id": DOWN.to_string(), "unavailable": true},
        ]),
        "every guild as an unavailable stub, available or not"
    );
    assert_eq!(d["session_id"], SESSION.session_id);
    assert_eq!(d["resume_gateway_url"], SESSION.resume_gateway_url);
    let upstream: Value = serde_json::from_str(READY).unwrap();
    for (key, value) in upstream.as_object().unwrap() {
        if !["session_id", "resume_gateway_url", "guilds"].contains(&key.as_str()) {
            assert_eq!(&d[key], value, "READY `{key}` as upstream sent it");
        }
    }

    // A new upstream session: the old guilds are gone.
    let second = r#"{"v":10,"user_settings":{},"user":{"id":"1300000000000000010","username":"proxy-bot-2","discriminator":"0","global_name":"Proxy ✓","avatar":null,"bot":true,"mfa_enabled":true,"verified":true,"flags":0},"session_type":"normal","session_id":"aaaabbbbccccddddeeeeffff00001111","resume_gateway_url":"wss://gateway-us-east1-c.discord.gg","guilds":[{"id":"1100000000000000300","unavailable":true}],"shard":[0,1],"application":{"id":"1300000000000000010","flags":565248},"_trace":["[\"gateway-prd-us-east1-c-1a2b\",{\"micros\":1}]"]}"#;
    apply(&mut cache, "READY", second);
    let third: u64 = 1_100_000_000_000_000_300;
    assert_eq!(cache.guild_ids().collect::<Vec<_>>(), [third]);
    assert!(!cache.write_guild(GUILD, 2, &mut Vec::new()));
    assert!(!cache.write_guild(DOWN, 2, &mut Vec::new()));
    let d = ready(&cache);
    assert_eq!(
        d["guilds"],
        json!([{"id": "1100000000000000300", "unavailable": true}])
    );
    assert_eq!(d["user"]["username"], "proxy-bot-2");
    assert!(
        d.get("geo_ordered_rtc_regions").is_none(),
        "nothing of the old READY"
    );
    assert_eq!(cache.stats().guilds, 1);
    assert_eq!(cache.stats().unavailable_guilds, 1);
    assert_eq!(cache.stats().channels, 0);

    let mut out = Vec::new();
    assert!(cache.write_guild(third, 2, &mut out));
    let payload = envelope(&out, "GUILD_DELETE", 2);
    assert_eq!(
        payload["d"],
        json!({"id": "1100000000000000300", "unavailable": true})
    );
    apply(
        &mut cache,
        "GUILD_CREATE",
        &GUILD_CREATE.replace("1100000000000000100", "1100000000000000300"),
    );
    assert_eq!(guild(&cache, third)["name"], "Rust \"Crabs\" \\ café ✓");
}

#[test]
fn an_unavailable_guild_is_a_guild_delete_until_it_comes_back_and_a_left_one_is_gone() {
    let mut cache = loaded(Flags::default());
    apply(
        &mut cache,
        "GUILD_DELETE",
        r#"{"id":"1100000000000000100","unavailable":true}"#,
    );
    let mut out = Vec::new();
    assert!(cache.write_guild(GUILD, 9, &mut out));
    assert_eq!(
        out,
        br#"{"t":"GUILD_DELETE","s":9,"op":0,"d":{"id":"1100000000000000100","unavailable":true}}"#
    );
    assert_eq!(cache.stats().unavailable_guilds, 2);
    assert_eq!(
        cache.stats().channels,
        0,
        "an unavailable guild holds nothing"
    );

    apply(&mut cache, "GUILD_CREATE", GUILD_CREATE);
    let d = guild(&cache, GUILD);
    assert_eq!(d["unavailable"], false);
    assert_eq!(ids(&d["channels"]).len(), 4);

    // Left (or kicked): no `unavailable`.
    apply(
        &mut cache,
        "GUILD_DELETE",
        r#"{"id":"1100000000000000100"}"#,
    );
    let mut out = Vec::new();
    assert!(!cache.write_guild(GUILD, 9, &mut out));
    assert!(out.is_empty(), "nothing appended");
    assert_eq!(cache.guild_ids().collect::<Vec<_>>(), [DOWN]);
    assert_eq!(
        ready(&cache)["guilds"],
        json!([{"id": DOWN.to_string(), "unavailable": true}])
    );
}

#[test]
fn member_count_follows_joins_and_leaves_even_with_no_flags() {
    let mut cache = loaded(Flags::NONE);
    let add = |id: &str| {
        format!(
            r#"{{"guild_id":"1100000000000000100","user":{{"id":"{id}","username":"new","discriminator":"0","global_name":null,"avatar":null}},"roles":[],"nick":null,"avatar":null,"joined_at":"2024-05-01T10:00:00.000000+00:00","premium_since":null,"deaf":false,"mute":false,"pending":false,"flags":0,"communication_disabled_until":null}}"#
        )
    };
    apply(&mut cache, "GUILD_MEMBER_ADD", &add(CAROL));
    apply(&mut cache, "GUILD_MEMBER_ADD", &add("1200000000000000004"));
    assert_eq!(guild(&cache, GUILD)["member_count"], 6);
    let remove = format!(
        r#"{{"guild_id":"1100000000000000100","user":{{"id":"{CAROL}","username":"new","discriminator":"0","avatar":null}}}}"#
    );
    apply(&mut cache, "GUILD_MEMBER_REMOVE", &remove);
    let d = guild(&cache, GUILD);
    assert_eq!(d["member_count"], 5);
    assert_eq!(d["members"], json!([]), "no member is kept");
    assert_eq!(cache.stats().members, 0);

    // With everything on, a leave also drops the presence and voice state.
    let mut cache = loaded(Flags::ALL);
    let d = guild(&cache, GUILD);
    assert!(has(&d["members"], BOB) && has(&d["presences"], BOB) && has(&d["voice_states"], BOB));
    apply(
        &mut cache,
        "GUILD_MEMBER_REMOVE",
        &format!(
            r#"{{"guild_id":"1100000000000000100","user":{{"id":"{BOB}","username":"bob","discriminator":"0","global_name":null,"avatar":null}}}}"#
        ),
    );
    let d = guild(&cache, GUILD);
    assert_eq!(d["member_count"], 3);
    assert_eq!(ids(&d["members"]), [ALICE, BOT]);
    assert_eq!(ids(&d["presences"]), [ALICE]);
    assert_eq!(d["voice_states"], json!([]));
}

#[test]
fn member_update_merges_and_inserts_members_it_did_not_have() {
    let mut cache = loaded(Flags::ALL);
    // Bob was deafened by the server; the update says nothing of it.
    apply(
        &mut cache,
        "GUILD_MEMBER_UPDATE",
        r#"{"guild_id":"1100000000000000100","roles":["1120000000000000001"],"user":{"id":"1200000000000000002","username":"bob","discriminator":"0","global_name":"Bob ✓","avatar":"a_00112233445566778899aabbccddeeff"},"nick":"bobby \"tables\"","avatar":null,"banner":null,"joined_at":"2021-01-01T00:00:00.000001+00:00","premium_since":null,"pending":false,"communication_disabled_until":"2024-06-01T00:00:00+00:00","flags":2,"avatar_decoration_data":null}"#,
    );
    let d = guild(&cache, GUILD);
    let bob = item(&d["members"], BOB);
    assert_eq!(bob["deaf"], true, "absent from the update: kept");
    assert_eq!(bob["mute"], false);
    assert_eq!(bob["nick"], "bobby \"tables\"");
    assert_eq!(bob["roles"], json!([MODS]));
    assert_eq!(
        bob["communication_disabled_until"],
        "2024-06-01T00:00:00+00:00"
    );
    assert_eq!(bob["user"]["avatar"], "a_00112233445566778899aabbccddeeff");
    assert_eq!(bob["avatar_decoration_data"], Value::Null);
    assert!(bob.get("guild_id").is_none());

    // Alice's unknown field survives an update that lacks it.
    apply(
        &mut cache,
        "GUILD_MEMBER_UPDATE",
        r#"{"guild_id":"1100000000000000100","roles":[],"user":{"id":"1200000000000000001","username":"alice","discriminator":"0","global_name":"Alice ✓","avatar":"a_fedcba9876543210fedcba9876543210"},"nick":null,"avatar":null,"joined_at":"2020-05-17T08:00:00+00:00","premium_since":null,"pending":false,"communication_disabled_until":null,"flags":0}"#,
    );
    let d = guild(&cache, GUILD);
    let alice = item(&d["members"], ALICE);
    assert_eq!(alice["future_field"], json!({"nested": [1, 2.5, "x"]}));
    assert_eq!(alice["nick"], Value::Null);
    assert_eq!(alice["roles"], json!([]));
    assert_eq!(alice["premium_since"], Value::Null);

    // Carol was never cached: she is inserted, `deaf` and `mute` false.
    apply(
        &mut cache,
        "GUILD_MEMBER_UPDATE",
        r#"{"guild_id":"1100000000000000100","roles":[],"user":{"id":"1200000000000000003","username":"carol","discriminator":"0","global_name":null,"avatar":null},"nick":"caz","avatar":null,"joined_at":"2024-05-01T10:00:00.000000+00:00","premium_since":null,"pending":true,"communication_disabled_until":null,"flags":0}"#,
    );
    let d = guild(&cache, GUILD);
    let carol = item(&d["members"], CAROL);
    assert_eq!(carol["deaf"], false);
    assert_eq!(carol["mute"], false);
    assert_eq!(carol["nick"], "caz");
    assert_eq!(carol["pending"], true);
    assert!(carol.get("guild_id").is_none());
    assert_eq!(d["member_count"], 4, "an update is not a join");
}

#[test]
fn current_member_keeps_only_the_bots_own_member() {
    let mut cache = loaded(Flags::default());
    let d = guild(&cache, GUILD);
    assert_eq!(ids(&d["members"]), [BOT]);
    assert_eq!(d["presences"], json!([]));

    let update = |id: &str, nick: &str| {
        format!(
            r#"{{"guild_id":"1100000000000000100","roles":[],"user":{{"id":"{id}","username":"u","discriminator":"0","avatar":null}},"nick":"{nick}","avatar":null,"joined_at":"2024-01-01T00:00:00.123456+00:00","premium_since":null,"pending":false,"communication_disabled_until":null,"flags":0}}"#
        )
    };
    apply(&mut cache, "GUILD_MEMBER_UPDATE", &update(BOT, "the proxy"));
    apply(
        &mut cache,
        "GUILD_MEMBER_UPDATE",
        &update(ALICE, "not kept"),
    );
    apply(
        &mut cache,
        "GUILD_MEMBER_ADD",
        &format!(
            r#"{{"guild_id":"1100000000000000100","user":{{"id":"{CAROL}","username":"carol","discriminator":"0","avatar":null}},"roles":[],"joined_at":"2024-05-01T10:00:00+00:00","deaf":false,"mute":false,"flags":0}}"#
        ),
    );
    apply(
        &mut cache,
        "GUILD_MEMBERS_CHUNK",
        &format!(
            r#"{{"guild_id":"1100000000000000100","members":[{{"user":{{"id":"{BOB}","username":"bob","discriminator":"0","avatar":null}},"roles":[],"deaf":false,"mute":false,"joined_at":"2021-01-01T00:00:00+00:00"}}],"chunk_index":0,"chunk_count":1,"not_found":[]}}"#
        ),
    );
    let d = guild(&cache, GUILD);
    assert_eq!(ids(&d["members"]), [BOT]);
    let bot = item(&d["members"], BOT);
    assert_eq!(bot["nick"], "the proxy");
    assert_eq!(bot["roles"], json!([]));
    assert_eq!(d["member_count"], 5);
    assert_eq!(cache.stats().members, 1);
}

#[test]
fn presences_are_kept_as_guild_create_carries_them() {
    let mut cache = loaded(Flags::ALL);
    // Bob comes online and changed his name and avatar.
    apply(
        &mut cache,
        "PRESENCE_UPDATE",
        r#"{"user":{"id":"1200000000000000002","username":"robert","global_name":"Robert ✓","avatar":"a_00112233445566778899aabbccddeeff"},"status":"online","guild_id":"1100000000000000100","client_status":{"desktop":"online","web":"idle"},"activities":[{"type":0,"name":"Rust \"Analyzer\"","timestamps":{"start":1704067200123},"created_at":1704067200456,"id":"ec0b28a579ecb4bd"}],"broadcast":null}"#,
    );
    let d = guild(&cache, GUILD);
    let presence = item(&d["presences"], BOB);
    assert_eq!(
        *presence,
        json!({
            "user": {"id": BOB},
            "status": "online",
            "client_status": {"desktop": "online", "web": "idle"},
            "activities": [{"type": 0, "name": "Rust \"Analyzer\"", "timestamps": {"start": 1_704_067_200_123_u64}, "created_at": 1_704_067_200_456_u64, "id": "ec0b28a579ecb4bd"}],
            "broadcast": null,
        })
    );
    let bob = &item(&d["members"], BOB)["user"];
    assert_eq!(bob["username"], "robert");
    assert_eq!(bob["global_name"], "Robert ✓");
    assert_eq!(bob["avatar"], "a_00112233445566778899aabbccddeeff");
    assert_eq!(bob["discriminator"], "0", "user fields absent stay");

    // Alice goes offline: her presence is gone, her member is not.
    apply(
        &mut cache,
        "PRESENCE_UPDATE",
        r#"{"user":{"id":"1200000000000000001"},"status":"offline","guild_id":"1100000000000000100","client_status":{},"activities":[]}"#,
    );
    let d = guild(&cache, GUILD);
    assert_eq!(ids(&d["presences"]), [BOB]);
    assert!(has(&d["members"], ALICE));
    assert_eq!(cache.stats().presences, 1);

    // Without `users`, a presence's user fields do not touch the member.
    let mut flags = Flags::ALL;
    flags.users = false;
    let mut cache = loaded(flags);
    apply(
        &mut cache,
        "PRESENCE_UPDATE",
        r#"{"user":{"id":"1200000000000000002","username":"robert"},"status":"dnd","guild_id":"1100000000000000100","client_status":{"mobile":"dnd"},"activities":[]}"#,
    );
    let d = guild(&cache, GUILD);
    assert_eq!(item(&d["members"], BOB)["user"]["username"], "bob");
    assert_eq!(item(&d["presences"], BOB)["status"], "dnd");
    assert_eq!(item(&d["presences"], BOB)["user"], json!({"id": BOB}));

    // With `users` alone, the member follows and no presence is kept.
    let mut cache = loaded(only(|f| {
        f.users = true;
        f.members = true;
    }));
    apply(
        &mut cache,
        "PRESENCE_UPDATE",
        r#"{"user":{"id":"1200000000000000002","username":"robert"},"status":"dnd","guild_id":"1100000000000000100","client_status":{"mobile":"dnd"},"activities":[]}"#,
    );
    let d = guild(&cache, GUILD);
    assert_eq!(item(&d["members"], BOB)["user"]["username"], "robert");
    assert_eq!(d["presences"], json!([]));
}

#[test]
fn voice_states_are_kept_without_guild_id_or_member_and_update_the_member() {
    let mut cache = loaded(Flags::ALL);
    let join = r#"{"member":{"user":{"id":"1200000000000000001","username":"alice","discriminator":"0","global_name":"Alice ✓","avatar":"a_fedcba9876543210fedcba9876543210"},"roles":["1120000000000000001"],"nick":"al in voice","avatar":null,"joined_at":"2020-05-17T08:00:00+00:00","premium_since":null,"deaf":false,"mute":false,"pending":false,"flags":0,"communication_disabled_until":null},"user_id":"1200000000000000001","suppress":false,"session_id":"89abcdef0123456789abcdef01234567","self_video":false,"self_mute":false,"self_deaf":false,"request_to_speak_timestamp":null,"mute":false,"guild_id":"1100000000000000100","deaf":false,"channel_id":"1110000000000000003"}"#;
    apply(&mut cache, "VOICE_STATE_UPDATE", join);
    let d = guild(&cache, GUILD);
    let state = item(&d["voice_states"], ALICE);
    let mut want: Value = serde_json::from_str(join).unwrap();
    want.as_object_mut().unwrap().remove("guild_id");
    want.as_object_mut().unwrap().remove("member");
    assert_eq!(*state, want);
    let alice = item(&d["members"], ALICE);
    assert_eq!(alice["nick"], "al in voice");
    assert_eq!(alice["future_field"], json!({"nested": [1, 2.5, "x"]}));
    assert_eq!(cache.stats().voice_states, 2);

    // She goes live, then stops: Discord leaves `self_stream` out when it
    // is false, and each VOICE_STATE_UPDATE is the whole voice state.
    let live = join.replace(
        r#""self_video":false"#,
        r#""self_video":false,"self_stream":true"#,
    );
    apply(&mut cache, "VOICE_STATE_UPDATE", &live);
    assert_eq!(
        item(&guild(&cache, GUILD)["voice_states"], ALICE)["self_stream"],
        true
    );
    apply(&mut cache, "VOICE_STATE_UPDATE", join);
    assert_eq!(*item(&guild(&cache, GUILD)["voice_states"], ALICE), want);

    // Leaving: `channel_id` null.
    let leave = join.replace(
        r#""channel_id":"1110000000000000003""#,
        r#""channel_id":null"#,
    );
    apply(&mut cache, "VOICE_STATE_UPDATE", &leave);
    let d = guild(&cache, GUILD);
    assert_eq!(ids(&d["voice_states"]), [BOB]);
    assert!(has(&d["members"], ALICE));

    // With `members` alone, the member follows and no voice state is kept.
    let mut cache = loaded(only(|f| f.members = true));
    apply(&mut cache, "VOICE_STATE_UPDATE", join);
    let d = guild(&cache, GUILD);
    assert_eq!(d["voice_states"], json!([]));
    assert_eq!(item(&d["members"], ALICE)["nick"], "al in voice");
}

#[test]
fn threads_follow_syncs_channel_deletes_member_counts_and_pins() {
    let mut cache = loaded(Flags::default());
    let d = guild(&cache, GUILD);
    assert_eq!(ids(&d["threads"]), [BIKESHED, LIFETIMES]);

    // Synced for #general only: its threads are replaced, #help's stay.
    let rfc = "1130000000000000003";
    apply(
        &mut cache,
        "THREAD_LIST_SYNC",
        r#"{"guild_id":"1100000000000000100","channel_ids":["1110000000000000002"],"threads":[{"id":"1130000000000000003","type":11,"guild_id":"1100000000000000100","parent_id":"1110000000000000002","owner_id":"1200000000000000001","name":"rfc: \"async\" drop","last_message_id":null,"message_count":0,"member_count":1,"rate_limit_per_user":0,"flags":0,"total_message_sent":0,"thread_metadata":{"archived":false,"auto_archive_duration":4320,"archive_timestamp":"2024-03-03T03:03:03.030303+00:00","locked":false,"create_timestamp":"2024-03-03T03:03:03.030303+00:00"}}],"members":[{"id":"1130000000000000003","user_id":"1300000000000000010","join_timestamp":"2024-03-03T03:03:04.000000+00:00","flags":1}]}"#,
    );
    let d = guild(&cache, GUILD);
    assert_eq!(ids(&d["threads"]), [LIFETIMES, rfc]);
    let thread = item(&d["threads"], rfc);
    assert_eq!(thread["name"], "rfc: \"async\" drop");
    assert_eq!(
        thread["member"]["join_timestamp"],
        "2024-03-03T03:03:04.000000+00:00"
    );

    // THREAD_MEMBERS_UPDATE changes the count.
    apply(
        &mut cache,
        "THREAD_MEMBERS_UPDATE",
        r#"{"id":"1130000000000000003","guild_id":"1100000000000000100","member_count":7,"added_members":[{"id":"1130000000000000003","user_id":"1200000000000000002","join_timestamp":"2024-03-04T00:00:00.000000+00:00","flags":0}],"removed_member_ids":[]}"#,
    );
    assert_eq!(
        item(&guild(&cache, GUILD)["threads"], rfc)["member_count"],
        7
    );

    // Pins, on a channel and on a thread; `null` when the last pin goes.
    apply(
        &mut cache,
        "CHANNEL_PINS_UPDATE",
        r#"{"guild_id":"1100000000000000100","channel_id":"1110000000000000004","last_pin_timestamp":"2024-04-01T12:00:00.500000+00:00"}"#,
    );
    apply(
        &mut cache,
        "CHANNEL_PINS_UPDATE",
        r#"{"guild_id":"1100000000000000100","channel_id":"1130000000000000003","last_pin_timestamp":"2024-04-02T00:00:00+00:00"}"#,
    );
    apply(
        &mut cache,
        "CHANNEL_PINS_UPDATE",
        r#"{"guild_id":"1100000000000000100","channel_id":"1110000000000000002","last_pin_timestamp":null}"#,
    );
    let d = guild(&cache, GUILD);
    assert_eq!(
        item(&d["channels"], HELP)["last_pin_timestamp"],
        "2024-04-01T12:00:00.500000+00:00"
    );
    assert_eq!(
        item(&d["threads"], rfc)["last_pin_timestamp"],
        "2024-04-02T00:00:00+00:00"
    );
    assert_eq!(
        item(&d["channels"], GENERAL)["last_pin_timestamp"],
        Value::Null
    );

    // A sync without `channel_ids` covers every channel.
    apply(
        &mut cache,
        "THREAD_LIST_SYNC",
        r#"{"guild_id":"1100000000000000100","threads":[{"id":"1130000000000000004","type":12,"guild_id":"1100000000000000100","parent_id":"1110000000000000004","owner_id":"1200000000000000002","name":"private","last_message_id":null,"message_count":0,"member_count":1,"rate_limit_per_user":0,"flags":0,"thread_metadata":{"archived":false,"auto_archive_duration":60,"archive_timestamp":"2024-03-05T00:00:00+00:00","locked":false,"invitable":false}}],"members":[]}"#,
    );
    let d = guild(&cache, GUILD);
    assert_eq!(ids(&d["threads"]), ["1130000000000000004"]);

    // Deleting #help takes its threads along.
    apply(
        &mut cache,
        "CHANNEL_DELETE",
        r#"{"id":"1110000000000000004","type":0,"guild_id":"1100000000000000100","name":"help","position":2,"parent_id":"1110000000000000001","permission_overwrites":[],"last_message_id":null}"#,
    );
    let d = guild(&cache, GUILD);
    assert_eq!(d["threads"], json!([]));
    assert!(!has(&d["channels"], HELP));
    assert_eq!(cache.stats().channels, 3);
    assert_eq!(cache.stats().threads, 0);
}

#[test]
fn thread_updates_merge_and_archived_threads_leave_the_active_list() {
    let mut cache = loaded(Flags::default());
    // Created by the bot: `newly_created` is for the event only.
    let created = r#"{"id":"1130000000000000005","type":11,"guild_id":"1100000000000000100","parent_id":"1110000000000000002","owner_id":"1300000000000000010","name":"release 1.0","last_message_id":null,"message_count":0,"member_count":1,"rate_limit_per_user":0,"flags":0,"total_message_sent":0,"thread_metadata":{"archived":false,"auto_archive_duration":1440,"archive_timestamp":"2024-03-06T00:00:00.000000+00:00","locked":false,"create_timestamp":"2024-03-06T00:00:00.000000+00:00"},"member":{"id":"1130000000000000005","user_id":"1300000000000000010","join_timestamp":"2024-03-06T00:00:00.000000+00:00","flags":1},"newly_created":true}"#;
    apply(&mut cache, "THREAD_CREATE", created);
    let thread = item(&guild(&cache, GUILD)["threads"], "1130000000000000005").clone();
    assert!(thread.get("newly_created").is_none());
    assert_eq!(thread["member"]["user_id"], BOT);

    // THREAD_UPDATE carries no `member`: the bot's stays.
    apply(
        &mut cache,
        "THREAD_UPDATE",
        r#"{"id":"1130000000000000001","type":11,"guild_id":"1100000000000000100","parent_id":"1110000000000000002","owner_id":"1200000000000000001","name":"bikeshed (colour)","last_message_id":"1190000000000000002","message_count":3,"member_count":2,"rate_limit_per_user":0,"flags":0,"total_message_sent":3,"thread_metadata":{"archived":false,"auto_archive_duration":1440,"archive_timestamp":"2024-01-02T03:04:05.678900+00:00","locked":true,"create_timestamp":"2024-01-02T03:04:05.678900+00:00"}}"#,
    );
    let d = guild(&cache, GUILD);
    let bikeshed = item(&d["threads"], BIKESHED);
    assert_eq!(bikeshed["name"], "bikeshed (colour)");
    assert_eq!(bikeshed["thread_metadata"]["locked"], true);
    assert_eq!(bikeshed["member"]["flags"], 1);

    // Archived (by hand or by inactivity): no longer an active thread, as
    // a fresh GUILD_CREATE from Discord would not list it.
    apply(
        &mut cache,
        "THREAD_UPDATE",
        r#"{"id":"1130000000000000002","type":11,"guild_id":"1100000000000000100","parent_id":"1110000000000000004","owner_id":"1200000000000000002","name":"how do lifetimes work","last_message_id":null,"message_count":0,"member_count":1,"rate_limit_per_user":0,"flags":0,"total_message_sent":0,"thread_metadata":{"archived":true,"auto_archive_duration":60,"archive_timestamp":"2024-01-03T01:00:00+00:00","locked":false}}"#,
    );
    let d = guild(&cache, GUILD);
    assert_eq!(ids(&d["threads"]), [BIKESHED, "1130000000000000005"]);

    // Unarchived: active again.
    apply(
        &mut cache,
        "THREAD_UPDATE",
        r#"{"id":"1130000000000000002","type":11,"guild_id":"1100000000000000100","parent_id":"1110000000000000004","owner_id":"1200000000000000002","name":"how do lifetimes work","last_message_id":null,"message_count":0,"member_count":1,"rate_limit_per_user":0,"flags":0,"total_message_sent":0,"thread_metadata":{"archived":false,"auto_archive_duration":60,"archive_timestamp":"2024-01-04T00:00:00+00:00","locked":false}}"#,
    );
    assert!(has(&guild(&cache, GUILD)["threads"], LIFETIMES));

    apply(
        &mut cache,
        "THREAD_DELETE",
        r#"{"id":"1130000000000000002","guild_id":"1100000000000000100","parent_id":"1110000000000000004","type":11}"#,
    );
    assert!(!has(&guild(&cache, GUILD)["threads"], LIFETIMES));
}

#[test]
fn role_deletes_reach_members_and_everyone_is_kept_with_roles_off() {
    let mut cache = loaded(Flags::ALL);
    apply(
        &mut cache,
        "GUILD_ROLE_DELETE",
        r#"{"guild_id":"1100000000000000100","role_id":"1120000000000000001"}"#,
    );
    let d = guild(&cache, GUILD);
    assert_eq!(ids(&d["roles"]), [GUILD.to_string()]);
    for member in d["members"].as_array().unwrap() {
        assert_eq!(member["roles"], json!([]), "{member}");
    }
    assert_eq!(cache.stats().roles, 1);

    // Roles off: @everyone only, still updated; members still follow.
    let mut cache = loaded(only(|f| f.members = true));
    let d = guild(&cache, GUILD);
    assert_eq!(ids(&d["roles"]), [GUILD.to_string()]);
    assert!(!cache.wants("GUILD_ROLE_CREATE"));
    apply(
        &mut cache,
        "GUILD_ROLE_UPDATE",
        r#"{"guild_id":"1100000000000000100","role":{"id":"1100000000000000100","name":"@everyone","description":null,"permissions":"2248473465835073","position":0,"color":0,"colors":{"primary_color":0,"secondary_color":null,"tertiary_color":null},"hoist":false,"managed":false,"mentionable":false,"icon":null,"unicode_emoji":null,"flags":0,"version":1712345678999}}"#,
    );
    apply(
        &mut cache,
        "GUILD_ROLE_UPDATE",
        r#"{"guild_id":"1100000000000000100","role":{"id":"1120000000000000001","name":"Moderators","permissions":"8","position":1,"color":0,"hoist":true,"managed":false,"mentionable":true,"icon":null,"unicode_emoji":"🛡️","flags":0}}"#,
    );
    let d = guild(&cache, GUILD);
    assert_eq!(ids(&d["roles"]), [GUILD.to_string()]);
    let everyone = &d["roles"][0];
    assert_eq!(everyone["permissions"], "2248473465835073");
    assert_eq!(everyone["version"], 1_712_345_678_999_u64);
    assert!(cache.wants("GUILD_ROLE_DELETE"));
    apply(
        &mut cache,
        "GUILD_ROLE_DELETE",
        r#"{"guild_id":"1100000000000000100","role_id":"1120000000000000001"}"#,
    );
    assert_eq!(
        item(&guild(&cache, GUILD)["members"], ALICE)["roles"],
        json!([])
    );
}

#[test]
fn guild_update_merges_the_guild_and_replaces_roles_emojis_stickers() {
    let mut cache = loaded(Flags::ALL);
    // As Discord sends it: no joined_at, member_count, large, lists of
    // channels or members; no `description` this time.
    apply(
        &mut cache,
        "GUILD_UPDATE",
        r#"{"id":"1100000000000000100","name":"Rust ✓ \"Crabs\" 2","icon":null,"splash":null,"banner":"0123456789abcdef0123456789abcdef","owner_id":"1200000000000000002","afk_channel_id":"1110000000000000003","afk_timeout":900,"verification_level":2,"default_message_notifications":1,"explicit_content_filter":2,"features":["COMMUNITY"],"mfa_level":1,"application_id":null,"system_channel_id":"1110000000000000002","system_channel_flags":0,"rules_channel_id":"1110000000000000002","max_presences":null,"max_members":500000,"vanity_url_code":null,"premium_tier":3,"premium_subscription_count":14,"preferred_locale":"en-GB","public_updates_channel_id":"1110000000000000002","nsfw_level":0,"premium_progress_bar_enabled":false,"guild_id":"1100000000000000100","roles":[{"id":"1100000000000000100","name":"@everyone","permissions":"2222085186636353","position":0,"color":0,"hoist":false,"managed":false,"mentionable":false,"icon":null,"unicode_emoji":null,"flags":0},{"id":"1120000000000000002","name":"Helpers","permissions":"0","position":1,"color":15844367,"hoist":false,"managed":false,"mentionable":true,"icon":null,"unicode_emoji":"🦀","flags":0}],"emojis":[],"stickers":[{"id":"1150000000000000002","name":"ferris-wave","tags":"wave","type":2,"format_type":4,"description":null,"asset":"","available":true,"guild_id":"1100000000000000100"}]}"#,
    );
    let d = guild(&cache, GUILD);
    let before = original();
    assert_eq!(d["name"], "Rust ✓ \"Crabs\" 2");
    assert_eq!(d["icon"], Value::Null);
    assert_eq!(d["afk_timeout"], 900);
    assert_eq!(d["features"], json!(["COMMUNITY"]));
    for kept in [
        "description",
        "joined_at",
        "large",
        "future_field",
        "lazy",
        "version",
    ] {
        assert_eq!(d[kept], before[kept], "`{kept}` survives");
    }
    assert_eq!(d["member_count"], 4);
    assert_eq!(d["unavailable"], false);
    assert_eq!(
        ids(&d["roles"]),
        [GUILD.to_string().as_str(), "1120000000000000002"]
    );
    assert_eq!(d["emojis"], json!([]));
    assert_eq!(ids(&d["stickers"]), ["1150000000000000002"]);
    for list in [
        "channels",
        "threads",
        "members",
        "presences",
        "voice_states",
        "soundboard_sounds",
    ] {
        assert_eq!(
            sorted(d.clone())[list],
            sorted(before.clone())[list],
            "`{list}` untouched"
        );
    }
    // Each key once: the merge leaves no duplicate behind.
    let text = {
        let mut out = Vec::new();
        cache.write_guild(GUILD, 1, &mut out);
        String::from_utf8(out).unwrap()
    };
    assert_eq!(text.matches(r#""name":"Rust"#).count(), 1);
    assert_eq!(text.matches(r#""afk_timeout":"#).count(), 1);
}

#[test]
fn chunks_sounds_and_user_updates() {
    let mut cache = loaded(Flags::ALL);
    apply(
        &mut cache,
        "GUILD_MEMBERS_CHUNK",
        r#"{"guild_id":"1100000000000000100","members":[{"user":{"id":"1200000000000000003","username":"carol","discriminator":"0","global_name":"Carol ✓","avatar":"00112233445566778899aabbccddeeff"},"roles":[],"nick":null,"avatar":null,"joined_at":"2024-05-01T10:00:00.000000+00:00","premium_since":null,"deaf":false,"mute":true,"pending":false,"flags":0,"communication_disabled_until":null}],"chunk_index":0,"chunk_count":1,"not_found":[],"presences":[{"user":{"id":"1200000000000000003"},"status":"dnd","client_status":{"web":"dnd"},"activities":[],"broadcast":null}],"nonce":"chunk-1"}"#,
    );
    let d = guild(&cache, GUILD);
    assert_eq!(ids(&d["members"]), [ALICE, BOB, CAROL, BOT]);
    assert_eq!(item(&d["members"], CAROL)["mute"], true);
    assert!(item(&d["members"], CAROL).get("guild_id").is_none());
    assert_eq!(ids(&d["presences"]), [ALICE, BOB, CAROL]);
    assert_eq!(item(&d["presences"], CAROL)["status"], "dnd");
    assert_eq!(d["member_count"], 4, "a chunk is not a join");

    let sound = |id: &str, name: &str, volume: &str| {
        format!(
            r#"{{"sound_id":"{id}","name":"{name}","volume":{volume},"emoji_id":null,"emoji_name":"🔔","guild_id":"1100000000000000100","available":true,"user":{{"id":"1200000000000000001","username":"alice","discriminator":"0","avatar":null}}}}"#
        )
    };
    let (bell, gong) = ("1160000000000000002", "1160000000000000003");
    apply(
        &mut cache,
        "SOUNDBOARD_SOUNDS",
        &format!(
            r#"{{"soundboard_sounds":[{},{}],"guild_id":"1100000000000000100"}}"#,
            sound(bell, "bell", "0.5"),
            sound(gong, "gong", "1.0")
        ),
    );
    let d = guild(&cache, GUILD);
    assert_eq!(ids(&d["soundboard_sounds"]), [bell, gong]);
    assert_eq!(item(&d["soundboard_sounds"], bell)["volume"], 0.5);
    assert!(item(&d["soundboard_sounds"], gong)["volume"].is_f64());

    apply(
        &mut cache,
        "GUILD_SOUNDBOARD_SOUNDS_UPDATE",
        &format!(
            r#"{{"soundboard_sounds":[{}],"guild_id":"1100000000000000100"}}"#,
            sound(gong, r#"gong \"loud\""#, "0.75")
        ),
    );
    let d = guild(&cache, GUILD);
    assert_eq!(ids(&d["soundboard_sounds"]), [gong]);
    assert_eq!(item(&d["soundboard_sounds"], gong)["name"], "gong \"loud\"");

    apply(
        &mut cache,
        "GUILD_SOUNDBOARD_SOUND_CREATE",
        &sound(bell, "bell", "0.5"),
    );
    apply(
        &mut cache,
        "GUILD_SOUNDBOARD_SOUND_DELETE",
        &format!(r#"{{"sound_id":"{gong}","guild_id":"1100000000000000100"}}"#),
    );
    let d = guild(&cache, GUILD);
    assert_eq!(ids(&d["soundboard_sounds"]), [bell]);
    assert_eq!(cache.stats().soundboard_sounds, 1);

    // USER_UPDATE: the bot's own user in READY.
    apply(
        &mut cache,
        "USER_UPDATE",
        r#"{"id":"1300000000000000010","username":"proxy-bot-renamed","discriminator":"0","global_name":"Proxy \"Bot\" ✓","avatar":"a_ffeeddccbbaa99887766554433221100","bot":true,"flags":0,"public_flags":524288}"#,
    );
    let user = ready(&cache)["user"].take();
    assert_eq!(user["username"], "proxy-bot-renamed");
    assert_eq!(user["global_name"], "Proxy \"Bot\" ✓");
    assert_eq!(user["avatar"], "a_ffeeddccbbaa99887766554433221100");
    assert_eq!(
        user["mfa_enabled"], true,
        "fields absent from the update stay"
    );
    assert_eq!(user["id"], BOT);
}

#[test]
fn payloads_are_compact_with_the_envelope_in_order_and_stats_count_what_is_held() {
    let cache = loaded(Flags::ALL);
    let mut out = Vec::new();
    cache.write_ready(41, SESSION, &mut out).unwrap();
    envelope(&out, "READY", 41);
    out.clear();
    assert!(cache.write_guild(GUILD, 42, &mut out));
    assert!(out.starts_with(br#"{"t":"GUILD_CREATE","s":42,"op":0,"d":{"#));
    assert!(out.ends_with(b"}}"));
    envelope(&out, "GUILD_CREATE", 42);
    out.clear();
    assert!(cache.write_guild(DOWN, 43, &mut out));
    envelope(&out, "GUILD_DELETE", 43);
    // Appends, never clears.
    let mut out = b"prefix".to_vec();
    assert!(cache.write_guild(DOWN, 7, &mut out));
    assert!(out.starts_with(br#"prefix{"t":"GUILD_DELETE","s":7,"op":0,"d":{"#));

    let stats = cache.stats();
    assert_eq!(
        (
            stats.guilds,
            stats.unavailable_guilds,
            stats.members,
            stats.presences
        ),
        (2, 1, 3, 2)
    );
    assert_eq!(
        (
            stats.channels,
            stats.threads,
            stats.roles,
            stats.emojis,
            stats.stickers
        ),
        (4, 2, 2, 1, 1)
    );
    assert_eq!(
        (
            stats.voice_states,
            stats.stage_instances,
            stats.scheduled_events,
            stats.soundboard_sounds
        ),
        (1, 1, 1, 1)
    );
    assert!(stats.bytes > 0);

    // With no flags: the guild and @everyone.
    let none = loaded(Flags::NONE);
    let stats = none.stats();
    assert_eq!(
        (stats.guilds, stats.roles, stats.members, stats.channels),
        (2, 1, 0, 0)
    );
    assert!(stats.bytes < cache.stats().bytes);
    let d = guild(&none, GUILD);
    for list in [
        "channels",
        "threads",
        "emojis",
        "stickers",
        "members",
        "presences",
        "voice_states",
        "stage_instances",
        "guild_scheduled_events",
        "soundboard_sounds",
    ] {
        assert_eq!(d[list], json!([]), "`{list}` is there, empty");
    }
    assert_eq!(d["future_field"], json!({"nested": [1, 2.5, "x"]}));

    // The default flags: channels, threads, roles, and the bot.
    let stats = loaded(Flags::default()).stats();
    assert_eq!(
        (
            stats.channels,
            stats.threads,
            stats.roles,
            stats.members,
            stats.presences
        ),
        (4, 2, 2, 1, 0)
    );
    assert_eq!(Cache::new(Flags::default()).stats().guilds, 0);
}

#[test]
fn guilds_are_pending_from_ready_until_created_or_deleted() {
    let mut cache = Cache::new(Flags::default());
    assert_eq!(cache.pending_guilds(), 0);
    apply(&mut cache, "READY", READY);
    assert_eq!(cache.pending_guilds(), 2, "READY names two guilds");
    apply(&mut cache, "GUILD_CREATE", GUILD_CREATE);
    assert_eq!(cache.pending_guilds(), 1);
    apply(
        &mut cache,
        "GUILD_DELETE",
        r#"{"id":"1100000000000000200","unavailable":true}"#,
    );
    assert_eq!(cache.pending_guilds(), 0, "an outage counts as heard of");
    apply(&mut cache, "READY", READY);
    assert_eq!(cache.pending_guilds(), 2, "a new READY loads again");
}

/// The dispatches of the snapshot test: a member joins and one leaves, a
/// channel changes (with a key the cache has never seen), the bot's user
/// changes, the guild comes again in a new `GUILD_CREATE`, and the
/// unavailable guild is left.
fn changes() -> Vec<(&'static str, String)> {
    vec![
        (
            "GUILD_MEMBER_ADD",
            format!(
                r#"{{"guild_id":"{GUILD}","user":{{"id":"{CAROL}","username":"carol","discriminator":"0","avatar":null}},"roles":[],"joined_at":"2024-05-01T10:00:00+00:00","deaf":false,"mute":false,"flags":0}}"#
            ),
        ),
        (
            "GUILD_MEMBER_REMOVE",
            format!(
                r#"{{"guild_id":"{GUILD}","user":{{"id":"{BOB}","username":"bob","discriminator":"0","avatar":null}}}}"#
            ),
        ),
        (
            "CHANNEL_UPDATE",
            format!(
                r#"{{"id":"{GENERAL}","type":0,"guild_id":"{GUILD}","name":"lobby","position":0,"a_key_never_seen_before":{{"and_another":1}}}}"#
            ),
        ),
        (
            "USER_UPDATE",
            format!(
                r#"{{"id":"{BOT}","username":"renamed-bot","discriminator":"0","avatar":null}}"#
            ),
        ),
        (
            "GUILD_CREATE",
            GUILD_CREATE.replace("Rust \\\"Crabs\\\"", "Rust \\\"Ferris\\\""),
        ),
        ("GUILD_DELETE", format!(r#"{{"id":"{DOWN}"}}"#)),
    ]
}

#[test]
fn a_snapshot_writes_what_the_cache_held_when_it_was_taken() {
    let mut cache = loaded(Flags::ALL);
    let then = payloads(&cache);
    let snapshot = cache.snapshot();
    assert_eq!(snapshot_payloads(&snapshot), then);

    // The changes, one at a time: the snapshot never moves, and a second
    // one taken halfway keeps the state it saw.
    let mut halfway = None;
    for (i, (t, d)) in changes().iter().enumerate() {
        apply(&mut cache, t, d);
        assert_eq!(snapshot_payloads(&snapshot), then, "after {t}");
        if i == 2 {
            halfway = Some((cache.snapshot(), payloads(&cache)));
        }
    }
    let (halfway, halfway_then) = halfway.unwrap();
    assert_eq!(snapshot_payloads(&halfway), halfway_then);
    assert_ne!(halfway_then, then);

    // The cache has the new state, the same as a cache that was never
    // snapshotted.
    let mut fresh = loaded(Flags::ALL);
    for (t, d) in changes() {
        apply(&mut fresh, t, &d);
    }
    assert_eq!(payloads(&cache), payloads(&fresh));
    assert_ne!(payloads(&cache), then);
    assert_eq!(cache.guild_ids().collect::<Vec<_>>(), [GUILD]);
    let d = guild(&cache, GUILD);
    assert_eq!(d["name"], "Rust \"Ferris\" \\ café ✓");
    assert_eq!(ready(&cache)["user"]["username"], "renamed-bot");

    // And the snapshot: both guilds, the old names, Bob and not Carol.
    assert_eq!(snapshot.guild_ids().collect::<Vec<_>>(), [GUILD, DOWN]);
    let mut out = Vec::new();
    assert!(snapshot.write_guild(GUILD, 5, &mut out));
    let d = envelope(&out, "GUILD_CREATE", 5)["d"].take();
    assert_eq!(d["name"], "Rust \"Crabs\" \\ café ✓");
    assert!(has(&d["members"], BOB) && !has(&d["members"], CAROL));
    assert_eq!(item(&d["channels"], GENERAL)["name"], "general");
    out.clear();
    assert!(snapshot.write_guild(DOWN, 6, &mut out));
    envelope(&out, "GUILD_DELETE", 6);
    assert!(!snapshot.write_guild(STRANGER.parse().unwrap(), 7, &mut out));
    out.clear();
    snapshot.write_ready(1, SESSION, &mut out).unwrap();
    assert_eq!(
        envelope(&out, "READY", 1)["d"]["user"]["username"],
        "proxy-bot"
    );
}

#[test]
fn a_snapshot_outlives_the_cache_and_a_new_ready() {
    let mut cache = Cache::new(Flags::default());
    let empty = cache.snapshot();
    assert!(empty.is_empty());
    assert_eq!(empty.len(), 0);
    let mut out = Vec::new();
    let err = empty.write_ready(1, SESSION, &mut out).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::NoReady), "{err}");
    assert!(out.is_empty());
    assert_eq!(empty.into_guilds().count(), 0);

    apply(&mut cache, "READY", READY);
    apply(&mut cache, "GUILD_CREATE", GUILD_CREATE);
    let then = payloads(&cache);
    let snapshot = cache.snapshot();
    // A new upstream session: READY starts over.
    apply(&mut cache, "READY", READY);
    assert_eq!(snapshot_payloads(&snapshot), then);
    drop(cache);
    assert_eq!(snapshot_payloads(&snapshot), then);
    let available: Vec<(u64, bool)> = snapshot
        .into_guilds()
        .map(|g| (g.id(), g.is_available()))
        .collect();
    assert_eq!(available, [(GUILD, true), (DOWN, false)]);
}

#[test]
fn snapshots_cross_tasks() {
    fn crosses_tasks<T: Send + Sync + std::fmt::Debug + Clone + 'static>() {}
    fn sendable<T: Send + Sync>() {}
    crosses_tasks::<Snapshot>();
    crosses_tasks::<SnapshotGuilds>();
    crosses_tasks::<SnapshotGuild>();
    sendable::<Cache>();

    let snapshot = loaded(Flags::ALL).snapshot();
    let shown = format!("{snapshot:?}");
    assert!(shown.len() < 100, "Debug does not dump the guilds: {shown}");
    let written = std::thread::spawn(move || snapshot_payloads(&snapshot))
        .join()
        .unwrap();
    assert_eq!(written, payloads(&loaded(Flags::ALL)));
}

#[test]
fn stats_are_kept_as_the_cache_changes() {
    let mut cache = Cache::new(Flags::ALL);
    assert_eq!(cache.stats(), cache.walked_stats());
    apply(&mut cache, "READY", READY);
    apply(&mut cache, "GUILD_CREATE", GUILD_CREATE);
    let loaded_stats = cache.stats();
    // Held by a snapshot, the guild is copied on the next change: the
    // stats count the copy the cache holds, once.
    let snapshot = cache.snapshot();
    for (t, d) in changes() {
        apply(&mut cache, t, &d);
    }
    assert_eq!(cache.stats().guilds, 1);
    assert_eq!(cache.stats().unavailable_guilds, 0);
    assert_eq!(cache.stats().members, 3, "the new GUILD_CREATE's");
    apply(
        &mut cache,
        "GUILD_DELETE",
        r#"{"id":"1100000000000000100","unavailable":true}"#,
    );
    let stats = cache.stats();
    assert_eq!((stats.guilds, stats.unavailable_guilds), (1, 1));
    assert_eq!((stats.members, stats.channels, stats.roles), (0, 0, 0));
    drop(snapshot);
    // A bad dispatch changes no count.
    cache.apply("GUILD_CREATE", br#"{"id":"#).unwrap_err();
    assert_eq!(cache.stats(), stats);
    apply(&mut cache, "READY", READY);
    apply(&mut cache, "GUILD_CREATE", GUILD_CREATE);
    // The same counts as before; more bytes: the key table has grown.
    let (mut again, mut before) = (cache.stats(), loaded_stats);
    assert!(again.bytes > before.bytes);
    (again.bytes, before.bytes) = (0, 0);
    assert_eq!(again, before);
}

#[test]
fn an_error_never_quotes_the_dispatch() {
    let mut cache = state_cache::Cache::new(state_cache::Flags::ALL);
    let secret = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDpzZWNyZXQtdG9rZW4";
    // The parser stops right at the token (a bare word is not JSON).
    let bad = format!(r#"{{"id":"1","name":"g","token":{secret}}}"#);
    let error = cache
        .apply("GUILD_CREATE", bad.as_bytes())
        .unwrap_err()
        .to_string();
    for window in secret.as_bytes().windows(6) {
        let piece = std::str::from_utf8(window).unwrap();
        assert!(!error.contains(piece), "{piece} in {error}");
    }
    assert!(error.contains("GUILD_CREATE"), "{error}");
}

#[test]
fn the_bots_own_voice_state_is_kept_whatever_the_flags() {
    let bot_state = |channel: &str| {
        format!(
            r#"{{"member":{{"user":{{"id":"{BOT}","username":"proxy-bot","discriminator":"0"}},"roles":[],"joined_at":"2020-05-17T08:00:00+00:00","deaf":false,"mute":false}},"user_id":"{BOT}","suppress":false,"session_id":"upstream-voice-session","self_video":false,"self_mute":false,"self_deaf":true,"request_to_speak_timestamp":null,"mute":false,"guild_id":"1100000000000000100","deaf":false,"channel_id":{channel}}}"#
        )
    };
    let alice = r#"{"user_id":"1200000000000000001","session_id":"x","self_video":false,"self_mute":false,"self_deaf":false,"mute":false,"deaf":false,"suppress":false,"request_to_speak_timestamp":null,"guild_id":"1100000000000000100","channel_id":"1110000000000000003"}"#;
    for flags in [Flags::NONE, Flags::default()] {
        let mut cache = loaded(flags);
        // Bob's voice state from GUILD_CREATE: not kept; nor is Alice's.
        assert_eq!(guild(&cache, GUILD)["voice_states"], json!([]));
        assert!(cache.wants("VOICE_STATE_UPDATE"), "the bot's may come");
        apply(&mut cache, "VOICE_STATE_UPDATE", alice);
        assert_eq!(guild(&cache, GUILD)["voice_states"], json!([]));
        apply(
            &mut cache,
            "VOICE_STATE_UPDATE",
            &bot_state(r#""1110000000000000003""#),
        );
        let d = guild(&cache, GUILD);
        assert_eq!(
            ids(&d["voice_states"]),
            [BOT],
            "what a client's voice needs"
        );
        assert_eq!(
            item(&d["voice_states"], BOT)["session_id"],
            "upstream-voice-session"
        );
        assert_eq!(cache.stats().voice_states, 1);
        apply(&mut cache, "VOICE_STATE_UPDATE", &bot_state("null"));
        assert_eq!(guild(&cache, GUILD)["voice_states"], json!([]));
        // In a GUILD_CREATE too.
        let mut create: Value = serde_json::from_str(GUILD_CREATE).unwrap();
        let mut state: Value =
            serde_json::from_str(&bot_state(r#""1110000000000000003""#)).unwrap();
        state.as_object_mut().unwrap().remove("member");
        state.as_object_mut().unwrap().remove("guild_id");
        create["voice_states"].as_array_mut().unwrap().push(state);
        apply(&mut cache, "GUILD_CREATE", &create.to_string());
        assert_eq!(ids(&guild(&cache, GUILD)["voice_states"]), [BOT]);
    }
}
