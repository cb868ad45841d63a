//! Durable, checksummed segment files of records on a backup.
//!
//! A [`SegmentLog`] keeps the records of one protected application, in the
//! primary's total order `gseq`, in a directory of append-only segment
//! files:
//!
//! ```text
//! 00000000000000000000.fseg   segment header, records gseq 0 ..= 40961
//! 00000000000000040962.fseg   segment header, records gseq 40962 ..= 81733
//! 00000000000000081734.fseg   the segment being written
//! ```
//!
//! Each file is a 64-byte [`SegmentHeader`] followed by records in exactly
//! the format of `ferry_proto` (`docs/LOG-FORMAT.md`): a 64-byte
//! [`ferry_proto::RecordHeader`], the payload, zero padding to 8 bytes, each
//! record covered by its own CRC-32C. `gseq` goes up by exactly one from
//! record to record, across files. `docs/SEGMENTS.md` is the written form of
//! this crate.
//!
//! **Durability.** [`SegmentLog::append`] checks a batch and buffers it;
//! [`SegmentLog::sync`] writes, `fdatasync`s (and `fsync`s the directory
//! after a segment was created) and returns the durable `gseq`. A backup
//! acknowledges a record only after a `sync` that covers it returned
//! (output commit); several batches may share one `sync` (group commit).
//!
//! **Recovery.** [`SegmentLog::open`] checks every header and record. A torn
//! tail (the last segment ending inside a record, in damaged records with
//! nothing valid after them, or inside its header) is cut and reported in
//! [`Recovery`]; any other damage is a [`LogError`] naming the file and the
//! offset, after which the caller resynchronises (for example with
//! [`SegmentLog::reset`]).
//!
//! One [`SegmentLog`] owns its directory: two in the same directory at once
//! are not supported.
//!
//! ```
//! use ferry_log::{SegmentLog, SegmentOptions};
//! use ferry_proto::{Kind, RecordHeader};
//! use zerocopy::IntoBytes;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let (mut log, recovery) = SegmentLog::open(dir.path(), SegmentOptions::default()).unwrap();
//! assert!(recovery.torn_tail.is_none());
//!
//! let mut h = RecordHeader { kind: Kind::Syscall as u16, gseq: 0, ..Default::default() };
//! h.seal(b"hello!!!");
//! let mut batch = h.as_bytes().to_vec();
//! batch.extend_from_slice(b"hello!!!");
//! log.append(&batch).unwrap();
//! assert_eq!(log.sync().unwrap(), Some(0)); // now acknowledge gseq 0
//!
//! let back: Vec<_> = log.read_from(0).unwrap().collect::<Result<_, _>>().unwrap();
//! assert_eq!(back[0].payload, b"hello!!!");
//! ```

mod error;
mod format;
mod read;
mod scan;

pub use error::{Damage, LogError, RecordFault};
pub use format::{
    segment_file_name, SegmentHeader, MAX_RECORD_LEN, NAME_DIGITS, RESET_SUFFIX,
    SEGMENT_HEADER_LEN, SEGMENT_MAGIC, SEGMENT_MAJOR, SEGMENT_MAX_HEADER_LEN, SEGMENT_MINOR,
    SEGMENT_SUFFIX,
};
pub use read::{OwnedRecord, Records};

use error::io_err;
use format::{check_record, classify, find_valid_record, read_header, reset_file_name, Name};
use read::Span;
use scan::{check_header, scan_segment, Fault, HeaderCheck, INDEX_STRIDE};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use zerocopy::IntoBytes;

/// Default for [`SegmentOptions::segment_bytes`]: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// Buffered appends are written out (not synced) once this many bytes are
/// pending, so that memory stays bounded between syncs.
const WRITE_CHUNK: usize = 1 << 20;

/// How a [`SegmentLog`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentOptions {
    /// A new segment is started before the first record appended after the
    /// current segment reached this many bytes (header included).
    pub segment_bytes: u64,
    /// The application the log belongs to (for example a hash of its name),
    /// written in every segment header and checked on open: a segment of
    /// another application is an error. 0 writes 0 and accepts any.
    pub app_id: u64,
}

impl Default for SegmentOptions {
    fn default() -> SegmentOptions {
        SegmentOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            app_id: 0,
        }
    }
}

