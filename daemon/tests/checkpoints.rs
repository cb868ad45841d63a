//! Checkpoints in ferryd: a backup checkpoints its replica as it follows
//! the primary, drops the log segments an image covers, and a replica that
//! starts again starts from the image, not from record 1, and takes over
//! with every acknowledged write.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(30);

/// a, b and the witness w, checkpointing every second into 64 KiB segments.
fn three() -> Cluster {
    Cluster::start_with(
        &[
            NodeSpec {
                name: "a",
                witness: false,
            },
            NodeSpec {
                name: "b",
                witness: false,
            },
            NodeSpec {
                name: "w",
                witness: true,
            },
        ],
        "checkpoint-every = 1\ncheckpoints-kept = 1\nlog-segment-kib = 64\n",
    )
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

/// Wait until b has an image of its replica after every record durable
/// there, and has dropped the segments it covers; b's status then.
fn wait_for_image(cluster: &Cluster) -> Value {
    let b = cluster.node("b");
    wait_for(LIMIT, || {
        let s = b.app("kv")?;
        let image = s["image"].as_u64()?;
        (u(&s, "durable") > 0 && image == u(&s, "durable") && u(&s, "log_first") > 1)
            .then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "b has no image of its replica at its durable gseq, or kept its whole log: {:?}\n{}",
            b.app("kv"),
            cluster.logs()
        )
    })
}

#[test]
fn a_replica_restored_from_its_image_takes_over_with_every_acknowledged_write() {
    let mut cluster = three();
    let port = run_kv(&mut cluster);
    let acks = write_keys(&cluster, port, 250);
    let s = wait_for_image(&cluster);
    let image = u(&s, "image");
    let images = cluster.node("b").data.join("apps/kv/images");
    let dirs: Vec<_> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(dirs.len(), 1, "one image kept: {dirs:?}");

    // The replica dies; the primary's host dies: b takes over with a
    // replica restored from the image.
    let replica = s["pid"].as_i64().expect("b's replica runs") as i32;
    // SAFETY: kill with the pid of the replica this test's cluster runs.
    unsafe { libc::kill(replica, libc::SIGKILL) };
    let a = cluster.node("a").app("kv").unwrap();
    let pid = a["pid"].as_i64().unwrap() as i32;
    cluster.node_mut("a").kill9();
    // SAFETY: kill with the pid of the program this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };

    let b = cluster.node("b");
    let took = wait_for(LIMIT, || {
        b.app("kv").filter(|s| s["role"] == "primary" && s["pid"].as_i64().is_some())
    })
    .unwrap_or_else(|| panic!("b did not take over:\n{}", cluster.logs()));
    let restored = b.log_text().contains("replica restored from an image");
    cluster.pids.push(took["pid"].as_i64().unwrap() as i32);
    assert!(
        restored,
        "b did not start its replica from the image:\n{}",
        cluster.logs()
    );
    assert!(image > 0);
    check_keys(&cluster, port, &acks);
    // And it goes on serving new writes.
    let more = write_keys_from(&cluster, port, 250, 20);
    assert_eq!(more.len(), 20);
}
