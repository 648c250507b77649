//! Checkpoints in JetStream: blobs round-trip whole, a damaged one reads as
//! corrupt, and a pool restarted on the store RESUMEs every shard.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cluster::testing::nats;
use discord_sim::{KNOWN_INTENTS, Sim, SimConfig};
use shard_pool::{Pool, PoolConfig, Store, StoreErrorKind};

use super::node;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_round_trip_whole_and_are_shared_by_nodes() {
    let Some(nats) = nats("store_blobs") else {
        return;
    };
    let a = node(&nats, "blobs", "a").await.store().await.unwrap();
    let b = node(&nats, "blobs", "b").await.store().await.unwrap();
    assert_eq!(a.get("manifest").await.unwrap(), None, "never put");
    // Several chunks, and a length that is not a multiple of one.
    let big: Bytes = (0..3_000_001_u32).map(|i| (i % 251) as u8).collect();
    a.put("shard-0", big.clone()).await.unwrap();
    a.put("manifest", Bytes::from_static(b"one")).await.unwrap();
    assert_eq!(
        b.get("shard-0").await.unwrap(),
        Some(big),
        "another node reads it"
    );
    b.put("manifest", Bytes::from_static(b"two")).await.unwrap();
    assert_eq!(
        a.get("manifest").await.unwrap().as_deref(),
        Some(&b"two"[..]),
        "replaced whole"
    );
    a.put("empty", Bytes::new()).await.unwrap();
    assert_eq!(a.get("empty").await.unwrap(), Some(Bytes::new()));
    a.delete("manifest").await.unwrap();
    a.delete("manifest").await.unwrap();
    assert_eq!(b.get("manifest").await.unwrap(), None, "deleted");
    let error = a.put("../x", Bytes::new()).await.unwrap_err();
    assert!(matches!(error.kind(), StoreErrorKind::Name), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_with_a_chunk_that_does_not_match_its_digest_is_corrupt() {
    let Some(nats) = nats("store_corrupt") else {
        return;
    };
    let cluster = node(&nats, "corrupt", "a").await;
    let store = cluster.store().await.unwrap();
    store
        .put("shard-3", Bytes::from_static(b"a checkpoint"))
        .await
        .unwrap();
    // A stray chunk on the blob's chunk subject, as a damaged stream
    // would hold.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let objects = jetstream
        .get_object_store("corrupt-checkpoints")
        .await
        .unwrap();
    let nuid = objects.info("shard-3").await.unwrap().nuid;
    jetstream
        .publish(
            format!("$O.corrupt-checkpoints.C.{nuid}"),
            Bytes::from_static(b"garbage"),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let error = store.get("shard-3").await.unwrap_err();
    assert!(
        matches!(error.kind(), StoreErrorKind::Corrupt(_)),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_whose_chunks_are_gone_is_an_error_not_a_hang() {
    let Some(nats) = nats("store_gone") else {
        return;
    };
    let cluster = node(&nats, "gone", "a").await;
    let store = cluster.store().await.unwrap();
    store
        .put("shard-1", Bytes::from(vec![7_u8; 3 << 20]))
        .await
        .unwrap();
    // Its chunks purged, as a writer replacing it purges the old ones
    // while another node still reads them.
    let jetstream = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let objects = jetstream
        .get_object_store("gone-checkpoints")
        .await
        .unwrap();
    let nuid = objects.info("shard-1").await.unwrap().nuid;
    let stream = jetstream.get_stream("OBJ_gone-checkpoints").await.unwrap();
    stream
        .purge()
        .filter(format!("$O.gone-checkpoints.C.{nuid}"))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let error = tokio::time::timeout(Duration::from_secs(20), store.get("shard-1"))
        .await
        .expect("not a hang")
        .unwrap_err();
    assert!(
        matches!(error.kind(), StoreErrorKind::Io(e) if e.kind() == std::io::ErrorKind::TimedOut),
        "{error}"
    );
    // Three reads, each given up after 2 s without a chunk.
    assert!(
        started.elapsed() >= Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_restarted_on_the_jetstream_store_resumes_every_shard() {
    let Some(nats) = nats("store_pool") else {
        return;
    };
    let mut sim_config = SimConfig::default();
    sim_config.shards = 2;
    sim_config.identify_interval = Duration::from_millis(200);
    sim_config.events_per_sec = 100;
    let sim = Sim::start(sim_config).await.unwrap();
    let config = || async {
        let mut config = PoolConfig::new(sim.token(), KNOWN_INTENTS);
        config.api_base = Some(sim.api_base());
        config.identify_window = sim.config().identify_interval;
        let store: Arc<dyn Store> = Arc::new(node(&nats, "pool", "a").await.store().await.unwrap());
        config.store = Some(store);
        config
    };
    let pool = Pool::start(config().await).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), pool.ready())
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    pool.freeze();
    let heads: Vec<u64> = pool
        .shards()
        .iter()
        .map(shard_pool::ShardHandle::head)
        .collect();
    let done = pool.checkpoint().await;
    assert_eq!((done.written, done.failed), (2, 0));
    pool.shutdown_resumable().await;
    drop(pool);
    assert_eq!(sim.identifies(), 2);

    let again = Pool::start(config().await).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), again.ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sim.identifies(), 2, "no IDENTIFY");
    assert_eq!(sim.resumes(), 2, "a RESUME per shard");
    for (shard, head) in again.shards().iter().zip(heads) {
        assert!(shard.status().restored);
        assert!(
            shard.head() >= head,
            "numbering goes on from the checkpoint"
        );
    }
}
