//! One shard: its task, which polls twilight's shard and runs each payload
//! through the pipeline, and the handle the rest of the proxy uses.

use std::collections::BTreeMap;
use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_core::Stream;
use state_cache::{Cache, Stats};
use tokio::sync::{Semaphore, SemaphorePermit, watch};
use tokio::time::Instant;
use twilight_gateway::error::ReceiveMessageErrorType;
use twilight_gateway::{Message, MessageSender, Shard};

use crate::checkpoint::Taken;
use crate::error::{Error, ErrorKind};
use crate::follow::Follower;
use crate::pipeline::Dispatch;
use crate::pipeline::{Pipeline, ShardEvent, VoiceCommand, VoicePhase};
use crate::queue::SharedQueue;
use crate::remote::{Command, Followed, Outcome, Route, Source};
use crate::ring::{self, Ring, RingStats};
use crate::tap::{Tap, Tapped};

/// Where a shard's upstream connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShardState {
    /// Not connected yet.
    Connecting,
    /// Connected, waiting for its identify turn or for READY.
    Identifying,
    /// Reconnected, waiting for RESUMED.
    Resuming,
    /// Identified and receiving events.
    Active,
    /// Lost its connection; reconnecting.
    Disconnected {
        /// Attempts so far.
        reconnect_attempts: u8,
    },
    /// Closed by Discord with a code that forbids reconnecting (4004,
    /// 4010–4014); the shard has stopped.
    FatallyClosed,
    /// Run by another process: followed from its event log.
    Following,
}

impl ShardState {
    /// The state's name, in lower case, for metrics and `/ready`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Identifying => "identifying",
            Self::Resuming => "resuming",
            Self::Active => "active",
            Self::Disconnected { .. } => "disconnected",
            Self::FatallyClosed => "fatally_closed",
            Self::Following => "following",
        }
    }
}

impl From<twilight_gateway::ShardState> for ShardState {
    fn from(state: twilight_gateway::ShardState) -> Self {
        use twilight_gateway::ShardState as S;
        match state {
            S::Active => Self::Active,
            S::Disconnected { reconnect_attempts } => Self::Disconnected { reconnect_attempts },
            S::FatallyClosed => Self::FatallyClosed,
            S::Identifying => Self::Identifying,
            S::Resuming => Self::Resuming,
        }
    }
}

/// A shard's status, for metrics and `/ready`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ShardStatus {
    /// The shard id.
    pub id: u32,
    /// Its connection.
    pub state: ShardState,
    /// Whether clients can be served: active, and every guild READY named
    /// has arrived (or the load timeout passed).
    pub ready: bool,
    /// The latest heartbeat round trip.
    pub latency: Option<Duration>,
    /// The close code of the last upstream close, if any.
    pub close_code: Option<u16>,
    /// The index of the last event handed on.
    pub index: u64,
    /// Dispatches received, by name.
    pub events: BTreeMap<Box<str>, u64>,
    /// Dispatches repeated by a resume, dropped.
    pub duplicates: u64,
    /// Payloads that were not gateway payloads, dropped.
    pub malformed: u64,
    /// Dispatches the state cache could not apply.
    pub cache_errors: u64,
    /// What the state cache holds.
    pub cache: Stats,
    /// What the shard's ring holds.
    pub ring: RingStats,
    /// Guilds READY named that have not arrived yet.
    pub pending_guilds: usize,
    /// Whether the upstream session was carried over from a checkpoint
    /// (resumed after a restart) rather than identified by this process.
    pub restored: bool,
    /// The shard's last checkpoint written, if any.
    pub checkpoint: Option<CheckpointStats>,
}

/// What writing a shard's checkpoint took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckpointStats {
    /// When it was written (the time in it).
    pub written: SystemTime,
    /// How long the shard's events waited for it: the copy of its state
    /// under its locks.
    pub held: Duration,
    /// How long taking, encoding and storing it took in all.
    pub took: Duration,
    /// Its size.
    pub bytes: usize,
}

/// What the shard task last saw of twilight's shard.
#[derive(Debug)]
struct Sampled {
    state: ShardState,
    latency: Option<Duration>,
    close_code: Option<u16>,
    /// When the current session's READY came.
    ready_at: Option<Instant>,
}

/// Whether a shard can serve clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Readiness {
    /// Connecting, identifying, or loading its guilds.
    Loading,
    /// Active, and every guild READY named has arrived (or the load
    /// timeout passed).
    Ready,
    /// Closed by Discord with this code, for good.
    Fatal(u16),
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) id: u32,
    core: Mutex<Pipeline>,
    /// Taken after `core` when both are: the shard task pushes under both,
    /// followers read under this one alone.
    pub(crate) ring: Mutex<Ring>,
    /// Changes when an event is pushed: followers wake.
    pub(crate) news: watch::Sender<()>,
    sampled: Mutex<Sampled>,
    ready: watch::Sender<Readiness>,
    /// Run here or followed: a followed shard this process takes over is
    /// run here from then on ([`ShardHandle::promote`]).
    link: RwLock<Link>,
    /// The term this process runs the shard in (its lease's revision in a
    /// cluster; 0 without one): its tap's copies carry it.
    term: AtomicU64,
    /// The last term whose start a follower of the shard has read (see
    /// [`Followed::Fenced`]), and the index the state was at there.
    fence: watch::Sender<(u64, u64)>,
    /// The highest index a follower of the shard read from its log, fed or
    /// not: a process that takes the shard over with no state to resume
    /// numbers on from it.
    log_seen: AtomicU64,
    /// A follower of the shard has read every event its log had when it
    /// began: it serves once the state holds a READY.
    caught: AtomicBool,
    load_timeout: Duration,
    /// The intents the shard identifies with, for the message of a fatal
    /// close.
    intents: u64,
    /// Set by [`ShardHandle::close`]: the next close ends the task.
    closing: AtomicBool,
    /// How many times the shard was handed over or taken over: a task
    /// whose upstream connection belongs to an earlier one ends.
    runs: AtomicU64,
    /// The index of the last event handed on, readable without a lock.
    pub(crate) head: AtomicU64,
    /// Whether Discord closed the shard for good (the ring's last event).
    pub(crate) closed: AtomicBool,
    /// The ring's floor (every dispatch after it is held), and whether the
    /// ring has dropped dispatches for room or age since its last reset.
    ring_floor: AtomicU64,
    ring_dropping: AtomicBool,
    /// Set by [`ShardHandle::freeze`]: upstream payloads are dropped, so
    /// the state stays where a checkpoint takes it.
    frozen: AtomicBool,
    /// The upstream session came from a checkpoint, and no READY since.
    restored: AtomicBool,
    /// The last checkpoint written.
    checkpointed: Mutex<Option<CheckpointStats>>,
    /// Gets a copy of every event; taken under `core`.
    tap: OnceLock<Tapping>,
    /// Where the shard's events are kept beyond its ring (a cluster's
    /// event log), for a client that resumes from further back.
    log: OnceLock<Arc<dyn Source>>,
}

