# Shared by the cluster benchmarks (bench-shards.sh, bench-hooks.sh); sourced
# after the caller set BENCH_NAME, TARGET_DIR and PORTS. Provides log,
# endpoints, median, the release build (unless SKIP_BUILD=1), a WORK
# directory and PIDS of started nodes, stopped and removed on exit.

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
