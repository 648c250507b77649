//! `/metrics`: the original gateway-proxy's metric names, so that existing
//! dashboards keep working, and the client side's own.
//!
//! Everything is read from the pool's and the sessions' state once a second
//! by the upkeep task, through this proxy's own recorder (not a global
//! one, so that several proxies can live in one process).

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use shard_pool::{ShardState, ShardStatus};
use std::sync::atomic::Ordering;

use crate::context::{COMPRESSION_NAMES, Context, lock};

/// Histogram buckets of heartbeat latency, in seconds.
pub(crate) const LATENCY_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Histogram buckets of `gateway_shard_status`: its five codes.
pub(crate) const STATUS_BUCKETS: &[f64] = &[0.0, 1.0, 2.0, 3.0, 4.0];

const STATES: [&str; 7] = [
    "connecting",
    "identifying",
    "resuming",
    "active",
    "disconnected",
    "fatally_closed",
    "following",
];

/// The `# HELP` text of every metric; once, before the first recording.
#[allow(clippy::too_many_lines, reason = "one statement per metric")]
pub(crate) fn describe() {
    describe_counter!(
        "gateway_shard_events",
        "Dispatches received from Discord, by shard and event type."
    );
    describe_gauge!(
        "gateway_shard_latency",
        Unit::Seconds,
        "The shard's latest heartbeat round trip."
    );
    describe_histogram!(
        "gateway_shard_latency_histogram",
        Unit::Seconds,
        "The shard's heartbeat round trips."
    );
    describe_histogram!(
        "gateway_shard_status",
        "The shard's state, sampled every second: 4 active, 3 resuming, 2 identifying, 1 disconnected, 0 fatally closed."
    );
    describe_gauge!(
        "gateway_shard_state",
        "1 for the shard's current state, 0 for the others."
    );
    describe_gauge!(
        "gateway_shard_index",
        "The index of the last event the shard handed on."
    );
    for (name, what) in [
        ("gateway_cache_guilds", "guilds"),
        ("gateway_cache_unavailable_guilds", "unavailable guilds"),
        ("gateway_cache_members", "members"),
        ("gateway_cache_users", "users (one per cached member)"),
        ("gateway_cache_presences", "presences"),
        ("gateway_cache_channels", "channels"),
        ("gateway_cache_threads", "threads"),
        ("gateway_cache_roles", "roles"),
        ("gateway_cache_emojis", "emojis"),
        ("gateway_cache_stickers", "stickers"),
        ("gateway_cache_voice_states", "voice states"),
        ("gateway_cache_stage_instances", "stage instances"),
        ("gateway_cache_scheduled_events", "scheduled events"),
        ("gateway_cache_soundboard_sounds", "soundboard sounds"),
    ] {
        describe_gauge!(name, format!("Cached {what} of the shard."));
    }
    describe_gauge!(
        "gateway_cache_bytes",
        Unit::Bytes,
        "Heap bytes the shard's state cache holds (its own count)."
    );
    describe_gauge!(
        "gateway_replay_ring_events",
        "Dispatches in the shard's ring (what a client behind or resuming can still get)."
    );
    describe_gauge!(
        "gateway_replay_ring_bytes",
        Unit::Bytes,
        "Bytes the shard's ring holds, as the replay budget counts them (packed dispatches compressed)."
    );
    describe_gauge!(
        "gateway_replay_bytes",
        Unit::Bytes,
        "Bytes every shard's ring holds together, against replay_max_bytes."
    );
    describe_gauge!(
        "gateway_replay_budget_bytes",
        Unit::Bytes,
        "The rings' shared budget (replay_max_bytes)."
    );
    describe_gauge!(
        "gateway_replay_ring_payload_bytes",
        Unit::Bytes,
        "What the dispatches of the shard's ring would take as they came."
    );
    describe_gauge!(
        "gateway_sessions",
        "Client sessions of the shard, connected or resumable."
    );
    describe_gauge!(
        "gateway_clients",
        "Client connections serving a session of the shard."
    );
    describe_counter!(
        "gateway_replayed_events_total",
        "Events replayed to clients that resumed."
    );
    describe_counter!(
        "gateway_lagging_clients_closed_total",
        "Clients closed (resumable) because they fell behind."
    );
    describe_counter!(
        "gateway_bytes_out_total",
        Unit::Bytes,
        "Bytes written to clients, by compression."
    );
    describe_gauge!(
        "gateway_shard_fatal_close_code",
        "The close code Discord stopped the shard with for good (4004, 4010-4014); 0 while it runs."
    );
    describe_gauge!(
        "gateway_connections",
        "Connections open (HTTP and websocket), in all."
    );
    describe_counter!(
        "gateway_connections_refused_total",
        "Connections refused at accept, by the limit they hit."
    );
    describe_counter!(
        "gateway_clients_closed_total",
        "Clients closed for what they did, by reason: invalid_command (4002), over_command_budget (4008), identify_timeout (4003)."
    );
    describe_gauge!(
        "gateway_checkpoint_age_seconds",
        Unit::Seconds,
        "Time since the shard's last checkpoint was written (with state_dir)."
    );
    describe_gauge!(
        "gateway_checkpoint_duration_seconds",
        Unit::Seconds,
        "How long taking and writing the shard's last checkpoint took."
    );
    describe_gauge!(
        "gateway_checkpoint_held_seconds",
        Unit::Seconds,
        "How long the shard's events waited for its last checkpoint (the copy of its state)."
    );
    describe_gauge!(
        "gateway_checkpoint_bytes",
        Unit::Bytes,
        "The size of the shard's last checkpoint."
    );
    describe_gauge!(
        "gateway_shard_restored",
        "1 when the shard's upstream session was resumed from a checkpoint (a restart that cost no identify), 0 when this process identified it."
    );
    describe_gauge!(
        "gateway_shards_started",
        "Shards by how their upstream session began in this process: resumed from a checkpoint, or identified."
    );
    describe_counter!(
        "gateway_voice_commands_refused_total",
        "Op 4s (voice state updates) not sent: another client session owns the guild's voice."
    );
    describe_gauge!(
        "gateway_identifies_remaining",
        "Identifies Discord allows before its daily reset, as this process counts them."
    );
    describe_gauge!(
        "gateway_identifies_reset_seconds",
        Unit::Seconds,
        "Time until Discord resets the day's identifies."
    );
}