/// What [`SegmentLog::open`] found and repaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Segments in the log after recovery.
    pub segments: usize,
    /// Records in the log after recovery.
    pub records: u64,
    /// The torn tail that was cut, if there was one.
    pub torn_tail: Option<TornTail>,
    /// A [`SegmentLog::reset`] interrupted by a crash was completed: the log
    /// starts again at this `gseq`.
    pub finished_reset: Option<u64>,
    /// The directory held no segment: an empty log starting at `gseq` 0 was
    /// created.
    pub created: bool,
}

/// A torn tail cut by [`SegmentLog::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment that was cut (always the last one).
    pub path: PathBuf,
    /// Where the file now ends: the start of the first bad record, or 0 for
    /// a torn segment header (the header is then written again from the
    /// file name, and the file holds no record).
    pub offset: u64,
    /// Bytes removed from `offset` to the old end of the file.
    pub bytes_cut: u64,
    /// The last record of the log that was kept, if any.
    pub last_good_gseq: Option<u64>,
    /// What was wrong at `offset`, in one line.
    pub reason: String,
}

/// One segment file, as this process knows it.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    first_gseq: u64,
    /// `gseq` after its last record.
    end_gseq: u64,
    /// Offset of its first record.
    data_start: u64,
    /// Bytes, appends not yet written out included.
    len: u64,
    /// Sparse (`gseq`, offset) index: its first record, then one at least
    /// every [`INDEX_STRIDE`] bytes.
    index: Vec<(u64, u64)>,
}

impl Segment {
    fn note_record(&mut self, gseq: u64, offset: u64) {
        if self
            .index
            .last()
            .is_none_or(|&(_, at)| offset - at >= INDEX_STRIDE)
        {
            self.index.push((gseq, offset));
        }
    }

    /// The indexed record at or before `gseq`: (`gseq`, offset).
    fn index_before(&self, gseq: u64) -> (u64, u64) {
        let i = self.index.partition_point(|&(g, _)| g <= gseq);
        match i {
            0 => (self.first_gseq, self.data_start),
            i => self.index[i - 1],
        }
    }
}

/// The durable record store of one application on a backup. See the crate
/// documentation.
pub struct SegmentLog {
    dir: PathBuf,
    options: SegmentOptions,
    /// In `gseq` order; never empty; the last one is being written.
    segments: Vec<Segment>,
    /// The last segment, open for appending.
    active: File,
    /// Appended to the last segment, not yet written out.
    pending: Vec<u8>,
    /// `gseq` the next appended record must carry.
    next_gseq: u64,
    /// Every record below this `gseq` is durable.
    durable_next: u64,
    /// A segment was created since the directory was last synced.
    dir_dirty: bool,
    /// A write or sync failed: refuse everything but `reset`.
    failed: bool,
    /// The latest appended batches, kept in memory: the readers that follow
    /// the log closely (record streams, the live replica) take them from
    /// here instead of reading back from the files what was just written.
    recent: Recent,
}

/// The latest batches appended, oldest first, contiguous in `gseq`, at most
/// [`RECENT_BYTES`] in all (the newest is kept whatever its size).
#[derive(Default)]
struct Recent {
    batches: std::collections::VecDeque<RecentBatch>,
    bytes: usize,
}

struct RecentBatch {
    first_gseq: u64,
    /// One past the last record's gseq.
    end_gseq: u64,
    /// Whole sealed, padded records.
    bytes: Vec<u8>,
}

/// How much of the log's latest records [`SegmentLog`] keeps in memory.
pub const RECENT_BYTES: usize = 8 << 20;

impl Recent {
    fn push(&mut self, first_gseq: u64, end_gseq: u64, bytes: &[u8]) {
        if self
            .batches
            .back()
            .is_some_and(|b| b.end_gseq != first_gseq)
        {
            self.clear();
        }
        self.bytes += bytes.len();
        self.batches.push_back(RecentBatch {
            first_gseq,
            end_gseq,
            bytes: bytes.to_vec(),
        });
        while self.bytes > RECENT_BYTES && self.batches.len() > 1 {
            let old = self.batches.pop_front().expect("more than one batch");
            self.bytes -= old.bytes.len();
        }
    }

    fn clear(&mut self) {
        self.batches.clear();
        self.bytes = 0;
    }

