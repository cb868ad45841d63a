//! Checking one segment file from its first byte to its last, as
//! [`crate::SegmentLog::open`] does.

use crate::error::{io_err, LogError, RecordFault};
use crate::format::{
    check_body, check_lengths, SegmentHeader, APP_ID_OFFSET, FIRST_GSEQ_OFFSET, HEADER_LEN_OFFSET,
    MAJOR_OFFSET, SEGMENT_HEADER_LEN, SEGMENT_MAGIC, SEGMENT_MAJOR, SEGMENT_MAX_HEADER_LEN,
};
use ferry_proto::{RecordHeader, RECORD_HEADER_LEN};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use zerocopy::FromBytes;

/// Records are indexed (`gseq`, offset) at least this many bytes apart, so
/// that a read or a truncation finds a record without reading the segment
/// from its start.
pub(crate) const INDEX_STRIDE: u64 = 1 << 20;

/// What a segment header check found, short of an error.
pub(crate) enum HeaderCheck {
    /// A sound header.
    Good(SegmentHeader),
    /// A header that may be a torn write: incomplete, zeros, or failing its
    /// checksum. Cut if the file is the last segment and nothing valid
    /// follows; an error otherwise.
    Torn(&'static str),
}

/// Check the segment header at the start of `head` (the file's first 64
/// bytes, or all of it if it is shorter), for a file of `file_len` bytes
/// named for `name_gseq`. `app_id` 0 accepts any application.
pub(crate) fn check_header(
    path: &Path,
    head: &[u8],
    file_len: u64,
    name_gseq: u64,
    app_id: u64,
) -> Result<HeaderCheck, LogError> {
    let magic = &head[..head.len().min(SEGMENT_MAGIC.len())];
    let zero_magic = magic.iter().all(|&b| b == 0);
    if !SEGMENT_MAGIC.starts_with(magic) && !zero_magic {
        return Err(LogError::NotASegment {
            path: path.to_path_buf(),
            offset: 0,
            why: "bad magic",
        });
    }
    let Ok((h, _)) = SegmentHeader::read_from_prefix(head) else {
        return Ok(HeaderCheck::Torn("the file ends inside the segment header"));
    };
    if zero_magic {
        return Ok(HeaderCheck::Torn("the segment header is zeros"));
    }
    // The version comes before the checksum: a segment of another major
    // version is named as such, whatever its header looks like.
    if h.major != SEGMENT_MAJOR {
        return Err(LogError::UnsupportedVersion {
            path: path.to_path_buf(),
            offset: MAJOR_OFFSET,
            major: h.major,
            minor: h.minor,
        });
    }
    if h.compute_crc() != h.crc {
        return Ok(HeaderCheck::Torn("segment header checksum mismatch"));
    }
    if (h.header_len as usize) < SEGMENT_HEADER_LEN || h.header_len > SEGMENT_MAX_HEADER_LEN {
        return Err(LogError::BadHeaderLength {
            path: path.to_path_buf(),
            offset: HEADER_LEN_OFFSET,
            len: h.header_len,
        });
    }
    if h.header_len as u64 > file_len {
        return Ok(HeaderCheck::Torn(
            "the file ends inside the segment header extension",
        ));
    }
    if h.first_gseq != name_gseq {
        return Err(LogError::NameMismatch {
            path: path.to_path_buf(),
            offset: FIRST_GSEQ_OFFSET,
            name_gseq,
            header_gseq: h.first_gseq,
        });
    }
    if app_id != 0 && h.app_id != app_id {
        return Err(LogError::WrongApplication {
            path: path.to_path_buf(),
            offset: APP_ID_OFFSET,
            expected: app_id,
            found: h.app_id,
        });
    }
    Ok(HeaderCheck::Good(h))
}

/// The first thing wrong in a segment that might be a torn tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The header (see [`HeaderCheck::Torn`]).
    Header(&'static str),
    /// A record failing its checks.
    Record {
        /// Start of the record.
        offset: u64,
        /// Its position in the segment.
        index: u64,
        /// What is wrong.
        fault: RecordFault,
    },
}

/// What [`scan_segment`] found.
pub(crate) struct Scan {
    /// Offset of the first record (`header_len`); 0 when the header is torn.
    pub data_start: u64,
    /// Offset just after the last sound record.
    pub good_end: u64,
    /// The `gseq` after the last sound record.
    pub next_gseq: u64,
    /// Sparse (`gseq`, offset) index of the sound records.
    pub index: Vec<(u64, u64)>,
    /// The first fault, after which nothing was read.
    pub fault: Option<Fault>,
    /// The file's length.
    pub file_len: u64,
}

/// Read and check a whole segment: its header, then every record (lengths,
/// checksum, zero padding, `gseq` following from `name_gseq`). A fault that
/// could be a torn tail stops the scan and is returned in [`Scan::fault`]
/// for the caller to judge; anything else is an error.
pub(crate) fn scan_segment(
    path: &Path,
    file: &File,
    name_gseq: u64,
    app_id: u64,
) -> Result<Scan, LogError> {
    let file_len = file.metadata().map_err(io_err(path, "stat"))?.len();
    let mut head = [0u8; SEGMENT_HEADER_LEN];
    let head_len = file_len.min(SEGMENT_HEADER_LEN as u64) as usize;
    file.read_exact_at(&mut head[..head_len], 0)
        .map_err(io_err(path, "read"))?;
    let header = match check_header(path, &head[..head_len], file_len, name_gseq, app_id)? {
        HeaderCheck::Good(h) => h,
        HeaderCheck::Torn(why) => {
            return Ok(Scan {
                data_start: 0,
                good_end: 0,
                next_gseq: name_gseq,
                index: Vec::new(),
                fault: Some(Fault::Header(why)),
                file_len,
            })
        }
    };
    let data_start = header.header_len as u64;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    reader
        .seek(SeekFrom::Start(data_start))
        .map_err(io_err(path, "seek"))?;
    let mut scan = Scan {
        data_start,
        good_end: data_start,
        next_gseq: name_gseq,
        index: Vec::new(),
        fault: None,
        file_len,
    };
    let mut body = Vec::new();
    let mut count = 0u64;
    let mut last_indexed: Option<u64> = None;
    while scan.good_end < file_len {
        let offset = scan.good_end;
        let available = file_len - offset;
        let record_fault = |fault| {
            Some(Fault::Record {
                offset,
                index: count,
                fault,
            })
        };
        if available < RECORD_HEADER_LEN as u64 {
            scan.fault = record_fault(RecordFault::Truncated {
                needed: RECORD_HEADER_LEN as u64,
                available,
            });
            break;
        }
        let mut hb = [0u8; RECORD_HEADER_LEN];
        reader.read_exact(&mut hb).map_err(io_err(path, "read"))?;
        let h = RecordHeader::read_from_bytes(&hb).expect("64 bytes make a record header");
        let total = match check_lengths(&h, available) {
            Ok(total) => total,
            Err(fault) => {
                scan.fault = record_fault(fault);
                break;
            }
        };
        body.resize(total - RECORD_HEADER_LEN, 0);
        reader.read_exact(&mut body).map_err(io_err(path, "read"))?;
        if let Err(fault) = check_body(&h, &body) {
            scan.fault = record_fault(fault);
            break;
        }
        if h.gseq != scan.next_gseq {
            return Err(LogError::Sequence {
                path: path.to_path_buf(),
                offset,
                expected: scan.next_gseq,
                found: h.gseq,
            });
        }
        if last_indexed.is_none_or(|at| offset - at >= INDEX_STRIDE) {
            scan.index.push((h.gseq, offset));
            last_indexed = Some(offset);
        }
        scan.good_end = offset + total as u64;
        scan.next_gseq = scan.next_gseq.saturating_add(1);
        count += 1;
    }
    Ok(scan)
}
