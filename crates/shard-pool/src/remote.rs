//! Shards another process runs: their events, as that process's
//! [`Tap`](crate::Tap) gave them, fed through this process's own
//! [`Pipeline`](crate::Pipeline) (so its state and numbering are the
//! owner's), and their clients' commands, sent to the owner.
//!
//! A [`Source`] is the seam: the pool asks it for a shard's events after an
//! index and hands it commands; what carries them (the cluster's NATS
//! JetStream) is the source's business.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use state_cache::Flags;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::checkpoint::{self, Identity, Restored, wall_clock};
use crate::pipeline::Pipeline;
use crate::ring::{Ring, RingLimits};
use crate::shard::{ShardHandle, Unfed};
use crate::store::Store;
use crate::tap::Tapped;

/// What a source hands the follower of a shard, in order.
#[derive(Debug)]
#[non_exhaustive]
pub enum Followed {
    /// The shard's next event, as its owner's tap gave it.
    Event(Tapped),
    /// Every event published when the follow began has been given: the
    /// follower's state is the owner's as of then, and it may serve.
    CaughtUp,
    /// A new owner's term begins here (see [`Source::fence`]): every event
    /// of the owners before it has been given.
    Fenced(u64),
    /// The source cannot go on without leaving events out (the log lost
    /// them, or stopped for longer than it keeps them): the follower starts
    /// again from a newer checkpoint.
    Broken(String),
}

/// A client's command for a shard, with what its answers need to reach
/// that client: the same whether the shard runs here or elsewhere.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Command {
    /// The command's JSON as the client sent it (already validated).
    pub payload: String,
    /// The client session it came from.
    pub session: Arc<str>,
    /// How its answers are routed.
    pub route: Route,
}

impl Command {
    /// A command from client session `session`.
    #[must_use]
    pub fn new(payload: String, session: impl Into<Arc<str>>, route: Route) -> Self {
        Self {
            payload,
            session: session.into(),
            route,
        }
    }
}

/// What a command's answers need.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route {
    /// Nothing: presence updates, op 31, an op 8 without a nonce.
    Plain,
    /// An op 8 whose member chunks go to the asking session alone.
    Chunks {
        /// The request's nonce.
        nonce: String,
    },
    /// An op 4: the guild's voice has one owner (see
    /// [`Pipeline::voice_command`](crate::Pipeline::voice_command)).
    Voice {
        /// The guild.
        guild: u64,
        /// The channel joined; `None` for a leave.
        channel: Option<u64>,
    },
    /// Not a command to send: the client session ended for good, and the
    /// voice it owned on the shard is left (`leave`) or freed (see
    /// [`ShardHandle::voice_session_ended`](crate::ShardHandle::voice_session_ended)).
    Ended {
        /// Whether the bot leaves the channels.
        leave: bool,
    },
}

/// What became of a command.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Sent upstream (within the shard's limit: it may wait its turn).
    Sent,
    /// An op 4 not sent: another client session owns the guild's voice.
    Refused {
        /// The owner.
        owner: Arc<str>,
    },
    /// An op 4 that joins the channel the bot is already in: sent after a
    /// leave, for Discord to answer it.
    Rejoined,
    /// Not sent: the shard's upstream connection has stopped.
    Stopped,
    /// Not sent: over the shard's command budget at the node that runs it,
    /// which counts the clients of every node (the client is closed with
    /// 4008, as Discord would close it).
    OverBudget,
    /// A session's end, applied: the guilds whose voice it owned.
    Ended(Vec<u64>),
}

/// What [`Source::command`] returns.
pub type CommandFuture =
    Pin<Box<dyn Future<Output = Result<Outcome, crate::Error>> + Send + 'static>>;

