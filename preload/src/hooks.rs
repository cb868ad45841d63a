//! The exported libc symbols: the fast path. Thin syscall wrappers go
//! straight to the dispatch (no SIGSYS round trip); vDSO calls (clocks) make
//! no syscall at all, so only interposition sees them; pthread calls are
//! logged at the level the program sees them.

use crate::engine;
use crate::signals;
use crate::state::{self, consume, emit, expect, mode, Rec, READY};
use crate::sud::allowed;
use crate::sys::raw;
use core::sync::atomic::{AtomicUsize, Ordering};
use ferry_proto::calls::Call;
use ferry_proto::Kind;
use ferry_ring::Mode;
use libc::*;

/// Whether the calling thread should go through the shim now.
#[inline]
pub(crate) fn active() -> bool {
    let t = state::me();
    READY.load(Ordering::Relaxed) && t.in_shim.get() == 0 && t.vtid.get() != 0
}

#[inline]
fn set_errno(r: isize) -> isize {
    if (-4095..0).contains(&r) {
        // SAFETY: __errno_location returns this thread's errno.
        unsafe { *__errno_location() = -r as i32 };
        -1
    } else {
        r
    }
}

/// A syscall wrapper: the same dispatch as the SIGSYS path.
#[inline]
fn syscall_hook(nr: i64, a: [usize; 6]) -> isize {
    let t = state::me();
    if !READY.load(Ordering::Relaxed) || t.in_shim.get() != 0 || t.vtid.get() == 0 {
        return set_errno(raw(nr, a));
    }
    t.in_shim.set(1);
    let r = engine::dispatch(nr, a, core::ptr::null_mut());
    t.in_shim.set(0);
    set_errno(r)
}

macro_rules! wrap {
    ($name:ident, $nr:expr, ($($arg:ident : $ty:ty),*) -> $ret:ty) => {
        #[no_mangle]
        pub extern "C" fn $name($($arg: $ty),*) -> $ret {
            let mut a = [0usize; 6];
            let mut _i = 0;
            $( a[_i] = $arg as usize; _i += 1; )*
            syscall_hook($nr, a) as $ret
        }
    };
}

