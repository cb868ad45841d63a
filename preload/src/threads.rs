//! Threads: `pthread_create` gives each new thread a virtual tid in the
//! recorded order and switches the safety net on in it; `pthread_join` is
//! logged where the program saw it return.

use crate::hooks::{real, Real};
use crate::signals;
use crate::state::{self, consume, emit, expect, lock, mode, reg, unlock, Rec};
use crate::sud::{self, allowed};
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use ferry_proto::calls::Call;
use ferry_proto::Kind;
use ferry_ring::Mode;
use libc::*;

static REAL_CREATE: Real = Real::versioned(b"pthread_create\0", b"GLIBC_2.34\0");
static REAL_JOIN: Real = Real::versioned(b"pthread_join\0", b"GLIBC_2.34\0");

/// Resolve the real functions at init.
pub fn resolve() {
    REAL_CREATE.get();
    REAL_JOIN.get();
}

/// A hand-off from `pthread_create` to the new thread (no allocation: a
/// fixed pool of slots).
struct Start {
    busy: AtomicU32,
    func: AtomicUsize,
    arg: AtomicUsize,
    vtid: AtomicU32,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Start = Start {
    busy: AtomicU32::new(0),
    func: AtomicUsize::new(0),
    arg: AtomicUsize::new(0),
    vtid: AtomicU32::new(0),
};
static STARTS: [Start; 256] = [FREE; 256];

fn claim(func: usize, arg: usize, vtid: u32) -> Option<usize> {
    for _ in 0..1000 {
        for (i, s) in STARTS.iter().enumerate() {
            if s.busy
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                s.func.store(func, Ordering::Relaxed);
                s.arg.store(arg, Ordering::Relaxed);
                s.vtid.store(vtid, Ordering::Release);
                return Some(i);
            }
        }
        core::hint::spin_loop();
    }
    None
}

extern "C" fn thread_start(slot: *mut c_void) -> *mut c_void {
    let s = &STARTS[slot as usize];
    let func = s.func.load(Ordering::Acquire);
    let arg = s.arg.load(Ordering::Relaxed);
    let vtid = s.vtid.load(Ordering::Relaxed);
    s.busy.store(0, Ordering::Release);
    state::check_tls_offset();
    state::me().vtid.set(vtid);
    sud::enable_thread();
    // SAFETY: `func` is the start routine the program passed to
    // pthread_create.
    let f: extern "C" fn(*mut c_void) -> *mut c_void = unsafe { core::mem::transmute(func) };
    f(arg as *mut c_void)
}

type CreateFn = fn(
    *mut pthread_t,
    *const pthread_attr_t,
    extern "C" fn(*mut c_void) -> *mut c_void,
    *mut c_void,
) -> c_int;

#[no_mangle]
pub extern "C" fn pthread_create(
    t: *mut pthread_t,
    attr: *const pthread_attr_t,
    func: extern "C" fn(*mut c_void) -> *mut c_void,
    arg: *mut c_void,
) -> c_int {
    let create = real!(
        REAL_CREATE,
        fn(
            *mut pthread_t,
            *const pthread_attr_t,
            extern "C" fn(*mut c_void) -> *mut c_void,
            *mut c_void,
        ) -> c_int
    );
    let _: Option<CreateFn> = None;
    let on = crate::hooks::active();
    if !on || mode().is_none() {
        return allowed(|| create(t, attr, func, arg));
    }
    state::me().in_shim.set(1);
    let m = state::effective_mode();
    signals::on_entry();
    let r = match m {
        Some(Mode::Record) => {
            // Under the ordering lock: the new thread's stack is mapped by
            // libc at the same point of the order in both modes.
            lock();
            let vtid = reg().control().next_vid.fetch_add(1, Ordering::AcqRel);
            let r = match claim(func as usize, arg as usize, vtid) {
                Some(slot) => {
                    let r = allowed(|| create(t, attr, thread_start, slot as *mut c_void));
                    if r != 0 {
                        STARTS[slot].busy.store(0, Ordering::Release);
                    }
                    r
                }
                None => EAGAIN,
            };
            emit(
                Rec {
                    kind: Kind::Call,
                    flags: 0,
                    nr: Call::ThreadCreate as u32,
                    ret: r as i64,
                    arg0: vtid as u64,
                    arg1: 0,
                },
                &[],
            );
            unlock();
            r
        }
        Some(Mode::Replay) => {
            let h = expect(Kind::Call, Call::ThreadCreate as u32, None, None);
            let r = h.ret as c_int;
            if r == 0 {
                reg()
                    .control()
                    .next_vid
                    .fetch_max(h.arg0 as u32 + 1, Ordering::AcqRel);
                let Some(slot) = claim(func as usize, arg as usize, h.arg0 as u32) else {
                    state::diverge_msg(&h, format_args!("no room to start a thread"));
                };
                let got = allowed(|| create(t, attr, thread_start, slot as *mut c_void));
                if got != 0 {
                    state::diverge_msg(
                        &h,
                        format_args!("pthread_create failed in replay ({})", got),
                    );
                }
            }
            consume(&h);
            r
        }
        _ => allowed(|| create(t, attr, func, arg)),
    };
    signals::on_exit();
    state::me().in_shim.set(0);
    r
}

#[no_mangle]
pub extern "C" fn pthread_join(t: pthread_t, ret: *mut *mut c_void) -> c_int {
    let join = real!(REAL_JOIN, fn(pthread_t, *mut *mut c_void) -> c_int);
    let on = crate::hooks::active();
    if !on || !matches!(mode(), Some(Mode::Record) | Some(Mode::Replay)) {
        return allowed(|| join(t, ret));
    }
    state::me().in_shim.set(1);
    let rec = state::effective_mode() == Some(Mode::Record);
    signals::on_entry();
    let r = if rec {
        let r = allowed(|| join(t, ret));
        emit(
            Rec {
                kind: Kind::Call,
                flags: 0,
                nr: Call::ThreadJoin as u32,
                ret: r as i64,
                arg0: 0,
                arg1: 0,
            },
            &[],
        );
        r
    } else {
        let h = expect(Kind::Call, Call::ThreadJoin as u32, None, None);
        if h.ret == 0 {
            // The joined thread logged everything before this record; it
            // ends without needing another turn.
            allowed(|| join(t, ret));
        }
        consume(&h);
        h.ret as c_int
    };
    signals::on_exit();
    state::me().in_shim.set(0);
    r
}
