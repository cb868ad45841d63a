//! What the image tests share: a model of a process image with every
//! section kind, a writer of it, a reader back into it, and a builder of
//! raw files for inputs the writer refuses to make.

#![allow(dead_code)]

use ferry_image::read::{AddressSpaceSection, FdKind, ImageError, ProcessReader, Section, Visitor};
use ferry_image::sections::*;
use ferry_image::write::{FdBody, ImageWriter, Sink, WriteError};
use ferry_image::{FileHeader, Kind, SectionHeader, FLAG_TRAILING_CRC, PAGE_SIZE};
use std::collections::BTreeMap;
use std::io::{self, Cursor};
use std::path::Path;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// A small deterministic generator (xorshift64*), so random models are
/// reproducible from one seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0 | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    /// Up to `max - 1` random bytes.
    pub fn some_bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max) as usize;
        self.bytes(n)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// A value of a plain struct with every byte random.
    pub fn fill<T: FromBytes>(&mut self) -> T {
        let b = self.bytes(std::mem::size_of::<T>());
        match T::read_from_bytes(&b) {
            Ok(v) => v,
            Err(_) => unreachable!("the size matches"),
        }
    }
}

/// One mapping and its content as the test knows it.
#[derive(Clone, Debug)]
pub struct MappingModel {
    pub info: MappingInfo,
    pub path: Vec<u8>,
    /// Memory from `info.start`, a whole number of pages (may be shorter
    /// than the mapping); `None` for a mapping written without pages.
    pub memory: Option<Vec<u8>>,
}

/// A descriptor as the test knows it.
#[derive(Clone, Debug)]
pub struct FdModel {
    pub info: FdInfo,
    pub kind: FdKind,
    pub data: Vec<u8>,
    /// Written with `begin_fd` and pieces rather than in one call.
    pub streamed: bool,
}

/// A whole process image.
#[derive(Clone, Debug)]
pub struct Model {
    pub vpid: u32,
    pub seq: u64,
    pub parent_seq: u64,
    pub created_ns: u64,
    pub process: ProcessInfo,
    pub cwd: Vec<u8>,
    pub exe: Vec<u8>,
    pub argv: Option<Vec<u8>>,
    pub env: Option<Vec<u8>>,
    pub rlimits: Rlimits,
    pub threads: Vec<(ThreadInfo, Vec<u8>)>,
    pub sigactions: SigActions,
    pub pending: Vec<(u32, Vec<[u8; SIGINFO_LEN]>)>,
    pub mappings: Vec<MappingModel>,
    pub fds: Vec<FdModel>,
    pub itimers: Itimers,
    pub address_space: AddressSpaceSection,
    pub timers: Vec<PosixTimer>,
}

pub fn mapping(start: u64, pages: u64, flags: u32, special: u32) -> MappingInfo {
    MappingInfo {
        start,
        end: start + pages * PAGE_SIZE,
        offset: 0,
        device: 0x0803,
        inode: 1234,
        prot: 3,
        flags,
        special,
        path_len: 0,
    }
}

