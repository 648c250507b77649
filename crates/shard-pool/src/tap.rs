//! A copy of every event a shard takes in, as it takes it: what an event
//! log (the cluster's) publishes, so that another process can feed the same
//! payloads through its own [`Pipeline`](crate::Pipeline) and number them
//! as this one did.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::pipeline::Audience;

/// One event a shard took in.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Tapped {
    /// The shard.
    pub shard: u32,
    /// The event's index in the shard's numbering.
    pub index: u64,
    /// Discord's `s` of it.
    pub seq: Option<u64>,
    /// The upstream session it came in (READY's `session_id`).
    pub session: Arc<str>,
    /// The payload: READY as Discord sent it, any other dispatch in the
    /// canonical envelope. Fed to a pipeline that had every event before
    /// it, it gives the same index.
    pub payload: Bytes,
    /// Who receives it, as the shard decided when it came.
    pub audience: Audience,
    /// Whether it is a READY (a new upstream session: the shard's state
    /// starts again).
    pub ready: bool,
    /// Set when Discord closed the shard for good, with its close code:
    /// then it is no dispatch (the payload is empty and the index is the
    /// last event's) and nothing follows.
    pub closed: Option<u16>,
    /// The term of the shard's owner that took it in: the revision of its
    /// lease on the shard in a cluster (0 without one). A reader takes no
    /// event of an older term after a newer one: a node that lost its
    /// lease but did not know it yet is fenced off.
    pub term: u64,
}

impl Tapped {
    /// An event read back from where a tap put it (for a
    /// [`Source`](crate::Source)).
    #[must_use]
    pub fn new(
        shard: u32,
        index: u64,
        seq: Option<u64>,
        session: Arc<str>,
        payload: Bytes,
        audience: Audience,
        ready: bool,
    ) -> Self {
        Self {
            shard,
            index,
            seq,
            session,
            payload,
            audience,
            ready,
            closed: None,
            term: 0,
        }
    }

    /// The same event, taken in by the owner of term `term`.
    #[must_use]
    pub fn with_term(mut self, term: u64) -> Self {
        self.term = term;
        self
    }

    /// Discord closed shard `shard` for good with `code` after event
    /// `index` of upstream session `session`.
    #[must_use]
    pub fn closed(shard: u32, index: u64, session: Arc<str>, code: u16) -> Self {
        Self {
            shard,
            index,
            seq: None,
            session,
            payload: Bytes::new(),
            audience: Audience::Nobody,
            ready: false,
            closed: Some(code),
            term: 0,
        }
    }
}

/// Where a pool hands a copy of every event (see [`PoolConfig::tap`]).
///
/// [`Tap::tapped`] is called on the shard's task under its lock, in the
/// order of the shard's events: it must not block or wait (queue the event
/// and return). Events a tap cannot take are its own to count: the shard
/// and its clients go on regardless.
///
/// [`PoolConfig::tap`]: crate::PoolConfig::tap
pub trait Tap: fmt::Debug + Send + Sync + 'static {
    /// Takes a copy of one event.
    fn tapped(&self, event: Tapped);
}
