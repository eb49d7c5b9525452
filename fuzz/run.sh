#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation using
# plain cargo on the stable toolchain (the flags cargo-fuzz would pass; no
# cargo-fuzz install needed), then runs each for a time budget.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     default: 30 s, every target
#   FUZZ_PROFILE=quick fuzz/run.sh 20                 unoptimized build (test.sh)
#   fuzz/run.sh build                                 build only (test.sh starts it early)
#
# Targets run FUZZ_JOBS at a time (default: the number of cores), each for
# its whole budget; their output goes to target/fuzz/logs/<target>.log and
# is printed when they finish.
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
build_only=false
[[ "$seconds" == build ]] && build_only=true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(client_request peer_payload hook_record snapshot)

triple="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="$root/target/fuzz/build"
# --target keeps these flags off build scripts and proc macros.
export RUSTFLAGS="--cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# libFuzzer's coverage instrumentation goes on ringkv's own crates (the
# decoders, the prost- and serde-generated code, the harnesses) and not on
# the dependencies: instrumenting wasmtime, tokio and the rest cost most of
# the build and fed back coverage of code the targets do not aim at.
# FUZZ_INSTRUMENT_ALL=1 instruments everything, as cargo-fuzz does.
export RINGKV_FUZZ_INSTRUMENT="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth"
if [[ "${FUZZ_INSTRUMENT_ALL:-0}" == 1 ]]; then
    RUSTFLAGS="$RUSTFLAGS $RINGKV_FUZZ_INSTRUMENT"
else
    export RUSTC_WRAPPER="$root/fuzz/instrument-ours.sh"
fi
profile="${FUZZ_PROFILE:-release}"
cargo build --profile "$profile" --target "$triple" --bins
$build_only && exit 0

logs="$root/target/fuzz/logs"
mkdir -p "$logs"
fuzz_one() {
    local t=$1
    local corpus="$root/target/fuzz/corpus/$t"
    local artifacts="$root/target/fuzz/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    "$CARGO_TARGET_DIR/$triple/$profile/$t" "$corpus" "$root/fuzz/seeds/$t" \
        -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 >"$logs/$t.log" 2>&1
}
jobs_max="${FUZZ_JOBS:-$(nproc)}"
declare -A pids=()
failed=()
finish() {
    local t=$1
    if wait "${pids[$t]}"; then
        echo "fuzzed $t for ${seconds}s: $(grep -h '^stat::number_of_executed_units' "$logs/$t.log" | awk '{print $2}') runs"
    else
        cat "$logs/$t.log"
        echo "fuzz target $t FAILED (input in target/fuzz/artifacts/$t/)" >&2
        failed+=("$t")
    fi
    unset "pids[$t]"
}
for t in "${targets[@]}"; do
    while [[ ${#pids[@]} -ge $jobs_max ]]; do
        # Wait for one of them: every target has the same budget, so they end in about start order.
        for running in "${!pids[@]}"; do finish "$running"; break; done
    done
    echo "fuzzing $t for ${seconds}s"
    fuzz_one "$t" &
    pids[$t]=$!
done
for running in "${!pids[@]}"; do finish "$running"; done
[[ ${#failed[@]} -eq 0 ]]
