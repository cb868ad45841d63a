//! Reading a process file, section by section, checking everything.
//!
//! [`ProcessReader`] reads from any [`Read`] whose length is known up
//! front and never holds more than one small section in memory: page runs
//! and descriptor data go, in pieces of at most [`CHUNK`] bytes, to a
//! [`Visitor`]. Every length read from the file is checked against the bytes
//! left and against its cap before anything is allocated. Bulk data reaches
//! the visitor before its section's checksum has been checked: a caller
//! that acts on it (a restorer) first validates the whole image
//! ([`crate::dir::Image::validate`]), or discards what it got when an error
//! comes.

use crate::sections::*;
use crate::write::{mapping_problem, run_problem};
use crate::{
    FileHeader, Kind, SectionHeader, FILE_HEADER_LEN, HEADER_LEN_OFFSET, IMAGE_MAGIC, IMAGE_MAJOR,
    MAJOR_OFFSET, MAX_ARGS, MAX_AUXV, MAX_DESCRIPTION, MAX_EPOLL, MAX_FD_BODY, MAX_PATH,
    MAX_PENDING, MAX_SMALL_PAYLOAD, MAX_SOCKOPTS, MAX_XSAVE, PAGE_SIZE, SECTION_HEADER_LEN,
    TRAILER_LEN,
};
use std::collections::HashSet;
use std::format;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::string::String;
use std::vec;
use std::vec::Vec;
use zerocopy::FromBytes;

/// Largest piece of bulk data handed to a [`Visitor`] at once (a whole
/// number of pages).
pub const CHUNK: usize = 64 << 10;

/// Longest file header a reader accepts (a newer minor's extension).
pub const MAX_FILE_HEADER: u32 = 4096;

/// What is wrong with an image, and where. Every variant names the file;
/// all but [`ImageError::NoManifest`] the byte offset. The `Display` form is
/// one line, `PATH: offset N: what`.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The directory has no manifest: the checkpoint was interrupted.
    #[error("{}: no manifest.fimg: the checkpoint did not finish", dir.display())]
    NoManifest {
        /// The image directory.
        dir: PathBuf,
    },
    /// An I/O error.
    #[error("{}: offset {offset}: {op}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Where in it.
        offset: u64,
        /// What was being done.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file does not start with the magic.
    #[error("{}: offset {offset}: not a Ferry {what} (bad magic)", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// Always 0.
        offset: u64,
        /// "process image" or "manifest".
        what: &'static str,
    },
    /// Another major version.
    #[error("{}: offset {offset}: {what} format version {major}.{minor} is not supported (this reader reads version {supported}.x)", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Offset of the version field.
        offset: u64,
        /// "process image" or "manifest".
        what: &'static str,
        /// The file's major version.
        major: u16,
        /// The file's minor version.
        minor: u16,
        /// The major version this reader reads.
        supported: u16,
    },
    /// A header's checksum does not match.
    #[error("{}: offset {offset}: {what} checksum mismatch", path.display())]
    BadHeaderChecksum {
        /// The file.
        path: PathBuf,
        /// Start of the header.
        offset: u64,
        /// Which header.
        what: &'static str,
    },
    /// A section's payload checksum does not match.
    #[error("{}: offset {offset}: section #{index} ({kind}) payload checksum mismatch", path.display())]
    BadSectionChecksum {
        /// The file.
        path: PathBuf,
        /// Start of the section.
        offset: u64,
        /// Its number.
        index: u32,
        /// Its kind's name.
        kind: &'static str,
    },
    /// The manifest's body checksum does not match.
    #[error("{}: offset {offset}: {what} checksum mismatch", path.display())]
    BadPayloadChecksum {
        /// The file.
        path: PathBuf,
        /// Start of the checksummed bytes.
        offset: u64,
        /// What they are.
        what: &'static str,
    },
    /// The file ends before what it declares.
    #[error("{}: offset {offset}: truncated: {needed} bytes needed, {available} left", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Start of the header or section cut short.
        offset: u64,
        /// Bytes it needs.
        needed: u64,
        /// Bytes left from `offset`.
        available: u64,
    },
    /// A length or count outside its bounds, refused before allocating.
    #[error("{}: offset {offset}: {what} {len} is out of bounds (at most {max})", path.display())]
    TooLong {
        /// The file.
        path: PathBuf,
        /// Start of the header or section holding it.
        offset: u64,
        /// What it is.
        what: &'static str,
        /// Its value.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// A section of a kind this reader does not know, not marked optional.
    #[error("{}: offset {offset}: section #{index} has kind {kind}, unknown to this reader and not optional", path.display())]
    UnknownKind {
        /// The file.
        path: PathBuf,
        /// Start of the section.
        offset: u64,
        /// Its number.
        index: u32,
        /// The kind code.
        kind: u16,
    },
    /// A descriptor of a kind this reader does not know.
    #[error("{}: offset {offset}: descriptor {fd} has kind {kind}, unknown to this reader", path.display())]
    UnknownFdKind {
        /// The file.
        path: PathBuf,
        /// Start of the section.
        offset: u64,
        /// The descriptor number.
        fd: u32,
        /// The kind code.
        kind: u16,
    },
    /// A page run that is not page-aligned or not inside its mapping.
    #[error("{}: offset {offset}: pages section: run at offset {run_offset}, address {addr:#x}: {why} (mapping {start:#x}-{end:#x})", path.display())]
    BadPageAddress {
        /// The file.
        path: PathBuf,
        /// Start of the pages section.
        offset: u64,
        /// Start of the run.
        run_offset: u64,
        /// The run's address.
        addr: u64,
        /// The mapping's start.
        start: u64,
        /// The mapping's end.
        end: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// The file ends after a whole section without an end section.
    #[error("{}: offset {offset}: no end section after {sections} sections: the file is cut short", path.display())]
    MissingEnd {
        /// The file.
        path: PathBuf,
        /// The end of the file.
        offset: u64,
        /// Sections read.
        sections: u32,
    },
    /// Bytes follow the end.
    #[error("{}: offset {offset}: data after the end", path.display())]
    AfterEnd {
        /// The file.
        path: PathBuf,
        /// Where the extra bytes start.
        offset: u64,
    },
    /// A value that breaks a rule of the format.
    #[error("{}: offset {offset}: {why}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Start of the header, section or entry.
        offset: u64,
        /// What is wrong.
        why: String,
    },
    /// A process file that is not what the manifest lists.
    #[error("{}: offset {offset}: {what} is {file:#x} but the manifest says {manifest:#x}", path.display())]
    ManifestMismatch {
        /// The process file.
        path: PathBuf,
        /// 0 for the header fields, the file's end for length and checksum.
        offset: u64,
        /// Which value.
        what: &'static str,
        /// What the file has.
        file: u64,
        /// What the manifest lists.
        manifest: u64,
    },
    /// The visitor refused data.
    #[error("{}: offset {offset}: {source}", path.display())]
    Visitor {
        /// The file.
        path: PathBuf,
        /// Start of the section being read.
        offset: u64,
        /// What the visitor said.
        #[source]
        source: io::Error,
    },
}

