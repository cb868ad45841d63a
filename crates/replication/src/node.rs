//! One node's replication state machine: every application it takes part in,
//! the messages it answers, the timers it keeps.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::error::{CommandError, Refusal};
use crate::history::{self, EpochStart, LogPosition};
use crate::message::{Action, Input, Message};
use crate::types::{
    Config, Epoch, Gseq, Member, MigrateStep, Migration, MigrationPhase, Mode, NodeId, Time,
};

/// The part of an application's state that must survive a restart
/// ([`Action::Persist`]). With it a restarted node never votes twice in an
/// epoch, never goes back in epoch, and never forgets a release floor it
/// acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedApp {
    /// The highest epoch this node took part in.
    pub epoch: Epoch,
    /// Whom it voted for (or followed) in that epoch.
    pub voted_for: Option<NodeId>,
    /// The highest release floor it made durable and echoed.
    pub release_floor: LogPosition,
    /// The application's members.
    pub members: Vec<Member>,
    /// Output commit mode.
    pub mode: Mode,
    /// Which epoch wrote which records of this node's log.
    pub history: Vec<EpochStart>,
    /// The migration under way, as this node last knew it.
    pub migration: Option<Migration>,
}

/// The last planned switchover this node handed over in, as the old
/// primary saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switch {
    /// The node that took over.
    pub to: NodeId,
    /// The epoch it took over in.
    pub epoch: Epoch,
    /// When the gate closed and the program was paused (this node's clock).
    pub paused_at: Time,
    /// From then until the new primary announced itself: how long nothing
    /// could be released (one-way delay of the announcement included).
    /// `None` until the announcement arrives.
    pub downtime: Option<Time>,
}

/// An application to bring back in [`Node::restore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoredApp {
    /// Application.
    pub app: String,
    /// What the node persisted last.
    pub state: PersistedApp,
    /// The log's durable gseq as the log reader found it (0 on a witness).
    pub durable: Gseq,
}

/// A node's role for one application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Not taking part (unknown application).
    None,
    /// Runs the program and streams its records.
    Primary,
    /// A backup standing for election.
    Candidate,
    /// Keeps a log and a replica; may take over.
    Backup,
    /// Votes and grants leases only.
    Witness,
}

/// What the primary knows of one backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStatus {
    /// The backup.
    pub node: NodeId,
    /// Highest gseq it acknowledged as durable.
    pub acked: Gseq,
    /// Whether its log is healthy and in sync.
    pub healthy: bool,
    /// Whether it was heard within the lease.
    pub in_contact: bool,
    /// The highest gseq its replica has replayed, when it said.
    pub replayed: Option<Gseq>,
}

/// One application's state as `ferry status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStatus {
    /// Application.
    pub app: String,
    /// This node's role.
    pub role: Role,
    /// This node's epoch.
    pub epoch: Epoch,
    /// The primary this node knows.
    pub primary: Option<NodeId>,
    /// Output commit mode.
    pub mode: Mode,
    /// Members.
    pub members: Vec<Member>,
    /// Highest logged gseq (primary), or the durable one (others).
    pub logged: Gseq,
    /// Highest gseq the gate released (primary), or the highest the node
    /// heard of (others).
    pub acked: Gseq,
    /// Highest durable gseq of this node's log.
    pub durable: Gseq,
    /// The log is intact and in sync with the primary (always true on a
    /// primary and a witness).
    pub healthy: bool,
    /// Primary in sync mode with enough healthy backups acknowledging within
    /// the lease: a failover now loses no released output. When false the
    /// primary keeps serving, unprotected.
    pub protected: bool,
    /// Records logged but not yet durable on the most up-to-date backup in
    /// contact (primary only).
    pub lag: Gseq,
    /// The output gate is open (primary only).
    pub gate_open: bool,
    /// The lease end on this node's clock (primary only).
    pub lease_until: Option<Time>,
    /// This node's release floor.
    pub release_floor: LogPosition,
    /// What the primary knows of each backup.
    pub backups: Vec<BackupStatus>,
    /// The migration under way, if any.
    pub migration: Option<Migration>,
    /// The last planned switchover this node handed the role over in.
    pub switch: Option<Switch>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct StatusKey {
    role: Role,
    epoch: Epoch,
    primary: Option<NodeId>,
    healthy: bool,
    protected: bool,
    gate_open: bool,
}

#[derive(Debug, Default)]
struct Grant {
    echo: Time,
    floor: Gseq,
}

#[derive(Debug)]
struct BackupView {
    acked: Gseq,
    healthy: bool,
    heard: Time,
    replayed: Option<Gseq>,
    /// How far its replica was behind what this node had logged when it
    /// sent the heartbeat whose grant said `replayed`.
    replica_lag: Option<Gseq>,
}

#[derive(Debug)]
struct Transfer {
    target: NodeId,
    started: Time,
    deadline: Time,
    paused: bool,
}

#[derive(Debug)]
struct Leader {
    logged: Gseq,
    released: Gseq,
    epoch_start: Gseq,
    grants: BTreeMap<NodeId, Grant>,
    backups: BTreeMap<NodeId, BackupView>,
    last_heartbeat: Option<Time>,
    announced: Gseq,
    gate: Option<(Gseq, Time)>,
    transfer: Option<Transfer>,
    /// Went live (always, for the node that started the application).
    promoted: bool,
    /// A migration's switchover is not tried again before this time (it
    /// timed out a moment ago).
    migrate_retry_at: Time,
    /// When the first heartbeat carrying the current migration record left:
    /// the destination has the record once it grants a heartbeat sent since.
    migration_since: Time,
    /// (send time, logged) of the last heartbeats, to weigh a replica
    /// position against what was logged when it was asked for.
    sent_logged: std::collections::VecDeque<(Time, Gseq)>,
}

#[derive(Debug)]
struct Election {
    epoch: Epoch,
    pre: bool,
    grants: BTreeSet<NodeId>,
}

#[derive(Debug)]
struct Handover {
    target: NodeId,
    from_epoch: Epoch,
    up_to: Gseq,
    next_send: Time,
    until: Time,
}

#[derive(Debug)]
struct App {
    name: String,
    members: Vec<Member>,
    mode: Mode,
    witness: bool,
    role: Role,
    epoch: Epoch,
    voted_for: Option<NodeId>,
    primary: Option<NodeId>,
    release_floor: LogPosition,
    history: Vec<EpochStart>,
    durable: Gseq,
    corrupt: bool,
    resync: Option<Epoch>,
    synced_epoch: Option<Epoch>,
    promised_until: Time,
    promised_to: Option<NodeId>,
    heard_released: Gseq,
    election_at: Option<Time>,
    join_sent_at: Option<Time>,
    election: Option<Election>,
    handover: Option<Handover>,
    leader: Option<Leader>,
    migration: Option<Migration>,
    /// The (epoch, send time) of the heartbeat `migration` came from:
    /// heartbeats may arrive out of order, and an older one must not undo
    /// a newer record.
    migration_heard: (Epoch, Time),
    replayed: Option<Gseq>,
    switch: Option<Switch>,
    reported: Option<StatusKey>,
    persisted: Option<PersistedApp>,
    gone: bool,
}

impl App {
    fn new(name: &str, members: Vec<Member>, mode: Mode, witness: bool) -> App {
        App {
            name: name.to_owned(),
            members,
            mode,
            witness,
            role: if witness { Role::Witness } else { Role::Backup },
            epoch: 0,
            voted_for: None,
            primary: None,
            release_floor: LogPosition::default(),
            history: Vec::new(),
            durable: 0,
            corrupt: false,
            resync: None,
            synced_epoch: None,
            promised_until: 0,
            promised_to: None,
            heard_released: 0,
            election_at: None,
            join_sent_at: None,
            election: None,
            handover: None,
            leader: None,
            migration: None,
            migration_heard: (0, 0),
            replayed: None,
            switch: None,
            reported: None,
            persisted: None,
            gone: false,
        }
    }

    fn majority(&self) -> usize {
        self.members.len() / 2 + 1
    }

    /// How many backups must hold a record before its output is released
    /// with protection: enough that every majority of members contains the
    /// primary or one of them (`members - majority`, at least 1).
    fn backups_needed(&self) -> usize {
        (self.members.len() - self.majority().min(self.members.len())).max(1)
    }

    fn member(&self, node: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.node == node)
    }

    fn is_replica(&self, node: &str) -> bool {
        self.member(node).is_some_and(|m| !m.witness)
    }

    fn last_epoch(&self) -> Epoch {
        history::epoch_of(&self.history, self.durable)
    }

    fn in_sync(&self) -> bool {
        !self.corrupt && self.resync.is_none() && self.synced_epoch == Some(self.epoch)
    }

    fn vote_floor(&self) -> LogPosition {
        match self.mode {
            Mode::Sync => self.release_floor,
            Mode::Async => LogPosition::default(),
        }
    }

    /// Where this node's log ends.
    fn position(&self) -> LogPosition {
        LogPosition::of(&self.history, self.durable)
    }

    fn persisted_state(&self) -> PersistedApp {
        PersistedApp {
            epoch: self.epoch,
            voted_for: self.voted_for.clone(),
            release_floor: self.release_floor,
            members: self.members.clone(),
            mode: self.mode,
            history: self.history.clone(),
            migration: self.migration.clone(),
        }
    }
}

