//! Entering network namespaces: a thread of this process, or a child before
//! it executes. The only unsafe code of the harness is here.
//!
//! A namespace is named as `ip netns` names it: the file `/run/netns/NAME`.
//! The network namespace is a property of each thread, and threads inherit
//! it from the thread that starts them, so a thread that enters a namespace
//! can run a whole client (with its own threads) inside it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::thread;

/// The file that names namespace `name`.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Whether namespace `name` exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

fn open(name: &str) -> io::Result<File> {
    File::open(path(name)).map_err(|e| io::Error::new(e.kind(), format!("namespace {name}: {e}")))
}

/// Move the calling thread into namespace `name`.
pub fn enter(name: &str) -> io::Result<()> {
    let f = open(name)?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| io::Error::other(format!("setns into {name}: {e}")))
}

/// Run `f` in a new thread inside namespace `name` and return its result.
/// Threads that `f` starts are inside the namespace too.
pub fn run_in<T, F>(name: &str, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let name = name.to_owned();
    thread::Builder::new()
        .name(format!("in-{name}"))
        .spawn(move || -> io::Result<T> {
            enter(&name)?;
            Ok(f())
        })?
        .join()
        .map_err(|_| io::Error::other("a thread inside a namespace panicked"))?
}

/// Start `cmd` inside namespace `name`, as the leader of a new process
/// group (so that it and its children can be signalled together). Only the
/// network namespace changes: `/sys` still shows the machine's interfaces
/// (see [`command`] for a process that must see its own).
pub fn spawn_in(name: &str, cmd: &mut Command) -> io::Result<Child> {
    let f = open(name)?;
    let fd = f.as_raw_fd();
    cmd.process_group(0);
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe functions may be called: it makes one system call
    // (setns) on a descriptor that `f` keeps open until `spawn` returns, and
    // reads errno. It allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    drop(f);
    child
}

/// A command that runs `program` inside namespace `name` as a host's own
/// process would: through `ip netns exec`, which also gives it a mount
/// namespace where `/sys` shows the namespace's interfaces (a program that
/// reads `/sys/class/net/IFACE/address` gets its own MAC), then executes
/// `program` in place (same pid). It leads a new process group.
pub fn command(name: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", name]).arg(program);
    c.process_group(0);
    c
}

/// The inode that identifies namespace `name`.
fn inode(name: &str) -> io::Result<u64> {
    Ok(open(name)?.metadata()?.ino())
}

/// Every process whose (main thread's) network namespace is `name`, except
/// this process.
pub fn pids_in(name: &str) -> io::Result<Vec<i32>> {
    let ino = inode(name)?;
    let want = format!("net:[{ino}]");
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        // A process may end while we look: skip it.
        if let Ok(link) = std::fs::read_link(entry.path().join("ns/net")) {
            if link.to_string_lossy() == want {
                pids.push(pid);
            }
        }
    }
    Ok(pids)
}

/// The command name (`comm`) of process `pid`, if it still exists.
pub fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}
