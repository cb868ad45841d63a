//! A Ferry cluster on one machine: the API that `ferry-chaos` and the demo
//! tell their story with.
//!
//! ```text
//!   n1 10.99.0.1   ferryd (replica)      ┐
//!   n2 10.99.0.2   ferryd (replica)      ├─ br0, in a namespace of its own
//!   w  10.99.0.3   ferryd --witness      │
//!   client 10.99.0.10  workload, probe   ┘   service address 10.99.0.100
//! ```
//!
//! [`Cluster::build`] makes the hosts, the certificates and the nftables
//! counters; [`Cluster::start_daemons`] starts the three `ferryd`;
//! [`Cluster::run_app`] runs `ferry-kv` protected by Ferry with the service
//! address; then faults, [`Cluster::wait_takeover`], checks, and
//! [`Cluster::down`] (or drop) removes everything.

use crate::cmd::{self, CmdError};
use crate::fault::{self, AnswerCounters, FaultError, Firewall};
use crate::netns;
use crate::status::{self, AppStatus, NodeStatus, Role, StatusError};
use crate::topology::{self, Host, TopoError, Topology, IFACE};
use ferry_kv::client::Client;
use ferry_kv::workload::{VerifyReport, Workload, WorkloadConfig};
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use thiserror::Error;

/// The two hosts that run replicas, the witness, the client.
pub const REPLICAS: [&str; 2] = ["n1", "n2"];
pub const WITNESS: &str = "w";
pub const CLIENT: &str = "client";
/// The service address (the VIP the protected server answers on).
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 100);

/// The hosts and the last byte of their addresses.
pub const HOSTS: [(&str, u8); 4] = [("n1", 1), ("n2", 2), (WITNESS, 3), (CLIENT, 10)];

/// What went wrong while driving the cluster.
#[derive(Debug, Error)]
pub enum ClusterError {
    #[error(transparent)]
    Topo(#[from] TopoError),
    #[error(transparent)]
    Fault(#[from] FaultError),
    #[error("{what}: {source}")]
    Cmd {
        what: String,
        #[source]
        source: CmdError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("status of {node}: {source}")]
    Status {
        node: String,
        #[source]
        source: StatusError,
    },
    #[error("{name} not found at {path} (build it, or set {env})")]
    MissingBinary {
        name: &'static str,
        path: PathBuf,
        env: &'static str,
    },
    #[error("{what}: not done within {timeout:?} ({last})")]
    Timeout {
        what: String,
        timeout: Duration,
        last: String,
    },
    #[error("no node named {0}")]
    NoNode(String),
    #[error("{0}")]
    Kv(String),
}

/// Where the programs are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub ferry: PathBuf,
    pub ferryd: PathBuf,
    pub ferry_kv: PathBuf,
}

impl Binaries {
    /// From `FERRY_BIN`, `FERRYD_BIN`, `FERRY_KV_BIN`, else next to this
    /// executable (or one directory up, for a test executable in `deps/`).
    pub fn locate() -> Binaries {
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        let find = |env: &str, name: &str| -> PathBuf {
            if let Some(p) = std::env::var_os(env) {
                return PathBuf::from(p);
            }
            let here = exe_dir.join(name);
            if here.exists() {
                return here;
            }
            match exe_dir.parent() {
                Some(up) if exe_dir.file_name().is_some_and(|n| n == "deps") => up.join(name),
                _ => here,
            }
        };
        Binaries {
            ferry: find("FERRY_BIN", "ferry"),
            ferryd: find("FERRYD_BIN", "ferryd"),
            ferry_kv: find("FERRY_KV_BIN", "ferry-kv"),
        }
    }

    fn check(path: &Path, name: &'static str, env: &'static str) -> Result<(), ClusterError> {
        if path.is_file() {
            Ok(())
        } else {
            Err(ClusterError::MissingBinary {
                name,
                path: path.to_owned(),
                env,
            })
        }
    }

