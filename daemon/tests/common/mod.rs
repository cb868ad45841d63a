//! Helpers for ferryd's tests: real `ferryd` processes on 127.0.0.1, each
//! with its own data directory, control socket and log file, in one
//! temporary directory that is removed at the end. Every wait is bounded.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The directory of the built binaries (`ferryd`'s, which `scripts/test`
/// fills with the whole workspace's binaries first).
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_ferryd"))
        .parent()
        .expect("ferryd has a directory")
        .to_path_buf()
}

/// A binary of the workspace; panics with the command that builds it.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (cargo build --workspace --bins --lib)",
        p.display()
    );
    p
}

/// A UDP port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind a UDP port")
        .port()
}

/// Run `ferry` with arguments; its output.
pub fn ferry(args: &[&str]) -> Output {
    Command::new(bin("ferry"))
        .args(args)
        .env("FERRY_PRELOAD", bin("libferry_preload.so"))
        .stdin(Stdio::null())
        .output()
        .expect("run ferry")
}

/// Make a cluster CA and certificates for `nodes` in `dir`.
pub fn certs(dir: &Path, nodes: &[&str]) {
    let d = dir.to_str().unwrap();
    let out = ferry(&["cert", "init", "--dir", d]);
    assert!(out.status.success(), "{out:?}");
    for n in nodes {
        let out = ferry(&["cert", "issue", "--dir", d, "--node", n]);
        assert!(out.status.success(), "{out:?}");
    }
}

/// Poll `f` every 20 ms until it returns `Some` or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One running ferryd.
pub struct Daemon {
    pub name: String,
    pub port: u16,
    pub control: PathBuf,
    pub data: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    /// Its arguments and directory, to start it again.
    pub args: Vec<String>,
    pub dir: PathBuf,
}

impl Daemon {
    /// The text of its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until its log contains `needle`.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        wait_for(limit, || self.log_text().contains(needle).then_some(())).is_some()
    }

    /// `ferry --control SOCK args…`.
    pub fn ferry(&self, args: &[&str]) -> Output {
        let mut v = vec!["--control", self.control.to_str().unwrap()];
        v.extend_from_slice(args);
        ferry(&v)
    }

    /// `ferry status --json`, parsed; `None` if it failed.
    pub fn status(&self) -> Option<serde_json::Value> {
        let out = self.ferry(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The status of `app` on this node.
    pub fn app(&self, app: &str) -> Option<serde_json::Value> {
        let s = self.status()?;
        s["apps"]
            .as_array()?
            .iter()
            .find(|a| a["app"] == app)
            .cloned()
    }

    /// Start it again after a stop or a kill, with the same arguments (its
    /// log file starts anew).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        let d = spawn_daemon(&self.dir, &self.name, self.port, &self.args);
        let mut d = std::mem::ManuallyDrop::new(d);
        self.child = d.child.take();
    }

    /// SIGKILL the daemon and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, wait up to 5 s, then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill with a pid this test started.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let ended = wait_for(Duration::from_secs(5), || c.try_wait().ok().flatten());
            if ended.is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A cluster of ferryd on 127.0.0.1 in one temporary directory.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub daemons: Vec<Daemon>,
    /// Programs to kill at the end (pids the test learned).
    pub pids: Vec<i32>,
}

/// How one node of a cluster runs.
pub struct NodeSpec<'a> {
    pub name: &'a str,
    pub witness: bool,
}

/// Two nodes that run programs, a and b, and the witness w.
pub const THREE: [NodeSpec<'static>; 3] = [
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
];

impl Cluster {
    /// Start `nodes`, all peers of each other, with certificates from one
    /// CA; wait until each is ready and connected to all the others.
    pub fn start(nodes: &[NodeSpec]) -> Cluster {
        Self::start_with(nodes, "")
    }

