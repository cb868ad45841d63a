//! A process file written by the writer reads back as it was given, every
//! section kind and descriptor kind included; and the writer refuses what a
//! reader would refuse.

mod common;

use common::*;
use ferry_image::read::{Section, Visitor};
use ferry_image::sections::*;
use ferry_image::write::{FdBody, ImageWriter, WriteError};
use ferry_image::{Kind, PAGE_SIZE};
use proptest::prelude::*;

fn assert_round_trip(m: &Model) {
    let bytes = write(m);
    let got = read(&bytes).unwrap_or_else(|e| panic!("{e}"));
    let mut want = expected_sections(m);
    let end = match got.sections.last() {
        Some(Section::End(e)) => *e,
        other => panic!("last section is {other:?}"),
    };
    want.push(Section::End(end));
    assert_eq!(got.sections.len(), want.len());
    for (g, w) in got.sections.iter().zip(&want) {
        assert_eq!(g, w);
    }
    assert_eq!(end.sections as usize, want.len() - 1);
    assert_eq!(got.pages, expected_pages(m));
    assert!(got.zero.is_empty());
    for fd in &m.fds {
        let data = got.fd_data.get(&fd.info.fd).cloned().unwrap_or_default();
        assert_eq!(data, fd.data, "descriptor {}", fd.info.fd);
    }
}

#[test]
fn an_image_with_every_section_kind_reads_back() {
    let m = sample();
    // The sample holds every kind, so the test covers them all.
    let kinds: std::collections::HashSet<u16> = expected_sections(&m)
        .iter()
        .flat_map(|s| match s {
            Section::Fd(f) => vec![Kind::Fd as u16, 1000 + f.info.kind],
            s => vec![section_kind(s)],
        })
        .collect();
    for k in 1..=10 {
        assert!(
            kinds.contains(&k),
            "section kind {k} missing from the sample"
        );
        assert!(
            kinds.contains(&(1000 + k)),
            "descriptor kind {k} missing from the sample"
        );
    }
    assert_round_trip(&m);
}

fn section_kind(s: &Section) -> u16 {
    match s {
        Section::Process(_) => Kind::Process as u16,
        Section::Rlimits(_) => Kind::Rlimits as u16,
        Section::Thread(_) => Kind::Thread as u16,
        Section::SigActions(_) => Kind::SigActions as u16,
        Section::Pending(_) => Kind::Pending as u16,
        Section::Mapping(_) => Kind::Mapping as u16,
        Section::Pages(_) => Kind::Pages as u16,
        Section::Fd(_) => Kind::Fd as u16,
        Section::Itimers(_) => Kind::Itimers as u16,
        Section::PosixTimer(_) => Kind::PosixTimer as u16,
        Section::AddressSpace(_) => Kind::AddressSpace as u16,
        Section::Skipped { kind, .. } => *kind,
        Section::End(_) => Kind::End as u16,
    }
}

#[test]
fn zero_pages_are_never_stored() {
    let mut m = sample();
    m.fds.clear();
    let start = 0x7000_0000;
    let mut memory = vec![0u8; 8 * PAGE_SIZE as usize];
    memory[PAGE_SIZE as usize * 2] = 1;
    memory[PAGE_SIZE as usize * 6 + 100] = 2;
    memory[PAGE_SIZE as usize * 7 + 4095] = 3;
    let with_data = MappingModel {
        info: mapping(start, 8, MAP_PRIVATE | MAP_ANON, SPECIAL_NONE),
        path: vec![],
        memory: Some(memory),
    };
    let zero = MappingModel {
        info: mapping(
            start + 16 * PAGE_SIZE,
            8,
            MAP_PRIVATE | MAP_ANON,
            SPECIAL_NONE,
        ),
        path: vec![],
        memory: Some(vec![0; 8 * PAGE_SIZE as usize]),
    };
    m.mappings = vec![];
    let none = write(&m);
    m.mappings = vec![with_data.clone()];
    let one = write(&m);
    m.mappings = vec![with_data, zero];
    let two = write(&m);
    // Three pages of data in two runs.
    let got = read(&one).unwrap();
    assert_eq!(
        got.pages.keys().copied().collect::<Vec<_>>(),
        vec![
            start + 2 * PAGE_SIZE,
            start + 6 * PAGE_SIZE,
            start + 7 * PAGE_SIZE
        ]
    );
    assert!(got
        .sections
        .contains(&Section::Pages(ferry_image::read::PagesSummary {
            mapping_start: start,
            runs: 2,
            data_pages: 3,
            zero_pages: 0
        })));
    // The three pages of data and their headers: nothing for the five zero
    // pages.
    assert!(one.len() - none.len() < 4 * PAGE_SIZE as usize);
    // The all-zero mapping adds its mapping section only: no pages section.
    assert_eq!(two.len() - one.len(), 32 + MappingInfo::LEN);
    assert_round_trip(&m);
}

