//! Shared deflate bodies: an event compressed once, sent to every zlib
//! client with its own sequence number.
//!
//! Every client of a shard gets the same dispatch but for the digits of
//! `s`: `{"t":"NAME","s":` (the head), the digits, then `,"op":0,"d":…}`
//! (the tail). Deflate allows a block that refers to nothing before it
//! anywhere in a stream, so the head and the tail are each compressed once,
//! from an empty window, and every client's message is made of copies:
//!
//! ```text
//! head'                 LEN NLEN digits      tail'                   (zlib-stream)
//! [blocks … 000·····]   [n  !n]  [n bytes]   [blocks … 000····· 00 00 ff ff]
//! ```
//!
//! Each part is a raw deflate ended with a sync flush, which is an empty
//! stored block: three header bits, padding to the byte, then `LEN = 0000`,
//! `NLEN = ffff`. The head's trailing `00 00 ff ff` is dropped and a
//! client's `LEN`/`NLEN` and digits put in its place, so that the empty
//! block becomes a stored block holding the digits, for no byte more than
//! the digits and their length. The tail's flush stays: its `00 00 ff ff` is
//! what zlib-stream clients wait for.
//!
//! A head shorter than 64 bytes (Discord's key order makes it ~25 bytes)
//! is not compressed but put in the stored block, before the digits:
//! deflate gains nothing on so few bytes, and each compressed part costs a
//! reset of zlib's 128 KiB hash table, which is more than compressing a
//! kilobyte at level 1.
//!
//! - **zlib-stream**: the message is exactly the above; the connection's
//!   stream began with its first message, which carried the zlib header.
//! - **Payload compression**: the zlib header, the above, a final empty
//!   fixed-Huffman block (`03 00`), and the Adler-32 of the whole payload,
//!   combined from the head's and tail's checksums and the digits without
//!   reading the event again.
//!
//! A zlib-stream connection that gets shared bodies must compress its own
//! messages (HELLO, READY, …) so that they never refer to the shared ones,
//! which its context has not seen: see [`Encoder::set_independent`].
//!
//! [`Encoder::set_independent`]: crate::Encoder::set_independent

use std::fmt;
use std::sync::Arc;

use flate2::{Compress, FlushCompress};

use crate::adler32;
use crate::error::Error;
use crate::zlib;

/// Heads shorter than this are stored, not compressed.
const STORE_BELOW: usize = 64;

/// The most bytes a stored block holds.
const MAX_STORED: usize = 0xffff;

/// The first byte of a stored block that is not the last one, at a byte
/// boundary: `BFINAL = 0`, `BTYPE = 00`, then padding.
const STORED_HEADER: u8 = 0x00;

/// A final, empty block with fixed Huffman codes, at a byte boundary:
/// `BFINAL = 1`, `BTYPE = 01`, the end-of-block code (seven zero bits),
/// padding. What zlib writes to finish a stream after a flush.
const FINAL_BLOCK: [u8; 2] = [0x03, 0x00];

/// Compresses the head and tail of events into [`SharedBody`]s, reusing one
/// raw deflate context and one buffer.
pub struct SharedCompressor {
    ctx: Compress,
    level: u32,
    scratch: Vec<u8>,
}

impl SharedCompressor {
    /// A compressor at zlib level `level`, 0–9 (above 9 is 9).
    #[must_use]
    pub fn new(level: u32) -> Self {
        let level = level.min(9);
        Self {
            ctx: Compress::new(flate2::Compression::new(level), false),
            level,
            scratch: Vec::new(),
        }
    }

    /// The zlib level, 0–9.
    #[must_use]
    pub const fn level(&self) -> u32 {
        self.level
    }

    /// Compresses `head` and `tail`, each on its own from an empty window
    /// (a head of a few dozen bytes is kept as it is instead).
    ///
    /// The body is one allocation, the exact size of the compressed bytes
    /// (the compressor keeps its own buffer between calls).
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] if zlib fails, which it does not for valid input
    /// short of running out of memory.
    pub fn compress(&mut self, head: &[u8], tail: &[u8]) -> Result<SharedBody, Error> {
        self.scratch.clear();
        let stored_head = if head.len() < STORE_BELOW {
            self.scratch.push(STORED_HEADER);
            self.scratch.extend_from_slice(head);
            1
        } else {
            self.compress_part(head)?;
            open_stored(&mut self.scratch, 0);
            self.scratch.len()
        };
        let tail_start = self.scratch.len();
        self.compress_part(tail)?;
        end_tail(&mut self.scratch, tail_start);
        Ok(SharedBody {
            bytes: Arc::from(&self.scratch[..]),
            stored_head,
            tail_start,
            head_adler: adler32::update(adler32::EMPTY, head),
            tail_adler: adler32::update(adler32::EMPTY, tail),
            tail_len_mod: adler32::len_mod(tail.len()),
            zlib_header: zlib_header(self.level),
        })
    }

    /// Appends `part`, compressed from an empty window and sync-flushed,
    /// to the scratch buffer.
    fn compress_part(&mut self, part: &[u8]) -> Result<(), Error> {
        self.ctx.reset();
        zlib::deflate(&mut self.ctx, part, &mut self.scratch)?;
        zlib::flush(&mut self.ctx, &mut self.scratch, FlushCompress::Sync)
    }
}

