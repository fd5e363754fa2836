//! Appends frames to a pack file, a new one or the newest one while it is
//! below the target size, and seals it with fsync. What an ingest wrote is
//! undone when its guard drops unpublished (not referenced by a committed
//! index transaction): a pack it created is deleted, a pack it appended to
//! is cut back to its committed length. So a failed ingest leaves nothing
//! behind; a killed one leaves a file with no index row, or bytes past the
//! length the index records, which the next writer removes.
//!
//! Writing happens on a thread of the writer's own, so the ingest can hash
//! and compress the next batch while the kernel copies this one: offsets
//! are computed here from frame lengths, and a write error surfaces at the
//! latest in [`PackWriter::seal`], before anything is committed.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use crate::format::{PACK_HEADER_LEN, PACK_MAGIC};
use crate::ids::PackId;
use crate::writeback::Writeback;

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
    undo: Undo,
}

/// How to take back what a writer added, if its ingest does not commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Undo {
    /// The writer created the pack: delete it.
    Delete,
    /// The pack was committed at this length before: truncate to it.
    Truncate(u64),
}

impl Undo {
    fn apply(self, path: &std::path::Path) {
        let res = match self {
            Undo::Delete => std::fs::remove_file(path),
            Undo::Truncate(len) => OpenOptions::new().write(true).open(path).and_then(|f| f.set_len(len)),
        };
        if let Err(e) = res {
            // The next writer retries: it deletes unknown packs and cuts
            // the newest back to its committed length.
            log::warn!("cannot undo uncommitted writes to {}: {e}", path.display());
        }
    }
}

/// Writes frames in order, from `start`, on a thread of its own; returns
/// the file. Writeback starts as it goes (see `writeback`): left to the
/// kernel, a full backup's whole pack waited for the final fsync, a
/// quarter of the ingest time on the benchmark machine.
fn spawn_writer(
    file: File,
    start: u64,
    header: Option<[u8; PACK_HEADER_LEN]>,
) -> (SyncSender<Vec<u8>>, JoinHandle<std::io::Result<File>>) {
    let (tx, rx) = sync_channel::<Vec<u8>>(QUEUED_FRAMES);
    let thread = std::thread::spawn(move || {
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut written = start;
        let mut writeback = Writeback::new(start);
        if let Some(h) = header {
            out.write_all(&h)?;
            written += h.len() as u64;
        }
        for frame in rx {
            out.write_all(&frame)?;
            written += frame.len() as u64;
            // Up to what the buffer has passed on to the file.
            writeback.wrote(out.get_ref(), frame.len() as u64, written - out.buffer().len() as u64);
        }
        out.into_inner().map_err(|e| e.into_error())
    });
    (tx, thread)
}

impl PackWriter {
    /// Creates pack `id`; fails if the file already exists.
    pub fn create(repo: &std::path::Path, id: PackId) -> std::io::Result<PackWriter> {
        let path = pack_path(repo, id);
        let file = OpenOptions::new().write(true).create_new(true).open(&path)?;
        let mut header = [0u8; PACK_HEADER_LEN];
        header[..8].copy_from_slice(&PACK_MAGIC);
        header[8..16].copy_from_slice(&id.0.to_le_bytes());
        let (tx, thread) = spawn_writer(file, 0, Some(header));
        Ok(PackWriter { id, path, tx: Some(tx), thread: Some(thread), len: PACK_HEADER_LEN as u64, undo: Undo::Delete })
    }

    /// Reopens pack `id`, committed at `committed_len` bytes, to append to
    /// it. Bytes past that length are the uncommitted writes of an
    /// interrupted ingest and are cut off first. Fails, changing nothing,
    /// if the header is not this pack's or the file is shorter than the
    /// index says (damage for `verify` to report, not a place to write).
    pub fn append_to(repo: &std::path::Path, id: PackId, committed_len: u64) -> std::io::Result<PackWriter> {
        let path = pack_path(repo, id);
        let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
        let mut header = [0u8; PACK_HEADER_LEN];
        file.read_exact_at(&mut header, 0)?;
        if header[..8] != PACK_MAGIC || header[8..16] != id.0.to_le_bytes() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "pack header does not name this pack"));
        }
        let actual = file.metadata()?.len();
        if actual < committed_len || committed_len < PACK_HEADER_LEN as u64 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("pack is {actual} bytes, shorter than the {committed_len} the index records"),
            ));
        }
        if actual > committed_len {
            log::info!("cutting {} uncommitted bytes off pack {}", actual - committed_len, path.display());
            file.set_len(committed_len)?;
        }
        file.seek(SeekFrom::Start(committed_len))?;
        let (tx, thread) = spawn_writer(file, committed_len, None);
        Ok(PackWriter { id, path, tx: Some(tx), thread: Some(thread), len: committed_len, undo: Undo::Truncate(committed_len) })
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

    /// Waits for every frame to be written, then fsyncs the pack (and, for
    /// a new pack, its directory). The returned guard undoes the writes on
    /// drop unless [`SealedPack::publish`] was called.
    pub fn seal(mut self) -> std::io::Result<SealedPack> {
        let file = self.join()?;
        file.sync_all()?;
        if self.undo == Undo::Delete
            && let Some(dir) = self.path.parent()
        {
            // A new file's name must be durable too.
            File::open(dir)?.sync_all()?;
        }
        Ok(SealedPack { id: self.id, path: std::mem::take(&mut self.path), len: self.len, undo: self.undo, published: false })
    }
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.join();
        }
        if !self.path.as_os_str().is_empty() {
            // Not sealed: an aborted ingest; its writes must not stay.
            self.undo.apply(&self.path);
        }
    }
}

