//! The gateway protocol towards one client, without I/O, in quinn's shape:
//! `handle_payload` takes what the client sends and says what to do about
//! it; `poll_timeout` says when the client's heartbeat is due.
//!
//! The connection task feeds it and carries out what it asks: answer a
//! heartbeat, serve an IDENTIFY or a RESUME (which need the shard pool and
//! the session table), forward a command upstream, or close with Discord's
//! close code.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use shard_pool::Route;
use sonic_rs::{JsonContainerTrait, JsonValueTrait, Object, Value};
use tokio::time::Instant;

/// Discord's limit on client payloads: this many per [`RATE_WINDOW`].
const RATE_LIMIT: usize = 120;
const RATE_WINDOW: Duration = Duration::from_mins(1);

/// The most user ids one `REQUEST_GUILD_MEMBERS` may name, as Discord.
const MAX_USER_IDS: usize = 100;
/// The longest op 8 `nonce` Discord gives back.
const MAX_NONCE: usize = 32;

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

/// The bounds one connection's protocol keeps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProtocolLimits {
    /// HELLO's heartbeat interval.
    pub(crate) heartbeat_interval: Duration,
    /// The most bytes a payload may have.
    pub(crate) max_message_bytes: usize,
    /// How long the client may take to IDENTIFY or RESUME.
    pub(crate) identify_timeout: Duration,
    /// The most heartbeats a client may send before it identifies.
    pub(crate) max_early_heartbeats: usize,
}

impl ProtocolLimits {
    /// As many heartbeats before IDENTIFY as twice the identify timeout
    /// can hold at the heartbeat interval, and a few more (a server op 1
    /// asks for one).
    pub(crate) fn early_heartbeats(interval: Duration, identify_timeout: Duration) -> usize {
        let per_interval = identify_timeout.as_millis() / interval.as_millis().max(1);
        usize::try_from(per_interval.saturating_mul(2))
            .unwrap_or(usize::MAX)
            .saturating_add(8)
            .min(1024)
    }
}

/// One client connection's protocol state.
#[derive(Debug)]
pub(crate) struct Protocol {
    limits: ProtocolLimits,
    authenticated: bool,
    /// When the client must have sent its next heartbeat.
    deadline: Instant,
    /// When the client must have identified or resumed.
    identify_deadline: Instant,
    /// Heartbeats before the first IDENTIFY or RESUME.
    early_heartbeats: usize,
    /// When each payload of the last minute came.
    recent: VecDeque<Instant>,
}

impl Protocol {
    pub(crate) fn new(limits: ProtocolLimits, now: Instant) -> Self {
        let interval = limits.heartbeat_interval;
        Self {
            limits,
            authenticated: false,
            deadline: now + interval + interval / 2,
            identify_deadline: now + limits.identify_timeout,
            early_heartbeats: 0,
            recent: VecDeque::new(),
        }
    }

    /// HELLO's payload for a heartbeat interval.
    pub(crate) fn hello(interval: Duration) -> Bytes {
        Bytes::from(format!(
            r#"{{"t":null,"s":null,"op":10,"d":{{"heartbeat_interval":{}}}}}"#,
            interval.as_millis()
        ))
    }

    /// When the client must have sent something; past it, close with
    /// [`Protocol::timed_out`].
    pub(crate) fn poll_timeout(&self) -> Instant {
        if self.authenticated {
            self.deadline
        } else {
            self.deadline.min(self.identify_deadline)
        }
    }

    /// The close for a client past [`Protocol::poll_timeout`]: 4003 if it
    /// never identified in time, else 4009 (it stopped heartbeating;
    /// resumable).
    pub(crate) fn timed_out(&self, now: Instant) -> Close {
        if !self.authenticated && now >= self.identify_deadline {
            Close::new(
                Close::NOT_AUTHENTICATED,
                "no IDENTIFY or RESUME in time after HELLO",
            )
        } else {
            Close::new(Close::SESSION_TIMED_OUT, "no heartbeat for 1.5 intervals")
        }
    }

    /// The session was served: commands are allowed, IDENTIFY is not.
    pub(crate) fn authenticated(&mut self) {
        self.authenticated = true;
    }

