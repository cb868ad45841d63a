//! A replica going live, and what it needs to know to do so.
//!
//! In replay, sockets exist as real but unconnected sockets (or `/dev/null`
//! placeholders for accepted connections): `bind`, `listen` and `connect`
//! never ran. This module remembers, per descriptor, what the program did
//! with each socket (the address it bound, its backlog, whether it was a
//! connection), and which descriptors are the program's own pipes and
//! socket pairs. When `ferryd` turns a live replica into the primary, the
//! first thread of each process to notice ([`go_live`]) makes the
//! placeholders real:
//!
//! - a listening socket is bound again to its recorded address (with
//!   `IP_FREEBIND`, since the service address may arrive a moment later)
//!   and listens with its recorded backlog: the same descriptor, so epoll
//!   sets and threads blocked on it see it as before;
//! - a connection of the old primary becomes a socket whose peer has gone:
//!   reads see end of file, writes fail, as after a reset; clients
//!   reconnect;
//! - the program's own pipes, socket pairs and eventfds are real in a live
//!   replica already, with the bytes (the counter) the primary's held:
//!   writes to them run in replay too ([`mirror_write`]), and reads take
//!   their bytes out ([`mirror_drain`]).
//!
//! Then the process's mode becomes record: its calls run and are logged,
//! from the gseq `ferryd` stored.
//!
//! The table is per process and is not carried across `exec`; a socket
//! bound before an `exec` is not bound again. A live replica arms its
//! timerfds as the program did and resets their count when the program
//! read them. Known limits: a timerfd set to an absolute time of a clock
//! other than the wall clock stays disarmed, an eventfd written from outside
//! the program (another program, the kernel's AIO) is not followed, and a
//! connection of the old primary that sat in an epoll set is never
//! reported by it (it stays open, unused).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, Ordering};

use ferry_ring::FD_PLACEHOLDER;
use libc::*;

use crate::fds;
use crate::state::{self, reg};
use crate::sys::{self, raw, sys1, sys2, sys3};

/// Descriptors the table covers; others are never bound again.
const TRACKED: usize = 1024;

/// Nothing known (or a socket that was never bound).
const S_NONE: u8 = 0;
/// Bound, not listening (a UDP socket, or TCP before `listen`).
const S_BOUND: u8 = 1;
/// Listening.
const S_LISTENING: u8 = 2;
/// A connection (accepted or connected): dies with the old primary.
const S_CONNECTION: u8 = 3;
/// One end of a pipe or socket pair the program made itself, or one of its
/// eventfds.
const S_PAIR: u8 = 4;
/// A timerfd (`clock` is its clock).
const S_TIMER: u8 = 5;

#[derive(Clone, Copy)]
struct Sock {
    state: u8,
    addr_len: u32,
    backlog: i32,
    /// A timerfd's clock.
    clock: i32,
    addr: [u8; 128],
}

const EMPTY: Sock = Sock {
    state: S_NONE,
    addr_len: 0,
    backlog: 0,
    clock: 0,
    addr: [0; 128],
};

struct Table(UnsafeCell<[Sock; TRACKED]>);

// SAFETY: entries are written only by the thread whose call changes the
// descriptor, between its turn and its consume in replay (one thread at a
// time) or under the ordering lock in record; readers are that thread or
// the single thread that goes live while every other thread waits.
unsafe impl Sync for Table {}

static TABLE: Table = Table(UnsafeCell::new([EMPTY; TRACKED]));

fn entry(fd: i32) -> Option<&'static mut Sock> {
    if fd < 0 || fd as usize >= TRACKED {
        return None;
    }
    // SAFETY: see `Table`: no two threads touch one entry at once.
    Some(unsafe { &mut (*TABLE.0.get())[fd as usize] })
}

fn state_of(fd: i32) -> u8 {
    entry(fd).map(|s| s.state).unwrap_or(S_NONE)
}

/// Whether `nr` changes what the table knows.
pub fn tracks(nr: i64) -> bool {
    matches!(
        nr,
        SYS_socket
            | SYS_eventfd
            | SYS_eventfd2
            | SYS_timerfd_create
            | SYS_timerfd_settime
            | SYS_bind
            | SYS_listen
            | SYS_connect
            | SYS_accept
            | SYS_accept4
            | SYS_close
            | SYS_dup
            | SYS_dup2
            | SYS_dup3
            | SYS_fcntl
            | SYS_pipe
            | SYS_pipe2
            | SYS_socketpair
            | SYS_setsockopt
            | SYS_epoll_ctl
            | SYS_ioctl
    )
}

