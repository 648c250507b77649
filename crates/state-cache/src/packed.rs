//! Packed JSON: a compact, lossless binary form of JSON values, shaped for
//! Discord's data.
//!
//! Every cached object (a member, a channel, a guild's own fields) is kept
//! as one packed value. Packing keeps everything, including fields nobody
//! here knows, so writing a value back gives the same JSON value; it is
//! compact because Discord's payloads are mostly the same few things:
//!
//! | JSON | packed |
//! | --- | --- |
//! | a key | its number in the cache's [`Keys`] table (one byte for the first 127 keys) |
//! | `null`, `true`, `false` | one byte |
//! | an integer | a tag and a LEB128 varint |
//! | a snowflake string `"1234…"` (any canonical decimal string below 2^64) | a tag and 8 bytes, or a varint when shorter |
//! | `"2024-01-01T00:00:00.000000+00:00"` (Discord's timestamps, with or without the fraction) | a tag and 8 bytes |
//! | a 32-hex-digit hash, with or without `a_` | a tag and 16 bytes |
//! | any other string | a tag, a varint length and the string as it will be written, escapes and all |
//! | an array, an object | a tag, the items, an end mark |
//!
//! A value is read back by walking it; nothing is indexed. The cache keeps
//! the values small (one member, one channel), so the walk is short.
//!
//! Strings are stored escaped, ready to write, so writing JSON back is
//! mostly copying. Floats are written in Rust's shortest round-trip form,
//! which keeps them the same number (`1.0` stays a float).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
/// A non-negative integer: a varint follows.
const UINT: u8 = 3;
/// A negative integer: the varint of `-(n + 1)` follows.
const NEG: u8 = 4;
/// An `f64`: 8 bytes, little-endian.
const FLOAT: u8 = 5;
/// A string: a varint length and the escaped bytes, without quotes.
const STR: u8 = 6;
/// A decimal string: the number as a varint.
const DIGITS: u8 = 7;
/// A decimal string: the number as 8 bytes (when the varint is longer).
const DIGITS_WIDE: u8 = 8;
/// `YYYY-MM-DDTHH:MM:SS.ffffff+00:00`: Unix microseconds, 8 bytes.
const TIME_MICROS: u8 = 9;
/// `YYYY-MM-DDTHH:MM:SS+00:00`: Unix microseconds, 8 bytes.
const TIME_SECS: u8 = 10;
/// 32 lowercase hex digits: 16 bytes.
const HASH: u8 = 11;
/// `a_` and 32 lowercase hex digits: 16 bytes.
const HASH_ANIMATED: u8 = 12;
/// An array: values up to [`END`].
const ARRAY: u8 = 13;
/// An object: (key, value) pairs up to a key of 0.
const OBJECT: u8 = 14;
/// The end of an array.
const END: u8 = 15;

/// In an object, the key number that ends it.
const KEY_END: u32 = 0;
/// The key number that says the key follows inline (the table is full).
const KEY_INLINE: u32 = 1;
/// Key numbers below this are [`KEY_END`] and [`KEY_INLINE`].
const KEY_BASE: u32 = 2;

/// At most this many keys are numbered; any more are stored inline. Discord
/// uses a few hundred; the bound keeps a stream of made-up keys from growing
/// the table without end.
const MAX_KEYS: usize = 1 << 14;

/// The keys of one cache, numbered in the order they were first seen.
///
/// The first keys are the ones the cache looks up ([`key`]), at fixed
/// numbers. The table only grows, so one shared through an [`Arc`] (by the
/// cache and its snapshots) is copied only when a key is new to it; see
/// [`pack`].
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    numbers: HashMap<Box<str>, u32>,
    /// Each key as it is written: `"key":`.
    written: Vec<Box<[u8]>>,
    /// [`heap_bytes`](Self::heap_bytes), kept up to date.
    bytes: usize,
}

impl Default for Keys {
    fn default() -> Self {
        let mut keys = Self {
            numbers: HashMap::new(),
            written: Vec::new(),
            bytes: 0,
        };
        for (i, name) in key::NAMES.iter().enumerate() {
            let number = keys.intern(name);
            debug_assert_eq!(number, key::Key(u32::try_from(i).unwrap_or(u32::MAX)));
        }
        keys
    }
}

impl Keys {
    /// The number of `name`, numbering it if it is new; `None` when the
    /// table is full. Only a new key writes to the table, so only a new
    /// key copies a table that is shared.
    fn number(keys: &mut Arc<Self>, name: &str) -> Option<u32> {
        if let Some(&n) = keys.numbers.get(name) {
            return Some(n);
        }
        if keys.written.len() >= MAX_KEYS {
            return None;
        }
        Some(Arc::make_mut(keys).intern(name).0)
    }

    fn intern(&mut self, name: &str) -> key::Key {
        let n = u32::try_from(self.written.len()).unwrap_or(u32::MAX);
        let mut written = Vec::with_capacity(name.len() + 3);
        written.push(b'"');
        escape_into(name, &mut written);
        written.extend_from_slice(b"\":");
        self.bytes += Self::entry_bytes(&written);
        self.written.push(written.into_boxed_slice());
        self.numbers.insert(name.into(), n);
        key::Key(n)
    }

    /// What one key costs, roughly: its written form, its name (about as
    /// long) and the table slots.
    fn entry_bytes(written: &[u8]) -> usize {
        2 * written.len() + 48
    }

    /// How many keys are numbered.
    pub(crate) fn len(&self) -> usize {
        self.written.len()
    }

