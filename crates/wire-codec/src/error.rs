//! The one error type of this crate.

use std::fmt;

/// What went wrong while choosing, encoding or decoding a compression.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The `compress` query parameter names a compression Discord does not
    /// offer. A server answers this with close code 4002.
    UnknownCompression {
        /// The value as given, at most 64 bytes of it.
        value: String,
    },
    /// A decoded message would be larger than the decoder's limit; for
    /// zlib-stream, the compressed bytes waiting for their `00 00 ff ff`
    /// suffix passed the limit. Nothing larger is ever buffered.
    MessageTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The compressed bytes are not a valid stream of the named codec.
    Corrupt {
        /// `"zlib"` or `"zstd"`.
        codec: &'static str,
        /// What the codec library reported.
        reason: String,
    },
    /// A per-payload zlib message ended before its stream did.
    Truncated,
    /// The compression library failed for a reason of its own (for zstd,
    /// usually memory).
    Codec {
        /// `"zlib"` or `"zstd"`.
        codec: &'static str,
        /// What the codec library reported.
        reason: String,
    },
}

impl Error {
    pub(crate) fn corrupt(codec: &'static str, reason: impl fmt::Display) -> Self {
        Self::Corrupt {
            codec,
            reason: reason.to_string(),
        }
    }

    pub(crate) fn codec(codec: &'static str, reason: impl fmt::Display) -> Self {
        Self::Codec {
            codec,
            reason: reason.to_string(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownCompression { value } => write!(
                f,
                "unknown compression {value:?}: expected zlib-stream or zstd-stream"
            ),
            Self::MessageTooLarge { limit } => {
                write!(f, "message larger than the limit of {limit} bytes")
            }
            Self::Corrupt { codec, reason } => write!(f, "invalid {codec} data: {reason}"),
            Self::Truncated => f.write_str("compressed payload ends before its zlib stream does"),
            Self::Codec { codec, reason } => write!(f, "{codec} failed: {reason}"),
        }
    }
}

impl std::error::Error for Error {}
