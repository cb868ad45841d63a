//! Shared helpers for Ferry's end-to-end tests.
//!
//! The tests run real programs the way a user does: `ferry record --log FILE --
//! CMD…` and then `ferry replay --log FILE -- CMD…`, and compare what the
//! program printed. The helpers here find the built binaries (the tests never
//! build them: `scripts/test` builds the workspace first), compile the C
//! programs under `tests/programs/`, run commands with a hard timeout that
//! kills the whole process group, and make failed comparisons readable.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub mod ckpt;

/// The longest any single `ferry` or program run may take before the test
/// fails. A hung replay must fail the test, never hang CI.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// How long to wait for a program's output pipes to close once its process
/// group is gone.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// The shell command the shell test records (and the nondeterminism check
/// runs natively): a random number, the clock and /dev/urandom through a pipe.
pub const BASH_SCRIPT: &str = "echo $RANDOM; date +%N; head -c 8 /dev/urandom | od -An -tx1";

/// The Python the shell test records: randomness, the clock, hash seeds, UUIDs.
pub const PYTHON_SCRIPT: &str = "import random, time, os, uuid; \
print(random.random(), time.time(), os.urandom(8).hex(), hash('ferry'), uuid.uuid4())";

/// The root of the workspace (the parent of this package).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The directory holding the C programs the tests run.
pub fn programs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("programs")
}

/// The built `ferry` binary and the shim beside it.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// `ferry`.
    pub ferry: PathBuf,
    /// `libferry_preload.so`.
    pub preload: PathBuf,
}

/// Where the binaries are expected, and why there.
fn bin_dir() -> (PathBuf, &'static str) {
    if let Some(dir) = std::env::var_os("FERRY_BIN_DIR").filter(|d| !d.is_empty()) {
        return (PathBuf::from(dir), "FERRY_BIN_DIR");
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        let dir = if dir.is_absolute() {
            dir
        } else {
            workspace_root().join(dir)
        };
        return (dir.join("debug"), "CARGO_TARGET_DIR/debug");
    }
    (
        workspace_root().join("target").join("debug"),
        "the workspace's target/debug",
    )
}

/// Find `ferry` and `libferry_preload.so`. Panics (never skips) when either is
/// missing: the test command `scripts/test` builds them before the tests run.
pub fn binaries() -> Binaries {
    let (dir, why) = bin_dir();
    let bins = Binaries {
        ferry: dir.join("ferry"),
        preload: dir.join("libferry_preload.so"),
    };
    for path in [&bins.ferry, &bins.preload] {
        assert!(
            path.is_file(),
            "{} is missing (looked in {why}). These tests run the built binaries and do not \
             build them: run `scripts/test`, which builds the workspace first, or set \
             FERRY_BIN_DIR to the directory holding `ferry` and `libferry_preload.so`.",
            path.display()
        );
    }
    bins
}

/// A private directory for one test: compiled programs, logs, scratch files.
/// Removed when dropped.
#[derive(Debug)]
pub struct Workdir {
    dir: tempfile::TempDir,
}

impl Workdir {
    /// A fresh directory whose name starts with `label`.
    pub fn new(label: &str) -> Workdir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ferry-test-{label}-"))
            .tempdir()
            .expect("create a temporary directory");
        Workdir { dir }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Compile `tests/programs/NAME.c` with `gcc -O1 -g -pthread` into this
    /// directory and return the executable's path.
    pub fn compile(&self, name: &str) -> PathBuf {
        self.compile_with(name, &[])
    }

    /// [`compile`](Self::compile), with `extra` gcc arguments after the
    /// source file (more warnings, libraries such as `-lm`).
    pub fn compile_with(&self, name: &str, extra: &[&str]) -> PathBuf {
        let src = programs_dir().join(format!("{name}.c"));
        assert!(src.is_file(), "no test program {}", src.display());
        let exe = self.file(name);
        let out = Command::new("gcc")
            .args(["-O1", "-g", "-pthread", "-Wall", "-o"])
            .arg(&exe)
            .arg(&src)
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run gcc to build {}: {e}", src.display()));
        assert!(
            out.status.success(),
            "gcc failed to build {} ({}):\n{}",
            src.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        exe
    }
}

/// What a finished command did.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// A label for messages, e.g. `ferry record clocks`.
    pub what: String,
    /// How it ended.
    pub status: ExitStatus,
    /// Everything it wrote on stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote on stderr.
    pub stderr: Vec<u8>,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Outcome {
    /// The exit code; `None` when a signal ended it.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// stdout as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (lossy).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// The non-empty lines of stderr.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr_text()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// A readable account of the run: status, stdout and stderr.
    pub fn describe(&self) -> String {
        format!(
            "--- {}: {} after {:.2?}\n--- stdout ({} bytes):\n{}\n--- stderr ({} bytes):\n{}\n",
            self.what,
            describe_status(self.status),
            self.elapsed,
            self.stdout.len(),
            clip(&self.stdout),
            self.stderr.len(),
            clip(&self.stderr),
        )
    }
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("{status}"),
    }
}

