//! Writing a process file: no allocation, no panics, through a [`Sink`].
//!
//! [`ImageWriter`] writes the file header, then one section per call, then
//! the end section ([`ImageWriter::finish`]). It keeps the running CRC-32C
//! of every byte it wrote, so the end section and the manifest entry come
//! without reading anything back. A section whose payload is large (page
//! runs, a descriptor's data) is streamed: its length is given up front, its
//! payload written in pieces, and its checksum follows the payload
//! ([`crate::FLAG_TRAILING_CRC`]). The writer refuses, with an error, to
//! write what a reader would refuse (lengths over the caps, page runs
//! outside their mapping, sections out of order); after any error it is
//! unusable ([`WriteError::Failed`]).

use crate::sections::*;
use crate::{
    is_zero_page, FileHeader, Kind, SectionHeader, FILE_HEADER_LEN, FLAG_TRAILING_CRC, MAX_ARGS,
    MAX_AUXV, MAX_DESCRIPTION, MAX_EPOLL, MAX_PATH, MAX_PENDING, MAX_SOCKOPTS, MAX_XSAVE,
    PAGE_SIZE,
};
use zerocopy::IntoBytes;

/// Where the bytes of an image go: a raw file descriptor in the shim, a
/// [`std::io::Write`] elsewhere ([`IoSink`]).
pub trait Sink {
    /// Write all of `bytes`, or fail with an errno.
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), i32>;
}

impl<S: Sink + ?Sized> Sink for &mut S {
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), i32> {
        (**self).write_all(bytes)
    }
}

/// A [`Sink`] over any [`std::io::Write`]; an error without an OS code
/// becomes `EIO`.
#[cfg(feature = "std")]
#[derive(Debug)]
pub struct IoSink<W>(pub W);

#[cfg(feature = "std")]
impl<W: std::io::Write> Sink for IoSink<W> {
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), i32> {
        self.0
            .write_all(bytes)
            .map_err(|e| e.raw_os_error().unwrap_or(EIO))
    }
}

#[cfg(feature = "std")]
impl Sink for std::vec::Vec<u8> {
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), i32> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

/// `EIO`, for sink errors that carry no errno.
pub const EIO: i32 = 5;

/// Why a process file (or a manifest) could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The sink failed.
    #[error("write failed: errno {errno}")]
    Io {
        /// The errno the sink returned.
        errno: i32,
    },
    /// A length is over its cap: a reader would refuse it.
    #[error("{what} is {len} bytes or entries, more than the maximum of {max}")]
    TooLong {
        /// What was too long.
        what: &'static str,
        /// Its length.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// A streamed section got more or fewer payload bytes than declared.
    #[error("{kind} section: {written} payload bytes written, {declared} declared")]
    LengthMismatch {
        /// The section kind's name.
        kind: &'static str,
        /// The length declared when the section began.
        declared: u64,
        /// The bytes written.
        written: u64,
    },
    /// A value a reader would refuse.
    #[error("bad {what}: {why}")]
    Invalid {
        /// The field or section.
        what: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Calls out of order (a section begun while another is open, data
    /// without an open section, …).
    #[error("out of order: {0}")]
    Order(&'static str),
    /// An earlier call failed; the file is incomplete and must not be used.
    #[error("an earlier write failed; this image file is incomplete")]
    Failed,
}

/// What [`ImageWriter::finish`] reports: what the manifest lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// Bytes written, the whole file.
    pub len: u64,
    /// CRC-32C of the whole file.
    pub crc: u32,
    /// Sections written, the end section included.
    pub sections: u32,
}

/// A section being streamed.
#[derive(Clone, Copy)]
struct Open {
    kind: Kind,
    declared: u64,
    written: u64,
    crc: u32,
    pages: Option<PagesState>,
}

/// What a pages section still expects.
#[derive(Clone, Copy)]
struct PagesState {
    runs_left: u64,
    /// Data bytes the current run still expects.
    run_bytes_left: u64,
    /// Lowest address the next run may start at.
    next_addr: u64,
}

/// The last mapping written: pages sections belong to it.
#[derive(Clone, Copy)]
struct LastMapping {
    start: u64,
    end: u64,
    special: bool,
    /// Lowest address the next page run may start at (runs increase across
    /// the mapping's pages sections).
    next_addr: u64,
}

/// Writes one process file to a [`Sink`].
pub struct ImageWriter<S: Sink> {
    sink: S,
    vpid: u32,
    pos: u64,
    crc: u32,
    sections: u32,
    open: Option<Open>,
    failed: bool,
    parent_vpid: Option<u32>,
    threads: u32,
    mapping: Option<LastMapping>,
}

impl<S: Sink> core::fmt::Debug for ImageWriter<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ImageWriter")
            .field("vpid", &self.vpid)
            .field("pos", &self.pos)
            .field("sections", &self.sections)
            .finish()
    }
}

