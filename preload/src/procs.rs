//! Processes: fork and the process-creating clones, exec, exit, wait, kill.
//!
//! Every process of the program has a slot in the region's process table and
//! a virtual pid. The parent allocates the child's slot before the fork,
//! under the ordering lock (record) or in its turn (replay), so the child
//! can never log before the parent's `Fork` record.

use crate::engine::{apply_outs, cstr_digest, emit_outs, outs, pre};
use crate::fds;
use crate::state::{
    self, consume, emit, emit_as, expect, lock, reg, unlock, Rec, MY_SLOT, MY_VPID,
};
use crate::sud;
use crate::sys::{self, raw};
use core::sync::atomic::Ordering;
use ferry_proto::calls::Call;
use ferry_proto::Kind;
use ferry_ring::{PROC_EXITED, PROC_FREE};
use libc::*;

const CLONE_VM_: usize = CLONE_VM as usize;
const CLONE_VFORK_: usize = CLONE_VFORK as usize;
const CLONE_THREAD_: usize = CLONE_THREAD as usize;

/// A fork, vfork, process-creating clone or clone3. `rec`: None in
/// passthrough mode (only the child's dispatch needs switching on).
///
/// A `clone` with `CLONE_VM | CLONE_VFORK` and a new stack (how libc's
/// `posix_spawn` and `system` start a child) becomes a plain fork whose
/// child resumes on the stack the caller gave: the child runs in a copy of
/// the memory instead of sharing it, which is what the caller's child code
/// (set up descriptors, then exec) needs.
pub fn fork_like(nr: i64, a: [usize; 6], ctx: *mut ucontext_t, rec: Option<bool>) -> isize {
    let (flags, stack, ptid, ctid, tls) = match nr {
        // libc falls back to clone when clone3 is missing.
        SYS_clone3 => return -(ENOSYS as isize),
        SYS_fork | SYS_vfork => (SIGCHLD as usize, 0, 0, 0, 0),
        _ => (a[0], a[1], a[2], a[3], a[4]),
    };
    if flags & CLONE_THREAD_ != 0 {
        // Threads are created through pthread_create, which the shim wraps;
        // a raw thread clone cannot be followed.
        if rec.is_none() {
            return raw(nr, a);
        }
        state::fail(b"a thread created by a raw clone() cannot be recorded; use pthread_create");
    }
    let mut new_flags = flags & !(CLONE_VM_ | CLONE_VFORK_);
    if new_flags & 0xff == 0 {
        new_flags |= SIGCHLD as usize;
    }
    let new_stack = if flags & CLONE_VM_ != 0 { stack } else { 0 };
    if new_stack != 0 && ctx.is_null() {
        // Only reachable from the SIGSYS handler, which passes its context.
        return -(ENOSYS as isize);
    }
    let run = || raw(SYS_clone, [new_flags, 0, ptid, ctid, tls, 0]);
    let parent_vpid = MY_VPID.load(Ordering::Relaxed);
    let parent_slot = MY_SLOT.load(Ordering::Relaxed);
    match rec {
        None => {
            // Passthrough: nothing is logged and pids stay real, but the
            // child needs a slot of its own (its shim finds itself there
            // after an exec).
            let r = reg();
            let vpid = r.control().next_vid.fetch_add(1, Ordering::AcqRel);
            let Some(slot) = alloc_slot(vpid, parent_vpid) else {
                return -(EAGAIN as isize);
            };
            fds::copy_kinds(parent_slot, slot);
            let ret = run();
            if ret == 0 {
                child(vpid, slot, ctx, new_stack);
            } else if ret < 0 {
                r.proc(slot).state.store(PROC_FREE, Ordering::Release);
            } else {
                r.proc(slot).real_pid.store(ret as u32, Ordering::Release);
            }
            ret
        }
        Some(true) => {
            lock();
            let r = reg();
            let vpid = r.control().next_vid.fetch_add(1, Ordering::AcqRel);
            let Some(slot) = alloc_slot(vpid, parent_vpid) else {
                unlock();
                return -(EAGAIN as isize);
            };
            fds::copy_kinds(parent_slot, slot);
            r.control().live_procs.fetch_add(1, Ordering::AcqRel);
            let ret = run();
            if ret == 0 {
                child(vpid, slot, ctx, new_stack);
                return 0;
            }
            let out = if ret < 0 {
                r.proc(slot).state.store(PROC_FREE, Ordering::Release);
                ret
            } else {
                r.proc(slot).real_pid.store(ret as u32, Ordering::Release);
                vpid as isize
            };
            emit(
                Rec {
                    kind: Kind::Call,
                    flags: 0,
                    nr: Call::Fork as u32,
                    ret: out as i64,
                    arg0: 0,
                    arg1: 0,
                },
                &[],
            );
            unlock();
            out
        }
        Some(false) => {
            let h = expect(Kind::Call, Call::Fork as u32, None, None);
            if h.ret < 0 {
                consume(&h);
                return h.ret as isize;
            }
            let vpid = h.ret as u32;
            let r = reg();
            // Keep the counter where the recording's was, for a replica
            // that goes live.
            r.control().next_vid.fetch_max(vpid + 1, Ordering::AcqRel);
            let Some(slot) = alloc_slot(vpid, parent_vpid) else {
                state::fail(b"the process table is full");
            };
            fds::copy_kinds(parent_slot, slot);
            let ret = run();
            if ret == 0 {
                child(vpid, slot, ctx, new_stack);
                return 0;
            }
            if ret < 0 {
                state::diverge_msg(&h, format_args!("fork failed in replay ({})", -ret));
            }
            r.proc(slot).real_pid.store(ret as u32, Ordering::Release);
            consume(&h);
            vpid as isize
        }
    }
}

