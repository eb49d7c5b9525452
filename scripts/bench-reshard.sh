#!/usr/bin/env bash
# Re-shard time: a 3-node cluster (SHARDS shards, release build) holds KEYS
# keys of TENANTS tenants (`t0007/00000042`, VALUE_SIZE-byte values), routed
# by their whole key; then guest-sdk's tenant_partitioner is deployed and the
# script waits for the re-shard job to finish. Reports the job's own
# duration (from the meta group: start to last shard done), the keys scanned
# and moved, and keys moved per second. With LOAD=1 a closed-loop put/get
# load (BENCH_CLIENTS clients) runs during the job and its ops/s is reported
# too. REPEAT rounds alternate deploy (whole key -> tenants) and remove
# (tenants -> whole key); medians are reported.
#
# Environment knobs (all optional):
#   KEYS (100000), TENANTS (100), SHARDS (16), VALUE_SIZE (128), REPEAT (3),
#   LOAD (0), BENCH_CLIENTS (16), CARGO_TARGET_DIR, SKIP_BUILD=1
#
# Only 127.0.0.1 is used. Every process started here is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

KEYS="${KEYS:-100000}"
TENANTS="${TENANTS:-100}"
SHARDS="${SHARDS:-16}"
VALUE_SIZE="${VALUE_SIZE:-128}"
REPEAT="${REPEAT:-3}"
LOAD="${LOAD:-0}"
BENCH_CLIENTS="${BENCH_CLIENTS:-16}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
RINGKV="$TARGET_DIR/release/ringkv"
PORTS=(28579 28581 28583) # HTTP is gRPC+1

BENCH_NAME=bench-reshard
# shellcheck source=scripts/bench-common.sh
source "$ROOT/scripts/bench-common.sh"
rk() { RINGKV_ENDPOINTS="$(endpoints)" "$RINGKV" "$@"; }

WASM="$ROOT/guest-sdk/target/wasm32-unknown-unknown/release"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    (cd guest-sdk && cargo build --target wasm32-unknown-unknown --release -q)
fi

start_three "$WORK" --shards "$SHARDS"

log "loading $KEYS keys of $TENANTS tenants"
rk bench --op get --keys "$KEYS" --tenants "$TENANTS" --value-size "$VALUE_SIZE" --clients 64 --duration 1s >/dev/null

declare -a SECS RATE
for r in $(seq "$REPEAT"); do
    load_pid=""
    if [[ "$LOAD" == 1 ]]; then
        # Not through `rk`: a backgrounded shell function is a subshell, and
        # the SIGINT below must reach the bench itself.
        RINGKV_ENDPOINTS="$(endpoints)" "$RINGKV" bench --op mixed --keys "$KEYS" --tenants "$TENANTS" \
            --value-size "$VALUE_SIZE" --no-preload --clients "$BENCH_CLIENTS" --duration 600s --json \
            >"$WORK/load-$r.json" 2>/dev/null &
        load_pid=$!
        sleep 2
    fi
    if ((r % 2 == 1)); then
        rk hook deploy --kind wasm --stage partition --name tenants --file "$WASM/tenant_partitioner.wasm" >/dev/null
        what="whole key -> tenants"
    else
        rk hook remove tenants >/dev/null
        what="tenants -> whole key"
    fi
    deadline=$((SECONDS + 1800))
    until rk cluster reshard status --json | jq -e '.running | not' >/dev/null; do
        ((SECONDS < deadline)) || { log "re-shard did not finish"; exit 1; }
        sleep 0.5
    done
    if [[ -n "$load_pid" ]]; then
        kill -TERM "$load_pid" 2>/dev/null || true # the bench reports on SIGTERM
        wait "$load_pid" 2>/dev/null || true
    fi
    st="$(rk cluster reshard status --json)"
    ms="$(jq -r '.last.duration_ms' <<<"$st")"
    moved="$(jq -r '.last.keys_moved' <<<"$st")"
    scanned="$(jq -r '.last.keys_scanned' <<<"$st")"
    SECS+=("$(echo "$ms / 1000" | bc -l)")
    RATE+=("$(echo "$moved * 1000 / $ms" | bc -l)")
    load=""
    if [[ -n "$load_pid" ]]; then
        load=", client load $(jq -r '"\(.ops_per_sec | floor) ops/s with \(.errors) errors\(if .errors > 0 then " (first: \(.first_error))" else "" end)"' "$WORK/load-$r.json" 2>/dev/null || echo '(no report)')"
    fi
    log "round $r ($what): $scanned keys scanned, $moved moved in ${ms} ms ($(echo "$moved * 1000 / $ms" | bc) keys/s)$load"
done

printf 'keys %s, tenants %s, shards %s, value %s B, load %s\n' "$KEYS" "$TENANTS" "$SHARDS" "$VALUE_SIZE" "$LOAD"
printf 'median re-shard time %.2f s, median %.0f keys moved/s\n' \
    "$(printf '%s\n' "${SECS[@]}" | median)" "$(printf '%s\n' "${RATE[@]}" | median)"
