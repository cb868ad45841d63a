//! A damaged, cut, foreign or newer process file: the reader refuses it
//! with one line naming the file and the offset, or (a newer minor's
//! optional additions) reads what it knows.

mod common;

use common::*;
use ferry_image::read::{ImageError, Section};
use ferry_image::sections::*;
use ferry_image::{FileHeader, Kind, FLAG_OPTIONAL, FLAG_TRAILING_CRC, IMAGE_MAJOR, PAGE_SIZE};
use zerocopy::{FromZeros, IntoBytes};

fn header(vpid: u32) -> FileHeader {
    FileHeader::new(vpid, 1, 0, 77)
}

fn err(bytes: &[u8]) -> ImageError {
    let e = read(bytes).expect_err("the reader accepted a bad file");
    assert_one_line(&e);
    e
}

#[test]
fn every_damaged_byte_is_detected() {
    let bytes = write(&small());
    assert!(read(&bytes).is_ok());
    assert!(bytes.len() > 4096, "the image holds at least one page");
    for at in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bad = bytes.clone();
            bad[at] ^= mask;
            let e = match read(&bad) {
                Ok(_) => panic!("byte {at} ^ {mask:#x} not detected"),
                Err(e) => e,
            };
            assert_one_line(&e);
            // The error points at or before the damaged byte.
            assert!(e.offset().unwrap() <= at as u64, "byte {at}: {e}");
        }
    }
}

#[test]
fn every_truncation_is_detected() {
    let bytes = write(&small());
    for len in 0..bytes.len() {
        let e = err(&bytes[..len]);
        match e {
            ImageError::Truncated { .. } | ImageError::MissingEnd { .. } => {}
            ImageError::BadMagic { .. } if len == 0 => {}
            e => panic!("cut at {len}: {e}"),
        }
    }
}

#[test]
fn a_cut_inside_a_section_names_that_section() {
    let bytes = write(&small());
    // Cut in the middle of the last page-carrying section.
    let e = err(&bytes[..bytes.len() - 200]);
    let ImageError::Truncated {
        offset,
        available,
        needed,
        ..
    } = e
    else {
        panic!("{e}");
    };
    assert!(needed > available);
    assert_eq!(available, bytes.len() as u64 - 200 - offset);
}

#[test]
fn bad_magic_is_refused() {
    let mut bytes = write(&small());
    bytes[0] = b'X';
    let e = err(&bytes);
    assert!(matches!(e, ImageError::BadMagic { offset: 0, .. }));
    assert_eq!(
        e.to_string(),
        "p.fimg: offset 0: not a Ferry process image (bad magic)"
    );
    // A Ferry log is not an image.
    let mut log = b"FERRYLOG".to_vec();
    log.resize(200, 0);
    assert!(matches!(err(&log), ImageError::BadMagic { .. }));
    // Nor is a prefix of the magic alone.
    assert!(matches!(err(b"FERRY"), ImageError::Truncated { .. }));
}

#[test]
fn an_unknown_major_version_is_refused() {
    for major in [0u16, IMAGE_MAJOR + 1, u16::MAX] {
        let mut h = header(1);
        h.major = major;
        h.minor = 3;
        // Named as a version problem whether or not the checksum fits.
        for seal in [false, true] {
            if seal {
                h.seal();
            }
            let bytes = raw_file(&h, &[], &minimal_sections(1));
            let e = err(&bytes);
            assert!(
                matches!(e, ImageError::UnsupportedVersion { offset: 8, major: m, minor: 3, .. } if m == major),
                "{e}"
            );
            assert!(e
                .to_string()
                .contains(&format!("version {major}.3 is not supported")));
        }
    }
}

#[test]
fn a_bad_header_checksum_is_refused() {
    let mut h = header(1);
    h.created_ns += 1;
    let e = err(&raw_file(&h, &[], &minimal_sections(1)));
    assert!(
        matches!(e, ImageError::BadHeaderChecksum { offset: 0, .. }),
        "{e}"
    );
}

fn newer_header() -> (FileHeader, Vec<u8>) {
    let mut h = header(1);
    h.minor = 7;
    h.header_len = 64 + 24;
    h.seal();
    (h, vec![0xab; 24])
}

