//! Frames: how messages travel between `ferryd` nodes on a QUIC stream or in
//! a QUIC datagram.
//!
//! A frame is a fixed 20-byte little-endian [`FrameHeader`] followed by a
//! body of `len` bytes. The body is a postcard-encoded value, or raw bytes for
//! a record batch ([`KIND_RECORD_BATCH`]: sealed records back to back, as in
//! `docs/LOG-FORMAT.md`). `docs/WIRE.md` is the written form of this module.
//!
//! [`FrameReader`] takes bytes as they arrive ([`FrameReader::push`]) and hands
//! out complete frames ([`FrameReader::next_frame`]). It checks the magic, the
//! major version and the body length against its cap as soon as the header is
//! there, before it keeps any of the body, and the checksum before it returns
//! a frame. After an error the stream is unusable: the reader keeps returning
//! that error.
//!
//! Versioning: a reader refuses another major version and accepts any minor.
//! A newer minor may only append fields at the end of a message struct (a
//! reader decodes with `postcard::take_from_bytes` and ignores what follows),
//! set flag bits an older reader ignores, and add frame kinds that carry
//! [`FLAG_OPTIONAL`] (an older reader skips them). Needs the crate feature `std`.

use serde::{de::DeserializeOwned, Serialize};
use std::string::{String, ToString};
use std::vec::Vec;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// First bytes of every frame.
pub const WIRE_MAGIC: [u8; 4] = *b"FRY1";
/// Major version: a reader refuses any other.
pub const WIRE_MAJOR: u8 = 1;
/// Minor version written by this code; a reader accepts any minor.
pub const WIRE_MINOR: u8 = 0;
/// Size of [`FrameHeader`].
pub const FRAME_HEADER_LEN: usize = 20;
/// Default cap on a frame body (16 MiB). [`encode`] refuses longer bodies.
pub const DEFAULT_MAX_BODY: usize = 16 << 20;

/// Kind: a replication protocol message (postcard body).
pub const KIND_REPLICATION: u16 = 1;
/// Kind: a record batch (raw body: sealed records back to back).
pub const KIND_RECORD_BATCH: u16 = 2;
/// Kind: a control request (postcard body).
pub const KIND_CONTROL_REQUEST: u16 = 3;
/// Kind: a control reply (postcard body).
pub const KIND_CONTROL_REPLY: u16 = 4;
/// Kind: a piece of a checkpoint image's files (raw body), on a record
/// stream whose head announces the image.
pub const KIND_IMAGE_CHUNK: u16 = 5;

/// Flag bit 0: a reader that does not know the frame's kind skips the frame
/// instead of failing.
pub const FLAG_OPTIONAL: u16 = 1 << 0;

/// Offset of [`FrameHeader::major`] in a frame.
const MAJOR_OFFSET: usize = 4;

/// Whether this reader knows `kind`.
pub fn is_known_kind(kind: u16) -> bool {
    (KIND_REPLICATION..=KIND_IMAGE_CHUNK).contains(&kind)
}

/// The header at the start of every frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct FrameHeader {
    /// [`WIRE_MAGIC`].
    pub magic: [u8; 4],
    /// [`WIRE_MAJOR`].
    pub major: u8,
    /// The writer's minor version.
    pub minor: u8,
    /// What the body is (`KIND_*`).
    pub kind: u16,
    /// `FLAG_*` bits; unknown bits are ignored.
    pub flags: u16,
    /// Zero when written; ignored when read.
    pub reserved: u16,
    /// Body length in bytes.
    pub len: u32,
    /// CRC-32C of the header (this field as 0) then the body.
    pub crc: u32,
}

const _: () = assert!(core::mem::size_of::<FrameHeader>() == FRAME_HEADER_LEN);

/// CRC-32C of `header` (with its `crc` taken as 0) followed by `body`.
pub fn frame_checksum(header: &FrameHeader, body: &[u8]) -> u32 {
    let mut h = *header;
    h.crc = 0;
    crc32c::crc32c_append(crc32c::crc32c(h.as_bytes()), body)
}

