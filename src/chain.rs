//! (point, block) -> where its bytes live, or zero. Shared by every FUSE
//! worker thread through a small pool of read-only index connections
//! (SQLite connections are not shareable across threads).
//!
//! Cost: one B-tree seek in `block_versions` per block (see `index`), so a
//! read costs the same at chain depth 1 and 1000.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::Result;
use crate::ids::{BlockId, BlockNo, Digest, LineageId};
use crate::index::Index;
use crate::pack::FrameLoc;

/// A block's id, frame and digest; `None` for an all-zero block.
pub type Location = Option<(BlockId, FrameLoc, Digest)>;

pub struct Chain {
    repo: PathBuf,
    pool: Mutex<Vec<Index>>,
}

impl Chain {
    pub fn new(repo: &Path) -> Chain {
        Chain { repo: repo.to_path_buf(), pool: Mutex::new(Vec::new()) }
    }

    /// Runs `f` with a pooled connection, opening one if none is free.
    pub fn with_index<T>(&self, f: impl FnOnce(&Index) -> Result<T>) -> Result<T> {
        let idx = self.pool.lock().unwrap().pop();
        let idx = match idx {
            Some(i) => i,
            None => Index::open(&self.repo)?,
        };
        let out = f(&idx);
        self.pool.lock().unwrap().push(idx);
        out
    }

    /// Where block `block` of `lineage` at point `seq` lives; `None` if zero.
    pub fn locate(&self, lineage: LineageId, seq: i64, block: BlockNo) -> Result<Location> {
        self.with_index(|idx| Ok(idx.locate(lineage, seq, block)?))
    }

    /// [`Chain::locate`] for each of `blocks`, on one pooled connection.
    pub fn locate_each(&self, lineage: LineageId, seq: i64, blocks: impl Iterator<Item = u64>) -> Result<Vec<Location>> {
        self.with_index(|idx| Ok(idx.locate_each(lineage, seq, blocks)?))
    }
}