/// Where a shard's commands go.
#[derive(Clone, Debug)]
pub(crate) enum Link {
    /// This process runs the shard: twilight's sender, within the shard's
    /// limit.
    Upstream(MessageSender),
    /// Another process does: its clients' commands go there.
    Remote(Arc<dyn Source>),
}

/// A shard's tap, and the upstream session its copies name (kept here so
/// that a copy costs no allocation).
#[derive(Debug)]
struct Tapping {
    tap: Arc<dyn Tap>,
    session: Mutex<Option<Arc<str>>>,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The first bytes of a payload, at most 40, cut at a character boundary:
/// enough to tell what it was, never a whole payload in a log.
fn prefix(text: &str) -> &str {
    &text[..text.floor_char_boundary(40)]
}

/// Why [`ShardHandle::feed`] did not take a followed shard's event.
#[derive(Debug)]
pub(crate) enum Unfed {
    /// The events between the state and this one are missing, or the
    /// pipeline numbered it otherwise: rebuilt from a checkpoint that
    /// holds them.
    Gap(String),
    /// The event goes on from another upstream session than the state's
    /// with no READY between: the state came from a checkpoint that is not
    /// of the log's history (written by an owner that was fenced off, the
    /// next one having identified), so only a newer checkpoint will do.
    Elsewhere(String),
}

impl fmt::Display for Unfed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Gap(why) | Self::Elsewhere(why) => f.write_str(why),
        }
    }
}

/// The op 4 that takes the bot out of `guild`'s voice channel.
fn leave_op4(guild: u64) -> String {
    format!(
        r#"{{"op":4,"d":{{"guild_id":"{guild}","channel_id":null,"self_mute":false,"self_deaf":false}}}}"#
    )
}

/// The events a resume reads from the event log, after index `after`.
struct LogRead {
    after: u64,
    taken: Vec<ShardEvent>,
    bytes: usize,
}

impl LogRead {
    /// Reads on up to index `to`: `false` at a gap, a new upstream session
    /// or a close for good among them, a broken log, or over the bounds.
    async fn until(&mut self, events: &mut tokio::sync::mpsc::Receiver<Followed>, to: u64) -> bool {
        while self.after + (self.taken.len() as u64) < to {
            let Some(followed) = events.recv().await else {
                return false;
            };
            let event = match followed {
                Followed::Event(event) => event,
                // What the owner has not published yet may still come.
                Followed::CaughtUp | Followed::Fenced(_) => continue,
                _ => return false,
            };
            let next = self.after + self.taken.len() as u64 + 1;
            if event.index < next {
                continue;
            }
            if event.index != next || event.ready || event.closed.is_some() {
                return false;
            }
            self.bytes += event.payload.len();
            if self.bytes > MAX_LOG_REPLAY_BYTES || self.taken.len() as u64 >= MAX_LOG_REPLAY {
                return false;
            }
            let Some(dispatch) = Dispatch::stamped(event.index, event.payload, event.audience)
            else {
                return false;
            };
            self.taken.push(ShardEvent::Dispatch(dispatch));
        }
        true
    }
}

/// The most events a resume reads from the event log (beyond the ring).
pub const MAX_LOG_REPLAY: u64 = 100_000;

/// The most payload bytes a resume reads from the event log.
const MAX_LOG_REPLAY_BYTES: usize = 64 << 20;

/// How long a resume may take to read them.
const LOG_REPLAY_WAIT: Duration = Duration::from_secs(10);

/// Dispatches to pack into a block, and the packer that may.
type Packing = ((Vec<crate::Dispatch>, Instant), SemaphorePermit<'static>);

/// A payload as shared bytes that hold no more than its length: the ring
/// keeps it, and its budget counts lengths.
fn exact(mut text: String) -> Bytes {
    text.shrink_to_fit();
    Bytes::from(text)
}

/// A state snapshot and the events after it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Snapshot<T> {
    /// What the snapshot function made of the state.
    pub value: T,
    /// The index of the last event the state includes.
    pub index: u64,
    /// Every event after `index`.
    pub events: Follower,
}

/// One of the process's packers, if one is free: as many blocks are packed
/// at once as there are cores, so that a burst over a thousand shards holds
/// that many blocking threads (and zstd contexts), not a thousand.
fn packer() -> Option<SemaphorePermit<'static>> {
    static PACKERS: OnceLock<Semaphore> = OnceLock::new();
    PACKERS
        .get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            Semaphore::new(cores)
        })
        .try_acquire()
        .ok()
}

