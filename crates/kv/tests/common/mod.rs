//! Helpers shared by the tests: servers in this process or as a child
//! process, and a raw connection that speaks bytes.

#![allow(dead_code)]

use ferry_kv::server::{Config, Server};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// How long any single step may take before the test fails.
pub const STEP: Duration = Duration::from_secs(20);

/// A server running in a thread of this process, for the rest of the test.
pub fn start_server(config: Config) -> SocketAddr {
    let server = Server::bind("127.0.0.1:0", config).expect("bind");
    let addr = server.local_addr();
    thread::spawn(move || {
        let e = server.run();
        panic!("the server stopped: {e:?}");
    });
    addr
}

/// `ferry-kv` as a child process, and the address it printed.
pub struct KvProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

pub fn kv_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry-kv"))
}

/// Read the first line of a child's stdout, failing after `STEP`.
pub fn first_line(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so that the child never blocks on a full pipe.
        let mut rest = Vec::new();
        let _ = r.read_to_end(&mut rest);
    });
    rx.recv_timeout(STEP).expect("the first line in time")
}

/// The address in a `listening ADDR:PORT` line.
pub fn parse_listening(line: &str) -> SocketAddr {
    line.trim_end()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("not a listening line: {line:?}"))
        .parse()
        .expect("an address")
}

/// Start the `ferry-kv` binary with these extra arguments.
pub fn spawn_binary(extra: &[&str]) -> KvProcess {
    let mut child = Command::new(kv_binary())
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ferry-kv");
    let line = first_line(&mut child);
    KvProcess {
        addr: parse_listening(&line),
        child,
    }
}

/// Send a signal with kill(1) (std only sends SIGKILL).
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}

/// Wait for a child to end, failing after `STEP`.
pub fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > STEP {
            let _ = child.kill();
            panic!("the child did not end within {STEP:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A connection that speaks raw bytes.
pub struct Raw {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect_timeout(&addr, STEP).expect("connect");
        stream.set_read_timeout(Some(STEP)).unwrap();
        stream.set_write_timeout(Some(STEP)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Raw { stream, reader }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// One response line, without its `\n`; `None` at end of stream.
    pub fn line(&mut self) -> Option<String> {
        let mut line = Vec::new();
        let n = self
            .reader
            .read_until(b'\n', &mut line)
            .expect("read a line in time");
        if n == 0 {
            return None;
        }
        assert_eq!(line.pop(), Some(b'\n'), "a line ends with \\n: {line:?}");
        Some(String::from_utf8(line).expect("ASCII"))
    }

    /// Send one request line and read one answer.
    pub fn ask(&mut self, request: &str) -> String {
        self.send(format!("{request}\n").as_bytes());
        self.line().expect("an answer")
    }

    /// The server closed the connection: nothing more to read.
    pub fn assert_closed(&mut self) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "more after the end: {rest:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }

    /// Stop sending, and read every remaining answer until the server closes.
    pub fn finish(mut self) -> Vec<String> {
        let _ = self.stream.shutdown(Shutdown::Write);
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            match self.reader.read_until(b'\n', &mut line) {
                Ok(0) => return lines,
                Ok(_) => lines.push(String::from_utf8_lossy(&line).trim_end().to_owned()),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return lines,
                Err(e) => panic!("reading answers: {e}"),
            }
        }
    }
}
