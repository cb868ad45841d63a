//! Reading records back from the segments: [`Records`].

use crate::error::{io_err, Damage, LogError, RecordFault};
use crate::format::{check_body, check_lengths};
use ferry_proto::{padded, RecordHeader, RECORD_HEADER_LEN};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::iter::FusedIterator;
use std::path::PathBuf;
use zerocopy::{FromBytes, IntoBytes};

/// One record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    /// The record header (checksum verified).
    pub header: RecordHeader,
    /// The payload, `header.payload_len` bytes, without padding.
    pub payload: Vec<u8>,
}

impl OwnedRecord {
    /// The record's `gseq`.
    pub fn gseq(&self) -> u64 {
        self.header.gseq
    }

    /// Append the record as it is stored (header, payload, zero padding) to
    /// `out`: the bytes [`crate::SegmentLog::append`] takes, and a ring
    /// holds.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.header.as_bytes());
        out.extend_from_slice(&self.payload);
        let pad = padded(self.header.len as usize) - self.header.len as usize;
        out.resize(out.len() + pad, 0);
    }

    /// The record as it is stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(padded(self.header.len as usize));
        self.write_to(&mut v);
        v
    }
}

/// The part of one segment a [`Records`] reads.
#[derive(Debug, Clone)]
pub(crate) struct Span {
    pub path: PathBuf,
    /// `gseq` of the segment's first record.
    pub first_gseq: u64,
    /// `gseq` after the last record to read from this segment.
    pub end_gseq: u64,
    /// Where to start reading: a record boundary.
    pub start_offset: u64,
    /// `gseq` of the record at `start_offset`.
    pub start_gseq: u64,
}

/// The segment being read.
struct Cursor {
    reader: BufReader<File>,
    span: Span,
    file_len: u64,
    /// Offset of the next record.
    offset: u64,
    /// `gseq` of the next record.
    gseq: u64,
}

/// The records of a [`crate::SegmentLog`] from a `gseq` on, in order, across
/// segments: from [`crate::SegmentLog::read_from`].
///
/// It reads what the log held when it was made (later appends are not
/// seen) and checks every record it yields again (lengths, checksum,
/// padding, `gseq`). It stops after the first error. It does not borrow the
/// log; a segment removed or cut under it is an error.
pub struct Records {
    spans: VecDeque<Span>,
    cursor: Option<Cursor>,
    /// `gseq` of the next record to yield.
    next: u64,
    /// `gseq` after the last record to yield.
    end: u64,
    body: Vec<u8>,
    done: bool,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("next", &self.next)
            .field("end", &self.end)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Records {
    pub(crate) fn new(spans: Vec<Span>, next: u64, end: u64) -> Records {
        Records {
            spans: spans.into(),
            cursor: None,
            next,
            end,
            body: Vec::new(),
            done: next >= end,
        }
    }

    /// `gseq` of the next record the iterator yields, if any.
    pub fn next_gseq(&self) -> u64 {
        self.next
    }

    fn open(span: Span) -> Result<Cursor, LogError> {
        let file = File::open(&span.path).map_err(io_err(&span.path, "open"))?;
        let file_len = file.metadata().map_err(io_err(&span.path, "stat"))?.len();
        let mut reader = BufReader::with_capacity(1 << 20, file);
        reader
            .seek(SeekFrom::Start(span.start_offset))
            .map_err(io_err(&span.path, "seek"))?;
        Ok(Cursor {
            reader,
            file_len,
            offset: span.start_offset,
            gseq: span.start_gseq,
            span,
        })
    }

    /// Read the next record of the log, skipping those before `self.next`.
    fn read_next(&mut self) -> Result<Option<OwnedRecord>, LogError> {
        loop {
            if self.next >= self.end {
                return Ok(None);
            }
            let cursor = match &mut self.cursor {
                Some(c) if c.gseq < c.span.end_gseq => c,
                _ => {
                    let Some(span) = self.spans.pop_front() else {
                        return Ok(None);
                    };
                    self.cursor.insert(Records::open(span)?)
                }
            };
            let offset = cursor.offset;
            let path = &cursor.span.path;
            let (index, gseq) = (cursor.gseq - cursor.span.first_gseq, cursor.gseq);
            let corrupt = |fault| LogError::Corrupt {
                path: path.clone(),
                offset,
                index,
                gseq,
                fault,
                damage: Damage::ChangedSinceOpen,
            };
            let available = cursor.file_len.saturating_sub(offset);
            if available < RECORD_HEADER_LEN as u64 {
                return Err(corrupt(RecordFault::Truncated {
                    needed: RECORD_HEADER_LEN as u64,
                    available,
                }));
            }
            let mut hb = [0u8; RECORD_HEADER_LEN];
            cursor
                .reader
                .read_exact(&mut hb)
                .map_err(io_err(path, "read"))?;
            let h = RecordHeader::read_from_bytes(&hb).expect("64 bytes make a record header");
            let total = check_lengths(&h, available).map_err(corrupt)?;
            let body_len = total - RECORD_HEADER_LEN;
            if h.gseq < self.next && h.gseq == cursor.gseq {
                // Before the first record asked for: lengths only.
                cursor
                    .reader
                    .seek_relative(body_len as i64)
                    .map_err(io_err(path, "seek"))?;
            } else {
                self.body.resize(body_len, 0);
                cursor
                    .reader
                    .read_exact(&mut self.body)
                    .map_err(io_err(path, "read"))?;
                check_body(&h, &self.body).map_err(corrupt)?;
            }
            if h.gseq != cursor.gseq {
                return Err(LogError::Sequence {
                    path: path.clone(),
                    offset,
                    expected: cursor.gseq,
                    found: h.gseq,
                });
            }
            cursor.offset += total as u64;
            cursor.gseq += 1;
            if h.gseq < self.next {
                continue;
            }
            self.next += 1;
            let payload = self.body[..h.payload_len as usize].to_vec();
            return Ok(Some(OwnedRecord { header: h, payload }));
        }
    }
}

impl Iterator for Records {
    type Item = Result<OwnedRecord, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.read_next().transpose();
        if !matches!(r, Some(Ok(_))) {
            self.done = true;
            self.cursor = None;
        }
        if let Some(Err(e)) = &r {
            tracing::error!(error = %e, "reading the segment log");
        }
        r
    }
}

impl FusedIterator for Records {}