/// What is wrong with a frame, and where its first byte is in the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame does not start with [`WIRE_MAGIC`].
    #[error("offset {offset}: bad magic")]
    BadMagic {
        /// Stream offset of the frame.
        offset: u64,
    },
    /// The frame's major version is not [`WIRE_MAJOR`].
    #[error("offset {offset}: unsupported major version {major}")]
    UnsupportedMajor {
        /// Stream offset of the frame.
        offset: u64,
        /// The frame's major version.
        major: u8,
    },
    /// The body is longer than the reader's cap.
    #[error("offset {offset}: frame of {len} bytes exceeds the {max}-byte limit")]
    TooLong {
        /// Stream offset of the frame.
        offset: u64,
        /// The body length in the header.
        len: u64,
        /// The cap.
        max: usize,
    },
    /// The checksum does not match the header and body.
    #[error("offset {offset}: checksum mismatch")]
    BadChecksum {
        /// Stream offset of the frame.
        offset: u64,
    },
    /// A kind this reader does not know, without [`FLAG_OPTIONAL`].
    #[error("offset {offset}: unknown frame kind {kind}")]
    UnknownKind {
        /// Stream offset of the frame.
        offset: u64,
        /// The frame's kind.
        kind: u16,
    },
    /// A datagram ends before its frame does.
    #[error("offset {offset}: truncated frame: {needed} bytes needed, {available} present")]
    Truncated {
        /// Offset of the frame (0 in a datagram).
        offset: u64,
        /// Header plus body length, or the header length if that is missing.
        needed: u64,
        /// Bytes present.
        available: u64,
    },
    /// A datagram holds bytes after its frame.
    #[error("offset {offset}: {count} bytes after the frame")]
    TrailingBytes {
        /// Offset of the first extra byte.
        offset: u64,
        /// How many extra bytes.
        count: u64,
    },
    /// The body does not decode as the expected type.
    #[error("offset {offset}: frame kind {kind} body does not decode: {why}")]
    Decode {
        /// Stream offset of the frame.
        offset: u64,
        /// The frame's kind.
        kind: u16,
        /// postcard's description.
        why: String,
    },
    /// A value could not be encoded.
    #[error("frame kind {kind}: cannot encode the body: {why}")]
    Encode {
        /// The kind being written.
        kind: u16,
        /// postcard's description.
        why: String,
    },
    /// A body to send is longer than [`DEFAULT_MAX_BODY`].
    #[error("frame kind {kind}: frame of {len} bytes exceeds the {max}-byte limit")]
    EncodeTooLong {
        /// The kind being written.
        kind: u16,
        /// The body length.
        len: u64,
        /// The cap.
        max: usize,
    },
}

impl WireError {
    /// Stream offset the error points at, if it concerns a received frame.
    pub fn offset(&self) -> Option<u64> {
        match self {
            WireError::BadMagic { offset }
            | WireError::UnsupportedMajor { offset, .. }
            | WireError::TooLong { offset, .. }
            | WireError::BadChecksum { offset }
            | WireError::UnknownKind { offset, .. }
            | WireError::Truncated { offset, .. }
            | WireError::TrailingBytes { offset, .. }
            | WireError::Decode { offset, .. } => Some(*offset),
            WireError::Encode { .. } | WireError::EncodeTooLong { .. } => None,
        }
    }
}

/// A frame whose body is `value`, postcard-encoded.
pub fn encode<T: Serialize + ?Sized>(
    kind: u16,
    flags: u16,
    value: &T,
) -> Result<Vec<u8>, WireError> {
    let body = postcard::to_stdvec(value).map_err(|e| WireError::Encode {
        kind,
        why: e.to_string(),
    })?;
    encode_raw(kind, flags, &body)
}

/// A frame whose body is `body` as it is (a record batch).
pub fn encode_raw(kind: u16, flags: u16, body: &[u8]) -> Result<Vec<u8>, WireError> {
    if body.len() > DEFAULT_MAX_BODY {
        return Err(WireError::EncodeTooLong {
            kind,
            len: body.len() as u64,
            max: DEFAULT_MAX_BODY,
        });
    }
    let mut header = FrameHeader {
        magic: WIRE_MAGIC,
        major: WIRE_MAJOR,
        minor: WIRE_MINOR,
        kind,
        flags,
        reserved: 0,
        len: body.len() as u32,
        crc: 0,
    };
    header.crc = frame_checksum(&header, body);
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + body.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

/// A complete, checked frame of a kind this reader knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What the body is (`KIND_*`).
    pub kind: u16,
    /// `FLAG_*` bits as sent.
    pub flags: u16,
    /// The writer's minor version: a reader that knows several minors picks
    /// the body type of this one.
    pub minor: u8,
    /// Stream offset of the frame's first byte.
    pub offset: u64,
    /// The body.
    pub body: Vec<u8>,
}

impl Frame {
    /// The body as a `T`. Bytes after the value (fields a newer minor
    /// appended) are ignored.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, WireError> {
        postcard::take_from_bytes(&self.body)
            .map(|(value, _rest)| value)
            .map_err(|e| WireError::Decode {
                offset: self.offset,
                kind: self.kind,
                why: e.to_string(),
            })
    }
}

/// Cuts a byte stream into frames.
#[derive(Debug)]
pub struct FrameReader {
    max_body: usize,
    /// Bytes received and not yet handed out; `buf[start..]` is pending.
    buf: Vec<u8>,
    start: usize,
    /// Stream offset of `buf[start]`.
    offset: u64,
    /// The first error seen; the stream is unusable after it.
    failed: Option<WireError>,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader::new()
    }
}

