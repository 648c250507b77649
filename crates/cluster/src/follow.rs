//! The shards other nodes run: their events from the event log, and their
//! clients' commands carried to the node that runs them.
//!
//! [`NatsSource`] is the pool's [`Source`]: a followed shard's events are
//! read with an ordered consumer of its subject (`{name}.events.{shard}`,
//! from about the time of the checkpoint the follower starts from), and a
//! command is a NATS request to `{name}.commands.{shard}`, which the node
//! that runs the shard answers ([`serve_commands`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::{HeaderMap, Message};
use bytes::Bytes;
use futures_util::StreamExt;
use shard_pool::{
    Command, CommandFuture, CommandSink, FenceFuture, Followed, FollowedStatus, Outcome, Route,
    Source, Tapped,
};
use tokio::sync::mpsc;

use crate::log::{fence_message, headers, parse_audience};
use crate::{Cluster, locked};

/// How long a node waits for the node that runs a shard to answer a
/// command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// The most bytes of a command a node takes from another: Discord's own
/// limit on a gateway message.
const MAX_COMMAND: usize = 4096;

/// How often a follower checks its connection to NATS.
const CONNECTION_CHECK: Duration = Duration::from_millis(500);

/// How many events read ahead a follower may have waiting.
const FOLLOW_QUEUE: usize = 1024;

/// Header of a command: the client session it came from.
const COMMAND_SESSION: &str = "Gp-Session";
/// Header of a command: how its answers are routed (`plain`,
/// `chunks:{nonce}`, `voice:{guild}:{channel or -}`, `ended:{0|1}`).
const COMMAND_ROUTE: &str = "Gp-Route";

/// The pool's [`Source`] over the cluster: the event log and command
/// requests.
#[derive(Clone, Debug)]
pub struct NatsSource {
    cluster: Cluster,
    follows: Follows,
}

impl NatsSource {
    pub(crate) fn new(cluster: &Cluster) -> Self {
        Self {
            cluster: cluster.clone(),
            follows: Follows::default(),
        }
    }
}

/// What this node knows of each shard it follows ([`Source::following`]):
/// the node that runs it, the holder of its lease when the follower last
/// looked (as it starts reading, and at each new term's mark; also the
/// gauge `gateway_shard_owner{shard,node}`: 1 for it, 0 for the one
/// before), and how far behind the log the reading is, as of the last
/// message read (also the gauges `gateway_stream_lag_*`).
#[derive(Clone, Debug, Default)]
struct Follows(Arc<std::sync::Mutex<std::collections::HashMap<u32, FollowedStatus>>>);

impl Follows {
    /// Looks up who holds shard `shard`'s lease now.
    async fn learn_owner(&self, cluster: &Cluster, shard: u32) {
        let Some(node) = lease_holder(cluster, shard).await else {
            return;
        };
        let gauge = |node: &str| metrics::gauge!("gateway_shard_owner", "shard" => shard.to_string(), "node" => node.to_owned());
        let before = {
            let mut follows = locked(&self.0);
            let status = follows.entry(shard).or_default();
            if status.owner.as_deref() == Some(node.as_str()) {
                return;
            }
            status.owner.replace(node.as_str().into())
        };
        if let Some(before) = before {
            gauge(&before).set(0.0);
        }
        gauge(&node).set(1.0);
    }

    /// Shard `shard`'s reading is `events` behind the log's end, the last
    /// one read published `behind` ago.
    fn lag(&self, shard: u32, events: u64, behind: Duration) {
        let mut follows = locked(&self.0);
        let status = follows.entry(shard).or_default();
        status.lag_events = Some(events);
        status.lag = Some(behind);
    }

    fn get(&self, shard: u32) -> Option<FollowedStatus> {
        locked(&self.0).get(&shard).cloned()
    }
}

/// The node that holds shard `shard`'s lease, if the bucket of leases says.
async fn lease_holder(cluster: &Cluster, shard: u32) -> Option<String> {
    let leases = cluster
        .jetstream()
        .get_key_value(cluster.named("leases"))
        .await
        .ok()?;
    let holder = leases.get(crate::lease::key(shard)).await.ok()??;
    String::from_utf8(holder.to_vec())
        .ok()
        .filter(|node| !node.is_empty())
}

impl Source for NatsSource {
    fn events(
        &self,
        shard: u32,
        after: u64,
        since: Option<SystemTime>,
    ) -> mpsc::Receiver<Followed> {
        let (events, receiver) = mpsc::channel(FOLLOW_QUEUE);
        let reader = Reader {
            cluster: self.cluster.clone(),
            follows: self.follows.clone(),
            shard,
        };
        tokio::spawn(read(reader, after, since, events));
        receiver
    }

