//! Changed block tracking from QEMU, with the real QEMU tools: qcow2
//! images with persistent dirty bitmaps, changes made through QEMU (so the
//! bitmaps record them), exports over NBD by qemu-nbd, and what must
//! happen when a bitmap cannot be trusted or the server misbehaves.

mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::Duration;

/// A QEMU process (qemu-nbd or qemu-storage-daemon) killed on drop.
struct Daemon {
    child: Child,
}

impl Daemon {
    fn spawn(prog: &str, args: &[&str]) -> Daemon {
        let child = Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
        Daemon { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the daemon to exit (SIGTERM) and waits for it, so that QEMU
    /// saves its persistent bitmaps; kills it if it does not exit.
    fn stop(&mut self) {
        send_signal(self.child.id(), "TERM");
        let exited = wait_until(Duration::from_secs(20), || matches!(self.child.try_wait(), Ok(Some(_))));
        assert!(exited, "QEMU did not exit on SIGTERM");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// qemu-nbd serving `image` read-only on a unix socket, with `bitmap`
/// exported; returns the daemon and the URI of the export.
fn qemu_nbd(image: &Path, socket: &Path, export: &str, bitmap: Option<&str>) -> (Daemon, String) {
    let (img, sock) = (p(image), p(socket));
    let mut args = vec!["--read-only", "--persistent", "--format=qcow2", "--socket", &sock, "--export-name", export, "--shared=4"];
    if let Some(b) = bitmap {
        args.extend(["--bitmap", b]);
    }
    args.push(&img);
    let d = Daemon::spawn("qemu-nbd", &args);
    let listening = || std::os::unix::net::UnixStream::connect(socket).is_ok();
    assert!(wait_until(Duration::from_secs(10), listening), "qemu-nbd did not start");
    (d, format!("nbd+unix:///{export}?socket={sock}"))
}

/// Runs `f` on the filesystem of qcow2 `image`, written through QEMU (a
/// writable FUSE export by qemu-storage-daemon, loop-mounted), so that the
/// image's enabled dirty bitmaps record every change.
fn through_qemu<R>(image: &Path, s: &Scratch, tag: &str, f: impl FnOnce(&Path) -> R) -> R {
    let export = s.path(&format!("export-{tag}.img"));
    fs::write(&export, b"").unwrap();
    let blockdev = format!(
        r#"{{"driver":"qcow2","node-name":"top","file":{{"driver":"file","filename":"{}"}}}}"#,
        p(image)
    );
    let fuse = format!("type=fuse,id=e,node-name=top,mountpoint={},writable=on", p(&export));
    let mut qsd = Daemon::spawn("qemu-storage-daemon", &["--blockdev", &blockdev, "--export", &fuse]);
    assert!(
        wait_until(Duration::from_secs(10), || mount_fstype(&export).is_some_and(|t| t.starts_with("fuse"))),
        "qemu-storage-daemon did not export {}",
        image.display()
    );
    let r = with_loop_rw(&export, &s.mnt(tag), f);
    // A clean exit writes the bitmaps back; a killed QEMU leaves them
    // marked in use (which cbtfs refuses to trust).
    qsd.stop();
    r
}

/// `disk.raw` in `s`, `size` bytes with `len` random bytes (seed `seed`)
/// at `at`, and its copy `disk.qcow2`.
fn raw_and_qcow2(s: &Scratch, size: u64, at: u64, len: usize, seed: u64) -> (PathBuf, PathBuf) {
    let raw = s.path("disk.raw");
    set_size(&raw, size);
    write_at(&raw, at, &Rng::new(seed).bytes(len));
    let q = s.path("disk.qcow2");
    sh("qemu-img", &["convert", "-f", "raw", "-O", "qcow2", &p(&raw), &p(&q)]);
    (raw, q)
}

fn to_raw(image: &Path, raw: &Path) {
    sh("qemu-img", &["convert", "-f", "qcow2", "-O", "raw", &p(image), &p(raw)]);
}

fn bitmap_add(image: &Path, name: &str) {
    sh("qemu-img", &["bitmap", "--add", &p(image), name]);
}

fn qemu_io_write(image: &Path, pattern: u8, offset: u64, len: u64) {
    sh(
        "qemu-io",
        &["-f", "qcow2", "-c", &format!("write -P {pattern:#x} {offset} {len}"), &p(image)],
    );
}

fn disk_json(out: &Out, disk: &str) -> Value {
    let v = out.stdout_json();
    v["disks"].as_array().unwrap().iter().find(|d| d["name"] == disk).cloned().unwrap_or_else(|| panic!("no disk {disk}: {v}"))
}

/// A qcow2 image of `size` bytes whose first 48 MiB hold an ext4
/// filesystem with a few files (the rest stays free for raw writes).
fn qcow2_with_ext4(s: &Scratch, size: u64, tree: &mut Tree) -> PathBuf {
    let raw = s.path("seed.raw");
    set_size(&raw, size);
    sh("mkfs.ext4", &["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", &p(&raw), "48M"]);
    let mut rng = Rng::new(41);
    with_loop_rw(&raw, &s.mnt("seed"), |root| {
        put(root, tree, "etc/hostname", b"vm1\n".to_vec());
        put(root, tree, "data/random.bin", rng.bytes(5 << 20));
        put(root, tree, "data/text.log", "line of a log file\n".repeat(40_000).into_bytes());
    });
    let q = s.path("disk.qcow2");
    sh("qemu-img", &["convert", "-f", "raw", "-O", "qcow2", &p(&raw), &p(&q)]);
    q
}

#[test]
fn qcow2_bitmap_chain_reads_back_exactly() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let size: u64 = 64 << 20;
    let mut tree = Tree::new();
    let q = qcow2_with_ext4(&s, size, &mut tree);
    let mut states = Vec::new();
    let mut trees = Vec::new();

    // Full, from the qcow2 file (cbtfs runs qemu-nbd itself); it starts
    // checkpoint c1, whose bitmap counts changes from here on.
    bitmap_add(&q, "c1");
    let out = Ingest::new(&repo, "vm1").disk("sda", &q).checkpoint("c1").arg("--json").run().ok();
    let d = disk_json(&out, "sda");
    assert_eq!(d["kind"], "full", "{d}");
    let blocks = size / 65536;
    assert!(d["blocks_read"].as_u64().unwrap() < blocks / 2, "a full reads only allocated clusters: {d}");
    states.push(s.path("state0.raw"));
    to_raw(&q, &states[0]);
    trees.push(tree.clone());

    // Filesystem changes made through QEMU; bitmap c1 records them.
    let mut rng = Rng::new(42);
    through_qemu(&q, &s, "change1", |root| {
        patch(root, &mut tree, "data/random.bin", 1 << 20, &rng.bytes(300_000));
        put(root, &mut tree, "data/new.bin", rng.bytes(700_000));
        remove(root, &mut tree, "etc/hostname");
        append(root, &mut tree, "data/text.log", b"one more line\n");
    });
    bitmap_add(&q, "c2");
    let out = Ingest::new(&repo, "vm1").disk("sda", &q).arg("--bitmap").arg("sda=c1").checkpoint("c2").arg("--json").run().ok();
    assert!(!out.warns_full_scan("sda"), "a tied, enabled bitmap must be used:\n{}", out.describe());
    let d = disk_json(&out, "sda");
    assert_eq!(d["kind"], "bitmap", "{d}");
    let read = d["blocks_read"].as_u64().unwrap();
    assert!(read > 0 && read < blocks / 4, "only dirty blocks are read: {d}");
    states.push(s.path("state1.raw"));
    to_raw(&q, &states[1]);
    trees.push(tree.clone());

    // Raw writes with qemu-io past the filesystem, then an export by a
    // qemu-nbd of the user's own, read over NBD with bitmap c2.
    qemu_io_write(&q, 0xab, 50 << 20, 192 << 10);
    qemu_io_write(&q, 0xcd, (60 << 20) + 4096, 8192);
    bitmap_add(&q, "c3");
    let (mut server, uri) = qemu_nbd(&q, &s.path("nbd.sock"), "vm1-sda", Some("c2"));
    let out = cbtfs(&[
        "ingest", &p(&repo), "vm1", "--disk", &format!("sda={uri}"), "--bitmap", "sda=c2", "--checkpoint", "c3", "--json",
    ])
    .ok();
    server.kill();
    let d = disk_json(&out, "sda");
    assert_eq!(d["kind"], "bitmap", "{d}");
    assert!(d["blocks_read"].as_u64().unwrap() <= 8, "two small dirty regions: {d}");
    states.push(s.path("state2.raw"));
    to_raw(&q, &states[2]);
    trees.push(tree.clone());

    // list says how each point was made.
    let pts = points(&repo, "vm1");
    let kinds: Vec<&str> = pts.iter().map(|p| point_disk(p, "sda")["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["full", "bitmap", "bitmap"]);

    // Every point byte-exact through the mount, and file-exact after a loop mount.
    verify_ok(&repo);
    let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
    let names = point_names(&repo, "vm1");
    for (i, name) in names.iter().enumerate() {
        let img = fuse.image("vm1", name, "sda");
        assert_same_file(&img, &states[i]);
        assert_image_tree(&img, &s.mnt(&format!("loop{i}")), &trees[i], &format!("point {name}"));
    }
}

#[test]
fn untrustworthy_bitmaps_fall_back_to_a_full_scan() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let q = s.path("disk.qcow2");
    sh("qemu-img", &["create", "-q", "-f", "qcow2", &p(&q), "32M"]);
    qemu_io_write(&q, 0x11, 0, 4 << 20);
    bitmap_add(&q, "c1");
    Ingest::new(&repo, "vm1").disk("sda", &q).checkpoint("c1").run().ok();

    let check = |tag: &str, bitmap: &str, cp: &str, why: &str| {
        let out = Ingest::new(&repo, "vm1").disk("sda", &q).arg("--bitmap").arg(&format!("sda={bitmap}")).checkpoint(cp).arg("--json").run().ok();
        assert!(out.warns_full_scan("sda"), "{tag}: expected a full-scan warning:\n{}", out.describe());
        assert!(out.stderr.contains(why), "{tag}: the warning must say {why:?}:\n{}", out.describe());
        assert_eq!(disk_json(&out, "sda")["kind"], "scan", "{tag}");
        let raw = s.path(&format!("{tag}.raw"));
        to_raw(&q, &raw);
        let fuse = FuseMount::start(&repo, &s.mnt(tag));
        assert_same_file(&fuse.machine_dir("vm1").join("latest").join("sda.img"), &raw);
    };

    // A bitmap the image does not have.
    qemu_io_write(&q, 0x22, 8 << 20, 64 << 10);
    check("missing", "nosuch", "c2", "has no dirty bitmap nosuch");

    // A disabled bitmap misses writes made after it was disabled: trusting
    // it would lose them, and the scan finds them.
    bitmap_add(&q, "c3");
    sh("qemu-img", &["bitmap", "--disable", &p(&q), "c3"]);
    qemu_io_write(&q, 0x33, 12 << 20, 64 << 10);
    let out = Ingest::new(&repo, "vm1").disk("sda", &q).checkpoint("c3").run().ok();
    assert!(out.warns_full_scan("sda"));
    qemu_io_write(&q, 0x44, 16 << 20, 64 << 10);
    check("disabled", "c3", "c4", "is disabled");

    // An enabled bitmap of an older checkpoint: not tied to the chain.
    qemu_io_write(&q, 0x55, 20 << 20, 64 << 10);
    check("stale", "c1", "c5", "relative to checkpoint c1");
}

/// A server that dies mid-ingest: a clear error, and nothing committed.
#[test]
fn nbd_server_killed_mid_ingest_commits_nothing() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let q = s.path("big.qcow2");
    let raw = s.path("big.raw");
    let mut rng = Rng::new(7);
    let mut off = 0;
    set_size(&raw, 512 << 20);
    while off < 512 << 20 {
        write_at(&raw, off, &rng.bytes(4 << 20));
        off += 4 << 20;
    }
    sh("qemu-img", &["convert", "-f", "raw", "-O", "qcow2", &p(&raw), &p(&q)]);
    let small = s.path("small.raw");
    write_at(&small, 0, &Rng::new(8).bytes(1 << 20));
    Ingest::new(&repo, "vm1").disk("small", &small).checkpoint("c0").run().ok();
    let before = repo_state(&repo);

    let mut interrupted = false;
    for delay_ms in [150u64, 60, 20] {
        let sock = s.path(&format!("nbd-{delay_ms}.sock"));
        let (mut server, uri) = qemu_nbd(&q, &sock, "big", None);
        let args = [
            "ingest".to_string(),
            p(&repo),
            "vm1".into(),
            "--disk".into(),
            format!("small={}", p(&small)),
            "--disk".into(),
            format!("big={uri}"),
        ];
        let mut ing = spawn_cbtfs(&args, s.dir.path(), &format!("kill{delay_ms}"));
        sleep(Duration::from_millis(delay_ms));
        if ing.try_wait().is_some() {
            // Finished first; the point is valid, but this run proves nothing.
            let out = ing.wait();
            assert_eq!(out.code, Some(0), "{}", out.describe());
            continue;
        }
        server.kill();
        let out = ing.wait_timeout(Duration::from_secs(60));
        assert_ne!(out.code, Some(0), "ingest must fail when the server dies:\n{}", out.describe());
        // (The small disk's full-scan warning comes first.)
        let errors: Vec<&str> = out.stderr.lines().filter(|l| !l.starts_with("warning:")).collect();
        assert_eq!(errors.len(), 1, "one line of error:\n{}", out.describe());
        assert!(errors[0].contains("NBD server"), "the error must name the NBD server:\n{}", out.describe());
        assert_eq!(repo_state(&repo), before, "a failed ingest must change nothing");
        verify_ok(&repo);
        interrupted = true;
        break;
    }
    assert!(interrupted, "no ingest was interrupted: the test proved nothing");
}

/// Unreachable servers, wrong names, and servers cbtfs cannot use: one
/// line of error, a non-zero exit, and the repository unchanged.
#[test]
fn bad_nbd_sources_are_refused() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let seed = s.path("seed.raw");
    write_at(&seed, 0, &Rng::new(1).bytes(1 << 20));
    Ingest::new(&repo, "vm1").disk("sda", &seed).checkpoint("c0").run().ok();
    let before = repo_state(&repo);

    let q = s.path("disk.qcow2");
    sh("qemu-img", &["create", "-q", "-f", "qcow2", &p(&q), "8M"]);
    let (_server, uri) = qemu_nbd(&q, &s.path("nbd.sock"), "right", None);
    let no_sr = fake_server(&s, "no-structured-replies");
    let garbage = fake_server(&s, "garbage-after-go");

    let cases: Vec<(&str, String, &str)> = vec![
        ("unreachable socket", format!("nbd+unix:///x?socket={}", p(&s.path("nope.sock"))), "cannot connect"),
        ("wrong export", uri.replace("right", "wrong"), "no export named"),
        ("URI without socket", "nbd+unix:///right".to_string(), "socket=PATH"),
        ("TLS URI", "nbds://localhost/x".to_string(), "TLS"),
        ("no structured replies", format!("nbd+unix:///x?socket={}", p(&no_sr.1)), "structured replies"),
        ("malformed replies", format!("nbd+unix:///x?socket={}", p(&garbage.1)), "NBD protocol error"),
    ];
    for (what, source, needle) in cases {
        let out = cbtfs(&["ingest", &p(&repo), "vm1", "--disk", &format!("sdb={source}")]);
        assert!(matches!(out.code, Some(c) if c != 0), "{what}: must fail:\n{}", out.describe());
        let msg = out.stderr.trim();
        assert_eq!(msg.lines().count(), 1, "{what}: one line of error:\n{}", out.describe());
        assert!(msg.contains(needle), "{what}: the error must say {needle:?}:\n{}", out.describe());
        assert!(!msg.contains("panicked"), "{what}: {msg}");
        assert_eq!(repo_state(&repo), before, "{what}: the repository must not change");
    }

    // A bitmap for a raw image cannot be honoured.
    let out = Ingest::new(&repo, "vm1").disk("sda", &seed).arg("--bitmap").arg("sda=c0").run();
    assert!(matches!(out.code, Some(c) if c != 0), "{}", out.describe());
    assert!(out.stderr.contains("--changes map"), "{}", out.describe());
    assert_eq!(repo_state(&repo), before);

    // The bitmap of the checkpoint being recorded holds the changes from
    // now on: with --since it would have been trusted for the past.
    let q2 = s.path("disk2.qcow2");
    sh("qemu-img", &["create", "-q", "-f", "qcow2", &p(&q2), "8M"]);
    bitmap_add(&q2, "c1");
    let out = Ingest::new(&repo, "vm1").disk("sda", &q2).arg("--bitmap").arg("sda=c1").since("c0").checkpoint("c1").run();
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.describe());
    assert!(out.stderr.contains("named after the checkpoint this ingest records"), "{}", out.describe());
    assert_eq!(repo_state(&repo), before);
}

/// A stand-in NBD server (Python) that misbehaves on purpose: MODE is
/// `no-structured-replies` (refuses them, as servers older than the
/// feature do) or `garbage-after-go` (a good handshake, then noise).
/// Returns the process and its socket.
fn fake_server(s: &Scratch, mode: &str) -> (Daemon, PathBuf) {
    const SERVER: &str = r#"
import os, socket, struct, sys
mode, path = sys.argv[1], sys.argv[2]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(4)
OPT_MAGIC = 0x49484156454F5054
REP_MAGIC = 0x3e889045565a9
def reply(c, opt, kind, data=b""):
    c.sendall(struct.pack(">QIII", REP_MAGIC, opt, kind, len(data)) + data)
def recv(c, n):
    b = b""
    while len(b) < n:
        x = c.recv(n - len(b))
        if not x:
            raise EOFError
        b += x
    return b
while True:
    c, _ = srv.accept()
    try:
        c.sendall(struct.pack(">QQH", 0x4e42444d41474943, OPT_MAGIC, 3))
        recv(c, 4)
        while True:
            magic, opt, ln = struct.unpack(">QII", recv(c, 16))
            recv(c, ln)
            if opt == 8 and mode == "no-structured-replies":
                reply(c, opt, 0x80000001)
            elif opt == 7:
                reply(c, opt, 3, struct.pack(">HQH", 0, 1 << 20, 1))
                reply(c, opt, 1)
                break
            elif opt == 10:
                reply(c, opt, 1)
            else:
                reply(c, opt, 1)
        recv(c, 28)
        c.sendall(os.urandom(64))
    except (EOFError, OSError):
        pass
    c.close()
"#;
    let script = s.path("fake_nbd.py");
    fs::write(&script, SERVER).unwrap();
    let sock = s.path(&format!("fake-{mode}.sock"));
    let d = Daemon::spawn("python3", &[&p(&script), mode, &p(&sock)]);
    assert!(wait_until(Duration::from_secs(10), || sock.exists()), "fake server did not start");
    (d, sock)
}

/// `qemu-img map --output=json` output as a change map: a dirty bitmap
/// read through qemu's NBD client (`x-dirty-bitmap`), and the allocation
/// map of an overlay on the previous state.
#[test]
fn qemu_img_maps_are_read_as_change_maps() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let base = s.path("base.raw");
    set_size(&base, 32 << 20);
    let mut rng = Rng::new(9);
    for mib in [0u64, 3, 7, 12, 20, 31] {
        write_at(&base, mib << 20, &rng.bytes(1 << 20));
    }

