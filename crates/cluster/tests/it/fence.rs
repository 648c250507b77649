//! Fencing: a node that lost a shard's lease without knowing it yet keeps
//! publishing; once the new owner's mark is in the log, every reader
//! refuses what the old owner publishes after it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cluster::LogLimits;
use shard_pool::{Audience, Followed, Source, Tap, Tapped};

use super::node;

fn event(index: u64, term: u64) -> Tapped {
    let payload = Bytes::from(format!(r#"{{"op":0,"t":"X","s":{index},"d":{{}}}}"#));
    Tapped::new(
        0,
        index,
        Some(index),
        Arc::from("up"),
        payload,
        Audience::Everyone,
        false,
    )
    .with_term(term)
}

/// What a reader of shard 0 from the start gets, until `count` events.
async fn read(source: &cluster::NatsSource, count: usize) -> (Vec<(u64, u64)>, Vec<u64>) {
    let mut events = source.events(0, 0, None);
    let (mut taken, mut fences) = (Vec::new(), Vec::new());
    while taken.len() < count {
        let followed = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("the log within 10 s")
            .expect("open");
        match followed {
            Followed::Event(event) => taken.push((event.index, event.term)),
            Followed::Fenced(term) => fences.push(term),
            Followed::Broken(why) => panic!("{why}"),
            _ => {}
        }
    }
    (taken, fences)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_fenced_off_owner_are_refused_by_every_reader() {
    let Some(nats) = cluster::testing::nats("fence") else {
        return;
    };
    let old = node(&nats, "fence", "old").await;
    let new = node(&nats, "fence", "new").await;
    let old_log = old.event_log(LogLimits::default()).await.unwrap();
    let new_log = new.event_log(LogLimits::default()).await.unwrap();
    // The old owner, term 3, publishes events 1 and 2.
    old_log.tapped(event(1, 3));
    old_log.tapped(event(2, 3));
    assert!(old_log.flush(Duration::from_secs(5)).await);
    // The new owner takes the lease at revision 7: its mark, then its
    // events from 3 on (it resumed where the log ended).
    new.source().fence(0, 7).await.unwrap();
    // The old owner, cut off, does not know yet: its events 3 and 4 land
    // after the mark.
    old_log.tapped(event(3, 3));
    old_log.tapped(event(4, 3));
    assert!(old_log.flush(Duration::from_secs(5)).await);
    new_log.tapped(event(3, 7));
    new_log.tapped(event(4, 7));
    new_log.tapped(event(5, 7));
    assert!(new_log.flush(Duration::from_secs(5)).await);
    // Both copies are in the stream (their ids name their terms: neither
    // is dropped as a repeat): 2 + the mark + 2 + 3.
    let jetstream = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut stream = jetstream.get_stream("fence-events").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 8);
    // A reader takes the old owner's before the mark, the mark, then the
    // new owner's alone.
    let reader = node(&nats, "fence", "reader").await;
    let (taken, fences) = read(&reader.source(), 5).await;
    assert_eq!(taken, [(1, 3), (2, 3), (3, 7), (4, 7), (5, 7)]);
    assert_eq!(fences, [7]);
}
