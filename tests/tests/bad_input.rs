//! What `ferry` does with input it cannot use: a corrupt, truncated or foreign
//! log, a replay of another program, a missing program, log or shim, bad
//! usage. Each is one line on stderr and a documented exit code; never a
//! panic, never a hang (every run has a timeout).

use std::fs;

use ferry_tests::{assert_exit, assert_one_line_error, Ferry, Outcome, Workdir};

/// Record `clocks` into `work/clocks.log`; returns the program's path.
fn recorded_clocks(work: &Workdir, ferry: &Ferry) -> std::path::PathBuf {
    let exe = work.compile("clocks");
    let record = ferry.record(&work.file("clocks.log"), &[&exe]);
    assert_exit(&record, 0);
    exe
}

/// Every exit-2 error is one line starting "ferry: ".
fn assert_bad_input(outcome: &Outcome, needles: &[&str]) {
    assert_one_line_error(outcome, 2, needles);
    assert!(
        outcome.stderr_lines()[0].starts_with("ferry: "),
        "{}: the error line should start with \"ferry: \".\n{}",
        outcome.what,
        outcome.describe()
    );
}

#[test]
fn corrupted_log_names_the_offset() {
    let work = Workdir::new("corrupt");
    let ferry = Ferry::new(&work);
    let exe = recorded_clocks(&work, &ferry);
    let mut bytes = fs::read(work.file("clocks.log")).unwrap();
    assert!(
        bytes.len() >= 256,
        "the clocks log is only {} bytes",
        bytes.len()
    );
    // Invert 16 bytes in the middle. Records are padded to 8 bytes and the
    // padding may not be checksummed, so a run of 16 always reaches bytes the
    // reader must check (a length, a header field or a checksummed payload).
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0xff;
    }
    let bad = work.file("corrupt.log");
    fs::write(&bad, &bytes).unwrap();
    assert_bad_input(&ferry.replay(&bad, &[&exe]), &["offset"]);
}

#[test]
fn log_truncated_in_its_header_names_the_offset() {
    let work = Workdir::new("truncated");
    let ferry = Ferry::new(&work);
    let exe = recorded_clocks(&work, &ferry);
    let bytes = fs::read(work.file("clocks.log")).unwrap();
    // The file header is 64 bytes; cut it in the middle.
    let cut = work.file("cut.log");
    fs::write(&cut, &bytes[..40]).unwrap();
    assert_bad_input(&ferry.replay(&cut, &[&exe]), &["offset"]);
    let empty = work.file("empty.log");
    fs::write(&empty, b"").unwrap();
    assert_bad_input(&ferry.replay(&empty, &[&exe]), &["offset"]);
}

#[test]
fn a_file_that_is_not_a_log_is_refused_at_offset_zero() {
    let work = Workdir::new("foreign");
    let ferry = Ferry::new(&work);
    let exe = work.compile("clocks");
    let foreign = work.file("passwd.log");
    fs::copy("/etc/passwd", &foreign).unwrap();
    let out = ferry.replay(&foreign, &[&exe]);
    assert_bad_input(&out, &["offset"]);
    let line = out.stderr_lines()[0].to_lowercase();
    assert!(
        line.contains("magic") || mentions_offset_zero(&line),
        "the error should name offset 0 or the bad magic.\n{}",
        out.describe()
    );
}

/// Whether the first number after "offset" is zero ("offset 0", "offset: 0x0").
fn mentions_offset_zero(line: &str) -> bool {
    let Some(at) = line.find("offset") else {
        return false;
    };
    let rest = line[at + "offset".len()..].trim_start_matches(|c: char| !c.is_ascii_digit());
    let number: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    match number.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16) == Ok(0),
        None => number.parse::<u64>() == Ok(0),
    }
}

#[test]
fn replaying_another_program_diverges() {
    let work = Workdir::new("diverge");
    let ferry = Ferry::new(&work);
    recorded_clocks(&work, &ferry);
    let other = work.compile("random");
    let out = ferry.replay(&work.file("clocks.log"), &[&other]);
    assert_one_line_error(&out, 3, &["diverged"]);
}

/// The same command line, but the file now holds another program: the replay
/// sees a call the log does not have at that point.
#[test]
fn a_changed_program_at_the_same_path_diverges() {
    let work = Workdir::new("diverge-same-path");
    let ferry = Ferry::new(&work);
    let clocks = work.compile("clocks");
    let random = work.compile("random");
    let prog = work.file("prog");
    fs::copy(&clocks, &prog).unwrap();
    assert_exit(&ferry.record(&work.file("prog.log"), &[&prog]), 0);
    fs::copy(&random, &prog).unwrap();
    let out = ferry.replay(&work.file("prog.log"), &[&prog]);
    assert_one_line_error(&out, 3, &["diverged"]);
}

#[test]
fn a_missing_program_is_bad_input() {
    let work = Workdir::new("noprog");
    let ferry = Ferry::new(&work);
    let missing = work.file("no-such-program");
    assert_bad_input(&ferry.record(&work.file("x.log"), &[&missing]), &[]);

    recorded_clocks(&work, &ferry);
    assert_bad_input(&ferry.replay(&work.file("clocks.log"), &[&missing]), &[]);
}

#[test]
fn a_missing_log_is_bad_input() {
    let work = Workdir::new("nolog");
    let ferry = Ferry::new(&work);
    let exe = work.compile("clocks");
    assert_bad_input(&ferry.replay(&work.file("no-such.log"), &[&exe]), &[]);
}

#[test]
fn a_missing_shim_is_bad_input() {
    let work = Workdir::new("noshim");
    let ferry = Ferry::new(&work);
    let exe = work.compile("clocks");
    let mut cmd = ferry.command("record", &work.file("x.log"), &[&exe]);
    cmd.env("FERRY_PRELOAD", work.file("no-such-libferry_preload.so"));
    assert_bad_input(
        &ferry_tests::run("ferry record with a missing FERRY_PRELOAD", cmd),
        &[],
    );
}

#[test]
fn bad_usage_exits_2() {
    let work = Workdir::new("usage");
    let ferry = Ferry::new(&work);
    for args in [
        &["record"][..],
        &["replay", "--log", "x.log"],
        &["record", "--", "true"],
    ] {
        let out = ferry_tests::run(format!("ferry {}", args.join(" ")), ferry.raw(args));
        assert_exit(&out, 2);
        assert!(
            !out.stderr.is_empty(),
            "{}: bad usage should say why on stderr.\n{}",
            out.what,
            out.describe()
        );
    }
}
