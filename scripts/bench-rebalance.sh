#!/usr/bin/env bash
# Time to rebalance when a 6th node joins 5 nodes holding KEYS keys, and the
# fraction of shard replicas that moved (ideal: RF*S/N of RF*S).
#
# Environment knobs (all optional):
#   KEYS             keys written before the join       (default 100000)
#   SHARDS           shard count                        (default 64)
#   VALUE_SIZE       value bytes                        (default 128)
#   CARGO_TARGET_DIR cargo target dir                   (default target/)
#   SKIP_BUILD=1     use the existing release binary
#
# Only 127.0.0.1 is used. Every process started here is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
KEYS="${KEYS:-100000}"
SHARDS="${SHARDS:-64}"
VALUE_SIZE="${VALUE_SIZE:-128}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
RINGKV="$TARGET_DIR/release/ringkv"
BASE=28500 # node i: gRPC BASE+2i, HTTP BASE+2i+1

log() { printf '[bench-rebalance %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
command -v jq >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null; }
[[ "${SKIP_BUILD:-0}" == 1 ]] || CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -p ringkv

WORK="$(mktemp -d -t bench-rebalance.XXXXXX)"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait; rm -rf "$WORK"' EXIT INT TERM

start_node() {
    local id=$1 port=$((BASE + 2 * $1)) join=()
    ((id > 1)) && join=(--join "127.0.0.1:$((BASE + 2))")
    "$RINGKV" serve --id "$id" --listen "127.0.0.1:$port" --http "127.0.0.1:$((port + 1))" \
        --data-dir "$WORK/n$id" --shards "$SHARDS" "${join[@]}" >"$WORK/n$id.log" 2>&1 &
    PIDS+=($!)
}
status() { RINGKV_ENDPOINTS="127.0.0.1:$((BASE + 2))" "$RINGKV" cluster status --json 2>/dev/null; }
settled() { # $1 = member count
    status | jq -e --argjson n "$1" '(.nodes | length) == $n and (.shards | length) > 0
        and all(.shards[]; (.replicas | length) == 3 and (.moving | not))' >/dev/null
}
wait_settled() {
    local deadline=$((SECONDS + 600))
    until settled "$1"; do
        ((SECONDS < deadline)) || { log "cluster did not settle with $1 nodes"; exit 1; }
        sleep 0.2
    done
}

for id in 1 2 3 4 5; do start_node "$id"; sleep 1; done
wait_settled 5
log "5 nodes settled; writing $KEYS keys"
RINGKV_ENDPOINTS="$(for i in 1 2 3 4 5; do printf '127.0.0.1:%s,' $((BASE + 2 * i)); done)"
RINGKV_ENDPOINTS="${RINGKV_ENDPOINTS%,}" "$RINGKV" bench --op get --keys "$KEYS" --value-size "$VALUE_SIZE" \
    --duration 1s >/dev/null
before="$(status | jq -c '[.shards[] | {s: .shard, r: .replicas}]')"

log "node 6 joins"
start=$(date +%s.%N)
start_node 6
wait_settled 6
end=$(date +%s.%N)
after="$(status | jq -c '[.shards[] | {s: .shard, r: .replicas}]')"
moved="$(jq -n --argjson b "$before" --argjson a "$after" \
    '[range(0; $a | length) as $i | $a[$i].r - $b[$i].r | length] | add')"
total=$((SHARDS * 3))
printf 'rebalance after a 6th node joined 5 holding %s keys (S=%s): %.1f s; %s of %s replicas moved (%.1f %%; ideal RF*S/N = %s)\n' \
    "$KEYS" "$SHARDS" "$(echo "$end - $start" | bc -l)" "$moved" "$total" "$(echo "100 * $moved / $total" | bc -l)" "$((total / 6))"
