//! `ferryd`'s settings: command-line flags over a TOML file.
//!
//! Every flag is also a key of the file (`docs/OPERATIONS.md`); a flag given
//! on the command line wins over the file. The protocol timings are file
//! keys only, each optional, with the replication crate's defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ferry_replication::{Timings, MS};

use crate::app::Storage;
use crate::images::Policy;
use serde::Deserialize;

/// `ferryd`'s command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "ferryd",
    version,
    about = "Ferry's daemon: replicate protected programs to backup hosts and take over when a host fails",
    after_help = "Every flag is also a key of the TOML file given with --config; flags win.\n\
        Exit codes:\n  0  stopped by SIGTERM/SIGINT\n  1  a failure while running\n  2  bad usage or bad configuration"
)]
pub struct Args {
    /// This node's name (its certificate is CERTS/NAME.crt).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// The UDP address to listen on for QUIC.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<String>,
    /// Another node of the cluster; repeat for each.
    #[arg(long = "peer", value_name = "NAME=IP:PORT")]
    pub peers: Vec<String>,
    /// Where logs and state are kept.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The control socket for `ferry`.
    #[arg(long, value_name = "SOCK")]
    pub control: Option<PathBuf>,
    /// The directory with ca.crt, NAME.crt and NAME.key.
    #[arg(long, value_name = "DIR")]
    pub certs: Option<PathBuf>,
    /// Run no program; only vote and grant leases.
    #[arg(long)]
    pub witness: bool,
    /// Checkpoint each replica this often at most, in seconds (0: never by
    /// time). Default 600.
    #[arg(long, value_name = "SECONDS")]
    pub checkpoint_every: Option<u64>,
    /// Checkpoint each replica once it has replayed this many MiB of
    /// records since its last image, and no fewer than that image holds
    /// (0: never by size). Default 256.
    #[arg(long, value_name = "MIB")]
    pub checkpoint_log_mib: Option<u64>,
    /// How many images of each replica to keep (at least 1), each with
    /// the images it is incremental to. Default 2.
    #[arg(long, value_name = "N")]
    pub checkpoints_kept: Option<usize>,
    /// How many incremental images (the pages written since the last
    /// image) follow each full one (0: every image is full). Default 8.
    #[arg(long, value_name = "N")]
    pub checkpoint_incrementals: Option<usize>,
    /// Close a log segment and start a new one at this size, in KiB (at
    /// least 64). Segments wholly covered by an image are dropped. Default
    /// 65536 (64 MiB).
    #[arg(long, value_name = "KIB")]
    pub log_segment_kib: Option<u64>,
    /// A TOML file with the same keys as these flags.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The TOML file. Unknown keys are an error (a typo must not go unnoticed).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    node: Option<String>,
    listen: Option<String>,
    /// NAME = "IP:PORT"
    #[serde(default)]
    peer: BTreeMap<String, String>,
    data_dir: Option<PathBuf>,
    control: Option<PathBuf>,
    certs: Option<PathBuf>,
    witness: Option<bool>,
    checkpoint_every: Option<u64>,
    checkpoint_log_mib: Option<u64>,
    checkpoints_kept: Option<usize>,
    checkpoint_incrementals: Option<usize>,
    log_segment_kib: Option<u64>,
    #[serde(default)]
    timings: FileTimings,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileTimings {
    heartbeat_interval_ms: Option<u64>,
    lease_ms: Option<u64>,
    election_timeout_min_ms: Option<u64>,
    election_timeout_max_ms: Option<u64>,
    drift_ppm: Option<u32>,
    transfer_timeout_ms: Option<u64>,
    join_retry_ms: Option<u64>,
}

/// A bad flag or a bad file: one line that says what and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for ferryd.
    #[error("config file {}: {why}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        why: String,
    },
    /// A required setting is missing from both the flags and the file.
    #[error("missing --{0} (or the `{0}` key in the config file)")]
    Missing(&'static str),
    /// A value is malformed.
    #[error("bad {what} {value:?}: {why}")]
    Bad {
        /// Which setting.
        what: &'static str,
        /// The value given.
        value: String,
        /// Why it is wrong.
        why: String,
    },
}

/// One peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its node name.
    pub name: String,
    /// Its QUIC address.
    pub addr: SocketAddr,
}

/// The settings `ferryd` runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This node.
    pub node: String,
    /// QUIC listening address.
    pub listen: SocketAddr,
    /// The other nodes.
    pub peers: Vec<Peer>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Control socket path.
    pub control: PathBuf,
    /// Certificates directory.
    pub certs: PathBuf,
    /// Witness node.
    pub witness: bool,
    /// Protocol timings.
    pub timings: Timings,
    /// Checkpoints and log segments.
    pub storage: Storage,
}

fn bad(what: &'static str, value: &str, why: impl ToString) -> ConfigError {
    ConfigError::Bad {
        what,
        value: value.to_owned(),
        why: why.to_string(),
    }
}

