//! `ferry-kv-load`: load a ferry-kv server and print throughput and latency.

use clap::Parser;
use ferry_kv::load::{run, LoadConfig};
use std::process::ExitCode;
use std::time::Duration;

/// Send SET requests to a ferry-kv server from several connections for a
/// while; print ops/s and latency p50/p99/max.
#[derive(Parser, Debug)]
#[command(name = "ferry-kv-load", version)]
struct Args {
    /// The server.
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "HOST:PORT")]
    addr: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    conns: u32,
    /// How long to run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Requests sent together on a connection before reading their answers.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pipeline: u32,
    /// Size of each value.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    value_bytes: u32,
    /// Keys per connection (written in turn, so the server's size stays bounded).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// Timeout of each connect, read and write, in seconds.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    json: bool,
}

fn seconds(what: &str, s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("--{what} must be a positive number of seconds, not {s}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (duration, timeout) = match (
        seconds("seconds", args.seconds),
        seconds("timeout", args.timeout),
    ) {
        (Ok(d), Ok(t)) => (d, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("ferry-kv-load: {e}");
            return ExitCode::from(2);
        }
    };
    let report = run(LoadConfig {
        addr: args.addr,
        conns: args.conns as usize,
        duration,
        pipeline: args.pipeline as usize,
        value_bytes: args.value_bytes as usize,
        keys_per_conn: args.keys,
        timeout,
    });
    if args.json {
        println!("{}", report.json());
    } else {
        println!("ferry-kv-load: {}", report.text());
    }
    if report.ops == 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
