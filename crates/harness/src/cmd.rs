//! Running the tools the harness drives (`ip`, `nft`, `ferry`) with a bound
//! on time: a command that does not finish in time is killed and reported.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};
use thiserror::Error;

/// How long a configuration command (`ip`, `nft`) may take.
pub const QUICK: Duration = Duration::from_secs(10);

/// Why a command failed.
#[derive(Debug, Error)]
pub enum CmdError {
    #[error("cannot start `{what}`: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("`{what}` did not finish within {timeout:?} and was killed")]
    Timeout { what: String, timeout: Duration },
    #[error("`{what}` failed ({status}): {stderr}")]
    Failed {
        what: String,
        status: ExitStatus,
        stderr: String,
    },
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// The command line, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run `cmd` to its end within `timeout`, stdin closed, output captured.
/// A non-zero exit is an error carrying stderr.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output, CmdError> {
    let out = run_status(cmd, timeout)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(CmdError::Failed {
            what: describe(cmd),
            status: out.status,
            stderr: out.stderr.trim().to_owned(),
        })
    }
}

/// Spawn `cmd` with stdout and stderr captured and stdin as given.
fn spawn_captured(
    cmd: &mut Command,
    stdin: Stdio,
) -> Result<(std::process::Child, String), CmdError> {
    let what = describe(cmd);
    let child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CmdError::Spawn {
            what: what.clone(),
            source,
        })?;
    Ok((child, what))
}

/// Like [`run`], but any exit status is returned as it is.
pub fn run_status(cmd: &mut Command, timeout: Duration) -> Result<Output, CmdError> {
    let (child, what) = spawn_captured(cmd, Stdio::null())?;
    wait_output(child, &what, timeout)
}

/// Like [`run`], with `input` written to the command's stdin.
pub fn run_input(cmd: &mut Command, input: &str, timeout: Duration) -> Result<Output, CmdError> {
    let (mut child, what) = spawn_captured(cmd, Stdio::piped())?;
    if let Some(mut stdin) = child.stdin.take() {
        let input = input.to_owned();
        thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
    }
    let out = wait_output(child, &what, timeout)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(CmdError::Failed {
            what,
            status: out.status,
            stderr: out.stderr.trim().to_owned(),
        })
    }
}

/// Wait for a child started with piped stdout and stderr, killing it after
/// `timeout`.
pub fn wait_output(mut child: Child, what: &str, timeout: Duration) -> Result<Output, CmdError> {
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < timeout => thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CmdError::Timeout {
                    what: what.to_owned(),
                    timeout,
                });
            }
        }
    };
    // A process the command left behind may hold the pipes open: take what
    // came, without waiting for their end.
    let collect = |rx: Option<mpsc::Receiver<String>>| {
        rx.and_then(|rx| rx.recv_timeout(Duration::from_millis(500)).ok())
            .unwrap_or_default()
    };
    Ok(Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    })
}

fn drain<R: Read + Send + 'static>(mut r: R) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    rx
}

/// Whether `program` can be started (found on `PATH` or as a path).
pub fn available(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}
