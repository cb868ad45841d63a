//! Checkpoints from inside the process (DESIGN §6; the file it writes is
//! `docs/IMAGE-FORMAT.md`).
//!
//! A requester (`ferry checkpoint`, later `ferryd`) fills in the region's
//! checkpoint block and sends [`CKPT_SIGNAL`] to the process. The thread
//! that takes it becomes the coordinator: it sends the same signal to every
//! other thread, each parks in this handler, and then, with the program
//! stopped, it writes `<dir>/<vpid>.fimg.tmp` from inside: memory straight
//! from the address space, each thread's registers from its signal frame,
//! the descriptors from `/proc/self/fd`. Then it lets them go.
//!
//! Each thread parks in [`ferry_ckpt_park`], which saves where it stands
//! (its stack pointer and a resume address) before it waits or writes. A
//! restore starts each thread there, with a pointer to the restorer's
//! [`Restored`] as the call's result: the thread redoes its kernel state
//! (tid address, robust list, rseq, the safety net) and returns from the
//! handler, and that return restores its registers, FPU state, mask and
//! alternate stack from the signal frame, which the image carried as
//! memory like any other.
//!
//! Nothing here allocates or takes a lock: scratch memory is mapped for the
//! checkpoint and unmapped after, and every call is a raw one.

use crate::state;
use crate::sys::{self, raw};
use core::cell::UnsafeCell;
use core::fmt::Write as _;
use core::ops::ControlFlow;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use ferry_image::resume::{Restored, RESTORED_MAGIC};
use ferry_image::sections::{
    self as img, AddressSpace, FdInfo, Itimer, Itimers, MappingInfo, PageRun, PipeEnd, ProcessInfo,
    RegularFile, Rlimit, Rlimits, SigAction, SigActions, ThreadInfo, UserRegs, REGULAR_UNLINKED,
    RUN_DATA, RUN_ZERO, THREAD_PARKED,
};
use ferry_image::write::{FdBody, ImageWriter, Sink, WriteError};
use ferry_memtrack::maps::{self, Kind as MapKind, Mapping};
use ferry_memtrack::{PageRegion, Pagemap, Range, Swap, Syscalls, Tracker};
use ferry_ring::{CKPT_FAILED, CKPT_OK, CKPT_SIGNAL, REGION_FD};
use libc::*;

/// Threads one process may have stopped at once.
const MAX_THREADS: usize = 512;

/// Phases of a checkpoint in this process.
const IDLE: u32 = 0;
/// The coordinator is stopping the other threads, or writing.
const STOPPING: u32 = 1;

static PHASE: AtomicU32 = AtomicU32::new(IDLE);
/// The coordinator's real tid.
static COORD: AtomicU32 = AtomicU32::new(0);
/// Threads parked (the coordinator not counted).
static PARKED: AtomicU32 = AtomicU32::new(0);
/// Bumped to let parked threads go (a futex word).
static RELEASE: AtomicU32 = AtomicU32::new(0);
/// Threads back from a restore, in the handler (a futex word).
static RESUMED: AtomicU32 = AtomicU32::new(0);
/// Threads out of the wait for RESUMED (the coordinator resets both once
/// all are).
static LEFT: AtomicU32 = AtomicU32::new(0);
/// The pid the program knows this process by when it is not the real one
/// (after a restore); 0 otherwise.
static SHOWN_PID: AtomicU32 = AtomicU32::new(0);
/// The pid the program knew when the checkpoint was taken.
static CKPT_PID: AtomicU32 = AtomicU32::new(0);

/// One stopped thread: where it parked and its per-thread kernel state.
struct Slot {
    /// The tid the program knows it by (0: a free slot).
    shown_tid: AtomicU32,
    /// The real tid it had when it stopped.
    real_tid: AtomicU32,
    /// Its new real tid once restored.
    new_tid: AtomicU32,
    /// `[rsp, rip]` where it parked, written by `ferry_ckpt_park`.
    resume: UnsafeCell<[u64; 2]>,
    /// Its signal frame's context.
    uc: AtomicUsize,
    fs_base: AtomicU64,
    robust_head: AtomicU64,
    robust_len: AtomicU64,
    tid_addr: AtomicU64,
    rseq_addr: AtomicU64,
    rseq_len: AtomicU32,
    /// The safety net's selector when the signal came.
    selector: AtomicU32,
    coordinator: AtomicBool,
}

// SAFETY: `resume` is written only by its own thread (in
// `ferry_ckpt_park`) before that thread counts itself parked, and read by
// the coordinator after; every other field is atomic.
unsafe impl Sync for Slot {}

#[allow(clippy::declare_interior_mutable_const)]
const FREE_SLOT: Slot = Slot {
    shown_tid: AtomicU32::new(0),
    real_tid: AtomicU32::new(0),
    new_tid: AtomicU32::new(0),
    resume: UnsafeCell::new([0; 2]),
    uc: AtomicUsize::new(0),
    fs_base: AtomicU64::new(0),
    robust_head: AtomicU64::new(0),
    robust_len: AtomicU64::new(0),
    tid_addr: AtomicU64::new(0),
    rseq_addr: AtomicU64::new(0),
    rseq_len: AtomicU32::new(0),
    selector: AtomicU32::new(0),
    coordinator: AtomicBool::new(false),
};
static SLOTS: [Slot; MAX_THREADS] = [FREE_SLOT; MAX_THREADS];
static NSLOTS: AtomicUsize = AtomicUsize::new(0);

core::arch::global_asm!(
    ".text",
    ".balign 16",
    ".globl ferry_ckpt_park",
    ".hidden ferry_ckpt_park",
    ".type ferry_ckpt_park,@function",
    // ferry_ckpt_park(resume: *mut [u64; 2], f: extern "C" fn(usize), arg)
    // saves the callee-saved registers on the stack, the stack pointer and
    // the resume address in `resume`, calls f(arg) and returns 0. A
    // restorer enters at the resume address with that stack pointer and
    // the `Restored` pointer in rax, which the call then returns.
    "ferry_ckpt_park:",
    "    push rbp",
    "    push rbx",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    mov [rdi], rsp",
    "    lea rax, [rip + 2f]",
    "    mov [rdi + 8], rax",
    "    sub rsp, 8",
    "    mov rdi, rdx",
    "    call rsi",
    "    add rsp, 8",
    "    xor eax, eax",
    "2:",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbx",
    "    pop rbp",
    "    ret",
    ".size ferry_ckpt_park, . - ferry_ckpt_park",
);

extern "C" {
    fn ferry_ckpt_park(resume: *mut [u64; 2], f: extern "C" fn(usize), arg: usize) -> usize;
    static __rseq_offset: isize;
    static __rseq_size: u32;
}

/// glibc's rseq signature and the length it registers.
const RSEQ_SIG: u32 = 0x5305_3053;
const RSEQ_LEN: u32 = 32;
const ARCH_GET_FS: usize = 0x1003;
const PR_GET_TID_ADDRESS: usize = 40;

fn bit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

/// Install the checkpoint signal's handler: every signal but SIGSYS
/// blocked while it runs, interrupted calls restarted.
pub fn install_handler() {
    sys::install_shim_handler(CKPT_SIGNAL, on_signal, SA_RESTART, !bit(SIGSYS));
}

/// The pid the program sees: the one it had before a restore.
pub fn shown_pid() -> Option<u32> {
    match SHOWN_PID.load(Ordering::Relaxed) {
        0 => None,
        p => Some(p),
    }
}

/// After a restore: a pid or tid the program names (as it knew it) to the
/// real one now; anything else unchanged.
pub fn real_id(id: i32) -> i32 {
    let Some(shown) = shown_pid() else { return id };
    if id == shown as i32 {
        return sys::getpid() as i32;
    }
    let n = NIDS.load(Ordering::Acquire).min(MAX_THREADS);
    for pair in &IDS[..n] {
        if pair[0].load(Ordering::Relaxed) == id as u32 {
            return pair[1].load(Ordering::Relaxed) as i32;
        }
    }
    id
}

/// After a restore: the tid each restored thread is shown by, and its real
/// one now (the stopped threads' slots are free for the next checkpoint).
#[allow(clippy::declare_interior_mutable_const)]
const NO_IDS: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];
static IDS: [[AtomicU32; 2]; MAX_THREADS] = [NO_IDS; MAX_THREADS];
static NIDS: AtomicUsize = AtomicUsize::new(0);

/// The tid the program knows the stopped thread whose real tid is `real`
/// by (`real` itself if it is none of them).
fn shown_of_real(real: u32) -> u32 {
    let n = NSLOTS.load(Ordering::Acquire).min(MAX_THREADS);
    SLOTS[..n]
        .iter()
        .find(|s| s.real_tid.load(Ordering::Relaxed) == real)
        .map_or(real, |s| s.shown_tid.load(Ordering::Relaxed))
}

/// The tid the program knows the calling thread by.
pub fn shown_tid() -> u32 {
    match state::me().shown_tid.get() {
        0 => sys::gettid(),
        t => t,
    }
}

fn asked() -> bool {
    let Some(r) = state::region() else {
        return false;
    };
    let c = r.ckpt();
    c.request.load(Ordering::Acquire) != c.done.load(Ordering::Acquire)
        && c.target_pid.load(Ordering::Acquire) == sys::getpid()
}

extern "C" fn on_signal(_sig: i32, _info: *mut siginfo_t, uc: *mut c_void) {
    let t = state::me();
    let guard = t.in_shim.replace(1);
    let selector = t.selector.get();
    let me = sys::gettid();
    if PHASE.load(Ordering::Acquire) == STOPPING && COORD.load(Ordering::Acquire) != me {
        let mut held = Held::take(false);
        participate(uc, selector);
        held.give_back();
    } else if asked()
        && COORD
            .compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    {
        PHASE.store(STOPPING, Ordering::Release);
        HELD_OVERFLOW.store(false, Ordering::Relaxed);
        let mut held = Held::take(true);
        coordinate(uc, selector);
        held.give_back();
    }
    t.in_shim.set(guard);
}

/// Signals a thread holds pending at most while it is parked (per queue).
const HELD: usize = 16;
/// Set when a thread had more pending signals than it can hold: the
/// checkpoint fails rather than lose them.
static HELD_OVERFLOW: AtomicBool = AtomicBool::new(false);

/// The signals pending on a thread (and, for the coordinator, on the
/// process) while it is parked: taken off the kernel's queues into this
/// stack frame, which the image holds like all memory, and queued again
/// on the way out, in the original process and in a restored one alike.
struct Held {
    private: [[u8; 128]; HELD],
    nprivate: usize,
    shared: [[u8; 128]; HELD],
    nshared: usize,
}

