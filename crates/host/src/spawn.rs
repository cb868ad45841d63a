//! Starting the program: `fork`, set up the child exactly as the shim expects
//! it, `execve`. Everything the child does between `fork` and `execve` is
//! async-signal-safe: every string and pointer array is built before `fork`,
//! and a failure is sent back to the parent as two integers over a
//! close-on-exec pipe.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::Ordering;

use ferry_ring::{Region, REGION_FD};
use libc::{c_char, c_int};

use crate::sys::{check, wait_for, IgnoredSignals, SysError};

/// Why the program could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// An argument, environment entry or path holds a NUL byte.
    #[error("{what} contains a NUL byte and cannot be passed to the program")]
    Nul {
        /// Which string.
        what: String,
    },
    /// A system call of the parent failed.
    #[error("cannot start the program: {0}")]
    Sys(#[from] SysError),
    /// The child could not turn address-space randomisation off.
    #[error("cannot turn address-space randomisation off (personality): {0}")]
    Personality(#[source] io::Error),
    /// The child could not put the region at its descriptor number.
    #[error("cannot pass the shared region to the program at descriptor {REGION_FD}: {0}")]
    RegionFd(#[source] io::Error),
    /// The child could not restore its signal dispositions.
    #[error("cannot reset the program's signal dispositions: {0}")]
    Signals(#[source] io::Error),
    /// The child could not enter the working directory.
    #[error("cannot enter the recorded working directory {dir}: {source}")]
    Chdir {
        /// The directory.
        dir: String,
        /// The OS error.
        source: io::Error,
    },
    /// The standard streams could not be set up.
    #[error("cannot set up the program's standard streams: {0}")]
    Stdio(#[source] io::Error),
    /// `execve` failed.
    #[error("{cmd}: {source}")]
    Exec {
        /// The command as typed.
        cmd: String,
        /// The OS error.
        source: io::Error,
    },
}

const STAGE_PERSONALITY: i32 = 1;
const STAGE_REGION_FD: i32 = 2;
const STAGE_SIGNALS: i32 = 3;
const STAGE_CHDIR: i32 = 4;
const STAGE_EXEC: i32 = 5;
const STAGE_STDIO: i32 = 6;

/// Where the child's standard streams go, and its process group.
#[derive(Debug, Default)]
pub struct Stdio {
    /// Standard output and standard error; standard input becomes
    /// `/dev/null`. `None`: all three inherited.
    pub out: Option<RawFd>,
    /// Put the program in a process group of its own (a daemon's program,
    /// which can then be found and killed as a group; not a program run
    /// from a terminal, which must stay in the terminal's foreground group).
    pub new_group: bool,
}

/// Everything the child needs, prepared before `fork`.
pub struct Launch {
    cmd: String,
    path: CString,
    chdir: Option<CString>,
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    envp_ptrs: Vec<*const c_char>,
}

fn cstring(bytes: &[u8], what: impl FnOnce() -> String) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|_| SpawnError::Nul { what: what() })
}

fn cstrings(items: &[Vec<u8>], kind: &str) -> Result<Vec<CString>, SpawnError> {
    items
        .iter()
        .map(|a| cstring(a, || format!("{kind} `{}`", String::from_utf8_lossy(a))))
        .collect()
}

fn pointers(items: &[CString]) -> Vec<*const c_char> {
    items
        .iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

impl Launch {
    /// Run `path` (as resolved) with exactly `argv` and `env`, after entering
    /// `chdir` if given.
    pub fn new(
        path: &Path,
        argv: &[Vec<u8>],
        env: &[Vec<u8>],
        chdir: Option<&[u8]>,
    ) -> Result<Launch, SpawnError> {
        let cmd = argv
            .first()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .unwrap_or_default();
        let path = cstring(path.as_os_str().as_bytes(), || {
            format!("the path {}", path.display())
        })?;
        let chdir = chdir
            .map(|d| {
                cstring(d, || {
                    format!("the working directory {}", String::from_utf8_lossy(d))
                })
            })
            .transpose()?;
        let argv = cstrings(argv, "the argument")?;
        let envp = cstrings(env, "the environment entry")?;
        let argv_ptrs = pointers(&argv);
        let envp_ptrs = pointers(&envp);
        Ok(Launch {
            cmd,
            path,
            chdir,
            _argv: argv,
            _envp: envp,
            argv_ptrs,
            envp_ptrs,
        })
    }
}

/// Move `fd` above [`REGION_FD`] (close-on-exec) if it sits exactly there.
fn away_from_region_fd(fd: RawFd) -> Result<RawFd, SysError> {
    if fd != REGION_FD {
        return Ok(fd);
    }
    // SAFETY: fcntl on a descriptor we own; no pointers.
    let new = check("fcntl(F_DUPFD_CLOEXEC)", unsafe {
        libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, REGION_FD + 1)
    })?;
    // SAFETY: fd is ours and no longer used.
    unsafe { libc::close(fd) };
    Ok(new)
}

/// Fork and exec the program described by `launch`. The child registers its
/// real pid in process-table slot 0, runs without address-space
/// randomisation, finds the region at [`REGION_FD`], gets back the signal
/// dispositions the parent changed, and has SIGPIPE at its default. Returns
/// the child's pid once `execve` has succeeded; on a failure before that the
/// child is reaped and the failure returned.
pub fn spawn(
    launch: &Launch,
    region: Region,
    region_fd: RawFd,
    signals: &IgnoredSignals,
    stdio: &Stdio,
) -> Result<i32, SpawnError> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: fds is a valid array of two ints for pipe2 to fill.
    check("pipe2", unsafe {
        libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC)
    })?;
    let (rd, wr) = (away_from_region_fd(fds[0])?, away_from_region_fd(fds[1])?);
    let saved = signals.saved();
    let mut dfl = crate::sys::zeroed_sigaction();
    dfl.sa_sigaction = libc::SIG_DFL;

    // SAFETY: fork has no memory preconditions; the caller is single-threaded
    // here (record and replay start their threads after this returns), and
    // the child below only makes async-signal-safe calls on data prepared
    // before the fork.
    let pid = check("fork", unsafe { libc::fork() })?;
    if pid == 0 {
        // SAFETY: in the child, between fork and exec: only raw system calls
        // on pointers into `launch`, `saved` and `dfl`, which stay valid (the
        // child's copy of the parent's memory), and atomic stores into the
        // shared region, mapped in the child too.
        unsafe { child(launch, region, region_fd, saved, &dfl, wr, stdio) }
    }
    // SAFETY: the write end belongs to the child now; ours is closed once.
    unsafe { libc::close(wr) };
    let mut report = [0u8; 8];
    let mut got = 0;
    while got < report.len() {
        // SAFETY: reading into the unfilled tail of `report`.
        let n = unsafe { libc::read(rd, report[got..].as_mut_ptr().cast(), report.len() - got) };
        if n > 0 {
            got += n as usize;
        } else if n == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    // SAFETY: rd is ours, closed once.
    unsafe { libc::close(rd) };
    if got < report.len() {
        // EOF: the pipe was closed by a successful exec.
        return Ok(pid);
    }
    let stage = i32::from_ne_bytes(report[..4].try_into().unwrap_or_default());
    let err = io::Error::from_raw_os_error(i32::from_ne_bytes(
        report[4..].try_into().unwrap_or_default(),
    ));
    let _ = wait_for(pid);
    Err(stage_error(launch, stage, err))
}

/// The child's side of [`spawn`]. Never returns.
///
/// # Safety
/// Must be called only in the child right after `fork`, with `wr` the write
/// end of the close-on-exec report pipe; it makes only async-signal-safe
/// calls.
unsafe fn child(
    launch: &Launch,
    region: Region,
    region_fd: RawFd,
    saved: &[(c_int, libc::sigaction)],
    dfl: &libc::sigaction,
    wr: RawFd,
    stdio: &Stdio,
) -> ! {
    // SAFETY: setpgid on ourselves; async-signal-safe.
    if stdio.new_group && unsafe { libc::setpgid(0, 0) } == -1 {
        // SAFETY: child side, as below.
        unsafe { fail(wr, STAGE_STDIO) }
    }
    if let Some(out) = stdio.out {
        // SAFETY: raw system calls on descriptors and a NUL-terminated
        // literal; async-signal-safe.
        let ok = unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
            let ok = null >= 0
                && libc::dup2(null, 0) == 0
                && libc::dup2(out, 1) == 1
                && libc::dup2(out, 2) == 2;
            if null > 2 {
                libc::close(null);
            }
            ok
        };
        if !ok {
            // SAFETY: child side, as below.
            unsafe { fail(wr, STAGE_STDIO) }
        }
    }
    // SAFETY: the caller's contract is enter's.
    let stage = unsafe { enter(launch, region, region_fd, saved, dfl) };
    // SAFETY: child side, as above.
    unsafe { fail(wr, stage) }
}