    // A qcow2 with bitmap c1, changed by qemu-io; its bitmap, read through
    // qemu-nbd by qemu-img map, is the change map.
    let q = s.path("disk.qcow2");
    sh("qemu-img", &["convert", "-f", "raw", "-O", "qcow2", &p(&base), &p(&q)]);
    bitmap_add(&q, "c1");
    Ingest::new(&repo, "vm1").disk("sda", &q).checkpoint("c1").run().ok();
    qemu_io_write(&q, 0x5a, (3 << 20) + 8192, 100_000);
    qemu_io_write(&q, 0x6b, 25 << 20, 64 << 10);
    let (mut server, _) = qemu_nbd(&q, &s.path("map.sock"), "", Some("c1"));
    let image_opts = format!(
        "driver=nbd,server.type=unix,server.path={},x-dirty-bitmap=qemu:dirty-bitmap:c1",
        p(&s.path("map.sock"))
    );
    let map = sh("qemu-img", &["map", "--output=json", "--image-opts", &image_opts]);
    server.kill();
    let dirty_map = s.path("dirty.json");
    fs::write(&dirty_map, &map).unwrap();
    let out = Ingest::new(&repo, "vm1").disk("sda", &q).changes("sda", &dirty_map).since("c1").checkpoint("c2").arg("--json").run().ok();
    let d = disk_json(&out, "sda");
    assert_eq!(d["kind"], "map", "{d}");
    // 100 000 bytes from 3 MiB + 8 KiB span blocks 48 and 49; and block 400.
    assert_eq!(d["blocks_read"], 3, "only the dirty blocks: {d}");
    let state2 = s.path("state2.raw");
    to_raw(&q, &state2);

