//! `ferry restore --image DIR`: this process becomes the checkpointed one.
//!
//! The restore runs in two stages. The first is ordinary code: it reads the
//! image (every checksum checked as it goes), puts the content of every
//! mapping into a *staged* mapping in a window of the address space the
//! image does not use, opens the descriptors at high numbers, and writes a
//! plan of system calls into the restorer's area, next to a copy of a small
//! interpreter ([`blob`]). Any error up to here leaves nothing changed and
//! exits 2 with one line saying what and where.
//!
//! The second stage is the interpreter, which runs on its own stack in the
//! area: it blocks every signal, unmaps everything of `ferry` outside the
//! window, maps this kernel's vDSO where the image had it, moves each
//! staged mapping to its address (`mremap`), gives the kernel the address
//! space's bookkeeping (`PR_SET_MM_MAP`), sets the signal actions, moves the
//! descriptors to their numbers, the limits and timers, then clones each
//! thread onto its saved stack and jumps, as the main thread, into the
//! shim's checkpoint handler where the checkpoint left it. The shim redoes
//! each thread's kernel state (tid address, robust list, rseq, the safety
//! net), unmaps the area, and returns from the signal into the program,
//! whose registers come back from the signal frame.
//!
//! The process keeps this process's pid; the program goes on seeing its
//! virtual pid and tids. Descriptors 0 to 2 are restore's own.

mod blob;
mod tree;

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use ferry_image::dir::Image;
use ferry_image::read::{FdKind, Section, Visitor};
use ferry_image::resume::{Restored, RESTORED_MAGIC};
use ferry_image::sections::*;
use ferry_memtrack::maps::{self, Kind as MapKind};

use crate::exit::{report, BAD_INPUT};
use ferry_ring::REGION_FD;

/// The name the shim's region has in /proc/self/maps.
const REGION_MEMFD: &str = "/memfd:ferry-region";
use blob::{Op, FATAL, IGNORE, JUMP, THREAD};

/// What `ferry restore` was asked to do.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The image directory `ferry checkpoint` wrote.
    #[arg(long, value_name = "DIR")]
    pub image: PathBuf,
    /// For `ferryd`: the image is of a replay, and this inherited unix
    /// socket leads to its feeder, the parent process, which is sent the
    /// program's region and publishes the records after the image.
    #[arg(long, value_name = "FD", hide = true)]
    pub feeder_fd: Option<i32>,
}

/// Run `ferry restore`. Returns only on an error found before the point of
/// no return.
pub fn run(args: RestoreArgs) -> u8 {
    let Some(fd) = args.feeder_fd else {
        return match prepare(&args.image, None) {
            Ok(ready) => ready.go(),
            Err(e) => report(BAD_INPUT, e),
        };
    };
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return report(
            BAD_INPUT,
            format!("--feeder-fd {fd}: not an open descriptor of this process"),
        );
    }
    // SAFETY: the descriptor is open (checked above) and was handed to this
    // process to own; nothing else here uses it.
    let socket = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let feeder = Feeder {
        pid: std::os::unix::process::parent_id(),
        socket: &socket,
    };
    report(BAD_INPUT, into_replay(&args.image, feeder))
}

/// Who feeds a replay restored from an image: the process that will
/// publish the records after the image's position, and the socket the
/// program's region is sent to it through.
pub struct Feeder<'a> {
    /// Its pid: the restored shim's consumer from now on.
    pub pid: u32,
    /// One end of a unix socket pair; the feeder holds the other.
    pub socket: &'a OwnedFd,
}

/// Become the program of an image of a replay, fed by `feeder`. Returns
/// only with the line saying why not, before the point of no return.
pub fn into_replay(dir: &Path, feeder: Feeder) -> String {
    match prepare(dir, Some(feeder)) {
        Ok(ready) => {
            ready.go();
            format!("{}: the restore did not start", dir.display())
        }
        Err(e) => e,
    }
}

/// Hand the region of a replay being restored to its feeder: the shim's
/// consumer is the feeder from now on, and the log goes on.
fn hand_over(
    region: &OwnedFd,
    feeder: &Feeder,
    name: &str,
    pids: &[(u32, u32)],
) -> Result<(), String> {
    let file = std::fs::File::from(
        region
            .try_clone()
            .map_err(|e| format!("{name}: the shim's region: {e}"))?,
    );
    // SAFETY: the memfd holds the region the image saved, REGION_LEN
    // bytes (checked by `is_valid` below before any use); it is accessed
    // only through Region's atomics, and no one else maps it yet.
    let mut map = unsafe {
        memmap2::MmapOptions::new()
            .len(ferry_ring::REGION_LEN)
            .map_mut(&file)
    }
    .map_err(|e| format!("{name}: the shim's region: {e}"))?;
    // SAFETY: the mapping is REGION_LEN bytes and page aligned, and lives
    // until the end of this function, longer than `r`.
    let r = unsafe { ferry_ring::Region::from_raw(map.as_mut_ptr()) };
    if !r.is_valid() || r.mode() != Some(ferry_ring::Mode::Replay) {
        return Err(format!(
            "{name}: the shim's region in the image is not that of a replay"
        ));
    }
    r.control()
        .consumer_pid
        .store(feeder.pid, std::sync::atomic::Ordering::Release);
    own_process_table(&r, pids);
    r.lower(
        ferry_ring::CTL_END_OF_LOG | ferry_ring::CTL_CONSUMER_GONE,
        &ferry_host::region::SysFutex,
    );
    drop(map);
    send_fd(feeder.socket, region)
        .map_err(|e| format!("{name}: sending the region to the replay: {e}"))
}

/// The process table in a region saved in an image names the pids the
/// program had where it was checkpointed, which here may be any other
/// process: the feeder kills the pids it lists. Each live slot names the
/// pid its process is restored as (`pids`: virtual pid, real pid), or
/// none until the shim writes it as the process resumes.
fn own_process_table(r: &ferry_ring::Region, pids: &[(u32, u32)]) {
    use std::sync::atomic::Ordering;
    for s in 0..ferry_ring::MAX_PROCS {
        let p = r.proc(s);
        if p.state.load(Ordering::Acquire) != ferry_ring::PROC_LIVE {
            continue;
        }
        let vpid = p.vpid.load(Ordering::Acquire);
        let own = pids
            .iter()
            .find(|(v, _)| *v == vpid)
            .map_or(0, |&(_, pid)| pid);
        p.real_pid.store(own, Ordering::Release);
    }
}

/// Send descriptor `fd` over the unix socket `sock`.
fn send_fd(sock: &OwnedFd, fd: &OwnedFd) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd.as_raw_fd()];
    let iov = [io::IoSlice::new(b"R")];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map(|_| ())
    .map_err(io::Error::from)
}

/// Where staged mappings go: a window far from where programs map
/// anything with address-space randomisation off (their binary near
/// 0x5555_5555_0000, libraries and stacks near 0x7fff_f000_0000, the shim's
/// region at 0x5f00_0000_0000).
const WINDOW_START: usize = 0x1000_0000_0000;
/// Its end.
const WINDOW_END: usize = 0x3000_0000_0000;
/// The top of a 47-bit user address space.
const TASK_TOP: usize = 0x7fff_ffff_f000;
const PAGE: usize = 4096;
/// The interpreter's stack.
const STACK_LEN: usize = 64 << 10;

const ARCH_SET_FS: u64 = 0x1002;
const ARCH_MAP_VDSO_64: u64 = 0x2003;
const PR_SET_MM: u64 = 35;
const PR_SET_MM_EXE_FILE: u64 = 13;
const PR_SET_MM_MAP: u64 = 14;
const PR_SET_NAME: u64 = 15;
const RSEQ_FLAG_UNREGISTER: u64 = 1;

/// A mapping of the image, staged in the window.
struct Staged {
    info: MappingInfo,
    path: Vec<u8>,
    /// Where its content is now (0: not staged, a vDSO or vvar).
    at: usize,
    /// Whether it is a file mapped privately (zero runs must be written).
    private_file: bool,
    /// With a chain of images: a bit per page given by a newer image.
    done: Vec<u64>,
    /// Shared memory whose content another process of the image gives
    /// (this process's pages of it are left out: written at the same time
    /// into the same memory, the two would mix).
    others: bool,
}

/// The `struct prctl_mm_map` of `PR_SET_MM_MAP`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct MmMap {
    start_code: u64,
    end_code: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    brk: u64,
    start_stack: u64,
    arg_start: u64,
    arg_end: u64,
    env_start: u64,
    env_end: u64,
    auxv: u64,
    auxv_size: u32,
    exe_fd: u32,
}

