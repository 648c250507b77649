//! The crate's one error type.

use std::fmt;

/// Why a dispatch could not be applied, or a payload not written.
///
/// A dispatch that fails leaves the cache as it was before it.
#[derive(Debug)]
pub struct Error {
    event: &'static str,
    kind: ErrorKind,
}

/// What went wrong.
#[derive(Debug)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The dispatch's `d` is not valid JSON; the parser's message.
    Json(String),
    /// The dispatch's `d` is JSON but not the shape Discord sends: what was
    /// expected, such as "`guild_id` as a snowflake".
    Shape(&'static str),
    /// A READY was asked for before the cache saw one.
    NoReady,
    /// A checkpoint could not be read back ([`Cache::restore`]): why.
    ///
    /// [`Cache::restore`]: crate::Cache::restore
    Checkpoint(String),
}

impl Error {
    pub(crate) fn json(event: &'static str, message: String) -> Self {
        Self {
            event,
            kind: ErrorKind::Json(message),
        }
    }

    pub(crate) fn shape(event: &'static str, expected: &'static str) -> Self {
        Self {
            event,
            kind: ErrorKind::Shape(expected),
        }
    }

    pub(crate) fn checkpoint(why: String) -> Self {
        Self {
            event: "checkpoint",
            kind: ErrorKind::Checkpoint(why),
        }
    }

    pub(crate) fn no_ready() -> Self {
        Self {
            event: "READY",
            kind: ErrorKind::NoReady,
        }
    }

    /// The dispatch name the error is about.
    #[must_use]
    pub fn event(&self) -> &'static str {
        self.event
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
            ErrorKind::Json(message) => {
                write!(f, "{}: `d` is not valid JSON: {message}", self.event)
            }
            ErrorKind::Shape(expected) => write!(f, "{}: expected {expected}", self.event),
            ErrorKind::NoReady => f.write_str("no READY has been cached yet"),
            ErrorKind::Checkpoint(why) => write!(f, "cache checkpoint: {why}"),
        }
    }
}

impl std::error::Error for Error {}
