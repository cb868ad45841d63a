//! The workload's bookkeeping and its check: a lost write is reported, so
//! the harness's check can fail; writes whose answer never came are counted
//! apart and do not count as lost.

mod common;

use common::start_server;
use ferry_kv::client::{Client, ClientError, Reconnect};
use ferry_kv::server::Config;
use ferry_kv::workload::{LostReason, Stop, Workload, WorkloadConfig};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

fn config(addr: SocketAddr) -> WorkloadConfig {
    WorkloadConfig {
        addr: addr.to_string(),
        clients: 3,
        stop: Stop::Writes(40),
        timeout: Duration::from_secs(5),
        ..WorkloadConfig::default()
    }
}

#[test]
fn a_server_that_lost_everything_fails_the_check() {
    let first = start_server(Config::default());
    let w = Workload::run(config(first));
    assert_eq!(w.report().acknowledged, 120, "{}", w.report());
    assert!(w.verify(&first.to_string()).unwrap().is_clean());

    let fresh = start_server(Config::default());
    let v = w.verify(&fresh.to_string()).unwrap();
    assert_eq!(v.checked, 120);
    assert_eq!(v.lost.len(), 120, "{v}");
    assert!(v.lost.iter().all(|l| l.reason == LostReason::Missing));
    assert!(!v.is_clean());
}

#[test]
fn older_and_different_values_are_lost_writes() {
    let addr = start_server(Config::default());
    let a = addr.to_string();
    let w = Workload::run(WorkloadConfig {
        clients: 1,
        stop: Stop::Writes(3),
        keys_per_client: Some(1),
        ..config(addr)
    });
    assert_eq!(w.report().acknowledged, 3);
    let (key, acked, _) = w.acknowledged().next().unwrap();
    assert_eq!(acked, 3);
    let mut c = Client::connect(&a, Duration::from_secs(5)).unwrap();

    // Another value under a later version: not one the workload wrote.
    c.set(key, "tampered").unwrap();
    let v = w.verify(&a).unwrap();
    assert_eq!(v.lost.len(), 1, "{v}");
    assert_eq!(v.lost[0].reason, LostReason::Different);
    assert!(v.to_string().contains("another value \"tampered\""), "{v}");

    // A state where the key holds an older version: replay the first writes
    // of the same workload into a fresh server.
    let other = start_server(Config::default());
    let older = Workload::run(WorkloadConfig {
        addr: other.to_string(),
        clients: 1,
        stop: Stop::Writes(1),
        keys_per_client: Some(1),
        ..config(other)
    });
    assert_eq!(older.report().acknowledged, 1);
    let v = w.verify(&other.to_string()).unwrap();
    assert_eq!(v.lost.len(), 1, "{v}");
    assert_eq!(v.lost[0].reason, LostReason::Older);
    assert_eq!(v.lost[0].found.as_ref().unwrap().0, 1);

    // Deleted: missing.
    c.del(key).unwrap();
    let v = w.verify(&a).unwrap();
    assert_eq!(v.lost[0].reason, LostReason::Missing);
}

