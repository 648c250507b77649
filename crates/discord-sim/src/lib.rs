//! A faithful fake Discord on loopback, for tests, benchmarks and demos.
//!
//! `discord-sim` plays Discord's gateway and the REST routes a bot calls at
//! start-up, against a world of guilds generated from a seed, and streams
//! realistic dispatches at a chosen rate. It is strict where Discord is
//! strict (tokens, shards, intents, identify concurrency, payload size,
//! command rate) and lets a test break things on demand (RECONNECT,
//! `INVALID_SESSION`, any close code, a cut TCP connection).
//!
//! It depends on no crate of the proxy, so that it stays an independent
//! witness of the protocol.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use discord_sim::{Control, Sim, SimConfig};
//!
//! let mut config = SimConfig::default();
//! config.shards = 2;
//! config.events_per_sec = 100;
//! let sim = Sim::start(config).await?;
//! println!("gateway {} rest {} token {}", sim.gateway_url(), sim.api_base(), sim.token());
//!
//! // Ground truth to compare a client's view against.
//! let guilds_on_shard_0 = sim.world().guilds_of(0, 2).count();
//! # let _ = guilds_on_shard_0;
//! // Make every connection of shard 1 reconnect and resume.
//! sim.control(1, Control::Reconnect);
//! # Ok(()) }
//! ```
//!
//! # What it serves
//!
//! - REST under `/api/v10` (and `/api`): `GET /gateway`, `/gateway/bot`
//!   (`session_start_limit.remaining` counts identifies), `/users/@me`,
//!   `/oauth2/applications/@me`, `/applications/@me`; 401 without the
//!   token, always `Content-Type: application/json`.
//! - The gateway on any path of the same port, `?v=10&encoding=json` with
//!   optional `compress=zlib-stream|zstd-stream`; `"compress": true` in
//!   IDENTIFY without transport compression turns on payload compression.
//!
//! # Without a network
//!
//! [`EventStream`] is a shard's stream with no gateway: each
//! [`next`](EventStream::next) changes a [`World`] and returns the dispatch
//! that says so, and [`Guild::guild_create`] writes a guild's
//! `GUILD_CREATE` as a session gets it. A consumer fed the first
//! `GUILD_CREATE`s and then the stream should end up with the
//! `GUILD_CREATE`s of the changed world.
//!
//! ```
//! use discord_sim::{EventStream, KNOWN_INTENTS, SimConfig, World};
//!
//! let mut world = World::generate(&SimConfig::default());
//! let bot = world.bot.clone();
//! let first: Vec<String> = world
//!     .guilds
//!     .iter()
//!     .map(|g| g.guild_create(&bot, KNOWN_INTENTS, 250))
//!     .collect();
//! let mut stream = EventStream::new(&world, 7, 0, 1);
//! for _ in 0..1000 {
//!     let dispatch = stream.next(&mut world).expect("the shard has guilds");
//!     // Feed `dispatch.t` and `dispatch.d` to the consumer under test.
//!     # let _ = dispatch;
//! }
//! // Now compare the consumer with `world.guilds[i].guild_create(…)`.
//! # let _ = first;
//! ```
//!
//! # Markers
//!
//! Every dispatch the gateway streams ends its `d` with
//! `"_sim":{"shard":S,"n":N,"sent_at_us":T}`: `N` counts the shard's
//! dispatches from 1 without gaps, `T` is the Unix time in microseconds when
//! the sim made it. A consumer can find lost, repeated or reordered events
//! and measure latency from them. [`Sim::emit`] adds one too;
//! `GUILD_CREATE` and [`EventStream`]'s dispatches have none.

