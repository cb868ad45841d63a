//! A deterministic simulator for the replication protocol: many nodes in one
//! process, one virtual global time, per-node clocks that drift, a network
//! that delays, loses, duplicates, reorders and partitions, and crashes,
//! restarts and freezes. Everything random comes from one seed, so a failure
//! prints the seed and replays exactly.
//!
//! Around each node it models what the daemon does: a program that logs
//! records steadily while the node is primary, a data plane that streams the
//! primary's log to in-sync backups (fsync after a delay), resynchronisation,
//! and the output gate. The invariants are checked as the actions come out.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ferry_replication::{
    Action, AppStatus, Config, Input, Member, Message, Mode, Node, PersistedApp, RestoredApp, Role,
    Timings, MS,
};

pub const APP: &str = "app";

/// SplitMix64: small, fast, the same everywhere.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `[lo, hi]`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next() % (hi - lo + 1)
        }
    }
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A node's clock: `local = offset + t * (1 + ppm / 10^6)` for global time `t`.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub offset: u64,
    pub ppm: i64,
}

impl Clock {
    pub fn local(&self, t: u64) -> u64 {
        let skew = (i128::from(t) * i128::from(self.ppm)).div_euclid(1_000_000);
        (i128::from(self.offset) + i128::from(t) + skew) as u64
    }
    /// The first global time at which this clock reads at least `local`.
    pub fn global_at(&self, local: u64) -> u64 {
        if local <= self.offset {
            return 0;
        }
        let d = i128::from(local - self.offset);
        let mut g = (d * 1_000_000 / (1_000_000 + i128::from(self.ppm))).max(0) as u64;
        while self.local(g) < local {
            g += 1;
        }
        while g > 0 && self.local(g - 1) >= local {
            g -= 1;
        }
        g
    }
}

/// A log as the simulator sees it: which epoch wrote each record.
#[derive(Clone, Debug, Default)]
pub struct SimLog {
    /// `(epoch, first gseq)`, as in the protocol's history.
    pub segs: Vec<(u64, u64)>,
    pub len: u64,
    /// Bumped on every truncation or replacement: fsync reports queued before
    /// are stale.
    pub gen: u64,
}

impl SimLog {
    pub fn epoch_of(&self, g: u64) -> u64 {
        if g == 0 {
            return 0;
        }
        self.segs.iter().rev().find(|s| s.1 <= g).map_or(0, |s| s.0)
    }
    pub fn append(&mut self, epoch: u64, n: u64) {
        if self.segs.last().is_none_or(|s| s.0 != epoch) {
            self.segs.push((epoch, self.len + 1));
        }
        self.len += n;
    }
    pub fn truncate(&mut self, len: u64) {
        if len < self.len {
            self.len = len;
            self.segs.retain(|s| s.1 <= len);
        }
        self.gen += 1;
    }
    /// Whether records `1..=upto` of `self` are the same as in `other`.
    pub fn agrees(&self, other: &SimLog, upto: u64) -> bool {
        if upto > self.len || upto > other.len {
            return false;
        }
        let mut points = vec![1];
        points.extend(self.segs.iter().map(|s| s.1));
        points.extend(other.segs.iter().map(|s| s.1));
        points
            .into_iter()
            .filter(|&p| p >= 1 && p <= upto)
            .all(|p| self.epoch_of(p) == other.epoch_of(p))
    }
    pub fn prefix_of(&self, other: &SimLog, len: u64) -> SimLog {
        let mut l = SimLog {
            segs: other.segs.iter().copied().filter(|s| s.1 <= len).collect(),
            len,
            gen: self.gen + 1,
        };
        l.segs.dedup_by_key(|s| s.0);
        l
    }
}

#[derive(Clone, Debug)]
pub struct Net {
    pub delay_min: u64,
    pub delay_max: u64,
    pub loss: f64,
    pub dup: f64,
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// `(name, witness)`; node 0 starts the application.
    pub nodes: Vec<(String, bool)>,
    pub mode: Mode,
    pub net: Net,
    /// Clock rates are drawn in `±max_ppm` (keep it below the drift bound).
    pub max_ppm: i64,
    pub timings: Timings,
    /// Longest global time between two ticks of a node (below the heartbeat
    /// interval on the fastest clock).
    pub tick_max: u64,
    pub program_every: u64,
    pub stream_every: u64,
    pub fsync: (u64, u64),
    pub resync: (u64, u64),
    /// How long the transport takes to notice a dead peer.
    pub notice: (u64, u64),
    /// Nodes of the cluster that are not members of the application when it
    /// starts (a migration may add them).
    pub spare: Vec<String>,
    /// Records a backup's replica is behind its log (reported with
    /// `Input::Replayed` at every tick).
    pub replica_lag: u64,
}

