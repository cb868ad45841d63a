//! The system-call entry: replaceable (the shim passes its own), and
//! `errno`-neutral.

mod common;

use common::{in_child, Anon, PAGE};
use ferry_memtrack::{PageRegion, Pagemap, Query, Range, Syscalls, Tracker};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};

static CALLS: AtomicUsize = AtomicUsize::new(0);

/// A stand-in for the shim's gate: counts, then makes the call and returns
/// the kernel's result (`-errno` on failure).
///
/// # Safety
/// As for the system call `nr` itself.
unsafe fn counting(nr: i64, a: [usize; 6]) -> isize {
    CALLS.fetch_add(1, Ordering::Relaxed);
    let [a0, a1, a2, a3, a4, a5] = a;
    // SAFETY: the caller upholds the system call's contract.
    let r = unsafe { libc::syscall(nr, a0, a1, a2, a3, a4, a5) };
    if r == -1 {
        -(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO) as isize)
    } else {
        r as isize
    }
}

#[test]
fn every_call_goes_through_the_entry_the_caller_gives() {
    in_child(|| {
        // SAFETY: `counting` makes the system call it is given.
        let sys = unsafe { Syscalls::new(counting) };
        let mem = Anon::new(32 * PAGE);
        let before = CALLS.load(Ordering::Relaxed);
        let t = Tracker::open(sys).unwrap_or_else(|e| panic!("{e}"));
        t.track(mem.range()).unwrap();
        mem.write(5, 0, 1);
        let mut buf = [PageRegion::default(); 8];
        let mut pages = 0;
        t.scan_dirty(mem.range(), true, &mut buf, |r| {
            pages += r.len();
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(pages, 1);
        drop(t);
        // userfaultfd, UFFDIO_API, open pagemap, register, protect, the
        // untracked check, the scan, two closes at least.
        let made = CALLS.load(Ordering::Relaxed) - before;
        assert!(made >= 9, "only {made} calls went through the entry");
    });
}

#[test]
fn errno_is_left_as_it_was() {
    // SAFETY: this thread's errno.
    unsafe { *libc::__errno_location() = 4321 };
    let e = Pagemap::open_path(Syscalls::LIBC, c"/proc/self/no-such-file").unwrap_err();
    assert_eq!(e.errno.0, libc::ENOENT);
    assert_eq!(e.to_string(), "open(/proc/…/pagemap) failed: ENOENT (2)");
    // SAFETY: as above.
    assert_eq!(unsafe { *libc::__errno_location() }, 4321);
}

#[test]
fn a_scan_over_a_hole_reports_nothing() {
    let mem = Anon::new(16 * PAGE);
    let hole = Range::from_len(mem.ptr as usize + 4 * PAGE, 4 * PAGE);
    // SAFETY: unmapping part of our own mapping.
    let r = unsafe { libc::munmap(hole.start as *mut _, hole.len()) };
    assert_eq!(r, 0);
    let pm = Pagemap::open_self(Syscalls::LIBC).unwrap();
    let mut buf = [PageRegion::default(); 4];
    let q = Query {
        return_mask: ferry_memtrack::category::ALL,
        ..Query::default()
    };
    let totals = pm
        .scan(hole, &q, &mut buf, |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(totals.regions, 0);
    // Bad ranges are refused before any call.
    assert!(pm
        .scan(Range::new(hole.start + 1, hole.end), &q, &mut buf, |_| {
            ControlFlow::Continue(())
        })
        .is_err());
    assert!(pm
        .scan(hole, &q, &mut [], |_| ControlFlow::Continue(()))
        .is_err());
}
