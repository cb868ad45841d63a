//! Per-process and per-thread state, the ordering lock (record) and the turn
//! (replay): the barrier that gives every finished call its place in `gseq`.
//!
//! Nothing here allocates: per-process state is in statics, per-thread state
//! in `const`-initialised thread-locals (static TLS of a preloaded library,
//! safe in signal handlers), and what processes share lives in the region.

use crate::sys::{self, GateFutex};
use core::cell::Cell;
use core::fmt::Write as _;
use core::sync::atomic::{AtomicBool, AtomicIsize, AtomicU32, AtomicUsize, Ordering};
use ferry_proto::{calls, Kind, RecordHeader};
use ferry_ring::{Mode, Region, CTL_DIVERGED, CTL_END_OF_LOG, CTL_FAILED, REGION_ADDR};

/// The region's base once mapped (0: the shim is inactive in this process).
static REGION: AtomicUsize = AtomicUsize::new(0);
/// The mode word, cached.
static MODE: AtomicU32 = AtomicU32::new(0);
/// This process's slot in the process table.
pub static MY_SLOT: AtomicUsize = AtomicUsize::new(0);
/// This process's virtual pid.
pub static MY_VPID: AtomicU32 = AtomicU32::new(0);
/// Set once init has finished.
pub static READY: AtomicBool = AtomicBool::new(false);

/// Everything the shim keeps per thread, in one thread-local: a lookup of
/// a thread-local in a shared library is a call (`__tls_get_addr`), so hot
/// paths take `me()` once.
pub struct Thread {
    /// Syscall User Dispatch selector: ALLOW (0) or BLOCK (1). The kernel
    /// reads it at this address.
    pub selector: Cell<u8>,
    /// Non-zero while the thread runs shim code (the re-entrancy guard).
    pub in_shim: Cell<u32>,
    /// This thread's virtual tid (0: not a thread the shim knows).
    pub vtid: Cell<u32>,
    /// Real tid, cached (0: unknown).
    real_tid: Cell<u32>,
    /// The tid the program knows this thread by, when it is not the real
    /// one (a thread resumed from a checkpoint); 0 otherwise.
    pub shown_tid: Cell<u32>,
    /// Depth of the ordering lock held by this thread.
    lock_depth: Cell<u32>,
    /// Signals noted by the shim's handler, not yet delivered (bit n-1).
    pub pending: Cell<u64>,
    /// The last delivery asks the interrupted call to be restarted.
    pub restart: Cell<bool>,
    /// Record: the last record said signals follow it. Replay: the record
    /// just consumed said so.
    pub follow: Cell<bool>,
}

thread_local! {
    static THREAD: Thread = const {
        Thread {
            selector: Cell::new(0),
            in_shim: Cell::new(0),
            vtid: Cell::new(0),
            real_tid: Cell::new(0),
            shown_tid: Cell::new(0),
            lock_depth: Cell::new(0),
            pending: Cell::new(0),
            restart: Cell::new(false),
            follow: Cell::new(false),
        }
    };
}

/// Where `THREAD` sits relative to the thread pointer, once measured
/// (0: not yet). A library loaded at program start, as `LD_PRELOAD` loads
/// the shim, has its thread-locals in the static TLS block, at one fixed
/// offset from every thread's thread pointer: the initial-exec model,
/// which rustc does not offer a `cdylib` on stable. With the offset known,
/// `me()` is two instructions instead of a call to `__tls_get_addr` (the
/// record path looks itself up about ten times per call).
static TLS_OFFSET: AtomicIsize = AtomicIsize::new(0);

/// The thread pointer: on x86_64 glibc keeps the TCB's address at `%fs:0`.
#[inline(always)]
fn thread_pointer() -> isize {
    let tp: isize;
    // SAFETY: reads one word at %fs:0, which glibc sets to the thread's own
    // TCB before any code of the thread runs; no memory is written.
    unsafe {
        core::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp,
            options(nostack, readonly, preserves_flags, pure));
    }
    tp
}

