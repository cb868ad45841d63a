//! The scenarios: one fault each, on a fresh cluster per run, and the
//! checks after it (docs/HARNESS.md, "Scenarios").
//!
//! Every run: build the hosts, start the three `ferryd`, `ferry run` the
//! server on n1, start the monitor and the workload, inject the fault after
//! a warm-up, wait for the takeover (when the fault calls for one), let the
//! workload write on, then check:
//! 1. every acknowledged write is there (`Workload::verify`);
//! 2. no two nodes claimed to serve in one epoch, and the answer counters
//!    show one server at a time;
//! 3. the server's `DIGEST` equals what the acknowledged writes make (when
//!    every write was acknowledged);
//! 4. after healing the fault and a planned `ferry failover`, the other
//!    replica's `DIGEST` equals the primary's.

use crate::cluster::{Cluster, ClusterConfig, ClusterError, REPLICAS, WITNESS};
use crate::monitor::{Monitor, MonitorConfig, Observations};
use crate::report::{Report, RunResult};
use crate::status::AppStatus;
use crate::topology;
use ferry_kv::client::Reconnect;
use ferry_kv::workload::{Stop, Workload, WorkloadConfig};
use nix::sys::signal::Signal;
use std::thread;
use std::time::{Duration, Instant};

/// One fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// kill -9 the protected program on the primary.
    KillApp,
    /// kill -9 `ferryd` on the primary.
    KillFerryd,
    /// kill -9 every process of the primary host and cut its link.
    KillHost,
    /// SIGSTOP the primary's `ferryd` past its lease, then SIGCONT.
    FreezeFerryd,
    /// Drop the primary's replication traffic (UDP) for a while.
    DropReplication,
    /// kill -9 every process of the backup host and cut its link.
    KillBackup,
    /// kill -9 every process of the witness host and cut its link.
    KillWitness,
    /// The backup comes back and, while it catches up, its `ferryd` is
    /// killed again.
    CatchupFault,
    /// `ferry migrate` to the backup, and kill -9 the source host while
    /// the target catches up or the roles switch.
    MigrateKillSource,
}

impl Scenario {
    pub const ALL: [Scenario; 9] = [
        Scenario::KillApp,
        Scenario::KillFerryd,
        Scenario::KillHost,
        Scenario::FreezeFerryd,
        Scenario::DropReplication,
        Scenario::KillBackup,
        Scenario::KillWitness,
        Scenario::CatchupFault,
        Scenario::MigrateKillSource,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::KillApp => "kill-app",
            Scenario::KillFerryd => "kill-ferryd",
            Scenario::KillHost => "kill-host",
            Scenario::FreezeFerryd => "freeze-ferryd",
            Scenario::DropReplication => "drop-replication",
            Scenario::KillBackup => "kill-backup",
            Scenario::KillWitness => "kill-witness",
            Scenario::CatchupFault => "catchup-fault",
            Scenario::MigrateKillSource => "migrate-kill-source",
        }
    }

    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether the backup must take over.
    pub fn fails_over(self) -> bool {
        matches!(
            self,
            Scenario::KillApp
                | Scenario::KillFerryd
                | Scenario::KillHost
                | Scenario::FreezeFerryd
                | Scenario::DropReplication
                | Scenario::MigrateKillSource
        )
    }

    pub fn description(self) -> &'static str {
        match self {
            Scenario::KillApp => "kill -9 the program on the primary; the backup takes over",
            Scenario::KillFerryd => "kill -9 ferryd on the primary; the backup takes over",
            Scenario::KillHost => {
                "kill -9 every process of the primary host and cut its link; the backup takes over"
            }
            Scenario::FreezeFerryd => {
                "SIGSTOP the primary's ferryd past its lease, then SIGCONT; the backup takes over and the old primary never serves again"
            }
            Scenario::DropReplication => {
                "drop the primary's replication packets (nftables) for a while; the backup takes over"
            }
            Scenario::KillBackup => {
                "kill -9 every process of the backup host and cut its link; the primary keeps serving"
            }
            Scenario::KillWitness => {
                "kill -9 every process of the witness host and cut its link; no failover, still serving"
            }
            Scenario::CatchupFault => {
                "the backup host dies and comes back; while it catches up its ferryd is killed again; the primary keeps serving and the backup catches up in the end"
            }
            Scenario::MigrateKillSource => {
                "ferry migrate to the backup; kill -9 every process of the source host while the target catches up or the roles switch; the target serves"
            }
        }
    }
}