/// A fully written and synced pack awaiting the index commit.
pub struct SealedPack {
    pub id: PackId,
    pub path: PathBuf,
    pub len: u64,
    undo: Undo,
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
            self.undo.apply(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join(crate::format::PACK_DIR)).unwrap();
        d
    }

    fn file_len(repo: &std::path::Path, id: PackId) -> u64 {
        std::fs::metadata(pack_path(repo, id)).unwrap().len()
    }

    /// A committed pack of one 100-byte frame.
    fn committed(repo: &std::path::Path, id: PackId) -> u64 {
        let mut w = PackWriter::create(repo, id).unwrap();
        assert_eq!(w.append(vec![7u8; 100]).unwrap(), PACK_HEADER_LEN as u64);
        let sealed = w.seal().unwrap();
        let len = sealed.len;
        sealed.publish();
        len
    }

    #[test]
    fn unpublished_new_pack_is_deleted() {
        let d = repo();
        let mut w = PackWriter::create(d.path(), PackId(1)).unwrap();
        w.append(vec![1u8; 10]).unwrap();
        drop(w.seal().unwrap());
        assert!(!pack_path(d.path(), PackId(1)).exists());
    }

    #[test]
    fn append_continues_at_the_committed_end_and_undo_cuts_back() {
        let d = repo();
        let id = PackId(3);
        let len = committed(d.path(), id);
        assert_eq!(len, PACK_HEADER_LEN as u64 + 100);

        // Appended, sealed, not published: cut back, first frame intact.
        let mut w = PackWriter::append_to(d.path(), id, len).unwrap();
        assert_eq!(w.append(vec![9u8; 50]).unwrap(), len);
        drop(w.seal().unwrap());
        assert_eq!(file_len(d.path(), id), len);

        // Appended and dropped unsealed (a failed ingest): the same.
        let mut w = PackWriter::append_to(d.path(), id, len).unwrap();
        w.append(vec![9u8; 50]).unwrap();
        drop(w);
        assert_eq!(file_len(d.path(), id), len);

        // Published: kept.
        let mut w = PackWriter::append_to(d.path(), id, len).unwrap();
        w.append(vec![5u8; 50]).unwrap();
        let s = w.seal().unwrap();
        assert_eq!(s.len, len + 50);
        s.publish();
        let bytes = std::fs::read(pack_path(d.path(), id)).unwrap();
        assert_eq!(&bytes[..8], &PACK_MAGIC);
        assert!(bytes[PACK_HEADER_LEN..PACK_HEADER_LEN + 100].iter().all(|&b| b == 7));
        assert!(bytes[PACK_HEADER_LEN + 100..].iter().all(|&b| b == 5));
    }

    #[test]
    fn append_cuts_off_what_a_killed_ingest_left() {
        let d = repo();
        let id = PackId(4);
        let len = committed(d.path(), id);
        // A killed ingest's bytes past the committed end.
        let f = OpenOptions::new().append(true).open(pack_path(d.path(), id)).unwrap();
        (&f).write_all(&[0xEE; 4000]).unwrap();
        let mut w = PackWriter::append_to(d.path(), id, len).unwrap();
        assert_eq!(w.append(vec![1u8; 10]).unwrap(), len, "new frames start at the committed end");
        w.seal().unwrap().publish();
        assert_eq!(file_len(d.path(), id), len + 10);
    }

    #[test]
    fn append_refuses_a_pack_that_is_not_as_recorded() {
        let d = repo();
        let len = committed(d.path(), PackId(5));
        // Shorter than the index says: damage, never written to.
        assert!(PackWriter::append_to(d.path(), PackId(5), len + 1).is_err());
        assert_eq!(file_len(d.path(), PackId(5)), len);
        // A header naming another pack.
        std::fs::copy(pack_path(d.path(), PackId(5)), pack_path(d.path(), PackId(6))).unwrap();
        assert!(PackWriter::append_to(d.path(), PackId(6), len).is_err());
        assert_eq!(file_len(d.path(), PackId(6)), len);
    }
}
