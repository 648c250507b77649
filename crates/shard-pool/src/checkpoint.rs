//! Checkpoints: what a new process needs to carry a shard on where this one
//! stopped, as bytes for a [`Store`](crate::Store).
//!
//! A store holds one `manifest` and one `shard-<id>` blob per shard. Both
//! begin with the [`Identity`] they were written for (a SHA-256 of the
//! token, never the token; the shard count, the intents and the cache's
//! flags): a checkpoint of another bot or another configuration is
//! refused, never used. A shard's blob then holds, taken at one index under
//! the shard's locks: when it was written, the shard's ring, and the
//! pipeline (its numbering, the upstream session, the state cache in its
//! packed form). The layer above keeps its own blobs beside them (the
//! server's client sessions), tied to the upstream session they belong to.
//!
//! Everything is read back through a [`Reader`], which refuses what is cut
//! short or out of bounds with an error naming the part; a store checksums
//! each blob besides.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use state_cache::Flags;
use tokio::time::Instant;

use crate::error::Error;
use crate::pipeline::Pipeline;
use crate::ring::RingImage;
use crate::token::Token;

/// The layout of a shard's blob and of the manifest.
const VERSION: u8 = 1;
const SHARD_MAGIC: &[u8; 4] = b"GPSC";
const MANIFEST_MAGIC: &[u8; 4] = b"GPMF";

/// The name of a shard's blob in the store.
#[must_use]
pub(crate) fn shard_name(id: u32) -> String {
    format!("shard-{id}")
}

/// The name of the manifest in the store.
pub(crate) const MANIFEST: &str = "manifest";

/// Reads a checkpoint's parts in order; every read that would go past the
/// end is an [`ErrorKind::Checkpoint`](crate::ErrorKind::Checkpoint) naming
/// the part being read.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    part: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader of `bytes`, which hold `part` (for errors: "the ring").
    #[must_use]
    pub fn new(bytes: &'a [u8], part: &'static str) -> Self {
        Self { bytes, part }
    }

    fn cut(&self) -> Error {
        Error::checkpoint(format!("cut short in {}", self.part))
    }

    /// The next `n` bytes.
    ///
    /// # Errors
    ///
    /// If fewer are left.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.bytes.len() {
            return Err(self.cut());
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let (array, rest) = self
            .bytes
            .split_first_chunk::<N>()
            .ok_or_else(|| self.cut())?;
        self.bytes = rest;
        Ok(*array)
    }

    /// A byte.
    ///
    /// # Errors
    ///
    /// If none is left.
    pub fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }

    /// A little-endian `u32`.
    ///
    /// # Errors
    ///
    /// If fewer than 4 bytes are left.
    pub fn u32(&mut self) -> Result<u32, Error> {
        self.array().map(u32::from_le_bytes)
    }

    /// A little-endian `u64`.
    ///
    /// # Errors
    ///
    /// If fewer than 8 bytes are left.
    pub fn u64(&mut self) -> Result<u64, Error> {
        self.array().map(u64::from_le_bytes)
    }

    /// A `u32` count of items of at least `min_size` bytes each, checked
    /// against what is left, so that a damaged count cannot make a caller
    /// reserve more than the blob could hold.
    ///
    /// # Errors
    ///
    /// If cut short, or the count cannot fit in what is left.
    pub fn count(&mut self, min_size: usize) -> Result<usize, Error> {
        let count = usize::try_from(self.u32()?).unwrap_or(usize::MAX);
        if count.saturating_mul(min_size.max(1)) > self.bytes.len() {
            return Err(Error::checkpoint(format!(
                "{count} items in {} cannot fit in {} bytes",
                self.part,
                self.bytes.len()
            )));
        }
        Ok(count)
    }

    /// Bytes written by [`put_bytes`].
    ///
    /// # Errors
    ///
    /// If cut short.
    pub fn bytes(&mut self) -> Result<&'a [u8], Error> {
        let len = usize::try_from(self.u32()?).unwrap_or(usize::MAX);
        self.take(len)
    }

    /// A string written by [`put_str`].
    ///
    /// # Errors
    ///
    /// If cut short or not UTF-8.
    pub fn str(&mut self) -> Result<&'a str, Error> {
        let len = usize::from(u16::from_le_bytes(self.array()?));
        let part = self.part;
        std::str::from_utf8(self.take(len)?)
            .map_err(|_| Error::checkpoint(format!("a string in {part} is not UTF-8")))
    }

    /// A value written as a 0 (absent) or a 1 then the value.
    ///
    /// # Errors
    ///
    /// If cut short, if the marker is neither, or as `read`.
    pub fn option<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, Error>,
    ) -> Result<Option<T>, Error> {
        match self.u8()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            other => Err(Error::checkpoint(format!(
                "marker {other} in {}: neither absent (0) nor present (1)",
                self.part
            ))),
        }
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    /// Checks that nothing is left.
    ///
    /// # Errors
    ///
    /// If bytes are left over.
    pub fn finish(self) -> Result<(), Error> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(Error::checkpoint(format!(
                "{} bytes left over after {}",
                self.bytes.len(),
                self.part
            )))
        }
    }
}

