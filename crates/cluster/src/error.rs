//! The crate's one error type.

use std::fmt;

/// What went wrong talking to NATS, and about what.
#[derive(Debug)]
pub struct Error {
    /// What was being done: "connecting to nats://…", "creating the key-value
    /// bucket gp-identify", …
    doing: String,
    kind: ErrorKind,
}

/// What kind of failure it was.
#[derive(Debug)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A configuration value is wrong; the message names it.
    Config,
    /// NATS or JetStream answered with an error, or could not be reached.
    Nats(Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self {
            doing: message.into(),
            kind: ErrorKind::Config,
        }
    }

    pub(crate) fn nats(
        doing: impl Into<String>,
        error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            doing: doing.into(),
            kind: ErrorKind::Nats(error.into()),
        }
    }

    /// What kind of failure it was.
    #[must_use]
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Config => f.write_str(&self.doing),
            ErrorKind::Nats(error) => write!(f, "{}: {error}", self.doing),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Config => None,
            ErrorKind::Nats(error) => Some(error.as_ref()),
        }
    }
}
