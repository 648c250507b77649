//! The gateway-proxy binary, as a library: the binary's `main` and the
//! tests call the same [`start`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use gateway_proxy::{Options, start};
//!
//! // What `gateway-proxy --simulate` does: a simulated Discord in-process.
//! let options = Options::parse(["--simulate".to_owned()]).expect("valid").expect("not --help");
//! let running = start(&options, std::env::vars().collect()).await?;
//! println!("bots connect to ws://{}", running.addr());
//! # Ok(()) }
//! ```

pub mod config;
mod placement;

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::future::Future;

use discord_sim::{KNOWN_INTENTS, Sim, SimConfig};
use proxy_server::Proxy;
use std::sync::Arc;

use cluster::Cluster;
use shard_pool::{DirStore, GatewayInfo, Pool, ShardHandle, Token};

use crate::placement::Placement;

use crate::config::EXIT_CONFIG;

/// The exit code when Discord refuses the bot for good at start-up (a
/// close with 4004 or 4010–4014): `EX_CONFIG` of `sysexits.h`. Something
/// must change (the token, the intents allowed in the Developer Portal,
/// the shard count) before a restart can help.
pub const EXIT_REFUSED: i32 = 78;

/// The exit status of a node of a cluster that lost a shard's lease (its
/// shards are another node's now): 75, `EX_TEMPFAIL`, since starting it
/// again makes it a standby.
pub const EXIT_LEASE_LOST: i32 = 75;

/// The intent without which voice cannot work: Discord sends the bot's
/// own voice state (and its voice session id) only with it.
const GUILD_VOICE_STATES: u64 = 1 << 7;

/// The command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// `--config PATH`: the JSON config file (default `./config.json`).
    pub config: Option<PathBuf>,
    /// `--simulate`: run against a `discord-sim` started in-process.
    pub simulate: bool,
}

/// The usage text.
pub const USAGE: &str = "usage: gateway-proxy [--config PATH] [--simulate]

  --config PATH  the JSON config file (default ./config.json, or $GATEWAY_PROXY_CONFIG)
  --simulate     start a simulated Discord in this process and proxy it:
                 no token needed, a demo to point a bot at
  --help         this text

Configuration keys: docs/configuration.md";

impl Options {
    /// Reads the arguments after the program name.
    ///
    /// # Errors
    ///
    /// An unknown argument or a `--config` without a path, as a message for
    /// the user; `Ok(None)` for `--help`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Self>, String> {
        let mut options = Self::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--simulate" | "simulate" => options.simulate = true,
                "--config" => {
                    let path = args.next().ok_or("--config needs a path")?;
                    options.config = Some(PathBuf::from(path));
                }
                "--help" | "-h" => return Ok(None),
                other => return Err(format!("unknown argument `{other}`\n\n{USAGE}")),
            }
        }
        Ok(Some(options))
    }
}