/// After call `nr` with arguments `a` returned `ret` (in either mode).
pub fn note(nr: i64, a: &[usize; 6], ret: isize, rec: bool) {
    match nr {
        SYS_socket if ret >= 0 => set(ret as i32, EMPTY),
        // An eventfd is the program's own, like its pipes: writes to it stay
        // inside (no output gate), and a live replica's counter follows
        // the primary's (writes run for real in replay, reads take out
        // what the log says they took).
        SYS_eventfd | SYS_eventfd2 if ret >= 0 => set(
            ret as i32,
            Sock {
                state: S_PAIR,
                ..EMPTY
            },
        ),
        SYS_bind if ret == 0 => {
            if let Some(s) = entry(a[0] as i32) {
                let len = a[2].min(128);
                s.state = S_BOUND;
                s.addr_len = len as u32;
                // SAFETY: the program passed `a[2]` bytes of address at a[1].
                let src = unsafe { core::slice::from_raw_parts(a[1] as *const u8, len) };
                s.addr[..len].copy_from_slice(src);
            }
        }
        SYS_listen if ret == 0 => {
            if let Some(s) = entry(a[0] as i32) {
                if s.state == S_BOUND {
                    s.state = S_LISTENING;
                    s.backlog = a[1] as i32;
                }
            }
        }
        SYS_connect if ret == 0 || ret == -(EINPROGRESS as isize) => {
            if let Some(s) = entry(a[0] as i32) {
                s.state = S_CONNECTION;
            }
        }
        SYS_accept | SYS_accept4 if ret >= 0 => set(
            ret as i32,
            Sock {
                state: S_CONNECTION,
                ..EMPTY
            },
        ),
        SYS_close if ret == 0 => set(a[0] as i32, EMPTY),
        SYS_dup if ret >= 0 => copy(a[0] as i32, ret as i32),
        SYS_dup2 | SYS_dup3 if ret >= 0 => copy(a[0] as i32, ret as i32),
        SYS_fcntl if ret >= 0 && matches!(a[1] as i32, F_DUPFD | F_DUPFD_CLOEXEC) => {
            copy(a[0] as i32, ret as i32)
        }
        SYS_pipe | SYS_pipe2 | SYS_socketpair if ret == 0 => {
            let arr = if nr == SYS_socketpair { a[3] } else { a[0] };
            if nr == SYS_socketpair {
                crate::ckpt_fd::note_socketpair(arr);
            }
            // SAFETY: the program's int[2], filled by the call.
            let fds = unsafe { core::ptr::read_unaligned(arr as *const [i32; 2]) };
            for fd in fds {
                set(
                    fd,
                    Sock {
                        state: S_PAIR,
                        ..EMPTY
                    },
                );
            }
        }
        SYS_timerfd_create if ret >= 0 => set(
            ret as i32,
            Sock {
                state: S_TIMER,
                clock: a[0] as i32,
                ..EMPTY
            },
        ),
        // A live replica arms its timerfds as the program did, so that they
        // still fire after a takeover (the replica runs a few milliseconds
        // behind, so do its timers). The old value is the logged one, not
        // written again. An absolute time on a clock that is not the wall
        // clock is the primary host's (its monotonic clock, not this one's):
        // such a timer is left disarmed.
        SYS_timerfd_settime if !rec && ret == 0 && reg().has(ferry_ring::CTL_LIVE_REPLICA) => {
            let clock = entry(a[0] as i32)
                .filter(|s| s.state == S_TIMER)
                .map(|s| s.clock);
            let wall = matches!(clock, Some(CLOCK_REALTIME) | Some(CLOCK_REALTIME_ALARM));
            if clock.is_some() && (a[1] as i32 & TFD_TIMER_ABSTIME == 0 || wall) {
                raw(nr, [a[0], a[1], a[2], 0, 0, 0]);
            }
        }
        // Replay keeps the real (unbound) socket's options as the
        // program set them, so that binding it again at takeover behaves
        // as the primary's did (SO_REUSEADDR, say). The result is the
        // logged one whatever this returns.
        SYS_setsockopt if !rec => {
            raw(nr, *a);
        }
        // Likewise the blocking mode set through ioctl (Python does).
        SYS_ioctl if !rec && a[1] as u64 == FIONBIO => {
            raw(nr, *a);
        }
        // A live replica keeps its epoll sets as the program built them, so
        // that after takeover they report the sockets bound again and the
        // program's own pipes (connections of the old primary are
        // placeholders the kernel does not let into a set).
        SYS_epoll_ctl if !rec && reg().has(ferry_ring::CTL_LIVE_REPLICA) => {
            raw(nr, *a);
        }
        _ => {}
    }
}

fn set(fd: i32, s: Sock) {
    if let Some(e) = entry(fd) {
        *e = s;
    }
}

fn copy(from: i32, to: i32) {
    if from == to {
        return;
    }
    let s = entry(from).map(|s| *s).unwrap_or(EMPTY);
    set(to, s);
}

