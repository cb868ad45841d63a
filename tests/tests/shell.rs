//! Programs a user would protect without writing them: a bash pipeline and a
//! Python one-liner, both started through PATH. `python3` here is a pyenv
//! shim, a bash script that forks and execs several processes before the
//! interpreter starts.

use ferry_tests::{record_and_replay, Ferry, Workdir, BASH_SCRIPT, PYTHON_SCRIPT};

/// $RANDOM, date +%N, and /dev/urandom through a pipe into od.
#[test]
fn bash_pipeline() {
    let work = Workdir::new("bash");
    let ferry = Ferry::new(&work);
    record_and_replay(
        &ferry,
        &work.file("bash.log"),
        &["bash", "-c", BASH_SCRIPT],
        3,
        1,
    );
}

/// random.random(), time.time(), os.urandom, the per-process hash seed and
/// uuid4, on one line.
#[test]
fn python_one_liner() {
    let work = Workdir::new("python");
    let ferry = Ferry::new(&work);
    let record = record_and_replay(
        &ferry,
        &work.file("python.log"),
        &["python3", "-c", PYTHON_SCRIPT],
        1,
        1,
    );
    let words = record.stdout_text().split_whitespace().count();
    assert_eq!(
        words,
        5,
        "python printed something other than five values.\n{}",
        record.describe()
    );
}
