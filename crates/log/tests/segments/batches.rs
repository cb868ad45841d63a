//! `append` checks a whole batch before it writes any of it.

use crate::util::*;
use ferry_log::{LogError, RecordFault, SegmentLog};
use ferry_proto::MAX_PAYLOAD;
use std::path::Path;

/// A log holding 0..5, synced; returns it with a snapshot of its files.
fn log_of_five(dir: &Path) -> (SegmentLog, Vec<(std::path::PathBuf, Vec<u8>)>) {
    let (mut log, _) = open(dir, 400);
    log.append(&batch(0..5)).unwrap();
    log.sync().unwrap();
    let snap = snapshot(dir);
    (log, snap)
}

/// `bad` is refused with `check`, and nothing of it reaches the log or the
/// files; then the good batch still goes in.
fn refused(bad: &[u8], check: impl Fn(&LogError)) {
    let dir = tempdir();
    let (mut log, before) = log_of_five(dir.path());
    let e = log.append(bad).unwrap_err();
    check(&e);
    let line = e.to_string();
    assert!(
        !line.contains('\n') && line.contains("append: batch offset"),
        "{line}"
    );
    assert_eq!(log.next_gseq(), 5);
    assert_eq!(log.sync().unwrap(), Some(4));
    assert_eq!(snapshot(dir.path()), before);
    log.append(&batch(5..9)).unwrap();
    log.sync().unwrap();
    drop(log);
    let (mut log, recovery) = open(dir.path(), 400);
    assert_eq!(recovery.torn_tail, None);
    assert_holds(&mut log, 0..9);
}

#[test]
fn a_bad_checksum_refuses_the_batch() {
    let mut bad = batch(5..8);
    let second = record(5, len_of(5)).len();
    bad[second + 70] ^= 1;
    refused(&bad, |e| {
        assert!(
            matches!(e, LogError::BadBatch { index: 1, offset, fault: RecordFault::BadChecksum { gseq: 6 }, .. } if *offset == second as u64),
            "{e}"
        )
    });
}

#[test]
fn a_gseq_gap_or_repeat_refuses_the_batch() {
    let gap = [batch(5..7), batch(8..9)].concat();
    let at = batch(5..7).len() as u64;
    refused(&gap, |e| {
        assert!(
            matches!(e, LogError::BatchSequence { index: 2, expected: 7, found: 8, offset, .. } if *offset == at),
            "{e}"
        )
    });
    refused(&batch(4..6), |e| {
        assert!(
            matches!(
                e,
                LogError::BatchSequence {
                    index: 0,
                    offset: 0,
                    expected: 5,
                    found: 4,
                    ..
                }
            ),
            "{e}"
        )
    });
    refused(&batch(6..7), |e| {
        assert!(
            matches!(
                e,
                LogError::BatchSequence {
                    expected: 5,
                    found: 6,
                    ..
                }
            ),
            "{e}"
        )
    });
}

#[test]
fn a_truncated_record_refuses_the_batch_at_every_length() {
    let good = batch(5..8);
    let last = batch(5..7).len();
    for len in last + 1..good.len() {
        refused(&good[..len], |e| {
            assert!(
                matches!(e, LogError::BadBatch { index: 2, offset, fault: RecordFault::Truncated { .. }, .. } if *offset == last as u64),
                "cut at {len}: {e}"
            )
        });
    }
}

#[test]
fn bad_lengths_and_padding_refuse_the_batch() {
    // A 35-byte payload: 5 bytes of padding.
    let r = record(5, 35);
    let mut padding = r.clone();
    *padding.last_mut().unwrap() = 1;
    refused(&padding, |e| {
        assert!(
            matches!(
                e,
                LogError::BadBatch {
                    fault: RecordFault::BadPadding,
                    ..
                }
            ),
            "{e}"
        )
    });

    let mut length = r.clone();
    length[0] += 8;
    refused(&length, |e| {
        assert!(
            matches!(
                e,
                LogError::BadBatch {
                    fault: RecordFault::BadLength { len: 107 },
                    ..
                }
            ),
            "{e}"
        )
    });

    let mut too_long = r.clone();
    too_long[56..60].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
    refused(&too_long, |e| {
        assert!(
            matches!(
                e,
                LogError::BadBatch {
                    fault: RecordFault::PayloadTooLong { .. },
                    ..
                }
            ),
            "{e}"
        )
    });

    refused(&[0u8; 10], |e| {
        assert!(
            matches!(
                e,
                LogError::BadBatch {
                    fault: RecordFault::Truncated {
                        needed: 64,
                        available: 10
                    },
                    ..
                }
            ),
            "{e}"
        )
    });
}

#[test]
fn a_refused_batch_after_buffered_appends_keeps_them() {
    let dir = tempdir();
    let (mut log, _) = open(dir.path(), 400);
    log.append(&batch(0..3)).unwrap();
    assert!(log.append(&batch(4..5)).is_err());
    log.append(&batch(3..6)).unwrap();
    log.sync().unwrap();
    assert_holds(&mut log, 0..6);
}
