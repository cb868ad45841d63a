//! The log file format against good and bad input: every damaged file is an
//! error naming where the damage is, never a panic and never a silent skip.

use ferry_proto::log::{
    end_record, start_record, validate, LogError, LogHeader, LogReader, LogRecord, LogWriter,
    StartInfo, LOG_HEADER_LEN, LOG_MAJOR, LOG_MINOR,
};
use ferry_proto::{
    padded, Kind, RecordHeader, FLAG_FATAL, FLAG_OPTIONAL, MAX_PAYLOAD, RECORD_HEADER_LEN,
};
use proptest::prelude::*;
use zerocopy::{FromBytes, IntoBytes};

const CREATED: u64 = 1_700_000_000_123_456_789;

fn start_info() -> StartInfo {
    StartInfo {
        argv: vec![b"/bin/echo".to_vec(), b"hello".to_vec(), Vec::new()],
        env: vec![b"PATH=/usr/bin:/bin".to_vec(), b"LANG=C.UTF-8".to_vec()],
        cwd: b"/home/user".to_vec(),
    }
}

/// A sealed record.
fn rec(kind: u16, gseq: u64, flags: u16, payload: &[u8]) -> (RecordHeader, Vec<u8>) {
    let mut h = RecordHeader {
        kind,
        flags,
        gseq,
        vpid: 1,
        vtid: 1 + (gseq % 3) as u32,
        nr: 0,
        ret: payload.len() as i64,
        arg0: 3,
        arg1: gseq.wrapping_mul(0x9e37_79b9),
        ..RecordHeader::default()
    };
    h.seal(payload);
    (h, payload.to_vec())
}

fn syscall(gseq: u64, payload: &[u8]) -> (RecordHeader, Vec<u8>) {
    rec(Kind::Syscall as u16, gseq, 0, payload)
}

fn write_log(records: &[(RecordHeader, Vec<u8>)]) -> Vec<u8> {
    let mut w = LogWriter::new(Vec::new(), CREATED).unwrap();
    for (h, p) in records {
        w.append(h, p).unwrap();
    }
    w.into_inner()
}

/// A complete log: start, syscalls with payloads of awkward lengths, a
/// signal, end.
fn sample_records() -> Vec<(RecordHeader, Vec<u8>)> {
    let mut v = vec![start_record(&start_info())];
    v.push(syscall(1, b""));
    v.push(syscall(2, b"12345"));
    v.push(syscall(4, &[0xaa; 8]));
    v.push(rec(Kind::Signal as u16, 5, FLAG_FATAL, &[7; 128]));
    v.push(rec(Kind::Call as u16, 6, 0, &[1, 2, 3]));
    v.push(end_record(7, 0x0900));
    v
}

fn sample_log() -> Vec<u8> {
    write_log(&sample_records())
}

/// Offsets at which each record of `records`, written by `write_log`, starts.
fn offsets(records: &[(RecordHeader, Vec<u8>)]) -> Vec<usize> {
    let mut at = LOG_HEADER_LEN;
    records
        .iter()
        .map(|(h, _)| {
            let here = at;
            at += h.padded_len();
            here
        })
        .collect()
}

/// Read every record; the records before the first error and that error.
fn read_all(bytes: &[u8]) -> (Vec<LogRecord<'_>>, Option<LogError>) {
    let reader = match LogReader::new(bytes) {
        Ok(r) => r,
        Err(e) => return (Vec::new(), Some(e)),
    };
    let mut good = Vec::new();
    for r in reader {
        match r {
            Ok(r) => good.push(r),
            Err(e) => return (good, Some(e)),
        }
    }
    (good, None)
}

/// Overwrite the header of the record at `at` with `h` (payload unchanged).
fn put_header(bytes: &mut [u8], at: usize, h: &RecordHeader) {
    bytes[at..at + RECORD_HEADER_LEN].copy_from_slice(h.as_bytes());
}

fn header_at(bytes: &[u8], at: usize) -> RecordHeader {
    RecordHeader::read_from_bytes(&bytes[at..at + RECORD_HEADER_LEN]).unwrap()
}

fn file_header(bytes: &[u8]) -> LogHeader {
    LogHeader::read_from_bytes(&bytes[..LOG_HEADER_LEN]).unwrap()
}

fn put_file_header(bytes: &mut [u8], h: &LogHeader) {
    bytes[..LOG_HEADER_LEN].copy_from_slice(h.as_bytes());
}