mod admin;
mod client;
mod compare;
mod config;
mod events;
mod gateway;
mod guild;
mod log;
mod rest;
mod session;
mod world;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use crate::client::{ClientError, GatewayClient, Received};
pub use crate::compare::{item_id, normalized};
pub use crate::config::{KNOWN_INTENTS, KeyOrder, PRIVILEGED_INTENTS, SimConfig};
pub use crate::events::{Dispatch, EventStream, intent_of};
pub use crate::guild::{Channel, Emoji, Guild, Item, Presence, Role, Thread, VoiceState};
pub use crate::log::{ConnectionLog, Sent};
pub use crate::world::{Member, User, World};

use crate::events::EventGen;
use crate::session::Session;

/// Something to do to every identified connection of a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Control {
    /// Send RECONNECT (op 7); the client should resume.
    Reconnect,
    /// Send `INVALID_SESSION` (op 9); `false` also ends the session.
    InvalidSession(bool),
    /// Ask for a heartbeat now (op 1 from the server).
    RequestHeartbeat,
    /// Close with this code (4000–4014 are Discord's).
    Close(u16),
    /// Drop the TCP connection without a close frame.
    Cut,
}

/// A running sim. Dropping it stops it.
#[derive(Debug)]
pub struct Sim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Sim {
    /// Generates the world and starts serving on `config.bind`.
    ///
    /// # Errors
    ///
    /// If the address cannot be bound.
    pub async fn start(config: SimConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(config.bind).await?;
        let addr = listener.local_addr()?;
        let world = World::generate(&config);
        let shards = (0..config.shards.max(1))
            .map(|shard| ShardHub {
                events: broadcast::channel(BROADCAST_CAPACITY).0,
                control: broadcast::channel(64).0,
                generator: Mutex::new(EventGen::new(
                    &world,
                    config.seed,
                    shard,
                    config.shards.max(1),
                )),
                sent: AtomicU64::new(0),
            })
            .collect();
        let shared = Arc::new(Shared {
            gateway_url: format!("ws://{addr}"),
            advertised_gateway: Mutex::new(None),
            identify: Mutex::new(IdentifyState {
                last: HashMap::new(),
                remaining: config.session_start_total,
                refused: 0,
                window_start: Instant::now(),
            }),
            world: Mutex::new(world),
            shards,
            config,
            sessions: Mutex::new(HashMap::new()),
            connections: Mutex::new(VecDeque::new()),
            full_requests: Mutex::new(HashMap::new()),
            bot_voice: Mutex::new(HashMap::new()),
            paused: AtomicBool::new(false),
            next_connection: AtomicU64::new(1),
            next_session: AtomicU64::new(1),
            lagged: AtomicU64::new(0),
            sessions_started: AtomicU64::new(0),
            resumes: [AtomicU64::new(0), AtomicU64::new(0)],
            refuse_identify: std::sync::atomic::AtomicU16::new(0),
        });
        let mut tasks = vec![
            tokio::spawn(accept(listener, shared.clone())),
            tokio::spawn(sweep(shared.clone())),
        ];
        if shared.config.events_per_sec > 0 {
            for shard in 0..shared.config.shards.max(1) {
                tasks.push(tokio::spawn(generate(shared.clone(), shard)));
            }
        }
        Ok(Self {
            shared,
            addr,
            tasks,
        })
    }

    /// The address it listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The gateway URL, `ws://127.0.0.1:PORT` (no trailing slash).
    #[must_use]
    pub fn gateway_url(&self) -> &str {
        &self.shared.gateway_url
    }

