//! What the nodes of a cluster do for each other's clients: their commands
//! for this node's shards ([`Sink`]), and their sessions.
//!
//! Client sessions are handed between the nodes: when a session's
//! connection drops, its record (its shard, where its `s` stands against
//! the shard's index, how long ago it dropped) is written to the cluster's
//! store, `client-<session id>`, and the node lets it go; a RESUME on any
//! node takes it from there (read, then deleted) and is served as one on
//! the node that had it. Indexes are the shard's own, the same on every
//! node ([`shard_pool::Pipeline::handle_stamped`]), so a record means the
//! same events wherever it is taken.

use std::sync::Arc;
use std::time::Duration;

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::Ordering;

use bytes::Bytes;
use shard_pool::{CheckpointReader, Command, CommandFuture, CommandSink, Outcome, Route};
use tokio::time::Instant;

use crate::context::Context;
use crate::limits::Spend;

/// Applies other nodes' clients' commands to this node's shards, budgeted
/// with its own clients' (see [`crate::Proxy::command_sink`]).
#[derive(Debug)]
pub(crate) struct Sink(pub(crate) Arc<Context>);

impl CommandSink for Sink {
    fn apply(&self, shard: u32, command: Command) -> CommandFuture {
        let ctx = self.0.clone();
        Box::pin(async move {
            let Some(handle) = ctx.pool.local(shard) else {
                return Err(shard_pool::Error::remote(shard, "not run by this node"));
            };
            if !matches!(command.route, Route::Ended { .. }) {
                // Checked as this node's own clients' commands are: the
                // other node did, but a command from NATS is not taken on
                // trust.
                let checked = if command.payload.len() > ctx.protocol.max_message_bytes {
                    Err("payload too large")
                } else {
                    crate::protocol::remote_command(command.payload.as_bytes(), &command.route)
                };
                if let Err(reason) = checked {
                    tracing::warn!(
                        shard,
                        session = &*command.session,
                        reason,
                        "a command from another node refused: invalid"
                    );
                    let reason = format!("invalid command: {reason}");
                    return Err(shard_pool::Error::remote(shard, reason));
                }
                // One more client of the shard, known by its session: the
                // shard's budget is every node's clients'.
                let key = remote_key(&command.session);
                let clients = ctx.counters.clients_of(shard) + 1;
                if ctx.budgets.spend(shard, key, clients, Instant::now()) != Spend::Send {
                    ctx.counters.over_budget.fetch_add(1, Ordering::Relaxed);
                    return Ok(Outcome::OverBudget);
                }
            }
            // A voice owner this node does not know is another node's
            // client: taken to be connected.
            let sessions = &ctx.sessions;
            handle
                .command(command, |owner| !sessions.is_detached(owner))
                .await
        })
    }
}

/// The budget key of another node's client session: apart from this
/// node's connection numbers, which count up from 1.
fn remote_key(session: &str) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(session) | 1 << 63
}

/// The layout of a record.
const MAGIC: &[u8; 4] = b"GPCH";
const VERSION: u8 = 1;

/// When a RESUME looks for a record not written yet (the node that had
/// the session may still be writing it): after each of these waits.
const LOOKS: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
];

fn name(id: &str) -> String {
    format!("client-{id}")
}

/// Hands session `id`, which lost its connection at `detached_at`, over
/// to the cluster; in the background. Once its record is written the node
/// lets the session go, unless it was resumed here meanwhile (then the
/// record is deleted again). A failed write leaves it here: its client
/// can resume on this node only.
pub(crate) fn hand_over(ctx: &Arc<Context>, id: &str, detached_at: Instant) {
    let Some(store) = ctx.config.handover.clone() else {
        return;
    };
    let Some((shard, sessions)) = ctx.sessions.export(id, Instant::now()) else {
        return;
    };
    let record = encode(shard, &sessions);
    let (ctx, id) = (ctx.clone(), id.to_owned());
    tokio::spawn(async move {
        let name = name(&id);
        if let Err(error) = store.put(&name, Bytes::from(record)).await {
            tracing::warn!(%error, "client session not handed over: it resumes on this node only");
            return;
        }
        if !ctx.sessions.hand_over(&id, detached_at)
            && let Err(error) = store.delete(&name).await
        {
            tracing::warn!(%error, "a handed-over client session resumed here not deleted");
        }
    });
}