impl Leader {
    fn new(logged: Gseq) -> Leader {
        Leader {
            logged,
            released: logged,
            epoch_start: logged + 1,
            grants: BTreeMap::new(),
            backups: BTreeMap::new(),
            last_heartbeat: None,
            announced: 0,
            gate: None,
            transfer: None,
            promoted: true,
            migrate_retry_at: 0,
            migration_since: 0,
            sent_logged: std::collections::VecDeque::new(),
        }
    }
}

/// How close behind the primary (in records, log and replica both) a
/// migration's target must be before the switchover: the records left are
/// shipped and replayed while the program is paused, so this bounds the
/// downtime they add (well under a millisecond of replay).
const MIGRATE_SLACK: Gseq = 1024;

/// A migration phase as `ferry status` prints it.
pub fn phase_name(phase: MigrationPhase) -> &'static str {
    match phase {
        MigrationPhase::CatchingUp => "catching up",
        MigrationPhase::Moved => "moved",
        MigrationPhase::RollingBack => "rolling back",
    }
}

fn send(out: &mut Vec<Action>, to: &str, message: Message) {
    out.push(Action::Send {
        to: to.to_owned(),
        message,
    });
}

fn refuse(out: &mut Vec<Action>, app: &str, from: &str, kind: &'static str, reason: Refusal) {
    warn!(app, from, kind, %reason, "message refused");
    out.push(Action::Refused {
        app: app.to_owned(),
        from: from.to_owned(),
        kind,
        reason,
    });
}

fn fail(out: &mut Vec<Action>, app: &str, error: CommandError) {
    warn!(app, %error, "command failed");
    out.push(Action::CommandFailed {
        app: app.to_owned(),
        error,
    });
}

/// One node of the replication protocol: a deterministic state machine.
///
/// Feed it [`Input`]s with [`Node::handle`] and the passage of time with
/// [`Node::tick`]; carry out the [`Action`]s it returns, in order. `now` is
/// always this node's own monotonic clock.
#[derive(Debug)]
pub struct Node {
    config: Config,
    apps: BTreeMap<String, App>,
    rng: u64,
    now: Time,
    started: Option<Time>,
    restarted: bool,
    disconnected: BTreeSet<NodeId>,
    /// Applications this node was told to forget, and when: messages still
    /// in flight (a join reply, a late heartbeat) must not bring them back
    /// at once.
    forgotten: BTreeMap<String, Time>,
}

impl Node {
    /// A node with no application and nothing persisted.
    pub fn new(config: Config) -> Node {
        let rng = config.seed;
        Node {
            config,
            apps: BTreeMap::new(),
            rng,
            now: 0,
            started: None,
            restarted: false,
            disconnected: BTreeSet::new(),
            forgotten: BTreeMap::new(),
        }
    }

