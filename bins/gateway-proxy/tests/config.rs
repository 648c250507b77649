//! `config.json` loading: layering, errors that name file and key, the
//! mapping to the pool's and the server's configurations, and
//! `docs/configuration.md` kept in step with the binary.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gateway_proxy::config::{CacheConfig, Config, ConfigError, EXIT_CONFIG, load};
use shard_pool::Flags;

/// A JSON file under the temp directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "gateway-proxy-config-{}-{n}-{name}.json",
            std::process::id()
        ));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load_json(name: &str, json: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let file = TempFile::new(name, json);
    load(Some(file.path()), env(pairs))
}

fn load_err(name: &str, json: &str, pairs: &[(&str, &str)]) -> (String, String) {
    let file = TempFile::new(name, json);
    let error = load(Some(file.path()), env(pairs)).unwrap_err();
    (error.to_string(), file.path().display().to_string())
}

const MINIMAL: &str = r#"{"token": "file-token", "intents": 513}"#;

#[test]
fn exit_code_is_ex_usage() {
    assert_eq!(EXIT_CONFIG, 64);
}

#[test]
fn defaults() {
    let config = load_json("defaults", MINIMAL, &[]).unwrap();
    assert_eq!(config.log_level, "info");
    assert_eq!(config.token, "file-token");
    assert_eq!(config.intents, 513);
    assert_eq!(config.port, 7878);
    assert_eq!(config.activity, None);
    assert_eq!(config.status, "online");
    assert_eq!(config.backpressure, 100);
    assert_eq!(config.externally_accessible_url, "ws://127.0.0.1:7878");
    assert!(config.validate_token);
    assert_eq!(config.shards, None);
    assert_eq!(config.shard_start, 0);
    assert_eq!(config.shard_end, None);
    assert_eq!(config.twilight_http_proxy, None);
    assert_eq!(config.cache, CacheConfig::from(Flags::default()));
    assert_eq!(Flags::from(config.cache), Flags::default());
    assert_eq!(config.gateway_url, None);
    assert_eq!(config.api_base, None);
    assert_eq!(config.bind, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert_eq!(config.session_ttl_secs, 300);
    assert_eq!(config.replay_max_events, 1_048_576);
    assert_eq!(config.replay_max_bytes, 268_435_456);
    assert_eq!(config.replay_shard_max_bytes, None);
    assert_eq!(config.large_threshold, 250);
}

#[test]
fn a_missing_default_file_is_fine() {
    // Relies on the working directory (the package's) having no
    // config.json, as in the repository.
    if Path::new("config.json").exists() {
        return;
    }
    let config = load(
        None,
        env(&[("TOKEN", "env-token"), ("GATEWAY_PROXY_INTENTS", "1")]),
    )
    .unwrap();
    assert_eq!(config.token, "env-token");
    assert_eq!(config.intents, 1);
    assert_eq!(config.port, 7878);

    let error = load(None, env(&[("TOKEN", "env-token")])).unwrap_err();
    assert_eq!(
        error.to_string(),
        "config.json (not found): missing key \"intents\": expected the gateway intents \
         bitfield, e.g. 513 (or set GATEWAY_PROXY_INTENTS)"
    );
}

#[test]
fn the_file_overrides_defaults() {
    let config = load_json(
        "overrides",
        r#"{"token": "t", "intents": 1, "port": 9000, "status": "dnd",
            "cache": {"members": true}, "externally_accessible_url": "ws://example:1"}"#,
        &[],
    )
    .unwrap();
    assert_eq!(config.port, 9000);
    assert_eq!(config.status, "dnd");
    assert_eq!(config.externally_accessible_url, "ws://example:1");
    assert!(config.cache.members);
    // The other switches keep their defaults.
    assert!(config.cache.channels);
    assert!(!config.cache.presences);
}

#[test]
fn the_default_resume_url_follows_the_port() {
    let config = load_json(
        "resume-url",
        r#"{"token": "t", "intents": 1, "port": 9000}"#,
        &[],
    )
    .unwrap();
    assert_eq!(config.externally_accessible_url, "ws://127.0.0.1:9000");
}

