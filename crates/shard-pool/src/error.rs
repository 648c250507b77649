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
        }
    }
}

impl std::error::Error for Error {}
