//! One protected application on this node: its segment log, the thread
//! that drives its program (a primary it drains or a replica it feeds), and
//! on a backup the thread that makes received records durable.
//!
//! ```text
//! primary:  Program ─drain→ runner ─append→ SegmentLog ─(streamer task)→ backups
//! backup:   record stream → writer ─append+sync→ SegmentLog ─(runner: read, feed)→ replica
//! ```
//!
//! Both threads talk to the core through [`AppEvent`]s; the core talks to
//! them through [`RunnerCmd`] and [`WriterMsg`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ferry_host::program::{Output, Program, ProgramError};
use ferry_log::{LogError, SegmentLog, SegmentOptions};
use ferry_proto::log::{start_record, StartInfo};
use ferry_proto::Kind;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};
use zerocopy::{FromBytes, IntoBytes};

use crate::images::{self, Policy};

/// How many bytes of records travel in one batch.
pub const BATCH_BYTES: usize = 256 << 10;

/// What an application's threads tell the core.
#[derive(Debug)]
pub enum AppEvent {
    /// Primary: records up to `gseq` are in the ring... and now in the log.
    Logged { app: String, gseq: u64 },
    /// Primary: the program is paused after `gseq`.
    Paused { app: String, gseq: u64 },
    /// A program or replica started with this root pid.
    Started { app: String, pid: i32 },
    /// Primary: the program's root process ended. `killed`: by a signal
    /// (a death, not an exit through the log); `last`: the last record.
    Ended {
        app: String,
        killed: bool,
        status: i32,
        last: u64,
    },
    /// The replica went live (promotion done) or could not.
    WentLive {
        app: String,
        result: Result<(), String>,
    },
    /// Backup: the log is durable up to `gseq`.
    Durable { app: String, gseq: u64 },
    /// Backup: the first durable report of the stream asked for by a resync.
    Resynced { app: String, gseq: u64 },
    /// Backup: the resync stream ended before any record was durable.
    ResyncFailed { app: String },
    /// Backup: truncated for a resync; fetch from `from_gseq`. `cut`:
    /// records were removed (a replica fed them must start again).
    Fetch {
        app: String,
        node: String,
        from_gseq: u64,
        cut: bool,
    },
    /// The log is damaged (or a batch could not be stored) after `intact`.
    Corrupt { app: String, intact: u64 },
    /// The start record is in the log: a replica can start.
    HaveStart { app: String },
    /// Backup: the log starts after a received image: the replica starts
    /// (again) from it.
    Installed { app: String },
    /// An image at `at` arrived from `from`, beside the log, which this
    /// node keeps. Backup: a replica behind it starts again from it.
    /// Primary: the image came from a backup, checked against the log;
    /// the log is trimmed to it.
    Supplied { app: String, from: String, at: u64 },
    /// An image from `from` did not arrive whole, or did not match the log.
    SupplyFailed { app: String, from: String },
    /// Backup: a new image of the replica.
    Checkpointed { app: String },
    /// Backup: the record stream `gen` from `from` ended.
    StreamEnded { app: String, from: String, gen: u64 },
}

/// The last gseq appended to the log, for waiters of both kinds.
pub struct Progress {
    last: Mutex<Option<u64>>,
    cond: Condvar,
    watch: watch::Sender<Option<u64>>,
}

impl Progress {
    fn new(last: Option<u64>) -> Progress {
        Progress {
            last: Mutex::new(last),
            cond: Condvar::new(),
            watch: watch::Sender::new(last),
        }
    }

    /// Publish a new last gseq (or `None` after a reset).
    pub fn set(&self, last: Option<u64>) {
        *self.last.lock().unwrap() = last;
        self.cond.notify_all();
        self.watch.send_replace(last);
    }

    /// The last gseq appended.
    pub fn get(&self) -> Option<u64> {
        *self.last.lock().unwrap()
    }

    /// Wait up to `timeout` for it to differ from `seen`.
    pub fn wait_past(&self, seen: Option<u64>, timeout: Duration) {
        let g = self.last.lock().unwrap();
        let _ = self.cond.wait_timeout_while(g, timeout, |v| *v == seen);
    }

    /// A watcher for async tasks.
    pub fn subscribe(&self) -> watch::Receiver<Option<u64>> {
        self.watch.subscribe()
    }
}

/// What the threads and tasks of an application share.
pub struct AppShared {
    /// The application's name.
    pub name: String,
    /// Its directory, DATA/apps/NAME.
    pub dir: PathBuf,
    /// Its log; `None` on a witness.
    pub log: Mutex<SegmentLog>,
    /// The last gseq appended to the log.
    pub progress: Progress,
    /// Whether this node's program is the primary (the writer must not
    /// append then). Changed under the log lock.
    pub primary: AtomicBool,
    /// The record stream the writer accepts.
    pub stream_gen: AtomicU64,
    /// Replica: the last gseq replayed; primary: the last drained.
    pub replayed: AtomicU64,
    /// Root pid of the local program, 0 if none.
    pub pid: AtomicI32,
    /// Root pid of the last primary program killed here, once its sockets
    /// are shut down (its clients told their connections are over).
    pub sockets_shut: AtomicI32,
    /// The application's service address.
    pub vip: Mutex<Option<String>>,
    /// Set when the application is forgotten: threads and tasks end.
    pub gone: AtomicBool,
    /// When the replica is checkpointed.
    pub policy: Policy,
    /// Long work under way on the images, for `ferry status`.
    under_way: Mutex<Vec<(u64, UnderWay)>>,
    next_work: AtomicU64,
}

/// Long work under way on an application's images.
#[derive(Clone, Debug)]
pub struct UnderWay {
    /// What, in a few words (`sending an image to n2`).
    pub what: String,
    /// The image's position.
    pub at: u64,
    /// The work is receiving these images (the one at `at` last, after
    /// those it is incremental to); empty for other work.
    pub receipt: Vec<u64>,
    /// Bytes done and in all (0: not known).
    pub done: u64,
    pub total: u64,
    pub since: Instant,
}

/// How often long work says in the log how far it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Work listed in [`AppShared::under_way`] until this is dropped.
pub struct Working<'a> {
    shared: &'a AppShared,
    id: u64,
    said: Instant,
}

impl Working<'_> {
    /// `done` bytes of the work are done; every [`PROGRESS_EVERY`] the log
    /// hears how far it is.
    pub fn done(&mut self, done: u64) {
        self.done_of(done, None);
    }

    /// As [`Working::done`], with what the whole is now thought to be.
    pub fn done_of(&mut self, done: u64, total: Option<u64>) {
        let mut list = self.shared.under_way.lock().unwrap();
        let Some((_, w)) = list.iter_mut().find(|(id, _)| *id == self.id) else {
            return;
        };
        w.done = done;
        if let Some(t) = total {
            w.total = t;
        }
        if self.said.elapsed() >= PROGRESS_EVERY {
            self.said = Instant::now();
            info!(
                app = %self.shared.name,
                at = w.at,
                done_mib = mib(w.done),
                total_mib = mib(w.total),
                "{}",
                w.what
            );
        }
    }
}

/// Bytes in MiB, to one decimal, for the log.
pub fn mib(bytes: u64) -> f64 {
    (bytes as f64 / (1 << 20) as f64 * 10.0).round() / 10.0
}