    /// `ferry-kv` exists.
    pub fn check_kv(&self) -> Result<(), ClusterError> {
        Self::check(&self.ferry_kv, "ferry-kv", "FERRY_KV_BIN")
    }

    /// All three exist.
    pub fn check_all(&self) -> Result<(), ClusterError> {
        Self::check(&self.ferry, "ferry", "FERRY_BIN")?;
        Self::check(&self.ferryd, "ferryd", "FERRYD_BIN")?;
        self.check_kv()
    }
}

/// How the cluster is set up.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The protected application's name.
    pub app: String,
    /// The port `ferry-kv` listens on (TCP).
    pub service_port: u16,
    /// The port every `ferryd` listens on (QUIC, UDP).
    pub ferryd_port: u16,
    /// `sync` or `async`.
    pub mode: String,
    /// A `ferryd --config FILE` for every daemon (lease lengths, …).
    pub ferryd_config: Option<PathBuf>,
    /// Leave namespaces, processes and files in place at the end.
    pub keep: bool,
    /// Bound of each step: a daemon starting, `ferry run`, a status.
    pub step_timeout: Duration,
    pub binaries: Binaries,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            app: "kv".into(),
            service_port: 7070,
            ferryd_port: 7100,
            mode: "sync".into(),
            ferryd_config: None,
            keep: false,
            step_timeout: Duration::from_secs(20),
            binaries: Binaries::locate(),
        }
    }
}

/// One `ferryd` host.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub host: Host,
    pub witness: bool,
    /// Its control socket, data directory and log.
    pub control: PathBuf,
    pub data: PathBuf,
    pub log: PathBuf,
    daemon: Option<Child>,
    keep: bool,
}

impl Node {
    /// The pid of its running `ferryd`, if the harness started one that has
    /// not been reaped.
    pub fn daemon_pid(&self) -> Option<i32> {
        self.daemon.as_ref().map(|c| c.id() as i32)
    }
}

/// The hosts, the daemons, and what runs on them.
#[derive(Debug)]
pub struct Cluster {
    // Dropped last: the topology's guard kills every process and removes
    // the namespaces.
    nodes: Vec<Node>,
    firewalls: BTreeMap<String, Firewall>,
    answers: AnswerCounters,
    certs: PathBuf,
    config: ClusterConfig,
    topo: Topology,
}

impl Cluster {
    /// Build the hosts, the certificates and the answer counters. No
    /// daemon runs yet.
    pub fn build(id: &str, config: ClusterConfig) -> Result<Cluster, ClusterError> {
        topology::require(true)?;
        let topo = Topology::up(id, &HOSTS, config.keep)?;
        let dir = topo.dir().clone();
        let mut firewalls = BTreeMap::new();
        for h in topo.hosts() {
            firewalls.insert(h.name.clone(), Firewall::install(h)?);
        }
        let answers = AnswerCounters::install(&topo, config.service_port)?;
        let mut nodes = Vec::new();
        for name in REPLICAS.iter().chain([&WITNESS]) {
            let host = topo.host(name)?.clone();
            let base = dir.join(name);
            let data = base.join("data");
            fs::create_dir_all(&data).map_err(|source| ClusterError::Io {
                what: format!("creating {}", data.display()),
                source,
            })?;
            nodes.push(Node {
                name: (*name).to_owned(),
                host,
                witness: *name == WITNESS,
                control: base.join("control.sock"),
                data,
                log: base.join("ferryd.log"),
                daemon: None,
                keep: config.keep,
            });
        }
        Ok(Cluster {
            nodes,
            firewalls,
            answers,
            certs: dir.join("certs"),
            config,
            topo,
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Result<&Node, ClusterError> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| ClusterError::NoNode(name.to_owned()))
    }

    fn node_mut(&mut self, name: &str) -> Result<&mut Node, ClusterError> {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or_else(|| ClusterError::NoNode(name.to_owned()))
    }

    /// The other replica host.
    pub fn other_replica(name: &str) -> &'static str {
        if name == REPLICAS[0] {
            REPLICAS[1]
        } else {
            REPLICAS[0]
        }
    }

