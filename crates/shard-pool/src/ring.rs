//! A shard's ring: every dispatch a client of the shard may still need, in
//! upstream order, for live delivery and for resumes alike.
//!
//! Clients do not get events pushed to them: each holds a cursor (the index
//! of the last event it took, see [`Follower`](crate::Follower)) and reads
//! from the ring what came after it. So a live client, a client behind by a
//! burst and a client that resumes read the same way, and an event costs
//! the ring one entry whatever the number of clients.
//!
//! The newest dispatches are kept as they came (shared `Bytes`); older ones
//! are packed into blocks of [`BLOCK_EVENTS`], compressed with zstd, which a
//! reader that far behind (a resume) unpacks. What the ring keeps is bounded
//! by age (the longest a client session may wait to resume), by a cap per
//! shard (events and bytes) and by one byte budget shared by every ring of
//! the process: a ring that pushes past the budget makes room from its own
//! oldest events.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::checkpoint::{Reader, put_bytes};
use crate::error::Error;
use crate::pipeline::{Audience, Dispatch, ShardEvent};

/// What a shard's ring holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RingStats {
    /// Dispatches.
    pub events: usize,
    /// Bytes, as the budget counts them: payloads (compressed where they
    /// are packed) and what holding each costs.
    pub bytes: usize,
    /// What the payloads would take as they came: `payload_bytes / bytes`
    /// is what packing gains.
    pub payload_bytes: usize,
}

/// Dispatches per compressed block.
/// 128 of the e2e benchmark's 1 KB dispatches pack 8.4× at level 1, against
/// 6.6× for 32, and cost a quarter less CPU per dispatch (per-block work
/// is spread thinner): `cargo run --release -p benches --bin packing`.
pub(crate) const BLOCK_EVENTS: usize = 128;

/// The zstd level of compressed blocks: level 1 packs as well as 3 here,
/// for two thirds of its CPU; negative levels give up a third of the ratio
/// for a fifth less CPU.
const BLOCK_LEVEL: i32 = 1;

/// How long a dispatch stays raw at least: followers behind by a busy
/// moment (a slow scheduler, a burst) read the very dispatches the live
/// ones read, and share their zlib bodies, rather than unpacking copies.
/// Half a second of a busy shard: 8 MB at 16,000 events/s.
pub(crate) const RAW_AGE: Duration = Duration::from_millis(500);

/// A shard this quiet (its oldest raw dispatch this old) packs in smaller
/// blocks, of at least [`MIN_BLOCK_EVENTS`], so that a thousand quiet
/// shards do not hold their history raw.
const QUIET_AGE: Duration = Duration::from_secs(10);
const MIN_BLOCK_EVENTS: usize = 16;

/// What one raw dispatch costs the budget beyond its payload: its shared
/// allocation and its slot.
const RAW_OVERHEAD: usize = 128;

/// What one block costs the budget beyond its compressed bytes: the block
/// itself and the end offset of each dispatch.
const BLOCK_OVERHEAD: usize = 96 + 4 * BLOCK_EVENTS;

/// What one dispatch's audience costs a block (its place and a shared id).
const STAMP_OVERHEAD: usize = 24;

/// The byte budget every ring of a process shares.
#[derive(Debug)]
pub(crate) struct ReplayBudget {
    max: usize,
    used: AtomicUsize,
}

impl ReplayBudget {
    /// A budget of `max` bytes, for every ring that shares it.
    #[must_use]
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            used: AtomicUsize::new(0),
        })
    }

    /// The bytes every ring holds now.
    #[must_use]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The budget.
    #[must_use]
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    fn over(&self) -> bool {
        self.used.load(Ordering::Relaxed) > self.max
    }
}

/// What bounds one ring.
#[derive(Clone, Debug)]
pub(crate) struct RingLimits {
    /// The most dispatches it keeps.
    pub(crate) max_events: usize,
    /// The most bytes it keeps.
    pub(crate) max_bytes: usize,
    /// How long it keeps a dispatch: the longest a session may wait to
    /// resume.
    pub(crate) max_age: Duration,
    /// The newest dispatches it keeps as they came (older ones are packed).
    pub(crate) raw_events: usize,
    /// The budget it shares with the other rings.
    pub(crate) budget: Arc<ReplayBudget>,
    /// Whether it keeps events even before a client is served from it: in
    /// a cluster, a client of another node may resume here.
    pub(crate) keep_unserved: bool,
}

impl RingLimits {
    /// Limits for a ring of its own (tests).
    #[cfg(test)]
    pub(crate) fn alone(max_events: usize, max_bytes: usize) -> Self {
        Self {
            max_events,
            max_bytes,
            max_age: Duration::from_mins(5),
            raw_events: 64,
            budget: ReplayBudget::new(usize::MAX),
            keep_unserved: false,
        }
    }
}

