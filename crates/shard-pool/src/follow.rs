//! A reader of a shard's ring: a cursor and a way to wait for news.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;

use crate::pipeline::{Dispatch, ShardEvent};
use crate::ring::{Found, Piece};
use crate::shard::{Shared, lock};

/// What comes after a follower's cursor is no longer in the ring: it fell
/// behind past the ring's bounds, or across a new upstream session it was
/// not up to date for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gone;

impl std::fmt::Display for Gone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the events after this follower's cursor are no longer held")
    }
}

impl std::error::Error for Gone {}

/// A cursor into a shard's ring: every event after it, in order, once.
///
/// The ring holds each event once for every follower, so a follower costs
/// its cursor and nothing per event; a follower that falls behind reads
/// what it missed from the ring as long as the ring holds it (see
/// [`ShardHandle::behind`](crate::ShardHandle::behind)).
#[derive(Debug)]
pub struct Follower {
    shared: Arc<Shared>,
    /// The index of the last event taken.
    index: u64,
    news: watch::Receiver<()>,
    /// The last packed block unpacked, for a reader that takes it in parts
    /// (shared with other readers of the block while they hold it).
    unpacked: Option<Arc<[Dispatch]>>,
    pieces: Vec<Piece>,
    /// Events taken but not yet handed out by [`Follower::recv`].
    buffered: VecDeque<ShardEvent>,
    /// Said once: nothing follows it.
    ended: bool,
}

impl Follower {
    pub(crate) fn new(shared: Arc<Shared>, index: u64) -> Self {
        let news = shared.news.subscribe();
        Self {
            shared,
            index,
            news,
            unpacked: None,
            pieces: Vec::new(),
            buffered: VecDeque::new(),
            ended: false,
        }
    }

    /// A follower from `index` on that first hands out `read`, the events
    /// up to `index` read from elsewhere (a cluster's event log).
    pub(crate) fn with_read(shared: Arc<Shared>, index: u64, read: Vec<ShardEvent>) -> Self {
        let mut follower = Self::new(shared, index);
        follower.buffered = read.into();
        follower
    }

    /// The index of the last event taken.
    #[must_use]
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The shard's id.
    #[must_use]
    pub fn shard(&self) -> u32 {
        self.shared.id
    }

    /// Whether an event after the cursor is waiting (or the shard was
    /// closed for good and the follower has not been told).
    #[must_use]
    pub fn has_news(&self) -> bool {
        !self.buffered.is_empty()
            || self.shared.head.load(Ordering::Acquire) > self.index
            || (self.shared.closed.load(Ordering::Acquire) && !self.ended)
    }

    /// Waits until there is something to take. Cancel-safe.
    pub async fn changed(&mut self) {
        loop {
            self.news.borrow_and_update();
            if self.has_news() {
                return;
            }
            // The sender lives as long as the shard's state, which this
            // follower holds.
            if self.news.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Moves the cursor past the events after it, appending them to `out`:
    /// dispatches, up to about `max_bytes` of payload (at least one), then
    /// a [`ShardEvent::Reset`] or [`ShardEvent::Closed`] where one comes
    /// (nothing follows those for this follower). Appends nothing when
    /// nothing is new.
    ///
    /// # Errors
    ///
    /// [`Gone`] when the ring no longer holds the event after the cursor.
    pub fn take(&mut self, max_bytes: usize, out: &mut Vec<ShardEvent>) -> Result<(), Gone> {
        if let Some(event) = self.buffered.pop_front() {
            out.push(event);
            out.extend(self.buffered.drain(..));
            return Ok(());
        }
        if self.ended {
            return Ok(());
        }
        // Packed dispatches unpacked before, first.
        let mut bytes = 0;
        self.take_unpacked(&mut bytes, max_bytes, out);
        if bytes >= max_bytes {
            return Ok(());
        }
        self.pieces.clear();
        let found = lock(&self.shared.ring).read(self.index, max_bytes - bytes, &mut self.pieces);
        match found {
            Found::Events => {}
            Found::Reset(index) => {
                self.index = index;
                out.push(ShardEvent::Reset { index });
                return Ok(());
            }
            Found::Closed(index, code) => {
                self.ended = true;
                out.push(ShardEvent::Closed { index, code });
                return Ok(());
            }
            Found::Gone => return Err(Gone),
        }
        // Taken out while the cursor moves; its room is kept for next time.
        let mut pieces = std::mem::take(&mut self.pieces);
        let mut unpacked = Ok(());
        for piece in pieces.drain(..) {
            match piece {
                Piece::Raw(dispatch) => {
                    if dispatch.index() == self.index + 1 {
                        self.index += 1;
                        out.push(ShardEvent::Dispatch(dispatch));
                    }
                }
                Piece::Packed(block) => {
                    let Some(dispatches) = block.unpack() else {
                        tracing::error!(shard = self.shared.id, "a packed block did not unpack");
                        unpacked = Err(Gone);
                        break;
                    };
                    self.unpacked = Some(dispatches);
                    self.take_unpacked(&mut bytes, max_bytes, out);
                    if bytes >= max_bytes {
                        // The rest of this block is kept unpacked; later
                        // pieces are read again next time.
                        break;
                    }
                }
            }
        }
        self.pieces = pieces;
        unpacked
    }

    /// Moves the cursor over the unpacked dispatches that follow it, while
    /// `bytes` is under `max_bytes`; lets the block go once past it.
    fn take_unpacked(&mut self, bytes: &mut usize, max_bytes: usize, out: &mut Vec<ShardEvent>) {
        let Some(block) = self.unpacked.clone() else {
            return;
        };
        let first = block.first().map_or(0, Dispatch::index);
        while *bytes < max_bytes {
            // The cursor before the block: what is between is not here.
            let Some(offset) = (self.index + 1).checked_sub(first) else {
                return;
            };
            let Some(dispatch) = usize::try_from(offset).ok().and_then(|o| block.get(o)) else {
                self.unpacked = None;
                return;
            };
            *bytes += dispatch.payload().len();
            self.index += 1;
            out.push(ShardEvent::Dispatch(dispatch.clone()));
            if self.index >= block.last().map_or(0, Dispatch::index) {
                self.unpacked = None;
                return;
            }
        }
    }

    /// The next event, waiting for it: a convenience over
    /// [`changed`](Self::changed) and [`take`](Self::take) for callers
    /// that handle one event at a time.
    ///
    /// # Errors
    ///
    /// [`Gone`] as for [`take`](Self::take).
    pub async fn recv(&mut self) -> Result<ShardEvent, Gone> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Ok(event);
            }
            let mut taken = Vec::new();
            self.take(64 << 10, &mut taken)?;
            if taken.is_empty() {
                self.changed().await;
            }
            self.buffered.extend(taken);
        }
    }
}
