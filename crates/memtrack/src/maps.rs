//! The mappings of a process, from `/proc/<pid>/maps`, into storage the
//! caller provides.
//!
//! A line is
//! `start-end perms offset major:minor inode[ padding name]`, for example
//! `7f8d811c7000-7f8d811ed000 r-xp 00001000 fe:00 325843   /usr/lib/ld.so`.
//! The kernel pads the name to a column; everything after the padding up to
//! the newline is the name, spaces included. A file that was unlinked
//! carries ` (deleted)` after its path; a newline in a path is written as
//! `\012` (other bytes, backslash included, appear as they are).
//!
//! Parsing borrows from the text: a [`Mapping`]'s path points into the
//! caller's buffer, so nothing is copied or allocated.

use crate::error::SysError;
use crate::sys_unsafe::Syscalls;
use crate::Range;
use core::fmt;

/// Access bits of a mapping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prot {
    /// `r`
    pub read: bool,
    /// `w`
    pub write: bool,
    /// `x`
    pub exec: bool,
}

impl Prot {
    /// No access at all (`---`): a reservation or a guard.
    pub fn is_none(&self) -> bool {
        !self.read && !self.write && !self.exec
    }
}

/// What a mapping is, from its name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    /// `[heap]`: the `brk` area.
    Heap,
    /// `[stack]`: the main thread's stack (thread stacks are anonymous).
    Stack,
    /// `[vdso]`: kernel code mapped into the process; a restorer moves it,
    /// never copies it.
    Vdso,
    /// `[vvar]`: the vDSO's data page(s), device memory.
    Vvar,
    /// `[vvar_vclock]`: the vDSO's clock pages (Linux ≥ 6.13, apart from
    /// `[vvar]`).
    VvarVclock,
    /// `[vsyscall]`: the legacy fixed page, not part of the address space
    /// proper.
    Vsyscall,
    /// No name, or a name given with `PR_SET_VMA_ANON_NAME`
    /// (`[anon:…]`, `[anon_shmem:…]`).
    #[default]
    Anonymous,
    /// A path: a file, a `memfd:`, a SysV segment.
    File,
    /// Another bracketed or non-path name (`[uprobes]`, `anon_inode:…`).
    Other,
}

/// One line of `/proc/<pid>/maps`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mapping<'a> {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// Access.
    pub prot: Prot,
    /// `s`: shared with other mappings of the same object; `p`: private
    /// (copy-on-write).
    pub shared: bool,
    /// Offset into the file (the page offset for anonymous memory).
    pub offset: u64,
    /// Device major number of the file.
    pub dev_major: u32,
    /// Device minor number of the file.
    pub dev_minor: u32,
    /// Inode of the file (0 for anonymous memory).
    pub inode: u64,
    /// The name without ` (deleted)`: a path, a bracketed name, or empty.
    pub path: &'a [u8],
    /// The name ended in ` (deleted)`: the file was unlinked. (A file whose
    /// name really ends so reads the same; its inode tells them apart.)
    pub deleted: bool,
    /// What the name says this is.
    pub kind: Kind,
}

impl Mapping<'_> {
    /// `[start, end)`.
    pub fn range(&self) -> Range {
        Range {
            start: self.start,
            end: self.end,
        }
    }

    /// The same mapping as `other`: same place, access, sharing, backing
    /// object and name.
    pub fn same_as(&self, other: &Mapping<'_>) -> bool {
        self.start == other.start
            && self.end == other.end
            && self.prot == other.prot
            && self.shared == other.shared
            && self.offset == other.offset
            && self.dev_major == other.dev_major
            && self.dev_minor == other.dev_minor
            && self.inode == other.inode
            && self.deleted == other.deleted
            && self.path == other.path
    }

    /// Whether an incremental checkpoint should track this mapping's
    /// written pages: private memory the process can reach — anonymous,
    /// heap, stack, or a private file mapping — and not `---`.
    ///
    /// Left out: shared mappings (a write through another mapping, another
    /// process or `write(2)` to the object is not seen: they are saved in
    /// full), `[vdso]`/`[vvar]`/`[vvar_vclock]`/`[vsyscall]` (not
    /// registrable; restored, not copied), and `---` reservations (whose
    /// tracking would build page tables for all of them; when one is made
    /// accessible it shows as changed and untracked).
    pub fn trackable(&self) -> bool {
        !self.shared
            && !self.prot.is_none()
            && matches!(
                self.kind,
                Kind::Heap | Kind::Stack | Kind::Anonymous | Kind::File
            )
    }
}

