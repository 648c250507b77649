//! Identify pacing across the nodes of a cluster: twilight's `Queue` over
//! JetStream key-value buckets.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use shard_pool::{GatewayInfo, Queue};
use tokio::sync::{Mutex, oneshot};

use crate::{Cluster, Error, locked};

/// The length of Discord's identify day.
const DAY: Duration = Duration::from_hours(24);

/// How long a node waits before asking NATS again after a failure.
const RETRY: Duration = Duration::from_millis(500);

/// The key of the day's identify count in the state bucket.
const DAY_KEY: &str = "identify-day";

/// How often every node reads the day's identify count for its gauges.
const DAY_REFRESH: Duration = Duration::from_secs(5);

/// Identify pacing shared by every node of a cluster.
///
/// Shard `id` is in rate-limit bucket `id % max_concurrency`. Its turn is
/// the successful create of key `bucket-{n}` in the `{name}-identify`
/// key-value bucket, whose entries expire after the identify window and its
/// margin ([`shard_pool::identify_spacing`]): whichever node creates the
/// key first identifies, the others wait until it is gone. So however many
/// nodes start at once, each bucket identifies at most once per window.
/// Within a node, a bucket's shards ask in the order they came (a local
/// queue per bucket), so only one of them asks NATS at a time.
///
/// The day's identifies (`session_start_limit`) are one count for the whole
/// cluster, in the `{name}-state` bucket, taken with compare-and-set; when
/// it is spent, turns wait for Discord's reset. This node's turns, and the
/// day's count ([`identifies`](Self::identifies): read every 5 s, its
/// countdown brought up to date every second, on every node whether it
/// identifies or not), are in `/metrics` (`gateway_identify_turns_total`,
/// `gateway_identifies_remaining`, `gateway_identifies_reset_seconds`).
#[derive(Clone, Debug)]
pub struct KvQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    turns: kv::Store,
    state: kv::Store,
    node: String,
    /// One local line per rate-limit bucket.
    buckets: Vec<Mutex<()>>,
    /// How long a turn's key lives.
    spacing: Duration,
    /// What Discord said at start, for a day count that does not exist yet.
    gateway: GatewayInfo,
    /// The day's count as Discord gave it at start.
    first_day: Day,
    /// The day's count as this node last read or wrote it.
    day: std::sync::Mutex<Option<Day>>,
}

