//! The cache against the sim's ground truth: fed a world's `GUILD_CREATE`s
//! and a long stream of the sim's dispatches, it must give back each
//! guild's `GUILD_CREATE` as the sim now writes it, as a JSON value, for
//! every flag preset, with only the documented differences for flags that
//! are off.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

use discord_sim::{EventStream, KNOWN_INTENTS, SimConfig, World, item_id, normalized};
use serde_json::{Value, json};
use state_cache::{Cache, Flags, Session, Snapshot};

/// Far above any guild's size, so every member comes in `GUILD_CREATE`.
const LARGE_THRESHOLD: u64 = 250;
const EVENTS: usize = 20_000;

fn config() -> SimConfig {
    let mut config = SimConfig::default();
    config.guilds = 7;
    config.unavailable_guilds = 1;
    config.members_per_guild = 25;
    config.voice_states_per_guild = 4;
    config.presences_per_guild = 10;
    config.extras_per_guild = 3;
    config.seed = 11;
    config
}

fn ready_of(world: &World) -> String {
    let guilds: Vec<Value> = world
        .guilds
        .iter()
        .map(|g| json!({"id": g.id.to_string(), "unavailable": true}))
        .collect();
    json!({
        "v": 10,
        "user_settings": {},
        "user": {"id": world.bot.id.to_string(), "username": world.bot.username, "discriminator": "0",
                 "avatar": null, "bot": true, "mfa_enabled": true, "verified": true, "flags": 0},
        "session_type": "normal",
        "session_id": "upstream-session",
        "resume_gateway_url": "wss://upstream.example",
        "guilds": guilds,
        "shard": [0, 1],
        "application": {"id": world.application_id.to_string(), "flags": 565_248},
        "_trace": ["[\"gateway-prd\",{\"micros\":1}]"],
    })
    .to_string()
}

/// A cache fed the world's READY, its `GUILD_CREATE`s and `EVENTS`
/// dispatches of its stream (which change the world as they say). After
/// every dispatch, the totals the cache keeps for `stats()` must be what a
/// walk over the whole cache counts.
fn fed(flags: Flags) -> (Cache, World) {
    fed_with(flags, |_, _| {})
}

/// [`fed`], calling `each` with the number of dispatches of the stream
/// applied so far and the cache, after READY and the `GUILD_CREATE`s and
/// after each dispatch.
fn fed_with(flags: Flags, mut each: impl FnMut(usize, &Cache)) -> (Cache, World) {
    let mut world = World::generate(&config());
    let mut cache = Cache::new(flags);
    cache.apply("READY", ready_of(&world).as_bytes()).unwrap();
    for guild in &world.guilds {
        let d = guild.guild_create(&world.bot, KNOWN_INTENTS, LARGE_THRESHOLD);
        let t = if guild.unavailable {
            "GUILD_DELETE"
        } else {
            "GUILD_CREATE"
        };
        cache.apply(t, d.as_bytes()).unwrap();
        assert_eq!(cache.stats(), cache.walked_stats(), "{t}");
    }
    each(0, &cache);
    let mut stream = EventStream::new(&world, 5, 0, 1);
    let mut seen = std::collections::BTreeSet::new();
    for i in 1..=EVENTS {
        let dispatch = stream.next(&mut world).unwrap();
        if cache.wants(&dispatch.t) {
            cache
                .apply(&dispatch.t, dispatch.d.as_bytes())
                .unwrap_or_else(|e| panic!("{e}: {}", dispatch.d));
            assert_eq!(
                cache.stats(),
                cache.walked_stats(),
                "kept totals after dispatch {i}, {}",
                dispatch.t
            );
        }
        each(i, &cache);
        seen.insert(dispatch.t);
    }
    assert!(
        seen.len() >= 25,
        "the stream changes every kind of state: {seen:?}"
    );
    (cache, world)
}

