//! `export`: one disk of one restore point written out as a file, for
//! restoring to new hardware or booting elsewhere: a sparse raw image
//! (holes where the disk is zero), or a qcow2 image made from it by
//! `qemu-img convert`. The file appears whole or not at all: it is written
//! under a temporary name next to the target, fsynced, then renamed.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;

use crate::error::{Error, Result};
use crate::image::ImageReader;
use crate::writeback::Writeback;
use crate::zeros::is_zero;

/// Bytes read and written per step.
const CHUNK: usize = 4 << 20;
/// All-zero pieces of this size are left as holes: the smallest block
/// size a repository may have and the usual filesystem block, so zero
/// blocks of any repository cost no space in the export.
const HOLE_GRAIN: usize = 4 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Exported {
    pub size: u64,
    /// Bytes written as data; the rest of the disk is holes.
    pub data_bytes: u64,
}

/// The directory `out` is to be written in.
fn dir_of(out: &Path) -> &Path {
    out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// The name of an export's temporary file of kind `what` for `out`, but
/// for the process number that ends it. The target's name is shortened
/// in it where needed, so that a name near the file system's limit (255
/// bytes) still has a temporary one.
fn temp_prefix(out: &Path, what: &str) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let name = out.file_name().map(OsStrExt::as_bytes).unwrap_or_default();
    let mut temp = b".".to_vec();
    temp.extend_from_slice(&name[..name.len().min(200)]);
    temp.extend_from_slice(format!(".{what}-").as_bytes());
    temp
}

/// A path in the same directory as `out`, for writing before the rename.
fn temp_beside(out: &Path, what: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let mut temp = temp_prefix(out, what);
    temp.extend_from_slice(std::process::id().to_string().as_bytes());
    out.with_file_name(std::ffi::OsString::from_vec(temp))
}

/// Removes the temporary files earlier exports to `out` left when they
/// were ended at once (a second Ctrl-C, SIGKILL, a crash), each as large
/// as the disk's data: those of [`temp_beside`] whose process no longer
/// runs. A process that runs under that number, perhaps another export
/// to the same name, keeps its file.
fn remove_stale_temps(out: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(entries) = std::fs::read_dir(dir_of(out)) else { return };
    let prefixes = ["raw", "qcow2"].map(|what| temp_prefix(out, what));
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = prefixes.iter().find_map(|p| {
            let rest = name.as_bytes().strip_prefix(p.as_slice())?;
            let digits = std::str::from_utf8(rest).ok().filter(|d| d.bytes().all(|b| b.is_ascii_digit()))?;
            digits.parse::<u32>().ok()
        }) else {
            continue;
        };
        if crate::process::gone(pid) {
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => log::info!("removed {}, left by an export that was ended at once", path.display()),
                Err(e) => log::warn!("cannot remove {}, left by an earlier export: {e}", path.display()),
            }
        }
    }
}

/// Removes a path on drop unless disarmed.
struct Cleanup(Option<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// How far an export is, for progress display.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// The image read up to `done` of `total` bytes (and queued for
    /// writing, a few chunks ahead of the writes; holes are skipped).
    Copied { done: u64, total: u64 },
    /// The raw file is being converted to qcow2 (by qemu-img).
    Converting,
}

/// Refuses an output path that exists (an export never replaces a file),
/// or that could not be created: checked before the copy, which may take
/// long, rather than at its end.
pub fn check_output(out: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileTypeExt;
    let shown = out.display();
    // Followed through symlinks: disks are named by /dev/disk/by-id links.
    match std::fs::metadata(out) {
        Ok(m) if m.file_type().is_block_device() => {
            return Err(Error::Input(format!(
                "{shown} is a block device; export writes a new file. To restore onto a disk, \
                 copy the image from `cbtfs mount`: dd if=MOUNT/MACHINE/POINT/DISK.img of={shown} bs=4M conv=fsync"
            )));
        }
        Ok(m) if m.is_dir() => {
            return Err(Error::Input(format!("{shown} is a directory; name the file to write in it")));
        }
        _ => {}
    }
    if out.symlink_metadata().is_ok() {
        return Err(Error::Input(format!("{shown} exists; remove it or choose another name")));
    }
    let bytes = out.as_os_str().as_bytes();
    if bytes.ends_with(b"/") || out.file_name().is_none() {
        return Err(Error::Input(format!("{shown} is not a file name; name the file to write")));
    }
    let dir = dir_of(out);
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::Input(format!("{} is not a directory", dir.display()))),
        Err(e) => Err(Error::io(format!("cannot write to directory {}", dir.display()), e)),
    }
}

