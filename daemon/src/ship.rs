//! Sending a checkpoint image to another node: to a backup whose log would
//! start before the sender's, on its record stream (the head announces the
//! image: position, start record, files; the files' bytes follow as image
//! chunks, then the records after the image as usual); on a stream of its
//! own to a backup whose replica is far behind an image, or from a backup
//! to the primary that asked for it.
//!
//! The receiver writes the files into `images/at-GSEQ.part`, checks the
//! image (its manifest and its position), and only then renames it to
//! `images/at-GSEQ`; an image that arrives partly is removed and asked for
//! again. Progress is logged every few seconds on both sides.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use ferry_image::dir::Image;
use quinn::SendStream;
use tokio::sync::mpsc;
use tracing::info;

use crate::app::{mib, AppShared, Working};
use crate::images::{self, Stored};
use crate::peer::{ImageHead, RecordStream};

/// Bytes in one image chunk.
const CHUNK: usize = 1 << 20;
/// Most files in an image the receiver accepts (a manifest and one file
/// per process).
const MAX_FILES: usize = 65_537;

/// An image ready to send: its files are open, so that pruning it while it
/// is sent does not cut it short.
pub struct Shipment {
    /// What the stream's head says of it.
    pub head: ImageHead,
    files: Vec<File>,
    dir: std::path::PathBuf,
}

impl Shipment {
    /// Open `image` of `shared` for sending, with the images it is
    /// incremental to but those the receiver `has` (position, identity):
    /// their files come first, oldest first, named `at-N/NAME`; the
    /// image's own have plain names.
    pub fn open(shared: &AppShared, image: Stored, has: &[(u64, u32)]) -> anyhow::Result<Shipment> {
        let start = shared
            .start_record()
            .ok_or_else(|| anyhow::anyhow!("no start record to send with the image"))?;
        let mut files = Vec::new();
        let mut list = Vec::new();
        let mut kept = Vec::new();
        let dirs = image.ancestors.iter().rev().map(|&g| Some(g)).chain([None]);
        for ancestor in dirs {
            let dir = ancestor.map_or(image.dir.clone(), |g| images::dir_for(&shared.dir, g));
            if let Some(g) = ancestor {
                let id = images::identity(&dir);
                if let Some(id) = id.filter(|id| has.contains(&(g, *id))) {
                    kept.push((g, id));
                    continue;
                }
            }
            let mut names = Vec::new();
            for e in std::fs::read_dir(&dir)? {
                let e = e?;
                if e.file_type()?.is_file() {
                    if let Some(name) = e.file_name().to_str() {
                        names.push(name.to_owned());
                    }
                }
            }
            names.sort();
            for name in names {
                let f = File::open(dir.join(&name))?;
                let len = f.metadata()?.len();
                let listed = match ancestor {
                    Some(g) => format!("{}/{name}", images::name_for(g)),
                    None => name,
                };
                list.push((listed, len));
                files.push(f);
            }
        }
        Ok(Shipment {
            head: ImageHead {
                at: image.position.gseq,
                start,
                files: list,
                kept,
            },
            files,
            dir: image.dir,
        })
    }