#[test]
fn the_environment_overrides_the_file() {
    let json = r#"{"token": "from-file", "intents": 1, "port": 9000,
                   "cache": {"presences": true, "members": true}}"#;
    let config = load_json(
        "env",
        json,
        &[
            ("TOKEN", "from-env"),
            ("GATEWAY_PROXY_CACHE__MEMBERS", "false"),
            ("GATEWAY_PROXY_PORT", "9100"),
            ("GATEWAY_PROXY_SHARDS", "16"),
            ("GATEWAY_PROXY_ACTIVITY__TYPE", "0"),
            ("GATEWAY_PROXY_ACTIVITY__NAME", "1234"),
            ("UNRELATED", "whatever"),
        ],
    )
    .unwrap();
    assert_eq!(config.token, "from-env");
    assert_eq!(config.port, 9100);
    assert_eq!(config.shards, Some(16));
    assert!(!config.cache.members);
    assert!(config.cache.presences);
    assert!(config.cache.channels);
    let activity = config.activity.unwrap();
    assert_eq!((activity.kind, activity.name.as_str()), (0, "1234"));

    // GATEWAY_PROXY_TOKEN wins over TOKEN, whatever the order.
    let config = load_json(
        "env-token",
        json,
        &[("GATEWAY_PROXY_TOKEN", "prefixed"), ("TOKEN", "plain")],
    )
    .unwrap();
    assert_eq!(config.token, "prefixed");
}

#[test]
fn the_config_path_can_come_from_the_environment() {
    let file = TempFile::new("path-env", MINIMAL);
    let path = file.path().display().to_string();
    let config = load(None, env(&[("GATEWAY_PROXY_CONFIG", &path)])).unwrap();
    assert_eq!(config.token, "file-token");

    let missing = std::env::temp_dir().join("gateway-proxy-config-surely-missing.json");
    let missing = missing.display().to_string();
    let error = load(None, env(&[("GATEWAY_PROXY_CONFIG", &missing)])).unwrap_err();
    assert!(
        error.to_string().starts_with(&format!("{missing}: ")),
        "{error}"
    );
}

#[test]
fn an_explicit_missing_file_is_an_error_naming_it() {
    let path = std::env::temp_dir().join(format!(
        "gateway-proxy-config-{}-missing.json",
        std::process::id()
    ));
    let error = load(Some(&path), env(&[("TOKEN", "t")])).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}: the config file was given but does not exist",
            path.display()
        )
    );
    assert_eq!(error.origin(), Some(path.display().to_string().as_str()));
}

#[test]
fn unknown_keys_are_errors_naming_them() {
    let (error, path) = load_err(
        "unknown-top",
        r#"{"token": "t", "intents": 1, "cahce": {}}"#,
        &[],
    );
    assert!(
        error.starts_with(&format!(
            "{path}: unknown key \"cahce\" (expected one of \"log_level\", "
        )),
        "{error}"
    );
    assert!(error.contains("\"cache\""), "{error}");

    let (error, path) = load_err(
        "unknown-cache",
        r#"{"token": "t", "intents": 1, "cache": {"membrs": true}}"#,
        &[],
    );
    assert!(
        error.starts_with(&format!(
            "{path}: unknown key \"cache.membrs\" (expected one of "
        )),
        "{error}"
    );
    assert!(error.contains("\"members\""), "{error}");

    let (error, path) = load_err(
        "unknown-activity",
        r#"{"token": "t", "intents": 1, "activity": {"type": 0, "name": "x", "emoji": "y"}}"#,
        &[],
    );
    assert!(
        error.starts_with(&format!("{path}: unknown key \"activity.emoji\"")),
        "{error}"
    );

    let (error, _) = load_err(
        "unknown-env",
        MINIMAL,
        &[("GATEWAY_PROXY_CACHE__MEMBRS", "true")],
    );
    assert!(
        error.starts_with(
            "environment variable GATEWAY_PROXY_CACHE__MEMBRS: unknown key \"cache.membrs\""
        ),
        "{error}"
    );
}