impl Drop for Working<'_> {
    fn drop(&mut self) {
        self.shared
            .under_way
            .lock()
            .unwrap()
            .retain(|(id, _)| *id != self.id);
    }
}

/// How every application's files are kept (from the settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Storage {
    /// When replicas are checkpointed.
    pub checkpoints: Policy,
    /// The size at which a log segment is closed and a new one started.
    pub segment_bytes: u64,
}

impl AppShared {
    /// List `what` (about the image at `at`, `total` bytes if known) as
    /// under way until the guard is dropped.
    pub fn working(&self, what: String, at: u64, total: u64) -> Working<'_> {
        let list = self.under_way.lock().unwrap();
        self.work_on(list, what, at, total, Vec::new())
    }

    /// List the receipt from `from` of the images at `positions` (the
    /// image's last, after those it is incremental to) as under way;
    /// `None` when one of them is being received already (from another
    /// stream, whose files this one would overwrite).
    pub fn receiving(&self, from: &str, positions: &[u64], total: u64) -> Option<Working<'_>> {
        let list = self.under_way.lock().unwrap();
        let busy = list
            .iter()
            .any(|(_, w)| w.receipt.iter().any(|g| positions.contains(g)));
        let at = *positions.last()?;
        if busy {
            return None;
        }
        let what = format!("receiving an image from {from}");
        Some(self.work_on(list, what, at, total, positions.to_vec()))
    }

    fn work_on(
        &self,
        mut list: std::sync::MutexGuard<'_, Vec<(u64, UnderWay)>>,
        what: String,
        at: u64,
        total: u64,
        receipt: Vec<u64>,
    ) -> Working<'_> {
        let id = self.next_work.fetch_add(1, Ordering::Relaxed);
        list.push((
            id,
            UnderWay {
                receipt,
                what,
                at,
                done: 0,
                total,
                since: Instant::now(),
            },
        ));
        Working {
            shared: self,
            id,
            said: Instant::now(),
        }
    }

    /// The long work under way now.
    pub fn under_way(&self) -> Vec<UnderWay> {
        self.under_way
            .lock()
            .unwrap()
            .iter()
            .map(|(_, w)| w.clone())
            .collect()
    }

    /// Open (or create) the application's directory and log. A log that
    /// cannot be opened is moved aside and a new empty one made; the
    /// caller reports the damage with `Corrupt`.
    pub fn open(
        data: &Path,
        name: &str,
        storage: Storage,
    ) -> Result<(Arc<AppShared>, bool), LogError> {
        let dir = data.join("apps").join(name);
        let log_dir = dir.join("log");
        let options = SegmentOptions {
            app_id: app_id(name),
            segment_bytes: storage.segment_bytes,
        };
        let (log, damaged) = match SegmentLog::open(&log_dir, options) {
            Ok((log, recovery)) => {
                if let Some(t) = &recovery.torn_tail {
                    warn!(app = name, path = %t.path.display(), offset = t.offset, reason = %t.reason, "cut a torn tail off the log");
                }
                (log, false)
            }
            Err(e) => {
                let aside = dir.join(format!("log.damaged.{}", now_secs()));
                error!(app = name, error = %e, aside = %aside.display(), "the log is damaged; moved aside, starting an empty one");
                let _ = std::fs::rename(&log_dir, &aside);
                (SegmentLog::open(&log_dir, options)?.0, true)
            }
        };
        let vip = std::fs::read_to_string(dir.join("vip"))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        let last = log.last_gseq();
        Ok((
            Arc::new(AppShared {
                name: name.to_owned(),
                dir,
                log: Mutex::new(log),
                progress: Progress::new(last),
                primary: AtomicBool::new(false),
                stream_gen: AtomicU64::new(0),
                replayed: AtomicU64::new(0),
                pid: AtomicI32::new(0),
                sockets_shut: AtomicI32::new(0),
                vip: Mutex::new(vip),
                gone: AtomicBool::new(false),
                policy: storage.checkpoints,
                under_way: Mutex::new(Vec::new()),
                next_work: AtomicU64::new(0),
            }),
            damaged,
        ))
    }

    /// Remember the service address (DATA/apps/NAME/vip).
    pub fn set_vip(&self, vip: Option<String>) {
        if let Some(v) = &vip {
            if let Err(e) = crate::persist::write_atomic(&self.dir.join("vip"), v.as_bytes()) {
                warn!(app = %self.name, error = %e, "cannot store the service address");
            }
        }
        *self.vip.lock().unwrap() = vip;
    }

    /// The start information from record 0: from the log, or once the
    /// log's first segments are dropped, from the copy kept beside it.
    pub fn start_info(&self) -> Option<StartInfo> {
        let mut log = self.log.lock().unwrap();
        if log.first_gseq() != 0 {
            drop(log);
            return self.saved_start();
        }
        log.last_gseq()?;
        let rec = log.read_from(0).ok()?.next()?.ok()?;
        if Kind::from_u16(rec.header.kind) != Some(Kind::Start) {
            return None;
        }
        StartInfo::decode(&rec.payload).ok()
    }

    /// The start record kept in DATA/apps/NAME/start (header and payload,
    /// checked by its CRC).
    fn saved_start(&self) -> Option<StartInfo> {
        let bytes = std::fs::read(self.dir.join(START_FILE)).ok()?;
        let (h, rest) = ferry_proto::RecordHeader::read_from_prefix(&bytes).ok()?;
        let payload = rest.get(..h.payload_len as usize)?;
        if h.crc != h.compute_crc(payload) || Kind::from_u16(h.kind) != Some(Kind::Start) {
            warn!(app = %self.name, "the saved start record is damaged");
            return None;
        }
        StartInfo::decode(payload).ok()
    }

    /// The start record as stored (header, payload, padding): from the log,
    /// or the copy kept beside it.
    pub fn start_record(&self) -> Option<Vec<u8>> {
        let mut log = self.log.lock().unwrap();
        if log.first_gseq() == 0 {
            let rec = log.read_from(0).ok()?.next()?.ok()?;
            return (Kind::from_u16(rec.header.kind) == Some(Kind::Start)).then(|| rec.to_bytes());
        }
        drop(log);
        self.saved_start()?;
        std::fs::read(self.dir.join(START_FILE)).ok()
    }

    /// Keep `bytes` as the start record (a backup seeded from an image).
    pub fn save_start(&self, bytes: &[u8]) -> Result<(), String> {
        crate::persist::write_atomic(&self.dir.join(START_FILE), bytes)
            .map_err(|e| e.to_string())?;
        self.saved_start()
            .map(|_| ())
            .ok_or_else(|| "the start record received is not a whole start record".to_string())
    }

    /// For a backup that asks for records from `from_gseq` on: `None` if
    /// the log holds them; else the image to send first (the newest that
    /// the log continues), or why there is none.
    pub fn image_for(&self, from_gseq: u64) -> Result<Option<images::Stored>, String> {
        let (first, next) = {
            let log = self.log.lock().unwrap();
            (log.first_gseq(), log.next_gseq())
        };
        if from_gseq >= first {
            return Ok(None);
        }
        images::list(&self.dir)
            .into_iter()
            .rev()
            .find(|i| i.position.gseq + 1 >= first && i.position.gseq < next)
            .map(Some)
            .ok_or_else(|| {
                format!("the log here starts at gseq {first}, and no image covers gseq {from_gseq} to {first}")
            })
    }

    /// For a backup that has the log up to `from_gseq - 1` (the image may
    /// be at that record) but whose
    /// replica stands at `replica_at`: the newest image here that saves it
    /// replaying at least [`SUPPLY_MIN_RECORDS`] records, if any.
    pub fn image_beyond(&self, replica_at: u64, from_gseq: u64) -> Option<images::Stored> {
        let first = self.log.lock().unwrap().first_gseq();
        images::list(&self.dir).into_iter().rev().find(|i| {
            let at = i.position.gseq;
            at < from_gseq && at + 1 >= first && at >= replica_at + SUPPLY_MIN_RECORDS
        })
    }

    /// Where this node's replica stands or could start from: the newer of
    /// what it replayed and its newest image.
    pub fn replica_at(&self) -> u64 {
        let replayed = self.replayed.load(Ordering::Relaxed);
        let image = images::latest(&self.dir).map_or(0, |i| i.position.gseq);
        replayed.max(image)
    }

    /// Drop the log's segments wholly at or below `gseq`, the position of
    /// the oldest image kept: a replica starts from an image, not from
    /// record 1. The start record is kept first (DATA/apps/NAME/start).
    pub fn trim_log(&self, gseq: u64) {
        let mut log = self.log.lock().unwrap();
        if log.first_gseq() == 0 {
            let rec = log
                .read_from(0)
                .ok()
                .and_then(|mut r| r.next())
                .and_then(Result::ok);
            let Some(rec) = rec.filter(|r| Kind::from_u16(r.header.kind) == Some(Kind::Start))
            else {
                return;
            };
            let mut bytes = Vec::new();
            rec.write_to(&mut bytes);
            if let Err(e) = crate::persist::write_atomic(&self.dir.join(START_FILE), &bytes) {
                warn!(app = %self.name, error = %e, "cannot keep the start record; the log is not trimmed");
                return;
            }
        }
        match log.drop_below(gseq + 1) {
            Ok(0) => {}
            Ok(n) => {
                info!(app = %self.name, segments = n, first_gseq = log.first_gseq(), "dropped log segments an image covers")
            }
            Err(e) => warn!(app = %self.name, error = %e, "cannot drop log segments"),
        }
    }

    /// The CRC-32C that an image's position carries at `at` (of records 1
    /// to `at`, start and end records left out), from `base`: that CRC at
    /// an earlier record (`(0, 0)` before record 1). `None` when the log
    /// does not hold every record after `base` up to `at`.
    pub fn prefix_crc(&self, base: (u64, u32), at: u64) -> Option<u32> {
        let mut c = Checkpoints::new(base.0, base.1);
        let mut next = base.0 + 1;
        while next <= at {
            let (bytes, last) = self.read_records(next, BATCH_BYTES).ok()?;
            let last = last?;
            // Only the records up to `at`.
            let mut end = 0;
            while end < bytes.len() {
                let (h, _) = ferry_proto::RecordHeader::read_from_prefix(&bytes[end..]).ok()?;
                if h.gseq > at {
                    break;
                }
                end += ferry_proto::padded(h.len as usize);
            }
            c.fed(&bytes[..end.min(bytes.len())]);
            next = last.min(at) + 1;
        }
        Some(c.crc)
    }

    /// Primary: whether the image of `bytes` a backup took after record
    /// `at` is worth fetching. It must cover at least one whole log
    /// segment after the newest image here. The first image is then
    /// fetched at once: it spares a late backup replaying the program's
    /// history. A later one is fetched once the segments it covers are at
    /// least as large as it is, so that fetching it saves more disk than
    /// it costs.
    pub fn image_worth_fetching(&self, at: u64, bytes: u64) -> bool {
        let newest = images::latest(&self.dir);
        let after = newest.as_ref().map_or(0, |i| i.position.gseq + 1);
        let log = self.log.lock().unwrap();
        // Never the last segment, which is being written.
        let closed = log.segment_count().saturating_sub(1);
        let covered: Vec<u64> = log
            .segment_ranges()
            .take(closed)
            .filter(|&(first, end, _)| first >= after && end <= at + 1)
            .map(|(_, _, len)| len)
            .collect();
        at < log.next_gseq()
            && !covered.is_empty()
            && (newest.is_none() || covered.iter().sum::<u64>() >= bytes)
    }

    /// Check an image from another node, taken after record `at`, whose
    /// position carries `crc`, against this node's log: the records it
    /// replayed must be this log's. The CRC is carried on from the newest
    /// image here below it, or from record 1 while the log holds it.
    pub fn check_image(&self, at: u64, crc: u32) -> Result<(), String> {
        let first = self.log.lock().unwrap().first_gseq();
        let base = images::list(&self.dir)
            .into_iter()
            .rev()
            .map(|i| i.position)
            .find(|p| p.gseq < at && p.gseq + 1 >= first)
            .map(|p| (p.gseq, p.prefix_crc))
            .or((first <= 1).then_some((0, 0)))
            .ok_or_else(|| {
                format!("the log here starts at gseq {first} and no image here is below gseq {at}: the image cannot be checked")
            })?;
        match self.prefix_crc(base, at) {
            Some(c) if c == crc => Ok(()),
            Some(c) => Err(format!(
                "the image replayed records whose CRC-32C up to gseq {at} is {crc:08x}; this log's is {c:08x}"
            )),
            None => Err(format!(
                "the log here does not hold records {} to {at}",
                base.0 + 1
            )),
        }
    }

    /// The durable gseq of the log (0 when it holds only record 0 or less).
    pub fn durable(&self) -> u64 {
        self.log.lock().unwrap().durable_gseq().unwrap_or(0)
    }

    /// Records `from ..` up to about `max_bytes`, in the log encoding.
    pub fn read_records(
        &self,
        from: u64,
        max_bytes: usize,
    ) -> Result<(Vec<u8>, Option<u64>), LogError> {
        let mut log = self.log.lock().unwrap();
        let mut out = Vec::new();
        let mut last = None;
        if from >= log.next_gseq() {
            return Ok((out, None));
        }
        if let Some((bytes, last)) = log.read_recent(from, max_bytes) {
            return Ok((bytes, Some(last)));
        }
        for rec in log.read_from(from)? {
            let rec = rec?;
            rec.write_to(&mut out);
            last = Some(rec.gseq());
            if out.len() >= max_bytes {
                break;
            }
        }
        Ok((out, last))
    }
}

