//! `ferry replay`: run the program again under the shim and feed it its log.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferry_image::dir::Image;
use ferry_image::manifest::ReplayPosition;
use ferry_proto::log::{validate_with, LogError};
use ferry_proto::{Kind, RecordHeader, RECORD_HEADER_LEN};
use ferry_ring::{
    Mode, Region, CTL_CONSUMER_GONE, CTL_DIVERGED, CTL_END_OF_LOG, CTL_FAILED, REGION_LEN,
};
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
    /// Once record N has been replayed, checkpoint the program (it must be
    /// a single process) into the image directory `--image`, then go on.
    /// The image goes on later with `--from-image`.
    #[arg(long, value_name = "N", requires = "image")]
    pub checkpoint_at: Option<u64>,
    /// Where `--checkpoint-at` writes its image (a new directory).
    #[arg(long, value_name = "DIR", requires = "checkpoint_at")]
    pub image: Option<PathBuf>,
    /// Start from an image `--checkpoint-at` made of a replay of this same
    /// log, instead of from the beginning: restore it and replay the
    /// records after it.
    #[arg(long, value_name = "DIR")]
    pub from_image: Option<PathBuf>,
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
    /// `--from-image` names no usable image.
    #[error("--from-image: {0}")]
    Image(String),
    /// `--checkpoint-at` is beyond the log, or before the image it starts from.
    #[error("--checkpoint-at {at}: {why}")]
    CheckpointAt {
        /// The record asked for.
        at: u64,
        /// Why it cannot be.
        why: String,
    },
    /// The checkpoint `--checkpoint-at` asked for failed (the replay went
    /// on to its end).
    #[error("--checkpoint-at: {0}")]
    Checkpoint(#[from] crate::checkpoint::Error),
    /// The restore of `--from-image` failed before the program ran.
    #[error("--from-image {}: the restore failed (exit status {status})", dir.display())]
    Restore {
        /// The image.
        dir: PathBuf,
        /// The restore's exit status.
        status: i32,
    },
}