/// Text for a message, cut to a readable size.
fn clip(bytes: &[u8]) -> String {
    const MAX: usize = 16 * 1024;
    let text = String::from_utf8_lossy(bytes);
    if text.len() <= MAX {
        return text.into_owned();
    }
    let mut cut = MAX;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}\n[… {} more bytes]", &text[..cut], text.len() - cut)
}

/// One output pipe of a running command, read by its own thread.
#[derive(Default)]
struct Stream {
    state: Mutex<StreamState>,
    changed: Condvar,
}

#[derive(Default)]
struct StreamState {
    bytes: Vec<u8>,
    closed: bool,
}

impl Stream {
    fn pump(self: Arc<Self>, mut pipe: impl Read + Send + 'static) {
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                let n = match pipe.read(&mut buf) {
                    Ok(0) => 0,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => 0,
                };
                let mut st = self.state.lock().unwrap();
                if n == 0 {
                    st.closed = true;
                } else {
                    st.bytes.extend_from_slice(&buf[..n]);
                }
                self.changed.notify_all();
                if n == 0 {
                    return;
                }
            }
        });
    }

    /// Wait until the pipe closes or `deadline` passes; return what was read
    /// and whether it closed.
    fn drain(&self, deadline: Instant) -> (Vec<u8>, bool) {
        let mut st = self.state.lock().unwrap();
        while !st.closed {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self.changed.wait_timeout(st, deadline - now).unwrap().0;
        }
        (st.bytes.clone(), st.closed)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.state.lock().unwrap().bytes.clone()
    }
}

/// A command running in its own process group, its stdout and stderr being
/// collected. Dropping it kills the group.
pub struct Running {
    what: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    pgid: i32,
    stdout: Arc<Stream>,
    stderr: Arc<Stream>,
    started: Instant,
}

impl Running {
    /// Start `cmd` (stdin from /dev/null) as the leader of a new process group.
    pub fn spawn(what: impl Into<String>, cmd: Command) -> Running {
        Running::start(what.into(), cmd, Stdio::null())
    }

    /// Start `cmd` as [`spawn`](Self::spawn) does, with its stdin a pipe that
    /// [`send`](Self::send) writes to. The pipe is closed when the command is
    /// finished or killed.
    pub fn spawn_with_stdin(what: impl Into<String>, cmd: Command) -> Running {
        Running::start(what.into(), cmd, Stdio::piped())
    }

