//! What record and replay do with each system call.
//!
//! Every call has a class (DESIGN §3):
//! - *input* (`logged`): record runs it and logs its result and the bytes the
//!   kernel wrote into the program's buffers; replay returns them and never
//!   runs it.
//! - *output* (`write_like`): record logs a digest of the bytes and runs it;
//!   replay checks the digest and runs it only on a real descriptor (the
//!   program's stdout, a file), never on a socket or an internal pipe.
//! - *local* (`local`): runs in both; replay returns the recorded result, with
//!   addresses and descriptor numbers forced to the recorded ones.
//! - *pass*: runs in both, not logged (futexes, signal masks, thread set-up).
//!
//! Process creation, exec, waiting and signals have their own modules.

use crate::state::{self, consume, emit, expect, lock, mode, reg, unlock, Rec, MY_SLOT, MY_VPID};
use crate::sys::raw;
use crate::{fds, live, procs, signals};
use core::sync::atomic::Ordering;
use ferry_proto::{checksum, Kind, MAX_PAYLOAD};
use ferry_ring::{Mode, FD_PLACEHOLDER, FD_REAL, REGION_FD};
use libc::*;

/// Largest data a single read may return under the shim (a shorter read is
/// always allowed), so that one record's payload stays within `MAX_PAYLOAD`.
pub const MAX_READ: usize = MAX_PAYLOAD - 4096;

/// An output buffer the kernel fills: plain memory, or an iovec array
/// receiving `total` bytes in order.
#[derive(Clone, Copy)]
pub enum Buf {
    Mem(usize, usize),
    Iov(usize, usize, usize),
}

/// Up to six output buffers.
pub struct Outs {
    pub bufs: [Buf; 6],
    pub n: usize,
}

impl Outs {
    fn new() -> Outs {
        Outs {
            bufs: [Buf::Mem(0, 0); 6],
            n: 0,
        }
    }
    fn mem(&mut self, ptr: usize, len: usize) {
        if ptr != 0 {
            self.bufs[self.n] = Buf::Mem(ptr, len);
            self.n += 1;
        }
    }
    fn iov(&mut self, iov: usize, cnt: usize, total: usize) {
        self.bufs[self.n] = Buf::Iov(iov, cnt, total);
        self.n += 1;
    }
}

fn rd_u32(p: usize) -> u32 {
    if p == 0 {
        return 0;
    }
    // SAFETY: `p` is a value-result length the program passed to the call
    // (a socklen_t), valid for reading.
    unsafe { core::ptr::read_unaligned(p as *const u32) }
}

fn rd_usize(p: usize) -> usize {
    if p == 0 {
        return 0;
    }
    // SAFETY: as rd_u32, for a size_t field of a msghdr the program passed.
    unsafe { core::ptr::read_unaligned(p as *const usize) }
}

/// Value-result lengths the program passed in, read before the call.
#[derive(Clone, Copy, Default)]
pub struct Pre {
    a: usize,
    b: usize,
}

/// Read the in-lengths of value-result arguments.
pub fn pre(nr: i64, a: &[usize; 6]) -> Pre {
    match nr {
        SYS_accept | SYS_accept4 | SYS_getsockname | SYS_getpeername => Pre {
            a: rd_u32(a[2]) as usize,
            b: 0,
        },
        SYS_recvfrom => Pre {
            a: rd_u32(a[5]) as usize,
            b: 0,
        },
        SYS_getsockopt => Pre {
            a: rd_u32(a[4]) as usize,
            b: 0,
        },
        SYS_recvmsg => Pre {
            a: rd_u32(a[1] + 8) as usize,
            b: rd_usize(a[1] + 40),
        },
        _ => Pre::default(),
    }
}

