#!/usr/bin/env bash
# Put throughput of a 3-node cluster with no hook, a trivial validate hook
# and scripts/validate_json.lua in Lua, and their Wasm counterparts
# (guest-sdk: test-guests/noop_validate, examples/validate_json), on the
# same cluster and the same load:
# BENCH_CLIENTS closed-loop clients writing VALUE_SIZE-byte JSON objects.
# The three configurations take turns, REPEAT rounds, in an order that
# rotates each round, so drift in the machine hits all three alike. Reports the median ops/s and p99 of each,
# the ratio to "no hook", and the hook's per-call time (p50/p99 of the
# hook's own run time on the shard leader, from `hook list --json`), and the
# CPU the three nodes spent per write (user + system, from /proc): on this
# shared 2-core machine throughput is noisy, CPU per write much less so.
#
# Environment knobs (all optional):
#   BENCH_DURATION   per-measurement duration   (default 10s)
#   REPEAT           rounds                     (default 3)
#   BENCH_CLIENTS    concurrent clients         (default 64)
#   VALUE_SIZE       JSON value bytes           (default 200)
#   SETTLE_SECS      wait after the cluster formed (default 10)
#   WARMUP           unrecorded warm-up run first, filling the key space (default 1)
#   CARGO_TARGET_DIR cargo target dir           (default target/)
#   SKIP_BUILD=1     use the existing release binary and guest modules
#   CONFIGS          which configurations, in order (default "none trivial json wasm-noop wasm-json");
#                    also wasm-shadow / trivial-shadow: the no-op hook active
#                    plus the same no-op deployed as its shadow (`deploy --shadow`)
#   ALLOW_ERRORS=1   report failed writes and go on (default: stop)
#   HOOK_TIMEOUT     every hook's deadline (default 20ms: a call preempted
#                    on a loaded 2-core machine must not fail the run; Wasm
#                    hooks with a deadline over 20ms are never run inline)
#   CLIENT           ringkv (default): `ringkv bench`, which routes each
#                    write to its shard's leader; kvload: ../shared/tools/kvload
#                    (6 connections spread round-robin over the nodes, as any
#                    gRPC client that does not know the ring; its values are
#                    not JSON, so use it with CONFIGS="none trivial wasm-noop")
#
# Only 127.0.0.1 is used. Every process started here is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

BENCH_DURATION="${BENCH_DURATION:-10s}"
REPEAT="${REPEAT:-3}"
BENCH_CLIENTS="${BENCH_CLIENTS:-64}"
VALUE_SIZE="${VALUE_SIZE:-200}"
SETTLE_SECS="${SETTLE_SECS:-10}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
RINGKV="$TARGET_DIR/release/ringkv"
PORTS=(28479 28481 28483) # HTTP is gRPC+1

BENCH_NAME=bench-hooks
# shellcheck source=scripts/bench-common.sh
source "$ROOT/scripts/bench-common.sh"
rk() { RINGKV_ENDPOINTS="$(endpoints)" "$RINGKV" "$@"; }

CLIENT="${CLIENT:-ringkv}"
[[ $CLIENT == ringkv || $CLIENT == kvload ]] || { echo "CLIENT must be ringkv or kvload" >&2; exit 2; }
KVLOAD="$TARGET_DIR/kvload/release/kvload"
if [[ $CLIENT == kvload && "${SKIP_BUILD:-0}" != 1 ]]; then
    CARGO_TARGET_DIR="$TARGET_DIR/kvload" cargo build --release -q --manifest-path "$ROOT/../shared/tools/kvload/Cargo.toml"
fi
[[ $CLIENT != kvload || -x "$KVLOAD" ]] || { echo "no kvload binary at $KVLOAD" >&2; exit 2; }

# One put run of BENCH_DURATION; prints `ringkv bench --json`'s fields.
put_run() {
    if [[ $CLIENT == kvload ]]; then
        "$KVLOAD" --target ringkv --endpoints "$(endpoints)" --op put --clients "$BENCH_CLIENTS" --conns 6 \
            --secs "${BENCH_DURATION%s}" --value-size "$VALUE_SIZE" --proto-dir "$ROOT/proto" |
            jq -c '{ops: .ops, ops_per_sec: .ops_per_s, p99_ms: (.p99_us / 1000), errors: .errors, first_error: "see kvload"}'
    else
        rk bench --op put --clients "$BENCH_CLIENTS" --duration "$BENCH_DURATION" --value-size "$VALUE_SIZE" --value-json --json
    fi
}

start_three "$WORK"
sleep "$SETTLE_SECS"

printf 'function validate(key, value, ctx)\n    return true\nend\n' >"$WORK/trivial.lua"

# Per-call time of hook $1 on the node that ran it (the leader): p50 and p99 in us.
hook_call_us() {
    local best=""
    for p in "${PORTS[@]}"; do
        local j
        j="$("$RINGKV" hook list --json --endpoints "127.0.0.1:$p")"
        local line
        line="$(jq -r --arg n "$1" '.hooks[] | select(.name == $n and .stats.calls > 0) | "\(.stats.calls) \(.stats.p50_us) \(.stats.p99_us)"' <<<"$j")"
        [[ -n "$line" ]] && best="$line"
    done
    echo "${best:-0 0 0}"
}

# CPU seconds (user + system) the three nodes have used so far.
cluster_cpu() {
    local ticks=0 hz
    hz="$(getconf CLK_TCK)"
    for p in "${PIDS[@]}"; do
        read -r -a f <"/proc/$p/stat"
        ticks=$((ticks + f[13] + f[14]))
    done
    echo "$ticks / $hz" | bc -l
}

