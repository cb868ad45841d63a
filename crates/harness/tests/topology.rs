//! Hosts in namespaces and the fault primitives, without ferryd.
//!
//! These tests build real namespaces: they need root, `ip` and `nft`, and
//! fail with a message saying so when those are missing (they never pass
//! without having run). `ferry-kv` must be built (`cargo build -p
//! ferry-kv`) or named by FERRY_KV_BIN.

use ferry_harness::cluster::Binaries;
use ferry_harness::fault::{self, AnswerCounters, Firewall};
use ferry_harness::netns;
use ferry_harness::topology::{self, Topology, PREFIX};
use ferry_kv::client::Client;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::panic;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

const HOSTS: [(&str, u8); 2] = [("n1", 1), ("client", 10)];

fn require() {
    if let Err(e) = topology::require(true) {
        panic!("this test builds network namespaces and cannot run here: {e}");
    }
}

fn up() -> Topology {
    require();
    Topology::up(&topology::new_run_id(), &HOSTS, false).expect("topology up")
}

fn kv_binary() -> std::path::PathBuf {
    let b = Binaries::locate();
    if let Err(e) = b.check_kv() {
        panic!("{e}: run `cargo build -p ferry-kv` first");
    }
    b.ferry_kv
}

/// `ferry-kv` listening on `addr` inside host `host`, once it said so.
fn start_kv(topo: &Topology, host: &str, addr: &str) -> Child {
    let ns = topo.host(host).unwrap().ns.clone();
    let mut cmd = Command::new(kv_binary());
    cmd.args(["--listen", addr])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = netns::spawn_in(&ns, &mut cmd).expect("start ferry-kv in the namespace");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let mut r = BufReader::new(out);
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        let mut sink = String::new();
        while r.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("ferry-kv printed its address in time");
    assert_eq!(line.trim(), format!("listening {addr}"));
    child
}

/// Whether a process is gone (or a zombie nobody reaped yet).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn hosts_reach_each_other_and_everything_goes_at_teardown() {
    let topo = up();
    let id = topo.id().to_owned();
    assert!(topo.exists());
    assert!(topo.dir().is_dir());
    assert_eq!(
        topology::namespaces_with_prefix(&format!("{PREFIX}{id}-")).len(),
        3,
        "bridge, n1, client"
    );
    let kv = start_kv(&topo, "n1", "10.99.0.1:7070");
    let kv_pid = kv.id() as i32;
    assert_eq!(
        netns::pids_in(&topo.host("n1").unwrap().ns).unwrap(),
        vec![kv_pid]
    );
    let client_ns = topo.host("client").unwrap().ns.clone();
    let answer = netns::run_in(&client_ns, || {
        let mut c = Client::connect("10.99.0.1:7070", Duration::from_secs(5))?;
        let v = c.set("k", "v")?;
        let got = c.get("k")?;
        Ok::<_, ferry_kv::ClientError>((v, got))
    })
    .unwrap()
    .expect("the client host reaches the server over the bridge");
    assert_eq!(answer, (1, Some((1, "v".to_owned()))));
    // The machine's own namespace has no address of the harness network.
    let root = Command::new("ip").args(["-o", "addr"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&root.stdout).contains("10.99.0."));

    let dir = topo.dir().clone();
    topo.down().expect("teardown");
    assert!(topology::namespaces_with_prefix(&format!("{PREFIX}{id}-")).is_empty());
    assert!(gone(kv_pid), "ferry-kv was killed");
    assert!(!dir.exists());
    drop(kv);
}

#[test]
fn a_test_that_fails_half_way_leaves_nothing() {
    require();
    let id = topology::new_run_id();
    let inner = id.clone();
    let pid = Arc::new(std::sync::atomic::AtomicI32::new(0));
    let seen = pid.clone();
    let result = panic::catch_unwind(move || {
        let topo = Topology::up(&inner, &HOSTS, false).unwrap();
        // Never waited for: the test fails before, and the topology's
        // guard must kill it.
        #[allow(clippy::zombie_processes)]
        let child = netns::spawn_in(
            &topo.host("n1").unwrap().ns,
            Command::new("sleep").arg("300"),
        )
        .unwrap();
        seen.store(child.id() as i32, Ordering::SeqCst);
        panic!("failing half-way on purpose");
    });
    assert!(result.is_err());
    assert!(topology::namespaces_with_prefix(&format!("{PREFIX}{id}-")).is_empty());
    assert!(gone(pid.load(Ordering::SeqCst)), "the sleep was killed");
    assert!(!std::path::Path::new(&format!("/tmp/{PREFIX}{id}")).exists());

    // A topology that cannot be built (a host name twice) is removed too.
    let id = topology::new_run_id();
    let err = Topology::up(&id, &[("n1", 1), ("n1", 2)], false).unwrap_err();
    assert!(err.to_string().contains("n1"), "{err}");
    assert!(topology::namespaces_with_prefix(&format!("{PREFIX}{id}-")).is_empty());
}

