//! Who runs which shard: a lease per shard in the key-value bucket
//! `{name}-leases`, key `shard-{id}`, value the node id. A node takes a
//! shard's lease before it runs the shard (a *create*, which only one node
//! can win), renews each by compare-and-set over its last revision a few
//! times per lease, and the bucket forgets a lease its holder stopped
//! renewing after `cluster.lease_secs`. So two nodes never run one shard
//! at once (and the revision a lease was taken at, its term, fences off a
//! holder that lost it without knowing), and when a node dies, the others
//! take its shards once their leases expire.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::{Cluster, Error};

/// The leases a node holds. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Leases {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    kv: kv::Store,
    node: String,
    ttl: Duration,
    /// Each held shard's last revision, and when it was last renewed
    /// (when the renewal was sent: the server's write, which starts the
    /// lease's time again, came after).
    held: Mutex<BTreeMap<u32, (u64, Instant)>>,
    /// The same instants, readable without waiting for a renewal under way
    /// ([`Leases::holds`]).
    renewed: std::sync::Mutex<BTreeMap<u32, Instant>>,
}

/// What [`Leases::take`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Take {
    /// This node holds the lease now, taken at revision `term`: the term
    /// it runs the shard in (see [`Source::fence`]). Revisions only grow,
    /// so a later holder's term is higher.
    ///
    /// [`Source::fence`]: shard_pool::Source::fence
    Taken {
        /// The lease's revision when taken.
        term: u64,
    },
    /// Another node holds it (empty: it just expired; try again).
    Held {
        /// That node's id.
        by: String,
    },
}

/// A lease this node held and no longer does.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseLost {
    /// The shard.
    pub shard: u32,
    /// Why: another node took it, or it could not be renewed in time.
    pub why: String,
}

/// The key of shard `shard`'s lease.
pub(crate) fn key(shard: u32) -> String {
    format!("shard-{shard}")
}

