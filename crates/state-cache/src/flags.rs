//! What the cache keeps, and so which dispatches it needs.

/// Which resources a [`Cache`](crate::Cache) keeps: the `cache` keys of the
/// original gateway-proxy's config, plus `threads` and
/// `soundboard_sounds`.
///
/// A resource that is off comes out of `GUILD_CREATE` as an empty list,
/// never as a missing key, because client libraries index those keys
/// without checking. Two things are kept whatever the flags say, because
/// libraries crash without them and they cost one object per guild: the
/// `@everyone` role (with `roles` off, it is the only role) and, with
/// `current_member`, the bot's own member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "one switch per resource, as in the config"
)]
#[non_exhaustive]
pub struct Flags {
    /// Guild channels (not threads). Default on.
    pub channels: bool,
    /// Active threads. Default on.
    pub threads: bool,
    /// Roles; off keeps only `@everyone`. Default on.
    pub roles: bool,
    /// Custom emojis. Default off.
    pub emojis: bool,
    /// Stickers. Default off.
    pub stickers: bool,
    /// Soundboard sounds. Default off.
    pub soundboard_sounds: bool,
    /// Every member Discord sends: in `GUILD_CREATE`, member events, member
    /// chunks and voice states. Default off.
    pub members: bool,
    /// The bot's own member in each guild, even with `members` off.
    /// Default on.
    pub current_member: bool,
    /// Presences of members who are not offline. Default off.
    pub presences: bool,
    /// Members' user objects follow the user fields that `PRESENCE_UPDATE`
    /// carries when a user changes. (Member events carry the whole user
    /// anyway, and `USER_UPDATE` for the bot itself is always applied.)
    /// Default off.
    pub users: bool,
    /// Voice states. Default off.
    pub voice_states: bool,
    /// Stage instances. Default off.
    pub stage_instances: bool,
    /// Scheduled events. Default off.
    pub scheduled_events: bool,
}

impl Default for Flags {
    /// The original gateway-proxy's defaults: channels and roles (and the
    /// bot's own member), plus threads, which the original kept with
    /// channels.
    fn default() -> Self {
        Self {
            channels: true,
            threads: true,
            roles: true,
            current_member: true,
            ..Self::NONE
        }
    }
}

impl Flags {
    /// The flags as bits, in the order of the fields: for a checkpoint to
    /// say which flags it was made with.
    #[must_use]
    pub fn bits(self) -> u32 {
        [
            self.channels,
            self.threads,
            self.roles,
            self.emojis,
            self.stickers,
            self.soundboard_sounds,
            self.members,
            self.current_member,
            self.presences,
            self.users,
            self.voice_states,
            self.stage_instances,
            self.scheduled_events,
        ]
        .iter()
        .enumerate()
        .fold(0, |bits, (i, &on)| bits | (u32::from(on) << i))
    }

    /// Nothing but the guilds themselves (and `@everyone`).
    pub const NONE: Self = Self {
        channels: false,
        threads: false,
        roles: false,
        emojis: false,
        stickers: false,
        soundboard_sounds: false,
        members: false,
        current_member: false,
        presences: false,
        users: false,
        voice_states: false,
        stage_instances: false,
        scheduled_events: false,
    };

    /// Everything.
    pub const ALL: Self = Self {
        channels: true,
        threads: true,
        roles: true,
        emojis: true,
        stickers: true,
        soundboard_sounds: true,
        members: true,
        current_member: true,
        presences: true,
        users: true,
        voice_states: true,
        stage_instances: true,
        scheduled_events: true,
    };

    /// Whether a cache with these flags needs the dispatch named `t`.
    /// Dispatches it does not need are never parsed, so the caller can
    /// skip handing them over.
    #[must_use]
    pub fn wants(&self, t: &str) -> bool {
        Event::from_name(t).is_some_and(|event| self.wants_event(event))
    }

    /// Every dispatch name these flags need, for logging and docs.
    pub fn event_types(&self) -> impl Iterator<Item = &'static str> + '_ {
        Event::ALL
            .iter()
            .filter(|e| self.wants_event(**e))
            .map(|e| e.name())
    }

