//! Why a message was refused and why a command failed.

use crate::history::LogPosition;
use crate::types::{Epoch, NodeId, Time};

/// Why a node refused a message from a peer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The sender is not one of this node's configured peers.
    #[error("the sender is not a configured peer")]
    UnknownPeer,
    /// This node knows nothing of the application, and the message cannot
    /// introduce it.
    #[error("unknown application")]
    UnknownApp,
    /// A node named in the message is not a member of the application.
    #[error("{node} is not a member of the application")]
    NotMember {
        /// The node.
        node: NodeId,
    },
    /// The message's epoch is below this node's.
    #[error("epoch {got} is older than the current epoch {current}")]
    StaleEpoch {
        /// The message's epoch.
        got: Epoch,
        /// This node's epoch.
        current: Epoch,
    },
    /// This node already voted for someone else in that epoch.
    #[error("already voted for {voted_for} in epoch {epoch}")]
    AlreadyVoted {
        /// The epoch.
        epoch: Epoch,
        /// Whom it voted for.
        voted_for: NodeId,
    },
    /// The sender claims to lead an epoch that has another primary.
    #[error("epoch {epoch} has primary {known}, not {claimed}")]
    ConflictingPrimary {
        /// The epoch.
        epoch: Epoch,
        /// The primary this node knows for it.
        known: NodeId,
        /// The sender.
        claimed: NodeId,
    },
    /// This node promised its lease to a primary and the promise still runs.
    #[error("lease promised to {primary} for another {remaining} ns")]
    LeasePromised {
        /// The primary.
        primary: NodeId,
        /// Time left on the promise.
        remaining: Time,
    },
    /// This node restarted recently: promises it made before the restart
    /// (which it has forgotten) may still run.
    #[error("restarted recently; no vote for another {remaining} ns")]
    RecentlyRestarted {
        /// Time left.
        remaining: Time,
    },
    /// The candidate's log is behind this node's.
    #[error("candidate log ends at {cand:?}, ours at {own:?}")]
    CandidateBehind {
        /// Where the candidate's log ends.
        cand: LogPosition,
        /// Where this node's log ends.
        own: LogPosition,
    },
    /// The candidate's log ends before a position whose output may have
    /// been released.
    #[error("candidate log ends at {cand:?}, before the release floor {floor:?}")]
    BelowReleaseFloor {
        /// Where the candidate's log ends.
        cand: LogPosition,
        /// This node's release floor.
        floor: LogPosition,
    },
    /// A witness asked for votes, or a witness was asked to take over.
    #[error("a witness cannot become primary")]
    Witness,
    /// The message needs the primary and this node is not it.
    #[error("not the primary (primary: {primary:?})")]
    NotPrimary {
        /// The primary this node knows.
        primary: Option<NodeId>,
    },
    /// A planned switchover reached a target that cannot take over.
    #[error("cannot take over: {why}")]
    CannotTakeOver {
        /// Why.
        why: &'static str,
    },
}

/// Why a local command (start, failover, …) or a local report failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The application is not known on this node.
    #[error("application {app} is not known on this node")]
    UnknownApp {
        /// Application.
        app: String,
    },
    /// A witness runs no program.
    #[error("this node is a witness; it runs no program")]
    Witness,
    /// The application is already known here.
    #[error("application {app} already exists (epoch {epoch}, primary {primary:?})")]
    AlreadyExists {
        /// Application.
        app: String,
        /// Its epoch.
        epoch: Epoch,
        /// Its primary.
        primary: Option<NodeId>,
    },
    /// The member list is unusable.
    #[error("bad member list: {why}")]
    BadMembers {
        /// Why.
        why: String,
    },
    /// The command needs the primary.
    #[error("this node is not the primary of {app} (primary: {primary:?})")]
    NotPrimary {
        /// Application.
        app: String,
        /// The primary this node knows.
        primary: Option<NodeId>,
    },
    /// The report is for a backup's log and this node is not a backup.
    #[error("this node is not a backup of {app}")]
    NotBackup {
        /// Application.
        app: String,
    },
    /// No backup can take over.
    #[error("no healthy, reachable backup of {app} to hand over to")]
    NoHealthyBackup {
        /// Application.
        app: String,
    },
    /// The named target cannot take over.
    #[error("{target} cannot take over {app}: {why}")]
    BadTarget {
        /// Application.
        app: String,
        /// The target.
        target: NodeId,
        /// Why.
        why: &'static str,
    },
    /// A planned switchover is already under way.
    #[error("a failover of {app} is already under way")]
    FailoverInProgress {
        /// Application.
        app: String,
    },
    /// The switchover did not complete in time; the primary serves again.
    #[error("failover of {app} to {target} did not complete in time; still primary")]
    FailoverTimedOut {
        /// Application.
        app: String,
        /// The target.
        target: NodeId,
    },
    /// A migration step that does not fit the migration under way.
    #[error("cannot migrate {app}: {why}")]
    Migration {
        /// Application.
        app: String,
        /// Why.
        why: String,
    },
}