#[test]
fn a_wrong_type_names_file_key_and_expectation() {
    let (error, path) = load_err(
        "wrong-type",
        r#"{"token": "t", "intents": 1, "cache": {"members": "yes"}}"#,
        &[],
    );
    assert_eq!(
        error,
        format!("{path}: key \"cache.members\": expected a boolean, found string \"yes\"")
    );

    let (error, path) = load_err(
        "wrong-port",
        r#"{"token": "t", "intents": 1, "port": 70000}"#,
        &[],
    );
    assert_eq!(
        error,
        format!("{path}: key \"port\": expected an integer from 0 to 65535, found integer 70000")
    );

    let (error, _) = load_err("wrong-env", MINIMAL, &[("GATEWAY_PROXY_PORT", "http")]);
    assert_eq!(
        error,
        "environment variable GATEWAY_PROXY_PORT: key \"port\": expected an integer from 0 to \
         65535, found string \"http\""
    );

    let (error, path) = load_err(
        "wrong-bind",
        r#"{"token": "t", "intents": 1, "bind": "localhost"}"#,
        &[],
    );
    assert_eq!(
        error,
        format!(
            "{path}: key \"bind\": expected an IP address such as 0.0.0.0 or ::, found string \
             \"localhost\""
        )
    );
}

#[test]
fn missing_and_malformed() {
    let (error, path) = load_err("no-intents", r#"{"token": "t"}"#, &[]);
    assert!(
        error.starts_with(&format!("{path}: missing key \"intents\"")),
        "{error}"
    );

    let (error, path) = load_err(
        "no-activity-name",
        r#"{"token": "t", "intents": 1, "activity": {"type": 0}}"#,
        &[],
    );
    assert_eq!(error, format!("{path}: missing key \"activity.name\""));

    let (error, path) = load_err("not-json", r#"{"token": "t", "intents": 1,}"#, &[]);
    assert!(error.starts_with(&format!("{path}: ")), "{error}");
    assert!(error.contains("line 1"), "{error}");
}

#[test]
fn client_compression_values_are_checked() {
    for (key, value, expected) in [
        ("zlib_level", "10", "expected 0 to 9, found 10"),
        ("zstd_level", "0", "expected 1 to 22, found 0"),
        (
            "zlib_shared_min_clients",
            "0",
            "expected at least 1, found 0",
        ),
    ] {
        let (error, path) = load_err(
            &format!("bad-{key}"),
            &format!(
                r#"{{"token": "t", "intents": 1, "client_compression": {{"{key}": {value}}}}}"#
            ),
            &[],
        );
        assert_eq!(
            error,
            format!("{path}: key \"client_compression.{key}\": {expected}")
        );
    }
}

#[test]
fn checkpoint_keys_are_mapped_and_checked() {
    let config = load_json(
        "checkpoints",
        r#"{"token": "t", "intents": 1, "state_dir": "/var/lib/gp",
            "checkpoint_interval_secs": 0, "checkpoint_max_age_secs": 45}"#,
        &[("GATEWAY_PROXY_CHECKPOINT_INTERVAL_SECS", "15")],
    )
    .unwrap();
    assert_eq!(config.state_dir.as_deref(), Some("/var/lib/gp"));
    assert_eq!(
        config.server_config().checkpoint_interval,
        Duration::from_secs(15),
        "the environment wins"
    );
    assert_eq!(
        config.pool_config().checkpoint_max_age,
        Duration::from_secs(45)
    );
    let defaults = load_json(
        "checkpoint-defaults",
        r#"{"token": "t", "intents": 1}"#,
        &[],
    )
    .unwrap();
    assert_eq!(defaults.state_dir, None, "off unless asked for");
    assert_eq!(defaults.checkpoint_interval_secs, 30);
    assert_eq!(defaults.checkpoint_max_age_secs, 120);
    assert!(
        defaults.server_config().voice_leave_on_owner_loss,
        "voice leaves by default"
    );
    let no_leave = load_json(
        "voice",
        r#"{"token": "t", "intents": 1, "voice": {"leave_on_owner_loss": false}}"#,
        &[],
    )
    .unwrap();
    assert!(!no_leave.server_config().voice_leave_on_owner_loss);
    for (json, expected) in [
        (
            r#""checkpoint_max_age_secs": 0"#,
            "key \"checkpoint_max_age_secs\": expected at least 1 second, found 0",
        ),
        (
            r#""state_dir": " ""#,
            "key \"state_dir\": expected a directory, found an empty string",
        ),
    ] {
        let (error, path) = load_err(
            "bad-checkpoint",
            &format!(r#"{{"token": "t", "intents": 1, {json}}}"#),
            &[],
        );
        assert!(error.starts_with(&format!("{path}: {expected}")), "{error}");
    }
}

#[test]
fn cluster_keys_are_off_by_default_mapped_and_checked() {
    let off = load_json("cluster-off", MINIMAL, &[]).unwrap();
    assert!(off.cluster_config().is_none(), "off unless nats_url");
    let config = load_json(
        "cluster",
        r#"{"token": "MTIzNDU2Nzg5MDEyMzQ1Njc4.x.y", "intents": 1,
            "cluster": {"nats_url": "nats://n:4222", "storage": "memory"}}"#,
        &[("GATEWAY_PROXY_CLUSTER__NODE_ID", "node-7")],
    )
    .unwrap();
    let cluster = config.cluster_config().unwrap();
    assert_eq!(cluster.nats_url, "nats://n:4222");
    assert_eq!(
        cluster.name, "gp-123456789012345678",
        "from the application id"
    );
    assert_eq!(cluster.node_id, "node-7", "the environment's");
    assert_eq!(cluster.storage, cluster::Storage::Memory);
    assert_eq!(cluster.replicas, 1);
    let host = load_json(
        "cluster-host",
        r#"{"token": "t", "intents": 1, "cluster": {"nats_url": "nats://n", "name": "bot"}}"#,
        &[],
    )
    .unwrap();
    assert!(
        !host.cluster_config().unwrap().node_id.is_empty(),
        "the host name"
    );
    for (json, expected) in [
        (
            r#""name": "a.b""#,
            "key \"cluster.name\": cluster.name \"a.b\": expected",
        ),
        (r#""node_id": "a b""#, "key \"cluster.node_id\""),
        (
            r#""storage": "disk""#,
            "key \"cluster.storage\": expected \"file\" or \"memory\"",
        ),
        (r#""replicas": 9"#, "key \"cluster.replicas\""),
        (
            r#""lease_secs": 1"#,
            "key \"cluster.lease_secs\": cluster.lease_secs 1: expected 2 to 300",
        ),
        (
            r#""stream_max_age_secs": 60"#,
            "key \"cluster.stream_max_age_secs\": expected at least session_ttl_secs + 60 (360)",
        ),
        // The session's whole ttl is not enough: a resume reads from a
        // minute before the connection dropped.
        (
            r#""stream_max_age_secs": 330"#,
            "key \"cluster.stream_max_age_secs\": expected at least session_ttl_secs + 60 (360)",
        ),
        (
            r#""stream_max_bytes": 1000"#,
            "key \"cluster.stream_max_bytes\": expected at least 1048576",
        ),
        (r#""nats_url": "", "name": "x""#, "key \"cluster.nats_url\""),
    ] {
        let with_url = if json.contains("nats_url") {
            json.to_owned()
        } else {
            format!(r#""nats_url": "nats://n", {json}"#)
        };
        let (error, path) = load_err(
            "bad-cluster",
            &format!(r#"{{"token": "t", "intents": 1, "cluster": {{{with_url}}}}}"#),
            &[],
        );
        assert!(error.starts_with(&format!("{path}: {expected}")), "{error}");
    }
}

#[test]
fn validation_errors_name_key_and_source() {
    let (error, path) = load_err(
        "bad-status",
        r#"{"token": "t", "intents": 1, "status": "busy"}"#,
        &[],
    );
    assert_eq!(
        error,
        format!(
            "{path}: key \"status\": expected one of \"online\", \"idle\", \"dnd\", \
             \"invisible\", \"offline\", found \"busy\""
        )
    );

    let (error, _) = load_err(
        "bad-status-env",
        MINIMAL,
        &[("GATEWAY_PROXY_STATUS", "away")],
    );
    assert!(
        error.starts_with("environment variable GATEWAY_PROXY_STATUS: key \"status\": "),
        "{error}"
    );

    let (error, path) = load_err(
        "bad-range",
        r#"{"token": "t", "intents": 1, "shard_start": 4, "shard_end": 4}"#,
        &[],
    );
    assert_eq!(
        error,
        format!(
            "{path}: key \"shard_end\": expected a shard after shard_start (4; shard_end is \
             exclusive; equal to it only for a node of a cluster that runs no shard), found 4"
        )
    );
    // A node of a cluster may run no shard: it serves the others'.
    let serving = load_json(
        "serving-only",
        r#"{"token": "t", "intents": 1, "shard_start": 0, "shard_end": 0,
            "cluster": {"nats_url": "nats://n"}}"#,
        &[],
    )
    .unwrap();
    assert_eq!(serving.pool_config().shard_end, Some(0));

    let (error, path) = load_err(
        "range-past-total",
        r#"{"token": "t", "intents": 1, "shards": 8, "shard_end": 9}"#,
        &[],
    );
    assert!(
        error.starts_with(&format!(
            "{path}: key \"shard_end\": expected at most shards (8"
        )),
        "{error}"
    );

    let (error, path) = load_err(
        "start-past-total",
        r#"{"token": "t", "intents": 1, "shards": 8, "shard_start": 8}"#,
        &[],
    );
    assert!(
        error.starts_with(&format!("{path}: key \"shard_start\": ")),
        "{error}"
    );

    let (error, path) = load_err(
        "large-threshold",
        r#"{"token": "t", "intents": 1, "large_threshold": 300}"#,
        &[],
    );
    assert_eq!(
        error,
        format!("{path}: key \"large_threshold\": expected an integer from 50 to 250, found 300")
    );

    let (error, path) = load_err(
        "activity-type",
        r#"{"token": "t", "intents": 1, "activity": {"type": 9, "name": "x"}}"#,
        &[],
    );
    assert!(
        error.starts_with(&format!("{path}: key \"activity.type\": ")),
        "{error}"
    );

    // No token anywhere: the error says where to put it.
    let file = TempFile::new("no-token", r#"{"intents": 1}"#);
    let error = load(Some(file.path()), env(&[])).unwrap_err();
    assert_eq!(error.key(), Some("token"));
    assert_eq!(error.origin(), None);
    assert!(
        error
            .to_string()
            .starts_with("key \"token\": expected the bot token"),
        "{error}"
    );
    assert!(error.to_string().contains("TOKEN"), "{error}");
}

#[test]
fn mapping_to_the_pool_and_the_server() {
    let config = load_json(
        "mapping",
        r#"{
            "token": "Bot abc", "intents": 33281, "port": 9000, "bind": "127.0.0.1",
            "activity": {"type": 3, "name": "shard {{shard}}"}, "status": "idle",
            "backpressure": 50, "validate_token": false, "shards": 4, "shard_start": 1,
            "shard_end": 3, "twilight_http_proxy": "127.0.0.1:3000",
            "cache": {"members": true, "roles": false, "soundboard_sounds": true},
            "gateway_url": "ws://127.0.0.1:9001", "api_base": "http://127.0.0.1:9002/api",
            "session_ttl_secs": 90, "replay_max_events": 100, "replay_max_bytes": 4096,
            "replay_shard_max_bytes": 2048,
            "large_threshold": 50
        }"#,
        &[],
    )
    .unwrap();

    let pool = config.pool_config();
    assert_eq!(pool.token.expose(), "abc", "the Bot prefix goes");
    assert_eq!(pool.intents, 33281);
    assert_eq!(pool.shards, Some(4));
    assert_eq!(pool.shard_start, 1);
    assert_eq!(pool.shard_end, Some(3));
    assert_eq!(pool.gateway_url.as_deref(), Some("ws://127.0.0.1:9001"));
    assert_eq!(pool.api_base.as_deref(), Some("http://127.0.0.1:9002/api"));
    assert_eq!(pool.twilight_http_proxy.as_deref(), Some("127.0.0.1:3000"));
    assert_eq!(pool.presence.status, "idle");
    let activity = pool.presence.activity.as_ref().unwrap();
    assert_eq!(activity.kind, 3);
    assert_eq!(activity.name, "shard {{shard}}");
    assert_eq!(activity.url, None);
    assert_eq!(pool.large_threshold, 50);
    assert!(pool.cache.members);
    assert!(!pool.cache.roles);
    assert!(pool.cache.soundboard_sounds);
    assert!(pool.cache.channels);
    assert!(!pool.cache.presences);

    let server = config.server_config();
    assert_eq!(
        server.bind,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9000)
    );
    assert_eq!(server.token.expose(), "abc");
    assert!(server.token.matches("abc") && server.token.matches("Bot abc"));
    assert!(!server.validate_token);
    assert_eq!(server.externally_accessible_url, "ws://127.0.0.1:9000");
    assert_eq!(server.backpressure, 50);
    assert_eq!(server.session_ttl, Duration::from_secs(90));
    assert_eq!(pool.replay_max_events, 100, "the ring lives in the pool");
    assert_eq!(pool.replay_max_bytes, 4096);
    assert_eq!(pool.replay_shard_max_bytes, Some(2048));
    assert_eq!(
        pool.replay_max_age,
        Duration::from_secs(90),
        "the ring keeps what a session may still resume for"
    );
    assert_eq!(server.heartbeat_interval, Duration::from_millis(41_250));
}

#[test]
fn the_token_stays_out_of_debug_output() {
    let config = load_json("debug", MINIMAL, &[]).unwrap();
    assert!(!format!("{config:?}").contains("file-token"));
}

#[test]
fn a_loaded_config_serializes_back_to_itself() {
    let config = load_json(
        "round-trip",
        r#"{"token": "t", "intents": 1, "activity": {"type": 1, "name": "n", "url": "u"},
            "shards": 2, "bind": "::1"}"#,
        &[],
    )
    .unwrap();
    let json = serde_json::to_string(&config).unwrap();
    assert_eq!(load_json("round-trip-2", &json, &[]).unwrap(), config);
}

/// The first JSON code block of `docs/configuration.md`, and the keys in the
/// first column of its table.
fn docs() -> (String, Vec<String>) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
    let text = std::fs::read_to_string(path).unwrap();
    let start = text.find("```json\n").unwrap() + "```json\n".len();
    let end = start + text[start..].find("```").unwrap();
    let example = text[start..end].to_owned();
    let keys = text
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .map(|rest| rest[..rest.find('`').unwrap()].to_owned())
        .collect();
    (example, keys)
}

/// Every dotted key path in `value` (objects and their leaves).
fn key_paths(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
    if let serde_json::Value::Object(map) = value {
        for (key, value) in map {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            key_paths(&path, value, out);
            out.push(path);
        }
    }
}

#[test]
fn docs_example_and_table_match_the_binary() {
    let (example, table) = docs();
    assert!(table.len() > 30, "the table lists every key: {table:?}");

    // The example, which has every original key, is accepted (unknown
    // keys would be errors) and means what it says.
    let config = load_json("docs-example", &example, &[]).unwrap();
    assert_eq!(config.intents, 513);
    assert_eq!(config.shard_end, Some(8));
    assert_eq!(config.externally_accessible_url, "ws://proxy.internal:7878");
    let pool = config.pool_config();
    assert_eq!(
        pool.presence.activity.as_ref().unwrap().name,
        "shard {{shard}}"
    );

    // Every key in the table is in the example, so the binary accepts it.
    let example: serde_json::Value = serde_json::from_str(&example).unwrap();
    let mut in_example = Vec::new();
    key_paths("", &example, &mut in_example);
    for key in &table {
        assert!(
            in_example.contains(key),
            "docs/configuration.md lists {key:?}, missing from its example"
        );
    }
    // And every key the binary knows is in the table.
    let mut known = Vec::new();
    key_paths("", &serde_json::to_value(&config).unwrap(), &mut known);
    for key in &known {
        assert!(
            table.contains(key),
            "{key:?} is missing from the docs' table"
        );
    }
    for key in &in_example {
        assert!(
            table.contains(key),
            "the example's {key:?} is missing from the table"
        );
    }
}

#[test]
fn limits_come_from_the_file_and_the_environment_and_are_checked() {
    let config = load_json(
        "limits",
        r#"{"token": "t", "intents": 1, "limits": {"max_connections": 50, "identify_timeout_secs": 30}}"#,
        &[("GATEWAY_PROXY_LIMITS__MAX_CONNECTIONS_PER_IP", "7")],
    )
    .unwrap();
    let limits = config.server_config().limits;
    assert_eq!(limits.max_connections, 50);
    assert_eq!(limits.max_connections_per_ip, 7);
    assert_eq!(limits.identify_timeout, Duration::from_secs(30));
    assert_eq!(
        limits.max_message_bytes, 4096,
        "a bound left out keeps its default"
    );

    let (error, path) = load_err(
        "small-message",
        r#"{"token": "t", "intents": 1, "limits": {"max_message_bytes": 100}}"#,
        &[],
    );
    assert_eq!(
        error,
        format!(
            "{path}: key \"limits.max_message_bytes\": expected at least 4096 bytes, found 100"
        )
    );
    let (error, _) = load_err(
        "budget",
        MINIMAL,
        &[("GATEWAY_PROXY_LIMITS__SHARD_COMMANDS_PER_MINUTE", "200")],
    );
    assert!(
        error.contains("limits.shard_commands_per_minute") && error.contains("at most 118"),
        "{error}"
    );
    let (error, _) = load_err(
        "unknown-limit",
        r#"{"token": "t", "intents": 1, "limits": {"max_conections": 1}}"#,
        &[],
    );
    assert!(error.contains("max_conections"), "{error}");
}

/// The `config.json` of the Kubernetes example (deploy/kubernetes): the
/// block under `config.json: |` in its `ConfigMap`, unindented.
fn kubernetes_config() -> String {
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes/gateway-proxy.yaml"),
    )
    .unwrap();
    let mut lines = manifest
        .lines()
        .skip_while(|l| !l.ends_with("config.json: |"));
    let header = lines.next().unwrap();
    let indent = header.len() - header.trim_start().len() + 2;
    lines
        .take_while(|l| l.is_empty() || l.len() > indent && l[..indent].trim().is_empty())
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_kubernetes_example_configures_a_cluster_node() {
    let json = kubernetes_config();
    let config = load_json(
        "kubernetes",
        &json,
        &[
            ("TOKEN", "MTIzNDU2Nzg5MDEyMzQ1Njc4.x.y"),
            ("GATEWAY_PROXY_CLUSTER__NODE_ID", "gateway-proxy-0"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}\n{json}"));
    let cluster = config.cluster_config().expect("a cluster");
    assert_eq!(cluster.nats_url, "nats://nats:4222");
    assert_eq!(cluster.node_id, "gateway-proxy-0");
    assert_eq!(cluster.replicas, 3);
    assert_eq!(config.externally_accessible_url, "ws://gateway-proxy:7878");
}
