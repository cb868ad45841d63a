//! The bytes of a segment file: its name, its header, and the checks every
//! record passes. `docs/SEGMENTS.md` is the written form of this module.

use crate::error::RecordFault;
use ferry_proto::{padded, RecordHeader, MAX_PAYLOAD, RECORD_HEADER_LEN};
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"FERRYSEG";
/// Major version: a reader refuses any other.
pub const SEGMENT_MAJOR: u16 = 1;
/// Minor version: a newer minor only adds what an older reader may skip.
pub const SEGMENT_MINOR: u16 = 0;
/// Size of [`SegmentHeader`].
pub const SEGMENT_HEADER_LEN: usize = 64;
/// Largest `header_len` a reader accepts (a newer minor's extended header).
pub const SEGMENT_MAX_HEADER_LEN: u32 = 4096;
/// Suffix of segment file names.
pub const SEGMENT_SUFFIX: &str = ".fseg";
/// Suffix of the file that carries an interrupted [`crate::SegmentLog::reset`].
pub const RESET_SUFFIX: &str = ".fseg.reset";
/// Digits of the first `gseq` in a segment file name.
pub const NAME_DIGITS: usize = 20;

/// Offset of [`SegmentHeader::major`].
pub(crate) const MAJOR_OFFSET: u64 = 8;
/// Offset of [`SegmentHeader::header_len`].
pub(crate) const HEADER_LEN_OFFSET: u64 = 12;
/// Offset of [`SegmentHeader::first_gseq`].
pub(crate) const FIRST_GSEQ_OFFSET: u64 = 16;
/// Offset of [`SegmentHeader::app_id`].
pub(crate) const APP_ID_OFFSET: u64 = 24;

/// The largest space one record occupies: header, [`MAX_PAYLOAD`], padding.
pub const MAX_RECORD_LEN: usize = padded(RECORD_HEADER_LEN + MAX_PAYLOAD);

/// The header at offset 0 of a segment file. Little-endian, 64 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SegmentHeader {
    /// [`SEGMENT_MAGIC`].
    pub magic: [u8; 8],
    /// [`SEGMENT_MAJOR`].
    pub major: u16,
    /// [`SEGMENT_MINOR`].
    pub minor: u16,
    /// Bytes from the start of the file to the first record (a newer minor
    /// may extend the header; an older reader skips the extension).
    pub header_len: u32,
    /// `gseq` of the first record of the segment (also in the file name).
    pub first_gseq: u64,
    /// The application the records belong to, as the log's owner names it
    /// (for example a hash of the application name); 0 when not set.
    pub app_id: u64,
    /// Zero; reserved for flags.
    pub flags: u32,
    /// Zero.
    pub reserved: [u8; 24],
    /// CRC-32C of the 64 header bytes with this field zero.
    pub crc: u32,
}

const _: () = assert!(core::mem::size_of::<SegmentHeader>() == SEGMENT_HEADER_LEN);

impl SegmentHeader {
    /// The header this version writes, checksum sealed.
    pub fn new(first_gseq: u64, app_id: u64) -> SegmentHeader {
        let mut h = SegmentHeader {
            magic: SEGMENT_MAGIC,
            major: SEGMENT_MAJOR,
            minor: SEGMENT_MINOR,
            header_len: SEGMENT_HEADER_LEN as u32,
            first_gseq,
            app_id,
            flags: 0,
            reserved: [0; 24],
            crc: 0,
        };
        h.crc = h.compute_crc();
        h
    }

    /// CRC-32C of the 64 fixed bytes with `crc` taken as zero.
    pub fn compute_crc(&self) -> u32 {
        let mut h = *self;
        h.crc = 0;
        crc32c::crc32c(h.as_bytes())
    }
}

/// The file name of the segment whose first record is `first_gseq`.
pub fn segment_file_name(first_gseq: u64) -> String {
    format!("{first_gseq:0NAME_DIGITS$}{SEGMENT_SUFFIX}")
}

/// The file name of a reset intent to start again at `first_gseq`.
pub(crate) fn reset_file_name(first_gseq: u64) -> String {
    format!("{first_gseq:0NAME_DIGITS$}{RESET_SUFFIX}")
}

/// What a directory entry's name says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Name {
    /// A segment; `None` when the digits do not fit a `u64`.
    Segment(Option<u64>),
    /// A reset intent.
    Reset(Option<u64>),
    /// Not ours: ignored.
    Other,
}

/// Classify a directory entry by name: 20 ASCII digits followed by
/// [`SEGMENT_SUFFIX`] or [`RESET_SUFFIX`], nothing else.
pub(crate) fn classify(name: &OsStr) -> Name {
    let Some(name) = name.to_str() else {
        return Name::Other;
    };
    let digits = |rest: &str| {
        let d = name.strip_suffix(rest)?;
        (d.len() == NAME_DIGITS && d.bytes().all(|b| b.is_ascii_digit()))
            .then(|| d.parse::<u64>().ok())
    };
    if let Some(g) = digits(SEGMENT_SUFFIX) {
        Name::Segment(g)
    } else if let Some(g) = digits(RESET_SUFFIX) {
        Name::Reset(g)
    } else {
        Name::Other
    }
}

