//! `gateway-proxy --simulate`, as the README's first command runs it: a
//! bot identifies through the proxy and gets READY and its guilds from the
//! simulated Discord, and its checkpoints stay in a directory of its own.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used)]

use discord_sim::GatewayClient;
use gateway_proxy::{Options, start};

#[tokio::test]
async fn simulate_serves_a_bot_with_no_config_at_all() {
    let options = Options::parse(["--simulate".to_owned()]).unwrap().unwrap();
    // Any free port, and no config file: the demo needs nothing else.
    let env = vec![("GATEWAY_PROXY_PORT".to_owned(), "0".to_owned())];
    let running = start(&options, env).await.unwrap();
    let sim = running.sim().unwrap();
    let shards = sim.config().shards;
    let (mut client, hello) =
        GatewayClient::connect(running.addr(), "v=10&encoding=json&compress=zstd-stream")
            .await
            .unwrap();
    assert_eq!(hello["op"], 10);
    client
        .identify(running.token(), [1, shards], 513)
        .await
        .unwrap();
    let ready = client.dispatch("READY").await.unwrap();
    let guilds = ready["d"]["guilds"].as_array().unwrap().len();
    assert_eq!(guilds, sim.world().guilds_of(1, shards).count());
    for _ in 0..guilds {
        assert_eq!(client.payload().await.unwrap()["t"], "GUILD_CREATE");
    }
    // The simulated sessions end with the process: its checkpoints go to
    // a directory of its own, which no later run resumes from, removed at
    // shutdown.
    let own = std::env::temp_dir().join(format!("gateway-proxy-simulate-{}", std::process::id()));
    let done = running.proxy().pool().checkpoint().await;
    assert_eq!(done.written, shards as usize, "{done:?}");
    for blob in ["manifest", "shard-0", "sessions-1"] {
        assert!(own.join(blob).is_file(), "{blob} in {}", own.display());
    }
    running.shutdown().await;
    assert!(!own.exists(), "{} removed", own.display());
}

#[test]
fn the_command_line_is_read_or_refused_with_usage() {
    let parse = |args: &[&str]| Options::parse(args.iter().map(|a| (*a).to_owned()));
    let options = parse(&["--config", "/etc/proxy.json"]).unwrap().unwrap();
    assert_eq!(
        options.config.as_deref(),
        Some(std::path::Path::new("/etc/proxy.json"))
    );
    assert!(!options.simulate);
    assert_eq!(parse(&["--help"]).unwrap(), None);
    assert!(
        parse(&["--config"])
            .unwrap_err()
            .contains("--config needs a path")
    );
    assert!(
        parse(&["--verbose"])
            .unwrap_err()
            .contains("unknown argument `--verbose`")
    );
}

#[tokio::test]
async fn a_bad_config_is_exit_code_64_naming_the_key() {
    let options = Options::parse(["--simulate".to_owned()]).unwrap().unwrap();
    let env = vec![("GATEWAY_PROXY_PORT".to_owned(), "http".to_owned())];
    let error = start(&options, env).await.unwrap_err();
    assert_eq!(error.code, 64);
    assert!(error.message.contains("GATEWAY_PROXY_PORT"), "{error}");
}

/// The environment that points the proxy at `sim`, on a free port.
fn env_for(sim: &discord_sim::Sim, intents: u64) -> Vec<(String, String)> {
    [
        ("TOKEN", sim.token().to_owned()),
        ("GATEWAY_PROXY_API_BASE", sim.api_base()),
        ("GATEWAY_PROXY_INTENTS", intents.to_string()),
        ("GATEWAY_PROXY_PORT", "0".to_owned()),
        ("GATEWAY_PROXY_BIND", "127.0.0.1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn fast_sim() -> discord_sim::SimConfig {
    let mut config = discord_sim::SimConfig::default();
    config.identify_interval = std::time::Duration::from_millis(100);
    config
}

#[tokio::test]
async fn a_token_discord_refuses_at_start_up_is_exit_code_78_naming_it() {
    let sim = discord_sim::Sim::start(fast_sim()).await.unwrap();
    sim.refuse_identify(Some(4004));
    let options = Options::parse([]).unwrap().unwrap();
    let error = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        start(&options, env_for(&sim, 513)),
    )
    .await
    .expect("start-up ends instead of waiting forever")
    .unwrap_err();
    assert_eq!(error.code, gateway_proxy::EXIT_REFUSED);
    assert!(
        error.message.contains("4004") && error.message.contains("token"),
        "{error}"
    );
    assert!(!error.message.contains('\n'), "one line: {error}");
}

#[tokio::test]
async fn a_running_proxy_never_shows_its_token() {
    let sim = discord_sim::Sim::start(fast_sim()).await.unwrap();
    let options = Options::parse([]).unwrap().unwrap();
    let running = start(&options, env_for(&sim, 513)).await.unwrap();
    let shown = format!("{running:?}");
    assert!(!shown.contains(sim.token()), "{shown}");
    assert!(shown.contains("redacted"), "{shown}");
}
