//! What nodes say to each other, what the glue tells a node, and what a node
//! asks the glue to do.

use serde::{Deserialize, Serialize};

use crate::history::{EpochStart, LogPosition};
use crate::types::{Epoch, Gseq, Member, MigrateStep, Migration, Mode, NodeId, Time};
use crate::{AppStatus, CommandError, Refusal};

/// A message between two nodes about one application. Every message carries
/// the application's name and the sender's epoch for it.
///
/// Heartbeats and lease grants are meant for QUIC datagrams (they may be lost,
/// duplicated or reordered); the others may travel on a stream. The protocol is
/// safe whichever way each message travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Primary → every member, every heartbeat interval.
    Heartbeat {
        /// Application.
        app: String,
        /// The primary's epoch.
        epoch: Epoch,
        /// The primary's clock when it sent this; opaque to the receiver, which
        /// echoes it in its [`Message::LeaseGrant`].
        sent: Time,
        /// Highest gseq the primary has logged.
        logged: Gseq,
        /// Highest gseq the output gate has released.
        released: Gseq,
        /// The release floor: in sync mode, a log position that outputs may be
        /// released up to. Receivers remember the highest (persistently) and
        /// never vote for a candidate whose log ends before it. Zero in async
        /// mode.
        floor: LogPosition,
        /// First gseq written in this epoch.
        epoch_start: Gseq,
        /// Output commit mode.
        mode: Mode,
        /// The application's members, so a node learns the application from
        /// its first heartbeat.
        members: Vec<Member>,
        /// The migration under way, if any (`ferry migrate`). Appended
        /// last, so a reader that does not know it ignores it.
        migration: Option<Migration>,
    },
    /// Member → primary: the answer to a heartbeat. The grantor promises not
    /// to vote for anyone until `lease * (1 + drift)` after it received the
    /// heartbeat.
    LeaseGrant {
        /// Application.
        app: String,
        /// The epoch of the heartbeat granted.
        epoch: Epoch,
        /// The heartbeat's `sent`, echoed.
        echo: Time,
        /// The heartbeat's `floor`, echoed: the grantor has made it durable.
        floor: LogPosition,
        /// The grantor's durable gseq when it is an in-sync, healthy backup
        /// (an acknowledgement riding on the grant); `None` otherwise.
        durable: Option<Gseq>,
        /// Whether the grantor's log is healthy and in sync with this primary.
        healthy: bool,
        /// The highest gseq the grantor's replica has replayed, when it runs
        /// one. Appended last, so a reader that does not know it ignores it.
        replayed: Option<Gseq>,
    },
    /// Backup → primary: durable receipt of every record up to `durable`.
    /// Sent once per fsync batch.
    Ack {
        /// Application.
        app: String,
        /// The backup's epoch.
        epoch: Epoch,
        /// Every record up to here is durable on the backup.
        durable: Gseq,
        /// Whether the backup's log is healthy and in sync.
        healthy: bool,
    },
    /// Candidate → every member: vote for me in `epoch`. A pre-vote (`pre`)
    /// asks whether the voter *would* vote, without changing anything on
    /// either side, so that a node cut off from the others cannot push the
    /// epoch up and disturb a healthy primary when it comes back.
    VoteRequest {
        /// Application.
        app: String,
        /// The epoch the candidate stands for.
        epoch: Epoch,
        /// A pre-vote.
        pre: bool,
        /// The candidate (the sender).
        candidate: NodeId,
        /// The epoch of the candidate's last durable record.
        last_epoch: Epoch,
        /// The candidate's durable gseq.
        durable: Gseq,
        /// Set in a planned switchover: the primary that handed its role to
        /// the candidate. Voters that promised their lease to that primary may
        /// vote at once.
        transfer_from: Option<NodeId>,
    },
    /// Voter → candidate.
    Vote {
        /// Application.
        app: String,
        /// The epoch of the request.
        epoch: Epoch,
        /// Answers a pre-vote.
        pre: bool,
        /// Whether the vote is granted.
        granted: bool,
        /// The voter's own epoch (a refused candidate behind it catches up).
        current: Epoch,
    },
    /// A new primary → every member, at promotion.
    NewPrimary {
        /// Application.
        app: String,
        /// The new epoch.
        epoch: Epoch,
        /// The new primary.
        primary: NodeId,
    },
    /// Primary → the backup it hands over to, in a planned switchover, once
    /// the backup has every logged record. The primary has closed its gate for
    /// good in this epoch and votes for the target in `epoch + 1`.
    TransferRequest {
        /// Application.
        app: String,
        /// The primary's epoch; the target stands in `epoch + 1`.
        epoch: Epoch,
        /// The last record the primary logged; the target has it.
        up_to: Gseq,
    },
    /// Target → old primary: standing in `epoch` (stop resending).
    TransferReady {
        /// Application.
        app: String,
        /// The epoch the target stands in.
        epoch: Epoch,
    },
    /// A backup that is not in sync with the current primary (restarted,
    /// deposed, corrupt log) → primary: take me back. Answered even when the
    /// sender's epoch is lower.
    Join {
        /// Application.
        app: String,
        /// The joiner's epoch.
        epoch: Epoch,
        /// The joiner's durable gseq.
        durable: Gseq,
        /// The joiner's history.
        history: Vec<EpochStart>,
    },
    /// Primary → joiner: resynchronise from `from_gseq` (records before it are
    /// the same in both logs; the joiner's records from there on are dropped).
    JoinReply {
        /// Application.
        app: String,
        /// The primary's epoch.
        epoch: Epoch,
        /// The primary (the sender).
        primary: NodeId,
        /// First gseq the joiner must fetch.
        from_gseq: Gseq,
        /// The primary's history, which the joiner's log follows from now on.
        history: Vec<EpochStart>,
        /// The application's members.
        members: Vec<Member>,
        /// Output commit mode.
        mode: Mode,
    },
    /// The answer to a message from a lower epoch: the current epoch, and the
    /// primary of it when known.
    Stale {
        /// Application.
        app: String,
        /// The sender's (higher) epoch.
        epoch: Epoch,
        /// The primary of that epoch, when the sender knows it.
        primary: Option<NodeId>,
    },
    /// Primary → every member: the application was stopped.
    Stop {
        /// Application.
        app: String,
        /// The primary's epoch.
        epoch: Epoch,
    },
}

