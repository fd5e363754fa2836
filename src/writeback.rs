//! Writeback started while a large file is being written, not at its fsync.
//!
//! Left alone, the kernel starts writing dirty pages back only once a tenth
//! of memory is dirty (`vm.dirty_background_ratio`), or when they are 30
//! seconds old. On a machine with memory to spare, a program that writes a
//! gigabyte and then fsyncs it writes nothing to the disk until the fsync,
//! and then all of it, long after its reads have finished: the two never
//! overlap. Asking for writeback every few megabytes makes them overlap.
//! `POSIX_FADV_DONTNEED` starts writeback of the dirty pages of a range and
//! drops its clean ones. A range is asked for just after it was written,
//! when nearly all its pages are still dirty, so they mostly stay cached:
//! this starts the writes early; it does not keep the page cache free.

use std::fs::File;
use std::ops::Range;

/// Bytes written between two requests: large enough that requests cost
/// nothing next to the writes, small enough to keep the disk busy.
pub const STEP: u64 = 16 << 20;

/// How far writeback of one file has been asked for, for a writer whose
/// offsets only grow (a pack appended to, an image exported in order).
pub struct Writeback {
    /// Writeback has been asked for up to here.
    asked: u64,
    /// Bytes written since then.
    pending: u64,
}

impl Writeback {
    /// For a file written from `start` on.
    pub fn new(start: u64) -> Writeback {
        Writeback { asked: start, pending: 0 }
    }

    /// Notes `bytes` more written to `file`, all of them before `end`, and
    /// asks the kernel to start writing back once [`STEP`] bytes have been
    /// written since the last request. Best effort: a failed request only
    /// leaves the writing to the fsync.
    pub fn wrote(&mut self, file: &File, bytes: u64, end: u64) {
        use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
        if let Some(r) = self.due(bytes, end) {
            let _ = posix_fadvise(file, r.start as i64, (r.end - r.start) as i64, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
        }
    }

    /// The range to ask for now, if one is due.
    fn due(&mut self, bytes: u64, end: u64) -> Option<Range<u64>> {
        self.pending += bytes;
        if self.pending < STEP || end <= self.asked {
            return None;
        }
        let r = self.asked..end;
        (self.asked, self.pending) = (end, 0);
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Write;
    use std::process::Command;

    const MIB: u64 = 1 << 20;

    #[test]
    fn asks_for_each_stretch_once_after_a_step_of_data() {
        let mut wb = Writeback::new(4096);
        // 1 MiB pieces of data, each followed by a 1 MiB hole (an export
        // skips zeros): a request once 16 MiB of data are written.
        let mut asked = Vec::new();
        for i in 0..40u64 {
            let end = 4096 + (2 * i + 1) * MIB;
            if let Some(r) = wb.due(MIB, end) {
                asked.push((i, r));
            }
        }
        assert_eq!(
            asked,
            vec![(15, 4096..4096 + 31 * MIB), (31, 4096 + 31 * MIB..4096 + 63 * MIB)],
            "from where writing started, one range after another, each after 16 MiB of data"
        );
        // Data without any new offset (nothing past what was asked): nothing.
        assert_eq!(wb.due(STEP, 4096 + 63 * MIB), None);
    }

    /// On ext4, the blocks of a file written and not yet flushed are only
    /// reserved ("delalloc" in `filefrag -v`) until writeback runs. Left to
    /// the kernel, that takes 30 seconds here; asked for, a moment.
    #[test]
    fn writeback_runs_before_any_fsync() {
        // In the checkout, which is on a disk (a temporary directory may be
        // tmpfs, where nothing is ever written back).
        let d = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = d.path().join("file");
        let mut f = File::create(&path).unwrap();
        let mut wb = Writeback::new(0);
        let piece: Vec<u8> = (0..MIB).map(|i| (i * 31 % 251) as u8).collect();
        // The last piece completes a step: writeback of all 16 MiB is asked.
        for i in 1..=STEP / MIB {
            f.write_all(&piece).unwrap();
            wb.wrote(&f, MIB, i * MIB);
        }
        let delalloc = || {
            let out = Command::new("filefrag").arg("-v").arg(&path).output().expect("filefrag (e2fsprogs) runs");
            assert!(out.status.success(), "filefrag: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).contains("delalloc")
        };
        let t = std::time::Instant::now();
        while delalloc() && t.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(!delalloc(), "the first 16 MiB are still waiting for writeback after 10 s");
    }
}