#[test]
fn a_written_log_reads_back() {
    let records = sample_records();
    let bytes = write_log(&records);
    let reader = LogReader::new(&bytes).unwrap();
    assert_eq!(*reader.header(), LogHeader::new(CREATED));
    let read: Vec<_> = reader.map(Result::unwrap).collect();
    assert_eq!(read.len(), records.len());
    for (i, ((r, (h, p)), at)) in read.iter().zip(&records).zip(offsets(&records)).enumerate() {
        assert_eq!(r.offset, at as u64);
        assert_eq!(r.index, i as u64);
        assert_eq!(r.header, *h);
        assert_eq!(r.payload, &p[..]);
    }
    let summary = validate(&bytes).unwrap();
    assert_eq!(summary.records, records.len() as u64);
    assert_eq!(summary.last_gseq, 7);
    assert!(summary.complete);
    assert_eq!(summary.start, start_info());
    assert_eq!(summary.end_status, Some(0x0900));
}

#[test]
fn records_are_padded_with_zeros_to_eight_bytes() {
    let bytes = write_log(&[start_record(&start_info()), syscall(1, b"12345")]);
    assert_eq!(bytes.len() % 8, 0);
    let at = LOG_HEADER_LEN + start_record(&start_info()).0.padded_len();
    assert_eq!(
        &bytes[at + RECORD_HEADER_LEN..at + RECORD_HEADER_LEN + 5],
        b"12345"
    );
    assert_eq!(&bytes[at + RECORD_HEADER_LEN + 5..], &[0, 0, 0]);
}

#[test]
fn raw_records_are_written_with_zero_padding() {
    let records = sample_records();
    let mut w = LogWriter::new(Vec::new(), CREATED).unwrap();
    for (h, p) in &records {
        // As a ring hands it over: the padding holds whatever was there.
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(p);
        raw.resize(h.padded_len(), 0xee);
        w.append_raw(&raw).unwrap();
    }
    let bytes = w.into_inner();
    assert_eq!(bytes, sample_log());
    let (good, err) = read_all(&bytes);
    assert_eq!(err, None);
    assert_eq!(good.len(), records.len());
    for (r, (h, p)) in good.iter().zip(&records) {
        assert_eq!((r.header, r.payload), (*h, &p[..]));
    }
}

#[test]
fn the_writer_refuses_records_whose_lengths_do_not_match() {
    let mut w = LogWriter::new(Vec::new(), 0).unwrap();
    let (mut h, p) = syscall(1, b"abc");
    h.payload_len = 2;
    let e = w.append(&h, &p).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    let (h, p) = syscall(1, b"abc");
    let mut raw = h.as_bytes().to_vec();
    raw.extend_from_slice(&p);
    // Not padded.
    assert_eq!(
        w.append_raw(&raw).unwrap_err().kind(),
        std::io::ErrorKind::InvalidInput
    );
    assert_eq!(
        w.append_raw(&raw[..10]).unwrap_err().kind(),
        std::io::ErrorKind::InvalidInput
    );
    let big = vec![0; MAX_PAYLOAD + 1];
    let mut h = RecordHeader::default();
    h.seal(&big);
    assert_eq!(
        w.append(&h, &big).unwrap_err().kind(),
        std::io::ErrorKind::InvalidInput
    );
    // Nothing but the header was written.
    assert_eq!(w.get_mut().len(), LOG_HEADER_LEN);
}

#[test]
fn start_and_end_records() {
    let (h, p) = start_record(&start_info());
    assert_eq!(
        (h.kind, h.gseq, h.vpid, h.vtid),
        (Kind::Start as u16, 0, 1, 1)
    );
    assert_eq!(h.crc, h.compute_crc(&p));
    assert_eq!(StartInfo::decode(&p).unwrap(), start_info());
    let (h, p) = end_record(41, 256);
    assert_eq!(
        (h.kind, h.gseq, h.ret, p.len()),
        (Kind::End as u16, 41, 256, 0)
    );
    assert_eq!((h.len as usize, h.payload_len), (RECORD_HEADER_LEN, 0));
    assert_eq!(h.crc, h.compute_crc(&[]));
}

#[test]
fn a_log_without_an_end_is_valid_but_incomplete() {
    let mut records = sample_records();
    records.pop();
    let s = validate(&write_log(&records)).unwrap();
    assert!(!s.complete);
    assert_eq!(s.end_status, None);
    assert_eq!(s.last_gseq, 6);
}