/// `THREAD` looked up through `__tls_get_addr`.
fn me_slow() -> &'static Thread {
    // SAFETY: the thread-local lives as long as its thread, and the
    // reference never leaves the thread (Thread is not Sync).
    THREAD.with(|t| unsafe { &*(t as *const Thread) })
}

/// Measure `TLS_OFFSET` (at init, in the program's first thread).
pub fn init_tls_offset() {
    let off = me_slow() as *const Thread as isize - thread_pointer();
    TLS_OFFSET.store(off, Ordering::Relaxed);
}

/// A new thread checks that its thread-locals are where `TLS_OFFSET` says;
/// were they elsewhere (the shim loaded with dynamic TLS), every lookup
/// would touch another thread's state, so the shim stops the program.
pub fn check_tls_offset() {
    let off = TLS_OFFSET.load(Ordering::Relaxed);
    if off != 0 && me_slow() as *const Thread as isize - thread_pointer() != off {
        fail(b"the shim's thread-locals are not in static TLS (load it with LD_PRELOAD)");
    }
}

/// The calling thread's state.
#[inline(always)]
pub fn me() -> &'static Thread {
    let off = TLS_OFFSET.load(Ordering::Relaxed);
    if off != 0 {
        // SAFETY: `off` was measured as THREAD's offset from the thread
        // pointer, the same in every thread of the process (static TLS,
        // checked by each thread at its start); the reference never leaves
        // the thread.
        return unsafe { &*((thread_pointer() + off) as *const Thread) };
    }
    me_slow()
}

/// The region, if the shim is active.
#[inline]
pub fn region() -> Option<Region> {
    let b = REGION.load(Ordering::Acquire);
    if b == 0 {
        None
    } else {
        // SAFETY: REGION is only set after the region was mapped at that
        // address, and it is never unmapped.
        Some(unsafe { Region::from_raw(b as *mut u8) })
    }
}

/// The region of an active shim. Only called on paths reached when active.
#[inline]
pub fn reg() -> Region {
    // SAFETY: callers run only after init mapped the region (mode() != None).
    unsafe { Region::from_raw(REGION.load(Ordering::Acquire) as *mut u8) }
}

/// The mode, `None` when inactive.
#[inline]
pub fn mode() -> Option<Mode> {
    Mode::from_u32(MODE.load(Ordering::Relaxed))
}

/// This process goes live: from now on its calls run and are logged.
pub fn set_mode_record() {
    MODE.store(Mode::Record as u32, Ordering::Release);
}

/// Map the region from `REGION_FD` at its fixed address.
pub fn map_region() -> Result<Region, &'static str> {
    let fd = ferry_ring::REGION_FD as usize;
    if sys::sys2(libc::SYS_fcntl, fd, libc::F_GETFD as usize) < 0 {
        return Err("no region descriptor");
    }
    let p = sys::raw(
        libc::SYS_mmap,
        [
            REGION_ADDR,
            ferry_ring::REGION_LEN,
            (libc::PROT_READ | libc::PROT_WRITE) as usize,
            (libc::MAP_SHARED | libc::MAP_FIXED_NOREPLACE) as usize,
            fd,
            0,
        ],
    );
    if p as usize != REGION_ADDR {
        return Err("cannot map the region at its fixed address");
    }
    // SAFETY: just mapped, REGION_LEN bytes, never unmapped.
    let r = unsafe { Region::from_raw(p as *mut u8) };
    if !r.is_valid() {
        return Err("the region has an unknown layout version");
    }
    REGION.store(p as usize, Ordering::Release);
    MODE.store(r.control().mode.load(Ordering::Acquire), Ordering::Release);
    Ok(r)
}

/// Forget the cached per-thread and per-process facts that a fork changes;
/// called in the child of a fork, before anything else.
pub fn after_fork_child(vpid: u32, slot: usize) {
    let t = me();
    t.real_tid.set(0);
    t.lock_depth.set(0);
    MY_VPID.store(vpid, Ordering::Release);
    MY_SLOT.store(slot, Ordering::Release);
    t.vtid.set(vpid);
}

