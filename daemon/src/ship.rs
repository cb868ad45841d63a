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
    /// Open `image` of `shared` for sending.
    pub fn open(shared: &AppShared, image: Stored) -> anyhow::Result<Shipment> {
        let start = shared
            .start_record()
            .ok_or_else(|| anyhow::anyhow!("no start record to send with the image"))?;
        let mut names = Vec::new();
        for e in std::fs::read_dir(&image.dir)? {
            let e = e?;
            if e.file_type()?.is_file() {
                if let Some(name) = e.file_name().to_str() {
                    names.push(name.to_owned());
                }
            }
        }
        names.sort();
        let mut files = Vec::new();
        let mut list = Vec::new();
        for name in names {
            let f = File::open(image.dir.join(&name))?;
            let len = f.metadata()?.len();
            list.push((name, len));
            files.push(f);
        }
        Ok(Shipment {
            head: ImageHead {
                at: image.position.gseq,
                start,
                files: list,
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

/// Receive the image `head` announces from `stream` into `shared`'s images
/// directory; with `check`, the records it replayed must be those of this
/// node's log ([`AppShared::check_image`]). On any error nothing is left
/// that looks like an image.
pub async fn receive(
    shared: &AppShared,
    head: &ImageHead,
    stream: &mut RecordStream,
    check: bool,
) -> anyhow::Result<()> {
    let app = &shared.name;
    let at = head.at;
    if head.files.len() > MAX_FILES || head.files.iter().any(|(n, _)| !plain(n)) {
        anyhow::bail!("the image's file list is not a list of plain names");
    }
    let total: u64 = head.files.iter().map(|f| f.1).sum();
    let Some(mut working) = shared.receiving(&stream.from, at, total) else {
        anyhow::bail!("the image after gseq {at} is being received from another stream already");
    };
    let dir = images::dir_for(&shared.dir, at);
    let part = dir.with_extension("part");
    images::remove(&part);
    std::fs::create_dir_all(&part)?;
    let result = receive_into(app, head, stream, &part, &mut working)
        .await
        .and_then(|crc| match check {
            // Reads the log up to the image: off the event loop's thread.
            true => tokio::task::block_in_place(|| shared.check_image(at, crc))
                .map_err(|e| anyhow::anyhow!("{e}")),
            false => Ok(()),
        });
    if let Err(e) = result {
        images::remove(&part);
        return Err(e);
    }
    images::remove(&dir);
    std::fs::rename(&part, &dir)?;
    sync_dir(&images::images_dir(&shared.dir));
    Ok(())
}

/// The files into `part`, checked as an image at `head.at`; the CRC its
/// position carries.
async fn receive_into(
    app: &str,
    head: &ImageHead,
    stream: &mut RecordStream,
    part: &Path,
    working: &mut Working<'_>,
) -> anyhow::Result<u32> {
    let at = head.at;
    let total: u64 = head.files.iter().map(|f| f.1).sum();
    info!(
        app,
        at,
        mib = mib(total),
        from = %stream.from,
        "receiving an image"
    );
    let started = Instant::now();
    let mut got = 0u64;
    let mut pending: Vec<u8> = Vec::new();
    for (name, len) in &head.files {
        let mut f = File::create(part.join(name))?;
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
    sync_dir(part);
    let image = Image::open(part).map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(position) = image.replay_position().filter(|p| p.gseq == at) else {
        anyhow::bail!("the image received is not at gseq {at}, as its head said");
    };
    image.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let secs = started.elapsed().as_secs_f64();
    info!(
        app,
        at,
        mib = mib(total),
        ms = (secs * 1e3) as u64,
        "image received"
    );
    Ok(position.prefix_crc)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
