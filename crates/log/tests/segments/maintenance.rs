//! `drop_below`, `truncate_after`, `reset`, and a reset interrupted by a
//! crash.

use crate::util::*;
use ferry_log::{segment_file_name, LogError, SegmentHeader, RESET_SUFFIX};
use std::fs;
use zerocopy::IntoBytes;

/// First `gseq` of each segment in `dir`, from the names.
fn firsts(dir: &std::path::Path) -> Vec<u64> {
    segment_files(dir)
        .iter()
        .map(|p| {
            p.file_name().unwrap().to_str().unwrap()[..20]
                .parse()
                .unwrap()
        })
        .collect()
}

#[test]
fn drop_below_removes_whole_segments_below_the_checkpoint() {
    let dir = tempdir();
    make_log(dir.path(), 0..40, 500);
    let starts = firsts(dir.path());
    assert!(starts.len() >= 4, "{starts:?}");
    let (mut log, _) = open(dir.path(), 500);
    // The ranges follow on from each other and end where the log does.
    let ranges: Vec<(u64, u64, u64)> = log.segment_ranges().collect();
    assert_eq!(ranges.iter().map(|r| r.0).collect::<Vec<_>>(), starts);
    for pair in ranges.windows(2) {
        assert_eq!(pair[0].1, pair[1].0, "{ranges:?}");
    }
    assert_eq!(ranges.last().unwrap().1, 40);
    // Their sizes are the files'.
    let sizes: Vec<u64> = segment_files(dir.path())
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .collect();
    assert_eq!(ranges.iter().map(|r| r.2).collect::<Vec<_>>(), sizes);

    // Inside the second segment: only the first goes.
    assert_eq!(log.drop_below(starts[2] - 1).unwrap(), 1);
    assert_eq!(firsts(dir.path()), starts[1..]);
    assert_eq!(log.first_gseq(), starts[1]);
    // Exactly at a boundary: the segment ending there goes too.
    assert_eq!(log.drop_below(starts[3]).unwrap(), 2);
    assert_eq!(log.drop_below(starts[3]).unwrap(), 0);
    assert_holds(&mut log, starts[3]..40);
    assert!(matches!(log.read_from(0), Err(LogError::NotHeld { first, .. }) if first == starts[3]));
    // Never the segment being written, whatever the checkpoint.
    log.drop_below(u64::MAX).unwrap();
    assert_eq!(log.segment_count(), 1);
    let last = *starts.last().unwrap();
    assert_eq!(log.first_gseq(), last);
    log.append(&batch(40..42)).unwrap();
    log.sync().unwrap();
    drop(log);
    let (mut log, recovery) = open(dir.path(), 500);
    assert_eq!(recovery.torn_tail, None);
    assert_holds(&mut log, last..42);
}

#[test]
fn truncate_after_cuts_inside_a_segment_and_removes_later_ones() {
    let original = tempdir();
    make_log(original.path(), 0..40, 500);
    let starts = firsts(original.path());
    // Inside a segment, at its first record, at its last, at the end of
    // the log, and past it.
    for keep in [starts[1] + 1, starts[2] - 1, starts[1], 0, 38, 39, 1000] {
        let dir = tempdir();
        copy_dir(original.path(), dir.path());
        let (mut log, _) = open(dir.path(), 500);
        log.truncate_after(keep).unwrap();
        let end = (keep + 1).min(40);
        assert_eq!(log.next_gseq(), end, "after {keep}");
        assert_eq!(log.durable_gseq(), Some(end - 1));
        assert_holds(&mut log, 0..end);
        assert!(
            firsts(dir.path()).iter().all(|&f| f <= end),
            "after {keep}: {:?}",
            firsts(dir.path())
        );
        // The primary's records after the divergence point go in again.
        log.append(&batch(end..45)).unwrap();
        log.sync().unwrap();
        drop(log);
        let (mut log, recovery) = open(dir.path(), 500);
        assert_eq!(recovery.torn_tail, None, "after {keep}");
        assert_holds(&mut log, 0..45);
    }
}

