//! The Python client example (client/python, docs/clients.md): its venv,
//! made by `client/python/setup.sh` (test.sh runs it), stubs generated from
//! `proto/` for each run, and one run of the example against a cluster.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SETUP_HINT: &str = "run `client/python/setup.sh` (test.sh does)";

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate sits inside the repository")
}

/// The venv's python, failing (never skipping) when setup.sh has not run.
fn python() -> PathBuf {
    let python = repo_root().join("target/python-client/bin/python");
    assert!(python.is_file(), "{} is missing: {SETUP_HINT}", python.display());
    python
}

/// Generates the Python stubs of every `proto/ringkv/v1/*.proto` into `out`
/// with grpcio-tools, as docs/clients.md tells users to.
pub fn generate_stubs(out: &Path) {
    let proto = repo_root().join("proto");
    let files: Vec<PathBuf> = std::fs::read_dir(proto.join("ringkv/v1"))
        .expect("read proto/ringkv/v1")
        .map(|e| e.expect("proto dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    assert!(!files.is_empty(), "no .proto files under {}", proto.display());
    let status = Command::new(python())
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto)
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .args(&files)
        .status()
        .expect("run grpc_tools.protoc");
    assert!(status.success(), "grpc_tools.protoc failed on {}: {SETUP_HINT}", proto.display());
}

/// Runs client/python/ringkv_example.py with the stubs in `stubs` and `env`
/// (RINGKV_ENDPOINTS, RINGKV_TLS_CA, RINGKV_TOKEN, ...); nothing else of the
/// caller's RINGKV_* environment leaks in.
pub fn run_example(stubs: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("client/python/ringkv_example.py")).env("PYTHONPATH", stubs);
    for var in ["RINGKV_ENDPOINTS", "RINGKV_TLS_CA", "RINGKV_TOKEN", "RINGKV_EXAMPLE_PREFIX"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run the Python example")
}
