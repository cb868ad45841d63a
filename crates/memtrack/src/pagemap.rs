//! The `PAGEMAP_SCAN` ioctl on `/proc/<pid>/pagemap` (Linux ≥ 6.7): which
//! pages of a range are present, swapped, the shared zero page, huge, or
//! written since they were last write-protected — answered from the page
//! tables, in ranges, without touching the pages.
//!
//! The definitions below are the kernel's UAPI (`include/uapi/linux/fs.h`);
//! the `libc` crate does not carry them. `tests/abi.rs` checks them against
//! the running kernel.

use crate::error::SysError;
use crate::sys_unsafe::{Fd, Syscalls};
use crate::Range;
use core::ffi::CStr;
use core::ops::ControlFlow;

/// `PAGE_IS_*`: the categories a page can have. A scan selects pages by them
/// and reports, for each region, those of them that are in its
/// `return_mask`.
pub mod category {
    /// The page is in a range registered for asynchronous userfaultfd
    /// write-protect (so its written state is tracked).
    pub const WPALLOWED: u64 = 1 << 0;
    /// Written since it was last write-protected. Outside a tracked range
    /// every mapped page is "written".
    pub const WRITTEN: u64 = 1 << 1;
    /// Backed by a file's page cache (not an anonymous copy).
    pub const FILE: u64 = 1 << 2;
    /// In memory.
    pub const PRESENT: u64 = 1 << 3;
    /// A swap entry — or, inside a tracked range, a write-protect marker on
    /// a page never touched (see `docs/MEMTRACK.md`).
    pub const SWAPPED: u64 = 1 << 4;
    /// The shared zero page (read, never written).
    pub const PFNZERO: u64 = 1 << 5;
    /// Part of a transparent huge page or a hugetlb page.
    pub const HUGE: u64 = 1 << 6;
    /// The soft-dirty bit (not compiled into every kernel; not used here).
    pub const SOFT_DIRTY: u64 = 1 << 7;
    /// Every category this module knows.
    pub const ALL: u64 =
        WPALLOWED | WRITTEN | FILE | PRESENT | SWAPPED | PFNZERO | HUGE | SOFT_DIRTY;
}

/// `PM_SCAN_WP_MATCHING`: write-protect the pages the scan reports, in the
/// same page-table walk.
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: fail with `EPERM` on a mapping that is not
/// registered for asynchronous write-protect. The kernel may already have
/// re-protected earlier mappings of the range when it fails (their written
/// state is then lost), so this crate checks first instead.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// `struct page_region`: `[start, end)` with `categories`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageRegion {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// The region's `PAGE_IS_*` bits, masked by the query's `return_mask`.
    pub categories: u64,
}

impl PageRegion {
    /// The region as a [`Range`].
    pub fn range(&self) -> Range {
        Range {
            start: self.start as usize,
            end: self.end as usize,
        }
    }

