//! The pool: every shard of a range, started together.

use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::task::JoinHandle;
use twilight_gateway::{ConfigBuilder, Intents, Shard, ShardId};
use twilight_model::gateway::payload::outgoing::update_presence::UpdatePresencePayload;
use twilight_model::gateway::presence::{ActivityType, MinimalActivity, Status};

use std::collections::{BTreeMap, HashMap};

use tokio::time::Instant;
use twilight_gateway::Session;

use crate::checkpoint::{self, Identity, Refused};
use crate::config::{PoolConfig, Presence};
use crate::error::{Error, ErrorKind};
use crate::pipeline::Pipeline;
use crate::queue::{PacedQueue, SharedQueue};
use crate::remote::{self, Following};
use crate::rest::{self, GatewayInfo};
use crate::ring::{ReplayBudget, Ring, RingLimits};
use crate::store::{Holding, Store};
use crate::tap::Tap;
use crate::token::Token;

/// What bounds each shard's ring.
fn ring_limits(config: &PoolConfig, budget: &Arc<ReplayBudget>) -> RingLimits {
    RingLimits {
        max_events: config.replay_max_events,
        max_bytes: config.replay_shard_max_bytes.unwrap_or(usize::MAX),
        max_age: config.replay_max_age,
        raw_events: RAW_EVENTS,
        budget: budget.clone(),
        // With a source, this node is one of a cluster's: a client that
        // identified on another node may resume here.
        keep_unserved: config.source.is_some(),
    }
}

/// The newest dispatches each ring keeps as they came, at least (see
/// `ring::RAW_AGE` for the rest of what stays raw): what a live client
/// reads; older ones are packed.
const RAW_EVENTS: usize = 32;
use crate::shard::{CheckpointStats, Link, ShardHandle, ShardStatus};

/// Every shard of `shard_start..shard_end`, each with its own connection,
/// state cache and subscribers. Dropping the pool stops its shards.
#[derive(Debug)]
pub struct Pool {
    /// The shards this pool runs, by id: those of its range, and those it
    /// took over since ([`run`](Self::run)).
    running: RwLock<BTreeMap<u32, ShardHandle>>,
    total: u32,
    range: Range<u32>,
    gateway: GatewayInfo,
    /// What opening a shard's upstream connection takes.
    connector: Connector,
    /// The pool's own pacing, when no shared queue was given.
    paced: Option<PacedQueue>,
    /// The bytes every shard's ring shares.
    budget: Arc<ReplayBudget>,
    /// Where checkpoints go, and whom they are for.
    store: Option<Arc<dyn Store>>,
    /// Whether a shard is still surely this pool's to write.
    holding: Option<Arc<dyn Holding>>,
    identity: Identity,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// What following the shards outside the range takes, with a source.
    following: Option<Arc<Following>>,
    /// The shards outside the range followed so far (when a client first
    /// asked for one), by id, each with its task (which ends only when
    /// aborted).
    followed: Mutex<BTreeMap<u32, (ShardHandle, JoinHandle<()>)>>,
    intents: u64,
}

/// What opening a shard's upstream connection takes.
struct Connector {
    token: Token,
    intents: Intents,
    gateway_url: String,
    large_threshold: u64,
    presence: Presence,
    status: Status,
    queue: SharedQueue,
    total: u32,
    load_timeout: Duration,
    tap: Option<Arc<dyn Tap>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("gateway_url", &self.gateway_url)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Shard `id`'s connection: it RESUMEs `resume` (session id, resume
    /// URL, last `s`) if given, else identifies.
    fn shard(&self, id: u32, resume: Option<(String, String, u64)>) -> Shard<SharedQueue> {
        let mut config = ConfigBuilder::new(self.token.expose().to_owned(), self.intents)
            .proxy_url(self.gateway_url.clone())
            .large_threshold(self.large_threshold)
            .presence(presence(&self.presence, self.status, id))
            .queue(self.queue.clone());
        if let Some((session, resume_url, seq)) = resume {
            config = config
                .session(Session::new(seq, session))
                .resume_url(resume_url);
        }
        Shard::with_config(ShardId::new(id, self.total), config.build())
    }
}

