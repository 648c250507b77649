//! Reading the top level of a gateway payload.

use std::ops::Range;

use crate::dispatch::Isa;
use crate::error::{Error, ErrorKind};

/// Where the top-level members of one payload are, and what `op` and `s` say.
///
/// A `Scan` holds offsets, not the payload: keep it beside the bytes it came
/// from (as the proxy's replay ring keeps `Bytes` and `Scan` together), and
/// pass those same bytes to the methods that take a `payload`.
///
/// # Panics
///
/// The methods that take a `payload` panic if it is shorter than the payload
/// that was scanned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scan {
    pub(crate) op: u64,
    pub(crate) seq: Option<u64>,
    /// The top-level `{`.
    pub(crate) open: u32,
    pub(crate) op_value: Span,
    pub(crate) s_value: Option<Span>,
    pub(crate) t_value: Option<Span>,
    pub(crate) d_value: Option<Span>,
}

/// A byte range kept in eight bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) end: u32,
}

/// An offset into a payload already checked to be under 4 GiB.
#[allow(clippy::cast_possible_truncation)]
const fn offset(at: usize) -> u32 {
    at as u32
}

impl Span {
    const fn new(range: Range<usize>) -> Self {
        Self {
            start: offset(range.start),
            end: offset(range.end),
        }
    }

    pub(crate) fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

impl Scan {
    /// The value of `op`.
    #[must_use]
    pub const fn op(&self) -> u64 {
        self.op
    }

    /// The value of `s`, or `None` where it is `null` or absent.
    #[must_use]
    pub const fn seq(&self) -> Option<u64> {
        self.seq
    }

    /// The event name in `t`, as written between its quotes, or `None` where
    /// `t` is `null` or absent.
    ///
    /// JSON escapes are not decoded (Discord's event names have none). It is
    /// also `None` if `payload` is not the payload that was scanned and the
    /// bytes are not UTF-8.
    #[must_use]
    pub fn event_type<'p>(&self, payload: &'p [u8]) -> Option<&'p str> {
        let value = self.t_value?.range();
        if payload[value.start] != b'"' {
            return None;
        }
        std::str::from_utf8(&payload[value.start + 1..value.end - 1]).ok()
    }

    /// The bytes of `d`'s value, or `None` where the payload has no `d`.
    #[must_use]
    pub fn d<'p>(&self, payload: &'p [u8]) -> Option<&'p [u8]> {
        Some(&payload[self.d_value?.range()])
    }

    /// The byte range of `op`'s value.
    #[must_use]
    pub fn op_range(&self) -> Range<usize> {
        self.op_value.range()
    }

    /// The byte range of `s`'s value (a number or `null`), or `None` where
    /// the payload has no `s`.
    #[must_use]
    pub fn seq_range(&self) -> Option<Range<usize>> {
        self.s_value.map(Span::range)
    }

    /// The byte range of `t`'s value (a string with its quotes, or `null`),
    /// or `None` where the payload has no `t`.
    #[must_use]
    pub fn event_type_range(&self) -> Option<Range<usize>> {
        self.t_value.map(Span::range)
    }

    /// The byte range of `d`'s value, or `None` where the payload has no `d`.
    #[must_use]
    pub fn d_range(&self) -> Option<Range<usize>> {
        self.d_value.map(Span::range)
    }
}

/// Reads payloads with one chosen [`Isa`].
///
/// [`scan`](crate::scan) and [`scan_complete`](crate::scan_complete) use the
/// fastest one available; a `Scanner` lets tests and benchmarks pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scanner {
    isa: Isa,
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

impl Scanner {
    /// A scanner with the fastest implementation this CPU supports.
    #[must_use]
    pub fn new() -> Self {
        Self { isa: Isa::best() }
    }

    /// A scanner with the given implementation, if this build and CPU can
    /// run it.
    #[must_use]
    pub fn with_isa(isa: Isa) -> Option<Self> {
        isa.is_available().then_some(Self { isa })
    }

