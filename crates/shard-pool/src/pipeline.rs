//! What happens to each payload a shard receives: scanned, applied to the
//! state cache when the flags need it, numbered and handed on. No I/O: the
//! shard task calls [`Pipeline::handle`] under the shard's lock and
//! publishes what it returns under the same lock, so a snapshot taken under
//! it is exactly the state before the next event.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use seqpatch::Scan;
use state_cache::{Cache, Flags};
use wire_codec::SharedBody;

use crate::checkpoint::{Reader, put_bytes, put_str};

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
            Self::Dispatch(dispatch) => dispatch.index(),
            Self::Reset { index } | Self::Closed { index, .. } => *index,
        }
    }
}

/// One upstream dispatch, in Discord's envelope (`{"t":…,"s":…,"op":0,"d":…}`,
/// compact, in that order: rewritten once if upstream sent another shape),
/// shared: cloning it is one reference count.
#[derive(Clone, Debug)]
pub struct Dispatch(Arc<Inner>);

/// Who receives a dispatch: decided once, when it arrives, and obeyed by
/// every path that hands it on (live, a resume's replay, a process that
/// restarted from a checkpoint).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Audience {
    /// Every client of the shard.
    #[default]
    Everyone,
    /// The client session with this id alone: the member chunks it asked
    /// for, the voice server of the guild whose voice it owns.
    Session(Arc<str>),
    /// No client: a voice server update no session asked for.
    Nobody,
    /// Every client but this session: the bot leaving a channel on its way
    /// back into it for a new owner, which must not see the leave.
    AllBut(Arc<str>),
}

impl Audience {
    /// Whether client session `id` receives it.
    #[must_use]
    pub fn includes(&self, id: &str) -> bool {
        match self {
            Self::Everyone => true,
            Self::Session(session) => **session == *id,
            Self::Nobody => false,
            Self::AllBut(session) => **session != *id,
        }
    }

    /// Appends it for a checkpoint.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        match self {
            Self::Everyone => out.push(0),
            Self::Session(id) => {
                out.push(1);
                put_str(out, id);
            }
            Self::Nobody => out.push(2),
            Self::AllBut(id) => {
                out.push(3);
                put_str(out, id);
            }
        }
    }

    /// Reads what [`Audience::write`] wrote.
    pub(crate) fn read(reader: &mut Reader<'_>) -> Result<Self, crate::Error> {
        match reader.u8()? {
            0 => Ok(Self::Everyone),
            1 => Ok(Self::Session(reader.str()?.into())),
            2 => Ok(Self::Nobody),
            3 => Ok(Self::AllBut(reader.str()?.into())),
            other => Err(crate::Error::checkpoint(format!("audience {other}"))),
        }
    }
}

#[derive(Debug)]
struct Inner {
    index: u64,
    payload: Bytes,
    scan: Scan,
    audience: Audience,
    /// [`Dispatch::parts`] compressed once, for every zlib client.
    deflated: OnceLock<Option<SharedBody>>,
}

impl Dispatch {
    /// A dispatch from a payload already in Discord's envelope; `None` if it
    /// is not a gateway payload with `s`.
    #[must_use]
    pub fn new(index: u64, payload: Bytes) -> Option<Self> {
        Self::stamped(index, payload, Audience::Everyone)
    }

    /// A dispatch for `audience` (read back from a packed block or a
    /// checkpoint); `None` as [`Dispatch::new`].
    pub(crate) fn stamped(index: u64, payload: Bytes, audience: Audience) -> Option<Self> {
        let scan = seqpatch::scan(&payload).ok()?;
        Self::scanned(index, payload, scan, audience)
    }

    fn scanned(index: u64, payload: Bytes, scan: Scan, audience: Audience) -> Option<Self> {
        scan.seq_range()?;
        Some(Self(Arc::new(Inner {
            index,
            payload,
            scan,
            audience,
            deflated: OnceLock::new(),
        })))
    }

    /// Who receives it.
    #[must_use]
    pub fn audience(&self) -> &Audience {
        &self.0.audience
    }

    /// The shard's event index.
    #[must_use]
    pub fn index(&self) -> u64 {
        self.0.index
    }

    /// The payload, in Discord's envelope, with upstream's `s`.
    #[must_use]
    pub fn payload(&self) -> &Bytes {
        &self.0.payload
    }

    /// Where its `op`, `t`, `s` and `d` are.
    #[must_use]
    pub fn scan(&self) -> &Scan {
        &self.0.scan
    }

    /// The event name.
    #[must_use]
    pub fn event_type(&self) -> Option<&str> {
        self.0.scan.event_type(&self.0.payload)
    }

    /// The payload around the digits of `s`: what every client of the
    /// shard gets, its own `s` between the two.
    #[must_use]
    pub fn parts(&self) -> (&[u8], &[u8]) {
        let payload = &self.0.payload[..];
        match self.0.scan.seq_range() {
            Some(s) => (&payload[..s.start], &payload[s.end..]),
            // `new` checks there is an `s`.
            None => (payload, &[]),
        }
    }

    /// Appends the payload with `s` set to `seq` to `out`.
    pub fn write(&self, seq: u64, out: &mut Vec<u8>) {
        let mut digits = itoa::Buffer::new();
        self.write_digits(digits.format(seq).as_bytes(), out);
    }

    /// Appends the payload with `digits` (a client's `s`, formatted) as
    /// its `s` to `out`: one copy, the digits written over the shard's in
    /// place when they are as wide (the usual case), else the parts around
    /// them and the digits between.
    pub fn write_digits(&self, digits: &[u8], out: &mut Vec<u8>) {
        let payload = &self.0.payload[..];
        let (head, tail) = self.parts();
        if head.len() + digits.len() + tail.len() == payload.len() {
            let at = out.len() + head.len();
            out.extend_from_slice(payload);
            out[at..at + digits.len()].copy_from_slice(digits);
        } else {
            out.reserve(head.len() + digits.len() + tail.len());
            out.extend_from_slice(head);
            out.extend_from_slice(digits);
            out.extend_from_slice(tail);
        }
    }
}