/// What the first stage gathers from the image.
#[derive(Default)]
struct Gather {
    process: Option<ferry_image::read::Process>,
    rlimits: Option<Rlimits>,
    threads: Vec<ferry_image::read::Thread>,
    sigactions: Option<SigActions>,
    itimers: Option<Itimers>,
    address_space: Option<ferry_image::read::AddressSpaceSection>,
    mappings: Vec<Staged>,
    fds: Vec<ferry_image::read::Fd>,
    fd_data: HashMap<u32, Vec<u8>>,
    /// Next free address in the window.
    next: usize,
    /// Shared memory objects, by (device, inode, path): the memfd that
    /// stands for each.
    shared: HashMap<(u64, u64, Vec<u8>), OwnedFd>,
    /// Descriptors opened for staging that must stay open until the
    /// mappings are made (closed when the first stage ends).
    keep: Vec<OwnedFd>,
    /// Epoll sets (their numbers) and the entries to add to them.
    epolls: Vec<(u32, Vec<EpollEntry>)>,
    /// POSIX timers, created by the first stage, armed by the plan.
    timers: Vec<PosixTimer>,
    /// Reading an incremental image's ancestors (newest first): only their
    /// pages matter.
    older: bool,
    /// The image is incremental: pages given are marked.
    chained: bool,
    /// The ranges the image being read made anew (`MAP_FRESH`).
    fresh: Vec<(u64, u64)>,
    /// Pipes, socket pairs and FIFOs made (and refilled) for every process
    /// of an image of several.
    given: tree::Given,
}

fn io_err(msg: String) -> io::Error {
    io::Error::other(msg)
}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// The path of a mapping or descriptor without the kernel's " (deleted)".
fn undeleted(path: &[u8]) -> &[u8] {
    path.strip_suffix(b" (deleted)").unwrap_or(path)
}

fn cstring(path: &[u8]) -> io::Result<CString> {
    CString::new(path).map_err(|_| io_err(format!("path {:?} holds a NUL byte", show(path))))
}

/// mmap, with the error as io::Error.
fn mmap(at: usize, len: usize, prot: i32, flags: i32, fd: RawFd, off: u64) -> io::Result<usize> {
    // SAFETY: with MAP_FIXED_NOREPLACE (every caller passes it) the call
    // cannot replace an existing mapping; otherwise the kernel picks.
    let p = unsafe { libc::mmap(at as *mut _, len, prot, flags, fd, off as libc::off_t) };
    if p == libc::MAP_FAILED {
        return Err(errno());
    }
    Ok(p as usize)
}

fn is_memfd(path: &[u8]) -> bool {
    path.starts_with(b"/memfd:")
}

/// Whether a mapping is of memory with no file to go back to (a memfd,
/// shared anonymous memory, a deleted file), which the restorer makes as a
/// memfd when it is shared.
fn is_memory_object(info: &MappingInfo, path: &[u8]) -> bool {
    info.flags & MAP_FILE == 0 || info.flags & MAP_DELETED != 0 || is_memfd(path)
}

/// A new memfd standing for the shared memory mapped from `path`, named
/// as it was.
fn new_memfd(path: &[u8]) -> io::Result<OwnedFd> {
    let name = cstring(
        undeleted(path)
            .strip_prefix(b"/memfd:")
            .unwrap_or(b"ferry-shared"),
    )?;
    // SAFETY: a plain system call on a NUL-terminated name.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: memfd_create returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Gather {
    /// Stage mapping `m`: give it memory in the window that holds what
    /// the program will find there before its pages are written.
    fn stage(&mut self, info: &MappingInfo, path: &[u8]) -> io::Result<()> {
        let len = (info.end - info.start) as usize;
        if info.special != SPECIAL_NONE {
            self.mappings.push(Staged {
                info: *info,
                path: path.to_vec(),
                at: 0,
                private_file: false,
                done: Vec::new(),
                others: false,
            });
            return Ok(());
        }
        let at = self.next;
        if at + len + PAGE > WINDOW_END {
            return Err(io_err(format!(
                "the image's mappings need more than the {} GiB the restorer stages them in",
                (WINDOW_END - WINDOW_START) >> 30
            )));
        }
        self.next = at + len + PAGE;
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let fixed = libc::MAP_FIXED_NOREPLACE;
        let shared = info.flags & MAP_SHARED != 0;
        let mut private_file = false;
        let mut others = false;
        let where_ = || format!("mapping {:#x}-{:#x} ({})", info.start, info.end, show(path));
        let got = if !is_memory_object(info, path) {
            // The file itself: shared mappings write through to it, private
            // ones get the saved pages over the file's.
            let file = File::options()
                .read(true)
                .write(shared && info.prot & libc::PROT_WRITE as u32 != 0)
                .open(OsStr::from_bytes(path))
                .map_err(|e| io_err(format!("{}: cannot open the file: {e}", where_())))?;
            let flags = if shared {
                libc::MAP_SHARED
            } else {
                private_file = true;
                libc::MAP_PRIVATE
            };
            let prot = if shared { info.prot as i32 } else { rw };
            mmap(at, len, prot, flags | fixed, file.as_raw_fd(), info.offset)
                .map_err(|e| io_err(format!("{}: cannot map the file: {e}", where_())))?
        } else if shared {
            // Shared memory without a file to go back to (a memfd, shared
            // anonymous memory, a deleted file): one memfd per object,
            // shared by every mapping of it, filled by the pages.
            let key = (info.device, info.inode, path.to_vec());
            others = self.given.content_elsewhere(&key);
            if !self.shared.contains_key(&key) {
                let fd = new_memfd(path)
                    .map_err(|e| io_err(format!("{}: memfd_create: {e}", where_())))?;
                self.shared.insert(key.clone(), fd);
            }
            let fd = self.shared[&key].as_raw_fd();
            let need = info.offset + len as u64;
            // SAFETY: fstat into a zeroed stat of our own.
            let size = unsafe {
                let mut st: libc::stat = core::mem::zeroed();
                libc::fstat(fd, &mut st);
                st.st_size as u64
            };
            // SAFETY: growing our own memfd.
            if need > size && unsafe { libc::ftruncate(fd, need as libc::off_t) } != 0 {
                return Err(io_err(format!("{}: ftruncate: {}", where_(), errno())));
            }
            mmap(at, len, rw, libc::MAP_SHARED | fixed, fd, info.offset)
                .map_err(|e| io_err(format!("{}: cannot map its memory: {e}", where_())))?
        } else {
            let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
            if info.flags & MAP_GROWSDOWN != 0 {
                flags |= libc::MAP_GROWSDOWN;
            }
            mmap(at, len, rw, flags | fixed, -1, 0)
                .map_err(|e| io_err(format!("{}: cannot stage it: {e}", where_())))?
        };
        if got != at {
            return Err(io_err(format!("{}: staged at the wrong address", where_())));
        }
        self.mappings.push(Staged {
            info: *info,
            path: path.to_vec(),
            at,
            private_file,
            done: Vec::new(),
            others,
        });
        Ok(())
    }

    /// No older image gives pages to `[a, b)`.
    fn close_range(&mut self, a: u64, b: u64) {
        for m in self.mappings.iter_mut().filter(|m| m.at != 0) {
            let (s, e) = (m.info.start.max(a), m.info.end.min(b));
            if s < e {
                let first = ((s - m.info.start) / PAGE as u64) as usize;
                m.mark(first, ((e - s) / PAGE as u64) as usize);
            }
        }
    }

    fn staged(&self, mapping_start: u64) -> io::Result<&Staged> {
        match self.mappings.last() {
            Some(s) if s.info.start == mapping_start && s.at != 0 => Ok(s),
            _ => Err(io_err(format!(
                "pages for mapping {mapping_start:#x}, which is not the one before them"
            ))),
        }
    }
}

impl Gather {
    /// Pages of an older image of the chain: they apply only where no
    /// newer image has given the page (or made the mapping anew).
    fn apply_older(&mut self, addr: u64, bytes: Option<&[u8]>, count: u64) {
        let mut page = 0u64;
        while page < count {
            let a = addr + page * PAGE as u64;
            let i = self.mappings.partition_point(|m| m.info.end <= a);
            let Some(m) = self.mappings.get_mut(i) else {
                return;
            };
            if m.at == 0 || a < m.info.start {
                // In no current mapping: skip to the next one.
                let next = m.info.start.max(a + PAGE as u64);
                page += (next - a).div_ceil(PAGE as u64);
                continue;
            }
            let idx = ((a - m.info.start) / PAGE as u64) as usize;
            if !m.is_done(idx) {
                m.mark(idx, 1);
                let dst = m.at + idx * PAGE;
                match bytes {
                    // SAFETY: one page inside the staged mapping, mapped
                    // read-write by `stage`.
                    Some(b) => unsafe {
                        core::ptr::copy_nonoverlapping(
                            b.as_ptr().add(page as usize * PAGE),
                            dst as *mut u8,
                            PAGE,
                        )
                    },
                    // SAFETY: as above.
                    None if m.private_file => unsafe {
                        core::ptr::write_bytes(dst as *mut u8, 0, PAGE)
                    },
                    None => {}
                }
            }
            page += 1;
        }
    }
}

