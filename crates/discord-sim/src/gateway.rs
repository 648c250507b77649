//! The gateway: one task per websocket connection, speaking Discord's
//! protocol against the shared world, sessions and shard streams.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, Payload, WebSocket, WebSocketError};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::BufWriter;
use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, sleep_until};
use wire_codec::{Compression, Encoder};

use crate::config::{KNOWN_INTENTS, PRIVILEGED_INTENTS};
use crate::log::ConnectionLog;
use crate::session::{ResumeError, Session};
use crate::{Control, Shared, lock};

/// Discord's limit on what a client may send in one frame.
const MAX_CLIENT_FRAME: usize = 4096;
/// The write buffer of a connection.
const WRITE_BUFFER: usize = 64 * 1024;
/// The most queued payloads written before a flush.
const WRITE_BATCH: usize = 256;

/// Discord's limit on commands per connection per minute.
const COMMANDS_PER_MINUTE: usize = 120;

/// What the reader task hands the connection task.
enum Inbound {
    Text(Vec<u8>),
    Ping(Vec<u8>),
    Close(Option<u16>),
    /// A frame over the reader's hard limit (1 MiB): it is not read.
    TooLarge,
    /// The socket failed or closed without a close frame.
    Gone,
}

/// How a connection ends.
enum End {
    /// Send a close frame with this code and reason.
    Close(u16, &'static str),
    /// Drop the TCP connection without a close frame.
    Cut,
    /// The peer is gone or closed; nothing more to send.
    Quiet,
}

/// Serves one upgraded websocket until it closes.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    mut ws: WebSocket<TokioIo<Upgraded>>,
    compression: Compression,
    query: &str,
) {
    let Ok(encoder) = Encoder::new(compression) else {
        let _ = ws
            .write_frame(Frame::close(4000, b"compression unavailable"))
            .await;
        return;
    };
    ws.set_auto_close(false);
    ws.set_auto_pong(false);
    // Frames up to 1 MiB are read and refused with 4002; larger ones are not
    // read at all (the connection is dropped), so a peer cannot make the sim
    // buffer more than that.
    ws.set_max_message_size(1 << 20);
    // Writes are buffered and flushed once per batch of queued payloads, so
    // that a busy stream costs one syscall per batch, not per dispatch.
    let (reader, writer) = ws.split(|stream| {
        let (read, write) = tokio::io::split(stream);
        (read, BufWriter::with_capacity(WRITE_BUFFER, write))
    });
    let (inbound_tx, inbound) = mpsc::channel(64);
    let reader = tokio::spawn(read_frames(FragmentCollectorRead::new(reader), inbound_tx));
    let connection = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let log = shared.log_connection(ConnectionLog::new(connection, query));
    let mut conn = Connection {
        log: log.clone(),
        shared,
        id: connection,
        writer,
        encoder,
        compression,
        out: Vec::new(),
        session: None,
        commands: VecDeque::new(),
    };
    let end = conn.run(inbound).await;
    if let Some(session) = &conn.session {
        session.detach(conn.id);
    }
    {
        let mut log = lock(&log);
        log.open = false;
        if let End::Close(code, _) = end {
            log.close_code = Some(code);
        }
    }
    match end {
        End::Close(code, reason) => {
            let _ = conn
                .writer
                .write_frame(Frame::close(code, reason.as_bytes()))
                .await;
            let _ = conn.writer.flush().await;
        }
        End::Cut | End::Quiet => {}
    }
    reader.abort();
}