/// Records every metric from the current state.
#[allow(
    clippy::cast_precision_loss,
    reason = "gauges are f64; counts stay far below 2^52"
)]
pub(crate) fn record(ctx: &Context) {
    let sessions = ctx.sessions.per_shard();
    let clients = lock(&ctx.counters.clients).clone();
    let now = shard_pool::wall_clock();
    let mut started = [0_u32; 2];
    for status in ctx.pool.status() {
        let shard = status.id.to_string();
        started[usize::from(status.restored)] += 1;
        gauge!("gateway_shard_restored", "shard" => shard.clone())
            .set(f64::from(u8::from(status.restored)));
        if let Some(checkpoint) = status.checkpoint {
            let age = shard_pool::age(shard_pool::unix_ms(checkpoint.written), now);
            gauge!("gateway_checkpoint_age_seconds", "shard" => shard.clone())
                .set(age.as_secs_f64());
            gauge!("gateway_checkpoint_duration_seconds", "shard" => shard.clone())
                .set(checkpoint.took.as_secs_f64());
            gauge!("gateway_checkpoint_held_seconds", "shard" => shard.clone())
                .set(checkpoint.held.as_secs_f64());
            gauge!("gateway_checkpoint_bytes", "shard" => shard.clone())
                .set(checkpoint.bytes as f64);
        }
        shard_metrics(ctx, &shard, &status);
        let (_, all) = sessions.get(&status.id).copied().unwrap_or_default();
        gauge!("gateway_sessions", "shard" => shard.clone()).set(all as f64);
        let connected = clients.get(&status.id).copied().unwrap_or_default();
        gauge!("gateway_clients", "shard" => shard).set(connected as f64);
    }
    gauge!("gateway_shards_started", "how" => "identified").set(f64::from(started[0]));
    gauge!("gateway_shards_started", "how" => "resumed").set(f64::from(started[1]));
    let (used, budget) = ctx.pool.replay_bytes();
    gauge!("gateway_replay_bytes").set(used as f64);
    gauge!("gateway_replay_budget_bytes").set(budget as f64);
    counter!("gateway_replayed_events_total")
        .absolute(ctx.counters.replayed.load(Ordering::Relaxed));
    counter!("gateway_lagging_clients_closed_total")
        .absolute(ctx.counters.lagging_closed.load(Ordering::Relaxed));
    for (slot, name) in COMPRESSION_NAMES.iter().enumerate() {
        counter!("gateway_bytes_out_total", "compression" => *name)
            .absolute(ctx.counters.bytes_out[slot].load(Ordering::Relaxed));
    }
    let counters = &ctx.counters;
    gauge!("gateway_connections").set(ctx.admission.open() as f64);
    for (slot, limit) in ["max_connections", "max_connections_per_ip"]
        .iter()
        .enumerate()
    {
        counter!("gateway_connections_refused_total", "limit" => *limit)
            .absolute(counters.refused[slot].load(Ordering::Relaxed));
    }
    counter!("gateway_voice_commands_refused_total")
        .absolute(counters.voice_refused.load(Ordering::Relaxed));
    for (reason, count) in [
        ("invalid_command", &counters.invalid_commands),
        ("over_command_budget", &counters.over_budget),
        ("identify_timeout", &counters.identify_timeouts),
    ] {
        counter!("gateway_clients_closed_total", "reason" => reason)
            .absolute(count.load(Ordering::Relaxed));
    }
    if let Some((remaining, reset)) = ctx.pool.identifies() {
        gauge!("gateway_identifies_remaining").set(f64::from(remaining));
        gauge!("gateway_identifies_reset_seconds").set(reset.as_secs_f64());
    }
}

