//! Every system call the crate makes, and all of its `unsafe` code.
//!
//! Calls go through a [`Syscalls`]: by default glibc's `syscall(2)`, or a
//! function the caller supplies (the shim passes the raw entry inside its
//! Syscall User Dispatch gate, so that the calls are not trapped). Either
//! way the thread's `errno` is left as it was found: the crate reports
//! failures as values, never through `errno`.
//!
//! Each wrapper here is safe: it builds the pointer arguments from Rust
//! references whose lifetimes cover the call.

use crate::error::{Errno, SysError};
use crate::pagemap::{PageRegion, PmScanArg, PAGEMAP_SCAN};
use crate::uffd::{
    UffdioApi, UffdioRange, UffdioRegister, UffdioWriteprotect, UFFDIO_API, UFFDIO_REGISTER,
    UFFDIO_UNREGISTER, UFFDIO_WRITEPROTECT, USERFAULTFD_IOC_NEW,
};
use core::ffi::CStr;

/// The lowest number the crate's own descriptors take (they are moved there
/// when opened): above the shim's shared-memory descriptor (1000), below
/// the usual limit of 1024.
pub const HIGH_FD: i32 = 1010;

/// A raw system call: `nr` with six arguments, returning the kernel's result
/// (a value, or `-errno`), as the `syscall` instruction does.
pub type RawSyscall = unsafe fn(nr: i64, args: [usize; 6]) -> isize;

/// How the crate enters the kernel.
#[derive(Clone, Copy)]
pub struct Syscalls {
    raw: RawSyscall,
}

impl core::fmt::Debug for Syscalls {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Syscalls")
    }
}

impl Default for Syscalls {
    fn default() -> Self {
        Self::LIBC
    }
}

/// glibc's `syscall(2)`, with `errno` saved and restored around it.
///
/// # Safety
/// As for the system call `nr` itself: pointer arguments must be valid for
/// what the kernel does with them.
unsafe fn libc_raw(nr: i64, a: [usize; 6]) -> isize {
    // SAFETY: __errno_location returns this thread's errno, valid for the
    // life of the thread.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: as above.
    let saved = unsafe { *errno };
    let [a0, a1, a2, a3, a4, a5] = a;
    // SAFETY: the caller upholds the system call's own contract.
    let ret = unsafe { libc::syscall(nr, a0, a1, a2, a3, a4, a5) };
    let out = if ret == -1 {
        // SAFETY: as above.
        (unsafe { *errno } as isize).wrapping_neg()
    } else {
        ret as isize
    };
    // SAFETY: as above.
    unsafe { *errno = saved };
    out
}

impl Syscalls {
    /// glibc's `syscall(2)`.
    pub const LIBC: Syscalls = Syscalls { raw: libc_raw };

    /// Use `raw` for every system call.
    ///
    /// # Safety
    /// `raw(nr, args)` must make system call `nr` with `args` in the calling
    /// thread, as the `syscall` instruction does, and return its result.
    pub const unsafe fn new(raw: RawSyscall) -> Self {
        Syscalls { raw }
    }

    /// Make a system call and name it in the error.
    ///
    /// # Safety
    /// Pointer arguments must be valid for what the kernel does with them
    /// during the call.
    unsafe fn call(&self, op: &'static str, nr: i64, a: [usize; 6]) -> Result<usize, SysError> {
        // SAFETY: `Syscalls::new`'s contract makes `raw` a faithful system
        // call; the caller upholds that call's own contract.
        let ret = unsafe { (self.raw)(nr, a) };
        check(op, ret)
    }

    /// `openat(AT_FDCWD, path, O_RDONLY | O_CLOEXEC)`.
    pub(crate) fn open_read(&self, op: &'static str, path: &CStr) -> Result<Fd, SysError> {
        self.open(op, path, libc::O_RDONLY)
    }

    /// `openat(AT_FDCWD, path, flags | O_CLOEXEC)`.
    pub(crate) fn open(&self, op: &'static str, path: &CStr, flags: i32) -> Result<Fd, SysError> {
        // SAFETY: `path` is NUL-terminated and outlives the call.
        let fd = unsafe {
            self.call(
                op,
                libc::SYS_openat,
                [
                    libc::AT_FDCWD as usize,
                    path.as_ptr() as usize,
                    (flags | libc::O_CLOEXEC) as usize,
                    0,
                    0,
                    0,
                ],
            )?
        };
        Ok(self.high(fd))
    }

