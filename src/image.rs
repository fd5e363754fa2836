//! Random access to one disk of one restore point as a flat image:
//! `read_at(buf, offset)`. Zero blocks cost nothing; stored blocks are read
//! from packs, checked and decompressed, and kept in a small shared cache
//! keyed by block id (so deduplicated blocks are cached once).

use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::chain::{Chain, Location};
use crate::error::Result;
use crate::ids::{BlockId, BlockNo, Digest, LineageId};
use crate::pack::FrameLoc;
use crate::pack::PackReader;
use crate::readahead::{self, ReadAhead, Stream};
use crate::span::pieces;

/// Read-ahead workers per mount: pack reads in flight at once, beyond the
/// FUSE threads' own.
const READ_AHEAD_WORKERS: usize = 4;
/// Block locations found by read-ahead and not yet used by a read: enough
/// for several windows of several concurrent readers.
const LOCATED_CAP: usize = 1 << 14;

/// (lineage, point, block): one block of one point's image.
type BlockKey = (LineageId, i64, u64);

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

    fn contains(&self, id: &BlockId) -> bool {
        self.lru.lock().unwrap().contains(id)
    }
}

/// Everything an image needs from its repository, shared by all images.
pub struct Store {
    pub chain: Chain,
    pub packs: PackReader,
    pub cache: BlockCache,
    pub block_size: u32,
    read_ahead: ReadAhead,
    /// Handed from read-ahead to the read that follows it, so that each
    /// block is looked up in the index once, prefetched or not.
    located: Mutex<LruCache<BlockKey, Location>>,
}

impl Store {
    /// The store of repository `repo` with a block cache of about
    /// `cache_bytes`, and its read-ahead workers.
    pub fn new(repo: &Path, cache_bytes: usize, block_size: u32) -> Arc<Store> {
        Arc::new_cyclic(|me| Store {
            chain: Chain::new(repo),
            packs: PackReader::new(repo),
            cache: BlockCache::new(cache_bytes, block_size),
            block_size,
            read_ahead: ReadAhead::spawn(me.clone(), READ_AHEAD_WORKERS),
            located: Mutex::new(LruCache::new(NonZeroUsize::new(LOCATED_CAP).unwrap())),
        })
    }

    /// Fetches ahead the frames of `blocks` at point `seq` of `lineage`
    /// that are not cached (see `readahead` and `PackReader::stage`).
    pub(crate) fn prefetch(&self, lineage: LineageId, seq: i64, blocks: Range<u64>) -> Result<()> {
        let found = self.chain.locate_each(lineage, seq, blocks.clone())?;
        let mut locs = Vec::with_capacity(found.len());
        for (b, l) in blocks.zip(found) {
            if let Some((id, loc, _)) = l
                && !self.cache.contains(&id)
            {
                locs.push(loc);
            }
            self.located.lock().unwrap().put((lineage, seq, b), l);
        }
        self.packs.stage(&locs);
        Ok(())
    }

    /// Locations of `blocks`, from read-ahead where it found them first.
    fn locate(&self, lineage: LineageId, seq: i64, blocks: &[u64]) -> Result<Vec<Location>> {
        let mut out: Vec<Option<Location>> = {
            let mut located = self.located.lock().unwrap();
            blocks.iter().map(|&b| located.pop(&(lineage, seq, b))).collect()
        };
        if out.iter().any(Option::is_none) {
            let missing: Vec<u64> = blocks.iter().zip(&out).filter(|(_, l)| l.is_none()).map(|(&b, _)| b).collect();
            let mut found = self.chain.locate_each(lineage, seq, missing.into_iter())?.into_iter();
            for l in out.iter_mut().filter(|l| l.is_none()) {
                *l = found.next();
            }
        }
        Ok(out.into_iter().map(|l| l.expect("every block located")).collect())
    }
}

/// A disk of a point, or a window of it (a partition): offsets given to
/// reads are relative to `start`, and reads stop at `end`.
pub struct ImageReader {
    store: Arc<Store>,
    lineage: LineageId,
    seq: i64,
    start: u64,
    end: u64,
    stream: Stream,
    /// Off for one-off reads (a partition table), which are not the
    /// start of a sequential read and must not set read-ahead going.
    read_ahead: bool,
    /// The last stretch of data found by SEEK_HOLE, `from..hole` on the
    /// whole disk: tools that ask again from inside it (qemu asks in
    /// pieces of a few GiB) get the answer without walking it again.
    data_run: Mutex<Option<Range<u64>>>,
}

impl ImageReader {
    pub fn new(store: Arc<Store>, lineage: LineageId, seq: i64, size: u64) -> ImageReader {
        ImageReader {
            store,
            lineage,
            seq,
            start: 0,
            end: size,
            stream: Stream::default(),
            read_ahead: true,
            data_run: Mutex::new(None),
        }
    }

    /// This image without read-ahead, for a few small reads.
    pub fn without_read_ahead(self) -> ImageReader {
        ImageReader { read_ahead: false, ..self }
    }

    /// The `len` bytes from `start` of this image, as an image of their own.
    /// The window is cut to the image.
    pub fn window(self, start: u64, len: u64) -> ImageReader {
        let start = self.start.saturating_add(start).min(self.end);
        let end = start.saturating_add(len).min(self.end);
        ImageReader { start, end, data_run: Mutex::new(None), ..self }
    }

    pub fn size(&self) -> u64 {
        self.end - self.start
    }

    /// The partition table of this image, read with a few small reads
    /// that do not set read-ahead going.
    pub fn partition_table(self) -> Result<crate::partition::Table> {
        let img = self.without_read_ahead();
        crate::partition::read_table(img.size(), |off, len| img.read_vec(off, len))
    }