    /// The session ended under the client (op 9 `false`): it may identify
    /// again on this connection, within the identify timeout.
    pub(crate) fn unauthenticated(&mut self, now: Instant) {
        self.authenticated = false;
        self.identify_deadline = now + self.limits.identify_timeout;
    }

    /// Takes one text payload from the client.
    pub(crate) fn handle_payload(&mut self, payload: &[u8], now: Instant) -> Request {
        if payload.len() > self.limits.max_message_bytes {
            return Request::Close(Close::new(Close::DECODE_ERROR, "payload too large"));
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
        let (value, op) = match envelope(payload) {
            Ok(read) => read,
            Err(reason) => return Request::Close(Close::new(Close::DECODE_ERROR, reason)),
        };
        let d = value.get("d");
        match op {
            1 if !self.authenticated
                && self.early_heartbeats >= self.limits.max_early_heartbeats =>
            {
                Request::Close(Close::new(
                    Close::RATE_LIMITED,
                    "too many heartbeats before IDENTIFY",
                ))
            }
            1 => {
                if !self.authenticated {
                    self.early_heartbeats += 1;
                }
                let interval = self.limits.heartbeat_interval;
                self.deadline = now + interval + interval / 2;
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
                let op = u8::try_from(op).unwrap_or(0);
                match command(op, d) {
                    Ok((guild_id, nonce)) => Request::Command(Command {
                        op,
                        guild_id,
                        nonce,
                        payload: Bytes::copy_from_slice(payload),
                    }),
                    Err(reason) => Request::Close(Close::new(Close::DECODE_ERROR, reason)),
                }
            }
            _ if !self.authenticated && op != 1 => Request::Close(Close::new(
                Close::NOT_AUTHENTICATED,
                "identify before sending anything but heartbeats",
            )),
            _ => Request::Close(Close::new(Close::UNKNOWN_OPCODE, "unknown opcode")),
        }
    }
}

/// The top level of a client's payload, read and checked: JSON, an object
/// with each key once, a numeric `op`, a `d` with each key once. The value
/// and its `op`, or what is wrong.
fn envelope(payload: &[u8]) -> Result<(Value, u64), &'static str> {
    let value = sonic_rs::from_slice::<Value>(payload).map_err(|_| "payload is not valid JSON")?;
    let object = value.as_object().ok_or("payload is not an object")?;
    if has_duplicate_key(object) {
        return Err("payload has a key twice");
    }
    let op = value
        .get("op")
        .and_then(JsonValueTrait::as_u64)
        .ok_or("payload has no numeric op")?;
    if value
        .get("d")
        .and_then(Value::as_object)
        .is_some_and(has_duplicate_key)
    {
        return Err("payload's d has a key twice");
    }
    Ok((value, op))
}

/// Checks a command that came from another node's client, as
/// [`Protocol::handle_payload`] checks a local client's (the same reasons
/// as its 4002 closes), and that `route` is the one the command gives (an
/// op 8's nonce, an op 4's guild and channel): what is wrong, if anything.
/// The client's node checked it already; this is the shard's node not
/// taking that on trust.
pub(crate) fn remote_command(payload: &[u8], route: &Route) -> Result<(), &'static str> {
    let (value, op) = envelope(payload)?;
    let op: u8 = match op {
        3 => 3,
        4 => 4,
        8 => 8,
        31 => 31,
        _ => return Err("not a command (op 3, 4, 8 or 31)"),
    };
    let d = value.get("d");
    let (guild, nonce) = command(op, d)?;
    let given = match (op, nonce, guild) {
        (8, Some(nonce), _) => Route::Chunks { nonce },
        (4, _, Some(guild)) => Route::Voice {
            guild,
            channel: d.and_then(|d| d.get("channel_id")).and_then(snowflake),
        },
        _ => Route::Plain,
    };
    if *route == given {
        Ok(())
    } else {
        Err("its route is not the one the command gives")
    }
}

/// A snowflake as Discord's clients send it: a string of digits, or (as
/// discord.py sends op 4's) a number.
pub(crate) fn snowflake(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        let text = value.as_str()?;
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    })
}

