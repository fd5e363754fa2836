//! Read-ahead of pack data for sequential reads of an image.
//!
//! The kernel's read-ahead ends at the FUSE file: it asks for the next
//! megabyte of the image, and the image reader then fetches that
//! megabyte's blocks one after the other, each from where its newest
//! version lies. In a long chain of small incrementals those are scattered
//! over many places in the packs, each a synchronous disk read when cold:
//! cold reads of a 1000-point chain ran at half the speed of a one-point
//! chain although every lookup cost the same.
//!
//! So a few workers look up the blocks just ahead of a sequential reader
//! and have their frames fetched before the reader gets there (see
//! `PackReader::stage`): long runs of frames are read into buffers of the
//! pack reader's own, bounded in size, and scattered frames are left to the
//! kernel (`POSIX_FADV_WILLNEED`), many reads in flight at once. Nothing is
//! decompressed here, and a prefetch that fails or is dropped only costs
//! speed: the reader still checks every frame.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, Weak};

use crate::ids::LineageId;
use crate::image::Store;

/// How far ahead of a sequential reader to start pack reads: a few
/// milliseconds of reading at full speed, enough to hide the latency of
/// dozens of scattered reads.
pub const WINDOW: u64 = 16 << 20;
/// Bytes of the image per job, so that several workers share a window.
const JOB_BYTES: u64 = 1 << 20;
/// A read starting this close to where the previous one ended counts as
/// sequential: the kernel issues read-ahead requests slightly out of order.
const SLACK: u64 = 4 << 20;
/// Jobs waiting at most; more are dropped (read-ahead is only a hint).
const QUEUE: usize = 64;

/// One stretch of blocks of one point to prefetch.
pub struct Job {
    pub lineage: LineageId,
    pub seq: i64,
    pub blocks: Range<u64>,
}

/// The shared worker pool of a mount.
pub struct ReadAhead {
    tx: SyncSender<Job>,
}

impl ReadAhead {
    /// Starts `workers` threads serving `store`. They hold it weakly and
    /// end when it is dropped (its sender goes with it).
    pub fn spawn(store: Weak<Store>, workers: usize) -> ReadAhead {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers {
            let (rx, store) = (rx.clone(), store.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("cbtfs-readahead-{i}"))
                .spawn(move || work(&rx, &store));
            if let Err(e) = spawned {
                log::info!("cannot start read-ahead worker: {e}; reads will be slower");
            }
        }
        ReadAhead { tx }
    }

