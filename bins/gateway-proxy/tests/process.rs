//! The binary as a supervisor runs it: its exit codes and what it does on
//! SIGTERM, before and after it serves.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use discord_sim::{KNOWN_INTENTS, Sim, SimConfig};
use tokio::process::Command;

fn proxy(sim: &Sim, intents: u64) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gateway-proxy"));
    // Only what is set here: not the test's own environment (CI sets
    // GATEWAY_PROXY_* variables for the harness).
    command
        .env_clear()
        .env("TOKEN", sim.token())
        .env("GATEWAY_PROXY_API_BASE", sim.api_base())
        .env("GATEWAY_PROXY_INTENTS", intents.to_string())
        .env("GATEWAY_PROXY_PORT", "0")
        .env("GATEWAY_PROXY_BIND", "127.0.0.1")
        .env("GATEWAY_PROXY_LOG_LEVEL", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn disallowed_intents_at_start_up_exit_78_with_one_line_naming_them() {
    let mut config = SimConfig::default();
    // The application may use no privileged intent; the proxy asks for all.
    config.privileged_intents = 0;
    let sim = Sim::start(config).await.unwrap();
    let output = tokio::time::timeout(Duration::from_mins(1), proxy(&sim, KNOWN_INTENTS).output())
        .await
        .expect("the process exits instead of waiting forever")
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    for needed in [
        "4014",
        "Server Members Intent",
        "Presence Intent",
        "Message Content Intent",
    ] {
        assert!(lines[0].contains(needed), "{needed} in {stderr}");
    }
}

#[cfg(unix)]
#[tokio::test]
async fn sigterm_during_start_up_closes_the_upstream_sessions_it_opened() {
    let mut config = SimConfig::default();
    config.shards = 2;
    // Shard 1 waits a long identify window behind shard 0.
    config.identify_interval = Duration::from_mins(1);
    config.events_per_sec = 10;
    let sim = Sim::start(config).await.unwrap();
    let mut child = proxy(&sim, 513)
        .env("GATEWAY_PROXY_LOG_LEVEL", "info")
        .spawn()
        .unwrap();
    // One shard identified; the other waits its turn: the proxy is
    // starting.
    let first = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(shard) = sim.connections().iter().find_map(|c| c.shard) {
                return shard;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("it stops promptly")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let identified = sim
        .connections()
        .into_iter()
        .find(|c| c.shard == Some(first))
        .unwrap();
    assert!(!identified.open);
    assert_eq!(
        identified.close_code,
        Some(1000),
        "a normal close ends the session at Discord"
    );
}

#[tokio::test]
async fn intents_without_voice_states_are_warned_about_at_start() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let sim = Sim::start(SimConfig::default()).await.unwrap();
    for (intents, warned) in [(513, true), (KNOWN_INTENTS, false)] {
        let mut child = proxy(&sim, intents)
            .env("GATEWAY_PROXY_LOG_LEVEL", "warn")
            .env("NO_COLOR", "1")
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let seen = tokio::time::timeout(Duration::from_secs(30), async {
            let mut seen = false;
            while let Ok(Some(line)) = lines.next_line().await {
                seen |= line.contains("intents lack GUILD_VOICE_STATES (128)");
                if line.starts_with("gateway-proxy is serving") {
                    break;
                }
            }
            seen
        })
        .await
        .expect("it serves");
        assert_eq!(seen, warned, "intents {intents}");
        child.kill().await.unwrap();
    }
}
