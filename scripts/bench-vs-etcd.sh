#!/usr/bin/env bash
# Side-by-side benchmark: a 3-node ringkv cluster vs a 3-member etcd cluster,
# both on loopback on this machine, driven by the same load generator
# (`ringkv bench`, which speaks etcd v3 with --target etcd).
#
# Workloads (each with BENCH_CLIENTS closed-loop clients, default 64):
#   put          - 100% puts of VALUE_SIZE-byte values over KEYS keys
#   get-lin      - 100% linearizable gets (etcd: default linearizable Range)
#   get-eventual - 100% eventual gets     (etcd: serializable Range)
# Each (workload, system) pair is measured REPEAT times, alternating which
# system goes first, and the median ops/s and median p99 are reported.
#
# Environment knobs (all optional):
#   BENCH_DURATION   per-measurement duration          (default 10s)
#   KEYS             key space size                     (default 20000)
#   REPEAT           measurements per pair              (default 3)
#   BENCH_CLIENTS    concurrent clients                 (default 64)
#   VALUE_SIZE       value bytes                        (default 128)
#   BENCH_CMD_TIMEOUT  hard limit per bench command, s  (default 300)
#   CARGO_TARGET_DIR cargo target dir                   (default target/)
#   SHARDS           ringkv's --shards                  (default 1)
#   CLIENT           ringkv: `ringkv bench`, which routes each request to
#                    its shard's leader; kvload: ../shared/tools/kvload, an
#                    independent client that spreads requests over the nodes
#                    round-robin as etcd's and most gRPC clients do
#                    (default ringkv)
#   SKIP_BUILD=1     use the existing release binary
#   RESULTS_DIR      where raw JSON + logs are kept     (default $TARGET/bench-vs-etcd)
#
# Only 127.0.0.1 is used. Every process started here is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

BENCH_DURATION="${BENCH_DURATION:-10s}"
KEYS="${KEYS:-20000}"
REPEAT="${REPEAT:-3}"
BENCH_CLIENTS="${BENCH_CLIENTS:-64}"
VALUE_SIZE="${VALUE_SIZE:-128}"
BENCH_CMD_TIMEOUT="${BENCH_CMD_TIMEOUT:-300}"
SHARDS="${SHARDS:-1}"
CLIENT="${CLIENT:-ringkv}"
[[ $CLIENT == ringkv || $CLIENT == kvload ]] || { echo "CLIENT must be ringkv or kvload" >&2; exit 2; }
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
RINGKV="$TARGET_DIR/release/ringkv"
RESULTS_DIR="${RESULTS_DIR:-$TARGET_DIR/bench-vs-etcd}"

# Ports (loopback only).
ETCD_CLIENT_PORTS=(23790 23791 23792)
ETCD_PEER_PORTS=(23800 23801 23802)
RINGKV_GRPC_PORTS=(27379 27381 27383)   # HTTP is gRPC+1

