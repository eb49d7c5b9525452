//! Expired keys are removed from storage in the background, through Raft.

use std::time::Duration;

use ringkv_client::PutOptions;
use ringkv_tests::{eventually, InProcCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_keys_are_deleted_on_every_replica() {
    let c = InProcCluster::start(3).await;
    let client = c.client(1);
    for i in 0..10 {
        client
            .put_with(format!("t{i}"), "v", PutOptions { ttl: Some(Duration::from_millis(300)), if_version: None })
            .await
            .expect("put");
    }
    client.put("stays", "v").await.expect("put");
    for (id, node) in &c.nodes {
        let mut keys = Vec::new();
        for g in node.groups().into_iter().filter(|g| g.id != ringkv::cluster::META_GROUP) {
            let sm = g.sm.clone();
            eventually(&format!("node {id} to drop expired keys of group {} from storage", g.id), || {
                let sm = sm.clone();
                // u64::MAX: list every key that carries a TTL at all, expired or not.
                async move { sm.expired(u64::MAX, 100).await.ok().filter(|v| v.is_empty()) }
            })
            .await;
            let left = sm.scan(Vec::new(), 100, 0).await.expect("raw scan");
            keys.extend(left.iter().map(|(k, _)| String::from_utf8_lossy(k).into_owned()));
        }
        assert_eq!(keys, vec!["stays".to_string()], "node {id}");
    }
    c.shutdown().await;
}
