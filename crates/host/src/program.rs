//! A protected program on this host, as `ferryd` drives it: a primary whose
//! records it drains and whose outputs it gates, or a live replica that it
//! feeds and, on a takeover, turns into the primary.
//!
//! ```text
//! primary:  Program::primary ─ drain() → records ─▶ (network) ─▶ feed() ─ Program::replica
//!           open_gate()/close_gate()                       go_live(base) turns the replica
//!           pause()/resume() for a planned switchover      into a primary that drain()s
//! ```
//!
//! Records travel in the log encoding of `ferry_proto` (`docs/LOG-FORMAT.md`):
//! a 64-byte header, the payload and zero padding to 8 bytes, each record
//! sealed with its CRC-32C. Record 0 is the start record ([`StartInfo`]);
//! both sides build it from the same [`StartInfo`], so it never travels.
//!
//! The caller owns reaping: `ferryd` is the child subreaper of its programs
//! and reaps every child itself; it hands the root's wait status to
//! [`Program::root_exited`]. This keeps one process able to run several
//! programs.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ferry_proto::log::StartInfo;
use ferry_proto::{padded, Kind, RecordHeader, MAX_PAYLOAD, RECORD_HEADER_LEN};
use ferry_ring::{Mode, Region, CTL_CONSUMER_GONE, CTL_DIVERGED, CTL_END_OF_LOG, CTL_FAILED};
use zerocopy::FromBytes;

use crate::region::{self, PollFutex, RegionError, SharedRegion, SysFutex};
use crate::resolve::{env_value, resolve, ResolveError};
use crate::spawn::{spawn, Launch, SpawnError, Stdio};
use crate::sys::{IgnoredSignals, SysError};

/// Why a program could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    /// The command cannot be found from the recorded PATH and directory.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The shared region could not be set up.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// The program could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// A system call failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// The shim published a record that cannot be walked past.
    #[error("the shim published a record with impossible lengths (gseq {gseq}, len {len}, payload {payload_len})")]
    BadRecord {
        /// Its gseq.
        gseq: u64,
        /// Its total length.
        len: u32,
        /// Its payload length.
        payload_len: u32,
    },
    /// Records handed to [`Program::feed`] are not whole, valid records
    /// following the last one fed.
    #[error("cannot feed the replica: {0}")]
    BadFeed(String),
    /// The replica diverged from the log, or the shim failed; the message
    /// is the shim's one line.
    #[error("the replica stopped: {0}")]
    Stopped(String),
    /// The replica stopped making progress before the end of what it was
    /// fed.
    #[error("the replica replayed up to gseq {replayed} but not to {base}, and made no progress for {waited:?}")]
    NotCaughtUp {
        /// Where it is.
        replayed: u64,
        /// Where it had to be.
        base: u64,
        /// How long it was given.
        waited: Duration,
    },
    /// The operation needs the program in another role.
    #[error("the program is a {is}, not a {needs}")]
    WrongSide {
        /// What it is.
        is: &'static str,
        /// What the operation needs.
        needs: &'static str,
    },
}

/// Where the program's standard streams go.
#[derive(Debug, Default)]
pub struct Output {
    /// Standard output and standard error (appended); `None`: inherited.
    pub file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Primary,
    Replica,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Primary => "primary",
            Side::Replica => "replica",
        }
    }
}

/// One program under the shim, with the region `ferryd` shares with it.
pub struct Program {
    shared: SharedRegion,
    root: i32,
    side: Side,
    root_status: Option<i32>,
    /// Replica: the gseq of the last record fed (0: only the start record).
    fed: u64,
    /// Primary: the gseq of the last record drained.
    drained: u64,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("root", &self.root)
            .field("side", &self.side)
            .field("fed", &self.fed)
            .field("drained", &self.drained)
            .finish()
    }
}

fn launch_for(start: &StartInfo) -> Result<Launch, ProgramError> {
    let cwd = std::path::Path::new(std::ffi::OsStr::from_bytes(&start.cwd));
    let path_var = env_value(&start.env, b"PATH").map(std::ffi::OsStr::from_bytes);
    let first = start.argv.first().map(|a| &a[..]).unwrap_or_default();
    let exe = resolve(std::ffi::OsStr::from_bytes(first), path_var, cwd)?;
    Ok(Launch::new(
        &exe,
        &start.argv,
        &start.env,
        Some(&start.cwd),
    )?)
}

use std::os::unix::ffi::OsStrExt;

