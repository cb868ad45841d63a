//! The faults, and the packet counters that tell which host answers.
//!
//! - processes: kill -9 one process, or every process of a host
//!   ([`kill_host`]); freeze and resume one (SIGSTOP, SIGCONT);
//! - links: [`Topology::set_link`](crate::topology::Topology::set_link);
//! - packets: an nftables table inside a host's namespace (never in the
//!   machine's own) that can drop a UDP port in both directions
//!   ([`Firewall::block_udp`]);
//! - and a table on the bridge that counts the service's answers coming
//!   from each host ([`AnswerCounters`]): TCP segments from the service port
//!   that carry data (PSH set).

use crate::cmd::{self, CmdError, QUICK};
use crate::netns;
use crate::topology::{self, Host, Topology};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
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

/// The nftables table of the harness inside one host, where drop rules go.
#[derive(Debug, Clone)]
pub struct Firewall {
    host: String,
    ns: String,
}

const TABLE: &str = "ferry_chaos";

fn nft_in(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "nft"]).args(args);
    c
}

impl Firewall {
    /// Install the table in `host`. Nothing is dropped yet.
    pub fn install(host: &Host) -> Result<Firewall, FaultError> {
        let fw = Firewall {
            host: host.name.clone(),
            ns: host.ns.clone(),
        };
        let rules = format!(
            "table inet {TABLE} {{\n\
             \tchain block_in {{ type filter hook input priority -10; policy accept; }}\n\
             \tchain block_out {{ type filter hook output priority -10; policy accept; }}\n\
             }}\n"
        );
        cmd::run_input(&mut nft_in(&fw.ns, &["-f", "-"]), &rules, QUICK).map_err(|source| {
            FaultError::Cmd {
                what: "installing the nftables table".into(),
                host: fw.host.clone(),
                source,
            }
        })?;
        Ok(fw)
    }

    fn run(&self, what: &str, args: &[&str]) -> Result<cmd::Output, FaultError> {
        cmd::run(&mut nft_in(&self.ns, args), QUICK).map_err(|source| FaultError::Cmd {
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
}

/// Counters, on the bridge, of the service's answers coming from each
/// host: TCP segments from the service port that carry data (PSH set),
/// entering the bridge from the host's port. Counting where the frames
/// reach the network, not where a host sends them, leaves out what a host
/// cut off from the bridge still tries to send.
#[derive(Debug, Clone)]
pub struct AnswerCounters {
    bridge_ns: String,
    /// Host name and its port on the bridge.
    hosts: Vec<(String, String)>,
}

impl AnswerCounters {
    /// Install a counter for every host of `topo` (its name must be made
    /// of letters, digits, `-` or `_`).
    pub fn install(topo: &Topology, service_port: u16) -> Result<AnswerCounters, FaultError> {
        let counters = AnswerCounters {
            bridge_ns: topo.bridge_ns().to_owned(),
            hosts: topo
                .hosts()
                .iter()
                .map(|h| (h.name.clone(), h.port.clone()))
                .collect(),
        };
        let mut rules = format!("table bridge {TABLE} {{\n");
        for (name, _) in &counters.hosts {
            rules.push_str(&format!(
                "\tcounter answers_{name} {{ }}\n\tcounter refusals_{name} {{ }}\n"
            ));
        }
        rules.push_str(
            "\tchain forward {\n\t\ttype filter hook forward priority 0; policy accept;\n",
        );
        for (name, port) in &counters.hosts {
            rules.push_str(&format!(
                "\t\tiifname \"{port}\" tcp sport {service_port} tcp flags & psh == psh counter name \"answers_{name}\"\n\
                 \t\tiifname \"{port}\" tcp sport {service_port} tcp flags & rst == rst counter name \"refusals_{name}\"\n"
            ));
        }
        rules.push_str("\t}\n}\n");
        cmd::run_input(
            &mut nft_in(&counters.bridge_ns, &["-f", "-"]),
            &rules,
            QUICK,
        )
        .map_err(|source| FaultError::Cmd {
            what: "installing the answer counters".into(),
            host: "the bridge".into(),
            source,
        })?;
        Ok(counters)
    }

    /// Answers from each host so far.
    pub fn read(&self) -> Result<BTreeMap<String, u64>, FaultError> {
        self.read_kind("answers")
    }

    /// Resets (RST) from the service port that each host sent so far: a
    /// host that has the service address but no server behind it.
    pub fn refusals(&self) -> Result<BTreeMap<String, u64>, FaultError> {
        self.read_kind("refusals")
    }

    fn read_kind(&self, kind: &str) -> Result<BTreeMap<String, u64>, FaultError> {
        let out = cmd::run(
            &mut nft_in(&self.bridge_ns, &["list", "table", "bridge", TABLE]),
            QUICK,
        )
        .map_err(|source| FaultError::Cmd {
            what: "reading the answer counters".into(),
            host: "the bridge".into(),
            source,
        })?;
        let found = parse_counters(&out.stdout);
        let mut counts = BTreeMap::new();
        for (name, _) in &self.hosts {
            let n = found
                .get(&format!("{kind}_{name}"))
                .ok_or_else(|| FaultError::Parse {
                    what: "nft list table".into(),
                    host: "the bridge".into(),
                    output: out.stdout.clone(),
                })?;
            counts.insert(name.clone(), *n);
        }
        Ok(counts)
    }
}

/// The `packets` of every named counter in an `nft list` output.
pub fn parse_counters(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        match w {
            "counter" => {
                // A counter block is `counter NAME {`; a rule's statement is
                // `counter name "NAME"` and is skipped.
                if let Some(name) = words.next() {
                    if name != "name" && name != "packets" {
                        current = Some(name.to_owned());
                    }
                }
            }
            "packets" => {
                if let (Some(name), Some(n)) = (current.take(), words.next()) {
                    if let Ok(n) = n.parse() {
                        out.insert(name, n);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_by_name() {
        let text = r#"table bridge ferry_chaos {
	counter answers_n1 {
		packets 12 bytes 900
	}

	counter answers_n2 {
		packets 0 bytes 0
	}

	counter refusals_n1 {
		packets 3 bytes 120
	}

	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname "v-n1" tcp sport 7070 tcp flags & psh == psh counter name "answers_n1"
		iifname "v-n2" tcp sport 7070 tcp flags & psh == psh counter name "answers_n2"
	}
}"#;
        let c = parse_counters(text);
        assert_eq!(c.len(), 3, "{c:?}");
        assert_eq!(c["refusals_n1"], 3);
        assert_eq!(c["answers_n1"], 12);
        assert_eq!(c["answers_n2"], 0);
        assert!(parse_counters("").is_empty());
    }
}
