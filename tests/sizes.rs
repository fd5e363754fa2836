//! Disk sizes that are not multiples of the block size, empty disks, and
//! disks that grow and shrink between restore points.

mod common;

use common::*;
use std::fs;
use std::path::PathBuf;

#[test]
fn odd_sizes_read_back_exactly() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let mut rng = Rng::new(0x0dd);
    let sizes = [("a", MIB + 123), ("b", 4097u64), ("c", 100), ("d", 64 * KIB - 1), ("e", 64 * KIB + 1)];
    let mut ing = Ingest::new(&repo, "odd");
    for (name, size) in sizes {
        let f = s.path(&format!("{name}.raw"));
        write_at(&f, 0, &rng.bytes(size as usize));
        ing = ing.disk(name, &f);
    }
    ing.run().ok();
    let pt = &points(&repo, "odd")[0];
    for (name, size) in sizes {
        assert_eq!(point_disk(pt, name)["size"].as_u64(), Some(size), "{pt}");
    }
    verify_ok(&repo);
    // All random: the data is the whole disk, not its last block's tail
    // past the end too.
    let total: u64 = sizes.iter().map(|(_, n)| n).sum();
    let st = cbtfs(&["stats", &p(&repo), "--json"]).ok().stdout_json();
    assert_eq!(st["points"][0]["logical_bytes"].as_u64(), Some(total), "{st}");
    assert_eq!(st["points"][0]["data_bytes"].as_u64(), Some(total), "{st}");
    assert_eq!(st["data_bytes"].as_u64(), Some(total), "{st}");
    // A hole, then data up to the end in the last, partial block: only
    // the disk's part of that block is data.
    let holey = s.path("holey.raw");
    set_size(&holey, 100_000);
    write_at(&holey, 70_000, &rng.bytes(30_000));
    Ingest::new(&repo, "holey").disk("sda", &holey).run().ok();
    let st = cbtfs(&["stats", &p(&repo), "--json"]).ok().stdout_json();
    let pt = st["points"].as_array().unwrap().iter().find(|x| x["machine"] == "holey").unwrap();
    assert_eq!(pt["data_bytes"].as_u64(), Some(100_000 - 65_536), "{pt}");

    let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
    let point = latest_point(&repo, "odd");
    for (name, size) in sizes {
        let img = fuse.image("odd", &point, name);
        assert_eq!(fs::metadata(&img).unwrap().len(), size, "size of {name}.img");
        assert_same_file(&img, &s.path(&format!("{name}.raw")));
        // Reads at and past the end return nothing.
        assert!(read_at(&img, size, 10).unwrap().is_empty(), "{name}.img reads past its end");
        assert!(read_at(&img, size + 100_000, 10).unwrap().is_empty());
        // A read straddling the end is cut at the end.
        let tail = read_at(&img, size - 1, 4096).unwrap();
        assert_eq!(tail.len(), 1, "{name}.img: read across the end");
    }
}

/// A 0-byte disk is either backed up as an empty image or refused with a
/// one-line error that changes nothing.
#[test]
fn zero_byte_disk() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let empty = s.path("empty.raw");
    set_size(&empty, 0);
    let before = repo_state(&repo);
    let out = Ingest::new(&repo, "z").disk("nul", &empty).run();
    match out.code {
        Some(0) => {
            let pt = &points(&repo, "z")[0];
            assert_eq!(point_disk(pt, "nul")["size"].as_u64(), Some(0), "{pt}");
            verify_ok(&repo);
            let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
            let img = fuse.image("z", &latest_point(&repo, "z"), "nul");
            assert_eq!(fs::metadata(&img).unwrap().len(), 0);
            assert!(fs::read(&img).unwrap().is_empty());
        }
        Some(1) => {
            let err = out.stderr.trim_end_matches('\n');
            assert!(!err.is_empty() && !err.contains('\n'), "{}", out.describe());
            assert_eq!(before, repo_state(&repo), "refused ingest changed the repository");
        }
        _ => panic!("0-byte disk: expected success or exit 1:\n{}", out.describe()),
    }
}

/// grow with new data past the old end, shrink, grow again, grow once more.
/// A regrown region reads as the source (zeros), never as data from before
/// the shrink.
fn grow_shrink(use_map: bool) {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let mut rng = Rng::new(if use_map { 0x6a } else { 0x6b });
    let src = s.path("sda.raw");
    let mut copies: Vec<PathBuf> = Vec::new();
    let mut n = 0;
    let mut ingest = |extents: Option<&[(u64, u64)]>, copies: &mut Vec<PathBuf>| {
        n += 1;
        let mut ing = Ingest::new(&repo, "g").disk("sda", &src).checkpoint(&format!("g{n}"));
        if n > 1 {
            ing = ing.since(&format!("g{}", n - 1));
        }
        if let Some(ext) = extents.filter(|_| use_map) {
            let m = s.path(&format!("map{n}.json"));
            write_map(&m, ext);
            ing = ing.changes("sda", &m);
        }
        let out = ing.run().ok();
        if n > 1 {
            assert_eq!(
                out.warns_full_scan("sda"),
                !use_map,
                "'full scan' warning expected only without a map:\n{}",
                out.describe()
            );
        }
        let c = s.path(&format!("copy{n}.raw"));
        save_copy(&src, &c);
        copies.push(c);
    };

    // 1: 1 MiB + 123, random everywhere.
    let s1 = MIB + 123;
    write_at(&src, 0, &rng.bytes(s1 as usize));
    ingest(None, &mut copies);

    // 2: grow to 3 MiB + 5 with random data past the old end.
    let s2 = 3 * MIB + 5;
    write_at(&src, s1, &rng.bytes((s2 - s1) as usize));
    ingest(Some(&[(s1, s2 - s1)]), &mut copies);

    // 3: shrink to 512 KiB + 7.
    let s3 = 512 * KIB + 7;
    set_size(&src, s3);
    ingest(Some(&[]), &mut copies);

    // 4: grow to 2 MiB: zeros, except 1000 new bytes at 1.5 MiB.
    let s4 = 2 * MIB;
    set_size(&src, s4);
    let fresh = rng.bytes(1000);
    write_at(&src, 1536 * KIB, &fresh);
    ingest(Some(&[(1536 * KIB, 1000)]), &mut copies);

    // 5: grow to 3 MiB + 5 again, nothing written: all zeros past 2 MiB.
    set_size(&src, s2);
    ingest(Some(&[]), &mut copies);

    let pts = points(&repo, "g");
    let sizes: Vec<u64> = pts
        .iter()
        .map(|p| point_disk(p, "sda")["size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [s1, s2, s3, s4, s2]);
    verify_ok(&repo);

    let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
    let names = point_names(&repo, "g");
    for (i, name) in names.iter().enumerate() {
        let img = fuse.image("g", name, "sda");
        assert_same_file(&img, &copies[i]);
    }
    // Spelled out: past the shrink point, point 4 is zeros up to the new
    // bytes, and point 5 is zeros past 2 MiB.
    let p4 = fuse.image("g", &names[3], "sda");
    assert_zero_at(&p4, s3, (1536 * KIB - s3) as usize);
    assert_bytes_at(&p4, 1536 * KIB, &fresh);
    let p5 = fuse.image("g", &names[4], "sda");
    assert_zero_at(&p5, 2 * MIB, (s2 - 2 * MIB) as usize);
    assert_zero_at(&p5, s3, 4096);
}

#[test]
fn grow_and_shrink_with_maps() {
    grow_shrink(true);
}

#[test]
fn grow_and_shrink_with_scans() {
    grow_shrink(false);
}
