//! Who runs which shard: a lease per shard in the key-value bucket
//! `{name}-leases`, key `shard-{id}`, value the node id. A node takes the
//! lease of every shard of its range before it starts them (a *create*,
//! which only one node can win), renews each by compare-and-set over its
//! last revision a few times per lease, and the bucket forgets a lease its
//! holder stopped renewing after `cluster.lease_secs`. So two nodes never
//! run one shard at once, and a node started with the range of a node that
//! died takes its shards over once their leases expire: it RESUMEs them
//! from their checkpoints (a standby).

use std::collections::BTreeMap;
use std::ops::Range;
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
    /// Each held shard's last revision, and when it was last renewed.
    held: Mutex<BTreeMap<u32, (u64, Instant)>>,
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

fn key(shard: u32) -> String {
    format!("shard-{shard}")
}

impl Leases {
    pub(crate) async fn open(cluster: &Cluster, ttl: Duration) -> Result<Self, Error> {
        let bucket = cluster.named("leases");
        let kv = cluster
            .jetstream()
            .create_or_update_key_value(kv::Config {
                bucket: bucket.clone(),
                description: "gateway-proxy: which node runs which shard".to_owned(),
                history: 1,
                max_age: ttl,
                storage: cluster.config().storage.of(),
                num_replicas: cluster.config().replicas,
                ..kv::Config::default()
            })
            .await
            .map_err(|e| Error::nats(format!("creating the key-value bucket {bucket}"), e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                kv,
                node: cluster.config().node_id.clone(),
                ttl,
                held: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    /// Takes the lease of every shard of `range`, waiting while another
    /// node holds one (logged once per shard and holder): until that node
    /// stops renewing it and it expires. A lease held under this node's
    /// own id (this node, restarted) is taken over at once.
    ///
    /// # Errors
    ///
    /// Never but for a bucket that cannot be read; NATS away is waited
    /// out.
    pub async fn acquire(&self, range: Range<u32>) -> Result<(), Error> {
        for shard in range {
            let mut told = None;
            loop {
                match self.try_take(shard).await {
                    Ok(None) => break,
                    Ok(Some(holder)) => {
                        if told.as_ref() != Some(&holder) {
                            tracing::warn!(
                                shard,
                                holder,
                                "waiting for the shard's lease: another node runs it"
                            );
                            told = Some(holder);
                        }
                    }
                    Err(error) => {
                        metrics::counter!("gateway_cluster_errors_total", "what" => "lease")
                            .increment(1);
                        tracing::warn!(shard, %error, "lease not taken; trying again");
                    }
                }
                tokio::time::sleep(self.inner.ttl / 4).await;
            }
            metrics::gauge!("gateway_shard_leased", "shard" => shard.to_string()).set(1.0);
        }
        Ok(())
    }

    /// Takes shard `shard`'s lease if it is free or this node's: `None`
    /// when taken, else who holds it.
    async fn try_take(&self, shard: u32) -> Result<Option<String>, Error> {
        let inner = &self.inner;
        let value = Bytes::from(inner.node.clone());
        let failed = |e: &dyn std::fmt::Display| {
            Error::nats(format!("lease of shard {shard}"), e.to_string())
        };
        match inner.kv.create(key(shard), value.clone()).await {
            Ok(revision) => {
                self.hold(shard, revision).await;
                return Ok(None);
            }
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(error) => return Err(failed(&error)),
        }
        let Some(entry) = inner.kv.entry(key(shard)).await.map_err(|e| failed(&e))? else {
            // Expired meanwhile: the next try creates it.
            return Ok(Some(String::new()));
        };
        let holder = String::from_utf8_lossy(&entry.value).into_owned();
        if holder != inner.node {
            return Ok(Some(holder));
        }
        match inner.kv.update(key(shard), value, entry.revision).await {
            Ok(revision) => {
                self.hold(shard, revision).await;
                Ok(None)
            }
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Ok(Some(holder))
            }
            Err(error) => Err(failed(&error)),
        }
    }

    /// Records shard `shard`'s lease as held at `revision`, renewed now.
    async fn hold(&self, shard: u32, revision: u64) {
        let renewed = Instant::now();
        self.inner
            .held
            .lock()
            .await
            .insert(shard, (revision, renewed));
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
                match inner.kv.update(key(shard), value, *revision).await {
                    Ok(next) => {
                        *revision = next;
                        *renewed = Instant::now();
                    }
                    Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
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

    /// Gives every lease this node holds back (deleted if still its own),
    /// for another node to take at once: after a clean stop.
    pub async fn release(&self) {
        let inner = &self.inner;
        let held = std::mem::take(&mut *inner.held.lock().await);
        for (shard, (revision, _)) in held {
            // Only over this node's own revision: a lease another node
            // holds by now stays its.
            let _ = inner
                .kv
                .purge_expect_revision(key(shard), Some(revision))
                .await;
            metrics::gauge!("gateway_shard_leased", "shard" => shard.to_string()).set(0.0);
        }
    }
}
