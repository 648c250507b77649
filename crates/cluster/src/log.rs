//! The event log: every dispatch a node's shards take in, published to a
//! JetStream stream, one subject per shard.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::DeleteMessageErrorKind;
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
/// the node's own clients never wait for NATS. A publish that fails is
/// sent again with every later event of its batch, in order
/// (`gateway_event_log_retried_total`), up to five times, then given up and
/// logged (`gateway_event_log_failed_total`); a later event of its shard
/// that JetStream stored before it (sent after a reconnect) is deleted and
/// stored again behind it, so each shard's events stay in index order in
/// the stream. When NATS is away long enough for the queue to fill, new
/// events are dropped and counted (`gateway_event_log_dropped_total`):
/// followers see the gap in the indices.
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
        let stream = cluster
            .jetstream()
            .get_stream_no_info(&name)
            .await
            .map_err(|e| Error::nats(format!("opening the stream {name}"), e))?;
        let (queue, events) = mpsc::channel(limits.queue.max(1));
        let stats = Arc::new(LogStats::default());
        tokio::spawn(publish(
            cluster.jetstream().clone(),
            stream,
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
/// copy of an event never stands in for the new owner's. `copies` is how
/// many copies of it were deleted from the stream (stored out of order):
/// JetStream remembers a deleted message's id, so the next copy's id ends
/// in `.{copies}`.
fn message(event: &Tapped, copies: u32) -> PublishMessage {
    let term = event.term;
    let mut message = PublishMessage::build()
        .payload(event.payload.clone())
        .message_id(message_id(event, copies))
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

/// An event's message id: `{term}.{session}.{index}`, `.closed` on a
/// close for good, then `.{copies}` once a copy was deleted.
fn message_id(event: &Tapped, copies: u32) -> String {
    let (term, session, index) = (event.term, &event.session, event.index);
    let closed = if event.closed.is_some() {
        ".closed"
    } else {
        ""
    };
    match copies {
        0 => format!("{term}.{session}.{index}{closed}"),
        copies => format!("{term}.{session}.{index}{closed}.{copies}"),
    }
}

/// The message that marks the start of term `term` in shard `shard`'s
/// events.
pub(crate) fn fence_message(shard: u32, term: u64) -> PublishMessage {
    PublishMessage::build()
        .message_id(format!("fence.{shard}.{term}"))
        .header(SHARD, shard.to_string().as_str())
        .header(FENCE, term.to_string().as_str())
}

/// The publishing task: batches of up to [`WINDOW`] events, each
/// published whole ([`publish_batch`]) before the next.
async fn publish(
    jetstream: jetstream::Context,
    stream: stream::Stream<()>,
    prefix: String,
    mut events: mpsc::Receiver<Tapped>,
    stats: Arc<LogStats>,
) {
    let mut batch = Vec::with_capacity(WINDOW);
    while events.recv_many(&mut batch, WINDOW).await > 0 {
        let entries = batch.drain(..).map(Entry::new).collect();
        publish_batch(&jetstream, &stream, &prefix, entries, &stats).await;
        metrics::counter!("gateway_event_log_published_total")
            .absolute(stats.published.load(Ordering::Relaxed));
    }
}

/// One event of a batch on its way to the log.
#[derive(Debug)]
struct Entry {
    event: Tapped,
    /// Copies of it deleted from the stream (see [`message`]).
    copies: u32,
    /// Tries that failed.
    failed: u32,
    /// The sequence of a copy stored out of order, to delete before it is
    /// sent again.
    stale: Option<u64>,
}

impl Entry {
    fn new(event: Tapped) -> Self {
        Self {
            event,
            copies: 0,
            failed: 0,
            stale: None,
        }
    }
}

/// What a publish's acknowledgement said.
#[derive(Debug)]
enum Acked {
    /// Stored at this stream sequence (or stored there before: a repeat).
    Stored(u64),
    /// Not acknowledged (it may be stored all the same): why.
    Failed(String),
}

/// What becomes of an entry after a round of its batch.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// In the stream, after every event of its shard that comes before it.
    Done,
    /// Not known to be stored: sent again.
    Again,
    /// Stored at this sequence, but before an event of its shard that
    /// comes first (that one's publish failed, and this one went through
    /// after a reconnect): that copy is deleted and it is sent again,
    /// behind it.
    Misplaced(u64),
    /// Failed [`TRIES`] times: given up (a gap in its shard's indices).
    GiveUp,
}

/// Judges one round of a batch: `entries` as sent, in the batch's order,
/// and what each one's acknowledgement said. `last` holds each shard's
/// highest sequence stored in order in the batch's rounds so far.
///
/// An event counts as stored in order only if no earlier event of its
/// shard is still to be sent again and its sequence is past the last one
/// stored in order: so the stream holds each shard's events in index
/// order, however the publishes of a batch fail.
fn judge(entries: &[Entry], acks: &[Acked], last: &mut HashMap<u32, u64>) -> Vec<Verdict> {
    let mut blocked = HashSet::new();
    entries
        .iter()
        .zip(acks)
        .map(|(entry, acked)| {
            let shard = entry.event.shard;
            match *acked {
                Acked::Failed(_) if entry.failed + 1 >= TRIES => Verdict::GiveUp,
                Acked::Failed(_) => {
                    blocked.insert(shard);
                    Verdict::Again
                }
                Acked::Stored(sequence) => {
                    let after = last.get(&shard).is_none_or(|&last| sequence > last);
                    if after && !blocked.contains(&shard) {
                        last.insert(shard, sequence);
                        Verdict::Done
                    } else {
                        blocked.insert(shard);
                        Verdict::Misplaced(sequence)
                    }
                }
            }
        })
        .collect()
}

/// Publishes one batch, in rounds: every event still to publish is sent,
/// in order, then every acknowledgement awaited at once (one timeout for
/// the round, however many were lost); the round's [`Verdict`]s say which
/// are done. The rest are sent again [`PAUSE`] later, in order.
async fn publish_batch(
    jetstream: &jetstream::Context,
    stream: &stream::Stream<()>,
    prefix: &str,
    mut entries: Vec<Entry>,
    stats: &LogStats,
) {
    let mut last = HashMap::new();
    let mut first = true;
    while !entries.is_empty() {
        if !first {
            tokio::time::sleep(PAUSE).await;
            let again = entries.len() as u64;
            stats.retried.fetch_add(again, Ordering::Relaxed);
            metrics::counter!("gateway_event_log_retried_total").increment(again);
            delete_stale(stream, &mut entries, stats).await;
        }
        first = false;
        let mut sent = Vec::with_capacity(entries.len());
        for entry in &entries {
            let subject = format!("{prefix}.{}", entry.event.shard);
            sent.push(
                jetstream
                    .send_publish(subject, message(&entry.event, entry.copies))
                    .await,
            );
        }
        let acks = futures_util::future::join_all(sent.into_iter().map(acknowledged)).await;
        let verdicts = judge(&entries, &acks, &mut last);
        let mut kept = Vec::with_capacity(entries.len());
        for ((mut entry, verdict), acked) in entries.into_iter().zip(verdicts).zip(acks) {
            match verdict {
                Verdict::Done => {
                    stats.published.fetch_add(1, Ordering::Relaxed);
                }
                Verdict::Again => {
                    entry.failed += 1;
                    kept.push(entry);
                }
                Verdict::Misplaced(sequence) => {
                    entry.stale = Some(sequence);
                    kept.push(entry);
                }
                Verdict::GiveUp => {
                    let error = match acked {
                        Acked::Failed(error) => error,
                        Acked::Stored(_) => String::new(),
                    };
                    give_up(&entry.event, &error, stats);
                }
            }
        }
        entries = kept;
    }
}

/// Deletes the copies of `entries` stored out of order; the next copy of
/// each gets a new id. A delete that fails counts as a failed try: the
/// entry is sent again with its old id (a repeat, judged misplaced again),
/// and given up after [`TRIES`].
async fn delete_stale(stream: &stream::Stream<()>, entries: &mut Vec<Entry>, stats: &LogStats) {
    let mut index = 0;
    while index < entries.len() {
        let entry = &mut entries[index];
        index += 1;
        let Some(sequence) = entry.stale else {
            continue;
        };
        let gone = match stream.delete_message(sequence).await {
            Ok(_) => Ok(()),
            Err(error) => match error.kind() {
                DeleteMessageErrorKind::JetStream(error)
                    if error.error_code() == ErrorCode::NO_MESSAGE_FOUND =>
                {
                    Ok(())
                }
                _ => Err(error.to_string()),
            },
        };
        match gone {
            Ok(()) => {
                entry.stale = None;
                entry.copies += 1;
            }
            Err(error) => {
                entry.failed += 1;
                if entry.failed >= TRIES {
                    let entry = entries.remove(index - 1);
                    index -= 1;
                    let error = format!("its copy stored out of order not deleted: {error}");
                    give_up(&entry.event, &error, stats);
                }
            }
        }
    }
}

/// Waits for a sent publish's acknowledgement.
async fn acknowledged(
    sent: Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError>,
) -> Acked {
    let acked = match sent {
        Ok(ack) => ack.await.map_err(|e| e.to_string()),
        Err(error) => Err(error.to_string()),
    };
    match acked {
        Ok(ack) => Acked::Stored(ack.sequence),
        Err(error) => Acked::Failed(error),
    }
}

/// Counts and logs an event given up.
fn give_up(event: &Tapped, error: &str, stats: &LogStats) {
    stats.failed.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("gateway_event_log_failed_total").increment(1);
    tracing::warn!(
        shard = event.shard,
        index = event.index,
        error,
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

    fn entry(shard: u32, index: u64, failed: u32) -> Entry {
        let payload = bytes::Bytes::from_static(b"{}");
        let event = Tapped::new(
            shard,
            index,
            None,
            "s".into(),
            payload,
            Audience::Everyone,
            false,
        );
        Entry {
            failed,
            ..Entry::new(event)
        }
    }

    #[test]
    fn an_event_stored_before_a_failed_one_of_its_shard_is_misplaced() {
        use Acked::{Failed, Stored};
        use Verdict::{Again, Done, GiveUp, Misplaced};
        let timed_out = || Failed("timed out".to_owned());
        // Shard 0's event 2 was lost, 3 went through after a reconnect;
        // shard 1 lost nothing.
        let entries = [
            entry(0, 1, 0),
            entry(0, 2, 0),
            entry(1, 1, 0),
            entry(0, 3, 0),
        ];
        let acks = [Stored(10), timed_out(), Stored(12), Stored(13)];
        let mut last = HashMap::new();
        let verdicts = judge(&entries, &acks, &mut last);
        assert_eq!(verdicts, [Done, Again, Done, Misplaced(13)]);
        // The next round: 2 stored now, 3 again behind it.
        let (entries, acks) = ([entry(0, 2, 1), entry(0, 3, 0)], [Stored(20), Stored(21)]);
        assert_eq!(judge(&entries, &acks, &mut last), [Done, Done]);
        assert_eq!(last, HashMap::from([(0, 21), (1, 12)]));

        // An event whose acknowledgement was lost though it was stored,
        // before the one ahead of it: its repeat names the old copy.
        let mut last = HashMap::from([(0, 30)]);
        let (entries, acks) = ([entry(0, 5, 1), entry(0, 6, 1)], [Stored(40), Stored(35)]);
        assert_eq!(judge(&entries, &acks, &mut last), [Done, Misplaced(35)]);

        // Given up after its last try: the rest of its shard goes on.
        let mut last = HashMap::new();
        let (entries, acks) = (
            [entry(0, 7, TRIES - 1), entry(0, 8, 0)],
            [timed_out(), Stored(50)],
        );
        assert_eq!(judge(&entries, &acks, &mut last), [GiveUp, Done]);
    }

    #[test]
    fn a_copy_after_a_deleted_one_has_its_own_id() {
        let event = entry(3, 9, 0).event.with_term(4);
        let id = |copies| message_id(&event, copies);
        assert_eq!(id(0), "4.s.9");
        assert_eq!(id(2), "4.s.9.2");
        let closed = Tapped::closed(3, 9, "s".into(), 4004).with_term(4);
        assert_eq!(message_id(&closed, 1), "4.s.9.closed.1");
    }
}
