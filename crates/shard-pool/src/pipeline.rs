//! What happens to each payload a shard receives: scanned, applied to the
//! state cache when the flags need it, numbered and handed on. No I/O: the
//! shard task calls [`Pipeline::handle`] under the shard's lock and
//! publishes what it returns under the same lock, so a snapshot taken under
//! it is exactly the state before the next event.

use std::collections::BTreeMap;

use bytes::Bytes;
use seqpatch::Scan;
use state_cache::{Cache, Flags};

use crate::ring::Ring;

/// What subscribers of a shard receive, in upstream order. Each carries the
/// shard's event index, which only ever increases, one by one.
#[derive(Clone, Debug)]
pub enum ShardEvent {
    /// A dispatch (`op` 0), as Discord sent it.
    Dispatch(Dispatch),
    /// The upstream session was replaced: Discord sent a new READY (after
    /// `INVALID_SESSION` or a failed resume), so events were lost upstream
    /// and the shard's state starts again from the new READY and its
    /// `GUILD_CREATE`s, which follow as dispatches.
    ///
    /// A client that saw the old state cannot be brought up to date by the
    /// events that follow. The proxy therefore ends its clients' sessions
    /// (`INVALID_SESSION` with `d: false`); their libraries identify again and
    /// get the new state, once the shard is ready.
    Reset {
        /// The event's index.
        index: u64,
    },
    /// Discord closed the upstream connection with a code that forbids
    /// reconnecting (4004, 4010–4014): the shard has stopped for good, and
    /// nothing follows. Its clients are closed with the same code.
    Closed {
        /// The index of the last event before it (no new index is taken).
        index: u64,
        /// Discord's close code.
        code: u16,
    },
}

impl ShardEvent {
    /// The event's index.
    #[must_use]
    pub fn index(&self) -> u64 {
        match self {
            Self::Dispatch(dispatch) => dispatch.index,
            Self::Reset { index } | Self::Closed { index, .. } => *index,
        }
    }
}

/// One upstream dispatch.
#[derive(Clone, Debug)]
pub struct Dispatch {
    /// The shard's event index.
    pub index: u64,
    /// The payload, byte for byte as received (after transport
    /// decompression).
    pub payload: Bytes,
    /// Where its `op`, `t`, `s` and `d` are.
    pub scan: Scan,
}

impl Dispatch {
    /// The event name.
    #[must_use]
    pub fn event_type(&self) -> Option<&str> {
        self.scan.event_type(&self.payload)
    }
}

/// One shard's pipeline, without I/O: payloads in, [`ShardEvent`]s out,
/// the shard's state cache kept on the way.
///
/// ```
/// use bytes::Bytes;
/// use shard_pool::{Flags, Pipeline, ShardEvent};
///
/// let mut pipeline = Pipeline::new(Flags::default());
/// let ack = Bytes::from_static(br#"{"t":null,"s":null,"op":11,"d":null}"#);
/// assert!(pipeline.handle(ack).is_none(), "only dispatches are handed on");
/// let message = Bytes::from_static(br#"{"t":"MESSAGE_CREATE","s":2,"op":0,"d":{"content":"hi"}}"#);
/// let Some(ShardEvent::Dispatch(dispatch)) = pipeline.handle(message) else { panic!() };
/// assert_eq!((dispatch.index, dispatch.event_type()), (1, Some("MESSAGE_CREATE")));
/// ```
#[derive(Debug)]
pub struct Pipeline {
    pub(crate) cache: Cache,
    /// The latest dispatches, for resumes.
    pub(crate) ring: Ring,
    /// Whether a client has been served since the last READY: until then no
    /// session can resume, so the ring keeps nothing (at start-up it would
    /// otherwise hold every guild's `GUILD_CREATE`, raw).
    served: bool,
    /// The index of the last event handed on.
    pub(crate) index: u64,
    /// The upstream `s` of the last dispatch of this session.
    last_seq: Option<u64>,
    /// Dispatches received, by name.
    pub(crate) events: BTreeMap<Box<str>, u64>,
    /// Dispatches received again after a resume (and dropped).
    pub(crate) duplicates: u64,
    /// Payloads that were not gateway payloads (and dropped).
    pub(crate) malformed: u64,
    /// Dispatches the cache could not apply (handed on all the same).
    pub(crate) cache_errors: u64,
}