    /// The implementation this scanner uses.
    #[must_use]
    pub const fn isa(self) -> Isa {
        self.isa
    }

    /// Scans a gateway payload, reading no further than it must.
    ///
    /// Members are read in order until `op`, `t`, `s` and `d` have all been
    /// seen. When `d` is the last of the four, its value is not read: it is
    /// taken to run up to the payload's closing `}`, and only its first and
    /// last bytes are checked against each other. So in Discord's key order
    /// (`t`, `s`, `op`, `d`) the cost does not depend on the size of `d`.
    /// Members that follow such a `d` (a gateway payload has none) are taken
    /// as part of it, unless that makes its ends disagree (`[` … `}`); then,
    /// and in every other case, the whole payload is read, as by
    /// [`scan_complete`](Self::scan_complete).
    ///
    /// # Errors
    ///
    /// If the payload is not a JSON object with an unsigned integer `op`, a
    /// `t` that is a string or `null`, an `s` that is an unsigned integer or
    /// `null` (both may be absent), at most one of each of the four keys, and
    /// well-formed JSON everywhere it was read; see [`scan_complete`](Self::scan_complete)
    /// for how far values that are stepped over are checked.
    pub fn scan(self, payload: &[u8]) -> Result<Scan, Error> {
        if let Some(scan) = discord_order(payload) {
            return Ok(scan);
        }
        self.scan_members(payload, true)
    }

    /// Scans a whole payload: every top-level member, up to the end.
    ///
    /// The top level is checked completely: its grammar, its keys (JSON
    /// escapes in keys are decoded, so `"\u0073"` is `s`), the values of
    /// `op`, `t` and `s`, that no key among `op`, `t`, `s`, `d` repeats, and
    /// that nothing but whitespace follows. Other values, `d` among them,
    /// are stepped over structurally: strings must be closed and brackets
    /// balanced, which finds the exact end of every valid JSON value, but the
    /// grammar inside them is not checked. A caller that forwards `d` from an
    /// untrusted peer must validate it itself.
    ///
    /// # Errors
    ///
    /// As for [`scan`](Self::scan).
    pub fn scan_complete(self, payload: &[u8]) -> Result<Scan, Error> {
        self.scan_members(payload, false)
    }

    /// The general path: any key order, any whitespace.
    pub(crate) fn scan_members(self, payload: &[u8], lazy: bool) -> Result<Scan, Error> {
        if u32::try_from(payload.len()).is_err() {
            return Err(Error::new(ErrorKind::TooLarge, 0));
        }
        let mut p = Parser {
            buf: payload,
            pos: 0,
        };
        p.skip_whitespace();
        if p.peek() != Some(b'{') {
            return Err(p.error(ErrorKind::NotAnObject));
        }
        let mut found = Found {
            open: offset(p.pos),
            ..Found::default()
        };
        p.pos += 1;
        p.skip_whitespace();
        if p.peek() == Some(b'}') {
            return Err(p.error(ErrorKind::MissingOp));
        }
        loop {
            let key_at = p.pos;
            let key = p.key()?;
            p.skip_whitespace();
            p.expect(b':')?;
            p.skip_whitespace();
            if found.has(key) {
                return Err(Error::new(ErrorKind::DuplicateKey(key.name()), key_at));
            }
            if found.value(&mut p, key, self.isa, lazy)? {
                return found.finish(payload.len());
            }
            p.skip_whitespace();
            match p.peek() {
                Some(b',') => {
                    p.pos += 1;
                    p.skip_whitespace();
                }
                Some(b'}') => {
                    p.pos += 1;
                    break;
                }
                _ => return Err(p.unexpected()),
            }
        }
        p.skip_whitespace();
        if p.pos != payload.len() {
            return Err(p.error(ErrorKind::TrailingBytes));
        }
        found.finish(payload.len())
    }
}

