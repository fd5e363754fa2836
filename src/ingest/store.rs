//! The block engine of an ingest, a pipeline of three stages: a reader
//! thread reads planned blocks in batches (direct I/O, several reads in
//! flight); a hasher thread hashes them, and compresses them ahead unless
//! the ingest is a scan, on all cores (rayon); the calling thread compares
//! with the previous version, deduplicates, appends frames to packs (whose
//! writes run on a thread of their own) and records versions. Memory is
//! bounded by a few batches, whatever the disk size.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{Receiver, Sender, channel, sync_channel};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::PACK_HEADER_LEN;
use crate::ids::{BlockId, BlockNo, Digest, LineageId, PackId};
use crate::index::Index;
use crate::pack::writer::SealedPack;
use crate::pack::{FrameLoc, PackWriter, frame};
use crate::ranges::RangeSet;
use crate::span::block_count;
use crate::zeros::is_zero;

use super::source::{AlignedBuf, SourceReader};
use super::{DiskPlan, Kind, Progress};

/// Bytes read per batch: large enough to keep both cores busy, small
/// enough to keep memory flat.
const BATCH_BYTES: u64 = 8 << 20;
/// Batches in flight between the reader thread and the hashers.
const BATCHES_IN_FLIGHT: usize = 2;

#[derive(Debug, Default, Clone, Copy)]
pub struct DiskStats {
    pub blocks_read: u64,
    pub bytes_read: u64,
    pub blocks_stored: u64,
    pub blocks_deduplicated: u64,
    pub bytes_stored: u64,
    /// Blocks that hold data now less those that did at the previous
    /// point: what turns its count into this point's.
    pub data_blocks_delta: i64,
}

struct Batch {
    first: u64,
    count: usize,
    data: AlignedBuf,
}

pub struct BlockStore<'a> {
    idx: &'a Index,
    repo: &'a Path,
    block_size: u32,
    pack_size: u64,
    now: i64,
    next_pack: PackId,
    writer: Option<PackWriter>,
    /// Packs being sealed (written out and fsynced) on threads of their
    /// own, so that a full pack does not stall the ingest; all are waited
    /// for in [`BlockStore::finish`], before anything is committed.
    sealing: Vec<(PackId, std::thread::JoinHandle<std::io::Result<SealedPack>>)>,
    /// Whether this ingest already considered appending to the newest
    /// pack (it does so once, for its first frame).
    tried_append: bool,
}

impl Drop for BlockStore<'_> {
    /// A failed ingest: wait for the packs still being sealed, whose
    /// guards, dropped unpublished, undo their writes.
    fn drop(&mut self) {
        for (_, h) in self.sealing.drain(..) {
            let _ = h.join();
        }
    }
}

