//! The directory and the segment header: names, versions, sequence between
//! segments.

use crate::util::*;
use ferry_log::{
    segment_file_name, LogError, SegmentHeader, SegmentLog, SegmentOptions, SEGMENT_MAJOR,
};
use std::fs;
use zerocopy::IntoBytes;

fn sealed(mut h: SegmentHeader) -> SegmentHeader {
    h.crc = h.compute_crc();
    h
}

#[test]
fn a_gap_between_segments_is_an_error() {
    let dir = tempdir();
    make_log(dir.path(), 0..30, 500);
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    fs::remove_file(&files[1]).unwrap();
    let e = open_err(dir.path());
    let found = files[2].file_name().unwrap().to_str().unwrap()[..20]
        .parse::<u64>()
        .unwrap();
    let expected = files[1].file_name().unwrap().to_str().unwrap()[..20]
        .parse::<u64>()
        .unwrap();
    assert!(
        matches!(e, LogError::Sequence { offset: 16, expected: x, found: y, .. } if (x, y) == (expected, found)),
        "{e}"
    );
    assert_eq!(e.path(), files[2]);
    assert!(e.to_string().ends_with("(a gap)"), "{e}");
}

#[test]
fn an_overlap_between_segments_is_an_error() {
    let dir = tempdir();
    // 0..10 in one segment, then a segment that starts again at 5.
    write_segment(dir.path(), 0, &SegmentHeader::new(0, 0), &batch(0..10));
    let later = write_segment(dir.path(), 5, &SegmentHeader::new(5, 0), &batch(5..8));
    let e = open_err(dir.path());
    assert!(
        matches!(
            e,
            LogError::Sequence {
                offset: 16,
                expected: 10,
                found: 5,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.path(), later);
    assert!(
        e.to_string()
            .ends_with("gseq 5 where 10 was expected (an overlap)"),
        "{e}"
    );
}

#[test]
fn a_gap_inside_a_segment_is_an_error_even_at_the_tail() {
    for body in [
        [batch(0..3), batch(4..5)].concat(),
        [batch(0..3), batch(2..3)].concat(),
    ] {
        let dir = tempdir();
        let path = write_segment(dir.path(), 0, &SegmentHeader::new(0, 0), &body);
        let e = open_err(dir.path());
        let at = record_offsets(&fs::read(&path).unwrap())[3] as u64;
        assert!(matches!(e, LogError::Sequence { expected: 3, .. }), "{e}");
        assert_eq!((e.path(), e.offset()), (path.as_path(), Some(at)));
    }
}

#[test]
fn the_first_record_must_be_the_segments_first_gseq() {
    let dir = tempdir();
    write_segment(dir.path(), 7, &SegmentHeader::new(7, 0), &batch(8..10));
    let e = open_err(dir.path());
    assert!(
        matches!(
            e,
            LogError::Sequence {
                offset: 64,
                expected: 7,
                found: 8,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn files_that_are_not_named_like_segments_are_ignored() {
    let dir = tempdir();
    make_log(dir.path(), 0..10, 500);
    for name in [
        "notes.txt",
        "42.fseg",
        "00000000000000000000.fseg.tmp",
        "00000000000000000001.FSEG",
    ] {
        fs::write(dir.path().join(name), b"not a segment").unwrap();
    }
    fs::create_dir(dir.path().join("lost+found")).unwrap();
    let (mut log, recovery) = open(dir.path(), 500);
    assert_eq!(recovery.torn_tail, None);
    assert_holds(&mut log, 0..10);
    assert!(dir.path().join("notes.txt").exists());
}

#[test]
fn a_file_named_like_a_segment_that_is_not_one_is_an_error() {
    let dir = tempdir();
    make_log(dir.path(), 0..10, 1 << 20);
    let path = dir.path().join(segment_file_name(10));
    fs::write(
        &path,
        b"hello, this is a text file and not a segment at all\n",
    )
    .unwrap();
    let before = snapshot(dir.path());
    let e = open_err(dir.path());
    assert!(matches!(e, LogError::NotASegment { offset: 0, .. }), "{e}");
    assert_eq!(e.path(), path);
    assert_eq!(
        e.to_string(),
        format!(
            "{}: offset 0: not a Ferry segment (bad magic)",
            path.display()
        )
    );
    assert_eq!(snapshot(dir.path()), before);

    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    let e = open_err(dir.path());
    assert!(
        e.to_string()
            .ends_with("not a Ferry segment (not a regular file)"),
        "{e}"
    );

    fs::remove_dir(&path).unwrap();
    let huge = dir.path().join("99999999999999999999.fseg");
    fs::write(&huge, SegmentHeader::new(0, 0).as_bytes()).unwrap();
    let e = open_err(dir.path());
    assert_eq!(e.path(), huge);
    assert!(e.to_string().contains("do not fit a 64-bit gseq"), "{e}");
}

#[test]
fn a_newer_major_version_is_refused() {
    let dir = tempdir();
    let h = sealed(SegmentHeader {
        major: SEGMENT_MAJOR + 1,
        minor: 3,
        ..SegmentHeader::new(0, 0)
    });
    let path = write_segment(dir.path(), 0, &h, &batch(0..3));
    let before = snapshot(dir.path());
    let e = open_err(dir.path());
    assert_eq!(
        e.to_string(),
        format!(
            "{}: offset 8: segment format version 2.3 is not supported (this reader reads version 1.x)",
            path.display()
        )
    );
    assert_eq!(snapshot(dir.path()), before);
    // Whatever its checksum: the version is named first.
    let mut bytes = fs::read(&path).unwrap();
    bytes[60] ^= 1;
    fs::write(&path, bytes).unwrap();
    assert!(matches!(
        open_err(dir.path()),
        LogError::UnsupportedVersion { major: 2, .. }
    ));
}

#[test]
fn a_newer_minor_with_a_longer_header_is_read() {
    let dir = tempdir();
    let h = sealed(SegmentHeader {
        minor: 7,
        header_len: 128,
        ..SegmentHeader::new(0, 0)
    });
    // The extension: 64 bytes this version does not know.
    let body = [vec![0xee; 64], batch(0..4)].concat();
    let path = write_segment(dir.path(), 0, &h, &body);
    let (mut log, recovery) = open(dir.path(), 1 << 20);
    assert_eq!(recovery.torn_tail, None);
    assert_holds(&mut log, 0..4);
    log.append(&batch(4..6)).unwrap();
    log.sync().unwrap();
    log.truncate_after(4).unwrap();
    drop(log);
    let (mut log, _) = open(dir.path(), 1 << 20);
    assert_holds(&mut log, 0..5);
    assert_eq!(&fs::read(&path).unwrap()[64..128], &[0xee; 64]);
}

#[test]
fn impossible_header_fields_are_errors() {
    let cases: [(SegmentHeader, &str); 4] = [
        (
            sealed(SegmentHeader {
                header_len: 32,
                ..SegmentHeader::new(0, 0)
            }),
            "offset 12: segment header length 32 is outside 64..=4096",
        ),
        (
            sealed(SegmentHeader {
                header_len: 1 << 30,
                ..SegmentHeader::new(0, 0)
            }),
            "offset 12: segment header length 1073741824 is outside",
        ),
        (
            SegmentHeader::new(3, 0),
            "offset 16: segment header says first gseq 3, the file name says 0",
        ),
        (SegmentHeader::new(0, 0xabc), ""),
    ];
    for (h, want) in cases {
        let dir = tempdir();
        write_segment(dir.path(), 0, &h, &batch(0..2));
        let (name, e) = if want.is_empty() {
            let e = SegmentLog::open(
                dir.path(),
                SegmentOptions {
                    app_id: 0x123,
                    ..SegmentOptions::default()
                },
            )
            .unwrap_err();
            ("offset 24: segment of application 0x0000000000000abc, this log is for 0x0000000000000123", e)
        } else {
            (want, open_err(dir.path()))
        };
        assert!(e.to_string().contains(name), "{e}");
    }
}

#[test]
fn segments_carry_the_application_id() {
    let dir = tempdir();
    let opts = SegmentOptions {
        segment_bytes: 300,
        app_id: 0xfe77,
    };
    let (mut log, _) = SegmentLog::open(dir.path(), opts).unwrap();
    log.append(&batch(0..10)).unwrap();
    log.sync().unwrap();
    drop(log);
    for f in segment_files(dir.path()) {
        assert_eq!(fs::read(&f).unwrap()[24..32], 0xfe77u64.to_le_bytes());
    }
    // Accepted by the same application and by a reader that does not ask.
    SegmentLog::open(dir.path(), opts).unwrap();
    SegmentLog::open(dir.path(), SegmentOptions::default()).unwrap();
    let e = SegmentLog::open(dir.path(), SegmentOptions { app_id: 1, ..opts }).unwrap_err();
    assert!(
        matches!(
            e,
            LogError::WrongApplication {
                expected: 1,
                found: 0xfe77,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn a_torn_header_in_an_earlier_segment_is_an_error() {
    let dir = tempdir();
    make_log(dir.path(), 0..10, 300);
    let first = segment_files(dir.path()).remove(0);
    fs::write(&first, [0u8; 30]).unwrap();
    let e = open_err(dir.path());
    assert_eq!(
        e.to_string(),
        format!(
            "{}: offset 0: bad segment header: the file ends inside the segment header; later segments follow",
            first.display()
        )
    );
}