/// A model with every section kind and every descriptor kind, its
/// contents drawn from `rng`; `scale` bounds the sizes.
pub fn model(rng: &mut Rng, scale: usize) -> Model {
    let vpid = 1 + rng.below(1000) as u32;
    let mut process: ProcessInfo = rng.fill();
    process.vpid = vpid;
    let threads = (0..1 + rng.below(3))
        .map(|i| {
            let mut t: ThreadInfo = rng.fill();
            t.vtid = vpid * 10 + i as u32;
            let xsave_len = rng.below(scale as u64 * 64) as usize;
            (t, rng.bytes(xsave_len))
        })
        .collect();
    let pending = (0..1 + rng.below(2))
        .map(|i| {
            let n = rng.below(4) as usize;
            let infos = (0..n)
                .map(|_| {
                    let mut a = [0u8; SIGINFO_LEN];
                    a.copy_from_slice(&rng.bytes(SIGINFO_LEN));
                    a
                })
                .collect();
            (i as u32, infos)
        })
        .collect();
    let mut mappings = Vec::new();
    let mut addr = 0x40_0000u64;
    for i in 0..2 + rng.below(4) {
        let pages = 1 + rng.below(scale as u64);
        addr += rng.below(4) * PAGE_SIZE;
        let flags = if i % 2 == 0 {
            MAP_PRIVATE | MAP_ANON
        } else {
            MAP_SHARED | MAP_FILE
        };
        let mut info = mapping(addr, pages, flags, SPECIAL_NONE);
        info.offset = rng.below(8) * PAGE_SIZE;
        // The first mapping always has a page of data.
        let len = rng.below(pages + 1).max((i == 0) as u64) * PAGE_SIZE;
        let mut memory = vec![0u8; len as usize];
        if i == 0 {
            memory[rng.below(PAGE_SIZE) as usize] = 1 + rng.below(255) as u8;
        }
        for page in memory.chunks_mut(PAGE_SIZE as usize) {
            // About half the pages are zero, the rest random in part.
            if rng.below(2) == 0 {
                let at = rng.below(PAGE_SIZE) as usize;
                let n = 1 + rng.below((PAGE_SIZE as usize - at) as u64) as usize;
                page[at..at + n].copy_from_slice(&rng.bytes(n));
            }
        }
        let path = format!("/lib/x{i}.so").into_bytes();
        mappings.push(MappingModel {
            info,
            path,
            memory: (i == 0 || rng.below(4) != 0).then_some(memory),
        });
        addr = info.end;
    }
    for (special, name) in [
        (SPECIAL_VVAR, "[vvar]"),
        (SPECIAL_VVAR_VCLOCK, "[vvar_vclock]"),
        (SPECIAL_VDSO, "[vdso]"),
    ] {
        addr += PAGE_SIZE * (1 + rng.below(3));
        let info = mapping(addr, 1 + rng.below(3), MAP_PRIVATE, special);
        mappings.push(MappingModel {
            info,
            path: name.as_bytes().to_vec(),
            memory: None,
        });
        addr = info.end;
    }
    let mut fds = Vec::new();
    let mut fd_no = 3u32;
    let mut next_fd = |rng: &mut Rng| {
        fd_no += 1 + rng.below(3) as u32;
        FdInfo {
            fd: fd_no,
            fd_flags: rng.below(2) as u32,
            status_flags: rng.next() as u32,
            kind: 0,
            reserved0: 0,
            body_len: 0,
            shares: 0,
            data_len: 0,
        }
    };
    let opts = |rng: &mut Rng| -> Vec<SockOpt> {
        (0..rng.below(4))
            .map(|_| {
                let mut o: SockOpt = rng.fill();
                o.len = rng.below(21) as u32;
                o
            })
            .collect()
    };
    let kinds: Vec<(FdKind, Vec<u8>)> = vec![
        (
            FdKind::Regular(
                RegularFile {
                    offset: rng.next(),
                    flags: 0,
                    path_len: 0,
                },
                b"/var/lib/app/data.db".to_vec(),
            ),
            vec![],
        ),
        (
            FdKind::Regular(
                RegularFile {
                    offset: rng.below(100),
                    flags: REGULAR_UNLINKED,
                    path_len: 0,
                },
                b"/tmp/scratch (deleted)".to_vec(),
            ),
            rng.some_bytes(scale as u64 * 300),
        ),
        (
            FdKind::Pipe(
                PipeEnd {
                    pipe_id: 7,
                    end: 0,
                    fifo: 0,
                    capacity: 65536,
                    path_len: 0,
                },
                vec![],
            ),
            rng.some_bytes(scale as u64 * 30),
        ),
        (
            FdKind::Pipe(
                PipeEnd {
                    pipe_id: 7,
                    end: 1,
                    fifo: 0,
                    capacity: 65536,
                    path_len: 0,
                },
                vec![],
            ),
            vec![],
        ),
        (
            FdKind::Pipe(
                PipeEnd {
                    pipe_id: 8,
                    end: 0,
                    fifo: 1,
                    capacity: 4096,
                    path_len: 0,
                },
                b"/run/app.fifo".to_vec(),
            ),
            vec![],
        ),
        (
            FdKind::UnixPair(UnixPairEnd {
                pair_id: 9,
                end: 0,
                sock_type: 1,
                shutdown: 0,
                reserved: 0,
            }),
            rng.some_bytes(200),
        ),
        (
            FdKind::UnixPair(UnixPairEnd {
                pair_id: 9,
                end: 1,
                sock_type: 1,
                shutdown: 0,
                reserved: 0,
            }),
            vec![],
        ),
        (
            FdKind::TcpListen(
                SocketInfo {
                    family: 2,
                    port: 8080,
                    backlog: 128,
                    addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    scope_id: 0,
                    opt_count: 0,
                },
                opts(rng),
            ),
            vec![],
        ),
        (
            FdKind::TcpUnbound(
                SocketInfo {
                    family: 2,
                    port: 0,
                    backlog: 0,
                    addr: [0; 16],
                    scope_id: 0,
                    opt_count: 0,
                },
                opts(rng),
            ),
            vec![],
        ),
        (
            FdKind::Udp(
                SocketInfo {
                    family: 10,
                    port: 5353,
                    backlog: 0,
                    addr: [0; 16],
                    scope_id: 2,
                    opt_count: 0,
                },
                opts(rng),
            ),
            vec![],
        ),
        (
            FdKind::Epoll(
                EpollSet {
                    count: 0,
                    flags: 0x80000,
                },
                (0..rng.below(5)).map(|_| rng.fill()).collect(),
            ),
            vec![],
        ),
        (FdKind::Eventfd(rng.fill()), vec![]),
        (FdKind::Timerfd(rng.fill()), vec![]),
        (FdKind::Signalfd(rng.fill()), vec![]),
        (FdKind::Other(b"anon_inode:[io_uring]".to_vec()), vec![]),
    ];
    for (kind, data) in kinds {
        let info = next_fd(rng);
        let streamed = rng.below(2) == 0;
        fds.push(FdModel {
            info,
            kind,
            data,
            streamed,
        });
    }
    let timers = (0..1 + rng.below(2))
        .map(|i| {
            let mut t: PosixTimer = rng.fill();
            t.id = i as i32;
            t
        })
        .collect();
    Model {
        vpid,
        seq: 1,
        parent_seq: 0,
        created_ns: rng.next(),
        process,
        cwd: b"/home/app".to_vec(),
        exe: b"/usr/bin/app".to_vec(),
        argv: (rng.below(2) == 0).then(|| b"app\0--port\08080\0".to_vec()),
        env: (rng.below(2) == 0).then(|| b"HOME=/home/app\0LANG=C\0".to_vec()),
        rlimits: rng.fill(),
        threads,
        sigactions: rng.fill(),
        pending,
        mappings,
        fds,
        itimers: rng.fill(),
        address_space: {
            let mut info: AddressSpace = rng.fill();
            let auxv = (0..rng.below(64) * 16)
                .map(|i| i as u8)
                .collect::<Vec<u8>>();
            info.auxv_len = auxv.len() as u32;
            AddressSpaceSection { info, auxv }
        },
        timers,
    }
}