    /// `VIP:port`, the address clients use.
    pub fn service_addr(&self) -> String {
        format!("{VIP}:{}", self.config.service_port)
    }

    /// The `--vip` argument of `ferry run`.
    pub fn vip_arg(&self) -> String {
        format!("{VIP}/{}@{IFACE}", topology::NET_PREFIX)
    }

    /// The client host's namespace.
    pub fn client_ns(&self) -> Result<String, ClusterError> {
        Ok(self.topo.host(CLIENT)?.ns.clone())
    }

    pub fn firewall(&self, host: &str) -> Result<&Firewall, ClusterError> {
        self.firewalls
            .get(host)
            .ok_or_else(|| ClusterError::NoNode(host.to_owned()))
    }

    /// The counters of answers from each host.
    pub fn answer_counters(&self) -> &AnswerCounters {
        &self.answers
    }

    /// Answers from each host so far (see [`AnswerCounters`]).
    pub fn answers(&self) -> Result<BTreeMap<String, u64>, ClusterError> {
        Ok(self.answers.read()?)
    }

    /// `ferry cert init` and one `ferry cert issue` per node.
    pub fn make_certs(&self) -> Result<(), ClusterError> {
        let ferry = &self.config.binaries.ferry;
        let certs = self.certs.to_string_lossy().into_owned();
        let what = "ferry cert init".to_owned();
        cmd::run(
            Command::new(ferry).args(["cert", "init", "--dir", &certs]),
            self.config.step_timeout,
        )
        .map_err(|source| ClusterError::Cmd { what, source })?;
        for n in &self.nodes {
            cmd::run(
                Command::new(ferry).args(["cert", "issue", "--dir", &certs, "--node", &n.name]),
                self.config.step_timeout,
            )
            .map_err(|source| ClusterError::Cmd {
                what: format!("ferry cert issue --node {}", n.name),
                source,
            })?;
        }
        Ok(())
    }

    /// The `ferryd` command line of node `name` (DESIGN §8).
    pub fn ferryd_command(&self, name: &str) -> Result<Command, ClusterError> {
        let node = self.node(name)?;
        let port = self.config.ferryd_port;
        let mut c = netns::command(&node.host.ns, &self.config.binaries.ferryd);
        c.arg("--node")
            .arg(&node.name)
            .arg("--listen")
            .arg(format!("{}:{port}", node.host.ip));
        for peer in self.nodes.iter().filter(|p| p.name != node.name) {
            c.arg("--peer")
                .arg(format!("{}={}:{port}", peer.name, peer.host.ip));
        }
        c.arg("--data-dir")
            .arg(&node.data)
            .arg("--control")
            .arg(&node.control)
            .arg("--certs")
            .arg(&self.certs);
        if node.witness {
            c.arg("--witness");
        }
        if let Some(f) = &self.config.ferryd_config {
            c.arg("--config").arg(f);
        }
        Ok(c)
    }