#[test]
fn truncate_after_removes_buffered_appends_too() {
    let dir = tempdir();
    let (mut log, _) = open(dir.path(), 1 << 20);
    log.append(&batch(0..5)).unwrap();
    log.sync().unwrap();
    log.append(&batch(5..12)).unwrap();
    log.truncate_after(6).unwrap();
    assert_eq!((log.last_gseq(), log.durable_gseq()), (Some(6), Some(6)));
    assert_eq!(log.sync().unwrap(), Some(6));
    assert_holds(&mut log, 0..7);
}

#[test]
fn truncate_after_below_the_log_is_an_error() {
    let dir = tempdir();
    make_log(dir.path(), 10..20, 1 << 20);
    let (mut log, _) = open(dir.path(), 1 << 20);
    let e = log.truncate_after(8).unwrap_err();
    assert!(
        matches!(
            e,
            LogError::NotHeld {
                gseq: 8,
                first: 10,
                next: 20,
                ..
            }
        ),
        "{e}"
    );
    // Just below the first record: everything goes.
    log.truncate_after(9).unwrap();
    assert_eq!(
        (log.first_gseq(), log.next_gseq(), log.last_gseq()),
        (10, 10, None)
    );
}

#[test]
fn reset_starts_again_at_a_checkpoint() {
    let dir = tempdir();
    make_log(dir.path(), 0..30, 400);
    fs::write(dir.path().join("notes.txt"), b"kept").unwrap();
    let (mut log, _) = open(dir.path(), 400);
    log.append(&batch(30..32)).unwrap();
    log.reset(1000).unwrap();
    assert_eq!((log.first_gseq(), log.next_gseq()), (1000, 1000));
    assert_eq!((log.last_gseq(), log.durable_gseq()), (None, None));
    assert_eq!(
        segment_files(dir.path()),
        [dir.path().join(segment_file_name(1000))]
    );
    assert!(dir.path().join("notes.txt").exists());
    assert!(log.append(&batch(30..31)).is_err());
    log.append(&batch(1000..1010)).unwrap();
    log.sync().unwrap();
    drop(log);
    let (mut log, recovery) = open(dir.path(), 400);
    assert_eq!((recovery.torn_tail, recovery.finished_reset), (None, None));
    assert_holds(&mut log, 1000..1010);
    // Back to a gseq the log already started at.
    log.reset(1000).unwrap();
    log.append(&batch(1000..1002)).unwrap();
    log.sync().unwrap();
    assert_holds(&mut log, 1000..1002);
    log.reset(0).unwrap();
    assert_holds(&mut log, 0..0);
}

#[test]
fn a_reset_interrupted_after_its_intent_is_finished_on_open() {
    let dir = tempdir();
    make_log(dir.path(), 0..30, 400);
    // The state a crash leaves after the intent was made durable and some
    // old segments were removed.
    let intent = dir.path().join(format!("{:020}{RESET_SUFFIX}", 500));
    fs::write(&intent, SegmentHeader::new(500, 0).as_bytes()).unwrap();
    fs::remove_file(segment_files(dir.path()).remove(0)).unwrap();
    let (mut log, recovery) = open(dir.path(), 400);
    assert_eq!(recovery.finished_reset, Some(500));
    assert!(!intent.exists());
    assert_eq!(
        segment_files(dir.path()),
        [dir.path().join(segment_file_name(500))]
    );
    assert_holds(&mut log, 500..500);
}

#[test]
fn a_reset_intent_written_part_way_is_discarded() {
    let dir = tempdir();
    make_log(dir.path(), 0..30, 400);
    let intent = dir.path().join(format!("{:020}{RESET_SUFFIX}", 500));
    fs::write(&intent, &SegmentHeader::new(500, 0).as_bytes()[..40]).unwrap();
    let (mut log, recovery) = open(dir.path(), 400);
    assert_eq!(recovery.finished_reset, None);
    assert!(!intent.exists());
    assert_holds(&mut log, 0..30);
}