/// The buffers the kernel filled for call `nr` that returned `ret`.
pub fn outs(nr: i64, a: &[usize; 6], ret: isize, p: Pre) -> Outs {
    let mut o = Outs::new();
    let ok = ret >= 0;
    let r = ret.max(0) as usize;
    match nr {
        SYS_read | SYS_pread64 if ok => o.mem(a[1], r),
        SYS_readv | SYS_preadv | SYS_preadv2 if ok => o.iov(a[1], a[2], r),
        SYS_recvfrom if ok => {
            o.mem(a[1], r);
            if a[4] != 0 && a[5] != 0 {
                o.mem(a[5], 4);
                o.mem(a[4], (rd_u32(a[5]) as usize).min(p.a));
            }
        }
        SYS_recvmsg if ok => {
            let m = a[1];
            o.iov(rd_usize(m + 16), rd_usize(m + 24), r);
            o.mem(m + 8, 4);
            o.mem(rd_usize(m), (rd_u32(m + 8) as usize).min(p.a));
            o.mem(m + 40, 8);
            o.mem(rd_usize(m + 32), rd_usize(m + 40).min(p.b));
            o.mem(m + 48, 4);
        }
        SYS_accept | SYS_accept4 | SYS_getsockname | SYS_getpeername
            if ok && a[1] != 0 && a[2] != 0 =>
        {
            o.mem(a[2], 4);
            o.mem(a[1], (rd_u32(a[2]) as usize).min(p.a));
        }
        SYS_getsockopt if ok => {
            o.mem(a[4], 4);
            o.mem(a[3], (rd_u32(a[4]) as usize).min(p.a));
        }
        SYS_fstat | SYS_stat | SYS_lstat if ok => o.mem(a[1], 144),
        SYS_newfstatat if ok => o.mem(a[2], 144),
        SYS_statx if ok => o.mem(a[4], 256),
        SYS_statfs | SYS_fstatfs if ok => o.mem(a[1], 120),
        SYS_poll | SYS_ppoll if ok => o.mem(a[0], a[1] * 8),
        SYS_select | SYS_pselect6 if ok => {
            let sz = a[0].div_ceil(64) * 8;
            o.mem(a[1], sz);
            o.mem(a[2], sz);
            o.mem(a[3], sz);
            o.mem(a[4], 16);
        }
        SYS_epoll_wait | SYS_epoll_pwait | SYS_epoll_pwait2 if ok => o.mem(a[1], r * 12),
        SYS_clock_gettime | SYS_clock_getres if ok => o.mem(a[1], 16),
        SYS_gettimeofday if ok => {
            o.mem(a[0], 16);
            o.mem(a[1], 8);
        }
        SYS_time => o.mem(a[0], 8),
        SYS_nanosleep => o.mem(a[1], 16),
        SYS_clock_nanosleep => o.mem(a[3], 16),
        SYS_getrandom if ok => o.mem(a[0], r),
        SYS_uname if ok => o.mem(a[0], 390),
        SYS_sysinfo if ok => o.mem(a[0], 112),
        SYS_times => o.mem(a[0], 32),
        SYS_getrusage if ok => o.mem(a[1], 144),
        SYS_getrlimit if ok => o.mem(a[1], 16),
        SYS_prlimit64 if ok => o.mem(a[3], 16),
        SYS_getcwd if ok => o.mem(a[0], r),
        SYS_readlink if ok => o.mem(a[1], r),
        SYS_readlinkat if ok => o.mem(a[2], r),
        SYS_getdents | SYS_getdents64 if ok => o.mem(a[1], r),
        SYS_sched_getaffinity if ok => o.mem(a[2], r),
        SYS_getcpu if ok => {
            o.mem(a[0], 4);
            o.mem(a[1], 4);
        }
        SYS_getitimer if ok => o.mem(a[1], 32),
        SYS_setitimer if ok => o.mem(a[2], 32),
        SYS_timer_create if ok => o.mem(a[2], 4),
        SYS_timer_settime if ok => o.mem(a[3], 32),
        SYS_timer_gettime if ok => o.mem(a[1], 32),
        SYS_timerfd_settime if ok => o.mem(a[3], 32),
        SYS_timerfd_gettime if ok => o.mem(a[1], 32),
        SYS_rt_sigpending if ok => o.mem(a[0], 8),
        SYS_rt_sigtimedwait if ok => o.mem(a[1], 128),
        SYS_getgroups if ok && a[0] > 0 => o.mem(a[1], r * 4),
        SYS_getresuid | SYS_getresgid if ok => {
            o.mem(a[0], 4);
            o.mem(a[1], 4);
            o.mem(a[2], 4);
        }
        SYS_ioctl if ok => match a[1] as u64 {
            0x5401 => o.mem(a[2], 60),                  // TCGETS
            0x5413 => o.mem(a[2], 8),                   // TIOCGWINSZ
            0x541B | 0x540F | 0x5429 => o.mem(a[2], 4), // FIONREAD, TIOCGPGRP, TIOCGSID
            _ => {}
        },
        SYS_fcntl if ok && a[1] as i32 == F_GETLK => o.mem(a[2], 32),
        SYS_wait4 => {
            o.mem(a[1], 4);
            o.mem(a[3], 144);
        }
        SYS_waitid => {
            o.mem(a[2], 128);
            o.mem(a[4], 144);
        }
        SYS_pipe | SYS_pipe2 if ok => o.mem(a[0], 8),
        SYS_socketpair if ok => o.mem(a[3], 8),
        _ => {}
    }
    o
}

/// Calls whose first argument is a descriptor (compared in replay).
fn fd_first(nr: i64) -> bool {
    matches!(
        nr,
        SYS_read
            | SYS_write
            | SYS_pread64
            | SYS_pwrite64
            | SYS_readv
            | SYS_writev
            | SYS_preadv
            | SYS_pwritev
            | SYS_preadv2
            | SYS_pwritev2
            | SYS_recvfrom
            | SYS_recvmsg
            | SYS_sendto
            | SYS_sendmsg
            | SYS_fstat
            | SYS_lseek
            | SYS_ioctl
            | SYS_fcntl
            | SYS_close
            | SYS_dup
            | SYS_dup2
            | SYS_dup3
            | SYS_accept
            | SYS_accept4
            | SYS_bind
            | SYS_listen
            | SYS_connect
            | SYS_shutdown
            | SYS_getsockname
            | SYS_getpeername
            | SYS_getsockopt
            | SYS_setsockopt
            | SYS_epoll_ctl
            | SYS_epoll_wait
            | SYS_epoll_pwait
            | SYS_getdents64
            | SYS_fsync
            | SYS_fdatasync
            | SYS_ftruncate
            | SYS_clock_gettime
            | SYS_exit_group
    )
}

