//! The REST routes clients call at start-up.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, header};

use crate::Shared;

/// Answers one REST request.
pub(crate) fn route<B>(shared: &Arc<Shared>, request: &Request<B>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let Some(route) = path
        .strip_prefix("/api/v10")
        .or_else(|| path.strip_prefix("/api"))
    else {
        return json(
            StatusCode::NOT_FOUND,
            r#"{"message":"404: Not Found","code":0}"#.to_owned(),
        );
    };
    let route = route.trim_end_matches('/');
    if route == "/gateway" {
        return json(
            StatusCode::OK,
            format!(r#"{{"url":"{}"}}"#, shared.advertised_gateway()),
        );
    }
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bot "))
        .is_some_and(|token| token == shared.config.token);
    if !authorized {
        return json(
            StatusCode::UNAUTHORIZED,
            r#"{"message":"401: Unauthorized","code":0}"#.to_owned(),
        );
    }
    let world = crate::lock(&shared.world);
    match route {
        "/gateway/bot" => {
            let (remaining, reset_after) = shared.identify_state();
            json(
                StatusCode::OK,
                format!(
                    r#"{{"url":"{}","shards":{},"session_start_limit":{{"total":{},"remaining":{},"reset_after":{},"max_concurrency":{}}}}}"#,
                    shared.advertised_gateway(),
                    shared.config.shards,
                    shared.config.session_start_total,
                    remaining,
                    reset_after.as_millis(),
                    shared.config.max_concurrency,
                ),
            )
        }
        "/users/@me" => {
            let mut body = String::new();
            let bot = &world.bot;
            let _ = write!(body, r#"{{"id":"{}","username":"#, bot.id);
            crate::world::json_str(&mut body, &bot.username);
            body.push_str(r#","discriminator":"0","global_name":null,"avatar":null,"bot":true,"flags":0,"mfa_enabled":false,"verified":true,"email":null}"#);
            json(StatusCode::OK, body)
        }
        "/oauth2/applications/@me" | "/applications/@me" => {
            let mut body = format!(
                r#"{{"id":"{}","name":"sim application","icon":null,"description":"","bot_public":true,"bot_require_code_grant":false,"verify_key":"{}","flags":565248,"owner":{{"id":"{}","username":"#,
                world.application_id,
                "0".repeat(64),
                world.owner.id
            );
            crate::world::json_str(&mut body, &world.owner.username);
            body.push_str(r#","discriminator":"0","avatar":null},"team":null}"#);
            json(StatusCode::OK, body)
        }
        _ => json(
            StatusCode::NOT_FOUND,
            r#"{"message":"404: Not Found","code":0}"#.to_owned(),
        ),
    }
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
