//! What can go wrong, and where.

use crate::format::{SEGMENT_MAJOR, SEGMENT_MAX_HEADER_LEN};
use ferry_proto::{MAX_PAYLOAD, RECORD_HEADER_LEN};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What is wrong with one record, on disk or in a batch. The position of the
/// record is carried by the [`LogError`] around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordFault {
    /// The data ends inside the record (or inside its header).
    #[error("the data ends inside the record ({needed} bytes needed, {available} left)")]
    Truncated {
        /// Bytes the record needs, padding included.
        needed: u64,
        /// Bytes left from the start of the record.
        available: u64,
    },
    /// `payload_len` exceeds [`MAX_PAYLOAD`].
    #[error("payload length {len} exceeds the maximum of {MAX_PAYLOAD} bytes")]
    PayloadTooLong {
        /// The `payload_len` read.
        len: u32,
    },
    /// `len` is not the header length plus `payload_len`.
    #[error("record length {len} is not {RECORD_HEADER_LEN} plus its payload length")]
    BadLength {
        /// The `len` read.
        len: u32,
    },
    /// The record's CRC-32C does not match its header and payload.
    #[error("checksum mismatch (gseq field reads {gseq})")]
    BadChecksum {
        /// The `gseq` read, which may be the damaged field.
        gseq: u64,
    },
    /// The bytes between the record's end and the next 8-byte boundary are
    /// not zero.
    #[error("non-zero padding")]
    BadPadding,
}

/// Why a damaged record or header is not a torn tail that could be cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// A record that passes every check starts at this offset after it.
    ValidDataFollows {
        /// Offset of that record in the same file.
        at: u64,
    },
    /// The file is not the last segment: later segments follow it.
    LaterSegments,
    /// Found while reading records back: the file no longer holds what
    /// was checked when the log was opened or written.
    ChangedSinceOpen,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::ValidDataFollows { at } => {
                write!(f, "a valid record follows at offset {at}")
            }
            Damage::LaterSegments => f.write_str("later segments follow"),
            Damage::ChangedSinceOpen => f.write_str("the file changed after it was checked"),
        }
    }
}

