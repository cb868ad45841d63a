//! Image directories: written through temporary names with the manifest
//! last, refused without a valid manifest or when a process file is not
//! what the manifest lists, and chained for incremental images.

mod common;

use common::*;
use ferry_image::dir::{CheckpointError, CheckpointWriter, Image, MANIFEST_NAME};
use ferry_image::manifest::{write_manifest, Manifest, ManifestEntry};
use ferry_image::read::{ImageError, Visitor};
use ferry_image::sections::*;
use ferry_image::write::ImageWriter;
use ferry_image::PAGE_SIZE;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// A model for process `vpid` whose parent is `parent`.
fn process(vpid: u32, parent: u32, seed: u64) -> Model {
    let mut m = model(&mut Rng(seed), 2);
    m.vpid = vpid;
    m.process.vpid = vpid;
    m.process.parent_vpid = parent;
    m
}

fn write_image(dir: &Path, seq: u64, parent: Option<(u64, &Path)>, models: &[Model]) -> PathBuf {
    let mut w = CheckpointWriter::create(dir, seq, 1_700_000_000_000_000_000, parent).unwrap();
    for m in models {
        let m = Model {
            seq,
            parent_seq: parent.map_or(0, |p| p.0),
            ..m.clone()
        };
        w.write_process(m.vpid, |iw| write_sections(iw, &m))
            .unwrap();
    }
    w.finish().unwrap()
}

fn tree() -> Vec<Model> {
    vec![
        process(1, 0, 10),
        process(2, 1, 11),
        process(3, 2, 12),
        process(4, 1, 13),
    ]
}

fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

#[test]
fn a_whole_image_is_written_and_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt-1");
    let models = tree();
    let manifest = write_image(&dir, 1, None, &models);
    assert_eq!(manifest, dir.join(MANIFEST_NAME));
    // No temporary names are left.
    assert_eq!(
        names(&dir),
        ["1.fimg", "2.fimg", "3.fimg", "4.fimg", "manifest.fimg"]
    );
    let image = Image::open(&dir).unwrap();
    assert_eq!(image.seq(), 1);
    assert!(image.parent().unwrap().is_none());
    let tree: Vec<(u32, u32)> = image
        .manifest()
        .entries
        .iter()
        .map(|e| (e.vpid, e.parent_vpid))
        .collect();
    assert_eq!(tree, [(1, 0), (2, 1), (3, 2), (4, 1)]);
    let summaries = image.validate().unwrap();
    assert_eq!(summaries.len(), 4);
    for m in &models {
        let e = image.manifest().entry(m.vpid).unwrap();
        let bytes = fs::read(image.process_path(m.vpid)).unwrap();
        assert_eq!(e.file_len, bytes.len() as u64);
        assert_eq!(e.file_crc, crc32c::crc32c(&bytes));
        let mut c = Collected::default();
        image.read_process(m.vpid, &mut c).unwrap();
        let want = expected_sections(&Model {
            seq: 1,
            ..m.clone()
        });
        let last = c.sections.pop();
        assert!(matches!(last, Some(ferry_image::read::Section::End(_))));
        assert_eq!(c.sections, want);
        assert_eq!(c.pages, expected_pages(m));
    }
}

#[test]
fn an_interrupted_checkpoint_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    let line = format!(
        "{}: no manifest.fimg: the checkpoint did not finish",
        dir.display()
    );
    // Killed while writing process files.
    let mut w = CheckpointWriter::create(&dir, 1, 0, None).unwrap();
    let m = process(1, 0, 1);
    w.write_process(1, |iw| write_sections(iw, &m)).unwrap();
    drop(w);
    let e = Image::open(&dir).unwrap_err();
    assert!(matches!(e, ImageError::NoManifest { .. }));
    assert_eq!(e.to_string(), line);
    // Killed after the renames, before the manifest's.
    write_image(&dir.join("x"), 1, None, std::slice::from_ref(&m));
    let x = dir.join("x");
    fs::rename(x.join(MANIFEST_NAME), x.join("manifest.fimg.tmp")).unwrap();
    let e = Image::open(&x).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: no manifest.fimg: the checkpoint did not finish",
            x.display()
        )
    );
    // A directory that does not exist is an I/O error naming the manifest.
    let e = Image::open(&tmp.path().join("nowhere")).unwrap_err();
    assert!(matches!(e, ImageError::Io { .. }), "{e}");
    assert!(e.to_string().contains("nowhere/manifest.fimg"), "{e}");
}