impl SimConfig {
    /// Primary `a`, backup `b`, witness `w`, sync mode, a clean network.
    pub fn default3(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            nodes: vec![("a".into(), false), ("b".into(), false), ("w".into(), true)],
            mode: Mode::Sync,
            net: Net {
                delay_min: 200_000,
                delay_max: 3 * MS,
                loss: 0.0,
                dup: 0.0,
            },
            max_ppm: 9_900,
            timings: Timings::default(),
            tick_max: 49 * MS,
            program_every: 2 * MS,
            stream_every: 2 * MS,
            fsync: (MS / 2, 3 * MS),
            resync: (20 * MS, 80 * MS),
            notice: (50 * MS, 300 * MS),
            spare: Vec::new(),
            replica_lag: 0,
        }
    }

    pub fn with_nodes(mut self, nodes: &[(&str, bool)]) -> SimConfig {
        self.nodes = nodes.iter().map(|(n, w)| ((*n).to_owned(), *w)).collect();
        self
    }
}

#[derive(Clone, Debug)]
pub struct Gate {
    pub up_to: u64,
    pub until_local: u64,
    pub until_global: u64,
}

pub struct SimNode {
    pub name: String,
    pub witness: bool,
    pub node: Option<Node>,
    pub clock: Clock,
    pub store: BTreeMap<String, PersistedApp>,
    pub log: SimLog,
    pub frozen_until: Option<u64>,
    deferred: Vec<Input>,
    tick_at: u64,
    tick_gen: u64,
    pub paused: bool,
    /// The program runs here (started, or promoted, and not demoted since).
    pub live: bool,
    pub gate: Option<Gate>,
    pub max_epoch: u64,
    pub status: Option<AppStatus>,
    just_resumed: bool,
    pub boots: u64,
    /// `(epoch of the primary, target)` of the resync under way.
    resync_epoch: u64,
}

#[derive(Debug)]
enum Ev {
    Tick(usize, u64),
    Deliver {
        from: usize,
        to: usize,
        msg: Message,
    },
    Local {
        node: usize,
        input: Input,
        gen: Option<u64>,
    },
    Program,
    Stream,
    ResyncDone {
        node: usize,
        from: usize,
        gen: u64,
    },
    Unfreeze(usize),
}

/// Counters over a run.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub messages: u64,
    pub dropped: u64,
    pub refused: u64,
    pub promotions: u64,
    pub releases: u64,
}

