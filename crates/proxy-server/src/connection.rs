//! One client connection: a reader task, a writer task, and the task that
//! drives the protocol between them and the session table.
//!
//! `read_frame` is not cancel-safe, so it has a task of its own that only
//! reads and hands messages over a channel. The writer owns the socket's
//! write half, the connection's compression context and, once the client
//! is served, its cursor into the shard's ring (a [`Follower`]): it wakes
//! when the shard has news, takes every event after its cursor, writes them
//! as frames into one buffer and sends that with one write. So delivery,
//! the replay of a RESUME and a client's lag are one mechanism: a resume is
//! a cursor placed back, and a client whose cursor falls `backpressure`
//! events behind (or half of what the ring holds) is closed resumably while
//! the ring still holds what it missed.
//!
//! The driver answers what the client sends (heartbeats, IDENTIFY, RESUME,
//! commands), hands the writer payloads of its own (HELLO, READY, guilds,
//! op 9) through a queue, and is told by the writer when the shard's stream
//! ends for this client (a reset, a close for good, a lag).
//!
//! Everything a client can make the connection hold is bounded: a message
//! by `limits.max_message_bytes` across its fragments (checked before more
//! is buffered), control frames waiting for a client that does not read by
//! `limits.max_control_frames`, the time to IDENTIFY by
//! `limits.identify_timeout`, every write by `limits.write_timeout`; and a
//! connection has no compression context before it identifies (see
//! `prelude.rs`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Role, WebSocket, WebSocketError, WebSocketRead};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use shard_pool::{
    Dispatch, Follower, Outcome, Route, Session as ReadySession, ShardEvent, ShardHandle,
};
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use wire_codec::{Compression, Encoder, SharedBody, SharedCompressor};

use crate::context::{Context, HEARTBEAT_ACK, SHUTDOWN, ZlibStream, lock};
use crate::limits::Spend;
use crate::protocol::{Close, Command, Identify, Protocol, Request, Resume};
use crate::session::{Attach, Progress, SeqMap, Session};

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
    /// A payload the proxy made (HELLO, ACK, op 9).
    Payload(Bytes),
    /// A payload made for this client alone (READY, a guild), holding its
    /// share of [`OWNED_BYTES`] until it is written.
    Owned(Bytes, OwnedSemaphorePermit),
    /// From now on, compress with this (payload compression after
    /// IDENTIFY).
    Compression(Compression),
    /// From now on, deliver the shard's events after the follower's cursor.
    Follow(Box<Follow>),
}

/// A control frame for the writer, ahead of anything queued.
#[derive(Debug)]
enum Control {
    Pong(Vec<u8>),
    /// A close frame's payload: the code, then the reason.
    Close(Vec<u8>),
}

impl Control {
    fn close(close: &Close) -> Self {
        let mut payload = close.code.to_be_bytes().to_vec();
        payload.extend_from_slice(close.reason.as_bytes());
        Self::Close(payload)
    }
}

/// What the writer tells the driver: the shard's stream ended for this
/// client; the writer follows no more.
#[derive(Debug)]
enum Back {
    /// A new upstream session: the client's session cannot go on.
    Reset,
    /// Discord closed the shard for good with this code.
    Closed(u16),
    /// The client fell too far behind (or past what the ring holds).
    TooSlow,
}

/// A session's stream, handed to the writer.
#[derive(Debug)]
struct Follow {
    events: Follower,
    shard: ShardHandle,
    session_id: String,
    progress: Arc<Mutex<Progress>>,
    /// Since when the client has been more than `backpressure` events
    /// behind, and how far behind it was then.
    over: Option<(Instant, u64)>,
    /// On a zlib-stream connection: counted among its shard's zlib-stream
    /// clients (they share bodies when they are enough).
    zlib_stream: Option<ZlibStream>,
}

const INVALID_SESSION: &[u8] = br#"{"t":null,"s":null,"op":9,"d":false}"#;

/// The most payload bytes taken from the ring for one write.
const BATCH_BYTES: usize = 64 * 1024;

/// A write buffer larger than this is let go once the client is caught up:
/// an idle connection holds no buffer.
const KEEP_BUFFER: usize = 16 * 1024;

/// The most bytes of payloads made for one client (its READY and guilds)
/// that may wait for it: the queue counts entries, and one guild can be
/// megabytes. Shared payloads (the shard's events) cost nothing per client.
const OWNED_BYTES: usize = 1 << 20;

/// How many of the driver's own payloads may wait for the writer.
const OUT_QUEUE: usize = 16;

/// How long a client may stay more than `backpressure` events behind
/// without catching up before it counts as too slow.
const SLOW_GRACE: Duration = Duration::from_secs(1);

