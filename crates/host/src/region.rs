//! The shared region on the CLI's side: the `memfd` it creates, its mapping,
//! and the process-shared futex the ring waits with.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

use ferry_ring::{Futex, Mode, Region, MAX_PROCS, PROC_LIVE, REGION_LEN};
use memmap2::MmapMut;

/// Why the region could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// `memfd_create` failed.
    #[error("cannot create the shared region (memfd_create): {0}")]
    Create(#[source] io::Error),
    /// Sizing or mapping the memfd failed.
    #[error("cannot map the shared region ({REGION_LEN} bytes): {0}")]
    Map(#[source] io::Error),
    /// The process table is full (cannot happen on a fresh region).
    #[error("the shared region has no free process slot")]
    NoSlot,
}

/// The `memfd` holding the region and the CLI's mapping of it.
pub struct SharedRegion {
    file: File,
    map: MmapMut,
    region: Region,
}

impl SharedRegion {
    /// Create a fresh region for `mode`, with the program's root process
    /// registered in slot 0 as virtual pid 1.
    pub fn create(mode: Mode) -> Result<SharedRegion, RegionError> {
        // SAFETY: the name is a NUL-terminated literal. Close-on-exec: only
        // the copy at REGION_FD that `spawn` makes in the program's process
        // survives its exec, so one program never inherits another's region
        // (a daemon runs several).
        let fd = unsafe { libc::memfd_create(c"ferry-region".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(RegionError::Create(io::Error::last_os_error()));
        }
        // SAFETY: fd was just returned by memfd_create and is owned by nobody
        // else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(REGION_LEN as u64).map_err(RegionError::Map)?;
        // SAFETY: the memfd is private to Ferry (the CLI and the program's
        // shim); nobody truncates it while it is mapped.
        let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(RegionError::Map)?;
        if map.len() < REGION_LEN {
            return Err(RegionError::Map(io::Error::other(
                "mapping shorter than the region",
            )));
        }
        // Allocate every page of the region now, on this side: otherwise the
        // program's threads take a page fault (allocating and zeroing a page)
        // every 4 KiB of records during the ring's first lap. Best effort: a
        // kernel without MADV_POPULATE_WRITE (before 5.14) faults them later.
        let _ = map.advise(memmap2::Advice::PopulateWrite);
        // SAFETY: map is a live, writable, page-aligned shared mapping of
        // REGION_LEN bytes, kept alive by `self` as long as the Region is used
        // (callers only use the Region while they hold the SharedRegion).
        let region = unsafe { Region::from_raw(map.as_mut_ptr()) };
        region.init(mode);
        match region.alloc_proc(1, 0) {
            Some(0) => {}
            _ => return Err(RegionError::NoSlot),
        }
        region.control().live_procs.store(1, Ordering::Release);
        region
            .control()
            .consumer_pid
            .store(std::process::id(), Ordering::Release);
        region.control().next_vid.store(2, Ordering::Release);
        Ok(SharedRegion { file, map, region })
    }

    /// Take over the region of a program restored from an image: `fd` is
    /// its memfd, sent by the restore once the region is ready to be fed.
    pub fn adopt(fd: OwnedFd) -> Result<SharedRegion, RegionError> {
        let file = File::from(fd);
        let len = file.metadata().map_err(RegionError::Map)?.len();
        if len < REGION_LEN as u64 {
            return Err(RegionError::Map(io::Error::other(format!(
                "the restored region is {len} bytes, not {REGION_LEN}"
            ))));
        }
        // SAFETY: the memfd is the program's region; the restored shim and
        // this side access it only through Region's atomics, and nobody
        // truncates it while it is mapped.
        let mut map = unsafe { memmap2::MmapOptions::new().len(REGION_LEN).map_mut(&file) }
            .map_err(RegionError::Map)?;
        // SAFETY: as in `create`: a live, writable, page-aligned shared
        // mapping of REGION_LEN bytes that `self` keeps alive.
        let region = unsafe { Region::from_raw(map.as_mut_ptr()) };
        if !region.is_valid() {
            return Err(RegionError::Map(io::Error::other(
                "the restored region is from another version of Ferry",
            )));
        }
        Ok(SharedRegion { file, map, region })
    }

    /// The region. Valid while `self` lives.
    pub fn region(&self) -> Region {
        debug_assert_eq!(self.region.base(), self.map.as_ptr() as *mut u8);
        self.region
    }

    /// The memfd's descriptor number.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// The one-line message the other side left in the region.
pub fn message(region: &Region) -> String {
    let mut buf = vec![0u8; ferry_ring::MESSAGE_LEN];
    let n = region.message(&mut buf);
    let text = String::from_utf8_lossy(&buf[..n]);
    let text = text.trim_end();
    if text.is_empty() {
        "(no message)".to_string()
    } else {
        text.to_string()
    }
}

/// Real pids of the program's live processes, from the process table.
pub fn live_pids(region: &Region) -> Vec<i32> {
    (0..MAX_PROCS)
        .filter_map(|s| {
            let p = region.proc(s);
            if p.state.load(Ordering::Acquire) != PROC_LIVE {
                return None;
            }
            let pid = p.real_pid.load(Ordering::Acquire);
            (pid != 0 && pid <= i32::MAX as u32).then_some(pid as i32)
        })
        .collect()
}

/// SIGKILL every live process of the program: those in the process table and
/// our own direct children (the root and reparented orphans).
pub fn kill_program(region: &Region) {
    for pid in live_pids(region)
        .into_iter()
        .chain(crate::sys::direct_children())
    {
        crate::sys::kill_hard(pid);
    }
}

/// A futex on a word shared between processes (not the private variant).
pub struct SysFutex;

/// The CLI's side of the ring: it polls instead of sleeping on a futex, so
/// the program's threads never pay a wake-up system call for it (they
/// publish or consume up to a million records a second).
pub struct PollFutex;

/// A consumer's sleep that ends when the producer publishes (the shim wakes a
/// consumer that registered as a sleeper) or when a word of the consumer's
/// own process changes (`other`, bumped by whoever has a command for it):
/// both at once, with `futex_waitv` (Linux 5.16). Where that call is
/// missing it sleeps briefly, as [`PollFutex`] does.
pub struct EitherFutex<'a> {
    /// The process-private word whose change also ends the wait.
    pub other: &'a AtomicU32,
    /// Its value before the caller looked for work.
    pub other_seen: u32,
}

/// `struct futex_waitv` (include/uapi/linux/futex.h).
#[repr(C)]
struct FutexWaitv {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
}

/// `FUTEX2_SIZE_U32`: a 32-bit futex word.
const FUTEX2_SIZE_U32: u32 = 0x02;
/// `FUTEX2_PRIVATE`: a word of this process only.
const FUTEX2_PRIVATE: u32 = 128;

impl Futex for EitherFutex<'_> {
    fn wait(&self, word: &AtomicU32, expected: u32, timeout_ms: Option<u32>) {
        let waiters = [
            FutexWaitv {
                val: u64::from(expected),
                uaddr: word.as_ptr() as u64,
                flags: FUTEX2_SIZE_U32,
                reserved: 0,
            },
            FutexWaitv {
                val: u64::from(self.other_seen),
                uaddr: self.other.as_ptr() as u64,
                flags: FUTEX2_SIZE_U32 | FUTEX2_PRIVATE,
                reserved: 0,
            },
        ];
        // futex_waitv takes an absolute CLOCK_MONOTONIC deadline.
        let deadline = timeout_ms.map(|ms| {
            let mut now = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `now` is a valid timespec to fill.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
            let ns = now.tv_nsec + i64::from(ms % 1000) * 1_000_000;
            libc::timespec {
                tv_sec: now.tv_sec
                    + (ms / 1000) as libc::time_t
                    + (ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            }
        });
        let dp = deadline
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `waiters` is an array of two valid futex_waitv entries
        // naming live, aligned u32 words (one in the shared mapping, one of
        // this process); dp is null or points to `deadline`, alive for the
        // call. A spurious or failed wait is allowed by the trait.
        let r = unsafe {
            libc::syscall(
                libc::SYS_futex_waitv,
                waiters.as_ptr(),
                2u32,
                0u32,
                dp,
                libc::CLOCK_MONOTONIC,
            )
        };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }
    fn wake_all(&self, word: &AtomicU32) {
        SysFutex.wake_all(word)
    }
}

/// Bump `word` and wake whoever sleeps on it in an [`EitherFutex`] (its
/// `other`).
pub fn wake_private(word: &AtomicU32) {
    word.fetch_add(1, Ordering::SeqCst);
    // SAFETY: word points to a live, aligned u32 of this process;
    // FUTEX_WAKE_PRIVATE reads no other memory.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
            0usize,
            0usize,
            0u32,
        );
    }
}