#[allow(
    clippy::cast_precision_loss,
    reason = "gauges are f64; counts stay far below 2^52"
)]
fn shard_metrics(ctx: &Context, shard: &str, status: &ShardStatus) {
    for (event_type, count) in &status.events {
        counter!("gateway_shard_events", "shard" => shard.to_owned(), "event_type" => event_type.to_string())
            .absolute(*count);
    }
    if let Some(latency) = status.latency {
        gauge!("gateway_shard_latency", "shard" => shard.to_owned()).set(latency.as_secs_f64());
        let mut last = lock(&ctx.counters.latencies);
        if last.insert(status.id, latency) != Some(latency) {
            histogram!("gateway_shard_latency_histogram", "shard" => shard.to_owned())
                .record(latency.as_secs_f64());
        }
    }
    // The original's encoding, as a histogram, so its dashboards work:
    // 4 active, 3 resuming, 2 identifying (or connecting), 1 disconnected,
    // 0 fatally closed.
    let code = match status.state {
        ShardState::Active => Some(4.0),
        ShardState::Resuming => Some(3.0),
        ShardState::Disconnected { .. } => Some(1.0),
        ShardState::FatallyClosed => Some(0.0),
        // Another node's: its status is that node's to say.
        ShardState::Following => None,
        _ => Some(2.0),
    };
    if let Some(code) = code {
        histogram!("gateway_shard_status", "shard" => shard.to_owned()).record(code);
    }
    for state in STATES {
        let value = f64::from(u8::from(status.state.name() == state));
        gauge!("gateway_shard_state", "shard" => shard.to_owned(), "state" => state).set(value);
    }
    let cache = &status.cache;
    for (name, value) in [
        ("gateway_cache_guilds", cache.guilds),
        ("gateway_cache_unavailable_guilds", cache.unavailable_guilds),
        ("gateway_cache_members", cache.members),
        // The original counted users apart; here each member holds its user.
        ("gateway_cache_users", cache.members),
        ("gateway_cache_presences", cache.presences),
        ("gateway_cache_channels", cache.channels),
        ("gateway_cache_threads", cache.threads),
        ("gateway_cache_roles", cache.roles),
        ("gateway_cache_emojis", cache.emojis),
        ("gateway_cache_stickers", cache.stickers),
        ("gateway_cache_voice_states", cache.voice_states),
        ("gateway_cache_stage_instances", cache.stage_instances),
        ("gateway_cache_scheduled_events", cache.scheduled_events),
        ("gateway_cache_soundboard_sounds", cache.soundboard_sounds),
        ("gateway_cache_bytes", cache.bytes),
    ] {
        gauge!(name, "shard" => shard.to_owned()).set(value as f64);
    }
    let ring = status.ring;
    gauge!("gateway_replay_ring_events", "shard" => shard.to_owned()).set(ring.events as f64);
    gauge!("gateway_replay_ring_bytes", "shard" => shard.to_owned()).set(ring.bytes as f64);
    gauge!("gateway_replay_ring_payload_bytes", "shard" => shard.to_owned())
        .set(ring.payload_bytes as f64);
    gauge!("gateway_shard_index", "shard" => shard.to_owned()).set(status.index as f64);
    let fatal = match status.state {
        ShardState::FatallyClosed => status.close_code.unwrap_or(0),
        _ => 0,
    };
    gauge!("gateway_shard_fatal_close_code", "shard" => shard.to_owned()).set(f64::from(fatal));
}
