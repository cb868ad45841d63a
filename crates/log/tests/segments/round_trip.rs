//! What is appended and synced is read back, across segments and reopens.

use crate::util::*;
use ferry_log::{SegmentHeader, MAX_RECORD_LEN};
use ferry_proto::MAX_PAYLOAD;
use proptest::prelude::*;
use std::fs;
use zerocopy::FromBytes;

#[test]
fn round_trip_across_segments() {
    // On the disk of the temporary directory, not tmpfs: real fsyncs.
    let dir = tempfile::tempdir().unwrap();
    let (mut log, recovery) = open(dir.path(), 600);
    assert!(recovery.created);
    assert_eq!(recovery.torn_tail, None);
    assert_eq!((log.first_gseq(), log.next_gseq()), (0, 0));
    assert_eq!((log.last_gseq(), log.durable_gseq()), (None, None));
    assert_eq!(log.sync().unwrap(), None);

    let mut g = 0;
    for size in [1, 3, 10, 1, 25, 60] {
        log.append(&batch(g..g + size)).unwrap();
        g += size;
        assert_eq!(log.last_gseq(), Some(g - 1));
    }
    assert_eq!(log.sync().unwrap(), Some(g - 1));
    assert_eq!(log.durable_gseq(), Some(g - 1));
    assert!(log.segment_count() > 5, "{} segments", log.segment_count());
    assert_holds(&mut log, 0..g);
    for from in [0, 1, 17, g - 1, g] {
        let got = read_all(&mut log, from);
        assert_eq!(got.len() as u64, g - from);
        assert!(got.iter().zip(from..).all(|(r, g)| *r == expected(g)));
    }
    drop(log);

    // Each file is named for its first record, which its header repeats.
    let files = segment_files(dir.path());
    let mut next = 0;
    for f in &files {
        let bytes = fs::read(f).unwrap();
        let (h, _) = SegmentHeader::read_from_prefix(&bytes).unwrap();
        assert_eq!(h.first_gseq, next);
        assert_eq!(
            f.file_name().unwrap().to_str().unwrap(),
            format!("{next:020}.fseg")
        );
        // A segment is only rolled once it passed the limit.
        let records = record_offsets(&bytes).len() as u64;
        next += records;
    }
    assert_eq!(next, g);

    let (mut log, recovery) = open(dir.path(), 600);
    assert_eq!(recovery.torn_tail, None);
    assert_eq!(recovery.segments, files.len());
    assert_eq!(recovery.records, g);
    assert!(!recovery.created);
    assert_eq!(log.durable_gseq(), Some(g - 1));
    assert_holds(&mut log, 0..g);
    // And it goes on where it stopped.
    log.append(&batch(g..g + 5)).unwrap();
    log.sync().unwrap();
    assert_holds(&mut log, 0..g + 5);
}

#[test]
fn appends_are_durable_only_after_sync() {
    let dir = tempdir();
    let (mut log, _) = open(dir.path(), 1 << 20);
    log.append(&batch(0..3)).unwrap();
    assert_eq!(log.last_gseq(), Some(2));
    assert_eq!(log.durable_gseq(), None);
    assert_eq!(log.sync().unwrap(), Some(2));
    log.append(&batch(3..4)).unwrap();
    assert_eq!(log.durable_gseq(), Some(2));
    assert_eq!(log.sync().unwrap(), Some(3));
    // An empty batch is nothing; a sync with nothing new is cheap and the same.
    log.append(&[]).unwrap();
    assert_eq!(log.sync().unwrap(), Some(3));
}

#[test]
fn a_record_of_the_largest_payload_round_trips() {
    let dir = tempdir();
    let (mut log, _) = open(dir.path(), 1 << 16);
    let big = record(0, MAX_PAYLOAD);
    assert_eq!(big.len(), MAX_RECORD_LEN);
    log.append(&big).unwrap();
    log.append(&record(1, 3)).unwrap();
    log.sync().unwrap();
    drop(log);
    let (mut log, _) = open(dir.path(), 1 << 16);
    let got = read_all(&mut log, 0);
    assert_eq!(got[0].payload, payload(0, MAX_PAYLOAD));
    assert_eq!(got[1].payload, payload(1, 3));
    assert_eq!(log.segment_count(), 2);
}

