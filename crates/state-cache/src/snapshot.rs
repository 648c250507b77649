//! What a cache held at one moment, written out without the cache; and the
//! writers of READY and `GUILD_CREATE`/`GUILD_DELETE` that both use.

use std::fmt;
use std::iter::FusedIterator;
use std::sync::Arc;
use std::vec;

use crate::cache::Session;
use crate::error::Error;
use crate::guild::Guild;
use crate::packed::{self, Keys, key};

/// What a [`Cache`](crate::Cache) held when
/// [`Cache::snapshot`](crate::Cache::snapshot) was called, with the same
/// writers: the same bytes the cache wrote then, whatever the cache has
/// applied since.
///
/// It is meant to be taken under the lock that guards the cache, and
/// written from after the lock is released, so that a client's READY and
/// `GUILD_CREATE`s do not stall the shard.
///
/// # Cost
///
/// Taking a snapshot copies no guild: it clones an `Arc` for the key
/// table, one for READY and one for each guild, into one new vector
/// (16 bytes a guild). For a shard of 1000 guilds that is microseconds.
///
/// The guilds and the key table are then shared, copy on write: the first
/// time the cache changes a guild that a snapshot still holds, the cache
/// copies that guild (every member, channel and presence of it) and
/// changes the copy, once, under the caller's lock; later changes go to
/// the copy. Likewise a key new to the cache copies its key table (a few
/// hundred keys) once. A guild is released when the snapshot is dropped,
/// or, with [`into_guilds`](Self::into_guilds), as soon as it is written
/// and its [`SnapshotGuild`] dropped: a client that reads slowly does not
/// keep every guild of the shard in two versions.
///
/// ```
/// use state_cache::{Cache, Flags, Session};
///
/// let mut cache = Cache::new(Flags::default());
/// cache.apply("READY", br#"{"user":{"id":"10"},"guilds":[{"id":"20","unavailable":true}],"session_id":"s"}"#)?;
/// let snapshot = cache.snapshot(); // under the shard's lock
/// cache.apply("GUILD_CREATE", br#"{"id":"20","name":"crabs"}"#)?;
///
/// // Without the lock:
/// let mut out = Vec::new();
/// let session = Session { session_id: "0123", resume_gateway_url: "ws://proxy" };
/// snapshot.write_ready(1, session, &mut out)?;
/// for (seq, guild) in (2..).zip(snapshot.into_guilds()) {
///     out.clear();
///     guild.write(seq, &mut out);
///     // Still unavailable, as it was when the snapshot was taken.
///     assert!(out.starts_with(br#"{"t":"GUILD_DELETE","s":2,"op":0,"d":{"id":"20""#));
/// }
/// # Ok::<(), state_cache::Error>(())
/// ```
#[derive(Clone)]
pub struct Snapshot {
    keys: Arc<Keys>,
    /// READY's `d`, packed, without `guilds`.
    ready: Option<Arc<[u8]>>,
    /// Every guild by id, in id order; `None` while it was unavailable.
    guilds: Vec<(u64, Option<Arc<Guild>>)>,
}

impl Snapshot {
    pub(crate) fn new(
        keys: Arc<Keys>,
        ready: Option<Arc<[u8]>>,
        guilds: Vec<(u64, Option<Arc<Guild>>)>,
    ) -> Self {
        debug_assert!(guilds.is_sorted_by_key(|(id, _)| *id));
        Self {
            keys,
            ready,
            guilds,
        }
    }

    /// Appends the READY payload for a client, as
    /// [`Cache::write_ready`](crate::Cache::write_ready) wrote it when the
    /// snapshot was taken.
    ///
    /// # Errors
    ///
    /// When the cache had not applied a READY yet.
    pub fn write_ready(
        &self,
        seq: u64,
        session: Session<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        write_ready(
            self.ready.as_deref(),
            &self.keys,
            self.guild_ids(),
            seq,
            session,
            out,
        )
    }

    /// The ids of the guilds, available or not, in id order.
    #[must_use = "an iterator does nothing unless consumed"]
    pub fn guild_ids(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        self.guilds.iter().map(|(id, _)| *id)
    }

    /// How many guilds, available or not.
    #[must_use]
    pub fn len(&self) -> usize {
        self.guilds.len()
    }

    /// Whether there is no guild.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.guilds.is_empty()
    }

    /// Appends the payload about guild `id`, as
    /// [`Cache::write_guild`](crate::Cache::write_guild) wrote it when the
    /// snapshot was taken. Returns `false`, appending nothing, for a guild
    /// the cache did not hold.
    pub fn write_guild(&self, id: u64, seq: u64, out: &mut Vec<u8>) -> bool {
        let Ok(i) = self.guilds.binary_search_by_key(&id, |(id, _)| *id) else {
            return false;
        };
        write_guild(id, self.guilds[i].1.as_deref(), &self.keys, seq, out);
        true
    }

    /// The guilds one by one, in id order, each released when the
    /// [`SnapshotGuild`] is dropped. Write READY first: this consumes the
    /// snapshot.
    #[must_use = "an iterator does nothing unless consumed"]
    pub fn into_guilds(self) -> SnapshotGuilds {
        SnapshotGuilds {
            keys: self.keys,
            guilds: self.guilds.into_iter(),
        }
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("ready", &self.ready.is_some())
            .field("guilds", &self.guilds.len())
            .finish_non_exhaustive()
    }
}