/// A line that could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("maps line {line} (byte {offset}): {what}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// Byte offset of the line's start in the text.
    pub offset: usize,
    /// What was wrong.
    pub what: &'static str,
}

/// Reading or parsing a maps file failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapsError {
    /// The file could not be opened or read.
    #[error("read maps: {0}")]
    Read(SysError),
    /// The file is larger than the text buffer.
    #[error("read maps: the file is larger than the {capacity}-byte buffer")]
    TextTooLong {
        /// The buffer's size.
        capacity: usize,
    },
    /// A line could not be parsed.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// There are more mappings than the output has room for.
    #[error("maps: more than {capacity} mappings (at line {line})")]
    TooMany {
        /// The output's capacity.
        capacity: usize,
        /// The line that did not fit.
        line: usize,
    },
}

/// Parse maps `text` into `out`; returns how many entries were filled.
pub fn parse<'a>(text: &'a [u8], out: &mut [Mapping<'a>]) -> Result<usize, MapsError> {
    let capacity = out.len();
    let mut n = 0usize;
    let mut offset = 0usize;
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line_no = i.saturating_add(1);
        let start_offset = offset;
        offset = offset.saturating_add(raw.len()).saturating_add(1);
        if raw.is_empty() {
            continue;
        }
        let m = parse_line(raw).map_err(|what| ParseError {
            line: line_no,
            offset: start_offset,
            what,
        })?;
        let slot = out.get_mut(n).ok_or(MapsError::TooMany {
            capacity,
            line: line_no,
        })?;
        *slot = m;
        n = n.saturating_add(1);
    }
    Ok(n)
}

/// Read `/proc/self/maps` into `text` and parse it into `out`.
pub fn read_self<'a>(
    sys: Syscalls,
    text: &'a mut [u8],
    out: &mut [Mapping<'a>],
) -> Result<usize, MapsError> {
    let len = read_file(sys, c"/proc/self/maps", text)?;
    let text: &'a [u8] = text;
    parse(text.get(..len).unwrap_or(text), out)
}

/// Read `/proc/<pid>/maps` into `text` and parse it into `out`.
pub fn read_pid<'a>(
    sys: Syscalls,
    pid: u32,
    text: &'a mut [u8],
    out: &mut [Mapping<'a>],
) -> Result<usize, MapsError> {
    let mut path = [0u8; 32];
    let p = proc_path(pid, b"maps", &mut path).ok_or(MapsError::Read(SysError {
        op: "format /proc/<pid>/maps",
        errno: crate::Errno(libc::ENAMETOOLONG),
    }))?;
    let len = read_file(sys, p, text)?;
    let text: &'a [u8] = text;
    parse(text.get(..len).unwrap_or(text), out)
}

/// `/proc/<pid>/<leaf>` NUL-terminated in `buf`; `None` if it does not fit.
fn proc_path<'b>(pid: u32, leaf: &[u8], buf: &'b mut [u8; 32]) -> Option<&'b core::ffi::CStr> {
    let mut w = Writer {
        buf: &mut buf[..],
        len: 0,
        overflow: false,
    };
    let _ = fmt::write(&mut w, format_args!("/proc/{pid}/"));
    for &b in leaf {
        w.push(b);
    }
    w.push(0);
    if w.overflow {
        return None;
    }
    let len = w.len;
    core::ffi::CStr::from_bytes_until_nul(buf.get(..len)?).ok()
}

struct Writer<'b> {
    buf: &'b mut [u8],
    len: usize,
    overflow: bool,
}

impl Writer<'_> {
    fn push(&mut self, b: u8) {
        match self.buf.get_mut(self.len) {
            Some(slot) => {
                *slot = b;
                self.len = self.len.saturating_add(1);
            }
            None => self.overflow = true,
        }
    }
}

impl fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            self.push(b);
        }
        Ok(())
    }
}

