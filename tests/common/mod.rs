//! Shared utilities of the cbtfs integration tests.
//!
//! The tests run the real `cbtfs` binary, mount real FUSE filesystems and
//! real loop devices, and therefore need root, `/dev/fuse`, `fusermount3`,
//! `mkfs.ext4` and util-linux `mount`/`umount`.
//!
//! Every function that mounts something returns a guard whose `Drop`
//! unmounts it, so that a failing (panicking) test leaves nothing mounted.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;
pub const GIB: u64 = 1024 * 1024 * 1024;

/// errno of an I/O error (EIO).
pub const EIO: i32 = 5;

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cbtfs")
}

/// Result of one run of the binary.
#[derive(Debug, Clone)]
pub struct Out {
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    fn from_output(args: Vec<String>, o: Output) -> Out {
        Out {
            args,
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Human readable description used in assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "cbtfs {:?}\n  exit: {:?}\n  stdout: {}\n  stderr: {}",
            self.args,
            self.code,
            truncate_for_msg(&self.stdout),
            truncate_for_msg(&self.stderr)
        )
    }

    /// Asserts exit status 0 and returns self.
    #[track_caller]
    pub fn ok(self) -> Out {
        assert_eq!(self.code, Some(0), "command failed:\n{}", self.describe());
        self
    }

    /// Asserts the given exit code and returns self.
    #[track_caller]
    pub fn code_is(self, code: i32) -> Out {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit code:\n{}",
            self.describe()
        );
        self
    }

    pub fn stdout_json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("stdout is not JSON ({e}):\n{}", self.describe())
        })
    }

    /// True when stderr contains a warning naming `disk` and "full scan".
    pub fn warns_full_scan(&self, disk: &str) -> bool {
        self.stderr
            .lines()
            .any(|l| l.contains("full scan") && l.contains(disk))
    }
}

fn truncate_for_msg(s: &str) -> String {
    const MAX: usize = 4000;
    if s.len() <= MAX {
        s.to_string()
    } else {
        let mut cut = MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}... [{} bytes]", &s[..cut], s.len())
    }
}

fn command(args: &[String]) -> Command {
    let mut c = Command::new(bin());
    c.args(args).env_remove("RUST_LOG").stdin(Stdio::null());
    c
}

/// Runs `cbtfs ARGS...` and captures its exit status and output.
pub fn cbtfs<S: AsRef<str>>(args: &[S]) -> Out {
    let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
    let o = command(&args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin()));
    Out::from_output(args, o)
}

/// Spawns `cbtfs ARGS...` with stdout/stderr captured to files in `logdir`.
pub fn spawn_cbtfs<S: AsRef<str>>(args: &[S], logdir: &Path, tag: &str) -> Spawned {
    let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
    let out_path = logdir.join(format!("{tag}.stdout"));
    let err_path = logdir.join(format!("{tag}.stderr"));
    let child = command(&args)
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin()));
    Spawned {
        args,
        child: Some(child),
        out_path,
        err_path,
    }
}

/// A background run of the binary. Killed (SIGKILL) on drop if still running.
pub struct Spawned {
    pub args: Vec<String>,
    child: Option<Child>,
    out_path: PathBuf,
    err_path: PathBuf,
}

