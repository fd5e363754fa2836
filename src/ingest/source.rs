//! Disk sources: raw image files and block devices, read with positional
//! reads; NBD exports; and qcow2 images, served to cbtfs by a `qemu-nbd`
//! it starts and stops itself.
//!
//! Allocation comes from SEEK_DATA/SEEK_HOLE for files and from the
//! `base:allocation` context for NBD, so holes are never read; where
//! neither can tell, everything counts as data and zero blocks are
//! detected by content instead. Changed blocks can come from a QEMU dirty
//! bitmap (`qemu:dirty-bitmap:NAME`) of an NBD export or a qcow2 image.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::ops::Range;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::unistd::{Whence, lseek};

pub use crate::aligned::AlignedBuf;
use crate::error::{Error, Result};
use crate::nbd::{NbdClient, NbdUri, proto};
use crate::ranges::RangeSet;

mod qemu;

pub struct Source {
    /// What the user named: a path, or an NBD URI.
    pub path: PathBuf,
    pub size: u64,
    backend: Backend,
    /// The dirty bitmap asked for: its dirty byte ranges, or why it cannot
    /// be used (then the disk is scanned).
    pub bitmap: Option<std::result::Result<RangeSet, String>>,
}

enum Backend {
    File(File),
    Nbd {
        client: Arc<Mutex<NbdClient>>,
        /// The qemu-nbd serving a qcow2 image, stopped on drop.
        _server: Option<qemu::QemuNbd>,
    },
}

/// The metadata context of dirty bitmap `name`.
pub fn bitmap_context(name: &str) -> String {
    format!("qemu:dirty-bitmap:{name}")
}

const ALLOCATION: &str = "base:allocation";

/// What a source file or block device holds, where the user says so
/// (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// The disk's bytes as they are.
    Raw,
    /// A qcow2 image, read through qemu-nbd.
    Qcow2,
}

impl SourceFormat {
    pub fn parse(s: &str) -> Option<SourceFormat> {
        match s {
            "raw" => Some(SourceFormat::Raw),
            "qcow2" => Some(SourceFormat::Qcow2),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SourceFormat::Raw => "raw",
            SourceFormat::Qcow2 => "qcow2",
        }
    }
}

impl Source {
    /// Opens the source of `disk`: an NBD URI, a qcow2 image or a raw
    /// image or block device; with `bitmap`, also finds that dirty
    /// bitmap's changed ranges (qcow2 and NBD sources only). `format`
    /// says which a file or block device is; without it, a file is taken
    /// for qcow2 only when it starts like one and its name ends in
    /// `.qcow2`. The first bytes alone do not tell: a raw disk's are
    /// written by its guest, which could make it start like a qcow2 image
    /// naming any file on this machine as its backing file, and a guest
    /// that keeps a qcow2 image on a whole disk of its own does so
    /// innocently. Either would be backed up as that image's disk instead
    /// of the disk itself.
    pub fn open(disk: &str, spec: &Path, bitmap: Option<&str>, format: Option<SourceFormat>) -> Result<Source> {
        let text = spec.to_string_lossy();
        if NbdUri::looks_like(&text) {
            if let Some(f) = format {
                return Err(Error::Input(format!(
                    "disk {disk}: --format {disk}={} is for files and block devices; an NBD export serves the disk itself",
                    f.as_str()
                )));
            }
            let uri = NbdUri::parse(&text).map_err(|e| Error::Input(format!("disk {disk}: {e}")))?;
            return Source::open_nbd(disk, spec, &uri, bitmap, None);
        }
        let not_a_disk = || {
            Error::Input(format!("disk {disk}: source {} is not a regular file or a block device", spec.display()))
        };
        let is_disk = |ft: std::fs::FileType| ft.is_file() || ft.is_block_device();
        // Checked before opening too: opening a named pipe waits for a
        // writer (holding the repository's lock meanwhile), and opening
        // some devices acts (a tape rewinds).
        if std::fs::metadata(spec).is_ok_and(|m| !is_disk(m.file_type())) {
            return Err(not_a_disk());
        }
        let file = File::open(spec).map_err(|e| {
            Error::Input(format!("disk {disk}: cannot open source {}: {e}", spec.display()))
        })?;
        let meta = file.metadata().map_err(|e| {
            Error::Input(format!("disk {disk}: cannot stat source {}: {e}", spec.display()))
        })?;
        let ft = meta.file_type();
        if !is_disk(ft) {
            return Err(not_a_disk());
        }
        let mut f = &file;
        let size = f.seek(SeekFrom::End(0)).map_err(|e| {
            Error::Input(format!("disk {disk}: cannot size source {}: {e}", spec.display()))
        })?;
        // Fail now, not halfway through the ingest, if reads are refused.
        let mut magic = [0u8; 4];
        if size > 0 {
            let n = (size as usize).min(4);
            file.read_exact_at(&mut magic[..n], 0).map_err(|e| {
                Error::Input(format!("disk {disk}: cannot read source {}: {e}", spec.display()))
            })?;
        }
        let named_qcow2 = spec.extension().is_some_and(|e| e.eq_ignore_ascii_case("qcow2"));
        let qcow2 = match format {
            Some(f) => f == SourceFormat::Qcow2,
            None if magic != qemu::QCOW2_MAGIC => false,
            None if ft.is_file() && named_qcow2 => true,
            None => {
                return Err(Error::Input(format!(
                    "disk {disk}: {} starts like a qcow2 image, but a raw disk's first bytes are its guest's to write; say which it is: --format {disk}=qcow2 to back up the image's disk, or --format {disk}=raw to back up its bytes as they are",
                    spec.display()
                )));
            }
        };
        if qcow2 {
            drop(file);
            return Source::open_qcow2(disk, spec, bitmap);
        }
        if let Some(b) = bitmap {
            return Err(Error::Input(format!(
                "disk {disk}: --bitmap {b} needs a qcow2 image or an NBD export as source, and {} is a raw image; give a --changes map instead",
                spec.display()
            )));
        }
        Ok(Source { path: spec.to_path_buf(), size, backend: Backend::File(file), bitmap: None })
    }

