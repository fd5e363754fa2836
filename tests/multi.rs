//! Several disks per point and several machines; disks leaving and coming
//! back; deduplication of identical data.

mod common;

use common::*;
use std::fs;
use std::path::PathBuf;

const BS: u64 = 64 * KIB;

#[test]
fn disks_and_machines() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let mut rng = Rng::new(0x77);
    let sda = s.path("vm1-sda.raw");
    let sdb = s.path("vm1-sdb.raw");
    let vm2 = s.path("vm2-sda.raw");
    write_at(&sda, 0, &rng.bytes(2 * MIB as usize));
    write_at(&sdb, 0, &rng.bytes(MIB as usize + 17));
    write_at(&vm2, 0, &rng.bytes(MIB as usize));
    let copy = |name: &str, src: &PathBuf| {
        let c = s.path(name);
        save_copy(src, &c);
        c
    };

    // vm1 point 1: sda + sdb.
    Ingest::new(&repo, "vm1").disk("sda", &sda).disk("sdb", &sdb).checkpoint("c1").run().ok();
    let sda1 = copy("sda1", &sda);
    let sdb1 = copy("sdb1", &sdb);
    // vm2 point 1 (same checkpoint id in another machine).
    Ingest::new(&repo, "vm2").disk("sda", &vm2).checkpoint("c1").run().ok();

    // vm1 point 2: only sda, incremental by map.
    write_at(&sda, 3 * BS, &rng.bytes(BS as usize));
    let m = s.path("m2.json");
    write_map(&m, &[(3 * BS, BS)]);
    Ingest::new(&repo, "vm1")
        .disk("sda", &sda)
        .changes("sda", &m)
        .since("c1")
        .checkpoint("c2")
        .run()
        .ok();
    let sda2 = copy("sda2", &sda);

    // vm1 point 3: sda unchanged (empty map) and sdb back, changed. sdb is
    // not in the latest point, so it is a full backup: the map given for
    // it omits one of the changes, which must show anyway.
    write_at(&sdb, 0, &rng.bytes(1000));
    write_at(&sdb, 10 * BS + 5, &rng.bytes(1000));
    let msda = s.path("m3a.json");
    write_map(&msda, &[]);
    let msdb = s.path("m3b.json");
    write_map(&msdb, &[(0, 1000)]);
    Ingest::new(&repo, "vm1")
        .disk("sda", &sda)
        .disk("sdb", &sdb)
        .changes("sda", &msda)
        .changes("sdb", &msdb)
        .since("c2")
        .checkpoint("c3")
        .run()
        .ok();
    let sdb3 = copy("sdb3", &sdb);

    let pts = points(&repo, "vm1");
    assert_eq!(pts.len(), 3);
    assert_eq!(point_disk(&pts[2], "sdb")["kind"], "full", "{}", pts[2]);
    assert_eq!(point_disk(&pts[2], "sda")["kind"], "map", "{}", pts[2]);
    assert_eq!(pts[2]["kind"], "map", "a full disk and a map disk make a map point");
    assert_eq!(pts[1]["disks"].as_array().unwrap().len(), 1, "{}", pts[1]);
    verify_ok(&repo);

    let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
    assert_eq!(dir_names(&fuse.mp), ["vm1", "vm2"]);
    let n1 = point_names(&repo, "vm1");
    let n2 = point_names(&repo, "vm2");
    let mut want = n1.clone();
    want.push("latest".into());
    want.sort();
    assert_eq!(dir_names(&fuse.machine_dir("vm1")), want);
    assert_eq!(dir_names(&fuse.machine_dir("vm2")), [n2[0].clone(), "latest".into()]);
    assert_latest(&fuse.machine_dir("vm1"), &n1[2]);
    assert_latest(&fuse.machine_dir("vm2"), &n2[0]);

    assert_eq!(dir_names(&fuse.point_dir("vm1", &n1[0])), ["sda.img", "sdb.img"]);
    assert_eq!(dir_names(&fuse.point_dir("vm1", &n1[1])), ["sda.img"]);
    assert_eq!(dir_names(&fuse.point_dir("vm1", &n1[2])), ["sda.img", "sdb.img"]);
    let gone = fuse.image("vm1", &n1[1], "sdb");
    assert_eq!(
        fs::metadata(&gone).map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::NotFound),
        "{} must not exist",
        gone.display()
    );

    assert_same_file(&fuse.image("vm1", &n1[0], "sda"), &sda1);
    assert_same_file(&fuse.image("vm1", &n1[0], "sdb"), &sdb1);
    assert_same_file(&fuse.image("vm1", &n1[1], "sda"), &sda2);
    assert_same_file(&fuse.image("vm1", &n1[2], "sda"), &sda2);
    assert_same_file(&fuse.image("vm1", &n1[2], "sdb"), &sdb3);
    assert_same_file(&fuse.image("vm2", &n2[0], "sda"), &vm2);
    assert_same_file(&fuse.machine_dir("vm2").join("latest").join("sda.img"), &vm2);
}

fn packs_size(repo: &std::path::Path) -> u64 {
    pack_files(repo).iter().map(|(_, n)| n).sum()
}

#[test]
fn identical_data_is_stored_once() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let mut rng = Rng::new(0xd0d0);
    let a = s.path("a.raw");
    write_at(&a, 0, &rng.bytes(8 * MIB as usize));
    let b = s.path("b.raw");
    save_copy(&a, &b);

    Ingest::new(&repo, "vm1").disk("sda", &a).run().ok();
    let packs1 = packs_size(&repo);
    let repo1 = apparent_size(&repo);
    assert!(packs1 >= 8 * MIB, "8 MiB of random data stored in {packs1} bytes");

    // Another machine with the same disk content (another file).
    Ingest::new(&repo, "vm2").disk("xvda", &b).run().ok();
    let packs2 = packs_size(&repo);
    let repo2 = apparent_size(&repo);
    assert!(
        packs2 - packs1 < 64 * KIB,
        "identical disk stored again: packs grew by {}",
        packs2 - packs1
    );
    assert!(
        repo2 < repo1 + 2 * MIB,
        "repository grew by {} bytes for identical data",
        repo2 - repo1
    );

    // One block repeated 64 times is stored once.
    let rep = s.path("rep.raw");
    let blk = rng.bytes(BS as usize);
    for i in 0..64 {
        write_at(&rep, i * BS, &blk);
    }
    Ingest::new(&repo, "vm3").disk("sdr", &rep).run().ok();
    let packs3 = packs_size(&repo);
    assert!(
        packs3 - packs2 < 2 * BS,
        "a repeated block stored more than once: packs grew by {}",
        packs3 - packs2
    );
    verify_ok(&repo);

    let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
    assert_same_file(&fuse.image("vm1", &latest_point(&repo, "vm1"), "sda"), &a);
    assert_same_file(&fuse.image("vm2", &latest_point(&repo, "vm2"), "xvda"), &a);
    assert_same_file(&fuse.image("vm3", &latest_point(&repo, "vm3"), "sdr"), &rep);
}
