#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation using
# plain cargo on the stable toolchain (the flags cargo-fuzz would pass; no
# cargo-fuzz install needed), then runs each for a time budget.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     default: 30 s, every target
#   FUZZ_PROFILE=quick fuzz/run.sh 20                 unoptimized build (test.sh)
#
# The working corpus lives in target/fuzz/corpus/<target> (seeded from
# fuzz/seeds/<target>); a crash stops the run with a nonzero status and leaves
# its input in target/fuzz/artifacts/<target>/. Copy that file into
# fuzz/regressions/<target>/ and fix the bug: `cargo test -p ringkv --lib
# fuzzing` replays every regression from then on.
set -euo pipefail
cd "$(dirname "$0")"
root="$(cd .. && pwd)"
seconds="${1:-30}"
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(client_request peer_payload hook_record snapshot)

triple="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="$root/target/fuzz/build"
# --target keeps these flags off build scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth \
--cfg fuzzing -Cdebug-assertions -Coverflow-checks"
profile="${FUZZ_PROFILE:-release}"
cargo build --profile "$profile" --target "$triple" --bins

for t in "${targets[@]}"; do
    corpus="$root/target/fuzz/corpus/$t"
    artifacts="$root/target/fuzz/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    echo "fuzzing $t for ${seconds}s"
    "$CARGO_TARGET_DIR/$triple/$profile/$t" "$corpus" "$root/fuzz/seeds/$t" \
        -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="$artifacts/" -print_final_stats=1
done
