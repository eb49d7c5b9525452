//! Hardened input handling (issue 8, docs/security.md "Hardening"):
//! malformed and oversized requests get `INVALID_ARGUMENT` or
//! `RESOURCE_EXHAUSTED` and the node keeps serving; connections beyond the
//! per-IP cap are refused while admitted ones keep working; a request
//! without a deadline against a cluster that lost its quorum returns instead
//! of hanging.

use std::time::Duration;

use ringkv_client::proto::{self, cluster_client::ClusterClient, hooks_client::HooksClient, kv_client::KvClient};
use ringkv_tests::{eventually, ProcCluster};
use tonic::codegen::Bytes;
use tonic::transport::Channel;
use tonic::Code;

/// Sends `body` as the raw message of the gRPC method `path`; returns the status code.
async fn raw_call(addr: &str, path: &'static str, body: Vec<u8>) -> Code {
    ringkv_tests::raw_grpc_call(channel(addr).await.expect("connect"), path, Bytes::from(body)).await
}

async fn channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
}

fn hook(name: &str, stage: i32, source: Vec<u8>) -> proto::HookDefinition {
    proto::HookDefinition {
        name: name.into(),
        kind: proto::HookKind::Lua as i32,
        stage,
        prefix: Bytes::new(),
        source: source.into(),
        fail_open: false,
        timeout_ms: 0,
    }
}

/// The status code of a reply.
fn code<T>(r: Result<T, tonic::Status>) -> Code {
    r.map(|_| Code::Ok).unwrap_or_else(|s| s.code())
}