#[test]
fn a_directory_with_a_complete_image_is_not_written_again() {
    let tmp = tempfile::tempdir().unwrap();
    write_image(tmp.path(), 1, None, &[process(1, 0, 1)]);
    let e = CheckpointWriter::create(tmp.path(), 2, 0, None).unwrap_err();
    assert!(matches!(e, CheckpointError::Exists { .. }), "{e}");
}

#[test]
fn every_damaged_or_cut_manifest_byte_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("i");
    write_image(
        &dir,
        3,
        Some((2, Path::new("../p"))),
        &[process(1, 0, 1), process(2, 1, 2)],
    );
    let path = dir.join(MANIFEST_NAME);
    let good = fs::read(&path).unwrap();
    assert!(Manifest::parse(&good, &path).is_ok());
    for at in 0..good.len() {
        for mask in [0x01u8, 0x80] {
            let mut bad = good.clone();
            bad[at] ^= mask;
            let e = Manifest::parse(&bad, &path).expect_err("damage not detected");
            assert_one_line(&e);
        }
    }
    for len in 0..good.len() {
        let e = Manifest::parse(&good[..len], &path).expect_err("cut not detected");
        assert_one_line(&e);
    }
    let mut longer = good.clone();
    longer.push(0);
    assert!(matches!(
        Manifest::parse(&longer, &path),
        Err(ImageError::AfterEnd { .. })
    ));
    // Through the directory too.
    let mut bad = good.clone();
    bad[70] ^= 1;
    fs::write(&path, &bad).unwrap();
    let e = Image::open(&dir).unwrap_err();
    assert!(
        e.to_string().contains("manifest body checksum mismatch"),
        "{e}"
    );
}

