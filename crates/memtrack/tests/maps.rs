//! Parsing `/proc/<pid>/maps`: this process's own, and crafted text.

mod common;

use common::{in_child, sized_file, PAGE};
use ferry_memtrack::maps::{self, Change, Kind, Mapping, MapsError, OwnedMaps, Prot};
use ferry_memtrack::Syscalls;
use std::os::fd::AsRawFd;

const SYS: Syscalls = Syscalls::LIBC;

fn parse_all(text: &str) -> Vec<Mapping<'_>> {
    let mut out = vec![Mapping::default(); 64];
    let n = maps::parse(text.as_bytes(), &mut out).unwrap_or_else(|e| panic!("{e}"));
    out.truncate(n);
    out
}

const CRAFTED: &str = "\
55c4c2a55000-55c4c2a76000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000001000 r-xp 00001000 fe:00 325843                     /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000001000-7f0000003000 rw-s 00000000 00:01 4242                       /dev/shm/a file with  two  spaces (deleted)
7f0000003000-7f0000004000 rw-p 00000000 00:00 0 
7f0000004000-7f0000005000 ---p 00000000 00:00 0
7f0000005000-7f0000006000 rw-p 00000000 00:00 0                          [anon:jit heap]
7f0000006000-7f0000007000 r--s 00000000 00:01 17                         /memfd:ring (deleted)
7f53a6fa7000-7f53a6fab000 r--p 00000000 00:00 0                          [vvar]
7f53a6fab000-7f53a6fad000 r--p 00000000 00:00 0                          [vvar_vclock]
7f53a6fad000-7f53a6faf000 r-xp 00000000 00:00 0                          [vdso]
7f53a6faf000-7f53a6fb0000 rw-p 00000000 00:00 0                          [anon_shmem:x]
7f53a6fb0000-7f53a6fb1000 rw-p 00000000 00:0e 123                        anon_inode:[perf_event]
7f53a6fb1000-7f53a6fb2000 r--p 00000000 00:00 0                          [uprobes]
7ffd933ea000-7ffd9340b000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

#[test]
fn crafted_text_parses_field_by_field() {
    let m = parse_all(CRAFTED);
    assert_eq!(m.len(), 15);
    assert_eq!(m[0].kind, Kind::Heap);
    assert_eq!((m[0].start, m[0].end), (0x55c4c2a55000, 0x55c4c2a76000));
    assert_eq!(
        m[0].prot,
        Prot {
            read: true,
            write: true,
            exec: false
        }
    );
    assert!(!m[0].shared && m[0].trackable());

    let libc = &m[1];
    assert_eq!(libc.kind, Kind::File);
    assert_eq!(
        libc.prot,
        Prot {
            read: true,
            write: false,
            exec: true
        }
    );
    assert_eq!(libc.offset, 0x1000);
    assert_eq!(
        (libc.dev_major, libc.dev_minor, libc.inode),
        (0xfe, 0, 325843)
    );
    assert_eq!(libc.path, b"/usr/lib/x86_64-linux-gnu/libc.so.6");
    assert!(!libc.deleted && libc.trackable());

    let spaced = &m[2];
    assert_eq!(spaced.path, b"/dev/shm/a file with  two  spaces");
    assert!(spaced.deleted && spaced.shared && !spaced.trackable());
    assert_eq!(
        (spaced.dev_major, spaced.dev_minor, spaced.inode),
        (0, 1, 4242)
    );

    // Anonymous, with the kernel's trailing space and without it.
    assert_eq!((m[3].kind, m[3].path), (Kind::Anonymous, &b""[..]));
    assert_eq!((m[4].kind, m[4].path), (Kind::Anonymous, &b""[..]));
    assert!(m[4].prot.is_none() && !m[4].trackable());
    assert_eq!(
        (m[5].kind, m[5].path),
        (Kind::Anonymous, &b"[anon:jit heap]"[..])
    );
    assert_eq!(m[6].path, b"/memfd:ring");
    assert!(m[6].deleted);
    assert_eq!(m[7].kind, Kind::Vvar);
    assert_eq!(m[8].kind, Kind::VvarVclock);
    assert_eq!(m[9].kind, Kind::Vdso);
    for special in &m[7..10] {
        assert!(!special.trackable(), "{:?}", special.kind);
    }
    assert_eq!(m[10].kind, Kind::Anonymous);
    assert_eq!(m[11].kind, Kind::Other);
    assert_eq!(m[12].kind, Kind::Other);
    assert_eq!(m[13].kind, Kind::Stack);
    assert_eq!(m[14].kind, Kind::Vsyscall);
    assert_eq!(m[14].start, 0xffffffffff600000);
    assert!(!m[14].trackable());
}