/// A shard of the pool: its events, its state, its status, its commands.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct ShardHandle {
    shared: Arc<Shared>,
}

impl ShardHandle {
    /// A handle for shard `id`, which starts from `core` and `ring`: new,
    /// or `restored` from a checkpoint.
    pub(crate) fn new(
        id: u32,
        core: Pipeline,
        ring: Ring,
        link: Link,
        intents: u64,
        load_timeout: Duration,
        restored: bool,
    ) -> Self {
        let (floor, head) = ring.window();
        Self {
            shared: Arc::new(Shared {
                id,
                core: Mutex::new(core),
                ring: Mutex::new(ring),
                news: watch::Sender::new(()),
                sampled: Mutex::new(Sampled {
                    state: ShardState::Connecting,
                    latency: None,
                    close_code: None,
                    // A restored session is as good as one whose READY came
                    // now: RESUMED makes it active.
                    ready_at: restored.then(Instant::now),
                }),
                ready: watch::Sender::new(Readiness::Loading),
                link: RwLock::new(link),
                term: AtomicU64::new(0),
                fence: watch::Sender::new((0, 0)),
                log_seen: AtomicU64::new(0),
                caught: AtomicBool::new(false),
                load_timeout,
                intents,
                closing: AtomicBool::new(false),
                runs: AtomicU64::new(0),
                head: AtomicU64::new(head),
                closed: AtomicBool::new(false),
                ring_floor: AtomicU64::new(floor),
                ring_dropping: AtomicBool::new(false),
                frozen: AtomicBool::new(false),
                restored: AtomicBool::new(restored),
                checkpointed: Mutex::new(None),
                tap: OnceLock::new(),
                log: OnceLock::new(),
            }),
        }
    }

    /// A handle for shard `id`, which another process runs: it serves
    /// once [`remote::follow`](crate::remote::follow) has brought its
    /// state up to the owner's.
    pub(crate) fn followed(
        id: u32,
        source: Arc<dyn Source>,
        flags: state_cache::Flags,
        ring: Ring,
        intents: u64,
        load_timeout: Duration,
    ) -> Self {
        let handle = Self::new(
            id,
            Pipeline::new(flags),
            ring,
            Link::Remote(source),
            intents,
            // Once run here (taken over), as any shard run here.
            load_timeout,
            false,
        );
        lock(&handle.shared.sampled).state = ShardState::Following;
        handle
    }

    /// Reads events the ring no longer holds from `log`, if any (once);
    /// see [`subscribe_from_log`](Self::subscribe_from_log).
    pub(crate) fn log_in(&self, log: Option<Arc<dyn Source>>) {
        if let Some(log) = log {
            let _ = self.shared.log.set(log);
        }
    }

    /// Hands a copy of every event from now on to `tap`, if any (once; a
    /// second tap is ignored).
    pub(crate) fn tap_into(&self, tap: Option<Arc<dyn Tap>>) {
        if let Some(tap) = tap {
            let session = Mutex::new(None);
            let _ = self.shared.tap.set(Tapping { tap, session });
        }
    }

    /// Gives `tap` its copy of `event` (under the core lock).
    fn tap(&self, core: &Pipeline, event: &ShardEvent, ready: Option<&Bytes>) {
        let Some(Tapping { tap, session }) = self.shared.tap.get() else {
            return;
        };
        let Some((upstream, _)) = core.upstream() else {
            return;
        };
        let mut cached = lock(session);
        let session = match &*cached {
            Some(id) if **id == *upstream.session_id => id.clone(),
            _ => cached
                .insert(Arc::from(upstream.session_id.as_str()))
                .clone(),
        };
        drop(cached);
        let (payload, audience, seq) = match (event, ready) {
            (ShardEvent::Dispatch(dispatch), _) => (
                dispatch.payload().clone(),
                dispatch.audience().clone(),
                dispatch.scan().seq(),
            ),
            (ShardEvent::Reset { .. }, Some(ready)) => (
                ready.clone(),
                crate::Audience::Everyone,
                seqpatch::scan(ready).ok().and_then(|scan| scan.seq()),
            ),
            _ => return,
        };
        let term = self.shared.term.load(Ordering::Relaxed);
        tap.tapped(
            Tapped::new(
                self.shared.id,
                event.index(),
                seq,
                session,
                payload,
                audience,
                ready.is_some(),
            )
            .with_term(term),
        );
    }

    /// Gives the tap, if any, the shard's close for good (under the core
    /// lock).
    fn tap_closed(&self, pipeline: &Pipeline, index: u64, code: u16) {
        let Some(Tapping { tap, .. }) = self.shared.tap.get() else {
            return;
        };
        let Some((upstream, _)) = pipeline.upstream() else {
            return;
        };
        let session = Arc::from(upstream.session_id.as_str());
        let term = self.shared.term.load(Ordering::Relaxed);
        tap.tapped(Tapped::closed(self.shared.id, index, session, code).with_term(term));
    }

    /// The shard id.
    #[must_use]
    pub fn id(&self) -> u32 {
        self.shared.id
    }

    /// Runs `f` on the shard's state and follows the events after it,
    /// atomically: events are applied and pushed to the ring under the same
    /// lock, so the follower starts exactly after the state `f` saw.
    pub fn snapshot<T>(&self, f: impl FnOnce(&Cache) -> T) -> Snapshot<T> {
        let core = lock(&self.shared.core);
        lock(&self.shared.ring).serve();
        let value = f(&core.cache);
        Snapshot {
            value,
            index: core.index,
            events: Follower::new(self.shared.clone(), core.index),
        }
    }