impl Staged {
    fn is_done(&self, page: usize) -> bool {
        self.done
            .get(page / 64)
            .is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    fn mark(&mut self, page: usize, count: usize) {
        let pages = ((self.info.end - self.info.start) as usize) / PAGE;
        if self.done.is_empty() {
            self.done = vec![0; pages.div_ceil(64)];
        }
        for p in page..(page + count).min(pages) {
            self.done[p / 64] |= 1 << (p % 64);
        }
    }
}

impl Visitor for Gather {
    fn section(&mut self, _offset: u64, section: &Section) -> io::Result<()> {
        if self.older {
            // Of an older image only where its mappings were made anew
            // matters: below those, older pages are another mapping's.
            if let Section::Mapping(m) = section {
                if m.info.flags & MAP_FRESH != 0 {
                    self.fresh.push((m.info.start, m.info.end));
                }
            }
            return Ok(());
        }
        match section {
            Section::Process(p) => self.process = Some(p.clone()),
            Section::Rlimits(r) => self.rlimits = Some(*r),
            Section::Thread(t) => self.threads.push(t.clone()),
            Section::SigActions(s) => self.sigactions = Some(*s),
            Section::Itimers(i) => self.itimers = Some(*i),
            Section::AddressSpace(a) => self.address_space = Some(a.clone()),
            Section::Mapping(m) => {
                self.stage(&m.info, &m.path)?;
                if self.chained && m.info.flags & MAP_FRESH != 0 {
                    self.fresh.push((m.info.start, m.info.end));
                }
            }
            Section::Fd(f) => self.fds.push(f.clone()),
            Section::Pending(p) if !p.siginfo.is_empty() => {
                return Err(io_err(
                    "the image holds pending signals in a form this restorer does not queue".into(),
                ))
            }
            Section::PosixTimer(t) => self.timers.push(*t),
            _ => {}
        }
        Ok(())
    }

    fn page_data(&mut self, mapping_start: u64, addr: u64, bytes: &[u8]) -> io::Result<()> {
        if self.older {
            self.apply_older(addr, Some(bytes), (bytes.len() / PAGE) as u64);
            return Ok(());
        }
        let chained = self.chained;
        let s = self.staged(mapping_start)?;
        let off = (addr - s.info.start) as usize;
        if off + bytes.len() > (s.info.end - s.info.start) as usize {
            return Err(io_err(format!(
                "pages past the end of mapping {mapping_start:#x}"
            )));
        }
        if s.others {
            return Ok(());
        }
        // SAFETY: [at + off, at + off + len) lies inside the staged mapping,
        // mapped read-write by `stage`, and no other process writes it (its
        // content is this process's to give).
        unsafe {
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), (s.at + off) as *mut u8, bytes.len())
        };
        if chained {
            let last = self.mappings.len() - 1;
            self.mappings[last].mark(off / PAGE, bytes.len() / PAGE);
        }
        Ok(())
    }

    fn page_target(
        &mut self,
        mapping_start: u64,
        addr: u64,
        len: u64,
    ) -> io::Result<Option<&mut [u8]>> {
        if self.older {
            return Ok(None);
        }
        let chained = self.chained;
        let s = self.staged(mapping_start)?;
        let off = (addr - s.info.start) as usize;
        if off as u64 + len > s.info.end - s.info.start {
            return Err(io_err(format!(
                "pages past the end of mapping {mapping_start:#x}"
            )));
        }
        if s.others {
            // Read and checked, then left out by page_data.
            return Ok(None);
        }
        let at = s.at + off;
        if chained {
            let last = self.mappings.len() - 1;
            self.mappings[last].mark(off / PAGE, len as usize / PAGE);
        }
        // SAFETY: [at, at + len) lies inside the staged mapping, mapped
        // read-write by `stage`, written by no other process (its content
        // is this process's to give), and not otherwise borrowed while the
        // reader fills it.
        Ok(Some(unsafe {
            core::slice::from_raw_parts_mut(at as *mut u8, len as usize)
        }))
    }

    fn zero_pages(&mut self, mapping_start: u64, addr: u64, count: u64) -> io::Result<()> {
        if self.older {
            self.apply_older(addr, None, count);
            return Ok(());
        }
        let chained = self.chained;
        let s = self.staged(mapping_start)?;
        let off = (addr - s.info.start) as usize;
        let len = count as usize * PAGE;
        if off + len > (s.info.end - s.info.start) as usize {
            return Err(io_err(format!(
                "pages past the end of mapping {mapping_start:#x}"
            )));
        }
        if s.private_file {
            // SAFETY: as in page_data.
            unsafe { core::ptr::write_bytes((s.at + off) as *mut u8, 0, len) };
        }
        if chained {
            let last = self.mappings.len() - 1;
            self.mappings[last].mark(off / PAGE, count as usize);
        }
        Ok(())
    }

    fn fd_data(&mut self, fd: u32, _pos: u64, bytes: &[u8]) -> io::Result<()> {
        if !self.older {
            self.fd_data.entry(fd).or_default().extend_from_slice(bytes);
        }
        Ok(())
    }
}

/// The restorer's area: the interpreter, its data, the plan and a stack.
struct Area {
    base: usize,
    data: Vec<u8>,
}

impl Area {
    /// Put `bytes` in the area (8-byte aligned); returns their address.
    fn put(&mut self, bytes: &[u8]) -> u64 {
        while self.data.len() % 16 != 0 {
            self.data.push(0);
        }
        let at = self.base + self.data.len();
        self.data.extend_from_slice(bytes);
        at as u64
    }

    fn put_str(&mut self, s: &str) -> [u64; 2] {
        let line = format!("ferry: restore: {s}\n");
        [self.put(line.as_bytes()), line.len() as u64]
    }
}

fn as_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is a plain-data repr(C) struct of integers (callers pass
    // only such), so viewing its bytes is sound.
    unsafe { core::slice::from_raw_parts(v as *const T as *const u8, core::mem::size_of::<T>()) }
}

/// Everything the second stage needs.
struct Ready {
    area: usize,
    plan: usize,
    stack_top: usize,
    /// Kept open until the jump (the plan refers to their numbers).
    _fds: Vec<OwnedFd>,
    /// The shim's region, if the image holds it.
    region: Option<OwnedFd>,
    /// For an image of several processes: what lets the other restorers
    /// go, written and closed right before the jump.
    others: Option<tree::Others>,
}

impl Ready {
    fn go(self) -> u8 {
        if let Some(others) = self.others {
            others.release();
        }
        // SAFETY: `prepare` copied the interpreter to `area`, wrote a plan
        // ending in a JUMP at `plan` and left a stack below `stack_top`,
        // all in the area, which no op of the plan unmaps.
        unsafe { blob::run(self.area, self.plan, self.stack_top) }
    }
}

/// The first stage.
fn prepare(dir: &Path, feeder: Option<Feeder>) -> Result<Ready, String> {
    let image = Image::open(dir).map_err(|e| e.to_string())?;
    match (image.replay_position(), &feeder) {
        (Some(at), None) => {
            return Err(format!(
                "{}: the image is of a replay, at record #{} of its log: go on with `ferry replay --log LOG --from-image {} -- CMD`",
                dir.display(),
                at.records,
                dir.display()
            ))
        }
        (None, Some(_)) => {
            return Err(format!(
                "{}: the image is not of a replay (made by `ferry replay --checkpoint-at`): restore it with `ferry restore --image {}`",
                dir.display(),
                dir.display()
            ))
        }
        _ => {}
    }
    match image.manifest().entries.as_slice() {
        [one] => {
            let pids = [(one.vpid, std::process::id())];
            prepare_process(
                &image,
                one.vpid,
                tree::Given::default(),
                feeder.as_ref(),
                &pids,
            )
        }
        [] => Err(format!("{}: the image holds no process", dir.display())),
        _ => tree::prepare(&image, feeder.as_ref()),
    }
}