#[test]
fn a_process_file_that_is_not_what_the_manifest_lists_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let c = tmp.path().join("c");
    let m = process(1, 0, 5);
    write_image(&a, 1, None, std::slice::from_ref(&m));
    // The same process with one register changed: same length.
    let mut other = m.clone();
    other.threads[0].0.regs.rip ^= 1;
    write_image(&b, 1, None, &[other]);
    write_image(&c, 2, None, std::slice::from_ref(&m));
    assert!(Image::open(&a).unwrap().validate().is_ok());

    fs::copy(b.join("1.fimg"), a.join("1.fimg")).unwrap();
    let image = Image::open(&a).unwrap();
    let e = image.validate().unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::ManifestMismatch {
                what: "file checksum",
                ..
            }
        ),
        "{e}"
    );
    assert_one_line(&e);

    // A file of another checkpoint.
    fs::copy(c.join("1.fimg"), a.join("1.fimg")).unwrap();
    let e = Image::open(&a).unwrap().validate().unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::ManifestMismatch {
                what: "sequence number",
                file: 2,
                manifest: 1,
                ..
            }
        ),
        "{e}"
    );

    // Cut short: refused on opening.
    let bytes = fs::read(b.join("1.fimg")).unwrap();
    fs::write(a.join("1.fimg"), &bytes[..bytes.len() - 1]).unwrap();
    let e = Image::open(&a).unwrap_err();
    assert!(
        matches!(
            e,
            ImageError::ManifestMismatch {
                what: "file length",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().starts_with(&format!(
        "{}: offset 0: file length is",
        a.join("1.fimg").display()
    )));

    // Missing.
    fs::remove_file(a.join("1.fimg")).unwrap();
    let e = Image::open(&a).unwrap_err();
    assert!(matches!(e, ImageError::Io { .. }), "{e}");
    assert!(e.to_string().contains("1.fimg"), "{e}");
}

#[test]
fn the_process_tree_is_checked() {
    let entry = |vpid, parent_vpid| ManifestEntry {
        vpid,
        parent_vpid,
        file_len: 0,
        file_crc: 0,
        reserved: 0,
    };
    let parse = |entries: &[ManifestEntry]| {
        let mut bytes = Vec::new();
        write_manifest(&mut bytes, 1, 0, 0, &[], entries, None).unwrap();
        Manifest::parse(&bytes, Path::new("m"))
    };
    assert!(parse(&[entry(1, 0), entry(2, 1), entry(3, 0), entry(4, 3)]).is_ok());
    for (entries, why) in [
        (
            vec![entry(1, 0), entry(2, 7)],
            "parent 7 is not in the image",
        ),
        (vec![entry(1, 0), entry(1, 0)], "listed twice"),
        (vec![entry(0, 0)], "vpid 0"),
        (
            vec![entry(1, 0), entry(2, 3), entry(3, 2)],
            "its own ancestor",
        ),
        (vec![entry(5, 5)], "its own ancestor"),
    ] {
        let e = parse(&entries).unwrap_err();
        assert!(e.to_string().contains(why), "want {why:?}: {e}");
    }
    // The writer checks parents at the end.
    let tmp = tempfile::tempdir().unwrap();
    let mut w = CheckpointWriter::create(tmp.path(), 1, 0, None).unwrap();
    let m = process(2, 9, 1);
    w.write_process(2, |iw| write_sections(iw, &m)).unwrap();
    assert!(matches!(
        w.write_process(2, |_| Ok(())),
        Err(CheckpointError::Processes { .. })
    ));
    let e = w.finish().unwrap_err();
    assert!(
        e.to_string().contains("parent 9 is not in the image"),
        "{e}"
    );
    assert!(!tmp.path().join(MANIFEST_NAME).exists());
    // Nor a cycle, and nothing is renamed.
    let tmp = tempfile::tempdir().unwrap();
    let mut w = CheckpointWriter::create(tmp.path(), 1, 0, None).unwrap();
    for (vpid, parent) in [(2, 3), (3, 2)] {
        let m = process(vpid, parent, 1);
        w.write_process(vpid, |iw| write_sections(iw, &m)).unwrap();
    }
    let e = w.finish().unwrap_err();
    assert!(e.to_string().contains("its own ancestor"), "{e}");
    assert_eq!(names(tmp.path()), ["2.fimg.tmp", "3.fimg.tmp"]);
}

#[test]
fn a_process_file_written_elsewhere_is_adopted_after_a_check() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w =
        CheckpointWriter::create(tmp.path(), 4, 0, Some((3, Path::new("../three")))).unwrap();
    let m = Model {
        seq: 4,
        parent_seq: 3,
        ..process(7, 0, 3)
    };
    // As the shim would: stream the file to the temporary name itself.
    let file = fs::File::create(w.tmp_path(7)).unwrap();
    let mut iw = ImageWriter::new(ferry_image::write::IoSink(file), 7, 4, 3, 0).unwrap();
    write_sections(&mut iw, &m).unwrap();
    let (_, done) = iw.finish().unwrap();
    let e = w.adopt(7).unwrap();
    assert_eq!((e.file_len, e.file_crc), (done.len, done.crc));
    // A file cut short is refused.
    let bytes = write(&Model {
        seq: 4,
        parent_seq: 3,
        ..process(8, 7, 4)
    });
    fs::write(w.tmp_path(8), &bytes[..bytes.len() - 3]).unwrap();
    assert!(matches!(
        w.adopt(8),
        Err(CheckpointError::Invalid(ImageError::Truncated { .. }))
    ));
    // One of another checkpoint too.
    fs::write(
        w.tmp_path(8),
        write(&Model {
            seq: 5,
            parent_seq: 3,
            ..process(8, 7, 4)
        }),
    )
    .unwrap();
    assert!(matches!(
        w.adopt(8),
        Err(CheckpointError::Invalid(ImageError::ManifestMismatch {
            what: "sequence number",
            ..
        }))
    ));
    w.finish().unwrap();
    assert_eq!(Image::open(tmp.path()).unwrap().manifest().entries.len(), 1);
}

/// A visitor that applies pages to one mapping's memory.
struct Memory {
    start: u64,
    bytes: Vec<u8>,
}