impl Spawned {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Non-blocking: Some(status) once the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().unwrap().try_wait().unwrap()
    }

    /// Sends SIGKILL (if still running) and reaps the process.
    pub fn kill(&mut self) -> ExitStatus {
        let c = self.child.as_mut().unwrap();
        let _ = c.kill();
        c.wait().unwrap()
    }

    /// Waits for the process, returning its result.
    pub fn wait(mut self) -> Out {
        let status = self.child.take().unwrap().wait().unwrap();
        self.finish(status)
    }

    /// Waits at most `timeout`; kills the process and panics when it is
    /// still running by then.
    pub fn wait_timeout(mut self, timeout: Duration) -> Out {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return self.finish(st);
            }
            if start.elapsed() > timeout {
                let st = self.kill();
                self.child = None;
                let out = self.finish(st);
                panic!("process did not exit within {timeout:?}:\n{}", out.describe());
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// Output collected so far (stderr / stdout files).
    pub fn stderr_so_far(&self) -> String {
        fs::read_to_string(&self.err_path).unwrap_or_default()
    }

    fn finish(&self, status: ExitStatus) -> Out {
        Out {
            args: self.args.clone(),
            code: status.code(),
            stdout: fs::read_to_string(&self.out_path).unwrap_or_default(),
            stderr: fs::read_to_string(&self.err_path).unwrap_or_default(),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends a signal ("TERM", "INT", ...) to a process with kill(1).
pub fn send_signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status()
        .expect("kill(1)");
    assert!(st.success(), "kill -s {sig} {pid} failed");
}

/// Runs an external tool and panics if it fails.
#[track_caller]
pub fn sh(prog: &str, args: &[&str]) -> String {
    let o = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
    assert!(
        o.status.success(),
        "{prog} {args:?} failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn sh_quiet(prog: &str, args: &[&str]) -> bool {
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------
// Repository commands
// ---------------------------------------------------------------------------

pub fn p(path: &Path) -> String {
    path.to_str().expect("utf-8 path").to_string()
}

/// `cbtfs init REPO [--block-size SIZE]`, asserting success.
pub fn init_repo(repo: &Path, block_size: Option<&str>) {
    let mut args = vec!["init".to_string(), p(repo)];
    if let Some(bs) = block_size {
        args.push("--block-size".into());
        args.push(bs.into());
    }
    cbtfs(&args).ok();
    assert!(repo.join("index.sqlite").is_file(), "init made no index.sqlite");
}

/// Builder of a `cbtfs ingest` command line.
#[derive(Clone)]
pub struct Ingest {
    args: Vec<String>,
}

impl Ingest {
    pub fn new(repo: &Path, machine: &str) -> Ingest {
        Ingest {
            args: vec!["ingest".into(), p(repo), machine.into()],
        }
    }
    pub fn disk(mut self, name: &str, source: &Path) -> Ingest {
        self.args.push("--disk".into());
        self.args.push(format!("{name}={}", p(source)));
        self
    }
    pub fn changes(mut self, name: &str, map: &Path) -> Ingest {
        self.args.push("--changes".into());
        self.args.push(format!("{name}={}", p(map)));
        self
    }
    pub fn since(mut self, cp: &str) -> Ingest {
        self.args.push("--since".into());
        self.args.push(cp.into());
        self
    }
    pub fn checkpoint(mut self, cp: &str) -> Ingest {
        self.args.push("--checkpoint".into());
        self.args.push(cp.into());
        self
    }
    pub fn full(mut self) -> Ingest {
        self.args.push("--full".into());
        self
    }
    pub fn arg(mut self, a: &str) -> Ingest {
        self.args.push(a.into());
        self
    }
    pub fn args(&self) -> &[String] {
        &self.args
    }
    pub fn run(&self) -> Out {
        cbtfs(&self.args)
    }
    pub fn spawn(&self, logdir: &Path, tag: &str) -> Spawned {
        spawn_cbtfs(&self.args, logdir, tag)
    }
}

/// `cbtfs list REPO --json`, parsed.
pub fn list_json(repo: &Path) -> Value {
    cbtfs(&["list", &p(repo), "--json"]).ok().stdout_json()
}

/// `cbtfs list REPO MACHINE --json`, parsed.
pub fn list_machine_json(repo: &Path, machine: &str) -> Value {
    cbtfs(&["list", &p(repo), machine, "--json"]).ok().stdout_json()
}

/// The point objects of `machine` (empty when the machine is unknown).
pub fn points(repo: &Path, machine: &str) -> Vec<Value> {
    let v = list_json(repo);
    let machines = v["machines"]
        .as_array()
        .unwrap_or_else(|| panic!("list --json has no machines array: {v}"));
    machines
        .iter()
        .find(|m| m["name"] == machine)
        .map(|m| m["points"].as_array().expect("points array").clone())
        .unwrap_or_default()
}

/// Point folder names of `machine`, in list order.
pub fn point_names(repo: &Path, machine: &str) -> Vec<String> {
    points(repo, machine)
        .iter()
        .map(|pt| pt["name"].as_str().expect("point name").to_string())
        .collect()
}

/// Name of the newest point of `machine`.
#[track_caller]
pub fn latest_point(repo: &Path, machine: &str) -> String {
    point_names(repo, machine)
        .pop()
        .unwrap_or_else(|| panic!("machine {machine} has no point"))
}

/// The disk object `disk` of a point object.
#[track_caller]
pub fn point_disk<'a>(point: &'a Value, disk: &str) -> &'a Value {
    point["disks"]
        .as_array()
        .expect("disks array")
        .iter()
        .find(|d| d["name"] == disk)
        .unwrap_or_else(|| panic!("disk {disk} not in point {point}"))
}

/// `cbtfs verify REPO --json`, asserting it passes.
#[track_caller]
pub fn verify_ok(repo: &Path) -> Value {
    let out = cbtfs(&["verify", &p(repo), "--json"]);
    assert_eq!(out.code, Some(0), "verify failed:\n{}", out.describe());
    let v = out.stdout_json();
    assert_eq!(v["ok"], Value::Bool(true), "verify --json not ok: {v}");
    v
}

/// What must not change when a command is refused: the listing and the
/// set and sizes of pack files.
#[derive(Debug, PartialEq, Eq)]
pub struct RepoState {
    pub list: Value,
    pub packs: Vec<(String, u64)>,
}

pub fn pack_files(repo: &Path) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir(repo.join("packs")) {
        for e in rd {
            let e = e.unwrap();
            v.push((
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            ));
        }
    }
    v.sort();
    v
}

/// Paths of the `*.pack` files of a repository, sorted.
pub fn pack_paths(repo: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(repo.join("packs"))
        .expect("packs dir")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect();
    v.sort();
    v
}

pub fn repo_state(repo: &Path) -> RepoState {
    RepoState {
        list: list_json(repo),
        packs: pack_files(repo),
    }
}

/// Allocated size (st_blocks * 512) of a directory tree.
pub fn disk_usage(path: &Path) -> u64 {
    let md = fs::symlink_metadata(path).unwrap();
    let mut total = md.blocks() * 512;
    if md.is_dir() {
        for e in fs::read_dir(path).unwrap() {
            total += disk_usage(&e.unwrap().path());
        }
    }
    total
}

/// Apparent size (sum of file lengths) of a directory tree.
pub fn apparent_size(path: &Path) -> u64 {
    let md = fs::symlink_metadata(path).unwrap();
    if md.is_dir() {
        fs::read_dir(path)
            .unwrap()
            .map(|e| apparent_size(&e.unwrap().path()))
            .sum()
    } else {
        md.len()
    }
}

/// Checks a point folder name: `{seq:06}-{YYYYMMDD}T{HHMMSS}Z`.
#[track_caller]
pub fn assert_point_name(name: &str, seq: u64) {
    let b = name.as_bytes();
    let ok = b.len() == 23
        && b[..6].iter().all(u8::is_ascii_digit)
        && b[6] == b'-'
        && b[7..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'T'
        && b[16..22].iter().all(u8::is_ascii_digit)
        && b[22] == b'Z';
    assert!(ok, "bad point name {name:?}");
    assert_eq!(&name[..6], format!("{seq:06}"), "point {name} should have seq {seq}");
}

// ---------------------------------------------------------------------------
// Mounts
// ---------------------------------------------------------------------------

/// Decodes the octal escapes of /proc/self/mountinfo paths.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Filesystem type of the mount at exactly `mp`, if any (last one wins).
pub fn mount_fstype(mp: &Path) -> Option<String> {
    let want = fs::canonicalize(mp).unwrap_or_else(|_| mp.to_path_buf());
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut found = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 5 {
            continue;
        }
        if Path::new(&unescape_mountinfo(fields[4])) == want {
            let sep = fields.iter().position(|f| *f == "-");
            found = sep.and_then(|i| fields.get(i + 1)).map(|s| s.to_string());
        }
    }
    found
}

/// True when a FUSE filesystem is mounted at `mp`.
pub fn is_fuse_mounted(mp: &Path) -> bool {
    mount_fstype(mp).is_some_and(|t| t.starts_with("fuse"))
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        sleep(Duration::from_millis(50));
    }
}

