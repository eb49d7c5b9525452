#!/usr/bin/env bash
# The whole ringkv test suite. Installs what the tests need first, so it
# works on a fresh machine with only the Rust toolchain and gcc.
set -euo pipefail
cd "$(dirname "$0")"

# The nemesis test (tests/tests/t70_nemesis.rs) partitions nodes with
# iptables rules on loopback aliases: it needs iptables and root.
if ! command -v iptables >/dev/null 2>&1; then
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq iptables >/dev/null
fi

# The dashboard test (tests/tests/t94_dashboard.rs) drives headless Chromium
# through chromedriver.
if ! command -v chromedriver >/dev/null 2>&1; then
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi

# The container test (tests/tests/t92_container.rs) builds the image with
# scripts/build-image.sh (which installs g++ if needed) and runs
# docker-compose.yml on this machine's Docker engine. No engine is a failure,
# not a reason to skip it.
if ! docker info >/dev/null 2>&1; then
    echo "test.sh: the container test needs a running Docker engine (docker info failed)" >&2
    exit 1
fi
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker-compose >/dev/null
fi

# Wasm hooks (guest-sdk/, its own cargo workspace) are built for
# wasm32-unknown-unknown; the Wasm hook tests (t120, t121) deploy those
# modules and fail, never skip, without the target. `rustup target add` is
# quick when it is already installed.
rustup target add wasm32-unknown-unknown
# Build the modules once here so the test binaries that need them (each
# builds them on first use) find them up to date instead of building them
# concurrently.
(cd guest-sdk && cargo build --target wasm32-unknown-unknown --release)

# Build the binary first: the process-level tests run target/debug/ringkv.
cargo build --workspace --bins
cargo test --workspace --all-targets -- --test-threads "${RINGKV_TEST_THREADS:-4}"

# The guest SDK's own tests (unit tests, the attribute macros' compile-error
# tests, and a check of every built module against the ABI): not part of the
# root workspace, so the command above does not run them.
(cd guest-sdk && cargo test)

# The fuzz harnesses (docs/security.md, "Fuzzing"): built with libFuzzer's
# instrumentation by plain cargo, then each target runs for a short budget.
# A crash fails the run and leaves its input in target/fuzz/artifacts/.
# The unoptimized "quick" profile keeps that build to a few CPU minutes.
FUZZ_PROFILE=quick fuzz/run.sh "${RINGKV_FUZZ_SECONDS:-20}"
