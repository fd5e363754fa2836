//! End to end: a real ext4 filesystem image backed up through a chain of
//! restore points (full, incremental by map, scan without a map, scan
//! because of a stale map), then every point is mounted, compared byte for
//! byte with the saved source, and loop-mounted to compare its files.

mod common;

use common::*;
use std::path::PathBuf;

fn initial_files(root: &std::path::Path, tree: &mut Tree, rng: &mut Rng) {
    put(root, tree, "docs/readme.txt", rng.text(10_000));
    put(root, tree, "docs/notes/long.txt", rng.text(300_000));
    put(root, tree, "data/random.bin", rng.bytes(3 * MIB as usize));
    put(root, tree, "data/small.bin", rng.bytes(100 * KIB as usize + 7));
    put(root, tree, "data/page.bin", rng.bytes(4096));
    put(root, tree, "empty", Vec::new());
    put(root, tree, "deep/a/b/c/d.txt", rng.text(123));
    for i in 0..20 {
        let n = rng.below(20_000) as usize + 1;
        let data = if i % 2 == 0 { rng.bytes(n) } else { rng.text(n) };
        put(root, tree, &format!("many/f{i:02}.dat"), data);
    }
}

#[test]
fn ext4_chain_full_map_scan_stale() {
    let s = Scratch::new();
    let repo = s.repo();
    let img = s.path("sda.raw");
    let rw = s.mnt("rw");
    let mut rng = Rng::new(0xe4e4);
    init_repo(&repo, None);

    let mut trees: Vec<Tree> = Vec::new();
    let mut copies: Vec<PathBuf> = Vec::new();

    // Point 1: full.
    mkfs_ext4(&img, 128 * MIB);
    let mut tree = Tree::new();
    with_loop_rw(&img, &rw, |root| initial_files(root, &mut tree, &mut rng));
    let c1 = s.path("copy1.raw");
    save_copy(&img, &c1);
    let out = Ingest::new(&repo, "vm1")
        .disk("sda", &img)
        .checkpoint("c1")
        .run()
        .ok();
    assert!(
        !out.stderr.contains("full scan"),
        "a first ingest is a full backup, not a scan:\n{}",
        out.describe()
    );
    trees.push(tree.clone());
    copies.push(c1.clone());

    // Point 2: incremental by an exact map.
    with_loop_rw(&img, &rw, |root| {
        let d = rng.bytes(200 * KIB as usize);
        patch(root, &mut tree, "data/random.bin", MIB as usize + 100, &d);
        remove(root, &mut tree, "data/small.bin");
        put(root, &mut tree, "data/new.bin", rng.bytes(MIB as usize));
        let t = rng.text(5000);
        append(root, &mut tree, "docs/readme.txt", &t);
        rename(root, &mut tree, "many/f03.dat", "moved/f03.dat");
    });
    let c2 = s.path("copy2.raw");
    save_copy(&img, &c2);
    let ext = diff_extents(&c1, &c2, 4096);
    assert!(!ext.is_empty(), "changes made no difference to the image");
    let map2 = s.path("map2.json");
    write_map(&map2, &ext);
    let out = Ingest::new(&repo, "vm1")
        .disk("sda", &img)
        .changes("sda", &map2)
        .since("c1")
        .checkpoint("c2")
        .run()
        .ok();
    assert!(
        !out.stderr.contains("full scan"),
        "an ingest with a map tied to the latest checkpoint must not scan:\n{}",
        out.describe()
    );
    trees.push(tree.clone());
    copies.push(c2.clone());

    // Point 3: no map -> full scan with a warning.
    with_loop_rw(&img, &rw, |root| {
        let d = rng.bytes(64 * KIB as usize);
        patch(root, &mut tree, "data/random.bin", 0, &d);
        put(root, &mut tree, "many/f05.dat", rng.bytes(50 * KIB as usize));
        remove(root, &mut tree, "docs/notes/long.txt");
    });
    let c3 = s.path("copy3.raw");
    save_copy(&img, &c3);
    let out = Ingest::new(&repo, "vm1")
        .disk("sda", &img)
        .since("c2")
        .checkpoint("c3")
        .run()
        .ok();
    assert!(
        out.warns_full_scan("sda"),
        "no map for a disk with a previous version must warn 'full scan' naming the disk:\n{}",
        out.describe()
    );
    trees.push(tree.clone());
    copies.push(c3.clone());

    // Point 4: a map tied to an old checkpoint (c1, latest is c3) must be
    // ignored. The map given omits a changed region on purpose: only a
    // scan gives the right content.
    with_loop_rw(&img, &rw, |root| {
        put(root, &mut tree, "late.bin", rng.bytes(500 * KIB as usize));
        let d = rng.bytes(4096);
        patch(root, &mut tree, "data/page.bin", 0, &d);
        let t = rng.text(70_000);
        append(root, &mut tree, "many/f07.dat", &t);
    });
    let c4 = s.path("copy4.raw");
    save_copy(&img, &c4);
    let mut ext = diff_extents(&c3, &c4, 4096);
    assert!(ext.len() >= 2, "expected several changed extents, got {ext:?}");
    let dropped = ext.remove(ext.len() / 2);
    let map4 = s.path("map4.json");
    write_map(&map4, &ext);
    let out = Ingest::new(&repo, "vm1")
        .disk("sda", &img)
        .changes("sda", &map4)
        .since("c1")
        .checkpoint("c4")
        .run()
        .ok();
    assert!(
        out.warns_full_scan("sda"),
        "a map whose --since is not the latest checkpoint must warn 'full scan':\n{}",
        out.describe()
    );
    trees.push(tree.clone());
    copies.push(c4.clone());

    // Listing: kinds and checkpoints.
    let pts = points(&repo, "vm1");
    assert_eq!(pts.len(), 4, "four points expected: {pts:?}");
    let kinds: Vec<&str> = pts.iter().map(|p| p["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["full", "map", "scan", "scan"]);
    let cps: Vec<&str> = pts.iter().map(|p| p["checkpoint"].as_str().unwrap()).collect();
    assert_eq!(cps, ["c1", "c2", "c3", "c4"]);
    let names = point_names(&repo, "vm1");
    for (i, n) in names.iter().enumerate() {
        assert_point_name(n, i as u64 + 1);
    }

    verify_ok(&repo);

    // Mount and check every point.
    let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
    let mut entries = names.clone();
    entries.push("latest".into());
    entries.sort();
    assert_eq!(dir_names(&fuse.machine_dir("vm1")), entries);
    assert_latest(&fuse.machine_dir("vm1"), &names[3]);
    let ro = s.mnt("ro");
    for (i, name) in names.iter().enumerate() {
        assert_eq!(dir_names(&fuse.point_dir("vm1", name)), ["sda.img"]);
        let image = fuse.image("vm1", name, "sda");
        assert_same_file(&image, &copies[i]);
        assert_image_tree(&image, &ro, &trees[i], &format!("point {name}"));
    }
    // The region the stale map left out holds the new bytes in point 4.
    let (off, len) = dropped;
    let want = read_at(&c4, off, len as usize).unwrap();
    assert_bytes_at(&fuse.image("vm1", &names[3], "sda"), off, &want);
    // The same image through the latest link.
    assert_same_file(&fuse.machine_dir("vm1").join("latest/sda.img"), &c4);

    let out = fuse.unmount();
    assert_eq!(out.code, Some(0), "mount did not exit 0 after umount:\n{}", out.describe());
}