/// The first stage for process `vpid` of `image`, with the kernel objects
/// `given` for it; with a feeder, the region goes to it (the processes
/// restored being `pids`: virtual pid, real pid).
fn prepare_process(
    image: &Image,
    vpid: u32,
    mut given: tree::Given,
    feeder: Option<&Feeder>,
    pids: &[(u32, u32)],
) -> Result<Ready, String> {
    let mut g = Gather {
        next: WINDOW_START,
        ..Gather::default()
    };
    g.shared = given.take_shared(vpid);
    g.given = given;
    let file = image.process_path(vpid);
    // The newest image first: its mappings are the process's, its pages
    // the newest; then each older one gives the pages no newer one gave,
    // outside the ranges a newer one made anew.
    let chain = image.chain().map_err(|e| e.to_string())?;
    g.chained = chain.len() > 1;
    for (i, img) in chain.iter().enumerate() {
        if img.manifest().entry(vpid).is_none() {
            break;
        }
        g.older = i > 0;
        img.read_process(vpid, &mut g).map_err(|e| e.to_string())?;
        for (a, b) in std::mem::take(&mut g.fresh) {
            g.close_range(a, b);
        }
    }
    g.older = false;
    let name = file.display().to_string();
    let missing = |what: &str| format!("{name}: the image has no {what} section");
    let process = g.process.take().ok_or_else(|| missing("process"))?;
    let space = g
        .address_space
        .take()
        .ok_or_else(|| missing("address-space"))?;
    let sigactions = g.sigactions.ok_or_else(|| missing("signal-actions"))?;
    if g.threads.is_empty() {
        return Err(missing("thread"));
    }
    check_cpu_and_vdso(&name, &space, &g.mappings)?;
    for s in &g.mappings {
        let (a, b) = (s.info.start as usize, s.info.end as usize);
        if a < WINDOW_END + (16 << 30) && b > WINDOW_START {
            return Err(format!(
                "{name}: mapping {a:#x}-{b:#x} ({}) lies in the range {WINDOW_START:#x}-{:#x} the restorer needs for itself",
                show(&s.path),
                WINDOW_END + (16 << 30)
            ));
        }
    }
    // The process-wide state ordinary calls can set now.
    std::env::set_current_dir(OsStr::from_bytes(&process.cwd))
        .map_err(|e| format!("{name}: the working directory {}: {e}", show(&process.cwd)))?;
    // SAFETY: plain system calls on integers.
    unsafe {
        libc::umask(process.info.umask as libc::mode_t);
        libc::personality(process.info.personality as libc::c_ulong);
        // Lowering it below 0 takes privilege; without, it stays.
        libc::setpriority(libc::PRIO_PROCESS, 0, process.info.nice);
    }
    create_timers(&g.timers, process.info.vpid).map_err(|e| format!("{name}: {e}"))?;
    // Every descriptor the first stage opens for the program sits above
    // all of the program's numbers until the plan moves it.
    let floor = (g.fds.iter().map(|f| f.info.fd).max().unwrap_or(0) as i32 + 1).max(REGION_FD + 1);
    let mut fds = open_fds(&mut g, &name, floor)?;
    // The shim's region: the same memory as its mapping, at its number
    // again (the image leaves the descriptor out), so that the restored
    // process can be checkpointed in turn.
    let region = g
        .shared
        .iter()
        .find(|((_, _, p), _)| undeleted(p) == REGION_MEMFD.as_bytes())
        .map(|(_, fd)| fd);
    if let Some(feeder) = feeder {
        let memfd = region.ok_or_else(|| format!("{name}: the image holds no shim region"))?;
        hand_over(memfd, feeder, &name, pids)?;
    }
    let mut region_fd = None;
    if let Some(memfd) = region {
        let clone = || {
            memfd
                .try_clone()
                .map_err(|e| format!("{name}: the shim's region: {e}"))
        };
        let fd = lift(clone()?, floor).map_err(|e| format!("{name}: the shim's region: {e}"))?;
        fds.push((REGION_FD as u32, fd, false));
        region_fd = Some(clone()?);
    }
    let mut plan = Plan::new(&g, &process, &space, &sigactions, vpid, image.seq(), &name)?;
    // /proc/PID/exe names the program's executable again (where it still
    // exists; the kernel allows it once ferry's own is unmapped).
    let exe = open_path(&process.exe, libc::O_RDONLY)
        .ok()
        .and_then(|fd| lift(fd, floor).ok());
    if let Some(fd) = &exe {
        plan.op(
            IGNORE,
            libc::SYS_prctl,
            [
                PR_SET_MM,
                PR_SET_MM_EXE_FILE,
                fd.as_raw_fd() as u64,
                0,
                0,
                0,
            ],
            "",
        );
    }
    plan.fds(&fds, &g.epolls, floor as u32);
    let mut keep: Vec<OwnedFd> = fds.into_iter().map(|(_, fd, _)| fd).collect();
    keep.extend(exe);
    plan.finish(&g).map(|(area, plan_at, stack_top)| Ready {
        area,
        plan: plan_at,
        stack_top,
        _fds: keep,
        region: region_fd,
        others: None,
    })
}

/// Refuse an image whose register state or vDSO this machine cannot give
/// back.
fn check_cpu_and_vdso(
    name: &str,
    space: &ferry_image::read::AddressSpaceSection,
    mappings: &[Staged],
) -> Result<(), String> {
    let xcr0 = xgetbv0();
    if space.info.xcr0 & !xcr0 != 0 {
        return Err(format!(
            "{name}: the image's CPU saved register state this CPU does not have (XCR0 {:#x}, here {xcr0:#x}): restore on a host with the same kind of CPU",
            space.info.xcr0
        ));
    }
    let here = current_vdso().map_err(|e| format!("reading this process's vDSO: {e}"))?;
    let first = |k: u32| mappings.iter().find(|m| m.info.special == k);
    let Some(vdso) = first(SPECIAL_VDSO) else {
        return Ok(());
    };
    let vvar = first(SPECIAL_VVAR).unwrap_or(vdso);
    let theirs = (
        vdso.info.start - vvar.info.start,
        space.info.vdso_len,
        space.info.vdso_crc,
    );
    let ours = (here.vdso_start - here.group_start, here.vdso_len, here.crc);
    if theirs != ours {
        return Err(format!(
            "{name}: the vDSO of this kernel differs from the image's (offset {:#x}, {} bytes, checksum {:#010x} here; {:#x}, {} bytes, {:#010x} in the image): restore on a host that runs the same kernel",
            ours.0, ours.1, ours.2, theirs.0, theirs.1, theirs.2
        ));
    }
    Ok(())
}

struct Vdso {
    group_start: u64,
    vdso_start: u64,
    vdso_len: u64,
    crc: u32,
}

fn current_vdso() -> io::Result<Vdso> {
    let text = std::fs::read("/proc/self/maps")?;
    let mut out = vec![maps::Mapping::default(); 4096];
    let n =
        maps::parse(&text, &mut out).map_err(|_| io_err("cannot parse /proc/self/maps".into()))?;
    let mut group = u64::MAX;
    for m in &out[..n] {
        match m.kind {
            MapKind::Vvar | MapKind::VvarVclock => group = group.min(m.start as u64),
            MapKind::Vdso => {
                // SAFETY: the vDSO is mapped readable for the life of the
                // process.
                let bytes =
                    unsafe { core::slice::from_raw_parts(m.start as *const u8, m.end - m.start) };
                return Ok(Vdso {
                    group_start: group.min(m.start as u64),
                    vdso_start: m.start as u64,
                    vdso_len: (m.end - m.start) as u64,
                    crc: crc32c::crc32c(bytes),
                });
            }
            _ => {}
        }
    }
    Err(io_err("this process has no vDSO".into()))
}

fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: xgetbv with ecx = 0 reads XCR0; every x86_64 CPU Linux runs
    // on with XSAVE has it (the kernel sets OSXSAVE).
    unsafe {
        core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack))
    };
    (hi as u64) << 32 | lo as u64
}

/// Move `fd` above every descriptor the program uses.
fn lift(fd: OwnedFd, floor: i32) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own.
    let high = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor) };
    if high < 0 {
        return Err(errno());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(high) })
}

fn set_status_flags(fd: RawFd, flags: u32) {
    // SAFETY: F_SETFL on a descriptor we own; the kernel keeps only the
    // flags it can change.
    unsafe { libc::fcntl(fd, libc::F_SETFL, flags as libc::c_int) };
}