impl Program {
    /// Start `start` under the shim as the primary: its calls are logged
    /// into the ring for [`Program::drain`]. When `gated`, its outputs wait
    /// for [`Program::open_gate`] (sync output commit); otherwise they go at
    /// once.
    pub fn primary(
        start: &StartInfo,
        gated: bool,
        output: &Output,
    ) -> Result<Program, ProgramError> {
        let shared = SharedRegion::create(Mode::Record)?;
        if gated {
            shared.region().raise(ferry_ring::CTL_GATED, &SysFutex);
        }
        Self::start(shared, start, Side::Primary, output)
    }

    /// Start `start` under the shim as a live replica: it replays the
    /// records given to [`Program::feed`] as they come, and waits for more
    /// at the end of them.
    pub fn replica(start: &StartInfo, output: &Output) -> Result<Program, ProgramError> {
        let shared = SharedRegion::create(Mode::Replay)?;
        shared
            .region()
            .raise(ferry_ring::CTL_LIVE_REPLICA, &SysFutex);
        Self::start(shared, start, Side::Replica, output)
    }

    /// A live replica restored from an image (see `ferry restore
    /// --feeder-fd`): `region` is its region, `root` the restored process
    /// (a child of this one, leader of its own process group), `fed` the
    /// gseq of the last record it has replayed. Feed it from `fed + 1`.
    pub fn restored(region: SharedRegion, root: i32, fed: u64) -> Program {
        region
            .region()
            .raise(ferry_ring::CTL_LIVE_REPLICA, &SysFutex);
        Program {
            shared: region,
            root,
            side: Side::Replica,
            root_status: None,
            fed,
            drained: 0,
        }
    }

