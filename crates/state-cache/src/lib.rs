//! The guild state of one Discord shard, compact in memory, given back as
//! Discord's READY and `GUILD_CREATE` payloads. No I/O.
//!
//! A gateway proxy holds the upstream session; each bot process that
//! connects to it must still get what Discord would have sent: a READY,
//! then one `GUILD_CREATE` per guild (or `GUILD_DELETE` with
//! `"unavailable":true` for a guild that is down) with everything its
//! library reads. A [`Cache`] follows the dispatches that change that state
//! and writes those payloads on demand.
//!
//! ```
//! use state_cache::{Cache, Flags, Session};
//!
//! let mut cache = Cache::new(Flags::default());
//! let ready = r#"{"v":10,"user":{"id":"10","username":"bot","discriminator":"0","avatar":null,"mfa_enabled":true},
//!     "guilds":[{"id":"20","unavailable":true}],"session_id":"upstream","resume_gateway_url":"wss://upstream",
//!     "application":{"id":"10","flags":0}}"#;
//! cache.apply("READY", ready.as_bytes())?;
//! cache.apply("GUILD_CREATE", br#"{"id":"20","name":"crabs","unavailable":false,"member_count":2,
//!     "roles":[{"id":"20","name":"@everyone","permissions":"0"}],"channels":[{"id":"30","type":0,"name":"general"}]}"#)?;
//! // Only the dispatches the flags need are parsed at all.
//! assert!(!cache.wants("MESSAGE_CREATE"));
//! cache.apply("CHANNEL_UPDATE", br#"{"id":"30","type":0,"name":"lobby","guild_id":"20"}"#)?;
//!
//! let mut out = Vec::new();
//! let session = Session { session_id: "0123456789abcdef0123456789abcdef", resume_gateway_url: "ws://proxy:7878" };
//! cache.write_ready(1, session, &mut out)?;
//! assert!(out.starts_with(br#"{"t":"READY","s":1,"op":0,"d":{"#));
//!
//! for (seq, id) in (2..).zip(cache.guild_ids()) {
//!     out.clear();
//!     cache.write_guild(id, seq, &mut out);
//!     let text = std::str::from_utf8(&out).unwrap();
//!     assert!(text.starts_with(r#"{"t":"GUILD_CREATE","s":2,"op":0,"d":{"id":"20""#));
//!     assert!(text.contains(r#""name":"lobby""#) && text.contains(r#""unavailable":false"#));
//! }
//!
//! // Or take a snapshot (cheap) and write from it without holding the
//! // cache: later dispatches do not change it.
//! let snapshot = cache.snapshot();
//! cache.apply("CHANNEL_UPDATE", br#"{"id":"30","type":0,"name":"hall","guild_id":"20"}"#)?;
//! let mut from_snapshot = Vec::new();
//! snapshot.write_ready(1, session, &mut from_snapshot)?;
//! for (seq, guild) in (2..).zip(snapshot.into_guilds()) {
//!     from_snapshot.clear();
//!     guild.write(seq, &mut from_snapshot); // and this guild is let go
//!     assert_eq!(from_snapshot, out, "still \"lobby\"");
//! }
//!
//! // Written out whole (its packed form, copied) and read back, as a
//! // proxy's restart would: the same cache.
//! let mut checkpoint = Vec::new();
//! cache.checkpoint(&mut checkpoint);
//! let restored = Cache::restore(Flags::default(), &checkpoint)?;
//! let mut again = Vec::new();
//! restored.write_ready(1, session, &mut again)?;
//! let mut before = Vec::new();
//! cache.write_ready(1, session, &mut before)?;
//! assert_eq!(again, before);
//! # Ok::<(), state_cache::Error>(())
//! ```
//!
//! # Snapshots
//!
//! A proxy serves clients while the shard's dispatches keep coming, and a
//! shard's `GUILD_CREATE`s take milliseconds to write. So that the cache
//! need not be locked that long, [`Cache::snapshot`] gives a [`Snapshot`]:
//! the cache as it is, with the same writers, independent of it
//! afterwards (`Send + Sync`, for another task).
//!
//! What it costs: taking one, under the caller's lock, clones an `Arc` for
//! the key table, one for READY and one for each guild (no guild is
//! copied; microseconds for a thousand guilds). Guilds are then shared,
//! copy on write: the first change the cache applies to a guild that a
//! snapshot still holds copies that guild once (its members, channels,
//! presences and all), under the caller's lock; a key the cache has never
//! seen copies the key table once. Dropping the snapshot, or each
//! [`SnapshotGuild`] of [`Snapshot::into_guilds`] once written, lets the
//! old versions go.
//!
//! [`Cache::stats`] takes constant time: the cache keeps its totals up to
//! date as it changes.
//!
//! # What is kept
//!
//! [`Flags`] says which resources are kept, with the original
//! gateway-proxy's `cache` keys and defaults. Whatever is kept is kept
//! whole: every field Discord sent, including fields nobody here knows and
//! fields Discord adds later, comes back as it came, as the same JSON value
//! (keys within an object may come back in another order, and escapes
//! may be written differently).
//!
//! What is not followed, because it would mean parsing frequent dispatches
//! for a field no library relies on: a channel's `last_message_id`
//! (`MESSAGE_CREATE`), a scheduled event's `user_count`, and `large`,
//! which stays what the guild's `GUILD_CREATE` said. `member_count` is
//! followed through member joins and leaves.
//!
//! # Memory
//!
//! Each item (a member, a channel, a presence) is one allocation holding
//! its fields in packed JSON: keys numbered, snowflakes, timestamps and
//! image hashes as binary, other strings as text ready to write. A member
//! takes a fifth to a third of its JSON size; `docs/performance.md` has
//! the figures, side by side with twilight-cache-inmemory.

mod cache;
mod checkpoint;
mod error;
mod flags;
mod guild;
mod packed;
mod snapshot;

pub use crate::cache::{Cache, Session, Stats};
pub use crate::error::{Error, ErrorKind};
pub use crate::flags::Flags;
pub use crate::snapshot::{Snapshot, SnapshotGuild, SnapshotGuilds};