async fn read_frames(
    mut reader: FragmentCollectorRead<tokio::io::ReadHalf<TokioIo<Upgraded>>>,
    inbound: mpsc::Sender<Inbound>,
) {
    let mut ignore = |_: Frame<'_>| async { Ok::<(), WebSocketError>(()) };
    loop {
        let item = match reader.read_frame(&mut ignore).await {
            Ok(frame) => match frame.opcode {
                OpCode::Text | OpCode::Binary => Inbound::Text(frame.payload.to_vec()),
                OpCode::Ping => Inbound::Ping(frame.payload.to_vec()),
                OpCode::Close => {
                    let code = frame
                        .payload
                        .get(..2)
                        .map(|b| u16::from_be_bytes([b[0], b[1]]));
                    let _ = inbound.send(Inbound::Close(code)).await;
                    return;
                }
                _ => continue,
            },
            Err(WebSocketError::FrameTooLarge) => Inbound::TooLarge,
            Err(_) => {
                let _ = inbound.send(Inbound::Gone).await;
                return;
            }
        };
        if inbound.send(item).await.is_err() {
            return;
        }
    }
}

struct Connection {
    shared: Arc<Shared>,
    log: Arc<Mutex<ConnectionLog>>,
    id: u64,
    writer: fastwebsockets::WebSocketWrite<BufWriter<tokio::io::WriteHalf<TokioIo<Upgraded>>>>,
    encoder: Encoder,
    compression: Compression,
    out: Vec<u8>,
    session: Option<Arc<Session>>,
    commands: VecDeque<Instant>,
}

impl Connection {
    async fn run(&mut self, mut inbound: mpsc::Receiver<Inbound>) -> End {
        let interval = self.shared.config.heartbeat_interval;
        let hello = format!(
            r#"{{"t":null,"s":null,"op":10,"d":{{"heartbeat_interval":{},"_trace":["[\"discord-sim\",{{\"micros\":0.0}}]"]}}}}"#,
            interval.as_millis()
        );
        if self.send(hello.as_bytes()).await.is_err() {
            return End::Quiet;
        }
        let (outbox, mut outgoing) = mpsc::unbounded_channel::<Bytes>();
        let mut control: Option<broadcast::Receiver<Control>> = None;
        let mut deadline = Instant::now() + interval.mul_f64(1.5);
        loop {
            tokio::select! {
                item = inbound.recv() => match item {
                    Some(Inbound::Text(bytes)) => {
                        match self.handle(&bytes, &outbox, &mut control, &mut deadline).await {
                            Ok(()) => {}
                            Err(end) => return end,
                        }
                    }
                    Some(Inbound::TooLarge) => return End::Cut,
                    Some(Inbound::Ping(payload)) => {
                        let _ = self.writer.write_frame(Frame::pong(Payload::Owned(payload))).await;
                        let _ = self.writer.flush().await;
                    }
                    Some(Inbound::Close(code)) => {
                        lock(&self.log).close_code = code;
                        // 1000 and 1001 end the session; any other code keeps it resumable.
                        if let (Some(1000 | 1001), Some(session)) = (code, &self.session) {
                            self.shared.end_session(session);
                        }
                        let _ = self.writer.write_frame(Frame::close(code.unwrap_or(1000), b"")).await;
                        let _ = self.writer.flush().await;
                        return End::Quiet;
                    }
                    Some(Inbound::Gone) | None => return End::Quiet,
                },
                Some(payload) = outgoing.recv() => {
                    // Everything queued, up to a batch, then one flush.
                    let mut next = Some(payload);
                    let mut written = 0;
                    while let Some(payload) = next.take() {
                        if self.write(&payload).await.is_err() {
                            return End::Quiet;
                        }
                        written += 1;
                        if written < WRITE_BATCH {
                            next = outgoing.try_recv().ok();
                        }
                    }
                    if self.writer.flush().await.is_err() {
                        return End::Quiet;
                    }
                }
                Some(command) = recv_control(&mut control) => {
                    if let Some(end) = self.apply(command).await {
                        return end;
                    }
                }
                () = sleep_until(deadline) => {
                    return End::Close(4009, "heartbeat timed out");
                }
            }
        }
    }