pub struct Sim {
    pub cfg: SimConfig,
    pub now: u64,
    pub rng: Rng,
    queue: BTreeMap<(u64, u64), Ev>,
    seq: u64,
    pub nodes: Vec<SimNode>,
    /// Blocked directed links.
    blocked: BTreeSet<(usize, usize)>,
    /// Highest gseq any gate released in sync mode, and the epoch that wrote
    /// that record.
    pub released: Option<(u64, u64)>,
    /// `(global time, node, epoch)` of every promotion.
    pub promotions: Vec<(u64, usize, u64)>,
    /// `(global time, node)` of every gate that opened from closed.
    pub opens: Vec<(u64, usize)>,
    pub stats: Stats,
    trace: VecDeque<String>,
    verbose: bool,
    pub failed_commands: Vec<String>,
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Sim {
        let mut rng = Rng::new(cfg.seed);
        let names: Vec<String> = cfg.nodes.iter().map(|n| n.0.clone()).collect();
        let nodes = cfg
            .nodes
            .iter()
            .map(|(name, witness)| {
                let clock = Clock {
                    offset: rng.range(0, 1_000_000 * MS),
                    ppm: rng.range(0, 2 * cfg.max_ppm as u64) as i64 - cfg.max_ppm,
                };
                SimNode {
                    name: name.clone(),
                    witness: *witness,
                    node: None,
                    clock,
                    store: BTreeMap::new(),
                    log: SimLog::default(),
                    frozen_until: None,
                    deferred: Vec::new(),
                    tick_at: 0,
                    tick_gen: 0,
                    paused: false,
                    live: false,
                    gate: None,
                    max_epoch: 0,
                    status: None,
                    just_resumed: false,
                    boots: 0,
                    resync_epoch: 0,
                }
            })
            .collect();
        let mut sim = Sim {
            cfg,
            now: 0,
            rng,
            queue: BTreeMap::new(),
            seq: 0,
            nodes,
            blocked: BTreeSet::new(),
            released: None,
            promotions: Vec::new(),
            opens: Vec::new(),
            stats: Stats::default(),
            trace: VecDeque::new(),
            verbose: std::env::var_os("FERRY_SIM_TRACE").is_some(),
            failed_commands: Vec::new(),
        };
        for i in 0..sim.nodes.len() {
            let config = sim.node_config(i, &names);
            sim.nodes[i].node = Some(Node::new(config));
            sim.nodes[i].boots = 1;
        }
        let members: Vec<Member> = sim
            .cfg
            .nodes
            .iter()
            .filter(|(n, _)| !sim.cfg.spare.contains(n))
            .map(|(n, w)| Member {
                node: n.clone(),
                witness: *w,
            })
            .collect();
        let mode = sim.cfg.mode;
        sim.nodes[0].live = true;
        sim.input(
            0,
            Input::StartApp {
                app: APP.into(),
                mode,
                members,
            },
        );
        for i in 0..sim.nodes.len() {
            sim.schedule_tick(i);
        }
        let (p, s) = (sim.cfg.program_every, sim.cfg.stream_every);
        sim.push(p, Ev::Program);
        sim.push(s, Ev::Stream);
        sim
    }

    fn node_config(&self, i: usize, names: &[String]) -> Config {
        let (name, witness) = &self.cfg.nodes[i];
        Config {
            name: name.clone(),
            peers: names.iter().filter(|n| *n != name).cloned().collect(),
            witness: *witness,
            timings: self.cfg.timings.clone(),
            seed: self
                .cfg
                .seed
                .wrapping_mul(31)
                .wrapping_add(i as u64 * 1_000 + self.nodes[i].boots),
        }
    }

    pub fn idx(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .expect("known node")
    }

    fn push(&mut self, delay: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((self.now + delay, self.seq), ev);
    }