    /// Queues `job` unless the queue is full.
    pub fn request(&self, job: Job) {
        match self.tx.try_send(job) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn work(rx: &Mutex<Receiver<Job>>, store: &Weak<Store>) {
    loop {
        let job = rx.lock().unwrap().recv();
        let Ok(job) = job else { return };
        let Some(store) = store.upgrade() else { return };
        if let Err(e) = store.prefetch(job.lineage, job.seq, job.blocks) {
            log::debug!("read-ahead failed: {e}");
        }
    }
}

/// Tells sequential reads of one open image from random ones, and how far
/// ahead of them read-ahead has been asked for.
#[derive(Default)]
pub struct Stream {
    last_end: AtomicU64,
    ahead_until: AtomicU64,
}

impl Stream {
    /// For a read of `offset..end` of an image of `size` bytes: the byte
    /// range to read ahead, if the read is sequential and the window ahead
    /// of it lacks at least one job's worth.
    ///
    /// The range is claimed with a compare-and-swap, so FUSE threads
    /// serving neighbouring reads at once never both ask for it. (After a
    /// start-over, an earlier stretch that resumes may ask again for what
    /// it had asked: only a hint repeated.) A window
    /// left far ahead by an earlier stretch of reads (a file system on the
    /// image reads in many places) does not hold back a new stretch
    /// behind it: read-ahead starts over from the new one.
    pub fn advance(&self, offset: u64, end: u64, size: u64) -> Option<Range<u64>> {
        let last = self.last_end.swap(end, Ordering::Relaxed);
        if offset.abs_diff(last) > SLACK {
            return None;
        }
        let target = end.saturating_add(WINDOW).min(size);
        let mut asked = self.ahead_until.load(Ordering::Relaxed);
        loop {
            // Reads arrive out of order: a window up to another window
            // beyond this read's own is still this stretch's.
            let from = if asked > target.saturating_add(WINDOW) { end } else { asked.max(end) };
            if target <= from || (target < from.saturating_add(JOB_BYTES) && target < size) {
                return None;
            }
            match self.ahead_until.compare_exchange_weak(asked, target, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(from..target),
                Err(now) => asked = now,
            }
        }
    }
}

/// Splits a byte range into jobs over whole blocks.
pub fn jobs(lineage: LineageId, seq: i64, bytes: Range<u64>, block_size: u32) -> impl Iterator<Item = Job> {
    let bs = block_size as u64;
    let (first, end) = (bytes.start / bs, bytes.end.div_ceil(bs));
    let per_job = (JOB_BYTES / bs).max(1);
    (first..end).step_by(per_job as usize).map(move |b| Job { lineage, seq, blocks: b..(b + per_job).min(end) })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::AtomicBool;

    const MIB: u64 = 1 << 20;

    #[test]
    fn sequential_reads_ask_once_per_job_ahead() {
        let s = Stream::default();
        let size = 1 << 30;
        assert_eq!(s.advance(0, MIB, size), Some(MIB..MIB + WINDOW));
        // The window is still full: nothing new.
        assert_eq!(s.advance(MIB, MIB + 512 * 1024, size), None);
        // One more megabyte read: one more megabyte ahead.
        assert_eq!(s.advance(MIB + 512 * 1024, 2 * MIB, size), Some(MIB + WINDOW..2 * MIB + WINDOW));
    }

    #[test]
    fn random_reads_ask_for_nothing() {
        let s = Stream::default();
        let size = 1 << 30;
        assert!(s.advance(0, 4096, size).is_some());
        assert_eq!(s.advance(500 * MIB, 500 * MIB + 4096, size), None);
        assert_eq!(s.advance(100 * MIB, 100 * MIB + 4096, size), None);
    }

    #[test]
    fn window_stops_at_the_end_of_the_image() {
        let s = Stream::default();
        let size = 3 * MIB;
        assert_eq!(s.advance(0, MIB, size), Some(MIB..size));
        assert_eq!(s.advance(MIB, 2 * MIB, size), None);
        assert_eq!(s.advance(2 * MIB, size, size), None);
    }

    #[test]
    fn a_new_stretch_behind_the_window_gets_read_ahead() {
        let s = Stream::default();
        let size = 1 << 30;
        for i in 899..=902 {
            s.advance(i * MIB, (i + 1) * MIB, size);
        }
        // A file system on the image now reads a file lower down.
        assert_eq!(s.advance(100 * MIB, 101 * MIB, size), None, "a jump is not sequential yet");
        assert_eq!(s.advance(101 * MIB, 102 * MIB, size), Some(102 * MIB..102 * MIB + WINDOW));
        assert_eq!(s.advance(102 * MIB, 103 * MIB, size), Some(102 * MIB + WINDOW..103 * MIB + WINDOW));
    }

    #[test]
    fn concurrent_readers_never_ask_for_a_range_twice() {
        let size = 1 << 30;
        for round in 0..100 {
            let s = Stream::default();
            let asked = Mutex::new(Vec::new());
            // Two threads take the next megabyte in turn, as two FUSE
            // threads serve the kernel's read-ahead requests, at most two
            // in flight (a thread waits for the one before last to finish).
            let next = AtomicU64::new(0);
            let finished: Vec<AtomicBool> = (0..400).map(|_| AtomicBool::new(false)).collect();
            std::thread::scope(|sc| {
                for _ in 0..2 {
                    let (s, asked, next, finished) = (&s, &asked, &next, &finished);
                    sc.spawn(move || {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= 400 {
                                return;
                            }
                            while i >= 2 && !finished[i as usize - 2].load(Ordering::Acquire) {
                                std::thread::yield_now();
                            }
                            if let Some(r) = s.advance(i * MIB, (i + 1) * MIB, size) {
                                asked.lock().unwrap().push(r);
                            }
                            finished[i as usize].store(true, Ordering::Release);
                        }
                    });
                }
            });
            let mut asked = asked.into_inner().unwrap();
            asked.sort_by_key(|r| r.start);
            for w in asked.windows(2) {
                assert!(w[0].end <= w[1].start, "round {round}: {:?} and {:?} overlap", w[0], w[1]);
            }
            assert!(asked.last().is_some_and(|r| r.end >= 400 * MIB), "round {round}: read-ahead fell behind");
        }
    }

    #[test]
    fn jobs_cover_whole_blocks() {
        let js: Vec<_> = jobs(LineageId(1), 5, 100..(3 * MIB + 1), 65536).map(|j| j.blocks).collect();
        assert_eq!(js, vec![0..16, 16..32, 32..48, 48..49]);
    }
}
