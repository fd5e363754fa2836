//! Reads and checks frames. Thread-safe: FUSE worker threads share one
//! reader; files are opened once and read with positional reads.

use std::fs::File;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::format::FRAME_HEADER_LEN;
use crate::ids::{Digest, PackId};

use super::frame::{self, FrameError};
use super::{FrameLoc, pack_path};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read pack {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("damaged block in pack {path} at offset {offset}: {source}")]
    Damaged { path: PathBuf, offset: u64, source: FrameError },
}

/// Pack files kept open at most: a quarter of the open-files limit, within
/// 8..=256. A large repository has thousands of packs (and one made by
/// older versions, one per ingest); keeping all open would hit the limit
/// and turn reads into EIO. The rest of the limit is left to index connections and the caller.
fn open_packs_cap() -> usize {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    ((limit / 4) as usize).clamp(8, 256)
}

pub struct PackReader {
    repo: PathBuf,
    files: Mutex<LruCache<PackId, Arc<File>>>,
}

impl PackReader {
    pub fn new(repo: &Path) -> PackReader {
        PackReader {
            repo: repo.to_path_buf(),
            files: Mutex::new(LruCache::new(NonZeroUsize::new(open_packs_cap()).unwrap())),
        }
    }

    fn file(&self, id: PackId) -> Result<Arc<File>, ReadError> {
        if let Some(f) = self.files.lock().unwrap().get(&id) {
            return Ok(f.clone());
        }
        let path = pack_path(&self.repo, id);
        let f = Arc::new(File::open(&path).map_err(|source| ReadError::Io { path, source })?);
        self.files.lock().unwrap().put(id, f.clone());
        Ok(f)
    }

    fn read_frame(&self, loc: &FrameLoc) -> Result<Vec<u8>, ReadError> {
        let mut buf = vec![0u8; FRAME_HEADER_LEN + loc.stored_len as usize];
        self.read_frame_into(loc, &mut buf)?;
        Ok(buf)
    }

    fn read_frame_into(&self, loc: &FrameLoc, buf: &mut [u8]) -> Result<(), ReadError> {
        let f = self.file(loc.pack)?;
        f.read_exact_at(buf, loc.offset).map_err(|source| {
            if source.kind() == std::io::ErrorKind::UnexpectedEof {
                // A truncated pack is damage, not a transient I/O problem.
                self.damaged(loc, FrameError::LengthMismatch {
                    found_raw: 0,
                    found_stored: 0,
                    want_raw: loc.raw_len,
                    want_stored: loc.stored_len,
                })
            } else {
                ReadError::Io { path: pack_path(&self.repo, loc.pack), source }
            }
        })
    }

    fn damaged(&self, loc: &FrameLoc, source: FrameError) -> ReadError {
        ReadError::Damaged { path: pack_path(&self.repo, loc.pack), offset: loc.offset, source }
    }

    /// Asks the kernel to start reading these frames into the page cache,
    /// adjacent frames of a pack as one range. Best effort: errors are
    /// left to the real read.
    pub fn will_need(&self, locs: &[FrameLoc]) {
        use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
        let mut i = 0;
        while i < locs.len() {
            let (pack, start) = (locs[i].pack, locs[i].offset);
            let mut end = start + (FRAME_HEADER_LEN as u64 + locs[i].stored_len as u64);
            i += 1;
            while i < locs.len() && locs[i].pack == pack && locs[i].offset == end {
                end += FRAME_HEADER_LEN as u64 + locs[i].stored_len as u64;
                i += 1;
            }
            if let Ok(f) = self.file(pack) {
                let _ = posix_fadvise(&*f, start as i64, (end - start) as i64, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
            }
        }
    }

    /// Reads a block, checking frame header, checksum and digest prefix.
    pub fn read_block(&self, loc: &FrameLoc, digest: &Digest) -> Result<Vec<u8>, ReadError> {
        let buf = self.read_frame(loc)?;
        frame::decode(&buf, loc.raw_len, loc.stored_len, digest).map_err(|e| self.damaged(loc, e))
    }

    /// [`PackReader::read_block`], appending the block to `out` (on error
    /// `out` is unchanged). The frame goes through a buffer reused by the
    /// calling thread, so a sequential read allocates nothing per block.
    pub fn read_block_append(&self, loc: &FrameLoc, digest: &Digest, out: &mut Vec<u8>) -> Result<(), ReadError> {
        thread_local! {
            static FRAME: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        FRAME.with_borrow_mut(|buf| {
            buf.resize(FRAME_HEADER_LEN + loc.stored_len as usize, 0);
            self.read_frame_into(loc, buf)?;
            frame::decode_append(buf, loc.raw_len, loc.stored_len, digest, out).map_err(|e| self.damaged(loc, e))
        })
    }

    /// The frame of a block, as stored, once it has been fully checked
    /// (as [`PackReader::read_block_verified`] checks it): for copying
    /// frames between packs without spreading damage.
    pub fn read_frame_checked(&self, loc: &FrameLoc, digest: &Digest) -> Result<Vec<u8>, ReadError> {
        let buf = self.read_frame(loc)?;
        frame::decode_and_verify(&buf, loc.raw_len, loc.stored_len, digest).map_err(|e| self.damaged(loc, e))?;
        Ok(buf)
    }

    /// Reads a block and also checks its content against its digest.
    pub fn read_block_verified(&self, loc: &FrameLoc, digest: &Digest) -> Result<Vec<u8>, ReadError> {
        let buf = self.read_frame(loc)?;
        frame::decode_and_verify(&buf, loc.raw_len, loc.stored_len, digest)
            .map_err(|e| self.damaged(loc, e))
    }
}
