//! Disk sources: raw image files and block devices, read with positional
//! reads. Allocation comes from SEEK_DATA/SEEK_HOLE, so a sparse file's
//! holes are never read; where the kernel cannot tell (block devices, some
//! filesystems), everything counts as data and zero blocks are detected by
//! content instead.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::unistd::{Whence, lseek};

use crate::error::{Error, Result};
use crate::ranges::RangeSet;

pub struct Source {
    pub path: PathBuf,
    file: File,
    pub size: u64,
}

impl Source {
    pub fn open(disk: &str, path: &Path) -> Result<Source> {
        let file = File::open(path).map_err(|e| {
            Error::Input(format!("disk {disk}: cannot open source {}: {e}", path.display()))
        })?;
        let meta = file.metadata().map_err(|e| {
            Error::Input(format!("disk {disk}: cannot stat source {}: {e}", path.display()))
        })?;
        let ft = meta.file_type();
        if !(ft.is_file() || ft.is_block_device()) {
            return Err(Error::Input(format!(
                "disk {disk}: source {} is not a regular file or a block device",
                path.display()
            )));
        }
        let mut f = &file;
        let size = f.seek(SeekFrom::End(0)).map_err(|e| {
            Error::Input(format!("disk {disk}: cannot size source {}: {e}", path.display()))
        })?;
        // Fail now, not halfway through the ingest, if reads are refused.
        let mut probe = [0u8; 1];
        if size > 0 {
            file.read_exact_at(&mut probe, 0).map_err(|e| {
                Error::Input(format!("disk {disk}: cannot read source {}: {e}", path.display()))
            })?;
        }
        Ok(Source { path: path.to_path_buf(), file, size })
    }

    pub fn try_clone(&self) -> Result<File> {
        self.file
            .try_clone()
            .map_err(|e| Error::io(format!("cannot reopen {}", self.path.display()), e))
    }

    /// Byte ranges that may hold data. Holes are certainly zero.
    pub fn allocated(&self) -> Result<RangeSet> {
        let whole = RangeSet::single(0..self.size);
        let mut runs = Vec::new();
        let mut pos: i64 = 0;
        let size = self.size as i64;
        while pos < size {
            // None: the kernel cannot tell data from holes here.
            let Some(data) = self.seek(pos, Whence::SeekData)? else { return Ok(whole) };
            if data >= size {
                break;
            }
            let Some(hole) = self.seek(data, Whence::SeekHole)? else { return Ok(whole) };
            let hole = hole.min(size);
            if hole <= data {
                // A filesystem answering nonsense: be safe, read it all.
                return Ok(whole);
            }
            runs.push(data as u64..hole as u64);
            pos = hole;
        }
        Ok(RangeSet::from_ranges(runs))
    }
}

impl Source {
    /// One SEEK_DATA/SEEK_HOLE step. ENXIO (no more data after `pos`) maps
    /// to the end of the file; `None` means the call is unsupported here.
    fn seek(&self, pos: i64, whence: Whence) -> Result<Option<i64>> {
        match lseek(&self.file, pos, whence) {
            Ok(p) => Ok(Some(p)),
            Err(Errno::ENXIO) => Ok(Some(self.size as i64)),
            Err(Errno::EINVAL) | Err(Errno::EOPNOTSUPP) => Ok(None),
            Err(e) => Err(Error::io(format!("cannot map allocation of {}", self.path.display()), e.into())),
        }
    }
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
    use std::io::Write;

    #[test]
    fn sparse_file_allocation_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk");
        let f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 8 << 20).unwrap();
        f.write_all_at(&[2u8; 4096], 32 << 20).unwrap();
        (&f).flush().unwrap();
        f.sync_all().unwrap();
        let s = Source::open("sda", &p).unwrap();
        assert_eq!(s.size, 64 << 20);
        let a = s.allocated().unwrap();
        assert!(a.len() < 8 << 20, "holes must not count as data: {a:?}");
        for at in [8u64 << 20, 32 << 20] {
            assert!(a.runs().iter().any(|r| r.contains(&at)), "{at} not found in {a:?}");
        }
    }

    #[test]
    fn missing_and_wrong_sources_are_input_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(Source::open("sda", &dir.path().join("nope")), Err(Error::Input(_))));
        assert!(matches!(Source::open("sda", dir.path()), Err(Error::Input(_))));
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
