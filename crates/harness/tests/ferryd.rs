//! The scenarios against the real `ferryd` and `ferry`.
//!
//! They need `ferryd`, `ferry` and `ferry-kv` built next to the test
//! executables (`scripts/test` builds them first) or named by FERRYD_BIN,
//! FERRY_BIN and FERRY_KV_BIN, plus root, `ip` and `nft`. Without them they
//! fail and say what is missing: they never pass without having run. They
//! take turns (each builds its own hosts, and the machine may have only two
//! cores).

use ferry_harness::cluster::{Binaries, Cluster, ClusterConfig, REPLICAS};
use ferry_harness::topology;
use ferry_kv::workload::{Stop, WorkloadConfig};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// One cluster at a time.
static TURN: Mutex<()> = Mutex::new(());

fn require() -> Binaries {
    if let Err(e) = topology::require(true) {
        panic!("this test builds network namespaces and cannot run here: {e}");
    }
    let b = Binaries::locate();
    if let Err(e) = b.check_all() {
        panic!("{e}");
    }
    b
}

/// What `ferry demo` will show, through the library: three daemons, the
/// server protected, writes, the primary host killed, the takeover, and no
/// acknowledged write lost.
#[test]
fn the_whole_story_through_the_library() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let binaries = require();
    let id = topology::new_run_id();
    let mut cluster = Cluster::build(
        &id,
        ClusterConfig {
            binaries,
            ..ClusterConfig::default()
        },
    )
    .expect("hosts");
    cluster.start_daemons().expect("three ferryd");
    cluster.run_app(REPLICAS[0]).expect("ferry run");
    let (p0, s0) = cluster
        .primary(Duration::from_secs(2))
        .expect("a primary after ferry run");
    assert_eq!(p0, REPLICAS[0]);

    let before = cluster
        .write(WorkloadConfig {
            clients: 4,
            stop: Stop::Writes(200),
            ..WorkloadConfig::default()
        })
        .expect("writes before the fault");
    assert_eq!(before.report().acknowledged, 800, "{}", before.report());

    cluster.kill_host(&p0).expect("kill the primary host");
    let (p1, e1) = cluster
        .wait_takeover(&p0, s0.epoch, Duration::from_secs(30))
        .expect("the backup takes over");
    assert_eq!(p1, Cluster::other_replica(&p0));
    assert!(e1 > s0.epoch);

    let (_, verified) = cluster.verify(before).expect("verify");
    assert!(verified.is_clean(), "{verified}");
    let after = cluster
        .write(WorkloadConfig {
            clients: 2,
            stop: Stop::Writes(50),
            seed: 2,
            ..WorkloadConfig::default()
        })
        .expect("writes after the takeover");
    assert_eq!(after.report().acknowledged, 100);
    cluster.down().expect("nothing left");
}

/// Run `ferry-chaos --short --scenario all` with `extra` arguments; it
/// must pass every check of every scenario.
fn chaos_short(extra: &[&std::ffi::OsStr]) {
    let b = require();
    let json = std::env::temp_dir().join(format!("ferry-chaos-short-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-chaos"))
        .args(["--short", "--scenario", "all", "--json"])
        .arg(&json)
        .args(extra)
        .env("FERRY_BIN", &b.ferry)
        .env("FERRYD_BIN", &b.ferryd)
        .env("FERRY_KV_BIN", &b.ferry_kv)
        .output()
        .expect("run ferry-chaos");
    let _ = std::fs::remove_file(&json);
    assert!(
        out.status.success(),
        "ferry-chaos {extra:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ferry-chaos --short`, every scenario, once: what CI runs.
#[test]
fn every_scenario_short() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    chaos_short(&[]);
}

/// The same faults while the backups checkpoint their replicas every
/// second into small segments: incremental chains, the primary fetching
/// an image and trimming its log, replicas restored from images, all
/// under the faults. No acknowledged write may be lost, two primaries may
/// never serve, and the replicas must agree.
#[test]
fn every_scenario_short_while_checkpointing_every_second() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferryd.toml");
    std::fs::write(
        &config,
        "checkpoint-every = 1\ncheckpoints-kept = 1\nlog-segment-kib = 64\n",
    )
    .unwrap();
    chaos_short(&["--ferryd-config".as_ref(), config.as_os_str()]);
}
