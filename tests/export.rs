//! `cbtfs export`: a point's disk as a sparse raw file or a qcow2 image,
//! byte-exact; bad input and a full target refused, leaving no file behind.

mod common;

use common::*;
use std::fs;
use std::process::Command;
use std::time::Duration;

#[test]
fn export_raw_and_qcow2_byte_exact() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let disk = s.path("sda.raw");
    set_size(&disk, 64 << 20);
    write_at(&disk, 1 << 20, &Rng::new(1).bytes(3 << 20));
    write_at(&disk, 40 << 20, &Rng::new(2).bytes(100_000));
    let first = s.path("first.raw");
    save_copy(&disk, &first);
    Ingest::new(&repo, "vm1").disk("sda", &disk).checkpoint("c1").run().ok();
    write_at(&disk, 10 << 20, &Rng::new(3).bytes(1 << 20));
    // More than the 16 MiB after which the export asks for writeback, so
    // that it does so in the middle of the file.
    write_at(&disk, 44 << 20, &Rng::new(6).bytes(18 << 20));
    Ingest::new(&repo, "vm1").disk("sda", &disk).checkpoint("c2").run().ok();

    let out = s.path("latest.img");
    let r = cbtfs(&["export", &p(&repo), "vm1", "latest", "sda", &p(&out)]).ok();
    assert!(r.stderr.is_empty(), "no progress output when stderr is not a terminal: {}", r.describe());
    assert_same_file(&out, &disk);
    // 22.1 MiB of data in a 64 MiB disk.
    assert!(disk_usage(&out) < 24 << 20, "zero stretches stay holes: {} bytes allocated", disk_usage(&out));

    let old = s.path("first.img");
    let v = cbtfs(&["export", &p(&repo), "vm1", "1", "sda", &p(&old), "--json"]).ok().stdout_json();
    assert_same_file(&old, &first);
    assert_eq!(v["size"], 64 << 20);
    // Data only where the disk is not zero, to the 4 KiB page: 3 MiB at
    // 1 MiB and 25 pages at 40 MiB; the rest of the file is holes.
    assert_eq!(v["data_bytes"], (3 << 20) + 25 * 4096, "{v}");

    let q = s.path("latest.qcow2");
    cbtfs(&["export", &p(&repo), "vm1", "latest", "sda", &p(&q), "--format", "qcow2"]).ok();
    let st = Command::new("qemu-img").args(["compare", "-q", "-f", "qcow2", "-F", "raw"]).arg(&q).arg(&disk).status().unwrap();
    assert!(st.success(), "the qcow2 export must hold the same disk");
    let leftovers: Vec<String> = fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn export_bad_input_leaves_nothing() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let disk = s.path("sda.raw");
    write_at(&disk, 0, &Rng::new(4).bytes(1 << 20));
    Ingest::new(&repo, "vm1").disk("sda", &disk).run().ok();
    let existing = s.path("existing.img");
    fs::write(&existing, b"keep me").unwrap();
    let r = p(&repo);
    let out = p(&s.path("new.img"));
    let ex = p(&existing);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["export", &r, "vm1", "latest", "sda", &ex], "exists"),
        (vec!["export", &r, "vm1", "latest", "sdz", &out], "no disk sdz"),
        (vec!["export", &r, "vm1", "7", "sda", &out], "no restore point 7"),
        (vec!["export", &r, "vm9", "latest", "sda", &out], "no machine named vm9"),
    ];
    for (args, needle) in cases {
        let o = cbtfs(&args);
        assert_eq!(o.code, Some(1), "{args:?}:\n{}", o.describe());
        assert!(o.stderr.contains(needle), "{args:?} must say {needle:?}:\n{}", o.describe());
        assert!(!s.path("new.img").exists(), "{args:?} created the output");
    }
    assert_eq!(fs::read(&existing).unwrap(), b"keep me");
    let o = cbtfs(&["export", &r, "vm1", "latest", "sda", &out, "--format", "vmdk"]);
    assert_eq!(o.code, Some(2), "{}", o.describe());
}

