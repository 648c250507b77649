//! What a simulated Discord looks like and how strict it is.

use std::net::SocketAddr;
use std::time::Duration;

/// The configuration of a [`Sim`](crate::Sim). Start from `default()` and
/// change what a test needs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SimConfig {
    /// Where to listen; port 0 picks a free one.
    pub bind: SocketAddr,
    /// The bot token the sim accepts (with or without `Bot `).
    pub token: String,
    /// The shard count `/gateway/bot` recommends and IDENTIFY must use.
    pub shards: u32,
    /// Guilds in all, spread over the shards by `(id >> 22) % shards`.
    pub guilds: u32,
    /// How many of them are unavailable (sent as `GUILD_DELETE`).
    pub unavailable_guilds: u32,
    /// Members of each guild, besides the bot.
    pub members_per_guild: u32,
    /// Channels of each guild (text and voice, under categories).
    pub channels_per_guild: u32,
    /// Roles of each guild, besides `@everyone`.
    pub roles_per_guild: u32,
    /// Custom emojis of each guild.
    pub emojis_per_guild: u32,
    /// Active threads of each guild.
    pub threads_per_guild: u32,
    /// Members of each guild in a voice channel (at most all of them).
    pub voice_states_per_guild: u32,
    /// Members of each guild who are not offline, with a presence (at most
    /// all of them).
    pub presences_per_guild: u32,
    /// Stickers, scheduled events and soundboard sounds of each guild (as
    /// many of each); every guild with a stage channel also has a stage
    /// instance.
    pub extras_per_guild: u32,
    /// The seed of every generated guild and event.
    pub seed: u64,
    /// `session_start_limit.max_concurrency`: identify buckets.
    pub max_concurrency: u32,
    /// The time one identify bucket waits between identifies (Discord: 5 s).
    pub identify_interval: Duration,
    /// `session_start_limit.total`: identifies allowed before the reset.
    pub session_start_total: u32,
    /// The `heartbeat_interval` of HELLO (Discord: 41.25 s). A connection
    /// that sends no heartbeat for 1.5 intervals is closed with 4009.
    pub heartbeat_interval: Duration,
    /// Generated dispatches per second per shard; 0 for none.
    pub events_per_sec: u32,
    /// Dispatches each session keeps for RESUME.
    pub replay_capacity: usize,
    /// How long a session with no connection can still be resumed.
    pub session_ttl: Duration,
    /// When `session_start_limit.remaining` goes back to `total`
    /// (Discord: a day after the first identify).
    pub session_start_reset: Duration,
    /// How dispatch envelopes are written.
    pub key_order: KeyOrder,
    /// Privileged intents the application may use (`GUILD_MEMBERS`,
    /// `GUILD_PRESENCES`, `MESSAGE_CONTENT` bits); others give 4014.
    pub privileged_intents: u64,
}

/// How the sim writes the envelope of a dispatch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyOrder {
    /// Discord's own: `{"t":…,"s":…,"op":0,"d":…}`, compact.
    #[default]
    Discord,
    /// Discord's order for one dispatch in four; the others put `d` first,
    /// add whitespace, or move `s` to the front, and every `d` that is an
    /// object starts with a nested `"s":{"s":…}` member. For showing that a
    /// consumer finds the top-level keys by structure, not by position.
    /// READY and RESUMED keep Discord's order: gateway clients read their
    /// session from them by text search.
    Mixed,
}

/// The privileged intents: `GUILD_MEMBERS`, `GUILD_PRESENCES`,
/// `MESSAGE_CONTENT`.
pub const PRIVILEGED_INTENTS: u64 = (1 << 1) | (1 << 8) | (1 << 15);

/// Every intent Discord defines today (bits 0–25); others give 4013.
pub const KNOWN_INTENTS: u64 = (1 << 26) - 1;

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: "sim-token".to_owned(),
            shards: 1,
            guilds: 4,
            unavailable_guilds: 0,
            members_per_guild: 20,
            channels_per_guild: 8,
            roles_per_guild: 4,
            emojis_per_guild: 2,
            threads_per_guild: 2,
            voice_states_per_guild: 2,
            presences_per_guild: 7,
            extras_per_guild: 1,
            seed: 1,
            max_concurrency: 1,
            identify_interval: Duration::from_secs(5),
            session_start_total: 1000,
            heartbeat_interval: Duration::from_millis(41_250),
            events_per_sec: 0,
            replay_capacity: 4096,
            session_ttl: Duration::from_mins(3),
            session_start_reset: Duration::from_hours(24),
            privileged_intents: PRIVILEGED_INTENTS,
            key_order: KeyOrder::Discord,
        }
    }
}
