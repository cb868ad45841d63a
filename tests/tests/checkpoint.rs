//! Checkpoint and restore of whole programs, in the manner of CRIU's zdtm
//! static tests: each program under `tests/programs/ckpt_*.c` holds one kind
//! of state, and checks it after a restore.
//!
//! The protocol (every program follows it; `tests/programs/ckpt.h` is its C
//! side, `ferry_tests::ckpt` its Rust side):
//!
//! 1. The test starts `ferry exec -- PROGRAM ARGS…` with stdin, stdout and
//!    stderr piped, in a directory of its own. The program sets up its
//!    state, prints exactly `ready` and a newline on stdout, flushes, and
//!    blocks reading one line from stdin with read(2) on descriptor 0 (no
//!    stdio buffering on stdin).
//! 2. Once it has seen `ready`, the test runs
//!    `ferry checkpoint PID --image DIR` (PID is the program's: `ferry exec`
//!    keeps its process id) and asserts it exits 0; then it kills the
//!    original with SIGKILL and reaps it.
//! 3. The test starts `ferry restore --image DIR` with new pipes and writes
//!    `go` and a newline to its stdin. The restored program's read continues
//!    on restore's stdin and gets `go`. The program checks every piece of its
//!    state: as it was before the checkpoint, and things driven by time still
//!    going (a periodic timer keeps firing). It prints `ok KIND` and exits 0,
//!    or prints `FAIL <what, expected, got>` and exits 1. The test asserts
//!    exit 0 and a stdout of exactly `ok KIND` and a newline.
//! 4. Every program also runs natively (`native_*` tests: no Ferry; `go` is
//!    written right after `ready`) and must print `ok KIND` there: its checks
//!    pass when nothing was restored.
//!
//! Every run is bounded by [`TIMEOUT`](ferry_tests::TIMEOUT) and its process
//! group is killed when the test ends, passing or failing.

use std::fs;
use std::process::Command;

use ferry_tests::ckpt::{process_files, NetNamespace, Subject, Trial};
use ferry_tests::{assert_exit, assert_one_line_error, run, Ferry, Running, Workdir, TIMEOUT};

/// The arguments and the environment `ckpt_env` expects (it checks them
/// against the same values).
fn env_subject(work: &Workdir) -> Subject {
    Subject::c_program(work, "env")
        .args(&["first", "two words", ""])
        .env("CKPT_ENV_VALUE", "a value = with spaces, and \"quotes\"")
}

fn env_trial() -> Trial {
    let work = Workdir::new("ckpt-env");
    let subject = env_subject(&work);
    Trial { work, subject }
}

/// Python with live state: a dict of 100 000 entries, a seeded
/// `random.Random` advanced 1000 draws, a file open at an offset, its pid.
const PYTHON_STATE: &str = r#"
import os, random, sys
data = bytes(range(256)) * 40
with open("py.data", "wb") as w:
    w.write(data)
table = {i: str(i * i) for i in range(100000)}
rng = random.Random(12345)
for _ in range(1000):
    rng.random()
f = open("py.data", "rb", buffering=0)
f.seek(777)
assert f.read(3) == data[777:780]
pid = os.getpid()
print("ready", flush=True)
line = sys.stdin.readline()
def fail(what):
    print("FAIL " + what, flush=True)
    sys.exit(1)
if line != "go\n":
    fail("stdin: expected 'go', got %r" % line)
if len(table) != 100000 or any(table[i] != str(i * i) for i in range(100000)):
    fail("the dict of 100000 entries changed")
fresh = random.Random(12345)
for _ in range(1000):
    fresh.random()
want = [fresh.random() for _ in range(5)]
got = [rng.random() for _ in range(5)]
if got != want:
    fail("random.Random: expected %r, got %r" % (want, got))
if f.tell() != 780 or os.lseek(f.fileno(), 0, os.SEEK_CUR) != 780:
    fail("file offset: expected 780, got %d" % f.tell())
if f.read(4) != data[780:784]:
    fail("file: the bytes at 780 differ")
