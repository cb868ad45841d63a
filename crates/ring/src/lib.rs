//! The region shared by the shim (inside the program) and its consumer (the
//! `ferry` CLI, later `ferryd`): a `memfd` mapped by both.
//!
//! ```text
//! 0            Control: mode, flags, the ordering lock, gseq, ring indices
//! CKPT_OFFSET  CkptControl: a checkpoint asked of one process, and its answer
//! PROCS_OFFSET process table: one ProcEntry per process of the program
//! RING_OFFSET  the record ring (RING_CAP bytes, a power of two)
//! ```
//!
//! Records ([`ferry_proto::RecordHeader`] + payload, padded to 8) are written at
//! `head` and read at `tail`, both byte counters that only grow; a record may
//! wrap around the end of the ring. In record mode the program's threads
//! produce (serialised by the ordering lock, which is also what assigns
//! `gseq`) and the CLI consumes; in replay the CLI produces and each thread
//! consumes the record at `tail` when that record is its own: that is the
//! barrier. A full ring makes the producer wait; nothing is dropped.
//!
//! This crate makes no system calls: waiting and waking go through the
//! [`Futex`] the caller supplies, so the shim can use its own raw syscalls.

#![no_std]

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use ferry_proto::{padded, RecordHeader, RECORD_HEADER_LEN};
use zerocopy::{FromBytes, IntoBytes};

/// `Control::magic`.
pub const CONTROL_MAGIC: u64 = u64::from_le_bytes(*b"FERRYCTL");
/// Version of this layout; the shim refuses a region of another version.
pub const LAYOUT_VERSION: u32 = 3;
/// Processes one program may have alive or dead over its life.
pub const MAX_PROCS: usize = 512;
/// Descriptors whose kind the process table tracks.
pub const MAX_FDS: usize = 4096;
/// Bytes of one process-table entry.
pub const PROC_ENTRY_LEN: usize = 8192;
/// Where the checkpoint control block starts.
pub const CKPT_OFFSET: usize = 4096;
/// Where the process table starts.
pub const PROCS_OFFSET: usize = 8192;
/// Where the ring starts.
pub const RING_OFFSET: usize = PROCS_OFFSET + MAX_PROCS * PROC_ENTRY_LEN;
/// Ring capacity in bytes.
pub const RING_CAP: usize = 16 << 20;
/// Size of the whole region.
pub const REGION_LEN: usize = RING_OFFSET + RING_CAP;
/// The descriptor number at which a program under the shim finds the region
/// (inherited across `fork` and `exec`; the shim hides it from the program).
pub const REGION_FD: i32 = 1000;
/// The fixed, far address at which the shim maps the region, identical in
/// every mode so the program's own mappings land at the same addresses.
pub const REGION_ADDR: usize = 0x5f00_0000_0000;

/// What the shim does with the program's calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Mode {
    /// Calls go through the shim but nothing is logged (measures the shim's
    /// own cost).
    Passthrough = 1,
    /// Calls run and are logged.
    Record = 2,
    /// Calls are answered from the log.
    Replay = 3,
}

impl Mode {
    /// Parse a mode word.
    pub fn from_u32(v: u32) -> Option<Mode> {
        match v {
            1 => Some(Mode::Passthrough),
            2 => Some(Mode::Record),
            3 => Some(Mode::Replay),
            _ => None,
        }
    }
}

/// `Control::flags`: the producer will publish nothing more (replay: the log
/// is exhausted once the ring is empty).
pub const CTL_END_OF_LOG: u32 = 1 << 0;
/// `Control::flags`: replay found a divergence; every thread stops.
pub const CTL_DIVERGED: u32 = 1 << 1;
/// `Control::flags`: a fatal error in the shim (message in `Control::message`).
pub const CTL_FAILED: u32 = 1 << 2;
/// `Control::flags`: the consumer went away; producers stop waiting.
pub const CTL_CONSUMER_GONE: u32 = 1 << 3;

/// `Control::flags`: outputs (writes and sends on sockets and other
/// placeholder descriptors, `connect`) wait for the output gate: the
/// record's gseq at or below `acked_gseq` and `CLOCK_MONOTONIC` below
/// `gate_until`. Set by `ferryd` for a primary in sync mode.
pub const CTL_GATED: u32 = 1 << 4;
/// `Control::flags`: stop before the next logged call (a planned
/// switchover); the threads wait until the flag is lowered.
pub const CTL_PAUSE: u32 = 1 << 5;
/// `Control::flags`: a replica went live (the mode word moved from replay
/// to record); set once, with `next_gseq` continuing the old log.
pub const CTL_WENT_LIVE: u32 = 1 << 6;
/// `Control::flags`: a live replica (fed by `ferryd` as records arrive, and
/// may go live): writes to the program's own pipes run in replay too, so
/// they hold what the primary's held when the replica goes live.
pub const CTL_LIVE_REPLICA: u32 = 1 << 7;

