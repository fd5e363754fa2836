//! Appends frames to a new pack file; seals it with fsync. A pack that is
//! not published (referenced by a committed index transaction) is deleted
//! when its guard drops, so a failed ingest leaves nothing behind; a killed
//! one leaves a file with no index row, which the next writer removes.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::format::{PACK_HEADER_LEN, PACK_MAGIC};
use crate::ids::PackId;

use super::pack_path;

const _: () = assert!(PACK_HEADER_LEN == 32);

pub struct PackWriter {
    id: PackId,
    path: PathBuf,
    out: Option<BufWriter<File>>,
    len: u64,
}

impl PackWriter {
    /// Creates pack `id`; fails if the file already exists.
    pub fn create(repo: &Path, id: PackId) -> std::io::Result<PackWriter> {
        let path = pack_path(repo, id);
        let file = OpenOptions::new().write(true).create_new(true).open(&path)?;
        let mut w = PackWriter { id, path, out: Some(BufWriter::with_capacity(1 << 20, file)), len: 0 };
        let mut header = [0u8; PACK_HEADER_LEN];
        header[..8].copy_from_slice(&PACK_MAGIC);
        header[8..16].copy_from_slice(&id.0.to_le_bytes());
        w.write(&header)?;
        Ok(w)
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

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.as_mut().expect("pack writer used after seal").write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Appends an encoded frame; returns its offset in the pack.
    pub fn append(&mut self, frame: &[u8]) -> std::io::Result<u64> {
        let at = self.len;
        self.write(frame)?;
        Ok(at)
    }

    /// Flushes and fsyncs the pack and its directory. The returned guard
    /// deletes the file on drop unless [`SealedPack::publish`] was called.
    pub fn seal(mut self) -> std::io::Result<SealedPack> {
        let out = self.out.take().expect("sealed twice");
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(SealedPack { id: self.id, path: std::mem::take(&mut self.path), len: self.len, published: false })
    }
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            self.out = None;
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
