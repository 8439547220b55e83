//! `cargo xtask`: Sagaflow's project tasks, in Rust so that they run wherever cargo does.
//!
//! `cargo xtask test` is the one test command, for a person and for CI alike (.ci/run calls it):
//! it checks the tools the test stages need (installing them with apt-get when it may), then runs
//! the stages in order and stops at the first that fails, naming it.

mod needs;
mod stages;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::stages::{Context, Stage};

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "Sagaflow's project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run every test stage CI runs, after checking (or installing) the tools they need.
    ///
    /// The stages, in order: the alert rules (promtool), the Grafana dashboard's JSON, `cargo test
    /// --workspace`, the examples (custom_saga, quickstart, trip-booking, the Python client), the bench smoke run
    /// and a 60 s chaos run (seed $SAGAFLOW_CHAOS_SEED, else 42). It stops at the first stage that
    /// fails and exits non-zero, naming that stage.
    ///
    /// The tools: nats-server, promtool (Debian package `prometheus`) and python3 with venv support.
    /// When one is missing and this runs as root on a machine with apt-get, it installs the Debian
    /// packages; otherwise it stops and prints the command that installs them.
    Test(TestArgs),
}

#[derive(Args)]
struct TestArgs {
    /// Run only `cargo test --workspace`, and check only the tools it needs (nats-server).
    #[arg(long)]
    quick: bool,

    /// Never run apt-get: if a tool is missing, say which, print the command that installs it, and
    /// stop.
    #[arg(long)]
    no_install: bool,

    /// Passed on to `cargo test --workspace`, after a `--`: `cargo xtask test --quick -- --test
    /// compensation`, or `… -- -- --nocapture` for the test binaries.
    #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
    cargo_test_args: Vec<String>,
}

fn main() -> ExitCode {
    let Task::Test(args) = Cli::parse().task;
    match test(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn test(args: TestArgs) -> Result<()> {
    let started = Instant::now();
    let stages: &[Stage] = if args.quick { &[Stage::CargoTest] } else { &Stage::ALL };
    needs::ensure(stages, !args.no_install)?;

    let context = Context::new(args.cargo_test_args);
    let mut timings = Vec::with_capacity(stages.len());
    for (index, stage) in stages.iter().enumerate() {
        println!("==> [{}/{}] {}", index + 1, stages.len(), stage.title());
        let stage_started = Instant::now();
        let outcome = stage.run(&context);
        let took = stage_started.elapsed();
        if let Err(error) = outcome {
            print_timings(&timings);
            anyhow::bail!("stage `{}` failed after {}: {error:#}", stage.title(), human(took));
        }
        println!("==> [{}/{}] {}: ok in {}", index + 1, stages.len(), stage.title(), human(took));
        timings.push((*stage, took));
    }
    print_timings(&timings);
    println!("==> all {} stages passed in {}", stages.len(), human(started.elapsed()));
    Ok(())
}

fn print_timings(timings: &[(Stage, Duration)]) {
    if timings.is_empty() {
        return;
    }
    println!("==> stage times");
    for (stage, took) in timings {
        println!("    {:<44} {:>8}", stage.title(), human(*took));
    }
}

/// `0.4s`, `59.9s`, `4m07s`: a duration as a person reads it in a log.
fn human(duration: Duration) -> String {
    let seconds = duration.as_secs_f64();
    if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else {
        let whole = duration.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_seconds_then_minutes() {
        assert_eq!(human(Duration::from_millis(400)), "0.4s");
        assert_eq!(human(Duration::from_millis(59_940)), "59.9s");
        assert_eq!(human(Duration::from_secs(247)), "4m07s");
    }

    #[test]
    fn the_flags_parse() {
        let cli = Cli::try_parse_from(["cargo xtask", "test", "--quick", "--no-install", "--", "--test", "cli"])
            .expect("the flags parse");
        let Task::Test(args) = cli.task;
        assert!(args.quick && args.no_install);
        assert_eq!(args.cargo_test_args, ["--test", "cli"]);
    }

    #[test]
    fn the_help_describes_every_flag() {
        use clap::CommandFactory;
        let mut command = Cli::command();
        let test = command.find_subcommand_mut("test").expect("a test task");
        for argument in test.get_arguments() {
            assert!(argument.get_help().is_some(), "--{} has no help", argument.get_id());
        }
    }
}
