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

/// Items by id, in arrival order, with the sum of their lengths kept up
/// to date (so [`Guild::counts`] need not walk them).
#[derive(Clone, Debug, Default)]
pub(crate) struct List {
    items: Vec<(u64, Box<[u8]>)>,
    /// The sum of the items' lengths.
    value_bytes: usize,
}

impl List {
    pub(crate) fn get(&self, id: u64) -> Option<&[u8]> {
        self.items.iter().find(|(i, _)| *i == id).map(|(_, v)| &**v)
    }

    /// Puts `value` under `id`, in place of the one there.
    pub(crate) fn put(&mut self, id: u64, value: Box<[u8]>) {
        self.value_bytes += value.len();
        match self.items.iter_mut().find(|(i, _)| *i == id) {
            Some(slot) => {
                self.value_bytes -= slot.1.len();
                slot.1 = value;
            }
            None => self.items.push((id, value)),
        }
    }

    pub(crate) fn remove(&mut self, id: u64) {
        self.retain_by(|i, _| i != id);
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&[u8]) -> bool) {
        self.retain_by(|_, v| keep(v));
    }

    fn retain_by(&mut self, mut keep: impl FnMut(u64, &[u8]) -> bool) {
        let value_bytes = &mut self.value_bytes;
        self.items.retain(|(i, v)| {
            let kept = keep(*i, v);
            if !kept {
                *value_bytes -= v.len();
            }
            kept
        });
    }

    pub(crate) fn clear(&mut self) {
        self.items.clear();
        self.value_bytes = 0;
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &[u8]> {
        self.items.iter().map(|(_, v)| &**v)
    }

    /// The items, in order: (id, packed value).
    pub(crate) fn items(&self) -> impl ExactSizeIterator<Item = (u64, &[u8])> {
        self.items.iter().map(|(id, v)| (*id, &**v))
    }

    /// The heap bytes the list holds: its slots and its items.
    fn heap_bytes(&self) -> usize {
        self.items.capacity() * size_of::<(u64, Box<[u8]>)>() + self.value_bytes
    }

    /// [`heap_bytes`](Self::heap_bytes) with the items' lengths summed
    /// afresh.
    fn walked_heap_bytes(&self) -> usize {
        self.items.capacity() * size_of::<(u64, Box<[u8]>)>()
            + self.values().map(<[u8]>::len).sum::<usize>()
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

/// Members or presences by user id, with the sum of their lengths kept up
/// to date (so [`Guild::counts`] need not walk them).
#[derive(Clone, Debug, Default)]
pub(crate) struct IdMap {
    map: HashMap<u64, Box<[u8]>, BuildHasherDefault<IdHasher>>,
    /// The sum of the values' lengths.
    value_bytes: usize,
}

impl IdMap {
    pub(crate) fn get(&self, id: u64) -> Option<&[u8]> {
        self.map.get(&id).map(|v| &**v)
    }

    /// Puts `value` under `id`, in place of the one there.
    pub(crate) fn insert(&mut self, id: u64, value: Box<[u8]>) {
        self.value_bytes += value.len();
        if let Some(old) = self.map.insert(id, value) {
            self.value_bytes -= old.len();
        }
    }

    pub(crate) fn remove(&mut self, id: u64) {
        if let Some(old) = self.map.remove(&id) {
            self.value_bytes -= old.len();
        }
    }

    /// Puts each of `items` in, as [`HashMap::extend`] does: it reserves
    /// room for the items first (all of them in an empty map, half
    /// otherwise), which may grow the table and so change the order the
    /// values are written in; doing the same keeps that order.
    pub(crate) fn extend(&mut self, items: Vec<(u64, Box<[u8]>)>) {
        let room = if self.map.is_empty() {
            items.len()
        } else {
            items.len().div_ceil(2)
        };
        self.map.reserve(room);
        for (id, value) in items {
            self.insert(id, value);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.map.iter().map(|(id, v)| (*id, &**v))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &[u8]> {
        self.map.values().map(|v| &**v)
    }

    /// The heap bytes the map holds: its table (a control byte a slot)
    /// and its values.
    fn heap_bytes(&self) -> usize {
        self.map.capacity() * (size_of::<(u64, Box<[u8]>)>() + 1) + self.value_bytes
    }

    /// [`heap_bytes`](Self::heap_bytes) with the values' lengths summed
    /// afresh.
    fn walked_heap_bytes(&self) -> usize {
        self.map.capacity() * (size_of::<(u64, Box<[u8]>)>() + 1)
            + self.values().map(<[u8]>::len).sum::<usize>()
    }
}

/// A guild that is available.
///
/// Cloned only when a [`Snapshot`](crate::Snapshot) still holds it as the
/// cache changes it (copy on write).
#[derive(Clone, Debug, Default)]
pub(crate) struct Guild {
    /// Its own fields as a packed object: everything but the lists below,
    /// `member_count` and `unavailable`.
    pub(crate) head: Box<[u8]>,
    pub(crate) member_count: Option<u64>,
    lists: [List; ListKind::ALL.len()],
    pub(crate) members: IdMap,
    pub(crate) presences: IdMap,
}

/// What some guilds hold, for [`Stats`](crate::Stats): the items of each
/// list, the members, the presences, and the bytes.
///
/// Sums and differences wrap, so a total kept by adding and taking away
/// guilds' counts is exact in any order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Items of each list, by [`ListKind`] as index.
    pub(crate) lists: [usize; ListKind::ALL.len()],
    pub(crate) members: usize,
    pub(crate) presences: usize,
    /// The guild's allocation (Arc counters included) and the heap bytes
    /// it holds.
    pub(crate) bytes: usize,
}

impl Counts {
    pub(crate) fn list(&self, kind: ListKind) -> usize {
        self.lists[kind as usize]
    }

    /// Adds `other` in.
    pub(crate) fn add(&mut self, other: &Self) {
        self.combine(other, usize::wrapping_add);
    }

    /// Takes `other` away.
    pub(crate) fn sub(&mut self, other: &Self) {
        self.combine(other, usize::wrapping_sub);
    }

    fn combine(&mut self, other: &Self, op: fn(usize, usize) -> usize) {
        for (a, b) in self.lists.iter_mut().zip(other.lists) {
            *a = op(*a, b);
        }
        self.members = op(self.members, other.members);
        self.presences = op(self.presences, other.presences);
        self.bytes = op(self.bytes, other.bytes);
    }
}

/// The bytes of a guild's own allocation: the guild and its `Arc`'s two
/// counters.
const GUILD_ALLOCATION: usize = size_of::<Guild>() + 2 * size_of::<usize>();

impl Guild {
    pub(crate) fn list(&self, kind: ListKind) -> &List {
        &self.lists[kind as usize]
    }

    pub(crate) fn list_mut(&mut self, kind: ListKind) -> &mut List {
        &mut self.lists[kind as usize]
    }

    /// What the guild holds. Constant time: the lists and maps keep their
    /// sums up to date.
    pub(crate) fn counts(&self) -> Counts {
        Counts {
            lists: self.lists.each_ref().map(List::len),
            members: self.members.len(),
            presences: self.presences.len(),
            bytes: GUILD_ALLOCATION
                + self.head.len()
                + self.lists.iter().map(List::heap_bytes).sum::<usize>()
                + self.members.heap_bytes()
                + self.presences.heap_bytes(),
        }
    }

    /// [`counts`](Self::counts) with every item's length summed afresh:
    /// the reference the kept sums are tested against.
    pub(crate) fn walked_counts(&self) -> Counts {
        Counts {
            bytes: GUILD_ALLOCATION
                + self.head.len()
                + self
                    .lists
                    .iter()
                    .map(List::walked_heap_bytes)
                    .sum::<usize>()
                + self.members.walked_heap_bytes()
                + self.presences.walked_heap_bytes(),
            ..self.counts()
        }
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
        write_array(key::MEMBERS, self.members.values(), keys, out);
        write_array(key::PRESENCES, self.presences.values(), keys, out);
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Put(u64, usize),
        Remove(u64),
        RetainShorterThan(usize),
        Clear,
        Extend(Vec<(u64, usize)>),
    }

    fn op() -> impl Strategy<Value = Op> {
        let id = 0..12_u64;
        let len = 0..40_usize;
        prop_oneof![
            6 => (id.clone(), len.clone()).prop_map(|(i, n)| Op::Put(i, n)),
            3 => id.clone().prop_map(Op::Remove),
            1 => len.clone().prop_map(Op::RetainShorterThan),
            1 => Just(Op::Clear),
            1 => prop::collection::vec((id, len), 0..6).prop_map(Op::Extend),
        ]
    }

    fn value(n: usize) -> Box<[u8]> {
        vec![7; n].into_boxed_slice()
    }

    proptest! {
        /// The sums the lists and maps keep are what a walk counts, and a
        /// clone keeps them too.
        #[test]
        fn kept_sums_are_what_a_walk_counts(ops in prop::collection::vec(op(), 0..80)) {
            let mut guild = Guild::default();
            for op in ops {
                let list = guild.list_mut(ListKind::Channels);
                match op {
                    Op::Put(id, n) => {
                        list.put(id, value(n));
                        guild.members.insert(id, value(n));
                    }
                    Op::Remove(id) => {
                        list.remove(id);
                        guild.members.remove(id);
                    }
                    Op::RetainShorterThan(n) => list.retain(|v| v.len() < n),
                    Op::Clear => list.clear(),
                    Op::Extend(items) => {
                        let items = items.into_iter().map(|(i, n)| (i, value(n))).collect();
                        guild.presences.extend(items);
                    }
                }
                prop_assert_eq!(guild.counts(), guild.walked_counts());
                let copy = guild.clone();
                prop_assert_eq!(copy.counts(), copy.walked_counts());
            }
        }
    }
}