    /// As [`Cluster::start`], with `extra` (top-level TOML keys) in every
    /// node's config file.
    pub fn start_with(nodes: &[NodeSpec], extra: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let names: Vec<&str> = nodes.iter().map(|n| n.name).collect();
        certs(&dir.path().join("certs"), &names);
        let ports: Vec<u16> = nodes.iter().map(|_| free_port()).collect();
        // A longer lease than the default: the tests share a small machine
        // with other builds, and a heartbeat late by half a second there
        // must not look like a dead primary.
        let config = dir.path().join("ferryd.toml");
        std::fs::write(
            &config,
            format!("{extra}\n[timings]\nlease-ms = 1500\nelection-timeout-min-ms = 200\nelection-timeout-max-ms = 400\n"),
        )
        .expect("write the config file");
        let mut daemons = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let mut args: Vec<String> = vec![
                "--config".into(),
                config.display().to_string(),
                "--node".into(),
                n.name.into(),
                "--listen".into(),
                format!("127.0.0.1:{}", ports[i]),
                "--data-dir".into(),
                dir.path()
                    .join(format!("data-{}", n.name))
                    .display()
                    .to_string(),
                "--control".into(),
                dir.path()
                    .join(format!("{}.sock", n.name))
                    .display()
                    .to_string(),
                "--certs".into(),
                dir.path().join("certs").display().to_string(),
            ];
            for (j, m) in nodes.iter().enumerate() {
                if j != i {
                    args.push("--peer".into());
                    args.push(format!("{}=127.0.0.1:{}", m.name, ports[j]));
                }
            }
            if n.witness {
                args.push("--witness".into());
            }
            daemons.push(spawn_daemon(dir.path(), n.name, ports[i], &args));
        }
        let cluster = Cluster {
            dir,
            daemons,
            pids: Vec::new(),
        };
        for d in &cluster.daemons {
            let all = wait_for(Duration::from_secs(20), || {
                let s = d.status()?;
                (s["connected"].as_array()?.len() == nodes.len() - 1).then_some(())
            });
            assert!(
                all.is_some(),
                "{} did not connect to every peer; its log:\n{}",
                d.name,
                d.log_text()
            );
        }
        cluster
    }

    /// The daemon named `name`.
    pub fn node(&self, name: &str) -> &Daemon {
        self.daemons.iter().find(|d| d.name == name).unwrap()
    }

    /// The daemon named `name`, mutably.
    pub fn node_mut(&mut self, name: &str) -> &mut Daemon {
        self.daemons.iter_mut().find(|d| d.name == name).unwrap()
    }

    /// Node `name`'s host dies: kill -9 its `ferryd` and the program it
    /// runs for `app`.
    pub fn kill_host(&mut self, name: &str, app: &str) {
        let pid = self.node(name).app(app).and_then(|s| s["pid"].as_i64());
        self.node_mut(name).kill9();
        if let Some(pid) = pid {
            kill_tree(pid as i32);
        }
    }

    /// Wait until node `name` serves `app` as primary with a program (which
    /// is then killed with the cluster); its status. Panics with every log
    /// after `limit`.
    pub fn wait_primary(&mut self, name: &str, app: &str, limit: Duration) -> serde_json::Value {
        let node = self.node(name);
        let s = wait_for(limit, || {
            node.app(app)
                .filter(|s| s["role"] == "primary" && s["pid"].as_i64().is_some())
        })
        .unwrap_or_else(|| panic!("{name} did not become the primary:\n{}", self.logs()));
        self.pids.push(s["pid"].as_i64().unwrap() as i32);
        s
    }

    /// Every daemon's log, for failure messages.
    pub fn logs(&self) -> String {
        self.daemons
            .iter()
            .map(|d| format!("---- {} ----\n{}", d.name, d.log_text()))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            d.stop();
        }
        for &p in &self.pids {
            kill_tree(p);
        }
    }
}

/// SIGKILL process `pid` and every process below it (a program's children
/// die with its host).
pub fn kill_tree(pid: i32) {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", all[i]));
        for t in tasks.into_iter().flatten().flatten() {
            let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            all.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            );
        }
        i += 1;
    }
    for p in all {
        // SAFETY: kill with the pid of a program this test started, or of
        // one of its descendants.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
}

