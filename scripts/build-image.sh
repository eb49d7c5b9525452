#!/usr/bin/env bash
# Builds the ringkv container image from what is on this machine: no base
# image is pulled. By default the binary is compiled here as a fully static
# executable (glibc, libstdc++ for the Luau hook engine, all linked in) and
# copied into an image FROM scratch, with nothing else in it.
#
#   scripts/build-image.sh [TAG]                    # default tag: ringkv:latest
#   scripts/build-image.sh --binary PATH [TAG]      # package an already built binary
#
# --binary skips the compile (the test suite passes the binary it already
# built, so CI compiles the dependency tree once). A dynamically linked
# binary gets its program interpreter and every shared library it needs
# (as `ldd` resolves them on this machine) copied next to it in the image,
# so it runs FROM scratch just the same; its debug info is stripped.
#
# Static or dynamic, glibc 2.34 and later resolve host names with the `files`
# and `dns` name services built into libc, and Docker and Kubernetes mount
# /etc/hosts and /etc/resolv.conf into every container, so peers are found by
# service name (tests/it/t92_container.rs checks this).
set -euo pipefail
cd "$(dirname "$0")/.."

BINARY=""
if [[ "${1:-}" == "--binary" ]]; then
    [[ -n "${2:-}" ]] || { echo "build-image.sh: --binary needs a path" >&2; exit 2; }
    BINARY="$2"
    shift 2
fi
TAG="${1:-ringkv:latest}"
TARGET=x86_64-unknown-linux-gnu
PROFILE=container

command -v docker >/dev/null 2>&1 || { echo "build-image.sh: docker is not installed" >&2; exit 1; }

if [[ -z "$BINARY" ]]; then
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
    BINARY="${CARGO_TARGET_DIR:-target}/$TARGET/$PROFILE/ringkv"
    # A static(-pie) executable asks for no program interpreter and no shared library.
    if readelf --program-headers --dynamic "$BINARY" | grep -q -e 'INTERP' -e '(NEEDED)'; then
        echo "build-image.sh: $BINARY is dynamically linked; it cannot run FROM scratch" >&2
        exit 1
    fi
fi
[[ -x "$BINARY" ]] || { echo "build-image.sh: $BINARY is not an executable file" >&2; exit 1; }

# The build context holds the Dockerfile, the root file system (the binary,
# and the libraries of a dynamic one) and the empty data directory only, so
# nothing else of the work tree is sent to the engine. Each run gets its own
# context, so concurrent builds of different tags do not mix.
mkdir -p "${CARGO_TARGET_DIR:-target}"
CONTEXT="$(mktemp -d "${CARGO_TARGET_DIR:-target}/image-context.XXXXXX")"
trap 'rm -rf "$CONTEXT"' EXIT
mkdir -p "$CONTEXT/data" "$CONTEXT/rootfs"
cp Dockerfile "$CONTEXT/Dockerfile"
if readelf --program-headers "$BINARY" | grep -q 'INTERP'; then
    objcopy --strip-debug "$BINARY" "$CONTEXT/rootfs/ringkv"
    # ldd prints "name => /path (addr)" for libraries and "/path (addr)" for
    # the interpreter; copy each file to the same path in the image.
    ldd "$BINARY" | grep -o '/[^ ]*' | while read -r lib; do
        mkdir -p "$CONTEXT/rootfs$(dirname "$lib")"
        cp -L "$lib" "$CONTEXT/rootfs$lib"
    done
else
    cp "$BINARY" "$CONTEXT/rootfs/ringkv"
fi
docker build --quiet --tag "$TAG" "$CONTEXT" >/dev/null
echo "built $TAG ($(docker image inspect --format '{{.Size}}' "$TAG") bytes)"