/// A thread resumed from a checkpoint runs under a new real tid; it is
/// known to the program by `shown` (the tid it had).
pub fn after_restore_thread(shown: u32) {
    let t = me();
    t.real_tid.set(0);
    t.shown_tid.set(shown);
}

fn real_tid(t: &Thread) -> u32 {
    let v = t.real_tid.get();
    if v != 0 {
        return v;
    }
    let v = sys::gettid();
    t.real_tid.set(v);
    v
}

/// This thread's virtual tid.
#[inline]
pub fn vtid() -> u32 {
    me().vtid.get()
}

/// Record: take the ordering lock (re-entrant for the owning thread).
pub fn lock() {
    let t = me();
    let depth = t.lock_depth.get();
    if depth > 0 {
        t.lock_depth.set(depth + 1);
        return;
    }
    let r = reg();
    let c = r.control();
    let me = real_tid(t);
    let mut spins = 0u32;
    loop {
        match c
            .order_lock
            .compare_exchange(0, me, Ordering::SeqCst, Ordering::Relaxed)
        {
            Ok(_) => {
                if paused() {
                    continue;
                }
                break;
            }
            Err(owner) => {
                spins += 1;
                if spins < 64 {
                    core::hint::spin_loop();
                    continue;
                }
                c.order_waiters.fetch_add(1, Ordering::AcqRel);
                sys::futex_wait(&c.order_lock, owner, Some(50));
                ferry_ring::leave_wait(&c.order_waiters);
                if spins.is_multiple_of(4) && stale_lock(owner, me) {
                    break;
                }
            }
        }
    }
    t.lock_depth.set(1);
}

/// How long an exec may take before its new image is looked at.
const EXEC_GRACE_NS: u64 = 500_000_000;

