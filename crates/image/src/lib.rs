//! The checkpoint image: what a checkpoint of one program writes into a
//! directory.
//!
//! An image directory holds one file per process, `<vpid>.fimg`: a
//! [`FileHeader`], then *sections* (a [`SectionHeader`] and a payload each),
//! the last of which is an end section carrying the number of sections and a
//! running checksum. Written last of all, `manifest.fimg` lists every process
//! file with its length and checksum; a directory without a valid manifest is
//! an interrupted checkpoint. `docs/IMAGE-FORMAT.md` is the written form of
//! this crate.
//!
//! Writing ([`write::ImageWriter`], [`manifest::write_manifest`]) works
//! without `std`, never allocates and never panics on its input: the shim
//! streams its own image through a [`write::Sink`]. Reading
//! ([`read::ProcessReader`], [`dir::Image`]) and the directory helper that
//! writes a whole image through temporary names ([`dir::CheckpointWriter`])
//! need the crate feature `std`.

#![cfg_attr(not(test), no_std)]

#[cfg(any(test, feature = "std"))]
extern crate std;

#[cfg(feature = "std")]
pub mod dir;
pub mod manifest;
#[cfg(feature = "std")]
pub mod read;
pub mod resume;
pub mod sections;
pub mod write;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

#[cfg(not(target_endian = "little"))]
compile_error!("Ferry's formats are little-endian and the shim targets x86_64 only");

/// First bytes of every process file.
pub const IMAGE_MAGIC: [u8; 8] = *b"FERRYIMG";
/// Major version: a reader refuses any other.
pub const IMAGE_MAJOR: u16 = 1;
/// Minor version: a newer minor only adds what an older reader may skip.
pub const IMAGE_MINOR: u16 = 1;
/// Size of [`FileHeader`].
pub const FILE_HEADER_LEN: usize = 64;
/// Size of [`SectionHeader`].
pub const SECTION_HEADER_LEN: usize = 32;
/// Size of the checksum that follows the payload of a section flagged
/// [`FLAG_TRAILING_CRC`].
pub const TRAILER_LEN: usize = 4;
/// The page size of every page run (x86_64).
pub const PAGE_SIZE: u64 = 4096;

/// Section flag: a reader that does not know this section's kind checks and
/// skips it.
pub const FLAG_OPTIONAL: u16 = 1 << 0;
/// Section flag: the payload's CRC-32C is not in the header (its
/// `payload_crc` is 0) but in the 4 bytes that follow the payload, so a
/// writer can stream a payload it has not seen whole.
pub const FLAG_TRAILING_CRC: u16 = 1 << 1;

/// Longest path (working directory, executable, mapped file, descriptor).
pub const MAX_PATH: usize = 4096;
/// Longest description of a descriptor the restorer cannot rebuild.
pub const MAX_DESCRIPTION: usize = 4096;
/// Longest argument or environment block (each).
pub const MAX_ARGS: usize = 4 << 20;
/// Longest XSAVE area.
pub const MAX_XSAVE: usize = 64 << 10;
/// Bytes of an auxiliary vector, at most.
pub const MAX_AUXV: usize = 4096;
/// Most pending signals in one section.
pub const MAX_PENDING: usize = 65536;
/// Most socket options of one socket.
pub const MAX_SOCKOPTS: usize = 64;
/// Most entries of one epoll set.
pub const MAX_EPOLL: usize = 1 << 20;
/// Longest payload of a section a reader takes into memory whole (every
/// kind but pages and descriptors, whose bulk data is streamed).
pub const MAX_SMALL_PAYLOAD: u64 = 32 << 20;
/// Longest descriptor description (what precedes the descriptor's data).
pub const MAX_FD_BODY: u64 = 32 << 20;

/// Offset of [`FileHeader::major`] (where a version error points).
pub const MAJOR_OFFSET: u64 = 8;
/// Offset of [`FileHeader::header_len`].
pub const HEADER_LEN_OFFSET: u64 = 12;

/// The header at offset 0 of a process file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct FileHeader {
    /// [`IMAGE_MAGIC`].
    pub magic: [u8; 8],
    /// [`IMAGE_MAJOR`].
    pub major: u16,
    /// [`IMAGE_MINOR`].
    pub minor: u16,
    /// Bytes from the start of the file to the first section (a newer minor
    /// may extend the header; an older reader skips the extension).
    pub header_len: u32,
    /// The process's virtual pid.
    pub vpid: u32,
    /// Zero; reserved for flags.
    pub flags: u32,
    /// Sequence number of the checkpoint (from 1).
    pub seq: u64,
    /// Sequence number of the checkpoint this one is incremental to; 0 for a
    /// full image.
    pub parent_seq: u64,
    /// Wall-clock time of the checkpoint, ns since the Unix epoch.
    pub created_ns: u64,
    /// Zero.
    pub reserved: [u8; 12],
    /// CRC-32C of the 64 header bytes with this field zero.
    pub crc: u32,
}

const _: () = assert!(core::mem::size_of::<FileHeader>() == FILE_HEADER_LEN);

impl FileHeader {
    /// The header this version writes, sealed.
    pub fn new(vpid: u32, seq: u64, parent_seq: u64, created_ns: u64) -> FileHeader {
        let mut h = FileHeader {
            magic: IMAGE_MAGIC,
            major: IMAGE_MAJOR,
            minor: IMAGE_MINOR,
            header_len: FILE_HEADER_LEN as u32,
            vpid,
            flags: 0,
            seq,
            parent_seq,
            created_ns,
            reserved: [0; 12],
            crc: 0,
        };
        h.seal();
        h
    }

