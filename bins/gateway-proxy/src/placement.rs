//! In a cluster: which shards this node runs, agreed with the other nodes
//! without a coordinator.
//!
//! A few times per lease, each node says it is alive, reads the live
//! nodes, and computes from them the shards it should run
//! ([`cluster::share`]: at most its fair share, its configured range
//! first). It takes the lease of each of those it does not run yet and
//! takes the shard over ([`Pool::run`]: from the log, resumed upstream);
//! one it runs but should not, it hands over cleanly ([`Pool::hand_over`],
//! every event published, then the lease given back) for the node that
//! should to take. A lease given back, or a node that joins or leaves
//! cleanly, starts a round at once on every node ([`Changes`]). A node
//! that dies stops renewing its leases and drops out of the live nodes:
//! the others share its shards once the leases expire.
//! The leases, not this placement, guarantee that a shard never runs on
//! two nodes at once.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cluster::{Changes, Commands, EventLog, Leases, Members, Take};
use shard_pool::Pool;

/// How long a node waits for its event log to publish a shard's last
/// events before it gives the shard's lease back.
const FLUSH: Duration = Duration::from_secs(5);

/// This node's part in placing the cluster's shards.
#[derive(Debug)]
pub(crate) struct Placement {
    pool: Arc<Pool>,
    leases: Leases,
    members: Members,
    log: EventLog,
    total: u32,
    /// The answers to other nodes' commands for the shards run here, once
    /// the proxy serves.
    commands: Mutex<Option<Arc<Commands>>>,
    /// The holder last logged of each shard this node waits for.
    told: Mutex<BTreeMap<u32, String>>,
    /// The task that renews the leases: until they are given back.
    renewing: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The task that places the shards.
    placing: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Held by a round of placement: rounds never overlap.
    round: tokio::sync::Mutex<()>,
}

impl Placement {
    pub(crate) fn new(pool: Arc<Pool>, leases: Leases, members: Members, log: EventLog) -> Self {
        let total = pool.total();
        Self {
            pool,
            leases,
            members,
            log,
            total,
            commands: Mutex::new(None),
            told: Mutex::new(BTreeMap::new()),
            renewing: Mutex::new(None),
            placing: Mutex::new(None),
            round: tokio::sync::Mutex::new(()),
        }
    }

    /// From now on, renews this node's leases (ending the process at once
    /// if one is lost) and places the shards every quarter of a lease (the
    /// first round a quarter of a lease from now).
    pub(crate) fn keep(self: &Arc<Self>) {
        let renewing = tokio::spawn(keep_leases(self.leases.clone()));
        let placing = tokio::spawn(self.clone().keep_placing());
        abort(&self.renewing, Some(renewing));
        abort(&self.placing, Some(placing));
    }

    /// Stops placing: no shard is taken or handed over from now on. The
    /// leases are still renewed, so that the shards' checkpoints can be
    /// written under them, until [`release_all`](Self::release_all) gives
    /// them back.
    pub(crate) fn stop(&self) {
        abort(&self.placing, None);
    }

    /// From now on, other nodes' commands for the shards run here are
    /// answered through `commands` (those run already included).
    pub(crate) async fn answer(&self, commands: Arc<Commands>) -> Result<(), cluster::Error> {
        for shard in self.pool.shards() {
            commands.serve(shard.id()).await?;
        }
        *self.commands.lock().unwrap_or_else(PoisonError::into_inner) = Some(commands);
        Ok(())
    }

