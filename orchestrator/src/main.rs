//! `sagaflow`: the server, and the operator CLI that talks to it.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// glibc's allocator took ~14% of the server's CPU under load (consolidation
/// and free-list walks); mimalloc's thread-local pages avoid most of it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // Before the runtime starts, so that every thread (and every process
    // started from here, such as the bench's server) inherits it.
    match sagaflow_orchestrator::os_tuning::tune_from_env() {
        // A locked-down kernel: the defaults still work.
        Ok(refused) => refused.iter().for_each(|e| eprintln!("warning: {e}; running without it")),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the cause chain.
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}