#[test]
fn bad_magic() {
    let mut bytes = sample_log();
    bytes[0] = b'X';
    assert_eq!(
        LogReader::new(&bytes).err(),
        Some(LogError::BadMagic { offset: 0 })
    );
    assert_eq!(validate(&bytes), Err(LogError::BadMagic { offset: 0 }));
    assert_eq!(
        validate(b"#!/bin/sh\necho hello\n").unwrap_err(),
        LogError::BadMagic { offset: 0 }
    );
    assert_eq!(
        validate(b"FERRYCTL").unwrap_err(),
        LogError::BadMagic { offset: 0 }
    );
    assert_eq!(
        validate(b"").unwrap_err(),
        LogError::Truncated {
            offset: 0,
            needed: 64,
            available: 0
        }
    );
    assert_eq!(
        validate(b"FERRY").unwrap_err(),
        LogError::Truncated {
            offset: 0,
            needed: 64,
            available: 5
        }
    );
}

#[test]
fn bad_header_checksum() {
    let mut bytes = sample_log();
    bytes[24] ^= 1; // created_ns
    assert_eq!(
        validate(&bytes),
        Err(LogError::BadHeaderChecksum { offset: 0 })
    );
    // Any damaged header byte is caught, whichever check catches it.
    for i in 0..LOG_HEADER_LEN {
        let mut bytes = sample_log();
        bytes[i] ^= 0x5a;
        let e = LogHeader::parse(&bytes).unwrap_err();
        assert_eq!(
            e.offset(),
            if (8..10).contains(&i) { 8 } else { 0 },
            "byte {i}: {e}"
        );
    }
}

#[test]
fn unknown_major_version_is_refused() {
    for major in [0, LOG_MAJOR + 1, u16::MAX] {
        let mut bytes = sample_log();
        let mut h = file_header(&bytes);
        h.major = major;
        h.minor = 3;
        h.seal();
        put_file_header(&mut bytes, &h);
        let e = validate(&bytes).unwrap_err();
        assert_eq!(
            e,
            LogError::UnsupportedVersion {
                offset: 8,
                major,
                minor: 3
            }
        );
        assert_eq!(e.to_string(), format!("offset 8: log format version {major}.3 is not supported (this reader reads version 1.x)"));
    }
    // Even without a valid checksum: a future header may be laid out otherwise.
    let mut bytes = sample_log();
    bytes[8] = 2;
    assert!(matches!(
        validate(&bytes),
        Err(LogError::UnsupportedVersion { major: 2, .. })
    ));
}

#[test]
fn a_newer_minor_version_with_a_longer_header_is_read() {
    let records = sample_records();
    let plain = write_log(&records);
    let mut h = file_header(&plain);
    h.minor = LOG_MINOR + 1;
    h.header_len = (LOG_HEADER_LEN + 40) as u32;
    h.flags = 1;
    h.seal();
    let mut bytes = h.as_bytes().to_vec();
    bytes.extend_from_slice(&[0xcc; 40]); // what the newer minor adds
    bytes.extend_from_slice(&plain[LOG_HEADER_LEN..]);
    let reader = LogReader::new(&bytes).unwrap();
    assert_eq!(reader.header().minor, LOG_MINOR + 1);
    let read: Vec<_> = reader.map(Result::unwrap).collect();
    assert_eq!(read.len(), records.len());
    assert_eq!(read[0].offset, (LOG_HEADER_LEN + 40) as u64);
    for (r, (h, p)) in read.iter().zip(&records) {
        assert_eq!((r.header, r.payload), (*h, &p[..]));
    }
    assert!(validate(&bytes).unwrap().complete);
}

#[test]
fn header_length_is_checked() {
    let mut bytes = sample_log();
    let mut h = file_header(&bytes);
    h.header_len = 32;
    h.seal();
    put_file_header(&mut bytes, &h);
    assert_eq!(
        validate(&bytes),
        Err(LogError::BadHeaderLength {
            offset: 12,
            len: 32
        })
    );
    h.header_len = u32::MAX;
    h.seal();
    put_file_header(&mut bytes, &h);
    let available = bytes.len() as u64;
    assert_eq!(
        validate(&bytes),
        Err(LogError::Truncated {
            offset: 0,
            needed: u32::MAX as u64,
            available
        })
    );
}