impl ImageError {
    /// The file the error is about (the directory for
    /// [`ImageError::NoManifest`]).
    pub fn path(&self) -> &Path {
        match self {
            ImageError::NoManifest { dir } => dir,
            ImageError::Io { path, .. }
            | ImageError::BadMagic { path, .. }
            | ImageError::UnsupportedVersion { path, .. }
            | ImageError::BadHeaderChecksum { path, .. }
            | ImageError::BadSectionChecksum { path, .. }
            | ImageError::BadPayloadChecksum { path, .. }
            | ImageError::Truncated { path, .. }
            | ImageError::TooLong { path, .. }
            | ImageError::UnknownKind { path, .. }
            | ImageError::UnknownFdKind { path, .. }
            | ImageError::BadPageAddress { path, .. }
            | ImageError::MissingEnd { path, .. }
            | ImageError::AfterEnd { path, .. }
            | ImageError::Invalid { path, .. }
            | ImageError::ManifestMismatch { path, .. }
            | ImageError::Visitor { path, .. } => path,
        }
    }

    /// The byte offset the error points at (none for
    /// [`ImageError::NoManifest`]).
    pub fn offset(&self) -> Option<u64> {
        match *self {
            ImageError::NoManifest { .. } => None,
            ImageError::Io { offset, .. }
            | ImageError::BadMagic { offset, .. }
            | ImageError::UnsupportedVersion { offset, .. }
            | ImageError::BadHeaderChecksum { offset, .. }
            | ImageError::BadSectionChecksum { offset, .. }
            | ImageError::BadPayloadChecksum { offset, .. }
            | ImageError::Truncated { offset, .. }
            | ImageError::TooLong { offset, .. }
            | ImageError::UnknownKind { offset, .. }
            | ImageError::UnknownFdKind { offset, .. }
            | ImageError::BadPageAddress { offset, .. }
            | ImageError::MissingEnd { offset, .. }
            | ImageError::AfterEnd { offset, .. }
            | ImageError::Invalid { offset, .. }
            | ImageError::ManifestMismatch { offset, .. }
            | ImageError::Visitor { offset, .. } => Some(offset),
        }
    }
}

/// The process section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// The fixed part.
    pub info: ProcessInfo,
    /// The working directory.
    pub cwd: Vec<u8>,
    /// The executable's path.
    pub exe: Vec<u8>,
    /// The argument block, if recorded.
    pub argv: Option<Vec<u8>>,
    /// The environment block, if recorded.
    pub env: Option<Vec<u8>>,
}

/// A thread section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thread {
    /// The fixed part.
    pub info: ThreadInfo,
    /// The XSAVE area.
    pub xsave: Vec<u8>,
}

/// An address-space section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressSpaceSection {
    /// The fixed part.
    pub info: AddressSpace,
    /// The auxiliary vector, as `/proc/<pid>/auxv` gave it.
    pub auxv: Vec<u8>,
}

/// A pending-signals section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The thread (0: the process-wide queue).
    pub vtid: u32,
    /// The `siginfo_t` of each pending signal.
    pub siginfo: Vec<[u8; SIGINFO_LEN]>,
}

/// A mapping section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The fixed part.
    pub info: MappingInfo,
    /// The path or name.
    pub path: Vec<u8>,
}

/// What a pages section held (its bytes went to the [`Visitor`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagesSummary {
    /// The mapping's start.
    pub mapping_start: u64,
    /// Runs.
    pub runs: u64,
    /// Pages with data.
    pub data_pages: u64,
    /// Pages marked zero.
    pub zero_pages: u64,
}

/// A descriptor's kind and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdKind {
    /// A regular file and its path.
    Regular(RegularFile, Vec<u8>),
    /// A pipe or FIFO end and the FIFO's path.
    Pipe(PipeEnd, Vec<u8>),
    /// A unix socketpair end.
    UnixPair(UnixPairEnd),
    /// A listening TCP socket and its options.
    TcpListen(SocketInfo, Vec<SockOpt>),
    /// A UDP socket and its options.
    Udp(SocketInfo, Vec<SockOpt>),
    /// A TCP socket not yet bound, connected or listening, and its options.
    TcpUnbound(SocketInfo, Vec<SockOpt>),
    /// An epoll set and its entries.
    Epoll(EpollSet, Vec<EpollEntry>),
    /// An eventfd.
    Eventfd(Eventfd),
    /// A timerfd.
    Timerfd(Timerfd),
    /// A signalfd.
    Signalfd(Signalfd),
    /// A descriptor the restorer cannot rebuild, and what it was.
    Other(Vec<u8>),
}