/// A process-table slot for a new child. Slots are freed when their process
/// is reaped; those of processes reaped out of sight (by the kernel for a
/// parent ignoring SIGCHLD, or by ferry for orphans) are reclaimed here once
/// the process no longer exists.
fn alloc_slot(vpid: u32, parent_vpid: u32) -> Option<usize> {
    let r = reg();
    if let Some(s) = r.alloc_proc(vpid, parent_vpid) {
        return Some(s);
    }
    for s in 0..ferry_ring::MAX_PROCS {
        let p = r.proc(s);
        let pid = p.real_pid.load(Ordering::Acquire);
        if p.state.load(Ordering::Acquire) != PROC_FREE
            && pid != 0
            && raw(SYS_kill, [pid as usize, 0, 0, 0, 0, 0]) == -(ESRCH as isize)
        {
            let _ = p.state.compare_exchange(
                PROC_EXITED,
                PROC_FREE,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
            let _ = p.state.compare_exchange(
                ferry_ring::PROC_LIVE,
                PROC_FREE,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }
    r.alloc_proc(vpid, parent_vpid)
}

/// A child has been reaped: its slot can serve another process.
fn free_slot_of_vpid(vpid: i32) {
    let r = reg();
    if let Some(s) = r.slot_of_vpid(vpid as u32) {
        r.proc(s).state.store(PROC_FREE, Ordering::Release);
    }
}

/// Whether a wait status (wait4) or siginfo code (waitid) means the child is
/// gone (exited or killed), not merely stopped or continued.
fn reaped_status(nr: i64, a: &[usize; 6]) -> bool {
    if nr == SYS_wait4 {
        // SAFETY: the program's status word, filled by the kernel or the log.
        a[1] != 0
            && unsafe {
                let st = *(a[1] as *const i32);
                libc::WIFEXITED(st) || libc::WIFSIGNALED(st)
            }
    } else {
        // SAFETY: the program's siginfo_t; si_code at offset 8.
        a[2] != 0
            && a[3] as i32 & WNOWAIT == 0
            && matches!(
                unsafe { *((a[2] + 8) as *const i32) },
                CLD_EXITED | CLD_KILLED | CLD_DUMPED
            )
    }
}

/// In the new child: take up its identity and switch dispatch on again (a
/// child does not inherit it).
fn child(vpid: u32, slot: usize, ctx: *mut ucontext_t, new_stack: usize) {
    state::after_fork_child(vpid, slot);
    crate::signals::after_fork_child();
    reg()
        .proc(slot)
        .real_pid
        .store(sys::getpid(), Ordering::Release);
    if !ctx.is_null() && new_stack != 0 {
        // SAFETY: ctx is the SIGSYS handler's context of this (copied)
        // thread; resuming on the caller's stack is what the clone asked.
        unsafe { (*ctx).uc_mcontext.gregs[REG_RSP as usize] = new_stack as i64 };
    }
    sud::enable_thread();
}

/// `execve`, `execveat`. Record holds the ordering lock across the exec; the
/// new image logs the successful exec and releases it (see `finish_exec`).
pub fn exec(nr: i64, a: [usize; 6], rec: bool) -> isize {
    let path = if nr == SYS_execveat { a[1] } else { a[0] };
    let d = cstr_digest(path);
    let region = reg();
    let p = region.proc(MY_SLOT.load(Ordering::Relaxed));
    let me = state::vtid();
    if rec {
        lock();
        p.exec_digest.store(d as u32, Ordering::Relaxed);
        p.exec_vtid.store(me, Ordering::Relaxed);
        p.exec_started_ns.store(state::now_ns(), Ordering::Relaxed);
        p.exec_pending
            .store(ferry_ring::EXEC_PENDING, Ordering::Release);
        let ret = raw(nr, a);
        p.exec_pending
            .store(ferry_ring::EXEC_NONE, Ordering::Release);
        emit(
            Rec {
                kind: Kind::Exec,
                flags: 0,
                nr: nr as u32,
                ret: ret as i64,
                arg0: 0,
                arg1: d,
            },
            &[],
        );
        unlock();
        return ret;
    }
    let h = expect(Kind::Exec, nr as u32, None, Some(d));
    if h.ret < 0 {
        consume(&h);
        return h.ret as isize;
    }
    p.exec_vtid.store(me, Ordering::Relaxed);
    p.exec_started_ns.store(state::now_ns(), Ordering::Relaxed);
    p.exec_pending
        .store(ferry_ring::EXEC_PENDING, Ordering::Release);
    let ret = raw(nr, a);
    p.exec_pending
        .store(ferry_ring::EXEC_NONE, Ordering::Release);
    state::diverge_msg(
        &h,
        format_args!(
            "execve failed in replay (errno {}) but succeeded in the recording",
            -ret
        ),
    )
}

/// In a new image: if this process was in the middle of an exec, finish it.
pub fn finish_exec(record: bool) {
    let region = reg();
    let p = region.proc(MY_SLOT.load(Ordering::Relaxed));
    // Take the exec over before anyone decides this image has no shim.
    if p.exec_pending
        .compare_exchange(
            ferry_ring::EXEC_PENDING,
            ferry_ring::EXEC_CLAIMED,
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_err()
    {
        return;
    }
    let old = p.exec_vtid.load(Ordering::Relaxed);
    if record {
        // The previous image held the lock; it is ours now.
        state::adopt_lock();
        emit_as(
            Rec {
                kind: Kind::Exec,
                flags: 0,
                nr: SYS_execve as u32,
                ret: 0,
                arg0: 0,
                arg1: p.exec_digest.load(Ordering::Relaxed) as u64,
            },
            MY_VPID.load(Ordering::Relaxed),
            old,
            &[],
        );
        p.exec_pending
            .store(ferry_ring::EXEC_NONE, Ordering::Release);
        unlock();
    } else {
        let saved = state::vtid();
        state::me().vtid.set(old);
        let h = state::turn();
        if h.kind != Kind::Exec as u16 {
            state::diverge(&h, Kind::Exec, SYS_execve as u32, 0);
        }
        p.exec_pending
            .store(ferry_ring::EXEC_NONE, Ordering::Release);
        consume(&h);
        state::me().vtid.set(saved);
    }
}

/// `exit_group`: logged before the process goes.
pub fn exit_group(a: [usize; 6], rec: bool) -> isize {
    let r = reg();
    let slot = MY_SLOT.load(Ordering::Relaxed);
    if rec {
        emit(Rec::sys(SYS_exit_group, 0, a[0] as u64, 0), &[]);
    } else {
        let h = expect(
            Kind::Syscall,
            SYS_exit_group as u32,
            Some(a[0] as u64),
            None,
        );
        consume(&h);
    }
    r.proc(slot).state.store(PROC_EXITED, Ordering::Release);
    r.control().live_procs.fetch_sub(1, Ordering::AcqRel);
    raw(SYS_exit_group, a)
}

/// The real pid of virtual pid `vpid`, if it is one of the program's.
fn real_of(vpid: i32) -> Option<i32> {
    if vpid <= 0 {
        return None;
    }
    let r = reg();
    r.slot_of_vpid(vpid as u32)
        .map(|s| r.proc(s).real_pid.load(Ordering::Acquire) as i32)
}

/// The virtual pid of real pid `pid` (0 if unknown).
fn virt_of(pid: i32) -> i32 {
    let r = reg();
    (0..ferry_ring::MAX_PROCS)
        .find(|&s| {
            let p = r.proc(s);
            p.state.load(Ordering::Acquire) != PROC_FREE
                && p.real_pid.load(Ordering::Acquire) == pid as u32
        })
        .map(|s| r.proc(s).vpid.load(Ordering::Acquire) as i32)
        .unwrap_or(pid)
}

/// `wait4`, `waitid`: record translates pids; replay reaps the same child
/// for real (it exists in replay too) and returns the recorded status.
pub fn wait(nr: i64, a: [usize; 6], rec: bool) -> isize {
    let mut b = a;
    if nr == SYS_wait4 {
        if let Some(real) = real_of(a[0] as i32) {
            b[0] = real as usize;
        }
    } else if a[0] as u32 == P_PID {
        if let Some(real) = real_of(a[1] as i32) {
            b[1] = real as usize;
        }
    }
    let p = pre(nr, &a);
    if rec {
        let mut ret = raw(nr, b);
        if nr == SYS_wait4 && ret > 0 {
            ret = virt_of(ret as i32) as isize;
        }
        if nr == SYS_waitid && ret == 0 && a[2] != 0 {
            // SAFETY: the kernel filled the program's siginfo_t; si_pid is
            // the i32 at offset 16.
            unsafe {
                let sp = (a[2] + 16) as *mut i32;
                if *sp > 0 {
                    *sp = virt_of(*sp);
                }
            }
        }
        emit_outs(Rec::sys(nr, ret, a[0] as u64, 0), &outs(nr, &a, ret, p));
        free_if_reaped(nr, &a, ret);
        return ret;
    }
    let h = expect(Kind::Syscall, nr as u32, Some(a[0] as u64), None);
    let ret = h.ret as isize;
    apply_outs(&h, &outs(nr, &a, ret, p));
    // Which child did the recording reap?
    let reaped = if nr == SYS_wait4 {
        ret as i32
    } else if ret == 0 && a[2] != 0 {
        // SAFETY: siginfo_t just filled from the log.
        unsafe { *((a[2] + 16) as *const i32) }
    } else {
        0
    };
    // A child the recording found killed by a signal may, in replay, be
    // waiting for a turn that never comes (its killer was outside the
    // program): all its records are replayed by now, so end it.
    let killed = if nr == SYS_wait4 {
        // SAFETY: the program's status word, just filled from the log.
        a[1] != 0 && unsafe { libc::WIFSIGNALED(*(a[1] as *const i32)) }
    } else {
        // SAFETY: siginfo_t just filled from the log; si_code at offset 8.
        a[2] != 0
            && matches!(
                unsafe { *((a[2] + 8) as *const i32) },
                CLD_KILLED | CLD_DUMPED
            )
    };
    if reaped > 0 {
        if let Some(real) = real_of(reaped) {
            if killed {
                raw(SYS_kill, [real as usize, SIGKILL as usize, 0, 0, 0, 0]);
            }
            let opts = if nr == SYS_wait4 { a[2] } else { a[3] } & !(WNOHANG as usize);
            let mut st = 0i32;
            raw(
                SYS_wait4,
                [
                    real as usize,
                    &mut st as *mut i32 as usize,
                    opts | __WALL as usize,
                    0,
                    0,
                    0,
                ],
            );
        }
    }
    consume(&h);
    free_if_reaped(nr, &a, ret);
    ret
}

/// After a wait that returned `ret` (virtual pids): free the reaped child's
/// slot.
fn free_if_reaped(nr: i64, a: &[usize; 6], ret: isize) {
    let vpid = if nr == SYS_wait4 {
        ret as i32
    } else if ret == 0 && a[2] != 0 {
        // SAFETY: siginfo_t filled by the kernel or the log; si_pid at 16.
        unsafe { *((a[2] + 16) as *const i32) }
    } else {
        0
    };
    if vpid > 0 && reaped_status(nr, a) {
        free_slot_of_vpid(vpid);
    }
}

/// Passthrough `wait4`/`waitid`: real pids; free the reaped child's slot.
pub fn wait_passthrough(nr: i64, a: [usize; 6]) -> isize {
    let ret = raw(nr, a);
    let pid = if nr == SYS_wait4 {
        ret as i32
    } else if ret == 0 && a[2] != 0 {
        // SAFETY: siginfo_t just filled by the kernel; si_pid at 16.
        unsafe { *((a[2] + 16) as *const i32) }
    } else {
        0
    };
    if pid > 0 && reaped_status(nr, &a) {
        let r = reg();
        if let Some(s) = r.slot_of_real_pid(pid as u32) {
            r.proc(s).state.store(PROC_FREE, Ordering::Release);
        }
    }
    ret
}

/// `kill` and friends: record translates the target; replay repeats only
/// the signals the log cannot stand in for (SIGKILL, SIGSTOP, SIGCONT: the
/// target must really stop or go); handled signals come from the log.
pub fn kill(nr: i64, a: [usize; 6], rec: bool) -> isize {
    let mut b = a;
    let sig = match nr {
        SYS_tgkill | SYS_rt_tgsigqueueinfo => a[2],
        _ => a[1],
    } as i32;
    if matches!(
        nr,
        SYS_kill | SYS_tgkill | SYS_rt_sigqueueinfo | SYS_rt_tgsigqueueinfo
    ) {
        if let Some(real) = real_of(a[0] as i32) {
            b[0] = real as usize;
            if nr == SYS_tgkill && a[1] == a[0] {
                b[1] = real as usize;
            }
        }
    } else if nr == SYS_tkill {
        if let Some(real) = real_of(a[0] as i32) {
            b[0] = real as usize;
        }
    }
    // The target may log the signal's delivery before this call's record.
    state::before(nr, rec);
    if rec {
        let ret = raw(nr, b);
        emit(Rec::sys(nr, ret, a[0] as u64, sig as u64), &[]);
        return ret;
    }
    let h = expect(
        Kind::Syscall,
        nr as u32,
        Some(a[0] as u64),
        Some(sig as u64),
    );
    if matches!(sig, SIGKILL | SIGSTOP | SIGCONT) && h.ret == 0 {
        raw(nr, b);
    }
    consume(&h);
    h.ret as isize
}
