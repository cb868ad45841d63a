//! The control protocol between the `ferry` command and the local `ferryd`,
//! over a unix socket (`/run/ferry/ferryd.sock` by default).
//!
//! Each message is one [`crate::wire`] frame: a [`Request`] in a
//! [`crate::wire::KIND_CONTROL_REQUEST`] frame, answered by one [`Reply`] in a
//! [`crate::wire::KIND_CONTROL_REPLY`] frame. A connection may carry several
//! requests in turn. Both carry [`CONTROL_VERSION`]; the daemon answers a
//! request of another version with [`ErrorKind::Version`]. As everywhere on
//! the wire, a newer minor version may only append fields at the end of a
//! struct. `docs/WIRE.md` describes the bytes.

use serde::{Deserialize, Serialize};
use std::string::String;
use std::vec::Vec;

/// Version of the control protocol spoken by this code.
pub const CONTROL_VERSION: u32 = 1;
/// The largest control frame body either side accepts (a `run` carries the
/// caller's whole environment).
pub const MAX_CONTROL_BODY: usize = 4 << 20;

/// A request to `ferryd`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// [`CONTROL_VERSION`] of the sender.
    pub version: u32,
    /// What is asked.
    pub command: Command,
}

impl Request {
    /// A request of this version.
    pub fn new(command: Command) -> Request {
        Request {
            version: CONTROL_VERSION,
            command,
        }
    }
}

/// Output commit mode, as `ferry run --mode` names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunMode {
    /// Outputs wait until a backup holds the records behind them.
    #[default]
    Sync,
    /// Outputs go at once; a failover may lose the backups' lag.
    Async,
}

/// `ferry run`: start a program on this node as the primary of a new
/// application.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    /// The application's name (`[A-Za-z0-9._-]`, 1 to 64 bytes, not starting
    /// with `.`).
    pub name: String,
    /// The program and its arguments.
    pub argv: Vec<Vec<u8>>,
    /// The caller's environment, `KEY=VALUE` each.
    pub env: Vec<Vec<u8>>,
    /// The caller's working directory.
    pub cwd: Vec<u8>,
    /// The service address, `IP/PREFIX@IFACE`, moved with the primary role.
    pub vip: Option<String>,
    /// Output commit mode.
    pub mode: RunMode,
}

/// One step of `ferry migrate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrateStep {
    /// Begin: the target catches up, then takes over.
    Start,
    /// `--rollback`: cancel, or hand the role back to the source.
    Rollback,
    /// `--commit`: make the move final.
    Commit,
}

/// A migration under way, as `ferry status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationStatus {
    /// The node it moves from.
    pub from: String,
    /// The node it moves to.
    pub to: String,
    /// The target was added as a member for the migration.
    pub added: bool,
    /// `catching up`, `moved` or `rolling back`.
    pub phase: String,
}

/// The last planned switchover this node handed the role over in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchStatus {
    /// The node that took over.
    pub to: String,
    /// The epoch it took over in.
    pub epoch: u64,
    /// From the moment the gate closed until the new primary announced
    /// itself, in microseconds; `None` until it did.
    pub downtime_us: Option<u64>,
}

/// What a request asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Start and protect a program.
    Run(RunRequest),
    /// The state of one application, or of all.
    Status {
        /// The application; `None`: every application this node knows.
        app: Option<String>,
    },
    /// Planned switchover of an application to a backup.
    Failover {
        /// The application.
        app: String,
        /// The backup to hand over to; `None`: the most up-to-date one.
        to: Option<String>,
    },
    /// A step of a reversible migration (`ferry migrate`), on the primary.
    Migrate {
        /// The application.
        app: String,
        /// The node it moves to.
        to: String,
        /// Which step.
        step: MigrateStep,
    },
    /// Stop an application on every node.
    Stop {
        /// The application.
        app: String,
    },
}

/// `ferryd`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// [`CONTROL_VERSION`] of the daemon.
    pub version: u32,
    /// The outcome.
    pub outcome: Outcome,
}

