//! Discord's protocol towards clients: READY and the guilds, live events,
//! compression, and every close code of DESIGN.md's table.

use discord_sim::{KNOWN_INTENTS, World, normalized};
use serde_json::Value;

use super::{Setup, assert_contiguous, marked};

#[tokio::test]
async fn identify_gets_ready_and_guilds_equal_to_the_truth() {
    let setup = Setup::new(
        |c| {
            c.shards = 2;
            c.guilds = 6;
            c.unavailable_guilds = 1;
        },
        |_, _| {},
    )
    .await;
    let world = setup.sim.world();
    for shard in 0..2 {
        let (_, ready, creates) = setup.identified(shard, 2).await;
        let d = &ready["d"];
        assert_eq!(d["shard"], serde_json::json!([shard, 2]));
        assert_eq!(d["session_id"].as_str().unwrap().len(), 32);
        assert_eq!(
            d["resume_gateway_url"],
            format!("ws://{}", setup.proxy.addr())
        );
        assert!(d["application"]["id"].is_string() && d["user"]["mfa_enabled"].is_boolean());
        let truth: Vec<&discord_sim::Guild> = world.guilds_of(shard, 2).collect();
        assert_eq!(creates.len(), truth.len());
        for (seq, (create, guild)) in (2..).zip(creates.iter().zip(&truth)) {
            assert_eq!(create["s"], seq);
            let expected: Value =
                serde_json::from_str(&guild.guild_create(&world.bot, KNOWN_INTENTS, 250)).unwrap();
            if guild.unavailable {
                assert_eq!(create["t"], "GUILD_DELETE");
            } else {
                assert_eq!(create["t"], "GUILD_CREATE");
            }
            assert_eq!(
                normalized(create["d"].clone()),
                normalized(expected),
                "guild {}",
                guild.id
            );
        }
    }
}

#[tokio::test]
async fn ten_thousand_events_arrive_in_order_with_contiguous_sequences() {
    let setup = Setup::new(|c| c.events_per_sec = 5000, |_, _| {}).await;
    let (mut client, _, creates) = setup.identified(0, 1).await;
    let markers = marked(&mut client, 1 + creates.len() as u64, 10_000).await;
    assert_contiguous(&markers);
    assert_eq!(setup.sim.lagged(), 0);
}

#[tokio::test]
async fn two_clients_on_one_shard_each_get_every_event_with_their_own_sequence() {
    let setup = Setup::new(|c| c.events_per_sec = 1000, |_, _| {}).await;
    let (mut a, ready_a, creates) = setup.identified(0, 1).await;
    let (mut b, ready_b, _) = setup.identified(0, 1).await;
    assert_ne!(ready_a["d"]["session_id"], ready_b["d"]["session_id"]);
    let first = 1 + creates.len() as u64;
    let seen_a = marked(&mut a, first, 500).await;
    let seen_b = marked(&mut b, first, 500).await;
    assert_contiguous(&seen_a);
    assert_contiguous(&seen_b);
    // b joined later: its events are a run of a's later ones.
    let start = seen_a.iter().position(|(_, n)| *n == seen_b[0].1).unwrap();
    let a_tail: Vec<u64> = seen_a[start..].iter().map(|(_, n)| *n).collect();
    let b_head: Vec<u64> = seen_b[..a_tail.len()].iter().map(|(_, n)| *n).collect();
    assert_eq!(a_tail, b_head);
}

#[tokio::test]
async fn every_compression_gives_the_same_payloads() {
    let setup = Setup::new(|c| c.events_per_sec = 200, |_, _| {}).await;
    for (query, compress) in [
        ("v=10&encoding=json&compress=zlib-stream", false),
        ("v=10&encoding=json&compress=zstd-stream", false),
        ("v=10&encoding=json", true),
        // The query's transport compression wins over IDENTIFY's flag.
        ("v=10&encoding=json&compress=zstd-stream", true),
    ] {
        let (mut client, _, creates) = setup.identified_with(query, 1, compress).await;
        let guilds = creates.len() as u64;
        for create in creates {
            assert_eq!(create["op"], 0);
        }
        assert_contiguous(&marked(&mut client, 1 + guilds, 50).await);
    }
}

