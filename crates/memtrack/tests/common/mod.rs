//! Shared by the integration tests: a forked child for anything that changes
//! process-wide state (userfaultfd registrations, mappings), anonymous
//! memory, and a seeded random number generator.

#![allow(dead_code)]

use ferry_memtrack::{PageRegion, Range};
use std::collections::BTreeSet;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

/// A child that takes longer has hung.
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

pub const PAGE: usize = 4096;

/// The write end of the pipe to the parent, in a forked child; -1 in the
/// test process itself.
static CHILD_PIPE: AtomicI32 = AtomicI32::new(-1);
static HOOK: Once = Once::new();

/// Install, once and before any fork, a panic hook that in a child sends the
/// message to the parent. (Setting a hook in the child could wait forever on
/// the hook's lock, held by another test thread at the time of the fork.)
fn install_hook() {
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let fd = CHILD_PIPE.load(Ordering::Relaxed);
            if fd < 0 {
                return default(info);
            }
            let msg = format!("{info}\n");
            // SAFETY: `fd` is the pipe's write end, open in this child.
            unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
        }));
    });
}

/// Run `f` in a forked child and fail the test with the child's panic
/// message if it fails.
pub fn in_child(f: impl FnOnce()) {
    install_hook();
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is an int[2] for pipe2 to fill.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2");
    let [rd, wr] = fds;
    // SAFETY: the child runs only `f` and exits with _exit; the parent waits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: closing the read end in the child.
        unsafe { libc::close(rd) };
        CHILD_PIPE.store(wr, Ordering::Relaxed);
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_ok();
        // SAFETY: leaving the child at once, without running the parent's
        // atexit handlers or test harness.
        unsafe { libc::_exit(if ok { 0 } else { 101 }) };
    }
    // SAFETY: closing the write end in the parent.
    unsafe { libc::close(wr) };
    // SAFETY: `rd` is the pipe's read end, owned from here on.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(rd) };
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let mut msg = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: rd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd on the stack.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
        if r == 0 {
            // SAFETY: killing our own child, by its pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // SAFETY: reaping it.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            panic!(
                "child did not finish in {CHILD_TIMEOUT:?}: {}",
                String::from_utf8_lossy(&msg)
            );
        }
        let mut chunk = [0u8; 4096];
        match pipe.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => msg.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading from the child: {e}"),
        }
    }
    let msg = String::from_utf8_lossy(&msg);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child failed (status {status:#x}): {msg}"
    );
}

/// An anonymous private mapping, unmapped on drop.
pub struct Anon {
    pub ptr: *mut u8,
    pub len: usize,
}

impl Anon {
    pub fn new(len: usize) -> Anon {
        Self::with(
            len,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        )
    }

    pub fn with(len: usize, flags: i32) -> Anon {
        // SAFETY: a fresh mapping at an address the kernel chooses.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Anon { ptr: p.cast(), len }
    }

    pub fn range(&self) -> Range {
        Range::from_len(self.ptr as usize, self.len)
    }

    pub fn pages(&self) -> usize {
        self.len / PAGE
    }

    pub fn page(&self, i: usize) -> *mut u8 {
        assert!(i < self.pages());
        // SAFETY: inside the mapping.
        unsafe { self.ptr.add(i * PAGE) }
    }

    pub fn write(&self, i: usize, at: usize, v: u8) {
        assert!(at < PAGE);
        // SAFETY: inside the mapping, which is writable.
        unsafe { std::ptr::write_volatile(self.page(i).add(at), v) }
    }

    pub fn read(&self, i: usize, at: usize) -> u8 {
        assert!(at < PAGE);
        // SAFETY: inside the mapping, which is readable.
        unsafe { std::ptr::read_volatile(self.page(i).add(at)) }
    }

    pub fn slice(&self) -> &[u8] {
        // SAFETY: the mapping is readable for `len` bytes while `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Anon {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// xorshift64*, seeded from `MEMTRACK_SEED` or the clock; the seed is in
/// every failure message through `Rng::seed`.
pub struct Rng {
    pub seed: u64,
    s: u64,
}

impl Rng {
    pub fn new() -> Rng {
        let seed = std::env::var("MEMTRACK_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            })
            | 1;
        Rng { seed, s: seed }
    }

    pub fn next(&mut self) -> u64 {
        self.s ^= self.s >> 12;
        self.s ^= self.s << 25;
        self.s ^= self.s >> 27;
        self.s.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// `k` distinct numbers below `n`.
    pub fn set(&mut self, n: usize, k: usize) -> BTreeSet<usize> {
        let mut s = BTreeSet::new();
        while s.len() < k {
            s.insert(self.below(n));
        }
        s
    }
}

/// Page indices (relative to `base`) covered by `regions`.
pub fn pages_of(regions: &[PageRegion], base: usize) -> BTreeSet<usize> {
    let mut s = BTreeSet::new();
    for r in regions {
        let mut a = r.start as usize;
        while a < r.end as usize {
            assert!(s.insert((a - base) / PAGE), "page {:#x} reported twice", a);
            a += PAGE;
        }
    }
    s
}

/// A new file at `path` (truncated if it was there), `len` bytes of zeros,
/// open for reading and writing.
pub fn sized_file(path: &str, len: u64) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.set_len(len).unwrap();
    f
}