/// Dispatches packed together: their payloads, concatenated and
/// compressed. Cheap to clone, so that a reader unpacks it outside the
/// ring's lock.
#[derive(Clone, Debug)]
pub(crate) struct Block {
    /// The index of its first dispatch; the others follow one by one.
    first: u64,
    /// The zstd frame.
    data: Bytes,
    /// Where each payload ends in the unpacked bytes.
    ends: Arc<[u32]>,
    /// The dispatches not for every client: their place in the block and
    /// their audience (rare: member chunks and voice servers).
    stamps: Arc<[(u32, Audience)]>,
    /// When its newest dispatch came.
    newest: Instant,
    /// Its dispatches while a reader holds them unpacked: readers behind
    /// by the same stretch (clients that fell behind together, or resume
    /// together) share one unpacking, and each dispatch's shared state
    /// (its zlib body, compressed once for every client).
    unpacked: Arc<Mutex<Option<Weak<[Dispatch]>>>>,
}

impl Block {
    /// Packs `dispatches`, the newest of which came at `newest` (the caller
    /// holds no lock).
    pub(crate) fn pack(dispatches: &[Dispatch], newest: Instant) -> Option<Self> {
        let first = dispatches.first()?.index();
        let mut raw = Vec::with_capacity(dispatches.iter().map(|d| d.payload().len()).sum());
        let mut ends = Vec::with_capacity(dispatches.len());
        let mut stamps = Vec::new();
        for (at, dispatch) in (0..).zip(dispatches) {
            raw.extend_from_slice(dispatch.payload());
            ends.push(u32::try_from(raw.len()).ok()?);
            if *dispatch.audience() != Audience::Everyone {
                stamps.push((at, dispatch.audience().clone()));
            }
        }
        // Into a buffer of the worst case, then copied to one of the exact
        // size: the budget counts what is held.
        let mut packed = Vec::with_capacity(zstd::zstd_safe::compress_bound(raw.len()));
        with_compressor(|c| c.compress_to_buffer(&raw, &mut packed)).ok()?;
        Some(Self {
            first,
            data: Bytes::copy_from_slice(&packed),
            ends: ends.into(),
            stamps: stamps.into(),
            newest,
            unpacked: Arc::default(),
        })
    }

    /// The dispatches again, each a slice of one unpacked buffer: the ones
    /// another reader holds, if one does.
    pub(crate) fn unpack(&self) -> Option<Arc<[Dispatch]>> {
        let mut unpacked = self.unpacked.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(dispatches) = unpacked.as_ref().and_then(Weak::upgrade) {
            return Some(dispatches);
        }
        let dispatches: Arc<[Dispatch]> = self.decompress()?.into();
        *unpacked = Some(Arc::downgrade(&dispatches));
        Some(dispatches)
    }

    fn decompress(&self) -> Option<Vec<Dispatch>> {
        let len = usize::try_from(*self.ends.last()?).ok()?;
        let raw = Bytes::from(with_decompressor(|d| d.decompress(&self.data, len)).ok()?);
        let mut start = 0;
        let mut out = Vec::with_capacity(self.ends.len());
        let mut stamps = self.stamps.iter().peekable();
        for ((at, index), &end) in (0..).zip(self.first..).zip(self.ends.iter()) {
            let end = usize::try_from(end).ok()?;
            let audience = match stamps.next_if(|(place, _)| *place == at) {
                Some((_, audience)) => audience.clone(),
                None => Audience::Everyone,
            };
            out.push(Dispatch::stamped(
                index,
                raw.get(start..end).map(|_| raw.slice(start..end))?,
                audience,
            )?);
            start = end;
        }
        Some(out)
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    /// The bytes of its payloads, unpacked.
    pub(crate) fn payload_len(&self) -> usize {
        self.ends.last().map_or(0, |&end| end as usize)
    }

    fn cost(&self) -> usize {
        self.data.len() + BLOCK_OVERHEAD + STAMP_OVERHEAD * self.stamps.len()
    }

    /// The index of its last dispatch.
    fn last(&self) -> u64 {
        self.first + self.len() as u64 - 1
    }
}

thread_local! {
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's compressor (one context per thread, not per
/// shard: an idle shard holds none).
fn with_compressor<T>(
    f: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    with_local(&COMPRESSOR, || zstd::bulk::Compressor::new(BLOCK_LEVEL), f)
}

fn with_decompressor<T>(
    f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    with_local(&DECOMPRESSOR, zstd::bulk::Decompressor::new, f)
}

/// Runs `f` with the context in this thread's `slot`, made by `make` the
/// first time.
fn with_local<C: 'static, T>(
    slot: &'static std::thread::LocalKey<RefCell<Option<C>>>,
    make: impl FnOnce() -> std::io::Result<C>,
    f: impl FnOnce(&mut C) -> std::io::Result<T>,
) -> std::io::Result<T> {
    slot.with(|slot| {
        let mut slot = slot.borrow_mut();
        let context = match slot.as_mut() {
            Some(context) => context,
            None => slot.insert(make()?),
        };
        f(context)
    })
}

/// A stretch of the ring handed to a reader: dispatches as they came, or a
/// block it unpacks itself.
#[derive(Debug)]
pub(crate) enum Piece {
    Raw(Dispatch),
    Packed(Block),
}

/// What a reader finds after its cursor.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// Pieces were appended (or nothing is new yet).
    Events,
    /// A new upstream session began at this index.
    Reset(u64),
    /// Discord closed the shard for good with this code; nothing follows.
    Closed(u64, u16),
    /// What comes after the cursor is no longer held.
    Gone,
}

