//! Names, numbers and configuration shared by the whole protocol.

use serde::{Deserialize, Serialize};

/// A reading of one node's own monotonic clock, in nanoseconds.
///
/// Readings of different nodes are never compared: every duration the protocol
/// reasons about is measured between two readings of the same clock.
pub type Time = u64;

/// A global sequence number: the position of a record in the application's
/// single total order of finished calls. Watermarks are inclusive: "durable up
/// to N" means every record with `gseq <= N` is durable. Record 0 (the start
/// record) is part of every member's log from the start of the application.
pub type Gseq = u64;

/// An election term. Every message carries the sender's epoch for the
/// application; a node never goes back to a lower one, even across a restart.
pub type Epoch = u64;

/// A node's name, as in `ferryd --node NAME` (and in its certificate).
pub type NodeId = String;

/// One millisecond, in [`Time`] units.
pub const MS: Time = 1_000_000;

/// How outputs are committed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// An output at gseq N is released only when enough backups have
    /// acknowledged durable receipt of every record up to N (see the crate
    /// docs for "enough"). The default.
    #[default]
    Sync,
    /// Outputs are released at once; `status` says how far behind the backups
    /// are. A failover may lose the records the backups did not have.
    Async,
}

/// A member of an application's replication group.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    /// The node's name.
    pub node: NodeId,
    /// A witness votes and grants leases but keeps no log and never runs the
    /// program, so it can never become primary.
    pub witness: bool,
}

impl Member {
    /// A member that can run the program (primary or backup).
    pub fn replica(node: &str) -> Member {
        Member {
            node: node.to_owned(),
            witness: false,
        }
    }

    /// A witness member.
    pub fn witness(node: &str) -> Member {
        Member {
            node: node.to_owned(),
            witness: true,
        }
    }
}

/// Protocol timings. Every value is a duration on one node's own clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// How often the primary sends a heartbeat to every member (default 50 ms).
    /// The glue must call [`crate::Node::tick`] at least this often.
    pub heartbeat_interval: Time,
    /// The nominal lease (default 500 ms). The primary counts a grant as
    /// `lease * (1 - drift)` from the send time of the heartbeat it answers; a
    /// grantor keeps its promise for `lease * (1 + drift)` from receipt.
    pub lease: Time,
    /// A backup that has not heard a valid heartbeat for `lease * (1 + drift)`
    /// waits a further random time in `[election_timeout_min,
    /// election_timeout_max)` before it asks for votes (defaults 100 and 200 ms);
    /// a candidate that has not won within a new random time in that range
    /// tries again.
    pub election_timeout_min: Time,
    /// See [`Timings::election_timeout_min`].
    pub election_timeout_max: Time,
    /// The bound on how much any node's clock rate may differ from real time,
    /// in parts per million (default 10 000, i.e. 1 %). Leases are safe as long
    /// as every clock's rate stays within `1 ± drift`.
    pub drift_ppm: u32,
    /// A planned switchover that has not handed over within this time is
    /// abandoned and the primary serves again (default 1 s).
    pub transfer_timeout: Time,
    /// A backup that asked to join and has had no answer asks again after this
    /// time (default 200 ms).
    pub join_retry: Time,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            heartbeat_interval: 50 * MS,
            lease: 500 * MS,
            election_timeout_min: 100 * MS,
            election_timeout_max: 200 * MS,
            drift_ppm: 10_000,
            transfer_timeout: 1_000 * MS,
            join_retry: 200 * MS,
        }
    }
}

impl Timings {
    /// How long the primary may count on a grant, from the send time of the
    /// heartbeat it answers: `lease * (1 - drift)`, rounded down.
    pub fn lease_held(&self) -> Time {
        let d = u128::from(self.drift_ppm.min(999_999));
        (u128::from(self.lease) * (1_000_000 - d) / 1_000_000) as Time
    }

    /// How long a grantor keeps its promise, from the receipt of the
    /// heartbeat it granted: `lease * (1 + drift)`, rounded up.
    pub fn lease_promised(&self) -> Time {
        let d = u128::from(self.drift_ppm);
        (u128::from(self.lease) * (1_000_000 + d)).div_ceil(1_000_000) as Time
    }

    /// A bound on the time from a primary's death to a new primary holding
    /// its lease when a majority is up and the network is sound: the promise,
    /// two election rounds and three heartbeat intervals.
    pub fn failover_bound(&self) -> Time {
        self.lease_promised() + 2 * self.election_timeout_max + 3 * self.heartbeat_interval
    }
}

/// A node's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's name.
    pub name: NodeId,
    /// The other nodes of the cluster. Messages from anyone else are refused.
    pub peers: Vec<NodeId>,
    /// `ferryd --witness`: this node runs no program; it only votes and grants
    /// leases.
    pub witness: bool,
    /// Protocol timings.
    pub timings: Timings,
    /// Seed of the node's own pseudo-random generator (election timeouts).
    /// Any value works; different nodes should use different ones.
    pub seed: u64,
}

impl Config {
    /// A configuration with default timings.
    pub fn new(name: &str, peers: &[&str], witness: bool) -> Config {
        let mut seed = 0xcbf2_9ce4_8422_2325_u64;
        for b in name.bytes() {
            seed = (seed ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Config {
            name: name.to_owned(),
            peers: peers.iter().map(|p| (*p).to_owned()).collect(),
            witness,
            timings: Timings::default(),
            seed,
        }
    }
}

/// How far a reversible migration (`ferry migrate`) has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MigrationPhase {
    /// The target is catching up (fetching the image and the log, its
    /// replica replaying); the source is still primary. The source hands
    /// the role over once the target is close enough.
    CatchingUp,
    /// The target is primary; the source is a backup that keeps replaying,
    /// so the move can be undone at once (`--rollback`) until it is made
    /// final (`--commit`).
    Moved,
    /// `--rollback` after the move: the target hands the role back to the
    /// source.
    RollingBack,
}

/// A reversible migration of an application from one node to another. The
/// primary keeps it with the application's members and sends it in every
/// heartbeat, so whichever node is primary knows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Migration {
    /// The node the application moves away from (the primary when the
    /// migration began).
    pub from: NodeId,
    /// The node it moves to.
    pub to: NodeId,
    /// `to` was not a member before: it was added for the migration. A
    /// rollback removes it again; a commit removes `from` instead, so the
    /// application ends with as many members as it had.
    pub added: bool,
    /// How far it has come.
    pub phase: MigrationPhase,
}

/// One step of `ferry migrate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MigrateStep {
    /// Begin moving the application to the target.
    Start,
    /// Undo: before the move, cancel it; after it, hand the role back.
    Rollback,
    /// Make a completed move final.
    Commit,
}