    // An overlay on that state takes the next changes, among them a
    // zeroed range that held data; its allocation map is the change map.
    let overlay = s.path("overlay.qcow2");
    sh("qemu-img", &["create", "-q", "-f", "qcow2", "-b", &p(&state2), "-F", "raw", &p(&overlay)]);
    qemu_io_write(&overlay, 0x7c, 20 << 20, 4096);
    sh("qemu-io", &["-f", "qcow2", "-c", &format!("write -z {} {}", 7 << 20, 256 << 10), &p(&overlay)]);
    let map = sh("qemu-img", &["map", "--output=json", "-f", "qcow2", &p(&overlay)]);
    let alloc_map = s.path("alloc.json");
    fs::write(&alloc_map, &map).unwrap();
    let out = Ingest::new(&repo, "vm1").disk("sda", &overlay).changes("sda", &alloc_map).since("c2").checkpoint("c3").arg("--json").run().ok();
    let d = disk_json(&out, "sda");
    assert_eq!(d["kind"], "map", "{d}");
    // The zeroed range reads as zeros (base:allocation says so): it gets
    // zero versions without being read; only the written block is read.
    assert_eq!(d["blocks_read"], 1, "one written block: {d}");
    let state3 = s.path("state3.raw");
    to_raw(&overlay, &state3);