/// The ring of one shard; see the module's documentation.
#[derive(Debug)]
pub(crate) struct Ring {
    limits: RingLimits,
    /// Packed dispatches, oldest first, then `raw` follows them.
    blocks: VecDeque<Block>,
    /// The newest dispatches, as they came, with when each came.
    raw: VecDeque<(Dispatch, Instant)>,
    /// The index of the newest event.
    head: u64,
    /// Every dispatch after this index is held, up to `head`.
    floor: u64,
    /// The index of the `Reset` that began the current upstream session,
    /// for a reader that was exactly up to date before it.
    reset: Option<u64>,
    /// The shard was closed for good: after this index, with this code.
    closed: Option<(u64, u16)>,
    /// Dispatches and bytes held (as the budget counts them).
    events: usize,
    bytes: usize,
    /// What the payloads held would take unpacked.
    payload_bytes: usize,
    /// Whether dispatches were dropped for room since the last reset.
    dropping: bool,
    /// Whether a client has been served since the last reset: until then
    /// nobody can need a dispatch later, so none is kept (at start-up the
    /// ring would otherwise hold every guild's `GUILD_CREATE`).
    served: bool,
    /// A block handed out by [`Ring::start_packing`] is being packed: nothing
    /// more is handed out until it is back ([`Ring::replace`]).
    packing: bool,
}

impl Ring {
    pub(crate) fn new(limits: RingLimits) -> Self {
        let served = limits.keep_unserved;
        Self {
            limits,
            blocks: VecDeque::new(),
            raw: VecDeque::new(),
            head: 0,
            floor: 0,
            reset: None,
            closed: None,
            events: 0,
            bytes: 0,
            payload_bytes: 0,
            dropping: false,
            served,
            packing: false,
        }
    }

    /// Appends the pipeline's next event.
    pub(crate) fn push(&mut self, event: &ShardEvent, now: Instant) {
        match event {
            ShardEvent::Dispatch(dispatch) => {
                self.head = dispatch.index();
                if !self.served {
                    self.floor = self.head;
                    return;
                }
                self.add(dispatch.payload().len() + RAW_OVERHEAD, 1);
                self.payload_bytes += dispatch.payload().len();
                self.raw.push_back((dispatch.clone(), now));
                self.expire(now);
            }
            ShardEvent::Reset { index } => {
                self.clear();
                self.head = *index;
                self.floor = *index;
                self.reset = Some(*index);
                self.served = self.limits.keep_unserved;
            }
            ShardEvent::Closed { index, code } => self.closed = Some((*index, *code)),
        }
    }

    /// A client is being served from the state at the head: from here on
    /// the ring keeps what it will need.
    pub(crate) fn serve(&mut self) {
        self.served = true;
    }

