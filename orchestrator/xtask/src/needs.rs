//! What the test stages need from the machine, and how a Debian machine gets it.
//!
//! Each need is one entry in [`NEEDS`]: a new one is one more entry, naming its probe, its Debian
//! packages and the stages that use it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail, ensure};

use crate::postgres;
use crate::stages::Stage;

/// One tool that some stages cannot run without.
pub struct Need {
    /// What the messages call it.
    pub name: &'static str,
    /// Why it is needed, for the line that reports it missing.
    pub purpose: &'static str,
    /// How to tell that the machine has it.
    pub probe: Probe,
    /// The Debian packages that provide it.
    pub packages: &'static [&'static str],
    /// The stages that use it: `--quick` checks only the needs of the stages it runs.
    pub stages: &'static [Stage],
    /// A variable that, when set, meets the need another way, so that it is not checked.
    pub unless_set: Option<&'static str>,
}

pub enum Probe {
    /// An executable on PATH, or in one of [`EXTRA_DIRS`].
    Executable(&'static str),
    /// A command that exits 0 when the need is met.
    Command(&'static str, &'static [&'static str]),
    /// A lookup of its own, for a tool that is neither on PATH nor in [`EXTRA_DIRS`].
    Found(fn() -> bool),
}

pub const NEEDS: &[Need] = &[
    Need {
        name: "nats-server",
        purpose: "the NATS tests and the chaos run start their own broker",
        probe: Probe::Executable("nats-server"),
        packages: &["nats-server"],
        stages: &[Stage::CargoTest, Stage::Chaos],
        unless_set: None,
    },
    Need {
        name: "promtool",
        purpose: "checks and unit-tests the alert rules in docs/ops",
        probe: Probe::Executable("promtool"),
        packages: &["prometheus"],
        stages: &[Stage::AlertRules],
        unless_set: None,
    },
    Need {
        name: "python3 with venv",
        purpose: "checks the dashboard's JSON, and runs the Python example and SDK tests in virtual environments",
        // Debian ships `ensurepip` in python3-venv only; without it `python3 -m venv` fails.
        probe: Probe::Command("python3", &["-c", "import ensurepip, json, venv"]),
        packages: &["python3", "python3-venv"],
        stages: &[Stage::Dashboard, Stage::Examples, Stage::PythonSdk],
        unless_set: None,
    },
    Need {
        name: "chromedriver",
        purpose: "the console tests (orchestrator/cli/tests/console.rs) drive headless chromium through it",
        probe: Probe::Executable("chromedriver"),
        packages: &["chromium", "chromium-driver"],
        stages: &[Stage::CargoTest],
        unless_set: None,
    },
    Need {
        name: "fusermount3",
        purpose: "the power-loss and disk-fault tests mount the fault-injecting file system (orchestrator/faultfs); \
                  fuser mounts through it when it cannot mount directly",
        probe: Probe::Executable("fusermount3"),
        packages: &["fuse3"],
        stages: &[Stage::CargoTest],
        unless_set: None,
    },
    POSTGRES,
];

/// Also checked on its own, by `cargo xtask postgres`.
pub const POSTGRES: Need = Need {
    name: "postgres",
    purpose: "the PostgreSQL tests run against a throwaway cluster (initdb, postgres, pg_ctl) started for the run",
    probe: Probe::Found(postgres::server_installed),
    // Pulls in the newest server Debian has, in /usr/lib/postgresql/<version>/bin.
    packages: &["postgresql"],
    stages: &[Stage::CargoTest],
    unless_set: Some(postgres::URL_VAR),
};

/// Where Debian puts daemons and where hand installs go, beyond a user's PATH. The NATS tests look
/// for `nats-server` in the same places.
const EXTRA_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/usr/local/bin"];

impl Probe {
    fn found(&self) -> bool {
        match self {
            Self::Executable(name) => find_executable(name).is_some(),
            Self::Found(lookup) => lookup(),
            Self::Command(program, args) => Command::new(program)
                .args(*args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success()),
        }
    }
}

pub fn find_executable(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The needs of `stages`, in table order.
pub fn of_stages(stages: &[Stage]) -> Vec<&'static Need> {
    NEEDS.iter().filter(|need| need.is_needed_by(stages)).collect()
}

impl Need {
    pub fn is_needed_by(&self, stages: &[Stage]) -> bool {
        self.stages.iter().any(|stage| stages.contains(stage))
    }
}

/// Checks `wanted`; installs what is missing when `may_install` and the machine allows it (root,
/// apt-get), and otherwise fails with the one command that would install it.
pub fn ensure(wanted: &[&Need], may_install: bool) -> Result<()> {
    println!("==> tools the stages need");
    let missing = report(wanted);
    if missing.is_empty() {
        return Ok(());
    }
    let names = missing.iter().map(|need| need.name).collect::<Vec<_>>().join(", ");
    let packages = packages(&missing);
    let apt_get = find_executable("apt-get");
    let root = is_root();
    match (may_install, &apt_get, root) {
        (true, Some(apt_get), true) => {
            println!("==> installing {} with apt-get (for {names})", packages.join(" "));
            install(apt_get, &packages)?;
            let still_missing = report(&missing);
            ensure!(
                still_missing.is_empty(),
                "{} still missing after installing {}",
                still_missing.iter().map(|need| need.name).collect::<Vec<_>>().join(", "),
                packages.join(" ")
            );
            Ok(())
        }
        (_, Some(_), _) => {
            let sudo = if root { "" } else { "sudo " };
            let packages = packages.join(" ");
            let command =
                format!("{sudo}apt-get update && {sudo}apt-get install -y --no-install-recommends {packages}");
            let instead = if root { " (or run without --no-install)" } else { "" };
            bail!("missing {names}; run: {command}{instead}")
        }
        (_, None, _) => bail!(
            "missing {names} and there is no apt-get: install them with your package manager and put them on PATH (Debian packages: {})",
            packages.join(" ")
        ),
    }
}

/// Probes each need, prints one line per need, and returns those missing.
fn report<'a>(needs: &[&'a Need]) -> Vec<&'a Need> {
    let mut missing = Vec::new();
    for need in needs {
        if let Some(variable) =
            need.unless_set.filter(|variable| std::env::var_os(variable).is_some_and(|v| !v.is_empty()))
        {
            println!("    {:<20} not checked: {variable} is set", need.name);
        } else if need.probe.found() {
            println!("    {:<20} ok", need.name);
        } else {
            println!("    {:<20} missing: {}", need.name, need.purpose);
            missing.push(*need);
        }
    }
    missing
}