impl Leases {
    pub(crate) async fn open(cluster: &Cluster, ttl: Duration) -> Result<Self, Error> {
        let description = "gateway-proxy: which node runs which shard".to_owned();
        let kv = cluster.key_value("leases", description, ttl).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                kv,
                node: cluster.config().node_id.clone(),
                ttl,
                held: Mutex::new(BTreeMap::new()),
                renewed: std::sync::Mutex::new(BTreeMap::new()),
            }),
        })
    }

    /// Takes shard `shard`'s lease if it is free, or held under this
    /// node's own id (this node, restarted: taken over at once).
    ///
    /// # Errors
    ///
    /// When the bucket cannot be reached (counted in
    /// `gateway_cluster_errors_total{what="lease"}`).
    pub async fn take(&self, shard: u32) -> Result<Take, Error> {
        let taken = self.try_take(shard).await;
        if taken.is_err() {
            metrics::counter!("gateway_cluster_errors_total", "what" => "lease").increment(1);
        }
        taken
    }

    /// How long a lease lasts unless renewed (`cluster.lease_secs`).
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// The shards whose lease this node holds, in order.
    pub async fn held(&self) -> Vec<u32> {
        self.inner.held.lock().await.keys().copied().collect()
    }

    async fn try_take(&self, shard: u32) -> Result<Take, Error> {
        let inner = &self.inner;
        let sent = Instant::now();
        let value = Bytes::from(inner.node.clone());
        let failed = |e: &dyn std::fmt::Display| {
            Error::nats(format!("lease of shard {shard}"), e.to_string())
        };
        match inner.kv.create(key(shard), value.clone()).await {
            Ok(revision) => return Ok(self.hold(shard, revision, sent).await),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(error) => return Err(failed(&error)),
        }
        let Some(entry) = inner.kv.entry(key(shard)).await.map_err(|e| failed(&e))? else {
            // Expired meanwhile: the next try creates it.
            return Ok(Take::Held { by: String::new() });
        };
        let holder = String::from_utf8_lossy(&entry.value).into_owned();
        if holder != inner.node {
            return Ok(Take::Held { by: holder });
        }
        match inner.kv.update(key(shard), value, entry.revision).await {
            Ok(revision) => Ok(self.hold(shard, revision, sent).await),
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Ok(Take::Held { by: holder })
            }
            Err(error) => Err(failed(&error)),
        }
    }

    /// Records shard `shard`'s lease as taken at `revision` (its term),
    /// by a request sent at `sent`.
    async fn hold(&self, shard: u32, revision: u64, sent: Instant) -> Take {
        self.inner.held.lock().await.insert(shard, (revision, sent));
        self.inner.renewed(shard, Some(sent));
        metrics::gauge!("gateway_shard_leased", "shard" => shard.to_string()).set(1.0);
        Take::Taken { term: revision }
    }

    /// Renews every lease this node holds, a few times per lease, for as
    /// long as it holds them all; returns the first one lost: taken by
    /// another node (its revision moved on), or not renewed within the
    /// lease's time (NATS away: another node may have it by now). The
    /// node must then stop running the shard at once, writing nothing
    /// more of it (no checkpoint, no event).
    pub async fn keep(&self) -> LeaseLost {
        let inner = &self.inner;
        loop {
            tokio::time::sleep(inner.ttl / 3).await;
            let mut held = inner.held.lock().await;
            for (&shard, (revision, renewed)) in held.iter_mut() {
                let value = Bytes::from(inner.node.clone());
                let sent = Instant::now();
                match inner.kv.update(key(shard), value, *revision).await {
                    Ok(next) => {
                        *revision = next;
                        *renewed = sent;
                        inner.renewed(shard, Some(sent));
                    }
                    Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        inner.renewed(shard, None);
                        metrics::gauge!("gateway_shard_leased", "shard" => shard.to_string())
                            .set(0.0);
                        return LeaseLost {
                            shard,
                            why: "another node holds it now".to_owned(),
                        };
                    }
                    Err(error) => {
                        metrics::counter!("gateway_cluster_errors_total", "what" => "lease")
                            .increment(1);
                        if renewed.elapsed() >= inner.ttl {
                            inner.renewed(shard, None);
                            metrics::gauge!("gateway_shard_leased", "shard" => shard.to_string())
                                .set(0.0);
                            return LeaseLost {
                                shard,
                                why: format!("not renewed for a whole lease ({error})"),
                            };
                        }
                        tracing::warn!(shard, %error, "lease not renewed; trying again");
                    }
                }
            }
        }
    }

    /// The bucket of leases.
    pub(crate) fn store(&self) -> &kv::Store {
        &self.inner.kv
    }

    /// Gives every lease this node holds back, for other nodes to take at
    /// once: after a clean stop.
    pub async fn release_all(&self) {
        for shard in self.held().await {
            self.release(shard).await;
        }
    }

    /// Gives shard `shard`'s lease back (deleted if still this node's: a
    /// lease another node holds by now stays its), for another node to
    /// take at once: once the shard is stopped here, its checkpoint
    /// written and every event of it published.
    pub async fn release(&self, shard: u32) {
        let inner = &self.inner;
        let Some((revision, _)) = inner.held.lock().await.remove(&shard) else {
            return;
        };
        inner.renewed(shard, None);
        let _ = inner
            .kv
            .purge_expect_revision(key(shard), Some(revision))
            .await;
        metrics::gauge!("gateway_shard_leased", "shard" => shard.to_string()).set(0.0);
    }
}

impl Inner {
    /// Notes when shard `shard`'s lease was last renewed (`None`: no
    /// longer held).
    fn renewed(&self, shard: u32, sent: Option<Instant>) {
        let mut renewed = crate::locked(&self.renewed);
        match sent {
            Some(sent) => renewed.insert(shard, sent),
            None => renewed.remove(&shard),
        };
    }
}

/// A node writes a shard's checkpoint only while the shard's lease has at
/// least a third of its time left, counted from when its last renewal was
/// sent: the server's expiry, and so another node's take, comes later
/// still. Renewed three times per lease, a lease always has about two
/// thirds left; a node that was paused (or cut off from NATS) for more
/// than a third of a lease writes nothing until a renewal goes through,
/// and ends if the lease is another node's by then.
impl shard_pool::Holding for Leases {
    fn holds(&self, shard: u32) -> bool {
        let renewed = crate::locked(&self.inner.renewed).get(&shard).copied();
        renewed.is_some_and(|sent| sent.elapsed() < self.inner.ttl * 2 / 3)
    }
}
