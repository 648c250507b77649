//! The sim's ground truth: the bot, its application and every guild, made
//! from a seed, and written out in Discord's JSON shape.

use std::fmt::Write as _;

use crate::config::SimConfig;
use crate::guild::Guild;

/// Discord's epoch (2015-01-01) in Unix milliseconds.
const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// A small seeded generator (xorshift64*): reproducible worlds and streams.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (`n` > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// An index into a non-empty slice of length `len`.
    pub(crate) fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.below(len as u64)).unwrap_or(0)
    }

    /// A snowflake made between 2016 and 2025.
    pub(crate) fn snowflake(&mut self) -> u64 {
        let since_epoch = 31_536_000_000 + self.below(9 * 31_536_000_000);
        (since_epoch << 22) | self.below(1 << 22)
    }
}

/// A Discord user.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct User {
    /// Snowflake.
    pub id: u64,
    /// `username`.
    pub username: String,
    /// `global_name`.
    pub global_name: Option<String>,
    /// `bot`.
    pub bot: bool,
}

/// A guild member.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Member {
    /// `user`.
    pub user: User,
    /// `nick`.
    pub nick: Option<String>,
    /// `roles`, without `@everyone`.
    pub roles: Vec<u64>,
}

/// Everything the sim serves, generated from [`SimConfig::seed`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct World {
    /// The bot user (`/users/@me`, READY's `user`).
    pub bot: User,
    /// The application id (equal to the bot's id, as on Discord).
    pub application_id: u64,
    /// The owner of the application.
    pub owner: User,
    /// Every guild, in id order.
    pub guilds: Vec<Guild>,
}

const WORDS: &[&str] = &[
    "rust", "gateway", "proxy", "shard", "crab", "night", "owl", "garden", "pixel", "orbit",
    "maple", "river", "quartz", "echo", "nova", "ember", "delta", "lumen", "cobalt", "fjord",
];

pub(crate) fn name(rng: &mut Rng, words: usize) -> String {
    let mut s = String::new();
    for i in 0..words {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.index(WORDS.len())]);
    }
    s
}

pub(crate) fn user(rng: &mut Rng, bot: bool) -> User {
    let username = format!("{}{}", WORDS[rng.index(WORDS.len())], rng.below(10_000));
    let global_name = (rng.below(3) > 0).then(|| name(rng, 2));
    User {
        id: rng.snowflake(),
        username,
        global_name,
        bot,
    }
}

impl World {
    /// The world of a configuration: the same seed gives the same world.
    #[must_use]
    pub fn generate(config: &SimConfig) -> Self {
        let mut rng = Rng::new(config.seed);
        let mut bot = user(&mut rng, true);
        "sim-bot".clone_into(&mut bot.username);
        let owner = user(&mut rng, false);
        let mut guilds: Vec<Guild> = (0..config.guilds)
            .map(|_| Guild::generate(&mut rng, config, owner.id))
            .collect();
        guilds.sort_by_key(|g| g.id);
        // Every k-th guild is unavailable, spread through the list.
        let unavailable = usize::try_from(config.unavailable_guilds).unwrap_or(usize::MAX);
        if let Some(step) = guilds.len().checked_div(unavailable) {
            for guild in guilds.iter_mut().step_by(step.max(1)).take(unavailable) {
                guild.unavailable = true;
            }
        }
        Self {
            application_id: bot.id,
            bot,
            owner,
            guilds,
        }
    }

    /// The shard a guild belongs to.
    #[must_use]
    pub fn shard_of(guild_id: u64, shards: u32) -> u32 {
        u32::try_from((guild_id >> 22) % u64::from(shards.max(1))).unwrap_or(0)
    }

    /// The guilds of one shard, in id order.
    pub fn guilds_of(&self, shard: u32, shards: u32) -> impl Iterator<Item = &Guild> {
        self.guilds
            .iter()
            .filter(move |g| Self::shard_of(g.id, shards) == shard)
    }

    /// A guild by id.
    #[must_use]
    pub fn guild(&self, id: u64) -> Option<&Guild> {
        self.guilds.iter().find(|g| g.id == id)
    }
}

/// Appends `s` as a JSON string.
pub(crate) fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `Some(s)` as a JSON string and `None` as `null`.
pub(crate) fn json_opt(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.push_str("null"),
    }
}