    /// The records from `gseq` on, as whole records, about `max_bytes` of
    /// them (at least one), and the last one's gseq; `None` when `gseq` is
    /// not among the batches kept.
    fn read(&self, gseq: u64, max_bytes: usize) -> Option<(Vec<u8>, u64)> {
        let i = self
            .batches
            .iter()
            .position(|b| b.first_gseq <= gseq && gseq < b.end_gseq)?;
        let mut out = Vec::new();
        let mut last = gseq;
        for b in self.batches.iter().skip(i) {
            let mut at = 0;
            let mut g = b.first_gseq;
            // Skip the batch's records before `gseq` (lengths only).
            while g < gseq {
                at += ferry_proto::padded(read_header(&b.bytes[at..]).ok()?.len as usize);
                g += 1;
            }
            out.extend_from_slice(&b.bytes[at..]);
            last = b.end_gseq - 1;
            if out.len() >= max_bytes {
                break;
            }
        }
        Some((out, last))
    }
}

impl std::fmt::Debug for SegmentLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentLog")
            .field("dir", &self.dir)
            .field("first_gseq", &self.first_gseq())
            .field("next_gseq", &self.next_gseq)
            .field("durable_next", &self.durable_next)
            .field("segments", &self.segments.len())
            .field("pending", &self.pending.len())
            .field("failed", &self.failed)
            .finish()
    }
}

impl SegmentLog {
    /// Open the log in `dir` (created if missing; an empty directory gets
    /// an empty log starting at `gseq` 0), check every segment and record,
    /// cut a torn tail, and make what is on disk durable.
    pub fn open(
        dir: impl AsRef<Path>,
        options: SegmentOptions,
    ) -> Result<(SegmentLog, Recovery), LogError> {
        let dir = dir.as_ref();
        SegmentLog::open_inner(dir, options).inspect_err(|e| {
            tracing::error!(dir = %dir.display(), error = %e, "cannot open the segment log");
        })
    }