if os.getpid() != pid:
    fail("os.getpid(): expected %d, got %d" % (pid, os.getpid()))
print("ok python", flush=True)
"#;

fn python_trial() -> Trial {
    Trial::new("python", Subject::python("python", PYTHON_STATE))
}

// --- Natively: each program's checks pass when nothing is restored. ---

#[test]
fn native_env() {
    env_trial().native();
}

#[test]
fn native_maps() {
    Trial::c_program("maps").native();
}

#[test]
fn native_files() {
    Trial::c_program("files").native();
}

#[test]
fn native_pipes() {
    Trial::c_program("pipes").native();
}

#[test]
fn native_socketpair() {
    Trial::c_program("socketpair").native();
}

#[test]
fn native_udp() {
    Trial::c_program("udp").native();
}

#[test]
fn native_listen() {
    Trial::c_program("listen").native();
}

#[test]
fn native_itimer() {
    Trial::c_program("itimer").native();
}

#[test]
fn native_posix_timer() {
    Trial::c_program("posix_timer").native();
}

#[test]
fn native_timerfd() {
    Trial::c_program("timerfd").native();
}

#[test]
fn native_signalfd() {
    Trial::c_program("signalfd").native();
}

#[test]
fn native_eventfd_epoll() {
    Trial::c_program("eventfd_epoll").native();
}

#[test]
fn native_mutex_threads() {
    Trial::c_program("mutex_threads").native();
}

#[test]
fn native_fpu() {
    Trial::c_program("fpu").native();
}

#[test]
fn native_vdso() {
    Trial::c_program("vdso").native();
}

#[test]
fn native_rlimit_umask_cwd() {
    Trial::c_program("rlimit_umask_cwd").native();
}

#[test]
fn native_sigaltstack() {
    Trial::c_program("sigaltstack").native();
}

#[test]
fn native_sigactions() {
    Trial::c_program("sigactions").native();
}

#[test]
fn native_python() {
    python_trial().native();
}

// --- Checkpoint, kill, restore: the state is all there. ---

#[test]
fn argv_environment_and_pid_survive_a_restore() {
    env_trial().checkpoint_kill_restore();
}

#[test]
fn every_kind_of_mapping_and_its_contents_survive_a_restore() {
    Trial::c_program("maps").checkpoint_kill_restore();
}

#[test]
fn file_offsets_flags_and_unlinked_files_survive_a_restore() {
    Trial::c_program("files").checkpoint_kill_restore();
}

#[test]
fn a_pipes_unread_bytes_survive_a_restore() {
    Trial::c_program("pipes").checkpoint_kill_restore();
}

#[test]
fn bytes_queued_in_unix_socketpairs_survive_a_restore() {
    Trial::c_program("socketpair").checkpoint_kill_restore();
}

#[test]
fn a_bound_udp_socket_keeps_its_port_and_receives_after_a_restore() {
    Trial::c_program("udp").checkpoint_kill_restore();
}

#[test]
fn a_listening_tcp_socket_keeps_its_port_and_accepts_after_a_restore() {
    Trial::c_program("listen").checkpoint_kill_restore();
}

#[test]
fn an_interval_timer_keeps_firing_after_a_restore() {
    Trial::c_program("itimer").checkpoint_kill_restore();
}

#[test]
fn posix_timers_keep_their_ids_and_keep_firing_after_a_restore() {
    Trial::c_program("posix_timer").checkpoint_kill_restore();
}

#[test]
fn a_timerfd_keeps_expiring_after_a_restore() {
    Trial::c_program("timerfd").checkpoint_kill_restore();
}

#[test]
fn a_signalfd_and_a_pending_signal_survive_a_restore() {
    Trial::c_program("signalfd").checkpoint_kill_restore();
}

#[test]
fn an_eventfd_in_an_epoll_set_survives_a_restore() {
    Trial::c_program("eventfd_epoll").checkpoint_kill_restore();
}

#[test]
fn threads_blocked_on_a_mutex_and_a_condvar_resume_after_a_restore() {
    Trial::c_program("mutex_threads").checkpoint_kill_restore();
}

