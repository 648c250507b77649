//! zstd-stream: one zstd frame per connection, never ended, flushed after
//! every message.

use zstd::stream::raw::{
    Decoder as RawDecoder, Encoder as RawEncoder, InBuffer, Operation, OutBuffer,
};
use zstd::zstd_safe::{CParameter, DParameter};

use crate::error::Error;

/// The window Discord uses (its frames say `40`: 2^18 = 256 KiB). A larger
/// window barely helps gateway traffic and costs memory on both sides of
/// every connection.
pub(crate) const WINDOW_LOG: u32 = 18;

/// The default level; see docs/performance.md for the measurements behind it.
pub(crate) const DEFAULT_LEVEL: i32 = 1;

pub(crate) struct Encoder {
    ctx: RawEncoder<'static>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("zstd::Encoder").finish_non_exhaustive()
    }
}

impl Encoder {
    pub(crate) fn new(level: i32) -> Result<Self, Error> {
        let mut ctx = RawEncoder::new(level).map_err(|e| Error::codec("zstd", e))?;
        ctx.set_parameter(CParameter::WindowLog(WINDOW_LOG))
            .map_err(|e| Error::codec("zstd", e))?;
        Ok(Self { ctx })
    }

    /// Appends one message holding `parts`, concatenated, to `out`.
    pub(crate) fn encode(&mut self, parts: &[&[u8]], out: &mut Vec<u8>) -> Result<(), Error> {
        for &part in parts {
            let mut input = InBuffer::around(part);
            while input.pos() < part.len() {
                out.reserve((part.len() - input.pos()) / 2 + 64);
                let pos = out.len();
                let mut output = OutBuffer::around_pos(out, pos);
                self.ctx
                    .run(&mut input, &mut output)
                    .map_err(|e| Error::codec("zstd", e))?;
            }
        }
        loop {
            out.reserve(64);
            let pos = out.len();
            let mut output = OutBuffer::around_pos(out, pos);
            let remaining = self
                .ctx
                .flush(&mut output)
                .map_err(|e| Error::codec("zstd", e))?;
            if remaining == 0 {
                return Ok(());
            }
        }
    }

    pub(crate) fn reset(&mut self) -> Result<(), Error> {
        self.ctx.reinit().map_err(|e| Error::codec("zstd", e))
    }
}

pub(crate) struct Decoder {
    ctx: RawDecoder<'static>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("zstd::Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    pub(crate) fn new() -> Result<Self, Error> {
        let mut ctx = RawDecoder::new().map_err(|e| Error::codec("zstd", e))?;
        // Refuse windows larger than a gateway needs, so that a peer cannot
        // make the decoder allocate hundreds of megabytes.
        ctx.set_parameter(DParameter::WindowLogMax(23))
            .map_err(|e| Error::codec("zstd", e))?;
        Ok(Self { ctx })
    }

    /// Decodes one message: all of `message`, whose output is one payload.
    pub(crate) fn decode(
        &mut self,
        message: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), Error> {
        let start = out.len();
        let mut input = InBuffer::around(message);
        loop {
            let produced = out.len() - start;
            out.reserve((limit - produced.min(limit)).min(32 * 1024) + 1);
            let (before_in, before_out) = (input.pos(), out.len());
            // The buffer sets the Vec's length as zstd writes.
            let full = {
                let mut output = OutBuffer::around_pos(out, before_out);
                self.ctx
                    .run(&mut input, &mut output)
                    .map_err(|e| Error::corrupt("zstd", e))?;
                output.pos() == output.capacity()
            };
            if out.len() - start > limit {
                return Err(Error::MessageTooLarge { limit });
            }
            if input.pos() == message.len() && !full {
                return Ok(());
            }
            if !full && out.len() == before_out && input.pos() == before_in {
                return Err(Error::corrupt("zstd", "the stream makes no progress"));
            }
        }
    }

    pub(crate) fn reset(&mut self) -> Result<(), Error> {
        self.ctx.reinit().map_err(|e| Error::codec("zstd", e))
    }
}