    /// Encodes, writes and flushes one payload.
    async fn send(&mut self, payload: &[u8]) -> Result<(), WebSocketError> {
        self.write(payload).await?;
        self.writer.flush().await
    }

    /// Encodes and writes one payload into the write buffer.
    async fn write(&mut self, payload: &[u8]) -> Result<(), WebSocketError> {
        lock(&self.log).sent(payload);
        self.out.clear();
        self.encoder
            .encode(payload, &mut self.out)
            .map_err(|_| WebSocketError::ConnectionClosed)?;
        let payload = Payload::Borrowed(&self.out);
        let frame = if self.compression.is_binary() {
            Frame::binary(payload)
        } else {
            Frame::text(payload)
        };
        self.writer.write_frame(frame).await
    }

    async fn apply(&mut self, command: Control) -> Option<End> {
        let payload = match command {
            Control::Reconnect => r#"{"t":null,"s":null,"op":7,"d":null}"#,
            Control::InvalidSession(true) => r#"{"t":null,"s":null,"op":9,"d":true}"#,
            Control::InvalidSession(false) => {
                if let Some(session) = &self.session {
                    self.shared.end_session(session);
                }
                r#"{"t":null,"s":null,"op":9,"d":false}"#
            }
            Control::RequestHeartbeat => r#"{"t":null,"s":null,"op":1,"d":null}"#,
            Control::Close(code) => return Some(End::Close(code, "closed by the sim's control")),
            Control::Cut => return Some(End::Cut),
        };
        self.send(payload.as_bytes())
            .await
            .err()
            .map(|_| End::Quiet)
    }

    async fn handle(
        &mut self,
        bytes: &[u8],
        outbox: &crate::session::Outbox,
        control: &mut Option<broadcast::Receiver<Control>>,
        deadline: &mut Instant,
    ) -> Result<(), End> {
        lock(&self.log).received(bytes);
        if bytes.len() > MAX_CLIENT_FRAME {
            return Err(End::Close(4002, "payload over 4096 bytes"));
        }
        let now = Instant::now();
        while self
            .commands
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_mins(1))
        {
            self.commands.pop_front();
        }
        self.commands.push_back(now);
        if self.commands.len() > COMMANDS_PER_MINUTE {
            return Err(End::Close(4008, "rate limited"));
        }
        let Ok(payload) = serde_json::from_slice::<Value>(bytes) else {
            return Err(End::Close(4002, "error while decoding payload"));
        };
        let Some(op) = payload.get("op").and_then(Value::as_u64) else {
            return Err(End::Close(4002, "payload without an op"));
        };
        let d = payload.get("d").unwrap_or(&Value::Null);
        match op {
            1 => {
                *deadline = now + self.shared.config.heartbeat_interval.mul_f64(1.5);
                self.send(br#"{"t":null,"s":null,"op":11,"d":null}"#)
                    .await
                    .map_err(|_| End::Quiet)
            }
            2 => self.identify(d, outbox, control).await,
            6 => self.resume(d, outbox, control).await,
            3 | 4 | 8 | 31 | 43 => {
                let Some(session) = self.session.clone() else {
                    return Err(End::Close(4003, "not authenticated"));
                };
                match op {
                    4 => self.voice_state(&session, d),
                    8 => self.request_members(&session, d),
                    31 => soundboard(&session, d),
                    43 => self.channel_info(&session, d),
                    _ => {}
                }
                Ok(())
            }
            _ => Err(End::Close(4001, "unknown opcode")),
        }
    }

    fn record_session(&self, session: &Session) {
        let mut log = lock(&self.log);
        log.shard = Some(session.shard);
        log.session_id = Some(session.id.clone());
    }

