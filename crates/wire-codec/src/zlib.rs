//! zlib: one stream per connection (zlib-stream) or one per message
//! (payload compression), with flate2.

use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};

use crate::Decoded;
use crate::error::Error;

/// The zlib-stream suffix: every message ends with an empty stored block
/// from a sync flush.
pub(crate) const SUFFIX: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// An empty stored block at a byte boundary: what a sync flush writes, for a
/// message with nothing in it. zlib writes nothing at all for a flush with
/// no new input, which would be an empty message without the suffix.
pub(crate) const EMPTY_FLUSH: [u8; 5] = [0x00, 0x00, 0x00, 0xff, 0xff];

/// Discord's level: its first message starts `78 9c`, zlib's default.
pub(crate) const DEFAULT_LEVEL: u32 = 6;

/// Compresses messages into one zlib stream, or one stream per message.
#[derive(Debug)]
pub(crate) struct Encoder {
    ctx: Compress,
    per_message: bool,
    /// Every message ends with a full flush, so that it refers to nothing
    /// written before it.
    independent: bool,
    /// The next message starts with a full flush: independence was turned
    /// on after messages that may be referred to.
    cut_history: bool,
}

impl Encoder {
    pub(crate) fn new(level: u32, per_message: bool) -> Self {
        Self {
            ctx: Compress::new(flate2::Compression::new(level.min(9)), true),
            per_message,
            independent: false,
            cut_history: false,
        }
    }

    /// Appends one message holding `parts`, concatenated, to `out`.
    pub(crate) fn encode(&mut self, parts: &[&[u8]], out: &mut Vec<u8>) -> Result<(), Error> {
        if self.per_message {
            self.ctx.reset();
        }
        let start = out.len();
        if self.cut_history {
            // An empty block that empties the window: nothing after it can
            // refer to what came before.
            flush(&mut self.ctx, out, FlushCompress::Full)?;
            self.cut_history = false;
        }
        for &part in parts {
            deflate(&mut self.ctx, part, out)?;
        }
        let end = if self.per_message {
            FlushCompress::Finish
        } else if self.independent {
            FlushCompress::Full
        } else {
            FlushCompress::Sync
        };
        flush(&mut self.ctx, out, end)?;
        if out.len() == start {
            // Only after a flush, so the stream is at a byte boundary.
            out.extend_from_slice(&EMPTY_FLUSH);
        }
        Ok(())
    }

    /// From the next message on, every message refers to nothing written
    /// before it (zlib-stream; payload compression always does).
    pub(crate) fn set_independent(&mut self) {
        if self.per_message || self.independent {
            return;
        }
        self.independent = true;
        // Before the first message, there is nothing to cut off (and the
        // zlib header is still to come).
        self.cut_history = self.ctx.total_out() > 0;
    }

    /// The next message refers to nothing written before it (zlib-stream;
    /// payload compression always does).
    pub(crate) fn cut_history(&mut self) {
        if !self.per_message && self.ctx.total_out() > 0 {
            self.cut_history = true;
        }
    }

    pub(crate) fn is_independent(&self) -> bool {
        self.per_message || self.independent
    }

    pub(crate) fn reset(&mut self) {
        self.ctx.reset();
        self.cut_history = false;
    }
}

/// Compresses all of `input` into `out`, without flushing.
pub(crate) fn deflate(
    ctx: &mut Compress,
    mut input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    while !input.is_empty() {
        out.reserve(input.len() / 2 + 64);
        let before = ctx.total_in();
        ctx.compress_vec(input, out, FlushCompress::None)
            .map_err(|e| Error::codec("zlib", e))?;
        input = &input[consumed(before, ctx.total_in())..];
    }
    Ok(())
}