#[test]
fn every_damaged_byte_of_a_record_names_that_record() {
    let records = sample_records();
    let clean = write_log(&records);
    for (i, (at, (h, _))) in offsets(&records).into_iter().zip(&records).enumerate() {
        for b in at..at + h.len as usize {
            for flip in [0x01, 0x80, 0xff] {
                let mut bytes = clean.clone();
                bytes[b] ^= flip;
                let (good, err) = read_all(&bytes);
                let err = err.unwrap_or_else(|| panic!("byte {b} ^ {flip:#x} went unnoticed"));
                assert_eq!(err.offset(), at as u64, "byte {b} ^ {flip:#x}: {err}");
                assert_eq!(good.len(), i, "byte {b} ^ {flip:#x}: {err}");
                assert!(validate(&bytes).is_err());
            }
        }
    }
}

#[test]
fn a_payload_checksum_error_names_the_record() {
    let records = sample_records();
    let mut bytes = write_log(&records);
    let at = offsets(&records)[2];
    bytes[at + RECORD_HEADER_LEN + 1] ^= 4;
    let e = validate(&bytes).unwrap_err();
    assert_eq!(
        e,
        LogError::BadChecksum {
            offset: at as u64,
            index: 2,
            gseq: 2
        }
    );
    assert_eq!(
        e.to_string(),
        format!("offset {at}: record #2 (gseq 2) checksum mismatch")
    );
}

#[test]
fn truncated_at_every_length() {
    let records = sample_records();
    let bytes = write_log(&records);
    let starts = offsets(&records);
    for cut in 0..bytes.len() {
        let part = &bytes[..cut];
        let (good, err) = read_all(part);
        let v = validate(part);
        if cut < LOG_HEADER_LEN {
            assert_eq!(
                err,
                Some(LogError::Truncated {
                    offset: 0,
                    needed: 64,
                    available: cut as u64
                })
            );
            assert_eq!(v.unwrap_err(), err.unwrap());
        } else if let Some(n) = starts.iter().position(|&s| s == cut) {
            // A cut between records: what is there is sound.
            assert_eq!(err, None, "cut {cut}");
            assert_eq!(good.len(), n);
            if n == 0 {
                assert!(
                    matches!(v, Err(LogError::BadStart { offset: 64, .. })),
                    "cut {cut}: {v:?}"
                );
            } else {
                let s = v.unwrap();
                assert!(!s.complete);
                assert_eq!(s.records, n as u64);
            }
        } else {
            // Torn inside record n.
            let n = starts.iter().rposition(|&s| s < cut).unwrap();
            let e = err.unwrap_or_else(|| panic!("cut {cut} went unnoticed"));
            let needed = if cut - starts[n] < RECORD_HEADER_LEN {
                64
            } else {
                records[n].0.padded_len() as u64
            };
            assert_eq!(
                e,
                LogError::Truncated {
                    offset: starts[n] as u64,
                    needed,
                    available: (cut - starts[n]) as u64
                },
                "cut {cut}"
            );
            assert_eq!(good.len(), n);
            assert_eq!(v.unwrap_err(), e);
        }
    }
}

#[test]
fn too_long_lengths_are_refused_before_reading_on() {
    let records = sample_records();
    let at = offsets(&records)[1];
    let clean = write_log(&records);

    let mut bytes = clean.clone();
    let mut h = header_at(&bytes, at);
    h.payload_len = MAX_PAYLOAD as u32 + 1;
    h.len = h.payload_len + RECORD_HEADER_LEN as u32;
    h.crc = h.compute_crc(&[]);
    put_header(&mut bytes, at, &h);
    let e = validate(&bytes).unwrap_err();
    assert_eq!(
        e,
        LogError::PayloadTooLong {
            offset: at as u64,
            len: MAX_PAYLOAD as u32 + 1
        }
    );
    assert_eq!(
        e.to_string(),
        format!("offset {at}: record payload length 1048577 exceeds the maximum of 1048576 bytes")
    );

    for (len, payload_len) in [
        (u32::MAX, 0),
        (u32::MAX, u32::MAX),
        (0, 0),
        (63, 0),
        (72, 16),
        (64, 16),
    ] {
        let mut bytes = clean.clone();
        let mut h = header_at(&bytes, at);
        h.len = len;
        h.payload_len = payload_len;
        put_header(&mut bytes, at, &h);
        let e = validate(&bytes).unwrap_err();
        if payload_len as usize > MAX_PAYLOAD {
            assert_eq!(
                e,
                LogError::PayloadTooLong {
                    offset: at as u64,
                    len: payload_len
                }
            );
        } else {
            assert_eq!(
                e,
                LogError::BadLength {
                    offset: at as u64,
                    len
                },
                "{e}"
            );
        }
    }

    // A length at the maximum with the bytes missing: truncated.
    let mut bytes = clean.clone();
    let mut h = header_at(&bytes, at);
    h.payload_len = MAX_PAYLOAD as u32;
    h.len = h.payload_len + RECORD_HEADER_LEN as u32;
    put_header(&mut bytes, at, &h);
    assert!(
        matches!(validate(&bytes), Err(LogError::Truncated { offset, needed: 1048640, .. }) if offset == at as u64)
    );
}

