//! A torn tail is cut and reported; anything else wrong is an error naming
//! the file and the offset, and leaves the files as they were.

use crate::util::*;
use ferry_log::{Damage, LogError, RecordFault, TornTail};
use proptest::prelude::*;
use std::fs::{self, OpenOptions};
use std::path::Path;

/// A log of records 0..5 in two segments (0..3 and 3..5).
fn small_log(dir: &Path) {
    make_log(dir, 0..5, 300);
    assert_eq!(segment_files(dir).len(), 2);
}

fn truncate(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    let mut v = fs::read(path).unwrap();
    v.extend_from_slice(bytes);
    fs::write(path, v).unwrap();
}

fn flip(path: &Path, at: usize) {
    let mut v = fs::read(path).unwrap();
    v[at] ^= 0x5a;
    fs::write(path, v).unwrap();
}

#[test]
fn a_tail_torn_at_every_byte_of_the_last_record_is_cut() {
    let original = tempdir();
    small_log(original.path());
    let last = segment_files(original.path()).pop().unwrap();
    let bytes = fs::read(&last).unwrap();
    let start = *record_offsets(&bytes).last().unwrap();
    for len in start + 1..bytes.len() {
        let dir = tempdir();
        copy_dir(original.path(), dir.path());
        let path = dir.path().join(last.file_name().unwrap());
        truncate(&path, len as u64);

        let (mut log, recovery) = open(dir.path(), 300);
        let torn = recovery.torn_tail.expect("a torn tail");
        assert_eq!(
            (
                torn.path.as_path(),
                torn.offset,
                torn.bytes_cut,
                torn.last_good_gseq
            ),
            (path.as_path(), start as u64, (len - start) as u64, Some(3)),
            "cut at {len}"
        );
        assert!(
            torn.reason
                .contains("record #1: the data ends inside the record"),
            "{}",
            torn.reason
        );
        assert_eq!(fs::metadata(&path).unwrap().len(), start as u64);
        assert_eq!((log.last_gseq(), log.durable_gseq()), (Some(3), Some(3)));
        assert_holds(&mut log, 0..4);

        log.append(&record(4, len_of(4))).unwrap();
        log.sync().unwrap();
        drop(log);
        let (mut log, recovery) = open(dir.path(), 300);
        assert_eq!(recovery.torn_tail, None, "cut at {len}");
        assert_holds(&mut log, 0..5);
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }
}

#[test]
fn a_torn_segment_header_is_written_again() {
    let original = tempdir();
    small_log(original.path());
    let last = segment_files(original.path()).pop().unwrap();
    let name = last.file_name().unwrap();
    // Every length of the header, and a header of zeros (the file's size
    // reached the disk, its data did not).
    for len in (0..64).map(Some).chain([None]) {
        let dir = tempdir();
        copy_dir(original.path(), dir.path());
        let path = dir.path().join(name);
        match len {
            Some(len) => truncate(&path, len),
            None => fs::write(&path, [0u8; 100]).unwrap(),
        }
        let old_len = fs::metadata(&path).unwrap().len();
        let (mut log, recovery) = open(dir.path(), 300);
        assert_eq!(
            recovery.torn_tail,
            Some(TornTail {
                path: path.clone(),
                offset: 0,
                bytes_cut: old_len,
                last_good_gseq: Some(2),
                reason: match len {
                    Some(_) => "the file ends inside the segment header".into(),
                    None => "the segment header is zeros".into(),
                },
            }),
            "header cut at {len:?}"
        );
        assert_eq!(fs::metadata(&path).unwrap().len(), 64);
        assert_holds(&mut log, 0..3);
        log.append(&batch(3..5)).unwrap();
        log.sync().unwrap();
        drop(log);
        let (mut log, recovery) = open(dir.path(), 300);
        assert_eq!(recovery.torn_tail, None);
        assert_holds(&mut log, 0..5);
    }
}

#[test]
fn a_torn_header_of_the_only_segment_keeps_its_first_gseq() {
    let dir = tempdir();
    make_log(dir.path(), 1000..1003, 1 << 20);
    let path = segment_files(dir.path()).pop().unwrap();
    truncate(&path, 20);
    let (mut log, recovery) = open(dir.path(), 1 << 20);
    let torn = recovery.torn_tail.unwrap();
    assert_eq!(
        (torn.offset, torn.bytes_cut, torn.last_good_gseq),
        (0, 20, None)
    );
    assert_eq!(
        (log.first_gseq(), log.next_gseq(), log.last_gseq()),
        (1000, 1000, None)
    );
    log.append(&batch(1000..1002)).unwrap();
    log.sync().unwrap();
    assert_holds(&mut log, 1000..1002);
}