fn cap(what: &'static str, len: usize, max: usize) -> Result<u32, WriteError> {
    if len > max {
        return Err(WriteError::TooLong {
            what,
            len: len as u64,
            max: max as u64,
        });
    }
    Ok(len as u32)
}

impl<S: Sink> ImageWriter<S> {
    /// Start a process file: write its header for process `vpid`,
    /// checkpoint `seq`, incremental to `parent_seq` (0: a full image).
    pub fn new(
        sink: S,
        vpid: u32,
        seq: u64,
        parent_seq: u64,
        created_ns: u64,
    ) -> Result<Self, WriteError> {
        if seq == 0 {
            return Err(WriteError::Invalid {
                what: "sequence number",
                why: "checkpoints are numbered from 1",
            });
        }
        if parent_seq >= seq {
            return Err(WriteError::Invalid {
                what: "parent sequence number",
                why: "not before the checkpoint's own",
            });
        }
        let header = FileHeader::new(vpid, seq, parent_seq, created_ns);
        Self::with_header(sink, &header, &[])
    }

    /// Start a process file with `header` as given (a newer minor's, with
    /// `extension` after the 64 fixed bytes: `header_len` must be 64 plus
    /// its length). The header is written as it is, checksum included.
    pub fn with_header(sink: S, header: &FileHeader, extension: &[u8]) -> Result<Self, WriteError> {
        if header.header_len as u64 != FILE_HEADER_LEN as u64 + extension.len() as u64 {
            return Err(WriteError::Invalid {
                what: "header_len",
                why: "not 64 plus the extension's length",
            });
        }
        let mut w = ImageWriter {
            sink,
            vpid: header.vpid,
            pos: 0,
            crc: 0,
            sections: 0,
            open: None,
            failed: false,
            parent_vpid: None,
            threads: 0,
            mapping: None,
        };
        w.emit(header.as_bytes())?;
        w.emit(extension)?;
        Ok(w)
    }

    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The parent vpid the process section gave, once written.
    pub fn parent_vpid(&self) -> Option<u32> {
        self.parent_vpid
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        if self.failed {
            return Err(WriteError::Failed);
        }
        if let Err(errno) = self.sink.write_all(bytes) {
            self.failed = true;
            return Err(WriteError::Io { errno });
        }
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Fail and poison the writer.
    fn fail<T>(&mut self, e: WriteError) -> Result<T, WriteError> {
        self.failed = true;
        Err(e)
    }

    /// Checks common to every section start.
    fn check_start(&mut self, kind: Option<Kind>) -> Result<(), WriteError> {
        if self.failed {
            return Err(WriteError::Failed);
        }
        if self.open.is_some() {
            return Err(WriteError::Order("a streamed section is still open"));
        }
        let first = self.sections == 0;
        if first != (kind == Some(Kind::Process)) {
            return Err(WriteError::Order(
                "the process section comes first, and only once",
            ));
        }
        Ok(())
    }

    /// Write a whole section of `kind` whose payload is `parts`, one after
    /// the other; its checksum goes in the header.
    fn whole(&mut self, kind: Kind, parts: &[&[u8]]) -> Result<(), WriteError> {
        self.check_start(Some(kind))?;
        self.whole_raw(kind as u16, 0, parts)
    }

    fn whole_raw(&mut self, kind: u16, flags: u16, parts: &[&[u8]]) -> Result<(), WriteError> {
        let mut len = 0u64;
        let mut crc = 0u32;
        for p in parts {
            len += p.len() as u64;
            crc = crc32c::crc32c_append(crc, p);
        }
        let header = SectionHeader::new(kind, flags & !FLAG_TRAILING_CRC, self.sections, len, crc);
        self.emit(header.as_bytes())?;
        for p in parts {
            self.emit(p)?;
        }
        self.sections += 1;
        Ok(())
    }

    /// Write a section of a kind this version does not know (what a newer
    /// minor adds), with `flags` (set [`crate::FLAG_OPTIONAL`] so older
    /// readers skip it). Known kinds have their own methods.
    pub fn raw_section(&mut self, kind: u16, flags: u16, payload: &[u8]) -> Result<(), WriteError> {
        self.check_start(None)?;
        if Kind::from_u16(kind).is_some() {
            return Err(WriteError::Invalid {
                what: "section kind",
                why: "a known kind is written with its own method",
            });
        }
        self.whole_raw(kind, flags, &[payload])
    }

    /// Begin a streamed section: write its header with `len` payload bytes
    /// to follow and [`FLAG_TRAILING_CRC`].
    fn begin(&mut self, kind: Kind, len: u64) -> Result<(), WriteError> {
        let header = SectionHeader::new(kind as u16, FLAG_TRAILING_CRC, self.sections, len, 0);
        self.emit(header.as_bytes())?;
        self.open = Some(Open {
            kind,
            declared: len,
            written: 0,
            crc: 0,
            pages: None,
        });
        Ok(())
    }

    /// Payload bytes of the open streamed section.
    fn stream(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        let Some(mut open) = self.open else {
            return self.fail(WriteError::Order("no streamed section is open"));
        };
        let written = open.written + bytes.len() as u64;
        if written > open.declared {
            return self.fail(WriteError::LengthMismatch {
                kind: open.kind.name(),
                declared: open.declared,
                written,
            });
        }
        self.emit(bytes)?;
        open.written = written;
        open.crc = crc32c::crc32c_append(open.crc, bytes);
        self.open = Some(Open {
            pages: open.pages,
            ..open
        });
        Ok(())
    }

    /// End the open streamed section: check its length and write its
    /// checksum after it.
    pub fn end_section(&mut self) -> Result<(), WriteError> {
        let Some(open) = self.open else {
            return self.fail(WriteError::Order("no streamed section is open"));
        };
        if open.written != open.declared {
            return self.fail(WriteError::LengthMismatch {
                kind: open.kind.name(),
                declared: open.declared,
                written: open.written,
            });
        }
        if let Some(p) = open.pages {
            if p.runs_left != 0 || p.run_bytes_left != 0 {
                return self.fail(WriteError::Order(
                    "a pages section ended before its declared runs",
                ));
            }
        }
        self.emit(&open.crc.to_le_bytes())?;
        self.open = None;
        self.sections += 1;
        Ok(())
    }

    /// The process section; `info`'s length fields and `PROC_HAS_*` flags
    /// are set from the slices. `argv` and `env` are NUL-terminated string
    /// blocks, or `None` when not recorded.
    pub fn process(
        &mut self,
        info: &ProcessInfo,
        cwd: &[u8],
        exe: &[u8],
        argv: Option<&[u8]>,
        env: Option<&[u8]>,
    ) -> Result<(), WriteError> {
        let mut p = *info;
        if p.vpid != self.vpid {
            return Err(WriteError::Invalid {
                what: "process section",
                why: "vpid differs from the file header's",
            });
        }
        p.cwd_len = cap("working directory", cwd.len(), MAX_PATH)?;
        p.exe_len = cap("executable path", exe.len(), MAX_PATH)?;
        p.flags &= !(PROC_HAS_ARGV | PROC_HAS_ENV);
        p.argv_len = cap("argument block", argv.map_or(0, |a| a.len()), MAX_ARGS)?;
        p.env_len = cap("environment block", env.map_or(0, |e| e.len()), MAX_ARGS)?;
        if argv.is_some() {
            p.flags |= PROC_HAS_ARGV;
        }
        if env.is_some() {
            p.flags |= PROC_HAS_ENV;
        }
        self.whole(
            Kind::Process,
            &[
                p.as_bytes(),
                cwd,
                exe,
                argv.unwrap_or(&[]),
                env.unwrap_or(&[]),
            ],
        )?;
        self.parent_vpid = Some(p.parent_vpid);
        Ok(())
    }

    /// The rlimits section.
    pub fn rlimits(&mut self, limits: &Rlimits) -> Result<(), WriteError> {
        self.whole(Kind::Rlimits, &[limits.as_bytes()])
    }

    /// A thread section; `xsave_len` is set from `xsave`.
    pub fn thread(&mut self, info: &ThreadInfo, xsave: &[u8]) -> Result<(), WriteError> {
        let mut t = *info;
        t.xsave_len = cap("XSAVE area", xsave.len(), MAX_XSAVE)?;
        self.whole(Kind::Thread, &[t.as_bytes(), xsave])?;
        self.threads += 1;
        Ok(())
    }

    /// The signal-actions section.
    pub fn sigactions(&mut self, actions: &SigActions) -> Result<(), WriteError> {
        self.whole(Kind::SigActions, &[actions.as_bytes()])
    }

    /// A pending-signals section: `siginfo` pending on thread `vtid` (0:
    /// on the process).
    pub fn pending(&mut self, vtid: u32, siginfo: &[[u8; SIGINFO_LEN]]) -> Result<(), WriteError> {
        let info = PendingInfo {
            vtid,
            count: cap("pending signals", siginfo.len(), MAX_PENDING)?,
        };
        self.whole(Kind::Pending, &[info.as_bytes(), siginfo.as_bytes()])
    }

    /// A mapping section; `path_len` is set from `path`. Pages sections
    /// that follow belong to it.
    pub fn mapping(&mut self, info: &MappingInfo, path: &[u8]) -> Result<(), WriteError> {
        let mut m = *info;
        m.path_len = cap("mapping path", path.len(), MAX_PATH)?;
        if let Some(why) = mapping_problem(&m) {
            return Err(WriteError::Invalid {
                what: "mapping",
                why,
            });
        }
        if let Some(last) = self.mapping {
            if m.start < last.end {
                return Err(WriteError::Invalid {
                    what: "mapping",
                    why: "starts before the end of the previous mapping",
                });
            }
        }
        self.whole(Kind::Mapping, &[m.as_bytes(), path])?;
        self.mapping = Some(LastMapping {
            start: m.start,
            end: m.end,
            special: m.special != SPECIAL_NONE,
            next_addr: m.start,
        });
        Ok(())
    }

    /// Begin a pages section for the mapping written last (`mapping_start`
    /// is its start): `runs` runs to follow, of which `data_pages` pages in
    /// all carry bytes. Then, per run, [`ImageWriter::page_run`] and its
    /// bytes through [`ImageWriter::page_data`]; then
    /// [`ImageWriter::end_section`].
    pub fn begin_pages(
        &mut self,
        mapping_start: u64,
        runs: u64,
        data_pages: u64,
    ) -> Result<(), WriteError> {
        self.check_start(Some(Kind::Pages))?;
        let Some(m) = self.mapping else {
            return Err(WriteError::Order("a pages section follows its mapping"));
        };
        if m.start != mapping_start {
            return Err(WriteError::Invalid {
                what: "pages section",
                why: "mapping start differs from the last mapping's",
            });
        }
        if m.special {
            return Err(WriteError::Invalid {
                what: "pages section",
                why: "the vDSO and vvar mappings carry no content",
            });
        }
        let span = (m.end - m.start) / PAGE_SIZE;
        if data_pages > span || runs > span {
            return Err(WriteError::Invalid {
                what: "pages section",
                why: "more pages or runs than the mapping holds",
            });
        }
        // Bounded by the mapping's size, so no overflow.
        let len = PagesInfo::LEN as u64 + runs * PageRun::LEN as u64 + data_pages * PAGE_SIZE;
        self.begin(Kind::Pages, len)?;
        let info = PagesInfo {
            mapping_start,
            run_count: runs,
        };
        self.stream(info.as_bytes())?;
        if let Some(open) = self.open.as_mut() {
            open.pages = Some(PagesState {
                runs_left: runs,
                run_bytes_left: 0,
                next_addr: m.next_addr,
            });
        }
        Ok(())
    }

    /// The next run of the open pages section. A [`RUN_DATA`] run's
    /// `count` pages follow through [`ImageWriter::page_data`].
    pub fn page_run(&mut self, run: &PageRun) -> Result<(), WriteError> {
        let (Some(open), Some(m)) = (self.open, self.mapping) else {
            return self.fail(WriteError::Order("no pages section is open"));
        };
        let Some(mut p) = open.pages else {
            return self.fail(WriteError::Order("no pages section is open"));
        };
        if p.run_bytes_left != 0 {
            return self.fail(WriteError::Order(
                "the previous run's pages are not all written",
            ));
        }
        if p.runs_left == 0 {
            return self.fail(WriteError::Order("more runs than declared"));
        }
        if let Some(why) = run_problem(run, p.next_addr, m.end) {
            return self.fail(WriteError::Invalid {
                what: "page run",
                why,
            });
        }
        self.stream(run.as_bytes())?;
        p.runs_left -= 1;
        p.next_addr = run.addr + run.count as u64 * PAGE_SIZE;
        p.run_bytes_left = if run.kind == RUN_DATA {
            run.count as u64 * PAGE_SIZE
        } else {
            0
        };
        if let Some(o) = self.open.as_mut() {
            o.pages = Some(p);
        }
        if let Some(last) = self.mapping.as_mut() {
            last.next_addr = p.next_addr;
        }
        Ok(())
    }

    /// Bytes of the current data run (any number of bytes per call).
    pub fn page_data(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        let Some(mut p) = self.open.and_then(|o| o.pages) else {
            return self.fail(WriteError::Order("no pages section is open"));
        };
        if bytes.len() as u64 > p.run_bytes_left {
            return self.fail(WriteError::Order("more page bytes than the run holds"));
        }
        self.stream(bytes)?;
        p.run_bytes_left -= bytes.len() as u64;
        if let Some(o) = self.open.as_mut() {
            o.pages = Some(p);
        }
        Ok(())
    }

    /// A whole pages section for the mapping written last, from `memory`:
    /// its content from the mapping's start (a whole number of pages, no
    /// longer than the mapping). All-zero pages are left out; the rest go
    /// as data runs. Writes nothing when every page is zero. For a full
    /// image.
    pub fn pages_from_memory(
        &mut self,
        mapping_start: u64,
        memory: &[u8],
    ) -> Result<(), WriteError> {
        if memory.len() as u64 % PAGE_SIZE != 0 {
            return Err(WriteError::Invalid {
                what: "memory",
                why: "not a whole number of pages",
            });
        }
        let pages = || {
            memory
                .chunks_exact(PAGE_SIZE as usize)
                .map(|p| !is_zero_page(p))
        };
        let mut runs = 0u64;
        let mut data = 0u64;
        let mut prev = false;
        for nonzero in pages() {
            if nonzero {
                data += 1;
                if !prev {
                    runs += 1;
                }
            }
            prev = nonzero;
        }
        if runs == 0 {
            return Ok(());
        }
        self.begin_pages(mapping_start, runs, data)?;
        let mut run_start: Option<usize> = None;
        let total = memory.len() / PAGE_SIZE as usize;
        for (i, nonzero) in pages().chain(core::iter::once(false)).enumerate() {
            match (nonzero, run_start) {
                (true, None) => run_start = Some(i),
                (false, Some(s)) => {
                    let count = (i - s) as u32;
                    self.page_run(&PageRun {
                        addr: mapping_start + s as u64 * PAGE_SIZE,
                        count,
                        kind: RUN_DATA,
                    })?;
                    let from = s * PAGE_SIZE as usize;
                    let to = i.min(total) * PAGE_SIZE as usize;
                    self.page_data(memory.get(from..to).unwrap_or(&[]))?;
                    run_start = None;
                }
                _ => {}
            }
        }
        self.end_section()
    }

    /// A whole descriptor section with its data (for data small enough to
    /// hold; [`ImageWriter::begin_fd`] streams it).
    pub fn fd(&mut self, info: &FdInfo, body: &FdBody<'_>, data: &[u8]) -> Result<(), WriteError> {
        self.check_start(Some(Kind::Fd))?;
        let mut fixed = [0u8; 64];
        let (f, fixed_len, var) = self.fd_prelude(info, body, data.len() as u64, &mut fixed)?;
        self.whole_raw(
            Kind::Fd as u16,
            0,
            &[f.as_bytes(), &fixed[..fixed_len], var, data],
        )
    }

    /// Begin a descriptor section whose `data_len` bytes of data follow
    /// through [`ImageWriter::fd_data`]; then [`ImageWriter::end_section`].
    pub fn begin_fd(
        &mut self,
        info: &FdInfo,
        body: &FdBody<'_>,
        data_len: u64,
    ) -> Result<(), WriteError> {
        self.check_start(Some(Kind::Fd))?;
        let mut fixed = [0u8; 64];
        let (f, fixed_len, var) = self.fd_prelude(info, body, data_len, &mut fixed)?;
        let Some(len) = (FdInfo::LEN as u64 + f.body_len as u64).checked_add(data_len) else {
            return Err(WriteError::TooLong {
                what: "descriptor data",
                len: data_len,
                max: u64::MAX - FdInfo::LEN as u64 - f.body_len as u64,
            });
        };
        self.begin(Kind::Fd, len)?;
        self.stream(f.as_bytes())?;
        self.stream(&fixed[..fixed_len])?;
        self.stream(var)
    }

    /// Data of the open descriptor section.
    pub fn fd_data(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        match self.open {
            Some(o) if o.kind == Kind::Fd => self.stream(bytes),
            _ => self.fail(WriteError::Order("no descriptor section is open")),
        }
    }

    fn fd_prelude<'b>(
        &mut self,
        info: &FdInfo,
        body: &FdBody<'b>,
        data_len: u64,
        fixed: &mut [u8; 64],
    ) -> Result<(FdInfo, usize, &'b [u8]), WriteError> {
        let (kind, fixed_len, var) = body.encode(fixed)?;
        let mut f = *info;
        f.kind = kind;
        f.body_len = (fixed_len + var.len()) as u32;
        f.data_len = data_len;
        Ok((f, fixed_len, var))
    }

