//! Reads and checks frames. Thread-safe: FUSE worker threads share one
//! reader; files are opened once and read with positional reads.
//!
//! Frames a sequential reader is about to need are read ahead with direct
//! I/O ([`PackReader::stage`]): streaks of frames an ingest wrote one after
//! the other land in buffers of our own and wait there for the read that
//! takes them (short streaks, scattered frames whose many small reads the
//! kernel does better at once, go through the page cache instead). They do
//! not pass through the page cache, so restoring a large image neither
//! fills memory with pack pages nor pays for copying through them, and
//! pack pages never compete with the image's own pages. Other reads
//! (random reads, verify, gc) use the page cache as before. Either way,
//! every frame is checked when it is decoded.

use std::fs::File;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use lru::LruCache;

use crate::aligned::AlignedBuf;
use crate::format::{FRAME_HEADER_LEN, PACK_HEADER_LEN};
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

/// Bytes of read-ahead buffers alive at once, at most: a few read-ahead
/// windows. Beyond it, runs are left to the kernel instead.
const STAGED_BYTES: u64 = 32 << 20;
/// Staged frames not taken within this long are dropped: their reader
/// stopped, went elsewhere, or found the bytes in the kernel's cache.
const STAGED_FOR: std::time::Duration = std::time::Duration::from_secs(2);
/// A run of adjacent frames is read with one request of at most this.
const RUN_MAX: u64 = 1 << 20;
/// Streaks of fewer frames (under half a megabyte of 64 KiB blocks) are
/// read ahead through the page cache.
const DIRECT_MIN_FRAMES: usize = 8;

/// Read-ahead buffers come in two sizes, one for a lone frame (the usual
/// run in a chain of small incrementals) and one for a full run, and are
/// recycled. Allocating one per run cost a tenth of a sequential read's CPU
/// time in zeroing, and, since the reading thread frees what another
/// allocated, grew the allocator's per-thread arenas to 800 MiB.
const SMALL_BUF: usize = 128 << 10;
const LARGE_BUF: usize = RUN_MAX as usize + 2 * AlignedBuf::ALIGN;
/// Spare buffers kept: as many of each size as can be alive at once, so
/// that once warmed up, read-ahead frees nothing (a freed buffer raises
/// glibc's mmap threshold, and later ones then come from the arenas).
const SPARE_SMALL: usize = (STAGED_BYTES as usize) / SMALL_BUF;
const SPARE_LARGE: usize = (STAGED_BYTES as usize) / LARGE_BUF;

/// The recycled read-ahead buffers, and the bytes of those in use.
#[derive(Default)]
struct Buffers {
    small: Mutex<Vec<AlignedBuf>>,
    large: Mutex<Vec<AlignedBuf>>,
    /// Bytes of buffers handed out and not yet back: read-ahead in flight,
    /// staged, or held by a reader decoding from it.
    live: std::sync::atomic::AtomicU64,
}

impl Buffers {
    /// The size of buffer a run of `len` bytes gets (what it keeps alive).
    fn size_for(len: usize) -> usize {
        if len <= SMALL_BUF {
            SMALL_BUF
        } else if len <= LARGE_BUF {
            LARGE_BUF
        } else {
            len
        }
    }

    fn pool(&self, size: usize) -> Option<(&Mutex<Vec<AlignedBuf>>, usize)> {
        match size {
            SMALL_BUF => Some((&self.small, SPARE_SMALL)),
            LARGE_BUF => Some((&self.large, SPARE_LARGE)),
            _ => None,
        }
    }

    /// A buffer of `len` bytes, recycled where one of its size is spare;
    /// `None` if the buffers in use would then pass [`STAGED_BYTES`].
    fn get(&self, len: usize) -> Option<AlignedBuf> {
        use std::sync::atomic::Ordering;
        let size = Self::size_for(len);
        let held = self.live.fetch_add(size as u64, Ordering::Relaxed);
        if held + size as u64 > STAGED_BYTES {
            self.live.fetch_sub(size as u64, Ordering::Relaxed);
            return None;
        }
        let spare = self.pool(size).and_then(|(pool, _)| pool.lock().unwrap().pop());
        let mut buf = spare.unwrap_or_else(|| AlignedBuf::new(size));
        buf.set_len(len);
        Some(buf)
    }

