//! The `ringkv` binary: node server and command-line client.

/// mimalloc rather than glibc's malloc: a node allocates and frees small
/// blocks on many threads (request buffers, log entries, hook calls), where
/// glibc's arenas spent a tenth of a loaded node's CPU (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ringkv::failpoint::setup();
    ringkv::cli::main()
}
