//! `ferry migrate`: the primary role moves to another node while a client
//! keeps writing, with every acknowledged write; the old primary keeps
//! replaying so the move can be rolled back, until it is committed.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(30);

fn three() -> Cluster {
    Cluster::start(&THREE)
}

/// A client that writes keys `first..` one after the other, reconnecting
/// when the server goes away, until told to stop (or 2 minutes pass). Each
/// key is written until the server acknowledges it; the acknowledged
/// versions, in key order.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<String>>,
}

impl Writer {
    fn start(port: u16, first: usize) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(120);
            let mut acks = Vec::new();
            let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
            let mut i = first;
            while !flag.load(Ordering::Relaxed) && Instant::now() < until {
                if conn.is_none() {
                    match TcpStream::connect(("127.0.0.1", port)) {
                        Ok(s) => {
                            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                            let r = BufReader::new(s.try_clone().expect("clone"));
                            conn = Some((s, r));
                        }
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                    }
                }
                let Some((w, r)) = conn.as_mut() else {
                    continue;
                };
                let mut line = String::new();
                let ok = writeln!(w, "SET k{i} v{i}").is_ok()
                    && r.read_line(&mut line).is_ok_and(|n| n > 0)
                    && line.starts_with("OK ");
                if ok {
                    acks.push(line.trim().to_owned());
                    i += 1;
                } else {
                    conn = None;
                }
            }
            acks
        });
        Writer { stop, handle }
    }

    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("writer thread")
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn phase(s: &Value) -> Option<&str> {
    s["migration"]["phase"].as_str()
}

/// Wait until `node` is the serving primary of kv with its program running.
fn serving(cluster: &Cluster, node: &str) -> Value {
    let d = cluster.node(node);
    wait_for(LIMIT, || {
        d.app("kv").filter(|s| {
            s["role"] == "primary" && s["gate_open"] == true && s["pid"].as_i64().is_some()
        })
    })
    .unwrap_or_else(|| panic!("{node} does not serve kv:\n{}", cluster.logs()))
}

#[test]
fn migrate_moves_the_primary_under_load_then_rolls_back_then_commits() {
    let mut cluster = three();
    let port = run_kv(&mut cluster);
    let mut acks = write_keys(&cluster, port, 100);

    // Bad targets are refused with a reason, and change nothing.
    let out = cluster.node("a").ferry(&["migrate", "kv", "--to", "zz"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not a peer"), "{}", text(&out));
    let out = cluster.node("a").ferry(&["migrate", "kv", "--to", "w"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("witness"), "{}", text(&out));
    let out = cluster.node("a").ferry(&["migrate", "nope", "--to", "b"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = cluster.node("b").ferry(&["migrate", "kv", "--to", "a"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not the primary"), "{}", text(&out));

    // Move to b while a client writes.
    let writer = Writer::start(port, 100);
    std::thread::sleep(Duration::from_millis(300));
    let out = cluster.node("a").ferry(&["migrate", "kv", "--to", "b"]);
    let said = text(&out);
    println!("ferry migrate kv --to b:\n{said}");
    assert!(out.status.success(), "{said}\n{}", cluster.logs());
    assert!(
        said.contains("moved to b") && said.contains("downtime"),
        "{said}"
    );
    let b = serving(&cluster, "b");
    cluster.pids.push(b["pid"].as_i64().unwrap() as i32);
    assert_eq!(phase(&b), Some("moved"), "{b}");
    std::thread::sleep(Duration::from_millis(300));
    let during = writer.finish();
    assert!(
        during.len() > 10,
        "the client could hardly write during the move: {} writes",
        during.len()
    );
    acks.extend(during);
    check_keys(&cluster, port, &acks);

    // a keeps replaying as b's backup, and reports the downtime.
    let a = cluster.node("a");
    let logged = b["logged"].as_u64().unwrap();
    let a_status = wait_for(LIMIT, || {
        a.app("kv").filter(|s| {
            s["role"] == "backup"
                && s["healthy"] == true
                && s["replayed"].as_u64().unwrap_or(0) >= logged
        })
    })
    .unwrap_or_else(|| panic!("a does not follow b:\n{}", cluster.logs()));
    assert!(
        a_status["switch"]["downtime_us"].as_u64().is_some(),
        "{a_status}"
    );

    // No second migration while this one is open.
    let out = cluster.node("b").ferry(&["migrate", "kv", "--to", "a"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--rollback"), "{}", text(&out));

    // Roll back: a serves again, with every write.
    let out = cluster
        .node("b")
        .ferry(&["migrate", "kv", "--to", "b", "--rollback"]);
    assert!(out.status.success(), "{}\n{}", text(&out), cluster.logs());
    assert!(text(&out).contains("moved back to a"), "{}", text(&out));
    let a = serving(&cluster, "a");
    cluster.pids.push(a["pid"].as_i64().unwrap() as i32);
    assert!(a["migration"].is_null(), "{a}");
    let n = acks.len();
    acks.extend(write_keys_from(&cluster, port, n, 20));
    check_keys(&cluster, port, &acks);

    // Move again, then commit: b is primary, a stays its backup (b was a
    // member before the migration, so nobody leaves).
    let out = cluster.node("a").ferry(&["migrate", "kv", "--to", "b"]);
    assert!(out.status.success(), "{}\n{}", text(&out), cluster.logs());
    let out = cluster
        .node("b")
        .ferry(&["migrate", "kv", "--to", "b", "--commit"]);
    assert!(out.status.success(), "{}\n{}", text(&out), cluster.logs());
    let b = serving(&cluster, "b");
    cluster.pids.push(b["pid"].as_i64().unwrap() as i32);
    assert!(b["migration"].is_null(), "{b}");
    let n = acks.len();
    acks.extend(write_keys_from(&cluster, port, n, 20));
    check_keys(&cluster, port, &acks);
    let protected = wait_for(LIMIT, || {
        cluster
            .node("b")
            .app("kv")
            .filter(|s| s["protected"] == true)
    });
    assert!(
        protected.is_some(),
        "b is not protected by a:\n{}",
        cluster.logs()
    );
    // Commit with nothing to commit is refused.
    let out = cluster
        .node("b")
        .ferry(&["migrate", "kv", "--to", "b", "--commit"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}