fn write_all_fd(fd: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: writing our own buffer to our own descriptor.
        let n = unsafe { libc::write(fd, bytes.as_ptr() as *const _, bytes.len()) };
        if n < 0 {
            let e = errno();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

fn open_path(path: &[u8], flags: i32) -> io::Result<OwnedFd> {
    let c = cstring(path)?;
    // SAFETY: open on a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Open every descriptor of the image (but 0 to 2) at a number above all
/// of them. Returns (target number, descriptor, FD_CLOEXEC).
fn open_fds(g: &mut Gather, name: &str, floor: i32) -> Result<Vec<(u32, OwnedFd, bool)>, String> {
    let mut out: Vec<(u32, OwnedFd, bool)> = Vec::new();
    let mut pipes: HashMap<u64, (OwnedFd, OwnedFd)> = HashMap::new();
    let mut pairs: HashMap<u64, [OwnedFd; 2]> = HashMap::new();
    let mut epolls = Vec::new();
    let fds = std::mem::take(&mut g.fds);
    for f in &fds {
        let n = f.info.fd;
        if n <= 2 {
            continue;
        }
        if f.info.shares != 0 {
            // A dup of a lower descriptor: the same open file description.
            let of = f.info.shares - 1;
            let Some((_, base, _)) = out.iter().find(|(m, _, _)| *m == of) else {
                return Err(format!(
                    "{name}: descriptor {n}: shares its file with descriptor {of}, which the image does not hold first"
                ));
            };
            let fd = base
                .try_clone()
                .map_err(|e| format!("{name}: descriptor {n}: {e}"))?;
            let fd = lift(fd, floor).map_err(|e| format!("{name}: descriptor {n}: {e}"))?;
            out.push((n, fd, f.info.fd_flags & libc::FD_CLOEXEC as u32 != 0));
            continue;
        }
        let data = g.fd_data.remove(&n).unwrap_or_default();
        let what = |e: &dyn std::fmt::Display| format!("{name}: descriptor {n}: {e}");
        let status = f.info.status_flags;
        let access = (status as i32)
            & (libc::O_ACCMODE
                | libc::O_APPEND
                | libc::O_NONBLOCK
                | libc::O_DIRECT
                | libc::O_NOATIME
                | libc::O_SYNC
                | libc::O_DSYNC
                | libc::O_PATH
                | libc::O_DIRECTORY);
        let fd: OwnedFd = match &f.kind {
            FdKind::Regular(r, path) => {
                if r.flags & REGULAR_UNLINKED != 0 {
                    restore_unlinked(g, path, &data, access, r.offset).map_err(|e| what(&e))?
                } else {
                    let fd = open_path(path, access & !libc::O_APPEND | (access & libc::O_APPEND))
                        .map_err(|e| what(&format!("{}: {e}", show(path))))?;
                    seek(&fd, r.offset).map_err(|e| what(&format!("{}: {e}", show(path))))?;
                    fd
                }
            }
            FdKind::Pipe(p, path) if p.fifo != 0 && g.given.fifos.contains_key(path) => {
                // Opened and refilled for every process of the image; its
                // keeper (a reader and a writer) holds it open meanwhile.
                let mode = if p.end == 0 {
                    libc::O_RDONLY
                } else {
                    libc::O_WRONLY
                };
                let fd = open_path(path, mode | libc::O_NONBLOCK)
                    .map_err(|e| what(&format!("FIFO {}: {e}", show(path))))?;
                set_status_flags(fd.as_raw_fd(), status);
                fd
            }
            FdKind::Pipe(p, path) if p.fifo != 0 => {
                // A reader and writer held open while the data goes back,
                // so that neither open blocks.
                let keep = open_path(path, libc::O_RDWR | libc::O_NONBLOCK)
                    .map_err(|e| what(&format!("FIFO {}: {e}", show(path))))?;
                let mode = if p.end == 0 {
                    libc::O_RDONLY
                } else {
                    libc::O_WRONLY
                };
                let fd = open_path(path, mode | libc::O_NONBLOCK)
                    .map_err(|e| what(&format!("FIFO {}: {e}", show(path))))?;
                if p.end == 0 && !data.is_empty() {
                    write_all_fd(keep.as_raw_fd(), &data)
                        .map_err(|e| what(&format!("refilling FIFO {}: {e}", show(path))))?;
                }
                set_status_flags(fd.as_raw_fd(), status);
                g.keep.push(keep);
                fd
            }
            FdKind::Pipe(p, _) if g.given.pipes.contains_key(&p.pipe_id) => {
                let (r, w) = &g.given.pipes[&p.pipe_id];
                let end = if p.end == 0 { r } else { w };
                let dup = end.try_clone().map_err(|e| what(&e))?;
                set_status_flags(dup.as_raw_fd(), status);
                dup
            }
            FdKind::Pipe(p, _) => {
                if let std::collections::hash_map::Entry::Vacant(v) = pipes.entry(p.pipe_id) {
                    v.insert(new_pipe(p.capacity).map_err(|e| what(&format!("pipe2: {e}")))?);
                }
                let (r, w) = &pipes[&p.pipe_id];
                if p.end == 0 && !data.is_empty() {
                    set_status_flags(w.as_raw_fd(), libc::O_NONBLOCK as u32);
                    write_all_fd(w.as_raw_fd(), &data).map_err(|e| {
                        what(&format!(
                            "refilling the pipe with {} bytes: {e}",
                            data.len()
                        ))
                    })?;
                    set_status_flags(w.as_raw_fd(), 0);
                }
                let end = if p.end == 0 { r } else { w };
                let dup = end.try_clone().map_err(|e| what(&e))?;
                set_status_flags(dup.as_raw_fd(), status);
                dup
            }
            FdKind::Eventfd(e) => {
                let flags = libc::EFD_CLOEXEC
                    | (e.flags as i32 & (libc::EFD_SEMAPHORE | libc::EFD_NONBLOCK));
                // SAFETY: eventfd with a plain initial value and flags.
                let fd = unsafe { libc::eventfd(0, flags) };
                if fd < 0 {
                    return Err(what(&format!("eventfd: {}", errno())));
                }
                // SAFETY: a new descriptor we own.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                if e.count != 0 {
                    write_all_fd(fd.as_raw_fd(), &e.count.to_ne_bytes())
                        .map_err(|err| what(&format!("eventfd count {}: {err}", e.count)))?;
                }
                fd
            }
            FdKind::Timerfd(t) => new_timerfd(t).map_err(|e| what(&format!("timerfd: {e}")))?,
            FdKind::Signalfd(sf) => {
                let mask = sf.mask;
                let flags = libc::SFD_CLOEXEC | (sf.flags as i32 & libc::SFD_NONBLOCK);
                // SAFETY: signalfd4 with a new descriptor (-1) and an 8-byte
                // mask of our own.
                let fd = unsafe {
                    libc::syscall(libc::SYS_signalfd4, -1, &mask as *const u64, 8, flags)
                };
                if fd < 0 {
                    return Err(what(&format!("signalfd: {}", errno())));
                }
                // SAFETY: a new descriptor we own.
                unsafe { OwnedFd::from_raw_fd(fd as i32) }
            }
            FdKind::Epoll(_, entries) => {
                // SAFETY: a plain system call.
                let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
                if fd < 0 {
                    return Err(what(&format!("epoll_create1: {}", errno())));
                }
                for e in entries {
                    if !fds.iter().any(|f| f.info.fd == e.fd) {
                        return Err(what(&format!(
                            "the epoll set watches descriptor {}, which the image does not hold",
                            e.fd
                        )));
                    }
                }
                // The entries are added once every descriptor has its own
                // number (an entry is keyed by the number it was added as).
                epolls.push((n, entries.clone()));
                // SAFETY: a new descriptor we own.
                unsafe { OwnedFd::from_raw_fd(fd) }
            }
            FdKind::UnixPair(u) if g.given.pairs.contains_key(&u.pair_id) => {
                let mine = &g.given.pairs[&u.pair_id][(u.end & 1) as usize];
                let fd = mine.try_clone().map_err(|e| what(&e))?;
                set_status_flags(fd.as_raw_fd(), status);
                fd
            }
            FdKind::UnixPair(u) => {
                let key = u.pair_id;
                if let std::collections::hash_map::Entry::Vacant(v) = pairs.entry(key) {
                    v.insert(
                        new_socketpair(u.sock_type)
                            .map_err(|e| what(&format!("socketpair: {e}")))?,
                    );
                }
                let ends = &pairs[&key];
                let mine = &ends[(u.end & 1) as usize];
                let peer = &ends[(u.end & 1 ^ 1) as usize];
                refill_socket(peer.as_raw_fd(), u.sock_type as i32, &data).map_err(|e| {
                    what(&format!(
                        "refilling a socketpair with {} bytes: {e}",
                        data.len()
                    ))
                })?;
                if u.shutdown & 1 != 0 {
                    // SAFETY: shutdown of our own socket.
                    unsafe { libc::shutdown(peer.as_raw_fd(), libc::SHUT_WR) };
                }
                let fd = mine.try_clone().map_err(|e| what(&e))?;
                set_status_flags(fd.as_raw_fd(), status);
                fd
            }
            FdKind::TcpListen(info, opts)
            | FdKind::Udp(info, opts)
            | FdKind::TcpUnbound(info, opts) => {
                let how = match f.kind {
                    FdKind::Udp(..) => Socket::Udp,
                    FdKind::TcpUnbound(..) => Socket::TcpUnbound,
                    _ => Socket::TcpListen,
                };
                let fd = new_socket(info, opts, how).map_err(|e| what(&e))?;
                set_status_flags(fd.as_raw_fd(), status);
                fd
            }
            FdKind::Other(desc) => {
                return Err(what(&format!(
                    "{} is a kind of descriptor this restorer cannot rebuild yet",
                    show(desc)
                )))
            }
        };
        let fd = lift(fd, floor).map_err(|e| what(&e))?;
        out.push((n, fd, f.info.fd_flags & libc::FD_CLOEXEC as u32 != 0));
    }
    g.epolls = epolls;
    Ok(out)
}

/// A timerfd armed as the image's was: the time left to its next
/// expiration, then its interval; one that had expired unread fires at
/// once (the count of expirations comes back as 1).
fn new_timerfd(t: &Timerfd) -> io::Result<OwnedFd> {
    let flags = libc::TFD_CLOEXEC | (t.flags as i32 & libc::TFD_NONBLOCK);
    // SAFETY: a plain system call.
    let fd = unsafe { libc::timerfd_create(t.clock as i32, flags) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: a new descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let ts = |v: &Timespec| libc::timespec {
        tv_sec: v.sec as libc::time_t,
        tv_nsec: v.nsec as libc::c_long,
    };
    let mut value = ts(&t.value);
    if t.ticks > 0
        || (value.tv_sec == 0
            && value.tv_nsec == 0
            && (t.interval.sec != 0 || t.interval.nsec != 0))
    {
        value = libc::timespec {
            tv_sec: 0,
            tv_nsec: 1,
        };
    }
    if value.tv_sec != 0 || value.tv_nsec != 0 {
        let spec = libc::itimerspec {
            it_interval: ts(&t.interval),
            it_value: value,
        };
        // SAFETY: timerfd_settime on our own descriptor and structs.
        if unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, core::ptr::null_mut()) } != 0 {
            return Err(errno());
        }
    }
    Ok(fd)
}

/// A new unix socket pair of type `ty`.
fn new_socketpair(ty: u32) -> io::Result<[OwnedFd; 2]> {
    let mut sv = [0i32; 2];
    // SAFETY: socketpair into a local array.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            ty as i32 | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    } != 0
    {
        return Err(errno());
    }
    // SAFETY: two new descriptors we own.
    Ok(unsafe { [OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])] })
}

