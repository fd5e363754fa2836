//! When a changed-block map is trusted and when a full scan is done.
//!
//! A map tied to the machine's latest checkpoint is trusted: a block the
//! map leaves out keeps its previous content even if the source changed it.
//! That is how these tests see that the map, and only the map, was read.
//! Any other case falls back to a full scan, which must see every change.

mod common;

use common::*;
use std::path::{Path, PathBuf};

const BS: u64 = 64 * KIB;

struct Setup {
    s: Scratch,
    repo: PathBuf,
    src: PathBuf,
    /// Copy of the source at point 1.
    v1: PathBuf,
    rng: Rng,
}

/// A repository with one full point (checkpoint c1) of a 1 MiB random disk.
fn setup(seed: u64) -> Setup {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let mut rng = Rng::new(seed);
    let src = s.path("sda.raw");
    write_at(&src, 0, &rng.bytes(MIB as usize));
    let v1 = s.path("v1.raw");
    save_copy(&src, &v1);
    Ingest::new(&repo, "vm1").disk("sda", &src).checkpoint("c1").run().ok();
    Setup { s, repo, src, v1, rng }
}

fn map_file(s: &Scratch, name: &str, ext: &[(u64, u64)]) -> PathBuf {
    let m = s.path(name);
    write_map(&m, ext);
    m
}

fn image(fuse: &FuseMount, repo: &Path, idx: usize) -> PathBuf {
    let names = point_names(repo, "vm1");
    fuse.image("vm1", &names[idx], "sda")
}

#[test]
fn tied_map_is_trusted() {
    let mut t = setup(1);
    let b1 = t.rng.bytes(BS as usize);
    let b4 = t.rng.bytes(BS as usize);
    write_at(&t.src, BS, &b1);
    write_at(&t.src, 4 * BS, &b4);
    // The map names block 1 only.
    let m = map_file(&t.s, "m.json", &[(BS, BS)]);
    let out = Ingest::new(&t.repo, "vm1")
        .disk("sda", &t.src)
        .changes("sda", &m)
        .since("c1")
        .checkpoint("c2")
        .run()
        .ok();
    assert!(!out.stderr.contains("full scan"), "{}", out.describe());
    let pts = points(&t.repo, "vm1");
    assert_eq!(pts[1]["kind"], "map", "{}", pts[1]);
    assert_eq!(point_disk(&pts[1], "sda")["kind"], "map");

    let fuse = FuseMount::start(&t.repo, &t.s.mnt("fuse"));
    let img2 = image(&fuse, &t.repo, 1);
    assert_bytes_at(&img2, BS, &b1);
    // Block 4 was left out of the map: the previous content shows.
    let old4 = read_at(&t.v1, 4 * BS, BS as usize).unwrap();
    assert_bytes_at(&img2, 4 * BS, &old4);
    // Everything else is the previous content too.
    let old0 = read_at(&t.v1, 0, BS as usize).unwrap();
    assert_bytes_at(&img2, 0, &old0);
    let old_tail = read_at(&t.v1, 5 * BS, (MIB - 5 * BS) as usize).unwrap();
    assert_bytes_at(&img2, 5 * BS, &old_tail);
    // Point 1 is untouched.
    assert_same_file(&image(&fuse, &t.repo, 0), &t.v1);
}

#[test]
fn stale_since_scans() {
    let mut t = setup(2);
    // Point 2 tied to c1.
    let b1 = t.rng.bytes(BS as usize);
    write_at(&t.src, BS, &b1);
    let m = map_file(&t.s, "m2.json", &[(BS, BS)]);
    Ingest::new(&t.repo, "vm1")
        .disk("sda", &t.src)
        .changes("sda", &m)
        .since("c1")
        .checkpoint("c2")
        .run()
        .ok();
    // Point 3: the map is for c1 but the latest checkpoint is c2, and it
    // omits the change to block 6.
    let b6 = t.rng.bytes(BS as usize);
    write_at(&t.src, 6 * BS, &b6);
    let v3 = t.s.path("v3.raw");
    save_copy(&t.src, &v3);
    let m3 = map_file(&t.s, "m3.json", &[(2 * BS, BS)]);
    let out = Ingest::new(&t.repo, "vm1")
        .disk("sda", &t.src)
        .changes("sda", &m3)
        .since("c1")
        .checkpoint("c3")
        .run()
        .ok();
    assert!(out.warns_full_scan("sda"), "{}", out.describe());
    let pts = points(&t.repo, "vm1");
    assert_eq!(pts.len(), 3);
    assert_eq!(pts[2]["kind"], "scan");
    assert_eq!(point_disk(&pts[2], "sda")["kind"], "scan");
    let fuse = FuseMount::start(&t.repo, &t.s.mnt("fuse"));
    assert_same_file(&image(&fuse, &t.repo, 2), &v3);
}

#[test]
fn unknown_since_scans() {
    let mut t = setup(3);
    let b = t.rng.bytes(1000);
    write_at(&t.src, 777_777, &b);
    let m = map_file(&t.s, "m.json", &[]);
    let out = Ingest::new(&t.repo, "vm1")
        .disk("sda", &t.src)
        .changes("sda", &m)
        .since("no-such-checkpoint")
        .run()
        .ok();
    assert!(out.warns_full_scan("sda"), "{}", out.describe());
    assert_eq!(points(&t.repo, "vm1")[1]["kind"], "scan");
    let fuse = FuseMount::start(&t.repo, &t.s.mnt("fuse"));
    assert_same_file(&image(&fuse, &t.repo, 1), &t.src);
}

