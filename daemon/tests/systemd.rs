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
