//! The cache of one shard: dispatches in, READY and `GUILD_CREATE` out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::error::Error;
use crate::flags::{Event, Flags};
use crate::guild::{Counts, Guild, ListKind};
use crate::packed::{self, Keys, PACKED_NULL, key};
use crate::snapshot::{self, Snapshot};

/// Above this, the buffer a big dispatch was packed into is given back
/// rather than kept for the next one.
const SCRATCH_KEEP: usize = 1 << 20;

/// The guild state of one shard, kept from its dispatches.
///
/// Feed it every dispatch [`Flags::wants`] (others are ignored anyway),
/// in order, with [`apply`](Self::apply); ask it for a client's READY with
/// [`write_ready`](Self::write_ready) and for each guild's `GUILD_CREATE`
/// or `GUILD_DELETE` with [`write_guild`](Self::write_guild), or take a
/// [`snapshot`](Self::snapshot) and write from that without holding the
/// cache.
#[derive(Debug)]
pub struct Cache {
    pub(crate) flags: Flags,
    /// Shared with snapshots; copied when a key is new to it and a
    /// snapshot still holds it.
    pub(crate) keys: Arc<Keys>,
    /// READY's `d`, packed, without `guilds`.
    pub(crate) ready: Option<Arc<[u8]>>,
    /// The bot's user id, from READY.
    pub(crate) bot_id: Option<u64>,
    /// Every guild of the shard by id; `None` while it is unavailable.
    /// Shared with snapshots; a guild a snapshot holds is copied when it
    /// is changed.
    pub(crate) guilds: BTreeMap<u64, Option<Arc<Guild>>>,
    /// What the available guilds hold, summed; kept up to date with every
    /// change so that [`stats`](Self::stats) walks nothing.
    pub(crate) totals: Counts,
    /// How many of `guilds` are unavailable.
    pub(crate) unavailable: usize,
    /// Guilds READY named that have had neither `GUILD_CREATE` nor
    /// `GUILD_DELETE` since.
    pub(crate) pending: BTreeSet<u64>,
    /// The dispatch being applied, packed.
    scratch: Vec<u8>,
}

/// The session a READY is written for: what the proxy gives each client.
#[derive(Clone, Copy, Debug)]
pub struct Session<'a> {
    /// READY's `session_id`.
    pub session_id: &'a str,
    /// READY's `resume_gateway_url`.
    pub resume_gateway_url: &'a str,
}

/// How much a cache holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Guilds, available or not.
    pub guilds: usize,
    /// Guilds that are unavailable.
    pub unavailable_guilds: usize,
    /// Cached members.
    pub members: usize,
    /// Cached presences.
    pub presences: usize,
    /// Cached channels (threads not included).
    pub channels: usize,
    /// Cached threads.
    pub threads: usize,
    /// Cached roles.
    pub roles: usize,
    /// Cached emojis.
    pub emojis: usize,
    /// Cached stickers.
    pub stickers: usize,
    /// Cached voice states.
    pub voice_states: usize,
    /// Cached stage instances.
    pub stage_instances: usize,
    /// Cached scheduled events.
    pub scheduled_events: usize,
    /// Cached soundboard sounds.
    pub soundboard_sounds: usize,
    /// Heap bytes held, counted from the cache's own parts (an estimate
    /// that leaves out the allocator's overhead): the key table (twice
    /// each key's written length plus 48 bytes a key), READY's packed
    /// bytes, 32 bytes a guild for the guild map, and for each available
    /// guild its allocation (the guild and its `Arc`'s two counters), its
    /// packed fields, and for each list and map its slots (capacity times
    /// slot size, plus a control byte a slot for maps) and the lengths of
    /// its packed items.
    ///
    /// Guilds that a [`Snapshot`] still holds in an older version are not
    /// counted twice: what is counted is what the cache holds now.
    pub bytes: usize,
}

impl Cache {
    /// An empty cache that keeps what `flags` says.
    #[must_use]
    pub fn new(flags: Flags) -> Self {
        Self {
            flags,
            keys: Arc::new(Keys::default()),
            ready: None,
            bot_id: None,
            guilds: BTreeMap::new(),
            totals: Counts::default(),
            unavailable: 0,
            pending: BTreeSet::new(),
            scratch: Vec::new(),
        }
    }

    /// What this cache keeps.
    #[must_use]
    pub fn flags(&self) -> Flags {
        self.flags
    }

