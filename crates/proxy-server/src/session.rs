//! Client sessions: what each has been sent, so that it can resume, and
//! for how long it can.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Which shard index each client `s` stands for.
///
/// A client's `s` counts what it was sent: READY and the guilds of its
/// snapshot first, then the shard's dispatches, less those routed to other
/// clients (member chunks and voice servers they asked for). So `s` and
/// the shard's index advance together in runs; the map keeps where each run
/// starts.
#[derive(Clone, Debug, Default)]
pub(crate) struct SeqMap {
    /// The last `s` of the snapshot and the shard index the snapshot was
    /// taken at.
    snapshot: (u64, u64),
    /// (first `s`, first index) of each run since.
    runs: Vec<(u64, u64)>,
}

impl SeqMap {
    pub(crate) fn new(snapshot_seq: u64, snapshot_index: u64) -> Self {
        Self {
            snapshot: (snapshot_seq, snapshot_index),
            runs: Vec::new(),
        }
    }

    /// Records that the client got shard event `index` as `seq`. A client
    /// that resumed from before its latest runs numbers again from there:
    /// the runs past `seq` are forgotten (they describe what it was sent
    /// before, which it chose to have again).
    pub(crate) fn record(&mut self, seq: u64, index: u64) {
        while self.runs.last().is_some_and(|&(s, _)| s > seq) {
            self.runs.pop();
        }
        let continues = self
            .runs
            .last()
            .is_some_and(|&(s, i)| index.checked_sub(i) == Some(seq - s));
        if !continues {
            self.runs.push((seq, index));
        }
    }

    /// The shard index the client had reached when it saw `seq`; `None`
    /// inside the snapshot (which cannot be replayed) or past what it was
    /// sent.
    pub(crate) fn index_of(&self, seq: u64, last_seq: u64) -> Option<u64> {
        if seq > last_seq {
            return None;
        }
        if seq == self.snapshot.0 {
            return Some(self.snapshot.1);
        }
        let &(s, i) = self.runs.iter().rev().find(|(s, _)| *s <= seq)?;
        i.checked_add(seq - s)
    }
}

/// What a session has been sent: written by the writer as it numbers the
/// shard's events, read by the driver when it saves the session (and by a
/// checkpoint while it is served).
#[derive(Debug)]
pub(crate) struct Progress {
    /// The last `s` sent.
    pub(crate) seq: u64,
    /// The shard index of the last event accounted for (sent, or for
    /// another client).
    pub(crate) index: u64,
    pub(crate) map: SeqMap,
    /// For a RESUME: RESUMED goes out once the index has reached this one
    /// (what the client missed ends there).
    pub(crate) resumed_at: Option<u64>,
    /// The session was saved from here, as its connection ended: nothing
    /// more may be numbered in it, or its client would have an `s` the
    /// saved session does not know.
    pub(crate) sealed: bool,
}

/// A restored session that was served when its checkpoint was written:
/// its client may have been sent more than the checkpoint says, one `s`
/// per event after `index`, and RESUMED once the index reached
/// `resumed_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ahead {
    pub(crate) resumed_at: Option<u64>,
}

/// One client session.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub(crate) shard: u32,
    /// The last `s` sent.
    pub(crate) seq: u64,
    /// The shard index of the last event accounted for (sent, or routed to
    /// another client).
    pub(crate) index: u64,
    pub(crate) map: SeqMap,
    /// Whether a connection is serving it.
    pub(crate) attached: bool,
    /// When it lost its connection.
    pub(crate) detached_at: Option<Instant>,
    /// Tells the connection serving it to let go: the client has resumed
    /// on another connection (the old one may not know it is dead yet).
    pub(crate) kick: Arc<Notify>,
    /// While it is served: what it has been sent, as it is sent.
    pub(crate) live: Option<Arc<Mutex<Progress>>>,
    /// Restored from a checkpoint written while it was served.
    pub(crate) ahead: Option<Ahead>,
}

/// The layout of [`Sessions::checkpoint`].
const SESSIONS_VERSION: u8 = 1;

/// The longest session id a checkpoint gives back (the proxy's are 32).
const MAX_ID: usize = 64;

