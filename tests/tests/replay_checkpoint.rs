//! Checkpoints of a replay: `ferry replay --checkpoint-at N --image DIR`
//! stops feeding the program after record N, checkpoints it once it has
//! replayed that record, and goes on; `ferry replay --from-image DIR`
//! restores that image and replays only the records after N. What a user
//! cares about: the replay that starts from the image ends exactly as the
//! recording did, and the replay that took the image was not disturbed.

use std::ffi::OsString;
use std::path::Path;

use ferry_tests::{
    assert_exit, assert_one_line_error, parse_listening, run, tcp_clients, Ferry, Outcome, Running,
    Workdir, TIMEOUT,
};

/// `ferry replay -v [EXTRA…] --log LOG -- ARGV…`, run to the end.
fn replay(ferry: &Ferry, log: &Path, extra: &[OsString], argv: &[OsString]) -> Outcome {
    let mut cmd = ferry.raw(&["replay", "-v"]);
    cmd.args(extra).arg("--log").arg(log).arg("--").args(argv);
    run(format!("ferry replay {extra:?}"), cmd)
}

fn os(parts: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    parts.iter().map(|p| p.as_ref().to_os_string()).collect()
}

/// The record count of the log, from the summary of a whole replay.
fn records_in(ferry: &Ferry, log: &Path, argv: &[OsString]) -> u64 {
    let whole = replay(ferry, log, &[], argv);
    assert_exit(&whole, 0);
    let err = whole.stderr_text();
    err.split("replayed ")
        .nth(1)
        .and_then(|s| s.split(" of ").nth(1))
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no record count in the summary:\n{}", whole.describe()))
}

/// Replay with a checkpoint after record `at` into `image`; the replay
/// itself must end as the recording did.
fn checkpoint_at(
    ferry: &Ferry,
    log: &Path,
    at: u64,
    image: &Path,
    argv: &[OsString],
    recorded: &str,
) {
    let extra = os(&[&"--checkpoint-at", &at.to_string(), &"--image", &image]);
    let taking = replay(ferry, log, &extra, argv);
    assert_exit(&taking, 0);
    assert_eq!(
        taking.stdout_text(),
        recorded,
        "the replay that took the image printed otherwise than the recording\n{}",
        taking.describe()
    );
    assert!(
        taking
            .stderr_text()
            .contains(&format!("after record #{at}: checkpoint of ")),
        "{}",
        taking.describe()
    );
    assert!(
        image.join("manifest.fimg").is_file(),
        "{}",
        taking.describe()
    );
}

/// Replay from `image` to the end; returns what it printed.
fn from_image(
    ferry: &Ferry,
    log: &Path,
    image: &Path,
    argv: &[OsString],
    total: u64,
    at: u64,
) -> String {
    let extra = os(&[&"--from-image", &image]);
    let resumed = replay(ferry, log, &extra, argv);
    assert_exit(&resumed, 0);
    let want = format!(
        "replayed {total} of {total} records ({} published)",
        total - at
    );
    assert!(
        resumed.stderr_text().contains(&want),
        "expected {want:?}\n{}",
        resumed.describe()
    );
    resumed.stdout_text()
}

#[test]
fn a_multithreaded_replay_goes_on_from_an_image_taken_at_any_record() {
    let work = Workdir::new("rckpt-threads");
    let ferry = Ferry::new(&work);
    let exe = work.compile("threads");
    let argv = os(&[&exe]);
    let log = work.file("threads.log");
    let record = ferry.record(&log, &argv);
    assert_exit(&record, 0);
    let recorded = record.stdout_text();
    let total = records_in(&ferry, &log, &argv);
    assert!(
        total > 1000,
        "threads.c logs thousands of records, not {total}"
    );
    // Before the threads start, among them, and near the end.
    for at in [1, total / 3, 2 * total / 3, total - 20] {
        let image = work.file(&format!("img-{at}"));
        checkpoint_at(&ferry, &log, at, &image, &argv, &recorded);
        // threads.c prints everything at its end: the whole output.
        let out = from_image(&ferry, &log, &image, &argv, total, at);
        assert_eq!(
            out, recorded,
            "the replay from the image after record #{at} printed otherwise"
        );
    }
}