#[test]
fn a_newer_minor_with_optional_additions_is_read() {
    let (h, ext) = newer_header();
    let mut sections = minimal_sections(1);
    // A known section with fields appended.
    let mut rl = Rlimits::new_zeroed().as_bytes().to_vec();
    rl.extend_from_slice(b"appended by a newer minor");
    sections.push((Kind::Rlimits as u16, 0, rl));
    // Unknown optional sections, with the checksum in either place.
    sections.push((300, FLAG_OPTIONAL, b"something new".to_vec()));
    sections.push((301, FLAG_OPTIONAL | FLAG_TRAILING_CRC, vec![7; 5000]));
    // Flag bits this version does not know are ignored.
    sections.push((302, FLAG_OPTIONAL | 0x100, vec![]));
    let bytes = raw_file(&h, &ext, &sections);
    let got = read(&bytes).unwrap_or_else(|e| panic!("{e}"));
    let skipped: Vec<_> = got
        .sections
        .iter()
        .filter_map(|s| match s {
            Section::Skipped { kind, len } => Some((*kind, *len)),
            _ => None,
        })
        .collect();
    assert_eq!(skipped, vec![(300, 13), (301, 5000), (302, 0)]);
    assert!(got
        .sections
        .contains(&Section::Rlimits(Rlimits::new_zeroed())));
    // A skipped section's checksum is still checked.
    let mut bad = bytes.clone();
    let at = bad.windows(13).position(|w| w == b"something new").unwrap();
    bad[at] ^= 1;
    assert!(matches!(
        err(&bad),
        ImageError::BadSectionChecksum { index: 3, .. }
    ));
}

#[test]
fn a_newer_minor_with_an_unknown_required_section_is_refused() {
    let (h, ext) = newer_header();
    let mut sections = minimal_sections(1);
    sections.push((300, 0, b"must be understood".to_vec()));
    let bytes = raw_file(&h, &ext, &sections);
    let offset = bytes
        .windows(18)
        .position(|w| w == b"must be understood")
        .unwrap() as u64
        - 32;
    let e = err(&bytes);
    assert!(
        matches!(e, ImageError::UnknownKind { kind: 300, index: 2, offset: o, .. } if o == offset),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        format!("p.fimg: offset {offset}: section #2 has kind 300, unknown to this reader and not optional")
    );
}

fn mapping_payload(m: &MappingInfo) -> Vec<u8> {
    m.as_bytes().to_vec()
}

fn pages_payload(start: u64, runs: &[PageRun]) -> Vec<u8> {
    let mut p = PagesInfo {
        mapping_start: start,
        run_count: runs.len() as u64,
    }
    .as_bytes()
    .to_vec();
    for r in runs {
        p.extend_from_slice(r.as_bytes());
        if r.kind == RUN_DATA {
            p.extend(std::iter::repeat_n(
                1u8,
                r.count as usize * PAGE_SIZE as usize,
            ));
        }
    }
    p
}

fn with_pages(m: MappingInfo, runs: &[PageRun]) -> Vec<u8> {
    let mut s = minimal_sections(1);
    s.push((Kind::Mapping as u16, 0, mapping_payload(&m)));
    s.push((
        Kind::Pages as u16,
        FLAG_TRAILING_CRC,
        pages_payload(m.start, runs),
    ));
    raw_file(&header(1), &[], &s)
}

#[test]
fn page_runs_are_aligned_and_inside_their_mapping() {
    let m = mapping(0x10000, 4, MAP_PRIVATE | MAP_ANON, SPECIAL_NONE);
    let run = |addr, count| PageRun {
        addr,
        count,
        kind: RUN_DATA,
    };
    assert!(read(&with_pages(m, &[run(0x10000, 4)])).is_ok());
    for (runs, why) in [
        (vec![run(0x10800, 1)], "not page-aligned"),
        (vec![run(0x0f000, 1)], "before the mapping"),
        (vec![run(0x13000, 2)], "past the end"),
        (vec![run(0x14000, 1)], "past the end"),
        (vec![run(0x11000, 2), run(0x12000, 1)], "overlapping"),
        (vec![run(!0xfff, 1)], "past the end"),
    ] {
        let e = err(&with_pages(m, &runs));
        let ImageError::BadPageAddress {
            why: w, start, end, ..
        } = &e
        else {
            panic!("{runs:?}: {e}");
        };
        assert!(w.contains(why), "{runs:?}: {e}");
        assert_eq!((*start, *end), (m.start, m.end));
    }
    // A zero-page run carries no bytes; zero pages are still checked.
    let zero = PageRun {
        addr: 0x10000,
        count: 9,
        kind: RUN_ZERO,
    };
    assert!(matches!(
        err(&with_pages(m, &[zero])),
        ImageError::BadPageAddress { .. }
    ));
}

