//! The live dispatch stream of a shard, drawn from the world so that every
//! event names things that exist.
//!
//! Every dispatch the gateway streams carries a marker as the last member
//! of its `d`: `"_sim":{"shard":S,"n":N,"sent_at_us":T}`. `N` counts the
//! shard's dispatches from 1 with no gap, and `T` is the Unix time in
//! microseconds at which the sim made it, so a consumer can find lost,
//! repeated or reordered events and measure latency. [`EventStream`], the
//! same stream without a network, adds no marker.

use std::fmt::Write as _;

use crate::guild::{
    Guild, Presence, VoiceState, item, write_list, write_sound, write_stage_instance, write_sticker,
};
use crate::world::{Member, Rng, World, iso8601, json_str, name};

/// The gateway intent a session needs to receive a dispatch named `t`, or
/// `None` for dispatches every session receives.
#[must_use]
pub fn intent_of(t: &str) -> Option<u64> {
    let bit = match t {
        "GUILD_CREATE"
        | "GUILD_UPDATE"
        | "GUILD_DELETE"
        | "GUILD_ROLE_CREATE"
        | "GUILD_ROLE_UPDATE"
        | "GUILD_ROLE_DELETE"
        | "CHANNEL_CREATE"
        | "CHANNEL_UPDATE"
        | "CHANNEL_DELETE"
        | "CHANNEL_PINS_UPDATE"
        | "THREAD_CREATE"
        | "THREAD_UPDATE"
        | "THREAD_DELETE"
        | "THREAD_LIST_SYNC"
        | "THREAD_MEMBER_UPDATE"
        | "STAGE_INSTANCE_CREATE"
        | "STAGE_INSTANCE_UPDATE"
        | "STAGE_INSTANCE_DELETE" => 0,
        "GUILD_MEMBER_ADD"
        | "GUILD_MEMBER_UPDATE"
        | "GUILD_MEMBER_REMOVE"
        | "THREAD_MEMBERS_UPDATE" => 1,
        "GUILD_EMOJIS_UPDATE"
        | "GUILD_STICKERS_UPDATE"
        | "GUILD_SOUNDBOARD_SOUND_CREATE"
        | "GUILD_SOUNDBOARD_SOUND_UPDATE"
        | "GUILD_SOUNDBOARD_SOUND_DELETE"
        | "GUILD_SOUNDBOARD_SOUNDS_UPDATE" => 3,
        "GUILD_SCHEDULED_EVENT_CREATE"
        | "GUILD_SCHEDULED_EVENT_UPDATE"
        | "GUILD_SCHEDULED_EVENT_DELETE" => 16,
        "VOICE_STATE_UPDATE" => 7,
        "PRESENCE_UPDATE" => 8,
        "MESSAGE_CREATE" | "MESSAGE_UPDATE" | "MESSAGE_DELETE" | "MESSAGE_DELETE_BULK" => 9,
        "MESSAGE_REACTION_ADD" | "MESSAGE_REACTION_REMOVE" => 10,
        "TYPING_START" => 11,
        _ => return None,
    };
    Some(1 << bit)
}

/// One dispatch, before a session gives it a sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispatch {
    /// The event name, `t`.
    pub t: String,
    /// The event data, `d`, as JSON.
    pub d: String,
}

/// A shard's dispatch stream without a network: the mix the gateway
/// streams, drawn from the same seeded generator, for a test that feeds a
/// consumer directly.
///
/// Every dispatch that changes a guild changes the [`World`] it is given as
/// it says, so that after any number of them [`Guild::guild_create`] of the
/// changed world is what a consumer that applied them all to the guilds'
/// first `GUILD_CREATE`s should hold. Its `d` has no `_sim` marker. Its clock is
/// made up, so that a seed gives the same stream every time: the first
/// dispatch is made at 2024-11-28T08:00:00Z and each next one a
/// millisecond later (message `timestamp`s and typing times follow it).
#[derive(Debug)]
pub struct EventStream {
    generator: EventGen,
    now_us: u64,
}

/// When an [`EventStream`]'s first dispatch is made, in Unix microseconds.
const STREAM_START_US: u64 = 1_732_780_800_000_000;

impl EventStream {
    /// The stream of `shard` (of `shards`) about `world`, drawn from `seed`:
    /// the gateway's stream for `SimConfig::seed` `seed`, without markers or
    /// wall clock. It talks about the shard's available guilds only.
    #[must_use]
    pub fn new(world: &World, seed: u64, shard: u32, shards: u32) -> Self {
        Self {
            generator: EventGen::new(world, seed, shard, shards),
            now_us: STREAM_START_US,
        }
    }

    /// The next dispatch, with `world` changed as it says; `None` if the
    /// shard has no available guild, or if `world` is not (a later state
    /// of) the world the stream was made from.
    pub fn next(&mut self, world: &mut World) -> Option<Dispatch> {
        let dispatch = self.generator.next_unmarked(world, self.now_us)?;
        self.now_us += 1000;
        Some(dispatch)
    }
}