/// What the general path has found so far.
#[derive(Default)]
struct Found {
    open: u32,
    op: Option<(u64, Span)>,
    seq: Option<u64>,
    s: Option<Span>,
    t: Option<Span>,
    d: Option<Span>,
}

impl Found {
    fn has(&self, key: Key) -> bool {
        match key {
            Key::Op => self.op.is_some(),
            Key::S => self.s.is_some(),
            Key::T => self.t.is_some(),
            Key::D => self.d.is_some(),
            Key::Other => false,
        }
    }

    /// Reads the value of a member whose key is `key`. Returns `true` where
    /// it was a last `d` taken lazily, and nothing more is to be read.
    fn value(&mut self, p: &mut Parser<'_>, key: Key, isa: Isa, lazy: bool) -> Result<bool, Error> {
        let start = p.pos;
        match key {
            Key::Op => {
                let value = p
                    .unsigned()
                    .ok_or(Error::new(ErrorKind::InvalidOp, start))?;
                self.op = Some((value, Span::new(start..p.pos)));
            }
            Key::S => {
                if !p.eat(b"null") {
                    self.seq = Some(
                        p.unsigned()
                            .ok_or(Error::new(ErrorKind::InvalidSeq, start))?,
                    );
                }
                self.s = Some(Span::new(start..p.pos));
            }
            Key::T => {
                if p.peek() == Some(b'"') {
                    p.string()?;
                } else if !p.eat(b"null") {
                    return Err(p.error(ErrorKind::InvalidEventType));
                }
                self.t = Some(Span::new(start..p.pos));
            }
            Key::D => {
                let last = self.op.is_some() && self.s.is_some() && self.t.is_some();
                if lazy
                    && last
                    && let Ok(end) = lazy_value_end(p.buf, start)
                {
                    self.d = Some(Span::new(start..end));
                    return Ok(true);
                }
                p.skip_value(isa)?;
                self.d = Some(Span::new(start..p.pos));
            }
            Key::Other => p.skip_value(isa)?,
        }
        Ok(false)
    }

    fn finish(self, len: usize) -> Result<Scan, Error> {
        let (op, op_value) = self.op.ok_or(Error::new(ErrorKind::MissingOp, len))?;
        Ok(Scan {
            op,
            seq: self.seq,
            open: self.open,
            op_value,
            s_value: self.s,
            t_value: self.t,
            d_value: self.d,
        })
    }
}

/// The fast path for Discord's own shape: `{"t":…,"s":…,"op":…,"d":…}`,
/// compact. Returns `None` wherever the payload departs from it, and the
/// general path then reads it; both give the same `Scan` for any payload
/// this accepts.
fn discord_order(buf: &[u8]) -> Option<Scan> {
    if buf.get(..5)? != b"{\"t\":" || u32::try_from(buf.len()).is_err() {
        return None;
    }
    let mut i = 5;
    let t_start = i;
    if *buf.get(i)? == b'"' {
        // The quotes and what is between them.
        i += plain_string_len(&buf[i + 1..])? + 2;
    } else {
        i += literal_null(&buf[i..])?;
    }
    let t_value = Span::new(t_start..i);
    if buf.get(i..i + 5)? != b",\"s\":" {
        return None;
    }
    i += 5;
    let s_start = i;
    let seq = if let Some(len) = literal_null(&buf[i..]) {
        i += len;
        None
    } else {
        let (value, len) = leading_unsigned(&buf[i..])?;
        i += len;
        Some(value)
    };
    let s_value = Span::new(s_start..i);
    if buf.get(i..i + 6)? != b",\"op\":" {
        return None;
    }
    i += 6;
    let (op, len) = leading_unsigned(&buf[i..])?;
    let op_value = Span::new(i..i + len);
    i += len;
    if buf.get(i..i + 5)? != b",\"d\":" {
        return None;
    }
    i += 5;
    let end = lazy_value_end(buf, i).ok()?;
    Some(Scan {
        op,
        seq,
        open: 0,
        op_value,
        s_value: Some(s_value),
        t_value: Some(t_value),
        d_value: Some(Span::new(i..end)),
    })
}

