//! Dirty-page tracking: userfaultfd write-protect in asynchronous mode,
//! read back with `PAGEMAP_SCAN`.
//!
//! A range registered with `UFFDIO_REGISTER_MODE_WP` on a userfaultfd opened
//! with `UFFD_FEATURE_WP_ASYNC` keeps a per-page write-protect bit in the
//! page tables. A write to a protected page is resolved by the kernel at
//! once — it clears the bit, no message is sent and nothing waits — so the
//! cleared bits are the pages written since they were last protected.
//! `PAGEMAP_SCAN` reports them and, with `PM_SCAN_WP_MATCHING`, protects
//! them again in the same page-table walk: that is the core of an
//! incremental checkpoint.
//!
//! The definitions below are the kernel's UAPI
//! (`include/uapi/linux/userfaultfd.h`); the `libc` crate does not carry
//! them.

use crate::error::SysError;
use crate::maps::Mapping;
use crate::pagemap::{ioc, IOC_READ, IOC_WRITE};
use crate::pagemap::{PageRegion, Pagemap, Query, ScanError, ScanTotals, PM_SCAN_WP_MATCHING};
use crate::sys_unsafe::{Fd, Syscalls};
use crate::Range;
use core::ops::ControlFlow;

/// `UFFD_API`.
pub const UFFD_API: u64 = 0xaa;
const UFFDIO: u8 = 0xaa;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct UffdioApi {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct UffdioRange {
    pub start: u64,
    pub len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct UffdioRegister {
    pub range: UffdioRange,
    pub mode: u64,
    pub ioctls: u64,
}

/// `struct uffdio_writeprotect`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct UffdioWriteprotect {
    pub range: UffdioRange,
    pub mode: u64,
}

/// `UFFDIO_API = _IOWR(0xAA, 0x3F, struct uffdio_api)`.
pub const UFFDIO_API: u32 = ioc(
    IOC_READ | IOC_WRITE,
    UFFDIO,
    0x3f,
    core::mem::size_of::<UffdioApi>(),
);
/// `UFFDIO_REGISTER = _IOWR(0xAA, 0x00, struct uffdio_register)`.
pub const UFFDIO_REGISTER: u32 = ioc(
    IOC_READ | IOC_WRITE,
    UFFDIO,
    0x00,
    core::mem::size_of::<UffdioRegister>(),
);
/// `UFFDIO_UNREGISTER = _IOR(0xAA, 0x01, struct uffdio_range)`.
pub const UFFDIO_UNREGISTER: u32 = ioc(IOC_READ, UFFDIO, 0x01, core::mem::size_of::<UffdioRange>());
/// `UFFDIO_WRITEPROTECT = _IOWR(0xAA, 0x06, struct uffdio_writeprotect)`.
pub const UFFDIO_WRITEPROTECT: u32 = ioc(
    IOC_READ | IOC_WRITE,
    UFFDIO,
    0x06,
    core::mem::size_of::<UffdioWriteprotect>(),
);
/// `USERFAULTFD_IOC_NEW = _IO(0xAA, 0x00)`, on `/dev/userfaultfd`.
pub const USERFAULTFD_IOC_NEW: u32 = ioc(0, UFFDIO, 0x00, 0);

/// Bit `_UFFDIO_WRITEPROTECT` (6) of `uffdio_register.ioctls`: the range
/// accepts `UFFDIO_WRITEPROTECT`.
pub const UFFDIO_WRITEPROTECT_BIT: u64 = 1 << 6;
/// `UFFDIO_REGISTER_MODE_WP`.
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
/// `UFFDIO_WRITEPROTECT_MODE_WP`.
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// `UFFD_USER_MODE_ONLY`: the descriptor handles user-mode faults only,
/// which is what lets an unprivileged process open one when
/// `vm.unprivileged_userfaultfd` is 0. Asynchronous write-protect never
/// delivers a fault, so writes by the kernel (`read(2)` into a tracked
/// buffer) are tracked all the same.
pub const UFFD_USER_MODE_ONLY: i32 = 1;

/// `UFFD_FEATURE_*` bits this crate uses.
pub mod feature {
    /// `UFFD_FEATURE_WP_HUGETLBFS_SHMEM`: write-protect on hugetlbfs and shmem.
    pub const WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
    /// `UFFD_FEATURE_WP_UNPOPULATED`: protecting a range also marks its
    /// never-touched pages, so a first read of one maps the zero page
    /// protected (not "written") and a first write is seen.
    pub const WP_UNPOPULATED: u64 = 1 << 13;
    /// `UFFD_FEATURE_WP_ASYNC`: the kernel resolves write-protect faults
    /// itself; the written state is read with `PAGEMAP_SCAN`.
    pub const WP_ASYNC: u64 = 1 << 15;
}

/// The features [`Tracker`] asks for. The kernel refuses the whole request
/// (`EINVAL`) if it lacks one, so an open tracker has them all.
pub const FEATURES: u64 = feature::WP_ASYNC | feature::WP_UNPOPULATED | feature::WP_HUGETLBFS_SHMEM;

/// Where a userfaultfd comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The `userfaultfd(2)` system call, with `UFFD_USER_MODE_ONLY`.
    Syscall,
    /// `ioctl(USERFAULTFD_IOC_NEW)` on `/dev/userfaultfd` (Linux ≥ 6.1):
    /// allowed by the device's file mode, and not by a seccomp filter on
    /// `userfaultfd(2)`.
    Device,
}