/// A running `cbtfs mount REPO MOUNTPOINT`. Dropping it unmounts and
/// reaps the process.
pub struct FuseMount {
    pub mp: PathBuf,
    proc_: Option<Spawned>,
    /// Set once the test is done with the mount; stops the watchdog.
    released: Arc<AtomicBool>,
}

/// A mount older than this is taken for hung: its process is killed so
/// that reads blocked in the kernel fail (ENOTCONN) instead of hanging
/// the test run forever.
const MOUNT_WATCHDOG: Duration = Duration::from_secs(180);

fn start_watchdog(pid: u32, mp: PathBuf, released: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let start = Instant::now();
        while !released.load(Ordering::SeqCst) {
            if start.elapsed() > MOUNT_WATCHDOG {
                eprintln!(
                    "mount on {} still up after {MOUNT_WATCHDOG:?}: killing pid {pid}",
                    mp.display()
                );
                // The child is reaped only after `released` is set, so the
                // pid cannot have been reused.
                let _ = sh_quiet("kill", &["-s", "KILL", &pid.to_string()]);
                return;
            }
            sleep(Duration::from_millis(200));
        }
    });
}

impl FuseMount {
    /// Starts `cbtfs mount` and waits (up to 10 s) until the mount is live.
    pub fn start(repo: &Path, mp: &Path) -> FuseMount {
        fs::create_dir_all(mp).unwrap();
        let logdir = mp.parent().unwrap().to_path_buf();
        let tag = format!(
            "mount-{}",
            mp.file_name().unwrap().to_string_lossy()
        );
        let mut proc_ = spawn_cbtfs(&["mount", &p(repo), &p(mp)], &logdir, &tag);
        let mp = fs::canonicalize(mp).unwrap();
        let start = Instant::now();
        loop {
            if is_fuse_mounted(&mp) {
                break;
            }
            if let Some(st) = proc_.try_wait() {
                panic!(
                    "cbtfs mount exited before mounting ({st}): {}",
                    proc_.stderr_so_far()
                );
            }
            if start.elapsed() > Duration::from_secs(10) {
                let err = proc_.stderr_so_far();
                proc_.kill();
                panic!("cbtfs mount did not mount within 10 s: {err}");
            }
            sleep(Duration::from_millis(20));
        }
        let released = Arc::new(AtomicBool::new(false));
        start_watchdog(proc_.pid(), mp.clone(), released.clone());
        FuseMount {
            mp,
            proc_: Some(proc_),
            released,
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc_.as_ref().unwrap().pid()
    }

    pub fn machine_dir(&self, machine: &str) -> PathBuf {
        self.mp.join(machine)
    }

    pub fn point_dir(&self, machine: &str, point: &str) -> PathBuf {
        self.mp.join(machine).join(point)
    }

    /// Path of `MOUNTPOINT/MACHINE/POINT/DISK.img`.
    pub fn image(&self, machine: &str, point: &str, disk: &str) -> PathBuf {
        self.mp.join(machine).join(point).join(format!("{disk}.img"))
    }

    /// Unmounts with umount(8) and waits for the process; returns its result.
    pub fn unmount(mut self) -> Out {
        let mp = p(&self.mp);
        let mut unmounted = false;
        for _ in 0..100 {
            if sh_quiet("umount", &[&mp]) || !is_fuse_mounted(&self.mp) {
                unmounted = true;
                break;
            }
            sleep(Duration::from_millis(50));
        }
        assert!(unmounted, "umount {mp} failed");
        self.released.store(true, Ordering::SeqCst);
        let proc_ = self.proc_.take().unwrap();
        proc_.wait_timeout(Duration::from_secs(10))
    }

    /// Sends a signal to the mount process and waits (up to 10 s) for it.
    pub fn signal_and_wait(mut self, sig: &str) -> Out {
        self.released.store(true, Ordering::SeqCst);
        let proc_ = self.proc_.take().unwrap();
        send_signal(proc_.pid(), sig);
        proc_.wait_timeout(Duration::from_secs(10))
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        self.released.store(true, Ordering::SeqCst);
        let mp = p(&self.mp);
        if is_fuse_mounted(&self.mp) {
            // A loop device over an image of this mount may still be
            // releasing its file: retry for a while, then detach lazily.
            let mut done = false;
            for _ in 0..40 {
                if sh_quiet("umount", &[&mp]) || sh_quiet("fusermount3", &["-u", &mp]) {
                    done = true;
                    break;
                }
                if !is_fuse_mounted(&self.mp) {
                    done = true;
                    break;
                }
                sleep(Duration::from_millis(50));
            }
            if !done {
                let _ = sh_quiet("umount", &["-l", &mp]);
            }
        }
        if let Some(mut proc_) = self.proc_.take() {
            let start = Instant::now();
            while proc_.try_wait().is_none() {
                if start.elapsed() > Duration::from_secs(5) {
                    proc_.kill();
                    break;
                }
                sleep(Duration::from_millis(20));
            }
        }
        if is_fuse_mounted(&self.mp) {
            let _ = sh_quiet("umount", &["-l", &mp]);
        }
    }
}

/// A loop mount (`mount -o loop[,ro] IMAGE MOUNTPOINT`), unmounted on drop.
pub struct LoopMount {
    pub mp: PathBuf,
}

impl LoopMount {
    pub fn new(image: &Path, mp: &Path, read_only: bool) -> LoopMount {
        LoopMount::with_options(image, mp, if read_only { "loop,ro" } else { "loop" })
    }

