//! Descriptors: what each one is (real or placeholder, see
//! `ferry_ring::FD_*`), and the calls that make or remove them. Replay forces
//! every descriptor to the number the recording had, so that a blocking
//! `accept` in one thread and an `open` in another cannot swap numbers.

use crate::engine::{apply_outs, cstr_digest, emit_outs, ordered, outs, pre};
use crate::state::{self, consume, emit, expect, reg, Rec, MY_SLOT};
use crate::sys::{raw, sys1, sys2, sys3};
use core::sync::atomic::Ordering;
use ferry_proto::Kind;
use ferry_ring::{FD_CLOSED, FD_PLACEHOLDER, FD_REAL, MAX_FDS, REGION_FD};
use libc::*;

/// The kind of descriptor `fd` in this process.
pub fn kind(fd: i32) -> u8 {
    if fd < 0 || fd as usize >= MAX_FDS {
        return FD_PLACEHOLDER;
    }
    reg().proc(MY_SLOT.load(Ordering::Relaxed)).fds[fd as usize].load(Ordering::Relaxed)
}

/// Set the kind of `fd`.
pub fn set_kind(fd: i32, k: u8) {
    if fd >= 0 && (fd as usize) < MAX_FDS {
        reg().proc(MY_SLOT.load(Ordering::Relaxed)).fds[fd as usize].store(k, Ordering::Relaxed);
    }
}

