//! The manifest, `DIR/manifest.fimg`: written last, it makes an image whole.
//!
//! A [`ManifestHeader`], then the parent image directory's path
//! (`parent_dir_len` bytes, empty for a full image), then one
//! [`ManifestEntry`] per process (`entry_len` bytes each; a newer minor may
//! append fields to an entry, which an older reader skips). Writing
//! ([`write_manifest`]) works without `std`; [`Manifest::parse`] needs it.

use crate::write::{Sink, WriteError};
use crate::MAX_PATH;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// First bytes of the manifest.
pub const MANIFEST_MAGIC: [u8; 8] = *b"FERRYMAN";
/// Major version: a reader refuses any other.
pub const MANIFEST_MAJOR: u16 = 1;
/// Minor version: a newer minor only adds what an older reader may skip.
/// Minor 1 adds the [`ReplayPosition`] header extension.
pub const MANIFEST_MINOR: u16 = 1;
/// Size of [`ManifestHeader`].
pub const MANIFEST_HEADER_LEN: usize = 64;
/// Size of [`ReplayPosition`], the extension minor 1 writes after the
/// fixed header (so its `header_len` is 96).
pub const REPLAY_POSITION_LEN: usize = 32;
/// [`ReplayPosition::flags`]: the image is of a replay, at this position.
pub const POSITION_PRESENT: u32 = 1;
/// Size of [`ManifestEntry`].
pub const MANIFEST_ENTRY_LEN: usize = 24;
/// Most processes in one image.
pub const MAX_PROCESSES: usize = 65536;
/// Longest manifest header a reader accepts (a newer minor's extension).
pub const MAX_MANIFEST_HEADER: usize = 4096;
/// Longest entry a reader accepts (a newer minor's extension).
pub const MAX_ENTRY_LEN: usize = 256;
/// Longest manifest a reader reads.
pub const MAX_MANIFEST_LEN: u64 =
    (MAX_MANIFEST_HEADER + MAX_PATH + MAX_PROCESSES * MAX_ENTRY_LEN) as u64;

/// The header at offset 0 of the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ManifestHeader {
    /// [`MANIFEST_MAGIC`].
    pub magic: [u8; 8],
    /// [`MANIFEST_MAJOR`].
    pub major: u16,
    /// [`MANIFEST_MINOR`].
    pub minor: u16,
    /// Bytes from the start of the file to the parent path.
    pub header_len: u32,
    /// Sequence number of the checkpoint (from 1).
    pub seq: u64,
    /// Sequence number of the parent image; 0 for a full image.
    pub parent_seq: u64,
    /// Wall-clock time of the checkpoint, ns since the Unix epoch.
    pub created_ns: u64,
    /// Number of entries.
    pub process_count: u32,
    /// Bytes per entry.
    pub entry_len: u32,
    /// Bytes of the parent image directory's path.
    pub parent_dir_len: u32,
    /// Zero.
    pub reserved: u32,
    /// CRC-32C of everything after the 64 fixed bytes: a newer minor's
    /// header extension, the parent path and the entries.
    pub body_crc: u32,
    /// CRC-32C of the 64 header bytes with this field zero.
    pub crc: u32,
}

const _: () = assert!(core::mem::size_of::<ManifestHeader>() == MANIFEST_HEADER_LEN);

impl ManifestHeader {
    /// CRC-32C of the 64 fixed bytes with `crc` taken as zero.
    pub fn compute_crc(&self) -> u32 {
        crate::header_crc(self, |h| h.crc = 0)
    }
}

/// Where in its log a replay was when it was checkpointed (minor ≥ 1; the
/// 32 bytes after the fixed header). An image of a replay goes on only
/// with the records after `records`, fed from the same log.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ReplayPosition {
    /// [`POSITION_PRESENT`], or 0: the image is not of a replay.
    pub flags: u32,
    /// CRC-32C of records 1 to `records` of the log, each as it is in the
    /// log (header and payload), in order: which log the image belongs to.
    pub prefix_crc: u32,
    /// Records replayed, counted after the start record: every record up to
    /// and including number `records` had been replayed, none after it.
    pub records: u64,
    /// The `gseq` of record `records` (0 when `records` is 0).
    pub gseq: u64,
    /// Zero.
    pub reserved: u64,
}

const _: () = assert!(core::mem::size_of::<ReplayPosition>() == REPLAY_POSITION_LEN);

/// One process of the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ManifestEntry {
    /// Its virtual pid: the file is `<vpid>.fimg`.
    pub vpid: u32,
    /// Its parent's virtual pid; 0 if the parent is not in the image.
    pub parent_vpid: u32,
    /// Length of the process file.
    pub file_len: u64,
    /// CRC-32C of the whole process file.
    pub file_crc: u32,
    /// Zero.
    pub reserved: u32,
}

const _: () = assert!(core::mem::size_of::<ManifestEntry>() == MANIFEST_ENTRY_LEN);

