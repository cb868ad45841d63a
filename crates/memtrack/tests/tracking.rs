//! Dirty tracking on real memory. Each test runs in a forked child: a
//! userfaultfd registration and the mappings made are process-wide state.

mod common;

use common::{in_child, pages_of, sized_file, Anon, Rng, PAGE};
use ferry_memtrack::maps::{self, Change, OwnedMaps};
use ferry_memtrack::{
    PageRegion, Range, ScanError, ScanTotals, Source, Syscalls, TrackError, Tracker,
};
use std::collections::BTreeSet;
use std::ops::ControlFlow;

const SYS: Syscalls = Syscalls::LIBC;

fn tracker() -> Tracker {
    Tracker::open(SYS).unwrap_or_else(|e| panic!("{e}"))
}

/// The pages of `range` (as indices from its start) written since the last
/// protect, scanned with a buffer of `cap` regions.
fn dirty(t: &Tracker, range: Range, reprotect: bool, cap: usize) -> (BTreeSet<usize>, ScanTotals) {
    let (v, totals) = dirty_regions(t, range, reprotect, cap).unwrap_or_else(|e| panic!("{e}"));
    (pages_of(&v, range.start), totals)
}

fn dirty_regions(
    t: &Tracker,
    range: Range,
    reprotect: bool,
    cap: usize,
) -> Result<(Vec<PageRegion>, ScanTotals), ScanError> {
    let mut buf = vec![PageRegion::default(); cap];
    let mut out = Vec::new();
    let totals = t.scan_dirty(range, reprotect, &mut buf, |b| {
        out.extend_from_slice(b);
        ControlFlow::Continue(())
    })?;
    Ok((out, totals))
}

#[test]
fn exactly_the_pages_written_are_reported_then_exactly_the_next_set() {
    in_child(|| {
        let mut rng = Rng::new();
        let seed = rng.seed;
        let mem = Anon::new(64 << 20);
        let n = mem.pages();
        // Half the pages hold data before tracking starts, half were never
        // touched: both kinds must be tracked.
        for i in (0..n).step_by(2) {
            mem.write(i, 0, 1);
        }
        let t = tracker();
        t.track(mem.range()).unwrap_or_else(|e| panic!("{e}"));
        let (none, _) = dirty(&t, mem.range(), false, 64);
        assert!(
            none.is_empty(),
            "seed {seed}: pages reported before any write: {none:?}"
        );

        for round in 0..3 {
            let set = rng.set(n, 600);
            for &p in &set {
                mem.write(p, rng.below(PAGE), 0xa5);
            }
            // A small buffer makes the scan loop.
            let (got, totals) = dirty(&t, mem.range(), true, 16);
            assert_eq!(got, set, "seed {seed} round {round}");
            assert!(
                totals.calls > 1,
                "seed {seed}: a 16-region buffer should fill ({totals:?})"
            );
            let (again, _) = dirty(&t, mem.range(), false, 1024);
            assert!(
                again.is_empty(),
                "seed {seed} round {round}: re-protect left {again:?}"
            );
        }
    });
}

#[test]
fn a_scan_without_reprotect_reports_the_same_set_twice() {
    in_child(|| {
        let mut rng = Rng::new();
        let mem = Anon::new(8 << 20);
        let t = tracker();
        t.track(mem.range()).unwrap();
        let set = rng.set(mem.pages(), 100);
        for &p in &set {
            mem.write(p, 7, 1);
        }
        assert_eq!(dirty(&t, mem.range(), false, 8).0, set, "seed {}", rng.seed);
        assert_eq!(
            dirty(&t, mem.range(), false, 4096).0,
            set,
            "seed {}",
            rng.seed
        );
        t.reset(mem.range()).unwrap();
        assert!(
            dirty(&t, mem.range(), false, 64).0.is_empty(),
            "reset left pages written"
        );
        mem.write(3, 0, 1);
        assert_eq!(dirty(&t, mem.range(), false, 64).0, BTreeSet::from([3]));
        // UFFDIO_WRITEPROTECT of the whole range cleans as well.
        t.protect(mem.range()).unwrap();
        assert!(
            dirty(&t, mem.range(), false, 64).0.is_empty(),
            "protect left pages written"
        );
        mem.write(9, 0, 1);
        assert_eq!(dirty(&t, mem.range(), false, 64).0, BTreeSet::from([9]));
    });
}

