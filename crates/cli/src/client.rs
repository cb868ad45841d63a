//! `ferry run`, `ferry status`, `ferry failover`, `ferry stop`: requests to
//! the local `ferryd` over its control socket ([`ferry_proto::control`]).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_proto::control::{
    AppStatus, Command, ErrorKind, NodeStatus, Outcome, Request, RunMode, RunRequest,
    MAX_CONTROL_BODY,
};
use ferry_proto::wire::{self, FrameReader, KIND_CONTROL_REPLY, KIND_CONTROL_REQUEST};

use crate::exit::{report, BAD_INPUT, PROGRAM_FAILED, SUCCESS};

/// Bytes in a MiB, for sizes shown to people.
const MIB: f64 = (1u64 << 20) as f64;

/// Where `ferryd` listens by default.
pub const DEFAULT_CONTROL: &str = "/run/ferry/ferryd.sock";

/// `ferry run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The application's name, unique in the cluster.
    #[arg(long, value_name = "APP")]
    pub name: String,
    /// The service address that moves with the primary.
    #[arg(long, value_name = "IP/PREFIX@IFACE")]
    pub vip: Option<String>,
    /// Output commit: sync (outputs wait for a backup) or async.
    #[arg(long, value_enum, default_value_t = ModeArg::Sync)]
    pub mode: ModeArg,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// Outputs wait until a backup has the records behind them.
    Sync,
    /// Outputs go at once.
    Async,
}

/// `ferry status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Only this application.
    pub app: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `ferry failover`.
#[derive(Debug, clap::Args)]
pub struct FailoverArgs {
    /// The application.
    pub app: String,
    /// The backup to hand over to (default: the most up-to-date one).
    #[arg(long, value_name = "NODE")]
    pub to: Option<String>,
}

/// `ferry stop`.
#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// The application.
    pub app: String,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error("cannot connect to the control socket {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {}: {why}", path.display())]
    Exchange { path: PathBuf, why: String },
}

pub(crate) fn exchange(path: &Path, command: Command) -> Result<Outcome, ClientError> {
    let mut stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.to_owned(),
        source,
    })?;
    let fail = |why: String| ClientError::Exchange {
        path: path.to_owned(),
        why,
    };
    let frame = wire::encode(KIND_CONTROL_REQUEST, 0, &Request::new(command))
        .map_err(|e| fail(e.to_string()))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    // ferryd may answer before it reads (a refusal) and close: then the
    // write fails but the answer is there to read.
    let sent = stream.write_all(&frame);
    let mut reader = FrameReader::with_max_body(MAX_CONTROL_BODY);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match reader.next_frame() {
            Ok(Some(f)) if f.kind == KIND_CONTROL_REPLY => {
                let reply: ferry_proto::control::Reply =
                    f.decode().map_err(|e| fail(format!("bad reply: {e}")))?;
                return Ok(reply.outcome);
            }
            Ok(Some(f)) => return Err(fail(format!("unexpected frame kind {}", f.kind))),
            Ok(None) => {}
            Err(e) => return Err(fail(format!("bad reply: {e}"))),
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                return Err(fail(match &sent {
                    Err(e) => format!("cannot send the request: {e}"),
                    Ok(()) => "ferryd closed the connection without a reply".into(),
                }))
            }
            Ok(n) => reader.push(&buf[..n]),
            Err(e) => return Err(fail(format!("no reply: {e}"))),
        }
    }
}

/// Send `command` and print the outcome; returns the exit code.
fn request(control: &Path, command: Command, json: bool) -> u8 {
    match exchange(control, command) {
        Err(e) => report(PROGRAM_FAILED, e),
        Ok(outcome) => print_outcome(outcome, json),
    }
}

