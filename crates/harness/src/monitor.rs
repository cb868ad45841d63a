//! Watching a run while faults happen, and what the observations show.
//!
//! Three kinds of threads record with times relative to the monitor's
//! start:
//! - one per node polls `ferry status --json` (a node that does not
//!   answer, frozen or dead, delays only its own thread);
//! - one reads every host's answer counter (data segments leaving the host
//!   from the service port);
//! - a probe in the client host sends `PING` to the service address every
//!   few milliseconds, on one connection while it works, a new one after an
//!   error.
//!
//! [`Observations`] turns the samples into the checks: two nodes claiming to
//! serve in one epoch, answers from an old host after a new one took over,
//! the time from a fault to the first request served after it.

use crate::cluster::{Cluster, ClusterError, StatusReader};
use crate::fault::AnswerCounters;
use crate::netns;
use crate::status::AppStatus;
use ferry_kv::client::Client;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// One status answer (or its absence).
#[derive(Debug, Clone, Serialize)]
pub struct StatusSample {
    pub at_ms: f64,
    pub node: String,
    pub role: Option<String>,
    pub epoch: Option<u64>,
    pub serving: bool,
    pub error: Option<String>,
}

impl StatusSample {
    pub fn from_app(at_ms: f64, node: &str, a: Option<&AppStatus>, error: Option<String>) -> Self {
        StatusSample {
            at_ms,
            node: node.to_owned(),
            role: a.map(|a| a.role.as_str().to_owned()),
            epoch: a.map(|a| a.epoch),
            serving: a.is_some_and(AppStatus::claims_serving),
            error,
        }
    }
}

/// The answer counters of every host at one time (`None`: unreadable).
#[derive(Debug, Clone, Serialize)]
pub struct AnswerSample {
    pub at_ms: f64,
    pub counts: BTreeMap<String, Option<u64>>,
}

/// One probe request.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProbeSample {
    pub sent_ms: f64,
    pub done_ms: f64,
    pub ok: bool,
}

/// Everything recorded.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Observations {
    pub status: Vec<StatusSample>,
    pub answers: Vec<AnswerSample>,
    pub probes: Vec<ProbeSample>,
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// The running monitor threads.
#[derive(Debug)]
pub struct Monitor {
    start: Instant,
    stop: Arc<AtomicBool>,
    handles: Vec<thread::JoinHandle<()>>,
    status: Arc<Mutex<Vec<StatusSample>>>,
    answers: Arc<Mutex<Vec<AnswerSample>>>,
    probes: Arc<Mutex<Vec<ProbeSample>>>,
}

/// How often each thread looks.
#[derive(Debug, Clone, Copy)]
pub struct MonitorConfig {
    pub status_every: Duration,
    pub status_timeout: Duration,
    pub answers_every: Duration,
    pub probe_every: Duration,
    pub probe_timeout: Duration,
    /// Poll `status` (false where no ferryd runs).
    pub poll_status: bool,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            status_every: Duration::from_millis(100),
            status_timeout: Duration::from_millis(1500),
            answers_every: Duration::from_millis(100),
            probe_every: Duration::from_millis(10),
            probe_timeout: Duration::from_millis(250),
            poll_status: true,
        }
    }
}

impl Monitor {
    /// Start watching `cluster`.
    pub fn start(cluster: &Cluster, config: MonitorConfig) -> Result<Monitor, ClusterError> {
        let counters = cluster.answer_counters().clone();
        let reader = config.poll_status.then(|| cluster.status_reader());
        Monitor::start_with(
            reader,
            counters,
            cluster.client_ns()?,
            cluster.service_addr(),
            config,
        )
    }