    fn open_inner(dir: &Path, options: SegmentOptions) -> Result<(SegmentLog, Recovery), LogError> {
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(io_err(dir, "create directory"))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let mut recovery = Recovery {
            segments: 0,
            records: 0,
            torn_tail: None,
            finished_reset: None,
            created: false,
        };
        let (mut names, resets) = list_dir(dir)?;
        if !resets.is_empty() {
            recovery.finished_reset = finish_resets(dir, &names, &resets, options.app_id)?;
            names = list_dir(dir)?.0;
        }
        if names.is_empty() {
            let (file, path) = create_segment(dir, 0, options.app_id)?;
            file.sync_all().map_err(io_err(&path, "fsync"))?;
            sync_dir(dir)?;
            names.push((0, path));
            recovery.created = true;
        }

        let mut segments: Vec<Segment> = Vec::with_capacity(names.len());
        let count = names.len();
        for (i, (name_gseq, path)) in names.into_iter().enumerate() {
            let last = i + 1 == count;
            if let Some(prev) = segments.last() {
                if name_gseq != prev.end_gseq {
                    return Err(LogError::Sequence {
                        path,
                        offset: format::FIRST_GSEQ_OFFSET,
                        expected: prev.end_gseq,
                        found: name_gseq,
                    });
                }
            }
            let file = File::open(&path).map_err(io_err(&path, "open"))?;
            let mut scan = scan_segment(&path, &file, name_gseq, options.app_id)?;
            if let Some(fault) = scan.fault {
                let (offset, search_from) = match fault {
                    Fault::Header(_) => (0, SEGMENT_HEADER_LEN as u64),
                    Fault::Record { offset, .. } => (offset, offset + 8),
                };
                let damage = if !last {
                    Some(Damage::LaterSegments)
                } else {
                    find_valid_record(&file, search_from, scan.file_len)
                        .map_err(io_err(&path, "read"))?
                        .map(|at| Damage::ValidDataFollows { at })
                };
                if let Some(damage) = damage {
                    return Err(match fault {
                        Fault::Header(why) => LogError::BadHeader {
                            path,
                            offset: 0,
                            why,
                            damage: Some(damage),
                        },
                        Fault::Record {
                            offset,
                            index,
                            fault,
                        } => LogError::Corrupt {
                            path,
                            offset,
                            index,
                            gseq: scan.next_gseq,
                            fault,
                            damage,
                        },
                    });
                }
                let reason = match fault {
                    Fault::Header(why) => why.to_string(),
                    Fault::Record { index, fault, .. } => format!("record #{index}: {fault}"),
                };
                cut_tail(&path, fault, offset, name_gseq, options.app_id)?;
                if let Fault::Header(_) = fault {
                    scan.data_start = SEGMENT_HEADER_LEN as u64;
                    scan.good_end = SEGMENT_HEADER_LEN as u64;
                }
                let first = segments.first().map_or(name_gseq, |s| s.first_gseq);
                let torn = TornTail {
                    path: path.clone(),
                    offset,
                    bytes_cut: scan.file_len - offset,
                    last_good_gseq: (scan.next_gseq > first).then(|| scan.next_gseq - 1),
                    reason,
                };
                tracing::warn!(
                    path = %torn.path.display(),
                    offset = torn.offset,
                    bytes_cut = torn.bytes_cut,
                    last_good_gseq = ?torn.last_good_gseq,
                    reason = %torn.reason,
                    "cut a torn tail"
                );
                recovery.torn_tail = Some(torn);
            }
            segments.push(Segment {
                path,
                first_gseq: name_gseq,
                end_gseq: scan.next_gseq,
                data_start: scan.data_start,
                len: scan.good_end,
                index: scan.index,
            });
        }

        let last = segments.last().expect("at least one segment");
        let active = open_append(&last.path)?;
        // What the files hold may still sit in the page cache, written by a
        // process that died before its sync: make it durable before it is
        // reported so. Earlier segments were synced before the next one was
        // created.
        active
            .sync_data()
            .map_err(io_err(&last.path, "fdatasync"))?;
        sync_dir(dir)?;
        let next_gseq = last.end_gseq;
        recovery.segments = segments.len();
        recovery.records = next_gseq - segments[0].first_gseq;
        let log = SegmentLog {
            dir: dir.to_path_buf(),
            options,
            segments,
            active,
            pending: Vec::new(),
            recent: Recent::default(),
            next_gseq,
            durable_next: next_gseq,
            dir_dirty: false,
            failed: false,
        };
        tracing::debug!(
            dir = %dir.display(),
            first_gseq = log.first_gseq(),
            next_gseq,
            segments = recovery.segments,
            "segment log open"
        );
        Ok((log, recovery))
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `gseq` of the first record the log holds, or of the first record it
    /// will hold when it is empty.
    pub fn first_gseq(&self) -> u64 {
        self.segments[0].first_gseq
    }

    /// `gseq` the next appended record must carry.
    pub fn next_gseq(&self) -> u64 {
        self.next_gseq
    }

    /// `gseq` of the last record appended, if the log holds any.
    pub fn last_gseq(&self) -> Option<u64> {
        (self.next_gseq > self.first_gseq()).then(|| self.next_gseq - 1)
    }

    /// `gseq` of the last durable record: every record up to it is on disk
    /// and survives a crash of this host. `None` when no record is.
    pub fn durable_gseq(&self) -> Option<u64> {
        (self.durable_next > self.first_gseq()).then(|| self.durable_next - 1)
    }

    /// Segments in the log.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Each segment's records and size: `(first gseq, gseq after its
    /// last, bytes)`, in `gseq` order.
    pub fn segment_ranges(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.segments
            .iter()
            .map(|s| (s.first_gseq, s.end_gseq, s.len))
    }

    /// Paths of the segment files, in `gseq` order.
    pub fn segment_paths(&self) -> impl Iterator<Item = &Path> {
        self.segments.iter().map(|s| s.path.as_path())
    }

    fn usable(&self) -> Result<(), LogError> {
        if self.failed {
            return Err(LogError::Failed {
                dir: self.dir.clone(),
            });
        }
        Ok(())
    }

    /// After an I/O error in a write or a sync, what the files hold is no
    /// longer known (a failed `fdatasync` may have dropped dirty pages):
    /// refuse further writes.
    fn poison_on_io<T>(&mut self, r: Result<T, LogError>) -> Result<T, LogError> {
        if let Err(e @ LogError::Io { .. }) = &r {
            tracing::error!(dir = %self.dir.display(), error = %e, "segment log write failed; refusing further writes");
            self.failed = true;
        }
        r
    }

    /// Append a batch of whole sealed records (header, payload, zero
    /// padding to 8, each), as they arrive from the primary.
    ///
    /// Every record is checked first (lengths, checksum, padding, and
    /// `gseq` continuing from [`SegmentLog::next_gseq`] by one); if any
    /// fails, nothing of the batch is appended. Records are buffered: they
    /// are durable only after [`SegmentLog::sync`]. A new segment is
    /// started when the current one has reached
    /// [`SegmentOptions::segment_bytes`]; the segment it follows is synced
    /// first, so that only the last segment can ever hold a torn tail.
    pub fn append(&mut self, batch: &[u8]) -> Result<(), LogError> {
        self.usable()?;
        self.check_batch(batch)?;
        let first = self.next_gseq;
        let r = self.append_checked(batch);
        if r.is_ok() && self.next_gseq > first {
            self.recent.push(first, self.next_gseq, batch);
        }
        self.poison_on_io(r)
    }

    /// The latest records from `gseq` on, from memory, in the log encoding
    /// (whole sealed, padded records), about `max_bytes` of them (whole
    /// batches as appended, at least one record), and the last one's gseq.
    /// `None` when they are no longer (or not) in memory: read them with
    /// [`SegmentLog::read_from`].
    pub fn read_recent(&self, gseq: u64, max_bytes: usize) -> Option<(Vec<u8>, u64)> {
        if self.failed || gseq >= self.next_gseq {
            return None;
        }
        self.recent.read(gseq, max_bytes)
    }

    fn check_batch(&self, batch: &[u8]) -> Result<(), LogError> {
        let mut offset = 0;
        let mut expected = self.next_gseq;
        let mut index = 0;
        while offset < batch.len() {
            let (h, total) =
                check_record(&batch[offset..]).map_err(|fault| LogError::BadBatch {
                    dir: self.dir.clone(),
                    offset: offset as u64,
                    index,
                    fault,
                })?;
            if h.gseq != expected {
                return Err(LogError::BatchSequence {
                    dir: self.dir.clone(),
                    offset: offset as u64,
                    index,
                    expected,
                    found: h.gseq,
                });
            }
            expected = expected.saturating_add(1);
            offset += total;
            index += 1;
        }
        Ok(())
    }

    /// Append a batch [`SegmentLog::check_batch`] accepted.
    fn append_checked(&mut self, batch: &[u8]) -> Result<(), LogError> {
        let mut offset = 0;
        while offset < batch.len() {
            let rest = &batch[offset..];
            let h = read_header(rest).expect("checked batch");
            let total = ferry_proto::padded(h.len as usize);
            let seg = self.segments.last().expect("at least one segment");
            if seg.len >= self.options.segment_bytes && seg.end_gseq > seg.first_gseq {
                self.roll(h.gseq)?;
            }
            let seg = self.segments.last_mut().expect("at least one segment");
            seg.note_record(h.gseq, seg.len);
            seg.len += total as u64;
            seg.end_gseq += 1;
            self.next_gseq += 1;
            self.pending.extend_from_slice(&rest[..total]);
            if self.pending.len() >= WRITE_CHUNK {
                self.write_pending()?;
            }
            offset += total;
        }
        Ok(())
    }

    /// Write the buffered appends to the last segment (no sync).
    fn write_pending(&mut self) -> Result<(), LogError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let path = &self.segments.last().expect("at least one segment").path;
        self.active
            .write_all(&self.pending)
            .map_err(io_err(path, "write"))?;
        self.pending.clear();
        Ok(())
    }

