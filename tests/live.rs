//! The mount while the repository changes, its read-only nature, and how
//! it ends (umount, SIGTERM, SIGINT).

mod common;

use common::*;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::time::Duration;

#[test]
fn new_point_appears_without_remount() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let mut rng = Rng::new(0x11fe);
    let src = s.path("sda.raw");
    write_at(&src, 0, &rng.bytes(2 * MIB as usize + 1));
    let v1 = s.path("v1.raw");
    save_copy(&src, &v1);
    Ingest::new(&repo, "vm1").disk("sda", &src).checkpoint("c1").run().ok();
    let p1 = latest_point(&repo, "vm1");

    let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
    assert_latest(&fuse.machine_dir("vm1"), &p1);
    // A handle opened on point 1 before the next ingest.
    let held = File::open(fuse.image("vm1", &p1, "sda")).unwrap();
    let mut buf = vec![0u8; 4096];
    held.read_exact_at(&mut buf, 0).unwrap();

    write_at(&src, 100_000, &rng.bytes(300_000));
    Ingest::new(&repo, "vm1").disk("sda", &src).since("c1").checkpoint("c2").run().ok();
    let p2 = latest_point(&repo, "vm1");
    assert_ne!(p1, p2);
    let dir2 = fuse.point_dir("vm1", &p2);
    assert!(
        wait_until(Duration::from_secs(10), || dir2.is_dir()),
        "new point {p2} did not appear in the live mount"
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            fs::read_link(fuse.machine_dir("vm1").join("latest"))
                .is_ok_and(|t| t == std::path::Path::new(&p2))
        }),
        "latest did not move to {p2}"
    );
    assert_same_file(&fuse.image("vm1", &p2, "sda"), &src);
    assert_same_file(&fuse.image("vm1", &p1, "sda"), &v1);
    let mut all = vec![0u8; 2 * MIB as usize + 1];
    held.read_exact_at(&mut all, 0).unwrap();
    assert_eq!(all, fs::read(&v1).unwrap(), "handle opened before the ingest reads wrong");
    drop(held);

    // A machine that did not exist when mounting.
    let other = s.path("other.raw");
    write_at(&other, 0, &rng.bytes(70_000));
    Ingest::new(&repo, "vm2").disk("vdb", &other).run().ok();
    let q1 = latest_point(&repo, "vm2");
    let img = fuse.image("vm2", &q1, "vdb");
    assert!(
        wait_until(Duration::from_secs(10), || img.is_file()),
        "new machine vm2 did not appear in the live mount"
    );
    assert_same_file(&img, &other);
    assert_eq!(dir_names(&fuse.mp), ["vm1", "vm2"]);

    let out = fuse.unmount();
    assert_eq!(out.code, Some(0), "{}", out.describe());
}

#[test]
fn mount_is_read_only() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let src = s.path("sda.raw");
    write_at(&src, 0, &Rng::new(5).bytes(300_000));
    Ingest::new(&repo, "vm1").disk("sda", &src).run().ok();
    let before = repo_state(&repo);

    let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
    let pt = latest_point(&repo, "vm1");
    let img = fuse.image("vm1", &pt, "sda");
    assert!(OpenOptions::new().write(true).open(&img).is_err(), "image opened for writing");
    assert!(File::create(fuse.point_dir("vm1", &pt).join("new")).is_err());
    assert!(fs::create_dir(fuse.mp.join("vm3")).is_err());
    assert!(fs::remove_file(&img).is_err());
    assert!(fs::rename(&img, fuse.point_dir("vm1", &pt).join("x.img")).is_err());
    assert_same_file(&img, &src);
    let out = fuse.unmount().ok();
    assert!(!out.stderr.contains("warning"), "{}", out.describe());
    assert_eq!(before, repo_state(&repo));

    // Over a directory with files: they are hidden while it runs, and the
    // user is told; afterwards they are there as before.
    let mp = s.mnt("full");
    fs::create_dir_all(&mp).unwrap();
    fs::write(mp.join("notes.txt"), b"mine").unwrap();
    let fuse = FuseMount::start(&repo, &mp);
    assert!(!fuse.mp.join("notes.txt").exists());
    let out = fuse.unmount().ok();
    assert!(out.stderr.contains("is not empty; its files are hidden while the mount runs"), "{}", out.describe());
    assert_eq!(fs::read(mp.join("notes.txt")).unwrap(), b"mine");
}

#[test]
fn mount_of_empty_repository() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
    assert!(dir_names(&fuse.mp).is_empty());
    let out = fuse.unmount();
    assert_eq!(out.code, Some(0), "{}", out.describe());
}

