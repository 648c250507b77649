//! A cache written out whole and read back: its packed form as it is.
//!
//! The cache keeps everything packed already (see the `packed` module), so
//! a checkpoint is a copy of those bytes with their lengths and ids, and
//! the key table their key numbers refer to; reading one back is copying
//! them into place and checking each, never parsing JSON. The totals that
//! [`Cache::stats`] reads are counted again while loading.
//!
//! Layout (integers are LEB128 varints unless said otherwise):
//!
//! ```text
//! version (1 byte) | flags (varint bits)
//! keys: count, then each name: length, bytes
//! READY: 0 | 1, length, bytes       bot id: 0 | 1, u64 LE
//! guilds: count, then each: id (u64 LE), 0 (unavailable) | 1 and
//!   head: length, bytes; member_count: 0 | 1, varint
//!   each list (in `ListKind::ALL` order): count, then (id u64 LE, length, bytes)
//!   members, presences: the same
//! pending: count, then ids (u64 LE)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::cache::Cache;
use crate::error::Error;
use crate::flags::Flags;
use crate::guild::{Counts, Guild, ListKind};
use crate::packed::{self, Keys};

/// The layout's version: a checkpoint of another is refused.
const VERSION: u8 = 1;

impl Cache {
    /// Appends everything the cache holds to `out`, in its packed form: see
    /// [`Cache::restore`] for reading it back.
    pub fn checkpoint(&self, out: &mut Vec<u8>) {
        out.push(VERSION);
        put(out, u64::from(self.flags.bits()));
        let names = self.keys.names();
        put(out, names.len() as u64);
        for name in names {
            put_bytes(out, name.as_bytes());
        }
        match &self.ready {
            Some(ready) => {
                out.push(1);
                put_bytes(out, ready);
            }
            None => out.push(0),
        }
        match self.bot_id {
            Some(id) => {
                out.push(1);
                out.extend_from_slice(&id.to_le_bytes());
            }
            None => out.push(0),
        }
        put(out, self.guilds.len() as u64);
        for (&id, guild) in &self.guilds {
            out.extend_from_slice(&id.to_le_bytes());
            let Some(guild) = guild else {
                out.push(0);
                continue;
            };
            out.push(1);
            put_bytes(out, &guild.head);
            match guild.member_count {
                Some(n) => {
                    out.push(1);
                    put(out, n);
                }
                None => out.push(0),
            }
            for kind in ListKind::ALL {
                let list = guild.list(kind);
                put(out, list.len() as u64);
                for (id, value) in list.items() {
                    out.extend_from_slice(&id.to_le_bytes());
                    put_bytes(out, value);
                }
            }
            for map in [&guild.members, &guild.presences] {
                put(out, map.len() as u64);
                for (id, value) in map.iter() {
                    out.extend_from_slice(&id.to_le_bytes());
                    put_bytes(out, value);
                }
            }
        }
        put(out, self.pending.len() as u64);
        for id in &self.pending {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }

    /// The cache [`checkpoint`](Self::checkpoint) wrote, for a pool that
    /// keeps what `flags` says.
    ///
    /// # Errors
    ///
    /// A checkpoint of another layout version or other flags, or one that
    /// is cut short, has bytes after its end, or holds a value that is not
    /// well-formed packed JSON over its own key table: nothing is trusted
    /// that was not checked, so a damaged checkpoint is an error, never a
    /// cache that writes broken JSON.
    pub fn restore(flags: Flags, bytes: &[u8]) -> Result<Self, Error> {
        let mut reader = Reader { bytes, pos: 0 };
        let cache = read_cache(flags, &mut reader).ok_or_else(|| reader.error())?;
        if reader.pos != bytes.len() {
            return Err(Error::checkpoint(format!(
                "{} bytes after the end, at byte {}",
                bytes.len() - reader.pos,
                reader.pos
            )));
        }
        Ok(cache)
    }
}

fn read_cache(flags: Flags, r: &mut Reader<'_>) -> Option<Cache> {
    if r.byte()? != VERSION || r.varint()? != u64::from(flags.bits()) {
        return None;
    }
    let count = r.len()?;
    let mut names = Vec::with_capacity(count.min(1 << 10));
    for _ in 0..count {
        names.push(std::str::from_utf8(r.bytes()?).ok()?);
    }
    let keys = Keys::from_names(names)?;
    let known = keys.len();
    let value = |r: &mut Reader<'_>| -> Option<Box<[u8]>> {
        let value = r.bytes()?;
        packed::is_valid(value, known).then(|| value.into())
    };
    let mut cache = Cache::new(flags);
    cache.ready = match r.byte()? {
        0 => None,
        1 => Some(Arc::from(value(r)?)),
        _ => return None,
    };
    cache.bot_id = match r.byte()? {
        0 => None,
        1 => Some(r.u64()?),
        _ => return None,
    };
    let mut guilds = BTreeMap::new();
    let mut totals = Counts::default();
    let mut unavailable = 0;
    for _ in 0..r.len()? {
        let id = r.u64()?;
        let guild = match r.byte()? {
            0 => {
                unavailable += 1;
                None
            }
            1 => {
                let mut guild = Guild::default();
                guild.head = value(r)?;
                guild.member_count = match r.byte()? {
                    0 => None,
                    1 => Some(r.varint()?),
                    _ => return None,
                };
                for kind in ListKind::ALL {
                    for _ in 0..r.len()? {
                        let item = r.u64()?;
                        guild.list_mut(kind).put(item, value(r)?);
                    }
                }
                for map in [&mut guild.members, &mut guild.presences] {
                    let count = r.len()?;
                    let mut items = Vec::with_capacity(count.min(1 << 16));
                    for _ in 0..count {
                        items.push((r.u64()?, value(r)?));
                    }
                    map.extend(items);
                }
                totals.add(&guild.counts());
                Some(Arc::new(guild))
            }
            _ => return None,
        };
        if guilds.insert(id, guild).is_some() {
            return None;
        }
    }
    let mut pending = BTreeSet::new();
    for _ in 0..r.len()? {
        pending.insert(r.u64()?);
    }
    cache.keys = Arc::new(keys);
    cache.guilds = guilds;
    cache.totals = totals;
    cache.unavailable = unavailable;
    cache.pending = pending;
    Some(cache)
}

/// Reads a checkpoint, remembering how far it got for the error.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn error(&self) -> Error {
        Error::checkpoint(format!(
            "not a cache checkpoint of this version and these flags, or damaged, at byte {} of {}",
            self.pos,
            self.bytes.len()
        ))
    }

    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn u64(&mut self) -> Option<u64> {
        let bytes = self.bytes.get(self.pos..self.pos.checked_add(8)?)?;
        self.pos += 8;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }

    fn varint(&mut self) -> Option<u64> {
        packed::strict_varint(self.bytes, &mut self.pos)
    }

    /// A count or a length: never more than what is left to read, so a
    /// damaged count cannot make the reader reserve or loop for long.
    fn len(&mut self) -> Option<usize> {
        let n = usize::try_from(self.varint()?).ok()?;
        (n <= self.bytes.len() - self.pos).then_some(n)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.len()?;
        let bytes = self.bytes.get(self.pos..self.pos + n)?;
        self.pos += n;
        Some(bytes)
    }
}

fn put(out: &mut Vec<u8>, v: u64) {
    packed::put_varint(out, v);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}
