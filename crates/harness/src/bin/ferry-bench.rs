//! `ferry-bench`: the key-value server's throughput and latency from a
//! client in its own network namespace, natively and under Ferry (async and
//! sync output commit), and the replication stream's rate. Run by
//! `scripts/bench-standby`; results in docs/PERFORMANCE.md.
//!
//! Each configuration builds its own hosts (as `ferry-chaos` does), runs the
//! same workload for the same time and tears everything down. The ratios to
//! the native run of the same invocation are what to compare: the machine is
//! shared and noisy.

use std::path::Path;
use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use ferry_harness::cluster::{Binaries, Cluster, ClusterConfig, REPLICAS};
use ferry_harness::{netns, topology};
use ferry_kv::workload::{Stop, Workload, WorkloadConfig};

/// Measure ferry-kv natively and under Ferry.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Seconds each configuration is measured.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Bytes of each value written.
    #[arg(long, default_value_t = 64)]
    value_bytes: usize,
}

struct Row {
    name: &'static str,
    writes: u64,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    stream_mb_s: Option<f64>,
}

fn workload(args: &Args, addr: String) -> WorkloadConfig {
    WorkloadConfig {
        addr,
        clients: args.clients,
        stop: Stop::Duration(Duration::from_secs(args.seconds)),
        value_bytes: args.value_bytes,
        timeout: Duration::from_secs(10),
        ..WorkloadConfig::default()
    }
}

fn row(name: &'static str, w: &Workload, stream_mb_s: Option<f64>) -> Row {
    let r = w.report();
    let l = r.latency();
    Row {
        name,
        writes: r.acknowledged,
        per_sec: r.throughput(),
        p50: l.p50,
        p99: l.p99,
        stream_mb_s,
    }
}

/// Bytes of the segment files under `dir`.
fn segment_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "fseg") {
                total += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    total
}

fn native(args: &Args, binaries: Binaries) -> Result<Row, String> {
    let id = topology::new_run_id();
    let cluster = Cluster::build(
        &id,
        ClusterConfig {
            binaries: binaries.clone(),
            ..ClusterConfig::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let host = cluster.node(REPLICAS[0]).map_err(|e| e.to_string())?;
    let port = cluster.config().service_port;
    let mut cmd = netns::command(&host.host.ns, &binaries.ferry_kv);
    cmd.args(["--listen", &format!("0.0.0.0:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut server: Child = cmd.spawn().map_err(|e| format!("ferry-kv: {e}"))?;
    let addr = format!("{}:{port}", host.host.ip);
    let probe = addr.clone();
    let started = Instant::now();
    loop {
        let a = probe.clone();
        let up = cluster
            .in_client(move || std::net::TcpStream::connect(a).is_ok())
            .map_err(|e| e.to_string())?;
        if up {
            break;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = server.kill();
            return Err("the native ferry-kv did not start".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let config = workload(args, addr);
    let w = cluster
        .in_client(move || Workload::run(config))
        .map_err(|e| e.to_string());
    let _ = server.kill();
    let _ = server.wait();
    cluster.down().map_err(|e| e.join("; "))?;
    Ok(row("native", &w?, None))
}

fn under_ferry(
    args: &Args,
    binaries: Binaries,
    mode: &'static str,
    name: &'static str,
) -> Result<Row, String> {
    let id = topology::new_run_id();
    let mut cluster = Cluster::build(
        &id,
        ClusterConfig {
            binaries,
            mode: mode.into(),
            ..ClusterConfig::default()
        },
    )
    .map_err(|e| e.to_string())?;
    cluster.start_daemons().map_err(|e| e.to_string())?;
    cluster.run_app(REPLICAS[0]).map_err(|e| e.to_string())?;

    let backup_data = cluster
        .node(REPLICAS[1])
        .map_err(|e| e.to_string())?
        .data
        .clone();
    let before = segment_bytes(&backup_data);
    let started = Instant::now();
    let w = cluster
        .write(workload(args, cluster.service_addr()))
        .map_err(|e| e.to_string())?;
    let secs = started.elapsed().as_secs_f64();
    let after = segment_bytes(&backup_data);
    let mb_s = (after.saturating_sub(before)) as f64 / secs / 1e6;
    cluster.down().map_err(|e| e.join("; "))?;
    Ok(row(name, &w, Some(mb_s)))
}

fn main() -> ExitCode {
    // SAFETY: setting a disposition before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let args = Args::parse();
    if let Err(e) = topology::require(false) {
        eprintln!("ferry-bench: cannot run here: {e}");
        return ExitCode::from(2);
    }
    let binaries = Binaries::locate();
    if let Err(e) = binaries.check_all() {
        eprintln!("ferry-bench: {e}");
        return ExitCode::from(2);
    }
    let mut rows = Vec::new();
    type Run = Box<dyn Fn(&Args, Binaries) -> Result<Row, String>>;
    let runs: [(&str, Run); 3] = [
        ("native", Box::new(native)),
        (
            "ferry async",
            Box::new(|a: &Args, b: Binaries| under_ferry(a, b, "async", "ferry async")),
        ),
        (
            "ferry sync",
            Box::new(|a: &Args, b: Binaries| under_ferry(a, b, "sync", "ferry sync")),
        ),
    ];
    for (name, run) in runs {
        eprintln!(
            "ferry-bench: {name}, {} s, {} clients",
            args.seconds, args.clients
        );
        match run(&args, binaries.clone()) {
            Ok(r) => rows.push(r),
            Err(e) => {
                eprintln!("ferry-bench: {name}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let base = rows[0].per_sec.max(f64::MIN_POSITIVE);
    println!(
        "| configuration | writes acked | writes/s | ratio to native | p50 | p99 | replication stream |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.2}× | {:.2} ms | {:.2} ms | {} |",
            r.name,
            r.writes,
            r.per_sec,
            r.per_sec / base,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.stream_mb_s
                .map(|m| format!("{m:.2} MB/s"))
                .unwrap_or_else(|| "–".into())
        );
    }
    ExitCode::SUCCESS
}