#[test]
fn streamed_pages_in_pieces_read_back() {
    let mut w = ImageWriter::new(Vec::new(), 5, 1, 0, 0).unwrap();
    w.process(
        &ProcessInfo { vpid: 5, ..zero() },
        b"/",
        b"/bin/x",
        None,
        None,
    )
    .unwrap();
    w.thread(&ThreadInfo { vtid: 5, ..zero() }, &[1, 2, 3])
        .unwrap();
    let start = 0x10_0000;
    w.mapping(&mapping(start, 100, MAP_PRIVATE | MAP_ANON, 0), b"")
        .unwrap();
    w.begin_pages(start, 2, 3).unwrap();
    w.page_run(&PageRun {
        addr: start + PAGE_SIZE,
        count: 2,
        kind: RUN_DATA,
    })
    .unwrap();
    let data: Vec<u8> = (0..2 * PAGE_SIZE).map(|i| (i % 251) as u8).collect();
    for piece in data.chunks(1000) {
        w.page_data(piece).unwrap();
    }
    w.page_run(&PageRun {
        addr: start + 50 * PAGE_SIZE,
        count: 1,
        kind: RUN_DATA,
    })
    .unwrap();
    w.page_data(&[9; PAGE_SIZE as usize]).unwrap();
    w.end_section().unwrap();
    let (bytes, _) = w.finish().unwrap();
    let got = read(&bytes).unwrap();
    assert_eq!(got.pages.len(), 3);
    assert_eq!(got.pages[&(start + PAGE_SIZE)], data[..PAGE_SIZE as usize]);
    assert_eq!(
        got.pages[&(start + 2 * PAGE_SIZE)],
        data[PAGE_SIZE as usize..]
    );
    assert_eq!(
        got.pages[&(start + 50 * PAGE_SIZE)],
        vec![9; PAGE_SIZE as usize]
    );
}

fn zero<T: zerocopy::FromZeros>() -> T {
    T::new_zeroed()
}

fn started() -> ImageWriter<Vec<u8>> {
    let mut w = ImageWriter::new(Vec::new(), 5, 1, 0, 0).unwrap();
    w.process(
        &ProcessInfo { vpid: 5, ..zero() },
        b"/",
        b"/bin/x",
        None,
        None,
    )
    .unwrap();
    w
}

#[test]
fn the_writer_refuses_what_a_reader_would_refuse() {
    // The process section comes first, with the header's vpid.
    let mut w = ImageWriter::new(Vec::new(), 5, 1, 0, 0).unwrap();
    assert!(matches!(w.rlimits(&zero()), Err(WriteError::Order(_))));
    assert!(matches!(
        w.process(&ProcessInfo { vpid: 6, ..zero() }, b"", b"", None, None),
        Err(WriteError::Invalid { .. })
    ));
    // Sequence numbers.
    assert!(ImageWriter::new(Vec::new(), 5, 0, 0, 0).is_err());
    assert!(ImageWriter::new(Vec::new(), 5, 3, 3, 0).is_err());
    // Caps.
    let mut w = started();
    let long = vec![b'a'; 4097];
    assert!(matches!(
        w.mapping(&mapping(0x1000, 1, MAP_PRIVATE, 0), &long),
        Err(WriteError::TooLong { max: 4096, .. })
    ));
    assert!(matches!(
        w.thread(&zero(), &vec![0; 65537]),
        Err(WriteError::TooLong { .. })
    ));
    // Mappings: alignment, order, sharing.
    let mut bad = mapping(0x1000, 1, MAP_PRIVATE, 0);
    bad.end += 1;
    assert!(w.mapping(&bad, b"").is_err());
    assert!(w
        .mapping(&mapping(0x1000, 1, MAP_PRIVATE | MAP_SHARED, 0), b"")
        .is_err());
    w.mapping(&mapping(0x10000, 4, MAP_PRIVATE, 0), b"")
        .unwrap();
    assert!(w
        .mapping(&mapping(0x11000, 1, MAP_PRIVATE, 0), b"")
        .is_err());
    // Pages belong to the last mapping, inside it, aligned, in order.
    assert!(w.begin_pages(0x20000, 1, 1).is_err());
    assert!(w.begin_pages(0x10000, 1, 5).is_err());
    let mut w2 = started();
    w2.mapping(&mapping(0x10000, 4, MAP_PRIVATE, 0), b"")
        .unwrap();
    w2.begin_pages(0x10000, 2, 2).unwrap();
    assert!(w2
        .page_run(&PageRun {
            addr: 0x10800,
            count: 1,
            kind: RUN_DATA
        })
        .is_err());
    assert!(matches!(w2.finish(), Err(WriteError::Failed)));
    let mut w3 = started();
    w3.mapping(&mapping(0x10000, 4, MAP_PRIVATE, 0), b"")
        .unwrap();
    w3.begin_pages(0x10000, 1, 1).unwrap();
    assert!(w3
        .page_run(&PageRun {
            addr: 0x13000,
            count: 2,
            kind: RUN_DATA
        })
        .is_err());
    // The vDSO carries no content.
    let mut w4 = started();
    w4.mapping(&mapping(0x10000, 2, MAP_PRIVATE, SPECIAL_VDSO), b"[vdso]")
        .unwrap();
    assert!(w4.begin_pages(0x10000, 1, 1).is_err());
    // A streamed descriptor gets exactly what it declared.
    let mut w5 = started();
    w5.thread(&ThreadInfo { vtid: 5, ..zero() }, &[]).unwrap();
    w5.begin_fd(&zero(), &FdBody::Eventfd(zero()), 10).unwrap();
    w5.fd_data(&[1; 4]).unwrap();
    assert!(matches!(w5.rlimits(&zero()), Err(WriteError::Order(_))));
    // The declared length is the whole payload: header and body, then the
    // 10 bytes of data of which 4 came.
    assert!(matches!(
        w5.end_section(),
        Err(WriteError::LengthMismatch { declared, written, .. }) if declared - written == 6
    ));
    let mut w6 = started();
    w6.begin_fd(&zero(), &FdBody::Eventfd(zero()), 2).unwrap();
    assert!(w6.fd_data(&[1; 3]).is_err());
    // An image without a thread is not finished.
    assert!(started().finish().is_err());
    // Known kinds go through their own methods.
    assert!(started().raw_section(Kind::Thread as u16, 0, b"").is_err());
}