    fn commands(&self) -> Option<Arc<Commands>> {
        self.commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// One round: says this node is alive, then takes the shards it
    /// should run and is free to, and hands over those it should not (only
    /// those of `within`, if given: at start, before the other nodes have
    /// announced themselves, a node takes its own range alone).
    pub(crate) async fn place(&self, within: Option<&Range<u32>>) {
        let _round = self.round.lock().await;
        if let Err(error) = self.members.beat().await {
            tracing::warn!(%error, "this node could not say it is alive; trying again");
            return;
        }
        let live = match self.members.live().await {
            Ok(live) => live,
            Err(error) => {
                tracing::warn!(%error, "the live nodes not read; trying again");
                return;
            }
        };
        let mut want = cluster::share(self.total, &live, &self.members.me().node);
        if let Some(within) = within {
            want.retain(|shard| within.contains(shard));
        }
        let held: BTreeSet<u32> = self.leases.held().await.into_iter().collect();
        for &shard in held.difference(&want) {
            // One still identifying or resuming is handed over once it is
            // active: midway, the next owner would identify it again.
            let active = self.pool.local(shard).is_some_and(|s| s.is_ready());
            if within.is_none() && active {
                self.hand_over(shard).await;
            }
        }
        let mut runs = Vec::new();
        for &shard in want.difference(&held) {
            match self.leases.take(shard).await {
                Ok(Take::Taken { term }) => runs.push(self.run(shard, term)),
                Ok(Take::Held { by }) => self.waiting(shard, by),
                Ok(_) => {}
                Err(error) => tracing::warn!(shard, %error, "lease not taken; trying again"),
            }
        }
        futures_util::future::join_all(runs).await;
    }

    /// Logs once per holder that this node waits for `shard`.
    fn waiting(&self, shard: u32, by: String) {
        if by.is_empty() {
            return;
        }
        let mut told = self.told.lock().unwrap_or_else(PoisonError::into_inner);
        if told.get(&shard) != Some(&by) {
            tracing::info!(
                shard,
                holder = by,
                "this node should run the shard: waiting for its holder to hand it over"
            );
            told.insert(shard, by);
        }
    }

    /// Takes shard `shard` over in term `term` (its lease just taken).
    async fn run(&self, shard: u32, term: u64) {
        self.told
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&shard);
        if let Err(error) = self.pool.run(shard, term).await {
            tracing::warn!(shard, %error, "shard not taken over; its lease is given back");
            self.leases.release(shard).await;
            return;
        }
        metrics::counter!("gateway_shard_takeovers_total").increment(1);
        if let Some(commands) = self.commands()
            && let Err(error) = commands.serve(shard).await
        {
            tracing::warn!(shard, %error, "other nodes' commands for the shard not answered");
        }
    }

    /// Hands shard `shard` over: stopped here, its checkpoint written and
    /// every event published, then its lease given back.
    async fn hand_over(&self, shard: u32) {
        let Some(index) = self.pool.hand_over(shard).await else {
            return;
        };
        if !self.log.flush(FLUSH).await {
            tracing::warn!(
                shard,
                "the event log did not publish every event in time: the next owner's \
                 RESUME has Discord replay them"
            );
        }
        if let Some(commands) = self.commands() {
            commands.stop(shard);
        }
        self.leases.release(shard).await;
        metrics::counter!("gateway_shard_handovers_total").increment(1);
        tracing::info!(shard, index, "shard handed over");
    }

    /// Places the shards every quarter of a lease, for ever, and at once
    /// when a lease is given back or a node joins or leaves cleanly
    /// ([`Changes`]: a drained node's shards move in well under a round).
    async fn keep_placing(self: Arc<Self>) {
        let every = self.leases.ttl() / 4;
        // The first round a quarter of a lease after the start (which
        // placed the preferred range alone): nodes started together have
        // all announced themselves by then, so none takes the others'
        // shards only to hand them over again.
        tokio::time::sleep(every).await;
        self.place(None).await;
        let mut changes = Changes::new(&self.leases, &self.members);
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = changes.next() => {}
            }
            self.place(None).await;
        }
    }

    /// A clean stop: this node leaves the live nodes, so that the others
    /// share its shards at once.
    pub(crate) async fn leave(&self) {
        self.members.leave().await;
    }

    /// The shards' leases given back, after a clean stop wrote their
    /// checkpoints and closed them resumably: once every event is
    /// published.
    pub(crate) async fn release_all(&self) {
        if !self.log.flush(FLUSH).await {
            tracing::warn!("the event log did not publish every event in time");
        }
        abort(&self.renewing, None);
        self.leases.release_all().await;
    }
}

/// Aborts the task in `slot`, if any, and puts `next` there.
fn abort(
    slot: &Mutex<Option<tokio::task::JoinHandle<()>>>,
    next: Option<tokio::task::JoinHandle<()>>,
) {
    let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(task) = std::mem::replace(&mut *slot, next) {
        task.abort();
    }
}

/// Keeps this node's leases; when one is lost (another node runs the shard
/// now, or it could not be renewed in time), ends the process at once,
/// writing nothing more: no checkpoint, no event, so that two nodes never
/// both write a shard's.
async fn keep_leases(leases: Leases) {
    let lost = leases.keep().await;
    tracing::error!(
        shard = lost.shard,
        why = lost.why,
        "this node lost a shard's lease: it stops now, writing nothing more"
    );
    std::process::exit(crate::EXIT_LEASE_LOST);
}
