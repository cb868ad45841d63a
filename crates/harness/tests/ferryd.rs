//! The scenarios against the real `ferryd` and `ferry`.
//!
//! Ignored by default: they need `ferryd` and the `ferry` control commands
//! (`run`, `status --json`, `failover`, `stop`; DESIGN §8) built next to
//! the test executables or named by FERRYD_BIN and FERRY_BIN, plus root,
//! `ip`, `nft` and `ferry-kv`. Run them with
//!
//! ```sh
//! cargo build -p ferry-cli -p ferry-daemon -p ferry-kv
//! cargo test -p ferry-harness --test ferryd -- --ignored --test-threads 1
//! ```
//!
//! Without those programs they fail and say what is missing: they never
//! pass without having run.

use ferry_harness::cluster::{Binaries, Cluster, ClusterConfig, REPLICAS};
use ferry_harness::topology;
use ferry_kv::workload::{Stop, WorkloadConfig};
use std::process::Command;
use std::time::Duration;

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
#[ignore = "needs ferryd and the ferry control commands; run with --ignored"]
fn the_whole_story_through_the_library() {
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

/// `ferry-chaos --short`, every scenario, once: what CI runs.
#[test]
#[ignore = "needs ferryd and the ferry control commands; run with --ignored"]
fn every_scenario_short() {
    let b = require();
    let json = std::env::temp_dir().join(format!("ferry-chaos-short-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-chaos"))
        .args(["--short", "--scenario", "all", "--json"])
        .arg(&json)
        .env("FERRY_BIN", &b.ferry)
        .env("FERRYD_BIN", &b.ferryd)
        .env("FERRY_KV_BIN", &b.ferry_kv)
        .output()
        .expect("run ferry-chaos");
    let _ = std::fs::remove_file(&json);
    assert!(
        out.status.success(),
        "ferry-chaos failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
