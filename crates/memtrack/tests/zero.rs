//! Skipping what holds no data: never-touched pages without reading them,
//! zero pages by reading them.

mod common;

use common::{in_child, pages_of, Anon, Rng, PAGE};
use ferry_memtrack::zero::{is_zero, nonzero_runs};
use ferry_memtrack::{PageRegion, Pagemap, Swap, Syscalls, Tracker};
use std::collections::BTreeSet;
use std::ops::ControlFlow;

const SYS: Syscalls = Syscalls::LIBC;

fn populated(pm: &Pagemap, mem: &Anon, swap: Swap) -> (BTreeSet<usize>, u64) {
    let mut buf = vec![PageRegion::default(); 32];
    let mut out = Vec::new();
    let totals = pm
        .populated(mem.range(), swap, false, &mut buf, |r| {
            out.extend_from_slice(r);
            ControlFlow::Continue(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    (pages_of(&out, mem.range().start), totals.pages)
}

#[test]
fn a_sparse_gigabyte_is_reported_as_its_touched_pages() {
    in_child(|| {
        let mut rng = Rng::new();
        let seed = rng.seed;
        let mem = Anon::new(1 << 30);
        let n = mem.pages();
        let picked: Vec<usize> = rng.set(n, 18).into_iter().collect();
        let written: BTreeSet<usize> = picked[..10].iter().copied().collect();
        let zeroed: BTreeSet<usize> = picked[10..13].iter().copied().collect();
        let read: BTreeSet<usize> = picked[13..].iter().copied().collect();
        for &p in &written {
            mem.write(p, rng.below(PAGE), 0x5a);
        }
        for &p in &zeroed {
            mem.write(p, 0, 0);
        }
        for &p in &read {
            assert_eq!(mem.read(p, 0), 0);
        }
        let pm = Pagemap::open_self(SYS).unwrap();
        // Read pages map the shared zero page: not reported. Pages written
        // with zeros are memory like any other: reported, then found zero.
        let want: BTreeSet<usize> = written.union(&zeroed).copied().collect();
        let (got, pages) = populated(&pm, &mem, Swap::Exclude);
        assert_eq!(got, want, "seed {seed}");
        assert_eq!(pages, want.len() as u64);
        let nonzero: BTreeSet<usize> = got
            .iter()
            .copied()
            .filter(|&p| !is_zero(&mem.slice()[p * PAGE..(p + 1) * PAGE]))
            .collect();
        assert_eq!(nonzero, written, "seed {seed}");

        // Tracked, the never-touched pages carry write-protect markers that
        // the kernel reports as SWAPPED: counting swap reports them all.
        let t = Tracker::open(SYS).unwrap();
        t.track(mem.range()).unwrap();
        assert_eq!(populated(&pm, &mem, Swap::Exclude).0, want, "seed {seed}");
        let (_, all) = populated(&pm, &mem, Swap::Include);
        assert_eq!(all, (n - read.len()) as u64, "seed {seed}");
    });
}

#[test]
fn file_pages_can_be_left_out() {
    in_child(|| {
        let path = format!("/dev/shm/ferry-memtrack-file-{}", std::process::id());
        std::fs::write(&path, vec![7u8; 8 * PAGE]).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh private mapping of our file.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let mem = Anon {
            ptr: p.cast(),
            len: 8 * PAGE,
        };
        for i in 0..8 {
            mem.read(i, 0);
        }
        mem.write(3, 0, 1);
        let pm = Pagemap::open_self(SYS).unwrap();
        let mut buf = [PageRegion::default(); 8];
        let mut out = Vec::new();
        pm.populated(mem.range(), Swap::Exclude, true, &mut buf, |r| {
            out.extend_from_slice(r);
            ControlFlow::Continue(())
        })
        .unwrap();
        // Only the copied-on-write page is the process's own.
        assert_eq!(pages_of(&out, mem.range().start), BTreeSet::from([3]));
    });
}

#[test]
fn nonzero_runs_of_real_memory() {
    let mem = Anon::new(64 * PAGE);
    for p in [0usize, 1, 2, 10, 11, 63] {
        mem.write(p, PAGE - 1, 1);
    }
    let mut runs = Vec::new();
    nonzero_runs(mem.slice(), PAGE, |s, e| runs.push((s / PAGE, e / PAGE)));
    assert_eq!(runs, vec![(0, 3), (10, 12), (63, 64)]);
    assert!(is_zero(&mem.slice()[3 * PAGE..10 * PAGE]));
    assert!(!is_zero(mem.slice()));
}
