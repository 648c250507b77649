//! Discord gateway transport compression, both directions, without I/O.
//!
//! Discord offers three ways to compress what it sends a client, and a
//! gateway proxy must offer the same to its own clients:
//!
//! | [`Compression`] | asked for with | on the wire |
//! | --- | --- | --- |
//! | `ZlibStream` | `?compress=zlib-stream` | one zlib stream per connection; each message ends with a sync flush, `00 00 ff ff` |
//! | `ZstdStream` | `?compress=zstd-stream` | one zstd frame per connection, never ended; each message ends at a flush |
//! | `ZlibPayload` | `"compress": true` in IDENTIFY, without the above | each message a complete zlib stream |
//!
//! An [`Encoder`] is one connection's compression context: it turns each
//! payload into one complete websocket message. A [`Decoder`] is the other
//! end; it never panics on the bytes it is given, and never produces (or
//! buffers) more than its limit, so a decompression bomb costs at most that.
//!
//! ```
//! use wire_codec::{Compression, Decoded, Decoder, Encoder};
//!
//! let compression = Compression::from_query("v=10&encoding=json&compress=zstd-stream")?;
//! let mut encoder = Encoder::new(compression)?;
//! let mut decoder = Decoder::new(compression, 1 << 20)?;
//!
//! let (mut message, mut payload) = (Vec::new(), Vec::new());
//! for event in [&br#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}"#[..], b"{\"op\":11}"] {
//!     message.clear();
//!     encoder.encode(event, &mut message)?;      // one binary websocket message
//!     payload.clear();
//!     assert_eq!(decoder.decode(&message, &mut payload)?, Decoded::Message);
//!     assert_eq!(payload, event);
//! }
//! # Ok::<(), wire_codec::Error>(())
//! ```
//!
//! # Buffers
//!
//! Callers own the output buffers and reuse them: encoding and decoding
//! append to a `Vec<u8>` and allocate only when it is too small, so in steady
//! state there is no allocation per message (a test counts them).
//! [`Encoder::encode_parts`] compresses a payload given as several slices,
//! such as `seqpatch`'s patched payload, without joining them first.
//!
//! # Shared bodies
//!
//! A proxy sends each event to many clients, identical but for the digits
//! of `s`. [`SharedCompressor`] compresses the parts around the digits once
//! per event into a [`SharedBody`]; each zlib client's message is then a
//! copy with its digits in between ([`SharedBody::write_stream`],
//! [`SharedBody::write_payload`]), instead of a compression of its own. A
//! zlib-stream connection that gets them compresses its own messages so
//! that they never refer to the shared ones: with
//! [`Encoder::cut_history`] after each shared body (only the next own
//! message is cut from what came before), or with
//! [`Encoder::set_independent`] on (every own message). zstd-stream has no
//! such thing: a zstd frame cannot take blocks made elsewhere.
//!
//! ```
//! use wire_codec::{Compression, Decoder, Encoder, SharedCompressor};
//!
//! let mut encoder = Encoder::new(Compression::ZlibStream)?;
//! let mut decoder = Decoder::new(Compression::ZlibStream, 1 << 20)?;
//! let (mut message, mut payload) = (Vec::new(), Vec::new());
//! let hello = br#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}"#;
//! encoder.encode(hello, &mut message)?; // starts the stream: zlib header
//! decoder.decode(&message, &mut payload)?;
//! encoder.set_independent();
//!
//! // Once per event, for every client:
//! let mut shared = SharedCompressor::new(6);
//! let body = shared.compress(br#"{"t":"TYPING_START","s":"#, br#","op":0,"d":{}}"#)?;
//! for seq in [b"41", b"42"] {
//!     message.clear();
//!     body.write_stream(seq, &mut message);
//!     payload.clear();
//!     decoder.decode(&message, &mut payload)?;
//!     assert_eq!(payload, [&br#"{"t":"TYPING_START","s":"#[..], seq, br#","op":0,"d":{}}"#].concat());
//! }
//! # Ok::<(), wire_codec::Error>(())
//! ```
//!
//! # Choices
//!
//! zlib uses flate2 with the zlib-rs backend at level 6 (Discord's); zstd uses
//! level 1 with Discord's 256 KiB window. `docs/performance.md` has the
//! measurements behind both.

