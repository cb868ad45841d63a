//! Concurrent writers that remember every write the server acknowledged,
//! and the check that none of them was lost (docs/KV.md, "Workload and
//! verification").
//!
//! Each write ends in one of three ways:
//! - **acknowledged**: its `OK version` came back; it must survive;
//! - **unknown**: it was sent, and the connection broke or timed out before
//!   the answer; it may or may not have been applied;
//! - **failed**: it was certainly not applied (never sent, or refused).
//!
//! [`Workload::verify`] reads every key with an acknowledged write back. The
//! key must hold the last acknowledged write (same version, same value), or a
//! later version whose value is one of the key's unknown writes. Anything
//! else is a **lost** write.

use crate::client::{Client, ClientError, Reconnect};
use crate::digest::StateDigest;
use crate::protocol::{Request, Response};
use crate::stats::{Latencies, LatencySummary, SplitMix};
use std::collections::BTreeMap;
use std::fmt;
use std::thread;
use std::time::{Duration, Instant};

/// When the writers stop.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// After this many writes per client.
    Writes(u64),
    /// After this long.
    Duration(Duration),
}

/// What the workload does.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// The server, `host:port`.
    pub addr: String,
    /// Concurrent clients, each on its own connection and thread.
    pub clients: usize,
    pub stop: Stop,
    /// Length of each random value.
    pub value_bytes: usize,
    /// `None`: every write goes to a new key `w<client>-<n>`. `Some(k)`:
    /// client `c` cycles over the keys `w<c>-0` … `w<c>-<k-1>`, overwriting.
    pub keys_per_client: Option<u64>,
    /// After each acknowledged write, read the key back and compare.
    pub read_back: bool,
    /// Seed of the random values.
    pub seed: u64,
    /// Timeout of each connect, read and write.
    pub timeout: Duration,
    /// Reconnect after a broken connection (`None`: a client whose
    /// connection breaks and cannot connect again at once stops).
    pub reconnect: Option<Reconnect>,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            addr: "127.0.0.1:7070".into(),
            clients: 4,
            stop: Stop::Writes(100),
            value_bytes: 16,
            keys_per_client: None,
            read_back: false,
            seed: 1,
            timeout: Duration::from_secs(5),
            reconnect: Some(Reconnect::default()),
        }
    }
}

/// What one key went through, in the order its client wrote it.
#[derive(Clone, Debug, Default)]
struct KeyRecord {
    /// The last acknowledged write: version and value.
    acked: Option<(u64, String)>,
    /// Values of writes to the key whose outcome is unknown.
    unknown: Vec<String>,
}

/// The counts and timings of a run.
#[derive(Clone, Debug, Default)]
pub struct WorkloadReport {
    pub attempted: u64,
    pub acknowledged: u64,
    pub unknown: u64,
    pub failed: u64,
    /// Read-backs done, and those that did not return the write just
    /// acknowledged.
    pub reads: u64,
    pub read_mismatches: u64,
    /// Connections opened beyond the first of each client.
    pub reconnects: u64,
    pub elapsed: Duration,
    /// Latency of each acknowledged write.
    pub latencies: Latencies,
    /// Why clients stopped early, one line each.
    pub client_errors: Vec<String>,
}

impl WorkloadReport {
    /// Acknowledged writes per second.
    pub fn throughput(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.acknowledged as f64 / s
        } else {
            0.0
        }
    }

    /// p50, p99 and max write latency.
    pub fn latency(&self) -> LatencySummary {
        self.latencies.summary()
    }
}

impl fmt::Display for WorkloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = self.latency();
        write!(
            f,
            "{} writes attempted: {} acknowledged, {} unknown, {} failed; {:.0} writes/s; \
             latency p50 {:?} p99 {:?} max {:?}; {} reconnects",
            self.attempted,
            self.acknowledged,
            self.unknown,
            self.failed,
            self.throughput(),
            l.p50,
            l.p99,
            l.max,
            self.reconnects
        )?;
        if self.reads > 0 {
            write!(
                f,
                "; {} read-backs, {} mismatched",
                self.reads, self.read_mismatches
            )?;
        }
        for e in &self.client_errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Why an acknowledged write counts as lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LostReason {
    /// The key is not there.
    Missing,
    /// The key holds an older version.
    Older,
    /// The key holds a value no write of the workload could have left.
    Different,
}