impl<'a> BlockStore<'a> {
    pub fn new(idx: &'a Index, repo: &'a Path, block_size: u32, pack_size: u64, now: i64) -> Result<BlockStore<'a>> {
        Ok(BlockStore { idx, repo, block_size, pack_size, now, next_pack: idx.next_pack_id()?, writer: None, sealing: Vec::new(), tried_append: false })
    }

    fn bs(&self) -> u64 {
        self.block_size as u64
    }

    /// Appends a frame, starting a new pack when the current one is full.
    fn append(&mut self, bytes: Vec<u8>) -> Result<(PackId, u64)> {
        if self.writer.as_ref().is_some_and(|w| w.len() >= self.pack_size) {
            self.seal_current()?;
        }
        if self.writer.is_none() {
            self.writer = Some(self.open_writer()?);
        }
        let w = self.writer.as_mut().unwrap();
        let at = w.append(bytes).map_err(|e| Error::io(format!("cannot write pack {}", w.id().0), e))?;
        Ok((w.id(), at))
    }

    /// Continues the newest pack while it is below the target size, so a
    /// long chain of small incrementals shares a few packs instead of
    /// leaving one small file each: fewer files to open and seek between
    /// when a point of a deep chain is read cold. Otherwise, or if the
    /// newest pack cannot be appended to, starts a new pack.
    fn open_writer(&mut self) -> Result<PackWriter> {
        if !std::mem::replace(&mut self.tried_append, true)
            && let Some((id, len)) = self.idx.newest_pack()?
            && len < self.pack_size
        {
            match PackWriter::append_to(self.repo, id, len) {
                Ok(w) => return Ok(w),
                Err(e) => log::warn!(
                    "cannot append to pack {}: {e}; writing a new pack (run `cbtfs verify`)",
                    crate::pack::pack_path(self.repo, id).display()
                ),
            }
        }
        let id = self.next_pack;
        self.next_pack = PackId(id.0 + 1);
        let w = PackWriter::create(self.repo, id).map_err(|e| {
            Error::io(format!("cannot create pack {}", crate::pack::pack_path(self.repo, id).display()), e)
        })?;
        self.idx.insert_pack(id, PACK_HEADER_LEN as u64, self.now)?;
        Ok(w)
    }

    fn seal_current(&mut self) -> Result<()> {
        if let Some(w) = self.writer.take() {
            self.record_size(&w)?;
            self.sealing.push((w.id(), std::thread::spawn(move || w.seal())));
        }
        Ok(())
    }

    fn record_size(&self, w: &PackWriter) -> Result<()> {
        self.idx.conn().execute("UPDATE packs SET size = ?1 WHERE id = ?2", rusqlite::params![w.len() as i64, w.id()])?;
        Ok(())
    }

    /// Seals the last pack; the caller commits, then publishes the packs.
    /// The last pack is sealed on this thread, which has nothing else to
    /// do meanwhile: a thread of its own would only add the cost of
    /// starting one to every ingest.
    pub fn finish(mut self) -> Result<Vec<SealedPack>> {
        let mut sealed = Vec::new();
        let mut failure = None;
        if let Some(w) = self.writer.take() {
            let id = w.id();
            self.record_size(&w)?;
            match w.seal() {
                Ok(s) => sealed.push(s),
                Err(e) => failure = Some(Error::io(format!("cannot sync pack {}", id.0), e)),
            }
        }
        // Wait for every seal, also after a failure, so that the guards of
        // the others are in hand (and undo their writes when dropped).
        for (id, h) in std::mem::take(&mut self.sealing) {
            match h.join().unwrap_or_else(|_| Err(std::io::Error::other("pack sealing thread panicked"))) {
                Ok(s) => sealed.push(s),
                Err(e) => {
                    failure.get_or_insert(Error::io(format!("cannot sync pack {}", id.0), e));
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(sealed),
        }
    }

    pub fn ingest_disk(
        &mut self,
        d: &DiskPlan,
        lineage: LineageId,
        seq: i64,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<DiskStats> {
        let bs = self.bs();
        let size = d.source.size;
        let nblocks = block_count(size, self.block_size);
        let all = RangeSet::single(0..nblocks);
        let candidates = match d.kind {
            Kind::Full | Kind::Scan => all.clone(),
            Kind::Map | Kind::Bitmap => {
                let mut c = d.changed.as_ref().expect("map and bitmap plans have changed ranges").to_blocks(bs);
                if let Some(p) = &d.prev
                    && size > p.size {
                        // Grown region, from the old last (maybe partial) block.
                        c = c.union(&RangeSet::single(p.size / bs..nblocks));
                    }
                c
            }
        };
        // Mapped only where something is to be read: for an incremental,
        // the changed blocks, not the whole disk's allocation.
        let allocated = d.source.allocated_in(&candidates.to_bytes(bs))?.to_blocks(bs).intersect(&all);
        let to_read = candidates.intersect(&allocated);
        let holes = candidates.subtract(&allocated);

        let mut stats = DiskStats::default();
        if let Some(p) = &d.prev {
            // Holes where the previous version had data become zero.
            for r in holes.runs() {
                self.zero_nonzero(lineage, p.seq, seq, r.start, r.end, &mut stats)?;
            }
            // Blocks cut off by a shrink become zero, so a later grow
            // reads zeros there, not data from before the shrink.
            let prev_blocks = block_count(p.size, self.block_size);
            if nblocks < prev_blocks {
                self.zero_nonzero(lineage, p.seq, seq, nblocks, i64::MAX as u64, &mut stats)?;
            }
        }

        // Whole blocks, but the disk's last block may be partial.
        let tail_short = if to_read.runs().last().is_some_and(|r| r.end == nblocks) { nblocks * bs - size } else { 0 };
        let read_bytes = to_read.len() * bs - tail_short;
        log::debug!("disk {}: {} of {} blocks to read", d.name, to_read.len(), nblocks);
        progress(Progress::Disk { name: &d.name, bytes: read_bytes });
        let expected = to_read.len();
        let (rx, recycle) = spawn_reader(d.source.reader()?, self.block_size, to_read);
        // A scan mostly reads blocks that did not change: compress only the
        // ones that did. Otherwise nearly every block read is new.
        let rx = spawn_hasher(rx, self.block_size, d.kind != Kind::Scan);
        let mut received = 0u64;
        for hashed in rx {
            let hashed = hashed.map_err(|e| Error::io(format!("disk {}: cannot read source {}", d.name, d.source.path.display()), e))?;
            received += hashed.batch.count as u64;
            let bytes = (hashed.batch.count as u64 * bs).min(size - (hashed.batch.first * bs).min(size));
            stats.bytes_read += bytes;
            self.store_batch(hashed, lineage, d.prev.as_ref().map(|p| p.seq), seq, &mut stats, &recycle)?;
            progress(Progress::Read { bytes });
        }
        // The channels also close when a reading or hashing thread dies
        // (a panic), which must not pass for the end of the disk: the
        // blocks never read would keep their old versions, or read as
        // zeros, in a point that looks whole.
        if received != expected {
            let why = format!("reading stopped after {received} of {expected} blocks (a reading thread failed); nothing was recorded");
            return Err(Error::io(format!("disk {}", d.name), std::io::Error::other(why)));
        }
        Ok(stats)
    }

    /// Writes zero versions for blocks in `lo..hi` whose version at
    /// `prev_seq` holds data.
    /// Works in slices of the block range, so memory stays bounded when a
    /// shrink or a hole covers millions of previously stored blocks.
    fn zero_nonzero(&self, lineage: LineageId, prev_seq: i64, seq: i64, lo: u64, hi: u64, stats: &mut DiskStats) -> Result<()> {
        const SLICE: u64 = 1 << 16;
        let Some(last) = self.idx.last_block_no(lineage)? else { return Ok(()) };
        let hi = hi.min(last.0 + 1);
        let mut start = lo;
        while start < hi {
            let end = start.saturating_add(SLICE).min(hi);
            for (b, digest) in self.idx.versions_in_range(lineage, prev_seq, BlockNo(start), BlockNo(end))? {
                if digest.is_some() {
                    self.idx.insert_version(lineage, b, seq, None)?;
                    stats.data_blocks_delta -= 1;
                }
            }
            start = end;
        }
        Ok(())
    }

    fn store_batch(
        &mut self,
        hashed: Hashed,
        lineage: LineageId,
        prev_seq: Option<i64>,
        seq: i64,
        stats: &mut DiskStats,
        recycle: &Sender<AlignedBuf>,
    ) -> Result<()> {
        let Hashed { batch, digests, mut frames } = hashed;
        stats.blocks_read += batch.count as u64;
        let prev: HashMap<u64, Option<Digest>> = match prev_seq {
            Some(ps) => self
                .idx
                .versions_in_range(lineage, ps, BlockNo(batch.first), BlockNo(batch.first + batch.count as u64))?
                .into_iter()
                .map(|(b, d)| (b.0, d))
                .collect(),
            None => HashMap::new(),
        };
        // Decide per block: nothing, zero version, reuse, or store new.
        enum Act {
            Reuse(BlockId),
            New(usize),
            Zero,
        }
        let mut acts: Vec<(u64, Act)> = Vec::new();
        let mut new_in_batch: HashMap<Digest, usize> = HashMap::new();
        let mut to_compress: Vec<usize> = Vec::new();
        for (i, digest) in digests.iter().enumerate() {
            let b = batch.first + i as u64;
            let before = prev.get(&b).copied().flatten();
            stats.data_blocks_delta += i64::from(digest.is_some()) - i64::from(before.is_some());
            match digest {
                None => {
                    if before.is_some() {
                        acts.push((b, Act::Zero));
                    }
                }
                Some(d) => {
                    if before.as_ref() == Some(d) {
                        continue;
                    }
                    if let Some(&j) = new_in_batch.get(d) {
                        acts.push((b, Act::New(j)));
                        stats.blocks_deduplicated += 1;
                    } else if let Some(id) = self.idx.find_block(d)? {
                        acts.push((b, Act::Reuse(id)));
                        stats.blocks_deduplicated += 1;
                    } else {
                        new_in_batch.insert(*d, i);
                        to_compress.push(i);
                        acts.push((b, Act::New(i)));
                    }
                }
            }
        }
        let frames: Vec<frame::EncodedFrame> = match frames.as_mut() {
            Some(done) => to_compress.iter().map(|&i| done[i].take().expect("non-zero blocks are compressed")).collect(),
            None => {
                let blocks: Vec<&[u8]> = batch.data.as_slice().chunks(self.bs() as usize).take(batch.count).collect();
                to_compress.par_iter().map(|&i| frame::encode(blocks[i], digests[i].as_ref().unwrap())).collect()
            }
        };
        // Hand the buffer back to the reader; if it is done, it is dropped.
        let _ = recycle.send(batch.data);
        let mut new_ids: HashMap<usize, BlockId> = HashMap::new();
        for (&i, f) in to_compress.iter().zip(frames) {
            let frame_len = f.bytes.len() as u64;
            let loc_lens = (f.stored_len, f.raw_len);
            let (pack, offset) = self.append(f.bytes)?;
            let loc = FrameLoc { pack, offset, stored_len: loc_lens.0, raw_len: loc_lens.1 };
            let id = self.idx.insert_block(digests[i].as_ref().unwrap(), &loc)?;
            new_ids.insert(i, id);
            stats.blocks_stored += 1;
            stats.bytes_stored += frame_len;
        }
        for (b, act) in acts {
            let id = match act {
                Act::Zero => None,
                Act::Reuse(id) => Some(id),
                Act::New(i) => Some(new_ids[&i]),
            };
            self.idx.insert_version(lineage, BlockNo(b), seq, id)?;
        }
        Ok(())
    }
}

/// A batch with the digest of each block (`None`: all zeros) and, when
/// compressing ahead, the frame of each non-zero block.
struct Hashed {
    batch: Batch,
    digests: Vec<Option<Digest>>,
    frames: Option<Vec<Option<frame::EncodedFrame>>>,
}

/// Batches of fewer blocks are hashed on the hasher thread alone. A tiny
/// incremental reads one or two blocks: splitting them over the cores saves
/// less than starting the pool of threads that would do it costs.
const PARALLEL_HASH_MIN: usize = 4;

/// Hashes (and with `compress` also compresses) each batch on all cores,
/// on a thread of its own: the next batch is hashed and compressed while
/// the calling thread looks up, appends and records this one. With
/// everything on one thread the cores sat idle during those steps, and a
/// full ingest used two thirds of them.
fn spawn_hasher(
    rx: Receiver<std::io::Result<Batch>>,
    block_size: u32,
    compress: bool,
) -> Receiver<std::io::Result<Hashed>> {
    let (tx, out) = sync_channel(1);
    std::thread::spawn(move || {
        for batch in rx {
            let res = batch.map(|batch| {
                let blocks: Vec<&[u8]> = batch.data.as_slice().chunks(block_size as usize).take(batch.count).collect();
                let one = |b: &&[u8]| {
                    if is_zero(b) {
                        return (None, None);
                    }
                    let d = Digest::of(b);
                    let f = compress.then(|| frame::encode(b, &d));
                    (Some(d), f)
                };
                let work: Vec<(Option<Digest>, Option<frame::EncodedFrame>)> = if blocks.len() < PARALLEL_HASH_MIN {
                    blocks.iter().map(one).collect()
                } else {
                    blocks.par_iter().map(one).collect()
                };
                let (digests, frames): (Vec<_>, Vec<_>) = work.into_iter().unzip();
                Hashed { batch, digests, frames: compress.then_some(frames) }
            });
            if tx.send(res).is_err() {
                return;
            }
        }
    });
    out
}

/// Concurrent reads per batch. Virtual disks and SSDs deliver far more with
/// several requests in flight: on the benchmark machine one sequential
/// reader got 0.47 GB/s from an uncached image and two got 1.8 GB/s.
const READERS: usize = 4;

/// The least a parallel read is split into. Each part costs a thread: a
/// source in 100,000 small extents, read one 64 KiB batch at a time in
/// four 16 KiB parts, spent 30 s of system time starting and ending
/// threads for 400 MiB of data.
const READ_PART_MIN: usize = 512 << 10;

/// Fills `buf` from `offset` with up to [`READERS`] positional reads in
/// parallel, each of a multiple of [`AlignedBuf::ALIGN`] bytes and, but for
/// the last, at least [`READ_PART_MIN`]; a smaller `buf` is one read.
fn read_parallel(src: &SourceReader, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let part = buf.len().div_ceil(READERS).max(READ_PART_MIN).next_multiple_of(AlignedBuf::ALIGN);
    if buf.len() <= part {
        return src.read(offset, buf);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = buf
            .chunks_mut(part)
            .enumerate()
            .map(|(i, chunk)| s.spawn(move || src.read(offset + (i * part) as u64, chunk)))
            .collect();
        handles.into_iter().try_for_each(|h| h.join().expect("reader thread panicked"))
    })
}

/// The batches of `runs` (first block, count), each within one run and at
/// most `per_batch` blocks long.
fn batches(runs: RangeSet, per_batch: u64) -> impl Iterator<Item = (u64, u64)> {
    runs.runs().to_vec().into_iter().flat_map(move |r| {
        (r.start..r.end).step_by(per_batch as usize).map(move |b| (b, per_batch.min(r.end - b)))
    })
}

/// The order in which batches are read: alternately from the first and the
/// second half of the blocks to read. Disks are not uniform: system files
/// compress well and cost CPU time, media and encrypted data do not compress
/// and cost only I/O. Read front to back, an ingest spends long stretches
/// bound by one resource while the other idles; two distant regions at once
/// mix the two. On the benchmark image (compressible files first, random
/// ones after) this took a full ingest from 1.85 s to 1.6 s. Each batch is
/// still a long run, so frames of neighbouring blocks stay together in the
/// packs and restores still read them in long runs. The second half starts
/// at a multiple of `per_batch` blocks, so batches end where read-ahead
/// jobs do (a job cut between two batches lies in two places in the packs).
/// On a single spinning disk each switch costs a seek (5-10 ms, against the
/// 40-60 ms an 8 MiB batch takes there); the kernel's flag for spinning
/// disks cannot tell them apart, as virtual disks report themselves
/// rotational whatever backs them.
fn interleaved_batches(runs: RangeSet, per_batch: u64) -> impl Iterator<Item = (u64, u64)> {
    // The block half-way through, moved down to a batch boundary.
    let split = runs.nth(runs.len() / 2).map_or(0, |b| b / per_batch * per_batch);
    let (front, back) = (runs.intersect(&RangeSet::single(0..split)), runs.subtract(&RangeSet::single(0..split)));
    let mut front = batches(front, per_batch).fuse();
    let mut back = batches(back, per_batch).fuse();
    let mut take_front = false;
    std::iter::from_fn(move || {
        take_front = !take_front;
        if take_front { front.next().or_else(|| back.next()) } else { back.next().or_else(|| front.next()) }
    })
}

/// Reads the blocks of `runs` in batches on a thread of its own, so that
/// reading overlaps hashing and compression. Buffers come back through the
/// second channel and are reused, so memory stays at a few batches.
fn spawn_reader(
    src: SourceReader,
    block_size: u32,
    runs: RangeSet,
) -> (Receiver<std::io::Result<Batch>>, Sender<AlignedBuf>) {
    let (tx, rx) = sync_channel(BATCHES_IN_FLIGHT);
    let (recycle_tx, recycle_rx) = channel::<AlignedBuf>();
    let bs = block_size as u64;
    let per_batch = (BATCH_BYTES / bs).max(1);
    std::thread::spawn(move || {
        for (b, count) in interleaved_batches(runs, per_batch) {
            let len = (count * bs) as usize;
            let mut data = match recycle_rx.try_recv() {
                Ok(mut d) => {
                    d.set_len(len);
                    d
                }
                Err(_) => AlignedBuf::new(len),
            };
            let res =
                read_parallel(&src, b * bs, data.as_mut_slice()).map(|()| Batch { first: b, count: count as usize, data });
            let failed = res.is_err();
            if tx.send(res).is_err() || failed {
                return;
            }
        }
    });
    (rx, recycle_tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_alternate_halves_and_cover_every_block_once() {
        let runs = RangeSet::from_ranges([0..10, 20..23, 100..107]);
        let order: Vec<(u64, u64)> = interleaved_batches(runs.clone(), 4).collect();
        // 20 blocks: half-way is block 20, a multiple of 4: the first half
        // is 0..10, the second 20..23 and 100..107.
        assert_eq!(order, [(0, 4), (20, 3), (4, 4), (100, 4), (8, 2), (104, 3)]);
        let covered = RangeSet::from_ranges(order.iter().map(|&(b, n)| b..b + n));
        assert_eq!(covered, runs);
        assert_eq!(order.iter().map(|&(_, n)| n).sum::<u64>(), runs.len());
        // Half-way is block 10 (0..20): moved down to 8, a batch boundary.
        let order: Vec<(u64, u64)> = interleaved_batches(RangeSet::single(0..20), 4).collect();
        assert_eq!(order, [(0, 4), (8, 4), (4, 4), (12, 4), (16, 4)]);
        assert!(order.iter().all(|&(b, _)| b % 4 == 0), "batches start on job boundaries");
        // Uneven halves: the longer one finishes alone.
        let order: Vec<(u64, u64)> = interleaved_batches(RangeSet::single(0..3), 1).collect();
        assert_eq!(order, [(0, 1), (1, 1), (2, 1)]);
        assert_eq!(interleaved_batches(RangeSet::new(), 8).count(), 0);
    }
}