#[test]
fn a_header_failing_its_checksum_with_records_after_it_is_an_error() {
    let dir = tempdir();
    small_log(dir.path());
    let last = segment_files(dir.path()).pop().unwrap();
    flip(&last, 40);
    let before = snapshot(dir.path());
    let e = open_err(dir.path());
    assert!(
        matches!(
            &e,
            LogError::BadHeader {
                offset: 0,
                damage: Some(Damage::ValidDataFollows { at: 64 }),
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.path(), last);
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn a_damaged_last_record_with_nothing_after_it_is_cut() {
    let original = tempdir();
    small_log(original.path());
    let last = segment_files(original.path()).pop().unwrap();
    let bytes = fs::read(&last).unwrap();
    let start = *record_offsets(&bytes).last().unwrap();
    for at in start..bytes.len() {
        let dir = tempdir();
        copy_dir(original.path(), dir.path());
        let path = dir.path().join(last.file_name().unwrap());
        flip(&path, at);
        let (mut log, recovery) = open(dir.path(), 300);
        let torn = recovery
            .torn_tail
            .unwrap_or_else(|| panic!("byte {at} flipped: nothing cut"));
        assert_eq!(
            (torn.offset, torn.last_good_gseq),
            (start as u64, Some(3)),
            "byte {at}"
        );
        assert_eq!(torn.bytes_cut, (bytes.len() - start) as u64);
        assert_holds(&mut log, 0..4);
    }
}

#[test]
fn zeros_after_the_last_record_are_cut() {
    let dir = tempdir();
    small_log(dir.path());
    let last = segment_files(dir.path()).pop().unwrap();
    let len = fs::metadata(&last).unwrap().len();
    append_bytes(&last, &[0; 4096]);
    let (mut log, recovery) = open(dir.path(), 300);
    let torn = recovery.torn_tail.unwrap();
    assert_eq!(
        (torn.offset, torn.bytes_cut, torn.last_good_gseq),
        (len, 4096, Some(4))
    );
    assert!(
        torn.reason
            .contains("record #2: record length 0 is not 64 plus"),
        "{}",
        torn.reason
    );
    assert_holds(&mut log, 0..5);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random bytes after the last record are a torn tail: cut, reported.
    #[test]
    fn garbage_after_the_last_record_is_cut(garbage in prop::collection::vec(any::<u8>(), 1..600)) {
        let dir = tempdir();
        small_log(dir.path());
        let last = segment_files(dir.path()).pop().unwrap();
        let len = fs::metadata(&last).unwrap().len();
        append_bytes(&last, &garbage);
        let (mut log, recovery) = open(dir.path(), 300);
        let torn = recovery.torn_tail.unwrap();
        prop_assert_eq!(
            (torn.path, torn.offset, torn.bytes_cut, torn.last_good_gseq),
            (last.clone(), len, garbage.len() as u64, Some(4))
        );
        prop_assert_eq!(fs::metadata(&last).unwrap().len(), len);
        assert_holds(&mut log, 0..5);
    }

    /// A damaged byte anywhere before the last record of the last segment,
    /// or anywhere in an earlier segment, is an error naming that file and
    /// the start of the damaged record (or the header), and changes nothing.
    #[test]
    fn damage_before_the_tail_is_an_error(which in 0usize..3, pick in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let dir = tempdir();
        make_log(dir.path(), 0..30, 700);
        let files = segment_files(dir.path());
        prop_assert!(files.len() >= 3);
        // 0: a record of the last segment with records after it; 1: any
        // byte of an earlier segment; 2: a record of an earlier segment.
        let file = if which == 0 { files.last().unwrap() } else { &files[pick.index(files.len() - 1)] };
        let bytes = fs::read(file).unwrap();
        let offsets = record_offsets(&bytes);
        let (at, record_start) = match which {
            0 => {
                let end = offsets.last().copied().unwrap();
                let at = 64 + pick.index(end - 64);
                (at, Some(*offsets.iter().rev().find(|&&o| o <= at).unwrap()))
            }
            _ => {
                let from = if which == 2 { 64 } else { 0 };
                let at = from + pick.index(bytes.len() - from);
                (at, offsets.iter().rev().find(|&&o| o <= at).copied())
            }
        };
        let mut damaged = bytes.clone();
        damaged[at] ^= xor;
        fs::write(file, &damaged).unwrap();
        let before = snapshot(dir.path());
        let e = open_err(dir.path());
        prop_assert_eq!(e.path(), file.as_path(), "{}", e);
        match record_start {
            Some(start) => {
                let damage = if which == 0 { "a valid record follows at offset" } else { "later segments follow" };
                prop_assert!(e.to_string().contains(damage), "{}", e);
                match &e {
                    LogError::Corrupt { offset, .. } => prop_assert_eq!(*offset, start as u64),
                    other => prop_assert!(false, "byte {}: {}", at, other),
                }
            }
            None => prop_assert!(e.offset().unwrap() < 64, "{}", e),
        }
        prop_assert_eq!(snapshot(dir.path()), before);
    }
}

#[test]
fn an_oversized_length_in_the_middle_is_an_error_without_allocating_it() {
    let dir = tempdir();
    small_log(dir.path());
    let first = segment_files(dir.path()).remove(0);
    let mut bytes = fs::read(&first).unwrap();
    let at = record_offsets(&bytes)[1];
    bytes[at + 56..at + 60].copy_from_slice(&u32::MAX.to_le_bytes());
    fs::write(&first, &bytes).unwrap();
    let e = open_err(dir.path());
    assert!(
        matches!(
            e,
            LogError::Corrupt {
                fault: RecordFault::PayloadTooLong { len: u32::MAX },
                index: 1,
                gseq: 1,
                damage: Damage::LaterSegments,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.offset(), Some(at as u64));
}

#[test]
fn an_error_message_names_file_offset_and_record() {
    let dir = tempdir();
    make_log(dir.path(), 0..6, 1 << 20);
    let path = segment_files(dir.path()).remove(0);
    let bytes = fs::read(&path).unwrap();
    let at = record_offsets(&bytes)[2];
    flip(&path, at + 70);
    let e = open_err(dir.path());
    let next = record_offsets(&bytes)[3];
    assert_eq!(
        e.to_string(),
        format!(
            "{}: offset {at}: record #2 (gseq 2 expected): checksum mismatch (gseq field reads 2); a valid record follows at offset {next}",
            path.display()
        )
    );
}
