//! `/metrics` as Prometheus itself reads it: `promtool check metrics`.
//!
//! Without `promtool` on `PATH` the test says so and passes, unless
//! `GATEWAY_PROXY_REQUIRE_PROMTOOL=1` (CI sets it; Debian's `prometheus`
//! package ships `promtool`).

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::Setup;
use super::http::get;

/// Lint problems `promtool check metrics` reports that we accept, as
/// (metric, problem).
///
/// promtool exits with 3 when the exposition parsed and only lint problems
/// were found, and with 1 when the text does not parse. Newer promtool can
/// turn lint off (`check metrics --lint=none`), but Debian bookworm's 2.42,
/// which CI installs, has no such flag, so the test tells validity from lint
/// by the exit code (the same on both): any failure other than 3 fails, and
/// so does any lint problem not accepted here, so that a new metric with a
/// bad name is caught.
const KEPT: &[(&str, &str)] = &[
    // The original gateway-proxy's names, kept so that its dashboards work.
    (
        "gateway_shard_events",
        r#"counter metrics should have "_total" suffix"#,
    ),
    (
        "gateway_shard_latency_histogram",
        "metric name should not include type 'histogram'",
    ),
];

/// Whether a line of promtool's output is a lint problem we accept.
fn accepted(line: &str) -> bool {
    let Some((metric, problem)) = line.split_once(' ') else {
        return false;
    };
    KEPT.contains(&(metric, problem))
}

/// Whether `promtool` runs.
fn have_promtool() -> bool {
    Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// `promtool check metrics` with `body` on stdin: (exit code, stderr).
fn check_metrics(body: String) -> (Option<i32>, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(body.as_bytes()));
    let output = child.wait_with_output().unwrap();
    let mut stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // promtool may stop reading early (a parse error); its stderr says why.
    if let Err(e) = writer.join().unwrap() {
        stderr = format!("{stderr}\n(writing /metrics to promtool: {e})");
    }
    (output.status.code(), stderr)
}

#[tokio::test]
async fn metrics_pass_promtool_check_metrics() {
    if !have_promtool() {
        let required = std::env::var("GATEWAY_PROXY_REQUIRE_PROMTOOL").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "GATEWAY_PROXY_REQUIRE_PROMTOOL=1 but promtool is not on PATH \
             (Debian: apt-get install prometheus)"
        );
        eprintln!(
            "note: promtool is not on PATH; /metrics not checked (Debian: apt-get install prometheus)"
        );
        return;
    }
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
    // A client, so that the client and byte metrics have values.
    let (_client, _, _) = setup.identified(0, 2).await;
    // The metrics are recorded once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = get(setup.proxy.addr(), "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("gateway_shard_events{"), "{body}");

    let (code, stderr) = tokio::task::spawn_blocking(move || check_metrics(body))
        .await
        .unwrap();
    match code {
        Some(0) => {}
        Some(3) => {
            let unexpected: Vec<&str> = stderr
                .lines()
                .filter(|line| !line.trim().is_empty() && !accepted(line))
                .collect();
            assert!(
                unexpected.is_empty(),
                "promtool check metrics: lint problems not known to be kept:\n{}",
                unexpected.join("\n")
            );
        }
        _ => {
            panic!("promtool check metrics: the exposition is not valid (exit {code:?}):\n{stderr}")
        }
    }
}
