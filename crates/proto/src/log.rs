//! The log file: a [`LogHeader`] followed by records in `gseq` order.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// First bytes of every log file.
pub const LOG_MAGIC: [u8; 8] = *b"FERRYLOG";
/// Major version: a reader refuses any other.
pub const LOG_MAJOR: u16 = 1;
/// Minor version: a newer minor only adds what an older reader may skip.
pub const LOG_MINOR: u16 = 0;
/// Size of [`LogHeader`].
pub const LOG_HEADER_LEN: usize = 64;

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