/// Queue `data` (a stream's bytes, or datagrams each after a u32 length)
/// on socket `fd` for its peer to read.
fn refill_socket(fd: RawFd, ty: i32, data: &[u8]) -> io::Result<()> {
    set_status_flags(fd, libc::O_NONBLOCK as u32);
    let r = if ty == libc::SOCK_STREAM {
        write_all_fd(fd, data)
    } else {
        let mut rest = data;
        let mut r = Ok(());
        while rest.len() >= 4 {
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let Some(msg) = rest.get(4..4 + len) else {
                r = Err(io_err("a datagram longer than the data".into()));
                break;
            };
            // SAFETY: send of our own buffer on our own socket.
            if unsafe { libc::send(fd, msg.as_ptr() as *const _, msg.len(), 0) } < 0 {
                r = Err(errno());
                break;
            }
            rest = &rest[4 + len..];
        }
        r
    };
    set_status_flags(fd, 0);
    r
}

/// A UDP socket, or a listening TCP one, bound where the image's was,
/// with its options.
/// What [`new_socket`] makes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Socket {
    /// A listening TCP socket.
    TcpListen,
    /// A bound UDP socket.
    Udp,
    /// A TCP socket as `socket` made it.
    TcpUnbound,
}

/// A socket as the image's: its options set, then bound and listening as
/// `how` says.
fn new_socket(info: &SocketInfo, opts: &[SockOpt], how: Socket) -> Result<OwnedFd, String> {
    let udp = how == Socket::Udp;
    let ty = if udp {
        libc::SOCK_DGRAM
    } else {
        libc::SOCK_STREAM
    };
    let family = info.family as i32;
    // SAFETY: a plain system call.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", errno()));
    }
    // SAFETY: a new descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    for o in opts {
        let mut v = i32::from_ne_bytes([o.value[0], o.value[1], o.value[2], o.value[3]]);
        if o.level == libc::SOL_SOCKET && (o.name == libc::SO_RCVBUF || o.name == libc::SO_SNDBUF) {
            // The kernel doubles what it is given, and reports the double.
            v /= 2;
        }
        // SAFETY: setsockopt with a 4-byte value of our own.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                o.level,
                o.name,
                &v as *const i32 as *const _,
                4,
            )
        };
    }
    if how == Socket::TcpUnbound {
        return Ok(fd);
    }
    let (addr, text) = sockaddr(info);
    // SAFETY: bind with a sockaddr of the right length for its family.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            addr.as_ptr() as *const libc::sockaddr,
            addr.len() as u32,
        )
    } != 0
    {
        return Err(format!("bind to {text}: {}", errno()));
    }
    // SAFETY: listen on our own socket.
    if !udp && unsafe { libc::listen(fd.as_raw_fd(), info.backlog.max(1) as i32) } != 0 {
        return Err(format!("listen on {text}: {}", errno()));
    }
    Ok(fd)
}

/// The socket address of `info`, as bytes, and as text for messages.
fn sockaddr(info: &SocketInfo) -> (Vec<u8>, String) {
    if info.family as i32 == libc::AF_INET {
        let mut sa: libc::sockaddr_in = unsafe_zeroed();
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_port = info.port.to_be();
        sa.sin_addr.s_addr =
            u32::from_ne_bytes([info.addr[0], info.addr[1], info.addr[2], info.addr[3]]);
        let ip = std::net::Ipv4Addr::new(info.addr[0], info.addr[1], info.addr[2], info.addr[3]);
        (as_bytes(&sa).to_vec(), format!("{ip}:{}", info.port))
    } else {
        let mut sa: libc::sockaddr_in6 = unsafe_zeroed();
        sa.sin6_family = libc::AF_INET6 as u16;
        sa.sin6_port = info.port.to_be();
        sa.sin6_addr.s6_addr = info.addr;
        sa.sin6_scope_id = info.scope_id;
        let ip = std::net::Ipv6Addr::from(info.addr);
        (as_bytes(&sa).to_vec(), format!("[{ip}]:{}", info.port))
    }
}

fn unsafe_zeroed<T: Copy>() -> T {
    // SAFETY: only called for libc's sockaddr structs, plain integers for
    // which all-zero bytes are valid.
    unsafe { core::mem::zeroed() }
}

const PR_TIMER_CREATE_RESTORE_IDS: i32 = 77;

/// Create the image's POSIX timers under their own ids, disarmed (the plan
/// arms them once signals are blocked: a signal now would reach ferry).
fn create_timers(timers: &[PosixTimer], vpid: u32) -> Result<(), String> {
    if timers.is_empty() {
        return Ok(());
    }
    // SAFETY: a prctl with integer arguments.
    if unsafe { libc::prctl(PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "the image holds POSIX timers, and this kernel cannot create them under their ids (PR_TIMER_CREATE_RESTORE_IDS, Linux 6.15 and later): {}",
            errno()
        ));
    }
    let result = timers.iter().try_for_each(|t| {
        let mut sev = [0u8; 64];
        sev[..8].copy_from_slice(&t.value.to_ne_bytes());
        sev[8..12].copy_from_slice(&t.signo.to_ne_bytes());
        sev[12..16].copy_from_slice(&t.notify.to_ne_bytes());
        if t.notify & libc::SIGEV_THREAD_ID != 0 {
            if t.notify_vtid != vpid {
                return Err(format!(
                    "POSIX timer {} notifies thread {}, and only timers that notify the process or its main thread can be restored yet",
                    t.id, t.notify_vtid
                ));
            }
            // SAFETY: a plain system call; this thread becomes the main one.
            let tid = unsafe { libc::gettid() };
            sev[16..20].copy_from_slice(&tid.to_ne_bytes());
        }
        let mut id: i32 = t.id;
        // SAFETY: timer_create with a sigevent of the kernel's size and
        // room for the id (which, in restore mode, also says which id).
        let r = unsafe { libc::syscall(libc::SYS_timer_create, t.clock, sev.as_ptr(), &mut id as *mut i32) };
        if r != 0 {
            return Err(format!("creating POSIX timer {}: {}", t.id, errno()));
        }
        if id != t.id {
            return Err(format!("POSIX timer {} came back as timer {id}", t.id));
        }
        Ok(())
    });
    // SAFETY: as above.
    unsafe { libc::prctl(PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0) };
    result
}