    /// Start watching: `reader` for status (none: no status polling), the
    /// counters for answers, a probe from namespace `client_ns` to `addr`.
    pub fn start_with(
        reader: Option<StatusReader>,
        counters: AnswerCounters,
        client_ns: String,
        addr: String,
        config: MonitorConfig,
    ) -> Result<Monitor, ClusterError> {
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let mut m = Monitor {
            start,
            stop: stop.clone(),
            handles: Vec::new(),
            status: Arc::default(),
            answers: Arc::default(),
            probes: Arc::default(),
        };
        let spawn_err = |source| ClusterError::Io {
            what: "starting a monitor thread".into(),
            source,
        };
        if let Some(reader) = reader {
            let names: Vec<String> = reader.nodes().map(str::to_owned).collect();
            for node in names {
                let (reader, stop, out) = (reader.clone(), stop.clone(), m.status.clone());
                let h = thread::Builder::new()
                    .name(format!("status-{node}"))
                    .spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            let t = Instant::now();
                            let s = match reader.status(&node, config.status_timeout) {
                                Ok(s) => {
                                    let at = ms_since(start);
                                    StatusSample::from_app(at, &node, s.app(reader.app()), None)
                                }
                                Err(e) => StatusSample::from_app(
                                    ms_since(start),
                                    &node,
                                    None,
                                    Some(e.to_string()),
                                ),
                            };
                            out.lock().unwrap_or_else(|e| e.into_inner()).push(s);
                            if let Some(rest) = config.status_every.checked_sub(t.elapsed()) {
                                thread::sleep(rest);
                            }
                        }
                    })
                    .map_err(spawn_err)?;
                m.handles.push(h);
            }
        }
        {
            let (stop, out) = (stop.clone(), m.answers.clone());
            let h = thread::Builder::new()
                .name("answers".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        let counts = match counters.read() {
                            Ok(c) => c.into_iter().map(|(h, n)| (h, Some(n))).collect(),
                            Err(_) => BTreeMap::new(),
                        };
                        let s = AnswerSample {
                            at_ms: ms_since(start),
                            counts,
                        };
                        out.lock().unwrap_or_else(|e| e.into_inner()).push(s);
                        if let Some(rest) = config.answers_every.checked_sub(t.elapsed()) {
                            thread::sleep(rest);
                        }
                    }
                })
                .map_err(spawn_err)?;
            m.handles.push(h);
        }
        {
            let (stop, out) = (stop.clone(), m.probes.clone());
            let h = thread::Builder::new()
                .name("probe".into())
                .spawn(move || {
                    if netns::enter(&client_ns).is_err() {
                        return;
                    }
                    let mut client: Option<Client> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let sent_ms = ms_since(start);
                        let ok = match client.as_mut() {
                            Some(c) => c.ping().is_ok(),
                            None => match Client::connect(&addr, config.probe_timeout) {
                                Ok(mut c) => {
                                    let ok = c.ping().is_ok();
                                    client = Some(c);
                                    ok
                                }
                                Err(_) => false,
                            },
                        };
                        if !ok {
                            client = None;
                        }
                        let s = ProbeSample {
                            sent_ms,
                            done_ms: ms_since(start),
                            ok,
                        };
                        out.lock().unwrap_or_else(|e| e.into_inner()).push(s);
                        thread::sleep(config.probe_every);
                    }
                })
                .map_err(spawn_err)?;
            m.handles.push(h);
        }
        Ok(m)
    }

    /// Milliseconds since the monitor started (the time base of samples).
    pub fn now_ms(&self) -> f64 {
        ms_since(self.start)
    }

    /// Stop every thread and return what they saw.
    pub fn finish(mut self) -> Observations {
        self.stop.store(true, Ordering::Relaxed);
        for h in std::mem::take(&mut self.handles) {
            let _ = h.join();
        }
        Observations {
            status: take(&self.status),
            answers: take(&self.answers),
            probes: take(&self.probes),
        }
    }
}

impl Drop for Monitor {
    /// A monitor dropped without [`Monitor::finish`] (a run that failed
    /// half-way) stops its threads too.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn take<T>(m: &Mutex<Vec<T>>) -> Vec<T> {
    std::mem::take(&mut *m.lock().unwrap_or_else(|e| e.into_inner()))
}

impl Observations {
    /// Epochs in which two different nodes claimed to serve (primary with
    /// an open gate), one line each.
    pub fn split_brain(&self) -> Vec<String> {
        let mut by_epoch: BTreeMap<u64, BTreeMap<String, f64>> = BTreeMap::new();
        for s in self.status.iter().filter(|s| s.serving) {
            if let Some(e) = s.epoch {
                by_epoch
                    .entry(e)
                    .or_default()
                    .entry(s.node.clone())
                    .or_insert(s.at_ms);
            }
        }
        by_epoch
            .into_iter()
            .filter(|(_, nodes)| nodes.len() > 1)
            .map(|(e, nodes)| {
                let who: Vec<String> = nodes
                    .iter()
                    .map(|(n, t)| format!("{n} (from {t:.0} ms)"))
                    .collect();
                format!(
                    "epoch {e}: {} claimed to serve as primary",
                    who.join(" and ")
                )
            })
            .collect()
    }

    /// The epochs in which some node claimed to serve.
    pub fn serving_epochs(&self) -> BTreeSet<u64> {
        self.status
            .iter()
            .filter(|s| s.serving)
            .filter_map(|s| s.epoch)
            .collect()
    }

    /// The hosts whose answer counter grew between each pair of
    /// consecutive samples, with the time of the later sample.
    pub fn answering(&self) -> Vec<(f64, BTreeSet<String>)> {
        let mut last: BTreeMap<String, u64> = BTreeMap::new();
        let mut out = Vec::new();
        for s in &self.answers {
            let mut grew = BTreeSet::new();
            for (h, c) in &s.counts {
                let Some(c) = *c else { continue };
                if let Some(prev) = last.insert(h.clone(), c) {
                    if c > prev {
                        grew.insert(h.clone());
                    }
                }
            }
            out.push((s.at_ms, grew));
        }
        out
    }