    /// Finish the last segment (write and sync it, and the directory if a
    /// segment was created since it was last synced) and start a new one
    /// at `first_gseq`.
    fn roll(&mut self, first_gseq: u64) -> Result<(), LogError> {
        self.write_pending()?;
        let old = self.segments.last().expect("at least one segment");
        self.active
            .sync_data()
            .map_err(io_err(&old.path, "fdatasync"))?;
        if self.dir_dirty {
            sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        self.durable_next = self.next_gseq;
        let (file, path) = create_segment(&self.dir, first_gseq, self.options.app_id)?;
        tracing::debug!(path = %path.display(), first_gseq, "new segment");
        self.active = file;
        self.dir_dirty = true;
        self.segments.push(Segment {
            path,
            first_gseq,
            end_gseq: first_gseq,
            data_start: SEGMENT_HEADER_LEN as u64,
            len: SEGMENT_HEADER_LEN as u64,
            index: Vec::new(),
        });
        Ok(())
    }

    /// Write everything appended, `fdatasync` the segment (and `fsync` the
    /// directory if a segment was created since it was last synced), and
    /// return the durable `gseq` ([`SegmentLog::durable_gseq`]): the caller
    /// acknowledges up to it, and not before this returns.
    pub fn sync(&mut self) -> Result<Option<u64>, LogError> {
        self.usable()?;
        let r = self.sync_inner();
        self.poison_on_io(r)
    }

    fn sync_inner(&mut self) -> Result<Option<u64>, LogError> {
        if self.durable_next != self.next_gseq || self.dir_dirty || !self.pending.is_empty() {
            self.write_pending()?;
            let path = &self.segments.last().expect("at least one segment").path;
            self.active.sync_data().map_err(io_err(path, "fdatasync"))?;
            if self.dir_dirty {
                sync_dir(&self.dir)?;
                self.dir_dirty = false;
            }
            self.durable_next = self.next_gseq;
        }
        Ok(self.durable_gseq())
    }

    /// The records from `gseq` on, in order, across segments, as the log
    /// holds them now (appends still buffered are written out first, not
    /// synced). `gseq` may be [`SegmentLog::next_gseq`] (nothing to read);
    /// below [`SegmentLog::first_gseq`] or above the next it is
    /// [`LogError::NotHeld`].
    pub fn read_from(&mut self, gseq: u64) -> Result<Records, LogError> {
        self.usable()?;
        if gseq < self.first_gseq() || gseq > self.next_gseq {
            return Err(self.not_held(gseq));
        }
        let r = self.write_pending();
        self.poison_on_io(r)?;
        let start = self
            .segments
            .partition_point(|s| s.end_gseq <= gseq)
            .min(self.segments.len() - 1);
        let spans = self.segments[start..]
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (start_gseq, start_offset) = if i == 0 {
                    s.index_before(gseq)
                } else {
                    (s.first_gseq, s.data_start)
                };
                Span {
                    path: s.path.clone(),
                    first_gseq: s.first_gseq,
                    end_gseq: s.end_gseq,
                    start_offset,
                    start_gseq,
                }
            })
            .collect();
        Ok(Records::new(spans, gseq, self.next_gseq))
    }

    fn not_held(&self, gseq: u64) -> LogError {
        LogError::NotHeld {
            dir: self.dir.clone(),
            gseq,
            first: self.first_gseq(),
            next: self.next_gseq,
        }
    }

    /// Remove the segments whose records are all below `gseq` (a checkpoint
    /// covers them), oldest first; never the last segment. Returns how many
    /// were removed.
    ///
    /// A failure here leaves a sound log (one that starts later, or not),
    /// so it does not stop further writes.
    pub fn drop_below(&mut self, gseq: u64) -> Result<usize, LogError> {
        self.usable()?;
        let n = self.segments[..self.segments.len() - 1]
            .iter()
            .take_while(|s| s.end_gseq <= gseq)
            .count();
        // Oldest first: a crash part-way leaves a log that starts later,
        // never one with a hole.
        for removed in 0..n {
            let path = &self.segments[removed].path;
            if let Err(e) = fs::remove_file(path).map_err(io_err(path, "remove")) {
                self.segments.drain(..removed);
                return Err(e);
            }
        }
        self.segments.drain(..n);
        if n > 0 {
            sync_dir(&self.dir)?;
            tracing::debug!(dir = %self.dir.display(), segments = n, first_gseq = self.first_gseq(), "dropped segments below a checkpoint");
        }
        Ok(n)
    }

    /// Remove every record after `gseq` (resynchronisation after a
    /// divergence): later segments are deleted, the segment holding
    /// `gseq + 1` is cut there, and the next append must carry `gseq + 1`.
    /// Nothing to remove is not an error; a `gseq` below
    /// `first_gseq - 1` is [`LogError::NotHeld`] (use
    /// [`SegmentLog::reset`]). Durable when it returns.
    pub fn truncate_after(&mut self, gseq: u64) -> Result<(), LogError> {
        self.usable()?;
        let Some(cut) = gseq.checked_add(1).filter(|&c| c < self.next_gseq) else {
            return Ok(());
        };
        if cut < self.first_gseq() {
            return Err(self.not_held(gseq));
        }
        let r = self.truncate_inner(cut);
        self.poison_on_io(r)
    }

    fn truncate_inner(&mut self, cut: u64) -> Result<(), LogError> {
        self.recent.clear();
        self.write_pending()?;
        let keep = self.segments.partition_point(|s| s.first_gseq <= cut);
        // Newest first, and durably before the cut: a crash part-way leaves
        // a shorter log, never one with a hole.
        while self.segments.len() > keep {
            let path = &self.segments.last().expect("at least one segment").path;
            fs::remove_file(path).map_err(io_err(path, "remove"))?;
            self.segments.pop();
        }
        sync_dir(&self.dir)?;
        self.dir_dirty = false;
        let seg = self.segments.last().expect("at least one segment");
        let offset = locate(seg, cut)?;
        let file = open_append(&seg.path)?;
        file.set_len(offset)
            .map_err(io_err(&seg.path, "truncate"))?;
        file.sync_all().map_err(io_err(&seg.path, "fsync"))?;
        self.active = file;
        let seg = self.segments.last_mut().expect("at least one segment");
        seg.index.retain(|&(g, _)| g < cut);
        seg.end_gseq = cut;
        seg.len = offset;
        self.next_gseq = cut;
        // Earlier segments were synced when the next one was started, and
        // this one was just synced whole.
        self.durable_next = cut;
        tracing::info!(dir = %self.dir.display(), next_gseq = cut, "log truncated");
        Ok(())
    }

    /// Empty the log and start again at `first_gseq` (a backup seeded from
    /// a checkpoint). Durable when it returns; a crash part-way is finished
    /// by the next [`SegmentLog::open`]. Allowed after a failed write.
    pub fn reset(&mut self, first_gseq: u64) -> Result<(), LogError> {
        self.pending.clear();
        self.recent.clear();
        let r = self.reset_inner(first_gseq);
        self.poison_on_io(r)
    }

    fn reset_inner(&mut self, first_gseq: u64) -> Result<(), LogError> {
        // Intents left by an earlier reset that failed part-way.
        for (_, stale) in list_dir(&self.dir)?.1 {
            fs::remove_file(&stale).map_err(io_err(&stale, "remove"))?;
        }
        // The intent: a sound header under a name `open` recognises. Once
        // it is durable, the reset happens whatever crashes.
        let intent = self.dir.join(reset_file_name(first_gseq));
        let header = SegmentHeader::new(first_gseq, self.options.app_id);
        let mut file = File::create(&intent).map_err(io_err(&intent, "create"))?;
        file.write_all(header.as_bytes())
            .map_err(io_err(&intent, "write"))?;
        file.sync_all().map_err(io_err(&intent, "fsync"))?;
        drop(file);
        sync_dir(&self.dir)?;
        let (names, _) = list_dir(&self.dir)?;
        let path = finish_reset(&self.dir, &names, first_gseq, &intent)?;
        self.active = open_append(&path)?;
        self.segments = vec![Segment {
            path,
            first_gseq,
            end_gseq: first_gseq,
            data_start: SEGMENT_HEADER_LEN as u64,
            len: SEGMENT_HEADER_LEN as u64,
            index: Vec::new(),
        }];
        self.next_gseq = first_gseq;
        self.durable_next = first_gseq;
        self.dir_dirty = false;
        self.failed = false;
        tracing::info!(dir = %self.dir.display(), first_gseq, "log reset");
        Ok(())
    }
}

