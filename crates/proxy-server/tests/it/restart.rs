//! The proxy's own restart: with checkpoints, a shutdown closes clients
//! with 4000 and a new proxy on the same store serves their RESUMEs with
//! everything they missed, while upstream was resumed, not identified.
//! If Discord refuses that RESUME, the clients are told to identify again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use discord_sim::{KNOWN_INTENTS, Sim};
use proxy_server::{Proxy, ServerConfig};
use shard_pool::{DirStore, Flags, Pool, PoolConfig, Store};

use super::sessions::{resumed, until_close};
use super::{Setup, assert_contiguous, marked};

/// A directory of its own, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "proxy-server-restart-{test}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }

    fn store(&self) -> Arc<dyn Store> {
        Arc::new(DirStore::open(&self.0).unwrap())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A pool on `sim` keeping checkpoints in `scratch`, and a proxy on it.
async fn checkpointed(sim: &Sim, scratch: &Scratch, interval: Duration) -> Proxy {
    let mut pool = PoolConfig::new(sim.token(), KNOWN_INTENTS);
    pool.api_base = Some(sim.api_base());
    pool.identify_window = sim.config().identify_interval;
    pool.cache = Flags::ALL;
    pool.store = Some(scratch.store());
    let pool = Pool::start(pool).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), pool.ready())
        .await
        .unwrap()
        .unwrap();
    let mut server = ServerConfig::new(([127, 0, 0, 1], 0).into(), sim.token());
    server.checkpoint_interval = interval;
    Proxy::start(server, pool).await.unwrap()
}

/// A proxy with checkpoints on `sim` serves a client 30 marked events,
/// then shuts down: the client is closed with 4000 (resumable). The sim,
/// the client's session, the `s` it read last and what it read.
async fn served_then_stopped(sim: Sim, scratch: &Scratch) -> (Sim, String, u64, Vec<(u64, u64)>) {
    let setup = Setup {
        proxy: checkpointed(&sim, scratch, Duration::ZERO).await,
        sim,
    };
    let (mut client, ready, creates) = setup.identified(0, 1).await;
    let session = ready["d"]["session_id"].as_str().unwrap().to_owned();
    let mut seen = marked(&mut client, 1 + creates.len() as u64, 30).await;
    let mut last = seen.last().unwrap().0;
    let Setup { sim, proxy } = setup;
    let stopping = tokio::spawn(proxy.shutdown());
    let code = until_close(&mut client, &mut last, &mut seen).await;
    assert_eq!(code, Some(4000), "a close clients resume after");
    stopping.await.unwrap();
    (sim, session, last, seen)
}

#[tokio::test]
async fn a_client_resumes_across_a_proxy_restart_with_nothing_lost() {
    let scratch = Scratch::new("graceful");
    let sim = Setup::sim(|c| c.events_per_sec = 300).await;
    let (sim, session, last, mut seen) = served_then_stopped(sim, &scratch).await;
    let upstream = sim.connections();
    assert!(upstream.iter().all(|c| !c.open), "upstream closed");
    assert!(
        upstream.iter().all(|c| c.close_code != Some(1000)),
        "resumably: {:?}",
        upstream.iter().map(|c| c.close_code).collect::<Vec<_>>()
    );
    // Events go on upstream while no proxy runs.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let setup = Setup {
        proxy: checkpointed(&sim, &scratch, Duration::from_secs(1)).await,
        sim,
    };
    assert_eq!(
        setup.sim.identifies(),
        1,
        "upstream was not identified again"
    );
    assert_eq!(setup.sim.resumes(), 1, "but RESUMEd");
    let before = seen.len();
    let (mut client, s) = resumed(&setup, &session, last, &mut seen).await;
    assert!(
        seen.len() > before,
        "what the sim sent meanwhile was replayed"
    );
    seen.extend(marked(&mut client, s, 50).await);
    assert_contiguous(&seen);
    // /metrics says how the shard started and how old its checkpoint is.
    let mut tries = 0;
    let metrics = loop {
        tries += 1;
        let (_, metrics) = super::http::get(setup.proxy.addr(), "/metrics").await;
        assert!(tries < 50, "{metrics}");
        if metrics.contains("gateway_checkpoint_age_seconds") {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for line in [
        r#"gateway_shard_restored{shard="0"} 1"#,
        r#"gateway_shards_started{how="resumed"} 1"#,
        r#"gateway_shards_started{how="identified"} 0"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn a_client_that_was_gone_before_the_restart_resumes_after_it() {
    let scratch = Scratch::new("detached");
    let sim = Setup::sim(|c| c.events_per_sec = 300).await;
    let setup = Setup {
        proxy: checkpointed(&sim, &scratch, Duration::ZERO).await,
        sim,
    };
    let (mut client, ready, creates) = setup.identified(0, 1).await;
    let session = ready["d"]["session_id"].as_str().unwrap().to_owned();
    let mut seen = marked(&mut client, 1 + creates.len() as u64, 30).await;
    let last = seen.last().unwrap().0;
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let Setup { sim, proxy } = setup;
    proxy.shutdown().await;
    let setup = Setup {
        proxy: checkpointed(&sim, &scratch, Duration::ZERO).await,
        sim,
    };
    let (mut client, s) = resumed(&setup, &session, last, &mut seen).await;
    seen.extend(marked(&mut client, s, 50).await);
    assert_contiguous(&seen);
}

#[tokio::test]
async fn a_client_is_told_to_identify_when_discord_refuses_the_new_proxys_resume() {
    let scratch = Scratch::new("refused");
    // Discord forgets a session 200 ms after its connection is gone.
    let sim = Setup::sim(|c| {
        c.events_per_sec = 300;
        c.session_ttl = Duration::from_millis(200);
    })
    .await;
    let (sim, session, last, _) = served_then_stopped(sim, &scratch).await;
    // The next proxy starts after Discord has forgotten the session.
    tokio::time::sleep(Duration::from_millis(800)).await;

    let setup = Setup {
        proxy: checkpointed(&sim, &scratch, Duration::ZERO).await,
        sim,
    };
    assert_eq!(setup.sim.resumes_refused(), 1, "Discord refused the RESUME");
    assert_eq!(setup.sim.identifies(), 2, "so the shard identified");
    // The client RESUMEs as after any restart, and is told to identify:
    // the events of the session it had are gone upstream.
    let mut client = setup.client("v=10&encoding=json").await;
    client
        .resume(setup.sim.token(), &session, last)
        .await
        .unwrap();
    let nine = client.payload().await.unwrap();
    assert_eq!(nine["op"], 9, "{nine}");
    assert_eq!(nine["d"], false, "{nine}");
}
