//! `ferry-kv`: the key-value server (docs/KV.md).

use clap::Parser;
use ferry_kv::server::{Config, Server};
use ferry_kv::signals::{block_termination, wait_termination};
use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Barrier};

/// An in-memory key-value server with a line protocol (docs/KV.md).
#[derive(Parser, Debug)]
#[command(name = "ferry-kv", version)]
struct Args {
    /// Address to listen on; port 0 lets the system choose.
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR:PORT")]
    listen: String,
    /// Connections served at once; more are answered `ERR too many connections`.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_conns: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = block_termination() {
        eprintln!("ferry-kv: cannot block SIGTERM and SIGINT: {e}");
        return ExitCode::from(1);
    }
    let server = match Server::bind(
        &args.listen,
        Config {
            max_conns: args.max_conns as usize,
        },
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ferry-kv: {e}");
            return ExitCode::from(1);
        }
    };
    // The signal thread starts before any other, and `main` waits for it to
    // be running before it goes on: two threads that start at the same time
    // make the C allocator's choices depend on timing (see `server`).
    let running = Arc::new(Barrier::new(2));
    let theirs = Arc::clone(&running);
    let stopper = std::thread::Builder::new()
        .name("kv-signals".into())
        .spawn(move || {
            theirs.wait();
            match wait_termination() {
                // Ending the process closes the listener and every
                // connection; stdout was flushed after its only line.
                Ok(_) => std::process::exit(0),
                Err(e) => {
                    eprintln!("ferry-kv: waiting for SIGTERM: {e}");
                    std::process::exit(1)
                }
            }
        });
    if let Err(e) = stopper {
        eprintln!("ferry-kv: cannot start the signal thread: {e}");
        return ExitCode::from(1);
    }
    running.wait();
    let mut out = std::io::stdout().lock();
    if writeln!(out, "listening {}", server.local_addr())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::from(1);
    }
    drop(out);
    match server.run() {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("ferry-kv: {e}");
            ExitCode::from(1)
        }
    }
}