impl Dispatch {
    /// [`parts`](Self::parts), compressed once for every zlib client of
    /// the shard: the first caller runs `compress`, the others get what it
    /// made (`None` if it failed). A dispatch read back from a packed block
    /// of the ring is a new one, compressed again if a client needs it.
    pub fn deflated(
        &self,
        compress: impl FnOnce(&[u8], &[u8]) -> Option<SharedBody>,
    ) -> Option<&SharedBody> {
        self.0
            .deflated
            .get_or_init(|| {
                let (head, tail) = self.parts();
                compress(head, tail)
            })
            .as_ref()
    }
}

/// How many member chunk nonces a shard remembers: the answers come within
/// seconds of the request, so only a flood of requests pushes out one
/// still waiting (its chunks then go to every client, as unrouted ones).
pub const MAX_NONCES: usize = 1024;

/// The largest voice server update (its `d`) a guild's voice keeps:
/// Discord's are about 100 bytes; a larger one is handed on but not kept.
const MAX_VOICE_SERVER: usize = 1024;

/// The sessions the answers of their own requests go to.
#[derive(Debug, Default)]
struct Routes {
    /// Member chunk nonces and who asked, oldest first.
    nonces: VecDeque<(Box<str>, Arc<str>)>,
    /// Each guild's voice owner: the session whose op 4 joined.
    voice: HashMap<u64, Voice>,
    /// The bot's user id (READY's), to tell its own voice states.
    bot: Option<u64>,
}

/// A guild's voice, owned by one client session.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Voice {
    owner: Arc<str>,
    phase: VoicePhase,
    /// The `d` of the last voice server update for the owner (at most
    /// [`MAX_VOICE_SERVER`] bytes); dropped when a leave is sent.
    server: Option<Bytes>,
}

impl Voice {
    fn new(owner: &str, phase: VoicePhase) -> Self {
        Self {
            owner: owner.into(),
            phase,
            server: None,
        }
    }

    /// A leave (op 4 with no channel) is on its way upstream.
    fn leave(&mut self) {
        self.phase = VoicePhase::Leaving;
        self.server = None;
    }
}

/// Where a guild's voice connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VoicePhase {
    /// The owner sent op 4 with a channel; Discord has not confirmed.
    Joining,
    /// Discord says the bot is in a channel of the guild.
    Connected,
    /// A leave was sent (by the owner, or for an owner that is gone); the
    /// guild is free once Discord says the bot left.
    Leaving,
    /// A new owner joins the channel the bot is already in: a leave then
    /// its join were sent; the leave's voice state is not for it.
    Rejoining,
}

impl VoicePhase {
    fn code(self) -> u8 {
        match self {
            Self::Joining => 0,
            Self::Connected => 1,
            Self::Leaving => 2,
            Self::Rejoining => 3,
        }
    }

    fn of(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Joining,
            1 => Self::Connected,
            2 => Self::Leaving,
            3 => Self::Rejoining,
            _ => return None,
        })
    }
}

/// What [`Pipeline::voice_command`] decided about a client's op 4.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VoiceCommand {
    /// Send it upstream.
    Forward,
    /// Another session owns the guild's voice: not sent.
    Refused {
        /// The owning session.
        owner: Arc<str>,
    },
    /// The bot is already in the channel asked for, which Discord would
    /// answer with nothing: send a leave (op 4 with no channel) first, then
    /// the join; the sender owns the guild's voice now.
    Rejoin,
}

impl Routes {
    fn chunks(&mut self, nonce: &str, session: &str) {
        self.nonces.retain(|(n, _)| **n != *nonce);
        if self.nonces.len() >= MAX_NONCES {
            self.nonces.pop_front();
        }
        self.nonces.push_back((nonce.into(), session.into()));
    }

    /// Who a dispatch named `t` with body `d` is for; the last chunk of a
    /// request lets its route go.
    fn audience(&mut self, t: &str, d: Option<&[u8]>) -> Audience {
        let field = |key: &str| {
            let value = sonic_rs::get(d?, [key]).ok()?;
            sonic_rs::JsonValueTrait::as_str(&value).map(str::to_owned)
        };
        match t {
            "GUILD_MEMBERS_CHUNK" => {
                let Some(nonce) = field("nonce") else {
                    return Audience::Everyone;
                };
                let Some(at) = self.nonces.iter().position(|(n, _)| **n == *nonce) else {
                    return Audience::Everyone;
                };
                let number = |key: &str| {
                    let value = sonic_rs::get(d?, [key]).ok()?;
                    sonic_rs::JsonValueTrait::as_u64(&value)
                };
                let session = self.nonces[at].1.clone();
                if let (Some(index), Some(count)) = (number("chunk_index"), number("chunk_count"))
                    && index + 1 >= count
                {
                    self.nonces.remove(at);
                }
                Audience::Session(session)
            }
            "VOICE_SERVER_UPDATE" => {
                let guild = field("guild_id").and_then(|guild| guild.parse::<u64>().ok());
                self.voice_server(guild, d)
            }
            _ => Audience::Everyone,
        }
    }

    /// Who guild `guild`'s voice server update `d` is for: its owner,
    /// which keeps it as the guild's last (unless over
    /// [`MAX_VOICE_SERVER`] bytes), or nobody when the guild has no owner
    /// or is leaving.
    fn voice_server(&mut self, guild: Option<u64>, d: Option<&[u8]>) -> Audience {
        let Some(voice) = guild
            .and_then(|guild| self.voice.get_mut(&guild))
            .filter(|voice| voice.phase != VoicePhase::Leaving)
        else {
            return Audience::Nobody;
        };
        voice.server = d
            .filter(|d| d.len() <= MAX_VOICE_SERVER)
            .map(Bytes::copy_from_slice);
        if voice.server.is_none() {
            tracing::debug!(?guild, "voice server update not kept: over 1 KiB");
        }
        Audience::Session(voice.owner.clone())
    }