/// The model with fixed contents used by most tests.
pub fn sample() -> Model {
    model(&mut Rng(0x5eed), 3)
}

/// A small image (every kind, little data), for byte-by-byte loops.
pub fn small() -> Model {
    let mut m = model(&mut Rng(42), 1);
    for fd in &mut m.fds {
        fd.data.truncate(8);
    }
    for t in &mut m.threads {
        t.1.truncate(16);
    }
    m
}

fn body(kind: &FdKind) -> FdBody<'_> {
    match kind {
        FdKind::Regular(r, p) => FdBody::Regular(*r, p),
        FdKind::Pipe(e, p) => FdBody::Pipe(*e, p),
        FdKind::UnixPair(u) => FdBody::UnixPair(*u),
        FdKind::TcpListen(s, o) => FdBody::TcpListen(*s, o),
        FdKind::Udp(s, o) => FdBody::Udp(*s, o),
        FdKind::TcpUnbound(s, o) => FdBody::TcpUnbound(*s, o),
        FdKind::Epoll(e, x) => FdBody::Epoll(*e, x),
        FdKind::Eventfd(e) => FdBody::Eventfd(*e),
        FdKind::Timerfd(t) => FdBody::Timerfd(*t),
        FdKind::Signalfd(s) => FdBody::Signalfd(*s),
        FdKind::Other(d) => FdBody::Other(d),
    }
}

