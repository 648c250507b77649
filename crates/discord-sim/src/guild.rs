//! A guild and everything in it, as the sim knows it, written in Discord's
//! JSON shapes.

use std::fmt::Write as _;

use crate::config::SimConfig;
use crate::world::{Member, Rng, User, json_opt, json_str, name, timestamp_of, user};

/// A role.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Role {
    /// Snowflake; `@everyone`'s is the guild's.
    pub id: u64,
    /// `name`.
    pub name: String,
    /// `position`.
    pub position: u32,
    /// `color`.
    pub color: u32,
    /// `permissions`, sent as a string.
    pub permissions: u64,
}

/// A guild channel.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Channel {
    /// Snowflake.
    pub id: u64,
    /// `name`.
    pub name: String,
    /// `type`: 0 text, 2 voice, 4 category, 13 stage.
    pub kind: u8,
    /// `position`.
    pub position: u32,
    /// `parent_id`: the category.
    pub parent_id: Option<u64>,
    /// `topic` (text channels).
    pub topic: Option<String>,
}

/// An active thread.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Thread {
    /// Snowflake.
    pub id: u64,
    /// The text channel it is in.
    pub parent_id: u64,
    /// `name`.
    pub name: String,
    /// Who started it.
    pub owner_id: u64,
}

/// A custom emoji.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Emoji {
    /// Snowflake.
    pub id: u64,
    /// `name`.
    pub name: String,
    /// `animated`.
    pub animated: bool,
}

/// A sticker, a scheduled event, a stage instance or a soundboard sound:
/// the guild's other content, by id and name.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Item {
    /// Snowflake.
    pub id: u64,
    /// `name` (a stage instance's `topic`).
    pub name: String,
    /// The channel it belongs to (events and stage instances).
    pub channel_id: Option<u64>,
}

/// A member in a voice channel.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct VoiceState {
    /// The member.
    pub user_id: u64,
    /// The voice channel.
    pub channel_id: u64,
    /// Its voice session.
    pub session_id: String,
}

/// A member's presence.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Presence {
    /// The member.
    pub user_id: u64,
    /// `online`, `idle` or `dnd` (offline members have no presence here).
    pub status: String,
}

/// A guild, as the sim knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Guild {
    /// Snowflake; its shard is `(id >> 22) % shards`.
    pub id: u64,
    /// `name`.
    pub name: String,
    /// `owner_id`.
    pub owner_id: u64,
    /// Unavailable guilds arrive as `GUILD_DELETE` with `unavailable: true`.
    pub unavailable: bool,
    /// `@everyone` first, then the others.
    pub roles: Vec<Role>,
    /// Categories, text, voice and stage channels.
    pub channels: Vec<Channel>,
    /// Active threads.
    pub threads: Vec<Thread>,
    /// Every member but the bot, which is a member of every guild too.
    pub members: Vec<Member>,
    /// Custom emojis.
    pub emojis: Vec<Emoji>,
    /// Stickers.
    pub stickers: Vec<Item>,
    /// Members in voice channels.
    pub voice_states: Vec<VoiceState>,
    /// Presences of the members who are not offline.
    pub presences: Vec<Presence>,
    /// Scheduled events.
    pub scheduled_events: Vec<Item>,
    /// Stage instances (in stage channels).
    pub stage_instances: Vec<Item>,
    /// Soundboard sounds.
    pub soundboard_sounds: Vec<Item>,
}

const STATUSES: [&str; 3] = ["online", "idle", "dnd"];

/// The `GUILD_PRESENCES` intent.
const GUILD_PRESENCES: u64 = 1 << 8;