    fn start(what: String, mut cmd: Command, stdin: Stdio) -> Running {
        cmd.stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}"));
        let stdout = Arc::new(Stream::default());
        let stderr = Arc::new(Stream::default());
        stdout
            .clone()
            .pump(child.stdout.take().expect("piped stdout"));
        stderr
            .clone()
            .pump(child.stderr.take().expect("piped stderr"));
        let pgid = i32::try_from(child.id()).expect("pid fits i32");
        Running {
            what,
            stdin: child.stdin.take(),
            child: Some(child),
            pgid,
            stdout,
            stderr,
            started: Instant::now(),
        }
    }

    /// The process id of the command (also its process group id).
    pub fn pid(&self) -> i32 {
        self.pgid
    }

    /// Write `bytes` to the command's stdin (see
    /// [`spawn_with_stdin`](Self::spawn_with_stdin)). Panics, with everything
    /// it printed so far, when the write fails (the command closed its stdin
    /// or exited).
    pub fn send(&mut self, bytes: &[u8]) {
        let stdin = self
            .stdin
            .as_mut()
            .unwrap_or_else(|| panic!("{}: stdin is not a pipe, or already closed", self.what));
        if let Err(e) = stdin.write_all(bytes).and_then(|()| stdin.flush()) {
            panic!(
                "{}: cannot write {:?} to its stdin: {e}\n--- stdout:\n{}\n--- stderr:\n{}",
                self.what,
                String::from_utf8_lossy(bytes),
                clip(&self.stdout.snapshot()),
                clip(&self.stderr.snapshot())
            );
        }
    }

    /// Kill the whole process group with SIGKILL, reap the leader and return
    /// what it printed.
    pub fn kill(mut self) -> Outcome {
        drop(self.stdin.take());
        kill_group(self.pgid);
        self.reap()
    }

    /// Wait until stdout holds a complete line starting with `prefix` and
    /// return it (without the newline). Panics, with everything printed so
    /// far, when the command ends or `timeout` passes first.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut st = self.stdout.state.lock().unwrap();
        loop {
            let text = String::from_utf8_lossy(&st.bytes);
            let mut complete = text.split_inclusive('\n').filter(|l| l.ends_with('\n'));
            if let Some(line) = complete.find(|l| l.starts_with(prefix)) {
                return line.trim_end_matches('\n').to_owned();
            }
            let now = Instant::now();
            if st.closed || now >= deadline {
                let why = if st.closed {
                    "its stdout closed"
                } else {
                    "timed out"
                };
                drop(st);
                let stderr = self.stderr.snapshot();
                panic!(
                    "{}: {why} before printing a line starting with {prefix:?} \
                     (waited {timeout:?})\n--- stdout:\n{}\n--- stderr:\n{}",
                    self.what,
                    clip(&self.stdout.snapshot()),
                    clip(&stderr)
                );
            }
            st = self
                .stdout
                .changed
                .wait_timeout(st, (deadline - now).min(Duration::from_millis(200)))
                .unwrap()
                .0;
        }
    }

    /// Wait for the command to exit, at most `timeout`. On timeout the whole
    /// process group is killed and the test fails with what it printed.
    /// Once the command has exited, any process it left in its group is killed.
    pub fn finish(mut self, timeout: Duration) -> Outcome {
        drop(self.stdin.take());
        let deadline = self.started + timeout;
        let mut timed_out = false;
        loop {
            if self.has_exited() {
                break;
            }
            if Instant::now() >= deadline {
                timed_out = true;
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        // The leader is exited but not reaped (or still running), so its pid
        // and the group id are still ours: killing the group is safe.
        kill_group(self.pgid);
        let (outcome, out_closed, err_closed) = self.reap_and_drain();
        if timed_out {
            panic!(
                "{} did not finish within {timeout:?}: killed its process group.\n{}",
                self.what,
                outcome.describe()
            );
        }
        assert!(
            out_closed && err_closed,
            "{} exited, but a process outside its process group kept its output open for {:?} \
             more.\n{}",
            self.what,
            DRAIN_GRACE,
            outcome.describe()
        );
        outcome
    }

    /// Reap the leader (its group already killed) and collect its output.
    fn reap(&mut self) -> Outcome {
        self.reap_and_drain().0
    }

    /// Reap the leader, then wait a little for the output pipes to close;
    /// also says whether each closed.
    fn reap_and_drain(&mut self) -> (Outcome, bool, bool) {
        let status = self
            .child
            .take()
            .expect("child not yet reaped")
            .wait()
            .expect("wait for child");
        let elapsed = self.started.elapsed();
        let drain_by = Instant::now() + DRAIN_GRACE;
        let (stdout, out_closed) = self.stdout.drain(drain_by);
        let (stderr, err_closed) = self.stderr.drain(drain_by);
        let outcome = Outcome {
            what: self.what.clone(),
            status,
            stdout,
            stderr,
            elapsed,
        };
        (outcome, out_closed, err_closed)
    }

    /// Whether the leader has exited, leaving it unreaped.
    fn has_exited(&self) -> bool {
        let Some(child) = &self.child else {
            return true;
        };
        let pid = libc::id_t::try_from(child.id()).expect("pid fits id_t");
        // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t; WNOWAIT leaves the
        // child waitable, so `Child::wait` still reaps it later.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            panic!("waitid for {}: {err}", self.what);
        }
        // SAFETY: waitid filled `info` (or left it zeroed when nothing changed);
        // si_pid is valid for child-state siginfo and zero otherwise.
        unsafe { info.si_pid() != 0 }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(self.pgid);
            let _ = child.wait();
        }
    }
}