/// Record, waiting for the ordering lock: whether its holder will never
/// release it, and if so take it over (returns true when `me` now holds
/// it). Two cases: the holder died (a process killed while it logged), or
/// the lock is held for an exec whose new image runs without the shim (a
/// static or set-uid program), which can never log it: the exec is logged
/// on its behalf.
fn stale_lock(owner: u32, me: u32) -> bool {
    let r = reg();
    let c = r.control();
    if let Some(slot) = shimless_exec() {
        let p = r.proc(slot);
        if p.exec_pending
            .compare_exchange(
                ferry_ring::EXEC_PENDING,
                ferry_ring::EXEC_CLAIMED,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            c.order_lock.store(me, Ordering::Release);
            self::me().lock_depth.set(1);
            let rec = Rec {
                kind: Kind::Exec,
                flags: 0,
                nr: libc::SYS_execve as u32,
                ret: 0,
                arg0: 0,
                arg1: p.exec_digest.load(Ordering::Relaxed) as u64,
            };
            emit_as(
                rec,
                p.vpid.load(Ordering::Relaxed),
                p.exec_vtid.load(Ordering::Relaxed),
                &[],
            );
            p.exec_pending
                .store(ferry_ring::EXEC_NONE, Ordering::Release);
            return true;
        }
        return false;
    }
    if any_exec_pending() {
        // The holder's tid may be gone because an exec from a secondary
        // thread gives it the process's tid; the new image takes over.
        return false;
    }
    thread_gone(owner)
        && c.order_lock
            .compare_exchange(owner, me, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
}

fn any_exec_pending() -> bool {
    let r = reg();
    (0..ferry_ring::MAX_PROCS)
        .any(|s| r.proc(s).exec_pending.load(Ordering::Acquire) != ferry_ring::EXEC_NONE)
}

/// A process whose exec began more than the grace period ago and whose new
/// image does not have the shim mapped.
pub fn shimless_exec() -> Option<usize> {
    let r = reg();
    let now = now_ns();
    (0..ferry_ring::MAX_PROCS).find(|&s| {
        let p = r.proc(s);
        p.exec_pending.load(Ordering::Acquire) == ferry_ring::EXEC_PENDING
            && now.saturating_sub(p.exec_started_ns.load(Ordering::Acquire)) > EXEC_GRACE_NS
            && !has_shim(p.real_pid.load(Ordering::Acquire))
    })
}

/// CLOCK_MONOTONIC in ns, for the shim's own timeouts (not logged: the
/// program never sees it).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    sys::sys2(
        libc::SYS_clock_gettime,
        libc::CLOCK_MONOTONIC as usize,
        &mut ts as *mut _ as usize,
    );
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `/proc/<n>/<leaf>` as a NUL-terminated path.
fn proc_path(n: u32, leaf: &[u8], out: &mut [u8; 48]) {
    let mut digits = [0u8; 10];
    let mut k = 0;
    let mut v = n;
    loop {
        digits[k] = b'0' + (v % 10) as u8;
        k += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let mut at = 0;
    for b in b"/proc/" {
        out[at] = *b;
        at += 1;
    }
    while k > 0 {
        k -= 1;
        out[at] = digits[k];
        at += 1;
    }
    out[at] = b'/';
    at += 1;
    for b in leaf {
        out[at] = *b;
        at += 1;
    }
    out[at] = 0;
}

/// Read up to `buf.len()` bytes of `/proc/<n>/<leaf>` from `offset`.
fn read_proc(n: u32, leaf: &[u8], offset: usize, buf: &mut [u8]) -> isize {
    let mut path = [0u8; 48];
    proc_path(n, leaf, &mut path);
    let fd = sys::raw(
        libc::SYS_openat,
        [
            libc::AT_FDCWD as usize,
            path.as_ptr() as usize,
            libc::O_RDONLY as usize | libc::O_CLOEXEC as usize,
            0,
            0,
            0,
        ],
    );
    if fd < 0 {
        return fd;
    }
    let n = sys::raw(
        libc::SYS_pread64,
        [
            fd as usize,
            buf.as_mut_ptr() as usize,
            buf.len(),
            offset,
            0,
            0,
        ],
    );
    sys::sys1(libc::SYS_close, fd as usize);
    n
}

/// Whether thread `tid` has ended (no such task, or a zombie).
fn thread_gone(tid: u32) -> bool {
    let mut buf = [0u8; 256];
    let n = read_proc(tid, b"stat", 0, &mut buf);
    if n <= 0 {
        return n == -(libc::ENOENT as isize) || n == -(libc::ESRCH as isize);
    }
    // "pid (comm) S ...": the state follows the last ')'.
    let s = &buf[..n as usize];
    match s.iter().rposition(|&b| b == b')') {
        Some(i) if i + 2 < s.len() => matches!(s[i + 2], b'Z' | b'X'),
        _ => false,
    }
}

/// Whether process `pid` has the shim mapped.
fn has_shim(pid: u32) -> bool {
    const NEEDLE: &[u8] = b"libferry_preload";
    let mut buf = [0u8; 4096];
    let mut offset = 0usize;
    loop {
        let n = read_proc(pid, b"maps", offset, &mut buf);
        if n <= 0 {
            // Gone or unreadable: nothing to wait for.
            return false;
        }
        let s = &buf[..n as usize];
        if s.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
            return true;
        }
        if (n as usize) < NEEDLE.len() {
            return false;
        }
        // Overlap so a name across two reads is still found.
        offset += n as usize - NEEDLE.len();
    }
}

/// Record: release the ordering lock.
pub fn unlock() {
    let t = me();
    let depth = t.lock_depth.get();
    debug_assert!(depth > 0);
    t.lock_depth.set(depth - 1);
    if depth == 1 {
        force_unlock();
    }
}