/// Flushes `ctx` into `out`: for a sync or full flush, up to a byte
/// boundary; for `Finish`, to the end of the stream.
pub(crate) fn flush(
    ctx: &mut Compress,
    out: &mut Vec<u8>,
    flush: FlushCompress,
) -> Result<(), Error> {
    loop {
        // zlib asks for more than six bytes of room when flushing, or it
        // may emit repeated flush markers.
        out.reserve(64);
        let status = ctx
            .compress_vec(&[], out, flush)
            .map_err(|e| Error::codec("zlib", e))?;
        let done = match flush {
            FlushCompress::Finish => status == Status::StreamEnd,
            // A sync or full flush is complete once it leaves output room
            // unused.
            _ => out.len() < out.capacity(),
        };
        if done {
            return Ok(());
        }
    }
}

/// Decompresses zlib-stream messages, or per-message zlib streams.
#[derive(Debug)]
pub(crate) struct Decoder {
    ctx: Decompress,
    per_message: bool,
    /// zlib-stream messages received without the suffix yet.
    pending: Vec<u8>,
}

impl Decoder {
    pub(crate) fn new(per_message: bool) -> Self {
        Self {
            ctx: Decompress::new(true),
            per_message,
            pending: Vec::new(),
        }
    }

    pub(crate) fn decode(
        &mut self,
        message: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<Decoded, Error> {
        if self.per_message {
            self.ctx.reset(true);
            let end = inflate(&mut self.ctx, message, out, limit, FlushDecompress::Finish)?;
            return if end == Status::StreamEnd {
                Ok(Decoded::Message)
            } else {
                Err(Error::Truncated)
            };
        }
        // Compressed bytes never take more room than the decoded message may.
        if self.pending.len() + message.len() > limit {
            self.pending = Vec::new();
            return Err(Error::MessageTooLarge { limit });
        }
        let status = if self.pending.is_empty() && message.ends_with(&SUFFIX) {
            // The usual case: one message, one payload, no copy.
            inflate(&mut self.ctx, message, out, limit, FlushDecompress::Sync)
        } else {
            self.pending.extend_from_slice(message);
            if !self.pending.ends_with(&SUFFIX) {
                return Ok(Decoded::Partial);
            }
            let status = inflate(
                &mut self.ctx,
                &self.pending,
                out,
                limit,
                FlushDecompress::Sync,
            );
            self.pending.clear();
            status
        };
        match status? {
            Status::StreamEnd => Err(Error::corrupt("zlib", "the stream ended mid-connection")),
            _ => Ok(Decoded::Message),
        }
    }

    pub(crate) fn reset(&mut self) {
        self.ctx.reset(true);
        self.pending = Vec::new();
    }
}

/// Inflates all of `input` into `out`, at most `limit` bytes of it, and
/// returns the last status.
fn inflate(
    ctx: &mut Decompress,
    mut input: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
    flush: FlushDecompress,
) -> Result<Status, Error> {
    let start = out.len();
    loop {
        let produced = out.len() - start;
        // Room for one byte past the limit, so that passing it is seen.
        out.reserve((limit - produced.min(limit)).min(32 * 1024) + 1);
        let (before_in, before_out) = (ctx.total_in(), out.len());
        let status = ctx
            .decompress_vec(input, out, flush)
            .map_err(|e| Error::corrupt("zlib", e))?;
        input = &input[consumed(before_in, ctx.total_in())..];
        if out.len() - start > limit {
            return Err(Error::MessageTooLarge { limit });
        }
        if status == Status::StreamEnd {
            return if input.is_empty() {
                Ok(status)
            } else {
                Err(Error::corrupt("zlib", "bytes after the end of the stream"))
            };
        }
        if input.is_empty() && out.len() < out.capacity() {
            return Ok(status);
        }
        if consumed(before_in, ctx.total_in()) == 0 && out.len() == before_out {
            return Err(Error::corrupt("zlib", "the stream makes no progress"));
        }
    }
}

/// How many bytes a call consumed, from the totals before and after.
fn consumed(before: u64, after: u64) -> usize {
    usize::try_from(after - before).unwrap_or(usize::MAX)
}