    // A map of a disk of another size is refused, changing nothing.
    let smaller = s.path("smaller.raw");
    set_size(&smaller, 16 << 20);
    let before = repo_state(&repo);
    let out = Ingest::new(&repo, "vm1").disk("sda", &smaller).changes("sda", &alloc_map).since("c3").run();
    assert!(matches!(out.code, Some(c) if c != 0), "{}", out.describe());
    assert!(out.stderr.contains("past the end of the disk"), "{}", out.describe());
    assert_eq!(repo_state(&repo), before);

    let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
    let names = point_names(&repo, "vm1");
    assert_same_file(&fuse.image("vm1", &names[0], "sda"), &base);
    assert_same_file(&fuse.image("vm1", &names[1], "sda"), &state2);
    assert_same_file(&fuse.image("vm1", &names[2], "sda"), &state3);
}

/// `nbd://HOST:PORT/EXPORT`: a full over TCP, byte-exact.
#[test]
fn tcp_export_reads_back() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let (raw, q) = raw_and_qcow2(&s, 16 << 20, 5 << 20, 3 << 20, 3);
    // A free port, then qemu-nbd on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let _server = Daemon::spawn(
        "qemu-nbd",
        &["--read-only", "--persistent", "--format=qcow2", "--bind=127.0.0.1", "--port", &port, "--export-name=tcpdisk", &p(&q)],
    );
    let addr = format!("127.0.0.1:{port}");
    assert!(wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(&addr).is_ok()), "qemu-nbd did not listen");
    let out = cbtfs(&["ingest", &p(&repo), "vm1", "--disk", &format!("sda=nbd://{addr}/tcpdisk"), "--json"]).ok();
    let d = disk_json(&out, "sda");
    assert_eq!(d["kind"], "full");
    assert_eq!(d["blocks_read"], 48, "only the 3 MiB of data: {d}");
    let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
    assert_same_file(&fuse.machine_dir("vm1").join("latest").join("sda.img"), &raw);
}