/// The generator of one shard's stream.
#[derive(Debug)]
pub(crate) struct EventGen {
    rng: Rng,
    shard: u32,
    /// Indexes of the shard's available guilds in `World::guilds`.
    guilds: Vec<usize>,
    next_n: u64,
}

const LINES: &[&str] = &[
    "hello there",
    "the proxy kept the session alive",
    "anyone up for a game tonight?",
    "deploying now, brb",
    "lol",
    "check the \"s\": field, it says {\"op\":0}",
    "日本語のメッセージ ✓",
    "a\\b\\c backslashes",
];

/// The dispatch mix, in parts per thousand: mostly messages, presences and
/// typing, as on a busy gateway, with every kind of state change now and
/// then.
const MIX: &[(u16, Kind)] = &[
    (341, Kind::MessageCreate),
    (250, Kind::PresenceUpdate),
    (150, Kind::TypingStart),
    (40, Kind::MemberUpdate),
    (25, Kind::MemberAdd),
    (20, Kind::MemberRemove),
    (35, Kind::VoiceStateUpdate),
    (30, Kind::InteractionCreate),
    (15, Kind::ChannelUpdate),
    (8, Kind::ChannelCreate),
    (5, Kind::ChannelDelete),
    (10, Kind::RoleUpdate),
    (4, Kind::RoleCreate),
    (3, Kind::RoleDelete),
    (5, Kind::GuildUpdate),
    (10, Kind::ThreadCreate),
    (6, Kind::ThreadUpdate),
    (4, Kind::ThreadDelete),
    (4, Kind::ThreadListSync),
    (6, Kind::EmojisUpdate),
    (5, Kind::StickersUpdate),
    (3, Kind::ScheduledEventCreate),
    (3, Kind::ScheduledEventUpdate),
    (2, Kind::ScheduledEventDelete),
    (3, Kind::StageInstanceCreate),
    (3, Kind::StageInstanceUpdate),
    (2, Kind::StageInstanceDelete),
    (3, Kind::SoundCreate),
    (3, Kind::SoundUpdate),
    (2, Kind::SoundDelete),
];

#[derive(Clone, Copy, Debug)]
enum Kind {
    MessageCreate,
    PresenceUpdate,
    TypingStart,
    MemberUpdate,
    MemberAdd,
    MemberRemove,
    VoiceStateUpdate,
    InteractionCreate,
    ChannelUpdate,
    ChannelCreate,
    ChannelDelete,
    RoleUpdate,
    RoleCreate,
    RoleDelete,
    GuildUpdate,
    ThreadCreate,
    ThreadUpdate,
    ThreadDelete,
    ThreadListSync,
    EmojisUpdate,
    StickersUpdate,
    ScheduledEventCreate,
    ScheduledEventUpdate,
    ScheduledEventDelete,
    StageInstanceCreate,
    StageInstanceUpdate,
    StageInstanceDelete,
    SoundCreate,
    SoundUpdate,
    SoundDelete,
}

impl EventGen {
    pub(crate) fn new(world: &World, seed: u64, shard: u32, shards: u32) -> Self {
        let guilds = world
            .guilds
            .iter()
            .enumerate()
            .filter(|(_, g)| !g.unavailable && World::shard_of(g.id, shards) == shard)
            .map(|(i, _)| i)
            .collect();
        Self {
            rng: Rng::new(seed ^ (u64::from(shard) << 32)),
            shard,
            guilds,
            next_n: 1,
        }
    }

    /// The marker of the next dispatch, and its number.
    /// The number of the last marker handed out (0: none yet).
    pub(crate) fn last_marker(&self) -> u64 {
        self.next_n - 1
    }

    pub(crate) fn marker(&mut self, sent_at_us: u64) -> (String, u64) {
        let n = self.next_n;
        self.next_n += 1;
        let marker = format!(
            r#""_sim":{{"shard":{},"n":{n},"sent_at_us":{sent_at_us}}}"#,
            self.shard
        );
        (marker, n)
    }

    /// The next dispatch of the stream, with the world changed as it says
    /// and the marker as the last member of its `d`; `None` if the shard
    /// has no available guild to talk about.
    pub(crate) fn next(&mut self, world: &mut World, sent_at_us: u64) -> Option<Dispatch> {
        let mut dispatch = self.next_unmarked(world, sent_at_us)?;
        // Replace the closing brace with the marker.
        dispatch.d.pop();
        dispatch.d.push(',');
        dispatch.d.push_str(&self.marker(sent_at_us).0);
        dispatch.d.push('}');
        Some(dispatch)
    }

    /// [`next`](Self::next) without the marker (and without taking a
    /// marker number).
    fn next_unmarked(&mut self, world: &mut World, sent_at_us: u64) -> Option<Dispatch> {
        if self.guilds.is_empty() {
            return None;
        }
        let index = self.guilds[self.rng.index(self.guilds.len())];
        let bot = world.bot.id;
        let guild = world.guilds.get_mut(index)?;
        let mut roll = u16::try_from(self.rng.below(1000)).unwrap_or(0);
        let kind = MIX
            .iter()
            .find(|(weight, _)| {
                let hit = roll < *weight;
                roll = roll.saturating_sub(*weight);
                hit
            })
            .map_or(Kind::MessageCreate, |(_, kind)| *kind);
        let mut d = String::with_capacity(1024);
        let t = self.write(kind, guild, bot, sent_at_us, &mut d);
        Some(Dispatch { t: t.to_owned(), d })
    }