/// Become the program described by `launch` in this process: register this
/// pid in process-table slot 0, turn address-space randomisation off, put
/// the region at [`REGION_FD`], restore the signal dispositions in `saved`,
/// give SIGPIPE its default action (`dfl`), enter the working directory,
/// and `execve`. Returns only on failure: the stage that failed (errno is
/// set). `ferry exec` calls it in place; [`spawn`] in a forked child.
///
/// # Safety
/// Makes only raw system calls on pointers into its arguments and atomic
/// stores into the region, and does not allocate, so it may run in a child
/// right after `fork`; the region must stay mapped.
pub unsafe fn enter(
    launch: &Launch,
    region: Region,
    region_fd: RawFd,
    saved: &[(c_int, libc::sigaction)],
    dfl: &libc::sigaction,
) -> i32 {
    // SAFETY: each call below is a raw system call on valid pointers (see
    // the contract above).
    unsafe {
        let persona = libc::personality(0xffff_ffff);
        if persona == -1
            || libc::personality(
                (persona as libc::c_ulong) | libc::ADDR_NO_RANDOMIZE as libc::c_ulong,
            ) == -1
        {
            return STAGE_PERSONALITY;
        }
        region
            .proc(0)
            .real_pid
            .store(libc::getpid() as u32, Ordering::Release);
        if region_fd != REGION_FD {
            if libc::dup2(region_fd, REGION_FD) == -1 {
                return STAGE_REGION_FD;
            }
            // Not closed: if the exec fails the caller still owns it; the
            // exec closes it (it is close-on-exec unless it was REGION_FD).
            libc::fcntl(region_fd, libc::F_SETFD, libc::FD_CLOEXEC);
        } else if libc::fcntl(REGION_FD, libc::F_SETFD, 0) == -1 {
            return STAGE_REGION_FD;
        }
        for (sig, act) in saved {
            if libc::sigaction(*sig, act, std::ptr::null_mut()) == -1 {
                return STAGE_SIGNALS;
            }
        }
        // The Rust runtime ignores SIGPIPE; programs expect the default.
        if libc::sigaction(libc::SIGPIPE, dfl, std::ptr::null_mut()) == -1 {
            return STAGE_SIGNALS;
        }
        if let Some(dir) = &launch.chdir {
            if libc::chdir(dir.as_ptr()) == -1 {
                return STAGE_CHDIR;
            }
        }
        libc::execve(
            launch.path.as_ptr(),
            launch.argv_ptrs.as_ptr(),
            launch.envp_ptrs.as_ptr(),
        );
        STAGE_EXEC
    }
}

