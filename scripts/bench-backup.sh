#!/usr/bin/env bash
# Backup and restore time: a 3-node source cluster (SOURCE_SHARDS shards) with
# the validate_json and ttl_by_prefix hooks and KEYS keys of VALUE_SIZE bytes
# is backed up with `ringkv backup`, and the backup restored with
# `ringkv restore` into a fresh TARGET_NODES-node cluster with TARGET_SHARDS
# shards. Prints the time each took (as the commands report it).
#
# Environment knobs (all optional):
#   KEYS              keys loaded into the source         (default 10000)
#   VALUE_SIZE        value bytes                          (default 128)
#   SOURCE_SHARDS     shards of the source cluster         (default 8)
#   TARGET_NODES      nodes of the target cluster (1-3)    (default 1)
#   TARGET_SHARDS     shards of the target cluster         (default 3)
#   CONCURRENCY       restore --concurrency                (default 256)
#   CARGO_TARGET_DIR  cargo target dir                     (default target/)
#   SKIP_BUILD=1      use the existing release binary
#
# Only 127.0.0.1 is used. Every process started here is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

KEYS="${KEYS:-10000}"
VALUE_SIZE="${VALUE_SIZE:-128}"
SOURCE_SHARDS="${SOURCE_SHARDS:-8}"
TARGET_NODES="${TARGET_NODES:-1}"
TARGET_SHARDS="${TARGET_SHARDS:-3}"
CONCURRENCY="${CONCURRENCY:-256}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
RINGKV="$TARGET_DIR/release/ringkv"
PORTS=(28479 28481 28483)        # source; HTTP is gRPC+1
TARGET_PORTS=(28579 28581 28583) # target

BENCH_NAME=bench-backup
# shellcheck source=scripts/bench-common.sh
source "$ROOT/scripts/bench-common.sh"

# start_cluster DIR SHARDS NODES PORT... : bootstraps node 1, joins the others,
# waits until every shard has min(3, NODES) replicas and nothing moves.
start_cluster() {
    local dir=$1 shards=$2 nodes=$3
    shift 3
    local ports=("$@")
    for ((i = 0; i < nodes; i++)); do
        local id=$((i + 1)) port=${ports[$i]} join=()
        ((i > 0)) && join=(--join "127.0.0.1:${ports[0]}")
        "$RINGKV" serve --id "$id" --listen "127.0.0.1:$port" --http "127.0.0.1:$((port + 1))" \
            --data-dir "$dir/n$id" --shards "$shards" "${join[@]}" >"$dir.n$id.log" 2>&1 &
        PIDS+=($!)
        sleep 1
    done
    local want=$((nodes < 3 ? nodes : 3)) deadline=$((SECONDS + 120))
    until "$RINGKV" cluster status --json --endpoints "127.0.0.1:${ports[0]}" 2>/dev/null |
        jq -e --argjson n "$want" \
            '(.shards | length) > 0 and all(.shards[]; (.replicas | length) == $n and (.moving | not) and .leader_id != 0)' \
            >/dev/null; do
        ((SECONDS < deadline)) || { log "cluster in $dir did not form"; exit 1; }
        sleep 1
    done
}

SOURCE="$(endpoints)"
TARGET="127.0.0.1:${TARGET_PORTS[0]}"
start_cluster "$WORK/source" "$SOURCE_SHARDS" 3 "${PORTS[@]}"
start_cluster "$WORK/target" "$TARGET_SHARDS" "$TARGET_NODES" "${TARGET_PORTS[@]}"
log "loading $KEYS keys and two hooks into the source"
"$RINGKV" hook deploy --endpoints "$SOURCE" --name json --stage validate --prefix users/ \
    --file scripts/validate_json.lua >/dev/null
"$RINGKV" hook deploy --endpoints "$SOURCE" --name ttl --stage ttl --file scripts/ttl_by_prefix.lua >/dev/null
# `bench --op get` writes keys 0..KEYS before it reads.
"$RINGKV" bench --endpoints "$SOURCE" --op get --keys "$KEYS" --value-size "$VALUE_SIZE" --duration 1s >/dev/null 2>&1

backup="$("$RINGKV" backup --endpoints "$SOURCE" --out "$WORK/backup" --quiet --json)"
restore="$("$RINGKV" restore --endpoints "$TARGET" --from "$WORK/backup" --concurrency "$CONCURRENCY" --quiet --json)"
printf 'source: 3 nodes, %s shards; target: %s nodes, %s shards; %s keys of %s bytes\n' \
    "$SOURCE_SHARDS" "$TARGET_NODES" "$TARGET_SHARDS" "$(jq -r .keys <<<"$backup")" "$VALUE_SIZE"
printf 'backup:  %6d ms (%s bytes)\n' "$(jq -r .elapsed_ms <<<"$backup")" "$(jq -r .bytes <<<"$backup")"
printf 'restore: %6d ms (--concurrency %s)\n' "$(jq -r .elapsed_ms <<<"$restore")" "$CONCURRENCY"
