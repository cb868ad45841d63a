//! What tracking and copying memory cost: a benchmark, not a test. It checks
//! that each scan found what was written (and stops if not), and prints a
//! markdown table; its exit code says nothing about speed.
//!
//! ```text
//! cargo bench -p ferry-memtrack --bench memtrack -- [--size-mib N] [--dirty-percent P]
//!     [--rounds R] [--dir DIR]
//! ```
//! or `scripts/bench-memtrack`.

use ferry_memtrack::pagemap::{category, PM_SCAN_WP_MATCHING};
use ferry_memtrack::zero::{is_zero, nonzero_runs};
use ferry_memtrack::{PageRegion, Pagemap, Query, Range, Swap, Syscalls, Tracker};
use std::io::Write;
use std::ops::ControlFlow;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const SYS: Syscalls = Syscalls::LIBC;
const PAGE: usize = 4096;

struct Args {
    size: usize,
    dirty_percent: f64,
    rounds: usize,
    dir: String,
}

fn args() -> Args {
    let mut a = Args {
        size: 1 << 30,
        dirty_percent: 1.0,
        rounds: 20,
        dir: "/dev/shm".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || {
            it.next()
                .unwrap_or_else(|| die(&format!("{k} needs a value")))
        };
        match k.as_str() {
            "--size-mib" => {
                a.size = v()
                    .parse::<usize>()
                    .unwrap_or_else(|_| die("--size-mib: a number"))
                    << 20
            }
            "--dirty-percent" => {
                a.dirty_percent = v()
                    .parse()
                    .unwrap_or_else(|_| die("--dirty-percent: a number"))
            }
            "--rounds" => a.rounds = v().parse().unwrap_or_else(|_| die("--rounds: a number")),
            "--dir" => a.dir = v(),
            "--bench" => {}
            other => die(&format!("unknown argument {other}")),
        }
    }
    a
}

fn die(msg: &str) -> ! {
    eprintln!("bench-memtrack: {msg}");
    std::process::exit(2)
}

struct Anon {
    ptr: *mut u8,
    len: usize,
}

