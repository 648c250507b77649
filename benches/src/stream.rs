//! A realistic, reproducible stream of gateway dispatches for the codec
//! benchmark: mostly `PRESENCE_UPDATE` and `MESSAGE_CREATE`, now and then a
//! `GUILD_CREATE`, with ids, names and message text drawn from a seeded
//! generator, so that compressors see repetition in the shape and variety in
//! the values, as on a real gateway.

use std::fmt::Write as _;

/// A small, fast, seeded generator (xorshift64*); enough to vary fixtures.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value but zero; zero is replaced).
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// One of `items`, which must not be empty.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        // The index is below `items.len()`, so it fits in `usize`.
        #[allow(clippy::cast_possible_truncation)]
        let index = self.below(items.len() as u64) as usize;
        &items[index]
    }

    /// A snowflake-looking id.
    pub fn snowflake(&mut self) -> u64 {
        1_000_000_000_000_000_000 + self.below(300_000_000_000_000_000)
    }
}

const WORDS: &[&str] = &[
    "the",
    "gateway",
    "proxy",
    "keeps",
    "every",
    "shard",
    "open",
    "bot",
    "restarts",
    "without",
    "losing",
    "events",
    "hello",
    "anyone",
    "playing",
    "tonight",
    "lol",
    "nice",
    "thanks",
    "deploy",
    "rust",
    "zstd",
    "zlib",
    "\\\"quoted\\\"",
    "emoji",
    "🦀",
    "✓",
    "ok",
    "what",
    "time",
    "is",
    "it",
];

fn sentence(rng: &mut Rng, words: u64) -> String {
    let mut s = String::new();
    for i in 0..words {
        if i > 0 {
            s.push(' ');
        }
        let word: &&str = rng.pick(WORDS);
        s.push_str(word);
    }
    s
}

fn message_create(rng: &mut Rng, seq: u64) -> String {
    let (guild, channel, author, id) = (
        rng.snowflake(),
        rng.snowflake(),
        rng.snowflake(),
        rng.snowflake(),
    );
    let words = 3 + rng.below(30);
    let content = sentence(rng, words);
    let name = format!("user{}", rng.below(100_000));
    format!(
        r#"{{"t":"MESSAGE_CREATE","s":{seq},"op":0,"d":{{"type":0,"tts":false,"timestamp":"2026-11-28T04:{:02}:{:02}.{:03}000+00:00","pinned":false,"nonce":"{}","mentions":[],"mention_roles":[],"mention_everyone":false,"member":{{"roles":["{}"],"premium_since":null,"pending":false,"nick":null,"mute":false,"joined_at":"2024-02-11T10:07:33.123000+00:00","flags":0,"deaf":false,"communication_disabled_until":null,"banner":null,"avatar":null}},"id":"{id}","flags":0,"embeds":[],"edited_timestamp":null,"content":"{content}","components":[],"channel_type":0,"channel_id":"{channel}","author":{{"username":"{name}","public_flags":0,"id":"{author}","global_name":"{name}","discriminator":"0","clan":null,"avatar_decoration_data":null,"avatar":"{:032x}"}},"attachments":[],"guild_id":"{guild}"}}}}"#,
        rng.below(60),
        rng.below(60),
        rng.below(1000),
        rng.snowflake(),
        rng.snowflake(),
        u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64()),
    )
}

fn presence_update(rng: &mut Rng, seq: u64) -> String {
    let status = *rng.pick(&["online", "idle", "dnd", "offline"]);
    let mut activities = String::new();
    for i in 0..rng.below(3) {
        if i > 0 {
            activities.push(',');
        }
        let words = 1 + rng.below(5);
        let state = sentence(rng, words);
        let _ = write!(
            activities,
            r#"{{"type":{},"state":"{state}","name":"Custom Status","id":"{:016x}","created_at":{}}}"#,
            rng.below(5),
            rng.next_u64(),
            1_732_780_800_000 + rng.below(10_000_000)
        );
    }
    format!(
        r#"{{"t":"PRESENCE_UPDATE","s":{seq},"op":0,"d":{{"user":{{"id":"{}"}},"status":"{status}","guild_id":"{}","client_status":{{"desktop":"{status}"}},"activities":[{activities}]}}}}"#,
        rng.snowflake(),
        rng.snowflake(),
    )
}

/// `n` dispatches from `seed`: about 60 % `PRESENCE_UPDATE`, 39 %
/// `MESSAGE_CREATE` and 1 % `GUILD_CREATE` (30 KB each).
#[must_use]
pub fn event_stream(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    (1..=n as u64)
        .map(|seq| match rng.below(100) {
            0 => crate::guild_create(32, 16, 10),
            1..=39 => message_create(&mut rng, seq).into_bytes(),
            _ => presence_update(&mut rng, seq).into_bytes(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_json_and_reproducible() {
        let stream = event_stream(7, 300);
        for event in &stream {
            let v: serde_json::Value = serde_json::from_slice(event)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(event)));
            assert_eq!(v["op"], 0);
        }
        assert_eq!(stream, event_stream(7, 300));
        assert_ne!(stream, event_stream(8, 300));
    }
}
