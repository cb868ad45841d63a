//! The systemd unit passes `systemd-analyze verify` (when systemd-analyze
//! is installed), with ExecStart pointing at the built ferryd.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn the_unit_file_verifies() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts/systemd/ferryd.service");
    let text = std::fs::read_to_string(&unit).expect("read the unit");
    for key in [
        "Type=notify",
        "Restart=on-failure",
        "WatchdogSec=",
        "RuntimeDirectory=ferry",
        "/etc/ferry/ferryd.toml",
        "/var/lib/ferry",
        "/run/ferry/ferryd.sock",
    ] {
        assert!(text.contains(key), "the unit lacks {key}");
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed: only the keys were checked");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ferryd = common::bin("ferryd");
    let copy = dir.path().join("ferryd.service");
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/ferryd", ferryd.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("run systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    // Complaints about other units of this machine are not ours.
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("ferryd.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {err}"
    );
}

/// ferryd tells systemd it is ready once it listens, and pings the
/// watchdog at half of WatchdogSec (WATCHDOG_USEC).
#[test]
fn ferryd_notifies_ready_and_pings_the_watchdog() {
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    common::certs(&dir.path().join("certs"), &["solo"]);
    let sock_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&sock_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let port = common::free_port();
    let mut child = Command::new(common::bin("ferryd"))
        .args([
            "--node",
            "solo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--control",
            dir.path().join("solo.sock").to_str().unwrap(),
            "--certs",
            dir.path().join("certs").to_str().unwrap(),
        ])
        .env("NOTIFY_SOCKET", &sock_path)
        // WatchdogSec=0.4s: a ping at least every 0.2 s.
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let mut seen = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let Ok(n) = notify.recv(&mut buf) else { break };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        seen.push(msg);
        let pings = seen.iter().filter(|m| m.contains("WATCHDOG=1")).count();
        if seen.iter().any(|m| m.contains("READY=1")) && pings >= 3 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let ready = seen.iter().position(|m| m.contains("READY=1"));
    assert!(ready.is_some(), "no READY=1: {seen:?}");
    let pings = seen.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(pings >= 3, "watchdog pings: {seen:?}");
}