impl Message {
    /// The application the message is about.
    pub fn app(&self) -> &str {
        match self {
            Message::Heartbeat { app, .. }
            | Message::LeaseGrant { app, .. }
            | Message::Ack { app, .. }
            | Message::VoteRequest { app, .. }
            | Message::Vote { app, .. }
            | Message::NewPrimary { app, .. }
            | Message::TransferRequest { app, .. }
            | Message::TransferReady { app, .. }
            | Message::Join { app, .. }
            | Message::JoinReply { app, .. }
            | Message::Stale { app, .. }
            | Message::Stop { app, .. } => app,
        }
    }

    /// The epoch the message carries.
    pub fn epoch(&self) -> Epoch {
        match self {
            Message::Heartbeat { epoch, .. }
            | Message::LeaseGrant { epoch, .. }
            | Message::Ack { epoch, .. }
            | Message::VoteRequest { epoch, .. }
            | Message::Vote { epoch, .. }
            | Message::NewPrimary { epoch, .. }
            | Message::TransferRequest { epoch, .. }
            | Message::TransferReady { epoch, .. }
            | Message::Join { epoch, .. }
            | Message::JoinReply { epoch, .. }
            | Message::Stale { epoch, .. }
            | Message::Stop { epoch, .. } => *epoch,
        }
    }

    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Heartbeat { .. } => "heartbeat",
            Message::LeaseGrant { .. } => "lease-grant",
            Message::Ack { .. } => "ack",
            Message::VoteRequest { pre: true, .. } => "pre-vote-request",
            Message::VoteRequest { .. } => "vote-request",
            Message::Vote { .. } => "vote",
            Message::NewPrimary { .. } => "new-primary",
            Message::TransferRequest { .. } => "transfer-request",
            Message::TransferReady { .. } => "transfer-ready",
            Message::Join { .. } => "join",
            Message::JoinReply { .. } => "join-reply",
            Message::Stale { .. } => "stale",
            Message::Stop { .. } => "stop",
        }
    }
}