impl Reply {
    /// A reply of this version.
    pub fn new(outcome: Outcome) -> Reply {
        Reply {
            version: CONTROL_VERSION,
            outcome,
        }
    }

    /// An error reply.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Reply {
        Reply::new(Outcome::Error {
            kind,
            message: message.into(),
        })
    }
}

/// The outcome of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Done; one line for the user.
    Done {
        /// What was done.
        message: String,
    },
    /// The answer to [`Command::Status`].
    Status(NodeStatus),
    /// Not done.
    Error {
        /// The class of error (decides `ferry`'s exit code).
        kind: ErrorKind,
        /// One line saying what and why.
        message: String,
    },
}

/// Why a request was not carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request was malformed or named something that does not exist
    /// (`ferry` exits 2).
    BadRequest,
    /// Another control protocol version.
    Version,
    /// The request was valid but could not be carried out (`ferry` exits 1).
    Failed,
}

/// One node's view of its applications.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's name.
    pub node: String,
    /// Whether the node is a witness.
    pub witness: bool,
    /// Peers with a live connection to this node.
    pub connected: Vec<String>,
    /// The applications it knows.
    pub apps: Vec<AppStatus>,
}

/// One application as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStatus {
    /// The application.
    pub app: String,
    /// This node's role: `primary`, `candidate`, `backup`, `witness`, `none`.
    pub role: String,
    /// This node's epoch.
    pub epoch: u64,
    /// The primary this node knows.
    pub primary: Option<String>,
    /// `sync` or `async`.
    pub mode: String,
    /// Primary: highest gseq logged. Others: 0.
    pub logged: u64,
    /// Primary: highest gseq acknowledged by enough backups.
    pub acked: u64,
    /// Backup: highest gseq durable in its log.
    pub durable: u64,
    /// Highest gseq the local replica has replayed (backup), or the program
    /// has logged (primary).
    pub replayed: u64,
    /// Primary: records the most up-to-date backup is behind.
    pub lag_records: u64,
    /// Primary: how long ago the oldest record not yet acknowledged by that
    /// backup was logged, in milliseconds.
    pub lag_ms: u64,
    /// Whether the log is healthy (backup) / the application is protected.
    pub healthy: bool,
    /// Primary: enough backups have every released output's records.
    pub protected: bool,
    /// Primary: the output gate is open.
    pub gate_open: bool,
    /// Primary: what it knows of each backup.
    pub backups: Vec<BackupStatus>,
    /// The service address, if any.
    pub vip: Option<String>,
    /// Pid of the local program or replica, if one runs.
    pub pid: Option<i32>,
    /// The position (gseq) of the newest checkpoint image of the replica
    /// kept on this node, if any.
    pub image: Option<u64>,
    /// The first gseq this node's log holds (above 0 once segments an
    /// image covers were dropped).
    pub log_first: u64,
    /// The migration under way, if any.
    pub migration: Option<MigrationStatus>,
    /// The last planned switchover this node handed the role over in.
    pub switch: Option<SwitchStatus>,
    /// Long work under way on the application's images: a checkpoint
    /// being written, an image being sent or received.
    #[serde(default)]
    pub under_way: Vec<UnderWayStatus>,
}

/// Long work under way, with its progress, as `ferry status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnderWayStatus {
    /// What: `checkpointing the replica`, `sending an image to NODE`,
    /// `receiving an image from NODE`.
    pub what: String,
    /// The image's position (gseq).
    pub at: u64,
    /// Bytes done so far, and in all (0 when not known beforehand).
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// Since when, in ms.
    pub elapsed_ms: u64,
}

/// What a primary knows of one backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStatus {
    /// The backup.
    pub node: String,
    /// Highest gseq it acknowledged as durable.
    pub acked: u64,
    /// Its log is healthy and in sync.
    pub healthy: bool,
    /// It answered within the lease.
    pub in_contact: bool,
    /// The highest gseq its replica has replayed, when it said.
    pub replayed: Option<u64>,
}