impl Futex for PollFutex {
    fn wait(&self, _word: &AtomicU32, _expected: u32, _timeout_ms: Option<u32>) {
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    fn wake_all(&self, word: &AtomicU32) {
        SysFutex.wake_all(word)
    }
    fn polls(&self) -> bool {
        true
    }
}

impl Futex for SysFutex {
    fn wait(&self, word: &AtomicU32, expected: u32, timeout_ms: Option<u32>) {
        let ts = timeout_ms.map(|ms| libc::timespec {
            tv_sec: (ms / 1000) as libc::time_t,
            tv_nsec: ((ms % 1000) as libc::c_long) * 1_000_000,
        });
        let tsp = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: word points to a live, aligned u32 in the shared mapping;
        // tsp is null or points to `ts`, alive for the call. A spurious or
        // failed wait is allowed by the trait.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT,
                expected,
                tsp,
                0usize,
                0u32,
            );
        }
    }

    fn wake_all(&self, word: &AtomicU32) {
        // SAFETY: word points to a live, aligned u32; FUTEX_WAKE reads no
        // other memory.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAKE,
                i32::MAX,
                0usize,
                0usize,
                0u32,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// A sleeper in an `EitherFutex` wakes for either word: the shared one
    /// (woken by a publisher) and its own (woken by `wake_private`), long
    /// before its timeout.
    #[test]
    fn an_either_futex_wakes_for_either_word() {
        for which in ["shared", "private"] {
            let shared = Arc::new(AtomicU32::new(7));
            let private = Arc::new(AtomicU32::new(3));
            let (s2, p2) = (shared.clone(), private.clone());
            let waker = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                match which {
                    "shared" => {
                        s2.fetch_add(1, Ordering::SeqCst);
                        SysFutex.wake_all(&s2);
                    }
                    _ => wake_private(&p2),
                }
            });
            let start = Instant::now();
            let f = EitherFutex {
                other: &private,
                other_seen: 3,
            };
            let timeout_ms = 3000;
            // A spurious return is allowed: wait until a word changed or the
            // timeout passed.
            while shared.load(Ordering::SeqCst) == 7
                && private.load(Ordering::SeqCst) == 3
                && start.elapsed() < Duration::from_millis(timeout_ms)
            {
                f.wait(&shared, 7, Some(timeout_ms as u32));
            }
            let took = start.elapsed();
            waker.join().unwrap();
            assert!(
                took < Duration::from_millis(2000),
                "{which}: woke after {took:?}"
            );
        }
    }
}
