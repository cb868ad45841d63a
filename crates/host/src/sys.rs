//! Thin wrappers over the raw system calls the CLI needs in its parent
//! process: every `-1` becomes a [`SysError`] naming the operation.

use std::io;

use libc::c_int;

/// A failed system call.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct SysError {
    /// The call that failed.
    pub op: &'static str,
    /// The OS error.
    pub source: io::Error,
}

impl SysError {
    /// An error of `op` from an `io::Error`.
    pub fn from_io(op: &'static str, source: io::Error) -> SysError {
        SysError { op, source }
    }
}

/// Turn a `-1` return into an error naming `op`.
pub fn check(op: &'static str, ret: c_int) -> Result<c_int, SysError> {
    if ret == -1 {
        Err(SysError {
            op,
            source: io::Error::last_os_error(),
        })
    } else {
        Ok(ret)
    }
}

/// Make this process the reaper of its orphaned descendants.
pub fn set_child_subreaper() -> Result<(), SysError> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer argument and touches no
    // memory of ours.
    let ret = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    check("prctl(PR_SET_CHILD_SUBREAPER)", ret).map(drop)
}

/// What one `waitpid(-1, WNOHANG)` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reaped {
    /// A child ended with this raw wait status.
    Child {
        /// Its pid.
        pid: i32,
        /// Raw wait status.
        status: i32,
    },
    /// Children remain, none has ended.
    NoneReady,
    /// No children remain.
    NoChildren,
}

/// Reap one ended child, if any, without blocking.
pub fn reap_nohang() -> Result<Reaped, SysError> {
    loop {
        let mut status: c_int = 0;
        // SAFETY: status is a valid out pointer for the call's duration.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            return Ok(Reaped::Child { pid, status });
        }
        if pid == 0 {
            return Ok(Reaped::NoneReady);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ECHILD) => return Ok(Reaped::NoChildren),
            Some(libc::EINTR) => continue,
            _ => {
                return Err(SysError {
                    op: "waitpid",
                    source: err,
                })
            }
        }
    }
}

/// Wait for one specific child, blocking; returns its raw wait status.
pub fn wait_for(pid: i32) -> Result<i32, SysError> {
    loop {
        let mut status: c_int = 0;
        // SAFETY: status is a valid out pointer for the call's duration.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret == pid {
            return Ok(status);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(SysError {
                op: "waitpid",
                source: err,
            });
        }
    }
}

/// Send SIGKILL to `pid`; a process that is already gone is not an error.
pub fn kill_hard(pid: i32) {
    if pid <= 0 {
        return;
    }
    // SAFETY: kill takes no pointers; pid > 0 names one process.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// Our direct children, from `/proc/self/task/*/children` (empty if the
/// kernel does not provide it).
pub fn direct_children() -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return pids;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    pids
}

/// SIGINT and SIGQUIT ignored while the program runs (the terminal sends them
/// to the program too); the previous dispositions are kept so the program's
/// child process can get them back before `exec`.
pub struct IgnoredSignals {
    saved: [(c_int, libc::sigaction); 2],
}

impl IgnoredSignals {
    /// Ignore SIGINT and SIGQUIT in this process.
    pub fn ignore_interrupts() -> Result<IgnoredSignals, SysError> {
        let mut saved = [
            (libc::SIGINT, zeroed_sigaction()),
            (libc::SIGQUIT, zeroed_sigaction()),
        ];
        for (sig, old) in saved.iter_mut() {
            let mut ign = zeroed_sigaction();
            ign.sa_sigaction = libc::SIG_IGN;
            // SAFETY: both pointers are valid sigaction structs for the call.
            check("sigaction", unsafe { libc::sigaction(*sig, &ign, old) })?;
        }
        Ok(IgnoredSignals { saved })
    }

    /// Nothing ignored (a daemon has no terminal): the program keeps this
    /// process's dispositions.
    pub fn none() -> IgnoredSignals {
        IgnoredSignals {
            saved: [
                (libc::SIGINT, zeroed_sigaction()),
                (libc::SIGQUIT, zeroed_sigaction()),
            ],
        }
    }

    /// The dispositions to restore in the program's process.
    pub fn saved(&self) -> &[(c_int, libc::sigaction)] {
        &self.saved
    }
}

/// An all-zero `sigaction` (SIG_DFL, empty mask, no flags).
pub fn zeroed_sigaction() -> libc::sigaction {
    // SAFETY: sigaction is a plain C struct for which all-zero bytes are valid
    // (SIG_DFL handler, empty mask).
    unsafe { std::mem::zeroed() }
}

/// Whether process `pid` has ended: gone, or a zombie (its descriptors,
/// sockets among them, are closed by then).
pub fn has_exited(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state follows the command name, which is in parentheses and may
    // hold anything, so look after the last one.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    matches!(state, Some("Z" | "X") | None)
}

/// When process `pid` started, in clock ticks after boot (field 22 of
/// `/proc/PID/stat`), to tell it from a later process with the same pid;
/// `None` if there is no such process.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// One descriptor from `sock`, waiting at most `ms`: `Ok(None)` when
/// nothing came in that time, an error when the other end closed.
pub fn receive_fd(
    sock: &std::os::unix::net::UnixStream,
    ms: i32,
) -> io::Result<Option<std::os::fd::OwnedFd>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd of our own for the call's duration.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n == 0 {
        return Ok(None);
    }
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just gave us this descriptor.
                return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the restore ended without sending the region",
    ))
}