/// What the glue tells a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A message from a peer (the transport has authenticated `from`).
    Message {
        /// The sender.
        from: NodeId,
        /// The message.
        message: Message,
    },
    /// The transport has a connection to `peer` again.
    PeerConnected {
        /// The peer.
        peer: NodeId,
    },
    /// The transport lost its connection to `peer`.
    PeerDisconnected {
        /// The peer.
        peer: NodeId,
    },
    /// `ferry run`: this node becomes the application's primary in epoch 1
    /// (refused when the application is already known here).
    StartApp {
        /// Application.
        app: String,
        /// Output commit mode.
        mode: Mode,
        /// Every member, this node included.
        members: Vec<Member>,
    },
    /// Primary: the shim's ring holds records up to `gseq`.
    RecordsLogged {
        /// Application.
        app: String,
        /// Highest logged gseq.
        gseq: Gseq,
    },
    /// Primary, after [`Action::PauseApp`]: the program is stopped and its
    /// last record is `gseq`.
    Paused {
        /// Application.
        app: String,
        /// The last record the program logged.
        gseq: Gseq,
    },
    /// Backup: the log is fsynced up to `gseq`.
    Durable {
        /// Application.
        app: String,
        /// Highest durable gseq.
        gseq: Gseq,
    },
    /// `ferry failover APP`: hand the primary role to a backup with nothing
    /// lost (to `to`, or to the most up-to-date healthy backup).
    Failover {
        /// Application.
        app: String,
        /// The backup to hand over to.
        to: Option<NodeId>,
    },
    /// Backup: the log is corrupt after `intact_up_to` (the reader has cut it
    /// there). The backup is unhealthy until it has resynchronised.
    CorruptLog {
        /// Application.
        app: String,
        /// The last intact record.
        intact_up_to: Gseq,
    },
    /// Backup: the resynchronisation asked for by [`Action::Resync`] is done;
    /// the log holds the primary's records up to `gseq`.
    Resynced {
        /// Application.
        app: String,
        /// Highest durable gseq after the resync.
        gseq: Gseq,
    },
    /// Backup: the resynchronisation failed (source gone); ask again later.
    ResyncFailed {
        /// Application.
        app: String,
    },
    /// `ferry migrate APP --to NODE [--rollback | --commit]` on the primary.
    Migrate {
        /// Application.
        app: String,
        /// The node the application moves to.
        to: NodeId,
        /// Which step.
        step: MigrateStep,
    },
    /// Backup: the local replica has replayed every record up to `gseq`
    /// (reported about every heartbeat interval; a migration waits for the
    /// target's replica to be close behind before it switches).
    Replayed {
        /// Application.
        app: String,
        /// Highest replayed gseq.
        gseq: Gseq,
    },
    /// `ferry stop APP` on the primary.
    StopApp {
        /// Application.
        app: String,
    },
}

/// What a node asks the glue to do. Actions are returned in order and must be
/// carried out in that order; in particular a [`Action::Persist`] must be
/// durable before any later [`Action::Send`] leaves the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `message` to `to`.
    Send {
        /// The peer.
        to: NodeId,
        /// The message.
        message: Message,
    },
    /// Open (or keep open) the output gate: outputs of records up to
    /// `up_to_gseq` may be released until this node's clock reads `until`.
    /// The deadline is enforced where outputs are released (the shim compares
    /// it with the host's monotonic clock), so the gate closes on time even if
    /// the daemon is stopped.
    OpenGate {
        /// Application.
        app: String,
        /// Highest gseq whose output may be released.
        up_to_gseq: Gseq,
        /// The lease end on this node's clock.
        until: Time,
    },
    /// Close the output gate now (the lease is about to end, or the role is
    /// being given up).
    CloseGate {
        /// Application.
        app: String,
    },
    /// This backup won the election: its replica replays up to `base`, then
    /// goes live; the records it logs start at `base + 1`.
    Promote {
        /// Application.
        app: String,
        /// The new epoch.
        epoch: Epoch,
        /// Last record of the old log.
        base: Gseq,
    },
    /// This node was primary and learned that it no longer is: stop the
    /// program (its gate is already closed) and become a backup.
    Demote {
        /// Application.
        app: String,
        /// The new epoch.
        epoch: Epoch,
        /// The new primary, when known.
        primary: Option<NodeId>,
    },
    /// Move the application's service address to this node.
    MoveVip {
        /// Application.
        app: String,
    },
    /// Store this state durably; [`crate::Node::restore`] takes it back.
    Persist {
        /// Application.
        app: String,
        /// The state.
        state: crate::PersistedApp,
    },
    /// The application is gone: delete its persisted state.
    Forget {
        /// Application.
        app: String,
    },
    /// Drop the log from `from_gseq` on and fetch the records from there
    /// (and a checkpoint if needed) from `from_node`; answer with
    /// [`Input::Resynced`] or [`Input::ResyncFailed`].
    Resync {
        /// Application.
        app: String,
        /// First gseq to fetch.
        from_gseq: Gseq,
        /// The node to fetch from (the primary).
        from_node: NodeId,
    },
    /// Stop the program at its next call and answer with [`Input::Paused`].
    PauseApp {
        /// Application.
        app: String,
    },
    /// Let a paused program run again.
    ResumeApp {
        /// Application.
        app: String,
    },
    /// A message was refused (also logged with `tracing`).
    Refused {
        /// Application.
        app: String,
        /// The sender.
        from: NodeId,
        /// What the message was.
        kind: &'static str,
        /// Why it was refused.
        reason: Refusal,
    },
    /// A local command could not be carried out.
    CommandFailed {
        /// Application.
        app: String,
        /// Why.
        error: CommandError,
    },
    /// The application's role, epoch, primary, health, protection or gate
    /// changed.
    StatusChanged(AppStatus),
}
