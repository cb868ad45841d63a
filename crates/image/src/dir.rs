//! An image directory: writing it so that an interrupted checkpoint never
//! looks whole ([`CheckpointWriter`]), and opening it ([`Image`]).
//!
//! Process files are written as `<vpid>.fimg.tmp`, each fsynced; once all
//! are written they are renamed to `<vpid>.fimg` and the directory is
//! fsynced; then the manifest is written as `manifest.fimg.tmp`, fsynced,
//! renamed to `manifest.fimg`, and the directory fsynced again. A crash at
//! any point leaves either no `manifest.fimg` (the image is refused) or a
//! complete image.

use crate::manifest::{
    write_manifest, Manifest, ManifestEntry, ReplayPosition, MAX_MANIFEST_LEN, MAX_PROCESSES,
};
use crate::read::{Check, ImageError, ProcessReader, ProcessSummary, Visitor, CHUNK};
use crate::write::{Finished, ImageWriter, IoSink, WriteError};
use crate::MAX_PATH;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::string::String;
use std::vec::Vec;
use std::{format, vec};

/// Name of the manifest in an image directory.
pub const MANIFEST_NAME: &str = "manifest.fimg";
/// Longest chain of incremental images followed to its full image.
pub const MAX_CHAIN: usize = 256;

/// Name of process `vpid`'s file in an image directory.
pub fn process_file_name(vpid: u32) -> String {
    format!("{vpid}.fimg")
}

