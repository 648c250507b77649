//! One client connection: a reader task, a writer task, and the task that
//! drives the protocol between them, the shard and the session table.
//!
//! `read_frame` is not cancel-safe, so it has a task of its own that only
//! reads and hands messages over a channel; the writer owns the socket's
//! write half and the connection's compression context. The driver never
//! waits on the client for long: events go to the writer through a queue
//! of `backpressure` entries, a client whose queue stays full is closed
//! (resumable), and every wait on the client is bounded by
//! `limits.write_timeout`.
//!
//! Everything a client can make the connection hold is bounded: a message
//! by `limits.max_message_bytes` across its fragments (checked before more
//! is buffered), control frames waiting for a client that does not read by
//! `limits.max_control_frames`, the time to IDENTIFY by
//! `limits.identify_timeout`; and a connection has no compression context
//! before it identifies (see `prelude.rs`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{
    Frame, OpCode, Payload, WebSocket, WebSocketError, WebSocketRead, WebSocketWrite,
};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use seqpatch::Scan;
use shard_pool::{Dispatch, Session as ReadySession, ShardEvent, ShardHandle};
use sonic_rs::JsonValueTrait;
use tokio::io::{BufWriter, ReadHalf, WriteHalf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast, mpsc};
use tokio::time::Instant;
use wire_codec::{Compression, Encoder};

use crate::context::{Context, HEARTBEAT_ACK};
use crate::limits::Spend;
use crate::protocol::{Close, Command, Identify, Protocol, Request, Resume};
use crate::session::{Attach, SeqMap, Session};

type Socket = TokioIo<Upgraded>;

/// What the reader hands the driver.
#[derive(Debug)]
enum In {
    Text(Bytes),
    /// A message the proxy cannot take: too large, binary, or broken
    /// framing; the connection closes with this.
    Bad(Close),
    /// The client sends control frames faster than it reads their answers.
    Flooded,
    /// The client closed (with this code) or the connection dropped.
    Closed(Option<u16>),
}

/// What the driver hands the writer.
#[derive(Debug)]
enum Out {
    /// A payload the proxy made (HELLO, ACK, READY, guilds, op 9, RESUMED).
    Payload(Bytes),
    /// A payload made for this client alone (READY, a guild), holding its
    /// share of [`OWNED_BYTES`] until it is written.
    Owned(Bytes, OwnedSemaphorePermit),
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

/// The write buffer of a connection: frames queued together leave in one
/// write.
const WRITE_BUFFER: usize = 64 * 1024;

/// The most bytes of payloads made for one client (its READY and guilds)
/// that may wait for it: the queue counts entries, and one guild can be
/// megabytes. Shared payloads (the shard's events) cost nothing per client.
const OWNED_BYTES: usize = 1 << 20;

/// How long a client's full queue may stay full before the client counts
/// as too slow.
const SLOW_GRACE: Duration = Duration::from_secs(1);

/// How long a closed connection keeps reading (and dropping) what its
/// client still sends, so that the client gets the close frame.
const LINGER: Duration = Duration::from_secs(1);

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

/// Serves one upgraded websocket until it ends. Every task it starts ends
/// with it: the writer gets `write_timeout` to send what is queued, up to
/// the close frame, and is then stopped with its socket.
pub(crate) async fn serve(mut ws: WebSocket<Socket>, query: String, ctx: Arc<Context>) {
    let limits = ctx.config.limits.clone();
    // Per frame; the reader bounds whole messages.
    ws.set_max_message_size(limits.max_message_bytes.saturating_add(1));
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    // Frames go through a buffer that is flushed when nothing more is
    // queued: under load, many frames per write system call.
    let (read, write) = ws.split(|socket| {
        let (read, write) = tokio::io::split(socket);
        (read, BufWriter::with_capacity(WRITE_BUFFER, write))
    });
    // Room for the control frames a client may leave unread, and one more
    // for the proxy's own close.
    let (ctl_tx, ctl_rx) = mpsc::channel(limits.max_control_frames.max(1) + 1);
    let (out_tx, out_rx) = mpsc::channel(ctx.config.backpressure.max(1) + 8);
    let (in_tx, in_rx) = mpsc::channel(64);
    let transport = transport(&query);
    let compression = *transport.as_ref().unwrap_or(&Compression::None);
    let writer = tokio::spawn(
        Writer {
            write,
            compression,
            encoder: None,
            prelude_sent: 0,
            ctx: ctx.clone(),
        }
        .run(out_rx, ctl_rx),
    );
    let stop_writer = writer.abort_handle();
    let reader = tokio::spawn(read_loop(
        read,
        in_tx,
        ctl_tx.clone(),
        limits.max_message_bytes,
    ));
    match transport {
        Ok(compression) => {
            let mut driver = Driver {
                owned: Arc::new(Semaphore::new(OWNED_BYTES)),
                protocol: Protocol::new(ctx.protocol, Instant::now()),
                id: ctx.connection_id(),
                ctx,
                out: out_tx,
                ctl: ctl_tx,
                transport: compression,
                attached: None,
            };
            driver.run(in_rx).await;
        }
        Err(close) => {
            let _ = ctl_tx.try_send(Frame::close(close.code, close.reason.as_bytes()));
            drop((out_tx, ctl_tx));
        }
    }
    // The writer ends after a close frame or once the driver's queue is
    // drained; a client that does not read that long is dropped.
    if tokio::time::timeout(limits.write_timeout, writer)
        .await
        .is_err()
    {
        tracing::debug!("writer did not finish; dropping the connection");
        stop_writer.abort();
    }
    // A moment for the client to read the close and answer it, while what
    // it still sends is drained (see `read_loop`).
    let stop_reader = reader.abort_handle();
    if tokio::time::timeout(LINGER, reader).await.is_err() {
        stop_reader.abort();
    }
}

/// A control frame could not be queued: the client does not read.
#[derive(Debug)]
struct Flooded;

impl std::fmt::Display for Flooded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("control frames queued past the limit")
    }
}