/// The flags that end a wait for a record or a turn: the others are
/// settings, not events.
pub const WAKING_FLAGS: u32 =
    CTL_END_OF_LOG | CTL_DIVERGED | CTL_FAILED | CTL_CONSUMER_GONE | CTL_WENT_LIVE;

/// Leave a count of sleepers (`*_waiters`, `turn_sleepers`) entered with a
/// `fetch_add` before a wait. A thread restored from a checkpoint resumes
/// inside a wait it entered in the region of the process it was
/// checkpointed from, and leaves it in the restored process's new region,
/// whose counts never had it. The count then stays at zero instead of
/// wrapping: a wrapped count reads zero again when the next thread sleeps,
/// nobody wakes that thread, and it waits out its timeout at every turn.
pub fn leave_wait(count: &AtomicU32) {
    let _ = count.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
}

/// Length of `Control::message`.
pub const MESSAGE_LEN: usize = 1024;
/// Number of turn words (see `Control::turn_words`).
pub const TURN_SLOTS: usize = 256;

/// The control block at offset 0. Words written by different sides sit on
/// different cache lines, so a producer and a consumer on two cores do not
/// fight over one line for every record.
#[repr(C, align(64))]
pub struct Control {
    /// [`CONTROL_MAGIC`].
    pub magic: AtomicU64,
    /// [`LAYOUT_VERSION`].
    pub version: AtomicU32,
    /// A [`Mode`].
    pub mode: AtomicU32,
    /// `CTL_*` bits.
    pub flags: AtomicU32,
    /// Processes of the program alive now.
    pub live_procs: AtomicU32,
    /// The pid of the process on the other side (the `ferry` CLI, later
    /// `ferryd`): a replay whose producer has died ends.
    pub consumer_pid: AtomicU32,
    /// The highest `gseq` a backup has acknowledged (the output gate).
    pub acked_gseq: AtomicU64,
    /// The replication epoch.
    pub epoch: AtomicU64,
    /// With `CTL_GATED`: outputs may be released while `CLOCK_MONOTONIC`
    /// (nanoseconds) reads less than this (the lease's end).
    pub gate_until: AtomicU64,
    /// Futex word bumped whenever the gate or the pause flag changes.
    pub gate_seq: AtomicU32,
    /// Non-zero while someone sleeps on `gate_seq`.
    pub gate_waiters: AtomicU32,
    _pad0: [u8; 4],

    // Written by the program's threads (record).
    /// Record: the ordering lock. 0 when free, else the real tid of its owner.
    pub order_lock: AtomicU32,
    /// Futex word of the ordering lock's waiters.
    pub order_waiters: AtomicU32,
    /// Record: the next `gseq` to assign.
    pub next_gseq: AtomicU64,
    /// The next virtual pid/tid to hand out (pids and tids share one space,
    /// as in Linux).
    pub next_vid: AtomicU32,
    _pad1a: u32,
    /// The producer's last view of `tail` (saves reading the consumer's
    /// cache line on every publish).
    pub tail_cache: AtomicU64,
    _pad1: [u8; 32],

    // Written by the producer.
    /// Bytes published into the ring.
    pub head: AtomicU64,
    /// Futex word bumped after every publish.
    pub head_seq: AtomicU32,
    _pad2: [u8; 52],

    // Written by the consumer(s).
    /// Bytes consumed from the ring.
    pub tail: AtomicU64,
    /// Futex word bumped after every consume.
    pub tail_seq: AtomicU32,
    _pad3a: u32,
    /// Replay: records consumed so far (the record number in messages).
    pub consumed: AtomicU64,
    _pad3: [u8; 40],

    // Registered sleepers: touched only by a side about to sleep.
    /// Non-zero while someone sleeps on `head_seq`.
    pub head_waiters: AtomicU32,
    /// Non-zero while someone sleeps on `tail_seq`.
    pub tail_waiters: AtomicU32,
    _pad4: [u8; 56],

    /// Replay: one futex word per group of threads (by vtid modulo
    /// [`TURN_SLOTS`]): bumped when a record of one of them reaches the head,
    /// so a waiting thread is woken for its own turn, not for every record.
    pub turn_words: [AtomicU32; TURN_SLOTS],
    /// Sleepers on each of `turn_words`.
    pub turn_waiters: [AtomicU32; TURN_SLOTS],
    /// Sleepers on all the turn words together: when zero (always in
    /// record), publish and consume skip looking for someone to wake.
    pub turn_sleepers: AtomicU32,

    /// Length of `message`.
    pub message_len: AtomicU32,
    /// Why replay stopped or the shim failed, one line, written once.
    pub message: [AtomicU8; MESSAGE_LEN],
}

const _: () = assert!(core::mem::size_of::<Control>() <= CKPT_OFFSET);

