//! Every limit and malformed request gets the right gRPC code, and the node
//! keeps serving afterwards.

use ringkv_client::proto::{self, kv_client::KvClient};
use ringkv_client::{Error, PutOptions};
use ringkv_tests::ProcCluster;
use tonic::Code;

#[tokio::test]
async fn limits_and_malformed_requests_are_rejected_cleanly() {
    let c = ProcCluster::start(1, &[]).await;
    let client = c.client();

    let empty = client.put("", "v").await;
    assert!(matches!(&empty, Err(Error::InvalidArgument(m)) if m.contains("empty")), "{empty:?}");

    let long_key = "k".repeat(4097);
    let r = client.put(long_key.clone(), "v").await;
    assert!(matches!(&r, Err(Error::InvalidArgument(m)) if m.contains("4096")), "{r:?}");
    let r = client.get(long_key).await;
    assert!(matches!(&r, Err(Error::InvalidArgument(m)) if m.contains("4096")), "{r:?}");
    client.put("k".repeat(4096), "v").await.expect("a key of exactly 4 KiB is fine");

    let big = vec![0u8; 1024 * 1024 + 1];
    let r = client.put("big", big).await;
    assert!(matches!(&r, Err(Error::InvalidArgument(m)) if m.contains("1048576")), "{r:?}");
    client.put("big", vec![0u8; 1024 * 1024]).await.expect("a value of exactly 1 MiB is fine");

    let r = client.delete("").await;
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");

    let r = client.delete_if("missing", Some(7)).await;
    assert!(matches!(r, Err(Error::VersionMismatch(_))), "{r:?}");

    // Raw gRPC: an unknown consistency value.
    let mut raw = KvClient::connect(format!("http://{}", c.nodes[&1].grpc)).await.expect("connect");
    let status = raw
        .get(proto::GetRequest { key: "k".into(), consistency: 42 })
        .await
        .expect_err("unknown consistency must fail");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = raw
        .scan(proto::ScanRequest { prefix: vec![b'p'; 5000].into(), limit: 1, ..Default::default() })
        .await
        .expect_err("over-long prefix must fail");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Garbage bytes as a message body: the client's fault, so INVALID_ARGUMENT
    // (tonic says INTERNAL; the edge layer corrects it, docs/security.md).
    let body = tonic::codegen::Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    let status = raw_call(&c.nodes[&1].grpc, "/ringkv.v1.Kv/Put", body).await;
    assert_eq!(status, Code::InvalidArgument);

    // The node is still serving.
    let v = client.put_with("after", "bad input", PutOptions::default()).await.expect("put after bad input");
    assert_eq!(client.get("after").await.expect("get").expect("found").version, v);
}

/// Sends raw bytes as a gRPC message and returns the status code.
async fn raw_call(addr: &str, path: &'static str, body: tonic::codegen::Bytes) -> Code {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    ringkv_tests::raw_grpc_call(ch, path, body).await
}
