//! Voice: one owner per guild (the session whose op 4 joined), other
//! sessions' op 4 for the guild refused while it owns it, and the bot
//! leaves when the owner's session ends for good.

use std::time::Duration;

use discord_sim::{Control, GatewayClient};
use serde_json::Value;

use super::Setup;

/// A guild of shard 0 and one of its voice channels.
fn voice_channel(creates: &[Value]) -> (String, String) {
    let guild = &creates[0]["d"];
    let channel = guild["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == 2)
        .unwrap();
    (
        guild["id"].as_str().unwrap().to_owned(),
        channel["id"].as_str().unwrap().to_owned(),
    )
}

fn op4(guild: &str, channel: Option<&str>) -> String {
    let channel = channel.map_or("null".to_owned(), |c| format!("\"{c}\""));
    format!(
        r#"{{"op":4,"d":{{"guild_id":"{guild}","channel_id":{channel},"self_mute":false,"self_deaf":false}}}}"#
    )
}

/// The op 4s for `guild` the sim received, oldest first: their channels.
fn upstream_op4(setup: &Setup, guild: &str) -> Vec<Option<String>> {
    setup
        .sim
        .connections()
        .iter()
        .flat_map(|c| c.received.clone())
        .filter_map(|text| {
            let payload: Value = serde_json::from_str(&text).ok()?;
            (payload["op"] == 4 && payload["d"]["guild_id"] == guild)
                .then(|| payload["d"]["channel_id"].as_str().map(str::to_owned))
        })
        .collect()
}

/// Waits (up to 5 s) until the sim has received `count` op 4s for `guild`.
async fn upstream_op4_count(setup: &Setup, guild: &str, count: usize) -> Vec<Option<String>> {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let seen = upstream_op4(setup, guild);
            if seen.len() >= count {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{:?}", upstream_op4(setup, guild)))
}

/// A client that joins `channel` of `guild` and gets its voice server.
async fn joined(setup: &Setup, guild: &str, channel: &str) -> GatewayClient {
    let (mut client, _, _) = setup.identified(0, 1).await;
    client.send(&op4(guild, Some(channel))).await.unwrap();
    let server = client.dispatch("VOICE_SERVER_UPDATE").await.unwrap();
    assert_eq!(server["d"]["guild_id"], guild);
    client
}

#[tokio::test]
async fn while_one_session_owns_a_guilds_voice_the_others_op_4_is_not_sent() {
    let setup = Setup::new(|c| c.events_per_sec = 0, |_, _| {}).await;
    let (_, _, creates) = setup.identified(0, 1).await;
    let (guild, channel) = voice_channel(&creates);
    let mut owner = joined(&setup, &guild, &channel).await;
    let (mut other, _, _) = setup.identified(0, 1).await;
    // A join elsewhere and a leave: neither reaches Discord.
    other.send(&op4(&guild, Some("1"))).await.unwrap();
    other.send(&op4(&guild, None)).await.unwrap();
    // A heartbeat's answer orders after them: they were handled.
    other.send(r#"{"op":1,"d":null}"#).await.unwrap();
    other.op(11).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream_op4(&setup, &guild), vec![Some(channel.clone())]);
    let (_, metrics) = loop {
        let got = super::http::get(setup.proxy.addr(), "/metrics").await;
        if got.1.contains("gateway_voice_commands_refused_total 2") {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(metrics.contains("gateway_voice_commands_refused_total 2"));
    // The owner leaves; once Discord says the bot left, the guild is free.
    owner.send(&op4(&guild, None)).await.unwrap();
    upstream_op4_count(&setup, &guild, 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    other.send(&op4(&guild, Some(&channel))).await.unwrap();
    let server = other.dispatch("VOICE_SERVER_UPDATE").await.unwrap();
    assert_eq!(server["d"]["guild_id"], guild, "the other's now");
    assert_eq!(upstream_op4(&setup, &guild).len(), 3);
}

/// The bot leaves when its owner's session ends as `end` ends it.
async fn leaves_when(end: &str) {
    let ttl = Duration::from_millis(500);
    let setup = Setup::new(
        |c| c.events_per_sec = 0,
        |_, server| server.session_ttl = ttl,
    )
    .await;
    let (_, _, creates) = setup.identified(0, 1).await;
    let (guild, channel) = voice_channel(&creates);
    let mut owner = joined(&setup, &guild, &channel).await;
    match end {
        "close 1000" => owner.close(1000).await.unwrap(),
        "ttl" => drop(owner),
        "upstream reset" => {
            assert_eq!(setup.sim.control(0, Control::InvalidSession(false)), 1);
            let nine = owner.op(9).await.unwrap();
            assert_eq!(nine["d"], false);
        }
        _ => unreachable!(),
    }
    let seen = upstream_op4_count(&setup, &guild, 2).await;
    assert_eq!(seen, vec![Some(channel), None], "{end}: joined, then left");
}

#[tokio::test]
async fn the_bot_leaves_when_the_owner_closes_with_1000() {
    leaves_when("close 1000").await;
}

#[tokio::test]
async fn the_bot_leaves_when_the_owners_ttl_passes() {
    leaves_when("ttl").await;
}

#[tokio::test]
async fn the_bot_leaves_when_the_upstream_session_is_replaced() {
    leaves_when("upstream reset").await;
}

#[tokio::test]
async fn a_restarted_bot_joining_the_channel_the_bot_is_in_gets_its_voice_back() {
    let setup = Setup::new(|c| c.events_per_sec = 0, |_, _| {}).await;
    let (_, _, creates) = setup.identified(0, 1).await;
    let (guild, channel) = voice_channel(&creates);
    let owner = joined(&setup, &guild, &channel).await;
    // The bot process dies (its session stays resumable) and starts again
    // with a new session, joining the same channel, to which Discord alone
    // would answer nothing.
    drop(owner);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut restarted, _, _) = setup.identified(0, 1).await;
    restarted.send(&op4(&guild, Some(&channel))).await.unwrap();
    let mut states = Vec::new();
    loop {
        let payload = restarted.payload().await.unwrap();
        match payload["t"].as_str() {
            Some("VOICE_STATE_UPDATE") => states.push(payload["d"]["channel_id"].clone()),
            Some("VOICE_SERVER_UPDATE") => break,
            _ => {}
        }
    }
    assert_eq!(
        states,
        vec![Value::String(channel.clone())],
        "its state, never the leave on the way"
    );
    let seen = upstream_op4(&setup, &guild);
    assert_eq!(
        seen,
        vec![Some(channel.clone()), None, Some(channel)],
        "out, then in again"
    );
}

#[tokio::test]
async fn a_join_with_numbers_for_ids_as_discord_py_sends_it_owns_the_guild() {
    let setup = Setup::new(|c| c.events_per_sec = 0, |_, _| {}).await;
    let (mut client, _, creates) = setup.identified(0, 1).await;
    let (guild, channel) = voice_channel(&creates);
    client
        .send(&format!(
            r#"{{"op":4,"d":{{"guild_id":{guild},"channel_id":{channel},"self_mute":false,"self_deaf":true}}}}"#
        ))
        .await
        .unwrap();
    let server = client.dispatch("VOICE_SERVER_UPDATE").await.unwrap();
    assert_eq!(server["d"]["guild_id"], guild);
}

#[tokio::test]
async fn the_owner_moves_to_another_channel_and_gets_the_new_voice_server() {
    let setup = Setup::new(|c| c.events_per_sec = 0, |_, _| {}).await;
    let (_, _, creates) = setup.identified(0, 1).await;
    let (guild, channel) = voice_channel(&creates);
    let mut owner = joined(&setup, &guild, &channel).await;
    let other_channel = creates[0]["d"]["channels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == 2 || c["type"] == 13)
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .find(|id| *id != channel);
    // A guild with one voice channel: a move to an id the sim takes all
    // the same (Discord would check it).
    let to = other_channel.unwrap_or_else(|| "1".to_owned());
    owner.send(&op4(&guild, Some(&to))).await.unwrap();
    let state = owner.dispatch("VOICE_STATE_UPDATE").await.unwrap();
    assert_eq!(state["d"]["channel_id"], to.as_str());
    let server = owner.dispatch("VOICE_SERVER_UPDATE").await.unwrap();
    assert_eq!(
        server["d"]["guild_id"], guild,
        "the move's server, for the owner"
    );
    assert_eq!(upstream_op4(&setup, &guild), vec![Some(channel), Some(to)]);
}
