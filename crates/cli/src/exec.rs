//! `ferry exec`: become the program, under the shim, in this very process.
//!
//! Nothing is recorded and nothing is replicated: the shared region is in
//! passthrough mode, so the shim intercepts every call and runs it as is.
//! The program keeps ferry's process id, so whoever started `ferry exec`
//! knows the pid of the program (to checkpoint it, to wait for it), and its
//! exit status is the program's own.
//!
//! The work is split in two: [`Prepared::new`] does everything that can
//! allocate or fail for a reason worth a message (finding the command and
//! the shim, building the region, the argument and environment strings);
//! [`Prepared::exec`] only makes raw system calls and `execve`s.

use std::ffi::{CString, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::Ordering;

use ferry_ring::{Mode, REGION_FD};
use libc::c_char;

use crate::exit::{report_error, ExitCodeOf, BAD_INPUT};
use crate::region::{self, SharedRegion};
use crate::resolve::{resolve, ResolveError};
use crate::shim::{self, ShimNotFound};

/// What `ferry exec` was asked to do.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The program and its arguments, after `--`. CMD is searched in PATH.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// Why `ferry exec` could not become the program.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The shim is missing.
    #[error(transparent)]
    Shim(#[from] ShimNotFound),
    /// The command is not on PATH.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The current directory is gone.
    #[error("cannot read the current directory: {0}")]
    Cwd(#[source] io::Error),
    /// The shared region could not be set up.
    #[error(transparent)]
    Region(#[from] region::RegionError),
    /// An argument, environment entry or path holds a NUL byte.
    #[error("{what} contains a NUL byte and cannot be passed to the program")]
    Nul {
        /// Which string.
        what: String,
    },
    /// Address-space randomisation could not be turned off.
    #[error("cannot turn address-space randomisation off (personality): {0}")]
    Personality(#[source] io::Error),
    /// The region could not be put at its descriptor number.
    #[error("cannot pass the shared region to the program at descriptor {REGION_FD}: {0}")]
    RegionFd(#[source] io::Error),
    /// SIGPIPE could not be given back its default action.
    #[error("cannot reset SIGPIPE to its default action: {0}")]
    Signals(#[source] io::Error),
    /// `execve` failed.
    #[error("{cmd}: {source}")]
    Exec {
        /// The command as typed.
        cmd: String,
        /// The OS error.
        source: io::Error,
    },
}

impl ExitCodeOf for ExecError {
    fn exit_code(&self) -> u8 {
        BAD_INPUT
    }
}

/// Run `ferry exec`; returns only on failure, with the exit code.
pub fn run(args: ExecArgs) -> u8 {
    let err = match Prepared::new(&args.command) {
        Ok(prepared) => prepared.exec(),
        Err(e) => e,
    };
    report_error(&err)
}

/// The environment for the program: ours, with the shim first in
/// `LD_PRELOAD` (in place if it was set, appended if not).
fn program_env(
    shim_path: &Path,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Vec<Vec<u8>> {
    let mut env = Vec::new();
    let mut preload_set = false;
    for (key, value) in vars {
        let value = if key == "LD_PRELOAD" && !preload_set {
            preload_set = true;
            shim::preload_value(shim_path, Some(&value))
        } else {
            value
        };
        env.push(entry(key, value));
    }
    if !preload_set {
        env.push(entry(
            OsString::from("LD_PRELOAD"),
            shim::preload_value(shim_path, None),
        ));
    }
    env
}

fn entry(key: OsString, value: OsString) -> Vec<u8> {
    let mut e = key.into_vec();
    e.push(b'=');
    e.extend_from_slice(value.as_bytes());
    e
}

fn cstrings(items: &[Vec<u8>], kind: &str) -> Result<Vec<CString>, ExecError> {
    items
        .iter()
        .map(|a| {
            CString::new(a.as_slice()).map_err(|_| ExecError::Nul {
                what: format!("{kind} `{}`", String::from_utf8_lossy(a)),
            })
        })
        .collect()
}

fn pointers(items: &[CString]) -> Vec<*const c_char> {
    items
        .iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Everything `execve` needs, and the region the program will find at
/// [`REGION_FD`], built before the point of no return.
pub struct Prepared {
    cmd: String,
    path: CString,
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    envp_ptrs: Vec<*const c_char>,
    region: SharedRegion,
}

impl Prepared {
    /// Resolve `command[0]` in PATH, find the shim, and create a fresh
    /// passthrough region with the program's root in slot 0.
    pub fn new(command: &[OsString]) -> Result<Prepared, ExecError> {
        let cwd = std::env::current_dir().map_err(ExecError::Cwd)?;
        let path = resolve(&command[0], std::env::var_os("PATH").as_deref(), &cwd)?;
        let shim_path = shim::locate()?;
        let argv: Vec<Vec<u8>> = command.iter().map(|a| a.as_bytes().to_vec()).collect();
        let env = program_env(&shim_path, std::env::vars_os());
        Prepared::with(&path, &argv, &env)
    }

    /// Run `path` (as resolved) with exactly `argv` and `env`.
    fn with(path: &Path, argv: &[Vec<u8>], env: &[Vec<u8>]) -> Result<Prepared, ExecError> {
        let cmd = argv
            .first()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .unwrap_or_default();
        let path = CString::new(path.as_os_str().as_bytes()).map_err(|_| ExecError::Nul {
            what: format!("the path {}", path.display()),
        })?;
        let argv = cstrings(argv, "the argument")?;
        let envp = cstrings(env, "the environment entry")?;
        let argv_ptrs = pointers(&argv);
        let envp_ptrs = pointers(&envp);
        let region = SharedRegion::create(Mode::Passthrough)?;
        Ok(Prepared {
            cmd,
            path,
            _argv: argv,
            _envp: envp,
            argv_ptrs,
            envp_ptrs,
            region,
        })
    }

    /// Become the program (see [`Prepared::enter`]). Returns only on failure;
    /// the process is then half-prepared (randomisation off, descriptor
    /// 1000 taken) and should exit.
    pub fn exec(self) -> ExecError {
        match self.enter() {
            Failure::RegionFd(e) => ExecError::RegionFd(e),
            Failure::Personality(e) => ExecError::Personality(e),
            Failure::Signals(e) => ExecError::Signals(e),
            Failure::Exec(source) => ExecError::Exec {
                cmd: self.cmd,
                source,
            },
        }
    }

    /// Register this process as the program's root, hand the region over at
    /// [`REGION_FD`], turn address-space randomisation off, give SIGPIPE its
    /// default action back, and `execve`. Returns only on failure.
    ///
    /// Makes only raw system calls and atomic stores, and does not allocate,
    /// so it may also run in a child right after `fork`.
    fn enter(&self) -> Failure {
        let region = self.region.region();
        let fd = self.region.fd();
        // SAFETY: getpid takes no arguments and cannot fail.
        let pid = unsafe { libc::getpid() };
        region.proc(0).real_pid.store(pid as u32, Ordering::Release);

        if fd != REGION_FD {
            // SAFETY: dup2 on two descriptor numbers; fd is ours and open.
            if unsafe { libc::dup2(fd, REGION_FD) } == -1 {
                return Failure::RegionFd(io::Error::last_os_error());
            }
            // The original number must not reach the program: closed by the
            // exec, still open (and owned by `self.region`) if it fails.
            // SAFETY: fcntl on our own descriptor; no pointers.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
                return Failure::RegionFd(io::Error::last_os_error());
            }
        }
        // dup2 clears close-on-exec on the new number; the memfd was created
        // without it. Make sure either way.
        // SAFETY: fcntl on descriptor REGION_FD, open here; no pointers.
        if unsafe { libc::fcntl(REGION_FD, libc::F_SETFD, 0) } == -1 {
            return Failure::RegionFd(io::Error::last_os_error());
        }

        // SAFETY: personality takes an integer; 0xffffffff only queries.
        let persona = unsafe { libc::personality(0xffff_ffff) };
        if persona == -1 {
            return Failure::Personality(io::Error::last_os_error());
        }
        let wanted = (persona as libc::c_ulong) | libc::ADDR_NO_RANDOMIZE as libc::c_ulong;
        // SAFETY: as above; takes effect at the execve below.
        if unsafe { libc::personality(wanted) } == -1 {
            return Failure::Personality(io::Error::last_os_error());
        }

        // The Rust runtime ignores SIGPIPE, and an ignored signal stays
        // ignored across execve; programs expect the default.
        let mut dfl = crate::sys::zeroed_sigaction();
        dfl.sa_sigaction = libc::SIG_DFL;
        // SAFETY: dfl is a valid sigaction for the call; no old action asked.
        if unsafe { libc::sigaction(libc::SIGPIPE, &dfl, std::ptr::null_mut()) } == -1 {
            return Failure::Signals(io::Error::last_os_error());
        }

        // SAFETY: path, argv_ptrs and envp_ptrs are NUL-terminated strings
        // and null-terminated pointer arrays into `self`, alive for the call.
        unsafe {
            libc::execve(
                self.path.as_ptr(),
                self.argv_ptrs.as_ptr(),
                self.envp_ptrs.as_ptr(),
            )
        };
        Failure::Exec(io::Error::last_os_error())
    }
}

/// Which step of [`Prepared::enter`] failed (no allocation on this path).
enum Failure {
    RegionFd(io::Error),
    Personality(io::Error),
    Signals(io::Error),
    Exec(io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek};
    use std::os::fd::AsRawFd;

    #[test]
    fn env_gets_the_shim_first() {
        let shim = Path::new("/x/libferry_preload.so");
        let vars = |v: &[(&str, &str)]| -> Vec<(OsString, OsString)> {
            v.iter().map(|(k, v)| (k.into(), v.into())).collect()
        };
        let env = program_env(shim, vars(&[("HOME", "/root")]));
        assert_eq!(
            env,
            [
                b"HOME=/root".to_vec(),
                b"LD_PRELOAD=/x/libferry_preload.so".to_vec()
            ]
        );
        let env = program_env(shim, vars(&[("LD_PRELOAD", "libfoo.so"), ("A", "1")]));
        assert_eq!(
            env,
            [
                b"LD_PRELOAD=/x/libferry_preload.so:libfoo.so".to_vec(),
                b"A=1".to_vec()
            ]
        );
    }

    #[test]
    fn nul_in_an_argument_is_refused() {
        let err = Prepared::with(Path::new("/bin/true"), &[b"tr\0ue".to_vec()], &[])
            .err()
            .expect("a NUL byte must be refused");
        assert!(matches!(err, ExecError::Nul { .. }), "{err}");
    }

    /// `exec` changes the whole process (its image, its personality), so it
    /// runs in a child: the child must keep its pid, find the region at
    /// descriptor 1000 with its own pid in slot 0, run without
    /// address-space randomisation, and exit with the program's status.
    #[test]
    fn execs_in_place_with_the_region() {
        let script = "echo $$; readlink /proc/$$/fd/1000; \
            cat /proc/$$/personality; echo \"$LD_PRELOAD\"; exit 7";
        let argv = [b"sh".to_vec(), b"-c".to_vec(), script.as_bytes().to_vec()];
        // A preload that does nothing (any shared library will do): the test
        // checks how the program is started, not the shim.
        let lib = b"LD_PRELOAD=libc.so.6".to_vec();
        let prepared = Prepared::with(Path::new("/bin/sh"), &argv, &[lib]).unwrap();
        let mut out = tempfile::tempfile().unwrap();

        // SAFETY: the child only makes raw system calls (dup2, and those of
        // `enter`, which does not allocate) before execve or _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: child side: dup2 on open descriptors, then _exit.
            unsafe {
                libc::dup2(out.as_raw_fd(), 1);
                let _ = prepared.enter();
                libc::_exit(100);
            }
        }
        let status = crate::sys::wait_for(pid).unwrap();
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 7, "the program's own status");

        let mut text = String::new();
        out.rewind().unwrap();
        out.read_to_string(&mut text).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0], pid.to_string(), "same process id");
        assert!(lines[1].starts_with("/memfd:ferry-region"), "{text}");
        let persona = u64::from_str_radix(lines[2], 16).unwrap();
        assert_ne!(persona & libc::ADDR_NO_RANDOMIZE as u64, 0, "{text}");
        assert_eq!(lines[3], "libc.so.6");

        let region = prepared.region.region();
        assert_eq!(region.mode(), Some(Mode::Passthrough));
        assert_eq!(region.slot_of_real_pid(pid as u32), Some(0));
        assert_eq!(region.proc(0).vpid.load(Ordering::Acquire), 1);
        assert_eq!(region.control().next_vid.load(Ordering::Acquire), 2);
        assert_eq!(region.control().live_procs.load(Ordering::Acquire), 1);
    }

    #[test]
    fn exec_failure_is_an_error() {
        let argv = [b"/nonexistent/ferry-prog".to_vec()];
        let prepared = Prepared::with(Path::new("/nonexistent/ferry-prog"), &argv, &[]).unwrap();
        // In a child: a failed exec still leaves the process changed.
        // SAFETY: the child makes only raw system calls, then _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = match prepared.enter() {
                Failure::Exec(e) if e.raw_os_error() == Some(libc::ENOENT) => 0,
                _ => 1,
            };
            // SAFETY: ends the child without running the parent's handlers.
            unsafe { libc::_exit(code) };
        }
        let status = crate::sys::wait_for(pid).unwrap();
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