    fn open_qcow2(disk: &str, path: &Path, bitmap: Option<&str>) -> Result<Source> {
        let info = qemu::Qcow2Info::read(path).map_err(|e| Error::Input(format!("disk {disk}: {e}")))?;
        // Export the bitmap only if it can be trusted; say why not otherwise.
        let (export_bitmap, unusable) = match bitmap {
            None => (None, None),
            Some(b) => match info.bitmap_problem(b) {
                None => (Some(b), None),
                Some(why) => (None, Some(why)),
            },
        };
        let server = qemu::QemuNbd::start(path, export_bitmap).map_err(|e| Error::Input(format!("disk {disk}: {e}")))?;
        let uri = server.uri();
        let mut src = Source::open_nbd(disk, path, &uri, export_bitmap, Some(server))?;
        if let Some(why) = unusable {
            src.bitmap = Some(Err(why));
        }
        Ok(src)
    }

    fn open_nbd(
        disk: &str,
        shown: &Path,
        uri: &NbdUri,
        bitmap: Option<&str>,
        server: Option<qemu::QemuNbd>,
    ) -> Result<Source> {
        let nbd_err = |e: crate::nbd::NbdError| Error::Input(format!("disk {disk}: {e}"));
        let mut contexts = vec![ALLOCATION.to_string()];
        if let Some(b) = bitmap {
            contexts.push(bitmap_context(b));
        }
        let mut client = NbdClient::connect(uri, &contexts).map_err(nbd_err)?;
        let bitmap = match bitmap {
            None => None,
            Some(b) => Some(match client.context(&bitmap_context(b)) {
                None => Err(format!("the NBD export has no dirty bitmap {b}")),
                Some(ctx) => Ok(RangeSet::from_ranges(
                    client.ranges_where(ctx, |f| f & proto::STATE_DIRTY != 0).map_err(nbd_err)?,
                )),
            }),
        };
        Ok(Source {
            path: shown.to_path_buf(),
            size: client.size(),
            backend: Backend::Nbd { client: Arc::new(Mutex::new(client)), _server: server },
            bitmap,
        })
    }