/// What [`Pool::checkpoint`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Checkpointed {
    /// Shards whose checkpoint was written.
    pub written: usize,
    /// Shards with nothing to resume (no READY yet, or closed for good).
    pub skipped: usize,
    /// Shards whose checkpoint could not be written (logged).
    pub failed: usize,
}

impl Drop for Pool {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(PoisonError::into_inner);
        for task in tasks.iter() {
            task.abort();
        }
        let followed = self
            .followed
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for (_, task) in followed.values() {
            task.abort();
        }
    }
}

impl Pool {
    /// Asks `GET /gateway/bot`, checks the range and the day's identifies,
    /// and starts every shard of the range; identifies then follow the
    /// queue's pacing. Returns at once: wait for [`ShardHandle::ready`].
    ///
    /// # Errors
    ///
    /// A configuration value that is wrong (the error names it), a failed
    /// `GET /gateway/bot` (a wrong token, an unreachable REST base), or
    /// fewer identifies left today than shards to start.
    pub async fn start(config: PoolConfig) -> Result<Self, Error> {
        // twilight needs a rustls provider: ring, which builds without cmake.
        // Another part of the process may have installed one already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if !(50..=250).contains(&config.large_threshold) {
            return Err(Error::config(format!(
                "large_threshold {}: Discord allows 50 to 250",
                config.large_threshold
            )));
        }
        let status = status_of(&config.presence)?;
        let gateway = match &config.gateway {
            Some(gateway) => gateway.clone(),
            None => rest::gateway_bot(&config).await?,
        };
        let total = config.shards.unwrap_or(gateway.shards);
        let range = shard_range(&config, total)?;
        let needed = range.end - range.start;
        if gateway.remaining < needed && config.queue.is_none() {
            return Err(Error::new(ErrorKind::SessionStartLimit {
                remaining: gateway.remaining,
                needed,
                reset_after: gateway.reset_after,
            }));
        }
        let (queue, paced) = queue_of(&config, &gateway);
        let gateway_url = config
            .gateway_url
            .clone()
            .unwrap_or_else(|| gateway.url.clone());
        let connector = Connector {
            token: config.token.clone(),
            intents: Intents::from_bits_retain(config.intents),
            gateway_url: gateway_url.trim_end_matches('/').to_owned(),
            large_threshold: config.large_threshold,
            presence: config.presence.clone(),
            status,
            queue,
            total,
            load_timeout: config.guild_load_timeout,
            tap: config.tap.clone(),
        };
        let mut running = BTreeMap::new();
        let budget = ReplayBudget::new(config.replay_max_bytes);
        let mut tasks = Vec::new();
        let identity = Identity::new(&config.token, total, config.intents, config.cache);
        let mut restored = match &config.store {
            Some(store) => restore_all(store, &identity, range.clone(), &config).await,
            None => HashMap::new(),
        };
        for id in range.clone() {
            let limits = ring_limits(&config, &budget);
            let (pipeline, ring, from_checkpoint) = match restored.remove(&id) {
                Some(restored) => {
                    let ring = Ring::restored(limits, restored.ring, Instant::now());
                    (restored.pipeline, ring, true)
                }
                None => (Pipeline::new(config.cache), Ring::new(limits), false),
            };
            let shard = connector.shard(id, resume_point(&pipeline));
            let handle = ShardHandle::new(
                id,
                pipeline,
                ring,
                Link::Upstream(shard.sender()),
                config.intents,
                config.guild_load_timeout,
                from_checkpoint,
            );
            handle.tap_into(config.tap.clone());
            handle.log_in(config.source.clone());
            tasks.push(tokio::spawn(handle.clone().run(shard)));
            running.insert(id, handle);
        }
        tracing::info!(
            shards = ?range,
            total,
            max_concurrency = gateway.max_concurrency,
            gateway = %connector.gateway_url,
            "shards started"
        );
        let following = following(&config, &identity, &budget);
        Ok(Self {
            running: RwLock::new(running),
            total,
            range,
            gateway,
            connector,
            paced,
            budget,
            store: config.store.clone(),
            holding: config.holding.clone(),
            identity,
            tasks: Mutex::new(tasks),
            following,
            followed: Mutex::new(BTreeMap::new()),
            intents: config.intents,
        })
    }

    /// Whether checkpoints are kept ([`PoolConfig::store`]).
    #[must_use]
    pub fn keeps_checkpoints(&self) -> bool {
        self.store.is_some()
    }

    /// Whether shard `id`'s checkpoint (and what the layers above keep
    /// beside it) may be written now: always, unless
    /// [`PoolConfig::holding`] says this process no longer surely runs it.
    #[must_use]
    pub fn holds(&self, id: u32) -> bool {
        self.holding
            .as_ref()
            .is_none_or(|holding| holding.holds(id))
    }

    /// What [`holds`](Self::holds) asks, for the layers above to ask it
    /// too.
    #[must_use]
    pub fn holding(&self) -> Option<&Arc<dyn Holding>> {
        self.holding.as_ref()
    }

    /// Where checkpoints are kept, for the layers above to keep their
    /// own beside them.
    #[must_use]
    pub fn store(&self) -> Option<&Arc<dyn Store>> {
        self.store.as_ref()
    }

    /// Writes every shard's checkpoint to the store, one shard at a time:
    /// each shard's state is copied at one index under its locks (on a
    /// blocking thread; its events wait only for the copy), written out
    /// and put whole. A failure is logged and counted; the other shards go
    /// on. Nothing is written without a store.
    pub async fn checkpoint(&self) -> Checkpointed {
        let mut done = Checkpointed::default();
        let Some(store) = &self.store else {
            return done;
        };
        let manifest = checkpoint::manifest(&self.identity, self.range(), checkpoint::wall_clock());
        if let Err(error) = store.put(checkpoint::MANIFEST, manifest.into()).await {
            tracing::warn!(%error, "checkpoint manifest not written");
            done.failed = self.running().len();
            return done;
        }
        for shard in &self.shards() {
            match self.checkpoint_one(store, shard).await {
                Some(true) => done.written += 1,
                Some(false) => done.failed += 1,
                None => done.skipped += 1,
            }
        }
        done
    }

    /// Writes `shard`'s checkpoint: `Some(true)` if written, `Some(false)`
    /// if it failed (logged), `None` with nothing to resume (then any older
    /// one is deleted).
    async fn checkpoint_one(&self, store: &Arc<dyn Store>, shard: &ShardHandle) -> Option<bool> {
        let started = Instant::now();
        let name = checkpoint::shard_name(shard.id());
        let taken = {
            let shard = shard.clone();
            tokio::task::spawn_blocking(move || shard.take()).await
        };
        let Ok(Some(taken)) = taken else {
            if let Some(outcome) = self.unwritable(shard) {
                return outcome;
            }
            // An older checkpoint must not stand in for this shard.
            if let Err(error) = store.delete(&name).await {
                tracing::warn!(shard = shard.id(), %error, "old checkpoint not deleted");
            }
            return None;
        };
        let identity = self.identity.clone();
        let written = checkpoint::wall_clock();
        let held = taken.held;
        let blob = tokio::task::spawn_blocking(move || taken.encode(&identity, written)).await;
        let result = match blob {
            Ok(_) if let Some(outcome) = self.unwritable(shard) => return outcome,
            Ok(blob) => {
                let bytes = blob.len();
                store
                    .put(&name, blob.into())
                    .await
                    .map(|()| bytes)
                    .map_err(|e| e.to_string())
            }
            Err(error) => Err(error.to_string()),
        };
        match result {
            Ok(bytes) => {
                shard.checkpointed(CheckpointStats {
                    written,
                    held,
                    took: started.elapsed(),
                    bytes,
                });
                Some(true)
            }
            Err(error) => {
                tracing::warn!(shard = shard.id(), %error, "checkpoint not written");
                Some(false)
            }
        }
    }

    /// `None` when `shard`'s checkpoint may be written now; else what
    /// [`checkpoint_one`](Self::checkpoint_one) returns: skipped for a
    /// shard handed over meanwhile (no longer run here), failed (logged)
    /// for one this process no longer surely holds
    /// ([`holds`](Self::holds)).
    #[allow(
        clippy::option_option,
        reason = "checkpoint_one's outcome, or none yet"
    )]
    fn unwritable(&self, shard: &ShardHandle) -> Option<Option<bool>> {
        if !shard.is_local() {
            return Some(None);
        }
        if !self.holds(shard.id()) {
            tracing::warn!(
                shard = shard.id(),
                "checkpoint not written: this process no longer surely runs the shard \
                 (its lease was not renewed in time)"
            );
            return Some(Some(false));
        }
        None
    }

    /// Hands shard `id`, which this pool runs, over to whichever process
    /// takes it next ([`run`](Self::run) there): stops taking its upstream
    /// events in, writes its checkpoint, closes its upstream connection so
    /// that Discord keeps the session for the next owner to RESUME, and
    /// follows it from then on (from where it stopped), so that its
    /// clients here read on once the next owner runs it. The caller then
    /// makes sure every event taken in is published (its tap) before it
    /// lets the next owner in (a cluster's lease). Returns the index the
    /// shard stopped at; `None` if this pool does not run it or has no
    /// source to follow it from.
    pub async fn hand_over(&self, id: u32) -> Option<u64> {
        let following = self.following.clone()?;
        let shard = self.local(id)?;
        shard.freeze();
        if let Some(store) = &self.store {
            self.checkpoint_one(store, &shard).await;
        }
        shard.close_resumable();
        let head = shard.demote(following.source.clone());
        {
            let mut running = self.running.write().unwrap_or_else(PoisonError::into_inner);
            running.remove(&id);
        }
        let since = checkpoint::wall_clock();
        let task = tokio::spawn(remote::follow_from(
            shard.clone(),
            following,
            Some((head, since)),
        ));
        self.followed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, (shard, task));
        tracing::info!(
            shard = id,
            index = head,
            "handed the shard over; following it"
        );
        Some(head)
    }

    /// Stops every shard taking upstream payloads in, so that a
    /// checkpoint taken next is where the shards stop: see
    /// [`ShardHandle::freeze`]. For shutting down.
    pub fn freeze(&self) {
        for shard in &self.shards() {
            shard.freeze();
        }
    }

    /// The rings' shared budget: bytes held and the most allowed.
    #[must_use]
    pub fn replay_bytes(&self) -> (usize, usize) {
        (self.budget.used(), self.budget.max())
    }

    /// The bot's total shard count (clients identify with it).
    #[must_use]
    pub fn total(&self) -> u32 {
        self.total
    }

    /// The shard ids this pool was started with (it may run others since:
    /// [`run`](Self::run)).
    #[must_use]
    pub fn range(&self) -> Range<u32> {
        self.range.clone()
    }

    /// What `GET /gateway/bot` said at start.
    #[must_use]
    pub fn gateway(&self) -> &GatewayInfo {
        &self.gateway
    }

    /// The identifies left today and the time until Discord resets the
    /// count, as this pool paces them; `None` with a shared queue
    /// ([`PoolConfig::queue`](crate::PoolConfig::queue)), which keeps its own.
    #[must_use]
    pub fn identifies(&self) -> Option<(u32, std::time::Duration)> {
        let (remaining, reset_at) = self.paced.as_ref()?.remaining();
        Some((
            remaining,
            reset_at.saturating_duration_since(tokio::time::Instant::now()),
        ))
    }

    /// The shards this pool runs, in id order.
    #[must_use]
    pub fn shards(&self) -> Vec<ShardHandle> {
        self.running().values().cloned().collect()
    }

    fn running(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u32, ShardHandle>> {
        self.running.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Shard `id`: one this pool runs or, with a
    /// [`source`](crate::PoolConfig::source), any shard of the total, the
    /// others followed from their owners (from the first time one is
    /// asked for on; it serves once its state is the owner's: wait for
    /// [`ShardHandle::ready`]). `None` for an id past the total, or outside
    /// the range without a source.
    #[must_use]
    pub fn shard(&self, id: u32) -> Option<ShardHandle> {
        if let Some(shard) = self.local(id) {
            return Some(shard);
        }
        let following = self.following.as_ref().filter(|_| id < self.total)?;
        let mut followed = self.followed.lock().unwrap_or_else(PoisonError::into_inner);
        // Taken over meanwhile.
        if let Some(shard) = self.local(id) {
            return Some(shard);
        }
        let (shard, _) = followed.entry(id).or_insert_with(|| {
            let ring = Ring::new(following.limits.clone());
            let shard = ShardHandle::followed(
                id,
                following.source.clone(),
                following.flags,
                ring,
                self.intents,
                self.connector.load_timeout,
            );
            shard.log_in(Some(following.source.clone()));
            let task = tokio::spawn(remote::follow(shard.clone(), following.clone()));
            (shard, task)
        });
        Some(shard.clone())
    }

    /// Shard `id`, if this pool runs it.
    #[must_use]
    pub fn local(&self, id: u32) -> Option<ShardHandle> {
        self.running().get(&id).cloned()
    }

    /// What the source knows of followed shard `id`: who runs it and how
    /// far behind its log this pool reads ([`Source::following`]); `None`
    /// without a source, or for a shard it knows nothing of.
    ///
    /// [`Source::following`]: crate::Source::following
    #[must_use]
    pub fn following(&self, id: u32) -> Option<crate::FollowedStatus> {
        self.following.as_ref()?.source.following(id)
    }

    /// The shards of other processes this pool follows, in id order.
    #[must_use]
    pub fn followed(&self) -> Vec<ShardHandle> {
        let followed = self.followed.lock().unwrap_or_else(PoisonError::into_inner);
        followed.values().map(|(shard, _)| shard.clone()).collect()
    }

    /// Takes shard `id` over from the process that ran it, in term `term`
    /// (in a cluster, the revision of the lease this node just took):
    /// marks the term's start in the shard's log ([`Source::fence`]),
    /// follows the shard up to that mark (from its latest checkpoint, if
    /// it is not followed yet), so that its state holds every event its
    /// owners published, then runs it from there: its upstream session is
    /// resumed from the last `s` published (Discord replays what came
    /// after), or identified if there was none. Clients of the followed
    /// shard stay connected throughout. Returns at once for a shard this
    /// pool runs.
    ///
    /// [`Source::fence`]: crate::Source::fence
    ///
    /// # Errors
    ///
    /// Without a [`source`](crate::PoolConfig::source), for an id past the
    /// total, when the mark cannot be written, or when following started
    /// again from a checkpoint past the mark (the shard is still followed;
    /// try again). A log not read up to the mark within
    /// [`takeover_wait`](crate::PoolConfig::takeover_wait) is no error: the
    /// shard runs from where its state stands, and Discord replays the
    /// rest.
    pub async fn run(&self, id: u32, term: u64) -> Result<ShardHandle, Error> {
        if let Some(shard) = self.local(id) {
            return Ok(shard);
        }
        let following = self
            .following
            .clone()
            .ok_or_else(|| Error::remote(id, "no source to take it over from"))?;
        let shard = self
            .shard(id)
            .ok_or_else(|| Error::remote(id, "past the total"))?;
        following.source.fence(id, term).await?;
        let wait = following.takeover_wait;
        let reached = tokio::time::timeout(wait, shard.fenced_at(term)).await;
        {
            let mut followed = self.followed.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, task)) = followed.remove(&id) {
                task.abort();
            }
        }
        match reached {
            // Following may have started again from a checkpoint just
            // after the mark (a break): then the state is not the mark's.
            Ok(head) if shard.head() != head => {
                let task = tokio::spawn(remote::follow(shard.clone(), following));
                self.followed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(id, (shard, task));
                return Err(Error::remote(
                    id,
                    "its following broke at the new term's mark; try again",
                ));
            }
            Ok(_) => {}
            // A gap in the log that no checkpoint fills (the owner's
            // publish of an event failed and it died before its next
            // checkpoint), or a log too slow to read: its state is whole
            // up to its head, and a RESUME from there has Discord replay
            // the rest, numbered as the owner numbered it. Waiting longer
            // would keep the shard from running anywhere.
            Err(_) => tracing::warn!(
                shard = id,
                term,
                index = shard.head(),
                "its log was not read up to the new term's mark within {wait:?}: \
                 running it from where its state stands"
            ),
        }
        let resume = shard.resume_point();
        tracing::info!(
            shard = id,
            term,
            index = shard.head(),
            resumes = resume.is_some(),
            "running a shard taken over"
        );
        let upstream = self.connector.shard(id, resume);
        shard.promote(upstream.sender(), term, self.connector.tap.clone());
        let task = tokio::spawn(shard.clone().run(upstream));
        {
            let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
            // Those of shards handed over since have ended: the list stays
            // as long as the shards run here, however often they move.
            tasks.retain(|task| !task.is_finished());
            tasks.push(task);
        }
        self.running
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, shard.clone());
        Ok(shard)
    }

    /// The shard a guild's events and commands belong to:
    /// `(guild_id >> 22) % total`.
    #[must_use]
    pub fn shard_of_guild(&self, guild_id: u64) -> u32 {
        u32::try_from((guild_id >> 22) % u64::from(self.total.max(1))).unwrap_or(0)
    }

    /// Every shard's status, in id order: those this pool runs, then
    /// those it follows ([`ShardState::Following`](crate::ShardState::Following)).
    #[must_use]
    pub fn status(&self) -> Vec<ShardStatus> {
        let followed = self.followed();
        self.shards()
            .iter()
            .chain(&followed)
            .map(ShardHandle::status)
            .collect()
    }

    /// Closes every upstream session normally and waits (up to five
    /// seconds) for the shards' tasks to end.
    pub async fn shutdown(&self) {
        for shard in &self.shards() {
            shard.close();
        }
        self.join().await;
    }

    /// Closes every upstream connection so that Discord keeps its session
    /// for a new process to RESUME ([`ShardHandle::close_resumable`]), and
    /// waits (up to five seconds) for the shards' tasks to end.
    pub async fn shutdown_resumable(&self) {
        for shard in &self.shards() {
            shard.close_resumable();
        }
        self.join().await;
    }

    async fn join(&self) {
        for (_, task) in self
            .followed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            task.abort();
        }
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        for mut task in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
            }
        }
    }

    /// Waits until every shard can serve clients.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::FatallyClosed`] as soon as any shard is closed by
    /// Discord for good (a wrong token, disallowed intents…): it would
    /// never be ready. The error names the shard, the code and what to
    /// change.
    pub async fn ready(&self) -> Result<(), Error> {
        let mut waits = tokio::task::JoinSet::new();
        for shard in self.shards() {
            let shard = shard.clone();
            waits.spawn(async move { shard.ready().await });
        }
        // Dropping the set at the first failure stops the other waits.
        while let Some(wait) = waits.join_next().await {
            if let Ok(Err(error)) = wait {
                return Err(error);
            }
        }
        Ok(())
    }
}

