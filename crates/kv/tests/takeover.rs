//! Takeover without a network in between: ferry-kv runs as a primary under
//! the shim while a workload writes to it; the primary is killed with
//! SIGKILL; a live replica replays every record the primary logged and goes
//! live on the same address. Every write the primary acknowledged must be
//! there, and the new primary must serve new writes.
//!
//! This drives `ferry_host::program` as `ferryd` does (drain on the primary,
//! feed and go live on the replica), with the records handed over in memory.
//! It runs the shim built by the workspace: `$FERRY_BIN_DIR`, else
//! `$CARGO_TARGET_DIR/debug`, else the workspace's `target/debug`.

mod common;

use common::{kv_binary, parse_listening};
use ferry_host::program::{Output, Program};
use ferry_host::shim::program_env;
use ferry_kv::client::Client;
use ferry_kv::workload::{Stop, Workload, WorkloadConfig};
use ferry_proto::log::StartInfo;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const STEP: Duration = Duration::from_secs(30);

fn shim() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = if let Some(d) = std::env::var_os("FERRY_BIN_DIR").filter(|d| !d.is_empty()) {
        PathBuf::from(d)
    } else if let Some(d) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        workspace.join(d).join("debug")
    } else {
        workspace.join("target/debug")
    };
    let shim = dir.join("libferry_preload.so");
    assert!(
        shim.is_file(),
        "{} is missing: build the workspace first (scripts/test does)",
        shim.display()
    );
    shim
}

/// A free port on 127.0.0.1 (bound, then released for the server).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn wait_for_line(path: &Path, prefix: &str) -> String {
    let start = Instant::now();
    while start.elapsed() < STEP {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Some(line) = text.lines().find(|l| l.starts_with(prefix)) {
                return line.to_string();
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "no `{prefix}` line in {} within {STEP:?}: {:?}",
        path.display(),
        std::fs::read_to_string(path).unwrap_or_default()
    );
}

/// Reap `root` (a child of this test) and hand its status to `p`.
fn reap(p: &mut Program) {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(p.root_pid(), &mut status, libc::WNOHANG) };
        if r == p.root_pid() {
            p.root_exited(status);
            return;
        }
        assert!(
            r == 0,
            "waitpid failed: {}",
            std::io::Error::last_os_error()
        );
        assert!(start.elapsed() < STEP, "the program did not end");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A program under the shim with a thread draining its ring into `log`, as
/// ferryd's primary does. Killed when dropped, so that a failed test leaves
/// no server behind.
struct Live {
    program: Arc<Mutex<Program>>,
    log: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    drain: Option<thread::JoinHandle<()>>,
}

impl Live {
    /// Start `start` as a primary (outputs gated when `gated`), its output
    /// in `out`.
    fn primary(start: &StartInfo, out: &Path, gated: bool) -> Live {
        let p = Program::primary(
            start,
            gated,
            &Output {
                file: Some(out.to_path_buf()),
            },
        )
        .expect("start the primary");
        Live::drained(p)
    }

    /// Start a replica of `start`, feed it `records`, and turn it into the
    /// primary.
    fn take_over(start: &StartInfo, out: &Path, records: &[u8]) -> Live {
        let mut p = Program::replica(
            start,
            &Output {
                file: Some(out.to_path_buf()),
            },
        )
        .expect("start the replica");
        p.feed(records).expect("feed the replica");
        let base = p.fed();
        p.go_live(base, false, STEP)
            .unwrap_or_else(|e| panic!("go live after gseq {base}: {e}"));
        Live::drained(p)
    }

