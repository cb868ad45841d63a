//! The core: one task that owns the replication [`Node`], feeds it what the
//! transport, the applications' threads and the control socket report, and
//! carries out the actions it returns, in order.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_host::resolve::{env_value, resolve};
use ferry_host::sys::{self, Reaped};
use ferry_proto::control::{self as ctl, ErrorKind, Outcome, Reply, RunMode, RunRequest};
use ferry_proto::log::StartInfo;
use ferry_replication::{
    phase_name, Action, AppStatus, Config, Input, Member, Message, MigrateStep, Mode, Node,
    RestoredApp, Role,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::app::{self, AppEvent, AppShared, Runner, RunnerCmd, Writer, WriterMsg};
use crate::config::Settings;
use crate::peer::{self, PeerEvent, PeerMessage, RecordStream, StreamHead, Transport};
use crate::{persist, ship, vip};

/// The longest a node keeps the service address after a planned handover
/// while it waits for the new primary to announce itself.
const VIP_RELEASE_WAIT: Duration = Duration::from_secs(1);

/// How long messages about an application that was just stopped are
/// dropped.
const STOPPED_GRACE: Duration = Duration::from_secs(3);

/// A primary that asked a backup for an image asks no other until it
/// arrives, fails, or this long has passed.
const IMAGE_WANTED_FOR: Duration = Duration::from_secs(300);

/// A request from the control socket.
#[derive(Debug)]
pub enum CoreReq {
    /// Status of one application or all.
    Status(Option<String>),
    /// Whether every peer is connected and has said hello.
    PeersReady,
    /// Start an application.
    Run(RunRequest),
    /// Planned switchover.
    Failover { app: String, to: Option<String> },
    /// A migration step.
    Migrate {
        app: String,
        to: String,
        step: ctl::MigrateStep,
    },
    /// Stop an application.
    Stop { app: String },
}

/// The control socket's way into the core.
#[derive(Clone)]
pub struct CoreHandle {
    tx: mpsc::UnboundedSender<(CoreReq, oneshot::Sender<Reply>)>,
}

impl CoreHandle {
    /// Ask the core; an error reply if it is gone.
    pub async fn call(&self, req: CoreReq) -> Reply {
        let (tx, rx) = oneshot::channel();
        if self.tx.send((req, tx)).is_err() {
            return Reply::error(ErrorKind::Failed, "ferryd is shutting down");
        }
        rx.await
            .unwrap_or_else(|_| Reply::error(ErrorKind::Failed, "ferryd is shutting down"))
    }
}

/// This host's monotonic clock in nanoseconds (the shim compares gate
/// deadlines with the same clock).
pub fn now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out pointer for the call's duration.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Local state of one application with a log on this node.
struct Local {
    shared: Arc<AppShared>,
    runner: Runner,
    writer: Writer,
    /// A replica or program has been started (or is being).
    program_started: bool,
    /// The program died (not an exit through the log); `Some(last)`.
    died: Option<u64>,
    /// When a handover after a death was last tried.
    died_retry: Option<Instant>,
    /// When each logged batch ended, for the lag in time.
    logged_at: VecDeque<(u64, Instant)>,
    /// Record streams to backups.
    streamers: HashMap<String, JoinHandle<()>>,
    /// A resync asked for at this time is under way.
    resync_since: Option<Instant>,
    /// This node holds the service address: since when, and when it was
    /// last renewed.
    vip_held: Option<(Instant, Instant)>,
    /// After a planned handover: the service address stays here until the
    /// new primary announces itself and the old program (this pid) has
    /// ended, its connections closed (or this deadline passes), so that
    /// clients that reconnect meanwhile are refused at once instead of
    /// sending into the void and waiting for a retransmission.
    vip_release: Option<(Instant, i32)>,
    /// Images being sent to peers: peer → position.
    supplying: HashMap<String, (u64, JoinHandle<()>)>,
    /// Primary: the image asked of a backup (peer, position, when), until
    /// it arrives or fails.
    image_wanted: Option<(String, u64, Instant)>,
}

/// The core task's state.
pub struct Core {
    settings: Settings,
    node: Node,
    transport: Arc<Transport>,
    locals: HashMap<String, Local>,
    hello: HashMap<String, bool>,
    pids: HashMap<i32, String>,
    /// Children reaped before their runner reported them (a program that
    /// ended at once): pid → wait status and when. Kept a few seconds
    /// only, so that a reused pid is never taken for an old one.
    unclaimed: HashMap<i32, (i32, Instant)>,
    app_tx: mpsc::UnboundedSender<AppEvent>,
    failures: Vec<(String, String)>,
    /// Applications stopped a moment ago: a heartbeat that was in flight
    /// when the stop came (datagrams and streams are not ordered) must not
    /// bring them back.
    stopped: HashMap<String, Instant>,
    /// Inputs that arose while actions were being carried out.
    deferred: VecDeque<Input>,
    /// Actions are being carried out.
    carrying: bool,
    /// systemd's watchdog: ping this often (from the core loop, so that a
    /// stuck core stops the pings).
    watchdog: Option<(Duration, Instant)>,
}

/// The channels the core reads.
pub struct CoreInputs {
    /// From the transport.
    pub peer_rx: mpsc::UnboundedReceiver<PeerEvent>,
    /// From the control socket.
    pub ctl_rx: mpsc::UnboundedReceiver<(CoreReq, oneshot::Sender<Reply>)>,
}

/// Make the channel pair for control requests.
pub fn control_channel() -> (
    CoreHandle,
    mpsc::UnboundedReceiver<(CoreReq, oneshot::Sender<Reply>)>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    (CoreHandle { tx }, rx)
}

fn valid_app_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::None => "none",
        Role::Primary => "primary",
        Role::Candidate => "candidate",
        Role::Backup => "backup",
        Role::Witness => "witness",
    }
}