/// 4 if `bytes` starts with `null`.
fn literal_null(bytes: &[u8]) -> Option<usize> {
    (bytes.get(..4)? == b"null").then_some(4)
}

/// The unsigned integer at the start of `bytes`, in JSON's form (no sign,
/// fraction, exponent or leading zero) and within `u64`: its value and
/// length.
fn leading_unsigned(bytes: &[u8]) -> Option<(u64, usize)> {
    let len = leading_digits(bytes);
    let digits = &bytes[..len];
    let value = if len < 20 {
        // At most 19 digits: no overflow possible.
        digits
            .iter()
            .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'))
    } else {
        digits.iter().try_fold(0u64, |acc, &d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })?
    };
    let leading_zero = len > 1 && bytes[0] == b'0';
    let not_integer = matches!(bytes.get(len), Some(b'.' | b'e' | b'E'));
    if len == 0 || leading_zero || not_integer {
        return None;
    }
    Some((value, len))
}

/// How many ASCII digits `bytes` starts with.
fn leading_digits(bytes: &[u8]) -> usize {
    let mut len = 0;
    // Eight bytes at a time (SWAR) while there are eight to read.
    while let Some(word) = bytes[len..].first_chunk::<8>() {
        let word = u64::from_le_bytes(*word);
        let not_digit = !bytes_below(word ^ (LO * u64::from(b'0')), 10) & HI;
        if not_digit != 0 {
            return len + (not_digit.trailing_zeros() / 8) as usize;
        }
        len += 8;
    }
    len + bytes[len..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count()
}

/// The length of a string's contents up to its closing quote, where they
/// are printable ASCII without escapes; `None` otherwise, or where fewer
/// than eight bytes follow them.
fn plain_string_len(bytes: &[u8]) -> Option<usize> {
    let mut len = 0;
    loop {
        let word = u64::from_le_bytes(*bytes.get(len..)?.first_chunk::<8>()?);
        let quote = bytes_equal(word, b'"');
        let other = bytes_below(word, 0x20) | bytes_equal(word, b'\\') | bytes_from_del(word);
        if quote != 0 {
            // Bits of the bytes before the first quote.
            let before = quote ^ (quote - 1);
            return (other & before == 0).then_some(len + (quote.trailing_zeros() / 8) as usize);
        }
        if other != 0 {
            return None;
        }
        len += 8;
    }
}

/// Byte-wise comparisons on eight bytes at once. Each returns the high bit
/// of every byte for which the comparison holds, and no other bit.
const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Bytes below `n`, for `n <= 0x80`.
const fn bytes_below(x: u64, n: u8) -> u64 {
    // (b & 0x7f) + (0x80 - n) reaches 0x80 exactly when b & 0x7f >= n, and
    // never carries into the next byte.
    !(((x & !HI) + LO * (0x80 - n as u64)) | x) & HI
}

/// Bytes equal to `b`.
const fn bytes_equal(x: u64, b: u8) -> u64 {
    bytes_below(x ^ (LO * b as u64), 1)
}

/// Bytes from 0x7f (DEL) up.
const fn bytes_from_del(x: u64) -> u64 {
    (((x & !HI) + LO) | x) & HI
}

/// The end of a value that starts at `start` and is the last member of the
/// top-level object, found from the end of the payload without reading the
/// value. Only its first and last bytes are checked against each other.
fn lazy_value_end(buf: &[u8], start: usize) -> Result<usize, Error> {
    let truncated = Error::new(ErrorKind::UnexpectedEnd, buf.len());
    let mut end = buf.len();
    while end > start && is_whitespace(buf[end - 1]) {
        end -= 1;
    }
    if end == start {
        return Err(truncated);
    }
    if buf[end - 1] != b'}' {
        return Err(Error::new(ErrorKind::TrailingBytes, end - 1));
    }
    end -= 1;
    while end > start && is_whitespace(buf[end - 1]) {
        end -= 1;
    }
    let value = &buf[start..end];
    let (Some(&first), Some(&last)) = (value.first(), value.last()) else {
        return Err(truncated);
    };
    let plausible = match first {
        b'{' => last == b'}',
        b'[' => last == b']',
        b'"' => {
            let backslashes = value[..value.len() - 1]
                .iter()
                .rev()
                .take_while(|&&b| b == b'\\')
                .count();
            value.len() >= 2 && last == b'"' && backslashes % 2 == 0
        }
        b't' => value == b"true",
        b'f' => value == b"false",
        b'n' => value == b"null",
        b'-' | b'0'..=b'9' => {
            let mut p = Parser { buf: value, pos: 0 };
            p.number().is_ok() && p.pos == value.len()
        }
        _ => return Err(Error::new(ErrorKind::UnexpectedByte(first), start)),
    };
    if plausible { Ok(end) } else { Err(truncated) }
}

const fn is_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// The top-level keys that mean something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    Op,
    T,
    S,
    D,
    Other,
}