log() { printf '[bench-vs-etcd %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- setup ----
need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
command -v jq >/dev/null 2>&1 || need_apt+=(jq)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if ((${#need_apt[@]})); then
    log "installing: ${need_apt[*]}"
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building ringkv (release, --features etcd) into $TARGET_DIR"
    CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -p ringkv --features etcd
fi
[[ -x "$RINGKV" ]] || die "no binary at $RINGKV"
KVLOAD="$TARGET_DIR/kvload/release/kvload"
if [[ $CLIENT == kvload && "${SKIP_BUILD:-0}" != 1 ]]; then
    [[ -f "$ROOT/../shared/tools/kvload/Cargo.toml" ]] || die "CLIENT=kvload needs ../shared/tools/kvload next to the project"
    log "building kvload into $TARGET_DIR/kvload"
    CARGO_TARGET_DIR="$TARGET_DIR/kvload" cargo build --release --manifest-path "$ROOT/../shared/tools/kvload/Cargo.toml"
fi
[[ $CLIENT != kvload || -x "$KVLOAD" ]] || die "no kvload binary at $KVLOAD"

WORK="$(mktemp -d -t bench-vs-etcd.XXXXXX)"
mkdir -p "$RESULTS_DIR"
RUN_ID="$(date +%Y%m%d-%H%M%S)"
OUT="$RESULTS_DIR/$RUN_ID"
mkdir -p "$OUT/logs"
PIDS=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if ((${#PIDS[@]})); then
        log "stopping ${#PIDS[@]} server processes"
        for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
        # escalate to SIGKILL for anything still running after 10s
        (sleep 10 && for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done) &
        local watchdog=$!
        for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
        kill "$watchdog" 2>/dev/null || true
        wait "$watchdog" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    log "raw results and server logs: $OUT"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for p in "${ETCD_CLIENT_PORTS[@]}" "${ETCD_PEER_PORTS[@]}" "${RINGKV_GRPC_PORTS[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "port $p on 127.0.0.1 is already in use"; fi
done

# ----------------------------------------------------------------- etcd ----
initial_cluster=""
for i in 0 1 2; do
    initial_cluster+="${initial_cluster:+,}e$((i + 1))=http://127.0.0.1:${ETCD_PEER_PORTS[$i]}"
done
ETCD_ENDPOINTS=""
for i in 0 1 2; do
    name="e$((i + 1))"
    curl_url="http://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}"
    ETCD_ENDPOINTS+="${ETCD_ENDPOINTS:+,}$curl_url"
    mkdir -p "$WORK/etcd-$name"
    etcd --name "$name" --data-dir "$WORK/etcd-$name" \
        --listen-client-urls "$curl_url" --advertise-client-urls "$curl_url" \
        --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[$i]}" \
        --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[$i]}" \
        --initial-cluster "$initial_cluster" --initial-cluster-state new \
        --initial-cluster-token bench-vs-etcd \
        >"$OUT/logs/etcd-$name.log" 2>&1 &
    PIDS+=($!)
done
log "started etcd members: $ETCD_ENDPOINTS"

# --------------------------------------------------------------- ringkv ----
RINGKV_ENDPOINTS=""
for i in 0 1 2; do
    id=$((i + 1))
    g=${RINGKV_GRPC_PORTS[$i]}
    RINGKV_ENDPOINTS+="${RINGKV_ENDPOINTS:+,}127.0.0.1:$g"
    join=()
    ((i == 0)) || join=(--join "127.0.0.1:${RINGKV_GRPC_PORTS[0]}")
    mkdir -p "$WORK/ringkv-$id"
    NO_COLOR=1 "$RINGKV" serve --id "$id" --listen "127.0.0.1:$g" --http "127.0.0.1:$((g + 1))" \
        --data-dir "$WORK/ringkv-$id" --shards "$SHARDS" "${join[@]}" \
        >"$OUT/logs/ringkv-$id.log" 2>&1 &
    PIDS+=($!)
    if ((i == 0)); then
        # let node 1 bootstrap before others try to join it
        for _ in $(seq 1 100); do
            curl -fsS "http://127.0.0.1:$((g + 1))/healthz" >/dev/null 2>&1 && break
            sleep 0.1
        done
    fi
done
log "started ringkv nodes: $RINGKV_ENDPOINTS"

# ------------------------------------------------------------ readiness ----
etcd_ready() {
    local p
    for p in "${ETCD_CLIENT_PORTS[@]}"; do
        curl -fsS --max-time 2 "http://127.0.0.1:$p/health" 2>/dev/null | grep -q '"health":"true"' || return 1
    done
}
ringkv_ready() {
    local st
    st="$(timeout 5 "$RINGKV" cluster status --endpoints "127.0.0.1:${RINGKV_GRPC_PORTS[0]}" --json 2>/dev/null)" || return 1
    [[ "$(jq '[.nodes[] | select(.role == "voter")] | length' <<<"$st")" == 3 ]] || return 1
    # every group has a leader, every shard its 3 replicas in place
    [[ "$(jq '[.groups[] | select((.leader_id // 0) == 0)] | length' <<<"$st")" == 0 ]] || return 1
    jq -e '(.shards | length) > 0 and all(.shards[]; (.replicas | length) == 3 and (.moving | not))' <<<"$st" >/dev/null ||
        return 1
    timeout 5 "$RINGKV" put --endpoints "$RINGKV_ENDPOINTS" bench-vs-etcd/ready 1 >/dev/null 2>&1 || return 1
}
wait_until() {
    local what=$1 fn=$2 deadline=$((SECONDS + 60))
    until "$fn"; do
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null || die "a server process ($p) exited; see $OUT/logs"; done
        ((SECONDS < deadline)) || die "$what not healthy after 60s; see $OUT/logs"
        sleep 0.5
    done
    log "$what is healthy"
}
wait_until etcd etcd_ready
wait_until ringkv ringkv_ready
timeout 5 "$RINGKV" cluster status --endpoints "127.0.0.1:${RINGKV_GRPC_PORTS[0]}" --json >"$OUT/ringkv-status-before.json" || true

# ---------------------------------------------------------------- bench ----
ETCD_PIDS=("${PIDS[@]:0:3}")
RINGKV_PIDS=("${PIDS[@]:3:3}")
CLK_TCK="$(getconf CLK_TCK)"
# cpu_ticks PID... -> user+system clock ticks used so far by those processes
cpu_ticks() {
    local p t=0 f
    for p in "$@"; do
        # fields after the ")" that ends the command name: utime is the 12th, stime the 13th
        f="$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null)" || continue
        set -- $f
        t=$((t + ${12} + ${13}))
    done
    echo "$t"
}

# kvload_bench SYSTEM ENDPOINTS OP CONSISTENCY [--duration D] [--no-preload]:
# the same run with kvload, its JSON line renamed to `ringkv bench`'s fields.
kvload_bench() {
    local sys=$1 endpoints=$2 op=$3 consistency=$4 secs=2 prefill=(--prefill)
    shift 4
    while (($#)); do
        case $1 in
            --duration) secs="${2%s}"; shift ;;
            --no-preload) prefill=() ;;
        esac
        shift
    done
    [[ $op == put ]] && prefill=()
    local level=l
    [[ $consistency == eventual ]] && level=s
    timeout --kill-after=10 "$BENCH_CMD_TIMEOUT" "$KVLOAD" --target "$sys" --endpoints "$endpoints" --op "$op" \
        --consistency "$level" --clients "$BENCH_CLIENTS" --conns 6 --secs "$secs" --keys "$KEYS" \
        --value-size "$VALUE_SIZE" --proto-dir "$ROOT/proto" "${prefill[@]}" |
        jq -c '{ops: .ops, ops_per_sec: .ops_per_s, p50_ms: (.p50_us / 1000), p99_ms: (.p99_us / 1000),
                p999_ms: (.p999_us / 1000), errors: .errors}'
}

# bench SYSTEM WORKLOAD TAG [extra args...] -> prints the JSON line
bench() {
    local sys=$1 wl=$2 tag=$3
    shift 3
    local endpoints op consistency
    case $sys in
        ringkv) endpoints=$RINGKV_ENDPOINTS ;;
        etcd) endpoints=$ETCD_ENDPOINTS ;;
    esac
    case $wl in
        put) op=put consistency=linearizable ;;
        get-lin) op=get consistency=linearizable ;;
        get-eventual) op=get consistency=eventual ;;
    esac
    local json rc=0 pids c0 c1
    if [[ $sys == ringkv ]]; then pids=("${RINGKV_PIDS[@]}"); else pids=("${ETCD_PIDS[@]}"); fi
    c0="$(cpu_ticks "${pids[@]}")"
    if [[ $CLIENT == kvload ]]; then
        json="$(kvload_bench "$sys" "$endpoints" "$op" "$consistency" "$@" 2>>"$OUT/logs/bench-$sys.stderr")" || rc=$?
    else
        json="$(timeout --kill-after=10 "$BENCH_CMD_TIMEOUT" "$RINGKV" bench --target "$sys" \
            --endpoints "$endpoints" --op "$op" --consistency "$consistency" \
            --clients "$BENCH_CLIENTS" --value-size "$VALUE_SIZE" --keys "$KEYS" \
            --json "$@" 2>>"$OUT/logs/bench-$sys.stderr")" || rc=$?
    fi
    if ((rc != 0)) || [[ -z "$json" ]]; then
        log "bench $sys $wl ($tag) failed (exit $rc); see $OUT/logs/bench-$sys.stderr"
        json='{"ops_per_sec":0,"p50_ms":null,"p99_ms":null,"p999_ms":null,"errors":null,"first_error":"bench command failed or timed out"}'
    fi
    c1="$(cpu_ticks "${pids[@]}")"
    # server CPU (all 3 processes) in ms per 1000 completed ops
    json="$(jq -c --arg sys "$sys" --arg wl "$wl" --arg tag "$tag" --argjson cpu_ms "$(((c1 - c0) * 1000 / CLK_TCK))" \
        '. + {system:$sys, workload:$wl, tag:$tag, server_cpu_ms:$cpu_ms,
              server_cpu_ms_per_kop: (if (.ops // 0) > 0 then ($cpu_ms * 1000 / .ops) else null end)}' <<<"$json")"
    echo "$json" >>"$OUT/results.jsonl"
    echo "$json"
}

# Preload every key once per system (ringkv bench preloads before a get run;
# a short get run does it and doubles as a warm-up). Measurements use --no-preload.
for sys in ringkv etcd; do
    log "preloading $KEYS keys into $sys"
    r="$(bench "$sys" get-lin preload --duration 2s)"
    log "  warm-up: $(jq -r '"\(.ops_per_sec|floor) ops/s errors=\(.errors)"' <<<"$r")"
done

WORKLOADS=(put get-lin get-eventual)
for ((rep = 1; rep <= REPEAT; rep++)); do
    for wl in "${WORKLOADS[@]}"; do
        if ((rep % 2)); then order=(ringkv etcd); else order=(etcd ringkv); fi
        for sys in "${order[@]}"; do
            r="$(bench "$sys" "$wl" "rep$rep" --duration "$BENCH_DURATION" --no-preload)"
            log "$(jq -r '"rep \(.tag|ltrimstr("rep")) \(.workload) \(.system): \(.ops_per_sec|floor) ops/s p50=\(.p50_ms)ms p99=\(.p99_ms)ms errors=\(.errors) server-cpu=\(.server_cpu_ms)ms" + (if .first_error then " first_error=\(.first_error)" else "" end)' <<<"$r")"
        done
    done
done

timeout 5 "$RINGKV" cluster status --endpoints "127.0.0.1:${RINGKV_GRPC_PORTS[0]}" --json >"$OUT/ringkv-status-after.json" || true

# -------------------------------------------------------------- summary ----
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "nan"} else if (NR%2) {print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2}}'; }
med() { # med SYSTEM WORKLOAD FIELD
    jq -r --arg s "$1" --arg w "$2" "select(.system==\$s and .workload==\$w and (.tag|startswith(\"rep\"))) | .$3 // \"nan\"" \
        "$OUT/results.jsonl" | median
}
errs() {
    jq -r --arg s "$1" --arg w "$2" 'select(.system==$s and .workload==$w and (.tag|startswith("rep"))) | .errors // 0' \
        "$OUT/results.jsonl" | awk '{t+=$1} END {print t+0}'
}