    /// Takes back a buffer from [`Buffers::get`] for a run of `len` bytes.
    fn put(&self, buf: AlignedBuf, len: usize) {
        self.live.fetch_sub(Self::size_for(len) as u64, std::sync::atomic::Ordering::Relaxed);
        // Made by `get` for that size: room for it, and at most the
        // alignment slack more.
        let size = [LARGE_BUF, SMALL_BUF].into_iter().find(|&s| (s..=s + AlignedBuf::ALIGN).contains(&buf.capacity()));
        if let Some((pool, max)) = size.and_then(|s| self.pool(s)) {
            let mut pool = pool.lock().unwrap();
            if pool.len() < max {
                pool.push(buf);
            }
        }
    }
}

/// Bytes of a pack read with direct I/O: `buf` holds the pack from `start`.
/// Its buffer is recycled when the last frame is taken.
struct Run {
    start: u64,
    /// Always `Some` until dropped.
    buf: Option<AlignedBuf>,
    /// What the buffer was asked for (and counted as).
    asked: usize,
    buffers: Arc<Buffers>,
}

impl Run {
    fn bytes(&self) -> &[u8] {
        self.buf.as_ref().expect("a run has its buffer until dropped").as_slice()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.buffers.put(buf, self.asked);
        }
    }
}

/// A run being read (empty) or read (`Some`; `None` if the read failed).
type Pending = Arc<OnceLock<Option<Arc<Run>>>>;

/// Marks a run as failed when dropped before it was read.
struct Release(Pending);

impl Drop for Release {
    fn drop(&mut self) {
        let _ = self.0.set(None);
    }
}

/// Staged frames, oldest first, with when they were staged. A frame
/// keeps its run's buffer alive until it is taken or expires.
struct Staged {
    frames: LruCache<(PackId, u64), (Pending, std::time::Instant)>,
}

impl Staged {
    fn take(&mut self, key: &(PackId, u64)) -> Option<Pending> {
        self.frames.pop(key).map(|(p, _)| p)
    }

    fn contains(&self, key: &(PackId, u64)) -> bool {
        self.frames.contains(key)
    }

    fn put(&mut self, keys: impl Iterator<Item = (PackId, u64)>, pending: &Pending, now: std::time::Instant) {
        for k in keys {
            self.frames.put(k, (pending.clone(), now));
        }
    }

    /// Drops frames staged before `older_than`.
    fn expire(&mut self, older_than: std::time::Instant) {
        while self.frames.peek_lru().is_some_and(|(_, (_, at))| *at < older_than) {
            self.frames.pop_lru();
        }
    }
}

pub struct PackReader {
    repo: PathBuf,
    files: Mutex<LruCache<PackId, Arc<File>>>,
    /// The same packs opened for direct I/O; `None` where the filesystem
    /// does not allow it (tmpfs), and staging falls back to fadvise.
    direct: Mutex<LruCache<PackId, Option<Arc<File>>>>,
    /// Frames read ahead, by (pack, offset), until a read takes them.
    staged: Mutex<Staged>,
    buffers: Arc<Buffers>,
}

impl PackReader {
    pub fn new(repo: &Path) -> PackReader {
        // The open-files share of packs, split: read-ahead reads few packs
        // at a time (those just ahead of the readers).
        let cap = open_packs_cap();
        let direct = (cap / 4).max(2);
        PackReader {
            repo: repo.to_path_buf(),
            files: Mutex::new(LruCache::new(NonZeroUsize::new(cap - direct).unwrap())),
            direct: Mutex::new(LruCache::new(NonZeroUsize::new(direct).unwrap())),
            staged: Mutex::new(Staged { frames: LruCache::unbounded() }),
            buffers: Arc::new(Buffers::default()),
        }
    }

    fn direct_file(&self, id: PackId) -> Option<Arc<File>> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(f) = self.direct.lock().unwrap().get(&id) {
            return f.clone();
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
            .open(pack_path(&self.repo, id))
            .inspect_err(|e| log::debug!("pack {}: no direct I/O ({e}); read-ahead through the page cache", id.0))
            .ok()
            .map(Arc::new);
        self.direct.lock().unwrap().put(id, f.clone());
        f
    }