mod adler32;
mod compression;
mod error;
mod shared;
mod zlib;
mod zstd;

pub use crate::compression::Compression;
pub use crate::error::Error;
pub use crate::shared::{SharedBody, SharedCompressor};

/// One connection's compression context, server to client.
#[derive(Debug)]
pub struct Encoder {
    compression: Compression,
    inner: EncoderInner,
}

#[derive(Debug)]
enum EncoderInner {
    Plain,
    Zlib(zlib::Encoder),
    Zstd(zstd::Encoder),
}

impl Encoder {
    /// An encoder at the default level of its compression.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if zstd cannot create its context (out of memory).
    pub fn new(compression: Compression) -> Result<Self, Error> {
        let level = match compression {
            Compression::ZstdStream => zstd::DEFAULT_LEVEL,
            _ => zlib::DEFAULT_LEVEL.cast_signed(),
        };
        Self::with_level(compression, level)
    }

    /// An encoder at a given level: 0–9 for zlib, 1–22 for zstd (values
    /// beyond are clamped). Plain text ignores it.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if zstd cannot create its context (out of memory).
    pub fn with_level(compression: Compression, level: i32) -> Result<Self, Error> {
        let inner = match compression {
            Compression::None => EncoderInner::Plain,
            Compression::ZlibStream | Compression::ZlibPayload => {
                EncoderInner::Zlib(zlib::Encoder::new(
                    level.clamp(0, 9).cast_unsigned(),
                    compression == Compression::ZlibPayload,
                ))
            }
            Compression::ZstdStream => EncoderInner::Zstd(zstd::Encoder::new(level.clamp(1, 22))?),
        };
        Ok(Self { compression, inner })
    }

    /// The compression this encoder writes.
    #[must_use]
    pub const fn compression(&self) -> Compression {
        self.compression
    }

    /// Appends `payload`, encoded as one complete websocket message, to
    /// `out`.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if the compression library fails, which it does not
    /// for valid input short of running out of memory. The encoder should be
    /// dropped then: its stream is no longer usable.
    pub fn encode(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        self.encode_parts(&[payload], out)
    }

    /// Appends the concatenation of `parts`, encoded as one complete
    /// websocket message, to `out`; the parts are never joined in memory.
    ///
    /// # Errors
    ///
    /// As for [`encode`](Self::encode).
    pub fn encode_parts(&mut self, parts: &[&[u8]], out: &mut Vec<u8>) -> Result<(), Error> {
        match &mut self.inner {
            EncoderInner::Plain => {
                out.reserve(parts.iter().map(|p| p.len()).sum());
                for part in parts {
                    out.extend_from_slice(part);
                }
                Ok(())
            }
            EncoderInner::Zlib(encoder) => encoder.encode(parts, out),
            EncoderInner::Zstd(encoder) => encoder.encode(parts, out),
        }
    }

    /// From the next message on, every message refers to nothing written
    /// before it, so that [`SharedBody`] messages, which this encoder never
    /// sees, can be sent in between on a zlib-stream connection.
    ///
    /// zlib-stream: each message ends with a full flush (still
    /// `00 00 ff ff`) instead of a sync flush, which also empties the
    /// compressor's window; the first message after this call starts with
    /// one (five bytes) if anything was written before, so that it cannot
    /// refer to earlier messages either. Turn it on after priming the
    /// encoder with the messages the client has already read, and before
    /// the first shared body is sent. Messages cost a little more, as each
    /// is compressed without the previous ones.
    ///
    /// Payload compression is always independent (each message is its own
    /// stream), and plain text trivially; zstd-stream is left as it is,
    /// since shared bodies are for zlib only. The mode stays on across
    /// [`reset`](Self::reset).
    pub fn set_independent(&mut self) {
        if let EncoderInner::Zlib(encoder) = &mut self.inner {
            encoder.set_independent();
        }
    }

    /// The next message (only) refers to nothing written before it: call
    /// it after sending a [`SharedBody`] message, which this encoder never
    /// saw, so that what it writes next does not point into a window the
    /// client's decoder no longer has. Later messages may refer to that one
    /// and to each other again.
    ///
    /// zlib-stream: the next message starts with a full flush (five bytes)
    /// if anything was written before; nothing else changes. A no-op for
    /// the other compressions (payload compression is always
    /// independent; shared bodies are for zlib only).
    pub fn cut_history(&mut self) {
        if let EncoderInner::Zlib(encoder) = &mut self.inner {
            encoder.cut_history();
        }
    }