/// The guilds of a [`Snapshot`], one by one, in id order: see
/// [`Snapshot::into_guilds`].
#[derive(Clone)]
pub struct SnapshotGuilds {
    keys: Arc<Keys>,
    guilds: vec::IntoIter<(u64, Option<Arc<Guild>>)>,
}

impl Iterator for SnapshotGuilds {
    type Item = SnapshotGuild;

    fn next(&mut self) -> Option<SnapshotGuild> {
        let (id, guild) = self.guilds.next()?;
        Some(SnapshotGuild {
            id,
            guild,
            keys: Arc::clone(&self.keys),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.guilds.size_hint()
    }
}

impl ExactSizeIterator for SnapshotGuilds {}

impl FusedIterator for SnapshotGuilds {}

impl fmt::Debug for SnapshotGuilds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotGuilds")
            .field("left", &self.guilds.len())
            .finish_non_exhaustive()
    }
}

/// One guild of a [`Snapshot`], as it was when the snapshot was taken.
#[derive(Clone)]
pub struct SnapshotGuild {
    id: u64,
    /// `None` while it was unavailable.
    guild: Option<Arc<Guild>>,
    keys: Arc<Keys>,
}

impl SnapshotGuild {
    /// The guild's id.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the guild was available: [`write`](Self::write) writes
    /// `GUILD_CREATE` if so, `GUILD_DELETE` if not.
    #[must_use]
    pub fn is_available(&self) -> bool {
        self.guild.is_some()
    }

    /// Appends the payload about the guild, as
    /// [`Cache::write_guild`](crate::Cache::write_guild) wrote it when the
    /// snapshot was taken.
    pub fn write(&self, seq: u64, out: &mut Vec<u8>) {
        write_guild(self.id, self.guild.as_deref(), &self.keys, seq, out);
    }
}

impl fmt::Debug for SnapshotGuild {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotGuild")
            .field("id", &self.id)
            .field("available", &self.guild.is_some())
            .finish_non_exhaustive()
    }
}

/// Appends the READY payload: the packed READY `ready` with `session`'s
/// `session_id` and `resume_gateway_url`, and `guilds` set to an
/// unavailable stub for each id of `guild_ids`. Keys in the order
/// `t, s, op, d`, compact.
pub(crate) fn write_ready(
    ready: Option<&[u8]>,
    keys: &Keys,
    guild_ids: impl Iterator<Item = u64>,
    seq: u64,
    session: Session<'_>,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let ready = ready.ok_or_else(Error::no_ready)?;
    write_envelope_head(b"READY", seq, out);
    out.push(b'{');
    for (k, v) in packed::fields(ready) {
        if k.is(key::SESSION_ID) || k.is(key::RESUME_GATEWAY_URL) {
            continue;
        }
        packed::write_key(k, keys, out);
        packed::write_json(v, keys, out);
        out.push(b',');
    }
    packed::write_fixed_key(key::SESSION_ID, keys, out);
    packed::write_str(session.session_id, out);
    out.push(b',');
    packed::write_fixed_key(key::RESUME_GATEWAY_URL, keys, out);
    packed::write_str(session.resume_gateway_url, out);
    out.push(b',');
    packed::write_fixed_key(key::GUILDS, keys, out);
    out.push(b'[');
    for (i, id) in guild_ids.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_unavailable(id, out);
    }
    out.extend_from_slice(b"]}}");
    Ok(())
}

/// Appends the payload about guild `id`: `GUILD_CREATE` for `Some`,
/// `GUILD_DELETE` with `"unavailable":true` for `None`. Keys in the order
/// `t, s, op, d`, compact.
pub(crate) fn write_guild(
    id: u64,
    guild: Option<&Guild>,
    keys: &Keys,
    seq: u64,
    out: &mut Vec<u8>,
) {
    match guild {
        None => {
            write_envelope_head(b"GUILD_DELETE", seq, out);
            write_unavailable(id, out);
        }
        Some(guild) => {
            write_envelope_head(b"GUILD_CREATE", seq, out);
            guild.write_create(keys, out);
        }
    }
    out.push(b'}');
}

fn write_envelope_head(t: &[u8], seq: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"t\":\"");
    out.extend_from_slice(t);
    out.extend_from_slice(b"\",\"s\":");
    out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    out.extend_from_slice(b",\"op\":0,\"d\":");
}

fn write_unavailable(id: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"id\":\"");
    out.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    out.extend_from_slice(b"\",\"unavailable\":true}");
}