    /// Reads `locs` (frames a sequential reader will want next) ahead, each
    /// run of adjacent frames of a pack with one direct read, and keeps
    /// them for [`PackReader::read_block_append`]. Where direct I/O is not
    /// possible, asks the kernel to read them into the page cache instead.
    /// Best effort: a failure here is met again, and reported, by the read.
    pub fn stage(&self, locs: &[FrameLoc]) {
        // Frames already staged (by the read-ahead of another reader of the
        // same blocks, or an overlapping job) are not read directly again:
        // only one reader takes a staged frame, so the kernel reads them
        // into its cache for the others.
        let (fresh, staged): (Vec<FrameLoc>, Vec<FrameLoc>) = {
            let mut st = self.staged.lock().unwrap();
            st.expire(std::time::Instant::now() - STAGED_FOR);
            locs.iter().partition(|l| !st.contains(&(l.pack, l.offset)))
        };
        for run in runs(&staged) {
            self.will_need(run);
        }
        // Short streaks (blocks changed by incrementals, scattered between
        // blocks that come from elsewhere) are left to the kernel, which
        // reads many such at once; a worker reading them one by one made
        // deep chains a third slower. The pieces of a long streak, cut at a
        // pack's end or at the size of one read, are read directly however
        // short: left to the kernel, they were a fortieth of a full
        // backup's blocks, but the FUSE threads read them synchronously
        // when they got there, 0.13-0.40 s of a 1.0-1.15 s cold read.
        let fresh_runs = streaks(&fresh).flat_map(|streak| runs(streak).map(move |run| (run, streak.len())));
        for (run, streak_len) in fresh_runs {
            let (pack, start, end) = (run[0].pack, run[0].offset, frame_end(&run[run.len() - 1]));
            let direct = if streak_len >= DIRECT_MIN_FRAMES { self.direct_file(pack) } else { None };
            let Some(file) = direct else {
                self.will_need(run);
                continue;
            };
            let align = AlignedBuf::ALIGN as u64;
            let from = start / align * align;
            let len = (end - from).next_multiple_of(align) as usize;
            let now = std::time::Instant::now();
            // Over the memory bound (several readers at once, or frames
            // nobody took yet): the kernel reads ahead instead.
            let Some(mut buf) = self.buffers.get(len) else {
                self.will_need(run);
                continue;
            };
            let pending: Pending = Arc::new(OnceLock::new());
            // Readers may be waiting on this run: however this read ends
            // (even by a panic), they are released.
            let _release = Release(pending.clone());
            self.staged.lock().unwrap().put(run.iter().map(|l| (pack, l.offset)), &pending, now);
            let got = read_direct(&file, from, buf.as_mut_slice());
            let read = match got {
                Ok(n) if from + n as u64 >= end => {
                    buf.set_len(n);
                    Some(Arc::new(Run { start: from, buf: Some(buf), asked: len, buffers: self.buffers.clone() }))
                }
                other => {
                    log::debug!("read-ahead of pack {} at {start}: {other:?}; through the page cache instead", pack.0);
                    if matches!(other, Err(ref e) if e.raw_os_error() == Some(nix::libc::EINVAL)) {
                        // The device wants other alignment: no more direct
                        // reads of this pack.
                        self.direct.lock().unwrap().put(pack, None);
                    }
                    self.buffers.put(buf, len);
                    self.will_need(run);
                    None
                }
            };
            let _ = pending.set(read);
        }
    }

