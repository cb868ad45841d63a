//! Removing a run's namespaces and processes however the harness ends: the
//! [`Topology`](crate::topology::Topology) drop guard on return and on
//! unwinding, and here a registry of live runs that a signal thread
//! (Ctrl-C, SIGTERM, SIGHUP) and the panic hook clean up before the
//! process goes.

use crate::topology;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use std::sync::Mutex;

static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

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
    for id in ids {
        for e in topology::remove_run(&id) {
            eprintln!("ferry-chaos: cleanup of run {id}: {e}");
        }
        unregister(&id);
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
