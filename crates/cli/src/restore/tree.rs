//! Restoring an image of several processes: a program's tree, taken while
//! its replay stood still at a record boundary (by `ferryd`, or by
//! `ferry replay --checkpoint-at`).
//!
//! The restorer that runs this becomes the image's root process. First it
//! skims every process file (all but the page data) and makes, once, the
//! kernel objects the processes may share: each pipe and socket pair,
//! refilled with what was queued in it; each FIFO, held open and refilled;
//! a memfd for each object of shared memory (the shim's region among
//! them). Then it forks a restorer for each child of the root, which forks
//! one for each of its own children, and so on, so that every restored
//! process is again the child of its parent. Each inherits those objects
//! and takes its own from them, does the first stage for its process and
//! reports on a pipe to the root's restorer: started, ready, or failed with
//! its line. Only once every one is ready does the root's restorer give
//! the region to the feeder and let them all go into their second stages.
//! If any fails or dies before that, it kills them all, and the restore
//! fails with that line: no process of the program runs.
//!
//! What is not shared again: two processes holding one open regular file
//! get one open file each, at the offset it had (they no longer share the
//! offset); a socket, eventfd, timerfd, signalfd or epoll set two
//! processes held is made once for each.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use ferry_image::dir::Image;
use ferry_image::manifest::ManifestEntry;
use ferry_image::read::{Fd, FdKind, Section, Visitor};
use ferry_image::sections::{MappingInfo, MAP_SHARED, SPECIAL_NONE};

use super::{
    errno, hand_over, is_memory_object, new_memfd, new_pipe, new_socketpair, open_path,
    prepare_process, refill_socket, set_status_flags, show, write_all_fd, Feeder, Ready,
};

/// Kernel objects made once for every process of an image.
#[derive(Default)]
pub(super) struct Given {
    /// Pipes by their id in the image: read end, write end.
    pub pipes: HashMap<u64, (OwnedFd, OwnedFd)>,
    /// Unix socket pairs by their id in the image.
    pub pairs: HashMap<u64, [OwnedFd; 2]>,
    /// FIFOs by path, each held open for reading and writing (so that no
    /// open of it blocks, and what was refilled stays) until the
    /// restorers holding it are done with their first stage.
    pub fifos: HashMap<Vec<u8>, OwnedFd>,
    /// A memfd for each object of shared memory, by (device, inode,
    /// path).
    shared: HashMap<(u64, u64, Vec<u8>), OwnedFd>,
    /// The process whose file gives each object's content: the first in
    /// the manifest that maps it. (The processes were checkpointed one
    /// after another; the shim's region changed in between.)
    content_of: HashMap<(u64, u64, Vec<u8>), u32>,
    /// The process restored here.
    vpid: u32,
}

impl Given {
    /// The memfds of shared memory, for the staging of the mappings of
    /// process `vpid`.
    pub fn take_shared(&mut self, vpid: u32) -> HashMap<(u64, u64, Vec<u8>), OwnedFd> {
        self.vpid = vpid;
        std::mem::take(&mut self.shared)
    }

    /// Whether another process of the image gives the content of the
    /// shared memory `key`.
    pub fn content_elsewhere(&self, key: &(u64, u64, Vec<u8>)) -> bool {
        self.content_of.get(key).is_some_and(|&v| v != self.vpid)
    }
}

/// What lets the other restorers go.
pub(super) struct Others {
    go: OwnedFd,
    count: usize,
}

impl Others {
    /// Let every other restorer go: a byte each on the pipe they wait on
    /// (end of file without one means the root's restorer gave up).
    pub fn release(self) {
        let _ = write_all_fd(self.go.as_raw_fd(), &vec![b'g'; self.count]);
    }
}

/// What a skim of one process file found: its descriptors with their data
/// and its mappings of shared memory.
#[derive(Default)]
struct Skim {
    fds: Vec<(Fd, Vec<u8>)>,
    data: HashMap<u32, Vec<u8>>,
    shared: Vec<(MappingInfo, Vec<u8>)>,
}

impl Visitor for Skim {
    fn section(&mut self, _offset: u64, section: &Section) -> io::Result<()> {
        match section {
            Section::Fd(f) => {
                let data = self.data.remove(&f.info.fd).unwrap_or_default();
                self.fds.push((f.clone(), data));
            }
            Section::Mapping(m)
                if m.info.flags & MAP_SHARED != 0
                    && m.info.special == SPECIAL_NONE
                    && is_memory_object(&m.info, &m.path) =>
            {
                self.shared.push((m.info, m.path.clone()));
            }
            _ => {}
        }
        Ok(())
    }

