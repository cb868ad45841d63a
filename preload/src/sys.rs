//! Raw system calls and the gate.
//!
//! Syscall User Dispatch lets every syscall made from one address range
//! through, and sends every other one to our SIGSYS handler. That range is the
//! *gate*: the few instructions below, in a section of their own. Every
//! syscall the shim makes goes through `ferry_syscall6` in the gate, and every
//! signal handler returns through `ferry_restorer`, also in the gate (a
//! `rt_sigreturn` made from libc's restorer would itself be trapped).

use core::arch::global_asm;

global_asm!(
    ".pushsection .text.ferry_gate,\"ax\",@progbits",
    ".balign 16",
    ".globl ferry_gate_start",
    ".hidden ferry_gate_start",
    "ferry_gate_start:",
    ".globl ferry_syscall6",
    ".hidden ferry_syscall6",
    ".type ferry_syscall6,@function",
    "ferry_syscall6:",
    "    mov rax, rdi",
    "    mov rdi, rsi",
    "    mov rsi, rdx",
    "    mov rdx, rcx",
    "    mov r10, r8",
    "    mov r8, r9",
    "    mov r9, [rsp + 8]",
    "    syscall",
    "    ret",
    ".size ferry_syscall6, . - ferry_syscall6",
    ".balign 16",
    ".globl ferry_restorer",
    ".hidden ferry_restorer",
    ".type ferry_restorer,@function",
    "ferry_restorer:",
    "    mov rax, 15",
    "    syscall",
    "    ud2",
    ".size ferry_restorer, . - ferry_restorer",
    ".globl ferry_gate_end",
    ".hidden ferry_gate_end",
    "ferry_gate_end:",
    "    nop",
    ".popsection",
);

extern "C" {
    fn ferry_syscall6(
        nr: usize,
        a0: usize,
        a1: usize,
        a2: usize,
        a3: usize,
        a4: usize,
        a5: usize,
    ) -> isize;
    /// The `sa_restorer` of every handler the shim installs.
    pub fn ferry_restorer();
    static ferry_gate_start: u8;
    static ferry_gate_end: u8;
}

/// The gate's address range `[start, end)`.
pub fn gate() -> (usize, usize) {
    // SAFETY: only the addresses of the two linker symbols are taken.
    unsafe {
        (
            &ferry_gate_start as *const u8 as usize,
            &ferry_gate_end as *const u8 as usize,
        )
    }
}

/// Make system call `nr` from inside the gate. Returns the kernel's result:
/// a value, or `-errno`.
#[inline]
pub fn raw(nr: i64, a: [usize; 6]) -> isize {
    // SAFETY: a system call has no memory-safety preconditions of its own at
    // this level; callers pass pointers that are valid for the call, as libc
    // would (they come from the program or from the shim's own buffers).
    unsafe { ferry_syscall6(nr as usize, a[0], a[1], a[2], a[3], a[4], a[5]) }
}

/// `SA_RESTORER`, which the libc crate does not export.
pub const SA_RESTORER: i32 = 0x0400_0000;

/// Shorthands.
#[inline]
pub fn sys0(nr: i64) -> isize {
    raw(nr, [0; 6])
}
#[inline]
pub fn sys1(nr: i64, a: usize) -> isize {
    raw(nr, [a, 0, 0, 0, 0, 0])
}
#[inline]
pub fn sys2(nr: i64, a: usize, b: usize) -> isize {
    raw(nr, [a, b, 0, 0, 0, 0])
}
#[inline]
pub fn sys3(nr: i64, a: usize, b: usize, c: usize) -> isize {
    raw(nr, [a, b, c, 0, 0, 0])
}
/// Write all of `bytes` to `fd`, for the shim's own messages.
pub fn write_all(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let n = sys3(
            libc::SYS_write,
            fd as usize,
            bytes.as_ptr() as usize,
            bytes.len(),
        );
        if n == -(libc::EINTR as isize) {
            continue;
        }
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// The calling thread's real tid.
pub fn gettid() -> u32 {
    sys0(libc::SYS_gettid) as u32
}

/// The calling process's real pid.
pub fn getpid() -> u32 {
    sys0(libc::SYS_getpid) as u32
}

/// Terminate the whole process now.
pub fn exit_group(code: i32) -> ! {
    sys1(libc::SYS_exit_group, code as usize);
    // SAFETY: exit_group does not return.
    unsafe { core::hint::unreachable_unchecked() }
}

/// FUTEX_WAIT on a word shared between processes.
pub fn futex_wait(word: &core::sync::atomic::AtomicU32, expected: u32, timeout_ms: Option<u32>) {
    let ts;
    let tsp = match timeout_ms {
        Some(ms) => {
            ts = libc::timespec {
                tv_sec: (ms / 1000) as i64,
                tv_nsec: ((ms % 1000) as i64) * 1_000_000,
            };
            &ts as *const libc::timespec as usize
        }
        None => 0,
    };
    raw(
        libc::SYS_futex,
        [
            word.as_ptr() as usize,
            libc::FUTEX_WAIT as usize,
            expected as usize,
            tsp,
            0,
            0,
        ],
    );
}

/// FUTEX_WAKE of up to `n` waiters on a shared word.
pub fn futex_wake(word: &core::sync::atomic::AtomicU32, n: u32) {
    raw(
        libc::SYS_futex,
        [
            word.as_ptr() as usize,
            libc::FUTEX_WAKE as usize,
            n as usize,
            0,
            0,
            0,
        ],
    );
}

/// The ring's futex, through the gate.
pub struct GateFutex;

impl ferry_ring::Futex for GateFutex {
    fn wait(&self, word: &core::sync::atomic::AtomicU32, expected: u32, timeout_ms: Option<u32>) {
        futex_wait(word, expected, timeout_ms)
    }
    fn wake_all(&self, word: &core::sync::atomic::AtomicU32) {
        futex_wake(word, i32::MAX as u32)
    }
}

/// A fixed-size line buffer for messages, without allocating.
pub struct Line {
    buf: [u8; 900],
    len: usize,
}

impl Line {
    /// An empty line.
    pub const fn new() -> Line {
        Line {
            buf: [0; 900],
            len: 0,
        }
    }
    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// The kernel's `struct sigaction` (x86_64).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct KSigaction {
    pub handler: usize,
    pub flags: u64,
    pub restorer: usize,
    pub mask: u64,
}

/// Install one of the shim's own handlers for `sig` (`SA_SIGINFO`, returning
/// through the shim's restorer), with `flags` added and `mask` blocked
/// while it runs.
pub fn install_shim_handler(
    sig: i32,
    handler: extern "C" fn(i32, *mut libc::siginfo_t, *mut core::ffi::c_void),
    flags: i32,
    mask: u64,
) {
    let act = KSigaction {
        handler: handler as *const () as usize,
        flags: (libc::SA_SIGINFO | SA_RESTORER | flags) as u64,
        restorer: ferry_restorer as *const () as usize,
        mask,
    };
    raw(
        libc::SYS_rt_sigaction,
        [sig as usize, &act as *const _ as usize, 0, 8, 0, 0],
    );
}
