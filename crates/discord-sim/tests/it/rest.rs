//! The REST routes.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::sim;
use discord_sim::GatewayClient as Client;

/// `GET path` with an optional token: status, content type and body.
async fn get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> (u16, String, Value) {
    request(addr, "GET", path, token, "").await
}

/// One HTTP request: status, content type and JSON body.
pub(crate) async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String, Value) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(token) = token {
        request = request.header("authorization", format!("Bot {token}"));
    }
    let response = sender
        .send_request(
            request
                .body(Full::new(Bytes::from(body.to_owned())))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, content_type, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn gateway_bot_counts_identifies_down() {
    let sim = sim(|c| {
        c.shards = 3;
        c.max_concurrency = 2;
    })
    .await;
    let (status, content_type, body) =
        get(sim.addr(), "/api/v10/gateway/bot", Some(sim.token())).await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    assert_eq!(body["url"], sim.gateway_url());
    assert_eq!(body["shards"], 3);
    let limit = &body["session_start_limit"];
    assert_eq!(
        (limit["total"].clone(), limit["remaining"].clone()),
        (Value::from(1000), Value::from(1000))
    );
    assert_eq!(limit["max_concurrency"], 2);
    assert!(limit["reset_after"].is_u64());

    let (mut client, _) = Client::connect(sim.addr(), "v=10&encoding=json")
        .await
        .unwrap();
    client.identify(sim.token(), [0, 3], 1).await.unwrap();
    client.dispatch("READY").await.unwrap();
    let (_, _, body) = get(sim.addr(), "/api/v10/gateway/bot", Some(sim.token())).await;
    assert_eq!(body["session_start_limit"]["remaining"], 999);

    // A proxy in front: REST names it instead.
    sim.advertise_gateway("ws://127.0.0.1:7878");
    let (_, _, body) = get(sim.addr(), "/api/v10/gateway/bot", Some(sim.token())).await;
    assert_eq!(body["url"], "ws://127.0.0.1:7878");
    let (_, _, body) = get(sim.addr(), "/api/v10/gateway", None).await;
    assert_eq!(body["url"], "ws://127.0.0.1:7878");
}

#[tokio::test]
async fn every_route_wants_the_token_but_gateway() {
    let sim = sim(|_| {}).await;
    for path in [
        "/api/v10/gateway/bot",
        "/api/v10/users/@me",
        "/api/v10/oauth2/applications/@me",
        "/api/v10/applications/@me",
    ] {
        let (status, content_type, body) = get(sim.addr(), path, None).await;
        assert_eq!(
            (status, content_type.as_str()),
            (401, "application/json"),
            "{path}"
        );
        assert_eq!(body["code"], 0);
        let (status, _, _) = get(sim.addr(), path, Some("wrong")).await;
        assert_eq!(status, 401, "{path}");
        let (status, _, _) = get(sim.addr(), path, Some(sim.token())).await;
        assert_eq!(status, 200, "{path}");
    }
    let (status, _, body) = get(sim.addr(), "/api/v10/gateway", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["url"], sim.gateway_url());
    let (status, _, _) = get(sim.addr(), "/api/v10/nope", Some(sim.token())).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn users_and_applications_are_the_bot() {
    let sim = sim(|_| {}).await;
    let (_, _, user) = get(sim.addr(), "/api/v10/users/@me", Some(sim.token())).await;
    assert_eq!(user["id"], sim.world().bot.id.to_string());
    assert_eq!(user["bot"], true);
    let (_, _, app) = get(
        sim.addr(),
        "/api/v10/oauth2/applications/@me",
        Some(sim.token()),
    )
    .await;
    assert_eq!(app["id"], sim.world().application_id.to_string());
    assert_eq!(app["owner"]["id"], sim.world().owner.id.to_string());
}