fn check0(nr: i64, a: &[usize; 6]) -> Option<u64> {
    fd_first(nr).then_some(a[0] as u64)
}

/// Emit a record whose payload is the buffers `o`, each as a u32 length
/// and the bytes.
pub fn emit_outs(rec: Rec, o: &Outs) {
    if let (1, Buf::Mem(p, len)) = (o.n, o.bufs[0]) {
        // The most common case by far (a read, a clock, getrandom): one
        // buffer.
        let l = (len as u32).to_le_bytes();
        // SAFETY: the kernel just filled `len` bytes at `p`, a buffer the
        // program passed to the call.
        let data = unsafe { core::slice::from_raw_parts(p as *const u8, len) };
        emit(rec, &[&l, data]);
        return;
    }
    let mut lens = [[0u8; 4]; 6];
    let mut iovs = 0;
    for (l, b) in lens.iter_mut().zip(&o.bufs[..o.n]) {
        let n = match *b {
            Buf::Mem(_, len) => len,
            Buf::Iov(_, cnt, total) => {
                iovs += cnt;
                total
            }
        };
        *l = (n as u32).to_le_bytes();
    }
    if iovs == 0 {
        // The common case: a length and one buffer per output, no iovecs.
        let mut parts: [&[u8]; 12] = [&[]; 12];
        for (i, (l, b)) in lens.iter().zip(&o.bufs[..o.n]).enumerate() {
            let Buf::Mem(p, len) = *b else { unreachable!() };
            parts[2 * i] = l;
            // SAFETY: the kernel just filled `len` bytes at `p`, a buffer
            // the program passed to the call.
            parts[2 * i + 1] = unsafe { core::slice::from_raw_parts(p as *const u8, len) };
        }
        emit(rec, &parts[..2 * o.n]);
        return;
    }
    const MAXP: usize = 80;
    let mut parts: [&[u8]; MAXP] = [&[]; MAXP];
    let mut n = 0;
    for (l, b) in lens.iter().zip(&o.bufs[..o.n]) {
        parts[n] = l;
        n += 1;
        match *b {
            Buf::Mem(p, len) => {
                // SAFETY: as above.
                parts[n] = unsafe { core::slice::from_raw_parts(p as *const u8, len) };
                n += 1;
            }
            Buf::Iov(iov, cnt, total) => {
                let mut left = total;
                for k in 0..cnt {
                    if left == 0 {
                        break;
                    }
                    if n >= MAXP {
                        state::fail(b"a vectored read with too many buffers");
                    }
                    // SAFETY: `iov` is the program's iovec array of `cnt` entries.
                    let v = unsafe { core::ptr::read_unaligned((iov as *const iovec).add(k)) };
                    let take = v.iov_len.min(left);
                    // SAFETY: the kernel filled `take` bytes of this iovec.
                    parts[n] =
                        unsafe { core::slice::from_raw_parts(v.iov_base as *const u8, take) };
                    n += 1;
                    left -= take;
                }
            }
        }
    }
    emit(rec, &parts[..n]);
}

/// Replay: fill the buffers `o` from the payload of `h`.
pub fn apply_outs(h: &ferry_proto::RecordHeader, o: &Outs) {
    let mut i = 0;
    state::chunks(h, |off, len| {
        if i >= o.n {
            state::diverge_msg(
                h,
                format_args!("the recorded call filled more buffers than the program passed"),
            );
        }
        match o.bufs[i] {
            Buf::Mem(p, cap) => {
                if len > cap {
                    state::diverge_msg(
                        h,
                        format_args!("recorded {} bytes for a buffer of {}", len, cap),
                    );
                }
                state::payload_to(h, off, p as *mut u8, len);
            }
            Buf::Iov(iov, cnt, _) => {
                let mut left = len;
                let mut at = off;
                for k in 0..cnt {
                    if left == 0 {
                        break;
                    }
                    // SAFETY: `iov` is the program's iovec array of `cnt` entries.
                    let v = unsafe { core::ptr::read_unaligned((iov as *const iovec).add(k)) };
                    let take = v.iov_len.min(left);
                    state::payload_to(h, at, v.iov_base as *mut u8, take);
                    at += take;
                    left -= take;
                }
                if left != 0 {
                    state::diverge_msg(
                        h,
                        format_args!("recorded more bytes than the buffers hold"),
                    );
                }
            }
        }
        i += 1;
    });
}

/// The entry point for every intercepted system call, from the SIGSYS
/// handler (`ctx` its context) or an exported wrapper (`ctx` null). Runs
/// with the re-entrancy guard set by the caller.
pub fn dispatch(nr: i64, a: [usize; 6], ctx: *mut ucontext_t) -> isize {
    let Some(m) = mode() else { return raw(nr, a) };
    if state::vtid() == 0 {
        return raw(nr, a);
    }
    if touches_region_fd(nr, &a) {
        return -(EBADF as isize);
    }
    if m == Mode::Passthrough {
        return passthrough(nr, a, ctx);
    }
    let mut rec = m == Mode::Record;
    if !rec && waits_for_record(nr) && state::live_replica() && state::live_at_entry() {
        // A live replica went live while this thread waited for its turn:
        // this call is the first the new primary runs for real.
        rec = true;
    }
    if unlogged(nr) {
        // No record, so no delivery point either: replay could not deliver
        // a signal here (it delivers at the thread's logged calls only).
        return call(nr, a, ctx, rec);
    }
    loop {
        signals::on_entry();
        let ret = call(nr, a, ctx, rec);
        signals::on_exit();
        if ret == -(EINTR as isize) && signals::take_restart() && restartable(nr) {
            continue;
        }
        return ret;
    }
}