fn parse_addr(what: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| bad(what, value, "expected IP:PORT, e.g. 10.0.0.1:7600"))
}

fn check_name(what: &'static str, name: &str) -> Result<(), ConfigError> {
    ferry_tls::validate_node_name(name).map_err(|e| bad(what, name, e))
}

impl Settings {
    /// Merge the flags over the file named by `--config`, if any.
    pub fn from_args(args: Args) -> Result<Settings, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => File::default(),
        };
        let node = args
            .node
            .or(file.node)
            .ok_or(ConfigError::Missing("node"))?;
        check_name("node name", &node)?;
        let listen = args
            .listen
            .or(file.listen)
            .ok_or(ConfigError::Missing("listen"))?;
        let listen = parse_addr("--listen address", &listen)?;
        let mut peers: Vec<Peer> = Vec::new();
        let mut add = |name: &str, addr: &str| -> Result<(), ConfigError> {
            check_name("peer name", name)?;
            if name == node {
                return Err(bad("peer", name, "a node cannot be its own peer"));
            }
            let addr = parse_addr("peer address", addr)?;
            peers.retain(|p| p.name != name);
            peers.push(Peer {
                name: name.to_owned(),
                addr,
            });
            Ok(())
        };
        for (name, addr) in &file.peer {
            add(name, addr)?;
        }
        for p in &args.peers {
            let Some((name, addr)) = p.split_once('=') else {
                return Err(bad("--peer", p, "expected NAME=IP:PORT"));
            };
            add(name, addr)?;
        }
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .ok_or(ConfigError::Missing("data-dir"))?;
        let control = args
            .control
            .or(file.control)
            .ok_or(ConfigError::Missing("control"))?;
        let certs = args
            .certs
            .or(file.certs)
            .ok_or(ConfigError::Missing("certs"))?;
        let witness = args.witness || file.witness.unwrap_or(false);
        let timings = timings(&file.timings)?;
        let dflt = Policy::default();
        let every = args.checkpoint_every.or(file.checkpoint_every);
        let mib = args.checkpoint_log_mib.or(file.checkpoint_log_mib);
        let kept = args
            .checkpoints_kept
            .or(file.checkpoints_kept)
            .unwrap_or(dflt.keep);
        if kept == 0 {
            return Err(bad("--checkpoints-kept", "0", "at least one image is kept"));
        }
        let incrementals = args
            .checkpoint_incrementals
            .or(file.checkpoint_incrementals)
            .unwrap_or(dflt.incrementals);
        if incrementals >= ferry_image::dir::MAX_CHAIN {
            return Err(bad(
                "--checkpoint-incrementals",
                &incrementals.to_string(),
                "a chain holds at most 255 incremental images",
            ));
        }
        if mib.is_some_and(|m| m > u64::MAX >> 20) {
            return Err(bad(
                "--checkpoint-log-mib",
                &mib.unwrap_or(0).to_string(),
                "too large",
            ));
        }
        let checkpoints = Policy {
            every: match every {
                Some(0) => None,
                Some(s) => Some(std::time::Duration::from_secs(s)),
                None => dflt.every,
            },
            log_bytes: match mib {
                Some(0) => None,
                Some(m) => Some(m << 20),
                None => dflt.log_bytes,
            },
            keep: kept,
            incrementals,
        };
        let dflt_kib = ferry_log::DEFAULT_SEGMENT_BYTES >> 10;
        let kib = args
            .log_segment_kib
            .or(file.log_segment_kib)
            .unwrap_or(dflt_kib);
        if !(64..=(1 << 30)).contains(&kib) {
            return Err(bad(
                "--log-segment-kib",
                &kib.to_string(),
                "must be between 64 and 1073741824",
            ));
        }
        Ok(Settings {
            node,
            listen,
            peers,
            data_dir,
            control,
            certs,
            witness,
            timings,
            storage: Storage {
                checkpoints,
                segment_bytes: kib << 10,
            },
        })
    }
}

fn read_file(path: &Path) -> Result<File, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        // toml's message spans several lines (a caret under the spot): keep
        // it to one.
        why: e
            .to_string()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('|') && !l.starts_with('^'))
            .collect::<Vec<_>>()
            .join(" "),
    })
}