#[test]
fn reads_far_into_a_large_segment() {
    // Records of 8 KiB: the segment spans several index strides.
    let dir = tempdir();
    let (mut log, _) = open(dir.path(), 64 << 20);
    for g in 0..600 {
        log.append(&record(g, 8000)).unwrap();
    }
    log.sync().unwrap();
    drop(log);
    let (mut log, _) = open(dir.path(), 64 << 20);
    for from in [0, 1, 130, 131, 262, 399, 599] {
        let got = read_all(&mut log, from);
        assert_eq!(got.len() as u64, 600 - from);
        assert_eq!(got[0].gseq(), from);
        assert_eq!(got[0].payload, payload(from, 8000));
        assert_eq!(got.last().unwrap().gseq(), 599);
    }
    // A truncation far into the segment finds its record through the index.
    log.truncate_after(399).unwrap();
    drop(log);
    let (mut log, recovery) = open(dir.path(), 64 << 20);
    assert_eq!(recovery.torn_tail, None);
    assert_eq!(log.next_gseq(), 400);
    let got = read_all(&mut log, 398);
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].payload, payload(399, 8000));
}

#[test]
fn a_file_changed_under_a_reader_is_an_error() {
    let dir = tempdir();
    let (mut log, _) = open(dir.path(), 400);
    log.append(&batch(0..20)).unwrap();
    log.sync().unwrap();
    let files = segment_files(dir.path());

    // A byte damaged after the log checked it.
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let at = record_offsets(&bytes)[1];
    bytes[at + 64] ^= 1;
    std::fs::write(&files[0], &bytes).unwrap();
    let mut records = log.read_from(0).unwrap();
    assert_eq!(records.next().unwrap().unwrap(), expected(0));
    let e = records.next().unwrap().unwrap_err();
    assert_eq!(
        (e.path(), e.offset()),
        (files[0].as_path(), Some(at as u64))
    );
    assert!(
        e.to_string()
            .ends_with("the file changed after it was checked"),
        "{e}"
    );
    assert!(records.next().is_none());

    // A segment removed under a reader that has not reached it yet.
    bytes[at + 64] ^= 1;
    std::fs::write(&files[0], &bytes).unwrap();
    let mut records = log.read_from(0).unwrap();
    assert_eq!(records.next().unwrap().unwrap(), expected(0));
    std::fs::remove_file(&files[2]).unwrap();
    let mut e = None;
    let mut read = 1;
    for r in records.by_ref() {
        match r {
            Ok(r) => {
                assert_eq!(r, expected(read));
                read += 1;
            }
            Err(err) => e = Some(err),
        }
    }
    let e = e.expect("an error");
    assert!(
        matches!(e, ferry_log::LogError::Io { op: "open", .. }),
        "{e}"
    );
    assert_eq!(e.path(), files[2]);
    assert!(records.next().is_none());
}

#[test]
fn read_from_outside_the_log_is_an_error() {
    let dir = tempdir();
    make_log(dir.path(), 10..20, 400);
    let (mut log, _) = open(dir.path(), 400);
    assert_holds(&mut log, 10..20);
    assert_eq!(log.read_from(20).unwrap().count(), 0);
    for bad in [0, 9, 21, u64::MAX] {
        let e = log.read_from(bad).unwrap_err();
        assert!(
            e.to_string().contains(&format!(
                "gseq {bad} is outside the log, which holds 10..20"
            )),
            "{e}"
        );
    }
}