/// Calls that never leave a record: identity answered from the process
/// table, and the thread's own machinery (see `call`).
fn unlogged(nr: i64) -> bool {
    matches!(
        nr,
        SYS_getpid
            | SYS_gettid
            | SYS_futex
            | SYS_sched_yield
            | SYS_set_robust_list
            | SYS_get_robust_list
            | SYS_rseq
            | SYS_set_tid_address
            | SYS_arch_prctl
            | SYS_sigaltstack
            | SYS_exit
            | SYS_membarrier
            | SYS_restart_syscall
            | SYS_rt_sigreturn
            | SYS_futex_waitv
            | SYS_rt_sigaction
            | SYS_rt_sigprocmask
    )
}

/// Calls that leave a record in every case, so a replay thread may wait for
/// it at the start of the call (those without one would wait for the
/// thread's next call instead).
fn waits_for_record(nr: i64) -> bool {
    !unlogged(nr)
        && !matches!(
            nr,
            SYS_getppid
                | SYS_recvmmsg
                | SYS_sendmmsg
                | SYS_io_uring_setup
                | SYS_tee
                | SYS_vmsplice
                | SYS_sendfile
                | SYS_copy_file_range
                | SYS_splice
        )
}

fn touches_region_fd(nr: i64, a: &[usize; 6]) -> bool {
    let r = REGION_FD as usize;
    match nr {
        SYS_dup2 | SYS_dup3 => a[0] == r || a[1] == r,
        SYS_close_range => false,
        _ => fd_first(nr) && a[0] == r,
    }
}

fn restartable(nr: i64) -> bool {
    matches!(
        nr,
        SYS_read
            | SYS_readv
            | SYS_write
            | SYS_writev
            | SYS_pread64
            | SYS_pwrite64
            | SYS_recvfrom
            | SYS_recvmsg
            | SYS_sendto
            | SYS_sendmsg
            | SYS_accept
            | SYS_accept4
            | SYS_wait4
            | SYS_waitid
            | SYS_open
            | SYS_openat
            | SYS_ioctl
            | SYS_flock
            | SYS_fcntl
    )
}

fn passthrough(nr: i64, a: [usize; 6], ctx: *mut ucontext_t) -> isize {
    if crate::ckpt::shown_pid().is_some() {
        if let Some(r) = restored_ids(nr, a) {
            return r;
        }
    }
    match nr {
        SYS_clone | SYS_fork | SYS_vfork | SYS_clone3 => procs::fork_like(nr, a, ctx, None),
        SYS_rt_sigaction => signals::sigaction(a),
        SYS_rt_sigprocmask => signals::sigprocmask(a, ctx),
        SYS_close_range => fds::close_range_raw(a),
        SYS_wait4 | SYS_waitid => procs::wait_passthrough(nr, a),
        SYS_socketpair => {
            let r = raw(nr, a);
            if r == 0 {
                crate::ckpt_fd::note_socketpair(a[3]);
            }
            r
        }
        _ => raw(nr, a),
    }
}

/// A process resumed from a checkpoint runs under new real ids; the
/// program keeps the ones it had: they are shown to it, and translated
/// where it names them.
fn restored_ids(nr: i64, a: [usize; 6]) -> Option<isize> {
    use crate::ckpt::{real_id, shown_pid, shown_tid};
    let real = |v: usize| real_id(v as i32) as usize;
    Some(match nr {
        SYS_getpid => shown_pid()? as isize,
        SYS_gettid => shown_tid() as isize,
        SYS_set_tid_address => {
            raw(nr, a);
            shown_tid() as isize
        }
        SYS_kill | SYS_tkill | SYS_rt_sigqueueinfo => {
            raw(nr, [real(a[0]), a[1], a[2], a[3], a[4], a[5]])
        }
        SYS_tgkill | SYS_rt_tgsigqueueinfo => {
            raw(nr, [real(a[0]), real(a[1]), a[2], a[3], a[4], a[5]])
        }
        _ => return None,
    })
}

/// Record (`rec`) or replay one call, keeping what a takeover needs to
/// know about sockets and pipes (see `live`).
fn call(nr: i64, a: [usize; 6], ctx: *mut ucontext_t, rec: bool) -> isize {
    let ret = call_class(nr, a, ctx, rec);
    if live::tracks(nr) {
        live::note(nr, &a, ret, rec);
    }
    ret
}