/// An error of [`crate::SegmentLog`]. The `Display` form is one line that
/// starts with the file (or the log directory) and, where there is one, the
/// byte offset of the problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// A system call on a file or directory failed.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done (`"fdatasync"`, `"open"`, …).
        op: &'static str,
        /// The error from the system.
        #[source]
        source: io::Error,
    },
    /// A file named like a segment that does not start with the segment
    /// magic, or whose name is not a valid `gseq`.
    #[error("{}: offset {offset}: not a Ferry segment ({why})", path.display())]
    NotASegment {
        /// The file.
        path: PathBuf,
        /// Always 0.
        offset: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// The segment's major version is not [`SEGMENT_MAJOR`].
    #[error("{}: offset {offset}: segment format version {major}.{minor} is not supported (this reader reads version {SEGMENT_MAJOR}.x)", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Offset of the version field.
        offset: u64,
        /// The file's major version.
        major: u16,
        /// The file's minor version.
        minor: u16,
    },
    /// The segment header is damaged where it cannot be a torn tail, or its
    /// fields are impossible.
    #[error("{}: offset {offset}: bad segment header: {why}{}", path.display(), damage.map(|d| format!("; {d}")).unwrap_or_default())]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// Offset of the offending field (0 for the whole header).
        offset: u64,
        /// What is wrong.
        why: &'static str,
        /// Why it was not cut as a torn tail, when that was a possibility.
        damage: Option<Damage>,
    },
    /// The header's `header_len` is shorter than the fixed header or longer
    /// than [`SEGMENT_MAX_HEADER_LEN`].
    #[error("{}: offset {offset}: segment header length {len} is outside 64..={SEGMENT_MAX_HEADER_LEN}", path.display())]
    BadHeaderLength {
        /// The file.
        path: PathBuf,
        /// Offset of the `header_len` field.
        offset: u64,
        /// The value read.
        len: u32,
    },
    /// The header's `first_gseq` is not the one in the file name.
    #[error("{}: offset {offset}: segment header says first gseq {header_gseq}, the file name says {name_gseq}", path.display())]
    NameMismatch {
        /// The file.
        path: PathBuf,
        /// Offset of the `first_gseq` field.
        offset: u64,
        /// From the file name.
        name_gseq: u64,
        /// From the header.
        header_gseq: u64,
    },
    /// The segment belongs to another application.
    #[error("{}: offset {offset}: segment of application {found:#018x}, this log is for {expected:#018x}", path.display())]
    WrongApplication {
        /// The file.
        path: PathBuf,
        /// Offset of the `app_id` field.
        offset: u64,
        /// The log's application id.
        expected: u64,
        /// The segment's.
        found: u64,
    },
    /// A damaged record that is not a torn tail: something valid follows it.
    #[error("{}: offset {offset}: record #{index} (gseq {gseq} expected): {fault}; {damage}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Start of the record.
        offset: u64,
        /// Position of the record in its segment, from 0.
        index: u64,
        /// The `gseq` the record should have had.
        gseq: u64,
        /// What is wrong with it.
        fault: RecordFault,
        /// Why it was not cut as a torn tail.
        damage: Damage,
    },
    /// A record or a segment that does not carry the next `gseq`: a gap
    /// (`found` > `expected`) or an overlap (`found` < `expected`). For a
    /// segment, `offset` is that of the header's `first_gseq` field.
    #[error("{}: offset {offset}: gseq {found} where {expected} was expected ({})", path.display(), if found > expected { "a gap" } else { "an overlap" })]
    Sequence {
        /// The file.
        path: PathBuf,
        /// Where the out-of-sequence `gseq` was read.
        offset: u64,
        /// The next `gseq` of the log at that point.
        expected: u64,
        /// The `gseq` read.
        found: u64,
    },
    /// [`crate::SegmentLog::append`] refused a batch: a record in it is
    /// malformed. Nothing of the batch was written.
    #[error("{}: append: batch offset {offset}: record #{index}: {fault}", dir.display())]
    BadBatch {
        /// The log directory.
        dir: PathBuf,
        /// Start of the record in the batch.
        offset: u64,
        /// Position of the record in the batch, from 0.
        index: u64,
        /// What is wrong with it.
        fault: RecordFault,
    },
    /// [`crate::SegmentLog::append`] refused a batch: a record in it does not
    /// carry the next `gseq`. Nothing of the batch was written.
    #[error("{}: append: batch offset {offset}: record #{index} has gseq {found}, expected {expected}", dir.display())]
    BatchSequence {
        /// The log directory.
        dir: PathBuf,
        /// Start of the record in the batch.
        offset: u64,
        /// Position of the record in the batch, from 0.
        index: u64,
        /// The next `gseq` of the log.
        expected: u64,
        /// The record's `gseq`.
        found: u64,
    },
    /// A `gseq` outside what the log holds was asked for.
    #[error("{}: gseq {gseq} is outside the log, which holds {first}..{next}", dir.display())]
    NotHeld {
        /// The log directory.
        dir: PathBuf,
        /// The `gseq` asked for.
        gseq: u64,
        /// The log's first `gseq`.
        first: u64,
        /// The `gseq` the next appended record must have.
        next: u64,
    },
    /// An earlier write or sync failed: what the files hold is no longer
    /// known. Reopen the log (or [`crate::SegmentLog::reset`] it).
    #[error("{}: an earlier write or sync failed; reopen the log", dir.display())]
    Failed {
        /// The log directory.
        dir: PathBuf,
    },
}

impl LogError {
    /// The file or directory the error is about.
    pub fn path(&self) -> &Path {
        match self {
            LogError::Io { path, .. }
            | LogError::NotASegment { path, .. }
            | LogError::UnsupportedVersion { path, .. }
            | LogError::BadHeader { path, .. }
            | LogError::BadHeaderLength { path, .. }
            | LogError::NameMismatch { path, .. }
            | LogError::WrongApplication { path, .. }
            | LogError::Corrupt { path, .. }
            | LogError::Sequence { path, .. } => path,
            LogError::BadBatch { dir, .. }
            | LogError::BatchSequence { dir, .. }
            | LogError::NotHeld { dir, .. }
            | LogError::Failed { dir } => dir,
        }
    }

    /// The byte offset the error points at: in the file for on-disk
    /// errors, in the batch for batch errors.
    pub fn offset(&self) -> Option<u64> {
        match *self {
            LogError::NotASegment { offset, .. }
            | LogError::UnsupportedVersion { offset, .. }
            | LogError::BadHeader { offset, .. }
            | LogError::BadHeaderLength { offset, .. }
            | LogError::NameMismatch { offset, .. }
            | LogError::WrongApplication { offset, .. }
            | LogError::Corrupt { offset, .. }
            | LogError::Sequence { offset, .. }
            | LogError::BadBatch { offset, .. }
            | LogError::BatchSequence { offset, .. } => Some(offset),
            LogError::Io { .. } | LogError::NotHeld { .. } | LogError::Failed { .. } => None,
        }
    }
}

/// Map an `io::Error` on `path` during `op` to a [`LogError`].
pub(crate) fn io_err<'a>(
    path: &'a Path,
    op: &'static str,
) -> impl FnOnce(io::Error) -> LogError + 'a {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}
