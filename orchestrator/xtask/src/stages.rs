//! The test stages, in the order CI runs them, each a list of commands run from the workspace root.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, ensure};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Stage {
    AlertRules,
    Dashboard,
    CargoTest,
    Examples,
    PythonSdk,
    Bench,
    Chaos,
}

/// What every stage runs against.
pub struct Context {
    root: PathBuf,
    target_dir: PathBuf,
    cargo: OsString,
    cargo_test_args: Vec<String>,
    /// Set for every command of every stage: the PostgreSQL URL the tests use.
    env: Vec<(&'static str, String)>,
}

impl Context {
    pub fn new(cargo_test_args: Vec<String>, env: Vec<(&'static str, String)>) -> Self {
        // orchestrator/xtask → the workspace root. The layout is fixed, so is the depth.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let root = root.canonicalize().unwrap_or(root);
        // Cargo reads a relative CARGO_TARGET_DIR against its working directory: the root, here.
        let target_dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |dir| root.join(dir));
        // `cargo run` sets CARGO to the cargo that runs us: the same toolchain for every stage.
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        Self { root, target_dir, cargo, cargo_test_args, env }
    }

    fn cargo(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.cargo);
        command.args(args);
        command
    }

    /// The debug `sagaflow` that `cargo test --workspace` builds for the CLI's tests; the examples,
    /// Python, bench and chaos stages run it.
    fn sagaflow(&self) -> PathBuf {
        self.target_dir.join("debug").join("sagaflow")
    }

    /// An example that `cargo test --workspace` built (it builds every example, to check it).
    fn example(&self, name: &str) -> PathBuf {
        self.target_dir.join("debug").join("examples").join(name)
    }
}

impl Stage {
    pub const ALL: [Self; 7] =
        [Self::AlertRules, Self::Dashboard, Self::CargoTest, Self::Examples, Self::PythonSdk, Self::Bench, Self::Chaos];

    pub fn title(self) -> &'static str {
        match self {
            Self::AlertRules => "alert rules (promtool check, promtool test)",
            Self::Dashboard => "grafana dashboard JSON",
            Self::CargoTest => "cargo test --workspace",
            Self::Examples => "examples (custom_saga, quickstart, trip-booking, python)",
            Self::PythonSdk => "python SDK (worker/python: mypy, pytest against sagaflow server)",
            Self::Bench => "bench smoke run (phase d, n=50)",
            Self::Chaos => "chaos run (60 s)",
        }
    }

    fn commands(self, context: &Context) -> Vec<Command> {
        match self {
            Self::AlertRules => {
                let ops = context.root.join("docs/ops");
                let mut check = Command::new("promtool");
                check.args(["check", "rules", "alerts.yml"]).current_dir(&ops);
                let mut test = Command::new("promtool");
                test.args(["test", "rules", "alerts.test.yml"]).current_dir(&ops);
                vec![check, test]
            }
            Self::Dashboard => {
                let mut parse = Command::new("python3");
                parse.args(["-c", "import json, sys; json.load(open(sys.argv[1]))", "docs/ops/grafana-dashboard.json"]);
                vec![parse]
            }
            Self::CargoTest => {
                let mut test = context.cargo(&["test", "--workspace"]);
                test.args(&context.cargo_test_args);
                vec![test]
            }
            Self::Examples => {
                // The binaries `cargo test --workspace` built, not a second build: a plain `cargo
                // build` resolves features without the dev-dependencies' (test-only crash points,
                // the conformance suite) and so recompiles most of the workspace, minutes on CI.
                // The no-run build is a no-op after the test stage and builds them when run alone.
                // Not the test stage's arguments: `--test NAME` would leave the examples unbuilt.
                let build = context.cargo(&["test", "--workspace", "--no-run", "-q"]);
                let example = |name: &str| Command::new(context.example(name));
                let mut python = Command::new("bash");
                python.arg("examples/python/run.sh").env("SAGAFLOW_BIN", context.sagaflow());
                let mut trips = Command::new("bash");
                trips
                    .arg("examples/trip-booking/run.sh")
                    .env("SAGAFLOW_BIN", context.sagaflow())
                    .env("TRIP_BOOKING_BIN", context.example("trip_booking"));
                vec![build, example("custom_saga"), example("quickstart"), trips, python]
            }
            Self::PythonSdk => {
                // After the test stage, which builds the debug `sagaflow` these tests start and the
                // Rust SDK's scenario worker, which the script would otherwise build with a plain
                // `cargo build` (see the examples stage).
                let mut tests = Command::new("bash");
                tests
                    .args(["worker/python/run-tests.sh", "-q"])
                    .env("SAGAFLOW_BIN", context.sagaflow())
                    .env("SAGAFLOW_SCENARIO_WORKER", context.example("scenario_worker"));
                vec![tests]
            }
            Self::Bench => {
                let mut bench = Command::new(context.sagaflow());
                bench.args(["bench", "--phase", "d", "--n", "50"]);
                vec![bench]
            }
            Self::Chaos => {
                let seed = std::env::var("SAGAFLOW_CHAOS_SEED").unwrap_or_else(|_| "42".to_owned());
                let mut chaos = Command::new(context.sagaflow());
                chaos.args(["chaos", "run", "--duration", "60s", "--seed", &seed]);
                vec![chaos]
            }
        }
    }

    /// Runs the stage's commands in order and stops at the first that fails.
    pub fn run(self, context: &Context) -> Result<()> {
        for mut command in self.commands(context) {
            if command.get_current_dir().is_none() {
                command.current_dir(&context.root);
            }
            command.envs(context.env.iter().map(|(name, value)| (name, value)));
            let shown = show(&command);
            println!("    $ {shown}");
            // No stdin: CI has none, and nothing here may wait for a question to be answered.
            let status = command.stdin(Stdio::null()).status().with_context(|| format!("cannot start `{shown}`"))?;
            ensure!(status.success(), "`{shown}` failed ({status})");
        }
        Ok(())
    }
}

/// A command as a person would type it: the program's file name and its arguments.
fn show(command: &Command) -> String {
    let program = Path::new(command.get_program());
    let program = program.file_name().unwrap_or(program.as_os_str()).to_string_lossy();
    let args = command.get_args().map(|arg| arg.to_string_lossy());
    std::iter::once(program).chain(args).collect::<Vec<_>>().join(" ")
}
