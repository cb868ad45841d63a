//! A backup's checkpoint images of its replica, in DATA/apps/NAME/images.
//!
//! Each image is a directory `at-GSEQ` (twenty digits, so that names sort
//! by position) holding a full image of the replica right after it
//! replayed record GSEQ, with that position in its manifest
//! (`docs/IMAGE-FORMAT.md`, `ReplayPosition`). The manifest is written
//! last, so a directory without one is an image that was never finished:
//! it is ignored and removed. A replica starts from the newest image the
//! log continues, and the log keeps no segment wholly below the oldest
//! image kept (`docs/CHECKPOINT.md`, "Checkpoints in ferryd").

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_image::dir::Image;
use ferry_image::manifest::ReplayPosition;
use tracing::warn;

/// When a backup checkpoints its replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// At most this long after the last image (`None`: never by time).
    pub every: Option<Duration>,
    /// Once this many bytes of records were replayed since the last image,
    /// and at least as many as that image holds (`None`: never by size).
    pub log_bytes: Option<u64>,
    /// Images kept (at least 1), each with the images it is incremental to.
    pub keep: usize,
    /// Incremental images after each full one (0: every image is full).
    pub incrementals: usize,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            every: Some(Duration::from_secs(600)),
            log_bytes: Some(256 << 20),
            keep: 2,
            incrementals: 8,
        }
    }
}

impl Policy {
    /// Whether one is due, `since` the last (of `image_bytes`) and `bytes`
    /// replayed after it. By size, the images written never outgrow the
    /// log they replace: a program holding 4 GiB is checkpointed after
    /// 4 GiB of log at the soonest, not after each 256 MiB.
    pub fn due(&self, since: Duration, bytes: u64, image_bytes: u64) -> bool {
        self.every.is_some_and(|e| since >= e)
            || self
                .log_bytes
                .is_some_and(|b| bytes >= b && bytes >= image_bytes)
    }
}

/// A finished image and where in the log it was taken.
#[derive(Clone, Debug)]
pub struct Stored {
    /// Its directory.
    pub dir: PathBuf,
    /// Its position: after record `position.gseq`.
    pub position: ReplayPosition,
    /// For an incremental image, the images it is incremental to, in this
    /// directory, newest first, ending with a full one; empty for a full
    /// image.
    pub ancestors: Vec<u64>,
}

const PREFIX: &str = "at-";

/// DATA/apps/NAME/images.
pub fn images_dir(app_dir: &Path) -> PathBuf {
    app_dir.join("images")
}

/// The directory of the image taken after record `gseq`.
pub fn dir_for(app_dir: &Path, gseq: u64) -> PathBuf {
    images_dir(app_dir).join(name_for(gseq))
}

/// The position an image directory's name says.
pub fn gseq_of(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?.parse().ok()
}

/// The name of the directory of the image after record `gseq`.
pub fn name_for(gseq: u64) -> String {
    format!("{PREFIX}{gseq:020}")
}

/// Every image directory by position, finished or not.
fn dirs(app_dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(images_dir(app_dir)) else {
        return Vec::new();
    };
    let mut v: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let gseq = gseq_of(e.file_name().to_str()?)?;
            Some((gseq, e.path()))
        })
        .collect();
    v.sort();
    v
}

/// The finished images, oldest first. One whose manifest does not read, or
/// whose position disagrees with its name, is left out (and reported).
pub fn list(app_dir: &Path) -> Vec<Stored> {
    dirs(app_dir)
        .into_iter()
        .filter_map(|(gseq, dir)| {
            let image = match Image::open(&dir) {
                Ok(i) => i,
                Err(ferry_image::read::ImageError::NoManifest { .. }) => return None,
                Err(e) => {
                    warn!(image = %dir.display(), error = %e, "an image of the replica does not read; not used");
                    return None;
                }
            };
            let position = image.replay_position().filter(|p| p.gseq == gseq);
            if position.is_none() {
                warn!(image = %dir.display(), "an image of the replica is not at the position its name says; not used");
            }
            let ancestors = match ancestors(&image) {
                Ok(a) => a,
                Err(e) => {
                    warn!(image = %dir.display(), error = %e, "an incremental image of the replica lacks an image it needs; not used");
                    return None;
                }
            };
            Some(Stored {
                dir,
                position: position?,
                ancestors,
            })
        })
        .collect()
}

/// The positions of the images `image` is incremental to, newest first:
/// each must be whole and beside it (`../at-N`).
fn ancestors(image: &Image) -> Result<Vec<u64>, String> {
    let chain = image.chain().map_err(|e| e.to_string())?;
    let home = |dir: &Path| dir.parent().and_then(|p| std::fs::canonicalize(p).ok());
    let here = home(image.dir());
    chain[1..]
        .iter()
        .map(|i| {
            let name = i.dir().file_name().and_then(|n| n.to_str());
            name.and_then(gseq_of)
                .filter(|_| home(i.dir()) == here)
                .ok_or_else(|| format!("{}: not an image beside it", i.dir().display()))
        })
        .collect()
}

