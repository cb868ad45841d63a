//! `ferry-chaos` against a stand-in for ferryd (tests/fake/ferry-fake): one
//! that keeps Ferry's promises must pass every scenario, and ones that break
//! them must be caught, with a non-zero exit. This checks the harness, not
//! Ferry: the runs against the real ferryd are in `ferryd.rs`.
//!
//! Needs root, `ip`, `nft`, `python3`, and `ferry-kv` built (`cargo build
//! -p ferry-kv`).

use ferry_harness::cluster::Binaries;
use ferry_harness::topology::{self, PREFIX};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// One harness run at a time: four at once on a two-core machine make the
/// stand-in daemon (a Python script) miss its own deadlines, which the
/// harness then rightly reports.
static TURN: Mutex<()> = Mutex::new(());

fn fake() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fake/ferry-fake")
}

/// Run `ferry-chaos --short --scenario NAME` with the stand-in; the exit
/// code and the JSON report.
fn chaos(scenario: &str, mode: Option<&str>) -> (i32, Value) {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = topology::require(true) {
        panic!("this test builds network namespaces and cannot run here: {e}");
    }
    assert!(
        Command::new("python3").arg("--version").output().is_ok(),
        "this test needs python3 for the stand-in ferryd"
    );
    let kv = Binaries::locate();
    if let Err(e) = kv.check_kv() {
        panic!("{e}: run `cargo build -p ferry-kv` first");
    }
    let dir = tempfile_dir(scenario);
    let json = dir.join("report.json");
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry-chaos"));
    c.args(["--short", "--scenario", scenario, "--json"])
        .arg(&json)
        .env("FERRY_BIN", fake())
        .env("FERRYD_BIN", fake())
        .env("FERRY_KV_BIN", &kv.ferry_kv);
    match mode {
        Some(m) => c.env("FERRY_FAKE", m),
        None => c.env_remove("FERRY_FAKE"),
    };
    let out = c.output().expect("run ferry-chaos");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "no report ({e}); stdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let _ = std::fs::remove_dir_all(&dir);
    let report: Value = serde_json::from_str(&text).unwrap();
    // Nothing of the run is left.
    for r in report["runs"].as_array().unwrap() {
        for n in r["notes"].as_array().unwrap() {
            if let Some(id) = n.as_str().and_then(|n| n.strip_prefix("run id ")) {
                assert!(
                    topology::namespaces_with_prefix(&format!("{PREFIX}{id}-")).is_empty(),
                    "namespaces of run {id} left behind"
                );
            }
        }
    }
    (out.status.code().unwrap_or(-1), report)
}

fn tempfile_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferry-harness-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// No false alarm on a correct takeover: the stand-in keeps its promises
/// in the kill-host scenario (a takeover with writes in flight, a host that
/// comes back). The real ferryd runs every scenario in `tests/ferryd.rs`;
/// the stand-in is a Python script whose own lease timing slips when the
/// machine is loaded, so it is not asked for the lease-timing scenarios
/// (freeze-ferryd, drop-replication, catchup-fault) here.
#[test]
fn a_daemon_that_keeps_the_promises_raises_no_alarm() {
    let (code, report) = chaos("kill-host", Some("good"));
    let summary: Vec<String> = report["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            !(r["violations"].as_array().unwrap().is_empty()
                && r["unchecked"].as_array().unwrap().is_empty()
                && r["split_brain"].as_array().unwrap().is_empty())
        })
        .map(|r| r.to_string())
        .collect();
    assert_eq!(code, 0, "failed runs: {summary:#?}");
    assert_eq!(report["ok"], true);
    for s in report["scenarios"].as_array().unwrap() {
        assert_eq!(s["writes_lost"], 0, "{s}");
        assert!(s["writes_acknowledged"].as_u64().unwrap() > 0, "{s}");
        assert!(s["failover_p50_ms"].as_f64().is_some(), "{s}");
    }
}

#[test]
fn writes_lost_in_a_takeover_are_reported() {
    let (code, report) = chaos("kill-host", Some("lossy"));
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["ok"], false);
    let s = &report["scenarios"][0];
    assert_eq!(s["scenario"], "kill-host");
    assert_eq!(s["runs"], 1);
    assert!(s["writes_acknowledged"].as_u64().unwrap() > 0, "{s:#}");
    assert!(s["writes_lost"].as_u64().unwrap() > 0, "{s:#}");
    assert_eq!(s["split_brain_events"], 0, "{report:#}");
    // The stand-in takes over after a 1 s lease.
    let ms = s["failover_p50_ms"].as_f64().expect("a failover time");
    assert!(ms > 500.0 && ms < 10_000.0, "{ms}");
    let run = &report["runs"][0];
    assert_eq!(run["primary_before"], "n1");
    assert_eq!(run["primary_after"], "n2");
}

#[test]
fn two_primaries_in_one_epoch_are_reported() {
    let (code, report) = chaos("freeze-ferryd", Some("split"));
    assert_eq!(code, 1);
    let s = &report["scenarios"][0];
    assert!(s["split_brain_events"].as_u64().unwrap() > 0, "{report:#}");
    let events = report["runs"][0]["split_brain"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.as_str().unwrap().starts_with("epoch 1: n1")),
        "{events:?}"
    );
}

#[test]
fn replicas_that_differ_are_reported() {
    let (code, report) = chaos("kill-witness", Some("lossy"));
    assert_eq!(code, 1);
    let run = &report["runs"][0];
    assert_eq!(run["lost"], 0, "no failover, nothing lost: {run:#}");
    assert_eq!(run["primary_after"], "n1");
    let violations = run["violations"].as_array().unwrap();
    assert!(
        violations
            .iter()
            .any(|v| v.as_str().unwrap().starts_with("replica state differs")),
        "{violations:?}"
    );
}