/// Print an outcome; returns the exit code.
pub(crate) fn print_outcome(outcome: Outcome, json: bool) -> u8 {
    match outcome {
        Outcome::Done { message } => {
            println!("{message}");
            SUCCESS
        }
        Outcome::Status(s) => {
            if json {
                match serde_json::to_string_pretty(&s) {
                    Ok(text) => println!("{text}"),
                    Err(e) => return report(PROGRAM_FAILED, format!("cannot print JSON: {e}")),
                }
            } else {
                print!("{}", table(&s));
            }
            SUCCESS
        }
        Outcome::Error { kind, message } => {
            let code = match kind {
                ErrorKind::BadRequest | ErrorKind::Version => BAD_INPUT,
                ErrorKind::Failed => PROGRAM_FAILED,
            };
            report(code, message)
        }
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The human form of `ferry status`.
pub fn table(s: &NodeStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let kind = if s.witness { " (witness)" } else { "" };
    let peers = if s.connected.is_empty() {
        "none".to_owned()
    } else {
        s.connected.join(", ")
    };
    let _ = writeln!(out, "node {}{kind}, connected to: {peers}", s.node);
    if s.apps.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "{:<16} {:<9} {:>5} {:<10} {:<5} {:>10} {:>10} {:>10} {:>10} {:>8} {:>7} {:<9}",
        "APP",
        "ROLE",
        "EPOCH",
        "PRIMARY",
        "MODE",
        "LOGGED",
        "ACKED",
        "DURABLE",
        "REPLAYED",
        "LAG",
        "LAG_MS",
        "PROTECTED"
    );
    for a in &s.apps {
        let _ = writeln!(
            out,
            "{:<16} {:<9} {:>5} {:<10} {:<5} {:>10} {:>10} {:>10} {:>10} {:>8} {:>7} {:<9}",
            a.app,
            a.role,
            a.epoch,
            a.primary.as_deref().unwrap_or("-"),
            a.mode,
            a.logged,
            a.acked,
            a.durable,
            a.replayed,
            a.lag_records,
            a.lag_ms,
            protected(a)
        );
        if let Some(at) = a.image {
            let _ = writeln!(
                out,
                "  checkpoint image after gseq {at}; the log here starts at gseq {}",
                a.log_first
            );
        }
        for w in &a.under_way {
            let size = if w.total_bytes > 0 {
                format!(
                    ": {:.1} of {:.1} MiB",
                    w.done_bytes as f64 / MIB,
                    w.total_bytes as f64 / MIB
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  {} after gseq {}{size}, {:.1} s so far",
                w.what,
                w.at,
                w.elapsed_ms as f64 / 1000.0
            );
        }
        for b in &a.backups {
            let replica = b
                .replayed
                .map_or(String::new(), |r| format!(", replica at {r}"));
            let _ = writeln!(
                out,
                "  backup {}: acknowledged {}, healthy {}, in contact {}{replica}",
                b.node,
                b.acked,
                yes(b.healthy),
                yes(b.in_contact)
            );
        }
        if let Some(m) = &a.migration {
            let added = if m.added { " (added for it)" } else { "" };
            let _ = writeln!(
                out,
                "  migration {} -> {}{added}: {}",
                m.from, m.to, m.phase
            );
        }
        if let Some(w) = &a.switch {
            let downtime = w.downtime_us.map_or("not yet announced".to_owned(), |us| {
                format!("downtime {:.1} ms", us as f64 / 1000.0)
            });
            let _ = writeln!(
                out,
                "  last handover: to {} in epoch {}, {downtime}",
                w.to, w.epoch
            );
        }
    }
    out
}

fn protected(a: &AppStatus) -> &'static str {
    match a.role.as_str() {
        "primary" => yes(a.protected),
        _ => "-",
    }
}

/// `ferry run`.
pub fn run(control: &Path, args: RunArgs) -> u8 {
    let cwd = match std::env::current_dir() {
        Ok(d) => d,
        Err(e) => return report(BAD_INPUT, format!("cannot read the current directory: {e}")),
    };
    let env = std::env::vars_os()
        .map(|(k, v)| {
            let mut e = k.as_bytes().to_vec();
            e.push(b'=');
            e.extend_from_slice(v.as_bytes());
            e
        })
        .collect();
    let run = RunRequest {
        name: args.name,
        argv: args.command.iter().map(|a| a.as_bytes().to_vec()).collect(),
        env,
        cwd: cwd.as_os_str().as_bytes().to_vec(),
        vip: args.vip,
        mode: match args.mode {
            ModeArg::Sync => RunMode::Sync,
            ModeArg::Async => RunMode::Async,
        },
    };
    request(control, Command::Run(run), false)
}

/// `ferry status`.
pub fn status(control: &Path, args: StatusArgs) -> u8 {
    if args.json {
        return request(control, Command::Status { app: args.app }, true);
    }
    match exchange(
        control,
        Command::Status {
            app: args.app.clone(),
        },
    ) {
        Ok(Outcome::Status(s)) => {
            print!("{}", table(&s));
            if s.apps.is_empty() {
                match &args.app {
                    Some(app) => println!("{app}: not known on this node"),
                    None => println!("no applications"),
                }
            }
            SUCCESS
        }
        Ok(other) => print_outcome(other, false),
        Err(e) => report(PROGRAM_FAILED, e),
    }
}

/// `ferry failover`.
pub fn failover(control: &Path, args: FailoverArgs) -> u8 {
    request(
        control,
        Command::Failover {
            app: args.app,
            to: args.to,
        },
        false,
    )
}

/// `ferry stop`.
pub fn stop(control: &Path, args: StopArgs) -> u8 {
    request(control, Command::Stop { app: args.app }, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::control::{AppStatus, UnderWayStatus};

    fn backup_receiving_an_image() -> NodeStatus {
        NodeStatus {
            node: "n1".into(),
            witness: false,
            connected: vec!["n2".into()],
            apps: vec![AppStatus {
                app: "kv".into(),
                role: "backup".into(),
                epoch: 2,
                primary: Some("n2".into()),
                mode: "sync".into(),
                logged: 210_000,
                acked: 210_000,
                durable: 210_000,
                replayed: 0,
                lag_records: 0,
                lag_ms: 0,
                healthy: true,
                protected: false,
                gate_open: false,
                backups: vec![],
                vip: None,
                pid: None,
                image: None,
                log_first: 1,
                migration: None,
                switch: None,
                under_way: vec![UnderWayStatus {
                    what: "receiving an image from n2".into(),
                    at: 209_991,
                    done_bytes: 412 << 20,
                    total_bytes: 1030 << 20,
                    elapsed_ms: 3_500,
                }],
            }],
        }
    }

    /// An image on its way shows how far it is, in the table.
    #[test]
    fn the_status_table_shows_an_image_transfer_with_its_progress() {
        let text = table(&backup_receiving_an_image());
        assert!(
            text.contains("  receiving an image from n2 after gseq 209991: 412.0 of 1030.0 MiB, 3.5 s so far\n"),
            "{text}"
        );
    }

    /// A status from a ferryd that predates the field still reads.
    #[test]
    fn a_status_without_work_under_way_reads() {
        let mut json = serde_json::to_value(backup_receiving_an_image()).unwrap();
        json["apps"][0].as_object_mut().unwrap().remove("under_way");
        let s: NodeStatus = serde_json::from_value(json).unwrap();
        assert!(s.apps[0].under_way.is_empty());
    }
}