    /// `mount -o OPTIONS SOURCE MOUNTPOINT` (e.g. a block device with "rw").
    pub fn with_options(source: &Path, mp: &Path, opts: &str) -> LoopMount {
        fs::create_dir_all(mp).unwrap();
        sh("mount", &["-o", opts, &p(source), &p(mp)]);
        LoopMount {
            mp: fs::canonicalize(mp).unwrap(),
        }
    }

    /// A file system without a device (`mount -t tmpfs -o OPTIONS`, ramfs).
    pub fn of_type(fstype: &str, opts: &str, mp: &Path) -> LoopMount {
        fs::create_dir_all(mp).unwrap();
        sh("mount", &["-t", fstype, "-o", opts, fstype, &p(mp)]);
        LoopMount {
            mp: fs::canonicalize(mp).unwrap(),
        }
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let mp = p(&self.mp);
        for _ in 0..40 {
            if sh_quiet("umount", &[&mp]) {
                return;
            }
            if mount_fstype(&self.mp).is_none() {
                return;
            }
            sleep(Duration::from_millis(50));
        }
        let _ = sh_quiet("umount", &["-l", &mp]);
    }
}

// ---------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------

/// Deterministic xorshift64* generator.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
    /// Compressible text of `n` bytes.
    pub fn text(&mut self, n: usize) -> Vec<u8> {
        const WORDS: [&str; 12] = [
            "block", "disk", "restore", "point", "chain", "tracking", "changed", "image",
            "backup", "machine", "snapshot", "extent",
        ];
        let mut s = Vec::with_capacity(n + 16);
        while s.len() < n {
            s.extend_from_slice(WORDS[self.below(12) as usize].as_bytes());
            s.push(if self.below(9) == 0 { b'\n' } else { b' ' });
        }
        s.truncate(n);
        s
    }
}