    fn fd_data(&mut self, fd: u32, _pos: u64, bytes: &[u8]) -> io::Result<()> {
        self.data.entry(fd).or_default().extend_from_slice(bytes);
        Ok(())
    }
}

/// Make the objects every process of `image` may share, each once, and
/// put back what was queued in each.
fn make_given(image: &Image) -> Result<Given, String> {
    let mut given = Given::default();
    let mut refilled: HashSet<(u64, u32)> = HashSet::new();
    let mut fifos_refilled: HashSet<Vec<u8>> = HashSet::new();
    for e in &image.manifest().entries {
        let mut skim = Skim::default();
        image
            .skim_process(e.vpid, &mut skim)
            .map_err(|e| e.to_string())?;
        let name = image.process_path(e.vpid).display().to_string();
        for (f, data) in &skim.fds {
            if f.info.shares != 0 {
                // A dup of a lower descriptor of the same process.
                continue;
            }
            let what = |e: &dyn std::fmt::Display| format!("{name}: descriptor {}: {e}", f.info.fd);
            match &f.kind {
                FdKind::Pipe(p, path) if p.fifo != 0 => {
                    let keep = made(&mut given.fifos, path.clone(), || {
                        open_path(path, libc::O_RDWR | libc::O_NONBLOCK)
                            .map_err(|e| what(&format!("FIFO {}: {e}", show(path))))
                    })?;
                    if p.end == 0 && !data.is_empty() && fifos_refilled.insert(path.clone()) {
                        write_all_fd(keep.as_raw_fd(), data)
                            .map_err(|e| what(&format!("refilling FIFO {}: {e}", show(path))))?;
                    }
                }
                FdKind::Pipe(p, _) => {
                    let (_, w) = made(&mut given.pipes, p.pipe_id, || {
                        new_pipe(p.capacity).map_err(|e| what(&format!("pipe2: {e}")))
                    })?;
                    // Every holder of the read end saw the same bytes queued.
                    if p.end == 0 && !data.is_empty() && refilled.insert((p.pipe_id, 2)) {
                        let w = w.as_raw_fd();
                        set_status_flags(w, libc::O_NONBLOCK as u32);
                        write_all_fd(w, data).map_err(|e| {
                            what(&format!(
                                "refilling the pipe with {} bytes: {e}",
                                data.len()
                            ))
                        })?;
                        set_status_flags(w, 0);
                    }
                }
                FdKind::UnixPair(u) => {
                    let pair = made(&mut given.pairs, u.pair_id, || {
                        new_socketpair(u.sock_type).map_err(|e| what(&format!("socketpair: {e}")))
                    })?;
                    let end = u.end & 1;
                    if refilled.insert((u.pair_id, end)) {
                        let peer = pair[(end ^ 1) as usize].as_raw_fd();
                        refill_socket(peer, u.sock_type as i32, data).map_err(|e| {
                            what(&format!(
                                "refilling a socketpair with {} bytes: {e}",
                                data.len()
                            ))
                        })?;
                        if u.shutdown & 1 != 0 {
                            // SAFETY: shutdown of our own socket.
                            unsafe { libc::shutdown(peer, libc::SHUT_WR) };
                        }
                    }
                }
                _ => {}
            }
        }
        for (info, path) in skim.shared {
            let key = (info.device, info.inode, path);
            given.content_of.entry(key.clone()).or_insert(e.vpid);
            made(&mut given.shared, key.clone(), || {
                new_memfd(&key.2).map_err(|e| {
                    format!(
                        "{name}: mapping {:#x}-{:#x} ({}): memfd_create: {e}",
                        info.start,
                        info.end,
                        show(&key.2)
                    )
                })
            })?;
        }
    }
    Ok(given)
}

/// The value at `key`, made by `make` if there is none yet.
fn made<K: std::hash::Hash + Eq, V>(
    map: &mut HashMap<K, V>,
    key: K,
    make: impl FnOnce() -> Result<V, String>,
) -> Result<&mut V, String> {
    match map.entry(key) {
        std::collections::hash_map::Entry::Occupied(o) => Ok(o.into_mut()),
        std::collections::hash_map::Entry::Vacant(v) => Ok(v.insert(make()?)),
    }
}