fn call_class(nr: i64, a: [usize; 6], ctx: *mut ucontext_t, rec: bool) -> isize {
    match nr {
        // Identity: virtual, from the process table.
        SYS_getpid => MY_VPID.load(Ordering::Relaxed) as isize,
        SYS_gettid => state::vtid() as isize,
        SYS_getppid => {
            let p = reg()
                .proc(MY_SLOT.load(Ordering::Relaxed))
                .parent_vpid
                .load(Ordering::Relaxed);
            if p != 0 {
                p as isize
            } else {
                logged(nr, a, rec)
            }
        }
        // Pass: the thread's own machinery, deterministic by construction.
        SYS_futex | SYS_sched_yield | SYS_set_robust_list | SYS_get_robust_list | SYS_rseq
        | SYS_set_tid_address | SYS_arch_prctl | SYS_sigaltstack | SYS_exit | SYS_membarrier
        | SYS_restart_syscall | SYS_rt_sigreturn | SYS_futex_waitv => raw(nr, a),
        SYS_rt_sigaction => signals::sigaction(a),
        SYS_rt_sigprocmask => signals::sigprocmask(a, ctx),
        // Unsupported calls: refused identically in both modes (libc and
        // most programs fall back to the single-message calls, to read and
        // write).
        SYS_recvmmsg | SYS_sendmmsg | SYS_io_uring_setup | SYS_tee | SYS_vmsplice => {
            -(ENOSYS as isize)
        }
        // Kernel-side copies: their data never passes through the program,
        // so they become a logged read and a write.
        SYS_sendfile | SYS_copy_file_range | SYS_splice => transfer(nr, a, ctx, rec),
        // Processes.
        SYS_clone | SYS_fork | SYS_vfork | SYS_clone3 => procs::fork_like(nr, a, ctx, Some(rec)),
        SYS_execve | SYS_execveat => procs::exec(nr, a, rec),
        SYS_exit_group => procs::exit_group(a, rec),
        SYS_wait4 | SYS_waitid => procs::wait(nr, a, rec),
        SYS_kill | SYS_tkill | SYS_tgkill | SYS_rt_sigqueueinfo | SYS_rt_tgsigqueueinfo => {
            procs::kill(nr, a, rec)
        }
        // Reads: inputs, with the data.
        SYS_read | SYS_pread64 | SYS_readv | SYS_preadv | SYS_preadv2 | SYS_recvfrom
        | SYS_recvmsg => read_like(nr, a, rec),
        // Writes: outputs.
        SYS_write | SYS_pwrite64 | SYS_writev | SYS_pwritev | SYS_pwritev2 | SYS_sendto
        | SYS_sendmsg => write_like(nr, a, rec),
        // Descriptors.
        SYS_open | SYS_openat | SYS_creat | SYS_openat2 => fds::open(nr, a, rec),
        SYS_socket | SYS_eventfd | SYS_eventfd2 | SYS_epoll_create | SYS_epoll_create1
        | SYS_timerfd_create | SYS_signalfd | SYS_signalfd4 | SYS_inotify_init
        | SYS_inotify_init1 | SYS_userfaultfd | SYS_pidfd_open | SYS_memfd_create => {
            fds::create(nr, a, rec)
        }
        SYS_pipe | SYS_pipe2 | SYS_socketpair => fds::pair(nr, a, rec),
        SYS_dup | SYS_dup2 | SYS_dup3 => fds::dup(nr, a, rec),
        SYS_fcntl if matches!(a[1] as i32, F_DUPFD | F_DUPFD_CLOEXEC) => fds::dup(nr, a, rec),
        SYS_close => fds::close(a, rec),
        SYS_close_range => fds::close_range(a, rec),
        SYS_accept | SYS_accept4 => fds::accept(nr, a, rec),
        // Memory: local, at the recorded addresses.
        SYS_mmap => mmap(a, rec),
        SYS_mremap => mremap(a, rec),
        SYS_brk => brk(a, rec),
        SYS_munmap | SYS_mprotect | SYS_madvise | SYS_mlock | SYS_munlock | SYS_mlock2
        | SYS_msync | SYS_pkey_mprotect => local(nr, a, rec),
        // A connection is an output: it waits for the gate.
        SYS_connect => {
            let g = state::before(nr, rec);
            if rec {
                state::gate(g);
            }
            logged(nr, a, rec)
        }
        // Inputs without data, and network calls that must not run in replay.
        SYS_bind
        | SYS_listen
        | SYS_shutdown
        | SYS_setsockopt
        | SYS_epoll_ctl
        | SYS_alarm
        | SYS_timer_delete
        | SYS_timer_getoverrun
        | SYS_access
        | SYS_faccessat
        | SYS_faccessat2
        | SYS_getuid
        | SYS_geteuid
        | SYS_getgid
        | SYS_getegid
        | SYS_getpgrp
        | SYS_getpgid
        | SYS_getsid
        | SYS_pause
        | SYS_rt_sigsuspend
        | SYS_inotify_add_watch
        | SYS_inotify_rm_watch
        | SYS_getpriority
        | SYS_capget
        | SYS_sched_getscheduler
        | SYS_sched_getparam
        | SYS_lseek => logged(nr, a, rec),
        SYS_prlimit64 if a[2] == 0 => logged(nr, a, rec),
        SYS_fcntl if a[1] as i32 == F_GETLK || a[1] as i32 == F_GETFL || a[1] as i32 == F_GETFD => {
            logged(nr, a, rec)
        }
        _ if has_outs(nr) => logged(nr, a, rec),
        // Everything else is local: run again in replay.
        _ => local(nr, a, rec),
    }
}