/// Writes `data` at `offset` of `path` (creating the file if needed,
/// never truncating it).
pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all_at(data, offset).unwrap();
}

/// Creates (or resizes) `path` to `size` bytes; new space reads as zeros.
pub fn set_size(path: &Path, size: u64) {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    f.set_len(size).unwrap();
}

/// Reads exactly `len` bytes at `offset` (short only at end of file).
pub fn read_at(path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let f = File::open(path)?;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = f.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(buf)
}

/// Asserts that `path` holds `expected` at `offset`.
#[track_caller]
pub fn assert_bytes_at(path: &Path, offset: u64, expected: &[u8]) {
    let got = read_at(path, offset, expected.len())
        .unwrap_or_else(|e| panic!("read {} at {offset}: {e}", path.display()));
    assert_eq!(got.len(), expected.len(), "short read of {} at {offset}", path.display());
    if let Some(i) = first_diff(&got, expected) {
        panic!(
            "{} differs at offset {} (got {:#04x}, expected {:#04x})",
            path.display(),
            offset + i as u64,
            got[i],
            expected[i]
        );
    }
}

/// Asserts that `len` bytes at `offset` of `path` are all zero.
#[track_caller]
pub fn assert_zero_at(path: &Path, offset: u64, len: usize) {
    let got = read_at(path, offset, len)
        .unwrap_or_else(|e| panic!("read {} at {offset}: {e}", path.display()));
    assert_eq!(got.len(), len, "short read of {} at {offset}", path.display());
    if let Some(i) = got.iter().position(|b| *b != 0) {
        panic!(
            "{} has non-zero byte {:#04x} at offset {}, expected zeros",
            path.display(),
            got[i],
            offset + i as u64
        );
    }
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    a.iter().zip(b).position(|(x, y)| x != y).or(Some(a.len().min(b.len())))
}