/// The packages of `needs`, each once, in table order.
fn packages(needs: &[&Need]) -> Vec<&'static str> {
    let mut packages = Vec::new();
    for package in needs.iter().flat_map(|need| need.packages) {
        if !packages.contains(package) {
            packages.push(*package);
        }
    }
    packages
}

/// One `apt-get update`, then one install of every missing package. CI runs this as root with no
/// terminal and no stdin: nothing may ask a question.
fn install(apt_get: &Path, packages: &[&str]) -> Result<()> {
    let apt = |args: &[&str]| -> Result<()> {
        let status = Command::new(apt_get)
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .context("cannot run apt-get")?;
        ensure!(status.success(), "`apt-get {}` failed ({status})", args.join(" "));
        Ok(())
    };
    apt(&["update"])?;
    apt(&[&["install", "-y", "--no-install-recommends"], packages].concat())
}

/// Whether this process may install packages (and must not run PostgreSQL): `id -u` says 0.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|output| output.status.success() && output.stdout.trim_ascii() == b"0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_need_names_its_packages_and_stages() {
        for need in NEEDS {
            assert!(!need.packages.is_empty(), "{} names no Debian package", need.name);
            assert!(!need.stages.is_empty(), "{} is needed by no stage", need.name);
        }
    }

    #[test]
    fn packages_are_listed_once() {
        let all: Vec<&Need> = NEEDS.iter().chain(NEEDS).collect();
        assert_eq!(
            packages(&all),
            [
                "nats-server",
                "prometheus",
                "python3",
                "python3-venv",
                "chromium",
                "chromium-driver",
                "fuse3",
                "postgresql"
            ]
        );
    }
}
