//! `ferry exec`: become the program, under the shim, in this very process.
//!
//! Nothing is recorded and nothing is replicated: the shared region is in
//! passthrough mode, so the shim intercepts every call and runs it as is.
//! The program keeps ferry's process id, so whoever started `ferry exec`
//! knows the pid of the program (to checkpoint it, to wait for it), and its
//! exit status is the program's own.
//!
//! It is [`spawn`](ferry_host::spawn)'s child side run in place: the same
//! [`Launch`] and the same [`enter`].

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;

use ferry_ring::Mode;

use crate::exit::{report_error, ExitCodeOf, BAD_INPUT};
use ferry_host::region::{self, SharedRegion};
use ferry_host::resolve::{resolve, ResolveError};
use ferry_host::shim::{self, ShimNotFound};
use ferry_host::spawn::{enter, stage_error, Launch, SpawnError};

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
    /// The program could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
}

impl ExitCodeOf for ExecError {
    fn exit_code(&self) -> u8 {
        BAD_INPUT
    }
}

/// Run `ferry exec`; returns only on failure, with the exit code.
pub fn run(args: ExecArgs) -> u8 {
    let err = match exec(&args.command) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    report_error(&err)
}

/// Resolve `command[0]` in PATH, find the shim, create a fresh passthrough
/// region with this process as the program's root, and exec.
fn exec(command: &[OsString]) -> Result<std::convert::Infallible, ExecError> {
    let cwd = std::env::current_dir().map_err(ExecError::Cwd)?;
    let path = resolve(&command[0], std::env::var_os("PATH").as_deref(), &cwd)?;
    let shim_path = shim::locate()?;
    let argv: Vec<Vec<u8>> = command.iter().map(|a| a.as_bytes().to_vec()).collect();
    let env = shim::program_env(&shim_path, std::env::vars_os());
    let launch = Launch::new(&path, &argv, &env, None)?;
    let shared = SharedRegion::create(Mode::Passthrough)?;
    let mut dfl = ferry_host::sys::zeroed_sigaction();
    dfl.sa_sigaction = libc::SIG_DFL;
    // SAFETY: launch, the region and dfl stay alive for the call; enter only
    // returns if the exec failed.
    let stage = unsafe { enter(&launch, shared.region(), shared.fd(), &[], &dfl) };
    let err = io::Error::last_os_error();
    Err(stage_error(&launch, stage, err).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek};
    use std::os::fd::AsRawFd;
    use std::path::Path;
    use std::sync::atomic::Ordering;

    /// `enter` changes the whole process (its image, its personality), so
    /// it runs in a child: the child must keep its pid, find the region at
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
        let launch = Launch::new(Path::new("/bin/sh"), &argv, &[lib], None).unwrap();
        let shared = SharedRegion::create(Mode::Passthrough).unwrap();
        let mut dfl = ferry_host::sys::zeroed_sigaction();
        dfl.sa_sigaction = libc::SIG_DFL;
        let mut out = tempfile::tempfile().unwrap();

        // SAFETY: the child only makes raw system calls (dup2, and those of
        // `enter`, which does not allocate) before execve or _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: child side: dup2 on open descriptors, then _exit.
            unsafe {
                libc::dup2(out.as_raw_fd(), 1);
                let _ = enter(&launch, shared.region(), shared.fd(), &[], &dfl);
                libc::_exit(100);
            }
        }
        let status = ferry_host::sys::wait_for(pid).unwrap();
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

        let region = shared.region();
        assert_eq!(region.mode(), Some(Mode::Passthrough));
        assert_eq!(region.slot_of_real_pid(pid as u32), Some(0));
        assert_eq!(region.proc(0).vpid.load(Ordering::Acquire), 1);
    }

    #[test]
    fn exec_failure_is_an_error() {
        let argv = [b"/nonexistent/ferry-prog".to_vec()];
        let launch = Launch::new(Path::new("/nonexistent/ferry-prog"), &argv, &[], None).unwrap();
        let shared = SharedRegion::create(Mode::Passthrough).unwrap();
        let dfl = ferry_host::sys::zeroed_sigaction();
        // In a child: a failed exec still leaves the process changed.
        // SAFETY: the child makes only raw system calls, then _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: as above.
            let stage = unsafe { enter(&launch, shared.region(), shared.fd(), &[], &dfl) };
            let err = io::Error::last_os_error();
            let code = match stage_error(&launch, stage, err) {
                SpawnError::Exec { source, .. } if source.raw_os_error() == Some(libc::ENOENT) => 0,
                _ => 1,
            };
            // SAFETY: ends the child without running the parent's handlers.
            unsafe { libc::_exit(code) };
        }
        let status = ferry_host::sys::wait_for(pid).unwrap();
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