#[test]
fn vector_and_fpu_registers_of_a_spinning_thread_survive_a_restore() {
    Trial::c_program("fpu").checkpoint_kill_restore();
}

#[test]
fn the_vdso_still_works_at_its_address_after_a_restore() {
    Trial::c_program("vdso").checkpoint_kill_restore();
}

#[test]
fn limits_umask_and_working_directory_survive_a_restore() {
    Trial::c_program("rlimit_umask_cwd").checkpoint_kill_restore();
}

#[test]
fn a_signal_still_runs_on_the_alternate_stack_after_a_restore() {
    Trial::c_program("sigaltstack").checkpoint_kill_restore();
}

#[test]
fn signal_handlers_and_the_signal_mask_survive_a_restore() {
    Trial::c_program("sigactions").checkpoint_kill_restore();
}

/// `python3` here is pyenv's shell script, which execs the interpreter: the
/// process `ferry checkpoint` is given is the interpreter by then.
#[test]
fn a_python_interpreter_with_live_state_survives_a_restore() {
    python_trial().checkpoint_kill_restore();
}

// --- A checkpoint does not disturb the original. ---

#[test]
fn a_checkpoint_leaves_a_pipes_unread_bytes_to_the_original() {
    Trial::c_program("pipes").checkpoint_continue_restore();
}

#[test]
fn a_checkpoint_leaves_socketpair_queues_to_the_original() {
    Trial::c_program("socketpair").checkpoint_continue_restore();
}

#[test]
fn a_checkpoint_leaves_an_eventfds_count_to_the_original() {
    Trial::c_program("eventfd_epoll").checkpoint_continue_restore();
}

#[test]
fn a_checkpoint_leaves_the_originals_timer_firing() {
    Trial::c_program("itimer").checkpoint_continue_restore();
}

// --- Restore somewhere else. ---

/// Restored inside a network namespace of its own (as on another host), a
/// listening socket gets its port on that namespace's loopback and accepts
/// there.
#[test]
fn a_listening_socket_restores_into_another_network_namespace() {
    let ns = NetNamespace::create();
    let trial = Trial::c_program("listen");
    let ferry = trial.ferry();
    let original = trial.exec(&ferry);
    trial.checkpoint(&ferry, &original);
    original.kill();
    trial.restore_and_check(
        &format!("ip netns exec {} ferry restore (listen)", ns.name()),
        ns.wrap(&trial.restore_command(&ferry)),
    );
}

// --- Bad input: exit 2 and one line saying what and where. ---

#[test]
fn restoring_a_truncated_image_file_names_the_file_and_the_offset() {
    let (trial, victim, name) = killed_pipes_image();
    let len = fs::metadata(&victim).expect("stat the process file").len();
    fs::OpenOptions::new()
        .write(true)
        .open(&victim)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncate the process file");
    let out = run(
        "ferry restore (truncated image)",
        trial.restore_command(&trial.ferry()),
    );
    assert_one_line_error(&out, 2, &[&name, "offset"]);
}

/// The `pipes` program checkpointed and killed: the trial, its process
/// file and that file's name.
fn killed_pipes_image() -> (Trial, std::path::PathBuf, String) {
    let trial = Trial::c_program("pipes");
    let ferry = trial.ferry();
    let original = trial.exec(&ferry);
    trial.checkpoint(&ferry, &original);
    original.kill();
    let files = process_files(&trial.image());
    let victim = files.first().cloned().unwrap_or_else(|| {
        panic!(
            "the image {} holds no process file (N.fimg)",
            trial.image().display()
        )
    });
    let name = victim
        .file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned();
    (trial, victim, name)
}

