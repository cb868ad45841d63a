//! The `ferry-kv` binary: its listening line, its arguments, and how it ends.

mod common;

use common::{kv_binary, signal, spawn_binary, wait_exit, Raw};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

#[test]
fn prints_where_it_listens_and_serves() {
    let mut kv = spawn_binary(&[]);
    assert!(kv.addr.ip().is_loopback());
    assert_ne!(kv.addr.port(), 0, "port 0 is replaced by the chosen port");
    let mut c = Raw::connect(kv.addr);
    assert_eq!(c.ask("PING"), "PONG");
    assert_eq!(c.ask("SET a b"), "OK 1");
    signal(kv.child.id(), "TERM");
    let status = wait_exit(&mut kv.child);
    assert_eq!(status.code(), Some(0), "SIGTERM ends it with 0: {status:?}");
    // The listener is closed.
    assert!(TcpStream::connect_timeout(&kv.addr, Duration::from_secs(2)).is_err());
}

#[test]
fn sigint_ends_it_with_zero_too() {
    let mut kv = spawn_binary(&["--max-conns", "4"]);
    let mut c = Raw::connect(kv.addr);
    assert_eq!(c.ask("PING"), "PONG");
    signal(kv.child.id(), "INT");
    let status = wait_exit(&mut kv.child);
    assert_eq!(status.code(), Some(0), "{status:?}");
    // The open connection was closed by the exit.
    c.assert_closed();
}

#[test]
fn bad_arguments_are_refused_with_one_line() {
    let out = Command::new(kv_binary())
        .args(["--listen", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("ferry-kv: cannot listen on not-an-address:") && err.lines().count() == 1,
        "{err}"
    );

    let out = Command::new(kv_binary())
        .args(["--max-conns", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");

    // The address is taken.
    let mut kv = spawn_binary(&[]);
    let out = Command::new(kv_binary())
        .args(["--listen", &kv.addr.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen on"));
    signal(kv.child.id(), "TERM");
    assert_eq!(wait_exit(&mut kv.child).code(), Some(0));
}