/// The sim's `GUILD_CREATE` as a cache with `flags` gives it back: the
/// documented differences for flags that are off.
fn expected(truth: &str, flags: Flags, bot_id: u64) -> Value {
    let mut d: Value = serde_json::from_str(truth).unwrap();
    let guild_id = d["id"].clone();
    let mut empty = |key: &str, keep: &dyn Fn(&Value) -> bool| {
        if let Some(items) = d[key].as_array_mut() {
            items.retain(keep);
        }
    };
    let off = |on: bool| move |_: &Value| on;
    empty("channels", &off(flags.channels));
    empty("threads", &off(flags.threads));
    empty("roles", &|r: &Value| flags.roles || r["id"] == guild_id);
    empty("emojis", &off(flags.emojis));
    empty("stickers", &off(flags.stickers));
    empty("soundboard_sounds", &off(flags.soundboard_sounds));
    empty("presences", &off(flags.presences));
    empty("voice_states", &off(flags.voice_states));
    empty("stage_instances", &off(flags.stage_instances));
    empty("guild_scheduled_events", &off(flags.scheduled_events));
    let bot = Value::String(bot_id.to_string());
    empty("members", &|m: &Value| {
        flags.members || (flags.current_member && m["user"]["id"] == bot)
    });
    normalized(d)
}

/// Where `got` first differs from `want`, as a path and both values.
fn first_difference(path: &str, got: &Value, want: &Value) -> Option<String> {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            for key in w.keys().chain(g.keys()) {
                let (g, w) = (
                    g.get(key).unwrap_or(&Value::Null),
                    w.get(key).unwrap_or(&Value::Null),
                );
                if let Some(d) = first_difference(&format!("{path}.{key}"), g, w) {
                    return Some(d);
                }
            }
            None
        }
        (Value::Array(g), Value::Array(w)) => {
            let (gi, wi): (Vec<String>, Vec<String>) = (
                g.iter().map(item_id).collect(),
                w.iter().map(item_id).collect(),
            );
            if gi != wi {
                return Some(format!("{path}: items {gi:?}, expected {wi:?}"));
            }
            g.iter()
                .zip(w)
                .zip(wi)
                .find_map(|((g, w), id)| first_difference(&format!("{path}[{id}]"), g, w))
        }
        _ => (got != want).then(|| format!("{path}: {got}, expected {want}")),
    }
}

