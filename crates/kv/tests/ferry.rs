//! ferry-kv recorded by `ferry record` while clients write to it, stopped
//! with SIGTERM, then replayed by `ferry replay` with no client at all: the
//! replay must reach the end of the log, exit 0 and print what the recording
//! printed.
//!
//! It runs the `ferry` binary built by the workspace (`scripts/test` builds
//! it first): `$FERRY_BIN_DIR`, else `$CARGO_TARGET_DIR/debug`, else the
//! workspace's `target/debug`.

mod common;

use common::{kv_binary, parse_listening, signal};
use ferry_kv::client::Client;
use ferry_kv::workload::{Stop, Workload, WorkloadConfig};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The longest a recording or a replay may take.
const LIMIT: Duration = Duration::from_secs(120);

fn ferry() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let (dir, why) = if let Some(d) = std::env::var_os("FERRY_BIN_DIR").filter(|d| !d.is_empty()) {
        (PathBuf::from(d), "FERRY_BIN_DIR")
    } else if let Some(d) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        (workspace.join(d).join("debug"), "CARGO_TARGET_DIR/debug")
    } else {
        (
            workspace.join("target/debug"),
            "the workspace's target/debug",
        )
    };
    let ferry = dir.join("ferry");
    let shim = dir.join("libferry_preload.so");
    assert!(
        ferry.is_file() && shim.is_file(),
        "{} or {} is missing (looked in {why}); build the workspace first: \
         cargo build --workspace --bins --lib, or set FERRY_BIN_DIR",
        ferry.display(),
        shim.display()
    );
    ferry
}

/// A child's whole stdout, read in a thread; its first line comes early.
struct Output {
    first: mpsc::Receiver<String>,
    all: thread::JoinHandle<String>,
}

fn collect_stdout(child: &mut Child) -> Output {
    let mut out = child.stdout.take().expect("piped stdout");
    let (tx, first) = mpsc::channel();
    let all = thread::spawn(move || {
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        let mut sent = false;
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
            }
            if !sent {
                if let Some(end) = text.iter().position(|&b| b == b'\n') {
                    let _ = tx.send(String::from_utf8_lossy(&text[..=end]).into_owned());
                    sent = true;
                }
            }
        }
        String::from_utf8_lossy(&text).into_owned()
    });
    Output { first, all }
}

fn wait_limited(child: &mut Child, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("{what} did not end within {LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The program `ferry record` started: its only child.
fn recorded_pid(ferry_pid: u32) -> u32 {
    let path = format!("/proc/{ferry_pid}/task/{ferry_pid}/children");
    let children = std::fs::read_to_string(&path).expect("read the children of ferry record");
    let pids: Vec<u32> = children
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 1, "ferry record has one child: {pids:?}");
    pids[0]
}

#[test]
fn recorded_under_load_then_replayed_without_clients() {
    let ferry = ferry();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("kv.flog");
    let kv = kv_binary();
    let argv = [kv.as_os_str(), "--listen".as_ref(), "127.0.0.1:0".as_ref()];

    let started = Instant::now();
    let mut record = Command::new(&ferry)
        .arg("record")
        .arg("--log")
        .arg(&log)
        .arg("--")
        .args(argv)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ferry record");
    let out = collect_stdout(&mut record);
    let line = out
        .first
        .recv_timeout(LIMIT)
        .expect("ferry-kv prints its listening line under ferry record");
    let addr = parse_listening(&line).to_string();

    // Three clients write 50 keys each and read each one back.
    let w = Workload::run(WorkloadConfig {
        addr: addr.clone(),
        clients: 3,
        stop: Stop::Writes(50),
        value_bytes: 12,
        read_back: true,
        reconnect: None,
        timeout: Duration::from_secs(30),
        ..WorkloadConfig::default()
    });
    let r = w.report();
    assert_eq!(
        (r.acknowledged, r.reads, r.read_mismatches),
        (150, 150, 0),
        "{r}"
    );
    let mut c = Client::connect(&addr, Duration::from_secs(30)).unwrap();
    assert_eq!(c.count().unwrap(), 150);
    assert_eq!(c.digest().unwrap(), w.expected_digest());
    assert!(w.verify(&addr).unwrap().is_clean());
    c.quit().unwrap();

    signal(recorded_pid(record.id()), "TERM");
    let status = wait_limited(&mut record, "ferry record");
    let recorded = out.all.join().unwrap();
    let mut err = String::new();
    record
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(0), "ferry record: {status:?}\n{err}");
    assert_eq!(
        recorded, line,
        "the recording printed only its listening line"
    );
    let recording_took = started.elapsed();
    let started = Instant::now();

    let mut replay = Command::new(&ferry)
        .arg("replay")
        .arg("--log")
        .arg(&log)
        .arg("--")
        .args(argv)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ferry replay");
    let out = collect_stdout(&mut replay);
    let status = wait_limited(&mut replay, "ferry replay");
    let replayed = out.all.join().unwrap();
    let mut err = String::new();
    replay
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(0), "ferry replay: {status:?}\n{err}");
    assert_eq!(replayed, recorded);
    eprintln!(
        "recording (with its clients) took {recording_took:?}, the replay {:?}",
        started.elapsed()
    );
}