    /// Every key's name, in number order.
    pub(crate) fn names(&self) -> Vec<&str> {
        let mut names = vec![""; self.written.len()];
        for (name, &n) in &self.numbers {
            if let Some(slot) = names.get_mut(n as usize) {
                *slot = name;
            }
        }
        names
    }

    /// The table that numbers `names` in order, if it starts with the
    /// fixed keys and names no key twice, and is not too long.
    pub(crate) fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let mut keys = Self {
            numbers: HashMap::new(),
            written: Vec::new(),
            bytes: 0,
        };
        for name in names {
            if keys.written.len() >= MAX_KEYS || keys.numbers.contains_key(name) {
                return None;
            }
            keys.intern(name);
        }
        let fixed = key::NAMES
            .iter()
            .enumerate()
            .all(|(n, name)| keys.numbers.get(*name) == u32::try_from(n).ok().as_ref());
        fixed.then_some(keys)
    }

    /// The heap bytes of the table, roughly. Constant time.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.bytes
    }

    /// [`heap_bytes`](Self::heap_bytes) summed afresh, key by key.
    pub(crate) fn walked_heap_bytes(&self) -> usize {
        self.written
            .iter()
            .map(|w| Self::entry_bytes(w))
            .sum::<usize>()
    }
}

/// The keys the cache looks up, at fixed numbers.
pub(crate) mod key {
    /// A key's number in [`Keys`](super::Keys).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) struct Key(pub(crate) u32);

    macro_rules! keys {
        ($($name:ident = $text:literal,)*) => {
            keys!(@consts 0u32, $($name,)*);
            /// The keys in number order.
            pub(crate) const NAMES: &[&str] = &[$($text,)*];
        };
        (@consts $n:expr, $name:ident, $($rest:ident,)*) => {
            pub(crate) const $name: Key = Key($n);
            keys!(@consts $n + 1, $($rest,)*);
        };
        (@consts $n:expr,) => {};
    }

    keys! {
        ID = "id",
        USER = "user",
        USER_ID = "user_id",
        GUILD_ID = "guild_id",
        SOUND_ID = "sound_id",
        CHANNEL_ID = "channel_id",
        PARENT_ID = "parent_id",
        ROLE = "role",
        ROLE_ID = "role_id",
        ROLES = "roles",
        EMOJIS = "emojis",
        STICKERS = "stickers",
        CHANNELS = "channels",
        THREADS = "threads",
        MEMBERS = "members",
        MEMBER = "member",
        PRESENCES = "presences",
        VOICE_STATES = "voice_states",
        STAGE_INSTANCES = "stage_instances",
        GUILD_SCHEDULED_EVENTS = "guild_scheduled_events",
        SOUNDBOARD_SOUNDS = "soundboard_sounds",
        UNAVAILABLE = "unavailable",
        MEMBER_COUNT = "member_count",
        CHANNEL_IDS = "channel_ids",
        NEWLY_CREATED = "newly_created",
        GUILDS = "guilds",
        SESSION_ID = "session_id",
        RESUME_GATEWAY_URL = "resume_gateway_url",
        STATUS = "status",
        DEAF = "deaf",
        MUTE = "mute",
        LAST_PIN_TIMESTAMP = "last_pin_timestamp",
        THREAD_METADATA = "thread_metadata",
        ARCHIVED = "archived",
    }
}

use key::Key;

/// Why a payload could not be packed.
#[derive(Debug)]
pub(crate) struct PackError(pub(crate) String);

impl de::Error for PackError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

impl fmt::Display for PackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PackError {}

/// Packs the JSON text `json` (one value, nothing after it) onto `out`.
///
/// A key new to `keys` is numbered there: the table is copied first if it
/// is shared ([`Arc::make_mut`]); known keys never copy it.
pub(crate) fn pack(json: &[u8], keys: &mut Arc<Keys>, out: &mut Vec<u8>) -> Result<(), PackError> {
    let mut de = sonic_rs::Deserializer::from_slice(json);
    Packer { keys, out }
        .deserialize(&mut de)
        .map_err(|e| PackError::of(&e))?;
    de.end().map_err(|e| PackError::of(&e))
}

impl PackError {
    /// The parser's message without the excerpt of the input it may quote:
    /// errors are logged, and a dispatch can carry an interaction token.
    fn of(error: &sonic_rs::Error) -> Self {
        let message = error.to_string();
        let first = message.lines().next().unwrap_or("");
        Self(first.chars().take(120).collect())
    }
}

struct Packer<'a> {
    keys: &'a mut Arc<Keys>,
    out: &'a mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for Packer<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Packer<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.out.push(NULL);
        Ok(())
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.out.push(if v { TRUE } else { FALSE });
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.out.push(UINT);
        put_varint(self.out, v);
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        if let Ok(v) = u64::try_from(v) {
            self.out.push(UINT);
            put_varint(self.out, v);
            return Ok(());
        }
        self.out.push(NEG);
        put_varint(self.out, !(v.cast_unsigned()));
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.out.push(FLOAT);
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        put_str(self.out, v);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.out.push(ARRAY);
        while seq
            .next_element_seed(Packer {
                keys: self.keys,
                out: self.out,
            })?
            .is_some()
        {}
        self.out.push(END);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.out.push(OBJECT);
        while map
            .next_key_seed(KeyPacker {
                keys: self.keys,
                out: self.out,
            })?
            .is_some()
        {
            map.next_value_seed(Packer {
                keys: self.keys,
                out: self.out,
            })?;
        }
        put_varint(self.out, u64::from(KEY_END));
        Ok(())
    }
}

