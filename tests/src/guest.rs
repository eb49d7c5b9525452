//! Wasm hook modules for the tests: the guest SDK's modules (built from
//! `guest-sdk/`, the separate cargo workspace of Rust hooks) and the
//! hand-written hostile modules in `tests/wasm/hostile/*.wat`.
//!
//! The guest SDK is built once per test process with the command its README
//! gives (`cargo build --target wasm32-unknown-unknown --release`). Several
//! test binaries may build it at once: cargo serializes them on the lock of
//! `guest-sdk/target`, and the later ones find everything up to date. A
//! failed build fails the test; it is never a reason to skip one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ringkv_client::proto;

/// The target hook modules are built for (ABI.md: no WASI).
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

const INSTALL_HINT: &str = "run `rustup target add wasm32-unknown-unknown` (test.sh does)";

/// The repository's root (the tests crate sits in `tests/`).
fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate sits inside the repository")
}

/// The guest SDK's workspace.
pub fn guest_sdk_dir() -> PathBuf {
    repo_root().join("guest-sdk")
}

/// True when rustc has a standard library for [`WASM_TARGET`]: checked
/// before building so that the common failure gets a precise message.
fn target_installed() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).args(["--print", "target-libdir", "--target", WASM_TARGET]).output() else {
        return false;
    };
    let libdir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    out.status.success() && Path::new(&libdir).is_dir()
}

/// Builds every module of the guest SDK workspace (once per process) and
/// returns the directory the `.wasm` files are in.
fn built_modules() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        assert!(target_installed(), "the {WASM_TARGET} target is not installed: {INSTALL_HINT}");
        let sdk = guest_sdk_dir();
        // The target directory is named explicitly so a CARGO_TARGET_DIR in
        // the environment cannot send the modules somewhere this does not read.
        let target_dir = sdk.join("target");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        eprintln!("building the guest SDK's hook modules in {} ...", sdk.display());
        // stderr is inherited so cargo's own errors show in the test output.
        let status = Command::new(&cargo)
            .current_dir(&sdk)
            .args(["build", "--workspace", "--target", WASM_TARGET, "--release"])
            .env("CARGO_TARGET_DIR", &target_dir)
            .status()
            .unwrap_or_else(|e| panic!("could not run `{cargo} build` in {}: {e}", sdk.display()));
        assert!(
            status.success(),
            "`cargo build --target {WASM_TARGET} --release` in {} failed ({status}); its errors are above. \
             If the target is missing, {INSTALL_HINT}",
            sdk.display()
        );
        target_dir.join(WASM_TARGET).join("release")
    })
}

/// The path of the guest SDK module `name` (a crate of `guest-sdk/`, e.g.
/// `validate_json`), built first if need be.
pub fn guest_module_path(name: &str) -> PathBuf {
    let path = built_modules().join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} is missing after building the guest SDK: is {name} one of its crates?", path.display());
    path
}

/// The bytes of the guest SDK module `name`, built first if need be.
pub fn guest_module(name: &str) -> Vec<u8> {
    let path = guest_module_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The hostile (or hand-written well-behaved) module `tests/wasm/hostile/<name>.wat`,
/// as WebAssembly bytes.
pub fn hostile(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("wasm").join("hostile").join(format!("{name}.wat"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    wat::parse_str(&text).unwrap_or_else(|e| panic!("{} is not valid WAT: {e}", path.display()))
}

/// A fail-closed Wasm hook definition.
pub fn wasm_hook(
    name: &str,
    stage: proto::HookStage,
    prefix: &str,
    module: Vec<u8>,
    timeout_ms: u64,
) -> proto::HookDefinition {
    proto::HookDefinition {
        name: name.into(),
        kind: proto::HookKind::Wasm as i32,
        stage: stage as i32,
        prefix: prefix.as_bytes().to_vec().into(),
        source: module.into(),
        fail_open: false,
        timeout_ms,
    }
}