    /// Whether the cache needs the dispatch named `t`; see [`Flags::wants`].
    /// Voice state updates are always wanted once READY named the bot: its
    /// own voice state is kept whatever the flags (a client needs it to
    /// reach its voice server), and [`apply`](Self::apply) lets the others
    /// go with a substring check when the flags do not keep them.
    #[must_use]
    pub fn wants(&self, t: &str) -> bool {
        self.flags.wants(t) || (t == "VOICE_STATE_UPDATE" && self.bot_id.is_some())
    }

    /// Whether READY or a `GUILD_CREATE` named guild `id` (available or
    /// not).
    #[must_use]
    pub fn has_guild(&self, id: u64) -> bool {
        self.guilds.contains_key(&id)
    }

    /// The voice channel the bot is in, in guild `guild`, as its own voice
    /// state (always kept) says.
    #[must_use]
    pub fn bot_voice_channel(&self, guild: u64) -> Option<u64> {
        let bot = self.bot_id?;
        let guild = self.guilds.get(&guild)?.as_ref()?;
        let state = guild.list(ListKind::VoiceStates).get(bot)?;
        packed::get(state, key::CHANNEL_ID).and_then(packed::as_id)
    }

    /// Whether `d`, a voice state update's body as Discord sends it
    /// (compact JSON), is the bot's own.
    fn own_voice_state(&self, d: &[u8]) -> bool {
        let Some(bot) = self.bot_id else {
            return false;
        };
        let needle = format!(r#""user_id":"{bot}""#);
        memchr::memmem::find(d, needle.as_bytes()).is_some()
    }

    /// Applies the dispatch named `t` whose `d` is the JSON text `d`.
    ///
    /// Dispatches the flags do not need, and dispatches about guilds the
    /// cache does not hold, change nothing. A READY starts over: it is a
    /// new upstream session, and its guilds come again.
    ///
    /// # Errors
    ///
    /// When `d` is not JSON, or not the shape Discord sends for `t` (say,
    /// without a `guild_id`); the cache is then as it was.
    pub fn apply(&mut self, t: &str, d: &[u8]) -> Result<(), Error> {
        let Some(event) = Event::from_name(t) else {
            return Ok(());
        };
        let wanted = self.flags.wants_event(event)
            || (event == Event::VoiceStateUpdate && self.own_voice_state(d));
        if !wanted {
            return Ok(());
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let result = match packed::pack(d, &mut self.keys, &mut scratch) {
            Ok(()) if packed::is_object(&scratch) => self.apply_packed(event, &scratch),
            Ok(()) => Err(Error::shape(event.name(), "`d` to be an object")),
            Err(e) => Err(Error::json(event.name(), e.0)),
        };
        if scratch.capacity() <= SCRATCH_KEEP {
            self.scratch = scratch;
        }
        result
    }

    fn apply_packed(&mut self, event: Event, d: &[u8]) -> Result<(), Error> {
        use Event as E;
        let name = event.name();
        match event {
            E::Ready => return self.ready(d),
            E::UserUpdate => {
                self.user_update(d);
                return Ok(());
            }
            E::GuildCreate => return self.guild_create(d),
            E::GuildDelete => {
                let id = id_of(d, key::ID, name)?;
                self.pending.remove(&id);
                if packed::get(d, key::UNAVAILABLE).and_then(packed::as_bool) == Some(true) {
                    self.put_guild(id, None);
                } else {
                    self.remove_guild(id);
                }
                return Ok(());
            }
            _ => {}
        }
        let guild_key = if event == E::GuildUpdate {
            key::ID
        } else {
            key::GUILD_ID
        };
        // A DM's pins: about no guild.
        if event == E::ChannelPinsUpdate && packed::get(d, guild_key).is_none() {
            return Ok(());
        }
        let guild_id = id_of(d, guild_key, name)?;
        let (flags, bot_id) = (self.flags, self.bot_id);
        let Some(Some(guild)) = self.guilds.get_mut(&guild_id) else {
            return Ok(());
        };
        let before = guild.counts();
        // Copies the guild if a snapshot holds it: the snapshot keeps the
        // version it took.
        let guild = Arc::make_mut(guild);
        let result = Edit {
            guild: &mut *guild,
            flags,
            bot_id,
            guild_id,
            name,
        }
        .apply(event, d);
        self.totals.sub(&before);
        self.totals.add(&guild.counts());
        result
    }

    /// Puts guild `id` (`None`: unavailable) in place of the one there,
    /// keeping the totals.
    fn put_guild(&mut self, id: u64, guild: Option<Arc<Guild>>) {
        self.count(guild.as_deref(), true);
        if let Some(old) = self.guilds.insert(id, guild) {
            self.count(old.as_deref(), false);
        }
    }

    /// Removes guild `id`, keeping the totals.
    fn remove_guild(&mut self, id: u64) {
        if let Some(old) = self.guilds.remove(&id) {
            self.count(old.as_deref(), false);
        }
    }

    /// Adds `guild` (`None`: an unavailable one) to the totals, or takes
    /// it away.
    fn count(&mut self, guild: Option<&Guild>, add: bool) {
        match (guild, add) {
            (None, true) => self.unavailable = self.unavailable.wrapping_add(1),
            (None, false) => self.unavailable = self.unavailable.wrapping_sub(1),
            (Some(guild), true) => self.totals.add(&guild.counts()),
            (Some(guild), false) => self.totals.sub(&guild.counts()),
        }
    }

    /// A new upstream session: its READY replaces everything.
    fn ready(&mut self, d: &[u8]) -> Result<(), Error> {
        let user = packed::get(d, key::USER).ok_or_else(|| Error::shape("READY", "`user`"))?;
        let bot_id = id_of(user, key::ID, "READY")?;
        let mut guilds = BTreeMap::new();
        for guild in list_in(d, key::GUILDS) {
            guilds.insert(id_of(guild, key::ID, "READY")?, None);
        }
        let mut ready = Vec::new();
        packed::copy_without(d, &[key::GUILDS], &mut ready);
        self.ready = Some(ready.into());
        self.bot_id = Some(bot_id);
        self.pending = guilds.keys().copied().collect();
        self.unavailable = guilds.len();
        self.totals = Counts::default();
        self.guilds = guilds;
        Ok(())
    }

    fn user_update(&mut self, user: &[u8]) {
        let Some(ready) = &self.ready else { return };
        let mut merged = Vec::new();
        packed::merge(user, packed::get(ready, key::USER), &[], &mut merged);
        let mut updated = Vec::new();
        packed::with_field(ready, key::USER, &merged, &mut updated);
        self.ready = Some(updated.into());
    }

    fn guild_create(&mut self, d: &[u8]) -> Result<(), Error> {
        let id = id_of(d, key::ID, "GUILD_CREATE")?;
        self.pending.remove(&id);
        if packed::get(d, key::UNAVAILABLE).and_then(packed::as_bool) == Some(true) {
            self.put_guild(id, None);
            return Ok(());
        }
        let mut guild = Guild::default();
        let mut head = Vec::with_capacity(1024);
        packed::begin_object(&mut head);
        let mut edit = Edit {
            guild: &mut guild,
            flags: self.flags,
            bot_id: self.bot_id,
            guild_id: id,
            name: "GUILD_CREATE",
        };
        for (k, v) in packed::fields(d) {
            if let Some(kind) = ListKind::of_key(k) {
                edit.replace(kind, Some(v));
            } else if k.is(key::MEMBERS) {
                for member in packed::items(v) {
                    if let Ok(user_id) = member_id(member, "GUILD_CREATE")
                        && edit.keeps_member(user_id)
                    {
                        edit.put_member(user_id, member, false);
                    }
                }
            } else if k.is(key::PRESENCES) {
                if edit.flags.presences {
                    for presence in packed::items(v) {
                        edit.put_presence(presence);
                    }
                }
            } else if k.is(key::MEMBER_COUNT) {
                edit.guild.member_count = packed::as_u64(v);
            } else if !k.is(key::UNAVAILABLE) {
                packed::put_field(&mut head, k, v);
            }
        }
        packed::end_object(&mut head);
        guild.head = head.into_boxed_slice();
        self.put_guild(id, Some(Arc::new(guild)));
        Ok(())
    }

    /// Appends the READY payload for a client: the upstream READY with
    /// this session's `session_id` and `resume_gateway_url`, and `guilds`
    /// set to every guild of the shard as an unavailable stub, as Discord
    /// sends it. Keys in the order `t, s, op, d`, compact.
    ///
    /// # Errors
    ///
    /// When no READY has been applied yet.
    pub fn write_ready(
        &self,
        seq: u64,
        session: Session<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        snapshot::write_ready(
            self.ready.as_deref(),
            &self.keys,
            self.guilds.keys().copied(),
            seq,
            session,
            out,
        )
    }

    /// How many guilds the last READY named that have had neither
    /// `GUILD_CREATE` nor `GUILD_DELETE` since: while it is above zero, the
    /// shard is still loading, and a client served now would be told those
    /// guilds are unavailable.
    #[must_use]
    pub fn pending_guilds(&self) -> usize {
        self.pending.len()
    }

    /// The ids of the shard's guilds, available or not, in id order.
    #[must_use = "an iterator does nothing unless consumed"]
    pub fn guild_ids(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        self.guilds.keys().copied()
    }

    /// Appends the payload that tells a client about guild `id`:
    /// `GUILD_CREATE` with everything the flags keep and
    /// `"unavailable":false`, or `GUILD_DELETE` with `"unavailable":true`
    /// while it is unavailable. Keys in the order `t, s, op, d`, compact.
    /// Returns `false`, appending nothing, for a guild the cache does not
    /// hold.
    pub fn write_guild(&self, id: u64, seq: u64, out: &mut Vec<u8>) -> bool {
        let Some(guild) = self.guilds.get(&id) else {
            return false;
        };
        snapshot::write_guild(id, guild.as_deref(), &self.keys, seq, out);
        true
    }

    /// What the cache holds now, to write READY and the guilds from
    /// without holding the cache: see [`Snapshot`] for what it costs.
    ///
    /// Nothing of a guild is copied: this clones an `Arc` for the key
    /// table, one for READY and one for each guild, into one new vector of
    /// the guilds (about 16 bytes a guild).
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(
            Arc::clone(&self.keys),
            self.ready.clone(),
            self.guilds
                .iter()
                .map(|(id, guild)| (*id, guild.clone()))
                .collect(),
        )
    }

    /// How much the cache holds. Constant time: the totals are kept up to
    /// date as dispatches change the cache.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.stats_from(self.keys.heap_bytes(), self.unavailable, self.totals)
    }

