//! Which compression a connection uses.

use crate::error::Error;

/// The compression of one connection's server-to-client messages.
///
/// Chosen from the connection URL's query string ([`from_query`]), then
/// refined by the `compress` flag of IDENTIFY ([`with_identify_compress`]).
///
/// [`from_query`]: Self::from_query
/// [`with_identify_compress`]: Self::with_identify_compress
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Compression {
    /// Plain JSON in text frames.
    #[default]
    None,
    /// `?compress=zlib-stream`: one zlib stream for the whole connection;
    /// every message ends with a sync flush (`00 00 ff ff`).
    ZlibStream,
    /// `?compress=zstd-stream`: one zstd frame for the whole connection,
    /// never ended; every message ends at a flush.
    ZstdStream,
    /// `"compress": true` in IDENTIFY (without transport compression): each
    /// message is a complete zlib stream of its own.
    ZlibPayload,
}

impl Compression {
    /// The transport compression a connection URL's query string asks for,
    /// e.g. `v=10&encoding=json&compress=zstd-stream`.
    ///
    /// No `compress` parameter, or an empty one, means [`Compression::None`].
    /// Other parameters are not this crate's business and are ignored.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownCompression`] for any other value, which Discord
    /// answers with close code 4002.
    pub fn from_query(query: &str) -> Result<Self, Error> {
        let value = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("compress="))
            .unwrap_or("");
        match value {
            "" => Ok(Self::None),
            "zlib-stream" => Ok(Self::ZlibStream),
            "zstd-stream" => Ok(Self::ZstdStream),
            other => Err(Error::UnknownCompression {
                value: other.chars().take(64).collect(),
            }),
        }
    }

    /// The compression once IDENTIFY has said whether it wants `compress`.
    ///
    /// Payload compression applies only where the connection has no
    /// transport compression: discord.py sends `"compress": true` while it
    /// always asks for zlib-stream or zstd-stream, and Discord ignores the
    /// flag then.
    #[must_use]
    pub fn with_identify_compress(self, compress: bool) -> Self {
        match self {
            Self::None if compress => Self::ZlibPayload,
            other => other,
        }
    }

    /// Whether messages go in binary websocket frames (every compressed
    /// mode) rather than text frames.
    #[must_use]
    pub const fn is_binary(self) -> bool {
        !matches!(self, Self::None)
    }

    /// The value of the `compress` query parameter that asks for this
    /// compression, if there is one.
    #[must_use]
    pub const fn query_value(self) -> Option<&'static str> {
        match self {
            Self::ZlibStream => Some("zlib-stream"),
            Self::ZstdStream => Some("zstd-stream"),
            Self::None | Self::ZlibPayload => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_that_clients_send() {
        for (query, want) in [
            ("v=10&encoding=json", Compression::None),
            ("", Compression::None),
            ("v=10&encoding=json&compress=", Compression::None),
            (
                "v=10&encoding=json&compress=zstd-stream",
                Compression::ZstdStream,
            ),
            (
                "compress=zlib-stream&v=10&encoding=json",
                Compression::ZlibStream,
            ),
        ] {
            assert_eq!(Compression::from_query(query).unwrap(), want, "{query}");
        }
    }

    #[test]
    fn unknown_compression_is_an_error_naming_the_value() {
        let err = Compression::from_query("v=10&compress=brotli").unwrap_err();
        assert!(matches!(&err, Error::UnknownCompression { value } if value == "brotli"));
        assert_eq!(
            err.to_string(),
            "unknown compression \"brotli\": expected zlib-stream or zstd-stream"
        );
        let long = format!("compress={}", "x".repeat(1000));
        let Err(Error::UnknownCompression { value }) = Compression::from_query(&long) else {
            panic!("expected an error");
        };
        assert_eq!(value.len(), 64);
    }

    #[test]
    fn identify_compress_only_without_transport_compression() {
        assert_eq!(
            Compression::None.with_identify_compress(true),
            Compression::ZlibPayload
        );
        assert_eq!(
            Compression::None.with_identify_compress(false),
            Compression::None
        );
        assert_eq!(
            Compression::ZstdStream.with_identify_compress(true),
            Compression::ZstdStream
        );
        assert_eq!(
            Compression::ZlibStream.with_identify_compress(true),
            Compression::ZlibStream
        );
    }
}