/// A new pipe of `capacity` bytes (0: the default).
fn new_pipe(capacity: u32) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut ends = [0i32; 2];
    // SAFETY: pipe2 into a local array.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(errno());
    }
    // SAFETY: pipe2 returned two new descriptors we own.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    if capacity != 0 {
        // SAFETY: F_SETPIPE_SZ on our own pipe; a failure leaves the
        // default size, and a refill too large for it fails visibly.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, capacity as i32) };
    }
    Ok((r, w))
}

fn seek(fd: &OwnedFd, offset: u64) -> io::Result<()> {
    // SAFETY: lseek on a descriptor we own.
    if unsafe { libc::lseek(fd.as_raw_fd(), offset as libc::off_t, libc::SEEK_SET) } < 0 {
        return Err(errno());
    }
    Ok(())
}

/// An open file whose name is gone: the same memfd as a mapping of it, or
/// a new unnamed file with its content.
fn restore_unlinked(
    g: &mut Gather,
    path: &[u8],
    data: &[u8],
    access: i32,
    offset: u64,
) -> io::Result<OwnedFd> {
    let fd = if let Some(((_, _, _), memfd)) = g.shared.iter().find(|((_, _, p), _)| p == path) {
        memfd.try_clone()?
    } else if is_memfd(path) {
        let name = cstring(undeleted(path).strip_prefix(b"/memfd:").unwrap_or(b"ferry"))?;
        // SAFETY: memfd_create on a NUL-terminated name.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(errno());
        }
        // SAFETY: a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        write_all_fd(fd.as_raw_fd(), data)?;
        fd
    } else {
        // Made under its old name and unlinked again, so that
        // /proc/self/fd shows what it showed; where that name is taken
        // now, an unnamed file in the same directory (or /tmp).
        let p = undeleted(path);
        let fd = match open_path(p, libc::O_CREAT | libc::O_EXCL | libc::O_RDWR) {
            Ok(fd) => {
                let c = cstring(p)?;
                // SAFETY: unlink of the NUL-terminated path just created.
                unsafe { libc::unlink(c.as_ptr()) };
                fd
            }
            Err(_) => {
                let p = Path::new(OsStr::from_bytes(p));
                let dir = p
                    .parent()
                    .filter(|d| d.is_dir())
                    .unwrap_or(Path::new("/tmp"));
                open_path(dir.as_os_str().as_bytes(), libc::O_TMPFILE | libc::O_RDWR)
                    .map_err(|e| io_err(format!("O_TMPFILE in {}: {e}", dir.display())))?
            }
        };
        write_all_fd(fd.as_raw_fd(), data)?;
        // Reopened for the access mode the program had.
        let again = format!("/proc/self/fd/{}", fd.as_raw_fd());
        open_path(again.as_bytes(), access)?
    };
    seek(&fd, offset)?;
    set_status_flags(fd.as_raw_fd(), access as u32);
    Ok(fd)
}

/// The plan under construction.
struct Plan {
    area: Area,
    ops: Vec<Op>,
    /// Where the area starts, its length once finished.
    len: usize,
    restored_at: u64,
}

impl Plan {
    fn op(&mut self, kind: u64, nr: i64, args: [u64; 6], what: &str) {
        let msg = self.area.put_str(what);
        self.ops.push(Op {
            kind,
            nr: nr as u64,
            args,
            extra: [0; 2],
            msg,
        });
    }

    fn new(
        g: &Gather,
        process: &ferry_image::read::Process,
        space: &ferry_image::read::AddressSpaceSection,
        sigactions: &SigActions,
        vpid: u32,
        seq: u64,
        name: &str,
    ) -> Result<Plan, String> {
        // The area follows the staged mappings; its size is known once the
        // plan is written, so it is placed at the window's end (16 GiB are
        // left free there for it).
        let base = WINDOW_END;
        let mut p = Plan {
            area: Area {
                base,
                data: Vec::new(),
            },
            ops: Vec::new(),
            len: 0,
            restored_at: 0,
        };
        p.area.data.extend_from_slice(blob::code());
        let restored = Restored {
            magic: RESTORED_MAGIC,
            seq,
            area_start: base as u64,
            area_len: 0,
            threads: g.threads.len() as u64,
        };
        p.restored_at = p.area.put(as_bytes(&restored));
        let all = p.area.put(&u64::MAX.to_le_bytes());
        p.op(
            FATAL,
            libc::SYS_rt_sigprocmask,
            [libc::SIG_SETMASK as u64, all, 0, 8, 0, 0],
            "blocking signals failed",
        );
        if let Some((addr, len, sig)) = own_rseq() {
            p.op(
                FATAL,
                libc::SYS_rseq,
                [addr, len as u64, RSEQ_FLAG_UNREGISTER, sig as u64, 0, 0],
                "unregistering ferry's rseq area failed",
            );
        }
        let lo = WINDOW_START as u64;
        let hi = (WINDOW_END + (16 << 30)) as u64;
        p.op(
            FATAL,
            libc::SYS_munmap,
            [PAGE as u64, lo - PAGE as u64, 0, 0, 0, 0],
            "unmapping ferry's memory failed",
        );
        p.op(
            FATAL,
            libc::SYS_munmap,
            [hi, TASK_TOP as u64 - hi, 0, 0, 0, 0],
            "unmapping ferry's memory failed",
        );
        // The window's unused parts hold nothing: the staged mappings are
        // all that is there, and each moves away below.
        let group = g
            .mappings
            .iter()
            .filter(|m| m.info.special != SPECIAL_NONE)
            .map(|m| m.info.start)
            .min();
        if let Some(at) = group {
            p.op(
                FATAL,
                libc::SYS_arch_prctl,
                [ARCH_MAP_VDSO_64, at, 0, 0, 0, 0],
                &format!("mapping the vDSO at {at:#x} failed"),
            );
        }
        for m in g.mappings.iter().filter(|m| m.at != 0) {
            let len = m.info.end - m.info.start;
            p.op(
                FATAL,
                libc::SYS_mprotect,
                [m.at as u64, len, m.info.prot as u64, 0, 0, 0],
                &format!(
                    "setting the protection of mapping {:#x}-{:#x} failed",
                    m.info.start, m.info.end
                ),
            );
            p.op(
                FATAL,
                libc::SYS_mremap,
                [
                    m.at as u64,
                    len,
                    len,
                    (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                    m.info.start,
                    0,
                ],
                &format!(
                    "moving mapping {:#x}-{:#x} ({}) to its address failed",
                    m.info.start,
                    m.info.end,
                    show(&m.path)
                ),
            );
        }
        let a = &space.info;
        let auxv = if space.auxv.is_empty() || space.auxv.len() > 512 {
            (0, 0)
        } else {
            (p.area.put(&space.auxv), space.auxv.len() as u32)
        };
        let mm = MmMap {
            start_code: a.start_code,
            end_code: a.end_code,
            start_data: a.start_data,
            end_data: a.end_data,
            start_brk: a.start_brk,
            brk: a.brk,
            start_stack: a.start_stack,
            arg_start: a.arg_start,
            arg_end: a.arg_end,
            env_start: a.env_start,
            env_end: a.env_end,
            auxv: auxv.0,
            auxv_size: auxv.1,
            exe_fd: u32::MAX,
        };
        let mm_at = p.area.put(as_bytes(&mm));
        p.op(
            FATAL,
            libc::SYS_prctl,
            [PR_SET_MM, PR_SET_MM_MAP, mm_at, core::mem::size_of::<MmMap>() as u64, 0, 0],
            "PR_SET_MM_MAP (the heap, stack and argument addresses) failed: the kernel needs CONFIG_CHECKPOINT_RESTORE",
        );
        let comm = p.area.put(&process.info.comm);
        p.op(IGNORE, libc::SYS_prctl, [PR_SET_NAME, comm, 0, 0, 0, 0], "");
        for (i, act) in sigactions.actions.iter().enumerate() {
            let sig = i as u64 + 1;
            if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
                continue;
            }
            let at = p.area.put(as_bytes(act));
            p.op(IGNORE, libc::SYS_rt_sigaction, [sig, at, 0, 8, 0, 0], "");
        }
        let _ = (vpid, name);
        Ok(p)
    }

