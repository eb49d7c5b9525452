//! The container image, for the tests that run it on this machine's Docker
//! engine (t92 compose, t93 Kubernetes pods as containers). Each test builds
//! its own tag and names its containers, networks and volumes after itself
//! and the test process, so the two can run at the same time.

use std::path::Path;
use std::process::{Command, Output};

use crate::ringkv_bin;

/// A command's status and both outputs, for failure messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Builds the image `tag` with scripts/build-image.sh from the `ringkv`
/// binary the other tests run ([`ringkv_bin`]), so the suite compiles
/// ringkv once: the script packages that binary (with its loader and shared
/// libraries) into the same FROM-scratch image as its static build.
pub fn build_image(tag: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(root.join("scripts/build-image.sh"))
        .arg("--binary")
        .arg(ringkv_bin())
        .arg(tag)
        .current_dir(&root)
        .output()
        .expect("run scripts/build-image.sh");
    assert!(out.status.success(), "scripts/build-image.sh failed: {}", describe(&out));
}
