//! Cases that once broke replay or hung a recording: data the kernel copies
//! without passing it through the program, deaths by signal, children
//! killed with SIGKILL, a program the shim cannot enter, a pipe closed early.

use std::process::{Command, Stdio};

use ferry_tests::{
    assert_exit, assert_printed, assert_same_stdout, record_and_replay, Ferry, Workdir,
};

/// `cat` copies the file with copy_file_range/sendfile when it can: the
/// bytes never pass through the program, yet replay must print what the
/// file held during the recording, not what it holds now.
#[test]
fn a_file_changed_after_recording_replays_its_old_content() {
    let work = Workdir::new("cat");
    let ferry = Ferry::new(&work);
    let file = work.file("data.txt");
    std::fs::write(&file, "content at recording time\n").unwrap();
    let log = work.file("cat.log");
    let argv = ["cat".as_ref(), file.as_os_str()];
    let record = ferry.record(&log, &argv);
    assert_exit(&record, 0);
    assert_eq!(
        record.stdout_text(),
        "content at recording time\n",
        "{}",
        record.describe()
    );
    std::fs::write(&file, "changed afterwards, and longer than before\n").unwrap();
    let replay = ferry.replay(&log, &argv);
    assert_exit(&replay, 0);
    assert_same_stdout(&record, &replay);
}

/// A shell that kills itself with SIGTERM: the recording ends with the
/// death (ferry record exits 1); replay dies at the same point, so it
/// prints "before" and not "after", and reaches the end of the log.
#[test]
fn death_by_a_signal_replays_at_the_same_point() {
    let work = Workdir::new("sigterm");
    let ferry = Ferry::new(&work);
    let log = work.file("sigterm.log");
    let argv = ["sh", "-c", "echo before; kill -TERM $$; echo after"];
    let record = ferry.record(&log, &argv);
    assert_exit(&record, 1);
    assert_eq!(record.stdout_text(), "before\n", "{}", record.describe());
    let replay = ferry.replay(&log, &argv);
    assert_exit(&replay, 0);
    assert_same_stdout(&record, &replay);
}

/// A child killed with SIGKILL by its parent, and the status the parent
/// saw; then a random number, so the replay must really come from the log.
#[test]
fn a_child_killed_with_sigkill_replays() {
    let work = Workdir::new("kill9");
    let ferry = Ferry::new(&work);
    record_and_replay(
        &ferry,
        &work.file("kill9.log"),
        &[
            "bash",
            "-c",
            "sleep 5 & p=$!; sleep 0.1; kill -9 $p; wait $p; echo status=$? $RANDOM",
        ],
        1,
        1,
    );
}

/// `yes | head -3`: `yes` dies of SIGPIPE when `head` exits.
#[test]
fn a_pipe_closed_early_replays() {
    let work = Workdir::new("sigpipe");
    let ferry = Ferry::new(&work);
    record_and_replay(
        &ferry,
        &work.file("sigpipe.log"),
        &["bash", "-c", "yes | head -3; echo ${PIPESTATUS[@]} $RANDOM"],
        4,
        1,
    );
}

/// A statically linked program started from bash never loads the shim.
/// The recording must neither hang (it holds the ordering lock across the
/// exec until the new image logs it) nor lose the shell around it.
#[test]
fn a_static_program_the_shim_cannot_enter_does_not_hang() {
    let work = Workdir::new("static");
    let ferry = Ferry::new(&work);
    let src = ferry_tests::programs_dir().join("static_hello.c");
    let exe = work.file("static_hello");
    let gcc = Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(&exe)
        .arg(&src)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run gcc");
    assert!(
        gcc.status.success(),
        "gcc -static failed (libc6-dev provides libc.a):\n{}",
        String::from_utf8_lossy(&gcc.stderr)
    );
    let script = format!("{} world; echo shell goes on $RANDOM", exe.display());
    let record = record_and_replay(
        &ferry,
        &work.file("static.log"),
        &["bash", "-c", &script],
        2,
        1,
    );
    assert_printed(&record, 2);
    assert!(
        record
            .stdout_text()
            .starts_with("static program says world\n"),
        "{}",
        record.describe()
    );
}

/// More processes over a recording's life than the process table has slots
/// (512): slots of reaped processes are used again.
#[test]
fn more_processes_than_the_process_table_holds() {
    let work = Workdir::new("many");
    let ferry = Ferry::new(&work);
    record_and_replay(
        &ferry,
        &work.file("many.log"),
        &[
            "bash",
            "-c",
            "for i in $(seq 600); do /bin/true; done; echo done $RANDOM",
        ],
        1,
        1,
    );
}

/// `ferry exec` (the shim in passthrough: nothing logged) runs a pipeline,
/// an exec after a fork, and lets a program die of a signal it left at
/// its default action.
#[test]
fn exec_runs_forks_execs_and_default_signals() {
    let work = Workdir::new("exec");
    let ferry = Ferry::new(&work);
    let out = ferry_tests::run(
        "ferry exec pipeline",
        ferry.raw(&[
            "exec",
            "--",
            "sh",
            "-c",
            "yes | head -2; /bin/true; exec /bin/echo done",
        ]),
    );
    assert_exit(&out, 0);
    assert_eq!(out.stdout_text(), "y\ny\ndone\n", "{}", out.describe());
    let out = ferry_tests::run(
        "ferry exec sigterm",
        ferry.raw(&["exec", "--", "sh", "-c", "kill -TERM $$; echo after"]),
    );
    assert_ne!(out.code(), Some(0), "{}", out.describe());
    assert!(!out.stdout_text().contains("after"), "{}", out.describe());
}
