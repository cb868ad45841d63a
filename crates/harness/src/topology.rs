//! Hosts on one machine: one network namespace per host, each joined by a
//! veth pair to a Linux bridge that lives in a namespace of its own, so that
//! nothing of a run appears in the machine's own namespace.
//!
//! Every name of a run carries its run id: namespaces are
//! `ferry-chaos-<id>-<host>` (the bridge's is `ferry-chaos-<id>-br`), files
//! are under `/tmp/ferry-chaos-<id>`. Interface names live inside those
//! namespaces (`eth0` in a host, `br0` and `v-<host>` in the bridge's), so
//! parallel runs never clash, and [`remove_leftovers`] finds everything a
//! killed run left behind by its prefix. Addresses are in 10.99.0.0/24.

use crate::cmd::{self, CmdError, QUICK};
use crate::guard;
use crate::netns;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// What every namespace and directory of the harness starts with.
pub const PREFIX: &str = "ferry-chaos-";
/// The interface of a host, inside its namespace.
pub const IFACE: &str = "eth0";
/// The bridge, inside the bridge's namespace.
pub const BRIDGE: &str = "br0";
/// The network: 10.99.0.0/24.
pub const NET_PREFIX: u8 = 24;

/// The address of host number `n` in the harness network.
pub fn addr(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 0, n)
}

/// Why the topology could not be built or changed.
#[derive(Debug, Error)]
pub enum TopoError {
    #[error(
        "the harness needs {what}: {why} (run as root on Linux with iproute2 and nftables installed)"
    )]
    Requirement { what: &'static str, why: String },
    #[error("{step}: {source}")]
    Cmd {
        step: String,
        #[source]
        source: CmdError,
    },
    #[error("{step}: {source}")]
    Io {
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no host named {0} in this topology")]
    NoHost(String),
}

/// Check that this process can build namespaces: root, `ip`, and with
/// `nft` also nftables.
pub fn require(nft: bool) -> Result<(), TopoError> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err(TopoError::Requirement {
            what: "root",
            why: format!("running as uid {}", nix::unistd::Uid::effective()),
        });
    }
    if !cmd::available("ip") {
        return Err(TopoError::Requirement {
            what: "`ip` (iproute2)",
            why: "not found on PATH".into(),
        });
    }
    if nft && !cmd::available("nft") {
        return Err(TopoError::Requirement {
            what: "`nft` (nftables)",
            why: "not found on PATH; install the nftables package".into(),
        });
    }
    Ok(())
}

/// A fresh run id: 6 hex digits from the clock and the process id.
pub fn new_run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos ^ (u64::from(std::process::id()) << 20);
    // splitmix64 finaliser, so that close clocks give different ids.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    format!("{:06x}", x & 0xff_ffff)
}

/// One host.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its short name (`n1`, `client`, …).
    pub name: String,
    /// Its namespace.
    pub ns: String,
    pub ip: Ipv4Addr,
    /// The MAC address of its `eth0`.
    pub mac: String,
    /// Its veth end on the bridge (inside the bridge's namespace).
    pub port: String,
}

/// The namespaces, veths and bridge of one run, and its directory. Dropping
/// it removes all of them and kills every process inside its hosts, unless
/// it was built to be kept.
#[derive(Debug)]
pub struct Topology {
    id: String,
    bridge_ns: String,
    hosts: Vec<Host>,
    dir: PathBuf,
    keep: bool,
    removed: bool,
}

fn ip(args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(args);
    c
}

fn step(what: impl Into<String>, c: &mut Command) -> Result<cmd::Output, TopoError> {
    cmd::run(c, QUICK).map_err(|source| TopoError::Cmd {
        step: what.into(),
        source,
    })
}

impl Topology {
    /// Build hosts `(name, last byte of the address)` on a new bridge. With
    /// `keep`, nothing is removed when the topology is dropped (for
    /// debugging; `ferry-chaos cleanup` removes it later).
    pub fn up(id: &str, hosts: &[(&str, u8)], keep: bool) -> Result<Topology, TopoError> {
        require(false)?;
        let dir = PathBuf::from("/tmp").join(format!("{PREFIX}{id}"));
        let mut topo = Topology {
            id: id.to_owned(),
            bridge_ns: format!("{PREFIX}{id}-br"),
            hosts: Vec::new(),
            dir,
            keep,
            removed: false,
        };
        if !keep {
            guard::register(id);
        }
        // From here on, dropping `topo` on an error removes what was made.
        std::fs::create_dir_all(&topo.dir).map_err(|source| TopoError::Io {
            step: format!("creating {}", topo.dir.display()),
            source,
        })?;
        write_owner(&topo.dir).map_err(|source| TopoError::Io {
            step: format!("writing {}/owner", topo.dir.display()),
            source,
        })?;
        let br = topo.bridge_ns.clone();
        step(
            format!("creating namespace {br}"),
            &mut ip(&["netns", "add", &br]),
        )?;
        step(
            "bridge lo up",
            &mut ip(&["-n", &br, "link", "set", "lo", "up"]),
        )?;
        step(
            "creating the bridge",
            &mut ip(&["-n", &br, "link", "add", BRIDGE, "type", "bridge"]),
        )?;
        step(
            "bridge up",
            &mut ip(&["-n", &br, "link", "set", BRIDGE, "up"]),
        )?;
        for &(name, n) in hosts {
            let host = Host {
                name: name.to_owned(),
                ns: format!("{PREFIX}{id}-{name}"),
                ip: addr(n),
                mac: format!("02:99:00:00:00:{n:02x}"),
                port: format!("v-{name}"),
            };
            step(
                format!("creating namespace {}", host.ns),
                &mut ip(&["netns", "add", &host.ns]),
            )?;
            topo.hosts.push(host.clone());
            topo.wire(&host)?;
        }
        Ok(topo)
    }

