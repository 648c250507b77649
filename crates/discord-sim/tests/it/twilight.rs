//! twilight-gateway 0.18 as a real client.

use std::time::Duration;

use discord_sim::Control;
use futures_core::Stream as _;
use serde_json::Value;
use twilight_gateway::{CloseFrame, ConfigBuilder, Intents, Message, Shard, ShardId, ShardState};

use super::sim;

fn shard(url: &str, token: &str, id: u32, total: u32) -> Shard {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let queue = twilight_gateway::queue::InMemoryQueue::new(0, 0, Duration::ZERO, 0);
    let config = ConfigBuilder::new(token.to_owned(), Intents::all())
        .proxy_url(url.to_owned())
        .queue(queue)
        .build();
    Shard::with_config(ShardId::new(id, total), config)
}

/// The next text payload, parsed; `None` when the stream ends.
async fn next(shard: &mut Shard) -> Option<Result<Value, Option<u16>>> {
    let poll = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *shard).poll_next(cx));
    let message = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("twilight yields within ten seconds")?;
    Some(match message.expect("no receive error") {
        Message::Text(text) => Ok(serde_json::from_str(&text).unwrap()),
        Message::Close(frame) => Err(frame.map(|f| f.code)),
    })
}

async fn next_dispatch(shard: &mut Shard, t: &str) -> Value {
    loop {
        if let Some(Ok(payload)) = next(shard).await
            && payload["t"] == t
        {
            return payload;
        }
    }
}

#[tokio::test]
async fn twilight_identifies_gets_every_guild_then_events() {
    let sim = sim(|c| {
        c.shards = 2;
        c.guilds = 8;
        c.unavailable_guilds = 1;
        c.events_per_sec = 200;
    })
    .await;
    for id in 0..2 {
        let mut shard = shard(sim.gateway_url(), sim.token(), id, 2);
        let ready = next_dispatch(&mut shard, "READY").await;
        let world = sim.world();
        let expected: Vec<_> = world.guilds_of(id, 2).collect();
        assert_eq!(
            ready["d"]["guilds"].as_array().unwrap().len(),
            expected.len()
        );
        for guild in &expected {
            let payload = next(&mut shard).await.unwrap().unwrap();
            let t = if guild.unavailable {
                "GUILD_DELETE"
            } else {
                "GUILD_CREATE"
            };
            assert_eq!(
                (
                    payload["t"].as_str().unwrap(),
                    payload["d"]["id"].as_str().unwrap()
                ),
                (t, guild.id.to_string().as_str())
            );
        }
        assert_eq!(shard.state(), ShardState::Active);
        let mut live = 0;
        while live < 20 {
            let payload = next(&mut shard).await.unwrap().unwrap();
            if payload["d"]["_sim"]["shard"] == id {
                live += 1;
            }
        }
        shard.close(CloseFrame::NORMAL);
    }
}

/// RECONNECT: twilight closes, reconnects to `resume_gateway_url`, resumes,
/// and gets every event it missed, none twice.
#[tokio::test]
async fn twilight_resumes_after_reconnect_without_losing_events() {
    let sim = sim(|c| c.events_per_sec = 300).await;
    let mut shard = shard(sim.gateway_url(), sim.token(), 0, 1);
    next_dispatch(&mut shard, "READY").await;
    let mut last = None;
    let mut reconnected = false;
    let mut resumed = false;
    let mut seen = 0;
    while !(resumed && seen > 100) {
        let Some(Ok(payload)) = next(&mut shard).await else {
            continue;
        };
        if payload["t"] == "RESUMED" {
            resumed = true;
            continue;
        }
        let Some(n) = payload["d"]["_sim"]["n"].as_u64() else {
            continue;
        };
        if let Some(last) = last {
            assert_eq!(n, last + 1, "no event lost or repeated across the resume");
        }
        last = Some(n);
        seen += 1;
        if seen == 50 && !reconnected {
            assert_eq!(sim.control(0, Control::Reconnect), 1);
            reconnected = true;
        }
    }
    assert_eq!(sim.lagged(), 0);
}

#[tokio::test]
async fn twilight_identifies_again_after_invalid_session_false() {
    let sim = sim(|_| {}).await;
    let mut shard = shard(sim.gateway_url(), sim.token(), 0, 1);
    let first = next_dispatch(&mut shard, "READY").await;
    assert_eq!(sim.control(0, Control::InvalidSession(false)), 1);
    let second = next_dispatch(&mut shard, "READY").await;
    assert_ne!(first["d"]["session_id"], second["d"]["session_id"]);
    assert_eq!(sim.identifies_remaining(), 998);
}

#[tokio::test]
async fn twilight_treats_4004_as_fatal() {
    let sim = sim(|_| {}).await;
    let mut shard = shard(sim.gateway_url(), "not-the-token", 0, 1);
    loop {
        match next(&mut shard).await {
            Some(Err(code)) => {
                assert_eq!(code, Some(4004));
                break;
            }
            Some(Ok(_)) => {}
            None => panic!("the stream ended before the close"),
        }
    }
    assert_eq!(shard.state(), ShardState::FatallyClosed);
    assert!(
        next(&mut shard).await.is_none(),
        "no reconnect after a fatal close"
    );
}
