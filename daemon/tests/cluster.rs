//! Three ferryd on 127.0.0.1 (a, b and the witness w) protecting a ferry-kv
//! server started with `ferry run`: the backup acknowledges, takes over
//! when the primary's host or program dies, and a planned failover and a
//! stop reach every node.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(20);

fn three() -> Cluster {
    Cluster::start(&THREE)
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

#[test]
fn the_backup_acknowledges_and_takes_over_when_the_primary_host_dies() {
    let mut cluster = three();
    let port = run_kv(&mut cluster);
    write_keys(&cluster, port, 50);

    // The primary: protected, the backup healthy and acknowledging all
    // that was logged.
    let a = cluster.node("a");
    let caught_up = wait_for(LIMIT, || {
        let s = a.app("kv")?;
        let b = s["backups"]
            .as_array()?
            .iter()
            .find(|b| b["node"] == "b")?
            .clone();
        (s["role"] == "primary"
            && s["protected"] == true
            && b["healthy"] == true
            && u(&b, "acked") == u(&s, "logged")
            && u(&s, "logged") > 50)
            .then_some(s)
    });
    let s = caught_up
        .unwrap_or_else(|| panic!("b never caught up: {:?}\n{}", a.app("kv"), cluster.logs()));
    let logged = u(&s, "logged");
    let b = cluster.node("b").app("kv").unwrap();
    assert_eq!(b["role"], "backup");
    assert_eq!(b["primary"], "a");
    assert!(u(&b, "durable") >= logged, "{b}");
    let w = cluster.node("w").app("kv").unwrap();
    assert_eq!(w["role"], "witness");

    // kill -9 the primary's ferryd and its program.
    let pid = s["pid"].as_i64().unwrap() as i32;
    cluster.node_mut("a").kill9();
    // SAFETY: kill with the pid of the program this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };

    let b = cluster.node("b");
    let took = wait_for(LIMIT, || {
        let s = b.app("kv")?;
        (s["role"] == "primary" && u(&s, "epoch") > 1).then_some(s)
    });
    let took = took
        .unwrap_or_else(|| panic!("b did not take over: {:?}\n{}", b.app("kv"), cluster.logs()));
    assert_eq!(took["primary"], "b");
    assert!(
        u(&took, "logged") >= logged,
        "records lost: {took} < {logged}"
    );
    let w = wait_for(LIMIT, || {
        let s = cluster.node("w").app("kv")?;
        (s["primary"] == "b").then_some(s)
    });
    assert!(
        w.is_some(),
        "the witness does not know the new primary:\n{}",
        cluster.logs()
    );
    if let Some(pid) = took["pid"].as_i64() {
        cluster.pids.push(pid as i32);
    }
}

#[test]
fn a_program_that_dies_is_handed_over_to_the_backup_without_an_election() {
    let mut cluster = three();
    let port = run_kv_mode(&mut cluster, "async");
    write_keys(&cluster, port, 20);
    let a = cluster.node("a").app("kv").unwrap();
    assert_eq!(a["mode"], "async");
    // Async: outputs went without waiting, so let the backup catch up
    // before the kill (what it lacks would be lost, by design).
    let caught_up = wait_for(LIMIT, || {
        let s = cluster.node("a").app("kv")?;
        (u(&s, "lag_records") == 0 && u(&s, "acked") == u(&s, "logged")).then_some(())
    });
    assert!(caught_up.is_some(), "{}", cluster.logs());
    let pid = a["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill with the pid of the program this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };

    let b = cluster.node("b");
    let took = wait_for(LIMIT, || {
        let s = b.app("kv")?;
        (s["role"] == "primary").then_some(s)
    });
    let took = took.unwrap_or_else(|| panic!("b did not take over:\n{}", cluster.logs()));
    let b_log = b.log_text();
    if let Some(pid) = took["pid"].as_i64() {
        cluster.pids.push(pid as i32);
    }
    // a handed the role over (planned switchover), and follows b.
    let a = cluster.node("a");
    assert!(
        a.log_text().contains("the program died: handing over"),
        "{}",
        a.log_text()
    );
    assert!(a.log_text().contains("handing over"));
    assert!(
        !b_log.contains("standing for election"),
        "b was elected instead:\n{b_log}"
    );
    let follows = wait_for(LIMIT, || {
        let s = a.app("kv")?;
        (s["role"] == "backup" && s["primary"] == "b").then_some(s)
    });
    assert!(
        follows.is_some(),
        "a does not follow b: {:?}\n{}",
        a.app("kv"),
        cluster.logs()
    );
}

#[test]
fn a_planned_failover_and_a_stop_reach_every_node() {
    let mut cluster = three();
    let port = run_kv(&mut cluster);
    write_keys(&cluster, port, 10);

    // Not a member: refused, exit 1, the reason in one line.
    let out = cluster.node("a").ferry(&["failover", "kv", "--to", "w"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("w") && err.trim_end().lines().count() == 1,
        "{err}"
    );

    let out = cluster.node("a").ferry(&["failover", "kv"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    assert!(said.contains("handed over to b"), "{said}");
    let b = cluster.node("b");
    let s = wait_for(LIMIT, || b.app("kv").filter(|s| s["role"] == "primary"));
    let s = s.unwrap_or_else(|| panic!("b is not primary:\n{}", cluster.logs()));
    assert_eq!(u(&s, "epoch"), 2);
    if let Some(pid) = s["pid"].as_i64() {
        cluster.pids.push(pid as i32);
    }

    // Stop on a backup: refused; on the primary: everyone forgets it.
    let out = cluster.node("a").ferry(&["stop", "kv"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = cluster.node("b").ferry(&["stop", "kv"]);
    assert!(out.status.success(), "{out:?}");
    for d in &cluster.daemons {
        let gone = wait_for(LIMIT, || {
            let s = d.status()?;
            s["apps"].as_array()?.is_empty().then_some(())
        });
        assert!(
            gone.is_some(),
            "{} still knows kv:\n{}",
            d.name,
            cluster.logs()
        );
    }
    // A restarted node does not bring the stopped application back.
    cluster.node_mut("a").stop();
    cluster.node_mut("a").restart();
    let s = cluster.node("a").status().unwrap();
    assert_eq!(
        s["apps"],
        serde_json::json!([]),
        "a stopped application came back"
    );
}

/// What users care about most: after the primary host dies, the same
/// server answers on the backup with every acknowledged write.
#[test]
fn the_service_answers_after_a_takeover_with_every_acknowledged_write() {
    let mut cluster = three();
    let port = run_kv(&mut cluster);
    let acks = write_keys(&cluster, port, 30);
    let a = cluster.node("a").app("kv").unwrap();
    let pid = a["pid"].as_i64().unwrap() as i32;
    cluster.node_mut("a").kill9();
    // SAFETY: kill with the pid of the program this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let b = cluster.node("b");
    assert!(wait_for(LIMIT, || b.app("kv").filter(|s| s["role"] == "primary")).is_some());
    let stream = wait_for(LIMIT, || TcpStream::connect(("127.0.0.1", port)).ok())
        .expect("nobody listens on the service port after the takeover");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    for (i, ack) in acks.iter().enumerate() {
        writeln!(w, "GET k{i}").unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let version = ack.trim_start_matches("OK ");
        assert_eq!(
            line.trim(),
            format!("VALUE {version} v{i}"),
            "write {i} lost"
        );
    }
}

#[test]
fn a_backup_whose_log_is_damaged_fetches_it_again_before_it_counts() {
    let mut cluster = three();
    let port = run_kv(&mut cluster);
    write_keys(&cluster, port, 40);
    let a = cluster.node("a");
    let caught_up = wait_for(LIMIT, || {
        let s = a.app("kv")?;
        let b = s["backups"].as_array()?.first()?.clone();
        (u(&b, "acked") == u(&s, "logged") && u(&s, "logged") > 40).then_some(())
    });
    assert!(caught_up.is_some(), "{}", cluster.logs());

    // Damage the first record of b's log while b is down.
    cluster.node_mut("b").stop();
    let log_dir = cluster.node("b").data.join("apps/kv/log");
    let segment = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "fseg"))
        .min()
        .expect("a segment file");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[64 + 64 + 8] ^= 0x5a;
    std::fs::write(&segment, &bytes).unwrap();

    // While b is away a logs more; b comes back, finds the damage, moves
    // the log aside and fetches everything again.
    write_keys(&cluster, port, 10);
    cluster.node_mut("b").restart();
    let b = cluster.node("b");
    assert!(b.wait_log("the log is damaged", LIMIT), "{}", b.log_text());
    let a = cluster.node("a");
    let healed = wait_for(LIMIT, || {
        let s = a.app("kv")?;
        let bs = s["backups"].as_array()?.first()?.clone();
        let bb = b.app("kv")?;
        (bs["healthy"] == true
            && u(&bs, "acked") == u(&s, "logged")
            && bb["healthy"] == true
            && u(&bb, "durable") == u(&s, "logged"))
        .then_some(())
    });
    assert!(
        healed.is_some(),
        "b did not heal: {:?} {:?}\n{}",
        a.app("kv"),
        b.app("kv"),
        cluster.logs()
    );
    let aside = std::fs::read_dir(cluster.node("b").data.join("apps/kv"))
        .unwrap()
        .any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("log.damaged.")
        });
    assert!(aside, "the damaged log was not kept aside");
    if let Some(pid) = b.app("kv").and_then(|s| s["pid"].as_i64()) {
        cluster.pids.push(pid as i32);
    }
}

#[test]
fn ferry_run_refuses_bad_requests_and_a_program_that_exits_is_stopped_everywhere() {
    let cluster = three();
    let a = cluster.node("a");
    let out = a.ferry(&["run", "--name", "x", "--", "no-such-command-here"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-command-here") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    let out = a.ferry(&["run", "--name", "../x", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = a.ferry(&["run", "--name", "x", "--vip", "10.0.0.1@eth0", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // A witness runs nothing.
    let out = cluster
        .node("w")
        .ferry(&["run", "--name", "x", "--", "true"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("witness"));

    // A program that exits on its own: the application ends on every node.
    let out = a.ferry(&["run", "--name", "brief", "--", "sh", "-c", "exit 3"]);
    assert_ne!(out.status.code(), Some(2), "{out:?}");
    for d in &cluster.daemons {
        let gone = wait_for(LIMIT, || {
            let s = d.status()?;
            s["apps"].as_array()?.is_empty().then_some(())
        });
        assert!(
            gone.is_some(),
            "{} still knows brief:\n{}",
            d.name,
            cluster.logs()
        );
    }
    assert!(
        a.log_text().contains("the program exited"),
        "{}",
        a.log_text()
    );
}

/// Seed 001's rolling upgrade: stopping ferryd (SIGTERM, as systemd does)
/// on the primary's host first hands the application over, losing nothing,
/// and the service answers from the backup.
#[test]
fn stopping_ferryd_hands_its_applications_over_first() {
    let mut cluster = three();
    let port = run_kv(&mut cluster);
    let acks = write_keys(&cluster, port, 20);
    cluster.node_mut("a").stop();
    let a_log = cluster.node("a").log_text();
    assert!(a_log.contains("handing the applications over"), "{a_log}");
    let b = cluster.node("b");
    let s = wait_for(LIMIT, || b.app("kv").filter(|s| s["role"] == "primary"));
    let s = s.unwrap_or_else(|| panic!("b is not primary:\n{}", cluster.logs()));
    assert_eq!(u(&s, "epoch"), 2, "not a planned switchover: {s}");
    assert!(
        !b.log_text().contains("standing for election"),
        "{}",
        cluster.logs()
    );
    if let Some(pid) = s["pid"].as_i64() {
        cluster.pids.push(pid as i32);
    }
    let stream = wait_for(LIMIT, || TcpStream::connect(("127.0.0.1", port)).ok())
        .expect("nobody listens on the service port after the switchover");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    for (i, ack) in acks.iter().enumerate() {
        writeln!(w, "GET k{i}").unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let version = ack.trim_start_matches("OK ");
        assert_eq!(
            line.trim(),
            format!("VALUE {version} v{i}"),
            "write {i} lost"
        );
    }
}

fn alive(pid: i32) -> bool {
    // A zombie (no reaper in some containers) counts as ended.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.split_whitespace().next() != Some("Z"))
        })
        .unwrap_or(false)
}

#[test]
fn a_restarted_ferryd_ends_the_program_its_crashed_run_left() {
    let mut cluster = three();
    let port = run_kv(&mut cluster);
    write_keys(&cluster, port, 5);
    let pid = cluster.node("a").app("kv").unwrap()["pid"]
        .as_i64()
        .unwrap() as i32;
    cluster.node_mut("a").kill9();
    assert!(alive(pid), "the program died with its ferryd");
    cluster.node_mut("a").restart();
    let gone = wait_for(LIMIT, || (!alive(pid)).then_some(()));
    assert!(
        gone.is_some(),
        "the old program {pid} still runs:\n{}",
        cluster.logs()
    );
    assert!(cluster
        .node("a")
        .log_text()
        .contains("a previous ferryd left running"));
    let a = cluster.node("a");
    let back = wait_for(LIMIT, || a.app("kv").filter(|s| s["role"] == "backup"));
    assert!(
        back.is_some(),
        "a did not come back as a backup:\n{}",
        cluster.logs()
    );
    for d in &cluster.daemons {
        if let Some(p) = d.app("kv").and_then(|s| s["pid"].as_i64()) {
            cluster.pids.push(p as i32);
        }
    }
}