impl KvQueue {
    pub(crate) async fn open(
        cluster: &Cluster,
        gateway: &GatewayInfo,
        window: Duration,
    ) -> Result<Self, Error> {
        let spacing = shard_pool::identify_spacing(window);
        let turns = cluster
            .key_value(
                "identify",
                "gateway-proxy: one key per identify bucket while its turn lasts".to_owned(),
                spacing,
            )
            .await?;
        let state = open_state(cluster).await?;
        let max_concurrency = gateway.max_concurrency.max(1);
        let now = shard_pool::unix_ms(shard_pool::wall_clock());
        let inner = Arc::new(Inner {
            turns,
            state,
            node: cluster.config().node_id.clone(),
            buckets: (0..max_concurrency).map(|_| Mutex::new(())).collect(),
            spacing,
            gateway: gateway.clone(),
            first_day: Day::from_gateway(gateway, now),
            day: std::sync::Mutex::new(None),
        });
        tokio::spawn(keep_day(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// The day's identifies left and the time until Discord resets the
    /// count, as the cluster's shared count said when this node last read
    /// it (every 5 s) or took one; the time counted down from then. `None`
    /// until the first read.
    #[must_use]
    pub fn identifies(&self) -> Option<(u32, Duration)> {
        let day = (*locked(&self.inner.day))?;
        let now = shard_pool::unix_ms(shard_pool::wall_clock());
        let day = day.at(now);
        Some((day.remaining, Duration::from_millis(day.reset_at - now)))
    }
}

/// Keeps the day's gauges current on this node, whether it identifies or
/// not: the count read from the state bucket every [`DAY_REFRESH`] (kept
/// as it was while NATS fails), the countdown to the reset every second.
/// Ends with the queue.
async fn keep_day(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut read_at: Option<tokio::time::Instant> = None;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if read_at.is_none_or(|at| at.elapsed() >= DAY_REFRESH) {
            read_at = Some(tokio::time::Instant::now());
            if let Ok(entry) = inner.state.entry(DAY_KEY).await {
                let day = entry
                    .filter(|entry| entry.operation == kv::Operation::Put)
                    .and_then(|entry| Day::parse(&entry.value))
                    .unwrap_or(inner.first_day);
                *locked(&inner.day) = Some(day);
            }
        }
        let day = *locked(&inner.day);
        if let Some(day) = day {
            let now = shard_pool::unix_ms(shard_pool::wall_clock());
            record_day(&day.at(now), now);
        }
    }
}

/// The cluster's small shared state: the day's identify count.
pub(crate) async fn open_state(cluster: &Cluster) -> Result<kv::Store, Error> {
    cluster
        .key_value(
            "state",
            "gateway-proxy: the cluster's shared counts".to_owned(),
            Duration::ZERO,
        )
        .await
}

impl Inner {
    /// Shard `id`'s rate-limit bucket and the key of its turns.
    fn bucket(&self, id: u32) -> (u32, String) {
        let count = u32::try_from(self.buckets.len()).unwrap_or(u32::MAX);
        let bucket = id % count;
        (bucket, format!("bucket-{bucket}"))
    }

    /// Waits for shard `id`'s turn and takes it.
    async fn turn(&self, id: u32) {
        let (bucket, key) = self.bucket(id);
        let _line = self.buckets[bucket as usize].lock().await;
        let mut attempt = Attempt {
            key,
            value: Bytes::from(format!("{} {id}", self.node)),
            floor: None,
            written: None,
        };
        loop {
            match self.try_turn(&mut attempt).await {
                Ok(None) => break,
                Ok(Some(wait)) => tokio::time::sleep(wait).await,
                Err(error) => {
                    metrics::counter!("gateway_cluster_errors_total", "what" => "identify_queue")
                        .increment(1);
                    tracing::warn!(shard = id, %error, "identify queue: NATS failed; asking again");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
        self.spend_day(id).await;
        metrics::counter!("gateway_identify_turns_total").increment(1);
        tracing::debug!(shard = id, bucket, "identify turn");
    }

    /// One step towards a turn: `None` once it is ours, else how long to
    /// wait before the next step.
    ///
    /// The gap between two turns is measured in the server's time stamps
    /// of the key's writes, never against this machine's clock: a write is
    /// tried when this clock says the last turn is a spacing old, and read
    /// back; if the server's stamps are closer than a spacing (this clock
    /// runs ahead), the node keeps the key, waits the difference, and
    /// writes it again. Waiting for the server to expire the key instead
    /// would cost its expiry timer's lateness, about a quarter of a second
    /// per turn.
    async fn try_turn(&self, attempt: &mut Attempt) -> Result<Option<Duration>, BoxError> {
        let entry = self
            .turns
            .entry(&attempt.key)
            .await?
            .filter(|entry| entry.operation == kv::Operation::Put);
        let spacing = millis_i128(self.spacing);
        let Some(entry) = entry else {
            // Free (never taken, or expired): take it.
            return match self.turns.create(&attempt.key, attempt.value.clone()).await {
                Ok(revision) => {
                    attempt.written = Some(revision);
                    Ok(Some(Duration::ZERO))
                }
                Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => Ok(Some(POLL)),
                Err(error) => Err(error.into()),
            };
        };
        let created = entry.created.unix_timestamp_nanos() / 1_000_000;
        if attempt.written == Some(entry.revision) {
            // Ours: a turn once a spacing after the last one not ours.
            let gap = attempt.floor.map_or(spacing, |floor| created - floor);
            if gap >= spacing {
                return Ok(None);
            }
            tokio::time::sleep(duration_ms(spacing - gap)).await;
            return self.write(attempt, entry.revision).await;
        }
        // Another shard's turn: ours a spacing after it.
        attempt.floor = Some(created);
        attempt.written = None;
        let now = i128::from(shard_pool::unix_ms(shard_pool::wall_clock()));
        let left = created + spacing - now;
        if left > 0 {
            return Ok(Some(duration_ms(left.min(spacing)).max(POLL)));
        }
        self.write(attempt, entry.revision).await
    }

    /// Writes the key over `revision`, then reads it again.
    async fn write(
        &self,
        attempt: &mut Attempt,
        revision: u64,
    ) -> Result<Option<Duration>, BoxError> {
        match self
            .turns
            .update(&attempt.key, attempt.value.clone(), revision)
            .await
        {
            Ok(revision) => attempt.written = Some(revision),
            // Another node wrote first: read again.
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                attempt.written = None;
            }
            Err(error) => return Err(error.into()),
        }
        Ok(Some(Duration::ZERO))
    }

    /// Takes one of the day's identifies (compare-and-set on the shared
    /// count); when none is left, waits for the reset.
    async fn spend_day(&self, id: u32) {
        loop {
            let now = shard_pool::unix_ms(shard_pool::wall_clock());
            let entry = match self.state.entry(DAY_KEY).await {
                Ok(entry) => entry.filter(|e| e.operation == kv::Operation::Put),
                Err(error) => {
                    tracing::warn!(shard = id, %error, "identify day count: NATS failed; asking again");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            let (mut day, revision) = match entry {
                Some(entry) => (Day::parse(&entry.value), entry.revision),
                None => (None, 0),
            };
            let day = day.get_or_insert_with(|| Day::from_gateway(&self.gateway, now));
            if now >= day.reset_at {
                *day = Day {
                    remaining: day.total,
                    total: day.total,
                    reset_at: now + millis(DAY),
                };
            }
            if day.remaining == 0 {
                let wait = Duration::from_millis(day.reset_at.saturating_sub(now));
                tracing::warn!(
                    shard = id,
                    wait_secs = wait.as_secs(),
                    total = day.total,
                    "the day's identifies are used up; the shard waits for Discord's reset"
                );
                tokio::time::sleep(wait.min(Duration::from_mins(1))).await;
                continue;
            }
            day.remaining -= 1;
            let value = day.encode();
            let written = if revision == 0 {
                self.state.create(DAY_KEY, value).await.map(|_| ()).is_ok()
            } else {
                self.state
                    .update(DAY_KEY, value, revision)
                    .await
                    .map(|_| ())
                    .is_ok()
            };
            if written {
                *locked(&self.day) = Some(*day);
                record_day(day, now);
                return;
            }
            // Another node wrote first (or NATS failed): read it again.
        }
    }

    /// Gives a turn back that nobody waited for: its key goes, so the
    /// bucket's next shard may go at once.
    async fn refund(&self, id: u32) {
        let (_, key) = self.bucket(id);
        if let Ok(Some(entry)) = self.turns.entry(&key).await
            && entry.value == format!("{} {id}", self.node).as_bytes()
        {
            let _ = self
                .turns
                .purge_expect_revision(&key, Some(entry.revision))
                .await;
        }
    }
}

/// Where one shard's turn stands.
struct Attempt {
    key: String,
    value: Bytes,
    /// The server's time stamp (ms) of the last turn not ours.
    floor: Option<i128>,
    /// The revision of our last write of the key.
    written: Option<u64>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The shortest wait between two looks at a key.
const POLL: Duration = Duration::from_millis(5);

fn millis_i128(duration: Duration) -> i128 {
    i128::try_from(duration.as_millis()).unwrap_or(i128::MAX)
}

fn duration_ms(ms: i128) -> Duration {
    Duration::from_millis(u64::try_from(ms.max(0)).unwrap_or(u64::MAX))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn record_day(day: &Day, now: u64) {
    #[allow(
        clippy::cast_precision_loss,
        reason = "gauges are f64; counts stay far below 2^52"
    )]
    let left = day.reset_at.saturating_sub(now) as f64 / 1000.0;
    metrics::gauge!("gateway_identifies_remaining").set(f64::from(day.remaining));
    metrics::gauge!("gateway_identifies_reset_seconds").set(left);
}

/// The day's identify count as the cluster keeps it: `remaining total
/// reset_at_unix_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Day {
    remaining: u32,
    total: u32,
    reset_at: u64,
}

impl Day {
    fn from_gateway(gateway: &GatewayInfo, now: u64) -> Self {
        Self {
            remaining: gateway.remaining,
            total: gateway.total,
            reset_at: now + millis(gateway.reset_after),
        }
    }

    fn parse(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split(' ');
        let day = Self {
            remaining: parts.next()?.parse().ok()?,
            total: parts.next()?.parse().ok()?,
            reset_at: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(day)
    }

    /// The count at `now`: whole again once the reset passed (its next
    /// reset is set by the next identify: `now` until then).
    fn at(self, now: u64) -> Self {
        if now < self.reset_at {
            return self;
        }
        Self {
            remaining: self.total,
            total: self.total,
            reset_at: now,
        }
    }

    fn encode(self) -> Bytes {
        Bytes::from(format!(
            "{} {} {}",
            self.remaining, self.total, self.reset_at
        ))
    }
}

impl Queue for KvQueue {
    fn enqueue(&self, id: u32) -> oneshot::Receiver<()> {
        let (mut tx, rx) = oneshot::channel();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = inner.turn(id) => {
                    if tx.send(()).is_err() {
                        inner.refund(id).await;
                    }
                }
                // The shard stopped waiting (its connection dropped).
                () = tx.closed() => {}
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_day_reads_back_what_it_wrote_and_nothing_else() {
        let day = Day {
            remaining: 997,
            total: 1000,
            reset_at: 1_700_000_000_000,
        };
        assert_eq!(Day::parse(&day.encode()), Some(day));
        for bad in ["", "1 2", "1 2 3 4", "a 2 3", "-1 2 3"] {
            assert_eq!(Day::parse(bad.as_bytes()), None, "{bad:?}");
        }
        // Past its reset, the count is whole again.
        assert_eq!(day.at(day.reset_at - 1), day);
        let after = day.at(day.reset_at + 5);
        assert_eq!((after.remaining, after.reset_at), (1000, day.reset_at + 5));
    }
}
