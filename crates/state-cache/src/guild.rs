//! One cached guild: its own fields and its lists, each item one packed
//! value, and how it is written back as `GUILD_CREATE`'s `d`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::flags::Flags;
use crate::packed::{self, FieldKey, Keys, key};

/// The lists of a guild kept in arrival order, small enough to search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListKind {
    Roles,
    Emojis,
    Stickers,
    Channels,
    Threads,
    VoiceStates,
    StageInstances,
    ScheduledEvents,
    SoundboardSounds,
}

impl ListKind {
    pub(crate) const ALL: [Self; 9] = [
        Self::Roles,
        Self::Emojis,
        Self::Stickers,
        Self::Channels,
        Self::Threads,
        Self::VoiceStates,
        Self::StageInstances,
        Self::ScheduledEvents,
        Self::SoundboardSounds,
    ];

    /// The list's key in `GUILD_CREATE`.
    pub(crate) fn key(self) -> key::Key {
        match self {
            Self::Roles => key::ROLES,
            Self::Emojis => key::EMOJIS,
            Self::Stickers => key::STICKERS,
            Self::Channels => key::CHANNELS,
            Self::Threads => key::THREADS,
            Self::VoiceStates => key::VOICE_STATES,
            Self::StageInstances => key::STAGE_INSTANCES,
            Self::ScheduledEvents => key::GUILD_SCHEDULED_EVENTS,
            Self::SoundboardSounds => key::SOUNDBOARD_SOUNDS,
        }
    }

    /// The key of an item's id.
    pub(crate) fn id_key(self) -> key::Key {
        match self {
            Self::VoiceStates => key::USER_ID,
            Self::SoundboardSounds => key::SOUND_ID,
            _ => key::ID,
        }
    }

    pub(crate) fn of_key(k: FieldKey<'_>) -> Option<Self> {
        Self::ALL.into_iter().find(|list| k.is(list.key()))
    }

    /// Whether the flags keep this list (`@everyone` aside).
    pub(crate) fn kept(self, flags: Flags) -> bool {
        match self {
            Self::Roles => flags.roles,
            Self::Emojis => flags.emojis,
            Self::Stickers => flags.stickers,
            Self::Channels => flags.channels,
            Self::Threads => flags.threads,
            Self::VoiceStates => flags.voice_states,
            Self::StageInstances => flags.stage_instances,
            Self::ScheduledEvents => flags.scheduled_events,
            Self::SoundboardSounds => flags.soundboard_sounds,
        }
    }
}

/// Items by id, in arrival order.
#[derive(Debug, Default)]
pub(crate) struct List(Vec<(u64, Box<[u8]>)>);

impl List {
    pub(crate) fn get(&self, id: u64) -> Option<&[u8]> {
        self.0.iter().find(|(i, _)| *i == id).map(|(_, v)| &**v)
    }

    /// Puts `value` under `id`, in place of the one there.
    pub(crate) fn put(&mut self, id: u64, value: Box<[u8]>) {
        match self.0.iter_mut().find(|(i, _)| *i == id) {
            Some(slot) => slot.1 = value,
            None => self.0.push((id, value)),
        }
    }

    pub(crate) fn remove(&mut self, id: u64) {
        self.0.retain(|(i, _)| *i != id);
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&[u8]) -> bool) {
        self.0.retain(|(_, v)| keep(v));
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().map(|(_, v)| &**v)
    }

    fn heap_bytes(&self) -> usize {
        self.0.capacity() * size_of::<(u64, Box<[u8]>)>()
            + self.0.iter().map(|(_, v)| v.len()).sum::<usize>()
    }
}

/// A hasher for snowflakes: they are unique and well spread already, so a
/// multiply and a fold do (and the input is Discord's, not an attacker's).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        let x = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = x ^ (x >> 29);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Members or presences by user id.
pub(crate) type IdMap = HashMap<u64, Box<[u8]>, BuildHasherDefault<IdHasher>>;

/// A guild that is available.
#[derive(Debug, Default)]
pub(crate) struct Guild {
    /// Its own fields as a packed object: everything but the lists below,
    /// `member_count` and `unavailable`.
    pub(crate) head: Box<[u8]>,
    pub(crate) member_count: Option<u64>,
    lists: [List; ListKind::ALL.len()],
    pub(crate) members: IdMap,
    pub(crate) presences: IdMap,
}

impl Guild {
    pub(crate) fn list(&self, kind: ListKind) -> &List {
        &self.lists[kind as usize]
    }

    pub(crate) fn list_mut(&mut self, kind: ListKind) -> &mut List {
        &mut self.lists[kind as usize]
    }

    /// The heap bytes this guild holds, counted from its parts.
    pub(crate) fn heap_bytes(&self) -> usize {
        let map = |m: &IdMap| {
            m.capacity() * (size_of::<(u64, Box<[u8]>)>() + 1)
                + m.values().map(|v| v.len()).sum::<usize>()
        };
        self.head.len()
            + self.lists.iter().map(List::heap_bytes).sum::<usize>()
            + map(&self.members)
            + map(&self.presences)
    }

    /// Appends the guild as `GUILD_CREATE`'s `d`.
    pub(crate) fn write_create(&self, keys: &Keys, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = true;
        for (k, v) in packed::fields(&self.head) {
            if !first {
                out.push(b',');
            }
            first = false;
            packed::write_key(k, keys, out);
            packed::write_json(v, keys, out);
        }
        if !first {
            out.push(b',');
        }
        packed::write_fixed_key(key::UNAVAILABLE, keys, out);
        out.extend_from_slice(b"false");
        if let Some(count) = self.member_count {
            out.push(b',');
            packed::write_fixed_key(key::MEMBER_COUNT, keys, out);
            out.extend_from_slice(itoa::Buffer::new().format(count).as_bytes());
        }
        for kind in ListKind::ALL {
            write_array(kind.key(), self.list(kind).values(), keys, out);
        }
        write_array(key::MEMBERS, self.members.values().map(|v| &**v), keys, out);
        write_array(
            key::PRESENCES,
            self.presences.values().map(|v| &**v),
            keys,
            out,
        );
        out.push(b'}');
    }
}

/// Appends `,"key":[items]`.
fn write_array<'a>(
    k: key::Key,
    items: impl Iterator<Item = &'a [u8]>,
    keys: &Keys,
    out: &mut Vec<u8>,
) {
    out.push(b',');
    packed::write_fixed_key(k, keys, out);
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        packed::write_json(item, keys, out);
    }
    out.push(b']');
}