/// Write a manifest to `sink` and return its length. Checks the caps and
/// the sequence numbers; that vpids are unique and the parents form a tree
/// is the caller's to ensure (`dir::CheckpointWriter` checks it).
pub fn write_manifest<S: Sink>(
    mut sink: S,
    seq: u64,
    parent_seq: u64,
    created_ns: u64,
    parent_dir: &[u8],
    entries: &[ManifestEntry],
    position: Option<&ReplayPosition>,
) -> Result<u64, WriteError> {
    if seq == 0 || parent_seq >= seq {
        return Err(WriteError::Invalid {
            what: "sequence numbers",
            why: "seq from 1, parent_seq before it",
        });
    }
    if (parent_seq == 0) != parent_dir.is_empty() {
        return Err(WriteError::Invalid {
            what: "parent image",
            why: "an incremental image names its parent directory, a full one none",
        });
    }
    if parent_dir.len() > MAX_PATH {
        return Err(WriteError::TooLong {
            what: "parent directory path",
            len: parent_dir.len() as u64,
            max: MAX_PATH as u64,
        });
    }
    if entries.is_empty() || entries.len() > MAX_PROCESSES {
        return Err(WriteError::TooLong {
            what: "process list (at least one)",
            len: entries.len() as u64,
            max: MAX_PROCESSES as u64,
        });
    }
    let position = match position {
        Some(p) => ReplayPosition {
            flags: POSITION_PRESENT,
            reserved: 0,
            ..*p
        },
        None => ReplayPosition::default(),
    };
    let body_crc = crc32c::crc32c_append(
        crc32c::crc32c_append(crc32c::crc32c(position.as_bytes()), parent_dir),
        entries.as_bytes(),
    );
    let header_len = MANIFEST_HEADER_LEN + REPLAY_POSITION_LEN;
    let mut h = ManifestHeader {
        magic: MANIFEST_MAGIC,
        major: MANIFEST_MAJOR,
        minor: MANIFEST_MINOR,
        header_len: header_len as u32,
        seq,
        parent_seq,
        created_ns,
        process_count: entries.len() as u32,
        entry_len: MANIFEST_ENTRY_LEN as u32,
        parent_dir_len: parent_dir.len() as u32,
        reserved: 0,
        body_crc,
        crc: 0,
    };
    h.crc = h.compute_crc();
    for part in [
        h.as_bytes(),
        position.as_bytes(),
        parent_dir,
        entries.as_bytes(),
    ] {
        sink.write_all(part)
            .map_err(|errno| WriteError::Io { errno })?;
    }
    Ok((header_len + parent_dir.len() + entries.len() * MANIFEST_ENTRY_LEN) as u64)
}

#[cfg(feature = "std")]
pub use parse::Manifest;

#[cfg(feature = "std")]
mod parse {
    use super::*;
    use crate::read::ImageError;
    use std::collections::{HashMap, HashSet};
    use std::path::{Path, PathBuf};
    use std::string::String;
    use std::vec::Vec;