/// Start one ferryd with `args`, its stderr in DIR/NAME.log; wait until its
/// control socket answers.
pub fn spawn_daemon(dir: &Path, name: &str, port: u16, args: &[String]) -> Daemon {
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).expect("create the log file");
    let control = args
        .iter()
        .position(|a| a == "--control")
        .map(|i| PathBuf::from(&args[i + 1]))
        .unwrap_or_else(|| dir.join(format!("{name}.sock")));
    let data = args
        .iter()
        .position(|a| a == "--data-dir")
        .map(|i| PathBuf::from(&args[i + 1]))
        .unwrap_or_else(|| dir.join(format!("data-{name}")));
    let child = Command::new(bin("ferryd"))
        .args(args)
        .env("FERRY_PRELOAD", bin("libferry_preload.so"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("start ferryd");
    let d = Daemon {
        name: name.to_owned(),
        port,
        control,
        data,
        log,
        child: Some(child),
        args: args.to_vec(),
        dir: dir.to_path_buf(),
    };
    assert!(
        d.wait_log("ferryd ready", Duration::from_secs(20)),
        "{name} did not start; its log:\n{}",
        d.log_text()
    );
    d
}

/// `ferry run` the key-value server on a; its port.
pub fn run_kv(cluster: &mut Cluster) -> u16 {
    run_kv_mode(cluster, "sync")
}

/// `ferry run --mode MODE` the key-value server on a; its port.
pub fn run_kv_mode(cluster: &mut Cluster, mode: &str) -> u16 {
    run_kv_as(cluster, mode, |kv, listen| {
        vec![kv.to_string(), "--listen".into(), listen.to_string()]
    })
}

/// `ferry run --mode MODE -- ARGV…` on a, `argv` made from the key-value
/// server's path and the address it is to listen on; its port.
pub fn run_kv_as(
    cluster: &mut Cluster,
    mode: &str,
    argv: impl FnOnce(&str, &str) -> Vec<String>,
) -> u16 {
    let port = free_port_tcp();
    let kv = bin("ferry-kv");
    let listen = format!("127.0.0.1:{port}");
    let argv = argv(kv.to_str().unwrap(), &listen);
    let mut args = vec!["run", "--name", "kv", "--mode", mode, "--"];
    args.extend(argv.iter().map(String::as_str));
    let out = cluster.node("a").ferry(&args);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ferry run failed: {}{}\n{}",
        said,
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    assert!(
        said.contains("protected by b") && said.contains(mode),
        "{said}"
    );
    let a = cluster.node("a").app("kv").unwrap();
    if let Some(pid) = a["pid"].as_i64() {
        cluster.pids.push(pid as i32);
    }
    port
}

pub fn free_port_tcp() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// Set `n` keys through the server; the versions it acknowledged.
pub fn write_keys(cluster: &Cluster, port: u16, n: usize) -> Vec<String> {
    write_keys_from(cluster, port, 0, n)
}

/// Set keys `first..first + n`, one request at a time; the versions the
/// server acknowledged.
pub fn write_keys_from(cluster: &Cluster, port: u16, first: usize, n: usize) -> Vec<String> {
    write_keys_in_flight(cluster, port, first, n, 1)
}

/// Set keys `first..first + n` with up to `in_flight` requests sent ahead
/// of their answers, as a busy client does; the versions acknowledged.
pub fn write_keys_in_flight(
    cluster: &Cluster,
    port: u16,
    first: usize,
    n: usize,
    in_flight: usize,
) -> Vec<String> {
    let stream = wait_for(Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .expect("the key-value server does not accept connections");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut acks = Vec::new();
    let end = first + n;
    let mut sent = first;
    for i in first..end {
        while sent < end && sent < i + in_flight.max(1) {
            writeln!(w, "SET k{sent} v{sent}").unwrap();
            sent += 1;
        }
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("OK "),
            "SET k{i} answered {line:?}; program output:\n{}\n{}",
            std::fs::read_to_string(cluster.node("a").data.join("apps/kv/program.out"))
                .unwrap_or_default(),
            cluster.logs()
        );
        acks.push(line.trim().to_owned());
    }
    acks
}

/// Read back every key `write_keys` set (acknowledged as `acks`) from the
/// server on `port`, whoever serves it now: each must have the version and
/// value acknowledged.
pub fn check_keys(cluster: &Cluster, port: u16, acks: &[String]) {
    let stream = wait_for(Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .unwrap_or_else(|| panic!("nobody listens on the service port:\n{}", cluster.logs()));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    // In rounds of up to 32 requests in flight.
    let mut sent = 0;
    for (i, ack) in acks.iter().enumerate() {
        while sent < acks.len() && sent < i + 32 {
            writeln!(w, "GET k{sent}").unwrap();
            sent += 1;
        }
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let version = ack.trim_start_matches("OK ");
        assert_eq!(
            line.trim(),
            format!("VALUE {version} v{i}"),
            "acknowledged write {i} of {} lost\n{}",
            acks.len(),
            cluster.logs()
        );
    }
}