    /// The hosts that served, in order: each interval in which exactly one
    /// host answered names the owner, and a change of owner is a move.
    /// Returns (time, host) at each start of ownership.
    pub fn owners(&self) -> Vec<(f64, String)> {
        let mut out: Vec<(f64, String)> = Vec::new();
        for (at, grew) in self.answering() {
            if grew.len() == 1 {
                let h = grew.into_iter().next().unwrap_or_default();
                if out.last().map(|(_, o)| o) != Some(&h) {
                    out.push((at, h));
                }
            }
        }
        out
    }

    /// Signs of two servers at once in the answer counters: the service may
    /// move `max_moves` times, and the sample interval of each move may show
    /// both hosts; more intervals with two hosts than moves, or more moves
    /// than allowed (a host answering again after losing the service), are
    /// reported.
    pub fn answer_overlaps(&self, max_moves: usize) -> Vec<String> {
        let owners = self.owners();
        let moves = owners.len().saturating_sub(1);
        let both: Vec<(f64, BTreeSet<String>)> = self
            .answering()
            .into_iter()
            .filter(|(_, g)| g.len() > 1)
            .collect();
        let mut events = Vec::new();
        if both.len() > moves {
            let at: Vec<String> = both
                .iter()
                .map(|(t, g)| {
                    format!(
                        "{} at {t:.0} ms",
                        g.iter().cloned().collect::<Vec<_>>().join("+")
                    )
                })
                .collect();
            events.push(format!(
                "{} sample intervals in which two hosts answered, for {moves} moves of the service: {}",
                both.len(),
                at.join(", ")
            ));
        }
        if moves > max_moves {
            let seq: Vec<String> = owners
                .iter()
                .map(|(t, h)| format!("{h} from {t:.0} ms"))
                .collect();
            events.push(format!(
                "the service moved {moves} times (at most {max_moves} expected): {}",
                seq.join(", ")
            ));
        }
        events
    }

    /// Hosts whose answer counter grew after `t_ms`.
    pub fn answered_after(&self, t_ms: f64) -> BTreeSet<String> {
        self.answering()
            .into_iter()
            .filter(|(at, _)| *at > t_ms)
            .flat_map(|(_, g)| g)
            .collect()
    }

    /// Milliseconds from `t_ms` to the end of the first probe sent at or
    /// after `t_ms` that was answered.
    pub fn first_served_after(&self, t_ms: f64) -> Option<f64> {
        self.probes
            .iter()
            .find(|p| p.ok && p.sent_ms >= t_ms)
            .map(|p| p.done_ms - t_ms)
    }

    /// Milliseconds from `t_ms` to the first probe answered once `host`
    /// had started answering: the probe sent after `t_ms` and ended after
    /// the start of the sample interval in which `host`'s answer counter
    /// first grew after `t_ms`. `None` when `host` never answered.
    pub fn first_served_by(&self, host: &str, t_ms: f64) -> Option<f64> {
        let mut prev = t_ms;
        let mut start = None;
        for (at, grew) in self.answering() {
            if at > t_ms && grew.contains(host) {
                start = Some(prev.max(t_ms));
                break;
            }
            prev = at;
        }
        let start = start?;
        self.probes
            .iter()
            .find(|p| p.ok && p.sent_ms >= t_ms && p.done_ms >= start)
            .map(|p| p.done_ms - t_ms)
    }

    /// The longest time between two answered probes after `t_ms` (or from
    /// `t_ms` to the first), in milliseconds.
    pub fn longest_gap_after(&self, t_ms: f64) -> Option<f64> {
        let mut last = t_ms;
        let mut gap: Option<f64> = None;
        for p in self.probes.iter().filter(|p| p.ok && p.sent_ms >= t_ms) {
            let g = p.done_ms - last;
            gap = Some(gap.map_or(g, |x: f64| x.max(g)));
            last = p.done_ms;
        }
        gap
    }

    /// Answered probes sent after `t_ms`.
    pub fn served_after(&self, t_ms: f64) -> usize {
        self.probes
            .iter()
            .filter(|p| p.ok && p.sent_ms >= t_ms)
            .count()
    }
}

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)]
mod tests {
    use super::*;

    fn st(at: f64, node: &str, epoch: u64, role: &str, serving: bool) -> StatusSample {
        StatusSample {
            at_ms: at,
            node: node.into(),
            role: Some(role.into()),
            epoch: Some(epoch),
            serving,
            error: None,
        }
    }

