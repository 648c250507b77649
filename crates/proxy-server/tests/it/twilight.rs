//! twilight-gateway 0.18, unmodified, through the proxy: every payload it
//! gets parses into twilight's own models.

use std::time::Duration;

use futures_core::Stream as _;
use twilight_gateway::{ConfigBuilder, EventTypeFlags, Intents, Message, Shard, ShardId};
use twilight_model::gateway::event::{DispatchEvent as D, GatewayEvent};
use twilight_model::gateway::payload::outgoing::RequestGuildMembers;
use twilight_model::id::Id;

use super::Setup;

/// The next gateway event that twilight models, parsed by twilight itself.
async fn next(shard: &mut Shard) -> GatewayEvent {
    loop {
        if let (_, Some(event)) = next_any(shard).await {
            return event;
        }
    }
}

/// The next payload: its `s`, and twilight's parse of it (`None` for an
/// event twilight does not model, such as the soundboard's).
async fn next_any(shard: &mut Shard) -> (Option<u64>, Option<GatewayEvent>) {
    let poll = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *shard).poll_next(cx));
    let message = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("twilight yields within ten seconds")
        .expect("the stream goes on")
        .expect("no receive error");
    let Message::Text(text) = message else {
        // A close: twilight reconnects (and resumes) by itself.
        return (None, None);
    };
    let s = serde_json::from_str::<serde_json::Value>(&text).unwrap()["s"].as_u64();
    let event = twilight_gateway::parse(text.clone(), EventTypeFlags::all()).unwrap_or_else(|e| {
        panic!(
            "twilight cannot parse {}: {e}",
            &text[..text.len().min(300)]
        )
    });
    (s, event)
}

#[tokio::test]
async fn twilight_gets_ready_every_guild_and_events_it_can_parse() {
    let setup = Setup::new(
        |c| {
            c.shards = 2;
            c.guilds = 6;
            c.unavailable_guilds = 1;
            c.events_per_sec = 300;
        },
        |_, _| {},
    )
    .await;
    for id in 0..2 {
        // Hold the stream while the guilds are compared with the truth.
        setup.sim.pause_stream();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let world = setup.sim.world();
        let config = ConfigBuilder::new(setup.sim.token().to_owned(), Intents::all())
            .proxy_url(format!("ws://{}", setup.proxy.addr()))
            .build();
        let mut shard = Shard::with_config(ShardId::new(id, 2), config);
        let GatewayEvent::Hello(_) = next(&mut shard).await else {
            panic!("HELLO first")
        };
        let GatewayEvent::Dispatch(1, ready) = next(&mut shard).await else {
            panic!("READY with s 1")
        };
        let D::Ready(ready) = ready else {
            panic!("READY")
        };
        let expected: Vec<_> = world.guilds_of(id, 2).collect();
        assert_eq!(ready.guilds.len(), expected.len());
        for (seq, guild) in (2..).zip(&expected) {
            let GatewayEvent::Dispatch(s, event) = next(&mut shard).await else {
                panic!("a guild")
            };
            assert_eq!(s, seq);
            match event {
                D::GuildCreate(create) => {
                    assert!(!guild.unavailable);
                    assert_eq!(create.id().get(), guild.id);
                    let twilight_model::gateway::payload::incoming::GuildCreate::Available(g) =
                        *create
                    else {
                        panic!("available")
                    };
                    assert_eq!(g.name, guild.name);
                    assert_eq!(g.channels.len(), guild.channels.len());
                    assert_eq!(g.roles.len(), guild.roles.len());
                    assert_eq!(g.member_count, Some(guild.member_count() as u64));
                }
                D::GuildDelete(delete) => {
                    assert!(guild.unavailable);
                    assert_eq!(delete.unavailable, Some(true));
                }
                other => panic!("expected a guild, got {other:?}"),
            }
        }
        setup.sim.resume_stream();
        let mut last = 1 + expected.len() as u64;
        let mut dispatches = 0;
        let mut resumed = false;
        let mut disconnected = false;
        while dispatches < 400 {
            if dispatches == 100 && !disconnected {
                // The proxy closes every client; twilight must resume.
                setup.proxy.disconnect_clients();
                disconnected = true;
            }
            if let (Some(s), event) = next_any(&mut shard).await {
                assert_eq!(s, last + 1, "contiguous s, across the resume");
                last = s;
                dispatches += 1;
                resumed |= matches!(event, Some(GatewayEvent::Dispatch(_, D::Resumed)));
            }
        }
        assert!(resumed, "twilight resumed");
        // Op 8 with a nonce: twilight gets its own chunks.
        let guild = expected.iter().find(|g| !g.unavailable).unwrap();
        let request = RequestGuildMembers::builder(Id::new(guild.id))
            .nonce("from-twilight")
            .query("", None);
        shard.command(&request);
        loop {
            if let GatewayEvent::Dispatch(_, D::MemberChunk(chunk)) = next(&mut shard).await {
                assert_eq!(chunk.nonce.as_deref(), Some("from-twilight"));
                assert_eq!(chunk.guild_id.get(), guild.id);
                assert!(!chunk.members.is_empty());
                break;
            }
        }
    }
}
