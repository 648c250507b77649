//! Start-up: the range, the state, pacing, commands, and refusals.

use std::time::Duration;

use discord_sim::World;
use serde_json::Value;
use shard_pool::{Activity, ErrorKind, Pool, ShardEvent, ShardState};

use super::{assert_contiguous, config, marked, ready, sim};

#[tokio::test]
async fn every_shard_becomes_ready_with_its_guilds_and_hands_on_events_in_order() {
    let sim = sim(|c| {
        c.shards = 2;
        c.guilds = 6;
        c.unavailable_guilds = 1;
    })
    .await;
    let pool = Pool::start(config(&sim)).await.unwrap();
    assert_eq!((pool.total(), pool.range()), (2, 0..2));
    ready(&pool, 10).await;
    let world = sim.world();
    for shard in pool.shards() {
        let status = shard.status();
        assert_eq!(status.state, ShardState::Active);
        assert_eq!(status.pending_guilds, 0);
        let mut snapshot = shard.snapshot(|cache| cache.guild_ids().collect::<Vec<_>>());
        let truth: Vec<u64> = world.guilds_of(shard.id(), 2).map(|g| g.id).collect();
        assert_eq!(snapshot.value, truth, "shard {}", shard.id());
        let markers = marked(&mut snapshot.events, 20).await;
        assert!(markers.iter().all(|(s, _)| *s == u64::from(shard.id())));
        assert_contiguous(&markers);
    }
    assert_eq!(sim.identifies_refused(), 0);
    assert_eq!(
        (sim.identifies(), sim.resumes()),
        (2, 0),
        "one session each"
    );
    // zstd-stream by default; zlib-stream when built with only `zlib`;
    // none at all without either.
    let expected = if cfg!(feature = "zstd") {
        Some("compress=zstd-stream")
    } else if cfg!(feature = "zlib") {
        Some("compress=zlib-stream")
    } else {
        None
    };
    for connection in sim.connections() {
        match expected {
            Some(expected) => assert!(connection.query.contains(expected), "{}", connection.query),
            None => assert!(
                !connection.query.contains("compress"),
                "{}",
                connection.query
            ),
        }
    }
}

#[tokio::test]
async fn a_range_that_starts_past_zero_runs_only_its_shards() {
    let sim = sim(|c| c.shards = 4).await;
    let mut config = config(&sim);
    config.shard_start = 2;
    let pool = Pool::start(config).await.unwrap();
    assert_eq!((pool.total(), pool.range()), (4, 2..4));
    assert!(pool.shard(1).is_none());
    ready(&pool, 10).await;
    for id in [2, 3] {
        let shard = pool.shard(id).unwrap();
        let mut events = shard.subscribe();
        let markers = marked(&mut events, 5).await;
        assert!(
            markers.iter().all(|(s, _)| *s == u64::from(id)),
            "{markers:?}"
        );
    }
    let identified: Vec<u32> = sim.connections().iter().filter_map(|c| c.shard).collect();
    assert!(identified.iter().all(|s| *s >= 2), "{identified:?}");
}

#[tokio::test]
async fn identifies_are_paced_as_discord_asks() {
    let sim = sim(|c| {
        c.shards = 8;
        c.max_concurrency = 2;
        c.identify_interval = Duration::from_millis(300);
        c.events_per_sec = 0;
    })
    .await;
    let start = tokio::time::Instant::now();
    let pool = Pool::start(config(&sim)).await.unwrap();
    ready(&pool, 20).await;
    // Four identifies per bucket, one window apart.
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        sim.identifies_refused(),
        0,
        "never two in one bucket within the window"
    );
    assert_eq!(sim.identifies_remaining(), 1000 - 8);
}

#[tokio::test]
async fn commands_go_upstream_byte_for_byte_and_answers_come_back() {
    let sim = sim(|c| c.events_per_sec = 0).await;
    let pool = Pool::start(config(&sim)).await.unwrap();
    ready(&pool, 10).await;
    let shard = &pool.shards()[0];
    let guild = sim.world().guilds[0].id;
    let mut events = shard.subscribe();
    let command = format!(
        r#"{{"op":8,"d":{{"guild_id":"{guild}","query":"","limit":0,"nonce":"pool-test"}}}}"#
    );
    shard.send(command.clone()).unwrap();
    let chunk = loop {
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
            .unwrap();
        if let ShardEvent::Dispatch(d) = event
            && d.event_type() == Some("GUILD_MEMBERS_CHUNK")
        {
            break d;
        }
    };
    let d: Value = serde_json::from_slice(chunk.scan().d(chunk.payload()).unwrap()).unwrap();
    assert_eq!(d["nonce"], "pool-test");
    let received = sim
        .connections()
        .iter()
        .flat_map(|c| c.received.clone())
        .any(|text| text == command);
    assert!(received, "the sim got the command byte for byte");
}