impl Guild {
    pub(crate) fn generate(rng: &mut Rng, config: &SimConfig, owner_id: u64) -> Self {
        let id = rng.snowflake();
        let mut guild = Self {
            id,
            name: format!("{} \"guild\" ✓", name(rng, 2)),
            owner_id,
            unavailable: false,
            roles: vec![Role {
                id,
                name: "@everyone".to_owned(),
                position: 0,
                color: 0,
                permissions: 1_071_698_660_929,
            }],
            channels: Vec::new(),
            threads: Vec::new(),
            members: Vec::new(),
            emojis: Vec::new(),
            stickers: Vec::new(),
            voice_states: Vec::new(),
            presences: Vec::new(),
            scheduled_events: Vec::new(),
            stage_instances: Vec::new(),
            soundboard_sounds: Vec::new(),
        };
        for _ in 0..config.roles_per_guild {
            guild.add_role(rng);
        }
        let mut category = None;
        for position in 0..config.channels_per_guild {
            let kind = match position % 6 {
                0 => 4,
                4 => 2,
                5 => 13,
                _ => 0,
            };
            let channel = guild.add_channel(rng, kind, category);
            if kind == 4 {
                category = Some(channel);
            }
        }
        for _ in 0..config.members_per_guild {
            guild.add_member(rng);
        }
        for _ in 0..config.emojis_per_guild {
            guild.add_emoji(rng);
        }
        for _ in 0..config.threads_per_guild {
            guild.add_thread(rng);
        }
        let texts: Vec<u64> = guild.channels_of(0).collect();
        let voices: Vec<u64> = guild.channels_of(2).collect();
        let stages: Vec<u64> = guild.channels_of(13).collect();
        for _ in 0..config.extras_per_guild {
            guild.stickers.push(item(rng, None));
            guild.soundboard_sounds.push(item(rng, None));
            let channel = texts.get(rng.index(texts.len().max(1))).copied();
            guild.scheduled_events.push(item(rng, channel));
        }
        if let Some(&stage) = stages.first() {
            guild.stage_instances.push(item(rng, Some(stage)));
        }
        // The first members are in voice, and the last ones online: both
        // counts are exact, and overlap only when they add up to more than
        // the members there are.
        let users: Vec<u64> = guild.members.iter().map(|m| m.user.id).collect();
        if !voices.is_empty() {
            for &user_id in users
                .iter()
                .take(usize::try_from(config.voice_states_per_guild).unwrap_or(usize::MAX))
            {
                guild.voice_states.push(VoiceState {
                    user_id,
                    channel_id: voices[rng.index(voices.len())],
                    session_id: format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64()),
                });
            }
        }
        for &user_id in users
            .iter()
            .rev()
            .take(usize::try_from(config.presences_per_guild).unwrap_or(usize::MAX))
        {
            guild.presences.push(Presence {
                user_id,
                status: STATUSES[rng.index(STATUSES.len())].to_owned(),
            });
        }
        guild
    }

    /// Members with the bot.
    #[must_use]
    pub fn member_count(&self) -> usize {
        self.members.len() + 1
    }

    /// The ids of this guild's channels of one type.
    pub fn channels_of(&self, kind: u8) -> impl Iterator<Item = u64> + '_ {
        self.channels
            .iter()
            .filter(move |c| c.kind == kind)
            .map(|c| c.id)
    }

    pub(crate) fn add_role(&mut self, rng: &mut Rng) -> &Role {
        let position = u32::try_from(self.roles.len()).unwrap_or(u32::MAX);
        self.roles.push(Role {
            id: rng.snowflake(),
            name: name(rng, 1),
            position,
            color: u32::try_from(rng.below(0x0100_0000)).unwrap_or(0),
            permissions: rng.below(1 << 40),
        });
        &self.roles[self.roles.len() - 1]
    }

    pub(crate) fn add_channel(&mut self, rng: &mut Rng, kind: u8, parent_id: Option<u64>) -> u64 {
        let id = rng.snowflake();
        let position = u32::try_from(self.channels.len()).unwrap_or(u32::MAX);
        self.channels.push(Channel {
            id,
            name: name(rng, 1).replace(' ', "-"),
            kind,
            position,
            parent_id: if kind == 4 { None } else { parent_id },
            topic: (kind == 0)
                .then(|| format!("talk about {{\"s\":{position}}} and {}", name(rng, 3))),
        });
        id
    }

    pub(crate) fn add_member(&mut self, rng: &mut Rng) -> &Member {
        let user = user(rng, false);
        let roles = self.roles[1..]
            .iter()
            .filter(|_| rng.below(3) == 0)
            .map(|r| r.id)
            .collect();
        let nick = (rng.below(4) == 0).then(|| name(rng, 1));
        self.members.push(Member { user, nick, roles });
        &self.members[self.members.len() - 1]
    }

    pub(crate) fn add_emoji(&mut self, rng: &mut Rng) -> &Emoji {
        self.emojis.push(Emoji {
            id: rng.snowflake(),
            name: name(rng, 1),
            animated: rng.below(5) == 0,
        });
        &self.emojis[self.emojis.len() - 1]
    }

    /// Starts a thread in a text channel; `None` if there is none.
    pub(crate) fn add_thread(&mut self, rng: &mut Rng) -> Option<&Thread> {
        let texts: Vec<u64> = self.channels_of(0).collect();
        let parent_id = *texts.get(rng.index(texts.len().max(1)))?;
        let owner_id = self
            .members
            .get(rng.index(self.members.len().max(1)))
            .map_or(self.owner_id, |m| m.user.id);
        self.threads.push(Thread {
            id: rng.snowflake(),
            parent_id,
            name: name(rng, 3),
            owner_id,
        });
        self.threads.last()
    }

    /// Appends the guild object's own fields, without the closing brace:
    /// what `GUILD_CREATE` and `GUILD_UPDATE` share, roles and emojis
    /// included.
    fn write_head(&self, out: &mut String) {
        let _ = write!(out, r#"{{"id":"{}","name":"#, self.id);
        json_str(out, &self.name);
        let system_channel = self.channels_of(0).next();
        let _ = write!(
            out,
            r#","icon":null,"splash":null,"discovery_splash":null,"banner":null,"owner_id":"{}","afk_channel_id":null,"afk_timeout":300,"verification_level":1,"default_message_notifications":1,"explicit_content_filter":2,"features":["COMMUNITY","NEWS"],"mfa_level":0,"application_id":null,"system_channel_id":{},"system_channel_flags":0,"rules_channel_id":null,"vanity_url_code":null,"description":null,"premium_tier":0,"premium_subscription_count":0,"preferred_locale":"en-US","public_updates_channel_id":null,"safety_alerts_channel_id":null,"nsfw_level":0,"nsfw":false,"premium_progress_bar_enabled":false,"max_members":500000,"max_video_channel_users":25,"max_stage_video_channel_users":50,"version":1732780800000,"roles":["#,
            self.owner_id,
            system_channel.map_or_else(|| "null".to_owned(), |id| format!("\"{id}\"")),
        );
        write_list(out, &self.roles, |out, role| role.write(out));
        out.push_str(r#"],"emojis":["#);
        write_list(out, &self.emojis, |out, emoji| emoji.write(out));
        out.push_str(r#"],"stickers":["#);
        write_list(out, &self.stickers, |out, sticker| {
            write_sticker(out, sticker, self.id);
        });
        out.push(']');
    }

    /// Appends the `d` of this guild's `GUILD_UPDATE`.
    pub(crate) fn write_update(&self, out: &mut String) {
        self.write_head(out);
        out.push('}');
    }

    /// The `d` of this guild's `GUILD_CREATE` (or of its `GUILD_DELETE`
    /// when it is unavailable), exactly as the gateway sends it to a
    /// session that identified with these `intents` and `large_threshold`
    /// (`GUILD_CREATE` carries no `_sim` marker).
    ///
    /// Which members come with it follows Discord: without
    /// `GUILD_PRESENCES`, only the bot and the members in voice channels; in
    /// a guild larger than `large_threshold`, the bot, members who are not
    /// offline and members with a role, a nickname or a voice state; else
    /// every member. Presences come only with `GUILD_PRESENCES`.
    #[must_use]
    pub fn guild_create(&self, bot: &User, intents: u64, large_threshold: u64) -> String {
        let mut d = String::with_capacity(4096);
        self.write_create(bot, intents, large_threshold, &mut d);
        d
    }

    /// Appends the `d` of this guild's `GUILD_CREATE`: see
    /// [`guild_create`](Self::guild_create).
    pub(crate) fn write_create(
        &self,
        bot: &User,
        intents: u64,
        large_threshold: u64,
        out: &mut String,
    ) {
        if self.unavailable {
            let _ = write!(out, r#"{{"id":"{}","unavailable":true}}"#, self.id);
            return;
        }
        self.write_head(out);
        let large = self.member_count() as u64 > large_threshold;
        let presences = intents & GUILD_PRESENCES != 0;
        let _ = write!(
            out,
            r#","joined_at":"{}","large":{large},"unavailable":false,"member_count":{},"lazy":true,"channels":["#,
            timestamp_of(self.id),
            self.member_count(),
        );
        write_list(out, &self.channels, |out, channel| channel.write(out, None));
        out.push_str(r#"],"threads":["#);
        write_list(out, &self.threads, |out, thread| thread.write(out, self.id));
        out.push_str(r#"],"members":["#);
        Member::bot(bot).write(out);
        let in_voice = |m: &Member| self.voice_states.iter().any(|v| v.user_id == m.user.id);
        let online = |m: &Member| self.presences.iter().any(|p| p.user_id == m.user.id);
        for member in self.members.iter().filter(|m| {
            if !presences {
                in_voice(m)
            } else if large {
                online(m) || !m.roles.is_empty() || m.nick.is_some() || in_voice(m)
            } else {
                true
            }
        }) {
            out.push(',');
            member.write(out);
        }
        out.push_str(r#"],"presences":["#);
        if presences {
            write_list(out, &self.presences, |out, presence| {
                presence.write(out, None);
            });
        }
        out.push_str(r#"],"voice_states":["#);
        write_list(out, &self.voice_states, |out, state| {
            state.write(out, None, None);
        });
        out.push_str(r#"],"stage_instances":["#);
        write_list(out, &self.stage_instances, |out, stage| {
            write_stage_instance(out, stage, self.id);
        });
        out.push_str(r#"],"guild_scheduled_events":["#);
        write_list(out, &self.scheduled_events, |out, event| {
            self.write_scheduled_event(out, event);
        });
        out.push_str(r#"],"soundboard_sounds":["#);
        write_list(out, &self.soundboard_sounds, |out, sound| {
            write_sound(out, sound, self.id);
        });
        out.push_str(r#"],"embedded_activities":[],"application_command_counts":{}}"#);
    }

    /// Appends one of this guild's scheduled events, as `GUILD_CREATE`
    /// and the `GUILD_SCHEDULED_EVENT_*` dispatches write it.
    pub(crate) fn write_scheduled_event(&self, out: &mut String, event: &Item) {
        let _ = write!(
            out,
            r#"{{"id":"{}","guild_id":"{}","channel_id":{},"creator_id":"{}","name":"#,
            event.id,
            self.id,
            event
                .channel_id
                .map_or_else(|| "null".to_owned(), |c| format!("\"{c}\"")),
            self.owner_id
        );
        json_str(out, &event.name);
        let _ = write!(
            out,
            r#","description":null,"scheduled_start_time":"{}","scheduled_end_time":null,"privacy_level":2,"status":1,"entity_type":2,"entity_id":null,"entity_metadata":null,"user_count":0,"image":null,"recurrence_rule":null}}"#,
            timestamp_of(event.id)
        );
    }
}

/// Appends a stage instance (its `name` is the topic), as `GUILD_CREATE`
/// and the `STAGE_INSTANCE_*` dispatches write it.
pub(crate) fn write_stage_instance(out: &mut String, stage: &Item, guild_id: u64) {
    let _ = write!(
        out,
        r#"{{"id":"{}","guild_id":"{guild_id}","channel_id":"{}","topic":"#,
        stage.id,
        stage.channel_id.unwrap_or(0)
    );
    json_str(out, &stage.name);
    out.push_str(
        r#","privacy_level":2,"discoverable_disabled":false,"guild_scheduled_event_id":null}"#,
    );
}

/// Appends a soundboard sound, as `GUILD_CREATE` and the
/// `GUILD_SOUNDBOARD_SOUND_CREATE`/`_UPDATE` dispatches write it.
pub(crate) fn write_sound(out: &mut String, sound: &Item, guild_id: u64) {
    let _ = write!(out, r#"{{"sound_id":"{}","name":"#, sound.id);
    json_str(out, &sound.name);
    let _ = write!(
        out,
        r#","volume":1.0,"emoji_id":null,"emoji_name":"🔔","guild_id":"{guild_id}","available":true}}"#
    );
}

/// A new sticker, scheduled event, stage instance or sound.
pub(crate) fn item(rng: &mut Rng, channel_id: Option<u64>) -> Item {
    Item {
        id: rng.snowflake(),
        name: name(rng, 2),
        channel_id,
    }
}

/// Appends the items separated by commas.
pub(crate) fn write_list<T>(out: &mut String, items: &[T], mut write: impl FnMut(&mut String, &T)) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write(out, item);
    }
}

/// Appends a sticker, as `GUILD_CREATE`, `GUILD_UPDATE` and
/// `GUILD_STICKERS_UPDATE` write it.
pub(crate) fn write_sticker(out: &mut String, sticker: &Item, guild_id: u64) {
    let _ = write!(out, r#"{{"id":"{}","name":"#, sticker.id);
    json_str(out, &sticker.name);
    let _ = write!(
        out,
        r#","tags":"wave","type":2,"format_type":1,"description":null,"available":true,"guild_id":"{guild_id}","version":1732780800000}}"#
    );
}

impl Role {
    pub(crate) fn write(&self, out: &mut String) {
        let _ = write!(out, r#"{{"id":"{}","name":"#, self.id);
        json_str(out, &self.name);
        let _ = write!(
            out,
            r#","color":{c},"colors":{{"primary_color":{c},"secondary_color":null,"tertiary_color":null}},"hoist":false,"icon":null,"unicode_emoji":null,"position":{},"permissions":"{}","managed":false,"mentionable":false,"flags":0,"tags":{{}},"version":1732780800000}}"#,
            self.position,
            self.permissions,
            c = self.color,
        );
    }
}

impl Emoji {
    pub(crate) fn write(&self, out: &mut String) {
        let _ = write!(out, r#"{{"id":"{}","name":"#, self.id);
        json_str(out, &self.name);
        let _ = write!(
            out,
            r#","roles":[],"require_colons":true,"managed":false,"animated":{},"available":true,"version":1732780800000}}"#,
            self.animated
        );
    }
}

impl Channel {
    /// Appends the channel, with `guild_id` when given (events carry it,
    /// `GUILD_CREATE` does not).
    pub(crate) fn write(&self, out: &mut String, guild_id: Option<u64>) {
        let _ = write!(out, r#"{{"id":"{}","type":{},"name":"#, self.id, self.kind);
        json_str(out, &self.name);
        let _ = write!(
            out,
            r#","position":{},"permission_overwrites":[],"parent_id":"#,
            self.position
        );
        json_opt(out, self.parent_id.map(|id| id.to_string()).as_deref());
        out.push_str(r#","topic":"#);
        json_opt(out, self.topic.as_deref());
        let extra = match self.kind {
            2 | 13 => r#","bitrate":64000,"user_limit":0,"rtc_region":null"#,
            4 => "",
            _ => r#","last_message_id":null,"rate_limit_per_user":0"#,
        };
        let _ = write!(
            out,
            r#","nsfw":false{extra},"flags":0,"version":1732780800000"#
        );
        if let Some(guild_id) = guild_id {
            let _ = write!(out, r#","guild_id":"{guild_id}""#);
        }
        out.push('}');
    }
}

impl Thread {
    pub(crate) fn write(&self, out: &mut String, guild_id: u64) {
        let _ = write!(
            out,
            r#"{{"id":"{}","type":11,"guild_id":"{guild_id}","parent_id":"{}","owner_id":"{}","name":"#,
            self.id, self.parent_id, self.owner_id
        );
        json_str(out, &self.name);
        let _ = write!(
            out,
            r#","last_message_id":null,"rate_limit_per_user":0,"message_count":0,"member_count":1,"total_message_sent":0,"flags":0,"thread_metadata":{{"archived":false,"auto_archive_duration":1440,"archive_timestamp":"{}","locked":false,"create_timestamp":"{}"}}}}"#,
            timestamp_of(self.id),
            timestamp_of(self.id)
        );
    }
}

impl VoiceState {
    /// Appends the voice state; with `guild_id` (and `member`) as events
    /// carry it, without as `GUILD_CREATE` does. `channel` overrides the
    /// channel (`None` writes `null`, for a member leaving).
    pub(crate) fn write(&self, out: &mut String, guild_id: Option<u64>, member: Option<&Member>) {
        self.write_in(out, guild_id, member, Some(self.channel_id));
    }

    pub(crate) fn write_in(
        &self,
        out: &mut String,
        guild_id: Option<u64>,
        member: Option<&Member>,
        channel: Option<u64>,
    ) {
        out.push('{');
        if let Some(guild_id) = guild_id {
            let _ = write!(out, r#""guild_id":"{guild_id}","#);
        }
        let channel = channel.map_or_else(|| "null".to_owned(), |c| format!("\"{c}\""));
        let _ = write!(
            out,
            r#""channel_id":{channel},"user_id":"{}","session_id":"{}","deaf":false,"mute":false,"self_deaf":false,"self_mute":false,"self_video":false,"suppress":false,"request_to_speak_timestamp":null"#,
            self.user_id, self.session_id
        );
        if let Some(member) = member {
            out.push_str(r#","member":"#);
            member.write(out);
        }
        out.push('}');
    }
}

impl Presence {
    pub(crate) fn write(&self, out: &mut String, guild_id: Option<u64>) {
        let _ = write!(
            out,
            r#"{{"user":{{"id":"{}"}},"status":"{}","#,
            self.user_id, self.status
        );
        if let Some(guild_id) = guild_id {
            let _ = write!(out, r#""guild_id":"{guild_id}","#);
        }
        let _ = write!(
            out,
            r#""client_status":{{"desktop":"{}"}},"activities":[{{"type":0,"name":"Rocket League","id":"{:016x}","created_at":1732781512345,"state":"In a match"}}]}}"#,
            self.status, self.user_id
        );
    }
}
