#!/usr/bin/env bash
# The whole ringkv test suite, and CI's (.ci/run runs exactly this). Installs
# what the tests need first, so it works on a fresh machine with only the
# Rust toolchain and gcc. Cheap checks run first, so a broken build fails
# before any cluster starts:
#
#   toolchain    rustfmt, clippy, the wasm32 target; a running Docker engine
#                (apt packages the tests drive install in the background)
#   fmt          cargo fmt --check, host workspace and guest SDK
#   guest-sdk    its clippy (host and wasm32), the Wasm modules the tests
#                deploy, its own tests; run beside the build, awaited after it
#   build        cargo build --workspace --all-targets with clippy's lints
#                (-D warnings) run on every workspace crate as it compiles:
#                one compile is both `cargo clippy --all-targets` and the
#                build, with the feature set the tests use, so ringkv
#                compiles once (docs/testing.md)
#   unit         unit tests and openraft's storage conformance suite
#   packages     waits for the apt packages and the Python client's venv
#   cluster      tests/it: real clusters, faults, the binary end to end,
#                containers, the dashboard in Chromium
#   fuzz         each fuzz target for RINGKV_FUZZ_SECONDS (default 10), two at
#                a time (its instrumented build runs at idle priority from
#                the fmt phase on)
#
# A table of each phase's seconds is printed at the end, pass or fail.
# RINGKV_TEST_THREADS sets the cluster tests' concurrency (default 8: most
# tests wait on timers and networks; the heaviest take a permit, see
# tests/src/lib.rs `heavy`).
set -euo pipefail
cd "$(dirname "$0")"
ROOT="$PWD"
LOGS="$ROOT/target/test-logs"
mkdir -p "$LOGS"

# --- phase timing ------------------------------------------------------------
PHASES=()
SUITE_START=$SECONDS
BACKGROUND_PIDS=()
# kill_tree PID: PID and everything it started (cargo, rustc, apt), so that
# no background job outlives a failed run.
kill_tree() {
    local child
    for child in $(pgrep -P "$1"); do kill_tree "$child"; done
    kill "$1" 2>/dev/null || true
}
summary() {
    local status=$? pid
    for pid in "${BACKGROUND_PIDS[@]}"; do kill_tree "$pid"; done
    echo
    echo "== test.sh timing (seconds) =="
    local p
    for p in "${PHASES[@]}"; do echo "$p"; done
    printf '%-12s %6d  %s\n' "total" $((SECONDS - SUITE_START)) "$([[ $status -eq 0 ]] && echo ok || echo "FAILED ($status)")"
}
trap summary EXIT

# phase NAME COMMAND...: runs COMMAND and records its wall time under NAME.
# COMMAND runs in a subshell of its own, waited for, because bash ignores
# `set -e` inside anything called from an `if` or `||`: a phase function
# stops at its first failing command.
phase() {
    local name=$1 start=$SECONDS status=0
    shift
    echo "== $name: $*"
    ("$@") &
    wait $! || status=$?
    PHASES+=("$(printf '%-12s %6d%s' "$name" $((SECONDS - start)) "$([[ $status -eq 0 ]] || echo "  FAILED")")")
    return $status
}

# background NAME COMMAND...: starts COMMAND, its output in $LOGS/NAME.log;
# await NAME waits for it and fails, printing that log, if it failed.
background() {
    local name=$1
    shift
    rm -f "$LOGS/$name.status"
    ( set +e; (set -e; "$@") >"$LOGS/$name.log" 2>&1; echo $? >"$LOGS/$name.status" ) &
    BACKGROUND_PIDS+=($!)
}
await() {
    until [[ -s "$LOGS/$1.status" ]]; do sleep 1; done
    if [[ "$(cat "$LOGS/$1.status")" != 0 ]]; then
        echo "test.sh: $1 failed:" >&2
        cat "$LOGS/$1.log" >&2
        return 1
    fi
    cat "$LOGS/$1.log"
}

SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"