    /// The REST base, `http://127.0.0.1:PORT/api` (clients add `/v10/…`).
    #[must_use]
    pub fn api_base(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// The token it accepts.
    #[must_use]
    pub fn token(&self) -> &str {
        &self.shared.config.token
    }

    /// The configuration it runs with.
    #[must_use]
    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    /// The ground truth now: every guild as the sim knows it, with every
    /// change its stream has made so far (a copy).
    #[must_use]
    pub fn world(&self) -> World {
        lock(&self.shared.world).clone()
    }

    /// Applies `command` to every identified connection of `shard` and
    /// returns how many there were.
    #[must_use = "zero means no connection of the shard was identified"]
    pub fn control(&self, shard: u32, command: Control) -> usize {
        self.shared.control(shard, command)
    }

    /// Stops generating dispatches until [`resume_stream`](Self::resume_stream).
    /// Once it returns, nothing is generated past
    /// [`last_markers`](Self::last_markers) (events [`emit`](Self::emit)ted
    /// still are).
    pub fn pause_stream(&self) {
        let _ = self.shared.pause();
    }

    /// Each shard's last marker so far (0: none yet).
    #[must_use]
    pub fn last_markers(&self) -> Vec<u64> {
        self.shared.last_markers()
    }

    /// Generates dispatches again.
    pub fn resume_stream(&self) {
        self.shared.paused.store(false, Ordering::Relaxed);
    }

    /// Sends a dispatch to every session of `shard`, `d` with the marker
    /// added. Returns its marker number, or `None` if there is no such shard
    /// or `d` is not a JSON object.
    #[must_use = "None means the dispatch was not sent"]
    pub fn emit(&self, shard: u32, t: &str, d: &str) -> Option<u64> {
        self.shared.emit(shard, t, d)
    }

    /// Every recent gateway connection (the latest 256): what it sent and
    /// what it was sent.
    #[must_use]
    pub fn connections(&self) -> Vec<ConnectionLog> {
        self.shared.connection_logs()
    }

    /// Dispatches generated or emitted for `shard` so far.
    #[must_use]
    pub fn events_sent(&self, shard: u32) -> u64 {
        self.shared
            .shards
            .get(shard as usize)
            .map_or(0, |hub| hub.sent.load(Ordering::Relaxed))
    }

    /// Dispatches that sessions missed because they fell behind the stream;
    /// a test that checks for loss should assert this is zero.
    #[must_use]
    pub fn lagged(&self) -> u64 {
        self.shared.lagged.load(Ordering::Relaxed)
    }

    /// From now on, every IDENTIFY (of any shard) is closed with `code`,
    /// after the token check passes; `None` stops that. For what Discord
    /// does when the token is reset between a `GET /gateway/bot` and the
    /// identify (4004), or when something else refuses the session for
    /// good. Connections already identified are not touched (use
    /// [`Control::Close`]).
    pub fn refuse_identify(&self, code: Option<u16>) {
        self.shared
            .refuse_identify
            .store(code.unwrap_or(0), Ordering::Relaxed);
    }

    /// Makes REST's `/gateway` and `/gateway/bot` name `url` as the
    /// gateway instead of the sim: for clients that find the gateway only
    /// through REST (discord.js) and must reach it through a proxy. The
    /// proxy itself then needs the sim's own [`gateway_url`](Self::gateway_url).
    pub fn advertise_gateway(&self, url: impl Into<String>) {
        *crate::lock(&self.shared.advertised_gateway) = Some(url.into());
    }

    /// `session_start_limit.remaining`.
    #[must_use]
    pub fn identifies_remaining(&self) -> u32 {
        self.shared.identify_state().0
    }

    /// Identifies that started a session (READY sent), for any shard.
    #[must_use]
    pub fn identifies(&self) -> u64 {
        self.shared.sessions_started.load(Ordering::Relaxed)
    }

    /// RESUMEs accepted (the missed events replayed, then RESUMED).
    #[must_use]
    pub fn resumes(&self) -> u64 {
        self.shared.resumes[0].load(Ordering::Relaxed)
    }

    /// RESUMEs refused with op 9 `false`: an unknown, ended or expired
    /// session, or a `seq` the session no longer holds events after.
    #[must_use]
    pub fn resumes_refused(&self) -> u64 {
        self.shared.resumes[1].load(Ordering::Relaxed)
    }

    /// Identifies refused with `INVALID_SESSION`: sent within
    /// `identify_interval` of another in the same bucket
    /// (`shard % max_concurrency`), or with none left today. A client that
    /// paces its identifies as Discord asks never gets one.
    #[must_use]
    pub fn identifies_refused(&self) -> u64 {
        crate::lock(&self.shared.identify).refused
    }
}

pub(crate) struct Shared {
    config: SimConfig,
    /// The ground truth. The generators change it and broadcast the change
    /// while holding the lock, and IDENTIFY writes READY and the guilds
    /// while holding it, so every session starts from a snapshot and then
    /// sees exactly the changes made after it.
    world: Mutex<World>,
    gateway_url: String,
    /// What REST's `/gateway` and `/gateway/bot` name as the gateway, when
    /// it is not the sim itself (a proxy in front of it).
    advertised_gateway: Mutex<Option<String>>,
    shards: Vec<ShardHub>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// The latest connections, oldest first.
    connections: Mutex<VecDeque<Arc<Mutex<ConnectionLog>>>>,
    identify: Mutex<IdentifyState>,
    /// When each guild was last asked for all its members (op 8).
    full_requests: Mutex<HashMap<u64, Instant>>,
    /// The voice channel the bot is in, by guild, with its self mute and
    /// deaf (op 4 changes them).
    pub(crate) bot_voice: Mutex<HashMap<u64, (u64, bool, bool)>>,
    paused: AtomicBool,
    next_connection: AtomicU64,
    next_session: AtomicU64,
    lagged: AtomicU64,
    /// Identifies that started a session (READY sent).
    pub(crate) sessions_started: AtomicU64,
    /// RESUMEs accepted (the missed events, then RESUMED), and refused
    /// (op 9 `false`).
    pub(crate) resumes: [AtomicU64; 2],
    /// When not 0, every IDENTIFY is closed with this code.
    refuse_identify: std::sync::atomic::AtomicU16,
}

impl Shared {
    /// The gateway URL REST names.
    pub(crate) fn advertised_gateway(&self) -> String {
        lock(&self.advertised_gateway)
            .clone()
            .unwrap_or_else(|| self.gateway_url.clone())
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("gateway_url", &self.gateway_url)
            .finish_non_exhaustive()
    }
}

struct IdentifyState {
    last: HashMap<u32, Instant>,
    remaining: u32,
    /// Identifies refused: too early for their bucket, or none left.
    refused: u64,
    /// When the current `session_start_limit` window began.
    window_start: Instant,
}

impl IdentifyState {
    /// Starts a new window once the last one is over.
    fn refresh(&mut self, config: &SimConfig, now: Instant) {
        if now.duration_since(self.window_start) >= config.session_start_reset {
            self.window_start = now;
            self.remaining = config.session_start_total;
        }
    }
}

pub(crate) struct ShardHub {
    events: broadcast::Sender<Arc<Dispatch>>,
    control: broadcast::Sender<Control>,
    generator: Mutex<EventGen>,
    sent: AtomicU64,
}

impl ShardHub {
    fn generator(&self) -> std::sync::MutexGuard<'_, EventGen> {
        self.generator
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Takes an identify for `shard` if its bucket and the daily limit allow.
    fn take_identify(&self, shard: u32) -> bool {
        let bucket = shard % self.config.max_concurrency.max(1);
        let now = Instant::now();
        let mut state = lock(&self.identify);
        state.refresh(&self.config, now);
        let too_early = state
            .last
            .get(&bucket)
            .is_some_and(|last| now.duration_since(*last) < self.config.identify_interval);
        if state.remaining == 0 || too_early {
            state.refused += 1;
            return false;
        }
        state.last.insert(bucket, now);
        state.remaining -= 1;
        true
    }

