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
        .scan(proto::ScanRequest { prefix: vec![b'p'; 5000].into(), limit: 1, consistency: 0 })
        .await
        .expect_err("over-long prefix must fail");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Garbage bytes as a message body.
    let body = tonic::codegen::Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    let status = raw_call(&c.nodes[&1].grpc, "/ringkv.v1.Kv/Put", body).await;
    assert!(matches!(status, Code::Internal | Code::InvalidArgument | Code::Unknown), "{status:?}");

    // The node is still serving.
    let v = client.put_with("after", "bad input", PutOptions::default()).await.expect("put after bad input");
    assert_eq!(client.get("after").await.expect("get").expect("found").version, v);
}

/// Sends raw bytes as a gRPC message and returns the status code.
async fn raw_call(addr: &str, path: &'static str, body: tonic::codegen::Bytes) -> Code {
    use tonic_prost::ProstCodec;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.expect("ready");
    let codec: ProstCodec<prost_types_free::RawBytes, proto::PutResponse> = ProstCodec::default();
    let r = grpc.unary(tonic::Request::new(prost_types_free::RawBytes(body)), path.parse().expect("path"), codec).await;
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// A message type that encodes as the given raw bytes.
mod prost_types_free {
    #[derive(Clone, Debug, Default, PartialEq)]
    pub struct RawBytes(pub tonic::codegen::Bytes);
    impl prost::Message for RawBytes {
        fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
            buf.put_slice(&self.0);
        }
        fn merge_field(
            &mut self,
            _tag: u32,
            _wire_type: prost::encoding::WireType,
            _buf: &mut impl prost::bytes::Buf,
            _ctx: prost::encoding::DecodeContext,
        ) -> Result<(), prost::DecodeError> {
            Ok(())
        }
        fn encoded_len(&self) -> usize {
            self.0.len()
        }
        fn clear(&mut self) {}
    }
}
