//! Ferry's replication protocol (roles, leases, epochs, acknowledgements, election) as a state machine with no sockets and no clock.
//!
//! Every `ferryd` holds one [`Node`]. The node owns no socket, no timer and
//! no thread: the daemon feeds it [`Input`]s with [`Node::handle`] (a message
//! from a peer, a connection change, a local command, a report from the log
//! or the ring) and the passage of time with [`Node::tick`], each with a
//! reading of the host's monotonic clock ([`Time`], nanoseconds), and carries
//! out the [`Action`]s it returns. The same inputs give the same actions, so
//! the protocol is tested by simulating whole clusters in virtual time
//! (`tests/sim.rs`), as quinn-proto is.
//!
//! # What the glue must do
//!
//! - Carry out actions in the order returned. A [`Action::Persist`] must be
//!   durable before any later [`Action::Send`] leaves the host (a grant echoes
//!   a floor the grantor has made durable; a vote follows its record).
//! - Call [`Node::tick`] at least every heartbeat interval, by this node's own
//!   clock ([`Node::next_timeout`] says when it has something to do sooner).
//! - Enforce the gate where outputs are released: [`Action::OpenGate`] says
//!   "outputs of records up to `up_to_gseq` may go until the host's monotonic
//!   clock reads `until`". The shim compares the deadline with
//!   `CLOCK_MONOTONIC` before it releases an output, so the gate closes on time
//!   even when `ferryd` is stopped (SIGSTOP, a long pause) and never gets to
//!   send its own [`Action::CloseGate`].
//! - Send heartbeats and grants as QUIC datagrams; the other messages may use
//!   a stream. Nothing in the protocol depends on ordered or reliable
//!   delivery; streams just make catching up quicker.
//!
//! # Roles
//!
//! Each application has, on each node, a [`Role`]: the **primary** runs the
//! program and streams its records; a **backup** keeps a log and a replica
//! and may take over; a **witness** (`ferryd --witness`) keeps no log, runs
//! no program, but votes and grants leases, so that one backup and one
//! witness make a majority of three with the primary. Every role belongs to
//! an **epoch**; a message from a lower epoch is refused ([`Refusal`]) and
//! answered with [`Message::Stale`], which tells the sender the current epoch
//! and primary. Only a [`Message::Join`] (a node catching up) is answered
//! whatever its epoch.
//!
//! # Leases
//!
//! The primary sends a [`Message::Heartbeat`] to every member every
//! heartbeat interval, stamped with its own clock (`sent`). A member that
//! accepts the primary answers with a [`Message::LeaseGrant`] echoing `sent`,
//! and *promises* not to vote for anyone until `lease * (1 + drift)` after it
//! received the heartbeat. The primary holds its lease until the
//! majority-th freshest echoed `sent` (its own last heartbeat counts as one
//! grant) plus `lease * (1 - drift)`, on its own clock.
//!
//! The gate is open only while the lease runs for more than one heartbeat
//! interval, so the node closes it itself (at a tick) before the lease ends,
//! and each [`Action::OpenGate`] carries the lease end as its deadline.
//!
//! # Elections
//!
//! A backup that has heard no valid heartbeat for `lease * (1 + drift)` waits
//! a random election timeout more, then asks for *pre-votes*
//! ([`Message::VoteRequest`] with `pre`): would you vote for me in
//! `epoch + 1`? A pre-vote changes nothing on either side, so a node cut off
//! from the others cannot push the epoch up and disturb a healthy primary
//! when it comes back. With a majority of pre-votes it stands for real: it
//! moves to `epoch + 1`, votes for itself (persisted), and asks again.
//! A voter grants only if all of these hold:
//!
//! - the epoch is above its own, or equal and it has voted for nobody else
//!   and knows no other primary in it (one vote per epoch, persisted);
//! - it has no lease promise running (unless the candidate was handed the
//!   role by the very primary it promised to; see below);
//! - it did not restart less than `lease * (1 + drift)` ago (promises made
//!   before the restart are forgotten, so it waits them out);
//! - the candidate is not a witness;
//! - the candidate's log ends at or after its own ([`LogPosition`]: the epoch
//!   that wrote the last record, then its gseq, as Raft compares logs);
//! - the candidate's log ends at or after its *release floor* (below).
//!
//! A backup stands only while its log is healthy (not corrupt, not half
//! resynchronised) and reaches its own release floor. With a majority of
//! votes it leads the new epoch and starts heartbeating; when a majority
//! grants it a lease in that epoch it is promoted ([`Action::Promote`]:
//! replay up to `base`, then go live; [`Action::MoveVip`]), tells everyone
//! ([`Message::NewPrimary`]) and opens its gate. Waiting for the lease means
//! a candidate that won an epoch the others have already left (a late vote,
//! a late switchover request) is never promoted and never takes the address.
//! A primary that learns of a later epoch closes its gate and steps down
//! ([`Action::Demote`]).
//!
//! # Output commit
//!
//! In **sync** mode an output at gseq N is released only when N is safe from
//! any failover. Two ways make it safe:
//!
//! - *Protected*: `members - majority` backups (at least one) that are
//!   healthy, in contact within the lease and caught up have acknowledged
//!   durable receipt up to N ([`Message::Ack`], one per fsync batch, and on
//!   every grant). Every majority then contains one of them or the primary,
//!   and each of those refuses a candidate whose log ends before N. With
//!   three members (primary, backup, witness) or four, one backup is enough:
//!   this is "at least one healthy backup has it".
//! - *Unprotected*: with fewer such backups (say the only backup died) the
//!   primary keeps serving, as the issue asks, but announces its logged gseq
//!   as the **release floor** in its heartbeats (one every fifth of a
//!   heartbeat interval while records wait). Members persist the highest
//!   floor they hear and echo it in their grants; once a majority (the
//!   primary included) holds a floor, outputs up to it go. No candidate whose
//!   log ends before a floor a majority holds can win, so these outputs are
//!   not lost either; their cost is one round trip, and [`AppStatus`] says
//!   `protected: false`.
//!
//! In **async** mode outputs go at once, and [`AppStatus::lag`] says how far
//! the most up-to-date backup is behind; a failover may lose that lag.
//!
//! # Rejoining and resynchronising
//!
//! A backup acknowledges only while it is in sync with the current primary.
//! A node that is not (restarted, deposed, log found corrupt, new) sends
//! [`Message::Join`] with its durable gseq and its log's [`history`]:
//! which epoch wrote which records. The primary answers with the first gseq
//! where the two logs part ([`history::common_prefix`]) and its own history;
//! the node drops its records from there and fetches the rest
//! ([`Action::Resync`], then [`Input::Resynced`]). A node whose log is corrupt
//! ([`Input::CorruptLog`]) is unhealthy, acknowledges nothing and stands for
//! nothing until it has resynchronised; it raises its release floor to what
//! the log held, since that may have been released.
//!
//! # Planned switchover
//!
//! [`Input::Failover`] on the primary closes the gate at once, pauses the
//! program ([`Action::PauseApp`], answered by [`Input::Paused`] with the last
//! record), waits until the target (the named backup, or the most up-to-date
//! healthy one) has acknowledged every logged record, then gives the role
//! up: it moves to `epoch + 1` voting for the target (persisted), becomes a
//! backup, and sends [`Message::TransferRequest`]. The target stands in
//! `epoch + 1` at once with two votes (its own and the old primary's); other
//! voters that promised their lease to the old primary vote too, because the
//! request names it (`transfer_from`) and that primary has closed its gate
//! for good in its epoch. Their grants of the new epoch's lease follow at
//! once: nobody waits for the old lease to run out. The old primary rejoins as a backup of the target
//! and has nothing to fetch. A switchover not done within the transfer
//! timeout is abandoned and the program resumes.
//!
//! # Migration
//!
//! [`Input::Migrate`] on the primary runs a reversible migration
//! (`ferry migrate`, seed 000). *Start* records a [`Migration`] from this
//! node to the target, which heartbeats carry to every member; a target
//! that is not a member is added first, one member at a time, so that every
//! majority of the old member list meets every majority of the new one. The
//! target joins and resynchronises as any backup does. Once it is healthy,
//! in contact, knows the record (it granted a heartbeat that carried it)
//! and its log and replica are within 1024 records of the
//! primary's (the replica's position rides on its grants), the primary
//! starts a planned switchover to it; the target, promoted, marks the
//! migration *moved*. The old primary stays a backup, so *rollback* on the
//! new primary is another switchover back (and, when the target was added,
//! the target leaves the members once the source is promoted again); before
//! the move, rollback cancels. *Commit* ends it; when the target was added,
//! the source leaves, so the member count is what it was. A member taken
//! out gets [`Message::Stop`]. The old primary measures the downtime from
//! its gate closing to the new primary's [`Message::NewPrimary`]
//! ([`AppStatus::switch`]).
//!
//! # Restarts
//!
//! [`Action::Persist`] carries a [`PersistedApp`] (epoch, vote, release
//! floor, members, mode, history); [`Node::restore`] takes it back together
//! with the log's durable gseq. A restarted node is a backup (or witness) in
//! its persisted epoch, never a primary; it hears the current primary's
//! heartbeats and rejoins.
//!
//! # Why two primaries never serve at once
//!
//! Let ρ be the largest deviation of any node's clock rate from real time,
//! and `d` the configured drift bound; the argument needs ρ ≤ d.
//!
//! 1. *A grant outlives the lease it supports.* A primary counts a grant
//!    until `lease * (1 - d)` of its own clock after it *sent* the heartbeat;
//!    that is at most `lease * (1 - d) / (1 - ρ)` of real time. The grantor
//!    received the heartbeat after it was sent and keeps its promise for
//!    `lease * (1 + d)` of its clock, at least `lease * (1 + d) / (1 + ρ)` of
//!    real time. `(1 - d)(1 + ρ) <= (1 + d)(1 - ρ)` exactly when ρ ≤ d, so
//!    every grantor is still bound when the lease the grant supports ends.
//! 2. *Majorities meet.* A primary's lease rests on a majority of grantors.
//!    A new primary needs a majority of votes in a later epoch; the two
//!    majorities share a member. That member votes only once its promise has
//!    run out (point 1: after the old lease ended), and after voting it is in
//!    the later epoch and refuses the old primary's heartbeats, so the old
//!    primary can never renew from it. Every lease the old primary ever holds
//!    therefore ends before the new one is elected; a restarted member does
//!    not vote until any promise it forgot has run out.
//! 3. *One primary per epoch.* A node votes once per epoch (persisted), so at
//!    most one candidate gets a majority in an epoch.
//! 4. *The gate follows the lease.* The gate is open only inside the lease:
//!    the node closes it a heartbeat interval early at a tick, and the
//!    deadline carried by [`Action::OpenGate`] closes it on the host's clock
//!    even if `ferryd` is frozen. A planned switchover closes the gate before
//!    the role is handed over, and the old primary leaves its epoch.
//!
//! # Why no released output is lost
//!
//! In sync mode a record N is released only when either enough backups hold
//! it (every majority contains one of them or the primary) or a majority
//! holds a release floor at or after N. Each of those nodes refuses to vote
//! for a candidate whose log ends before N (by [`LogPosition`]), so every
//! later primary's log holds N. By induction over epochs (a primary of a later
//! epoch had every record its voters required, and a log whose last record
//! is from a later epoch extends that primary's log), the same holds for
//! every primary after it. A backup resynchronises from the primary's log,
//! so its log is always a prefix of the primary's. What is lost on purpose:
//! in async mode, the records the backups did not yet have; in any mode, a
//! record whose every copy was destroyed (a corrupt log *and* the death of
//! every other holder) — then no candidate can win and the application waits
//! for a node that has it, rather than going on without it.
//!
//! # Timing defaults ([`Timings`])
//!
//! | setting | default | meaning |
//! |---|---|---|
//! | `heartbeat_interval` | 50 ms | heartbeat period; the longest gap between two ticks |
//! | `lease` | 500 ms | nominal lease; held for `lease * (1 - drift)` = 495 ms from a heartbeat's send time, promised for `lease * (1 + drift)` = 505 ms from its receipt |
//! | `election_timeout_min` / `_max` | 100 / 200 ms | random wait after the promise runs out before asking for votes, and between two attempts |
//! | `drift_ppm` | 10 000 (1 %) | bound on clock-rate deviation from real time |
//! | `transfer_timeout` | 1 s | a planned switchover not done by then is abandoned |
//! | `join_retry` | 200 ms | a join with no answer is sent again |
//!
//! So a primary that dies is replaced in about `505 ms + 100..200 ms` after
//! its last heartbeat, plus a few round trips; [`Timings::failover_bound`]
//! (505 + 2 × 200 + 3 × 50 = 1055 ms) bounds it when a majority is up and the
//! network is sound.
//!
//! # Known limits
//!
//! - Safety rests on the drift bound: a clock running more than `drift` off
//!   real time can let two gates overlap by the difference.
//! - Two nodes given [`Input::StartApp`] for the same application both start
//!   in epoch 1; members grant leases to the first they hear from, so at most
//!   one of them ever opens its gate, and the other stays gated until it is
//!   stopped.
//! - An unprotected primary's outputs wait one round trip to a majority
//!   (about 10 ms plus the network) instead of none.

mod error;
pub mod history;
mod message;
mod node;
mod types;

pub use error::{CommandError, Refusal};
pub use history::{EpochStart, LogPosition};
pub use message::{Action, Input, Message};
pub use node::{
    phase_name, AppStatus, BackupStatus, Node, PersistedApp, RestoredApp, Role, Switch,
};
pub use types::{
    Config, Epoch, Gseq, Member, MigrateStep, Migration, MigrationPhase, Mode, NodeId, Time,
    Timings, MS,
};