/// Write the sections of `m` (after the header) to `w`.
pub fn write_sections<S: Sink>(w: &mut ImageWriter<S>, m: &Model) -> Result<(), WriteError> {
    w.process(
        &m.process,
        &m.cwd,
        &m.exe,
        m.argv.as_deref(),
        m.env.as_deref(),
    )?;
    w.rlimits(&m.rlimits)?;
    w.sigactions(&m.sigactions)?;
    for (t, x) in &m.threads {
        w.thread(t, x)?;
    }
    for (vtid, infos) in &m.pending {
        w.pending(*vtid, infos)?;
    }
    for mm in &m.mappings {
        w.mapping(&mm.info, &mm.path)?;
        if let Some(mem) = &mm.memory {
            w.pages_from_memory(mm.info.start, mem)?;
        }
    }
    for fd in &m.fds {
        let b = body(&fd.kind);
        if fd.streamed {
            w.begin_fd(&fd.info, &b, fd.data.len() as u64)?;
            for piece in fd.data.chunks(7) {
                w.fd_data(piece)?;
            }
            w.end_section()?;
        } else {
            w.fd(&fd.info, &b, &fd.data)?;
        }
    }
    w.itimers(&m.itimers)?;
    w.address_space(&m.address_space.info, &m.address_space.auxv)?;
    for t in &m.timers {
        w.posix_timer(t)?;
    }
    Ok(())
}

/// The bytes of `m`'s process file.
pub fn write(m: &Model) -> Vec<u8> {
    let mut w = ImageWriter::new(Vec::new(), m.vpid, m.seq, m.parent_seq, m.created_ns).unwrap();
    write_sections(&mut w, m).unwrap();
    let (bytes, done) = w.finish().unwrap();
    assert_eq!(done.len, bytes.len() as u64);
    assert_eq!(done.crc, crc32c::crc32c(&bytes));
    bytes
}

/// What a reader handed out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub sections: Vec<Section>,
    /// Page address → its bytes, for every data page.
    pub pages: BTreeMap<u64, Vec<u8>>,
    /// Addresses of pages marked zero.
    pub zero: Vec<u64>,
    /// Descriptor → its data.
    pub fd_data: BTreeMap<u32, Vec<u8>>,
}

impl Visitor for Collected {
    fn section(&mut self, _offset: u64, section: &Section) -> io::Result<()> {
        self.sections.push(section.clone());
        Ok(())
    }
    fn page_data(&mut self, _start: u64, addr: u64, bytes: &[u8]) -> io::Result<()> {
        assert_eq!(addr % PAGE_SIZE, 0);
        assert_eq!(bytes.len() as u64 % PAGE_SIZE, 0);
        for (i, page) in bytes.chunks(PAGE_SIZE as usize).enumerate() {
            self.pages
                .insert(addr + i as u64 * PAGE_SIZE, page.to_vec());
        }
        Ok(())
    }
    fn zero_pages(&mut self, _start: u64, addr: u64, count: u64) -> io::Result<()> {
        for i in 0..count {
            self.pages.remove(&(addr + i * PAGE_SIZE));
            self.zero.push(addr + i * PAGE_SIZE);
        }
        Ok(())
    }
    fn fd_data(&mut self, fd: u32, pos: u64, bytes: &[u8]) -> io::Result<()> {
        let d = self.fd_data.entry(fd).or_default();
        assert_eq!(d.len() as u64, pos);
        d.extend_from_slice(bytes);
        Ok(())
    }
}