/// Release the ordering lock whoever holds it (the image after an exec takes
/// over the lock its predecessor held across `execve`).
pub fn force_unlock() {
    let r = reg();
    let c = r.control();
    c.order_lock.store(0, Ordering::Release);
    if c.order_waiters.load(Ordering::Acquire) != 0 {
        sys::futex_wake(&c.order_lock, 1);
    }
}

/// What a record says about the call, besides its payload.
#[derive(Clone, Copy)]
pub struct Rec {
    pub kind: Kind,
    pub flags: u16,
    pub nr: u32,
    pub ret: i64,
    pub arg0: u64,
    pub arg1: u64,
}

impl Rec {
    /// A syscall record.
    pub fn sys(nr: i64, ret: isize, arg0: u64, arg1: u64) -> Rec {
        Rec {
            kind: Kind::Syscall,
            flags: 0,
            nr: nr as u32,
            ret: ret as i64,
            arg0,
            arg1,
        }
    }
}

/// Record: append one record with the next `gseq`. Takes the ordering lock
/// for the append if the caller does not hold it.
pub fn emit(rec: Rec, parts: &[&[u8]]) -> u64 {
    emit_as(rec, MY_VPID.load(Ordering::Relaxed), me().vtid.get(), parts)
}

/// As [`emit`], for thread `vtid` of process `vpid`. Returns the record's
/// gseq.
pub fn emit_as(rec: Rec, vpid: u32, vtid: u32, parts: &[&[u8]]) -> u64 {
    lock();
    let r = reg();
    let c = r.control();
    // Under the ordering lock: a plain increment.
    let gseq = c.next_gseq.load(Ordering::Relaxed);
    c.next_gseq.store(gseq + 1, Ordering::Relaxed);
    let mut h = RecordHeader {
        len: 0,
        kind: rec.kind as u16,
        flags: rec.flags,
        gseq,
        vpid,
        vtid,
        nr: rec.nr,
        crc: 0,
        ret: rec.ret,
        arg0: rec.arg0,
        arg1: rec.arg1,
        payload_len: 0,
        reserved: 0,
    };
    let t = me();
    if rec.kind != Kind::Signal && t.pending.get() != 0 {
        h.flags |= ferry_proto::FLAG_SIGNALS_FOLLOW;
        t.follow.set(true);
    }
    h.size_parts(parts);
    if !r.publish_parts(&h, parts, &GateFutex) {
        // The consumer is gone: nobody can persist this record. The program
        // cannot continue protected; stop it rather than run unlogged.
        unlock();
        fail(b"the log consumer went away; stopping the program");
    }
    unlock();
    gseq
}

/// Record: log that this thread is about to make syscall `nr`, whose effect
/// others may observe before its result is logged. Replay: wait for that
/// point in the order. Together they keep cause before effect: a reader's
/// record can never come before the writer reached its write.
pub fn before(nr: i64, rec: bool) -> u64 {
    let r = Rec {
        kind: Kind::Call,
        flags: 0,
        nr: calls::Call::Before as u32,
        ret: 0,
        arg0: nr as u64,
        arg1: 0,
    };
    if rec {
        emit(r, &[])
    } else {
        let h = expect(
            Kind::Call,
            calls::Call::Before as u32,
            Some(nr as u64),
            None,
        );
        consume(&h);
        0
    }
}

/// Record: the output gate. With `CTL_GATED` (a primary in sync mode), an
/// output whose place in the log is `gseq` waits until the backups hold
/// every record up to it (`acked_gseq`) and the lease still runs
/// (`gate_until` on this host's monotonic clock, checked here, so the gate
/// closes on time even when `ferryd` is stopped).
pub fn gate(gseq: u64) {
    let r = reg();
    let c = r.control();
    loop {
        if !r.has(ferry_ring::CTL_GATED) {
            return;
        }
        let seq = c.gate_seq.load(Ordering::SeqCst);
        let until = c.gate_until.load(Ordering::SeqCst);
        let now = now_ns();
        if c.acked_gseq.load(Ordering::SeqCst) >= gseq && now < until {
            return;
        }
        if r.has(ferry_ring::CTL_CONSUMER_GONE) {
            fail(b"the daemon went away while an output waited for the gate; stopping the program");
        }
        // Sleep until the gate word changes; wake at least every 50 ms to
        // look at the clock and the daemon again.
        c.gate_waiters.fetch_add(1, Ordering::SeqCst);
        if c.gate_seq.load(Ordering::SeqCst) == seq {
            sys::futex_wait(&c.gate_seq, seq, Some(50));
        }
        ferry_ring::leave_wait(&c.gate_waiters);
    }
}

