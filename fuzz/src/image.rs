//! The image fuzz targets' checks: any bytes given to the process-file
//! reader and to the manifest parser get an error of one line naming the
//! file and the offset, or a reading whose summary matches the bytes; never
//! a panic, a hang or an allocation the input's lengths ask for.

use ferry_image::manifest::Manifest;
use ferry_image::read::{ImageError, ProcessReader, Section, Visitor};
use ferry_image::sections::End;
use ferry_image::{FileHeader, Kind, SectionHeader, FILE_HEADER_LEN, PAGE_SIZE, SECTION_HEADER_LEN};
use std::io::{self, Cursor};
use std::path::Path;
use zerocopy::{FromBytes, IntoBytes};

/// Checks what the reader hands out: whole, aligned pages; descriptor
/// data in order.
#[derive(Default)]
struct Checker {
    fd_pos: Option<(u32, u64)>,
    sections: u32,
}

impl Visitor for Checker {
    fn section(&mut self, _offset: u64, section: &Section) -> io::Result<()> {
        self.sections += 1;
        self.fd_pos = None;
        if let Section::End(e) = section {
            assert_eq!(e.sections + 1, self.sections as u64);
        }
        Ok(())
    }
    fn page_data(&mut self, start: u64, addr: u64, bytes: &[u8]) -> io::Result<()> {
        assert_eq!(addr % PAGE_SIZE, 0);
        assert!(addr >= start);
        assert_eq!(bytes.len() as u64 % PAGE_SIZE, 0);
        Ok(())
    }
    fn zero_pages(&mut self, start: u64, addr: u64, count: u64) -> io::Result<()> {
        assert_eq!(addr % PAGE_SIZE, 0);
        assert!(addr >= start && count > 0);
        Ok(())
    }
    fn fd_data(&mut self, fd: u32, pos: u64, bytes: &[u8]) -> io::Result<()> {
        let expected = match self.fd_pos {
            Some((f, p)) if f == fd => p,
            _ => 0,
        };
        assert_eq!(pos, expected);
        self.fd_pos = Some((fd, pos + bytes.len() as u64));
        Ok(())
    }
}

fn one_line(e: &ImageError) {
    let line = e.to_string();
    assert!(!line.contains('\n'));
    let offset = e.offset().expect("a file error names its offset");
    assert!(line.starts_with(&format!("{}: offset {offset}: ", e.path().display())));
}

/// Read `data` as a process file and as a manifest.
pub fn check(data: &[u8]) {
    let path = Path::new("fuzz.fimg");
    match ProcessReader::new(Cursor::new(data), data.len() as u64, path) {
        Ok(mut r) => match r.read_all(&mut Checker::default()) {
            Ok(s) => {
                assert_eq!(s.len, data.len() as u64);
                assert_eq!(s.crc, crc32c::crc32c(data));
            }
            Err(e) => one_line(&e),
        },
        Err(e) => one_line(&e),
    }
    if let Err(e) = Manifest::parse(data, Path::new("manifest.fimg")) {
        one_line(&e);
    }
}

/// A copy of `data` with the file header's and every reachable section's
/// checksums set right, and the end section's counts too (lengths are left
/// as they are), so the checks behind the checksums are reached.
pub fn seal_all(data: &[u8]) -> Vec<u8> {
    let mut buf = data.to_vec();
    let Ok((mut h, _)) = FileHeader::read_from_prefix(&buf) else {
        return buf;
    };
    h.seal();
    buf[..FILE_HEADER_LEN].copy_from_slice(h.as_bytes());
    let mut pos = (h.header_len as usize).max(FILE_HEADER_LEN);
    let mut index = 0u64;
    while let Some(rest) = buf.get(pos..) {
        let Ok((mut s, _)) = SectionHeader::read_from_prefix(rest) else {
            break;
        };
        let trailer = if s.trailing_crc() { 4 } else { 0 };
        let Some(len) = usize::try_from(s.payload_len)
            .ok()
            .filter(|&l| rest.len() - SECTION_HEADER_LEN >= l.saturating_add(trailer))
        else {
            break;
        };
        let body = pos + SECTION_HEADER_LEN;
        if s.kind == Kind::End as u16 && len >= End::LEN {
            let end = End {
                sections: index,
                bytes: pos as u64,
                running_crc: crc32c::crc32c(&buf[..pos]),
                reserved: 0,
            };
            buf[body..body + End::LEN].copy_from_slice(end.as_bytes());
        }
        let crc = crc32c::crc32c(&buf[body..body + len]);
        if trailer == 0 {
            s.payload_crc = crc;
        } else {
            buf[body + len..body + len + 4].copy_from_slice(&crc.to_le_bytes());
        }
        s.seal();
        buf[pos..body].copy_from_slice(s.as_bytes());
        pos = body + len + trailer;
        index += 1;
    }
    buf
}