/// How long a closed connection keeps reading (and dropping) what its
/// client still sends, so that the client gets the close frame.
const LINGER: Duration = Duration::from_secs(1);

/// How long a RESUME waits for the old connection of its session to let go.
const TAKEOVER_WAIT: Duration = Duration::from_secs(2);

/// How much earlier than its connection dropped a session's missed events
/// are looked for in a cluster's event log: the clocks of the nodes and of
/// NATS may differ this much. The log must keep the session ttl and this
/// much more.
pub const LOG_MARGIN: Duration = Duration::from_mins(1);

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
pub(crate) async fn serve(ws: WebSocket<Socket>, query: String, ctx: Arc<Context>) {
    let limits = ctx.config.limits.clone();
    // The reader is fastwebsockets'; the writer writes frames itself, many
    // to one buffer.
    let (read, write) = tokio::io::split(ws.into_inner());
    let (mut read, _) =
        fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
    // Per frame; the reader bounds whole messages.
    read.set_max_message_size(limits.max_message_bytes.saturating_add(1));
    read.set_auto_close(true);
    read.set_auto_pong(true);
    // Room for the control frames a client may leave unread, and one more
    // for the proxy's own close.
    let (ctl_tx, ctl_rx) = mpsc::channel(limits.max_control_frames.max(1) + 1);
    let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
    let (back_tx, back_rx) = mpsc::channel(1);
    let (in_tx, in_rx) = mpsc::channel(64);
    let transport = transport(&query);
    let compression = *transport.as_ref().unwrap_or(&Compression::None);
    let writer = tokio::spawn(
        Writer {
            write,
            compression,
            encoder: None,
            prelude_sent: 0,
            follow: None,
            back: back_tx,
            buffer: Vec::new(),
            scratch: Vec::new(),
            events: Vec::new(),
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
            driver.run(in_rx, back_rx).await;
        }
        Err(close) => {
            let _ = ctl_tx.try_send(Control::close(&close));
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
    ctl: mpsc::Sender<Control>,
    max_message: usize,
) {
    let mut assembler = Assembler::new(max_message);
    loop {
        let frame = read
            .read_frame::<_, Flooded>(&mut |frame| {
                let queued = ctl.try_send(control(&frame)).map_err(|_| Flooded);
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

/// The answer fastwebsockets asks to send for a control frame, owned.
fn control(frame: &Frame<'_>) -> Control {
    let payload = frame.payload.to_vec();
    match frame.opcode {
        OpCode::Close => Control::Close(payload),
        _ => Control::Pong(payload),
    }
}

/// Appends a server frame's header (final, unmasked) to `out`.
fn frame_header(opcode: OpCode, len: usize, out: &mut Vec<u8>) {
    out.push(0x80 | opcode as u8);
    if len < 126 {
        // Below 126.
        #[allow(clippy::cast_possible_truncation)]
        out.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// The write half of a connection, its compression and its stream.
struct Writer {
    write: WriteHalf<Socket>,
    compression: Compression,
    /// The connection's own context, made at its first message that is not
    /// in the prelude.
    encoder: Option<Encoder>,
    /// Prelude messages sent so far (while `encoder` is `None`).
    prelude_sent: usize,
    /// The session's stream, once the client is served.
    follow: Option<Box<Follow>>,
    back: mpsc::Sender<Back>,
    /// Frames waiting for the next write.
    buffer: Vec<u8>,
    /// One payload, before it is compressed.
    scratch: Vec<u8>,
    /// Events taken from the ring for one write.
    events: Vec<ShardEvent>,
    ctx: Arc<Context>,
}

/// The writer cannot go on: the client did not take a write in time, or
/// compression failed.
#[derive(Debug)]
struct Stop;

impl Writer {
    async fn run(mut self, mut out: mpsc::Receiver<Out>, mut ctl: mpsc::Receiver<Control>) {
        loop {
            let following = self.follow.is_some();
            tokio::select! {
                biased;
                Some(control) = ctl.recv() => {
                    let close = matches!(control, Control::Close(_));
                    let (opcode, payload) = match control {
                        Control::Pong(payload) => (OpCode::Pong, payload),
                        Control::Close(payload) => (OpCode::Close, payload),
                    };
                    frame_header(opcode, payload.len(), &mut self.buffer);
                    self.buffer.extend_from_slice(&payload);
                    if self.flush().await.is_err() {
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
                message = out.recv() => {
                    let Some(message) = message else {
                        let _ = self.flush().await;
                        return;
                    };
                    if self.message(message).is_err() {
                        return;
                    }
                    // What else is queued goes in the same write.
                    while let Ok(message) = out.try_recv() {
                        if self.message(message).is_err() {
                            return;
                        }
                    }
                }
                () = changed(&mut self.follow), if following => {}
            }
            if self.pump().is_err() || self.flush().await.is_err() {
                return;
            }
        }
    }

    /// Handles one message of the driver's, adding to the write buffer.
    fn message(&mut self, message: Out) -> Result<(), Stop> {
        match message {
            Out::Payload(payload) => self.frame(&payload),
            // The permit is released once the payload is in the buffer.
            Out::Owned(payload, _permit) => self.frame(&payload),
            Out::Compression(next) => {
                self.compression = next;
                self.encoder = None;
                self.prelude_sent = 0;
                Ok(())
            }
            Out::Follow(mut follow) => {
                if self.compression == Compression::ZlibStream {
                    follow.zlib_stream = Some(self.ctx.zlib_streams.join(follow.shard.id()));
                }
                self.follow = Some(follow);
                Ok(())
            }
        }
    }

    /// Takes what the shard has after the cursor (one batch) into the write
    /// buffer, numbering each dispatch for this session.
    fn pump(&mut self) -> Result<(), Stop> {
        let Some(mut follow) = self.follow.take() else {
            return Ok(());
        };
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        let taken = follow.events.take(BATCH_BYTES, &mut events);
        let mut end = None;
        if taken.is_err() {
            end = Some(Back::TooSlow);
        }
        let settings = self.ctx.config.client_compression;
        let share = settings.zlib_shared
            && match self.compression {
                Compression::ZlibPayload => true,
                Compression::ZlibStream => follow
                    .zlib_stream
                    .as_ref()
                    .is_some_and(|z| z.clients() >= settings.zlib_shared_min_clients),
                _ => false,
            };
        let mut progress = lock(&follow.progress);
        if progress.sealed {
            // The connection is ending and its session was saved: the
            // stream ends here (the close frame follows).
            return Ok(());
        }
        // A resume whose replay is empty is answered at once.
        if progress.resumed_at.is_some_and(|at| progress.index >= at) {
            self.resumed(&mut progress)?;
        }
        for event in events.drain(..) {
            let dispatch = match event {
                ShardEvent::Dispatch(dispatch) => dispatch,
                ShardEvent::Reset { .. } => {
                    end = Some(Back::Reset);
                    break;
                }
                ShardEvent::Closed { code, .. } => {
                    end = Some(Back::Closed(code));
                    break;
                }
            };
            if dispatch.index() <= progress.index {
                continue;
            }
            progress.index = dispatch.index();
            if dispatch.audience().includes(&follow.session_id) {
                progress.seq += 1;
                let seq = progress.seq;
                progress.map.record(seq, dispatch.index());
                self.dispatch(&dispatch, seq, share)?;
            }
            if progress.resumed_at.is_some_and(|at| progress.index >= at) {
                self.resumed(&mut progress)?;
            }
        }
        self.events = events;
        let index = progress.index;
        drop(progress);
        if end.is_none() && self.too_slow(&mut follow, index) {
            end = Some(Back::TooSlow);
        }
        match end {
            Some(end) => {
                // The driver answers (op 9, a close); this stream is over.
                let _ = self.back.try_send(end);
            }
            None => self.follow = Some(follow),
        }
        Ok(())
    }

    /// Whether a client whose cursor is at `index` is too slow to keep:
    /// more than `backpressure` events behind for [`SLOW_GRACE`] without
    /// catching up (a resume's replay catches up), or at once when what it
    /// has not taken nears the end of what the ring holds, unless the
    /// shard has an event log to resume from (a cluster's): a client that
    /// resumed from it starts at the ring's end.
    fn too_slow(&self, follow: &mut Follow, index: u64) -> bool {
        let lag = follow.shard.head().saturating_sub(index);
        if !follow.shard.has_log() && follow.shard.behind(index, u64::MAX) {
            return true;
        }
        let max_lag = u64::try_from(self.ctx.config.backpressure).unwrap_or(u64::MAX);
        if lag <= max_lag {
            follow.over = None;
            return false;
        }
        let now = Instant::now();
        match follow.over {
            None => {
                follow.over = Some((now, lag));
                false
            }
            Some((since, _)) if now.duration_since(since) < SLOW_GRACE => false,
            // Caught up some over the last while: a fresh grace.
            Some((_, then)) if lag < then => {
                follow.over = Some((now, lag));
                false
            }
            Some(_) => true,
        }
    }

    /// RESUMED, numbered after what was replayed.
    fn resumed(&mut self, progress: &mut Progress) -> Result<(), Stop> {
        progress.resumed_at = None;
        progress.seq += 1;
        let seq = progress.seq;
        progress.map.record(seq, progress.index);
        let resumed = format!(r#"{{"t":"RESUMED","s":{seq},"op":0,"d":{{}}}}"#);
        self.frame(resumed.as_bytes())
    }

    /// One of the shard's dispatches, as `seq`, into the write buffer:
    /// uncompressed, a copy with the client's `s`; with zlib when `share`,
    /// the dispatch's body compressed once for every client, a copy with
    /// the client's `s` between its parts; otherwise through the
    /// connection's own context.
    fn dispatch(&mut self, dispatch: &Dispatch, seq: u64, share: bool) -> Result<(), Stop> {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(seq).as_bytes();
        let settings = self.ctx.config.client_compression;
        match self.compression {
            Compression::None => {
                let (head, tail) = dispatch.parts();
                let len = head.len() + digits.len() + tail.len();
                frame_header(OpCode::Text, len, &mut self.buffer);
                dispatch.write_digits(digits, &mut self.buffer);
                self.ctx.counters.bytes(self.compression, len);
                return Ok(());
            }
            Compression::ZlibStream | Compression::ZlibPayload if share => {
                let level = settings.zlib_level;
                if let Some(body) = dispatch.deflated(|head, tail| deflate(level, head, tail)) {
                    // What the connection's context writes next may not
                    // refer back past this message (which it never saw).
                    if self.compression == Compression::ZlibStream {
                        self.own_encoder().map_err(|_| Stop)?.cut_history();
                    }
                    let mut message = std::mem::take(&mut self.scratch);
                    message.clear();
                    if self.compression == Compression::ZlibStream {
                        body.write_stream(digits, &mut message);
                    } else {
                        body.write_payload(digits, &mut message);
                    }
                    frame_header(OpCode::Binary, message.len(), &mut self.buffer);
                    self.buffer.extend_from_slice(&message);
                    self.ctx.counters.bytes(self.compression, message.len());
                    self.scratch = message;
                    return Ok(());
                }
            }
            _ => {}
        }
        let mut text = std::mem::take(&mut self.scratch);
        text.clear();
        dispatch.write(seq, &mut text);
        let framed = self.frame(&text);
        self.scratch = text;
        framed
    }

    /// One payload, compressed as the connection asks, into the write
    /// buffer as one frame.
    fn frame(&mut self, text: &[u8]) -> Result<(), Stop> {
        if !self.compression.is_binary() {
            frame_header(OpCode::Text, text.len(), &mut self.buffer);
            self.buffer.extend_from_slice(text);
            self.ctx.counters.bytes(self.compression, text.len());
            return Ok(());
        }
        let mut compressed = std::mem::take(&mut self.buffer);
        let start = compressed.len();
        let encoded = self.encode(text, &mut compressed);
        let len = compressed.len() - start;
        // The header goes before the bytes: move them once (they are few
        // beside what compressing them cost).
        let mut header = Vec::with_capacity(10);
        frame_header(OpCode::Binary, len, &mut header);
        compressed.splice(start..start, header);
        self.buffer = compressed;
        self.ctx.counters.bytes(self.compression, len);
        encoded.map_err(|error| {
            tracing::warn!(%error, "compression failed; closing the connection");
            Stop
        })
    }

    /// Writes the buffer, within `write_timeout`. A write that waits on the
    /// client is given up early, dropping the connection, if the client's
    /// cursor nears the end of what the ring holds: its session can still
    /// resume then, a moment later it could not.
    async fn flush(&mut self) -> Result<(), Stop> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.ctx.config.limits.write_timeout;
        let written = {
            let write = self.write.write_all(&self.buffer);
            tokio::pin!(write);
            loop {
                tokio::select! {
                    written = &mut write => break written.is_ok(),
                    () = tokio::time::sleep(SLOW_GRACE) => {
                        let near_the_end = self.follow.as_ref().is_some_and(|follow| {
                            !follow.shard.has_log()
                                && follow.shard.behind(follow.events.index(), u64::MAX)
                        });
                        if near_the_end || Instant::now() >= deadline {
                            break false;
                        }
                    }
                }
            }
        };
        self.buffer.clear();
        if self.buffer.capacity() > KEEP_BUFFER
            && !self.follow.as_ref().is_some_and(|f| f.events.has_news())
        {
            self.buffer = Vec::new();
            self.scratch = Vec::new();
        }
        if written { Ok(()) } else { Err(Stop) }
    }

    /// Compresses one message: from the prelude while the connection says
    /// what every connection says, else with its own context.
    fn encode(&mut self, text: &[u8], out: &mut Vec<u8>) -> Result<(), wire_codec::Error> {
        if self.encoder.is_none()
            && let Some(frame) = self
                .ctx
                .prelude(self.compression)
                .and_then(|p| p.frame(self.prelude_sent, text))
        {
            self.prelude_sent += 1;
            out.extend_from_slice(frame);
            return Ok(());
        }
        self.own_encoder()?.encode(text, out)
    }

    /// The connection's own context, made (where the prelude left the
    /// client's decoder) if it was not yet.
    fn own_encoder(&mut self) -> Result<&mut Encoder, wire_codec::Error> {
        match &mut self.encoder {
            Some(encoder) => Ok(encoder),
            slot @ None => {
                let settings = self.ctx.config.client_compression;
                let encoder = match self.ctx.prelude(self.compression) {
                    Some(prelude) => prelude.encoder(self.prelude_sent)?,
                    None => {
                        Encoder::with_level(self.compression, settings.level(self.compression))?
                    }
                };
                Ok(slot.insert(encoder))
            }
        }
    }
}

thread_local! {
    /// Each runtime thread's deflate context for shared bodies.
    static DEFLATE: std::cell::RefCell<Option<SharedCompressor>> =
        const { std::cell::RefCell::new(None) };
}

/// A dispatch's parts compressed once, for every zlib client.
fn deflate(level: u32, head: &[u8], tail: &[u8]) -> Option<SharedBody> {
    DEFLATE.with(|slot| {
        let mut slot = slot.borrow_mut();
        let compressor = match slot.as_mut() {
            Some(compressor) if compressor.level() == level => compressor,
            _ => slot.insert(SharedCompressor::new(level)),
        };
        compressor
            .compress(head, tail)
            .map_err(|error| tracing::warn!(%error, "a shared body could not be compressed"))
            .ok()
    })
}

/// Resolves when the followed shard has news.
async fn changed(follow: &mut Option<Box<Follow>>) {
    match follow {
        Some(follow) => follow.events.changed().await,
        None => std::future::pending().await,
    }
}

/// A served session on this connection.
struct Attached {
    id: String,
    session: Session,
    shard: ShardHandle,
    progress: Arc<Mutex<Progress>>,
}

impl Attached {
    /// The session with what was sent in it; the writer numbers nothing
    /// more in it.
    fn saved(self) -> (String, Session) {
        let mut session = self.session;
        let mut progress = lock(&self.progress);
        progress.sealed = true;
        session.seq = progress.seq;
        session.index = progress.index;
        session.map = progress.map.clone();
        drop(progress);
        (self.id, session)
    }
}

struct Driver {
    ctx: Arc<Context>,
    /// Bytes of payloads made for this client that may be queued.
    owned: Arc<Semaphore>,
    /// This connection's number, for the command budget.
    id: u64,
    out: mpsc::Sender<Out>,
    /// Frames that go before anything queued: close frames.
    ctl: mpsc::Sender<Control>,
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
    async fn run(&mut self, mut incoming: mpsc::Receiver<In>, mut back: mpsc::Receiver<Back>) {
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
                // The only change is to `Some`: the proxy is shutting down,
                // with this close.
                Ok(()) = shutdown.changed() => {
                    let (code, reason) = shutdown.borrow().unwrap_or(SHUTDOWN);
                    Err(self.close(Close::new(code, reason)))
                }
                Ok(()) = disconnect.changed() => {
                    Err(self.close(Close::new(Close::UNKNOWN_ERROR, "the proxy asked every client to reconnect")))
                }
                () = kicked(kick) => {
                    Err(self.close(Close::new(Close::UNKNOWN_ERROR, "the session was resumed on another connection")))
                }
                // The writer stopped: the client did not read in time.
                () = self.out.closed() => Err(End::Resumable),
                Some(end) = back.recv() => self.stream_ended(end).await,
                message = incoming.recv() => self.incoming(message).await,
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
            let (id, session) = attached.saved();
            self.ctx.detach(&id, session, resumable, Instant::now());
        }
    }

    /// Sends a close (ahead of anything queued) and says whether the
    /// session survives it.
    fn close(&mut self, close: Close) -> End {
        // A full queue means a client that does not read: it will not read
        // this either.
        let _ = self.ctl.try_send(Control::close(&close));
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
            Request::Command(command) => self.command(command).await,
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
            live: None,
            ahead: None,
        };
        self.ctx
            .sessions
            .insert(session_id.clone(), session.clone());
        self.ctx.counters.client(id, 1);
        self.protocol.authenticated();
        self.follow(session_id, session, shard.clone(), snapshot.events, None)
            .await
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
        let mut looked = false;
        let mut session = loop {
            let attach = self
                .ctx
                .sessions
                .attach(&resume.session_id, ttl, Instant::now());
            match attach {
                Attach::Taken(session) => break session,
                // Its old connection was told to let go; it saves the session
                // as it goes.
                Attach::Busy if Instant::now() < taken => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                // Maybe handed over to the cluster, by this node or another.
                Attach::Gone | Attach::Handed
                    if !looked
                        && crate::handover::take(
                            &self.ctx,
                            &resume.session_id,
                            matches!(attach, Attach::Handed),
                        )
                        .await =>
                {
                    looked = true;
                }
                Attach::Busy | Attach::Gone | Attach::Handed => {
                    self.protocol.unauthenticated(Instant::now());
                    return self.send(Bytes::from_static(INVALID_SESSION)).await;
                }
            }
        };
        let shard = self.ctx.pool.shard(session.shard);
        // While the shard is still starting (a proxy that restarted and is
        // resuming upstream, or a follower catching up), the client waits,
        // as an IDENTIFY does: what Discord replays is part of what it
        // missed.
        if let Some(shard) = &shard {
            let _ = tokio::time::timeout(READY_WAIT, shard.ready()).await;
        }
        let now = Instant::now();
        if let Some(code) = shard.as_ref().and_then(ShardHandle::fatal_close) {
            self.ctx.detach(&resume.session_id, session, false, now);
            return Err(self.fatal(code));
        }
        let replay = match (shard, resume.seq) {
            (Some(shard), Some(seq)) => replay(&shard, &resume.session_id, &session, seq)
                .await
                .map(|(index, events, head)| (shard, seq, index, events, head)),
            _ => None,
        };
        let Some((shard, seq, index, events, head)) = replay else {
            // Past the ring, the ttl or what was sent: a new session.
            self.ctx.detach(&resume.session_id, session, false, now);
            self.protocol.unauthenticated(now);
            return self.send(Bytes::from_static(INVALID_SESSION)).await;
        };
        tracing::debug!(
            shard = session.shard,
            seq,
            index,
            head,
            sent = session.seq,
            "a session resumes"
        );
        session.seq = seq;
        session.index = index;
        session.map.record(seq, index);
        self.ctx.counters.client(session.shard, 1);
        self.protocol.authenticated();
        self.ctx
            .counters
            .replayed
            .fetch_add(head - index, std::sync::atomic::Ordering::Relaxed);
        self.follow(resume.session_id, session, shard, events, Some(head))
            .await
    }

    /// Hands the session's stream to the writer, once the session is kept
    /// where the next process finds it (with checkpoints): a client never
    /// gets an event of a session a crash would forget.
    async fn follow(
        &mut self,
        id: String,
        session: Session,
        shard: ShardHandle,
        events: Follower,
        resumed_at: Option<u64>,
    ) -> Result<(), End> {
        let progress = Arc::new(Mutex::new(Progress {
            seq: session.seq,
            index: session.index,
            map: session.map.clone(),
            resumed_at,
            sealed: false,
        }));
        self.ctx.sessions.watch(&id, &progress);
        self.attached = Some(Attached {
            id: id.clone(),
            session,
            shard: shard.clone(),
            progress: progress.clone(),
        });
        self.ctx.kept.keep(&self.ctx.sessions, &shard).await;
        crate::handover::record(&self.ctx, &id).await;
        self.push(Out::Follow(Box::new(Follow {
            events,
            shard,
            session_id: id,
            over: None,
            progress,
            zlib_stream: None,
        })))
        .await
    }

    /// Forwards a command to the shard of its guild, within the shard's
    /// budget: a client over its share is closed with 4008, as Discord
    /// would close it. A shard another node runs gets it through that node
    /// (the wait for its answer is bounded by the source).
    async fn command(&mut self, command: Command) -> Result<(), End> {
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
                tracing::info!(shard = target, op = command.op, ?spend, "over budget here");
                return Err(self.over_budget());
            }
        }
        // The answers are stamped for this session when they arrive.
        let route = match (command.op, command.nonce, command.guild_id) {
            (8, Some(nonce), _) => Route::Chunks { nonce },
            (4, _, Some(guild)) => {
                // A string or, from discord.py, a number; null for a leave.
                let channel = sonic_rs::from_slice::<sonic_rs::Value>(&command.payload)
                    .ok()
                    .and_then(|payload| {
                        let d = sonic_rs::JsonValueTrait::get(&payload, "d")?;
                        let channel = sonic_rs::JsonValueTrait::get(d, "channel_id")?;
                        crate::protocol::snowflake(channel)
                    });
                Route::Voice { guild, channel }
            }
            _ => Route::Plain,
        };
        let Ok(json) = String::from_utf8(Vec::from(command.payload)) else {
            return Ok(());
        };
        // A voice owner this node does not hold is another node's client
        // (or its session is over, and the guild already freed): taken to
        // be connected.
        let sessions = &self.ctx.sessions;
        let outcome = shard
            .command(
                shard_pool::Command::new(json, attached.id.as_str(), route.clone()),
                |owner| !sessions.is_detached(owner),
            )
            .await;
        match outcome {
            Ok(Outcome::Refused { owner }) => {
                self.ctx
                    .counters
                    .voice_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(
                    shard = target,
                    ?route,
                    %owner,
                    "op 4 not sent: another client session owns the guild's voice"
                );
            }
            Ok(Outcome::Rejoined) => {
                tracing::info!(shard = target, ?route, "voice rejoin for a new owner");
            }
            Ok(Outcome::Stopped) => {
                tracing::warn!(shard = target, "shard stopped; command dropped");
            }
            Ok(Outcome::OverBudget) => {
                tracing::info!(shard = target, "over budget at the shard's node");
                return Err(self.over_budget());
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(shard = target, %error, "command not delivered to the shard's node");
            }
        }
        Ok(())
    }

    /// Closes a client over its share of a shard's command budget (here,
    /// or at the node that runs the shard) with 4008, as Discord would,
    /// and counts it.
    fn over_budget(&mut self) -> End {
        self.ctx
            .counters
            .over_budget
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!("client closed: over its share of the shard's command budget");
        self.close(Close::new(
            Close::RATE_LIMITED,
            "over this client's share of the shard's commands per minute",
        ))
    }

    /// The writer's stream of the shard ended for this client.
    async fn stream_ended(&mut self, end: Back) -> Result<(), End> {
        match end {
            Back::Reset => {
                // The upstream session was replaced: this one cannot be
                // brought up to date. The client identifies again.
                if let Some(attached) = self.attached.take() {
                    self.ctx.counters.client(attached.shard.id(), -1);
                    let (id, session) = attached.saved();
                    self.ctx.detach(&id, session, false, Instant::now());
                }
                self.protocol.unauthenticated(Instant::now());
                self.send(Bytes::from_static(INVALID_SESSION)).await
            }
            Back::Closed(code) => Err(self.fatal(code)),
            Back::TooSlow => Err(self.too_slow()),
        }
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

/// The shard index a restored session's client stands at with `seq`, when
/// it was served as the checkpoint was written and so may have been sent
/// more than the checkpoint says: the events after it that were for it,
/// one `s` each (each dispatch carries its audience), and RESUMED once the
/// index reached the pending resume's end. `None` when `seq` is past what
/// the shard holds and will hold, or a reset lies on the way: the client
/// identifies again. The events after the checkpoint are read from the
/// ring or, when it no longer holds them (or never did: a node that began
/// following the shard from a later checkpoint), from the event log from
/// `since`.
///
/// A client may have got more than this node holds yet: from a node a
/// little ahead of this one's following, or from an owner that died
/// before it published them (the node that takes the shard over has
/// Discord replay them, numbered the same). The walk waits for them, as
/// an IDENTIFY waits for its shard, while they may still come
/// ([`may_catch_up`]).
async fn ahead(
    shard: &ShardHandle,
    session_id: &str,
    session: &Session,
    seq: u64,
    since: SystemTime,
) -> Option<u64> {
    let ahead = session.ahead?;
    let deadline = Instant::now() + READY_WAIT;
    let mut events = loop {
        if let Some((events, _)) = shard.subscribe_from_log(session.index, since).await {
            break events;
        }
        if !may_catch_up(shard) || shard.head() >= session.index {
            return None;
        }
        let mut news = shard.subscribe();
        tokio::time::timeout_at(deadline, news.changed())
            .await
            .ok()?;
    };
    let (mut s, mut index) = (session.seq, session.index);
    let mut resumed_at = ahead.resumed_at;
    let mut taken = Vec::new();
    loop {
        if s == seq {
            return Some(index);
        }
        if resumed_at.is_some_and(|at| index >= at) {
            resumed_at = None;
            s += 1;
            continue;
        }
        if s > seq {
            return None;
        }
        if taken.is_empty() {
            events.take(BATCH_BYTES, &mut taken).ok()?;
            if taken.is_empty() {
                if !may_catch_up(shard) {
                    return None;
                }
                tokio::time::timeout_at(deadline, events.changed())
                    .await
                    .ok()?;
                continue;
            }
            taken.reverse();
        }
        let ShardEvent::Dispatch(dispatch) = taken.pop()? else {
            return None;
        };
        index = dispatch.index();
        if dispatch.audience().includes(session_id) {
            s += 1;
        }
    }
}

/// Whether events a client got may still reach this node's state of
/// `shard`: one it follows (its owner publishes them, or the node that
/// takes it over has Discord replay them), or one it runs that is still
/// resuming (Discord's replay comes before RESUMED).
fn may_catch_up(shard: &ShardHandle) -> bool {
    !shard.is_local() || !shard.is_ready()
}

/// Where a session resuming from `seq` stands in its shard, and its
/// follower from there with the head then: from the ring, or past it from
/// the cluster's event log (from a little before the connection dropped).
async fn replay(
    shard: &ShardHandle,
    session_id: &str,
    session: &Session,
    seq: u64,
) -> Option<(u64, Follower, u64)> {
    let dropped = session
        .detached_at
        .map_or(Duration::ZERO, |at| at.elapsed());
    let since = shard_pool::wall_clock()
        .checked_sub(dropped + LOG_MARGIN)
        .unwrap_or(std::time::UNIX_EPOCH);
    let index = if let Some(index) = session.map.index_of(seq, session.seq) {
        index
    } else {
        let index = ahead(shard, session_id, session, seq, since).await?;
        tracing::info!(
            shard = session.shard,
            seq,
            index,
            "a session resumed from past its checkpoint"
        );
        index
    };
    let (events, head) = shard.subscribe_from_log(index, since).await?;
    Some((index, events, head))
}

/// Resolves when this connection's session is resumed elsewhere.
async fn kicked(kick: Option<Arc<Notify>>) {
    match kick {
        Some(kick) => kick.notified().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use discord_sim::{KNOWN_INTENTS, Sim, SimConfig};
    use shard_pool::{Pool, PoolConfig};

    use super::*;
    use crate::session::Ahead;

    /// Waits until `shard` has handed on event `index`.
    async fn head(shard: &ShardHandle, index: u64) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while shard.head() < index {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_session_ahead_of_its_checkpoint_is_placed_by_what_was_for_it() {
        let mut config = SimConfig::default();
        config.identify_interval = Duration::from_millis(100);
        let sim = Sim::start(config).await.unwrap();
        sim.pause_stream();
        let mut pool = PoolConfig::new(sim.token(), KNOWN_INTENTS);
        pool.api_base = Some(sim.api_base());
        pool.identify_window = sim.config().identify_interval;
        let pool = Pool::start(pool).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), pool.ready())
            .await
            .unwrap()
            .unwrap();
        let shard = &pool.shards()[0];
        let _served = shard.subscribe();
        let start = shard.head();
        for _ in 0..5 {
            sim.emit(0, "TYPING_START", r#"{"channel_id":"1"}"#)
                .unwrap();
        }
        head(shard, start + 5).await;
        // Served at a checkpoint at s 10, index `start`.
        let session = Session {
            shard: 0,
            seq: 10,
            index: start,
            map: SeqMap::new(10, start),
            attached: false,
            detached_at: None,
            kick: Arc::new(Notify::new()),
            live: None,
            ahead: Some(Ahead { resumed_at: None }),
        };
        assert_eq!(
            ahead(shard, "me", &session, 13, UNIX_EPOCH).await,
            Some(start + 3)
        );
        assert_eq!(
            ahead(shard, "me", &session, 15, UNIX_EPOCH).await,
            Some(start + 5)
        );
        assert_eq!(
            ahead(shard, "me", &session, 16, UNIX_EPOCH).await,
            None,
            "past the head"
        );
        // Its RESUMED was due at start + 2: it took s 13.
        let resuming = Session {
            ahead: Some(Ahead {
                resumed_at: Some(start + 2),
            }),
            ..session.clone()
        };
        assert_eq!(
            ahead(shard, "me", &resuming, 12, UNIX_EPOCH).await,
            Some(start + 2)
        );
        assert_eq!(
            ahead(shard, "me", &resuming, 13, UNIX_EPOCH).await,
            Some(start + 2)
        );
        assert_eq!(
            ahead(shard, "me", &resuming, 14, UNIX_EPOCH).await,
            Some(start + 3)
        );
        // Not served then: nothing past what the checkpoint says.
        let detached = Session {
            ahead: None,
            ..session.clone()
        };
        assert_eq!(ahead(shard, "me", &detached, 12, UNIX_EPOCH).await, None);
        // A member chunk another session asked for took no `s` of this
        // one; one it asked for took one.
        shard.route_chunks("theirs", "other");
        shard.route_chunks("mine", "me");
        for nonce in ["theirs", "mine"] {
            let chunk = format!(
                r#"{{"guild_id":"1","members":[],"chunk_index":0,"chunk_count":1,"nonce":"{nonce}"}}"#
            );
            sim.emit(0, "GUILD_MEMBERS_CHUNK", &chunk).unwrap();
        }
        sim.emit(0, "TYPING_START", r#"{"channel_id":"1"}"#)
            .unwrap();
        head(shard, start + 8).await;
        assert_eq!(
            ahead(shard, "me", &session, 15, UNIX_EPOCH).await,
            Some(start + 5)
        );
        assert_eq!(
            ahead(shard, "me", &session, 16, UNIX_EPOCH).await,
            Some(start + 7),
            "its own chunk"
        );
        assert_eq!(
            ahead(shard, "me", &session, 17, UNIX_EPOCH).await,
            Some(start + 8)
        );
        assert_eq!(
            ahead(shard, "other", &session, 16, UNIX_EPOCH).await,
            Some(start + 6),
            "the other's"
        );
    }
}