#[test]
fn restoring_a_directory_without_a_manifest_is_refused_in_one_line() {
    let work = Workdir::new("ckpt-no-manifest");
    let ferry = Ferry::new(&work);
    let dir = work.file("image");
    fs::create_dir(&dir).expect("create an empty image directory");
    fs::write(
        dir.join("1.fimg.tmp"),
        b"FERRYIMG left by a checkpoint that did not finish",
    )
    .expect("write a leftover file");
    let mut cmd = ferry.raw(&["restore", "--image"]);
    cmd.arg(&dir);
    let out = run("ferry restore (no manifest)", cmd);
    assert_one_line_error(&out, 2, &["manifest.fimg"]);
}

#[test]
fn restoring_from_a_directory_that_does_not_exist_is_refused_in_one_line() {
    let work = Workdir::new("ckpt-no-dir");
    let ferry = Ferry::new(&work);
    let dir = work.file("no-such-image");
    let mut cmd = ferry.raw(&["restore", "--image"]);
    cmd.arg(&dir);
    let out = run("ferry restore (no directory)", cmd);
    assert_one_line_error(&out, 2, &["no-such-image"]);
}

#[test]
fn checkpointing_a_process_not_under_the_shim_is_refused_in_one_line() {
    let work = Workdir::new("ckpt-not-shim");
    let ferry = Ferry::new(&work);
    let mut sleep = Command::new("sleep");
    sleep.arg("30");
    let sleeper = Running::spawn("sleep 30", sleep);
    let pid = sleeper.pid().to_string();
    let mut cmd = ferry.raw(&["checkpoint", &pid, "--image"]);
    cmd.arg(work.file("image"));
    let out = run(format!("ferry checkpoint {pid} (plain sleep)"), cmd);
    assert_one_line_error(&out, 2, &[&pid]);
    assert!(
        !work.file("image").join("manifest.fimg").exists(),
        "a refused checkpoint wrote a manifest.\n{}",
        out.describe()
    );
    sleeper.kill();
}

#[test]
fn checkpointing_a_pid_that_does_not_exist_is_refused_in_one_line() {
    let work = Workdir::new("ckpt-no-pid");
    let ferry = Ferry::new(&work);
    // A process that has exited and been reaped: its pid names nothing.
    let probe = Running::spawn("true", Command::new("true"));
    let pid = probe.pid().to_string();
    assert_exit(&probe.finish(TIMEOUT), 0);
    let mut cmd = ferry.raw(&["checkpoint", &pid, "--image"]);
    cmd.arg(work.file("image"));
    let out = run(format!("ferry checkpoint {pid} (no such process)"), cmd);
    assert_one_line_error(&out, 2, &[&pid]);
}

// ---------------------------------------------------------------------------
// Incremental images.

/// `ferry checkpoint PID --image DIR [--parent PARENT]`, asserted to exit
/// 0; returns its report line.
fn checkpoint_into(
    t: &Trial,
    program: &Running,
    dir: &std::path::Path,
    parent: Option<&std::path::Path>,
) -> String {
    let pid = program.pid().to_string();
    let mut cmd = t.ferry().raw(&["checkpoint", &pid, "--image"]);
    cmd.arg(dir);
    if let Some(p) = parent {
        cmd.arg("--parent").arg(p);
    }
    let out = run(
        format!("ferry checkpoint {pid} --image {}", dir.display()),
        cmd,
    );
    assert_exit(&out, 0);
    out.stdout_text()
}

fn image_file_len(dir: &std::path::Path) -> u64 {
    let files = process_files(dir);
    assert_eq!(
        files.len(),
        1,
        "{} should hold one process file",
        dir.display()
    );
    fs::metadata(&files[0])
        .expect("stat the process file")
        .len()
}

#[test]
fn native_incremental() {
    let work = Workdir::new("ckpt-incremental-native");
    let exe = Subject::c_program(&work, "incremental").argv[0].clone();
    let mut cmd = Command::new(exe);
    cmd.arg("native").current_dir(work.path());
    let out = run("native ckpt_incremental", cmd);
    assert_exit(&out, 0);
    assert_eq!(
        out.stdout_text(),
        "ready\nstepped 1\nstepped 2\nok incremental\n"
    );
}