    /// Move a descriptor the crate opened to [`HIGH_FD`] or above, out of
    /// the range a program uses: inside a replica, a descriptor number the
    /// tracker took would be one the recorded program opens later. Where
    /// the limit on descriptors is below it, the descriptor stays where it
    /// is.
    fn high(&self, fd: usize) -> Fd {
        // SAFETY: no pointer arguments; `fd` is this crate's own descriptor.
        let moved = unsafe {
            self.call(
                "fcntl(F_DUPFD_CLOEXEC)",
                libc::SYS_fcntl,
                [
                    fd,
                    libc::F_DUPFD_CLOEXEC as usize,
                    HIGH_FD as usize,
                    0,
                    0,
                    0,
                ],
            )
        };
        match moved {
            Ok(high) => {
                // SAFETY: no pointer arguments; the old number is ours and
                // no longer needed.
                let _ = unsafe { self.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0]) };
                Fd {
                    fd: high as i32,
                    sys: *self,
                }
            }
            Err(_) => Fd {
                fd: fd as i32,
                sys: *self,
            },
        }
    }

    /// `read(fd, buf)`, retried on `EINTR`.
    pub(crate) fn read(
        &self,
        op: &'static str,
        fd: &Fd,
        buf: &mut [u8],
    ) -> Result<usize, SysError> {
        loop {
            // SAFETY: `buf` is writable for `buf.len()` bytes during the call.
            let r = unsafe {
                self.call(
                    op,
                    libc::SYS_read,
                    [
                        fd.fd as usize,
                        buf.as_mut_ptr() as usize,
                        buf.len(),
                        0,
                        0,
                        0,
                    ],
                )
            };
            match r {
                Err(e) if e.errno.0 == libc::EINTR => continue,
                r => return r,
            }
        }
    }

    /// `userfaultfd(flags)`.
    pub(crate) fn userfaultfd(&self, flags: i32) -> Result<Fd, SysError> {
        // SAFETY: no pointer arguments.
        let fd = unsafe {
            self.call(
                "userfaultfd",
                libc::SYS_userfaultfd,
                [flags as usize, 0, 0, 0, 0, 0],
            )?
        };
        Ok(self.high(fd))
    }

    /// `ioctl(fd, req, arg)` with no pointer, or a pointer to `T`.
    ///
    /// # Safety
    /// `req` must be a request that reads and writes at most one `T` at `arg`.
    unsafe fn ioctl<T>(
        &self,
        op: &'static str,
        fd: &Fd,
        req: u32,
        arg: *mut T,
    ) -> Result<usize, SysError> {
        // SAFETY: `arg` is valid for one `T`, which is all `req` touches
        // (the caller's contract).
        unsafe {
            self.call(
                op,
                libc::SYS_ioctl,
                [fd.fd as usize, req as usize, arg as usize, 0, 0, 0],
            )
        }
    }

    /// `ioctl(/dev/userfaultfd, USERFAULTFD_IOC_NEW, flags)`.
    pub(crate) fn uffd_new(&self, dev: &Fd, flags: i32) -> Result<Fd, SysError> {
        // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value; the "pointer"
        // is an integer the kernel never dereferences.
        let fd = unsafe {
            self.ioctl::<u8>(
                "ioctl(USERFAULTFD_IOC_NEW)",
                dev,
                USERFAULTFD_IOC_NEW,
                flags as usize as *mut u8,
            )?
        };
        Ok(self.high(fd))
    }

    /// `ioctl(uffd, UFFDIO_API, api)`.
    pub(crate) fn uffdio_api(&self, uffd: &Fd, api: &mut UffdioApi) -> Result<(), SysError> {
        // SAFETY: UFFDIO_API reads and writes one `struct uffdio_api`.
        unsafe { self.ioctl("ioctl(UFFDIO_API)", uffd, UFFDIO_API, api as *mut UffdioApi) }
            .map(drop)
    }

    /// `ioctl(uffd, UFFDIO_REGISTER, reg)`.
    pub(crate) fn uffdio_register(
        &self,
        uffd: &Fd,
        reg: &mut UffdioRegister,
    ) -> Result<(), SysError> {
        // SAFETY: UFFDIO_REGISTER reads and writes one `struct uffdio_register`.
        unsafe {
            self.ioctl(
                "ioctl(UFFDIO_REGISTER)",
                uffd,
                UFFDIO_REGISTER,
                reg as *mut UffdioRegister,
            )
        }
        .map(drop)
    }

    /// `ioctl(uffd, UFFDIO_UNREGISTER, range)`.
    pub(crate) fn uffdio_unregister(
        &self,
        uffd: &Fd,
        range: &mut UffdioRange,
    ) -> Result<(), SysError> {
        // SAFETY: UFFDIO_UNREGISTER reads one `struct uffdio_range`.
        unsafe {
            self.ioctl(
                "ioctl(UFFDIO_UNREGISTER)",
                uffd,
                UFFDIO_UNREGISTER,
                range as *mut UffdioRange,
            )
        }
        .map(drop)
    }

    /// `ioctl(uffd, UFFDIO_WRITEPROTECT, wp)`.
    pub(crate) fn uffdio_writeprotect(
        &self,
        uffd: &Fd,
        wp: &mut UffdioWriteprotect,
    ) -> Result<(), SysError> {
        // SAFETY: UFFDIO_WRITEPROTECT reads one `struct uffdio_writeprotect`.
        unsafe {
            self.ioctl(
                "ioctl(UFFDIO_WRITEPROTECT)",
                uffd,
                UFFDIO_WRITEPROTECT,
                wp as *mut UffdioWriteprotect,
            )
        }
        .map(drop)
    }

    /// `ioctl(pagemap, PAGEMAP_SCAN, arg)` with `vec` as the output buffer
    /// (or none). Sets `arg.vec` and `arg.vec_len` from `vec`; returns the
    /// number of regions the kernel filled.
    pub(crate) fn pagemap_scan(
        &self,
        pagemap: &Fd,
        arg: &mut PmScanArg,
        vec: Option<&mut [PageRegion]>,
    ) -> Result<usize, SysError> {
        match vec {
            Some(v) => {
                arg.vec = v.as_mut_ptr() as u64;
                arg.vec_len = v.len() as u64;
            }
            None => {
                arg.vec = 0;
                arg.vec_len = 0;
            }
        }
        // SAFETY: PAGEMAP_SCAN reads and writes one `struct pm_scan_arg` and
        // writes at most `vec_len` `struct page_region`s at `vec`, which
        // point into the slice borrowed for this call (or are null and 0).
        unsafe {
            self.ioctl(
                "ioctl(PAGEMAP_SCAN)",
                pagemap,
                PAGEMAP_SCAN,
                arg as *mut PmScanArg,
            )
        }
    }

    fn close(&self, fd: i32) {
        // SAFETY: no pointer arguments; `fd` is owned by the `Fd` being dropped.
        let _ = unsafe { self.call("close", libc::SYS_close, [fd as usize, 0, 0, 0, 0, 0]) };
    }
}

/// The one place a raw result becomes a `Result`: a negative value is
/// `-errno` from the kernel, named by `op`.
pub(crate) fn check(op: &'static str, ret: isize) -> Result<usize, SysError> {
    if ret < 0 {
        Err(SysError {
            op,
            errno: Errno(ret.unsigned_abs().min(i32::MAX as usize) as i32),
        })
    } else {
        Ok(ret as usize)
    }
}

/// The page size of this process, from the auxiliary vector.
pub fn page_size() -> usize {
    // SAFETY: getauxval has no preconditions and does not fail for AT_PAGESZ
    // on Linux.
    let p = unsafe { libc::getauxval(libc::AT_PAGESZ) } as usize;
    if p == 0 {
        4096
    } else {
        p
    }
}

/// An owned descriptor, closed on drop through the same [`Syscalls`].
#[derive(Debug)]
pub struct Fd {
    fd: i32,
    sys: Syscalls,
}

impl Fd {
    /// The descriptor number.
    pub fn raw(&self) -> i32 {
        self.fd
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        self.sys.close(self.fd);
    }
}