/// How long each phase lasts, and the cluster.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Writing before the fault.
    pub warmup: Duration,
    /// The longest a takeover may take.
    pub takeover_timeout: Duration,
    /// Writing after the takeover (or after the fault).
    pub after_fault: Duration,
    /// How long replication packets are dropped.
    pub drop_for: Duration,
    /// How long the frozen ferryd stays resumed under watch.
    pub settle: Duration,
    /// The longest a backup that came back may take to be in sync again
    /// (it may have a whole log to replay).
    pub catchup_timeout: Duration,
    /// Concurrent writers.
    pub clients: usize,
    pub cluster: ClusterConfig,
}

impl Settings {
    /// What CI runs: short phases, two writers.
    pub fn short(cluster: ClusterConfig) -> Settings {
        Settings {
            warmup: Duration::from_secs(1),
            takeover_timeout: Duration::from_secs(10),
            after_fault: Duration::from_secs(1),
            drop_for: Duration::from_secs(3),
            settle: Duration::from_secs(2),
            catchup_timeout: Duration::from_secs(60),
            clients: 2,
            cluster,
        }
    }

    /// The full version.
    pub fn full(cluster: ClusterConfig) -> Settings {
        Settings {
            warmup: Duration::from_secs(3),
            takeover_timeout: Duration::from_secs(30),
            after_fault: Duration::from_secs(3),
            drop_for: Duration::from_secs(6),
            settle: Duration::from_secs(3),
            catchup_timeout: Duration::from_secs(120),
            clients: 8,
            cluster,
        }
    }

    /// How long the workload writes in a run of `s`: long enough to cover
    /// the warm-up, the longest takeover and the writing after it.
    fn write_for(&self, s: Scenario) -> Duration {
        let fault_phase = match s {
            Scenario::FreezeFerryd => self.takeover_timeout + self.settle + Duration::from_secs(1),
            Scenario::DropReplication => self.takeover_timeout.max(self.drop_for),
            Scenario::CatchupFault => Duration::from_secs(4),
            s if s.fails_over() => self.takeover_timeout,
            _ => Duration::from_secs(2),
        };
        self.warmup + fault_phase + self.after_fault
    }
}

/// Where [`run_all`] is.
#[derive(Debug)]
pub enum Progress<'a> {
    /// Run `run` of `scenario` starts; its names carry `id`.
    Started {
        scenario: Scenario,
        run: u32,
        id: &'a str,
    },
    Finished(&'a RunResult),
}

/// Run every scenario of `scenarios` `runs` times; `progress` hears of each
/// run as it starts and ends.
pub fn run_all(
    scenarios: &[Scenario],
    runs: u32,
    settings: &Settings,
    mut progress: impl FnMut(Progress<'_>),
) -> Report {
    let mut results = Vec::new();
    for &scenario in scenarios {
        for run in 1..=runs {
            if crate::guard::interrupted() {
                return Report::new(results);
            }
            let id = topology::new_run_id();
            progress(Progress::Started {
                scenario,
                run,
                id: &id,
            });
            let r = run_once(scenario, run, &id, settings);
            progress(Progress::Finished(&r));
            results.push(r);
        }
    }
    Report::new(results)
}

/// Where a run is when a step fails.
struct Run<'a> {
    scenario: Scenario,
    settings: &'a Settings,
    result: RunResult,
}

impl Run<'_> {
    fn violation(&mut self, what: impl Into<String>) {
        self.result.violations.push(what.into());
    }
    fn unchecked(&mut self, what: impl Into<String>) {
        self.result.unchecked.push(what.into());
    }
    fn note(&mut self, what: impl Into<String>) {
        self.result.notes.push(what.into());
    }
}