/// The offset of the record `gseq` in `seg`, or the end of the segment for
/// its `end_gseq`.
fn locate(seg: &Segment, gseq: u64) -> Result<u64, LogError> {
    if gseq == seg.end_gseq {
        return Ok(seg.len);
    }
    let (mut g, mut offset) = seg.index_before(gseq);
    let file = File::open(&seg.path).map_err(io_err(&seg.path, "open"))?;
    while g < gseq {
        let mut hb = [0u8; ferry_proto::RECORD_HEADER_LEN];
        let available = seg.len.saturating_sub(offset);
        let n = available.min(hb.len() as u64) as usize;
        file.read_exact_at(&mut hb[..n], offset)
            .map_err(io_err(&seg.path, "read"))?;
        let corrupt = |fault| LogError::Corrupt {
            path: seg.path.clone(),
            offset,
            index: g - seg.first_gseq,
            gseq: g,
            fault,
            damage: Damage::ChangedSinceOpen,
        };
        let h = read_header(&hb[..n]).map_err(corrupt)?;
        let total = format::check_lengths(&h, available).map_err(corrupt)?;
        if h.gseq != g {
            return Err(LogError::Sequence {
                path: seg.path.clone(),
                offset,
                expected: g,
                found: h.gseq,
            });
        }
        offset += total as u64;
        g += 1;
    }
    Ok(offset)
}