    /// Send the files' bytes on `send` to `peer` (the head is already
    /// written).
    pub async fn send(
        self,
        shared: &AppShared,
        peer: &str,
        send: &mut SendStream,
    ) -> anyhow::Result<()> {
        let app = shared.name.as_str();
        let total: u64 = self.head.files.iter().map(|f| f.1).sum();
        let at = self.head.at;
        let mut working = shared.working(format!("sending an image to {peer}"), at, total);
        info!(app, at, mib = mib(total), peer, image = %self.dir.display(), "sending an image");
        let (tx, mut rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(4);
        let lens: Vec<u64> = self.head.files.iter().map(|f| f.1).collect();
        let files = self.files;
        tokio::task::spawn_blocking(move || {
            for (mut f, len) in files.into_iter().zip(lens) {
                let mut left = len;
                while left > 0 {
                    let mut buf = vec![0u8; (left as usize).min(CHUNK)];
                    if let Err(e) = f.read_exact(&mut buf) {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                    left -= buf.len() as u64;
                    if tx.blocking_send(Ok(buf)).is_err() {
                        return;
                    }
                }
            }
        });
        let started = Instant::now();
        let mut sent = 0u64;
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk?;
            let frame =
                ferry_proto::wire::encode_raw(ferry_proto::wire::KIND_IMAGE_CHUNK, 0, &chunk)?;
            send.write_all(&frame).await?;
            sent += chunk.len() as u64;
            working.done(sent);
        }
        if sent != total {
            anyhow::bail!("the image's files were {sent} bytes, not {total}");
        }
        let secs = started.elapsed().as_secs_f64();
        info!(
            app,
            at,
            mib = mib(total),
            ms = (secs * 1e3) as u64,
            mib_per_s = mib(total) / secs.max(1e-6),
            "image sent"
        );
        Ok(())
    }
}

/// A file name of an image as the head lists it: one plain name.
fn plain(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

/// Where a file the head lists goes: `None` for the image's own (a
/// plain name), `Some(N)` for the image after record N it is incremental
/// to (`at-N/NAME`, N below the image's position); the file's name.
fn place(name: &str, at: u64) -> Option<(Option<u64>, &str)> {
    match name.split_once('/') {
        None => plain(name).then_some((None, name)),
        Some((dir, file)) => {
            let g = images::gseq_of(dir).filter(|&g| g < at && images::name_for(g) == dir)?;
            plain(file).then_some((Some(g), file))
        }
    }
}

/// Receive the image `head` announces from `stream` into `shared`'s images
/// directory, with the images it is incremental to; with `check`, the
/// records it replayed must be those of this node's log
/// ([`AppShared::check_image`]). Each image is checked whole before it is
/// put in place, oldest first; on any error nothing is left that looks
/// like an image but those already in place, which are whole.
pub async fn receive(
    shared: &AppShared,
    head: &ImageHead,
    stream: &mut RecordStream,
    check: bool,
) -> anyhow::Result<()> {
    let app = &shared.name;
    let at = head.at;
    let places: Option<Vec<(Option<u64>, &str)>> =
        head.files.iter().map(|(n, _)| place(n, at)).collect();
    let Some(places) = places.filter(|_| head.files.len() <= MAX_FILES) else {
        anyhow::bail!("the image's file list is not a list of plain names (and at-N/NAME for the images it is incremental to)");
    };
    let mut ancestors: Vec<u64> = places.iter().filter_map(|p| p.0).collect();
    ancestors.sort_unstable();
    ancestors.dedup();
    if head
        .kept
        .iter()
        .any(|&(g, _)| g >= at || ancestors.contains(&g))
    {
        anyhow::bail!("the image's list of images kept here names one it sends, or one after it");
    }
    let total: u64 = head.files.iter().map(|f| f.1).sum();
    let positions: Vec<u64> = ancestors.iter().copied().chain([at]).collect();
    let Some(mut working) = shared.receiving(&stream.from, &positions, total) else {
        anyhow::bail!("the image after gseq {at} (or one it is incremental to) is being received from another stream already");
    };
    let part = |g: u64| images::dir_for(&shared.dir, g).with_extension("part");
    for &g in &positions {
        images::remove(&part(g));
        std::fs::create_dir_all(part(g))?;
    }
    let result = match receive_into(app, head, &places, stream, &part, &mut working).await {
        Ok(()) => tokio::task::block_in_place(|| install(shared, head, &ancestors, check)),
        Err(e) => Err(e),
    };
    if result.is_err() {
        for &g in &positions {
            images::remove(&part(g));
        }
    }
    result
}

/// Put the received images in place, oldest first, each checked whole
/// (an incremental one needs its parent in place to open). An image this
/// node has already, the same byte for byte, is kept as it is; so are the
/// images the sender left out as this node's, which must still be here,
/// the same.
fn install(
    shared: &AppShared,
    head: &ImageHead,
    ancestors: &[u64],
    check: bool,
) -> anyhow::Result<()> {
    let at = head.at;
    for &(g, id) in &head.kept {
        let dir = images::dir_for(&shared.dir, g);
        if images::identity(&dir) != Some(id) {
            anyhow::bail!(
                "{}: the image it is incremental to, left out as this node's, is no longer here as it was",
                dir.display()
            );
        }
    }
    let manifest = |dir: &Path| std::fs::read(dir.join(ferry_image::dir::MANIFEST_NAME)).ok();
    for &g in ancestors.iter().chain([&at]) {
        let dir = images::dir_for(&shared.dir, g);
        let part = dir.with_extension("part");
        sync_dir(&part);
        if g != at && manifest(&dir).is_some() && manifest(&dir) == manifest(&part) {
            images::remove(&part);
            continue;
        }
        let image = Image::open(&part).map_err(|e| anyhow::anyhow!("{e}"))?;
        let Some(position) = image.replay_position().filter(|p| p.gseq == g) else {
            anyhow::bail!(
                "{}: the image received is not at gseq {g}, as its name says",
                part.display()
            );
        };
        image.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        image.chain().map_err(|e| anyhow::anyhow!("{e}"))?;
        if g == at && check {
            // Reads the log up to the image.
            shared
                .check_image(at, position.prefix_crc)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        images::remove(&dir);
        std::fs::rename(&part, &dir)?;
        sync_dir(&images::images_dir(&shared.dir));
    }
    Ok(())
}

/// The files into their images' `.part` directories.
async fn receive_into(
    app: &str,
    head: &ImageHead,
    places: &[(Option<u64>, &str)],
    stream: &mut RecordStream,
    part: &(dyn Fn(u64) -> std::path::PathBuf + Sync),
    working: &mut Working<'_>,
) -> anyhow::Result<()> {
    let at = head.at;
    let total: u64 = head.files.iter().map(|f| f.1).sum();
    info!(
        app,
        at,
        mib = mib(total),
        from = %stream.from,
        images = places.iter().filter_map(|p| p.0).collect::<std::collections::BTreeSet<_>>().len() + 1,
        kept = head.kept.len(),
        "receiving an image"
    );
    let started = Instant::now();
    let mut got = 0u64;
    let mut pending: Vec<u8> = Vec::new();
    for ((_, len), (image, name)) in head.files.iter().zip(places) {
        let mut f = File::create(part(image.unwrap_or(at)).join(name))?;
        let mut left = *len;
        while left > 0 {
            if pending.is_empty() {
                match stream.next_image_chunk().await? {
                    Some(chunk) => pending = chunk,
                    None => {
                        anyhow::bail!("the stream ended after {got} of the image's {total} bytes")
                    }
                }
            }
            let n = (left as usize).min(pending.len());
            f.write_all(&pending[..n])?;
            pending.drain(..n);
            left -= n as u64;
            got += n as u64;
            working.done(got);
        }
        f.sync_all()?;
    }
    if !pending.is_empty() {
        anyhow::bail!("the image's chunks are longer than its files");
    }
    let secs = started.elapsed().as_secs_f64();
    info!(
        app,
        at,
        mib = mib(total),
        ms = (secs * 1e3) as u64,
        "image received"
    );
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
