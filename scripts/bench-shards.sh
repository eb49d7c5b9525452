#!/usr/bin/env bash
# Put throughput of a 3-node cluster at different shard counts, same load:
# BENCH_CLIENTS closed-loop clients writing VALUE_SIZE-byte values.
# For each shard count a fresh cluster is bootstrapped, left to settle
# (replicas placed, leaders spread), then measured REPEAT times; the median
# ops/s and p99 are reported, with the ratio to the first shard count.
#
# Environment knobs (all optional):
#   SHARD_COUNTS     space-separated shard counts       (default "1 64")
#   BENCH_DURATION   per-measurement duration           (default 10s)
#   REPEAT           measurements per shard count       (default 3)
#   BENCH_CLIENTS    concurrent clients                 (default 64)
#   VALUE_SIZE       value bytes                        (default 128)
#   SETTLE_SECS      wait after the cluster formed      (default 15)
#   CARGO_TARGET_DIR cargo target dir                   (default target/)
#   SKIP_BUILD=1     use the existing release binary
#
# Only 127.0.0.1 is used. Every process started here is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SHARD_COUNTS="${SHARD_COUNTS:-1 64}"
BENCH_DURATION="${BENCH_DURATION:-10s}"
REPEAT="${REPEAT:-3}"
BENCH_CLIENTS="${BENCH_CLIENTS:-64}"
VALUE_SIZE="${VALUE_SIZE:-128}"
SETTLE_SECS="${SETTLE_SECS:-15}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
RINGKV="$TARGET_DIR/release/ringkv"
PORTS=(28379 28381 28383) # HTTP is gRPC+1

BENCH_NAME=bench-shards
# shellcheck source=scripts/bench-common.sh
source "$ROOT/scripts/bench-common.sh"

start_cluster() {
    start_three "$WORK/s$1" --shards "$1"
    sleep "$SETTLE_SECS"
}

base=""
printf '%-7s %12s %10s %8s\n' shards 'put ops/s' 'p99 ms' ratio
for s in $SHARD_COUNTS; do
    mkdir -p "$WORK/s$s"
    start_cluster "$s"
    ops=() p99=()
    for r in $(seq "$REPEAT"); do
        out="$(RINGKV_ENDPOINTS="$(endpoints)" "$RINGKV" bench --op put --clients "$BENCH_CLIENTS" \
            --duration "$BENCH_DURATION" --value-size "$VALUE_SIZE" --json)"
        ops+=("$(jq -r '.ops_per_sec' <<<"$out")")
        p99+=("$(jq -r '.p99_ms' <<<"$out")")
        log "shards=$s run $r: ${ops[-1]} ops/s, p99 ${p99[-1]} ms"
    done
    stop_cluster
    m="$(printf '%s\n' "${ops[@]}" | median)"
    p="$(printf '%s\n' "${p99[@]}" | median)"
    [[ -n "$base" ]] || base="$m"
    printf '%-7s %12.0f %10.2f %7.2fx\n' "$s" "$m" "$p" "$(echo "$m / $base" | bc -l)"
done
