//! `ferry-chaos`: Ferry's fault-injection harness (docs/HARNESS.md).

use clap::{Args, Parser, Subcommand};
use ferry_harness::cluster::{Binaries, ClusterConfig};
use ferry_harness::scenario::{self, Progress, Scenario, Settings};
use ferry_harness::{guard, topology};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Build hosts on this machine (network namespaces on a bridge), run ferryd
/// on three of them and ferry-kv protected by Ferry, inject faults while a
/// client writes, and check that no acknowledged write was lost, that two
/// primaries never served in one epoch and that the replicas agree.
#[derive(Debug, Parser)]
#[command(
    name = "ferry-chaos",
    version,
    args_conflicts_with_subcommands = true,
    after_help = concat!(
        "Programs: ferry, ferryd and ferry-kv next to this executable, or $FERRY_BIN, ",
        "$FERRYD_BIN, $FERRY_KV_BIN.\n\n",
        "Exit codes:\n",
        "  0  every run passed every check\n",
        "  1  a violation, or a check that could not be made\n",
        "  2  bad usage, or the harness cannot run here (root, ip, nft, a program missing)\n",
        "  130  interrupted: everything of the run was removed first"
    )
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// A scenario (see `ferry-chaos list`), or `all`.
    #[arg(long, default_value = "all", value_name = "NAME|all")]
    scenario: String,
    /// Runs of each scenario (default 3, with --short 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    runs: Option<u32>,
    /// Write the report as JSON to FILE too.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Leave namespaces, processes and files of every run in place.
    #[arg(long)]
    keep: bool,
    /// Short phases and few writers: what CI runs.
    #[arg(long)]
    short: bool,
    /// Replication mode given to `ferry run`.
    #[arg(long, default_value = "sync", value_parser = ["sync", "async"])]
    mode: String,
    /// A ferryd configuration file given to every ferryd (`--config`).
    #[arg(long, value_name = "FILE")]
    ferryd_config: Option<PathBuf>,
    /// The longest a takeover may take, in seconds.
    #[arg(long, value_name = "SECONDS")]
    takeover_timeout: Option<u64>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Remove what runs left behind: processes in their namespaces, the
    /// namespaces (with their veths and bridges), their directories. Runs
    /// whose ferry-chaos still runs are left alone.
    Cleanup {
        /// Only what starts with this (`ferry-chaos-<id>-` for one run).
        #[arg(long, default_value = topology::PREFIX)]
        prefix: String,
        /// Also remove runs whose ferry-chaos still runs.
        #[arg(long)]
        force: bool,
    },
    /// List the scenarios.
    List,
}

fn main() -> ExitCode {
    // A reader that goes away (`ferry-chaos list | head`) ends the listing
    // quietly, as for any command-line tool, instead of a failed print.
    // SAFETY: setting a disposition before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    if let Err(e) = guard::install() {
        eprintln!("ferry-chaos: cannot take the termination signals: {e}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    let code = match cli.command {
        Some(Cmd::Cleanup { prefix, force }) => cleanup(&prefix, force),
        Some(Cmd::List) => {
            for s in Scenario::ALL {
                println!("{:<18} {}", s.name(), s.description());
            }
            ExitCode::SUCCESS
        }
        None => run(cli.run),
    };
    guard::exit_code(code)
}

fn run(args: RunArgs) -> ExitCode {
    let scenarios: Vec<Scenario> = if args.scenario == "all" {
        Scenario::ALL.to_vec()
    } else {
        match Scenario::parse(&args.scenario) {
            Some(s) => vec![s],
            None => {
                let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                eprintln!(
                    "ferry-chaos: no scenario {:?}; the scenarios are {} (or all)",
                    args.scenario,
                    names.join(", ")
                );
                return ExitCode::from(2);
            }
        }
    };
    if let Err(e) = topology::require(true) {
        eprintln!("ferry-chaos: {e}");
        return ExitCode::from(2);
    }
    let binaries = Binaries::locate();
    if let Err(e) = binaries.check_all() {
        eprintln!("ferry-chaos: {e}");
        return ExitCode::from(2);
    }
    let cluster = ClusterConfig {
        mode: args.mode,
        ferryd_config: args.ferryd_config,
        keep: args.keep,
        binaries,
        ..ClusterConfig::default()
    };
    let mut settings = if args.short {
        Settings::short(cluster)
    } else {
        Settings::full(cluster)
    };
    if let Some(s) = args.takeover_timeout {
        settings.takeover_timeout = Duration::from_secs(s);
    }
    let runs = args.runs.unwrap_or(if args.short { 1 } else { 3 });
    let report = scenario::run_all(&scenarios, runs, &settings, |p| {
        if guard::interrupted() {
            return;
        }
        let r = match p {
            Progress::Started { scenario, run, id } => {
                eprintln!(
                    "ferry-chaos: {} run {run}/{runs} (namespaces {}{id}-*): {}",
                    scenario.name(),
                    topology::PREFIX,
                    scenario.description()
                );
                return;
            }
            Progress::Finished(r) => r,
        };
        let verdict = if r.passed() { "passed" } else { "FAILED" };
        let failover = r.failover_ms.map_or(String::new(), |ms| {
            format!(", first answer {ms:.0} ms after the fault")
        });
        eprintln!(
            "ferry-chaos: {} run {}: {verdict}: {} writes acknowledged, {} lost{failover}",
            r.scenario, r.run, r.acknowledged, r.lost
        );
        for n in &r.notes {
            eprintln!("    {n}");
        }
        for e in &r.split_brain {
            eprintln!("    split-brain: {e}");
        }
        for v in &r.violations {
            eprintln!("    violation: {v}");
        }
        for u in &r.unchecked {
            eprintln!("    not checked: {u}");
        }
    });
    if guard::interrupted() {
        return ExitCode::from(130);
    }
    print!("{}", report.table());
    if let Some(path) = &args.json {
        if let Err(e) = std::fs::write(path, report.to_json() + "\n") {
            eprintln!("ferry-chaos: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn cleanup(prefix: &str, force: bool) -> ExitCode {
    if !prefix.starts_with(topology::PREFIX) {
        eprintln!(
            "ferry-chaos: the prefix must start with {}: nothing else is the harness's",
            topology::PREFIX
        );
        return ExitCode::from(2);
    }
    let done = topology::remove_leftovers(prefix, force);
    for ns in &done.removed {
        println!("removed namespace {ns}");
    }
    for (id, pid) in &done.in_use {
        println!("left run {id} alone: its ferry-chaos (pid {pid}) still runs; --force removes it anyway");
    }
    for e in &done.errors {
        eprintln!("ferry-chaos: {e}");
    }
    if done.removed.is_empty() && done.in_use.is_empty() && done.errors.is_empty() {
        println!("nothing left behind");
    }
    let errors = done.errors;
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