impl Held {
    fn take(coordinator: bool) -> Held {
        let mut h = Held {
            private: [[0; 128]; HELD],
            nprivate: 0,
            shared: [[0; 128]; HELD],
            nshared: 0,
        };
        let mut any = 0u64;
        raw(
            SYS_rt_sigpending,
            [&mut any as *mut u64 as usize, 8, 0, 0, 0, 0],
        );
        let never = reserved_bits() | bit(SIGKILL) | bit(SIGSTOP);
        if any & !never == 0 {
            return h;
        }
        // The thread's own queue first (sigtimedwait takes from it before
        // the process's), then, by the coordinator, the process's.
        for (shared, key) in [(false, b"SigPnd:"), (true, b"ShdPnd:")] {
            if shared && !coordinator {
                break;
            }
            loop {
                let set = pending_set(key) & !never;
                if set == 0 {
                    break;
                }
                let (store, n) = if shared {
                    (&mut h.shared, &mut h.nshared)
                } else {
                    (&mut h.private, &mut h.nprivate)
                };
                if *n == HELD {
                    HELD_OVERFLOW.store(true, Ordering::Relaxed);
                    break;
                }
                let one = set & set.wrapping_neg();
                let zero = timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                let r = raw(
                    SYS_rt_sigtimedwait,
                    [
                        &one as *const u64 as usize,
                        store[*n].as_mut_ptr() as usize,
                        &zero as *const timespec as usize,
                        8,
                        0,
                        0,
                    ],
                );
                if r <= 0 {
                    break;
                }
                *n += 1;
            }
        }
        h
    }

    fn give_back(&mut self) {
        let (pid, tid) = (sys::getpid() as usize, sys::gettid() as usize);
        for info in &self.private[..self.nprivate] {
            let sig = i32::from_ne_bytes([info[0], info[1], info[2], info[3]]) as usize;
            raw(
                SYS_rt_tgsigqueueinfo,
                [pid, tid, sig, info.as_ptr() as usize, 0, 0],
            );
        }
        for info in &self.shared[..self.nshared] {
            let sig = i32::from_ne_bytes([info[0], info[1], info[2], info[3]]) as usize;
            raw(
                SYS_rt_sigqueueinfo,
                [pid, sig, info.as_ptr() as usize, 0, 0, 0],
            );
        }
        self.nprivate = 0;
        self.nshared = 0;
    }
}

fn reserved_bits() -> u64 {
    bit(SIGSYS) | bit(CKPT_SIGNAL)
}

/// The set after `key` ("SigPnd:", "ShdPnd:") in /proc/thread-self/status.
fn pending_set(key: &[u8]) -> u64 {
    let mut buf = [0u8; 2048];
    let Ok(n) = read_file(c"/proc/thread-self/status", &mut buf) else {
        return 0;
    };
    crate::ckpt_fd::field_num(&buf[..n], key, 16).unwrap_or(0)
}

/// Take a slot and note the calling thread's state in it.
fn claim(uc: *mut c_void, selector: u8, coordinator: bool) -> Option<&'static Slot> {
    let i = NSLOTS.fetch_add(1, Ordering::AcqRel);
    let s = SLOTS.get(i)?;
    s.shown_tid.store(shown_tid(), Ordering::Relaxed);
    s.real_tid.store(sys::gettid(), Ordering::Relaxed);
    s.new_tid.store(0, Ordering::Relaxed);
    s.uc.store(uc as usize, Ordering::Relaxed);
    let mut v = 0u64;
    raw(
        SYS_arch_prctl,
        [ARCH_GET_FS, &mut v as *mut u64 as usize, 0, 0, 0, 0],
    );
    s.fs_base.store(v, Ordering::Relaxed);
    let (mut head, mut len) = (0u64, 0u64);
    raw(
        SYS_get_robust_list,
        [
            0,
            &mut head as *mut u64 as usize,
            &mut len as *mut u64 as usize,
            0,
            0,
            0,
        ],
    );
    s.robust_head.store(head, Ordering::Relaxed);
    s.robust_len.store(len, Ordering::Relaxed);
    let mut addr = 0u64;
    raw(
        SYS_prctl,
        [
            PR_GET_TID_ADDRESS,
            &mut addr as *mut u64 as usize,
            0,
            0,
            0,
            0,
        ],
    );
    s.tid_addr.store(addr, Ordering::Relaxed);
    // SAFETY: two data symbols glibc (≥ 2.35) exports; reading them has no
    // side effect.
    let (off, size) = unsafe { (__rseq_offset, __rseq_size) };
    if size != 0 {
        s.rseq_addr
            .store(v.wrapping_add(off as u64), Ordering::Relaxed);
        s.rseq_len.store(RSEQ_LEN, Ordering::Relaxed);
    } else {
        s.rseq_addr.store(0, Ordering::Relaxed);
        s.rseq_len.store(0, Ordering::Relaxed);
    }
    s.selector.store(selector as u32, Ordering::Relaxed);
    s.coordinator.store(coordinator, Ordering::Relaxed);
    Some(s)
}

fn participate(uc: *mut c_void, selector: u8) {
    let Some(slot) = claim(uc, selector, false) else {
        // More threads than slots: counted, so the coordinator gives up.
        PARKED.fetch_add(1, Ordering::AcqRel);
        sys::futex_wake(&PARKED, 1);
        wait_release(RELEASE.load(Ordering::Acquire));
        PARKED.fetch_sub(1, Ordering::AcqRel);
        return;
    };
    let generation = RELEASE.load(Ordering::Acquire);
    // SAFETY: the slot's resume words are this thread's alone until it
    // counts itself parked (inside `park`); `park` is a valid callback.
    let r = unsafe { ferry_ckpt_park(slot.resume.get(), park, generation as usize) };
    if r != 0 {
        after_restore(slot, r);
        return;
    }
    PARKED.fetch_sub(1, Ordering::AcqRel);
    sys::futex_wake(&PARKED, 1);
}

extern "C" fn park(generation: usize) {
    PARKED.fetch_add(1, Ordering::AcqRel);
    sys::futex_wake(&PARKED, 1);
    wait_release(generation as u32);
}

fn wait_release(generation: u32) {
    while RELEASE.load(Ordering::Acquire) == generation {
        sys::futex_wait(&RELEASE, generation, Some(1000));
    }
}

/// What the coordinator learnt, for the requester.
struct Outcome {
    threads: u32,
    mappings: u32,
    memory: u64,
    file: u64,
    /// A writer process writes the memory and answers the requester.
    forked: bool,
}

/// Why a checkpoint failed: what was being done, and the errno.
#[derive(Clone, Copy)]
pub(crate) struct Fail {
    what: &'static str,
    errno: i32,
}

pub(crate) fn fail(what: &'static str, errno: i32) -> Fail {
    Fail { what, errno }
}

impl From<WriteError> for Fail {
    fn from(e: WriteError) -> Fail {
        match e {
            WriteError::Io { errno } => fail("writing the image file", errno),
            WriteError::TooLong { what, .. } => fail(what, E2BIG),
            WriteError::Invalid { what, .. } => fail(what, EINVAL),
            _ => fail("the image writer refused a section", 0),
        }
    }
}

/// The coordinator's result, from inside the park callback.
static mut RESULT: Option<Result<Outcome, Fail>> = None;

fn coordinate(uc: *mut c_void, selector: u8) {
    CKPT_PID.store(shown_pid().unwrap_or_else(sys::getpid), Ordering::Relaxed);
    let Some(slot) = claim(uc, selector, true) else {
        return;
    };
    // Scratch memory is mapped, and the part every checkpoint writes is
    // faulted in, while the other threads still run: fresh pages are slow
    // to touch, and the freeze is for copying.
    let scratch = Scratch::map();
    let start = now(CLOCK_MONOTONIC);
    let stopped = match &scratch {
        Err(f) => Err(*f),
        Ok(_) => stop_others(),
    };
    let result = match (stopped, &scratch) {
        (Err(f), _) | (Ok(()), &Err(f)) => Err(f),
        (Ok(()), Ok(scratch)) => {
            // SAFETY: the slot is this thread's; `write` is a valid callback
            // and `scratch` outlives the call.
            let r = unsafe {
                ferry_ckpt_park(slot.resume.get(), write, scratch as *const Scratch as usize)
            };
            if r != 0 {
                after_restore(slot, r);
                return;
            }
            // SAFETY: written by `write` on this thread, just now.
            unsafe { (*core::ptr::addr_of_mut!(RESULT)).take() }
                .unwrap_or(Err(fail("writing the image", 0)))
        }
    };
    // Let the others go and wait until all have left the handler's wait.
    RELEASE.fetch_add(1, Ordering::AcqRel);
    sys::futex_wake(&RELEASE, i32::MAX as u32);
    let freeze = now(CLOCK_MONOTONIC).saturating_sub(start);
    loop {
        let p = PARKED.load(Ordering::Acquire);
        if p == 0 {
            break;
        }
        sys::futex_wait(&PARKED, p, Some(100));
    }
    NSLOTS.store(0, Ordering::Release);
    match result {
        // The writer answers once the memory is written.
        Ok(o) if o.forked => {
            if let Some(r) = state::region() {
                r.ckpt().freeze_ns.store(freeze, Ordering::Release);
            }
        }
        r => answer(r, Some(freeze)),
    }
    PHASE.store(IDLE, Ordering::Release);
    COORD.store(0, Ordering::Release);
}

/// Put the answer in the region and wake the requester.
fn answer(result: Result<Outcome, Fail>, freeze_ns: Option<u64>) {
    let Some(r) = state::region() else { return };
    let c = r.ckpt();
    match result {
        Ok(o) => {
            c.threads.store(o.threads, Ordering::Relaxed);
            c.mappings.store(o.mappings, Ordering::Relaxed);
            c.memory_bytes.store(o.memory, Ordering::Relaxed);
            c.file_bytes.store(o.file, Ordering::Relaxed);
            if let Some(f) = freeze_ns {
                c.freeze_ns.store(f, Ordering::Relaxed);
            }
            c.message_len.store(0, Ordering::Relaxed);
            c.status.store(CKPT_OK, Ordering::Release);
        }
        Err(f) => {
            let mut line = sys::Line::new();
            let _ = write!(line, "{}", f.what);
            if f.errno != 0 {
                let _ = write!(line, ": errno {}", f.errno);
            }
            let b = line.as_bytes();
            let n = b.len().min(c.message.len());
            for (d, s) in c.message.iter().zip(&b[..n]) {
                d.store(*s, Ordering::Relaxed);
            }
            c.message_len.store(n as u32, Ordering::Relaxed);
            c.status.store(CKPT_FAILED, Ordering::Release);
        }
    }
    c.done
        .store(c.request.load(Ordering::Acquire), Ordering::Release);
    sys::futex_wake(&c.done, i32::MAX as u32);
}