#[test]
fn a_chain_of_incremental_images_restores_the_memory_of_the_last() {
    let t = Trial::c_program("incremental");
    let ferry = t.ferry();
    let mut program = t.exec(&ferry);
    let full = t.work.file("full");
    let first = t.work.file("first");
    let line = checkpoint_into(&t, &program, &full, None);
    assert!(
        line.contains("full image 1"),
        "the first checkpoint should be full image 1: {line}"
    );
    program.send(b"1\n");
    program.wait_for_line("stepped 1", TIMEOUT);
    let line = checkpoint_into(&t, &program, &first, Some(&full));
    assert!(
        line.contains("incremental image 2 (parent 1)"),
        "the second checkpoint should be incremental image 2: {line}"
    );
    program.send(b"2\n");
    program.wait_for_line("stepped 2", TIMEOUT);
    checkpoint_into(&t, &program, &t.image(), Some(&first));
    program.kill();
    // About 1% of the heap block changed: the incremental image is a
    // small part of the full one.
    let (f, i) = (image_file_len(&full), image_file_len(&first));
    assert!(
        i * 4 < f,
        "the incremental image ({i} bytes) should be far smaller than the full one ({f} bytes)"
    );
    t.restore_and_check(
        "ferry restore (incremental chain)",
        t.restore_command(&ferry),
    );
}

#[test]
fn an_incremental_checkpoint_whose_parent_is_not_the_last_is_refused() {
    let t = Trial::c_program("incremental");
    let ferry = t.ferry();
    let program = t.exec(&ferry);
    let a = t.work.file("a");
    let b = t.work.file("b");
    checkpoint_into(&t, &program, &a, None);
    checkpoint_into(&t, &program, &b, None);
    // Image a is not the process's last checkpoint: what changed between
    // a and b would be missing.
    let pid = program.pid().to_string();
    let mut cmd = ferry.raw(&["checkpoint", &pid, "--image"]);
    cmd.arg(t.image()).arg("--parent").arg(&a);
    let out = run("ferry checkpoint with a stale parent", cmd);
    assert_one_line_error(&out, 1, &["incremental checkpoint must follow"]);
    assert!(
        !t.image().join("manifest.fimg").exists(),
        "a refused checkpoint must leave no image"
    );
    program.kill();
}