/// Opening a tracker failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// No userfaultfd could be had.
    #[error("open userfaultfd: {0}")]
    Uffd(SysError),
    /// The kernel lacks a feature this crate needs (Linux ≥ 6.7).
    #[error("userfaultfd features {wanted:#x} (WP_ASYNC, WP_UNPOPULATED, WP_HUGETLBFS_SHMEM) not all offered: kernel has {offered:#x}")]
    Features {
        /// What was asked for.
        wanted: u64,
        /// What the kernel offers.
        offered: u64,
    },
    /// `UFFDIO_API` failed.
    #[error("enable userfaultfd features: {0}")]
    Api(SysError),
    /// `/proc/self/pagemap` could not be opened.
    #[error("open pagemap: {0}")]
    Pagemap(SysError),
}

/// Tracking a range failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrackError {
    /// The range is empty or not page-aligned.
    #[error("track {range}: range is empty or not page-aligned")]
    BadRange {
        /// The range.
        range: Range,
    },
    /// `UFFDIO_REGISTER` refused it: `EINVAL` for a mapping that cannot be
    /// tracked (`[vvar]`, `[vdso]`, `VM_PFNMAP`/`VM_IO` device memory) or a
    /// hole, `EPERM` for a shared mapping of a file opened read-only,
    /// `EBUSY` for a range another userfaultfd has registered.
    #[error("track {range}: {source}")]
    Register {
        /// The range.
        range: Range,
        /// The call's error.
        source: SysError,
    },
    /// The range was registered but does not accept write-protect.
    #[error("track {range}: registered, but the kernel offers no UFFDIO_WRITEPROTECT for it (ioctls {ioctls:#x})")]
    NoWriteProtect {
        /// The range.
        range: Range,
        /// What the kernel offers for it.
        ioctls: u64,
    },
    /// `UFFDIO_WRITEPROTECT` failed.
    #[error("write-protect {range}: {source}")]
    Protect {
        /// The range.
        range: Range,
        /// The call's error.
        source: SysError,
    },
    /// `UFFDIO_UNREGISTER` failed.
    #[error("untrack {range}: {source}")]
    Unregister {
        /// The range.
        range: Range,
        /// The call's error.
        source: SysError,
    },
}

/// A userfaultfd in asynchronous write-protect mode plus this process's
/// pagemap: the written state of every page of the ranges it tracks.
///
/// Tracking belongs to the descriptor: dropping the tracker (closing its
/// last reference) ends it. A child made by `fork` inherits none of it.
#[derive(Debug)]
pub struct Tracker {
    uffd: Fd,
    pagemap: Pagemap,
    sys: Syscalls,
    page_size: usize,
}

impl Tracker {
    /// Open a tracker: `userfaultfd(2)` first, `/dev/userfaultfd` when the
    /// call is refused (`EPERM`, `ENOSYS`: a seccomp filter or the sysctl).
    pub fn open(sys: Syscalls) -> Result<Tracker, OpenError> {
        match Self::open_via(sys, Source::Syscall) {
            Err(OpenError::Uffd(e))
                if e.errno.0 == libc::EPERM
                    || e.errno.0 == libc::ENOSYS
                    || e.errno.0 == libc::EACCES =>
            {
                Self::open_via(sys, Source::Device)
            }
            r => r,
        }
    }