    /// A reader of this source; files are read with direct I/O where the
    /// kernel allows it (see [`SourceReader`]).
    pub fn reader(&self) -> Result<SourceReader> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let file = match &self.backend {
            Backend::File(f) => f,
            Backend::Nbd { client, .. } => {
                return Ok(SourceReader { inner: Inner::Nbd(client.clone()), size: self.size });
            }
        };
        let buffered = file.try_clone().map_err(|e| Error::io(format!("cannot reopen {}", self.path.display()), e))?;
        // The same open file, not the same path: the path may have been
        // replaced since it was opened.
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
            .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .inspect_err(|e| log::debug!("no direct I/O on {}: {e}", self.path.display()))
            .ok();
        Ok(SourceReader { inner: Inner::File { buffered, direct }, size: self.size })
    }

    /// Byte ranges that may hold data. Holes are certainly zero.
    pub fn allocated(&self) -> Result<RangeSet> {
        self.allocated_in(&RangeSet::single(0..self.size))
    }

    /// Byte ranges within `within` that may hold data; holes are certainly
    /// zero. For a file this costs two seeks per run of data found inside
    /// `within`, so an incremental maps the allocation only where its map
    /// says the disk changed, not across the whole disk: a 1 TiB image in
    /// 100,000 extents took 0.24 s per no-change incremental when every
    /// incremental mapped all of it.
    pub fn allocated_in(&self, within: &RangeSet) -> Result<RangeSet> {
        let within = within.intersect(&RangeSet::single(0..self.size));
        match &self.backend {
            Backend::File(f) => self.allocated_file(f, &within),
            Backend::Nbd { client, .. } => {
                let mut c = client.lock().unwrap();
                let Some(ctx) = c.context(ALLOCATION) else { return Ok(within) };
                // Anything not known to read as zeros may hold data (a
                // hole without the zero flag can read from a backing file).
                let runs = c
                    .ranges_where_in(ctx, &status_windows(&within), |f| f & proto::STATE_ZERO == 0)
                    .map_err(|e| Error::Input(format!("cannot map allocation of {}: {e}", self.path.display())))?;
                Ok(RangeSet::from_ranges(runs).intersect(&within))
            }
        }
    }

    fn allocated_file(&self, file: &File, within: &RangeSet) -> Result<RangeSet> {
        let mut runs: Vec<Range<u64>> = Vec::new();
        for r in within.runs() {
            let end = r.end as i64;
            let mut pos = r.start as i64;
            while pos < end {
                // None: the kernel cannot tell data from holes here.
                let Some(data) = self.seek(file, pos, Whence::SeekData)? else { return Ok(within.clone()) };
                if data >= end {
                    break;
                }
                let Some(hole) = self.seek(file, data, Whence::SeekHole)? else { return Ok(within.clone()) };
                if hole <= data {
                    // A filesystem answering nonsense: be safe, read it all.
                    return Ok(within.clone());
                }
                let hole = hole.min(end);
                runs.push(data as u64..hole as u64);
                pos = hole;
            }
        }
        Ok(RangeSet::from_ranges(runs))
    }
}

impl Source {
    /// One SEEK_DATA/SEEK_HOLE step. ENXIO (no more data after `pos`) maps
    /// to the end of the file; `None` means the call is unsupported here.
    fn seek(&self, file: &File, pos: i64, whence: Whence) -> Result<Option<i64>> {
        match lseek(file, pos, whence) {
            Ok(p) => Ok(Some(p)),
            Err(Errno::ENXIO) => Ok(Some(self.size as i64)),
            Err(Errno::EINVAL) | Err(Errno::EOPNOTSUPP) => Ok(None),
            Err(e) => Err(Error::io(format!("cannot map allocation of {}", self.path.display()), e.into())),
        }
    }
}

/// Gaps between byte ranges below which an NBD allocation query covers
/// both ranges and the gap in one request: a request costs a round trip
/// to the server, a few more extents in its reply cost next to nothing.
const STATUS_GAP: u64 = 64 << 20;

/// The stretches of an NBD export to ask for the allocation of `within`:
/// its runs, joined where they lie less than [`STATUS_GAP`] apart. A full
/// asks about the whole disk in one stretch; an incremental about the
/// places its map or bitmap names, not the whole disk.
fn status_windows(within: &RangeSet) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for r in within.runs() {
        match out.last_mut() {
            Some(last) if r.start - last.end < STATUS_GAP => last.end = r.end,
            _ => out.push(r.clone()),
        }
    }
    out
}