/// Where a pool follows the shards it does not run (see
/// [`PoolConfig::source`](crate::PoolConfig::source)).
pub trait Source: fmt::Debug + Send + Sync + 'static {
    /// The events of shard `shard` after index `after`, in order, starting
    /// with the first one published at `since` or later (the events before
    /// are in the checkpoint `after` comes from; `None`: from the oldest
    /// held). The source runs its own task; it ends when the receiver is
    /// dropped.
    fn events(&self, shard: u32, after: u64, since: Option<SystemTime>)
    -> mpsc::Receiver<Followed>;

    /// Hands `command` to the process that runs shard `shard`, which
    /// applies it as its own clients' ([`ShardHandle::command`]), and
    /// returns what became of it.
    ///
    /// [`ShardHandle::command`]: crate::ShardHandle::command
    fn command(&self, shard: u32, command: Command) -> CommandFuture;

    /// Marks the start of term `term` in shard `shard`'s events (a node
    /// that took the shard's lease at revision `term` does, before it runs
    /// the shard): a follower hands [`Followed::Fenced`] where the mark is,
    /// after every event published before it, and refuses from then on any
    /// event of an older term (its owner lost the lease without knowing it
    /// yet). Resolves once the mark is stored.
    fn fence(&self, shard: u32, term: u64) -> FenceFuture;

    /// What the source knows of shard `shard` as it follows it: who runs
    /// it and how far behind its log the reading is. `None` (the default)
    /// when it knows nothing of it.
    fn following(&self, shard: u32) -> Option<FollowedStatus> {
        let _ = shard;
        None
    }
}

/// What a [`Source`] knows of a shard it follows ([`Source::following`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FollowedStatus {
    /// The process (a cluster's node) that runs the shard, as last seen.
    pub owner: Option<Arc<str>>,
    /// Events of the shard's log not read yet, as of the last one read.
    pub lag_events: Option<u64>,
    /// How long before it was read the last event read was published.
    pub lag: Option<Duration>,
}

/// What [`Source::fence`] returns.
pub type FenceFuture = Pin<Box<dyn Future<Output = Result<(), crate::Error>> + Send + 'static>>;

/// The other side of [`Source::command`]: what applies another process's
/// client's command to a shard this process runs, budgeted with this
/// process's own clients' (the proxy's; a cluster's command server calls
/// it).
pub trait CommandSink: fmt::Debug + Send + Sync + 'static {
    /// Applies `command` to shard `shard`.
    fn apply(&self, shard: u32, command: Command) -> CommandFuture;
}

/// What following a shard needs, shared by the followed shards of a pool.
#[derive(Debug)]
pub(crate) struct Following {
    pub(crate) source: Arc<dyn Source>,
    /// Where the owners' checkpoints are.
    pub(crate) store: Option<Arc<dyn Store>>,
    pub(crate) identity: Identity,
    pub(crate) flags: Flags,
    /// The oldest checkpoint a follower starts from.
    pub(crate) max_age: Duration,
    pub(crate) limits: RingLimits,
    /// See [`PoolConfig::takeover_wait`](crate::PoolConfig::takeover_wait).
    pub(crate) takeover_wait: Duration,
}

/// How much earlier than its checkpoint was written a follower asks the
/// log for events: the owner's clock and the log's may differ by this
/// much (events the checkpoint holds are passed over).
const CLOCK_MARGIN: Duration = Duration::from_mins(1);

/// How long a follower waits before starting again after a break.
const RETRY: Duration = Duration::from_secs(1);

/// Follows shard `shard`: its state from the owner's latest checkpoint,
/// then every event after it from the source, until the handle's pool
/// is dropped (the task is aborted). A break in the events (the source
/// lost some, or numbering differs) starts it again from a checkpoint
/// at least as new as the last event taken, so that what it serves never
/// has a gap; events of another upstream session with no READY before
/// them (the checkpoint was written by an owner fenced off meanwhile, and
/// the next one identified) from a checkpoint newer than the state.
pub(crate) async fn follow(shard: ShardHandle, following: Arc<Following>) {
    follow_from(shard, following, None).await;
}

