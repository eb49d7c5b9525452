//! ringkv's integration tests: one test binary, one module per area, so the
//! whole suite links once (wasmtime, Cranelift and Luau included) and shares
//! the harness in `tests/src` (`ringkv_tests`).
//!
//! Modules are named by priority, as their files were: `t10_` core
//! replication first, `t9x_` end-to-end runs of the binary, `t1xx_` hooks,
//! security and re-sharding. Run one area with a filter, e.g.
//! `cargo test -p ringkv-tests --test it t70_nemesis::` (after `cargo build
//! --workspace --all-targets`: the process tests run `target/<profile>/ringkv`).
//!
//! Tests that start many processes take a [`ringkv_tests::heavy`] permit, so
//! the suite can run with more test threads than the machine has cores
//! without starving the clusters it starts.

mod t100_hooks_examples;
mod t101_hooks_hostile;
mod t102_hooks_hot_swap;
mod t10_replication;
mod t110_tls;
mod t111_auth;
mod t112_hardening;
mod t120_wasm_hooks;
mod t121_wasm_hostile;
mod t122_resharding;
mod t123_reshard_backout;
mod t124_wasm_fresh_instances;
mod t125_shard_split_merge;
mod t126_auto_split;
mod t127_size_load_resize;
mod t13_first_seconds;
mod t14_cluster_identity;
mod t15_readme_tour;
mod t20_partition;
mod t30_bad_input;
mod t40_ttl_sweep;
mod t50_placement;
mod t60_client_routing;
mod t70_nemesis;
mod t80_failpoints;
mod t90_e2e_cli;
mod t91_backup;
mod t91_cli_faults;
mod t92_container;
mod t93_k8s_manifests;
mod t94_dashboard;
mod t95_status_truth;
