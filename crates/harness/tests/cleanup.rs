//! Nothing is left behind: on Ctrl-C in the middle of a run, and by
//! `ferry-chaos cleanup` after a run kept with --keep.
//!
//! Needs root, `ip`, `nft`, `python3`, and `ferry-kv` built.

use ferry_harness::cluster::Binaries;
use ferry_harness::netns;
use ferry_harness::topology::{self, Topology, PREFIX};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

fn require() -> PathBuf {
    if let Err(e) = topology::require(true) {
        panic!("this test builds network namespaces and cannot run here: {e}");
    }
    let b = Binaries::locate();
    if let Err(e) = b.check_kv() {
        panic!("{e}: run `cargo build -p ferry-kv` first");
    }
    b.ferry_kv
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

#[test]
fn ctrl_c_in_the_middle_of_a_run_removes_everything() {
    let kv = require();
    let fake = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fake/ferry-fake");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry-chaos"))
        .args(["--short", "--scenario", "kill-witness"])
        .env("FERRY_BIN", &fake)
        .env("FERRYD_BIN", &fake)
        .env("FERRY_KV_BIN", &kv)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // "… (namespaces ferry-chaos-<id>-*) …"
    let id = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("ferry-chaos says which namespaces it uses");
        if let Some(rest) = line.split(&format!("(namespaces {PREFIX}")).nth(1) {
            break rest.split("-*").next().unwrap().to_owned();
        }
    };
    let prefix = format!("{PREFIX}{id}-");
    // Wait until the daemons run, then interrupt.
    let start = Instant::now();
    while processes_mentioning(&format!("{PREFIX}{id}/")).len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the daemons of run {id} started"
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(topology::namespaces_with_prefix(&prefix).len() >= 5);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ferry-chaos ended after SIGINT"
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
    assert!(topology::namespaces_with_prefix(&prefix).is_empty());
    assert!(!Path::new(&format!("/tmp/{PREFIX}{id}")).exists());
    let start = Instant::now();
    // Killed processes may take a moment to be reaped by init.
    while !processes_mentioning(&format!("{PREFIX}{id}/")).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "processes of run {id} left: {:?}",
            processes_mentioning(&format!("{PREFIX}{id}/"))
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cleanup_removes_what_a_kept_run_left() {
    require();
    let id = topology::new_run_id();
    let topo = Topology::up(&id, &[("n1", 1), ("client", 10)], true).unwrap();
    let ns = topo.host("n1").unwrap().ns.clone();
    let mut sleeper = netns::spawn_in(&ns, Command::new("sleep").arg("300")).unwrap();
    let dir = topo.dir().clone();
    drop(topo);
    let prefix = format!("{PREFIX}{id}-");
    assert_eq!(topology::namespaces_with_prefix(&prefix).len(), 3, "kept");
    assert!(dir.exists());
    let cleanup = |force: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ferry-chaos"));
        c.args(["cleanup", "--prefix", &prefix]);
        if force {
            c.arg("--force");
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // This process made the run and still runs: it is left alone.
    let text = cleanup(false);
    assert!(text.contains(&format!("left run {id} alone")), "{text}");
    assert_eq!(topology::namespaces_with_prefix(&prefix).len(), 3);
    // Once its owner is gone (here: a process that never was), it goes.
    std::fs::write(dir.join("owner"), "1 0\n").unwrap();
    let text = cleanup(false);
    assert!(
        text.contains(&format!("removed namespace {prefix}n1")),
        "{text}"
    );
    assert!(topology::namespaces_with_prefix(&prefix).is_empty());
    assert!(!dir.exists());
    assert!(sleeper.wait().is_ok(), "the sleep was killed");

    // --force removes a run whose owner runs.
    let id = topology::new_run_id();
    let prefix = format!("{PREFIX}{id}-");
    drop(Topology::up(&id, &[("n1", 1)], true).unwrap());
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry-chaos"));
    let out = c
        .args(["cleanup", "--force", "--prefix", &prefix])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(topology::namespaces_with_prefix(&prefix).is_empty());

    // A prefix that is not the harness's is refused.
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-chaos"))
        .args(["cleanup", "--prefix", "netns"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