/// Record: a planned switchover asked the program to stop before its next
/// record. Called with the ordering lock just taken: lets it go and waits
/// until the pause is over (or the daemon is gone). Returns whether it
/// waited (the caller takes the lock again).
fn paused() -> bool {
    let r = reg();
    if !r.has(ferry_ring::CTL_PAUSE) {
        return false;
    }
    force_unlock();
    let c = r.control();
    while r.has(ferry_ring::CTL_PAUSE) && !r.has(ferry_ring::CTL_CONSUMER_GONE) {
        let seq = c.gate_seq.load(Ordering::SeqCst);
        if r.has(ferry_ring::CTL_PAUSE) {
            sys::futex_wait(&c.gate_seq, seq, Some(50));
        }
    }
    true
}

/// Stop the program because the shim cannot go on.
pub fn fail(msg: &[u8]) -> ! {
    if let Some(r) = region() {
        r.set_message(msg);
        r.raise(CTL_FAILED, &GateFutex);
    }
    sys::write_all(2, b"ferry: ");
    sys::write_all(2, msg);
    sys::write_all(2, b"\n");
    sys::exit_group(2)
}

/// Replay: wait until the record at the head of the log is this thread's,
/// delivering the signal records met on the way; stop the process if replay
/// ended or diverged elsewhere. Returns the header; its payload stays in the
/// ring until [`consume`].
pub fn turn() -> RecordHeader {
    match turn_or_live() {
        Some(h) => h,
        // The log ended inside this call: the primary stopped between its
        // records. The call ends with an error (its other records never
        // came), and the program goes on live.
        None => RecordHeader {
            flags: SYNTHETIC,
            ret: -(libc::ECONNRESET as i64),
            ..RecordHeader::default()
        },
    }
}

/// A header [`turn`] made up because the log ended inside a call (never in
/// a log: the shim's own mark).
pub const SYNTHETIC: u16 = 1 << 15;

/// Replay: at the start of a call, wait until the head record is this
/// thread's (then answer false: replay it) or the replica went live with
/// every record replayed (then answer true: run it for real, logged).
pub fn live_at_entry() -> bool {
    turn_or_live().is_none()
}

/// The mode a call starting now runs in: a live replica that has gone live
/// (perhaps while this thread waited for its turn) runs it as a primary.
pub fn effective_mode() -> Option<Mode> {
    let m = mode();
    if m == Some(Mode::Replay) && live_replica() && live_at_entry() {
        return Some(Mode::Record);
    }
    m
}

/// Whether this replay is a live replica, which may go live.
#[inline]
pub fn live_replica() -> bool {
    reg().has(ferry_ring::CTL_LIVE_REPLICA)
}