    fn note(&mut self, line: String) {
        if self.verbose {
            eprintln!("{line}");
        }
        if self.trace.len() >= 400 {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    pub fn violation(&self, what: &str) -> ! {
        let mut s = String::new();
        for l in &self.trace {
            s.push_str(l);
            s.push('\n');
        }
        panic!(
            "{s}\nINVARIANT VIOLATED (seed {}, t = {:.3} ms): {what}\nreplay: the test prints the seed; FERRY_SIM_TRACE=1 shows every event",
            self.cfg.seed,
            self.now as f64 / MS as f64
        );
    }

    // ----- running -------------------------------------------------------

    pub fn run_until(&mut self, t: u64) {
        while let Some((&(time, seq), _)) = self.queue.first_key_value() {
            if time > t {
                break;
            }
            let ev = self.queue.remove(&(time, seq)).expect("present");
            self.now = time;
            self.process(ev);
        }
        self.now = t;
    }

    pub fn run_for(&mut self, d: u64) {
        self.run_until(self.now + d);
    }

    /// Run until `f` holds (checked after every event) or `limit` passes.
    pub fn run_until_cond(&mut self, limit: u64, mut f: impl FnMut(&Sim) -> bool) -> Option<u64> {
        let end = self.now + limit;
        if f(self) {
            return Some(self.now);
        }
        while let Some((&(time, seq), _)) = self.queue.first_key_value() {
            if time > end {
                break;
            }
            let ev = self.queue.remove(&(time, seq)).expect("present");
            self.now = time;
            self.process(ev);
            if f(self) {
                return Some(self.now);
            }
        }
        self.now = end;
        None
    }

    fn process(&mut self, ev: Ev) {
        match ev {
            Ev::Tick(i, gen) => {
                if self.nodes[i].tick_gen == gen {
                    self.nodes[i].tick_at = 0;
                    self.tick(i);
                }
            }
            Ev::Deliver { from, to, msg } => {
                if self.blocked.contains(&(from, to)) {
                    self.stats.dropped += 1;
                    return;
                }
                let name = self.nodes[from].name.clone();
                self.input(
                    to,
                    Input::Message {
                        from: name,
                        message: msg,
                    },
                );
            }
            Ev::Local { node, input, gen } => {
                if gen.is_some_and(|g| g != self.nodes[node].log.gen) {
                    return;
                }
                self.input(node, input);
            }
            Ev::Program => {
                self.program();
                let p = self.cfg.program_every;
                self.push(p, Ev::Program);
            }
            Ev::Stream => {
                self.stream();
                let s = self.cfg.stream_every;
                self.push(s, Ev::Stream);
            }
            Ev::ResyncDone { node, from, gen } => self.resync_done(node, from, gen),
            Ev::Unfreeze(i) => self.unfreeze(i),
        }
    }

    fn up(&self, i: usize) -> bool {
        self.nodes[i].node.is_some() && self.nodes[i].frozen_until.is_none()
    }

    fn link(&self, a: usize, b: usize) -> bool {
        !self.blocked.contains(&(a, b)) && !self.blocked.contains(&(b, a))
    }

    /// Feed one input to node `i` (deferred while it is frozen).
    pub fn input(&mut self, i: usize, input: Input) {
        if self.nodes[i].node.is_none() {
            return;
        }
        if self.nodes[i].frozen_until.is_some() {
            self.nodes[i].deferred.push(input);
            return;
        }
        let local = self.nodes[i].clock.local(self.now);
        self.check_closed_in_time(i, local);
        if self.verbose {
            let line = format!(
                "{:>10.3} {} <- {:?}",
                self.now as f64 / MS as f64,
                self.nodes[i].name,
                input
            );
            self.note(line);
        }
        let actions = self.nodes[i]
            .node
            .as_mut()
            .expect("up")
            .handle(local, input);
        self.apply(i, actions);
        self.schedule_tick(i);
    }

    fn tick(&mut self, i: usize) {
        if !self.up(i) {
            return;
        }
        let local = self.nodes[i].clock.local(self.now);
        self.check_closed_in_time(i, local);
        if !self.nodes[i].witness && !self.nodes[i].live {
            let gseq = self.nodes[i].log.len.saturating_sub(self.cfg.replica_lag);
            let actions = self.nodes[i].node.as_mut().expect("up").handle(
                local,
                Input::Replayed {
                    app: APP.into(),
                    gseq,
                },
            );
            self.apply(i, actions);
        }
        let actions = self.nodes[i].node.as_mut().expect("up").tick(local);
        self.apply(i, actions);
        self.schedule_tick(i);
    }

    fn schedule_tick(&mut self, i: usize) {
        let Some(node) = &self.nodes[i].node else {
            return;
        };
        let clock = self.nodes[i].clock;
        let latest = self.now + self.cfg.tick_max;
        let at = node.next_timeout().map_or(latest, |t| {
            clock.global_at(t).clamp(self.now + 100_000, latest)
        });
        let n = &mut self.nodes[i];
        if n.tick_at == 0 || at < n.tick_at {
            n.tick_gen += 1;
            n.tick_at = at;
            let gen = n.tick_gen;
            self.push(at - self.now, Ev::Tick(i, gen));
        }
    }

    /// A node whose gate is open must close it before its lease ends: the
    /// call before the deadline (at most a heartbeat interval earlier) must
    /// have done it. A node that was frozen is excused for its first call.
    fn check_closed_in_time(&mut self, i: usize, local: u64) {
        if std::mem::take(&mut self.nodes[i].just_resumed) {
            return;
        }
        if let Some(g) = &self.nodes[i].gate {
            if local >= g.until_local {
                let msg = format!(
                    "{} still has its gate open at its lease end",
                    self.nodes[i].name
                );
                self.violation(&msg);
            }
        }
    }

    fn apply(&mut self, i: usize, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Send { to, message } => {
                    let j = self.idx(&to);
                    self.send(i, j, message);
                }
                Action::OpenGate {
                    up_to_gseq, until, ..
                } => self.open_gate(i, up_to_gseq, until),
                Action::CloseGate { .. } => {
                    if self.nodes[i].gate.take().is_some() {
                        let line = format!(
                            "{:>10.3} {} gate closed",
                            self.now as f64 / MS as f64,
                            self.nodes[i].name
                        );
                        self.note(line);
                    }
                }
                Action::Promote { epoch, base, .. } => self.promoted(i, epoch, base),
                Action::Demote { epoch, primary, .. } => {
                    self.nodes[i].paused = false;
                    self.nodes[i].live = false;
                    let line = format!(
                        "{:>10.3} {} demoted (epoch {epoch}, primary {primary:?})",
                        self.now as f64 / MS as f64,
                        self.nodes[i].name
                    );
                    self.note(line);
                }
                Action::MoveVip { .. } => {}
                Action::Persist { app, state } => {
                    self.nodes[i].store.insert(app, state);
                }
                Action::Forget { app } => {
                    self.nodes[i].store.remove(&app);
                }
                Action::Resync {
                    from_gseq,
                    from_node,
                    ..
                } => {
                    let j = self.idx(&from_node);
                    let n = &mut self.nodes[i];
                    n.log.truncate(from_gseq.saturating_sub(1));
                    let gen = n.log.gen;
                    self.nodes[i].resync_epoch =
                        self.nodes[j].status.as_ref().map_or(0, |s| s.epoch);
                    let line = format!(
                        "{:>10.3} {} resync from {from_node} at {from_gseq}",
                        self.now as f64 / MS as f64,
                        self.nodes[i].name
                    );
                    self.note(line);
                    let d = self.rng.range(self.cfg.resync.0, self.cfg.resync.1);
                    self.push(
                        d,
                        Ev::ResyncDone {
                            node: i,
                            from: j,
                            gen,
                        },
                    );
                }
                Action::PauseApp { .. } => {
                    self.nodes[i].paused = true;
                    let gseq = self.nodes[i].log.len;
                    self.push(
                        MS,
                        Ev::Local {
                            node: i,
                            input: Input::Paused {
                                app: APP.into(),
                                gseq,
                            },
                            gen: None,
                        },
                    );
                }
                Action::ResumeApp { .. } => self.nodes[i].paused = false,
                Action::Refused {
                    kind, reason, from, ..
                } => {
                    self.stats.refused += 1;
                    if self.verbose {
                        let line = format!(
                            "           {} refused {kind} from {from}: {reason}",
                            self.nodes[i].name
                        );
                        self.note(line);
                    }
                }
                Action::CommandFailed { error, .. } => {
                    let line = format!("{} command failed: {error}", self.nodes[i].name);
                    self.note(line.clone());
                    self.failed_commands.push(line);
                }
                Action::StatusChanged(s) => self.status_changed(i, s),
            }
        }
    }

