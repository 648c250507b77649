//! What a pool connects to, as whom, and what it keeps.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use state_cache::Flags;

use crate::remote::Source;
use crate::store::{Holding, Store};
use crate::tap::Tap;
use crate::token::Token;
use twilight_gateway::queue::Queue;

/// Discord's gateway, where `gateway_url` and `/gateway/bot` say nothing else.
pub const DISCORD_GATEWAY: &str = "wss://gateway.discord.gg";

/// How a pool is started. Start from [`PoolConfig::new`] and change what
/// you need; the fields keep the original gateway-proxy's names.
#[derive(Clone)]
#[non_exhaustive]
pub struct PoolConfig {
    /// The bot token.
    pub token: Token,
    /// The gateway intents every shard identifies with.
    pub intents: u64,
    /// The total shard count; `None` asks `GET /gateway/bot`.
    pub shards: Option<u32>,
    /// The first shard this pool runs (inclusive).
    pub shard_start: u32,
    /// The shard after the last one this pool runs (exclusive); `None` for
    /// the total.
    pub shard_end: Option<u32>,
    /// The upstream gateway, e.g. `ws://127.0.0.1:9000`; `None` takes the
    /// `url` of `GET /gateway/bot` (Discord's own).
    pub gateway_url: Option<String>,
    /// The REST base, e.g. `http://127.0.0.1:9001/api`; wins over
    /// `twilight_http_proxy`. `None` is Discord's.
    pub api_base: Option<String>,
    /// The original's form of a REST proxy: `ip:port`, spoken to over HTTP.
    pub twilight_http_proxy: Option<String>,
    /// The presence every shard identifies with.
    pub presence: Presence,
    /// IDENTIFY's `large_threshold` (Discord allows 50 to 250).
    pub large_threshold: u64,
    /// What each shard's state cache keeps.
    pub cache: Flags,
    /// The time one identify bucket waits between identifies (Discord: 5 s).
    pub identify_window: Duration,
    /// How long a shard waits, after READY, for the `GUILD_CREATE` of every
    /// guild READY named before it counts as ready anyway (discord.js waits
    /// 15 s as well).
    pub guild_load_timeout: Duration,
    /// The most dispatches each shard's ring keeps for followers that fall
    /// behind and for resumes (a cap per shard; bytes and age bound it
    /// too).
    pub replay_max_events: usize,
    /// The most bytes the rings of every shard of the pool keep together:
    /// one budget, shared. A ring that needs room past it makes room from
    /// its own oldest events. Packed dispatches count compressed.
    pub replay_max_bytes: usize,
    /// The most bytes one shard's ring keeps, as a cap under the shared
    /// budget; `None`: the budget alone.
    pub replay_shard_max_bytes: Option<usize>,
    /// The longest a ring keeps an event: the longest a client session
    /// may wait to resume.
    pub replay_max_age: Duration,
    /// Identify pacing shared with other processes; `None` paces within
    /// this pool by `max_concurrency` and `identify_window`.
    pub queue: Option<Arc<dyn Queue + Send + Sync>>,
    /// Where checkpoints are kept: at start each shard with a fresh one
    /// of this bot and configuration RESUMEs its upstream session instead
    /// of identifying, and [`Pool::checkpoint`](crate::Pool::checkpoint)
    /// writes them. `None`: no checkpoints.
    pub store: Option<Arc<dyn Store>>,
    /// The oldest checkpoint a shard starts from; an older one is passed
    /// over (Discord would most likely refuse its RESUME) and the shard
    /// identifies.
    pub checkpoint_max_age: Duration,
    /// Asked before each write of a shard's checkpoint whether this
    /// process still surely runs the shard (a cluster's lease); a write
    /// it says no to is not made. `None`: always written.
    pub holding: Option<Arc<dyn Holding>>,
    /// Gets a copy of every event every shard takes in (an event log);
    /// `None`: nobody.
    pub tap: Option<Arc<dyn Tap>>,
    /// Where the shards outside `shard_start..shard_end` come from: with
    /// a source, [`Pool::shard`](crate::Pool::shard) gives every shard of
    /// the total, those others run followed from their owners' events and
    /// checkpoints (in [`store`](Self::store)); without, only the pool's.
    pub source: Option<Arc<dyn Source>>,
    /// How long taking over a followed shard ([`Pool::run`](crate::Pool::run))
    /// waits to read its log up to the new term's mark; past it, the shard
    /// runs from where its state stands (a gap in the log that no
    /// checkpoint fills would otherwise keep it from running anywhere).
    pub takeover_wait: Duration,
    /// What `GET /gateway/bot` said, if the caller asked already
    /// ([`GatewayInfo::fetch`](crate::GatewayInfo::fetch): a cluster's
    /// queue needs it first); `None`: the pool asks.
    pub gateway: Option<crate::GatewayInfo>,
}