    /// Writes one event of `kind` (or a message, where the guild has
    /// nothing to change) and applies it to `guild`.
    fn write(
        &mut self,
        kind: Kind,
        guild: &mut Guild,
        bot: u64,
        sent_at_us: u64,
        d: &mut String,
    ) -> &'static str {
        let rng = &mut self.rng;
        let written = match kind {
            Kind::TypingStart => Some(typing_start(rng, guild, sent_at_us, d)),
            Kind::MessageCreate => None,
            Kind::ChannelCreate
            | Kind::ChannelUpdate
            | Kind::ChannelDelete
            | Kind::ThreadCreate
            | Kind::ThreadUpdate
            | Kind::ThreadDelete => channel_event(rng, kind, guild, d),
            Kind::RoleCreate | Kind::RoleUpdate | Kind::RoleDelete | Kind::GuildUpdate => {
                guild_event(rng, kind, guild, d)
            }
            Kind::ThreadListSync => thread_list_sync(rng, guild, d),
            Kind::EmojisUpdate => emojis_update(rng, guild, d),
            Kind::StickersUpdate => stickers_update(rng, guild, d),
            Kind::ScheduledEventCreate
            | Kind::ScheduledEventUpdate
            | Kind::ScheduledEventDelete => scheduled_event(rng, kind, guild, d),
            Kind::StageInstanceCreate | Kind::StageInstanceUpdate | Kind::StageInstanceDelete => {
                stage_instance_event(rng, kind, guild, d)
            }
            Kind::SoundCreate | Kind::SoundUpdate | Kind::SoundDelete => {
                sound_event(rng, kind, guild, d)
            }
            _ => member_event(rng, kind, guild, bot, d),
        };
        written.unwrap_or_else(|| message_create(rng, guild, sent_at_us, d))
    }
}

/// Member, presence, voice and interaction events.
fn member_event(
    rng: &mut Rng,
    kind: Kind,
    guild: &mut Guild,
    bot: u64,
    d: &mut String,
) -> Option<&'static str> {
    let id = guild.id;
    match kind {
        Kind::MemberAdd => {
            let member = guild.add_member(rng);
            write_member_with_guild(d, member, id);
            return Some("GUILD_MEMBER_ADD");
        }
        Kind::MemberUpdate if !guild.members.is_empty() => {
            let i = rng.index(guild.members.len());
            update_member(rng, guild, i);
            write_member_with_guild(d, &guild.members[i], id);
            return Some("GUILD_MEMBER_UPDATE");
        }
        Kind::MemberRemove if guild.members.len() > 1 => {
            let member = guild.members.swap_remove(rng.index(guild.members.len()));
            guild.presences.retain(|p| p.user_id != member.user.id);
            guild.voice_states.retain(|v| v.user_id != member.user.id);
            let _ = write!(d, r#"{{"guild_id":"{id}","user":"#);
            member.user.write(d);
            d.push('}');
            return Some("GUILD_MEMBER_REMOVE");
        }
        Kind::PresenceUpdate if !guild.members.is_empty() => {
            let user_id = guild.members[rng.index(guild.members.len())].user.id;
            let status = ["online", "idle", "dnd", "offline"][rng.index(4)];
            guild.presences.retain(|p| p.user_id != user_id);
            let presence = Presence {
                user_id,
                status: status.to_owned(),
            };
            presence.write(d, Some(id));
            if status != "offline" {
                guild.presences.push(presence);
            }
            return Some("PRESENCE_UPDATE");
        }
        Kind::VoiceStateUpdate if !guild.members.is_empty() => {
            let voices: Vec<u64> = guild.channels_of(2).collect();
            let member = guild.members[rng.index(guild.members.len())].clone();
            if let Some(at) = guild
                .voice_states
                .iter()
                .position(|v| v.user_id == member.user.id)
            {
                let state = guild.voice_states.swap_remove(at);
                state.write_in(d, Some(id), Some(&member), None);
                return Some("VOICE_STATE_UPDATE");
            }
            if let Some(&channel_id) = voices.get(rng.index(voices.len().max(1))) {
                let state = VoiceState {
                    user_id: member.user.id,
                    channel_id,
                    session_id: format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64()),
                };
                state.write(d, Some(id), Some(&member));
                guild.voice_states.push(state);
                return Some("VOICE_STATE_UPDATE");
            }
        }
        Kind::InteractionCreate if !guild.members.is_empty() => {
            let channel = text_channel(guild, rng);
            let member = &guild.members[rng.index(guild.members.len())];
            let _ = write!(
                d,
                r#"{{"id":"{}","application_id":"{}","type":2,"data":{{"id":"{}","name":"ping","type":1}},"guild_id":"{id}","channel_id":"{channel}","member":"#,
                rng.snowflake(),
                bot,
                rng.snowflake(),
            );
            member.write(d);
            let _ = write!(
                d,
                r#","token":"sim-interaction-{:016x}","version":1,"app_permissions":"2248473465835073","locale":"en-US","guild_locale":"en-US","entitlements":[],"attachment_size_limit":10485760,"authorizing_integration_owners":{{"0":"{id}"}},"context":0}}"#,
                rng.next_u64()
            );
            return Some("INTERACTION_CREATE");
        }
        _ => {}
    }
    None
}