    /// Open a tracker from `source`.
    pub fn open_via(sys: Syscalls, source: Source) -> Result<Tracker, OpenError> {
        let uffd = Self::new_uffd(sys, source)?;
        let mut api = UffdioApi {
            api: UFFD_API,
            features: FEATURES,
            ioctls: 0,
        };
        if let Err(e) = sys.uffdio_api(&uffd, &mut api) {
            // EINVAL when a feature is missing: the handshake is once per
            // descriptor, so ask a fresh one what the kernel has.
            if e.errno.0 == libc::EINVAL {
                let other = Self::new_uffd(sys, source)?;
                let mut probe = UffdioApi {
                    api: UFFD_API,
                    features: 0,
                    ioctls: 0,
                };
                if sys.uffdio_api(&other, &mut probe).is_ok()
                    && probe.features & FEATURES != FEATURES
                {
                    return Err(OpenError::Features {
                        wanted: FEATURES,
                        offered: probe.features,
                    });
                }
            }
            return Err(OpenError::Api(e));
        }
        let pagemap = Pagemap::open_self(sys).map_err(OpenError::Pagemap)?;
        Ok(Tracker {
            uffd,
            pagemap,
            sys,
            page_size: crate::page_size(),
        })
    }

    fn new_uffd(sys: Syscalls, source: Source) -> Result<Fd, OpenError> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY;
        match source {
            Source::Syscall => sys.userfaultfd(flags).map_err(OpenError::Uffd),
            Source::Device => {
                let dev = sys
                    .open("open(/dev/userfaultfd)", c"/dev/userfaultfd", libc::O_RDWR)
                    .map_err(OpenError::Uffd)?;
                sys.uffd_new(&dev, flags).map_err(OpenError::Uffd)
            }
        }
    }

    /// The pagemap's descriptor number (kept away from the program's, as
    /// the userfaultfd's).
    pub fn pagemap_raw(&self) -> i32 {
        self.pagemap.raw()
    }

    /// The pagemap the tracker scans.
    pub fn pagemap(&self) -> &Pagemap {
        &self.pagemap
    }

    /// The userfaultfd's descriptor number (the shim keeps it away from the
    /// program's descriptors).
    pub fn uffd_raw(&self) -> i32 {
        self.uffd.raw()
    }

    /// Start tracking `range`: register it, then write-protect all of it,
    /// so that from now on a write to any of its pages marks that page.
    ///
    /// The protection is applied with `PAGEMAP_SCAN` and
    /// `PM_SCAN_WP_MATCHING` (as [`Tracker::reset`] does): the same result
    /// as `UFFDIO_WRITEPROTECT` ([`Tracker::protect`]) in one page-table
    /// walk, about three times faster on a populated range.
    pub fn track(&self, range: Range) -> Result<(), TrackError> {
        self.register(range)?;
        let q = Query {
            flags: PM_SCAN_WP_MATCHING,
            ..Query::default()
        };
        self.pagemap.apply(range, &q).map_err(|e| match e {
            ScanError::Sys { source, .. } => TrackError::Protect { range, source },
            _ => TrackError::BadRange { range },
        })
    }

    /// Register `range` for asynchronous write-protect (without protecting
    /// it: until [`Tracker::protect`], every page reads as written).
    pub fn register(&self, range: Range) -> Result<(), TrackError> {
        let r = self.uffd_range(range)?;
        let mut reg = UffdioRegister {
            range: r,
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        self.sys
            .uffdio_register(&self.uffd, &mut reg)
            .map_err(|source| TrackError::Register { range, source })?;
        if reg.ioctls & UFFDIO_WRITEPROTECT_BIT == 0 {
            return Err(TrackError::NoWriteProtect {
                range,
                ioctls: reg.ioctls,
            });
        }
        Ok(())
    }

    /// Write-protect every page of `range` (registered), marking them all
    /// clean. `UFFDIO_WRITEPROTECT` touches every page-table entry; to
    /// clean only what was written, [`Tracker::reset`] is much cheaper.
    pub fn protect(&self, range: Range) -> Result<(), TrackError> {
        let r = self.uffd_range(range)?;
        let mut wp = UffdioWriteprotect {
            range: r,
            mode: UFFDIO_WRITEPROTECT_MODE_WP,
        };
        self.sys
            .uffdio_writeprotect(&self.uffd, &mut wp)
            .map_err(|source| TrackError::Protect { range, source })
    }

    /// Stop tracking `range`.
    pub fn untrack(&self, range: Range) -> Result<(), TrackError> {
        let mut r = self.uffd_range(range)?;
        self.sys
            .uffdio_unregister(&self.uffd, &mut r)
            .map_err(|source| TrackError::Unregister { range, source })
    }

    /// Report the pages of `range` written since they were last protected,
    /// into `buf`, calling `f` with each batch (the scan loops when `buf`
    /// fills). With `reprotect` each reported page is protected again in the
    /// same walk, atomically with respect to the report: a write after its
    /// page was reported shows in the next scan.
    ///
    /// All of `range` must be tracked: if part of it is not (a mapping made,
    /// moved by `mremap`, or unmapped and made again since tracking
    /// started) the scan fails with [`ScanError::Untracked`] before
    /// protecting anything — the kernel would skip such a mapping in
    /// silence. Holes between mappings are skipped.
    ///
    /// Pages dropped by `madvise(MADV_DONTNEED)` are reported as written:
    /// their content changed (to zero).
    pub fn scan_dirty(
        &self,
        range: Range,
        reprotect: bool,
        buf: &mut [PageRegion],
        f: impl FnMut(&[PageRegion]) -> ControlFlow<()>,
    ) -> Result<ScanTotals, ScanError> {
        if let Some(u) = self.pagemap.first(range, &Query::untracked())? {
            return Err(ScanError::Untracked {
                range,
                untracked: u.range(),
            });
        }
        self.pagemap.scan(range, &Query::written(reprotect), buf, f)
    }

    /// Mark every page of `range` clean again without reporting: protects
    /// the written pages only (`PAGEMAP_SCAN` with `PM_SCAN_WP_MATCHING`
    /// and no output), so its cost follows the pages written, not the
    /// range's size. Fails like [`Tracker::scan_dirty`] on an untracked part.
    pub fn reset(&self, range: Range) -> Result<(), ScanError> {
        if let Some(u) = self.pagemap.first(range, &Query::untracked())? {
            return Err(ScanError::Untracked {
                range,
                untracked: u.range(),
            });
        }
        let q = Query {
            flags: PM_SCAN_WP_MATCHING,
            ..Query::default()
        };
        self.pagemap.apply(range, &q)
    }

    /// Report the parts of `range` that are mapped but not tracked: the
    /// mappings made (or moved, or re-made in place) after tracking started.
    /// A checkpoint saves them whole and then [`Tracker::track`]s them.
    pub fn untracked(
        &self,
        range: Range,
        buf: &mut [PageRegion],
        f: impl FnMut(&[PageRegion]) -> ControlFlow<()>,
    ) -> Result<ScanTotals, ScanError> {
        self.pagemap.scan(range, &Query::untracked(), buf, f)
    }

    /// Track every part of the [`Mapping::trackable`] mappings of `maps`
    /// that is not tracked yet — all of them the first time; afterwards the
    /// mappings made, moved or re-made since — calling `f` with each part
    /// and whether tracking it worked. A checkpoint saves each such part
    /// whole; a part that could not be tracked is reported again next time.
    /// `buf` holds the untracked regions of one mapping at a time. Returns
    /// how many parts were found.
    pub fn track_new(
        &self,
        maps: &[Mapping<'_>],
        buf: &mut [PageRegion],
        mut f: impl FnMut(Range, Result<(), TrackError>),
    ) -> Result<usize, ScanError> {
        let mut parts = 0usize;
        for m in maps.iter().filter(|m| m.trackable()) {
            let mut at = m.start;
            // Each batch is tracked before the next is asked for: what was
            // tracked is no longer reported, so the scan goes on from where
            // it stopped.
            loop {
                let mut full = false;
                let mut last = at;
                self.pagemap
                    .scan(Range::new(at, m.end), &Query::untracked(), buf, |regions| {
                        for r in regions {
                            let part = r.range();
                            parts = parts.saturating_add(1);
                            f(part, self.track(part));
                            last = part.end;
                        }
                        full = true;
                        ControlFlow::Break(())
                    })?;
                if !full || last >= m.end || last <= at {
                    break;
                }
                at = last;
            }
        }
        Ok(parts)
    }

    /// True when every mapped page of `range` is tracked.
    pub fn is_tracked(&self, range: Range) -> Result<bool, ScanError> {
        Ok(self.pagemap.first(range, &Query::untracked())?.is_none())
    }

    fn uffd_range(&self, range: Range) -> Result<UffdioRange, TrackError> {
        let mask = self.page_size.wrapping_sub(1);
        if range.start >= range.end || range.start & mask != 0 || range.end & mask != 0 {
            return Err(TrackError::BadRange { range });
        }
        Ok(UffdioRange {
            start: range.start as u64,
            len: range.len() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_c_headers() {
        // As computed by the C macros of <linux/ioctl.h>.
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010_aa01);
        assert_eq!(UFFDIO_WRITEPROTECT, 0xc018_aa06);
        assert_eq!(USERFAULTFD_IOC_NEW, 0xaa00);
    }
}