    /// Follows the bot's own voice state (connected, or out of the guild's
    /// voice, which frees it) and says who receives it: everyone, but the
    /// new owner of a rejoin not the leave on its way.
    fn voice_state(&mut self, d: Option<&[u8]>) -> Audience {
        let snowflake = |key: &str| {
            let value = sonic_rs::get(d?, [key]).ok()?;
            sonic_rs::JsonValueTrait::as_str(&value)?
                .parse::<u64>()
                .ok()
        };
        if self.bot.is_none() || snowflake("user_id") != self.bot {
            return Audience::Everyone;
        }
        let Some(guild) = snowflake("guild_id") else {
            return Audience::Everyone;
        };
        let in_channel = snowflake("channel_id").is_some();
        match self.voice.get_mut(&guild) {
            Some(voice) if voice.phase == VoicePhase::Rejoining && !in_channel => {
                voice.phase = VoicePhase::Joining;
                Audience::AllBut(voice.owner.clone())
            }
            Some(_) if !in_channel => {
                self.voice.remove(&guild);
                Audience::Everyone
            }
            Some(voice) => {
                if voice.phase == VoicePhase::Joining {
                    voice.phase = VoicePhase::Connected;
                }
                Audience::Everyone
            }
            None => Audience::Everyone,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&u32::try_from(self.nonces.len()).unwrap_or(0).to_le_bytes());
        for (nonce, session) in &self.nonces {
            put_str(out, nonce);
            put_str(out, session);
        }
        out.extend_from_slice(&u32::try_from(self.voice.len()).unwrap_or(0).to_le_bytes());
        for (guild, voice) in &self.voice {
            out.extend_from_slice(&guild.to_le_bytes());
            put_str(out, &voice.owner);
            out.push(voice.phase.code());
            match &voice.server {
                Some(server) => {
                    out.push(1);
                    put_bytes(out, server);
                }
                None => out.push(0),
            }
        }
        out.extend_from_slice(&self.bot.unwrap_or(0).to_le_bytes());
    }

    fn read(reader: &mut Reader<'_>) -> Result<Self, crate::Error> {
        let mut routes = Self::default();
        for _ in 0..reader.count(4)?.min(MAX_NONCES) {
            let nonce = reader.str()?.into();
            routes.nonces.push_back((nonce, reader.str()?.into()));
        }
        // A guild, an owner's length, a phase and a server's marker.
        for _ in 0..reader.count(12)? {
            let guild = reader.u64()?;
            let owner = reader.str()?.into();
            let phase = VoicePhase::of(reader.u8()?)
                .ok_or_else(|| crate::Error::checkpoint("a voice phase"))?;
            let server = match reader.option(Reader::bytes)? {
                Some(server) if server.len() > MAX_VOICE_SERVER => {
                    return Err(crate::Error::checkpoint("a voice server over 1 KiB"));
                }
                server => server.map(Bytes::copy_from_slice),
            };
            let voice = Voice {
                owner,
                phase,
                server,
            };
            routes.voice.insert(guild, voice);
        }
        routes.bot = Some(reader.u64()?).filter(|&bot| bot != 0);
        Ok(routes)
    }
}

/// The payload rewritten in Discord's envelope, or `None` when it already
/// is (Discord always sends that).
fn canonical(payload: &Bytes, scan: &Scan) -> Option<Bytes> {
    let envelope = scan.envelope(payload, scan.seq().unwrap_or(0));
    let mut at = 0;
    let same = envelope.slices().iter().all(|part| {
        let same = payload.get(at..at + part.len()) == Some(part);
        at += part.len();
        same
    });
    if same && at == payload.len() && scan.seq_range().is_some() {
        return None;
    }
    let mut out = Vec::with_capacity(envelope.len());
    envelope.write_to(&mut out);
    Some(Bytes::from(out))
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
/// assert_eq!((dispatch.index(), dispatch.event_type()), (1, Some("MESSAGE_CREATE")));
/// ```
#[derive(Debug)]
pub struct Pipeline {
    pub(crate) cache: Cache,
    /// The index of the last event handed on.
    pub(crate) index: u64,
    /// The upstream `s` of the last dispatch of this session.
    last_seq: Option<u64>,
    /// The upstream session READY began, to RESUME after a restart.
    upstream: Option<Upstream>,
    /// Who asked for the answers that go to one session alone.
    routes: Routes,
    /// Dispatches received, by name.
    pub(crate) events: BTreeMap<Box<str>, u64>,
    /// Dispatches received again after a resume (and dropped).
    pub(crate) duplicates: u64,
    /// Payloads that were not gateway payloads (and dropped).
    pub(crate) malformed: u64,
    /// Dispatches the cache could not apply (handed on all the same).
    pub(crate) cache_errors: u64,
}

/// The layout of [`Pipeline::checkpoint`].
const PIPELINE_VERSION: u8 = 4;

/// An upstream session, as READY named it: what a RESUME needs besides the
/// last `s`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Upstream {
    /// READY's `session_id`.
    pub session_id: String,
    /// READY's `resume_gateway_url`.
    pub resume_url: String,
}

impl Upstream {
    /// The session of a READY's `d`, if it names one.
    fn of_ready(d: &[u8]) -> Option<Self> {
        let field = |key: &str| {
            let value = sonic_rs::get(d, [key]).ok()?;
            sonic_rs::JsonValueTrait::as_str(&value).map(str::to_owned)
        };
        Some(Self {
            session_id: field("session_id")?,
            resume_url: field("resume_gateway_url")?,
        })
    }
}

