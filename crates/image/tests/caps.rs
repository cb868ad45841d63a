//! Lengths and counts read from the input are checked against the bytes
//! left and against their caps before anything is allocated. A counting
//! allocator records the largest allocation each test thread makes while
//! the reader runs.

mod common;

use common::*;
use ferry_image::manifest::{write_manifest, Manifest, ManifestEntry, ManifestHeader};
use ferry_image::read::{Check, ImageError, ProcessReader};
use ferry_image::sections::*;
use ferry_image::{FileHeader, Kind, SectionHeader, MAX_PATH};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Cursor, Read};
use std::path::Path;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is passed on to the system allocator unchanged; the
// thread-local is a const-initialised `Cell`, which needs no allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(new_size)));
        // SAFETY: the caller's contract for `realloc` is passed on as it is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The reader's own buffer plus room for small sections.
const BOUND: usize = 256 << 10;

/// Run `f`, and check it allocated nothing larger than [`BOUND`].
fn small_allocations<T>(f: impl FnOnce() -> T) -> T {
    LARGEST.with(|l| l.set(0));
    let out = f();
    let largest = LARGEST.with(|l| l.get());
    assert!(largest <= BOUND, "an allocation of {largest} bytes");
    out
}

/// Read `prefix` followed by zeros, as a file of `file_len` bytes.
fn read_lazy(prefix: &[u8], file_len: u64) -> ImageError {
    small_allocations(|| {
        let src = Cursor::new(prefix.to_vec()).chain(io::repeat(0));
        let e = match ProcessReader::new(src, file_len, Path::new("big.fimg")) {
            Ok(mut r) => r.read_all(&mut Check).expect_err("accepted"),
            Err(e) => e,
        };
        assert_one_line(&e);
        e
    })
}

fn read_small(bytes: &[u8]) -> ImageError {
    small_allocations(|| {
        let e = read(bytes).expect_err("accepted");
        assert_one_line(&e);
        e
    })
}

fn sealed(kind: Kind, index: u32, payload: &[u8], claimed_len: u64) -> Vec<u8> {
    let h = SectionHeader::new(kind as u16, 0, index, claimed_len, crc32c::crc32c(payload));
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn file(sections: &[Vec<u8>]) -> Vec<u8> {
    let mut out = FileHeader::new(1, 1, 0, 0).as_bytes().to_vec();
    for s in sections {
        out.extend_from_slice(s);
    }
    out
}

fn too_long(e: &ImageError, what: &str) {
    assert!(
        matches!(e, ImageError::TooLong { what: w, .. } if w.contains(what)),
        "want {what:?}, got {e}"
    );
}

#[test]
fn a_section_longer_than_the_file_is_truncated() {
    let p = process_payload(1);
    for claimed in [p.len() as u64 + 1, 1 << 40, u64::MAX] {
        let e = read_small(&file(&[sealed(Kind::Process, 0, &p, claimed)]));
        assert!(matches!(e, ImageError::Truncated { offset: 64, .. }), "{e}");
    }
}

#[test]
fn a_huge_small_section_is_refused_before_it_is_read() {
    let p = process_payload(1);
    let e = read_lazy(&file(&[sealed(Kind::Process, 0, &p, 1 << 30)]), 1 << 40);
    too_long(&e, "section payload length");
}

#[test]
fn a_huge_header_length_is_refused() {
    let mut h = FileHeader::new(1, 1, 0, 0);
    h.header_len = u32::MAX;
    h.seal();
    too_long(&read_lazy(h.as_bytes(), 1 << 40), "header length");
}

fn process_with(f: impl FnOnce(&mut ProcessInfo)) -> Vec<u8> {
    let mut p = ProcessInfo::new_zeroed();
    p.vpid = 1;
    f(&mut p);
    p.as_bytes().to_vec()
}

#[test]
fn string_lengths_over_their_caps_are_refused() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            process_with(|p| p.cwd_len = MAX_PATH as u32 + 1),
            "working directory",
        ),
        (process_with(|p| p.exe_len = u32::MAX), "executable path"),
        (
            process_with(|p| {
                p.flags = PROC_HAS_ARGV;
                p.argv_len = u32::MAX
            }),
            "argument block",
        ),
    ];
    for (payload, what) in cases {
        too_long(
            &read_small(&file(&[sealed(
                Kind::Process,
                0,
                &payload,
                payload.len() as u64,
            )])),
            what,
        );
    }
    // Within the cap but longer than the payload.
    let p = process_with(|p| p.cwd_len = 100);
    let e = read_small(&file(&[sealed(Kind::Process, 0, &p, p.len() as u64)]));
    assert!(
        e.to_string()
            .contains("too short for the working directory"),
        "{e}"
    );
}

fn after_minimal(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let p = process_payload(1);
    let t = thread_payload(1);
    file(&[
        sealed(Kind::Process, 0, &p, p.len() as u64),
        sealed(Kind::Thread, 1, &t, t.len() as u64),
        sealed(kind, 2, payload, payload.len() as u64),
    ])
}