/// Where a shard's state stands upstream, to RESUME from: session id,
/// resume URL and last `s`; `None` before its first READY.
pub(crate) fn resume_point(pipeline: &Pipeline) -> Option<(String, String, u64)> {
    let (upstream, seq) = pipeline.upstream()?;
    Some((
        upstream.session_id.clone(),
        upstream.resume_url.clone(),
        seq,
    ))
}

/// The identify queue: the shared one given, or the pool's own pacing.
fn queue_of(config: &PoolConfig, gateway: &GatewayInfo) -> (SharedQueue, Option<PacedQueue>) {
    if let Some(shared) = &config.queue {
        return (SharedQueue(shared.clone()), None);
    }
    let paced = PacedQueue::new(
        gateway.max_concurrency,
        config.identify_window,
        gateway.remaining,
        gateway.reset_after,
        gateway.total,
    );
    (SharedQueue(Arc::new(paced.clone())), Some(paced))
}

/// What following the shards outside the range takes, with a source.
fn following(
    config: &PoolConfig,
    identity: &Identity,
    budget: &Arc<ReplayBudget>,
) -> Option<Arc<Following>> {
    let source = config.source.clone()?;
    Some(Arc::new(Following {
        source,
        store: config.store.clone(),
        identity: identity.clone(),
        flags: config.cache,
        max_age: config.checkpoint_max_age,
        limits: ring_limits(config, budget),
        takeover_wait: config.takeover_wait,
    }))
}