struct KeyPacker<'a> {
    keys: &'a mut Arc<Keys>,
    out: &'a mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for KeyPacker<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyPacker<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        put_key_name(self.keys, self.out, v);
        Ok(())
    }
}

/// Appends a key given by name.
fn put_key_name(keys: &mut Arc<Keys>, out: &mut Vec<u8>, name: &str) {
    if let Some(n) = Keys::number(keys, name) {
        put_varint(out, u64::from(n + KEY_BASE));
    } else {
        let mut escaped = Vec::with_capacity(name.len());
        escape_into(name, &mut escaped);
        put_field_key(out, FieldKey::Inline(&escaped));
    }
}

/// Appends the string `s`, in the smallest form that gives it back exactly.
fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    if let Some(n) = canonical_decimal(b) {
        if n < 1 << 56 {
            out.push(DIGITS);
            put_varint(out, n);
        } else {
            out.push(DIGITS_WIDE);
            out.extend_from_slice(&n.to_le_bytes());
        }
        return;
    }
    if let Some((micros, with_fraction)) = timestamp::parse(b) {
        out.push(if with_fraction {
            TIME_MICROS
        } else {
            TIME_SECS
        });
        out.extend_from_slice(&micros.to_le_bytes());
        return;
    }
    let (hex, tag) = match b {
        [b'a', b'_', rest @ ..] => (rest, HASH_ANIMATED),
        _ => (b, HASH),
    };
    if let Some(hash) = lower_hex_128(hex) {
        out.push(tag);
        out.extend_from_slice(&hash);
        return;
    }
    out.push(STR);
    let mut escaped = Vec::new();
    let bytes: &[u8] = if needs_escape(b) {
        escape_into(s, &mut escaped);
        &escaped
    } else {
        b
    };
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Starts an object; end it with [`end_object`].
pub(crate) fn begin_object(out: &mut Vec<u8>) {
    out.push(OBJECT);
}

/// Ends an object begun with [`begin_object`].
pub(crate) fn end_object(out: &mut Vec<u8>) {
    put_varint(out, u64::from(KEY_END));
}

/// Appends a field whose value is already packed.
pub(crate) fn put_field(out: &mut Vec<u8>, key: FieldKey<'_>, value: &[u8]) {
    put_field_key(out, key);
    out.extend_from_slice(value);
}

fn put_field_key(out: &mut Vec<u8>, key: FieldKey<'_>) {
    match key {
        FieldKey::Numbered(n) => put_varint(out, u64::from(n + KEY_BASE)),
        FieldKey::Inline(escaped) => {
            put_varint(out, u64::from(KEY_INLINE));
            put_varint(out, escaped.len() as u64);
            out.extend_from_slice(escaped);
        }
    }
}

/// The value `null`, packed.
pub(crate) const PACKED_NULL: &[u8] = &[NULL];
/// `{"deaf":false,"mute":false}`, packed: what a member lacking them gets.
pub(crate) const DEAF_MUTE_FALSE: &[u8] = &[
    OBJECT,
    fixed_key_byte(key::DEAF),
    FALSE,
    fixed_key_byte(key::MUTE),
    FALSE,
    0, // KEY_END
];

/// A key of the fixed table as the one byte its varint takes.
const fn fixed_key_byte(key: Key) -> u8 {
    let n = key.0 + KEY_BASE;
    assert!(n < 0x80, "a fixed key's number fits one varint byte");
    #[allow(clippy::cast_possible_truncation, reason = "checked just above")]
    let byte = n as u8;
    byte
}

/// `s` as a decimal `u64`, if it is one written the one canonical way.
fn canonical_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || (s[0] == b'0' && s.len() > 1) {
        return None;
    }
    let mut n: u64 = 0;
    for &c in s {
        let digit = c.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(digit))?;
    }
    Some(n)
}

/// 32 lowercase hex digits as 16 bytes.
fn lower_hex_128(s: &[u8]) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; 16];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn needs_escape(s: &[u8]) -> bool {
    s.iter().any(|&c| c == b'"' || c == b'\\' || c < 0x20)
}

/// Appends `s` as the inside of a JSON string.
fn escape_into(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &c in s.as_bytes() {
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            c if c < 0x20 => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 15)]);
            }
            c => out.push(c),
        }
    }
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(low_byte(v) | 0x80);
        v >>= 7;
    }
    out.push(low_byte(v));
}

fn low_byte(v: u64) -> u8 {
    u8::try_from(v & 0x7f).unwrap_or(0)
}

/// Reads a varint at `*pos`; 0 past the end (packed values are our own, so
/// that never happens on a value this module wrote).
fn get_varint(buf: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    while let Some(&b) = buf.get(*pos) {
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 || shift >= 63 {
            break;
        }
        shift += 7;
    }
    v
}

