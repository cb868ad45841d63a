//! Checkpoints in ferryd: a backup checkpoints its replica as it follows
//! the primary, drops the log segments an image covers, and a replica that
//! starts again starts from the image, not from record 1, and takes over
//! with every acknowledged write. The primary keeps a backup's image and
//! trims its own log to it.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(30);

/// a, b and the witness w, checkpointing every second into 64 KiB segments.
fn three() -> Cluster {
    Cluster::start_with(
        &THREE,
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
        (u(&s, "durable") > 0 && image == u(&s, "durable") && u(&s, "log_first") > 1).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "b has no image of its replica at its durable gseq, or kept its whole log: {:?}\n{}",
            b.app("kv"),
            cluster.logs()
        )
    })
}

/// A new host in `node`'s place (its data directory emptied) joins and
/// catches up with `primary`: it must have received an image and started
/// its replica from it. Its status then.
fn join_afresh(cluster: &mut Cluster, node: &str, primary: &str) -> Value {
    let data = cluster.node(node).data.clone();
    std::fs::remove_dir_all(&data).unwrap();
    cluster.node_mut(node).restart();
    let n = cluster.node(node);
    let joined = wait_for(LIMIT, || {
        let s = n.app("kv")?;
        let logged = u(&cluster.node(primary).app("kv")?, "logged");
        (s["role"] == "backup"
            && s["pid"].as_i64().is_some()
            && u(&s, "durable") >= logged
            && u(&s, "replayed") >= logged)
            .then_some(s)
    })
    .unwrap_or_else(|| panic!("{node} did not catch up from an image:\n{}", cluster.logs()));
    let log = n.log_text();
    assert!(
        log.contains("image received") && log.contains("replica restored from an image"),
        "{node} did not start from an image:\n{}",
        cluster.logs()
    );
    cluster.pids.push(joined["pid"].as_i64().unwrap() as i32);
    joined
}

#[test]
fn a_replica_restored_from_its_image_takes_over_with_every_acknowledged_write() {
    let mut cluster = three();
    let port = run_kv(&mut cluster);
    let acks = write_keys(&cluster, port, 250);
    let s = wait_for_image(&cluster);
    let image = u(&s, "image");
    let images = cluster.node("b").data.join("apps/kv/images");
    let mut dirs: Vec<_> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    // One image kept (the newest), with the images it is incremental to:
    // the chain back to a full image, and nothing else.
    let newest = ferry_image::dir::Image::open(dirs.last().unwrap()).unwrap();
    let mut chain: Vec<_> = newest
        .chain()
        .unwrap()
        .iter()
        .map(|i| std::fs::canonicalize(i.dir()).unwrap())
        .collect();
    chain.sort();
    assert_eq!(chain, dirs, "not one image and its chain");
    assert!(
        cluster.node("b").log_text().contains("incremental image"),
        "b took no incremental image:\n{}",
        cluster.logs()
    );

    // The replica dies; the primary's host dies: b takes over with a
    // replica restored from the image.
    let replica = s["pid"].as_i64().expect("b's replica runs") as i32;
    // SAFETY: kill with the pid of the replica this test's cluster runs.
    unsafe { libc::kill(replica, libc::SIGKILL) };
    cluster.kill_host("a", "kv");

    cluster.wait_primary("b", "kv", LIMIT);
    let restored = cluster
        .node("b")
        .log_text()
        .contains("replica restored from an image");
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

#[test]
fn a_replica_of_two_processes_is_checkpointed_whole_and_restored_as_a_tree_that_takes_over() {
    let mut cluster = three();
    // A shell that starts the server as its child and waits for it.
    let port = run_kv_as(&mut cluster, "sync", |kv, listen| {
        vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("{kv} --listen {listen}; echo the server ended"),
        ]
    });
    let acks = write_keys(&cluster, port, 250);
    let s = wait_for_image(&cluster);
    let dir = cluster
        .node("b")
        .data
        .join(format!("apps/kv/images/at-{:020}", u(&s, "image")));
    let image =
        ferry_image::dir::Image::open(&dir).unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let tree: Vec<(u32, u32)> = image
        .manifest()
        .entries
        .iter()
        .map(|e| (e.vpid, e.parent_vpid))
        .collect();
    assert_eq!(tree, [(1, 0), (2, 1)], "the shell and its child server");

    // The replica dies; the primary's host dies: b takes over with the
    // shell and the server restored from the image.
    let replica = s["pid"].as_i64().expect("b's replica runs") as i32;
    // SAFETY: kill with the pid of the replica this test's cluster runs.
    unsafe { libc::kill(replica, libc::SIGKILL) };
    cluster.kill_host("a", "kv");
    let took = cluster.wait_primary("b", "kv", LIMIT);
    assert!(
        cluster
            .node("b")
            .log_text()
            .contains("replica restored from an image"),
        "b did not start its replica from the image:\n{}",
        cluster.logs()
    );
    if let Some(pid) = took["pid"].as_i64() {
        cluster.pids.push(pid as i32);
    }
    check_keys(&cluster, port, &acks);
    let more = write_keys_from(&cluster, port, 250, 20);
    assert_eq!(more.len(), 20);
}

