//! `ferry-bench-migrate`: the downtime of a live migration (`ferry migrate`)
//! of the key-value server holding a given amount of state, under write
//! load from a client in its own network namespace. Run by
//! `scripts/bench-migrate`; results in docs/PERFORMANCE.md.
//!
//! It builds the harness's hosts (two replicas, a witness, a client), runs
//! ferry-kv protected in sync mode, fills it with `--state-mib` of values,
//! then moves it between the two replicas `--migrations` times (each move
//! committed, the next one back). During each move a load of writers runs,
//! and a probe writes one key after the other as fast as the server
//! answers: the longest gap between two of its acknowledged writes is the
//! downtime as a client sees it (a request's own latency included). The
//! downtime `ferry migrate` prints (gate closed on the old primary until the
//! new one announced itself) is reported next to it. At the end every
//! acknowledged write of every load is read back.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use ferry_harness::cluster::{Binaries, Cluster, ClusterConfig, REPLICAS};
use ferry_harness::{guard, topology};
use ferry_kv::workload::{Stop, Workload, WorkloadConfig};
use ferry_kv::{Client, Reconnect};

/// Measure live-migration downtime of ferry-kv.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// State the server holds before the first move, in MiB (values of 64
    /// KiB).
    #[arg(long, default_value_t = 1024)]
    state_mib: u64,
    /// Moves to measure.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    migrations: u32,
    /// Writers of the load during each move.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Print every probe write that took over 10 ms or failed, and why.
    #[arg(long)]
    verbose: bool,
    /// Leave the hosts, processes and logs in place at the end
    /// (`ferry-chaos cleanup` removes them).
    #[arg(long)]
    keep: bool,
}

/// Bound of a whole `ferry migrate` (the target is a live backup: it has
/// nothing to catch up but the last few records).
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(120);
/// Load before and after each move.
const AROUND: Duration = Duration::from_millis(1500);

struct Move {
    reported_ms: f64,
    client_gap_ms: f64,
}

fn fail(what: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("ferry-bench-migrate: {what}: {e}");
    ExitCode::from(1)
}

/// `downtime 12.3 ms` in what `ferry migrate` printed.
fn reported_downtime(said: &str) -> Option<f64> {
    let at = said.find("downtime ")? + "downtime ".len();
    let rest = &said[at..];
    let end = rest.find(" ms")?;
    rest[..end].trim().parse().ok()
}

/// Write one key after the other until `stop`; the longest time between
/// two acknowledged writes.
fn probe(addr: String, stop: Arc<AtomicBool>, verbose: bool) -> Duration {
    let policy = Reconnect {
        deadline: Duration::from_secs(30),
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    };
    let Ok(mut c) = Client::connect_reconnecting(&addr, Duration::from_secs(2), policy) else {
        return Duration::MAX;
    };
    let mut last = Instant::now();
    let mut longest = Duration::ZERO;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let t0 = Instant::now();
        let r = c.set("probe", &i.to_string());
        if verbose && (r.is_err() || t0.elapsed() > Duration::from_millis(10)) {
            eprintln!(
                "ferry-bench-migrate: probe write took {:.1} ms: {}",
                t0.elapsed().as_secs_f64() * 1e3,
                r.as_ref().map_or_else(|e| e.to_string(), |_| "ok".into())
            );
        }
        if r.is_ok() {
            let now = Instant::now();
            longest = longest.max(now - last);
            last = now;
        }
    }
    longest
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() as f64 - 1.0) * q).round() as usize;
    s.get(i).copied().unwrap_or(f64::NAN)
}

fn main() -> ExitCode {
    // SAFETY: setting a disposition before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    if let Err(e) = guard::install() {
        eprintln!("ferry-bench-migrate: cannot take the termination signals: {e}");
        return ExitCode::from(2);
    }
    let args = Args::parse();
    if let Err(e) = topology::require(false) {
        eprintln!("ferry-bench-migrate: cannot run here: {e}");
        return ExitCode::from(2);
    }
    let binaries = Binaries::locate();
    if let Err(e) = binaries.check_all() {
        eprintln!("ferry-bench-migrate: {e}");
        return ExitCode::from(2);
    }
    let id = topology::new_run_id();
    let mut cluster = match Cluster::build(
        &id,
        ClusterConfig {
            binaries,
            step_timeout: Duration::from_secs(60),
            keep: args.keep,
            ..ClusterConfig::default()
        },
    ) {
        Ok(c) => c,
        Err(e) => return fail("building the hosts", e),
    };
    let code = run(&args, &mut cluster);
    if args.keep {
        eprintln!("ferry-bench-migrate: left in place: run {id}");
        std::mem::forget(cluster);
        return code;
    }
    if let Err(e) = cluster.down() {
        eprintln!("ferry-bench-migrate: cleaning up: {}", e.join("; "));
    }
    guard::exit_code(code)
}