    fn drained(p: Program) -> Live {
        let program = Arc::new(Mutex::new(p));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, l, s) = (program.clone(), log.clone(), stop.clone());
        let drain = thread::spawn(move || {
            let mut buf = Vec::new();
            loop {
                let done = s.load(Ordering::Acquire);
                buf.clear();
                let got = p
                    .lock()
                    .unwrap()
                    .drain(&mut buf, 1 << 20)
                    .expect("drain the ring");
                l.lock().unwrap().extend_from_slice(&buf);
                if got.is_none() {
                    if done {
                        return;
                    }
                    thread::sleep(Duration::from_millis(1));
                }
            }
        });
        Live {
            program,
            log,
            stop,
            drain: Some(drain),
        }
    }

    fn program(&self) -> std::sync::MutexGuard<'_, Program> {
        self.program.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// kill -9 the program, reap it, drain what is left; returns every
    /// record it logged.
    fn kill(mut self) -> Vec<u8> {
        self.program().kill();
        reap(&mut self.program());
        self.stop.store(true, Ordering::Release);
        if let Some(d) = self.drain.take() {
            d.join().expect("the drainer");
        }
        let log = std::mem::take(&mut *self.log.lock().unwrap());
        log
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.program().kill();
        self.stop.store(true, Ordering::Release);
    }
}

/// ferry-kv listening on a free port of 127.0.0.1, under the shim, in
/// `dir`: its start info and address.
fn kv_start(dir: &Path) -> (StartInfo, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let start = StartInfo {
        argv: vec![
            kv_binary().as_os_str().as_bytes().to_vec(),
            b"--listen".to_vec(),
            addr.as_bytes().to_vec(),
        ],
        env: program_env(&shim(), std::env::vars_os()),
        cwd: dir.as_os_str().as_bytes().to_vec(),
    };
    (start, addr)
}

