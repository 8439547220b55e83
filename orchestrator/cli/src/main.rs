//! `sagaflow`: the server, and the operator CLI that talks to it.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// glibc's allocator took ~14% of the server's CPU under load (consolidation
/// and free-list walks); mimalloc's thread-local pages avoid most of it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) if e.use_stderr() && json_requested() => {
            // A program that asked for JSON gets a JSON usage error too.
            let text = e.to_string();
            let message = text.lines().next().unwrap_or_default().trim_start_matches("error: ");
            eprintln!("{}", serde_json::json!({"error": {"code": "USAGE", "message": message}}));
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    let json_errors = args.output == cli::Output::Json;
    // Before the runtime starts, so that every thread (and every process
    // started from here, such as the bench's server) inherits it.
    match sagaflow_server::os_tuning::tune_from_env() {
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
    let outcome = runtime.block_on(cli::run(args));
    // Whatever a command left running (a fenced-off server's tasks, say)
    // must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let failure = e.downcast_ref::<cli::Failure>();
            if matches!(failure, Some(cli::Failure::ClosedPipe)) {
                // `sagaflow events tail | head -1`: the reader had what it wanted.
                return ExitCode::SUCCESS;
            }
            let message = one_line(&e);
            if json_errors {
                let code = failure.map(cli::Failure::code);
                eprintln!("{}", serde_json::json!({"error": {"code": code, "message": message}}));
            } else {
                eprintln!("error: {message}");
            }
            ExitCode::from(failure.map_or(cli::exit::ERROR, cli::Failure::exit_code))
        }
    }
}

/// The cause chain on one line. Many errors (tonic's, std's I/O errors)
/// already print their source, so a cause that the line already says is
/// left out rather than repeated.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain().map(ToString::to_string) {
        if line.contains(&cause) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&cause);
    }
    line
}

/// Whether the raw arguments ask for `--output json` (read before clap
/// parsed them, for a usage error).
fn json_requested() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2).any(|w| w[0] == "--output" && w[1] == "json") || args.iter().any(|a| a == "--output=json")
}