/// What a RESUME finds.
#[derive(Debug)]
pub(crate) enum Attach {
    /// The session, now served by the caller.
    Taken(Session),
    /// Another connection still serves it; it has been told to let go.
    Busy,
    /// Unknown, expired or over.
    Gone,
    /// Handed over to the cluster (see [`Sessions::hand_over`]): whoever
    /// takes its record there has it.
    Handed,
}

/// A session whose ttl passed: its id and shard.
pub(crate) type Ended = (String, u32);

/// Every session, by id.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    sessions: Mutex<HashMap<String, Session>>,
    /// Sessions handed over to the cluster, by id: when each lost its
    /// connection (for the ttl), and its shard.
    handed: Mutex<HashMap<String, (Instant, u32)>>,
}

/// One session as [`Sessions::checkpoint`] lays it out.
fn write_session(out: &mut Vec<u8>, id: &str, session: &Session, now: Instant) {
    shard_pool::put_str(out, id);
    let live = session.live.as_ref().filter(|_| session.attached);
    let live = live.map(|progress| lock(progress));
    let (seq, index, map, resumed_at) = match &live {
        Some(progress) => (
            progress.seq,
            progress.index,
            &progress.map,
            progress.resumed_at,
        ),
        None => (session.seq, session.index, &session.map, None),
    };
    for n in [seq, index, map.snapshot.0, map.snapshot.1] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(
        &u32::try_from(map.runs.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for &(s, i) in &map.runs {
        out.extend_from_slice(&s.to_le_bytes());
        out.extend_from_slice(&i.to_le_bytes());
    }
    let detached = session
        .detached_at
        .filter(|_| !session.attached)
        .map_or(0, |at| now.saturating_duration_since(at).as_millis());
    out.extend_from_slice(&u64::try_from(detached).unwrap_or(u64::MAX).to_le_bytes());
    // Served: its client may get more before the next checkpoint.
    let ahead = session.ahead.filter(|_| !session.attached);
    let ahead = match (session.attached, resumed_at) {
        (true, resumed_at) => Some(Ahead { resumed_at }),
        (false, _) => ahead,
    };
    match ahead {
        None => out.push(0),
        Some(Ahead { resumed_at: None }) => out.push(1),
        Some(Ahead {
            resumed_at: Some(at),
        }) => {
            out.push(2);
            out.extend_from_slice(&at.to_le_bytes());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Sessions {
    pub(crate) fn insert(&self, id: String, session: Session) {
        lock(&self.sessions).insert(id, session);
    }

    /// Takes a detached session over for a RESUME. A session another
    /// connection still serves is told to let go ([`Attach::Busy`]): ask
    /// again once it has.
    pub(crate) fn attach(&self, id: &str, ttl: Duration, now: Instant) -> Attach {
        let mut sessions = lock(&self.sessions);
        let Some(session) = sessions.get_mut(id) else {
            if lock(&self.handed).contains_key(id) {
                return Attach::Handed;
            }
            return Attach::Gone;
        };
        if session.attached {
            session.kick.notify_one();
            return Attach::Busy;
        }
        if session
            .detached_at
            .is_some_and(|at| now.duration_since(at) >= ttl)
        {
            return Attach::Gone;
        }
        session.attached = true;
        session.detached_at = None;
        Attach::Taken(session.clone())
    }

    /// Saves what a connection sent, and lets the session go: resumable
    /// until the ttl, or ended (a close with 1000 or 1001, or op 9).
    pub(crate) fn detach(&self, id: &str, session: Session, resumable: bool, now: Instant) {
        let mut sessions = lock(&self.sessions);
        if resumable {
            sessions.insert(
                id.to_owned(),
                Session {
                    attached: false,
                    detached_at: Some(now),
                    live: None,
                    ahead: None,
                    ..session
                },
            );
        } else {
            sessions.remove(id);
        }
    }

    /// Lets a checkpoint read what the connection serving session `id`
    /// has sent, as it sends it.
    pub(crate) fn watch(&self, id: &str, progress: &Arc<Mutex<Progress>>) {
        if let Some(session) = lock(&self.sessions).get_mut(id) {
            session.live = Some(progress.clone());
        }
    }

    /// Whether session `id` is one of this node's that lost its connection
    /// (kept for its ttl, or handed over to the cluster).
    pub(crate) fn is_detached(&self, id: &str) -> bool {
        let known = lock(&self.sessions).get(id).map(|s| !s.attached);
        known.unwrap_or_else(|| lock(&self.handed).contains_key(id))
    }

    /// Sessions served by a connection now.
    pub(crate) fn attached(&self) -> usize {
        lock(&self.sessions).values().filter(|s| s.attached).count()
    }

    /// The sessions of `shard`, for its checkpoint: each with where its
    /// `s` stands against the shard's index, and how long ago it lost its
    /// connection (a served one counts as losing it now: a new process
    /// serves none of them until they resume).
    pub(crate) fn checkpoint(&self, shard: u32, now: Instant) -> Vec<u8> {
        let sessions = lock(&self.sessions);
        let mut out = vec![SESSIONS_VERSION];
        let mine: Vec<_> = sessions.iter().filter(|(_, s)| s.shard == shard).collect();
        out.extend_from_slice(&u32::try_from(mine.len()).unwrap_or(u32::MAX).to_le_bytes());
        for (id, session) in mine {
            write_session(&mut out, id, session, now);
        }
        out
    }

    /// Puts back the sessions of `shard` a checkpoint written `age` ago
    /// held, each detached as long as it was then plus `age`, so that its
    /// client can RESUME within what is left of its ttl; returns how many.
    /// A session id already in use is left alone.
    ///
    /// # Errors
    ///
    /// If the bytes are not what [`Sessions::checkpoint`] writes (nothing
    /// is put back then).
    pub(crate) fn restore(
        &self,
        shard: u32,
        bytes: &[u8],
        age: Duration,
        now: Instant,
    ) -> Result<usize, shard_pool::Error> {
        if bytes.is_empty() {
            return Ok(0);
        }
        let mut reader = shard_pool::CheckpointReader::new(bytes, "the client sessions");
        let version = reader.u8()?;
        if version != SESSIONS_VERSION {
            return Err(shard_pool::Error::checkpoint(format!(
                "client sessions layout version {version}, this build reads {SESSIONS_VERSION}"
            )));
        }
        let count = reader.count(2 + 5 * 8 + 4 + 1)?;
        let mut restored = Vec::with_capacity(count);
        for _ in 0..count {
            let id = reader.str()?;
            if id.is_empty() || id.len() > MAX_ID {
                return Err(shard_pool::Error::checkpoint(format!(
                    "a client session id of {} bytes",
                    id.len()
                )));
            }
            let (seq, index) = (reader.u64()?, reader.u64()?);
            let snapshot = (reader.u64()?, reader.u64()?);
            let runs = reader.count(16)?;
            let mut map = SeqMap {
                snapshot,
                runs: Vec::with_capacity(runs),
            };
            for _ in 0..runs {
                map.runs.push((reader.u64()?, reader.u64()?));
            }
            let detached = Duration::from_millis(reader.u64()?) + age;
            let ahead = match reader.u8()? {
                0 => None,
                1 => Some(Ahead { resumed_at: None }),
                2 => Some(Ahead {
                    resumed_at: Some(reader.u64()?),
                }),
                other => {
                    return Err(shard_pool::Error::checkpoint(format!(
                        "client session marker {other}"
                    )));
                }
            };
            restored.push((
                id.to_owned(),
                Session {
                    shard,
                    seq,
                    index,
                    map,
                    attached: false,
                    detached_at: Some(now.checked_sub(detached).unwrap_or(now)),
                    kick: Arc::new(Notify::new()),
                    live: None,
                    ahead,
                },
            ));
        }
        reader.finish()?;
        let mut sessions = lock(&self.sessions);
        let mut added = 0;
        for (id, session) in restored {
            if let std::collections::hash_map::Entry::Vacant(entry) = sessions.entry(id) {
                entry.insert(session);
                added += 1;
            }
        }
        Ok(added)
    }

    /// Looks up a few `s` in every session (fuzzing: arbitrary runs must
    /// give an answer or none, never a panic).
    #[doc(hidden)]
    pub(crate) fn probe(&self) {
        for session in lock(&self.sessions).values() {
            for seq in [
                0,
                1,
                session.seq / 2,
                session.seq,
                session.seq.saturating_add(1),
            ] {
                let _ = session.map.index_of(seq, session.seq);
            }
        }
    }

    /// One served session with a few runs (fuzzing seeds, tests).
    #[doc(hidden)]
    pub(crate) fn sample() -> Self {
        let sessions = Self::default();
        let mut map = SeqMap::new(4, 10);
        for (seq, index) in [(5, 11), (6, 12), (7, 14), (8, 15)] {
            map.record(seq, index);
        }
        sessions.insert(
            "0123456789abcdef0123456789abcdef".to_owned(),
            Session {
                shard: 0,
                seq: 8,
                index: 15,
                map,
                attached: true,
                detached_at: None,
                kick: Arc::new(Notify::new()),
                live: None,
                ahead: None,
            },
        );
        sessions
    }

    /// Removes the sessions whose ttl has passed; returns their ids and
    /// shards, and apart those of them that were handed over (their record
    /// may have been taken by another node).
    pub(crate) fn sweep(&self, ttl: Duration, now: Instant) -> (Vec<Ended>, Vec<Ended>) {
        let mut sessions = lock(&self.sessions);
        let mut expired = Vec::new();
        sessions.retain(|id, s| {
            let keep = s.detached_at.is_none_or(|at| now.duration_since(at) < ttl);
            if !keep {
                expired.push((id.clone(), s.shard));
            }
            keep
        });
        drop(sessions);
        let mut handed = Vec::new();
        lock(&self.handed).retain(|id, &mut (at, shard)| {
            let keep = now.duration_since(at) < ttl;
            if !keep {
                handed.push((id.clone(), shard));
            }
            keep
        });
        (expired, handed)
    }

    /// Detached session `id`, laid out as a checkpoint of its shard holds
    /// it (alone): its shard and the bytes, for
    /// [`restore`](Self::restore) on another node.
    pub(crate) fn export(&self, id: &str, now: Instant) -> Option<(u32, Vec<u8>)> {
        self.export_if(id, now, false)
    }

    /// Session `id`, served by a connection now, laid out as
    /// [`export`](Self::export) lays a detached one out, as if it lost its
    /// connection now and with its client possibly ahead of it (as in a
    /// checkpoint): for a record that lets another node take it over
    /// should this one die.
    pub(crate) fn export_served(&self, id: &str, now: Instant) -> Option<(u32, Vec<u8>)> {
        self.export_if(id, now, true)
    }

    /// The ids of the sessions served by a connection now.
    pub(crate) fn served(&self) -> Vec<String> {
        lock(&self.sessions)
            .iter()
            .filter(|(_, session)| session.attached)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn export_if(&self, id: &str, now: Instant, attached: bool) -> Option<(u32, Vec<u8>)> {
        let sessions = lock(&self.sessions);
        let session = sessions
            .get(id)
            .filter(|session| session.attached == attached)?;
        let mut out = vec![SESSIONS_VERSION];
        out.extend_from_slice(&1_u32.to_le_bytes());
        write_session(&mut out, id, session, now);
        Some((session.shard, out))
    }

    /// Session `id`'s record is now kept in the cluster: if it is still
    /// the one that lost its connection at `detached_at` (not resumed
    /// here meanwhile), it leaves this node, which only remembers that
    /// it handed it over; returns whether it did.
    pub(crate) fn hand_over(&self, id: &str, detached_at: Instant) -> bool {
        let mut sessions = lock(&self.sessions);
        let shard = sessions
            .get(id)
            .filter(|s| !s.attached && s.detached_at == Some(detached_at))
            .map(|s| s.shard);
        if let Some(shard) = shard {
            sessions.remove(id);
            lock(&self.handed).insert(id.to_owned(), (detached_at, shard));
        }
        shard.is_some()
    }

    /// Forgets that session `id` was handed over (its record was taken).
    pub(crate) fn handed_back(&self, id: &str) {
        lock(&self.handed).remove(id);
    }

    /// Sessions per shard: (attached, all).
    pub(crate) fn per_shard(&self) -> HashMap<u32, (usize, usize)> {
        let mut counts = HashMap::new();
        for session in lock(&self.sessions).values() {
            let entry: &mut (usize, usize) = counts.entry(session.shard).or_default();
            entry.0 += usize::from(session.attached);
            entry.1 += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_map_to_indexes_across_skipped_events() {
        // Snapshot: READY + 3 guilds = s 1..=4, taken at index 10.
        let mut map = SeqMap::new(4, 10);
        for (seq, index) in [(5, 11), (6, 12), (7, 14), (8, 15)] {
            map.record(seq, index);
        }
        assert_eq!(map.index_of(4, 8), Some(10), "all of the snapshot");
        assert_eq!(map.index_of(6, 8), Some(12));
        assert_eq!(map.index_of(7, 8), Some(14), "13 went to another client");
        assert_eq!(map.index_of(8, 8), Some(15));
        assert_eq!(map.index_of(3, 8), None, "inside the snapshot");
        assert_eq!(map.index_of(9, 8), None, "never sent");
    }

    #[test]
    fn a_resume_from_before_the_latest_run_numbers_again_from_there() {
        let mut map = SeqMap::new(4, 10);
        for (seq, index) in [(5, 11), (6, 12), (7, 14), (8, 15), (9, 17)] {
            map.record(seq, index);
        }
        // The client resumes from s 6 (index 12): what follows is sent again.
        assert_eq!(map.index_of(6, 9), Some(12));
        map.record(6, 12);
        map.record(7, 13);
        map.record(8, 14);
        assert_eq!(map.index_of(7, 8), Some(13), "the new numbering");
        assert_eq!(map.index_of(8, 8), Some(14));
        assert_eq!(map.index_of(5, 8), Some(11), "the old one before it");
        // A record below an index the run has passed starts a run; no panic.
        map.record(9, 3);
        assert_eq!(map.index_of(9, 9), Some(3));
    }

    #[tokio::test]
    async fn sessions_resume_once_within_their_ttl() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let ttl = Duration::from_secs(10);
        let session = Session {
            shard: 0,
            seq: 4,
            index: 0,
            map: SeqMap::new(4, 0),
            attached: true,
            detached_at: None,
            kick: Arc::new(Notify::new()),
            live: None,
            ahead: None,
        };
        let kicked = session.kick.clone();
        sessions.insert("a".to_owned(), session.clone());
        assert!(
            matches!(sessions.attach("a", ttl, now), Attach::Busy),
            "still attached"
        );
        // The serving connection was told to let go.
        tokio::time::timeout(Duration::from_millis(10), kicked.notified())
            .await
            .unwrap();
        sessions.detach("a", session.clone(), true, now);
        assert!(
            matches!(
                sessions.attach("a", ttl, now + Duration::from_secs(10)),
                Attach::Gone
            ),
            "expired"
        );
        sessions.detach("a", session.clone(), true, now);
        assert!(matches!(
            sessions.attach("a", ttl, now + Duration::from_secs(9)),
            Attach::Taken(_)
        ));
        assert!(
            matches!(sessions.attach("a", ttl, now), Attach::Busy),
            "taken"
        );
        sessions.detach("a", session.clone(), false, now);
        assert!(
            matches!(sessions.attach("a", ttl, now), Attach::Gone),
            "ended"
        );
        sessions.insert("b".to_owned(), session.clone());
        sessions.detach("b", session.clone(), true, now);
        // Handed over to the cluster: only while it is still the session
        // that dropped then; afterwards the node knows it handed it over.
        sessions.insert("c".to_owned(), session.clone());
        sessions.detach("c", session, true, now);
        let (shard, record) = sessions.export("c", now).unwrap();
        assert_eq!(shard, 0);
        assert!(!sessions.hand_over("c", now + Duration::from_secs(1)));
        assert!(sessions.hand_over("c", now));
        assert!(matches!(sessions.attach("c", ttl, now), Attach::Handed));
        assert!(sessions.export("c", now).is_none());
        assert_eq!(
            sessions.sweep(ttl, now + Duration::from_secs(11)),
            (vec![("b".to_owned(), 0)], vec![("c".to_owned(), 0)]),
            "expired sessions go, those handed over apart"
        );
        // Taken back (here, or on another node): attached as any other.
        assert_eq!(
            sessions.restore(0, &record, Duration::ZERO, now).unwrap(),
            1
        );
        assert!(matches!(sessions.attach("c", ttl, now), Attach::Taken(_)));
    }

    #[test]
    fn a_checkpoint_gives_back_every_session_of_its_shard_as_it_stood() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let mut map = SeqMap::new(4, 10);
        for (seq, index) in [(5, 11), (6, 12), (7, 14)] {
            map.record(seq, index);
        }
        let session = |shard, seq, index, map: &SeqMap| Session {
            shard,
            seq,
            index,
            map: map.clone(),
            attached: false,
            detached_at: Some(now),
            kick: Arc::new(Notify::new()),
            live: None,
            ahead: None,
        };
        sessions.insert("gone".to_owned(), session(0, 7, 14, &map));
        sessions.detach("gone", session(0, 7, 14, &map), true, now);
        sessions.insert("other shard".to_owned(), session(1, 7, 14, &map));
        // A served session: its connection's progress is what counts.
        let served = Session {
            attached: true,
            detached_at: None,
            ..session(0, 4, 10, &SeqMap::new(4, 10))
        };
        sessions.insert("served".to_owned(), served);
        let mut live = SeqMap::new(4, 10);
        live.record(5, 11);
        live.record(6, 12);
        let progress = Arc::new(Mutex::new(Progress {
            seq: 6,
            index: 12,
            map: live,
            resumed_at: None,
            sealed: false,
        }));
        sessions.watch("served", &progress);

        let later = now + Duration::from_secs(3);
        let bytes = sessions.checkpoint(0, later);
        let restored = Sessions::default();
        let start = Instant::now() + Duration::from_mins(1);
        assert_eq!(
            restored.restore(0, &bytes, Duration::ZERO, start).unwrap(),
            2
        );
        let ttl = Duration::from_secs(10);
        let Attach::Taken(gone) = restored.attach("gone", ttl, start + Duration::from_secs(6))
        else {
            panic!("gone resumes within what is left of its ttl");
        };
        assert_eq!((gone.seq, gone.index), (7, 14));
        assert_eq!(gone.map.index_of(6, 7), Some(12));
        assert_eq!(gone.map.index_of(7, 7), Some(14));
        assert!(
            matches!(
                restored.attach("gone", ttl, start + Duration::from_secs(8)),
                Attach::Busy
            ),
            "taken"
        );
        let Attach::Taken(served) = restored.attach("served", ttl, start + Duration::from_secs(9))
        else {
            panic!("a served session counts as detached at the checkpoint");
        };
        assert_eq!((served.seq, served.index), (6, 12), "its live progress");
        assert_eq!(
            served.ahead,
            Some(Ahead { resumed_at: None }),
            "and its client may have had more"
        );
        assert_eq!(gone.ahead, None);
        assert_eq!(served.map.index_of(5, 6), Some(11));
        assert!(matches!(
            restored.attach("other shard", ttl, start),
            Attach::Gone
        ));
        let Attach::Gone = Sessions::default().attach("gone", ttl, start) else {
            panic!()
        };
        let expired = Sessions::default();
        expired.restore(0, &bytes, Duration::ZERO, start).unwrap();
        assert!(
            matches!(
                expired.attach("gone", ttl, start + Duration::from_secs(7)),
                Attach::Gone
            ),
            "3 s gone at the checkpoint, 7 s since: past 10"
        );
    }

    #[test]
    fn a_damaged_sessions_checkpoint_is_an_error_that_puts_nothing_back() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let mut map = SeqMap::new(4, 10);
        map.record(5, 11);
        sessions.insert(
            "a".to_owned(),
            Session {
                shard: 0,
                seq: 5,
                index: 11,
                map,
                attached: true,
                detached_at: None,
                kick: Arc::new(Notify::new()),
                live: None,
                ahead: None,
            },
        );
        let bytes = sessions.checkpoint(0, now);
        let start = now;
        // Empty is none; damaged is an error, and nothing is put back.
        assert_eq!(
            Sessions::default()
                .restore(0, &[], Duration::ZERO, start)
                .unwrap(),
            0
        );
        for n in 1..bytes.len() {
            let partial = Sessions::default();
            assert!(
                partial
                    .restore(0, &bytes[..n], Duration::ZERO, start)
                    .is_err(),
                "cut at {n}"
            );
            assert_eq!(partial.per_shard().len(), 0);
        }
        let mut version = bytes.clone();
        version[0] = 9;
        assert!(
            Sessions::default()
                .restore(0, &version, Duration::ZERO, start)
                .is_err()
        );
    }
}
