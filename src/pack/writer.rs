//! Appends frames to a new pack file; seals it with fsync. A pack that is
//! not published (referenced by a committed index transaction) is deleted
//! when its guard drops, so a failed ingest leaves nothing behind; a killed
//! one leaves a file with no index row, which the next writer removes.
//!
//! Writing happens on a thread of the writer's own, so the ingest can hash
//! and compress the next batch while the kernel copies this one: offsets
//! are computed here from frame lengths, and a write error surfaces at the
//! latest in [`PackWriter::seal`], before anything is committed.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use crate::format::{PACK_HEADER_LEN, PACK_MAGIC};
use crate::ids::PackId;

use super::pack_path;

const _: () = assert!(PACK_HEADER_LEN == 32);

/// Frames queued to the writer thread at most (a few MiB).
const QUEUED_FRAMES: usize = 64;

pub struct PackWriter {
    id: PackId,
    path: PathBuf,
    tx: Option<SyncSender<Vec<u8>>>,
    thread: Option<JoinHandle<std::io::Result<File>>>,
    len: u64,
}

impl PackWriter {
    /// Creates pack `id`; fails if the file already exists.
    pub fn create(repo: &std::path::Path, id: PackId) -> std::io::Result<PackWriter> {
        let path = pack_path(repo, id);
        let file = OpenOptions::new().write(true).create_new(true).open(&path)?;
        let mut header = [0u8; PACK_HEADER_LEN];
        header[..8].copy_from_slice(&PACK_MAGIC);
        header[8..16].copy_from_slice(&id.0.to_le_bytes());
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUED_FRAMES);
        let thread = std::thread::spawn(move || {
            let mut out = BufWriter::with_capacity(1 << 20, file);
            out.write_all(&header)?;
            for frame in rx {
                out.write_all(&frame)?;
            }
            out.into_inner().map_err(|e| e.into_error())
        });
        Ok(PackWriter { id, path, tx: Some(tx), thread: Some(thread), len: PACK_HEADER_LEN as u64 })
    }

    pub fn id(&self) -> PackId {
        self.id
    }

    /// Bytes written so far, header included.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len <= PACK_HEADER_LEN as u64
    }

    /// Queues an encoded frame; returns its offset in the pack.
    pub fn append(&mut self, frame: Vec<u8>) -> std::io::Result<u64> {
        let at = self.len;
        self.len += frame.len() as u64;
        let tx = self.tx.as_ref().expect("pack writer used after seal");
        if tx.send(frame).is_err() {
            // The writer thread stopped: it failed; report its error.
            self.tx = None;
            return Err(self.join().err().unwrap_or_else(|| std::io::Error::other("pack writer stopped")));
        }
        Ok(at)
    }

    fn join(&mut self) -> std::io::Result<File> {
        self.tx = None;
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| std::io::Error::other("pack writer thread panicked"))?,
            None => Err(std::io::Error::other("pack writer already finished")),
        }
    }

    /// Waits for every frame to be written, then fsyncs the pack and its
    /// directory. The returned guard deletes the file on drop unless
    /// [`SealedPack::publish`] was called.
    pub fn seal(mut self) -> std::io::Result<SealedPack> {
        let file = self.join()?;
        file.sync_all()?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(SealedPack { id: self.id, path: std::mem::take(&mut self.path), len: self.len, published: false })
    }
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.join();
        }
        if !self.path.as_os_str().is_empty() {
            // Not sealed: an aborted ingest; the pack must not stay.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A fully written and synced pack awaiting the index commit.
pub struct SealedPack {
    pub id: PackId,
    pub path: PathBuf,
    pub len: u64,
    published: bool,
}

impl SealedPack {
    /// The index now references this pack: keep it.
    pub fn publish(mut self) {
        self.published = true;
    }
}

impl Drop for SealedPack {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
