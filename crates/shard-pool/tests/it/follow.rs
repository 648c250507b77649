//! A pool following another's shard through a `Source`: its state and
//! numbering are the owner's, and a gap in what the source hands it is
//! never served: it starts again from the source, then from a checkpoint
//! that holds what is missing.
//!
//! The source here is a log in memory that the owner's tap writes to, as
//! the cluster's event log is on NATS (crates/cluster and the binary's
//! process tests run that one).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use shard_pool::{Command, CommandFuture, Error, Followed, Pool, ShardEvent, Source, Tap, Tapped};
use tokio::sync::mpsc;

use super::{Scratch, config, marker, ready, sim};

/// Every event the owner's tap gave, and one index it never hands out.
#[derive(Debug, Default)]
struct MemoryLog {
    events: Arc<Mutex<Vec<Tapped>>>,
    lost: Arc<Mutex<Option<u64>>>,
    reads: AtomicUsize,
}

impl Tap for MemoryLog {
    fn tapped(&self, event: Tapped) {
        self.events.lock().unwrap().push(event);
    }
}

impl Source for MemoryLog {
    fn events(
        &self,
        shard: u32,
        after: u64,
        _since: Option<SystemTime>,
    ) -> mpsc::Receiver<Followed> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(64);
        let (events, lost) = (self.events.clone(), self.lost.clone());
        tokio::spawn(async move {
            let mut next = 0;
            let mut caught_up = false;
            loop {
                let batch: Vec<Tapped> = {
                    let events = events.lock().unwrap();
                    let batch = events[next..].to_vec();
                    next = events.len();
                    batch
                };
                let lost = *lost.lock().unwrap();
                for event in batch {
                    let wanted = event.shard == shard && event.index > after;
                    if wanted
                        && Some(event.index) != lost
                        && tx.send(Followed::Event(event)).await.is_err()
                    {
                        return;
                    }
                }
                if !caught_up {
                    caught_up = true;
                    if tx.send(Followed::CaughtUp).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        rx
    }

    fn command(&self, shard: u32, _command: Command) -> CommandFuture {
        Box::pin(async move { Err(Error::remote(shard, "no owner in this test")) })
    }
}

/// `(index, marker)` of the next `count` marked dispatches.
async fn taken(events: &mut shard_pool::Follower, count: usize) -> Vec<(u64, (u64, u64))> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let event = tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .expect("an event within 20 s")
            .expect("no lag");
        let ShardEvent::Dispatch(dispatch) = event else {
            panic!("unexpected {event:?}");
        };
        if let Some(marker) = marker(&dispatch) {
            seen.push((dispatch.index(), marker));
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_shard_is_the_owners_and_a_gap_is_never_served() {
    let sim = sim(|config| config.shards = 2).await;
    let scratch = Scratch::new("follow");
    let log = Arc::new(MemoryLog::default());
    let node = |range: (u32, u32)| {
        let mut config = config(&sim);
        config.shard_start = range.0;
        config.shard_end = Some(range.1);
        config.store = Some(scratch.store());
        config.tap = Some(log.clone());
        config.source = Some(log.clone());
        config
    };
    let owner = Pool::start(node((0, 1))).await.unwrap();
    ready(&owner, 10).await;
    let other = Pool::start(node((1, 2))).await.unwrap();
    ready(&other, 10).await;
    assert!(owner.shard(2).is_none(), "past the total");

    // No checkpoint yet: followed from the owner's READY on.
    let followed = other.shard(0).unwrap();
    assert!(!followed.is_local());
    // Nothing goes upstream from here but through the owner.
    assert!(followed.send(r#"{"op":1,"d":null}"#.to_owned()).is_err());
    tokio::time::timeout(Duration::from_secs(10), followed.ready())
        .await
        .unwrap()
        .unwrap();
    let mut theirs = followed.subscribe();
    let mut ours = owner
        .shard(0)
        .unwrap()
        .subscribe_from(theirs.index())
        .unwrap()
        .0;
    let before = taken(&mut theirs, 10).await;
    assert_eq!(
        before,
        taken(&mut ours, 10).await,
        "the owner's indices and events"
    );

    // An event the log lost: the follower stops short of it, tries the log
    // again, then waits for a checkpoint that holds it.
    let lost = owner.shard(0).unwrap().head() + 5;
    *log.lost.lock().unwrap() = Some(lost);
    let reads = log.reads.load(Ordering::Relaxed);
    let mine = taken(&mut ours, 20).await;
    assert!(mine.iter().any(|(index, _)| *index > lost));
    assert!(
        followed.head() < lost,
        "nothing past the gap is taken: head {}",
        followed.head()
    );
    // Read again from where it stood (a second after the break): the gap
    // is still there, so it waits for a checkpoint.
    for _ in 0..500 {
        if log.reads.load(Ordering::Relaxed) > reads {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        log.reads.load(Ordering::Relaxed) > reads,
        "the log read again"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(followed.head() < lost, "still short of the gap");
    let written = owner.checkpoint().await;
    assert_eq!(written.written, 1);
    // The follower's client goes on as if nothing happened: the events it
    // had not read are in the checkpoint's ring.
    let after = taken(&mut theirs, 20).await;
    assert_eq!(after, mine, "every event, the lost one too, in order");
}
