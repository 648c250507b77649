//! The event log: a pool with the cluster's tap publishes every event of
//! every shard, in order, with its index, `s`, session and audience, and a
//! repeat of a message id is dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use cluster::testing::nats;
use cluster::{LogLimits, headers};
use discord_sim::{KNOWN_INTENTS, Sim, SimConfig};
use shard_pool::{Pool, PoolConfig, ShardEvent};

use super::node;

/// What the stream holds of one message.
#[derive(Debug)]
struct Logged {
    shard: u32,
    index: u64,
    seq: Option<u64>,
    session: String,
    audience: String,
    ready: bool,
    payload: Bytes,
}

fn header(message: &async_nats::jetstream::message::StreamMessage, name: &str) -> Option<String> {
    message
        .headers
        .get(name)
        .map(|value| value.as_str().to_owned())
}

/// Every message of the stream, in the stream's order.
async fn read_log(stream: &async_nats::jetstream::stream::Stream, count: u64) -> Vec<Logged> {
    let mut logged = Vec::new();
    for seq in 1..=count {
        let message = stream.get_raw_message(seq).await.unwrap();
        let shard: u32 = header(&message, headers::SHARD).unwrap().parse().unwrap();
        assert_eq!(message.subject.as_str(), format!("log.events.{shard}"));
        logged.push(Logged {
            shard,
            index: header(&message, headers::INDEX).unwrap().parse().unwrap(),
            seq: header(&message, headers::SEQ).map(|s| s.parse().unwrap()),
            session: header(&message, headers::SESSION).unwrap(),
            audience: header(&message, headers::AUDIENCE).unwrap(),
            ready: header(&message, headers::READY).as_deref() == Some("1"),
            payload: message.payload.clone(),
        });
    }
    logged
}