    /// Bytes in the region.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// True when the region has no bytes.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PmScanArg {
    pub size: u64,
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    pub walk_end: u64,
    pub vec: u64,
    pub vec_len: u64,
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

/// Bytes of `struct pm_scan_arg`; the kernel refuses any other size.
pub const PM_SCAN_ARG_SIZE: usize = core::mem::size_of::<PmScanArg>();

/// `_IOC_WRITE`, `_IOC_READ` (asm-generic, as on x86-64 and arm64).
pub(crate) const IOC_WRITE: u32 = 1;
pub(crate) const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)`.
pub(crate) const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    (dir << 30) | ((size as u32 & 0x3fff) << 16) | ((ty as u32) << 8) | nr as u32
}

/// `PAGEMAP_SCAN = _IOWR('f', 16, struct pm_scan_arg)`.
pub const PAGEMAP_SCAN: u32 = ioc(IOC_READ | IOC_WRITE, b'f', 16, PM_SCAN_ARG_SIZE);

/// Which pages a scan reports: a page matches when
/// `(categories ^ inverted) & mask == mask` and, if `anyof` is not zero,
/// `(categories ^ inverted) & anyof != 0`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// `PM_SCAN_*` flags.
    pub flags: u64,
    /// Categories tested inverted.
    pub inverted: u64,
    /// Categories that must all be set.
    pub mask: u64,
    /// Categories of which one must be set (0: no such test).
    pub anyof: u64,
    /// Categories reported in [`PageRegion::categories`]; adjacent pages
    /// with the same reported categories form one region.
    pub return_mask: u64,
    /// Stop after this many pages in total (0: no limit).
    pub max_pages: u64,
}

impl Query {
    /// Pages written since they were last protected. With `reprotect`,
    /// each reported page is write-protected again in the same walk.
    ///
    /// `mask == return_mask == WRITTEN` with nothing else set is the
    /// kernel's fast path (about ten times faster than any other mask).
    pub const fn written(reprotect: bool) -> Query {
        Query {
            flags: if reprotect { PM_SCAN_WP_MATCHING } else { 0 },
            inverted: 0,
            mask: category::WRITTEN,
            anyof: 0,
            return_mask: category::WRITTEN,
            max_pages: 0,
        }
    }

    /// Pages of mappings that are not registered for asynchronous
    /// write-protect.
    pub const fn untracked() -> Query {
        Query {
            flags: 0,
            inverted: category::WPALLOWED,
            mask: category::WPALLOWED,
            anyof: 0,
            return_mask: category::WPALLOWED,
            max_pages: 0,
        }
    }

    /// Pages that hold data a full checkpoint must read: present and not
    /// the shared zero page, or (with [`Swap::Include`]) swapped out.
    pub const fn populated(swap: Swap, skip_file_pages: bool) -> Query {
        let mut q = Query {
            flags: 0,
            inverted: category::PFNZERO,
            mask: category::PFNZERO,
            anyof: category::PRESENT,
            return_mask: category::PRESENT | category::SWAPPED | category::HUGE,
            max_pages: 0,
        };
        if let Swap::Include = swap {
            q.anyof = category::PRESENT | category::SWAPPED;
        }
        if skip_file_pages {
            q.inverted |= category::FILE;
            q.mask |= category::FILE;
        }
        q
    }
}

/// Whether a scan for data counts swapped-out pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Swap {
    /// Report `SWAPPED` pages: their data is on a swap device. Inside a
    /// tracked range this also reports never-touched pages, whose
    /// write-protect marker the kernel reports as `SWAPPED`.
    Include,
    /// Assume no page is swapped out (no swap is configured; see
    /// [`crate::swap_configured`]): report present pages only.
    Exclude,
}

/// What one scan did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanTotals {
    /// Regions reported.
    pub regions: u64,
    /// Pages in them.
    pub pages: u64,
    /// `PAGEMAP_SCAN` calls made (more than one when the buffer filled).
    pub calls: u64,
}

/// A scan that could not be completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// The ioctl failed.
    #[error("pagemap scan of {range}: {source}")]
    Sys {
        /// The range being scanned.
        range: Range,
        /// The call's error.
        source: SysError,
    },
    /// The range is not page-aligned or is empty.
    #[error("pagemap scan of {range}: range is empty or not aligned to {page_size}-byte pages")]
    BadRange {
        /// The range asked for.
        range: Range,
        /// The page size.
        page_size: usize,
    },
    /// The caller's buffer has no room for a region.
    #[error("pagemap scan of {range}: the region buffer is empty")]
    EmptyBuffer {
        /// The range asked for.
        range: Range,
    },
    /// The kernel stopped without reporting anything or moving on.
    #[error("pagemap scan of {range}: no progress at {at:#x}")]
    NoProgress {
        /// The range asked for.
        range: Range,
        /// Where the walk stopped.
        at: u64,
    },
    /// Part of the range is not tracked (a mapping made, moved or re-made
    /// since tracking started); nothing was re-protected.
    #[error("dirty scan of {range}: {untracked} is not tracked (mapped, moved or re-mapped after tracking started)")]
    Untracked {
        /// The range asked for.
        range: Range,
        /// The first untracked part found.
        untracked: Range,
    },
}

/// An open `/proc/<pid>/pagemap`.
#[derive(Debug)]
pub struct Pagemap {
    fd: Fd,
    sys: Syscalls,
    page_size: usize,
}

impl Pagemap {
    /// The descriptor number.
    pub fn raw(&self) -> i32 {
        self.fd.raw()
    }

    /// Open `/proc/self/pagemap`.
    pub fn open_self(sys: Syscalls) -> Result<Pagemap, SysError> {
        Self::open_path(sys, c"/proc/self/pagemap")
    }

    /// Open `path`, a pagemap file (`/proc/<pid>/pagemap`: scanning
    /// another process needs ptrace access to it).
    pub fn open_path(sys: Syscalls, path: &CStr) -> Result<Pagemap, SysError> {
        let fd = sys.open_read("open(/proc/…/pagemap)", path)?;
        Ok(Pagemap {
            fd,
            sys,
            page_size: crate::page_size(),
        })
    }

    /// Report the pages of `range` that match `query` into `buf`, calling
    /// `f` with each batch the kernel filled, until the range is walked,
    /// `max_pages` is reached or `f` breaks. A region may be split in two
    /// where one batch ends. With `PM_SCAN_WP_MATCHING`, what was reported
    /// has been protected and what the walk did not reach has not.
    pub fn scan(
        &self,
        range: Range,
        query: &Query,
        buf: &mut [PageRegion],
        mut f: impl FnMut(&[PageRegion]) -> ControlFlow<()>,
    ) -> Result<ScanTotals, ScanError> {
        self.check_range(range)?;
        if buf.is_empty() {
            return Err(ScanError::EmptyBuffer { range });
        }
        let mut totals = ScanTotals::default();
        let end = range.end as u64;
        let mut at = range.start as u64;
        while at < end {
            let left = if query.max_pages == 0 {
                0
            } else {
                match query.max_pages.checked_sub(totals.pages) {
                    Some(0) | None => break,
                    Some(n) => n,
                }
            };
            let mut arg = self.arg(query, at, end, left);
            let n = self
                .sys
                .pagemap_scan(&self.fd, &mut arg, Some(&mut *buf))
                .map_err(|source| ScanError::Sys { range, source })?;
            totals.calls = totals.calls.saturating_add(1);
            let filled: &[PageRegion] = buf.get(..n).unwrap_or(&*buf);
            for r in filled {
                totals.regions = totals.regions.saturating_add(1);
                totals.pages = totals
                    .pages
                    .saturating_add(r.len().checked_div(self.page_size as u64).unwrap_or(0));
            }
            if !filled.is_empty() && f(filled).is_break() {
                break;
            }
            // A buffer with room left means the walk is over (or reached
            // `max_pages`): `walk_end` cannot be trusted then. The kernel
            // sets it only where its own 512-region buffer or ours ran
            // full, so after a walk that flushed its buffer and went on to
            // the end it is stale, short of regions already reported.
            if n < buf.len() {
                break;
            }
            // Ours ran full: go on from where the walk stopped, and never
            // from before the last region reported.
            let next = arg.walk_end.max(filled.last().map_or(0, |r| r.end));
            if next <= at {
                return Err(ScanError::NoProgress { range, at });
            }
            at = next;
        }
        Ok(totals)
    }

    /// Run `query` over `range` with no output buffer: with
    /// `PM_SCAN_WP_MATCHING` this write-protects every matching page.
    pub fn apply(&self, range: Range, query: &Query) -> Result<(), ScanError> {
        self.check_range(range)?;
        let mut arg = self.arg(query, range.start as u64, range.end as u64, 0);
        self.sys
            .pagemap_scan(&self.fd, &mut arg, None)
            .map(drop)
            .map_err(|source| ScanError::Sys { range, source })
    }

    /// The first region of `range` that matches `query`, if any.
    pub fn first(&self, range: Range, query: &Query) -> Result<Option<PageRegion>, ScanError> {
        let mut one = [PageRegion::default()];
        let mut found = None;
        self.scan(range, query, &mut one, |r| {
            found = r.first().copied();
            ControlFlow::Break(())
        })?;
        Ok(found)
    }

    /// Pages of `range` holding data: see [`Query::populated`].
    pub fn populated(
        &self,
        range: Range,
        swap: Swap,
        skip_file_pages: bool,
        buf: &mut [PageRegion],
        f: impl FnMut(&[PageRegion]) -> ControlFlow<()>,
    ) -> Result<ScanTotals, ScanError> {
        self.scan(range, &Query::populated(swap, skip_file_pages), buf, f)
    }

    /// The page size scans count in.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    fn check_range(&self, range: Range) -> Result<(), ScanError> {
        let mask = self.page_size.wrapping_sub(1);
        if range.start >= range.end || range.start & mask != 0 || range.end & mask != 0 {
            return Err(ScanError::BadRange {
                range,
                page_size: self.page_size,
            });
        }
        Ok(())
    }

    fn arg(&self, q: &Query, start: u64, end: u64, max_pages: u64) -> PmScanArg {
        PmScanArg {
            size: PM_SCAN_ARG_SIZE as u64,
            flags: q.flags,
            start,
            end,
            walk_end: 0,
            vec: 0,
            vec_len: 0,
            max_pages,
            category_inverted: q.inverted,
            category_mask: q.mask,
            category_anyof_mask: q.anyof,
            return_mask: q.return_mask,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_uapi() {
        assert_eq!(core::mem::size_of::<PmScanArg>(), 96);
        assert_eq!(core::mem::size_of::<PageRegion>(), 24);
        // _IOWR('f', 16, struct pm_scan_arg) as the C headers compute it.
        assert_eq!(PAGEMAP_SCAN, 0xc060_6610);
    }

    #[test]
    fn populated_query_shape() {
        let q = Query::populated(Swap::Exclude, true);
        assert_eq!(q.anyof, category::PRESENT);
        assert_eq!(q.mask, category::PFNZERO | category::FILE);
        assert_eq!(q.inverted, category::PFNZERO | category::FILE);
        let q = Query::populated(Swap::Include, false);
        assert_eq!(q.anyof, category::PRESENT | category::SWAPPED);
    }
}