    #[test]
    fn two_primaries_in_one_epoch_is_split_brain() {
        let mut o = Observations::default();
        o.status = vec![
            st(0.0, "n1", 1, "primary", true),
            st(0.0, "n2", 1, "backup", false),
            st(100.0, "n2", 2, "primary", true),
            st(150.0, "n1", 1, "primary", true), // stale, lower epoch: not the same epoch
        ];
        assert!(o.split_brain().is_empty());
        o.status.push(st(200.0, "n1", 2, "primary", true));
        o.status.push(st(210.0, "n1", 2, "primary", false)); // gate closed: not serving
        let sb = o.split_brain();
        assert_eq!(sb.len(), 1, "{sb:?}");
        assert!(
            sb[0].starts_with("epoch 2: n1 (from 200 ms) and n2 (from 100 ms)"),
            "{sb:?}"
        );
    }

    fn answers(points: &[(f64, u64, u64)]) -> Vec<AnswerSample> {
        points
            .iter()
            .map(|&(t, a, b)| AnswerSample {
                at_ms: t,
                counts: [("n1".to_owned(), Some(a)), ("n2".to_owned(), Some(b))]
                    .into_iter()
                    .collect(),
            })
            .collect()
    }

    #[test]
    fn one_move_is_fine_answers_after_it_are_not() {
        let mut o = Observations::default();
        // n1 serves, then in one interval both, then n2 only.
        o.answers = answers(&[
            (0.0, 0, 0),
            (100.0, 5, 0),
            (200.0, 9, 0),
            (300.0, 10, 2),
            (400.0, 10, 8),
            (500.0, 10, 12),
        ]);
        assert!(
            o.answer_overlaps(1).is_empty(),
            "{:?}",
            o.answer_overlaps(1)
        );
        assert_eq!(o.owners().len(), 2);
        assert_eq!(
            o.answered_after(300.0),
            ["n2".to_owned()].into_iter().collect()
        );
        // No move allowed: the move is reported.
        assert_eq!(o.answer_overlaps(0).len(), 1);
        // n1 answers again later, alongside n2: a second server.
        o.answers
            .extend(answers(&[(600.0, 11, 15), (700.0, 11, 16)]));
        let ov = o.answer_overlaps(1);
        assert_eq!(ov.len(), 1, "{ov:?}");
        assert!(ov[0].starts_with("2 sample intervals"), "{ov:?}");
        // n1 takes it back alone: a second move.
        o.answers.extend(answers(&[(800.0, 14, 16)]));
        assert!(o
            .answer_overlaps(1)
            .iter()
            .any(|e| e.starts_with("the service moved 2 times")));
        // A missing reading is skipped, not taken as zero.
        let mut o = Observations::default();
        o.answers = answers(&[(0.0, 1, 0), (100.0, 2, 0)]);
        o.answers.push(AnswerSample {
            at_ms: 200.0,
            counts: [("n1".to_owned(), None), ("n2".to_owned(), Some(0))]
                .into_iter()
                .collect(),
        });
        o.answers.extend(answers(&[(300.0, 3, 0)]));
        assert!(o.answer_overlaps(0).is_empty());
    }

    #[test]
    fn failover_time_is_the_first_answered_probe_after_the_fault() {
        let mut o = Observations::default();
        let p = |s: f64, d: f64, ok: bool| ProbeSample {
            sent_ms: s,
            done_ms: d,
            ok,
        };
        o.probes = vec![
            p(0.0, 1.0, true),
            p(990.0, 999.0, true), // sent before the fault
            p(1005.0, 1255.0, false),
            p(1265.0, 1515.0, false),
            p(1525.0, 1530.0, true),
            p(1540.0, 1541.0, true),
        ];
        assert_eq!(o.first_served_after(1000.0), Some(530.0));
        assert_eq!(o.longest_gap_after(1000.0), Some(530.0));
        assert_eq!(o.served_after(1000.0), 2);
        assert_eq!(o.first_served_after(2000.0), None);
        // The old host still answered right after the fault; n2 starts in
        // the interval (1400, 1500].
        o.answers = answers(&[
            (900.0, 10, 0),
            (1100.0, 11, 0),
            (1400.0, 11, 0),
            (1500.0, 11, 3),
        ]);
        assert_eq!(o.first_served_by("n2", 1000.0), Some(530.0));
        o.probes.insert(2, p(1010.0, 1020.0, true));
        assert_eq!(o.first_served_after(1000.0), Some(20.0));
        assert_eq!(o.first_served_by("n2", 1000.0), Some(530.0));
        assert_eq!(o.first_served_by("n1", 1000.0), Some(20.0));
        assert_eq!(o.first_served_by("n3", 1000.0), None);
    }
}