    /// `session_start_limit`: what remains, and the time until it resets.
    fn identify_state(&self) -> (u32, Duration) {
        let now = Instant::now();
        let mut state = lock(&self.identify);
        state.refresh(&self.config, now);
        let reset_after = self
            .config
            .session_start_reset
            .saturating_sub(now.duration_since(state.window_start));
        (state.remaining, reset_after)
    }

    fn new_session(&self, shard: u32) -> Arc<Session> {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        let id = format!(
            "{:016x}{:016x}",
            self.config.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            n
        );
        let session = Session::new(
            id.clone(),
            shard,
            self.config.replay_capacity,
            self.config.key_order,
        );
        lock(&self.sessions).insert(id, session.clone());
        session
    }

    fn control(&self, shard: u32, command: Control) -> usize {
        self.shards
            .get(shard as usize)
            .map_or(0, |hub| hub.control.send(command).unwrap_or(0))
    }

    /// Pauses the stream; each shard's last marker. A batch being
    /// generated as the flag is set ends first (the generator checks the
    /// flag under its lock, which this takes after setting it).
    fn pause(&self) -> Vec<u64> {
        self.paused.store(true, Ordering::SeqCst);
        self.last_markers()
    }

    fn last_markers(&self) -> Vec<u64> {
        self.shards
            .iter()
            .map(|hub| hub.generator().last_marker())
            .collect()
    }

