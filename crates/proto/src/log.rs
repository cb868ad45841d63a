//! The log file: a [`LogHeader`] followed by records in `gseq` order.
//!
//! `docs/LOG-FORMAT.md` is the written form of this module. Reading
//! ([`LogHeader::parse`], [`LogReader`]) works without `std` and never
//! allocates; writing (`LogWriter`), the start-record codec (`StartInfo`)
//! and `validate` need the crate feature `std`.

use crate::{padded, Kind, RecordHeader, FLAG_OPTIONAL, MAX_PAYLOAD, RECORD_HEADER_LEN};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// First bytes of every log file.
pub const LOG_MAGIC: [u8; 8] = *b"FERRYLOG";
/// Major version: a reader refuses any other.
pub const LOG_MAJOR: u16 = 1;
/// Minor version: a newer minor only adds what an older reader may skip.
pub const LOG_MINOR: u16 = 0;
/// Size of [`LogHeader`].
pub const LOG_HEADER_LEN: usize = 64;

/// Offset of [`LogHeader::major`] in the file (where a version error points).
const MAJOR_OFFSET: u64 = 8;
/// Offset of [`LogHeader::header_len`] in the file.
const HEADER_LEN_OFFSET: u64 = 12;

/// The header at offset 0 of a log file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct LogHeader {
    /// [`LOG_MAGIC`].
    pub magic: [u8; 8],
    /// [`LOG_MAJOR`].
    pub major: u16,
    /// [`LOG_MINOR`].
    pub minor: u16,
    /// Bytes from the start of the file to the first record (a newer minor
    /// may extend the header; an older reader skips the extension).
    pub header_len: u32,
    /// Zero; reserved for flags.
    pub flags: u32,
    /// Zero.
    pub reserved0: u32,
    /// Wall-clock time the recording started, ns since the Unix epoch.
    pub created_ns: u64,
    /// Zero.
    pub reserved: [u8; 28],
    /// CRC-32C of the header with this field zero.
    pub crc: u32,
}

const _: () = assert!(core::mem::size_of::<LogHeader>() == LOG_HEADER_LEN);

impl LogHeader {
    /// The header this version writes: [`LOG_MAJOR`].[`LOG_MINOR`], no
    /// extension, checksum sealed.
    pub fn new(created_ns: u64) -> LogHeader {
        let mut h = LogHeader {
            magic: LOG_MAGIC,
            major: LOG_MAJOR,
            minor: LOG_MINOR,
            header_len: LOG_HEADER_LEN as u32,
            flags: 0,
            reserved0: 0,
            created_ns,
            reserved: [0; 28],
            crc: 0,
        };
        h.seal();
        h
    }

    /// CRC-32C of the 64 fixed header bytes with `crc` taken as zero. An
    /// extension a newer minor adds after them is not covered.
    pub fn compute_crc(&self) -> u32 {
        let mut h = *self;
        h.crc = 0;
        crc32c::crc32c(h.as_bytes())
    }

    /// Set `crc` for the current fields.
    pub fn seal(&mut self) {
        self.crc = self.compute_crc();
    }