/// Why an image directory could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file operation failed.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Writing a process file or the manifest failed.
    #[error("{}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: WriteError,
    },
    /// The directory already holds a complete image.
    #[error("{}: already holds a complete image (manifest.fimg)", dir.display())]
    Exists {
        /// The image directory.
        dir: PathBuf,
    },
    /// A process given twice, a parent not in the image, or too many.
    #[error("{}: {why}", dir.display())]
    Processes {
        /// The image directory.
        dir: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A process file written elsewhere does not read back.
    #[error(transparent)]
    Invalid(#[from] ImageError),
}

/// Writes an image directory.
#[derive(Debug)]
pub struct CheckpointWriter {
    dir: PathBuf,
    seq: u64,
    parent_seq: u64,
    parent_dir: Vec<u8>,
    created_ns: u64,
    entries: Vec<ManifestEntry>,
    position: Option<ReplayPosition>,
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> CheckpointError + 'a {
    move |source| CheckpointError::Io {
        path: path.into(),
        op,
        source,
    }
}

/// The first of `checks` (what, in the file, in the manifest) whose two
/// values differ, as an error at `offset` of `path`.
fn must_match(
    path: &Path,
    offset: u64,
    checks: &[(&'static str, u64, u64)],
) -> Result<(), ImageError> {
    match checks.iter().find(|(_, file, want)| file != want) {
        Some(&(what, file, manifest)) => Err(ImageError::ManifestMismatch {
            path: path.to_path_buf(),
            offset,
            what,
            file,
            manifest,
        }),
        None => Ok(()),
    }
}

/// A process file's header names the process and the checkpoint it should.
fn header_matches(
    path: &Path,
    h: &crate::FileHeader,
    vpid: u32,
    seq: u64,
    parent_seq: u64,
) -> Result<(), ImageError> {
    must_match(
        path,
        0,
        &[
            ("vpid", h.vpid as u64, vpid as u64),
            ("sequence number", h.seq, seq),
            ("parent sequence number", h.parent_seq, parent_seq),
        ],
    )
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync the directory"))
}

impl CheckpointWriter {
    /// Start image `seq` in `dir` (created if missing), a full image or,
    /// with `parent`, incremental to image `parent.0` in directory
    /// `parent.1` (a relative path is relative to `dir`).
    pub fn create(
        dir: &Path,
        seq: u64,
        created_ns: u64,
        parent: Option<(u64, &Path)>,
    ) -> Result<Self, CheckpointError> {
        let (parent_seq, parent_dir) = match parent {
            Some((s, d)) => (s, d.as_os_str().as_bytes().to_vec()),
            None => (0, Vec::new()),
        };
        let bad = |why: &'static str| CheckpointError::Write {
            path: dir.into(),
            source: WriteError::Invalid {
                what: "checkpoint",
                why,
            },
        };
        if seq == 0 || parent_seq >= seq {
            return Err(bad(
                "sequence numbers count from 1 and a parent comes before",
            ));
        }
        if parent.is_some() && (parent_seq == 0 || parent_dir.is_empty()) {
            return Err(bad(
                "an incremental image names a parent of sequence ≥ 1 and its directory",
            ));
        }
        if parent_dir.len() > MAX_PATH {
            return Err(bad("the parent directory's path is longer than 4096 bytes"));
        }
        fs::create_dir_all(dir).map_err(io_err(dir, "create the image directory"))?;
        if dir.join(MANIFEST_NAME).exists() {
            return Err(CheckpointError::Exists { dir: dir.into() });
        }
        Ok(CheckpointWriter {
            dir: dir.into(),
            seq,
            parent_seq,
            parent_dir,
            created_ns,
            entries: Vec::new(),
            position: None,
        })
    }

    /// Mark the image as one of a replay, at `position` in its log.
    pub fn set_replay_position(&mut self, position: ReplayPosition) {
        self.position = Some(position);
    }

    /// Where process `vpid`'s file is written before the image is
    /// complete (for a writer elsewhere, such as the shim; then
    /// [`CheckpointWriter::adopt`]).
    pub fn tmp_path(&self, vpid: u32) -> PathBuf {
        self.dir.join(format!("{vpid}.fimg.tmp"))
    }

    fn check_new(&self, vpid: u32) -> Result<(), CheckpointError> {
        if vpid == 0 || self.entries.iter().any(|e| e.vpid == vpid) {
            return Err(CheckpointError::Processes {
                dir: self.dir.clone(),
                why: format!("process {vpid} is 0 or given twice"),
            });
        }
        if self.entries.len() >= MAX_PROCESSES {
            return Err(CheckpointError::Processes {
                dir: self.dir.clone(),
                why: format!("more than {MAX_PROCESSES} processes"),
            });
        }
        Ok(())
    }

    /// Write process `vpid`'s file: `f` writes its sections (the process
    /// section first) to the writer it is given; the end section, the
    /// fsync and the manifest entry follow.
    pub fn write_process(
        &mut self,
        vpid: u32,
        f: impl FnOnce(&mut ImageWriter<IoSink<BufWriter<File>>>) -> Result<(), WriteError>,
    ) -> Result<ManifestEntry, CheckpointError> {
        self.check_new(vpid)?;
        let path = self.tmp_path(vpid);
        let file = File::create(&path).map_err(io_err(&path, "create"))?;
        let werr = |source| CheckpointError::Write {
            path: path.clone(),
            source,
        };
        let mut w = ImageWriter::new(
            IoSink(BufWriter::with_capacity(CHUNK, file)),
            vpid,
            self.seq,
            self.parent_seq,
            self.created_ns,
        )
        .map_err(werr)?;
        f(&mut w).map_err(werr)?;
        let parent_vpid = w.parent_vpid().unwrap_or(0);
        let (IoSink(buf), Finished { len, crc, .. }) = w.finish().map_err(werr)?;
        let file = buf
            .into_inner()
            .map_err(|e| io_err(&path, "write")(e.into_error()))?;
        file.sync_all().map_err(io_err(&path, "fsync"))?;
        let entry = ManifestEntry {
            vpid,
            parent_vpid,
            file_len: len,
            file_crc: crc,
            reserved: 0,
        };
        self.entries.push(entry);
        Ok(entry)
    }

    /// Take process `vpid`'s file, written elsewhere at
    /// [`CheckpointWriter::tmp_path`], into the image: read it whole
    /// (checking it), fsync it, and list it.
    pub fn adopt(&mut self, vpid: u32) -> Result<ManifestEntry, CheckpointError> {
        self.check_new(vpid)?;
        let path = self.tmp_path(vpid);
        let s: ProcessSummary = ProcessReader::open(&path)?.read_all(&mut Check)?;
        header_matches(&path, &s.header, vpid, self.seq, self.parent_seq)?;
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&path, "fsync"))?;
        let entry = ManifestEntry {
            vpid,
            parent_vpid: s.parent_vpid,
            file_len: s.len,
            file_crc: s.crc,
            reserved: 0,
        };
        self.entries.push(entry);
        Ok(entry)
    }

    /// Make the image whole: rename the process files, fsync the
    /// directory, write the manifest through its temporary name, rename
    /// it, fsync the directory. Returns the manifest's path.
    pub fn finish(self) -> Result<PathBuf, CheckpointError> {
        let manifest = self.dir.join(MANIFEST_NAME);
        let mut bytes = Vec::new();
        write_manifest(
            &mut bytes,
            self.seq,
            self.parent_seq,
            self.created_ns,
            &self.parent_dir,
            &self.entries,
            self.position.as_ref(),
        )
        .map_err(|source| CheckpointError::Write {
            path: manifest.clone(),
            source,
        })?;
        // The manifest is checked as a reader will check it (the process
        // tree above all) before anything is renamed.
        Manifest::parse(&bytes, &manifest)?;
        for e in &self.entries {
            let from = self.tmp_path(e.vpid);
            let to = self.dir.join(process_file_name(e.vpid));
            fs::rename(&from, &to).map_err(io_err(&from, "rename"))?;
        }
        sync_dir(&self.dir)?;
        let tmp = self.dir.join(format!("{MANIFEST_NAME}.tmp"));
        let mut file = File::create(&tmp).map_err(io_err(&tmp, "create"))?;
        file.write_all(&bytes).map_err(io_err(&tmp, "write"))?;
        file.sync_all().map_err(io_err(&tmp, "fsync"))?;
        fs::rename(&tmp, &manifest).map_err(io_err(&tmp, "rename"))?;
        sync_dir(&self.dir)?;
        Ok(manifest)
    }
}