/// A proxy in front of a server that, every `every`-th request, forwards it
/// and drops the connection before the answer reaches the client: that
/// write is applied, and its outcome unknown to the client.
fn breaking_proxy(upstream: SocketAddr, every: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let count = Arc::clone(&count);
            thread::spawn(move || {
                let mut up = TcpStream::connect(upstream).unwrap();
                let mut up_reader = BufReader::new(up.try_clone().unwrap());
                let mut reader = BufReader::new(client.try_clone().unwrap());
                let mut client = client;
                loop {
                    let mut line = Vec::new();
                    if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    up.write_all(&line).unwrap();
                    let mut answer = Vec::new();
                    up_reader.read_until(b'\n', &mut answer).unwrap();
                    if count.fetch_add(1, Ordering::SeqCst) % every == every - 1 {
                        return; // both connections close, the answer is lost
                    }
                    if client.write_all(&answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn broken_connections_make_unknown_writes_not_lost_ones() {
    let server = start_server(Config::default());
    let proxy = breaking_proxy(server, 7);
    let w = Workload::run(WorkloadConfig {
        addr: proxy.to_string(),
        clients: 3,
        stop: Stop::Writes(30),
        keys_per_client: Some(4),
        reconnect: Some(Reconnect {
            deadline: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(20),
        }),
        ..config(server)
    });
    let r = w.report();
    assert_eq!(r.attempted, 90);
    assert_eq!(r.failed, 0, "{r}");
    assert!(r.unknown >= 10, "{r}");
    assert_eq!(r.acknowledged + r.unknown, 90);
    // A connection is opened again after each unknown write, except maybe
    // after a client's last one.
    assert!(r.reconnects + 3 >= r.unknown, "{r}");
    // Every unknown write was in fact applied (the proxy dropped only the
    // answers): keys whose last write was unknown hold that write, under a
    // later version, and that is no loss.
    // (Whether some key's last write is an unknown one depends on timing,
    // so how many unknown writes are found applied is not asserted.)
    let v = w.verify(&server.to_string()).unwrap();
    assert!(v.is_clean(), "{v}");
}

#[test]
fn a_server_that_never_answers_gives_unknown_outcomes() {
    // Accepts, reads, and closes without answering.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for c in listener.incoming().flatten() {
            let mut r = BufReader::new(c);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
        }
    });
    let mut c = Client::connect(&addr.to_string(), Duration::from_secs(5)).unwrap();
    let e = c.set("k", "v").unwrap_err();
    assert!(e.outcome_unknown(), "{e}");
    assert!(matches!(e, ClientError::Closed { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("closed the connection before answering"),
        "{e}"
    );

    let w = Workload::run(WorkloadConfig {
        clients: 2,
        stop: Stop::Writes(5),
        reconnect: None,
        ..config(addr)
    });
    let r = w.report();
    assert_eq!((r.attempted, r.acknowledged, r.unknown), (10, 0, 10), "{r}");
    // Nothing was acknowledged, so nothing can be lost.
    let real = start_server(Config::default());
    let v = w.verify(&real.to_string()).unwrap();
    assert_eq!(v.checked, 0);
    assert!(v.is_clean());
}

#[test]
fn timeouts_and_refusals_are_told_apart() {
    // A server that accepts and never reads nor answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = thread::spawn(move || listener.accept().unwrap());
    let mut c = Client::connect(&addr.to_string(), Duration::from_millis(200)).unwrap();
    let e = c.set("k", "v").unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
    assert!(e.outcome_unknown());
    drop(held);

    let real = start_server(Config::default()).to_string();
    let mut c = Client::connect(&real, Duration::from_secs(5)).unwrap();
    let e = c.set("bad key", "v").unwrap_err();
    assert!(matches!(e, ClientError::Invalid { .. }), "{e}");
    assert!(e.not_applied());
    // Nothing listens here any more (a port just freed).
    let gone = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let e = Client::connect(&gone, Duration::from_secs(1)).unwrap_err();
    assert!(
        matches!(e, ClientError::Connect { .. }) && e.not_applied(),
        "{e}"
    );
    let e = Client::connect_reconnecting(
        &gone,
        Duration::from_secs(1),
        Reconnect {
            deadline: Duration::from_millis(100),
            ..Reconnect::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, ClientError::GaveUp { .. }), "{e}");
}

#[test]
fn a_reconnecting_client_survives_a_server_restart_on_the_same_address() {
    let kv = common::spawn_binary(&[]);
    let addr = kv.addr.to_string();
    let mut c = Client::connect_reconnecting(
        &addr,
        Duration::from_secs(5),
        Reconnect {
            deadline: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
        },
    )
    .unwrap();
    assert_eq!(c.set("r", "1").unwrap(), 1);
    let mut kv = kv;
    common::signal(kv.child.id(), "TERM");
    common::wait_exit(&mut kv.child);
    // Bring a new server up on the same address a little later.
    let relaunch = {
        let addr = addr.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            let mut child = std::process::Command::new(common::kv_binary())
                .args(["--listen", &addr])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let line = common::first_line(&mut child);
            assert_eq!(line.trim_end(), format!("listening {addr}"));
            child
        })
    };
    // A read is retried until the server is back (empty: a new process).
    assert_eq!(c.get("r").unwrap(), None);
    assert_eq!(c.connects(), 2);
    let mut child = relaunch.join().unwrap();
    common::signal(child.id(), "TERM");
    common::wait_exit(&mut child);
}
