//! A 64 GiB sparse disk with a few MiB written: the repository stays
//! small, reads are right at the data and zero elsewhere, and a scan
//! incremental picks up a changed region.

mod common;

use common::*;
use std::fs;

#[test]
fn sparse_64g_disk() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let mut rng = Rng::new(0x64);
    let size = 64 * GIB;
    let src = s.path("big.raw");
    set_size(&src, size);

    let regions: Vec<(u64, Vec<u8>)> = vec![
        (0, rng.bytes(MIB as usize)),
        (10 * GIB + 12345, rng.bytes(2 * MIB as usize)),
        (33 * GIB + 1, rng.bytes(4096 + 3)),
        (size - MIB, rng.bytes(MIB as usize)),
    ];
    for (off, data) in &regions {
        write_at(&src, *off, data);
    }
    Ingest::new(&repo, "vm").disk("sda", &src).checkpoint("s1").run().ok();
    let du = disk_usage(&repo);
    assert!(du < 64 * MIB, "repository uses {du} bytes for ~4 MiB of data");
    let pt = &points(&repo, "vm")[0];
    assert_eq!(point_disk(pt, "sda")["size"].as_u64(), Some(size));

    // Change part of one region, add one new region; no map -> scan.
    let patch_off = 10 * GIB + 500_000;
    let patch_data = rng.bytes(100 * KIB as usize);
    write_at(&src, patch_off, &patch_data);
    let new_off = 40 * GIB + 3 * MIB;
    let new_data = rng.bytes(MIB as usize);
    write_at(&src, new_off, &new_data);
    let out = Ingest::new(&repo, "vm")
        .disk("sda", &src)
        .since("s1")
        .checkpoint("s2")
        .run()
        .ok();
    assert!(out.warns_full_scan("sda"), "{}", out.describe());
    let pts = points(&repo, "vm");
    assert_eq!(pts.len(), 2);
    assert_eq!(pts[1]["kind"], "scan");
    let du = disk_usage(&repo);
    assert!(du < 64 * MIB, "repository uses {du} bytes after the scan");
    verify_ok(&repo);

    let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
    let names = point_names(&repo, "vm");
    let img1 = fuse.image("vm", &names[0], "sda");
    let img2 = fuse.image("vm", &names[1], "sda");
    for img in [&img1, &img2] {
        assert_eq!(fs::metadata(img).unwrap().len(), size);
    }

    // Point 1: the regions as first written.
    for (off, data) in &regions {
        assert_bytes_at(&img1, *off, data);
    }
    // Zeros around and between the regions.
    let zero_samples = [
        (MIB, MIB as usize),
        (GIB, MIB as usize),
        (10 * GIB + 12345 - 70_000, 70_000),
        (10 * GIB + 12345 + 2 * MIB, 200_000),
        (33 * GIB + 1 + 4099, 4096),
        (33 * GIB - 4096, 4097),
        (new_off, MIB as usize),
        (size - MIB - 65536, 65536),
    ];
    for (off, len) in zero_samples {
        assert_zero_at(&img1, off, len);
    }

    // Point 2: the patch and the new region, the rest unchanged.
    assert_bytes_at(&img2, patch_off, &patch_data);
    assert_bytes_at(&img2, new_off, &new_data);
    let r = &regions[1].1;
    let rel = (patch_off - regions[1].0) as usize;
    assert_bytes_at(&img2, regions[1].0, &r[..rel]);
    assert_bytes_at(&img2, patch_off + patch_data.len() as u64, &r[rel + patch_data.len()..]);
    for (off, data) in [&regions[0], &regions[2], &regions[3]] {
        assert_bytes_at(&img2, *off, data);
    }
    for (off, len) in zero_samples {
        if off != new_off {
            assert_zero_at(&img2, off, len);
        }
    }
    assert_zero_at(&img2, new_off - 4096, 4096);
    assert_zero_at(&img2, new_off + MIB, 4096);
    // Point 1 still has the old bytes where point 2 changed.
    assert_bytes_at(&img1, patch_off, &r[rel..rel + patch_data.len()]);
    drop(fuse);

    // Exported, the 64 GiB disk is its few MiB of data and holes: export
    // reads only the data extents the index has, not 64 GiB of zeros.
    let out = s.path("exported.raw");
    let v = cbtfs(&["export", &p(&repo), "vm", "latest", "sda", &p(&out), "--json"]).ok().stdout_json();
    assert_eq!(fs::metadata(&out).unwrap().len(), size);
    assert!(disk_usage(&out) < 16 * MIB, "the export uses {} bytes", disk_usage(&out));
    let data: u64 = data_extents(&out).iter().map(|(a, b)| b - a).sum();
    assert_eq!(v["data_bytes"].as_u64(), Some(data), "{v}");
    // Equal to the source: compared over the data of both, which read as
    // zeros everywhere else.
    for (a, b) in data_extents(&out).into_iter().chain(data_extents(&src)) {
        assert_eq!(read_at(&out, a, (b - a) as usize).unwrap(), read_at(&src, a, (b - a) as usize).unwrap(), "bytes {a}..{b}");
    }
}
