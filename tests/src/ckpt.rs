//! Driving a program through `ferry exec`, `ferry checkpoint` and
//! `ferry restore`, and natively, for the checkpoint tests
//! (`tests/tests/checkpoint.rs`, where the protocol the programs follow is
//! written down; the C side is `tests/programs/ckpt.h`).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{assert_exit, label, run, Ferry, Outcome, Running, Workdir, TIMEOUT};

/// The line a program prints once its state is set up.
pub const READY: &str = "ready";

/// What the test writes to the program's stdin to let it check its state.
pub const GO: &[u8] = b"go\n";

/// The gcc arguments every checkpoint program is built with: all warnings,
/// and the libraries of `fesetround` and `timer_create`.
const CFLAGS: &[&str] = &["-Wextra", "-lm", "-lrt"];

/// One program of the checkpoint suite and how to start it.
#[derive(Clone, Debug)]
pub struct Subject {
    /// What the program prints after `ok` when every check passed.
    pub kind: String,
    /// The command line.
    pub argv: Vec<OsString>,
    /// Variables added to the environment.
    pub env: Vec<(OsString, OsString)>,
}

impl Subject {
    /// `tests/programs/ckpt_KIND.c`, compiled into `work`.
    pub fn c_program(work: &Workdir, kind: &str) -> Subject {
        let exe = work.compile_with(&format!("ckpt_{kind}"), CFLAGS);
        Subject {
            kind: kind.to_owned(),
            argv: vec![exe.into_os_string()],
            env: Vec::new(),
        }
    }

    /// `python3 -c SCRIPT`, whose success line is `ok KIND`.
    pub fn python(kind: &str, script: &str) -> Subject {
        Subject {
            kind: kind.to_owned(),
            argv: vec!["python3".into(), "-c".into(), script.into()],
            env: Vec::new(),
        }
    }