fn get_u64(buf: &[u8], pos: &mut usize) -> u64 {
    let bytes = buf
        .get(*pos..*pos + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .unwrap_or_default();
    *pos += 8;
    u64::from_le_bytes(bytes)
}

fn get_len(buf: &[u8], pos: &mut usize) -> usize {
    usize::try_from(get_varint(buf, pos)).unwrap_or(usize::MAX)
}

/// How deep packed values may nest to be read back from a checkpoint
/// (sonic-rs refuses JSON deeper than this anyway).
const MAX_DEPTH: usize = 128;

/// Whether `buf` is exactly one well-formed packed value whose numbered
/// keys are all among the first `keys` of a table: every tag known, every
/// length within `buf`, every string valid UTF-8 without raw control
/// characters, nothing nested deeper than [`MAX_DEPTH`]. For values read
/// back from outside (a checkpoint), never for the cache's own.
pub(crate) fn is_valid(buf: &[u8], keys: usize) -> bool {
    let mut pos = 0;
    check_value(buf, &mut pos, keys, 0).is_some() && pos == buf.len()
}

fn check_value(buf: &[u8], pos: &mut usize, keys: usize, depth: usize) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    let tag = *buf.get(*pos)?;
    *pos += 1;
    let mut take = |n: usize| -> Option<&[u8]> {
        let bytes = buf.get(*pos..pos.checked_add(n)?)?;
        *pos += n;
        Some(bytes)
    };
    match tag {
        NULL | FALSE | TRUE => {}
        UINT | NEG | DIGITS => {
            strict_varint(buf, pos)?;
        }
        FLOAT | DIGITS_WIDE | TIME_MICROS | TIME_SECS => {
            take(8)?;
        }
        HASH | HASH_ANIMATED => {
            take(16)?;
        }
        STR => {
            let len = usize::try_from(strict_varint(buf, pos)?).ok()?;
            check_text(buf.get(*pos..pos.checked_add(len)?)?)?;
            *pos += len;
        }
        ARRAY => loop {
            if *buf.get(*pos)? == END {
                *pos += 1;
                break;
            }
            check_value(buf, pos, keys, depth + 1)?;
        },
        OBJECT => loop {
            let key = strict_varint(buf, pos)?;
            if key == u64::from(KEY_END) {
                break;
            }
            if key == u64::from(KEY_INLINE) {
                let len = usize::try_from(strict_varint(buf, pos)?).ok()?;
                check_text(buf.get(*pos..pos.checked_add(len)?)?)?;
                *pos += len;
            } else if usize::try_from(key - u64::from(KEY_BASE)).ok()? >= keys {
                return None;
            }
            check_value(buf, pos, keys, depth + 1)?;
        },
        _ => return None,
    }
    Some(())
}

/// A varint that ends within `buf` and fits in 64 bits.
pub(crate) fn strict_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        // The tenth byte holds bit 63 alone.
        if shift == 63 && b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Stored text: what goes between the quotes of a JSON string as it is
/// written, so UTF-8 with every quote, backslash and control character
/// escaped as JSON escapes them.
fn check_text(text: &[u8]) -> Option<()> {
    std::str::from_utf8(text).ok()?;
    let mut bytes = text.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'"' | 0..0x20 => return None,
            b'\\' => match bytes.next()? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                b'u' => {
                    for _ in 0..4 {
                        bytes.next().filter(|h| h.is_ascii_hexdigit())?;
                    }
                }
                _ => return None,
            },
            _ => {}
        }
    }
    Some(())
}

/// The length of the packed value at the start of `buf`.
#[cfg(test)]
pub(crate) fn value_len(buf: &[u8]) -> usize {
    let mut pos = 0;
    skip_value(buf, &mut pos);
    pos.min(buf.len())
}

fn skip_value(buf: &[u8], pos: &mut usize) {
    let Some(&tag) = buf.get(*pos) else {
        *pos = buf.len();
        return;
    };
    *pos += 1;
    match tag {
        UINT | NEG | DIGITS => {
            get_varint(buf, pos);
        }
        FLOAT | DIGITS_WIDE | TIME_MICROS | TIME_SECS => *pos += 8,
        HASH | HASH_ANIMATED => *pos += 16,
        STR => *pos += get_len(buf, pos),
        ARRAY => {
            while *pos < buf.len() && buf[*pos] != END {
                skip_value(buf, pos);
            }
            *pos += 1;
        }
        OBJECT => loop {
            let key = get_varint(buf, pos);
            if key == u64::from(KEY_END) || *pos >= buf.len() {
                break;
            }
            if key == u64::from(KEY_INLINE) {
                *pos += get_len(buf, pos);
            }
            skip_value(buf, pos);
        },
        _ => {}
    }
}

/// A field's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FieldKey<'a> {
    /// A numbered key.
    Numbered(u32),
    /// A key stored inline, escaped.
    Inline(&'a [u8]),
}

impl FieldKey<'_> {
    pub(crate) fn is(self, key: Key) -> bool {
        self == FieldKey::Numbered(key.0)
    }
}

/// The fields of a packed object: (key, packed value).
#[derive(Clone, Debug)]
pub(crate) struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// The fields of `value`, or none if it is not an object.
pub(crate) fn fields(value: &[u8]) -> Fields<'_> {
    let pos = if value.first() == Some(&OBJECT) {
        1
    } else {
        value.len()
    };
    Fields { buf: value, pos }
}

impl<'a> Iterator for Fields<'a> {
    type Item = (FieldKey<'a>, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let raw = get_varint(self.buf, &mut self.pos);
        let key = match u32::try_from(raw).unwrap_or(KEY_END) {
            KEY_END => {
                self.pos = self.buf.len();
                return None;
            }
            KEY_INLINE => {
                let len = get_len(self.buf, &mut self.pos);
                let start = self.pos.min(self.buf.len());
                self.pos = self.pos.saturating_add(len).min(self.buf.len());
                FieldKey::Inline(&self.buf[start..self.pos])
            }
            n => FieldKey::Numbered(n - KEY_BASE),
        };
        let start = self.pos;
        skip_value(self.buf, &mut self.pos);
        self.pos = self.pos.min(self.buf.len());
        Some((key, &self.buf[start..self.pos]))
    }
}