/// Stop every other thread of the process: signal each, wait until each
/// has parked, and look again for threads made meanwhile.
fn stop_others() -> Result<(), Fail> {
    let pid = sys::getpid();
    let me = sys::gettid();
    let mut signaled = [0u32; MAX_THREADS];
    let mut n = 0usize;
    let deadline = now(CLOCK_MONOTONIC) + 5_000_000_000;
    for _round in 0..64 {
        let mut new = 0;
        let mut full = false;
        let listed = for_each_entry(c"/proc/self/task", |name| {
            let Some(tid) = parse_u32(name) else { return };
            if tid == me || signaled[..n].contains(&tid) {
                return;
            }
            if n == MAX_THREADS {
                full = true;
                return;
            }
            if raw(
                SYS_tgkill,
                [pid as usize, tid as usize, CKPT_SIGNAL as usize, 0, 0, 0],
            ) == 0
            {
                signaled[n] = tid;
                n += 1;
                new += 1;
            }
        });
        if let Err(errno) = listed {
            return Err(fail("listing /proc/self/task", errno));
        }
        if full {
            return Err(fail("too many threads to stop (at most 512)", 0));
        }
        // Wait until every signalled thread that still lives has parked.
        loop {
            let parked = PARKED.load(Ordering::Acquire);
            let alive = signaled[..n]
                .iter()
                .filter(|&&t| raw(SYS_tgkill, [pid as usize, t as usize, 0, 0, 0, 0]) == 0)
                .count() as u32;
            if parked >= alive {
                break;
            }
            if now(CLOCK_MONOTONIC) > deadline {
                return Err(fail("a thread did not stop within 5 s", ETIMEDOUT));
            }
            sys::futex_wait(&PARKED, parked, Some(10));
        }
        if new == 0 {
            return Ok(());
        }
    }
    Err(fail(
        "threads kept being created while stopping them",
        EAGAIN,
    ))
}

extern "C" fn write(arg: usize) {
    // SAFETY: `arg` is the coordinator's `&Scratch`, alive across the park.
    let scratch = unsafe { &*(arg as *const Scratch) };
    let r = write_image(scratch);
    // SAFETY: read by the coordinator (this thread) once this returns.
    unsafe { *core::ptr::addr_of_mut!(RESULT) = Some(r) };
}