/// [`follow`], with the state already at index `at.0` (a shard this
/// process ran until it handed it over): the log is read from there, from
/// events published at `at.1` (less the clocks' margin) on.
pub(crate) async fn follow_from(
    shard: ShardHandle,
    following: Arc<Following>,
    at: Option<(u64, SystemTime)>,
) {
    let id = shard.id();
    // The oldest checkpoint that will do: after a break, one that holds
    // what was taken so far (the log may not have it any more).
    let mut floor = at.map_or(0, |(head, _)| head.max(1));
    // After a break that followed some progress: where to ask the log
    // again, before falling back on a checkpoint.
    let mut again: Option<(u64, SystemTime)> = at.map(|(head, since)| {
        let since = since
            .checked_sub(CLOCK_MARGIN)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        (head, since)
    });
    loop {
        let started = match again.take() {
            Some((head, at)) => Some((head, Some(at))),
            None => start(&shard, &following, floor).await,
        };
        let Some((after, since)) = started else {
            tokio::time::sleep(RETRY).await;
            continue;
        };
        tracing::info!(shard = id, after, "following a shard another node runs");
        let mut events = following.source.events(id, after, since);
        let mut fed = false;
        let mut elsewhere = false;
        let broken = loop {
            match events.recv().await {
                Some(Followed::Event(event)) => {
                    let closed = event.closed.is_some();
                    match shard.feed(event) {
                        // Nothing follows a close for good.
                        Ok(()) if closed => return,
                        Ok(()) => fed = true,
                        Err(unfed) => {
                            elsewhere = matches!(unfed, Unfed::Elsewhere(_));
                            break unfed.to_string();
                        }
                    }
                }
                Some(Followed::CaughtUp) => shard.caught_up(),
                Some(Followed::Fenced(term)) => shard.fenced(term),
                Some(Followed::Broken(why)) => break why,
                None => break "the source stopped".to_owned(),
            }
        };
        floor = shard.head().max(1);
        if elsewhere {
            // Neither this state nor the checkpoint it came from will do:
            // a newer one, written by the owner that goes on with the log.
            floor += 1;
            fed = false;
        }
        if fed {
            let since = wall_clock()
                .checked_sub(CLOCK_MARGIN)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            again = Some((shard.head(), since));
        }
        tracing::warn!(
            shard = id,
            index = floor,
            "following broke ({broken}); starting again from {}",
            if fed { "the log" } else { "a checkpoint" }
        );
        tokio::time::sleep(RETRY).await;
    }
}

/// Rebuilds `shard` from its owner's latest checkpoint if it holds index
/// `floor` at least (or from nothing while `floor` is 0 and there is no
/// checkpoint yet: the log holds the owner's READY); returns where the
/// events from the log start, or `None` for nothing usable yet.
async fn start(
    shard: &ShardHandle,
    following: &Following,
    floor: u64,
) -> Option<(u64, Option<SystemTime>)> {
    let restored = match &following.store {
        Some(store) => load(store, following, shard.id()).await,
        None => None,
    };
    match restored {
        Some(restored) if restored.pipeline.index() >= floor => {
            let after = restored.pipeline.index();
            let ring = Ring::restored(following.limits.clone(), restored.ring, Instant::now());
            shard.rebuild(restored.pipeline, ring);
            let since = wall_clock()
                .checked_sub(restored.age + CLOCK_MARGIN)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            Some((after, Some(since)))
        }
        None if floor == 0 => {
            let ring = Ring::new(following.limits.clone());
            shard.rebuild(Pipeline::new(following.flags), ring);
            Some((0, None))
        }
        _ => None,
    }
}

/// Shard `id`'s checkpoint, if the store has a usable one.
async fn load(store: &Arc<dyn Store>, following: &Following, id: u32) -> Option<Restored> {
    let blob = match store.get(&checkpoint::shard_name(id)).await {
        Ok(blob) => blob?,
        Err(error) => {
            tracing::warn!(shard = id, %error, "checkpoint not read");
            return None;
        }
    };
    let identity = following.identity.clone();
    let (flags, max_age) = (following.flags, following.max_age);
    let read = tokio::task::spawn_blocking(move || {
        checkpoint::restore(&blob, &identity, id, flags, max_age, wall_clock())
    })
    .await;
    match read {
        Ok(Ok(restored)) => Some(restored),
        Ok(Err(refused)) => {
            tracing::warn!(shard = id, "checkpoint not used: {refused}");
            None
        }
        Err(error) => {
            tracing::warn!(shard = id, %error, "checkpoint not read");
            None
        }
    }
}