/// Asserts the node still serves a normal write and read.
async fn still_serving(c: &ProcCluster, key: &str) {
    let client = c.client();
    let version = client.put(key.to_string(), "fine").await.expect("put after bad input");
    let got = client.get(key.to_string()).await.expect("get after bad input").expect("found");
    assert_eq!((got.value.as_ref(), got.version), (b"fine".as_ref(), version));
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_client_error_codes_and_the_node_keeps_serving() {
    let c = ProcCluster::start(1, &["--scan-default", "5", "--scan-max", "5", "--max-scan-bytes", "64KiB"]).await;
    let addr = c.nodes[&1].grpc.clone();

    // Bytes that are no protobuf message at all, on every client service.
    let garbage = vec![0xff, 0xff, 0xff, 0xff, 0x0f];
    for path in ["/ringkv.v1.Kv/Put", "/ringkv.v1.Kv/Get", "/ringkv.v1.Kv/Scan", "/ringkv.v1.Hooks/Deploy"] {
        assert_eq!(raw_call(&addr, path, garbage.clone()).await, Code::InvalidArgument, "garbage to {path}");
    }
    // A truncated message: field 1 (key) claims 100 bytes and carries 3.
    assert_eq!(raw_call(&addr, "/ringkv.v1.Kv/Put", vec![0x0a, 100, b'a', b'b', b'c']).await, Code::InvalidArgument);
    // Invalid UTF-8 in a string field (GetHookRequest.name).
    assert_eq!(raw_call(&addr, "/ringkv.v1.Hooks/Get", vec![0x0a, 0x02, 0xff, 0xfe]).await, Code::InvalidArgument);
    still_serving(&c, "after-garbage").await;

    let mut kv = KvClient::new(channel(&addr).await.expect("connect"));
    let mut hooks = HooksClient::new(channel(&addr).await.expect("connect"));
    let mut cluster = ClusterClient::new(channel(&addr).await.expect("connect"));

    // Empty and oversized keys, oversized values.
    let put = |key: Vec<u8>, value: Vec<u8>| proto::PutRequest {
        key: key.into(),
        value: value.into(),
        ttl_ms: None,
        if_version: None,
    };
    assert_eq!(code(kv.put(put(Vec::new(), b"v".to_vec())).await), Code::InvalidArgument, "empty key");
    assert_eq!(code(kv.put(put(vec![b'k'; 4097], b"v".to_vec())).await), Code::InvalidArgument, "key > 4 KiB");
    let get = proto::GetRequest { key: Bytes::new(), consistency: 0 };
    assert_eq!(code(kv.get(get).await), Code::InvalidArgument, "empty key on get");
    let just_over = vec![0u8; 1024 * 1024 + 1];
    assert_eq!(code(kv.put(put(b"big".to_vec(), just_over)).await), Code::InvalidArgument, "value > 1 MiB");
    // Past the message cap tonic refuses the body before the service sees it.
    let huge = vec![0u8; 3 * 1024 * 1024];
    assert_eq!(code(kv.put(put(b"big".to_vec(), huge.clone())).await), Code::ResourceExhausted, "3 MiB put");
    let add = proto::AddNodeRequest { id: 9, addr: "x".repeat(100 * 1024), ..Default::default() };
    assert_eq!(code(cluster.add_node(add).await), Code::ResourceExhausted, "100 KiB admin request");
    still_serving(&c, "after-oversized").await;

    // Invalid enum values.
    let get = proto::GetRequest { key: "k".into(), consistency: 42 };
    assert_eq!(code(kv.get(get).await), Code::InvalidArgument, "unknown consistency");
    let deploy = |h| proto::DeployHookRequest { hook: Some(h), shadow: false };
    let source = b"return function(ctx) return true end".to_vec();
    let r = hooks.deploy(deploy(hook("bad-stage", 99, source.clone()))).await;
    assert_eq!(code(r), Code::InvalidArgument, "unknown hook stage");
    let mut bad_kind = hook("bad-kind", proto::HookStage::Validate as i32, source);
    bad_kind.kind = 42;
    assert_eq!(code(hooks.deploy(deploy(bad_kind)).await), Code::InvalidArgument, "unknown hook kind");

    // Hook sources: over the deploy limit, and past the message cap.
    let validate = proto::HookStage::Validate as i32;
    let long_source = [b"-- padding\n".repeat(30_000), b"return function(ctx) return true end".to_vec()].concat();
    let r = hooks.deploy(deploy(hook("too-long", validate, long_source))).await;
    assert_eq!(code(r), Code::InvalidArgument, "330 KiB hook source");
    // The Hooks message cap fits the largest Wasm module (8 MiB) plus a
    // test's key and values; past it the message is refused undecoded.
    let r = hooks.deploy(deploy(hook("far-too-long", validate, vec![0u8; 12 * 1024 * 1024]))).await;
    assert_eq!(code(r), Code::ResourceExhausted, "12 MiB hook source");
    let r = hooks.deploy(deploy(hook("lua-over-limit", validate, huge))).await;
    assert_eq!(code(r), Code::InvalidArgument, "3 MiB Lua source: under the message cap, over the Lua limit");
    still_serving(&c, "after-hooks").await;

    // Scan limits: a huge limit is capped at scan_max, and the bytes at max_scan_bytes.
    let client = c.client();
    for i in 0..8 {
        client.put(format!("row/{i}"), "v").await.expect("put row");
    }
    for i in 0..3 {
        client.put(format!("wide/{i}"), vec![b'w'; 30 * 1024]).await.expect("put wide");
    }
    let scan =
        |prefix: &'static str| proto::ScanRequest { prefix: prefix.into(), limit: u32::MAX, ..Default::default() };
    let mut stream = kv.scan(scan("row/")).await.expect("scan").into_inner();
    let mut rows = 0;
    while stream.message().await.expect("scan item").is_some() {
        rows += 1;
    }
    assert_eq!(rows, 5, "limit u32::MAX is capped at --scan-max");
    let mut stream = kv.scan(scan("wide/")).await.expect("scan").into_inner();
    let mut wide = 0;
    while stream.message().await.expect("scan item").is_some() {
        wide += 1;
    }
    assert_eq!(wide, 2, "three 30 KiB values do not fit --max-scan-bytes 64KiB");

    still_serving(&c, "at-the-end").await;
}

/// Opens a connection and proves it is served with one request.
async fn served_connection(addr: &str) -> Option<KvClient<Channel>> {
    let ch = channel(addr).await.ok()?;
    let mut kv = KvClient::new(ch);
    kv.get(proto::GetRequest { key: "probe".into(), consistency: 0 }).await.ok()?;
    Some(kv)
}

#[tokio::test]
async fn connections_beyond_the_per_ip_cap_are_refused_and_admitted_ones_keep_working() {
    const CAP: usize = 6;
    let c = ProcCluster::start(1, &["--max-connections-per-ip", "6"]).await;
    let addr = c.nodes[&1].grpc.clone();

    // Fill this IP's slots (the harness may still hold some of its own).
    let mut held = Vec::new();
    let mut refused = false;
    for _ in 0..=CAP {
        match served_connection(&addr).await {
            Some(kv) => held.push(kv),
            None => {
                refused = true;
                break;
            }
        }
    }
    assert!(refused, "connection {} from one IP was served; the cap is {CAP}", held.len() + 1);
    assert!(!held.is_empty() && held.len() <= CAP, "{} connections admitted", held.len());

    // The admitted connections keep working while new ones are refused. A
    // slot that a harness connection freed meanwhile is taken too (it
    // failed here once under load): this IP never holds more than CAP.
    for kv in &mut held {
        kv.get(proto::GetRequest { key: "k".into(), consistency: 0 }).await.expect("admitted connection still serves");
    }
    while let Some(kv) = served_connection(&addr).await {
        held.push(kv);
        assert!(held.len() <= CAP, "{} connections from one IP were served; the cap is {CAP}", held.len());
    }
    assert!(c.log_tail(1).contains("too many open from one IP"), "the refusal is logged:\n{}", c.log_tail(1));

    // Closing connections frees their slots.
    drop(held);
    eventually("a new connection is served once the old ones closed", || async {
        served_connection(&addr).await.map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn a_request_without_a_deadline_returns_when_the_quorum_is_lost() {
    let mut c = ProcCluster::start(3, &["--shards", "1", "--request-timeout", "1s"]).await;
    let client = c.client();
    client.put("before", "v").await.expect("put with a quorum");
    c.kill(2);
    c.kill(3);

    // A raw client: no grpc-timeout header and no client-side timeout.
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.nodes[&1].grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut kv = KvClient::new(ch);
    let put = proto::PutRequest { key: "stalled".into(), value: "v".into(), ttl_ms: None, if_version: None };
    // Far beyond the server default (2 × 1 s): only a hang would hit this.
    let r = tokio::time::timeout(Duration::from_secs(120), kv.put(put)).await.expect("the request hung");
    let status = r.expect_err("no quorum: the write cannot succeed");
    assert!(
        matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
        "expected UNAVAILABLE or DEADLINE_EXCEEDED, got {status:?}"
    );
}
