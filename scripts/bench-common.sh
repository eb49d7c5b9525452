# Shared by the cluster benchmarks (bench-shards.sh, bench-hooks.sh); sourced
# after the caller set BENCH_NAME, TARGET_DIR and PORTS. Provides log,
# endpoints, median, the release build (unless SKIP_BUILD=1), a WORK
# directory and PIDS of started nodes, stopped and removed on exit, and
# start_node / start_three to start them.

log() { printf '[%s %(%H:%M:%S)T] %s\n' "$BENCH_NAME" -1 "$*" >&2; }

command -v jq >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null; }
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building ringkv (release) into $TARGET_DIR"
    CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -p ringkv
fi

WORK="$(mktemp -d -t "$BENCH_NAME.XXXXXX")"
PIDS=()
stop_cluster() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap 'stop_cluster; rm -rf "$WORK"' EXIT INT TERM

endpoints() { local IFS=,; echo "${PORTS[*]/#/127.0.0.1:}"; }

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# start_node ID DIR [serve args...]: starts node ID in the background, gRPC on
# PORTS[ID-1] and HTTP one above, its data in DIR/nID and its log in DIR/nID.log.
start_node() {
    local id=$1 dir=$2 port=${PORTS[$(($1 - 1))]}
    shift 2
    "$RINGKV" serve --id "$id" --listen "127.0.0.1:$port" --http "127.0.0.1:$((port + 1))" \
        --data-dir "$dir/n$id" "$@" >"$dir/n$id.log" 2>&1 &
    PIDS+=($!)
}

# start_three DIR [serve args...]: nodes 1-3 (2 and 3 join 1), then waits
# until every shard has three replicas and none is moving.
start_three() {
    local dir=$1 id join
    shift
    for id in 1 2 3; do
        join=()
        ((id > 1)) && join=(--join "127.0.0.1:${PORTS[0]}")
        start_node "$id" "$dir" "$@" "${join[@]}"
        sleep 1
    done
    local deadline=$((SECONDS + 120))
    until RINGKV_ENDPOINTS="$(endpoints)" "$RINGKV" cluster status --json 2>/dev/null |
        jq -e '(.shards | length) > 0 and all(.shards[]; (.replicas | length) == 3 and (.moving | not))' >/dev/null; do
        ((SECONDS < deadline)) || { log "cluster did not form"; exit 1; }
        sleep 1
    done
}