/// One run of `scenario` on a fresh cluster whose names carry `id`
/// ([`topology::new_run_id`]), removed at the end.
pub fn run_once(scenario: Scenario, n: u32, id: &str, settings: &Settings) -> RunResult {
    let mut run = Run {
        scenario,
        settings,
        result: RunResult {
            scenario: scenario.name().into(),
            run: n,
            ..RunResult::default()
        },
    };
    run.note(format!("run id {id}"));
    let mut cluster = match Cluster::build(id, settings.cluster.clone()) {
        Ok(c) => c,
        Err(e) => {
            run.unchecked(format!("building the hosts: {e}; nothing checked"));
            return run.result;
        }
    };
    if let Err(e) = body(&mut run, &mut cluster) {
        run.unchecked(format!("{e}; the checks after it were not made"));
    }
    if settings.cluster.keep {
        run.note(format!(
            "kept: namespaces {}{id}-*, files in {}",
            topology::PREFIX,
            cluster.topology().dir().display()
        ));
    } else if let Err(errors) = cluster.down() {
        for e in errors {
            run.violation(format!("cleanup: {e}"));
        }
    }
    run.result
}

/// A failed step of a run.
#[derive(Debug)]
struct StepError(String);

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn step<T>(what: &str, r: Result<T, ClusterError>) -> Result<T, StepError> {
    r.map_err(|e| StepError(format!("{what}: {e}")))
}

