//! `libferry_preload.so`, the shim: loaded into an unmodified program with
//! `LD_PRELOAD`, it turns every call the program makes to the operating
//! system into a record in one total order (`gseq`), and in replay answers
//! the program's calls from those records. See DESIGN §3.
//!
//! Rooms: `sys` (the gate and raw syscalls), `sud` (the SIGSYS safety net),
//! `hooks` and `threads` (exported libc symbols), `engine` (call classes),
//! `fds`, `procs`, `signals`, and `state` (the barrier).
//!
//! The shim never allocates, never takes a lock the program could hold, and
//! never unwinds: `panic = "abort"`, and every export is `extern "C"`.

#![allow(clippy::missing_safety_doc)]
#![allow(non_upper_case_globals)]

mod ckpt;
mod ckpt_fd;
mod engine;
mod fds;
mod hooks;
mod live;
mod procs;
mod signals;
mod state;
mod sud;
mod sys;
mod threads;

use core::sync::atomic::Ordering;
use ferry_ring::Mode;

/// Runs when the dynamic linker loads the shim into a new program image
/// (at start and after every exec), before the program's own constructors.
extern "C" fn ferry_init() {
    let r = match state::map_region() {
        Ok(r) => r,
        // Not started by ferry: stay out of the way entirely.
        Err(_) => return,
    };
    state::init_tls_offset();
    let pid = sys::getpid();
    let slot = match r.slot_of_real_pid(pid) {
        Some(s) => s,
        None => state::fail(b"this process is not in the program's process table"),
    };
    let p = r.proc(slot);
    let vpid = p.vpid.load(Ordering::Acquire);
    state::MY_SLOT.store(slot, Ordering::Release);
    state::MY_VPID.store(vpid, Ordering::Release);
    state::me().vtid.set(vpid);
    if vpid == 1
        && p.exec_pending.load(Ordering::Acquire) == 0
        && r.control().next_gseq.load(Ordering::Acquire) <= 1
    {
        // The root process at its start: what it inherited is the outside
        // world (its stdout, a file), real in replay too.
        fds::adopt_inherited();
    } else {
        fds::rescan_after_exec();
    }
    signals::init();
    hooks::resolve_all();
    let record = state::mode() == Some(Mode::Record);
    if matches!(state::mode(), Some(Mode::Record) | Some(Mode::Replay)) {
        // One malloc arena: glibc creates a new arena (an mmap) for a thread
        // that finds the others busy, which depends on timing, not on the
        // log. A single arena makes the program's own allocation calls the
        // same in record and replay. Set here, not through the environment,
        // so the program sees the same environment either way.
        const M_ARENA_MAX: libc::c_int = -8;
        // SAFETY: mallopt takes two integers; called before the program
        // runs, in both modes alike.
        sud::allowed(|| unsafe { libc::mallopt(M_ARENA_MAX, 1) });
        procs::finish_exec(record);
    }
    state::READY.store(true, Ordering::Release);
    sud::enable_thread();
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = ferry_init;