    fn following(&self, shard: u32) -> Option<FollowedStatus> {
        self.follows.get(shard)
    }

    fn command(&self, shard: u32, command: Command) -> CommandFuture {
        let client = self.cluster.jetstream().client();
        let subject = commands_subject(&self.cluster, shard);
        Box::pin(async move {
            let mut headers = HeaderMap::new();
            headers.insert(COMMAND_SESSION, &*command.session);
            headers.insert(COMMAND_ROUTE, route(&command.route).as_str());
            let request = async_nats::Request::new()
                .payload(Bytes::from(command.payload))
                .headers(headers)
                .timeout(Some(COMMAND_TIMEOUT));
            let answer = client
                .send_request(subject, request)
                .await
                .map_err(|e| shard_pool::Error::remote(shard, e.to_string()))?;
            let answer = std::str::from_utf8(&answer.payload).ok();
            if let Some(reason) = answer.and_then(|answer| answer.strip_prefix("error:")) {
                // Not applied there (an invalid command, a shard it no
                // longer runs): why.
                return Err(shard_pool::Error::remote(shard, reason));
            }
            answer
                .and_then(parse_outcome)
                .ok_or_else(|| shard_pool::Error::remote(shard, "an answer this node cannot read"))
        })
    }

    fn fence(&self, shard: u32, term: u64) -> FenceFuture {
        let jetstream = self.cluster.jetstream().clone();
        let subject = format!("{}.events.{shard}", self.cluster.config().name);
        Box::pin(async move {
            let failed = |e: &dyn std::fmt::Display| {
                metrics::counter!("gateway_cluster_errors_total", "what" => "fence").increment(1);
                shard_pool::Error::remote(shard, format!("the new term's mark: {e}"))
            };
            let ack = jetstream
                .send_publish(subject, fence_message(shard, term))
                .await
                .map_err(|e| failed(&e))?;
            ack.await.map_err(|e| failed(&e))?;
            Ok(())
        })
    }
}

fn commands_subject(cluster: &Cluster, shard: u32) -> String {
    format!("{}.commands.{shard}", cluster.config().name)
}

/// Who reads a followed shard's events.
struct Reader {
    cluster: Cluster,
    follows: Follows,
    shard: u32,
}

/// Reads the reader's shard's events after index `after` into `events`
/// until the receiver is dropped; a break is said ([`Followed::Broken`])
/// and ends it.
async fn read(
    reader: Reader,
    after: u64,
    since: Option<SystemTime>,
    events: mpsc::Sender<Followed>,
) {
    let why = match read_until_broken(&reader, after, since, &events).await {
        Ok(()) => return,
        Err(why) => why,
    };
    metrics::counter!("gateway_cluster_errors_total", "what" => "follow").increment(1);
    let _ = events.send(Followed::Broken(why)).await;
}