/// A record of `sessions` (one, as [`Sessions::export`] lays it out) of
/// shard `shard`.
///
/// [`Sessions::export`]: crate::session::Sessions::export
fn encode(shard: u32, sessions: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(sessions.len() + 17);
    record.extend_from_slice(MAGIC);
    record.push(VERSION);
    record.extend_from_slice(&shard.to_le_bytes());
    let written = shard_pool::unix_ms(shard_pool::wall_clock());
    record.extend_from_slice(&written.to_le_bytes());
    record.extend_from_slice(sessions);
    record
}

/// Writes the record of session `id`, which a connection of this node
/// serves, to the cluster, so that its client can resume on any node even
/// if this one dies (kill -9, OOM, its machine) and never hands it over:
/// before the session's first event, and every `checkpoint_interval`
/// after ([`record_served`]). The record says its client may be ahead of
/// it; a node that takes it counts the events after it, as after a
/// checkpoint. A failed write is logged: a crash then costs that client an
/// identify.
pub(crate) async fn record(ctx: &Context, id: &str) {
    let Some(store) = &ctx.config.handover else {
        return;
    };
    let Some((shard, sessions)) = ctx.sessions.export_served(id, Instant::now()) else {
        return;
    };
    if let Err(error) = store
        .put(&name(id), Bytes::from(encode(shard, &sessions)))
        .await
    {
        tracing::warn!(%error, "a client session's record not written: a crash of this node costs its client an identify");
    }
}

/// [`record`] for every session a connection of this node serves.
pub(crate) async fn record_served(ctx: &Context) {
    if ctx.config.handover.is_none() {
        return;
    }
    for id in ctx.sessions.served() {
        record(ctx, &id).await;
    }
}

/// Session `id` is over for good: its record, if any, is deleted, so that
/// no node takes it (in the background).
pub(crate) fn forget(ctx: &Context, id: &str) {
    let Some(store) = ctx.config.handover.clone() else {
        return;
    };
    let name = name(id);
    tokio::spawn(async move {
        if let Err(error) = store.delete(&name).await {
            tracing::warn!(%error, "an ended client session's record not deleted");
        }
    });
}

/// Takes session `id`'s record from the cluster, if a node handed it over
/// (`handed`: this node did, so it is there now or taken), looking a few
/// times over 1.5 s for one still being written, and puts it back among
/// this node's sessions (detached) for the RESUME to attach; returns
/// whether it did.
pub(crate) async fn take(ctx: &Context, id: &str, handed: bool) -> bool {
    let Some(store) = &ctx.config.handover else {
        return false;
    };
    let name = name(id);
    let looks = if handed { &LOOKS[..0] } else { &LOOKS[..] };
    let mut waits = looks.iter();
    let record = loop {
        match store.get(&name).await {
            Ok(Some(record)) => break record,
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "a handed-over client session not read");
                return false;
            }
        }
        let Some(wait) = waits.next() else {
            return false;
        };
        tokio::time::sleep(*wait).await;
    };
    if let Err(error) = store.delete(&name).await {
        // Taken all the same: it is this node's now.
        tracing::warn!(%error, "a taken client session's record not deleted");
    }
    ctx.sessions.handed_back(id);
    match read(&record) {
        Ok((shard, age, sessions)) => {
            match ctx.sessions.restore(shard, sessions, age, Instant::now()) {
                Ok(count) => count == 1,
                Err(error) => {
                    tracing::warn!(%error, "a handed-over client session not restored");
                    false
                }
            }
        }
        Err(error) => {
            tracing::warn!(%error, "a handed-over client session not read");
            false
        }
    }
}

/// Session `id` of shard `shard`, handed over by this node, reached its
/// ttl: if nobody took its record, it is deleted and the session is over
/// ([`Context::session_ended`]); in the background.
pub(crate) fn expired(ctx: &Arc<Context>, id: String, shard: u32) {
    let Some(store) = ctx.config.handover.clone() else {
        return;
    };
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let name = name(&id);
        match store.get(&name).await {
            Ok(Some(_)) => {
                if let Err(error) = store.delete(&name).await {
                    tracing::warn!(%error, "an expired client session's record not deleted");
                }
                ctx.session_ended(&id, shard);
            }
            // Taken by a node that serves it now.
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "an expired client session's record not read"),
        }
    });
}

/// A record's shard, age and session.
fn read(record: &[u8]) -> Result<(u32, Duration, &[u8]), shard_pool::Error> {
    let mut reader = CheckpointReader::new(record, "a handed-over client session");
    if reader.take(4)? != MAGIC || reader.u8()? != VERSION {
        return Err(shard_pool::Error::checkpoint(
            "not a client session record of this version",
        ));
    }
    let shard = reader.u32()?;
    let age = shard_pool::age(reader.u64()?, shard_pool::wall_clock());
    Ok((shard, age, reader.rest()))
}