    /// Start (or start again) `ferryd` on node `name`, inside its host, and
    /// wait until it answers `status` on its control socket.
    pub fn start_daemon(&mut self, name: &str) -> Result<(), ClusterError> {
        let mut c = self.ferryd_command(name)?;
        let node = self.node(name)?;
        let _ = fs::remove_file(&node.control);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|source| ClusterError::Io {
                what: format!("opening {}", node.log.display()),
                source,
            })?;
        let err = log.try_clone().map_err(|source| ClusterError::Io {
            what: "duplicating the log descriptor".into(),
            source,
        })?;
        c.stdin(Stdio::null()).stdout(log).stderr(err);
        let what = format!("starting ferryd on {name}");
        let child = c.spawn().map_err(|source| ClusterError::Io {
            what: what.clone(),
            source,
        })?;
        self.node_mut(name)?.daemon = Some(child);
        let timeout = self.config.step_timeout;
        let start = Instant::now();
        loop {
            match self.status(name) {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() > timeout => {
                    return Err(ClusterError::Timeout {
                        what: format!("ferryd on {name} answering status"),
                        timeout,
                        last: format!("{e}; its log: {}", self.log_tail(name, 5)),
                    })
                }
                Err(_) => {}
            }
            if let Some(status) = self
                .node_mut(name)?
                .daemon
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.node_mut(name)?.daemon = None;
                return Err(ClusterError::Kv(format!(
                    "ferryd on {name} exited at start ({status}); its log: {}",
                    self.log_tail(name, 10)
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Make the certificates and start the three daemons.
    pub fn start_daemons(&mut self) -> Result<(), ClusterError> {
        self.config.binaries.check_all()?;
        self.make_certs()?;
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        for n in names {
            self.start_daemon(&n)?;
        }
        Ok(())
    }

    /// The last `lines` lines of node `name`'s ferryd log.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let Ok(node) = self.node(name) else {
            return String::new();
        };
        let text = fs::read_to_string(&node.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join(" | ")
    }

    /// A `ferry --control SOCK ARGS…` command for node `name`, to run
    /// inside its host.
    pub fn ferry(&self, name: &str, args: &[&str]) -> Result<Command, ClusterError> {
        let node = self.node(name)?;
        let mut c = netns::command(&node.host.ns, &self.config.binaries.ferry);
        c.arg("--control").arg(&node.control).args(args);
        Ok(c)
    }

    /// Run a `ferry` client command inside node `name`'s host.
    fn ferry_in(
        &self,
        name: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<cmd::Output, ClusterError> {
        run_on(self.ferry(name, args)?, name, timeout)
    }

    /// `ferry status --json` of node `name`, bounded by the step timeout.
    pub fn status(&self, name: &str) -> Result<NodeStatus, ClusterError> {
        self.status_within(name, self.config.step_timeout)
    }

    /// `ferry status --json` of node `name` within `timeout`.
    pub fn status_within(&self, name: &str, timeout: Duration) -> Result<NodeStatus, ClusterError> {
        self.status_reader().status(name, timeout)
    }

    /// What reads the nodes' status, for other threads.
    pub fn status_reader(&self) -> StatusReader {
        StatusReader {
            ferry: self.config.binaries.ferry.clone(),
            app: self.config.app.clone(),
            nodes: self
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.host.ns.clone(), n.control.clone()))
                .collect(),
        }
    }

    /// What node `name` says about the application, if it answers.
    pub fn app_status(&self, name: &str, timeout: Duration) -> Option<AppStatus> {
        self.status_within(name, timeout)
            .ok()
            .and_then(|s| s.app(&self.config.app).cloned())
    }

    /// The replica node that claims to serve with the highest epoch, and
    /// that status.
    pub fn primary(&self, timeout: Duration) -> Option<(String, AppStatus)> {
        REPLICAS
            .iter()
            .filter_map(|n| {
                self.app_status(n, timeout)
                    .filter(AppStatus::claims_serving)
                    .map(|a| ((*n).to_owned(), a))
            })
            .max_by_key(|(_, a)| a.epoch)
    }

    /// `ferry run` of `ferry-kv` on node `on`, with the service address;
    /// returns once the application is protected (a backup has it).
    pub fn run_app(&self, on: &str) -> Result<(), ClusterError> {
        let kv = self.config.binaries.ferry_kv.to_string_lossy().into_owned();
        let listen = format!("0.0.0.0:{}", self.config.service_port);
        let vip = self.vip_arg();
        self.ferry_in(
            on,
            &[
                "run",
                "--name",
                &self.config.app,
                "--vip",
                &vip,
                "--mode",
                &self.config.mode,
                "--",
                &kv,
                "--listen",
                &listen,
            ],
            self.config.step_timeout,
        )?;
        // In async mode outputs never wait for a backup, so the primary never
        // says protected: a backup in sync is what to wait for.
        if self.config.mode == "async" {
            self.wait_caught_up(self.config.step_timeout)
        } else {
            self.wait_protected(self.config.step_timeout).map(|_| ())
        }
    }

    /// Wait until a replica serves and says the application is protected
    /// (a backup has it). Returns the primary's name.
    pub fn wait_protected(&self, timeout: Duration) -> Result<String, ClusterError> {
        let start = Instant::now();
        let poll = Duration::from_secs(2).min(timeout);
        let mut last = String::from("no answer yet");
        while start.elapsed() < timeout {
            match self.primary(poll) {
                Some((p, a)) if a.protected == Some(true) => return Ok(p),
                Some((p, a)) => {
                    last = format!("{p} is primary at epoch {}, not protected", a.epoch)
                }
                None => last = "no replica claims to be primary".into(),
            }
            thread::sleep(Duration::from_millis(100));
        }
        Err(ClusterError::Timeout {
            what: "the application protected".into(),
            timeout,
            last,
        })
    }

    /// Wait until the backup has replayed everything the primary logged
    /// (both numbers as `status` reports them).
    pub fn wait_caught_up(&self, timeout: Duration) -> Result<(), ClusterError> {
        let start = Instant::now();
        let poll = Duration::from_secs(2).min(timeout);
        let mut last = String::from("no answer yet");
        while start.elapsed() < timeout {
            match self.primary(poll) {
                Some((p, a)) => {
                    match caught_up(&p, &a, self.app_status(Cluster::other_replica(&p), poll)) {
                        Ok(()) => return Ok(()),
                        Err(why) => last = why,
                    }
                }
                None => last = "no primary".into(),
            }
            thread::sleep(Duration::from_millis(100));
        }
        Err(ClusterError::Timeout {
            what: "the backup caught up".into(),
            timeout,
            last,
        })
    }

    /// Wait until a replica other than `old` claims to serve in an epoch
    /// above `old_epoch`; returns it and its epoch.
    pub fn wait_takeover(
        &self,
        old: &str,
        old_epoch: u64,
        timeout: Duration,
    ) -> Result<(String, u64), ClusterError> {
        let start = Instant::now();
        let new = Cluster::other_replica(old);
        let poll = Duration::from_secs(2).min(timeout);
        let mut last = String::from("no answer yet");
        while start.elapsed() < timeout {
            let status = self.status_within(new, poll);
            match status.as_ref().map(|s| s.app(&self.config.app)) {
                Ok(Some(a)) if a.claims_serving() && a.epoch > old_epoch => {
                    return Ok((new.to_owned(), a.epoch))
                }
                Ok(Some(a)) => last = format!("{new} is {} at epoch {}", a.role.as_str(), a.epoch),
                Ok(None) => {
                    last = format!(
                        "{new} answers status but has no application {}",
                        self.config.app
                    )
                }
                Err(e) => last = format!("{new} does not answer status: {e}"),
            }
            thread::sleep(Duration::from_millis(50));
        }
        Err(ClusterError::Timeout {
            what: format!("{new} taking over from {old}"),
            timeout,
            last,
        })
    }

    /// `ferry failover APP` through node `via` (the primary).
    pub fn failover(&self, via: &str) -> Result<(), ClusterError> {
        let app = self.config.app.clone();
        self.ferry_in(via, &["failover", &app], self.config.step_timeout)
            .map(|_| ())
    }

    /// `ferry failover APP` through `via`, asked again while it fails, for
    /// at most `timeout` (a backup that just came back may not be ready for
    /// it at once).
    pub fn failover_within(&self, via: &str, timeout: Duration) -> Result<(), ClusterError> {
        let start = Instant::now();
        loop {
            match self.failover(via) {
                Ok(()) => return Ok(()),
                Err(e) if start.elapsed() >= timeout => return Err(e),
                Err(_) => thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// `ferry migrate APP --to TO [--rollback | --commit]` through node
    /// `via`; what it printed.
    pub fn migrate(
        &self,
        via: &str,
        to: &str,
        step: Option<&str>,
        timeout: Duration,
    ) -> Result<String, ClusterError> {
        let app = self.config.app.clone();
        let mut args = vec!["migrate", app.as_str(), "--to", to];
        args.extend(step);
        self.ferry_in(via, &args, timeout).map(|o| o.stdout)
    }

    /// `ferry stop APP` through node `via`.
    pub fn stop_app(&self, via: &str) -> Result<(), ClusterError> {
        let app = self.config.app.clone();
        self.ferry_in(via, &["stop", &app], self.config.step_timeout)
            .map(|_| ())
    }

    /// Run `f` in a thread inside the client host and wait for it.
    pub fn in_client<T, F>(&self, f: F) -> Result<T, ClusterError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let ns = self.client_ns()?;
        netns::run_in(&ns, f).map_err(|source| ClusterError::Io {
            what: "running in the client host".into(),
            source,
        })
    }

    /// Start `f` in a thread inside the client host.
    pub fn spawn_in_client<T, F>(&self, f: F) -> Result<thread::JoinHandle<T>, ClusterError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let ns = self.client_ns()?;
        let enter = ns.clone();
        thread::Builder::new()
            .name("client".into())
            .spawn(move || {
                if let Err(e) = netns::enter(&enter) {
                    panic!("cannot enter the client host {enter}: {e}");
                }
                f()
            })
            .map_err(|source| ClusterError::Io {
                what: format!("starting a thread for {ns}"),
                source,
            })
    }

    /// Run a workload from the client host against the service address
    /// (`config.addr` is replaced by it) and wait for its end.
    pub fn write(&self, mut config: WorkloadConfig) -> Result<Workload, ClusterError> {
        config.addr = self.service_addr();
        self.in_client(move || Workload::run(config))
    }

    /// Check from the client host that every write `workload` saw
    /// acknowledged is at the service address.
    pub fn verify(&self, workload: Workload) -> Result<(Workload, VerifyReport), ClusterError> {
        let addr = self.service_addr();
        let (workload, result) = self.in_client(move || {
            let r = workload.verify(&addr);
            (workload, r)
        })?;
        result
            .map(|r| (workload, r))
            .map_err(|e| ClusterError::Kv(format!("verifying: {e}")))
    }

    /// The `DIGEST` the service address answers, asked from the client.
    pub fn digest(&self, timeout: Duration) -> Result<String, ClusterError> {
        let addr = self.service_addr();
        self.in_client(move || {
            let reconnect = ferry_kv::Reconnect {
                deadline: timeout,
                ..ferry_kv::Reconnect::default()
            };
            Client::connect_reconnecting(&addr, Duration::from_secs(2), reconnect)
                .and_then(|mut c| c.digest())
                .map_err(|e| e.to_string())
        })?
        .map_err(ClusterError::Kv)
    }

    /// The host whose MAC address the client has for the service address
    /// (its neighbour entry), if it has one.
    pub fn vip_owner(&self) -> Option<String> {
        let ns = self.client_ns().ok()?;
        let out = cmd::run(
            Command::new("ip").args(["-n", &ns, "neigh", "show", &VIP.to_string()]),
            cmd::QUICK,
        )
        .ok()?;
        let mut words = out.stdout.split_whitespace();
        while let Some(w) = words.next() {
            if w == "lladdr" {
                let mac = words.next()?;
                return self.topo.host_by_mac(mac).map(|h| h.name.clone());
            }
        }
        None
    }

    /// kill -9 `ferryd` on node `name`.
    pub fn kill_daemon(&mut self, name: &str) -> Result<(), ClusterError> {
        let node = self.node_mut(name)?;
        let mut child = node.daemon.take().ok_or_else(|| {
            ClusterError::Kv(format!("no ferryd started by the harness runs on {name}"))
        })?;
        let _ = child.kill();
        let _ = child.wait();
        Ok(())
    }

    /// Start `ferryd` on node `name` again as its systemd unit would after
    /// it died (`KillMode=control-group`, scripts/systemd/ferryd.service):
    /// the processes the old one left (every process of the host: they are
    /// all ferryd's) are killed first.
    pub fn restart_daemon(&mut self, name: &str) -> Result<(), ClusterError> {
        let host = self.topo.host(name)?.clone();
        fault::kill_host(&host)?;
        if let Some(mut c) = self.node_mut(name)?.daemon.take() {
            let _ = c.wait();
        }
        self.start_daemon(name)
    }

    /// SIGSTOP (freeze) or SIGCONT (resume) `ferryd` on node `name`.
    pub fn signal_daemon(&self, name: &str, sig: Signal) -> Result<(), ClusterError> {
        let pid = self.node(name)?.daemon_pid().ok_or_else(|| {
            ClusterError::Kv(format!("no ferryd started by the harness runs on {name}"))
        })?;
        fault::signal(pid, sig)?;
        Ok(())
    }

    /// kill -9 the protected program (`ferry-kv`) on node `name`.
    pub fn kill_app(&self, name: &str) -> Result<Vec<i32>, ClusterError> {
        Ok(fault::kill_named(&self.node(name)?.host, "ferry-kv")?)
    }

    /// kill -9 every process of host `name` and cut its link.
    pub fn kill_host(&mut self, name: &str) -> Result<Vec<i32>, ClusterError> {
        let host = self.topo.host(name)?.clone();
        let killed = fault::kill_host(&host)?;
        self.topo.set_link(name, false)?;
        if let Ok(node) = self.node_mut(name) {
            if let Some(mut c) = node.daemon.take() {
                let _ = c.wait();
            }
        }
        Ok(killed)
    }

    /// Bring host `name` back as after a reboot: every process killed, its
    /// network state gone ([`Topology::reboot_host`]), the link up, and
    /// `ferryd` started again with its data directory as it was.
    pub fn reboot_host(&mut self, name: &str) -> Result<(), ClusterError> {
        self.topo.reboot_host(name)?;
        if let Ok(node) = self.node_mut(name) {
            if let Some(mut c) = node.daemon.take() {
                let _ = c.wait();
            }
        }
        let host = self.topo.host(name)?.clone();
        self.firewalls
            .insert(name.to_owned(), Firewall::install(&host)?);
        if self.node(name).is_ok() {
            self.start_daemon(name)?;
        }
        Ok(())
    }

    /// Remove everything now (also done on drop). Returns what could not
    /// be removed.
    pub fn down(self) -> Result<(), Vec<String>> {
        let Cluster {
            mut nodes, topo, ..
        } = self;
        let result = topo.down();
        for n in &mut nodes {
            if let Some(mut c) = n.daemon.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        result
    }
}

/// Whether the backup of primary `p` (whose status is `a`; the backup's is
/// `b`) has everything: when the primary lists its backups, it lists this
/// one in sync and having acknowledged all it logged (the log is there);
/// and the backup, in the primary's epoch, has replayed all of it (its
/// replica could go live at once).
fn caught_up(p: &str, a: &AppStatus, b: Option<AppStatus>) -> Result<(), String> {
    let name = Cluster::other_replica(p);
    let logged = a.logged.unwrap_or(0);
    if !a.backups.is_empty() {
        match a.backups.iter().find(|x| x.node == name) {
            Some(x) if x.in_sync() && x.acked.unwrap_or(logged) >= logged => {}
            Some(x) => {
                return Err(format!(
                "{p} says of {name}: healthy {:?}, in contact {:?}, acknowledged {:?} of {logged}",
                x.healthy, x.in_contact, x.acked
            ))
            }
            None => return Err(format!("{p} does not list {name} among its backups")),
        }
    }
    match b {
        Some(b) if b.role == Role::Backup && b.epoch == a.epoch => {
            if b.replayed >= Some(logged) {
                Ok(())
            } else {
                Err(format!(
                    "{name} replayed {:?} of the {logged} {p} logged",
                    b.replayed
                ))
            }
        }
        other => Err(format!(
            "{p} is primary at epoch {}, {name}: {}",
            a.epoch,
            other.map_or("no answer".into(), |b| format!(
                "{} at epoch {}",
                b.role.as_str(),
                b.epoch
            ))
        )),
    }
}

/// Reads `ferry status --json` from each node (a copy of what it
/// needs, so that monitoring threads can own one).
#[derive(Debug, Clone)]
pub struct StatusReader {
    ferry: PathBuf,
    app: String,
    /// Name, namespace, control socket.
    nodes: Vec<(String, String, PathBuf)>,
}

impl StatusReader {
    /// The node names.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|(n, _, _)| n.as_str())
    }

    pub fn app(&self) -> &str {
        &self.app
    }

    /// `ferry --control SOCK status --json`, run inside node `name`'s host,
    /// within `timeout`.
    pub fn status(&self, name: &str, timeout: Duration) -> Result<NodeStatus, ClusterError> {
        let (_, ns, control) = self
            .nodes
            .iter()
            .find(|(n, _, _)| n == name)
            .ok_or_else(|| ClusterError::NoNode(name.to_owned()))?;
        let mut c = netns::command(ns, &self.ferry);
        // Every application, not `status APP`: a node that does not know the
        // application yet (before `ferry run`, or just started) answers too.
        c.arg("--control").arg(control).args(["status", "--json"]);
        let out = run_on(c, name, timeout)?;
        status::parse(&out.stdout).map_err(|source| ClusterError::Status {
            node: name.to_owned(),
            source,
        })
    }

    /// What node `name` says about the application, if it answers.
    pub fn app_status(&self, name: &str, timeout: Duration) -> Option<AppStatus> {
        self.status(name, timeout)
            .ok()
            .and_then(|s| s.app(&self.app).cloned())
    }
}

/// Run `c` (a command inside node `name`'s host) within `timeout`; its
/// output, or an error naming it and the host, with its stderr when it failed.
fn run_on(mut c: Command, name: &str, timeout: Duration) -> Result<cmd::Output, ClusterError> {
    cmd::run(&mut c, timeout).map_err(|source| ClusterError::Cmd {
        what: format!("{} (on {name})", cmd::describe(&c)),
        source,
    })
}

impl Drop for Node {
    fn drop(&mut self) {
        // The topology kills every process of the host; reap ours.
        if self.keep {
            return;
        }
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::BackupStatus;

    fn app(role: Role, epoch: u64, logged: u64, replayed: u64) -> AppStatus {
        AppStatus {
            name: "kv".into(),
            role,
            epoch,
            logged: Some(logged),
            acknowledged: None,
            replayed: Some(replayed),
            protected: None,
            gate_open: None,
            backups: Vec::new(),
        }
    }

    #[test]
    fn caught_up_from_the_primarys_list_of_backups() {
        let mut p = app(Role::Primary, 3, 100, 100);
        let b = |acked, healthy| BackupStatus {
            node: "n2".into(),
            acked: Some(acked),
            healthy: Some(healthy),
            in_contact: Some(true),
        };
        p.backups = vec![b(100, true)];
        let backup = || Some(app(Role::Backup, 3, 0, 100));
        assert!(caught_up("n1", &p, backup()).is_ok());
        // The log is there but the replica has not replayed it all.
        let err = caught_up("n1", &p, Some(app(Role::Backup, 3, 0, 50))).unwrap_err();
        assert!(err.contains("replayed Some(50) of the 100"), "{err}");
        p.backups = vec![b(90, true)];
        assert!(caught_up("n1", &p, None)
            .unwrap_err()
            .contains("acknowledged Some(90) of 100"));
        p.backups = vec![b(100, false)];
        assert!(caught_up("n1", &p, None).is_err());
    }

    #[test]
    fn caught_up_from_the_backups_own_status() {
        let p = app(Role::Primary, 3, 100, 100);
        assert!(caught_up("n1", &p, Some(app(Role::Backup, 3, 0, 100))).is_ok());
        assert!(caught_up("n1", &p, Some(app(Role::Backup, 3, 0, 99))).is_err());
        // An old primary's own numbers, in an older epoch, do not count.
        assert!(caught_up("n1", &p, Some(app(Role::Backup, 2, 0, 500))).is_err());
        assert!(caught_up("n1", &p, None).is_err());
    }
}