impl fmt::Debug for PoolConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolConfig")
            .field("token", &self.token)
            .field("intents", &self.intents)
            .field("shards", &self.shards)
            .field("shard_start", &self.shard_start)
            .field("shard_end", &self.shard_end)
            .field("gateway_url", &self.gateway_url)
            .field("api_base", &self.api_base)
            .field("twilight_http_proxy", &self.twilight_http_proxy)
            .field("presence", &self.presence)
            .field("large_threshold", &self.large_threshold)
            .field("cache", &self.cache)
            .field("identify_window", &self.identify_window)
            .field("guild_load_timeout", &self.guild_load_timeout)
            .field("replay_max_events", &self.replay_max_events)
            .field("replay_max_bytes", &self.replay_max_bytes)
            .field("replay_shard_max_bytes", &self.replay_shard_max_bytes)
            .field("replay_max_age", &self.replay_max_age)
            .field("queue", &self.queue.as_ref().map(|_| "shared"))
            .field("store", &self.store)
            .field("checkpoint_max_age", &self.checkpoint_max_age)
            .field("holding", &self.holding)
            .field("tap", &self.tap)
            .field("source", &self.source)
            .field("takeover_wait", &self.takeover_wait)
            .field("gateway", &self.gateway)
            .finish()
    }
}

impl PoolConfig {
    /// A pool of every shard of the bot, Discord's defaults otherwise.
    #[must_use]
    pub fn new(token: impl Into<Token>, intents: u64) -> Self {
        Self {
            token: token.into(),
            intents,
            shards: None,
            shard_start: 0,
            shard_end: None,
            gateway_url: None,
            api_base: None,
            twilight_http_proxy: None,
            presence: Presence::default(),
            large_threshold: 250,
            cache: Flags::default(),
            identify_window: Duration::from_secs(5),
            guild_load_timeout: Duration::from_secs(15),
            replay_max_events: 1 << 20,
            replay_max_bytes: 256 << 20,
            replay_shard_max_bytes: None,
            replay_max_age: Duration::from_mins(5),
            queue: None,
            store: None,
            checkpoint_max_age: Duration::from_mins(2),
            holding: None,
            tap: None,
            source: None,
            takeover_wait: Duration::from_secs(30),
            gateway: None,
        }
    }
}

/// The presence shards identify with: the config's `status` and `activity`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Presence {
    /// `online`, `idle`, `dnd`, `invisible` or `offline`.
    pub status: String,
    /// One activity, or none.
    pub activity: Option<Activity>,
}

impl Default for Presence {
    fn default() -> Self {
        Self {
            status: "online".to_owned(),
            activity: None,
        }
    }
}

/// An activity a bot may set: Discord allows only these fields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Activity {
    /// `type`: 0 playing, 1 streaming, 2 listening, 3 watching, 4 custom,
    /// 5 competing.
    pub kind: u8,
    /// `name`; `{{shard}}` is replaced by each shard's id.
    pub name: String,
    /// `url` (streaming only).
    pub url: Option<String>,
}

impl Activity {
    /// An activity of `kind` named `name`.
    #[must_use]
    pub fn new(kind: u8, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
            url: None,
        }
    }
}