impl Pipeline {
    /// A pipeline whose state cache keeps what `flags` says, with a replay
    /// ring of the default bounds (see [`Pipeline::with_ring`]).
    #[must_use]
    pub fn new(flags: Flags) -> Self {
        Self::with_ring(flags, 16_384, 32 << 20)
    }

    /// A pipeline whose replay ring keeps at most `max_events` dispatches
    /// and `max_bytes` of payload.
    #[must_use]
    pub fn with_ring(flags: Flags, max_events: usize, max_bytes: usize) -> Self {
        Self {
            cache: Cache::new(flags),
            ring: Ring::new(max_events, max_bytes),
            served: false,
            index: 0,
            last_seq: None,
            events: BTreeMap::new(),
            duplicates: 0,
            malformed: 0,
            cache_errors: 0,
        }
    }

    /// Takes one payload from upstream; returns what to hand on, if
    /// anything: dispatches (numbered), and a reset for each READY.
    /// Everything else, repeats after a resume, RESUMED and payloads that
    /// are not gateway payloads are not handed on.
    pub fn handle(&mut self, payload: Bytes) -> Option<ShardEvent> {
        let scan = match seqpatch::scan(&payload) {
            Ok(scan) => scan,
            Err(error) => {
                self.malformed += 1;
                tracing::warn!(%error, "upstream payload dropped: not a gateway payload");
                return None;
            }
        };
        if scan.op() != 0 {
            return None;
        }
        let t = scan.event_type(&payload).unwrap_or("");
        match self.events.get_mut(t) {
            Some(count) => *count += 1,
            None => {
                self.events.insert(t.into(), 1);
            }
        }
        let seq = scan.seq();
        if t == "READY" {
            self.last_seq = seq;
            self.apply(t, &scan, &payload);
            self.index += 1;
            self.ring.reset(self.index);
            self.served = false;
            return Some(ShardEvent::Reset { index: self.index });
        }
        // A resume replays from the last `s` twilight saw; anything at or
        // below what was handed on already is a repeat.
        if let (Some(seq), Some(last)) = (seq, self.last_seq) {
            if seq <= last {
                self.duplicates += 1;
                return None;
            }
            if seq > last + 1 {
                tracing::warn!(last, seq, "upstream sequence skipped");
            }
        }
        if seq.is_some() {
            self.last_seq = seq;
        }
        if t == "RESUMED" {
            return None;
        }
        if self.cache.wants(t) {
            self.apply(t, &scan, &payload);
        }
        self.index += 1;
        let dispatch = Dispatch {
            index: self.index,
            payload,
            scan,
        };
        if self.served {
            self.ring.push(dispatch.clone());
        }
        Some(ShardEvent::Dispatch(dispatch))
    }

    /// Marks that a client is being served from the state at the current
    /// index: from here on the ring keeps dispatches for its resumes.
    pub(crate) fn serve(&mut self) {
        if !self.served {
            self.ring.reset(self.index);
            self.served = true;
        }
    }

    /// The shard's state cache.
    #[must_use]
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The index of the last event handed on.
    #[must_use]
    pub fn index(&self) -> u64 {
        self.index
    }