    /// Descriptors to their numbers, ferry's own closed, then the limits,
    /// timers and threads.
    fn fds(&mut self, fds: &[(u32, OwnedFd, bool)], epolls: &[(u32, Vec<EpollEntry>)], floor: u32) {
        let targets: Vec<u32> = fds.iter().map(|f| f.0).collect();
        for (n, fd, cloexec) in fds {
            let flags = if *cloexec { libc::O_CLOEXEC as u64 } else { 0 };
            self.op(
                FATAL,
                libc::SYS_dup3,
                [fd.as_raw_fd() as u64, *n as u64, flags, 0, 0, 0],
                &format!("moving descriptor {n} to its number failed"),
            );
        }
        for (epfd, entries) in epolls {
            for e in entries {
                let mut ev = [0u8; 12];
                ev[..4].copy_from_slice(&e.events.to_ne_bytes());
                ev[4..].copy_from_slice(&e.data.to_ne_bytes());
                let at = self.area.put(&ev);
                self.op(
                    FATAL,
                    libc::SYS_epoll_ctl,
                    [
                        *epfd as u64,
                        libc::EPOLL_CTL_ADD as u64,
                        e.fd as u64,
                        at,
                        0,
                        0,
                    ],
                    &format!("adding descriptor {} to epoll set {epfd} failed", e.fd),
                );
            }
        }
        // Every descriptor of ferry's that is not one of the program's: all
        // open now but 0 to 2 and the targets (the staged ones are above
        // them all and go with close_range below).
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            for e in dir.flatten() {
                let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if n > 2 && n < floor && !targets.contains(&n) {
                    self.op(IGNORE, libc::SYS_close, [n as u64, 0, 0, 0, 0, 0], "");
                }
            }
        }
        self.op(
            IGNORE,
            libc::SYS_close_range,
            [floor as u64, u32::MAX as u64, 0, 0, 0, 0],
            "",
        );
    }

    fn finish(mut self, g: &Gather) -> Result<(usize, usize, usize), String> {
        if let Some(r) = &g.rlimits {
            for (i, l) in r.limits.iter().enumerate() {
                let at = self.area.put(as_bytes(l));
                self.op(IGNORE, libc::SYS_prlimit64, [0, i as u64, at, 0, 0, 0], "");
            }
        }
        if let Some(t) = &g.itimers {
            for (which, it) in t.timers.iter().enumerate() {
                if it.value_sec == 0 && it.value_usec == 0 {
                    continue;
                }
                let at = self.area.put(as_bytes(it));
                self.op(
                    IGNORE,
                    libc::SYS_setitimer,
                    [which as u64, at, 0, 0, 0, 0],
                    "",
                );
            }
        }
        for t in &g.timers {
            if t.remaining.sec == 0 && t.remaining.nsec == 0 {
                continue;
            }
            let spec: [i64; 4] = [
                t.interval.sec,
                t.interval.nsec,
                t.remaining.sec,
                t.remaining.nsec,
            ];
            let at = self.area.put(as_bytes(&spec));
            self.op(
                FATAL,
                libc::SYS_timer_settime,
                [t.id as u64, 0, at, 0, 0, 0],
                &format!("arming POSIX timer {} failed", t.id),
            );
        }
        let vpid = g.process.as_ref().map(|p| p.info.vpid).unwrap_or(0);
        let main = g
            .threads
            .iter()
            .find(|t| t.info.vtid == vpid)
            .or(g.threads.first())
            .ok_or("the image has no thread")?;
        for t in &g.threads {
            if t.info.flags & THREAD_PARKED == 0 {
                return Err(format!(
                    "thread {} of the image was not stopped by the shim: the image cannot be resumed",
                    t.info.vtid
                ));
            }
        }
        let flags = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS) as u64;
        for t in g.threads.iter().filter(|t| t.info.vtid != main.info.vtid) {
            let msg = self
                .area
                .put_str(&format!("starting thread {} failed", t.info.vtid));
            self.ops.push(Op {
                kind: THREAD,
                nr: libc::SYS_clone as u64,
                args: [flags, t.info.resume_rsp, 0, 0, t.info.regs.fs_base, 0],
                extra: [self.restored_at, t.info.resume_rip],
                msg,
            });
        }
        self.op(
            FATAL,
            libc::SYS_arch_prctl,
            [ARCH_SET_FS, main.info.regs.fs_base, 0, 0, 0, 0],
            "setting the main thread's TLS failed",
        );
        let msg = self.area.put_str("");
        self.ops.push(Op {
            kind: JUMP,
            nr: 0,
            args: [main.info.resume_rsp, main.info.resume_rip, 0, 0, 0, 0],
            extra: [self.restored_at, 0],
            msg,
        });
        // Lay out: code and data, the plan, the stack.
        let ops: Vec<u8> = self.ops.iter().flat_map(|o| as_bytes(o).to_vec()).collect();
        let plan_at = self.area.put(&ops) as usize;
        let stack_at = (self.area.base + self.area.data.len() + 15) & !15;
        let stack_top = stack_at + STACK_LEN;
        let len = (stack_top - self.area.base + PAGE - 1) & !(PAGE - 1);
        self.len = len;
        // The area's length goes into the Restored the shim reads.
        let restored_off = self.restored_at as usize - self.area.base;
        let area_len_off = restored_off + core::mem::offset_of!(Restored, area_len);
        self.area.data[area_len_off..area_len_off + 8].copy_from_slice(&(len as u64).to_le_bytes());
        let base = mmap(
            self.area.base,
            len,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
        .map_err(|e| format!("mapping the restorer's area at {:#x}: {e}", self.area.base))?;
        // SAFETY: the area was just mapped, `len` bytes, and data fits in
        // it (len covers data, plan and stack).
        unsafe {
            core::ptr::copy_nonoverlapping(
                self.area.data.as_ptr(),
                base as *mut u8,
                self.area.data.len(),
            )
        };
        Ok((base, plan_at, stack_top))
    }
}

/// This thread's rseq registration: glibc's, at the thread pointer plus
/// `__rseq_offset`.
fn own_rseq() -> Option<(u64, u32, u32)> {
    extern "C" {
        static __rseq_offset: isize;
        static __rseq_size: u32;
    }
    // SAFETY: glibc (2.35 and later) exports both as constants set at start.
    let (off, size) = unsafe { (__rseq_offset, __rseq_size) };
    if size == 0 {
        return None;
    }
    let tp: u64;
    // SAFETY: reads the thread pointer (fs:0 holds it on x86_64).
    unsafe { core::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly)) };
    Some(((tp as i64 + off as i64) as u64, 32, 0x5305_3053))
}

#[cfg(test)]
mod tests {
    use super::own_process_table;
    use ferry_host::region::{live_pids, SharedRegion};
    use ferry_ring::Mode;

    #[test]
    fn a_restored_region_names_the_restored_process_not_the_checkpointed_one() {
        let shared = SharedRegion::create(Mode::Replay).unwrap();
        let r = shared.region();
        // Slot 0 is the root's, virtual pid 1, with the pid the program had
        // on the host it was checkpointed on: here it may be any process,
        // which the feeder would kill.
        r.proc(0)
            .real_pid
            .store(std::process::id() + 1, std::sync::atomic::Ordering::Release);
        own_process_table(&r, &[(1, std::process::id())]);
        assert_eq!(live_pids(&r), [std::process::id() as i32]);
    }

    #[test]
    fn a_restored_region_names_each_restored_process_and_no_other() {
        let shared = SharedRegion::create(Mode::Replay).unwrap();
        let r = shared.region();
        let child = r.alloc_proc(2, 1).unwrap();
        let stale = || {
            for (slot, pid) in [(0, 4_000_001), (child, 4_000_002)] {
                r.proc(slot)
                    .real_pid
                    .store(pid, std::sync::atomic::Ordering::Release);
            }
        };
        // Both restored: each slot names its own restorer's pid.
        stale();
        own_process_table(&r, &[(2, 4_100_002), (1, 4_100_001)]);
        let mut pids = live_pids(&r);
        pids.sort();
        assert_eq!(pids, [4_100_001, 4_100_002]);
        // A slot whose process is not known yet names none until its shim
        // does, never the stale pid.
        stale();
        own_process_table(&r, &[(1, 4_100_001)]);
        assert_eq!(live_pids(&r), [4_100_001]);
    }
}
