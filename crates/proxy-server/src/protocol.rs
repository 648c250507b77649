//! The gateway protocol towards one client, without I/O, in quinn's shape:
//! `handle_payload` takes what the client sends and says what to do about
//! it; `poll_timeout` says when the client's heartbeat is due.
//!
//! The connection task feeds it and carries out what it asks: answer a
//! heartbeat, serve an IDENTIFY or a RESUME (which need the shard pool and
//! the session table), forward a command upstream, or close with Discord's
//! close code.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use sonic_rs::{JsonContainerTrait, JsonValueTrait, Value};
use tokio::time::Instant;

/// Discord's limit on a client payload.
pub(crate) const MAX_PAYLOAD: usize = 4096;
/// Discord's limit on client payloads: this many per [`RATE_WINDOW`].
const RATE_LIMIT: usize = 120;
const RATE_WINDOW: Duration = Duration::from_mins(1);

/// A close code and its reason, as Discord sends them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Close {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
}

impl Close {
    pub(crate) const UNKNOWN_ERROR: u16 = 4000;
    pub(crate) const UNKNOWN_OPCODE: u16 = 4001;
    pub(crate) const DECODE_ERROR: u16 = 4002;
    pub(crate) const NOT_AUTHENTICATED: u16 = 4003;
    pub(crate) const AUTHENTICATION_FAILED: u16 = 4004;
    pub(crate) const ALREADY_AUTHENTICATED: u16 = 4005;
    pub(crate) const RATE_LIMITED: u16 = 4008;
    pub(crate) const SESSION_TIMED_OUT: u16 = 4009;
    pub(crate) const INVALID_SHARD: u16 = 4010;

    pub(crate) const fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason }
    }
}

/// A client's IDENTIFY, as far as the proxy reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Identify {
    /// The token, without `Bot `.
    pub(crate) token: String,
    /// `[shard_id, num_shards]`; `[0, 1]` when absent, as Discord.
    pub(crate) shard: [u32; 2],
    /// `compress`: payload compression (unless the query asked for
    /// transport compression).
    pub(crate) compress: bool,
}

/// A client's RESUME.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Resume {
    pub(crate) token: String,
    pub(crate) session_id: String,
    /// The last `s` the client saw; `None` for `null`.
    pub(crate) seq: Option<u64>,
}

/// A command for the upstream shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Command {
    pub(crate) op: u8,
    /// The guild it is about (ops 4 and 8; op 31's first guild).
    pub(crate) guild_id: Option<u64>,
    /// Op 8's `nonce`, to route its chunks back.
    pub(crate) nonce: Option<String>,
    /// The payload as the client sent it (validated JSON).
    pub(crate) payload: Bytes,
}

/// What the connection should do about a client payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// Answer with a `HEARTBEAT_ACK`.
    Heartbeat,
    /// Serve an IDENTIFY.
    Identify(Identify),
    /// Serve a RESUME.
    Resume(Resume),
    /// Forward a command upstream.
    Command(Command),
    /// Close the connection.
    Close(Close),
}

/// One client connection's protocol state.
#[derive(Debug)]
pub(crate) struct Protocol {
    authenticated: bool,
    interval: Duration,
    /// When the client must have sent its next heartbeat.
    deadline: Instant,
    /// When each payload of the last minute came.
    recent: VecDeque<Instant>,
}

impl Protocol {
    pub(crate) fn new(interval: Duration, now: Instant) -> Self {
        Self {
            authenticated: false,
            interval,
            deadline: now + interval + interval / 2,
            recent: VecDeque::new(),
        }
    }

    /// HELLO's payload.
    pub(crate) fn hello(&self) -> Bytes {
        Bytes::from(format!(
            r#"{{"t":null,"s":null,"op":10,"d":{{"heartbeat_interval":{}}}}}"#,
            self.interval.as_millis()
        ))
    }

    /// When the client must have sent a heartbeat; past it, close with
    /// [`Protocol::timed_out`].
    pub(crate) fn poll_timeout(&self) -> Instant {
        self.deadline
    }

    /// The close for a client that stopped heartbeating (resumable).
    pub(crate) fn timed_out() -> Close {
        Close::new(Close::SESSION_TIMED_OUT, "no heartbeat for 1.5 intervals")
    }

    /// The session was served: commands are allowed, IDENTIFY is not.
    pub(crate) fn authenticated(&mut self) {
        self.authenticated = true;
    }

    /// The session ended under the client (op 9 `false`): it may identify
    /// again on this connection.
    pub(crate) fn unauthenticated(&mut self) {
        self.authenticated = false;
    }