/// A thread back from a restore: redo its kernel state, wait for the
/// others, and (the coordinator) the process's.
fn after_restore(slot: &'static Slot, info: usize) {
    // SAFETY: the restorer passes a pointer to its `Restored`, which stays
    // mapped until the coordinator unmaps it below, after every thread
    // has counted itself back.
    let info: Restored = unsafe { core::ptr::read(info as *const Restored) };
    let t = state::me();
    let shown = slot.shown_tid.load(Ordering::Relaxed);
    state::after_restore_thread(shown);
    if slot.coordinator.load(Ordering::Relaxed) {
        // A new process: the tracker's descriptors were not carried over,
        // and the last writer is not its child.
        forget_tracker(false);
        forget_writer();
        LAST_SEQ.store(info.seq, Ordering::Relaxed);
    }
    slot.new_tid.store(sys::gettid(), Ordering::Release);
    raw(
        SYS_set_tid_address,
        [
            slot.tid_addr.load(Ordering::Relaxed) as usize,
            0,
            0,
            0,
            0,
            0,
        ],
    );
    let head = slot.robust_head.load(Ordering::Relaxed);
    if head != 0 {
        raw(
            SYS_set_robust_list,
            [
                head as usize,
                slot.robust_len.load(Ordering::Relaxed) as usize,
                0,
                0,
                0,
                0,
            ],
        );
    }
    let rseq = slot.rseq_addr.load(Ordering::Relaxed);
    if rseq != 0 {
        raw(
            SYS_rseq,
            [
                rseq as usize,
                slot.rseq_len.load(Ordering::Relaxed) as usize,
                0,
                RSEQ_SIG as usize,
                0,
                0,
            ],
        );
    }
    if state::READY.load(Ordering::Acquire) {
        crate::sud::enable_thread();
    }
    t.selector.set(slot.selector.load(Ordering::Relaxed) as u8);
    if slot.coordinator.load(Ordering::Relaxed) {
        SHOWN_PID.store(CKPT_PID.load(Ordering::Relaxed), Ordering::Release);
    }
    let back = RESUMED.fetch_add(1, Ordering::AcqRel) + 1;
    if back as u64 >= info.threads {
        sys::futex_wake(&RESUMED, i32::MAX as u32);
    }
    loop {
        let v = RESUMED.load(Ordering::Acquire);
        if v as u64 >= info.threads {
            break;
        }
        sys::futex_wait(&RESUMED, v, Some(100));
    }
    // The coordinator resets RESUMED below, so it must wait for every
    // thread to be out of the loop above first.
    if LEFT.fetch_add(1, Ordering::AcqRel) + 1 >= info.threads as u32 {
        sys::futex_wake(&LEFT, i32::MAX as u32);
    }
    if !slot.coordinator.load(Ordering::Relaxed) {
        return;
    }
    loop {
        let v = LEFT.load(Ordering::Acquire);
        if v as u64 >= info.threads {
            break;
        }
        sys::futex_wait(&LEFT, v, Some(100));
    }
    LEFT.store(0, Ordering::Release);
    // Every thread runs in the program's memory now: the restorer's area
    // can go, and the process is no longer in a checkpoint.
    if info.magic == RESTORED_MAGIC && info.area_len != 0 {
        raw(
            SYS_munmap,
            [info.area_start as usize, info.area_len as usize, 0, 0, 0, 0],
        );
    }
    if let Some(r) = state::region() {
        let p = r.proc(state::MY_SLOT.load(Ordering::Relaxed));
        p.real_pid.store(sys::getpid(), Ordering::Release);
        let c = r.ckpt();
        c.done
            .store(c.request.load(Ordering::Acquire), Ordering::Release);
        c.owner.store(0, Ordering::Release);
    }
    RESUMED.store(0, Ordering::Release);
    PARKED.store(0, Ordering::Release);
    let n = NSLOTS
        .load(Ordering::Acquire)
        .min(info.threads as usize)
        .min(MAX_THREADS);
    for (pair, s) in IDS.iter().zip(&SLOTS[..n]) {
        pair[0].store(s.shown_tid.load(Ordering::Relaxed), Ordering::Relaxed);
        pair[1].store(s.new_tid.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    NIDS.store(n, Ordering::Release);
    NSLOTS.store(0, Ordering::Release);
    PHASE.store(IDLE, Ordering::Release);
    COORD.store(0, Ordering::Release);
}

// ---------------------------------------------------------------------------
// Writing the process file.

/// Scratch memory for one checkpoint, mapped for it and unmapped after.
struct Scratch {
    base: usize,
    len: usize,
}

const SCRATCH_LEN: usize = 16 << 20;
const MAPS_TEXT: usize = 4 << 20;
const MAX_MAPPINGS: usize = 32768;
const IO_BUF: usize = 1 << 20;
const MISC_BUF: usize = 1 << 20;
const MAX_REGIONS: usize = 8192;
const MAX_RUNS: usize = 4096;

impl Scratch {
    fn map() -> Result<Scratch, Fail> {
        let p = raw(
            SYS_mmap,
            [
                0,
                SCRATCH_LEN,
                (PROT_READ | PROT_WRITE) as usize,
                (MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE) as usize,
                usize::MAX,
                0,
            ],
        );
        if p < 0 {
            return Err(fail("mapping scratch memory", -p as i32));
        }
        const MADV_POPULATE_WRITE: usize = 23;
        raw(
            SYS_madvise,
            [
                p as usize + OFF_IO,
                OFF_FRESH + MAX_FRESH * 16 - OFF_IO,
                MADV_POPULATE_WRITE,
                0,
                0,
                0,
            ],
        );
        Ok(Scratch {
            base: p as usize,
            len: SCRATCH_LEN,
        })
    }

    /// `len` bytes at `off`, zeroed by the kernel.
    fn bytes(&self, off: usize, len: usize) -> &'static mut [u8] {
        assert!(off + len <= self.len);
        // SAFETY: inside the scratch mapping, which lives until `drop`;
        // callers take disjoint ranges.
        unsafe { core::slice::from_raw_parts_mut((self.base + off) as *mut u8, len) }
    }

    fn range(&self) -> Range {
        Range {
            start: self.base,
            end: self.base + self.len,
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        raw(SYS_munmap, [self.base, self.len, 0, 0, 0, 0]);
    }
}

/// Scratch layout.
const OFF_MAPS_TEXT: usize = 0;
const OFF_MAPPINGS: usize = OFF_MAPS_TEXT + MAPS_TEXT;
const MAPPINGS_BYTES: usize = MAX_MAPPINGS * core::mem::size_of::<Mapping<'static>>();
const OFF_IO: usize = (OFF_MAPPINGS + MAPPINGS_BYTES + 4095) & !4095;
const OFF_MISC: usize = OFF_IO + IO_BUF;
const OFF_REGIONS: usize = OFF_MISC + MISC_BUF;
const OFF_RUNS: usize = OFF_REGIONS + MAX_REGIONS * core::mem::size_of::<PageRegion>();
const OFF_FRESH: usize = OFF_RUNS + MAX_RUNS * 24;
/// The pages of shared memory that hold data, found while the threads are
/// stopped: a copy made by fork has no page tables for shared mappings,
/// so a writer cannot ask its own.
const OFF_SHARED: usize = OFF_FRESH + MAX_FRESH * 16;
const MAX_SHARED_REGIONS: usize = 16384;
const _: () = assert!(OFF_SHARED + MAX_SHARED_REGIONS * 16 <= SCRATCH_LEN);

/// A [`Sink`] over a raw descriptor, buffered.
pub(crate) struct FdSink {
    fd: i32,
    buf: &'static mut [u8],
    len: usize,
    total: u64,
}

impl FdSink {
    fn flush(&mut self) -> Result<(), i32> {
        let n = self.len;
        self.len = 0;
        write_fd(self.fd, &self.buf[..n])
    }
}

impl Sink for FdSink {
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), i32> {
        self.total += bytes.len() as u64;
        if self.len + bytes.len() > self.buf.len() || bytes.len() >= self.buf.len() / 2 {
            self.flush()?;
        }
        if bytes.len() >= self.buf.len() / 2 {
            return write_fd(self.fd, bytes);
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
        Ok(())
    }
}

fn write_fd(fd: i32, mut bytes: &[u8]) -> Result<(), i32> {
    while !bytes.is_empty() {
        let n = raw(
            SYS_write,
            [fd as usize, bytes.as_ptr() as usize, bytes.len(), 0, 0, 0],
        );
        if n == -(EINTR as isize) {
            continue;
        }
        if n < 0 {
            return Err(-n as i32);
        }
        if n == 0 {
            return Err(EIO);
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

/// The image file's path: `<dir>/<vpid>.fimg.tmp`, NUL-terminated.
fn tmp_path(out: &mut [u8; 2200], vpid: u32) -> Result<(), Fail> {
    let r = state::region().ok_or(fail("no region", EINVAL))?;
    let c = r.ckpt();
    let n = c.path_len.load(Ordering::Acquire) as usize;
    if n == 0 || n > c.path.len() {
        return Err(fail(
            "the image directory's path is empty or too long",
            EINVAL,
        ));
    }
    for (d, s) in out.iter_mut().zip(&c.path[..n]) {
        *d = s.load(Ordering::Relaxed);
    }
    let mut line = sys::Line::new();
    let _ = write!(line, "/{vpid}.fimg.tmp");
    let tail = line.as_bytes();
    out[n..n + tail.len()].copy_from_slice(tail);
    out[n + tail.len()] = 0;
    Ok(())
}

fn write_image(scratch: &Scratch) -> Result<Outcome, Fail> {
    let vpid = state::MY_VPID.load(Ordering::Relaxed);
    let mut path = [0u8; 2200];
    tmp_path(&mut path, vpid)?;
    let fd = raw(
        SYS_openat,
        [
            AT_FDCWD as usize,
            path.as_ptr() as usize,
            // Not truncated: the requester may have allocated the file's
            // blocks ahead, outside the freeze; it is cut to length below.
            (O_WRONLY | O_CREAT | O_CLOEXEC) as usize,
            0o600,
            0,
            0,
        ],
    );
    if fd < 0 {
        return Err(fail("creating the image file", -fd as i32));
    }
    let fd = fd as i32;
    // Neither fsync nor the cut to length here, in the freeze: the
    // requester does both (it is told the length) before it makes the
    // image whole.
    let r = write_file(fd, vpid, scratch, &path);
    raw(SYS_close, [fd as usize, 0, 0, 0, 0, 0]);
    if r.is_err() {
        raw(
            SYS_unlinkat,
            [AT_FDCWD as usize, path.as_ptr() as usize, 0, 0, 0, 0],
        );
    }
    r
}

fn write_file(fd: i32, vpid: u32, scratch: &Scratch, path: &[u8]) -> Result<Outcome, Fail> {
    // The sequence numbers of one process's images only go up (across a
    // restore too), so that an incremental image names its parent
    // without doubt.
    let parent = state::region()
        .map(|r| r.ckpt().parent_seq.load(Ordering::Acquire))
        .unwrap_or(0);
    let incremental = parent != 0;
    if incremental
        && (!BASELINE.load(Ordering::Relaxed) || parent != LAST_SEQ.load(Ordering::Relaxed))
    {
        return Err(fail(
            "an incremental checkpoint must follow this process's last checkpoint (taken since it started or was restored): take a full one",
            0,
        ));
    }
    let min_seq = state::region()
        .map(|r| r.ckpt().min_seq.load(Ordering::Acquire))
        .unwrap_or(0);
    let seq = (LAST_SEQ.load(Ordering::Relaxed).max(parent) + 1).max(min_seq);
    let mut sink = FdSink {
        fd,
        buf: scratch.bytes(OFF_IO, IO_BUF),
        len: 0,
        total: 0,
    };
    if HELD_OVERFLOW.load(Ordering::Relaxed) {
        return Err(fail("more than 16 signals pending on one queue", 0));
    }
    if NSLOTS.load(Ordering::Acquire) > MAX_THREADS {
        return Err(fail("too many threads to stop (at most 512)", 0));
    }
    let mut w = ImageWriter::new(&mut sink, vpid, seq, parent, now(CLOCK_REALTIME))?;
    // From here the tracker's state moves on with the pages copied: if
    // this image is not finished, no incremental can follow it, nor the
    // last one.
    BASELINE.store(false, Ordering::Relaxed);
    let misc = scratch.bytes(OFF_MISC, MISC_BUF);
    // Everything but memory is taken while the threads are stopped: it is
    // small, and it is not the process's memory (a descriptor's queue, a
    // timer) so a copy of the memory would not keep it.
    process_section(&mut w, vpid, misc)?;
    rlimits_section(&mut w)?;
    let threads = thread_sections(&mut w)?;
    sigactions_section(&mut w)?;
    fd_sections(&mut w, fd, misc)?;
    itimers_section(&mut w)?;
    crate::ckpt_fd::posix_timers(&mut w, misc, shown_of_real)?;
    let prep = prepare_memory(scratch, incremental)?;
    address_space_section(&mut w, scratch, prep.vdso)?;
    let done = |seq: u64| {
        LAST_SEQ.store(seq, Ordering::Relaxed);
        BASELINE.store(tracker().is_some(), Ordering::Relaxed);
        if let Some(r) = state::region() {
            r.ckpt().seq.store(seq, Ordering::Release);
        }
    };
    if !incremental {
        // A full image: the memory is written by a copy of the process
        // (fork's copy-on-write) while the program runs on. The sequence
        // number is told first: the writer may answer before this returns.
        done(seq);
        if let Some(forked) = fork_writer(fd) {
            if !forked {
                // The writer: its memory is the program's at the fork.
                let r = match memory_sections(&mut w, scratch, &prep) {
                    Err(f) => Err(f),
                    Ok((mappings, memory)) => match w.finish() {
                        Err(e) => Err(Fail::from(e)),
                        Ok(_) => match sink.flush() {
                            Err(e) => Err(fail("writing the image file", e)),
                            Ok(()) => Ok(Outcome {
                                threads,
                                mappings,
                                memory,
                                file: sink.total,
                                forked: true,
                            }),
                        },
                    },
                };
                writer_exit(r, path);
            }
            return Ok(Outcome {
                threads,
                mappings: 0,
                memory: 0,
                file: 0,
                forked: true,
            });
        }
    }
    let (mappings, memory) = memory_sections(&mut w, scratch, &prep)?;
    w.finish()?;
    sink.flush()
        .map_err(|e| fail("writing the image file", e))?;
    done(seq);
    Ok(Outcome {
        threads,
        mappings,
        memory,
        file: sink.total,
        forked: false,
    })
}

/// The last writer process made (a child of this process), reaped at the
/// next full checkpoint; 0 for none.
static WRITER: AtomicU32 = AtomicU32::new(0);

/// Make the process that writes a full image's memory: a child that sends
/// no signal when it exits, so that the program's own `wait` calls do not
/// see it (only `__WALL` does); the shim reaps it at the next full
/// checkpoint. Returns `Some(true)` in the program, `Some(false)` in the
/// writer, `None` if no process could be made (the program then writes in
/// the freeze).
fn fork_writer(image_fd: i32) -> Option<bool> {
    let last = WRITER.swap(0, Ordering::Relaxed);
    if last != 0 {
        let r = raw(
            SYS_wait4,
            [last as usize, 0, (__WALL | WNOHANG) as usize, 0, 0, 0],
        );
        // r == 0: still running (its requester gave up on it); it stays a
        // zombie until the program exits. Rare, and never more than one
        // per abandoned checkpoint.
        let _ = r;
    }
    let child = raw(SYS_clone, [0, 0, 0, 0, 0, 0]);
    if child < 0 {
        return None;
    }
    if child == 0 {
        // The writer holds none of the program's descriptors (a socket
        // the program closes must close), only the image's.
        let fd = image_fd as usize;
        if fd > 0 {
            raw(SYS_close_range, [0, fd - 1, 0, 0, 0, 0]);
        }
        raw(SYS_close_range, [fd + 1, u32::MAX as usize, 0, 0, 0, 0]);
        if let Some(r) = state::region() {
            r.ckpt().writer_pid.store(sys::getpid(), Ordering::Release);
        }
        return Some(false);
    }
    WRITER.store(child as u32, Ordering::Relaxed);
    Some(true)
}

/// In a process that did not make the last writer (a forked child, a
/// restored process): it is not this one's to reap.
pub fn forget_writer() {
    WRITER.store(0, Ordering::Relaxed);
}

/// The writer's end: answer the requester and exit (an image it could not
/// finish is removed).
fn writer_exit(r: Result<Outcome, Fail>, path: &[u8]) -> ! {
    if r.is_err() {
        raw(
            SYS_unlinkat,
            [AT_FDCWD as usize, path.as_ptr() as usize, 0, 0, 0, 0],
        );
    }
    answer(r, None);
    loop {
        raw(SYS_exit_group, [0, 0, 0, 0, 0, 0]);
    }
}

pub(crate) type W<'a> = ImageWriter<&'a mut FdSink>;

fn process_section(w: &mut W<'_>, vpid: u32, buf: &mut [u8]) -> Result<(), Fail> {
    let (cwd_buf, rest) = buf.split_at_mut(4096);
    let (exe_buf, rest) = rest.split_at_mut(4096);
    let (comm_buf, rest) = rest.split_at_mut(64);
    let (argv_buf, env_buf) = rest.split_at_mut(rest.len() / 2);
    let n = raw(
        SYS_getcwd,
        [cwd_buf.as_mut_ptr() as usize, cwd_buf.len(), 0, 0, 0, 0],
    );
    if n <= 0 {
        return Err(fail("reading the working directory", -n as i32));
    }
    let cwd = &cwd_buf[..(n as usize).saturating_sub(1)];
    let n = raw(
        SYS_readlinkat,
        [
            AT_FDCWD as usize,
            c"/proc/self/exe".as_ptr() as usize,
            exe_buf.as_mut_ptr() as usize,
            exe_buf.len(),
            0,
            0,
        ],
    );
    if n < 0 {
        return Err(fail("reading /proc/self/exe", -n as i32));
    }
    let exe = &exe_buf[..n as usize];
    let argv_n = read_file(c"/proc/self/cmdline", argv_buf)
        .map_err(|e| fail("reading /proc/self/cmdline", e))?;
    let env_n = read_file(c"/proc/self/environ", env_buf)
        .map_err(|e| fail("reading /proc/self/environ", e))?;
    let comm_n = read_file(c"/proc/self/comm", comm_buf).unwrap_or(0);
    let mut comm = [0u8; 16];
    for (d, s) in comm
        .iter_mut()
        .zip(comm_buf[..comm_n].iter().take_while(|&&b| b != b'\n'))
    {
        *d = *s;
    }
    let mask = raw(SYS_umask, [0, 0, 0, 0, 0, 0]);
    raw(SYS_umask, [mask as usize, 0, 0, 0, 0, 0]);
    let info = ProcessInfo {
        vpid,
        parent_vpid: parent_in_table(),
        vpgid: raw(SYS_getpgid, [0; 6]) as u32,
        vsid: raw(SYS_getsid, [0; 6]) as u32,
        umask: mask as u32,
        personality: raw(SYS_personality, [0xffff_ffff, 0, 0, 0, 0, 0]) as u32,
        flags: 0,
        cwd_len: 0,
        exe_len: 0,
        argv_len: 0,
        env_len: 0,
        nice: 20 - raw(SYS_getpriority, [PRIO_PROCESS as usize, 0, 0, 0, 0, 0]) as i32,
        comm,
    };
    w.process(
        &info,
        cwd,
        exe,
        Some(&argv_buf[..argv_n]),
        Some(&env_buf[..env_n]),
    )?;
    Ok(())
}

/// For an image of all the program's processes, the virtual pid of this
/// process's parent while the parent is one of them; 0 otherwise (an
/// image of one process, the root, an orphan): the image holds the
/// processes as a tree.
fn parent_in_table() -> u32 {
    let Some(r) = state::region().filter(|r| r.ckpt().tree.load(Ordering::Acquire) != 0) else {
        return 0;
    };
    let me = r.proc(state::MY_SLOT.load(Ordering::Relaxed));
    let parent = me.parent_vpid.load(Ordering::Acquire);
    let live = (0..ferry_ring::MAX_PROCS).any(|s| {
        let p = r.proc(s);
        p.state.load(Ordering::Acquire) == ferry_ring::PROC_LIVE
            && p.vpid.load(Ordering::Acquire) == parent
    });
    if parent != 0 && live {
        parent
    } else {
        0
    }
}

fn rlimits_section(w: &mut W<'_>) -> Result<(), Fail> {
    let mut all = Rlimits {
        limits: [Rlimit { cur: 0, max: 0 }; 16],
    };
    for (i, l) in all.limits.iter_mut().enumerate() {
        let mut v = [0u64; 2];
        raw(SYS_prlimit64, [0, i, 0, v.as_mut_ptr() as usize, 0, 0]);
        l.cur = v[0];
        l.max = v[1];
    }
    w.rlimits(&all)?;
    Ok(())
}

/// `struct _fpstate`'s software-reserved words: where the kernel says how
/// much XSAVE state follows the legacy area.
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;

/// The XSAVE area of a signal frame: its address and length.
fn xsave_of(uc: *const ucontext_t) -> (*const u8, usize) {
    // SAFETY: `uc` is a signal frame's context the kernel built, whose
    // fpregs points to the frame's FPU state (512 legacy bytes, then the
    // XSAVE header and extended state as the software words say).
    unsafe {
        let fp = (*uc).uc_mcontext.fpregs as *const u8;
        if fp.is_null() {
            return (fp, 0);
        }
        let magic = core::ptr::read_unaligned(fp.add(464) as *const u32);
        let size = core::ptr::read_unaligned(fp.add(464 + 20) as *const u32);
        if magic == FP_XSTATE_MAGIC1 && (512..=65536).contains(&size) {
            (fp, size as usize)
        } else {
            (fp, 512)
        }
    }
}

fn thread_sections(w: &mut W<'_>) -> Result<u32, Fail> {
    let n = NSLOTS.load(Ordering::Acquire).min(MAX_THREADS);
    for s in &SLOTS[..n] {
        let uc = s.uc.load(Ordering::Relaxed) as *const ucontext_t;
        // SAFETY: each slot's uc is its thread's signal frame context,
        // which stays on its stack while the thread is parked.
        let (g, mask, stack) = unsafe {
            (
                (*uc).uc_mcontext.gregs,
                core::ptr::read_unaligned(&(*uc).uc_sigmask as *const sigset_t as *const u64),
                (*uc).uc_stack,
            )
        };
        let r = |i: i32| g[i as usize] as u64;
        let regs = UserRegs {
            r15: r(REG_R15),
            r14: r(REG_R14),
            r13: r(REG_R13),
            r12: r(REG_R12),
            rbp: r(REG_RBP),
            rbx: r(REG_RBX),
            r11: r(REG_R11),
            r10: r(REG_R10),
            r9: r(REG_R9),
            r8: r(REG_R8),
            rax: r(REG_RAX),
            rcx: r(REG_RCX),
            rdx: r(REG_RDX),
            rsi: r(REG_RSI),
            rdi: r(REG_RDI),
            orig_rax: u64::MAX,
            rip: r(REG_RIP),
            cs: r(REG_CSGSFS) & 0xffff,
            eflags: r(REG_EFL),
            rsp: r(REG_RSP),
            ss: (r(REG_CSGSFS) >> 48) & 0xffff,
            fs_base: s.fs_base.load(Ordering::Relaxed),
            gs_base: 0,
            ds: 0,
            es: 0,
            fs: 0,
            gs: 0,
        };
        // SAFETY: written by the thread itself before it parked.
        let [rsp, rip] = unsafe { *s.resume.get() };
        let info = ThreadInfo {
            vtid: s.shown_tid.load(Ordering::Relaxed),
            flags: THREAD_PARKED,
            regs,
            sigmask: mask,
            altstack_sp: stack.ss_sp as u64,
            altstack_size: stack.ss_size as u64,
            altstack_flags: stack.ss_flags as u32,
            xsave_len: 0,
            rseq_addr: s.rseq_addr.load(Ordering::Relaxed),
            rseq_len: s.rseq_len.load(Ordering::Relaxed),
            rseq_sig: if s.rseq_len.load(Ordering::Relaxed) != 0 {
                RSEQ_SIG
            } else {
                0
            },
            robust_list_head: s.robust_head.load(Ordering::Relaxed),
            robust_list_len: s.robust_len.load(Ordering::Relaxed),
            clear_child_tid: s.tid_addr.load(Ordering::Relaxed),
            resume_rip: rip,
            resume_rsp: rsp,
        };
        let (xp, xlen) = xsave_of(uc);
        let xsave: &[u8] = if xp.is_null() {
            &[]
        } else {
            // SAFETY: the frame's FPU state, `xlen` bytes (see xsave_of).
            unsafe { core::slice::from_raw_parts(xp, xlen) }
        };
        w.thread(&info, xsave)?;
    }
    Ok(n as u32)
}

fn sigactions_section(w: &mut W<'_>) -> Result<(), Fail> {
    let mut all = SigActions {
        actions: [SigAction {
            handler: 0,
            flags: 0,
            restorer: 0,
            mask: 0,
        }; 64],
    };
    for (i, a) in all.actions.iter_mut().enumerate() {
        let sig = i + 1;
        if sig == SIGKILL as usize || sig == SIGSTOP as usize {
            continue;
        }
        let mut k = [0u64; 4];
        raw(SYS_rt_sigaction, [sig, 0, k.as_mut_ptr() as usize, 8, 0, 0]);
        *a = SigAction {
            handler: k[0],
            flags: k[1],
            restorer: k[2],
            mask: k[3],
        };
    }
    w.sigactions(&all)?;
    Ok(())
}

fn itimers_section(w: &mut W<'_>) -> Result<(), Fail> {
    let mut t = Itimers {
        timers: [Itimer {
            interval_sec: 0,
            interval_usec: 0,
            value_sec: 0,
            value_usec: 0,
        }; 3],
    };
    for (i, slot) in t.timers.iter_mut().enumerate() {
        let mut v = [0i64; 4];
        raw(SYS_getitimer, [i, v.as_mut_ptr() as usize, 0, 0, 0, 0]);
        *slot = Itimer {
            interval_sec: v[0],
            interval_usec: v[1],
            value_sec: v[2],
            value_usec: v[3],
        };
    }
    w.itimers(&t)?;
    Ok(())
}

fn makedev(major: u32, minor: u32) -> u64 {
    let (ma, mi) = (major as u64, minor as u64);
    ((ma & 0xfff) << 8) | ((ma & !0xfff) << 32) | (mi & 0xff) | ((mi & !0xff) << 12)
}

fn memfd_like(m: &Mapping<'_>) -> bool {
    m.path.starts_with(b"/memfd:")
        || m.path.starts_with(b"/dev/shm/")
        || m.path.starts_with(b"/SYSV")
}

fn syscalls() -> Syscalls {
    /// # Safety
    /// As for the system call itself.
    unsafe fn gate(nr: i64, a: [usize; 6]) -> isize {
        raw(nr, a)
    }
    // SAFETY: `gate` makes system call `nr` with `a` in the calling thread.
    unsafe { Syscalls::new(gate) }
}

/// The dirty-page tracker, set up by the first checkpoint (while the
/// threads are stopped, before any page is copied) and kept for the
/// incremental ones after it. Touched only by the coordinator.
struct TrackerCell(UnsafeCell<Option<Tracker>>);
// SAFETY: only the coordinator of a checkpoint (one thread at a time,
// under COORD) and a forked child before it runs anything use it.
unsafe impl Sync for TrackerCell {}
static TRACKER: TrackerCell = TrackerCell(UnsafeCell::new(None));
/// The sequence number of this process's last image (or of the image it
/// was restored from).
static LAST_SEQ: AtomicU64 = AtomicU64::new(0);
/// Whether the tracker has followed every write since image LAST_SEQ:
/// the one an incremental checkpoint can be the child of.
static BASELINE: AtomicBool = AtomicBool::new(false);

fn tracker() -> &'static mut Option<Tracker> {
    // SAFETY: see TrackerCell.
    unsafe { &mut *TRACKER.0.get() }
}

/// The tracker's own descriptors, which are not the program's.
fn tracker_fds() -> [i32; 2] {
    match tracker() {
        Some(t) => [t.uffd_raw(), t.pagemap_raw()],
        None => [-1, -1],
    }
}

/// In a process that is not the one the tracker was opened in (a forked
/// child, a restored process): forget it. `close` says whether its
/// descriptors are this process's to close (a child's copies are; a
/// restored process never had them).
pub fn forget_tracker(close: bool) {
    if let Some(t) = tracker().take() {
        if close {
            drop(t);
        } else {
            core::mem::forget(t);
        }
    }
    BASELINE.store(false, Ordering::Relaxed);
}

/// How memory is saved: whole (a full image), or since the parent.
struct MemoryPlan<'a> {
    incremental: bool,
    tracker: Option<&'a Tracker>,
    /// The parts the tracker began tracking for this checkpoint (saved
    /// whole); `None` when there were too many to list (every mapping is
    /// then saved whole).
    fresh: Option<&'a [Range]>,
}

impl MemoryPlan<'_> {
    /// Whether mapping `m` is saved whole.
    fn whole(&self, m: &Mapping<'_>) -> bool {
        if !self.incremental || !m.trackable() || self.tracker.is_none() {
            return true;
        }
        match self.fresh {
            None => true,
            Some(parts) => parts.iter().any(|p| p.start < m.end && m.start < p.end),
        }
    }
}

const MAX_FRESH: usize = 4096;

/// What the memory sections are written from: the mappings, and which of
/// them the tracker began tracking for this checkpoint.
struct MemoryPrep {
    maps: &'static [Mapping<'static>],
    incremental: bool,
    /// See [`MemoryPlan::fresh`].
    fresh: Option<&'static [Range]>,
    /// The vDSO's CRC-32C and length.
    vdso: (u32, u64),
    /// The populated parts of the shared mappings whose content is saved,
    /// in address order; `None` when there were more than the list holds
    /// (a writer then reads those mappings whole).
    shared: Option<&'static [Range]>,
}

/// Whether the content of mapping `m` is saved (not a file's, not special).
fn content_saved(m: &Mapping<'_>) -> bool {
    let file_backed = m.kind == MapKind::File && !m.deleted && !memfd_like(m);
    let special = matches!(
        m.kind,
        MapKind::Vdso | MapKind::Vvar | MapKind::VvarVclock | MapKind::Vsyscall | MapKind::Other
    );
    !(special || (m.shared && file_backed))
}

/// Read the mappings and start (or extend) tracking, before any page is
/// copied: a write after this is in the next incremental image.
fn prepare_memory(scratch: &Scratch, incremental: bool) -> Result<MemoryPrep, Fail> {
    let sys = syscalls();
    let raw_maps = scratch.bytes(OFF_MAPPINGS, MAPPINGS_BYTES);
    // SAFETY: the bytes are zeroed, suitably aligned scratch memory (page
    // aligned), and a `Mapping` of all-zero bytes is a valid value (null
    // slice pointer aside, which `parse` overwrites before any read: the
    // slots are written with `Mapping::default()` first).
    let base = raw_maps.as_mut_ptr() as *mut Mapping<'static>;
    let table = |len: usize| -> &'static mut [Mapping<'static>] {
        // SAFETY: as above; `len` is at most MAX_MAPPINGS, and a table made
        // here is the only one in use from then on.
        unsafe {
            for i in 0..len {
                base.add(i).write(Mapping::default());
            }
            core::slice::from_raw_parts_mut(base, len)
        }
    };
    // A small table first (filling a table costs its size, in the freeze),
    // the whole one if the process has more mappings.
    let small = table(2048);
    let maps: &[Mapping<'static>] =
        match maps::read_self(sys, scratch.bytes(OFF_MAPS_TEXT, MAPS_TEXT), small) {
            Ok(n) => &small[..n],
            Err(maps::MapsError::TooMany { .. }) => {
                let out = table(MAX_MAPPINGS);
                let n = maps::read_self(sys, scratch.bytes(OFF_MAPS_TEXT, MAPS_TEXT), out)
                    .map_err(|_| fail("reading /proc/self/maps", EIO))?;
                &out[..n]
            }
            Err(_) => return Err(fail("reading /proc/self/maps", EIO)),
        };
    // SAFETY: scratch memory for PageRegion values (plain integers).
    let regions: &mut [PageRegion] = unsafe {
        core::slice::from_raw_parts_mut(
            scratch.bytes(OFF_REGIONS, MAX_REGIONS * 24).as_mut_ptr() as *mut PageRegion,
            MAX_REGIONS,
        )
    };
    // SAFETY: scratch memory for ranges (plain integers).
    let fresh: &mut [Range] = unsafe {
        core::slice::from_raw_parts_mut(
            scratch.bytes(OFF_FRESH, MAX_FRESH * 16).as_mut_ptr() as *mut Range,
            MAX_FRESH,
        )
    };
    // Tracking starts (or takes in what is new) before any page is
    // copied: a write after this point is in the next incremental image.
    if tracker().is_none() {
        match Tracker::open(sys) {
            Ok(t) => *tracker() = Some(t),
            Err(_) if !incremental => {}
            Err(_) => return Err(fail("opening the dirty-page tracker", EIO)),
        }
    }
    let mut nfresh = 0usize;
    let mut listed = true;
    if let Some(t) = tracker().as_ref() {
        let r = t.track_new(maps, regions, |part, _tracked| {
            if nfresh < fresh.len() {
                fresh[nfresh] = part;
                nfresh += 1;
            } else {
                listed = false;
            }
        });
        if r.is_err() {
            listed = false;
        }
    }
    let mut vdso = (0u32, 0u64);
    if let Some(m) = maps.iter().find(|m| m.kind == MapKind::Vdso) {
        // SAFETY: the vDSO is mapped readable for its whole length.
        let b = unsafe { core::slice::from_raw_parts(m.start as *const u8, m.end - m.start) };
        vdso = (crc32c::crc32c(b), b.len() as u64);
    }
    let fresh: &'static [Range] = fresh;
    // SAFETY: scratch memory for ranges (plain integers).
    let shared_out: &'static mut [Range] = unsafe {
        core::slice::from_raw_parts_mut(
            scratch
                .bytes(OFF_SHARED, MAX_SHARED_REGIONS * 16)
                .as_mut_ptr() as *mut Range,
            MAX_SHARED_REGIONS,
        )
    };
    let pm = Pagemap::open_self(sys).map_err(|e| fail("opening /proc/self/pagemap", e.errno.0))?;
    let skip = scratch.range();
    let mut nshared = 0usize;
    let mut complete = true;
    for m in maps.iter().filter(|m| m.shared && content_saved(m)) {
        if m.start < skip.end && skip.start < m.end {
            continue;
        }
        let mut at = m.start;
        while at < m.end && complete {
            let mut got = 0usize;
            let r = pm.populated(
                Range {
                    start: at,
                    end: m.end,
                },
                Swap::Include,
                false,
                regions,
                |b| {
                    got = b.len();
                    ControlFlow::Break(())
                },
            );
            if r.is_err() || nshared + got > shared_out.len() {
                complete = false;
                break;
            }
            for g in &regions[..got] {
                shared_out[nshared] = Range {
                    start: g.start as usize,
                    end: (g.end as usize).min(m.end),
                };
                nshared += 1;
            }
            if got < regions.len() {
                break;
            }
            at = regions[got - 1].end as usize;
        }
    }
    let shared: &'static [Range] = shared_out;
    Ok(MemoryPrep {
        maps,
        incremental,
        fresh: listed.then_some(&fresh[..nfresh]),
        vdso,
        shared: complete.then_some(&shared[..nshared]),
    })
}

