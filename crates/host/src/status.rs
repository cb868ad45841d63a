//! How a process ended, from its raw wait status, in words.

use std::fmt;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Termination {
    /// It called `exit` with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether it dumped core.
        core: bool,
    },
    /// A status that is neither (not expected from `waitpid` without
    /// `WUNTRACED`).
    Other(i32),
}

impl Termination {
    /// Decode a raw wait status.
    pub fn from_raw(status: i32) -> Termination {
        if libc::WIFEXITED(status) {
            Termination::Exited(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            Termination::Signaled {
                signal: libc::WTERMSIG(status),
                core: libc::WCOREDUMP(status),
            }
        } else {
            Termination::Other(status)
        }
    }

    /// Whether it exited with code 0.
    pub fn success(self) -> bool {
        self == Termination::Exited(0)
    }
}

/// The name of a signal (`SIGSEGV`), or its number if unknown.
pub fn signal_name(signal: i32) -> String {
    match nix::sys::signal::Signal::try_from(signal) {
        Ok(s) => s.as_str().to_string(),
        Err(_) if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&signal) => {
            format!("SIGRTMIN+{}", signal - libc::SIGRTMIN())
        }
        Err(_) => format!("{signal}"),
    }
}

impl fmt::Display for Termination {
    /// The end of "CMD exited with status 3", "CMD was killed by signal SIGKILL".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Termination::Exited(code) => write!(f, "exited with status {code}"),
            Termination::Signaled { signal, core } => {
                write!(f, "was killed by signal {}", signal_name(signal))?;
                if core {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
            Termination::Other(raw) => write!(f, "ended with wait status {raw:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(Termination::from_raw(0), Termination::Exited(0));
        assert!(Termination::from_raw(0).success());
        assert_eq!(Termination::from_raw(3 << 8), Termination::Exited(3));
        assert_eq!(
            Termination::from_raw(3 << 8).to_string(),
            "exited with status 3"
        );
        assert!(!Termination::from_raw(1 << 8).success());
    }

    #[test]
    fn signals() {
        let t = Termination::from_raw(libc::SIGKILL);
        assert_eq!(
            t,
            Termination::Signaled {
                signal: libc::SIGKILL,
                core: false
            }
        );
        assert_eq!(t.to_string(), "was killed by signal SIGKILL");
        let t = Termination::from_raw(libc::SIGSEGV | 0x80);
        assert_eq!(t.to_string(), "was killed by signal SIGSEGV (core dumped)");
        assert_eq!(signal_name(libc::SIGRTMIN() + 2), "SIGRTMIN+2");
        assert!(!t.success());
    }
}
