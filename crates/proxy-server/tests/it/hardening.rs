//! What a broken upstream, a misconfigured token or a slow client does:
//! each gets an answer that says what happened, and nothing is lost.

use std::time::Duration;

use discord_sim::{Control, GatewayClient, KNOWN_INTENTS, KeyOrder};
use shard_pool::Token;

use super::sessions::{resumed, until_close};
use super::{Setup, assert_contiguous, marked};

#[tokio::test]
async fn a_fatal_upstream_close_reaches_the_shards_clients_with_the_same_code() {
    let setup = Setup::new(
        |c| {
            c.shards = 3;
            c.guilds = 12;
            c.events_per_sec = 100;
        },
        |_, _| {},
    )
    .await;
    let (mut alive, _, creates) = setup.identified(0, 3).await;
    let first = 1 + creates.len() as u64;
    for (shard, code) in [(1, 4004), (2, 4014)] {
        let (mut stopped, _, creates) = setup.identified(shard, 3).await;
        marked(&mut stopped, 1 + creates.len() as u64, 3).await;
        assert_eq!(setup.sim.control(shard, Control::Close(code)), 1);
        let closed = until_close(&mut stopped, &mut 0, &mut Vec::new()).await;
        assert_eq!(closed, Some(code), "the code Discord gave");
        // A new IDENTIFY for that shard is answered at once, with the same
        // code.
        let mut late = setup.client("v=10&encoding=json").await;
        late.identify(setup.sim.token(), [shard, 3], 1)
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(late.close_code().await.unwrap(), Some(code));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "not after a wait"
        );
    }
    // The other shard goes on.
    assert_contiguous(&marked(&mut alive, first, 50).await);
}

#[tokio::test]
async fn a_configured_token_with_the_bot_prefix_lets_clients_in_and_no_one_else() {
    let setup = Setup::new(
        |c| c.events_per_sec = 0,
        |_, server| {
            assert!(server.validate_token);
            server.token = Token::new("Bot sim-token");
        },
    )
    .await;
    for token in ["sim-token", "Bot sim-token"] {
        let mut client = setup.client("v=10&encoding=json").await;
        client.identify(token, [0, 1], 1).await.unwrap();
        client.dispatch("READY").await.unwrap();
    }
    let mut client = setup.client("v=10&encoding=json").await;
    client.identify("Bot not-it", [0, 1], 1).await.unwrap();
    assert_eq!(client.close_code().await.unwrap(), Some(4004));
    // And no Debug shows it.
    let shown = format!("{:?}", setup.proxy);
    assert!(!shown.contains("sim-token"), "{shown}");
}

#[tokio::test]
async fn dispatches_in_any_key_order_reach_clients_in_discords() {
    let setup = Setup::new(
        |c| {
            c.events_per_sec = 1000;
            c.key_order = KeyOrder::Mixed;
        },
        |_, _| {},
    )
    .await;
    let (mut client, _, creates) = setup.identified(0, 1).await;
    let mut last = 1 + creates.len() as u64;
    let mut markers = Vec::new();
    while markers.len() < 2000 {
        let raw = client.recv_bytes().await.unwrap();
        let text = String::from_utf8(raw).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        if value["op"] != 0 {
            continue;
        }
        assert!(text.starts_with(r#"{"t":""#), "Discord's order: {text:.80}");
        let s = value["s"].as_u64().unwrap();
        assert_eq!(s, last + 1);
        last = s;
        if let Some(n) = super::marker(&value) {
            markers.push((s, n));
        }
    }
    assert_contiguous(&markers);
    let status = &setup.proxy.pool().status()[0];
    assert_eq!(status.malformed, 0, "{status:?}");
}

// Several threads: on one, the sim, the proxy and the client take turns, and
// a client starved for a second would be closed for its full queue instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_client_steadily_slower_than_its_shard_is_closed_while_it_can_still_resume() {
    // The default ring: a client is closed a quarter of it behind what was
    // written to it; the rest covers what it has not read yet (its queue,
    // the proxy's capped socket send buffer, its own receive buffer, here
    // 64 KiB) and its reconnect.
    let setup = Setup::new(|c| c.events_per_sec = 3000, |_, _| {}).await;
    let mut client =
        GatewayClient::connect_buffered(setup.proxy.addr(), "v=10&encoding=json", Some(64 << 10))
            .await
            .unwrap();
    client.set_timeout(Duration::from_secs(10));
    assert_eq!(client.payload().await.unwrap()["op"], 10);
    client
        .identify(setup.sim.token(), [0, 1], KNOWN_INTENTS)
        .await
        .unwrap();
    let ready = client.dispatch("READY").await.unwrap();
    let session = ready["d"]["session_id"].as_str().unwrap().to_owned();
    let guilds = ready["d"]["guilds"].as_array().unwrap().len();
    for _ in 0..guilds {
        client.payload().await.unwrap();
    }
    let creates = vec![(); guilds];
    let mut last = 1 + creates.len() as u64;
    let mut seen = Vec::new();
    // About a third of the shard's rate, never stalling for a second.
    let code = loop {
        match client.payload().await {
            Ok(payload) => {
                let s = payload["s"].as_u64().unwrap();
                assert_eq!(s, last + 1);
                last = s;
                if let Some(n) = super::marker(&payload) {
                    seen.push((s, n));
                }
                if s % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Err(discord_sim::ClientError::Closed(code)) => break code,
            Err(error) => panic!("{error}"),
        }
    };
    assert_eq!(code, Some(4000), "closed as too slow, resumable");
    let (mut client, s) = resumed(&setup, &session, last, &mut seen).await;
    seen.extend(marked(&mut client, s, 50).await);
    assert_contiguous(&seen);
}
