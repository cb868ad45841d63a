//! Records, batches and directories for the tests.

use ferry_log::{
    segment_file_name, LogError, OwnedRecord, Recovery, SegmentHeader, SegmentLog, SegmentOptions,
};
use ferry_proto::{padded, Kind, RecordHeader};
use std::fs;
use std::path::{Path, PathBuf};
use zerocopy::IntoBytes;

/// A fresh directory for a test. On tmpfs (`/dev/shm`) when there is one:
/// the tests check what the files hold, not the disk's speed, and many of
/// them sync hundreds of times.
pub fn tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new()
            .prefix("ferry-log-")
            .tempdir_in(shm)
        {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

/// A payload of `len` bytes that depends on `gseq`.
pub fn payload(gseq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (gseq as usize).wrapping_mul(31).wrapping_add(i * 7) as u8 | 1)
        .collect()
}

/// The header of the sealed record `gseq` carrying `payload`.
pub fn header(gseq: u64, payload: &[u8]) -> RecordHeader {
    let kind = match gseq {
        0 => Kind::Start,
        g if g % 7 == 3 => Kind::Signal,
        _ => Kind::Syscall,
    };
    let mut h = RecordHeader {
        kind: kind as u16,
        gseq,
        vpid: 1,
        vtid: 1 + (gseq % 3) as u32,
        nr: (gseq % 300) as u32,
        ret: payload.len() as i64,
        arg0: 3,
        arg1: gseq.wrapping_mul(0x9e37_79b9),
        ..RecordHeader::default()
    };
    h.seal(payload);
    h
}

/// The stored bytes of record `gseq` with a payload of `len` bytes.
pub fn record(gseq: u64, len: usize) -> Vec<u8> {
    let p = payload(gseq, len);
    let h = header(gseq, &p);
    let mut v = h.as_bytes().to_vec();
    v.extend_from_slice(&p);
    v.resize(padded(v.len()), 0);
    v
}

/// The payload length the tests give record `gseq` (0 to 200 bytes, so
/// that every padding length occurs).
pub fn len_of(gseq: u64) -> usize {
    (gseq as usize * 37) % 201
}

/// The records `range`, concatenated, with [`len_of`] payloads.
pub fn batch(range: std::ops::Range<u64>) -> Vec<u8> {
    range.flat_map(|g| record(g, len_of(g))).collect()
}

/// What [`batch`] put in record `gseq`.
pub fn expected(gseq: u64) -> OwnedRecord {
    let p = payload(gseq, len_of(gseq));
    OwnedRecord {
        header: header(gseq, &p),
        payload: p,
    }
}

pub fn opts(segment_bytes: u64) -> SegmentOptions {
    SegmentOptions {
        segment_bytes,
        ..SegmentOptions::default()
    }
}

pub fn open(dir: &Path, segment_bytes: u64) -> (SegmentLog, Recovery) {
    SegmentLog::open(dir, opts(segment_bytes)).unwrap_or_else(|e| panic!("open: {e}"))
}

pub fn open_err(dir: &Path) -> LogError {
    match SegmentLog::open(dir, opts(512)) {
        Ok((log, _)) => panic!("opened a log that should be refused: {log:?}"),
        Err(e) => {
            let line = e.to_string();
            assert!(!line.contains('\n'), "not one line: {line}");
            assert!(
                line.starts_with(&e.path().display().to_string()),
                "does not start with the file: {line}"
            );
            if let Some(offset) = e.offset() {
                assert!(
                    line.contains(&format!("offset {offset}:")),
                    "does not name the offset: {line}"
                );
            }
            e
        }
    }
}

/// Every record from `gseq` on.
pub fn read_all(log: &mut SegmentLog, gseq: u64) -> Vec<OwnedRecord> {
    log.read_from(gseq)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("read: {e}"))
}

/// Assert `log` holds exactly the [`batch`] records `range`.
pub fn assert_holds(log: &mut SegmentLog, range: std::ops::Range<u64>) {
    assert_eq!(log.first_gseq(), range.start);
    assert_eq!(log.next_gseq(), range.end);
    let got = read_all(log, range.start);
    assert_eq!(got.len() as u64, range.end - range.start);
    for (g, r) in range.zip(&got) {
        assert_eq!(r, &expected(g), "record {g}");
    }
}

/// The segment files in `dir`, in name order.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "fseg"))
        .collect();
    v.sort();
    v
}

/// Every file in `dir` with its bytes, to check a failed operation changed
/// nothing.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = if p.is_file() {
                fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            (p, bytes)
        })
        .collect();
    v.sort();
    v
}

/// Copy the files of `from` into the empty directory `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    for e in fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

/// Write a segment file by hand: `header` then `body`.
pub fn write_segment(dir: &Path, name_gseq: u64, header: &SegmentHeader, body: &[u8]) -> PathBuf {
    let path = dir.join(segment_file_name(name_gseq));
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(body);
    fs::write(&path, bytes).unwrap();
    path
}

/// A log in `dir` holding the [`batch`] records `range` in segments of
/// about `segment_bytes`, synced and closed.
pub fn make_log(dir: &Path, range: std::ops::Range<u64>, segment_bytes: u64) {
    let (mut log, _) = open(dir, segment_bytes);
    if range.start != 0 {
        log.reset(range.start).unwrap();
    }
    for g in range {
        log.append(&record(g, len_of(g))).unwrap();
    }
    log.sync().unwrap();
}

/// Offsets of the records in the segment file `bytes` (64-byte header).
pub fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut v = Vec::new();
    let mut at = 64;
    while at < bytes.len() {
        v.push(at);
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += padded(len);
    }
    v
}