/// Channel and thread events.
fn channel_event(
    rng: &mut Rng,
    kind: Kind,
    guild: &mut Guild,
    d: &mut String,
) -> Option<&'static str> {
    let id = guild.id;
    match kind {
        Kind::ChannelCreate => {
            let parent = guild.channels_of(4).next();
            let channel = guild.add_channel(rng, 0, parent);
            if let Some(channel) = guild.channels.iter().find(|c| c.id == channel) {
                channel.write(d, Some(id));
            }
            return Some("CHANNEL_CREATE");
        }
        Kind::ChannelUpdate => {
            let texts: Vec<u64> = guild.channels_of(0).collect();
            if let Some(&channel) = texts.get(rng.index(texts.len().max(1))) {
                let topic = format!("now about {}", name(rng, 2));
                if let Some(c) = guild.channels.iter_mut().find(|c| c.id == channel) {
                    c.topic = Some(topic);
                    c.write(d, Some(id));
                    return Some("CHANNEL_UPDATE");
                }
            }
        }
        Kind::ChannelDelete if guild.channels_of(0).count() > 1 => {
            let texts: Vec<u64> = guild.channels_of(0).collect();
            let channel = texts[rng.index(texts.len())];
            if let Some(at) = guild.channels.iter().position(|c| c.id == channel) {
                let removed = guild.channels.remove(at);
                guild.threads.retain(|t| t.parent_id != channel);
                removed.write(d, Some(id));
                return Some("CHANNEL_DELETE");
            }
        }
        Kind::ThreadCreate => {
            if let Some(thread) = guild.add_thread(rng) {
                let thread = thread.clone();
                thread.write(d, id);
                d.pop();
                d.push_str(r#","newly_created":true}"#);
                return Some("THREAD_CREATE");
            }
        }
        Kind::ThreadUpdate if !guild.threads.is_empty() => {
            let i = rng.index(guild.threads.len());
            guild.threads[i].name = name(rng, 3);
            guild.threads[i].write(d, id);
            return Some("THREAD_UPDATE");
        }
        Kind::ThreadDelete if !guild.threads.is_empty() => {
            let thread = guild.threads.swap_remove(rng.index(guild.threads.len()));
            let _ = write!(
                d,
                r#"{{"id":"{}","guild_id":"{id}","parent_id":"{}","type":11}}"#,
                thread.id, thread.parent_id
            );
            return Some("THREAD_DELETE");
        }
        _ => {}
    }
    None
}

