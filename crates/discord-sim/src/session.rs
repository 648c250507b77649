//! A gateway session: its sequence numbers and the replay buffer that
//! RESUME draws from. A session outlives its connections; a connection
//! attaches to one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::KeyOrder;

/// Where a session's payloads go: the attached connection.
pub(crate) type Outbox = mpsc::UnboundedSender<Bytes>;

#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) shard: u32,
    capacity: usize,
    key_order: KeyOrder,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    seq: u64,
    /// The last dispatches, oldest first, with their sequence numbers.
    replay: VecDeque<(u64, Bytes)>,
    attached: Option<(u64, Outbox)>,
    /// Since when no connection is attached.
    detached_at: Option<Instant>,
    invalid: bool,
}

/// Why a RESUME cannot continue a session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ResumeError {
    /// The session was invalidated.
    Invalid,
    /// Events after `seq` are no longer in the buffer.
    TooOld,
}

impl Session {
    pub(crate) fn new(id: String, shard: u32, capacity: usize, key_order: KeyOrder) -> Arc<Self> {
        Arc::new(Self {
            id,
            shard,
            capacity,
            key_order,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives `t`/`d` the next sequence number, keeps it for RESUME and sends
    /// it to the attached connection. Returns its sequence number.
    pub(crate) fn emit(&self, t: &str, d: &str) -> u64 {
        let mut state = self.state();
        self.emit_locked(&mut state, t, d)
    }

    fn emit_locked(&self, state: &mut State, t: &str, d: &str) -> u64 {
        state.seq += 1;
        let seq = state.seq;
        let payload = Bytes::from(envelope(self.key_order, t, seq, d));
        if state.replay.len() == self.capacity {
            state.replay.pop_front();
        }
        state.replay.push_back((seq, payload.clone()));
        if let Some((_, outbox)) = &state.attached
            && outbox.send(payload).is_err()
        {
            state.attached = None;
            state.detached_at = Some(Instant::now());
        }
        seq
    }

    /// Attaches a new connection for an IDENTIFY.
    pub(crate) fn attach(&self, connection: u64, outbox: Outbox) {
        let mut state = self.state();
        state.attached = Some((connection, outbox));
        state.detached_at = None;
    }

    /// Attaches a connection for a RESUME from `after`: sends every dispatch
    /// after it, then `RESUMED` with its own sequence number.
    pub(crate) fn resume(
        &self,
        connection: u64,
        outbox: Outbox,
        after: u64,
    ) -> Result<u64, ResumeError> {
        let mut state = self.state();
        if state.invalid {
            return Err(ResumeError::Invalid);
        }
        let first_kept = state.replay.front().map_or(state.seq + 1, |(seq, _)| *seq);
        if after > state.seq || after + 1 < first_kept {
            return Err(ResumeError::TooOld);
        }
        for (_, payload) in state.replay.iter().filter(|(seq, _)| *seq > after) {
            // A closed outbox is seen on the next send.
            let _ = outbox.send(payload.clone());
        }
        state.attached = Some((connection, outbox));
        state.detached_at = None;
        Ok(self.emit_locked(
            &mut state,
            "RESUMED",
            r#"{"_trace":["[\"discord-sim\",{\"micros\":0}]"]}"#,
        ))
    }

    /// Detaches `connection` if it is the attached one.
    pub(crate) fn detach(&self, connection: u64) {
        let mut state = self.state();
        if state
            .attached
            .as_ref()
            .is_some_and(|(id, _)| *id == connection)
        {
            state.attached = None;
            state.detached_at = Some(Instant::now());
        }
    }

    /// Whether the session has had no connection for longer than `ttl`.
    pub(crate) fn expired(&self, now: Instant, ttl: std::time::Duration) -> bool {
        self.state()
            .detached_at
            .is_some_and(|since| now.duration_since(since) > ttl)
    }

    /// Ends the session: no RESUME can continue it.
    pub(crate) fn invalidate(&self) {
        let mut state = self.state();
        state.invalid = true;
        state.attached = None;
        state.replay.clear();
    }

    pub(crate) fn is_invalid(&self) -> bool {
        self.state().invalid
    }

    /// The last sequence number given.
    pub(crate) fn seq(&self) -> u64 {
        self.state().seq
    }
}

/// The dispatch payload `t`/`seq`/`d` in the configured key order.
fn envelope(order: KeyOrder, t: &str, seq: u64, d: &str) -> String {
    if order == KeyOrder::Discord {
        return format!(r#"{{"t":"{t}","s":{seq},"op":0,"d":{d}}}"#);
    }
    // A nested `"s"` first in every object `d`.
    let nested;
    let d = match d.strip_prefix('{') {
        Some(rest) => {
            let sep = if rest.trim_start().starts_with('}') {
                ""
            } else {
                ","
            };
            nested = format!(r#"{{"s":{{"s":{}}}{sep}{rest}"#, seq.wrapping_mul(7));
            nested.as_str()
        }
        None => d,
    };
    // READY and RESUMED keep Discord's envelope order (with the nested
    // `"s"` in `d` all the same): gateway clients, twilight among them,
    // read their session from them by text search, as Discord's order
    // allows; the dispatches between them are what a consumer must read by
    // structure.
    let order = if matches!(t, "READY" | "RESUMED") {
        0
    } else {
        seq % 4
    };
    match order {
        0 => format!(r#"{{"t":"{t}","s":{seq},"op":0,"d":{d}}}"#),
        1 => format!(r#"{{"d":{d},"op":0,"s":{seq},"t":"{t}"}}"#),
        2 => format!("{{ \"op\" : 0 ,\n  \"d\" : {d} ,\t\"t\" : \"{t}\" , \"s\" :{seq} }}\n"),
        _ => format!(r#"{{"s":{seq},"d":{d},"t":"{t}","op":0}}"#),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(rx: &mut mpsc::UnboundedReceiver<Bytes>) -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn resume_replays_what_was_missed_then_resumed() {
        let session = Session::new("s".into(), 0, 3, KeyOrder::Discord);
        let (tx, mut rx) = mpsc::unbounded_channel();
        session.attach(1, tx);
        session.emit("A", "{}");
        session.detach(1);
        session.emit("B", "{}");
        session.emit("C", "{}");
        assert_eq!(drain(&mut rx).len(), 1);

        let (tx, mut rx) = mpsc::unbounded_channel();
        assert_eq!(session.resume(2, tx, 1), Ok(4));
        assert_eq!(
            drain(&mut rx),
            [
                r#"{"t":"B","s":2,"op":0,"d":{}}"#,
                r#"{"t":"C","s":3,"op":0,"d":{}}"#,
                r#"{"t":"RESUMED","s":4,"op":0,"d":{"_trace":["[\"discord-sim\",{\"micros\":0}]"]}}"#,
            ]
        );
    }

    #[test]
    fn mixed_envelopes_are_json_with_the_same_top_level() {
        for seq in 1..=8 {
            for d in ["{}", r#"{"a":[1,{"s":2}]}"#, "null", "12"] {
                let text = envelope(KeyOrder::Mixed, "X", seq, d);
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(
                    (v["t"].as_str(), v["s"].as_u64(), v["op"].as_u64()),
                    (Some("X"), Some(seq), Some(0))
                );
                if d.starts_with('{') {
                    assert_eq!(v["d"]["s"]["s"], seq * 7, "{text}");
                } else {
                    assert_eq!(v["d"].to_string(), d);
                }
            }
        }
        assert!(envelope(KeyOrder::Mixed, "X", 1, "{}").starts_with(r#"{"d":"#));
    }

    #[test]
    fn resume_past_the_buffer_or_of_an_invalid_session_fails() {
        let session = Session::new("s".into(), 0, 2, KeyOrder::Discord);
        for _ in 0..5 {
            session.emit("A", "{}");
        }
        let (tx, _rx) = mpsc::unbounded_channel();
        assert_eq!(session.resume(1, tx.clone(), 2), Err(ResumeError::TooOld));
        assert_eq!(session.resume(1, tx.clone(), 9), Err(ResumeError::TooOld));
        assert_eq!(session.resume(1, tx.clone(), 3), Ok(6));
        session.invalidate();
        assert_eq!(session.resume(1, tx, 6), Err(ResumeError::Invalid));
    }
}