/// Reads the checkpoint of every shard of `range` that has a usable one;
/// the others identify, each with one log line that says why.
async fn restore_all(
    store: &Arc<dyn Store>,
    identity: &Identity,
    range: Range<u32>,
    config: &PoolConfig,
) -> HashMap<u32, checkpoint::Restored> {
    let mut restored = HashMap::new();
    match store.get(checkpoint::MANIFEST).await {
        Ok(Some(manifest)) => {
            if let Err(refused) = checkpoint::check_manifest(&manifest, identity) {
                tracing::warn!("checkpoints not used, every shard identifies: {refused}");
                return restored;
            }
        }
        Ok(None) => {
            tracing::info!("no checkpoints yet: every shard identifies");
            return restored;
        }
        Err(error) => {
            tracing::warn!(%error, "checkpoints not used, every shard identifies");
            return restored;
        }
    }
    let mut reads = tokio::task::JoinSet::new();
    for id in range {
        let store = store.clone();
        let identity = identity.clone();
        let (flags, max_age) = (config.cache, config.checkpoint_max_age);
        reads.spawn(async move {
            let blob = match store.get(&checkpoint::shard_name(id)).await {
                Ok(Some(blob)) => blob,
                Ok(None) => return (id, Err(Refused::Missing)),
                Err(error) => return (id, Err(Refused::Corrupt(error.to_string()))),
            };
            let read = tokio::task::spawn_blocking(move || {
                checkpoint::restore(
                    &blob,
                    &identity,
                    id,
                    flags,
                    max_age,
                    checkpoint::wall_clock(),
                )
            })
            .await
            .unwrap_or_else(|error| Err(Refused::Corrupt(error.to_string())));
            (id, read)
        });
    }
    while let Some(read) = reads.join_next().await {
        let Ok((id, read)) = read else { continue };
        match read {
            Ok(shard) => {
                tracing::info!(
                    shard = id,
                    age_ms = u64::try_from(shard.age.as_millis()).unwrap_or(u64::MAX),
                    index = shard.pipeline.index(),
                    "resuming the upstream session of a checkpoint"
                );
                restored.insert(id, shard);
            }
            Err(Refused::Missing) => tracing::info!(shard = id, "no checkpoint: identifying"),
            Err(refused) => tracing::warn!(shard = id, "{refused}: identifying"),
        }
    }
    restored
}

