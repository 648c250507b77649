//! One client connection: a reader task, a writer task, and the task that
//! drives the protocol between them, the shard and the session table.
//!
//! `read_frame` is not cancel-safe, so it has a task of its own that only
//! reads and hands frames over a channel; the writer owns the socket's
//! write half and the connection's compression context. The driver never
//! waits on the client: events go to the writer through a queue of
//! `backpressure` entries, and a client whose queue is full is closed
//! (resumable) instead of being waited for or skipped.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{
    FragmentCollectorRead, Frame, OpCode, Payload, WebSocket, WebSocketError, WebSocketWrite,
};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use seqpatch::Scan;
use shard_pool::{Dispatch, Session as ReadySession, ShardEvent, ShardHandle};
use sonic_rs::JsonValueTrait;
use tokio::io::{BufWriter, WriteHalf};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::time::Instant;
use wire_codec::{Compression, Encoder};

use crate::context::Context;
use crate::protocol::{
    Close, Command, Identify, MAX_PAYLOAD, Protocol, Request, Resume, same_token,
};
use crate::session::{Attach, SeqMap, Session};

type Socket = TokioIo<Upgraded>;

/// What the reader hands the driver.
#[derive(Debug)]
enum In {
    Text(Bytes),
    Binary,
    TooLarge,
    /// The client closed (with this code) or the connection dropped.
    Closed(Option<u16>),
}

/// What the driver hands the writer.
#[derive(Debug)]
enum Out {
    /// A payload the proxy made (HELLO, ACK, READY, guilds, op 9, RESUMED).
    Payload(Bytes),
    /// A shard dispatch, written in the canonical envelope with `seq`.
    Event {
        payload: Bytes,
        scan: Scan,
        seq: u64,
    },
    /// From now on, compress with this (payload compression after
    /// IDENTIFY).
    Compression(Compression),
}

const INVALID_SESSION: &[u8] = br#"{"t":null,"s":null,"op":9,"d":false}"#;
const HEARTBEAT_ACK: &[u8] = br#"{"t":null,"s":null,"op":11,"d":null}"#;

/// How long a closed connection waits for its client to read what is
/// still queued, up to the close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// The write buffer of a connection: frames queued together leave in one
/// write.
const WRITE_BUFFER: usize = 64 * 1024;

/// How long a client's full queue may stay full before the client counts
/// as too slow.
const SLOW_GRACE: Duration = Duration::from_secs(1);

/// How long a RESUME waits for the old connection of its session to let go.
const TAKEOVER_WAIT: Duration = Duration::from_secs(2);

/// How long an IDENTIFY waits for its shard to be ready.
const READY_WAIT: Duration = Duration::from_secs(30);

/// What the query string asks for, or why it cannot be served.
pub(crate) fn transport(query: &str) -> Result<Compression, Close> {
    for pair in query.split('&') {
        if let Some(encoding) = pair.strip_prefix("encoding=")
            && encoding != "json"
        {
            return Err(Close::new(
                Close::DECODE_ERROR,
                "only encoding=json is supported (ETF is not)",
            ));
        }
    }
    Compression::from_query(query)
        .map_err(|_| Close::new(Close::DECODE_ERROR, "unknown compress value"))
}

/// Serves one upgraded websocket until it ends.
pub(crate) async fn serve(mut ws: WebSocket<Socket>, query: String, ctx: Arc<Context>) {
    ws.set_max_message_size(MAX_PAYLOAD * 2);
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    // Frames go through a buffer that is flushed when nothing more is
    // queued: under load, many frames per write system call.
    let (read, write) = ws.split(|socket| {
        let (read, write) = tokio::io::split(socket);
        (read, BufWriter::with_capacity(WRITE_BUFFER, write))
    });
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let (out_tx, out_rx) = mpsc::channel(ctx.config.backpressure.max(1) + 8);
    let (in_tx, in_rx) = mpsc::channel(64);
    let transport = transport(&query);
    let compression = *transport.as_ref().unwrap_or(&Compression::None);
    let writer = tokio::spawn(write_loop(write, compression, out_rx, ctl_rx, ctx.clone()));
    let reader = tokio::spawn(read_loop(read, in_tx, ctl_tx.clone()));
    match transport {
        Ok(compression) => {
            let mut driver = Driver {
                protocol: Protocol::new(ctx.config.heartbeat_interval, Instant::now()),
                ctx,
                out: out_tx,
                ctl: ctl_tx,
                transport: compression,
                attached: None,
            };
            driver.run(in_rx).await;
        }
        Err(close) => {
            let _ = ctl_tx.send(Frame::close(close.code, close.reason.as_bytes()));
        }
    }
    // The writer ends after a close frame or when the driver's sender is
    // gone; give a slow client time to read up to the close, then drop the
    // connection.
    if tokio::time::timeout(CLOSE_WAIT, writer).await.is_err() {
        tracing::debug!("writer did not finish; dropping the connection");
    }
    reader.abort();
}

