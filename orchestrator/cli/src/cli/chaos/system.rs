//! The processes of a chaos run: the orchestrator, one worker per service
//! group, and `nats-server` when it is installed, each on a loopback port
//! fixed for the whole run (a restarted process comes back where its peers
//! look for it), with its data and log under the run's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;
use tokio::process::{Child, Command};

use super::link::Link;
use super::plan::{GROUPS, Target};

/// Settings that shape the processes.
#[derive(Debug, Clone)]
pub struct SystemOptions {
    pub dir: PathBuf,
    /// `nats-server`, if one is to run.
    pub nats_binary: Option<PathBuf>,
    /// How often the orchestrator runs its scheduled jobs during the run.
    pub jobs_interval: Duration,
    /// Run with auth on, with these tokens (none: every caller is an
    /// anonymous operator, as in `sagaflow dev`).
    pub tokens: Option<Tokens>,
    /// The orchestrator's open-file limit (soft and hard), as on a host with
    /// the usual 1,024, so that a connection flood meets its caps.
    pub open_files: Option<u64>,
}

/// The tokens of a run with auth on: two tenants (the shop front end the
/// load runs as, and the hostile client), the shop's workers, the operator.
/// Random per run, and kept in memory only; the auth file holds their hashes.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub shop: String,
    pub mallory: String,
    pub worker: String,
    pub operator: String,
}

/// The tenant names the tokens map to: a client's chosen ids are kept as `NAME:ID`.
pub const SHOP_TENANT: &str = "shop";
pub const HOSTILE_TENANT: &str = "mallory";

impl Tokens {
    pub fn generate() -> Self {
        let token = || format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        Self { shop: token(), mallory: token(), worker: token(), operator: token() }
    }

    fn auth_file(&self) -> serde_json::Value {
        use sagaflow_server::auth::hash_token;
        let entry =
            |name: &str, role: &str, token: &str| json!({"name": name, "role": role, "sha256": hash_token(token)});
        json!({"tokens": [
            entry(SHOP_TENANT, "client", &self.shop),
            entry(HOSTILE_TENANT, "client", &self.mallory),
            entry("shop-workers", "worker", &self.worker),
            entry("chaos-operator", "operator", &self.operator),
        ]})
    }
}

pub struct System {
    exe: PathBuf,
    options: SystemOptions,
    grpc_port: u16,
    http_port: u16,
    nats_port: u16,
    admin_ports: Vec<u16>,
    running: BTreeMap<Target, Child>,
    /// Each worker group's network to the orchestrator, made at the first start.
    links: Vec<Link>,
    link_ports: Vec<u16>,
}

/// `n` distinct loopback ports that were free a moment ago. The probe
/// sockets stay open until all are picked: closed one by one, the kernel may
/// hand the same port out twice (a CI run gave the orchestrator's metrics
/// port to a worker's admin API too, and the worker could not restart).
pub(super) fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let probes = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").context("no free loopback port"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    probes.iter().map(|probe| Ok(probe.local_addr()?.port())).collect()
}

/// `nats-server` on PATH or where Debian puts it.
pub fn find_nats_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}