/// A descriptor section (its data went to the [`Visitor`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fd {
    /// The fixed part.
    pub info: FdInfo,
    /// The kind and body.
    pub kind: FdKind,
}

/// One section, read and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
// Sections are read one at a time; boxing the large ones buys nothing.
#[allow(clippy::large_enum_variant)]
pub enum Section {
    /// The process.
    Process(Process),
    /// The resource limits.
    Rlimits(Rlimits),
    /// A thread.
    Thread(Thread),
    /// The signal actions.
    SigActions(SigActions),
    /// Pending signals.
    Pending(Pending),
    /// A mapping.
    Mapping(Mapping),
    /// Pages of the last mapping.
    Pages(PagesSummary),
    /// A descriptor.
    Fd(Fd),
    /// The interval timers.
    Itimers(Itimers),
    /// A POSIX timer.
    PosixTimer(PosixTimer),
    /// The address space's bookkeeping.
    AddressSpace(AddressSpaceSection),
    /// An optional section of a kind this reader does not know, checked and
    /// skipped; or, in [`ProcessReader::skim_all`], a pages section.
    Skipped {
        /// Its kind code.
        kind: u16,
        /// Its payload length.
        len: u64,
    },
    /// The end.
    End(End),
}

/// Receives what a [`ProcessReader`] reads. Every method may refuse with
/// an error, which ends the reading ([`ImageError::Visitor`]).
pub trait Visitor {
    /// A section, once read and checked (for pages and descriptors: after
    /// their data).
    fn section(&mut self, offset: u64, section: &Section) -> io::Result<()> {
        let _ = (offset, section);
        Ok(())
    }

    /// `bytes` (whole pages) of the mapping starting at `mapping_start`,
    /// for the memory at `addr`.
    fn page_data(&mut self, mapping_start: u64, addr: u64, bytes: &[u8]) -> io::Result<()> {
        let _ = (mapping_start, addr, bytes);
        Ok(())
    }

    /// Where the `len` bytes of page data at `addr` (of the mapping
    /// starting at `mapping_start`) are to be read, when the visitor wants
    /// them straight in its own memory: a slice of exactly `len` bytes. They
    /// are then checked as they arrive and [`Visitor::page_data`] is not
    /// called for them. `None` (the default): `page_data` gets them.
    fn page_target(
        &mut self,
        mapping_start: u64,
        addr: u64,
        len: u64,
    ) -> io::Result<Option<&mut [u8]>> {
        let _ = (mapping_start, addr, len);
        Ok(None)
    }

    /// `count` pages at `addr` that are zero.
    fn zero_pages(&mut self, mapping_start: u64, addr: u64, count: u64) -> io::Result<()> {
        let _ = (mapping_start, addr, count);
        Ok(())
    }

    /// `bytes` of descriptor `fd`'s data, starting at `pos` in it.
    fn fd_data(&mut self, fd: u32, pos: u64, bytes: &[u8]) -> io::Result<()> {
        let _ = (fd, pos, bytes);
        Ok(())
    }
}

/// A [`Visitor`] that takes everything and keeps nothing: reading with it
/// checks a file.
#[derive(Debug, Default, Clone, Copy)]
pub struct Check;

impl Visitor for Check {}

/// What reading a whole process file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessSummary {
    /// The file header.
    pub header: FileHeader,
    /// The process section's parent vpid.
    pub parent_vpid: u32,
    /// Sections, the end section included.
    pub sections: u32,
    /// Length of the file.
    pub len: u64,
    /// CRC-32C of the whole file.
    pub crc: u32,
}

/// What has been seen so far, for the rules between sections.
#[derive(Default)]
struct Seen {
    parent_vpid: Option<u32>,
    rlimits: bool,
    sigactions: bool,
    itimers: bool,
    address_space: bool,
    threads: HashSet<u32>,
    fds: HashSet<u32>,
    timers: HashSet<i32>,
    mapping: Option<MappingInfo>,
    /// Lowest address the next page run of that mapping may start at.
    pages_next: u64,
}

/// The payload being read.
struct Payload {
    /// Start of the section.
    section: u64,
    index: u32,
    kind: &'static str,
    left: u64,
    crc: u32,
    trailing: bool,
    header_crc: u32,
}

/// A cursor over a payload held in memory.
struct Cur<'a> {
    bytes: &'a [u8],
}

impl<'a> Cur<'a> {
    fn fixed<T: FromBytes>(&mut self) -> Option<T> {
        let (v, rest) = T::read_from_prefix(self.bytes).ok()?;
        self.bytes = rest;
        Some(v)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.bytes.len() {
            return None;
        }
        let (a, b) = self.bytes.split_at(n);
        self.bytes = b;
        Some(a)
    }
}

/// Reads one process file.
pub struct ProcessReader<R> {
    src: R,
    path: PathBuf,
    file_len: u64,
    pos: u64,
    running: u32,
    header: FileHeader,
    index: u32,
    done: bool,
    seen: Seen,
    buf: Vec<u8>,
    /// Set by [`ProcessReader::skim_all`]: moves the source over page
    /// data unread.
    skip: Option<fn(&mut R, u64) -> io::Result<()>>,
    /// Page data was skipped: the file's running checksum is unknown.
    skimmed: bool,
}

impl<R> std::fmt::Debug for ProcessReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessReader")
            .field("path", &self.path)
            .field("pos", &self.pos)
            .field("index", &self.index)
            .finish()
    }
}