#[test]
fn records_round_trip_to_the_bytes_appended() {
    let dir = tempdir();
    let (mut log, _) = open(dir.path(), 300);
    let bytes = batch(0..40);
    log.append(&bytes).unwrap();
    // Reading works before a sync too (the buffer is written out first).
    let again: Vec<u8> = read_all(&mut log, 0)
        .iter()
        .flat_map(|r| r.to_bytes())
        .collect();
    assert_eq!(again, bytes);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random batches (sizes, payload lengths, syncs, reopens) read back
    /// equal, whatever the segment size.
    #[test]
    fn random_batches_round_trip(
        segment_bytes in 64u64..3000,
        batches in prop::collection::vec(
            (prop::collection::vec(0usize..700, 0..12), any::<bool>(), 0u8..8),
            1..12,
        ),
    ) {
        let dir = tempdir();
        let (mut log, _) = open(dir.path(), segment_bytes);
        let mut want = Vec::new();
        for (lens, sync, action) in batches {
            let start = log.next_gseq();
            let mut bytes = Vec::new();
            for (i, len) in lens.iter().enumerate() {
                let g = start + i as u64;
                bytes.extend(record(g, *len));
                want.push((g, *len));
            }
            log.append(&bytes).unwrap();
            if sync {
                prop_assert_eq!(log.sync().unwrap(), log.last_gseq());
            }
            if action == 0 {
                log.sync().unwrap();
                drop(log);
                let (l, recovery) = open(dir.path(), segment_bytes);
                prop_assert_eq!(recovery.torn_tail, None);
                log = l;
            }
        }
        log.sync().unwrap();
        drop(log);
        let (mut log, recovery) = open(dir.path(), segment_bytes);
        prop_assert_eq!(recovery.torn_tail, None);
        prop_assert_eq!(recovery.records, want.len() as u64);
        let got = read_all(&mut log, 0);
        prop_assert_eq!(got.len(), want.len());
        for (r, (g, len)) in got.iter().zip(&want) {
            prop_assert_eq!(r.gseq(), *g);
            prop_assert_eq!(&r.payload, &payload(*g, *len));
        }
    }
}

/// The latest records, kept in memory for the readers that follow the log,
/// are the same bytes the files give back, from any gseq among them; once
/// they are cut (truncate, reset) or older than what is kept, they come
/// from the files only.
#[test]
fn recent_records_from_memory_match_the_files() {
    let dir = tempdir();
    let (mut log, _) = open(dir.path(), 4096);
    let mut g = 0;
    for size in [1, 5, 2, 40, 1, 9] {
        log.append(&batch(g..g + size)).unwrap();
        g += size;
    }
    let file_bytes = |log: &mut ferry_log::SegmentLog, from: u64| -> Vec<u8> {
        read_all(log, from)
            .iter()
            .flat_map(|r| r.to_bytes())
            .collect()
    };
    for from in 0..g {
        let (bytes, last) = log.read_recent(from, usize::MAX).expect("kept in memory");
        assert_eq!(last, g - 1, "from {from}");
        assert_eq!(bytes, file_bytes(&mut log, from), "from {from}");
        // A small limit still gives whole records, at least one.
        let (some, last) = log.read_recent(from, 1).unwrap();
        assert!(last >= from && !some.is_empty());
        assert_eq!(some[..], file_bytes(&mut log, from)[..some.len()]);
    }
    assert_eq!(log.read_recent(g, usize::MAX), None, "nothing past the end");

    log.truncate_after(20).unwrap();
    assert_eq!(
        log.read_recent(5, usize::MAX),
        None,
        "cut: from the files only"
    );
    log.append(&batch(21..30)).unwrap();
    let (bytes, last) = log.read_recent(21, usize::MAX).unwrap();
    assert_eq!((last, bytes), (29, file_bytes(&mut log, 21)));
    assert_eq!(log.read_recent(20, usize::MAX), None, "before the cut");

    // Far more than is kept: the oldest batches are dropped from memory.
    let mut g = 30;
    let big = ferry_log::RECENT_BYTES / 180;
    for _ in 0..3 {
        log.append(&batch(g..g + big as u64)).unwrap();
        g += big as u64;
    }
    assert_eq!(log.read_recent(30, usize::MAX), None);
    let (bytes, _) = log.read_recent(g - 1, usize::MAX).unwrap();
    assert_eq!(bytes, file_bytes(&mut log, g - 1));

    log.reset(1000).unwrap();
    assert_eq!(log.read_recent(g - 1, usize::MAX), None);
}