# --- install -----------------------------------------------------------------
# Debian packages the tests drive: iptables (the nemesis partitions nodes,
# tests/src/nemesis.rs), chromium and chromedriver (the dashboard tests),
# docker-compose (the compose test, where the Docker CLI has no compose
# plugin). Installed in the background; the cluster phase waits for it.
apt_packages() {
    local missing=()
    command -v iptables >/dev/null 2>&1 || missing+=(iptables)
    command -v chromedriver >/dev/null 2>&1 || missing+=(chromium chromium-driver)
    docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    [[ ${#missing[@]} -eq 0 ]] && { echo "nothing to install"; return 0; }
    echo "installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
}
background install apt_packages

# The Python client example (docs/clients.md; t111 runs it): a venv in
# target/python-client with grpcio, grpcio-tools and xxhash from PyPI.
background python-client client/python/setup.sh

install_toolchain() {
    rustup component add rustfmt clippy >/dev/null
    # Wasm hooks (guest-sdk/, its own cargo workspace) are built for
    # wasm32-unknown-unknown; the Wasm hook tests deploy those modules and
    # fail, never skip, without the target.
    rustup target add wasm32-unknown-unknown
    # The container tests run this machine's Docker engine. No engine is a
    # failure, not a reason to skip them.
    if ! docker info >/dev/null 2>&1; then
        echo "test.sh: the container tests need a running Docker engine (docker info failed)" >&2
        return 1
    fi
}
phase toolchain install_toolchain

# --- cheap checks ------------------------------------------------------------
fmt_all() {
    cargo fmt --all -- --check
    (cd guest-sdk && cargo fmt --all -- --check)
}
phase fmt fmt_all

# The guest SDK is a separate workspace: the same gates, plus clippy for the
# wasm target its modules are built for (code behind cfg(target_arch =
# "wasm32") is only checked there); the modules the Wasm hook tests deploy;
# and its own tests (unit tests, the attribute macros' compile-error tests,
# and a check of every built module against the ABI). Clippy and the
# compile are one, as for the host workspace below (the tests then rebuild
# the SDK's own crates without clippy). It runs beside the host
# build, which leaves a core idle in its serial stretches (linking, the
# last crates); the cluster tests need its modules, so it is awaited first.
CLIPPY_DRIVER="$(rustc --print sysroot)/bin/clippy-driver"
[[ -x "$CLIPPY_DRIVER" ]] || { echo "test.sh: $CLIPPY_DRIVER is missing (rustup component add clippy)" >&2; exit 1; }
with_clippy() {
    RUSTC_WORKSPACE_WRAPPER="$CLIPPY_DRIVER" CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__" "$@"
}
guest_sdk() {
    cd guest-sdk
    with_clippy cargo build --target wasm32-unknown-unknown --release
    with_clippy cargo build --all-targets
    # Without the wrapper: the macros' compile-error tests (trybuild) run
    # cargo themselves and compare rustc's exact output. This recompiles the
    # SDK's own small crates, not their dependencies.
    cargo test
}
background guest-sdk guest_sdk

# The fuzz harnesses' instrumented build (docs/security.md, "Fuzzing") shares
# nothing with the host build; it runs at idle priority from here on, on
# whatever CPU the build (while it links) and the tests leave unused, and at
# full speed once they are done.
background fuzz-build env FUZZ_PROFILE=quick chrt --idle 0 nice -n 19 fuzz/run.sh build

# --- build once, then test ---------------------------------------------------
# `cargo clippy` is `cargo check` with clippy-driver as the workspace crates'
# compiler; the same wrapper on `cargo build` runs the same lints and also
# generates code, so the dependencies compile once instead of once checked
# for clippy and once built. Every cargo call below takes the same wrapper,
# or it would rebuild the workspace crates.
host_cargo() {
    with_clippy cargo "$@"
}
# --all-targets resolves features as `cargo test` does (dev-dependencies and
# the tests crate's `failpoints` included), so this builds the ringkv binary
# the process tests run and every test binary in one go, and the test runs
# below compile nothing more.
phase build host_cargo build --workspace --all-targets
phase guest-sdk await guest-sdk
phase unit host_cargo test --workspace --lib --bins --test storage_conformance

await_packages() {
    await install
    await python-client
}
phase packages await_packages
phase cluster host_cargo test --workspace --test it -- --test-threads "${RINGKV_TEST_THREADS:-8}"

# Each fuzz target runs for its budget; a crash fails the run and leaves its
# input in target/fuzz/artifacts/.
fuzz() {
    await fuzz-build >/dev/null
    FUZZ_PROFILE=quick fuzz/run.sh "${RINGKV_FUZZ_SECONDS:-10}"
}
phase fuzz fuzz