/// Replay: [`turn`], or `None` once the replica went live and every
/// record fed has been replayed. Going live switches this process to record
/// first (see [`crate::live`]).
fn turn_or_live() -> Option<RecordHeader> {
    let r = reg();
    let me = vtid();
    loop {
        if MODE.load(Ordering::Relaxed) == Mode::Record as u32 {
            return None;
        }
        // The daemon raises the flag only once every record it fed was
        // replayed, so whatever the ring holds from then on is live.
        if r.has(ferry_ring::CTL_WENT_LIVE) {
            crate::live::go_live();
            return None;
        }
        let tail = r.tail();
        if r.has(CTL_DIVERGED | CTL_FAILED) {
            sys::exit_group(3);
        }
        match r.peek() {
            Some(h) if h.vtid == me => {
                if h.kind == Kind::Signal as u16 {
                    crate::signals::deliver_logged(&h);
                    continue;
                }
                return Some(h);
            }
            Some(h) => {
                if r.has(ferry_ring::CTL_WENT_LIVE) {
                    continue;
                }
                if !spin_until(200, || r.head_vtid() != Some(h.vtid)) {
                    r.wait_turn(me, &GateFutex, Some(200));
                    if r.tail() == tail {
                        finish_shimless_exec(&h);
                        end_if_orphaned();
                    }
                }
            }
            None => {
                if r.has(CTL_END_OF_LOG) {
                    // Every record has been replayed: the recording ended
                    // here (the program was still running when it stopped).
                    sys::exit_group(0);
                }
                if !spin_until(2000, || r.head() != r.tail()) {
                    r.wait_published(&GateFutex, Some(1000));
                    if r.head() == r.tail() {
                        end_if_orphaned();
                    }
                }
            }
        }
    }
}

/// Replay, after a wait that brought nothing: if the process feeding the
/// log is gone, no record will ever come; end this process instead of
/// waiting forever.
fn end_if_orphaned() {
    let pid = reg().control().consumer_pid.load(Ordering::Relaxed);
    if pid != 0 && sys::sys2(libc::SYS_kill, pid as usize, 0) == -(libc::ESRCH as isize) {
        sys::exit_group(3);
    }
}