/// `sendfile`, `copy_file_range`, `splice` as a read (an input, logged with
/// its data) followed by a write (an output), through a bounce buffer. A
/// shorter transfer than asked is allowed for all three.
fn transfer(nr: i64, a: [usize; 6], ctx: *mut ucontext_t, rec: bool) -> isize {
    let (fin, off_in, fout, off_out, len) = match nr {
        SYS_sendfile => (a[1], a[2], a[0], 0, a[3]),
        _ => (a[0], a[1], a[2], a[3], a[4]),
    };
    let mut buf = [0u8; 16384];
    let n = len.min(buf.len());
    let p = buf.as_mut_ptr() as usize;
    let rd_off = |o: usize| -> usize {
        // SAFETY: the program passed a loff_t pointer for this offset.
        unsafe { core::ptr::read_unaligned(o as *const i64) as usize }
    };
    let add_off = |o: usize, d: isize| {
        // SAFETY: as above.
        unsafe {
            core::ptr::write_unaligned(
                o as *mut i64,
                core::ptr::read_unaligned(o as *const i64) + d as i64,
            )
        };
    };
    let r = if off_in != 0 {
        call(SYS_pread64, [fin, p, n, rd_off(off_in), 0, 0], ctx, rec)
    } else {
        call(SYS_read, [fin, p, n, 0, 0, 0], ctx, rec)
    };
    if r <= 0 {
        return r;
    }
    if off_in != 0 {
        add_off(off_in, r);
    }
    let w = if off_out != 0 {
        call(
            SYS_pwrite64,
            [fout, p, r as usize, rd_off(off_out), 0, 0],
            ctx,
            rec,
        )
    } else {
        call(SYS_write, [fout, p, r as usize, 0, 0, 0], ctx, rec)
    };
    if w > 0 && off_out != 0 {
        add_off(off_out, w);
    }
    w
}

/// Calls whose results are inputs with data (see `outs`).
fn has_outs(nr: i64) -> bool {
    matches!(
        nr,
        SYS_fstat
            | SYS_stat
            | SYS_lstat
            | SYS_newfstatat
            | SYS_statx
            | SYS_statfs
            | SYS_fstatfs
            | SYS_poll
            | SYS_ppoll
            | SYS_select
            | SYS_pselect6
            | SYS_epoll_wait
            | SYS_epoll_pwait
            | SYS_epoll_pwait2
            | SYS_clock_gettime
            | SYS_clock_getres
            | SYS_gettimeofday
            | SYS_time
            | SYS_nanosleep
            | SYS_clock_nanosleep
            | SYS_getrandom
            | SYS_uname
            | SYS_sysinfo
            | SYS_times
            | SYS_getrusage
            | SYS_getrlimit
            | SYS_getcwd
            | SYS_readlink
            | SYS_readlinkat
            | SYS_getdents
            | SYS_getdents64
            | SYS_sched_getaffinity
            | SYS_getcpu
            | SYS_getitimer
            | SYS_setitimer
            | SYS_timer_create
            | SYS_timer_settime
            | SYS_timer_gettime
            | SYS_timerfd_settime
            | SYS_timerfd_gettime
            | SYS_rt_sigpending
            | SYS_rt_sigtimedwait
            | SYS_getgroups
            | SYS_getresuid
            | SYS_getresgid
            | SYS_ioctl
            | SYS_getsockname
            | SYS_getpeername
            | SYS_getsockopt
    )
}

/// An input: record runs `exec` (the real call) and logs result and data;
/// replay answers from the log.
pub fn logged_with(nr: i64, a: [usize; 6], rec: bool, exec: impl FnOnce() -> isize) -> isize {
    let p = pre(nr, &a);
    if rec {
        let ret = exec();
        emit_outs(Rec::sys(nr, ret, a[0] as u64, 0), &outs(nr, &a, ret, p));
        ret
    } else {
        let h = expect(Kind::Syscall, nr as u32, check0(nr, &a), None);
        let ret = h.ret as isize;
        apply_outs(&h, &outs(nr, &a, ret, p));
        consume(&h);
        ret
    }
}

fn logged(nr: i64, a: [usize; 6], rec: bool) -> isize {
    logged_with(nr, a, rec, || raw(nr, a))
}

fn read_like(nr: i64, a: [usize; 6], rec: bool) -> isize {
    let mut a = a;
    match nr {
        SYS_read | SYS_pread64 | SYS_recvfrom => a[2] = a[2].min(MAX_READ),
        _ => {}
    }
    // Vectored reads larger than MAX_READ are cut short by limiting the
    // count of buffers; the kernel may return less anyway.
    if matches!(nr, SYS_readv | SYS_preadv | SYS_preadv2) {
        let mut total = 0usize;
        let mut k = 0;
        while k < a[2] && k < 64 {
            // SAFETY: the program's iovec array of a[2] entries.
            let v = unsafe { core::ptr::read_unaligned((a[1] as *const iovec).add(k)) };
            if total + v.iov_len > MAX_READ && k > 0 {
                break;
            }
            total += v.iov_len;
            k += 1;
        }
        a[2] = k.max(1);
    }
    if nr == SYS_recvmsg {
        return recvmsg(a, rec);
    }
    let ret = logged(nr, a, rec);
    if !rec && ret > 0 && live::mirrored(a[0] as i32) {
        live::mirror_drain(a[0] as i32, ret as usize);
    }
    if !rec && ret > 0 && live::timer(a[0] as i32) {
        live::drain_timer(a[0] as i32);
    }
    if !rec && ret > 0 && matches!(nr, SYS_read | SYS_readv) && fds::kind(a[0] as i32) == FD_REAL {
        // Keep the real descriptor's offset where the recorded one was.
        raw(SYS_lseek, [a[0], ret as usize, SEEK_CUR as usize, 0, 0, 0]);
    }
    ret
}

