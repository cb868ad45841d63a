//! Ending on SIGTERM and SIGINT with exit status 0. The standard library
//! has no signal API, so this module declares the four C library functions
//! it needs; it is the crate's only unsafe code.
//!
//! [`block_termination`] blocks both signals in the calling thread before
//! any other thread starts (threads inherit the mask), and
//! [`wait_termination`] takes them synchronously with `sigwait` in a thread
//! of its own: no signal handler runs, and nothing is interrupted.

use std::io;
use std::os::raw::c_int;

const SIG_BLOCK: c_int = 0;
const SIGINT: c_int = 2;
const SIGTERM: c_int = 15;
const EINTR: c_int = 4;

/// The C library's `sigset_t` (1024 bits on Linux).
#[repr(C)]
struct SigSet {
    bits: [u64; 16],
}

extern "C" {
    fn sigemptyset(set: *mut SigSet) -> c_int;
    fn sigaddset(set: *mut SigSet, signum: c_int) -> c_int;
    fn pthread_sigmask(how: c_int, set: *const SigSet, old: *mut SigSet) -> c_int;
    fn sigwait(set: *const SigSet, sig: *mut c_int) -> c_int;
}

fn termination_set() -> SigSet {
    let mut set = SigSet { bits: [0; 16] };
    // SAFETY: `set` is a valid, writable sigset_t-sized buffer; the calls
    // only write inside it, and cannot fail for these signal numbers.
    unsafe {
        sigemptyset(&mut set);
        sigaddset(&mut set, SIGTERM);
        sigaddset(&mut set, SIGINT);
    }
    set
}

/// Block SIGTERM and SIGINT in the calling thread, and so in every thread it
/// starts afterwards. Call it first thing in `main`.
pub fn block_termination() -> io::Result<()> {
    let set = termination_set();
    // SAFETY: `set` is an initialised sigset_t; a null old set is allowed.
    let rc = unsafe { pthread_sigmask(SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Which signal ended the wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Termination {
    Term,
    Interrupt,
}

/// Wait until SIGTERM or SIGINT arrives (they must be blocked, see
/// [`block_termination`]).
pub fn wait_termination() -> io::Result<Termination> {
    let set = termination_set();
    loop {
        let mut sig: c_int = 0;
        // SAFETY: `set` is an initialised sigset_t and `sig` a writable int.
        let rc = unsafe { sigwait(&set, &mut sig) };
        match (rc, sig) {
            (0, SIGTERM) => return Ok(Termination::Term),
            (0, SIGINT) => return Ok(Termination::Interrupt),
            // Another signal, or EINTR.
            (0 | EINTR, _) => continue,
            (e, _) => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}