#[test]
fn a_live_replica_takes_over_with_every_acknowledged_write() {
    let work = tempfile::tempdir().expect("tempdir");
    let (start, addr) = kv_start(work.path());

    // The primary, with a workload of several connections writing to it.
    let primary_out = work.path().join("primary.out");
    let primary = Live::primary(&start, &primary_out, false);
    let line = wait_for_line(&primary_out, "listening ");
    assert_eq!(parse_listening(&line).to_string(), addr);
    let workload = Workload::run(WorkloadConfig {
        addr: addr.clone(),
        clients: 4,
        stop: Stop::Writes(100),
        ..WorkloadConfig::default()
    });
    let acked = workload.report().acknowledged;
    assert!(acked >= 400, "the workload got {acked} acknowledgements");

    // kill -9 the primary: what it logged is all the replica gets.
    let records = primary.kill();
    assert!(!records.is_empty(), "the primary logged nothing");

    // The replica replays it all and goes live on the same address.
    let replica = Live::take_over(&start, &work.path().join("replica.out"), &records);

    // Clients find every acknowledged write, and the new primary serves.
    let verified = {
        let started = Instant::now();
        loop {
            match workload.verify(&addr) {
                Ok(v) => break v,
                Err(_) if started.elapsed() < STEP => thread::sleep(Duration::from_millis(50)),
                Err(e) => panic!("the new primary does not answer on {addr}: {e}"),
            }
        }
    };
    assert!(verified.is_clean(), "writes lost at takeover: {verified:?}");
    let mut c = Client::connect(&addr, STEP).expect("connect to the new primary");
    let v = c
        .set("after-takeover", "yes")
        .expect("a write after takeover");
    assert!(v > 0);
    assert_eq!(
        c.get("after-takeover").expect("read it back"),
        Some((v, "yes".to_string()))
    );
    assert!(replica.program().failure().is_none());

    // The new primary dies too. A replica that replays the whole log (the
    // old primary's records, then the new one's) takes over again: this is
    // the old host rejoining as a backup and later taking the role back.
    let mut whole = records;
    let live_records = replica.kill();
    assert!(!live_records.is_empty(), "the new primary logged nothing");
    whole.extend_from_slice(&live_records);
    let third = Live::take_over(&start, &work.path().join("third.out"), &whole);
    let mut c = Client::connect_reconnecting(&addr, STEP, Default::default())
        .expect("connect to the third primary");
    assert_eq!(
        c.get("after-takeover")
            .expect("read after the second takeover"),
        Some((v, "yes".to_string()))
    );
    let verified = workload
        .verify(&addr)
        .expect("verify after the second takeover");
    assert!(
        verified.is_clean(),
        "writes lost at the second takeover: {verified:?}"
    );
    third.kill();
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Send one request line and wait up to `wait` for the answer line.
fn ask(stream: &mut std::net::TcpStream, line: &str, wait: Duration) -> Option<String> {
    use std::io::{Read, Write};
    stream.write_all(line.as_bytes()).expect("send");
    stream.set_read_timeout(Some(wait)).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(b"\n") {
        match stream.read(&mut buf) {
            Ok(0) => panic!("the server closed the connection"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    Some(String::from_utf8_lossy(&got).trim_end().to_string())
}

#[test]
fn a_gated_primary_answers_only_inside_its_lease_and_after_the_backup_has_the_log() {
    let work = tempfile::tempdir().expect("tempdir");
    let (start, addr) = kv_start(work.path());
    let out = work.path().join("primary.out");
    let primary = Live::primary(&start, &out, true);
    // Its stdout is not an output to a client: not gated.
    wait_for_line(&out, "listening ");

    let mut s = std::net::TcpStream::connect(&addr).expect("connect");
    // The gate is closed: no answer leaves the program.
    assert_eq!(ask(&mut s, "SET k v1\n", Duration::from_millis(400)), None);
    // Acknowledged up to what was logged, lease running: the answer goes.
    let started = Instant::now();
    let answer = loop {
        let p = primary.program();
        p.open_gate(p.drained(), monotonic_ns() + 10_000_000_000);
        drop(p);
        if let Some(a) = ask(&mut s, "", Duration::from_millis(50)) {
            break a;
        }
        assert!(
            started.elapsed() < STEP,
            "the answer never left the open gate"
        );
    };
    assert_eq!(answer, "OK 1");

    // Everything acknowledged, but the lease has run out: nothing leaves.
    primary.program().open_gate(u64::MAX, monotonic_ns());
    assert_eq!(ask(&mut s, "GET k\n", Duration::from_millis(400)), None);
    primary
        .program()
        .open_gate(u64::MAX, monotonic_ns() + 10_000_000_000);
    assert_eq!(
        ask(&mut s, "", STEP).as_deref(),
        Some("VALUE 1 v1"),
        "the answer once the lease is renewed"
    );

    primary.kill();
}

#[test]
fn a_paused_primary_logs_nothing_after_the_record_it_reports() {
    let work = tempfile::tempdir().expect("tempdir");
    let (start, addr) = kv_start(work.path());
    let out = work.path().join("primary.out");
    let primary = Live::primary(&start, &out, false);
    wait_for_line(&out, "listening ");

    // Clients keep writing while the program is paused and resumed.
    let load = {
        let addr = addr.clone();
        thread::spawn(move || {
            Workload::run(WorkloadConfig {
                addr,
                clients: 2,
                stop: Stop::Duration(Duration::from_millis(1500)),
                timeout: STEP,
                ..WorkloadConfig::default()
            })
        })
    };
    thread::sleep(Duration::from_millis(300));
    // Records pause drains itself are kept with the rest.
    let mut drained = Vec::new();
    let last = primary.program().pause(&mut drained).expect("pause");
    // Everything up to `last` reaches the ring, and nothing after it.
    let started = Instant::now();
    while primary.program().drained() < last {
        assert!(
            started.elapsed() < STEP,
            "records before the pause never came"
        );
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        primary.program().drained(),
        last,
        "the program logged a record while paused"
    );
    primary.program().resume();
    let workload = load.join().expect("the workload");
    assert!(
        primary.program().drained() > last,
        "the program did not go on after resume"
    );
    assert!(workload.report().acknowledged > 0);
    assert!(workload.verify(&addr).expect("verify").is_clean());

    primary.kill();
}

/// A small asyncio key-value server: one thread, an epoll loop, a socket
/// pair for its own wake-ups.
const ASYNCIO_SERVER: &str = r#"
import asyncio, sys
store = {}
async def handle(r, w):
    while True:
        line = await r.readline()
        if not line:
            break
        p = line.decode().split()
        if p[0] == 'SET':
            store[p[1]] = p[2]
            w.write(b'OK\n')
        else:
            w.write((store.get(p[1], '-') + '\n').encode())
        await w.drain()
    w.close()
async def main():
    srv = await asyncio.start_server(handle, '127.0.0.1', int(sys.argv[1]))
    print('listening', flush=True)
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
"#;

/// The Python program `script`, listening on a free port of 127.0.0.1
/// (its first argument), under the shim, in `dir`: its start info and
/// address.
fn python_server(dir: &Path, script: &str) -> (StartInfo, String) {
    let path = dir.join("server.py");
    std::fs::write(&path, script).expect("write the script");
    let port = free_port();
    let python = std::process::Command::new("sh")
        .args(["-c", "command -v python3"])
        .output()
        .expect("sh");
    let python = String::from_utf8_lossy(&python.stdout).trim().to_string();
    assert!(!python.is_empty(), "python3 is needed for this test");
    let start = StartInfo {
        argv: vec![
            python.into_bytes(),
            path.as_os_str().as_bytes().to_vec(),
            port.to_string().into_bytes(),
        ],
        env: program_env(&shim(), std::env::vars_os()),
        cwd: dir.as_os_str().as_bytes().to_vec(),
    };
    (start, format!("127.0.0.1:{port}"))
}

fn line_client(addr: &str) -> std::net::TcpStream {
    let started = Instant::now();
    loop {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => return s,
            Err(e) => {
                assert!(started.elapsed() < STEP, "cannot connect to {addr}: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[test]
fn an_asyncio_server_takes_over_with_its_epoll_set() {
    let work = tempfile::tempdir().expect("tempdir");
    let (start, addr) = python_server(work.path(), ASYNCIO_SERVER);
    let out = work.path().join("primary.out");
    let primary = Live::primary(&start, &out, false);
    wait_for_line(&out, "listening");

    let mut clients: Vec<_> = (0..3).map(|_| line_client(&addr)).collect();
    for round in 0..20 {
        for (i, c) in clients.iter_mut().enumerate() {
            let line = format!("SET k{i}-{round} v{round}\n");
            assert_eq!(ask(c, &line, STEP).as_deref(), Some("OK"));
        }
    }
    let records = primary.kill();
    let replica = Live::take_over(&start, &work.path().join("replica.out"), &records);

    let mut c = line_client(&addr);
    for i in 0..3 {
        for round in 0..20 {
            let got = ask(&mut c, &format!("GET k{i}-{round}\n"), STEP);
            assert_eq!(
                got,
                Some(format!("v{round}")),
                "key k{i}-{round} after takeover"
            );
        }
    }
    assert_eq!(ask(&mut c, "SET new yes\n", STEP).as_deref(), Some("OK"));
    assert_eq!(ask(&mut c, "GET new\n", STEP).as_deref(), Some("yes"));

    replica.kill();
}

/// A server whose state is partly an eventfd's counter: `ADD n` adds n to
/// it, `TAKE` reads (and so empties) it.
const EVENTFD_SERVER: &str = r#"
import os, socket, sys
efd = os.eventfd(0, os.EFD_NONBLOCK)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(8)
print("listening", flush=True)
def serve(f):
    for line in f:
        words = line.split()
        if words[0] == b"ADD":
            os.eventfd_write(efd, int(words[1]))
            f.write(b"OK\n")
        elif words[0] == b"TAKE":
            try:
                f.write(b"%d\n" % os.eventfd_read(efd))
            except BlockingIOError:
                f.write(b"EMPTY\n")
while True:
    c, _ = s.accept()
    try:
        serve(c.makefile("rwb", buffering=0))
    except OSError:
        # A client gone, or after a takeover a connection of the old
        # primary (an answer the primary sent but had not logged yet is
        # sent again, to a connection that is dead).
        pass
    c.close()
"#;

#[test]
fn an_eventfds_counter_survives_a_takeover() {
    let work = tempfile::tempdir().expect("tempdir");
    let (start, addr) = python_server(work.path(), EVENTFD_SERVER);
    let out = work.path().join("primary.out");
    let primary = Live::primary(&start, &out, false);
    wait_for_line(&out, "listening");
    let mut c = line_client(&addr);
    assert_eq!(ask(&mut c, "ADD 5\n", STEP).as_deref(), Some("OK"));
    assert_eq!(ask(&mut c, "TAKE\n", STEP).as_deref(), Some("5"));
    assert_eq!(ask(&mut c, "TAKE\n", STEP).as_deref(), Some("EMPTY"));
    assert_eq!(ask(&mut c, "ADD 3\n", STEP).as_deref(), Some("OK"));
    assert_eq!(ask(&mut c, "ADD 4\n", STEP).as_deref(), Some("OK"));
    drop(c);
    let records = primary.kill();
    let replica = Live::take_over(&start, &work.path().join("replica.out"), &records);

    let mut c = line_client(&addr);
    assert_eq!(
        ask(&mut c, "TAKE\n", STEP).as_deref(),
        Some("7"),
        "the eventfd's counter after takeover"
    );
    assert_eq!(ask(&mut c, "TAKE\n", STEP).as_deref(), Some("EMPTY"));
    replica.kill();
}

/// A server that counts the expirations of a periodic timerfd (every 20
/// ms) in an epoll loop and answers `TICKS` with the count.
const TIMERFD_SERVER: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <stdint.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
int main(int argc, char **argv) {
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct itimerspec its = {{0, 20000000}, {0, 20000000}};
    timerfd_settime(tfd, 0, &its, NULL);
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(argv[1]));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 8)) return 1;
    printf("listening\n");
    fflush(stdout);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = tfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    ev.data.fd = s;
    epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
    uint64_t ticks = 0;
    int c = -1;
    for (;;) {
        struct epoll_event got[4];
        int n = epoll_wait(ep, got, 4, -1);
        for (int i = 0; i < n; i++) {
            int fd = got[i].data.fd;
            if (fd == tfd) {
                uint64_t k;
                if (read(tfd, &k, 8) == 8) ticks += k;
            } else if (fd == s) {
                if (c >= 0) { epoll_ctl(ep, EPOLL_CTL_DEL, c, NULL); close(c); }
                c = accept(s, NULL, NULL);
                ev.data.fd = c;
                if (c >= 0) epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
            } else {
                char buf[64];
                ssize_t r = read(fd, buf, sizeof buf);
                if (r <= 0) { epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL); close(fd); c = -1; continue; }
                char out[32];
                int len = snprintf(out, sizeof out, "%llu\n", (unsigned long long)ticks);
                if (write(fd, out, len) < 0) { epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL); close(fd); c = -1; }
            }
        }
    }
}
"#;

fn ticks(addr: &str) -> u64 {
    let mut c = line_client(addr);
    let got = ask(&mut c, "TICKS\n", STEP).expect("an answer to TICKS");
    got.parse()
        .unwrap_or_else(|_| panic!("not a count: {got:?}"))
}

#[test]
fn a_periodic_timerfd_still_fires_after_a_takeover() {
    let work = tempfile::tempdir().expect("tempdir");
    let source = work.path().join("timer.c");
    let binary = work.path().join("timer");
    std::fs::write(&source, TIMERFD_SERVER).expect("write the source");
    let cc = std::process::Command::new("cc")
        .arg("-O1")
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("cc is needed for this test");
    assert!(cc.success(), "cannot compile the timerfd server");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let start = StartInfo {
        argv: vec![
            binary.as_os_str().as_bytes().to_vec(),
            port.to_string().into_bytes(),
        ],
        env: program_env(&shim(), std::env::vars_os()),
        cwd: work.path().as_os_str().as_bytes().to_vec(),
    };
    let out = work.path().join("primary.out");
    let primary = Live::primary(&start, &out, false);
    wait_for_line(&out, "listening");
    thread::sleep(Duration::from_millis(200));
    let before = ticks(&addr);
    assert!(before > 0, "the timer did not fire on the primary");
    let records = primary.kill();
    let replica = Live::take_over(&start, &work.path().join("replica.out"), &records);

    let first = ticks(&addr);
    assert!(first >= before, "ticks went back: {before} then {first}");
    thread::sleep(Duration::from_millis(300));
    let later = ticks(&addr);
    assert!(
        later > first,
        "the timerfd no longer fires after the takeover: {first} then {later} ticks"
    );
    replica.kill();
}
