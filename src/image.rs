//! Random access to one disk of one restore point as a flat image:
//! `read_at(buf, offset)`. Zero blocks cost nothing; stored blocks are read
//! from packs, checked and decompressed, and kept in a small shared cache
//! keyed by block id (so deduplicated blocks are cached once).

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::chain::Chain;
use crate::error::Result;
use crate::ids::{BlockId, BlockNo, LineageId};
use crate::pack::PackReader;
use crate::span::pieces;

/// Decompressed blocks shared by all images of a mount.
pub struct BlockCache {
    lru: Mutex<LruCache<BlockId, Arc<Vec<u8>>>>,
}

impl BlockCache {
    /// A cache of about `bytes` of blocks of `block_size`.
    pub fn new(bytes: usize, block_size: u32) -> BlockCache {
        let n = (bytes / block_size as usize).max(4);
        BlockCache { lru: Mutex::new(LruCache::new(NonZeroUsize::new(n).unwrap())) }
    }
}

/// Everything an image needs from its repository, shared by all images.
pub struct Store {
    pub chain: Chain,
    pub packs: PackReader,
    pub cache: BlockCache,
    pub block_size: u32,
}

pub struct ImageReader {
    store: Arc<Store>,
    lineage: LineageId,
    seq: i64,
    size: u64,
}

impl ImageReader {
    pub fn new(store: Arc<Store>, lineage: LineageId, seq: i64, size: u64) -> ImageReader {
        ImageReader { store, lineage, seq, size }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Fills `buf` from `offset`; returns the bytes read, fewer only at the
    /// end of the disk. A damaged block is an error, never wrong bytes.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let data = self.read_vec(offset, buf.len())?;
        buf[..data.len()].copy_from_slice(&data);
        Ok(data.len())
    }

    /// Reads up to `len` bytes at `offset` into a new buffer, built by
    /// appending (no zero-fill of memory about to be overwritten: that was
    /// a tenth of the mount's CPU time in sequential reads).
    pub fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let ps = pieces(offset, len, self.size, self.store.block_size);
        let total = ps.last().map(|p| p.buf_offset + p.len).unwrap_or(0);
        let mut out = Vec::with_capacity(total);
        for p in ps {
            match self.block(p.block)? {
                None => out.resize(out.len() + p.len, 0),
                Some(data) => out.extend_from_slice(&data[p.in_block..p.in_block + p.len]),
            }
        }
        Ok(out)
    }

    fn block(&self, block: u64) -> Result<Option<Arc<Vec<u8>>>> {
        let Some((id, loc, digest)) = self.store.chain.locate(self.lineage, self.seq, BlockNo(block))? else {
            return Ok(None);
        };
        if let Some(b) = self.store.cache.lru.lock().unwrap().get(&id) {
            return Ok(Some(b.clone()));
        }
        let data = Arc::new(self.store.packs.read_block(&loc, &digest)?);
        if data.len() < self.store.block_size as usize {
            // Frames hold whole blocks; a short one means a damaged index.
            return Err(crate::error::Error::Input(format!(
                "block {block}: stored frame is {} bytes, expected {}",
                data.len(),
                self.store.block_size
            )));
        }
        self.store.cache.lru.lock().unwrap().put(id, data.clone());
        Ok(Some(data))
    }
}