/// Compares two whole files; Err describes the first difference.
pub fn compare_files(actual: &Path, expected: &Path) -> Result<(), String> {
    let la = fs::metadata(actual)
        .map_err(|e| format!("stat {}: {e}", actual.display()))?
        .len();
    let le = fs::metadata(expected)
        .map_err(|e| format!("stat {}: {e}", expected.display()))?
        .len();
    if la != le {
        return Err(format!(
            "{} is {la} bytes, expected {le} (as {})",
            actual.display(),
            expected.display()
        ));
    }
    let mut fa = File::open(actual).map_err(|e| format!("open {}: {e}", actual.display()))?;
    let mut fe = File::open(expected).unwrap();
    const CH: usize = 1 << 20;
    let mut ba = vec![0u8; CH];
    let mut be = vec![0u8; CH];
    let mut off = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba)
            .map_err(|e| format!("read {} at ~{off}: {e}", actual.display()))?;
        let ne = read_full(&mut fe, &mut be).unwrap();
        if let Some(i) = first_diff(&ba[..na], &be[..ne]) {
            return Err(format!(
                "{} differs from {} at offset {}",
                actual.display(),
                expected.display(),
                off + i as u64
            ));
        }
        if na == 0 {
            return Ok(());
        }
        off += na as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let r = f.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(n)
}

#[track_caller]
pub fn assert_same_file(actual: &Path, expected: &Path) {
    if let Err(e) = compare_files(actual, expected) {
        panic!("{e}");
    }
}