/// The process files of the image in `dir`.
fn process_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(".fimg") && name != "manifest.fimg"
        })
        .count()
}

#[test]
fn a_replay_of_three_processes_goes_on_from_an_image_of_all_three() {
    let work = Workdir::new("rckpt-tree");
    let ferry = Ferry::new(&work);
    let exe = work.compile("tree");
    let argv = os(&[&exe]);
    let log = work.file("tree.log");
    let record = ferry.record(&log, &argv);
    assert_exit(&record, 0);
    let recorded = record.stdout_text();
    assert!(
        recorded.contains("round 59:") && recorded.contains("worker2 pid 3 parent 1: 60 answers"),
        "{}",
        record.describe()
    );
    let total = records_in(&ferry, &log, &argv);
    // While the parent and both workers run, talking through a pipe with
    // requests queued in it, a socket pair and shared memory.
    for at in [total / 4, total / 2, 3 * total / 4] {
        let image = work.file(&format!("img-{at}"));
        checkpoint_at(&ferry, &log, at, &image, &argv, &recorded);
        assert_eq!(process_files(&image), 3, "the image after record #{at}");
        // tree.c prints everything after its last round: the whole output.
        let out = from_image(&ferry, &log, &image, &argv, total, at);
        assert_eq!(
            out, recorded,
            "the replay from the image after record #{at} printed otherwise"
        );
    }

    // One process file damaged in its pages: the restore fails naming it,
    // and no process of the program is left running.
    let image = work.file(&format!("img-{}", total / 2));
    let victim = image.join("3.fimg");
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&victim, bytes).unwrap();
    let damaged = replay(&ferry, &log, &os(&[&"--from-image", &image]), &argv);
    assert_exit(&damaged, 2);
    let err = damaged.stderr_text();
    assert!(
        err.contains("3.fimg: offset ") && damaged.stdout_text().is_empty(),
        "{}",
        damaged.describe()
    );
    let image_arg = image.to_string_lossy().into_owned();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&image_arg))
        .collect();
    assert!(left.is_empty(), "still running: {left:?}");
}

#[test]
fn a_tcp_server_replay_goes_on_from_an_image_with_no_network() {
    const CLIENTS: [&str; 3] = ["alpha", "bravo", "charlie"];
    let work = Workdir::new("rckpt-tcp");
    let ferry = Ferry::new(&work);
    let exe = work.compile("tcp_server");
    let log = work.file("tcp.log");
    let argv = os(&[&exe, &"3"]);
    let mut server = Running::spawn(
        "ferry record tcp_server",
        ferry.command("record", &log, &argv),
    );
    let port = parse_listening(&server.wait_for_line("listening ", TIMEOUT));
    tcp_clients(port, &CLIENTS);
    let record = server.finish(TIMEOUT);
    assert_exit(&record, 0);
    let recorded = record.stdout_text();
    let total = records_in(&ferry, &log, &argv);
    let mut last_len = usize::MAX;
    for at in [2, total / 2, total - 3] {
        let image = work.file(&format!("img-{at}"));
        checkpoint_at(&ferry, &log, at, &image, &argv, &recorded);
        // What the server had written before record `at` was written by
        // the replay that took the image; the rest comes now.
        let out = from_image(&ferry, &log, &image, &argv, total, at);
        assert!(
            recorded.ends_with(&out) && out.ends_with("served 3\n"),
            "after record #{at}: the replay from the image printed {out:?}, not the end of {recorded:?}"
        );
        assert!(out.len() <= last_len, "a later image printed more: {out:?}");
        last_len = out.len();
    }
    assert!(
        last_len < recorded.len(),
        "no image was taken after the server printed anything"
    );
}

