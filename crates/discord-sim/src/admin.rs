//! Admin routes under `/_sim/`, so that a person or a test in another
//! language can drive a running sim (the binary) the way Rust tests drive
//! [`Sim`](crate::Sim). They are for loopback test rigs and have no
//! authentication.
//!
//! | route | does |
//! | --- | --- |
//! | `GET /_sim/guilds` | the ground truth: every guild with its shard and counts |
//! | `GET /_sim/connections` | every recent connection: query, shard, session, what it sent, what it was sent |
//! | `POST /_sim/shards/{n}/reconnect` | op 7 to shard `n` |
//! | `POST /_sim/shards/{n}/invalid-session?resumable=true\|false` | op 9 |
//! | `POST /_sim/shards/{n}/heartbeat` | op 1 from the server |
//! | `POST /_sim/shards/{n}/close?code=N` | close with `N` |
//! | `POST /_sim/shards/{n}/cut` | drop the TCP connections |
//! | `POST /_sim/shards/{n}/emit?t=NAME` | the body (a JSON object) as a dispatch |
//! | `POST /_sim/pause` | stop the stream; `last_markers`: each shard's last marker, nothing numbered after it generated while paused |
//! | `POST /_sim/resume` | restart the stream |

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::{Control, Shared, World};

pub(crate) async fn route(
    shared: &Arc<Shared>,
    request: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().trim_end_matches('/').to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let parts: Vec<&str> = path.trim_start_matches("/_sim/").split('/').collect();
    match (request.method().clone(), parts.as_slice()) {
        (Method::GET, ["guilds"]) => ok(&guilds(shared)),
        (Method::GET, ["connections"]) => ok(&Value::Array(
            shared.connection_logs().iter().map(connection).collect(),
        )),
        (Method::POST, ["pause"]) => {
            let last = shared.pause();
            ok(&json!({"paused": true, "last_markers": last}))
        }
        (Method::POST, ["resume"]) => {
            shared.paused.store(false, Ordering::Relaxed);
            ok(&json!({"paused": false}))
        }
        (Method::POST, ["shards", index, action]) => {
            let Ok(shard_id) = index.parse::<u32>() else {
                return error(StatusCode::BAD_REQUEST, "the shard must be a number");
            };
            let command = match *action {
                "reconnect" => Control::Reconnect,
                "heartbeat" => Control::RequestHeartbeat,
                "cut" => Control::Cut,
                "invalid-session" => {
                    Control::InvalidSession(param("resumable").as_deref() == Some("true"))
                }
                "close" => match param("code").and_then(|c| c.parse().ok()) {
                    Some(code) => Control::Close(code),
                    None => return error(StatusCode::BAD_REQUEST, "close needs ?code=N"),
                },
                "emit" => {
                    let Some(t) = param("t") else {
                        return error(StatusCode::BAD_REQUEST, "emit needs ?t=EVENT_NAME");
                    };
                    let Ok(body) = Limited::new(request.into_body(), 1 << 20).collect().await
                    else {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "the body must be a JSON object under 1 MiB",
                        );
                    };
                    let body = String::from_utf8_lossy(&body.to_bytes()).into_owned();
                    return match shared.emit(shard_id, &t, &body) {
                        Some(n) => ok(&json!({"n": n})),
                        None => error(
                            StatusCode::BAD_REQUEST,
                            "no such shard, or the body is not a JSON object",
                        ),
                    };
                }
                _ => return error(StatusCode::NOT_FOUND, "unknown action"),
            };
            ok(&json!({"connections": shared.control(shard_id, command)}))
        }
        _ => error(StatusCode::NOT_FOUND, "unknown admin route"),
    }
}

fn guilds(shared: &Shared) -> Value {
    let shards = shared.config.shards.max(1);
    Value::Array(
        crate::lock(&shared.world)
            .guilds
            .iter()
            .map(|g| {
                json!({
                    "id": g.id.to_string(),
                    "shard": World::shard_of(g.id, shards),
                    "name": g.name,
                    "unavailable": g.unavailable,
                    "member_count": g.member_count(),
                    "channels": g.channels.len(),
                    "roles": g.roles.len(),
                    "emojis": g.emojis.len(),
                    "threads": g.threads.len(),
                    "voice_states": g.voice_states.len(),
                    "presences": g.presences.len(),
                })
            })
            .collect(),
    )
}

fn connection(log: &crate::ConnectionLog) -> Value {
    json!({
        "id": log.id,
        "query": log.query,
        "shard": log.shard,
        "session_id": log.session_id,
        "open": log.open,
        "close_code": log.close_code,
        "received": log.received,
        "sent_total": log.sent_total,
        "sent": log.sent.iter().map(|s| json!({"op": s.op, "t": s.t, "s": s.s, "bytes": s.bytes})).collect::<Vec<_>>(),
    })
}

fn ok(body: &Value) -> Response<Full<Bytes>> {
    respond(StatusCode::OK, body)
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    respond(status, &json!({"message": message}))
}

fn respond(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