/// Role and guild events.
fn guild_event(
    rng: &mut Rng,
    kind: Kind,
    guild: &mut Guild,
    d: &mut String,
) -> Option<&'static str> {
    let id = guild.id;
    match kind {
        Kind::RoleCreate => {
            let role = guild.add_role(rng);
            let _ = write!(d, r#"{{"guild_id":"{id}","role":"#);
            role.write(d);
            d.push('}');
            return Some("GUILD_ROLE_CREATE");
        }
        Kind::RoleUpdate if guild.roles.len() > 1 => {
            let i = 1 + rng.index(guild.roles.len() - 1);
            guild.roles[i].color = u32::try_from(rng.below(0x0100_0000)).unwrap_or(0);
            let _ = write!(d, r#"{{"guild_id":"{id}","role":"#);
            guild.roles[i].write(d);
            d.push('}');
            return Some("GUILD_ROLE_UPDATE");
        }
        Kind::RoleDelete if guild.roles.len() > 1 => {
            let role = guild.roles.remove(1 + rng.index(guild.roles.len() - 1));
            for member in &mut guild.members {
                member.roles.retain(|r| *r != role.id);
            }
            let _ = write!(d, r#"{{"guild_id":"{id}","role_id":"{}"}}"#, role.id);
            return Some("GUILD_ROLE_DELETE");
        }
        Kind::GuildUpdate => {
            guild.name = format!("{} \"guild\" ✓", name(rng, 2));
            guild.write_update(d);
            return Some("GUILD_UPDATE");
        }
        _ => {}
    }
    None
}

/// Changes a member's nickname, or gives it a role it lacks or takes one
/// it has (half the time, where the guild has a role besides `@everyone`).
fn update_member(rng: &mut Rng, guild: &mut Guild, i: usize) {
    if guild.roles.len() > 1 && rng.below(2) == 0 {
        let role = guild.roles[1 + rng.index(guild.roles.len() - 1)].id;
        let roles = &mut guild.members[i].roles;
        if let Some(at) = roles.iter().position(|r| *r == role) {
            roles.remove(at);
        } else {
            roles.push(role);
        }
    } else {
        guild.members[i].nick = (rng.below(2) == 0).then(|| name(rng, 1));
    }
}

/// What an update of one of a guild's lists (emojis, stickers) does.
enum Change {
    Add,
    Rename(usize),
    Remove(usize),
}

/// An add, a rename or a removal, as likely each, in a list of `len`;
/// `None` for a rename or a removal in an empty list.
fn change(rng: &mut Rng, len: usize) -> Option<Change> {
    let pick = rng.below(3);
    if pick == 0 {
        return Some(Change::Add);
    }
    if len == 0 {
        return None;
    }
    let i = rng.index(len);
    Some(if pick == 1 {
        Change::Rename(i)
    } else {
        Change::Remove(i)
    })
}

/// Adds, renames or removes an emoji; the event lists every emoji left.
fn emojis_update(rng: &mut Rng, guild: &mut Guild, d: &mut String) -> Option<&'static str> {
    match change(rng, guild.emojis.len())? {
        Change::Add => {
            guild.add_emoji(rng);
        }
        Change::Rename(i) => guild.emojis[i].name = name(rng, 1),
        Change::Remove(i) => {
            guild.emojis.remove(i);
        }
    }
    let _ = write!(d, r#"{{"guild_id":"{}","emojis":["#, guild.id);
    write_list(d, &guild.emojis, |out, emoji| emoji.write(out));
    d.push_str("]}");
    Some("GUILD_EMOJIS_UPDATE")
}

/// Adds, renames or removes a sticker; the event lists every sticker left.
fn stickers_update(rng: &mut Rng, guild: &mut Guild, d: &mut String) -> Option<&'static str> {
    match change(rng, guild.stickers.len())? {
        Change::Add => guild.stickers.push(item(rng, None)),
        Change::Rename(i) => guild.stickers[i].name = name(rng, 2),
        Change::Remove(i) => {
            guild.stickers.remove(i);
        }
    }
    let id = guild.id;
    let _ = write!(d, r#"{{"guild_id":"{id}","stickers":["#);
    write_list(d, &guild.stickers, |out, sticker| {
        write_sticker(out, sticker, id);
    });
    d.push_str("]}");
    Some("GUILD_STICKERS_UPDATE")
}

/// Schedules an event (in a text channel, where there is one), renames one
/// or deletes one; each event carries the whole scheduled event.
fn scheduled_event(
    rng: &mut Rng,
    kind: Kind,
    guild: &mut Guild,
    d: &mut String,
) -> Option<&'static str> {
    let events = guild.scheduled_events.len();
    let (t, event) = match kind {
        Kind::ScheduledEventCreate => {
            let texts: Vec<u64> = guild.channels_of(0).collect();
            let channel = texts.get(rng.index(texts.len().max(1))).copied();
            let event = item(rng, channel);
            guild.scheduled_events.push(event.clone());
            ("GUILD_SCHEDULED_EVENT_CREATE", event)
        }
        Kind::ScheduledEventUpdate if events > 0 => {
            let event = &mut guild.scheduled_events[rng.index(events)];
            event.name = name(rng, 2);
            ("GUILD_SCHEDULED_EVENT_UPDATE", event.clone())
        }
        Kind::ScheduledEventDelete if events > 0 => (
            "GUILD_SCHEDULED_EVENT_DELETE",
            guild.scheduled_events.remove(rng.index(events)),
        ),
        _ => return None,
    };
    guild.write_scheduled_event(d, &event);
    Some(t)
}

/// Opens a stage in a stage channel that has none, gives one a new topic or
/// ends one; each event carries the whole stage instance.
fn stage_instance_event(
    rng: &mut Rng,
    kind: Kind,
    guild: &mut Guild,
    d: &mut String,
) -> Option<&'static str> {
    let stages = guild.stage_instances.len();
    let (t, stage) = match kind {
        Kind::StageInstanceCreate => {
            let free: Vec<u64> = guild
                .channels_of(13)
                .filter(|c| {
                    !guild
                        .stage_instances
                        .iter()
                        .any(|s| s.channel_id == Some(*c))
                })
                .collect();
            let channel = *free.get(rng.index(free.len().max(1)))?;
            let stage = item(rng, Some(channel));
            guild.stage_instances.push(stage.clone());
            ("STAGE_INSTANCE_CREATE", stage)
        }
        Kind::StageInstanceUpdate if stages > 0 => {
            let stage = &mut guild.stage_instances[rng.index(stages)];
            stage.name = name(rng, 3);
            ("STAGE_INSTANCE_UPDATE", stage.clone())
        }
        Kind::StageInstanceDelete if stages > 0 => (
            "STAGE_INSTANCE_DELETE",
            guild.stage_instances.remove(rng.index(stages)),
        ),
        _ => return None,
    };
    write_stage_instance(d, &stage, guild.id);
    Some(t)
}

