//! The UAPI definitions, checked against the running kernel: a wrong size,
//! number or bit would make these fail.

mod common;

use common::{in_child, Anon, PAGE};
use ferry_memtrack::pagemap::{category, PAGEMAP_SCAN, PM_SCAN_ARG_SIZE};
use ferry_memtrack::{PageRegion, Pagemap, Query, Range, Syscalls, Tracker};
use std::ops::ControlFlow;
use std::os::fd::AsRawFd;

const SYS: Syscalls = Syscalls::LIBC;

/// `PAGEMAP_SCAN` with a `struct pm_scan_arg` of `size` bytes (the rest
/// zero) over one page; returns the ioctl's result and errno.
fn scan_with_size(size: usize) -> (i32, i32) {
    let mem = Anon::new(PAGE);
    let pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
    let mut arg = [0u64; 16];
    arg[0] = size as u64;
    arg[2] = mem.ptr as u64;
    arg[3] = mem.ptr as u64 + PAGE as u64;
    // SAFETY: `arg` has room for more than any size tried; no output vector.
    let r = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, arg.as_mut_ptr()) };
    (
        r,
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
    )
}

#[test]
fn the_kernel_takes_our_pm_scan_arg_and_no_other_size() {
    assert_eq!(scan_with_size(PM_SCAN_ARG_SIZE).0, 0, "our size refused");
    for wrong in [PM_SCAN_ARG_SIZE - 8, PM_SCAN_ARG_SIZE + 8] {
        assert_eq!(
            scan_with_size(wrong),
            (-1, libc::EINVAL),
            "size {wrong} accepted"
        );
    }
}

fn categories(pm: &Pagemap, page: usize) -> u64 {
    let q = Query {
        return_mask: category::ALL,
        ..Query::default()
    };
    let mut buf = [PageRegion::default(); 4];
    let mut cats = None;
    pm.scan(Range::from_len(page, PAGE), &q, &mut buf, |r| {
        cats = r.first().map(|r| r.categories);
        ControlFlow::Break(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    cats.unwrap_or(0)
}

#[test]
fn the_category_bits_mean_what_the_kernel_says() {
    in_child(|| {
        use category::*;
        let pm = Pagemap::open_self(SYS).unwrap();
        let mem = Anon::new(16 * PAGE);
        mem.write(0, 0, 1);
        mem.read(1, 0);
        let page = |i| mem.page(i) as usize;
        assert_eq!(categories(&pm, page(0)), PRESENT | WRITTEN);
        assert_eq!(categories(&pm, page(1)), PRESENT | PFNZERO | WRITTEN);

        let t = Tracker::open(SYS).unwrap();
        t.track(mem.range()).unwrap();
        assert_eq!(categories(&pm, page(0)), WPALLOWED | PRESENT);
        assert_eq!(categories(&pm, page(1)), WPALLOWED | PRESENT | PFNZERO);
        // A never-touched page under write-protect: a marker, shown as swapped.
        assert_eq!(categories(&pm, page(2)), WPALLOWED | SWAPPED);
        mem.write(2, 0, 1);
        assert_eq!(categories(&pm, page(2)), WPALLOWED | PRESENT | WRITTEN);

        // A transparent huge page.
        let area = Anon::new(4 << 20);
        let huge = (area.ptr as usize + (2 << 20) - 1) & !((2 << 20) - 1);
        // SAFETY: advice on our own aligned 2 MiB.
        let r = unsafe { libc::madvise(huge as *mut _, 2 << 20, libc::MADV_HUGEPAGE) };
        assert_eq!(r, 0);
        // SAFETY: inside `area`.
        unsafe { std::ptr::write_bytes(huge as *mut u8, 1, 2 << 20) };
        assert_eq!(categories(&pm, huge) & (HUGE | PRESENT), HUGE | PRESENT);

        // A file's page-cache page in a private mapping.
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        // SAFETY: a fresh read-only private mapping of our own executable.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: inside that mapping.
        unsafe { std::ptr::read_volatile(p as *const u8) };
        assert_eq!(
            categories(&pm, p as usize) & (FILE | PRESENT),
            FILE | PRESENT
        );
    });
}