/// Copies `src` to `dst` (a saved copy of a source at ingest time).
pub fn save_copy(src: &Path, dst: &Path) {
    fs::copy(src, dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
}

// ---------------------------------------------------------------------------
// Changed-extent maps
// ---------------------------------------------------------------------------

/// Extents (offset, length) where `new` differs from `old`, compared at
/// `gran`-byte granularity and merged when adjacent. Bytes of `new` past
/// the end of `old` count as changed. Extents are clipped to `new`'s size.
pub fn diff_extents(old: &Path, new: &Path, gran: u64) -> Vec<(u64, u64)> {
    let lo = fs::metadata(old).unwrap().len();
    let ln = fs::metadata(new).unwrap().len();
    let mut fo = File::open(old).unwrap();
    let mut fnw = File::open(new).unwrap();
    let mut ext: Vec<(u64, u64)> = Vec::new();
    let mut push = |off: u64, len: u64| {
        if let Some(last) = ext.last_mut()
            && last.0 + last.1 == off {
                last.1 += len;
                return;
            }
        ext.push((off, len));
    };
    const CH: usize = 4 << 20;
    let mut bo = vec![0u8; CH];
    let mut bn = vec![0u8; CH];
    let mut off = 0u64;
    while off < ln {
        let nn = read_full(&mut fnw, &mut bn).unwrap();
        let no = read_full(&mut fo, &mut bo).unwrap();
        if nn == 0 {
            break;
        }
        let mut i = 0usize;
        while i < nn {
            let end = (i + gran as usize).min(nn);
            let changed = if off + (end as u64) <= lo {
                bo[i..end] != bn[i..end]
            } else {
                // Partly or wholly past the old end: compare what exists.
                let old_valid = no.saturating_sub(i).min(end - i);
                bo[i..i + old_valid] != bn[i..i + old_valid] || old_valid < end - i
            };
            if changed {
                push(off + i as u64, (end - i) as u64);
            }
            i = end;
        }
        off += nn as u64;
    }
    ext
}

/// The data extents of a file, as SEEK_DATA and SEEK_HOLE report them:
/// (start, end) pairs in order, each a run of data up to a hole.
pub fn data_extents(path: &Path) -> Vec<(u64, u64)> {
    use nix::unistd::{Whence, lseek};
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let size = f.metadata().unwrap().len();
    let (mut out, mut pos) = (Vec::new(), 0u64);
    while pos < size {
        let data = match lseek(&f, pos as i64, Whence::SeekData) {
            Ok(d) => d as u64,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => panic!("SEEK_DATA from {pos} in {}: {e}", path.display()),
        };
        let hole = lseek(&f, data as i64, Whence::SeekHole)
            .unwrap_or_else(|e| panic!("SEEK_HOLE from {data} in {}: {e}", path.display())) as u64;
        assert!(data >= pos && hole > data && hole <= size, "{}: data at {data}, hole at {hole}, from {pos}", path.display());
        out.push((data, hole));
        pos = hole;
    }
    out
}

/// Writes a map file: `[{"offset": N, "length": N}, ...]`.
pub fn write_map(path: &Path, extents: &[(u64, u64)]) {
    let v: Vec<Value> = extents
        .iter()
        .map(|(o, l)| serde_json::json!({"offset": o, "length": l}))
        .collect();
    fs::write(path, serde_json::to_vec(&v).unwrap()).unwrap();
}

// ---------------------------------------------------------------------------
// ext4 images and file trees
// ---------------------------------------------------------------------------

/// Expected file tree: relative path -> content. Directories are implied.
pub type Tree = BTreeMap<String, Vec<u8>>;

/// Creates a `size`-byte sparse file holding a fresh ext4 filesystem.
pub fn mkfs_ext4(image: &Path, size: u64) {
    set_size(image, size);
    sh(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            &p(image),
        ],
    );
}

/// Mounts `image` read-write on a loop device at `mp`, runs `f` with the
/// mount root, then unmounts (also on panic).
pub fn with_loop_rw<R>(image: &Path, mp: &Path, f: impl FnOnce(&Path) -> R) -> R {
    let m = LoopMount::new(image, mp, false);
    let r = f(&m.mp);
    drop(m);
    assert!(mount_fstype(mp).is_none(), "{} still mounted", mp.display());
    r
}

/// Writes (replacing) a file in the mounted tree and records it.
pub fn put(root: &Path, tree: &mut Tree, rel: &str, data: Vec<u8>) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, &data).unwrap();
    tree.insert(rel.to_string(), data);
}

