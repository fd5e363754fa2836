//! Block devices as sources: a loop device holding an ext4 filesystem is
//! backed up full, by map and by scan, and read back exactly.

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// A loop device attached to a file, detached on drop.
struct LoopDev {
    dev: PathBuf,
}

impl LoopDev {
    fn attach(file: &Path) -> LoopDev {
        let out = sh("losetup", &["-f", "--show", &p(file)]);
        LoopDev {
            dev: PathBuf::from(out.trim()),
        }
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        for _ in 0..40 {
            let ok = std::process::Command::new("losetup")
                .args(["-d", &p(&self.dev)])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Mounts the device read-write, runs `f` on its root, unmounts.
fn with_device_rw(dev: &Path, mp: &Path, f: impl FnOnce(&Path)) {
    let m = LoopMount::with_options(dev, mp, "rw");
    f(&m.mp);
}

#[test]
fn loop_device_source() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let mut rng = Rng::new(0xb10c);
    // Not a multiple of the 64 KiB block size.
    let size = 32 * MIB + 4096;
    let backing = s.path("backing.raw");
    mkfs_ext4(&backing, size);
    let dev = LoopDev::attach(&backing);
    let rw = s.mnt("rw");

    let mut trees: Vec<Tree> = Vec::new();
    let mut copies: Vec<PathBuf> = Vec::new();
    let mut tree = Tree::new();
    let snapshot = |n: usize, tree: &Tree, trees: &mut Vec<Tree>, copies: &mut Vec<PathBuf>| {
        // The device is not mounted now: its content is the backing file's.
        let c = s.path(&format!("copy{n}.raw"));
        save_copy(&backing, &c);
        copies.push(c);
        trees.push(tree.clone());
    };

    with_device_rw(&dev.dev, &rw, |root| {
        put(root, &mut tree, "x.bin", rng.bytes(2 * MIB as usize + 9));
        put(root, &mut tree, "y.txt", rng.text(30_000));
    });
    snapshot(1, &tree, &mut trees, &mut copies);
    Ingest::new(&repo, "bd").disk("vda", &dev.dev).checkpoint("d1").run().ok();
    let pt = &points(&repo, "bd")[0];
    assert_eq!(point_disk(pt, "vda")["size"].as_u64(), Some(size), "{pt}");

    with_device_rw(&dev.dev, &rw, |root| {
        let d = rng.bytes(70_000);
        patch(root, &mut tree, "x.bin", 500_000, &d);
        put(root, &mut tree, "z.bin", rng.bytes(400_000));
    });
    snapshot(2, &tree, &mut trees, &mut copies);
    let map = s.path("map.json");
    write_map(&map, &diff_extents(&copies[0], &copies[1], 4096));
    let out = Ingest::new(&repo, "bd")
        .disk("vda", &dev.dev)
        .changes("vda", &map)
        .since("d1")
        .checkpoint("d2")
        .run()
        .ok();
    assert!(!out.stderr.contains("full scan"), "{}", out.describe());

    with_device_rw(&dev.dev, &rw, |root| {
        remove(root, &mut tree, "y.txt");
        put(root, &mut tree, "w.txt", rng.text(12_345));
    });
    snapshot(3, &tree, &mut trees, &mut copies);
    let out = Ingest::new(&repo, "bd").disk("vda", &dev.dev).since("d2").run().ok();
    assert!(out.warns_full_scan("vda"), "{}", out.describe());

    let kinds: Vec<String> = points(&repo, "bd")
        .iter()
        .map(|p| p["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["full", "map", "scan"]);
    verify_ok(&repo);

    let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
    let ro = s.mnt("ro");
    for (i, name) in point_names(&repo, "bd").iter().enumerate() {
        let img = fuse.image("bd", name, "vda");
        assert_same_file(&img, &copies[i]);
        assert_image_tree(&img, &ro, &trees[i], &format!("point {name}"));
    }
}
