//! The live dispatch stream of a shard, drawn from the world so that every
//! event names things that exist.
//!
//! Every generated dispatch carries a marker as the last member of its `d`:
//! `"_sim":{"shard":S,"n":N,"sent_at_us":T}`. `N` counts the shard's
//! dispatches from 1 with no gap, and `T` is the Unix time in microseconds
//! at which the sim made it, so a consumer can find lost, repeated or
//! reordered events and measure latency.

use std::fmt::Write as _;

use crate::guild::{Guild, Presence, VoiceState};
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
    (380, Kind::MessageCreate),
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
    pub(crate) fn marker(&mut self, sent_at_us: u64) -> (String, u64) {
        let n = self.next_n;
        self.next_n += 1;
        let marker = format!(
            r#""_sim":{{"shard":{},"n":{n},"sent_at_us":{sent_at_us}}}"#,
            self.shard
        );
        (marker, n)
    }

    /// The next dispatch of the stream, with the world changed as it says;
    /// `None` if the shard has no available guild to talk about.
    pub(crate) fn next(&mut self, world: &mut World, sent_at_us: u64) -> Option<Dispatch> {
        if self.guilds.is_empty() {
            return None;
        }
        let index = self.guilds[self.rng.index(self.guilds.len())];
        let bot = world.bot.id;
        let guild = &mut world.guilds[index];
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
        // Replace the closing brace with the marker.
        d.pop();
        d.push(',');
        d.push_str(&self.marker(sent_at_us).0);
        d.push('}');
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
            let nick = (rng.below(2) == 0).then(|| name(rng, 1));
            guild.members[i].nick = nick;
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
                r#","token":"sim-interaction-{:016x}","version":1,"app_permissions":"2248473465835073","locale":"en-US","guild_locale":"en-US","entitlements":[],"authorizing_integration_owners":{{"0":"{id}"}},"context":0}}"#,
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
    use super::*;
    use crate::config::SimConfig;

    #[test]
    fn every_kind_of_the_mix_is_generated() {
        let config = SimConfig::default();
        let mut world = World::generate(&config);
        let mut events = EventGen::new(&world, 3, 0, 1);
        let seen: std::collections::BTreeSet<String> = (0..20_000)
            .map(|_| events.next(&mut world, 0).unwrap().t)
            .collect();
        let expected = [
            "CHANNEL_CREATE",
            "CHANNEL_DELETE",
            "CHANNEL_UPDATE",
            "GUILD_MEMBER_ADD",
            "GUILD_MEMBER_REMOVE",
            "GUILD_MEMBER_UPDATE",
            "GUILD_ROLE_CREATE",
            "GUILD_ROLE_DELETE",
            "GUILD_ROLE_UPDATE",
            "GUILD_UPDATE",
            "INTERACTION_CREATE",
            "MESSAGE_CREATE",
            "PRESENCE_UPDATE",
            "THREAD_CREATE",
            "THREAD_DELETE",
            "THREAD_UPDATE",
            "TYPING_START",
            "VOICE_STATE_UPDATE",
        ];
        assert_eq!(seen, expected.iter().map(|t| (*t).to_owned()).collect());
        assert_eq!(expected.len(), MIX.len());
    }

    #[test]
    fn events_are_json_marked_and_numbered() {
        let config = SimConfig::default();
        let mut world = World::generate(&config);
        let mut events = EventGen::new(&world, 9, 0, 1);
        for n in 1..=500u64 {
            let dispatch = events.next(&mut world, 1_732_766_519_123_456).unwrap();
            let d: serde_json::Value =
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
        }
    }
}
