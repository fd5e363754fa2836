//! Restores from storage that cannot be written: a backup disk attached
//! read-only, a read-only snapshot or export. Listing, verifying and
//! mounting must work; adding points must be refused clearly; and a
//! repository whose index still has commits in its log must show them, or
//! be refused where they cannot be read, never be shown without them.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};

/// A read-only bind mount of `src` at `dst`, undone on drop.
struct ReadOnlyView {
    dst: PathBuf,
}

impl ReadOnlyView {
    fn new(src: &Path, dst: &Path) -> ReadOnlyView {
        fs::create_dir_all(dst).unwrap();
        sh("mount", &["--bind", &p(src), &p(dst)]);
        sh("mount", &["-o", "remount,bind,ro", &p(dst)]);
        ReadOnlyView { dst: dst.to_path_buf() }
    }
}

impl Drop for ReadOnlyView {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.dst).status();
    }
}

#[test]
fn read_only_repository_lists_verifies_and_mounts() {
    let s = Scratch::new();
    let store = s.path("store");
    let repo = store.join("repo");
    fs::create_dir_all(&store).unwrap();
    init_repo(&repo, None);
    let disk = s.path("sda.raw");
    write_at(&disk, 0, &Rng::new(1).bytes(3 << 20));
    let first = s.path("first.raw");
    save_copy(&disk, &first);
    Ingest::new(&repo, "vm1").disk("sda", &disk).checkpoint("c1").run().ok();
    write_at(&disk, 1 << 20, &Rng::new(2).bytes(100_000));
    Ingest::new(&repo, "vm1").disk("sda", &disk).checkpoint("c2").run().ok();
    let listing = list_json(&repo);

    let view = ReadOnlyView::new(&store, &s.path("view"));
    let ro = view.dst.join("repo");
    assert_eq!(list_json(&ro), listing, "the read-only listing is the same");
    verify_ok(&ro);
    let fuse = FuseMount::start(&ro, &s.mnt("fuse"));
    let names = point_names(&ro, "vm1");
    assert_same_file(&fuse.image("vm1", &names[0], "sda"), &first);
    assert_same_file(&fuse.image("vm1", &names[1], "sda"), &disk);
    drop(fuse);

    let out = Ingest::new(&ro, "vm1").disk("sda", &disk).run();
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.describe());
    assert!(out.stderr.contains("cannot be written here"), "{}", out.describe());
    drop(view);
    assert_eq!(list_json(&repo), listing, "nothing changed");
}

#[test]
fn read_only_repository_with_commits_in_its_log_shows_them_or_is_refused() {
    let s = Scratch::new();
    let repo = s.path("store").join("repo");
    fs::create_dir_all(repo.parent().unwrap()).unwrap();
    init_repo(&repo, None);
    let disk = s.path("sda.raw");
    write_at(&disk, 0, &Rng::new(3).bytes(1 << 20));
    Ingest::new(&repo, "vm1").disk("sda", &disk).checkpoint("c1").run().ok();

    // A copy taken while a writer had a commit only in the log, as a crash
    // at that moment leaves it: a machine that exists only in the WAL.
    let copy = s.path("copy").join("repo");
    let script = r#"
import shutil, sqlite3, sys
src, dst = sys.argv[1], sys.argv[2]
c = sqlite3.connect(src + "/index.sqlite")
c.execute("PRAGMA wal_autocheckpoint=0")
c.execute("INSERT INTO machines(name) VALUES ('only-in-the-log')")
c.commit()
shutil.copytree(src, dst)
c.close()
"#;
    sh("python3", &["-c", script, &p(&repo), &p(&copy)]);
    assert!(fs::metadata(copy.join("index.sqlite-wal")).unwrap().len() > 0, "the copy must have a non-empty log");
    let machines = |out: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(out).unwrap();
        v["machines"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_string()).collect()
    };

    // With the log's shared-memory file beside it, SQLite's read-only
    // reader reads the log: the commit is shown, not hidden.
    let view = ReadOnlyView::new(copy.parent().unwrap(), &s.path("view"));
    let out = cbtfs(&["list", &p(&view.dst.join("repo")), "--json"]).ok();
    assert!(machines(&out.stdout).contains(&"only-in-the-log".to_string()), "{}", out.describe());
    drop(view);

    // Without it (a copy that left it out), the log cannot be followed
    // here, and the repository must be refused, not shown without it.
    let bare = s.path("bare").join("repo");
    fs::create_dir_all(bare.parent().unwrap()).unwrap();
    sh("cp", &["-a", &p(&copy), &p(&bare)]);
    fs::remove_file(bare.join("index.sqlite-shm")).unwrap();
    let view = ReadOnlyView::new(bare.parent().unwrap(), &s.path("view2"));
    let out = cbtfs(&["list", &p(&view.dst.join("repo")), "--json"]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(out.stderr.contains("index.sqlite-wal"), "{}", out.describe());
    drop(view);

    // Where it can be written, the log is folded in and nothing is lost.
    assert!(machines(&list_json(&bare).to_string()).contains(&"only-in-the-log".to_string()));
    let view = ReadOnlyView::new(bare.parent().unwrap(), &s.path("view3"));
    let out = cbtfs(&["list", &p(&view.dst.join("repo")), "--json"]).ok();
    assert!(machines(&out.stdout).contains(&"only-in-the-log".to_string()), "{}", out.describe());
}
