//! The one error type of this crate.

use std::fmt;

/// Why a payload could not be scanned, and where.
///
/// The offset is the byte index into the scanned payload at which the
/// problem was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    offset: usize,
}

/// What was wrong with a payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The payload is not a JSON object.
    NotAnObject,
    /// The payload ended in the middle of a value, string or object.
    UnexpectedEnd,
    /// A byte that JSON does not allow at this place.
    UnexpectedByte(u8),
    /// A string with a control character, a bad escape, a lone surrogate or
    /// invalid UTF-8.
    InvalidString,
    /// A number that is not valid JSON.
    InvalidNumber,
    /// `op` is not an unsigned integer that fits in a `u64`.
    InvalidOp,
    /// `s` is neither `null` nor an unsigned integer that fits in a `u64`.
    InvalidSeq,
    /// `t` is neither `null` nor a string.
    InvalidEventType,
    /// One of `op`, `t`, `s` or `d` appears twice at the top level.
    DuplicateKey(&'static str),
    /// The top-level object has no `op`.
    MissingOp,
    /// Something other than whitespace follows the top-level object.
    TrailingBytes,
    /// The payload is 4 GiB or larger; offsets are kept as `u32`.
    TooLarge,
}

impl Error {
    pub(crate) const fn new(kind: ErrorKind, offset: usize) -> Self {
        Self { kind, offset }
    }

    /// What was wrong.
    #[must_use]
    pub const fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The byte offset in the payload where the problem was found.
    #[must_use]
    pub const fn offset(&self) -> usize {
        self.offset
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAnObject => f.write_str("payload is not a JSON object"),
            Self::UnexpectedEnd => f.write_str("payload ends too early"),
            Self::UnexpectedByte(b) if b.is_ascii_graphic() => {
                write!(f, "unexpected byte '{}'", char::from(*b))
            }
            Self::UnexpectedByte(b) => write!(f, "unexpected byte 0x{b:02x}"),
            Self::InvalidString => f.write_str("invalid JSON string"),
            Self::InvalidNumber => f.write_str("invalid JSON number"),
            Self::InvalidOp => f.write_str("\"op\" is not an unsigned 64-bit integer"),
            Self::InvalidSeq => f.write_str("\"s\" is neither null nor an unsigned 64-bit integer"),
            Self::InvalidEventType => f.write_str("\"t\" is neither null nor a string"),
            Self::DuplicateKey(key) => write!(f, "duplicate top-level key \"{key}\""),
            Self::MissingOp => f.write_str("payload has no top-level \"op\""),
            Self::TrailingBytes => f.write_str("unexpected bytes after the top-level object"),
            Self::TooLarge => f.write_str("payload is 4 GiB or larger"),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.kind, self.offset)
    }
}

impl std::error::Error for Error {}