#[test]
fn a_python_replay_goes_on_from_an_image_and_an_image_of_that() {
    let work = Workdir::new("rckpt-python");
    let ferry = Ferry::new(&work);
    let script = work.file("state.py");
    std::fs::write(
        &script,
        "import random, time, os, uuid\n\
         acc = []\n\
         for i in range(200):\n\
         \x20   acc.append((random.random(), time.time()))\n\
         print(len(acc), sum(a[0] for a in acc), os.urandom(4).hex(), uuid.uuid4(), hash('ferry'))\n",
    )
    .unwrap();
    let argv = os(&[&"python3", &script]);
    let log = work.file("py.log");
    let record = ferry.record(&log, &argv);
    assert_exit(&record, 0);
    let recorded = record.stdout_text();
    let total = records_in(&ferry, &log, &argv);
    let first = total * 3 / 4;
    let second = first + (total - first) / 2;
    let img1 = work.file("img-1");
    checkpoint_at(&ferry, &log, first, &img1, &argv, &recorded);
    assert_eq!(
        from_image(&ferry, &log, &img1, &argv, total, first),
        recorded
    );
    // A replay restored from an image is checkpointed in turn.
    let img2 = work.file("img-2");
    let extra = os(&[
        &"--from-image",
        &img1,
        &"--checkpoint-at",
        &second.to_string(),
        &"--image",
        &img2,
    ]);
    let chained = replay(&ferry, &log, &extra, &argv);
    assert_exit(&chained, 0);
    assert_eq!(chained.stdout_text(), recorded, "{}", chained.describe());
    assert_eq!(
        from_image(&ferry, &log, &img2, &argv, total, second),
        recorded
    );
}

#[test]
fn an_image_of_a_replay_is_refused_where_it_does_not_belong() {
    let work = Workdir::new("rckpt-bad");
    let ferry = Ferry::new(&work);
    let exe = work.compile("clocks");
    let argv = os(&[&exe]);
    let log = work.file("a.log");
    assert_exit(&ferry.record(&log, &argv), 0);
    let other = work.file("b.log");
    assert_exit(&ferry.record(&other, &argv), 0);
    let total = records_in(&ferry, &log, &argv);
    let image = work.file("img");
    let recorded = run("clocks", {
        let mut c = ferry.raw(&["replay"]);
        c.arg("--log").arg(&log).arg("--").args(&argv);
        c
    })
    .stdout_text();
    checkpoint_at(&ferry, &log, total / 2, &image, &argv, &recorded);

    // The same program, recorded again: another log (its clocks differ).
    let e = replay(&ferry, &other, &os(&[&"--from-image", &image]), &argv);
    assert_one_line_error(&e, 2, &["--from-image", "of another log"]);
    // Not a replay's feeder: `ferry restore` says what to use.
    let mut cmd = ferry.raw(&["restore", "--image"]);
    cmd.arg(&image);
    let e = run("ferry restore of a replay's image", cmd);
    assert_one_line_error(&e, 2, &["is of a replay", "--from-image"]);
    // No image there.
    let e = replay(
        &ferry,
        &log,
        &os(&[&"--from-image", &work.file("none")]),
        &argv,
    );
    assert_one_line_error(&e, 2, &["--from-image", "none"]);
    // Beyond the log.
    let beyond = (total + 1).to_string();
    let extra = os(&[&"--checkpoint-at", &beyond, &"--image", &work.file("img-x")]);
    let e = replay(&ferry, &log, &extra, &argv);
    assert_one_line_error(
        &e,
        2,
        &["--checkpoint-at", &format!("the log has {total} records")],
    );
    // An image already there is never written into.
    let extra = os(&[&"--checkpoint-at", &"2", &"--image", &image]);
    let e = replay(&ferry, &log, &extra, &argv);
    assert_eq!(e.code(), Some(2), "{}", e.describe());
    assert!(
        e.stderr_text().contains("--checkpoint-at"),
        "{}",
        e.describe()
    );
    // --image without --checkpoint-at is a usage error.
    let e = replay(&ferry, &log, &os(&[&"--image", &image]), &argv);
    assert_eq!(e.code(), Some(2), "{}", e.describe());
}