#[test]
fn unusual_but_valid_lines() {
    // No padding, a last line without a newline, a 64-bit offset and inode,
    // an empty line, a name with trailing spaces kept.
    let text = "1000-2000 rw-p 0000000100000000 103:02 18446744073709551615 /x\n\n3000-4000 r--p 00000000 00:00 0 /name with trailing  ";
    let m = parse_all(text);
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].offset, 0x1_0000_0000);
    assert_eq!((m[0].dev_major, m[0].dev_minor), (0x103, 2));
    assert_eq!(m[0].inode, u64::MAX);
    assert_eq!(m[0].path, b"/x");
    assert_eq!(m[1].path, b"/name with trailing  ");
    // A file named with a newline is shown escaped; it stays one line.
    let m = parse_all("1000-2000 r--p 00000000 00:05 9      /tmp/a\\012b\n");
    assert_eq!(m[0].path, b"/tmp/a\\012b");
}

#[test]
fn bad_lines_are_reported_with_their_place() {
    let good = "1000-2000 rw-p 00000000 00:00 0\n";
    for (bad, what) in [
        ("zz00-2000 rw-p 00000000 00:00 0", "bad start address"),
        ("1000 rw-p 00000000 00:00 0", "bad start address"),
        (
            "1000-2000 rw-q 00000000 00:00 0",
            "sharing flag is neither 'p' nor 's'",
        ),
        (
            "1000-2000 rz-p 00000000 00:00 0",
            "bad permission character",
        ),
        ("1000-2000 rw", "truncated permissions"),
        ("1000-2000 rw-p 0000g000 00:00 0", "bad offset"),
        ("1000-2000 rw-p 00000000 0000 0", "bad device major"),
        ("1000-2000 rw-p 00000000 00:00 x", "bad inode"),
        ("1000-2000 rw-p 00000000 00:00", "bad device minor"),
        ("1000-2000 rw-p 00000000 00:00 ", "bad inode"),
        (
            "2000-1000 rw-p 00000000 00:00 0",
            "end address below start address",
        ),
        ("1000-2000 rw-p 00000000 00:00 0/x", "bad inode"),
        (
            "10000000000000000-2000 rw-p 00000000 00:00 0",
            "bad start address",
        ),
    ] {
        let text = format!("{good}{good}{bad}\n{good}");
        let mut out = vec![Mapping::default(); 8];
        match maps::parse(text.as_bytes(), &mut out) {
            Err(MapsError::Parse(e)) => {
                assert_eq!(
                    (e.line, e.offset, e.what),
                    (3, 2 * good.len(), what),
                    "{bad}"
                );
                let msg = e.to_string();
                assert!(msg.starts_with("maps line 3 (byte 64): "), "{msg}");
            }
            other => panic!("{bad:?} parsed: {other:?}"),
        }
    }
}