/// One event's head and tail, compressed once, from which each client's
/// message is copied with its own bytes in between (the digits of `s`).
///
/// Cloning is cheap: clones share the compressed bytes.
#[derive(Clone)]
pub struct SharedBody {
    /// Three runs: what comes before the stored block's `LEN` (the
    /// compressed head without its flush's `LEN`/`NLEN`, or a stored
    /// block's header alone); the head itself if it is stored; the
    /// compressed tail with its flush.
    bytes: Arc<[u8]>,
    /// Where the stored head starts in `bytes`.
    stored_head: usize,
    /// Where the compressed tail starts in `bytes`.
    tail_start: usize,
    head_adler: u32,
    tail_adler: u32,
    /// The tail's length modulo 65,521: all that combining checksums needs.
    tail_len_mod: u16,
    /// The zlib header of the level, for payload compression.
    zlib_header: [u8; 2],
}

impl SharedBody {
    /// Appends one zlib-stream message to `out`: the head, `middle`, the
    /// tail, ending with `00 00 ff ff`. There is no zlib header: the message
    /// continues a connection's stream, whose first message had it.
    ///
    /// `middle` may be any bytes of any length; past 65,535 bytes (counting
    /// a head shorter than 64 bytes, stored with it) it takes several
    /// stored blocks, five bytes more for each.
    pub fn write_stream(&self, middle: &[u8], out: &mut Vec<u8>) {
        let before = &self.bytes[..self.stored_head];
        let head = &self.bytes[self.stored_head..self.tail_start];
        let tail = &self.bytes[self.tail_start..];
        out.reserve(before.len() + stored_len(head.len() + middle.len()) + tail.len());
        out.extend_from_slice(before);
        write_stored(head, middle, out);
        out.extend_from_slice(tail);
    }

    /// Appends one message for payload compression to `out`: a complete
    /// zlib stream of the head, `middle` and the tail, checksum included.
    ///
    /// `middle` is as for [`write_stream`](Self::write_stream).
    pub fn write_payload(&self, middle: &[u8], out: &mut Vec<u8>) {
        out.reserve(self.bytes.len() + stored_len(middle.len()) + 8);
        out.extend_from_slice(&self.zlib_header);
        self.write_stream(middle, out);
        out.extend_from_slice(&FINAL_BLOCK);
        let adler = adler32::combine(
            adler32::update(self.head_adler, middle),
            self.tail_adler,
            u32::from(self.tail_len_mod),
        );
        out.extend_from_slice(&adler.to_be_bytes());
    }

    /// The bytes this body holds: a zlib-stream message is this plus the
    /// middle and four bytes (when it takes one stored block).
    #[must_use]
    pub fn compressed_len(&self) -> usize {
        self.bytes.len()
    }
}

impl fmt::Debug for SharedCompressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedCompressor")
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for SharedBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBody")
            .field("head_bytes", &self.tail_start)
            .field("tail_bytes", &(self.bytes.len() - self.tail_start))
            .finish_non_exhaustive()
    }
}

/// Makes the compressed part in `buf[start..]` end where a stored block's
/// `LEN` goes.
///
/// zlib (zlib-rs) always ends a sync flush with an empty stored block, even
/// for an empty part: its `00 00 ff ff` is dropped and its header kept.
/// Should a backend write none, a stored block is opened at the byte
/// boundary the flush left.
fn open_stored(buf: &mut Vec<u8>, start: usize) {
    if buf.len() - start > zlib::SUFFIX.len() && buf.ends_with(&zlib::SUFFIX) {
        buf.truncate(buf.len() - zlib::SUFFIX.len());
    } else {
        buf.push(STORED_HEADER);
    }
}

