//! `ferry checkpoint PID --image DIR`: ask the shim inside a running
//! program (started with `ferry exec`) for a checkpoint of its process.
//! The region is opened through `/proc/PID/fd/1000`; the checkpoint itself
//! is [`ferry_host::checkpoint::take`].

use std::path::PathBuf;

pub use ferry_host::checkpoint::Error;
use ferry_host::checkpoint::{alive, open_region, take, Request};
use ferry_ring::{Mode, Region};

use crate::exit::{report, BAD_INPUT, PROGRAM_FAILED, SUCCESS};

/// What `ferry checkpoint` was asked to do.
#[derive(Debug, clap::Args)]
pub struct CheckpointArgs {
    /// The process to checkpoint: started with `ferry exec`.
    #[arg(value_name = "PID")]
    pub pid: u32,
    /// The directory the image is written to (created if missing; must not
    /// hold an image already).
    #[arg(long, value_name = "DIR")]
    pub image: PathBuf,
    /// Make an incremental image: only the pages written since PARENT, the
    /// image of this process's last checkpoint (restoring it needs PARENT
    /// and the images before it).
    #[arg(long, value_name = "PARENT")]
    pub parent: Option<PathBuf>,
    /// Give up if the checkpoint has not finished after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub timeout: u64,
}

/// The exit code of a checkpoint that could not be taken (DESIGN §8).
pub fn code(e: &Error) -> u8 {
    if e.is_program_failure() {
        PROGRAM_FAILED
    } else {
        BAD_INPUT
    }
}

/// Run `ferry checkpoint`.
pub fn run(args: CheckpointArgs) -> u8 {
    match checkpoint(&args) {
        Ok(line) => {
            println!("{line}");
            SUCCESS
        }
        Err(e) => report(code(&e), &e),
    }
}

fn checkpoint(args: &CheckpointArgs) -> Result<String, Error> {
    let pid = args.pid;
    if !alive(pid) {
        return Err(Error::NoProcess(pid));
    }
    let mut map = open_region(pid)?;
    // SAFETY: the mapping is REGION_LEN bytes, page aligned, and outlives
    // `region` (both live until this function returns).
    let region = unsafe { Region::from_raw(map.as_mut_ptr()) };
    if !region.is_valid() {
        return Err(Error::Version { pid });
    }
    match region.mode() {
        Some(Mode::Passthrough) => {}
        Some(Mode::Record) => {
            return Err(Error::Mode {
                pid,
                mode: "record",
            })
        }
        Some(Mode::Replay) => {
            return Err(Error::Mode {
                pid,
                mode: "replay",
            })
        }
        None => return Err(Error::Version { pid }),
    }
    let meter = Meter::new();
    let tell = |done, total| {
        meter.tell(done, total);
        true
    };
    let request = Request {
        image: &args.image,
        parent: args.parent.as_deref(),
        parent_named: None,
        timeout: args.timeout,
        position: None,
        progress: meter.on.then_some(&tell as &dyn Fn(u64, u64) -> bool),
    };
    let result = take(&region, pid, &request);
    meter.end();
    result
}

/// A progress line on a terminal's stderr for an image that takes more
/// than a second to write, redrawn each second.
struct Meter {
    on: bool,
    started: std::time::Instant,
    shown: std::cell::Cell<Option<std::time::Instant>>,
}

impl Meter {
    fn new() -> Meter {
        use std::io::IsTerminal;
        Meter {
            on: std::io::stderr().is_terminal(),
            started: std::time::Instant::now(),
            shown: std::cell::Cell::new(None),
        }
    }

    fn tell(&self, done: u64, total: u64) {
        let second = std::time::Duration::from_secs(1);
        let due = match self.shown.get() {
            None => self.started.elapsed() >= second,
            Some(t) => t.elapsed() >= second,
        };
        if due {
            self.shown.set(Some(std::time::Instant::now()));
            let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
            eprint!(
                "\rferry: writing the image: {:.0} MiB of at most {:.0}, {:.0} s",
                mib(done),
                mib(total),
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    fn end(&self) {
        if self.shown.get().is_some() {
            eprintln!();
        }
    }
}