    /// Parse and check the header at the start of `bytes` (the file, or at
    /// least its first [`LOG_HEADER_LEN`] bytes).
    ///
    /// Checks, in this order: the magic, the major version (a newer minor is
    /// accepted), the checksum, and that `header_len` covers at least the
    /// fixed header. Whether the file holds `header_len` bytes is left to
    /// the caller ([`LogReader::new`] checks it).
    pub fn parse(bytes: &[u8]) -> Result<LogHeader, LogError> {
        let available = bytes.len() as u64;
        let truncated = |needed: usize| LogError::Truncated {
            offset: 0,
            needed: needed as u64,
            available,
        };
        let head = &bytes[..bytes.len().min(LOG_MAGIC.len())];
        if !LOG_MAGIC.starts_with(head) {
            return Err(LogError::BadMagic { offset: 0 });
        }
        if head.len() < LOG_MAGIC.len() {
            return Err(truncated(LOG_HEADER_LEN));
        }
        // The version comes before the checksum: a file of another major
        // version is named as such, whatever its header looks like.
        if bytes.len() < 12 {
            return Err(truncated(LOG_HEADER_LEN));
        }
        let major = u16::from_le_bytes([bytes[8], bytes[9]]);
        let minor = u16::from_le_bytes([bytes[10], bytes[11]]);
        if major != LOG_MAJOR {
            return Err(LogError::UnsupportedVersion {
                offset: MAJOR_OFFSET,
                major,
                minor,
            });
        }
        let Ok((header, _)) = LogHeader::read_from_prefix(bytes) else {
            return Err(truncated(LOG_HEADER_LEN));
        };
        if header.compute_crc() != header.crc {
            return Err(LogError::BadHeaderChecksum { offset: 0 });
        }
        if (header.header_len as usize) < LOG_HEADER_LEN {
            return Err(LogError::BadHeaderLength {
                offset: HEADER_LEN_OFFSET,
                len: header.header_len,
            });
        }
        Ok(header)
    }
}

/// What is wrong with a log file, and where. Every variant carries the byte
/// offset of the problem (the start of the record for record errors); the
/// `Display` form is one line starting with `offset N: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The file does not start with [`LOG_MAGIC`].
    #[error("offset {offset}: not a Ferry log (bad magic)")]
    BadMagic {
        /// Always 0.
        offset: u64,
    },
    /// The file's major version is not [`LOG_MAJOR`].
    #[error("offset {offset}: log format version {major}.{minor} is not supported (this reader reads version {LOG_MAJOR}.x)")]
    UnsupportedVersion {
        /// Offset of the version field.
        offset: u64,
        /// The file's major version.
        major: u16,
        /// The file's minor version.
        minor: u16,
    },
    /// The file header's checksum does not match.
    #[error("offset {offset}: log header checksum mismatch")]
    BadHeaderChecksum {
        /// Always 0.
        offset: u64,
    },
    /// The file header's `header_len` is shorter than the fixed header.
    #[error("offset {offset}: log header length {len} is shorter than {LOG_HEADER_LEN} bytes")]
    BadHeaderLength {
        /// Offset of the `header_len` field.
        offset: u64,
        /// The `header_len` read.
        len: u32,
    },
    /// The file ends inside the header or inside a record (a torn tail).
    #[error("offset {offset}: truncated: {needed} bytes needed, {available} left")]
    Truncated {
        /// Start of the header or record that is cut short.
        offset: u64,
        /// Bytes that header or record needs.
        needed: u64,
        /// Bytes left in the file from `offset`.
        available: u64,
    },
    /// A record's `len` is shorter than its header or is not header plus
    /// `payload_len`.
    #[error(
        "offset {offset}: record length {len} is not {RECORD_HEADER_LEN} plus its payload length"
    )]
    BadLength {
        /// Start of the record.
        offset: u64,
        /// The record's `len`.
        len: u32,
    },
    /// A record's `payload_len` exceeds [`MAX_PAYLOAD`].
    #[error(
        "offset {offset}: record payload length {len} exceeds the maximum of {MAX_PAYLOAD} bytes"
    )]
    PayloadTooLong {
        /// Start of the record.
        offset: u64,
        /// The record's `payload_len`.
        len: u32,
    },
    /// A record's checksum does not match its header and payload.
    #[error("offset {offset}: record #{index} has non-zero padding")]
    /// The bytes between a record's end and the next 8-byte boundary are
    /// not zero (writers zero them, so a damaged byte there is caught too).
    BadPadding {
        /// Offset of the record.
        offset: u64,
        /// Its number.
        index: u64,
    },
    #[error("offset {offset}: record #{index} (gseq {gseq}) checksum mismatch")]
    BadChecksum {
        /// Start of the record.
        offset: u64,
        /// Position of the record in the file, from 0.
        index: u64,
        /// The `gseq` read (it may be the damaged field).
        gseq: u64,
    },
    /// A record of a kind this version does not know and that is not
    /// marked [`FLAG_OPTIONAL`].
    #[error("offset {offset}: record kind {kind} is unknown to this reader and not optional")]
    UnknownKind {
        /// Start of the record.
        offset: u64,
        /// The kind code read.
        kind: u16,
    },
    /// A record's `gseq` is not greater than the previous record's.
    #[error(
        "offset {offset}: record #{index} has gseq {gseq}, not after the previous gseq {previous}"
    )]
    OutOfOrder {
        /// Start of the record.
        offset: u64,
        /// Position of the record in the file, from 0.
        index: u64,
        /// Its `gseq`.
        gseq: u64,
        /// The previous record's `gseq`.
        previous: u64,
    },
    /// The log does not start with one start record of `gseq` 0, has a
    /// second one, or its start record's payload does not decode.
    #[error("offset {offset}: bad start record: {why}")]
    BadStart {
        /// Start of the offending record (or of the first record's place).
        offset: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// Bytes follow the end record.
    #[error("offset {offset}: data after the end record")]
    AfterEnd {
        /// Where the data after the end record starts.
        offset: u64,
    },
}

