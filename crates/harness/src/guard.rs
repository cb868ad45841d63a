//! Removing a run's namespaces and processes however the harness ends: the
//! [`Topology`](crate::topology::Topology) drop guard on return and on
//! unwinding, and here a registry of live runs that a signal thread
//! (Ctrl-C, SIGTERM, SIGHUP) and the panic hook clean up before the
//! process goes.

use crate::topology;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// A termination signal came: the signal thread is cleaning up and will
/// end the process.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether a termination signal came.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The exit code of `main`: `code`, unless a termination signal came, in
/// which case the signal thread ends the process with 130 once it has
/// cleaned up (and `main` must not end it first); after 60 s, 130 anyway.
pub fn exit_code(code: ExitCode) -> ExitCode {
    if !interrupted() {
        return code;
    }
    std::thread::sleep(Duration::from_secs(60));
    ExitCode::from(130)
}

/// Remember that run `id` has things to remove.
pub fn register(id: &str) {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    if !live.iter().any(|x| x == id) {
        live.push(id.to_owned());
    }
}

/// Run `id` has been removed.
pub fn unregister(id: &str) {
    LIVE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|x| x != id);
}

/// Remove every registered run now.
pub fn remove_all_live() {
    let ids: Vec<String> = LIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for id in &ids {
        for e in topology::remove_run(id) {
            eprintln!("ferry-chaos: cleanup of run {id}: {e}");
        }
    }
    // The run's own thread keeps going meanwhile, and may have made a
    // directory or started a process again before its next step failed:
    // a second pass, once that is over.
    std::thread::sleep(Duration::from_millis(300));
    for id in &ids {
        for e in topology::remove_run(id) {
            eprintln!("ferry-chaos: cleanup of run {id}: {e}");
        }
        unregister(id);
    }
}

/// Take SIGINT, SIGTERM and SIGHUP in a thread of their own that removes
/// every live run and exits with status 130. Call it first in `main`, before
/// any other thread starts, so that every thread inherits the blocked mask.
/// Also makes a panic clean up before the process aborts.
pub fn install() -> nix::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                INTERRUPTED.store(true, Ordering::SeqCst);
                eprintln!(
                    "ferry-chaos: {sig:?}: removing the namespaces and processes of this run"
                );
                remove_all_live();
                std::process::exit(130);
            }
        })
        .map_err(|_| nix::Error::EAGAIN)?;
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        remove_all_live();
    }));
    Ok(())
}