/// More regions than the kernel's own buffer (512) and fewer than ours: the
/// kernel then reports a `walk_end` short of the end although it walked it
/// all; continuing from there would report regions twice.
#[test]
fn a_scan_longer_than_the_kernels_buffer_reports_each_page_once() {
    in_child(|| {
        let mut rng = Rng::new();
        let mem = Anon::new(64 << 20);
        let t = tracker();
        t.track(mem.range()).unwrap();
        // Every other page at most: 2000 separate regions.
        let set: BTreeSet<usize> = rng
            .set(mem.pages() / 2, 2000)
            .into_iter()
            .map(|p| 2 * p)
            .collect();
        for &p in &set {
            mem.write(p, 1, 1);
        }
        for reprotect in [false, true] {
            let (got, totals) = dirty(&t, mem.range(), reprotect, 4096);
            assert_eq!(got, set, "seed {} reprotect {reprotect}", rng.seed);
            assert_eq!((totals.regions, totals.pages), (2000, 2000), "{totals:?}");
        }
    });
}

#[test]
fn writes_by_other_threads_are_seen() {
    in_child(|| {
        let mut rng = Rng::new();
        let mem = Anon::new(16 << 20);
        let t = tracker();
        t.track(mem.range()).unwrap();
        let sets: Vec<BTreeSet<usize>> = (0..3).map(|_| rng.set(mem.pages(), 50)).collect();
        let base = mem.ptr as usize;
        std::thread::scope(|s| {
            for set in &sets {
                s.spawn(move || {
                    for &p in set {
                        // SAFETY: inside the mapping, which outlives the scope.
                        unsafe { std::ptr::write_volatile((base + p * PAGE + 9) as *mut u8, 3) };
                    }
                });
            }
        });
        let want: BTreeSet<usize> = sets.iter().flatten().copied().collect();
        assert_eq!(
            dirty(&t, mem.range(), true, 64).0,
            want,
            "seed {}",
            rng.seed
        );
    });
}

#[test]
fn reads_do_not_mark_pages() {
    in_child(|| {
        let mem = Anon::new(4 << 20);
        for i in 0..mem.pages() / 2 {
            mem.write(i, 0, 1);
        }
        let t = tracker();
        t.track(mem.range()).unwrap();
        let mut sum = 0u32;
        for i in 0..mem.pages() {
            sum += u32::from(mem.read(i, 100));
        }
        assert_eq!(sum, 0);
        let (got, _) = dirty(&t, mem.range(), false, 64);
        assert!(got.is_empty(), "reads marked pages {got:?}");
        mem.write(mem.pages() - 1, 0, 1);
        assert_eq!(
            dirty(&t, mem.range(), false, 64).0,
            BTreeSet::from([mem.pages() - 1])
        );
    });
}

#[test]
fn writes_by_the_kernel_are_seen() {
    in_child(|| {
        let mem = Anon::new(1 << 20);
        let t = tracker();
        t.track(mem.range()).unwrap();
        let mut fds = [0i32; 2];
        // SAFETY: an int[2] for pipe to fill.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: writing 5 bytes from a static buffer.
        let r = unsafe { libc::write(fds[1], b"hello".as_ptr().cast(), 5) };
        assert_eq!(r, 5);
        // SAFETY: the kernel copies into page 17 of our writable mapping.
        let got = unsafe { libc::read(fds[0], mem.page(17).add(100).cast(), 5) };
        assert_eq!(got, 5, "read: {}", std::io::Error::last_os_error());
        assert_eq!(dirty(&t, mem.range(), false, 64).0, BTreeSet::from([17]));
    });
}

#[test]
fn dropped_pages_are_reported_as_written() {
    in_child(|| {
        let mem = Anon::new(1 << 20);
        for i in 0..mem.pages() {
            mem.write(i, 0, 1);
        }
        let t = tracker();
        t.track(mem.range()).unwrap();
        // SAFETY: dropping pages 5 and 6 of our own mapping.
        let r = unsafe { libc::madvise(mem.page(5).cast(), 2 * PAGE, libc::MADV_DONTNEED) };
        assert_eq!(r, 0);
        assert_eq!(dirty(&t, mem.range(), true, 64).0, BTreeSet::from([5, 6]));
        assert_eq!(mem.read(5, 0), 0);
        assert!(
            dirty(&t, mem.range(), false, 64).0.is_empty(),
            "a read after re-protect marked the page"
        );
    });
}