/// An image directory whose manifest has been read and checked.
#[derive(Debug, Clone)]
pub struct Image {
    dir: PathBuf,
    manifest: Manifest,
}

impl Image {
    /// Open the image in `dir`: read and check the manifest, and that every
    /// process file it lists exists with the listed length. (Checksums are
    /// checked as the files are read: [`Image::read_process`],
    /// [`Image::validate`].)
    pub fn open(dir: &Path) -> Result<Image, ImageError> {
        let path = dir.join(MANIFEST_NAME);
        let io = |path: &Path, op, source| ImageError::Io {
            path: path.into(),
            offset: 0,
            op,
            source,
        };
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound && dir.is_dir() => {
                return Err(ImageError::NoManifest { dir: dir.into() })
            }
            Err(e) => return Err(io(&path, "open", e)),
        };
        let len = file.metadata().map_err(|e| io(&path, "stat", e))?.len();
        if len > MAX_MANIFEST_LEN {
            return Err(ImageError::TooLong {
                path,
                offset: 0,
                what: "manifest length",
                len,
                max: MAX_MANIFEST_LEN,
            });
        }
        let mut bytes = vec![0u8; len as usize];
        file.read_exact(&mut bytes)
            .map_err(|e| io(&path, "read", e))?;
        let manifest = Manifest::parse(&bytes, &path)?;
        let image = Image {
            dir: dir.into(),
            manifest,
        };
        for e in &image.manifest.entries {
            let p = image.process_path(e.vpid);
            let got = fs::metadata(&p).map_err(|err| io(&p, "stat", err))?.len();
            must_match(&p, 0, &[("file length", got, e.file_len)])?;
        }
        Ok(image)
    }

    /// The image directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The checkpoint's sequence number.
    pub fn seq(&self) -> u64 {
        self.manifest.header.seq
    }

    /// Where in its log the replay was, for an image of a replay.
    pub fn replay_position(&self) -> Option<ReplayPosition> {
        self.manifest.position
    }

    /// The path of process `vpid`'s file.
    pub fn process_path(&self, vpid: u32) -> PathBuf {
        self.dir.join(process_file_name(vpid))
    }

    /// Read process `vpid`'s file from start to end, giving what it holds
    /// to `v`, and check it against the manifest: vpid, sequence numbers,
    /// parent, length and whole-file checksum.
    pub fn read_process(
        &self,
        vpid: u32,
        v: &mut dyn Visitor,
    ) -> Result<ProcessSummary, ImageError> {
        self.visit_process(vpid, v, false)
    }

    /// As [`Image::read_process`], but moving over the page data unread
    /// ([`ProcessReader::skim_all`]): what the file holds besides memory.
    /// The whole-file checksum is not checked.
    pub fn skim_process(
        &self,
        vpid: u32,
        v: &mut dyn Visitor,
    ) -> Result<ProcessSummary, ImageError> {
        self.visit_process(vpid, v, true)
    }

    fn visit_process(
        &self,
        vpid: u32,
        v: &mut dyn Visitor,
        skim: bool,
    ) -> Result<ProcessSummary, ImageError> {
        let path = self.process_path(vpid);
        let Some(entry) = self.manifest.entry(vpid) else {
            return Err(ImageError::Invalid {
                path: self.dir.join(MANIFEST_NAME),
                offset: 0,
                why: format!("process {vpid} is not in the image"),
            });
        };
        let mut r = ProcessReader::open(&path)?;
        let m = &self.manifest.header;
        header_matches(&path, r.header(), vpid, m.seq, m.parent_seq)?;
        let s = if skim { r.skim_all(v)? } else { r.read_all(v)? };
        let crc = if skim { entry.file_crc } else { s.crc };
        must_match(
            &path,
            s.len,
            &[
                (
                    "parent vpid",
                    s.parent_vpid as u64,
                    entry.parent_vpid as u64,
                ),
                ("file length", s.len, entry.file_len),
                ("file checksum", crc as u64, entry.file_crc as u64),
            ],
        )?;
        Ok(s)
    }

    /// Read every process file whole and check it.
    pub fn validate(&self) -> Result<Vec<ProcessSummary>, ImageError> {
        self.manifest
            .entries
            .iter()
            .map(|e| self.read_process(e.vpid, &mut Check))
            .collect()
    }

    /// The image this one is incremental to, opened and checked to carry
    /// the sequence number this one names; `None` for a full image.
    pub fn parent(&self) -> Result<Option<Image>, ImageError> {
        let h = &self.manifest.header;
        if h.parent_seq == 0 {
            return Ok(None);
        }
        let rel = Path::new(std::ffi::OsStr::from_bytes(&self.manifest.parent_dir));
        let parent = Image::open(&self.dir.join(rel))?;
        if parent.seq() != h.parent_seq {
            return Err(ImageError::Invalid {
                path: parent.dir.join(MANIFEST_NAME),
                offset: 16,
                why: format!(
                    "image {} is incremental to image {}, but its parent directory holds image {}",
                    h.seq,
                    h.parent_seq,
                    parent.seq()
                ),
            });
        }
        Ok(Some(parent))
    }

    /// This image and its ancestors, newest first, ending with a full
    /// image (at most [`MAX_CHAIN`]).
    pub fn chain(&self) -> Result<Vec<Image>, ImageError> {
        let mut chain = vec![self.clone()];
        while let Some(parent) = chain[chain.len() - 1].parent()? {
            if chain.len() >= MAX_CHAIN {
                return Err(ImageError::Invalid {
                    path: self.dir.join(MANIFEST_NAME),
                    offset: 24,
                    why: format!("more than {MAX_CHAIN} images in the incremental chain"),
                });
            }
            chain.push(parent);
        }
        Ok(chain)
    }

    /// Read process `vpid` through the whole chain, oldest image first, so
    /// that a visitor that applies pages in order ends with the memory of
    /// this checkpoint. Images of the chain that do not hold the process
    /// (it did not exist yet) are passed over. Returns the number of images
    /// read.
    pub fn read_chain(&self, vpid: u32, v: &mut dyn Visitor) -> Result<usize, ImageError> {
        let chain = self.chain()?;
        let mut read = 0;
        for image in chain.iter().rev() {
            if image.manifest.entry(vpid).is_some() {
                image.read_process(vpid, v)?;
                read += 1;
            }
        }
        Ok(read)
    }
}
