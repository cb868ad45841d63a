//! Which epoch wrote which records, and where two logs stop agreeing.
//!
//! Every primary writes records from `base + 1` on, where `base` is the last
//! record it had when it was promoted. A log's *history* lists, for every
//! epoch whose primary wrote into it, the first gseq that primary wrote: the
//! record at gseq `g` was written in the epoch of the last entry whose
//! `first_gseq <= g`. A backup copies its primary's history when it
//! resynchronises, so two logs that hold a record with the same gseq and the
//! same epoch hold the same records up to there (the same primary wrote it, and
//! both copied their prefix from that primary). That is what lets a primary
//! tell a rejoining node exactly where its log leaves the primary's.

use serde::{Deserialize, Serialize};

use crate::types::{Epoch, Gseq};

/// The first record written in an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EpochStart {
    /// The epoch.
    pub epoch: Epoch,
    /// The first gseq its primary wrote.
    pub first_gseq: Gseq,
}

/// A place in a log: record `gseq`, as written in `epoch`. Positions are
/// ordered by epoch, then gseq, as Raft compares logs: a log whose last
/// record is at a later position holds every record that any majority made
/// sure of before (see the crate docs).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct LogPosition {
    /// The epoch that wrote the record.
    pub epoch: Epoch,
    /// The record's gseq.
    pub gseq: Gseq,
}

impl LogPosition {
    /// Record `gseq` of a log with this `history`.
    pub fn of(history: &[EpochStart], gseq: Gseq) -> LogPosition {
        LogPosition {
            epoch: epoch_of(history, gseq),
            gseq,
        }
    }
}

/// The epoch that wrote record `gseq` according to `history`; 0 when the
/// history says nothing about it (record 0, or an empty history).
pub fn epoch_of(history: &[EpochStart], gseq: Gseq) -> Epoch {
    history
        .iter()
        .rev()
        .find(|e| e.first_gseq <= gseq)
        .map_or(0, |e| e.epoch)
}

/// Append `epoch` starting at `first_gseq`, unless the history already has an
/// entry for this epoch or a later one.
pub fn push(history: &mut Vec<EpochStart>, epoch: Epoch, first_gseq: Gseq) {
    if history.last().is_none_or(|e| e.epoch < epoch) {
        history.push(EpochStart { epoch, first_gseq });
    }
}

/// Drop the entries of epochs that wrote nothing in a log of `len` records
/// (they start after its end). Needed whenever a log is cut or is about to
/// grow by another way than the one its history foresaw.
pub fn truncate(history: &mut Vec<EpochStart>, len: Gseq) {
    history.retain(|e| e.first_gseq <= len);
}

/// The runs of records each epoch wrote in a log of `len` records (inclusive
/// gseq ranges), skipping epochs that wrote nothing.
fn runs(history: &[EpochStart], len: Gseq) -> impl Iterator<Item = (Epoch, Gseq, Gseq)> + '_ {
    history.iter().enumerate().filter_map(move |(i, e)| {
        let end = history
            .get(i + 1)
            .map_or(len, |next| next.first_gseq.saturating_sub(1).min(len));
        (e.first_gseq <= end).then_some((e.epoch, e.first_gseq, end))
    })
}

/// The last gseq at which log `a` (records up to `a_len`) and log `b` (up to
/// `b_len`) still agree; 0 when they agree only on the start record.
pub fn common_prefix(a: &[EpochStart], a_len: Gseq, b: &[EpochStart], b_len: Gseq) -> Gseq {
    let mut best = 0;
    for (ea, sa, enda) in runs(a, a_len) {
        for (eb, sb, endb) in runs(b, b_len) {
            if ea == eb {
                let lo = sa.max(sb);
                let hi = enda.min(endb);
                if lo <= hi {
                    best = best.max(hi);
                }
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(entries: &[(Epoch, Gseq)]) -> Vec<EpochStart> {
        entries
            .iter()
            .map(|&(epoch, first_gseq)| EpochStart { epoch, first_gseq })
            .collect()
    }

    #[test]
    fn epoch_of_picks_the_last_start_at_or_below() {
        let hist = h(&[(1, 1), (2, 101), (3, 101), (5, 300)]);
        assert_eq!(epoch_of(&hist, 0), 0);
        assert_eq!(epoch_of(&hist, 1), 1);
        assert_eq!(epoch_of(&hist, 100), 1);
        assert_eq!(epoch_of(&hist, 101), 3);
        assert_eq!(epoch_of(&hist, 299), 3);
        assert_eq!(epoch_of(&hist, 1000), 5);
    }

    #[test]
    fn identical_logs_agree_to_the_shorter_end() {
        let hist = h(&[(1, 1), (2, 501)]);
        assert_eq!(common_prefix(&hist, 900, &hist, 700), 700);
        assert_eq!(common_prefix(&hist, 300, &hist, 700), 300);
    }

    #[test]
    fn a_deposed_primary_tail_is_cut_where_the_new_epoch_starts() {
        // The old primary of epoch 1 wrote up to 1000; the new primary of
        // epoch 2 had 900 and wrote from 901.
        let old = h(&[(1, 1)]);
        let new = h(&[(1, 1), (2, 901)]);
        assert_eq!(common_prefix(&new, 950, &old, 1000), 900);
    }

    #[test]
    fn a_tail_older_than_several_epochs_is_cut_at_the_first_divergence() {
        // Epoch 1 wrote up to 1000 on node J; epoch 2's primary went live at
        // 800 and wrote to 900; epoch 3's went live at 900.
        let j = h(&[(1, 1)]);
        let p = h(&[(1, 1), (2, 801), (3, 901)]);
        assert_eq!(common_prefix(&p, 2000, &j, 1000), 800);
    }

    #[test]
    fn nothing_in_common_but_the_start_record() {
        assert_eq!(common_prefix(&h(&[(2, 1)]), 10, &h(&[(1, 1)]), 10), 0);
        assert_eq!(common_prefix(&[], 0, &h(&[(1, 1)]), 10), 0);
    }

    #[test]
    fn push_keeps_epochs_increasing() {
        let mut hist = h(&[(1, 1)]);
        push(&mut hist, 1, 50);
        push(&mut hist, 3, 50);
        push(&mut hist, 2, 60);
        assert_eq!(hist, h(&[(1, 1), (3, 50)]));
    }
}
