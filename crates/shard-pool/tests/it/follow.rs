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

use discord_sim::Sim;
use shard_pool::{
    Command, CommandFuture, Error, FenceFuture, Followed, Pool, PoolConfig, ShardEvent, Source,
    Tap, Tapped,
};
use tokio::sync::mpsc;

use super::{Scratch, config, marker, ready, sim};

/// Every event the owners' taps gave and every term's mark, and one
/// index it never hands out.
#[derive(Debug, Default)]
struct MemoryLog {
    events: Arc<Mutex<Vec<Logged>>>,
    lost: Arc<Mutex<Option<u64>>>,
    reads: AtomicUsize,
}

#[derive(Clone, Debug)]
enum Logged {
    Event(Tapped),
    Fence(u32, u64),
}

impl Tap for MemoryLog {
    fn tapped(&self, event: Tapped) {
        self.events.lock().unwrap().push(Logged::Event(event));
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
            let mut term = 0;
            loop {
                let batch: Vec<Logged> = {
                    let events = events.lock().unwrap();
                    let batch = events[next..].to_vec();
                    next = events.len();
                    batch
                };
                let lost = *lost.lock().unwrap();
                for logged in batch {
                    let event = match logged {
                        Logged::Fence(of, fence) if of == shard => {
                            term = fence;
                            if tx.send(Followed::Fenced(fence)).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        Logged::Event(event) if event.term >= term => event,
                        _ => continue,
                    };
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

    fn fence(&self, shard: u32, term: u64) -> FenceFuture {
        self.events.lock().unwrap().push(Logged::Fence(shard, term));
        Box::pin(async { Ok(()) })
    }
}

/// A pool on `sim` running shards `range.0..range.1`, its checkpoints in
/// `scratch`, publishing to `log` and following the others from it.
fn node(sim: &Sim, scratch: &Scratch, log: &Arc<MemoryLog>, range: (u32, u32)) -> PoolConfig {
    let mut config = config(sim);
    config.shard_start = range.0;
    config.shard_end = Some(range.1);
    config.store = Some(scratch.store());
    config.tap = Some(log.clone());
    config.source = Some(log.clone());
    config
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
    let node = |range| node(&sim, &scratch, &log, range);
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

/// A pool that runs shard 0, and one that runs nothing but follows it,
/// with a client that has read 5 of its marked dispatches.
struct Watched {
    owner: Pool,
    other: Pool,
    followed: shard_pool::ShardHandle,
    client: shard_pool::Follower,
    before: Vec<(u64, (u64, u64))>,
}

async fn watched(owner: PoolConfig, other: PoolConfig) -> Watched {
    let owner = Pool::start(owner).await.unwrap();
    ready(&owner, 10).await;
    let other = Pool::start(other).await.unwrap();
    let followed = other.shard(0).unwrap();
    tokio::time::timeout(Duration::from_secs(10), followed.ready())
        .await
        .unwrap()
        .unwrap();
    let mut client = followed.subscribe();
    let before = taken(&mut client, 5).await;
    Watched {
        owner,
        other,
        followed,
        client,
        before,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_taken_over_resumes_where_its_log_ends_and_its_clients_read_on() {
    let sim = sim(|config| config.shards = 2).await;
    let scratch = Scratch::new("takeover");
    let log = Arc::new(MemoryLog::default());
    let node = |range| node(&sim, &scratch, &log, range);
    let Watched {
        owner,
        other,
        followed: _,
        mut client,
        before,
    } = watched(node((0, 1)), node((1, 1))).await;

    // The owner dies without a word (its task aborted, its connection
    // dropped): Discord keeps the session. Some events it took in are in
    // the log, and the ones after are Discord's to replay.
    let identifies = sim.identifies();
    drop(owner);
    let taken_over = other.run(0, 7).await.unwrap();
    assert!(taken_over.is_local());
    assert_eq!(taken_over.term(), 7);
    assert_eq!(other.local(0).map(|s| s.id()), Some(0));
    assert!(other.followed().is_empty(), "no longer followed");
    tokio::time::timeout(Duration::from_secs(10), taken_over.ready())
        .await
        .unwrap()
        .unwrap();
    // The client read on: every marker after the ones before, once and in
    // order, numbered on from where they were.
    let after = taken(&mut client, 20).await;
    let mut all = before.clone();
    all.extend(&after);
    for pair in all.windows(2) {
        assert!(pair[1].0 > pair[0].0, "indices go up: {all:?}");
        assert_eq!(pair[1].1.1, pair[0].1.1 + 1, "markers one by one: {all:?}");
    }
    assert_eq!(sim.identifies(), identifies, "resumed, not identified");
    assert!(sim.resumes() >= 1);
    // What it takes in now goes to the log in its term.
    let last = log
        .events
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find_map(|l| match l {
            Logged::Event(event) if event.shard == 0 => Some(event.term),
            _ => None,
        });
    assert_eq!(last, Some(7));
    // Asking again is a no-op.
    assert_eq!(other.run(0, 9).await.unwrap().term(), 7);

    // A clean hand-over to a third process: the shard stops here at one
    // index, the next owner resumes it from there, and the client here
    // reads on as a follower's.
    let third = Pool::start(node((1, 1))).await.unwrap();
    let stopped = other.hand_over(0).await.expect("run here");
    assert!(!taken_over.is_local(), "followed again");
    assert!(other.local(0).is_none());
    assert_eq!(other.followed().len(), 1);
    let next = third.run(0, 9).await.unwrap();
    assert!(
        next.head() >= stopped,
        "the next owner starts where it stopped"
    );
    let later = taken(&mut client, 20).await;
    let mut all = after.clone();
    all.extend(&later);
    for pair in all.windows(2) {
        assert!(pair[1].0 > pair[0].0, "indices go up: {all:?}");
        assert_eq!(pair[1].1.1, pair[0].1.1 + 1, "markers one by one: {all:?}");
    }
    assert_eq!(
        sim.identifies(),
        identifies,
        "resumed again, not identified"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_whose_log_has_a_gap_no_checkpoint_fills_is_taken_over_from_before_it() {
    let sim = sim(|config| config.shards = 2).await;
    let scratch = Scratch::new("takeover-gap");
    let log = Arc::new(MemoryLog::default());
    let node = |range| {
        let mut config = node(&sim, &scratch, &log, range);
        config.takeover_wait = Duration::from_secs(1);
        config
    };
    let Watched {
        owner,
        other,
        followed,
        mut client,
        before,
    } = watched(node((0, 1)), node((1, 1))).await;

    // The log loses an event, and the owner dies before any checkpoint
    // holds it: the follower can never read up to the new term's mark.
    let theirs = owner.shard(0).unwrap();
    let lost = theirs.head() + 3;
    *log.lost.lock().unwrap() = Some(lost);
    let mut ours = theirs.subscribe();
    while taken(&mut ours, 1).await[0].0 <= lost + 5 {}
    assert!(followed.head() < lost, "stopped short of the gap");
    let identifies = sim.identifies();
    drop((ours, theirs, owner));

    // Taken over all the same, from before the gap: Discord replays what
    // came after, the lost event too, numbered as the owner numbered it.
    let taken_over = other.run(0, 7).await.unwrap();
    assert!(taken_over.is_local());
    tokio::time::timeout(Duration::from_secs(10), taken_over.ready())
        .await
        .unwrap()
        .unwrap();
    let after = taken(&mut client, 20).await;
    let mut all = before.clone();
    all.extend(&after);
    for pair in all.windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 1, "indices one by one: {all:?}");
        assert_eq!(pair[1].1.1, pair[0].1.1 + 1, "markers one by one: {all:?}");
    }
    assert!(all.iter().any(|(index, _)| *index == lost), "{all:?}");
    assert_eq!(sim.identifies(), identifies, "resumed, not identified");
}

/// Waits up to 20 s for `shard`'s head to pass `index`.
async fn passes(shard: &shard_pool::ShardHandle, index: u64) {
    for _ in 0..2000 {
        if shard.head() > index {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("head {} not past {index} within 20 s", shard.head());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_off_the_logs_history_is_passed_over_for_a_newer_one() {
    // A checkpoint of one upstream session, as an owner fenced off
    // meanwhile would leave it ...
    let fenced_off = sim(|config| config.shards = 1).await;
    let scratch = Scratch::new("elsewhere");
    let mut stale = config(&fenced_off);
    stale.store = Some(scratch.store());
    let stale = Pool::start(stale).await.unwrap();
    ready(&stale, 10).await;
    passes(&stale.shard(0).unwrap(), 20).await;
    assert_eq!(stale.checkpoint().await.written, 1);
    let stale_index = stale.shard(0).unwrap().head();
    drop(stale);
    // ... and a log that goes on in another session: the next owner's,
    // which identified (its READY numbered before the checkpoint's index).
    // (Another seed: the sim's session ids come from it.)
    let sim = sim(|config| {
        config.shards = 1;
        config.seed = 2;
    })
    .await;
    let log = Arc::new(MemoryLog::default());
    let own = Scratch::new("elsewhere-owner");
    let owner = Pool::start(node(&sim, &own, &log, (0, 1))).await.unwrap();
    ready(&owner, 10).await;
    let theirs = owner.shard(0).unwrap();
    passes(&theirs, stale_index + 20).await;
    let session = theirs.upstream_session();
    assert!(session.is_some());

    let other = Pool::start(node(&sim, &scratch, &log, (0, 0)))
        .await
        .unwrap();
    let followed = other.shard(0).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_ne!(
        followed.upstream_session(),
        session,
        "no checkpoint of the owner's yet"
    );
    // The owner's checkpoint, newer than the stale one, lands where the
    // follower looks: it starts from it, in the owner's session, and
    // numbers every event as the owner does.
    assert_eq!(owner.checkpoint().await.written, 1);
    let blob = own.store().get("shard-0").await.unwrap().unwrap();
    scratch.store().put("shard-0", blob).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), followed.ready())
        .await
        .unwrap()
        .unwrap();
    for _ in 0..500 {
        if followed.upstream_session() == session {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(followed.upstream_session(), session);
    let mut client = followed.subscribe();
    let mut ours = theirs.subscribe_from(client.index()).unwrap().0;
    assert_eq!(taken(&mut client, 10).await, taken(&mut ours, 10).await);
}