wrap!(read, SYS_read, (fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t);
wrap!(write, SYS_write, (fd: c_int, buf: *const c_void, n: size_t) -> ssize_t);
wrap!(pread64, SYS_pread64, (fd: c_int, buf: *mut c_void, n: size_t, off: off_t) -> ssize_t);
wrap!(pwrite64, SYS_pwrite64, (fd: c_int, buf: *const c_void, n: size_t, off: off_t) -> ssize_t);
wrap!(pread, SYS_pread64, (fd: c_int, buf: *mut c_void, n: size_t, off: off_t) -> ssize_t);
wrap!(pwrite, SYS_pwrite64, (fd: c_int, buf: *const c_void, n: size_t, off: off_t) -> ssize_t);
wrap!(readv, SYS_readv, (fd: c_int, iov: *const iovec, n: c_int) -> ssize_t);
wrap!(writev, SYS_writev, (fd: c_int, iov: *const iovec, n: c_int) -> ssize_t);
wrap!(recvfrom, SYS_recvfrom, (fd: c_int, buf: *mut c_void, n: size_t, fl: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t);
wrap!(sendto, SYS_sendto, (fd: c_int, buf: *const c_void, n: size_t, fl: c_int, addr: *const sockaddr, len: socklen_t) -> ssize_t);
wrap!(recvmsg, SYS_recvmsg, (fd: c_int, msg: *mut msghdr, fl: c_int) -> ssize_t);
wrap!(sendmsg, SYS_sendmsg, (fd: c_int, msg: *const msghdr, fl: c_int) -> ssize_t);
wrap!(close, SYS_close, (fd: c_int) -> c_int);
wrap!(getrandom, SYS_getrandom, (buf: *mut c_void, n: size_t, fl: c_uint) -> ssize_t);

/// Calls that only the safety net can handle, because it has the whole
/// register state of the instruction that made them: a new thread's or a
/// child's stack (`clone`, `vfork`…), a signal's return. `syscall()` leaves
/// them to libc's, whose `syscall` instruction the net catches.
fn needs_context(nr: c_long) -> bool {
    matches!(
        nr,
        SYS_clone | SYS_clone3 | SYS_fork | SYS_vfork | SYS_rt_sigreturn
    )
}

/// `syscall(2)`, as the other wrappers: without it every call a program
/// makes through `syscall()` (Rust's and Go's locks wait on futexes this
/// way) would reach the shim as a trap, a signal delivered and returned
/// from, some microseconds each. Declared with six arguments after the
/// number: on x86_64 a variadic call passes integers in the same registers
/// (the sixth on the stack), and the kernel ignores those a call does not
/// take.
#[no_mangle]
pub extern "C" fn syscall(
    nr: c_long,
    a1: c_long,
    a2: c_long,
    a3: c_long,
    a4: c_long,
    a5: c_long,
    a6: c_long,
) -> c_long {
    if needs_context(nr) {
        let f = real!(
            REAL_SYSCALL,
            fn(c_long, c_long, c_long, c_long, c_long, c_long, c_long) -> c_long
        );
        return f(nr, a1, a2, a3, a4, a5, a6);
    }
    let a = [a1, a2, a3, a4, a5, a6].map(|v| v as usize);
    syscall_hook(nr, a) as c_long
}

#[no_mangle]
pub extern "C" fn recv(fd: c_int, buf: *mut c_void, n: size_t, fl: c_int) -> ssize_t {
    recvfrom(fd, buf, n, fl, core::ptr::null_mut(), core::ptr::null_mut())
}

#[no_mangle]
pub extern "C" fn send(fd: c_int, buf: *const c_void, n: size_t, fl: c_int) -> ssize_t {
    sendto(fd, buf, n, fl, core::ptr::null(), 0)
}

#[no_mangle]
pub extern "C" fn getpid() -> pid_t {
    if !active() || !matches!(mode(), Some(Mode::Record) | Some(Mode::Replay)) {
        if let Some(shown) = crate::ckpt::shown_pid() {
            return shown as pid_t;
        }
        return raw(SYS_getpid, [0; 6]) as pid_t;
    }
    state::MY_VPID.load(Ordering::Relaxed) as pid_t
}

#[no_mangle]
pub extern "C" fn gettid() -> pid_t {
    if !active() || !matches!(mode(), Some(Mode::Record) | Some(Mode::Replay)) {
        if crate::ckpt::shown_pid().is_some() {
            return crate::ckpt::shown_tid() as pid_t;
        }
        return raw(SYS_gettid, [0; 6]) as pid_t;
    }
    state::vtid() as pid_t
}

/// Real libc functions, found once with `dlsym(RTLD_NEXT)`.
pub struct Real {
    name: &'static [u8],
    version: &'static [u8],
    addr: AtomicUsize,
}

impl Real {
    const fn new(name: &'static [u8]) -> Real {
        Real {
            name,
            version: b"\0",
            addr: AtomicUsize::new(0),
        }
    }
    pub const fn versioned(name: &'static [u8], version: &'static [u8]) -> Real {
        Real {
            name,
            version,
            addr: AtomicUsize::new(0),
        }
    }
    /// The function's address (resolved on first use).
    pub fn get(&self) -> usize {
        let a = self.addr.load(Ordering::Relaxed);
        if a != 0 {
            return a;
        }
        let a = allowed(|| {
            // SAFETY: both names are NUL-terminated constants.
            unsafe {
                let mut p = core::ptr::null_mut();
                if self.version.len() > 1 {
                    p = dlvsym(
                        RTLD_NEXT,
                        self.name.as_ptr() as *const c_char,
                        self.version.as_ptr() as *const c_char,
                    );
                }
                if p.is_null() {
                    p = dlsym(RTLD_NEXT, self.name.as_ptr() as *const c_char);
                }
                p as usize
            }
        });
        if a == 0 {
            state::fail(b"a libc function the shim needs is missing");
        }
        self.addr.store(a, Ordering::Relaxed);
        a
    }
}

pub static REAL_CLOCK_GETTIME: Real = Real::new(b"clock_gettime\0");
static REAL_SYSCALL: Real = Real::new(b"syscall\0");
pub static REAL_GETTIMEOFDAY: Real = Real::new(b"gettimeofday\0");
pub static REAL_TIME: Real = Real::new(b"time\0");
static REAL_MUTEX_LOCK: Real = Real::new(b"pthread_mutex_lock\0");
static REAL_MUTEX_TRYLOCK: Real = Real::new(b"pthread_mutex_trylock\0");
static REAL_MUTEX_TIMEDLOCK: Real = Real::new(b"pthread_mutex_timedlock\0");
static REAL_MUTEX_UNLOCK: Real = Real::new(b"pthread_mutex_unlock\0");
static REAL_COND_WAIT: Real = Real::versioned(b"pthread_cond_wait\0", b"GLIBC_2.3.2\0");
static REAL_COND_TIMEDWAIT: Real = Real::versioned(b"pthread_cond_timedwait\0", b"GLIBC_2.3.2\0");
static REAL_RDLOCK: Real = Real::new(b"pthread_rwlock_rdlock\0");
static REAL_WRLOCK: Real = Real::new(b"pthread_rwlock_wrlock\0");
static REAL_TRYRDLOCK: Real = Real::new(b"pthread_rwlock_tryrdlock\0");
static REAL_TRYWRLOCK: Real = Real::new(b"pthread_rwlock_trywrlock\0");
static REAL_SEM_WAIT: Real = Real::new(b"sem_wait\0");
static REAL_SEM_TRYWAIT: Real = Real::new(b"sem_trywait\0");
static REAL_SEM_TIMEDWAIT: Real = Real::new(b"sem_timedwait\0");

/// Resolve every real function now, before the program runs (so that no
/// lookup happens later inside a hook).
pub fn resolve_all() {
    for r in [
        &REAL_CLOCK_GETTIME,
        &REAL_SYSCALL,
        &REAL_GETTIMEOFDAY,
        &REAL_TIME,
        &REAL_MUTEX_LOCK,
        &REAL_MUTEX_TRYLOCK,
        &REAL_MUTEX_TIMEDLOCK,
        &REAL_MUTEX_UNLOCK,
        &REAL_COND_WAIT,
        &REAL_COND_TIMEDWAIT,
        &REAL_RDLOCK,
        &REAL_WRLOCK,
        &REAL_TRYRDLOCK,
        &REAL_TRYWRLOCK,
        &REAL_SEM_WAIT,
        &REAL_SEM_TRYWAIT,
        &REAL_SEM_TIMEDWAIT,
    ] {
        r.get();
    }
    crate::threads::resolve();
}

macro_rules! real {
    ($r:expr, fn($($t:ty),* $(,)?) -> $ret:ty) => {{
        let a = $r.get();
        // SAFETY: `a` is the address of the libc function of this signature.
        unsafe { core::mem::transmute::<usize, extern "C" fn($($t),*) -> $ret>(a) }
    }};
}
pub(crate) use real;

/// A vDSO-backed input (clocks): record calls the real function.
fn vdso_input(nr: i64, a: [usize; 6], exec: impl FnOnce() -> isize) -> isize {
    match mode() {
        Some(Mode::Record) | Some(Mode::Replay) if active() => {
            state::me().in_shim.set(1);
            signals::on_entry();
            let r = engine::logged_with(nr, a, mode() == Some(Mode::Record), || allowed(exec));
            signals::on_exit();
            state::me().in_shim.set(0);
            r
        }
        _ => allowed(exec),
    }
}

/// A libc result (0, or -1 with errno) as a syscall result (0 or -errno).
fn neg_errno(r: c_int) -> isize {
    if r == 0 {
        0
    } else {
        // SAFETY: errno is this thread's.
        -(unsafe { *__errno_location() }) as isize
    }
}

#[no_mangle]
pub extern "C" fn clock_gettime(clk: clockid_t, ts: *mut timespec) -> c_int {
    let f = real!(REAL_CLOCK_GETTIME, fn(clockid_t, *mut timespec) -> c_int);
    let r = vdso_input(
        SYS_clock_gettime,
        [clk as usize, ts as usize, 0, 0, 0, 0],
        || neg_errno(f(clk, ts)),
    );
    set_errno(r) as c_int
}

#[no_mangle]
pub extern "C" fn gettimeofday(tv: *mut timeval, tz: *mut c_void) -> c_int {
    let f = real!(REAL_GETTIMEOFDAY, fn(*mut timeval, *mut c_void) -> c_int);
    let r = vdso_input(
        SYS_gettimeofday,
        [tv as usize, tz as usize, 0, 0, 0, 0],
        || neg_errno(f(tv, tz)),
    );
    set_errno(r) as c_int
}

#[no_mangle]
pub extern "C" fn time(t: *mut time_t) -> time_t {
    let f = real!(REAL_TIME, fn(*mut time_t) -> time_t);
    vdso_input(SYS_time, [t as usize, 0, 0, 0, 0, 0], || f(t) as isize) as time_t
}

/// A blocking synchronisation call, logged in the order the program passed
/// it. Record runs `exec`; replay waits for its turn, then `again` makes the
/// recorded outcome real (takes the lock the recording got).
fn sync_op(
    call: Call,
    obj: usize,
    exec: impl FnOnce() -> c_int,
    again: impl FnOnce(c_int),
) -> c_int {
    if !active() || !matches!(mode(), Some(Mode::Record) | Some(Mode::Replay)) {
        return allowed(exec);
    }
    state::me().in_shim.set(1);
    let rec = state::effective_mode() == Some(Mode::Record);
    signals::on_entry();
    let r = if rec {
        let r = allowed(exec);
        emit(
            Rec {
                kind: Kind::Call,
                flags: 0,
                nr: call as u32,
                ret: r as i64,
                arg0: obj as u64,
                arg1: 0,
            },
            &[],
        );
        r
    } else {
        let h = expect(Kind::Call, call as u32, Some(obj as u64), None);
        let r = h.ret as c_int;
        allowed(|| again(r));
        consume(&h);
        r
    };
    signals::on_exit();
    state::me().in_shim.set(0);
    r
}

/// A mutex acquisition: record runs `exec`; replay takes the mutex for real
/// when the recording got it.
fn mutex_op(m: *mut pthread_mutex_t, exec: impl FnOnce() -> c_int) -> c_int {
    let lock = real!(REAL_MUTEX_LOCK, fn(*mut pthread_mutex_t) -> c_int);
    sync_op(Call::MutexLock, m as usize, exec, |r| {
        if r == 0 {
            lock(m);
        }
    })
}

#[no_mangle]
pub extern "C" fn pthread_mutex_lock(m: *mut pthread_mutex_t) -> c_int {
    let f = real!(REAL_MUTEX_LOCK, fn(*mut pthread_mutex_t) -> c_int);
    mutex_op(m, || f(m))
}

#[no_mangle]
pub extern "C" fn pthread_mutex_trylock(m: *mut pthread_mutex_t) -> c_int {
    let f = real!(REAL_MUTEX_TRYLOCK, fn(*mut pthread_mutex_t) -> c_int);
    mutex_op(m, || f(m))
}

#[no_mangle]
pub extern "C" fn pthread_mutex_timedlock(m: *mut pthread_mutex_t, t: *const timespec) -> c_int {
    let f = real!(
        REAL_MUTEX_TIMEDLOCK,
        fn(*mut pthread_mutex_t, *const timespec) -> c_int
    );
    mutex_op(m, || f(m, t))
}

/// Replay of a condition wait: release the mutex, wait for the turn the
/// recording had, take the mutex again. The real condition variable is not
/// used: the log says when the wait ended.
fn cond_op(c: usize, m: *mut pthread_mutex_t, exec: impl FnOnce() -> c_int) -> c_int {
    let unlock = real!(REAL_MUTEX_UNLOCK, fn(*mut pthread_mutex_t) -> c_int);
    let lock = real!(REAL_MUTEX_LOCK, fn(*mut pthread_mutex_t) -> c_int);
    if active() && mode() == Some(Mode::Replay) {
        allowed(|| unlock(m));
    }
    sync_op(Call::CondWait, c, exec, |_| {
        lock(m);
    })
}

#[no_mangle]
pub extern "C" fn pthread_cond_wait(c: *mut pthread_cond_t, m: *mut pthread_mutex_t) -> c_int {
    let f = real!(
        REAL_COND_WAIT,
        fn(*mut pthread_cond_t, *mut pthread_mutex_t) -> c_int
    );
    cond_op(c as usize, m, || f(c, m))
}

#[no_mangle]
pub extern "C" fn pthread_cond_timedwait(
    c: *mut pthread_cond_t,
    m: *mut pthread_mutex_t,
    t: *const timespec,
) -> c_int {
    let f = real!(
        REAL_COND_TIMEDWAIT,
        fn(*mut pthread_cond_t, *mut pthread_mutex_t, *const timespec) -> c_int
    );
    cond_op(c as usize, m, || f(c, m, t))
}

macro_rules! rwlock_hook {
    ($name:ident, $real:expr, $call:expr, $block:expr) => {
        #[no_mangle]
        pub extern "C" fn $name(l: *mut pthread_rwlock_t) -> c_int {
            let f = real!($real, fn(*mut pthread_rwlock_t) -> c_int);
            let b = real!($block, fn(*mut pthread_rwlock_t) -> c_int);
            sync_op(
                $call,
                l as usize,
                || f(l),
                |r| {
                    if r == 0 {
                        b(l);
                    }
                },
            )
        }
    };
}

rwlock_hook!(
    pthread_rwlock_rdlock,
    REAL_RDLOCK,
    Call::RwlockRead,
    REAL_RDLOCK
);
rwlock_hook!(
    pthread_rwlock_wrlock,
    REAL_WRLOCK,
    Call::RwlockWrite,
    REAL_WRLOCK
);
rwlock_hook!(
    pthread_rwlock_tryrdlock,
    REAL_TRYRDLOCK,
    Call::RwlockRead,
    REAL_RDLOCK
);
rwlock_hook!(
    pthread_rwlock_trywrlock,
    REAL_TRYWRLOCK,
    Call::RwlockWrite,
    REAL_WRLOCK
);

/// Semaphores return -1 and set errno; the log keeps `-errno`.
fn sem_op(s: *mut sem_t, exec: impl FnOnce() -> c_int) -> c_int {
    let wait = real!(REAL_SEM_WAIT, fn(*mut sem_t) -> c_int);
    let r = sync_op(
        Call::SemWait,
        s as usize,
        || neg_errno(exec()) as c_int,
        |r| {
            if r == 0 {
                wait(s);
            }
        },
    );
    set_errno(r as isize) as c_int
}

#[no_mangle]
pub extern "C" fn sem_wait(s: *mut sem_t) -> c_int {
    let f = real!(REAL_SEM_WAIT, fn(*mut sem_t) -> c_int);
    sem_op(s, || f(s))
}

#[no_mangle]
pub extern "C" fn sem_trywait(s: *mut sem_t) -> c_int {
    let f = real!(REAL_SEM_TRYWAIT, fn(*mut sem_t) -> c_int);
    sem_op(s, || f(s))
}

#[no_mangle]
pub extern "C" fn sem_timedwait(s: *mut sem_t, t: *const timespec) -> c_int {
    let f = real!(REAL_SEM_TIMEDWAIT, fn(*mut sem_t, *const timespec) -> c_int);
    sem_op(s, || f(s, t))
}