#[test]
fn killing_a_host_kills_every_process_in_it() {
    let topo = up();
    let ns = topo.host("n1").unwrap().ns.clone();
    let mut a = netns::spawn_in(&ns, Command::new("sleep").arg("300")).unwrap();
    let mut b = netns::spawn_in(
        &ns,
        Command::new("sh").args(["-c", "sleep 300 & sleep 300 & wait"]),
    )
    .unwrap();
    // Wait for the shell's children to exist.
    let start = std::time::Instant::now();
    while netns::pids_in(&ns).unwrap().len() < 4 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "children started"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let named = fault::processes_named(topo.host("n1").unwrap(), "sleep").unwrap();
    assert_eq!(named.len(), 3);
    let killed = fault::kill_host(topo.host("n1").unwrap()).unwrap();
    assert_eq!(killed.len(), 4, "{killed:?}");
    assert!(netns::pids_in(&ns).unwrap().is_empty());
    assert!(a.wait().is_ok() && b.wait().is_ok());
    // The client host's processes are untouched: there are none, and this
    // test process is never counted.
    assert!(netns::pids_in(&topo.host("client").unwrap().ns)
        .unwrap()
        .is_empty());
}

/// A UDP echo inside `ns` on `addr` until `stop`.
fn udp_echo(ns: &str, addr: &str, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    let (ns, addr) = (ns.to_owned(), addr.to_owned());
    let (tx, rx) = mpsc::channel();
    let h = thread::spawn(move || {
        netns::enter(&ns).unwrap();
        let s = UdpSocket::bind(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    h
}

/// Whether a datagram sent from `ns` to `addr` comes back within 300 ms
/// (three tries).
fn udp_reaches(ns: &str, addr: &str) -> bool {
    let addr = addr.to_owned();
    netns::run_in(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 8];
        (0..3).any(|_| {
            s.send_to(b"ping", &addr).is_ok() && matches!(s.recv_from(&mut buf), Ok((4, _)))
        })
    })
    .unwrap()
}

#[test]
fn link_down_cuts_a_host_off_and_up_connects_it_again() {
    let topo = up();
    let stop = Arc::new(AtomicBool::new(false));
    let echo = udp_echo(&topo.host("n1").unwrap().ns, "10.99.0.1:9000", stop.clone());
    let client = topo.host("client").unwrap().ns.clone();
    assert!(udp_reaches(&client, "10.99.0.1:9000"));
    topo.set_link("n1", false).unwrap();
    assert!(!udp_reaches(&client, "10.99.0.1:9000"));
    topo.set_link("n1", true).unwrap();
    let start = std::time::Instant::now();
    while !udp_reaches(&client, "10.99.0.1:9000") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "reachable again after link up"
        );
    }
    stop.store(true, Ordering::Relaxed);
    echo.join().unwrap();
}

#[test]
fn nftables_drops_one_udp_port_then_lets_it_through_again() {
    let topo = up();
    let n1 = topo.host("n1").unwrap().clone();
    let fw = Firewall::install(&n1).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let blocked = udp_echo(&n1.ns, "10.99.0.1:9000", stop.clone());
    let other = udp_echo(&n1.ns, "10.99.0.1:9001", stop.clone());
    let client = topo.host("client").unwrap().ns.clone();
    assert!(udp_reaches(&client, "10.99.0.1:9000"));
    fw.block_udp(9000).unwrap();
    assert!(!udp_reaches(&client, "10.99.0.1:9000"), "port 9000 dropped");
    assert!(
        udp_reaches(&client, "10.99.0.1:9001"),
        "port 9001 still open"
    );
    fw.unblock().unwrap();
    assert!(
        udp_reaches(&client, "10.99.0.1:9000"),
        "port 9000 open again"
    );
    stop.store(true, Ordering::Relaxed);
    blocked.join().unwrap();
    other.join().unwrap();
    // The rules live in the host's namespace, not in the machine's.
    let root = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&root.stdout).contains("ferry_chaos"));
}