#[tokio::test]
async fn heartbeats_are_acknowledged_before_and_after_identify() {
    let setup = Setup::new(|c| c.events_per_sec = 0, |_, _| {}).await;
    let mut client = setup.client("v=10&encoding=json").await;
    client.send(r#"{"op":1,"d":null}"#).await.unwrap();
    assert_eq!(client.payload().await.unwrap()["op"], 11);
    client.identify(setup.sim.token(), [0, 1], 1).await.unwrap();
    client.dispatch("READY").await.unwrap();
    client.send(r#"{"op":1,"d":3}"#).await.unwrap();
    assert_eq!(client.op(11).await.unwrap()["op"], 11);
}

/// Sends `payloads` (after IDENTIFY if `identify`) and expects a close
/// with `code`.
async fn closes_with(setup: &Setup, query: &str, identify: bool, payloads: &[String], code: u16) {
    let mut client = setup.client(query).await;
    if identify {
        client.identify(setup.sim.token(), [0, 1], 1).await.unwrap();
        client.dispatch("READY").await.unwrap();
    }
    for payload in payloads {
        let _ = client.send(payload).await;
    }
    assert_eq!(
        client.close_code().await.unwrap(),
        Some(code),
        "{query} {payloads:?}"
    );
}

#[tokio::test]
async fn bad_input_gets_the_close_code_discord_would_send() {
    let setup = Setup::new(|c| c.events_per_sec = 0, |_, _| {}).await;
    let token = setup.sim.token().to_owned();
    let json = "v=10&encoding=json";
    let s = |text: &str| vec![text.to_owned()];
    closes_with(&setup, json, false, &s("{not json"), 4002).await;
    closes_with(&setup, json, true, &s(r#"{"op":99,"d":{}}"#), 4001).await;
    closes_with(
        &setup,
        json,
        false,
        &s(&format!(r#"{{"op":1,"d":"{}"}}"#, "x".repeat(5000))),
        4002,
    )
    .await;
    closes_with(
        &setup,
        json,
        false,
        &s(r#"{"op":8,"d":{"guild_id":"1","query":"","limit":0}}"#),
        4003,
    )
    .await;
    let identify = format!(r#"{{"op":2,"d":{{"token":"{token}","intents":1,"properties":{{}}}}}}"#);
    closes_with(&setup, json, true, &s(&identify), 4005).await;
    closes_with(
        &setup,
        json,
        false,
        &s(r#"{"op":2,"d":{"token":"wrong","intents":1,"properties":{}}}"#),
        4004,
    )
    .await;
    let wrong_shard = format!(
        r#"{{"op":2,"d":{{"token":"{token}","intents":1,"properties":{{}},"shard":[3,4]}}}}"#
    );
    closes_with(&setup, json, false, &s(&wrong_shard), 4010).await;
    for query in ["v=10&encoding=etf", "v=10&encoding=json&compress=brotli"] {
        // Refused before HELLO.
        let mut client = discord_sim::GatewayClient::connect_raw(setup.proxy.addr(), query)
            .await
            .unwrap();
        assert_eq!(client.close_code().await.unwrap(), Some(4002), "{query}");
    }
    let heartbeats: Vec<String> = (0..121)
        .map(|_| r#"{"op":1,"d":null}"#.to_owned())
        .collect();
    closes_with(&setup, json, false, &heartbeats, 4008).await;
}

#[tokio::test]
async fn a_token_with_bot_prefix_is_accepted_and_validation_can_be_off() {
    let setup = Setup::new(
        |c| c.events_per_sec = 0,
        |_, server| server.validate_token = false,
    )
    .await;
    let mut client = setup.client("v=10&encoding=json").await;
    client
        .send(r#"{"d":{"token":"Bot anything","properties":{},"intents":1},"op":2}"#)
        .await
        .unwrap();
    assert_eq!(
        client.dispatch("READY").await.unwrap()["d"]["shard"],
        serde_json::json!([0, 1])
    );
}

#[tokio::test]
async fn a_range_past_zero_serves_absolute_shard_ids() {
    let setup = Setup::new(
        |c| {
            c.shards = 4;
            c.guilds = 8;
            c.events_per_sec = 200;
        },
        |pool, _| pool.shard_start = 2,
    )
    .await;
    let (mut client, ready, creates) = setup.identified(3, 4).await;
    assert_eq!(ready["d"]["shard"], serde_json::json!([3, 4]));
    let world = setup.sim.world();
    assert_eq!(creates.len(), world.guilds_of(3, 4).count());
    for create in &creates {
        let id: u64 = create["d"]["id"].as_str().unwrap().parse().unwrap();
        assert_eq!(World::shard_of(id, 4), 3);
    }
    marked(&mut client, 1 + creates.len() as u64, 5).await;
    let mut other = setup.client("v=10&encoding=json").await;
    other.identify(setup.sim.token(), [1, 4], 1).await.unwrap();
    assert_eq!(
        other.close_code().await.unwrap(),
        Some(4010),
        "shard 1 is not served here"
    );
}

#[tokio::test]
async fn a_client_that_stops_heartbeating_is_closed_resumably() {
    let setup = Setup::new(
        |c| c.events_per_sec = 0,
        |_, server| server.heartbeat_interval = std::time::Duration::from_millis(200),
    )
    .await;
    let mut client = setup.client("v=10&encoding=json").await;
    client.identify(setup.sim.token(), [0, 1], 1).await.unwrap();
    let ready = client.dispatch("READY").await.unwrap();
    assert_eq!(client.close_code().await.unwrap(), Some(4009));
    // The session outlives the connection.
    let session = ready["d"]["session_id"].as_str().unwrap();
    let guilds = ready["d"]["guilds"].as_array().unwrap().len() as u64;
    let mut client = setup.client("v=10&encoding=json").await;
    client
        .resume(setup.sim.token(), session, 1 + guilds)
        .await
        .unwrap();
    assert_eq!(client.dispatch("RESUMED").await.unwrap()["s"], 2 + guilds);
}

#[tokio::test]
async fn member_chunks_go_to_the_client_that_asked() {
    let setup = Setup::new(|c| c.events_per_sec = 0, |_, _| {}).await;
    let (mut asker, _, creates) = setup.identified(0, 1).await;
    let (mut other, _, _) = setup.identified(0, 1).await;
    let guild = creates[0]["d"]["id"].as_str().unwrap().to_owned();
    asker
        .send(&format!(
            r#"{{"op":8,"d":{{"guild_id":"{guild}","query":"","limit":0,"nonce":"mine"}}}}"#
        ))
        .await
        .unwrap();
    let chunk = asker.dispatch("GUILD_MEMBERS_CHUNK").await.unwrap();
    assert_eq!(chunk["d"]["nonce"], "mine");
    assert_eq!(chunk["s"], 2 + creates.len() as u64, "its own next s");
    // The other client gets nothing: its next payload is the ACK of its own
    // heartbeat.
    other.send(r#"{"op":1,"d":null}"#).await.unwrap();
    assert_eq!(other.payload().await.unwrap()["op"], 11);
}

#[tokio::test]
async fn voice_servers_go_to_the_client_that_asked_and_op_31_is_answered() {
    let setup = Setup::new(|c| c.events_per_sec = 0, |_, _| {}).await;
    let (mut asker, _, creates) = setup.identified(0, 1).await;
    let (mut other, _, _) = setup.identified(0, 1).await;
    let guild = creates[0]["d"]["id"].as_str().unwrap().to_owned();
    let voice = creates[0]["d"]["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == 2)
        .map(|c| c["id"].as_str().unwrap().to_owned());
    asker
        .send(&format!(
            r#"{{"op":4,"d":{{"guild_id":"{guild}","channel_id":{},"self_mute":false,"self_deaf":false}}}}"#,
            voice.map_or("null".to_owned(), |v| format!("\"{v}\""))
        ))
        .await
        .unwrap();
    let server = asker.dispatch("VOICE_SERVER_UPDATE").await.unwrap();
    assert_eq!(server["d"]["guild_id"], guild);
    asker
        .send(&format!(r#"{{"op":31,"d":{{"guild_ids":["{guild}"]}}}}"#))
        .await
        .unwrap();
    let sounds = asker.dispatch("SOUNDBOARD_SOUNDS").await.unwrap();
    assert_eq!(sounds["d"]["guild_id"], guild);
    // The other client saw the voice state and the sounds, not the voice
    // server, which came between them upstream.
    let mut names = Vec::new();
    loop {
        let payload = other.payload().await.unwrap();
        let name = payload["t"].as_str().unwrap().to_owned();
        names.push(name.clone());
        if name == "SOUNDBOARD_SOUNDS" {
            break;
        }
    }
    assert!(
        !names.contains(&"VOICE_SERVER_UPDATE".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"VOICE_STATE_UPDATE".to_owned()),
        "{names:?}"
    );
}

/// Reads `count` marked dispatches, sending a heartbeat after every tenth
/// payload (its ACK comes between dispatches, through the connection's own
/// context); returns each dispatch by marker, with `s` taken out, and the
/// last `s`.
async fn dispatches_by_marker(
    client: &mut discord_sim::GatewayClient,
    mut last: u64,
    count: usize,
) -> (std::collections::BTreeMap<u64, Value>, u64) {
    let mut seen = std::collections::BTreeMap::new();
    let mut payloads = 0;
    while seen.len() < count {
        let mut payload = client.payload().await.unwrap();
        payloads += 1;
        if payloads % 10 == 0 {
            client.send(r#"{"op":1,"d":null}"#).await.unwrap();
        }
        if payload["op"] == 11 {
            continue;
        }
        let s = payload["s"].as_u64().unwrap();
        assert_eq!(s, last + 1, "{payload}");
        last = s;
        if let Some(n) = super::marker(&payload) {
            payload.as_object_mut().unwrap().remove("s");
            seen.insert(n, payload);
        }
    }
    (seen, last)
}

/// A plain client, a zlib-stream one and a payload-compressed one read
/// the same dispatches: with shared bodies from the first zlib-stream
/// client on, from the second (the zlib-stream client switches to shared
/// bodies when a second one comes and back to its own stream when it
/// goes), and without shared bodies; then the zlib-stream client resumes.
#[tokio::test]
async fn zlib_clients_read_what_a_plain_client_reads_shared_bodies_or_not() {
    for (shared, min_clients) in [(true, 1), (true, 2), (false, 1)] {
        let setup = Setup::new(
            |c| c.events_per_sec = 300,
            |_, server| {
                server.client_compression.zlib_shared = shared;
                server.client_compression.zlib_shared_min_clients = min_clients;
                server.client_compression.zlib_level = 1;
            },
        )
        .await;
        let mut clients = Vec::new();
        for (query, compress) in [
            ("v=10&encoding=json", false),
            ("v=10&encoding=json&compress=zlib-stream", false),
            ("v=10&encoding=json", true),
            // A second zlib-stream client, for the first round only.
            ("v=10&encoding=json&compress=zlib-stream", false),
        ] {
            let (client, ready, creates) =
                setup.identified_with(query, KNOWN_INTENTS, compress).await;
            let session = ready["d"]["session_id"].as_str().unwrap().to_owned();
            clients.push((query, client, session, 1 + creates.len() as u64));
        }
        let mut read = Vec::new();
        for (query, client, session, last) in &mut clients {
            let (seen, s) = dispatches_by_marker(client, *last, 200).await;
            *last = s;
            read.push((*query, seen, session.clone(), s));
        }
        let (_, mut second, _, _) = clients.pop().unwrap();
        read.pop();
        second.close(1000).await.ok();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let (_, client, _, last) = &mut clients[1];
        let (more, s) = dispatches_by_marker(client, *last, 200).await;
        *last = s;
        read[1].1.extend(more);
        // The zlib-stream client drops and resumes: its replay comes before
        // its connection has a context of its own.
        let (_, client, session, last) = &mut clients[1];
        let mut resumed = setup
            .client("v=10&encoding=json&compress=zlib-stream")
            .await;
        client.close(4000).await.ok();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        resumed
            .resume(setup.sim.token(), session, *last)
            .await
            .unwrap();
        let (again, _) = dispatches_by_marker(&mut resumed, *last, 100).await;
        let (_, plain_client, _, _) = &mut clients[0];
        let (later, _) = dispatches_by_marker(plain_client, read[0].3, 500).await;
        read[0].1.extend(later);
        let plain = &read[0].1;
        for (query, seen, _, _) in read.iter().skip(1).chain(std::iter::once(&(
            "zlib-stream, resumed",
            again,
            String::new(),
            0,
        ))) {
            let common: Vec<u64> = seen
                .keys()
                .filter(|n| plain.contains_key(n))
                .copied()
                .collect();
            assert!(
                common.len() > 50,
                "{query} (shared {shared}): {} in common",
                common.len()
            );
            for n in common {
                assert_eq!(seen[&n], plain[&n], "{query} (shared {shared}), event {n}");
            }
        }
    }
}

#[tokio::test]
async fn a_voice_server_replayed_on_resume_goes_where_it_went_live() {
    let setup = Setup::new(|c| c.events_per_sec = 0, |_, _| {}).await;
    let (mut asker, ready, creates) = setup.identified(0, 1).await;
    let session = ready["d"]["session_id"].as_str().unwrap().to_owned();
    let (mut other, other_ready, _) = setup.identified(0, 1).await;
    let other_session = other_ready["d"]["session_id"].as_str().unwrap().to_owned();
    let guild = creates[0]["d"]["id"].as_str().unwrap().to_owned();
    let voice = creates[0]["d"]["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == 2)
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .unwrap();
    let join = |channel: &str| {
        format!(
            r#"{{"op":4,"d":{{"guild_id":"{guild}","channel_id":"{channel}","self_mute":false,"self_deaf":false}}}}"#
        )
    };
    let before = 1 + creates.len() as u64;
    asker.send(&join(&voice)).await.unwrap();
    let server = asker.dispatch("VOICE_SERVER_UPDATE").await.unwrap();
    let token = server["d"]["token"].clone();
    // The asker leaves; once the bot is out, the other client joins, and
    // later voice servers are for it.
    asker
        .send(&format!(
            r#"{{"op":4,"d":{{"guild_id":"{guild}","channel_id":null,"self_mute":false,"self_deaf":false}}}}"#
        ))
        .await
        .unwrap();
    loop {
        let state = other.dispatch("VOICE_STATE_UPDATE").await.unwrap();
        if state["d"]["channel_id"].is_null() {
            break;
        }
    }
    other.send(&join(&voice)).await.unwrap();
    other.dispatch("VOICE_SERVER_UPDATE").await.unwrap();
    // Both drop and resume from before the first join: each voice server
    // is replayed to the client it went to live, and only to it.
    drop((asker, other));
    let replayed = |session: String| {
        let setup = &setup;
        async move {
            let mut client = setup.client("v=10&encoding=json").await;
            client
                .resume(setup.sim.token(), &session, before)
                .await
                .unwrap();
            let mut servers = Vec::new();
            loop {
                let payload = client.payload().await.unwrap();
                if payload["t"] == "VOICE_SERVER_UPDATE" {
                    servers.push(payload["d"]["token"].clone());
                }
                if payload["t"] == "RESUMED" {
                    return servers;
                }
            }
        }
    };
    let asker_servers = replayed(session).await;
    let other_servers = replayed(other_session).await;
    assert_eq!(asker_servers, vec![token.clone()], "its own, once");
    assert_eq!(other_servers.len(), 1, "its own: {other_servers:?}");
    assert_ne!(other_servers[0], token, "not the asker's");
}