    /// [`stats`](Self::stats) counted afresh, walking every guild and every
    /// item: the reference the kept totals are tested against. Not part of
    /// the API.
    #[doc(hidden)]
    #[must_use]
    pub fn walked_stats(&self) -> Stats {
        let mut totals = Counts::default();
        let mut unavailable = 0;
        for guild in self.guilds.values() {
            match guild {
                Some(guild) => totals.add(&guild.walked_counts()),
                None => unavailable += 1,
            }
        }
        self.stats_from(self.keys.walked_heap_bytes(), unavailable, totals)
    }

    fn stats_from(&self, key_bytes: usize, unavailable: usize, totals: Counts) -> Stats {
        Stats {
            guilds: self.guilds.len(),
            unavailable_guilds: unavailable,
            members: totals.members,
            presences: totals.presences,
            channels: totals.list(ListKind::Channels),
            threads: totals.list(ListKind::Threads),
            roles: totals.list(ListKind::Roles),
            emojis: totals.list(ListKind::Emojis),
            stickers: totals.list(ListKind::Stickers),
            voice_states: totals.list(ListKind::VoiceStates),
            stage_instances: totals.list(ListKind::StageInstances),
            scheduled_events: totals.list(ListKind::ScheduledEvents),
            soundboard_sounds: totals.list(ListKind::SoundboardSounds),
            bytes: key_bytes
                + self.ready.as_ref().map_or(0, |r| r.len())
                + self.guilds.len() * (size_of::<(u64, Option<Arc<Guild>>)>() + 16)
                + totals.bytes,
        }
    }
}

