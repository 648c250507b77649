//! The event log: every dispatch a node's shards take in, published to a
//! JetStream stream, one subject per shard.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use shard_pool::{Audience, Tap, Tapped};
use tokio::sync::mpsc;

use crate::{Cluster, Error};

/// The most publishes awaiting their acknowledgement at once.
const WINDOW: usize = 512;

/// How often a publish is tried before it is given up (counted and
/// logged), and the pause between tries.
const TRIES: u32 = 5;
const PAUSE: Duration = Duration::from_millis(200);

/// The headers of each message of the event log.
pub mod headers {
    /// The shard.
    pub const SHARD: &str = "Gp-Shard";
    /// The event's index in the shard's numbering.
    pub const INDEX: &str = "Gp-Index";
    /// Discord's `s`.
    pub const SEQ: &str = "Gp-Seq";
    /// The upstream session it came in.
    pub const SESSION: &str = "Gp-Session";
    /// Who receives it: `everyone`, `nobody`, `session:{id}` or
    /// `all-but:{id}`.
    pub const AUDIENCE: &str = "Gp-Audience";
    /// Present (`1`) on a READY.
    pub const READY: &str = "Gp-Ready";
    /// On the shard's last message: Discord closed it for good with this
    /// code (the message has no payload, and the last event's index).
    pub const CLOSED: &str = "Gp-Closed";
    /// The term of the node that published it: the revision of its lease
    /// on the shard. Readers take no event of an older term after a newer
    /// one.
    pub const TERM: &str = "Gp-Term";
    /// On a message with no payload that marks the start of a term (a
    /// node took the shard's lease at this revision; see
    /// [`Source::fence`](shard_pool::Source::fence)).
    pub const FENCE: &str = "Gp-Fence";
}

use headers::{AUDIENCE, CLOSED, FENCE, INDEX, READY, SEQ, SESSION, SHARD, TERM};

/// How the event log is kept. Start from `default()`.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct LogLimits {
    /// The oldest event the stream keeps: at least the longest resume.
    pub max_age: Duration,
    /// The most bytes the stream keeps (the oldest go first).
    pub max_bytes: u64,
    /// Events waiting to be published, past which new ones are dropped
    /// (counted): NATS has been away for that long.
    pub queue: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            max_age: Duration::from_mins(10),
            max_bytes: 1 << 30,
            queue: 1 << 16,
        }
    }
}

/// Counts of what the event log did.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Events taken into the queue.
    pub queued: AtomicU64,
    /// Events acknowledged by JetStream (repeats it dropped included).
    pub published: AtomicU64,
    /// Publishes tried again after a failure.
    pub retried: AtomicU64,
    /// Events given up after every try.
    pub failed: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
}

/// The node's event log: a [`Tap`] for the pool that publishes every event
/// to the stream `{name}-events`, subject `{name}.events.{shard}`.
///
/// Each message is the payload as the shard took it in, with the shard,
/// its index, Discord's `s`, the upstream session and the audience stamp
/// as [`headers`], and message id `{term}.{session}.{index}`, so that an
/// event published again in the same term (a retry, or a node that
/// restarted from a checkpoint and numbers the same events again) is
/// dropped by JetStream within its duplicate window.
///
/// [`Tap::tapped`] only queues: a task publishes up to 512 events before
/// it waits for their acknowledgements (never one round trip per event), so
/// the node's own clients never wait for NATS. A failed publish is tried
/// again (`gateway_event_log_retried_total`) up to five times, then given
/// up and logged (`gateway_event_log_failed_total`); when NATS is away long
/// enough for the queue to fill, new events are dropped and counted
/// (`gateway_event_log_dropped_total`): followers see the gap in the
/// indices.
#[derive(Clone, Debug)]
pub struct EventLog {
    queue: mpsc::Sender<Tapped>,
    stats: Arc<LogStats>,
    stream: String,
}

impl EventLog {
    pub(crate) async fn open(cluster: &Cluster, limits: LogLimits) -> Result<Self, Error> {
        let name = cluster.named("events");
        let prefix = format!("{}.events", cluster.config().name);
        let config = stream::Config {
            name: name.clone(),
            description: Some("gateway-proxy: every shard's dispatches".to_owned()),
            subjects: vec![format!("{prefix}.>")],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: limits.max_age,
            max_bytes: i64::try_from(limits.max_bytes).unwrap_or(i64::MAX),
            storage: cluster.config().storage.of(),
            num_replicas: cluster.config().replicas,
            duplicate_window: limits.max_age.min(Duration::from_mins(2)),
            ..stream::Config::default()
        };
        cluster
            .jetstream()
            .create_or_update_stream(config)
            .await
            .map_err(|e| Error::nats(format!("creating the stream {name}"), e))?;
        let (queue, events) = mpsc::channel(limits.queue.max(1));
        let stats = Arc::new(LogStats::default());
        tokio::spawn(publish(
            cluster.jetstream().clone(),
            prefix,
            events,
            stats.clone(),
        ));
        Ok(Self {
            queue,
            stats,
            stream: name,
        })
    }

    /// What it did so far.
    #[must_use]
    pub fn stats(&self) -> &LogStats {
        &self.stats
    }