/// Writes `img` to `out` (which must not exist) in `format`, reporting
/// each [`Step`] to `progress`. A qcow2 export first writes a sparse raw
/// file beside `out` (as much space as the disk's data), then converts it.
///
/// Once `stop` is set (by a signal handler: a user giving up on a long
/// export), the export ends with an error and removes what it wrote: a
/// cancelled restore must not leave a hidden file as large as the disk's
/// data on the target disk.
pub fn export(
    img: &ImageReader,
    out: &Path,
    format: Format,
    stop: &AtomicBool,
    mut progress: impl FnMut(Step),
) -> Result<Exported> {
    let stopped = || {
        if stop.load(Ordering::Relaxed) {
            return Err(Error::Input(format!("export to {} interrupted; nothing was written", out.display())));
        }
        Ok(())
    };
    check_output(out)?;
    let size = img.size();
    if format == Format::Qcow2 && !size.is_multiple_of(512) {
        return Err(Error::Input(format!(
            "the disk is {size} bytes, not a whole number of 512-byte sectors, which a qcow2 image cannot hold; \
             export it as raw"
        )));
    }
    remove_stale_temps(out);
    let raw_path = temp_beside(out, "raw");
    let cleanup = Cleanup(Some(raw_path.clone()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&raw_path)
        .map_err(|e| Error::io(format!("cannot create {}", raw_path.display()), e))?;
    // Writing copies every byte into the page cache, costing about as much
    // as reading it out of the packs; a thread of its own overlaps the two.
    // Buffers written go back to the reader, which reads over their old
    // content (a new buffer would be zeroed first, for every 4 MiB). The
    // disk writes overlap the reads too (see `writeback`): left to the
    // kernel, they all waited for the final fsync.
    let (tx, rx) = sync_channel::<(u64, Vec<u8>, usize)>(2);
    let (back_tx, back_rx) = sync_channel::<Vec<u8>>(4);
    let writer = std::thread::spawn(move || -> std::io::Result<(File, u64)> {
        let mut data_bytes = 0;
        let mut writeback = Writeback::new(0);
        for (offset, data, len) in rx {
            let n = write_nonzero(&file, offset, &data[..len])?;
            data_bytes += n;
            writeback.wrote(&file, n, offset + len as u64);
            let _ = back_tx.try_send(data);
        }
        Ok((file, data_bytes))
    });
    // Only the data: holes in the point are found in the index, not read
    // as zeros (a mostly empty terabyte disk exports in its data's time).
    let read = (|| -> Result<()> {
        let mut offset = 0;
        while let Some(start) = img.seek_data(offset)? {
            let end = img.seek_hole(start)?.unwrap_or(size);
            let mut at = start;
            while at < end {
                stopped()?;
                let mut data = back_rx.try_recv().unwrap_or_default();
                let len = img.read_into(at, CHUNK.min((end - at) as usize), &mut data)?;
                if len == 0 {
                    break;
                }
                if tx.send((at, data, len)).is_err() {
                    // The writer failed; its error is reported below.
                    return Ok(());
                }
                at += len as u64;
                progress(Step::Copied { done: at, total: size });
            }
            offset = end;
        }
        progress(Step::Copied { done: size, total: size });
        Ok(())
    })();
    drop(tx);
    let written = writer.join().unwrap_or_else(|_| Err(std::io::Error::other("export writer thread panicked")));
    read?;
    let (file, data_bytes) = written.map_err(|e| Error::io(format!("cannot write {}", raw_path.display()), e))?;
    let stats = Exported { size, data_bytes };
    stopped()?;
    file.set_len(size).map_err(|e| Error::io(format!("cannot size {}", raw_path.display()), e))?;
    file.sync_all().map_err(|e| Error::io(format!("cannot sync {}", raw_path.display()), e))?;
    drop(file);
    stopped()?;
    match format {
        Format::Raw => publish(&raw_path, out)?,
        Format::Qcow2 => {
            progress(Step::Converting);
            let q = temp_beside(out, "qcow2");
            let _q_cleanup = Cleanup(Some(q.clone()));
            let mut child = Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "qcow2"])
                .arg(crate::qemu_args::file_arg(&raw_path))
                .arg(crate::qemu_args::file_arg(&q))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| Error::Input(format!("cannot run qemu-img ({e}); qcow2 export needs qemu-utils")))?;
            // Waited for in steps, so that a stop (which a Ctrl-C on the
            // terminal also sends qemu-img, but SIGTERM does not) ends it.
            let status = loop {
                if let Some(st) = child.try_wait().map_err(|e| Error::io("cannot wait for qemu-img", e))? {
                    break st;
                }
                if stop.load(Ordering::Relaxed) {
                    let _ = child.kill();
                    let _ = child.wait();
                    stopped()?;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            };
            if !status.success() {
                stopped()?;
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return Err(Error::Input(format!("qemu-img convert failed: {}", err.trim())));
            }
            stopped()?;
            File::open(&q).and_then(|f| f.sync_all()).map_err(|e| Error::io(format!("cannot sync {}", q.display()), e))?;
            publish(&q, out)?;
        }
    }
    // `cleanup` removes the raw file a qcow2 export was made from.
    drop(cleanup);
    Ok(stats)
}