/// Appends a string of at most 65,535 bytes (longer is cut at a character
/// boundary), for [`Reader::str`].
pub fn put_str(out: &mut Vec<u8>, text: &str) {
    let text = &text[..text.floor_char_boundary(usize::from(u16::MAX))];
    let len = u16::try_from(text.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// Appends bytes with their length, for [`Reader::bytes`].
///
/// # Panics
///
/// Never for what a checkpoint holds: parts over 4 GiB are not written.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&bytes[..len as usize]);
}

/// What a checkpoint must have been written for to be used: the same bot
/// (a SHA-256 of its token), shard count, intents and cache flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    token: [u8; 32],
    total: u32,
    intents: u64,
    flags: u32,
}

impl Identity {
    pub(crate) fn new(token: &Token, total: u32, intents: u64, flags: Flags) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.expose().as_bytes());
        let mut hash = [0; 32];
        hash.copy_from_slice(digest.as_ref());
        Self {
            token: hash,
            total,
            intents,
            flags: flags.bits(),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.token);
        out.extend_from_slice(&self.total.to_le_bytes());
        out.extend_from_slice(&self.intents.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
    }

    fn read(reader: &mut Reader<'_>) -> Result<Self, Error> {
        Ok(Self {
            token: reader.array()?,
            total: reader.u32()?,
            intents: reader.u64()?,
            flags: reader.u32()?,
        })
    }

    /// Checks that `found` is this identity; the error names what differs.
    fn check(&self, found: &Self) -> Result<(), Refused> {
        let differs = if found.token != self.token {
            "another bot token".to_owned()
        } else if found.total != self.total {
            format!("{} shards, not {}", found.total, self.total)
        } else if found.intents != self.intents {
            format!("intents {}, not {}", found.intents, self.intents)
        } else if found.flags != self.flags {
            "other cache settings".to_owned()
        } else {
            return Ok(());
        };
        Err(Refused::Foreign(differs))
    }
}

/// Why a checkpoint was not used: the shard identifies as usual.
#[derive(Debug)]
pub(crate) enum Refused {
    /// There is none.
    Missing,
    /// Written for another bot or configuration: what differs.
    Foreign(String),
    /// Older than the limit: its age.
    Stale(Duration),
    /// Damaged, or of another layout: why.
    Corrupt(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing => f.write_str("no checkpoint"),
            Self::Foreign(what) => write!(f, "the checkpoint is of {what}"),
            Self::Stale(age) => write!(
                f,
                "the checkpoint is {} s old, over checkpoint_max_age_secs",
                age.as_secs()
            ),
            Self::Corrupt(why) => write!(f, "the checkpoint is unusable: {why}"),
        }
    }
}

impl From<Error> for Refused {
    fn from(error: Error) -> Self {
        Self::Corrupt(match error.kind() {
            crate::ErrorKind::Checkpoint(why) => why.clone(),
            _ => error.to_string(),
        })
    }
}

