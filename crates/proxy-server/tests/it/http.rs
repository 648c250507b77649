//! The HTTP endpoints on the proxy's port.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Setup;

/// GET `path`: (status, body).
pub(super) async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn health_shard_count_ready_and_metrics() {
    let setup = Setup::new(
        |c| {
            c.shards = 2;
            c.events_per_sec = 100;
            // Heartbeats soon, so that latency is measured.
            c.heartbeat_interval = Duration::from_millis(300);
        },
        |_, _| {},
    )
    .await;
    let addr = setup.proxy.addr();
    assert_eq!(get(addr, "/health").await, (200, "ok".to_owned()));
    assert_eq!(get(addr, "/shard-count").await, (200, "2".to_owned()));
    let (status, body) = get(addr, "/ready").await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["shards"]["1"], "active");
    assert_eq!(get(addr, "/nope").await.0, 404);

    let (_client, _, _) = setup.identified(0, 2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, metrics) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "gateway_shard_events{",
        "gateway_shard_latency",
        "gateway_shard_status_bucket{shard=\"0\",le=\"4\"}",
        "gateway_shard_state{",
        "gateway_cache_users{",
        "gateway_cache_guilds{",
        "gateway_cache_members{",
        "gateway_clients{shard=\"0\"} 1",
        "gateway_sessions{",
        "gateway_bytes_out_total{compression=\"none\"}",
        "gateway_replayed_events_total",
    ] {
        assert!(metrics.contains(name), "{name} in\n{metrics}");
    }

    // A shard that stops makes /ready say so.
    assert_eq!(setup.sim.control(1, discord_sim::Control::Close(4004)), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = get(addr, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(r#""1":"fatally_closed:4004""#), "{body}");
    // And /health: a person must change something (here, the token).
    let (status, body) = get(addr, "/health").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("shard 1") && body.contains("4004") && body.contains("token"),
        "{body}"
    );
    // The metrics are brought up to date once a second.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, metrics) = get(addr, "/metrics").await;
    assert!(
        metrics.contains(r#"gateway_shard_fatal_close_code{shard="1"} 4004"#),
        "{metrics}"
    );
}