impl Visitor for Memory {
    fn page_data(&mut self, start: u64, addr: u64, bytes: &[u8]) -> io::Result<()> {
        if start == self.start {
            let at = (addr - start) as usize;
            self.bytes[at..at + bytes.len()].copy_from_slice(bytes);
        }
        Ok(())
    }
    fn zero_pages(&mut self, start: u64, addr: u64, count: u64) -> io::Result<()> {
        if start == self.start {
            let at = (addr - start) as usize;
            self.bytes[at..at + (count * PAGE_SIZE) as usize].fill(0);
        }
        Ok(())
    }
}

#[test]
fn an_incremental_image_chains_to_its_parent() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("1");
    let incr = tmp.path().join("2");
    let pages = 16u64;
    let start = 0x7f00_0000_0000;
    let info = mapping(start, pages, MAP_PRIVATE | MAP_ANON, SPECIAL_NONE);
    let mut rng = Rng(99);
    let first = rng.bytes((pages * PAGE_SIZE) as usize);
    let base = Model {
        mappings: vec![],
        fds: vec![],
        ..process(1, 0, 6)
    };

    // The full image: every page.
    let mut w = CheckpointWriter::create(&full, 1, 0, None).unwrap();
    w.write_process(1, |iw| {
        write_sections(
            iw,
            &Model {
                seq: 1,
                ..base.clone()
            },
        )?;
        iw.mapping(&info, b"")?;
        iw.pages_from_memory(start, &first)
    })
    .unwrap();
    w.finish().unwrap();

    // Since then pages 3 and 4 were written, 9 became zero, 15 rewritten.
    let mut second = first.clone();
    let p = |n: u64| (n * PAGE_SIZE) as usize;
    second[p(3)..p(5)].copy_from_slice(&rng.bytes(p(2)));
    second[p(9)..p(10)].fill(0);
    second[p(15)..p(16)].copy_from_slice(&rng.bytes(p(1)));
    let mut w = CheckpointWriter::create(&incr, 2, 0, Some((1, Path::new("../1")))).unwrap();
    w.write_process(1, |iw| {
        write_sections(
            iw,
            &Model {
                seq: 2,
                parent_seq: 1,
                ..base.clone()
            },
        )?;
        iw.mapping(&info, b"")?;
        iw.begin_pages(start, 3, 3)?;
        iw.page_run(&PageRun {
            addr: start + 3 * PAGE_SIZE,
            count: 2,
            kind: RUN_DATA,
        })?;
        iw.page_data(&second[p(3)..p(5)])?;
        iw.page_run(&PageRun {
            addr: start + 9 * PAGE_SIZE,
            count: 1,
            kind: RUN_ZERO,
        })?;
        iw.page_run(&PageRun {
            addr: start + 15 * PAGE_SIZE,
            count: 1,
            kind: RUN_DATA,
        })?;
        iw.page_data(&second[p(15)..p(16)])?;
        iw.end_section()
    })
    .unwrap();
    w.finish().unwrap();
    // The incremental file holds only the changed pages.
    let incr_len = fs::metadata(incr.join("1.fimg")).unwrap().len();
    let full_len = fs::metadata(full.join("1.fimg")).unwrap().len();
    assert!(
        full_len - incr_len >= 12 * PAGE_SIZE,
        "{full_len} {incr_len}"
    );

    let image = Image::open(&incr).unwrap();
    let chain = image.chain().unwrap();
    assert_eq!(chain.iter().map(Image::seq).collect::<Vec<_>>(), [2, 1]);
    let mut mem = Memory {
        start,
        bytes: vec![0xee; p(pages)],
    };
    assert_eq!(image.read_chain(1, &mut mem).unwrap(), 2);
    assert!(
        mem.bytes == second,
        "the chain does not give the memory at the second checkpoint"
    );
    // The full image alone gives the first.
    let mut mem = Memory {
        start,
        bytes: vec![0xee; p(pages)],
    };
    assert_eq!(
        Image::open(&full).unwrap().read_chain(1, &mut mem).unwrap(),
        1
    );
    assert!(mem.bytes == first);

    // A parent directory holding another checkpoint is refused.
    let wrong = tmp.path().join("6");
    let mut w = CheckpointWriter::create(&wrong, 6, 0, Some((5, Path::new("../1")))).unwrap();
    let m = Model {
        seq: 6,
        parent_seq: 5,
        ..base.clone()
    };
    w.write_process(1, |iw| write_sections(iw, &m)).unwrap();
    w.finish().unwrap();
    let e = Image::open(&wrong).unwrap().chain().unwrap_err();
    assert!(
        e.to_string()
            .contains("incremental to image 5, but its parent directory holds image 1"),
        "{e}"
    );
    // A parent that did not finish is refused as such.
    fs::remove_file(full.join(MANIFEST_NAME)).unwrap();
    let e = image.chain().unwrap_err();
    assert!(matches!(e, ImageError::NoManifest { .. }), "{e}");
}