/// Instant boot: a VM can start from a restore point without copying it,
/// on a qcow2 overlay whose backing file is the point's image in the
/// mount. Reads come through the overlay exactly; writes land in the
/// overlay and never reach the repository.
#[test]
fn instant_boot_overlay_on_a_mounted_point() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let disk = s.path("sda.raw");
    mkfs_ext4(&disk, 64 << 20);
    let mut tree = Tree::new();
    let mut rng = Rng::new(43);
    with_loop_rw(&disk, &s.mnt("src"), |root| {
        put(root, &mut tree, "etc/hostname", b"vm1\n".to_vec());
        put(root, &mut tree, "srv/db.bin", rng.bytes(6 << 20));
    });
    Ingest::new(&repo, "vm1").disk("sda", &disk).checkpoint("c1").run().ok();
    with_loop_rw(&disk, &s.mnt("src"), |root| {
        put(root, &mut tree, "var/log/app.log", rng.text(300_000));
        patch(root, &mut tree, "srv/db.bin", 1 << 20, &rng.bytes(70_000));
    });
    Ingest::new(&repo, "vm1").disk("sda", &disk).checkpoint("c2").run().ok();
    let at_c2 = s.path("c2.raw");
    save_copy(&disk, &at_c2);

    let m = FuseMount::start(&repo, &s.mnt("m"));
    // The point's own folder, not `latest`, which moves on the next ingest.
    let backing = m.image("vm1", &latest_point(&repo, "vm1"), "sda");
    let overlay = s.path("boot.qcow2");
    sh("qemu-img", &["create", "-q", "-f", "qcow2", "-b", &p(&backing), "-F", "raw", &p(&overlay)]);
    let st = Command::new("qemu-img").args(["compare", "-q", "-f", "qcow2", "-F", "raw"]).arg(&overlay).arg(&at_c2).status().unwrap();
    assert!(st.success(), "the overlay must read as the restore point");

    // The "booted" machine sees its files and writes new ones.
    let mut booted = tree.clone();
    through_qemu(&overlay, &s, "boot", |root| {
        assert_tree_eq(&read_tree(root), &tree, "files seen through the overlay");
        put(root, &mut booted, "var/log/boot.log", rng.text(50_000));
        remove(root, &mut booted, "etc/hostname");
    });
    through_qemu(&overlay, &s, "boot2", |root| assert_tree_eq(&read_tree(root), &booted, "overlay after a reboot"));
    assert_same_file(&backing, &at_c2);
    assert_image_tree(&backing, &s.mnt("l"), &tree, "the restore point itself");
    m.unmount().ok();
    verify_ok(&repo);
}