    /// A follower from `index` on, if the ring still holds every event
    /// after it (for a client that resumes), and the index of the newest
    /// event now (what the client missed ends there).
    #[must_use]
    pub fn subscribe_from(&self, index: u64) -> Option<(Follower, u64)> {
        let mut ring = lock(&self.shared.ring);
        let (floor, head) = ring.window();
        if index > head || index < floor {
            return None;
        }
        ring.serve();
        Some((Follower::new(self.shared.clone(), index), head))
    }

    /// [`subscribe_from`](Self::subscribe_from), reaching further back
    /// than the ring: the events from `index` to the ring's floor are read
    /// from the shard's event log (a cluster's: [`PoolConfig::source`]),
    /// from those published at `since` or later (when the client's
    /// connection dropped, a little earlier for the clocks), at most
    /// [`MAX_LOG_REPLAY`] events and 64 MiB, and handed out before the
    /// ring's. `None` without a log, when the log does not hold every one
    /// of them, or when a new upstream session began among them (the
    /// client's state cannot be brought up to date).
    ///
    /// [`PoolConfig::source`]: crate::PoolConfig::source
    pub async fn subscribe_from_log(
        &self,
        index: u64,
        since: SystemTime,
    ) -> Option<(Follower, u64)> {
        // A follower may be a little behind its owner, whose client saw
        // more: it catches up first.
        if !self.is_local() && index > self.head() {
            let mut news = self.shared.news.subscribe();
            let caught_up = async {
                while self.head() < index {
                    if news.changed().await.is_err() {
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout(LOG_REPLAY_WAIT, caught_up).await;
        }
        if let Some(found) = self.subscribe_from(index) {
            return Some(found);
        }
        let log = self.shared.log.get()?;
        let (floor, _) = lock(&self.shared.ring).window();
        if index >= floor || floor - index > MAX_LOG_REPLAY {
            return None;
        }
        let mut events = log.events(self.id(), index, Some(since));
        let mut read = LogRead {
            after: index,
            taken: Vec::new(),
            bytes: 0,
        };
        let deadline = Instant::now() + LOG_REPLAY_WAIT;
        let mut to = floor;
        loop {
            let whole = tokio::time::timeout_at(deadline, read.until(&mut events, to)).await;
            if whole != Ok(true) {
                tracing::info!(
                    shard = self.id(),
                    index,
                    floor = to,
                    "a resume reached past the ring, and the log did not have it all"
                );
                return None;
            }
            let mut ring = lock(&self.shared.ring);
            let (now_floor, head) = ring.window();
            if now_floor <= to {
                ring.serve();
                drop(ring);
                tracing::info!(
                    shard = self.id(),
                    events = read.taken.len(),
                    bytes = read.bytes,
                    "a resume reached past the ring: read from the event log"
                );
                let follower = Follower::with_read(self.shared.clone(), to, read.taken);
                return Some((follower, head));
            }
            // The ring moved on meanwhile: read on from the log.
            to = now_floor;
        }
    }

    /// Whether events the ring no longer holds can be read from an event
    /// log ([`subscribe_from_log`](Self::subscribe_from_log)): then a client
    /// near the ring's floor need not be closed early, since its resume
    /// finds what it missed in the log.
    #[must_use]
    pub fn has_log(&self) -> bool {
        self.shared.log.get().is_some()
    }

    /// A follower of the events after the current one.
    #[must_use]
    pub fn subscribe(&self) -> Follower {
        let core = lock(&self.shared.core);
        lock(&self.shared.ring).serve();
        Follower::new(self.shared.clone(), core.index)
    }

    /// Whether clients can be served now; see [`ShardStatus::ready`].
    #[must_use]
    pub fn is_ready(&self) -> bool {
        *self.shared.ready.borrow() == Readiness::Ready
    }

    /// Waits until clients can be served; see [`ShardStatus::ready`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::FatallyClosed`] when Discord closed the shard for good
    /// (4004, 4010–4014): it will never be ready. The error says what to
    /// change.
    pub async fn ready(&self) -> Result<(), Error> {
        let mut ready = self.shared.ready.subscribe();
        // The sender lives as long as `self`, so this ends only when ready
        // or closed for good.
        let state = ready
            .wait_for(|ready| *ready != Readiness::Loading)
            .await
            .map(|state| *state);
        match state {
            Ok(Readiness::Fatal(code)) => Err(self.fatal_error(code)),
            _ => Ok(()),
        }
    }

    /// The close code Discord stopped this shard with for good (4004,
    /// 4010–4014), if it did.
    #[must_use]
    pub fn fatal_close(&self) -> Option<u16> {
        match *self.shared.ready.borrow() {
            Readiness::Fatal(code) => Some(code),
            _ => None,
        }
    }

    /// The error that says why the shard stopped and what to change.
    #[must_use]
    pub fn fatal_error(&self, code: u16) -> Error {
        Error::new(ErrorKind::FatallyClosed {
            shard: self.shared.id,
            code,
            intents: self.shared.intents,
        })
    }

    /// Whether a follower whose last event is `index` has fallen too far
    /// behind to keep being served live: more than `max_lag` events behind
    /// the newest, or, once the ring drops dispatches for room or age, more
    /// than half of what it holds. What it missed is then still in the
    /// ring, and the rest is the headroom for what a client has not read
    /// although it was written (socket buffers) and for its reconnect, so a
    /// client closed for this can resume.
    #[must_use]
    pub fn behind(&self, index: u64, max_lag: u64) -> bool {
        let head = self.shared.head.load(Ordering::Acquire);
        let lag = head.saturating_sub(index);
        if lag > max_lag {
            return true;
        }
        if !self.shared.ring_dropping.load(Ordering::Acquire) {
            return false;
        }
        let floor = self.shared.ring_floor.load(Ordering::Acquire);
        lag > head.saturating_sub(floor) / 2
    }

    /// The index of the last event handed on.
    #[must_use]
    pub fn head(&self) -> u64 {
        self.shared.head.load(Ordering::Acquire)
    }

    /// Sends a command (raw JSON) upstream, byte for byte, within the
    /// shard's 120-per-60-s limit: commands over it wait, none is dropped.
    ///
    /// # Errors
    ///
    /// If the shard's task has stopped, or another process runs the shard
    /// (its commands go through [`command`](Self::command), answered and
    /// budgeted there).
    pub fn send(&self, json: String) -> Result<(), Error> {
        match &*self.link() {
            Link::Upstream(sender) => sender
                .send(json)
                .map_err(|_| Error::new(ErrorKind::Closed(self.shared.id))),
            Link::Remote(_) => Err(Error::remote(
                self.id(),
                "run by another process: send through ShardHandle::command",
            )),
        }
    }

    /// Whether this process runs the shard (rather than following another
    /// process's).
    #[must_use]
    pub fn is_local(&self) -> bool {
        matches!(*self.link(), Link::Upstream(_))
    }

    fn link(&self) -> std::sync::RwLockReadGuard<'_, Link> {
        self.shared
            .link
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies a client's command, here or, for a shard another process
    /// runs, there (see [`Source::command`]): its answers are routed as
    /// [`Command::route`] says, an op 4 is decided by the guild's voice
    /// owner ([`Pipeline::voice_command`]; `attached` is asked whether the
    /// owner is connected), and what is to be sent goes upstream within
    /// the shard's limit.
    ///
    /// # Errors
    ///
    /// When the shard's owner could not be reached.
    pub async fn command(
        &self,
        command: Command,
        attached: impl FnOnce(&str) -> bool + Send,
    ) -> Result<Outcome, Error> {
        let link = self.link().clone();
        match link {
            Link::Remote(source) => source.command(self.id(), command).await,
            Link::Upstream(_) => Ok(self.apply(command, attached)),
        }
    }

    /// [`command`](Self::command) on a shard this process runs.
    fn apply(&self, command: Command, attached: impl FnOnce(&str) -> bool) -> Outcome {
        let mut rejoined = false;
        match command.route {
            Route::Plain => {}
            Route::Chunks { nonce } => self.route_chunks(&nonce, &command.session),
            Route::Voice { guild, channel } => {
                match self.voice_command(guild, &command.session, channel, attached) {
                    VoiceCommand::Refused { owner } => return Outcome::Refused { owner },
                    VoiceCommand::Rejoin => {
                        // Discord answers a join of the bot's own channel
                        // with nothing: out, then in again.
                        let _ = self.send(leave_op4(guild));
                        rejoined = true;
                    }
                    _ => {}
                }
            }
            Route::Ended { leave } => {
                return Outcome::Ended(self.voice_session_ended(&command.session, leave));
            }
        }
        match self.send(command.payload) {
            Err(_) => Outcome::Stopped,
            Ok(()) if rejoined => Outcome::Rejoined,
            Ok(()) => Outcome::Sent,
        }
    }

    /// Ends the upstream session with a normal close: Discord forgets it,
    /// and the shard's task ends.
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        if let Link::Upstream(sender) = &*self.link() {
            let _ = sender.close(twilight_gateway::CloseFrame::NORMAL);
        }
    }

    /// Closes the upstream connection so that Discord keeps the session
    /// (code 4000, not 1000 or 1001), for a new process to RESUME; the
    /// shard's task ends.
    pub fn close_resumable(&self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        if let Link::Upstream(sender) = &*self.link() {
            let _ = sender.close(twilight_gateway::CloseFrame::RESUME);
        }
    }

    /// Stamps the member chunks answering `nonce` for client session
    /// `session` alone; see [`Pipeline::route_chunks`].
    pub fn route_chunks(&self, nonce: &str, session: &str) {
        lock(&self.shared.core).route_chunks(nonce, session);
    }

    /// Decides about client session `session`'s op 4 for `guild`; see
    /// [`Pipeline::voice_command`] (`attached` is called under the shard's
    /// lock). The caller sends it upstream if told to, after a leave for
    /// [`VoiceCommand::Rejoin`].
    #[must_use = "a refused op 4 must not be sent"]
    pub fn voice_command(
        &self,
        guild: u64,
        session: &str,
        channel: Option<u64>,
        attached: impl FnOnce(&str) -> bool,
    ) -> VoiceCommand {
        lock(&self.shared.core).voice_command(guild, session, channel, attached)
    }

    /// Client session `session` ended for good: with `leave`, the bot
    /// leaves the voice channel of every guild of this shard whose voice
    /// it owned (op 4 with no channel, sent now), and the guild is free
    /// once Discord says so; without, those guilds are free at once.
    /// Returns the guilds.
    pub fn voice_session_ended(&self, session: &str, leave: bool) -> Vec<u64> {
        let guilds = lock(&self.shared.core).voice_session_ended(session, leave);
        if leave {
            for guild in &guilds {
                if self.send(leave_op4(*guild)).is_err() {
                    tracing::warn!(
                        shard = self.id(),
                        guild,
                        "voice leave not sent: shard stopped"
                    );
                }
            }
        }
        guilds
    }

    /// Each guild's voice on this shard: owner and phase.
    #[must_use]
    pub fn voice(&self) -> Vec<(u64, Arc<str>, VoicePhase)> {
        lock(&self.shared.core).voice()
    }

    /// The `d` of the last voice server update for guild `guild`'s voice
    /// owner; see [`Pipeline::voice_server`].
    #[must_use]
    pub fn voice_server(&self, guild: u64) -> Option<Bytes> {
        lock(&self.shared.core).voice_server(guild).cloned()
    }

    /// Stops taking upstream payloads in: from now on they are dropped
    /// (Discord sends them again to whoever RESUMEs from the last `s`
    /// taken), so the state stays where a checkpoint will find it. For
    /// shutting down; there is no thaw.
    pub fn freeze(&self) {
        let _core = lock(&self.shared.core);
        self.shared.frozen.store(true, Ordering::Release);
    }

    /// The id of the upstream session the shard's events are numbered in
    /// (READY's, or a checkpoint's); `None` before the first READY. What
    /// the layer above keeps beside a checkpoint is tied to it.
    #[must_use]
    pub fn upstream_session(&self) -> Option<String> {
        let core = lock(&self.shared.core);
        core.upstream()
            .map(|(upstream, _)| upstream.session_id.clone())
    }

    /// The shard's state at one index (pipeline, upstream session, ring),
    /// copied under its locks; `None` before the first READY (nothing to
    /// resume) or once Discord closed the shard for good.
    pub(crate) fn take(&self) -> Option<Taken> {
        if self.shared.closed.load(Ordering::Acquire) {
            return None;
        }
        let mut pipeline = Vec::with_capacity(64 << 10);
        let core = lock(&self.shared.core);
        let start = Instant::now();
        core.upstream()?;
        core.checkpoint(&mut pipeline);
        let ring = lock(&self.shared.ring).image();
        drop(core);
        let at = Instant::now();
        Some(Taken {
            shard: self.shared.id,
            pipeline,
            ring,
            at,
            held: at - start,
        })
    }

    /// Records a checkpoint written.
    pub(crate) fn checkpointed(&self, stats: CheckpointStats) {
        *lock(&self.shared.checkpointed) = Some(stats);
    }

    /// The shard's connection state now (cheap: no walk of the cache).
    #[must_use]
    pub fn state(&self) -> ShardState {
        lock(&self.shared.sampled).state
    }

    /// The shard's status now.
    #[must_use]
    pub fn status(&self) -> ShardStatus {
        let (state, latency, close_code) = {
            let sampled = lock(&self.shared.sampled);
            (sampled.state, sampled.latency, sampled.close_code)
        };
        let core = lock(&self.shared.core);
        ShardStatus {
            id: self.shared.id,
            state,
            ready: self.is_ready(),
            latency,
            close_code,
            index: core.index,
            events: core.events.clone(),
            duplicates: core.duplicates,
            malformed: core.malformed,
            cache_errors: core.cache_errors,
            cache: core.cache.stats(),
            ring: lock(&self.shared.ring).stats(),
            pending_guilds: core.cache.pending_guilds(),
            restored: self.shared.restored.load(Ordering::Relaxed),
            checkpoint: *lock(&self.shared.checkpointed),
        }
    }

    /// Takes one upstream payload through the pipeline and pushes what
    /// comes out to the ring, under the lock snapshots take; returns the
    /// guilds still pending, read under the same lock. Followers are woken
    /// after, and dispatches old enough are packed on a blocking thread
    /// (when one of the process's packers is free; else at a later event).
    fn handle(&self, payload: Bytes) -> usize {
        let now = Instant::now();
        let (pending, pushed, to_pack) = {
            let mut core = lock(&self.shared.core);
            if self.shared.frozen.load(Ordering::Acquire) {
                return core.cache.pending_guilds();
            }
            let tapped = self.shared.tap.get().is_some().then(|| payload.clone());
            let event = core.handle(payload);
            if let (Some(event), Some(payload)) = (&event, &tapped) {
                let ready = matches!(event, ShardEvent::Reset { .. }).then_some(payload);
                self.tap(&core, event, ready);
            }
            if matches!(event, Some(ShardEvent::Reset { .. })) {
                lock(&self.shared.sampled).ready_at = Some(now);
                self.shared.restored.store(false, Ordering::Relaxed);
            }
            let to_pack = self.record(event.as_ref(), now);
            (core.cache.pending_guilds(), event.is_some(), to_pack)
        };
        self.recorded(pushed, to_pack);
        pending
    }

    /// Takes one event of a shard another process runs, as its tap gave
    /// it, through this process's pipeline (the owner's audience stamp
    /// kept) and pushes it to the ring. An event the state already holds
    /// (it came before the checkpoint this state started from) is passed
    /// over.
    ///
    /// # Errors
    ///
    /// [`Unfed::Gap`] when it is not the event after the last one (events
    /// are missing), or the pipeline does not number it as the owner did:
    /// the state can no longer be the owner's, and is to be rebuilt from a
    /// checkpoint. [`Unfed::Elsewhere`] when it goes on from another
    /// upstream session than the state's with no READY between.
    pub(crate) fn feed(&self, event: Tapped) -> Result<(), Unfed> {
        let now = Instant::now();
        if let Some(code) = event.closed {
            let head = lock(&self.shared.core).index;
            if event.index != head {
                return Err(Unfed::Gap(format!(
                    "the close for good came after event {}, this state is at {head}",
                    event.index
                )));
            }
            tracing::warn!(
                shard = self.id(),
                code,
                "the shard's node says Discord closed it for good"
            );
            self.stopped(code);
            return Ok(());
        }
        self.shared
            .log_seen
            .fetch_max(event.index, Ordering::AcqRel);
        let event_ready = event.ready;
        let to_pack = {
            let mut core = lock(&self.shared.core);
            if event.index <= core.index {
                return Ok(());
            }
            if event.index != core.index + 1 {
                // Nothing held yet (no checkpoint to start from, and the
                // log no longer has the shard's first events): its next
                // READY starts the state, numbered as the owner's.
                if core.upstream().is_none() {
                    if !event.ready {
                        return Ok(());
                    }
                    core.index = event.index - 1;
                } else {
                    return Err(Unfed::Gap(format!(
                        "event {} came after event {}: the ones between are missing",
                        event.index, core.index
                    )));
                }
            }
            if let Some((upstream, _)) = core.upstream()
                && !event.ready
                && *upstream.session_id != *event.session
            {
                return Err(Unfed::Elsewhere(format!(
                    "event {} is of upstream session {}, this state's is {}, and no READY came \
                     between",
                    event.index, event.session, upstream.session_id
                )));
            }
            let handed = core.handle_stamped(event.payload, event.audience);
            match &handed {
                Some(handed) if handed.index() == event.index => {}
                other => {
                    return Err(Unfed::Gap(format!(
                        "event {} was numbered {:?} here",
                        event.index,
                        other.as_ref().map(ShardEvent::index)
                    )));
                }
            }
            self.record(handed.as_ref(), now)
        };
        self.recorded(true, to_pack);
        // The READY a follower caught up before: it serves now.
        if event_ready && self.shared.caught.load(Ordering::Acquire) {
            self.caught_up();
        }
        Ok(())
    }

    /// Starts this followed shard's state again from `core` and `ring` (a
    /// checkpoint's); it serves again once [`caught_up`](Self::caught_up).
    /// Followers whose cursor the new ring holds go on reading; the others
    /// are [`Gone`](crate::Gone), and their clients resume or identify.
    pub(crate) fn rebuild(&self, core: Pipeline, ring: Ring) {
        self.shared.ready.send_replace(Readiness::Loading);
        self.shared.caught.store(false, Ordering::Release);
        {
            let mut held = lock(&self.shared.core);
            *held = core;
            let mut held = lock(&self.shared.ring);
            *held = ring;
            self.publish(&held);
        }
        self.shared.news.send_replace(());
    }

    /// A follower of this shard read the start of term `term` (see
    /// [`Followed::Fenced`]): every event of the terms before is fed.
    pub(crate) fn fenced(&self, term: u64) {
        let head = self.head();
        self.shared.fence.send_if_modified(|was| {
            let newer = term > was.0;
            if newer {
                *was = (term, head);
            }
            newer
        });
    }

    /// Waits until a follower of this shard has read the start of term
    /// `term` (or a later one); returns the index the state was at there.
    pub(crate) async fn fenced_at(&self, term: u64) -> u64 {
        let mut fence = self.shared.fence.subscribe();
        let fenced = fence.wait_for(|fenced| fenced.0 >= term).await;
        fenced.map_or(0, |fenced| fenced.1)
    }

    /// Where the shard's state stands upstream, to RESUME from: session
    /// id, resume URL and last `s`; `None` before its first READY.
    pub(crate) fn resume_point(&self) -> Option<(String, String, u64)> {
        crate::pool::resume_point(&lock(&self.shared.core))
    }

    /// This followed shard is run here from now on, in term `term`, with
    /// `sender` to its new upstream connection: its state goes on from
    /// where following left it, and what it takes in goes to the tap. It
    /// serves again once the connection is active (RESUMED, or READY and
    /// the guilds after it).
    pub(crate) fn promote(&self, sender: MessageSender, term: u64, tap: Option<Arc<dyn Tap>>) {
        let resumes = {
            let mut core = lock(&self.shared.core);
            // Nothing to resume: the READY of the identify comes after
            // whatever the log holds, so that followers elsewhere take it.
            if core.upstream().is_none() {
                core.index = core.index.max(self.shared.log_seen.load(Ordering::Acquire));
            }
            core.upstream().is_some()
        };
        self.shared.term.store(term, Ordering::Relaxed);
        self.tap_into(tap);
        {
            let mut sampled = lock(&self.shared.sampled);
            sampled.state = ShardState::Connecting;
            // As for a restored session: RESUMED makes it active.
            sampled.ready_at = resumes.then(Instant::now);
        }
        self.shared.restored.store(resumes, Ordering::Relaxed);
        // Run here before, and handed over since.
        self.shared.runs.fetch_add(1, Ordering::AcqRel);
        self.shared.frozen.store(false, Ordering::Release);
        self.shared.closing.store(false, Ordering::Relaxed);
        *self
            .shared
            .link
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Link::Upstream(sender);
        self.shared.ready.send_if_modified(|was| {
            let changed = *was == Readiness::Ready;
            if changed {
                *was = Readiness::Loading;
            }
            changed
        });
    }

    /// This shard, run here until now (frozen, its upstream connection
    /// closed), is another process's from now on: its clients' commands go
    /// to `source`, and it is followed from where it stopped. Returns that
    /// index.
    pub(crate) fn demote(&self, source: Arc<dyn Source>) -> u64 {
        let core = lock(&self.shared.core);
        *self
            .shared
            .link
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Link::Remote(source);
        self.shared.runs.fetch_add(1, Ordering::AcqRel);
        let mut sampled = lock(&self.shared.sampled);
        sampled.state = ShardState::Following;
        sampled.latency = None;
        core.index
    }

    /// The term this process runs the shard in (0 if it does not, or
    /// without leases).
    #[must_use]
    pub fn term(&self) -> u64 {
        self.shared.term.load(Ordering::Relaxed)
    }

    /// This followed shard's state is the owner's as of now: it serves
    /// (once it holds a READY: before, there is nothing to serve).
    pub(crate) fn caught_up(&self) {
        self.shared.caught.store(true, Ordering::Release);
        if lock(&self.shared.core).upstream().is_none() {
            return;
        }
        self.shared.ready.send_if_modified(|was| {
            let changed = *was == Readiness::Loading;
            if changed {
                *was = Readiness::Ready;
            }
            changed
        });
    }

    /// Pushes what the pipeline handed on, if anything, to the ring (the
    /// caller holds the core lock): the block to pack, if it is time.
    fn record(&self, event: Option<&ShardEvent>, now: Instant) -> Option<Packing> {
        let mut ring = lock(&self.shared.ring);
        match event {
            Some(event) => ring.push(event, now),
            None => ring.expire(now),
        }
        self.publish(&ring);
        if ring.may_pack(now)
            && let Some(packer) = packer()
        {
            ring.start_packing(now).map(|block| (block, packer))
        } else {
            None
        }
    }

    /// After [`record`](Self::record), without the locks: followers are
    /// woken if an event was `pushed`, and a block is packed on a blocking
    /// thread (the next events need not wait for it).
    fn recorded(&self, pushed: bool, to_pack: Option<Packing>) {
        if pushed {
            self.shared.news.send_replace(());
        }
        if let Some(((dispatches, newest), packer)) = to_pack {
            let shard = self.clone();
            tokio::task::spawn_blocking(move || {
                let block = ring::Block::pack(&dispatches, newest);
                let mut ring = lock(&shard.shared.ring);
                ring.replace(block);
                shard.publish(&ring);
                drop(packer);
            });
        }
    }

    /// What followers read without the ring's lock.
    fn publish(&self, ring: &Ring) {
        let (floor, head) = ring.window();
        self.shared.ring_floor.store(floor, Ordering::Release);
        self.shared
            .ring_dropping
            .store(ring.dropping(), Ordering::Release);
        self.shared.head.store(head, Ordering::Release);
    }

    /// Discord closed the shard for good: clients learn it at once, and
    /// whoever waits for the shard to be ready is told.
    fn stopped(&self, code: u16) {
        self.shared.ready.send_replace(Readiness::Fatal(code));
        {
            let pipeline = lock(&self.shared.core);
            let index = self.head();
            self.tap_closed(&pipeline, index, code);
            lock(&self.shared.ring).push(&ShardEvent::Closed { index, code }, Instant::now());
            self.shared.closed.store(true, Ordering::Release);
        }
        self.shared.news.send_replace(());
    }

    /// Records what twilight's shard says now, and whether that makes the
    /// shard ready; `pending` is the guilds still pending when the caller
    /// has just read them.
    fn sample(&self, shard: &Shard<SharedQueue>, pending: Option<usize>) {
        // Handed over: followed, whatever the old connection does.
        if !self.is_local() {
            return;
        }
        let state = ShardState::from(shard.state());
        let pending = pending.unwrap_or_else(|| lock(&self.shared.core).cache.pending_guilds());
        let mut sampled = lock(&self.shared.sampled);
        sampled.state = state;
        if let Some(latency) = shard.latency().recent().first() {
            sampled.latency = Some(*latency);
        }
        let loaded = pending == 0
            || sampled
                .ready_at
                .is_some_and(|at| at.elapsed() >= self.shared.load_timeout);
        let ready = state == ShardState::Active && sampled.ready_at.is_some() && loaded;
        let ready = if ready {
            Readiness::Ready
        } else {
            Readiness::Loading
        };
        self.shared.ready.send_if_modified(|was| {
            let changed = *was != ready && !matches!(*was, Readiness::Fatal(_));
            if changed {
                *was = ready;
            }
            changed
        });
    }

    /// When the shard counts as loaded even if guilds are still missing.
    fn load_deadline(&self) -> Option<Instant> {
        if *self.shared.ready.borrow() != Readiness::Loading {
            return None;
        }
        lock(&self.shared.sampled)
            .ready_at
            .map(|at| at + self.shared.load_timeout)
    }

    /// What twilight could not take. A payload its key search could not
    /// read (its first textual `"op":` or `"s":` is nested, which is
    /// valid JSON in any key order) still goes through the pipeline, whose
    /// scan reads the top level by structure. Nothing of a payload is
    /// logged but its size and a short prefix: dispatches carry
    /// interaction tokens.
    fn receive_error(&self, error: twilight_gateway::error::ReceiveMessageError) -> Option<usize> {
        let id = self.id();
        let (kind, source) = error.into_parts();
        match kind {
            ReceiveMessageErrorType::Deserializing { event } => {
                tracing::debug!(
                    shard = id,
                    bytes = event.len(),
                    prefix = %prefix(&event),
                    reason = ?source.map(|s| s.to_string()),
                    "twilight could not read a payload; the pipeline takes it"
                );
                Some(self.handle(exact(event)))
            }
            other => {
                let source = source.map(|s| s.to_string());
                tracing::warn!(shard = id, kind = ?other, ?source, "upstream receive error");
                None
            }
        }
    }

    /// Runs the shard until it is fatally closed.
    pub(crate) async fn run(self, mut shard: Shard<SharedQueue>) {
        let id = self.id();
        // Handed over since (and maybe taken back, with a new task): this
        // one's connection is no longer the shard's.
        let run = self.shared.runs.load(Ordering::Acquire);
        loop {
            if self.shared.runs.load(Ordering::Acquire) != run {
                return;
            }
            let next = poll_fn(|cx| Pin::new(&mut shard).poll_next(cx));
            let message = match self.load_deadline() {
                Some(deadline) => tokio::select! {
                    message = next => message,
                    () = tokio::time::sleep_until(deadline) => {
                        self.sample(&shard, None);
                        continue;
                    }
                },
                None => next.await,
            };
            let mut pending = None;
            match message {
                Some(Ok(Message::Text(text))) => pending = Some(self.handle(exact(text))),
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f| f.code);
                    tracing::info!(shard = id, ?code, "upstream closed");
                    lock(&self.shared.sampled).close_code = code;
                    if self.shared.closing.load(Ordering::Relaxed) {
                        return;
                    }
                }
                Some(Err(error)) => pending = self.receive_error(error),
                None => {
                    self.sample(&shard, None);
                    let code = lock(&self.shared.sampled).close_code.unwrap_or(0);
                    let error = self.fatal_error(code);
                    tracing::error!(shard = id, code, "{error}");
                    self.stopped(code);
                    return;
                }
            }
            self.sample(&shard, pending);
        }
    }
}