/// The same message id again (a retry, or a node numbering the same events
/// after a restart, in the same term: 0 without leases) is dropped.
async fn assert_repeat_dropped(
    jetstream: &async_nats::jetstream::Context,
    stream: &mut async_nats::jetstream::stream::Stream,
    first: &Logged,
    count: u64,
) {
    let ack = jetstream
        .send_publish(
            format!("log.events.{}", first.shard),
            async_nats::jetstream::message::PublishMessage::build()
                .payload(first.payload.clone())
                .message_id(format!("0.{}.{}", first.session, first.index)),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(ack.duplicate, "a repeat is a no-op");
    assert_eq!(stream.info().await.unwrap().state.messages, count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_of_every_shard_is_published_in_order_with_its_stamps() {
    let Some(nats) = nats("log_order") else {
        return;
    };
    let mut sim_config = SimConfig::default();
    sim_config.shards = 2;
    sim_config.identify_interval = Duration::from_millis(200);
    sim_config.events_per_sec = 200;
    let sim = Sim::start(sim_config).await.unwrap();
    let cluster = node(&nats, "log", "a").await;
    let log = cluster.event_log(LogLimits::default()).await.unwrap();
    let mut config = PoolConfig::new(sim.token(), KNOWN_INTENTS);
    config.api_base = Some(sim.api_base());
    config.identify_window = sim.config().identify_interval;
    config.tap = Some(Arc::new(log.clone()));
    let pool = Pool::start(config).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), pool.ready())
        .await
        .unwrap()
        .unwrap();
    // Shard 0's events as its own followers see them.
    let mut follower = pool.shards()[0].subscribe();
    let mut local = Vec::new();
    while local.len() < 100 {
        let event = tokio::time::timeout(Duration::from_secs(5), follower.recv())
            .await
            .unwrap()
            .unwrap();
        if let ShardEvent::Dispatch(dispatch) = event {
            local.push((dispatch.index(), dispatch.payload().clone()));
        }
    }
    pool.freeze();
    // Everything the shards took in is acknowledged.
    let head: u64 = pool
        .shards()
        .iter()
        .map(shard_pool::ShardHandle::head)
        .sum();
    for _ in 0..100 {
        if log
            .stats()
            .published
            .load(std::sync::atomic::Ordering::Relaxed)
            >= head
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = async_nats::connect(nats.url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream.get_stream("log-events").await.unwrap();
    let count = stream.info().await.unwrap().state.messages;
    assert_eq!(count, head, "one message per event of every shard");
    let logged = read_log(&stream, count).await;
    for shard in 0..2 {
        let of_shard: Vec<&Logged> = logged.iter().filter(|l| l.shard == shard).collect();
        assert!(of_shard[0].ready, "READY first: {:?}", of_shard[0]);
        assert!(of_shard[0].payload.starts_with(b"{\"t\":\"READY\""));
        let session = &of_shard[0].session;
        for (i, event) in of_shard.iter().enumerate() {
            assert_eq!(
                event.index,
                i as u64 + 1,
                "indices count up from 1 without a gap"
            );
            assert_eq!(&event.session, session);
            assert_eq!(event.audience, "everyone");
            let s = format!("\"s\":{},", event.seq.unwrap());
            assert!(
                event.payload.windows(s.len()).any(|w| w == s.as_bytes()),
                "Gp-Seq is the payload's s"
            );
        }
        assert_eq!(
            of_shard.last().unwrap().index,
            pool.shards()[shard as usize].head()
        );
    }
    // The stream holds the bytes the local followers were handed.
    for (index, payload) in &local {
        let event = logged
            .iter()
            .find(|l| l.shard == 0 && l.index == *index)
            .unwrap();
        assert_eq!(&event.payload, payload, "index {index}");
    }

    assert_repeat_dropped(&jetstream, &mut stream, &logged[1], count).await;
    let stats = log.stats();
    assert_eq!(stats.failed.load(Relaxed) + stats.dropped.load(Relaxed), 0);
}

/// The stream is made as the docs say: limits retention, the oldest
/// dropped first, on file, with the duplicate window the message ids need.
fn assert_stream_config(config: &async_nats::jetstream::stream::Config) {
    use async_nats::jetstream::stream::{DiscardPolicy, RetentionPolicy, StorageType};
    assert_eq!(config.subjects, ["retry.events.>"]);
    assert_eq!(config.retention, RetentionPolicy::Limits);
    assert_eq!(config.discard, DiscardPolicy::Old);
    assert_eq!(config.max_age, Duration::from_mins(10));
    assert_eq!(config.max_bytes, 1 << 30);
    assert_eq!(config.storage, StorageType::File);
    assert_eq!(config.num_replicas, 1);
    assert_eq!(config.duplicate_window, Duration::from_mins(2));
}

/// Taps events `1..=count` of shard 0, 60 kB each, 20 a millisecond: big
/// enough that a batch takes a while to write, so a crash of the server
/// finds some of it on the wire and some still to send.
async fn tap_events(log: cluster::EventLog, count: u64) {
    use shard_pool::{Audience, Tap, Tapped};
    let payload = Bytes::from(vec![b'x'; 60_000]);
    for index in 1..=count {
        let audience = Audience::Everyone;
        let event = Tapped::new(
            0,
            index,
            Some(index),
            "s".into(),
            payload.clone(),
            audience,
            false,
        );
        log.tapped(event);
        if index % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// NATS crashes while batches are on their way: the publishes it lost are
/// sent again with the rest of their batch, and an event stored before one
/// of those (it went through after the reconnect) is moved behind it, so
/// the stream holds every event of the shard once, in index order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shards_events_stay_in_order_when_nats_crashes_mid_batch() {
    const EVENTS: u64 = 1500;
    let Some(mut nats) = nats("log_retry") else {
        return;
    };
    let cluster = node(&nats, "retry", "a").await;
    let log = cluster.event_log(LogLimits::default()).await.unwrap();
    let producer = tokio::spawn(tap_events(log.clone(), EVENTS));
    while log.stats().published.load(Relaxed) < 600 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    nats.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.restart();
    producer.await.unwrap();
    // A lost acknowledgement costs its round one timeout (5 s), not one
    // per event.
    assert!(
        log.flush(Duration::from_secs(30)).await,
        "{:?}",
        log.stats()
    );
    let stats = log.stats();
    assert!(stats.retried.load(Relaxed) > 0, "the crash lost publishes");
    assert_eq!(stats.failed.load(Relaxed) + stats.dropped.load(Relaxed), 0);
    assert_eq!(stats.published.load(Relaxed), EVENTS);

    let client = async_nats::connect(nats.url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream.get_stream("retry-events").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_stream_config(&info.config);
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut indices = Vec::new();
    for seq in first..=last {
        // A copy moved behind a lost event is deleted here.
        if let Ok(message) = stream.get_raw_message(seq).await {
            indices.push(
                header(&message, headers::INDEX)
                    .unwrap()
                    .parse::<u64>()
                    .unwrap(),
            );
        }
    }
    let expected: Vec<u64> = (1..=EVENTS).collect();
    assert!(
        indices == expected,
        "out of order or missing: {:?}",
        breaks(&indices)
    );
}

/// Where `indices` does not count up by one.
fn breaks(indices: &[u64]) -> Vec<(u64, u64)> {
    indices
        .windows(2)
        .filter(|pair| pair[1] != pair[0] + 1)
        .map(|pair| (pair[0], pair[1]))
        .collect()
}
