//! Which nodes are alive, and which shards each should run.
//!
//! Every node puts its own key in the key-value bucket `{name}-nodes` (the
//! node id; the value its preferred shard range, `start-end`, or nothing)
//! a few times per lease, and the bucket forgets a key a lease after its
//! last put: a node that died drops out by itself, one that stops cleanly
//! deletes its key. From the same list every node computes the same
//! placement ([`share`]), so they agree on who should run what without
//! talking to each other; the leases ([`Leases`](crate::Leases)) make sure
//! that, whatever happens meanwhile, a shard never runs twice.

use std::collections::BTreeSet;
use std::ops::Range;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;

use crate::{Cluster, Error};

/// A live node, as it announced itself.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Member {
    /// Its node id.
    pub node: String,
    /// The shards it prefers to run (its configured range), if any.
    pub preferred: Option<Range<u32>>,
}

impl Member {
    /// Node `node`, preferring `preferred`.
    #[must_use]
    pub fn new(node: impl Into<String>, preferred: Option<Range<u32>>) -> Self {
        Self {
            node: node.into(),
            preferred,
        }
    }
}

/// This node's entry among the cluster's live nodes. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Members {
    kv: kv::Store,
    me: Member,
}

impl Members {
    pub(crate) async fn open(
        cluster: &Cluster,
        ttl: Duration,
        preferred: Option<Range<u32>>,
    ) -> Result<Self, Error> {
        let description = "gateway-proxy: the live nodes".to_owned();
        let kv = cluster.key_value("nodes", description, ttl).await?;
        let me = Member::new(cluster.config().node_id.clone(), preferred);
        Ok(Self { kv, me })
    }

    /// This node.
    #[must_use]
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// The bucket of live nodes.
    pub(crate) fn store(&self) -> &kv::Store {
        &self.kv
    }

    /// Says this node is alive (a few times per lease).
    ///
    /// # Errors
    ///
    /// When the bucket cannot be reached.
    pub async fn beat(&self) -> Result<(), Error> {
        let value = match &self.me.preferred {
            Some(range) => format!("{}-{}", range.start, range.end),
            None => String::new(),
        };
        self.kv
            .put(&self.me.node, Bytes::from(value))
            .await
            .map_err(|e| Error::nats("announcing this node", e))?;
        Ok(())
    }

    /// Says this node is gone (a clean stop): the others share its shards
    /// at once.
    pub async fn leave(&self) {
        let _ = self.kv.purge(&self.me.node).await;
    }

    /// The live nodes, in id order (this one included once it has beaten).
    ///
    /// # Errors
    ///
    /// When the bucket cannot be read.
    pub async fn live(&self) -> Result<Vec<Member>, Error> {
        let failed =
            |e: &dyn std::fmt::Display| Error::nats("reading the live nodes", e.to_string());
        let mut keys = self.kv.keys().await.map_err(|e| failed(&e))?;
        let mut live = Vec::new();
        while let Some(node) = keys.next().await {
            let node = node.map_err(|e| failed(&e))?;
            // Gone between the two reads: not live.
            let Some(value) = self.kv.get(&node).await.map_err(|e| failed(&e))? else {
                continue;
            };
            live.push(Member::new(node, parse_range(&value)));
        }
        live.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(live)
    }
}

/// A preferred range as announced: `start-end`.
fn parse_range(value: &[u8]) -> Option<Range<u32>> {
    let text = std::str::from_utf8(value).ok()?;
    let (start, end) = text.split_once('-')?;
    Some(start.parse().ok()?..end.parse().ok()?)
}

/// The shards node `node` should run, of `total`, among `live` (every
/// node computes the same from the same list). Each node gets at most its
/// fair share, `ceil(total / nodes)`: first the shards of its preferred
/// range (a shard two nodes prefer goes to the first by id), then, shard
/// by shard, the others go to the node with the fewest so far (the first
/// by id among equals). Empty when `node` is not among `live`.
#[must_use]
pub fn share(total: u32, live: &[Member], node: &str) -> BTreeSet<u32> {
    let Some(me) = live.iter().position(|m| m.node == node) else {
        return BTreeSet::new();
    };
    let count = u32::try_from(live.len()).unwrap_or(u32::MAX);
    let fair = total.div_ceil(count.max(1));
    let mut owner: Vec<Option<usize>> = vec![None; total as usize];
    let mut counts = vec![0_u32; live.len()];
    for (shard, slot) in (0..total).zip(owner.iter_mut()) {
        let preferring = live.iter().enumerate().find(|(i, m)| {
            counts[*i] < fair && m.preferred.as_ref().is_some_and(|r| r.contains(&shard))
        });
        if let Some((i, _)) = preferring {
            *slot = Some(i);
            counts[i] += 1;
        }
    }
    for slot in &mut owner {
        if slot.is_none() {
            // The fewest so far, the first by id among equals.
            let i = (0..live.len())
                .min_by_key(|i| (counts[*i], *i))
                .unwrap_or(0);
            *slot = Some(i);
            counts[i] += 1;
        }
    }
    (0..total)
        .zip(&owner)
        .filter(|(_, owner)| **owner == Some(me))
        .map(|(shard, _)| shard)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(total: u32, live: &[Member]) -> Vec<Vec<u32>> {
        live.iter()
            .map(|m| share(total, live, &m.node).into_iter().collect())
            .collect()
    }

    #[test]
    fn every_shard_has_one_node_and_no_node_more_than_its_share() {
        for nodes in 1..6_u32 {
            for total in 0..30 {
                let live: Vec<Member> = (0..nodes)
                    .map(|n| Member::new(format!("n{n}"), None))
                    .collect();
                let shares = shares(total, &live);
                let mut all: Vec<u32> = shares.iter().flatten().copied().collect();
                all.sort_unstable();
                assert_eq!(
                    all,
                    (0..total).collect::<Vec<_>>(),
                    "{nodes} nodes, {total}"
                );
                let fair = total.div_ceil(nodes) as usize;
                assert!(shares.iter().all(|s| s.len() <= fair), "{shares:?}");
            }
        }
    }

    #[test]
    fn preferred_ranges_are_kept_and_the_rest_shared() {
        let live = [
            Member::new("a", Some(0..4)),
            Member::new("b", Some(4..8)),
            Member::new("c", Some(8..12)),
        ];
        assert_eq!(
            shares(12, &live),
            [vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9, 10, 11]]
        );
        // b is gone: a and c take its shards, half each.
        let two = [live[0].clone(), live[2].clone()];
        assert_eq!(
            shares(12, &two),
            [vec![0, 1, 2, 3, 4, 6], vec![5, 7, 8, 9, 10, 11]]
        );
        // Everyone prefers everything: an even split.
        let all: Vec<Member> = ["a", "b", "c"]
            .iter()
            .map(|n| Member::new(*n, Some(0..12)))
            .collect();
        assert_eq!(
            shares(12, &all),
            [vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9, 10, 11]]
        );
        assert!(share(12, &all, "d").is_empty(), "not live: nothing");
    }

    #[test]
    fn ranges_read_back() {
        assert_eq!(parse_range(b"3-9"), Some(3..9));
        assert_eq!(parse_range(b""), None);
        assert_eq!(parse_range(b"x-1"), None);
    }
}