/// `recvmsg`: an input like the others, but descriptors passed with
/// `SCM_RIGHTS` are new descriptors: record marks them as placeholders, and
/// replay puts placeholders at the recorded numbers.
fn recvmsg(a: [usize; 6], rec: bool) -> isize {
    if rec {
        let ret = logged(SYS_recvmsg, a, true);
        if ret >= 0 {
            scm_rights(a[1], |fd| fds::set_kind(fd, FD_PLACEHOLDER));
        }
        return ret;
    }
    let p = pre(SYS_recvmsg, &a);
    let h = expect(Kind::Syscall, SYS_recvmsg as u32, Some(a[0] as u64), None);
    let ret = h.ret as isize;
    apply_outs(&h, &outs(SYS_recvmsg, &a, ret, p));
    if ret >= 0 {
        let cloexec = a[2] as i32 & MSG_CMSG_CLOEXEC != 0;
        scm_rights(a[1], |fd| fds::placeholder(&h, fd, cloexec));
    }
    consume(&h);
    ret
}

/// Call `f` with every descriptor in the `SCM_RIGHTS` messages of the
/// program's `msghdr` at `m` (after the call filled it).
fn scm_rights(m: usize, mut f: impl FnMut(i32)) {
    let control = rd_usize(m + 32);
    let len = rd_usize(m + 40);
    if control == 0 {
        return;
    }
    let mut at = 0usize;
    // struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; }
    while at + 16 <= len {
        let clen = rd_usize(control + at);
        if clen < 16 || at + clen > len {
            break;
        }
        let level = rd_u32(control + at + 8) as i32;
        let kind = rd_u32(control + at + 12) as i32;
        if level == SOL_SOCKET && kind == SCM_RIGHTS {
            for k in 0..(clen - 16) / 4 {
                f(rd_u32(control + at + 16 + 4 * k) as i32);
            }
        }
        at += (clen + 7) & !7;
    }
}