/// The segments and reset intents in `dir`, each sorted by `gseq`. Other
/// files are ignored; a name of the segment pattern whose digits do not
/// fit a `gseq`, or that is not a regular file, is an error.
#[allow(clippy::type_complexity)]
fn list_dir(dir: &Path) -> Result<(Vec<(u64, PathBuf)>, Vec<(Option<u64>, PathBuf)>), LogError> {
    let mut segments = Vec::new();
    let mut resets = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir, "read directory"))? {
        let entry = entry.map_err(io_err(dir, "read directory"))?;
        let path = entry.path();
        match classify(&entry.file_name()) {
            Name::Segment(gseq) => {
                let Some(gseq) = gseq else {
                    return Err(LogError::NotASegment {
                        path,
                        offset: 0,
                        why: "the name's digits do not fit a 64-bit gseq",
                    });
                };
                let meta = fs::metadata(&path).map_err(io_err(&path, "stat"))?;
                if !meta.is_file() {
                    return Err(LogError::NotASegment {
                        path,
                        offset: 0,
                        why: "not a regular file",
                    });
                }
                segments.push((gseq, path));
            }
            Name::Reset(gseq) => resets.push((gseq, path)),
            Name::Other => {
                tracing::debug!(path = %path.display(), "not a segment name; ignored");
            }
        }
    }
    segments.sort();
    resets.sort();
    Ok((segments, resets))
}