    fn status_changed(&mut self, i: usize, s: AppStatus) {
        let n = &self.nodes[i];
        if s.epoch < n.max_epoch {
            let msg = format!(
                "{} went back from epoch {} to {}",
                n.name, n.max_epoch, s.epoch
            );
            self.violation(&msg);
        }
        if n.witness && matches!(s.role, Role::Primary | Role::Candidate) {
            let msg = format!("witness {} became {:?}", n.name, s.role);
            self.violation(&msg);
        }
        let line = format!(
            "{:>10.3} {} status {:?} epoch {} primary {:?} healthy {} protected {} gate {} durable {}",
            self.now as f64 / MS as f64,
            n.name,
            s.role,
            s.epoch,
            s.primary,
            s.healthy,
            s.protected,
            s.gate_open,
            s.durable
        );
        self.note(line);
        let n = &mut self.nodes[i];
        n.max_epoch = n.max_epoch.max(s.epoch);
        n.status = Some(s);
    }

    fn open_gate(&mut self, i: usize, up_to: u64, until: u64) {
        if self.nodes[i].witness {
            self.violation("a witness opened a gate");
        }
        let until_global = self.nodes[i].clock.global_at(until);
        for (j, other) in self.nodes.iter().enumerate() {
            if j != i {
                if let Some(g) = &other.gate {
                    if g.until_global > self.now {
                        let msg = format!(
                            "two gates open: {} opens while {}'s is open until {:.3} ms",
                            self.nodes[i].name,
                            other.name,
                            g.until_global as f64 / MS as f64
                        );
                        self.violation(&msg);
                    }
                }
            }
        }
        let n = &self.nodes[i];
        if up_to > n.log.len {
            let msg = format!("{} released {up_to} but logged only {}", n.name, n.log.len);
            self.violation(&msg);
        }
        let was_open = n.gate.as_ref().is_some_and(|g| g.until_global > self.now);
        if !was_open {
            let line = format!(
                "{:>10.3} {} gate open up to {up_to}",
                self.now as f64 / MS as f64,
                n.name
            );
            self.note(line);
            self.opens.push((self.now, i));
        }
        if self.cfg.mode == Mode::Sync && self.released.is_none_or(|(g, _)| up_to > g) {
            let e = self.nodes[i].log.epoch_of(up_to);
            self.released = Some((up_to, e));
            self.stats.releases += 1;
        }
        self.nodes[i].gate = Some(Gate {
            up_to,
            until_local: until,
            until_global,
        });
    }