#[test]
fn private_file_mappings_are_tracked() {
    in_child(|| {
        let path = format!("/dev/shm/ferry-memtrack-private-{}", std::process::id());
        let file = sized_file(&path, 64 * PAGE as u64);
        std::fs::remove_file(&path).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh private mapping of our file.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                64 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let range = Range::from_len(p as usize, 64 * PAGE);
        // Some pages read (page cache, not copied) before tracking.
        // SAFETY: inside the mapping.
        unsafe { std::ptr::read_volatile((p as *const u8).add(2 * PAGE)) };
        let t = tracker();
        t.track(range).unwrap();
        for i in [2usize, 40, 63] {
            // SAFETY: inside the writable private mapping.
            unsafe { std::ptr::write_volatile((p as *mut u8).add(i * PAGE), 9) };
        }
        assert_eq!(dirty(&t, range, true, 64).0, BTreeSet::from([2, 40, 63]));
    });
}

/// The limit of the method, checked so the documentation stays true: a
/// shared mapping's bits live in this mapping's page tables, so a write
/// through another mapping of the same object is not seen.
#[test]
fn shared_memory_written_through_another_mapping_is_not_seen() {
    in_child(|| {
        let len = 16 * PAGE;
        // SAFETY: memfd_create with a static name.
        let fd = unsafe { libc::memfd_create(c"memtrack".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: sizing our memfd.
        assert_eq!(unsafe { libc::ftruncate(fd, len as i64) }, 0);
        let map = || {
            // SAFETY: a fresh shared mapping of our memfd.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            p as *mut u8
        };
        let (a, b) = (map(), map());
        let range = Range::from_len(a as usize, len);
        let t = tracker();
        t.track(range).unwrap();
        // SAFETY: inside the other shared mapping.
        unsafe { std::ptr::write_volatile(b.add(3 * PAGE), 7) };
        // SAFETY: inside the tracked mapping.
        assert_eq!(unsafe { std::ptr::read_volatile(a.add(3 * PAGE)) }, 7);
        assert!(
            dirty(&t, range, false, 8).0.is_empty(),
            "the other mapping's write was seen after all"
        );
        // SAFETY: inside the tracked mapping.
        unsafe { std::ptr::write_volatile(a.add(5 * PAGE), 7) };
        assert_eq!(dirty(&t, range, false, 8).0, BTreeSet::from([5]));
    });
}

#[test]
fn mappings_made_after_tracking_started_are_noticed() {
    in_child(|| {
        let t = tracker();
        // Room for the tracked region and, right after it, a later one.
        let area = Anon::new(64 * PAGE);
        let base = area.ptr as usize;
        let tracked = Range::from_len(base, 32 * PAGE);
        let later = Range::from_len(base + 32 * PAGE, 32 * PAGE);
        // SAFETY: unmapping the upper half of our own mapping.
        let r = unsafe { libc::munmap(later.start as *mut _, later.len()) };
        assert_eq!(r, 0);
        t.track(tracked).unwrap();
        let before = OwnedMaps::read_self(SYS).unwrap();

        // SAFETY: mapping into the hole we just made.
        let p = unsafe {
            libc::mmap(
                later.start as *mut _,
                later.len(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        assert_eq!(p as usize, later.start);
        area.write(40, 0, 1);
        area.write(1, 0, 1);

        // The kernel says which part is not tracked.
        let both = Range::new(tracked.start, later.end);
        let mut buf = [PageRegion::default(); 8];
        let mut untracked = Vec::new();
        t.untracked(both, &mut buf, |r| {
            untracked.extend(r.iter().map(|r| r.range()));
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(untracked, vec![later]);

        // A dirty scan over it refuses, and loses nothing of the tracked part.
        match dirty_regions(&t, both, true, 64) {
            Err(ScanError::Untracked { untracked, .. }) => assert_eq!(untracked, later),
            other => panic!("scan over an untracked mapping: {other:?}"),
        }
        assert_eq!(dirty(&t, tracked, true, 64).0, BTreeSet::from([1]));

        // The maps table says the same.
        let after = OwnedMaps::read_self(SYS).unwrap();
        let (b, a) = (before.mappings().unwrap(), after.mappings().unwrap());
        let mut added = Vec::new();
        maps::diff(&b, &a, |c| {
            if let Change::Added(m) = c {
                added.push(m.range());
            }
        });
        assert!(
            added.contains(&later),
            "diff did not report {later}: {added:?}"
        );

        // Once tracked it is scanned like the rest.
        t.track(later).unwrap();
        area.write(50, 0, 2);
        assert_eq!(dirty(&t, both, true, 64).0, BTreeSet::from([50]));
    });
}

#[test]
fn a_mapping_moved_or_remade_in_place_is_untracked() {
    in_child(|| {
        let t = tracker();
        let a = Anon::new(16 * PAGE);
        t.track(a.range()).unwrap();
        // Unmapped and made again, same place, same access: the maps table
        // cannot tell, the kernel can.
        let before = OwnedMaps::read_self(SYS).unwrap();
        // SAFETY: replacing our own mapping in place.
        let p = unsafe {
            libc::mmap(
                a.ptr.cast(),
                a.len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        assert_eq!(p as usize, a.ptr as usize);
        assert!(
            !t.is_tracked(a.range()).unwrap(),
            "a mapping made again in place still reads as tracked"
        );
        let after = OwnedMaps::read_self(SYS).unwrap();
        let (b, c) = (before.mappings().unwrap(), after.mappings().unwrap());
        let mut changes = 0;
        maps::diff(&b, &c, |ch| {
            let m = match ch {
                Change::Added(m) | Change::Removed(m) => m,
            };
            if m.range() == a.range() {
                changes += 1;
            }
        });
        assert_eq!(changes, 0, "the maps table did see the re-made mapping");

        // mremap moves a mapping out of tracking.
        let b2 = Anon::new(16 * PAGE);
        t.track(b2.range()).unwrap();
        // SAFETY: moving our own mapping to a bigger place of the kernel's choosing.
        let moved = unsafe { libc::mremap(b2.ptr.cast(), b2.len, 32 * PAGE, libc::MREMAP_MAYMOVE) };
        assert_ne!(moved, libc::MAP_FAILED);
        let moved_range = Range::from_len(moved as usize, 32 * PAGE);
        if !std::ptr::eq(moved, b2.ptr.cast()) {
            assert!(
                !t.is_tracked(moved_range).unwrap(),
                "a moved mapping still reads as tracked"
            );
        }
        // SAFETY: our moved mapping; b2's drop unmaps whatever is at its old place.
        unsafe { libc::munmap(moved, 32 * PAGE) };
    });
}

#[test]
fn heap_growth_after_tracking_started_is_noticed() {
    in_child(|| {
        let t = tracker();
        // SAFETY: sbrk(0) reads the break.
        let brk0 = unsafe { libc::sbrk(0) } as usize;
        let heap_start = {
            let maps = OwnedMaps::read_self(SYS).unwrap();
            let ms = maps.mappings().unwrap();
            ms.iter()
                .find(|m| m.kind == maps::Kind::Heap)
                .map(|m| m.start)
        };
        // A heap exists once malloc has used brk; make sure it has.
        // SAFETY: growing the break by 64 pages.
        assert_ne!(unsafe { libc::sbrk(64 * PAGE as isize) } as isize, -1);
        let start = heap_start.unwrap_or(brk0 & !(PAGE - 1));
        let tracked_end = (brk0 + 64 * PAGE + PAGE - 1) & !(PAGE - 1);
        let tracked = Range::new(start, tracked_end);
        t.track(tracked).unwrap();
        // SAFETY: growing the break by 64 more pages.
        let grown = unsafe { libc::sbrk(64 * PAGE as isize) } as usize;
        assert_ne!(grown as isize, -1);
        let all = Range::new(start, (grown + 64 * PAGE) & !(PAGE - 1));
        assert!(
            !t.is_tracked(all).unwrap(),
            "the grown heap reads as tracked"
        );
        assert!(t.is_tracked(tracked).unwrap());
    });
}

#[test]
fn untrackable_mappings_are_refused_naming_the_operation() {
    in_child(|| {
        let t = tracker();
        let maps = OwnedMaps::read_self(SYS).unwrap();
        let ms = maps.mappings().unwrap();
        let vdso = ms
            .iter()
            .find(|m| m.kind == maps::Kind::Vdso)
            .expect("no [vdso] mapping");
        assert!(!vdso.trackable());
        match t.track(vdso.range()) {
            Err(e @ TrackError::Register { source, .. }) => {
                assert_eq!(source.errno.0, libc::EINVAL);
                let msg = e.to_string();
                assert!(
                    msg.contains("ioctl(UFFDIO_REGISTER)") && msg.contains("EINVAL"),
                    "{msg}"
                );
                assert!(!msg.contains('\n'), "{msg}");
            }
            other => panic!("tracking [vdso]: {other:?}"),
        }
        assert!(matches!(
            t.track(Range::new(4096, 4097)),
            Err(TrackError::BadRange { .. })
        ));
    });
}

#[test]
fn both_ways_of_opening_a_userfaultfd_work() {
    in_child(|| {
        for source in [Source::Syscall, Source::Device] {
            let t = Tracker::open_via(SYS, source).unwrap_or_else(|e| panic!("{source:?}: {e}"));
            let mem = Anon::new(16 * PAGE);
            t.track(mem.range()).unwrap();
            mem.write(4, 0, 1);
            assert_eq!(
                dirty(&t, mem.range(), true, 8).0,
                BTreeSet::from([4]),
                "{source:?}"
            );
        }
    });
}

#[test]
fn tracking_ends_with_the_tracker_and_is_not_inherited() {
    in_child(|| {
        let mem = Anon::new(16 * PAGE);
        let t = tracker();
        t.track(mem.range()).unwrap();
        // SAFETY: the child only scans and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let t2 = Tracker::open(SYS).unwrap();
            let ok = !t2.is_tracked(mem.range()).unwrap();
            // SAFETY: leaving the grandchild.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut st = 0;
        // SAFETY: waiting for our child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        assert_eq!(st, 0, "a forked child inherited tracking");
        mem.write(2, 0, 1);
        assert_eq!(
            dirty(&t, mem.range(), false, 8).0,
            BTreeSet::from([2]),
            "fork disturbed the parent's tracking"
        );
        drop(t);
        let t3 = tracker();
        assert!(
            !t3.is_tracked(mem.range()).unwrap(),
            "tracking outlived its tracker"
        );
    });
}

#[test]
fn track_new_tracks_the_whole_process_once_then_only_what_is_new() {
    in_child(|| {
        let t = tracker();
        let mut buf = [PageRegion::default(); 4];
        let maps = OwnedMaps::read_self(SYS).unwrap();
        let ms = maps.mappings().unwrap();
        let mut first = Vec::new();
        let n = t
            .track_new(&ms, &mut buf, |r, res| first.push((r, res)))
            .unwrap();
        assert!(n >= 5, "only {n} parts: {first:?}");
        let failed: Vec<_> = first.iter().filter(|(_, r)| r.is_err()).collect();
        assert!(failed.is_empty(), "could not track {failed:?}");
        for m in ms.iter().filter(|m| m.trackable()) {
            assert!(
                t.is_tracked(m.range()).unwrap(),
                "{:?} {:x?}",
                m.kind,
                m.range()
            );
        }
        // Then only what is new: our mapping (and whatever else came since,
        // such as a malloc arena grown by mprotect inside its reservation).
        let mem = Anon::new(8 * PAGE);
        let maps = OwnedMaps::read_self(SYS).unwrap();
        let ms = maps.mappings().unwrap();
        let mut second = Vec::new();
        t.track_new(&ms, &mut buf, |r, res| second.push((r, res.is_ok())))
            .unwrap();
        assert!(second.contains(&(mem.range(), true)), "{second:x?}");
        assert!(second.iter().all(|&(_, ok)| ok), "{second:x?}");
        mem.write(1, 0, 1);
        assert_eq!(dirty(&t, mem.range(), false, 8).0, BTreeSet::from([1]));
        let mut third = Vec::new();
        t.track_new(&ms, &mut buf, |r, _| third.push(r)).unwrap();
        assert!(
            !third.contains(&mem.range()),
            "a tracked mapping reported as new"
        );
        assert_eq!(
            dirty(&t, mem.range(), false, 8).0,
            BTreeSet::from([1]),
            "track_new re-protected a tracked mapping"
        );
    });
}
