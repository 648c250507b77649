//! The crate's one error type.

use std::fmt;
use std::time::Duration;

/// Why a pool could not start, or a command not be sent.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
}

/// What went wrong.
#[derive(Debug)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A configuration value is wrong: which, and what was expected.
    Config(String),
    /// `GET /gateway/bot` failed: why.
    Rest(String),
    /// Fewer identifies are left today than shards to start.
    SessionStartLimit {
        /// Identifies left.
        remaining: u32,
        /// Shards to start.
        needed: u32,
        /// When the limit resets.
        reset_after: Duration,
    },
    /// The shard is not in this pool.
    UnknownShard(u32),
    /// The shard's task has ended (the pool is shutting down).
    Closed(u32),
    /// A checkpoint could not be read back: why.
    Checkpoint(String),
    /// The process that runs a shard could not be reached: why.
    Remote {
        /// The shard.
        shard: u32,
        /// Why.
        reason: String,
    },
    /// Discord closed a shard with a code that forbids reconnecting.
    FatallyClosed {
        /// The shard.
        shard: u32,
        /// Discord's close code (4004, 4010–4014).
        code: u16,
        /// The intents the shard identified with.
        intents: u64,
    },
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Config(message.into()),
        }
    }

    pub(crate) fn rest(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Rest(message.into()),
        }
    }

    /// A damaged checkpoint: why. For layers above the pool that keep
    /// their own part in a shard's checkpoint (read with
    /// [`CheckpointReader`](crate::CheckpointReader)).
    #[must_use]
    pub fn checkpoint(why: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Checkpoint(why.into()),
        }
    }

    /// The process that runs shard `shard` could not be reached; for a
    /// [`Source`](crate::Source).
    #[must_use]
    pub fn remote(shard: u32, reason: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Remote {
                shard,
                reason: reason.into(),
            },
        }
    }

    pub(crate) fn new(kind: ErrorKind) -> Self {
        Self { kind }
    }

    /// What went wrong.
    #[must_use]
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Config(message) => write!(f, "configuration: {message}"),
            ErrorKind::Rest(message) => write!(f, "GET /gateway/bot: {message}"),
            ErrorKind::SessionStartLimit {
                remaining,
                needed,
                reset_after,
            } => write!(
                f,
                "only {remaining} identifies are left today and {needed} shards must start; \
                 Discord resets the limit in {} s (starting anyway could get the token reset)",
                reset_after.as_secs()
            ),
            ErrorKind::UnknownShard(id) => write!(f, "shard {id} is not in this pool"),
            ErrorKind::Closed(id) => write!(f, "shard {id} has stopped"),
            ErrorKind::Checkpoint(why) => write!(f, "checkpoint: {why}"),
            ErrorKind::Remote { shard, reason } => {
                write!(f, "the node that runs shard {shard}: {reason}")
            }
            ErrorKind::FatallyClosed {
                shard,
                code,
                intents,
            } => {
                write!(f, "Discord closed shard {shard} with {code}")?;
                fatal_advice(f, *code, *intents)
            }
        }
    }
}

/// The privileged intents and the switches that allow them in the
/// Developer Portal.
const PRIVILEGED: [(u64, &str, &str); 3] = [
    (1 << 1, "GUILD_MEMBERS", "Server Members Intent"),
    (1 << 8, "GUILD_PRESENCES", "Presence Intent"),
    (1 << 15, "MESSAGE_CONTENT", "Message Content Intent"),
];

/// What a fatal close code means and what to change.
fn fatal_advice(f: &mut fmt::Formatter<'_>, code: u16, intents: u64) -> fmt::Result {
    match code {
        4004 => f.write_str(
            " (authentication failed): the token is wrong or was reset; set `token` (or TOKEN) \
             to the bot's current token",
        ),
        4010 => f.write_str(
            " (invalid shard): `shards`, `shard_start` or `shard_end` name a shard the bot \
             does not have",
        ),
        4011 => f.write_str(
            " (sharding required): the bot is in too many guilds for this shard count; raise \
             `shards` or leave it out to use Discord's recommendation",
        ),
        4012 => f.write_str(" (invalid API version): this build speaks a version Discord retired"),
        4013 => write!(
            f,
            " (invalid intents): `intents` ({intents}) has bits Discord does not know"
        ),
        4014 => {
            let asked: Vec<String> = PRIVILEGED
                .iter()
                .filter(|(bit, _, _)| intents & bit != 0)
                .map(|(_, name, switch)| format!("{switch} ({name})"))
                .collect();
            let asked = if asked.is_empty() {
                "the privileged intents in `intents`".to_owned()
            } else {
                asked.join(", ")
            };
            write!(
                f,
                " (disallowed intents): enable {asked} for the application in the Developer \
                 Portal (Bot, Privileged Gateway Intents), or remove them from `intents` ({intents})"
            )
        }
        _ => f.write_str(", which forbids reconnecting"),
    }
}

impl std::error::Error for Error {}