fn body(run: &mut Run<'_>, cluster: &mut Cluster) -> Result<(), StepError> {
    let settings = run.settings;
    let scenario = run.scenario;
    let quick = Duration::from_secs(2);
    step("starting ferryd", cluster.start_daemons())?;
    step("ferry run", cluster.run_app(REPLICAS[0]))?;
    let (p0, s0) = cluster
        .primary(quick)
        .ok_or_else(|| StepError("no primary after ferry run".into()))?;
    let b0 = Cluster::other_replica(&p0).to_owned();
    let e0 = s0.epoch;
    run.result.primary_before = Some(p0.clone());

    let monitor = step(
        "starting the monitor",
        Monitor::start(cluster, MonitorConfig::default()),
    )?;
    let wl_config = WorkloadConfig {
        addr: cluster.service_addr(),
        clients: settings.clients,
        stop: Stop::Duration(settings.write_for(scenario)),
        value_bytes: 16,
        keys_per_client: None,
        read_back: false,
        seed: u64::from(run.result.run),
        timeout: Duration::from_secs(2),
        reconnect: Some(Reconnect {
            deadline: settings.takeover_timeout + Duration::from_secs(5),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(200),
        }),
    };
    let writers = step(
        "starting the workload",
        cluster.spawn_in_client(move || Workload::run(wl_config)),
    )?;
    thread::sleep(settings.warmup);

    // The fault.
    let mut t_fault = monitor.now_ms();
    let mut t_resume = None;
    match inject(run, cluster, &monitor, &p0, &b0) {
        Ok(Some(t)) => t_fault = t,
        Ok(None) => {}
        Err(e) => run.unchecked(format!("injecting the fault: {e}")),
    }
    let mut new_primary = None;
    if scenario.fails_over() {
        match cluster.wait_takeover(&p0, e0, settings.takeover_timeout) {
            Ok((p1, e1)) => {
                run.note(format!(
                    "{p1} took over at epoch {e1} (status seen {:.0} ms after the fault)",
                    monitor.now_ms() - t_fault
                ));
                new_primary = Some((p1, e1));
            }
            Err(e) => run.violation(format!("no takeover: {e}")),
        }
    }
    match scenario {
        Scenario::FreezeFerryd => {
            thread::sleep(Duration::from_millis(500));
            if let Err(e) = cluster.signal_daemon(&p0, Signal::SIGCONT) {
                run.unchecked(format!("resuming ferryd on {p0}: {e}"));
            }
            t_resume = Some(monitor.now_ms());
            thread::sleep(settings.settle);
            if let Some((p1, e1)) = &new_primary {
                match cluster.app_status(&p0, quick) {
                    Some(a) if a.claims_serving() && a.epoch >= *e1 => run.violation(format!(
                        "{p0} claims to serve at epoch {} after resuming (the current epoch is {e1})",
                        a.epoch
                    )),
                    Some(a) => run.note(format!(
                        "{p0} after resuming: {} at epoch {}",
                        a.role.as_str(),
                        a.epoch
                    )),
                    None => run.note(format!("{p0} does not answer status after resuming")),
                }
                match cluster.vip_owner() {
                    Some(owner) if &owner == p1 => {}
                    Some(owner) => run.violation(format!(
                        "the client reaches the service address at {owner}'s MAC, not the new primary {p1}'s"
                    )),
                    None => run.unchecked("the client has no neighbour entry for the service address"),
                }
            }
        }
        Scenario::DropReplication => {
            let dropped = Duration::from_secs_f64((monitor.now_ms() - t_fault).max(0.0) / 1000.0);
            if let Some(rest) = settings.drop_for.checked_sub(dropped) {
                thread::sleep(rest);
            }
            if let Err(e) = step("firewall", cluster.firewall(&p0).cloned())
                .and_then(|fw| fw.unblock().map_err(|e| StepError(e.to_string())))
            {
                run.unchecked(format!("letting replication through again: {e}"));
            }
            t_resume = Some(monitor.now_ms());
        }
        s if !s.fails_over() => {
            // The primary may close its gate for a moment (a backup gone):
            // it must serve again, and no other node may take over.
            let start = Instant::now();
            let mut last = None;
            while start.elapsed() < settings.takeover_timeout {
                last = cluster.app_status(&p0, quick);
                if last.as_ref().is_some_and(AppStatus::claims_serving) {
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
            match last {
                Some(a) if a.claims_serving() => {
                    if a.epoch != e0 {
                        run.note(format!("{p0} still serves, epoch {e0} → {}", a.epoch));
                    }
                }
                Some(a) => run.violation(format!(
                    "{p0} does not serve {:?} after the fault: {} at epoch {}, gate {}",
                    settings.takeover_timeout,
                    a.role.as_str(),
                    a.epoch,
                    match a.gate_open {
                        Some(true) => "open",
                        Some(false) => "closed",
                        None => "not reported",
                    }
                )),
                None => run.violation(format!("{p0} does not answer status after the fault")),
            }
            if let Some(b) = cluster
                .app_status(&b0, quick)
                .filter(AppStatus::claims_serving)
            {
                run.violation(format!(
                    "{b0} took over at epoch {} in a scenario without failover",
                    b.epoch
                ));
            }
        }
        _ => {}
    }
    run.result.primary_after = Some(
        new_primary
            .as_ref()
            .map(|(p, _)| p.clone())
            .unwrap_or_else(|| p0.clone()),
    );

    // The writers end by themselves; bounded anyway.
    let deadline = Instant::now() + settings.write_for(scenario) + settings.takeover_timeout * 2;
    while !writers.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let obs = monitor.finish();
    if let Ok(refusals) = cluster.answer_counters().refusals() {
        let who: Vec<String> = refusals
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(h, n)| format!("{h} {n}"))
            .collect();
        if !who.is_empty() {
            run.note(format!(
                "connections refused (RST from the service port) by: {}",
                who.join(", ")
            ));
        }
    }
    let workload = if writers.is_finished() {
        writers.join().ok()
    } else {
        None
    };
    let p1 = new_primary.as_ref().map(|(p, _)| p.as_str());
    check_observations(run, &obs, t_fault, t_resume, &p0, p1);
    if cluster.config().keep {
        let path = cluster.topology().dir().join("observations.json");
        let _ = std::fs::write(&path, serde_json::to_string(&obs).unwrap_or_default());
    }
    let Some(workload) = workload else {
        run.unchecked("the workload did not finish in time: nothing verified");
        return Ok(());
    };
    let wr = workload.report().clone();
    run.result.acknowledged = wr.acknowledged;
    run.result.unknown = wr.unknown;
    run.result.failed = wr.failed;
    run.result.reconnects = wr.reconnects;
    run.note(format!("workload: {wr}"));
    if wr.acknowledged == 0 {
        run.violation("no write was acknowledged");
    }
    // A writer gives up when it cannot reach the service for the whole
    // reconnection deadline (the takeover timeout and 5 s).
    for e in &wr.client_errors {
        run.violation(format!("a writer gave up: {e}"));
    }

    // 1. Every acknowledged write is there.
    let (workload, verified) = match cluster.verify(workload) {
        Ok((w, v)) => (Some(w), Ok(v)),
        Err(e) => (None, Err(e)),
    };
    match verified {
        Ok(v) => {
            run.result.lost = v.lost.len() as u64;
            if !v.is_clean() {
                let first: Vec<String> = v.lost.iter().take(3).map(|l| l.to_string()).collect();
                run.violation(format!(
                    "{} of {} acknowledged writes lost, e.g. {}",
                    v.lost.len(),
                    v.checked,
                    first.join("; ")
                ));
            }
        }
        Err(e) => run.unchecked(format!("the acknowledged writes: {e}")),
    }

    // 3. The state is exactly the acknowledged writes.
    let digest = cluster.digest(settings.takeover_timeout);
    match (&digest, &workload) {
        (Ok(d), Some(workload)) if wr.unknown == 0 && wr.failed == 0 => {
            let want = workload.expected_digest();
            if *d != want {
                run.violation(format!(
                    "the server's DIGEST {d} is not that of the acknowledged writes {want}"
                ));
            }
        }
        (Ok(_), _) => run.note("DIGEST not compared with the writes: some outcomes are unknown"),
        (Err(e), _) => run.unchecked(format!("DIGEST of the primary: {e}")),
    }

    // 4. Heal, and compare the replicas.
    heal(run, cluster, &p0, &b0);
    replicas_equal(run, cluster);
    Ok(())
}

/// Inject the scenario's fault. Returns when it struck (the monitor's
/// clock) if not at once: a fault during an operation starts it first.
fn inject(
    run: &mut Run<'_>,
    cluster: &mut Cluster,
    monitor: &Monitor,
    p0: &str,
    b0: &str,
) -> Result<Option<f64>, ClusterError> {
    match run.scenario {
        Scenario::KillApp => {
            let pids = cluster.kill_app(p0)?;
            run.note(format!("killed ferry-kv on {p0}: pids {pids:?}"));
        }
        Scenario::KillFerryd => cluster.kill_daemon(p0)?,
        Scenario::KillHost => {
            let pids = cluster.kill_host(p0)?;
            run.note(format!("killed host {p0}: {} processes", pids.len()));
        }
        Scenario::FreezeFerryd => cluster.signal_daemon(p0, Signal::SIGSTOP)?,
        Scenario::DropReplication => {
            let port = cluster.config().ferryd_port;
            cluster.firewall(p0)?.block_udp(port)?;
        }
        Scenario::KillBackup => {
            cluster.kill_host(b0)?;
        }
        Scenario::KillWitness => {
            cluster.kill_host(WITNESS)?;
        }
        Scenario::MigrateKillSource => {
            // Early in the catch-up, late in it, around the switch, after
            // it: one moment per run, in turn.
            let delay =
                MIGRATE_KILL_AFTER_MS[(run.result.run as usize - 1) % MIGRATE_KILL_AFTER_MS.len()];
            let app = cluster.config().app.clone();
            let mut migrate = cluster.ferry(p0, &["migrate", &app, "--to", b0])?;
            migrate
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            let mut child = migrate.spawn().map_err(|e| ClusterError::Io {
                what: format!("running ferry migrate on {p0}"),
                source: e,
            })?;
            thread::sleep(Duration::from_millis(delay));
            let t = monitor.now_ms();
            let killed = cluster.kill_host(p0);
            // The host's processes, `ferry migrate` among them, are gone.
            let _ = child.kill();
            let _ = child.wait();
            let pids = killed?;
            run.note(format!(
                "killed host {p0} {delay} ms into ferry migrate --to {b0}: {} processes",
                pids.len()
            ));
            return Ok(Some(t));
        }
        Scenario::CatchupFault => {
            cluster.kill_host(b0)?;
            thread::sleep(Duration::from_secs(1));
            cluster.reboot_host(b0)?;
            // Kill it again while it replays what it missed: as soon as it
            // says it is a backup that is behind, or after 2 s.
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(2) {
                let behind = match (
                    cluster.app_status(b0, Duration::from_secs(1)),
                    cluster.app_status(p0, Duration::from_secs(1)),
                ) {
                    (Some(b), Some(p)) => b.replayed < p.logged,
                    _ => false,
                };
                if behind {
                    run.note(format!("{b0} killed again while catching up"));
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            cluster.kill_daemon(b0)?;
            thread::sleep(Duration::from_millis(500));
            cluster.start_daemon(b0)?;
        }
    }
    Ok(None)
}

/// When `migrate-kill-source` kills the source host, in ms after
/// `ferry migrate` starts, by run.
const MIGRATE_KILL_AFTER_MS: [u64; 5] = [0, 100, 300, 700, 1500];

/// Split-brain and answers from two hosts, and the failover time.
fn check_observations(
    run: &mut Run<'_>,
    obs: &Observations,
    t_fault: f64,
    t_resume: Option<f64>,
    p0: &str,
    new_primary: Option<&str>,
) {
    let scenario = run.scenario;
    run.result.split_brain.extend(obs.split_brain());
    // The service may move once per new epoch in which a node claimed to
    // serve (a takeover, or a switch back that ferryd made by itself); a
    // move without a new epoch is a second server.
    let expected = usize::from(scenario.fails_over());
    let epochs = obs.serving_epochs().len();
    let max_moves = expected.max(epochs.saturating_sub(1));
    run.result
        .split_brain
        .extend(obs.answer_overlaps(max_moves));
    let moves = obs.owners().len().saturating_sub(1);
    if moves > expected {
        let seq: Vec<String> = obs
            .owners()
            .iter()
            .map(|(t, h)| format!("{h} from {t:.0} ms"))
            .collect();
        run.note(format!(
            "the service moved {moves} times, {expected} expected, over {epochs} epochs: {}",
            seq.join(", ")
        ));
    }
    if let Some(t) = t_resume {
        // Give the sample in flight at the resume 300 ms to pass.
        if new_primary.is_some() && obs.answered_after(t + 300.0).contains(p0) {
            run.result.split_brain.push(format!(
                "{p0} sent answers after it was resumed, once another host had taken over"
            ));
        }
    }
    if obs.status.iter().all(|s| s.error.is_some()) {
        run.unchecked("no status answer during the run: two primaries could not be looked for");
    }
    if obs.answers.len() < 2 {
        run.unchecked("the answer counters were not read during the run");
    }
    // After a takeover, the first request the new primary served (the
    // old one may have answered a little longer); else the first request
    // served at all.
    let served = match new_primary {
        Some(p1) => obs.first_served_by(p1, t_fault).or_else(|| {
            run.note(format!(
                "the answer counter of {p1} never grew: failover time taken from any answer"
            ));
            obs.first_served_after(t_fault)
        }),
        None => obs.first_served_after(t_fault),
    };
    match served {
        Some(ms) => run.result.failover_ms = Some(ms),
        None => run.violation("no request was served after the fault"),
    }
    if !scenario.fails_over() {
        if let Some(gap) = obs.longest_gap_after(t_fault) {
            run.note(format!(
                "longest time without an answer after the fault: {gap:.0} ms"
            ));
        }
    }
}

/// Undo the fault so that both replicas run again.
fn heal(run: &mut Run<'_>, cluster: &mut Cluster, p0: &str, b0: &str) {
    let r = match run.scenario {
        Scenario::KillFerryd => cluster.restart_daemon(p0),
        Scenario::KillHost | Scenario::MigrateKillSource => cluster.reboot_host(p0),
        Scenario::KillBackup => cluster.reboot_host(b0),
        Scenario::KillWitness => cluster.reboot_host(WITNESS),
        Scenario::KillApp
        | Scenario::FreezeFerryd
        | Scenario::DropReplication
        | Scenario::CatchupFault => Ok(()),
    };
    if let Err(e) = r {
        run.unchecked(format!("healing the fault: {e}"));
    }
}

/// After a planned failover the other replica answers the same `DIGEST`.
fn replicas_equal(run: &mut Run<'_>, cluster: &Cluster) {
    let timeout = run.settings.takeover_timeout;
    let catchup = run.settings.catchup_timeout;
    let quick = Duration::from_secs(2);
    let result = (|| -> Result<(String, String, String, String), ClusterError> {
        let p = cluster.wait_protected(catchup)?;
        cluster.wait_caught_up(catchup)?;
        let epoch = cluster.app_status(&p, quick).map_or(0, |a| a.epoch);
        let d1 = cluster.digest(timeout)?;
        cluster.failover_within(&p, catchup)?;
        let (q, _) = cluster.wait_takeover(&p, epoch, catchup)?;
        let d2 = cluster.digest(timeout)?;
        Ok((p, d1, q, d2))
    })();
    match result {
        Ok((p, d1, q, d2)) if d1 == d2 => {
            run.note(format!("{p} and {q} have the same DIGEST {d1}"))
        }
        Ok((p, d1, q, d2)) => run.violation(format!(
            "replica state differs: {p} had DIGEST {d1}, {q} after the planned failover {d2}"
        )),
        Err(e) => run.unchecked(format!("comparing the replicas' DIGEST: {e}")),
    }
}
