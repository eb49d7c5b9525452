#!/usr/bin/env bash
# A/B of two ringkv release binaries on the same load, for changes that
# should not move throughput (refactors) or that claim to: RINGKV_A and
# RINGKV_B take turns, ROUNDS times (A B A B …), each run on a fresh 3-node
# cluster with SHARDS shards, a SETTLE_SECS settle, then one put run and one
# linearizable get run from the independent round-robin load generator
# (../shared/tools/kvload: 64 clients on 6 connections, 128-byte values).
# Prints every run and the medians per side with B / A.
#
#   RINGKV_A=/tmp/ringkv-before RINGKV_B=target/release/ringkv ./scripts/bench-ab.sh
#
# Environment knobs (all optional but the two binaries):
#   ROUNDS        A/B rounds                    (default 4)
#   SHARDS        shards of each cluster        (default 64)
#   BENCH_SECS    seconds per run               (default 8)
#   SETTLE_SECS   wait after the cluster formed (default 10)
#   KVLOAD        the load generator; built into target/kvload when absent
#
# Only 127.0.0.1 is used. Every process started here is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
: "${RINGKV_A:?set RINGKV_A to the first binary}" "${RINGKV_B:?set RINGKV_B to the second binary}"
ROUNDS="${ROUNDS:-4}"
SHARDS="${SHARDS:-64}"
BENCH_SECS="${BENCH_SECS:-8}"
SETTLE_SECS="${SETTLE_SECS:-10}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
KVLOAD="${KVLOAD:-$TARGET_DIR/kvload/release/kvload}"
PORTS=(29379 29381 29383)

BENCH_NAME=bench-ab
SKIP_BUILD=1 # the two binaries are given
# shellcheck source=scripts/bench-common.sh
source "$ROOT/scripts/bench-common.sh"

if [[ ! -x "$KVLOAD" ]]; then
    log "building the load generator into $TARGET_DIR/kvload"
    CARGO_TARGET_DIR="$TARGET_DIR/kvload" cargo build --release -q --manifest-path "$ROOT/../shared/tools/kvload/Cargo.toml"
    KVLOAD="$TARGET_DIR/kvload/release/kvload"
fi

declare -A RUNS
for r in $(seq "$ROUNDS"); do
    for side in A B; do
        var="RINGKV_$side"
        RINGKV="${!var}"
        for op in put get; do
            dir="$WORK/$side-$r-$op"
            mkdir -p "$dir"
            start_three "$dir" --shards "$SHARDS"
            sleep "$SETTLE_SECS"
            ops="$("$KVLOAD" --target ringkv --endpoints "$(endpoints)" --op "$op" --consistency l \
                --clients 64 --conns 6 --secs "$BENCH_SECS" --proto-dir "$ROOT/proto" | jq -r '.ops_per_s | floor')"
            stop_cluster
            rm -rf "$dir"
            log "round $r $side $op: $ops ops/s"
            RUNS[$side-$op]+="$ops "
        done
    done
done

printf '%-18s %-40s %-40s %s\n' workload 'A ops/s (median)' 'B ops/s (median)' 'B / A'
for op in put get; do
    a="$(tr ' ' '\n' <<<"${RUNS[A-$op]}" | grep . | median)"
    b="$(tr ' ' '\n' <<<"${RUNS[B-$op]}" | grep . | median)"
    name=$op
    [[ $op == get ]] && name="linearizable get"
    printf '%-18s %-40s %-40s %.2fx\n' "$name" "${RUNS[A-$op]}($a)" "${RUNS[B-$op]}($b)" "$(echo "$b / $a" | bc -l)"
done