    /// CRC-32C of the 64 fixed bytes with `crc` taken as zero.
    pub fn compute_crc(&self) -> u32 {
        header_crc(self, |h| h.crc = 0)
    }

    /// Set `crc` for the current fields.
    pub fn seal(&mut self) {
        self.crc = self.compute_crc();
    }
}

/// CRC-32C of a fixed header with its own checksum field zeroed by `clear`:
/// the checksum every header of the format carries.
pub(crate) fn header_crc<T: IntoBytes + Immutable + Copy>(
    h: &T,
    clear: impl FnOnce(&mut T),
) -> u32 {
    let mut h = *h;
    clear(&mut h);
    crc32c::crc32c(h.as_bytes())
}

/// The fixed header of every section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SectionHeader {
    /// A [`Kind`] code.
    pub kind: u16,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// Position of the section in the file, from 0.
    pub index: u32,
    /// Payload bytes after the header (not counting a trailing checksum).
    pub payload_len: u64,
    /// CRC-32C of the payload; 0 when [`FLAG_TRAILING_CRC`] is set.
    pub payload_crc: u32,
    /// Zero.
    pub reserved: [u8; 8],
    /// CRC-32C of the 32 header bytes with this field zero.
    pub crc: u32,
}

const _: () = assert!(core::mem::size_of::<SectionHeader>() == SECTION_HEADER_LEN);

impl SectionHeader {
    /// A sealed header.
    pub fn new(kind: u16, flags: u16, index: u32, payload_len: u64, payload_crc: u32) -> Self {
        let mut h = SectionHeader {
            kind,
            flags,
            index,
            payload_len,
            payload_crc,
            reserved: [0; 8],
            crc: 0,
        };
        h.seal();
        h
    }

    /// CRC-32C of the 32 header bytes with `crc` taken as zero.
    pub fn compute_crc(&self) -> u32 {
        header_crc(self, |h| h.crc = 0)
    }

    /// Set `crc` for the current fields.
    pub fn seal(&mut self) {
        self.crc = self.compute_crc();
    }

    /// Whether the payload's checksum follows the payload.
    pub fn trailing_crc(&self) -> bool {
        self.flags & FLAG_TRAILING_CRC != 0
    }

    /// Whether a reader that does not know the kind may skip the section.
    pub fn optional(&self) -> bool {
        self.flags & FLAG_OPTIONAL != 0
    }
}

/// What a section holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Kind {
    /// The process: ids, umask, personality, paths, arguments
    /// ([`sections::ProcessInfo`]). Always the first section, once.
    Process = 1,
    /// Every resource limit ([`sections::Rlimits`]), at most once.
    Rlimits = 2,
    /// One thread: registers, signal mask, per-thread kernel state
    /// ([`sections::ThreadInfo`]).
    Thread = 3,
    /// The 64 signal actions ([`sections::SigActions`]), at most once.
    SigActions = 4,
    /// Pending signals of the process or of one thread
    /// ([`sections::PendingInfo`]).
    Pending = 5,
    /// One mapping of the address space ([`sections::MappingInfo`]).
    Mapping = 6,
    /// Page runs of the mapping described last ([`sections::PagesInfo`]).
    Pages = 7,
    /// One file descriptor ([`sections::FdInfo`]).
    Fd = 8,
    /// `ITIMER_REAL`, `ITIMER_VIRTUAL`, `ITIMER_PROF`
    /// ([`sections::Itimers`]), at most once.
    Itimers = 9,
    /// One POSIX timer ([`sections::PosixTimer`]).
    PosixTimer = 10,
    /// The address space's bookkeeping, the CPU's register layout, the
    /// vDSO's identity and the auxiliary vector
    /// ([`sections::AddressSpace`]), at most once.
    AddressSpace = 11,
    /// The last section: the count of sections before it and the running
    /// checksum ([`sections::End`]).
    End = 255,
}

impl Kind {
    /// The kind for a code, if this version knows it.
    pub fn from_u16(code: u16) -> Option<Kind> {
        Some(match code {
            1 => Kind::Process,
            2 => Kind::Rlimits,
            3 => Kind::Thread,
            4 => Kind::SigActions,
            5 => Kind::Pending,
            6 => Kind::Mapping,
            7 => Kind::Pages,
            8 => Kind::Fd,
            9 => Kind::Itimers,
            10 => Kind::PosixTimer,
            11 => Kind::AddressSpace,
            255 => Kind::End,
            _ => return None,
        })
    }

    /// The lower-case name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Process => "process",
            Kind::Rlimits => "rlimits",
            Kind::Thread => "thread",
            Kind::SigActions => "signal actions",
            Kind::Pending => "pending signals",
            Kind::Mapping => "mapping",
            Kind::Pages => "pages",
            Kind::Fd => "descriptor",
            Kind::Itimers => "interval timers",
            Kind::PosixTimer => "POSIX timer",
            Kind::AddressSpace => "address space",
            Kind::End => "end",
        }
    }
}

/// Whether `page` (one page of memory) is all zeros: such pages are never
/// stored in a full image.
pub fn is_zero_page(page: &[u8]) -> bool {
    page.iter().all(|&b| b == 0)
}