/// Reads a source in large batches. Direct I/O (O_DIRECT) lets the device
/// write straight into the batch buffer: copying from the page cache was a
/// third of a full ingest's CPU time, and a backup has no use for keeping
/// the disk in the page cache (it would only evict the guests' data).
/// Falls back to buffered reads where direct I/O is refused.
pub struct SourceReader {
    inner: Inner,
    size: u64,
}

enum Inner {
    File { buffered: File, direct: Option<File> },
    /// One connection, shared by the reader threads in turn.
    Nbd(Arc<Mutex<NbdClient>>),
}

impl SourceReader {
    /// Fills `buf` from `offset`, zero-filled past the end of the source.
    /// With direct I/O, `buf` and `offset` must be aligned to
    /// [`AlignedBuf::ALIGN`], as the batches are.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match &self.inner {
            Inner::File { buffered, direct } => {
                if let Some(d) = direct {
                    match read_direct(d, offset, self.size, buf) {
                        Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
                            log::debug!("direct read refused ({e}); reading through the page cache");
                        }
                        other => return other,
                    }
                }
                read_padded(buffered, offset, self.size, buf)
            }
            Inner::Nbd(client) => {
                let avail = self.size.saturating_sub(offset).min(buf.len() as u64) as usize;
                client.lock().unwrap().read(offset, &mut buf[..avail]).map_err(std::io::Error::other)?;
                buf[avail..].fill(0);
                Ok(())
            }
        }
    }

    pub fn is_direct(&self) -> bool {
        matches!(&self.inner, Inner::File { direct: Some(_), .. })
    }
}

/// [`read_padded`] for an O_DIRECT file: whole aligned lengths are asked
/// for, and a short read is accepted only past the end of the source.
fn read_direct(file: &File, offset: u64, size: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let avail = size.saturating_sub(offset).min(buf.len() as u64) as usize;
    let want = avail.next_multiple_of(AlignedBuf::ALIGN).min(buf.len());
    let mut done = 0;
    while done < avail {
        let n = file.read_at(&mut buf[done..want], offset + done as u64)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "source ended early"));
        }
        done += n;
    }
    buf[avail..].fill(0);
    Ok(())
}

