//! qcow2 images as sources: `qemu-img info` tells their bitmaps, and a
//! private `qemu-nbd` serves the image (read-only, on a socket in a fresh
//! directory) for as long as the ingest reads it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::nbd::{Addr, NbdUri};

pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// How long qemu-nbd may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// What cbtfs needs to know of a qcow2 image before reading it.
pub struct Qcow2Info {
    path: PathBuf,
    /// Persistent bitmaps: (name, flags such as "auto" and "in-use").
    bitmaps: Vec<(String, Vec<String>)>,
}

impl Qcow2Info {
    pub fn read(path: &Path) -> Result<Qcow2Info, String> {
        let out = Command::new("qemu-img")
            .args(["info", "--output=json", "-f", "qcow2"])
            .arg(crate::qemu_args::file_arg(path))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run qemu-img to read {} ({e}); qcow2 sources need qemu-utils", path.display()))?;
        if !out.status.success() {
            return Err(format!(
                "qemu-img cannot read {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("qemu-img info of {} is not JSON: {e}", path.display()))?;
        let bitmaps = v["format-specific"]["data"]["bitmaps"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|b| {
                        let name = b["name"].as_str()?.to_string();
                        let flags = b["flags"]
                            .as_array()
                            .map(|f| f.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                            .unwrap_or_default();
                        Some((name, flags))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Qcow2Info { path: path.to_path_buf(), bitmaps })
    }

    /// Why bitmap `name` cannot be trusted to hold every change since it
    /// was created, or `None` if it can: it must exist, be enabled (the
    /// `auto` flag: QEMU records writes in it) and have been saved cleanly
    /// (no `in-use` flag, which a QEMU that died leaves behind).
    pub fn bitmap_problem(&self, name: &str) -> Option<String> {
        let shown = self.path.display();
        let Some((_, flags)) = self.bitmaps.iter().find(|(n, _)| n == name) else {
            return Some(format!("{shown} has no dirty bitmap {name}"));
        };
        if flags.iter().any(|f| f == "in-use") {
            return Some(format!(
                "dirty bitmap {name} of {shown} is marked in use (QEMU did not close the image cleanly), so it may lack changes"
            ));
        }
        if !flags.iter().any(|f| f == "auto") {
            return Some(format!("dirty bitmap {name} of {shown} is disabled, so it does not record every change"));
        }
        None
    }
}

/// Why a qemu-nbd did not start; only [`StartError::Exited`] is worth
/// another try with other settings.
enum StartError {
    /// It could not be started: not installed, not executable, or no
    /// place for its socket.
    Spawn(String),
    /// It ran and exited, with its own message.
    Exited(String),
    /// It ran but did not serve in time.
    Timeout(String),
}

impl StartError {
    fn into_message(self) -> String {
        match self {
            StartError::Spawn(m) | StartError::Exited(m) | StartError::Timeout(m) => m,
        }
    }
}

/// A qemu-nbd child serving one image; stopped and cleaned up on drop.
pub struct QemuNbd {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

/// The export name cbtfs gives the image.
const EXPORT: &str = "disk";

impl QemuNbd {
    /// Serves `image`, read with direct I/O (`--cache=none --aio=native`)
    /// where its file system allows, through the page cache otherwise.
    /// Through the page cache, qemu-nbd's copies cost the ingest as much
    /// system time again as its own work: a full ingest of the benchmark
    /// image as qcow2 took 3.96-5.15 s, and 3.28-3.66 s with direct I/O,
    /// in turn.
    pub fn start(image: &Path, bitmap: Option<&str>) -> Result<QemuNbd, String> {
        match Self::start_with(image, bitmap, true) {
            Ok(server) => Ok(server),
            // Some file systems refuse O_DIRECT (ramfs, some network and
            // FUSE file systems): qemu-nbd then exits at once. Any other
            // reason it exited comes back the same way below. A qemu-nbd
            // that cannot be run, or does not answer, is not retried.
            Err(StartError::Exited(e)) => {
                log::debug!("qemu-nbd with direct I/O: {e}; trying through the page cache");
                Self::start_with(image, bitmap, false).map_err(StartError::into_message)
            }
            Err(e) => Err(e.into_message()),
        }
    }

    fn start_with(image: &Path, bitmap: Option<&str>, direct: bool) -> Result<QemuNbd, StartError> {
        let dir = private_dir().map_err(|e| StartError::Spawn(format!("cannot create a directory for qemu-nbd's socket: {e}")))?;
        let socket = dir.join("nbd.sock");
        let Some(qemu_nbd) = in_path("qemu-nbd") else {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(StartError::Spawn("cannot run qemu-nbd (not found on PATH); qcow2 sources need qemu-utils".into()));
        };
        // Through setpriv(1), with a parent-death signal: qemu-nbd then
        // ends with cbtfs even when cbtfs is killed and its destructors do
        // not run; left running, it would keep the image open and locked.
        // Sources are opened on the thread that runs the ingest, which
        // outlives them. Without a setpriv that has the option (util-linux
        // before 2.33), qemu-nbd is run directly.
        let mut cmd = match setpriv_with_pdeathsig() {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"]).arg(&qemu_nbd);
                c
            }
            None => Command::new(&qemu_nbd),
        };
        // --persistent: it must not exit when the start-up probe below
        // disconnects; it is stopped on drop.
        cmd.args(["--read-only", "--persistent", "--format=qcow2", "--shared=2", "--export-name", EXPORT, "--socket"])
            .arg(&socket);
        if direct {
            cmd.args(["--cache=none", "--aio=native"]);
        }
        if let Some(b) = bitmap {
            cmd.arg("--bitmap").arg(b);
        }
        cmd.arg(crate::qemu_args::file_arg(image)).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(StartError::Spawn(format!("cannot run qemu-nbd ({e}); qcow2 sources need qemu-utils")));
            }
        };
        let mut server = QemuNbd { child, dir, socket };
        let started = Instant::now();
        // The socket may listen before qemu-nbd has opened the image (and
        // it may then fail to): wait until a connection gets the server's
        // greeting, which it sends only once it serves.
        while !greets(&server.socket) {
            if let Ok(Some(status)) = server.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = server.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return Err(StartError::Exited(format!(
                    "qemu-nbd could not serve {} ({status}): {}",
                    image.display(),
                    err.trim()
                )));
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(StartError::Timeout(format!(
                    "qemu-nbd did not start serving {} within {START_TIMEOUT:?}",
                    image.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(server)
    }

    pub fn uri(&self) -> NbdUri {
        NbdUri { addr: Addr::Unix(self.socket.clone()), export: EXPORT.to_string() }
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether an NBD server on `socket` accepts a connection and greets it
/// ("NBDMAGIC") within a moment.
fn greets(socket: &Path) -> bool {
    use std::io::Read;
    let Ok(mut conn) = std::os::unix::net::UnixStream::connect(socket) else { return false };
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut magic = [0u8; 8];
    conn.read_exact(&mut magic).is_ok() && &magic == b"NBDMAGIC"
}

/// setpriv(1), if it is on `PATH` and knows `--pdeathsig`; asked once.
fn setpriv_with_pdeathsig() -> Option<PathBuf> {
    static FOUND: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            let setpriv = in_path("setpriv")?;
            let help = Command::new(&setpriv).arg("--help").stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
            String::from_utf8_lossy(&help.stdout).contains("--pdeathsig").then_some(setpriv)
        })
        .clone()
}

/// Removes the socket directories (`cbtfs-nbd-PID-N`) in `base` whose
/// process is gone: a killed ingest cannot remove its own, and its
/// qemu-nbd ends with it. Best effort; others' directories are not ours
/// to remove and fail quietly.
fn remove_dead_dirs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("cbtfs-nbd-")).and_then(|r| r.split('-').next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if crate::process::gone(pid) {
            log::debug!("removing {}, left by a process that no longer runs", e.path().display());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The executable `name` in the first directory of `PATH` that has it.
fn in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// A new directory only this user can enter, under the temporary directory.
/// Those of processes that no longer run (killed ingests) are removed
/// first.
fn private_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    remove_dead_dirs(&base);
    for n in 0..1000u32 {
        let d = base.join(format!("cbtfs-nbd-{}-{n}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&d) {
            Ok(()) => return Ok(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free name"))
}