    fn emit(&self, shard: u32, t: &str, d: &str) -> Option<u64> {
        let hub = self.shards.get(shard as usize)?;
        let object = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(d).ok()?;
        let mut d = d.trim_end().to_owned();
        d.pop();
        if !object.is_empty() {
            d.push(',');
        }
        // The marker is numbered and sent under the generator's lock, as
        // the generated stream's are: else an event numbered after this one
        // could be sent before it.
        let mut generator = hub.generator();
        let marker = generator.marker(unix_micros());
        let n = marker.1;
        d.push_str(&marker.0);
        d.push('}');
        hub.sent.fetch_add(1, Ordering::Relaxed);
        let _ = hub.events.send(Arc::new(Dispatch { t: t.to_owned(), d }));
        drop(generator);
        Some(n)
    }

    /// Keeps the log of a new connection (and forgets the oldest past 256).
    fn log_connection(&self, log: ConnectionLog) -> Arc<Mutex<ConnectionLog>> {
        let log = Arc::new(Mutex::new(log));
        let mut all = lock(&self.connections);
        if all.len() == 256 {
            all.pop_front();
        }
        all.push_back(log.clone());
        log
    }

    fn connection_logs(&self) -> Vec<ConnectionLog> {
        lock(&self.connections)
            .iter()
            .map(|log| lock(log).clone())
            .collect()
    }

    /// Invalidates a session and forgets it.
    fn end_session(&self, session: &Session) {
        session.invalidate();
        lock(&self.sessions).remove(&session.id);
    }

    /// A session that can still be resumed.
    fn session(&self, id: &str) -> Option<Arc<Session>> {
        let session = lock(&self.sessions).get(id).cloned()?;
        if session.expired(Instant::now(), self.config.session_ttl) {
            self.end_session(&session);
            return None;
        }
        Some(session)
    }

    /// Ends every session that has been without a connection for longer
    /// than the TTL.
    fn sweep_sessions(&self) {
        let now = Instant::now();
        let expired: Vec<Arc<Session>> = lock(&self.sessions)
            .values()
            .filter(|s| s.expired(now, self.config.session_ttl))
            .cloned()
            .collect();
        for session in expired {
            self.end_session(&session);
        }
    }

    /// Whether a request for all of a guild's members is allowed now (one
    /// per guild per 30 s).
    fn allow_full_request(&self, guild: u64) -> bool {
        let now = Instant::now();
        let mut last = lock(&self.full_requests);
        if last
            .get(&guild)
            .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(30))
        {
            return false;
        }
        last.insert(guild, now);
        true
    }
}