#[test]
fn a_foreign_or_newer_manifest() {
    let entry = ManifestEntry {
        vpid: 1,
        parent_vpid: 0,
        file_len: 9,
        file_crc: 0,
        reserved: 0,
    };
    let mut good = Vec::new();
    write_manifest(&mut good, 1, 0, 0, &[], &[entry], None).unwrap();
    let path = Path::new("d/manifest.fimg");
    let mut bad = good.clone();
    bad[..8].copy_from_slice(b"FERRYIMG");
    let e = Manifest::parse(&bad, path).unwrap_err();
    assert_eq!(
        e.to_string(),
        "d/manifest.fimg: offset 0: not a Ferry manifest (bad magic)"
    );
    let mut bad = good.clone();
    bad[8] = 2;
    let e = Manifest::parse(&bad, path).unwrap_err();
    assert_eq!(
        e.to_string(),
        "d/manifest.fimg: offset 8: manifest format version 2.1 is not supported (this reader reads version 1.x)"
    );
    // A newer minor with a longer header and longer entries is read.
    use ferry_image::manifest::ManifestHeader;
    use zerocopy::{FromBytes, IntoBytes};
    let (mut h, _) = ManifestHeader::read_from_prefix(&good).unwrap();
    h.minor = 4;
    h.header_len = 96 + 8;
    h.entry_len = 24 + 8;
    let mut body = good[64..96].to_vec();
    body.extend_from_slice(&[0xcc; 8]);
    body.extend_from_slice(entry.as_bytes());
    body.extend_from_slice(&[0xdd; 8]);
    h.body_crc = crc32c::crc32c(&body);
    h.crc = h.compute_crc();
    let mut newer = h.as_bytes().to_vec();
    newer.extend_from_slice(&body);
    // The body checksum covers everything after the 64 fixed bytes, the
    // header extension included.
    let m = Manifest::parse(&newer, path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.entries, [entry]);
    assert_eq!(m.position, None);
    // Minor 0 had no extension: its header is the 64 fixed bytes.
    let (mut h, _) = ManifestHeader::read_from_prefix(&good).unwrap();
    h.minor = 0;
    h.header_len = 64;
    h.body_crc = crc32c::crc32c(entry.as_bytes());
    h.crc = h.compute_crc();
    let mut older = h.as_bytes().to_vec();
    older.extend_from_slice(entry.as_bytes());
    let m = Manifest::parse(&older, path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (m.entries.as_slice(), m.position),
        ([entry].as_slice(), None)
    );
}

#[test]
fn an_image_of_a_replay_keeps_its_log_position() {
    use ferry_image::manifest::{ReplayPosition, POSITION_PRESENT};
    let entry = ManifestEntry {
        vpid: 1,
        parent_vpid: 0,
        file_len: 9,
        file_crc: 0,
        reserved: 0,
    };
    let at = ReplayPosition {
        flags: 0,
        prefix_crc: 0xdead_beef,
        records: 1234,
        gseq: 5678,
        reserved: 7,
    };
    let mut bytes = Vec::new();
    write_manifest(&mut bytes, 3, 0, 0, &[], &[entry], Some(&at)).unwrap();
    let path = Path::new("d/manifest.fimg");
    let m = Manifest::parse(&bytes, path).unwrap_or_else(|e| panic!("{e}"));
    let want = ReplayPosition {
        flags: POSITION_PRESENT,
        reserved: 0,
        ..at
    };
    assert_eq!(m.position, Some(want));
    // The position is under the body checksum.
    let mut bad = bytes.clone();
    bad[72] ^= 1;
    let e = Manifest::parse(&bad, path).unwrap_err();
    assert!(e.to_string().contains("offset 64"), "{e}");
}