    /// Takes one text payload from the client.
    pub(crate) fn handle_payload(&mut self, payload: &[u8], now: Instant) -> Request {
        if payload.len() > MAX_PAYLOAD {
            return Request::Close(Close::new(Close::DECODE_ERROR, "payload over 4096 bytes"));
        }
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= RATE_WINDOW)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        if self.recent.len() > RATE_LIMIT {
            return Request::Close(Close::new(
                Close::RATE_LIMITED,
                "more than 120 payloads in 60 s",
            ));
        }
        let Ok(value) = sonic_rs::from_slice::<Value>(payload) else {
            return Request::Close(Close::new(Close::DECODE_ERROR, "payload is not valid JSON"));
        };
        let Some(op) = value.get("op").and_then(JsonValueTrait::as_u64) else {
            return Request::Close(Close::new(Close::DECODE_ERROR, "payload has no numeric op"));
        };
        let d = value.get("d");
        match op {
            1 => {
                self.deadline = now + self.interval + self.interval / 2;
                Request::Heartbeat
            }
            2 | 6 if self.authenticated => Request::Close(Close::new(
                Close::ALREADY_AUTHENTICATED,
                "already identified on this connection",
            )),
            2 => d.and_then(identify).map_or(
                Request::Close(Close::new(Close::DECODE_ERROR, "IDENTIFY needs a token")),
                Request::Identify,
            ),
            6 => d.and_then(resume).map_or(
                Request::Close(Close::new(
                    Close::DECODE_ERROR,
                    "RESUME needs token, session_id and seq",
                )),
                Request::Resume,
            ),
            3 | 4 | 8 | 31 if !self.authenticated => Request::Close(Close::new(
                Close::NOT_AUTHENTICATED,
                "identify before sending commands",
            )),
            3 | 4 | 8 | 31 => {
                let guild_id = d.and_then(|d| {
                    d.get("guild_id")
                        .or_else(|| d.get("guild_ids").and_then(|ids| ids.get(0)))
                        .and_then(snowflake)
                });
                if matches!(op, 4 | 8) && guild_id.is_none() {
                    return Request::Close(Close::new(
                        Close::DECODE_ERROR,
                        "command needs a guild_id",
                    ));
                }
                let nonce = d
                    .and_then(|d| d.get("nonce"))
                    .and_then(|n| n.as_str())
                    .map(str::to_owned);
                Request::Command(Command {
                    op: u8::try_from(op).unwrap_or(0),
                    guild_id,
                    nonce,
                    payload: Bytes::copy_from_slice(payload),
                })
            }
            _ if !self.authenticated && op != 1 => Request::Close(Close::new(
                Close::NOT_AUTHENTICATED,
                "identify before sending anything but heartbeats",
            )),
            _ => Request::Close(Close::new(Close::UNKNOWN_OPCODE, "unknown opcode")),
        }
    }
}

/// A snowflake written as a string or as a number.
fn snowflake(value: &Value) -> Option<u64> {
    value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
}

fn token(d: &Value) -> Option<String> {
    let token = d.get("token")?.as_str()?;
    Some(token.strip_prefix("Bot ").unwrap_or(token).to_owned())
}

fn identify(d: &Value) -> Option<Identify> {
    let shard = match d.get("shard") {
        Some(shard) if !shard.is_null() => {
            let shard = shard.as_array()?;
            let id = u32::try_from(snowflake(shard.first()?)?).ok()?;
            let count = u32::try_from(snowflake(shard.get(1)?)?).ok()?;
            [id, count]
        }
        _ => [0, 1],
    };
    Some(Identify {
        token: token(d)?,
        shard,
        compress: d
            .get("compress")
            .and_then(JsonValueTrait::as_bool)
            .unwrap_or(false),
    })
}

fn resume(d: &Value) -> Option<Resume> {
    let seq = d.get("seq")?;
    Some(Resume {
        token: token(d)?,
        session_id: d.get("session_id")?.as_str()?.to_owned(),
        seq: if seq.is_null() {
            None
        } else {
            Some(seq.as_u64()?)
        },
    })
}