fn shard_range(config: &PoolConfig, total: u32) -> Result<Range<u32>, Error> {
    let end = config.shard_end.unwrap_or(total);
    if total == 0 {
        return Err(Error::config("shards: the total must be at least 1"));
    }
    // With a source, a pool may run no shard and follow them all.
    let empty_allowed = config.source.is_some() && config.shard_start == end;
    if (config.shard_start >= end && !empty_allowed) || end > total {
        return Err(Error::config(format!(
            "shard_start {} and shard_end {end}: expected shard_start < shard_end <= shards \
             ({total}; equal only for a pool with a source, which runs no shard)",
            config.shard_start
        )));
    }
    Ok(config.shard_start..end)
}

/// The presence shard `id` identifies with: `{{shard}}` in the
/// activity's name is its id.
fn presence(presence: &Presence, status: Status, id: u32) -> UpdatePresencePayload {
    UpdatePresencePayload {
        activities: presence
            .activity
            .iter()
            .map(|activity| {
                MinimalActivity {
                    kind: ActivityType::from(activity.kind),
                    name: activity.name.replace("{{shard}}", &id.to_string()),
                    url: activity.url.clone(),
                }
                .into()
            })
            .collect(),
        afk: false,
        since: None,
        status,
    }
}

fn status_of(presence: &Presence) -> Result<Status, Error> {
    Ok(match presence.status.as_str() {
        "online" => Status::Online,
        "idle" => Status::Idle,
        "dnd" => Status::DoNotDisturb,
        "invisible" => Status::Invisible,
        "offline" => Status::Offline,
        other => {
            return Err(Error::config(format!(
                "status `{other}`: expected online, idle, dnd, invisible or offline"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_against_the_total() {
        let mut config = PoolConfig::new("t", 0);
        assert_eq!(shard_range(&config, 4).unwrap(), 0..4);
        config.shard_start = 2;
        assert_eq!(shard_range(&config, 4).unwrap(), 2..4);
        config.shard_end = Some(3);
        assert_eq!(shard_range(&config, 4).unwrap(), 2..3);
        for (start, end) in [(3, Some(3)), (0, Some(5)), (4, None)] {
            config.shard_start = start;
            config.shard_end = end;
            let error = shard_range(&config, 4).unwrap_err().to_string();
            assert!(error.contains("shard_start"), "{error}");
        }
    }

    #[test]
    fn statuses_are_discords() {
        let mut presence = Presence::default();
        assert_eq!(status_of(&presence).unwrap(), Status::Online);
        presence.status = "dnd".to_owned();
        assert_eq!(status_of(&presence).unwrap(), Status::DoNotDisturb);
        presence.status = "busy".to_owned();
        assert!(
            status_of(&presence)
                .unwrap_err()
                .to_string()
                .contains("`busy`")
        );
    }
}
