//! What a node says of a NATS server it cannot use.

use cluster::{Cluster, ClusterConfig, testing};

#[tokio::test]
async fn a_server_without_jetstream_is_refused_at_connect_with_the_reason() {
    let Some(nats) = testing::nats_without_jetstream("no-js") else {
        return;
    };
    let error = Cluster::connect(ClusterConfig::new(nats.url(), "bot", "a"))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains(&nats.url()), "{error}");
    assert!(error.contains("does not have JetStream on"), "{error}");
}
