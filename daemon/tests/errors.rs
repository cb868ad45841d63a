//! ferryd refuses what it must refuse and keeps running: bad flags and
//! files, a peer from another cluster, garbage from a peer, malformed
//! control requests.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use common::*;
use ferry_proto::control::{Command as Ctl, ErrorKind, Outcome, Reply, Request};
use ferry_proto::wire::{self, FrameReader, KIND_CONTROL_REPLY, KIND_CONTROL_REQUEST};

fn ferryd(args: &[&str]) -> std::process::Output {
    Command::new(bin("ferryd"))
        .args(args)
        .output()
        .expect("run ferryd")
}

fn one_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr).into_owned();
    assert_eq!(text.trim_end().lines().count(), 1, "not one line: {text:?}");
    assert!(text.starts_with("ferryd: "), "{text:?}");
    text
}

#[test]
fn bad_flags_and_files_exit_2_with_one_line() {
    let out = ferryd(&["--node", "a", "--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line(&out.stderr).contains("--bogus"));

    let out = ferryd(&[
        "--node",
        "a",
        "--data-dir",
        "/tmp/x",
        "--control",
        "/tmp/x.sock",
        "--certs",
        "/tmp",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line(&out.stderr).contains("--listen"));

    let out = ferryd(&[
        "--node",
        "a",
        "--listen",
        "127.0.0.1:1",
        "--peer",
        "b@127.0.0.1:2",
        "--data-dir",
        "/tmp/x",
        "--control",
        "/tmp/x.sock",
        "--certs",
        "/tmp",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line(&out.stderr).contains("NAME=IP:PORT"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ferryd.toml");
    std::fs::write(&file, "node = \"a\"\nlisten = \"127.0.0.1:1\"\nlease = 3\n").unwrap();
    let out = ferryd(&["--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let line = one_line(&out.stderr);
    assert!(
        line.contains("ferryd.toml") && line.contains("lease"),
        "{line}"
    );

    // Missing certificates: a bad configuration too, named.
    let out = ferryd(&[
        "--node",
        "a",
        "--listen",
        "127.0.0.1:1",
        "--data-dir",
        dir.path().join("d").to_str().unwrap(),
        "--control",
        dir.path().join("s").to_str().unwrap(),
        "--certs",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line(&out.stderr).contains("a.crt"));
}

#[test]
fn a_config_file_alone_runs_the_node_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    certs(&dir.path().join("certs"), &["alpha"]);
    let file = dir.path().join("ferryd.toml");
    let port = free_port();
    std::fs::write(
        &file,
        format!(
            "node = \"alpha\"\nlisten = \"127.0.0.1:{port}\"\ndata-dir = \"{d}/data\"\n\
             control = \"{d}/unused.sock\"\ncerts = \"{d}/certs\"\n[timings]\nlease-ms = 800\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let sock = dir.path().join("flag.sock");
    let args = vec![
        "--config".to_string(),
        file.display().to_string(),
        "--control".to_string(),
        sock.display().to_string(),
    ];
    let d = spawn_daemon(dir.path(), "alpha", port, &args);
    assert_eq!(d.control, sock);
    let s = d
        .status()
        .expect("status over the socket named by the flag");
    assert_eq!(s["node"], "alpha");
    assert!(!dir.path().join("unused.sock").exists());
    assert!(dir.path().join("data").join("apps").is_dir());
}

#[test]
fn a_peer_with_a_certificate_of_another_cluster_is_refused_and_logged() {
    let mut cluster = Cluster::start(&[
        NodeSpec {
            name: "b",
            witness: false,
        },
        NodeSpec {
            name: "c",
            witness: false,
        },
    ]);
    // A node "a" of another cluster, dialling b (a node dials the peers
    // whose names sort after its own).
    let other = cluster.dir.path().join("other");
    certs(&other.join("certs"), &["a"]);
    let b_port = cluster.node("b").port;
    let port = free_port();
    let args: Vec<String> = [
        "--node",
        "a",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--peer",
        &format!("b=127.0.0.1:{b_port}"),
        "--data-dir",
        other.join("data").to_str().unwrap(),
        "--control",
        other.join("a.sock").to_str().unwrap(),
        "--certs",
        other.join("certs").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rogue = spawn_daemon(&other, "a", port, &args);
    let b = cluster.node("b");
    assert!(
        b.wait_log("refused peer", Duration::from_secs(10)),
        "b did not log the refusal:\n{}",
        b.log_text()
    );
    let line = b
        .log_text()
        .lines()
        .find(|l| l.contains("refused peer"))
        .unwrap()
        .to_owned();
    assert!(
        line.contains("127.0.0.1"),
        "the refusal names no address: {line}"
    );
    let s = b.status().unwrap();
    assert_eq!(s["connected"], serde_json::json!(["c"]));
    let rs = rogue.status().unwrap();
    assert_eq!(rs["connected"], serde_json::json!([]));
    drop(rogue);
    cluster.node_mut("b").stop();
}

/// Connect to `addr` as node `me` of the cluster in `certs`, open a stream,
/// write `bytes`; how the connection was closed.
async fn send_garbage(
    certs: &std::path::Path,
    me: &str,
    peer: &str,
    addr: std::net::SocketAddr,
    bytes: &[u8],
) -> String {
    let id = ferry_tls::NodeIdentity::load(certs, me).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(id.quinn_client_config().unwrap());
    let pc = ferry_tls::connect(&ep, addr, peer).await.expect("connect");
    let mut s = pc.connection.open_uni().await.unwrap();
    s.write_all(bytes).await.unwrap();
    let _ = s.finish();
    let why = tokio::time::timeout(Duration::from_secs(10), pc.connection.closed())
        .await
        .expect("ferryd did not close the connection");
    why.to_string()
}

#[test]
fn garbage_on_a_stream_closes_that_connection_and_ferryd_keeps_serving() {
    let cluster = Cluster::start(&[
        NodeSpec {
            name: "b",
            witness: false,
        },
        NodeSpec {
            name: "c",
            witness: false,
        },
    ]);
    let b = cluster.node("b");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", b.port).parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // c's own certificate: an authenticated peer that talks nonsense.
    let why = rt.block_on(send_garbage(
        &cluster.dir.path().join("certs"),
        "c",
        "b",
        addr,
        b"GET / HTTP/1.1\r\n\r\nnot a frame at all",
    ));
    assert!(
        why.contains("bad frame"),
        "closed for another reason: {why}"
    );
    assert!(
        b.wait_log("bad frame on a stream", Duration::from_secs(5)),
        "{}",
        b.log_text()
    );
    let line = b
        .log_text()
        .lines()
        .find(|l| l.contains("bad frame"))
        .unwrap()
        .to_owned();
    assert!(
        line.contains("peer=\"c\"") || line.contains("peer=c"),
        "the line does not name the peer: {line}"
    );
    assert!(line.contains("bad magic"), "{line}");

    // A frame of a newer major version is refused the same way.
    let mut frame = wire::encode_raw(wire::KIND_REPLICATION, 0, b"x").unwrap();
    frame[4] = wire::WIRE_MAJOR + 1;
    let why = rt.block_on(send_garbage(
        &cluster.dir.path().join("certs"),
        "c",
        "b",
        addr,
        &frame,
    ));
    assert!(why.contains("bad frame"), "{why}");
    assert!(
        b.wait_log("unsupported major version", Duration::from_secs(5)),
        "{}",
        b.log_text()
    );

    // ferryd still serves: its control socket answers and c reconnects.
    let ok = wait_for(Duration::from_secs(10), || {
        let s = b.status()?;
        (s["connected"] == serde_json::json!(["c"])).then_some(())
    });
    assert!(ok.is_some(), "c did not reconnect:\n{}", cluster.logs());
}

fn exchange(sock: &std::path::Path, bytes: &[u8]) -> Reply {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut reader = FrameReader::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(f) = reader.next_frame().unwrap() {
            assert_eq!(f.kind, KIND_CONTROL_REPLY);
            return f.decode().unwrap();
        }
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "ferryd closed the connection without a reply");
        reader.push(&buf[..n]);
    }
}

fn error_kind(r: &Reply) -> Option<ErrorKind> {
    match &r.outcome {
        Outcome::Error { kind, .. } => Some(*kind),
        _ => None,
    }
}

#[test]
fn the_control_socket_is_private_and_answers_malformed_requests_with_errors() {
    let cluster = Cluster::start(&[
        NodeSpec {
            name: "b",
            witness: false,
        },
        NodeSpec {
            name: "c",
            witness: false,
        },
    ]);
    let b = cluster.node("b");
    let mode = std::fs::metadata(&b.control).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Not a frame.
    let r = exchange(&b.control, b"status please\n\0\0\0\0\0\0\0\0\0\0\0\0");
    assert_eq!(error_kind(&r), Some(ErrorKind::BadRequest), "{r:?}");
    // A frame whose body is not a request.
    let r = exchange(
        &b.control,
        &wire::encode_raw(KIND_CONTROL_REQUEST, 0, &[0xff; 7]).unwrap(),
    );
    assert_eq!(error_kind(&r), Some(ErrorKind::BadRequest), "{r:?}");
    // Another protocol version.
    let mut req = Request::new(Ctl::Status { app: None });
    req.version = 99;
    let r = exchange(
        &b.control,
        &wire::encode(KIND_CONTROL_REQUEST, 0, &req).unwrap(),
    );
    assert_eq!(error_kind(&r), Some(ErrorKind::Version), "{r:?}");
    // A request about an unknown application: ferry exits 2, one line.
    let out = b.ferry(&["failover", "nosuch"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("ferry: ") && err.contains("nosuch") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    // Still serving.
    assert_eq!(b.status().unwrap()["node"], "b");
}

#[test]
fn ferry_says_why_it_cannot_reach_ferryd() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let out = ferry(&["--control", sock.to_str().unwrap(), "status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect to the control socket") && err.contains("none.sock"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1);
}

#[test]
fn only_root_or_ferryds_user_is_served() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot run a client as another user; only the socket mode was checked elsewhere");
        return;
    }
    use std::os::unix::process::CommandExt;
    let cluster = Cluster::start(&[
        NodeSpec {
            name: "b",
            witness: false,
        },
        NodeSpec {
            name: "c",
            witness: false,
        },
    ]);
    let b = cluster.node("b");
    let run_as_nobody = |sock: &std::path::Path| {
        Command::new(bin("ferry"))
            .args(["--control", sock.to_str().unwrap(), "status"])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    // The socket's mode keeps other users out...
    let out = run_as_nobody(&b.control);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    // ...and were it opened up, ferryd itself refuses them (SO_PEERCRED).
    std::fs::set_permissions(cluster.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&b.control, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = run_as_nobody(&b.control);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only root or ferryd's user"), "{err}");
    assert!(
        b.log_text().contains("control client refused"),
        "{}",
        b.log_text()
    );
}
