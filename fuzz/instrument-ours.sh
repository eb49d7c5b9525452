#!/usr/bin/env bash
# RUSTC_WRAPPER for fuzz/run.sh: adds libFuzzer's coverage instrumentation
# ($RINGKV_FUZZ_INSTRUMENT) when the crate is one of ringkv's own, and runs
# rustc unchanged for every dependency.
rustc=$1
shift
crate=""
prev=""
for arg in "$@"; do
    [[ "$prev" == --crate-name ]] && crate=$arg
    prev=$arg
done
case "$crate" in
ringkv | ringkv_node | ringkv_raft | ringkv_hooks | ringkv_hook_abi | ringkv_storage | ringkv_client | client_request | peer_payload | hook_record | snapshot)
    # shellcheck disable=SC2086 # the flags are separate words
    exec "$rustc" "$@" $RINGKV_FUZZ_INSTRUMENT
    ;;
esac
exec "$rustc" "$@"
