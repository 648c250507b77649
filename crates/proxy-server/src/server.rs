//! The listener: HTTP endpoints and websocket upgrades on one port.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use shard_pool::{FollowedStatus, Pool, ShardState};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::ServerConfig;
use crate::connection;
use crate::context::{Context, RESTART, SHUTDOWN};
use crate::limits::{Permit, Refused};
use crate::metrics;

/// A running proxy: the client side over a shard pool. Dropping it stops
/// it.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    ctx: Arc<Context>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Proxy {
    /// Listens on `config.bind` and serves clients from `pool`.
    ///
    /// # Errors
    ///
    /// If the address cannot be bound.
    pub async fn start(config: ServerConfig, pool: Pool) -> io::Result<Self> {
        let listener = listener(config.bind, false)?;
        Self::start_on(listener, config, pool).await
    }

    /// Serves clients from `pool` on `listener` (see [`listener`]), which
    /// was bound before: connections that came meanwhile wait in its
    /// backlog and are served now. `config.bind` is not used.
    ///
    /// # Errors
    ///
    /// If the listener cannot be used by the async runtime.
    pub async fn start_on(
        listener: std::net::TcpListener,
        config: ServerConfig,
        pool: Pool,
    ) -> io::Result<Self> {
        Self::start_recording(listener, config, pool, Arc::new(recorder()?)).await
    }

    /// [`start_on`](Self::start_on), recording into `recorder` (see
    /// [`recorder`]): `/metrics` shows what it holds, so metrics other
    /// parts of the process record there (installed as the global
    /// recorder) show too. The pool may be shared (a cluster node's
    /// placement runs and hands over its shards meanwhile).
    ///
    /// # Errors
    ///
    /// As [`start_on`](Self::start_on).
    pub async fn start_recording(
        listener: std::net::TcpListener,
        mut config: ServerConfig,
        pool: impl Into<Arc<Pool>>,
        recorder: Arc<PrometheusRecorder>,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        if config.externally_accessible_url.is_empty() {
            let mut public = addr;
            if public.ip().is_unspecified() {
                public.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            config.externally_accessible_url = format!("ws://{public}");
        }
        let ctx = Arc::new(Context::new(config, pool.into()));
        ctx.kept.restore(&ctx.sessions, &ctx.pool).await;
        let handle = recorder.handle();
        let mut tasks = vec![
            tokio::spawn(accept(listener, ctx.clone(), handle.clone())),
            tokio::spawn(upkeep(ctx.clone(), recorder)),
        ];
        if ctx.pool.keeps_checkpoints() && !ctx.config.checkpoint_interval.is_zero() {
            tasks.push(tokio::spawn(checkpoints(ctx.clone())));
        }
        tracing::info!(%addr, "listening for clients");
        Ok(Self { addr, ctx, tasks })
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shuts down. Without checkpoints: stops accepting, closes every
    /// client with 1001 (going away), then ends every upstream session
    /// normally. With them: stops accepting, stops taking upstream events
    /// in, closes every client with 4000 (they resume against the next
    /// process), writes every shard's checkpoint with its client sessions,
    /// then closes upstream so that Discord keeps the sessions for the
    /// next process to RESUME.
    pub async fn shutdown(self) {
        if let Some(accept) = self.tasks.first() {
            accept.abort();
        }
        if !self.ctx.pool.keeps_checkpoints() {
            self.ctx.shutdown.send_replace(Some(SHUTDOWN));
            // Let the connections write their close frames.
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.ctx.pool.shutdown().await;
            return;
        }
        // A periodic checkpoint under way ends first; none starts after.
        let _last = self.ctx.checkpointing.lock().await;
        self.ctx.pool.freeze();
        self.ctx.shutdown.send_replace(Some(RESTART));
        // Each connection saves its session as it closes.
        let deadline = Instant::now() + SESSIONS_SAVED;
        while self.ctx.sessions.attached() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let started = Instant::now();
        let done = write_checkpoints(&self.ctx).await;
        tracing::info!(
            written = done.written,
            skipped = done.skipped,
            failed = done.failed,
            ms = started.elapsed().as_millis(),
            "checkpoints written; closing upstream resumably"
        );
        self.ctx.pool.shutdown_resumable().await;
    }

    /// Closes every client connection with 4000, which clients answer by
    /// reconnecting and resuming: nothing is lost. For moving clients to
    /// another address, and for tests of client libraries.
    pub fn disconnect_clients(&self) {
        self.ctx.disconnect.send_modify(|n| *n += 1);
    }

    /// The shard pool it serves from.
    #[must_use]
    pub fn pool(&self) -> &Pool {
        &self.ctx.pool
    }

    /// What applies the commands of other nodes' clients to this node's
    /// shards (a cluster's command server calls it): budgeted with this
    /// node's own clients' (over budget: [`Outcome::OverBudget`], and the
    /// client's node closes it with 4008), an op 4 decided by the guild's
    /// voice owner (one this node does not know is taken to be connected).
    ///
    /// [`Outcome::OverBudget`]: shard_pool::Outcome::OverBudget
    #[must_use]
    pub fn command_sink(&self) -> Arc<dyn shard_pool::CommandSink> {
        Arc::new(crate::handover::Sink(self.ctx.clone()))
    }
}

/// A listener on `addr` for [`Proxy::start_on`]. With `shared`, another
/// process of the same user may listen on the same address at the same
/// time (`SO_REUSEPORT`), and the kernel gives new connections to either:
/// a process that restarts the proxy binds before the old one stops, so
/// that no client's reconnect is ever refused (discord.py, for one,
/// identifies again when its RESUME's connection is refused).
///
/// # Errors
///
/// If the address cannot be bound.
pub fn listener(addr: SocketAddr, shared: bool) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    if shared {
        socket.set_reuse_port(true)?;
    }
    #[cfg(not(unix))]
    let _ = shared;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// How long a shutdown waits for connections to save their sessions
/// before it writes the checkpoints without the stragglers' last events.
const SESSIONS_SAVED: Duration = Duration::from_secs(2);

/// Every shard's checkpoint, then its client sessions beside it (and in a
/// cluster, the records of the sessions served here).
async fn write_checkpoints(ctx: &Context) -> shard_pool::Checkpointed {
    let done = ctx.pool.checkpoint().await;
    ctx.kept.keep_all(&ctx.sessions, &ctx.pool).await;
    // In a cluster, the sessions served here, for any node to take should
    // this one die.
    crate::handover::record_served(ctx).await;
    done
}

/// Every `checkpoint_interval`: every shard's checkpoint, so that a crash
/// costs what came after the last one (Discord replays it on RESUME).
async fn checkpoints(ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(ctx.config.checkpoint_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let _one = ctx.checkpointing.lock().await;
        // Shut down meanwhile: its checkpoints were the last (in a
        // cluster the shards may be another node's by now).
        if ctx.shutdown.borrow().is_some() {
            return;
        }
        let started = Instant::now();
        let done = write_checkpoints(&ctx).await;
        tracing::debug!(
            written = done.written,
            skipped = done.skipped,
            failed = done.failed,
            ms = started.elapsed().as_millis(),
            "checkpoints written"
        );
    }
}

/// Every second: expired sessions go, and the metrics are brought up to
/// date from the pool and the sessions.
async fn upkeep(ctx: Arc<Context>, recorder: Arc<PrometheusRecorder>) {
    let handle = recorder.handle();
    ::metrics::with_local_recorder(&*recorder, metrics::describe);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let (expired, handed) = ctx.sessions.sweep(ctx.config.session_ttl, Instant::now());
        for (id, shard) in expired {
            ctx.session_ended(&id, shard);
        }
        for (id, shard) in handed {
            crate::handover::expired(&ctx, id, shard);
        }
        ::metrics::with_local_recorder(&*recorder, || metrics::record(&ctx));
        handle.run_upkeep();
    }
}