/// The mapping and pages sections; returns how many mappings and the bytes
/// of memory saved.
fn memory_sections(
    w: &mut W<'_>,
    scratch: &Scratch,
    prep: &MemoryPrep,
) -> Result<(u32, u64), Fail> {
    let sys = syscalls();
    let (maps, incremental) = (prep.maps, prep.incremental);
    // SAFETY: scratch memory for PageRegion values (plain integers).
    let regions: &mut [PageRegion] = unsafe {
        core::slice::from_raw_parts_mut(
            scratch.bytes(OFF_REGIONS, MAX_REGIONS * 24).as_mut_ptr() as *mut PageRegion,
            MAX_REGIONS,
        )
    };
    // SAFETY: scratch memory for (addr, pages, kind) triples.
    let runs: &mut [[u64; 3]] = unsafe {
        core::slice::from_raw_parts_mut(
            scratch.bytes(OFF_RUNS, MAX_RUNS * 24).as_mut_ptr() as *mut [u64; 3],
            MAX_RUNS,
        )
    };
    let plan = MemoryPlan {
        incremental,
        tracker: tracker().as_ref(),
        fresh: prep.fresh,
    };
    // Half the I/O buffer's size, so the sink writes each chunk directly.
    let bounce = &mut scratch.bytes(OFF_MISC, MISC_BUF)[..IO_BUF / 2];
    let skip = scratch.range();
    let pm = Pagemap::open_self(sys).map_err(|e| fail("opening /proc/self/pagemap", e.errno.0))?;
    let mut count = 0u32;
    let mut memory = 0u64;
    for m in maps {
        if m.kind == MapKind::Vsyscall || (m.start < skip.end && skip.start < m.end) {
            continue;
        }
        let special = match m.kind {
            MapKind::Vdso => 1,
            MapKind::Vvar => 2,
            MapKind::VvarVclock => 3,
            _ => 0,
        };
        let anon = matches!(m.kind, MapKind::Anonymous | MapKind::Heap | MapKind::Stack);
        let mut flags = if m.shared {
            img::MAP_SHARED
        } else {
            img::MAP_PRIVATE
        };
        flags |= if anon {
            img::MAP_ANON
        } else if m.kind == MapKind::File {
            img::MAP_FILE
        } else {
            0
        };
        if m.kind == MapKind::Stack {
            flags |= img::MAP_STACK;
        }
        if anon && !m.shared && grows_down(m) {
            flags |= img::MAP_GROWSDOWN;
        }
        if m.kind == MapKind::Heap {
            flags |= img::MAP_HEAP;
        }
        if m.deleted {
            flags |= img::MAP_DELETED;
        }
        let whole = plan.whole(m);
        if incremental && whole {
            flags |= img::MAP_FRESH;
        }
        let prot = (if m.prot.read { PROT_READ } else { 0 })
            | (if m.prot.write { PROT_WRITE } else { 0 })
            | (if m.prot.exec { PROT_EXEC } else { 0 });
        let info = MappingInfo {
            start: m.start as u64,
            end: m.end as u64,
            offset: m.offset,
            device: makedev(m.dev_major, m.dev_minor),
            inode: m.inode,
            prot: prot as u32,
            flags,
            special,
            path_len: 0,
        };
        w.mapping(&info, m.path)?;
        count += 1;
        if special != 0 || m.kind == MapKind::Other {
            continue;
        }
        let file_backed = m.kind == MapKind::File && !m.deleted && !memfd_like(m);
        if m.shared && file_backed {
            // The content is the file's.
            continue;
        }
        if !m.prot.read {
            raw(
                SYS_mprotect,
                [
                    m.start,
                    m.end - m.start,
                    (prot | PROT_READ) as usize,
                    0,
                    0,
                    0,
                ],
            );
        }
        let mut out = Runs {
            w,
            bounce: &mut *bounce,
            through_bounce: changes_while_written(m, maps),
            mapping_start: m.start,
            runs: &mut *runs,
            n: 0,
            saved: 0,
        };
        let r = match (whole, plan.tracker) {
            (false, Some(t)) => dirty_pages(&mut out, t, m, regions),
            _ if m.shared => shared_pages(&mut out, m, prep.shared),
            _ => populated_pages(&mut out, &pm, m, file_backed, regions),
        }
        .and_then(|()| out.flush());
        if !m.prot.read {
            raw(
                SYS_mprotect,
                [m.start, m.end - m.start, prot as usize, 0, 0, 0],
            );
        }
        r?;
        memory += out.saved;
    }
    Ok((count, memory))
}

