//! The gateway protocol, through the raw client.

use discord_sim::{Control, PRIVILEGED_INTENTS, World};
use serde_json::{Value, json};

use super::{session_id, sim};
use discord_sim::{GatewayClient as Client, Received};

const QUERIES: [&str; 3] = [
    "v=10&encoding=json",
    "v=10&encoding=json&compress=zlib-stream",
    "v=10&encoding=json&compress=zstd-stream",
];

/// READY, then a `GUILD_CREATE` or `GUILD_DELETE` for every guild of the shard,
/// in every compression.
#[tokio::test]
async fn ready_and_every_guild_in_every_compression() {
    let sim = sim(|c| {
        c.shards = 2;
        c.guilds = 10;
        c.unavailable_guilds = 2;
    })
    .await;
    for query in QUERIES {
        for shard in 0..2 {
            let (mut client, hello) = Client::connect(sim.addr(), query).await.unwrap();
            assert_eq!(hello["d"]["heartbeat_interval"], 41_250);
            client.identify(sim.token(), [shard, 2], 513).await.unwrap();
            let ready = client.dispatch("READY").await.unwrap();
            assert_eq!(ready["s"], 1);
            let d = &ready["d"];
            assert_eq!(d["shard"], serde_json::json!([shard, 2]));
            assert_eq!(d["resume_gateway_url"], sim.gateway_url());
            assert_eq!(d["session_id"].as_str().unwrap().len(), 32);
            assert_eq!(d["user"]["id"], sim.world().bot.id.to_string());
            assert!(d["application"]["id"].is_string());
            let world = sim.world();
            let expected: Vec<_> = world.guilds_of(shard, 2).collect();
            assert_eq!(d["guilds"].as_array().unwrap().len(), expected.len());
            for (i, guild) in expected.iter().enumerate() {
                let payload = client.payload().await.unwrap();
                assert_eq!(payload["s"], i + 2, "{query}");
                assert_eq!(payload["d"]["id"], guild.id.to_string());
                if guild.unavailable {
                    assert_eq!(payload["t"], "GUILD_DELETE");
                    assert_eq!(payload["d"]["unavailable"], true);
                } else {
                    assert_eq!(payload["t"], "GUILD_CREATE");
                    assert_eq!(
                        payload["d"]["channels"].as_array().unwrap().len(),
                        guild.channels.len()
                    );
                    assert_eq!(payload["d"]["member_count"], guild.member_count());
                }
            }
        }
    }
}

#[tokio::test]
async fn payload_compression_after_identify() {
    let sim = sim(|_| {}).await;
    let (mut client, _) = Client::connect(sim.addr(), "v=10&encoding=json")
        .await
        .unwrap();
    client
        .send(&format!(
            r#"{{"op":2,"d":{{"token":"{}","intents":1,"compress":true,"properties":{{}}}}}}"#,
            sim.token()
        ))
        .await
        .unwrap();
    // The client decodes binary frames as per-payload zlib when it has no
    // transport compression: READY arriving at all shows it.
    assert_eq!(
        client.dispatch("READY").await.unwrap()["d"]["shard"],
        serde_json::json!([0, 1])
    );
}