#[test]
fn pages_belong_to_the_mapping_before_them() {
    // No mapping before.
    let mut s = minimal_sections(1);
    s.push((Kind::Pages as u16, 0, pages_payload(0x10000, &[])));
    let e = err(&raw_file(&header(1), &[], &s));
    assert!(e.to_string().contains("without an ordinary mapping"), "{e}");
    // Another mapping's start.
    let mut s = minimal_sections(1);
    let m = mapping(0x10000, 4, MAP_PRIVATE, SPECIAL_NONE);
    s.push((Kind::Mapping as u16, 0, mapping_payload(&m)));
    s.push((Kind::Pages as u16, 0, pages_payload(0x20000, &[])));
    let e = err(&raw_file(&header(1), &[], &s));
    assert!(
        e.to_string().contains("follows the mapping at 0x10000"),
        "{e}"
    );
    // The vDSO has no content.
    let mut s = minimal_sections(1);
    let m = mapping(0x10000, 2, MAP_PRIVATE, SPECIAL_VDSO);
    s.push((Kind::Mapping as u16, 0, mapping_payload(&m)));
    s.push((Kind::Pages as u16, 0, pages_payload(0x10000, &[])));
    assert!(matches!(
        err(&raw_file(&header(1), &[], &s)),
        ImageError::Invalid { .. }
    ));
}