    /// Connect `host`'s new namespace to the bridge and give it its
    /// address.
    fn wire(&self, host: &Host) -> Result<(), TopoError> {
        let (br, ns, name) = (&self.bridge_ns, &host.ns, &host.name);
        step(
            format!("veth for {name}"),
            &mut ip(&[
                "-n", br, "link", "add", &host.port, "type", "veth", "peer", "name", IFACE,
                "netns", ns,
            ]),
        )?;
        step(
            format!("attaching {name} to the bridge"),
            &mut ip(&["-n", br, "link", "set", &host.port, "master", BRIDGE, "up"]),
        )?;
        let cidr = format!("{}/{NET_PREFIX}", host.ip);
        for (what, args) in [
            ("lo up", vec!["-n", ns, "link", "set", "lo", "up"]),
            (
                "mac",
                vec!["-n", ns, "link", "set", IFACE, "address", &host.mac],
            ),
            (
                "address",
                vec!["-n", ns, "addr", "add", &cidr, "dev", IFACE],
            ),
            ("up", vec!["-n", ns, "link", "set", IFACE, "up"]),
        ] {
            step(format!("{name}: {what}"), &mut ip(&args))?;
        }
        Ok(())
    }

    /// Host `name` as after a power cycle: every process killed, and its
    /// namespace deleted and made again, so that nothing of its network
    /// state survives (addresses added since, sockets, neighbour entries,
    /// nftables rules); connected to the bridge again with its address.
    pub fn reboot_host(&self, name: &str) -> Result<(), TopoError> {
        let host = self.host(name)?.clone();
        kill_all_in(&host.ns, Duration::from_secs(5)).map_err(|source| TopoError::Io {
            step: format!("killing the processes of {name}"),
            source,
        })?;
        step(
            format!("deleting namespace {}", host.ns),
            &mut ip(&["netns", "del", &host.ns]),
        )?;
        // The bridge's end of the veth goes with the namespace's, though
        // not always at once.
        let start = Instant::now();
        while step(
            "",
            &mut ip(&["-n", &self.bridge_ns, "link", "show", &host.port]),
        )
        .is_ok()
        {
            if start.elapsed() > Duration::from_secs(5) {
                step(
                    format!("removing {}", host.port),
                    &mut ip(&["-n", &self.bridge_ns, "link", "del", &host.port]),
                )?;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        step(
            format!("creating namespace {}", host.ns),
            &mut ip(&["netns", "add", &host.ns]),
        )?;
        self.wire(&host)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The run's directory (`/tmp/ferry-chaos-<id>`), removed with it.
    pub fn dir(&self) -> &PathBuf {
        &self.dir
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn bridge_ns(&self) -> &str {
        &self.bridge_ns
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> Result<&Host, TopoError> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| TopoError::NoHost(name.to_owned()))
    }

    /// The host whose `eth0` has MAC address `mac`.
    pub fn host_by_mac(&self, mac: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.mac.eq_ignore_ascii_case(mac))
    }

    /// Cut host `name` off the bridge (its veth end on the bridge goes
    /// down), or connect it again.
    pub fn set_link(&self, name: &str, up: bool) -> Result<(), TopoError> {
        let h = self.host(name)?;
        let state = if up { "up" } else { "down" };
        step(
            format!("link of {name} {state}"),
            &mut ip(&["-n", &self.bridge_ns, "link", "set", &h.port, state]),
        )?;
        Ok(())
    }

    /// Whether every namespace of the run exists.
    pub fn exists(&self) -> bool {
        netns::exists(&self.bridge_ns) && self.hosts.iter().all(|h| netns::exists(&h.ns))
    }

    /// Remove everything now: kill every process of every host, delete the
    /// namespaces (and with them the veths and the bridge), remove the
    /// directory. Errors are collected, and everything else is still
    /// removed.
    pub fn down(mut self) -> Result<(), Vec<String>> {
        self.removed = true;
        let errors = remove_run(&self.id);
        guard::unregister(&self.id);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if self.removed || self.keep {
            return;
        }
        for e in remove_run(&self.id) {
            eprintln!("ferry-chaos: cleanup of run {}: {e}", self.id);
        }
        guard::unregister(&self.id);
    }
}

/// The namespaces whose names start with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) {
                out.push(name);
            }
        }
    }
    out.sort();
    out
}