impl std::error::Error for Flooded {}

/// Puts fragmented messages together, refusing one over the limit before
/// more of it is kept.
#[derive(Debug)]
pub(crate) struct Assembler {
    max: usize,
    /// The opcode of the message being assembled, and its bytes so far.
    partial: Option<(OpCode, Vec<u8>)>,
}

impl Assembler {
    pub(crate) fn new(max: usize) -> Self {
        Self { max, partial: None }
    }

    /// Takes one data frame (text, binary or continuation); returns a
    /// whole message when this frame ends one.
    pub(crate) fn push(
        &mut self,
        opcode: OpCode,
        fin: bool,
        payload: &[u8],
    ) -> Result<Option<(OpCode, Bytes)>, Close> {
        let too_large = Close::new(Close::DECODE_ERROR, "message too large");
        match (opcode, self.partial.as_mut()) {
            (OpCode::Continuation, None) => Err(Close::new(
                Close::DECODE_ERROR,
                "continuation frame without a message",
            )),
            (OpCode::Continuation, Some((_, bytes))) => {
                if bytes.len() + payload.len() > self.max {
                    return Err(too_large);
                }
                bytes.extend_from_slice(payload);
                if !fin {
                    return Ok(None);
                }
                let Some((opcode, bytes)) = self.partial.take() else {
                    return Ok(None);
                };
                Self::whole(opcode, bytes)
            }
            (_, Some(_)) => Err(Close::new(
                Close::DECODE_ERROR,
                "a new message began before the last one ended",
            )),
            (opcode, None) => {
                if payload.len() > self.max {
                    return Err(too_large);
                }
                if fin {
                    return Self::whole(opcode, payload.to_vec());
                }
                self.partial = Some((opcode, payload.to_vec()));
                Ok(None)
            }
        }
    }

    fn whole(opcode: OpCode, bytes: Vec<u8>) -> Result<Option<(OpCode, Bytes)>, Close> {
        if opcode == OpCode::Text && std::str::from_utf8(&bytes).is_err() {
            return Err(Close::new(Close::DECODE_ERROR, "text is not UTF-8"));
        }
        Ok(Some((opcode, Bytes::from(bytes))))
    }
}

