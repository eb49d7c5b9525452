//! The `ringkv` binary: node server and command-line client.

fn main() -> std::process::ExitCode {
    ringkv::cli::main()
}