    /// The address-space section; `auxv_len` is set from `auxv`.
    pub fn address_space(&mut self, info: &AddressSpace, auxv: &[u8]) -> Result<(), WriteError> {
        let mut a = *info;
        a.auxv_len = cap("auxiliary vector", auxv.len(), MAX_AUXV)?;
        self.whole(Kind::AddressSpace, &[a.as_bytes(), auxv])
    }

    /// The interval-timers section.
    pub fn itimers(&mut self, timers: &Itimers) -> Result<(), WriteError> {
        self.whole(Kind::Itimers, &[timers.as_bytes()])
    }

    /// A POSIX-timer section.
    pub fn posix_timer(&mut self, timer: &PosixTimer) -> Result<(), WriteError> {
        self.whole(Kind::PosixTimer, &[timer.as_bytes()])
    }

    /// Write the end section and hand back the sink with what the manifest
    /// needs.
    pub fn finish(mut self) -> Result<(S, Finished), WriteError> {
        if self.failed {
            return Err(WriteError::Failed);
        }
        if self.open.is_some() {
            return Err(WriteError::Order("a streamed section is still open"));
        }
        if self.sections == 0 || self.threads == 0 {
            return Err(WriteError::Order(
                "an image has a process section and at least one thread",
            ));
        }
        let end = End {
            sections: self.sections as u64,
            bytes: self.pos,
            running_crc: self.crc,
            reserved: 0,
        };
        self.whole_raw(Kind::End as u16, 0, &[end.as_bytes()])?;
        let done = Finished {
            len: self.pos,
            crc: self.crc,
            sections: self.sections,
        };
        Ok((self.sink, done))
    }
}