/// Read the whole of `path` into `buf`; a file that does not fit is an
/// error, never a silent cut.
pub(crate) fn read_file(
    sys: Syscalls,
    path: &core::ffi::CStr,
    buf: &mut [u8],
) -> Result<usize, MapsError> {
    let fd = sys
        .open_read("open(/proc/…)", path)
        .map_err(MapsError::Read)?;
    let mut len = 0usize;
    while let Some(rest) = buf.get_mut(len..) {
        if rest.is_empty() {
            // Full: one more byte would say whether the file goes on.
            let mut probe = [0u8; 1];
            let more = sys
                .read("read(/proc/…)", &fd, &mut probe)
                .map_err(MapsError::Read)?;
            if more != 0 {
                return Err(MapsError::TextTooLong {
                    capacity: buf.len(),
                });
            }
            break;
        }
        let got = sys
            .read("read(/proc/…)", &fd, rest)
            .map_err(MapsError::Read)?;
        if got == 0 {
            break;
        }
        len = len.saturating_add(got);
    }
    Ok(len)
}

fn parse_line(line: &[u8]) -> Result<Mapping<'_>, &'static str> {
    let mut c = Cursor { s: line, at: 0 };
    let start = c.hex(b'-').ok_or("bad start address")?;
    let end = c.hex(b' ').ok_or("bad end address")?;
    if end < start {
        return Err("end address below start address");
    }
    let perms = c.take(4).ok_or("truncated permissions")?;
    let prot = match perms {
        [r, w, x, _] => Prot {
            read: flag(*r, b'r')?,
            write: flag(*w, b'w')?,
            exec: flag(*x, b'x')?,
        },
        _ => return Err("truncated permissions"),
    };
    let shared = match perms.get(3) {
        Some(b's') => true,
        Some(b'p') => false,
        _ => return Err("sharing flag is neither 'p' nor 's'"),
    };
    if !c.eat(b' ') {
        return Err("no space after permissions");
    }
    let offset = c.hex(b' ').ok_or("bad offset")?;
    let dev_major = c.hex(b':').ok_or("bad device major")?;
    let dev_minor = c.hex(b' ').ok_or("bad device minor")?;
    let inode = c.dec().ok_or("bad inode")?;
    let name = match c.rest() {
        [] => &[][..],
        [b' ', rest @ ..] => trim_leading_spaces(rest),
        _ => return Err("no space after inode"),
    };
    let (path, deleted) = match name.strip_suffix(b" (deleted)") {
        Some(p) => (p, true),
        None => (name, false),
    };
    Ok(Mapping {
        start: usize::try_from(start).map_err(|_| "start address too large")?,
        end: usize::try_from(end).map_err(|_| "end address too large")?,
        prot,
        shared,
        offset,
        dev_major: u32::try_from(dev_major).map_err(|_| "device major too large")?,
        dev_minor: u32::try_from(dev_minor).map_err(|_| "device minor too large")?,
        inode,
        path,
        deleted,
        kind: kind_of(path),
    })
}

fn flag(b: u8, set: u8) -> Result<bool, &'static str> {
    if b == set {
        Ok(true)
    } else if b == b'-' {
        Ok(false)
    } else {
        Err("bad permission character")
    }
}

fn trim_leading_spaces(s: &[u8]) -> &[u8] {
    let skip = s.iter().take_while(|&&b| b == b' ').count();
    s.get(skip..).unwrap_or(&[])
}

fn kind_of(path: &[u8]) -> Kind {
    match path {
        b"" => Kind::Anonymous,
        b"[heap]" => Kind::Heap,
        b"[stack]" => Kind::Stack,
        b"[vdso]" => Kind::Vdso,
        b"[vvar]" => Kind::Vvar,
        b"[vvar_vclock]" => Kind::VvarVclock,
        b"[vsyscall]" => Kind::Vsyscall,
        p if p.starts_with(b"[anon:") || p.starts_with(b"[anon_shmem:") => Kind::Anonymous,
        // Kernels before 4.5 named thread stacks `[stack:<tid>]`.
        p if p.starts_with(b"[stack:") => Kind::Stack,
        p if p.starts_with(b"/") => Kind::File,
        _ => Kind::Other,
    }
}