/// The wall clock checkpoints are stamped with. A checkpoint is read by
/// another process, maybe on another machine, so its times are wall-clock
/// times; this is the one place the proxy reads one.
#[allow(
    clippy::disallowed_methods,
    reason = "a timestamp for another process, not a timer"
)]
#[must_use]
pub fn wall_clock() -> SystemTime {
    SystemTime::now()
}

/// Milliseconds since the Unix epoch (0 before it).
#[must_use]
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How old something written at `written_ms` (Unix milliseconds) is at
/// `now`; a time in the future (a clock stepped back) counts as new.
#[must_use]
pub fn age(written_ms: u64, now: SystemTime) -> Duration {
    Duration::from_millis(unix_ms(now).saturating_sub(written_ms))
}

/// The manifest: the identity every shard's blob was written for, and
/// when.
pub(crate) fn manifest(
    identity: &Identity,
    range: std::ops::Range<u32>,
    at: SystemTime,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(80);
    out.extend_from_slice(MANIFEST_MAGIC);
    out.push(VERSION);
    identity.write(&mut out);
    out.extend_from_slice(&range.start.to_le_bytes());
    out.extend_from_slice(&range.end.to_le_bytes());
    out.extend_from_slice(&unix_ms(at).to_le_bytes());
    out
}

/// Checks a manifest against this process's identity.
pub(crate) fn check_manifest(bytes: &[u8], identity: &Identity) -> Result<(), Refused> {
    let mut reader = Reader::new(bytes, "the manifest");
    header(&mut reader, *MANIFEST_MAGIC)?;
    identity.check(&Identity::read(&mut reader)?)?;
    let (_start, _end, _written) = (reader.u32()?, reader.u32()?, reader.u64()?);
    reader.finish()?;
    Ok(())
}

fn header(reader: &mut Reader<'_>, magic: [u8; 4]) -> Result<(), Refused> {
    if reader.take(4)? != magic.as_slice() {
        return Err(Refused::Corrupt(format!("not a {}", reader.part)));
    }
    let version = reader.u8()?;
    if version != VERSION {
        return Err(Refused::Corrupt(format!(
            "layout version {version}, this build reads {VERSION}"
        )));
    }
    Ok(())
}

/// A shard's state taken at one index, under its locks: the copies, to be
/// written out without them.
#[derive(Debug)]
pub(crate) struct Taken {
    pub(crate) shard: u32,
    /// [`Pipeline::checkpoint`]'s bytes.
    pub(crate) pipeline: Vec<u8>,
    pub(crate) ring: RingImage,
    /// When it was taken.
    pub(crate) at: Instant,
    /// How long the shard's locks were held for it.
    pub(crate) held: Duration,
}

impl Taken {
    /// The shard's blob.
    pub(crate) fn encode(&self, identity: &Identity, written: SystemTime) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pipeline.len() + self.ring.len_hint() + 128);
        out.extend_from_slice(SHARD_MAGIC);
        out.push(VERSION);
        identity.write(&mut out);
        out.extend_from_slice(&self.shard.to_le_bytes());
        out.extend_from_slice(&unix_ms(written).to_le_bytes());
        self.ring.write(self.at, &mut out);
        out.extend_from_slice(&self.pipeline);
        out
    }
}

/// A shard's blob, read back and checked.
#[derive(Debug)]
pub(crate) struct Restored {
    pub(crate) pipeline: Pipeline,
    pub(crate) ring: RingImage,
    /// How old it was when read.
    pub(crate) age: Duration,
}