/// Targets that cannot be written are refused before anything is copied,
/// with what to do; names qemu-img would take for something else than a
/// file, and names near the file system's limit, work.
#[test]
fn export_targets_as_a_user_names_them() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    // Not a whole number of sectors: a raw image holds it, qcow2 cannot.
    let disk = s.path("sda.raw");
    write_at(&disk, 0, &Rng::new(44).bytes(100_000));
    Ingest::new(&repo, "vm1").disk("sda", &disk).run().ok();
    let r = p(&repo);
    let out_dir = s.path("out");
    fs::create_dir(&out_dir).unwrap();
    let export = |target: &str, format: &str| {
        let o = Command::new(bin())
            .args(["export", &r, "vm1", "latest", "sda", target, "--format", format])
            .current_dir(&out_dir)
            .output()
            .unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };

    // A time in the name: qemu-img reads `NAME:` as a protocol.
    let (code, err) = export("web01-2026-12-01T10:00.qcow2", "qcow2");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("512-byte sectors") && err.contains("raw"), "{err}");
    let (code, err) = export("web01-2026-12-01T10:00.img", "raw");
    assert_eq!(code, Some(0), "{err}");
    assert_same_file(&out_dir.join("web01-2026-12-01T10:00.img"), &disk);

    let long = "x".repeat(250);
    let (code, err) = export(&long, "raw");
    assert_eq!(code, Some(0), "{err}");
    assert_same_file(&out_dir.join(&long), &disk);

    fs::write(out_dir.join("file"), b"").unwrap();
    fs::create_dir(out_dir.join("dir")).unwrap();
    let dev = sh("losetup", &["-f", "--show", &p(&disk)]).trim().to_string();
    // A disk as /dev/disk/by-id names it: a symlink to the device.
    let by_id = s.path("by-id-disk");
    std::os::unix::fs::symlink(&dev, &by_id).unwrap();
    let cases = [
        ("newdir/", "not a file name"),
        ("dir", "dir is a directory"),
        ("missing/sda.img", "cannot write to directory missing: No such file"),
        ("file/sda.img", "file is not a directory"),
        (dev.as_str(), "is a block device"),
        (by_id.to_str().unwrap(), "is a block device"),
        ("file", "file exists"),
    ];
    for (target, needle) in cases {
        let (code, err) = export(target, "raw");
        assert_eq!(code, Some(1), "{target}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{target} must say {needle:?}: {err}");
    }
    sh("losetup", &["-d", &dev]);
    let mut left: Vec<String> = fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["dir", "file", "web01-2026-12-01T10:00.img", long.as_str()]);

    // A disk of whole sectors, to a qcow2 named with a time.
    let disk2 = s.path("sdb.raw");
    write_at(&disk2, 0, &Rng::new(45).bytes(1 << 20));
    Ingest::new(&repo, "vm1").disk("sda", &disk2).run().ok();
    let (code, err) = export("web01-2026-12-01T10:00.qcow2", "qcow2");
    assert_eq!(code, Some(0), "{err}");
    let st = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "qcow2", "-F", "raw", "./web01-2026-12-01T10:00.qcow2"])
        .arg(&disk2)
        .current_dir(&out_dir)
        .status()
        .unwrap();
    assert!(st.success(), "the qcow2 export must hold the same disk");
}

/// A target file system that fills up mid-export: the writer's error is
/// reported (exit 1, "cannot write"), and neither the output nor its
/// temporary file is left behind.
#[test]
fn export_to_a_full_file_system_fails_cleanly() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let disk = s.path("sda.raw");
    set_size(&disk, 64 << 20);
    write_at(&disk, 5 << 20, &Rng::new(5).bytes(12 << 20));
    Ingest::new(&repo, "vm1").disk("sda", &disk).run().ok();
    let small = LoopMount::of_type("tmpfs", "size=4m", &s.mnt("small"));
    let out = small.mp.join("sda.img");
    let o = cbtfs(&["export", &p(&repo), "vm1", "latest", "sda", &p(&out)]);
    assert_eq!(o.code, Some(1), "{}", o.describe());
    assert!(o.stderr.contains("cannot write") && o.stderr.contains("No space left"), "{}", o.describe());
    let left: Vec<_> = fs::read_dir(&small.mp).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// exFAT (here its FUSE driver, on a loop device), undone on drop.
struct ExFat {
    mp: std::path::PathBuf,
    dev: String,
}

impl ExFat {
    fn new(image: &std::path::Path, mp: &std::path::Path) -> ExFat {
        sh("mkfs.exfat", &[&p(image)]);
        let dev = sh("losetup", &["-f", "--show", &p(image)]).trim().to_string();
        fs::create_dir_all(mp).unwrap();
        let fat = ExFat { mp: mp.to_path_buf(), dev };
        sh("mount", &["-t", "exfat-fuse", &fat.dev, &p(mp)]);
        fat
    }
}