    /// Add arguments to the command line.
    pub fn args<S: AsRef<OsStr>>(mut self, args: &[S]) -> Subject {
        self.argv
            .extend(args.iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Add a variable to the environment.
    pub fn env(mut self, key: &str, value: &str) -> Subject {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The line a successful check prints.
    pub fn ok_line(&self) -> String {
        format!("ok {}\n", self.kind)
    }

    fn label(&self) -> String {
        label(&self.argv)
    }
}

/// A checkpoint test's directory, its `ferry`, and the program.
pub struct Trial {
    /// Scratch space: the compiled program, the files it makes (it runs
    /// here), the image.
    pub work: Workdir,
    /// The program.
    pub subject: Subject,
}

impl Trial {
    /// A trial of `tests/programs/ckpt_KIND.c`.
    pub fn c_program(kind: &str) -> Trial {
        let work = Workdir::new(&format!("ckpt-{kind}"));
        let subject = Subject::c_program(&work, kind);
        Trial { work, subject }
    }

    /// A trial of any program.
    pub fn new(label: &str, subject: Subject) -> Trial {
        Trial {
            work: Workdir::new(&format!("ckpt-{label}")),
            subject,
        }
    }

    /// Where the checkpoint goes (`ferry checkpoint` creates it).
    pub fn image(&self) -> PathBuf {
        self.work.file("image")
    }

    /// `ferry`, run from the trial's directory (panics when not built).
    pub fn ferry(&self) -> Ferry {
        Ferry::new(&self.work)
    }

    /// Run the program without Ferry: wait for `ready`, send `go`, and
    /// assert it exits 0 having printed exactly `ready` and `ok KIND`.
    pub fn native(&self) -> Outcome {
        let mut cmd = Command::new(&self.subject.argv[0]);
        cmd.args(&self.subject.argv[1..])
            .envs(self.subject.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.work.path());
        let mut running =
            Running::spawn_with_stdin(format!("native {}", self.subject.label()), cmd);
        running.wait_for_line(READY, TIMEOUT);
        running.send(GO);
        let out = running.finish(TIMEOUT);
        assert_ok(&out, &format!("{READY}\n{}", self.subject.ok_line()));
        out
    }

    /// Start `ferry exec -- PROGRAM…` and wait until it prints `ready`.
    pub fn exec(&self, ferry: &Ferry) -> Running {
        let mut cmd = ferry.raw(&["exec", "--"]);
        cmd.args(&self.subject.argv)
            .envs(self.subject.env.iter().map(|(k, v)| (k, v)));
        let mut running =
            Running::spawn_with_stdin(format!("ferry exec {}", self.subject.label()), cmd);
        running.wait_for_line(READY, TIMEOUT);
        running
    }

    /// `ferry checkpoint PID --image IMAGE` of the running program; asserts
    /// it exits 0.
    pub fn checkpoint(&self, ferry: &Ferry, program: &Running) -> Outcome {
        let pid = program.pid().to_string();
        let mut cmd = ferry.raw(&["checkpoint", &pid, "--image"]);
        cmd.arg(self.image());
        let out = run(
            format!("ferry checkpoint {pid} ({})", self.subject.label()),
            cmd,
        );
        assert_exit(&out, 0);
        out
    }

    /// `ferry restore --image IMAGE`, in the trial's directory.
    pub fn restore_command(&self, ferry: &Ferry) -> Command {
        let mut cmd = ferry.raw(&["restore", "--image"]);
        cmd.arg(self.image());
        cmd
    }

    /// Start a restore (`restore_command`, or the same wrapped in another
    /// command), send `go`, and assert the restored program exits 0 having
    /// printed exactly `ok KIND`.
    pub fn restore_and_check(&self, what: &str, cmd: Command) -> Outcome {
        let mut restored = Running::spawn_with_stdin(what, cmd);
        restored.send(GO);
        let out = restored.finish(TIMEOUT);
        assert_ok(&out, &self.subject.ok_line());
        out
    }

    /// The whole round: `ferry exec`, `ready`, `ferry checkpoint`, SIGKILL
    /// the original, `ferry restore`, `go`, and `ok KIND` from the restored
    /// program.
    pub fn checkpoint_kill_restore(&self) -> Outcome {
        let ferry = self.ferry();
        let original = self.exec(&ferry);
        self.checkpoint(&ferry, &original);
        original.kill();
        self.restore_and_check(
            &format!("ferry restore ({})", self.subject.label()),
            self.restore_command(&ferry),
        )
    }

    /// A checkpoint leaves the program running as it was: after it, `go`
    /// to the original gets `ok KIND` from it. Then the image, restored,
    /// gets `ok KIND` too.
    pub fn checkpoint_continue_restore(&self) -> Outcome {
        let ferry = self.ferry();
        let mut original = self.exec(&ferry);
        self.checkpoint(&ferry, &original);
        original.send(GO);
        let out = original.finish(TIMEOUT);
        assert_ok(&out, &format!("{READY}\n{}", self.subject.ok_line()));
        self.restore_and_check(
            &format!("ferry restore ({})", self.subject.label()),
            self.restore_command(&ferry),
        )
    }
}

/// Assert that a program exited 0 having printed exactly `stdout`.
pub fn assert_ok(out: &Outcome, stdout: &str) {
    assert_exit(out, 0);
    assert_eq!(
        out.stdout_text(),
        stdout,
        "{} exited 0 but should have printed exactly {stdout:?}.\n{}",
        out.what,
        out.describe()
    );
}

/// The process files of an image (`N.fimg`, not the manifest).
pub fn process_files(image: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(image)
        .unwrap_or_else(|e| panic!("cannot list the image {}: {e}", image.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("read an image directory entry").path())
        .filter(|p| {
            p.extension() == Some(OsStr::new("fimg"))
                && p.file_name() != Some(OsStr::new("manifest.fimg"))
        })
        .collect();
    files.sort();
    files
}

/// A network namespace of its own, with `lo` up, deleted when dropped
/// (also when the test fails).
pub struct NetNamespace {
    name: String,
}

impl NetNamespace {
    /// `ip netns add ferry-ckpt-…` and `ip -n … link set lo up`.
    pub fn create() -> NetNamespace {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("ferry-ckpt-{}-{nanos:x}", std::process::id());
        let mut add = Command::new("ip");
        add.args(["netns", "add", &name]);
        assert_exit(&run(format!("ip netns add {name}"), add), 0);
        let ns = NetNamespace { name };
        let mut up = Command::new("ip");
        up.args(["-n", &ns.name, "link", "set", "lo", "up"]);
        assert_exit(&run(format!("ip -n {} link set lo up", ns.name), up), 0);
        ns
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME PROGRAM ARGS…`, for `cmd`'s program, arguments
    /// and working directory.
    pub fn wrap(&self, cmd: &Command) -> Command {
        let mut wrapped = Command::new("ip");
        wrapped
            .args(["netns", "exec", &self.name])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        for (key, value) in cmd.get_envs() {
            match value {
                Some(v) => wrapped.env(key, v),
                None => wrapped.env_remove(key),
            };
        }
        wrapped
    }
}

impl Drop for NetNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