/// [`read`]'s loop: `Ok` when the receiver is gone.
async fn read_until_broken(
    reader: &Reader,
    after: u64,
    since: Option<SystemTime>,
    events: &mpsc::Sender<Followed>,
) -> Result<(), String> {
    let (cluster, shard) = (&reader.cluster, reader.shard);
    reader.follows.learn_owner(cluster, shard).await;
    let name = cluster.named("events");
    let stream = cluster
        .jetstream()
        .get_stream(&name)
        .await
        .map_err(|e| format!("opening the stream {name}: {e}"))?;
    let deliver_policy = match since {
        Some(since) => DeliverPolicy::ByStartTime {
            start_time: since.into(),
        },
        None => DeliverPolicy::All,
    };
    let config = pull::OrderedConfig {
        filter_subject: format!("{}.events.{shard}", cluster.config().name),
        deliver_policy,
        ..pull::OrderedConfig::default()
    };
    let mut consumer = stream
        .create_consumer(config)
        .await
        .map_err(|e| format!("reading the stream {name}: {e}"))?;
    let mut caught_up = false;
    let pending = consumer
        .info()
        .await
        .map_err(|e| format!("reading the stream {name}: {e}"))?
        .num_pending;
    let lag = metrics::gauge!("gateway_stream_lag_messages", "shard" => shard.to_string());
    let lag_seconds = metrics::gauge!("gateway_stream_lag_seconds", "shard" => shard.to_string());
    if pending == 0 {
        caught_up = true;
        lag.set(0.0);
        reader.follows.lag(shard, 0, Duration::ZERO);
        if events.send(Followed::CaughtUp).await.is_err() {
            return Ok(());
        }
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("reading the stream {name}: {e}"))?;
    // The server forgets its consumers when it restarts, and the consumer
    // would notice only after missing heartbeats for a while: a follower
    // that saw the connection go starts again once it is back.
    let client = cluster.jetstream().client();
    let mut went_away = false;
    let mut terms = Terms::default();
    let mut tick = tokio::time::interval(CONNECTION_CHECK);
    loop {
        let message = tokio::select! {
            message = messages.next() => message,
            _ = tick.tick() => {
                match client.connection_state() {
                    async_nats::connection::State::Connected if went_away => {
                        return Err("the connection to NATS came back".to_owned());
                    }
                    async_nats::connection::State::Connected => {}
                    _ => went_away = true,
                }
                continue;
            }
        };
        let Some(message) = message else { break };
        let message = message.map_err(|e| format!("reading the stream {name}: {e}"))?;
        let (pending, published) = {
            let info = message
                .info()
                .map_err(|e| format!("a message of {name} without its info: {e}"))?;
            (info.pending, SystemTime::from(info.published))
        };
        #[allow(clippy::cast_precision_loss)] // a gauge
        lag.set(pending as f64);
        let behind = shard_pool::wall_clock()
            .duration_since(published)
            .unwrap_or_default();
        lag_seconds.set(behind.as_secs_f64());
        reader.follows.lag(shard, pending, behind);
        let read = logged(shard, &message.message)
            .ok_or_else(|| format!("a message of {name} without its headers"))?;
        if matches!(read, Logged::Fence(_)) {
            // A new term: another node runs the shard now.
            reader.follows.learn_owner(cluster, shard).await;
        }
        if let Some(followed) = terms.take(shard, read, after)
            && events.send(followed).await.is_err()
        {
            return Ok(());
        }
        if !caught_up && pending == 0 {
            caught_up = true;
            if events.send(Followed::CaughtUp).await.is_err() {
                return Ok(());
            }
        }
    }
    Err(format!("the stream {name} ended"))
}

/// The newest term a follower read: events of older ones are refused.
#[derive(Default)]
struct Terms {
    newest: u64,
}

impl Terms {
    /// What `read` is for the follower of shard `shard` from index
    /// `after`: nothing for an event of an older term than one read
    /// before (its node lost the lease without knowing it yet: fenced
    /// off), or one the follower holds.
    fn take(&mut self, shard: u32, read: Logged, after: u64) -> Option<Followed> {
        match read {
            Logged::Fence(fence) => {
                self.newest = self.newest.max(fence);
                Some(Followed::Fenced(fence))
            }
            Logged::Event(event) if event.term < self.newest => {
                metrics::counter!("gateway_fencing_refusals_total", "shard" => shard.to_string())
                    .increment(1);
                tracing::warn!(
                    shard,
                    index = event.index,
                    term = event.term,
                    current = self.newest,
                    "an event of a node that no longer runs the shard: refused"
                );
                None
            }
            Logged::Event(event) => {
                self.newest = event.term;
                (event.index > after).then_some(Followed::Event(event))
            }
        }
    }
}

/// A message of the log, read back.
enum Logged {
    Event(Tapped),
    /// The start of a term.
    Fence(u64),
}

/// A message of the log read back: an event, or a term's start.
fn logged(shard: u32, message: &Message) -> Option<Logged> {
    let headers = message.headers.as_ref()?;
    let header = |name: &str| headers.get(name).map(async_nats::HeaderValue::as_str);
    if let Some(term) = header(headers::FENCE) {
        return Some(Logged::Fence(term.parse().ok()?));
    }
    // Published before terms were: 0.
    let term = header(headers::TERM).map_or(Some(0), |term| term.parse().ok())?;
    let index = header(headers::INDEX)?.parse().ok()?;
    if let Some(code) = header(headers::CLOSED) {
        let session = Arc::from(header(headers::SESSION)?);
        let closed = Tapped::closed(shard, index, session, code.parse().ok()?);
        return Some(Logged::Event(closed.with_term(term)));
    }
    let seq = header(headers::SEQ).and_then(|seq| seq.parse().ok());
    let session = Arc::from(header(headers::SESSION)?);
    let audience = parse_audience(header(headers::AUDIENCE)?)?;
    let ready = header(headers::READY).is_some();
    let event = Tapped::new(
        shard,
        index,
        seq,
        session,
        message.payload.clone(),
        audience,
        ready,
    );
    Some(Logged::Event(event.with_term(term)))
}