/// SIGKILL every process in group `pgid`; a group already gone is fine.
fn kill_group(pgid: i32) {
    // SAFETY: kill has no memory-safety preconditions; a negative pid names a
    // process group, here one this test created and whose leader it has not
    // yet reaped.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Run `cmd` to completion with the standard [`TIMEOUT`].
pub fn run(what: impl Into<String>, cmd: Command) -> Outcome {
    Running::spawn(what, cmd).finish(TIMEOUT)
}

/// A way to run `ferry`, from a test's working directory.
#[derive(Clone, Debug)]
pub struct Ferry {
    bins: Binaries,
    cwd: PathBuf,
}

impl Ferry {
    /// Locate the binaries (panicking if they are missing) and run from `work`.
    pub fn new(work: &Workdir) -> Ferry {
        Ferry {
            bins: binaries(),
            cwd: work.path().to_path_buf(),
        }
    }

    /// The binaries this uses.
    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }

    /// A bare `ferry ARGS…` command, in the test's directory, with no
    /// `FERRY_PRELOAD` inherited from the caller's environment.
    pub fn raw<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = Command::new(&self.bins.ferry);
        cmd.args(args)
            .current_dir(&self.cwd)
            .env_remove("FERRY_PRELOAD");
        cmd
    }

    /// `ferry MODE --log LOG -- ARGV…`.
    pub fn command<S: AsRef<OsStr>>(&self, mode: &str, log: &Path, argv: &[S]) -> Command {
        let mut cmd = self.raw(&[mode]);
        cmd.arg("--log").arg(log).arg("--").args(argv);
        cmd
    }

    /// Run `ferry record --log LOG -- ARGV…` to completion.
    pub fn record<S: AsRef<OsStr>>(&self, log: &Path, argv: &[S]) -> Outcome {
        run(
            format!("ferry record {}", label(argv)),
            self.command("record", log, argv),
        )
    }

    /// Run `ferry replay --log LOG -- ARGV…` to completion.
    pub fn replay<S: AsRef<OsStr>>(&self, log: &Path, argv: &[S]) -> Outcome {
        run(
            format!("ferry replay {}", label(argv)),
            self.command("replay", log, argv),
        )
    }
}

/// A short name for a command line: the program's file name and its arguments.
pub fn label<S: AsRef<OsStr>>(argv: &[S]) -> String {
    let mut out = String::new();
    for (i, a) in argv.iter().enumerate() {
        let a = Path::new(a.as_ref());
        let shown = if i == 0 {
            a.file_name().map(Path::new).unwrap_or(a)
        } else {
            a
        };
        if i > 0 {
            out.push(' ');
        }
        let text = shown.to_string_lossy();
        if text.chars().count() > 40 {
            let cut: String = text.chars().take(37).collect();
            let _ = write!(out, "{cut}...");
        } else {
            out.push_str(&text);
        }
    }
    out
}

/// Assert that `outcome` exited with `code`, and never with a panic message.
pub fn assert_exit(outcome: &Outcome, code: i32) {
    assert_no_panic(outcome);
    assert_eq!(
        outcome.code(),
        Some(code),
        "{} should exit {code}, but it ended with {}.\n{}",
        outcome.what,
        describe_status(outcome.status),
        outcome.describe()
    );
}

/// Assert that stderr holds no Rust panic message.
pub fn assert_no_panic(outcome: &Outcome) {
    assert!(
        !outcome.stderr_text().contains("panicked"),
        "{} panicked instead of reporting an error.\n{}",
        outcome.what,
        outcome.describe()
    );
}

/// Assert a bad-input failure: exit `code`, stderr exactly one line,
/// containing every string of `needles` (compared without case).
pub fn assert_one_line_error(outcome: &Outcome, code: i32, needles: &[&str]) {
    assert_exit(outcome, code);
    let lines = outcome.stderr_lines();
    assert_eq!(
        lines.len(),
        1,
        "{} should print exactly one line on stderr.\n{}",
        outcome.what,
        outcome.describe()
    );
    let line = lines[0].to_lowercase();
    for needle in needles {
        assert!(
            line.contains(&needle.to_lowercase()),
            "{}: its error line should mention {needle:?}.\n{}",
            outcome.what,
            outcome.describe()
        );
    }
}

/// Assert that a replay printed exactly what the recording printed. On a
/// difference, shows both outputs, both stderrs and the first differing line.
pub fn assert_same_stdout(record: &Outcome, replay: &Outcome) {
    if record.stdout == replay.stdout {
        return;
    }
    let a = record.stdout_text();
    let b = replay.stdout_text();
    let (mut la, mut lb) = (a.lines(), b.lines());
    let mut first = String::from("(the outputs differ only in line endings)");
    for n in 1.. {
        match (la.next(), lb.next()) {
            (None, None) => break,
            (x, y) if x == y => continue,
            (x, y) => {
                first = format!("line {n}:\n  recorded: {x:?}\n  replayed: {y:?}");
                break;
            }
        }
    }
    panic!(
        "the replay's stdout differs from the recording's; first difference at {first}\n{}{}",
        record.describe(),
        replay.describe()
    );
}