#[test]
fn overflowing_the_caller_storage_is_an_error() {
    let mut out = vec![Mapping::default(); 3];
    match maps::parse(CRAFTED.as_bytes(), &mut out) {
        Err(
            e @ MapsError::TooMany {
                capacity: 3,
                line: 4,
            },
        ) => {
            assert_eq!(e.to_string(), "maps: more than 3 mappings (at line 4)");
        }
        other => panic!("{other:?}"),
    }
    // The text buffer, too.
    let mut text = [0u8; 64];
    let mut out = vec![Mapping::default(); 4096];
    match maps::read_self(SYS, &mut text, &mut out) {
        Err(MapsError::TextTooLong { capacity: 64 }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn this_process_maps() {
    let maps = OwnedMaps::read_self(SYS).unwrap_or_else(|e| panic!("{e}"));
    let m = maps.mappings().unwrap();
    assert!(m.len() > 10);
    assert!(
        m.windows(2).all(|w| w[0].end <= w[1].start),
        "not sorted and disjoint"
    );

    let local = 0u64;
    let here = &local as *const u64 as usize;
    let stack = m
        .iter()
        .find(|x| x.range().contains(here))
        .expect("no mapping holds a local");
    // Test threads run on anonymous stacks; the main thread on [stack].
    assert!(
        matches!(stack.kind, Kind::Stack | Kind::Anonymous),
        "{:?}",
        stack.kind
    );
    assert!(stack.prot.write && stack.trackable());
    assert!(m.iter().any(|x| x.kind == Kind::Stack));

    let code = this_process_maps as fn() as usize;
    let text = m
        .iter()
        .find(|x| x.range().contains(code))
        .expect("no mapping holds our code");
    assert_eq!(text.kind, Kind::File);
    assert!(text.prot.exec && text.inode != 0 && !text.deleted);
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    assert_eq!(text.path, exe.as_os_str().as_encoded_bytes());

    assert!(m.iter().any(|x| x.kind == Kind::Vdso));
    assert!(m.iter().any(|x| x.kind == Kind::Vvar));

    // The same through /proc/<pid>/maps and caller storage.
    let mut buf = vec![0u8; 1 << 20];
    let mut out = vec![Mapping::default(); 4096];
    let n = maps::read_pid(SYS, std::process::id(), &mut buf, &mut out).unwrap();
    // Other test threads come and go; the fixed mappings are the same.
    assert!(n > 10);
    let vdso = |ms: &[Mapping<'_>]| ms.iter().find(|x| x.kind == Kind::Vdso).map(|x| x.range());
    assert_eq!(vdso(&out[..n]), vdso(&m));
    assert!(out[..n].iter().any(|x| x.same_as(text)));
}

#[test]
fn a_file_with_spaces_in_its_name_deleted_while_mapped() {
    in_child(|| {
        let path = format!("/dev/shm/ferry memtrack {} two  spaces", std::process::id());
        let f = sized_file(&path, 4 * PAGE as u64);
        // SAFETY: a fresh shared mapping of our file.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4 * PAGE,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let find = |maps: &OwnedMaps| {
            let m = maps.mappings().unwrap();
            let x = *m
                .iter()
                .find(|x| x.start == p as usize)
                .expect("mapping not listed");
            (x.path.to_vec(), x.deleted, x.kind, x.shared, x.inode)
        };
        let before = OwnedMaps::read_self(SYS).unwrap();
        let (name, deleted, kind, shared, inode) = find(&before);
        assert_eq!(name, path.as_bytes());
        assert!(!deleted && shared && kind == Kind::File && inode != 0);
        std::fs::remove_file(&path).unwrap();
        let after = OwnedMaps::read_self(SYS).unwrap();
        let (name2, deleted2, _, _, inode2) = find(&after);
        assert_eq!(name2, path.as_bytes());
        assert!(deleted2);
        assert_eq!(inode2, inode);
        // The diff sees the unlink as a change of that mapping.
        let (b, a) = (before.mappings().unwrap(), after.mappings().unwrap());
        let mut changed = Vec::new();
        maps::diff(&b, &a, |c| {
            if let Change::Added(m) = c {
                changed.push(m.start);
            }
        });
        assert!(changed.contains(&(p as usize)), "{changed:x?}");
    });
}

#[test]
fn diff_reports_added_removed_and_changed() {
    let old = parse_all(
        "1000-2000 rw-p 00000000 00:00 0\n3000-4000 rw-p 00000000 00:00 0\n5000-6000 r--p 00000000 00:00 0\n",
    );
    let new = parse_all(
        "1000-2000 rw-p 00000000 00:00 0\n5000-6000 rw-p 00000000 00:00 0\n7000-8000 rw-p 00000000 00:00 0\n",
    );
    let mut seen = Vec::new();
    maps::diff(&old, &new, |c| match c {
        Change::Added(m) => seen.push(('+', m.start)),
        Change::Removed(m) => seen.push(('-', m.start)),
    });
    assert_eq!(
        seen,
        vec![('-', 0x3000), ('-', 0x5000), ('+', 0x5000), ('+', 0x7000)]
    );
    let mut none = 0;
    maps::diff(&old, &old, |_| none += 1);
    assert_eq!(none, 0);
}