/// Changes to one guild.
struct Edit<'a> {
    guild: &'a mut Guild,
    flags: Flags,
    bot_id: Option<u64>,
    guild_id: u64,
    name: &'static str,
}

impl Edit<'_> {
    fn apply(&mut self, event: Event, d: &[u8]) -> Result<(), Error> {
        use Event as E;
        match event {
            E::Ready | E::UserUpdate | E::GuildCreate | E::GuildDelete => Ok(()),
            E::GuildUpdate => {
                self.guild_update(d);
                Ok(())
            }
            E::MemberAdd
            | E::MemberUpdate
            | E::MemberRemove
            | E::MembersChunk
            | E::PresenceUpdate
            | E::VoiceStateUpdate => self.member_event(event, d),
            E::RoleCreate | E::RoleUpdate | E::RoleDelete => self.role_event(event, d),
            E::ChannelCreate
            | E::ChannelUpdate
            | E::ChannelDelete
            | E::ChannelPinsUpdate
            | E::ThreadCreate
            | E::ThreadUpdate
            | E::ThreadDelete
            | E::ThreadListSync
            | E::ThreadMemberUpdate
            | E::ThreadMembersUpdate => self.channel_event(event, d),
            E::EmojisUpdate
            | E::StickersUpdate
            | E::SoundCreate
            | E::SoundUpdate
            | E::SoundDelete
            | E::SoundsUpdate
            | E::Sounds
            | E::StageCreate
            | E::StageUpdate
            | E::StageDelete
            | E::ScheduledEventCreate
            | E::ScheduledEventUpdate
            | E::ScheduledEventDelete => self.item_event(event, d),
        }
    }

    /// Whether the flags keep the member `user_id`.
    fn keeps_member(&self, user_id: u64) -> bool {
        self.flags.members || (self.flags.current_member && Some(user_id) == self.bot_id)
    }

    fn member_event(&mut self, event: Event, d: &[u8]) -> Result<(), Error> {
        use Event as E;
        let name = self.name;
        match event {
            E::MemberAdd | E::MemberUpdate => {
                let user_id = member_id(d, name)?;
                if event == E::MemberAdd {
                    self.guild.member_count = self.guild.member_count.map(|n| n + 1);
                }
                if self.keeps_member(user_id) {
                    self.put_member(user_id, d, event == E::MemberUpdate);
                }
            }
            E::MemberRemove => {
                let user = packed::get(d, key::USER).ok_or_else(|| Error::shape(name, "`user`"))?;
                let user_id = id_of(user, key::ID, name)?;
                let guild = &mut *self.guild;
                guild.member_count = guild.member_count.map(|n| n.saturating_sub(1));
                guild.members.remove(user_id);
                guild.presences.remove(user_id);
                guild.list_mut(ListKind::VoiceStates).remove(user_id);
            }
            E::MembersChunk => {
                for member in list_in(d, key::MEMBERS) {
                    if let Ok(user_id) = member_id(member, name)
                        && self.keeps_member(user_id)
                    {
                        self.put_member(user_id, member, false);
                    }
                }
                if self.flags.presences {
                    for presence in list_in(d, key::PRESENCES) {
                        self.put_presence(presence);
                    }
                }
            }
            E::PresenceUpdate => self.presence_update(d),
            _ => self.voice_state_update(d)?,
        }
        Ok(())
    }

    fn role_event(&mut self, event: Event, d: &[u8]) -> Result<(), Error> {
        let name = self.name;
        if event == Event::RoleDelete {
            self.role_delete(id_of(d, key::ROLE_ID, name)?);
            return Ok(());
        }
        let role = packed::get(d, key::ROLE).ok_or_else(|| Error::shape(name, "`role`"))?;
        let id = id_of(role, key::ID, name)?;
        // With roles off, @everyone (the role with the guild's id) stays.
        if self.flags.roles || id == self.guild_id {
            self.upsert(ListKind::Roles, id, role, &[]);
        }
        Ok(())
    }

    fn channel_event(&mut self, event: Event, d: &[u8]) -> Result<(), Error> {
        use Event as E;
        if event == E::ThreadListSync {
            self.thread_list_sync(d);
            return Ok(());
        }
        let name = self.name;
        let id_key = if event == E::ChannelPinsUpdate {
            key::CHANNEL_ID
        } else {
            key::ID
        };
        let id = id_of(d, id_key, name)?;
        match event {
            E::ChannelCreate | E::ChannelUpdate => {
                if self.flags.channels {
                    self.upsert(ListKind::Channels, id, d, &[key::GUILD_ID]);
                }
            }
            E::ChannelDelete => {
                self.guild.list_mut(ListKind::Channels).remove(id);
                self.guild.list_mut(ListKind::Threads).retain(|thread| {
                    packed::get(thread, key::PARENT_ID).and_then(packed::as_id) != Some(id)
                });
            }
            E::ChannelPinsUpdate => {
                let value = packed::get(d, key::LAST_PIN_TIMESTAMP).unwrap_or(PACKED_NULL);
                for kind in [ListKind::Channels, ListKind::Threads] {
                    self.set_field(kind, id, key::LAST_PIN_TIMESTAMP, value);
                }
            }
            E::ThreadCreate | E::ThreadUpdate => {
                // `threads` lists active threads only.
                let archived = packed::get(d, key::THREAD_METADATA)
                    .and_then(|m| packed::get(m, key::ARCHIVED))
                    .and_then(packed::as_bool);
                if archived == Some(true) {
                    self.guild.list_mut(ListKind::Threads).remove(id);
                } else {
                    self.upsert(ListKind::Threads, id, d, &[key::NEWLY_CREATED]);
                }
            }
            E::ThreadDelete => self.guild.list_mut(ListKind::Threads).remove(id),
            E::ThreadMemberUpdate => {
                let mut member = Vec::new();
                packed::copy_without(d, &[key::GUILD_ID], &mut member);
                self.set_field(ListKind::Threads, id, key::MEMBER, &member);
            }
            _ => {
                if let Some(count) = packed::get(d, key::MEMBER_COUNT) {
                    self.set_field(ListKind::Threads, id, key::MEMBER_COUNT, count);
                }
            }
        }
        Ok(())
    }

    /// Emojis, stickers, sounds, stage instances and scheduled events.
    fn item_event(&mut self, event: Event, d: &[u8]) -> Result<(), Error> {
        use Event as E;
        let (kind, array_key) = match event {
            E::EmojisUpdate => (ListKind::Emojis, Some(key::EMOJIS)),
            E::StickersUpdate => (ListKind::Stickers, Some(key::STICKERS)),
            E::SoundsUpdate | E::Sounds => {
                (ListKind::SoundboardSounds, Some(key::SOUNDBOARD_SOUNDS))
            }
            E::SoundCreate | E::SoundUpdate | E::SoundDelete => (ListKind::SoundboardSounds, None),
            E::StageCreate | E::StageUpdate | E::StageDelete => (ListKind::StageInstances, None),
            _ => (ListKind::ScheduledEvents, None),
        };
        if let Some(array_key) = array_key {
            self.replace(kind, packed::get(d, array_key));
            return Ok(());
        }
        let id = id_of(d, kind.id_key(), self.name)?;
        if matches!(
            event,
            E::SoundDelete | E::StageDelete | E::ScheduledEventDelete
        ) {
            self.guild.list_mut(kind).remove(id);
        } else {
            self.upsert(kind, id, d, &[]);
        }
        Ok(())
    }

    /// Puts `item` (without the `skip` keys) under `id` in a list, over
    /// the fields of the one there.
    fn upsert(&mut self, kind: ListKind, id: u64, item: &[u8], skip: &[key::Key]) {
        let list = self.guild.list_mut(kind);
        let mut value = Vec::with_capacity(item.len());
        packed::merge(item, list.get(id), skip, &mut value);
        list.put(id, value.into_boxed_slice());
    }

    /// Sets one field of the item `id` of a list, if it is there.
    fn set_field(&mut self, kind: ListKind, id: u64, k: key::Key, value: &[u8]) {
        let list = self.guild.list_mut(kind);
        if let Some(item) = list.get(id) {
            let mut updated = Vec::with_capacity(item.len() + value.len());
            packed::with_field(item, k, value, &mut updated);
            list.put(id, updated.into_boxed_slice());
        }
    }

    /// Replaces a whole list with the items of `array`, as the flags allow.
    fn replace(&mut self, kind: ListKind, array: Option<&[u8]>) {
        let (kept, guild_id) = (kind.kept(self.flags), self.guild_id);
        self.guild.list_mut(kind).clear();
        for item in array.map(packed::items).into_iter().flatten() {
            let Some(id) = packed::get(item, kind.id_key()).and_then(packed::as_id) else {
                continue;
            };
            // With roles off, @everyone (the role with the guild's id) stays;
            // with voice states off, the bot's own.
            let own_voice = kind == ListKind::VoiceStates && Some(id) == self.bot_id;
            if kept || (kind == ListKind::Roles && id == guild_id) || own_voice {
                let skip: &[key::Key] = match kind {
                    ListKind::VoiceStates => &[key::GUILD_ID, key::MEMBER],
                    _ => &[],
                };
                self.upsert(kind, id, item, skip);
            }
        }
    }

    /// Puts a member (a member object, perhaps with `guild_id`), over the
    /// fields of the one there when `merge`.
    fn put_member(&mut self, user_id: u64, member: &[u8], merge: bool) {
        let old = if merge {
            self.guild.members.get(user_id)
        } else {
            None
        };
        // Libraries need `deaf` and `mute`, which an update may lack: a
        // member new to the cache takes `false` for them.
        let mut value = Vec::with_capacity(member.len());
        let under = old.unwrap_or(packed::DEAF_MUTE_FALSE);
        packed::merge(member, Some(under), &[key::GUILD_ID], &mut value);
        self.guild.members.insert(user_id, value.into_boxed_slice());
    }

    /// Puts a presence as `GUILD_CREATE` carries it: no `guild_id`, and
    /// `user` reduced to its id. An offline presence is removed.
    fn put_presence(&mut self, presence: &[u8]) {
        let Some(user) = packed::get(presence, key::USER) else {
            return;
        };
        let Some(user_id) = packed::get(user, key::ID).and_then(packed::as_id) else {
            return;
        };
        let offline =
            packed::get(presence, key::STATUS).and_then(packed::as_text) == Some(b"offline");
        if offline {
            self.guild.presences.remove(user_id);
            return;
        }
        let mut user_ref = Vec::new();
        packed::id_only(user, &mut user_ref);
        let mut without = Vec::with_capacity(presence.len());
        packed::copy_without(presence, &[key::GUILD_ID], &mut without);
        let mut value = Vec::with_capacity(without.len());
        packed::with_field(&without, key::USER, &user_ref, &mut value);
        self.guild
            .presences
            .insert(user_id, value.into_boxed_slice());
    }

    fn presence_update(&mut self, d: &[u8]) {
        let Some(user) = packed::get(d, key::USER) else {
            return;
        };
        let Some(user_id) = packed::get(user, key::ID).and_then(packed::as_id) else {
            return;
        };
        if self.flags.users
            && self.keeps_member(user_id)
            && packed::fields(user).count() > 1
            && let Some(member) = self.guild.members.get(user_id)
        {
            let mut merged_user = Vec::new();
            packed::merge(user, packed::get(member, key::USER), &[], &mut merged_user);
            let mut value = Vec::with_capacity(member.len() + merged_user.len());
            packed::with_field(member, key::USER, &merged_user, &mut value);
            self.guild.members.insert(user_id, value.into_boxed_slice());
        }
        if self.flags.presences {
            self.put_presence(d);
        }
    }

    fn voice_state_update(&mut self, d: &[u8]) -> Result<(), Error> {
        let user_id = id_of(d, key::USER_ID, self.name)?;
        if let Some(member) = packed::get(d, key::MEMBER)
            && self.keeps_member(user_id)
        {
            self.put_member(user_id, member, true);
        }
        // The bot's own voice state is kept whatever the flags.
        if self.flags.voice_states || Some(user_id) == self.bot_id {
            let in_channel = packed::get(d, key::CHANNEL_ID)
                .and_then(packed::as_id)
                .is_some();
            if in_channel {
                // The whole voice state, not merged: `self_stream` is left
                // out when it is false.
                let mut value = Vec::with_capacity(d.len());
                packed::copy_without(d, &[key::GUILD_ID, key::MEMBER], &mut value);
                self.guild
                    .list_mut(ListKind::VoiceStates)
                    .put(user_id, value.into_boxed_slice());
            } else {
                self.guild.list_mut(ListKind::VoiceStates).remove(user_id);
            }
        }
        Ok(())
    }

    fn guild_update(&mut self, d: &[u8]) {
        let mut head = Vec::with_capacity(self.guild.head.len());
        packed::begin_object(&mut head);
        for (k, v) in packed::fields(d) {
            match ListKind::of_key(k) {
                Some(kind @ (ListKind::Roles | ListKind::Emojis | ListKind::Stickers)) => {
                    self.replace(kind, Some(v));
                }
                Some(_) => {}
                None if k.is(key::MEMBERS) || k.is(key::PRESENCES) || k.is(key::UNAVAILABLE) => {}
                None if k.is(key::MEMBER_COUNT) => self.guild.member_count = packed::as_u64(v),
                None => packed::put_field(&mut head, k, v),
            }
        }
        for (k, v) in packed::fields(&self.guild.head) {
            if !packed::fields(d).any(|(n, _)| n == k) {
                packed::put_field(&mut head, k, v);
            }
        }
        packed::end_object(&mut head);
        self.guild.head = head.into_boxed_slice();
    }

    fn role_delete(&mut self, role_id: u64) {
        self.guild.list_mut(ListKind::Roles).remove(role_id);
        let mut changed = Vec::new();
        for (user_id, member) in self.guild.members.iter() {
            let mut value = Vec::new();
            if packed::without_id_in(member, key::ROLES, role_id, &mut value) {
                changed.push((user_id, value.into_boxed_slice()));
            }
        }
        self.guild.members.extend(changed);
    }

    fn thread_list_sync(&mut self, d: &[u8]) {
        let channels: Option<Vec<u64>> = packed::get(d, key::CHANNEL_IDS)
            .map(|ids| packed::items(ids).filter_map(packed::as_id).collect());
        self.guild.list_mut(ListKind::Threads).retain(|thread| {
            let parent = packed::get(thread, key::PARENT_ID).and_then(packed::as_id);
            channels
                .as_ref()
                .is_some_and(|ids| parent.is_none_or(|p| !ids.contains(&p)))
        });
        for thread in list_in(d, key::THREADS) {
            if let Some(id) = packed::get(thread, key::ID).and_then(packed::as_id) {
                self.upsert(ListKind::Threads, id, thread, &[]);
            }
        }
        for member in list_in(d, key::MEMBERS) {
            if let Some(id) = packed::get(member, key::ID).and_then(packed::as_id) {
                self.set_field(ListKind::Threads, id, key::MEMBER, member);
            }
        }
    }
}

