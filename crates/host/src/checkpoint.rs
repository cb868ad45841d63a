//! Checkpoints of a running program under the shim: ask the shim inside
//! the process for its image, and make the image whole. `ferry checkpoint`
//! (a program under `ferry exec`), `ferry replay --checkpoint-at` and
//! `ferryd` (its replicas, paused at a record boundary) all take them here.
//!
//! The request goes through the program's shared region: its checkpoint
//! block takes the image directory, and the checkpoint signal starts it.
//! The shim writes `DIR/<vpid>.fimg.tmp` from inside the process and says
//! when it is done; [`take`] then checks the file whole, renames it and
//! writes the manifest last (`CheckpointWriter`), so an interrupted
//! checkpoint leaves no image that looks whole. The program keeps running.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_image::dir::{CheckpointError, CheckpointWriter, Image};
use ferry_image::manifest::ReplayPosition;
use ferry_ring::{Futex, Region, CKPT_OK, CKPT_PATH_LEN, CKPT_SIGNAL, REGION_FD, REGION_LEN};
use memmap2::MmapMut;

/// Why a checkpoint could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such process.
    #[error("no process {0}")]
    NoProcess(u32),
    #[error("process {pid} is not running under the shim (it has no region at descriptor {REGION_FD}): start it with `ferry exec -- CMD`")]
    NotUnderShim { pid: u32 },
    #[error("process {pid}: cannot open its region: {source}")]
    Open { pid: u32, source: std::io::Error },
    #[error("process {pid}: its region is from another version of Ferry")]
    Version { pid: u32 },
    #[error("process {pid} runs under `ferry {mode}`: only a program started with `ferry exec` can be checkpointed by `ferry checkpoint`")]
    Mode { pid: u32, mode: &'static str },
    #[error("process {pid} is not in its program's process table")]
    NoSlot { pid: u32 },
    #[error("{}: the path is longer than {CKPT_PATH_LEN} bytes", .0.display())]
    PathTooLong(PathBuf),
    #[error(transparent)]
    Image(#[from] CheckpointError),
    #[error("process {pid}: another checkpoint is in progress (by process {owner})")]
    Busy { pid: u32, owner: u32 },
    #[error("process {pid} died during the checkpoint; {} holds no image", .dir.display())]
    Died { pid: u32, dir: PathBuf },
    #[error("process {pid}: the checkpoint did not finish within {secs} s; {} holds no image", .dir.display())]
    Timeout { pid: u32, secs: u64, dir: PathBuf },
    #[error("process {pid}: the checkpoint was given up while its image was written; {} holds no image", .dir.display())]
    GivenUp { pid: u32, dir: PathBuf },
    #[error("--parent: {0}")]
    Parent(String),
    #[error("process {pid}: the checkpoint failed: {why}")]
    Failed { pid: u32, why: String },
    #[error("process {pid} cannot be checkpointed: {why}")]
    Refused { pid: u32, why: String },
}

impl Error {
    /// Whether the program failed (it died, or the shim could not finish),
    /// rather than the request being wrong.
    pub fn is_program_failure(&self) -> bool {
        matches!(
            self,
            Error::Died { .. }
                | Error::Timeout { .. }
                | Error::Failed { .. }
                | Error::GivenUp { .. }
        )
    }
}

/// Whether process `pid` exists.
pub fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

/// Map the region of process `pid`.
pub fn open_region(pid: u32) -> Result<MmapMut, Error> {
    let path = format!("/proc/{pid}/fd/{REGION_FD}");
    let file = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(if alive(pid) {
                Error::NotUnderShim { pid }
            } else {
                Error::NoProcess(pid)
            })
        }
        Err(source) => return Err(Error::Open { pid, source }),
    };
    let link = std::fs::read_link(&path).unwrap_or_default();
    if !link
        .as_os_str()
        .as_bytes()
        .starts_with(b"/memfd:ferry-region")
    {
        return Err(Error::NotUnderShim { pid });
    }
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len < REGION_LEN as u64 {
        return Err(Error::Version { pid });
    }
    // SAFETY: the memfd is the program's region, shared memory accessed
    // only through atomics (Region's contract); the mapping lives as long
    // as the returned value.
    unsafe { memmap2::MmapOptions::new().len(REGION_LEN).map_mut(&file) }
        .map_err(|source| Error::Open { pid, source })
}
/// A checkpoint to take: where, of what, for how long at most.
pub struct Request<'a> {
    /// The image directory (created; must not hold an image already).
    pub image: &'a Path,
    /// The parent image, for an incremental one.
    pub parent: Option<&'a Path>,
    /// The parent's path as the manifest names it, relative to the image
    /// directory (images that move together: `../at-N`); `None`: its
    /// absolute path.
    pub parent_named: Option<&'a Path>,
    /// Seconds to wait for the shim before giving up.
    pub timeout: u64,
    /// For a replay paused at a record boundary: where in its log.
    pub position: Option<ReplayPosition>,
    /// Told about every 50 ms while the image is written: the bytes
    /// written so far, and at most how many in all (the process's resident
    /// memory; zero pages are left out, and an incremental image holds
    /// only the pages written since its parent). While a copy of the
    /// process writes a full image's memory (the program runs on
    /// meanwhile), returning `false` gives the checkpoint up
    /// ([`Error::GivenUp`]): no image is made, and the copy ends on its
    /// own. An image written in the freeze (an incremental one) is not
    /// given up.
    pub progress: Option<&'a dyn Fn(u64, u64) -> bool>,
}

