//! `ferry replay`: run the program again under the shim and feed it its log.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferry_proto::log::{validate_with, LogError};
use ferry_proto::{Kind, RecordHeader, RECORD_HEADER_LEN};
use ferry_ring::{Mode, Region, CTL_CONSUMER_GONE, CTL_DIVERGED, CTL_END_OF_LOG, CTL_FAILED};
use zerocopy::FromBytes;

use crate::exit::{report, report_error, ExitCodeOf, BAD_INPUT, DIVERGED, SUCCESS};
use ferry_host::region::{self, PollFutex, SharedRegion, SysFutex};
use ferry_host::resolve::{env_value, resolve, ResolveError};
use ferry_host::spawn::{spawn, Launch, SpawnError};
use ferry_host::status::Termination;
use ferry_host::sys::{self, IgnoredSignals, Reaped, SysError};

/// What `ferry replay` was asked to do.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The log written by `ferry record`.
    #[arg(long, value_name = "FILE")]
    pub log: PathBuf,
    /// Print a one-line summary on stderr when the replay is done.
    #[arg(short, long)]
    pub verbose: bool,
    /// The program and its arguments, after `--`: exactly as they were
    /// recorded.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// Why `ferry replay` could not replay, or where it diverged before the
/// program started.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The log could not be read.
    #[error("cannot read the log {}: {source}", path.display())]
    ReadLog {
        /// The log file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The log is corrupt, truncated or of an unknown version.
    #[error("{}: {source}", path.display())]
    BadLog {
        /// The log file.
        path: PathBuf,
        /// What is wrong, and at which offset.
        source: LogError,
    },
    /// The command differs from the recorded one.
    #[error("replay diverged at record #0: the log recorded `{recorded}`, replay was asked to run `{asked}`")]
    ArgvMismatch {
        /// The recorded argv, shell-quoted.
        recorded: String,
        /// The argv given, shell-quoted.
        asked: String,
    },
    /// The recorded environment does not preload a shim.
    #[error("{}: the recorded environment has no LD_PRELOAD, so the shim cannot be loaded", path.display())]
    NoShim {
        /// The log file.
        path: PathBuf,
    },
    /// The shim the recording used is gone.
    #[error("the shim recorded in the log ({path}) is missing")]
    ShimMissing {
        /// The shim's path, as recorded.
        path: String,
    },
    /// The recorded command cannot be found any more.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The shared region could not be set up.
    #[error(transparent)]
    Region(#[from] region::RegionError),
    /// The program could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// A system call of ferry itself failed.
    #[error(transparent)]
    Sys(#[from] SysError),
}

impl ExitCodeOf for ReplayError {
    fn exit_code(&self) -> u8 {
        match self {
            ReplayError::ArgvMismatch { .. } => DIVERGED,
            _ => BAD_INPUT,
        }
    }
}

/// Run `ferry replay`; returns the exit code.
pub fn run(args: ReplayArgs) -> u8 {
    match replay(&args) {
        Ok(code) => code,
        Err(e) => report_error(&e),
    }
}

/// Quote one argument for display the way a shell would need it.
pub fn shell_quote(arg: &[u8]) -> String {
    let s = String::from_utf8_lossy(arg);
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// An argv for display, each argument quoted if it needs to be.
pub fn shell_words(argv: &[Vec<u8>]) -> String {
    argv.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Compare the recorded argv with the one given, byte for byte.
pub fn check_argv(recorded: &[Vec<u8>], asked: &[OsString]) -> Result<(), ReplayError> {
    let same = recorded.len() == asked.len()
        && recorded
            .iter()
            .zip(asked)
            .all(|(r, a)| r[..] == *a.as_bytes());
    if same {
        Ok(())
    } else {
        let asked: Vec<Vec<u8>> = asked.iter().map(|a| a.as_bytes().to_vec()).collect();
        Err(ReplayError::ArgvMismatch {
            recorded: shell_words(recorded),
            asked: shell_words(&asked),
        })
    }
}

fn replay(args: &ReplayArgs) -> Result<u8, ReplayError> {
    let path = &args.log;
    let bytes = map_log(path).map_err(|source| ReplayError::ReadLog {
        path: path.clone(),
        source,
    })?;
    let bytes: &[u8] = &bytes;
    let bad = |source| ReplayError::BadLog {
        path: path.clone(),
        source,
    };
    // One pass checks the whole log and keeps the records replay publishes:
    // every record after the start record, up to (not including) the end.
    let mut records: Vec<usize> = Vec::new();
    let summary = validate_with(bytes, |r| {
        if !matches!(
            Kind::from_u16(r.header.kind),
            Some(Kind::Start) | Some(Kind::End)
        ) {
            records.push(r.offset as usize);
        }
    })
    .map_err(bad)?;
    let start = &summary.start;
    if let Err(diverged) = check_argv(&start.argv, &args.command) {
        // A command that does not exist here is bad input, not a divergence.
        let here = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        resolve(&args.command[0], std::env::var_os("PATH").as_deref(), &here)?;
        return Err(diverged);
    }

    let preload = env_value(&start.env, b"LD_PRELOAD")
        .ok_or_else(|| ReplayError::NoShim { path: path.clone() })?;
    let shim_path = preload
        .split(|b| *b == b':' || *b == b' ')
        .find(|p| !p.is_empty())
        .unwrap_or_default();
    if shim_path.is_empty() || !Path::new(OsStr::from_bytes(shim_path)).is_file() {
        return Err(ReplayError::ShimMissing {
            path: String::from_utf8_lossy(shim_path).into_owned(),
        });
    }

    let cwd = Path::new(OsStr::from_bytes(&start.cwd));
    let shown_cwd = String::from_utf8_lossy(&start.cwd).into_owned();
    if let Err(source) = std::fs::read_dir(cwd) {
        return Err(SpawnError::Chdir {
            dir: shown_cwd,
            source,
        }
        .into());
    }
    let path_var = env_value(&start.env, b"PATH").map(OsStr::from_bytes);
    let exe = resolve(OsStr::from_bytes(&start.argv[0]), path_var, cwd)?;
    let launch = Launch::new(&exe, &start.argv, &start.env, Some(&start.cwd))?;
    let total = records.len() as u64;

    let shared = SharedRegion::create(Mode::Replay)?;
    let region = shared.region();
    sys::set_child_subreaper()?;
    let signals = IgnoredSignals::ignore_interrupts()?;
    let root = spawn(&launch, region, shared.fd(), &signals, &Default::default())?;

    let (root_status, published) = std::thread::scope(|s| {
        let producer = s.spawn(|| produce(region, bytes, &records));
        let reaped = reap_all(region, root);
        region.raise(CTL_CONSUMER_GONE, &SysFutex);
        let published = producer.join().unwrap_or(0);
        reaped.map(|status| (status, published))
    })?;

    if region.has(CTL_DIVERGED) {
        return Ok(report(
            DIVERGED,
            format!("replay diverged: {}", region::message(&region)),
        ));
    }
    if region.has(CTL_FAILED) {
        return Ok(report(BAD_INPUT, region::message(&region)));
    }
    let consumed = region.control().consumed.load(Ordering::Acquire);
    if consumed < total {
        return Ok(report(
            DIVERGED,
            format!("replay diverged: the program exited after record #{consumed} of {total}"),
        ));
    }
    if let (Some(logged), Some(status)) = (summary.end_status, root_status) {
        if logged != i64::from(status) {
            let (now, then) = (
                Termination::from_raw(status),
                Termination::from_raw(logged as i32),
            );
            return Ok(report(
                DIVERGED,
                format!("replay diverged at the end record: the program {now}, the log recorded that it {then}"),
            ));
        }
    }
    if args.verbose {
        let how = if summary.complete {
            "complete log"
        } else {
            "log without an end record"
        };
        let end = root_status
            .map(|s| Termination::from_raw(s).to_string())
            .unwrap_or_else(|| "ended".into());
        eprintln!(
            "ferry: replayed {consumed} of {total} records ({published} published) from {} ({how}); the program {end}",
            path.display()
        );
    }
    Ok(SUCCESS)
}

/// Map the log read-only (a log can be large: no copy, no allocation).
fn map_log(path: &Path) -> io::Result<memmap2::Mmap> {
    let file = std::fs::File::open(path)?;
    // SAFETY: the mapping is read-only and private to this process; a log
    // being rewritten underneath a replay is outside what replay supports,
    // and every length read from it is checked before use.
    unsafe { memmap2::Mmap::map(&file) }
}

/// Publish `records` (offsets of whole records in `bytes`) in order, then mark the end of the log. Stops early if
/// the consumers went away or replay stopped. Returns how many it published.
fn produce(region: Region, bytes: &[u8], records: &[usize]) -> u64 {
    let mut published = 0;
    for &at in records {
        if region.has(CTL_DIVERGED | CTL_FAILED | CTL_CONSUMER_GONE) {
            return published;
        }
        // Validated above: a whole record starts at every offset kept.
        let Ok((header, _)) = RecordHeader::read_from_prefix(&bytes[at..]) else {
            return published;
        };
        let payload = &bytes[at + RECORD_HEADER_LEN..at + header.len as usize];
        if !region.publish(&header, payload, &PollFutex) {
            return published;
        }
        published += 1;
    }
    region.raise(CTL_END_OF_LOG, &SysFutex);
    published
}

/// Reap the program's processes until none remains; on a divergence or a
/// failure, kill them all. Returns the root's raw wait status.
fn reap_all(region: Region, root: i32) -> Result<Option<i32>, SysError> {
    let mut root_status = None;
    loop {
        match sys::reap_nohang()? {
            Reaped::Child { pid, status } => {
                if pid == root {
                    root_status = Some(status);
                }
                continue;
            }
            Reaped::NoChildren => return Ok(root_status),
            Reaped::NoneReady => {}
        }
        if region.has(CTL_DIVERGED | CTL_FAILED) {
            region::kill_program(&region);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn bytes(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn same_argv_matches() {
        assert!(check_argv(&bytes(&["echo", "hi"]), &os(&["echo", "hi"])).is_ok());
    }

    #[test]
    fn different_argv_diverges_at_record_zero() {
        let e = check_argv(&bytes(&["a", "b", "c"]), &os(&["x", "y"])).unwrap_err();
        assert_eq!(e.exit_code(), DIVERGED);
        assert_eq!(
            e.to_string(),
            "replay diverged at record #0: the log recorded `a b c`, replay was asked to run `x y`"
        );
        assert!(check_argv(&bytes(&["echo", "hi"]), &os(&["echo"])).is_err());
        assert!(check_argv(&bytes(&["echo"]), &os(&["echo", ""])).is_err());
        assert!(check_argv(&bytes(&["echo", "hi "]), &os(&["echo", "hi"])).is_err());
    }

    #[test]
    fn argv_is_compared_as_bytes() {
        use std::os::unix::ffi::OsStringExt;
        let raw = vec![b"cat".to_vec(), vec![0xff, 0xfe]];
        let asked = vec![OsString::from("cat"), OsString::from_vec(vec![0xff, 0xfe])];
        assert!(check_argv(&raw, &asked).is_ok());
        let other = vec![OsString::from("cat"), OsString::from_vec(vec![0xff, 0xfd])];
        assert!(check_argv(&raw, &other).is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote(b"plain-arg_1.txt"), "plain-arg_1.txt");
        assert_eq!(shell_quote(b"two words"), "'two words'");
        assert_eq!(shell_quote(b""), "''");
        assert_eq!(shell_quote(b"it's"), r"'it'\''s'");
        assert_eq!(
            shell_words(&bytes(&["bash", "-c", "echo $RANDOM"])),
            "bash -c 'echo $RANDOM'"
        );
    }
}