/// Reads shard `shard`'s blob for this process: refused if it is of
/// another identity or shard, older than `max_age` at `now`, or damaged.
pub(crate) fn restore(
    bytes: &[u8],
    identity: &Identity,
    shard: u32,
    flags: Flags,
    max_age: Duration,
    now: SystemTime,
) -> Result<Restored, Refused> {
    let mut reader = Reader::new(bytes, "the shard's checkpoint");
    header(&mut reader, *SHARD_MAGIC)?;
    identity.check(&Identity::read(&mut reader)?)?;
    let id = reader.u32()?;
    if id != shard {
        return Err(Refused::Corrupt(format!("it is shard {id}'s")));
    }
    let age = age(reader.u64()?, now);
    if age > max_age {
        return Err(Refused::Stale(age));
    }
    let ring = RingImage::read(&mut reader, age)?;
    let pipeline = Pipeline::restore(flags, reader.rest())?;
    if ring.head() != pipeline.index() {
        return Err(Refused::Corrupt(format!(
            "the ring ends at {}, the pipeline at {}",
            ring.head(),
            pipeline.index()
        )));
    }
    if pipeline.upstream().is_none() {
        return Err(Refused::Corrupt("no upstream session to resume".to_owned()));
    }
    Ok(Restored {
        pipeline,
        ring,
        age,
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use state_cache::Flags;

    use super::{Identity, Refused, restore};
    use crate::token::Token;

    /// Why the fuzz seed (written for token `fuzz`, 1 shard, intents 513,
    /// default flags, as shard 0) is refused when read as `identity`'s
    /// shard `shard` at `now`.
    fn refusal(identity: &Identity, shard: u32, max_age: Duration, now: SystemTime) -> String {
        let seed = crate::fuzzing::sample_shard();
        match restore(&seed, identity, shard, Flags::default(), max_age, now) {
            Ok(_) => "restored".to_owned(),
            Err(refused) => refused.to_string(),
        }
    }

    #[test]
    fn a_checkpoint_of_another_bot_shard_or_age_is_refused_saying_why() {
        let now = super::wall_clock();
        let hour = Duration::from_hours(1);
        let ours = Identity::new(&Token::new("fuzz"), 1, 513, Flags::default());
        assert_eq!(refusal(&ours, 0, hour, now), "restored");
        let other = Identity::new(&Token::new("another"), 1, 513, Flags::default());
        assert_eq!(
            refusal(&other, 0, hour, now),
            "the checkpoint is of another bot token"
        );
        let more = Identity::new(&Token::new("fuzz"), 2, 513, Flags::default());
        assert_eq!(
            refusal(&more, 0, hour, now),
            "the checkpoint is of 1 shards, not 2"
        );
        let intents = Identity::new(&Token::new("fuzz"), 1, 1, Flags::default());
        assert!(refusal(&intents, 0, hour, now).contains("intents 513, not 1"));
        let flags = Identity::new(&Token::new("fuzz"), 1, 513, Flags::ALL);
        assert!(refusal(&flags, 0, hour, now).contains("other cache settings"));
        assert!(refusal(&ours, 1, hour, now).contains("it is shard 0's"));
        let later = now + Duration::from_secs(200);
        assert!(matches!(
            restore(&crate::fuzzing::sample_shard(), &ours, 0, Flags::default(), Duration::from_mins(2), later),
            Err(Refused::Stale(age)) if age >= Duration::from_secs(199)
        ));
        assert!(
            refusal(&ours, 0, Duration::from_mins(2), later)
                .contains("over checkpoint_max_age_secs")
        );
    }

    #[test]
    fn the_fuzz_seed_is_read_back_whole_and_every_cut_or_flip_is_refused_or_whole() {
        let seed = crate::fuzzing::sample_shard();
        assert_eq!(
            crate::fuzzing::restore_shard(&seed),
            Some(58),
            "GUILD_CREATE, a member chunk and 56 more"
        );
        for n in 0..seed.len() {
            assert_eq!(
                crate::fuzzing::restore_shard(&seed[..n]),
                None,
                "cut at {n}"
            );
        }
        for i in (0..seed.len()).step_by(7) {
            let mut flipped = seed.clone();
            flipped[i] ^= 0x20;
            // No panic; a flip the layout cannot see (inside a payload) may
            // restore.
            let _ = crate::fuzzing::restore_shard(&flipped);
        }
    }
}