/// The items of a packed array.
#[derive(Clone, Debug)]
pub(crate) struct Items<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// The items of `value`, or none if it is not an array.
pub(crate) fn items(value: &[u8]) -> Items<'_> {
    let pos = if value.first() == Some(&ARRAY) {
        1
    } else {
        value.len()
    };
    Items { buf: value, pos }
}

impl<'a> Iterator for Items<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.buf.get(self.pos).is_none_or(|&b| b == END) {
            return None;
        }
        let start = self.pos;
        skip_value(self.buf, &mut self.pos);
        self.pos = self.pos.min(self.buf.len());
        Some(&self.buf[start..self.pos])
    }
}

/// The value of `key` in the object `value`.
pub(crate) fn get(value: &[u8], key: Key) -> Option<&[u8]> {
    fields(value).find(|(k, _)| k.is(key)).map(|(_, v)| v)
}

/// Whether `value` is an object.
pub(crate) fn is_object(value: &[u8]) -> bool {
    value.first() == Some(&OBJECT)
}

/// `value` as a snowflake: a decimal string (Discord's form) or a number.
pub(crate) fn as_id(value: &[u8]) -> Option<u64> {
    let mut pos = 1;
    match *value.first()? {
        DIGITS | UINT => Some(get_varint(value, &mut pos)),
        DIGITS_WIDE => Some(get_u64(value, &mut pos)),
        _ => None,
    }
}

/// `value` as a non-negative integer.
pub(crate) fn as_u64(value: &[u8]) -> Option<u64> {
    let mut pos = 1;
    (*value.first()? == UINT).then(|| get_varint(value, &mut pos))
}

/// `value` as a boolean.
pub(crate) fn as_bool(value: &[u8]) -> Option<bool> {
    match *value.first()? {
        TRUE => Some(true),
        FALSE => Some(false),
        _ => None,
    }
}

/// `value` as escaped string bytes, if it is a string stored as text.
pub(crate) fn as_text(value: &[u8]) -> Option<&[u8]> {
    let mut pos = 1;
    if *value.first()? != STR {
        return None;
    }
    let len = get_len(value, &mut pos);
    value.get(pos..pos.checked_add(len)?)
}

/// Appends the JSON text of the packed `value`.
pub(crate) fn write_json(value: &[u8], keys: &Keys, out: &mut Vec<u8>) {
    let mut pos = 0;
    write_value(value, &mut pos, keys, out);
}

fn write_value(buf: &[u8], pos: &mut usize, keys: &Keys, out: &mut Vec<u8>) {
    let Some(&tag) = buf.get(*pos) else {
        out.extend_from_slice(b"null");
        return;
    };
    *pos += 1;
    match tag {
        FALSE => out.extend_from_slice(b"false"),
        TRUE => out.extend_from_slice(b"true"),
        UINT => {
            let v = get_varint(buf, pos);
            out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        }
        NEG => {
            let v = (!get_varint(buf, pos)).cast_signed();
            out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        }
        FLOAT => {
            let v = f64::from_bits(get_u64(buf, pos));
            out.extend_from_slice(format!("{v:?}").as_bytes());
        }
        STR => {
            let len = get_len(buf, pos);
            let end = pos.saturating_add(len).min(buf.len());
            out.push(b'"');
            out.extend_from_slice(&buf[(*pos).min(end)..end]);
            out.push(b'"');
            *pos = end;
        }
        DIGITS | DIGITS_WIDE => {
            let v = if tag == DIGITS {
                get_varint(buf, pos)
            } else {
                get_u64(buf, pos)
            };
            out.push(b'"');
            out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
            out.push(b'"');
        }
        TIME_MICROS | TIME_SECS => {
            let micros = get_u64(buf, pos).cast_signed();
            out.push(b'"');
            timestamp::write(micros, tag == TIME_MICROS, out);
            out.push(b'"');
        }
        HASH | HASH_ANIMATED => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(if tag == HASH { b"\"" } else { b"\"a_" });
            let end = pos.saturating_add(16).min(buf.len());
            for &b in &buf[(*pos).min(end)..end] {
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 15)]);
            }
            out.push(b'"');
            *pos = end;
        }
        ARRAY => {
            out.push(b'[');
            let mut first = true;
            while *pos < buf.len() && buf[*pos] != END {
                if !first {
                    out.push(b',');
                }
                first = false;
                write_value(buf, pos, keys, out);
            }
            *pos += 1;
            out.push(b']');
        }
        OBJECT => {
            out.push(b'{');
            let mut first = true;
            let mut fields = Fields { buf, pos: *pos };
            while let Some(key) = fields.next_key() {
                if !first {
                    out.push(b',');
                }
                first = false;
                write_key(key, keys, out);
                write_value(buf, &mut fields.pos, keys, out);
            }
            *pos = fields.pos;
            out.push(b'}');
        }
        // NULL, and nothing else: every tag is matched above.
        _ => out.extend_from_slice(b"null"),
    }
}

impl<'a> Fields<'a> {
    /// Reads the next key and leaves `pos` at its value.
    fn next_key(&mut self) -> Option<FieldKey<'a>> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let raw = get_varint(self.buf, &mut self.pos);
        match u32::try_from(raw).unwrap_or(KEY_END) {
            KEY_END => None,
            KEY_INLINE => {
                let len = get_len(self.buf, &mut self.pos);
                let start = self.pos.min(self.buf.len());
                self.pos = self.pos.saturating_add(len).min(self.buf.len());
                Some(FieldKey::Inline(&self.buf[start..self.pos]))
            }
            n => Some(FieldKey::Numbered(n - KEY_BASE)),
        }
    }
}

