#!/usr/bin/env bash
# Makes the Python environment the client example runs in (docs/clients.md):
# a venv at $1 (default target/python-client) with requirements.txt
# installed. test.sh runs it; t111_auth runs the example with that venv's
# python. Does nothing when the venv already has these exact requirements.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/../../target/python-client}"
stamp="$venv/requirements.txt"
if [[ -x "$venv/bin/python" ]] && cmp -s "$here/requirements.txt" "$stamp"; then
    echo "python client venv up to date: $venv"
    exit 0
fi
if ! python3 -m venv "$venv"; then
    # Debian's python3 has no venv module without python3-venv.
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$venv"
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
cp "$here/requirements.txt" "$stamp"
echo "python client venv ready: $venv"