#[test]
fn an_unknown_kind_is_refused_unless_optional() {
    let mut records = sample_records();
    records.insert(3, rec(99, 3, 0, b"from the future"));
    let at = offsets(&records)[3];
    let bytes = write_log(&records);
    let (good, err) = read_all(&bytes);
    assert_eq!(good.len(), 3);
    let e = err.unwrap();
    assert_eq!(
        e,
        LogError::UnknownKind {
            offset: at as u64,
            kind: 99
        }
    );
    assert_eq!(
        e.to_string(),
        format!("offset {at}: record kind 99 is unknown to this reader and not optional")
    );

    records[3] = rec(99, 3, FLAG_OPTIONAL, b"from the future");
    let bytes = write_log(&records);
    let (good, err) = read_all(&bytes);
    assert_eq!(err, None);
    assert_eq!(good.len(), records.len() - 1);
    assert!(good.iter().all(|r| r.header.kind != 99));
    // Records keep their place in the file in their index.
    assert_eq!(good[3].index, 4);
    assert_eq!(good[3].offset, offsets(&records)[4] as u64);
    let s = validate(&bytes).unwrap();
    assert_eq!(s.records, records.len() as u64);
    assert!(s.complete);

    // An optional record is still checked.
    let mut damaged = bytes.clone();
    damaged[at + RECORD_HEADER_LEN] ^= 1;
    assert!(
        matches!(validate(&damaged), Err(LogError::BadChecksum { offset, index: 3, .. }) if offset == at as u64)
    );
}

#[test]
fn gseq_must_increase() {
    for bad in [2, 1, 0] {
        let mut records = sample_records();
        records[3] = syscall(bad, b"x");
        let at = offsets(&records)[3];
        let bytes = write_log(&records);
        let (good, err) = read_all(&bytes);
        assert_eq!(good.len(), 3);
        let e = err.unwrap();
        assert_eq!(
            e,
            LogError::OutOfOrder {
                offset: at as u64,
                index: 3,
                gseq: bad,
                previous: 2
            }
        );
        assert_eq!(
            e.to_string(),
            format!("offset {at}: record #3 has gseq {bad}, not after the previous gseq 2")
        );
    }
}

#[test]
fn the_log_starts_with_one_start_record() {
    let start = start_record(&start_info());
    let cases: Vec<Vec<(RecordHeader, Vec<u8>)>> = vec![
        vec![syscall(1, b"")],
        vec![syscall(0, b"")],
        vec![rec(Kind::Start as u16, 1, 0, &start.1)],
        vec![rec(99, 0, FLAG_OPTIONAL, b""), start.clone()],
        vec![
            start.clone(),
            syscall(1, b""),
            rec(Kind::Start as u16, 2, 0, &start.1),
        ],
        vec![rec(Kind::Start as u16, 0, 0, b"\xff\xff\xff\xff")],
    ];
    for records in cases {
        let bytes = write_log(&records);
        let e = validate(&bytes).unwrap_err();
        let bad = if records.len() == 3 {
            offsets(&records)[2]
        } else {
            LOG_HEADER_LEN
        };
        assert!(
            matches!(e, LogError::BadStart { offset, .. } if offset == bad as u64),
            "{e}"
        );
    }
    assert_eq!(
        validate(&write_log(&[])).unwrap_err().to_string(),
        "offset 64: bad start record: the log holds no records"
    );
}