/// An acknowledged write that did not survive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostWrite {
    pub key: String,
    pub acked_version: u64,
    pub reason: LostReason,
    /// What the key held: version and value.
    pub found: Option<(u64, String)>,
}

impl fmt::Display for LostWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: acknowledged at version {}, ",
            self.key, self.acked_version
        )?;
        match (&self.reason, &self.found) {
            (LostReason::Missing, _) | (_, None) => write!(f, "now missing"),
            (LostReason::Older, Some((v, _))) => write!(f, "now holds older version {v}"),
            (LostReason::Different, Some((v, value))) => {
                let shown: String = value.chars().take(40).collect();
                write!(f, "now holds version {v} with another value {shown:?}")
            }
        }
    }
}

/// The outcome of [`Workload::verify`].
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    /// Keys with an acknowledged write, all read back.
    pub checked: u64,
    pub lost: Vec<LostWrite>,
    /// Keys whose value came from a write with an unknown outcome, applied
    /// after all.
    pub unknown_applied: u64,
}

impl VerifyReport {
    /// No acknowledged write was lost.
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} acknowledged keys checked, {} lost, {} unknown writes found applied",
            self.checked,
            self.lost.len(),
            self.unknown_applied
        )?;
        for l in self.lost.iter().take(20) {
            write!(f, "\n  lost {l}")?;
        }
        if self.lost.len() > 20 {
            write!(f, "\n  … and {} more", self.lost.len() - 20)?;
        }
        Ok(())
    }
}

/// A finished run: what every write became.
#[derive(Debug)]
pub struct Workload {
    config: WorkloadConfig,
    keys: BTreeMap<String, KeyRecord>,
    report: WorkloadReport,
}

/// What one client thread brings back.
struct ClientRun {
    keys: BTreeMap<String, KeyRecord>,
    report: WorkloadReport,
}

impl Workload {
    /// Run the writers to the end and collect what happened. Clients that
    /// cannot connect, or give up reconnecting, stop early; their reason is
    /// in the report.
    pub fn run(config: WorkloadConfig) -> Workload {
        let start = Instant::now();
        let handles: Vec<_> = (0..config.clients.max(1))
            .map(|c| {
                let config = config.clone();
                thread::spawn(move || run_client(&config, c, start))
            })
            .collect();
        let mut keys = BTreeMap::new();
        let mut report = WorkloadReport::default();
        for (c, h) in handles.into_iter().enumerate() {
            let run = match h.join() {
                Ok(run) => run,
                Err(_) => {
                    report.client_errors.push(format!("client {c} panicked"));
                    continue;
                }
            };
            keys.extend(run.keys);
            let r = run.report;
            report.attempted += r.attempted;
            report.acknowledged += r.acknowledged;
            report.unknown += r.unknown;
            report.failed += r.failed;
            report.reads += r.reads;
            report.read_mismatches += r.read_mismatches;
            report.reconnects += r.reconnects;
            report.latencies.merge(r.latencies);
            report.client_errors.extend(r.client_errors);
        }
        report.elapsed = start.elapsed();
        Workload {
            config,
            keys,
            report,
        }
    }

    /// Counts and timings.
    pub fn report(&self) -> &WorkloadReport {
        &self.report
    }

    /// The configuration it ran with.
    pub fn config(&self) -> &WorkloadConfig {
        &self.config
    }

    /// Every key's last acknowledged write: key, version, value.
    pub fn acknowledged(&self) -> impl Iterator<Item = (&str, u64, &str)> {
        self.keys.iter().filter_map(|(k, r)| {
            r.acked
                .as_ref()
                .map(|(v, value)| (k.as_str(), *v, value.as_str()))
        })
    }

    /// The `DIGEST` a server that applied exactly the acknowledged writes
    /// (and nothing else, starting empty) answers. Meaningful when every write
    /// was acknowledged.
    pub fn expected_digest(&self) -> String {
        let mut d = StateDigest::new();
        let mut counter = 0;
        for (k, v, value) in self.acknowledged() {
            d.add(k.as_bytes(), v, value.as_bytes());
            counter = counter.max(v);
        }
        d.hex(counter)
    }