async fn read_loop(
    mut read: WebSocketRead<ReadHalf<Socket>>,
    tx: mpsc::Sender<In>,
    ctl: mpsc::Sender<Frame<'static>>,
    max_message: usize,
) {
    let mut assembler = Assembler::new(max_message);
    loop {
        let frame = read
            .read_frame::<_, Flooded>(&mut |frame| {
                let queued = ctl.try_send(owned(&frame)).map_err(|_| Flooded);
                std::future::ready(queued)
            })
            .await;
        let message = match frame {
            Ok(frame) => match frame.opcode {
                OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                    match assembler.push(frame.opcode, frame.fin, &frame.payload) {
                        Ok(None) => continue,
                        Ok(Some((OpCode::Text, text))) => In::Text(text),
                        Ok(Some(_)) => In::Bad(Close::new(
                            Close::DECODE_ERROR,
                            "binary payloads are not JSON (ETF is not supported)",
                        )),
                        Err(close) => In::Bad(close),
                    }
                }
                OpCode::Close => {
                    let code = (frame.payload.len() >= 2)
                        .then(|| u16::from_be_bytes([frame.payload[0], frame.payload[1]]));
                    In::Closed(code)
                }
                _ => continue,
            },
            Err(WebSocketError::FrameTooLarge) => {
                In::Bad(Close::new(Close::DECODE_ERROR, "message too large"))
            }
            Err(WebSocketError::SendError(_)) => In::Flooded,
            Err(_) => In::Closed(None),
        };
        let last = !matches!(message, In::Text(_));
        // Once the driver is gone the send fails, and what still comes is
        // read and dropped until the client closes (for at most `LINGER`):
        // closing a socket with unread data resets it, and the client could
        // lose the close frame that says why.
        let _ = tx.send(message).await;
        if last {
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

/// The write half of a connection and its compression.
struct Writer {
    write: WebSocketWrite<BufWriter<WriteHalf<Socket>>>,
    compression: Compression,
    /// The connection's own context, made at its first message that is not
    /// in the prelude.
    encoder: Option<Encoder>,
    /// Prelude messages sent so far (while `encoder` is `None`).
    prelude_sent: usize,
    ctx: Arc<Context>,
}

impl Writer {
    async fn run(mut self, mut out: mpsc::Receiver<Out>, mut ctl: mpsc::Receiver<Frame<'static>>) {
        let timeout = self.ctx.config.limits.write_timeout;
        let mut text = Vec::with_capacity(4096);
        let mut compressed = Vec::with_capacity(4096);
        loop {
            let message = tokio::select! {
                biased;
                Some(frame) = ctl.recv() => {
                    let close = frame.opcode == OpCode::Close;
                    let written = tokio::time::timeout(timeout, async {
                        self.write.write_frame(frame).await?;
                        self.write.flush().await
                    })
                    .await;
                    if !matches!(written, Ok(Ok(()))) {
                        return;
                    }
                    if close {
                        // Nothing can follow a close frame; the driver's
                        // queue is let go only when the driver is done, so
                        // that its end is not taken for a dead client.
                        while out.recv().await.is_some() {}
                        return;
                    }
                    continue;
                }
                message = out.recv() => message,
            };
            let Some(message) = message else {
                let _ = tokio::time::timeout(timeout, self.write.flush()).await;
                return;
            };
            text.clear();
            // Released once the payload is written.
            let mut _owned = None;
            match message {
                Out::Payload(payload) => text.extend_from_slice(&payload),
                Out::Owned(payload, permit) => {
                    text.extend_from_slice(&payload);
                    _owned = Some(permit);
                }
                Out::Event { payload, scan, seq } => {
                    scan.envelope(&payload, seq).write_to(&mut text);
                }
                Out::Compression(next) => {
                    self.compression = next;
                    self.encoder = None;
                    self.prelude_sent = 0;
                    continue;
                }
            }
            let frame = if self.compression.is_binary() {
                compressed.clear();
                if self.encode(&text, &mut compressed).is_err() {
                    return;
                }
                Frame::binary(Payload::Borrowed(&compressed))
            } else {
                Frame::text(Payload::Borrowed(&text))
            };
            self.ctx
                .counters
                .bytes(self.compression, frame.payload.len());
            let written = tokio::time::timeout(timeout, async {
                self.write.write_frame(frame).await?;
                if out.is_empty() {
                    self.write.flush().await?;
                }
                Ok::<(), WebSocketError>(())
            })
            .await;
            if !matches!(written, Ok(Ok(()))) {
                return;
            }
        }
    }

    /// Compresses one message: from the prelude while the connection says
    /// what every connection says, else with its own context.
    fn encode(&mut self, text: &[u8], out: &mut Vec<u8>) -> Result<(), wire_codec::Error> {
        let encoder = match &mut self.encoder {
            Some(encoder) => encoder,
            slot @ None => {
                let prelude = self.ctx.prelude(self.compression);
                if let Some(frame) = prelude.and_then(|p| p.frame(self.prelude_sent, text)) {
                    self.prelude_sent += 1;
                    out.extend_from_slice(frame);
                    return Ok(());
                }
                slot.insert(match prelude {
                    Some(prelude) => prelude.encoder(self.prelude_sent)?,
                    None => Encoder::new(self.compression)?,
                })
            }
        };
        encoder.encode(text, out)
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
    /// Bytes of payloads made for this client that may be queued.
    owned: Arc<Semaphore>,
    /// This connection's number, for the command budget.
    id: u64,
    out: mpsc::Sender<Out>,
    /// Frames that go before anything queued: close frames.
    ctl: mpsc::Sender<Frame<'static>>,
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
        if self.send(self.ctx.hello.clone()).await.is_err() {
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
                // The writer stopped: the client did not read in time.
                () = self.out.closed() => Err(End::Resumable),
                message = incoming.recv() => self.incoming(message).await,
                event = next_event(&mut self.attached) => self.event(event).await,
                () = tokio::time::sleep_until(deadline) => {
                    let close = self.protocol.timed_out(Instant::now());
                    if close.code == Close::NOT_AUTHENTICATED {
                        self.ctx.counters.identify_timeouts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(self.close(close))
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
        // A full queue means a client that does not read: it will not read
        // this either.
        let _ = self
            .ctl
            .try_send(Frame::close(close.code, close.reason.as_bytes()));
        match close.code {
            Close::AUTHENTICATION_FAILED | 4010..=4014 => End::Final,
            _ => End::Resumable,
        }
    }

    async fn incoming(&mut self, message: Option<In>) -> Result<(), End> {
        let payload = match message {
            // A client that does not read its pongs is let go like one
            // that dropped.
            None | Some(In::Closed(None) | In::Flooded) => return Err(End::Resumable),
            Some(In::Closed(Some(code))) => {
                return Err(if matches!(code, 1000 | 1001) {
                    End::Final
                } else {
                    End::Resumable
                });
            }
            Some(In::Bad(close)) => return Err(self.close(close)),
            Some(In::Text(payload)) => payload,
        };
        match self.protocol.handle_payload(&payload, Instant::now()) {
            Request::Heartbeat => self.send(Bytes::from_static(HEARTBEAT_ACK)).await,
            Request::Identify(identify) => self.identify(identify).await,
            Request::Resume(resume) => self.resume(resume).await,
            Request::Command(command) => self.command(command),
            Request::Close(close) => {
                if close.code == Close::DECODE_ERROR && self.attached.is_some() {
                    self.ctx
                        .counters
                        .invalid_commands
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(reason = close.reason, "client closed for a bad payload");
                }
                Err(self.close(close))
            }
        }
    }

    async fn send(&mut self, payload: Bytes) -> Result<(), End> {
        self.push(Out::Payload(payload)).await
    }

    /// Queues a payload made for this client alone, once the bytes of
    /// those already queued allow it (within `write_timeout`).
    async fn send_owned(&mut self, payload: Vec<u8>) -> Result<(), End> {
        let timeout = self.ctx.config.limits.write_timeout;
        let share = u32::try_from(payload.len().clamp(1, OWNED_BYTES)).unwrap_or(u32::MAX);
        let permit =
            tokio::time::timeout(timeout, self.owned.clone().acquire_many_owned(share)).await;
        let Ok(Ok(permit)) = permit else {
            return Err(End::Resumable);
        };
        self.push(Out::Owned(Bytes::from(payload), permit)).await
    }

    /// Queues for the writer, waiting at most `write_timeout` for room:
    /// a client that stops reading is let go, resumable.
    async fn push(&mut self, out: Out) -> Result<(), End> {
        let timeout = self.ctx.config.limits.write_timeout;
        match tokio::time::timeout(timeout, self.out.send(out)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Resumable),
        }
    }

    fn token_ok(&self, token: &str) -> bool {
        !self.ctx.config.validate_token || self.ctx.config.token.matches(token)
    }

    /// The close for a shard Discord closed for good: its own code.
    fn fatal(&mut self, code: u16) -> End {
        self.close(Close::new(code, fatal_reason(code)))
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
        if let Some(code) = shard.fatal_close() {
            return Err(self.fatal(code));
        }
        match tokio::time::timeout(READY_WAIT, shard.ready()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                let code = shard.fatal_close().unwrap_or(Close::UNKNOWN_ERROR);
                return Err(self.fatal(code));
            }
            // Not ready in time: the client identifies again a little later.
            Err(_) => {
                self.protocol.unauthenticated(Instant::now());
                return self.send(Bytes::from_static(INVALID_SESSION)).await;
            }
        }
        if identify.compress && self.transport == Compression::None {
            self.transport = Compression::ZlibPayload;
            self.push(Out::Compression(Compression::ZlibPayload))
                .await?;
        }
        let session_id = self.ctx.session_id();
        let ready_session = ReadySession {
            session_id: &session_id,
            resume_gateway_url: &self.ctx.config.externally_accessible_url,
        };
        // Under the shard's lock only the cheap copy (an `Arc` per guild);
        // the payloads are written here, one at a time, as the client
        // takes them.
        let snapshot = shard.snapshot(shard_pool::Cache::snapshot);
        let mut ready = Vec::new();
        if snapshot
            .value
            .write_ready(1, ready_session, &mut ready)
            .is_err()
        {
            self.protocol.unauthenticated(Instant::now());
            return self.send(Bytes::from_static(INVALID_SESSION)).await;
        }
        self.send_owned(ready).await?;
        let mut last_seq = 1;
        for guild in snapshot.value.into_guilds() {
            last_seq += 1;
            let mut out = Vec::new();
            guild.write(last_seq, &mut out);
            drop(guild);
            self.send_owned(out).await?;
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
                    self.protocol.unauthenticated(Instant::now());
                    return self.send(Bytes::from_static(INVALID_SESSION)).await;
                }
            }
        };
        let now = Instant::now();
        let pool = self.ctx.pool.clone();
        if let Some(code) = pool.shard(session.shard).and_then(ShardHandle::fatal_close) {
            self.ctx
                .sessions
                .detach(&resume.session_id, session, false, now);
            return Err(self.fatal(code));
        }
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
            self.protocol.unauthenticated(now);
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

    /// Forwards a command to the shard of its guild, within the shard's
    /// budget: a client over its share is closed with 4008, as Discord
    /// would close it.
    fn command(&mut self, command: Command) -> Result<(), End> {
        let Some(attached) = &self.attached else {
            return Ok(());
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
            return Ok(());
        };
        let clients = self.ctx.counters.clients_of(target).max(1);
        match self.ctx.budgets.spend(target, self.id, clients, now) {
            Spend::Send => {}
            spend => {
                self.ctx
                    .counters
                    .over_budget
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(
                    shard = target,
                    op = command.op,
                    ?spend,
                    "client closed: over its share of the shard's command budget"
                );
                return Err(self.close(Close::new(
                    Close::RATE_LIMITED,
                    "over this client's share of the shard's commands per minute",
                )));
            }
        }
        match (command.op, command.nonce, command.guild_id) {
            (8, Some(nonce), _) => self.ctx.routes.nonce(nonce, &attached.id, now),
            (4, _, Some(guild)) => self.ctx.routes.voice(guild, &attached.id, now),
            _ => {}
        }
        let Ok(json) = String::from_utf8(command.payload.to_vec()) else {
            return Ok(());
        };
        if shard.send(json).is_err() {
            tracing::warn!(shard = target, "shard stopped; command dropped");
        }
        Ok(())
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
                self.protocol.unauthenticated(Instant::now());
                self.send(Bytes::from_static(INVALID_SESSION)).await
            }
            Ok(ShardEvent::Closed { code, .. }) => Err(self.fatal(code)),
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
            return self.push(event).await.map(|()| true);
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
            if attached.shard.behind(attached.session.index) {
                // Sent, but the ring would soon lose what follows.
                return Err(self.too_slow());
            }
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

/// The reason sent with a fatal close code, as Discord words it.
fn fatal_reason(code: u16) -> &'static str {
    match code {
        Close::AUTHENTICATION_FAILED => "Discord refused the proxy's token (authentication failed)",
        4010 => "Discord refused the shard (invalid shard)",
        4011 => "Discord requires more shards (sharding required)",
        4012 => "Discord refused the API version (invalid API version)",
        4013 => "Discord refused the proxy's intents (invalid intents)",
        4014 => "Discord refused the proxy's privileged intents (disallowed intents)",
        _ => "the shard stopped",
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