#[test]
fn a_restored_program_is_checkpointed_and_restored_again() {
    let t = Trial::c_program("incremental");
    let ferry = t.ferry();
    let mut program = t.exec(&ferry);
    let (full, first) = (t.work.file("full"), t.work.file("first"));
    checkpoint_into(&t, &program, &full, None);
    program.send(b"1\n");
    program.wait_for_line("stepped 1", TIMEOUT);
    checkpoint_into(&t, &program, &first, Some(&full));
    program.kill();
    // The restored process (ferry restore's pid) goes on from step 1 and
    // is checkpointed in its turn: full (its tracking starts afresh),
    // then incremental.
    let mut restore = t.ferry().raw(&["restore", "--image"]);
    restore.arg(&first);
    let mut restored = Running::spawn_with_stdin("ferry restore (first generation)", restore);
    // Restored once the shim's region is back at its descriptor.
    let region = format!("/proc/{}/fd/1000", restored.pid());
    let deadline = std::time::Instant::now() + TIMEOUT;
    while fs::read_link(&region).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the restored process has no region at {region} after {TIMEOUT:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (again, second) = (t.work.file("again"), t.work.file("second"));
    let line = checkpoint_into(&t, &restored, &again, None);
    assert!(
        line.contains("full image 3"),
        "the restored process numbers its images on from the one it came from: {line}"
    );
    restored.send(b"2\n");
    restored.wait_for_line("stepped 2", TIMEOUT);
    checkpoint_into(&t, &restored, &second, Some(&again));
    restored.kill();
    let mut last = t.ferry().raw(&["restore", "--image"]);
    last.arg(&second);
    t.restore_and_check("ferry restore (second generation)", last);
}

#[test]
fn restoring_an_image_with_a_flipped_byte_names_the_file_and_the_offset() {
    let (trial, victim, name) = killed_pipes_image();
    let mut bytes = fs::read(&victim).expect("read the process file");
    // A byte in the middle: page data, most likely; whatever it is, a
    // checksum covers it.
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    fs::write(&victim, &bytes).expect("write the process file back");
    let out = run(
        "ferry restore (a flipped byte)",
        trial.restore_command(&trial.ferry()),
    );
    assert_one_line_error(&out, 2, &[&name, "offset"]);
}

#[test]
fn a_checkpoint_whose_program_dies_leaves_no_image() {
    let trial = Trial::c_program("pipes");
    let ferry = trial.ferry();
    let original = trial.exec(&ferry);
    // Stopped, the program cannot take the checkpoint signal: the request
    // waits, and the program dies meanwhile.
    let pid = original.pid();
    // SAFETY: a signal to the test's own child; no memory is involved.
    let stopped = unsafe { libc::kill(pid, libc::SIGSTOP) };
    assert_eq!(stopped, 0, "SIGSTOP the program");
    let mut cmd = ferry.raw(&["checkpoint", &pid.to_string(), "--image"]);
    cmd.arg(trial.image());
    let checkpoint = Running::spawn_with_stdin("ferry checkpoint (of a program that dies)", cmd);
    std::thread::sleep(std::time::Duration::from_millis(300));
    original.kill();
    let out = checkpoint.finish(TIMEOUT);
    assert_one_line_error(&out, 1, &["died during the checkpoint", "holds no image"]);
    assert!(
        !trial.image().join("manifest.fimg").exists(),
        "an interrupted checkpoint must leave no manifest"
    );
    assert!(
        process_files(&trial.image()).is_empty(),
        "an interrupted checkpoint must leave no process file"
    );
}

/// `ferryd` gives a replica's checkpoint up when a command (a promotion)
/// comes while a copy of the process writes a full image: the promotion
/// must not wait seconds for the image. What is given up leaves no image
/// that looks whole; the program runs on as it was, and the next
/// checkpoint is whole and restores.
#[test]
fn a_checkpoint_given_up_while_its_image_is_written_leaves_no_image_and_the_program_runs_on() {
    use std::cell::Cell;
    let trial = Trial::c_program("large");
    let ferry = trial.ferry();
    let mut original = trial.exec(&ferry);
    let pid = original.pid() as u32;
    let mut map = ferry_host::checkpoint::open_region(pid).unwrap();
    // SAFETY: the mapping is the program's region, REGION_LEN bytes, page
    // aligned, and outlives `region` (both live to the end of the test).
    let region = unsafe { ferry_ring::Region::from_raw(map.as_mut_ptr()) };
    let told = Cell::new(0u32);
    let give_up = |_done: u64, total: u64| {
        assert!(
            total >= 512 << 20,
            "the total guessed is the resident memory: {total}"
        );
        told.set(told.get() + 1);
        false
    };
    let given_up = trial.work.file("given-up");
    let request = |image, progress| ferry_host::checkpoint::Request {
        image,
        parent: None,
        parent_named: None,
        timeout: 120,
        position: None,
        progress,
    };
    let e = ferry_host::checkpoint::take(&region, pid, &request(&given_up, Some(&give_up)))
        .unwrap_err();
    assert!(
        matches!(e, ferry_host::checkpoint::Error::GivenUp { .. }),
        "{e}"
    );
    assert!(told.get() >= 1, "no word of progress");
    assert!(
        !given_up.join("manifest.fimg").exists() && process_files(&given_up).is_empty(),
        "a checkpoint given up must leave no image"
    );
    // The next one, waited for, is whole; then the program checks its heap.
    let image = trial.image();
    ferry_host::checkpoint::take(&region, pid, &request(&image, None)).unwrap();
    original.send(ferry_tests::ckpt::GO);
    let out = original.finish(TIMEOUT);
    ferry_tests::ckpt::assert_ok(&out, &format!("ready\n{}", trial.subject.ok_line()));
    trial.restore_and_check(
        "ferry restore (after a checkpoint given up)",
        trial.restore_command(&ferry),
    );
}