    /// Read every key with an acknowledged write back from `addr` and report
    /// the writes that were lost. Reads are retried through reconnections
    /// when the configuration reconnects.
    pub fn verify(&self, addr: &str) -> Result<VerifyReport, ClientError> {
        let mut client = match self.config.reconnect {
            Some(p) => Client::connect_reconnecting(addr, self.config.timeout, p)?,
            None => Client::connect(addr, self.config.timeout)?,
        };
        let checked: Vec<(&String, &KeyRecord, &(u64, String))> = self
            .keys
            .iter()
            .filter_map(|(k, r)| r.acked.as_ref().map(|a| (k, r, a)))
            .collect();
        let mut report = VerifyReport::default();
        let mut answers = Vec::new();
        for batch in checked.chunks(128) {
            let requests: Vec<Request> = batch
                .iter()
                .map(|(k, _, _)| Request::Get { key: (*k).clone() })
                .collect();
            let start = Instant::now();
            loop {
                answers.clear();
                match client.pipeline_into(&requests, &mut answers) {
                    Ok(()) => break,
                    Err(e) => match self.config.reconnect {
                        Some(p) if e.outcome_unknown() && start.elapsed() < p.deadline => continue,
                        _ => return Err(e),
                    },
                }
            }
            for ((key, record, (acked_version, acked_value)), answer) in batch.iter().zip(&answers)
            {
                report.checked += 1;
                let found = match answer {
                    Response::Value { version, value } => Some((*version, value.clone())),
                    Response::Missing => None,
                    other => {
                        return Err(ClientError::Unexpected {
                            addr: addr.to_owned(),
                            request: "GET",
                            line: other.to_string(),
                        })
                    }
                };
                let reason = match &found {
                    None => Some(LostReason::Missing),
                    Some((v, value)) if v == acked_version && value == acked_value => None,
                    Some((v, value)) if v > acked_version && record.unknown.contains(value) => {
                        report.unknown_applied += 1;
                        None
                    }
                    Some((v, _)) if v < acked_version => Some(LostReason::Older),
                    Some(_) => Some(LostReason::Different),
                };
                if let Some(reason) = reason {
                    report.lost.push(LostWrite {
                        key: (*key).clone(),
                        acked_version: *acked_version,
                        reason,
                        found,
                    });
                }
            }
        }
        Ok(report)
    }
}

fn run_client(config: &WorkloadConfig, c: usize, start: Instant) -> ClientRun {
    let mut run = ClientRun {
        keys: BTreeMap::new(),
        report: WorkloadReport::default(),
    };
    let connected = match config.reconnect {
        Some(p) => Client::connect_reconnecting(&config.addr, config.timeout, p),
        None => Client::connect(&config.addr, config.timeout),
    };
    let mut client = match connected {
        Ok(client) => client,
        Err(e) => {
            run.report.client_errors.push(format!("client {c}: {e}"));
            return run;
        }
    };
    let mut rng = SplitMix::new(config.seed ^ (c as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut n: u64 = 0;
    loop {
        let done = match config.stop {
            Stop::Writes(total) => n >= total,
            Stop::Duration(d) => start.elapsed() >= d,
        };
        if done {
            break;
        }
        let key = match config.keys_per_client {
            Some(k) => format!("w{c}-{}", n % k.max(1)),
            None => format!("w{c}-{n}"),
        };
        n += 1;
        let value = rng.value(config.value_bytes);
        run.report.attempted += 1;
        let t0 = Instant::now();
        let outcome = client.set(&key, &value);
        let latency = t0.elapsed();
        let record = run.keys.entry(key.clone()).or_default();
        match outcome {
            Ok(version) => {
                run.report.acknowledged += 1;
                run.report.latencies.record(latency);
                record.acked = Some((version, value.clone()));
                if config.read_back {
                    run.report.reads += 1;
                    match client.get(&key) {
                        Ok(Some((v, got))) if v == version && got == value => {}
                        Ok(_) => run.report.read_mismatches += 1,
                        // A broken read says nothing about the write.
                        Err(_) => {}
                    }
                }
            }
            Err(e) if e.outcome_unknown() => {
                run.report.unknown += 1;
                record.unknown.push(value);
            }
            Err(e) => {
                run.report.failed += 1;
                if record.acked.is_none() && record.unknown.is_empty() {
                    run.keys.remove(&key);
                }
                if !matches!(e, ClientError::Refused { .. }) {
                    run.report.client_errors.push(format!("client {c}: {e}"));
                    break;
                }
            }
        }
    }
    run.report.reconnects = client.connects().saturating_sub(1);
    run
}