/// Checkpoint process `pid`, whose region is `region`, as `req` says, and
/// make the image whole. The caller has checked that the process may be
/// checkpointed now (its mode; for a replay, that it is at a boundary).
/// Returns the one line saying what was written and how long it took.
pub fn take(region: &Region, pid: u32, req: &Request) -> Result<String, Error> {
    take_all(region, &[pid], req)
}

/// The slot of process `pid` in the program's table, and its vpid.
fn slot_and_vpid(region: &Region, pid: u32) -> Result<u32, Error> {
    // A process restored a moment ago notes its new pid in the table as
    // its threads come back: give it that moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    let slot = loop {
        match region.slot_of_real_pid(pid) {
            Some(s) => break s,
            None if Instant::now() < deadline && alive(pid) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            None => return Err(Error::NoSlot { pid }),
        }
    };
    Ok(region.proc(slot).vpid.load(Ordering::Acquire))
}

/// What one process's answer said.
struct Answer {
    threads: u64,
    mappings: u64,
    memory: u64,
    file: u64,
    freeze_ns: u64,
}

/// Checkpoint processes `pids` of one program into one image, one after
/// another, as `req` says. With more than one, they must be every live
/// process of the program, each standing still between its own
/// checkpoint and the last one's (a replay paused at a record boundary):
/// the image holds them as a tree (each names its parent), and it is a
/// full one. Returns the one line saying what was written.
pub fn take_all(region: &Region, pids: &[u32], req: &Request) -> Result<String, Error> {
    let tree = pids.len() > 1;
    let first = *pids.first().ok_or(Error::NoProcess(0))?;
    if tree && req.parent.is_some() {
        return Err(Error::Refused {
            pid: first,
            why: format!(
                "an image of {} processes is a full one: take it without a parent",
                pids.len()
            ),
        });
    }
    let mut procs = Vec::with_capacity(pids.len());
    for &pid in pids {
        procs.push((pid, slot_and_vpid(region, pid)?));
    }

    let created_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let parent = match req.parent {
        None => None,
        Some(p) => {
            let vpid = procs[0].1;
            let image = Image::open(p).map_err(|e| Error::Parent(e.to_string()))?;
            if image.manifest().entry(vpid).is_none() {
                return Err(Error::Parent(format!(
                    "{}: the image does not hold process {vpid}",
                    p.display()
                )));
            }
            let named = match req.parent_named {
                Some(rel) => rel.to_path_buf(),
                None => std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()),
            };
            Some((image.seq(), named))
        }
    };
    // The directory is made and checked now; the image's sequence number
    // is the process's to choose (one after its last), so the writer that
    // makes it whole comes once the process has answered.
    CheckpointWriter::create(req.image, 1, created_ns, None)?;
    let dir = std::fs::canonicalize(req.image).unwrap_or_else(|_| req.image.to_path_buf());
    let dir_bytes = dir.as_os_str().as_bytes();
    if dir_bytes.len() > CKPT_PATH_LEN {
        return Err(Error::PathTooLong(dir));
    }

    let c = region.ckpt();
    let me = std::process::id();
    if let Err(owner) = c
        .owner
        .compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire)
    {
        // A requester that died mid-request leaves the block held.
        if alive(owner)
            || c.owner
                .compare_exchange(owner, me, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return Err(Error::Busy { pid: first, owner });
        }
    }
    let parent_seq = parent.as_ref().map_or(0, |p| p.0);
    let rss: Vec<u64> = procs.iter().map(|&(pid, _)| resident_bytes(pid)).collect();
    let total_rss: u64 = rss.iter().sum();
    let mut first_asked = None;
    let mut written = Duration::ZERO;
    let mut answers = Vec::with_capacity(procs.len());
    let mut seq = 0u64;
    let mut written_before = 0u64;
    let mut result = Ok(());
    for (i, &(pid, vpid)) in procs.iter().enumerate() {
        preallocate(
            &dir.join(format!("{vpid}.fimg.tmp")),
            rss[i],
            req.parent.filter(|_| parent.is_some()),
            vpid,
        );
        // Told as one image: what the processes before wrote, and the
        // resident memory of all.
        let before = written_before;
        let tell = |done: u64, _: u64| req.progress.is_none_or(|t| t(before + done, total_rss));
        let progress = req
            .progress
            .map(|_| (&tell as &dyn Fn(u64, u64) -> bool, rss[i]));
        let asked = Asked {
            pid,
            vpid,
            parent_seq,
            min_seq: seq,
            tree,
        };
        let asked_at = match ask(region, &asked, (&dir, dir_bytes), req.timeout, progress) {
            Ok(at) => at,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        first_asked.get_or_insert(asked_at);
        let got = c.seq.load(Ordering::Acquire);
        if seq != 0 && got != seq {
            result = Err(Error::Failed {
                pid,
                why: format!(
                    "its image is numbered {got}, that of process {} {seq}: take the checkpoint again",
                    procs[0].0
                ),
            });
            break;
        }
        seq = got;
        let answer = Answer {
            threads: c.threads.load(Ordering::Acquire) as u64,
            mappings: c.mappings.load(Ordering::Acquire) as u64,
            memory: c.memory_bytes.load(Ordering::Acquire),
            file: c.file_bytes.load(Ordering::Acquire),
            freeze_ns: c.freeze_ns.load(Ordering::Acquire),
        };
        written_before += answer.file;
        // The shim wrote file_bytes; the rest is what was allocated ahead.
        let tmp = dir.join(format!("{vpid}.fimg.tmp"));
        if let Err(e) = OpenOptions::new()
            .write(true)
            .open(&tmp)
            .and_then(|f| f.set_len(answer.file))
        {
            result = Err(Error::Failed {
                pid,
                why: format!("{}: cutting the image file to length: {e}", tmp.display()),
            });
            break;
        }
        written += asked_at.elapsed();
        answers.push(answer);
    }
    c.min_seq.store(0, Ordering::Relaxed);
    c.tree.store(0, Ordering::Relaxed);
    c.owner.store(0, Ordering::Release);
    if let Err(e) = result {
        for &(_, vpid) in &procs {
            let _ = std::fs::remove_file(dir.join(format!("{vpid}.fimg.tmp")));
        }
        return Err(e);
    }
    let mut writer = CheckpointWriter::create(
        req.image,
        seq,
        created_ns,
        parent.as_ref().map(|(s, d)| (*s, d.as_path())),
    )?;
    if let Some(at) = req.position {
        writer.set_replay_position(at);
    }
    for &(_, vpid) in &procs {
        writer.adopt(vpid)?;
    }
    writer.finish()?;
    let kind = match &parent {
        Some((s, _)) => format!("incremental image {seq} (parent {s})"),
        None => format!("full image {seq}"),
    };
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let sum = |f: fn(&Answer) -> u64| answers.iter().map(f).sum::<u64>();
    let (who, stopped) = match &procs[..] {
        [(pid, _)] => (format!("process {pid}"), "the program was stopped"),
        more => (
            format!(
                "{} processes ({})",
                more.len(),
                more.iter()
                    .map(|(p, _)| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "each process was stopped for at most",
        ),
    };
    let freeze = answers.iter().map(|a| a.freeze_ns).max().unwrap_or(0);
    let line = format!(
        "checkpoint of {who} in {}, {kind}: {} threads, {} mappings, {:.1} MiB of memory, {:.1} MiB file; {stopped} {:.1} ms, the image written in {:.0} ms ({:.0} ms in all, with its check)",
        dir.display(),
        sum(|a| a.threads),
        sum(|a| a.mappings),
        mib(sum(|a| a.memory)),
        mib(sum(|a| a.file)),
        freeze as f64 / 1e6,
        written.as_secs_f64() * 1e3,
        first_asked.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3),
    );
    Ok(line)
}

/// The resident memory of process `pid` in bytes (0 if unknown).
fn resident_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// The bytes process `pid` has written with write(2) and its like since
/// it started (`wchar` in /proc/PID/io).
fn written_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Allocate the image file's blocks before the program is stopped, so
/// that the freeze is spent copying, not allocating (fresh pages of a tmpfs
/// or of the page cache are what a write waits for most): the process's
/// resident memory for a full image; for an incremental one twice its
/// parent's file, at least 64 MiB, at most the resident memory. A guess
/// either way: the shim cuts the file to what it wrote, and if allocation
/// fails nothing is lost but the head start.
fn preallocate(tmp: &Path, rss: u64, parent: Option<&Path>, vpid: u32) {
    let want = match parent {
        None => rss + (8 << 20),
        Some(p) => {
            let parent_len = std::fs::metadata(p.join(ferry_image::dir::process_file_name(vpid)))
                .map_or(0, |m| m.len());
            (2 * parent_len).max(64 << 20).min(rss + (8 << 20))
        }
    };
    let _ = std::fs::remove_file(tmp);
    let Ok(file) = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
    else {
        return;
    };
    // On a tmpfs the pages are written once (zeros): a page is slow the
    // first time it is touched, not when it is allocated. Elsewhere the
    // blocks are only reserved.
    // SAFETY: fstatfs into a zeroed struct of our own.
    let tmpfs = unsafe {
        let mut st: libc::statfs = core::mem::zeroed();
        libc::fstatfs(file.as_raw_fd(), &mut st) == 0 && st.f_type == libc::TMPFS_MAGIC
    };
    if tmpfs {
        use std::io::Write;
        let zeros = vec![0u8; 1 << 20];
        let mut left = want;
        let mut w = &file;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            if w.write_all(&zeros[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
    } else {
        // SAFETY: fallocate on a file this function opened.
        unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, want as libc::off_t) };
    }
}

/// The copy writing a full image for a request that is given up (or timed
/// out) must not answer a later request in the region it shares: the
/// sizes it would leave there cut the later image short. Kill it, and
/// wait (a second at most) until it has exited. Until the program reaps
/// it at its next full checkpoint, its pid stays taken.
fn end_writer(region: &Region) {
    let writer = region.ckpt().writer_pid.load(Ordering::Acquire);
    if writer == 0 {
        return;
    }
    crate::sys::kill_hard(writer as i32);
    let deadline = Instant::now() + Duration::from_secs(1);
    while !crate::sys::has_exited(writer as i32) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whom to tell how far a full image is written, and the total guessed.
type Progress<'a> = (&'a dyn Fn(u64, u64) -> bool, u64);

/// One process asked for its file of an image.
struct Asked {
    pid: u32,
    vpid: u32,
    /// For an incremental image, its parent's sequence number; else 0.
    parent_seq: u64,
    /// The image's sequence number is at least this (0: any).
    min_seq: u64,
    /// The image holds every live process of the program.
    tree: bool,
}

/// Make the request and wait for the answer.
fn ask(
    region: &Region,
    a: &Asked,
    (dir, dir_bytes): (&Path, &[u8]),
    timeout: u64,
    progress: Option<Progress<'_>>,
) -> Result<Instant, Error> {
    let (pid, vpid) = (a.pid, a.vpid);
    let c = region.ckpt();
    c.target_pid.store(pid, Ordering::Relaxed);
    c.min_seq.store(a.min_seq, Ordering::Relaxed);
    c.tree.store(a.tree as u32, Ordering::Relaxed);
    for (d, s) in c.path.iter().zip(dir_bytes) {
        d.store(*s, Ordering::Relaxed);
    }
    c.path_len.store(dir_bytes.len() as u32, Ordering::Relaxed);
    c.seq.store(0, Ordering::Relaxed);
    c.writer_pid.store(0, Ordering::Relaxed);
    c.freeze_ns.store(u64::MAX, Ordering::Relaxed);
    c.parent_seq.store(a.parent_seq, Ordering::Relaxed);
    c.message_len.store(0, Ordering::Relaxed);
    let request = c.request.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
    let started = Instant::now();
    let written_before = written_bytes(pid);
    // SAFETY: sends the checkpoint signal; no memory is involved.
    if unsafe { libc::kill(pid as i32, CKPT_SIGNAL) } != 0 {
        return Err(Error::NoProcess(pid));
    }
    let tmp = dir.join(format!("{vpid}.fimg.tmp"));
    let deadline = started + Duration::from_secs(timeout);
    loop {
        let done = c.done.load(Ordering::Acquire);
        if done == request {
            break;
        }
        if !alive(pid) {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::Died {
                pid,
                dir: dir.to_path_buf(),
            });
        }
        // A full image's memory is written by a copy of the process.
        let writer = c.writer_pid.load(Ordering::Acquire);
        if writer != 0 && !alive(writer) && c.done.load(Ordering::Acquire) != request {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::Failed {
                pid,
                why: format!(
                    "the process writing the image (pid {writer}) died; {} holds no image",
                    dir.display()
                ),
            });
        }
        // The writer holds no descriptor but the image's (and writes
        // nothing else), and its counters start at zero.
        match (progress, writer) {
            (Some((tell, total)), 0) => {
                // Written in the freeze (an incremental image) by the
                // process itself, whose other threads are stopped. Not
                // given up: the program stays stopped until it is written.
                if let (Some(before), Some(now)) = (written_before, written_bytes(pid)) {
                    tell(now.saturating_sub(before), total);
                }
            }
            (Some((tell, total)), writer) => {
                let done = written_bytes(writer).unwrap_or(0);
                if !tell(done, total) {
                    end_writer(region);
                    let _ = std::fs::remove_file(&tmp);
                    return Err(Error::GivenUp {
                        pid,
                        dir: dir.to_path_buf(),
                    });
                }
            }
            (None, _) => {}
        }
        if Instant::now() > deadline {
            end_writer(region);
            return Err(Error::Timeout {
                pid,
                secs: timeout,
                dir: dir.to_path_buf(),
            });
        }
        crate::region::SysFutex.wait(&c.done, done, Some(50));
    }
    // The writer of a full image may answer before the program has
    // measured its freeze.
    let freeze_deadline = Instant::now() + Duration::from_secs(2);
    while c.freeze_ns.load(Ordering::Acquire) == u64::MAX && Instant::now() < freeze_deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    if c.status.load(Ordering::Acquire) != CKPT_OK {
        let n = (c.message_len.load(Ordering::Acquire) as usize).min(c.message.len());
        let bytes: Vec<u8> = c.message[..n]
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        return Err(Error::Failed {
            pid,
            why: String::from_utf8_lossy(&bytes).into_owned(),
        });
    }
    Ok(started)
}