impl LogError {
    /// The byte offset the error points at.
    pub fn offset(&self) -> u64 {
        match *self {
            LogError::BadMagic { offset }
            | LogError::UnsupportedVersion { offset, .. }
            | LogError::BadHeaderChecksum { offset }
            | LogError::BadHeaderLength { offset, .. }
            | LogError::Truncated { offset, .. }
            | LogError::BadLength { offset, .. }
            | LogError::PayloadTooLong { offset, .. }
            | LogError::BadChecksum { offset, .. }
            | LogError::BadPadding { offset, .. }
            | LogError::UnknownKind { offset, .. }
            | LogError::OutOfOrder { offset, .. }
            | LogError::BadStart { offset, .. }
            | LogError::AfterEnd { offset } => offset,
        }
    }
}

/// One record of a log, borrowed from the file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRecord<'a> {
    /// Where the record starts in the file.
    pub offset: u64,
    /// Position of the record in the file, from 0 (optional records a
    /// reader skipped are counted).
    pub index: u64,
    /// The record header (checksum verified).
    pub header: RecordHeader,
    /// The payload, `header.payload_len` bytes, without padding.
    pub payload: &'a [u8],
}

/// Reads the records of a log file held in memory, checking each.
///
/// Yields records of known kinds in file order, skips records of unknown
/// kinds marked [`FLAG_OPTIONAL`], and stops after the first error. The end
/// of the bytes at a record boundary ends the iteration without an error,
/// whether or not an end record was seen.
#[derive(Clone)]
pub struct LogReader<'a> {
    bytes: &'a [u8],
    header: LogHeader,
    pos: usize,
    index: u64,
    previous_gseq: Option<u64>,
    saw_end: bool,
    done: bool,
}