/// Bytes of `CkptControl::path`.
pub const CKPT_PATH_LEN: usize = 2048;
/// The signal with which a checkpoint is asked of a process and its threads
/// are stopped: `SIGRTMAX`. The shim keeps it for itself (the program can
/// neither handle nor block it).
pub const CKPT_SIGNAL: i32 = 64;
/// `CkptControl::status`: the image file was written.
pub const CKPT_OK: u32 = 0;
/// `CkptControl::status`: it failed; `message` says why.
pub const CKPT_FAILED: u32 = 1;

/// A checkpoint asked of one process of the program (DESIGN §6), and its
/// answer. One request at a time: a requester takes `owner`, fills in the
/// target and the path, bumps `request` and sends [`CKPT_SIGNAL`]; the shim
/// in the target writes `<path>/<vpid>.fimg.tmp`, fills in the answer, sets
/// `done` to `request` and wakes it (a futex on `done`).
#[repr(C, align(64))]
pub struct CkptControl {
    /// The requester's pid while it holds the block; 0 when free.
    pub owner: AtomicU32,
    /// Requests made so far.
    pub request: AtomicU32,
    /// The last request answered.
    pub done: AtomicU32,
    /// [`CKPT_OK`] or [`CKPT_FAILED`].
    pub status: AtomicU32,
    /// The real pid of the process asked.
    pub target_pid: AtomicU32,
    /// Bytes of `path` used.
    pub path_len: AtomicU32,
    /// The checkpoint's sequence number (from 1).
    pub seq: AtomicU64,
    /// Answer: threads stopped.
    pub threads: AtomicU32,
    /// Answer: mappings saved.
    pub mappings: AtomicU32,
    /// Answer: bytes of memory saved (pages written to the image).
    pub memory_bytes: AtomicU64,
    /// Answer: nanoseconds from the stop of the first thread to the release
    /// of the last (the program's freeze).
    pub freeze_ns: AtomicU64,
    /// Answer: bytes of the process file.
    pub file_bytes: AtomicU64,
    /// Bytes of `message` used.
    pub message_len: AtomicU32,
    /// The image directory, absolute.
    pub path: [AtomicU8; CKPT_PATH_LEN],
    /// Why it failed, one line.
    pub message: [AtomicU8; MESSAGE_LEN],
    /// Request: 0 for a full image; else the sequence number of the image
    /// this one is incremental to (the process's last checkpoint).
    pub parent_seq: AtomicU64,
    /// Answer in progress: the pid of the process writing the image's
    /// memory (a copy of the program), or 0; if it dies, nothing answers.
    pub writer_pid: AtomicU32,
    /// Request: the image's sequence number is at least this (0: none),
    /// so that the files of one image of several processes, each of
    /// which counts its own, carry one number.
    pub min_seq: AtomicU64,
    /// Request: non-zero when the image holds every live process of the
    /// program; each process section then names the process's parent.
    pub tree: AtomicU32,
}

const _: () = assert!(CKPT_OFFSET + core::mem::size_of::<CkptControl>() <= PROCS_OFFSET);

/// `ProcEntry::state`: the slot is free.
pub const PROC_FREE: u32 = 0;
/// `ProcEntry::state`: the slot is taken by a live process.
pub const PROC_LIVE: u32 = 1;
/// `ProcEntry::state`: the process has exited.
pub const PROC_EXITED: u32 = 2;

/// `ProcEntry::exec_pending`: no exec under way.
pub const EXEC_NONE: u32 = 0;
/// `ProcEntry::exec_pending`: an exec is under way; in record the ordering
/// lock is held on its behalf until the new image logs it.
pub const EXEC_PENDING: u32 = 1;
/// `ProcEntry::exec_pending`: another process is finishing that exec for a
/// new image that runs without the shim.
pub const EXEC_CLAIMED: u32 = 2;

/// What a descriptor is, for replay.
pub const FD_CLOSED: u8 = 0;
/// A descriptor whose I/O is repeated in replay: a regular file, a directory,
/// or one inherited from outside the program (its stdout, say).
pub const FD_REAL: u8 = 1;
/// A descriptor whose I/O replay answers from the log: sockets, pipes
/// between the program's processes, epoll sets, eventfds, timerfds.
pub const FD_PLACEHOLDER: u8 = 2;

/// One process of the program.
#[repr(C)]
pub struct ProcEntry {
    /// `PROC_*`.
    pub state: AtomicU32,
    /// Virtual pid.
    pub vpid: AtomicU32,
    /// Real pid on this host (0 until known).
    pub real_pid: AtomicU32,
    /// Virtual pid of the parent (0 for the root).
    pub parent_vpid: AtomicU32,
    /// Non-zero while an `execve` of this process is under way: the new
    /// image's shim finishes logging it.
    pub exec_pending: AtomicU32,
    /// The vtid of the thread that called `execve`.
    pub exec_vtid: AtomicU32,
    /// CRC-32C of the path of that `execve`.
    pub exec_digest: AtomicU32,
    _pad: AtomicU32,
    /// CLOCK_MONOTONIC nanoseconds when that `execve` began.
    pub exec_started_ns: AtomicU64,
    /// Zero.
    pub reserved: [AtomicU32; 6],
    /// `FD_*` per descriptor number.
    pub fds: [AtomicU8; MAX_FDS],
}

