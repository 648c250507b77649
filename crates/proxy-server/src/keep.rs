//! Client sessions kept beside the shards' checkpoints, so that a client
//! can RESUME against the next process.
//!
//! Each shard's sessions are one blob in the pool's store,
//! `sessions-<shard>`, tied to the upstream session their indexes count in:
//! the next process puts them back only for a shard it resumed from the
//! same upstream session. A blob is written with every checkpoint, and
//! before a client that identified or resumed gets its first event, so
//! that a crash never forgets a session its client was already served
//! in. Writes of one shard's blob are coalesced: a change waits for at
//! most the write under way and the one after it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use shard_pool::{CheckpointReader, Holding, Pool, ShardHandle, Store, put_str};
use tokio::time::Instant;

use crate::session::Sessions;

/// The layout of a sessions blob.
const MAGIC: &[u8; 4] = b"GPCS";
const VERSION: u8 = 1;

/// The blob of a shard's sessions.
fn name(shard: u32) -> String {
    format!("sessions-{shard}")
}

/// One shard's writes: changes asked for, and the last one written.
#[derive(Debug, Default)]
struct Slot {
    asked: AtomicU64,
    written: tokio::sync::Mutex<u64>,
}

/// Where client sessions are kept, if anywhere.
#[derive(Debug, Default)]
pub(crate) struct Kept {
    store: Option<Arc<dyn Store>>,
    /// Whether a shard is still surely this process's to write (as for
    /// its checkpoint).
    holding: Option<Arc<dyn Holding>>,
    slots: HashMap<u32, Slot>,
}

impl Kept {
    /// Keeps the sessions of the shards `pool` runs in its store, if it
    /// has one (a slot for every shard: in a cluster, the pool may take
    /// any over).
    pub(crate) fn new(pool: &Pool) -> Self {
        Self {
            store: pool.store().cloned(),
            holding: pool.holding().cloned(),
            slots: (0..pool.total()).map(|id| (id, Slot::default())).collect(),
        }
    }

    /// Writes `shard`'s sessions as they are now (or waits for a write
    /// that began after now). Failures are logged: the clients are served
    /// all the same, and a crash then costs them an identify.
    pub(crate) async fn keep(&self, sessions: &Sessions, shard: &ShardHandle) {
        let (Some(store), Some(slot)) = (&self.store, self.slots.get(&shard.id())) else {
            return;
        };
        // A shard another node runs: that node keeps its sessions.
        if !shard.is_local() {
            return;
        }
        let change = slot.asked.fetch_add(1, Ordering::AcqRel) + 1;
        let mut written = slot.written.lock().await;
        if *written >= change {
            return;
        }
        let Some(upstream) = shard.upstream_session() else {
            return;
        };
        // Paused past its lease: the shard may be another node's by now.
        if !self.holding.as_ref().is_none_or(|h| h.holds(shard.id())) {
            tracing::warn!(
                shard = shard.id(),
                "client sessions not kept: this process no longer surely runs the shard"
            );
            return;
        }
        let covered = slot.asked.load(Ordering::Acquire);
        let mut blob = Vec::with_capacity(256);
        blob.extend_from_slice(MAGIC);
        blob.push(VERSION);
        let written_ms = shard_pool::unix_ms(shard_pool::wall_clock());
        blob.extend_from_slice(&written_ms.to_le_bytes());
        put_str(&mut blob, &upstream);
        blob.extend_from_slice(&sessions.checkpoint(shard.id(), Instant::now()));
        match store.put(&name(shard.id()), blob.into()).await {
            Ok(()) => *written = covered,
            Err(error) => tracing::warn!(
                shard = shard.id(),
                %error,
                "client sessions not kept: a crash now costs their clients an identify"
            ),
        }
    }

    /// Writes every shard's sessions.
    pub(crate) async fn keep_all(&self, sessions: &Sessions, pool: &Pool) {
        for shard in pool.shards() {
            self.keep(sessions, &shard).await;
        }
    }

    /// Puts back the sessions kept for every shard that resumed its
    /// upstream session from a checkpoint; logs what it did.
    pub(crate) async fn restore(&self, sessions: &Sessions, pool: &Pool) {
        let Some(store) = &self.store else { return };
        for shard in pool.shards() {
            if !shard.status().restored {
                continue;
            }
            let id = shard.id();
            let blob = match store.get(&name(id)).await {
                Ok(Some(blob)) => blob,
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(shard = id, %error, "client sessions not restored");
                    continue;
                }
            };
            let upstream = shard.upstream_session().unwrap_or_default();
            match read(&blob, &upstream)
                .and_then(|(age, bytes)| sessions.restore(id, bytes, age, Instant::now()))
            {
                Ok(count) => tracing::info!(shard = id, count, "client sessions restored"),
                Err(error) => tracing::warn!(
                    shard = id,
                    %error,
                    "client sessions not restored: their clients identify again"
                ),
            }
        }
    }
}

/// A sessions blob's age and sessions, if it belongs to `upstream`.
pub(crate) fn read<'a>(
    blob: &'a [u8],
    upstream: &str,
) -> Result<(std::time::Duration, &'a [u8]), shard_pool::Error> {
    let mut reader = CheckpointReader::new(blob, "the client sessions");
    if reader.take(4)? != MAGIC || reader.u8()? != VERSION {
        return Err(shard_pool::Error::checkpoint(
            "not a client sessions blob of this version",
        ));
    }
    let age = shard_pool::age(reader.u64()?, shard_pool::wall_clock());
    if reader.str()? != upstream {
        return Err(shard_pool::Error::checkpoint(
            "kept for another upstream session",
        ));
    }
    Ok((age, reader.rest()))
}