    /// 4004 for a wrong token, else the close
    /// [`Sim::refuse_identify`](crate::Sim::refuse_identify) asks for, if
    /// any.
    fn refused(&self, d: &Value) -> Result<(), End> {
        if !self.token_ok(d) {
            return Err(End::Close(4004, "authentication failed"));
        }
        match self
            .shared
            .refuse_identify
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => Ok(()),
            4004 => Err(End::Close(4004, "authentication failed")),
            code => Err(End::Close(code, "refused")),
        }
    }

    fn token_ok(&self, d: &Value) -> bool {
        let token = d.get("token").and_then(Value::as_str).unwrap_or("");
        let token = token.strip_prefix("Bot ").unwrap_or(token);
        let expected = &self.shared.config.token;
        token == expected.strip_prefix("Bot ").unwrap_or(expected)
    }

    async fn identify(
        &mut self,
        d: &Value,
        outbox: &crate::session::Outbox,
        control: &mut Option<broadcast::Receiver<Control>>,
    ) -> Result<(), End> {
        if self.session.is_some() {
            return Err(End::Close(4005, "already authenticated"));
        }
        self.refused(d)?;
        let shards = self.shared.config.shards;
        let (shard, count) = match d.get("shard") {
            None | Some(Value::Null) => (0, 1),
            Some(value) => {
                let pair: Option<Vec<u64>> = value
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_u64).collect());
                match pair.as_deref() {
                    Some(&[id, count]) => (id, count),
                    _ => return Err(End::Close(4002, "invalid shard")),
                }
            }
        };
        if count != u64::from(shards) || shard >= count {
            return Err(End::Close(4010, "invalid shard"));
        }
        let shard = u32::try_from(shard).unwrap_or(u32::MAX);
        let Some(intents) = d.get("intents").and_then(Value::as_u64) else {
            return Err(End::Close(4002, "intents are required"));
        };
        if intents & !KNOWN_INTENTS != 0 {
            return Err(End::Close(4013, "invalid intent(s)"));
        }
        if intents & PRIVILEGED_INTENTS & !self.shared.config.privileged_intents != 0 {
            return Err(End::Close(4014, "disallowed intent(s)"));
        }
        let large_threshold = d
            .get("large_threshold")
            .and_then(Value::as_u64)
            .unwrap_or(50)
            .clamp(50, 250);
        if !self.shared.take_identify(shard) {
            return self
                .send(br#"{"t":null,"s":null,"op":9,"d":false}"#)
                .await
                .map_err(|_| End::Quiet);
        }
        if d.get("compress").and_then(Value::as_bool) == Some(true)
            && self.compression == Compression::None
        {
            self.compression = Compression::ZlibPayload;
            self.encoder = Encoder::new(self.compression)
                .map_err(|_| End::Close(4000, "compression unavailable"))?;
        }

        let session = self.shared.new_session(shard);
        let hub = &self.shared.shards[shard as usize];
        // Hold the world while subscribing and writing the snapshot: the
        // stream's changes are made under the same lock, so this session
        // sees exactly those after its snapshot.
        let world = crate::lock(&self.shared.world);
        let events = hub.events.subscribe();
        *control = Some(hub.control.subscribe());
        session.attach(self.id, outbox.clone());
        self.session = Some(session.clone());
        self.record_session(&session);

        let mut ready = String::with_capacity(1024);
        let bot = &world.bot;
        let _ = write!(
            ready,
            r#"{{"v":10,"user_settings":{{}},"user":{{"id":"{}","username":"#,
            bot.id
        );
        crate::world::json_str(&mut ready, &bot.username);
        let _ = write!(
            ready,
            r#","discriminator":"0","global_name":null,"avatar":null,"bot":true,"mfa_enabled":false,"verified":true,"email":null,"flags":0}},"session_type":"normal","session_id":"{}","resume_gateway_url":"{}","relationships":[],"private_channels":[],"presences":[],"guilds":["#,
            session.id, self.shared.gateway_url
        );
        for (i, guild) in world.guilds_of(shard, shards).enumerate() {
            if i > 0 {
                ready.push(',');
            }
            let _ = write!(ready, r#"{{"id":"{}","unavailable":true}}"#, guild.id);
        }
        let _ = write!(
            ready,
            r#"],"guild_join_requests":[],"geo_ordered_rtc_regions":["rotterdam","milan"],"shard":[{shard},{shards}],"application":{{"id":"{}","flags":565248}},"_trace":["[\"discord-sim\",{{\"micros\":0}}]"]}}"#,
            world.application_id
        );
        session.emit("READY", &ready);
        let mut d = String::new();
        for guild in world.guilds_of(shard, shards) {
            d.clear();
            guild.write_create(bot, intents, large_threshold, &mut d);
            session.emit(
                if guild.unavailable {
                    "GUILD_DELETE"
                } else {
                    "GUILD_CREATE"
                },
                &d,
            );
        }
        self.shared.sessions_started.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(feed(self.shared.clone(), session, intents, events));
        Ok(())
    }

    async fn resume(
        &mut self,
        d: &Value,
        outbox: &crate::session::Outbox,
        control: &mut Option<broadcast::Receiver<Control>>,
    ) -> Result<(), End> {
        if !self.token_ok(d) {
            return Err(End::Close(4004, "authentication failed"));
        }
        let id = d.get("session_id").and_then(Value::as_str).unwrap_or("");
        let after = d.get("seq").and_then(Value::as_u64).unwrap_or(0);
        let session = self.shared.session(id);
        let resumed = session.as_ref().map_or(Err(ResumeError::Invalid), |s| {
            s.resume(self.id, outbox.clone(), after)
        });
        let (Some(session), Ok(_)) = (session, resumed) else {
            self.shared.resumes[1].fetch_add(1, Ordering::Relaxed);
            return self
                .send(br#"{"t":null,"s":null,"op":9,"d":false}"#)
                .await
                .map_err(|_| End::Quiet);
        };
        if let Some(previous) = self.session.replace(session.clone()) {
            previous.detach(self.id);
        }
        self.record_session(&session);
        self.shared.resumes[0].fetch_add(1, Ordering::Relaxed);
        *control = Some(
            self.shared.shards[session.shard as usize]
                .control
                .subscribe(),
        );
        Ok(())
    }

    fn voice_state(&self, session: &Session, d: &Value) {
        let Some(guild) = snowflake(d.get("guild_id")) else {
            return;
        };
        let channel = snowflake(d.get("channel_id"));
        let bot = crate::lock(&self.shared.world).bot.id;
        let self_mute = d.get("self_mute").and_then(Value::as_bool).unwrap_or(false);
        let self_deaf = d.get("self_deaf").and_then(Value::as_bool).unwrap_or(false);
        // As Discord: an op 4 that changes nothing is answered with nothing,
        // and one that stays in the bot's channel with its voice state
        // alone (no new voice server).
        let moved = {
            let mut voice = crate::lock(&self.shared.bot_voice);
            let before = voice.get(&guild).copied();
            let after = channel.map(|channel| (channel, self_mute, self_deaf));
            if before == after {
                return;
            }
            match after {
                Some(state) => voice.insert(guild, state),
                None => voice.remove(&guild),
            };
            before.map(|(c, _, _)| c) != channel
        };
        // The world's ground truth follows (a new session's GUILD_CREATE
        // shows the bot in its channel), and the event carries the bot's
        // member, as Discord's does.
        let mut member = String::new();
        {
            let mut world = crate::lock(&self.shared.world);
            let bot_user = world.bot.clone();
            if let Some(g) = world.guilds.iter_mut().find(|g| g.id == guild) {
                member.push_str(r#","member":"#);
                crate::world::Member::bot(&bot_user).write(&mut member);
                g.voice_states.retain(|v| v.user_id != bot);
                if let Some(channel_id) = channel {
                    g.voice_states.push(crate::guild::VoiceState {
                        user_id: bot,
                        channel_id,
                        session_id: session.id.clone(),
                    });
                }
            }
        }
        let channel_json = channel.map_or_else(|| "null".to_owned(), |c| format!("\"{c}\""));
        session.emit(
            "VOICE_STATE_UPDATE",
            &format!(
                r#"{{"guild_id":"{guild}","channel_id":{channel_json},"user_id":"{bot}","session_id":"{}","deaf":false,"mute":false,"self_deaf":{self_deaf},"self_mute":{self_mute},"self_video":false,"suppress":false,"request_to_speak_timestamp":null{member}}}"#,
                session.id
            ),
        );
        if channel.is_some() && moved {
            session.emit(
                "VOICE_SERVER_UPDATE",
                &format!(
                    r#"{{"token":"sim-voice-{:x}","guild_id":"{guild}","endpoint":"voice.sim.invalid:443"}}"#,
                    session.seq()
                ),
            );
        }
    }

    /// op 43: the status and start time of the guild's voice channels
    /// (the sim's have neither set).
    fn channel_info(&self, session: &Session, d: &Value) {
        let Some(guild_id) = snowflake(d.get("guild_id")) else {
            return;
        };
        let world = crate::lock(&self.shared.world);
        let Some(guild) = world.guild(guild_id) else {
            return;
        };
        let channels: Vec<String> = guild
            .channels_of(2)
            .map(|id| format!(r#"{{"id":"{id}","status":null,"voice_start_time":null}}"#))
            .collect();
        session.emit(
            "CHANNEL_INFO",
            &format!(
                r#"{{"guild_id":"{guild_id}","channels":[{}]}}"#,
                channels.join(",")
            ),
        );
    }

    fn request_members(&self, session: &Session, d: &Value) {
        let Some(guild_id) = snowflake(d.get("guild_id")) else {
            return;
        };
        let world = crate::lock(&self.shared.world);
        let Some(guild) = world.guild(guild_id) else {
            return;
        };
        let nonce = d
            .get("nonce")
            .and_then(Value::as_str)
            .filter(|n| n.len() <= 32)
            .map(|n| {
                let mut s = String::from(r#","nonce":"#);
                crate::world::json_str(&mut s, n);
                s
            })
            .unwrap_or_default();
        let query = d.get("query").and_then(Value::as_str);
        let limit = d.get("limit").and_then(Value::as_u64).unwrap_or(0);
        let user_ids: Option<Vec<u64>> = d.get("user_ids").map(|v| {
            v.as_array().map_or_else(
                || snowflake(Some(v)).into_iter().collect(),
                |a| a.iter().filter_map(|x| snowflake(Some(x))).collect(),
            )
        });
        let everyone = user_ids.is_none() && query == Some("") && limit == 0;
        if everyone && !self.shared.allow_full_request(guild_id) {
            let nonce_meta = nonce.trim_start_matches(',');
            session.emit(
                "RATE_LIMITED",
                &format!(
                    r#"{{"opcode":8,"retry_after":30.0,"meta":{{"guild_id":"{guild_id}"{}}}}}"#,
                    if nonce_meta.is_empty() {
                        String::new()
                    } else {
                        format!(",{nonce_meta}")
                    }
                ),
            );
            return;
        }
        let bot = crate::world::Member::bot(&world.bot);
        let all = std::iter::once(&bot).chain(&guild.members);
        let members: Vec<&crate::world::Member> = match (&user_ids, query) {
            (Some(ids), _) => all.filter(|m| ids.contains(&m.user.id)).take(100).collect(),
            (None, Some(q)) => {
                let q = q.to_lowercase();
                let cap = if q.is_empty() && limit == 0 {
                    usize::MAX
                } else {
                    usize::try_from(limit.clamp(1, 100)).unwrap_or(100)
                };
                all.filter(|m| m.user.username.to_lowercase().starts_with(&q))
                    .take(cap)
                    .collect()
            }
            (None, None) => Vec::new(),
        };
        let not_found: Vec<u64> = user_ids
            .iter()
            .flatten()
            .filter(|id| !members.iter().any(|m| m.user.id == **id))
            .copied()
            .collect();
        let chunks: Vec<&[&crate::world::Member]> = if members.is_empty() {
            vec![&[]]
        } else {
            members.chunks(1000).collect()
        };
        let count = chunks.len();
        let presences = d.get("presences").and_then(Value::as_bool) == Some(true);
        for (index, chunk) in chunks.into_iter().enumerate() {
            let chunk = Chunk {
                guild,
                members: chunk,
                index,
                count,
                not_found: if index == 0 { &not_found } else { &[] },
                presences,
            };
            let mut out = String::with_capacity(chunk.members.len() * 400 + 128);
            chunk.write(&mut out);
            out.pop();
            out.push_str(&nonce);
            out.push('}');
            session.emit("GUILD_MEMBERS_CHUNK", &out);
        }
    }
}

/// One `GUILD_MEMBERS_CHUNK` of an op 8 answer.
struct Chunk<'a> {
    guild: &'a crate::Guild,
    members: &'a [&'a crate::world::Member],
    index: usize,
    count: usize,
    not_found: &'a [u64],
    presences: bool,
}

impl Chunk<'_> {
    fn write(&self, out: &mut String) {
        let _ = write!(out, r#"{{"guild_id":"{}","members":["#, self.guild.id);
        for (i, member) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            member.write(out);
        }
        let _ = write!(
            out,
            r#"],"chunk_index":{},"chunk_count":{}"#,
            self.index, self.count
        );
        if !self.not_found.is_empty() {
            let ids: Vec<String> = self
                .not_found
                .iter()
                .map(|id| format!("\"{id}\""))
                .collect();
            let _ = write!(out, r#","not_found":[{}]"#, ids.join(","));
        }
        if self.presences {
            // The presences of this chunk's members who are not offline.
            out.push_str(r#","presences":["#);
            let mut first = true;
            for presence in self
                .guild
                .presences
                .iter()
                .filter(|p| self.members.iter().any(|m| m.user.id == p.user_id))
            {
                if !first {
                    out.push(',');
                }
                first = false;
                presence.write(out, None);
            }
            out.push(']');
        }
        out.push('}');
    }
}

/// op 31: one `SOUNDBOARD_SOUNDS` per guild asked for (the sim's guilds have none).
fn soundboard(session: &Session, d: &Value) {
    let ids = d
        .get("guild_ids")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for guild in ids.iter().filter_map(|v| snowflake(Some(v))) {
        session.emit(
            "SOUNDBOARD_SOUNDS",
            &format!(r#"{{"guild_id":"{guild}","soundboard_sounds":[]}}"#),
        );
    }
}

/// A snowflake given as a string or a number (discord.py sends numbers).
fn snowflake(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

async fn recv_control(control: &mut Option<broadcast::Receiver<Control>>) -> Option<Control> {
    match control {
        Some(rx) => loop {
            match rx.recv().await {
                Ok(command) => return Some(command),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
            }
        },
        None => std::future::pending().await,
    }
}

/// Feeds a session its shard's live dispatches until it is invalidated.
async fn feed(
    shared: Arc<Shared>,
    session: Arc<Session>,
    intents: u64,
    mut events: broadcast::Receiver<Arc<crate::Dispatch>>,
) {
    loop {
        match events.recv().await {
            Ok(dispatch) => {
                if session.is_invalid() {
                    return;
                }
                // Only what the session's intents ask for, as Discord.
                if crate::events::intent_of(&dispatch.t).is_none_or(|bit| intents & bit != 0) {
                    session.emit(&dispatch.t, &dispatch.d);
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                shared.lagged.fetch_add(missed, Ordering::Relaxed);
                tracing::error!(session = %session.id, missed, "session fell behind its shard's stream; events lost");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