const _: () = assert!(core::mem::size_of::<ProcEntry>() <= PROC_ENTRY_LEN);
const _: () = assert!(core::mem::offset_of!(ProcEntry, fds) == 64);

/// Waiting and waking on a 32-bit word shared between processes.
pub trait Futex {
    /// Wait while `*word == expected`, at most `timeout_ms` (None: forever).
    /// Spurious returns are allowed.
    fn wait(&self, word: &AtomicU32, expected: u32, timeout_ms: Option<u32>);
    /// Wake every waiter on `word`.
    fn wake_all(&self, word: &AtomicU32);
    /// A polling side never registers as a sleeper: the other side then
    /// never pays a wake-up system call for it. `wait` should just pause.
    fn polls(&self) -> bool {
        false
    }
}

/// A view of a mapped region.
#[derive(Clone, Copy)]
pub struct Region {
    base: *mut u8,
}

// SAFETY: the region is shared memory accessed only through atomics (control
// and process table) and through the ring protocol, which hands each byte
// range to one side at a time.
unsafe impl Send for Region {}
// SAFETY: as for Send.
unsafe impl Sync for Region {}

/// Copy `src` to `dst`: inline for up to 16 bytes, `memcpy` beyond.
///
/// # Safety
/// `dst` must be valid for writing `src.len()` bytes that do not overlap
/// `src`.
#[inline(always)]
unsafe fn small_copy(src: &[u8], dst: *mut u8) {
    let n = src.len();
    let s = src.as_ptr();
    // SAFETY: every access below stays within the first n bytes of `src`
    // and `dst` (two possibly overlapping halves of the same length cover
    // n exactly), which the caller guarantees.
    unsafe {
        if (8..=16).contains(&n) {
            let a = core::ptr::read_unaligned(s as *const u64);
            let b = core::ptr::read_unaligned(s.add(n - 8) as *const u64);
            core::ptr::write_unaligned(dst as *mut u64, a);
            core::ptr::write_unaligned(dst.add(n - 8) as *mut u64, b);
        } else if (4..8).contains(&n) {
            let a = core::ptr::read_unaligned(s as *const u32);
            let b = core::ptr::read_unaligned(s.add(n - 4) as *const u32);
            core::ptr::write_unaligned(dst as *mut u32, a);
            core::ptr::write_unaligned(dst.add(n - 4) as *mut u32, b);
        } else if n < 4 {
            for i in 0..n {
                *dst.add(i) = *s.add(i);
            }
        } else {
            core::ptr::copy_nonoverlapping(s, dst, n);
        }
    }
}

impl Region {
    /// Wrap a mapping of [`REGION_LEN`] bytes.
    ///
    /// # Safety
    /// `base` must point to a live, writable mapping of at least
    /// [`REGION_LEN`] bytes, page aligned, that stays mapped while this
    /// `Region` (or a copy) is used.
    pub unsafe fn from_raw(base: *mut u8) -> Region {
        Region { base }
    }

    /// The address of the mapping.
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    /// The control block.
    pub fn control(&self) -> &Control {
        // SAFETY: from_raw's contract: the mapping is live and large enough;
        // Control is made of atomics, valid for any bytes (zero included).
        unsafe { &*(self.base as *const Control) }
    }

    /// The checkpoint control block.
    pub fn ckpt(&self) -> &CkptControl {
        // SAFETY: from_raw's contract: the mapping is live and large enough
        // (the block lies below PROCS_OFFSET, checked at compile time);
        // CkptControl is made of atomics, valid for any bytes.
        unsafe { &*(self.base.add(CKPT_OFFSET) as *const CkptControl) }
    }

    /// Process-table entry `slot` (< MAX_PROCS).
    pub fn proc(&self, slot: usize) -> &ProcEntry {
        assert!(slot < MAX_PROCS);
        // SAFETY: the slot lies inside the mapping (checked above); ProcEntry
        // is made of atomics, valid for any bytes.
        unsafe { &*(self.base.add(PROCS_OFFSET + slot * PROC_ENTRY_LEN) as *const ProcEntry) }
    }

    /// Initialise a fresh (zeroed) region for `mode`.
    pub fn init(&self, mode: Mode) {
        let c = self.control();
        c.version.store(LAYOUT_VERSION, Ordering::Relaxed);
        c.mode.store(mode as u32, Ordering::Relaxed);
        c.next_gseq.store(1, Ordering::Relaxed);
        c.next_vid.store(1, Ordering::Relaxed);
        c.magic.store(CONTROL_MAGIC, Ordering::Release);
    }

    /// Whether the region was initialised by a compatible writer.
    pub fn is_valid(&self) -> bool {
        let c = self.control();
        c.magic.load(Ordering::Acquire) == CONTROL_MAGIC
            && c.version.load(Ordering::Relaxed) == LAYOUT_VERSION
    }