impl ProcessReader<io::BufReader<std::fs::File>> {
    /// Open the process file at `path`.
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        let io = |op, source| ImageError::Io {
            path: path.into(),
            offset: 0,
            op,
            source,
        };
        let file = std::fs::File::open(path).map_err(|e| io("open", e))?;
        let len = file.metadata().map_err(|e| io("stat", e))?.len();
        ProcessReader::new(io::BufReader::with_capacity(CHUNK, file), len, path)
    }
}

impl<R: Read> ProcessReader<R> {
    /// Read and check the file header of `src`, which holds `file_len`
    /// bytes; `path` names it in errors.
    ///
    /// Checks, in this order: the magic, the major version (a newer minor
    /// is accepted), the checksum, and `header_len` (at least 64, at most
    /// [`MAX_FILE_HEADER`], inside the file).
    pub fn new(src: R, file_len: u64, path: &Path) -> Result<Self, ImageError> {
        let mut r = ProcessReader {
            src,
            path: path.into(),
            file_len,
            pos: 0,
            running: 0,
            header: FileHeader::new(0, 0, 0, 0),
            index: 0,
            done: false,
            seen: Seen::default(),
            buf: Vec::new(),
            skip: None,
            skimmed: false,
        };
        let mut head = [0u8; FILE_HEADER_LEN];
        let have = file_len.min(FILE_HEADER_LEN as u64) as usize;
        r.read(&mut head[..have])?;
        if !IMAGE_MAGIC.starts_with(&head[..have.min(8)]) || have == 0 {
            return Err(ImageError::BadMagic {
                path: r.path.clone(),
                offset: 0,
                what: "process image",
            });
        }
        let truncated = ImageError::Truncated {
            path: r.path.clone(),
            offset: 0,
            needed: FILE_HEADER_LEN as u64,
            available: file_len,
        };
        if have < 12 {
            return Err(truncated);
        }
        let major = u16::from_le_bytes([head[8], head[9]]);
        let minor = u16::from_le_bytes([head[10], head[11]]);
        if major != IMAGE_MAJOR {
            return Err(ImageError::UnsupportedVersion {
                path: r.path.clone(),
                offset: MAJOR_OFFSET,
                what: "process image",
                major,
                minor,
                supported: IMAGE_MAJOR,
            });
        }
        if have < FILE_HEADER_LEN {
            return Err(truncated);
        }
        let Ok(header) = FileHeader::read_from_bytes(&head) else {
            return Err(truncated);
        };
        if header.compute_crc() != header.crc {
            return Err(ImageError::BadHeaderChecksum {
                path: r.path.clone(),
                offset: 0,
                what: "file header",
            });
        }
        if header.header_len < FILE_HEADER_LEN as u32 || header.header_len > MAX_FILE_HEADER {
            return Err(ImageError::TooLong {
                path: r.path.clone(),
                offset: HEADER_LEN_OFFSET,
                what: "header length (at least 64)",
                len: header.header_len as u64,
                max: MAX_FILE_HEADER as u64,
            });
        }
        if header.header_len as u64 > file_len {
            return Err(ImageError::Truncated {
                path: r.path.clone(),
                offset: 0,
                needed: header.header_len as u64,
                available: file_len,
            });
        }
        let mut ext = vec![0u8; header.header_len as usize - FILE_HEADER_LEN];
        r.read(&mut ext)?;
        r.header = header;
        r.buf = vec![0u8; CHUNK];
        Ok(r)
    }

    /// The file header.
    pub fn header(&self) -> &FileHeader {
        &self.header
    }

