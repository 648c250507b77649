//! The pool: every shard of a range, started together.

use std::ops::Range;
use std::sync::Arc;

use tokio::task::JoinHandle;
use twilight_gateway::{ConfigBuilder, Intents, Shard, ShardId};
use twilight_model::gateway::payload::outgoing::update_presence::UpdatePresencePayload;
use twilight_model::gateway::presence::{ActivityType, MinimalActivity, Status};

use crate::config::{PoolConfig, Presence};
use crate::error::{Error, ErrorKind};
use crate::pipeline::Pipeline;
use crate::queue::{PacedQueue, Queue, SharedQueue};
use crate::rest::{self, GatewayInfo};
use crate::ring::{ReplayBudget, RingLimits};

/// What bounds each shard's ring.
fn ring_limits(config: &PoolConfig, budget: &Arc<ReplayBudget>) -> RingLimits {
    RingLimits {
        max_events: config.replay_max_events,
        max_bytes: config.replay_shard_max_bytes.unwrap_or(usize::MAX),
        max_age: config.replay_max_age,
        raw_events: RAW_EVENTS,
        budget: budget.clone(),
    }
}

/// The newest dispatches each ring keeps as they came, at least (see
/// `ring::RAW_AGE` for the rest of what stays raw): what a live client
/// reads; older ones are packed.
const RAW_EVENTS: usize = 32;
use crate::shard::{ShardHandle, ShardStatus};

/// Every shard of `shard_start..shard_end`, each with its own connection,
/// state cache and subscribers. Dropping the pool stops its shards.
#[derive(Debug)]
pub struct Pool {
    shards: Vec<ShardHandle>,
    total: u32,
    start: u32,
    gateway: GatewayInfo,
    /// The pool's own pacing, when no shared queue was given.
    paced: Option<PacedQueue>,
    /// The bytes every shard's ring shares.
    budget: Arc<ReplayBudget>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        let tasks = self
            .tasks
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for task in tasks.iter() {
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
        let gateway = rest::gateway_bot(&config).await?;
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
        let (queue, paced): (Arc<dyn Queue + Send + Sync>, _) = if let Some(shared) = &config.queue
        {
            (shared.clone(), None)
        } else {
            let paced = PacedQueue::new(
                gateway.max_concurrency,
                config.identify_window,
                gateway.remaining,
                gateway.reset_after,
                gateway.total,
            );
            (Arc::new(paced.clone()), Some(paced))
        };
        let queue = SharedQueue(queue);
        let gateway_url = config
            .gateway_url
            .clone()
            .unwrap_or_else(|| gateway.url.clone());
        let gateway_url = gateway_url.trim_end_matches('/').to_owned();
        let intents = Intents::from_bits_retain(config.intents);
        let mut shards = Vec::new();
        let budget = ReplayBudget::new(config.replay_max_bytes);
        let mut tasks = Vec::new();
        for id in range.clone() {
            let presence = UpdatePresencePayload {
                activities: config
                    .presence
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
            };
            let shard_config = ConfigBuilder::new(config.token.expose().to_owned(), intents)
                .proxy_url(gateway_url.clone())
                .large_threshold(config.large_threshold)
                .presence(presence)
                .queue(queue.clone())
                .build();
            let shard = Shard::with_config(ShardId::new(id, total), shard_config);
            let handle = ShardHandle::new(
                id,
                Pipeline::new(config.cache),
                ring_limits(&config, &budget),
                shard.sender(),
                config.intents,
                config.guild_load_timeout,
            );
            tasks.push(tokio::spawn(handle.clone().run(shard)));
            shards.push(handle);
        }
        tracing::info!(
            shards = ?range,
            total,
            max_concurrency = gateway.max_concurrency,
            gateway = %gateway_url,
            "shards started"
        );
        Ok(Self {
            shards,
            total,
            start: range.start,
            gateway,
            paced,
            budget,
            tasks: std::sync::Mutex::new(tasks),
        })
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

    /// The shard ids this pool runs.
    #[must_use]
    pub fn range(&self) -> Range<u32> {
        let len = u32::try_from(self.shards.len()).unwrap_or(u32::MAX);
        self.start..self.start + len
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

    /// The shards, in id order.
    #[must_use]
    pub fn shards(&self) -> &[ShardHandle] {
        &self.shards
    }

    /// Shard `id`, if this pool runs it.
    #[must_use]
    pub fn shard(&self, id: u32) -> Option<&ShardHandle> {
        self.shards
            .get(usize::try_from(id.checked_sub(self.start)?).ok()?)
    }

    /// The shard a guild's events and commands belong to:
    /// `(guild_id >> 22) % total`.
    #[must_use]
    pub fn shard_of_guild(&self, guild_id: u64) -> u32 {
        u32::try_from((guild_id >> 22) % u64::from(self.total.max(1))).unwrap_or(0)
    }

    /// Every shard's status, in id order.
    #[must_use]
    pub fn status(&self) -> Vec<ShardStatus> {
        self.shards.iter().map(ShardHandle::status).collect()
    }

    /// Closes every upstream session normally and waits (up to five
    /// seconds) for the shards' tasks to end.
    pub async fn shutdown(&self) {
        for shard in &self.shards {
            shard.close();
        }
        let tasks = std::mem::take(
            &mut *self
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
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
        for shard in &self.shards {
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

fn shard_range(config: &PoolConfig, total: u32) -> Result<Range<u32>, Error> {
    let end = config.shard_end.unwrap_or(total);
    if total == 0 {
        return Err(Error::config("shards: the total must be at least 1"));
    }
    if config.shard_start >= end || end > total {
        return Err(Error::config(format!(
            "shard_start {} and shard_end {end}: expected shard_start < shard_end <= shards ({total})",
            config.shard_start
        )));
    }
    Ok(config.shard_start..end)
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