impl Anon {
    fn new(len: usize) -> Anon {
        // SAFETY: a fresh private anonymous mapping.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            die(&format!(
                "mmap {len} bytes: {}",
                std::io::Error::last_os_error()
            ));
        }
        Anon { ptr: p.cast(), len }
    }
    fn range(&self) -> Range {
        Range::from_len(self.ptr as usize, self.len)
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is readable for `len` bytes while `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and writable; `&mut self` makes it exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    fn touch(&self, page: usize, v: u8) {
        // SAFETY: inside the writable mapping.
        unsafe { std::ptr::write_volatile(self.ptr.add(page * PAGE + 8), v) }
    }
}

// SAFETY: the mapping is plain memory; threads only read it through `&Anon`.
unsafe impl Sync for Anon {}

impl Drop for Anon {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn gbs(bytes: usize, d: Duration) -> String {
    format!("{:.2} GB/s", bytes as f64 / d.as_secs_f64() / 1e9)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let r = f();
    (t.elapsed(), r)
}

struct Table(Vec<(String, String, String)>);
impl Table {
    fn row(&mut self, what: &str, value: String, note: &str) {
        eprintln!("  {what}: {value}");
        self.0.push((what.into(), value, note.into()));
    }
}

/// The pages written since the last protect, counted; re-protected if asked.
fn scan(t: &Tracker, r: Range, reprotect: bool, buf: &mut [PageRegion]) -> u64 {
    t.scan_dirty(r, reprotect, buf, |_| ControlFlow::Continue(()))
        .unwrap_or_else(|e| die(&e.to_string()))
        .pages
}

/// Write every run of non-zero pages of the populated parts of `mem` with
/// `sink`; returns the bytes written.
fn full_copy(
    pm: &Pagemap,
    mem: &Anon,
    buf: &mut [PageRegion],
    mut sink: impl FnMut(&[u8]),
) -> usize {
    let base = mem.ptr as usize;
    let bytes = mem.bytes();
    let mut total = 0usize;
    pm.populated(mem.range(), Swap::Exclude, false, buf, |regions| {
        for r in regions {
            let (s, e) = (r.start as usize - base, r.end as usize - base);
            let region = &bytes[s..e];
            nonzero_runs(region, PAGE, |a, b| {
                for chunk in region[a..b].chunks(8 << 20) {
                    sink(chunk);
                    total += chunk.len();
                }
            });
        }
        ControlFlow::Continue(())
    })
    .unwrap_or_else(|e| die(&e.to_string()));
    total
}

fn write_all(fd: i32, mut b: &[u8]) {
    while !b.is_empty() {
        // SAFETY: writing from a readable slice.
        let n = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
        if n < 0 {
            die(&format!("write: {}", std::io::Error::last_os_error()));
        }
        b = &b[n as usize..];
    }
}

fn main() {
    let a = args();
    let mut table = Table(Vec::new());
    let pages = a.size / PAGE;
    let dirty = ((pages as f64) * a.dirty_percent / 100.0).round().max(1.0) as usize;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![PageRegion::default(); 4096];
    eprintln!(
        "bench-memtrack: {} MiB, {dirty} dirty pages per round, {} rounds",
        a.size >> 20,
        a.rounds
    );

    // The heap: every page holds data.
    let mut heap = Anon::new(a.size);
    let (d, _) = time(|| {
        for (i, p) in heap.bytes_mut().chunks_mut(PAGE).enumerate() {
            p.fill((i as u8) | 1);
        }
    });
    table.row(
        "fill the heap (first touch)",
        gbs(a.size, d),
        "page faults + writes, for scale",
    );

    let t = Tracker::open(SYS).unwrap_or_else(|e| die(&e.to_string()));
    let (d, r) = time(|| t.register(heap.range()));
    r.unwrap_or_else(|e| die(&e.to_string()));
    table.row("register (UFFDIO_REGISTER)", ms(d), "once per mapping");
    let (d, r) = time(|| t.protect(heap.range()));
    r.unwrap_or_else(|e| die(&e.to_string()));
    table.row(
        "start tracking: UFFDIO_WRITEPROTECT, all pages present",
        ms(d),
        "every PTE",
    );
    t.untrack(heap.range())
        .unwrap_or_else(|e| die(&e.to_string()));
    t.register(heap.range())
        .unwrap_or_else(|e| die(&e.to_string()));
    let (d, r) = time(|| t.reset(heap.range()));
    r.unwrap_or_else(|e| die(&e.to_string()));
    table.row(
        "start tracking: PAGEMAP_SCAN WP_MATCHING (what `track` does)",
        ms(d),
        "same result, one walk",
    );
    if scan(&t, heap.range(), false, &mut buf) != 0 {
        die("pages left written after starting to track");
    }

    // Rounds: write a random set of pages, then scan and re-protect.
    let mut scan_reprotect = Vec::new();
    let mut scan_only = Vec::new();
    let mut precheck = Vec::new();
    for round in 0..a.rounds {
        let mut set = std::collections::BTreeSet::new();
        while set.len() < dirty {
            set.insert(rng.below(pages));
        }
        for &p in &set {
            heap.touch(p, round as u8 | 1);
        }
        let (d, n) = time(|| scan(&t, heap.range(), false, &mut buf));
        if n != set.len() as u64 {
            die(&format!(
                "round {round}: scan found {n} pages, {} were written",
                set.len()
            ));
        }
        scan_only.push(d);
        let (d, r) = time(|| t.is_tracked(heap.range()));
        assert!(r.unwrap_or_else(|e| die(&e.to_string())));
        precheck.push(d);
        let (d, n) = time(|| scan(&t, heap.range(), true, &mut buf));
        if n != set.len() as u64 {
            die(&format!(
                "round {round}: scan+reprotect found {n} pages, {} were written",
                set.len()
            ));
        }
        scan_reprotect.push(d);
        if scan(&t, heap.range(), false, &mut buf) != 0 {
            die(&format!(
                "round {round}: pages left written after re-protect"
            ));
        }
    }
    let max = *scan_reprotect.iter().max().unwrap();
    table.row(
        &format!(
            "**scan + re-protect, {}% random pages dirty** (median of {})",
            a.dirty_percent, a.rounds
        ),
        ms(median(&mut scan_reprotect)),
        &format!(
            "max {}; PAGEMAP_SCAN WRITTEN + PM_SCAN_WP_MATCHING, incl. the untracked check",
            ms(max)
        ),
    );
    table.row(
        "scan only, no re-protect (median)",
        ms(median(&mut scan_only)),
        "",
    );
    table.row(
        "untracked check alone (median)",
        ms(median(&mut precheck)),
        "PAGE_IS_WPALLOWED inverted",
    );

    // An incremental checkpoint's core: scan, re-protect, copy what was written.
    let mut ring = vec![0u8; 4 << 20];
    let mut inc = Vec::new();
    let mut inc_bytes = 0;
    for round in 0..a.rounds {
        for _ in 0..dirty {
            heap.touch(rng.below(pages), round as u8 | 1);
        }
        let base = heap.ptr as usize;
        let bytes = heap.bytes();
        let mut at = 0usize;
        let (d, n) = time(|| {
            let mut copied = 0usize;
            t.scan_dirty(heap.range(), true, &mut buf, |regions| {
                for r in regions {
                    let src = &bytes[r.start as usize - base..r.end as usize - base];
                    for part in src.chunks(ring.len()) {
                        if at + part.len() > ring.len() {
                            at = 0;
                        }
                        ring[at..at + part.len()].copy_from_slice(part);
                        at += part.len();
                        copied += part.len();
                    }
                }
                ControlFlow::Continue(())
            })
            .unwrap_or_else(|e| die(&e.to_string()));
            copied
        });
        inc.push(d);
        inc_bytes = n;
    }
    // The two halves apart: first the scan, then the copy of what it found.
    let mut inc_scan = Vec::new();
    let mut inc_copy = Vec::new();
    for round in 0..a.rounds {
        for _ in 0..dirty {
            heap.touch(rng.below(pages), round as u8 | 1);
        }
        let mut found = Vec::new();
        let (d, _) = time(|| {
            t.scan_dirty(heap.range(), true, &mut buf, |r| {
                found.extend_from_slice(r);
                ControlFlow::Continue(())
            })
        });
        inc_scan.push(d);
        let base = heap.ptr as usize;
        let bytes = heap.bytes();
        let mut at = 0usize;
        let (d, _) = time(|| {
            for r in &found {
                let src = &bytes[r.start as usize - base..r.end as usize - base];
                if at + src.len() > ring.len() {
                    at = 0;
                }
                ring[at..at + src.len()].copy_from_slice(src);
                at += src.len();
            }
        });
        inc_copy.push(d);
    }
    // The same copy from memory that is not tracked: what the memory
    // system costs, without userfaultfd.
    let plain_heap = Anon::new(a.size);
    for i in 0..pages {
        plain_heap.touch(i, 1);
    }
    let mut untracked_copy = Vec::new();
    for _ in 0..a.rounds {
        let picks: Vec<usize> = (0..dirty)
            .map(|_| rng.below(pages))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let bytes = plain_heap.bytes();
        let mut at = 0usize;
        let (d, _) = time(|| {
            for &p in &picks {
                if at + PAGE > ring.len() {
                    at = 0;
                }
                ring[at..at + PAGE].copy_from_slice(&bytes[p * PAGE..(p + 1) * PAGE]);
                at += PAGE;
            }
        });
        untracked_copy.push(d);
    }
    drop(plain_heap);
    std::hint::black_box(&ring);
    table.row(
        "**incremental: scan + re-protect + copy the dirty pages to memory** (median)",
        ms(median(&mut inc)),
        &format!("{} KiB copied per round", inc_bytes >> 10),
    );
    table.row(
        "  of which scan + re-protect (median)",
        ms(median(&mut inc_scan)),
        "",
    );
    table.row(
        "  of which copying the scattered dirty pages (median)",
        ms(median(&mut inc_copy)),
        "cold pages and page-table walks, 4 KiB at a time",
    );
    table.row(
        "  the same number of random pages copied from untracked memory (median)",
        ms(median(&mut untracked_copy)),
        "for comparison: the memory system's cost",
    );

    // The same with another return mask: the kernel's slow path.
    for &p in std::iter::repeat_with(|| rng.below(pages))
        .take(dirty)
        .collect::<Vec<_>>()
        .iter()
    {
        heap.touch(p, 2);
    }
    let q = Query {
        flags: PM_SCAN_WP_MATCHING,
        mask: category::WRITTEN,
        return_mask: category::ALL,
        ..Query::default()
    };
    let (d, _) = time(|| {
        t.pagemap()
            .scan(heap.range(), &q, &mut buf, |_| ControlFlow::Continue(()))
    });
    table.row(
        "scan + re-protect, return_mask = all categories",
        ms(d),
        "not the fast path: avoid",
    );

    // reset() versus protecting everything again.
    for _ in 0..dirty {
        heap.touch(rng.below(pages), 3);
    }
    let (d, r) = time(|| t.reset(heap.range()));
    r.unwrap_or_else(|e| die(&e.to_string()));
    table.row("reset (WP_MATCHING, no output), 1% dirty", ms(d), "");
    for _ in 0..dirty {
        heap.touch(rng.below(pages), 4);
    }
    let (d, r) = time(|| t.protect(heap.range()));
    r.unwrap_or_else(|e| die(&e.to_string()));
    table.row(
        "reset by UFFDIO_WRITEPROTECT of the whole range, 1% dirty",
        ms(d),
        "",
    );

    // Clustered writes: 1% of pages as runs of 64.
    let runs = (dirty / 64).max(1);
    for _ in 0..runs {
        let s = rng.below(pages - 64);
        for p in s..s + 64 {
            heap.touch(p, 5);
        }
    }
    let (d, _) = time(|| scan(&t, heap.range(), true, &mut buf));
    table.row("scan + re-protect, 1% dirty in runs of 64 pages", ms(d), "");

    // Full checkpoint: copy every non-zero populated page.
    let pm = Pagemap::open_self(SYS).unwrap_or_else(|e| die(&e.to_string()));
    let path = format!("{}/ferry-memtrack-bench-{}.img", a.dir, std::process::id());
    let mut tmpfs = Vec::new();
    let mut copied = 0;
    for _ in 0..3 {
        let f =
            std::fs::File::create(&path).unwrap_or_else(|e| die(&format!("create {path}: {e}")));
        let (d, n) = time(|| full_copy(&pm, &heap, &mut buf, |c| write_all(f.as_raw_fd(), c)));
        copied = n;
        tmpfs.push(d);
        drop(f);
        let _ = std::fs::remove_file(&path);
    }
    if copied != a.size {
        die(&format!(
            "copied {copied} bytes of a {}-byte heap of non-zero pages",
            a.size
        ));
    }
    table.row(
        &format!("**full copy to a file in {}** (median of 3)", a.dir),
        gbs(copied, median(&mut tmpfs)),
        "populated scan + zero check + write(2), 8 MiB writes",
    );
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap();
    let (d, _) = time(|| full_copy(&pm, &heap, &mut buf, |c| write_all(null.as_raw_fd(), c)));
    table.row(
        "full copy to /dev/null",
        gbs(a.size, d),
        "the kernel copies nothing: scan + zero check + syscalls",
    );
    let mut rings = Vec::new();
    for _ in 0..3 {
        let mut at = 0usize;
        let (d, _) = time(|| {
            full_copy(&pm, &heap, &mut buf, |c| {
                for part in c.chunks(ring.len()) {
                    if at + part.len() > ring.len() {
                        at = 0;
                    }
                    ring[at..at + part.len()].copy_from_slice(part);
                    at += part.len();
                }
            })
        });
        rings.push(d);
    }
    std::hint::black_box(&ring);
    table.row(
        "**full copy into a 4 MiB memory ring** (median of 3)",
        gbs(a.size, median(&mut rings)),
        "every byte read and copied once",
    );
    // The file's pages allocated beforehand: the copy alone.
    let mut pre = Vec::new();
    for _ in 0..3 {
        let f =
            std::fs::File::create(&path).unwrap_or_else(|e| die(&format!("create {path}: {e}")));
        // SAFETY: allocating our own file's blocks.
        if unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, a.size as i64) } != 0 {
            die(&format!(
                "fallocate {path}: {}",
                std::io::Error::last_os_error()
            ));
        }
        let (d, _) = time(|| full_copy(&pm, &heap, &mut buf, |c| write_all(f.as_raw_fd(), c)));
        pre.push(d);
        drop(f);
        let _ = std::fs::remove_file(&path);
    }
    table.row(
        &format!(
            "full copy to a file in {}, blocks allocated beforehand (median of 3)",
            a.dir
        ),
        gbs(a.size, median(&mut pre)),
        "fallocate before the clock starts",
    );
    // The file mapped and written with memcpy, its pages faulted in first
    // (MAP_POPULATE) or as the copy goes.
    for (populate, what) in [
        (true, "pages faulted in beforehand"),
        (false, "pages faulted in by the copy"),
    ] {
        let mut v = Vec::new();
        for _ in 0..3 {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap_or_else(|e| die(&format!("create {path}: {e}")));
            f.set_len(a.size as u64)
                .unwrap_or_else(|e| die(&format!("truncate {path}: {e}")));
            let flags = libc::MAP_SHARED | if populate { libc::MAP_POPULATE } else { 0 };
            // SAFETY: a fresh shared mapping of our own file.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    a.size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    flags,
                    f.as_raw_fd(),
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                die(&format!("mmap {path}: {}", std::io::Error::last_os_error()));
            }
            let mut img = Anon {
                ptr: p.cast(),
                len: a.size,
            };
            let out = img.bytes_mut();
            let mut at = 0usize;
            let (d, _) = time(|| {
                full_copy(&pm, &heap, &mut buf, |c| {
                    out[at..at + c.len()].copy_from_slice(c);
                    at += c.len();
                })
            });
            v.push(d);
            drop(img);
            drop(f);
            let _ = std::fs::remove_file(&path);
        }
        table.row(
            &format!(
                "full copy into a mapped file in {}, {what} (median of 3)",
                a.dir
            ),
            gbs(a.size, median(&mut v)),
            "memcpy into MAP_SHARED",
        );
    }
    // Two threads, each writing half the heap at its own offset.
    let mut two = Vec::new();
    for _ in 0..3 {
        let f =
            std::fs::File::create(&path).unwrap_or_else(|e| die(&format!("create {path}: {e}")));
        let half = a.size / 2;
        let (d, _) = time(|| {
            std::thread::scope(|s| {
                for h in 0..2 {
                    let f = &f;
                    let heap = &heap;
                    s.spawn(move || {
                        let part = &heap.bytes()[h * half..(h + 1) * half];
                        let mut off = (h * half) as i64;
                        nonzero_runs(part, PAGE, |a, b| {
                            for chunk in part[a..b].chunks(8 << 20) {
                                let mut c = chunk;
                                while !c.is_empty() {
                                    // SAFETY: writing from a readable slice.
                                    let n = unsafe {
                                        libc::pwrite(f.as_raw_fd(), c.as_ptr().cast(), c.len(), off)
                                    };
                                    if n < 0 {
                                        die(&format!(
                                            "pwrite: {}",
                                            std::io::Error::last_os_error()
                                        ));
                                    }
                                    c = &c[n as usize..];
                                    off += n as i64;
                                }
                            }
                        });
                    });
                }
            })
        });
        two.push(d);
        drop(f);
        let _ = std::fs::remove_file(&path);
    }
    table.row(
        &format!(
            "full copy to a file in {}, two threads (median of 3)",
            a.dir
        ),
        gbs(a.size, median(&mut two)),
        "pwrite(2) of each half at its offset",
    );
    let mut dst = Anon::new(a.size);
    dst.bytes_mut().fill(0);
    let mut plain = Vec::new();
    for _ in 0..3 {
        let (d, _) = time(|| dst.bytes_mut().copy_from_slice(heap.bytes()));
        plain.push(d);
    }
    table.row(
        "**plain memcpy, heap to a second buffer** (median of 3)",
        gbs(a.size, median(&mut plain)),
        "same run, for comparison",
    );
    let (d, z) = time(|| heap.bytes().chunks(PAGE).filter(|p| is_zero(p)).count());
    assert_eq!(z, 0);
    table.row(
        "zero check, non-zero pages",
        gbs(a.size, d),
        "stops at the first non-zero block",
    );
    dst.bytes_mut().fill(0);
    let (d, z) = time(|| dst.bytes().chunks(PAGE).filter(|p| is_zero(p)).count());
    assert_eq!(z, pages);
    table.row(
        "zero check, zero pages (reads every byte)",
        gbs(a.size, d),
        "",
    );
    drop(dst);

    // A sparse mapping: only touched pages are read.
    let sparse = Anon::new(a.size);
    for _ in 0..100 {
        sparse.touch(rng.below(pages), 1);
    }
    let (d, n) = time(|| {
        pm.populated(sparse.range(), Swap::Exclude, false, &mut buf, |_| {
            ControlFlow::Continue(())
        })
        .unwrap_or_else(|e| die(&e.to_string()))
        .pages
    });
    table.row(
        &format!(
            "find the ~100 touched pages of a sparse {} MiB mapping",
            a.size >> 20
        ),
        ms(d),
        &format!("{n} pages found"),
    );
    let (d, r) = time(|| t.track(sparse.range()));
    r.unwrap_or_else(|e| die(&e.to_string()));
    table.row(
        "start tracking the sparse mapping",
        ms(d),
        "markers on every untouched page: page tables for all of it",
    );

    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "| measurement | result | notes |\n|---|---|---|");
    for (w, v, n) in &table.0 {
        let _ = writeln!(out, "| {w} | {v} | {n} |");
    }
}