impl ExitCodeOf for ReplayError {
    fn exit_code(&self) -> u8 {
        match self {
            ReplayError::ArgvMismatch { .. } => DIVERGED,
            ReplayError::Checkpoint(e) => crate::checkpoint::code(e),
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
    let log = Log {
        bytes,
        records: &records,
    };
    let from = match &args.from_image {
        Some(dir) => Some(image_position(dir, &log)?),
        None => None,
    };
    let first = from.map_or(0, |p| p.records);
    if let Some(at) = args.checkpoint_at {
        if at > total {
            return Err(ReplayError::CheckpointAt {
                at,
                why: format!("the log has {total} records"),
            });
        }
        if at <= first && from.is_some() {
            return Err(ReplayError::CheckpointAt {
                at,
                why: format!("the image starts after record #{first}"),
            });
        }
    }

    sys::set_child_subreaper()?;
    let signals = IgnoredSignals::ignore_interrupts()?;
    // The program: started afresh, or restored from the image (then its
    // region, saved in the image, comes from the restore).
    let shared;
    let restored;
    let (region, root) = match &args.from_image {
        None => {
            shared = SharedRegion::create(Mode::Replay)?;
            let region = shared.region();
            let root = spawn(&launch, region, shared.fd(), &signals, &Default::default())?;
            (region, root)
        }
        Some(dir) => {
            let (map, root) = restore_replay(dir)?;
            restored = map;
            // SAFETY: the mapping is the program's region, REGION_LEN bytes
            // (checked by the restore before it sent it), and `restored`
            // lives until this function returns, longer than every use of
            // `region`.
            let region = unsafe { Region::from_raw(restored.as_ptr() as *mut u8) };
            (region, root)
        }
    };
    let pause = match (args.checkpoint_at, &args.image) {
        (Some(at), Some(image)) => Some(Pause {
            at,
            image: image.clone(),
            pid: root as u32,
        }),
        _ => None,
    };

    let (root_status, (published, checkpoint)) = std::thread::scope(|s| {
        let producer = s.spawn(|| produce(region, &log, first, pause.as_ref()));
        let reaped = reap_all(region, root);
        region.raise(CTL_CONSUMER_GONE, &SysFutex);
        let produced = producer.join().unwrap_or((0, None));
        reaped.map(|status| (status, produced))
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
    if let Some(Err(e)) = checkpoint {
        return Err(e.into());
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

/// The log being replayed: its bytes, and the offsets of the records
/// replay publishes (every record after the start record, before the end).
struct Log<'a> {
    bytes: &'a [u8],
    records: &'a [usize],
}

impl Log<'_> {
    /// Record `i` (from 0) whole: header and payload, as in the file.
    fn record(&self, i: usize) -> Option<(RecordHeader, &[u8])> {
        let at = self.records[i];
        let (header, _) = RecordHeader::read_from_prefix(&self.bytes[at..]).ok()?;
        Some((header, &self.bytes[at..at + header.len as usize]))
    }

    /// Where a replay is once it has replayed the first `n` records.
    fn position(&self, n: u64) -> ReplayPosition {
        let mut crc = 0;
        let mut gseq = 0;
        for i in 0..n as usize {
            if let Some((h, whole)) = self.record(i) {
                crc = crc32c::crc32c_append(crc, whole);
                gseq = h.gseq;
            }
        }
        ReplayPosition {
            records: n,
            prefix_crc: crc,
            gseq,
            ..ReplayPosition::default()
        }
    }
}

/// Where `--from-image` starts, checked against the log.
fn image_position(dir: &Path, log: &Log) -> Result<ReplayPosition, ReplayError> {
    let image = Image::open(dir).map_err(|e| ReplayError::Image(e.to_string()))?;
    let Some(at) = image.replay_position() else {
        return Err(ReplayError::Image(format!(
            "{}: the image is not of a replay (restore it with `ferry restore --image {}`)",
            dir.display(),
            dir.display()
        )));
    };
    let total = log.records.len() as u64;
    if at.records > total {
        return Err(ReplayError::Image(format!(
            "{}: the image was taken after record #{}, but the log has {total} records",
            dir.display(),
            at.records
        )));
    }
    let here = log.position(at.records);
    if here.prefix_crc != at.prefix_crc || here.gseq != at.gseq {
        return Err(ReplayError::Image(format!(
            "{}: the image is of a replay of another log (its first {} records differ from this log's)",
            dir.display(),
            at.records
        )));
    }
    Ok(at)
}

/// Restore the image of a replay in a child process, which becomes the
/// program; returns its region (sent by the restore once it is ready to
/// be fed) and its pid.
fn restore_replay(dir: &Path) -> Result<(memmap2::MmapMut, i32), ReplayError> {
    use std::os::fd::OwnedFd;
    let (ours, theirs) =
        std::os::unix::net::UnixStream::pair().map_err(|e| SysError::from_io("socketpair", e))?;
    let me = std::process::id();
    // SAFETY: this process has one thread here (the producer starts after),
    // so the child may run ordinary code; it ends in the restore or _exit.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(SysError::from_io("fork", io::Error::last_os_error()).into());
    }
    if child == 0 {
        drop(ours);
        let theirs = OwnedFd::from(theirs);
        let why = crate::restore::into_replay(
            dir,
            crate::restore::Feeder {
                pid: me,
                socket: &theirs,
            },
        );
        eprintln!("ferry: {why}");
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(BAD_INPUT as i32) };
    }
    drop(theirs);
    let restore_failed = |status: i32| ReplayError::Restore {
        dir: dir.to_path_buf(),
        status: if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        },
    };
    let fd = loop {
        match ferry_host::sys::receive_fd(&ours, 100) {
            Ok(Some(fd)) => break fd,
            Ok(None) => {}
            Err(source) => {
                // The restore ended before it sent anything: it said why.
                let status = wait_for(child);
                return Err(match status {
                    Some(status) => restore_failed(status),
                    None => SysError::from_io("recvmsg", source).into(),
                });
            }
        }
    };
    let file = std::fs::File::from(fd);
    // SAFETY: the memfd is the program's region (its size checked by the
    // restore), accessed only through Region's atomics.
    let map = unsafe { memmap2::MmapOptions::new().len(REGION_LEN).map_mut(&file) }
        .map_err(|source| SysError::from_io("mmap of the restored region", source))?;
    Ok((map, child))
}

/// Wait for `pid` to end; its raw status.
fn wait_for(pid: i32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: status is a valid out pointer for the call's duration.
    (unsafe { libc::waitpid(pid, &mut status, 0) } == pid).then_some(status)
}

/// `--checkpoint-at`: where to pause, where the image goes, of which process.
struct Pause {
    at: u64,
    image: PathBuf,
    pid: u32,
}

/// Publish the log's records after the first `first` in order, then mark
/// the end of the log. Stops early if the consumers went away or replay
/// stopped. With `pause`, stops feeding once record `pause.at` is
/// published, waits until the program has replayed it, checkpoints it and
/// goes on. Returns how many it published, and the checkpoint's outcome.
fn produce(
    region: Region,
    log: &Log,
    first: u64,
    pause: Option<&Pause>,
) -> (u64, Option<Result<(), crate::checkpoint::Error>>) {
    let mut published = 0;
    let mut checkpoint = None;
    let stopped = || region.has(CTL_DIVERGED | CTL_FAILED | CTL_CONSUMER_GONE);
    for i in first as usize..log.records.len() {
        if let Some(p) = pause.filter(|p| p.at == i as u64) {
            checkpoint = Some(pause_and_checkpoint(region, log, p));
        }
        if stopped() {
            return (published, checkpoint);
        }
        // Validated above: a whole record starts at every offset kept.
        let Some((header, whole)) = log.record(i) else {
            return (published, checkpoint);
        };
        if !region.publish(&header, &whole[RECORD_HEADER_LEN..], &PollFutex) {
            return (published, checkpoint);
        }
        published += 1;
    }
    if let Some(p) = pause.filter(|p| p.at == log.records.len() as u64) {
        checkpoint = Some(pause_and_checkpoint(region, log, p));
    }
    region.raise(CTL_END_OF_LOG, &SysFutex);
    (published, checkpoint)
}

/// Wait until the program has replayed every record published (the first
/// `p.at`), then checkpoint it there.
fn pause_and_checkpoint(
    region: Region,
    log: &Log,
    p: &Pause,
) -> Result<(), crate::checkpoint::Error> {
    let c = region.control();
    while c.consumed.load(Ordering::Acquire) < p.at {
        if region.has(CTL_DIVERGED | CTL_FAILED | CTL_CONSUMER_GONE) {
            return Err(crate::checkpoint::Error::Died {
                pid: p.pid,
                dir: p.image.clone(),
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Every process of the program stands still here: the image holds
    // them all.
    let live: Vec<u32> = (0..ferry_ring::MAX_PROCS)
        .map(|s| region.proc(s))
        .filter(|p| p.state.load(Ordering::Acquire) == ferry_ring::PROC_LIVE)
        .map(|p| p.real_pid.load(Ordering::Acquire))
        .collect();
    let request = ferry_host::checkpoint::Request {
        image: &p.image,
        parent: None,
        parent_named: None,
        timeout: 600,
        position: Some(log.position(p.at)),
        progress: None,
    };
    let line = ferry_host::checkpoint::take_all(&region, &live, &request)?;
    eprintln!("ferry: after record #{}: {line}", p.at);
    Ok(())
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
