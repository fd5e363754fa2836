//! The command line: one module per subcommand, each an Args struct and
//! its `run`. User-facing messages go to stdout/stderr here; diagnostics go
//! through `log` (RUST_LOG).

/// `println!` for a command's output: see [`out`]. Evaluates to an
/// `io::Result`, to be `?`-ed.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::out(format_args!($($arg)*))
    };
}

pub mod docs;
pub mod export;
pub mod forget;
pub mod gc;
pub mod ingest;
pub mod init;
pub mod list;
pub mod mount;
pub mod progress;
pub mod protect;
pub mod stats;
pub mod verify;

use std::sync::atomic::{AtomicBool, Ordering};

use clap::{ArgAction, Parser, Subcommand};

static QUIET: AtomicBool = AtomicBool::new(false);

/// `--quiet` was given: no progress bars, no warnings or notes.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Writes a line of a command's output to stdout.
///
/// A reader that has gone away (`cbtfs list | head -1`, `grep -q`) is no
/// failure of the command: what it did is done, so the rest of the output
/// is dropped and its exit code stands (`println!` would panic with exit
/// code 101). Any other failure to write, such as a full disk under a
/// redirect, is an error.
pub fn out(line: std::fmt::Arguments) -> std::io::Result<()> {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{line}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

pub fn set_quiet(q: bool) {
    QUIET.store(q, Ordering::Relaxed);
}

/// A warning for the user on stderr, unless `--quiet`.
pub fn warn(msg: impl std::fmt::Display) {
    if !quiet() {
        eprintln!("warning: {msg}");
    }
}

/// Exit codes are part of the interface (see the man page).
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const DAMAGE: u8 = 3;
    pub const BUSY: u8 = 4;
}

#[derive(Parser, Debug)]
#[command(name = "cbtfs", version, about = "Changed-block-tracking backups of VM disk images, mounted as full images through FUSE",
    after_help = "Exit codes: 0 success, 1 error, 2 usage error, 3 verify found damage, 4 repository busy.",
    after_long_help = EXAMPLES)]
pub struct Cli {
    /// More diagnostics on stderr: -v info, -vv debug, -vvv trace (RUST_LOG, if set, decides instead)
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
    /// No progress bars, warnings or notes; errors and results only
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The log filter for env_logger when RUST_LOG is not set. fuser warns
    /// when the kernel side is already gone after `umount`, which is the
    /// normal way to stop a mount: keep only its errors unless asked.
    pub fn log_filter(&self) -> &'static str {
        match (self.quiet, self.verbose) {
            (true, _) => "error",
            (false, 0) => "warn,fuser=error",
            (false, 1) => "info,fuser=warn",
            (false, 2) => "debug,fuser=info",
            (false, _) => "trace",
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new repository
    Init(init::Args),
    /// Add a restore point (full, by changed-block map, or by full scan)
    Ingest(ingest::Args),
    /// List machines, restore points and disks
    List(list::Args),
    /// Serve every restore point as a disk image through read-only FUSE
    #[command(long_about = MOUNT_ABOUT)]
    Mount(mount::Args),
    /// Re-read every stored block and check it
    Verify(verify::Args),
    /// Remove restore points, by name or by a keep policy (no data is rewritten)
    Forget(forget::Args),
    /// Reclaim the space of blocks no restore point uses
    Gc(gc::Args),
    /// Protect a restore point from forget, or lift the protection
    Protect(protect::Args),
    /// Sizes, dedup and compression ratios, garbage
    Stats(stats::Args),
    /// Write one disk of a restore point to a file (sparse raw, or qcow2)
    Export(export::Args),
    /// Write the man pages and shell completions (for packagers)
    #[command(hide = true)]
    GenerateDocs(docs::Args),
}

const EXAMPLES: &str = "\
Exit codes: 0 success; 1 error (bad input, missing source, I/O failure), nothing changed; \
2 usage error; 3 verify found damage; 4 repository busy (another writer; for forget and gc, a mount or verify; \
for mount, verify and export, a forget or gc).

Examples:
  cbtfs init /backup/repo
  cbtfs ingest /backup/repo web01 --disk sda=/dev/vg/web01-snap --checkpoint cp-001
  cbtfs ingest /backup/repo web01 --disk sda=/dev/vg/web01-snap --changes sda=changes.json --since cp-001 --checkpoint cp-002
  cbtfs ingest /backup/repo web01 --disk sda=vm.qcow2 --bitmap sda=cp-002 --checkpoint cp-003
  cbtfs mount /backup/repo /mnt/backups &
  mount -o loop,ro,noload /mnt/backups/web01/latest/sda.img /mnt/restore
  cbtfs forget /backup/repo web01 --keep-daily 14 --keep-weekly 8 && cbtfs gc /backup/repo";

const MOUNT_ABOUT: &str = "\
Serve every restore point as a disk image through read-only FUSE.

The tree: MACHINE/POINT/DISK.img for each disk of each point (a full image,
assembled from the chain); MACHINE/POINT/DISK-partN.img for each partition N of
a disk with an MBR or GPT partition table, numbered as Linux numbers them
(logical partitions from 5); MACHINE/latest, a symlink to the newest point.
Points ingested while the mount runs appear without remounting.
Disk images report the bytes that hold data as their allocated size and
answer SEEK_DATA and SEEK_HOLE, so `cp` and `qemu-img convert` copy a point
as a sparse file and read only its data. Partition files answer the seeks
and report at most the whole disk's data as allocated: `cp` copies a
partition of a mostly empty disk sparsely, one holding most of the data whole.

Restore files with `mount -o loop,ro` on an image or partition (add `noload`
for ext3/ext4 and `norecovery` for XFS taken from a running machine); boot a VM
from a point with a qcow2 overlay whose backing file is the point's image.";

/// A command's result: Ok(exit code) or an error for main to print.
pub type Outcome = anyhow::Result<u8>;