/// What is wrong with a mapping, if anything (shared with the reader).
pub(crate) fn mapping_problem(m: &MappingInfo) -> Option<&'static str> {
    if m.start % PAGE_SIZE != 0 || m.end % PAGE_SIZE != 0 || m.offset % PAGE_SIZE != 0 {
        return Some("start, end or offset not page-aligned");
    }
    if m.end <= m.start {
        return Some("end not after start");
    }
    let sharing = m.flags & (MAP_PRIVATE | MAP_SHARED);
    if sharing != MAP_PRIVATE && sharing != MAP_SHARED {
        return Some("not exactly one of private and shared");
    }
    if m.special > SPECIAL_VVAR_VCLOCK {
        return Some("unknown special mapping");
    }
    None
}

/// What is wrong with a run that may start at `lowest` in a mapping ending
/// at `end`, if anything (shared with the reader).
pub(crate) fn run_problem(run: &PageRun, lowest: u64, end: u64) -> Option<&'static str> {
    if run.addr % PAGE_SIZE != 0 {
        return Some("address not page-aligned");
    }
    if run.count == 0 {
        return Some("no pages");
    }
    if run.kind != RUN_DATA && run.kind != RUN_ZERO {
        return Some("unknown run kind");
    }
    if run.addr < lowest {
        return Some("before the mapping or overlapping the previous run");
    }
    match run.addr.checked_add(run.count as u64 * PAGE_SIZE) {
        Some(last) if last <= end => None,
        _ => Some("past the end of the mapping"),
    }
}