    fn promoted(&mut self, i: usize, epoch: u64, base: u64) {
        let n = &self.nodes[i];
        if n.witness {
            self.violation("a witness was promoted");
        }
        if base > n.log.len {
            let msg = format!(
                "{} promoted at {base} but its log ends at {}",
                n.name, n.log.len
            );
            self.violation(&msg);
        }
        if self.cfg.mode == Mode::Sync {
            if let Some((g, e)) = self.released {
                if base < g || n.log.epoch_of(g) != e {
                    let msg = format!(
                        "{} promoted in epoch {epoch} at {base} (record {g} of epoch {}) but record {g} of epoch {e} was released",
                        n.name,
                        n.log.epoch_of(g)
                    );
                    self.violation(&msg);
                }
            }
        }
        let line = format!(
            "{:>10.3} {} PROMOTED epoch {epoch} base {base}",
            self.now as f64 / MS as f64,
            n.name
        );
        self.note(line);
        self.nodes[i].log.truncate(base);
        self.nodes[i].paused = false;
        self.nodes[i].live = true;
        self.promotions.push((self.now, i, epoch));
        self.stats.promotions += 1;
    }

    fn send(&mut self, from: usize, to: usize, msg: Message) {
        self.stats.messages += 1;
        if !self.link(from, to) || self.rng.chance(self.cfg.net.loss) {
            self.stats.dropped += 1;
            return;
        }
        let (lo, hi) = (self.cfg.net.delay_min, self.cfg.net.delay_max);
        if self.rng.chance(self.cfg.net.dup) {
            let d = self.rng.range(lo, hi);
            self.push(
                d,
                Ev::Deliver {
                    from,
                    to,
                    msg: msg.clone(),
                },
            );
        }
        let d = self.rng.range(lo, hi);
        self.push(d, Ev::Deliver { from, to, msg });
    }

    // ----- the daemon around each node ----------------------------------

    fn is_primary(&self, i: usize) -> bool {
        self.nodes[i]
            .status
            .as_ref()
            .is_some_and(|s| s.role == Role::Primary)
    }

    /// Every primary's program logs a few records.
    fn program(&mut self) {
        for i in 0..self.nodes.len() {
            if !self.up(i) || self.nodes[i].paused || !self.nodes[i].live || !self.is_primary(i) {
                continue;
            }
            let epoch = self.nodes[i].status.as_ref().map_or(0, |s| s.epoch);
            let n = self.rng.range(1, 3);
            self.nodes[i].log.append(epoch, n);
            let gseq = self.nodes[i].log.len;
            self.input(
                i,
                Input::RecordsLogged {
                    app: APP.into(),
                    gseq,
                },
            );
        }
    }

    /// Every primary streams its log to its in-sync backups.
    fn stream(&mut self) {
        for p in 0..self.nodes.len() {
            if !self.up(p) || !self.is_primary(p) {
                continue;
            }
            let (pname, pepoch) = {
                let s = self.nodes[p].status.as_ref().expect("primary has a status");
                (self.nodes[p].name.clone(), s.epoch)
            };
            for b in 0..self.nodes.len() {
                if b == p || self.nodes[b].witness || !self.up(b) || !self.link(p, b) {
                    continue;
                }
                let follows = self.nodes[b].status.as_ref().is_some_and(|s| {
                    s.role == Role::Backup
                        && s.primary.as_deref() == Some(pname.as_str())
                        && s.epoch == pepoch
                        && s.healthy
                });
                if !follows {
                    continue;
                }
                let (blen, plen) = (self.nodes[b].log.len, self.nodes[p].log.len);
                if !self.nodes[b].log.agrees(&self.nodes[p].log, blen) {
                    let msg = format!(
                        "{} streams to {} whose log (len {blen}) is not a prefix of its own (len {plen})",
                        pname, self.nodes[b].name
                    );
                    self.violation(&msg);
                }
                if plen > blen {
                    let gen = self.nodes[b].log.gen;
                    let mut copy = self.nodes[b].log.prefix_of(&self.nodes[p].log, plen);
                    copy.gen = gen;
                    self.nodes[b].log = copy;
                    let d = self.rng.range(self.cfg.fsync.0, self.cfg.fsync.1);
                    self.push(
                        d,
                        Ev::Local {
                            node: b,
                            input: Input::Durable {
                                app: APP.into(),
                                gseq: plen,
                            },
                            gen: Some(gen),
                        },
                    );
                }
            }
        }
    }