#[test]
fn nothing_follows_the_end_record() {
    let mut records = sample_records();
    records.push(syscall(8, b"late"));
    let at = offsets(&records)[7];
    let bytes = write_log(&records);
    assert_eq!(
        validate(&bytes),
        Err(LogError::AfterEnd { offset: at as u64 })
    );
    let mut bytes = sample_log();
    let end = bytes.len() as u64;
    bytes.extend_from_slice(b"junk");
    let (good, err) = read_all(&bytes);
    assert_eq!(good.len(), sample_records().len());
    assert_eq!(err, Some(LogError::AfterEnd { offset: end }));
}

#[test]
fn the_reader_stops_after_the_first_error() {
    let records = sample_records();
    let mut bytes = write_log(&records);
    bytes[offsets(&records)[1] + 20] ^= 1;
    let mut reader = LogReader::new(&bytes).unwrap();
    assert!(reader.next().unwrap().is_ok());
    assert!(reader.next().unwrap().is_err());
    assert!(reader.next().is_none());
    assert!(reader.next().is_none());
    assert_eq!(reader.position(), offsets(&records)[1] as u64);
}

#[test]
fn messages_are_one_line_starting_with_the_offset() {
    let all = [
        LogError::BadMagic { offset: 0 },
        LogError::UnsupportedVersion {
            offset: 8,
            major: 9,
            minor: 1,
        },
        LogError::BadHeaderChecksum { offset: 0 },
        LogError::BadHeaderLength { offset: 12, len: 3 },
        LogError::Truncated {
            offset: 4096,
            needed: 64,
            available: 3,
        },
        LogError::BadLength {
            offset: 4160,
            len: 12,
        },
        LogError::PayloadTooLong {
            offset: 4160,
            len: u32::MAX,
        },
        LogError::BadChecksum {
            offset: 4160,
            index: 12,
            gseq: 57,
        },
        LogError::UnknownKind {
            offset: 4160,
            kind: 77,
        },
        LogError::OutOfOrder {
            offset: 4160,
            index: 12,
            gseq: 5,
            previous: 57,
        },
        LogError::BadStart {
            offset: 64,
            why: "the log holds no records",
        },
        LogError::AfterEnd { offset: 4160 },
    ];
    for e in all {
        let s = e.to_string();
        assert!(s.starts_with(&format!("offset {}: ", e.offset())), "{s}");
        assert!(!s.contains('\n'), "{s}");
    }
    assert_eq!(
        LogError::BadChecksum {
            offset: 4160,
            index: 12,
            gseq: 57
        }
        .to_string(),
        "offset 4160: record #12 (gseq 57) checksum mismatch"
    );
    fn is_error<E: std::error::Error + Send + Sync + 'static>(_: &E) {}
    is_error(&LogError::BadMagic { offset: 0 });
}

#[test]
fn start_info_decode_caps_counts_by_the_payload() {
    assert_eq!(
        StartInfo::decode(&[]).unwrap_err(),
        "argument count exceeds the payload"
    );
    assert!(StartInfo::decode(&u32::MAX.to_le_bytes()).is_err());
    let mut p = 1u32.to_le_bytes().to_vec();
    p.extend_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        StartInfo::decode(&p).unwrap_err(),
        "an argument runs past the payload"
    );
    let empty = StartInfo::default();
    assert_eq!(empty.encode(), [0u8; 12]);
    assert_eq!(StartInfo::decode(&[0u8; 12]).unwrap(), empty);
    // Bytes after the working directory are left for a newer minor.
    let mut p = start_info().encode();
    p.extend_from_slice(b"more");
    assert_eq!(StartInfo::decode(&p).unwrap(), start_info());
}