    fn apply(&mut self, t: &str, scan: &Scan, payload: &[u8]) {
        let d = scan.d(payload).unwrap_or(b"null");
        if let Err(error) = self.cache.apply(t, d) {
            self.cache_errors += 1;
            tracing::warn!(%error, "state cache could not apply a dispatch");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READY: &str = r#"{"t":"READY","s":1,"op":0,"d":{"v":10,"user":{"id":"10","username":"bot","discriminator":"0","avatar":null,"mfa_enabled":true},"guilds":[{"id":"20","unavailable":true}],"session_id":"x","resume_gateway_url":"ws://x","application":{"id":"10","flags":0}}}"#;

    fn handle(core: &mut Pipeline, text: &str) -> Option<ShardEvent> {
        core.handle(Bytes::copy_from_slice(text.as_bytes()))
    }

    fn dispatch(t: &str, s: u64, d: &str) -> String {
        format!(r#"{{"t":"{t}","s":{s},"op":0,"d":{d}}}"#)
    }

    #[test]
    fn dispatches_are_numbered_in_order_and_the_rest_is_not_handed_on() {
        let mut core = Pipeline::new(Flags::default());
        assert!(matches!(
            handle(&mut core, READY),
            Some(ShardEvent::Reset { index: 1 })
        ));
        assert!(handle(&mut core, r#"{"t":null,"s":null,"op":11,"d":null}"#).is_none());
        let guild = dispatch("GUILD_CREATE", 2, r#"{"id":"20","name":"g","roles":[]}"#);
        let Some(ShardEvent::Dispatch(d)) = handle(&mut core, &guild) else {
            panic!("a dispatch")
        };
        assert_eq!((d.index, d.event_type()), (2, Some("GUILD_CREATE")));
        assert_eq!(d.payload, guild.as_bytes(), "byte for byte");
        assert_eq!(core.cache.pending_guilds(), 0, "the cache saw it");
        let message = dispatch("MESSAGE_CREATE", 3, r#"{"content":"hi"}"#);
        assert_eq!(handle(&mut core, &message).map(|e| e.index()), Some(3));
        assert_eq!(core.events.get("MESSAGE_CREATE"), Some(&1));
    }

    #[test]
    fn a_resume_that_replays_what_was_seen_hands_on_no_duplicate() {
        let mut core = Pipeline::new(Flags::default());
        handle(&mut core, READY);
        for s in 2..=5 {
            assert!(handle(&mut core, &dispatch("TYPING_START", s, "{}")).is_some());
        }
        // Upstream replays 4 and 5 again, then RESUMED, then new events.
        assert!(handle(&mut core, &dispatch("TYPING_START", 4, "{}")).is_none());
        assert!(handle(&mut core, &dispatch("TYPING_START", 5, "{}")).is_none());
        assert!(handle(&mut core, &dispatch("RESUMED", 6, "{}")).is_none());
        assert_eq!(
            handle(&mut core, &dispatch("TYPING_START", 7, "{}")).map(|e| e.index()),
            Some(6)
        );
        assert_eq!(core.duplicates, 2);
    }

    #[test]
    fn the_ring_keeps_nothing_until_a_client_is_served() {
        let mut core = Pipeline::new(Flags::default());
        handle(&mut core, READY);
        let guild = dispatch("GUILD_CREATE", 2, r#"{"id":"20","name":"g","roles":[]}"#);
        handle(&mut core, &guild);
        assert_eq!(
            core.ring.len_bytes().0,
            0,
            "start-up guilds are in the cache, not the ring"
        );
        core.serve();
        assert_eq!(
            core.ring.since(1).map(|v| v.len()),
            None,
            "nothing before the first client"
        );
        handle(&mut core, &dispatch("TYPING_START", 3, "{}"));
        assert_eq!(core.ring.since(2).map(|v| v.len()), Some(1));
        // A new session upstream: the ring stops until a client is served again.
        handle(&mut core, READY);
        handle(&mut core, &dispatch("TYPING_START", 2, "{}"));
        assert_eq!(core.ring.len_bytes().0, 0);
    }

    #[test]
    fn a_new_ready_resets_and_numbering_goes_on() {
        let mut core = Pipeline::new(Flags::default());
        handle(&mut core, READY);
        handle(&mut core, &dispatch("TYPING_START", 2, "{}"));
        assert!(matches!(
            handle(&mut core, READY),
            Some(ShardEvent::Reset { index: 3 })
        ));
        assert_eq!(
            handle(&mut core, &dispatch("TYPING_START", 2, "{}")).map(|e| e.index()),
            Some(4),
            "s starts again at the new READY"
        );
    }

    #[test]
    fn bad_payloads_are_counted_and_dropped() {
        let mut core = Pipeline::new(Flags::default());
        handle(&mut core, READY);
        assert!(handle(&mut core, "not json").is_none());
        assert_eq!(core.malformed, 1);
        // Broken `d` of a dispatch the cache needs: counted, handed on anyway.
        let broken = dispatch("CHANNEL_UPDATE", 2, r#"{"id":[}"#);
        assert!(handle(&mut core, &broken).is_some());
        assert_eq!(core.cache_errors, 1);
    }
}