if [[ "${WARMUP:-1}" == 1 ]]; then
    # The first run writes the key space for the first time and is faster
    # than every later one; measuring it would flatter whichever config runs first.
    log "warm-up run (not recorded)"
    put_run >/dev/null
fi

declare -A OPS P99 CALL50 CALL99 CPU
HOOK_TIMEOUT="${HOOK_TIMEOUT:-20ms}"
read -r -a CONFIGS <<<"${CONFIGS:-none trivial json wasm-noop wasm-json}"
WASM="$ROOT/guest-sdk/target/wasm32-unknown-unknown/release"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    (cd guest-sdk && cargo build --target wasm32-unknown-unknown --release -q)
fi
for r in $(seq "$REPEAT"); do
    # Rotate the order each round, so no configuration always runs first.
    k=$(((r - 1) % ${#CONFIGS[@]}))
    order=("${CONFIGS[@]:$k}" "${CONFIGS[@]:0:$k}")
    for cfg in "${order[@]}"; do
        name="bench-$cfg-$r"
        case $cfg in
            none) ;;
            trivial) rk hook deploy --name "$name" --stage validate --timeout "$HOOK_TIMEOUT" --file "$WORK/trivial.lua" >/dev/null ;;
            json) rk hook deploy --name "$name" --stage validate --timeout "$HOOK_TIMEOUT" --file scripts/validate_json.lua >/dev/null ;;
            wasm-noop) rk hook deploy --kind wasm --name "$name" --stage validate --timeout "$HOOK_TIMEOUT" --file "$WASM/noop_validate.wasm" >/dev/null ;;
            wasm-json) rk hook deploy --kind wasm --name "$name" --stage validate --timeout "$HOOK_TIMEOUT" --file "$WASM/validate_json.wasm" >/dev/null ;;
            wasm-shadow | trivial-shadow)
                kind=(--kind wasm) file="$WASM/noop_validate.wasm"
                [[ $cfg == trivial-shadow ]] && kind=() file="$WORK/trivial.lua"
                rk hook deploy "${kind[@]}" --name "$name" --stage validate --timeout "$HOOK_TIMEOUT" --file "$file" >/dev/null
                rk hook deploy --shadow "${kind[@]}" --name "$name" --stage validate --timeout "$HOOK_TIMEOUT" --file "$file" >/dev/null
                ;;
        esac
        sleep 1 # every node has applied the deploy
        cpu0="$(cluster_cpu)"
        out="$(put_run)"
        cpu1="$(cluster_cpu)"
        CPU[$cfg]+="$(echo "($cpu1 - $cpu0) * 1000000 / $(jq -r '.ops' <<<"$out")" | bc -l) "
        errors="$(jq -r '.errors' <<<"$out")"
        if [[ "$errors" != 0 ]]; then
            log "$cfg: $errors errors: $(jq -r '.first_error' <<<"$out")"
            [[ "${ALLOW_ERRORS:-0}" == 1 ]] || exit 1
        fi
        OPS[$cfg]+="$(jq -r '.ops_per_sec' <<<"$out") "
        P99[$cfg]+="$(jq -r '.p99_ms' <<<"$out") "
        if [[ $cfg != none ]]; then
            read -r calls c50 c99 <<<"$(hook_call_us "$name")"
            CALL50[$cfg]+="$c50 "
            CALL99[$cfg]+="$c99 "
            [[ $cfg == *-shadow ]] && rk hook remove --shadow "$name" >/dev/null
            rk hook remove "$name" >/dev/null
            log "round $r $cfg: $(jq -r '.ops_per_sec | floor' <<<"$out") ops/s, p99 $(jq -r '.p99_ms' <<<"$out") ms, $calls hook calls, per call p50 ${c50}us p99 ${c99}us"
        else
            log "round $r $cfg: $(jq -r '.ops_per_sec | floor' <<<"$out") ops/s, p99 $(jq -r '.p99_ms' <<<"$out") ms"
        fi
    done
done

base="$(tr ' ' '\n' <<<"${OPS[none]}" | grep . | median)"
cpu_base="$(tr ' ' '\n' <<<"${CPU[none]}" | grep . | median)"
printf '%-10s %12s %10s %8s %16s %16s %14s %10s\n' config 'put ops/s' 'p99 ms' ratio 'call p50 us' 'call p99 us' 'CPU us/write' 'CPU ratio'
for cfg in "${CONFIGS[@]}"; do
    m="$(tr ' ' '\n' <<<"${OPS[$cfg]}" | grep . | median)"
    p="$(tr ' ' '\n' <<<"${P99[$cfg]}" | grep . | median)"
    c50="-" c99="-"
    if [[ $cfg != none ]]; then
        c50="$(tr ' ' '\n' <<<"${CALL50[$cfg]}" | grep . | median)"
        c99="$(tr ' ' '\n' <<<"${CALL99[$cfg]}" | grep . | median)"
    fi
    cpu="$(tr ' ' '\n' <<<"${CPU[$cfg]}" | grep . | median)"
    printf '%-10s %12.0f %10.2f %7.2fx %16s %16s %14.1f %9.2fx\n' "$cfg" "$m" "$p" "$(echo "$m / $base" | bc -l)" "$c50" "$c99" "$cpu" "$(echo "$cpu / $cpu_base" | bc -l)"
done