/// A recorder for [`Proxy::start_recording`]: Prometheus, with the
/// buckets of the proxy's histograms.
///
/// # Errors
///
/// Never in practice (the buckets are not empty).
pub fn recorder() -> io::Result<PrometheusRecorder> {
    Ok(PrometheusBuilder::new()
        .set_buckets(metrics::LATENCY_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("gateway_shard_status".to_owned()),
                metrics::STATUS_BUCKETS,
            )
        })
        .map_err(io::Error::other)?
        .build_recorder())
}

/// The longest pause after a failed `accept`.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

async fn accept(listener: TcpListener, ctx: Arc<Context>, metrics: PrometheusHandle) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = Duration::from_millis(10);
                accepted
            }
            Err(error) => {
                // Out of file descriptors, most likely: retrying at once
                // would spin. Connections that end free some.
                tracing::warn!(%error, pause_ms = backoff.as_millis(), "accept failed; pausing");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF);
                continue;
            }
        };
        let permit = match ctx.admission.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(refused) => {
                ctx.counters.refused[refused as usize]
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(%peer, ?refused, "connection refused");
                tokio::spawn(refuse(tcp, refused, ctx.config.limits.write_timeout));
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let _ = socket2::SockRef::from(&tcp)
            .set_send_buffer_size(ctx.config.limits.socket_send_buffer_bytes);
        let ctx = ctx.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let permit = Arc::new(permit);
            let header_timeout = ctx.config.limits.http_header_timeout;
            let service = service_fn(move |request| {
                route(request, ctx.clone(), metrics.clone(), permit.clone())
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await;
        });
    }
}