impl Core {
    /// Restore the node from DATA/apps and make the core.
    pub fn restore(
        settings: Settings,
        transport: Arc<Transport>,
    ) -> anyhow::Result<(Core, mpsc::UnboundedReceiver<AppEvent>)> {
        let (app_tx, app_rx) = mpsc::unbounded_channel();
        let peers: Vec<&str> = settings.peers.iter().map(|p| p.name.as_str()).collect();
        let mut config = Config::new(&settings.node, &peers, settings.witness);
        config.timings = settings.timings.clone();
        config.seed ^= now() ^ u64::from(std::process::id());
        let apps_dir = settings.data_dir.join("apps");
        std::fs::create_dir_all(&apps_dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", apps_dir.display()))?;
        let mut restored = Vec::new();
        let mut locals = HashMap::new();
        let mut damaged = Vec::new();
        let mut names: Vec<String> = std::fs::read_dir(&apps_dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|n| valid_app_name(n))
            .collect();
        names.sort();
        for name in names {
            let dir = apps_dir.join(&name);
            let state = match persist::load(&dir) {
                Ok(Some(s)) => s,
                Ok(None) => {
                    warn!(app = %name, dir = %dir.display(), "no state; the directory is ignored");
                    continue;
                }
                Err(e) => {
                    error!(app = %name, error = %e, "cannot read the application's state; ignored");
                    continue;
                }
            };
            let mut durable = 0;
            app::kill_leftovers(&dir, &name);
            if !settings.witness {
                let (shared, was_damaged) =
                    AppShared::open(&settings.data_dir, &name, settings.storage)?;
                durable = shared.durable();
                if was_damaged {
                    damaged.push(name.clone());
                }
                locals.insert(name.clone(), Local::new(shared, &app_tx));
            }
            info!(app = %name, epoch = state.epoch, durable, "restored");
            restored.push(RestoredApp {
                app: name,
                state,
                durable,
            });
        }
        let node = Node::restore(config, restored);
        let mut core = Core {
            settings,
            node,
            transport,
            locals,
            hello: HashMap::new(),
            pids: HashMap::new(),
            unclaimed: HashMap::new(),
            app_tx,
            failures: Vec::new(),
            stopped: HashMap::new(),
            deferred: VecDeque::new(),
            carrying: false,
            watchdog: None,
        };
        for name in damaged {
            core.input(Input::CorruptLog {
                app: name,
                intact_up_to: 0,
            });
        }
        let names: Vec<String> = core.locals.keys().cloned().collect();
        for name in names {
            let vip = core.locals[&name].shared.vip.lock().unwrap().clone();
            if let Some(v) = vip {
                vip::remove_stale(&name, &v);
            }
            core.start_replica(&name);
        }
        Ok((core, app_rx))
    }

    /// Run until `shutdown` resolves.
    pub async fn run(
        mut self,
        mut inputs: CoreInputs,
        mut app_rx: mpsc::UnboundedReceiver<AppEvent>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut sigchld =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
        let mut reap = tokio::time::interval(Duration::from_millis(50));
        let heartbeat = Duration::from_nanos(self.settings.timings.heartbeat_interval);
        let mut housekeeping = tokio::time::interval(Duration::from_millis(100));
        tokio::pin!(shutdown);
        let mut last_tick = Instant::now();
        // Set once asked to stop: primaries are handed over first.
        let mut draining: Option<Instant> = None;
        let mut handing: Vec<String> = Vec::new();
        loop {
            let wait = match self.node.next_timeout() {
                Some(t) => Duration::from_nanos(t.saturating_sub(now())).min(heartbeat),
                None => heartbeat,
            };
            tokio::select! {
                _ = &mut shutdown, if draining.is_none() => {
                    draining = Some(Instant::now());
                    handing = self.hand_over_all();
                }
                Some(e) = inputs.peer_rx.recv() => self.on_peer(e),
                Some(e) = app_rx.recv() => self.on_app(e),
                Some((req, reply)) = inputs.ctl_rx.recv() => {
                    let r = self.on_control(req);
                    let _ = reply.send(r);
                }
                _ = async { match &mut sigchld { Some(s) => { s.recv().await; } None => std::future::pending().await } } => self.reap(),
                _ = reap.tick() => self.reap(),
                _ = housekeeping.tick() => self.housekeeping(),
                _ = tokio::time::sleep(wait) => {}
            }
            let due = self.node.next_timeout().is_some_and(|t| t <= now());
            if due || last_tick.elapsed() >= heartbeat {
                last_tick = Instant::now();
                self.tick();
            }
            self.release_vips();
            if let Some(since) = draining {
                let limit = Duration::from_nanos(self.settings.timings.transfer_timeout)
                    + Duration::from_secs(1);
                let primaries = self.primaries();
                if !handing.iter().any(|a| primaries.contains(a)) || since.elapsed() > limit {
                    break;
                }
            }
        }
        info!("shutting down: stopping local programs");
        for (_, local) in self.locals.drain() {
            local.shared.gone.store(true, Ordering::SeqCst);
            local.runner.send(RunnerCmd::Quit);
            let _ = local.writer.tx.try_send(WriterMsg::Quit);
        }
        // Give the runners a moment to kill their programs.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// The applications this node is the primary of.
    fn primaries(&self) -> Vec<String> {
        self.node
            .apps()
            .filter(|a| self.node.status(a).is_some_and(|s| s.role == Role::Primary))
            .map(str::to_owned)
            .collect()
    }

    /// Stopping: hand every application this node leads to a backup
    /// (a planned switchover, nothing lost), so that a restart of ferryd
    /// (an upgrade) does not wait for a lease to run out.
    fn hand_over_all(&mut self) -> Vec<String> {
        let apps = self.primaries();
        if !apps.is_empty() {
            info!(apps = ?apps, "stopping: handing the applications over to backups first");
        }
        let mut started = Vec::new();
        for app in apps {
            self.failures.clear();
            self.input(Input::Failover {
                app: app.clone(),
                to: None,
            });
            if self.failures.iter().all(|(a, _)| *a != app) {
                started.push(app);
            }
        }
        started
    }

    /// Hand `input` to the node and carry out what it asks. An input that
    /// arises while actions are being carried out (a report of one of them)
    /// waits until the whole list is done, so that actions stay in order
    /// (a later state is never persisted before an earlier one).
    fn input(&mut self, input: Input) {
        self.deferred.push_back(input);
        if self.carrying {
            return;
        }
        self.drain_inputs();
    }

    fn drain_inputs(&mut self) {
        self.carrying = true;
        while let Some(input) = self.deferred.pop_front() {
            let actions = self.node.handle(now(), input);
            self.carry(actions);
        }
        self.carrying = false;
    }

    fn tick(&mut self) {
        self.carrying = true;
        // Tell the node how far each replica has replayed (a migration
        // switches over only to a replica close behind).
        let replicas: Vec<(String, u64)> = self
            .locals
            .iter()
            .filter(|(_, l)| l.program_started && l.died.is_none())
            .map(|(n, l)| (n.clone(), l.shared.replayed.load(Ordering::Relaxed)))
            .collect();
        for (app, gseq) in replicas {
            if self
                .node
                .status(&app)
                .is_some_and(|s| s.role == Role::Backup)
            {
                let actions = self.node.handle(now(), Input::Replayed { app, gseq });
                self.carry(actions);
            }
        }
        let actions = self.node.tick(now());
        self.carry(actions);
        self.drain_inputs();
    }

    fn reap(&mut self) {
        for _ in 0..1000 {
            match sys::reap_nohang() {
                Ok(Reaped::Child { pid, status }) => match self.pids.remove(&pid) {
                    Some(app) => {
                        if let Some(l) = self.locals.get(&app) {
                            l.runner.send(RunnerCmd::RootExited { pid, status });
                        }
                    }
                    None => {
                        // Most are the programs' own children; keep a few
                        // in case a runner reports this pid later.
                        self.unclaimed.insert(pid, (status, Instant::now()));
                    }
                },
                Ok(_) => break,
                Err(e) => {
                    warn!(error = %e, "waitpid failed");
                    break;
                }
            }
        }
    }

    /// Send systemd `WATCHDOG=1` every `every` from the core loop.
    pub fn set_watchdog(&mut self, every: Duration) {
        self.watchdog = Some((every, Instant::now()));
    }

    fn housekeeping(&mut self) {
        if let Some((every, last)) = &mut self.watchdog {
            if last.elapsed() >= *every {
                *last = Instant::now();
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
        }
        self.unclaimed
            .retain(|_, (_, at)| at.elapsed() < Duration::from_secs(5));
        self.stopped.retain(|_, at| at.elapsed() < STOPPED_GRACE);
        self.renew_vips();
        self.retry_handovers();
        let mut failed = Vec::new();
        for (name, l) in &mut self.locals {
            if let Some(s) = self.node.status(name) {
                let acked = s.backups.iter().map(|b| b.acked).max().unwrap_or(0);
                while l.logged_at.front().is_some_and(|(g, _)| *g <= acked) {
                    l.logged_at.pop_front();
                }
            }
            if l.resync_since
                .is_some_and(|t| t.elapsed() > Duration::from_secs(5))
            {
                l.resync_since = None;
                failed.push(name.clone());
            }
            l.streamers.retain(|_, h| !h.is_finished());
        }
        for app in failed {
            warn!(app, "no records came for the resync; asking again");
            self.input(Input::ResyncFailed { app });
        }
    }

    /// Give up the service address kept after a planned handover once the
    /// new primary has announced itself and the old program has ended, or
    /// the wait is over.
    fn release_vips(&mut self) {
        for (name, l) in &mut self.locals {
            let Some((deadline, old_pid)) = l.vip_release else {
                continue;
            };
            if l.vip_held.is_some() {
                // Primary here again (a quick rollback): keep it.
                l.vip_release = None;
                continue;
            }
            let announced = self
                .node
                .status(name)
                .and_then(|s| s.switch)
                .is_some_and(|w| w.downtime.is_some());
            // The program's connections close when its sockets are shut
            // down at the kill, or at the latest when it has ended: with
            // the address still here, its clients hear of it at once.
            let ended = old_pid <= 0
                || l.shared.sockets_shut.load(Ordering::SeqCst) == old_pid
                || sys::has_exited(old_pid);
            if (announced && ended) || Instant::now() >= deadline {
                l.vip_release = None;
                if let Some(v) = l.shared.vip.lock().unwrap().clone() {
                    vip::remove(name, &v);
                }
            }
        }
    }

    /// Renew the service address of every application this node serves
    /// while its lease holds; announce it again for a few seconds after it
    /// moved here. Without renewal the kernel drops it (vip::LIFETIME_SECS).
    fn renew_vips(&mut self) {
        for (name, l) in &mut self.locals {
            let Some((since, renewed)) = l.vip_held else {
                continue;
            };
            if renewed.elapsed() < vip::RENEW_EVERY {
                continue;
            }
            let serving = self
                .node
                .status(name)
                .is_some_and(|s| s.role == Role::Primary && s.gate_open);
            if !serving {
                continue;
            }
            let v = l.shared.vip.lock().unwrap().clone();
            if let Some(v) = v {
                let announce = since.elapsed() < Duration::from_secs(5);
                vip::add(name, &v, false, announce);
                l.vip_held = Some((since, Instant::now()));
            }
        }
    }

    /// A primary whose program is gone and that found no backup to take
    /// over tries again once one is healthy and in contact.
    fn retry_handovers(&mut self) {
        let mut retry = Vec::new();
        for (name, l) in &mut self.locals {
            if l.died.is_none()
                || l.died_retry
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
            {
                continue;
            }
            let Some(s) = self.node.status(name) else {
                continue;
            };
            if s.role == Role::Primary && s.backups.iter().any(|b| b.healthy && b.in_contact) {
                l.died_retry = Some(Instant::now());
                retry.push(name.clone());
            }
        }
        for app in retry {
            self.failures.clear();
            self.input(Input::Failover { app, to: None });
        }
    }

    // ----- actions -----------------------------------------------------------

    fn carry(&mut self, actions: Vec<Action>) {
        for action in actions {
            self.carry_one(action);
        }
    }

    fn carry_one(&mut self, action: Action) {
        match action {
            Action::Send { to, message } => {
                self.transport.send(&to, PeerMessage::Protocol(message))
            }
            Action::OpenGate {
                app,
                up_to_gseq,
                until,
            } => {
                if let Some(l) = self.locals.get(&app) {
                    l.runner.send(RunnerCmd::OpenGate {
                        up_to: up_to_gseq,
                        until,
                    });
                }
            }
            Action::CloseGate { app } => {
                if let Some(l) = self.locals.get(&app) {
                    l.runner.send(RunnerCmd::CloseGate);
                }
            }
            Action::Promote { app, epoch, base } => {
                info!(app, epoch, base, "promoted: the replica goes live");
                let gated = self.node.status(&app).is_some_and(|s| s.mode == Mode::Sync);
                if let Some(l) = self.locals.get_mut(&app) {
                    l.program_started = true;
                    l.runner.send(RunnerCmd::GoLive { base, gated });
                }
            }
            Action::Demote {
                app,
                epoch,
                primary,
            } => {
                info!(app, epoch, primary = ?primary, "demoted: the program stops, this node becomes a backup");
                let handed_over = self
                    .node
                    .status(&app)
                    .and_then(|s| s.switch)
                    .is_some_and(|w| w.epoch == epoch && w.downtime.is_none());
                if let Some(l) = self.locals.get_mut(&app) {
                    let old_pid = l.shared.pid.load(Ordering::SeqCst);
                    l.runner.send(RunnerCmd::Kill);
                    l.shared.primary.store(false, Ordering::SeqCst);
                    // The program is gone: a replica starts from an image
                    // or from record 1 (what a fetch says from here on).
                    l.shared.replayed.store(0, Ordering::SeqCst);
                    for (_, h) in l.streamers.drain() {
                        h.abort();
                    }
                    l.died = None;
                    l.program_started = false;
                    l.vip_held = None;
                    if handed_over {
                        l.vip_release = Some((Instant::now() + VIP_RELEASE_WAIT, old_pid));
                    } else if let Some(v) = l.shared.vip.lock().unwrap().clone() {
                        vip::remove(&app, &v);
                    }
                }
                self.start_replica(&app);
            }
            Action::MoveVip { app } => {
                if let Some(l) = self.locals.get_mut(&app) {
                    let v = l.shared.vip.lock().unwrap().clone();
                    if let Some(v) = v {
                        vip::add(&app, &v, true, true);
                        l.vip_held = Some((Instant::now(), Instant::now()));
                    }
                }
            }
            Action::Persist { app, state } => {
                self.ensure_local(&app);
                let dir = self.settings.data_dir.join("apps").join(&app);
                if let Err(e) = persist::save(&dir, &state) {
                    // Going on without it could break a promise (a vote, a
                    // floor) after a restart: stop here.
                    error!(app, error = %e, "cannot persist the protocol state; stopping");
                    std::process::exit(1);
                }
            }
            Action::Forget { app } => {
                self.stopped.insert(app.clone(), Instant::now());
                self.forget(&app);
            }
            Action::Resync {
                app,
                from_gseq,
                from_node,
            } => {
                self.ensure_local(&app);
                if let Some(l) = self.locals.get_mut(&app) {
                    l.resync_since = Some(Instant::now());
                    let _ = l.writer.tx.try_send(WriterMsg::Resync {
                        from_gseq,
                        node: from_node,
                    });
                }
            }
            Action::PauseApp { app } => {
                let died = self.locals.get(&app).and_then(|l| l.died);
                match (died, self.locals.get(&app)) {
                    (Some(gseq), _) => self.input(Input::Paused { app, gseq }),
                    (None, Some(l)) => l.runner.send(RunnerCmd::Pause),
                    (None, None) => {}
                }
            }
            Action::ResumeApp { app } => {
                if let Some(l) = self.locals.get(&app) {
                    l.runner.send(RunnerCmd::Resume);
                }
            }
            Action::Refused {
                app,
                from,
                kind,
                reason,
            } => debug!(app, from, kind, %reason, "refused"),
            Action::CommandFailed { app, error } => {
                warn!(app, %error, "command failed");
                self.failures.push((app, error.to_string()));
            }
            Action::StatusChanged(s) => {
                debug!(app = %s.app, role = role_name(s.role), epoch = s.epoch, primary = ?s.primary, protected = s.protected, "status");
            }
        }
    }

    fn ensure_local(&mut self, app: &str) {
        if self.settings.witness || self.locals.contains_key(app) {
            return;
        }
        match AppShared::open(&self.settings.data_dir, app, self.settings.storage) {
            Ok((shared, damaged)) => {
                self.locals
                    .insert(app.to_owned(), Local::new(shared, &self.app_tx));
                if damaged {
                    self.input(Input::CorruptLog {
                        app: app.to_owned(),
                        intact_up_to: 0,
                    });
                }
            }
            Err(e) => error!(app, error = %e, "cannot open the application's log"),
        }
    }

    fn start_replica(&mut self, app: &str) {
        let Some(l) = self.locals.get_mut(app) else {
            return;
        };
        if l.shared.primary.load(Ordering::SeqCst) {
            return;
        }
        if l.shared.start_info().is_some() {
            l.program_started = true;
            l.runner.send(RunnerCmd::StartReplica);
        }
    }

    fn forget(&mut self, app: &str) {
        info!(app, "application stopped: forgetting it");
        if let Some(l) = self.locals.remove(app) {
            l.shared.gone.store(true, Ordering::SeqCst);
            if l.shared.primary.load(Ordering::SeqCst) {
                if let Some(v) = l.shared.vip.lock().unwrap().clone() {
                    vip::remove(app, &v);
                }
            }
            for (_, h) in l.streamers {
                h.abort();
            }
            l.runner.send(RunnerCmd::Quit);
            let _ = l.writer.tx.try_send(WriterMsg::Quit);
            self.pids.retain(|_, a| a != app);
        }
        let dir = self.settings.data_dir.join("apps").join(app);
        // The log and the state go; the program's output is kept beside.
        let kept = self
            .settings
            .data_dir
            .join("apps")
            .join(format!(".{app}.stopped.{}", now()));
        let _ = std::fs::remove_file(dir.join(persist::STATE_FILE));
        if std::fs::rename(&dir, &kept).is_ok() {
            let _ = std::fs::remove_dir_all(kept.join("log"));
        }
    }

    // ----- events ------------------------------------------------------------

    fn on_peer(&mut self, e: PeerEvent) {
        match e {
            PeerEvent::Up { peer } => {
                self.input(Input::PeerConnected { peer: peer.clone() });
                self.refetch_from(&peer);
            }
            PeerEvent::Down { peer } => self.input(Input::PeerDisconnected { peer }),
            PeerEvent::Hello { peer, witness } => {
                self.hello.insert(peer, witness);
            }
            PeerEvent::Message {
                from,
                message: PeerMessage::Protocol(message),
            } => {
                let just_stopped = self
                    .stopped
                    .get(message.app())
                    .is_some_and(|t| t.elapsed() < STOPPED_GRACE);
                if just_stopped && self.node.status(message.app()).is_none() {
                    debug!(
                        app = message.app(),
                        from,
                        kind = message.kind(),
                        "message about a stopped application dropped"
                    );
                    return;
                }
                // A stop can overtake the heartbeat that would have told
                // this node of the application: remember it either way.
                if let Message::Stop { app, .. } = &message {
                    self.stopped.insert(app.clone(), Instant::now());
                }
                self.input(Input::Message { from, message })
            }
            PeerEvent::Message {
                from,
                message:
                    PeerMessage::Fetch {
                        app,
                        from_gseq,
                        replica_at,
                        have,
                    },
            } => self.serve(&app, &from, from_gseq, replica_at, have),
            PeerEvent::Message {
                from,
                message:
                    PeerMessage::Checkpointed {
                        app,
                        at,
                        bytes,
                        chain,
                    },
            } => self.image_offered(&app, &from, at, bytes, &chain),
            PeerEvent::Message {
                from,
                message: PeerMessage::SendImage { app, at, have },
            } => self.image_asked(&app, &from, at, &have),
            PeerEvent::Records(stream) => self.receive(stream),
        }
    }

    /// A backup in sync with `peer` as its primary asks for the rest of the
    /// stream after a reconnection.
    fn refetch_from(&mut self, peer: &str) {
        let names: Vec<String> = self.locals.keys().cloned().collect();
        for name in names {
            self.refetch_app(&name, peer);
        }
    }

    /// Ask `peer` for the rest of `app`'s records if this node is a
    /// healthy backup following it and no resync is under way.
    fn refetch_app(&mut self, app: &str, peer: &str) {
        let (Some(l), Some(s)) = (self.locals.get(app), self.node.status(app)) else {
            return;
        };
        if s.role == Role::Backup
            && s.primary.as_deref() == Some(peer)
            && s.healthy
            && l.resync_since.is_none()
        {
            let from_gseq = l.shared.log.lock().unwrap().next_gseq();
            let replica_at = l.shared.replica_at();
            let have = crate::images::held(&l.shared.dir);
            debug!(app, peer, from_gseq, "asking for the record stream again");
            self.transport.send(
                peer,
                PeerMessage::Fetch {
                    app: app.to_owned(),
                    from_gseq,
                    replica_at,
                    have,
                },
            );
            self.report_image(app, peer);
        }
    }

    /// Backup: tell `primary` of the newest image here, which it may ask
    /// for to trim its own log.
    fn report_image(&self, app: &str, primary: &str) {
        let Some(l) = self.locals.get(app) else {
            return;
        };
        let Some(image) = crate::images::latest(&l.shared.dir) else {
            return;
        };
        self.transport.send(
            primary,
            PeerMessage::Checkpointed {
                app: app.to_owned(),
                at: image.position.gseq,
                bytes: crate::images::bytes(&image.dir),
                chain: image
                    .ancestors
                    .iter()
                    .filter_map(|&g| {
                        let dir = crate::images::dir_for(&l.shared.dir, g);
                        Some((
                            g,
                            crate::images::identity(&dir)?,
                            crate::images::bytes(&dir),
                        ))
                    })
                    .collect(),
            },
        );
    }

    /// Primary: backup `from` has an image of `bytes` after record `at`,
    /// incremental to those of `chain` (position, identity, bytes). Ask for
    /// it when it lets this node drop at least as much of its log as it
    /// would send (the images of the chain this node has are not sent)
    /// and no other image is on its way here.
    fn image_offered(
        &mut self,
        app: &str,
        from: &str,
        at: u64,
        bytes: u64,
        chain: &[(u64, u32, u64)],
    ) {
        let primary = self
            .node
            .status(app)
            .is_some_and(|s| s.role == Role::Primary);
        let Some(l) = self.locals.get_mut(app).filter(|_| primary) else {
            return;
        };
        // Another image is on its way, unless this offer replaces the one
        // asked of the same backup before any of it came (that backup no
        // longer had it).
        let receiving = l.shared.under_way().iter().any(|w| !w.receipt.is_empty());
        let waiting = l
            .image_wanted
            .as_ref()
            .is_some_and(|(peer, wanted, asked)| {
                asked.elapsed() < IMAGE_WANTED_FOR && (peer != from || *wanted == at || receiving)
            });
        let held = crate::images::held(&l.shared.dir);
        let sent: u64 = chain
            .iter()
            .filter(|&&(g, id, _)| !held.contains(&(g, id)))
            .map(|&(_, _, b)| b)
            .sum::<u64>()
            + bytes;
        if waiting || !l.shared.image_worth_fetching(at, sent) {
            return;
        }
        info!(
            app,
            peer = from,
            at,
            "asking a backup for its image, to trim the log here"
        );
        l.image_wanted = Some((from.to_owned(), at, Instant::now()));
        self.transport.send(
            from,
            PeerMessage::SendImage {
                app: app.to_owned(),
                at,
                have: held,
            },
        );
    }

    /// Backup: the primary `to` asks for the image after record `at`.
    fn image_asked(&mut self, app: &str, to: &str, at: u64, have: &[(u64, u32)]) {
        let backup_of = self
            .node
            .status(app)
            .is_some_and(|s| s.role == Role::Backup && s.primary.as_deref() == Some(to));
        let image = self.locals.get(app).filter(|_| backup_of).and_then(|l| {
            crate::images::list(&l.shared.dir)
                .into_iter()
                .find(|i| i.position.gseq == at)
        });
        match image {
            Some(image) => self.send_image(app, to, image, have),
            None if backup_of => {
                // Pruned since it was offered: offer the newest instead.
                debug!(app, peer = to, at, "asked for an image no longer here");
                self.report_image(app, to);
            }
            None => debug!(app, peer = to, at, "asked for an image, not as its backup"),
        }
    }

    fn serve(
        &mut self,
        app: &str,
        to: &str,
        from_gseq: u64,
        replica_at: u64,
        have: Vec<(u64, u32)>,
    ) {
        let Some(l) = self.locals.get_mut(app) else {
            warn!(
                app,
                peer = to,
                "fetch for an application without a log here; ignored"
            );
            return;
        };
        let Some(connection) = self.transport.connection(to) else {
            return;
        };
        if let Some(h) = l.streamers.remove(to) {
            h.abort();
        }
        info!(app, peer = to, from_gseq, "streaming records to a backup");
        let shared = l.shared.clone();
        let peer = to.to_owned();
        let has = have.clone();
        l.streamers.insert(
            to.to_owned(),
            tokio::spawn(async move {
                if let Err(e) = stream_records(shared, connection, &peer, from_gseq, &has).await {
                    debug!(peer, error = %e, "record stream ended");
                }
            }),
        );
        self.supply(app, to, from_gseq, replica_at, &have);
    }

    /// Beside the records: send `to` an image that spares its replica
    /// replaying most of the log (the old primary after a handover has
    /// the whole log but no image), unless one is on its way.
    fn supply(
        &mut self,
        app: &str,
        to: &str,
        from_gseq: u64,
        replica_at: u64,
        have: &[(u64, u32)],
    ) {
        let Some(l) = self.locals.get(app) else {
            return;
        };
        let Some(image) = l.shared.image_beyond(replica_at, from_gseq) else {
            return;
        };
        let at = image.position.gseq;
        if l.supplying
            .get(to)
            .is_some_and(|(sent, h)| *sent >= at && !h.is_finished())
        {
            return;
        }
        info!(
            app,
            peer = to,
            at,
            replica_at,
            "sending an image to spare the backup's replica replaying the log"
        );
        self.send_image(app, to, image, have);
    }

    /// Send `image` to `to` on a stream of its own, without the images it
    /// is incremental to that `to` has.
    fn send_image(
        &mut self,
        app: &str,
        to: &str,
        image: crate::images::Stored,
        has: &[(u64, u32)],
    ) {
        let (Some(l), Some(connection)) = (self.locals.get_mut(app), self.transport.connection(to))
        else {
            return;
        };
        let at = image.position.gseq;
        let shared = l.shared.clone();
        let peer = to.to_owned();
        let has = has.to_vec();
        let task = tokio::spawn(async move {
            let result = async {
                let shipment = ship::Shipment::open(&shared, image, &has)?;
                let head = StreamHead::Image {
                    app: shared.name.clone(),
                    image: shipment.head.clone(),
                };
                let mut send = peer::open_record_stream(&connection, &head).await?;
                // Below the records and messages (priority 0): a sync-mode
                // primary's writes wait for the backups' acknowledgements,
                // which must not queue behind a gigabyte of image.
                send.set_priority(-1)?;
                shipment.send(&shared, &peer, &mut send).await?;
                send.finish()?;
                // Until the peer has read it all: dropping the stream early
                // would cut it short.
                let _ = send.stopped().await;
                anyhow::Ok(())
            };
            if let Err(e) = result.await {
                warn!(app = %shared.name, peer, error = %e, "could not send the image");
            }
        });
        if let Some((_, old)) = l.supplying.insert(to.to_owned(), (at, task)) {
            old.abort();
        }
    }

    fn receive(&mut self, mut stream: RecordStream) {
        let app = stream.app.clone();
        if self.node.status(&app).is_none() {
            warn!(app, peer = %stream.from, "record stream for an unknown application; ignored");
            return;
        }
        self.ensure_local(&app);
        let Some(l) = self.locals.get(&app) else {
            return;
        };
        if stream.vip.is_some() && *l.shared.vip.lock().unwrap() != stream.vip {
            l.shared.set_vip(stream.vip.clone());
        }
        if stream.image_only {
            // A primary takes only the image it asked for: it trims its
            // log to it.
            let primary = self
                .node
                .status(&app)
                .is_some_and(|s| s.role == Role::Primary);
            let asked = l.image_wanted.as_ref().is_some_and(|(peer, at, _)| {
                *peer == stream.from && Some(*at) == stream.image.as_ref().map(|i| i.at)
            });
            if primary && !asked {
                warn!(app, peer = %stream.from, "an image this primary did not ask for; ignored");
                return;
            }
            let shared = l.shared.clone();
            let events = self.app_tx.clone();
            tokio::spawn(async move {
                let Some(head) = stream.image.take() else {
                    return;
                };
                match ship::receive(&shared, &head, &mut stream, primary).await {
                    Ok(()) => {
                        let _ = events.send(AppEvent::Supplied {
                            app: stream.app,
                            from: stream.from,
                            at: head.at,
                        });
                    }
                    Err(e) => {
                        warn!(app = %stream.app, peer = %stream.from, error = %e, "the image did not arrive whole, or is not of this log; not used");
                        let _ = events.send(AppEvent::SupplyFailed {
                            app: stream.app,
                            from: stream.from,
                        });
                    }
                }
            });
            return;
        }
        let gen = l.shared.stream_gen.fetch_add(1, Ordering::SeqCst) + 1;
        let tx = l.writer.tx.clone();
        let events = self.app_tx.clone();
        let from_gseq = stream.from_gseq;
        let shared = l.shared.clone();
        tokio::spawn(async move {
            if let Some(head) = stream.image.take() {
                match ship::receive(&shared, &head, &mut stream, false).await {
                    Ok(()) => {
                        let install = WriterMsg::Install {
                            gen,
                            at: head.at,
                            start: head.start,
                        };
                        if tx.send(install).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        warn!(app = %stream.app, peer = %stream.from, error = %e, "the image from the primary did not arrive whole; asking again");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        let _ = events.send(AppEvent::StreamEnded {
                            app: stream.app,
                            from: stream.from,
                            gen,
                        });
                        return;
                    }
                }
            }
            if tx.send(WriterMsg::Stream { gen, from_gseq }).await.is_err() {
                return;
            }
            while let Ok(Some(bytes)) = stream.next_batch().await {
                if tx.send(WriterMsg::Batch { gen, bytes }).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(WriterMsg::StreamEnded { gen }).await;
            // Ask again after a pause, if this node still follows it.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = events.send(AppEvent::StreamEnded {
                app: stream.app,
                from: stream.from,
                gen,
            });
        });
    }

    fn on_app(&mut self, e: AppEvent) {
        match e {
            AppEvent::Logged { app, gseq } => {
                if let Some(l) = self.locals.get_mut(&app) {
                    l.logged_at.push_back((gseq, Instant::now()));
                    if l.logged_at.len() > 100_000 {
                        l.logged_at.pop_front();
                    }
                }
                self.input(Input::RecordsLogged { app, gseq });
            }
            AppEvent::Paused { app, gseq } => self.input(Input::Paused { app, gseq }),
            AppEvent::Started { app, pid } => match self.unclaimed.remove(&pid) {
                Some((status, _)) => {
                    if let Some(l) = self.locals.get(&app) {
                        l.runner.send(RunnerCmd::RootExited { pid, status });
                    }
                }
                None => {
                    self.pids.insert(pid, app);
                }
            },
            AppEvent::Ended {
                app,
                killed,
                status,
                last,
            } => {
                let primary = self
                    .node
                    .status(&app)
                    .is_some_and(|s| s.role == Role::Primary);
                if !primary {
                    return;
                }
                if killed {
                    error!(
                        app,
                        status, last, "the program died: handing over to a backup"
                    );
                    if let Some(l) = self.locals.get_mut(&app) {
                        l.died = Some(last);
                        l.died_retry = Some(Instant::now());
                    }
                    self.input(Input::Failover { app, to: None });
                } else {
                    info!(app, status, "the program exited: stopping the application");
                    self.input(Input::StopApp { app });
                }
            }
            AppEvent::WentLive { app, result } => match result {
                Ok(()) => info!(app, "serving as primary"),
                Err(e) => {
                    // No program runs here: hand the role on, as when a
                    // program dies.
                    error!(app, error = %e, "promotion failed: handing over to a backup");
                    if let Some(l) = self.locals.get_mut(&app) {
                        l.died = Some(l.shared.progress.get().unwrap_or(0));
                        l.died_retry = Some(Instant::now());
                    }
                    self.input(Input::Failover { app, to: None });
                }
            },
            AppEvent::Durable { app, gseq } => self.input(Input::Durable { app, gseq }),
            AppEvent::Resynced { app, gseq } => {
                if let Some(l) = self.locals.get_mut(&app) {
                    l.resync_since = None;
                }
                self.input(Input::Resynced { app, gseq });
            }
            AppEvent::ResyncFailed { app } => {
                if let Some(l) = self.locals.get_mut(&app) {
                    l.resync_since = None;
                }
                self.input(Input::ResyncFailed { app });
            }
            AppEvent::Fetch {
                app,
                node,
                from_gseq,
                cut,
            } => {
                if cut {
                    self.start_replica(&app);
                }
                let (replica_at, have) = self.locals.get(&app).map_or((0, Vec::new()), |l| {
                    (l.shared.replica_at(), crate::images::held(&l.shared.dir))
                });
                self.transport.send(
                    &node,
                    PeerMessage::Fetch {
                        app: app.clone(),
                        from_gseq,
                        replica_at,
                        have,
                    },
                );
                self.report_image(&app, &node);
            }
            AppEvent::Corrupt { app, intact } => self.input(Input::CorruptLog {
                app,
                intact_up_to: intact,
            }),
            AppEvent::StreamEnded { app, from, gen } => {
                // Only when no newer stream has begun since.
                let latest = self
                    .locals
                    .get(&app)
                    .is_some_and(|l| l.shared.stream_gen.load(Ordering::SeqCst) == gen);
                if latest && self.transport.connection(&from).is_some() {
                    self.refetch_app(&app, &from);
                }
            }
            AppEvent::Installed { app } => self.start_replica(&app),
            AppEvent::Supplied { app, from, at } => {
                let Some(l) = self.locals.get_mut(&app) else {
                    return;
                };
                l.image_came(&from);
                if l.shared.primary.load(Ordering::SeqCst) {
                    info!(
                        app,
                        peer = from,
                        at,
                        "image from a backup kept; trimming the log to the images kept"
                    );
                    let shared = l.shared.clone();
                    if let Some(oldest) = crate::images::prune(&shared.dir, shared.policy.keep) {
                        shared.trim_log(oldest);
                    }
                } else {
                    l.runner.send(RunnerCmd::ImageArrived { at });
                }
            }
            AppEvent::SupplyFailed { app, from } => {
                if let Some(l) = self.locals.get_mut(&app) {
                    l.image_came(&from);
                }
            }
            AppEvent::Checkpointed { app } => {
                let primary = self
                    .node
                    .status(&app)
                    .filter(|s| s.role == Role::Backup)
                    .and_then(|s| s.primary.clone());
                if let Some(primary) = primary {
                    self.report_image(&app, &primary);
                }
            }
            AppEvent::HaveStart { app } => {
                let started = self.locals.get(&app).is_none_or(|l| l.program_started);
                if !started {
                    self.start_replica(&app);
                }
            }
        }
    }

    // ----- control -----------------------------------------------------------

    fn on_control(&mut self, req: CoreReq) -> Reply {
        match req {
            CoreReq::Status(app) => self.status(app.as_deref()),
            CoreReq::PeersReady => {
                let connected = self.transport.connected();
                let missing: Vec<&str> = self
                    .settings
                    .peers
                    .iter()
                    .map(|p| p.name.as_str())
                    .filter(|p| !connected.iter().any(|c| c == p) || !self.hello.contains_key(*p))
                    .collect();
                if missing.is_empty() {
                    Reply::new(Outcome::Done {
                        message: "all peers connected".into(),
                    })
                } else {
                    Reply::error(
                        ErrorKind::Failed,
                        format!("not connected to peer(s) {}", missing.join(", ")),
                    )
                }
            }
            CoreReq::Run(r) => self.run_app(r),
            CoreReq::Failover { app, to } => self.command(
                &app,
                Input::Failover {
                    app: app.clone(),
                    to,
                },
                "switching over",
            ),
            CoreReq::Stop { app } => {
                self.command(&app, Input::StopApp { app: app.clone() }, "stopped")
            }
            CoreReq::Migrate { app, to, step } => self.migrate(app, to, step),
        }
    }

    fn migrate(&mut self, app: String, to: String, step: ctl::MigrateStep) -> Reply {
        let Some(status) = self.node.status(&app) else {
            return Reply::error(
                ErrorKind::BadRequest,
                format!("no application {app} on node {}", self.settings.node),
            );
        };
        let member = status.members.iter().any(|m| m.node == to);
        if step == ctl::MigrateStep::Start && !member {
            // A new member: it must be a connected peer that runs programs.
            let why = if !self.settings.peers.iter().any(|p| p.name == to) {
                Some("it is not a peer of this node (add it to --peer on every node)")
            } else {
                match self.hello.get(&to) {
                    None => Some("it is not connected"),
                    Some(true) => Some("it is a witness: it runs no program"),
                    Some(false) => None,
                }
            };
            if let Some(why) = why {
                return Reply::error(
                    ErrorKind::Failed,
                    format!("cannot migrate {app} to {to}: {why}"),
                );
            }
        }
        let step_name = match step {
            ctl::MigrateStep::Start => "migrating",
            ctl::MigrateStep::Rollback => "rolling back the migration",
            ctl::MigrateStep::Commit => "migration committed",
        };
        let step = match step {
            ctl::MigrateStep::Start => MigrateStep::Start,
            ctl::MigrateStep::Rollback => MigrateStep::Rollback,
            ctl::MigrateStep::Commit => MigrateStep::Commit,
        };
        self.command(
            &app,
            Input::Migrate {
                app: app.clone(),
                to: to.clone(),
                step,
            },
            &format!("{step_name} (target {to})"),
        )
    }

    fn command(&mut self, app: &str, input: Input, done: &str) -> Reply {
        if self.node.status(app).is_none() {
            return Reply::error(
                ErrorKind::BadRequest,
                format!("no application {app} on node {}", self.settings.node),
            );
        }
        self.failures.clear();
        self.input(input);
        if let Some((_, why)) = self.failures.drain(..).find(|(a, _)| a == app) {
            return Reply::error(ErrorKind::Failed, why);
        }
        Reply::new(Outcome::Done {
            message: format!("{app}: {done}"),
        })
    }

    fn run_app(&mut self, r: RunRequest) -> Reply {
        let bad = |m: String| Reply::error(ErrorKind::BadRequest, m);
        let failed = |m: String| Reply::error(ErrorKind::Failed, m);
        if self.settings.witness {
            return failed(format!(
                "node {} is a witness: it runs no program",
                self.settings.node
            ));
        }
        if !valid_app_name(&r.name) {
            return bad(format!(
                "bad application name {:?}: use 1 to 64 of A-Z a-z 0-9 . _ -, not starting with .",
                r.name
            ));
        }
        if self.node.status(&r.name).is_some() || self.locals.contains_key(&r.name) {
            return bad(format!("application {} already exists", r.name));
        }
        if let Some(v) = &r.vip {
            if let Err(e) = vip::parse(v) {
                return bad(format!("bad --vip {v:?}: {e}"));
            }
        }
        let Some(first) = r.argv.first() else {
            return bad("no command given".into());
        };
        let cwd = Path::new(OsStr::from_bytes(&r.cwd));
        let path_var = env_value(&r.env, b"PATH").map(OsStr::from_bytes);
        if let Err(e) = resolve(OsStr::from_bytes(first), path_var, cwd) {
            return bad(e.to_string());
        }
        let shim = match ferry_host::shim::locate() {
            Ok(s) => s,
            Err(e) => return failed(e.to_string()),
        };
        let mut members = vec![Member::replica(&self.settings.node)];
        for p in &self.settings.peers {
            match self.hello.get(&p.name) {
                Some(true) => members.push(Member::witness(&p.name)),
                Some(false) => members.push(Member::replica(&p.name)),
                None => return failed(format!("peer {} has not connected yet", p.name)),
            }
        }
        if !members.iter().skip(1).any(|m| !m.witness) {
            warn!(app = %r.name, "no backup among the peers: the application will not be protected");
        }
        let env = ferry_host::shim::program_env(
            &shim,
            r.env.iter().filter_map(|e| {
                let i = e.iter().position(|&b| b == b'=')?;
                Some((
                    OsStr::from_bytes(&e[..i]).to_owned(),
                    OsStr::from_bytes(&e[i + 1..]).to_owned(),
                ))
            }),
        );
        let start = StartInfo {
            argv: r.argv.clone(),
            env,
            cwd: r.cwd.clone(),
        };
        let dir = self.settings.data_dir.join("apps").join(&r.name);
        let _ = std::fs::remove_dir_all(&dir);
        let shared = match AppShared::open(&self.settings.data_dir, &r.name, self.settings.storage)
        {
            Ok((s, _)) => s,
            Err(e) => return failed(format!("cannot create the log: {e}")),
        };
        if let Err(e) = app::write_start(&shared, &start) {
            return failed(format!("cannot write the log: {e}"));
        }
        shared.set_vip(r.vip.clone());
        shared.primary.store(true, Ordering::SeqCst);
        let mode = match r.mode {
            RunMode::Sync => Mode::Sync,
            RunMode::Async => Mode::Async,
        };
        let mut local = Local::new(shared, &self.app_tx);
        local.program_started = true;
        local.runner.send(RunnerCmd::StartPrimary {
            start,
            gated: mode == Mode::Sync,
        });
        self.locals.insert(r.name.clone(), local);
        self.failures.clear();
        self.input(Input::StartApp {
            app: r.name.clone(),
            mode,
            members,
        });
        if let Some((_, why)) = self.failures.drain(..).find(|(a, _)| *a == r.name) {
            if let Some(l) = self.locals.remove(&r.name) {
                l.runner.send(RunnerCmd::Quit);
                let _ = l.writer.tx.try_send(WriterMsg::Quit);
            }
            let _ = std::fs::remove_dir_all(&dir);
            return failed(why);
        }
        if let Some(v) = &r.vip {
            vip::add(&r.name, v, true, true);
            if let Some(l) = self.locals.get_mut(&r.name) {
                l.vip_held = Some((Instant::now(), Instant::now()));
            }
        }
        info!(app = %r.name, ?mode, "application started as primary");
        Reply::new(Outcome::Done {
            message: format!("{} started on {}", r.name, self.settings.node),
        })
    }

    fn status(&self, only: Option<&str>) -> Reply {
        let mut names: Vec<String> = self.node.apps().map(str::to_owned).collect();
        names.sort();
        // An application this node does not know is not an error: the
        // answer lists none (a node learns an application from its primary).
        if let Some(app) = only {
            names.retain(|n| n == app);
        }
        let apps = names
            .iter()
            .filter_map(|n| self.node.status(n).map(|s| self.app_view(&s)))
            .collect();
        Reply::new(Outcome::Status(ctl::NodeStatus {
            node: self.settings.node.clone(),
            witness: self.settings.witness,
            connected: self.transport.connected(),
            apps,
        }))
    }

    fn app_view(&self, s: &AppStatus) -> ctl::AppStatus {
        let local = self.locals.get(&s.app);
        let best_acked = s.backups.iter().map(|b| b.acked).max().unwrap_or(0);
        let lag_ms = match (s.role, local) {
            (Role::Primary, Some(l)) if s.lag > 0 => l
                .logged_at
                .iter()
                .find(|(g, _)| *g > best_acked)
                .map(|(_, t)| t.elapsed().as_millis() as u64)
                .unwrap_or(0),
            _ => 0,
        };
        let pid = local
            .map(|l| l.shared.pid.load(Ordering::SeqCst))
            .filter(|&p| p > 0);
        ctl::AppStatus {
            app: s.app.clone(),
            role: role_name(s.role).into(),
            epoch: s.epoch,
            primary: s.primary.clone(),
            mode: match s.mode {
                Mode::Sync => "sync".into(),
                Mode::Async => "async".into(),
            },
            logged: s.logged,
            acked: s.acked,
            durable: s.durable,
            replayed: local
                .map(|l| l.shared.replayed.load(Ordering::Relaxed))
                .unwrap_or(0),
            lag_records: s.lag,
            lag_ms,
            healthy: s.healthy,
            protected: s.protected,
            gate_open: s.gate_open,
            backups: s
                .backups
                .iter()
                .map(|b| ctl::BackupStatus {
                    node: b.node.clone(),
                    acked: b.acked,
                    healthy: b.healthy,
                    in_contact: b.in_contact,
                    replayed: b.replayed,
                })
                .collect(),
            vip: local.and_then(|l| l.shared.vip.lock().unwrap().clone()),
            pid,
            image: local
                .and_then(|l| crate::images::latest(&l.shared.dir))
                .map(|i| i.position.gseq),
            log_first: local.map_or(0, |l| l.shared.log.lock().unwrap().first_gseq()),
            migration: s.migration.as_ref().map(|m| ctl::MigrationStatus {
                from: m.from.clone(),
                to: m.to.clone(),
                added: m.added,
                phase: phase_name(m.phase).into(),
            }),
            switch: s.switch.as_ref().map(|w| ctl::SwitchStatus {
                to: w.to.clone(),
                epoch: w.epoch,
                downtime_us: w.downtime.map(|d| d / 1_000),
            }),
            under_way: local
                .map(|l| l.shared.under_way())
                .unwrap_or_default()
                .into_iter()
                .map(|w| ctl::UnderWayStatus {
                    what: w.what,
                    at: w.at,
                    done_bytes: w.done,
                    total_bytes: w.total,
                    elapsed_ms: w.since.elapsed().as_millis() as u64,
                })
                .collect(),
        }
    }
}

impl Local {
    /// An image from `from` arrived or failed: the one asked of it, if
    /// any, is no longer awaited.
    fn image_came(&mut self, from: &str) {
        if self.image_wanted.as_ref().is_some_and(|w| w.0 == from) {
            self.image_wanted = None;
        }
    }

    fn new(shared: Arc<AppShared>, events: &mpsc::UnboundedSender<AppEvent>) -> Local {
        Local {
            runner: Runner::spawn(shared.clone(), events.clone()),
            writer: Writer::spawn(shared.clone(), events.clone()),
            shared,
            program_started: false,
            died: None,
            died_retry: None,
            logged_at: VecDeque::new(),
            streamers: HashMap::new(),
            resync_since: None,
            vip_held: None,
            vip_release: None,
            supplying: HashMap::new(),
            image_wanted: None,
        }
    }
}

/// Stream `shared`'s records from `from_gseq` on to `peer`, from the log,
/// as they are appended, until the connection or the application goes.
async fn stream_records(
    shared: Arc<AppShared>,
    connection: quinn::Connection,
    peer: &str,
    from_gseq: u64,
    has: &[(u64, u32)],
) -> anyhow::Result<()> {
    let mut progress = shared.progress.subscribe();
    let vip = shared.vip.lock().unwrap().clone();
    // A backup that asks for records this log no longer holds gets the
    // image they are in first.
    let s = shared.clone();
    let image = match tokio::task::spawn_blocking(move || s.image_for(from_gseq)).await? {
        Ok(image) => image,
        Err(why) => {
            warn!(app = %shared.name, from_gseq, why = %why, "cannot serve a backup the records it asks for");
            return Ok(());
        }
    };
    let shipment = match image {
        Some(image) => Some(ship::Shipment::open(&shared, image, has)?),
        None => None,
    };
    let from_gseq = shipment.as_ref().map_or(from_gseq, |s| s.head.at + 1);
    let head = StreamHead::Records {
        app: shared.name.clone(),
        from_gseq,
        vip,
        image: shipment.as_ref().map(|s| s.head.clone()),
    };
    let mut send = peer::open_record_stream(&connection, &head).await?;
    if let Some(shipment) = shipment {
        shipment.send(&shared, peer, &mut send).await?;
    }
    let mut next = from_gseq;
    let mut first = true;
    loop {
        if shared.gone.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Seen before reading: an append after this wakes the wait below.
        progress.borrow_and_update();
        let s = shared.clone();
        let (bytes, last) =
            tokio::task::spawn_blocking(move || s.read_records(next, app::BATCH_BYTES)).await??;
        if last.is_some() || first {
            first = false;
            let frame =
                ferry_proto::wire::encode_raw(ferry_proto::wire::KIND_RECORD_BATCH, 0, &bytes)?;
            send.write_all(&frame).await?;
            if let Some(last) = last {
                next = last + 1;
                continue;
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), progress.changed()).await;
    }
}