#[test]
fn a_backup_that_joins_after_the_log_was_trimmed_starts_from_a_shipped_image_and_takes_over() {
    let mut cluster = three();
    let port = run_kv(&mut cluster);
    let mut acks = write_keys(&cluster, port, 250);
    wait_for_image(&cluster);

    // a's host dies for good: b takes over, with a log that no longer
    // starts at record 1.
    cluster.kill_host("a", "kv");
    let took = cluster.wait_primary("b", "kv", LIMIT);
    assert!(u(&took, "log_first") > 1, "b's log was not trimmed: {took}");
    acks.extend(write_keys_from(&cluster, port, 250, 30));

    // A new host in a's place (an empty data directory) joins: it gets the
    // image first, then the records after it, and follows live.
    let joined = join_afresh(&mut cluster, "a", "b");
    assert!(u(&joined, "log_first") > 1, "{joined}");
    acks.extend(write_keys_from(&cluster, port, 280, 20));

    // Now b dies: a, which never saw the first records, takes over with
    // every acknowledged write.
    cluster.kill_host("b", "kv");
    cluster.wait_primary("a", "kv", LIMIT);
    check_keys(&cluster, port, &acks);
}

#[test]
fn a_primary_trims_its_log_to_a_backups_image_and_starts_a_new_backup_from_it() {
    let mut cluster = three();
    let port = run_kv(&mut cluster);
    let mut acks = write_keys(&cluster, port, 250);
    wait_for_image(&cluster);

    // a, the primary, never checkpoints: as soon as an image of b's covers
    // a whole segment of the log, a asks b for it (its first image),
    // checks it against its own log, and drops the segments it covers.
    let trimmed = |cluster: &Cluster| {
        let s = cluster.node("a").app("kv")?;
        (s["role"] == "primary" && s["image"].as_u64()? > 0 && u(&s, "log_first") > 1).then_some(s)
    };
    for _ in 0..40 {
        if trimmed(&cluster).is_some() {
            break;
        }
        acks.extend(write_keys_in_flight(&cluster, port, acks.len(), 500, 32));
    }
    wait_for(LIMIT, || trimmed(&cluster)).unwrap_or_else(|| {
        let images = cluster.node("a").data.join("apps/kv/images");
        panic!(
            "the primary kept its whole log, or has no image: {:?}\n{images:?}: {:?}\n{}",
            cluster.node("a").app("kv"),
            std::fs::read_dir(&images)
                .map(|d| d.map(|e| e.map(|e| e.file_name())).collect::<Vec<_>>()),
            cluster.logs()
        )
    });
    let a = cluster.node("a");
    assert!(
        a.log_text().contains("image from a backup kept"),
        "{}",
        cluster.logs()
    );

    // b's host dies for good, and a new host (an empty data directory)
    // joins in its place: a's log no longer starts at record 1, so it
    // sends the image it has from b, then the records after it.
    cluster.kill_host("b", "kv");
    acks.extend(write_keys_from(&cluster, port, acks.len(), 30));
    join_afresh(&mut cluster, "b", "a");
    acks.extend(write_keys_from(&cluster, port, acks.len(), 20));

    // a dies: b takes over with every acknowledged write.
    cluster.kill_host("a", "kv");
    cluster.wait_primary("b", "kv", LIMIT);
    check_keys(&cluster, port, &acks);
}