fn timings(t: &FileTimings) -> Result<Timings, ConfigError> {
    let mut out = Timings::default();
    let ms = |v: Option<u64>, dflt: u64| v.map(|v| v * MS).unwrap_or(dflt);
    out.heartbeat_interval = ms(t.heartbeat_interval_ms, out.heartbeat_interval);
    out.lease = ms(t.lease_ms, out.lease);
    out.election_timeout_min = ms(t.election_timeout_min_ms, out.election_timeout_min);
    out.election_timeout_max = ms(t.election_timeout_max_ms, out.election_timeout_max);
    out.drift_ppm = t.drift_ppm.unwrap_or(out.drift_ppm);
    out.transfer_timeout = ms(t.transfer_timeout_ms, out.transfer_timeout);
    out.join_retry = ms(t.join_retry_ms, out.join_retry);
    let show = |v: u64| format!("{} ms", v / MS);
    if out.heartbeat_interval == 0 {
        return Err(bad("timings.heartbeat-interval-ms", "0", "must be above 0"));
    }
    if out.lease < 3 * out.heartbeat_interval {
        return Err(bad(
            "timings.lease-ms",
            &show(out.lease),
            "must be at least three heartbeat intervals",
        ));
    }
    if out.election_timeout_min == 0 || out.election_timeout_max <= out.election_timeout_min {
        return Err(bad(
            "timings.election-timeout-max-ms",
            &show(out.election_timeout_max),
            "must be above election-timeout-min-ms, which must be above 0",
        ));
    }
    if out.drift_ppm >= 500_000 {
        return Err(bad(
            "timings.drift-ppm",
            &out.drift_ppm.to_string(),
            "must be below 500000",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Settings, ConfigError> {
        Settings::from_args(Args::try_parse_from(args).unwrap())
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(
            &path,
            "node = \"a\"\nlisten = \"127.0.0.1:1\"\ndata-dir = \"/d\"\ncontrol = \"/c\"\n\
             certs = \"/k\"\n[peer]\nb = \"127.0.0.1:2\"\n[timings]\nlease-ms = 900\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let s = parse(&[
            "ferryd",
            "--config",
            p,
            "--listen",
            "127.0.0.1:9",
            "--peer",
            "c=127.0.0.1:3",
        ])
        .unwrap();
        assert_eq!(s.node, "a");
        assert_eq!(s.listen.port(), 9);
        let names: Vec<_> = s.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(s.timings.lease, 900 * MS);
        assert_eq!(
            s.timings.heartbeat_interval,
            Timings::default().heartbeat_interval
        );
    }

    #[test]
    fn bad_values_name_the_setting() {
        let base = [
            "ferryd",
            "--node",
            "a",
            "--data-dir",
            "/d",
            "--control",
            "/c",
            "--certs",
            "/k",
        ];
        let mut v = base.to_vec();
        v.extend(["--listen", "nowhere"]);
        assert!(parse(&v).unwrap_err().to_string().contains("--listen"));
        let mut v = base.to_vec();
        v.extend(["--listen", "127.0.0.1:1", "--peer", "b:127.0.0.1:2"]);
        assert!(parse(&v).unwrap_err().to_string().contains("NAME=IP:PORT"));
        let mut v = base.to_vec();
        v.extend(["--listen", "127.0.0.1:1", "--peer", "a=127.0.0.1:2"]);
        assert!(parse(&v).unwrap_err().to_string().contains("own peer"));
        assert!(matches!(
            parse(&["ferryd", "--node", "a"]).unwrap_err(),
            ConfigError::Missing("listen")
        ));
    }

    #[test]
    fn checkpoint_settings_come_from_flags_or_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(
            &path,
            "node = \"a\"\nlisten = \"127.0.0.1:1\"\ndata-dir = \"/d\"\ncontrol = \"/c\"\n\
             certs = \"/k\"\ncheckpoint-every = 30\ncheckpoint-log-mib = 0\n\
             checkpoint-incrementals = 3\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let s = parse(&["ferryd", "--config", p]).unwrap();
        assert_eq!(
            s.storage.checkpoints.every,
            Some(std::time::Duration::from_secs(30))
        );
        assert_eq!(s.storage.checkpoints.log_bytes, None);
        assert_eq!(s.storage.checkpoints.keep, 2);
        assert_eq!(s.storage.checkpoints.incrementals, 3);
        let s = parse(&[
            "ferryd",
            "--config",
            p,
            "--checkpoint-every",
            "0",
            "--checkpoint-log-mib",
            "4",
        ])
        .unwrap();
        assert_eq!(s.storage.checkpoints.every, None);
        assert_eq!(s.storage.checkpoints.log_bytes, Some(4 << 20));
        let e = parse(&["ferryd", "--config", p, "--checkpoints-kept", "0"]).unwrap_err();
        assert!(e.to_string().contains("--checkpoints-kept"), "{e}");
        let e = parse(&["ferryd", "--config", p, "--checkpoint-incrementals", "256"]).unwrap_err();
        assert!(e.to_string().contains("--checkpoint-incrementals"), "{e}");
        let s = parse(&["ferryd", "--config", p, "--checkpoint-incrementals", "0"]).unwrap();
        assert_eq!(s.storage.checkpoints.incrementals, 0);
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(&path, "nodes = \"a\"\n").unwrap();
        let e = parse(&["ferryd", "--config", path.to_str().unwrap()]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("f.toml") && msg.contains("nodes"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }
}