/// Why the proxy could not start, and the exit code that says so.
#[derive(Debug)]
pub struct RunError {
    /// The process exit code: 64 for the configuration file or
    /// environment, 78 when Discord refused the bot for good, 1 otherwise.
    pub code: i32,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RunError {}

/// A running proxy (and its simulated Discord, with `--simulate`).
#[derive(Debug)]
pub struct Running {
    proxy: Proxy,
    sim: Option<Sim>,
    token: Token,
    /// `--simulate`'s own checkpoint directory, removed at shutdown.
    simulated_state: Option<PathBuf>,
    /// Held until the process ends: the checkpoints are written by then.
    _state_lock: Option<StateLock>,
    /// In a cluster: this node's part in placing the shards (it keeps its
    /// leases and places the shards in tasks of its own).
    node: Option<Arc<Placement>>,
}

/// The one process that uses a `state_dir`: an exclusive lock on its
/// `lock` file, held for the life of the process (the system lets it go
/// when the process ends, however it ends). A second process on the same
/// directory waits for it: started before the first is stopped, it holds
/// the port, and takes over the checkpoints once they are written.
#[derive(Debug)]
struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    async fn take(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))?;
        let mut told = false;
        // Polled, not a blocking wait: a SIGTERM meanwhile ends the wait.
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Self { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(error)) => return Err(error),
            }
            if !told {
                told = true;
                tracing::info!(
                    dir = %dir.display(),
                    "another gateway-proxy holds state_dir: waiting for it to stop \
                     (connections to this port wait meanwhile)"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Running {
    /// Where clients connect.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.proxy.addr()
    }

    /// The token clients identify with.
    #[must_use]
    pub fn token(&self) -> &str {
        self.token.expose()
    }

    /// The simulated Discord, with `--simulate`.
    #[must_use]
    pub fn sim(&self) -> Option<&Sim> {
        self.sim.as_ref()
    }

    /// The proxy.
    #[must_use]
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// Shuts down gracefully: see [`Proxy::shutdown`] (with `state_dir`,
    /// checkpoints are written and every session stays resumable).
    pub async fn shutdown(self) {
        if let Some(placement) = &self.node {
            placement.stop();
            placement.leave().await;
        }
        self.proxy.shutdown().await;
        // The checkpoints are written and upstream closed resumably: the
        // shards are another node's to take at once.
        if let Some(placement) = &self.node {
            placement.release_all().await;
        }
        if let Some(dir) = self.simulated_state {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The simulated Discord of `--simulate`: a few shards and guilds with a
/// steady stream of events.
fn demo_sim() -> SimConfig {
    let mut config = SimConfig::default();
    config.shards = 2;
    config.guilds = 20;
    config.members_per_guild = 50;
    config.events_per_sec = 20;
    config.identify_interval = Duration::from_secs(1);
    config
}

/// Loads the configuration, starts the shard pool (and with `simulate`, a
/// simulated Discord for it), waits until every shard is ready, and starts
/// serving clients. `env` is the process environment (`TOKEN`,
/// `GATEWAY_PROXY_*`).
///
/// # Errors
///
/// As [`start_until`].
pub async fn start(options: &Options, env: Vec<(String, String)>) -> Result<Running, RunError> {
    match start_until(options, env, std::future::pending()).await {
        Ok(Some(running)) => Ok(running),
        Ok(None) => Err(RunError {
            code: 1,
            message: "stopped during start-up".to_owned(),
        }),
        Err(error) => Err(error),
    }
}

/// Says what in `config` works other than one might expect: intents
/// without voice states; a `state_dir` in a cluster (then dropped: the
/// checkpoints are in JetStream).
fn warn_about(config: &mut config::Config) {
    if config.intents & GUILD_VOICE_STATES == 0 {
        tracing::warn!(
            intents = config.intents,
            "intents lack GUILD_VOICE_STATES (128): Discord sends no voice state to the proxy, \
             so no client can connect to voice through it; add 128 to intents if a bot plays audio"
        );
    }
    if config.cluster.nats_url.is_some()
        && let Some(dir) = config.state_dir.take()
    {
        tracing::warn!(
            state_dir = dir,
            "state_dir is not used in a cluster: checkpoints are kept in JetStream"
        );
    }
}

/// With `--simulate`, the simulated Discord, whose token, REST base and
/// intents win over the configuration's (pushed to `env`).
async fn simulated(
    options: &Options,
    env: &mut Vec<(String, String)>,
) -> Result<Option<Sim>, RunError> {
    if !options.simulate {
        return Ok(None);
    }
    let sim = Sim::start(demo_sim()).await.map_err(|e| RunError {
        code: 1,
        message: format!("cannot start the simulator: {e}"),
    })?;
    env.push(("TOKEN".to_owned(), sim.token().to_owned()));
    env.push(("GATEWAY_PROXY_API_BASE".to_owned(), sim.api_base()));
    env.push((
        "GATEWAY_PROXY_INTENTS".to_owned(),
        KNOWN_INTENTS.to_string(),
    ));
    Ok(Some(sim))
}

/// [`start`], unless `stop` resolves first (SIGTERM while the shards are
/// still connecting): then every upstream session already open is closed
/// as on a normal shutdown, and `Ok(None)` says the proxy never served.
///
/// # Errors
///
/// A configuration error (code 64, naming the file or variable and the
/// key); Discord refusing a shard for good while starting (code 78, with
/// the close code and what to change: the token, the privileged intents in
/// the Developer Portal, the shard count); or a failure to start the
/// simulator, the pool or the listener (code 1).
pub async fn start_until(
    options: &Options,
    mut env: Vec<(String, String)>,
    stop: impl Future<Output = ()>,
) -> Result<Option<Running>, RunError> {
    let failed = |message: String| RunError { code: 1, message };
    let mut stop = std::pin::pin!(stop);
    let sim = simulated(options, &mut env).await?;
    let (config, simulated_state) = load_config(options, env)?;
    let mut pool_config = config.pool_config();
    if let Some(sim) = &sim {
        pool_config.identify_window = sim.config().identify_interval;
    }
    // Bound before anything else, and shared with a proxy that may still
    // be stopping (with checkpoints): a client it closes reconnects here
    // and waits, never refused.
    let listener = proxy_server::listener(config.listen_addr(), config.state_dir.is_some())
        .map_err(|e| failed(format!("cannot listen on {}: {e}", config.listen_addr())))?;
    let mut state_lock = None;
    if let Some(dir) = &config.state_dir {
        tokio::select! {
            lock = take_state_dir(dir, &mut pool_config) => state_lock = Some(lock?),
            () = &mut stop => return Ok(None),
        }
    }
    // What the process records outside the proxy (the cluster's metrics)
    // lands where `/metrics` reads. A second proxy in one process (tests)
    // keeps the first one's global recorder.
    let recorder = Arc::new(
        proxy_server::recorder().map_err(|e| failed(format!("cannot record metrics: {e}")))?,
    );
    let _ = metrics::set_global_recorder(recorder.clone());
    let mut joined = None;
    if let Some(cluster_config) = config.cluster_config() {
        tokio::select! {
            cluster = join_cluster(cluster_config, config.log_limits(), &mut pool_config) => {
                joined = Some(cluster?);
            }
            () = &mut stop => return Ok(None),
        }
    }
    // In a cluster the pool starts running nothing (it serves every shard
    // as a follower at once); the placement then takes this node's shards
    // over as their leases allow.
    let preferred = joined.as_ref().map(|_| preferred_range(&pool_config));
    if let Some(range) = &preferred {
        pool_config.shard_end = Some(range.start);
    }
    let pool = tokio::select! {
        pool = Pool::start(pool_config) => {
            Arc::new(pool.map_err(|e| failed(format!("cannot start the shards: {e}")))?)
        }
        () = &mut stop => return Ok(None),
    };
    let placement = match (&joined, &preferred) {
        (Some(joined), Some(range)) => {
            let placement = Arc::new(placement(joined, &pool, range).await?);
            // Renewing the leases and saying the node is alive cannot wait
            // for the shards to be ready: identifies may take longer than a
            // lease.
            placement.keep();
            // This node's own range first: others may still be starting.
            tokio::select! {
                () = placement.place(Some(range)) => {}
                () = &mut stop => {
                    stop_starting(&pool, Some(&placement)).await;
                    return Ok(None);
                }
            }
            Some(placement)
        }
        _ => None,
    };
    let running: Vec<u32> = pool.shards().iter().map(ShardHandle::id).collect();
    tracing::info!(shards = ?running, total = pool.total(), "waiting for every shard to be ready");
    tokio::select! {
        ready = pool.ready() => {
            if let Err(error) = ready {
                pool.shutdown().await;
                return Err(RunError { code: EXIT_REFUSED, message: error.to_string() });
            }
        }
        () = &mut stop => {
            stop_starting(&pool, placement.as_deref()).await;
            return Ok(None);
        }
    }
    let mut server_config = config.server_config();
    if let Some(joined) = &joined {
        share_sessions(&joined.cluster, &mut server_config).await?;
    }
    let proxy = Proxy::start_recording(listener, server_config, pool, recorder)
        .await
        .map_err(|e| failed(format!("cannot listen on {}: {e}", config.listen_addr())))?;
    let node = match (&joined, placement) {
        (Some(joined), Some(placement)) => {
            Some(serve_node(&joined.cluster, placement, &proxy).await?)
        }
        _ => None,
    };
    Ok(Some(Running {
        proxy,
        sim,
        token: Token::new(config.token),
        simulated_state,
        _state_lock: state_lock,
        node,
    }))
}

/// The configuration, with logging set up by it; with `--simulate`, the
/// checkpoint directory of the simulation's own, if it keeps one.
fn load_config(
    options: &Options,
    env: Vec<(String, String)>,
) -> Result<(config::Config, Option<PathBuf>), RunError> {
    let mut config = config::load(options.config.as_deref(), env).map_err(|e| RunError {
        code: EXIT_CONFIG,
        message: e.to_string(),
    })?;
    // The simulated Discord ends with the process, and its sessions with
    // it: `--simulate` keeps checkpoints (to show them in /metrics) in a
    // directory of its own, which no later run could resume from (in a
    // cluster they are in JetStream).
    let keeps_own = config.state_dir.is_none() && config.cluster.nats_url.is_none();
    let simulated_state = (options.simulate && keeps_own).then(|| {
        std::env::temp_dir().join(format!("gateway-proxy-simulate-{}", std::process::id()))
    });
    if let Some(dir) = &simulated_state {
        config.state_dir = Some(dir.display().to_string());
    }
    init_logging(&config.log_level);
    warn_about(&mut config);
    Ok((config, simulated_state))
}

/// A node of a cluster that serves: it answers other nodes' commands for
/// its shards from now on.
async fn serve_node(
    cluster: &Cluster,
    placement: Arc<Placement>,
    proxy: &Proxy,
) -> Result<Arc<Placement>, RunError> {
    let commands = cluster::Commands::new(cluster, proxy.command_sink());
    placement
        .answer(Arc::new(commands))
        .await
        .map_err(|e| RunError {
            code: 1,
            message: format!("cannot join the cluster: {e}"),
        })?;
    Ok(placement)
}

/// The shards a node prefers to run: its configured range.
fn preferred_range(pool_config: &shard_pool::PoolConfig) -> Range<u32> {
    let total = pool_config
        .shards
        .or(pool_config.gateway.as_ref().map(|g| g.shards))
        .unwrap_or(0);
    pool_config.shard_start..pool_config.shard_end.unwrap_or(total)
}

/// This node's part in placing the shards: its leases, and its entry
/// among the live nodes (announcing `preferred`).
async fn placement(
    joined: &Joined,
    pool: &Arc<Pool>,
    preferred: &Range<u32>,
) -> Result<Placement, RunError> {
    let members = joined
        .cluster
        .members(Some(preferred.clone()))
        .await
        .map_err(|e| RunError {
            code: 1,
            message: format!("cannot join the cluster: {e}"),
        })?;
    Ok(Placement::new(
        pool.clone(),
        joined.leases.clone(),
        members,
        joined.log.clone(),
    ))
}

/// What joining a cluster opened.
struct Joined {
    cluster: Cluster,
    log: cluster::EventLog,
    /// This node's leases: a shard's checkpoint is written only while its
    /// lease is surely this node's ([`shard_pool::Holding`]).
    leases: cluster::Leases,
}

/// Joins the cluster: identifies paced with the other nodes, checkpoints
/// in JetStream (written only under the shard's lease), every event
/// published to the event log, the shards of other nodes followed from it.
async fn join_cluster(
    config: cluster::ClusterConfig,
    log_limits: cluster::LogLimits,
    pool_config: &mut shard_pool::PoolConfig,
) -> Result<Joined, RunError> {
    let failed = |message: String| RunError { code: 1, message };
    let (name, node) = (config.name.clone(), config.node_id.clone());
    let cluster = Cluster::connect(config)
        .await
        .map_err(|e| failed(format!("cannot join the cluster: {e}")))?;
    let gateway = GatewayInfo::fetch(pool_config)
        .await
        .map_err(|e| failed(format!("cannot start the shards: {e}")))?;
    let queue = cluster
        .identify_queue(&gateway, pool_config.identify_window)
        .await
        .map_err(|e| failed(format!("cannot join the cluster: {e}")))?;
    let store = cluster
        .store()
        .await
        .map_err(|e| failed(format!("cannot join the cluster: {e}")))?;
    let log = cluster
        .event_log(log_limits)
        .await
        .map_err(|e| failed(format!("cannot join the cluster: {e}")))?;
    let leases = cluster
        .leases()
        .await
        .map_err(|e| failed(format!("cannot join the cluster: {e}")))?;
    pool_config.queue = Some(Arc::new(queue));
    pool_config.store = Some(Arc::new(store));
    pool_config.holding = Some(Arc::new(leases.clone()));
    pool_config.tap = Some(Arc::new(log.clone()));
    pool_config.source = Some(Arc::new(cluster.source()));
    // Asked once: the pool starts from the same answer.
    pool_config.gateway = Some(gateway);
    tracing::info!(cluster = name, node, "joined the cluster");
    Ok(Joined {
        cluster,
        log,
        leases,
    })
}

/// Takes `dir`'s lock (waiting while another process uses it) and keeps
/// the pool's checkpoints there.
async fn take_state_dir(
    dir: &str,
    pool_config: &mut shard_pool::PoolConfig,
) -> Result<StateLock, RunError> {
    let unusable = |e: &dyn fmt::Display| RunError {
        code: EXIT_CONFIG,
        message: format!("state_dir {dir:?} cannot hold checkpoints: {e}"),
    };
    let lock = StateLock::take(Path::new(dir))
        .await
        .map_err(|e| unusable(&e))?;
    let store = DirStore::open(dir).map_err(|e| unusable(&e))?;
    pool_config.store = Some(Arc::new(store));
    Ok(lock)
}

/// A node of a cluster hands client sessions to the others, and takes
/// theirs, through the cluster; `/ready` names it.
async fn share_sessions(
    cluster: &Cluster,
    server_config: &mut proxy_server::ServerConfig,
) -> Result<(), RunError> {
    let sessions = cluster
        .sessions(server_config.session_ttl)
        .await
        .map_err(|e| RunError {
            code: 1,
            message: format!("cannot join the cluster: {e}"),
        })?;
    server_config.handover = Some(Arc::new(sessions));
    server_config.node = Some(cluster.config().node_id.clone());
    Ok(())
}

/// Stops a pool whose shards are still starting: with checkpoints, as a
/// shutdown does (every shard's checkpoint, then a resumable close; the
/// client sessions kept beside them stay as they are); without, every
/// upstream session ends. In a cluster, the leases taken are given back.
async fn stop_starting(pool: &Pool, placement: Option<&Placement>) {
    if !pool.keeps_checkpoints() {
        tracing::info!("stopped during start-up; closing the upstream sessions");
        pool.shutdown().await;
        return;
    }
    tracing::info!("stopped during start-up; writing checkpoints");
    pool.freeze();
    pool.checkpoint().await;
    pool.shutdown_resumable().await;
    if let Some(placement) = placement {
        placement.stop();
        placement.leave().await;
        placement.release_all().await;
    }
}

/// Sets up logging at `level` (a tracing filter such as `info` or
/// `gateway_proxy=debug,info`); a second call does nothing.
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}
