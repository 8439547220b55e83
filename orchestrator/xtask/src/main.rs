//! `cargo xtask`: Sagaflow's project tasks, in Rust so that they run wherever cargo does.
//!
//! `cargo xtask test` is the one test command, for a person and for CI alike (.ci/run calls it):
//! it checks the tools the test stages need (installing them with apt-get when it may), then runs
//! the stages in order and stops at the first that fails, naming it.

mod needs;
mod postgres;
mod stages;

use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
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
    /// The tools: nats-server, promtool (Debian package `prometheus`), python3 with venv support,
    /// chromedriver, fusermount3 and a PostgreSQL server. When one is missing and this runs as root
    /// on a machine with apt-get, it installs the Debian packages; otherwise it stops and prints
    /// the command that installs them.
    ///
    /// Unless $SAGAFLOW_TEST_POSTGRES already names a server, it starts a throwaway PostgreSQL
    /// cluster for the run (as the `postgres` user when root), sets $SAGAFLOW_TEST_POSTGRES to its
    /// URL for every stage, and stops and removes it at the end, whether the stages pass or not.
    Test(TestArgs),

    /// Run one command with the PostgreSQL the tests get: `cargo xtask postgres -- cargo test -p
    /// sagaflow-store`.
    ///
    /// It starts the same throwaway cluster as `test` (unless $SAGAFLOW_TEST_POSTGRES is set), runs
    /// the command with $SAGAFLOW_TEST_POSTGRES set to its URL, then stops it and removes its files.
    Postgres(PostgresArgs),
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

#[derive(Args)]
struct PostgresArgs {
    /// Never run apt-get: if PostgreSQL is missing, print the command that installs it, and stop.
    #[arg(long)]
    no_install: bool,

    /// The command to run, after a `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let outcome = match Cli::parse().task {
        Task::Test(args) => test(args),
        Task::Postgres(args) => with_postgres(args),
    };
    match outcome {
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
    needs::ensure(&needs::of_stages(stages), !args.no_install)?;

    // Lives until this returns, so that the cluster stops after the last stage or the failed one.
    let postgres = if needs::POSTGRES.is_needed_by(stages) { postgres::provide()? } else { None };
    let env = postgres.iter().map(|cluster| (postgres::URL_VAR, cluster.url().to_owned())).collect();
    let context = Context::new(args.cargo_test_args, env);
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

fn with_postgres(args: PostgresArgs) -> Result<()> {
    needs::ensure(&[&needs::POSTGRES], !args.no_install)?;
    let postgres = postgres::provide()?;
    let (program, program_args) = args.command.split_first().context("no command to run")?;
    let mut command = Command::new(program);
    command.args(program_args).stdin(Stdio::null());
    if let Some(cluster) = &postgres {
        command.env(postgres::URL_VAR, cluster.url());
    }
    let shown = args.command.join(" ");
    println!("    $ {shown}");
    let status = command.status().with_context(|| format!("cannot start `{shown}`"))?;
    ensure!(status.success(), "`{shown}` failed ({status})");
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
        let Task::Test(args) = cli.task else { panic!("not the test task") };
        assert!(args.quick && args.no_install);
        assert_eq!(args.cargo_test_args, ["--test", "cli"]);

        let cli = Cli::try_parse_from(["cargo xtask", "postgres", "--", "psql", "-c", "select 1"])
            .expect("the postgres task parses");
        let Task::Postgres(args) = cli.task else { panic!("not the postgres task") };
        assert_eq!(args.command, ["psql", "-c", "select 1"]);
        assert!(Cli::try_parse_from(["cargo xtask", "postgres"]).is_err(), "a command is required");
    }

    #[test]
    fn the_help_describes_every_flag() {
        use clap::CommandFactory;
        let command = Cli::command();
        for task in command.get_subcommands() {
            for argument in task.get_arguments() {
                assert!(argument.get_help().is_some(), "{} --{} has no help", task.get_name(), argument.get_id());
            }
        }
    }
}