/// The private qemu-nbd reads images with direct I/O where their file
/// system allows it, and through the page cache where it does not (ramfs):
/// both ingest the same bytes.
#[test]
fn qcow2_sources_on_file_systems_without_direct_io() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let (raw, on_disk) = raw_and_qcow2(&s, 32 << 20, 3 << 20, 5 << 20, 77);
    let small = LoopMount::of_type("ramfs", "mode=0700", &s.mnt("ramfs"));
    let in_memory = small.mp.join("disk.qcow2");
    fs::copy(&on_disk, &in_memory).unwrap();

    let fallback = "trying through the page cache";
    let out = Ingest::new(&repo, "disk").disk("sda", &on_disk).arg("-vv").run().ok();
    assert!(!out.stderr.contains(fallback), "ext4 allows direct I/O:\n{}", out.describe());
    let out = Ingest::new(&repo, "mem").disk("sda", &in_memory).arg("-vv").run().ok();
    assert!(out.stderr.contains(fallback), "ramfs refuses direct I/O:\n{}", out.describe());

    let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
    for machine in ["disk", "mem"] {
        assert_same_file(&fuse.image(machine, &point_names(&repo, machine)[0], "sda"), &raw);
    }
}

/// A qcow2 image named with a time, given by a relative name: QEMU would
/// read `NAME:` as a protocol; cbtfs names it as a file.
#[test]
fn qcow2_source_with_a_colon_in_its_relative_name() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let (raw, q) = raw_and_qcow2(&s, 8 << 20, 1 << 20, 2 << 20, 78);
    fs::rename(&q, s.path("web01-2026-12-01T10:00.qcow2")).unwrap();
    let o = Command::new(bin())
        .args(["ingest", &p(&repo), "vm1", "--disk", "sda=web01-2026-12-01T10:00.qcow2"])
        .current_dir(s.dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
    assert_same_file(&fuse.image("vm1", &point_names(&repo, "vm1")[0], "sda"), &raw);
}