    /// The offset of the next section.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), ImageError> {
        if let Err(e) = self.src.read_exact(buf) {
            return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
                // The file was shorter than its length said.
                ImageError::Truncated {
                    path: self.path.clone(),
                    offset: self.pos,
                    needed: buf.len() as u64,
                    available: 0,
                }
            } else {
                ImageError::Io {
                    path: self.path.clone(),
                    offset: self.pos,
                    op: "read",
                    source: e,
                }
            });
        }
        self.running = crc32c::crc32c_append(self.running, buf);
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn invalid(&self, offset: u64, why: String) -> ImageError {
        ImageError::Invalid {
            path: self.path.clone(),
            offset,
            why,
        }
    }

    fn too_long(&self, offset: u64, what: &'static str, len: u64, max: u64) -> ImageError {
        ImageError::TooLong {
            path: self.path.clone(),
            offset,
            what,
            len,
            max,
        }
    }

    /// Read `buf.len()` bytes of the payload `p`.
    fn take(&mut self, p: &mut Payload, buf: &mut [u8], what: &str) -> Result<(), ImageError> {
        if buf.len() as u64 > p.left {
            return Err(self.invalid(
                p.section,
                format!(
                    "section #{} ({}): payload too short for {what} at offset {}",
                    p.index, p.kind, self.pos
                ),
            ));
        }
        self.read(buf)?;
        p.crc = crc32c::crc32c_append(p.crc, buf);
        p.left -= buf.len() as u64;
        Ok(())
    }

    /// Read `n` bytes of `p` in chunks, giving each to `f` with its offset
    /// from the first.
    fn stream(
        &mut self,
        p: &mut Payload,
        n: u64,
        what: &str,
        f: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> Result<(), ImageError> {
        if n > p.left {
            return Err(self.invalid(
                p.section,
                format!(
                    "section #{} ({}): payload too short for {what} at offset {}",
                    p.index, p.kind, self.pos
                ),
            ));
        }
        let mut buf = std::mem::take(&mut self.buf);
        let mut done = 0u64;
        let result = (|| {
            while done < n {
                let k = (n - done).min(CHUNK as u64) as usize;
                self.take(p, &mut buf[..k], what)?;
                f(done, &buf[..k]).map_err(|source| ImageError::Visitor {
                    path: self.path.clone(),
                    offset: p.section,
                    source,
                })?;
                done += k as u64;
            }
            Ok(())
        })();
        self.buf = buf;
        result
    }

    /// Skip what is left of `p` (what a newer minor appended), read the
    /// trailing checksum if any, and check the payload's checksum.
    fn finish_payload(&mut self, mut p: Payload) -> Result<(), ImageError> {
        let left = p.left;
        self.stream(&mut p, left, "its rest", &mut |_, _| Ok(()))?;
        let expected = if p.trailing {
            let mut t = [0u8; TRAILER_LEN];
            self.read(&mut t)?;
            u32::from_le_bytes(t)
        } else {
            p.header_crc
        };
        if p.crc != expected {
            return Err(ImageError::BadSectionChecksum {
                path: self.path.clone(),
                offset: p.section,
                index: p.index,
                kind: p.kind,
            });
        }
        Ok(())
    }

    /// Read the next section. `Ok(None)` after the end section (which is
    /// returned once, as [`Section::End`]).
    pub fn next_section(&mut self, v: &mut dyn Visitor) -> Result<Option<Section>, ImageError> {
        if self.done {
            return Ok(None);
        }
        let offset = self.pos;
        let running_before = self.running;
        let left = self.file_len - self.pos;
        if left == 0 {
            return Err(ImageError::MissingEnd {
                path: self.path.clone(),
                offset,
                sections: self.index,
            });
        }
        let path = self.path.clone();
        let truncated = |needed: u64| ImageError::Truncated {
            path: path.clone(),
            offset,
            needed,
            available: left,
        };
        if left < SECTION_HEADER_LEN as u64 {
            return Err(truncated(SECTION_HEADER_LEN as u64));
        }
        let mut hb = [0u8; SECTION_HEADER_LEN];
        self.read(&mut hb)?;
        let Ok(h) = SectionHeader::read_from_bytes(&hb) else {
            return Err(self.invalid(offset, "section header unreadable".into()));
        };
        if h.compute_crc() != h.crc {
            return Err(ImageError::BadHeaderChecksum {
                path: self.path.clone(),
                offset,
                what: "section header",
            });
        }
        if h.index != self.index {
            return Err(self.invalid(
                offset,
                format!(
                    "section numbered #{} where #{} belongs",
                    h.index, self.index
                ),
            ));
        }
        let trailer = if h.trailing_crc() {
            TRAILER_LEN as u64
        } else {
            0
        };
        let room = left - SECTION_HEADER_LEN as u64;
        if h.payload_len > room || room - h.payload_len < trailer {
            let needed = (SECTION_HEADER_LEN as u64)
                .saturating_add(h.payload_len)
                .saturating_add(trailer);
            return Err(truncated(needed));
        }
        let kind = Kind::from_u16(h.kind);
        let mut p = Payload {
            section: offset,
            index: h.index,
            kind: kind.map_or("unknown", Kind::name),
            left: h.payload_len,
            crc: 0,
            trailing: h.trailing_crc(),
            header_crc: h.payload_crc,
        };
        let Some(kind) = kind else {
            if !h.optional() {
                return Err(ImageError::UnknownKind {
                    path: self.path.clone(),
                    offset,
                    index: h.index,
                    kind: h.kind,
                });
            }
            self.finish_payload(p)?;
            self.index += 1;
            return Ok(Some(Section::Skipped {
                kind: h.kind,
                len: h.payload_len,
            }));
        };
        if (self.index == 0) != (kind == Kind::Process) {
            return Err(self.invalid(
                offset,
                format!(
                    "section #{} is a {} section; the process section comes first, once",
                    self.index,
                    kind.name()
                ),
            ));
        }
        let section = match kind {
            Kind::Pages if self.skip.is_some() => {
                let n = h.payload_len + trailer;
                if let Some(skip) = self.skip {
                    skip(&mut self.src, n).map_err(|source| ImageError::Io {
                        path: self.path.clone(),
                        offset: self.pos,
                        op: "seek",
                        source,
                    })?;
                }
                self.pos += n;
                self.skimmed = true;
                Section::Skipped {
                    kind: h.kind,
                    len: h.payload_len,
                }
            }
            // Streamed: checked as they are read, the checksum at the end.
            Kind::Pages | Kind::Fd => {
                let section = if kind == Kind::Pages {
                    self.pages(&mut p, v)?
                } else {
                    self.fd(&mut p, v)?
                };
                self.finish_payload(p)?;
                section
            }
            // Read whole: the checksum first, then the contents.
            _ => {
                if h.payload_len > MAX_SMALL_PAYLOAD {
                    return Err(self.too_long(
                        offset,
                        "section payload length",
                        h.payload_len,
                        MAX_SMALL_PAYLOAD,
                    ));
                }
                let mut payload = vec![0u8; h.payload_len as usize];
                self.take(&mut p, &mut payload, "its payload")?;
                self.finish_payload(p)?;
                self.small(kind, offset, &payload, running_before)?
            }
        };
        self.index += 1;
        if kind == Kind::End {
            if self.pos != self.file_len {
                return Err(ImageError::AfterEnd {
                    path: self.path.clone(),
                    offset: self.pos,
                });
            }
            self.done = true;
        }
        Ok(Some(section))
    }

    /// Parse a section held in memory, its checksum already checked.
    fn small(
        &mut self,
        kind: Kind,
        offset: u64,
        payload: &[u8],
        running_before: u32,
    ) -> Result<Section, ImageError> {
        let mut c = Cur { bytes: payload };
        let short = |what: &str| {
            self.invalid(
                offset,
                format!("{} section: payload too short for {what}", kind.name()),
            )
        };
        Ok(match kind {
            Kind::Process => {
                let info: ProcessInfo = c.fixed().ok_or_else(|| short("its fixed part"))?;
                if info.vpid != self.header.vpid {
                    return Err(self.invalid(
                        offset,
                        format!(
                            "process section has vpid {}, the file header {}",
                            info.vpid, self.header.vpid
                        ),
                    ));
                }
                for (what, len, max) in [
                    ("working directory length", info.cwd_len, MAX_PATH),
                    ("executable path length", info.exe_len, MAX_PATH),
                    ("argument block length", info.argv_len, MAX_ARGS),
                    ("environment block length", info.env_len, MAX_ARGS),
                ] {
                    if len as usize > max {
                        return Err(self.too_long(offset, what, len as u64, max as u64));
                    }
                }
                if (info.flags & PROC_HAS_ARGV == 0 && info.argv_len != 0)
                    || (info.flags & PROC_HAS_ENV == 0 && info.env_len != 0)
                {
                    return Err(self.invalid(
                        offset,
                        "process section: argument or environment length without its flag".into(),
                    ));
                }
                let cwd = c
                    .take(info.cwd_len as usize)
                    .ok_or_else(|| short("the working directory"))?;
                let exe = c
                    .take(info.exe_len as usize)
                    .ok_or_else(|| short("the executable path"))?;
                let argv = c
                    .take(info.argv_len as usize)
                    .ok_or_else(|| short("the arguments"))?;
                let env = c
                    .take(info.env_len as usize)
                    .ok_or_else(|| short("the environment"))?;
                self.seen.parent_vpid = Some(info.parent_vpid);
                Section::Process(Process {
                    info,
                    cwd: cwd.to_vec(),
                    exe: exe.to_vec(),
                    argv: (info.flags & PROC_HAS_ARGV != 0).then(|| argv.to_vec()),
                    env: (info.flags & PROC_HAS_ENV != 0).then(|| env.to_vec()),
                })
            }
            Kind::Rlimits => {
                let r: Rlimits = c.fixed().ok_or_else(|| short("the limits"))?;
                if std::mem::replace(&mut self.seen.rlimits, true) {
                    return Err(self.invalid(offset, format!("a second {} section", kind.name())));
                }
                Section::Rlimits(r)
            }
            Kind::SigActions => {
                let a: SigActions = c.fixed().ok_or_else(|| short("the actions"))?;
                if std::mem::replace(&mut self.seen.sigactions, true) {
                    return Err(self.invalid(offset, format!("a second {} section", kind.name())));
                }
                Section::SigActions(a)
            }
            Kind::AddressSpace => {
                let info: AddressSpace = c.fixed().ok_or_else(|| short("its fixed part"))?;
                if info.auxv_len as usize > MAX_AUXV {
                    return Err(self.too_long(
                        offset,
                        "auxiliary vector length",
                        info.auxv_len as u64,
                        MAX_AUXV as u64,
                    ));
                }
                let auxv = c
                    .take(info.auxv_len as usize)
                    .ok_or_else(|| short("the auxiliary vector"))?;
                if std::mem::replace(&mut self.seen.address_space, true) {
                    return Err(self.invalid(offset, format!("a second {} section", kind.name())));
                }
                Section::AddressSpace(AddressSpaceSection {
                    info,
                    auxv: auxv.to_vec(),
                })
            }
            Kind::Itimers => {
                let t: Itimers = c.fixed().ok_or_else(|| short("the timers"))?;
                if std::mem::replace(&mut self.seen.itimers, true) {
                    return Err(self.invalid(offset, format!("a second {} section", kind.name())));
                }
                Section::Itimers(t)
            }
            Kind::Thread => {
                let info: ThreadInfo = c.fixed().ok_or_else(|| short("its fixed part"))?;
                if info.xsave_len as usize > MAX_XSAVE {
                    return Err(self.too_long(
                        offset,
                        "XSAVE area length",
                        info.xsave_len as u64,
                        MAX_XSAVE as u64,
                    ));
                }
                let xsave = c
                    .take(info.xsave_len as usize)
                    .ok_or_else(|| short("the XSAVE area"))?;
                if info.vtid == 0 || !self.seen.threads.insert(info.vtid) {
                    return Err(self.invalid(
                        offset,
                        format!("thread {} is 0 or appears twice", info.vtid),
                    ));
                }
                Section::Thread(Thread {
                    info,
                    xsave: xsave.to_vec(),
                })
            }
            Kind::Pending => {
                let info: PendingInfo = c.fixed().ok_or_else(|| short("its fixed part"))?;
                if info.count as usize > MAX_PENDING {
                    return Err(self.too_long(
                        offset,
                        "pending signal count",
                        info.count as u64,
                        MAX_PENDING as u64,
                    ));
                }
                let raw = c
                    .take(info.count as usize * SIGINFO_LEN)
                    .ok_or_else(|| short("its siginfo"))?;
                let siginfo = raw
                    .chunks_exact(SIGINFO_LEN)
                    .map(|s| {
                        let mut a = [0u8; SIGINFO_LEN];
                        a.copy_from_slice(s);
                        a
                    })
                    .collect();
                Section::Pending(Pending {
                    vtid: info.vtid,
                    siginfo,
                })
            }
            Kind::Mapping => {
                let info: MappingInfo = c.fixed().ok_or_else(|| short("its fixed part"))?;
                if info.path_len as usize > MAX_PATH {
                    return Err(self.too_long(
                        offset,
                        "mapping path length",
                        info.path_len as u64,
                        MAX_PATH as u64,
                    ));
                }
                if let Some(why) = mapping_problem(&info) {
                    return Err(self.invalid(
                        offset,
                        format!("mapping {:#x}-{:#x}: {why}", info.start, info.end),
                    ));
                }
                if let Some(prev) = self.seen.mapping {
                    if info.start < prev.end {
                        return Err(self.invalid(
                            offset,
                            format!(
                                "mapping {:#x}-{:#x} starts before the end of the previous one ({:#x})",
                                info.start, info.end, prev.end
                            ),
                        ));
                    }
                }
                let path = c
                    .take(info.path_len as usize)
                    .ok_or_else(|| short("its path"))?;
                self.seen.mapping = Some(info);
                self.seen.pages_next = info.start;
                Section::Mapping(Mapping {
                    info,
                    path: path.to_vec(),
                })
            }
            Kind::PosixTimer => {
                let t: PosixTimer = c.fixed().ok_or_else(|| short("the timer"))?;
                if !self.seen.timers.insert(t.id) {
                    return Err(self.invalid(offset, format!("POSIX timer {} appears twice", t.id)));
                }
                Section::PosixTimer(t)
            }
            Kind::End => {
                let e: End = c.fixed().ok_or_else(|| short("its fields"))?;
                if self.seen.threads.is_empty() {
                    return Err(self.invalid(offset, "the image has no thread section".into()));
                }
                if e.sections != self.index as u64
                    || e.bytes != offset
                    || (e.running_crc != running_before && !self.skimmed)
                {
                    return Err(self.invalid(
                        offset,
                        format!(
                            "end section says {} sections in {} bytes (crc {:#x}); the file has {} in {} (crc {:#x})",
                            e.sections, e.bytes, e.running_crc, self.index, offset, running_before
                        ),
                    ));
                }
                Section::End(e)
            }
            Kind::Pages | Kind::Fd => {
                return Err(self.invalid(offset, "streamed kind read whole".into()));
            }
        })
    }

    fn pages(&mut self, p: &mut Payload, v: &mut dyn Visitor) -> Result<Section, ImageError> {
        let offset = p.section;
        let Some(m) = self.seen.mapping.filter(|m| m.special == SPECIAL_NONE) else {
            return Err(self.invalid(
                offset,
                "pages section without an ordinary mapping before it (the vDSO and vvar carry no content)"
                    .into(),
            ));
        };
        let mut b = [0u8; PagesInfo::LEN];
        self.take(p, &mut b, "its fixed part")?;
        let Ok(info) = PagesInfo::read_from_bytes(&b) else {
            return Err(self.invalid(offset, "pages header unreadable".into()));
        };
        if info.mapping_start != m.start {
            return Err(self.invalid(
                offset,
                format!(
                    "pages section for the mapping at {:#x} follows the mapping at {:#x}",
                    info.mapping_start, m.start
                ),
            ));
        }
        if info.run_count > p.left / PageRun::LEN as u64 {
            return Err(self.too_long(
                offset,
                "page run count",
                info.run_count,
                p.left / PageRun::LEN as u64,
            ));
        }
        let mut summary = PagesSummary {
            mapping_start: m.start,
            runs: info.run_count,
            data_pages: 0,
            zero_pages: 0,
        };
        let mut next = self.seen.pages_next;
        for _ in 0..info.run_count {
            let run_at = self.pos;
            let mut rb = [0u8; PageRun::LEN];
            self.take(p, &mut rb, "a page run")?;
            let Ok(run) = PageRun::read_from_bytes(&rb) else {
                return Err(self.invalid(offset, "page run unreadable".into()));
            };
            if let Some(why) = run_problem(&run, next, m.end) {
                return Err(ImageError::BadPageAddress {
                    path: self.path.clone(),
                    offset,
                    run_offset: run_at,
                    addr: run.addr,
                    start: m.start,
                    end: m.end,
                    why,
                });
            }
            let count = run.count as u64;
            next = run.addr + count * PAGE_SIZE;
            self.seen.pages_next = next;
            if run.kind == RUN_DATA {
                summary.data_pages += count;
                let addr = run.addr;
                let len = count * PAGE_SIZE;
                let target =
                    v.page_target(m.start, addr, len)
                        .map_err(|source| ImageError::Visitor {
                            path: self.path.clone(),
                            offset,
                            source,
                        })?;
                match target {
                    Some(t) if t.len() as u64 == len && len <= p.left => {
                        // In pieces, each checked while it is in the cache.
                        for piece in t.chunks_mut(16 * CHUNK) {
                            self.take(p, piece, "its pages")?;
                        }
                    }
                    _ => self.stream(p, len, "its pages", &mut |at, bytes| {
                        v.page_data(m.start, addr + at, bytes)
                    })?,
                }
            } else {
                summary.zero_pages += count;
                v.zero_pages(m.start, run.addr, count)
                    .map_err(|source| ImageError::Visitor {
                        path: self.path.clone(),
                        offset,
                        source,
                    })?;
            }
        }
        Ok(Section::Pages(summary))
    }

    fn fd(&mut self, p: &mut Payload, v: &mut dyn Visitor) -> Result<Section, ImageError> {
        let offset = p.section;
        let mut b = [0u8; FdInfo::LEN];
        self.take(p, &mut b, "its fixed part")?;
        let Ok(info) = FdInfo::read_from_bytes(&b) else {
            return Err(self.invalid(offset, "descriptor header unreadable".into()));
        };
        let Some(fixed_len) = fd_body_len(info.kind) else {
            return Err(ImageError::UnknownFdKind {
                path: self.path.clone(),
                offset,
                fd: info.fd,
                kind: info.kind,
            });
        };
        if info.body_len as u64 > MAX_FD_BODY {
            return Err(self.too_long(
                offset,
                "descriptor body length",
                info.body_len as u64,
                MAX_FD_BODY,
            ));
        }
        if info.body_len as u64 > p.left || info.data_len > p.left - info.body_len as u64 {
            return Err(self.invalid(
                offset,
                format!(
                    "descriptor {}: body of {} and data of {} bytes do not fit in the payload",
                    info.fd, info.body_len, info.data_len
                ),
            ));
        }
        if !self.seen.fds.insert(info.fd) {
            return Err(self.invalid(offset, format!("descriptor {} appears twice", info.fd)));
        }
        let mut body = vec![0u8; info.body_len as usize];
        self.take(p, &mut body, "its body")?;
        let kind = self.fd_kind(offset, &info, fixed_len, &body)?;
        drop(body);
        let fd = info.fd;
        self.stream(p, info.data_len, "its data", &mut |at, bytes| {
            v.fd_data(fd, at, bytes)
        })?;
        Ok(Section::Fd(Fd { info, kind }))
    }

    fn fd_kind(
        &self,
        offset: u64,
        info: &FdInfo,
        fixed_len: usize,
        body: &[u8],
    ) -> Result<FdKind, ImageError> {
        let short = || {
            self.invalid(
                offset,
                format!(
                    "descriptor {}: body of {} bytes too short for its kind {}",
                    info.fd, info.body_len, info.kind
                ),
            )
        };
        if body.len() < fixed_len {
            return Err(short());
        }
        let mut c = Cur { bytes: body };
        let capped = |what: &'static str, len: u32, max: usize| {
            if len as usize > max {
                Err(self.too_long(offset, what, len as u64, max as u64))
            } else {
                Ok(len as usize)
            }
        };
        Ok(match info.kind {
            FD_REGULAR => {
                let r: RegularFile = c.fixed().ok_or_else(short)?;
                let n = capped("descriptor path length", r.path_len, MAX_PATH)?;
                FdKind::Regular(r, c.take(n).ok_or_else(short)?.to_vec())
            }
            FD_PIPE => {
                let e: PipeEnd = c.fixed().ok_or_else(short)?;
                let n = capped("FIFO path length", e.path_len, MAX_PATH)?;
                FdKind::Pipe(e, c.take(n).ok_or_else(short)?.to_vec())
            }
            FD_UNIX_PAIR => FdKind::UnixPair(c.fixed().ok_or_else(short)?),
            FD_TCP_LISTEN | FD_UDP | FD_TCP_UNBOUND => {
                let s: SocketInfo = c.fixed().ok_or_else(short)?;
                let n = capped("socket option count", s.opt_count, MAX_SOCKOPTS)?;
                let raw = c.take(n * SockOpt::LEN).ok_or_else(short)?;
                let opts: Vec<SockOpt> = raw
                    .chunks_exact(SockOpt::LEN)
                    .filter_map(|o| SockOpt::read_from_bytes(o).ok())
                    .collect();
                if let Some(o) = opts.iter().find(|o| o.len > 20) {
                    return Err(self.invalid(
                        offset,
                        format!(
                            "descriptor {}: socket option of {} bytes (at most 20)",
                            info.fd, o.len
                        ),
                    ));
                }
                match info.kind {
                    FD_UDP => FdKind::Udp(s, opts),
                    FD_TCP_UNBOUND => FdKind::TcpUnbound(s, opts),
                    _ => FdKind::TcpListen(s, opts),
                }
            }
            FD_EPOLL => {
                let e: EpollSet = c.fixed().ok_or_else(short)?;
                let n = capped("epoll entry count", e.count, MAX_EPOLL)?;
                let raw = c.take(n * EpollEntry::LEN).ok_or_else(short)?;
                let entries = raw
                    .chunks_exact(EpollEntry::LEN)
                    .filter_map(|o| EpollEntry::read_from_bytes(o).ok())
                    .collect();
                FdKind::Epoll(e, entries)
            }
            FD_EVENTFD => FdKind::Eventfd(c.fixed().ok_or_else(short)?),
            FD_TIMERFD => FdKind::Timerfd(c.fixed().ok_or_else(short)?),
            FD_SIGNALFD => FdKind::Signalfd(c.fixed().ok_or_else(short)?),
            FD_OTHER => {
                let o: OtherFd = c.fixed().ok_or_else(short)?;
                let n = capped("description length", o.desc_len, MAX_DESCRIPTION)?;
                FdKind::Other(c.take(n).ok_or_else(short)?.to_vec())
            }
            kind => {
                return Err(ImageError::UnknownFdKind {
                    path: self.path.clone(),
                    offset,
                    fd: info.fd,
                    kind,
                })
            }
        })
    }

    /// Read every section to the end, giving each to `v`.
    pub fn read_all(&mut self, v: &mut dyn Visitor) -> Result<ProcessSummary, ImageError> {
        loop {
            let offset = self.pos;
            let Some(s) = self.next_section(v)? else {
                break;
            };
            v.section(offset, &s)
                .map_err(|source| ImageError::Visitor {
                    path: self.path.clone(),
                    offset,
                    source,
                })?;
        }
        Ok(ProcessSummary {
            header: self.header,
            parent_vpid: self.seen.parent_vpid.unwrap_or(0),
            sections: self.index,
            len: self.pos,
            crc: self.running,
        })
    }
}

impl<R: Read + io::Seek> ProcessReader<R> {
    /// Read every section to the end as [`ProcessReader::read_all`] does,
    /// but move over the page data unread and unchecked: each pages
    /// section comes to `v` as [`Section::Skipped`]. For what a file holds
    /// besides memory (its descriptors, its mappings), cheaply; a restore
    /// reads the file whole again.
    pub fn skim_all(&mut self, v: &mut dyn Visitor) -> Result<ProcessSummary, ImageError> {
        self.skip = Some(|src, n| {
            let n = i64::try_from(n).map_err(|_| io::Error::other("a section too long to skip"))?;
            src.seek(io::SeekFrom::Current(n)).map(|_| ())
        });
        let r = self.read_all(v);
        self.skip = None;
        r
    }
}

/// Read and check the process file at `path` from start to end, giving
/// what it holds to `v`.
pub fn read_process_file(path: &Path, v: &mut dyn Visitor) -> Result<ProcessSummary, ImageError> {
    ProcessReader::open(path)?.read_all(v)
}
