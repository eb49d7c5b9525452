#!/usr/bin/env bash
# The long nemesis run: 5 nodes, 30 minutes of every nemesis (kill, pause,
# partitions, bridge, one-way drops, join-and-remove), release build.
# History, verdicts and a summary land in target/nemesis/<seed>/.
#
#   scripts/soak.sh                 # 30 min, 5 nodes, seed from the clock
#   NEMESIS_SECS=600 NEMESIS_SEED=42 scripts/soak.sh
#
# Needs root and iptables (see tests/src/nemesis.rs). Traffic stays on
# loopback addresses the run creates rules for; the run stops on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
export NEMESIS_SECS="${NEMESIS_SECS:-1800}" NEMESIS_NODES="${NEMESIS_NODES:-5}"
cargo build --release --workspace --all-targets
cargo test --release --workspace --test it -- t70_nemesis:: --nocapture