/// The file where a runner lists the processes of its program, so that a
/// ferryd started after a crash can end what the crashed one left running.
const PIDS_FILE: &str = "pids";

/// The copy of the start record, once the log no longer holds it.
const START_FILE: &str = "start";

use ferry_host::sys::start_time;

fn write_pids(dir: &Path, pids: &[i32]) {
    let text: String = pids
        .iter()
        .filter_map(|&p| start_time(p).map(|t| format!("{p} {t}\n")))
        .collect();
    let tmp = dir.join("pids.tmp");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join(PIDS_FILE));
    }
}

/// SIGKILL the processes a previous ferryd listed for this application
/// (those still running with the same start time), and forget the list.
pub fn kill_leftovers(dir: &Path, app: &str) {
    let path = dir.join(PIDS_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(Ok(pid)), Some(Ok(t))) = (
            it.next().map(str::parse::<i32>),
            it.next().map(str::parse::<u64>),
        ) else {
            continue;
        };
        if pid > 1 && start_time(pid) == Some(t) {
            warn!(app, pid, "killing a process a previous ferryd left running");
            ferry_host::sys::kill_hard(pid);
        }
    }
    let _ = std::fs::remove_file(path);
}

/// A stable id of an application's name, written in its segment headers.
pub fn app_id(name: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h | 1
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Append record 0 for `start` to an empty log and make it durable.
pub fn write_start(shared: &AppShared, start: &StartInfo) -> Result<(), LogError> {
    let (h, payload) = start_record(start);
    let mut bytes = h.as_bytes().to_vec();
    bytes.extend_from_slice(&payload);
    bytes.resize(ferry_proto::padded(bytes.len()), 0);
    let mut log = shared.log.lock().unwrap();
    log.append(&bytes)?;
    log.sync()?;
    drop(log);
    shared.progress.set(Some(0));
    Ok(())
}

// ----- the runner: the program's thread -------------------------------------

/// What the core asks of the runner.
#[derive(Debug)]
pub enum RunnerCmd {
    /// Start the program as the primary.
    StartPrimary { start: StartInfo, gated: bool },
    /// Start (or restart from record 1) the live replica.
    StartReplica,
    /// An image after record `at` arrived: a replica behind it starts
    /// again from it.
    ImageArrived { at: u64 },
    /// Open the output gate.
    OpenGate { up_to: u64, until: u64 },
    /// Close the output gate.
    CloseGate,
    /// Pause the program and answer with `Paused`.
    Pause,
    /// Let it go on.
    Resume,
    /// The root process `pid` was reaped with this status.
    RootExited { pid: i32, status: i32 },
    /// Replay up to `base`, then go live as the primary.
    GoLive { base: u64, gated: bool },
    /// Kill the program; the runner stays idle.
    Kill,
    /// Kill the program and end the thread.
    Quit,
}

enum Side {
    Idle,
    Primary(Program),
    Replica(Program),
}

/// The handle the core keeps.
pub struct Runner {
    /// Commands.
    pub tx: std_mpsc::Sender<RunnerCmd>,
    /// Bumped and woken with every command, so that a primary sleeping
    /// while its ring is empty acts on it at once.
    wake: Arc<AtomicU32>,
}

impl Runner {
    /// Start the runner thread of `shared`.
    pub fn spawn(shared: Arc<AppShared>, events: mpsc::UnboundedSender<AppEvent>) -> Runner {
        let (tx, rx) = std_mpsc::channel();
        let wake = Arc::new(AtomicU32::new(0));
        let thread_wake = wake.clone();
        let name = format!("run-{}", shared.name);
        std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || {
                RunnerThread {
                    shared,
                    events,
                    rx,
                    side: Side::Idle,
                    batch: Vec::new(),
                    last_sync: Instant::now(),
                    unsynced: false,
                    pending_pause: false,
                    gated: false,
                    gate_up_to: 0,
                    wake: thread_wake,
                    pids: Vec::new(),
                    pids_checked: Instant::now(),
                    ckpt: Checkpoints::new(0, 0),
                }
                .run()
            })
            .expect("spawn a runner thread");
        Runner { tx, wake }
    }

    /// Send a command (the thread lives as long as the app).
    pub fn send(&self, cmd: RunnerCmd) {
        let _ = self.tx.send(cmd);
        ferry_host::region::wake_private(&self.wake);
    }
}

