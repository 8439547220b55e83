//! A throwaway PostgreSQL cluster for one test run. The tests that need a real PostgreSQL read its
//! URL from `SAGAFLOW_TEST_POSTGRES`; whoever sets that variable points them at a server of their
//! own instead, and then nothing is started here.

use std::fs::{self, File, Permissions};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail, ensure};

use crate::needs::{find_executable, is_root};

/// The variable the tests read the server's URL from.
pub const URL_VAR: &str = "SAGAFLOW_TEST_POSTGRES";

/// All from one installation: a data directory belongs to the major version that created it.
const PROGRAMS: [&str; 3] = ["initdb", "postgres", "pg_ctl"];

/// Debian keeps each major version's server programs in `<version>/bin` here, off PATH.
const DEBIAN_VERSIONS: &str = "/usr/lib/postgresql";

/// The system user that runs the cluster when this runs as root: initdb and postgres refuse root.
const SYSTEM_USER: &str = "postgres";

/// Followed by the xtask's pid, so that a later run can tell a leftover from a live cluster.
const DIR_PREFIX: &str = "sagaflow-test-postgres-";

/// How long the server may take to start, and then to stop, before it is given up on.
const PATIENCE: Duration = Duration::from_secs(60);

/// The directory with initdb, postgres and pg_ctl: the one the `initdb` on PATH resolves to (a
/// hand install, or symlinks into Debian's tree), else Debian's newest `/usr/lib/postgresql/*/bin`.
pub fn server_bin_dir() -> Option<PathBuf> {
    let on_path = find_executable("initdb")
        .map(|initdb| initdb.canonicalize().unwrap_or(initdb))
        .and_then(|initdb| initdb.parent().map(Path::to_path_buf));
    let versions: Vec<String> = fs::read_dir(DEBIAN_VERSIONS)
        .map(|entries| entries.flatten().map(|entry| entry.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let debian = newest_first(versions).into_iter().map(|version| Path::new(DEBIAN_VERSIONS).join(version).join("bin"));
    on_path.into_iter().chain(debian).find(|dir| PROGRAMS.iter().all(|program| dir.join(program).is_file()))
}

/// The probe of the `postgres` need.
pub fn server_installed() -> bool {
    server_bin_dir().is_some()
}

/// Version directory names, newest first, compared as numbers (`9.6` < `10` < `15`). Names that
/// are not versions are dropped: a stray directory must not be taken for a server.
fn newest_first(names: Vec<String>) -> Vec<String> {
    let mut versions: Vec<(Vec<u32>, String)> = names
        .into_iter()
        .filter_map(|name| {
            let numbers = name.split('.').map(|part| part.parse().ok()).collect::<Option<Vec<u32>>>()?;
            Some((numbers, name))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, name)| name).collect()
}

/// The cluster the run's stages use, or `None` when `SAGAFLOW_TEST_POSTGRES` already names one.
pub fn provide() -> Result<Option<Cluster>> {
    if std::env::var_os(URL_VAR).is_some_and(|url| !url.is_empty()) {
        // Not the value: it may hold a password, and this goes to CI logs.
        println!("==> postgres: {URL_VAR} is set: the tests use that server as is, none is started");
        return Ok(None);
    }
    Cluster::start().map(Some)
}

/// A running cluster in its own temporary directory. Dropping it stops the server and removes the
/// directory, so a failed stage, an error or a panic cleans up like a passing run.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    as_system_user: bool,
    /// `postgres` itself, or as root `runuser`, whose child it is.
    server: Option<Child>,
    url: String,
}

impl Cluster {
    fn start() -> Result<Self> {
        let bin = server_bin_dir()
            .context("no PostgreSQL server (initdb, postgres, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin")?;
        let as_system_user = is_root();
        let owner = if as_system_user { Some(system_user()?) } else { None };
        let tmp = std::env::temp_dir();
        sweep_leftovers(&tmp);
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.subsec_nanos());
        let dir = tmp.join(format!("{DIR_PREFIX}{}-{nanos}", std::process::id()));
        fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // From here on, whatever fails, Drop removes the directory.
        let mut cluster = Self { dir, bin, as_system_user, server: None, url: String::new() };
        fs::set_permissions(&cluster.dir, Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", cluster.dir.display()))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&cluster.dir, Some(uid), Some(gid))
                .with_context(|| format!("cannot hand {} to the {SYSTEM_USER} user", cluster.dir.display()))?;
        }

        let data = cluster.dir.join("data");
        // --no-sync: a throwaway cluster need not survive a crash of this machine. The server's own
        // fsync stays on, because tests check durability. Locale C exists everywhere and sorts
        // bytewise; UTF8 so that tests may store any text.
        let initdb = cluster
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "--encoding=UTF8", "--locale=C"])
            .output()
            .context("cannot run initdb")?;
        ensure!(
            initdb.status.success(),
            "initdb failed ({}): {}",
            initdb.status,
            String::from_utf8_lossy(&initdb.stderr).trim()
        );

        let port = free_port()?;
        let log_path = cluster.dir.join("postgres.log");
        let log = File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
        let log_err = log.try_clone().context("cannot share the server's log file")?;
        let mut server = cluster.command("postgres");
        server.arg("-D").arg(&data);
        for setting in [
            "listen_addresses=127.0.0.1".to_owned(),
            format!("port={port}"),
            // Its own socket directory: the default one may be missing or belong to another server.
            format!("unix_socket_directories={}", cluster.dir.display()),
            // Test binaries run in parallel, each test with a few connections.
            "max_connections=300".to_owned(),
            "shared_buffers=128MB".to_owned(),
        ] {
            server.arg("-c").arg(setting);
        }
        // A child rather than `pg_ctl start`, which detaches the server: this way Ctrl-C reaches it
        // too (it shares the terminal's process group) and shuts it down.
        let server = server.stdout(log).stderr(log_err).spawn().context("cannot start postgres")?;
        cluster.server = Some(server);
        cluster.wait_until_ready(&data)?;

        cluster.url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let version = fs::read_to_string(data.join("PG_VERSION")).unwrap_or_default();
        println!(
            "==> postgres: started PostgreSQL {} on 127.0.0.1:{port} (data in {}), {URL_VAR}={}",
            version.trim(),
            data.display(),
            cluster.url
        );
        Ok(cluster)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// One of the cluster's programs, run as the system user when this runs as root.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut command = if self.as_system_user {
            let mut runuser = Command::new(find_executable("runuser").unwrap_or_else(|| "runuser".into()));
            runuser.args(["-u", SYSTEM_USER, "--"]).arg(program);
            runuser
        } else {
            Command::new(program)
        };
        // The system user may not enter the caller's directory (/root, say), and the programs fail
        // when they cannot.
        command.current_dir(&self.dir).stdin(Stdio::null());
        command
    }

    /// Waits for "ready" in postmaster.pid, which the server writes once it takes connections
    /// (what `pg_ctl -w` waits for too).
    fn wait_until_ready(&mut self, data: &Path) -> Result<()> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let status = fs::read_to_string(data.join("postmaster.pid")).unwrap_or_default();
            if status.lines().nth(7).is_some_and(|line| line.trim() == "ready") {
                return Ok(());
            }
            if let Some(server) = &mut self.server
                && let Some(exit) = server.try_wait().context("cannot watch postgres")?
            {
                self.server = None;
                bail!("postgres exited ({exit}) before taking connections; its log:\n{}", self.log());
            }
            ensure!(Instant::now() < deadline, "postgres not ready after {PATIENCE:?}; its log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_else(|error| format!("(no log: {error})"))
    }

    fn stop(&self, mut server: Child) {
        // Fast: it disconnects whatever a test left open, where the default (smart) would wait for it.
        let stopped = ["fast", "immediate"].iter().any(|mode| {
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", mode, "-w", "-t", &PATIENCE.as_secs().to_string(), "stop"])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        });
        if !stopped {
            eprintln!("!! postgres: pg_ctl could not stop the server; killing it");
            // As root this reaches runuser only: a postgres that pg_ctl could not stop either may
            // outlive the run.
            let _ = server.kill();
        }
        // Reaps the server (or runuser), which exits once the server has stopped.
        let _ = server.wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.stop(server);
        }
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => println!("==> postgres: stopped, removed {}", self.dir.display()),
            Err(error) => eprintln!("!! postgres: cannot remove {}: {error}", self.dir.display()),
        }
    }
}