    fn resync_done(&mut self, i: usize, from: usize, gen: u64) {
        if self.nodes[i].node.is_none() || self.nodes[i].log.gen != gen {
            return;
        }
        if self.nodes[i].frozen_until.is_some() {
            // The fetch finishes when the node runs again.
            let d = self.nodes[i].frozen_until.unwrap_or(self.now) - self.now + 1;
            self.push(d, Ev::ResyncDone { node: i, from, gen });
            return;
        }
        let ok = self.up(from)
            && self.link(i, from)
            && self.is_primary(from)
            && self.nodes[from].status.as_ref().map_or(0, |s| s.epoch)
                == self.nodes[i].resync_epoch;
        if !ok {
            self.input(i, Input::ResyncFailed { app: APP.into() });
            return;
        }
        let keep = self.nodes[i].log.len;
        if !self.nodes[i].log.agrees(&self.nodes[from].log, keep) {
            let msg = format!(
                "{} resyncs from {} keeping {keep} records that are not the primary's",
                self.nodes[i].name, self.nodes[from].name
            );
            self.violation(&msg);
        }
        let plen = self.nodes[from].log.len;
        let new = self.nodes[i].log.prefix_of(&self.nodes[from].log, plen);
        self.nodes[i].log = new;
        self.input(
            i,
            Input::Resynced {
                app: APP.into(),
                gseq: plen,
            },
        );
    }

    // ----- faults ----------------------------------------------------------

    pub fn crash(&mut self, i: usize) {
        let line = format!(
            "{:>10.3} {} CRASH",
            self.now as f64 / MS as f64,
            self.nodes[i].name
        );
        self.note(line);
        let n = &mut self.nodes[i];
        n.node = None;
        n.gate = None;
        n.paused = false;
        n.live = false;
        n.frozen_until = None;
        n.deferred.clear();
        n.status = None;
        n.tick_at = 0;
        n.log.gen += 1;
        let name = n.name.clone();
        for j in 0..self.nodes.len() {
            if j != i {
                let d = self.rng.range(self.cfg.notice.0, self.cfg.notice.1);
                self.push(
                    d,
                    Ev::Local {
                        node: j,
                        input: Input::PeerDisconnected { peer: name.clone() },
                        gen: None,
                    },
                );
            }
        }
    }

    pub fn restart(&mut self, i: usize) {
        if self.nodes[i].node.is_some() {
            return;
        }
        let line = format!(
            "{:>10.3} {} RESTART",
            self.now as f64 / MS as f64,
            self.nodes[i].name
        );
        self.note(line);
        self.nodes[i].boots += 1;
        let names: Vec<String> = self.cfg.nodes.iter().map(|n| n.0.clone()).collect();
        let config = self.node_config(i, &names);
        let n = &self.nodes[i];
        let apps = n
            .store
            .iter()
            .map(|(app, state)| RestoredApp {
                app: app.clone(),
                state: state.clone(),
                durable: if n.witness { 0 } else { n.log.len },
            })
            .collect();
        self.nodes[i].node = Some(Node::restore(config, apps));
        let name = self.nodes[i].name.clone();
        self.tick(i);
        for j in 0..self.nodes.len() {
            if j != i {
                let d = self.rng.range(MS, 20 * MS);
                self.push(
                    d,
                    Ev::Local {
                        node: j,
                        input: Input::PeerConnected { peer: name.clone() },
                        gen: None,
                    },
                );
            }
        }
    }