#[tokio::test]
async fn heartbeats_are_acked_before_and_after_identify() {
    let sim = sim(|_| {}).await;
    let (mut client, _) = Client::connect(sim.addr(), QUERIES[0]).await.unwrap();
    client.send(r#"{"op":1,"d":null}"#).await.unwrap();
    assert_eq!(client.payload().await.unwrap()["op"], 11);
    client.identify(sim.token(), [0, 1], 1).await.unwrap();
    client.dispatch("READY").await.unwrap();
    client.send(r#"{"op":1,"d":3}"#).await.unwrap();
    client.op(11).await.unwrap();
}

/// Bad input gets Discord's close code.
#[tokio::test]
async fn close_codes_for_bad_input() {
    let sim = sim(|c| c.privileged_intents = 0).await;
    let token = sim.token().to_owned();
    let big = format!(r#"{{"op":1,"d":"{}"}}"#, "x".repeat(5000));
    let huge = format!(r#"{{"op":1,"d":"{}"}}"#, "x".repeat(100_000));
    let cases: Vec<(String, Vec<String>, u16)> = vec![
        ("bad json".into(), vec!["{nope".into()], 4002),
        ("over 4096 bytes".into(), vec![big], 4002),
        ("far over 4096 bytes".into(), vec![huge], 4002),
        ("no op".into(), vec![r#"{"d":1}"#.into()], 4002),
        (
            "unknown op".into(),
            vec![r#"{"op":99,"d":null}"#.into()],
            4001,
        ),
        (
            "command before identify".into(),
            vec![r#"{"op":8,"d":{}}"#.into()],
            4003,
        ),
        (
            "wrong token".into(),
            vec![identify("nope", "[0,1]", 1)],
            4004,
        ),
        (
            "identify twice".into(),
            vec![identify(&token, "[0,1]", 1), identify(&token, "[0,1]", 1)],
            4005,
        ),
        (
            "shard out of range".into(),
            vec![identify(&token, "[1,1]", 1)],
            4010,
        ),
        (
            "wrong shard count".into(),
            vec![identify(&token, "[0,2]", 1)],
            4010,
        ),
        (
            "unknown intent".into(),
            vec![identify(&token, "[0,1]", 1 << 40)],
            4013,
        ),
        (
            "privileged intent".into(),
            vec![identify(&token, "[0,1]", PRIVILEGED_INTENTS)],
            4014,
        ),
    ];
    for (what, sends, code) in cases {
        let (mut client, _) = Client::connect(sim.addr(), QUERIES[0]).await.unwrap();
        for payload in &sends {
            client.send(payload).await.unwrap();
        }
        assert_eq!(client.close_code().await.unwrap(), Some(code), "{what}");
    }
}

fn identify(token: &str, shard: &str, intents: u64) -> String {
    format!(
        r#"{{"op":2,"d":{{"token":"Bot {token}","intents":{intents},"shard":{shard},"properties":{{}}}}}}"#
    )
}

#[tokio::test]
async fn more_than_120_commands_a_minute_is_4008() {
    let sim = sim(|_| {}).await;
    let (mut client, _) = Client::connect(sim.addr(), QUERIES[0]).await.unwrap();
    for _ in 0..121 {
        client.send(r#"{"op":1,"d":null}"#).await.unwrap();
    }
    assert_eq!(client.close_code().await.unwrap(), Some(4008));
}

#[tokio::test]
async fn etf_unknown_compression_and_old_versions_are_refused() {
    let sim = sim(|_| {}).await;
    for (query, code) in [
        ("v=10&encoding=etf", 4002),
        ("v=10&encoding=json&compress=brotli", 4002),
        ("v=6&encoding=json", 4012),
    ] {
        let mut client = Client::connect_raw(sim.addr(), query).await.unwrap();
        assert_eq!(client.close_code().await.unwrap(), Some(code), "{query}");
    }
}

#[tokio::test]
async fn identify_concurrency_answers_a_second_identify_in_the_window_with_op_9() {
    let sim = sim(|c| {
        c.identify_interval = std::time::Duration::from_mins(1);
        c.shards = 2;
        c.max_concurrency = 1;
    })
    .await;
    let (mut first, _) = Client::connect(sim.addr(), QUERIES[0]).await.unwrap();
    first.identify(sim.token(), [0, 2], 1).await.unwrap();
    first.dispatch("READY").await.unwrap();
    assert_eq!(sim.identifies_refused(), 0);
    let (mut second, _) = Client::connect(sim.addr(), QUERIES[0]).await.unwrap();
    second.identify(sim.token(), [1, 2], 1).await.unwrap();
    let answer = second.payload().await.unwrap();
    assert_eq!(
        (answer["op"].clone(), answer["d"].clone()),
        (Value::from(9), Value::from(false))
    );
    assert_eq!(sim.identifies_remaining(), 999);
    assert_eq!(sim.identifies_refused(), 1);
}

/// RECONNECT, then RESUME on a new connection replays what was missed, in
/// order, then RESUMED with a real `s`.
#[tokio::test]
async fn resume_replays_missed_events_then_resumed() {
    let sim = sim(|_| {}).await;
    let (mut client, _) = Client::connect(sim.addr(), QUERIES[2]).await.unwrap();
    client.identify(sim.token(), [0, 1], 1).await.unwrap();
    let ready = client.dispatch("READY").await.unwrap();
    let session = session_id(&ready);
    let guilds = sim.world().guilds_of(0, 1).count();
    let first = sim.emit(0, "SIM_TEST_EVENT", r#"{"n":"first"}"#).unwrap();
    let seen = client.dispatch("SIM_TEST_EVENT").await.unwrap();
    let seq = seen["s"].as_u64().unwrap();
    assert_eq!(seq, 2 + guilds as u64);
    assert_eq!(seen["d"]["_sim"]["n"], first);

    assert_eq!(sim.control(0, Control::Reconnect), 1);
    assert_eq!(client.payload().await.unwrap()["op"], 7);
    drop(client);
    // Missed while away:
    for _ in 0..3 {
        let _ = sim.emit(0, "SIM_TEST_EVENT", "{}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;

    let (mut client, _) = Client::connect(sim.addr(), QUERIES[1]).await.unwrap();
    client.resume(sim.token(), &session, seq).await.unwrap();
    for i in 1..=3 {
        let replayed = client.payload().await.unwrap();
        assert_eq!(replayed["s"], seq + i);
        assert_eq!(replayed["d"]["_sim"]["n"], first + i);
    }
    let resumed = client.payload().await.unwrap();
    assert_eq!(resumed["t"], "RESUMED");
    assert_eq!(resumed["s"], seq + 4);
    assert_eq!(
        (sim.identifies(), sim.resumes(), sim.resumes_refused()),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn resume_of_an_unknown_or_invalidated_session_is_op_9_false() {
    let sim = sim(|_| {}).await;
    let (mut client, _) = Client::connect(sim.addr(), QUERIES[0]).await.unwrap();
    client.resume(sim.token(), "nope", 1).await.unwrap();
    assert_eq!(client.payload().await.unwrap()["d"], false);

    client.identify(sim.token(), [0, 1], 1).await.unwrap();
    let session = session_id(&client.dispatch("READY").await.unwrap());
    assert_eq!(sim.control(0, Control::InvalidSession(false)), 1);
    let nine = client.op(9).await.unwrap();
    assert_eq!(nine["d"], false);
    let (mut again, _) = Client::connect(sim.addr(), QUERIES[0]).await.unwrap();
    again.resume(sim.token(), &session, 1).await.unwrap();
    assert_eq!(again.payload().await.unwrap()["d"], false);
    assert_eq!(
        (sim.identifies(), sim.resumes(), sim.resumes_refused()),
        (1, 0, 2)
    );
}

#[tokio::test]
async fn a_client_close_with_1000_ends_the_session() {
    let sim = sim(|_| {}).await;
    let (mut client, _) = Client::connect(sim.addr(), QUERIES[0]).await.unwrap();
    client.identify(sim.token(), [0, 1], 1).await.unwrap();
    let session = session_id(&client.dispatch("READY").await.unwrap());
    client.close(1000).await.unwrap();
    let (mut again, _) = Client::connect(sim.addr(), QUERIES[0]).await.unwrap();
    again.resume(sim.token(), &session, 1).await.unwrap();
    assert_eq!(again.payload().await.unwrap()["d"], false);
}

#[tokio::test]
async fn any_close_code_on_demand() {
    let sim = sim(|_| {}).await;
    for code in 4000..=4014 {
        let (mut client, _) = Client::connect(sim.addr(), QUERIES[0]).await.unwrap();
        client.identify(sim.token(), [0, 1], 1).await.unwrap();
        client.dispatch("READY").await.unwrap();
        assert!(sim.control(0, Control::Close(code)) >= 1);
        assert_eq!(client.close_code().await.unwrap(), Some(code));
    }
}

#[tokio::test]
async fn member_chunks_carry_the_nonce_and_repeat_full_requests_are_rate_limited() {
    let sim = sim(|c| c.members_per_guild = 2500).await;
    let guild = sim
        .world()
        .guilds_of(0, 1)
        .find(|g| !g.unavailable)
        .unwrap()
        .clone();
    let (mut client, _) = Client::connect(sim.addr(), QUERIES[2]).await.unwrap();
    client.identify(sim.token(), [0, 1], 3).await.unwrap();
    client.dispatch("READY").await.unwrap();
    // A number, as discord.py sends it.
    let request = format!(
        r#"{{"op":8,"d":{{"guild_id":{},"query":"","limit":0,"presences":true,"nonce":"abc"}}}}"#,
        guild.id
    );
    client.send(&request).await.unwrap();
    let mut members = 0;
    let mut presences = 0;
    for index in 0..3 {
        let chunk = client.dispatch("GUILD_MEMBERS_CHUNK").await.unwrap();
        let d = &chunk["d"];
        assert_eq!(
            (d["chunk_index"].clone(), d["chunk_count"].clone()),
            (Value::from(index), Value::from(3))
        );
        assert_eq!(d["nonce"], "abc");
        for presence in d["presences"].as_array().unwrap() {
            let user = presence["user"]["id"].as_str().unwrap();
            assert!(
                d["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["user"]["id"] == user),
                "a presence of a member of this chunk"
            );
            presences += 1;
        }
        members += d["members"].as_array().unwrap().len();
    }
    assert_eq!(members, guild.member_count());
    assert_eq!(presences, guild.presences.len());
    client.send(&request).await.unwrap();
    let limited = client.dispatch("RATE_LIMITED").await.unwrap();
    assert_eq!(limited["d"]["opcode"], 8);
    assert_eq!(limited["d"]["meta"]["nonce"], "abc");

    let wanted = &guild.members[7].user;
    client
        .send(&format!(
            r#"{{"op":8,"d":{{"guild_id":"{}","user_ids":["{}","1"],"limit":0}}}}"#,
            guild.id, wanted.id
        ))
        .await
        .unwrap();
    let chunk = client.dispatch("GUILD_MEMBERS_CHUNK").await.unwrap();
    assert_eq!(
        chunk["d"]["members"][0]["user"]["id"],
        wanted.id.to_string()
    );
    assert_eq!(chunk["d"]["not_found"], serde_json::json!(["1"]));
}

#[tokio::test]
async fn voice_and_soundboard_requests_are_answered() {
    let sim = sim(|_| {}).await;
    let guild = sim.world().guilds_of(0, 1).next().unwrap().id;
    let (mut client, _) = Client::connect(sim.addr(), QUERIES[0]).await.unwrap();
    client.identify(sim.token(), [0, 1], 1).await.unwrap();
    let session = client.dispatch("READY").await.unwrap()["d"]["session_id"].clone();
    client
        .send(&format!(r#"{{"op":4,"d":{{"guild_id":"{guild}","channel_id":"42","self_mute":false,"self_deaf":true}}}}"#))
        .await.unwrap();
    let state = client.dispatch("VOICE_STATE_UPDATE").await.unwrap();
    assert_eq!(state["d"]["session_id"], session);
    assert_eq!(state["d"]["user_id"], sim.world().bot.id.to_string());
    assert_eq!(state["d"]["self_deaf"], true);
    let bot = sim.world().bot.id;
    assert_eq!(
        state["d"]["member"]["user"]["id"],
        bot.to_string(),
        "with its member"
    );
    let in_voice = |sim: &discord_sim::Sim| {
        sim.world()
            .guild(guild)
            .unwrap()
            .voice_states
            .iter()
            .any(|v| v.user_id == bot && v.channel_id == 42)
    };
    assert!(in_voice(&sim), "the ground truth follows");
    let server = client.dispatch("VOICE_SERVER_UPDATE").await.unwrap();
    assert_eq!(server["d"]["guild_id"], guild.to_string());
    // As Discord: the same channel again changes nothing and is answered
    // with nothing; a mute toggle there, with the voice state alone.
    let op4 = |mute: bool| {
        format!(
            r#"{{"op":4,"d":{{"guild_id":"{guild}","channel_id":"42","self_mute":{mute},"self_deaf":true}}}}"#
        )
    };
    client.send(&op4(false)).await.unwrap();
    client.send(&op4(true)).await.unwrap();
    client
        .send(&format!(r#"{{"op":31,"d":{{"guild_ids":["{guild}"]}}}}"#))
        .await
        .unwrap();
    let mut answers = Vec::new();
    loop {
        let payload = client.payload().await.unwrap();
        answers.push((payload["t"].clone(), payload["d"]["self_mute"].clone()));
        if payload["t"] == "SOUNDBOARD_SOUNDS" {
            break;
        }
    }
    assert_eq!(
        answers,
        vec![
            (json!("VOICE_STATE_UPDATE"), json!(true)),
            (json!("SOUNDBOARD_SOUNDS"), Value::Null)
        ]
    );
    client
        .send(&format!(r#"{{"op":31,"d":{{"guild_ids":["{guild}"]}}}}"#))
        .await
        .unwrap();
    let sounds = client.dispatch("SOUNDBOARD_SOUNDS").await.unwrap();
    assert_eq!(sounds["d"]["guild_id"], guild.to_string());
    client
        .send(&format!(
            r#"{{"op":43,"d":{{"guild_id":"{guild}","fields":["status","voice_start_time"]}}}}"#
        ))
        .await
        .unwrap();
    let info = client.dispatch("CHANNEL_INFO").await.unwrap();
    let voice = sim.world().guild(guild).unwrap().channels_of(2).count();
    assert_eq!(info["d"]["channels"].as_array().unwrap().len(), voice);
    // op 3 is accepted without an answer; a heartbeat after it still is.
    client
        .send(r#"{"op":3,"d":{"since":null,"activities":[],"status":"online","afk":false}}"#)
        .await
        .unwrap();
    client.send(r#"{"op":1,"d":null}"#).await.unwrap();
    client.op(11).await.unwrap();
}

#[tokio::test]
async fn the_server_can_ask_for_a_heartbeat() {
    let sim = sim(|_| {}).await;
    let (mut client, _) = Client::connect(sim.addr(), QUERIES[0]).await.unwrap();
    client.identify(sim.token(), [0, 1], 1).await.unwrap();
    client.dispatch("READY").await.unwrap();
    assert_eq!(sim.control(0, Control::RequestHeartbeat), 1);
    assert_eq!(client.op(1).await.unwrap()["d"], Value::Null);
}

#[tokio::test]
async fn a_missed_heartbeat_closes_with_4009() {
    let sim = sim(|c| c.heartbeat_interval = std::time::Duration::from_millis(100)).await;
    let (mut client, hello) = Client::connect(sim.addr(), QUERIES[0]).await.unwrap();
    assert_eq!(hello["d"]["heartbeat_interval"], 100);
    assert_eq!(client.close_code().await.unwrap(), Some(4009));
}

#[tokio::test]
async fn the_stream_is_numbered_without_gaps_and_names_real_guilds() {
    let sim = sim(|c| c.events_per_sec = 500).await;
    let (mut client, _) = Client::connect(sim.addr(), QUERIES[2]).await.unwrap();
    client
        .identify(sim.token(), [0, 1], discord_sim::KNOWN_INTENTS)
        .await
        .unwrap();
    client.dispatch("READY").await.unwrap();
    let mut last_n = None;
    let mut last_s = 1;
    let mut live = 0;
    while live < 200 {
        let Received::Payload(p) = client.recv().await.unwrap() else {
            panic!("closed")
        };
        if p["op"] != 0 {
            continue;
        }
        let s = p["s"].as_u64().unwrap();
        assert_eq!(s, last_s + 1, "contiguous s");
        last_s = s;
        let Some(n) = p["d"]["_sim"]["n"].as_u64() else {
            continue;
        };
        if let Some(last) = last_n {
            assert_eq!(n, last + 1, "contiguous markers");
        }
        last_n = Some(n);
        let guild: u64 = p["d"]["guild_id"].as_str().unwrap().parse().unwrap();
        assert_eq!(World::shard_of(guild, 1), 0);
        assert!(sim.world().guild(guild).is_some());
        live += 1;
    }
    assert_eq!(sim.lagged(), 0);
}

/// With mixed key order, every payload is still a dispatch with the right
/// `t`, `s` and `op`, but not all of them in Discord's order.
#[tokio::test]
async fn mixed_key_order_keeps_the_protocol() {
    let sim = sim(|c| {
        c.key_order = discord_sim::KeyOrder::Mixed;
        c.events_per_sec = 500;
    })
    .await;
    let (mut client, _) = Client::connect(sim.addr(), QUERIES[1]).await.unwrap();
    client.identify(sim.token(), [0, 1], 1).await.unwrap();
    let ready = client.dispatch("READY").await.unwrap();
    assert_eq!(ready["d"]["s"]["s"], 7, "a nested s in d");
    let first = ready["s"].as_u64().unwrap();
    for expected in first + 1..=first + 40 {
        let payload = client.payload().await.unwrap();
        assert_eq!(payload["op"], 0);
        assert_eq!(payload["s"], expected);
    }
}

/// A session gets only the dispatches its intents ask for.
#[tokio::test]
async fn intents_filter_the_stream() {
    let sim = sim(|c| c.events_per_sec = 5000).await;
    let (mut client, _) = Client::connect(sim.addr(), QUERIES[2]).await.unwrap();
    // GUILDS only: no messages, presences, typing, members or voice.
    client.identify(sim.token(), [0, 1], 1).await.unwrap();
    client.dispatch("READY").await.unwrap();
    let mut guild_events = 0;
    while guild_events < 30 {
        let payload = client.payload().await.unwrap();
        let t = payload["t"].as_str().unwrap_or("");
        assert!(
            discord_sim::intent_of(t).is_none_or(|bit| bit == 1),
            "{t} needs an intent this session did not ask for"
        );
        if t.starts_with("CHANNEL_") || t.starts_with("GUILD_ROLE_") || t.starts_with("THREAD_") {
            guild_events += 1;
        }
    }
}

/// Which members come with `GUILD_CREATE` follows the intents and
/// `large_threshold`, as Discord.
#[tokio::test]
async fn guild_create_members_follow_intents_and_large_threshold() {
    let sim = sim(|c| c.members_per_guild = 100).await;
    let world = sim.world();
    let guild = world.guilds_of(0, 1).find(|g| !g.unavailable).unwrap();
    let in_voice = guild.voice_states.len();
    let guild_id = guild.id.to_string();
    let members_of = |intents: u64, threshold: u64| {
        let (sim, guild_id) = (&sim, &guild_id);
        async move {
            let (mut client, _) = Client::connect(sim.addr(), QUERIES[0]).await.unwrap();
            client
                .send(&format!(
                    r#"{{"op":2,"d":{{"token":"{}","intents":{intents},"large_threshold":{threshold},"properties":{{}}}}}}"#,
                    sim.token()
                ))
                .await.unwrap();
            loop {
                let p = client.dispatch("GUILD_CREATE").await.unwrap();
                if p["d"]["id"] == guild_id.as_str() {
                    let d = &p["d"];
                    return (
                        d["members"].as_array().unwrap().len(),
                        d["presences"].as_array().unwrap().len(),
                        d["large"].as_bool().unwrap(),
                    );
                }
            }
        }
    };
    let presences = 1 << 8;
    // Without GUILD_PRESENCES: the bot and the members in voice.
    assert_eq!(members_of(1, 250).await, (1 + in_voice, 0, false));
    // A small guild (101 members, threshold 250): everyone.
    assert_eq!(
        members_of(1 | presences, 250).await,
        (101, guild.presences.len(), false)
    );
    // A large one (threshold 50): the bot, online members and members with
    // a role, a nickname or a voice state.
    let expected = 1 + guild
        .members
        .iter()
        .filter(|m| {
            guild.presences.iter().any(|p| p.user_id == m.user.id)
                || !m.roles.is_empty()
                || m.nick.is_some()
                || guild.voice_states.iter().any(|v| v.user_id == m.user.id)
        })
        .count();
    assert!(expected < 101);
    assert_eq!(
        members_of(1 | presences, 50).await,
        (expected, guild.presences.len(), true)
    );
}

#[tokio::test]
async fn a_session_without_a_connection_expires_after_its_ttl() {
    let sim = sim(|c| c.session_ttl = std::time::Duration::from_millis(200)).await;
    let resume = |session: String| {
        let sim = &sim;
        async move {
            let (mut client, _) = Client::connect(sim.addr(), QUERIES[0]).await.unwrap();
            client.resume(sim.token(), &session, 1).await.unwrap();
            client.payload().await.unwrap()
        }
    };
    let (mut client, _) = Client::connect(sim.addr(), QUERIES[0]).await.unwrap();
    client.identify(sim.token(), [0, 1], 1).await.unwrap();
    let session = session_id(&client.dispatch("READY").await.unwrap());
    client.close(4000).await.unwrap();
    drop(client);
    // Within the TTL it resumes (the first payload replays GUILD_CREATE)...
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(resume(session.clone()).await["op"], 0);
    // ...and after it, it does not.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(resume(session).await["d"], false);
}

#[tokio::test]
async fn session_start_limit_runs_out_then_resets() {
    let sim = sim(|c| {
        c.session_start_total = 2;
        c.session_start_reset = std::time::Duration::from_millis(300);
    })
    .await;
    for _ in 0..2 {
        let (mut client, _) = Client::connect(sim.addr(), QUERIES[0]).await.unwrap();
        client.identify(sim.token(), [0, 1], 1).await.unwrap();
        client.dispatch("READY").await.unwrap();
    }
    assert_eq!(sim.identifies_remaining(), 0);
    let (mut client, _) = Client::connect(sim.addr(), QUERIES[0]).await.unwrap();
    client.identify(sim.token(), [0, 1], 1).await.unwrap();
    assert_eq!(client.op(9).await.unwrap()["d"], false);
    tokio::time::sleep(std::time::Duration::from_millis(350)).await;
    assert_eq!(sim.identifies_remaining(), 2);
    client.identify(sim.token(), [0, 1], 1).await.unwrap();
    client.dispatch("READY").await.unwrap();
}