fn ends_on_signal(sig: &str) {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let src = s.path("sda.raw");
    write_at(&src, 0, &Rng::new(6).bytes(200_000));
    Ingest::new(&repo, "vm1").disk("sda", &src).run().ok();
    let mp = s.mnt("fuse");
    let fuse = FuseMount::start(&repo, &mp);
    assert_same_file(&fuse.image("vm1", &latest_point(&repo, "vm1"), "sda"), &src);
    let out = fuse.signal_and_wait(sig);
    assert_eq!(out.code, Some(0), "mount must exit 0 on SIG{sig}:\n{}", out.describe());
    assert!(!is_fuse_mounted(&mp), "still mounted after SIG{sig}");
    assert!(dir_names(&mp).is_empty(), "mountpoint not empty after SIG{sig}");
}

#[test]
fn sigterm_unmounts_and_exits_0() {
    ends_on_signal("TERM");
}

#[test]
fn sigint_unmounts_and_exits_0() {
    ends_on_signal("INT");
}

/// While an ingest runs, the mount keeps reading existing points right,
/// and neither the mount nor `list` shows the unfinished point.
#[test]
fn reads_during_ingest_stay_correct() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let mut rng = Rng::new(0xd0);
    let small = s.path("small.raw");
    write_at(&small, 0, &rng.bytes(8 * MIB as usize));
    Ingest::new(&repo, "vm1").disk("sda", &small).run().ok();
    let p1 = latest_point(&repo, "vm1");
    let big = s.path("big.raw");
    let mut buf = vec![0u8; 4 * MIB as usize];
    for i in 0..32u64 {
        rng.fill(&mut buf);
        write_at(&big, i * 4 * MIB, &buf);
    }

    let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
    let img1 = fuse.image("vm1", &p1, "sda");
    let mut ing = Ingest::new(&repo, "vm1")
        .disk("sda", &small)
        .disk("sdb", &big)
        .spawn(s.dir.path(), "ingest");
    // A point shows only once committed, complete: a listed second point
    // must already have both disks at their full sizes.
    let mut rounds_while_running = 0;
    while ing.try_wait().is_none() {
        assert_same_file(&img1, &small);
        let pts = points(&repo, "vm1");
        if pts.len() > 1 {
            assert_eq!(pts.len(), 2);
            assert_eq!(point_disk(&pts[1], "sda")["size"].as_u64(), Some(8 * MIB));
            assert_eq!(point_disk(&pts[1], "sdb")["size"].as_u64(), Some(128 * MIB));
            break;
        }
        assert_eq!(pts[0]["name"], p1.as_str());
        let entries = dir_names(&fuse.machine_dir("vm1"));
        if entries.len() > 2 {
            // Committed between the listing and now.
            assert_eq!(points(&repo, "vm1").len(), 2, "mount shows an unlisted point: {entries:?}");
            break;
        }
        assert_eq!(entries, [p1.clone(), "latest".to_string()]);
        rounds_while_running += 1;
    }
    let out = ing.wait();
    assert_eq!(out.code, Some(0), "{}", out.describe());
    // Not asserted (a fast machine may finish first); shown for the record.
    eprintln!("{rounds_while_running} read rounds during the ingest");
    let p2 = latest_point(&repo, "vm1");
    let img2 = fuse.image("vm1", &p2, "sdb");
    assert!(wait_until(Duration::from_secs(10), || img2.is_file()));
    assert_same_file(&img2, &big);
    assert_same_file(&img1, &small);
}

/// SIGTERM ends the mount even while a file in it is open.
#[test]
fn sigterm_with_open_file() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let src = s.path("sda.raw");
    write_at(&src, 0, &Rng::new(7).bytes(200_000));
    Ingest::new(&repo, "vm1").disk("sda", &src).run().ok();
    let mp = s.mnt("fuse");
    let fuse = FuseMount::start(&repo, &mp);
    let held = File::open(fuse.image("vm1", &latest_point(&repo, "vm1"), "sda")).unwrap();
    let mut buf = [0u8; 512];
    held.read_exact_at(&mut buf, 0).unwrap();
    let out = fuse.signal_and_wait("TERM");
    assert_eq!(out.code, Some(0), "mount must exit 0 on SIGTERM:\n{}", out.describe());
    assert!(!is_fuse_mounted(&mp), "still mounted after SIGTERM");
    drop(held);
}

/// Runs `prog ARGS` as the user nobody, who may read the repositories of
/// these tests but not write them.
fn as_nobody(prog: &str, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", prog]).args(args);
    c
}