impl Drop for ExFat {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mp).status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// Restores are often written to a USB disk formatted exFAT, which has no
/// hard links (and whose FUSE driver has no `RENAME_NOREPLACE` either):
/// the export lands there whole, under its name, and still never replaces
/// a file already there.
#[test]
fn export_to_an_exfat_file_system() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let disk = s.path("sda.raw");
    set_size(&disk, 16 << 20);
    write_at(&disk, 1 << 20, &Rng::new(7).bytes(3 << 20));
    Ingest::new(&repo, "vm1").disk("sda", &disk).run().ok();
    let usb = s.path("usb.img");
    set_size(&usb, 64 << 20);
    let fat = ExFat::new(&usb, &s.mnt("usb"));
    let probe = fat.mp.join("probe");
    fs::write(&probe, b"").unwrap();
    assert!(fs::hard_link(&probe, fat.mp.join("probe2")).is_err(), "the test needs a file system without hard links");
    fs::remove_file(&probe).unwrap();

    let out = fat.mp.join("sda.img");
    cbtfs(&["export", &p(&repo), "vm1", "latest", "sda", &p(&out)]).ok();
    assert_same_file(&out, &disk);
    let o = cbtfs(&["export", &p(&repo), "vm1", "latest", "sda", &p(&out)]);
    assert_eq!(o.code, Some(1), "{}", o.describe());
    assert!(o.stderr.contains("exists"), "{}", o.describe());
    assert_same_file(&out, &disk);
    let names: Vec<_> = fs::read_dir(&fat.mp).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["sda.img"], "nothing else left on the disk");
}

/// Ctrl-C (SIGINT) or SIGTERM during an export: exit 1 saying so, and
/// nothing left on the target, not even the hidden temporary file, which
/// would be as large as the disk's data.
#[test]
fn interrupted_export_leaves_nothing() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let disk = s.path("sda.raw");
    write_at(&disk, 0, &Rng::new(8).bytes(128 << 20));
    Ingest::new(&repo, "vm1").disk("sda", &disk).run().ok();
    let target = s.path("target");
    fs::create_dir(&target).unwrap();
    // The third is caught while qemu-img converts (or just after).
    for (i, (sig, format, stage)) in [("INT", "raw", ".sda.img.raw-"), ("TERM", "raw", ".sda.img.raw-"), ("TERM", "qcow2", ".sda.img.qcow2-")]
        .into_iter()
        .enumerate()
    {
        let out = target.join("sda.img");
        let args = ["export", &p(&repo), "vm1", "latest", "sda", &p(&out), "--format", format];
        let ex = spawn_cbtfs(&args, s.dir.path(), &format!("export{i}"));
        let started = std::time::Instant::now();
        // Caught while it writes its temporary file, and held there.
        let at_stage = || fs::read_dir(&target).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with(stage));
        while !at_stage() && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(2));
        }
        send_signal(ex.pid(), "STOP");
        let during: Vec<_> = fs::read_dir(&target).unwrap().map(|e| e.unwrap().file_name()).collect();
        send_signal(ex.pid(), sig);
        send_signal(ex.pid(), "CONT");
        let o = ex.wait_timeout(Duration::from_secs(30));
        assert!(!during.is_empty(), "the export never started writing: {}", o.describe());
        assert!(during.iter().all(|n| n.to_string_lossy().starts_with('.')), "caught before it finished: {during:?}");
        assert_eq!(o.code, Some(1), "{}", o.describe());
        assert!(o.stderr.contains("interrupted"), "{}", o.describe());
        let left: Vec<_> = fs::read_dir(&target).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "SIG{sig} during a {format} export left {left:?}");
    }

    // SIGKILL (as a second Ctrl-C ends it) leaves the temporary file; the
    // next export to that name removes it, but not one of a process that
    // runs, nor other files.
    let out = target.join("sda.img");
    let mut ex = spawn_cbtfs(&["export", &p(&repo), "vm1", "latest", "sda", &p(&out)], s.dir.path(), "killed");
    let killed = format!(".sda.img.raw-{}", ex.pid());
    let started = std::time::Instant::now();
    while !target.join(&killed).exists() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(2));
    }
    ex.kill();
    assert!(target.join(&killed).exists(), "the killed export left no temporary file");
    let running = format!(".sda.img.qcow2-{}", std::process::id());
    for other in [running.as_str(), ".sda.img.raw-12x", ".other.img.raw-1"] {
        fs::write(target.join(other), b"keep").unwrap();
    }
    cbtfs(&["export", &p(&repo), "vm1", "latest", "sda", &p(&out)]).ok();
    assert_same_file(&out, &disk);
    let mut left: Vec<String> = fs::read_dir(&target).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    let mut want = vec![".other.img.raw-1".to_string(), ".sda.img.raw-12x".to_string(), running, "sda.img".to_string()];
    want.sort();
    assert_eq!(left, want);
}