/// Makes the compressed tail in `buf[start..]` end with `00 00 ff ff`, as
/// zlib-stream clients expect: zlib's sync flush does; if a backend wrote
/// no empty stored block, one is added.
fn end_tail(buf: &mut Vec<u8>, start: usize) {
    if !buf[start..].ends_with(&zlib::SUFFIX) {
        buf.extend_from_slice(&zlib::EMPTY_FLUSH);
    }
}

/// The bytes [`write_stored`] appends for `len` bytes.
fn stored_len(len: usize) -> usize {
    let blocks = len.div_ceil(MAX_STORED).max(1);
    len + 4 * blocks + (blocks - 1)
}

/// Appends `a` then `b` as stored blocks, the first one's header already
/// written, each later one with its own.
fn write_stored(mut a: &[u8], mut b: &[u8], out: &mut Vec<u8>) {
    loop {
        let len = (a.len() + b.len()).min(MAX_STORED);
        #[allow(clippy::cast_possible_truncation)] // at most MAX_STORED
        let len16 = len as u16;
        out.extend_from_slice(&len16.to_le_bytes());
        out.extend_from_slice(&(!len16).to_le_bytes());
        let (from_a, rest) = a.split_at(len.min(a.len()));
        let (from_b, rest_b) = b.split_at(len - from_a.len());
        out.extend_from_slice(from_a);
        out.extend_from_slice(from_b);
        (a, b) = (rest, rest_b);
        if a.is_empty() && b.is_empty() {
            return;
        }
        out.push(STORED_HEADER);
    }
}

/// The two bytes zlib starts a stream with at `level`: deflate with a
/// 32 KiB window (`78`), then the level's class (0–1 fastest, 2–5 fast, 6
/// default, 7–9 best) and a check making the pair a multiple of 31.
fn zlib_header(level: u32) -> [u8; 2] {
    const CMF: u16 = 0x78;
    let class: u16 = match level {
        0 | 1 => 0,
        2..=5 => 1,
        6 => 2,
        _ => 3,
    };
    let flg = class << 6;
    let flg = flg + 31 - (CMF << 8 | flg) % 31;
    // Below 256: `class << 6` is at most 192, the check at most 31.
    #[allow(clippy::cast_possible_truncation)]
    let header = [CMF as u8, flg as u8];
    header
}

#[cfg(test)]
mod tests {
    use flate2::{Decompress, FlushDecompress, Status};

    use super::*;

    #[test]
    fn zlib_header_is_what_zlib_writes_at_each_level() {
        for level in 0..=9 {
            let mut ctx = Compress::new(flate2::Compression::new(level), true);
            let mut out = Vec::with_capacity(64);
            ctx.compress_vec(b"x", &mut out, FlushCompress::Finish)
                .unwrap();
            assert_eq!(zlib_header(level), out[..2], "level {level}");
        }
        assert_eq!(zlib_header(6), [0x78, 0x9c]);
        assert_eq!(zlib_header(1), [0x78, 0x01]);
    }

    #[test]
    fn stored_len_is_what_write_stored_writes() {
        let lens = [
            0,
            1,
            20,
            MAX_STORED - 1,
            MAX_STORED,
            MAX_STORED + 1,
            3 * MAX_STORED + 7,
        ];
        for len in lens {
            let data: Vec<u8> = (0..len).map(|i| i.to_le_bytes()[0] ^ 0x5a).collect();
            for cut in [0, 1, len / 2, len.saturating_sub(1), len] {
                let (a, b) = data.split_at(cut.min(len));
                let mut out = vec![STORED_HEADER];
                write_stored(a, b, &mut out);
                assert_eq!(out.len(), 1 + stored_len(len), "{len}");
                assert_eq!(inflate(&out), data, "{len} cut at {cut}");
            }
        }
    }

    #[test]
    fn short_heads_are_stored_and_long_ones_compressed() {
        let mut compressor = SharedCompressor::new(6);
        let tail = b",\"op\":0,\"d\":{}}";
        for len in [0, 1, STORE_BELOW - 1, STORE_BELOW, STORE_BELOW + 1, 500] {
            let head = vec![b'a'; len];
            let body = compressor.compress(&head, tail).unwrap();
            if len < STORE_BELOW {
                assert_eq!(body.stored_head, 1, "{len}");
                assert_eq!(body.bytes[..1], [STORED_HEADER]);
                assert_eq!(body.bytes[1..body.tail_start], head[..]);
            } else {
                assert_eq!(body.stored_head, body.tail_start, "{len}");
                assert!(body.tail_start < len / 2, "{len}: compressed");
            }
            let mut message = Vec::new();
            body.write_stream(b"42", &mut message);
            assert_eq!(inflate(&message), [&head[..], b"42", tail].concat());
        }
    }