/// A user who may read the repository but not write it (here: nobody)
/// mounts it while its owner adds points: the mount shows the new points,
/// an old point keeps its bytes while the owner's ingests rewrite the
/// index beneath it, and the owner cannot forget points the mount shows.
#[test]
fn mount_by_a_user_who_cannot_write_follows_the_owner() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new();
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // Distributions ship /dev/fuse open to every user; some machines do
    // not. Opened for the test, and put back as it was afterwards.
    struct Restore(fs::Permissions);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = fs::set_permissions("/dev/fuse", self.0.clone());
        }
    }
    let _restore = Restore(fs::metadata("/dev/fuse").unwrap().permissions());
    fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
    let repo = s.repo();
    init_repo(&repo, None);
    let mut rng = Rng::new(0x0b0d);
    let src = s.path("sda.raw");
    // 1024 blocks: enough index pages for the owner's commits to move rows
    // between them.
    write_at(&src, 0, &rng.bytes(64 * MIB as usize));
    let v1 = s.path("v1.raw");
    save_copy(&src, &v1);
    Ingest::new(&repo, "vm1").disk("sda", &src).run().ok();
    let p1 = latest_point(&repo, "vm1");

    let mp = s.mnt("nobody");
    fs::create_dir_all(&mp).unwrap();
    nix::unistd::chown(&mp, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let log = s.path("nobody-mount.stderr");
    let mut mount = as_nobody(bin(), &["mount", &p(&repo), &p(&mp)])
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mounted = wait_until(Duration::from_secs(10), || is_fuse_mounted(&mp));
    let cmp_as_nobody = |img: &std::path::Path, want: &std::path::Path| {
        let out = as_nobody("cmp", &[&p(img), &p(want)]).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let ls_as_nobody = |dir: &std::path::Path| {
        let out = as_nobody("ls", &[&p(dir)]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect::<Vec<_>>()
    };
    if mounted {
        let mut results = Vec::new();
        let img1 = mp.join("vm1").join(&p1).join("sda.img");
        results.push(("point 1 before", cmp_as_nobody(&img1, &v1)));
        for _ in 0..5 {
            for _ in 0..300 {
                let at = rng.below(1024) * 65536;
                write_at(&src, at, &rng.bytes(65536));
            }
            Ingest::new(&repo, "vm1").disk("sda", &src).run().ok();
        }
        let newest = latest_point(&repo, "vm1");
        let listed = ls_as_nobody(&mp.join("vm1"));
        results.push(("point 1 after", cmp_as_nobody(&img1, &v1)));
        results.push(("newest point", cmp_as_nobody(&mp.join("vm1").join(&newest).join("sda.img"), &src)));
        let forget = cbtfs(&["forget", &p(&repo), "vm1", &p1]);
        let _ = std::process::Command::new("umount").arg(&mp).status();
        let _ = mount.wait();
        for (what, (same, out)) in results {
            assert!(same, "{what}: the mount must read the bytes that were backed up: {out}");
        }
        assert!(listed.contains(&newest), "the mount must show the owner's newest point {newest}: {listed:?}");
        assert_eq!(forget.code, Some(4), "forget must wait for the mount: {}", forget.describe());
        assert_eq!(points(&repo, "vm1").len(), 6, "nothing forgotten");
    } else {
        let _ = mount.kill();
        let _ = mount.wait();
        panic!("nobody's mount did not start: {}", fs::read_to_string(&log).unwrap_or_default());
    }
}

/// In a repository from before writers left the index's log files and the
/// readers' lock file behind, a user who cannot write it gets one line
/// saying what to do, not a reader that could miss the owner's commits;
/// once the owner has run `cbtfs list`, that user can read it.
#[test]
fn a_user_who_cannot_write_an_older_repository_is_told_what_to_do() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new();
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let repo = s.repo();
    init_repo(&repo, None);
    let src = s.path("sda.raw");
    write_at(&src, 0, &Rng::new(0x01d).bytes(MIB as usize));
    Ingest::new(&repo, "vm1").disk("sda", &src).run().ok();
    let run = |args: &[&str]| {
        let o = as_nobody(bin(), args).output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string())
    };
    let r = p(&repo);

    // Older versions of cbtfs deleted the log as they ended: fold it in
    // (gc does as it ends), then remove both files.
    cbtfs(&["gc", &r]).ok();
    assert_eq!(fs::metadata(repo.join("index.sqlite-wal")).unwrap().len(), 0);
    for f in ["index.sqlite-wal", "index.sqlite-shm"] {
        fs::remove_file(repo.join(f)).unwrap();
    }
    let (code, _, err) = run(&["list", &r]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("not by this user"), "{err}");
    assert!(err.contains(&format!("cbtfs list {r}")), "{err}");

    cbtfs(&["list", &r]).ok();
    fs::remove_file(repo.join("readers")).unwrap();
    let (code, _, err) = run(&["verify", &r]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("readers") && err.contains(&format!("cbtfs list {r}")), "{err}");

    cbtfs(&["list", &r]).ok();
    let (code, out, err) = run(&["list", &r, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"vm1\""), "{out}");
    let (code, _, err) = run(&["verify", &r]);
    assert_eq!(code, Some(0), "{err}");

    // With its log files there, any other failure is reported as it is.
    fs::set_permissions(repo.join("index.sqlite"), fs::Permissions::from_mode(0o600)).unwrap();
    let (code, _, err) = run(&["list", &r]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cannot open the repository index") && !err.contains("not by this user"), "{err}");
}