/// A port nothing listens on now. Another process could take it before postgres binds it; then
/// postgres exits and the error shows its log.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("cannot find a free port on 127.0.0.1")?;
    Ok(listener.local_addr().context("cannot read the free port")?.port())
}

/// The system user's uid and gid; created when missing (a PostgreSQL built from source has none).
fn system_user() -> Result<(u32, u32)> {
    if let Some(ids) = user_ids() {
        return Ok(ids);
    }
    println!("==> postgres: creating the system user {SYSTEM_USER} (initdb refuses to run as root)");
    let useradd = find_executable("useradd").unwrap_or_else(|| "useradd".into());
    let status = Command::new(useradd)
        .args(["--system", "--user-group", "--no-create-home", SYSTEM_USER])
        .stdin(Stdio::null())
        .status()
        .context("cannot run useradd")?;
    ensure!(
        status.success(),
        "`useradd --system --user-group {SYSTEM_USER}` failed ({status}); initdb refuses to run as root, so the \
         tests' cluster needs that user: create it, or set {URL_VAR} to a server of your own"
    );
    user_ids().with_context(|| format!("useradd succeeded but there is still no {SYSTEM_USER} user"))
}

fn user_ids() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let output = Command::new("id").args([flag, SYSTEM_USER]).stderr(Stdio::null()).output().ok()?;
        if !output.status.success() {
            return None;
        }
        String::from_utf8(output.stdout).ok()?.trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// Removes the directories of runs that ended without their Drop (Ctrl-C, a kill): their xtask is
/// gone and, with no postmaster.pid, so is their server. A cluster still running is left alone.
fn sweep_leftovers(tmp: &Path) {
    // Without /proc a live run cannot be told from a dead one.
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(tmp) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|name| name.strip_prefix(DIR_PREFIX)?.split('-').next()) else {
            continue;
        };
        let dir = entry.path();
        if pid.is_empty() || Path::new("/proc").join(pid).exists() || dir.join("data/postmaster.pid").exists() {
            continue;
        }
        if fs::remove_dir_all(&dir).is_ok() {
            println!("==> postgres: removed {}, left by an interrupted run", dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_as_numbers_newest_first() {
        let names = ["9.6", "15", "10", "16", "main", "", "17beta"].map(String::from).to_vec();
        assert_eq!(newest_first(names), ["16", "15", "10", "9.6"]);
    }
}