#[test]
fn a_checkpointed_replica_keeps_following_new_connections() {
    let mut cluster = three();
    let port = run_kv(&mut cluster);
    let mut acks = write_keys(&cluster, port, 250);
    let s = wait_for_image(&cluster);
    let replica = s["pid"].as_i64().expect("b's replica runs");
    // New connections after the checkpoint: the program opens descriptors
    // the recording numbers as it likes; the replica must get the same.
    for round in 0..3 {
        acks.extend(write_keys_from(&cluster, port, 250 + round * 10, 10));
    }
    let logged = u(&cluster.node("a").app("kv").unwrap(), "logged");
    let b = cluster.node("b");
    let followed = wait_for(LIMIT, || {
        b.app("kv")
            .filter(|s| u(s, "replayed") >= logged && s["pid"].as_i64() == Some(replica))
    });
    assert!(
        followed.is_some() && !b.log_text().contains("the replica stopped"),
        "b's replica did not follow after its checkpoint: {:?}\n{}",
        b.app("kv"),
        cluster.logs()
    );
    check_keys(&cluster, port, &acks);
}

#[test]
fn after_a_handover_the_old_primary_starts_its_replica_from_the_new_primarys_image() {
    let mut cluster = three();
    let port = run_kv(&mut cluster);
    // Enough records that replaying them all costs more than an image.
    let mut acks = Vec::new();
    for _ in 0..40 {
        acks.extend(write_keys_in_flight(&cluster, port, acks.len(), 500, 32));
        if u(&cluster.node("a").app("kv").unwrap(), "logged") > 4096 + 500 {
            break;
        }
    }
    let logged = u(&cluster.node("a").app("kv").unwrap(), "logged");
    assert!(logged > 4096 + 500, "only {logged} records");
    let b = cluster.node("b");
    wait_for(LIMIT, || {
        let s = b.app("kv")?;
        (s["image"].as_u64()? > 4096).then_some(s)
    })
    .unwrap_or_else(|| panic!("b has no image past record 4096:\n{}", cluster.logs()));

    // a hands over to b and becomes its backup. a has the whole log and
    // either no image (b sends its own) or the one it fetched from b as
    // the primary: a's replica starts from an image of b's either way.
    let out = cluster.node("a").ferry(&["failover", "kv"]);
    assert!(out.status.success(), "{out:?}");
    cluster.wait_primary("b", "kv", LIMIT);
    acks.extend(write_keys_from(&cluster, port, acks.len(), 20));
    let logged = u(&cluster.node("b").app("kv").unwrap(), "logged");
    let a = cluster.node("a");
    let followed = wait_for(LIMIT, || {
        a.app("kv").filter(|s| {
            s["role"] == "backup" && s["pid"].as_i64().is_some() && u(s, "replayed") >= logged
        })
    })
    .unwrap_or_else(|| panic!("a's replica did not catch up:\n{}", cluster.logs()));
    let log = a.log_text();
    cluster.pids.push(followed["pid"].as_i64().unwrap() as i32);
    assert!(
        log.contains("image received") && log.contains("replica restored from an image"),
        "a's replica did not start from b's image:\n{}",
        cluster.logs()
    );

    // b dies: a's replica, restored from the image, takes over with every
    // acknowledged write.
    cluster.kill_host("b", "kv");
    cluster.wait_primary("a", "kv", LIMIT);
    check_keys(&cluster, port, &acks);
}