/// Whether an object has a key twice: Discord may read the last where the
/// proxy routed by the first.
fn has_duplicate_key(object: &Object) -> bool {
    if object.len() <= 8 {
        let keys: Vec<&str> = object.iter().map(|(k, _)| k).collect();
        return keys.iter().enumerate().any(|(i, k)| keys[..i].contains(k));
    }
    let mut seen = HashSet::with_capacity(object.len());
    object.iter().any(|(k, _)| !seen.insert(k))
}

/// Checks a command against the shape Discord documents for its op, so
/// that no client can make Discord close the shard every client shares;
/// returns the guild it is about (ops 4 and 8; op 31's first) and op 8's
/// nonce, or what is wrong.
fn command(op: u8, d: Option<&Value>) -> Result<(Option<u64>, Option<String>), &'static str> {
    let d = d
        .and_then(Value::as_object)
        .ok_or("a command's d must be an object")?;
    let field = |key: &str| d.get(&key);
    let is_bool = |key: &str| field(key).is_some_and(JsonValueTrait::is_boolean);
    let guild = |key: &'static str| field(key).and_then(snowflake);
    match op {
        3 => {
            let status = field("status").and_then(JsonValueTrait::as_str);
            if !matches!(
                status,
                Some("online" | "dnd" | "idle" | "invisible" | "offline")
            ) {
                return Err("op 3: status must be online, dnd, idle, invisible or offline");
            }
            if !field("since").is_some_and(|v| v.is_null() || v.as_u64().is_some()) {
                return Err("op 3: since must be null or a timestamp in milliseconds");
            }
            if !is_bool("afk") {
                return Err("op 3: afk must be a boolean");
            }
            let activities = field("activities")
                .and_then(Value::as_array)
                .ok_or("op 3: activities must be an array")?;
            for activity in activities {
                let named = activity.get("name").is_some_and(JsonValueTrait::is_str);
                let typed = activity
                    .get("type")
                    .and_then(JsonValueTrait::as_u64)
                    .is_some_and(|t| t <= 6);
                if !(activity.is_object() && named && typed) {
                    return Err("op 3: each activity needs a string name and a type from 0 to 6");
                }
            }
            Ok((None, None))
        }
        4 => {
            let guild_id = guild("guild_id").ok_or("op 4: guild_id must be a snowflake")?;
            if !field("channel_id").is_some_and(|v| v.is_null() || snowflake(v).is_some()) {
                return Err("op 4: channel_id must be a snowflake or null");
            }
            if !is_bool("self_mute") || !is_bool("self_deaf") {
                return Err("op 4: self_mute and self_deaf must be booleans");
            }
            Ok((Some(guild_id), None))
        }
        8 => {
            let guild_id = guild("guild_id").ok_or("op 8: guild_id must be a snowflake")?;
            match (field("query"), field("user_ids")) {
                (Some(query), None) => {
                    if !query.is_str() {
                        return Err("op 8: query must be a string");
                    }
                    if field("limit").and_then(JsonValueTrait::as_u64).is_none() {
                        return Err("op 8: limit must be a number with query");
                    }
                }
                (None, Some(ids)) => {
                    let valid = match ids.as_array() {
                        Some(ids) => {
                            ids.len() <= MAX_USER_IDS
                                && ids.iter().all(|id| snowflake(id).is_some())
                        }
                        None => snowflake(ids).is_some(),
                    };
                    if !valid {
                        return Err("op 8: user_ids must be a snowflake or up to 100 of them");
                    }
                    if field("limit").is_some_and(|l| l.as_u64().is_none()) {
                        return Err("op 8: limit must be a number");
                    }
                }
                _ => return Err("op 8: exactly one of query and user_ids"),
            }
            if field("presences").is_some_and(|p| !p.is_boolean()) {
                return Err("op 8: presences must be a boolean");
            }
            let nonce = match field("nonce") {
                None => None,
                Some(nonce) => match nonce.as_str() {
                    Some(nonce) if nonce.len() <= MAX_NONCE => Some(nonce.to_owned()),
                    _ => return Err("op 8: nonce must be a string of at most 32 bytes"),
                },
            };
            Ok((Some(guild_id), nonce))
        }
        _ => {
            let ids = field("guild_ids")
                .and_then(Value::as_array)
                .filter(|ids| !ids.is_empty())
                .ok_or("op 31: guild_ids must be an array of snowflakes")?;
            if !ids.iter().all(|id| snowflake(id).is_some()) {
                return Err("op 31: guild_ids must be an array of snowflakes");
            }
            Ok((ids.first().and_then(snowflake), None))
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    use std::fmt::Write as _;

    const LIMITS: ProtocolLimits = ProtocolLimits {
        heartbeat_interval: Duration::from_secs(40),
        max_message_bytes: 4096,
        identify_timeout: Duration::from_secs(100),
        max_early_heartbeats: 3,
    };

    fn protocol() -> (Protocol, Instant) {
        let now = Instant::now();
        (Protocol::new(LIMITS, now), now)
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
        let big = format!(r#"{{"op":1,"d":"{}"}}"#, "x".repeat(4096));
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
        p.authenticated();
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
        p.authenticated();
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

    #[tokio::test]
    async fn a_client_that_never_identifies_is_closed_with_4003() {
        let (mut p, now) = protocol();
        for i in 1..=3 {
            let at = now + Duration::from_secs(30 * i);
            assert_eq!(
                p.handle_payload(br#"{"op":1,"d":null}"#, at),
                Request::Heartbeat
            );
        }
        assert_eq!(p.poll_timeout(), now + Duration::from_secs(100));
        let close = p.timed_out(now + Duration::from_secs(100));
        assert_eq!(close.code, 4003, "{close:?}");
        // Past the prelude of heartbeats before IDENTIFY: rate limited.
        assert_eq!(
            close_code(p.handle_payload(br#"{"op":1,"d":null}"#, now + Duration::from_secs(99))),
            4008
        );
        // Once identified, only heartbeats matter.
        let (mut p, now) = protocol();
        p.authenticated();
        assert_eq!(p.poll_timeout(), now + Duration::from_mins(1));
        assert_eq!(p.timed_out(now + Duration::from_secs(200)).code, 4009);
        // An op 9 gives the client the identify timeout again.
        p.unauthenticated(now + Duration::from_secs(50));
        assert_eq!(p.poll_timeout(), now + Duration::from_mins(1));
        p.handle_payload(br#"{"op":1,"d":null}"#, now + Duration::from_secs(99));
        assert_eq!(
            p.poll_timeout(),
            now + Duration::from_secs(150),
            "the identify deadline"
        );
    }

    #[tokio::test]
    async fn duplicate_keys_are_refused_at_the_top_and_in_d() {
        for payload in [
            &br#"{"op":1,"op":2,"d":null}"#[..],
            br#"{"op":8,"d":{"guild_id":"1","guild_id":"4194304","query":"","limit":0}}"#,
        ] {
            let (mut p, now) = protocol();
            p.authenticated();
            assert_eq!(close_code(p.handle_payload(payload, now)), 4002);
        }
        let many = (0..20).fold(String::new(), |mut keys, i| {
            let _ = write!(keys, r#""k{i}":1,"#);
            keys
        });
        let (mut p, now) = protocol();
        let payload = format!(r#"{{{many}"k3":2,"op":1,"d":null}}"#);
        assert_eq!(close_code(p.handle_payload(payload.as_bytes(), now)), 4002);
    }

    #[tokio::test]
    async fn each_command_must_have_discords_shape() {
        let bad = [
            r#"{"op":3,"d":"x"}"#,
            r#"{"op":3,"d":{"since":null,"activities":[],"status":"busy","afk":false}}"#,
            r#"{"op":3,"d":{"since":null,"activities":[{"name":1,"type":0}],"status":"idle","afk":false}}"#,
            r#"{"op":3,"d":{"since":"x","activities":[],"status":"idle","afk":false}}"#,
            r#"{"op":3,"d":{"since":null,"activities":[],"status":"idle"}}"#,
            r#"{"op":4,"d":{"guild_id":"x","channel_id":null,"self_mute":false,"self_deaf":false}}"#,
            r#"{"op":4,"d":{"guild_id":"1","self_mute":false,"self_deaf":false}}"#,
            r#"{"op":4,"d":{"guild_id":"1","channel_id":"2","self_mute":0,"self_deaf":false}}"#,
            r#"{"op":8,"d":{"guild_id":"1"}}"#,
            r#"{"op":8,"d":{"guild_id":"1","query":"","limit":0,"user_ids":["2"]}}"#,
            r#"{"op":8,"d":{"guild_id":"1","query":""}}"#,
            r#"{"op":8,"d":{"guild_id":"1","user_ids":["a"]}}"#,
            r#"{"op":8,"d":{"guild_id":"1","query":"","limit":0,"nonce":"0123456789abcdef0123456789abcdef0"}}"#,
            r#"{"op":8,"d":{"guild_id":"1","query":"","limit":0,"presences":"yes"}}"#,
            r#"{"op":31,"d":{"guild_ids":[]}}"#,
            r#"{"op":31,"d":{"guild_ids":["1",{}]}}"#,
            r#"{"op":31,"d":null}"#,
        ];
        for payload in bad {
            let (mut p, now) = protocol();
            p.authenticated();
            assert_eq!(
                close_code(p.handle_payload(payload.as_bytes(), now)),
                4002,
                "{payload}"
            );
        }
        let good = [
            r#"{"op":3,"d":{"since":null,"activities":[{"name":"x","type":0}],"status":"idle","afk":false}}"#,
            r#"{"op":3,"d":{"since":91879201,"activities":[],"status":"online","afk":true}}"#,
            r#"{"op":4,"d":{"guild_id":1,"channel_id":null,"self_mute":false,"self_deaf":true}}"#,
            r#"{"op":4,"d":{"guild_id":"1","channel_id":"2","self_mute":false,"self_deaf":false}}"#,
            r#"{"op":8,"d":{"guild_id":"1","user_ids":"2"}}"#,
            r#"{"op":8,"d":{"guild_id":"1","user_ids":["2","3"],"presences":true,"nonce":"abc"}}"#,
            r#"{"op":31,"d":{"guild_ids":["1",2]}}"#,
        ];
        for payload in good {
            let (mut p, now) = protocol();
            p.authenticated();
            assert!(
                matches!(
                    p.handle_payload(payload.as_bytes(), now),
                    Request::Command(_)
                ),
                "{payload}"
            );
        }
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

    #[test]
    fn another_nodes_command_is_checked_as_a_local_clients_and_its_route() {
        let op4 =
            br#"{"op":4,"d":{"guild_id":"5","channel_id":7,"self_mute":false,"self_deaf":true}}"#;
        let voice = Route::Voice {
            guild: 5,
            channel: Some(7),
        };
        assert_eq!(remote_command(op4, &voice), Ok(()));
        let op8 = br#"{"op":8,"d":{"guild_id":"5","query":"","limit":0,"nonce":"n1"}}"#;
        let chunks = Route::Chunks {
            nonce: "n1".to_owned(),
        };
        assert_eq!(remote_command(op8, &chunks), Ok(()));
        let op31 = br#"{"op":31,"d":{"guild_ids":["5","6"]}}"#;
        assert_eq!(remote_command(op31, &Route::Plain), Ok(()));
        // What a local client would be closed with 4002 for.
        let bad: [&[u8]; 5] = [
            b"{",
            br#"{"op":3,"op":3,"d":{}}"#,
            br#"{"op":3,"d":{"status":"away","since":null,"afk":false,"activities":[]}}"#,
            br#"{"op":31,"d":{"guild_ids":["x"]}}"#,
            br#"{"op":2,"d":{"token":"t"}}"#,
        ];
        for payload in bad {
            assert!(remote_command(payload, &Route::Plain).is_err());
        }
        // A route other than the command's own.
        assert!(remote_command(op8, &Route::Plain).is_err());
        let elsewhere = Route::Voice {
            guild: 5,
            channel: None,
        };
        assert!(remote_command(op4, &elsewhere).is_err());
    }
}