/// Record: whether a write to `fd` stays inside the program (a pipe or
/// socket pair it made itself), so it needs no output gate.
pub fn internal(fd: i32) -> bool {
    state_of(fd) == S_PAIR
}

/// Replay: whether `fd`'s data is mirrored into the real descriptor (a pipe
/// or socket pair of a live replica).
pub fn mirrored(fd: i32) -> bool {
    if !reg().has(ferry_ring::CTL_LIVE_REPLICA) || fds::kind(fd) != FD_PLACEHOLDER {
        return false;
    }
    state_of(fd) == S_PAIR || real_pair(fd)
}

/// Whether the real object behind placeholder `fd` is a pipe or a connected
/// socket: in replay the only ones are the program's own pipes and socket
/// pairs (a descriptor inherited across `exec`, which the table forgets).
fn real_pair(fd: i32) -> bool {
    // SAFETY: all-zero is a valid `stat`.
    let mut st: stat = unsafe { core::mem::zeroed() };
    if sys2(SYS_fstat, fd as usize, &mut st as *mut stat as usize) < 0 {
        return false;
    }
    match st.st_mode & S_IFMT {
        S_IFIFO => true,
        S_IFSOCK => {
            let mut addr = [0u8; 128];
            let mut len: u32 = 128;
            sys3(
                SYS_getpeername,
                fd as usize,
                addr.as_mut_ptr() as usize,
                &mut len as *mut u32 as usize,
            ) == 0
        }
        _ => false,
    }
}

/// Block SIGPIPE for the calling thread around `f`; a SIGPIPE `f` raised is
/// taken back. Returns what `f` returned.
fn without_sigpipe(f: impl FnOnce() -> isize) -> isize {
    let set: u64 = 1 << (SIGPIPE - 1);
    let mut old: u64 = 0;
    raw(
        SYS_rt_sigprocmask,
        [
            SIG_BLOCK as usize,
            &set as *const u64 as usize,
            &mut old as *mut u64 as usize,
            8,
            0,
            0,
        ],
    );
    let ret = f();
    if ret == -(EPIPE as isize) && old & set == 0 {
        let zero = timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        raw(
            SYS_rt_sigtimedwait,
            [
                &set as *const u64 as usize,
                0,
                &zero as *const timespec as usize,
                8,
                0,
                0,
            ],
        );
    }
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
    ret
}

/// Wait up to 100 ms until `fd` is ready for `events` (or hung up, or in
/// error); whether it is.
fn wait_ready(fd: i32, events: i16) -> bool {
    ready_within(fd, events, 100_000_000)
}

/// Whether `fd` is ready for `events` (or hung up, or in error) within
/// `ns` nanoseconds (0: now).
fn ready_within(fd: i32, events: i16, ns: i64) -> bool {
    let mut p = pollfd {
        fd,
        events,
        revents: 0,
    };
    let ts = timespec {
        tv_sec: 0,
        tv_nsec: ns,
    };
    let n = raw(
        SYS_ppoll,
        [
            &mut p as *mut pollfd as usize,
            1,
            &ts as *const timespec as usize,
            0,
            8,
            0,
        ],
    );
    n > 0 && p.revents & (events | POLLHUP | POLLERR | POLLNVAL) != 0
}

fn stopped() -> bool {
    reg().has(ferry_ring::CTL_DIVERGED | ferry_ring::CTL_FAILED)
}

/// Replay in a live replica: run a write to the program's own pipe for
/// real, so the pipe holds what the primary's did. The reader takes the
/// bytes out in its turn ([`mirror_drain`]), which may be after this
/// returns; a full pipe makes this wait for it, as in the recording.
/// Returns the real result.
pub fn mirror_write(nr: i64, a: [usize; 6]) -> isize {
    loop {
        let ret = without_sigpipe(|| raw(nr, a));
        if ret == -(EAGAIN as isize) && !stopped() {
            wait_ready(a[0] as i32, POLLOUT);
            continue;
        }
        if ret == -(EINTR as isize) {
            continue;
        }
        if ret >= 0 && matches!(nr, SYS_write) && (ret as usize) < a[2] {
            // A blocking pipe write is whole; finish a short one.
            let mut b = a;
            b[1] += ret as usize;
            b[2] -= ret as usize;
            let rest = mirror_write(nr, b);
            return if rest >= 0 { ret + rest } else { ret };
        }
        return ret;
    }
}

/// Replay in a live replica: whether `fd` is a timerfd.
pub fn timer(fd: i32) -> bool {
    reg().has(ferry_ring::CTL_LIVE_REPLICA) && state_of(fd) == S_TIMER
}

/// Replay in a live replica: the program read its timerfd (answered from
/// the log), which reset the primary's count of expirations: reset the real
/// one's too, if it has any, without waiting.
pub fn drain_timer(fd: i32) {
    if ready_within(fd, POLLIN, 0) {
        let mut count = 0u64;
        sys3(SYS_read, fd as usize, &mut count as *mut u64 as usize, 8);
    }
}