#[test]
fn counts_over_their_caps_are_refused() {
    let mut t = ThreadInfo::read_from_bytes(&thread_payload(2)).unwrap();
    t.xsave_len = 1 << 20;
    too_long(
        &read_small(&after_minimal(Kind::Thread, t.as_bytes())),
        "XSAVE",
    );
    let pending = PendingInfo {
        vtid: 0,
        count: u32::MAX,
    };
    too_long(
        &read_small(&after_minimal(Kind::Pending, pending.as_bytes())),
        "pending signal count",
    );
    let mut m = mapping(0x1000, 1, MAP_PRIVATE, 0);
    m.path_len = u32::MAX;
    too_long(
        &read_small(&after_minimal(Kind::Mapping, m.as_bytes())),
        "mapping path",
    );
}

fn fd_payload(kind: u16, body: &[u8], body_len: u32, data_len: u64) -> Vec<u8> {
    let info = FdInfo {
        fd: 5,
        kind,
        body_len,
        data_len,
        ..FdInfo::new_zeroed()
    };
    let mut p = info.as_bytes().to_vec();
    p.extend_from_slice(body);
    p
}

#[test]
fn descriptor_lengths_over_their_caps_are_refused() {
    // The body length, against its cap, in a file that claims to be huge.
    let p = process_payload(1);
    let t = thread_payload(1);
    let body = fd_payload(FD_EVENTFD, &[], u32::MAX, 0);
    let bytes = file(&[
        sealed(Kind::Process, 0, &p, p.len() as u64),
        sealed(Kind::Thread, 1, &t, t.len() as u64),
        sealed(Kind::Fd, 2, &body, 1 << 36),
    ]);
    too_long(&read_lazy(&bytes, 1 << 40), "descriptor body length");
    // Body and data against the payload.
    let e = read_small(&after_minimal(
        Kind::Fd,
        &fd_payload(FD_EVENTFD, &[0; 16], 16, 1 << 40),
    ));
    assert!(e.to_string().contains("do not fit in the payload"), "{e}");
    // Counts inside bodies.
    let epoll = EpollSet {
        count: u32::MAX,
        flags: 0,
    };
    let e = read_small(&after_minimal(
        Kind::Fd,
        &fd_payload(FD_EPOLL, epoll.as_bytes(), 8, 0),
    ));
    too_long(&e, "epoll entry count");
    let sock = SocketInfo {
        opt_count: 65,
        ..SocketInfo::new_zeroed()
    };
    let e = read_small(&after_minimal(
        Kind::Fd,
        &fd_payload(FD_UDP, sock.as_bytes(), 32, 0),
    ));
    too_long(&e, "socket option count");
    let other = OtherFd {
        desc_len: 1 << 20,
        reserved: 0,
    };
    let e = read_small(&after_minimal(
        Kind::Fd,
        &fd_payload(FD_OTHER, other.as_bytes(), 8, 0),
    ));
    too_long(&e, "description length");
    let reg = RegularFile {
        offset: 0,
        flags: 0,
        path_len: 5000,
    };
    let e = read_small(&after_minimal(
        Kind::Fd,
        &fd_payload(FD_REGULAR, reg.as_bytes(), 16, 0),
    ));
    too_long(&e, "descriptor path length");
}

#[test]
fn a_huge_page_run_count_is_refused() {
    let p = process_payload(1);
    let t = thread_payload(1);
    let m = mapping(0x10000, 1, MAP_PRIVATE, 0);
    let pages = PagesInfo {
        mapping_start: 0x10000,
        run_count: u64::MAX,
    };
    let bytes = file(&[
        sealed(Kind::Process, 0, &p, p.len() as u64),
        sealed(Kind::Thread, 1, &t, t.len() as u64),
        sealed(Kind::Mapping, 2, m.as_bytes(), MappingInfo::LEN as u64),
        sealed(
            Kind::Pages,
            3,
            pages.as_bytes(),
            PagesInfo::LEN as u64 + 1024,
        ),
    ]);
    too_long(&read_lazy(&bytes, 1 << 40), "page run count");
}

fn manifest_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    let e = ManifestEntry {
        vpid: 1,
        parent_vpid: 0,
        file_len: 1,
        file_crc: 2,
        reserved: 0,
    };
    write_manifest(&mut out, 1, 0, 0, &[], &[e], None).unwrap();
    out
}

type Mutation = fn(&mut ManifestHeader);

#[test]
fn manifest_lengths_over_their_caps_are_refused() {
    let good = manifest_bytes();
    assert!(Manifest::parse(&good, Path::new("manifest.fimg")).is_ok());
    let mutations: Vec<(Mutation, &str)> = vec![
        (|h| h.process_count = u32::MAX, "process count"),
        (|h| h.process_count = 0, "process count"),
        (|h| h.entry_len = u32::MAX, "entry length"),
        (|h| h.entry_len = 8, "entry length"),
        (|h| h.parent_dir_len = u32::MAX, "parent directory"),
        (|h| h.header_len = 1 << 30, "header length"),
    ];
    for (mutate, what) in mutations {
        let mut bytes = good.clone();
        let (mut h, _) = ManifestHeader::read_from_prefix(&bytes).unwrap();
        mutate(&mut h);
        h.crc = h.compute_crc();
        bytes[..64].copy_from_slice(h.as_bytes());
        let e =
            small_allocations(|| Manifest::parse(&bytes, Path::new("manifest.fimg")).unwrap_err());
        assert_one_line(&e);
        too_long(&e, what);
    }
}