#[test]
fn the_answer_counters_count_what_each_host_sends_to_the_network() {
    let topo = up();
    let counters = AnswerCounters::install(&topo, 7070).unwrap();
    let mut kv = start_kv(&topo, "n1", "10.99.0.1:7070");
    let zero = counters.read().unwrap();
    assert_eq!(zero.get("n1"), Some(&0), "{zero:?}");
    assert_eq!(zero.get("client"), Some(&0), "{zero:?}");
    let client = topo.host("client").unwrap().ns.clone();
    netns::run_in(&client, || {
        let mut c = Client::connect("10.99.0.1:7070", Duration::from_secs(5)).unwrap();
        for i in 0..10 {
            c.set(&format!("k{i}"), "v").unwrap();
        }
    })
    .unwrap();
    let counts = counters.read().unwrap();
    assert!(counts["n1"] >= 10, "{counts:?}");
    assert_eq!(counts["client"], 0, "the client sends no answers");
    assert_eq!(counters.refusals().unwrap()["n1"], 0);
    // Once nobody listens on the port, connections are refused, and counted.
    kv.kill().unwrap();
    kv.wait().unwrap();
    let refused = netns::run_in(&client, || {
        std::net::TcpStream::connect_timeout(
            &"10.99.0.1:7070".parse().unwrap(),
            Duration::from_secs(2),
        )
        .map_err(|e| e.kind())
        .err()
    })
    .unwrap();
    assert_eq!(refused, Some(std::io::ErrorKind::ConnectionRefused));
    let refusals = counters.refusals().unwrap();
    assert!(refusals["n1"] >= 1, "{refusals:?}");
    assert_eq!(refusals["client"], 0);
    drop(topo);
}

#[test]
fn a_rebooted_host_keeps_nothing_but_its_address() {
    let topo = up();
    let n1 = topo.host("n1").unwrap().clone();
    let mut sleeper = netns::spawn_in(&n1.ns, Command::new("sleep").arg("300")).unwrap();
    Command::new("ip")
        .args(["-n", &n1.ns, "addr", "add", "10.99.0.100/24", "dev", "eth0"])
        .status()
        .unwrap();
    Firewall::install(&n1).unwrap().block_udp(9000).unwrap();
    topo.reboot_host("n1").unwrap();
    assert!(sleeper.wait().is_ok(), "its processes were killed");
    let addrs = Command::new("ip")
        .args(["-n", &n1.ns, "-o", "addr", "show", "dev", "eth0"])
        .output()
        .unwrap();
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    assert!(addrs.contains("10.99.0.1/24"), "{addrs}");
    assert!(!addrs.contains("10.99.0.100"), "{addrs}");
    // The drop rule went with the old namespace.
    let stop = Arc::new(AtomicBool::new(false));
    let echo = udp_echo(&n1.ns, "10.99.0.1:9000", stop.clone());
    let client = topo.host("client").unwrap().ns.clone();
    let start = std::time::Instant::now();
    while !udp_reaches(&client, "10.99.0.1:9000") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "reachable after the reboot"
        );
    }
    stop.store(true, Ordering::Relaxed);
    echo.join().unwrap();
}

#[test]
fn a_host_process_sees_its_own_interfaces_in_sys() {
    let topo = up();
    let n1 = topo.host("n1").unwrap().clone();
    let out = netns::command(&n1.ns, "cat")
        .arg("/sys/class/net/eth0/address")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), n1.mac);
    // The same pid: `ip netns exec` executes the program in place.
    let mut child = netns::command(&n1.ns, "sleep").arg("300").spawn().unwrap();
    let start = std::time::Instant::now();
    while netns::comm(child.id() as i32).as_deref() != Some("sleep") {
        assert!(start.elapsed() < Duration::from_secs(5), "sleep started");
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(netns::pids_in(&n1.ns).unwrap(), vec![child.id() as i32]);
    drop(topo);
    let _ = child.wait();
}