struct RunnerThread {
    shared: Arc<AppShared>,
    events: mpsc::UnboundedSender<AppEvent>,
    rx: std_mpsc::Receiver<RunnerCmd>,
    side: Side,
    batch: Vec<u8>,
    last_sync: Instant,
    unsynced: bool,
    pending_pause: bool,
    /// The primary's outputs wait for the gate.
    gated: bool,
    /// The gate's last `up_to`.
    gate_up_to: u64,
    /// Bumped (and woken) by the core with every command.
    wake: Arc<AtomicU32>,
    /// The program's processes as last written to the pids file.
    pids: Vec<i32>,
    pids_checked: Instant,
    /// Replica: its checkpoints.
    ckpt: Checkpoints,
}

/// A replica's checkpoints: what it was fed since its last image, and a
/// checkpoint under way.
struct Checkpoints {
    /// CRC-32C of records 1 to `fed` as fed (each header and payload, as in
    /// an image's position): which history an image belongs to.
    crc: u32,
    /// The position of the last image (or where the replica started).
    last: u64,
    /// When that image was taken (or the replica started).
    since: Instant,
    /// Bytes of records fed since.
    bytes: u64,
    /// The bytes of the last full image, or of the chain the replica was
    /// restored from (0: none).
    full_bytes: u64,
    /// The last image this replica process took, which the next may be
    /// incremental to (a restored process starts with a full one).
    parent: Option<u64>,
    /// Incremental images since the last full one.
    incrementals: usize,
    /// Feeding stopped after this gseq, at this time: the checkpoint is
    /// taken once the replica has replayed it.
    pending: Option<(u64, Instant)>,
}

/// How long a replica may take to replay what it was fed before a
/// checkpoint; after that the checkpoint is given up for this time.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(10);

impl Checkpoints {
    fn new(at: u64, crc: u32) -> Checkpoints {
        Checkpoints {
            crc,
            last: at,
            since: Instant::now(),
            bytes: 0,
            full_bytes: 0,
            parent: None,
            incrementals: 0,
            pending: None,
        }
    }

    /// The image the next checkpoint is incremental to: the last one this
    /// replica process took, unless `policy` wants a full one now, or the
    /// log fed since is an eighth of the last full image or more. Many
    /// pages have then likely been written, and an incremental image is
    /// written with the replica stopped (256 MiB took 73 to 735 ms here),
    /// while a full one is written by a forked copy as the replica runs on
    /// (its stop is about 25 ms per GiB). A promotion waits for the stop.
    fn next_parent(&self, policy: &Policy) -> Option<u64> {
        self.parent
            .filter(|_| self.incrementals < policy.incrementals && self.bytes < self.full_bytes / 8)
    }

    /// Account for `records`, just fed (whole records in the log encoding).
    fn fed(&mut self, records: &[u8]) {
        self.bytes += records.len() as u64;
        let mut at = 0;
        while let Ok((h, _)) = ferry_proto::RecordHeader::read_from_prefix(&records[at..]) {
            let len = h.len as usize;
            let Some(whole) = records.get(at..at + len) else {
                break;
            };
            if !matches!(Kind::from_u16(h.kind), Some(Kind::Start) | Some(Kind::End)) {
                self.crc = crc32c::crc32c_append(self.crc, whole);
            }
            at += ferry_proto::padded(len);
            if at >= records.len() {
                break;
            }
        }
    }
}

/// A primary sends a backup one of its images when that spares the
/// backup's replica replaying at least this many records (the old primary
/// after a handover, a backup whose replica starts again): shipping an
/// image is much faster than replaying the program's history.
pub const SUPPLY_MIN_RECORDS: u64 = 4096;

/// The `ferry` executable (it restores images): `$FERRY_CLI`, else `ferry`
/// beside this one.
fn ferry_cli() -> PathBuf {
    match std::env::var_os("FERRY_CLI") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("ferry")))
            .unwrap_or_else(|| PathBuf::from("ferry")),
    }
}

fn output(shared: &AppShared) -> Output {
    Output {
        file: Some(shared.dir.join("program.out")),
    }
}