    pub fn freeze(&mut self, i: usize, d: u64) {
        if !self.up(i) {
            return;
        }
        let line = format!(
            "{:>10.3} {} FREEZE for {} ms",
            self.now as f64 / MS as f64,
            self.nodes[i].name,
            d / MS
        );
        self.note(line);
        self.nodes[i].frozen_until = Some(self.now + d);
        self.push(d, Ev::Unfreeze(i));
    }

    fn unfreeze(&mut self, i: usize) {
        if self.nodes[i].frozen_until.take().is_none() {
            return;
        }
        let line = format!(
            "{:>10.3} {} RESUME",
            self.now as f64 / MS as f64,
            self.nodes[i].name
        );
        self.note(line);
        self.nodes[i].just_resumed = true;
        self.nodes[i].tick_at = 0;
        self.tick(i);
        for input in std::mem::take(&mut self.nodes[i].deferred) {
            self.input(i, input);
        }
    }

    /// Cut every link between `side` and the other nodes.
    pub fn partition(&mut self, side: &[usize]) {
        let line = format!("{:>10.3} PARTITION {:?}", self.now as f64 / MS as f64, side);
        self.note(line);
        for &a in side {
            for b in 0..self.nodes.len() {
                if !side.contains(&b) {
                    self.blocked.insert((a, b));
                    self.blocked.insert((b, a));
                }
            }
        }
    }

    /// Cut one direction only.
    pub fn block(&mut self, from: usize, to: usize) {
        self.blocked.insert((from, to));
    }

    pub fn heal(&mut self) {
        let line = format!("{:>10.3} HEAL", self.now as f64 / MS as f64);
        self.note(line);
        self.blocked.clear();
    }

    pub fn corrupt(&mut self, i: usize) {
        if !self.up(i) || self.nodes[i].witness || self.is_primary(i) {
            return;
        }
        let keep = self.rng.range(0, self.nodes[i].log.len);
        let line = format!(
            "{:>10.3} {} CORRUPT log cut at {keep}",
            self.now as f64 / MS as f64,
            self.nodes[i].name
        );
        self.note(line);
        self.nodes[i].log.truncate(keep);
        self.input(
            i,
            Input::CorruptLog {
                app: APP.into(),
                intact_up_to: keep,
            },
        );
    }

    /// Corrupt a healthy backup's log, but only when another replica's log
    /// holds everything it holds: a fault the cluster can repair. (Losing
    /// every copy of a released record is a loss no protocol can undo; the
    /// protocol's answer then is to promote nobody.)
    pub fn corrupt_repairable(&mut self, i: usize) {
        let healthy_backup = self.nodes[i]
            .status
            .as_ref()
            .is_some_and(|s| s.role == Role::Backup && s.healthy);
        let len = self.nodes[i].log.len;
        let copied = (0..self.nodes.len()).any(|j| {
            j != i && !self.nodes[j].witness && self.nodes[j].log.agrees(&self.nodes[i].log, len)
        });
        if healthy_backup && copied {
            self.corrupt(i);
        }
    }

    pub fn command(&mut self, i: usize, input: Input) {
        let line = format!(
            "{:>10.3} {} COMMAND {:?}",
            self.now as f64 / MS as f64,
            self.nodes[i].name,
            input
        );
        self.note(line);
        self.input(i, input);
    }

    // ----- observations ----------------------------------------------------

    pub fn status(&self, i: usize) -> Option<AppStatus> {
        self.nodes[i].node.as_ref().and_then(|n| n.status(APP))
    }

    /// Nodes whose gate is open now.
    pub fn serving(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i]
                    .gate
                    .as_ref()
                    .is_some_and(|g| g.until_global > self.now)
            })
            .collect()
    }

    /// The node that is primary with its gate open, if any.
    pub fn serving_primary(&self) -> Option<usize> {
        self.serving()
            .into_iter()
            .find(|&i| self.nodes[i].node.is_some())
    }

    pub fn released_gseq(&self) -> u64 {
        self.released.map_or(0, |r| r.0)
    }
}

/// The `q`-quantile of `v` (sorted in place).
pub fn quantile(v: &mut [u64], q: f64) -> u64 {
    v.sort_unstable();
    if v.is_empty() {
        return 0;
    }
    let k = ((v.len() - 1) as f64 * q).round() as usize;
    v[k]
}