/// Overwrites `data` at `offset` inside an existing file and records it.
pub fn patch(root: &Path, tree: &mut Tree, rel: &str, offset: usize, data: &[u8]) {
    write_at(&root.join(rel), offset as u64, data);
    let cur = tree.get_mut(rel).expect("patched file is in the tree");
    if cur.len() < offset + data.len() {
        cur.resize(offset + data.len(), 0);
    }
    cur[offset..offset + data.len()].copy_from_slice(data);
}

/// Appends to an existing file and records it.
pub fn append(root: &Path, tree: &mut Tree, rel: &str, data: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(root.join(rel)).unwrap();
    f.write_all(data).unwrap();
    tree.get_mut(rel).unwrap().extend_from_slice(data);
}

/// Removes a file and forgets it.
pub fn remove(root: &Path, tree: &mut Tree, rel: &str) {
    fs::remove_file(root.join(rel)).unwrap();
    tree.remove(rel);
}

/// Renames a file and records it.
pub fn rename(root: &Path, tree: &mut Tree, from: &str, to: &str) {
    let dst = root.join(to);
    fs::create_dir_all(dst.parent().unwrap()).unwrap();
    fs::rename(root.join(from), &dst).unwrap();
    let data = tree.remove(from).unwrap();
    tree.insert(to.to_string(), data);
}

/// Reads all regular files under `root` (ignoring `lost+found`).
pub fn read_tree(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == "lost+found" {
                continue;
            }
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                walk(root, &path, out);
            } else if ft.is_file() {
                let data = fs::read(&path)
                    .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                out.insert(rel, data);
            } else {
                panic!("unexpected file type at {}", path.display());
            }
        }
    }
    let mut out = Tree::new();
    walk(root, root, &mut out);
    out
}

/// Asserts that two trees hold the same files with the same contents.
#[track_caller]
pub fn assert_tree_eq(actual: &Tree, expected: &Tree, what: &str) {
    let a: Vec<&String> = actual.keys().collect();
    let e: Vec<&String> = expected.keys().collect();
    assert_eq!(a, e, "{what}: file names differ");
    for (name, data) in expected {
        let got = &actual[name];
        if got != data {
            let at = first_diff(got, data).unwrap();
            panic!(
                "{what}: file {name} differs (got {} bytes, expected {}; first difference at {at})",
                got.len(),
                data.len()
            );
        }
    }
}

/// Loop-mounts a (mounted, read-only) disk image and checks its files.
#[track_caller]
pub fn assert_image_tree(image: &Path, mp: &Path, expected: &Tree, what: &str) {
    let m = LoopMount::new(image, mp, true);
    let got = read_tree(&m.mp);
    drop(m);
    assert_tree_eq(&got, expected, what);
}

/// Sorted names in a directory.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Checks the `latest` symlink of a machine folder.
#[track_caller]
pub fn assert_latest(machine_dir: &Path, point: &str) {
    let link = machine_dir.join("latest");
    let md = fs::symlink_metadata(&link)
        .unwrap_or_else(|e| panic!("{}: {e}", link.display()));
    assert!(md.file_type().is_symlink(), "{} is not a symlink", link.display());
    let target = fs::read_link(&link).unwrap();
    assert_eq!(target, PathBuf::from(point), "latest points at the wrong folder");
    assert!(link.is_dir(), "latest does not resolve to a folder");
}

/// A per-test scratch directory.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::Builder::new()
                .prefix("cbtfs-test-")
                .tempdir()
                .unwrap(),
        }
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    /// `<scratch>/repo`.
    pub fn repo(&self) -> PathBuf {
        self.path("repo")
    }
    /// A fresh mountpoint directory `<scratch>/mnt-NAME`.
    pub fn mnt(&self, name: &str) -> PathBuf {
        let m = self.path(&format!("mnt-{name}"));
        fs::create_dir_all(&m).unwrap();
        m
    }
}
