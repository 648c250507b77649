//! Identify pacing: Discord's `max_concurrency` buckets, one identify per
//! bucket per window, and the daily `session_start_limit`.
//!
//! Pacing sits behind twilight's one-method [`Queue`] trait: a shard asks
//! to identify and waits for its turn. [`PacedQueue`] paces the shards of
//! one process; a deployment that spans machines plugs in a queue shared
//! through a distributed store instead ([`PoolConfig::queue`]).
//!
//! [`PoolConfig::queue`]: crate::PoolConfig::queue

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
pub use twilight_gateway::queue::Queue;

/// Paces identifies within one process: shard `id` is in bucket
/// `id % max_concurrency`, each bucket identifies at most once per window,
/// and when the day's identifies are used up, the next waits for the reset.
///
/// Turns are given in the order shards ask, so a bucket's shards identify
/// in that order, one window apart, plus a twentieth of the window
/// (`MARGIN`): a turn is the time an IDENTIFY may leave, and the gateway
/// measures the time it arrives, so two identifies exactly a window apart
/// could arrive a little less than a window apart and the second be
/// refused.
#[derive(Clone, Debug)]
pub struct PacedQueue {
    state: Arc<Mutex<Pacing>>,
}

#[derive(Debug)]
struct Pacing {
    max_concurrency: u32,
    window: Duration,
    /// When each bucket may next identify.
    next: HashMap<u32, Instant>,
    /// Identifies left before `reset_at`.
    remaining: u32,
    /// Identifies per day.
    total: u32,
    /// From when the identifies of `remaining` may be used.
    day_start: Instant,
    reset_at: Instant,
}

/// The part of a window added between two turns of a bucket, against
/// network and scheduling jitter: a twentieth.
const MARGIN: u32 = 20;

/// The time between two identifies of one bucket: the window and a
/// twentieth of it, against network and scheduling jitter (a turn is the
/// time an IDENTIFY may leave; the gateway measures when it arrives). Every
/// [`Queue`] should space turns this far apart.
#[must_use]
pub fn identify_spacing(window: Duration) -> Duration {
    window + window / MARGIN
}

/// The length of Discord's identify day.
const DAY: Duration = Duration::from_hours(24);

impl PacedQueue {
    /// A queue with `max_concurrency` buckets of one identify per `window`,
    /// `remaining` identifies left until `reset_after`, then `total` a day.
    #[must_use]
    pub fn new(
        max_concurrency: u32,
        window: Duration,
        remaining: u32,
        reset_after: Duration,
        total: u32,
    ) -> Self {
        Self {
            state: Arc::new(Mutex::new(Pacing {
                max_concurrency: max_concurrency.max(1),
                window,
                next: HashMap::new(),
                remaining,
                total,
                day_start: Instant::now(),
                reset_at: Instant::now() + reset_after,
            })),
        }
    }

    /// When shard `id` may identify, taking that turn.
    fn turn(&self, id: u32) -> Instant {
        let mut pacing = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if now >= pacing.reset_at {
            pacing.remaining = pacing.total;
            pacing.day_start = now;
            pacing.reset_at = now + DAY;
        }
        if pacing.remaining == 0 {
            // Used up: the next identifies wait for the reset.
            tracing::warn!(
                shard = id,
                wait_secs = pacing.reset_at.saturating_duration_since(now).as_secs(),
                total = pacing.total,
                "the day's identifies are used up; the shard waits for Discord's reset"
            );
            pacing.remaining = pacing.total;
            pacing.day_start = pacing.reset_at;
            pacing.reset_at += DAY;
        }
        pacing.remaining = pacing.remaining.saturating_sub(1);
        let mut at = now.max(pacing.day_start);
        let bucket = id % pacing.max_concurrency;
        if let Some(&free) = pacing.next.get(&bucket) {
            at = at.max(free);
        }
        let spacing = identify_spacing(pacing.window);
        pacing.next.insert(bucket, at + spacing);
        at
    }

    /// Gives back a turn its shard stopped waiting for (its connection
    /// dropped before it could identify): the day's count, and the
    /// bucket's slot if no later turn was given since.
    fn refund(&self, id: u32, at: Instant) {
        let mut pacing = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if at >= pacing.day_start {
            pacing.remaining = pacing.remaining.saturating_add(1);
        }
        let bucket = id % pacing.max_concurrency;
        let spacing = identify_spacing(pacing.window);
        if pacing.next.get(&bucket) == Some(&(at + spacing)) {
            pacing.next.insert(bucket, at);
        }
    }

    /// Identifies left before the day resets, and when it resets.
    #[must_use]
    pub fn remaining(&self) -> (u32, Instant) {
        let pacing = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (pacing.remaining, pacing.reset_at)
    }
}

impl Queue for PacedQueue {
    fn enqueue(&self, id: u32) -> oneshot::Receiver<()> {
        let (mut tx, rx) = oneshot::channel();
        let at = self.turn(id);
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep_until(at) => {
                    if tx.send(()).is_err() {
                        queue.refund(id, at);
                    }
                }
                // The shard stopped waiting (its connection dropped): the
                // turn was not used.
                () = tx.closed() => queue.refund(id, at),
            }
        });
        rx
    }
}

/// A queue behind an `Arc`, as twilight's shards need one type for all.
#[derive(Clone)]
pub(crate) struct SharedQueue(pub(crate) Arc<dyn Queue + Send + Sync>);

impl Queue for SharedQueue {
    fn enqueue(&self, id: u32) -> oneshot::Receiver<()> {
        self.0.enqueue(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_bucket_identifies_once_per_window_in_the_order_asked() {
        let queue = PacedQueue::new(2, Duration::from_secs(5), 100, DAY, 1000);
        let start = Instant::now();
        let turns: Vec<(u32, Duration)> = [0, 1, 2, 3, 4, 5]
            .into_iter()
            .map(|id| (id, queue.turn(id) - start))
            .collect();
        // A window and its margin: 5.25 s.
        let secs = |s: u64| Duration::from_millis(s * 5250 / 5);
        assert_eq!(
            turns,
            [
                (0, secs(0)),
                (1, secs(0)),
                (2, secs(5)),
                (3, secs(5)),
                (4, secs(10)),
                (5, secs(10))
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_day_waits_for_the_reset() {
        let queue = PacedQueue::new(16, Duration::from_secs(5), 1, Duration::from_mins(1), 1000);
        let start = Instant::now();
        assert_eq!(queue.turn(0) - start, Duration::ZERO);
        assert_eq!(
            queue.turn(1) - start,
            Duration::from_mins(1),
            "the day's last identify was used"
        );
        assert_eq!(queue.turn(2) - start, Duration::from_mins(1), "the new day");
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_nobody_waits_for_is_given_back() {
        let queue = PacedQueue::new(1, Duration::from_secs(5), 10, DAY, 10);
        let start = Instant::now();
        drop(queue.enqueue(0));
        // The refund runs on the spawned task.
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(queue.remaining().0, 10, "the day's count is back");
        queue.enqueue(1).await.unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the bucket's slot is free again: {:?}",
            start.elapsed()
        );
        assert_eq!(queue.remaining().0, 9);
    }

    #[tokio::test(start_paused = true)]
    async fn the_receiver_fires_at_the_turn() {
        let queue = PacedQueue::new(1, Duration::from_secs(5), 10, DAY, 10);
        let start = Instant::now();
        queue.enqueue(0).await.unwrap();
        queue.enqueue(1).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(5250));
    }
}
