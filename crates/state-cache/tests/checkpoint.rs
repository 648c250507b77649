//! A cache written out with `Cache::checkpoint` and read back with
//! `Cache::restore` is the same cache: the same READY, the same guilds, the
//! same counts, and it goes on taking the stream as the original does. A
//! checkpoint that is damaged, of other flags or of another version is an
//! error, never a panic.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

use discord_sim::{EventStream, KNOWN_INTENTS, SimConfig, World, normalized};
use serde_json::{Value, json};
use state_cache::{Cache, ErrorKind, Flags, Session};

fn world() -> World {
    let mut config = SimConfig::default();
    config.guilds = 6;
    config.unavailable_guilds = 1;
    config.members_per_guild = 20;
    config.voice_states_per_guild = 3;
    config.presences_per_guild = 8;
    config.extras_per_guild = 2;
    config.seed = 17;
    World::generate(&config)
}

/// A cache fed the world's READY and guilds.
fn started(flags: Flags, world: &World) -> Cache {
    let guilds: Vec<Value> = world
        .guilds
        .iter()
        .map(|g| json!({"id": g.id.to_string(), "unavailable": true}))
        .collect();
    let ready = json!({
        "v": 10,
        "user": {"id": world.bot.id.to_string(), "username": world.bot.username, "bot": true},
        "session_id": "upstream", "resume_gateway_url": "wss://upstream.example",
        "guilds": guilds, "shard": [0, 1],
        "application": {"id": world.application_id.to_string(), "flags": 0},
    });
    let mut cache = Cache::new(flags);
    cache.apply("READY", ready.to_string().as_bytes()).unwrap();
    // One guild stays pending: READY named it, nothing came for it yet.
    for guild in world.guilds.iter().skip(1) {
        let d = guild.guild_create(&world.bot, KNOWN_INTENTS, 250);
        let t = if guild.unavailable {
            "GUILD_DELETE"
        } else {
            "GUILD_CREATE"
        };
        cache.apply(t, d.as_bytes()).unwrap();
    }
    cache
}

/// What a cache holds, without the heap estimate (capacities differ in a
/// cache built afresh).
fn held(cache: &Cache) -> state_cache::Stats {
    let mut stats = cache.stats();
    stats.bytes = 0;
    stats
}

/// Feeds `n` dispatches of `stream` to every cache of `caches`.
fn feed(stream: &mut EventStream, world: &mut World, n: usize, caches: &mut [&mut Cache]) {
    for _ in 0..n {
        let dispatch = stream.next(world).unwrap();
        for cache in caches.iter_mut() {
            if cache.wants(&dispatch.t) {
                cache.apply(&dispatch.t, dispatch.d.as_bytes()).unwrap();
            }
        }
    }
}

/// What a client would be sent: READY and each guild, as JSON values with
/// lists in a fixed order (a map's order is not part of what is kept).
fn written(cache: &Cache) -> Vec<Value> {
    let session = Session {
        session_id: "client",
        resume_gateway_url: "ws://proxy",
    };
    let mut out = Vec::new();
    cache.write_ready(1, session, &mut out).unwrap();
    let mut values = vec![normalized(serde_json::from_slice(&out).unwrap())];
    for id in cache.guild_ids() {
        out.clear();
        assert!(cache.write_guild(id, 2, &mut out));
        values.push(normalized(serde_json::from_slice(&out).unwrap()));
    }
    values
}

#[test]
fn a_restored_cache_is_the_same_and_goes_on_the_same() {
    for flags in [Flags::default(), Flags::ALL, Flags::NONE] {
        let mut world = world();
        let mut cache = started(flags, &world);
        let mut stream = EventStream::new(&world, 3, 0, 1);
        feed(&mut stream, &mut world, 3000, &mut [&mut cache]);

        let mut checkpoint = Vec::new();
        cache.checkpoint(&mut checkpoint);
        let mut restored = Cache::restore(flags, &checkpoint).unwrap();
        assert_eq!(written(&restored), written(&cache), "{flags:?}");
        assert_eq!(held(&restored), held(&cache), "{flags:?}");
        assert_eq!(restored.stats(), restored.walked_stats(), "{flags:?}");
        assert_eq!(restored.pending_guilds(), 1);

        feed(
            &mut stream,
            &mut world,
            3000,
            &mut [&mut cache, &mut restored],
        );
        assert_eq!(written(&restored), written(&cache), "{flags:?}, later");
        assert_eq!(held(&restored), held(&cache), "{flags:?}, later");
        assert_eq!(
            restored.stats(),
            restored.walked_stats(),
            "{flags:?}, later"
        );
    }
}

#[test]
fn a_checkpoint_that_is_not_this_caches_is_an_error_never_a_panic() {
    let mut world = world();
    let mut cache = started(Flags::ALL, &world);
    let mut stream = EventStream::new(&world, 3, 0, 1);
    feed(&mut stream, &mut world, 300, &mut [&mut cache]);
    let mut whole = Vec::new();
    cache.checkpoint(&mut whole);
    let refused = |bytes: &[u8], flags: Flags| match Cache::restore(flags, bytes) {
        Err(error) => {
            assert!(matches!(error.kind(), ErrorKind::Checkpoint(_)));
            assert!(
                error.to_string().starts_with("cache checkpoint: "),
                "{error}"
            );
        }
        Ok(_) => panic!("{} bytes read back", bytes.len()),
    };
    refused(&whole, Flags::default());
    for n in (0..whole.len()).step_by(13).chain([whole.len() - 1]) {
        refused(&whole[..n], Flags::ALL);
    }
    let mut longer = whole.clone();
    longer.push(0);
    refused(&longer, Flags::ALL);
    let mut version = whole.clone();
    version[0] = 2;
    refused(&version, Flags::ALL);
    // Garbled anywhere: an error, or a cache that still writes JSON.
    for i in (0..whole.len()).step_by(29) {
        for mask in [0x01, 0x22, 0x80] {
            let mut garbled = whole.clone();
            garbled[i] ^= mask;
            if let Ok(cache) = Cache::restore(Flags::ALL, &garbled) {
                let mut out = Vec::new();
                for id in cache.guild_ids() {
                    out.clear();
                    cache.write_guild(id, 2, &mut out);
                    serde_json::from_slice::<Value>(&out)
                        .unwrap_or_else(|e| panic!("byte {i} ^ {mask:#x}: {e}"));
                }
            }
        }
    }
}
