//! When the placement may have changed, so that nodes place shards at
//! once rather than at their next round: a lease given back (a node that
//! handed a shard over or stopped cleanly), a node that stopped cleanly,
//! or a node that announced itself for the first time.
//!
//! A node that died is not seen here: JetStream forgets a key whose age
//! passed without a word to watchers, so placement still runs on a timer
//! as well (every quarter of a lease).

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation, Watch};
use futures_util::StreamExt;

use crate::{Leases, Members};

/// How long to wait before watching again when the buckets cannot be
/// watched (NATS away).
const RETRY: Duration = Duration::from_secs(1);

/// The most node ids remembered as announced. A node that died is never
/// deleted from the set (JetStream says nothing of an expired key), so
/// past this the set starts again: each live node's next beat then calls
/// for one more round, which is harmless.
const MAX_KNOWN: usize = 1024;

/// What a watched key-value entry means for placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bucket {
    Leases,
    Nodes,
}

/// Changes of the cluster's leases and live nodes that call for a
/// placement round ([`Changes::next`]).
pub struct Changes {
    leases: kv::Store,
    nodes: kv::Store,
    /// The nodes seen announcing themselves since the watch began: a
    /// node's beat is news only the first time.
    known: HashSet<String>,
    watches: Option<(Watch, Watch)>,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes")
            .field("known", &self.known)
            .field("watching", &self.watches.is_some())
            .finish_non_exhaustive()
    }
}

impl Changes {
    /// Watches `leases`' and `members`' buckets.
    #[must_use]
    pub fn new(leases: &Leases, members: &Members) -> Self {
        Self {
            leases: leases.store().clone(),
            nodes: members.store().clone(),
            known: HashSet::new(),
            watches: None,
        }
    }

    /// Resolves at the next change: a lease deleted or purged, a node's
    /// key deleted or purged, or a node's first announcement. Watches
    /// again after a break (NATS away), so it never ends. Cancel-safe
    /// between changes: a watch dropped midway is opened again.
    pub async fn next(&mut self) {
        loop {
            let Some((leases, nodes)) = self.watches.as_mut() else {
                match (self.leases.watch_all().await, self.nodes.watch_all().await) {
                    (Ok(leases), Ok(nodes)) => self.watches = Some((leases, nodes)),
                    _ => tokio::time::sleep(RETRY).await,
                }
                continue;
            };
            let (bucket, entry) = tokio::select! {
                entry = leases.next() => (Bucket::Leases, entry),
                entry = nodes.next() => (Bucket::Nodes, entry),
            };
            let Some(Ok(entry)) = entry else {
                // Watched again from now: what changed meanwhile is the
                // timer's to find.
                self.watches = None;
                continue;
            };
            if calls_for_a_round(&mut self.known, bucket, entry.operation, entry.key) {
                return;
            }
        }
    }
}

/// Whether an entry of `bucket` for `key` by `operation` calls for a
/// placement round; `known` is the nodes seen announcing themselves.
fn calls_for_a_round(
    known: &mut HashSet<String>,
    bucket: Bucket,
    operation: Operation,
    key: String,
) -> bool {
    match (bucket, operation) {
        (Bucket::Leases, Operation::Put) => false,
        (Bucket::Nodes, Operation::Put) => {
            if known.len() >= MAX_KNOWN && !known.contains(&key) {
                known.clear();
            }
            known.insert(key)
        }
        (Bucket::Nodes, Operation::Delete | Operation::Purge) => {
            known.remove(&key);
            true
        }
        (Bucket::Leases, Operation::Delete | Operation::Purge) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_back_lease_a_leaving_node_and_a_new_one_call_for_a_round() {
        let mut known = HashSet::new();
        let mut round = |bucket, operation, key: &str| {
            calls_for_a_round(&mut known, bucket, operation, key.to_owned())
        };
        assert!(!round(Bucket::Leases, Operation::Put, "shard-0"), "taken");
        assert!(
            round(Bucket::Leases, Operation::Purge, "shard-0"),
            "given back"
        );
        assert!(round(Bucket::Leases, Operation::Delete, "shard-1"));
        assert!(round(Bucket::Nodes, Operation::Put, "a"), "a new node");
        assert!(!round(Bucket::Nodes, Operation::Put, "a"), "its beat");
        assert!(round(Bucket::Nodes, Operation::Purge, "a"), "it left");
        assert!(round(Bucket::Nodes, Operation::Put, "a"), "back again");
        // Nodes that died are never deleted: the set stays bounded.
        for n in 0..MAX_KNOWN * 2 {
            assert!(round(Bucket::Nodes, Operation::Put, &format!("n{n}")));
        }
        assert!(known.len() <= MAX_KNOWN, "{}", known.len());
    }
}