impl FrameReader {
    /// A reader with the [`DEFAULT_MAX_BODY`] cap.
    pub fn new() -> FrameReader {
        FrameReader::with_max_body(DEFAULT_MAX_BODY)
    }

    /// A reader that refuses bodies longer than `max_body` bytes.
    pub fn with_max_body(max_body: usize) -> FrameReader {
        FrameReader {
            max_body,
            buf: Vec::new(),
            start: 0,
            offset: 0,
            failed: None,
        }
    }

    /// The body cap.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Stream offset of the next byte not yet handed out in a frame.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes received and not yet handed out.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Adds bytes from the stream. Once the pending frame's header is known to
    /// be bad, nothing more is kept (the error comes from `next_frame`).
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        // Check the header before keeping the body: a bad one (garbage, an
        // oversize length) fails now and its bytes are dropped.
        let pending = self.buffered();
        if pending < FRAME_HEADER_LEN {
            let head = (FRAME_HEADER_LEN - pending).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..head]);
            if let Err(e) = self.check_header() {
                self.fail(e);
                return;
            }
            self.buf.extend_from_slice(&bytes[head..]);
        } else {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The next complete frame, `None` if more bytes are needed. Frames of an
    /// unknown kind with [`FLAG_OPTIONAL`] are skipped.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        loop {
            if let Some(e) = &self.failed {
                return Err(e.clone());
            }
            let header = match self.check_header() {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.fail(e)),
            };
            let total = FRAME_HEADER_LEN + header.len as usize;
            if self.buffered() < total {
                return Ok(None);
            }
            let frame = &self.buf[self.start..self.start + total];
            let offset = self.offset;
            if frame_checksum(&header, &frame[FRAME_HEADER_LEN..]) != header.crc {
                return Err(self.fail(WireError::BadChecksum { offset }));
            }
            let known = is_known_kind(header.kind);
            if !known && header.flags & FLAG_OPTIONAL == 0 {
                return Err(self.fail(WireError::UnknownKind {
                    offset,
                    kind: header.kind,
                }));
            }
            let body = if known {
                frame[FRAME_HEADER_LEN..].to_vec()
            } else {
                Vec::new()
            };
            self.start += total;
            self.offset += total as u64;
            if known {
                return Ok(Some(Frame {
                    kind: header.kind,
                    flags: header.flags,
                    minor: header.minor,
                    offset,
                    body,
                }));
            }
        }
    }

    /// Checks what is there of the pending frame's header; the whole header
    /// once it is complete.
    fn check_header(&self) -> Result<Option<FrameHeader>, WireError> {
        let offset = self.offset;
        let pending = &self.buf[self.start..];
        let m = pending.len().min(WIRE_MAGIC.len());
        if pending[..m] != WIRE_MAGIC[..m] {
            return Err(WireError::BadMagic { offset });
        }
        if pending.len() > MAJOR_OFFSET && pending[MAJOR_OFFSET] != WIRE_MAJOR {
            return Err(WireError::UnsupportedMajor {
                offset,
                major: pending[MAJOR_OFFSET],
            });
        }
        let Ok((header, _)) = FrameHeader::read_from_prefix(pending) else {
            return Ok(None);
        };
        if header.len as u64 > self.max_body as u64 {
            return Err(WireError::TooLong {
                offset,
                len: header.len.into(),
                max: self.max_body,
            });
        }
        Ok(Some(header))
    }

    /// Records `e` as the stream's fate and drops what is buffered.
    fn fail(&mut self, e: WireError) -> WireError {
        self.failed = Some(e.clone());
        self.buf = Vec::new();
        self.start = 0;
        e
    }
}

/// The one frame in a datagram. `None` for a frame of an unknown optional
/// kind; an error if the datagram holds less or more than one frame.
pub fn read_datagram(datagram: &[u8], max_body: usize) -> Result<Option<Frame>, WireError> {
    // The frame's own length, so that a second frame after it is refused
    // rather than read.
    let total = match FrameHeader::read_from_prefix(datagram) {
        Ok((h, _)) => (FRAME_HEADER_LEN as u64).saturating_add(h.len.into()),
        Err(_) => FRAME_HEADER_LEN as u64,
    };
    let own = datagram
        .len()
        .min(usize::try_from(total).unwrap_or(usize::MAX));
    let mut reader = FrameReader::with_max_body(max_body);
    reader.push(&datagram[..own]);
    let frame = reader.next_frame()?;
    if reader.offset() == 0 {
        return Err(WireError::Truncated {
            offset: 0,
            needed: total,
            available: datagram.len() as u64,
        });
    }
    if own < datagram.len() {
        return Err(WireError::TrailingBytes {
            offset: own as u64,
            count: (datagram.len() - own) as u64,
        });
    }
    Ok(frame)
}