/// Read a process file held in memory.
pub fn read(bytes: &[u8]) -> Result<Collected, ImageError> {
    let mut c = Collected::default();
    let mut r = ProcessReader::new(Cursor::new(bytes), bytes.len() as u64, Path::new("p.fimg"))?;
    r.read_all(&mut c)?;
    Ok(c)
}

/// The sections a reader should return for `m`, with the length fields the
/// writer sets.
pub fn expected_sections(m: &Model) -> Vec<Section> {
    use ferry_image::read::*;
    let mut out = Vec::new();
    let mut p = m.process;
    p.cwd_len = m.cwd.len() as u32;
    p.exe_len = m.exe.len() as u32;
    p.argv_len = m.argv.as_ref().map_or(0, |a| a.len() as u32);
    p.env_len = m.env.as_ref().map_or(0, |a| a.len() as u32);
    p.flags &= !(PROC_HAS_ARGV | PROC_HAS_ENV);
    if m.argv.is_some() {
        p.flags |= PROC_HAS_ARGV;
    }
    if m.env.is_some() {
        p.flags |= PROC_HAS_ENV;
    }
    out.push(Section::Process(Process {
        info: p,
        cwd: m.cwd.clone(),
        exe: m.exe.clone(),
        argv: m.argv.clone(),
        env: m.env.clone(),
    }));
    out.push(Section::Rlimits(m.rlimits));
    out.push(Section::SigActions(m.sigactions));
    for (t, x) in &m.threads {
        let mut t = *t;
        t.xsave_len = x.len() as u32;
        out.push(Section::Thread(Thread {
            info: t,
            xsave: x.clone(),
        }));
    }
    for (vtid, infos) in &m.pending {
        out.push(Section::Pending(Pending {
            vtid: *vtid,
            siginfo: infos.clone(),
        }));
    }
    for mm in &m.mappings {
        let mut info = mm.info;
        info.path_len = mm.path.len() as u32;
        out.push(Section::Mapping(Mapping {
            info,
            path: mm.path.clone(),
        }));
        if let Some(mem) = &mm.memory {
            let nonzero: Vec<bool> = mem
                .chunks(PAGE_SIZE as usize)
                .map(|p| p.iter().any(|&b| b != 0))
                .collect();
            let data = nonzero.iter().filter(|&&n| n).count() as u64;
            let runs = nonzero
                .iter()
                .enumerate()
                .filter(|&(i, &n)| n && (i == 0 || !nonzero[i - 1]))
                .count() as u64;
            if runs > 0 {
                out.push(Section::Pages(PagesSummary {
                    mapping_start: mm.info.start,
                    runs,
                    data_pages: data,
                    zero_pages: 0,
                }));
            }
        }
    }
    for fd in &m.fds {
        let mut info = fd.info;
        let mut kind = fd.kind.clone();
        let (code, fixed, var) = match &mut kind {
            FdKind::Regular(r, p) => {
                r.path_len = p.len() as u32;
                (FD_REGULAR, RegularFile::LEN, p.len())
            }
            FdKind::Pipe(e, p) => {
                e.path_len = p.len() as u32;
                (FD_PIPE, PipeEnd::LEN, p.len())
            }
            FdKind::UnixPair(_) => (FD_UNIX_PAIR, UnixPairEnd::LEN, 0),
            FdKind::TcpListen(s, o) => {
                s.opt_count = o.len() as u32;
                (FD_TCP_LISTEN, SocketInfo::LEN, o.len() * SockOpt::LEN)
            }
            FdKind::Udp(s, o) => {
                s.opt_count = o.len() as u32;
                (FD_UDP, SocketInfo::LEN, o.len() * SockOpt::LEN)
            }
            FdKind::TcpUnbound(s, o) => {
                s.opt_count = o.len() as u32;
                (FD_TCP_UNBOUND, SocketInfo::LEN, o.len() * SockOpt::LEN)
            }
            FdKind::Epoll(e, x) => {
                e.count = x.len() as u32;
                (FD_EPOLL, EpollSet::LEN, x.len() * EpollEntry::LEN)
            }
            FdKind::Eventfd(_) => (FD_EVENTFD, Eventfd::LEN, 0),
            FdKind::Timerfd(_) => (FD_TIMERFD, Timerfd::LEN, 0),
            FdKind::Signalfd(_) => (FD_SIGNALFD, Signalfd::LEN, 0),
            FdKind::Other(d) => (FD_OTHER, OtherFd::LEN, d.len()),
        };
        info.kind = code;
        info.body_len = (fixed + var) as u32;
        info.data_len = fd.data.len() as u64;
        out.push(Section::Fd(Fd { info, kind }));
    }
    out.push(Section::Itimers(m.itimers));
    out.push(Section::AddressSpace(m.address_space.clone()));
    for t in &m.timers {
        out.push(Section::PosixTimer(*t));
    }
    out
}

