//! Voice: one owner per guild (the session whose op 4 joined), other
//! sessions' op 4 for the guild refused while it owns it, and the bot
//! leaves when the owner's session ends for good.

use std::time::Duration;

use discord_sim::{Control, GatewayClient};
use serde_json::Value;
use shard_pool::{Outcome, Route, ShardEvent, VoicePhase};

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

/// A voice channel of the guild other than `channel`, or, for a guild with
/// one, an id the sim takes all the same (Discord would check it).
fn another_voice_channel(creates: &[Value], channel: &str) -> String {
    creates[0]["d"]["channels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == 2 || c["type"] == 13)
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .find(|id| id != channel)
        .unwrap_or_else(|| "1".to_owned())
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

/// Waits (up to 5 s) until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never: {what}"));
}

/// A client that joins `channel` of `guild` and gets its voice server.
async fn joined(setup: &Setup, guild: &str, channel: &str) -> GatewayClient {
    let (mut client, _, _) = setup.identified(0, 1).await;
    client.send(&op4(guild, Some(channel))).await.unwrap();
    let server = client.dispatch("VOICE_SERVER_UPDATE").await.unwrap();
    assert_eq!(server["d"]["guild_id"], guild);
    client
}

/// Reads until a voice server update; returns the `channel_id` of each
/// voice state before it.
async fn states_until_server(client: &mut GatewayClient) -> Vec<Value> {
    let mut states = Vec::new();
    loop {
        let payload = client.payload().await.unwrap();
        match payload["t"].as_str() {
            Some("VOICE_STATE_UPDATE") => states.push(payload["d"]["channel_id"].clone()),
            Some("VOICE_SERVER_UPDATE") => return states,
            _ => {}
        }
    }
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

/// How a voice owner's session ends for good.
#[derive(Clone, Copy, Debug)]
enum End {
    /// Its client closes with this code.
    Close(u16),
    /// Its client drops and the session ttl passes.
    Ttl,
    /// The upstream session is replaced.
    UpstreamReset,
}

/// A proxy, one of its guilds and two of its voice channels, after the
/// owner of the guild's voice (which joined `channel`) ended.
struct Ended {
    setup: Setup,
    guild: String,
    channel: String,
    other: String,
}

/// A proxy (sessions kept 500 ms, `leave` as `voice_leave_on_owner_loss`)
/// where a client joins a voice channel and its session ends as `end` says.
async fn owner_ended(end: End, leave: bool) -> Ended {
    let setup = Setup::new(
        |c| c.events_per_sec = 0,
        |_, server| {
            server.session_ttl = Duration::from_millis(500);
            server.voice_leave_on_owner_loss = leave;
        },
    )
    .await;
    let (_, _, creates) = setup.identified(0, 1).await;
    let (guild, channel) = voice_channel(&creates);
    let other = another_voice_channel(&creates, &channel);
    let mut owner = joined(&setup, &guild, &channel).await;
    match end {
        End::Close(code) => owner.close(code).await.unwrap(),
        End::Ttl => drop(owner),
        End::UpstreamReset => {
            assert_eq!(setup.sim.control(0, Control::InvalidSession(false)), 1);
            let nine = owner.op(9).await.unwrap();
            assert_eq!(nine["d"], false);
        }
    }
    Ended {
        setup,
        guild,
        channel,
        other,
    }
}

/// The bot leaves when its owner's session ends as `end` ends it.
async fn leaves_when(end: End) -> Ended {
    let ended = owner_ended(end, true).await;
    let seen = upstream_op4_count(&ended.setup, &ended.guild, 2).await;
    let joined_then_left = vec![Some(ended.channel.clone()), None];
    assert_eq!(seen, joined_then_left, "{end:?}: joined, then left");
    ended
}

#[tokio::test]
async fn the_bot_leaves_when_the_owner_closes_with_1000() {
    leaves_when(End::Close(1000)).await;
}

#[tokio::test]
async fn the_bot_leaves_when_the_owner_closes_with_1001() {
    leaves_when(End::Close(1001)).await;
}

#[tokio::test]
async fn the_bot_leaves_when_the_owners_ttl_passes() {
    leaves_when(End::Ttl).await;
}

#[tokio::test]
async fn the_bot_leaves_when_the_upstream_session_is_replaced() {
    leaves_when(End::UpstreamReset).await;
}

#[tokio::test]
async fn once_discord_says_the_bot_left_another_client_can_join() {
    let Ended {
        setup,
        guild,
        channel,
        ..
    } = leaves_when(End::Close(1000)).await;
    let shard = setup.proxy.pool().shard(0).unwrap();
    // Discord's voice state with no channel frees the guild.
    eventually("the guild is free", || shard.voice().is_empty()).await;
    // `joined` asserts the voice server came: only the owner gets it.
    let _other = joined(&setup, &guild, &channel).await;
    assert_eq!(
        upstream_op4(&setup, &guild),
        vec![Some(channel.clone()), None, Some(channel)],
        "a plain join: the bot was out"
    );
}

#[tokio::test]
async fn without_leave_on_owner_loss_the_bot_stays_and_the_guild_is_free() {
    let Ended {
        setup,
        guild,
        channel,
        other,
    } = owner_ended(End::Close(1000), false).await;
    let shard = setup.proxy.pool().shard(0).unwrap();
    eventually("the guild is free", || shard.voice().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        upstream_op4(&setup, &guild),
        vec![Some(channel.clone())],
        "no leave"
    );
    // Free: another client's join of another channel is sent (with an
    // owner it would be refused), and the voice server is its own.
    let _next = joined(&setup, &guild, &other).await;
    assert_eq!(
        upstream_op4(&setup, &guild),
        vec![Some(channel), Some(other)]
    );
}

#[tokio::test]
async fn a_detached_owner_resumes_with_its_call_and_another_clients_leave_is_refused() {
    let setup = Setup::new(|c| c.events_per_sec = 0, |_, _| {}).await;
    let (mut other, _, creates) = setup.identified(0, 1).await;
    let (guild, channel) = voice_channel(&creates);
    let (mut owner, ready, _) = setup.identified(0, 1).await;
    let session = ready["d"]["session_id"].as_str().unwrap().to_owned();
    owner.send(&op4(&guild, Some(&channel))).await.unwrap();
    let server = owner.dispatch("VOICE_SERVER_UPDATE").await.unwrap();
    // Its process dies: the session is kept for a RESUME.
    drop(owner);
    tokio::time::sleep(Duration::from_millis(200)).await;
    other.send(&op4(&guild, None)).await.unwrap();
    // A heartbeat's answer orders after it: it was handled.
    other.send(r#"{"op":1,"d":null}"#).await.unwrap();
    other.op(11).await.unwrap();
    let mut owner = setup.client("v=10&encoding=json").await;
    owner
        .resume(setup.sim.token(), &session, server["s"].as_u64().unwrap())
        .await
        .unwrap();
    owner.dispatch("RESUMED").await.unwrap();
    assert_eq!(
        upstream_op4(&setup, &guild),
        vec![Some(channel.clone())],
        "the other's leave never reached Discord"
    );
    let shard = setup.proxy.pool().shard(0).unwrap();
    let id: u64 = guild.parse().unwrap();
    assert_eq!(
        shard.voice(),
        vec![(id, session.as_str().into(), VoicePhase::Connected)]
    );
    let kept: Value = serde_json::from_slice(&shard.voice_server(id).unwrap()).unwrap();
    assert_eq!(kept, server["d"], "its voice server, kept");
    // Still its call: its own leave is sent.
    owner.send(&op4(&guild, None)).await.unwrap();
    let seen = upstream_op4_count(&setup, &guild, 2).await;
    assert_eq!(seen, vec![Some(channel), None]);
}

#[tokio::test]
async fn a_client_that_does_not_own_the_voice_gets_the_bots_voice_state_as_discord_sent_it() {
    let setup = Setup::new(|c| c.events_per_sec = 0, |_, _| {}).await;
    let (mut other, ready, creates) = setup.identified(0, 1).await;
    let (guild, channel) = voice_channel(&creates);
    let mut taken_in = setup.proxy.pool().shard(0).unwrap().subscribe();
    let _owner = joined(&setup, &guild, &channel).await;
    let upstream = loop {
        if let ShardEvent::Dispatch(d) = taken_in.recv().await.unwrap()
            && d.event_type() == Some("VOICE_STATE_UPDATE")
        {
            break d;
        }
    };
    let (bytes, state) = loop {
        let bytes = other.recv_bytes().await.unwrap();
        let payload: Value = serde_json::from_slice(&bytes).unwrap();
        if payload["t"] == "VOICE_STATE_UPDATE" {
            break (bytes, payload);
        }
    };
    let mut expected = Vec::new();
    upstream.write(state["s"].as_u64().unwrap(), &mut expected);
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        String::from_utf8(expected).unwrap(),
        "Discord's bytes, with the client's own s"
    );
    let sim_session = setup
        .sim
        .connections()
        .into_iter()
        .find(|c| c.shard == Some(0) && c.open)
        .and_then(|c| c.session_id)
        .unwrap();
    assert_eq!(state["d"]["session_id"], sim_session.as_str(), "upstream's");
    assert_ne!(state["d"]["session_id"], ready["d"]["session_id"]);
    assert_eq!(state["d"]["user_id"], ready["d"]["user"]["id"]);
    assert_eq!(state["d"]["channel_id"], channel.as_str());
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
    assert_eq!(
        states_until_server(&mut restarted).await,
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
    let to = another_voice_channel(&creates, &channel);
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

#[tokio::test]
async fn a_restarted_bot_joining_before_discord_answers_the_leave_gets_its_voice() {
    let setup = Setup::new(|c| c.events_per_sec = 0, |_, _| {}).await;
    let (_, _, creates) = setup.identified(0, 1).await;
    let (guild, channel) = voice_channel(&creates);
    let other = another_voice_channel(&creates, &channel);
    let (mut owner, ready, _) = setup.identified(0, 1).await;
    owner.send(&op4(&guild, Some(&channel))).await.unwrap();
    owner.dispatch("VOICE_SERVER_UPDATE").await.unwrap();
    let (mut restarted, again, _) = setup.identified(0, 1).await;
    // The old process's session ends (as a close with 1000 ends it: a
    // leave is sent) and the new one joins another channel, both at the
    // shard in one step (the test's runtime has one thread), so that
    // Discord has not answered the leave yet: over loopback, it would
    // most often answer before a client's join got there.
    let shard = setup.proxy.pool().shard(0).unwrap();
    let session = |ready: &Value| ready["d"]["session_id"].as_str().unwrap().to_owned();
    let ended =
        shard_pool::Command::new(String::new(), session(&ready), Route::Ended { leave: true });
    let join = shard_pool::Command::new(
        op4(&guild, Some(&other)),
        session(&again),
        Route::Voice {
            guild: guild.parse().unwrap(),
            channel: Some(other.parse().unwrap()),
        },
    );
    let attached = |_: &str| false;
    let guilds = vec![guild.parse().unwrap()];
    assert_eq!(
        shard.command(ended, attached).await.unwrap(),
        Outcome::Ended(guilds)
    );
    assert_eq!(shard.command(join, attached).await.unwrap(), Outcome::Sent);
    assert_eq!(
        states_until_server(&mut restarted).await,
        vec![Value::String(other.clone())],
        "its own voice state and server, never the leave's state"
    );
    assert_eq!(
        upstream_op4(&setup, &guild),
        vec![Some(channel), None, Some(other)],
        "one leave, then the join"
    );
    drop(owner);
}