    /// A node rebuilt after a restart from what it persisted. It comes back
    /// as a backup (or witness) of every application, in its persisted epoch,
    /// and neither votes nor stands for election until a promise it may have
    /// made before the restart has surely run out (`lease * (1 + drift)` after
    /// its first input).
    pub fn restore(config: Config, apps: Vec<RestoredApp>) -> Node {
        let mut node = Node::new(config);
        node.restarted = true;
        for r in apps {
            let witness = node.config.witness
                || !r
                    .state
                    .members
                    .iter()
                    .any(|m| m.node == node.config.name && !m.witness);
            let mut app = App::new(&r.app, r.state.members.clone(), r.state.mode, witness);
            app.epoch = r.state.epoch;
            app.voted_for = r.state.voted_for.clone();
            app.release_floor = r.state.release_floor;
            app.history = r.state.history.clone();
            app.migration = r.state.migration.clone();
            app.durable = if witness { 0 } else { r.durable };
            app.persisted = Some(r.state);
            if !witness {
                app.election_at = Some(0);
            }
            node.apps.insert(r.app, app);
        }
        node
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The applications this node knows.
    pub fn apps(&self) -> impl Iterator<Item = &str> {
        self.apps.keys().map(String::as_str)
    }

    /// Handle one input at time `now`.
    pub fn handle(&mut self, now: Time, input: Input) -> Vec<Action> {
        self.observe(now);
        let mut out = Vec::new();
        // A lease that is about to run out closes the gate before anything
        // else happens (a node resuming from a stop handles this first).
        self.update_all_gates(&mut out);
        match input {
            Input::Message { from, message } => self.on_message(from, message, &mut out),
            Input::PeerConnected { peer } => {
                self.disconnected.remove(&peer);
                let names: Vec<String> = self.apps.keys().cloned().collect();
                for name in names {
                    self.with_app(&name, |node, app| {
                        if app.leader.is_some() && app.member(&peer).is_some() {
                            node.send_heartbeats(app, &mut out);
                        }
                    });
                }
            }
            Input::PeerDisconnected { peer } => {
                self.disconnected.insert(peer);
                self.update_all_gates(&mut out);
            }
            Input::StartApp { app, mode, members } => self.start_app(&app, mode, members, &mut out),
            Input::RecordsLogged { app, gseq } => self.on_logged(&app, gseq, &mut out),
            Input::Paused { app, gseq } => self.on_paused(&app, gseq, &mut out),
            Input::Durable { app, gseq } => self.on_durable(&app, gseq, &mut out),
            Input::Failover { app, to } => self.on_failover(&app, to, &mut out),
            Input::CorruptLog { app, intact_up_to } => {
                self.on_corrupt(&app, intact_up_to, &mut out)
            }
            Input::Resynced { app, gseq } => self.on_resynced(&app, Some(gseq), &mut out),
            Input::ResyncFailed { app } => self.on_resynced(&app, None, &mut out),
            Input::StopApp { app } => self.on_stop_app(&app, &mut out),
            Input::Migrate { app, to, step } => self.on_migrate(&app, to, step, &mut out),
            Input::Replayed { app, gseq } => {
                if let Some(a) = self.apps.get_mut(&app) {
                    a.replayed = Some(gseq);
                }
            }
        }
        self.report_status(&mut out);
        out
    }

    /// Let time pass: heartbeats, lease checks, elections, retries. Must be
    /// called at least every heartbeat interval (and may be called whenever
    /// [`Node::next_timeout`] says).
    pub fn tick(&mut self, now: Time) -> Vec<Action> {
        self.observe(now);
        let mut out = Vec::new();
        self.update_all_gates(&mut out);
        let names: Vec<String> = self.apps.keys().cloned().collect();
        for name in names {
            self.with_app(&name, |node, app| node.tick_app(app, &mut out));
        }
        self.report_status(&mut out);
        out
    }

    /// The earliest time at which [`Node::tick`] has something to do.
    pub fn next_timeout(&self) -> Option<Time> {
        let t = &self.config.timings;
        let mut next: Option<Time> = None;
        let mut at = |x: Time| next = Some(next.map_or(x, |n| n.min(x)));
        for app in self.apps.values() {
            if let Some(l) = &app.leader {
                at(l.last_heartbeat.map_or(0, |h| h + t.heartbeat_interval));
                if let Some((_, until)) = l.gate {
                    at(until.saturating_sub(t.heartbeat_interval));
                }
                if let Some(tr) = &l.transfer {
                    at(tr.deadline);
                }
            } else {
                if let Some(e) = app.election_at {
                    at(e);
                }
                if let Some(h) = &app.handover {
                    at(h.next_send.min(h.until));
                }
                if let Some(j) = app.join_sent_at {
                    at(j + t.join_retry);
                }
            }
        }
        next
    }

    /// The state of application `app` on this node, as of the last input.
    pub fn status(&self, app: &str) -> Option<AppStatus> {
        self.apps.get(app).map(|a| self.status_of(a))
    }

    // ----- plumbing ------------------------------------------------------

    fn observe(&mut self, now: Time) {
        self.now = self.now.max(now);
        if self.started.is_none() {
            self.started = Some(self.now);
        }
    }

    fn with_app<R>(&mut self, name: &str, f: impl FnOnce(&mut Node, &mut App) -> R) -> Option<R> {
        let mut app = self.apps.remove(name)?;
        let r = f(self, &mut app);
        if !app.gone {
            self.apps.insert(name.to_owned(), app);
        }
        Some(r)
    }

    /// Run the command `f` on the application `name`, or answer that it
    /// is not known here.
    fn with_known_app(
        &mut self,
        name: &str,
        out: &mut Vec<Action>,
        f: impl FnOnce(&mut Node, &mut App, &mut Vec<Action>),
    ) {
        if self.with_app(name, |node, app| f(node, app, out)).is_none() {
            fail(
                out,
                name,
                CommandError::UnknownApp {
                    app: name.to_owned(),
                },
            );
        }
    }

    fn random(&mut self) -> u64 {
        // SplitMix64.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn election_timeout(&mut self) -> Time {
        let t = &self.config.timings;
        let (lo, hi) = (
            t.election_timeout_min,
            t.election_timeout_max.max(t.election_timeout_min + 1),
        );
        lo + self.random() % (hi - lo)
    }

    /// Until when this node refuses to vote because it restarted.
    fn vote_guard_until(&self) -> Time {
        match (self.restarted, self.started) {
            (true, Some(s)) => s + self.config.timings.lease_promised(),
            _ => 0,
        }
    }

    fn persist(&self, app: &mut App, out: &mut Vec<Action>) {
        let state = app.persisted_state();
        if app.persisted.as_ref() != Some(&state) {
            out.push(Action::Persist {
                app: app.name.clone(),
                state: state.clone(),
            });
            app.persisted = Some(state);
        }
    }

    fn others(&self, app: &App) -> Vec<NodeId> {
        app.members
            .iter()
            .filter(|m| m.node != self.config.name)
            .map(|m| m.node.clone())
            .collect()
    }

    fn report_status(&mut self, out: &mut Vec<Action>) {
        let names: Vec<String> = self.apps.keys().cloned().collect();
        for name in names {
            let Some(app) = self.apps.get(&name) else {
                continue;
            };
            let status = self.status_of(app);
            let key = StatusKey {
                role: status.role,
                epoch: status.epoch,
                primary: status.primary.clone(),
                healthy: status.healthy,
                protected: status.protected,
                gate_open: status.gate_open,
            };
            if app.reported.as_ref() != Some(&key) {
                if let Some(app) = self.apps.get_mut(&name) {
                    app.reported = Some(key);
                }
                out.push(Action::StatusChanged(status));
            }
        }
    }

    fn status_of(&self, app: &App) -> AppStatus {
        let now = self.now;
        let lease = self.config.timings.lease;
        let (logged, acked, protected, lag, gate_open, lease_until, backups) = match &app.leader {
            Some(l) => {
                let backups: Vec<BackupStatus> = l
                    .backups
                    .iter()
                    .map(|(node, v)| BackupStatus {
                        node: node.clone(),
                        acked: v.acked,
                        healthy: v.healthy,
                        in_contact: v.heard + lease >= now && !self.disconnected.contains(node),
                        replayed: v.replayed,
                    })
                    .collect();
                let best = backups
                    .iter()
                    .filter(|b| b.in_contact && b.healthy)
                    .map(|b| b.acked)
                    .max()
                    .unwrap_or(0);
                let protected = app.mode == Mode::Sync && self.protection(app).0;
                (
                    l.logged,
                    l.released,
                    protected,
                    l.logged.saturating_sub(best),
                    l.gate.is_some(),
                    self.lease_end(app),
                    backups,
                )
            }
            None => (
                app.durable,
                app.heard_released,
                false,
                0,
                false,
                None,
                Vec::new(),
            ),
        };
        AppStatus {
            app: app.name.clone(),
            role: app.role,
            epoch: app.epoch,
            primary: app.primary.clone(),
            mode: app.mode,
            members: app.members.clone(),
            logged,
            acked,
            durable: app.durable,
            healthy: app.witness || app.leader.is_some() || app.in_sync(),
            protected,
            lag,
            gate_open,
            lease_until,
            release_floor: app.release_floor,
            backups,
            migration: app.migration.clone(),
            switch: app.switch.clone(),
        }
    }

    // ----- leases and the gate -------------------------------------------

    /// The lease end on this node's clock: the majority-th freshest grant
    /// (this node's own last heartbeat counts as one) plus `lease * (1 - drift)`.
    fn lease_end(&self, app: &App) -> Option<Time> {
        let l = app.leader.as_ref()?;
        let mut echoes: Vec<Time> = l.last_heartbeat.into_iter().collect();
        for m in &app.members {
            if m.node != self.config.name {
                if let Some(g) = l.grants.get(&m.node) {
                    echoes.push(g.echo);
                }
            }
        }
        echoes.sort_unstable_by(|a, b| b.cmp(a));
        echoes
            .get(app.majority() - 1)
            .map(|t| t + self.config.timings.lease_held())
    }

    /// Whether enough healthy, caught-up backups in contact acknowledge, and
    /// the gseq they all have.
    fn protection(&self, app: &App) -> (bool, Gseq) {
        let Some(l) = &app.leader else {
            return (false, 0);
        };
        let lease = self.config.timings.lease;
        let mut acks: Vec<Gseq> = app
            .members
            .iter()
            .filter(|m| {
                !m.witness && m.node != self.config.name && !self.disconnected.contains(&m.node)
            })
            .filter_map(|m| l.backups.get(&m.node))
            .filter(|v| v.healthy && v.heard + lease >= self.now && v.acked >= l.released)
            .map(|v| v.acked)
            .collect();
        acks.sort_unstable_by(|a, b| b.cmp(a));
        let k = app.backups_needed();
        match acks.get(k - 1) {
            Some(&g) => (true, g),
            None => (false, 0),
        }
    }

    /// The gseq the gate may release up to now.
    fn release_target(&self, app: &App) -> Gseq {
        let Some(l) = &app.leader else { return 0 };
        match app.mode {
            Mode::Async => l.logged,
            Mode::Sync => {
                let (_, by_acks) = self.protection(app);
                // A floor that a majority (this node included) made durable:
                // no candidate below it can win, so its outputs may go.
                let mut floors = vec![l.announced];
                for m in &app.members {
                    if m.node != self.config.name {
                        if let Some(g) = l.grants.get(&m.node) {
                            floors.push(g.floor);
                        }
                    }
                }
                floors.sort_unstable_by(|a, b| b.cmp(a));
                let by_floor = floors.get(app.majority() - 1).copied().unwrap_or(0);
                l.logged.min(l.released.max(by_acks).max(by_floor))
            }
        }
    }

    fn update_all_gates(&mut self, out: &mut Vec<Action>) {
        let names: Vec<String> = self
            .apps
            .iter()
            .filter(|(_, a)| a.leader.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            self.with_app(&name, |node, app| node.update_gate(app, out));
        }
    }

    /// Open, move or close the gate. The gate is open only while the lease
    /// runs for more than one heartbeat interval (the longest the glue may
    /// wait between two ticks), so the explicit close always comes before the
    /// lease ends; the deadline in [`Action::OpenGate`] closes it even if the
    /// daemon is stopped.
    fn update_gate(&mut self, app: &mut App, out: &mut Vec<Action>) {
        let now = self.now;
        let hb = self.config.timings.heartbeat_interval;
        let end = self.lease_end(app);
        let target = self.release_target(app);
        let Some(l) = app.leader.as_ref() else { return };
        let usable = end.filter(|&e| e > now + hb && l.transfer.is_none());
        if usable.is_some() && !l.promoted {
            self.promote(app, out);
        }
        let Some(l) = app.leader.as_mut() else { return };
        match usable {
            Some(until) => {
                l.released = l.released.max(target);
                if l.gate != Some((l.released, until)) {
                    l.gate = Some((l.released, until));
                    out.push(Action::OpenGate {
                        app: app.name.clone(),
                        up_to_gseq: l.released,
                        until,
                    });
                }
            }
            None => {
                if l.gate.take().is_some() {
                    info!(app = %app.name, epoch = app.epoch, "lease ending: output gate closed");
                    out.push(Action::CloseGate {
                        app: app.name.clone(),
                    });
                }
            }
        }
    }

    fn send_heartbeats(&mut self, app: &mut App, out: &mut Vec<Action>) {
        let now = self.now;
        let (protected, _) = self.protection(app);
        let others = self.others(app);
        let Some(l) = app.leader.as_ref() else { return };
        let floor = match app.mode {
            Mode::Async => 0,
            Mode::Sync if protected => l.released,
            Mode::Sync => l.logged,
        };
        let floor_at = match app.mode {
            Mode::Async => LogPosition::default(),
            Mode::Sync => LogPosition::of(&app.history, floor),
        };
        if floor_at > app.release_floor {
            app.release_floor = floor_at;
            self.persist(app, out);
        }
        let promise = self.config.timings.lease_promised();
        app.promised_until = app.promised_until.max(now + promise);
        app.promised_to = Some(self.config.name.clone());
        let Some(l) = app.leader.as_mut() else { return };
        l.last_heartbeat = Some(now);
        l.announced = floor;
        if l.sent_logged.len() >= 64 {
            l.sent_logged.pop_front();
        }
        l.sent_logged.push_back((now, l.logged));
        for to in others {
            send(
                out,
                &to,
                Message::Heartbeat {
                    app: app.name.clone(),
                    epoch: app.epoch,
                    sent: now,
                    logged: l.logged,
                    released: l.released,
                    floor: floor_at,
                    epoch_start: l.epoch_start,
                    mode: app.mode,
                    members: app.members.clone(),
                    migration: app.migration.clone(),
                },
            );
        }
    }

    // ----- timers ----------------------------------------------------------

    fn tick_app(&mut self, app: &mut App, out: &mut Vec<Action>) {
        let now = self.now;
        let t = self.config.timings.clone();
        if let Some(l) = &app.leader {
            let due = l
                .last_heartbeat
                .is_none_or(|h| now >= h + t.heartbeat_interval);
            // Unprotected outputs wait for a majority to hold the floor:
            // announce it sooner than the next regular heartbeat.
            let floor_due = app.mode == Mode::Sync
                && l.logged > l.announced
                && l.last_heartbeat
                    .is_none_or(|h| now >= h + t.heartbeat_interval / 5)
                && !self.protection(app).0;
            if due || floor_due {
                self.send_heartbeats(app, out);
            }
            let expired = app
                .leader
                .as_ref()
                .and_then(|l| l.transfer.as_ref())
                .filter(|tr| now >= tr.deadline)
                .map(|tr| tr.target.clone());
            if let Some(target) = expired {
                if let Some(l) = app.leader.as_mut() {
                    l.transfer = None;
                    l.migrate_retry_at = now + t.transfer_timeout;
                }
                out.push(Action::ResumeApp {
                    app: app.name.clone(),
                });
                fail(
                    out,
                    &app.name,
                    CommandError::FailoverTimedOut {
                        app: app.name.clone(),
                        target,
                    },
                );
            }
            self.drive_migration(app, out);
            self.update_gate(app, out);
            self.try_handover(app, out);
            return;
        }
        if let Some(h) = &mut app.handover {
            if now >= h.until {
                app.handover = None;
            } else if now >= h.next_send {
                h.next_send = now + t.heartbeat_interval;
                let (to, msg) = (
                    h.target.clone(),
                    Message::TransferRequest {
                        app: app.name.clone(),
                        epoch: h.from_epoch,
                        up_to: h.up_to,
                    },
                );
                send(out, &to, msg);
            }
        }
        if app.witness {
            return;
        }
        if app.election_at.is_some_and(|e| now >= e) {
            if self.can_stand(app) {
                self.start_prevote(app, out);
            } else {
                if app.role == Role::Candidate {
                    // The candidacy failed; stand again when able.
                    app.role = Role::Backup;
                    app.election = None;
                }
                app.election_at = Some(now + self.election_timeout());
            }
        }
        if self.needs_join(app) && app.primary.is_some() && app.voted_for == app.primary {
            self.send_join(app, out);
        }
    }

    // ----- messages --------------------------------------------------------

    fn on_message(&mut self, from: NodeId, message: Message, out: &mut Vec<Action>) {
        let kind = message.kind();
        let name = message.app().to_owned();
        if !self.config.peers.contains(&from) {
            refuse(out, &name, &from, kind, Refusal::UnknownPeer);
            return;
        }
        if !self.apps.contains_key(&name) {
            let grace = 2 * self.config.timings.lease;
            if self
                .forgotten
                .get(&name)
                .is_some_and(|&t| self.now < t + grace)
            {
                debug!(app = %name, from = %from, kind, "message for an application just forgotten");
                return;
            }
            let learn = match &message {
                Message::Heartbeat { members, mode, .. }
                | Message::JoinReply { members, mode, .. } => Some((members.clone(), *mode)),
                _ => None,
            };
            match learn {
                Some((members, mode)) if members.iter().any(|m| m.node == self.config.name) => {
                    let witness = self.config.witness
                        || !members
                            .iter()
                            .any(|m| m.node == self.config.name && !m.witness);
                    info!(app = %name, from = %from, "learned application");
                    self.apps
                        .insert(name.clone(), App::new(&name, members, mode, witness));
                }
                Some(_) => {
                    refuse(
                        out,
                        &name,
                        &from,
                        kind,
                        Refusal::NotMember {
                            node: self.config.name.clone(),
                        },
                    );
                    return;
                }
                None => {
                    debug!(app = %name, from = %from, kind, "message for an unknown application");
                    out.push(Action::Refused {
                        app: name,
                        from,
                        kind,
                        reason: Refusal::UnknownApp,
                    });
                    return;
                }
            }
        }
        self.with_app(&name, |node, app| node.dispatch(app, from, message, out));
    }

    fn dispatch(&mut self, app: &mut App, from: NodeId, message: Message, out: &mut Vec<Action>) {
        let kind = message.kind();
        if app.member(&from).is_none() {
            refuse(
                out,
                &app.name,
                &from,
                kind,
                Refusal::NotMember { node: from.clone() },
            );
            return;
        }
        let epoch = message.epoch();
        // Lower epochs are refused, except a Join (a node catching up must be
        // answered) and answers that are matched against what we asked.
        let answerable_when_old = matches!(
            message,
            Message::Join { .. }
                | Message::Vote { .. }
                | Message::Stale { .. }
                | Message::LeaseGrant { .. }
                | Message::Ack { .. }
                | Message::TransferRequest { .. }
        );
        if epoch < app.epoch && !answerable_when_old {
            refuse(
                out,
                &app.name,
                &from,
                kind,
                Refusal::StaleEpoch {
                    got: epoch,
                    current: app.epoch,
                },
            );
            send(
                out,
                &from,
                Message::Stale {
                    app: app.name.clone(),
                    epoch: app.epoch,
                    primary: app.primary.clone(),
                },
            );
            return;
        }
        match message {
            Message::Heartbeat {
                sent,
                released,
                floor,
                epoch_start,
                mode,
                members,
                migration,
                ..
            } => self.on_heartbeat(
                app,
                &from,
                epoch,
                sent,
                released,
                floor,
                epoch_start,
                mode,
                members,
                migration,
                out,
            ),
            Message::LeaseGrant {
                echo,
                floor,
                durable,
                healthy,
                replayed,
                ..
            } => self.on_grant(
                app,
                &from,
                epoch,
                Some((echo, floor)),
                durable,
                healthy,
                replayed,
                out,
            ),
            Message::Ack {
                durable, healthy, ..
            } => self.on_grant(app, &from, epoch, None, Some(durable), healthy, None, out),
            Message::VoteRequest {
                pre,
                candidate,
                last_epoch,
                durable,
                transfer_from,
                ..
            } => {
                if candidate != from {
                    refuse(
                        out,
                        &app.name,
                        &from,
                        kind,
                        Refusal::NotMember { node: candidate },
                    );
                    return;
                }
                self.on_vote_request(
                    app,
                    &from,
                    epoch,
                    pre,
                    last_epoch,
                    durable,
                    transfer_from,
                    out,
                )
            }
            Message::Vote {
                pre,
                granted,
                current,
                ..
            } => self.on_vote(app, &from, epoch, pre, granted, current, out),
            Message::NewPrimary { primary, .. } => {
                if primary != from {
                    refuse(
                        out,
                        &app.name,
                        &from,
                        kind,
                        Refusal::NotMember { node: primary },
                    );
                    return;
                }
                if let Err(reason) = self.check_claim(app, &from, epoch) {
                    refuse(out, &app.name, &from, kind, reason);
                    return;
                }
                self.follow(app, epoch, &from, out);
                let now = self.now;
                if let Some(sw) = app.switch.as_mut() {
                    if sw.to == from && sw.epoch == epoch && sw.downtime.is_none() {
                        sw.downtime = Some(now.saturating_sub(sw.paused_at));
                        info!(app = %app.name, to = %from, downtime_ms = sw.downtime.unwrap_or(0) / 1_000_000, "switchover done");
                    }
                }
                app.election_at =
                    Some(self.now + self.config.timings.lease_promised() + self.election_timeout());
                self.persist(app, out);
                if self.needs_join(app) {
                    self.send_join(app, out);
                }
            }
            Message::TransferRequest { up_to, .. } => {
                self.on_transfer_request(app, &from, epoch, up_to, out)
            }
            Message::TransferReady { .. } => {
                if app.handover.as_ref().is_some_and(|h| h.target == from) {
                    app.handover = None;
                }
            }
            Message::Join {
                durable, history, ..
            } => self.on_join(app, &from, durable, &history, out),
            Message::JoinReply {
                primary,
                from_gseq,
                history,
                members,
                mode,
                ..
            } => self.on_join_reply(
                app, &from, epoch, &primary, from_gseq, history, members, mode, out,
            ),
            Message::Stale { primary, .. } => {
                if epoch > app.epoch {
                    info!(app = %app.name, from = %from, epoch, "a peer is in a later epoch");
                    self.adopt_epoch(app, epoch, primary.clone(), out);
                    app.primary = primary;
                    self.persist(app, out);
                }
            }
            Message::Stop { .. } => {
                // From the primary, a later epoch, or the node this one
                // handed its role to (before it announced itself).
                let handed_to =
                    epoch == app.epoch && app.voted_for.as_deref() == Some(from.as_str());
                if app.primary.as_deref() == Some(from.as_str()) || epoch > app.epoch || handed_to {
                    info!(app = %app.name, from = %from, "application stopped by its primary");
                    self.forgotten.insert(app.name.clone(), self.now);
                    if app.leader.as_ref().is_some_and(|l| l.gate.is_some()) {
                        out.push(Action::CloseGate {
                            app: app.name.clone(),
                        });
                    }
                    out.push(Action::Forget {
                        app: app.name.clone(),
                    });
                    app.gone = true;
                } else {
                    refuse(
                        out,
                        &app.name,
                        &from,
                        kind,
                        Refusal::NotPrimary {
                            primary: app.primary.clone(),
                        },
                    );
                }
            }
        }
    }

    /// Whether `from` may be the primary of `epoch` as far as this node knows
    /// (`epoch` is not below ours).
    fn check_claim(&self, app: &App, from: &str, epoch: Epoch) -> Result<(), Refusal> {
        if epoch == app.epoch {
            if app.leader.is_some() {
                return Err(Refusal::ConflictingPrimary {
                    epoch,
                    known: self.config.name.clone(),
                    claimed: from.to_owned(),
                });
            }
            // Whom this node voted for does not matter: the winner may have
            // had a majority without it. Only a second primary does.
            if let Some(p) = &app.primary {
                if p != from {
                    return Err(Refusal::ConflictingPrimary {
                        epoch,
                        known: p.clone(),
                        claimed: from.to_owned(),
                    });
                }
            }
        }
        if !app.is_replica(from) {
            return Err(Refusal::Witness);
        }
        Ok(())
    }

    /// Accept `primary` as the primary of `epoch` (not below ours): step down
    /// if this node led an older epoch, and remember whom it follows.
    fn follow(&mut self, app: &mut App, epoch: Epoch, primary: &str, out: &mut Vec<Action>) {
        if epoch > app.epoch {
            self.adopt_epoch(app, epoch, Some(primary.to_owned()), out);
        } else if app.voted_for.is_none() {
            // Remember whom this node follows in this epoch, so that after a
            // restart it votes for nobody else in it.
            app.voted_for = Some(primary.to_owned());
        }
        app.primary = Some(primary.to_owned());
        app.role = if app.witness {
            Role::Witness
        } else {
            Role::Backup
        };
        app.election = None;
        if app.handover.as_ref().is_some_and(|h| epoch > h.from_epoch) {
            app.handover = None;
        }
    }

    /// Move to a later epoch (or record the vote in this one), giving up
    /// whatever role this node had in the older one.
    fn adopt_epoch(
        &mut self,
        app: &mut App,
        epoch: Epoch,
        voted_for: Option<NodeId>,
        out: &mut Vec<Action>,
    ) {
        if epoch > app.epoch {
            self.demote(app, epoch, voted_for.clone(), out);
            app.primary = None;
            app.election = None;
            if app.role == Role::Candidate {
                app.role = Role::Backup;
            }
        }
        app.epoch = app.epoch.max(epoch);
        app.voted_for = voted_for;
        self.persist(app, out);
    }

    fn demote(
        &mut self,
        app: &mut App,
        epoch: Epoch,
        primary: Option<NodeId>,
        out: &mut Vec<Action>,
    ) {
        let Some(l) = app.leader.take() else { return };
        if l.gate.is_some() {
            out.push(Action::CloseGate {
                app: app.name.clone(),
            });
        }
        info!(app = %app.name, old = app.epoch, new = epoch, primary = ?primary, "no longer primary");
        app.durable = l.logged;
        app.role = Role::Backup;
        if l.promoted {
            out.push(Action::Demote {
                app: app.name.clone(),
                epoch,
                primary,
            });
        }
        app.election_at =
            Some(self.now + self.config.timings.lease_promised() + self.election_timeout());
    }

    #[allow(clippy::too_many_arguments)]
    fn on_heartbeat(
        &mut self,
        app: &mut App,
        from: &str,
        epoch: Epoch,
        sent: Time,
        released: Gseq,
        floor: LogPosition,
        epoch_start: Gseq,
        mode: Mode,
        members: Vec<Member>,
        migration: Option<Migration>,
        out: &mut Vec<Action>,
    ) {
        if let Err(reason) = self.check_claim(app, from, epoch) {
            refuse(out, &app.name, from, "heartbeat", reason);
            return;
        }
        if !members.iter().any(|m| m.node == self.config.name) {
            refuse(
                out,
                &app.name,
                from,
                "heartbeat",
                Refusal::NotMember {
                    node: self.config.name.clone(),
                },
            );
            return;
        }
        let now = self.now;
        self.follow(app, epoch, from, out);
        app.mode = mode;
        // Heartbeats may come out of order: members and migration follow
        // the newest only.
        if (epoch, sent) >= app.migration_heard {
            app.members = members;
            app.migration = migration;
            app.migration_heard = (epoch, sent);
        }
        if mode == Mode::Sync && floor > app.release_floor {
            app.release_floor = floor;
        }
        app.heard_released = app.heard_released.max(released);
        let promise = self.config.timings.lease_promised();
        app.promised_until = app.promised_until.max(now + promise);
        app.promised_to = Some(from.to_owned());
        app.election_at = Some(now + promise + self.election_timeout());
        if app.in_sync() {
            history::push(&mut app.history, epoch, epoch_start);
        }
        // The floor is durable before the grant that echoes it leaves.
        self.persist(app, out);
        let in_sync = app.in_sync();
        send(
            out,
            from,
            Message::LeaseGrant {
                app: app.name.clone(),
                epoch,
                echo: sent,
                floor: if mode == Mode::Sync {
                    floor
                } else {
                    LogPosition::default()
                },
                durable: (!app.witness && in_sync).then_some(app.durable),
                healthy: app.witness || in_sync,
                replayed: app.replayed.filter(|_| !app.witness),
            },
        );
        if self.needs_join(app) {
            self.send_join(app, out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_grant(
        &mut self,
        app: &mut App,
        from: &str,
        epoch: Epoch,
        grant: Option<(Time, LogPosition)>,
        durable: Option<Gseq>,
        healthy: bool,
        replayed: Option<Gseq>,
        out: &mut Vec<Action>,
    ) {
        let now = self.now;
        let is_replica = app.is_replica(from);
        let Some(l) = app.leader.as_mut() else { return };
        if epoch != app.epoch {
            debug!(app = %app.name, from, epoch, current = app.epoch, "grant or ack from another epoch ignored");
            return;
        }
        if let Some((echo, floor)) = grant {
            if echo > now {
                warn!(app = %app.name, from, echo, now, "lease grant echoes a time this node has not reached; ignored");
                return;
            }
            let g = l.grants.entry(from.to_owned()).or_default();
            g.echo = g.echo.max(echo);
            // Grants in this epoch echo this node's own heartbeats, whose
            // floors all lie in its own log: the gseq says it all.
            g.floor = g.floor.max(floor.gseq);
        }
        if is_replica {
            let v = l.backups.entry(from.to_owned()).or_insert(BackupView {
                acked: 0,
                healthy: false,
                heard: now,
                replayed: None,
                replica_lag: None,
            });
            v.heard = now;
            if let Some(r) = replayed {
                v.replayed = Some(r);
                if let Some((echo, _)) = grant {
                    if let Some(&(_, then)) = l.sent_logged.iter().find(|(t, _)| *t == echo) {
                        v.replica_lag = Some(then.saturating_sub(r));
                    }
                }
            }
            v.healthy = healthy && durable.is_some();
            match durable {
                Some(d) if healthy => v.acked = v.acked.max(d),
                _ => v.acked = 0,
            }
        }
        self.update_gate(app, out);
        self.try_handover(app, out);
    }

    fn may_vote(
        &self,
        app: &App,
        candidate: &str,
        epoch: Epoch,
        last_epoch: Epoch,
        durable: Gseq,
        transfer_from: Option<&str>,
    ) -> Result<(), Refusal> {
        let now = self.now;
        if !app.is_replica(candidate) {
            return Err(Refusal::Witness);
        }
        if epoch < app.epoch || (epoch == app.epoch && app.leader.is_some()) {
            return Err(Refusal::StaleEpoch {
                got: epoch,
                current: app.epoch,
            });
        }
        if epoch == app.epoch {
            if let Some(v) = &app.voted_for {
                if v != candidate {
                    return Err(Refusal::AlreadyVoted {
                        epoch,
                        voted_for: v.clone(),
                    });
                }
            }
            if let Some(p) = &app.primary {
                if p != candidate {
                    return Err(Refusal::ConflictingPrimary {
                        epoch,
                        known: p.clone(),
                        claimed: candidate.to_owned(),
                    });
                }
            }
        }
        // A planned switchover: the primary this node promised its lease to
        // gave the lease up and handed over to the candidate.
        let handed_over = transfer_from
            .is_some_and(|t| app.promised_to.as_deref() == Some(t) && epoch == app.epoch + 1);
        if !handed_over {
            if now < app.promised_until {
                return Err(Refusal::LeasePromised {
                    primary: app.promised_to.clone().unwrap_or_default(),
                    remaining: app.promised_until - now,
                });
            }
            let guard = self.vote_guard_until();
            if now < guard {
                return Err(Refusal::RecentlyRestarted {
                    remaining: guard - now,
                });
            }
        }
        let cand = LogPosition {
            epoch: last_epoch,
            gseq: durable,
        };
        if !app.witness && cand < app.position() {
            return Err(Refusal::CandidateBehind {
                cand,
                own: app.position(),
            });
        }
        if cand < app.vote_floor() {
            return Err(Refusal::BelowReleaseFloor {
                cand,
                floor: app.vote_floor(),
            });
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn on_vote_request(
        &mut self,
        app: &mut App,
        from: &str,
        epoch: Epoch,
        pre: bool,
        last_epoch: Epoch,
        durable: Gseq,
        transfer_from: Option<NodeId>,
        out: &mut Vec<Action>,
    ) {
        let kind = if pre {
            "pre-vote-request"
        } else {
            "vote-request"
        };
        let granted = match self.may_vote(
            app,
            from,
            epoch,
            last_epoch,
            durable,
            transfer_from.as_deref(),
        ) {
            Ok(()) => true,
            Err(reason) => {
                refuse(out, &app.name, from, kind, reason);
                false
            }
        };
        if granted && !pre {
            info!(app = %app.name, candidate = from, epoch, "vote granted");
            self.demote(app, epoch, None, out);
            self.adopt_epoch(app, epoch, Some(from.to_owned()), out);
            app.role = if app.witness {
                Role::Witness
            } else {
                Role::Backup
            };
            app.election = None;
            app.primary = None;
            app.election_at =
                Some(self.now + self.config.timings.election_timeout_min + self.election_timeout());
        }
        send(
            out,
            from,
            Message::Vote {
                app: app.name.clone(),
                epoch,
                pre,
                granted,
                current: app.epoch,
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn on_vote(
        &mut self,
        app: &mut App,
        from: &str,
        epoch: Epoch,
        pre: bool,
        granted: bool,
        current: Epoch,
        out: &mut Vec<Action>,
    ) {
        if !granted {
            if current > app.epoch {
                self.adopt_epoch(app, current, None, out);
            }
            return;
        }
        let majority = app.majority();
        let Some(el) = app.election.as_mut() else {
            return;
        };
        if el.epoch != epoch || el.pre != pre {
            return;
        }
        el.grants.insert(from.to_owned());
        if el.grants.len() >= majority {
            if pre {
                if self.can_stand(app) {
                    self.start_election(app, out);
                } else {
                    app.election = None;
                }
            } else {
                self.win_election(app, out);
            }
        }
    }

    fn can_stand(&self, app: &App) -> bool {
        !app.witness
            && app.leader.is_none()
            && app.is_replica(&self.config.name)
            && !app.corrupt
            && app.resync.is_none()
            && app.handover.is_none()
            && self.now >= app.promised_until
            && self.now >= self.vote_guard_until()
            && app.position() >= app.vote_floor()
    }

    fn start_prevote(&mut self, app: &mut App, out: &mut Vec<Action>) {
        let epoch = app.epoch + 1;
        debug!(app = %app.name, epoch, "no primary heard: asking for pre-votes");
        app.role = Role::Backup;
        app.election = Some(Election {
            epoch,
            pre: true,
            grants: BTreeSet::from([self.config.name.clone()]),
        });
        app.election_at = Some(self.now + self.election_timeout());
        if app.majority() <= 1 {
            self.start_election(app, out);
            return;
        }
        for to in self.others(app) {
            send(
                out,
                &to,
                Message::VoteRequest {
                    app: app.name.clone(),
                    epoch,
                    pre: true,
                    candidate: self.config.name.clone(),
                    last_epoch: app.last_epoch(),
                    durable: app.durable,
                    transfer_from: None,
                },
            );
        }
    }

    fn start_election(&mut self, app: &mut App, out: &mut Vec<Action>) {
        let me = self.config.name.clone();
        self.adopt_epoch(app, app.epoch + 1, Some(me.clone()), out);
        info!(app = %app.name, epoch = app.epoch, "standing for election");
        app.role = Role::Candidate;
        app.election = Some(Election {
            epoch: app.epoch,
            pre: false,
            grants: BTreeSet::from([me.clone()]),
        });
        app.election_at = Some(self.now + self.election_timeout());
        if app.majority() <= 1 {
            self.win_election(app, out);
            return;
        }
        self.request_votes(app, None, out);
    }

    fn request_votes(&mut self, app: &App, transfer_from: Option<&str>, out: &mut Vec<Action>) {
        for to in self.others(app) {
            if Some(to.as_str()) == transfer_from {
                continue;
            }
            send(
                out,
                &to,
                Message::VoteRequest {
                    app: app.name.clone(),
                    epoch: app.epoch,
                    pre: false,
                    candidate: self.config.name.clone(),
                    last_epoch: app.last_epoch(),
                    durable: app.durable,
                    transfer_from: transfer_from.map(str::to_owned),
                },
            );
        }
    }

    /// A majority voted for this node: lead the epoch. The node becomes
    /// primary-elect: it heartbeats, answers joins and keeps others from
    /// standing, but it is promoted ([`Action::Promote`], the replica goes
    /// live, the address moves) only when a majority grants it a lease in the
    /// new epoch (at the first open of the gate). A candidate that won an epoch
    /// the others have already left behind is thus never promoted.
    fn win_election(&mut self, app: &mut App, out: &mut Vec<Action>) {
        let me = self.config.name.clone();
        info!(app = %app.name, epoch = app.epoch, base = app.durable, "elected; waiting for a lease");
        app.role = Role::Candidate;
        app.primary = Some(me.clone());
        app.voted_for = Some(me);
        app.election = None;
        app.election_at = None;
        app.handover = None;
        app.join_sent_at = None;
        // Entries beyond this log's end (learned from a primary whose records
        // never came) would claim records this node is about to write.
        history::truncate(&mut app.history, app.durable);
        history::push(&mut app.history, app.epoch, app.durable + 1);
        app.synced_epoch = Some(app.epoch);
        let mut leader = Leader::new(app.durable);
        leader.promoted = false;
        app.leader = Some(leader);
        self.persist(app, out);
        self.send_heartbeats(app, out);
        self.update_gate(app, out);
    }

    /// The first lease of an elected node: go live.
    fn promote(&mut self, app: &mut App, out: &mut Vec<Action>) {
        let Some(l) = app.leader.as_mut() else { return };
        l.promoted = true;
        let base = l.logged;
        let me = self.config.name.clone();
        if let Some(m) = app.migration.clone() {
            if m.phase == MigrationPhase::CatchingUp && m.to == me {
                info!(app = %app.name, from = %m.from, "migration: moved here; the source keeps replaying until --commit");
                app.migration = Some(Migration {
                    phase: MigrationPhase::Moved,
                    ..m
                });
            } else if m.phase == MigrationPhase::RollingBack && m.from == me {
                info!(app = %app.name, to = %m.to, "migration rolled back");
                if m.added {
                    self.remove_member(app, &m.to, out);
                }
                app.migration = None;
            }
            self.persist(app, out);
        }
        info!(app = %app.name, epoch = app.epoch, base, "promoted to primary");
        app.role = Role::Primary;
        out.push(Action::Promote {
            app: app.name.clone(),
            epoch: app.epoch,
            base,
        });
        out.push(Action::MoveVip {
            app: app.name.clone(),
        });
        for to in self.others(app) {
            send(
                out,
                &to,
                Message::NewPrimary {
                    app: app.name.clone(),
                    epoch: app.epoch,
                    primary: self.config.name.clone(),
                },
            );
        }
    }

    fn on_transfer_request(
        &mut self,
        app: &mut App,
        from: &str,
        epoch: Epoch,
        up_to: Gseq,
        out: &mut Vec<Action>,
    ) {
        let me = self.config.name.clone();
        if app.epoch == epoch + 1 && app.voted_for.as_deref() == Some(me.as_str()) {
            // A copy of a request we already act on.
            send(
                out,
                from,
                Message::TransferReady {
                    app: app.name.clone(),
                    epoch: app.epoch,
                },
            );
            return;
        }
        let why = if app.witness {
            Some("a witness runs no program")
        } else if epoch != app.epoch || app.primary.as_deref() != Some(from) {
            Some("the sender is not this node's primary in that epoch")
        } else if !app.in_sync() {
            Some("this backup is not in sync")
        } else if app.durable < up_to {
            Some("this backup does not have every logged record")
        } else {
            None
        };
        if let Some(why) = why {
            refuse(
                out,
                &app.name,
                from,
                "transfer-request",
                Refusal::CannotTakeOver { why },
            );
            return;
        }
        info!(app = %app.name, from, epoch = epoch + 1, "taking over in a planned switchover");
        // The old primary gave its lease up and votes for us.
        self.adopt_epoch(app, epoch + 1, Some(me.clone()), out);
        app.role = Role::Candidate;
        app.primary = None;
        app.promised_until = self.now;
        app.election = Some(Election {
            epoch: app.epoch,
            pre: false,
            grants: BTreeSet::from([me, from.to_owned()]),
        });
        app.election_at = Some(self.now + self.election_timeout());
        send(
            out,
            from,
            Message::TransferReady {
                app: app.name.clone(),
                epoch: app.epoch,
            },
        );
        if app
            .election
            .as_ref()
            .is_some_and(|e| e.grants.len() >= app.majority())
        {
            self.win_election(app, out);
        } else {
            self.request_votes(app, Some(from), out);
        }
    }

    fn needs_join(&self, app: &App) -> bool {
        !app.witness
            && app.leader.is_none()
            && app.synced_epoch != Some(app.epoch)
            && app.resync.is_none()
            && app
                .join_sent_at
                .is_none_or(|t| self.now >= t + self.config.timings.join_retry)
    }

    fn send_join(&mut self, app: &mut App, out: &mut Vec<Action>) {
        let Some(primary) = app.primary.clone() else {
            return;
        };
        app.join_sent_at = Some(self.now);
        send(
            out,
            &primary,
            Message::Join {
                app: app.name.clone(),
                epoch: app.epoch,
                durable: app.durable,
                history: app.history.clone(),
            },
        );
    }

    fn on_join(
        &mut self,
        app: &mut App,
        from: &str,
        durable: Gseq,
        their: &[EpochStart],
        out: &mut Vec<Action>,
    ) {
        let Some(l) = app.leader.as_mut() else {
            refuse(
                out,
                &app.name,
                from,
                "join",
                Refusal::NotPrimary {
                    primary: app.primary.clone(),
                },
            );
            send(
                out,
                from,
                Message::Stale {
                    app: app.name.clone(),
                    epoch: app.epoch,
                    primary: app.primary.clone(),
                },
            );
            return;
        };
        if !app.members.iter().any(|m| m.node == from && !m.witness) {
            refuse(out, &app.name, from, "join", Refusal::Witness);
            return;
        }
        let common = history::common_prefix(&app.history, l.logged, their, durable);
        info!(app = %app.name, from, durable, from_gseq = common + 1, "backup joins");
        if let Some(v) = l.backups.get_mut(from) {
            v.healthy = false;
            v.acked = 0;
        }
        send(
            out,
            from,
            Message::JoinReply {
                app: app.name.clone(),
                epoch: app.epoch,
                primary: self.config.name.clone(),
                from_gseq: common + 1,
                history: app.history.clone(),
                members: app.members.clone(),
                mode: app.mode,
            },
        );
        self.update_gate(app, out);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_join_reply(
        &mut self,
        app: &mut App,
        from: &str,
        epoch: Epoch,
        primary: &str,
        from_gseq: Gseq,
        history: Vec<EpochStart>,
        members: Vec<Member>,
        mode: Mode,
        out: &mut Vec<Action>,
    ) {
        if primary != from {
            refuse(
                out,
                &app.name,
                from,
                "join-reply",
                Refusal::NotMember {
                    node: primary.to_owned(),
                },
            );
            return;
        }
        if let Err(reason) = self.check_claim(app, from, epoch) {
            refuse(out, &app.name, from, "join-reply", reason);
            return;
        }
        self.follow(app, epoch, from, out);
        if app.witness || app.synced_epoch == Some(epoch) || app.resync.is_some() {
            self.persist(app, out);
            return;
        }
        app.members = members;
        app.mode = mode;
        app.durable = app.durable.min(from_gseq.saturating_sub(1));
        // The primary's history describes the kept prefix, the records to be
        // fetched and those to be streamed after them.
        app.history = history;
        app.resync = Some(epoch);
        app.join_sent_at = None;
        self.persist(app, out);
        info!(app = %app.name, from, from_gseq, "resynchronising");
        out.push(Action::Resync {
            app: app.name.clone(),
            from_gseq,
            from_node: from.to_owned(),
        });
    }

    // ----- local inputs -----------------------------------------------------

    fn start_app(&mut self, name: &str, mode: Mode, members: Vec<Member>, out: &mut Vec<Action>) {
        if self.config.witness {
            fail(out, name, CommandError::Witness);
            return;
        }
        if let Some(app) = self.apps.get(name) {
            let error = CommandError::AlreadyExists {
                app: name.to_owned(),
                epoch: app.epoch,
                primary: app.primary.clone(),
            };
            fail(out, name, error);
            return;
        }
        let me = self.config.name.clone();
        let mut names = BTreeSet::new();
        let why = if !members.iter().any(|m| m.node == me && !m.witness) {
            Some(format!("{me} (this node) must be a non-witness member"))
        } else if let Some(m) = members
            .iter()
            .find(|m| m.node != me && !self.config.peers.contains(&m.node))
        {
            Some(format!("{} is not a configured peer", m.node))
        } else if !members.iter().all(|m| names.insert(m.node.clone())) {
            Some("a node is listed twice".to_owned())
        } else {
            None
        };
        if let Some(why) = why {
            fail(out, name, CommandError::BadMembers { why });
            return;
        }
        info!(app = name, ?mode, "starting as primary in epoch 1");
        let mut app = App::new(name, members, mode, false);
        app.role = Role::Primary;
        app.epoch = 1;
        app.voted_for = Some(me.clone());
        app.primary = Some(me);
        history::push(&mut app.history, 1, 1);
        app.synced_epoch = Some(1);
        app.leader = Some(Leader::new(0));
        self.persist(&mut app, out);
        self.send_heartbeats(&mut app, out);
        self.update_gate(&mut app, out);
        self.apps.insert(name.to_owned(), app);
    }

    fn on_logged(&mut self, name: &str, gseq: Gseq, out: &mut Vec<Action>) {
        self.with_known_app(name, out, |node, app, out| {
            let Some(l) = app.leader.as_mut() else {
                let error = CommandError::NotPrimary {
                    app: app.name.clone(),
                    primary: app.primary.clone(),
                };
                fail(out, &app.name, error);
                return;
            };
            l.logged = l.logged.max(gseq);
            app.durable = l.logged;
            node.update_gate(app, out);
        });
    }

    fn on_paused(&mut self, name: &str, gseq: Gseq, out: &mut Vec<Action>) {
        self.with_app(name, |node, app| {
            let Some(l) = app.leader.as_mut() else { return };
            l.logged = l.logged.max(gseq);
            app.durable = l.logged;
            if let Some(t) = l.transfer.as_mut() {
                t.paused = true;
            }
            node.try_handover(app, out);
        });
    }

    fn on_durable(&mut self, name: &str, gseq: Gseq, out: &mut Vec<Action>) {
        self.with_app(name, |_, app| {
            if app.leader.is_some() || app.witness || app.corrupt || app.resync.is_some() {
                return;
            }
            app.durable = app.durable.max(gseq);
            if app.in_sync() {
                if let Some(p) = app.primary.clone() {
                    send(
                        out,
                        &p,
                        Message::Ack {
                            app: app.name.clone(),
                            epoch: app.epoch,
                            durable: app.durable,
                            healthy: true,
                        },
                    );
                }
            }
        });
    }

    fn on_corrupt(&mut self, name: &str, intact_up_to: Gseq, out: &mut Vec<Action>) {
        self.with_known_app(name, out, |node, app, out| {
            if app.leader.as_ref().is_some_and(|l| l.promoted) || app.witness {
                fail(out, &app.name, CommandError::NotBackup { app: app.name.clone() });
                return;
            }
            // Votes won with the old log are void: give up any candidacy,
            // even one already won but not yet promoted.
            if app.leader.take().is_some() || app.election.take().is_some() {
                info!(app = %app.name, epoch = app.epoch, "candidacy abandoned: log corrupt");
            }
            app.role = Role::Backup;
            warn!(app = %app.name, durable = app.durable, intact_up_to, "log corrupt: unhealthy until resynchronised");
            if app.synced_epoch.is_some() {
                // What this log held may have been acknowledged and released:
                // never vote for a candidate below it.
                app.release_floor = app.release_floor.max(app.position());
            }
            app.durable = app.durable.min(intact_up_to);
            history::truncate(&mut app.history, app.durable);
            app.corrupt = true;
            app.synced_epoch = None;
            app.resync = None;
            app.join_sent_at = None;
            node.persist(app, out);
            if let Some(p) = app.primary.clone() {
                send(
                    out,
                    &p,
                    Message::Ack {
                        app: app.name.clone(),
                        epoch: app.epoch,
                        durable: app.durable,
                        healthy: false,
                    },
                );
                node.send_join(app, out);
            }
        });
    }

    fn on_resynced(&mut self, name: &str, gseq: Option<Gseq>, out: &mut Vec<Action>) {
        self.with_app(name, |node, app| {
            let Some(epoch) = app.resync.take() else {
                debug!(app = %app.name, "resync report with no resync under way");
                return;
            };
            app.join_sent_at = None;
            let Some(gseq) = gseq else {
                warn!(app = %app.name, "resync failed; will ask again");
                return;
            };
            app.durable = gseq;
            app.corrupt = false;
            node.persist(app, out);
            if epoch == app.epoch && app.leader.is_none() {
                app.synced_epoch = Some(epoch);
                info!(app = %app.name, gseq, epoch, "resynchronised: healthy backup");
                if let Some(p) = app.primary.clone() {
                    send(
                        out,
                        &p,
                        Message::Ack {
                            app: app.name.clone(),
                            epoch,
                            durable: gseq,
                            healthy: true,
                        },
                    );
                }
            }
        });
    }

    fn on_failover(&mut self, name: &str, to: Option<NodeId>, out: &mut Vec<Action>) {
        self.with_known_app(name, out, |node, app, out| {
            let now = node.now;
            let lease = node.config.timings.lease;
            let Some(l) = app.leader.as_ref() else {
                let error = CommandError::NotPrimary {
                    app: app.name.clone(),
                    primary: app.primary.clone(),
                };
                fail(out, &app.name, error);
                return;
            };
            if l.transfer.is_some() {
                fail(
                    out,
                    &app.name,
                    CommandError::FailoverInProgress {
                        app: app.name.clone(),
                    },
                );
                return;
            }
            let usable = |n: &str, v: &BackupView| {
                v.healthy && v.heard + lease >= now && !node.disconnected.contains(n)
            };
            let target = match to {
                Some(t) => {
                    let why = if !app.is_replica(&t) {
                        Some("not a replica member")
                    } else if !l.backups.get(&t).is_some_and(|v| usable(&t, v)) {
                        Some("not a healthy backup in contact")
                    } else {
                        None
                    };
                    if let Some(why) = why {
                        let error = CommandError::BadTarget {
                            app: app.name.clone(),
                            target: t,
                            why,
                        };
                        fail(out, &app.name, error);
                        return;
                    }
                    t
                }
                None => {
                    let best = l
                        .backups
                        .iter()
                        .filter(|(n, v)| app.is_replica(n) && usable(n, v))
                        .max_by(|a, b| a.1.acked.cmp(&b.1.acked).then_with(|| b.0.cmp(a.0)))
                        .map(|(n, _)| n.clone());
                    let Some(best) = best else {
                        fail(
                            out,
                            &app.name,
                            CommandError::NoHealthyBackup {
                                app: app.name.clone(),
                            },
                        );
                        return;
                    };
                    best
                }
            };
            node.begin_transfer(app, target, out);
        });
    }

    /// Close the gate, pause the program and hand the role to `target` once
    /// it has every logged record ([`Node::try_handover`]).
    fn begin_transfer(&mut self, app: &mut App, target: NodeId, out: &mut Vec<Action>) {
        let now = self.now;
        let deadline = now + self.config.timings.transfer_timeout;
        info!(app = %app.name, target = %target, "planned switchover: gate closed, pausing the program");
        if let Some(l) = app.leader.as_mut() {
            l.transfer = Some(Transfer {
                target,
                started: now,
                deadline,
                paused: false,
            });
        }
        self.update_gate(app, out);
        out.push(Action::PauseApp {
            app: app.name.clone(),
        });
    }

    /// Hand the role over once the program is paused and the target has
    /// every logged record.
    fn try_handover(&mut self, app: &mut App, out: &mut Vec<Action>) {
        let Some(l) = &app.leader else { return };
        let Some(t) = &l.transfer else { return };
        let ready = t.paused
            && l.backups
                .get(&t.target)
                .is_some_and(|v| v.healthy && v.acked >= l.logged);
        if !ready {
            return;
        }
        let (target, up_to, old) = (t.target.clone(), l.logged, app.epoch);
        app.switch = Some(Switch {
            to: target.clone(),
            epoch: old + 1,
            paused_at: t.started,
            downtime: None,
        });
        info!(app = %app.name, target = %target, up_to, "handing over");
        // The gate has been closed since the switchover began; giving the
        // leader state up means it never opens again in this epoch.
        app.leader = None;
        app.durable = up_to;
        app.role = Role::Backup;
        app.primary = None;
        app.epoch = old + 1;
        app.voted_for = Some(target.clone());
        self.persist(app, out);
        let now = self.now;
        let t = self.config.timings.clone();
        app.handover = Some(Handover {
            target: target.clone(),
            from_epoch: old,
            up_to,
            next_send: now + t.heartbeat_interval,
            until: now + 2 * t.lease,
        });
        app.election_at = Some(now + t.lease_promised() + self.election_timeout());
        out.push(Action::Demote {
            app: app.name.clone(),
            epoch: old + 1,
            primary: Some(target.clone()),
        });
        send(
            out,
            &target,
            Message::TransferRequest {
                app: app.name.clone(),
                epoch: old,
                up_to,
            },
        );
    }

    /// A migration whose next step is a switchover by this primary starts it
    /// once the destination is healthy, in contact and close behind: its log
    /// within [`MIGRATE_SLACK`] records of the primary's, and its replica
    /// within as many of what the primary had logged when it asked.
    fn drive_migration(&mut self, app: &mut App, out: &mut Vec<Action>) {
        let me = self.config.name.as_str();
        let Some(m) = &app.migration else { return };
        let dest = match m.phase {
            MigrationPhase::CatchingUp if m.from == me => m.to.clone(),
            MigrationPhase::RollingBack if m.to == me => m.from.clone(),
            _ => return,
        };
        let Some(l) = &app.leader else { return };
        let now = self.now;
        if !l.promoted || l.transfer.is_some() || now < l.migrate_retry_at {
            return;
        }
        let lease = self.config.timings.lease;
        let close = |g: Gseq| g + MIGRATE_SLACK >= l.logged;
        // The destination must know the record before it takes over, so
        // that it goes on with the migration where this node leaves it.
        let knows = l
            .grants
            .get(&dest)
            .is_some_and(|g| g.echo >= l.migration_since);
        let ready = knows
            && !self.disconnected.contains(&dest)
            && l.backups.get(&dest).is_some_and(|v| {
                v.healthy
                    && v.heard + lease >= now
                    && close(v.acked)
                    && v.replica_lag.is_some_and(|lag| lag <= MIGRATE_SLACK)
            });
        if ready {
            info!(app = %app.name, target = %dest, "migration: target caught up; switching over");
            self.begin_transfer(app, dest, out);
        }
    }

    /// Take `node` out of the application's members and tell it so (it
    /// forgets the application).
    fn remove_member(&mut self, app: &mut App, node: &str, out: &mut Vec<Action>) {
        info!(app = %app.name, node, "member removed");
        app.members.retain(|m| m.node != node);
        if let Some(l) = app.leader.as_mut() {
            l.backups.remove(node);
            l.grants.remove(node);
        }
        self.persist(app, out);
        send(
            out,
            node,
            Message::Stop {
                app: app.name.clone(),
                epoch: app.epoch,
            },
        );
    }

    fn on_migrate(&mut self, name: &str, to: NodeId, step: MigrateStep, out: &mut Vec<Action>) {
        self.with_known_app(name, out, |node, app, out| {
            let me = node.config.name.clone();
            let Some(l) = app.leader.as_ref().filter(|l| l.promoted) else {
                let error = CommandError::NotPrimary {
                    app: app.name.clone(),
                    primary: app.primary.clone(),
                };
                fail(out, &app.name, error);
                return;
            };
            let switching = l.transfer.is_some();
            let refuse = |out: &mut Vec<Action>, why: String| {
                fail(out, &app.name, CommandError::Migration { app: app.name.clone(), why });
            };
            let current = app.migration.clone();
            match step {
                MigrateStep::Start => {
                    let why = if let Some(m) = &current {
                        Some(format!(
                            "a migration to {} is under way ({}); end it with --commit or --rollback first",
                            m.to,
                            phase_name(m.phase)
                        ))
                    } else if to == me {
                        Some(format!("{to} is already its primary"))
                    } else if switching {
                        Some("a switchover is under way".to_owned())
                    } else if app.member(&to).is_some_and(|m| m.witness) {
                        Some(format!("{to} is a witness: it runs no program"))
                    } else if app.member(&to).is_none() && !node.config.peers.contains(&to) {
                        Some(format!("{to} is not a peer of this node"))
                    } else {
                        None
                    };
                    if let Some(why) = why {
                        refuse(out, why);
                        return;
                    }
                    let added = app.member(&to).is_none();
                    if added {
                        info!(app = %app.name, node = %to, "member added for a migration");
                        app.members.push(Member::replica(&to));
                    }
                    info!(app = %app.name, to = %to, added, "migration: target catching up");
                    app.migration = Some(Migration {
                        from: me,
                        to,
                        added,
                        phase: MigrationPhase::CatchingUp,
                    });
                }
                MigrateStep::Rollback | MigrateStep::Commit => {
                    let Some(m) = current else {
                        refuse(out, "no migration is under way".to_owned());
                        return;
                    };
                    if m.to != to {
                        refuse(out, format!("the migration under way is to {}, not to {to}", m.to));
                        return;
                    }
                    if switching {
                        refuse(out, "a switchover is under way; try again in a moment".to_owned());
                        return;
                    }
                    if step == MigrateStep::Commit {
                        if m.to != me || m.phase != MigrationPhase::Moved {
                            refuse(
                                out,
                                format!(
                                    "it has not moved to {to} ({}, primary {me}): wait, or --rollback",
                                    phase_name(m.phase)
                                ),
                            );
                            return;
                        }
                        if m.added {
                            node.remove_member(app, &m.from, out);
                        }
                        info!(app = %app.name, from = %m.from, "migration committed");
                        app.migration = None;
                    } else if m.to == me {
                        info!(app = %app.name, to = %m.from, "migration: rolling back");
                        app.migration = Some(Migration {
                            phase: MigrationPhase::RollingBack,
                            ..m
                        });
                    } else {
                        // Not moved yet (or a failover put a third node in
                        // charge): cancel.
                        if m.added {
                            node.remove_member(app, &m.to, out);
                        }
                        info!(app = %app.name, to = %m.to, "migration cancelled");
                        app.migration = None;
                    }
                }
            }
            node.persist(app, out);
            node.send_heartbeats(app, out);
            let now = node.now;
            if let Some(l) = app.leader.as_mut() {
                l.migration_since = now;
            }
        });
    }

    fn on_stop_app(&mut self, name: &str, out: &mut Vec<Action>) {
        self.with_known_app(name, out, |node, app, out| {
            let Some(l) = app.leader.as_ref() else {
                let error = CommandError::NotPrimary {
                    app: app.name.clone(),
                    primary: app.primary.clone(),
                };
                fail(out, &app.name, error);
                return;
            };
            if l.gate.is_some() {
                out.push(Action::CloseGate {
                    app: app.name.clone(),
                });
            }
            for to in node.others(app) {
                send(
                    out,
                    &to,
                    Message::Stop {
                        app: app.name.clone(),
                        epoch: app.epoch,
                    },
                );
            }
            out.push(Action::Forget {
                app: app.name.clone(),
            });
            app.gone = true;
        });
    }
}