/// The path by which an image beside it names the image after record
/// `gseq` as its parent.
pub fn sibling(gseq: u64) -> PathBuf {
    Path::new("..").join(name_for(gseq))
}

/// The bytes of the files of the image in `dir` (of it alone, not of the
/// images it is incremental to).
pub fn bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The bytes of the files of `image` and of the images it is
/// incremental to: what shipping it sends.
pub fn chain_bytes(app_dir: &Path, image: &Stored) -> u64 {
    bytes(&image.dir)
        + image
            .ancestors
            .iter()
            .map(|&g| bytes(&dir_for(app_dir, g)))
            .sum::<u64>()
}

/// What names one image and no other: the CRC-32C of its manifest, which
/// holds its position, the time it was taken and the checksum of each of
/// its files.
pub fn identity(dir: &Path) -> Option<u32> {
    std::fs::read(dir.join(ferry_image::dir::MANIFEST_NAME))
        .ok()
        .map(|m| crc32c::crc32c(&m))
}

/// Every finished image here, by position and [`identity`]: what a sender
/// need not send again with an image incremental to them.
pub fn held(app_dir: &Path) -> Vec<(u64, u32)> {
    list(app_dir)
        .iter()
        .filter_map(|i| Some((i.position.gseq, identity(&i.dir)?)))
        .collect()
}

/// The newest finished image.
pub fn latest(app_dir: &Path) -> Option<Stored> {
    list(app_dir).pop()
}

/// Keep the newest `keep` finished images and those they are incremental
/// to; remove older ones and every unfinished directory below the newest.
/// Returns the position of the oldest of the `keep`, below which the log
/// is not needed.
pub fn prune(app_dir: &Path, keep: usize) -> Option<u64> {
    let finished = list(app_dir);
    let heads: Vec<&Stored> = finished.iter().rev().take(keep.max(1)).collect();
    let newest = heads.first()?.position.gseq;
    let oldest = heads.last()?.position.gseq;
    let kept: Vec<u64> = heads
        .iter()
        .flat_map(|s| std::iter::once(s.position.gseq).chain(s.ancestors.iter().copied()))
        .collect();
    for (gseq, dir) in dirs(app_dir) {
        if gseq < newest && !kept.contains(&gseq) {
            remove(&dir);
        }
    }
    Some(oldest)
}

/// Remove the images after `gseq`: the log was cut there, and what they
/// replayed is no longer the application's history.
pub fn drop_after(app_dir: &Path, gseq: u64) {
    for (at, dir) in dirs(app_dir) {
        if at > gseq {
            remove(&dir);
        }
    }
}

/// Remove every image (the log was reset).
pub fn drop_all(app_dir: &Path) {
    for (_, dir) in dirs(app_dir) {
        remove(&dir);
    }
}

/// Remove one image directory.
pub fn remove(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(image = %dir.display(), error = %e, "cannot remove an image");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_position_and_parse_back() {
        let d = Path::new("/x");
        let a = dir_for(d, 9);
        let b = dir_for(d, 10);
        assert!(a.file_name() < b.file_name());
        assert_eq!(gseq_of(b.file_name().unwrap().to_str().unwrap()), Some(10));
        assert_eq!(gseq_of("at-x"), None);
        assert_eq!(gseq_of("other"), None);
    }

    #[test]
    fn a_policy_is_due_by_time_or_by_size_but_not_more_often_than_an_images_size() {
        let p = Policy {
            every: Some(Duration::from_secs(10)),
            log_bytes: Some(100),
            keep: 2,
            incrementals: 0,
        };
        assert!(!p.due(Duration::from_secs(9), 99, 0));
        assert!(p.due(Duration::from_secs(10), 0, 0));
        assert!(p.due(Duration::ZERO, 100, 0));
        // Not by size before the log is as large as the last image; by
        // time, still.
        assert!(!p.due(Duration::ZERO, 100, 1000));
        assert!(p.due(Duration::ZERO, 1000, 1000));
        assert!(p.due(Duration::from_secs(10), 0, 1000));
        let off = Policy {
            every: None,
            log_bytes: None,
            keep: 1,
            incrementals: 0,
        };
        assert!(!off.due(Duration::from_secs(1 << 30), u64::MAX, 0));
    }

    #[test]
    fn unfinished_directories_are_not_images_and_are_pruned() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir_for(t.path(), 5)).unwrap();
        std::fs::create_dir_all(images_dir(t.path()).join("junk")).unwrap();
        assert!(list(t.path()).is_empty());
        assert!(latest(t.path()).is_none());
        // No finished image: nothing is removed, and the log is all needed.
        assert_eq!(prune(t.path(), 2), None);
        assert!(dir_for(t.path(), 5).is_dir());
        drop_after(t.path(), 4);
        assert!(!dir_for(t.path(), 5).exists());
        assert!(images_dir(t.path()).join("junk").is_dir());
    }
}