    /// A checked manifest.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Manifest {
        /// Its header.
        pub header: ManifestHeader,
        /// The parent image directory (relative paths are relative to the
        /// image directory); empty for a full image.
        pub parent_dir: Vec<u8>,
        /// The processes, in file order.
        pub entries: Vec<ManifestEntry>,
        /// Where in its log the replay was, for an image of a replay.
        pub position: Option<ReplayPosition>,
    }

    impl Manifest {
        /// The entry of process `vpid`.
        pub fn entry(&self, vpid: u32) -> Option<&ManifestEntry> {
            self.entries.iter().find(|e| e.vpid == vpid)
        }

        /// Parse and check the manifest `bytes` read from `path`.
        ///
        /// Checks, in this order: magic, major version, header checksum,
        /// `header_len`, `entry_len`, `process_count` and `parent_dir_len`
        /// against their caps, the length of the file, the body checksum,
        /// the sequence numbers, then the process tree: vpids non-zero and
        /// unique, every parent 0 or listed, no cycle.
        pub fn parse(bytes: &[u8], path: &Path) -> Result<Manifest, ImageError> {
            let p = || PathBuf::from(path);
            let available = bytes.len() as u64;
            let head = &bytes[..bytes.len().min(8)];
            if !MANIFEST_MAGIC.starts_with(head) || bytes.is_empty() {
                return Err(ImageError::BadMagic {
                    path: p(),
                    offset: 0,
                    what: "manifest",
                });
            }
            let truncated = |offset: u64, needed: u64| ImageError::Truncated {
                path: p(),
                offset,
                needed,
                available: available.saturating_sub(offset),
            };
            if bytes.len() < 12 {
                return Err(truncated(0, MANIFEST_HEADER_LEN as u64));
            }
            let major = u16::from_le_bytes([bytes[8], bytes[9]]);
            let minor = u16::from_le_bytes([bytes[10], bytes[11]]);
            if major != MANIFEST_MAJOR {
                return Err(ImageError::UnsupportedVersion {
                    path: p(),
                    offset: 8,
                    what: "manifest",
                    major,
                    minor,
                    supported: MANIFEST_MAJOR,
                });
            }
            let Ok((h, _)) = ManifestHeader::read_from_prefix(bytes) else {
                return Err(truncated(0, MANIFEST_HEADER_LEN as u64));
            };
            if h.compute_crc() != h.crc {
                return Err(ImageError::BadHeaderChecksum {
                    path: p(),
                    offset: 0,
                    what: "manifest header",
                });
            }
            let too_long = |offset: u64, what: &'static str, len: u64, min: usize, max: usize| {
                if len < min as u64 || len > max as u64 {
                    Err(ImageError::TooLong {
                        path: p(),
                        offset,
                        what,
                        len,
                        max: max as u64,
                    })
                } else {
                    Ok(())
                }
            };
            too_long(
                12,
                "manifest header length",
                h.header_len as u64,
                MANIFEST_HEADER_LEN,
                MAX_MANIFEST_HEADER,
            )?;
            too_long(
                44,
                "manifest entry length",
                h.entry_len as u64,
                MANIFEST_ENTRY_LEN,
                MAX_ENTRY_LEN,
            )?;
            too_long(
                40,
                "process count",
                h.process_count as u64,
                1,
                MAX_PROCESSES,
            )?;
            too_long(
                48,
                "parent directory path",
                h.parent_dir_len as u64,
                0,
                MAX_PATH,
            )?;
            let header_len = h.header_len as usize;
            let dir_end = header_len + h.parent_dir_len as usize;
            let total = dir_end + h.process_count as usize * h.entry_len as usize;
            if bytes.len() < total {
                return Err(truncated(0, total as u64));
            }
            if bytes.len() > total {
                return Err(ImageError::AfterEnd {
                    path: p(),
                    offset: total as u64,
                });
            }
            if crc32c::crc32c(&bytes[MANIFEST_HEADER_LEN..]) != h.body_crc {
                return Err(ImageError::BadPayloadChecksum {
                    path: p(),
                    offset: MANIFEST_HEADER_LEN as u64,
                    what: "manifest body",
                });
            }
            let invalid = |offset: u64, why: String| ImageError::Invalid {
                path: p(),
                offset,
                why,
            };
            if h.seq == 0 || h.parent_seq >= h.seq {
                return Err(invalid(
                    16,
                    std::format!(
                        "sequence number {} with parent {}: checkpoints count from 1 and a parent comes before",
                        h.seq, h.parent_seq
                    ),
                ));
            }
            if (h.parent_seq == 0) != (h.parent_dir_len == 0) {
                return Err(invalid(
                    24,
                    "an incremental image names its parent directory, a full one none".into(),
                ));
            }
            let parent_dir = bytes[header_len..dir_end].to_vec();
            // Minor 0 has no extension; a newer minor's longer one starts
            // with the position.
            let position =
                if h.minor >= 1 && header_len >= MANIFEST_HEADER_LEN + REPLAY_POSITION_LEN {
                    ReplayPosition::read_from_prefix(&bytes[MANIFEST_HEADER_LEN..])
                        .ok()
                        .map(|(p, _)| p)
                        .filter(|p| p.flags & POSITION_PRESENT != 0)
                } else {
                    None
                };
            let mut entries = Vec::with_capacity(h.process_count as usize);
            let mut parents = HashMap::with_capacity(h.process_count as usize);
            for (i, chunk) in bytes[dir_end..]
                .chunks_exact(h.entry_len as usize)
                .enumerate()
            {
                let offset = (dir_end + i * h.entry_len as usize) as u64;
                let Ok((e, _)) = ManifestEntry::read_from_prefix(chunk) else {
                    return Err(truncated(offset, MANIFEST_ENTRY_LEN as u64));
                };
                if e.vpid == 0 {
                    return Err(invalid(offset, "process entry with vpid 0".into()));
                }
                if parents.insert(e.vpid, (e.parent_vpid, offset)).is_some() {
                    return Err(invalid(
                        offset,
                        std::format!("process {} listed twice", e.vpid),
                    ));
                }
                entries.push(e);
            }
            // Every parent is 0 (outside the image) or listed, and walking
            // up from any process reaches 0: the processes form a forest.
            let mut rooted: HashSet<u32> = HashSet::with_capacity(entries.len());
            for e in &entries {
                let mut path_up = Vec::new();
                let mut v = e.vpid;
                loop {
                    if v == 0 || rooted.contains(&v) {
                        break;
                    }
                    let Some(&(parent, offset)) = parents.get(&v) else {
                        let child = path_up.last().copied().unwrap_or(e.vpid);
                        let offset = parents.get(&child).map_or(0, |&(_, o)| o);
                        return Err(invalid(
                            offset,
                            std::format!("parent {v} is not in the image (0 means outside it)"),
                        ));
                    };
                    if path_up.len() > entries.len() {
                        return Err(invalid(
                            offset,
                            std::format!("process {v} is its own ancestor"),
                        ));
                    }
                    path_up.push(v);
                    v = parent;
                }
                rooted.extend(path_up);
            }
            Ok(Manifest {
                header: h,
                parent_dir,
                entries,
                position,
            })
        }
    }
}
