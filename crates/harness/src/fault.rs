//! The faults, and the packet counters that tell which host answers.
//!
//! - processes: kill -9 one process, or every process of a host
//!   ([`kill_host`]); freeze and resume one (SIGSTOP, SIGCONT);
//! - links: [`Topology::set_link`](crate::topology::Topology::set_link);
//! - packets: an nftables table inside a host's namespace (never in the
//!   machine's own) that can drop a UDP port in both directions
//!   ([`Firewall::block_udp`]) and counts the service's answers leaving the
//!   host ([`Firewall::answers`]): TCP segments from the service port that
//!   carry data (PSH set).

use crate::cmd::{self, CmdError, QUICK};
use crate::netns;
use crate::topology::{self, Host};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::process::Command;
use std::time::Duration;
use thiserror::Error;

/// Why a fault could not be injected.
#[derive(Debug, Error)]
pub enum FaultError {
    #[error("{what} on {host}: {source}")]
    Cmd {
        what: String,
        host: String,
        #[source]
        source: CmdError,
    },
    #[error("{what} on {host}: {source}")]
    Io {
        what: String,
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("signal {signal:?} to process {pid}: {source}")]
    Signal {
        pid: i32,
        signal: Signal,
        source: nix::Error,
    },
    #[error("no process named {comm} on {host}")]
    NoProcess { comm: String, host: String },
    #[error("unexpected output of {what} on {host}: {output:?}")]
    Parse {
        what: String,
        host: String,
        output: String,
    },
}

/// Send `signal` to process `pid`.
pub fn signal(pid: i32, signal: Signal) -> Result<(), FaultError> {
    kill(Pid::from_raw(pid), signal).map_err(|source| FaultError::Signal {
        pid,
        signal,
        source,
    })
}

/// kill -9 every process of `host`. Returns the pids killed.
pub fn kill_host(host: &Host) -> Result<Vec<i32>, FaultError> {
    topology::kill_all_in(&host.ns, Duration::from_secs(5)).map_err(|source| FaultError::Io {
        what: "killing every process".into(),
        host: host.name.clone(),
        source,
    })
}

/// The processes of `host` whose command name is `comm` (the first 15 bytes
/// of the executable's name).
pub fn processes_named(host: &Host, comm: &str) -> Result<Vec<i32>, FaultError> {
    let want: String = comm.chars().take(15).collect();
    let pids = netns::pids_in(&host.ns).map_err(|source| FaultError::Io {
        what: "listing processes".into(),
        host: host.name.clone(),
        source,
    })?;
    Ok(pids
        .into_iter()
        .filter(|&p| netns::comm(p).as_deref() == Some(want.as_str()))
        .collect())
}

/// kill -9 every process named `comm` on `host`; at least one must exist.
pub fn kill_named(host: &Host, comm: &str) -> Result<Vec<i32>, FaultError> {
    let pids = processes_named(host, comm)?;
    if pids.is_empty() {
        return Err(FaultError::NoProcess {
            comm: comm.into(),
            host: host.name.clone(),
        });
    }
    for &p in &pids {
        signal(p, Signal::SIGKILL)?;
    }
    Ok(pids)
}

/// The nftables table of the harness inside one host.
#[derive(Debug, Clone)]
pub struct Firewall {
    host: String,
    ns: String,
}

const TABLE: &str = "ferry_chaos";

impl Firewall {
    /// Install the table in `host`, counting answers from TCP port
    /// `service_port`. Nothing is dropped yet.
    pub fn install(host: &Host, service_port: u16) -> Result<Firewall, FaultError> {
        let fw = Firewall {
            host: host.name.clone(),
            ns: host.ns.clone(),
        };
        let rules = format!(
            "table inet {TABLE} {{\n\
             \tcounter answers {{ }}\n\
             \tchain out {{\n\
             \t\ttype filter hook output priority 0; policy accept;\n\
             \t\ttcp sport {service_port} tcp flags & psh == psh counter name \"answers\"\n\
             \t}}\n\
             \tchain block_in {{ type filter hook input priority -10; policy accept; }}\n\
             \tchain block_out {{ type filter hook output priority -10; policy accept; }}\n\
             }}\n"
        );
        cmd::run_input(&mut fw.nft(&["-f", "-"]), &rules, QUICK).map_err(|source| {
            FaultError::Cmd {
                what: "installing the nftables table".into(),
                host: fw.host.clone(),
                source,
            }
        })?;
        Ok(fw)
    }

    fn nft(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, "nft"]).args(args);
        c
    }

    fn run(&self, what: &str, args: &[&str]) -> Result<cmd::Output, FaultError> {
        cmd::run(&mut self.nft(args), QUICK).map_err(|source| FaultError::Cmd {
            what: what.into(),
            host: self.host.clone(),
            source,
        })
    }

    /// Drop every UDP packet to or from `port` entering or leaving the host.
    pub fn block_udp(&self, port: u16) -> Result<(), FaultError> {
        let p = port.to_string();
        for chain in ["block_in", "block_out"] {
            for dir in ["dport", "sport"] {
                self.run(
                    "adding a drop rule",
                    &["add", "rule", "inet", TABLE, chain, "udp", dir, &p, "drop"],
                )?;
            }
        }
        Ok(())
    }

    /// Remove every drop rule.
    pub fn unblock(&self) -> Result<(), FaultError> {
        for chain in ["block_in", "block_out"] {
            self.run(
                "removing the drop rules",
                &["flush", "chain", "inet", TABLE, chain],
            )?;
        }
        Ok(())
    }

    /// Answers (data segments from the service port) that left the host.
    pub fn answers(&self) -> Result<u64, FaultError> {
        let out = self.run(
            "reading the answer counter",
            &["list", "counter", "inet", TABLE, "answers"],
        )?;
        parse_packets(&out.stdout).ok_or_else(|| FaultError::Parse {
            what: "nft list counter".into(),
            host: self.host.clone(),
            output: out.stdout.clone(),
        })
    }
}

/// The `packets N` of an `nft list counter` output.
pub fn parse_packets(text: &str) -> Option<u64> {
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "packets" {
            return words.next()?.parse().ok();
        }
    }
    None
}