    pub(crate) fn wants_event(self, event: Event) -> bool {
        use Event as E;
        match event {
            // The guild list, member_count, the bot's user and @everyone:
            // kept whatever the flags.
            E::Ready
            | E::GuildCreate
            | E::GuildUpdate
            | E::GuildDelete
            | E::MemberAdd
            | E::MemberRemove
            | E::UserUpdate
            | E::RoleUpdate => true,
            E::MemberUpdate => self.members || self.current_member,
            E::MembersChunk => self.members || self.current_member || self.presences,
            E::RoleCreate => self.roles,
            E::RoleDelete => self.roles || self.members || self.current_member,
            E::ChannelCreate | E::ChannelUpdate | E::ChannelDelete | E::ChannelPinsUpdate => {
                self.channels || self.threads
            }
            E::ThreadCreate
            | E::ThreadUpdate
            | E::ThreadDelete
            | E::ThreadListSync
            | E::ThreadMemberUpdate
            | E::ThreadMembersUpdate => self.threads,
            E::EmojisUpdate => self.emojis,
            E::StickersUpdate => self.stickers,
            E::SoundCreate | E::SoundUpdate | E::SoundDelete | E::SoundsUpdate | E::Sounds => {
                self.soundboard_sounds
            }
            E::PresenceUpdate => self.presences || self.users,
            E::VoiceStateUpdate => self.voice_states || self.members,
            E::StageCreate | E::StageUpdate | E::StageDelete => self.stage_instances,
            E::ScheduledEventCreate | E::ScheduledEventUpdate | E::ScheduledEventDelete => {
                self.scheduled_events
            }
        }
    }
}

macro_rules! events {
    ($($variant:ident = $name:literal,)*) => {
        /// A dispatch that changes what a `GUILD_CREATE` or READY says.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum Event { $($variant,)* }

        impl Event {
            pub(crate) const ALL: &'static [Self] = &[$(Self::$variant,)*];

            pub(crate) fn from_name(t: &str) -> Option<Self> {
                match t {
                    $($name => Some(Self::$variant),)*
                    _ => None,
                }
            }

            pub(crate) fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }
        }
    };
}

events! {
    Ready = "READY",
    GuildCreate = "GUILD_CREATE",
    GuildUpdate = "GUILD_UPDATE",
    GuildDelete = "GUILD_DELETE",
    UserUpdate = "USER_UPDATE",
    MemberAdd = "GUILD_MEMBER_ADD",
    MemberUpdate = "GUILD_MEMBER_UPDATE",
    MemberRemove = "GUILD_MEMBER_REMOVE",
    MembersChunk = "GUILD_MEMBERS_CHUNK",
    RoleCreate = "GUILD_ROLE_CREATE",
    RoleUpdate = "GUILD_ROLE_UPDATE",
    RoleDelete = "GUILD_ROLE_DELETE",
    ChannelCreate = "CHANNEL_CREATE",
    ChannelUpdate = "CHANNEL_UPDATE",
    ChannelDelete = "CHANNEL_DELETE",
    ChannelPinsUpdate = "CHANNEL_PINS_UPDATE",
    ThreadCreate = "THREAD_CREATE",
    ThreadUpdate = "THREAD_UPDATE",
    ThreadDelete = "THREAD_DELETE",
    ThreadListSync = "THREAD_LIST_SYNC",
    ThreadMemberUpdate = "THREAD_MEMBER_UPDATE",
    ThreadMembersUpdate = "THREAD_MEMBERS_UPDATE",
    EmojisUpdate = "GUILD_EMOJIS_UPDATE",
    StickersUpdate = "GUILD_STICKERS_UPDATE",
    SoundCreate = "GUILD_SOUNDBOARD_SOUND_CREATE",
    SoundUpdate = "GUILD_SOUNDBOARD_SOUND_UPDATE",
    SoundDelete = "GUILD_SOUNDBOARD_SOUND_DELETE",
    SoundsUpdate = "GUILD_SOUNDBOARD_SOUNDS_UPDATE",
    Sounds = "SOUNDBOARD_SOUNDS",
    PresenceUpdate = "PRESENCE_UPDATE",
    VoiceStateUpdate = "VOICE_STATE_UPDATE",
    StageCreate = "STAGE_INSTANCE_CREATE",
    StageUpdate = "STAGE_INSTANCE_UPDATE",
    StageDelete = "STAGE_INSTANCE_DELETE",
    ScheduledEventCreate = "GUILD_SCHEDULED_EVENT_CREATE",
    ScheduledEventUpdate = "GUILD_SCHEDULED_EVENT_UPDATE",
    ScheduledEventDelete = "GUILD_SCHEDULED_EVENT_DELETE",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for event in Event::ALL {
            assert_eq!(Event::from_name(event.name()), Some(*event));
        }
        assert_eq!(Event::from_name("MESSAGE_CREATE"), None);
    }

    #[test]
    fn defaults_need_few_events_and_never_messages() {
        let flags = Flags::default();
        assert!(flags.wants("GUILD_CREATE"));
        assert!(flags.wants("CHANNEL_UPDATE"));
        assert!(!flags.wants("PRESENCE_UPDATE"));
        assert!(!flags.wants("MESSAGE_CREATE"));
        assert!(!flags.wants("TYPING_START"));
        assert!(Flags::ALL.wants("PRESENCE_UPDATE"));
        assert!(!Flags::ALL.wants("MESSAGE_CREATE"));
        assert_eq!(Flags::ALL.event_types().count(), Event::ALL.len());
        assert!(Flags::NONE.event_types().count() < Flags::default().event_types().count());
    }
}