impl<'a> LogReader<'a> {
    /// Parse the file header of `bytes` (the whole file) and position the
    /// reader at the first record.
    pub fn new(bytes: &'a [u8]) -> Result<LogReader<'a>, LogError> {
        let header = LogHeader::parse(bytes)?;
        let header_len = header.header_len as usize;
        if bytes.len() < header_len {
            return Err(LogError::Truncated {
                offset: 0,
                needed: header_len as u64,
                available: bytes.len() as u64,
            });
        }
        Ok(LogReader {
            bytes,
            header,
            pos: header_len,
            index: 0,
            previous_gseq: None,
            saw_end: false,
            done: false,
        })
    }

    /// The file header.
    pub fn header(&self) -> &LogHeader {
        &self.header
    }

    /// The offset of the next record: after the iteration ended without an
    /// error, the length of the file; after an error, the start of the
    /// record the error is about (everything before it is sound).
    pub fn position(&self) -> u64 {
        self.pos as u64
    }

    /// Records read so far, optional records skipped included.
    pub fn records_read(&self) -> u64 {
        self.index
    }

    /// Whether an end record was read.
    pub fn saw_end(&self) -> bool {
        self.saw_end
    }

    /// Check the record at `self.pos`. `Ok(None)`: an optional record of an
    /// unknown kind, skipped.
    fn read_one(&mut self) -> Result<Option<LogRecord<'a>>, LogError> {
        let offset = self.pos as u64;
        let rest = &self.bytes[self.pos..];
        if self.saw_end {
            return Err(LogError::AfterEnd { offset });
        }
        let Ok((header, _)) = RecordHeader::read_from_prefix(rest) else {
            return Err(LogError::Truncated {
                offset,
                needed: RECORD_HEADER_LEN as u64,
                available: rest.len() as u64,
            });
        };
        // Lengths come from the input: check them before slicing.
        if header.payload_len as usize > MAX_PAYLOAD {
            return Err(LogError::PayloadTooLong {
                offset,
                len: header.payload_len,
            });
        }
        if header.len as u64 != RECORD_HEADER_LEN as u64 + header.payload_len as u64 {
            return Err(LogError::BadLength {
                offset,
                len: header.len,
            });
        }
        let total = padded(header.len as usize);
        if rest.len() < total {
            return Err(LogError::Truncated {
                offset,
                needed: total as u64,
                available: rest.len() as u64,
            });
        }
        let payload = &rest[RECORD_HEADER_LEN..header.len as usize];
        let index = self.index;
        if header.compute_crc(payload) != header.crc {
            return Err(LogError::BadChecksum {
                offset,
                index,
                gseq: header.gseq,
            });
        }
        if rest[header.len as usize..total].iter().any(|&b| b != 0) {
            return Err(LogError::BadPadding { offset, index });
        }
        let kind = Kind::from_u16(header.kind);
        if kind.is_none() && header.flags & FLAG_OPTIONAL == 0 {
            return Err(LogError::UnknownKind {
                offset,
                kind: header.kind,
            });
        }
        if index == 0 && (kind != Some(Kind::Start) || header.gseq != 0) {
            return Err(LogError::BadStart {
                offset,
                why: "the first record is not a start record with gseq 0",
            });
        }
        let Some(kind) = kind else {
            // An optional record of a newer kind: its checksum holds, its
            // meaning (and so its gseq) is not this reader's business.
            self.pos += total;
            self.index += 1;
            return Ok(None);
        };
        if let Some(previous) = self.previous_gseq {
            if kind == Kind::Start {
                return Err(LogError::BadStart {
                    offset,
                    why: "a second start record",
                });
            }
            if header.gseq <= previous {
                return Err(LogError::OutOfOrder {
                    offset,
                    index,
                    gseq: header.gseq,
                    previous,
                });
            }
        }
        self.previous_gseq = Some(header.gseq);
        self.saw_end = kind == Kind::End;
        self.pos += total;
        self.index += 1;
        Ok(Some(LogRecord {
            offset,
            index,
            header,
            payload,
        }))
    }
}

impl<'a> Iterator for LogReader<'a> {
    type Item = Result<LogRecord<'a>, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done && self.pos < self.bytes.len() {
            match self.read_one() {
                Ok(Some(record)) => return Some(Ok(record)),
                Ok(None) => continue,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        self.done = true;
        None
    }
}

impl core::iter::FusedIterator for LogReader<'_> {}

#[cfg(feature = "std")]
pub use self::with_std::*;

#[cfg(feature = "std")]
mod with_std {
    use super::{LogError, LogHeader, LogReader};
    use crate::{padded, Kind, RecordHeader, MAX_PAYLOAD, RECORD_ALIGN, RECORD_HEADER_LEN};
    use std::io;
    use std::vec::Vec;
    use zerocopy::{FromBytes, IntoBytes};

