//! Crash points for fault-injection tests (cargo feature `failpoints`).
//!
//! A crash point aborts the process — no unwinding, no flushing — when it is
//! armed through the `FAILPOINTS` environment variable read at start, e.g.
//! `FAILPOINTS="apply=1*return"` crashes the first time a state-machine apply
//! is about to commit. Points:
//!
//! | name | where |
//! |---|---|
//! | `log-before-fsync` | a log batch is written to the journal, not yet fsynced |
//! | `log-after-fsync` | a log batch is fsynced, its writers not yet told |
//! | `apply` | applied entries are about to be committed to the state machine |
//! | `snapshot-install` | a received snapshot is about to replace the state machine |
//! | `shard-move` | a shard move added its new replicas and is about to remove the old ones |
//! | `reshard-batch` | a shard leader moved a batch of keys for a re-shard job and reported it |
//! | `split-start` | the leader of a shard being split is about to create the new shard's Raft group |
//! | `forward-reply-lost` | *does not abort*: a shard leader applied a forwarded write and answers the forwarding node `UNAVAILABLE` instead of the result, as a connection lost after the apply would |
//!
//! Without the feature every crash point compiles to nothing, and a process
//! started with `FAILPOINTS` set refuses to run: a test that arms a crash
//! point in a binary built without them would otherwise pass without ever
//! crashing.

/// Starts reading `FAILPOINTS`; call once at process start. Exits with
/// status 2 when `FAILPOINTS` is set but this build has no crash points.
pub fn setup() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
    #[cfg(not(feature = "failpoints"))]
    if std::env::var_os("FAILPOINTS").is_some() {
        eprintln!(
            "error: FAILPOINTS is set, but this ringkv was built without crash points \
             (build it with `--features failpoints`, as `cargo build --workspace --all-targets` does)"
        );
        std::process::exit(2);
    }
}

/// Aborts the process if the crash point `name` is armed.
#[inline]
pub fn crash_point(name: &str) {
    #[cfg(feature = "failpoints")]
    if fail::eval(name, |_| ()).is_some() {
        eprintln!("crash point {name} reached: aborting");
        std::process::abort();
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// True, once per arming, when the fault point `name` is armed: the caller
/// then injects its fault instead of aborting.
#[inline]
pub fn fault_point(name: &str) -> bool {
    #[cfg(feature = "failpoints")]
    if fail::eval(name, |_| ()).is_some() {
        eprintln!("fault point {name} reached: injecting its fault");
        return true;
    }
    let _ = name;
    false
}
