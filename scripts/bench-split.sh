#!/usr/bin/env bash
# Online shard split and the spread policy (issue 18), on loopback:
#
#  A. Split: 3 nodes, 1 shard holding SPLIT_KEYS keys. Measures the put
#     throughput before the split, then splits shard 0 while the same load
#     runs and reports the split's duration, the keys it moved, the put
#     throughput during it, and the bytes the three nodes wrote to disk
#     meanwhile (/proc/PID/io write_bytes) against the user data moved.
#  B. Spread: 1 node with the defaults holding SPREAD_KEYS keys; 4 nodes
#     join. Reports the time until the cluster has split (automatically) to
#     8 shards, every one placed on 3 nodes, and the keys per node.
#
# Environment knobs (all optional):
#   SPLIT_KEYS       keys in the shard that splits     (default 1000000)
#   SPREAD_KEYS      keys of the growing cluster       (default 200000)
#   VALUE_SIZE       value bytes                       (default 128)
#   LOAD_CLIENTS     closed-loop put clients during A  (default 16)
#   PARTS            which parts to run                (default "A B")
#   MOVE_SHARE       the nodes' --move-share in A      (default: theirs, 50)
#   CARGO_TARGET_DIR cargo target dir                  (default target/)
#   SKIP_BUILD=1     use the existing release binary
#
# Only 127.0.0.1 is used. Every process started here is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BENCH_NAME=bench-split
SPLIT_KEYS="${SPLIT_KEYS:-1000000}"
SPREAD_KEYS="${SPREAD_KEYS:-200000}"
VALUE_SIZE="${VALUE_SIZE:-128}"
LOAD_CLIENTS="${LOAD_CLIENTS:-16}"
PARTS="${PARTS:-A B}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
RINGKV="$TARGET_DIR/release/ringkv"
PORTS=(28700 28702 28704 28706 28708)
# shellcheck source=scripts/bench-common.sh
source "$ROOT/scripts/bench-common.sh"

status() { RINGKV_ENDPOINTS="$(endpoints)" "$RINGKV" cluster status --json 2>/dev/null; }
written() { # bytes the started nodes wrote to disk so far
    local total=0 p
    for p in "${PIDS[@]}"; do
        total=$((total + $(awk '/^write_bytes/ {print $2}' "/proc/$p/io" 2>/dev/null || echo 0)))
    done
    echo "$total"
}
put_rate() { # the ops/s of a `ringkv bench` report on stdin
    grep -o 'ops/s=[0-9.]*' | tail -1 | cut -d= -f2
}

if [[ " $PARTS " == *" A "* ]]; then
    dir="$WORK/a"
    mkdir -p "$dir"
    start_three "$dir" --shards 1 --auto-split-replicas-per-node 0 --min-replicas 3 \
        ${MOVE_SHARE:+--move-share "$MOVE_SHARE"}
    log "A: writing $SPLIT_KEYS keys of $VALUE_SIZE bytes into the one shard"
    RINGKV_ENDPOINTS="$(endpoints)" "$RINGKV" bench --op get --keys "$SPLIT_KEYS" --value-size "$VALUE_SIZE" \
        --duration 1s >/dev/null
    before=$(RINGKV_ENDPOINTS="$(endpoints)" "$RINGKV" bench --op put --clients "$LOAD_CLIENTS" \
        --value-size "$VALUE_SIZE" --duration 10s 2>&1 | put_rate)
    log "A: puts before the split: $before ops/s; splitting shard 0 under the same load"
    RINGKV_ENDPOINTS="$(endpoints)" "$RINGKV" bench --op put --clients "$LOAD_CLIENTS" \
        --value-size "$VALUE_SIZE" --duration 600s >"$dir/load.txt" 2>&1 &
    load=$!
    sleep 2
    w0=$(written)
    t0=$(date +%s.%N)
    RINGKV_ENDPOINTS="$(endpoints)" "$RINGKV" cluster split 0 --json >"$dir/split.json"
    t1=$(date +%s.%N)
    w1=$(written)
    kill -INT "$load" 2>/dev/null || true
    wait "$load" 2>/dev/null || true
    during=$(put_rate <"$dir/load.txt" || true)
    moved=$(jq -r '.keys_moved' "$dir/split.json")
    secs=$(echo "$t1 - $t0" | bc -l)
    user=$((moved * (VALUE_SIZE + 14)))
    printf 'A. split of a shard holding %s keys (%s B values), 3 nodes, %s put clients:\n' \
        "$SPLIT_KEYS" "$VALUE_SIZE" "$LOAD_CLIENTS"
    printf '   split took %.1f s, moved %s keys (%.0f keys/s)\n' "$secs" "$moved" "$(echo "$moved / $secs" | bc -l)"
    printf '   puts: %s ops/s before, %s ops/s over the whole run that included the split\n' "$before" "${during:-?}"
    printf '   disk writes of the 3 nodes during the split: %.1f MB (moved user data: %.1f MB, x%.1f)\n' \
        "$(echo "($w1 - $w0) / 1000000" | bc -l)" "$(echo "$user / 1000000" | bc -l)" \
        "$(echo "($w1 - $w0) / ($user + 1)" | bc -l)"
    stop_cluster
fi

if [[ " $PARTS " == *" B "* ]]; then
    dir="$WORK/b"
    mkdir -p "$dir"
    start_node 1 "$dir"
    until status | jq -e '(.shards | length) == 1 and .shards[0].leader_id != 0' >/dev/null; do sleep 0.2; done
    log "B: writing $SPREAD_KEYS keys of $VALUE_SIZE bytes into a 1-node cluster"
    RINGKV_ENDPOINTS="127.0.0.1:${PORTS[0]}" "$RINGKV" bench --op get --keys "$SPREAD_KEYS" \
        --value-size "$VALUE_SIZE" --duration 1s >/dev/null
    log "B: nodes 2-5 join"
    t0=$(date +%s.%N)
    for id in 2 3 4 5; do start_node "$id" "$dir" --join "127.0.0.1:${PORTS[0]}"; done
    deadline=$((SECONDS + 1200))
    until status | jq -e '(.nodes | length) == 5 and (.shards | length) == 8
            and all(.shards[]; (.replicas | length) == 3 and (.moving | not) and .leader_id != 0)
            and (.reshard.running | not)' >/dev/null; do
        ((SECONDS < deadline)) || { log "B: the cluster did not spread"; exit 1; }
        sleep 0.5
    done
    t1=$(date +%s.%N)
    # Keys per node: each shard's keys counted now, on every node holding it.
    per_node=$(RINGKV_ENDPOINTS="$(endpoints)" "$RINGKV" cluster shards --exact --json |
        jq -r '[.shards[] | .keys as $k | .replicas[] | {n: ., k: $k}] | group_by(.n)
            | map(map(.k) | add) | map(tostring) | join(" ")')
    printf 'B. 1 node holding %s keys (%s B values) spreading over 5 nodes:\n' "$SPREAD_KEYS" "$VALUE_SIZE"
    printf '   8 shards placed on 3 nodes each after %.1f s\n' "$(echo "$t1 - $t0" | bc -l)"
    printf '   keys per node: %s (max/min %.2f)\n' "$per_node" \
        "$(echo "$per_node" | tr ' ' '\n' | grep . | sort -n | awk 'NR==1{min=$1} {max=$1} END {print max/min}')"
fi
