//! Compiles `proto/ringkv/v1` with protox (pure Rust), so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    let files = [
        "ringkv/v1/kv.proto",
        "ringkv/v1/cluster.proto",
        "ringkv/v1/raft.proto",
        "ringkv/v1/hooks.proto",
        "ringkv/v1/backup.proto",
    ];
    let fds = protox::compile(files, [root])?;
    // The encoded descriptors, for the server's gRPC reflection service.
    let out = std::env::var("OUT_DIR")?;
    std::fs::write(format!("{out}/ringkv_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().build_server(true).build_client(true).bytes(".").compile_fds(fds)?;
    for f in files {
        println!("cargo:rerun-if-changed={root}/{f}");
    }
    Ok(())
}