/// Appends `"key":`.
pub(crate) fn write_key(key: FieldKey<'_>, keys: &Keys, out: &mut Vec<u8>) {
    match key {
        FieldKey::Numbered(n) => match keys.written.get(n as usize) {
            Some(written) => out.extend_from_slice(written),
            None => out.extend_from_slice(b"\"\":"),
        },
        FieldKey::Inline(escaped) => {
            out.push(b'"');
            out.extend_from_slice(escaped);
            out.extend_from_slice(b"\":");
        }
    }
}

/// Appends `"key":` for a key of the fixed table.
pub(crate) fn write_fixed_key(key: Key, keys: &Keys, out: &mut Vec<u8>) {
    write_key(FieldKey::Numbered(key.0), keys, out);
}

/// Appends the object `obj` without the fields whose keys are in `skip`.
pub(crate) fn copy_without(obj: &[u8], skip: &[Key], out: &mut Vec<u8>) {
    begin_object(out);
    for (k, v) in fields(obj) {
        if !skip.iter().any(|s| k.is(*s)) {
            put_field(out, k, v);
        }
    }
    end_object(out);
}

/// Appends the object `new` (without `skip`) with the fields of `old` that
/// `new` does not have: an update applied to what was there.
pub(crate) fn merge(new: &[u8], old: Option<&[u8]>, skip: &[Key], out: &mut Vec<u8>) {
    begin_object(out);
    for (k, v) in fields(new) {
        if !skip.iter().any(|s| k.is(*s)) {
            put_field(out, k, v);
        }
    }
    for (k, v) in old.map(fields).into_iter().flatten() {
        if !skip.iter().any(|s| k.is(*s)) && !fields(new).any(|(n, _)| n == k) {
            put_field(out, k, v);
        }
    }
    end_object(out);
}

/// Appends the object `obj` with `key` set to the packed `value`.
pub(crate) fn with_field(obj: &[u8], key: Key, value: &[u8], out: &mut Vec<u8>) {
    begin_object(out);
    put_field(out, FieldKey::Numbered(key.0), value);
    for (k, v) in fields(obj) {
        if !k.is(key) {
            put_field(out, k, v);
        }
    }
    end_object(out);
}

/// Appends the object `obj` with the snowflake `id` taken out of the array
/// under `key`; `false` (and nothing appended) if it was not there.
pub(crate) fn without_id_in(obj: &[u8], key: Key, id: u64, out: &mut Vec<u8>) -> bool {
    let Some(array) = get(obj, key) else {
        return false;
    };
    if !items(array).any(|item| as_id(item) == Some(id)) {
        return false;
    }
    begin_object(out);
    for (k, v) in fields(obj) {
        put_field_key(out, k);
        if k.is(key) {
            out.push(ARRAY);
            for item in items(v).filter(|item| as_id(item) != Some(id)) {
                out.extend_from_slice(item);
            }
            out.push(END);
        } else {
            out.extend_from_slice(v);
        }
    }
    end_object(out);
    true
}

/// Appends `{"id": <the id field of obj>}`: a user reduced to its id.
pub(crate) fn id_only(obj: &[u8], out: &mut Vec<u8>) {
    begin_object(out);
    if let Some(id) = get(obj, key::ID) {
        put_field(out, FieldKey::Numbered(key::ID.0), id);
    }
    end_object(out);
}

/// Appends `s` as a JSON string, quotes included.
pub(crate) fn write_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    escape_into(s, out);
    out.push(b'"');
}

/// Discord's timestamps, `YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00`, as Unix
/// microseconds, both ways.
mod timestamp {
    /// The microseconds of `s` and whether it has the fraction, if `s` is
    /// exactly what [`write`] would write for them.
    pub(super) fn parse(s: &[u8]) -> Option<(i64, bool)> {
        let with_fraction = match s.len() {
            32 => true,
            25 => false,
            _ => return None,
        };
        let num = |range: std::ops::Range<usize>| -> Option<i64> {
            s.get(range)?.iter().try_fold(0i64, |n, &c| {
                let d = c.wrapping_sub(b'0');
                (d <= 9).then_some(n * 10 + i64::from(d))
            })
        };
        if s[4] != b'-' || s[7] != b'-' || s[10] != b'T' || s[13] != b':' || s[16] != b':' {
            return None;
        }
        let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
        let fraction = if with_fraction {
            if s[19] != b'.' {
                return None;
            }
            num(20..26)?
        } else {
            0
        };
        if &s[s.len() - 6..] != b"+00:00" {
            return None;
        }
        let days = days_from_civil(year, month, day);
        let micros = ((days * 86_400 + hour * 3600 + minute * 60 + second) * 1_000_000)
            .checked_add(fraction)?;
        // Only what writes back the same: rejects 2024-02-30, 25:00 and so on.
        let mut again = Vec::with_capacity(32);
        write(micros, with_fraction, &mut again);
        (again == s).then_some((micros, with_fraction))
    }