/// The snowflake under `k` in `obj`, or a shape error.
fn id_of(obj: &[u8], k: key::Key, event: &'static str) -> Result<u64, Error> {
    packed::get(obj, k)
        .and_then(packed::as_id)
        .ok_or_else(|| Error::shape(event, expected_id(k)))
}

fn expected_id(k: key::Key) -> &'static str {
    match k {
        key::GUILD_ID => "`guild_id` as a snowflake",
        key::USER_ID => "`user_id` as a snowflake",
        key::ROLE_ID => "`role_id` as a snowflake",
        key::SOUND_ID => "`sound_id` as a snowflake",
        key::CHANNEL_ID => "`channel_id` as a snowflake",
        _ => "`id` as a snowflake",
    }
}

/// A member object's user id.
fn member_id(member: &[u8], event: &'static str) -> Result<u64, Error> {
    let user = packed::get(member, key::USER).ok_or_else(|| Error::shape(event, "`user`"))?;
    id_of(user, key::ID, event)
}

/// The items of the array under `k`, none if there is none.
fn list_in(obj: &[u8], k: key::Key) -> packed::Items<'_> {
    packed::items(packed::get(obj, k).unwrap_or(&[]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const READY: &[u8] = br#"{"user":{"id":"10"},"guilds":[{"id":"20","unavailable":true},{"id":"30","unavailable":true}],"session_id":"s"}"#;

    fn guild(id: u64) -> String {
        format!(
            r#"{{"id":"{id}","name":"g","roles":[{{"id":"{id}","name":"@everyone"}}],"channels":[{{"id":"{}","type":0,"name":"general"}}]}}"#,
            id + 1
        )
    }

    fn loaded() -> Cache {
        let mut cache = Cache::new(Flags::ALL);
        cache.apply("READY", READY).unwrap();
        cache.apply("GUILD_CREATE", guild(20).as_bytes()).unwrap();
        cache.apply("GUILD_CREATE", guild(30).as_bytes()).unwrap();
        cache
    }

    /// The `Arc` of guild `id`.
    fn held(cache: &Cache, id: u64) -> &Arc<Guild> {
        cache.guilds[&id].as_ref().unwrap()
    }

    #[test]
    fn a_snapshot_shares_everything_and_an_edit_copies_only_its_guild() {
        let mut cache = loaded();
        let snapshot = cache.snapshot();
        assert_eq!(Arc::strong_count(&cache.keys), 2);
        assert_eq!(Arc::strong_count(held(&cache, 20)), 2);
        assert_eq!(Arc::strong_count(held(&cache, 30)), 2);
        assert_eq!(Arc::strong_count(cache.ready.as_ref().unwrap()), 2);

        // Known keys only: the key table stays shared; guild 20 is copied,
        // guild 30 is not.
        cache
            .apply(
                "CHANNEL_UPDATE",
                br#"{"id":"21","type":0,"name":"lobby","guild_id":"20"}"#,
            )
            .unwrap();
        assert_eq!(Arc::strong_count(&cache.keys), 2, "no key was new");
        assert_eq!(Arc::strong_count(held(&cache, 20)), 1, "copied");
        assert_eq!(Arc::strong_count(held(&cache, 30)), 2, "untouched");
        // A second edit to the copy copies nothing.
        let copy = Arc::as_ptr(held(&cache, 20));
        cache
            .apply(
                "CHANNEL_UPDATE",
                br#"{"id":"21","type":0,"name":"hall","guild_id":"20"}"#,
            )
            .unwrap();
        assert_eq!(Arc::as_ptr(held(&cache, 20)), copy);

        // A new key copies the table, once.
        cache
            .apply(
                "CHANNEL_UPDATE",
                br#"{"id":"31","type":0,"name":"x","guild_id":"30","brand_new_key":1}"#,
            )
            .unwrap();
        assert_eq!(Arc::strong_count(&cache.keys), 1);
        assert_eq!(cache.stats(), cache.walked_stats());
        drop(snapshot);
        assert_eq!(Arc::strong_count(held(&cache, 30)), 1);
    }

    #[test]
    fn into_guilds_releases_each_guild_once_written() {
        let cache = loaded();
        let mut guilds = cache.snapshot().into_guilds();
        assert_eq!(guilds.len(), 2);
        let first = guilds.next().unwrap();
        assert_eq!(first.id(), 20);
        let mut out = Vec::new();
        first.write(2, &mut out);
        drop(first);
        assert_eq!(Arc::strong_count(held(&cache, 20)), 1, "released");
        assert_eq!(Arc::strong_count(held(&cache, 30)), 2, "not yet");
        let mut expected = Vec::new();
        assert!(cache.write_guild(20, 2, &mut expected));
        assert_eq!(out, expected);
        drop(guilds);
        assert_eq!(Arc::strong_count(held(&cache, 30)), 1);
    }
}
