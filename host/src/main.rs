//! The `ringkv` binary: node server and command-line client.

fn main() -> std::process::ExitCode {
    ringkv::failpoint::setup();
    ringkv::cli::main()
}