    /// The frame at `loc` if it was staged: its run and where in the run's
    /// buffer it lies. Waits for the run if that is still being read. The
    /// frame is handed out once.
    fn take_staged(&self, loc: &FrameLoc) -> Option<(Arc<Run>, std::ops::Range<usize>)> {
        let pending = self.staged.lock().unwrap().take(&(loc.pack, loc.offset))?;
        let run = pending.wait().clone()?;
        let at = (loc.offset - run.start) as usize;
        let frame = at..at + FRAME_HEADER_LEN + loc.stored_len as usize;
        (frame.end <= run.bytes().len()).then_some((run, frame))
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

    /// Asks the kernel to start reading a run of adjacent frames into the
    /// page cache. Best effort: errors are left to the real read.
    fn will_need(&self, run: &[FrameLoc]) {
        use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
        let (start, end) = (run[0].offset, frame_end(&run[run.len() - 1]));
        if let Ok(f) = self.file(run[0].pack) {
            let _ = posix_fadvise(&*f, start as i64, (end - start) as i64, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
        }
    }

    /// Reads a block, checking frame header, checksum and digest prefix.
    pub fn read_block(&self, loc: &FrameLoc, digest: &Digest) -> Result<Vec<u8>, ReadError> {
        if let Some((run, frame)) = self.take_staged(loc) {
            let frame = &run.bytes()[frame];
            return frame::decode(frame, loc.raw_len, loc.stored_len, digest).map_err(|e| self.damaged(loc, e));
        }
        let buf = self.read_frame(loc)?;
        frame::decode(&buf, loc.raw_len, loc.stored_len, digest).map_err(|e| self.damaged(loc, e))
    }

    /// [`PackReader::read_block`] into `out`, exactly the block's length
    /// (on error it holds no block). The frame goes through a buffer
    /// reused by the calling thread, so a sequential read allocates
    /// nothing per block.
    pub fn read_block_into(&self, loc: &FrameLoc, digest: &Digest, out: &mut [u8]) -> Result<(), ReadError> {
        thread_local! {
            static FRAME: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let frame_len = FRAME_HEADER_LEN + loc.stored_len as usize;
        if let Some((run, frame)) = self.take_staged(loc) {
            let frame = &run.bytes()[frame];
            return frame::decode_into(frame, loc.raw_len, loc.stored_len, digest, out).map_err(|e| self.damaged(loc, e));
        }
        FRAME.with_borrow_mut(|buf| {
            buf.resize(frame_len, 0);
            self.read_frame_into(loc, buf)?;
            frame::decode_into(buf, loc.raw_len, loc.stored_len, digest, out).map_err(|e| self.damaged(loc, e))
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

fn frame_end(loc: &FrameLoc) -> u64 {
    loc.offset + FRAME_HEADER_LEN as u64 + loc.stored_len as u64
}

/// Splits `locs` into runs of frames that follow each other in one pack,
/// each at most [`RUN_MAX`] long (a single larger frame is a run of its
/// own).
fn runs(locs: &[FrameLoc]) -> impl Iterator<Item = &[FrameLoc]> {
    let mut rest = locs;
    std::iter::from_fn(move || {
        let first = rest.first()?;
        let mut n = 1;
        while n < rest.len()
            && rest[n].pack == first.pack
            && rest[n].offset == frame_end(&rest[n - 1])
            && frame_end(&rest[n]) - first.offset <= RUN_MAX
        {
            n += 1;
        }
        let (run, tail) = rest.split_at(n);
        rest = tail;
        Some(run)
    })
}

/// Splits `locs` into streaks: frames an ingest wrote one after the other,
/// adjacent in a pack or continuing at the start of the next pack (a full
/// pack is followed by the next one). Whether the frame before is the last
/// of its pack is not known here, so a scattered frame followed by the
/// first of the next pack joins it: at worst one short direct read per
/// pack boundary.
fn streaks(locs: &[FrameLoc]) -> impl Iterator<Item = &[FrameLoc]> {
    let follows = |prev: &FrameLoc, next: &FrameLoc| {
        (next.pack == prev.pack && next.offset == frame_end(prev))
            || (next.pack.0 == prev.pack.0 + 1 && next.offset == PACK_HEADER_LEN as u64)
    };
    let mut rest = locs;
    std::iter::from_fn(move || {
        rest.first()?;
        let n = 1 + rest.windows(2).take_while(|w| follows(&w[0], &w[1])).count();
        let (streak, tail) = rest.split_at(n);
        rest = tail;
        Some(streak)
    })
}

/// Fills `buf` from `offset` of a file opened for direct I/O; returns the
/// bytes read, fewer only at the end of the file.
fn read_direct(file: &File, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64)? {
            0 => break,
            n => done += n,
        }
        // Direct reads stay aligned; a short one is the end of the file.
        if done % AlignedBuf::ALIGN != 0 {
            break;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(pack: i64, offset: u64, stored: u32) -> FrameLoc {
        FrameLoc { pack: PackId(pack), offset, stored_len: stored, raw_len: 65536 }
    }

    #[test]
    fn runs_join_adjacent_frames_of_a_pack_only() {
        let h = FRAME_HEADER_LEN as u64;
        let locs = [
            loc(1, 100, 10),
            loc(1, 110 + h, 20),
            loc(1, 130 + 2 * h, 5),
            loc(2, 135 + 3 * h, 5), // another pack
            loc(2, 10_000, 5),      // a gap
            loc(2, 10_005 + h, 5),
        ];
        let lens: Vec<usize> = runs(&locs).map(|r| r.len()).collect();
        assert_eq!(lens, [3, 1, 2]);
        assert_eq!(runs(&[]).count(), 0);
    }

    #[test]
    fn staged_frames_expire_oldest_first() {
        let mut st = Staged { frames: LruCache::unbounded() };
        let pending: Pending = Arc::new(OnceLock::new());
        let t0 = std::time::Instant::now();
        let later = t0 + std::time::Duration::from_secs(5);
        st.put((0..4u64).map(|i| (PackId(1), i)), &pending, t0);
        st.put((10..12u64).map(|i| (PackId(1), i)), &pending, later);
        st.expire(t0 + std::time::Duration::from_secs(1));
        assert!(!st.contains(&(PackId(1), 0)) && !st.contains(&(PackId(1), 3)));
        assert!(st.contains(&(PackId(1), 10)));
        assert!(st.take(&(PackId(1), 10)).is_some());
        assert!(st.take(&(PackId(1), 10)).is_none(), "a frame is handed out once");
    }

    #[test]
    fn buffers_in_use_stay_bounded() {
        let b = Buffers::default();
        let mut held = Vec::new();
        while let Some(buf) = b.get(LARGE_BUF - 4096) {
            held.push(buf);
            assert!(held.len() <= STAGED_BYTES as usize / LARGE_BUF, "more buffers than the bound allows");
        }
        assert_eq!(held.len(), STAGED_BYTES as usize / LARGE_BUF);
        let live = b.live.load(std::sync::atomic::Ordering::Relaxed);
        assert!(live <= STAGED_BYTES && live + LARGE_BUF as u64 > STAGED_BYTES, "{live} bytes in use");
        // Giving one back makes room again, and it is reused.
        let ptr = held[0].as_slice().as_ptr();
        b.put(held.swap_remove(0), LARGE_BUF - 4096);
        assert_eq!(b.get(LARGE_BUF - 4096).unwrap().as_slice().as_ptr(), ptr);
    }

    #[test]
    fn buffers_are_recycled_by_size() {
        let b = Buffers::default();
        let small = b.get(70_000).unwrap();
        assert_eq!(small.as_slice().len(), 70_000);
        assert!(small.capacity() >= SMALL_BUF);
        let (small_ptr, large) = (small.as_slice().as_ptr(), b.get(SMALL_BUF + 1).unwrap());
        assert!(large.capacity() >= LARGE_BUF);
        b.put(small, 70_000);
        b.put(large, SMALL_BUF + 1);
        assert_eq!(b.live.load(std::sync::atomic::Ordering::Relaxed), 0);
        // The same small buffer comes back for another lone frame.
        assert_eq!(b.get(4096).unwrap().as_slice().as_ptr(), small_ptr);
        assert_eq!(b.large.lock().unwrap().len(), 1);
        // Odd sizes (frames of huge blocks) are not kept; beyond the bound
        // they are not even handed out.
        assert!(b.get(LARGE_BUF * 3).is_none() || STAGED_BYTES as usize >= LARGE_BUF * 3);
        let odd = b.get(LARGE_BUF * 2).unwrap();
        b.put(odd, LARGE_BUF * 2);
        assert_eq!(b.large.lock().unwrap().len(), 1);
        assert_eq!(Buffers::size_for(1), SMALL_BUF);
        assert_eq!(Buffers::size_for(LARGE_BUF), LARGE_BUF);
    }

    #[test]
    fn runs_are_capped() {
        let h = FRAME_HEADER_LEN as u64;
        let stored = 65536u32;
        let step = h + stored as u64;
        let locs: Vec<FrameLoc> = (0..40).map(|i| loc(1, 64 + i * step, stored)).collect();
        let split: Vec<&[FrameLoc]> = runs(&locs).collect();
        assert!(split.len() >= 3, "{} runs", split.len());
        for r in &split {
            assert!(frame_end(&r[r.len() - 1]) - r[0].offset <= RUN_MAX);
        }
        assert_eq!(split.iter().map(|r| r.len()).sum::<usize>(), 40);
        // One frame larger than the cap is still read, alone.
        let big = [loc(1, 0, (RUN_MAX * 2) as u32)];
        assert_eq!(runs(&big).count(), 1);
    }

    #[test]
    fn streaks_continue_into_the_next_pack_only_at_its_start() {
        let h = FRAME_HEADER_LEN as u64;
        let p = PACK_HEADER_LEN as u64;
        let locs = [
            loc(1, 1000, 10),
            loc(1, 1010 + h, 10),
            loc(2, p, 10),          // the next pack, from its start
            loc(2, p + 10 + h, 10), // adjacent
            loc(3, p + 100, 10),    // the next pack, but not its start
            loc(5, p, 10),          // the start of a pack, but not the next
            loc(5, p + 10 + h, 10),
        ];
        let lens: Vec<usize> = streaks(&locs).map(|s| s.len()).collect();
        assert_eq!(lens, [4, 1, 2]);
        assert_eq!(streaks(&[]).count(), 0);
    }

    /// Writes packs `first..` of `frames` frames of random (incompressible)
    /// 64 KiB blocks, `per_pack` frames a pack, as an ingest lays them down.
    fn write_packs(repo: &Path, first: i64, frames: usize, per_pack: usize) -> Vec<(FrameLoc, Digest)> {
        use super::super::writer::PackWriter;
        let mut out = Vec::new();
        let mut x: u64 = 0x2545F4914F6CDD1D;
        for (k, chunk) in (0..frames).collect::<Vec<_>>().chunks(per_pack).enumerate() {
            let id = PackId(first + k as i64);
            let mut w = PackWriter::create(repo, id).unwrap();
            for _ in chunk {
                let raw: Vec<u8> = (0..65536)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                let d = Digest::of(&raw);
                let f = frame::encode(&raw, &d);
                let (stored_len, raw_len) = (f.stored_len, f.raw_len);
                let offset = w.append(f.bytes).unwrap();
                out.push((FrameLoc { pack: id, offset, stored_len, raw_len }, d));
            }
            w.seal().unwrap().publish();
        }
        out
    }

    #[test]
    fn the_piece_of_a_streak_in_the_next_pack_is_staged_too() {
        // In the repository's own directory: direct I/O needs a real file
        // system, and a temporary directory may be on tmpfs.
        let d = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        std::fs::create_dir(d.path().join(crate::format::PACK_DIR)).unwrap();
        // 12 frames: 9 end pack 1, 3 start pack 2.
        let blocks = write_packs(d.path(), 1, 12, 9);
        assert_eq!(blocks[9].0.pack, PackId(2));
        let r = PackReader::new(d.path());
        assert!(r.direct_file(PackId(1)).is_some(), "this test needs a checkout on a file system that allows direct I/O");
        let locs: Vec<FrameLoc> = blocks.iter().map(|(l, _)| *l).collect();
        r.stage(&locs);
        for (l, digest) in &blocks {
            assert!(r.take_staged(l).is_some(), "frame at pack {} offset {} was not staged", l.pack.0, l.offset);
            // Taken once; a read now goes to the pack and still checks out.
            assert_eq!(r.read_block(l, digest).unwrap().len(), 65536);
        }
        // A short streak on its own is left to the kernel.
        let lone = write_packs(d.path(), 10, 3, 9);
        let locs: Vec<FrameLoc> = lone.iter().map(|(l, _)| *l).collect();
        r.stage(&locs);
        assert!(locs.iter().all(|l| r.take_staged(l).is_none()));
    }
}