impl RunnerThread {
    fn app(&self) -> String {
        self.shared.name.clone()
    }

    fn emit(&self, e: AppEvent) {
        let _ = self.events.send(e);
    }

    fn run(mut self) {
        loop {
            // Read before looking for a command: a command sent after this
            // ends the primary's wait below at once.
            let wake_seen = self.wake.load(Ordering::SeqCst);
            let wait = match &self.side {
                Side::Idle => Duration::from_millis(200),
                _ => Duration::ZERO,
            };
            let cmd = if wait.is_zero() {
                match self.rx.try_recv() {
                    Ok(c) => Some(c),
                    Err(std_mpsc::TryRecvError::Empty) => None,
                    Err(std_mpsc::TryRecvError::Disconnected) => break,
                }
            } else {
                match self.rx.recv_timeout(wait) {
                    Ok(c) => Some(c),
                    Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                }
            };
            if let Some(cmd) = cmd {
                if !self.command(cmd) {
                    break;
                }
                continue;
            }
            match &self.side {
                Side::Idle => {}
                Side::Primary(_) => self.primary_step(wake_seen),
                Side::Replica(_) => self.replica_step(),
            }
            self.note_pids(false);
        }
        self.kill();
    }

    fn kill(&mut self) {
        let (Side::Primary(p) | Side::Replica(p)) = std::mem::replace(&mut self.side, Side::Idle)
        else {
            return;
        };
        if p.kill() {
            self.shared
                .sockets_shut
                .store(p.root_pid(), Ordering::SeqCst);
        }
        self.shared.pid.store(0, Ordering::SeqCst);
        self.pids.clear();
        let _ = std::fs::remove_file(self.shared.dir.join(PIDS_FILE));
    }

    /// Keep the pids file up to date (checked every 500 ms).
    fn note_pids(&mut self, force: bool) {
        if !force && self.pids_checked.elapsed() < Duration::from_millis(500) {
            return;
        }
        self.pids_checked = Instant::now();
        let Some(p) = self.program() else { return };
        let mut pids = ferry_host::region::live_pids(&p.region());
        pids.push(p.root_pid());
        pids.sort_unstable();
        pids.dedup();
        if pids != self.pids {
            write_pids(&self.shared.dir, &pids);
            self.pids = pids;
        }
    }

    fn program(&self) -> Option<&Program> {
        match &self.side {
            Side::Primary(p) | Side::Replica(p) => Some(p),
            Side::Idle => None,
        }
    }