/// The data pages a reader should hand out for `m`.
pub fn expected_pages(m: &Model) -> BTreeMap<u64, Vec<u8>> {
    let mut pages = BTreeMap::new();
    for mm in &m.mappings {
        if let Some(mem) = &mm.memory {
            for (i, p) in mem.chunks(PAGE_SIZE as usize).enumerate() {
                if p.iter().any(|&b| b != 0) {
                    pages.insert(mm.info.start + i as u64 * PAGE_SIZE, p.to_vec());
                }
            }
        }
    }
    pages
}

/// A process file assembled from raw sections, end section included,
/// with every checksum right: for inputs the writer will not produce.
pub fn raw_file(
    header: &FileHeader,
    extension: &[u8],
    sections: &[(u16, u16, Vec<u8>)],
) -> Vec<u8> {
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(extension);
    for (i, (kind, flags, payload)) in sections.iter().enumerate() {
        push_section(&mut out, i as u32, *kind, *flags, payload);
    }
    let end = End {
        sections: sections.len() as u64,
        bytes: out.len() as u64,
        running_crc: crc32c::crc32c(&out),
        reserved: 0,
    };
    push_section(
        &mut out,
        sections.len() as u32,
        Kind::End as u16,
        0,
        end.as_bytes(),
    );
    out
}

/// Append a sealed section.
pub fn push_section(out: &mut Vec<u8>, index: u32, kind: u16, flags: u16, payload: &[u8]) {
    let crc = crc32c::crc32c(payload);
    let trailing = flags & FLAG_TRAILING_CRC != 0;
    let h = SectionHeader::new(
        kind,
        flags,
        index,
        payload.len() as u64,
        if trailing { 0 } else { crc },
    );
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(payload);
    if trailing {
        out.extend_from_slice(&crc.to_le_bytes());
    }
}

/// The payload of a minimal process section for `vpid`.
pub fn process_payload(vpid: u32) -> Vec<u8> {
    let mut p = ProcessInfo::new_zeroed();
    p.vpid = vpid;
    p.as_bytes().to_vec()
}

/// The payload of a minimal thread section.
pub fn thread_payload(vtid: u32) -> Vec<u8> {
    let mut t: ThreadInfo = Rng(vtid as u64).fill();
    t.vtid = vtid;
    t.xsave_len = 0;
    t.as_bytes().to_vec()
}

/// The sections of a minimal valid image of `vpid`: process, one thread.
pub fn minimal_sections(vpid: u32) -> Vec<(u16, u16, Vec<u8>)> {
    vec![
        (Kind::Process as u16, 0, process_payload(vpid)),
        (Kind::Thread as u16, 0, thread_payload(vpid)),
    ]
}

/// Every error message is one line naming the file and the offset.
pub fn assert_one_line(e: &ImageError) {
    let line = e.to_string();
    assert!(!line.contains('\n'), "{line}");
    let prefix = format!("{}: ", e.path().display());
    assert!(line.starts_with(&prefix), "{line}");
    if let Some(o) = e.offset() {
        assert!(line.starts_with(&format!("{prefix}offset {o}: ")), "{line}");
    }
}