{
    echo
    echo "ringkv vs etcd: 3 nodes each on 127.0.0.1, shards=$SHARDS client=$CLIENT clients=$BENCH_CLIENTS value=${VALUE_SIZE}B keys=$KEYS duration=$BENCH_DURATION repeat=$REPEAT (medians)"
    printf '%-14s | %12s %8s %7s %6s | %12s %8s %7s %6s | %11s\n' workload "ringkv ops/s" "p99 ms" "cpu/kop" errors "etcd ops/s" "p99 ms" "cpu/kop" errors "ringkv/etcd"
    printf '%s\n' "---------------+--------------------------------------+--------------------------------------+------------"
    for wl in "${WORKLOADS[@]}"; do
        ro=$(med ringkv "$wl" ops_per_sec)
        rp=$(med ringkv "$wl" p99_ms)
        rc=$(med ringkv "$wl" server_cpu_ms_per_kop)
        eo=$(med etcd "$wl" ops_per_sec)
        ep=$(med etcd "$wl" p99_ms)
        ec=$(med etcd "$wl" server_cpu_ms_per_kop)
        ratio=$(awk -v a="$ro" -v b="$eo" 'BEGIN { if (b+0 > 0) printf "%.2fx", a/b; else print "n/a" }')
        label=$wl
        [[ $wl == get-eventual ]] && label="get-eventual*"
        printf '%-14s | %12.0f %8.2f %7.0f %6s | %12.0f %8.2f %7.0f %6s | %11s\n' "$label" "$ro" "$rp" "$rc" "$(errs ringkv "$wl")" \
            "$eo" "$ep" "$ec" "$(errs etcd "$wl")" "$ratio"
    done
    echo "* etcd: serializable reads. p99 = median over repeats of each run's p99; errors = sum over repeats;"
    echo "  cpu/kop = CPU ms used by the 3 server processes per 1000 completed ops (the bench client's CPU not counted)."
} | tee "$OUT/summary.txt"