    /// Whether each message refers to nothing written before it: always
    /// for plain text and payload compression, after
    /// [`set_independent`](Self::set_independent) for zlib-stream, never
    /// for zstd-stream.
    #[must_use]
    pub fn is_independent(&self) -> bool {
        match &self.inner {
            EncoderInner::Plain => true,
            EncoderInner::Zlib(encoder) => encoder.is_independent(),
            EncoderInner::Zstd(_) => false,
        }
    }

    /// Starts a new stream, as for a new connection.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if zstd cannot reset its context.
    pub fn reset(&mut self) -> Result<(), Error> {
        match &mut self.inner {
            EncoderInner::Plain => Ok(()),
            EncoderInner::Zlib(encoder) => {
                encoder.reset();
                Ok(())
            }
            EncoderInner::Zstd(encoder) => encoder.reset(),
        }
    }
}

/// What [`Decoder::decode`] made of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole payload was appended to the output.
    Message,
    /// zlib-stream only: the message does not end with `00 00 ff ff`, so it
    /// was kept until a later message completes the payload. Nothing was
    /// appended.
    Partial,
}

/// One connection's decompression context, for the messages an
/// [`Encoder`] (or Discord) writes.
#[derive(Debug)]
pub struct Decoder {
    compression: Compression,
    limit: usize,
    inner: DecoderInner,
}

#[derive(Debug)]
enum DecoderInner {
    Plain,
    Zlib(zlib::Decoder),
    Zstd(zstd::Decoder),
}

impl Decoder {
    /// A decoder that refuses any message decoding to more than
    /// `max_message_size` bytes.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if zstd cannot create its context (out of memory).
    pub fn new(compression: Compression, max_message_size: usize) -> Result<Self, Error> {
        let inner = match compression {
            Compression::None => DecoderInner::Plain,
            Compression::ZlibStream => DecoderInner::Zlib(zlib::Decoder::new(false)),
            Compression::ZlibPayload => DecoderInner::Zlib(zlib::Decoder::new(true)),
            Compression::ZstdStream => DecoderInner::Zstd(zstd::Decoder::new()?),
        };
        Ok(Self {
            compression,
            limit: max_message_size,
            inner,
        })
    }

    /// The compression this decoder reads.
    #[must_use]
    pub const fn compression(&self) -> Compression {
        self.compression
    }

    /// Decodes one websocket message, appending the payload to `out`.
    ///
    /// With [`Compression::ZlibPayload`], pass only binary messages: text
    /// messages are payloads that were not compressed.
    ///
    /// # Errors
    ///
    /// - [`Error::MessageTooLarge`] past the limit (nothing beyond it is
    ///   kept);
    /// - [`Error::Corrupt`] for bytes that are not a valid stream;
    /// - [`Error::Truncated`] for a per-payload zlib stream that does not end.
    ///
    /// After an error the stream cannot continue: drop the connection (or
    /// [`reset`](Self::reset) for a new one). `out` may then hold part of a
    /// payload past its original length.
    pub fn decode(&mut self, message: &[u8], out: &mut Vec<u8>) -> Result<Decoded, Error> {
        match &mut self.inner {
            DecoderInner::Plain => {
                if message.len() > self.limit {
                    return Err(Error::MessageTooLarge { limit: self.limit });
                }
                out.extend_from_slice(message);
                Ok(Decoded::Message)
            }
            DecoderInner::Zlib(decoder) => decoder.decode(message, out, self.limit),
            DecoderInner::Zstd(decoder) => {
                decoder.decode(message, out, self.limit)?;
                Ok(Decoded::Message)
            }
        }
    }

    /// Starts a new stream, as for a new connection.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if zstd cannot reset its context.
    pub fn reset(&mut self) -> Result<(), Error> {
        match &mut self.inner {
            DecoderInner::Plain => Ok(()),
            DecoderInner::Zlib(decoder) => {
                decoder.reset();
                Ok(())
            }
            DecoderInner::Zstd(decoder) => decoder.reset(),
        }
    }
}