    fn start(
        shared: SharedRegion,
        start: &StartInfo,
        side: Side,
        output: &Output,
    ) -> Result<Program, ProgramError> {
        let launch = launch_for(start)?;
        let stdio = match &output.file {
            Some(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| SysError::from_io("open the output file", e))?;
                Some(f)
            }
            None => None,
        };
        let signals = IgnoredSignals::none();
        let stdio = Stdio {
            out: stdio.as_ref().map(|f: &File| f.as_raw_fd()),
            new_group: true,
        };
        let root = spawn(&launch, shared.region(), shared.fd(), &signals, &stdio)?;
        Ok(Program {
            shared,
            root,
            side,
            root_status: None,
            fed: 0,
            drained: 0,
        })
    }

    /// The region shared with the shim.
    pub fn region(&self) -> Region {
        self.shared.region()
    }

    /// The root process's pid on this host.
    pub fn root_pid(&self) -> i32 {
        self.root
    }

    /// The caller reaped the root process with this raw wait status.
    pub fn root_exited(&mut self, status: i32) {
        self.root_status = Some(status);
    }

    /// The root's raw wait status once it was reaped.
    pub fn root_status(&self) -> Option<i32> {
        self.root_status
    }

    /// Whether every process of the program has ended.
    pub fn ended(&self) -> bool {
        self.root_status.is_some()
            && self.region().control().live_procs.load(Ordering::Acquire) == 0
    }

    /// The shim's one-line message, when it failed or replay diverged.
    pub fn failure(&self) -> Option<String> {
        let r = self.region();
        r.has(CTL_DIVERGED | CTL_FAILED)
            .then(|| region::message(&r))
    }

    /// SIGKILL every process of the program (its process group too).
    ///
    /// A paused primary's sockets are shut down first (see
    /// [`crate::sys::shut_down_sockets`]), so that its clients hear that
    /// their connections are over at once rather than once a large address
    /// space is torn down. Only a paused one: no thread of it can log, and
    /// so none can act on, what the shutdown makes its calls return (a
    /// running program would log the ends of connections that its clients
    /// never closed). A replica's sockets are placeholders. Returns
    /// whether the sockets were shut down.
    pub fn kill(&self) -> bool {
        let r = self.region();
        let shut = self.side == Side::Primary
            && r.has(ferry_ring::CTL_PAUSE)
            && self.pause_done().is_some();
        if shut {
            for pid in region::live_pids(&r).into_iter().chain([self.root]) {
                if pid > 0 {
                    crate::sys::shut_down_sockets(pid);
                }
            }
        }
        // Only now: the consumer's going lets waiting threads go on.
        r.raise(CTL_CONSUMER_GONE, &SysFutex);
        if self.root > 0 {
            // SAFETY: kill has no memory preconditions; the group is the
            // program's own (it was made its leader at spawn).
            unsafe { libc::kill(-self.root, libc::SIGKILL) };
        }
        for pid in region::live_pids(&r).into_iter().chain([self.root]) {
            if pid > 0 {
                crate::sys::kill_hard(pid);
            }
        }
        shut
    }

    fn need(&self, side: Side) -> Result<(), ProgramError> {
        if self.side == side {
            Ok(())
        } else {
            Err(ProgramError::WrongSide {
                is: self.side.name(),
                needs: side.name(),
            })
        }
    }

    /// Primary: move up to about `max_bytes` of published records (at least
    /// one if any) to the end of `out`, sealed, in the log encoding. Returns
    /// the gseq of the last record moved, or `None` when the ring was empty.
    /// Never waits.
    pub fn drain(
        &mut self,
        out: &mut Vec<u8>,
        max_bytes: usize,
    ) -> Result<Option<u64>, ProgramError> {
        self.need(Side::Primary)?;
        let r = self.region();
        let head = r.head();
        let start = r.consume_pos();
        let start_len = out.len();
        let mut pos = start;
        let mut last = None;
        let mut bad = None;
        // Walk the records in place, then copy them out with one copy per
        // lap of the ring, seal them there (the shim leaves checksums and
        // padding to its consumer), and release them with one store.
        while pos < head && ((pos - start) as usize) < max_bytes.max(1) {
            let Some(h) = r.header_at(pos, head) else {
                break;
            };
            let payload_len = h.payload_len as usize;
            if payload_len > MAX_PAYLOAD || h.len as usize != RECORD_HEADER_LEN + payload_len {
                bad = Some(ProgramError::BadRecord {
                    gseq: h.gseq,
                    len: h.len,
                    payload_len: h.payload_len,
                });
                break;
            }
            pos += padded(h.len as usize) as u64;
            last = Some(h.gseq);
        }
        let n = (pos - start) as usize;
        out.resize(start_len + n, 0);
        let lap = (Region::lap_end(start) - start).min(n as u64) as usize;
        r.copy_record(start, &mut out[start_len..start_len + lap]);
        if lap < n {
            r.copy_record(start + lap as u64, &mut out[start_len + lap..]);
        }
        let mut at = start_len;
        let mut records = 0u64;
        while at < out.len() {
            let len = u32::from_le_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]) as usize;
            let end = at + padded(len);
            out[at + len..end].fill(0);
            RecordHeader::seal_bytes(&mut out[at..at + len]);
            at = end;
            records += 1;
        }
        r.consume_to(pos, records, &PollFutex);
        if let Some(e) = bad {
            return Err(e);
        }
        if let Some(g) = last {
            self.drained = g;
        }
        Ok(last)
    }

    /// Primary: the gseq of the last record drained.
    pub fn drained(&self) -> u64 {
        self.drained
    }

    /// Primary: wait up to `timeout` for the shim to publish a record, or
    /// for `wake` to differ from `seen` (see [`region::wake_private`]).
    /// While it waits the shim wakes it at its next record, which costs that
    /// record's thread a system call.
    pub fn wait_records(&self, wake: &AtomicU32, seen: u32, timeout: Duration) {
        let r = self.region();
        if r.peek().is_none() {
            let ms = timeout.as_millis().clamp(1, u128::from(u32::MAX)) as u32;
            r.wait_for_records(
                &region::EitherFutex {
                    other: wake,
                    other_seen: seen,
                },
                Some(ms),
            );
        }
    }

    /// Primary: outputs of records up to `up_to_gseq` may be released until
    /// `CLOCK_MONOTONIC` reads `until_ns`. The shim checks the deadline
    /// itself, so the gate closes on time even if `ferryd` stops.
    pub fn open_gate(&self, up_to_gseq: u64, until_ns: u64) {
        let c = self.region();
        let c = c.control();
        c.gate_until.store(until_ns, Ordering::SeqCst);
        c.acked_gseq.fetch_max(up_to_gseq, Ordering::SeqCst);
        c.gate_seq.fetch_add(1, Ordering::SeqCst);
        ferry_ring::Futex::wake_all(&SysFutex, &c.gate_seq);
    }

    /// Primary: close the gate now; outputs wait.
    pub fn close_gate(&self) {
        let c = self.region();
        let c = c.control();
        c.gate_until.store(0, Ordering::SeqCst);
        c.gate_seq.fetch_add(1, Ordering::SeqCst);
    }

    /// Primary: stop the program before its next logged call. Returns the
    /// gseq of its last record once no thread can log another; every record
    /// up to it is then in the ring (drain them). Drains the ring into
    /// `out` while it waits, since a thread that holds the ordering lock
    /// may be waiting for room in a full ring.
    pub fn pause(&mut self, out: &mut Vec<u8>) -> Result<u64, ProgramError> {
        self.pause_begin();
        loop {
            if let Some(last) = self.pause_done() {
                return Ok(last);
            }
            if self.drain(out, 1 << 20)?.is_none() {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }

    /// Primary: ask the program to stop before its next logged call; see
    /// [`Program::pause_done`].
    pub fn pause_begin(&self) {
        self.region().raise(ferry_ring::CTL_PAUSE, &SysFutex);
    }

    /// Primary, after [`Program::pause_begin`]: the gseq of the program's
    /// last record once no thread can log another (a thread that took the
    /// ordering lock before it saw the pause logs its record and lets go;
    /// every later one waits), or `None` while one still holds the lock.
    /// Never waits: drain the ring between calls.
    pub fn pause_done(&self) -> Option<u64> {
        let r = self.region();
        let c = r.control();
        if c.order_lock.load(Ordering::SeqCst) != 0 && !self.ended() {
            return None;
        }
        Some(c.next_gseq.load(Ordering::SeqCst).saturating_sub(1))
    }

    /// Primary: let a paused program go on.
    pub fn resume(&self) {
        let r = self.region();
        r.lower(ferry_ring::CTL_PAUSE, &SysFutex);
    }

    /// Replica: publish `records` (whole records in the log encoding, the
    /// first one following the last fed). Waits while the ring is full.
    /// Start and end records are skipped.
    pub fn feed(&mut self, records: &[u8]) -> Result<(), ProgramError> {
        self.need(Side::Replica)?;
        let r = self.region();
        let mut at = 0;
        while at < records.len() {
            let Ok((h, _)) = RecordHeader::read_from_prefix(&records[at..]) else {
                return Err(ProgramError::BadFeed(format!(
                    "a partial record header at byte {at}"
                )));
            };
            let len = h.len as usize;
            if len < RECORD_HEADER_LEN
                || h.payload_len as usize != len - RECORD_HEADER_LEN
                || at + len > records.len()
            {
                return Err(ProgramError::BadFeed(format!(
                    "record gseq {} at byte {at} has impossible lengths",
                    h.gseq
                )));
            }
            let payload = &records[at + RECORD_HEADER_LEN..at + len];
            if h.crc != h.compute_crc(payload) {
                return Err(ProgramError::BadFeed(format!(
                    "record gseq {} fails its checksum",
                    h.gseq
                )));
            }
            at += padded(len);
            if matches!(Kind::from_u16(h.kind), Some(Kind::Start) | Some(Kind::End)) {
                continue;
            }
            if h.gseq != self.fed + 1 {
                return Err(ProgramError::BadFeed(format!(
                    "record gseq {} does not follow gseq {}",
                    h.gseq, self.fed
                )));
            }
            if let Some(msg) = self.failure() {
                return Err(ProgramError::Stopped(msg));
            }
            if !r.publish(&h, payload, &PollFutex) {
                return Err(ProgramError::Stopped("the replica is gone".into()));
            }
            self.fed = h.gseq;
        }
        Ok(())
    }

    /// Replica: the gseq of the last record fed.
    pub fn fed(&self) -> u64 {
        self.fed
    }

    /// The gseq of the last record the replica has replayed (consumed).
    pub fn replayed(&self) -> u64 {
        let r = self.region();
        match r.peek() {
            Some(h) => h.gseq.saturating_sub(1),
            None => self.fed,
        }
    }

    /// Replica: replay every record fed up to `base` (all of them must have
    /// been fed; `timeout` bounds a wait without progress), then go live: the program's calls run for real from here,
    /// logged from gseq `base + 1` for [`Program::drain`], with placeholder
    /// listening sockets bound again and connections of the old primary
    /// ended. The program becomes a primary, gated when `gated`.
    pub fn go_live(
        &mut self,
        base: u64,
        gated: bool,
        timeout: Duration,
    ) -> Result<(), ProgramError> {
        self.need(Side::Replica)?;
        if base != self.fed {
            return Err(ProgramError::BadFeed(format!(
                "asked to go live after gseq {base} but fed up to {}",
                self.fed
            )));
        }
        let r = self.region();
        // A replica that fell behind (a busy host) may need long to catch
        // up: give up only when it stops making progress for `timeout`.
        let mut progress = (self.replayed(), Instant::now());
        while r.head() != r.tail() {
            if let Some(msg) = self.failure() {
                return Err(ProgramError::Stopped(msg));
            }
            let replayed = self.replayed();
            if replayed != progress.0 {
                progress = (replayed, Instant::now());
            } else if progress.1.elapsed() > timeout {
                return Err(ProgramError::NotCaughtUp {
                    replayed,
                    base,
                    waited: timeout,
                });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        if gated {
            r.raise(ferry_ring::CTL_GATED, &SysFutex);
        }
        r.go_live(base + 1, &SysFutex);
        self.side = Side::Primary;
        self.drained = base;
        Ok(())
    }

    /// Replica: no more records will come; the replica ends where the log
    /// ends (the application was stopped).
    pub fn end_of_log(&self) {
        self.region().raise(CTL_END_OF_LOG, &SysFutex);
    }
}