    /// Appends the timestamp of Unix microseconds `micros`.
    pub(super) fn write(micros: i64, with_fraction: bool, out: &mut Vec<u8>) {
        let secs = micros.div_euclid(1_000_000);
        let fraction = micros.rem_euclid(1_000_000);
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);
        let two = |out: &mut Vec<u8>, n: i64, sep: u8| {
            out.push(b'0' + u8::try_from(n / 10 % 10).unwrap_or(0));
            out.push(b'0' + u8::try_from(n % 10).unwrap_or(0));
            out.push(sep);
        };
        for div in [1000, 100, 10, 1] {
            out.push(b'0' + u8::try_from(year / div % 10).unwrap_or(0));
        }
        out.push(b'-');
        two(out, month, b'-');
        two(out, day, b'T');
        two(out, rem / 3600, b':');
        two(out, rem % 3600 / 60, b':');
        let second_sep = if with_fraction { b'.' } else { b'+' };
        two(out, rem % 60, second_sep);
        if with_fraction {
            let mut div = 100_000;
            while div > 0 {
                out.push(b'0' + u8::try_from(fraction / div % 10).unwrap_or(0));
                div /= 10;
            }
            out.push(b'+');
        }
        out.extend_from_slice(b"00:00");
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (Howard
    /// Hinnant's algorithm).
    fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
        let y = if month <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (month + 9) % 12;
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    fn civil_from_days(days: i64) -> (i64, i64, i64) {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        (year, month, day)
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use proptest::prelude::*;

    use super::*;

    fn roundtrip(json: &str) -> (String, usize) {
        let mut keys = Arc::new(Keys::default());
        let mut packed = Vec::new();
        pack(json.as_bytes(), &mut keys, &mut packed).unwrap();
        assert_eq!(value_len(&packed), packed.len(), "{json}");
        assert!(
            is_valid(&packed, keys.len()),
            "{json}: what pack writes is valid"
        );
        let mut out = Vec::new();
        write_json(&packed, &keys, &mut out);
        (String::from_utf8(out).unwrap(), packed.len())
    }

    #[test]
    fn only_well_formed_values_over_their_table_are_valid() {
        let mut keys = Arc::new(Keys::default());
        let mut packed = Vec::new();
        let json = r#"{"id":"1","brand_new_key":[1,-2,3.5,"a\"b\u00e9",null,true,{"x":{}}]}"#;
        pack(json.as_bytes(), &mut keys, &mut packed).unwrap();
        assert!(is_valid(&packed, keys.len()));
        assert!(!is_valid(&packed, keys.len() - 1), "a key the table lacks");
        assert!(
            !is_valid(&packed[..packed.len() - 1], keys.len()),
            "cut short"
        );
        let mut longer = packed.clone();
        longer.push(NULL);
        assert!(!is_valid(&longer, keys.len()), "something after the value");
        assert!(!is_valid(&[99], keys.len()), "an unknown tag");
        for text in [&br#"a"b"#[..], br"a\q", br"\u12", b"\x01", b"\xff"] {
            let mut value = vec![STR];
            put_varint(&mut value, text.len() as u64);
            value.extend_from_slice(text);
            assert!(!is_valid(&value, keys.len()), "{text:?}");
        }
        let deep: Vec<u8> = std::iter::repeat_n(ARRAY, MAX_DEPTH + 2)
            .chain(std::iter::repeat_n(END, MAX_DEPTH + 2))
            .collect();
        assert!(!is_valid(&deep, keys.len()), "too deep");
        let varint_too_long = [
            UINT, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ];
        assert!(!is_valid(&varint_too_long, keys.len()));
    }

    fn same_value(json: &str) {
        let (back, _) = roundtrip(json);
        let a: serde_json::Value = serde_json::from_str(json).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(&back).unwrap_or_else(|e| panic!("{e}: {back}"));
        assert_eq!(a, b, "{json} came back as {back}");
    }

    #[test]
    fn discord_shapes_come_back_the_same_and_small() {
        let member = r#"{"user":{"id":"1000000000000000001","username":"crab","discriminator":"0","global_name":null,"avatar":"a_0123456789abcdef0123456789abcdef","bot":false},"roles":["41771983423143937"],"nick":"n\"ick\\","avatar":"0123456789abcdef0123456789abcdef","joined_at":"2024-01-01T00:00:00.123456+00:00","premium_since":"2023-06-30T12:34:56+00:00","deaf":false,"mute":true,"flags":0,"pending":false,"communication_disabled_until":null}"#;
        let (back, packed) = roundtrip(member);
        same_value(member);
        assert!(packed * 3 < member.len(), "{packed} of {}", member.len());
        assert!(back.contains(r#""nick":"n\"ick\\""#), "{back}");
    }

    #[test]
    fn every_kind_of_value_comes_back() {
        for json in [
            "null",
            "true",
            "[]",
            "{}",
            r#"{"a":[1,-1,0,-9223372036854775808,18446744073709551615,1.0,0.5,-2.25e-10,1e300]}"#,
            r#"["0","00","01","18446744073709551615","18446744073709551616","-1","1.5",""]"#,
            r#"["2024-02-29T23:59:59.999999+00:00","2024-02-30T00:00:00+00:00","1970-01-01T00:00:00+00:00","2024-01-01T00:00:00.000Z"]"#,
            r#"["0123456789ABCDEF0123456789abcdef","a_0123456789abcdef0123456789abcde","ffffffffffffffffffffffffffffffff"]"#,
            r#"{"\u0000 key \"q\"":"tab\there \u001f ✓ \ud83e\udd80","nested":{"deep":[[{"x":null}]]}}"#,
        ] {
            same_value(json);
        }
    }

    fn string() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[0-9]{1,21}",
            "(a_)?[0-9a-fA-F]{31,33}",
            "[\"\\\\/\u{0}-\u{1f}a-z✓🦀]{0,12}",
            (
                1960i32..2200,
                0u8..14,
                0u8..33,
                0u8..25,
                0u8..61,
                0u8..61,
                0u32..1_000_000,
                any::<bool>()
            )
                .prop_map(|(y, mo, d, h, mi, s, f, frac)| if frac {
                    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{f:06}+00:00")
                } else {
                    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}+00:00")
                }),
        ]
    }

    fn json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("JSON numbers are finite", |f| f.is_finite())
                .prop_map(Value::from),
            string().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::vec((string(), inner), 0..8)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any JSON value packs and comes back as the same value.
        #[test]
        fn any_json_comes_back_the_same(value in json()) {
            let text = serde_json::to_string(&value).unwrap();
            let mut keys = Arc::new(Keys::default());
            let mut packed = Vec::new();
            pack(text.as_bytes(), &mut keys, &mut packed).unwrap();
            prop_assert_eq!(value_len(&packed), packed.len());
            let mut out = Vec::new();
            write_json(&packed, &keys, &mut out);
            // Read back with a parser that rounds floats correctly:
            // serde_json's (without `float_roundtrip`) can be an ULP off,
            // and `{:?}` may pick another shortest form than serde_json's.
            let back: serde_json::Value = sonic_rs::from_slice(&out).unwrap();
            prop_assert_eq!(back, value);
        }
    }