/// The processes restored as children of `vpid`: those whose parent it
/// is, and, for the root, those whose parent is not in the image.
fn children(entries: &[ManifestEntry], root: u32, vpid: u32) -> Vec<u32> {
    entries
        .iter()
        .filter(|e| e.vpid != root)
        .filter(|e| e.parent_vpid == vpid || (vpid == root && e.parent_vpid == 0))
        .map(|e| e.vpid)
        .collect()
}

/// The descriptors of the reports and of the go-ahead.
struct Channel {
    /// Every restorer writes its reports here.
    report: RawFd,
    /// Every restorer but the root's waits for a byte here.
    go: RawFd,
    /// The root restorer's ends, closed in each other restorer.
    root_ends: [RawFd; 2],
}

/// A report line, written in one call (shorter than PIPE_BUF, so that
/// lines of several restorers never mix).
fn tell(fd: RawFd, line: &str) {
    let mut line: String = line.replace('\n', " ");
    line.truncate(
        (0..=3800.min(line.len()))
            .rev()
            .find(|&i| line.is_char_boundary(i))
            .unwrap_or(0),
    );
    line.push('\n');
    let _ = write_all_fd(fd, line.as_bytes());
}

/// Wait for the go-ahead: a byte, or end of file (the root's restorer gave
/// up, or died).
fn wait_go(fd: RawFd) -> bool {
    let mut b = 0u8;
    loop {
        // SAFETY: reads one byte into a local.
        let n = unsafe { libc::read(fd, (&mut b as *mut u8).cast(), 1) };
        if n < 0 && errno().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return n == 1;
    }
}

/// End a forked restorer.
fn leave(code: i32) -> ! {
    // SAFETY: ends this process without running the destructors of the
    // memory it shares with no one (a forked copy).
    unsafe { libc::_exit(code) }
}

/// Fork the restorer of process `vpid` (and, from it, those of its
/// children). Returns its pid; the child never returns.
fn spawn(
    image: &Image,
    root: u32,
    vpid: u32,
    given: &mut Given,
    ch: &Channel,
) -> Result<i32, String> {
    // SAFETY: every restorer is single-threaded (`ferry restore`'s main
    // thread, or a copy of one), so the copy may run ordinary code; it
    // ends in its program or in _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", errno()));
    }
    if pid > 0 {
        return Ok(pid);
    }
    for fd in ch.root_ends {
        // SAFETY: closes this copy's descriptors of the root's ends.
        unsafe { libc::close(fd) };
    }
    let me = std::process::id();
    tell(ch.report, &format!("started {vpid} {me}"));
    for c in children(&image.manifest().entries, root, vpid) {
        if let Err(e) = spawn(image, root, c, given, ch) {
            tell(ch.report, &format!("failed {vpid} {me} {e}"));
            leave(2);
        }
    }
    match prepare_process(image, vpid, std::mem::take(given), None, &[]) {
        Ok(ready) => {
            tell(ch.report, &format!("ready {vpid} {me}"));
            if wait_go(ch.go) {
                ready.go();
            }
            leave(2)
        }
        Err(e) => {
            tell(ch.report, &format!("failed {vpid} {me} {e}"));
            leave(2)
        }
    }
}

/// The reports read so far.
#[derive(Default)]
struct Reports {
    started: HashMap<u32, u32>,
    ready: HashMap<u32, u32>,
    partial: Vec<u8>,
}