/// Whether two tokens are equal, in time that depends only on their
/// lengths.
pub(crate) fn same_token(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut difference = u8::from(a.len() != b.len());
    for (x, y) in a.iter().zip(b) {
        difference |= x ^ y;
    }
    difference == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protocol() -> (Protocol, Instant) {
        let now = Instant::now();
        (Protocol::new(Duration::from_secs(40), now), now)
    }

    fn close_code(request: Request) -> u16 {
        match request {
            Request::Close(close) => close.code,
            other => panic!("expected a close, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn every_identify_shape_real_clients_send_is_accepted() {
        let shapes = [
            (
                r#"{"op":2,"d":{"token":"Bot abc","intents":513,"properties":{"os":"linux"},"shard":[1,4]}}"#,
                [1, 4],
                false,
            ),
            (
                r#"{"d":{"token":"abc","intents":513,"properties":{},"presence":null,"compress":true},"op":2}"#,
                [0, 1],
                true,
            ),
            (
                r#"{"op":2,"d":{"token":"abc","capabilities":16381,"properties":{},"shard":["2","4"],"game":{"name":"x","type":0}}}"#,
                [2, 4],
                false,
            ),
            (
                r#"{"op":2,"d":{"token":"abc","intents":1,"properties":{},"shard":null,"large_threshold":250}}"#,
                [0, 1],
                false,
            ),
        ];
        for (payload, shard, compress) in shapes {
            let (mut p, now) = protocol();
            let expected = Identify {
                token: "abc".to_owned(),
                shard,
                compress,
            };
            assert_eq!(
                p.handle_payload(payload.as_bytes(), now),
                Request::Identify(expected),
                "{payload}"
            );
        }
    }

    #[tokio::test]
    async fn bad_input_gets_discords_close_codes() {
        let (mut p, now) = protocol();
        assert_eq!(
            p.handle_payload(br#"{"op":1,"d":null}"#, now),
            Request::Heartbeat,
            "heartbeats before identify"
        );
        assert_eq!(close_code(p.handle_payload(b"{not json", now)), 4002);
        assert_eq!(close_code(p.handle_payload(br#"{"d":{}}"#, now)), 4002);
        assert_eq!(
            close_code(p.handle_payload(br#"{"op":8,"d":{"guild_id":"1"}}"#, now)),
            4003
        );
        assert_eq!(
            close_code(p.handle_payload(br#"{"op":99,"d":{}}"#, now)),
            4003,
            "unknown op before identify"
        );
        assert_eq!(
            close_code(p.handle_payload(br#"{"op":2,"d":{"intents":1}}"#, now)),
            4002,
            "no token"
        );
        let big = format!(r#"{{"op":1,"d":"{}"}}"#, "x".repeat(MAX_PAYLOAD));
        assert_eq!(close_code(p.handle_payload(big.as_bytes(), now)), 4002);
        p.authenticated();
        assert_eq!(
            close_code(p.handle_payload(br#"{"op":2,"d":{"token":"abc"}}"#, now)),
            4005
        );
        assert_eq!(
            close_code(p.handle_payload(br#"{"op":99,"d":{}}"#, now)),
            4001
        );
        assert_eq!(
            close_code(p.handle_payload(br#"{"op":8,"d":{"query":""}}"#, now)),
            4002,
            "op 8 needs a guild"
        );
    }

    #[tokio::test]
    async fn commands_carry_their_guild_and_nonce() {
        let (mut p, now) = protocol();
        p.authenticated();
        let payload = br#"{"op":8,"d":{"guild_id":123,"query":"","limit":0,"nonce":"n1"}}"#;
        let Request::Command(command) = p.handle_payload(payload, now) else {
            panic!()
        };
        assert_eq!(
            (command.op, command.guild_id, command.nonce.as_deref()),
            (8, Some(123), Some("n1"))
        );
        assert_eq!(command.payload, &payload[..]);
        let Request::Command(sounds) =
            p.handle_payload(br#"{"op":31,"d":{"guild_ids":["77"]}}"#, now)
        else {
            panic!()
        };
        assert_eq!(sounds.guild_id, Some(77));
        let Request::Command(presence) = p.handle_payload(
            br#"{"op":3,"d":{"status":"idle","since":null,"activities":[],"afk":false}}"#,
            now,
        ) else {
            panic!()
        };
        assert_eq!(presence.guild_id, None);
    }

    #[tokio::test]
    async fn a_121st_payload_within_a_minute_is_rate_limited() {
        let (mut p, now) = protocol();
        for i in 0..120 {
            assert_eq!(
                p.handle_payload(br#"{"op":1,"d":null}"#, now + Duration::from_millis(i)),
                Request::Heartbeat
            );
        }
        assert_eq!(
            close_code(p.handle_payload(br#"{"op":1,"d":null}"#, now + Duration::from_secs(1))),
            4008
        );
        let (mut p, now) = protocol();
        for i in 0..200u64 {
            let at = now + Duration::from_millis(i * 600);
            assert_eq!(
                p.handle_payload(br#"{"op":1,"d":null}"#, at),
                Request::Heartbeat,
                "100 a minute is fine"
            );
        }
    }

    #[tokio::test]
    async fn heartbeats_move_the_deadline() {
        let (mut p, now) = protocol();
        assert_eq!(p.poll_timeout(), now + Duration::from_mins(1));
        p.handle_payload(br#"{"op":1,"d":5}"#, now + Duration::from_secs(30));
        assert_eq!(p.poll_timeout(), now + Duration::from_secs(90));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "abcd"));
        assert!(!same_token("", "a"));
    }

    #[tokio::test]
    async fn resume_reads_its_fields() {
        let (mut p, now) = protocol();
        let request = p.handle_payload(
            br#"{"op":6,"d":{"token":"Bot t","session_id":"s1","seq":42}}"#,
            now,
        );
        assert_eq!(
            request,
            Request::Resume(Resume {
                token: "t".to_owned(),
                session_id: "s1".to_owned(),
                seq: Some(42)
            })
        );
        assert_eq!(
            close_code(p.handle_payload(br#"{"op":6,"d":{"token":"t"}}"#, now)),
            4002
        );
    }
}