    /// The payload of the start record: what the recorded program was
    /// started with.
    ///
    /// Encoding (all integers u32 little-endian): the argument count, then
    /// each argument as length and bytes; the environment count, then each
    /// `NAME=value` entry as length and bytes; the working directory as
    /// length and bytes. Bytes after the working directory are ignored (a
    /// newer minor may add fields there).
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct StartInfo {
        /// The program's arguments, `argv[0]` first.
        pub argv: Vec<Vec<u8>>,
        /// The program's environment, `NAME=value` entries.
        pub env: Vec<Vec<u8>>,
        /// The working directory.
        pub cwd: Vec<u8>,
    }

    impl StartInfo {
        /// Encode as a start record payload.
        pub fn encode(&self) -> Vec<u8> {
            let strings = self
                .argv
                .iter()
                .chain(&self.env)
                .chain(core::iter::once(&self.cwd));
            let size: usize = 8 + strings.map(|s| 4 + s.len()).sum::<usize>();
            let mut out = Vec::with_capacity(size);
            for list in [&self.argv, &self.env] {
                put_u32(&mut out, list.len());
                for s in list {
                    put_bytes(&mut out, s);
                }
            }
            put_bytes(&mut out, &self.cwd);
            out
        }

        /// Decode a start record payload. Every count and length is checked
        /// against the bytes left before anything is allocated.
        pub fn decode(payload: &[u8]) -> Result<StartInfo, &'static str> {
            let mut d = Decoder { rest: payload };
            let argv = d.list(
                "argument count exceeds the payload",
                "an argument runs past the payload",
            )?;
            let env = d.list(
                "environment count exceeds the payload",
                "an environment entry runs past the payload",
            )?;
            let cwd = d
                .bytes("the working directory runs past the payload")?
                .to_vec();
            Ok(StartInfo { argv, env, cwd })
        }
    }

    fn put_u32(out: &mut Vec<u8>, n: usize) {
        let n = u32::try_from(n).expect("a start record string or list longer than 4 GiB");
        out.extend_from_slice(&n.to_le_bytes());
    }

    fn put_bytes(out: &mut Vec<u8>, s: &[u8]) {
        put_u32(out, s.len());
        out.extend_from_slice(s);
    }

    struct Decoder<'a> {
        rest: &'a [u8],
    }

    impl<'a> Decoder<'a> {
        fn u32(&mut self, why: &'static str) -> Result<usize, &'static str> {
            let (n, rest) = self.rest.split_first_chunk::<4>().ok_or(why)?;
            self.rest = rest;
            Ok(u32::from_le_bytes(*n) as usize)
        }

        fn bytes(&mut self, why: &'static str) -> Result<&'a [u8], &'static str> {
            let n = self.u32(why)?;
            if n > self.rest.len() {
                return Err(why);
            }
            let (s, rest) = self.rest.split_at(n);
            self.rest = rest;
            Ok(s)
        }

        fn list(
            &mut self,
            count_why: &'static str,
            item_why: &'static str,
        ) -> Result<Vec<Vec<u8>>, &'static str> {
            let n = self.u32(count_why)?;
            // Every item takes at least its 4-byte length.
            if n > self.rest.len() / 4 {
                return Err(count_why);
            }
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(self.bytes(item_why)?.to_vec());
            }
            Ok(v)
        }
    }

    /// What [`validate`] found in a sound log.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct LogSummary {
        /// Records in the file, optional records this reader skipped
        /// included.
        pub records: u64,
        /// `gseq` of the last record of a known kind.
        pub last_gseq: u64,
        /// Whether the log ends with an end record.
        pub complete: bool,
        /// The decoded start record.
        pub start: StartInfo,
        /// The root's wait status from the end record, if there is one.
        pub end_status: Option<i64>,
    }

    /// Check a whole log file in one pass: header, every record, a start
    /// record that decodes. A log cut short (a torn tail) is an error
    /// ([`LogError::Truncated`] at the offset of the cut record); a log that
    /// merely lacks an end record is not (`complete` is false).
    pub fn validate(bytes: &[u8]) -> Result<LogSummary, LogError> {
        validate_with(bytes, |_| {})
    }

    /// As [`validate`], handing every record to `each` as it is read (a
    /// replay collects the records to publish in the same pass). After an
    /// error, the records already handed over are not to be used.
    pub fn validate_with<'a>(
        bytes: &'a [u8],
        mut each: impl FnMut(&super::LogRecord<'a>),
    ) -> Result<LogSummary, LogError> {
        let mut reader = LogReader::new(bytes)?;
        let first_offset = reader.position();
        let mut start = None;
        let mut last_gseq = 0;
        let mut end_status = None;
        for record in reader.by_ref() {
            let record = record?;
            each(&record);
            last_gseq = record.header.gseq;
            match Kind::from_u16(record.header.kind) {
                Some(Kind::Start) => {
                    let info =
                        StartInfo::decode(record.payload).map_err(|why| LogError::BadStart {
                            offset: record.offset,
                            why,
                        })?;
                    start = Some(info);
                }
                Some(Kind::End) => end_status = Some(record.header.ret),
                _ => {}
            }
        }
        let Some(start) = start else {
            return Err(LogError::BadStart {
                offset: first_offset,
                why: "the log holds no records",
            });
        };
        Ok(LogSummary {
            records: reader.records_read(),
            last_gseq,
            complete: reader.saw_end(),
            start,
            end_status,
        })
    }

    fn invalid(msg: &'static str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, msg)
    }

    /// Writes a log file: the header, then records appended in `gseq`
    /// order. Wrap an unbuffered writer in a `BufWriter`: each record is
    /// written in up to three `write_all` calls.
    pub struct LogWriter<W: io::Write> {
        w: W,
    }

    impl<W: io::Write> LogWriter<W> {
        /// Write a [`LogHeader::new`] header to `w`.
        pub fn new(mut w: W, created_ns: u64) -> io::Result<Self> {
            w.write_all(LogHeader::new(created_ns).as_bytes())?;
            Ok(LogWriter { w })
        }

        /// Append a record: `header` (already sealed for `payload`), the
        /// payload and zero padding to [`RECORD_ALIGN`]. Fails with
        /// `InvalidInput` if the header's lengths do not describe `payload`
        /// or the payload is longer than [`MAX_PAYLOAD`].
        pub fn append(&mut self, header: &RecordHeader, payload: &[u8]) -> io::Result<()> {
            if payload.len() > MAX_PAYLOAD {
                return Err(invalid("record payload longer than MAX_PAYLOAD"));
            }
            if header.payload_len as usize != payload.len()
                || header.len as usize != RECORD_HEADER_LEN + payload.len()
            {
                return Err(invalid(
                    "record header lengths do not match the payload (not sealed?)",
                ));
            }
            self.w.write_all(header.as_bytes())?;
            self.w.write_all(payload)?;
            let pad = header.padded_len() - header.len as usize;
            self.w.write_all(&[0u8; RECORD_ALIGN][..pad])
        }

        /// Append the bytes of one sealed, padded record, as found in the
        /// ring (padding is written as zeros, whatever the ring held). Fails with
        /// `InvalidInput` if `record_bytes` is not exactly one record of
        /// consistent lengths; the checksum is not verified here.
        pub fn append_raw(&mut self, record_bytes: &[u8]) -> io::Result<()> {
            let Ok((header, _)) = RecordHeader::read_from_prefix(record_bytes) else {
                return Err(invalid("raw record shorter than a record header"));
            };
            if header.payload_len as usize > MAX_PAYLOAD
                || header.len as u64 != RECORD_HEADER_LEN as u64 + header.payload_len as u64
                || padded(header.len as usize) != record_bytes.len()
            {
                return Err(invalid("raw record lengths do not match its bytes"));
            }
            self.w.write_all(&record_bytes[..header.len as usize])?;
            let pad = record_bytes.len() - header.len as usize;
            self.w.write_all(&[0u8; RECORD_ALIGN][..pad])
        }

        /// Append whole records as they are: `bytes` holds sealed records,
        /// each padded with zeros to [`RECORD_ALIGN`] (a consumer that
        /// checked and sealed them as it gathered them from the ring).
        pub fn append_sealed(&mut self, bytes: &[u8]) -> io::Result<()> {
            self.w.write_all(bytes)
        }

        /// The underlying writer.
        pub fn get_mut(&mut self) -> &mut W {
            &mut self.w
        }

        /// Give back the underlying writer (not flushed).
        pub fn into_inner(self) -> W {
            self.w
        }
    }

    /// The start record for `info`: [`Kind::Start`], `gseq` 0, vpid 1,
    /// vtid 1, sealed.
    pub fn start_record(info: &StartInfo) -> (RecordHeader, Vec<u8>) {
        let payload = info.encode();
        let mut h = RecordHeader {
            kind: Kind::Start as u16,
            gseq: 0,
            vpid: 1,
            vtid: 1,
            ..RecordHeader::default()
        };
        h.seal(&payload);
        (h, payload)
    }

    /// The end record: [`Kind::End`] at `gseq`, `ret` the root's wait
    /// status, vpid 1 (the root), vtid 0 (no thread), empty payload, sealed.
    pub fn end_record(gseq: u64, wait_status: i64) -> (RecordHeader, Vec<u8>) {
        let mut h = RecordHeader {
            kind: Kind::End as u16,
            gseq,
            vpid: 1,
            vtid: 0,
            ret: wait_status,
            ..RecordHeader::default()
        };
        h.seal(&[]);
        (h, Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log of one start record with an empty payload, built without the
    /// writer.
    fn tiny_log() -> [u8; LOG_HEADER_LEN + RECORD_HEADER_LEN] {
        let mut bytes = [0u8; LOG_HEADER_LEN + RECORD_HEADER_LEN];
        bytes[..LOG_HEADER_LEN].copy_from_slice(LogHeader::new(7).as_bytes());
        let mut h = RecordHeader {
            kind: Kind::Start as u16,
            ..RecordHeader::default()
        };
        h.seal(&[]);
        bytes[LOG_HEADER_LEN..].copy_from_slice(h.as_bytes());
        bytes
    }

    #[test]
    fn a_new_header_parses_back() {
        let h = LogHeader::new(12345);
        assert_eq!(LogHeader::parse(h.as_bytes()), Ok(h));
        assert_eq!(
            (h.magic, h.major, h.minor),
            (LOG_MAGIC, LOG_MAJOR, LOG_MINOR)
        );
        assert_eq!(h.header_len as usize, LOG_HEADER_LEN);
        assert_eq!(h.crc, h.compute_crc());
        assert_ne!(h.crc, 0);
    }

    #[test]
    fn the_reader_needs_no_allocation() {
        let bytes = tiny_log();
        let mut r = LogReader::new(&bytes).unwrap();
        let rec = r.next().unwrap().unwrap();
        assert_eq!((rec.offset, rec.index, rec.payload.len()), (64, 0, 0));
        assert_eq!(r.next(), None);
        assert_eq!(r.position(), bytes.len() as u64);
        assert_eq!(r.records_read(), 1);
        assert!(!r.saw_end());
    }

    #[test]
    fn errors_know_their_offset() {
        let bytes = tiny_log();
        let mut r = LogReader::new(&bytes[..100]).unwrap();
        let e = r.next().unwrap().unwrap_err();
        assert_eq!(
            e,
            LogError::Truncated {
                offset: 64,
                needed: 64,
                available: 36
            }
        );
        assert_eq!(e.offset(), 64);
    }
}
