//! `ferryd`: Ferry's daemon. One runs on every host. It keeps the protected
//! programs of this host (primaries), the logs and live replicas of the
//! programs of other hosts (backups), and takes a program over when its
//! host fails; see DESIGN §5 and `docs/OPERATIONS.md`.
//!
//! - [`config`]: flags and the TOML file.
//! - [`peer`]: QUIC connections to the other nodes.
//! - [`core`]: the replication state machine and what it asks for.
//! - [`app`]: each application's log, program or replica, and log writer.
//! - [`images`]: the checkpoint images of a backup's replicas; [`ship`]:
//!   sending one to a backup that joins late.
//! - [`control`]: the unix socket `ferry` talks to.
//! - [`persist`], [`vip`], [`garp`]: protocol state on disk; the service
//!   address and its gratuitous ARP.

mod app;
mod config;
mod control;
mod core;
mod garp;
mod images;
mod peer;
mod persist;
mod ship;
mod vip;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracing::{error, info};

use crate::config::{Args, Settings};

fn init_logging() {
    // SAFETY: isatty only inspects the descriptor.
    let tty = unsafe { libc::isatty(2) } == 1;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn,rustls=warn"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(tty)
        .with_target(false)
        .with_env_filter(filter);
    // The journal stamps every line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

/// systemd's watchdog interval for this process, as sd_watchdog_enabled(3)
/// reads it: `WATCHDOG_USEC`, unless `WATCHDOG_PID` names another process.
fn watchdog_usec() -> Option<u64> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then_some(usec)
}

/// One line on stderr and exit code 2.
fn usage_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("ferryd: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("bad usage")
                .trim_start_matches("error: ");
            return usage_error(format!("{first} (see ferryd --help)"));
        }
    };
    let settings = match Settings::from_args(args) {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    init_logging();
    let identity = match ferry_tls::NodeIdentity::load(&settings.certs, &settings.node) {
        Ok(i) => i,
        Err(e) => return usage_error(e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferryd: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(settings, identity)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("ferryd: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(settings: Settings, identity: ferry_tls::NodeIdentity) -> anyhow::Result<()> {
    ferry_host::sys::set_child_subreaper()?;
    std::fs::create_dir_all(&settings.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the data directory {}: {e}",
            settings.data_dir.display()
        )
    })?;
    let endpoint = peer::endpoint(&identity, settings.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen))?;
    let (peer_tx, peer_rx) = tokio::sync::mpsc::unbounded_channel();
    let transport = peer::Transport::new(
        &settings.node,
        settings.witness,
        endpoint.clone(),
        settings.peers.clone(),
        peer_tx,
    );
    let listener = control::bind(&settings.control)?;
    let (handle, ctl_rx) = core::control_channel();
    let (mut core, app_rx) = core::Core::restore(settings.clone(), transport.clone())?;
    transport.start();
    tokio::spawn(control::serve(listener, handle));
    info!(
        node = %settings.node,
        listen = %endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        control = %settings.control.display(),
        witness = settings.witness,
        peers = settings.peers.len(),
        "ferryd ready"
    );
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    if let Some(usec) = watchdog_usec() {
        core.set_watchdog(Duration::from_micros(usec / 2));
    }
    let shutdown = async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        info!("signal received");
    };
    core.run(core::CoreInputs { peer_rx, ctl_rx }, app_rx, shutdown)
        .await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    endpoint.close(0u32.into(), b"shutting down");
    let _ = std::fs::remove_file(&settings.control);
    Ok(())
}