    /// Carry out one command; false: end the thread.
    fn command(&mut self, cmd: RunnerCmd) -> bool {
        match cmd {
            RunnerCmd::StartPrimary { start, gated } => {
                self.gated = gated;
                self.kill();
                match Program::primary(&start, gated, &output(&self.shared)) {
                    Ok(p) => {
                        info!(app = %self.shared.name, pid = p.root_pid(), "program started");
                        self.started(&p);
                        self.side = Side::Primary(p);
                    }
                    Err(e) => {
                        error!(app = %self.shared.name, error = %e, "cannot start the program");
                        self.emit(AppEvent::Ended {
                            app: self.app(),
                            killed: false,
                            status: -1,
                            last: 0,
                        });
                    }
                }
            }
            RunnerCmd::StartReplica => {
                self.kill();
                self.start_replica();
            }
            RunnerCmd::ImageArrived { at } => {
                // Known here, after any start already asked for: a replica
                // started from this image meanwhile is not behind it.
                if matches!(&self.side, Side::Replica(p) if p.replayed() < at) {
                    info!(app = %self.shared.name, at, "the replica starts again from the image received");
                    self.kill();
                    self.start_replica();
                }
            }
            RunnerCmd::OpenGate { up_to, until } => {
                self.gate_up_to = up_to;
                if let Side::Primary(p) = &self.side {
                    p.open_gate(up_to, until);
                }
            }
            RunnerCmd::CloseGate => {
                if let Side::Primary(p) = &self.side {
                    p.close_gate();
                }
            }
            RunnerCmd::Pause => {
                // Drain first: a thread that holds the ordering lock while
                // the ring is full could not let go during the pause.
                self.drain_all();
                if let Side::Primary(p) = &self.side {
                    let last = if p.root_status().is_none() {
                        // Drain while waiting: the thread holding the
                        // ordering lock may wait for room in the ring.
                        p.pause_begin();
                        let deadline = Instant::now() + Duration::from_secs(5);
                        loop {
                            let Side::Primary(p) = &self.side else {
                                break 0;
                            };
                            if let Some(last) = p.pause_done() {
                                break last;
                            }
                            if Instant::now() > deadline {
                                break p.drained();
                            }
                            if !self.drain_once() {
                                std::thread::sleep(Duration::from_micros(100));
                            }
                        }
                    } else {
                        p.drained()
                    };
                    // Every record up to the pause is in the ring: drain
                    // them all before reporting (bounded: 5 s).
                    let deadline = Instant::now() + Duration::from_secs(5);
                    loop {
                        self.drain_all();
                        if self.drained() >= last || Instant::now() > deadline {
                            break;
                        }
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    if self.drained() < last {
                        // Reporting less would hand over a log that misses
                        // part of the program's state: let the switchover
                        // time out instead (the program then resumes).
                        error!(app = %self.shared.name, last, drained = self.drained(), "records of the paused program never reached the ring");
                        return true;
                    }
                    let gseq = self.drained();
                    self.emit(AppEvent::Paused {
                        app: self.app(),
                        gseq,
                    });
                } else {
                    self.pending_pause = true;
                }
            }
            RunnerCmd::Resume => {
                if let Side::Primary(p) = &self.side {
                    p.resume();
                }
            }
            RunnerCmd::RootExited { pid, status } => {
                // A program this runner already replaced is not the current one.
                if self.program().is_some_and(|p| p.root_pid() == pid) {
                    self.root_exited(status);
                }
            }
            RunnerCmd::GoLive { base, gated } => self.go_live(base, gated),
            RunnerCmd::Kill => self.kill(),
            RunnerCmd::Quit => return false,
        }
        true
    }

    fn started(&self, p: &Program) {
        write_pids(&self.shared.dir, &[p.root_pid()]);
        self.shared.pid.store(p.root_pid(), Ordering::SeqCst);
        self.emit(AppEvent::Started {
            app: self.app(),
            pid: p.root_pid(),
        });
    }

    fn start_replica(&mut self) {
        self.ckpt = Checkpoints::new(0, 0);
        if let Some(image) = self.usable_image() {
            let started = Instant::now();
            match self.restore_replica(&image) {
                Ok(p) => {
                    let at = image.position.gseq;
                    info!(app = %self.shared.name, pid = p.root_pid(), at, ms = started.elapsed().as_millis() as u64, image = %image.dir.display(), "replica restored from an image");
                    self.started(&p);
                    self.shared.replayed.store(at, Ordering::SeqCst);
                    self.ckpt = Checkpoints::new(at, image.position.prefix_crc);
                    self.ckpt.full_bytes = images::chain_bytes(&self.shared.dir, &image);
                    self.side = Side::Replica(p);
                    return;
                }
                Err(e) => {
                    warn!(app = %self.shared.name, image = %image.dir.display(), error = %e, "cannot restore the replica from its image; starting it from the log");
                }
            }
        }
        let Some(start) = self.shared.start_info() else {
            warn!(app = %self.shared.name, "no start record in the log yet; no replica");
            return;
        };
        let first = self.shared.log.lock().unwrap().first_gseq();
        if first > 1 {
            error!(app = %self.shared.name, first, "the log starts after record 1 and no image covers what it dropped; no replica");
            return;
        }
        match Program::replica(&start, &output(&self.shared)) {
            Ok(p) => {
                info!(app = %self.shared.name, pid = p.root_pid(), "replica started");
                self.started(&p);
                self.shared.replayed.store(0, Ordering::SeqCst);
                self.side = Side::Replica(p);
            }
            Err(e) => error!(app = %self.shared.name, error = %e, "cannot start the replica"),
        }
    }

    /// The newest image the log continues: taken at a record the log has,
    /// with every record after it still in the log, and (while the log
    /// holds them) the records before it those the image replayed.
    fn usable_image(&self) -> Option<images::Stored> {
        let mut list = images::list(&self.shared.dir);
        while let Some(image) = list.pop() {
            let at = image.position.gseq;
            let (first, next) = {
                let log = self.shared.log.lock().unwrap();
                (log.first_gseq(), log.next_gseq())
            };
            // The log reaches the image and holds every record after it.
            if next < at + 1 || first > at + 1 {
                continue;
            }
            if first <= 1 {
                match self.shared.prefix_crc((0, 0), at) {
                    Some(crc) if crc == image.position.prefix_crc => {}
                    _ => {
                        warn!(app = %self.shared.name, image = %image.dir.display(), "an image of the replica is not of this log; removed");
                        images::remove(&image.dir);
                        continue;
                    }
                }
            }
            return Some(image);
        }
        None
    }

    /// Restore `image` into a live replica: `ferry restore --feeder-fd`
    /// becomes the program, a child of this process in its own process
    /// group, and sends its region back once it can be fed.
    fn restore_replica(&self, image: &images::Stored) -> Result<Program, String> {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        let out_path = self.shared.dir.join("program.out");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out_path)
            .map_err(|e| format!("{}: {e}", out_path.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", out_path.display()))?;
        let cli = ferry_cli();
        let mut cmd = std::process::Command::new(&cli);
        cmd.arg("restore")
            .arg("--image")
            .arg(&image.dir)
            .arg("--feeder-fd")
            .arg("3")
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let fd = theirs.as_raw_fd();
        // SAFETY: the closure runs in the child between fork and exec and
        // calls only dup2 and fcntl, which are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let r = if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, 3)
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", cli.display()))?;
        // This process reaps its children itself (the core): never wait here.
        let pid = child.id() as i32;
        drop(child);
        drop(theirs);
        let deadline = Instant::now() + Duration::from_secs(120);
        let fd = loop {
            match ferry_host::sys::receive_fd(&ours, 100) {
                Ok(Some(fd)) => break fd,
                Ok(None) if Instant::now() < deadline => {}
                Ok(None) => {
                    ferry_host::sys::kill_hard(pid);
                    return Err("the restore did not finish within 120 s".into());
                }
                Err(e) => {
                    return Err(format!(
                        "the restore ended before it was ready ({e}); its message is in {}",
                        out_path.display()
                    ))
                }
            }
        };
        let region = ferry_host::region::SharedRegion::adopt(fd).map_err(|e| {
            ferry_host::sys::kill_hard(pid);
            e.to_string()
        })?;
        Ok(Program::restored(region, pid, image.position.gseq))
    }

    fn drained(&self) -> u64 {
        match &self.side {
            Side::Primary(p) => p.drained(),
            _ => 0,
        }
    }

    /// Drain one batch; true if there was one.
    fn drain_once(&mut self) -> bool {
        let Side::Primary(p) = &mut self.side else {
            return false;
        };
        self.batch.clear();
        match p.drain(&mut self.batch, BATCH_BYTES) {
            Ok(Some(last)) => {
                let mut log = self.shared.log.lock().unwrap();
                if let Err(e) = log.append(&self.batch) {
                    error!(app = %self.shared.name, error = %e, "cannot append the program's records to the log");
                    return false;
                }
                drop(log);
                self.unsynced = true;
                self.shared.progress.set(Some(last));
                self.shared.replayed.store(last, Ordering::Relaxed);
                self.emit(AppEvent::Logged {
                    app: self.app(),
                    gseq: last,
                });
                true
            }
            Ok(None) => false,
            Err(e) => {
                error!(app = %self.shared.name, error = %e, "cannot drain the program's ring");
                false
            }
        }
    }

    fn drain_all(&mut self) {
        for _ in 0..100_000 {
            if !self.drain_once() {
                break;
            }
        }
    }

    fn sync_log(&mut self) {
        if self.unsynced {
            if let Err(e) = self.shared.log.lock().unwrap().sync() {
                error!(app = %self.shared.name, error = %e, "cannot sync the log");
            }
            self.unsynced = false;
        }
        self.last_sync = Instant::now();
    }

    fn primary_step(&mut self, wake_seen: u32) {
        if !self.drain_once() {
            // Sleep until the shim publishes a record (it wakes a consumer
            // that sleeps, and only then) or a command arrives (the gate
            // opening: the core wakes us). The timeout is a backstop.
            let wait = if self.gated && self.drained() > self.gate_up_to {
                Duration::from_millis(1)
            } else {
                Duration::from_millis(2)
            };
            if let Side::Primary(p) = &self.side {
                p.wait_records(&self.wake, wake_seen, wait);
            }
        }
        if self.last_sync.elapsed() > Duration::from_millis(20) {
            self.sync_log();
        }
    }

    fn replica_step(&mut self) {
        if self.ckpt.pending.is_some() {
            return self.checkpoint_step();
        }
        let Side::Replica(p) = &mut self.side else {
            return;
        };
        self.shared.replayed.store(p.replayed(), Ordering::Relaxed);
        let fed = p.fed();
        let policy = self.shared.policy;
        // By size, a full image waits until the log is as large as the
        // last one; an incremental one does not.
        let next_full = self.ckpt.next_parent(&policy).is_none();
        let due = policy.due(
            self.ckpt.since.elapsed(),
            self.ckpt.bytes,
            if next_full { self.ckpt.full_bytes } else { 0 },
        );
        if fed > self.ckpt.last && due {
            // Stop feeding here: the image is taken once the replica has
            // replayed everything it was given.
            self.ckpt.pending = Some((fed, Instant::now()));
            return;
        }
        let last = self.shared.progress.get();
        if last.is_none_or(|l| l <= fed) {
            self.shared
                .progress
                .wait_past(last, Duration::from_millis(5));
            return;
        }
        match self.shared.read_records(fed + 1, BATCH_BYTES) {
            Ok((bytes, Some(_))) => {
                if let Err(e) = p.feed(&bytes) {
                    warn!(app = %self.shared.name, error = %e, "the replica stopped; it will be started again at a promotion");
                    self.kill();
                } else {
                    self.ckpt.fed(&bytes);
                }
            }
            Ok((_, None)) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => {
                // A record that reads back damaged: the log cannot be
                // trusted; fetch it again (and never take over from it).
                error!(app = %self.shared.name, error = %e, "cannot read the log for the replica");
                self.kill();
                self.emit(AppEvent::Corrupt {
                    app: self.app(),
                    intact: 0,
                });
            }
        }
    }

    /// A checkpoint is under way: take it once the replica has replayed
    /// every record fed, or give up after [`CHECKPOINT_WAIT`].
    fn checkpoint_step(&mut self) {
        let Some((at, asked)) = self.ckpt.pending else {
            return;
        };
        let Side::Replica(p) = &self.side else {
            self.ckpt.pending = None;
            return;
        };
        let region = p.region();
        self.shared.replayed.store(p.replayed(), Ordering::Relaxed);
        if p.failure().is_some() || p.root_status().is_some() {
            self.ckpt.pending = None;
            return;
        }
        if region.control().consumed.load(Ordering::Acquire) < at {
            if asked.elapsed() > CHECKPOINT_WAIT {
                warn!(app = %self.shared.name, at, "the replica did not replay what it was fed in time; no checkpoint now");
                self.ckpt.pending = None;
                self.ckpt.since = Instant::now();
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
            return;
        }
        let working = std::cell::RefCell::new(self.shared.working(
            "checkpointing the replica (of at most its resident memory)".into(),
            at,
            0,
        ));
        // A command that comes while a copy of the replica writes a full
        // image (seconds for gigabytes) gives the image up: a promotion
        // must not wait for it.
        let wake = self.wake.load(Ordering::SeqCst);
        let commanded = || self.wake.load(Ordering::SeqCst) != wake;
        let tell = |done, total| {
            working.borrow_mut().done_of(done, Some(total));
            !commanded()
        };
        // An image of several processes is a full one.
        let several = ferry_host::region::live_pids(&region).len() > 1;
        let mut parent = self
            .ckpt
            .next_parent(&self.shared.policy)
            .filter(|_| !several);
        let mut result = self.take_checkpoint(at, parent, &tell);
        if let (Some(p), Err(e), false) = (parent, &result, commanded()) {
            warn!(app = %self.shared.name, at, parent = p, error = %e, "no incremental image; taking a full one");
            parent = None;
            result = self.take_checkpoint(at, None, &tell);
        }
        drop(working);
        let full = parent.is_none();
        self.ckpt.pending = None;
        self.ckpt.since = Instant::now();
        match result {
            Ok(line) => {
                info!(app = %self.shared.name, at, "{line}");
                self.ckpt.last = at;
                self.ckpt.bytes = 0;
                self.ckpt.parent = Some(at);
                if full {
                    self.ckpt.incrementals = 0;
                    self.ckpt.full_bytes = images::bytes(&images::dir_for(&self.shared.dir, at));
                } else {
                    self.ckpt.incrementals += 1;
                }
                if let Some(oldest) = images::prune(&self.shared.dir, self.shared.policy.keep) {
                    self.shared.trim_log(oldest);
                }
                self.emit(AppEvent::Checkpointed { app: self.app() });
            }
            Err(e) => {
                warn!(app = %self.shared.name, at, error = %e, "cannot checkpoint the replica")
            }
        }
    }

    /// Checkpoint the replica, which has replayed up to `at` and no further,
    /// incremental to the image after record `parent` if given, telling
    /// `progress` how far the image is written.
    fn take_checkpoint(
        &self,
        at: u64,
        parent: Option<u64>,
        progress: &dyn Fn(u64, u64) -> bool,
    ) -> Result<String, String> {
        let Side::Replica(p) = &self.side else {
            return Err("no replica".into());
        };
        let region = p.region();
        let live: Vec<u32> = ferry_host::region::live_pids(&region)
            .into_iter()
            .map(|pid| pid as u32)
            .collect();
        let dir = images::dir_for(&self.shared.dir, at);
        images::remove(&dir);
        std::fs::create_dir_all(images::images_dir(&self.shared.dir))
            .map_err(|e| format!("{}: {e}", images::images_dir(&self.shared.dir).display()))?;
        let parent = parent.map(|g| (images::dir_for(&self.shared.dir, g), images::sibling(g)));
        let request = ferry_host::checkpoint::Request {
            image: &dir,
            parent: parent.as_ref().map(|p| p.0.as_path()),
            parent_named: parent.as_ref().map(|p| p.1.as_path()),
            timeout: 120,
            position: Some(ferry_image::manifest::ReplayPosition {
                flags: ferry_image::manifest::POSITION_PRESENT,
                prefix_crc: self.ckpt.crc,
                records: at,
                gseq: at,
                reserved: 0,
            }),
            progress: Some(progress),
        };
        ferry_host::checkpoint::take_all(&region, &live, &request).map_err(|e| {
            images::remove(&dir);
            e.to_string()
        })
    }

    fn root_exited(&mut self, status: i32) {
        match &mut self.side {
            Side::Primary(p) => {
                p.root_exited(status);
                // A death, not an end the log records: a signal, or the
                // shim giving up (it cannot serve, e.g. a port taken).
                let failure = p.failure();
                self.drain_all();
                self.sync_log();
                let last = self.drained();
                let killed = libc::WIFSIGNALED(status) || failure.is_some();
                if let Some(why) = &failure {
                    error!(app = %self.shared.name, why = %why, "the shim stopped the program");
                }
                info!(app = %self.shared.name, status, killed, last, "the program's root process ended");
                self.kill();
                self.emit(AppEvent::Ended {
                    app: self.app(),
                    killed,
                    status,
                    last,
                });
            }
            Side::Replica(p) => {
                p.root_exited(status);
                match p.failure() {
                    Some(msg) => warn!(app = %self.shared.name, why = %msg, "the replica ended"),
                    None => info!(app = %self.shared.name, status, "the replica ended"),
                }
                self.kill();
            }
            Side::Idle => {}
        }
    }

    fn go_live(&mut self, base: u64, gated: bool) {
        let result = self.try_go_live(base, gated);
        if let Err(e) = &result {
            error!(app = %self.shared.name, base, error = %e, "the replica could not go live");
        }
        self.emit(AppEvent::WentLive {
            app: self.app(),
            result: result.map_err(|e| e.to_string()),
        });
        if self.pending_pause {
            self.pending_pause = false;
            let _ = self.command(RunnerCmd::Pause);
        }
    }

    fn try_go_live(&mut self, base: u64, gated: bool) -> Result<(), String> {
        self.gated = gated;
        self.gate_up_to = base;
        // The log must end at base: drop records of the old primary that
        // were never made durable here.
        {
            let mut log = self.shared.log.lock().unwrap();
            self.shared.primary.store(true, Ordering::SeqCst);
            self.shared.stream_gen.fetch_add(1, Ordering::SeqCst);
            if log.next_gseq() > base + 1 {
                images::drop_after(&self.shared.dir, base);
                log.truncate_after(base).map_err(|e| e.to_string())?;
            }
            if log.next_gseq() != base + 1 {
                return Err(format!(
                    "the log ends before gseq {base} (next {})",
                    log.next_gseq()
                ));
            }
        }
        self.shared.progress.set(Some(base));
        if self.program().is_none() || matches!(self.side, Side::Primary(_)) {
            self.kill();
            self.start_replica();
        }
        let Side::Replica(p) = &mut self.side else {
            return Err("no replica".into());
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while p.fed() < base {
            let (bytes, last) = self
                .shared
                .read_records(p.fed() + 1, BATCH_BYTES)
                .map_err(|e| e.to_string())?;
            if last.is_none() {
                return Err(format!("the log has no records after gseq {}", p.fed()));
            }
            p.feed(&bytes).map_err(|e: ProgramError| e.to_string())?;
            if Instant::now() > deadline {
                return Err("feeding the replica took too long".into());
            }
        }
        p.go_live(base, gated, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        info!(app = %self.shared.name, base, "the replica is live: primary");
        let Side::Replica(p) = std::mem::replace(&mut self.side, Side::Idle) else {
            unreachable!()
        };
        self.side = Side::Primary(p);
        Ok(())
    }
}

// ----- the writer: a backup's durable log ----------------------------------

/// What reaches the writer.
#[derive(Debug)]
pub enum WriterMsg {
    /// A record stream starts at `from_gseq`.
    Stream { gen: u64, from_gseq: u64 },
    /// Records of stream `gen`.
    Batch { gen: u64, bytes: Vec<u8> },
    /// Stream `gen` ended.
    StreamEnded { gen: u64 },
    /// Drop the records from `from_gseq` on and fetch from `node`.
    Resync { from_gseq: u64, node: String },
    /// An image after record `at` was received (it is in the images
    /// directory): the log starts again at `at + 1`, with `start` (the start
    /// record) kept beside it; stream `gen` follows.
    Install { gen: u64, at: u64, start: Vec<u8> },
    /// End the thread.
    Quit,
}

/// The core's handle on a writer thread.
pub struct Writer {
    /// Messages; bounded so that a slow disk slows the stream down.
    pub tx: mpsc::Sender<WriterMsg>,
}

impl Writer {
    /// Start the writer thread of `shared`.
    pub fn spawn(shared: Arc<AppShared>, events: mpsc::UnboundedSender<AppEvent>) -> Writer {
        let (tx, rx) = mpsc::channel(64);
        let name = format!("log-{}", shared.name);
        std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || writer_thread(shared, events, rx))
            .expect("spawn a writer thread");
        Writer { tx }
    }
}

fn writer_thread(
    shared: Arc<AppShared>,
    events: mpsc::UnboundedSender<AppEvent>,
    mut rx: mpsc::Receiver<WriterMsg>,
) {
    let app = shared.name.clone();
    let mut current: Option<u64> = None;
    // Set by a resync; the first sync of a stream begun after it reports
    // `Resynced`.
    let mut resync_pending = false;
    let mut resync_stream: Option<u64> = None;
    let mut reported: Option<u64> = None;
    'outer: while let Some(first) = rx.blocking_recv() {
        let mut msg = Some(first);
        let mut dirty = false;
        while let Some(m) = msg.take() {
            match m {
                WriterMsg::Quit => break 'outer,
                WriterMsg::Stream { gen, from_gseq } => {
                    let next = shared.log.lock().unwrap().next_gseq();
                    if from_gseq != next || shared.primary.load(Ordering::SeqCst) {
                        warn!(
                            app,
                            from_gseq, next, "record stream does not continue the log; ignored"
                        );
                    } else {
                        current = Some(gen);
                        if resync_pending {
                            resync_stream = Some(gen);
                        }
                    }
                }
                WriterMsg::StreamEnded { gen } => {
                    if current == Some(gen) {
                        current = None;
                        if resync_stream == Some(gen) || resync_pending {
                            resync_pending = false;
                            resync_stream = None;
                            let _ = events.send(AppEvent::ResyncFailed { app: app.clone() });
                        }
                    }
                }
                WriterMsg::Batch { gen, bytes } => {
                    if current != Some(gen) {
                        continue;
                    }
                    let mut log = shared.log.lock().unwrap();
                    if shared.primary.load(Ordering::SeqCst) {
                        current = None;
                        continue;
                    }
                    let had_start = log.last_gseq().is_some();
                    match log.append(&bytes) {
                        Ok(()) => {
                            dirty = true;
                            let last = log.last_gseq();
                            drop(log);
                            if !had_start && last.is_some() {
                                let _ = events.send(AppEvent::HaveStart { app: app.clone() });
                            }
                        }
                        Err(e) => {
                            let intact = log.durable_gseq().unwrap_or(0);
                            drop(log);
                            error!(app, error = %e, "cannot store a batch from the primary");
                            current = None;
                            let _ = events.send(AppEvent::Corrupt {
                                app: app.clone(),
                                intact,
                            });
                        }
                    }
                }
                WriterMsg::Install { gen, at, start } => {
                    let mut log = shared.log.lock().unwrap();
                    if shared.primary.load(Ordering::SeqCst) {
                        continue;
                    }
                    current = None;
                    if let Err(e) = shared.save_start(&start) {
                        error!(app, error = %e, "cannot keep the start record of a received image");
                        continue;
                    }
                    images::drop_after(&shared.dir, at);
                    if let Err(e) = log.reset(at + 1) {
                        drop(log);
                        error!(app, error = %e, "cannot start the log after a received image");
                        let _ = events.send(AppEvent::Corrupt {
                            app: app.clone(),
                            intact: 0,
                        });
                        continue;
                    }
                    drop(log);
                    shared.progress.set(None);
                    info!(app, at, gen, "the log starts after the received image");
                    let _ = events.send(AppEvent::Installed { app: app.clone() });
                }
                WriterMsg::Resync { from_gseq, node } => {
                    let mut log = shared.log.lock().unwrap();
                    current = None;
                    let before = log.next_gseq();
                    let keep = from_gseq.saturating_sub(1);
                    let result = if from_gseq < log.first_gseq() {
                        // What must go is no longer here: begin again (the
                        // primary sends an image first if it needs to).
                        images::drop_all(&shared.dir);
                        log.reset(0)
                    } else if log.next_gseq() > from_gseq && from_gseq > 0 {
                        images::drop_after(&shared.dir, keep);
                        log.truncate_after(keep)
                    } else if log.next_gseq() > from_gseq {
                        images::drop_all(&shared.dir);
                        log.reset(0)
                    } else {
                        Ok(())
                    };
                    let next = log.next_gseq();
                    let last = log.last_gseq();
                    drop(log);
                    if let Err(e) = result {
                        error!(app, error = %e, "cannot cut the log for a resync");
                        let _ = events.send(AppEvent::ResyncFailed { app: app.clone() });
                        continue;
                    }
                    shared.progress.set(last);
                    resync_pending = true;
                    resync_stream = None;
                    reported = None;
                    let _ = events.send(AppEvent::Fetch {
                        app: app.clone(),
                        node,
                        from_gseq: next,
                        cut: next < before,
                    });
                }
            }
            msg = rx.try_recv().ok();
        }
        if !dirty {
            continue;
        }
        // Group commit: one sync for everything that has arrived.
        let synced = shared.log.lock().unwrap().sync();
        match synced {
            Ok(Some(gseq)) => {
                shared.progress.set(Some(gseq));
                if resync_pending && resync_stream.is_some() && resync_stream == current {
                    resync_pending = false;
                    resync_stream = None;
                    reported = Some(gseq);
                    let _ = events.send(AppEvent::Resynced {
                        app: app.clone(),
                        gseq,
                    });
                } else if !resync_pending && reported != Some(gseq) {
                    reported = Some(gseq);
                    let _ = events.send(AppEvent::Durable {
                        app: app.clone(),
                        gseq,
                    });
                }
            }
            Ok(None) => {}
            Err(e) => {
                error!(app, error = %e, "cannot sync the log");
                let _ = events.send(AppEvent::Corrupt {
                    app: app.clone(),
                    intact: 0,
                });
            }
        }
    }
    info!(app, "log writer ended");
}