impl System {
    /// Picks the ports; starts nothing.
    pub fn new(options: SystemOptions) -> anyhow::Result<Self> {
        let current = std::env::current_exe().context("cannot find the sagaflow binary")?;
        // Restarts run this very binary: a link (or copy) in the run's
        // directory survives a rebuild replacing the original mid-run.
        let bin_dir = options.dir.join("bin");
        std::fs::create_dir_all(&bin_dir).with_context(|| format!("cannot create {}", bin_dir.display()))?;
        let exe = bin_dir.join("sagaflow");
        let _ = std::fs::remove_file(&exe);
        if std::fs::hard_link(&current, &exe).is_err() {
            std::fs::copy(&current, &exe).with_context(|| format!("cannot copy {}", current.display()))?;
        }
        if let Some(tokens) = &options.tokens {
            let path = options.dir.join("auth.json");
            std::fs::write(&path, tokens.auth_file().to_string())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        // Every port at once, so that none is handed out twice.
        let mut ports = free_ports(2 * GROUPS.len() + 3)?;
        let link_ports = ports.split_off(3 + GROUPS.len());
        let admin_ports = ports.split_off(3);
        let [grpc_port, http_port, nats_port] = ports[..] else {
            anyhow::bail!("expected three service ports, got {}", ports.len());
        };
        Ok(Self {
            exe,
            grpc_port,
            http_port,
            nats_port,
            admin_ports,
            options,
            running: BTreeMap::new(),
            link_ports,
            links: Vec::new(),
        })
    }

    pub fn has_broker(&self) -> bool {
        self.options.nats_binary.is_some()
    }

    pub fn server_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// Where worker `group` reaches the orchestrator: its link, once made.
    fn worker_url(&self, group: usize) -> String {
        self.links.get(group).map_or_else(|| self.server_url(), |link| format!("http://{}", link.addr))
    }

    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.nats_port)
    }

    pub fn admin_url(&self, group: usize) -> String {
        format!("http://127.0.0.1:{}", self.admin_ports.get(group).copied().unwrap_or(0))
    }

    /// Every process the run has.
    pub fn targets(&self) -> Vec<Target> {
        let mut all = Vec::new();
        if self.has_broker() {
            all.push(Target::Broker);
        }
        all.push(Target::Orchestrator);
        all.extend((0..GROUPS.len()).map(Target::Worker));
        all
    }

    /// The link of worker `group`, once the system has started.
    pub fn link(&self, group: usize) -> Option<&Link> {
        self.links.get(group)
    }

    /// Heals every link.
    pub fn heal_links(&self) {
        self.links.iter().for_each(|link| link.set(None));
    }

    /// Starts every process that is not running.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        if self.links.is_empty() {
            let orchestrator = std::net::SocketAddr::from(([127, 0, 0, 1], self.grpc_port));
            for port in self.link_ports.clone() {
                self.links.push(Link::start(port, orchestrator).await.context("cannot start a network link")?);
            }
        }
        for target in self.targets() {
            if !self.running.contains_key(&target) {
                self.start(target).await?;
            }
        }
        Ok(())
    }

    fn log(&self, target: Target) -> anyhow::Result<Stdio> {
        let dir = self.options.dir.join("logs");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let name = match target {
            Target::Orchestrator => "orchestrator".to_owned(),
            Target::Broker => "nats-server".to_owned(),
            Target::Worker(i) => format!("worker-{}", GROUPS.get(i).copied().unwrap_or("x").replace(',', "-")),
        };
        let path = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Stdio::from(file))
    }

    fn command(&self, target: Target) -> anyhow::Result<Command> {
        let data = |name: &str| self.options.dir.join(name);
        let mut command = match target {
            Target::Broker => {
                let Some(binary) = &self.options.nats_binary else { bail!("no nats-server") };
                let store = data("nats");
                let mut command = Command::new(binary);
                command.args(["-js", "-a", "127.0.0.1", "-p", &self.nats_port.to_string(), "-sd"]).arg(store);
                command
            }
            Target::Orchestrator => {
                let mut command = match self.options.open_files {
                    // `ulimit -n` sets the soft and the hard limit; `exec` keeps the pid.
                    Some(limit) => {
                        let mut command = Command::new("sh");
                        command.args(["-c", &format!("ulimit -n {limit} && exec \"$0\" \"$@\"")]).arg(&self.exe);
                        command
                    }
                    None => Command::new(&self.exe),
                };
                command
                    .args(["server", "--listen", &format!("127.0.0.1:{}", self.grpc_port)])
                    .args(["--http-listen", &format!("127.0.0.1:{}", self.http_port)])
                    .arg("--data-dir")
                    .arg(data("orchestrator"))
                    .args(["--jobs-interval", &humantime::format_duration(self.options.jobs_interval).to_string()])
                    // The captures snapshot of a long run outgrows the default 256 KiB (ADR 0009).
                    .args(["--max-payload-bytes", "4000000", "--no-progress-after", "60s"]);
                if self.has_broker() {
                    command.args(["--nats-url", &self.nats_url()]);
                }
                if self.options.tokens.is_some() {
                    command.arg("--auth-file").arg(self.options.dir.join("auth.json"));
                }
                command
            }
            Target::Worker(group) => {
                let mut command = Command::new(&self.exe);
                command
                    // Through its link, on which the run injects network faults.
                    .args(["worker", "--server", &self.worker_url(group), "--services", GROUPS[group]])
                    .arg("--data-dir")
                    .arg(data("shop"))
                    .args(["--admin-listen", &format!("127.0.0.1:{}", self.admin_ports[group])])
                    // Enough stock that the load never runs out: every
                    // compensation then comes from a fault, not from stock.
                    .args(["--initial-stock", "10000000"]);
                if let Some(tokens) = &self.options.tokens {
                    // In the environment, not on the command line that `ps` shows.
                    command.env("SAGAFLOW_TOKEN", &tokens.worker);
                }
                command
            }
        };
        command.env("RUST_LOG", "warn").stdin(Stdio::null()).stdout(self.log(target)?).stderr(self.log(target)?);
        // A chaos run that is interrupted must not leave its processes behind.
        command.kill_on_drop(true);
        Ok(command)
    }

    fn port_of(&self, target: Target) -> u16 {
        match target {
            Target::Orchestrator => self.grpc_port,
            Target::Broker => self.nats_port,
            Target::Worker(group) => self.admin_ports[group],
        }
    }

    /// Starts `target` and waits until it listens.
    pub async fn start(&mut self, target: Target) -> anyhow::Result<()> {
        let mut child = self.command(target)?.spawn().with_context(|| format!("cannot start {}", target.name()))?;
        let port = self.port_of(target);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("{} exited at start ({status}); see {}", target.name(), self.options.dir.join("logs").display());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{} did not listen on port {port} within 60 s", target.name());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.running.insert(target, child);
        Ok(())
    }

    /// `kill -9`. Returns false if it was not running.
    pub async fn kill9(&mut self, target: Target) -> bool {
        let Some(mut child) = self.running.remove(&target) else { return false };
        let _ = child.start_kill();
        let _ = child.wait().await;
        true
    }

    /// The processes that exited on their own since the last call (an
    /// injected `crash-after-effect`, say).
    pub fn reap(&mut self) -> Vec<Target> {
        let exited: Vec<Target> = self
            .running
            .iter_mut()
            .filter_map(|(target, child)| matches!(child.try_wait(), Ok(Some(_))).then_some(*target))
            .collect();
        for target in &exited {
            self.running.remove(target);
        }
        exited
    }

    /// Kills everything; the data stays for a post-mortem if asked.
    pub async fn stop_all(&mut self) {
        let targets: Vec<Target> = self.running.keys().copied().collect();
        for target in targets {
            self.kill9(target).await;
        }
    }

    pub fn dir(&self) -> &Path {
        &self.options.dir
    }

    /// `HOST:PORT` of the orchestrator's gRPC and HTTP listeners.
    pub fn listeners(&self) -> (String, String) {
        (format!("127.0.0.1:{}", self.grpc_port), format!("127.0.0.1:{}", self.http_port))
    }
}
