#!/usr/bin/env bash
# The whole ringkv test suite. Installs what the tests need first, so it
# works on a fresh machine with only the Rust toolchain and gcc.
set -euo pipefail
cd "$(dirname "$0")"

# Build the binary first: the process-level tests run target/debug/ringkv.
cargo build --workspace --bins
cargo test --workspace --all-targets -- --test-threads "${RINGKV_TEST_THREADS:-4}"
