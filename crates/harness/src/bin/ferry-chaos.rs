//! `ferry-chaos`: Ferry's fault-injection harness (docs/HARNESS.md).

use clap::{Parser, Subcommand};
use ferry_harness::{guard, topology};
use std::process::ExitCode;

/// Build hosts on this machine, run Ferry on them, inject faults, check that
/// nothing acknowledged was lost.
#[derive(Debug, Parser)]
#[command(name = "ferry-chaos", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Remove what runs left behind: processes in their namespaces, the
    /// namespaces (with their veths and bridges), their directories.
    Cleanup {
        /// Only what starts with this (`ferry-chaos-<id>-` for one run).
        #[arg(long, default_value = topology::PREFIX)]
        prefix: String,
    },
}

fn main() -> ExitCode {
    if let Err(e) = guard::install() {
        eprintln!("ferry-chaos: cannot take the termination signals: {e}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    match cli.command {
        Cmd::Cleanup { prefix } => cleanup(&prefix),
    }
}

fn cleanup(prefix: &str) -> ExitCode {
    if !prefix.starts_with(topology::PREFIX) {
        eprintln!(
            "ferry-chaos: the prefix must start with {}: nothing else is the harness's",
            topology::PREFIX
        );
        return ExitCode::from(2);
    }
    let (removed, errors) = topology::remove_leftovers(prefix);
    for ns in &removed {
        println!("removed namespace {ns}");
    }
    for e in &errors {
        eprintln!("ferry-chaos: {e}");
    }
    if removed.is_empty() && errors.is_empty() {
        println!("nothing left behind");
    }
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