/// Answers a connection over a limit with 503 and closes it, without
/// reading its request.
async fn refuse(mut tcp: TcpStream, refused: Refused, timeout: Duration) {
    let body = match refused {
        Refused::Total => "too many connections (limits.max_connections)\n",
        Refused::PerIp => {
            "too many connections from this address (limits.max_connections_per_ip)\n"
        }
    };
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 5\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(timeout, async {
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[allow(
    clippy::unused_async,
    reason = "hyper's service_fn takes a function that returns a future"
)]
async fn route(
    mut request: Request<Incoming>,
    ctx: Arc<Context>,
    metrics: PrometheusHandle,
    permit: Arc<Permit>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if fastwebsockets::upgrade::is_upgrade_request(&request) {
        let query = request.uri().query().unwrap_or("").to_owned();
        return Ok(match fastwebsockets::upgrade::upgrade(&mut request) {
            Ok((response, upgrade)) => {
                tokio::spawn(async move {
                    // The connection's place is held until its websocket ends.
                    let _permit = permit;
                    if let Ok(ws) = upgrade.await {
                        connection::serve(ws, query, ctx).await;
                    }
                });
                let (parts, _) = response.into_parts();
                Response::from_parts(parts, Full::new(Bytes::new()))
            }
            Err(error) => text(
                StatusCode::BAD_REQUEST,
                "text/plain",
                format!("bad websocket upgrade: {error}"),
            ),
        });
    }
    Ok(match request.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        "/shard-count" => text(StatusCode::OK, "text/plain", ctx.pool.total().to_string()),
        "/health" => health(&ctx.pool),
        "/ready" => ready(&ctx.pool, ctx.config.node.as_deref()),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found"),
    })
}

/// 200 `ok` while the proxy can do its job; 503 with the reason once any
/// shard is closed by Discord for good (a wrong token, disallowed
/// intents…): restarting will not help, a person must change something.
fn health(pool: &Pool) -> Response<Full<Bytes>> {
    let fatal: Vec<String> = pool
        .shards()
        .iter()
        .filter_map(|shard| Some(shard.fatal_error(shard.fatal_close()?).to_string()))
        .collect();
    if fatal.is_empty() {
        return text(StatusCode::OK, "text/plain", "ok");
    }
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        "text/plain",
        fatal.join("\n") + "\n",
    )
}

/// 200 when every shard this node runs is active, else 503; with each
/// shard's state (and the close code of a shard closed for good), those
/// of other nodes this node follows (`following`) included, and for each
/// followed shard what the source knows of it (see [`followed`]).
fn ready(pool: &Pool, node: Option<&str>) -> Response<Full<Bytes>> {
    let states: Vec<(u32, ShardState, Option<u16>)> = pool
        .shards()
        .iter()
        .map(|shard| (shard.id(), shard.state(), shard.fatal_close()))
        .collect();
    let all_active = states
        .iter()
        .all(|(_, state, _)| *state == ShardState::Active);
    let followed = pool.followed();
    let lags = if followed.is_empty() {
        String::new()
    } else {
        let members: Vec<String> = followed
            .iter()
            .map(|shard| self::followed(shard.id(), pool.following(shard.id())))
            .collect();
        format!(r#","followed":{{{}}}"#, members.join(","))
    };
    let followed = followed
        .iter()
        .map(|shard| (shard.id(), shard.state(), shard.fatal_close()));
    let body = states.into_iter().chain(followed).collect::<Vec<_>>();
    let body = body
        .iter()
        .map(|(id, state, fatal)| match fatal {
            Some(code) => format!(r#""{id}":"{}:{code}""#, state.name()),
            None => format!(r#""{id}":"{}""#, state.name()),
        })
        .collect::<Vec<_>>()
        .join(",");
    // A node name is checked to be `[A-Za-z0-9_.-]` (cluster.node_id).
    let node = node
        .map(|node| format!(r#""node":"{node}","#))
        .unwrap_or_default();
    let body = format!(r#"{{"ready":{all_active},{node}"shards":{{{body}}}{lags}}}"#);
    let code = if all_active {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(code, "application/json", body)
}

/// `/ready`'s `followed` member of shard `id`, from what the pool's
/// source knows of it ([`Pool::following`]): how far behind its log the
/// reading is (`lag_messages`, `lag_seconds`) and the node that runs it
/// (`owner`). What it does not know yet (a follower that has not read a
/// message) is left out.
fn followed(id: u32, status: Option<FollowedStatus>) -> String {
    let status = status.unwrap_or_default();
    let mut fields = Vec::new();
    if let Some(events) = status.lag_events {
        fields.push(format!(r#""lag_messages":{events}"#));
    }
    if let Some(lag) = status.lag {
        fields.push(format!(r#""lag_seconds":{:.3}"#, lag.as_secs_f64()));
    }
    if let Some(owner) = status.owner {
        let owner = sonic_rs::to_string(&*owner).unwrap_or_default();
        fields.push(format!(r#""owner":{owner}"#));
    }
    format!(r#""{id}":{{{}}}"#, fields.join(","))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn ready_says_what_the_source_knows_of_a_followed_shard() {
        let mut status = FollowedStatus::default();
        status.owner = Some("c.1".into());
        status.lag_events = Some(3);
        status.lag = Some(Duration::from_millis(250));
        let mut lag_only = FollowedStatus::default();
        lag_only.lag_events = Some(0);
        let json = format!(
            "{{{},{},{}}}",
            followed(0, Some(status)),
            followed(2, Some(lag_only)),
            followed(5, None)
        );
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "0": {"lag_messages": 3, "lag_seconds": 0.25, "owner": "c.1"},
                "2": {"lag_messages": 0},
                "5": {},
            })
        );
    }
}