/// Whether mapping `m` may change while the coordinator writes it: the
/// coordinator's stack, its TLS block, and the shim's own writable memory
/// (its file's mappings, and the anonymous one right after them that holds
/// the rest of its `.bss`), and shared memory (another process may write
/// it). Every other thread is stopped, so the rest of the program's memory
/// holds still.
fn changes_while_written(m: &Mapping<'_>, maps: &[Mapping<'_>]) -> bool {
    if m.shared {
        return true;
    }
    let local = 0u8;
    let mut fs = 0u64;
    raw(
        SYS_arch_prctl,
        [ARCH_GET_FS, &mut fs as *mut u64 as usize, 0, 0, 0, 0],
    );
    let inside = |a: usize| m.start <= a && a < m.end;
    if inside(&local as *const u8 as usize)
        || inside(fs as usize)
        || inside(&PHASE as *const AtomicU32 as usize)
        || inside(SLOTS.as_ptr() as usize)
    {
        return true;
    }
    let code = ferry_ckpt_park as *const () as usize;
    let Some(shim) = maps.iter().position(|x| x.start <= code && code < x.end) else {
        return true;
    };
    let path = maps[shim].path;
    if !path.is_empty() && m.path == path {
        return true;
    }
    // The anonymous mapping right after the shim's last one.
    let last = maps.iter().rposition(|x| x.path == path).unwrap_or(shim);
    maps.get(last + 1).is_some_and(|next| {
        next.start == m.start && next.path.is_empty() && next.start == maps[last].end
    })
}