/// A qcow2 source on a machine without qemu-nbd: one clear error naming
/// the package, no second attempt through the page cache, and the
/// repository unchanged.
#[test]
fn qcow2_source_without_qemu_nbd_is_refused_once() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let (_, q) = raw_and_qcow2(&s, 8 << 20, 1 << 20, 1 << 20, 78);
    let before = repo_state(&repo);
    // qemu-img, which reads the image's header first, but no qemu-nbd.
    let tools = s.path("tools");
    fs::create_dir(&tools).unwrap();
    let qemu_img = sh("sh", &["-c", "command -v qemu-img"]);
    std::os::unix::fs::symlink(qemu_img.trim(), tools.join("qemu-img")).unwrap();
    let o = std::process::Command::new(bin())
        .args(["ingest", &p(&repo), "vm", "--disk", &format!("sda={}", p(&q)), "-vv"])
        .env("PATH", &tools)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("cbtfs: error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("cannot run qemu-nbd") && errors[0].contains("qemu-utils"), "{stderr}");
    assert!(!stderr.contains("trying through the page cache"), "a missing qemu-nbd is not tried twice:\n{stderr}");
    assert_eq!(repo_state(&repo), before);
}

/// Pids of the qemu-nbd processes serving `image`.
fn qemu_nbd_serving(image: &Path) -> Vec<u32> {
    let want = p(image);
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            comm.trim() == "qemu-nbd" && cmdline.split(|&b| b == 0).any(|a| a == want.as_bytes())
        })
        .collect()
}