/// Replay in a live replica: the program read `n` bytes from its own pipe
/// (answered from the log); take as many out of the real pipe.
pub fn mirror_drain(fd: i32, mut n: usize) {
    let mut buf = [0u8; 4096];
    while n > 0 && !stopped() {
        // Never block in the read (a blocking pipe or eventfd with nothing
        // in it yet): wait for data in steps, looking at the flags between.
        if !wait_ready(fd, POLLIN) {
            continue;
        }
        let want = n.min(buf.len());
        let got = sys3(SYS_read, fd as usize, buf.as_mut_ptr() as usize, want);
        if got > 0 {
            n -= got as usize;
        } else if got == -(EAGAIN as isize) || got == -(EINTR as isize) {
            wait_ready(fd, POLLIN);
        } else {
            return;
        }
    }
}

/// 0: this process is replaying; 1: a thread is taking it live; 2: live.
static LIVE: AtomicU32 = AtomicU32::new(0);

/// The replica went live: make this process's placeholders real (once per
/// process; other threads wait for the one doing it) and switch it to
/// record.
pub fn go_live() {
    match LIVE.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            rebuild();
            state::set_mode_record();
            LIVE.store(2, Ordering::Release);
            sys::futex_wake(&LIVE, i32::MAX as u32);
        }
        Err(_) => {
            while LIVE.load(Ordering::Acquire) != 2 {
                sys::futex_wait(&LIVE, 1, Some(10));
            }
        }
    }
}

/// After `fork` in the child: the child starts with its parent's table and
/// its parent's live state, which is what it has.
fn rebuild() {
    for fd in 0..TRACKED as i32 {
        if fds::kind(fd) != FD_PLACEHOLDER {
            continue;
        }
        let Some(s) = entry(fd) else { continue };
        match s.state {
            S_LISTENING | S_BOUND => bind_again(fd, s),
            S_CONNECTION => make_dead(fd),
            _ => {}
        }
    }
}

fn bind_again(fd: i32, s: &Sock) {
    let one: i32 = 1;
    let family = u16::from_ne_bytes([s.addr[0], s.addr[1]]) as i32;
    let (level, opt) = if family == AF_INET6 {
        (SOL_IPV6, 78) // IPV6_FREEBIND
    } else {
        (SOL_IP, IP_FREEBIND)
    };
    if family == AF_INET || family == AF_INET6 {
        raw(
            SYS_setsockopt,
            [
                fd as usize,
                level as usize,
                opt as usize,
                &one as *const i32 as usize,
                4,
                0,
            ],
        );
    }
    let r = sys3(
        SYS_bind,
        fd as usize,
        s.addr.as_ptr() as usize,
        s.addr_len as usize,
    );
    if r < 0 && r != -(EINVAL as isize) {
        failed(b"cannot bind a listening socket again at takeover", fd, r);
    }
    if s.state == S_LISTENING {
        let r = sys2(SYS_listen, fd as usize, s.backlog as usize);
        if r < 0 {
            failed(b"cannot listen again at takeover", fd, r);
        }
    }
}

/// Replace `fd` by one end of a socket pair whose other end is closed,
/// keeping its descriptor flags.
fn make_dead(fd: i32) {
    let mut sv = [0i32; 2];
    let r = raw(
        SYS_socketpair,
        [
            AF_UNIX as usize,
            (SOCK_STREAM | SOCK_CLOEXEC) as usize,
            0,
            sv.as_mut_ptr() as usize,
            0,
            0,
        ],
    );
    if r < 0 {
        failed(b"cannot end a connection at takeover", fd, r);
    }
    sys1(SYS_close, sv[1] as usize);
    let cloexec = sys2(SYS_fcntl, fd as usize, F_GETFD as usize) & FD_CLOEXEC as isize != 0;
    let fl = sys2(SYS_fcntl, fd as usize, F_GETFL as usize);
    let flags = if cloexec { O_CLOEXEC } else { 0 };
    sys3(SYS_dup3, sv[0] as usize, fd as usize, flags as usize);
    sys1(SYS_close, sv[0] as usize);
    if fl >= 0 {
        sys3(
            SYS_fcntl,
            fd as usize,
            F_SETFL as usize,
            (fl as i32 & O_NONBLOCK) as usize,
        );
    }
}

fn failed(what: &[u8], fd: i32, err: isize) -> ! {
    use core::fmt::Write as _;
    let mut line = sys::Line::new();
    let _ = write!(
        line,
        "{} (descriptor {}, errno {})",
        core::str::from_utf8(what).unwrap_or("takeover failed"),
        fd,
        -err
    );
    state::fail(line.as_bytes())
}