/// The runs of one mapping on their way into pages sections of at most
/// MAX_RUNS runs each.
struct Runs<'a, 'w> {
    w: &'a mut W<'w>,
    bounce: &'a mut [u8],
    /// Whether the mapping's bytes go through `bounce` (see
    /// [`changes_while_written`]).
    through_bounce: bool,
    mapping_start: usize,
    runs: &'a mut [[u64; 3]],
    n: usize,
    /// Bytes of page data written.
    saved: u64,
}

impl Runs<'_, '_> {
    fn push(&mut self, addr: usize, pages: usize, kind: u32) -> Result<(), Fail> {
        if self.n == self.runs.len() {
            self.flush()?;
        }
        self.runs[self.n] = [addr as u64, pages as u64, kind as u64];
        self.n += 1;
        Ok(())
    }

    /// The bytes `[s, e)` of the mapping: their non-zero pages as data
    /// runs and, with `zeros`, their zero pages as zero runs.
    fn bytes(&mut self, s: usize, e: usize, zeros: bool) -> Result<(), Fail> {
        const PAGE: usize = 4096;
        // SAFETY: [s, e) lies inside the mapping being saved, readable now
        // (made so by the caller), and no other thread runs.
        let bytes = unsafe { core::slice::from_raw_parts(s as *const u8, e - s) };
        let mut result = Ok(());
        let mut at = 0usize;
        ferry_memtrack::zero::nonzero_runs(bytes, PAGE, |a, b| {
            if result.is_err() {
                return;
            }
            if zeros && a > at {
                result = self.push(s + at, (a - at) / PAGE, RUN_ZERO);
            }
            if result.is_ok() {
                result = self.push(s + a, (b - a) / PAGE, RUN_DATA);
            }
            at = b;
        });
        result?;
        if zeros && bytes.len() > at {
            self.push(s + at, (bytes.len() - at) / PAGE, RUN_ZERO)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Fail> {
        let n = core::mem::take(&mut self.n);
        if n == 0 {
            return Ok(());
        }
        let data: u64 = self.runs[..n]
            .iter()
            .filter(|r| r[2] == RUN_DATA as u64)
            .map(|r| r[1])
            .sum();
        self.w
            .begin_pages(self.mapping_start as u64, n as u64, data)?;
        for r in &self.runs[..n] {
            self.w.page_run(&PageRun {
                addr: r[0],
                count: r[1] as u32,
                kind: r[2] as u32,
            })?;
            if r[2] != RUN_DATA as u64 {
                continue;
            }
            let mut at = r[0] as usize;
            let end = at + r[1] as usize * 4096;
            if !self.through_bounce {
                // SAFETY: the run lies in a readable mapping (see the
                // callers) that nothing writes while the threads are
                // stopped.
                let bytes = unsafe { core::slice::from_raw_parts(at as *const u8, end - at) };
                self.w.page_data(bytes)?;
                continue;
            }
            // Through a bounce buffer: the coordinator's own stack, its TLS
            // and the shim's statics change while they are written, and the
            // checksum must cover the bytes the file holds.
            while at < end {
                let len = (end - at).min(self.bounce.len());
                // SAFETY: the run lies in a readable mapping (see the
                // callers), and `bounce` is scratch memory outside every
                // saved mapping.
                unsafe {
                    core::ptr::copy_nonoverlapping(at as *const u8, self.bounce.as_mut_ptr(), len)
                };
                self.w.page_data(&self.bounce[..len])?;
                at += len;
            }
        }
        self.w.end_section()?;
        self.saved += data * 4096;
        Ok(())
    }
}

/// The pages of shared mapping `m` that hold data, from the list made while
/// the threads were stopped (all of `m` without one).
fn shared_pages(
    out: &mut Runs<'_, '_>,
    m: &Mapping<'_>,
    list: Option<&[Range]>,
) -> Result<(), Fail> {
    let Some(list) = list else {
        return out.bytes(m.start, m.end, false);
    };
    let first = list.partition_point(|r| r.end <= m.start);
    for r in list[first..].iter().take_while(|r| r.start < m.end) {
        let (s, e) = (r.start.max(m.start), r.end.min(m.end));
        if s < e {
            out.bytes(s, e, false)?;
        }
    }
    Ok(())
}

/// The pages of `m` that hold data (all-zero pages left out; with
/// `skip_file_pages`, the pages still the file's too).
fn populated_pages(
    out: &mut Runs<'_, '_>,
    pm: &Pagemap,
    m: &Mapping<'_>,
    skip_file_pages: bool,
    regions: &mut [PageRegion],
) -> Result<(), Fail> {
    let mut at = m.start;
    while at < m.end {
        let mut got = 0usize;
        pm.populated(
            Range {
                start: at,
                end: m.end,
            },
            Swap::Include,
            skip_file_pages,
            regions,
            |batch| {
                got = batch.len();
                ControlFlow::Break(())
            },
        )
        .map_err(|_| fail("scanning /proc/self/pagemap", EIO))?;
        for r in &regions[..got] {
            let (s, e) = (r.start as usize, (r.end as usize).min(m.end));
            if s < e {
                out.bytes(s, e, false)?;
            }
        }
        if got < regions.len() {
            break;
        }
        at = regions[got - 1].end as usize;
    }
    Ok(())
}

/// The pages of `m` written since the last checkpoint (zero ones as zero
/// runs), protected again in the same walk.
fn dirty_pages(
    out: &mut Runs<'_, '_>,
    t: &Tracker,
    m: &Mapping<'_>,
    regions: &mut [PageRegion],
) -> Result<(), Fail> {
    let mut at = m.start;
    while at < m.end {
        let mut got = 0usize;
        t.scan_dirty(
            Range {
                start: at,
                end: m.end,
            },
            true,
            regions,
            |batch| {
                got = batch.len();
                ControlFlow::Break(())
            },
        )
        .map_err(|_| {
            fail(
                "scanning for the pages written since the last checkpoint",
                EIO,
            )
        })?;
        for r in &regions[..got] {
            let (s, e) = (r.start as usize, (r.end as usize).min(m.end));
            if s < e {
                out.bytes(s, e, true)?;
            }
        }
        if got < regions.len() {
            break;
        }
        at = regions[got - 1].end as usize;
    }
    Ok(())
}

fn address_space_section(w: &mut W<'_>, scratch: &Scratch, vdso: (u32, u64)) -> Result<(), Fail> {
    let buf = scratch.bytes(OFF_MISC, MISC_BUF);
    let (stat, auxv_buf) = buf.split_at_mut(8192);
    let n = read_file(c"/proc/self/stat", stat).map_err(|e| fail("reading /proc/self/stat", e))?;
    let text = &stat[..n];
    let after = text.iter().rposition(|&b| b == b')').map_or(0, |p| p + 2);
    let mut fields = [0u64; 64];
    for (i, f) in text[after.min(text.len())..]
        .split(|&b| b == b' ' || b == b'\n')
        .filter(|f| !f.is_empty())
        .enumerate()
        .take(fields.len())
    {
        fields[i] = f
            .iter()
            .try_fold(0u64, |a, &d| {
                d.is_ascii_digit()
                    .then(|| a.wrapping_mul(10).wrapping_add((d - b'0') as u64))
            })
            .unwrap_or(0);
    }
    // Field n of /proc/<pid>/stat (from 1) is fields[n - 3].
    let f = |n: usize| fields[n - 3];
    let auxv_n = read_file(c"/proc/self/auxv", &mut auxv_buf[..4096])
        .map_err(|e| fail("reading /proc/self/auxv", e))?;
    let brk = raw(SYS_brk, [0; 6]) as u64;
    let (vdso_crc, vdso_len) = vdso;
    let xcr0 = xgetbv0();
    let xsave_size = {
        let n = NSLOTS.load(Ordering::Acquire);
        if n > 0 {
            xsave_of(SLOTS[0].uc.load(Ordering::Relaxed) as *const ucontext_t).1 as u32
        } else {
            0
        }
    };
    let info = AddressSpace {
        start_code: f(26),
        end_code: f(27),
        start_data: f(45),
        end_data: f(46),
        start_brk: f(47),
        brk,
        start_stack: f(28),
        arg_start: f(48),
        arg_end: f(49),
        env_start: f(50),
        env_end: f(51),
        xcr0,
        xsave_size,
        vdso_crc,
        vdso_len,
        auxv_len: 0,
        reserved: 0,
    };
    w.address_space(&info, &auxv_buf[..auxv_n])?;
    Ok(())
}

fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: xgetbv with ecx = 0 reads XCR0; every x86_64 CPU with XSAVE
    // (all that Linux ≥ 6 runs on with AVX) has it, and it writes only
    // eax and edx.
    unsafe {
        core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
            options(nomem, nostack, preserves_flags));
    }
    ((hi as u64) << 32) | lo as u64
}