/// A route as a header value.
fn route(route: &Route) -> String {
    match route {
        Route::Chunks { nonce } => format!("chunks:{nonce}"),
        Route::Voice { guild, channel } => match channel {
            Some(channel) => format!("voice:{guild}:{channel}"),
            None => format!("voice:{guild}:-"),
        },
        Route::Ended { leave } => format!("ended:{}", u8::from(*leave)),
        // Plain, and any route a later version adds.
        _ => "plain".to_owned(),
    }
}

/// Reads a route header back.
fn parse_route(value: &str) -> Option<Route> {
    if value == "plain" {
        return Some(Route::Plain);
    }
    if let Some(nonce) = value.strip_prefix("chunks:") {
        return Some(Route::Chunks {
            nonce: nonce.to_owned(),
        });
    }
    if let Some(leave) = value.strip_prefix("ended:") {
        return Some(Route::Ended {
            leave: leave == "1",
        });
    }
    let (guild, channel) = value.strip_prefix("voice:")?.split_once(':')?;
    let channel = match channel {
        "-" => None,
        channel => Some(channel.parse().ok()?),
    };
    Some(Route::Voice {
        guild: guild.parse().ok()?,
        channel,
    })
}

/// An outcome as an answer's body.
fn outcome(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Refused { owner } => format!("refused:{owner}"),
        Outcome::Rejoined => "rejoined".to_owned(),
        Outcome::Stopped => "stopped".to_owned(),
        Outcome::OverBudget => "over-budget".to_owned(),
        Outcome::Ended(guilds) => {
            let guilds: Vec<String> = guilds.iter().map(u64::to_string).collect();
            format!("ended:{}", guilds.join(","))
        }
        // Sent, and any outcome a later version adds.
        _ => "sent".to_owned(),
    }
}

/// Reads an answer's body back.
fn parse_outcome(value: &str) -> Option<Outcome> {
    match value {
        "sent" => Some(Outcome::Sent),
        "rejoined" => Some(Outcome::Rejoined),
        "stopped" => Some(Outcome::Stopped),
        "over-budget" => Some(Outcome::OverBudget),
        _ => {
            if let Some(owner) = value.strip_prefix("refused:") {
                return Some(Outcome::Refused {
                    owner: owner.into(),
                });
            }
            let guilds = value.strip_prefix("ended:")?;
            let guilds = guilds
                .split(',')
                .filter(|guild| !guild.is_empty())
                .map(str::parse)
                .collect::<Result<Vec<u64>, _>>()
                .ok()?;
            Some(Outcome::Ended(guilds))
        }
    }
}

/// The node's answers to other nodes' commands for the shards it runs,
/// one subscription per shard. Dropping it stops them.
#[derive(Debug)]
pub struct Commands {
    cluster: Cluster,
    sink: Arc<dyn CommandSink>,
    /// Each shard served, with its task.
    served: std::sync::Mutex<std::collections::BTreeMap<u32, tokio::task::JoinHandle<()>>>,
}

impl Drop for Commands {
    fn drop(&mut self) {
        let served = self
            .served
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for task in served.values() {
            task.abort();
        }
    }
}

impl Commands {
    /// Answers nothing yet: see [`serve`](Self::serve).
    #[must_use]
    pub fn new(cluster: &Cluster, sink: Arc<dyn CommandSink>) -> Self {
        Self {
            cluster: cluster.clone(),
            sink,
            served: std::sync::Mutex::default(),
        }
    }

    /// Answers the commands other nodes' clients send shard `shard` (one
    /// this node runs now): each is handed to the sink (the proxy's:
    /// checked, applied and budgeted as this node's own clients' commands),
    /// in the order they come, and the outcome is the answer; one the sink
    /// refuses (invalid, or a shard no longer run here) is answered
    /// `error:{why}`, which the asking node returns as its error. A
    /// command over 4 KiB, or whose headers do not read, is answered
    /// `refused` and counted (`gateway_cluster_errors_total{what="command"}`).
    /// A shard served already stays as it is.
    ///
    /// # Errors
    ///
    /// If the subscription cannot be made.
    pub async fn serve(&self, shard: u32) -> Result<(), crate::Error> {
        if locked(&self.served).contains_key(&shard) {
            return Ok(());
        }
        let client = self.cluster.jetstream().client();
        let subject = commands_subject(&self.cluster, shard);
        let mut requests = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| crate::Error::nats(format!("subscribing to {subject}"), e))?;
        let sink = self.sink.clone();
        let task = tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                let Some(reply) = request.reply.clone() else {
                    continue;
                };
                let answer = answer(&*sink, shard, &request).await;
                if let Err(error) = client.publish(reply, Bytes::from(answer)).await {
                    tracing::warn!(shard, %error, "a command's answer not sent");
                }
            }
        });
        if let Some(old) = locked(&self.served).insert(shard, task) {
            old.abort();
        }
        Ok(())
    }

    /// Stops answering for shard `shard` (another node runs it now).
    pub fn stop(&self, shard: u32) {
        if let Some(task) = locked(&self.served).remove(&shard) {
            task.abort();
        }
    }
}