/// Kill every process of namespace `ns` with SIGKILL, again until none is
/// left (a process may fork while we kill), for at most `timeout`. Returns
/// the pids killed.
pub fn kill_all_in(ns: &str, timeout: Duration) -> Result<Vec<i32>, std::io::Error> {
    let start = Instant::now();
    let mut killed = Vec::new();
    loop {
        let pids = netns::pids_in(ns)?;
        if pids.is_empty() {
            return Ok(killed);
        }
        for &pid in &pids {
            if nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok()
                && !killed.contains(&pid)
            {
                killed.push(pid);
            }
        }
        if start.elapsed() > timeout {
            return Err(std::io::Error::other(format!(
                "processes {pids:?} of {ns} still there after {timeout:?}"
            )));
        }
        // A killed process stays in /proc until its parent reaps it; a
        // zombie has no namespace link left, so it drops out of the list.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Remove everything of run `id`: processes, namespaces, directory.
pub fn remove_run(id: &str) -> Vec<String> {
    remove_prefix(&format!("{PREFIX}{id}-"), id)
}

fn remove_prefix(ns_prefix: &str, id: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let namespaces = namespaces_with_prefix(ns_prefix);
    for ns in &namespaces {
        if let Err(e) = kill_all_in(ns, Duration::from_secs(5)) {
            errors.push(format!("killing the processes of {ns}: {e}"));
        }
    }
    for ns in &namespaces {
        if let Err(e) = cmd::run(&mut ip(&["netns", "del", ns]), QUICK) {
            errors.push(format!("deleting namespace {ns}: {e}"));
        }
    }
    let dirs = [PathBuf::from("/tmp").join(format!("{PREFIX}{id}"))];
    for d in dirs {
        if d.exists() {
            if let Err(e) = std::fs::remove_dir_all(&d) {
                errors.push(format!("removing {}: {e}", d.display()));
            }
        }
    }
    errors
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`), which
/// with the pid names one process even after pids wrap around.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: count after it.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Write which process owns run directory `dir`.
fn write_owner(dir: &std::path::Path) -> std::io::Result<()> {
    let me = std::process::id();
    let start = start_time(me).unwrap_or(0);
    std::fs::write(dir.join("owner"), format!("{me} {start}\n"))
}

/// The live process that owns run `id`, if any.
pub fn run_owner(id: &str) -> Option<u32> {
    let text =
        std::fs::read_to_string(PathBuf::from("/tmp").join(format!("{PREFIX}{id}/owner"))).ok()?;
    let mut words = text.split_whitespace();
    let pid: u32 = words.next()?.parse().ok()?;
    let start: u64 = words.next()?.parse().ok()?;
    (start_time(pid) == Some(start)).then_some(pid)
}

/// The run ids with a namespace or a directory whose name starts with
/// `prefix`.
pub fn runs_with_prefix(prefix: &str) -> Vec<String> {
    let id_of = |name: &str| -> Option<String> {
        let rest = name.strip_prefix(PREFIX)?;
        Some(rest.split('-').next()?.to_owned())
    };
    let mut ids: Vec<String> = namespaces_with_prefix(prefix)
        .iter()
        .filter_map(|n| id_of(n))
        .collect();
    if let Ok(rd) = std::fs::read_dir("/tmp") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) || format!("{name}-").starts_with(prefix) {
                ids.extend(id_of(&name));
            }
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

/// What [`remove_leftovers`] did.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Namespaces removed.
    pub removed: Vec<String>,
    /// Runs left alone because their process still runs: id and pid.
    pub in_use: Vec<(String, u32)>,
    pub errors: Vec<String>,
}

/// Remove what runs left behind whose names start with `prefix` (by default
/// [`PREFIX`], every run): processes in their namespaces, the namespaces,
/// the directories. A run whose `ferry-chaos` still runs is left alone
/// unless `force`.
pub fn remove_leftovers(prefix: &str, force: bool) -> Leftovers {
    let mut out = Leftovers::default();
    for id in runs_with_prefix(prefix) {
        if let (false, Some(pid)) = (force, run_owner(&id)) {
            out.in_use.push((id, pid));
            continue;
        }
        out.removed
            .extend(namespaces_with_prefix(&format!("{PREFIX}{id}-")));
        out.errors.extend(remove_run(&id));
    }
    out
}