/// Copy the descriptor kinds of slot `from` to slot `to` (a fork).
pub fn copy_kinds(from: usize, to: usize) {
    let r = reg();
    let (a, b) = (r.proc(from), r.proc(to));
    for i in 0..MAX_FDS {
        b.fds[i].store(a.fds[i].load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// After an exec: forget descriptors the kernel closed (close-on-exec).
pub fn rescan_after_exec() {
    for fd in 0..MAX_FDS as i32 {
        if kind(fd) != FD_CLOSED && sys2(SYS_fcntl, fd as usize, F_GETFD as usize) < 0 {
            set_kind(fd, FD_CLOSED);
        }
    }
}

/// Mark the descriptors a new root process inherits as real.
pub fn adopt_inherited() {
    for fd in 0..MAX_FDS as i32 {
        if fd != REGION_FD && sys2(SYS_fcntl, fd as usize, F_GETFD as usize) >= 0 {
            set_kind(fd, FD_REAL);
        }
    }
}

fn is_fifo(fd: i32) -> bool {
    // SAFETY: a zeroed stat is a valid out-buffer for fstat.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    sys2(SYS_fstat, fd as usize, &mut st as *mut libc::stat as usize) == 0
        && st.st_mode & S_IFMT == S_IFIFO
}

fn is_open(fd: i32) -> bool {
    sys2(SYS_fcntl, fd as usize, F_GETFD as usize) >= 0
}

/// Replay: make `got` (a descriptor just created) carry number `want`.
fn place(h: &ferry_proto::RecordHeader, got: i32, want: i32) {
    if got == want {
        return;
    }
    if want == REGION_FD || is_open(want) {
        state::diverge_msg(
            h,
            format_args!("descriptor {} is already open in replay", want),
        );
    }
    let cloexec = sys2(SYS_fcntl, got as usize, F_GETFD as usize) & FD_CLOEXEC as isize != 0;
    let flags = if cloexec { O_CLOEXEC } else { 0 };
    if sys3(SYS_dup3, got as usize, want as usize, flags as usize) < 0 {
        state::diverge_msg(h, format_args!("cannot place descriptor {}", want));
    }
    sys1(SYS_close, got as usize);
}

/// Replay: occupy number `want` with a placeholder for a descriptor that
/// only existed in the recording (an accepted connection, say).
pub fn placeholder(h: &ferry_proto::RecordHeader, want: i32, cloexec: bool) {
    let path = b"/dev/null\0";
    let flags = O_RDWR | if cloexec { O_CLOEXEC } else { 0 };
    let got = raw(
        SYS_openat,
        [
            AT_FDCWD as usize,
            path.as_ptr() as usize,
            flags as usize,
            0,
            0,
            0,
        ],
    );
    if got < 0 {
        state::diverge_msg(
            h,
            format_args!("cannot open a placeholder for descriptor {}", want),
        );
    }
    place(h, got as i32, want);
    set_kind(want, FD_PLACEHOLDER);
}

fn path_arg(nr: i64, a: &[usize; 6]) -> usize {
    match nr {
        SYS_open | SYS_creat => a[0],
        _ => a[1],
    }
}

fn open_cloexec(nr: i64, a: &[usize; 6]) -> bool {
    let flags = match nr {
        SYS_open => a[1],
        SYS_openat => a[2],
        // SAFETY: openat2's `how` points to a struct open_how whose first
        // field is the u64 flags.
        SYS_openat2 => (unsafe { core::ptr::read_unaligned(a[2] as *const u64) }) as usize,
        _ => 0,
    };
    flags as i32 & O_CLOEXEC != 0
}

/// `open`, `openat`, `creat`, `openat2`: local, on real files.
pub fn open(nr: i64, a: [usize; 6], rec: bool) -> isize {
    let d = cstr_digest(path_arg(nr, &a));
    if rec {
        let ret = raw(nr, a);
        let mut r = Rec::sys(nr, ret, 0, d);
        if ret >= 0 {
            // A FIFO opened by path may have its other end in the program:
            // like a pipe, it is a placeholder (its writes may block, so
            // they cannot run under the ordering lock).
            let k = if is_fifo(ret as i32) {
                FD_PLACEHOLDER
            } else {
                FD_REAL
            };
            if k == FD_PLACEHOLDER {
                r.flags |= ferry_proto::FLAG_PLACEHOLDER_FD;
            }
            set_kind(ret as i32, k);
        }
        emit(r, &[]);
        return ret;
    }
    let h = expect(Kind::Syscall, nr as u32, None, Some(d));
    let got = raw(nr, a);
    let want = h.ret as isize;
    let k = if h.flags & ferry_proto::FLAG_PLACEHOLDER_FD != 0 {
        FD_PLACEHOLDER
    } else {
        FD_REAL
    };
    if want >= 0 {
        if got >= 0 {
            place(&h, got as i32, want as i32);
            set_kind(want as i32, k);
        } else {
            // The file is not here (replay on another host): its reads come
            // from the log anyway.
            placeholder(&h, want as i32, open_cloexec(nr, &a));
        }
    } else if got >= 0 {
        sys1(SYS_close, got as usize);
    }
    consume(&h);
    want
}

/// Calls that make one descriptor with no effect outside the process
/// (sockets before bind, eventfds, epoll sets…): run in both modes; the
/// descriptor is a placeholder except for memfds, which are real memory.
pub fn create(nr: i64, a: [usize; 6], rec: bool) -> isize {
    let k = if nr == SYS_memfd_create {
        FD_REAL
    } else {
        FD_PLACEHOLDER
    };
    if rec {
        return ordered(|| {
            let ret = raw(nr, a);
            if ret >= 0 {
                set_kind(ret as i32, k);
            }
            emit(Rec::sys(nr, ret, a[0] as u64, 0), &[]);
            ret
        });
    }
    let h = expect(Kind::Syscall, nr as u32, None, None);
    let got = raw(nr, a);
    let want = h.ret as isize;
    if want >= 0 {
        if got >= 0 {
            place(&h, got as i32, want as i32);
            set_kind(want as i32, k);
        } else {
            placeholder(&h, want as i32, false);
        }
    } else if got >= 0 {
        sys1(SYS_close, got as usize);
    }
    consume(&h);
    want
}

/// `pipe`, `pipe2`, `socketpair`: two placeholders.
pub fn pair(nr: i64, a: [usize; 6], rec: bool) -> isize {
    let arr = if nr == SYS_socketpair { a[3] } else { a[0] };
    if rec {
        return ordered(|| {
            let ret = raw(nr, a);
            if ret == 0 {
                // SAFETY: the kernel filled the program's int[2].
                let fds = unsafe { core::ptr::read_unaligned(arr as *const [i32; 2]) };
                set_kind(fds[0], FD_PLACEHOLDER);
                set_kind(fds[1], FD_PLACEHOLDER);
                if nr == SYS_socketpair {
                    crate::ckpt_fd::note_socketpair(arr);
                }
            }
            emit_outs(Rec::sys(nr, ret, 0, 0), &outs(nr, &a, ret, pre(nr, &a)));
            ret
        });
    }
    let h = expect(Kind::Syscall, nr as u32, None, None);
    if h.ret != 0 {
        consume(&h);
        return h.ret as isize;
    }
    let ret = raw(nr, a);
    // SAFETY: the program's int[2], just filled by the kernel (or not, on
    // failure: then it is the program's own value, not used below).
    let got = unsafe { core::ptr::read_unaligned(arr as *const [i32; 2]) };
    apply_outs(&h, &outs(nr, &a, 0, pre(nr, &a)));
    // SAFETY: as above, now holding the recorded numbers.
    let want = unsafe { core::ptr::read_unaligned(arr as *const [i32; 2]) };
    if ret == 0 {
        if got != want {
            // Move both out of the way first: the recorded numbers may be
            // each other's current ones.
            let t0 = sys3(SYS_fcntl, got[0] as usize, F_DUPFD_CLOEXEC as usize, 900) as i32;
            let t1 = sys3(SYS_fcntl, got[1] as usize, F_DUPFD_CLOEXEC as usize, 900) as i32;
            let ce = [0, 1].map(|i| sys2(SYS_fcntl, got[i] as usize, F_GETFD as usize) & 1 != 0);
            sys1(SYS_close, got[0] as usize);
            sys1(SYS_close, got[1] as usize);
            for (i, t) in [t0, t1].into_iter().enumerate() {
                if is_open(want[i]) {
                    state::diverge_msg(
                        &h,
                        format_args!("descriptor {} is already open in replay", want[i]),
                    );
                }
                let fl = if ce[i] { O_CLOEXEC } else { 0 };
                sys3(SYS_dup3, t as usize, want[i] as usize, fl as usize);
                sys1(SYS_close, t as usize);
            }
        }
        set_kind(want[0], FD_PLACEHOLDER);
        set_kind(want[1], FD_PLACEHOLDER);
        if nr == SYS_socketpair {
            // The program's int[2] holds the recorded numbers now.
            crate::ckpt_fd::note_socketpair(arr);
        }
    } else {
        placeholder(&h, want[0], false);
        placeholder(&h, want[1], false);
    }
    consume(&h);
    0
}

/// `dup`, `dup2`, `dup3`, `fcntl(F_DUPFD…)`: local; the copy has the
/// original's kind.
pub fn dup(nr: i64, a: [usize; 6], rec: bool) -> isize {
    let k = kind(a[0] as i32);
    if rec {
        return ordered(|| {
            let ret = raw(nr, a);
            if ret >= 0 {
                set_kind(ret as i32, k);
            }
            emit(Rec::sys(nr, ret, a[0] as u64, 0), &[]);
            ret
        });
    }
    let h = expect(Kind::Syscall, nr as u32, Some(a[0] as u64), None);
    let want = h.ret as isize;
    if want >= 0 {
        let got = raw(nr, a);
        if got >= 0 {
            place(&h, got as i32, want as i32);
        } else {
            placeholder(&h, want as i32, false);
        }
        set_kind(want as i32, k);
    }
    consume(&h);
    want
}

/// `close`: local. The shim's own descriptor cannot be closed.
pub fn close(a: [usize; 6], rec: bool) -> isize {
    let fd = a[0] as i32;
    if rec {
        return ordered(|| {
            let ret = raw(SYS_close, a);
            set_kind(fd, FD_CLOSED);
            emit(Rec::sys(SYS_close, ret, a[0] as u64, 0), &[]);
            ret
        });
    }
    let h = expect(Kind::Syscall, SYS_close as u32, Some(a[0] as u64), None);
    raw(SYS_close, a);
    set_kind(fd, FD_CLOSED);
    consume(&h);
    h.ret as isize
}

/// `close_range` with the shim's descriptor left out.
pub fn close_range_raw(a: [usize; 6]) -> isize {
    let (first, last, flags) = (a[0] as u32, a[1] as u32, a[2]);
    let r = REGION_FD as u32;
    if first <= r && r <= last {
        let mut ret = 0;
        if first < r {
            ret = raw(
                SYS_close_range,
                [first as usize, (r - 1) as usize, flags, 0, 0, 0],
            );
        }
        if r < last && ret >= 0 {
            ret = raw(
                SYS_close_range,
                [(r + 1) as usize, last as usize, flags, 0, 0, 0],
            );
        }
        ret
    } else {
        raw(SYS_close_range, a)
    }
}

/// `close_range`: local.
pub fn close_range(a: [usize; 6], rec: bool) -> isize {
    let forget = || {
        if a[2] as u32 & CLOSE_RANGE_CLOEXEC == 0 {
            let last = (a[1] as u64).min(MAX_FDS as u64 - 1) as i32;
            for fd in a[0] as i32..=last {
                if fd != REGION_FD {
                    set_kind(fd, FD_CLOSED);
                }
            }
        }
    };
    if rec {
        return ordered(|| {
            let ret = close_range_raw(a);
            forget();
            emit(Rec::sys(SYS_close_range, ret, a[0] as u64, 0), &[]);
            ret
        });
    }
    let h = expect(Kind::Syscall, SYS_close_range as u32, None, None);
    close_range_raw(a);
    forget();
    consume(&h);
    h.ret as isize
}

/// `accept`, `accept4`: inputs that make a descriptor; replay puts a
/// placeholder at the recorded number.
pub fn accept(nr: i64, a: [usize; 6], rec: bool) -> isize {
    let p = pre(nr, &a);
    if rec {
        let ret = raw(nr, a);
        if ret >= 0 {
            set_kind(ret as i32, FD_PLACEHOLDER);
        }
        emit_outs(Rec::sys(nr, ret, a[0] as u64, 0), &outs(nr, &a, ret, p));
        return ret;
    }
    let h = expect(Kind::Syscall, nr as u32, Some(a[0] as u64), None);
    let want = h.ret as isize;
    if want >= 0 {
        let cloexec = nr == SYS_accept4 && a[3] as i32 & SOCK_CLOEXEC != 0;
        placeholder(&h, want as i32, cloexec);
    }
    apply_outs(&h, &outs(nr, &a, want, p));
    consume(&h);
    want
}