    /// The mode.
    pub fn mode(&self) -> Option<Mode> {
        Mode::from_u32(self.control().mode.load(Ordering::Acquire))
    }

    /// Set a `CTL_*` flag and wake everyone who may wait for it.
    pub fn raise(&self, flag: u32, futex: &impl Futex) {
        let c = self.control();
        c.flags.fetch_or(flag, Ordering::AcqRel);
        for (w, n) in c.turn_words.iter().zip(&c.turn_waiters) {
            if n.load(Ordering::SeqCst) != 0 {
                w.fetch_add(1, Ordering::SeqCst);
                futex.wake_all(w);
            }
        }
        c.head_seq.fetch_add(1, Ordering::AcqRel);
        c.tail_seq.fetch_add(1, Ordering::AcqRel);
        futex.wake_all(&c.head_seq);
        futex.wake_all(&c.tail_seq);
    }

    /// Clear a `CTL_*` flag and wake everyone waiting on the gate word.
    pub fn lower(&self, flag: u32, futex: &impl Futex) {
        let c = self.control();
        c.flags.fetch_and(!flag, Ordering::SeqCst);
        c.gate_seq.fetch_add(1, Ordering::SeqCst);
        futex.wake_all(&c.gate_seq);
    }

    /// Replica: switch from replay to record, the next record being
    /// `next_gseq`, and wake every thread waiting for its turn. The ring
    /// must be empty (every record fed has been replayed).
    pub fn go_live(&self, next_gseq: u64, futex: &impl Futex) {
        let c = self.control();
        c.next_gseq.store(next_gseq, Ordering::SeqCst);
        c.mode.store(Mode::Record as u32, Ordering::SeqCst);
        self.raise(CTL_WENT_LIVE, futex);
        c.gate_seq.fetch_add(1, Ordering::SeqCst);
        futex.wake_all(&c.gate_seq);
    }

    /// Whether `flag` is set.
    pub fn has(&self, flag: u32) -> bool {
        self.control().flags.load(Ordering::Acquire) & flag != 0
    }

