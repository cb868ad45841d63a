//! C programs recorded with `ferry record` and replayed with `ferry replay`:
//! each replay must exit 0 and print byte for byte what the recording printed.
//! Every program's output differs between two native runs
//! (`programs.rs` checks that), so these tests can only pass if Ferry
//! recorded and replayed the inputs.

use ferry_tests::record_and_replay_program;

/// clock_gettime (realtime, monotonic), gettimeofday and time, with sleeps.
#[test]
fn clocks() {
    record_and_replay_program("clocks", &[], 12, 1);
}

/// getrandom, getentropy, /dev/urandom through stdio, rand() seeded from the
/// clock and pid, getrandom through syscall(2) and through a bare `syscall`
/// instruction (which only the safety net can see), getpid.
#[test]
fn random() {
    record_and_replay_program("random", &[], 7, 1);
}

/// /proc/self/stat, /proc/uptime, /proc/loadavg and /proc/self/status, read
/// through stdio (libc's internal reads) and through read(2).
#[test]
fn procfs() {
    record_and_replay_program("procfs", &[], 10, 1);
}

/// Four threads on a mutex and two condition variables. The interleaving is
/// the scheduler's choice natively; each of three replays must reproduce the
/// recorded one exactly.
#[test]
fn threads() {
    record_and_replay_program("threads", &[], 8, 3);
}

/// fork (also through syscall()), waitpid, a pipe between processes,
/// posix_spawn of /bin/echo and of /bin/date +%N.
#[test]
fn forks() {
    let out = record_and_replay_program("forks", &[], 13, 1);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("raw child pid=") && l.ends_with("exited 9")),
        "the child made through syscall(SYS_fork) did not run and exit 9:\n{text}"
    );
}

/// SIGALRM from alarm() and setitimer caught in pause() and in a blocking
/// read(), and SIGCHLD from an exiting child.
#[test]
fn signals() {
    record_and_replay_program("signals", &[], 14, 1);
}

/// A pipe's read end passed to a child over a unix socket (SCM_RIGHTS), a
/// random secret read through it.
#[test]
fn passed_descriptors() {
    record_and_replay_program("pass_fd", &[], 2, 1);
}

/// A fault handler whose mask blocks every signal makes raw system calls
/// (the dispatch's SIGSYS must still reach the shim) and recovers with
/// siglongjmp, three times.
#[test]
fn fault_handler_with_a_full_mask() {
    record_and_replay_program("fault_handler", &[], 7, 1);
}
