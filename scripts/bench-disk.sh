#!/usr/bin/env bash
# Disk space of a 3-node cluster against the user data it holds (issue 18).
# Writes KEYS keys of VALUE_SIZE random bytes once each, then overwrites
# random keys with 64 clients for LOAD_SECS and reports each
# node's data directory, then again after IDLE_SECS: total bytes, the ratio
# to the user data (KEYS x (key + value)), and fjall's split by keyspace and
# journal from the node's /metrics. With DRAIN=1 a fourth node then joins, the rebalancer
# moves replicas onto it, and after IDLE_SECS more all four are reported: a
# node that handed a replica away should have given its space back.
#
# Environment knobs (all optional):
#   KEYS             distinct keys                      (default 40000)
#   VALUE_SIZE       value bytes                        (default 4096)
#   SHARDS           shard count                        (default 1)
#   LOAD_SECS        overwrite phase, 64 clients        (default 20)
#   IDLE_SECS        wait before measuring              (default 30)
#   DRAIN=1          then add a node and measure again  (default 0; needs SHARDS >= 2)
#   CARGO_TARGET_DIR cargo target dir                   (default target/)
#   SKIP_BUILD=1     use the existing release binaries
#   RINGKV           the ringkv binary                  (default the release build)
#   BENCH_BIN        the binary whose `bench` drives the load (default RINGKV)
#
# The load is `ringkv bench --value-random`: the values do not compress. (A
# repeated pattern, as other load generators write, shrinks by 30x or more
# once compaction reaches fjall's compressed levels, so the figures would
# depend on how far compaction got.) Only 127.0.0.1 is used. Every process
# started here is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

KEYS="${KEYS:-40000}"
VALUE_SIZE="${VALUE_SIZE:-4096}"
SHARDS="${SHARDS:-1}"
LOAD_SECS="${LOAD_SECS:-20}"
IDLE_SECS="${IDLE_SECS:-30}"
DRAIN="${DRAIN:-0}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
RINGKV="${RINGKV:-$TARGET_DIR/release/ringkv}"
PORTS=(28479 28481 28483) # HTTP is gRPC+1

BENCH_NAME=bench-disk
# shellcheck source=scripts/bench-common.sh
source "$ROOT/scripts/bench-common.sh"
# With one shard, three replicas on four nodes are already balanced.
[[ $DRAIN != 1 || $SHARDS -ge 2 ]] || { log "DRAIN=1 needs SHARDS=2 or more"; exit 2; }

start_three "$WORK" --shards "$SHARDS"

# report ID: one line for node ID's data directory.
report() {
    local id=$1 bytes parts
    bytes=$(du -sb "$WORK/n$id" | cut -f1)
    parts=$(curl -sf "http://127.0.0.1:$((PORTS[id - 1] + 1))/metrics" |
        awk '/^ringkv_storage_part_bytes\{/ { match($0, /part="[^"]*"/); printf "%s %.0f\n", substr($0, RSTART + 6, RLENGTH - 7), $2 / 1048576 }' |
        sort -k2,2nr | awk '$2 > 0 { printf "%s %s  ", $1, $2 }' || true)
    printf 'node %s: %6.0f MiB  %5.2fx user data   %s\n' "$id" "$(echo "$bytes / 1048576" | bc -l)" \
        "$(echo "$bytes / $user" | bc -l)" "${parts:+(MiB: $parts)}"
}
user=$((KEYS * (14 + VALUE_SIZE))) # keys are bench/00000000
bench() {
    RINGKV_ENDPOINTS="$(endpoints)" "${BENCH_BIN:-$RINGKV}" bench --keys "$KEYS" --value-size "$VALUE_SIZE" --value-random --json "$@" |
        jq -c '{ops_per_sec, p99_ms, errors}'
}
log "writing $KEYS keys of $VALUE_SIZE random bytes"
bench --op get --duration 1s 2>/dev/null >/dev/null
log "overwriting random keys for ${LOAD_SECS}s: $(bench --op put --clients 64 --duration "${LOAD_SECS}s")"
log "right after the load:"
for id in 1 2 3; do report "$id"; done
log "user data: $((user / 1048576)) MiB; waiting ${IDLE_SECS}s idle"
sleep "$IDLE_SECS"

for id in 1 2 3; do report "$id"; done

if [[ $DRAIN == 1 ]]; then
    log "node 4 joins; the rebalancer moves replicas onto it"
    PORTS+=(28485)
    start_node 4 "$WORK" --shards "$SHARDS" --join "127.0.0.1:${PORTS[0]}"
    hosted() { # PORT: shard groups the node there hosts
        "$RINGKV" cluster status --json --endpoints "127.0.0.1:$1" 2>/dev/null |
            jq '[.groups[]? | select(.kind == "shard")] | length' 2>/dev/null || echo 0
    }
    moved() {
        local p n total=0
        for p in "${PORTS[@]}"; do
            n=$(hosted "$p")
            total=$((total + ${n:-0}))
        done
        # The new node holds its share, and every replica that moved has
        # left its old node.
        ((total == SHARDS * 3 && $(hosted "${PORTS[3]}") >= SHARDS * 3 / 4))
    }
    deadline=$((SECONDS + 600))
    until moved; do
        ((SECONDS < deadline)) || { log "replicas did not move to node 4"; exit 1; }
        sleep 1
    done
    log "replicas per node: $(RINGKV_ENDPOINTS="$(endpoints)" "$RINGKV" cluster status --json |
        jq -c '[.shards[].replicas[]] | group_by(.) | map({(.[0] | tostring): length}) | add')"
    log "waiting ${IDLE_SECS}s idle"
    sleep "$IDLE_SECS"
    for id in 1 2 3 4; do report "$id"; done
fi