/// [`Commands`] serving each of `shards`.
///
/// # Errors
///
/// If a subscription cannot be made.
pub async fn serve_commands(
    cluster: &Cluster,
    shards: impl IntoIterator<Item = u32>,
    sink: Arc<dyn CommandSink>,
) -> Result<Commands, crate::Error> {
    let commands = Commands::new(cluster, sink);
    for shard in shards {
        commands.serve(shard).await?;
    }
    Ok(commands)
}

/// Applies another node's command to `shard`: the answer's body.
async fn answer(sink: &dyn CommandSink, shard: u32, request: &Message) -> String {
    let Some(command) = read_command(request) else {
        metrics::counter!("gateway_cluster_errors_total", "what" => "command").increment(1);
        tracing::warn!(
            shard,
            "a command from another node refused: unreadable or over 4 KiB"
        );
        return "refused:-".to_owned();
    };
    match sink.apply(shard, command).await {
        Ok(outcome) => self::outcome(&outcome),
        // Refused by the sink (an invalid command, a shard this node no
        // longer runs): the client's node logs why.
        Err(error) => match error.kind() {
            shard_pool::ErrorKind::Remote { reason, .. } => format!("error:{reason}"),
            _ => "stopped".to_owned(),
        },
    }
}

/// A command from another node, if it reads and is within bounds.
fn read_command(request: &Message) -> Option<Command> {
    if request.payload.len() > MAX_COMMAND {
        return None;
    }
    let headers = request.headers.as_ref()?;
    let session = headers.get(COMMAND_SESSION)?.as_str();
    let route = parse_route(headers.get(COMMAND_ROUTE)?.as_str())?;
    let payload = String::from_utf8(request.payload.to_vec()).ok()?;
    Some(Command::new(payload, session, route))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fenced_off_owners_events_are_refused() {
        let event = |index: u64, term: u64| {
            let payload = Bytes::from_static(br#"{"op":0,"t":"X","s":1,"d":{}}"#);
            let audience = shard_pool::Audience::Everyone;
            let tapped = Tapped::new(0, index, Some(1), "s".into(), payload, audience, false);
            Logged::Event(tapped.with_term(term))
        };
        let index = |followed: Option<Followed>| match followed {
            Some(Followed::Event(event)) => Some(event.index),
            Some(Followed::Fenced(term)) => Some(1000 + term),
            _ => None,
        };
        let mut terms = Terms::default();
        assert_eq!(index(terms.take(0, event(1, 3), 0)), Some(1));
        // Held already: passed over.
        assert_eq!(index(terms.take(0, event(1, 3), 1)), None);
        // A new owner's mark, then the old owner's late event: refused.
        assert_eq!(index(terms.take(0, Logged::Fence(5), 1)), Some(1005));
        assert_eq!(index(terms.take(0, event(2, 3), 1)), None);
        assert_eq!(index(terms.take(0, event(2, 5), 1)), Some(2));
        // A reader that began after the mark learns the term from events.
        let mut late = Terms::default();
        assert_eq!(index(late.take(0, event(2, 5), 1)), Some(2));
        assert_eq!(index(late.take(0, event(3, 3), 1)), None);
    }

    #[test]
    fn routes_and_outcomes_read_back() {
        for r in [
            Route::Plain,
            Route::Chunks {
                nonce: "a:b".to_owned(),
            },
            Route::Voice {
                guild: 1,
                channel: Some(2),
            },
            Route::Voice {
                guild: 1,
                channel: None,
            },
            Route::Ended { leave: true },
            Route::Ended { leave: false },
        ] {
            assert_eq!(parse_route(&route(&r)), Some(r));
        }
        for o in [
            Outcome::Sent,
            Outcome::Rejoined,
            Outcome::Stopped,
            Outcome::OverBudget,
            Outcome::Refused {
                owner: "abc".into(),
            },
            Outcome::Ended(vec![]),
            Outcome::Ended(vec![1, 22]),
        ] {
            assert_eq!(parse_outcome(&outcome(&o)), Some(o));
        }
        for bad in ["voice:x:1", "voice:1", "ended:1,x", "other"] {
            assert!(parse_route(bad).is_none() || parse_outcome(bad).is_none());
        }
    }
}