    /// Store a one-line message (first writer wins) for the other side.
    pub fn set_message(&self, msg: &[u8]) {
        let c = self.control();
        if c.message_len.load(Ordering::Acquire) != 0 {
            return;
        }
        let n = msg.len().min(MESSAGE_LEN);
        for (i, b) in msg[..n].iter().enumerate() {
            c.message[i].store(*b, Ordering::Relaxed);
        }
        let _ = c
            .message_len
            .compare_exchange(0, n as u32, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Copy the message out; returns its length.
    pub fn message(&self, out: &mut [u8]) -> usize {
        let c = self.control();
        let n = (c.message_len.load(Ordering::Acquire) as usize).min(out.len());
        for (i, o) in out[..n].iter_mut().enumerate() {
            *o = c.message[i].load(Ordering::Relaxed);
        }
        n
    }

    fn ring(&self) -> *mut u8 {
        // SAFETY: RING_OFFSET < REGION_LEN, inside the mapping.
        unsafe { self.base.add(RING_OFFSET) }
    }

    /// Copy `bytes` into the ring at byte counter `pos`, wrapping.
    ///
    /// # Safety
    /// The range `[pos, pos + bytes.len())` must belong to the caller under
    /// the ring protocol (reserved by a producer, not yet consumed).
    unsafe fn copy_in(&self, pos: u64, bytes: &[u8]) {
        let at = (pos as usize) & (RING_CAP - 1);
        let first = bytes.len().min(RING_CAP - at);
        // SAFETY: at + first <= RING_CAP and the rest fits at the start; the
        // caller owns the range.
        unsafe {
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ring().add(at), first);
            core::ptr::copy_nonoverlapping(
                bytes.as_ptr().add(first),
                self.ring(),
                bytes.len() - first,
            );
        }
    }

    /// Copy out of the ring at byte counter `pos`, wrapping.
    ///
    /// # Safety
    /// The range must be published and not yet consumed.
    unsafe fn copy_out(&self, pos: u64, out: &mut [u8]) {
        let at = (pos as usize) & (RING_CAP - 1);
        let first = out.len().min(RING_CAP - at);
        // SAFETY: as copy_in.
        unsafe {
            core::ptr::copy_nonoverlapping(self.ring().add(at), out.as_mut_ptr(), first);
            core::ptr::copy_nonoverlapping(
                self.ring(),
                out.as_mut_ptr().add(first),
                out.len() - first,
            );
        }
    }

    /// Free bytes in the ring.
    pub fn free_space(&self) -> usize {
        let c = self.control();
        let used = c.head.load(Ordering::Acquire) - c.tail.load(Ordering::Acquire);
        RING_CAP - used as usize
    }

    /// Publish one record, waiting while the ring is full. Only one producer
    /// may call this at a time (the shim holds the ordering lock; in replay
    /// the CLI is the only producer). Returns false if the consumer went away
    /// (`CTL_CONSUMER_GONE`) before there was room.
    pub fn publish(&self, header: &RecordHeader, payload: &[u8], futex: &impl Futex) -> bool {
        self.publish_parts(header, &[payload], futex)
    }

    /// As [`Region::publish`], with the payload gathered from `parts` in
    /// order (`header.payload_len` must be their total length).
    pub fn publish_parts(
        &self,
        header: &RecordHeader,
        parts: &[&[u8]],
        futex: &impl Futex,
    ) -> bool {
        let c = self.control();
        let payload_len: usize = parts.iter().map(|p| p.len()).sum();
        debug_assert_eq!(payload_len, header.payload_len as usize);
        let need = padded(RECORD_HEADER_LEN + payload_len) as u64;
        debug_assert!(need as usize <= RING_CAP);
        let head = c.head.load(Ordering::Relaxed);
        let fits = |tail: u64| head + need - tail <= RING_CAP as u64;
        if !fits(c.tail_cache.load(Ordering::Relaxed)) {
            loop {
                let tail = c.tail.load(Ordering::SeqCst);
                c.tail_cache.store(tail, Ordering::Relaxed);
                if fits(tail) {
                    break;
                }
                if self.has(CTL_CONSUMER_GONE) {
                    return false;
                }
                if futex.polls() {
                    futex.wait(&c.tail_seq, 0, Some(1));
                    continue;
                }
                c.tail_waiters.fetch_add(1, Ordering::SeqCst);
                let seq = c.tail_seq.load(Ordering::SeqCst);
                if c.tail.load(Ordering::SeqCst) == tail && !self.has(CTL_CONSUMER_GONE) {
                    futex.wait(&c.tail_seq, seq, Some(100));
                }
                leave_wait(&c.tail_waiters);
            }
        }
        let at = (head as usize) & (RING_CAP - 1);
        if at + need as usize <= RING_CAP {
            // The common case, a record that does not wrap: written in place
            // with copies the compiler can inline (most payloads are a few
            // bytes: a length and a clock reading).
            // SAFETY: [at, at + need) is inside the ring, free (checked
            // above), and only this producer writes it until head is
            // published; the parts are the caller's live slices.
            unsafe {
                let dst = self.ring().add(at);
                core::ptr::write_unaligned(dst as *mut RecordHeader, *header);
                let mut off = RECORD_HEADER_LEN;
                for p in parts {
                    small_copy(p, dst.add(off));
                    off += p.len();
                }
            }
        } else {
            // SAFETY: [head, head + need) is free (checked above) and only
            // this producer writes it until head is published.
            unsafe {
                self.copy_in(head, header.as_bytes());
                let mut at = head + RECORD_HEADER_LEN as u64;
                for p in parts {
                    self.copy_in(at, p);
                    at += p.len() as u64;
                }
            }
        }
        // A sleeper registers, then looks at head, then sleeps on head_seq;
        // the producer stores head, then looks for sleepers: with both in
        // one total order (SeqCst), one of them always sees the other.
        c.head.store(head + need, Ordering::SeqCst);
        if c.head_waiters.load(Ordering::SeqCst) != 0 {
            c.head_seq.fetch_add(1, Ordering::SeqCst);
            futex.wake_all(&c.head_seq);
        }
        // Published into an empty ring: this record is the head now, and
        // its thread may sleep on its turn word (see `consume_and_pass`).
        // Only looked at when someone sleeps: `tail` is the consumer's line.
        if c.turn_sleepers.load(Ordering::SeqCst) != 0 && c.tail.load(Ordering::SeqCst) == head {
            self.wake_turn(header.vtid, futex);
        }
        true
    }

    /// Wake the threads waiting on the turn word of `vtid`.
    fn wake_turn(&self, vtid: u32, futex: &impl Futex) {
        let c = self.control();
        let i = vtid as usize % TURN_SLOTS;
        if c.turn_waiters[i].load(Ordering::SeqCst) != 0 {
            c.turn_words[i].fetch_add(1, Ordering::SeqCst);
            futex.wake_all(&c.turn_words[i]);
        }
    }

    /// Replay: consume the head record and wake the thread whose record is
    /// the head now. The consumer stores `tail` then looks at `head`; the
    /// producer stores `head` then looks at `tail`: one of them sees the
    /// other, so the next record's thread is always woken.
    pub fn consume_and_pass(&self, header: &RecordHeader, futex: &impl Futex) {
        self.consume(header, futex);
        if self.control().turn_sleepers.load(Ordering::SeqCst) == 0 {
            return;
        }
        if let Some(next) = self.peek() {
            self.wake_turn(next.vtid, futex);
        }
    }

    /// The thread of the record at the head, if one is published.
    pub fn head_vtid(&self) -> Option<u32> {
        self.peek().map(|h| h.vtid)
    }

    /// Replay: sleep until the head record is `vtid`'s (or the ring is
    /// empty, or a flag is raised, or `timeout_ms` passes). Records of other
    /// threads coming and going do not wake it: whoever makes a record the
    /// head wakes that record's thread. Spurious returns are allowed.
    pub fn wait_turn(&self, vtid: u32, futex: &impl Futex, timeout_ms: Option<u32>) {
        let c = self.control();
        let i = vtid as usize % TURN_SLOTS;
        c.turn_sleepers.fetch_add(1, Ordering::SeqCst);
        c.turn_waiters[i].fetch_add(1, Ordering::SeqCst);
        let w = c.turn_words[i].load(Ordering::SeqCst);
        let head = self.head_vtid();
        // The end of the log does not end this wait: the head record's
        // thread still has it to replay. Settings (a gated primary, a live
        // replica) do not either.
        let stop = c.flags.load(Ordering::SeqCst) & WAKING_FLAGS & !CTL_END_OF_LOG;
        if head.is_some() && head != Some(vtid) && stop == 0 {
            futex.wait(&c.turn_words[i], w, timeout_ms);
        }
        leave_wait(&c.turn_waiters[i]);
        leave_wait(&c.turn_sleepers);
    }

    /// The published-bytes counter: records below it may be read with
    /// [`Region::peek_below`] without looking at the producer's cache line
    /// again (a consumer draining a batch).
    pub fn head(&self) -> u64 {
        self.control().head.load(Ordering::SeqCst)
    }

    /// The header of the record at `tail`, if `tail` is below `head` (a
    /// value [`Region::head`] returned).
    pub fn peek_below(&self, head: u64) -> Option<RecordHeader> {
        let tail = self.control().tail.load(Ordering::Relaxed);
        if head <= tail {
            return None;
        }
        let mut h = [0u8; RECORD_HEADER_LEN];
        // SAFETY: the record at tail is published (head > tail).
        unsafe { self.copy_out(tail, &mut h) };
        RecordHeader::read_from_bytes(&h).ok()
    }

    /// The header of the record at `tail`, if one is published.
    pub fn peek(&self) -> Option<RecordHeader> {
        let c = self.control();
        let tail = c.tail.load(Ordering::Acquire);
        if c.head.load(Ordering::Acquire) <= tail {
            return None;
        }
        let mut h = [0u8; RECORD_HEADER_LEN];
        // SAFETY: the record at tail is published (head > tail).
        unsafe { self.copy_out(tail, &mut h) };
        RecordHeader::read_from_bytes(&h).ok()
    }

    /// Copy the payload of the record at `tail` (whose header `peek`
    /// returned) into `out`, which must be at most `payload_len` long; starts
    /// `skip` bytes into the payload.
    pub fn read_payload(&self, header: &RecordHeader, skip: usize, out: &mut [u8]) {
        assert!(skip + out.len() <= header.payload_len as usize);
        let tail = self.control().tail.load(Ordering::Acquire);
        // SAFETY: the record at tail is published and not consumed: only its
        // owner consumes it, and the caller is that owner.
        unsafe { self.copy_out(tail + (RECORD_HEADER_LEN + skip) as u64, out) };
    }

    /// Consume the record at `tail` (whose header `peek` returned).
    pub fn consume(&self, header: &RecordHeader, futex: &impl Futex) {
        let c = self.control();
        let tail = c.tail.load(Ordering::Acquire);
        c.consumed.fetch_add(1, Ordering::Relaxed);
        c.tail
            .store(tail + header.padded_len() as u64, Ordering::SeqCst);
        if c.tail_waiters.load(Ordering::SeqCst) != 0 {
            c.tail_seq.fetch_add(1, Ordering::SeqCst);
            futex.wake_all(&c.tail_seq);
        }
    }

    /// A consumer that drains many records at once (record mode): the
    /// position of the first unconsumed record. Walk the records from there
    /// with [`Region::header_at`] and [`Region::copy_record`], then release
    /// them all with one [`Region::consume_to`].
    pub fn consume_pos(&self) -> u64 {
        self.control().tail.load(Ordering::Acquire)
    }

    /// The header of the record at byte counter `pos`, if `pos` is below
    /// `head` (a value [`Region::head`] returned). Its lengths are the
    /// producer's: check them before using them.
    pub fn header_at(&self, pos: u64, head: u64) -> Option<RecordHeader> {
        if head <= pos {
            return None;
        }
        let mut h = [0u8; RECORD_HEADER_LEN];
        // SAFETY: the record at pos is published (pos < head) and, as the
        // caller walks from `consume_pos`, not yet consumed.
        unsafe { self.copy_out(pos, &mut h) };
        RecordHeader::read_from_bytes(&h).ok()
    }

    /// Copy the first `out.len()` bytes of the record at `pos` (header and
    /// payload; `out.len()` must not exceed the record's padded length).
    pub fn copy_record(&self, pos: u64, out: &mut [u8]) {
        // SAFETY: the caller found a record at pos with `header_at` and
        // keeps within it; it is published and not consumed.
        unsafe { self.copy_out(pos, out) };
    }

    /// Where the ring wraps next after byte counter `pos`: bytes from `pos`
    /// up to there are contiguous in memory.
    pub fn lap_end(pos: u64) -> u64 {
        (pos / RING_CAP as u64 + 1) * RING_CAP as u64
    }

    /// The published, unconsumed ring bytes `[pos, pos + len)`, which must
    /// not wrap (`pos + len <= Region::lap_end(pos)`), for the consumer to
    /// seal records in place (checksum, zero padding) and write them out
    /// without copying them first.
    ///
    /// # Safety
    /// Only the one consumer may call this, for bytes below `head` and at or
    /// above `tail` (the producer never touches those again until they are
    /// released), and the slice must not be used after
    /// [`Region::consume_to`] released them or alongside another slice over
    /// the same bytes.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn unconsumed_mut(&self, pos: u64, len: usize) -> &mut [u8] {
        let at = (pos as usize) & (RING_CAP - 1);
        debug_assert!(at + len <= RING_CAP);
        // SAFETY: [at, at + len) is inside the ring (no wrap), and by the
        // caller's promise no one else reads or writes it meanwhile.
        unsafe { core::slice::from_raw_parts_mut(self.ring().add(at), len) }
    }