fn payload(cache: &Cache, id: u64, seq: u64) -> Value {
    let mut out = Vec::new();
    assert!(cache.write_guild(id, seq, &mut out));
    let text = std::str::from_utf8(&out).unwrap();
    assert!(
        text.starts_with(r#"{"t":"GUILD_"#)
            && text.contains(&format!(r#"","s":{seq},"op":0,"d":{{"#)),
        "envelope in Discord's order: {}",
        &text[..text.len().min(80)]
    );
    serde_json::from_str(text).unwrap()
}

fn check_preset(name: &str, flags: Flags) {
    let (cache, world) = fed(flags);
    let ids: Vec<u64> = cache.guild_ids().collect();
    let truth_ids: Vec<u64> = world.guilds.iter().map(|g| g.id).collect();
    assert_eq!(ids, truth_ids, "{name}: every guild, in id order");
    for (seq, guild) in (2..).zip(&world.guilds) {
        let got = payload(&cache, guild.id, seq);
        let truth = guild.guild_create(&world.bot, KNOWN_INTENTS, LARGE_THRESHOLD);
        if guild.unavailable {
            assert_eq!(got["t"], "GUILD_DELETE", "{name}");
            assert_eq!(
                got["d"],
                serde_json::from_str::<Value>(&truth).unwrap(),
                "{name}"
            );
            continue;
        }
        assert_eq!(got["t"], "GUILD_CREATE", "{name}");
        let want = expected(&truth, flags, world.bot.id);
        let got = normalized(got["d"].clone());
        if let Some(difference) = first_difference("d", &got, &want) {
            panic!("{name}: guild {}: {difference}", guild.id);
        }
    }
}

#[test]
fn the_default_flags_give_back_the_truth() {
    check_preset("default", Flags::default());
}

#[test]
fn every_flag_on_gives_back_the_whole_truth() {
    check_preset("all", Flags::ALL);
}

#[test]
fn no_flag_gives_back_the_guilds_with_everyone_and_nothing_else() {
    check_preset("none", Flags::NONE);
}

#[test]
fn each_flag_alone_gives_back_its_part_of_the_truth() {
    type Set = fn(&mut Flags);
    let singles: [(&str, Set); 13] = [
        ("channels", |f| f.channels = true),
        ("threads", |f| f.threads = true),
        ("roles", |f| f.roles = true),
        ("emojis", |f| f.emojis = true),
        ("stickers", |f| f.stickers = true),
        ("soundboard_sounds", |f| f.soundboard_sounds = true),
        ("members", |f| f.members = true),
        ("current_member", |f| f.current_member = true),
        ("presences", |f| f.presences = true),
        ("users", |f| f.users = true),
        ("voice_states", |f| f.voice_states = true),
        ("stage_instances", |f| f.stage_instances = true),
        ("scheduled_events", |f| f.scheduled_events = true),
    ];
    for (name, set) in singles {
        let mut flags = Flags::NONE;
        set(&mut flags);
        check_preset(name, flags);
    }
}

#[test]
fn ready_lists_every_guild_and_carries_the_clients_session() {
    let (cache, world) = fed(Flags::default());
    let mut out = Vec::new();
    let session = Session {
        session_id: "0123456789abcdef0123456789abcdef",
        resume_gateway_url: "ws://127.0.0.1:7878",
    };
    cache.write_ready(1, session, &mut out).unwrap();
    assert!(out.starts_with(br#"{"t":"READY","s":1,"op":0,"d":{"#));
    let ready: Value = serde_json::from_slice(&out).unwrap();
    let upstream: Value = serde_json::from_str(&ready_of(&world)).unwrap();
    let d = &ready["d"];
    assert_eq!(d["session_id"], session.session_id);
    assert_eq!(d["resume_gateway_url"], session.resume_gateway_url);
    let guilds: Vec<&Value> = d["guilds"].as_array().unwrap().iter().collect();
    assert_eq!(guilds.len(), world.guilds.len());
    for (stub, guild) in guilds.iter().zip(&world.guilds) {
        assert_eq!(
            **stub,
            json!({"id": guild.id.to_string(), "unavailable": true})
        );
    }
    // Everything else as upstream sent it.
    for (key, value) in upstream.as_object().unwrap() {
        if !["session_id", "resume_gateway_url", "guilds"].contains(&key.as_str()) {
            assert_eq!(&d[key], value, "READY `{key}`");
        }
    }
    assert_eq!(
        d.as_object().unwrap().len(),
        upstream.as_object().unwrap().len()
    );
}

/// READY and every guild's payload, as a client gets them.
fn payloads(cache: &Cache) -> Vec<u8> {
    let mut out = Vec::new();
    cache.write_ready(1, SESSION, &mut out).unwrap();
    for (seq, id) in (2..).zip(cache.guild_ids()) {
        assert!(cache.write_guild(id, seq, &mut out));
    }
    out
}

/// [`payloads`] from a snapshot, writing the guilds one by one.
fn snapshot_payloads(snapshot: Snapshot) -> Vec<u8> {
    let mut out = Vec::new();
    snapshot.write_ready(1, SESSION, &mut out).unwrap();
    for (seq, guild) in (2..).zip(snapshot.into_guilds()) {
        guild.write(seq, &mut out);
    }
    out
}

const SESSION: Session<'static> = Session {
    session_id: "0123456789abcdef0123456789abcdef",
    resume_gateway_url: "ws://127.0.0.1:7878",
};

#[test]
fn snapshots_taken_along_the_stream_keep_their_bytes() {
    for flags in [Flags::ALL, Flags::default()] {
        // Snapshots held across the stream, and what the cache wrote when
        // each was taken.
        let mut held: Vec<(usize, Snapshot, Vec<u8>)> = Vec::new();
        let (cache, _) = fed_with(flags, |i, cache| {
            if i % 1500 == 0 {
                held.push((i, cache.snapshot(), payloads(cache)));
            }
        });
        assert!(held.len() > 10);
        for (i, snapshot, then) in held {
            assert_eq!(snapshot.len(), cache.guild_ids().len());
            assert!(
                snapshot_payloads(snapshot) == then,
                "the snapshot after {i} dispatches still writes what the cache wrote then"
            );
        }
        // Copying guilds on write changed nothing the cache writes.
        let (unshared, _) = fed(flags);
        assert!(payloads(&cache) == payloads(&unshared));
        // The same counts; the bytes may differ, as a copied guild's lists
        // have no spare capacity.
        let (mut shared, mut unshared) = (cache.stats(), unshared.stats());
        (shared.bytes, unshared.bytes) = (0, 0);
        assert_eq!(shared, unshared);
    }
}