/// Adds, renames or deletes a soundboard sound; a deletion names only the
/// sound and its guild.
fn sound_event(
    rng: &mut Rng,
    kind: Kind,
    guild: &mut Guild,
    d: &mut String,
) -> Option<&'static str> {
    let id = guild.id;
    let sounds = guild.soundboard_sounds.len();
    let (t, i) = match kind {
        Kind::SoundCreate => {
            guild.soundboard_sounds.push(item(rng, None));
            ("GUILD_SOUNDBOARD_SOUND_CREATE", sounds)
        }
        Kind::SoundUpdate if sounds > 0 => {
            let i = rng.index(sounds);
            guild.soundboard_sounds[i].name = name(rng, 2);
            ("GUILD_SOUNDBOARD_SOUND_UPDATE", i)
        }
        Kind::SoundDelete if sounds > 0 => {
            let sound = guild.soundboard_sounds.remove(rng.index(sounds));
            let _ = write!(d, r#"{{"sound_id":"{}","guild_id":"{id}"}}"#, sound.id);
            return Some("GUILD_SOUNDBOARD_SOUND_DELETE");
        }
        _ => return None,
    };
    write_sound(d, &guild.soundboard_sounds[i], id);
    Some(t)
}

/// Archives (drops) an active thread or starts one, then lists every active
/// thread of the guild: a full sync, with no `channel_ids`.
fn thread_list_sync(rng: &mut Rng, guild: &mut Guild, d: &mut String) -> Option<&'static str> {
    if !guild.threads.is_empty() && rng.below(2) == 0 {
        guild.threads.swap_remove(rng.index(guild.threads.len()));
    } else {
        guild.add_thread(rng)?;
    }
    let id = guild.id;
    let _ = write!(d, r#"{{"guild_id":"{id}","threads":["#);
    write_list(d, &guild.threads, |out, thread| thread.write(out, id));
    d.push_str(r#"],"members":[]}"#);
    Some("THREAD_LIST_SYNC")
}

fn write_member_with_guild(d: &mut String, member: &Member, guild_id: u64) {
    member.write(d);
    d.pop();
    let _ = write!(d, r#","guild_id":"{guild_id}"}}"#);
}

fn message_create(rng: &mut Rng, guild: &Guild, sent_at_us: u64, d: &mut String) -> &'static str {
    let channel = text_channel(guild, rng);
    let id = rng.snowflake();
    let _ = write!(
        d,
        r#"{{"type":0,"tts":false,"timestamp":"{}","pinned":false,"nonce":"{}","mentions":[],"mention_roles":[],"mention_everyone":false,"id":"{id}","flags":0,"embeds":[],"edited_timestamp":null,"content":"#,
        iso8601(sent_at_us / 1000),
        rng.snowflake(),
    );
    json_str(d, LINES[rng.index(LINES.len())]);
    let _ = write!(
        d,
        r#","components":[],"channel_type":0,"channel_id":"{channel}","#
    );
    if let Some(member) = guild.members.get(rng.index(guild.members.len().max(1))) {
        d.push_str(r#""author":"#);
        member.user.write(d);
        d.push_str(r#","member":"#);
        member.write(d);
        d.push(',');
    }
    let _ = write!(d, r#""attachments":[],"guild_id":"{}"}}"#, guild.id);
    "MESSAGE_CREATE"
}

fn typing_start(rng: &mut Rng, guild: &Guild, sent_at_us: u64, d: &mut String) -> &'static str {
    let channel = text_channel(guild, rng);
    let _ = write!(
        d,
        r#"{{"channel_id":"{channel}","guild_id":"{}","timestamp":{},"#,
        guild.id,
        sent_at_us / 1_000_000
    );
    if let Some(member) = guild.members.get(rng.index(guild.members.len().max(1))) {
        let _ = write!(d, r#""user_id":"{}","member":"#, member.user.id);
        member.write(d);
    } else {
        d.push_str(r#""user_id":"0""#);
    }
    d.push('}');
    "TYPING_START"
}

/// A text channel of the guild, or the guild's id where it has none.
fn text_channel(guild: &Guild, rng: &mut Rng) -> u64 {
    let texts: Vec<u64> = guild
        .channels
        .iter()
        .filter(|c| c.kind == 0)
        .map(|c| c.id)
        .collect();
    if texts.is_empty() {
        guild.id
    } else {
        texts[rng.index(texts.len())]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use serde_json::Value;

    use super::*;
    use crate::config::{KNOWN_INTENTS, SimConfig};

    /// Every event name the mix makes.
    const NAMES: [&str; 30] = [
        "CHANNEL_CREATE",
        "CHANNEL_DELETE",
        "CHANNEL_UPDATE",
        "GUILD_EMOJIS_UPDATE",
        "GUILD_MEMBER_ADD",
        "GUILD_MEMBER_REMOVE",
        "GUILD_MEMBER_UPDATE",
        "GUILD_ROLE_CREATE",
        "GUILD_ROLE_DELETE",
        "GUILD_ROLE_UPDATE",
        "GUILD_SCHEDULED_EVENT_CREATE",
        "GUILD_SCHEDULED_EVENT_DELETE",
        "GUILD_SCHEDULED_EVENT_UPDATE",
        "GUILD_SOUNDBOARD_SOUND_CREATE",
        "GUILD_SOUNDBOARD_SOUND_DELETE",
        "GUILD_SOUNDBOARD_SOUND_UPDATE",
        "GUILD_STICKERS_UPDATE",
        "GUILD_UPDATE",
        "INTERACTION_CREATE",
        "MESSAGE_CREATE",
        "PRESENCE_UPDATE",
        "STAGE_INSTANCE_CREATE",
        "STAGE_INSTANCE_DELETE",
        "STAGE_INSTANCE_UPDATE",
        "THREAD_CREATE",
        "THREAD_DELETE",
        "THREAD_LIST_SYNC",
        "THREAD_UPDATE",
        "TYPING_START",
        "VOICE_STATE_UPDATE",
    ];

    fn names() -> BTreeSet<String> {
        NAMES.iter().map(|t| (*t).to_owned()).collect()
    }

    #[test]
    fn the_mix_is_parts_per_thousand() {
        assert_eq!(MIX.iter().map(|(w, _)| u32::from(*w)).sum::<u32>(), 1000);
        assert_eq!(NAMES.len(), MIX.len());
    }

    #[test]
    fn every_kind_of_the_mix_is_generated() {
        let config = SimConfig::default();
        let mut world = World::generate(&config);
        let mut events = EventGen::new(&world, 3, 0, 1);
        let seen: BTreeSet<String> = (0..20_000)
            .map(|_| events.next(&mut world, 0).unwrap().t)
            .collect();
        assert_eq!(seen, names());
        for t in seen.iter().filter(|t| *t != "INTERACTION_CREATE") {
            assert!(intent_of(t).is_some(), "{t} has an intent");
        }
    }

    #[test]
    fn events_are_json_marked_and_numbered() {
        let config = SimConfig::default();
        let mut world = World::generate(&config);
        let mut events = EventGen::new(&world, 9, 0, 1);
        let mut seen = BTreeSet::new();
        for n in 1..=20_000u64 {
            let dispatch = events.next(&mut world, 1_732_766_519_123_456).unwrap();
            let d: Value =
                serde_json::from_str(&dispatch.d).unwrap_or_else(|e| panic!("{e}: {}", dispatch.d));
            assert_eq!(d["_sim"]["n"], n);
            assert_eq!(d["_sim"]["shard"], 0);
            // GUILD_UPDATE names its guild as `id`; every other event as `guild_id`.
            let guild = d["guild_id"]
                .as_str()
                .or(d["id"].as_str())
                .unwrap()
                .parse::<u64>()
                .unwrap();
            assert!(
                world.guild(guild).is_some(),
                "an event names a guild that exists"
            );
            seen.insert(dispatch.t);
        }
        assert_eq!(seen, names(), "every kind was checked");
    }

    #[test]
    fn the_stream_without_network_has_no_marker_and_the_same_events() {
        let config = SimConfig::default();
        let (mut live_world, mut bare_world) = (World::generate(&config), World::generate(&config));
        let mut live = EventGen::new(&live_world, 5, 0, 1);
        let mut bare = EventStream::new(&bare_world, 5, 0, 1);
        for _ in 0..2000 {
            let marked = live.next(&mut live_world, STREAM_START_US).unwrap();
            let unmarked = bare.next(&mut bare_world).unwrap();
            assert_eq!(marked.t, unmarked.t);
            let mut marked: Value = serde_json::from_str(&marked.d).unwrap();
            let unmarked: Value = serde_json::from_str(&unmarked.d).unwrap();
            assert!(unmarked.get("_sim").is_none());
            marked.as_object_mut().unwrap().remove("_sim");
            if unmarked.get("timestamp").is_none() {
                assert_eq!(marked, unmarked);
            }
        }
        assert_eq!(live_world, bare_world);
    }

    /// The guild's `GUILD_CREATE` now, as a session with every intent gets it.
    fn guild_create(world: &World, guild_id: &Value) -> Value {
        let id = guild_id.as_str().unwrap().parse().unwrap();
        let guild = world.guild(id).unwrap();
        serde_json::from_str(&guild.guild_create(&world.bot, KNOWN_INTENTS, 1000)).unwrap()
    }

    /// The object of `list` whose `key` is `id`.
    fn find<'a>(list: &'a Value, key: &str, id: &Value) -> Option<&'a Value> {
        list.as_array().unwrap().iter().find(|v| v[key] == *id)
    }

    /// `d` without `guild_id`, as `GUILD_CREATE` writes what it carries.
    fn without_guild(d: &Value) -> Value {
        let mut d = d.clone();
        d.as_object_mut().unwrap().remove("guild_id");
        d
    }

    /// The kinds [`check`] checks.
    const CHECKED: [&str; 17] = [
        "GUILD_EMOJIS_UPDATE",
        "GUILD_STICKERS_UPDATE",
        "THREAD_LIST_SYNC",
        "GUILD_SCHEDULED_EVENT_CREATE",
        "GUILD_SCHEDULED_EVENT_UPDATE",
        "GUILD_SCHEDULED_EVENT_DELETE",
        "STAGE_INSTANCE_CREATE",
        "STAGE_INSTANCE_UPDATE",
        "STAGE_INSTANCE_DELETE",
        "GUILD_SOUNDBOARD_SOUND_CREATE",
        "GUILD_SOUNDBOARD_SOUND_UPDATE",
        "GUILD_SOUNDBOARD_SOUND_DELETE",
        "GUILD_MEMBER_UPDATE",
        "GUILD_ROLE_CREATE",
        "GUILD_ROLE_UPDATE",
        "CHANNEL_CREATE",
        "CHANNEL_UPDATE",
    ];

    /// Checks that the guild's `GUILD_CREATE` after a dispatch of one of
    /// the [`CHECKED`] kinds is what the dispatch says.
    fn check(t: &str, d: &Value, create: &Value) {
        let id = |key: &str| &d[key];
        let present = |list: &str, key: &str| find(&create[list], key, &d[key]);
        match t {
            "GUILD_EMOJIS_UPDATE" => assert_eq!(d["emojis"], create["emojis"]),
            "GUILD_STICKERS_UPDATE" => assert_eq!(d["stickers"], create["stickers"]),
            "THREAD_LIST_SYNC" => {
                assert!(d.get("channel_ids").is_none());
                assert_eq!(d["threads"], create["threads"]);
            }
            "GUILD_SCHEDULED_EVENT_CREATE" | "GUILD_SCHEDULED_EVENT_UPDATE" => {
                assert_eq!(present("guild_scheduled_events", "id"), Some(d));
            }
            "GUILD_SCHEDULED_EVENT_DELETE" => {
                assert_eq!(present("guild_scheduled_events", "id"), None);
            }
            "STAGE_INSTANCE_CREATE" | "STAGE_INSTANCE_UPDATE" => {
                assert_eq!(present("stage_instances", "id"), Some(d));
                let channel = find(&create["channels"], "id", id("channel_id")).unwrap();
                assert_eq!(channel["type"], 13, "a stage in a stage channel");
            }
            "STAGE_INSTANCE_DELETE" => assert_eq!(present("stage_instances", "id"), None),
            "GUILD_SOUNDBOARD_SOUND_CREATE" | "GUILD_SOUNDBOARD_SOUND_UPDATE" => {
                assert_eq!(present("soundboard_sounds", "sound_id"), Some(d));
            }
            "GUILD_SOUNDBOARD_SOUND_DELETE" => {
                assert_eq!(d.as_object().unwrap().len(), 2, "sound_id and guild_id");
                assert_eq!(present("soundboard_sounds", "sound_id"), None);
            }
            "GUILD_MEMBER_UPDATE" => {
                let member = find(&create["members"], "user", &d["user"]);
                assert_eq!(member, Some(&without_guild(d)));
            }
            "GUILD_ROLE_CREATE" | "GUILD_ROLE_UPDATE" => {
                assert_eq!(
                    find(&create["roles"], "id", &d["role"]["id"]),
                    Some(&d["role"])
                );
            }
            "CHANNEL_CREATE" | "CHANNEL_UPDATE" => {
                assert_eq!(present("channels", "id"), Some(&without_guild(d)));
            }
            _ => unreachable!("{t} is not checked"),
        }
    }

    #[test]
    fn each_event_changes_the_world_as_it_says() {
        let config = SimConfig::default();
        let mut world = World::generate(&config);
        // Every member's roles, to see member updates change them.
        let mut roles: HashMap<String, Value> = world
            .guilds
            .iter()
            .flat_map(|g| &g.members)
            .map(|m| (m.user.id.to_string(), roles_of(m)))
            .collect();
        let mut stream = EventStream::new(&world, 11, 0, 1);
        let mut checked = BTreeSet::new();
        let mut role_changes = 0;
        for _ in 0..20_000 {
            let dispatch = stream.next(&mut world).unwrap();
            let d: Value = serde_json::from_str(&dispatch.d).unwrap();
            assert!(d.get("_sim").is_none(), "no marker without a network");
            if CHECKED.contains(&dispatch.t.as_str()) {
                check(&dispatch.t, &d, &guild_create(&world, &d["guild_id"]));
                checked.insert(dispatch.t.clone());
            }
            if matches!(
                dispatch.t.as_str(),
                "GUILD_MEMBER_ADD" | "GUILD_MEMBER_UPDATE"
            ) {
                let user = d["user"]["id"].as_str().unwrap().to_owned();
                let before = roles.insert(user, d["roles"].clone());
                role_changes += usize::from(before.is_some_and(|r| r != d["roles"]));
            }
        }
        assert_eq!(checked.len(), CHECKED.len(), "every checked kind came");
        assert!(role_changes > 10, "member updates change roles");
    }

    fn roles_of(member: &Member) -> Value {
        member
            .roles
            .iter()
            .map(|r| Value::String(r.to_string()))
            .collect()
    }
}