/// Writes the runs of `data` (which starts at `offset`) that are not all
/// zeros; zero stretches stay holes. Pieces are tested on the file's
/// [`HOLE_GRAIN`] grid, whatever `offset` is (a partition may start off
/// it), so that a hole covers whole file system blocks. Returns the bytes
/// written.
fn write_nonzero(file: &File, offset: u64, data: &[u8]) -> std::io::Result<u64> {
    let grain = HOLE_GRAIN as u64;
    let mut written = 0;
    let mut write = |from: usize, to: usize| -> std::io::Result<()> {
        file.write_all_at(&data[from..to], offset + from as u64)?;
        written += (to - from) as u64;
        Ok(())
    };
    let mut run: Option<usize> = None;
    let mut at = 0;
    while at < data.len() {
        let end = (((offset + at as u64) / grain + 1) * grain - offset).min(data.len() as u64) as usize;
        match (is_zero(&data[at..end]), run) {
            (false, None) => run = Some(at),
            (true, Some(from)) => {
                write(from, at)?;
                run = None;
            }
            _ => {}
        }
        at = end;
    }
    if let Some(from) = run {
        write(from, data.len())?;
    }
    Ok(written)
}

/// Renames `tmp` to `out` without replacing anything that appeared there
/// meanwhile, and makes the rename durable. The disks restores are written
/// to vary: FAT and exFAT (USB disks) have no hard links, some network
/// file systems no `RENAME_NOREPLACE`.
fn publish(tmp: &Path, out: &Path) -> Result<()> {
    use nix::errno::Errno;
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    let err = |e| Error::io(format!("cannot create {}", out.display()), e);
    match renameat2(AT_FDCWD, tmp, AT_FDCWD, out, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => {}
        Err(Errno::EINVAL | Errno::ENOSYS) => match std::fs::hard_link(tmp, out) {
            Ok(()) => {
                let _ = std::fs::remove_file(tmp);
            }
            Err(e) if matches!(e.raw_os_error(), Some(nix::libc::EPERM | nix::libc::EOPNOTSUPP | nix::libc::ENOSYS)) => {
                // Neither: only a plain rename is left, which would replace
                // a file made since the export checked; check again.
                if out.symlink_metadata().is_ok() {
                    return Err(err(std::io::Error::from(std::io::ErrorKind::AlreadyExists)));
                }
                std::fs::rename(tmp, out).map_err(err)?;
            }
            Err(e) => return Err(err(e)),
        },
        Err(e) => return Err(err(e.into())),
    }
    let dir = dir_of(out);
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(format!("cannot sync {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data starting off the grid (a partition at sector 1): the zero
    /// pieces between the data are whole grains of the file, left as holes.
    #[test]
    fn zero_pieces_follow_the_files_grid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.raw");
        let file = File::create(&path).unwrap();
        let offset = 512u64;
        let mut data = vec![0u8; 12800 - 512];
        data[600 - 512] = 1; // in the file's first grain
        data[12300 - 512] = 2; // in its last, partial one
        let written = write_nonzero(&file, offset, &data).unwrap();
        // The first grain from 512 and the last from 12288: two grains'
        // worth, rather than two of the data's own 4 KiB pieces.
        assert_eq!(written, (4096 - 512) + (12800 - 12288));
        let back = std::fs::read(&path).unwrap();
        assert_eq!(&back[512..], &data[..]);
        use nix::unistd::{Whence, lseek};
        assert_eq!(lseek(&file, 4096, Whence::SeekHole).unwrap(), 4096, "the grains between stay holes");
        assert_eq!(lseek(&file, 4096, Whence::SeekData).unwrap(), 12288);
    }
}