#[cfg(test)]
mod tests {
    use super::written_bytes;

    /// The progress of a full image is its writer's `wchar`: a forked
    /// process's count starts at zero and counts what it writes.
    #[test]
    fn a_forked_writers_count_of_bytes_written_is_its_own() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        // SAFETY: the child only writes, waits on a socket and exits with
        // _exit; the test process's other threads are not touched.
        let child = unsafe { libc::fork() };
        assert!(child >= 0);
        if child == 0 {
            use std::io::{Read, Write};
            let mut null = std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .unwrap();
            let _ = null.write_all(&vec![1u8; 300_000]);
            let _ = (&theirs).write_all(b"w");
            let mut b = [0u8; 1];
            let _ = (&theirs).read(&mut b);
            // SAFETY: ends the child without the parent's destructors.
            unsafe { libc::_exit(0) };
        }
        use std::io::{Read, Write};
        let mut b = [0u8; 1];
        (&ours).read_exact(&mut b).unwrap();
        let written = written_bytes(child as u32);
        (&ours).write_all(b"x").unwrap();
        crate::sys::wait_for(child).unwrap();
        // Its 300 000 bytes (and the socket's one, where sends count),
        // nothing of the parent's.
        let written = written.unwrap();
        assert!((300_000..=300_001).contains(&written), "{written}");
    }
}