struct Cursor<'a> {
    s: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    /// Hex digits up to `stop` (consumed).
    fn hex(&mut self, stop: u8) -> Option<u64> {
        let mut v: u64 = 0;
        let mut digits = 0usize;
        loop {
            let b = *self.s.get(self.at)?;
            self.at = self.at.saturating_add(1);
            if b == stop {
                break;
            }
            let d = (b as char).to_digit(16)?;
            v = v.checked_mul(16)?.checked_add(u64::from(d))?;
            digits = digits.saturating_add(1);
        }
        (digits > 0).then_some(v)
    }

    /// Decimal digits up to a space or the end (not consumed).
    fn dec(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        let mut digits = 0usize;
        while let Some(&b) = self.s.get(self.at) {
            if b == b' ' {
                break;
            }
            let d = (b as char).to_digit(10)?;
            v = v.checked_mul(10)?.checked_add(u64::from(d))?;
            digits = digits.saturating_add(1);
            self.at = self.at.saturating_add(1);
        }
        (digits > 0).then_some(v)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.s.get(self.at..end)?;
        self.at = end;
        Some(s)
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.s.get(self.at) == Some(&b) {
            self.at = self.at.saturating_add(1);
            true
        } else {
            false
        }
    }

    fn rest(&self) -> &'a [u8] {
        self.s.get(self.at..).unwrap_or(&[])
    }
}

/// How two maps tables differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change<'o, 'n> {
    /// In the new table only (made, moved, resized or changed): a
    /// checkpoint saves it whole.
    Added(&'n Mapping<'n>),
    /// In the old table only.
    Removed(&'o Mapping<'o>),
}

/// Walk two tables sorted by address (as the kernel writes them) and report
/// each mapping that is not the [`Mapping::same_as`] one at the same place
/// in the other. A mapping unmapped and made again with the same address,
/// access and backing reads the same here; [`crate::Tracker::untracked`]
/// tells it apart.
pub fn diff<'o, 'n>(
    old: &'o [Mapping<'o>],
    new: &'n [Mapping<'n>],
    mut f: impl FnMut(Change<'o, 'n>),
) {
    let mut o = old.iter().peekable();
    let mut n = new.iter().peekable();
    loop {
        match (o.peek(), n.peek()) {
            (None, None) => break,
            (Some(&a), None) => {
                f(Change::Removed(a));
                o.next();
            }
            (None, Some(&b)) => {
                f(Change::Added(b));
                n.next();
            }
            (Some(&a), Some(&b)) => {
                if a.start < b.start {
                    f(Change::Removed(a));
                    o.next();
                } else if b.start < a.start {
                    f(Change::Added(b));
                    n.next();
                } else {
                    if !a.same_as(b) {
                        f(Change::Removed(a));
                        f(Change::Added(b));
                    }
                    o.next();
                    n.next();
                }
            }
        }
    }
}

#[cfg(feature = "std")]
mod owned {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// A maps table that owns its text (with the `std` feature).
    #[derive(Clone, Debug, Default)]
    pub struct OwnedMaps {
        text: Vec<u8>,
    }

    impl OwnedMaps {
        /// Read `/proc/self/maps`, growing the buffer until it fits.
        pub fn read_self(sys: Syscalls) -> Result<OwnedMaps, MapsError> {
            let mut cap = 64 * 1024;
            loop {
                let mut text = std::vec![0u8; cap];
                match read_file(sys, c"/proc/self/maps", &mut text) {
                    Ok(len) => {
                        text.truncate(len);
                        let maps = OwnedMaps { text };
                        // Check it parses now, not at first use.
                        maps.mappings()?;
                        return Ok(maps);
                    }
                    Err(MapsError::TextTooLong { .. }) => cap = cap.saturating_mul(2),
                    Err(e) => return Err(e),
                }
            }
        }

        /// Own a copy of `text`.
        pub fn from_text(text: &[u8]) -> OwnedMaps {
            OwnedMaps {
                text: text.to_vec(),
            }
        }

        /// The text.
        pub fn text(&self) -> &[u8] {
            &self.text
        }

        /// The mappings.
        pub fn mappings(&self) -> Result<Vec<Mapping<'_>>, MapsError> {
            let lines = self
                .text
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                .saturating_add(1);
            let mut out = std::vec![Mapping::default(); lines];
            let n = parse(&self.text, &mut out)?;
            out.truncate(n);
            Ok(out)
        }
    }
}

#[cfg(feature = "std")]
pub use owned::OwnedMaps;