    /// Whether [`Ring::start_packing`] may find something to pack at `now`
    /// (a cheap check, made before taking a packer).
    pub(crate) fn may_pack(&self, now: Instant) -> bool {
        !self.packing
            && self.raw.len() > self.limits.raw_events
            && self
                .raw
                .front()
                .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= RAW_AGE)
    }

    /// The oldest raw dispatches to pack into a block at `now`, if enough
    /// are past what stays raw (the newest `raw_events`, and those younger
    /// than [`RAW_AGE`]): a full block, or a smaller one on a quiet shard.
    /// The caller packs them (outside any lock) and hands the block, or
    /// `None` if packing failed, to [`Ring::replace`]; until then nothing
    /// more is handed out.
    pub(crate) fn start_packing(&mut self, now: Instant) -> Option<(Vec<Dispatch>, Instant)> {
        if self.packing {
            return None;
        }
        let candidates = self
            .raw
            .len()
            .checked_sub(self.limits.raw_events)?
            .min(BLOCK_EVENTS);
        let old = self
            .raw
            .range(..candidates)
            .take_while(|(_, at)| now.saturating_duration_since(*at) >= RAW_AGE)
            .count();
        let quiet = self
            .raw
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= QUIET_AGE);
        if old < BLOCK_EVENTS && !(quiet && old >= MIN_BLOCK_EVENTS) {
            return None;
        }
        let dispatches = self.raw.range(..old).map(|(d, _)| d.clone()).collect();
        let newest = self.raw.get(old - 1)?.1;
        self.packing = true;
        Some((dispatches, newest))
    }

    /// Packs the oldest raw dispatches, if there are enough at `now`; for
    /// callers that need not leave a lock to do it (tests, fuzzing seeds).
    pub(crate) fn pack(&mut self, now: Instant) {
        if let Some((dispatches, newest)) = self.start_packing(now) {
            self.replace(Block::pack(&dispatches, newest));
        }
    }

    /// Puts a block in place of the raw dispatches it packs, if they are
    /// still the oldest raw ones (a reset or the bounds may have taken them
    /// meanwhile); `None` (packing failed) leaves them raw.
    pub(crate) fn replace(&mut self, block: Option<Block>) {
        self.packing = false;
        let Some(block) = block else {
            return;
        };
        let first = self.raw.front().map(|(d, _)| d.index());
        if first != Some(block.first) || self.raw.len() < block.len() {
            return;
        }
        let mut freed = 0;
        for (dispatch, _) in self.raw.drain(..block.len()) {
            freed += dispatch.payload().len() + RAW_OVERHEAD;
        }
        self.sub(freed, 0);
        self.add(block.cost(), 0);
        self.blocks.push_back(block);
    }

    /// Drops what is too old, and the oldest while over a bound.
    pub(crate) fn expire(&mut self, now: Instant) {
        loop {
            let newest_of_oldest = match (self.blocks.front(), self.raw.front()) {
                (Some(block), _) => block.newest,
                (None, Some((_, at))) => *at,
                (None, None) => return,
            };
            let over = self.events > self.limits.max_events
                || self.bytes > self.limits.max_bytes
                || self.limits.budget.over()
                || now.saturating_duration_since(newest_of_oldest) > self.limits.max_age;
            if !over {
                return;
            }
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        if let Some(block) = self.blocks.pop_front() {
            self.floor = block.last();
            self.sub(block.cost(), block.len());
            self.payload_bytes -= block.payload_len();
        } else if let Some((dispatch, _)) = self.raw.pop_front() {
            self.floor = dispatch.index();
            self.sub(dispatch.payload().len() + RAW_OVERHEAD, 1);
            self.payload_bytes -= dispatch.payload().len();
        }
        self.dropping = true;
        self.reset = None;
    }

    fn add(&mut self, bytes: usize, events: usize) {
        self.bytes += bytes;
        self.events += events;
        self.limits.budget.used.fetch_add(bytes, Ordering::Relaxed);
    }

    fn sub(&mut self, bytes: usize, events: usize) {
        self.bytes -= bytes;
        self.events -= events;
        self.limits.budget.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn clear(&mut self) {
        let (bytes, events) = (self.bytes, self.events);
        self.sub(bytes, events);
        self.blocks.clear();
        self.raw.clear();
        self.payload_bytes = 0;
        self.dropping = false;
    }

    /// Appends to `out` what comes after `after`, up to about `max_bytes`
    /// of payload (at least one piece); says what was found.
    pub(crate) fn read(&self, after: u64, max_bytes: usize, out: &mut Vec<Piece>) -> Found {
        if after < self.floor {
            return match self.reset {
                Some(reset) if after + 1 == reset => Found::Reset(reset),
                _ => Found::Gone,
            };
        }
        if after >= self.head {
            return match self.closed {
                Some((index, code)) if after >= index => Found::Closed(index, code),
                _ => Found::Events,
            };
        }
        let mut next = after + 1;
        let mut bytes = 0;
        let raw_first = self.raw.front().map_or(self.head + 1, |(d, _)| d.index());
        if next < raw_first {
            let start = self.blocks.partition_point(|b| b.last() < next);
            for block in self.blocks.range(start..) {
                out.push(Piece::Packed(block.clone()));
                next = block.last() + 1;
                bytes += block.cost() * 4;
                if bytes >= max_bytes {
                    return Found::Events;
                }
            }
        }
        let skip = usize::try_from(next.saturating_sub(raw_first)).unwrap_or(usize::MAX);
        for (dispatch, _) in self.raw.range(skip.min(self.raw.len())..) {
            out.push(Piece::Raw(dispatch.clone()));
            bytes += dispatch.payload().len();
            if bytes >= max_bytes {
                break;
            }
        }
        Found::Events
    }

    /// The floor (every dispatch after it is held) and the head.
    pub(crate) fn window(&self) -> (u64, u64) {
        (self.floor, self.head)
    }

    /// Whether dispatches were dropped for room or age since the last
    /// reset.
    pub(crate) fn dropping(&self) -> bool {
        self.dropping
    }

    /// Dispatches and bytes held (payloads, compressed where packed, and
    /// what holding each costs).
    #[cfg(test)]
    pub(crate) fn len_bytes(&self) -> (usize, usize) {
        (self.events, self.bytes)
    }

    /// What the ring holds, for metrics.
    pub(crate) fn stats(&self) -> RingStats {
        RingStats {
            events: self.events,
            bytes: self.bytes,
            payload_bytes: self.payload_bytes,
        }
    }
}

/// The most one block's dispatches may take unpacked, read back from a
/// checkpoint (what the ring packs is far less: 128 dispatches).
const MAX_BLOCK_PAYLOAD: usize = 256 << 20;

/// What a ring holds at one moment, for a checkpoint: its window and its
/// dispatches, packed and raw.
#[derive(Debug)]
pub(crate) struct RingImage {
    floor: u64,
    head: u64,
    served: bool,
    blocks: Vec<Block>,
    raw: Vec<(Dispatch, Instant)>,
}

impl RingImage {
    /// The index of the newest event.
    pub(crate) fn head(&self) -> u64 {
        self.head
    }

    /// About how many bytes [`RingImage::write`] takes.
    pub(crate) fn len_hint(&self) -> usize {
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| b.data.len() + 4 * b.len() + 24)
            .sum();
        let raw: usize = self.raw.iter().map(|(d, _)| d.payload().len() + 12).sum();
        blocks + raw + 32
    }

    /// Appends the image, ages counted back from `at`.
    pub(crate) fn write(&self, at: Instant, out: &mut Vec<u8>) {
        let age = |then: Instant| {
            u64::try_from(at.saturating_duration_since(then).as_millis()).unwrap_or(u64::MAX)
        };
        out.extend_from_slice(&self.floor.to_le_bytes());
        out.extend_from_slice(&self.head.to_le_bytes());
        out.push(u8::from(self.served));
        out.extend_from_slice(&count(self.blocks.len()).to_le_bytes());
        for block in &self.blocks {
            out.extend_from_slice(&block.first.to_le_bytes());
            out.extend_from_slice(&age(block.newest).to_le_bytes());
            out.extend_from_slice(&count(block.ends.len()).to_le_bytes());
            for end in block.ends.iter() {
                out.extend_from_slice(&end.to_le_bytes());
            }
            out.extend_from_slice(&count(block.stamps.len()).to_le_bytes());
            for (at, audience) in block.stamps.iter() {
                out.extend_from_slice(&at.to_le_bytes());
                audience.write(out);
            }
            put_bytes(out, &block.data);
        }
        out.extend_from_slice(&count(self.raw.len()).to_le_bytes());
        for (dispatch, then) in &self.raw {
            out.extend_from_slice(&age(*then).to_le_bytes());
            dispatch.audience().write(out);
            put_bytes(out, dispatch.payload());
        }
    }

    /// Reads an image written `written_age` ago; checks that it holds every
    /// dispatch after its floor up to its head, one by one, each a gateway
    /// payload, and blocks within bounds (a block is unpacked only when
    /// read, and checked then).
    pub(crate) fn read(reader: &mut Reader<'_>, written_age: Duration) -> Result<Self, Error> {
        let now = Instant::now();
        let at = |age_ms: u64| {
            now.checked_sub(written_age + Duration::from_millis(age_ms))
                .unwrap_or(now)
        };
        let floor = reader.u64()?;
        let head = reader.u64()?;
        let served = match reader.u8()? {
            0 => false,
            1 => true,
            other => return Err(Error::checkpoint(format!("ring served flag {other}"))),
        };
        let mut next = floor
            .checked_add(1)
            .ok_or_else(|| Error::checkpoint("ring floor"))?;
        let blocks_count = reader.count(24)?;
        let mut blocks = Vec::with_capacity(blocks_count);
        for _ in 0..blocks_count {
            let first = reader.u64()?;
            let newest = at(reader.u64()?);
            let len = reader.count(4)?;
            if first != next || len == 0 || len > BLOCK_EVENTS {
                return Err(Error::checkpoint(format!(
                    "a ring block of {len} from {first} where {next} was due"
                )));
            }
            let mut ends = Vec::with_capacity(len);
            let mut last = 0;
            for _ in 0..len {
                let end = reader.u32()?;
                if end <= last || end as usize > MAX_BLOCK_PAYLOAD {
                    return Err(Error::checkpoint("a ring block's offsets"));
                }
                ends.push(end);
                last = end;
            }
            let stamp_count = reader.count(5)?;
            let mut stamps = Vec::with_capacity(stamp_count.min(len));
            let mut next_place = 0;
            for _ in 0..stamp_count {
                let at = reader.u32()?;
                if at < next_place || at as usize >= len {
                    return Err(Error::checkpoint("a ring block's audiences"));
                }
                next_place = at + 1;
                stamps.push((at, Audience::read(reader)?));
            }
            let data = Bytes::copy_from_slice(reader.bytes()?);
            next = next.saturating_add(len as u64);
            blocks.push(Block {
                first,
                data,
                ends: ends.into(),
                stamps: stamps.into(),
                newest,
                unpacked: Arc::default(),
            });
        }
        let raw_count = reader.count(13)?;
        let mut raw = Vec::with_capacity(raw_count);
        for _ in 0..raw_count {
            let then = at(reader.u64()?);
            let audience = Audience::read(reader)?;
            let payload = Bytes::copy_from_slice(reader.bytes()?);
            let dispatch = Dispatch::stamped(next, payload, audience)
                .ok_or_else(|| Error::checkpoint(format!("ring dispatch {next} is not one")))?;
            raw.push((dispatch, then));
            next = next.saturating_add(1);
        }
        if next - 1 != head || (!served && next - 1 != floor) {
            return Err(Error::checkpoint(format!(
                "the ring holds up to {}, its head is {head}",
                next - 1
            )));
        }
        Ok(Self {
            floor,
            head,
            served,
            blocks,
            raw,
        })
    }
}

