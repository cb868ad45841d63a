//! Where two logs part, checked against logs built to part at a known place.

use ferry_replication::history::{common_prefix, epoch_of};
use ferry_replication::EpochStart;
use proptest::prelude::*;

/// A history from runs of `(epoch, records)`, records from gseq 1 on.
fn build(runs: &[(u64, u64)]) -> (Vec<EpochStart>, u64) {
    let mut history = Vec::new();
    let mut len = 0;
    for &(epoch, n) in runs {
        history.push(EpochStart {
            epoch,
            first_gseq: len + 1,
        });
        len += n;
    }
    (history, len)
}

proptest! {
    /// Log `a` is written by even epochs. Log `b` copied `a` up to `cut`, then
    /// was written by odd epochs of its own (a deposed primary's tail, say).
    /// They agree exactly up to `cut`.
    #[test]
    fn logs_part_where_they_were_cut(
        a_runs in prop::collection::vec(0u64..40, 1..6),
        cut_at in 0.0f64..=1.0,
        b_runs in prop::collection::vec(0u64..40, 0..4),
    ) {
        let a_runs: Vec<(u64, u64)> = a_runs.iter().enumerate().map(|(i, &n)| (2 * (i as u64 + 1), n)).collect();
        let (a_hist, a_len) = build(&a_runs);
        let cut = (a_len as f64 * cut_at).floor() as u64;
        let mut b_hist: Vec<EpochStart> = a_hist.iter().copied().filter(|e| e.first_gseq <= cut.max(1)).collect();
        let mut b_len = cut;
        let mut epoch = epoch_of(&a_hist, cut.max(1)) + 1;
        for &n in &b_runs {
            b_hist.push(EpochStart { epoch, first_gseq: b_len + 1 });
            b_len += n;
            epoch += 2;
        }
        // Runs of zero records and a cut before the first record make the
        // copied history slightly longer than what b holds; that is harmless.
        prop_assert_eq!(common_prefix(&a_hist, a_len, &b_hist, b_len), cut);
        prop_assert_eq!(common_prefix(&b_hist, b_len, &a_hist, a_len), cut);
        // A log agrees with any prefix of itself.
        prop_assert_eq!(common_prefix(&a_hist, a_len, &a_hist, cut), cut);
    }
}