/// Complete or discard the reset intents `open` found. Returns the `gseq`
/// the log starts at again, if a reset was completed.
fn finish_resets(
    dir: &Path,
    segments: &[(u64, PathBuf)],
    resets: &[(Option<u64>, PathBuf)],
    app_id: u64,
) -> Result<Option<u64>, LogError> {
    let mut finished = None;
    for (gseq, path) in resets {
        let sound = match gseq {
            Some(g) => {
                let bytes = fs::read(path).map_err(io_err(path, "read"))?;
                bytes.len() == SEGMENT_HEADER_LEN
                    && matches!(
                        check_header(path, &bytes, bytes.len() as u64, *g, app_id),
                        Ok(HeaderCheck::Good(_))
                    )
            }
            None => false,
        };
        match (gseq, sound) {
            (Some(g), true) => {
                let names = if finished.is_some() {
                    list_dir(dir)?.0
                } else {
                    segments.to_vec()
                };
                finish_reset(dir, &names, *g, path)?;
                tracing::warn!(dir = %dir.display(), first_gseq = g, "finished an interrupted reset");
                finished = Some(*g);
            }
            _ => {
                // Written part-way: the reset never took effect.
                fs::remove_file(path).map_err(io_err(path, "remove"))?;
                sync_dir(dir)?;
                tracing::warn!(path = %path.display(), "removed an incomplete reset intent");
            }
        }
    }
    Ok(finished)
}

/// The second half of a reset whose intent file is durable: remove every
/// segment, move the intent into place as the only segment, sync the
/// directory. Returns the new segment's path.
fn finish_reset(
    dir: &Path,
    segments: &[(u64, PathBuf)],
    first_gseq: u64,
    intent: &Path,
) -> Result<PathBuf, LogError> {
    for (_, path) in segments {
        fs::remove_file(path).map_err(io_err(path, "remove"))?;
    }
    let path = dir.join(segment_file_name(first_gseq));
    fs::rename(intent, &path).map_err(io_err(intent, "rename"))?;
    sync_dir(dir)?;
    Ok(path)
}

/// Cut the torn tail of the last segment at `offset` (for a torn header:
/// write the header again from the name) and make the cut durable.
fn cut_tail(
    path: &Path,
    fault: Fault,
    offset: u64,
    first_gseq: u64,
    app_id: u64,
) -> Result<(), LogError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path, "open"))?;
    file.set_len(offset).map_err(io_err(path, "truncate"))?;
    if let Fault::Header(_) = fault {
        let header = SegmentHeader::new(first_gseq, app_id);
        file.write_all_at(header.as_bytes(), 0)
            .map_err(io_err(path, "write"))?;
    }
    file.sync_all().map_err(io_err(path, "fsync"))
}

/// Create the segment file for `first_gseq` with its header written (not
/// synced), open for appending.
fn create_segment(dir: &Path, first_gseq: u64, app_id: u64) -> Result<(File, PathBuf), LogError> {
    let path = dir.join(segment_file_name(first_gseq));
    let mut file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err(&path, "create"))?;
    file.write_all(SegmentHeader::new(first_gseq, app_id).as_bytes())
        .map_err(io_err(&path, "write"))?;
    Ok((file, path))
}

fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_err(path, "open"))
}

/// `fsync` a directory, so that files created, renamed or removed in it
/// stay so after a crash.
fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync directory"))
}
