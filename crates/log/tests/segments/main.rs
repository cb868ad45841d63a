//! `SegmentLog` against good and bad directories: every torn tail is cut
//! and reported, every other damage is an error naming the file and the
//! offset, never a panic and never a silent skip.

mod batches;
mod format;
mod maintenance;
mod recovery;
mod round_trip;
mod util;