    /// Release every record below byte counter `pos` (`records` of them),
    /// as [`Region::consume`] would one by one.
    pub fn consume_to(&self, pos: u64, records: u64, futex: &impl Futex) {
        let c = self.control();
        if pos == c.tail.load(Ordering::Relaxed) {
            return;
        }
        c.consumed.fetch_add(records, Ordering::Relaxed);
        c.tail.store(pos, Ordering::SeqCst);
        if c.tail_waiters.load(Ordering::SeqCst) != 0 {
            c.tail_seq.fetch_add(1, Ordering::SeqCst);
            futex.wake_all(&c.tail_seq);
        }
    }

    /// Wait until a record is published (the ring is not empty), a flag is
    /// raised, or `timeout_ms` passes. Spurious returns are allowed. For
    /// the threads of a replica, which must see it go live.
    pub fn wait_published(&self, futex: &impl Futex, timeout_ms: Option<u32>) {
        self.wait_published_unless(futex, timeout_ms, WAKING_FLAGS);
    }

    /// The consumer of a recording ring: like [`Region::wait_published`],
    /// but a replica's having gone live ([`CTL_WENT_LIVE`], which stays set
    /// for the rest of the program's life) is history to the consumer of
    /// its new records, not an event to wake for.
    pub fn wait_for_records(&self, futex: &impl Futex, timeout_ms: Option<u32>) {
        self.wait_published_unless(futex, timeout_ms, WAKING_FLAGS & !CTL_WENT_LIVE);
    }