fn fd_sections(w: &mut W<'_>, image_fd: i32, buf: &mut [u8]) -> Result<(), Fail> {
    // Collect the numbers first: the listing holds a descriptor of its own.
    let mut fds = [0i32; 4096];
    let mut n = 0usize;
    let mut list_fd = -1;
    for_each_entry_fd(c"/proc/self/fd", &mut list_fd, |name| {
        if let Some(v) = parse_u32(name) {
            if n < fds.len() {
                fds[n] = v as i32;
                n += 1;
            }
        }
    })
    .map_err(|e| fail("listing /proc/self/fd", e))?;
    fds[..n].sort_unstable();
    // (descriptor, device, inode) of those written, to find dups.
    const SEEN: usize = 4096;
    let (buf, seen_bytes) = buf.split_at_mut(buf.len() - SEEN * 24);
    // SAFETY: scratch bytes, 8-byte aligned (the buffer's length and the
    // split are multiples of 8), viewed as plain integers.
    let seen: &mut [[u64; 3]] =
        unsafe { core::slice::from_raw_parts_mut(seen_bytes.as_mut_ptr() as *mut [u64; 3], SEEN) };
    let mut nseen = 0usize;
    let pid = sys::getpid() as usize;
    for &fd in &fds[..n] {
        if fd == image_fd || fd == list_fd || fd == REGION_FD || tracker_fds().contains(&fd) {
            continue;
        }
        let mut st: stat = unsafe_zeroed_stat();
        if raw(
            SYS_fstat,
            [fd as usize, &mut st as *mut stat as usize, 0, 0, 0, 0],
        ) < 0
        {
            continue;
        }
        let shares = seen[..nseen]
            .iter()
            .find(|s| {
                s[1] == st.st_dev
                    && s[2] == st.st_ino
                    && raw(SYS_kcmp, [pid, pid, 0, s[0] as usize, fd as usize, 0]) == 0
            })
            .map_or(0, |s| s[0] as u32 + 1);
        one_fd(w, fd, &st, shares, buf)?;
        if nseen < SEEN {
            seen[nseen] = [fd as u64, st.st_dev, st.st_ino];
            nseen += 1;
        }
    }
    Ok(())
}

fn one_fd(w: &mut W<'_>, fd: i32, st: &stat, shares: u32, buf: &mut [u8]) -> Result<(), Fail> {
    let st = *st;
    let fd_flags = raw(SYS_fcntl, [fd as usize, F_GETFD as usize, 0, 0, 0, 0]).max(0) as u32;
    let status = raw(SYS_fcntl, [fd as usize, F_GETFL as usize, 0, 0, 0, 0]).max(0) as u32;
    let (link_buf, data_buf) = buf.split_at_mut(4096);
    let mut p = sys::Line::new();
    let _ = write!(p, "/proc/self/fd/{fd}\0");
    let n = raw(
        SYS_readlinkat,
        [
            AT_FDCWD as usize,
            p.as_bytes().as_ptr() as usize,
            link_buf.as_mut_ptr() as usize,
            link_buf.len(),
            0,
            0,
        ],
    );
    let link: &[u8] = if n > 0 { &link_buf[..n as usize] } else { &[] };
    let mut info = FdInfo {
        fd: fd as u32,
        fd_flags,
        status_flags: status,
        kind: 0,
        reserved0: 0,
        body_len: 0,
        shares,
        data_len: 0,
    };
    let fmt = st.st_mode & S_IFMT;
    const DELETED: &[u8] = b" (deleted)";
    if fmt == S_IFREG || fmt == S_IFDIR || fmt == S_IFCHR || fmt == S_IFBLK {
        let unlinked = fmt == S_IFREG && st.st_nlink == 0;
        let path = if unlinked && link.ends_with(DELETED) {
            &link[..link.len() - DELETED.len()]
        } else {
            link
        };
        let offset = raw(SYS_lseek, [fd as usize, 0, SEEK_CUR as usize, 0, 0, 0]).max(0) as u64;
        let body = RegularFile {
            offset,
            flags: if unlinked { REGULAR_UNLINKED } else { 0 },
            path_len: 0,
        };
        if !unlinked || shares != 0 {
            w.fd(&info, &FdBody::Regular(body, path), &[])?;
            return Ok(());
        }
        let size = st.st_size.max(0) as u64;
        w.begin_fd(&info, &FdBody::Regular(body, path), size)?;
        let mut pos = 0u64;
        while pos < size {
            let want = ((size - pos) as usize).min(data_buf.len());
            let got = raw(
                SYS_pread64,
                [
                    fd as usize,
                    data_buf.as_mut_ptr() as usize,
                    want,
                    pos as usize,
                    0,
                    0,
                ],
            );
            if got <= 0 {
                return Err(fail(
                    "reading an unlinked file's content",
                    (-got).max(EIO as isize) as i32,
                ));
            }
            w.fd_data(&data_buf[..got as usize])?;
            pos += got as u64;
        }
        w.end_section()?;
        return Ok(());
    }
    if fmt == S_IFIFO {
        let read_end = status & O_ACCMODE as u32 == O_RDONLY as u32;
        let fifo = !link.starts_with(b"pipe:");
        let capacity =
            raw(SYS_fcntl, [fd as usize, F_GETPIPE_SZ as usize, 0, 0, 0, 0]).max(0) as u32;
        let body = PipeEnd {
            pipe_id: st.st_ino,
            end: if read_end { 0 } else { 1 },
            fifo: fifo as u32,
            capacity,
            path_len: 0,
        };
        let path: &[u8] = if fifo { link } else { &[] };
        let data_len = if read_end && shares == 0 {
            peek_pipe(fd, data_buf)
        } else {
            0
        };
        w.fd(&info, &FdBody::Pipe(body, path), &data_buf[..data_len])?;
        return Ok(());
    }
    if crate::ckpt_fd::write(w, info, fd, &st, link, data_buf)? {
        return Ok(());
    }
    info.kind = 0;
    w.fd(&info, &FdBody::Other(link), &[])?;
    Ok(())
}

fn unsafe_zeroed_stat() -> stat {
    // SAFETY: `stat` is plain integers, for which all-zero bytes are valid.
    unsafe { core::mem::zeroed() }
}

/// The unread bytes of pipe read end `fd`, copied with `tee` (which leaves
/// them in the pipe) into `out`; how many.
fn peek_pipe(fd: i32, out: &mut [u8]) -> usize {
    let mut p = [0i32; 2];
    if raw(
        SYS_pipe2,
        [
            p.as_mut_ptr() as usize,
            (O_NONBLOCK | O_CLOEXEC) as usize,
            0,
            0,
            0,
            0,
        ],
    ) < 0
    {
        return 0;
    }
    raw(
        SYS_fcntl,
        [p[1] as usize, F_SETPIPE_SZ as usize, 1 << 20, 0, 0, 0],
    );
    let n = raw(
        SYS_tee,
        [
            fd as usize,
            p[1] as usize,
            out.len(),
            SPLICE_F_NONBLOCK as usize,
            0,
            0,
        ],
    );
    let mut got = 0usize;
    if n > 0 {
        while got < n as usize {
            let r = raw(
                SYS_read,
                [
                    p[0] as usize,
                    out[got..].as_mut_ptr() as usize,
                    n as usize - got,
                    0,
                    0,
                    0,
                ],
            );
            if r <= 0 {
                break;
            }
            got += r as usize;
        }
    }
    raw(SYS_close, [p[0] as usize, 0, 0, 0, 0, 0]);
    raw(SYS_close, [p[1] as usize, 0, 0, 0, 0, 0]);
    got
}

// ---------------------------------------------------------------------------
// Small raw helpers.

fn now(clock: clockid_t) -> u64 {
    let mut ts = timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    raw(
        SYS_clock_gettime,
        [
            clock as usize,
            &mut ts as *mut timespec as usize,
            0,
            0,
            0,
            0,
        ],
    );
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn parse_u32(name: &[u8]) -> Option<u32> {
    if name.is_empty() || name.len() > 10 {
        return None;
    }
    name.iter().try_fold(0u32, |a, &d| {
        d.is_ascii_digit()
            .then(|| a.checked_mul(10)?.checked_add((d - b'0') as u32))
            .flatten()
    })
}

/// Whether the kernel grows mapping `m` down (`VM_GROWSDOWN`): only then
/// does `mprotect` take `PROT_GROWSDOWN`, and giving its first page the
/// protection it has changes nothing (much cheaper than reading smaps,
/// which walks every page table).
fn grows_down(m: &Mapping<'_>) -> bool {
    let prot = (if m.prot.read { PROT_READ } else { 0 })
        | (if m.prot.write { PROT_WRITE } else { 0 })
        | (if m.prot.exec { PROT_EXEC } else { 0 });
    raw(
        SYS_mprotect,
        [m.start, 4096, (prot | PROT_GROWSDOWN) as usize, 0, 0, 0],
    ) == 0
}

/// Read a whole small file into `buf`; the bytes read.
pub(crate) fn read_file(path: &core::ffi::CStr, buf: &mut [u8]) -> Result<usize, i32> {
    let fd = raw(
        SYS_openat,
        [
            AT_FDCWD as usize,
            path.as_ptr() as usize,
            (O_RDONLY | O_CLOEXEC) as usize,
            0,
            0,
            0,
        ],
    );
    if fd < 0 {
        return Err(-fd as i32);
    }
    let mut n = 0usize;
    while n < buf.len() {
        let r = raw(
            SYS_read,
            [
                fd as usize,
                buf[n..].as_mut_ptr() as usize,
                buf.len() - n,
                0,
                0,
                0,
            ],
        );
        if r == -(EINTR as isize) {
            continue;
        }
        if r <= 0 {
            break;
        }
        n += r as usize;
    }
    raw(SYS_close, [fd as usize, 0, 0, 0, 0, 0]);
    Ok(n)
}

fn for_each_entry(path: &core::ffi::CStr, f: impl FnMut(&[u8])) -> Result<(), i32> {
    let mut unused = -1;
    for_each_entry_fd(path, &mut unused, f)
}

/// Call `f` with each entry name of directory `path`; `dir_fd` is set to
/// the descriptor used while listing.
fn for_each_entry_fd(
    path: &core::ffi::CStr,
    dir_fd: &mut i32,
    mut f: impl FnMut(&[u8]),
) -> Result<(), i32> {
    let fd = raw(
        SYS_openat,
        [
            AT_FDCWD as usize,
            path.as_ptr() as usize,
            (O_RDONLY | O_DIRECTORY | O_CLOEXEC) as usize,
            0,
            0,
            0,
        ],
    );
    if fd < 0 {
        return Err(-fd as i32);
    }
    *dir_fd = fd as i32;
    let mut buf = [0u8; 4096];
    let result = loop {
        let n = raw(
            SYS_getdents64,
            [fd as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0],
        );
        if n < 0 {
            break Err(-n as i32);
        }
        if n == 0 {
            break Ok(());
        }
        let mut off = 0usize;
        while off + 19 <= n as usize {
            let reclen = u16::from_le_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen == 0 || off + reclen > n as usize {
                break;
            }
            let name = &buf[off + 19..off + reclen];
            let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            f(&name[..len]);
            off += reclen;
        }
    };
    raw(SYS_close, [fd as usize, 0, 0, 0, 0, 0]);
    result
}