/// Reads `buf.len()` bytes at `offset`, zero-filling past `size` (the last
/// block of a disk whose size is not a multiple of the block size).
pub fn read_padded(file: &File, offset: u64, size: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let avail = size.saturating_sub(offset).min(buf.len() as u64) as usize;
    file.read_exact_at(&mut buf[..avail], offset)?;
    buf[avail..].fill(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ranges closer than the gap share a window; farther ones do not.
    #[test]
    fn status_windows_join_near_ranges_only() {
        const M: u64 = 1 << 20;
        assert!(status_windows(&RangeSet::new()).is_empty());
        let within = RangeSet::from_ranges(vec![0..M, 10 * M..11 * M, 11 * M + 4096..12 * M, 200 * M..201 * M]);
        assert_eq!(status_windows(&within), vec![0..12 * M, 200 * M..201 * M]);
        // Exactly the gap apart: two windows.
        let within = RangeSet::from_ranges(vec![0..M, M + STATUS_GAP..2 * M + STATUS_GAP]);
        assert_eq!(status_windows(&within), vec![0..M, M + STATUS_GAP..2 * M + STATUS_GAP]);
    }

    /// A 64 MiB sparse disk in `dir` with `len` bytes of data at each of
    /// `at`, opened as a source.
    fn sparse_source(dir: &Path, len: usize, at: &[u64]) -> Source {
        let p = dir.join("disk");
        let f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        for (i, &off) in at.iter().enumerate() {
            f.write_all_at(&vec![i as u8 + 1; len], off).unwrap();
        }
        f.sync_all().unwrap();
        Source::open("sda", &p, None, None).unwrap()
    }

    #[test]
    fn sparse_file_allocation_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let s = sparse_source(dir.path(), 4096, &[8 << 20, 32 << 20]);
        assert_eq!(s.size, 64 << 20);
        let a = s.allocated().unwrap();
        assert!(a.len() < 8 << 20, "holes must not count as data: {a:?}");
        for at in [8u64 << 20, 32 << 20] {
            assert!(a.runs().iter().any(|r| r.contains(&at)), "{at} not found in {a:?}");
        }
    }

    /// Mapping only part of a disk finds exactly the data inside that
    /// part, cut at its edges, and what the whole map holds there.
    #[test]
    fn allocation_within_ranges_matches_the_whole_map() {
        let dir = tempfile::tempdir().unwrap();
        let s = sparse_source(dir.path(), 256 << 10, &[1 << 20, 9 << 20, 20 << 20, 40 << 20, 63 << 20]);
        let whole = s.allocated().unwrap();
        let within = RangeSet::from_ranges([
            // The first piece whole, with holes on both sides.
            0..(2 << 20),
            // Inside the second piece.
            (9 << 20) + (64 << 10)..(9 << 20) + (128 << 10),
            // A hole that ends where the third piece begins.
            (10 << 20)..(20 << 20),
            // From inside the fourth piece into the hole after it.
            (40 << 20) + (128 << 10)..(50 << 20),
            // The last piece, and on past the end of the disk.
            (63 << 20)..(80 << 20),
        ]);
        let part = s.allocated_in(&within).unwrap();
        let clipped = within.intersect(&RangeSet::single(0..(64 << 20)));
        assert_eq!(part, whole.intersect(&clipped), "whole map {whole:?}");
        assert!(part.runs().iter().any(|r| r.contains(&((9 << 20) + (64 << 10)))));
        assert!(!part.runs().iter().any(|r| r.contains(&(20 << 20))), "the third piece lies outside: {part:?}");
        assert!(part.runs().iter().all(|r| r.end <= 64 << 20), "nothing past the end: {part:?}");
        assert!(s.allocated_in(&RangeSet::single((30 << 20)..(31 << 20))).unwrap().is_empty(), "a hole has no data");
    }

    #[test]
    fn missing_and_wrong_sources_are_input_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(Source::open("sda", &dir.path().join("nope"), None, None), Err(Error::Input(_))));
        assert!(matches!(Source::open("sda", dir.path(), None, None), Err(Error::Input(_))));
    }

    #[test]
    fn direct_reads_match_buffered_reads() {
        // In the build tree, not under /tmp, which may be tmpfs (no direct
        // I/O there).
        let base = concat!(env!("CARGO_MANIFEST_DIR"), "/target");
        std::fs::create_dir_all(base).unwrap();
        let dir = tempfile::tempdir_in(base).unwrap();
        let p = dir.path().join("disk");
        // An odd size: the last block is partial.
        let data: Vec<u8> = (0..(3 * 65536 + 1000)).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let src = Source::open("sda", &p, None, None).unwrap();
        let r = src.reader().unwrap();
        assert!(r.is_direct(), "ext4 and xfs allow direct I/O");
        let mut buf = AlignedBuf::new(2 * 65536);
        assert_eq!(buf.as_slice().as_ptr().align_offset(AlignedBuf::ALIGN), 0);
        r.read(0, buf.as_mut_slice()).unwrap();
        assert_eq!(buf.as_slice(), &data[..2 * 65536]);
        buf.as_mut_slice().fill(9);
        r.read(2 * 65536, buf.as_mut_slice()).unwrap();
        assert_eq!(&buf.as_slice()[..65536 + 1000], &data[2 * 65536..]);
        assert!(buf.as_slice()[65536 + 1000..].iter().all(|&b| b == 0), "zero past the end");
        buf.set_len(65536);
        r.read(3 * 65536, buf.as_mut_slice()).unwrap();
        assert_eq!(&buf.as_slice()[..1000], &data[3 * 65536..]);
        assert!(buf.as_slice()[1000..].iter().all(|&b| b == 0));
    }

    #[test]
    fn padded_reads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk");
        std::fs::write(&p, [7u8; 100]).unwrap();
        let f = File::open(&p).unwrap();
        let mut buf = [9u8; 64];
        read_padded(&f, 64, 100, &mut buf).unwrap();
        assert_eq!(&buf[..36], &[7u8; 36]);
        assert_eq!(&buf[36..], &[0u8; 28]);
    }
}