    /// Raw-inflates `compressed` on its own; fails on anything but whole
    /// blocks ending at a byte boundary.
    fn inflate(compressed: &[u8]) -> Vec<u8> {
        let mut ctx = Decompress::new(false);
        let mut plain = Vec::with_capacity(1 << 20);
        let status = ctx
            .decompress_vec(compressed, &mut plain, FlushDecompress::Sync)
            .unwrap();
        assert_eq!(status, Status::Ok);
        assert_eq!(ctx.total_in(), compressed.len() as u64);
        plain
    }

    /// What the layout rests on, checked at every level for the inputs that
    /// could break it (empty, already ending like a flush, several blocks):
    /// a part compressed from an empty window and sync-flushed ends with an
    /// empty stored block whose `LEN`/`NLEN` are its last four bytes, so
    /// that other `LEN`/`NLEN` and bytes put there make a stored block of
    /// them; for an empty part it is that block alone.
    #[test]
    fn a_flushed_part_ends_with_an_empty_stored_block() {
        let (ones, zeros) = (vec![0xff; 70_000], vec![0; 200_000]);
        let parts: [&[u8]; 6] = [
            b"",
            b"{\"t\":\"MESSAGE_CREATE\",\"s\":",
            b"\x00\x00\xff\xff",
            b"\x00\x00\x00\xff\xff",
            &ones,
            &zeros,
        ];
        for level in 0..=9 {
            let mut compressor = SharedCompressor::new(level);
            for part in parts {
                compressor.scratch.clear();
                compressor.compress_part(part).unwrap();
                let out = &compressor.scratch;
                assert!(
                    out.len() > 4 && out.ends_with(&zlib::SUFFIX),
                    "level {level}"
                );
                if part.is_empty() {
                    assert_eq!(out[..], zlib::EMPTY_FLUSH, "level {level}");
                }
                assert_eq!(inflate(out), part, "level {level}");
                let mut replaced = out[..out.len() - 4].to_vec();
                replaced.extend_from_slice(&[2, 0, 0xfd, 0xff, b'4', b'2']);
                assert_eq!(inflate(&replaced), [part, b"42"].concat(), "level {level}");
            }
        }
    }

    /// The fallbacks for a backend that would end a part without an empty
    /// stored block, which zlib-rs never does (above).
    #[test]
    fn a_part_without_an_empty_stored_block_still_makes_a_body() {
        // A head that compressed to nothing at all, and a tail that is one
        // stored block of `,"op":0}` and no more.
        let tail = b",\"op\":0}";
        let mut buf = Vec::new();
        open_stored(&mut buf, 0);
        assert_eq!(buf, [STORED_HEADER]);
        let split = buf.len();
        buf.push(0x00);
        buf.extend_from_slice(&8u16.to_le_bytes());
        buf.extend_from_slice(&(!8u16).to_le_bytes());
        buf.extend_from_slice(tail);
        end_tail(&mut buf, split);
        assert!(buf.ends_with(&zlib::EMPTY_FLUSH));
        let body = SharedBody {
            bytes: Arc::from(&buf[..]),
            stored_head: split,
            tail_start: split,
            head_adler: adler32::EMPTY,
            tail_adler: adler32::update(adler32::EMPTY, tail),
            tail_len_mod: adler32::len_mod(tail.len()),
            zlib_header: zlib_header(6),
        };
        let mut message = Vec::new();
        body.write_stream(b"7", &mut message);
        assert!(message.ends_with(&zlib::SUFFIX));
        assert_eq!(inflate(&message), [&b"7"[..], tail].concat());
        // Tail fallback only when needed: a flushed tail is kept as it is.
        let mut flushed = zlib::EMPTY_FLUSH.to_vec();
        end_tail(&mut flushed, 0);
        assert_eq!(flushed, zlib::EMPTY_FLUSH);
    }

    #[test]
    fn levels_are_clamped() {
        assert_eq!(SharedCompressor::new(0).level(), 0);
        assert_eq!(SharedCompressor::new(9).level(), 9);
        assert_eq!(SharedCompressor::new(100).level(), 9);
    }

    #[test]
    fn debug_shows_sizes_not_bytes() {
        let body = SharedCompressor::new(6).compress(b"head", b"tail").unwrap();
        let debug = format!("{body:?}");
        assert!(debug.starts_with("SharedBody { head_bytes: "), "{debug}");
        assert!(!debug.contains('['), "{debug}");
    }
}