impl Pipeline {
    /// A pipeline whose state cache keeps what `flags` says.
    #[must_use]
    pub fn new(flags: Flags) -> Self {
        Self {
            cache: Cache::new(flags),
            index: 0,
            last_seq: None,
            upstream: None,
            routes: Routes::default(),
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
        self.take(payload, None)
    }

    /// Takes one event another process's pipeline handed on (a follower of
    /// its shard): as [`handle`](Self::handle), but a dispatch goes to
    /// `audience`, as the owner decided when it came, whatever this
    /// pipeline's routes say. Fed every event the owner handed on, in
    /// order, from the same start, it gives each the owner's index.
    pub fn handle_stamped(&mut self, payload: Bytes, audience: Audience) -> Option<ShardEvent> {
        self.take(payload, Some(audience))
    }

    fn take(&mut self, payload: Bytes, stamp: Option<Audience>) -> Option<ShardEvent> {
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
            self.upstream = scan.d(&payload).and_then(Upstream::of_ready);
            self.routes.bot = scan.d(&payload).and_then(|d| {
                let id = sonic_rs::get(d, ["user", "id"]).ok()?;
                sonic_rs::JsonValueTrait::as_str(&id)?.parse().ok()
            });
            // A voice server's token is of the upstream session that ended.
            for voice in self.routes.voice.values_mut() {
                voice.server = None;
            }
            self.apply(t, &scan, &payload);
            self.index += 1;
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
        let index = self.index + 1;
        let audience = match stamp {
            Some(audience) => audience,
            None if t == "VOICE_STATE_UPDATE" => self.routes.voice_state(scan.d(&payload)),
            None => self.routes.audience(t, scan.d(&payload)),
        };
        let dispatch = match canonical(&payload, &scan) {
            None => Dispatch::scanned(index, payload, scan, audience),
            Some(rewritten) => Dispatch::stamped(index, rewritten, audience),
        };
        let Some(dispatch) = dispatch else {
            // A dispatch without `s`, which Discord never sends.
            self.malformed += 1;
            return None;
        };
        self.index += 1;
        Some(ShardEvent::Dispatch(dispatch))
    }

    /// Appends the pipeline's state to `out`: where its numbering stands
    /// (the last index handed on, the last upstream `s`), the upstream
    /// session, and its cache, in the cache's packed form. A pipeline restored from it
    /// ([`Pipeline::restore`]) and fed what upstream sends after a RESUME
    /// from that `s` hands on the same events with the same indices as
    /// this one.
    pub fn checkpoint(&self, out: &mut Vec<u8>) {
        out.push(PIPELINE_VERSION);
        out.extend_from_slice(&self.index.to_le_bytes());
        match self.last_seq {
            Some(seq) => {
                out.push(1);
                out.extend_from_slice(&seq.to_le_bytes());
            }
            None => out.push(0),
        }
        match &self.upstream {
            Some(upstream) => {
                out.push(1);
                put_str(out, &upstream.session_id);
                put_str(out, &upstream.resume_url);
            }
            None => out.push(0),
        }
        self.routes.write(out);
        self.cache.checkpoint(out);
    }

    /// The pipeline [`checkpoint`](Self::checkpoint) wrote, for a shard
    /// whose cache keeps what `flags` says. Its counters of events,
    /// duplicates and errors start again from zero.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Checkpoint`](crate::ErrorKind::Checkpoint) for another
    /// layout version or flags, or damaged bytes.
    pub fn restore(flags: Flags, bytes: &[u8]) -> Result<Self, crate::Error> {
        let mut reader = Reader::new(bytes, "the pipeline");
        let version = reader.u8()?;
        if version != PIPELINE_VERSION {
            return Err(crate::Error::checkpoint(format!(
                "pipeline layout version {version}, this build reads {PIPELINE_VERSION}"
            )));
        }
        let index = reader.u64()?;
        let last_seq = reader.option(Reader::u64)?;
        let upstream = reader.option(|reader| {
            Ok(Upstream {
                session_id: reader.str()?.to_owned(),
                resume_url: reader.str()?.to_owned(),
            })
        })?;
        let routes = Routes::read(&mut reader)?;
        let cache = Cache::restore(flags, reader.rest())
            .map_err(|error| crate::Error::checkpoint(error.to_string()))?;
        Ok(Self {
            cache,
            index,
            last_seq,
            upstream,
            routes,
            ..Self::new(flags)
        })
    }

    /// Stamps the member chunks answering `nonce` for client session
    /// `session` alone (the most recent [`MAX_NONCES`] nonces are kept; a
    /// chunk whose nonce is not among them goes to every client).
    pub fn route_chunks(&mut self, nonce: &str, session: &str) {
        self.routes.chunks(nonce, session);
    }

    /// Decides about client session `session`'s op 4 for `guild`, to
    /// `channel` (`None`: a leave). A guild's voice has one owner, the
    /// session whose op 4 joined: while it has one, another session's op 4
    /// is refused (joins and leaves alike, so that nobody steals or ends
    /// the owner's call), unless the owner is not connected (`attached`
    /// says) and the other joins the very channel the bot is in: a bot
    /// that restarted, taking its call back. Discord answers a join of the
    /// channel the bot is already in with nothing, so such a join by
    /// another session is a [`VoiceCommand::Rejoin`]. A join by the owner
    /// or in a free guild makes the sender the owner; the owner's leave
    /// starts leaving. A join while a leave is on its way (the owner's, or
    /// one sent because its session ended) makes the sender the owner as
    /// well: it follows the leave upstream, in order, and the leave's voice
    /// state is not for it. Voice server updates go to the owner alone, or
    /// to nobody. A guild the shard does not hold is not tracked: its op 4
    /// is sent as it is.
    #[must_use = "a refused op 4 must not be sent"]
    pub fn voice_command(
        &mut self,
        guild: u64,
        session: &str,
        channel: Option<u64>,
        attached: impl FnOnce(&str) -> bool,
    ) -> VoiceCommand {
        // Only guilds of this shard are tracked: a client's op 4 for any
        // other id (Discord ignores it) must not grow the table.
        if !self.cache.has_guild(guild) {
            return VoiceCommand::Forward;
        }
        let bot_channel = self.cache.bot_voice_channel(guild);
        let same_channel = channel.is_some() && channel == bot_channel;
        let current = self
            .routes
            .voice
            .get(&guild)
            .map(|voice| (voice.owner.clone(), voice.phase));
        let take = |routes: &mut Routes, phase| {
            routes.voice.insert(guild, Voice::new(session, phase));
        };
        match current {
            Some((_, VoicePhase::Leaving)) if channel.is_some() => {
                // While the bot is in a channel, the leave's voice state
                // is still to come: as in a rejoin, it is not the joiner's.
                let phase = if bot_channel.is_some() {
                    VoicePhase::Rejoining
                } else {
                    VoicePhase::Joining
                };
                take(&mut self.routes, phase);
                VoiceCommand::Forward
            }
            Some((owner, _)) if *owner != *session => {
                if same_channel && !attached(&owner) {
                    take(&mut self.routes, VoicePhase::Rejoining);
                    VoiceCommand::Rejoin
                } else {
                    VoiceCommand::Refused { owner }
                }
            }
            None if same_channel => {
                take(&mut self.routes, VoicePhase::Rejoining);
                VoiceCommand::Rejoin
            }
            Some(_) if channel.is_none() => {
                if let Some(voice) = self.routes.voice.get_mut(&guild) {
                    voice.leave();
                }
                VoiceCommand::Forward
            }
            _ if channel.is_some() => {
                take(&mut self.routes, VoicePhase::Joining);
                VoiceCommand::Forward
            }
            _ => VoiceCommand::Forward,
        }
    }

    /// Client session `session` ended for good: the guilds whose voice it
    /// owned, which now leave (`leave`: they stay owned, refusing other
    /// sessions, until Discord says the bot left; the caller sends the
    /// leave) or are freed at once.
    pub fn voice_session_ended(&mut self, session: &str, leave: bool) -> Vec<u64> {
        let mut guilds = Vec::new();
        self.routes.voice.retain(|&guild, voice| {
            if *voice.owner != *session || voice.phase == VoicePhase::Leaving {
                return true;
            }
            guilds.push(guild);
            voice.leave();
            leave
        });
        guilds
    }

    /// Each guild's voice: its owner and phase, for metrics and tests.
    #[must_use]
    pub fn voice(&self) -> Vec<(u64, Arc<str>, VoicePhase)> {
        let mut voice: Vec<_> = self
            .routes
            .voice
            .iter()
            .map(|(&guild, v)| (guild, v.owner.clone(), v.phase))
            .collect();
        voice.sort_unstable_by_key(|&(guild, _, _)| guild);
        voice
    }

    /// The `d` of the last voice server update for guild `guild`'s voice
    /// owner, kept until a leave is sent or the guild is free (whatever
    /// the cache flags; one over 1 KiB is not kept). Discord advises
    /// against caching voice server information: it is here to look at,
    /// not to replay, and a restarted owner leaves and joins again
    /// instead.
    #[must_use]
    pub fn voice_server(&self, guild: u64) -> Option<&Bytes> {
        self.routes.voice.get(&guild)?.server.as_ref()
    }

    /// The upstream session and the last `s` of it handed on: what a
    /// RESUME needs. `None` before READY.
    #[must_use]
    pub fn upstream(&self) -> Option<(&Upstream, u64)> {
        Some((self.upstream.as_ref()?, self.last_seq?))
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

    /// The index and payload of what `core` hands on for `payload`.
    fn handed_on(core: &mut Pipeline, payload: &str) -> Option<(u64, Bytes)> {
        match handle(core, payload)? {
            ShardEvent::Dispatch(d) => Some((d.index(), d.payload().clone())),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_restored_pipeline_numbers_what_a_resume_replays_as_the_original() {
        let guild = r#"{"id":"20","name":"g","unavailable":false,"roles":[],"channels":[{"id":"30","type":0,"name":"a"}]}"#;
        let update = |s: u64| {
            dispatch(
                "CHANNEL_UPDATE",
                s,
                &format!(r#"{{"id":"30","type":0,"name":"n{s}","guild_id":"20"}}"#),
            )
        };
        let mut original = Pipeline::new(Flags::default());
        handle(&mut original, READY);
        handle(&mut original, &dispatch("GUILD_CREATE", 2, guild));
        for s in 3..=30 {
            handled(&mut original, &update(s));
        }
        let mut checkpoint = Vec::new();
        original.checkpoint(&mut checkpoint);
        let mut restored = Pipeline::restore(Flags::default(), &checkpoint).unwrap();
        assert_eq!(restored.index(), original.index());
        let upstream = Upstream {
            session_id: "x".to_owned(),
            resume_url: "ws://x".to_owned(),
        };
        assert_eq!(
            restored.upstream(),
            Some((&upstream, 30)),
            "what RESUME needs"
        );

        // Discord replays from the last `s` the checkpoint had (a little
        // earlier here: those are repeats), then says RESUMED.
        for s in 27..=30 {
            assert_eq!(handed_on(&mut restored, &update(s)), None, "a repeat");
        }
        assert!(handle(&mut restored, &dispatch("RESUMED", 31, "{}")).is_none());
        for s in 32..=60 {
            let payload = update(s);
            assert_eq!(
                handed_on(&mut restored, &payload),
                handed_on(&mut original, &payload)
            );
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        original.cache().write_guild(20, 1, &mut a);
        restored.cache().write_guild(20, 1, &mut b);
        assert_eq!(a, b);
        assert!(String::from_utf8(b).unwrap().contains(r#""name":"n60""#));

        // Another cache's flags, a cut, another version: errors.
        let refused = |bytes: &[u8], flags: Flags| {
            let error = Pipeline::restore(flags, bytes).unwrap_err();
            assert!(
                matches!(error.kind(), crate::ErrorKind::Checkpoint(_)),
                "{error}"
            );
            assert!(error.to_string().starts_with("checkpoint: "), "{error}");
        };
        refused(&checkpoint, Flags::ALL);
        for n in [0, 1, 9, 10, 17, 18, checkpoint.len() - 1] {
            refused(&checkpoint[..n], Flags::default());
        }
        let mut version = checkpoint.clone();
        version[0] = 9;
        refused(&version, Flags::default());
    }

    #[test]
    fn answers_are_stamped_for_who_asked_when_they_arrive_and_routes_survive_a_checkpoint() {
        let audience = |core: &mut Pipeline, t: &str, s: u64, d: &str| match handle(
            core,
            &dispatch(t, s, d),
        ) {
            Some(ShardEvent::Dispatch(d)) => d.audience().clone(),
            other => panic!("{other:?}"),
        };
        let chunk = |nonce: &str, index: u64, count: u64| {
            format!(
                r#"{{"guild_id":"20","members":[],"nonce":"{nonce}","chunk_index":{index},"chunk_count":{count}}}"#
            )
        };
        let mut core = Pipeline::new(Flags::default());
        handle(&mut core, READY);
        core.route_chunks("n", "a");
        assert_eq!(
            core.voice_command(20, "b", Some(30), |_| true),
            VoiceCommand::Forward
        );
        let a = Audience::Session("a".into());
        let b = Audience::Session("b".into());
        assert_eq!(
            audience(&mut core, "GUILD_MEMBERS_CHUNK", 2, &chunk("n", 0, 2)),
            a
        );
        assert_eq!(
            audience(&mut core, "GUILD_MEMBERS_CHUNK", 3, &chunk("n", 1, 2)),
            a,
            "the last"
        );
        assert_eq!(
            audience(&mut core, "GUILD_MEMBERS_CHUNK", 4, &chunk("n", 0, 1)),
            Audience::Everyone,
            "its route went with the last chunk"
        );
        assert_eq!(
            audience(&mut core, "GUILD_MEMBERS_CHUNK", 5, &chunk("unknown", 0, 1)),
            Audience::Everyone
        );
        let server = |guild: u64| format!(r#"{{"token":"t","guild_id":"{guild}","endpoint":"e"}}"#);
        assert_eq!(
            audience(&mut core, "VOICE_SERVER_UPDATE", 6, &server(20)),
            b
        );
        assert_eq!(
            audience(&mut core, "VOICE_SERVER_UPDATE", 7, &server(21)),
            Audience::Nobody,
            "no session asked"
        );
        assert!(b.includes("b") && !b.includes("a") && Audience::Everyone.includes("a"));
        assert!(!Audience::Nobody.includes("a"));

        core.route_chunks("m", "a");
        let mut checkpoint = Vec::new();
        core.checkpoint(&mut checkpoint);
        let mut restored = Pipeline::restore(Flags::default(), &checkpoint).unwrap();
        assert_eq!(
            audience(&mut restored, "VOICE_SERVER_UPDATE", 8, &server(20)),
            b
        );
        assert_eq!(
            audience(&mut restored, "GUILD_MEMBERS_CHUNK", 9, &chunk("m", 0, 1)),
            a
        );
    }

    #[test]
    fn a_guilds_voice_has_one_owner_until_the_bot_is_out() {
        let mut core = Pipeline::new(Flags::default());
        handle(&mut core, READY);
        let other = r#"{"id":"21","name":"h","unavailable":false,"roles":[],"channels":[]}"#;
        handle(&mut core, &dispatch("GUILD_CREATE", 2, other));
        // A guild this shard does not hold is not tracked.
        assert_eq!(
            core.voice_command(99, "b", Some(1), |_| true),
            VoiceCommand::Forward
        );
        assert!(core.voice().is_empty());
        let refused = |owner: &str| VoiceCommand::Refused {
            owner: owner.into(),
        };
        let attached = |_: &str| true;
        let forward = VoiceCommand::Forward;
        assert_eq!(core.voice_command(20, "a", Some(30), attached), forward);
        assert_eq!(
            core.voice_command(20, "b", Some(31), attached),
            refused("a"),
            "a join"
        );
        assert_eq!(
            core.voice_command(20, "b", None, attached),
            refused("a"),
            "a leave"
        );
        assert_eq!(
            core.voice_command(21, "b", Some(32), attached),
            forward,
            "another guild"
        );
        assert_eq!(core.voice()[0].2, VoicePhase::Joining);
        handle(
            &mut core,
            &dispatch("VOICE_STATE_UPDATE", 3, &voice_state("30", 99)),
        );
        assert_eq!(
            core.voice()[0].2,
            VoicePhase::Joining,
            "another user's state"
        );
        handle(
            &mut core,
            &dispatch("VOICE_STATE_UPDATE", 4, &voice_state("30", 10)),
        );
        assert_eq!(core.voice()[0].2, VoicePhase::Connected, "the bot's");
        assert_eq!(
            core.voice_command(20, "a", Some(31), attached),
            forward,
            "a move"
        );
        // The owner's session ends: its guild leaves, still refusing
        // others' leaves until the bot is out (a join follows the leave:
        // `a_join_while_the_bots_leave_is_on_its_way_follows_it`).
        assert_eq!(core.voice_session_ended("a", true), vec![20]);
        assert_eq!(
            core.voice_session_ended("a", true),
            Vec::<u64>::new(),
            "once"
        );
        assert_eq!(core.voice_command(20, "b", None, attached), refused("a"));
        handle(
            &mut core,
            &dispatch("VOICE_STATE_UPDATE", 5, &voice_state("", 10)),
        );
        assert_eq!(
            core.voice_command(20, "b", Some(30), attached),
            forward,
            "free"
        );
        // Without leaving, an ended owner's guilds are free at once.
        let mut ended = core.voice_session_ended("b", false);
        ended.sort_unstable();
        assert_eq!(ended, vec![20, 21]);
        assert!(core.voice().is_empty());
    }

    /// A pipeline keeping what `flags` says, past READY and guild 20's
    /// `GUILD_CREATE` (voice channels 30 and 31).
    fn with_voice_channels(flags: Flags) -> Pipeline {
        let mut core = Pipeline::new(flags);
        handle(&mut core, READY);
        let guild = r#"{"id":"20","name":"g","unavailable":false,"roles":[],"channels":[{"id":"30","type":2,"name":"v"},{"id":"31","type":2,"name":"w"}]}"#;
        handle(&mut core, &dispatch("GUILD_CREATE", 2, guild));
        core
    }

    /// Who the dispatch `t` with body `d` at `s` is for.
    fn audience_of(core: &mut Pipeline, t: &str, s: u64, d: &str) -> Audience {
        match handle(core, &dispatch(t, s, d)) {
            Some(ShardEvent::Dispatch(d)) => d.audience().clone(),
            other => panic!("{other:?}"),
        }
    }

    /// A voice server update's `d` for guild 20 with `token`.
    fn voice_server(token: &str) -> String {
        format!(r#"{{"token":"{token}","guild_id":"20","endpoint":"voice.example:443"}}"#)
    }

    #[test]
    fn the_owners_last_voice_server_is_kept_whatever_the_flags_until_a_leave() {
        let mut core = with_voice_channels(Flags::NONE);
        assert_eq!(
            core.voice_command(20, "a", Some(30), |_| true),
            VoiceCommand::Forward
        );
        let a = Audience::Session("a".into());
        let kept = |core: &Pipeline| core.voice_server(20).map(|d| d.to_vec());
        assert_eq!(kept(&core), None, "none yet");
        assert_eq!(
            audience_of(&mut core, "VOICE_SERVER_UPDATE", 3, &voice_server("t1")),
            a
        );
        assert_eq!(kept(&core), Some(voice_server("t1").into_bytes()));
        audience_of(&mut core, "VOICE_SERVER_UPDATE", 4, &voice_server("t2"));
        assert_eq!(
            kept(&core),
            Some(voice_server("t2").into_bytes()),
            "the last"
        );
        // One over 1 KiB still goes to the owner, but is not kept.
        let big = voice_server(&"x".repeat(MAX_VOICE_SERVER));
        assert_eq!(audience_of(&mut core, "VOICE_SERVER_UPDATE", 5, &big), a);
        assert_eq!(kept(&core), None);
        audience_of(&mut core, "VOICE_SERVER_UPDATE", 6, &voice_server("t3"));

        // A checkpoint keeps it; damaged, it is an error, never a panic.
        let mut checkpoint = Vec::new();
        core.checkpoint(&mut checkpoint);
        let mut restored = Pipeline::restore(Flags::NONE, &checkpoint).unwrap();
        assert_eq!(kept(&restored), Some(voice_server("t3").into_bytes()));
        for n in 0..checkpoint.len() {
            assert!(
                Pipeline::restore(Flags::NONE, &checkpoint[..n]).is_err(),
                "cut at {n}"
            );
        }
        let server = voice_server("t3");
        let at = checkpoint
            .windows(server.len())
            .position(|w| w == server.as_bytes())
            .unwrap();
        let mut oversized = checkpoint[..at - 4].to_vec();
        oversized.extend_from_slice(&1025_u32.to_le_bytes());
        oversized.extend_from_slice(&[b' '; 1025]);
        oversized.extend_from_slice(&checkpoint[at + server.len()..]);
        let error = Pipeline::restore(Flags::NONE, &oversized).unwrap_err();
        assert!(error.to_string().contains("over 1 KiB"), "{error}");

        // The owner's session ends: the leave drops it, and a voice server
        // that comes meanwhile is nobody's and not kept.
        assert_eq!(restored.voice_session_ended("a", true), vec![20]);
        assert_eq!(kept(&restored), None);
        let late = voice_server("t4");
        assert_eq!(
            audience_of(&mut restored, "VOICE_SERVER_UPDATE", 7, &late),
            Audience::Nobody
        );
        assert_eq!(kept(&restored), None);
        // The owner's own leave drops it too, and the bot being out frees
        // the guild.
        let _ = core.voice_command(20, "a", None, |_| true);
        assert_eq!(kept(&core), None);
        audience_of(&mut core, "VOICE_STATE_UPDATE", 7, &voice_state("", 10));
        assert!(core.voice().is_empty());
        // A new upstream session drops every kept voice server.
        let _ = core.voice_command(20, "b", Some(30), |_| true);
        audience_of(&mut core, "VOICE_SERVER_UPDATE", 8, &voice_server("t5"));
        assert!(kept(&core).is_some());
        handle(&mut core, READY);
        assert_eq!(kept(&core), None);
    }

    #[test]
    fn a_join_while_the_bots_leave_is_on_its_way_follows_it() {
        let mut core = with_voice_channels(Flags::default());
        let attached = |_: &str| true;
        let _ = core.voice_command(20, "a", Some(30), attached);
        audience_of(&mut core, "VOICE_STATE_UPDATE", 3, &voice_state("30", 10));
        // The owner's session ended (closed with 1000): the leave is sent.
        assert_eq!(core.voice_session_ended("a", true), vec![20]);
        let refused = VoiceCommand::Refused { owner: "a".into() };
        assert_eq!(core.voice_command(20, "b", None, attached), refused);
        // A restarted bot joins before Discord's answer to the leave: its
        // join follows the leave upstream (no second leave), it owns the
        // guild, and the leave's voice state is everyone's but its own.
        assert_eq!(
            core.voice_command(20, "b", Some(31), attached),
            VoiceCommand::Forward
        );
        assert_eq!(core.voice(), vec![(20, "b".into(), VoicePhase::Rejoining)]);
        let leave = audience_of(&mut core, "VOICE_STATE_UPDATE", 4, &voice_state("", 10));
        assert_eq!(leave, Audience::AllBut("b".into()));
        assert_eq!(core.voice(), vec![(20, "b".into(), VoicePhase::Joining)]);
        audience_of(&mut core, "VOICE_STATE_UPDATE", 5, &voice_state("31", 10));
        assert_eq!(
            audience_of(&mut core, "VOICE_SERVER_UPDATE", 6, &voice_server("t")),
            Audience::Session("b".into())
        );
        assert_eq!(core.voice(), vec![(20, "b".into(), VoicePhase::Connected)]);
        // The owner's own leave then a join at once: the same.
        let forward = VoiceCommand::Forward;
        assert_eq!(core.voice_command(20, "b", None, attached), forward);
        assert_eq!(core.voice_command(20, "b", Some(31), attached), forward);
        assert_eq!(core.voice()[0].2, VoicePhase::Rejoining);
        audience_of(&mut core, "VOICE_STATE_UPDATE", 7, &voice_state("", 10));
        audience_of(&mut core, "VOICE_STATE_UPDATE", 8, &voice_state("31", 10));
        assert_eq!(core.voice()[0].2, VoicePhase::Connected);
        // A leave of a bot Discord never put in a channel gets no answer:
        // a join then is a plain one.
        audience_of(&mut core, "VOICE_STATE_UPDATE", 9, &voice_state("", 10));
        let _ = core.voice_command(20, "c", Some(30), attached);
        assert_eq!(core.voice_session_ended("c", true), vec![20]);
        assert_eq!(core.voice_command(20, "d", Some(30), attached), forward);
        assert_eq!(core.voice(), vec![(20, "d".into(), VoicePhase::Joining)]);
    }

    /// The checkpoint fuzz target's seeds (`fuzz/corpus/checkpoint_restore`)
    /// are of this build's layouts: a seed it refuses only teaches the
    /// fuzzer the refusal. `GATEWAY_PROXY_WRITE_SEEDS=1` writes them again
    /// (docs/FUZZING.md).
    #[test]
    fn the_checkpoint_fuzz_seeds_are_of_this_layout() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus/checkpoint_restore");
        let (min, shard) = (dir.join("seed-min"), dir.join("seed-shard"));
        if std::env::var_os("GATEWAY_PROXY_WRITE_SEEDS").is_some() {
            std::fs::write(&min, crate::fuzzing::sample_pipeline()).unwrap();
            std::fs::write(&shard, crate::fuzzing::sample_shard()).unwrap();
        }
        let stale = "stale: GATEWAY_PROXY_WRITE_SEEDS=1 cargo test -p shard-pool --lib fuzz_seeds";
        let min = std::fs::read(min).unwrap();
        let pipeline = Pipeline::restore(Flags::default(), &min);
        assert!(pipeline.is_ok(), "seed-min {stale}");
        let shard = std::fs::read(shard).unwrap();
        assert_eq!(
            crate::fuzzing::restore_shard(&shard),
            Some(58),
            "seed-shard {stale}"
        );
    }

    /// A voice state of `user` in guild 20 (the READY's), in `channel`
    /// (empty: none).
    fn voice_state(channel: &str, user: u64) -> String {
        let channel = if channel.is_empty() {
            "null".to_owned()
        } else {
            format!(r#""{channel}""#)
        };
        format!(r#"{{"guild_id":"20","channel_id":{channel},"user_id":"{user}","session_id":"v"}}"#)
    }

    #[test]
    fn a_new_session_joining_the_bots_channel_while_the_owner_is_away_rejoins() {
        let mut core = Pipeline::new(Flags::default());
        handle(&mut core, READY);
        let guild = r#"{"id":"20","name":"g","unavailable":false,"roles":[],"channels":[{"id":"30","type":2,"name":"v"}]}"#;
        handle(&mut core, &dispatch("GUILD_CREATE", 2, guild));
        assert_eq!(
            core.voice_command(20, "a", Some(30), |_| true),
            VoiceCommand::Forward
        );
        handle(
            &mut core,
            &dispatch("VOICE_STATE_UPDATE", 3, &voice_state("30", 10)),
        );
        assert_eq!(core.cache().bot_voice_channel(20), Some(30));
        // The owner is still connected: a join of its channel is refused.
        let refused = VoiceCommand::Refused { owner: "a".into() };
        assert_eq!(core.voice_command(20, "b", Some(30), |_| true), refused);
        // Away (its bot restarted): another channel is still refused, the
        // bot's own channel is taken back with a leave and a join.
        assert_eq!(core.voice_command(20, "b", Some(31), |_| false), refused);
        assert_eq!(
            core.voice_command(20, "b", Some(30), |_| false),
            VoiceCommand::Rejoin
        );
        assert_eq!(core.voice(), vec![(20, "b".into(), VoicePhase::Rejoining)]);
        // The leave's voice state is for everyone but the new owner; the
        // owner stays; the join's state and server are its own.
        let leave = match handle(
            &mut core,
            &dispatch("VOICE_STATE_UPDATE", 4, &voice_state("", 10)),
        ) {
            Some(ShardEvent::Dispatch(d)) => d.audience().clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(leave, Audience::AllBut("b".into()));
        assert!(!leave.includes("b") && leave.includes("a"));
        assert_eq!(core.voice()[0].2, VoicePhase::Joining);
        handle(
            &mut core,
            &dispatch("VOICE_STATE_UPDATE", 5, &voice_state("30", 10)),
        );
        assert_eq!(core.voice()[0].2, VoicePhase::Connected);
        let server = r#"{"token":"t","guild_id":"20","endpoint":"e"}"#;
        let Some(ShardEvent::Dispatch(d)) =
            handle(&mut core, &dispatch("VOICE_SERVER_UPDATE", 6, server))
        else {
            panic!()
        };
        assert_eq!(*d.audience(), Audience::Session("b".into()));
        // With no owner at all, a join of the bot's channel rejoins too.
        assert_eq!(core.voice_session_ended("b", false), vec![20]);
        assert_eq!(
            core.voice_command(20, "c", Some(30), |_| true),
            VoiceCommand::Rejoin
        );
    }

    /// Hands `payload` on and checks that it was a dispatch.
    fn handled(core: &mut Pipeline, payload: &str) {
        assert!(handed_on(core, payload).is_some(), "{payload}");
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
        assert_eq!((d.index(), d.event_type()), (2, Some("GUILD_CREATE")));
        assert_eq!(d.payload(), guild.as_bytes(), "byte for byte");
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
    fn dispatches_leave_in_discords_envelope() {
        let mut core = Pipeline::new(Flags::default());
        handle(&mut core, READY);
        let canonical = dispatch("TYPING_START", 2, r#"{"a":1}"#);
        let Some(ShardEvent::Dispatch(d)) = handle(&mut core, &canonical) else {
            panic!("a dispatch")
        };
        assert_eq!(d.payload(), canonical.as_bytes(), "kept as it came");
        let other = r#"{ "op": 0, "d": {"a":2}, "s": 3, "extra": 1, "t": "TYPING_START" }"#;
        let Some(ShardEvent::Dispatch(d)) = handle(&mut core, other) else {
            panic!("a dispatch")
        };
        assert_eq!(d.payload(), &dispatch("TYPING_START", 3, r#"{"a":2}"#)[..]);
        let mut out = Vec::new();
        d.write(123_456, &mut out);
        assert_eq!(
            out,
            dispatch("TYPING_START", 123_456, r#"{"a":2}"#).as_bytes()
        );
        // As wide as the shard's `s` (written over in place), and after
        // what the buffer holds.
        out.clear();
        out.extend_from_slice(b"head");
        d.write(7, &mut out);
        assert_eq!(
            out,
            [
                &b"head"[..],
                dispatch("TYPING_START", 7, r#"{"a":2}"#).as_bytes()
            ]
            .concat()
        );
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