/// A descriptor's kind and body, borrowed, for [`ImageWriter::fd`]. The
/// length fields of the body structs (`path_len`, `opt_count`, …) are set
/// from the slices.
#[derive(Debug, Clone, Copy)]
pub enum FdBody<'a> {
    /// A regular file and its path.
    Regular(RegularFile, &'a [u8]),
    /// A pipe or FIFO end and the FIFO's path.
    Pipe(PipeEnd, &'a [u8]),
    /// A unix socketpair end.
    UnixPair(UnixPairEnd),
    /// A listening TCP socket and its options.
    TcpListen(SocketInfo, &'a [SockOpt]),
    /// A UDP socket and its options.
    Udp(SocketInfo, &'a [SockOpt]),
    /// A TCP socket not yet bound, connected or listening, and its options.
    TcpUnbound(SocketInfo, &'a [SockOpt]),
    /// An epoll set and its entries.
    Epoll(EpollSet, &'a [EpollEntry]),
    /// An eventfd.
    Eventfd(Eventfd),
    /// A timerfd.
    Timerfd(Timerfd),
    /// A signalfd.
    Signalfd(Signalfd),
    /// A descriptor the restorer cannot rebuild, and what it was.
    Other(&'a [u8]),
}

impl<'a> FdBody<'a> {
    /// Put the body struct into `fixed`; return the kind, the struct's
    /// length and the variable part.
    fn encode(&self, fixed: &mut [u8; 64]) -> Result<(u16, usize, &'a [u8]), WriteError> {
        fn put<T: IntoBytes + zerocopy::Immutable>(fixed: &mut [u8; 64], v: &T) -> usize {
            let b = v.as_bytes();
            fixed[..b.len()].copy_from_slice(b);
            b.len()
        }
        Ok(match *self {
            FdBody::Regular(mut r, path) => {
                r.path_len = cap("descriptor path", path.len(), MAX_PATH)?;
                (FD_REGULAR, put(fixed, &r), path)
            }
            FdBody::Pipe(mut p, path) => {
                p.path_len = cap("FIFO path", path.len(), MAX_PATH)?;
                (FD_PIPE, put(fixed, &p), path)
            }
            FdBody::UnixPair(u) => (FD_UNIX_PAIR, put(fixed, &u), &[]),
            FdBody::TcpListen(mut s, opts)
            | FdBody::Udp(mut s, opts)
            | FdBody::TcpUnbound(mut s, opts) => {
                s.opt_count = cap("socket options", opts.len(), MAX_SOCKOPTS)?;
                if opts.iter().any(|o| o.len > 20) {
                    return Err(WriteError::Invalid {
                        what: "socket option",
                        why: "value longer than 20 bytes",
                    });
                }
                let kind = match self {
                    FdBody::Udp(..) => FD_UDP,
                    FdBody::TcpUnbound(..) => FD_TCP_UNBOUND,
                    _ => FD_TCP_LISTEN,
                };
                (kind, put(fixed, &s), opts.as_bytes())
            }
            FdBody::Epoll(mut e, entries) => {
                e.count = cap("epoll entries", entries.len(), MAX_EPOLL)?;
                (FD_EPOLL, put(fixed, &e), entries.as_bytes())
            }
            FdBody::Eventfd(e) => (FD_EVENTFD, put(fixed, &e), &[]),
            FdBody::Timerfd(t) => (FD_TIMERFD, put(fixed, &t), &[]),
            FdBody::Signalfd(s) => (FD_SIGNALFD, put(fixed, &s), &[]),
            FdBody::Other(desc) => {
                let o = OtherFd {
                    desc_len: cap("descriptor description", desc.len(), MAX_DESCRIPTION)?,
                    reserved: 0,
                };
                (FD_OTHER, put(fixed, &o), desc)
            }
        })
    }
}
