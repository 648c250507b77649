//! The admin routes and the connection logs.

use super::rest::request;
use super::sim;
use discord_sim::GatewayClient as Client;

#[tokio::test]
async fn guilds_route_is_the_ground_truth() {
    let sim = sim(|c| {
        c.shards = 2;
        c.unavailable_guilds = 1;
    })
    .await;
    let (status, content_type, guilds) = request(sim.addr(), "GET", "/_sim/guilds", None, "").await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    let guilds = guilds.as_array().unwrap();
    let world = sim.world();
    assert_eq!(guilds.len(), world.guilds.len());
    for (json, guild) in guilds.iter().zip(&world.guilds) {
        assert_eq!(json["id"], guild.id.to_string());
        assert_eq!(json["shard"], discord_sim::World::shard_of(guild.id, 2));
        assert_eq!(json["channels"], guild.channels.len());
        assert_eq!(json["member_count"], guild.member_count());
        assert_eq!(json["unavailable"], guild.unavailable);
    }
}

#[tokio::test]
async fn controls_over_http_reach_the_shard() {
    let sim = sim(|_| {}).await;
    let (mut client, _) = Client::connect(sim.addr(), "v=10&encoding=json")
        .await
        .unwrap();
    client.identify(sim.token(), [0, 1], 1).await.unwrap();
    client.dispatch("READY").await.unwrap();

    let (status, _, body) = request(
        sim.addr(),
        "POST",
        "/_sim/shards/0/emit?t=CUSTOM_EVENT",
        None,
        r#"{"x":1}"#,
    )
    .await;
    assert_eq!(status, 200);
    let custom = client.dispatch("CUSTOM_EVENT").await.unwrap();
    assert_eq!(custom["d"]["x"], 1);
    assert_eq!(custom["d"]["_sim"]["n"], body["n"]);

    let (_, _, body) = request(sim.addr(), "POST", "/_sim/shards/0/reconnect", None, "").await;
    assert_eq!(body["connections"], 1);
    assert_eq!(client.op(7).await.unwrap()["op"], 7);

    let (_, _, _) = request(
        sim.addr(),
        "POST",
        "/_sim/shards/0/close?code=4009",
        None,
        "",
    )
    .await;
    assert_eq!(client.close_code().await.unwrap(), Some(4009));
}

#[tokio::test]
async fn a_pause_says_each_shards_last_marker_and_nothing_is_numbered_after_it() {
    let sim = sim(|c| {
        c.shards = 2;
        c.events_per_sec = 2000;
    })
    .await;
    let (mut client, _) = Client::connect(sim.addr(), "v=10&encoding=json")
        .await
        .unwrap();
    // Every intent: no dispatch of the stream is filtered away.
    client
        .identify(sim.token(), [1, 2], discord_sim::KNOWN_INTENTS)
        .await
        .unwrap();
    client.dispatch("READY").await.unwrap();
    // The stream runs a while.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (status, _, body) = request(sim.addr(), "POST", "/_sim/pause", None, "").await;
    assert_eq!(status, 200);
    let last = body["last_markers"][1].as_u64().unwrap();
    assert!(last > 0, "{body}");
    assert_eq!(sim.last_markers()[1], last, "paused: no marker since");
    // An emitted marker is numbered right after the pause's last.
    let (_, _, emitted) = request(
        sim.addr(),
        "POST",
        "/_sim/shards/1/emit?t=AFTER",
        None,
        "{}",
    )
    .await;
    assert_eq!(emitted["n"], last + 1, "{body} then {emitted}");
    // Every marker up to it arrives in order, nothing generated between.
    let mut previous: Option<u64> = None;
    loop {
        let payload = client.payload().await.unwrap();
        let Some(marker) = payload["d"]["_sim"]["n"].as_u64() else {
            continue;
        };
        if let Some(previous) = previous {
            assert_eq!(marker, previous + 1, "{payload}");
        }
        previous = Some(marker);
        if marker > last {
            assert_eq!(payload["t"], "AFTER", "{payload}");
            break;
        }
    }
}

#[tokio::test]
async fn bad_admin_requests_say_what_is_wrong() {
    let sim = sim(|_| {}).await;
    for (method, path, body, status, message) in [
        (
            "POST",
            "/_sim/shards/0/emit?t=X",
            "[1]",
            400,
            "no such shard, or the body is not a JSON object",
        ),
        (
            "POST",
            "/_sim/shards/9/emit?t=X",
            "{}",
            400,
            "no such shard, or the body is not a JSON object",
        ),
        (
            "POST",
            "/_sim/shards/0/emit",
            "{}",
            400,
            "emit needs ?t=EVENT_NAME",
        ),
        (
            "POST",
            "/_sim/shards/x/cut",
            "",
            400,
            "the shard must be a number",
        ),
        (
            "POST",
            "/_sim/shards/0/close",
            "",
            400,
            "close needs ?code=N",
        ),
        ("POST", "/_sim/shards/0/dance", "", 404, "unknown action"),
        ("GET", "/_sim/nope", "", 404, "unknown admin route"),
    ] {
        let (got, _, json) = request(sim.addr(), method, path, None, body).await;
        assert_eq!(
            (got, json["message"].as_str().unwrap()),
            (status, message),
            "{path}"
        );
    }
}

#[tokio::test]
async fn connection_logs_show_both_directions() {
    let sim = sim(|_| {}).await;
    let (mut client, _) = Client::connect(sim.addr(), "v=10&encoding=json&compress=zstd-stream")
        .await
        .unwrap();
    client.identify(sim.token(), [0, 1], 1).await.unwrap();
    let ready = client.dispatch("READY").await.unwrap();
    client.close(4000).await.unwrap();
    // The sim answers the close; this client then fails to echo it, so the
    // code it reports is not the point here: the sim's log is.
    let _ = client.close_code().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;

    let logs = sim.connections();
    let log = logs.last().unwrap();
    assert_eq!(log.query, "v=10&encoding=json&compress=zstd-stream");
    assert_eq!(log.shard, Some(0));
    assert_eq!(log.session_id.as_deref(), ready["d"]["session_id"].as_str());
    assert!(!log.open);
    assert_eq!(log.close_code, Some(4000));
    assert!(log.received[0].contains(r#""op":2"#));
    assert_eq!(log.sent[0].op, 10, "HELLO first");
    assert_eq!(
        (log.sent[1].t.as_deref(), log.sent[1].s),
        (Some("READY"), Some(1))
    );

    let (_, _, json) = request(sim.addr(), "GET", "/_sim/connections", None, "").await;
    let json = json.as_array().unwrap().last().unwrap().clone();
    assert_eq!(json["close_code"], 4000);
    assert_eq!(json["sent"][1]["t"], "READY");
}
