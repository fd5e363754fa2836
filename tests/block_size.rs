//! Repositories with a non-default block size: an ext4 image backed up as
//! full, incremental by a 4 KiB-granular map, and scan, read back exactly.

mod common;

use common::*;
use std::path::PathBuf;

fn chain_with_block_size(block_size: &str, seed: u64) {
    let s = Scratch::new();
    let repo = s.repo();
    let img = s.path("disk.raw");
    let rw = s.mnt("rw");
    let mut rng = Rng::new(seed);
    init_repo(&repo, Some(block_size));

    let mut trees: Vec<Tree> = Vec::new();
    let mut copies: Vec<PathBuf> = Vec::new();

    mkfs_ext4(&img, 64 * MIB);
    let mut tree = Tree::new();
    with_loop_rw(&img, &rw, |root| {
        put(root, &mut tree, "a.bin", rng.bytes(1536 * KIB as usize + 3));
        put(root, &mut tree, "b.txt", rng.text(40_000));
        put(root, &mut tree, "dir/c.bin", rng.bytes(4096));
        put(root, &mut tree, "dir/d.txt", rng.text(17));
    });
    let c1 = s.path("copy1.raw");
    save_copy(&img, &c1);
    Ingest::new(&repo, "m")
        .disk("vda", &img)
        .checkpoint("k1")
        .run()
        .ok();
    trees.push(tree.clone());
    copies.push(c1.clone());

    // Small scattered changes: with 1M blocks a 4K change must keep the
    // unchanged rest of its block; with 4K blocks many blocks change.
    with_loop_rw(&img, &rw, |root| {
        let d = rng.bytes(4096);
        patch(root, &mut tree, "a.bin", 300_000, &d);
        let d = rng.bytes(10);
        patch(root, &mut tree, "a.bin", 1_000_001, &d);
        put(root, &mut tree, "dir/e.bin", rng.bytes(200_000));
        remove(root, &mut tree, "b.txt");
    });
    let c2 = s.path("copy2.raw");
    save_copy(&img, &c2);
    let map = s.path("map.json");
    write_map(&map, &diff_extents(&c1, &c2, 4096));
    let out = Ingest::new(&repo, "m")
        .disk("vda", &img)
        .changes("vda", &map)
        .since("k1")
        .checkpoint("k2")
        .run()
        .ok();
    assert!(!out.stderr.contains("full scan"), "{}", out.describe());
    trees.push(tree.clone());
    copies.push(c2.clone());

    with_loop_rw(&img, &rw, |root| {
        let t = rng.text(9999);
        append(root, &mut tree, "dir/d.txt", &t);
        put(root, &mut tree, "f.bin", rng.bytes(3 * MIB as usize));
    });
    let c3 = s.path("copy3.raw");
    save_copy(&img, &c3);
    let out = Ingest::new(&repo, "m")
        .disk("vda", &img)
        .since("k2")
        .checkpoint("k3")
        .run()
        .ok();
    assert!(out.warns_full_scan("vda"), "{}", out.describe());
    trees.push(tree.clone());
    copies.push(c3.clone());

    let kinds: Vec<String> = points(&repo, "m")
        .iter()
        .map(|p| p["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["full", "map", "scan"]);
    verify_ok(&repo);

    let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
    let names = point_names(&repo, "m");
    let ro = s.mnt("ro");
    for (i, name) in names.iter().enumerate() {
        let image = fuse.image("m", name, "vda");
        assert_same_file(&image, &copies[i]);
        assert_image_tree(&image, &ro, &trees[i], &format!("{block_size} point {name}"));
    }
}

#[test]
fn block_size_4k() {
    chain_with_block_size("4K", 4);
}

#[test]
fn block_size_1m() {
    chain_with_block_size("1M", 1024);
}

/// A block size given in plain bytes is accepted, and the repository works.
#[test]
fn block_size_in_bytes() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, Some("131072"));
    let src = s.path("src.raw");
    let mut rng = Rng::new(131072);
    set_size(&src, 2 * MIB + 11);
    write_at(&src, 100_000, &rng.bytes(700_000));
    write_at(&src, 2 * MIB, &rng.bytes(11));
    Ingest::new(&repo, "m").disk("d", &src).run().ok();
    verify_ok(&repo);
    let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
    assert_same_file(&fuse.image("m", &latest_point(&repo, "m"), "d"), &src);
}