async fn read_loop(
    read: fastwebsockets::WebSocketRead<tokio::io::ReadHalf<Socket>>,
    tx: mpsc::Sender<In>,
    ctl: mpsc::UnboundedSender<Frame<'static>>,
) {
    let mut read = FragmentCollectorRead::new(read);
    loop {
        let frame = read
            .read_frame::<_, WebSocketError>(&mut |frame| {
                let _ = ctl.send(owned(&frame));
                async { Ok(()) }
            })
            .await;
        let message = match frame {
            Ok(frame) => match frame.opcode {
                OpCode::Text => In::Text(Bytes::copy_from_slice(&frame.payload)),
                OpCode::Binary => In::Binary,
                OpCode::Close => {
                    let code = (frame.payload.len() >= 2)
                        .then(|| u16::from_be_bytes([frame.payload[0], frame.payload[1]]));
                    let _ = tx.send(In::Closed(code)).await;
                    return;
                }
                _ => continue,
            },
            Err(WebSocketError::FrameTooLarge) => In::TooLarge,
            Err(_) => {
                let _ = tx.send(In::Closed(None)).await;
                return;
            }
        };
        if tx.send(message).await.is_err() {
            return;
        }
    }
}

fn owned(frame: &Frame<'_>) -> Frame<'static> {
    Frame::new(
        frame.fin,
        frame.opcode,
        None,
        Payload::Owned(frame.payload.to_vec()),
    )
}

async fn write_loop(
    mut write: WebSocketWrite<BufWriter<WriteHalf<Socket>>>,
    mut compression: Compression,
    mut out: mpsc::Receiver<Out>,
    mut ctl: mpsc::UnboundedReceiver<Frame<'static>>,
    ctx: Arc<Context>,
) {
    let Ok(mut encoder) = Encoder::new(compression) else {
        return;
    };
    let mut text = Vec::with_capacity(4096);
    let mut compressed = Vec::with_capacity(4096);
    loop {
        let message = tokio::select! {
            biased;
            Some(frame) = ctl.recv() => {
                let close = frame.opcode == OpCode::Close;
                if write.write_frame(frame).await.is_err() || write.flush().await.is_err() || close {
                    return;
                }
                continue;
            }
            message = out.recv() => message,
        };
        let Some(message) = message else {
            let _ = write.flush().await;
            return;
        };
        text.clear();
        match message {
            Out::Payload(payload) => text.extend_from_slice(&payload),
            Out::Event { payload, scan, seq } => scan.envelope(&payload, seq).write_to(&mut text),
            Out::Compression(next) => {
                compression = next;
                match Encoder::new(next) {
                    Ok(next) => encoder = next,
                    Err(_) => return,
                }
                continue;
            }
        }
        let frame = if compression.is_binary() {
            compressed.clear();
            if encoder.encode(&text, &mut compressed).is_err() {
                return;
            }
            Frame::binary(Payload::Borrowed(&compressed))
        } else {
            Frame::text(Payload::Borrowed(&text))
        };
        ctx.counters.bytes(compression, frame.payload.len());
        if write.write_frame(frame).await.is_err() {
            return;
        }
        if out.is_empty() && write.flush().await.is_err() {
            return;
        }
    }
}

/// A served session on this connection.
struct Attached {
    id: String,
    session: Session,
    shard: ShardHandle,
    events: broadcast::Receiver<ShardEvent>,
}

struct Driver {
    ctx: Arc<Context>,
    out: mpsc::Sender<Out>,
    /// Frames that go before anything queued: close frames.
    ctl: mpsc::UnboundedSender<Frame<'static>>,
    protocol: Protocol,
    transport: Compression,
    attached: Option<Attached>,
}

/// How a connection ended, for its session.
enum End {
    /// The session can be resumed.
    Resumable,
    /// The session is over.
    Final,
}

impl Driver {
    async fn run(&mut self, mut incoming: mpsc::Receiver<In>) {
        if self
            .out
            .send(Out::Payload(self.protocol.hello()))
            .await
            .is_err()
        {
            return;
        }
        let mut shutdown = self.ctx.shutdown.subscribe();
        let mut disconnect = self.ctx.disconnect.subscribe();
        let end = loop {
            let deadline = self.protocol.poll_timeout();
            let kick = self.attached.as_ref().map(|a| a.session.kick.clone());
            let step = tokio::select! {
                biased;
                // The only change is to `true`: the proxy is shutting down.
                Ok(()) = shutdown.changed() => {
                    Err(self.close(Close::new(1001, "the proxy is shutting down")))
                }
                Ok(()) = disconnect.changed() => {
                    Err(self.close(Close::new(Close::UNKNOWN_ERROR, "the proxy asked every client to reconnect")))
                }
                () = kicked(kick) => {
                    Err(self.close(Close::new(Close::UNKNOWN_ERROR, "the session was resumed on another connection")))
                }
                message = incoming.recv() => self.incoming(message).await,
                event = next_event(&mut self.attached) => self.event(event).await,
                () = tokio::time::sleep_until(deadline) => {
                    Err(self.close(Protocol::timed_out()))
                }
            };
            if let Err(end) = step {
                break end;
            }
        };
        if let Some(attached) = self.attached.take() {
            self.ctx.counters.client(attached.shard.id(), -1);
            let resumable = matches!(end, End::Resumable);
            self.ctx
                .sessions
                .detach(&attached.id, attached.session, resumable, Instant::now());
        }
    }

    /// Sends a close (ahead of anything queued) and says whether the
    /// session survives it.
    fn close(&mut self, close: Close) -> End {
        let _ = self
            .ctl
            .send(Frame::close(close.code, close.reason.as_bytes()));
        match close.code {
            Close::AUTHENTICATION_FAILED | 4010..=4014 => End::Final,
            _ => End::Resumable,
        }
    }

    async fn incoming(&mut self, message: Option<In>) -> Result<(), End> {
        let payload = match message {
            None | Some(In::Closed(None)) => return Err(End::Resumable),
            Some(In::Closed(Some(code))) => {
                return Err(if matches!(code, 1000 | 1001) {
                    End::Final
                } else {
                    End::Resumable
                });
            }
            Some(In::TooLarge) => {
                return Err(self.close(Close::new(Close::DECODE_ERROR, "payload over 4096 bytes")));
            }
            Some(In::Binary) => {
                return Err(self.close(Close::new(
                    Close::DECODE_ERROR,
                    "binary payloads are not JSON (ETF is not supported)",
                )));
            }
            Some(In::Text(payload)) => payload,
        };
        match self.protocol.handle_payload(&payload, Instant::now()) {
            Request::Heartbeat => self.send(Bytes::from_static(HEARTBEAT_ACK)).await,
            Request::Identify(identify) => self.identify(identify).await,
            Request::Resume(resume) => self.resume(resume).await,
            Request::Command(command) => {
                self.command(command);
                Ok(())
            }
            Request::Close(close) => Err(self.close(close)),
        }
    }

    async fn send(&mut self, payload: Bytes) -> Result<(), End> {
        self.out
            .send(Out::Payload(payload))
            .await
            .map_err(|_| End::Resumable)
    }

    fn token_ok(&self, token: &str) -> bool {
        !self.ctx.config.validate_token || same_token(token, &self.ctx.config.token)
    }

    async fn identify(&mut self, identify: Identify) -> Result<(), End> {
        if !self.token_ok(&identify.token) {
            return Err(self.close(Close::new(
                Close::AUTHENTICATION_FAILED,
                "authentication failed",
            )));
        }
        let [id, count] = identify.shard;
        let pool = self.ctx.pool.clone();
        let Some(shard) = pool.shard(id).filter(|_| count == pool.total()) else {
            return Err(self.close(Close::new(Close::INVALID_SHARD, "invalid shard")));
        };
        if tokio::time::timeout(READY_WAIT, shard.ready())
            .await
            .is_err()
        {
            // Not ready in time: the client identifies again a little later.
            return self.send(Bytes::from_static(INVALID_SESSION)).await;
        }
        if identify.compress && self.transport == Compression::None {
            self.transport = Compression::ZlibPayload;
            let _ = self
                .out
                .send(Out::Compression(Compression::ZlibPayload))
                .await;
        }
        let session_id = self.ctx.session_id();
        let ready_session = ReadySession {
            session_id: &session_id,
            resume_gateway_url: &self.ctx.config.externally_accessible_url,
        };
        let snapshot = shard.snapshot(|cache| {
            let mut payloads = Vec::with_capacity(cache.guild_ids().len() + 1);
            let mut ready = Vec::new();
            cache.write_ready(1, ready_session, &mut ready).ok()?;
            payloads.push(Bytes::from(ready));
            for (seq, guild) in (2..).zip(cache.guild_ids()) {
                let mut out = Vec::new();
                cache.write_guild(guild, seq, &mut out);
                payloads.push(Bytes::from(out));
            }
            Some(payloads)
        });
        let Some(payloads) = snapshot.value else {
            return self.send(Bytes::from_static(INVALID_SESSION)).await;
        };
        let last_seq = payloads.len() as u64;
        for payload in payloads {
            self.send(payload).await?;
        }
        let session = Session {
            shard: id,
            seq: last_seq,
            index: snapshot.index,
            map: SeqMap::new(last_seq, snapshot.index),
            attached: true,
            detached_at: None,
            kick: Arc::new(Notify::new()),
        };
        self.ctx
            .sessions
            .insert(session_id.clone(), session.clone());
        self.ctx.counters.client(id, 1);
        self.protocol.authenticated();
        self.attached = Some(Attached {
            id: session_id,
            session,
            shard: shard.clone(),
            events: snapshot.events,
        });
        Ok(())
    }

    async fn resume(&mut self, resume: Resume) -> Result<(), End> {
        if !self.token_ok(&resume.token) {
            return Err(self.close(Close::new(
                Close::AUTHENTICATION_FAILED,
                "authentication failed",
            )));
        }
        let ttl = self.ctx.config.session_ttl;
        let taken = Instant::now() + TAKEOVER_WAIT;
        let mut session = loop {
            match self
                .ctx
                .sessions
                .attach(&resume.session_id, ttl, Instant::now())
            {
                Attach::Taken(session) => break session,
                // Its old connection was told to let go; it saves the session
                // as it goes.
                Attach::Busy if Instant::now() < taken => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Attach::Busy | Attach::Gone => {
                    return self.send(Bytes::from_static(INVALID_SESSION)).await;
                }
            }
        };
        let now = Instant::now();
        let pool = self.ctx.pool.clone();
        let replay = pool.shard(session.shard).and_then(|shard| {
            let seq = resume.seq?;
            let index = session.map.index_of(seq, session.seq)?;
            let (missed, events) = shard.subscribe_from(index)?;
            Some((shard.clone(), seq, index, missed, events))
        });
        let Some((shard, seq, index, missed, events)) = replay else {
            // Past the ring, the ttl or what was sent: a new session.
            self.ctx
                .sessions
                .detach(&resume.session_id, session, false, now);
            return self.send(Bytes::from_static(INVALID_SESSION)).await;
        };
        session.seq = seq;
        session.index = index;
        session.map.record(seq, index);
        self.ctx.counters.client(session.shard, 1);
        self.protocol.authenticated();
        self.attached = Some(Attached {
            id: resume.session_id,
            session,
            shard,
            events,
        });
        let mut replayed = 0u64;
        for dispatch in missed {
            if self.deliver(&dispatch, true).await? {
                replayed += 1;
            }
        }
        self.ctx
            .counters
            .replayed
            .fetch_add(replayed, std::sync::atomic::Ordering::Relaxed);
        let Some(attached) = self.attached.as_mut() else {
            return Ok(());
        };
        attached.session.seq += 1;
        let seq = attached.session.seq;
        attached.session.map.record(seq, attached.session.index);
        let resumed = format!(r#"{{"t":"RESUMED","s":{seq},"op":0,"d":{{}}}}"#);
        self.send(Bytes::from(resumed)).await
    }

    fn command(&mut self, command: Command) {
        let Some(attached) = &self.attached else {
            return;
        };
        let now = Instant::now();
        let pool = &self.ctx.pool;
        let target = command
            .guild_id
            .map_or(attached.shard.id(), |guild| pool.shard_of_guild(guild));
        let Some(shard) = pool.shard(target) else {
            tracing::warn!(
                shard = target,
                op = command.op,
                "command for a shard this proxy does not run; dropped"
            );
            return;
        };
        match (command.op, command.nonce, command.guild_id) {
            (8, Some(nonce), _) => self.ctx.routes.nonce(nonce, &attached.id, now),
            (4, _, Some(guild)) => self.ctx.routes.voice(guild, &attached.id, now),
            _ => {}
        }
        let Ok(json) = String::from_utf8(command.payload.to_vec()) else {
            return;
        };
        if shard.send(json).is_err() {
            tracing::warn!(shard = target, "shard stopped; command dropped");
        }
    }

    async fn event(
        &mut self,
        event: Result<ShardEvent, broadcast::error::RecvError>,
    ) -> Result<(), End> {
        match event {
            Ok(ShardEvent::Dispatch(dispatch)) => self.deliver(&dispatch, false).await.map(|_| ()),
            Ok(ShardEvent::Reset { .. }) => {
                // The upstream session was replaced: this one cannot be
                // brought up to date. The client identifies again.
                if let Some(attached) = self.attached.take() {
                    self.ctx.counters.client(attached.shard.id(), -1);
                    self.ctx
                        .sessions
                        .detach(&attached.id, attached.session, false, Instant::now());
                }
                self.protocol.unauthenticated();
                self.send(Bytes::from_static(INVALID_SESSION)).await
            }
            Err(broadcast::error::RecvError::Lagged(_)) => Err(self.too_slow()),
            Err(broadcast::error::RecvError::Closed) => {
                Err(self.close(Close::new(Close::UNKNOWN_ERROR, "the shard stopped")))
            }
        }
    }

    /// Sends a dispatch to this client, if it is for it; returns whether it
    /// was sent. A replay (`wait`) waits for room in the client's queue; a
    /// live event finds a full queue a sign of a client too slow, which is
    /// closed (resumable).
    async fn deliver(&mut self, dispatch: &Dispatch, wait: bool) -> Result<bool, End> {
        let Some(attached) = self.attached.as_mut() else {
            return Ok(false);
        };
        if dispatch.index <= attached.session.index {
            return Ok(false);
        }
        attached.session.index = dispatch.index;
        if !for_session(&self.ctx, dispatch, &attached.id) {
            return Ok(false);
        }
        attached.session.seq += 1;
        let seq = attached.session.seq;
        attached.session.map.record(seq, dispatch.index);
        let event = Out::Event {
            payload: dispatch.payload.clone(),
            scan: dispatch.scan,
            seq,
        };
        if wait {
            return self
                .out
                .send(event)
                .await
                .map(|()| true)
                .map_err(|_| End::Resumable);
        }
        let sent = match self.out.try_send(event) {
            Err(mpsc::error::TrySendError::Full(event)) => {
                // A burst, or a resume's replay still draining: a moment's
                // grace before the client counts as too slow.
                match tokio::time::timeout(SLOW_GRACE, self.out.send(event)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => return Err(End::Resumable),
                    Err(_) => Err(()),
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(End::Resumable),
            Ok(()) => Ok(()),
        };
        let Some(attached) = self.attached.as_mut() else {
            return Ok(false);
        };
        if sent.is_ok() {
            return Ok(true);
        }
        // Too slow: the session keeps what it was sent, less this event, and
        // can resume to get the rest.
        attached.session.seq -= 1;
        attached.session.index = dispatch.index - 1;
        Err(self.too_slow())
    }

    /// Closes a client that fell behind, resumably, and counts it.
    fn too_slow(&mut self) -> End {
        self.ctx
            .counters
            .lagging_closed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.close(Close::new(
            Close::UNKNOWN_ERROR,
            "too slow; resume to get what was missed",
        ))
    }
}

/// Whether a dispatch goes to session `id`: member chunks go to the session
/// that sent their nonce, voice server updates to the session that last
/// sent op 4 for the guild; the rest to every session.
fn for_session(ctx: &Context, dispatch: &Dispatch, id: &str) -> bool {
    let owner = match dispatch.event_type() {
        Some("GUILD_MEMBERS_CHUNK") => {
            d_str(dispatch, "nonce").and_then(|nonce| ctx.routes.nonce_owner(&nonce))
        }
        Some("VOICE_SERVER_UPDATE") => d_str(dispatch, "guild_id")
            .and_then(|guild| guild.parse().ok())
            .and_then(|guild| ctx.routes.voice_owner(guild)),
        _ => return true,
    };
    owner.is_none_or(|owner| owner == id)
}

/// A string field of a dispatch's `d`.
fn d_str(dispatch: &Dispatch, key: &str) -> Option<String> {
    let d = dispatch.scan.d(&dispatch.payload)?;
    let value = sonic_rs::get(d, [key]).ok()?;
    value.as_str().map(str::to_owned)
}

/// Resolves when this connection's session is resumed elsewhere.
async fn kicked(kick: Option<Arc<Notify>>) {
    match kick {
        Some(kick) => kick.notified().await,
        None => std::future::pending().await,
    }
}

async fn next_event(
    attached: &mut Option<Attached>,
) -> Result<ShardEvent, broadcast::error::RecvError> {
    match attached {
        Some(attached) => attached.events.recv().await,
        None => std::future::pending().await,
    }
}