    #[test]
    fn malformed_json_is_an_error() {
        let mut keys = Arc::new(Keys::default());
        for json in [
            "",
            "{",
            r#"{"a":}"#,
            "[1,]",
            "{} x",
            r#"{"a" 1}"#,
            "\"\\x\"",
        ] {
            let mut out = Vec::new();
            assert!(
                pack(json.as_bytes(), &mut keys, &mut out).is_err(),
                "{json}"
            );
        }
    }

    #[test]
    fn the_member_defaults_are_deaf_and_mute_false() {
        let mut out = Vec::new();
        write_json(DEAF_MUTE_FALSE, &Keys::default(), &mut out);
        assert_eq!(out, br#"{"deaf":false,"mute":false}"#);
        assert_eq!(value_len(DEAF_MUTE_FALSE), DEAF_MUTE_FALSE.len());
    }

    #[test]
    fn the_fixed_keys_have_their_numbers() {
        let keys = Keys::default();
        assert_eq!(keys.len(), key::NAMES.len());
        let mut out = Vec::new();
        write_fixed_key(key::GUILD_ID, &keys, &mut out);
        assert_eq!(out, b"\"guild_id\":");
    }

    #[test]
    fn fields_and_items_walk_the_value() {
        let mut keys = Arc::new(Keys::default());
        let mut packed = Vec::new();
        pack(
            br#"{"id":"123","roles":["1","2"],"guild_id":"99","x":{"id":"5"}}"#,
            &mut keys,
            &mut packed,
        )
        .unwrap();
        assert_eq!(get(&packed, key::ID).and_then(as_id), Some(123));
        assert_eq!(get(&packed, key::GUILD_ID).and_then(as_id), Some(99));
        let roles: Vec<u64> = get(&packed, key::ROLES)
            .map(items)
            .into_iter()
            .flatten()
            .filter_map(as_id)
            .collect();
        assert_eq!(roles, [1, 2]);
        assert_eq!(fields(&packed).count(), 4);
    }

    #[test]
    fn only_a_new_key_copies_a_shared_table() {
        let mut keys = Arc::new(Keys::default());
        let shared = Arc::clone(&keys);
        let mut packed = Vec::new();
        pack(
            br#"{"id":"1","guild_id":"2","roles":[]}"#,
            &mut keys,
            &mut packed,
        )
        .unwrap();
        assert!(Arc::ptr_eq(&keys, &shared), "known keys: no copy");
        pack(
            br#"{"id":"1","brand_new":{"id":"3"}}"#,
            &mut keys,
            &mut packed,
        )
        .unwrap();
        assert!(!Arc::ptr_eq(&keys, &shared), "a new key: a copy");
        assert_eq!(keys.len(), shared.len() + 1);
        assert_eq!(keys.heap_bytes(), keys.walked_heap_bytes());
        assert_eq!(shared.heap_bytes(), shared.walked_heap_bytes());
        assert!(keys.heap_bytes() > shared.heap_bytes());
        // Now unshared: a new key goes in place.
        let before = Arc::as_ptr(&keys);
        pack(br#"{"newer":1}"#, &mut keys, &mut packed).unwrap();
        assert_eq!(Arc::as_ptr(&keys), before);
        assert_eq!(keys.heap_bytes(), keys.walked_heap_bytes());
    }

    #[test]
    fn a_full_key_table_keeps_keys_inline() {
        let mut keys = Arc::new(Keys::default());
        let mut json = String::from("{");
        for i in 0..MAX_KEYS + 10 {
            if i > 0 {
                json.push(',');
            }
            write!(json, "\"k{i}\":{i}").unwrap();
        }
        json.push('}');
        let mut packed = Vec::new();
        pack(json.as_bytes(), &mut keys, &mut packed).unwrap();
        assert_eq!(keys.len(), MAX_KEYS);
        let mut out = Vec::new();
        write_json(&packed, &keys, &mut out);
        let a: serde_json::Value = serde_json::from_str(&json).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(a, b);
    }
}
