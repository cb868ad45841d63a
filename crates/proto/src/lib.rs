//! The bytes that cross a process or a host.
//!
//! A *record* is one finished call of a protected program (or an event such as
//! a signal delivery) in the single total order `gseq`. It is a fixed 64-byte
//! little-endian [`RecordHeader`] followed by a payload, padded to 8 bytes.
//! The same bytes travel through the shared-memory ring, sit in log files and
//! (later) in replication batches. The log file is a [`log::LogHeader`] followed by
//! records. `docs/LOG-FORMAT.md` is the written form of this module.
//!
//! This crate is used inside the shim, so it never allocates on the paths the
//! shim calls (`RecordHeader` helpers, `checksum`).

#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(test), allow(unused_imports))]

#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod calls;
#[cfg(feature = "std")]
pub mod control;
pub mod log;
#[cfg(feature = "std")]
pub mod wire;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

#[cfg(not(target_endian = "little"))]
compile_error!("Ferry's formats are little-endian and the shim targets x86_64 only");

/// Size of [`RecordHeader`] in bytes.
pub const RECORD_HEADER_LEN: usize = 64;
/// Records are padded to this alignment in rings and logs.
pub const RECORD_ALIGN: usize = 8;
/// Largest payload a single record may carry (a read of more is split by the
/// shim into several records). Readers reject longer lengths before allocating.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// What a record describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Kind {
    /// A system call; `nr` is the x86_64 syscall number.
    Syscall = 1,
    /// A libc-level call with no single syscall (mutexes, thread creation,
    /// fork); `nr` is a [`calls::Call`] code.
    Call = 2,
    /// A signal delivered to the program's handler (or fatal); `nr` is the
    /// signal number, the payload the `siginfo_t` bytes.
    Signal = 3,
    /// The start of the recorded program: argv, environment and working
    /// directory ([`log::StartInfo`]). Always the first record, `gseq` 0.
    Start = 4,
    /// An `execve` that returned (failed) or replaced the image (`ret` 0).
    Exec = 5,
    /// The end of a complete recording; `ret` is the root's wait status.
    End = 6,
}

impl Kind {
    /// Parse a kind code; `None` for codes this version does not know.
    pub fn from_u16(v: u16) -> Option<Kind> {
        Some(match v {
            1 => Kind::Syscall,
            2 => Kind::Call,
            3 => Kind::Signal,
            4 => Kind::Start,
            5 => Kind::Exec,
            6 => Kind::End,
            _ => return None,
        })
    }

    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Syscall => "syscall",
            Kind::Call => "call",
            Kind::Signal => "signal",
            Kind::Start => "start",
            Kind::Exec => "exec",
            Kind::End => "end",
        }
    }
}

/// Record flag: a reader that does not know this record's kind may skip it
/// (a newer writer adding information an older reader can do without).
pub const FLAG_OPTIONAL: u16 = 1 << 0;
/// Record flag (signals): the signal killed the process.
pub const FLAG_FATAL: u16 = 1 << 1;
/// Record flag (syscalls): the call was executed on a descriptor that is a
/// placeholder in replay (a socket, pipe, epoll set…): its effect is not
/// repeated there.
pub const FLAG_PLACEHOLDER_FD: u16 = 1 << 2;

/// Record flag: signals were delivered to the program's handlers right after
/// this call returned; replay delivers them at the same point.
pub const FLAG_SIGNALS_FOLLOW: u16 = 1 << 3;

/// The fixed header of every record. Little-endian, 64 bytes, no padding.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct RecordHeader {
    /// Total length of the record, header and payload, before padding.
    pub len: u32,
    /// A [`Kind`] code.
    pub kind: u16,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// Position in the single total order of finished calls.
    pub gseq: u64,
    /// Virtual process id of the calling process.
    pub vpid: u32,
    /// Virtual thread id of the calling thread (unique across processes).
    pub vtid: u32,
    /// Syscall number, call code or signal number, by kind.
    pub nr: u32,
    /// CRC-32C of the header (with this field zero) and the payload.
    pub crc: u32,
    /// The call's return value (negative errno for failed syscalls).
    pub ret: i64,
    /// First check value: what identifies the call's target (a descriptor,
    /// an address).
    pub arg0: u64,
    /// Second check value: a digest of what the call passed in (the CRC of a
    /// path or of the bytes written).
    pub arg1: u64,
    /// Length of the payload that follows the header.
    pub payload_len: u32,
    /// Zero.
    pub reserved: u32,
}

const _: () = assert!(core::mem::size_of::<RecordHeader>() == RECORD_HEADER_LEN);

impl RecordHeader {
    /// The padded length this record occupies in a ring or log.
    pub fn padded_len(&self) -> usize {
        padded(self.len as usize)
    }

    /// Compute the checksum over this header (with `crc` taken as zero) and
    /// `payload`.
    pub fn compute_crc(&self, payload: &[u8]) -> u32 {
        let mut h = *self;
        h.crc = 0;
        let c = crc32c::crc32c(h.as_bytes());
        crc32c::crc32c_append(c, payload)
    }

    /// Seal a whole record in place: `bytes` is its header followed by its
    /// payload (`len` bytes); the checksum is computed over both in one
    /// pass, with the header's `crc` field taken as zero, and stored. The
    /// result is the one [`RecordHeader::seal`] gives.
    pub fn seal_bytes(bytes: &mut [u8]) {
        const CRC_AT: usize = core::mem::offset_of!(RecordHeader, crc);
        if bytes.len() < RECORD_HEADER_LEN {
            return;
        }
        bytes[CRC_AT..CRC_AT + 4].fill(0);
        let crc = crc32c::crc32c(bytes);
        bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// As [`RecordHeader::compute_crc`] for a payload in several parts.
    pub fn compute_crc_parts(&self, parts: &[&[u8]]) -> u32 {
        let mut h = *self;
        h.crc = 0;
        parts.iter().fold(crc32c::crc32c(h.as_bytes()), |c, p| {
            crc32c::crc32c_append(c, p)
        })
    }

    /// Set `len`, `payload_len` and `crc` for a payload in several parts.
    pub fn seal_parts(&mut self, parts: &[&[u8]]) {
        let n: usize = parts.iter().map(|p| p.len()).sum();
        self.payload_len = n as u32;
        self.len = (RECORD_HEADER_LEN + n) as u32;
        self.crc = self.compute_crc_parts(parts);
    }

    /// Set `len` and `payload_len` for a payload in several parts, leaving
    /// `crc` zero: the shim's records are sealed by their consumer.
    #[inline]
    pub fn size_parts(&mut self, parts: &[&[u8]]) {
        let n: usize = parts.iter().map(|p| p.len()).sum();
        self.payload_len = n as u32;
        self.len = (RECORD_HEADER_LEN + n) as u32;
        self.crc = 0;
    }

    /// Set `len`, `payload_len` and `crc` for `payload`.
    pub fn seal(&mut self, payload: &[u8]) {
        self.payload_len = payload.len() as u32;
        self.len = (RECORD_HEADER_LEN + payload.len()) as u32;
        self.crc = self.compute_crc(payload);
    }
}

/// Round `len` up to [`RECORD_ALIGN`].
pub const fn padded(len: usize) -> usize {
    (len + RECORD_ALIGN - 1) & !(RECORD_ALIGN - 1)
}

/// CRC-32C of `bytes`, the digest used for check values.
pub fn checksum(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}