#[test]
fn map_without_since_scans() {
    let mut t = setup(4);
    let b = t.rng.bytes(5000);
    write_at(&t.src, 3 * BS - 2500, &b);
    let m = map_file(&t.s, "m.json", &[]);
    let out = Ingest::new(&t.repo, "vm1")
        .disk("sda", &t.src)
        .changes("sda", &m)
        .run()
        .ok();
    assert!(out.warns_full_scan("sda"), "{}", out.describe());
    assert_eq!(points(&t.repo, "vm1")[1]["kind"], "scan");
    let fuse = FuseMount::start(&t.repo, &t.s.mnt("fuse"));
    assert_same_file(&image(&fuse, &t.repo, 1), &t.src);
}

#[test]
fn no_map_scans_and_sees_every_change() {
    let mut t = setup(5);
    // Changes at odd offsets, including one zeroing a block out.
    write_at(&t.src, 12345, &t.rng.bytes(3));
    write_at(&t.src, 9 * BS, &vec![0u8; BS as usize]);
    write_at(&t.src, MIB - 1, &[0xAB]);
    let out = Ingest::new(&t.repo, "vm1")
        .disk("sda", &t.src)
        .since("c1")
        .checkpoint("c2")
        .run()
        .ok();
    assert!(out.warns_full_scan("sda"), "{}", out.describe());
    let fuse = FuseMount::start(&t.repo, &t.s.mnt("fuse"));
    assert_same_file(&image(&fuse, &t.repo, 1), &t.src);
    assert_same_file(&image(&fuse, &t.repo, 0), &t.v1);
}

/// A map for a disk the latest point does not have is not trusted: the
/// disk is new to the machine and gets a full backup.
#[test]
fn map_for_new_disk_is_full() {
    let mut t = setup(6);
    let sdb = t.s.path("sdb.raw");
    write_at(&sdb, 0, &t.rng.bytes(300_000));
    let m = map_file(&t.s, "m.json", &[(0, 4096)]);
    Ingest::new(&t.repo, "vm1")
        .disk("sda", &t.src)
        .disk("sdb", &sdb)
        .changes("sdb", &m)
        .changes("sda", &map_file(&t.s, "empty.json", &[]))
        .since("c1")
        .checkpoint("c2")
        .run()
        .ok();
    let pts = points(&t.repo, "vm1");
    assert_eq!(point_disk(&pts[1], "sdb")["kind"], "full", "{}", pts[1]);
    assert_eq!(point_disk(&pts[1], "sda")["kind"], "map", "{}", pts[1]);
    let fuse = FuseMount::start(&t.repo, &t.s.mnt("fuse"));
    let names = point_names(&t.repo, "vm1");
    assert_same_file(&fuse.image("vm1", &names[1], "sdb"), &sdb);
    assert_same_file(&fuse.image("vm1", &names[1], "sda"), &t.v1);
}

/// Map extents of any granularity: unaligned and spanning block boundaries.
#[test]
fn unaligned_map_extents() {
    let mut t = setup(7);
    let mut ext = Vec::new();
    for (off, len) in [(1u64, 1u64), (BS - 3, 7), (5 * BS + 1000, 3 * BS), (MIB - 10, 10)] {
        write_at(&t.src, off, &t.rng.bytes(len as usize));
        ext.push((off, len));
    }
    let m = map_file(&t.s, "m.json", &ext);
    let out = Ingest::new(&t.repo, "vm1")
        .disk("sda", &t.src)
        .changes("sda", &m)
        .since("c1")
        .run()
        .ok();
    assert!(!out.stderr.contains("full scan"), "{}", out.describe());
    let fuse = FuseMount::start(&t.repo, &t.s.mnt("fuse"));
    assert_same_file(&image(&fuse, &t.repo, 1), &t.src);
}

/// Blocks whose data was deallocated (punched holes) read as zeros
/// afterwards, whether found by a map or by a scan.
#[test]
fn punched_holes_read_as_zeros() {
    let t = setup(8);
    let punch = |off: u64, len: u64| {
        sh(
            "fallocate",
            &["--punch-hole", "--offset", &off.to_string(), "--length", &len.to_string(), &p(&t.src)],
        );
    };
    // By map: blocks 2..4 punched, the map names them.
    punch(2 * BS, 2 * BS);
    let m = map_file(&t.s, "m.json", &[(2 * BS, 2 * BS)]);
    Ingest::new(&t.repo, "vm1")
        .disk("sda", &t.src)
        .changes("sda", &m)
        .since("c1")
        .checkpoint("c2")
        .run()
        .ok();
    let v2 = t.s.path("v2.raw");
    save_copy(&t.src, &v2);
    // By scan: block 10 and the unaligned tail punched.
    punch(10 * BS, BS);
    punch(MIB - 5000, 5000);
    Ingest::new(&t.repo, "vm1").disk("sda", &t.src).since("c2").run().ok();

    let fuse = FuseMount::start(&t.repo, &t.s.mnt("fuse"));
    let i2 = image(&fuse, &t.repo, 1);
    let i3 = image(&fuse, &t.repo, 2);
    assert_zero_at(&i2, 2 * BS, 2 * BS as usize);
    assert_same_file(&i2, &v2);
    assert_zero_at(&i3, 10 * BS, BS as usize);
    assert_zero_at(&i3, MIB - 5000, 5000);
    assert_same_file(&i3, &t.src);
    assert_same_file(&image(&fuse, &t.repo, 0), &t.v1);
}