/// The wall clock in Unix microseconds, for the markers that consumers in
/// other processes compare with their own clock.
fn unix_micros() -> u64 {
    #[allow(clippy::disallowed_methods)] // a timestamp for other processes, not a timer
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, request).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn handle(
    shared: Arc<Shared>,
    mut request: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    if !fastwebsockets::upgrade::is_upgrade_request(&request) {
        if request.uri().path().starts_with("/_sim/") {
            return admin::route(&shared, request).await;
        }
        return rest::route(&shared, &request);
    }
    let query = request.uri().query().unwrap_or("").to_owned();
    let Ok((response, upgrade)) = fastwebsockets::upgrade::upgrade(&mut request) else {
        let mut bad = Response::new(Full::new(Bytes::from_static(b"bad websocket upgrade")));
        *bad.status_mut() = hyper::StatusCode::BAD_REQUEST;
        return bad;
    };
    tokio::spawn(async move {
        let Ok(mut ws) = upgrade.await else { return };
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
        };
        let refusal: Option<(u16, &[u8])> = if !matches!(param("v"), None | Some("9" | "10")) {
            Some((4012, b"invalid API version"))
        } else if param("encoding") == Some("etf") {
            Some((4002, b"ETF is not supported"))
        } else if wire_codec::Compression::from_query(&query).is_err() {
            Some((4002, b"unknown compression"))
        } else {
            None
        };
        match refusal {
            None => {
                let compression = wire_codec::Compression::from_query(&query).unwrap_or_default();
                gateway::serve(shared, ws, compression, &query).await;
            }
            Some((code, reason)) => {
                let _ = ws
                    .write_frame(fastwebsockets::Frame::close(code, reason))
                    .await;
            }
        }
    });
    response.map(|_| Full::new(Bytes::new()))
}

/// Ends expired sessions, a few times per TTL.
async fn sweep(shared: Arc<Shared>) {
    let period =
        (shared.config.session_ttl / 4).clamp(Duration::from_millis(10), Duration::from_secs(10));
    loop {
        tokio::time::sleep(period).await;
        shared.sweep_sessions();
    }
}

/// Dispatches a shard's broadcast holds for its slowest session.
const BROADCAST_CAPACITY: usize = 1 << 16;

/// The most dispatches a generator makes in one tick (5 ms): a ceiling of
/// about 800,000 per second per shard, and far below the broadcast buffer.
const MAX_BATCH: f64 = 4096.0;

/// Generates a shard's stream at `events_per_sec`.
async fn generate(shared: Arc<Shared>, index: u32) {
    let hub = &shared.shards[index as usize];
    let rate = f64::from(shared.config.events_per_sec);
    let mut ticker = tokio::time::interval(Duration::from_millis(5));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    let mut owed = 0.0;
    loop {
        ticker.tick().await;
        let now = Instant::now();
        // Never more than a bounded batch per tick: a sim that fell behind
        // (a busy runtime) produces less than asked, rather than a burst
        // that its sessions' broadcast buffer could not hold.
        owed = (owed + rate * now.duration_since(last).as_secs_f64()).min(MAX_BATCH);
        last = now;
        if shared.paused.load(Ordering::Relaxed) {
            owed = 0.0;
            continue;
        }
        // Flow control: never run ahead of the slowest session by more than
        // a quarter of the broadcast buffer, so that no session loses a
        // dispatch. A sim asked for more than its sessions can take sends
        // less than asked; `Sim::events_sent` tells how much.
        if hub.events.len() > BROADCAST_CAPACITY / 4 {
            owed = 0.0;
            continue;
        }
        let mut world = lock(&shared.world);
        let mut generator = hub.generator();
        // Again under the lock: a pause waits for it, and so sees the
        // last marker of a batch begun before it.
        if shared.paused.load(Ordering::SeqCst) {
            owed = 0.0;
            continue;
        }
        while owed >= 1.0 {
            owed -= 1.0;
            let Some(dispatch) = generator.next(&mut world, unix_micros()) else {
                owed = 0.0;
                break;
            };
            hub.sent.fetch_add(1, Ordering::Relaxed);
            let _ = hub.events.send(Arc::new(dispatch));
        }
    }
}