#[tokio::test]
async fn a_burst_of_commands_arrives_whole_in_order_without_a_rate_limit_close() {
    let sim = sim(|c| c.events_per_sec = 0).await;
    let pool = Pool::start(config(&sim)).await.unwrap();
    ready(&pool, 10).await;
    let shard = &pool.shards()[0];
    let commands: Vec<String> = (0..100)
        .map(|i| {
            format!(
                r#"{{"op":3,"d":{{"since":{i},"activities":[],"status":"online","afk":false}}}}"#
            )
        })
        .collect();
    for command in &commands {
        shard.send(command.clone()).unwrap();
    }
    let received = || -> Vec<String> {
        sim.connections()
            .iter()
            .flat_map(|c| c.received.clone())
            .filter(|text| text.starts_with(r#"{"op":3"#))
            .collect()
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        while received().len() < commands.len() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        received(),
        commands,
        "every command, byte for byte, in order"
    );
    let connections = sim.connections();
    assert!(connections.iter().all(|c| c.open), "no 4008 close");
}

#[tokio::test]
async fn shards_identify_with_the_configured_presence() {
    let sim = sim(|c| {
        c.shards = 2;
        c.events_per_sec = 0;
    })
    .await;
    let mut config = config(&sim);
    config.presence.status = "dnd".to_owned();
    config.presence.activity = Some(Activity::new(3, "shard {{shard}} of the proxy"));
    let pool = Pool::start(config).await.unwrap();
    ready(&pool, 10).await;
    for connection in sim.connections() {
        let identify = connection
            .received
            .iter()
            .find(|text| text.contains(r#""op":2"#))
            .unwrap();
        let identify: Value = serde_json::from_str(identify).unwrap();
        let presence = &identify["d"]["presence"];
        let shard = identify["d"]["shard"][0].as_u64().unwrap();
        assert_eq!(presence["status"], "dnd");
        assert_eq!(presence["activities"][0]["type"], 3);
        assert_eq!(
            presence["activities"][0]["name"],
            format!("shard {shard} of the proxy")
        );
    }
}

#[tokio::test]
async fn a_wrong_token_or_too_few_identifies_stops_start_with_a_clear_error() {
    let sim = sim(|c| {
        c.shards = 3;
        c.session_start_total = 2;
    })
    .await;
    let mut wrong = config(&sim);
    wrong.token = "not-the-token".into();
    let error = Pool::start(wrong).await.unwrap_err();
    assert!(matches!(error.kind(), ErrorKind::Rest(_)), "{error}");
    assert!(error.to_string().contains("401"), "{error}");

    let error = Pool::start(config(&sim)).await.unwrap_err();
    assert!(
        matches!(
            error.kind(),
            ErrorKind::SessionStartLimit {
                remaining: 2,
                needed: 3,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(sim.identifies_remaining(), 2, "nothing was identified");

    let mut bad = config(&sim);
    bad.api_base = Some("127.0.0.1:1/api".to_owned());
    assert!(matches!(
        Pool::start(bad).await.unwrap_err().kind(),
        ErrorKind::Config(_)
    ));
}

#[tokio::test]
async fn the_shard_of_a_guild_is_discords() {
    let sim = sim(|c| {
        c.shards = 3;
        c.events_per_sec = 0;
    })
    .await;
    let pool = Pool::start(config(&sim)).await.unwrap();
    for guild in &sim.world().guilds {
        assert_eq!(pool.shard_of_guild(guild.id), World::shard_of(guild.id, 3));
    }
}

#[tokio::test]
async fn a_pool_given_what_gateway_bot_said_does_not_ask_again() {
    let sim = sim(|_| {}).await;
    let mut config = config(&sim);
    config.gateway = Some(shard_pool::GatewayInfo::fetch(&config).await.unwrap());
    // Nothing listens there: asking again would fail the start.
    config.api_base = Some("http://127.0.0.1:9".to_owned());
    let pool = Pool::start(config).await.unwrap();
    ready(&pool, 10).await;
    assert_eq!(pool.total(), sim.config().shards);
}