#[test]
fn an_unknown_descriptor_kind_is_refused() {
    let mut s = minimal_sections(1);
    let info = FdInfo {
        fd: 9,
        kind: 99,
        body_len: 0,
        ..FdInfo::new_zeroed()
    };
    s.push((Kind::Fd as u16, 0, info.as_bytes().to_vec()));
    let e = err(&raw_file(&header(1), &[], &s));
    assert!(
        matches!(
            e,
            ImageError::UnknownFdKind {
                fd: 9,
                kind: 99,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn a_file_without_its_end_section_is_refused() {
    let mut bytes = header(1).as_bytes().to_vec();
    for (i, (k, f, p)) in minimal_sections(1).iter().enumerate() {
        push_section(&mut bytes, i as u32, *k, *f, p);
    }
    let e = err(&bytes);
    assert!(
        matches!(e, ImageError::MissingEnd { sections: 2, offset, .. } if offset == bytes.len() as u64),
        "{e}"
    );
    // A header alone.
    assert!(matches!(
        err(header(1).as_bytes()),
        ImageError::MissingEnd { sections: 0, .. }
    ));
}

#[test]
fn nothing_follows_the_end_section() {
    let mut bytes = raw_file(&header(1), &[], &minimal_sections(1));
    let len = bytes.len() as u64;
    bytes.push(0);
    assert!(matches!(err(&bytes), ImageError::AfterEnd { offset, .. } if offset == len));
}

#[test]
fn the_end_section_must_match_the_file() {
    let good = raw_file(&header(1), &[], &minimal_sections(1));
    assert!(read(&good).is_ok());
    // An end section claiming another count (sealed, so only the count is
    // wrong).
    let mut bytes = header(1).as_bytes().to_vec();
    for (i, (k, f, p)) in minimal_sections(1).iter().enumerate() {
        push_section(&mut bytes, i as u32, *k, *f, p);
    }
    let end = End {
        sections: 3,
        bytes: bytes.len() as u64,
        running_crc: crc32c::crc32c(&bytes),
        reserved: 0,
    };
    push_section(&mut bytes, 2, Kind::End as u16, 0, end.as_bytes());
    let e = err(&bytes);
    assert!(e.to_string().contains("end section says 3 sections"), "{e}");
}

type RawSection = (u16, u16, Vec<u8>);

#[test]
fn sections_come_in_order_and_rules_between_them_hold() {
    let p = process_payload(1);
    let t = thread_payload(1);
    let cases: Vec<(Vec<RawSection>, &str)> = vec![
        (
            vec![(Kind::Thread as u16, 0, t.clone())],
            "the process section comes first",
        ),
        (
            vec![
                (Kind::Process as u16, 0, p.clone()),
                (Kind::Process as u16, 0, p.clone()),
                (Kind::Thread as u16, 0, t.clone()),
            ],
            "the process section comes first",
        ),
        (
            vec![
                (Kind::Process as u16, 0, process_payload(2)),
                (Kind::Thread as u16, 0, t.clone()),
            ],
            "vpid 2, the file header 1",
        ),
        (
            vec![(Kind::Process as u16, 0, p.clone())],
            "no thread section",
        ),
        (
            vec![
                (Kind::Process as u16, 0, p.clone()),
                (Kind::Thread as u16, 0, t.clone()),
                (Kind::Thread as u16, 0, t.clone()),
            ],
            "appears twice",
        ),
        (
            vec![
                (Kind::Process as u16, 0, p.clone()),
                (Kind::Thread as u16, 0, t.clone()),
                (
                    Kind::SigActions as u16,
                    0,
                    SigActions::new_zeroed().as_bytes().to_vec(),
                ),
                (
                    Kind::SigActions as u16,
                    0,
                    SigActions::new_zeroed().as_bytes().to_vec(),
                ),
            ],
            "a second signal actions section",
        ),
        (
            vec![
                (Kind::Process as u16, 0, p.clone()),
                (Kind::Thread as u16, 0, t.clone()),
                (
                    Kind::Mapping as u16,
                    0,
                    mapping(0x20000, 1, MAP_PRIVATE, 0).as_bytes().to_vec(),
                ),
                (
                    Kind::Mapping as u16,
                    0,
                    mapping(0x10000, 1, MAP_PRIVATE, 0).as_bytes().to_vec(),
                ),
            ],
            "starts before the end of the previous one",
        ),
        (
            vec![
                (Kind::Process as u16, 0, p.clone()),
                (Kind::Thread as u16, 0, t.clone()),
                (
                    Kind::Mapping as u16,
                    0,
                    mapping(0x20000, 1, MAP_FILE, 0).as_bytes().to_vec(),
                ),
            ],
            "not exactly one of private and shared",
        ),
        (
            vec![
                (Kind::Process as u16, 0, p[..40].to_vec()),
                (Kind::Thread as u16, 0, t.clone()),
            ],
            "too short",
        ),
    ];
    for (sections, why) in cases {
        let e = err(&raw_file(&header(1), &[], &sections));
        assert!(e.to_string().contains(why), "want {why:?}, got {e}");
    }
    // Two sections swapped: their numbers give it away.
    let mut bytes = header(1).as_bytes().to_vec();
    push_section(&mut bytes, 0, Kind::Process as u16, 0, &p);
    push_section(&mut bytes, 2, Kind::Thread as u16, 0, &t);
    let e = err(&bytes);
    assert!(
        e.to_string()
            .contains("section numbered #2 where #1 belongs"),
        "{e}"
    );
}

#[test]
fn a_descriptor_number_appears_once() {
    let mut s = minimal_sections(1);
    let mut fd = FdInfo {
        fd: 4,
        kind: FD_EVENTFD,
        body_len: 16,
        ..FdInfo::new_zeroed()
    }
    .as_bytes()
    .to_vec();
    fd.extend_from_slice(Eventfd::new_zeroed().as_bytes());
    s.push((Kind::Fd as u16, 0, fd.clone()));
    assert!(read(&raw_file(&header(1), &[], &s)).is_ok());
    s.push((Kind::Fd as u16, 0, fd));
    let e = err(&raw_file(&header(1), &[], &s));
    assert!(e.to_string().contains("descriptor 4 appears twice"), "{e}");
}

#[test]
fn page_runs_increase_across_a_mappings_pages_sections() {
    let m = mapping(0x10000, 8, MAP_PRIVATE | MAP_ANON, SPECIAL_NONE);
    let run = |addr| PageRun {
        addr,
        count: 2,
        kind: RUN_DATA,
    };
    let file = |first: u64, second: u64| {
        let mut s = minimal_sections(1);
        s.push((Kind::Mapping as u16, 0, mapping_payload(&m)));
        s.push((Kind::Pages as u16, 0, pages_payload(m.start, &[run(first)])));
        s.push((
            Kind::Pages as u16,
            FLAG_TRAILING_CRC,
            pages_payload(m.start, &[run(second)]),
        ));
        raw_file(&header(1), &[], &s)
    };
    let got = read(&file(0x10000, 0x14000)).unwrap();
    assert_eq!(got.pages.len(), 4);
    let e = err(&file(0x14000, 0x11000));
    assert!(
        matches!(e, ImageError::BadPageAddress { addr: 0x11000, .. }),
        "{e}"
    );
    // The writer keeps the same rule.
    let mut w = ferry_image::write::ImageWriter::new(Vec::new(), 1, 1, 0, 0).unwrap();
    w.process(
        &ProcessInfo {
            vpid: 1,
            ..ProcessInfo::new_zeroed()
        },
        b"",
        b"",
        None,
        None,
    )
    .unwrap();
    w.mapping(&m, b"").unwrap();
    w.begin_pages(m.start, 1, 0).unwrap();
    w.page_run(&PageRun {
        addr: 0x14000,
        count: 1,
        kind: RUN_ZERO,
    })
    .unwrap();
    w.end_section().unwrap();
    w.begin_pages(m.start, 1, 0).unwrap();
    assert!(w
        .page_run(&PageRun {
            addr: 0x11000,
            count: 1,
            kind: RUN_ZERO
        })
        .is_err());
}
