//! What memory a process has, and which of its pages were written since the
//! last checkpoint.
//!
//! - [`maps`]: the mappings of a process from `/proc/<pid>/maps`, parsed
//!   into storage the caller provides, and the difference of two tables.
//! - [`Tracker`]: dirty pages with userfaultfd write-protect in asynchronous
//!   mode, read (and re-protected in the same walk) with `PAGEMAP_SCAN`.
//! - [`Pagemap`]: `PAGEMAP_SCAN` itself — which pages hold data, so a full
//!   checkpoint of a huge sparse mapping reads only the pages touched.
//! - [`zero`]: whether a page is all zero.
//!
//! The core is `no_std`, allocates nothing, does not panic, and makes its
//! system calls through a [`Syscalls`] the caller may replace: it is meant
//! to run inside the shim while the program's threads are stopped. What can
//! be tracked, the kernel features relied on, the costs and the traps are
//! in `docs/MEMTRACK.md`.

#![no_std]
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::arithmetic_side_effects
    )
)]

pub mod error;
pub mod maps;
pub mod pagemap;
mod sys_unsafe;
pub mod uffd;
pub mod zero;

pub use error::{Errno, SysError};
pub use pagemap::{category, PageRegion, Pagemap, Query, ScanError, ScanTotals, Swap};
pub use sys_unsafe::{page_size, Fd, RawSyscall, Syscalls};
pub use uffd::{OpenError, Source, TrackError, Tracker};

use core::fmt;

/// A byte range `[start, end)` of the address space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Range {
    /// `[start, end)`.
    pub const fn new(start: usize, end: usize) -> Range {
        Range { start, end }
    }

    /// `len` bytes from `start` (saturating at the top of the address space).
    pub const fn from_len(start: usize, len: usize) -> Range {
        Range {
            start,
            end: start.saturating_add(len),
        }
    }

    /// Bytes in the range.
    pub const fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    /// True when the range has no bytes.
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// True when `addr` is in the range.
    pub const fn contains(&self, addr: usize) -> bool {
        self.start <= addr && addr < self.end
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}-{:#x}", self.start, self.end)
    }
}

/// Whether any swap area is active (`/proc/swaps` has an entry). When none
/// is, no page can be swapped out, and a scan for data may ignore
/// `PAGE_IS_SWAPPED` ([`Swap::Exclude`]) — which inside a tracked range also
/// stands for pages never touched.
pub fn swap_configured(sys: Syscalls) -> Result<bool, maps::MapsError> {
    // The header line plus a little: one entry is enough to answer.
    let mut buf = [0u8; 512];
    let len = match maps::read_file(sys, c"/proc/swaps", &mut buf) {
        Ok(n) => n,
        Err(maps::MapsError::TextTooLong { capacity }) => capacity,
        Err(e) => return Err(e),
    };
    let text = buf.get(..len).unwrap_or(&buf);
    Ok(text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count()
        > 1)
}