/// A snowflake's creation time as Discord's ISO 8601 timestamp.
pub(crate) fn timestamp_of(id: u64) -> String {
    let ms = (id >> 22) + DISCORD_EPOCH_MS;
    iso8601(ms)
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.ffffff+00:00`.
pub(crate) fn iso8601(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}000+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

impl User {
    /// Appends the user object.
    pub(crate) fn write(&self, out: &mut String) {
        let _ = write!(out, r#"{{"id":"{}","username":"#, self.id);
        json_str(out, &self.username);
        out.push_str(r#","discriminator":"0","global_name":"#);
        json_opt(out, self.global_name.as_deref());
        let _ = write!(
            out,
            r#","avatar":null,"bot":{},"public_flags":0,"avatar_decoration_data":null,"clan":null,"primary_guild":null}}"#,
            self.bot
        );
    }
}

impl Member {
    /// Appends the member object (with `user`).
    pub(crate) fn write(&self, out: &mut String) {
        out.push_str(r#"{"user":"#);
        self.user.write(out);
        out.push_str(r#","roles":["#);
        for (i, role) in self.roles.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, r#""{role}""#);
        }
        out.push_str(r#"],"nick":"#);
        json_opt(out, self.nick.as_deref());
        let _ = write!(
            out,
            r#","avatar":null,"banner":null,"joined_at":"{}","premium_since":null,"deaf":false,"mute":false,"flags":0,"pending":false,"communication_disabled_until":null}}"#,
            timestamp_of(self.user.id)
        );
    }
}

impl Member {
    /// The bot as a member of a guild.
    pub(crate) fn bot(bot: &User) -> Self {
        Self {
            user: bot.clone(),
            nick: None,
            roles: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_makes_the_same_world() {
        let config = SimConfig::default();
        assert_eq!(World::generate(&config), World::generate(&config));
        let other = SimConfig {
            seed: 2,
            ..SimConfig::default()
        };
        assert_ne!(World::generate(&config), World::generate(&other));
    }

    #[test]
    fn guild_create_is_json_with_what_clients_read() {
        let config = SimConfig {
            unavailable_guilds: 1,
            ..SimConfig::default()
        };
        let world = World::generate(&config);
        for guild in &world.guilds {
            let mut d = String::new();
            guild.write_create(&world.bot, crate::config::KNOWN_INTENTS, 250, &mut d);
            let v: serde_json::Value = serde_json::from_str(&d).unwrap();
            assert_eq!(v["id"], guild.id.to_string());
            if guild.unavailable {
                assert_eq!(v["unavailable"], true);
                continue;
            }
            assert_eq!(v["unavailable"], false);
            assert_eq!(v["roles"][0]["name"], "@everyone");
            assert_eq!(v["roles"].as_array().unwrap().len(), guild.roles.len());
            assert_eq!(
                v["channels"].as_array().unwrap().len(),
                guild.channels.len()
            );
            assert_eq!(v["members"].as_array().unwrap().len(), guild.member_count());
            assert_eq!(v["member_count"], guild.member_count());
            assert_eq!(v["members"][0]["user"]["id"], world.bot.id.to_string());
        }
        assert_eq!(world.guilds.iter().filter(|g| g.unavailable).count(), 1);
    }

    #[test]
    fn guild_content_has_the_configured_counts() {
        let config = SimConfig {
            members_per_guild: 40,
            channels_per_guild: 12,
            roles_per_guild: 5,
            emojis_per_guild: 3,
            threads_per_guild: 4,
            voice_states_per_guild: 6,
            presences_per_guild: 9,
            extras_per_guild: 2,
            ..SimConfig::default()
        };
        for guild in World::generate(&config).guilds {
            assert_eq!(guild.members.len(), 40);
            assert_eq!(guild.channels.len(), 12);
            assert_eq!(guild.roles.len(), 6, "with @everyone");
            assert_eq!(guild.emojis.len(), 3);
            assert_eq!(guild.threads.len(), 4);
            assert_eq!(guild.voice_states.len(), 6);
            assert_eq!(guild.presences.len(), 9);
            assert_eq!(guild.stickers.len(), 2);
            assert_eq!(guild.scheduled_events.len(), 2);
            assert_eq!(guild.soundboard_sounds.len(), 2);
            assert_eq!(
                guild.stage_instances.len(),
                1,
                "one stage channel, one stage instance"
            );
        }
    }

    #[test]
    fn timestamps_are_iso8601() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(
            iso8601(1_732_766_519_123),
            "2024-11-28T04:01:59.123000+00:00"
        );
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000000+00:00");
    }
}