impl Reports {
    /// Take what `fd` holds now. `Ok(false)` at end of file.
    fn read(&mut self, fd: RawFd) -> Result<bool, String> {
        let mut buf = [0u8; 4096];
        // SAFETY: reads into a local buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = errno();
            return match e.kind() {
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => Ok(true),
                _ => Err(format!("reading the restorers' reports: {e}")),
            };
        }
        if n == 0 {
            return Ok(false);
        }
        self.partial.extend_from_slice(&buf[..n as usize]);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]).into_owned();
            let mut parts = line.splitn(4, ' ');
            let (what, vpid, pid) = (parts.next(), parts.next(), parts.next());
            let (Some(vpid), Some(pid)) = (
                vpid.and_then(|v| v.parse::<u32>().ok()),
                pid.and_then(|p| p.parse::<u32>().ok()),
            ) else {
                return Err(format!("a restorer's report is unreadable: {line:?}"));
            };
            match what {
                Some("started") => {
                    self.started.insert(vpid, pid);
                }
                Some("ready") => {
                    self.ready.insert(vpid, pid);
                }
                Some("failed") => return Err(parts.next().unwrap_or("").to_string()),
                _ => return Err(format!("a restorer's report is unreadable: {line:?}")),
            }
        }
        Ok(true)
    }

    /// Wait until `want` restorers are ready; an error if one failed or
    /// ended first.
    fn wait_ready(&mut self, fd: RawFd, want: usize, forked: &[i32]) -> Result<(), String> {
        while self.ready.len() < want {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polls one descriptor of ours.
            let n = unsafe { libc::poll(&mut p, 1, 100) };
            if n > 0 && !self.read(fd)? {
                return Err(
                    "the restorers of the other processes ended before they were ready".into(),
                );
            }
            for (&vpid, &pid) in &self.started {
                if !self.ready.contains_key(&vpid) && ferry_host::sys::has_exited(pid as i32) {
                    return Err(format!(
                        "the restorer of process {vpid} (pid {pid}) ended before it was ready"
                    ));
                }
            }
            for &pid in forked {
                let known = self.started.values().any(|&p| p as i32 == pid);
                if !known && ferry_host::sys::has_exited(pid) {
                    return Err(format!(
                        "the restorer with pid {pid} ended before it started"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Kill every restorer known, and reap the root's own children.
    fn abort(&mut self, fd: RawFd, forked: &[i32]) {
        // What was reported meanwhile names more of them.
        // SAFETY: a flag change on our own descriptor.
        unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
        loop {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polls one descriptor of ours.
            if unsafe { libc::poll(&mut p, 1, 0) } <= 0 || !matches!(self.read(fd), Ok(true)) {
                break;
            }
        }
        for &pid in self.started.values() {
            ferry_host::sys::kill_hard(pid as i32);
        }
        for &pid in forked {
            ferry_host::sys::kill_hard(pid);
            let _ = ferry_host::sys::wait_for(pid);
        }
    }
}

/// A new pipe whose ends close on exec.
fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    new_pipe(0).map_err(|e| format!("pipe2: {e}"))
}

/// The first stage for an image of several processes (see the module's
/// documentation): returns the root's, ready to go, once every other
/// process's restorer is ready too.
pub(super) fn prepare(image: &Image, feeder: Option<&Feeder>) -> Result<Ready, String> {
    let dir = image.dir().display().to_string();
    let entries = &image.manifest().entries;
    // The manifest's processes form a forest: the root is the first
    // process with no parent in the image; the others without one (their
    // parent had ended) become its children.
    let root = entries
        .iter()
        .filter(|e| e.parent_vpid == 0)
        .map(|e| e.vpid)
        .min()
        .ok_or_else(|| format!("{dir}: the image has no root process"))?;
    let mut given = make_given(image)?;
    let (report_r, report_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let ch = Channel {
        report: report_w.as_raw_fd(),
        go: go_r.as_raw_fd(),
        root_ends: [report_r.as_raw_fd(), go_w.as_raw_fd()],
    };
    let mut forked = Vec::new();
    let mut result = Ok(());
    for c in children(entries, root, root) {
        match spawn(image, root, c, &mut given, &ch) {
            Ok(pid) => forked.push(pid),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    drop(report_w);
    drop(go_r);
    let mut reports = Reports::default();
    let others = entries.len() - 1;
    let ready = result.and_then(|()| {
        let pids = [(root, std::process::id())];
        prepare_process(image, root, given, None, &pids)
    });
    let ready = ready.and_then(|mut ready| {
        reports.wait_ready(report_r.as_raw_fd(), others, &forked)?;
        let mut pids: Vec<(u32, u32)> = reports.ready.iter().map(|(&v, &p)| (v, p)).collect();
        pids.push((root, std::process::id()));
        if let Some(feeder) = feeder {
            let region = ready
                .region
                .as_ref()
                .ok_or_else(|| format!("{dir}: the image holds no shim region"))?;
            hand_over(region, feeder, &dir, &pids)?;
        }
        ready.others = Some(Others {
            go: go_w.try_clone().map_err(|e| format!("{dir}: {e}"))?,
            count: others,
        });
        Ok(ready)
    });
    if ready.is_err() {
        reports.abort(report_r.as_raw_fd(), &forked);
    }
    ready
}