fn run(args: &Args, cluster: &mut Cluster) -> ExitCode {
    if let Err(e) = cluster.start_daemons() {
        return fail("starting ferryd", e);
    }
    if let Err(e) = cluster.run_app(REPLICAS[0]) {
        return fail("ferry run", e);
    }
    // Fill: 64 KiB values on new keys.
    let values = args.state_mib * 16;
    let writers = 4u64;
    eprintln!(
        "ferry-bench-migrate: filling ferry-kv with {} MiB ({values} values of 64 KiB)",
        args.state_mib
    );
    let started = Instant::now();
    let fill = WorkloadConfig {
        clients: writers as usize,
        stop: Stop::Writes(values.div_ceil(writers)),
        value_bytes: 64 * 1024,
        timeout: Duration::from_secs(30),
        ..WorkloadConfig::default()
    };
    let filled = match cluster.write(fill) {
        Ok(w) => w,
        Err(e) => return fail("filling", e),
    };
    let r = filled.report();
    if !r.client_errors.is_empty() || r.acknowledged < values {
        return fail(
            "filling",
            format!(
                "{} of {values} values acknowledged: {:?}",
                r.acknowledged, r.client_errors
            ),
        );
    }
    eprintln!(
        "ferry-bench-migrate: filled in {:.1} s; waiting for the backup's replica",
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = cluster.wait_caught_up(Duration::from_secs(600)) {
        return fail("catching up", e);
    }

    // Each workload is checked before the next one, which writes the same
    // keys, begins.
    let (mut acked, mut lost) = (0u64, 0usize);
    let mut check = |cluster: &Cluster, w: Workload| -> Result<(), String> {
        acked += w.report().acknowledged;
        let (_, v) = cluster.verify(w).map_err(|e| e.to_string())?;
        if !v.is_clean() {
            eprintln!("ferry-bench-migrate: {v}");
        }
        lost += v.lost.len();
        Ok(())
    };
    if let Err(e) = check(cluster, filled) {
        return fail("verifying the fill", e);
    }
    let mut moves = Vec::new();
    let (mut from, mut to) = (REPLICAS[0], REPLICAS[1]);
    for n in 0..args.migrations {
        let addr = cluster.service_addr();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let verbose = args.verbose;
        let probe = match cluster.spawn_in_client(move || probe(addr, flag, verbose)) {
            Ok(h) => h,
            Err(e) => return fail("starting the probe", e),
        };
        let load = WorkloadConfig {
            addr: cluster.service_addr(),
            clients: args.clients,
            stop: Stop::Duration(AROUND * 2 + Duration::from_secs(2)),
            value_bytes: 64,
            keys_per_client: Some(1000),
            timeout: Duration::from_secs(10),
            reconnect: Some(Reconnect::default()),
            seed: 1000 + u64::from(n),
            ..WorkloadConfig::default()
        };
        let load = match cluster.spawn_in_client(move || Workload::run(load)) {
            Ok(h) => h,
            Err(e) => return fail("starting the load", e),
        };
        std::thread::sleep(AROUND);
        let said = match cluster.migrate(from, to, None, MIGRATE_TIMEOUT) {
            Ok(s) => s,
            Err(e) => return fail(&format!("ferry migrate --to {to}"), e),
        };
        std::thread::sleep(AROUND);
        stop.store(true, Ordering::Relaxed);
        let gap = probe.join().unwrap_or(Duration::MAX);
        let load = match load.join() {
            Ok(w) => w,
            Err(_) => return fail("the load", "a writer thread panicked"),
        };
        if let Err(e) = cluster.migrate(to, to, Some("--commit"), MIGRATE_TIMEOUT) {
            return fail("ferry migrate --commit", e);
        }
        if let Err(e) = check(cluster, load) {
            return fail("verifying", e);
        }
        let Some(reported_ms) = reported_downtime(&said) else {
            return fail(
                "ferry migrate",
                format!("no downtime in its output: {said}"),
            );
        };
        let m = Move {
            reported_ms,
            client_gap_ms: gap.as_secs_f64() * 1e3,
        };
        eprintln!(
            "ferry-bench-migrate: move {} {from} -> {to}: downtime {:.1} ms reported, {:.1} ms longest gap seen by the client",
            n + 1,
            m.reported_ms,
            m.client_gap_ms
        );
        moves.push(m);
        // Let the old primary catch up as a backup before the next move.
        if let Err(e) = cluster.wait_caught_up(Duration::from_secs(600)) {
            return fail("catching up after a move", e);
        }
        std::mem::swap(&mut from, &mut to);
    }

    let reported: Vec<f64> = moves.iter().map(|m| m.reported_ms).collect();
    let gaps: Vec<f64> = moves.iter().map(|m| m.client_gap_ms).collect();
    println!("| state | moves | downtime (ferryd) p50 / p99 / max | longest client gap p50 / p99 / max | writes acked | writes lost |");
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} MiB | {} | {:.1} / {:.1} / {:.1} ms | {:.1} / {:.1} / {:.1} ms | {acked} | {lost} |",
        args.state_mib,
        moves.len(),
        quantile(&reported, 0.5),
        quantile(&reported, 0.99),
        quantile(&reported, 1.0),
        quantile(&gaps, 0.5),
        quantile(&gaps, 0.99),
        quantile(&gaps, 1.0),
    );
    if lost > 0 {
        eprintln!("ferry-bench-migrate: {lost} acknowledged writes lost");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