    /// Fills `buf` from `offset`; returns the bytes read, fewer only at the
    /// end of the disk. A damaged block is an error, never wrong bytes.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let data = self.read_vec(offset, buf.len())?;
        buf[..data.len()].copy_from_slice(&data);
        Ok(data.len())
    }

    /// Reads up to `len` bytes at `offset` into a new buffer.
    pub fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let n = self.read_into(offset, len, &mut out)?;
        out.truncate(n);
        Ok(out)
    }

    /// [`ImageReader::read_vec`] into the start of `out`; returns the bytes
    /// read, fewer than `len` only at the end of the image. `out` is grown
    /// if too short and never shrunk, and its old content is written over,
    /// not cleared first: a caller reusing one buffer for all its reads (a
    /// FUSE thread) pays for zeroing it only when it grows, and blocks are
    /// decompressed straight into it. A damaged block is an error; `out`
    /// then holds nothing meaningful.
    pub fn read_into(&self, offset: u64, len: usize, out: &mut Vec<u8>) -> Result<usize> {
        // From here on, offsets are on the whole disk.
        let offset = self.start.saturating_add(offset).min(self.end);
        let end = offset.saturating_add(len as u64).min(self.end);
        if self.read_ahead
            && let Some(ahead) = self.stream.advance(offset, end, self.end)
        {
            for job in readahead::jobs(self.lineage, self.seq, ahead, self.store.block_size) {
                self.store.read_ahead.request(job);
            }
        }
        let ps = pieces(offset, (end - offset) as usize, self.end, self.store.block_size);
        let total = ps.last().map(|p| p.buf_offset + p.len).unwrap_or(0);
        let blocks: Vec<u64> = ps.iter().map(|p| p.block).collect();
        let locations = self.store.locate(self.lineage, self.seq, &blocks)?;
        let bs = self.store.block_size as usize;
        // Every byte up to `total` is written below.
        if out.len() < total {
            out.resize(total, 0);
        }
        for (p, l) in ps.into_iter().zip(locations) {
            let dst = &mut out[p.buf_offset..p.buf_offset + p.len];
            match l {
                None => dst.fill(0),
                Some((id, loc, digest)) if p.len == bs && !self.store.cache.contains(&id) => {
                    // A whole block, as sequential reads ask for: decompress
                    // it straight into the reply, and do not cache it (the
                    // kernel keeps the image's pages; a copy here would only
                    // cost time and push out the blocks of partial reads).
                    if loc.raw_len as usize != bs {
                        return Err(short_frame(p.block, loc.raw_len as usize, bs));
                    }
                    self.store.packs.read_block_into(&loc, &digest, dst)?;
                }
                Some(found) => {
                    let data = self.block(p.block, found)?;
                    dst.copy_from_slice(&data[p.in_block..p.in_block + p.len]);
                }
            }
        }
        Ok(total)
    }

    /// Where the data at or after `offset` starts (SEEK_DATA), or `None`
    /// when only zeros follow (ENXIO). Holes are whole zero blocks: never
    /// stored, or zeroed by a later point. A copy (`cp`, `qemu-img
    /// convert`) that skips them costs the point's data, not its disk size.
    pub fn seek_data(&self, offset: u64) -> Result<Option<u64>> {
        if offset >= self.size() {
            return Ok(None);
        }
        let (abs, first, end) = self.block_span(offset);
        let bs = u64::from(self.store.block_size);
        let found = self.store.chain.with_index(|idx| Ok(idx.next_data_block(self.lineage, self.seq, first, end)?))?;
        Ok(found.map(|b| (b.0 * bs).max(abs) - self.start))
    }

    /// Where the zeros at or after `offset` start (SEEK_HOLE): a zero block,
    /// or the end of the image; `None` past the end (ENXIO).
    pub fn seek_hole(&self, offset: u64) -> Result<Option<u64>> {
        if offset >= self.size() {
            return Ok(None);
        }
        let (abs, first, end) = self.block_span(offset);
        if let Some(run) = self.data_run.lock().unwrap().clone()
            && run.contains(&abs)
        {
            return Ok(Some(run.end - self.start));
        }
        let bs = u64::from(self.store.block_size);
        let found = self.store.chain.with_index(|idx| Ok(idx.next_zero_block(self.lineage, self.seq, first, end)?))?;
        let at = found.map_or(self.end, |b| (b.0 * bs).max(abs).min(self.end));
        *self.data_run.lock().unwrap() = Some(abs..at);
        Ok(Some(at - self.start))
    }

    /// `offset` on the whole disk, and the blocks from the one holding it
    /// to the end of this image.
    fn block_span(&self, offset: u64) -> (u64, BlockNo, BlockNo) {
        let bs = u64::from(self.store.block_size);
        let abs = self.start + offset;
        (abs, BlockNo(abs / bs), BlockNo(self.end.div_ceil(bs)))
    }

    /// A block through the cache: parts of blocks are read by random and
    /// small reads, whose neighbours are likely to follow.
    fn block(&self, block: u64, (id, loc, digest): (BlockId, FrameLoc, Digest)) -> Result<Arc<Vec<u8>>> {
        if let Some(b) = self.store.cache.lru.lock().unwrap().get(&id) {
            return Ok(b.clone());
        }
        let data = Arc::new(self.store.packs.read_block(&loc, &digest)?);
        if data.len() != self.store.block_size as usize {
            return Err(short_frame(block, data.len(), self.store.block_size as usize));
        }
        self.store.cache.lru.lock().unwrap().put(id, data.clone());
        Ok(data)
    }
}

/// Frames hold whole blocks; a shorter one means a damaged index.
fn short_frame(block: u64, len: usize, block_size: usize) -> crate::error::Error {
    crate::error::Error::Input(format!("block {block}: stored frame is {len} bytes, expected {block_size}"))
}