/// Check the lengths of a record whose header is `h`, with `available`
/// bytes from its start; returns its padded length. Lengths come from the
/// input: they are checked before anything is sliced or allocated.
pub(crate) fn check_lengths(h: &RecordHeader, available: u64) -> Result<usize, RecordFault> {
    if h.payload_len as usize > MAX_PAYLOAD {
        return Err(RecordFault::PayloadTooLong { len: h.payload_len });
    }
    if h.len as u64 != RECORD_HEADER_LEN as u64 + h.payload_len as u64 {
        return Err(RecordFault::BadLength { len: h.len });
    }
    let total = padded(h.len as usize);
    if (total as u64) > available {
        return Err(RecordFault::Truncated {
            needed: total as u64,
            available,
        });
    }
    Ok(total)
}

/// Check the checksum and padding of a record whose lengths passed
/// [`check_lengths`]; `body` is everything after the header, padding
/// included.
pub(crate) fn check_body(h: &RecordHeader, body: &[u8]) -> Result<(), RecordFault> {
    let payload_len = h.payload_len as usize;
    if h.compute_crc(&body[..payload_len]) != h.crc {
        return Err(RecordFault::BadChecksum { gseq: h.gseq });
    }
    if body[payload_len..].iter().any(|&b| b != 0) {
        return Err(RecordFault::BadPadding);
    }
    Ok(())
}

/// Parse the record header at the start of `bytes`, or say how many bytes
/// are missing.
pub(crate) fn read_header(bytes: &[u8]) -> Result<RecordHeader, RecordFault> {
    match RecordHeader::read_from_prefix(bytes) {
        Ok((h, _)) => Ok(h),
        Err(_) => Err(RecordFault::Truncated {
            needed: RECORD_HEADER_LEN as u64,
            available: bytes.len() as u64,
        }),
    }
}

/// Check the whole record at the start of `bytes`: its header and padded
/// length.
pub(crate) fn check_record(bytes: &[u8]) -> Result<(RecordHeader, usize), RecordFault> {
    let h = read_header(bytes)?;
    let total = check_lengths(&h, bytes.len() as u64)?;
    check_body(&h, &bytes[RECORD_HEADER_LEN..total])?;
    Ok((h, total))
}

/// The first offset in `from..end` of `file`, stepping by the record
/// alignment, where a record passing every check starts. Reads in windows,
/// so memory stays bounded whatever the file's size.
pub(crate) fn find_valid_record(file: &File, from: u64, end: u64) -> io::Result<Option<u64>> {
    const STEP: u64 = 4 << 20;
    let mut window = Vec::new();
    let mut start = from;
    while start < end {
        let len = (end - start).min(STEP + MAX_RECORD_LEN as u64) as usize;
        window.resize(len, 0);
        file.read_exact_at(&mut window, start)?;
        let stop = (end - start).min(STEP);
        let mut at = 0;
        while at < stop {
            if check_record(&window[at as usize..]).is_ok() {
                return Ok(Some(start + at));
            }
            at += ferry_proto::RECORD_ALIGN as u64;
        }
        start += STEP;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        let h = SegmentHeader::new(0x0102_0304_0506_0708, 0xaabb);
        let b = h.as_bytes();
        assert_eq!(&b[0..8], b"FERRYSEG");
        assert_eq!(&b[8..10], &SEGMENT_MAJOR.to_le_bytes());
        assert_eq!(&b[10..12], &SEGMENT_MINOR.to_le_bytes());
        assert_eq!(&b[12..16], &64u32.to_le_bytes());
        assert_eq!(&b[16..24], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&b[24..32], &0xaabbu64.to_le_bytes());
        assert_eq!(&b[32..60], &[0; 28]);
        assert_eq!(&b[60..64], &h.compute_crc().to_le_bytes());
        let mut zeroed = b.to_vec();
        zeroed[60..].fill(0);
        assert_eq!(h.crc, crc32c::crc32c(&zeroed));
    }

    #[test]
    fn names() {
        assert_eq!(segment_file_name(42), "00000000000000000042.fseg");
        assert_eq!(
            classify(OsStr::new("00000000000000000042.fseg")),
            Name::Segment(Some(42))
        );
        assert_eq!(
            classify(OsStr::new(&segment_file_name(u64::MAX))),
            Name::Segment(Some(u64::MAX))
        );
        assert_eq!(
            classify(OsStr::new("99999999999999999999.fseg")),
            Name::Segment(None)
        );
        assert_eq!(
            classify(OsStr::new(&reset_file_name(7))),
            Name::Reset(Some(7))
        );
        for other in [
            "42.fseg",
            "0000000000000000004x.fseg",
            "000000000000000000042.fseg",
            "00000000000000000042.fseg.tmp",
            "+0000000000000000042.fseg",
            "notes.txt",
            "00000000000000000042.FSEG",
        ] {
            assert_eq!(classify(OsStr::new(other)), Name::Other, "{other}");
        }
    }
}