/// The digest of what a write-like call sends.
fn out_digest(nr: i64, a: &[usize; 6]) -> u64 {
    let (iov, cnt) = match nr {
        SYS_write | SYS_pwrite64 | SYS_sendto => {
            if a[1] == 0 {
                return 0;
            }
            // SAFETY: the program passed `a[2]` bytes at `a[1]` to write.
            return checksum(unsafe { core::slice::from_raw_parts(a[1] as *const u8, a[2]) })
                as u64;
        }
        SYS_sendmsg => (rd_usize(a[1] + 16), rd_usize(a[1] + 24)),
        _ => (a[1], a[2]),
    };
    let mut c = 0u32;
    for k in 0..cnt {
        // SAFETY: the program's iovec array of `cnt` entries.
        let v = unsafe { core::ptr::read_unaligned((iov as *const iovec).add(k)) };
        if v.iov_len > 0 {
            // SAFETY: the program passed this buffer to be written.
            let s = unsafe { core::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
            c = crc32c::crc32c_append(c, s);
        }
    }
    c as u64
}

fn write_like(nr: i64, a: [usize; 6], rec: bool) -> isize {
    let d = out_digest(nr, &a);
    let fd = a[0] as i32;
    let kind = fds::kind(fd);
    let placeholder = kind == FD_PLACEHOLDER;
    let mut mirrored = None;
    if placeholder {
        // Its reader may be another thread of the program: see `before`.
        let g = state::before(nr, rec);
        if rec && !live::internal(fd) {
            // A socket, a FIFO: the world may see it. Output commit.
            state::gate(g);
        }
        if !rec && live::mirrored(fd) {
            mirrored = Some(live::mirror_write(nr, a));
        }
    }
    if rec {
        let run = || {
            let ret = raw(nr, a);
            let mut r = Rec::sys(nr, ret, a[0] as u64, d);
            if placeholder {
                r.flags = ferry_proto::FLAG_PLACEHOLDER_FD;
            }
            emit(r, &[]);
            ret
        };
        // A write replay repeats (stdout, a file) runs under the ordering
        // lock, so the log's order is the order the world saw. A write to a
        // placeholder (a pipe between the program's processes, a socket)
        // may block until another process of the program reads: it must
        // not hold the lock, and replay does not repeat it anyway.
        if placeholder {
            run()
        } else {
            ordered(run)
        }
    } else {
        // If the log ends inside this write, what the pipe got is real.
        let cut = mirrored.unwrap_or(-(ECONNRESET as isize)) as i64;
        let h = state::expect_or_cut(Kind::Syscall, nr as u32, Some(a[0] as u64), Some(d), cut);
        if h.flags & state::SYNTHETIC != 0 {
            return h.ret as isize;
        }
        if let Some(real) = mirrored {
            if real != h.ret as isize {
                state::diverge_msg(
                    &h,
                    format_args!(
                        "a write to the program's own pipe gave {} in replay, {} in the recording",
                        real, h.ret
                    ),
                );
            }
        }
        if kind == FD_REAL && h.ret > 0 {
            // The program's stdout, stderr or a file: do it again.
            let mut b = a;
            if matches!(nr, SYS_write | SYS_pwrite64) {
                b[2] = h.ret as usize;
            }
            raw(nr, b);
        }
        consume(&h);
        h.ret as isize
    }
}

/// A local call: runs in both modes; replay returns the recorded result.
pub fn local(nr: i64, a: [usize; 6], rec: bool) -> isize {
    if rec {
        let run = || {
            let ret = raw(nr, a);
            emit(Rec::sys(nr, ret, a[0] as u64, 0), &[]);
            ret
        };
        // Local calls change what replay changes again (files, mappings):
        // run them under the ordering lock so their order in the log is
        // their real order, unless they can wait on another process of the
        // program (which would need the lock to go on).
        if may_block(nr, &a) {
            run()
        } else {
            ordered(run)
        }
    } else {
        let h = expect(Kind::Syscall, nr as u32, check0(nr, &a), None);
        raw(nr, a);
        consume(&h);
        h.ret as isize
    }
}

/// Local calls that can wait for another process of the program.
fn may_block(nr: i64, a: &[usize; 6]) -> bool {
    match nr {
        SYS_flock => a[1] as i32 & LOCK_NB == 0,
        SYS_fcntl => matches!(a[1] as i32, F_SETLKW | F_OFD_SETLKW),
        SYS_msgsnd | SYS_msgrcv | SYS_semop | SYS_semtimedop | SYS_mq_timedsend
        | SYS_mq_timedreceive | SYS_wait4 | SYS_waitid | SYS_pause | SYS_futex => true,
        _ => false,
    }
}

fn mmap(a: [usize; 6], rec: bool) -> isize {
    if rec {
        return ordered(|| {
            let ret = raw(SYS_mmap, a);
            emit(Rec::sys(SYS_mmap, ret, a[1] as u64, 0), &[]);
            ret
        });
    }
    let h = expect(Kind::Syscall, SYS_mmap as u32, Some(a[1] as u64), None);
    let want = h.ret as isize;
    if want < 0 {
        consume(&h);
        return want;
    }
    let mut b = a;
    if b[3] as i32 & MAP_FIXED == 0 {
        b[0] = want as usize;
        b[3] |= MAP_FIXED_NOREPLACE as usize;
    }
    let got = raw(SYS_mmap, b);
    if got != want {
        state::diverge_msg(
            &h,
            format_args!(
                "mmap of {} bytes gave {:#x}, recorded {:#x}",
                a[1], got, want
            ),
        );
    }
    consume(&h);
    want
}

fn mremap(a: [usize; 6], rec: bool) -> isize {
    if rec {
        return ordered(|| {
            let ret = raw(SYS_mremap, a);
            emit(Rec::sys(SYS_mremap, ret, a[0] as u64, 0), &[]);
            ret
        });
    }
    let h = expect(Kind::Syscall, SYS_mremap as u32, Some(a[0] as u64), None);
    let want = h.ret as isize;
    if want < 0 {
        consume(&h);
        return want;
    }
    let mut b = a;
    if want as usize != a[0] && b[3] as i32 & MREMAP_MAYMOVE != 0 {
        b[3] |= MREMAP_FIXED as usize;
        b[4] = want as usize;
    }
    let got = raw(SYS_mremap, b);
    if got != want {
        state::diverge_msg(
            &h,
            format_args!("mremap gave {:#x}, recorded {:#x}", got, want),
        );
    }
    consume(&h);
    want
}

fn brk(a: [usize; 6], rec: bool) -> isize {
    if rec {
        return ordered(|| {
            let ret = raw(SYS_brk, a);
            emit(Rec::sys(SYS_brk, ret, a[0] as u64, 0), &[]);
            ret
        });
    }
    let h = expect(Kind::Syscall, SYS_brk as u32, Some(a[0] as u64), None);
    let got = raw(SYS_brk, a);
    if got as i64 != h.ret {
        state::diverge_msg(
            &h,
            format_args!("brk gave {:#x}, recorded {:#x}", got, h.ret),
        );
    }
    consume(&h);
    got
}

/// Record: run `f` under the ordering lock (for calls whose results depend on
/// the order of calls across threads, such as descriptor numbers).
pub fn ordered<R>(f: impl FnOnce() -> R) -> R {
    lock();
    let r = f();
    unlock();
    r
}

/// The CRC of a NUL-terminated string the program passed (a path).
pub fn cstr_digest(p: usize) -> u64 {
    if p == 0 {
        return 0;
    }
    let mut n = 0usize;
    // SAFETY: `p` is a NUL-terminated path the program passed to the call;
    // the scan stops at the NUL or at PATH_MAX.
    unsafe {
        while n < 4096 && *((p + n) as *const u8) != 0 {
            n += 1;
        }
        checksum(core::slice::from_raw_parts(p as *const u8, n)) as u64
    }
}
