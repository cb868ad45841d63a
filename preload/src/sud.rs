//! The safety net: Syscall User Dispatch sends every syscall made outside
//! the gate (libc's internal calls, raw `syscall` instructions) to a SIGSYS
//! handler that runs it through the same dispatch as the exported wrappers.
//! Neither threads nor forked children inherit it: each is switched on again
//! (`enable_thread`), and an exec clears it (the new image's init).

use crate::engine;
use crate::state;
use crate::sys::{self, raw};
use libc::*;

const PR_SET_SYSCALL_USER_DISPATCH: usize = 59;
const PR_SYS_DISPATCH_ON: usize = 1;
/// Selector values.
pub const ALLOW: u8 = 0;
pub const BLOCK: u8 = 1;

/// Install the SIGSYS handler, returning through the gate's restorer.
pub fn install_handler() {
    sys::install_shim_handler(SIGSYS, on_sigsys, SA_NODEFER, 0);
}

/// Switch dispatch on for the calling thread.
pub fn enable_thread() {
    let (start, end) = sys::gate();
    let sel = state::me().selector.as_ptr() as usize;
    state::me().selector.set(BLOCK);
    let r = raw(
        SYS_prctl,
        [
            PR_SET_SYSCALL_USER_DISPATCH,
            PR_SYS_DISPATCH_ON,
            start,
            end - start,
            sel,
            0,
        ],
    );
    if r < 0 {
        state::me().selector.set(ALLOW);
        crate::state::fail(b"Syscall User Dispatch is not available (Linux >= 5.11 needed)");
    }
}

/// Run `f` with dispatch allowed (calling into libc from the shim).
#[inline]
pub fn allowed<R>(f: impl FnOnce() -> R) -> R {
    let old = state::me().selector.replace(ALLOW);
    let r = f();
    state::me().selector.set(old);
    r
}

extern "C" fn on_sigsys(_sig: i32, info: *mut siginfo_t, ctx: *mut c_void) {
    let uc = ctx as *mut ucontext_t;
    // SAFETY: the kernel passes a valid ucontext and a SIGSYS siginfo, whose
    // `_syscall` field is the i32 at offset 24.
    let (nr, a) = unsafe {
        let g = &(*uc).uc_mcontext.gregs;
        let nr = *((info as *const u8).add(24) as *const i32) as i64;
        let a = [
            g[REG_RDI as usize] as usize,
            g[REG_RSI as usize] as usize,
            g[REG_RDX as usize] as usize,
            g[REG_R10 as usize] as usize,
            g[REG_R8 as usize] as usize,
            g[REG_R9 as usize] as usize,
        ];
        (nr, a)
    };
    let t = state::me();
    let ret = if t.in_shim.get() != 0 {
        raw(nr, a)
    } else {
        t.in_shim.set(1);
        let r = engine::dispatch(nr, a, uc);
        t.in_shim.set(0);
        r
    };
    // SAFETY: as above; rax carries the syscall's result back.
    unsafe { (*uc).uc_mcontext.gregs[REG_RAX as usize] = ret as i64 };
}