    fn wait_published_unless(&self, futex: &impl Futex, timeout_ms: Option<u32>, waking: u32) {
        let c = self.control();
        if futex.polls() {
            futex.wait(&c.head_seq, 0, timeout_ms);
            return;
        }
        c.head_waiters.fetch_add(1, Ordering::SeqCst);
        let seq = c.head_seq.load(Ordering::SeqCst);
        if c.head.load(Ordering::SeqCst) == c.tail.load(Ordering::SeqCst)
            && c.flags.load(Ordering::SeqCst) & waking == 0
        {
            futex.wait(&c.head_seq, seq, timeout_ms);
        }
        leave_wait(&c.head_waiters);
    }

    /// The consumed-bytes counter (replay: whether the head record moved).
    pub fn tail(&self) -> u64 {
        self.control().tail.load(Ordering::SeqCst)
    }

    /// Find the process-table slot of a virtual pid.
    pub fn slot_of_vpid(&self, vpid: u32) -> Option<usize> {
        (0..MAX_PROCS).find(|&s| {
            let p = self.proc(s);
            p.state.load(Ordering::Acquire) != PROC_FREE && p.vpid.load(Ordering::Acquire) == vpid
        })
    }

    /// Find the live process-table slot of a real pid.
    pub fn slot_of_real_pid(&self, pid: u32) -> Option<usize> {
        (0..MAX_PROCS).find(|&s| {
            let p = self.proc(s);
            p.state.load(Ordering::Acquire) == PROC_LIVE
                && p.real_pid.load(Ordering::Acquire) == pid
        })
    }

    /// Take a free process-table slot for `vpid`, child of `parent_vpid`.
    pub fn alloc_proc(&self, vpid: u32, parent_vpid: u32) -> Option<usize> {
        for s in 0..MAX_PROCS {
            let p = self.proc(s);
            if p.state
                .compare_exchange(PROC_FREE, PROC_LIVE, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                p.real_pid.store(0, Ordering::Relaxed);
                p.parent_vpid.store(parent_vpid, Ordering::Relaxed);
                p.exec_pending.store(0, Ordering::Relaxed);
                p.vpid.store(vpid, Ordering::Release);
                return Some(s);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