#[test]
fn sink_errors_come_back_as_errno() {
    struct Full(usize);
    impl ferry_image::write::Sink for Full {
        fn write_all(&mut self, b: &[u8]) -> Result<(), i32> {
            if b.len() > self.0 {
                return Err(28);
            }
            self.0 -= b.len();
            Ok(())
        }
    }
    let m = sample();
    let mut w = ImageWriter::new(Full(3000), m.vpid, 1, 0, 0).unwrap();
    let e = write_sections(&mut w, &m).unwrap_err();
    assert_eq!(e, WriteError::Io { errno: 28 });
    assert!(matches!(w.finish(), Err(WriteError::Failed)));
}

struct Refuse;
impl Visitor for Refuse {
    fn page_data(&mut self, _: u64, _: u64, _: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::other("no room for the pages"))
    }
}

#[test]
fn a_visitor_error_stops_the_reader_and_names_the_section() {
    let bytes = write(&sample());
    let mut r = ferry_image::read::ProcessReader::new(
        std::io::Cursor::new(&bytes),
        bytes.len() as u64,
        std::path::Path::new("p.fimg"),
    )
    .unwrap();
    let e = r.read_all(&mut Refuse).unwrap_err();
    assert!(
        matches!(e, ferry_image::read::ImageError::Visitor { .. }),
        "{e}"
    );
    assert!(e.to_string().ends_with("no room for the pages"), "{e}");
    assert_one_line(&e);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn random_images_round_trip(seed in any::<u64>(), scale in 1usize..6) {
        let m = model(&mut Rng(seed), scale);
        assert_round_trip(&m);
    }
}

/// Skimming a file gives every section but the pages, as reading it does,
/// without reading a byte of page data: damage there goes unseen by the
/// skim and is found by the read.
#[test]
fn a_skim_gives_every_section_but_the_pages_and_reads_no_page() {
    use ferry_image::read::{ImageError, ProcessReader};
    use std::io::Cursor;
    use std::path::Path;
    let m = sample();
    let bytes = write(&m);
    let whole = read(&bytes).unwrap();
    let skim = |bytes: &[u8]| -> Result<Collected, ImageError> {
        let mut c = Collected::default();
        let mut r =
            ProcessReader::new(Cursor::new(bytes), bytes.len() as u64, Path::new("p.fimg"))?;
        r.skim_all(&mut c)?;
        Ok(c)
    };
    let skimmed = skim(&bytes).unwrap();
    assert!(skimmed.pages.is_empty() && skimmed.zero.is_empty());
    let not_pages: Vec<&Section> = whole
        .sections
        .iter()
        .filter(|s| !matches!(s, Section::Pages(_)))
        .collect();
    let skipped = skimmed
        .sections
        .iter()
        .filter(|s| matches!(s, Section::Skipped { .. }))
        .count();
    let rest: Vec<&Section> = skimmed
        .sections
        .iter()
        .filter(|s| !matches!(s, Section::Skipped { .. }))
        .collect();
    assert_eq!(rest, not_pages);
    assert_eq!(skipped, whole.sections.len() - not_pages.len());
    assert!(skipped > 0, "the sample holds pages");
    // A page's byte damaged: the skim does not see it, the read does.
    let page = whole.pages.values().next().expect("a data page").clone();
    let at = bytes
        .windows(page.len())
        .position(|w| w == page.as_slice())
        .expect("the page's bytes in the file");
    let mut bad = bytes.clone();
    bad[at + 100] ^= 0x40;
    assert!(skim(&bad).is_ok());
    assert!(read(&bad).is_err());
}