/// A count as a checkpoint writes it.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Ring {
    /// What the ring holds now, for a checkpoint (shared copies: cheap).
    pub(crate) fn image(&self) -> RingImage {
        RingImage {
            floor: self.floor,
            head: self.head,
            served: self.served,
            blocks: self.blocks.iter().cloned().collect(),
            raw: self.raw.iter().cloned().collect(),
        }
    }

    /// A ring holding what `image` held, within `limits` at `now`.
    pub(crate) fn restored(limits: RingLimits, image: RingImage, now: Instant) -> Self {
        let mut ring = Self::new(limits);
        ring.floor = image.floor;
        ring.head = image.head;
        ring.served = image.served || ring.limits.keep_unserved;
        for block in image.blocks {
            ring.add(block.cost(), block.len());
            ring.payload_bytes += block.payload_len();
            ring.blocks.push_back(block);
        }
        for (dispatch, at) in image.raw {
            ring.add(dispatch.payload().len() + RAW_OVERHEAD, 1);
            ring.payload_bytes += dispatch.payload().len();
            ring.raw.push_back((dispatch, at));
        }
        ring.expire(now);
        ring
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    // Indexes of a few hundred events.
    #![allow(clippy::cast_possible_truncation)]

    use super::*;

    fn dispatch(index: u64, size: usize) -> ShardEvent {
        let payload = Bytes::from(format!(
            r#"{{"t":"X","s":{index},"op":0,"d":"{}"}}"#,
            "x".repeat(size)
        ));
        ShardEvent::Dispatch(Dispatch::new(index, payload).unwrap())
    }

    /// What a reader after `after` gets: indexes, or what it found instead.
    fn read(ring: &Ring, after: u64) -> Result<Vec<u64>, Found> {
        let mut pieces = Vec::new();
        match ring.read(after, usize::MAX, &mut pieces) {
            Found::Events => {}
            other => return Err(other),
        }
        let mut indexes = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Raw(d) => indexes.push(d.index()),
                Piece::Packed(block) => {
                    indexes.extend(block.unpack().unwrap().iter().map(Dispatch::index));
                }
            }
        }
        indexes.retain(|&i| i > after);
        Ok(indexes)
    }

    fn served(limits: RingLimits) -> Ring {
        let mut ring = Ring::new(limits);
        ring.serve();
        ring
    }

    #[test]
    fn it_replays_what_it_still_holds_and_says_when_it_does_not() {
        let mut ring = served(RingLimits::alone(3, usize::MAX));
        let now = Instant::now();
        for i in 1..=5 {
            ring.push(&dispatch(i, 1), now);
        }
        assert_eq!(read(&ring, 2), Ok(vec![3, 4, 5]));
        assert_eq!(read(&ring, 4), Ok(vec![5]));
        assert_eq!(read(&ring, 5), Ok(vec![]));
        assert_eq!(read(&ring, 1), Err(Found::Gone), "2 is gone");
        ring.push(&ShardEvent::Reset { index: 6 }, now);
        assert_eq!(
            read(&ring, 5),
            Err(Found::Reset(6)),
            "up to date: the reset"
        );
        assert_eq!(read(&ring, 4), Err(Found::Gone), "behind across a reset");
        assert_eq!(read(&ring, 6), Ok(vec![]));
        assert_eq!(ring.len_bytes(), (0, 0), "a reset empties it");
    }

    #[test]
    fn it_keeps_nothing_until_a_client_is_served() {
        let mut ring = Ring::new(RingLimits::alone(100, usize::MAX));
        let now = Instant::now();
        ring.push(&dispatch(1, 10), now);
        assert_eq!(ring.len_bytes().0, 0);
        assert_eq!(read(&ring, 0), Err(Found::Gone));
        ring.serve();
        ring.push(&dispatch(2, 10), now);
        assert_eq!(read(&ring, 1), Ok(vec![2]));
    }

    #[test]
    fn a_close_for_good_comes_after_every_event_before_it() {
        let mut ring = served(RingLimits::alone(100, usize::MAX));
        let now = Instant::now();
        ring.push(&dispatch(1, 1), now);
        ring.push(
            &ShardEvent::Closed {
                index: 1,
                code: 4014,
            },
            now,
        );
        assert_eq!(read(&ring, 0), Ok(vec![1]));
        assert_eq!(read(&ring, 1), Err(Found::Closed(1, 4014)));
    }

    #[test]
    fn bytes_bound_it_too() {
        let mut ring = served(RingLimits::alone(usize::MAX, 10 * (50 + RAW_OVERHEAD)));
        let now = Instant::now();
        for i in 1..=100 {
            ring.push(&dispatch(i, 50), now);
        }
        let (events, bytes) = ring.len_bytes();
        assert!(bytes <= 10 * (50 + RAW_OVERHEAD), "{bytes} bytes");
        assert!(events >= 8, "{events} events");
        assert_eq!(
            read(&ring, 100 - events as u64).map(|v| v.len()),
            Ok(events)
        );
    }

    #[test]
    fn age_bounds_it() {
        let mut limits = RingLimits::alone(usize::MAX, usize::MAX);
        limits.max_age = Duration::from_secs(10);
        let mut ring = served(limits);
        let start = Instant::now();
        for i in 1..=5 {
            ring.push(&dispatch(i, 1), start);
        }
        ring.push(&dispatch(6, 1), start + Duration::from_secs(5));
        ring.expire(start + Duration::from_secs(11));
        assert_eq!(read(&ring, 5), Ok(vec![6]), "the last is 6 s old");
        assert_eq!(
            read(&ring, 4),
            Err(Found::Gone),
            "the first five are 11 s old"
        );
        ring.expire(start + Duration::from_secs(16));
        assert_eq!(ring.len_bytes(), (0, 0));
        assert_eq!(read(&ring, 6), Ok(vec![]), "empty, but up to date");
    }

    #[test]
    fn packed_blocks_are_read_back_exactly() {
        let mut limits = RingLimits::alone(usize::MAX, usize::MAX);
        limits.raw_events = 8;
        let mut ring = served(limits);
        let now = Instant::now();
        let mut payloads = vec![Bytes::new()];
        let total = 6 * BLOCK_EVENTS as u64 + 8;
        for i in 1..=total {
            let event = dispatch(i, (i as usize * 7) % 300);
            if let ShardEvent::Dispatch(d) = &event {
                payloads.push(d.payload().clone());
            }
            ring.push(&event, now);
            ring.pack(now + RAW_AGE);
        }
        assert!(ring.blocks.len() >= 5, "{} blocks", ring.blocks.len());
        let stats = ring.stats();
        assert_eq!(stats.events as u64, total);
        assert_eq!(
            stats.payload_bytes,
            payloads.iter().map(Bytes::len).sum::<usize>()
        );
        assert!(
            stats.bytes < stats.payload_bytes,
            "{stats:?}: packed is smaller"
        );
        assert!(ring.raw.len() < 8 + BLOCK_EVENTS);
        let block = BLOCK_EVENTS as u64;
        for after in [
            0,
            1,
            block - 1,
            block,
            block + 1,
            3 * block + 5,
            total - 1,
            total,
        ] {
            let mut pieces = Vec::new();
            assert_eq!(ring.read(after, usize::MAX, &mut pieces), Found::Events);
            let mut got = Vec::new();
            for piece in pieces {
                match piece {
                    Piece::Raw(d) => got.push(d),
                    Piece::Packed(block) => got.extend(block.unpack().unwrap().iter().cloned()),
                }
            }
            got.retain(|d| d.index() > after);
            assert_eq!(got.len() as u64, total - after);
            for d in got {
                assert_eq!(d.payload(), &payloads[d.index() as usize], "{}", d.index());
                assert_eq!(d.scan().seq(), Some(d.index()));
            }
        }
    }

    #[test]
    fn audiences_survive_packing_and_a_checkpoint() {
        let mut limits = RingLimits::alone(usize::MAX, usize::MAX);
        limits.raw_events = 2;
        let mut ring = served(limits.clone());
        let now = Instant::now();
        let stamp = |i: u64| match i % 7 {
            0 => Audience::Session(format!("s{i}").into()),
            3 => Audience::Nobody,
            _ => Audience::Everyone,
        };
        let total = BLOCK_EVENTS as u64 + 10;
        for i in 1..=total {
            let payload = Bytes::from(format!(r#"{{"t":"X","s":{i},"op":0,"d":{{}}}}"#));
            let d = Dispatch::stamped(i, payload, stamp(i)).unwrap();
            ring.push(&ShardEvent::Dispatch(d), now);
        }
        ring.pack(now + RAW_AGE);
        assert_eq!(ring.blocks.len(), 1);
        let check = |ring: &Ring| {
            let mut pieces = Vec::new();
            assert_eq!(ring.read(0, usize::MAX, &mut pieces), Found::Events);
            let mut seen = 0;
            for piece in pieces {
                let dispatches = match piece {
                    Piece::Raw(d) => vec![d],
                    Piece::Packed(block) => block.unpack().unwrap().to_vec(),
                };
                for d in dispatches {
                    assert_eq!(*d.audience(), stamp(d.index()), "{}", d.index());
                    seen += 1;
                }
            }
            assert_eq!(seen, total);
        };
        check(&ring);
        let mut bytes = Vec::new();
        ring.image().write(now, &mut bytes);
        let mut reader = Reader::new(&bytes, "the ring");
        let image = RingImage::read(&mut reader, Duration::ZERO).unwrap();
        check(&Ring::restored(limits, image, now));
    }

    #[test]
    fn what_stays_raw_the_newest_the_young_and_a_quiet_shards_few() {
        let mut limits = RingLimits::alone(usize::MAX, usize::MAX);
        limits.raw_events = 4;
        let mut ring = served(limits);
        let now = Instant::now();
        let many = 3 * BLOCK_EVENTS as u64;
        for i in 1..=many {
            ring.push(&dispatch(i, 40), now);
        }
        assert!(
            ring.start_packing(now).is_none() && !ring.may_pack(now),
            "younger than RAW_AGE"
        );
        assert!(ring.may_pack(now + RAW_AGE));
        let (block, _) = ring.start_packing(now + RAW_AGE).unwrap();
        assert_eq!(block.len(), BLOCK_EVENTS, "a full block once old enough");
        assert_eq!(block[0].index(), 1);
        ring.replace(None);
        assert_eq!(
            ring.start_packing(now + RAW_AGE).map(|(b, _)| b[0].index()),
            Some(1),
            "a block that failed to pack leaves them raw, to be packed again"
        );

        // A quiet shard: a few events, never a full block.
        let mut quiet = served(RingLimits {
            raw_events: 4,
            ..RingLimits::alone(usize::MAX, usize::MAX)
        });
        let few = MIN_BLOCK_EVENTS as u64 + 4;
        for i in 1..=few {
            quiet.push(&dispatch(i, 40), now);
        }
        assert!(
            quiet.start_packing(now + RAW_AGE).is_none(),
            "too few for a block"
        );
        assert!(quiet.may_pack(now + QUIET_AGE));
        let (block, newest) = quiet.start_packing(now + QUIET_AGE).unwrap();
        assert_eq!(
            block.len(),
            MIN_BLOCK_EVENTS,
            "all but the newest raw_events, once quiet"
        );
        assert!(
            quiet.start_packing(now + QUIET_AGE).is_none() && !quiet.may_pack(now + QUIET_AGE),
            "one block in flight at a time"
        );
        quiet.replace(Block::pack(&block, newest));
        assert_eq!(quiet.raw.len(), 4);
        assert_eq!(quiet.blocks.len(), 1);
        assert!(
            quiet.start_packing(now + 10 * QUIET_AGE).is_none(),
            "the newest raw_events stay raw"
        );
    }

    #[test]
    fn readers_of_a_block_share_one_unpacking_while_they_hold_it() {
        let mut limits = RingLimits::alone(usize::MAX, usize::MAX);
        limits.raw_events = 1;
        let mut ring = served(limits);
        let now = Instant::now();
        for i in 1..=BLOCK_EVENTS as u64 + 1 {
            ring.push(&dispatch(i, 40), now);
        }
        ring.pack(now + RAW_AGE);
        let mut pieces = Vec::new();
        assert_eq!(ring.read(0, usize::MAX, &mut pieces), Found::Events);
        let Some(Piece::Packed(block)) = pieces.first() else {
            panic!("the oldest are packed: {pieces:?}");
        };
        let (one, two) = (block.unpack().unwrap(), block.unpack().unwrap());
        assert!(Arc::ptr_eq(&one, &two), "one unpacking for both");
        assert_eq!(one.len(), BLOCK_EVENTS);
        let held = || {
            let cache = block.unpacked.lock().unwrap();
            cache.as_ref().map_or(0, Weak::strong_count)
        };
        assert_eq!(held(), 2);
        drop((one, two));
        assert_eq!(held(), 0, "let go when no reader holds it");
        let again = block.unpack().unwrap();
        assert_eq!(again.len(), BLOCK_EVENTS, "and unpacked anew");
        assert_eq!(held(), 1);
    }

    #[test]
    fn one_budget_is_shared_and_the_ring_that_pushes_makes_room() {
        let budget = ReplayBudget::new(40 * (100 + RAW_OVERHEAD));
        let limits = |budget: &Arc<ReplayBudget>| RingLimits {
            budget: budget.clone(),
            ..RingLimits::alone(usize::MAX, usize::MAX)
        };
        let (mut quiet, mut busy) = (served(limits(&budget)), served(limits(&budget)));
        let now = Instant::now();
        for i in 1..=10 {
            quiet.push(&dispatch(i, 100), now);
        }
        for i in 1..=1000 {
            busy.push(&dispatch(i, 100), now);
            assert!(budget.used() <= budget.max(), "{} at {i}", budget.used());
        }
        assert_eq!(quiet.len_bytes().0, 10, "the quiet ring keeps its own");
        let one = 100 + 40 + RAW_OVERHEAD;
        assert!(
            budget.max() - budget.used() < one,
            "the busy one has the rest: {} of {}",
            budget.used(),
            budget.max()
        );
        drop(busy);
        assert_eq!(
            budget.used(),
            quiet.len_bytes().1,
            "a dropped ring gives back"
        );
    }
}