/// An ingest of a qcow2 image killed with SIGKILL, which runs no
/// destructor, leaves no qemu-nbd behind: one left running would keep the
/// image open and locked against the VM that owns it.
#[test]
fn killed_qcow2_ingest_leaves_no_qemu_nbd() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let (_, q) = raw_and_qcow2(&s, 32 << 20, 0, 8 << 20, 79);
    let before = repo_state(&repo);
    let mut ing = Ingest::new(&repo, "vm").disk("sda", &q).spawn(s.dir.path(), "ingest");
    let pid = ing.pid();
    let started = wait_until(Duration::from_secs(10), || !qemu_nbd_serving(&q).is_empty());
    // Stopped where it is, then killed: wherever that is, qemu-nbd runs.
    send_signal(pid, "STOP");
    let seen = qemu_nbd_serving(&q);
    send_signal(pid, "KILL");
    ing.kill();
    let gone = wait_until(Duration::from_secs(5), || qemu_nbd_serving(&q).is_empty());
    for pid in qemu_nbd_serving(&q) {
        let _ = std::process::Command::new("kill").args(["-s", "KILL", &pid.to_string()]).status();
    }
    assert!(started && !seen.is_empty(), "the ingest never ran qemu-nbd: {}", ing.stderr_so_far());
    assert!(gone, "qemu-nbd ({seen:?}) still serves {} after the ingest was killed", q.display());
    let v = verify_ok(&repo);
    assert!(v["leftover_packs"].as_array().unwrap().len() <= 1, "{v}");
    cbtfs(&["gc", &p(&repo)]).ok();
    assert_eq!(repo_state(&repo), before, "the killed ingest recorded nothing");
    // Its socket directory, which it could not remove, goes with the next
    // qcow2 ingest.
    let dead = format!("cbtfs-nbd-{pid}-");
    let left = || {
        fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(&dead))
            .count()
    };
    assert_eq!(left(), 1, "the killed ingest's socket directory");
    Ingest::new(&repo, "vm").disk("sda", &q).run().ok();
    assert_eq!(left(), 0, "the next ingest removes it");
}

/// A raw disk is its guest's to write, first bytes included: one that
/// starts like a qcow2 image naming a file of this machine as its backing
/// file must not be backed up as that image (which would store the host's
/// file and lose the disk). Without `--format`, such a source is refused
/// unless named *.qcow2; with it, it is taken for what the user says.
#[test]
fn a_raw_disk_that_starts_like_qcow2_is_not_taken_for_one() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let secret = s.path("host-secret.raw");
    write_at(&secret, 0, &Rng::new(80).bytes(1 << 20));
    let header = s.path("header.qcow2");
    sh("qemu-img", &["create", "-q", "-f", "qcow2", "-b", &p(&secret), "-F", "raw", &p(&header), "1M"]);
    // The guest's 8 MiB raw disk, whose first cluster it made that header.
    let guest = s.path("guest.img");
    write_at(&guest, 0, &Rng::new(81).bytes(8 << 20));
    write_at(&guest, 0, &fs::read(&header).unwrap()[..65536]);
    let before = repo_state(&repo);

    let out = Ingest::new(&repo, "vm").disk("sda", &guest).run();
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.describe());
    assert!(out.stderr.contains("--format sda=raw") && out.stderr.contains("--format sda=qcow2"), "{}", out.describe());
    assert_eq!(repo_state(&repo), before, "nothing recorded");
    for (arg, says) in [("sda=vmdk", "raw or qcow2"), ("sdb=raw", "not in this ingest")] {
        let out = Ingest::new(&repo, "vm").disk("sda", &guest).arg("--format").arg(arg).run();
        assert_eq!(out.code, Some(1), "{}", out.describe());
        assert!(out.stderr.contains(says), "{}", out.describe());
    }
    let out = Ingest::new(&repo, "vm").disk("sda", &guest).arg("--format").arg("sda=raw").arg("--format").arg("sda=qcow2").run();
    assert!(out.stderr.contains("two formats"), "{}", out.describe());
    assert_eq!(repo_state(&repo), before, "nothing recorded");

    Ingest::new(&repo, "vm").disk("sda", &guest).arg("--format").arg("sda=raw").run().ok();
    let restored = s.path("restored.raw");
    cbtfs(&["export", &p(&repo), "vm", "latest", "sda", &p(&restored)]).ok();
    assert_same_file(&restored, &guest);

    // A real qcow2 image under another name: taken for qcow2 when told.
    let (raw, q) = raw_and_qcow2(&s, 8 << 20, 1 << 20, 2 << 20, 82);
    let img = s.path("vm-disk.img");
    fs::rename(&q, &img).unwrap();
    assert_eq!(Ingest::new(&repo, "vm2").disk("sda", &img).run().code, Some(1));
    Ingest::new(&repo, "vm2").disk("sda", &img).arg("--format").arg("sda=qcow2").run().ok();
    let restored = s.path("restored2.raw");
    cbtfs(&["export", &p(&repo), "vm2", "latest", "sda", &p(&restored)]).ok();
    assert_same_file(&restored, &raw);
}
