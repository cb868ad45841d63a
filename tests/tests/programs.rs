//! The programs the record/replay tests use really are nondeterministic: run
//! natively (without Ferry), two runs print different output. This is what
//! makes the record/replay tests able to fail. Needs no Ferry binary.

use std::ffi::OsStr;
use std::process::Command;

use ferry_tests::{
    assert_exit, parse_listening, run, tcp_clients, Outcome, Running, Workdir, BASH_SCRIPT,
    PYTHON_SCRIPT, TIMEOUT,
};

/// Runs that may be needed to see two different outputs: the clocks differ
/// every run, the thread interleaving almost every run.
const ATTEMPTS: usize = 5;

fn native<S: AsRef<OsStr>>(argv: &[S]) -> Outcome {
    let mut cmd = Command::new(argv[0].as_ref());
    cmd.args(&argv[1..]);
    let out = run(format!("native {}", ferry_tests::label(argv)), cmd);
    assert_exit(&out, 0);
    assert!(
        !out.stdout.is_empty(),
        "{} printed nothing.\n{}",
        out.what,
        out.describe()
    );
    out
}

/// Run `one` until two runs print different output.
fn assert_varies(name: &str, mut one: impl FnMut() -> Outcome) {
    let first = one();
    for _ in 1..ATTEMPTS {
        if one().stdout != first.stdout {
            return;
        }
    }
    panic!(
        "{name} printed the same output in {ATTEMPTS} native runs.\n{}",
        first.describe()
    );
}

fn assert_program_varies(name: &str) {
    let work = Workdir::new(name);
    let exe = work.compile(name);
    assert_varies(name, || native(&[&exe]));
}

#[test]
fn clocks_is_nondeterministic() {
    assert_program_varies("clocks");
}

#[test]
fn random_is_nondeterministic() {
    assert_program_varies("random");
}

#[test]
fn procfs_is_nondeterministic() {
    assert_program_varies("procfs");
}

#[test]
fn threads_is_nondeterministic() {
    assert_program_varies("threads");
}

#[test]
fn forks_is_nondeterministic() {
    assert_program_varies("forks");
}

#[test]
fn fault_handler_is_nondeterministic() {
    assert_program_varies("fault_handler");
}

#[test]
fn pass_fd_is_nondeterministic() {
    assert_program_varies("pass_fd");
}

#[test]
fn signals_is_nondeterministic() {
    assert_program_varies("signals");
}

#[test]
fn tcp_server_is_nondeterministic() {
    let work = Workdir::new("tcp-native");
    let exe = work.compile("tcp_server");
    assert_varies("tcp_server", || {
        let mut cmd = Command::new(&exe);
        cmd.arg("2");
        let mut server = Running::spawn("native tcp_server", cmd);
        let port = parse_listening(&server.wait_for_line("listening ", TIMEOUT));
        tcp_clients(port, &["one", "two"]);
        let out = server.finish(TIMEOUT);
        assert_exit(&out, 0);
        out
    });
}

#[test]
fn bash_pipeline_is_nondeterministic() {
    assert_varies("bash", || native(&["bash", "-c", BASH_SCRIPT]));
}

#[test]
fn python_one_liner_is_nondeterministic() {
    assert_varies("python3", || native(&["python3", "-c", PYTHON_SCRIPT]));
}