    /// The stream's name.
    #[must_use]
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Waits until every event queued so far is published (or given up),
    /// for at most `within`: before a node gives a shard's lease back, so
    /// that the next owner finds every event in the log. `false` if some
    /// were still waiting.
    pub async fn flush(&self, within: Duration) -> bool {
        let queued = self.stats.queued.load(Ordering::Acquire);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let done = self.stats.published.load(Ordering::Acquire)
                + self.stats.failed.load(Ordering::Acquire);
            if done >= queued {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Tap for EventLog {
    fn tapped(&self, event: Tapped) {
        if self.queue.try_send(event).is_ok() {
            self.stats.queued.fetch_add(1, Ordering::AcqRel);
        } else {
            let dropped = self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("gateway_event_log_dropped_total").increment(1);
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = dropped + 1,
                    "event log queue full (NATS away?): events dropped from the log"
                );
            }
        }
    }
}

/// The audience as a header value.
fn audience(audience: &Audience) -> String {
    match audience {
        Audience::Session(id) => format!("session:{id}"),
        Audience::Nobody => "nobody".to_owned(),
        Audience::AllBut(id) => format!("all-but:{id}"),
        // Everyone, and any stamp a later version adds.
        _ => "everyone".to_owned(),
    }
}

/// Reads an audience header back.
#[must_use]
pub fn parse_audience(value: &str) -> Option<Audience> {
    if value == "everyone" {
        Some(Audience::Everyone)
    } else if value == "nobody" {
        Some(Audience::Nobody)
    } else if let Some(id) = value.strip_prefix("session:") {
        Some(Audience::Session(id.into()))
    } else {
        value
            .strip_prefix("all-but:")
            .map(|id| Audience::AllBut(id.into()))
    }
}

/// An event's message. Its id makes a repeat (a publish tried again after
/// a reconnect) a no-op; it names the term, so that a fenced-off owner's
/// copy of an event never stands in for the new owner's.
fn message(event: &Tapped) -> PublishMessage {
    let (term, session, index) = (event.term, &event.session, event.index);
    let id = match event.closed {
        Some(_) => format!("{term}.{session}.{index}.closed"),
        None => format!("{term}.{session}.{index}"),
    };
    let mut message = PublishMessage::build()
        .payload(event.payload.clone())
        .message_id(id)
        .header(SHARD, event.shard.to_string().as_str())
        .header(TERM, term.to_string().as_str())
        .header(INDEX, event.index.to_string().as_str())
        .header(SESSION, &*event.session)
        .header(AUDIENCE, audience(&event.audience).as_str());
    if let Some(seq) = event.seq {
        message = message.header(SEQ, seq.to_string().as_str());
    }
    if event.ready {
        message = message.header(READY, "1");
    }
    if let Some(code) = event.closed {
        message = message.header(CLOSED, code.to_string().as_str());
    }
    message
}

/// The message that marks the start of term `term` in shard `shard`'s
/// events.
pub(crate) fn fence_message(shard: u32, term: u64) -> PublishMessage {
    PublishMessage::build()
        .message_id(format!("fence.{shard}.{term}"))
        .header(SHARD, shard.to_string().as_str())
        .header(FENCE, term.to_string().as_str())
}

/// The publishing task: batches of up to [`WINDOW`] events sent, then
/// their acknowledgements awaited; a failed one tried again.
async fn publish(
    jetstream: jetstream::Context,
    prefix: String,
    mut events: mpsc::Receiver<Tapped>,
    stats: Arc<LogStats>,
) {
    let mut batch = Vec::with_capacity(WINDOW);
    let mut acks = Vec::with_capacity(WINDOW);
    while events.recv_many(&mut batch, WINDOW).await > 0 {
        for event in batch.drain(..) {
            let subject = format!("{prefix}.{}", event.shard);
            let sent = jetstream
                .send_publish(subject.clone(), message(&event))
                .await;
            acks.push((event, subject, sent));
        }
        for (event, subject, sent) in acks.drain(..) {
            match acknowledged(sent).await {
                Ok(()) => {
                    stats.published.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => retry(&jetstream, &subject, &event, &stats, &error).await,
            }
        }
        metrics::counter!("gateway_event_log_published_total")
            .absolute(stats.published.load(Ordering::Relaxed));
    }
}

/// Waits for a sent publish's acknowledgement; what failed, as text.
async fn acknowledged(
    sent: Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError>,
) -> Result<(), String> {
    match sent {
        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
        Err(error) => Err(error.to_string()),
    }
}

/// Tries `event` again, one at a time, until it is acknowledged or every
/// try failed.
async fn retry(
    jetstream: &jetstream::Context,
    subject: &str,
    event: &Tapped,
    stats: &LogStats,
    first: &str,
) {
    let mut last = first.to_owned();
    for _ in 1..TRIES {
        tokio::time::sleep(PAUSE).await;
        stats.retried.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("gateway_event_log_retried_total").increment(1);
        let sent = jetstream
            .send_publish(subject.to_owned(), message(event))
            .await;
        match acknowledged(sent).await {
            Ok(()) => {
                stats.published.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(error) => last = error,
        }
    }
    stats.failed.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("gateway_event_log_failed_total").increment(1);
    tracing::warn!(
        shard = event.shard,
        index = event.index,
        error = last,
        "event not published to the event log after {TRIES} tries"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_read_back_as_written() {
        for stamp in [
            Audience::Everyone,
            Audience::Nobody,
            Audience::Session("abc".into()),
            Audience::AllBut("x:y".into()),
        ] {
            assert_eq!(parse_audience(&audience(&stamp)), Some(stamp));
        }
        assert_eq!(parse_audience("someone"), None);
    }
}