impl Key {
    const fn name(self) -> &'static str {
        match self {
            Self::Op => "op",
            Self::T => "t",
            Self::S => "s",
            Self::D => "d",
            Self::Other => "",
        }
    }

    fn from_text(text: &[u8]) -> Self {
        match text {
            b"op" => Self::Op,
            b"t" => Self::T,
            b"s" => Self::S,
            b"d" => Self::D,
            _ => Self::Other,
        }
    }
}

/// A cursor over the payload. Every method leaves `pos` just past what it
/// read, or returns an error naming the offset where reading failed.
struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn rest(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn error(&self, kind: ErrorKind) -> Error {
        Error::new(kind, self.pos)
    }

    fn unexpected(&self) -> Error {
        match self.peek() {
            Some(byte) => self.error(ErrorKind::UnexpectedByte(byte)),
            None => self.error(ErrorKind::UnexpectedEnd),
        }
    }

    fn eat(&mut self, literal: &[u8]) -> bool {
        let found = self.rest().starts_with(literal);
        if found {
            self.pos += literal.len();
        }
        found
    }

    fn expect(&mut self, byte: u8) -> Result<(), Error> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(is_whitespace) {
            self.pos += 1;
        }
    }

    /// A key string, validated completely and compared after decoding escapes.
    fn key(&mut self) -> Result<Key, Error> {
        // The common case: a short key without escapes.
        match *self.rest() {
            [b'"', key @ (b't' | b's' | b'd'), b'"', ..] => {
                self.pos += 3;
                return Ok(Key::from_text(&[key]));
            }
            [b'"', b'o', b'p', b'"', ..] => {
                self.pos += 4;
                return Ok(Key::Op);
            }
            [b'"', ..] => {}
            _ => return Err(self.unexpected()),
        }
        let (content, escaped) = self.string()?;
        let raw = &self.buf[content];
        if !escaped {
            return Ok(Key::from_text(raw));
        }
        // At most two decoded bytes can still spell a key we know.
        let mut decoded = [0u8; 2];
        let mut len = 0;
        for ch in unescape(raw) {
            let mut utf8 = [0u8; 4];
            for &byte in ch.encode_utf8(&mut utf8).as_bytes() {
                if len == decoded.len() {
                    return Ok(Key::Other);
                }
                decoded[len] = byte;
                len += 1;
            }
        }
        Ok(Key::from_text(&decoded[..len]))
    }

    /// A string, validated completely: no control characters, valid escapes
    /// (surrogates paired), valid UTF-8. Returns the range between the quotes
    /// and whether it holds escapes.
    fn string(&mut self) -> Result<(Range<usize>, bool), Error> {
        debug_assert_eq!(self.peek(), Some(b'"'));
        let start = self.pos + 1;
        let mut i = start;
        let mut escaped = false;
        let mut ascii = true;
        loop {
            let Some(&byte) = self.buf.get(i) else {
                return Err(Error::new(ErrorKind::UnexpectedEnd, self.buf.len()));
            };
            match byte {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    i = self.escape(i)?;
                    continue;
                }
                0x00..=0x1f => return Err(Error::new(ErrorKind::InvalidString, i)),
                0x80.. => ascii = false,
                _ => {}
            }
            i += 1;
        }
        if !ascii && let Err(e) = std::str::from_utf8(&self.buf[start..i]) {
            return Err(Error::new(
                ErrorKind::InvalidString,
                start + e.valid_up_to(),
            ));
        }
        self.pos = i + 1;
        Ok((start..i, escaped))
    }

    /// Checks the escape at `buf[at] == '\\'` and returns the index past it.
    fn escape(&self, at: usize) -> Result<usize, Error> {
        let invalid = Error::new(ErrorKind::InvalidString, at);
        match self.buf.get(at + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(at + 2),
            Some(b'u') => {
                let unit = self.hex4(at + 2)?;
                match unit {
                    0xD800..=0xDBFF => {
                        if self.buf.get(at + 6..at + 8) != Some(b"\\u") {
                            return Err(invalid);
                        }
                        match self.hex4(at + 8)? {
                            0xDC00..=0xDFFF => Ok(at + 12),
                            _ => Err(invalid),
                        }
                    }
                    0xDC00..=0xDFFF => Err(invalid),
                    _ => Ok(at + 6),
                }
            }
            Some(_) => Err(invalid),
            None => Err(Error::new(ErrorKind::UnexpectedEnd, self.buf.len())),
        }
    }

    fn hex4(&self, at: usize) -> Result<u32, Error> {
        let Some(digits) = self.buf.get(at..at + 4) else {
            return Err(Error::new(ErrorKind::UnexpectedEnd, self.buf.len()));
        };
        digits.iter().enumerate().try_fold(0, |acc, (k, &b)| {
            let digit = char::from(b)
                .to_digit(16)
                .ok_or(Error::new(ErrorKind::InvalidString, at + k))?;
            Ok(acc * 16 + digit)
        })
    }

    /// An unsigned integer in JSON's form that fits in a `u64`; see
    /// [`leading_unsigned`].
    fn unsigned(&mut self) -> Option<u64> {
        let (value, len) = leading_unsigned(self.rest())?;
        self.pos += len;
        Some(value)
    }

    /// Any JSON number, checked against the grammar.
    fn number(&mut self) -> Result<(), Error> {
        self.eat(b"-");
        let digits = |p: &mut Self| {
            let n = p.rest().iter().take_while(|b| b.is_ascii_digit()).count();
            p.pos += n;
            n
        };
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return Err(self.error(ErrorKind::InvalidNumber)),
        }
        if self.eat(b".") && digits(self) == 0 {
            return Err(self.error(ErrorKind::InvalidNumber));
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if digits(self) == 0 {
                return Err(self.error(ErrorKind::InvalidNumber));
            }
        }
        Ok(())
    }

    fn literal(&mut self, literal: &[u8]) -> Result<(), Error> {
        if self.eat(literal) {
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    /// A string stepped over structurally: up to the first unescaped quote.
    fn skip_string(&mut self) -> Result<(), Error> {
        let mut i = self.pos + 1;
        loop {
            let Some(found) = memchr::memchr2(b'"', b'\\', &self.buf[i..]) else {
                return Err(Error::new(ErrorKind::UnexpectedEnd, self.buf.len()));
            };
            i += found;
            if self.buf[i] == b'"' {
                self.pos = i + 1;
                return Ok(());
            }
            i += 2;
            if i > self.buf.len() {
                return Err(Error::new(ErrorKind::UnexpectedEnd, self.buf.len()));
            }
        }
    }

    /// Steps over any value; containers and strings structurally.
    fn skip_value(&mut self, isa: Isa) -> Result<(), Error> {
        match self.peek() {
            Some(b'{' | b'[') => self.pos = isa.skip_container(self.buf, self.pos)?,
            Some(b'"') => self.skip_string()?,
            Some(b't') => self.literal(b"true")?,
            Some(b'f') => self.literal(b"false")?,
            Some(b'n') => self.literal(b"null")?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            _ => return Err(self.unexpected()),
        }
        Ok(())
    }
}

/// Decodes the escapes of a string already checked by [`Parser::string`].
fn unescape(raw: &[u8]) -> impl Iterator<Item = char> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let &byte = raw.get(i)?;
        if byte != b'\\' {
            // Keys are compared byte by byte; non-ASCII bytes never match a
            // known key, so any placeholder that is not ASCII will do.
            i += 1;
            return Some(if byte.is_ascii() {
                char::from(byte)
            } else {
                '\u{80}'
            });
        }
        let hex = |at: usize| {
            raw.get(at..at + 4)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| u32::from_str_radix(d, 16).ok())
                .unwrap_or(0)
        };
        let ch = match raw.get(i + 1) {
            Some(b'u') => {
                let unit = hex(i + 2);
                if (0xD800..=0xDBFF).contains(&unit) {
                    let low = hex(i + 8);
                    i += 12;
                    char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))
                } else {
                    i += 6;
                    char::from_u32(unit)
                }
            }
            Some(&escape) => {
                i += 2;
                Some(match escape {
                    b'b' => '\u{8}',
                    b'f' => '\u{c}',
                    b'n' => '\n',
                    b'r' => '\r',
                    b't' => '\t',
                    other => char::from(other),
                })
            }
            None => None,
        };
        Some(ch.unwrap_or('\u{fffd}'))
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The high bits of the bytes of `x` for which `f` holds, byte by byte.
    fn bytewise(x: u64, f: impl Fn(u8) -> bool) -> u64 {
        x.to_le_bytes()
            .iter()
            .enumerate()
            .filter(|(_, b)| f(**b))
            .fold(0, |acc, (i, _)| acc | (0x80 << (8 * i)))
    }

    fn check_swar(x: u64) {
        for n in [1, 10, 0x20, 0x7f, 0x80] {
            assert_eq!(bytes_below(x, n), bytewise(x, |b| b < n), "{x:#x} < {n}");
        }
        for b in [b'"', b'\\', 0, 0xff] {
            assert_eq!(bytes_equal(x, b), bytewise(x, |c| c == b), "{x:#x} == {b}");
        }
        assert_eq!(
            bytes_from_del(x),
            bytewise(x, |b| b >= 0x7f),
            "{x:#x} >= 0x7f"
        );
    }

    #[test]
    fn swar_comparisons_every_byte_in_every_lane() {
        for lane in 0..8 {
            for byte in 0..=255u64 {
                for filler in [0u64, 0x41, 0x7f, 0x80, 0xff] {
                    let x = ((LO * filler) & !(0xff << (8 * lane))) | (byte << (8 * lane));
                    check_swar(x);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn swar_comparisons_on_any_word(x in any::<u64>()) {
            check_swar(x);
        }

        #[test]
        fn leading_unsigned_is_str_parse(digits in "[0-9]{1,24}", tail in "[,}.eE x]?") {
            let text = format!("{digits}{tail}");
            let want = if (digits.len() > 1 && digits.starts_with('0')) || matches!(tail.as_str(), "." | "e" | "E") {
                None
            } else {
                digits.parse::<u64>().ok().map(|v| (v, digits.len()))
            };
            prop_assert_eq!(leading_unsigned(text.as_bytes()), want);
        }
    }
}

#[cfg(test)]
mod fast_path {
    #[test]
    fn discord_frames_take_the_fast_path() {
        for (name, payload) in crate::tests::FRAMES {
            if payload.starts_with(b"{\"t\":") {
                assert!(super::discord_order(payload).is_some(), "{name}");
            }
        }
    }
}
