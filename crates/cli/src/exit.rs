//! The exit codes of `ferry`: a contract that scripts and tests rely on
//! (DESIGN §8).
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success: the program ran (record) or replayed to the end of its log (replay) |
//! | 1 | the program itself failed: it exited non-zero or was killed by a signal |
//! | 2 | bad usage or bad input: a wrong flag, a missing command or shim, a corrupt log, an unknown version, a failure of the shim; one line says what and where |
//! | 3 | replay divergence: the program did something other than what the log recorded |
//!
//! Every message `ferry` itself prints is one line on stderr that starts with
//! `ferry: `.

use std::fmt::Display;

/// Success.
pub const SUCCESS: u8 = 0;
/// The program itself failed.
pub const PROGRAM_FAILED: u8 = 1;
/// Bad usage or bad input (clap uses the same code for usage errors).
pub const BAD_INPUT: u8 = 2;
/// Replay diverged from the log.
pub const DIVERGED: u8 = 3;

/// Help text listing the exit codes, shown under every command's `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  the program itself failed (non-zero exit or killed by a signal)
  2  bad usage or bad input (missing command or shim, corrupt log, ...)
  3  replay diverged from the log";

/// An error that decides how `ferry` exits.
pub trait ExitCodeOf {
    /// The exit code for this error.
    fn exit_code(&self) -> u8;
}

/// Print `ferry: <msg>` on stderr and return `code`.
pub fn report(code: u8, msg: impl Display) -> u8 {
    eprintln!("ferry: {msg}");
    code
}

/// Print an error and return its exit code.
pub fn report_error<E: ExitCodeOf + Display>(e: &E) -> u8 {
    report(e.exit_code(), e)
}