/// Spin up to `rounds` times for `ready` before sleeping on a futex: a turn
/// passes between threads, or a record arrives, much sooner than a sleep
/// and a wake-up take. Waiting for the producer spins longer than waiting
/// for another thread's turn (many threads may wait for turns at once).
/// Returns whether `ready` came true.
#[inline]
fn spin_until(rounds: u32, ready: impl Fn() -> bool) -> bool {
    for _ in 0..rounds {
        if ready() {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

/// Replay: the head record has been waiting a while. If it is the exec of a
/// process whose new image runs without the shim, that image will never
/// take it: consume it on its behalf.
fn finish_shimless_exec(h: &RecordHeader) {
    if h.kind != Kind::Exec as u16 || h.ret != 0 {
        return;
    }
    let r = reg();
    let Some(slot) = shimless_exec() else { return };
    let p = r.proc(slot);
    if p.vpid.load(Ordering::Acquire) != h.vpid {
        return;
    }
    if p.exec_pending
        .compare_exchange(
            ferry_ring::EXEC_PENDING,
            ferry_ring::EXEC_CLAIMED,
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_ok()
    {
        if r.peek().map(|x| x.gseq) == Some(h.gseq) {
            r.consume_and_pass(h, &GateFutex);
        }
        p.exec_pending
            .store(ferry_ring::EXEC_NONE, Ordering::Release);
    }
}

/// Replay: the payload of the head record, chunk by chunk: calls `f` with
/// each chunk's offset in the payload and its length.
pub fn chunks(h: &RecordHeader, mut f: impl FnMut(usize, usize)) {
    let r = reg();
    let total = h.payload_len as usize;
    let mut at = 0usize;
    while at + 4 <= total {
        let mut len = [0u8; 4];
        r.read_payload(h, at, &mut len);
        let n = u32::from_le_bytes(len) as usize;
        at += 4;
        if at + n > total {
            diverge_msg(h, format_args!("a corrupt payload"));
        }
        f(at, n);
        at += n;
    }
}

/// Replay: copy `len` payload bytes at `off` to `dst`.
pub fn payload_to(h: &RecordHeader, off: usize, dst: *mut u8, len: usize) {
    if len == 0 || dst.is_null() {
        return;
    }
    // SAFETY: the program passed `dst` as a buffer the kernel would have
    // filled with at least `len` bytes in the recording (the same call of the
    // same program, checked by number and arguments before this).
    let out = unsafe { core::slice::from_raw_parts_mut(dst, len) };
    reg().read_payload(h, off, out);
}

/// Replay: the record at the head has been carried out; pass the turn on.
pub fn consume(h: &RecordHeader) {
    if h.flags & SYNTHETIC != 0 {
        return;
    }
    reg().consume_and_pass(h, &GateFutex);
    if h.flags & ferry_proto::FLAG_SIGNALS_FOLLOW != 0 {
        me().follow.set(true);
    }
}

/// Replay: the program did something other than the log says. Stop the
/// whole replay with one line naming the record, thread, and both calls.
pub fn diverge(h: &RecordHeader, seen_kind: Kind, seen_nr: u32, seen_arg0: u64) -> ! {
    let expected = calls::call_name(Kind::from_u16(h.kind).unwrap_or(Kind::Syscall), h.nr);
    let seen = calls::call_name(seen_kind, seen_nr);
    diverge_msg(
        h,
        format_args!(
            "expected {}({}) but the program called {}({})",
            expected, h.arg0 as i64, seen, seen_arg0 as i64
        ),
    )
}

/// As [`diverge`] with a free-form description.
pub fn diverge_msg(h: &RecordHeader, what: core::fmt::Arguments) -> ! {
    let r = reg();
    let index = r.control().consumed.load(Ordering::Acquire) + 1;
    let mut line = sys::Line::new();
    let _ = write!(
        line,
        "record #{} (gseq {}), process {} thread {}: {}",
        index,
        h.gseq,
        MY_VPID.load(Ordering::Relaxed),
        vtid(),
        what
    );
    r.set_message(line.as_bytes());
    r.raise(CTL_DIVERGED, &GateFutex);
    sys::exit_group(3)
}

/// Replay: wait for this thread's turn and check that the record is the call
/// `(kind, nr)` with first check value `arg0` (`None`: not compared).
pub fn expect(kind: Kind, nr: u32, arg0: Option<u64>, arg1: Option<u64>) -> RecordHeader {
    expect_or_cut(kind, nr, arg0, arg1, -(libc::ECONNRESET as i64))
}

/// As [`expect`]; if the log ends inside this call (the replica went live
/// between two records of it), the call ends with `cut_ret` and no data,
/// and that ending is logged as its record, so that a replica replaying
/// this log later sees the same.
pub fn expect_or_cut(
    kind: Kind,
    nr: u32,
    arg0: Option<u64>,
    arg1: Option<u64>,
    cut_ret: i64,
) -> RecordHeader {
    let mut h = turn();
    if h.flags & SYNTHETIC != 0 {
        h.kind = kind as u16;
        h.nr = nr;
        h.arg0 = arg0.unwrap_or(0);
        h.arg1 = arg1.unwrap_or(0);
        h.ret = cut_ret;
        emit(
            Rec {
                kind,
                flags: 0,
                nr,
                ret: cut_ret,
                arg0: h.arg0,
                arg1: h.arg1,
            },
            &[],
        );
        return h;
    }
    if h.kind != kind as u16 || h.nr != nr {
        diverge(&h, kind, nr, arg0.unwrap_or(0));
    }
    if let Some(a) = arg0 {
        if a != h.arg0 {
            diverge(&h, kind, nr, a);
        }
    }
    if let Some(b) = arg1 {
        if b != h.arg1 {
            let name = calls::call_name(kind, nr);
            diverge_msg(
                &h,
                format_args!(
                    "{}({}) passed different data than recorded (digest {:08x}, recorded {:08x})",
                    name, h.arg0 as i64, b, h.arg1
                ),
            );
        }
    }
    h
}

/// Record, in a new image after `execve`: the previous image held the
/// ordering lock across the exec; take it over.
pub fn adopt_lock() {
    let t = me();
    reg()
        .control()
        .order_lock
        .store(real_tid(t), Ordering::Release);
    t.lock_depth.set(1);
}
