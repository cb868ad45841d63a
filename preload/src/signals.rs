//! Signals. Asynchronous signals cannot be replayed at the exact instruction
//! without hardware counters, so the shim makes their delivery points
//! deterministic (DESIGN §3): its own handler only notes the signal; the
//! program's handler runs at the thread's next intercepted call, or right
//! after the call it interrupted (which then returns `EINTR`), and the log
//! says where. Replay runs the handler at the same point and ignores the
//! real signals. Faults (SIGSEGV and the like, raised by an instruction) are
//! deterministic and go straight to the program's handler.

use crate::state::{self, consume, emit, mode, Rec};
use crate::sys::{self, raw, GateFutex, KSigaction, SA_RESTORER};
use core::cell::Cell;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use ferry_proto::{Kind, RecordHeader};
use ferry_ring::Mode;
use libc::*;

const NSIG: usize = 65;
const SIGINFO_LEN: usize = 128;

/// The program's own disposition of each signal.
struct Action {
    handler: AtomicUsize,
    flags: AtomicU64,
    restorer: AtomicUsize,
    mask: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const NO_ACTION: Action = Action {
    handler: AtomicUsize::new(0),
    flags: AtomicU64::new(0),
    restorer: AtomicUsize::new(0),
    mask: AtomicU64::new(0),
};
static ACTIONS: [Action; NSIG] = [NO_ACTION; NSIG];

thread_local! {
    /// The siginfo of each signal noted and not yet delivered.
    static INFO: Cell<[[u8; SIGINFO_LEN]; NSIG]> = const { Cell::new([[0; SIGINFO_LEN]; NSIG]) };
}

fn bit(sig: usize) -> u64 {
    1u64 << (sig - 1)
}

fn is_fault(sig: i32) -> bool {
    matches!(sig, SIGSEGV | SIGBUS | SIGILL | SIGFPE | SIGTRAP)
}

/// Signals whose default action ends the process and that arrive from
/// outside the instruction stream. While the program leaves one of them at
/// `SIG_DFL`, the shim's handler stands in, so that the death is logged
/// and replay dies at the same point.
fn terminates_by_default(sig: usize) -> bool {
    matches!(
        sig as i32,
        SIGHUP
            | SIGINT
            | SIGQUIT
            | SIGABRT
            | SIGUSR1
            | SIGUSR2
            | SIGPIPE
            | SIGALRM
            | SIGTERM
            | SIGSTKFLT
            | SIGXCPU
            | SIGXFSZ
            | SIGVTALRM
            | SIGPROF
            | SIGIO
            | SIGPWR
    ) || (SIGRTMIN() as usize..NSIG).contains(&sig)
}

/// What the kernel is given for the program's disposition `new` of `sig`.
fn kernel_action(sig: usize, new: &KSigaction) -> KSigaction {
    // SIGSYS must never be blocked, not even while a handler runs: the
    // kernel kills a thread whose dispatch SIGSYS arrives while blocked.
    let mask = new.mask & !reserved();
    let ours = KSigaction {
        handler: on_signal as *const () as usize,
        flags: (SA_SIGINFO | SA_RESTORER) as u64 | (new.flags & SA_ONSTACK as u64),
        restorer: sys::ferry_restorer as *const () as usize,
        mask,
    };
    // Passthrough logs nothing, so a death needs no record: leave SIG_DFL
    // to the kernel there.
    let passthrough = mode() == Some(Mode::Passthrough);
    if new.handler == SIG_IGN
        || (new.handler == SIG_DFL && (passthrough || !terminates_by_default(sig)))
    {
        KSigaction {
            handler: new.handler,
            flags: new.flags & !(SA_RESTORER as u64),
            restorer: 0,
            mask: new.mask,
        }
    } else {
        ours
    }
}

/// Read the dispositions inherited at start (an exec keeps ignored signals
/// ignored) and install the SIGSYS handler.
pub fn init() {
    for (sig, a) in ACTIONS.iter().enumerate().skip(1) {
        let mut old = KSigaction {
            handler: 0,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        if raw(
            SYS_rt_sigaction,
            [sig, 0, &mut old as *mut _ as usize, 8, 0, 0],
        ) == 0
        {
            a.handler.store(old.handler, Ordering::Relaxed);
            a.flags.store(old.flags, Ordering::Relaxed);
            a.restorer.store(old.restorer, Ordering::Relaxed);
            a.mask.store(old.mask, Ordering::Relaxed);
            if old.handler == SIG_DFL
                && terminates_by_default(sig)
                && mode() != Some(Mode::Passthrough)
            {
                let k = kernel_action(sig, &old);
                raw(SYS_rt_sigaction, [sig, &k as *const _ as usize, 0, 8, 0, 0]);
            }
        }
    }
    crate::sud::install_handler();
    crate::ckpt::install_handler();
}

/// In a forked child: nothing noted in the parent is the child's.
pub fn after_fork_child() {
    crate::ckpt::forget_tracker(true);
    crate::ckpt::forget_writer();
    state::me().pending.set(0);
    state::me().follow.set(false);
}

/// `rt_sigaction`: remember the program's disposition and install the
/// shim's handler in its place. SIGSYS stays the shim's.
pub fn sigaction(a: [usize; 6]) -> isize {
    let sig = a[0];
    if sig == 0 || sig >= NSIG {
        return -(EINVAL as isize);
    }
    if sig == SIGKILL as usize || sig == SIGSTOP as usize {
        return raw(SYS_rt_sigaction, a);
    }
    let slot = &ACTIONS[sig];
    let old = KSigaction {
        handler: slot.handler.load(Ordering::Relaxed),
        flags: slot.flags.load(Ordering::Relaxed),
        restorer: slot.restorer.load(Ordering::Relaxed),
        mask: slot.mask.load(Ordering::Relaxed),
    };
    if a[1] != 0 {
        // SAFETY: the program passed a struct sigaction to the kernel call.
        let new = unsafe { core::ptr::read_unaligned(a[1] as *const KSigaction) };
        if bit(sig) & reserved() == 0 {
            let install = kernel_action(sig, &new);
            let r = raw(
                SYS_rt_sigaction,
                [sig, &install as *const _ as usize, 0, 8, 0, 0],
            );
            if r < 0 {
                return r;
            }
        }
        slot.handler.store(new.handler, Ordering::Relaxed);
        slot.flags.store(new.flags, Ordering::Relaxed);
        slot.restorer.store(new.restorer, Ordering::Relaxed);
        slot.mask.store(new.mask, Ordering::Relaxed);
    }
    if a[2] != 0 {
        // SAFETY: the program passed room for a struct sigaction.
        unsafe { core::ptr::write_unaligned(a[2] as *mut KSigaction, old) };
    }
    0
}

/// `rt_sigprocmask`: SIGSYS can never be blocked (the dispatch needs it).
///
/// From the SIGSYS handler (`ctx` not null) the change is made to the mask
/// saved in the handler's context: `rt_sigreturn` installs that mask when
/// the handler returns, so a change made to the live mask would be undone.
pub fn sigprocmask(a: [usize; 6], ctx: *mut ucontext_t) -> isize {
    let never = reserved() | bit(SIGKILL as usize) | bit(SIGSTOP as usize);
    if ctx.is_null() {
        if a[1] != 0 {
            // SAFETY: the program passed a sigset of at least 8 bytes.
            let set = unsafe { core::ptr::read_unaligned(a[1] as *const u64) };
            let clean = set & !reserved();
            let mut b = a;
            b[1] = &clean as *const u64 as usize;
            return raw(SYS_rt_sigprocmask, b);
        }
        return raw(SYS_rt_sigprocmask, a);
    }
    if a[3] != 8 {
        return -(EINVAL as isize);
    }
    // SAFETY: ctx is the SIGSYS handler's context; uc_sigmask starts with
    // the 64-bit kernel signal set.
    let saved = unsafe { &mut (*ctx).uc_sigmask as *mut sigset_t as *mut u64 };
    // SAFETY: as above.
    let cur = unsafe { core::ptr::read_unaligned(saved) };
    if a[1] != 0 {
        // SAFETY: the program passed a sigset of at least 8 bytes.
        let set = unsafe { core::ptr::read_unaligned(a[1] as *const u64) };
        let new = match a[0] as i32 {
            SIG_BLOCK => cur | set,
            SIG_UNBLOCK => cur & !set,
            SIG_SETMASK => set,
            _ => return -(EINVAL as isize),
        };
        // SAFETY: as above.
        unsafe { core::ptr::write_unaligned(saved, new & !never) };
    }
    if a[2] != 0 {
        // SAFETY: the program passed room for the old sigset.
        unsafe { core::ptr::write_unaligned(a[2] as *mut u64, cur) };
    }
    0
}

/// The signals the shim keeps for itself, which the program can neither
/// block nor handle: SIGSYS (the safety net) and the checkpoint signal.
pub fn reserved() -> u64 {
    bit(SIGSYS as usize) | bit(ferry_ring::CKPT_SIGNAL as usize)
}

/// The handler the shim installs for every signal the program handles.
extern "C" fn on_signal(sig: i32, info: *mut siginfo_t, uc: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo.
    let code = unsafe { (*info).si_code };
    let direct = is_fault(sig) && code > 0;
    match mode() {
        Some(Mode::Replay) if !direct => {}
        Some(Mode::Record) if !direct && state::vtid() != 0 => {
            let s = sig as usize;
            INFO.with(|i| {
                let mut all = i.get();
                // SAFETY: siginfo_t is 128 bytes.
                all[s] = unsafe { core::ptr::read_unaligned(info as *const [u8; SIGINFO_LEN]) };
                i.set(all);
            });
            {
                let t = state::me();
                t.pending.set(t.pending.get() | bit(s))
            };
        }
        _ => {
            let a = &ACTIONS[sig as usize];
            let h = a.handler.load(Ordering::Relaxed);
            let flags = a.flags.load(Ordering::Relaxed);
            if h > 1 && flags & SA_RESETHAND as u64 != 0 {
                // The kernel ran the shim's handler, which it does not
                // reset: the program's disposition goes back to SIG_DFL
                // here, as SA_RESETHAND asks.
                a.handler.store(SIG_DFL, Ordering::Relaxed);
                let dfl = KSigaction {
                    handler: SIG_DFL,
                    flags: flags & !(SA_RESETHAND as u64 | SA_SIGINFO as u64),
                    restorer: 0,
                    mask: a.mask.load(Ordering::Relaxed),
                };
                let k = kernel_action(sig as usize, &dfl);
                raw(
                    SYS_rt_sigaction,
                    [sig as usize, &k as *const _ as usize, 0, 8, 0, 0],
                );
            }
            if h > 1 {
                // SAFETY: the program installed this handler for `sig`.
                unsafe { call_handler(h, flags, sig, info, uc) };
            }
        }
    }
}

/// # Safety
/// `h` must be the program's handler for `sig`.
unsafe fn call_handler(h: usize, flags: u64, sig: i32, info: *mut siginfo_t, uc: *mut c_void) {
    if flags & SA_SIGINFO as u64 != 0 {
        // SAFETY: the caller's contract.
        let f: extern "C" fn(i32, *mut siginfo_t, *mut c_void) = unsafe { core::mem::transmute(h) };
        f(sig, info, uc);
    } else {
        // SAFETY: the caller's contract.
        let f: extern "C" fn(i32) = unsafe { core::mem::transmute(h) };
        f(sig);
    }
}

/// Record: whether signals wait to be delivered (checked when a record is
/// sealed: they will be delivered right after that call).
pub fn pending_now() -> bool {
    state::me().pending.get() != 0
}

/// Run the program's handler for `sig` as the kernel would: with its mask
/// blocked, outside the shim. Returns whether the handler asks for restart.
fn invoke(sig: usize, info: &mut [u8; SIGINFO_LEN]) -> bool {
    let a = &ACTIONS[sig];
    let h = a.handler.load(Ordering::Relaxed);
    let flags = a.flags.load(Ordering::Relaxed);
    if h == SIG_IGN {
        return true;
    }
    if h == SIG_DFL {
        if !terminates_by_default(sig) {
            return true;
        }
        // The default action: die of this signal, for real, now (the
        // record of it is already in the log).
        let dfl = KSigaction {
            handler: SIG_DFL,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        raw(
            SYS_rt_sigaction,
            [sig, &dfl as *const _ as usize, 0, 8, 0, 0],
        );
        let set = bit(sig);
        raw(
            SYS_rt_sigprocmask,
            [
                SIG_UNBLOCK as usize,
                &set as *const u64 as usize,
                0,
                8,
                0,
                0,
            ],
        );
        raw(
            SYS_tgkill,
            [sys::getpid() as usize, sys::gettid() as usize, sig, 0, 0, 0],
        );
        return true;
    }
    let mut block = a.mask.load(Ordering::Relaxed);
    if flags & SA_NODEFER as u64 == 0 {
        block |= bit(sig);
    }
    block &= !reserved();
    let mut old = 0u64;
    raw(
        SYS_rt_sigprocmask,
        [
            SIG_BLOCK as usize,
            &block as *const u64 as usize,
            &mut old as *mut u64 as usize,
            8,
            0,
            0,
        ],
    );
    if flags & SA_RESETHAND as u64 != 0 {
        a.handler.store(SIG_DFL, Ordering::Relaxed);
        let dfl = KSigaction {
            handler: SIG_DFL,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        raw(
            SYS_rt_sigaction,
            [sig, &dfl as *const _ as usize, 0, 8, 0, 0],
        );
    }
    // SAFETY: a zeroed ucontext is a valid (if uninformative) context.
    let mut uc: ucontext_t = unsafe { core::mem::zeroed() };
    let depth = state::me().in_shim.replace(0);
    // SAFETY: `h` is the handler the program installed for `sig`.
    unsafe {
        call_handler(
            h,
            flags,
            sig as i32,
            info.as_mut_ptr() as *mut siginfo_t,
            &mut uc as *mut _ as *mut c_void,
        )
    };
    state::me().in_shim.set(depth);
    raw(
        SYS_rt_sigprocmask,
        [
            SIG_SETMASK as usize,
            &old as *const u64 as usize,
            0,
            8,
            0,
            0,
        ],
    );
    flags & SA_RESTART as u64 != 0
}

/// Record: deliver every noted signal, logging each delivery.
pub fn deliver_pending() {
    let mut restart = true;
    let mut any = false;
    loop {
        let p = state::me().pending.get();
        if p == 0 {
            break;
        }
        let sig = p.trailing_zeros() as usize + 1;
        state::me().pending.set(p & !bit(sig));
        let mut info = INFO.with(|i| i.get()[sig]);
        emit(
            Rec {
                kind: Kind::Signal,
                flags: 0,
                nr: sig as u32,
                ret: 0,
                arg0: 0,
                arg1: 0,
            },
            &[&info],
        );
        restart &= invoke(sig, &mut info);
        any = true;
    }
    state::me().restart.set(any && restart);
}

/// Replay: the head record is a signal for this thread: deliver it.
pub fn deliver_logged(h: &RecordHeader) {
    let mut info = [0u8; SIGINFO_LEN];
    let n = (h.payload_len as usize).min(SIGINFO_LEN);
    state::reg().read_payload(h, 0, &mut info[..n]);
    consume(h);
    let r = invoke(h.nr as usize, &mut info);
    {
        let t = state::me();
        t.restart.set(t.restart.get() && r)
    };
}

/// Called on entry to the shim: record delivers what is pending.
#[inline]
pub fn on_entry() {
    if mode() == Some(Mode::Record) && pending_now() {
        deliver_pending();
    }
}

/// Called on the way out of the shim: deliver the signals logged right after
/// the call (record: those noted before its record was sealed; replay: those
/// the record says follow).
#[inline]
pub fn on_exit() {
    if !state::me().follow.replace(false) {
        return;
    }
    match mode() {
        Some(Mode::Record) => deliver_pending(),
        Some(Mode::Replay) => {
            state::me().restart.set(true);
            deliver_following();
        }
        _ => {}
    }
}

/// Replay: deliver this thread's signal records that come next.
fn deliver_following() {
    let r = state::reg();
    let me = state::vtid();
    loop {
        match r.peek() {
            Some(h) if h.vtid == me => {
                if h.kind == Kind::Signal as u16 {
                    deliver_logged(&h);
                    continue;
                }
                return;
            }
            Some(_) => r.wait_turn(me, &GateFutex, Some(1000)),
            None => {
                if r.has(ferry_ring::CTL_END_OF_LOG) {
                    return;
                }
                r.wait_published(&GateFutex, Some(1000));
            }
        }
        if r.has(ferry_ring::CTL_DIVERGED | ferry_ring::CTL_FAILED) {
            sys::exit_group(3);
        }
    }
}

/// Whether the call interrupted by the last delivery should be restarted.
pub fn take_restart() -> bool {
    state::me().restart.replace(false)
}
