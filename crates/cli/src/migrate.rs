//! `ferry migrate APP --to NODE [--rollback | --commit]`: move a running
//! application to another node, reversibly.
//!
//! The request goes to the local `ferryd`, which must be the primary. The
//! target catches up while the program keeps serving (a node that is not a
//! member yet is added and gets the latest checkpoint image and the log
//! after it; a backup already has a live replica), and once its log and its
//! replica are a few records behind, the primary pauses the program, lets
//! the target take the last records and hands the role over. This command
//! follows the catch-up, then prints the downtime. The old primary keeps
//! replaying as a backup: `--rollback` (on the new primary) moves the
//! application back at once, `--commit` makes the move final (and, when the
//! target was added for the migration, takes the old primary out).

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_proto::control::{AppStatus, Command, MigrateStep, Outcome};

use crate::client::{exchange, print_outcome};
use crate::exit::{report, BAD_INPUT, PROGRAM_FAILED, SUCCESS};

/// `ferry migrate`.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The application.
    pub app: String,
    /// The node to move it to.
    #[arg(long, value_name = "NODE")]
    pub to: String,
    /// Undo: cancel a migration still catching up (on the old primary), or
    /// move the application back (on the new primary).
    #[arg(long, conflicts_with = "commit")]
    pub rollback: bool,
    /// Make a completed migration final (on the new primary).
    #[arg(long)]
    pub commit: bool,
    /// Give up following the catch-up after this many seconds (the
    /// migration goes on; `ferry status` shows it).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub timeout: u64,
}

/// How often the progress is polled, and printed at most.
const POLL: Duration = Duration::from_millis(100);
const PRINT_EVERY: Duration = Duration::from_secs(1);

/// Run `ferry migrate`.
pub fn run(control: &Path, args: MigrateArgs) -> u8 {
    let step = if args.rollback {
        MigrateStep::Rollback
    } else if args.commit {
        MigrateStep::Commit
    } else {
        MigrateStep::Start
    };
    // Where the application stands before the step, to know what the
    // step will end in.
    let before = match app_status(control, &args.app) {
        Ok(Some(s)) => s,
        Ok(None) => {
            return report(BAD_INPUT, format!("{}: not known on this node", args.app));
        }
        Err(code) => return code,
    };
    let command = Command::Migrate {
        app: args.app.clone(),
        to: args.to.clone(),
        step,
    };
    match exchange(control, command) {
        Err(e) => return report(PROGRAM_FAILED, e),
        Ok(Outcome::Done { message }) => println!("{message}"),
        Ok(other) => return print_outcome(other, false),
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    match step {
        MigrateStep::Commit => SUCCESS,
        MigrateStep::Start => follow_move(control, &args, deadline),
        MigrateStep::Rollback => {
            let source = before.migration.as_ref().map(|m| m.from.clone());
            match source {
                // On the old primary, before the move: cancelled at once.
                Some(from) if before.primary.as_deref() == Some(from.as_str()) => {
                    println!("{}: migration to {} cancelled", args.app, args.to);
                    SUCCESS
                }
                Some(from) => follow_back(control, &args, &from, deadline),
                None => SUCCESS,
            }
        }
    }
}

/// The local node's status of `app`; `Ok(None)` when it does not know it.
fn app_status(control: &Path, app: &str) -> Result<Option<AppStatus>, u8> {
    let command = Command::Status {
        app: Some(app.to_owned()),
    };
    match exchange(control, command) {
        Ok(Outcome::Status(s)) => Ok(s.apps.into_iter().find(|a| a.app == app)),
        Ok(other) => Err(print_outcome(other, false)),
        Err(e) => Err(report(PROGRAM_FAILED, e)),
    }
}

fn downtime_ms(s: &AppStatus, to: &str) -> Option<f64> {
    let w = s.switch.as_ref().filter(|w| w.to == to)?;
    Some(w.downtime_us? as f64 / 1000.0)
}

/// Follow a migration from the old primary until the target serves.
fn follow_move(control: &Path, args: &MigrateArgs, deadline: Instant) -> u8 {
    let (app, to) = (args.app.as_str(), args.to.as_str());
    let started = Instant::now();
    let mut printed: Option<(Instant, String)> = None;
    loop {
        let s = match app_status(control, app) {
            Ok(Some(s)) => s,
            Ok(None) => return report(PROGRAM_FAILED, format!("{app} was stopped")),
            Err(code) => return code,
        };
        if s.role == "primary" {
            if s.migration.is_none() {
                return report(
                    PROGRAM_FAILED,
                    format!("{app}: the migration to {to} was cancelled"),
                );
            }
            let line = match s.backups.iter().find(|b| b.node == to) {
                None => format!("{to}: joining"),
                Some(b) if !b.healthy => format!("{to}: fetching the image and the log"),
                Some(b) => format!(
                    "{to}: log at {} of {} records, replica at {}",
                    b.acked,
                    s.logged,
                    b.replayed.map_or("-".to_owned(), |r| r.to_string())
                ),
            };
            let due = printed
                .as_ref()
                .is_none_or(|(at, last)| *last != line && at.elapsed() >= PRINT_EVERY);
            if due {
                println!("[{:>5.1} s] {line}", started.elapsed().as_secs_f64());
                printed = Some((Instant::now(), line));
            }
        } else if s.primary.as_deref() == Some(to) {
            if let Some(ms) = downtime_ms(&s, to) {
                println!(
                    "{app} moved to {to} (epoch {}) in {:.1} s; downtime {ms:.1} ms",
                    s.epoch,
                    started.elapsed().as_secs_f64()
                );
                println!(
                    "this node keeps replaying: `ferry migrate {app} --to {to} --commit` on {to} makes the move final, `--rollback` moves it back"
                );
                return SUCCESS;
            }
        } else if let Some(p) = s.primary.as_deref() {
            if s.role != "candidate" {
                return report(
                    PROGRAM_FAILED,
                    format!("{app}: {p} took over instead of {to} (a failover?)"),
                );
            }
        }
        if Instant::now() >= deadline {
            return report(
                PROGRAM_FAILED,
                format!(
                    "{app}: {to} has not taken over after {} s; the migration goes on (`ferry status {app}`), `ferry migrate {app} --to {to} --rollback` cancels it",
                    args.timeout
                ),
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Follow a rollback from the new primary until the old one serves again.
fn follow_back(control: &Path, args: &MigrateArgs, from: &str, deadline: Instant) -> u8 {
    let app = args.app.as_str();
    loop {
        let s = match app_status(control, app) {
            Ok(Some(s)) => s,
            // Added for the migration: taken out again.
            Ok(None) => {
                println!("{app} moved back to {from}; this node is no longer a member");
                return SUCCESS;
            }
            Err(code) => return code,
        };
        if s.role != "primary" && s.primary.as_deref() == Some(from) {
            if let Some(ms) = downtime_ms(&s, from) {
                println!(
                    "{app} moved back to {from} (epoch {}); downtime {ms:.1} ms",
                    s.epoch
                );
                return SUCCESS;
            }
        }
        if Instant::now() >= deadline {
            return report(
                PROGRAM_FAILED,
                format!(
                    "{app}: {from} has not taken back over after {} s",
                    args.timeout
                ),
            );
        }
        std::thread::sleep(POLL);
    }
}