/// The error for a failed [`enter`] at `stage` with OS error `err`.
pub fn stage_error(launch: &Launch, stage: i32, err: io::Error) -> SpawnError {
    match stage {
        STAGE_PERSONALITY => SpawnError::Personality(err),
        STAGE_REGION_FD => SpawnError::RegionFd(err),
        STAGE_SIGNALS => SpawnError::Signals(err),
        STAGE_CHDIR => SpawnError::Chdir {
            dir: launch
                .chdir
                .as_ref()
                .map(|d| d.to_string_lossy().into_owned())
                .unwrap_or_default(),
            source: err,
        },
        STAGE_STDIO => SpawnError::Stdio(err),
        _ => SpawnError::Exec {
            cmd: launch.cmd.clone(),
            source: err,
        },
    }
}

/// Send `stage` and errno to the parent and exit 127.
///
/// # Safety
/// Child side only, as [`child`].
unsafe fn fail(wr: RawFd, stage: i32) -> ! {
    // SAFETY: errno is thread-local and readable; the buffer lives on the
    // stack for the write; _exit never returns.
    unsafe {
        let errno = *libc::__errno_location();
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&stage.to_ne_bytes());
        buf[4..].copy_from_slice(&errno.to_ne_bytes());
        libc::write(wr, buf.as_ptr().cast(), buf.len());
        libc::_exit(127)
    }
}
