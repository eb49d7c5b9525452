#!/usr/bin/env bash
# Builds the ringkv container image from what is on this machine: no base
# image is pulled. The binary is compiled here as a fully static executable
# (glibc, libstdc++ for the Luau hook engine, all linked in) and copied into an
# image FROM scratch, with nothing else in it.
#
#   scripts/build-image.sh [TAG]        # default tag: ringkv:latest
#
# Static glibc still resolves host names: glibc 2.34 and later carry the
# `files` and `dns` name services inside libc, and Docker and Kubernetes
# mount /etc/hosts and /etc/resolv.conf into every container, so peers are
# found by service name (tests/tests/t92_container.rs checks this).
set -euo pipefail
cd "$(dirname "$0")/.."

TAG="${1:-ringkv:latest}"
TARGET=x86_64-unknown-linux-gnu
PROFILE=container

command -v docker >/dev/null 2>&1 || { echo "build-image.sh: docker is not installed" >&2; exit 1; }
# The Luau hook engine is C++: linking it statically needs g++ and libstdc++.a.
if ! command -v g++ >/dev/null 2>&1; then
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq g++ >/dev/null
fi
rustup target list --installed 2>/dev/null | grep -qx "$TARGET" || rustup target add "$TARGET"

# An explicit --target keeps build scripts and proc macros dynamic: only the
# shipped binary gets +crt-static.
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build -p ringkv --bin ringkv --locked --profile "$PROFILE" --target "$TARGET"
BIN="${CARGO_TARGET_DIR:-target}/$TARGET/$PROFILE/ringkv"
# A static(-pie) executable asks for no program interpreter and no shared library.
if readelf --program-headers --dynamic "$BIN" | grep -q -e 'INTERP' -e '(NEEDED)'; then
    echo "build-image.sh: $BIN is dynamically linked; it cannot run FROM scratch" >&2
    exit 1
fi

# The build context holds the Dockerfile, the binary and the empty data
# directory only, so nothing else of the work tree is sent to the engine.
CONTEXT="${CARGO_TARGET_DIR:-target}/image-context"
rm -rf "$CONTEXT"
mkdir -p "$CONTEXT/data"
cp Dockerfile "$CONTEXT/Dockerfile"
cp "$BIN" "$CONTEXT/ringkv"
docker build --quiet --tag "$TAG" "$CONTEXT" >/dev/null
echo "built $TAG ($(docker image inspect --format '{{.Size}}' "$TAG") bytes)"
