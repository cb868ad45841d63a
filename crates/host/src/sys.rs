//! Thin wrappers over the raw system calls the CLI needs in its parent
//! process: every `-1` becomes a [`SysError`] naming the operation.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

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

/// Whether process `pid` has ended: gone, or a zombie none of whose
/// threads still runs. Only then are its descriptors, sockets among them,
/// closed: the main thread of a killed multi-threaded process is a zombie
/// as soon as it has exited itself, while another thread may still be
/// tearing down a large address space before the descriptors it shares
/// are closed.
pub fn has_exited(pid: i32) -> bool {
    let Some(fields) = stat_after_name(pid) else {
        return true;
    };
    if !matches!(fields.split_whitespace().next(), Some("Z" | "X") | None) {
        return false;
    }
    // The main thread stays listed while it is a zombie; any other thread
    // listed has not finished exiting.
    let main = pid.to_string();
    match std::fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(tasks) => tasks
            .filter_map(Result::ok)
            .all(|t| t.file_name().to_str() == Some(main.as_str())),
        Err(_) => true,
    }
}

/// The fields of `/proc/PID/stat` after the command name (field 3, the
/// state, on), or `None` if there is no such process. The name is in
/// parentheses and may hold anything, so they start after the last one.
fn stat_after_name(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat[stat.rfind(')')? + 1..].to_owned())
}

/// Shut down, in both directions, every socket process `pid` has open:
/// its TCP peers get a FIN (a reset where it left data unread) and its
/// listening sockets refuse new connections now, not once the process has
/// finished exiting, which after a SIGKILL comes only when its address
/// space is torn down (tens to hundreds of milliseconds for a large one).
/// Only for a program that will never run again (paused, about to be
/// killed). Returns how many sockets were shut down; a process that is
/// gone, or whose descriptors cannot be had, has none.
pub fn shut_down_sockets(pid: i32) -> usize {
    // SAFETY: pidfd_open takes a pid and flags and touches no memory of ours.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return 0;
    }
    // SAFETY: pidfd_open returned a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let mut seen = std::collections::HashSet::new();
    let mut shut = 0;
    for entry in fds.filter_map(Result::ok) {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let link = link.to_string_lossy().into_owned();
        if !link.starts_with("socket:") || !seen.insert(link) {
            continue;
        }
        // SAFETY: pidfd_getfd takes a pidfd, a descriptor number in that
        // process and flags; it touches no memory of ours.
        let ours = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
        if ours < 0 {
            continue;
        }
        // SAFETY: pidfd_getfd returned a new descriptor that nothing else owns.
        let ours = unsafe { OwnedFd::from_raw_fd(ours as RawFd) };
        // SAFETY: shutdown takes a descriptor we own and a constant.
        if unsafe { libc::shutdown(ours.as_raw_fd(), libc::SHUT_RDWR) } == 0 {
            shut += 1;
        }
    }
    shut
}

/// When process `pid` started, in clock ticks after boot (field 22 of
/// `/proc/PID/stat`), to tell it from a later process with the same pid;
/// `None` if there is no such process.
pub fn start_time(pid: i32) -> Option<u64> {
    stat_after_name(pid)?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// A program whose main thread exits while another thread runs on until
    /// its standard input closes.
    const MAIN_EXITS_FIRST: &str = r#"
#include <pthread.h>
#include <unistd.h>
static void *until_eof(void *arg) { char c; (void)arg; while (read(0, &c, 1) > 0) {} return 0; }
int main(void) { pthread_t t; pthread_create(&t, 0, until_eof, 0); pthread_exit(0); }
"#;

    /// A program that connects to 127.0.0.1:PORT and then waits for ever.
    const CONNECT_AND_WAIT: &str = r#"
#include <arpa/inet.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 2) return 1;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) return 1;
    for (;;) pause();
}
"#;

    fn build(dir: &std::path::Path, name: &str, source: &str) -> std::path::PathBuf {
        let exe = dir.join(name);
        let mut gcc = Command::new("gcc")
            .args(["-x", "c", "-", "-pthread", "-o"])
            .arg(&exe)
            .stdin(Stdio::piped())
            .spawn()
            .expect("run gcc");
        gcc.stdin
            .take()
            .unwrap()
            .write_all(source.as_bytes())
            .unwrap();
        assert!(gcc.wait().unwrap().success(), "gcc failed to build {name}");
        exe
    }

    /// The peer of a connection that another, still living process holds
    /// hears it end once that process's sockets are shut down.
    #[test]
    fn shutting_down_a_processs_sockets_ends_its_connections_while_it_lives() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let exe = build(dir.path(), "connect_and_wait", CONNECT_AND_WAIT);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut child = Command::new(&exe).arg(port.to_string()).spawn().unwrap();
        let pid = child.id() as i32;
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(shut_down_sockets(pid), 1);
        let mut buf = [0u8; 16];
        assert_eq!(conn.read(&mut buf).expect("the connection to end"), 0);
        assert!(!has_exited(pid), "the process should still be alive");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn state(pid: i32) -> Option<String> {
        Some(stat_after_name(pid)?.split_whitespace().next()?.to_owned())
    }

    fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A process is not over while any of its threads runs, even once its
    /// main thread is a zombie: its sockets are still open.
    #[test]
    fn a_process_whose_main_thread_is_a_zombie_has_not_exited_while_a_thread_runs() {
        let dir = tempfile::tempdir().unwrap();
        let exe = build(dir.path(), "main_exits_first", MAIN_EXITS_FIRST);

        let mut child = Command::new(&exe).stdin(Stdio::piped()).spawn().unwrap();
        let pid = child.id() as i32;
        eventually("the main thread to exit", || {
            state(pid).as_deref() == Some("Z")
        });
        assert!(
            !has_exited(pid),
            "a process with a running thread counted as ended"
        );
        drop(child.stdin.take());
        eventually("the last thread to exit", || has_exited(pid));
        assert!(child.wait().unwrap().success());
    }
}