fn bytes_strategy(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn start_info_strategy() -> impl Strategy<Value = StartInfo> {
    (
        proptest::collection::vec(bytes_strategy(40), 0..6),
        proptest::collection::vec(bytes_strategy(40), 0..6),
        bytes_strategy(60),
    )
        .prop_map(|(argv, env, cwd)| StartInfo { argv, env, cwd })
}

/// A record of a known kind, before `gseq` is assigned.
#[derive(Debug, Clone)]
struct Body {
    kind: Kind,
    flags: u16,
    gap: u64,
    vpid: u32,
    vtid: u32,
    nr: u32,
    ret: i64,
    arg0: u64,
    arg1: u64,
    payload: Vec<u8>,
}

fn body_strategy() -> impl Strategy<Value = Body> {
    (
        prop_oneof![
            Just(Kind::Syscall),
            Just(Kind::Call),
            Just(Kind::Signal),
            Just(Kind::Exec)
        ],
        0u16..8,
        1u64..4,
        (any::<u32>(), any::<u32>(), any::<u32>()),
        (any::<i64>(), any::<u64>(), any::<u64>()),
        bytes_strategy(300),
    )
        .prop_map(
            |(kind, flags, gap, (vpid, vtid, nr), (ret, arg0, arg1), payload)| Body {
                kind,
                flags: flags & !FLAG_OPTIONAL,
                gap,
                vpid,
                vtid,
                nr,
                ret,
                arg0,
                arg1,
                payload,
            },
        )
}

fn build(start: &StartInfo, bodies: &[Body], end: Option<i64>) -> Vec<(RecordHeader, Vec<u8>)> {
    let mut v = vec![start_record(start)];
    let mut gseq = 0;
    for b in bodies {
        gseq += b.gap;
        let mut h = RecordHeader {
            kind: b.kind as u16,
            flags: b.flags,
            gseq,
            vpid: b.vpid,
            vtid: b.vtid,
            nr: b.nr,
            ret: b.ret,
            arg0: b.arg0,
            arg1: b.arg1,
            ..RecordHeader::default()
        };
        h.seal(&b.payload);
        v.push((h, b.payload.clone()));
    }
    if let Some(status) = end {
        v.push(end_record(gseq + 1, status));
    }
    v
}

proptest! {
    #[test]
    fn random_logs_round_trip(
        start in start_info_strategy(),
        bodies in proptest::collection::vec(body_strategy(), 0..40),
        end in proptest::option::of(any::<i64>()),
    ) {
        let records = build(&start, &bodies, end);
        let bytes = write_log(&records);
        prop_assert_eq!(bytes.len(), LOG_HEADER_LEN + records.iter().map(|(h, _)| padded(h.len as usize)).sum::<usize>());
        let (good, err) = read_all(&bytes);
        prop_assert_eq!(err, None);
        prop_assert_eq!(good.len(), records.len());
        for (i, (r, (h, p))) in good.iter().zip(&records).enumerate() {
            prop_assert_eq!(r.index, i as u64);
            prop_assert_eq!(r.header, *h);
            prop_assert_eq!(r.payload, &p[..]);
        }
        let s = validate(&bytes).unwrap();
        prop_assert_eq!(s.records, records.len() as u64);
        prop_assert_eq!(s.last_gseq, records.last().unwrap().0.gseq);
        prop_assert_eq!(s.complete, end.is_some());
        prop_assert_eq!(s.end_status, end);
        prop_assert_eq!(s.start, start);
    }

    #[test]
    fn any_damaged_byte_is_an_error_at_its_record(
        bodies in proptest::collection::vec(body_strategy(), 1..12),
        pick in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let records = build(&start_info(), &bodies, Some(0));
        let clean = write_log(&records);
        // Any byte of a header, payload or padding.
        let covered: Vec<(usize, usize)> = offsets(&records)
            .into_iter()
            .zip(&records)
            .flat_map(|(at, (h, _))| (at..at + h.padded_len()).map(move |b| (at, b)))
            .collect();
        let (at, b) = covered[pick.index(covered.len())];
        let mut bytes = clean;
        bytes[b] ^= flip;
        let (_, err) = read_all(&bytes);
        let err = err.expect("damage went unnoticed");
        prop_assert_eq!(err.offset(), at as u64, "{}", err);
    }

    #[test]
    fn start_info_round_trips(info in start_info_strategy()) {
        prop_assert_eq!(StartInfo::decode(&info.encode()).unwrap(), info);
    }

    #[test]
    fn start_info_decode_never_panics(bytes in bytes_strategy(200)) {
        if let Ok(info) = StartInfo::decode(&bytes) {
            // What decodes is a prefix that encodes back to itself.
            let again = info.encode();
            prop_assert_eq!(&bytes[..again.len()], &again[..]);
        }
    }

    #[test]
    fn garbage_never_panics(tail in bytes_strategy(600), keep in 0usize..400) {
        // A valid prefix followed by anything.
        let mut bytes = sample_log();
        bytes.truncate(keep.max(LOG_HEADER_LEN).min(bytes.len()));
        bytes.extend_from_slice(&tail);
        let _ = validate(&bytes);
        let (_, _) = read_all(&bytes);
        let _ = validate(&tail);
    }
}