/// Assert that a program's recorded output is not trivially empty.
pub fn assert_printed(outcome: &Outcome, at_least_lines: usize) {
    let lines = outcome.stdout_text().lines().count();
    assert!(
        lines >= at_least_lines,
        "{} printed {lines} lines, expected at least {at_least_lines}.\n{}",
        outcome.what,
        outcome.describe()
    );
}

/// Record `argv` into `log`, then replay it `replays` times. Asserts that the
/// recording exited 0 and printed at least `min_lines` lines, and that every
/// replay exited 0 and printed byte for byte what the recording printed.
/// Returns the recording.
pub fn record_and_replay<S: AsRef<OsStr>>(
    ferry: &Ferry,
    log: &Path,
    argv: &[S],
    min_lines: usize,
    replays: usize,
) -> Outcome {
    let record = ferry.record(log, argv);
    assert_exit(&record, 0);
    assert_printed(&record, min_lines);
    for i in 0..replays {
        let mut replay = ferry.replay(log, argv);
        if replays > 1 {
            replay.what = format!("{} (replay {} of {replays})", replay.what, i + 1);
        }
        assert_exit(&replay, 0);
        assert_same_stdout(&record, &replay);
    }
    record
}

/// Compile `tests/programs/NAME.c`, record it with `args`, replay it
/// `replays` times; see [`record_and_replay`].
pub fn record_and_replay_program(
    name: &str,
    args: &[&str],
    min_lines: usize,
    replays: usize,
) -> Outcome {
    let work = Workdir::new(name);
    let ferry = Ferry::new(&work);
    let exe = work.compile(name);
    let mut argv = vec![exe.into_os_string()];
    argv.extend(args.iter().map(Into::into));
    record_and_replay(
        &ferry,
        &work.file(&format!("{name}.log")),
        &argv,
        min_lines,
        replays,
    )
}

/// Parse the port out of `tcp_server`'s "listening PORT" line.
pub fn parse_listening(line: &str) -> u16 {
    line.strip_prefix("listening ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("tcp_server printed {line:?}, expected \"listening PORT\""))
}

/// Connect to 127.0.0.1:`port` once per line of `lines`, one after another;
/// send the line, read the answer to EOF, check it is
/// `hello LINE <number> <clock>`, and return the answers.
pub fn tcp_clients(port: u16, lines: &[&str]) -> Vec<String> {
    let mut answers = Vec::new();
    for line in lines {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to the server on port {port}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(format!("{line}\n").as_bytes())
            .expect("send a line to the server");
        let mut answer = String::new();
        BufReader::new(&s)
            .read_line(&mut answer)
            .expect("read the server's answer");
        let words: Vec<&str> = answer.split_whitespace().collect();
        assert!(
            words.len() == 4
                && words[0] == "hello"
                && words[1] == *line
                && words[2].parse::<u32>().is_ok()
                && words[3].contains('.'),
            "the server answered {answer:?} to {line:?}, expected \"hello {line} NUMBER SECS.NANOS\""
        );
        answers.push(answer.trim_end().to_owned());
    }
    answers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn collects_output_and_exit_code() {
        let out = run("sh", sh("echo out; echo err >&2; exit 3"));
        assert_eq!(out.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr_lines(), ["err"]);
    }

    #[test]
    fn a_hung_command_fails_within_its_timeout() {
        let started = Instant::now();
        let result = std::panic::catch_unwind(|| {
            Running::spawn("hang", sh("sleep 100 & sleep 100")).finish(Duration::from_millis(500))
        });
        let msg = result.expect_err("a hung command must fail the test");
        let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("did not finish"), "{msg}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_leftover_process_in_the_group_does_not_hold_the_test() {
        let started = Instant::now();
        let out = run("leaves a child", sh("sleep 100 & echo done"));
        assert_eq!(out.code(), Some(0));
        assert_eq!(out.stdout, b"done\n");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn waits_for_a_streamed_line() {
        let mut r = Running::spawn(
            "streams",
            sh("echo first; sleep 0.2; echo 'listening 42'; sleep 0.2"),
        );
        assert_eq!(parse_listening(&r.wait_for_line("listening ", TIMEOUT)), 42);
        assert_eq!(r.finish(TIMEOUT).code(), Some(0));
    }

    #[test]
    fn labels_commands_shortly() {
        assert_eq!(label(&["/tmp/x/clocks", "3"]), "clocks 3");
    }
}
