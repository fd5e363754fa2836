//! Holes through the mount: SEEK_DATA and SEEK_HOLE answer from the block
//! index, images report the bytes that hold data as their allocated size,
//! and so `cp` copies a point as a sparse file, reading only its data.
//! Covered for a full, an incremental that zeroes and adds blocks through a
//! map, a scan that finds a punched hole, and a point recorded before the
//! index counted data blocks.

mod common;

use common::*;
use nix::errno::Errno;
use nix::unistd::{Whence, lseek};
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const BS: u64 = 64 * KIB;
/// Not a multiple of the block size: the last block is partial.
const SIZE: u64 = 64 * MIB + 12345;

/// Data extents a point must show: runs of the given blocks holding data,
/// cut at the disk's end.
fn runs(blocks: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &b in blocks {
        let (start, end) = (b * BS, ((b + 1) * BS).min(SIZE));
        match out.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => out.push((start, end)),
        }
    }
    out
}

/// The image's allocated bytes as stat reports them.
fn allocated(img: &Path) -> u64 {
    fs::metadata(img).unwrap().blocks() * 512
}

fn seek(img: &Path, offset: i64, whence: Whence) -> Result<u64, Errno> {
    lseek(File::open(img).unwrap(), offset, whence).map(|o| o as u64)
}

/// `cp` (which looks for holes only in files allocated below their length)
/// copies the image as a sparse file equal to `want`.
fn copy_is_sparse_and_equal(img: &Path, want: &Path, data: u64, scratch: &Scratch, tag: &str) {
    let copy = scratch.path(&format!("copy-{tag}.img"));
    sh("cp", &[&p(img), &p(&copy)]);
    sh("cmp", &[&p(&copy), &p(want)]);
    let used = disk_usage(&copy);
    assert!(used <= data + MIB, "{tag}: the copy uses {used} bytes for {data} bytes of data: cp read the holes as data");
    fs::remove_file(&copy).unwrap();
}

#[test]
fn seeks_and_allocated_size_follow_the_points_data() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let mut rng = Rng::new(0x401e);
    let src = s.path("disk.raw");
    set_size(&src, SIZE);
    let last = SIZE / BS; // the partial block
    // Point 1: a few bytes in block 0, blocks 10-12, block 20 written with
    // zeros (allocated in the source, not stored), and the partial block.
    write_at(&src, 100, &rng.bytes(100));
    write_at(&src, 10 * BS, &rng.bytes(3 * BS as usize));
    write_at(&src, 20 * BS, &vec![0u8; BS as usize]);
    write_at(&src, last * BS, &rng.bytes((SIZE - last * BS) as usize));
    Ingest::new(&repo, "vm").disk("sda", &src).checkpoint("c1").run().ok();
    let state1 = s.path("state1.raw");
    fs::copy(&src, &state1).unwrap();

    // Point 2 by map: block 11 zeroed, block 40 and 41 new.
    write_at(&src, 11 * BS, &vec![0u8; BS as usize]);
    write_at(&src, 40 * BS + 7, &rng.bytes(BS as usize));
    let map = s.path("map2.json");
    write_map(&map, &[(11 * BS, BS), (40 * BS + 7, BS)]);
    Ingest::new(&repo, "vm").disk("sda", &src).changes("sda", &map).since("c1").checkpoint("c2").run().ok();
    let state2 = s.path("state2.raw");
    fs::copy(&src, &state2).unwrap();

    // Point 3 by scan (no map): block 10 punched out of the source, so it
    // is a hole there where point 2 had data.
    nix::fcntl::fallocate(
        fs::OpenOptions::new().write(true).open(&src).unwrap(),
        nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        (10 * BS) as i64,
        BS as i64,
    )
    .unwrap();
    let out = Ingest::new(&repo, "vm").disk("sda", &src).checkpoint("c3").run().ok();
    assert!(out.warns_full_scan("sda"), "{}", out.describe());

    let want: [(&Path, Vec<u64>); 3] = [
        (&state1, vec![0, 10, 11, 12, last]),
        (&state2, vec![0, 10, 12, 40, 41, last]),
        (&src, vec![0, 12, 40, 41, last]),
    ];
    let names = point_names(&repo, "vm");
    let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
    for (i, (state, blocks)) in want.iter().enumerate() {
        let img = fuse.image("vm", &names[i], "sda");
        let tag = format!("point {}", i + 1);
        let extents = runs(blocks);
        assert_eq!(data_extents(&img), extents, "{tag}");
        let data = extents.iter().map(|(a, b)| b - a).sum::<u64>();
        // Whole blocks, as a file system counts the last one of a file.
        let whole = (blocks.len() as u64 * BS).min(SIZE);
        assert_eq!(allocated(&img), whole.next_multiple_of(512), "{tag}: st_blocks");
        assert_eq!(fs::metadata(&img).unwrap().len(), SIZE, "{tag}");
        copy_is_sparse_and_equal(&img, state, data, &s, &format!("p{}", i + 1));
    }

    // Seeks from inside data and holes, and past the end.
    let img = fuse.image("vm", &names[0], "sda");
    assert_eq!(seek(&img, 10 * BS as i64 + 5, Whence::SeekData), Ok(10 * BS + 5));
    assert_eq!(seek(&img, 10 * BS as i64 + 5, Whence::SeekHole), Ok(13 * BS));
    assert_eq!(seek(&img, 13 * BS as i64 + 5, Whence::SeekHole), Ok(13 * BS + 5));
    assert_eq!(seek(&img, 13 * BS as i64 + 5, Whence::SeekData), Ok(last * BS));
    assert_eq!(seek(&img, SIZE as i64 - 1, Whence::SeekHole), Ok(SIZE));
    assert_eq!(seek(&img, SIZE as i64, Whence::SeekData), Err(Errno::ENXIO));
    assert_eq!(seek(&img, SIZE as i64, Whence::SeekHole), Err(Errno::ENXIO));
    // On one open file, as tools ask again from inside a stretch of data:
    // each answer is that stretch's own end.
    let f = File::open(&img).unwrap();
    for (from, hole) in [(10 * BS + 5, 13 * BS), (last * BS + 1, SIZE), (10 * BS + 7, 13 * BS), (12 * BS, 13 * BS), (100, BS)] {
        assert_eq!(lseek(&f, from as i64, Whence::SeekHole), Ok(hole as i64), "SEEK_HOLE from {from}");
    }
    drop(f);
    drop(fuse);

    // A disk with no data left: no data to seek to, nothing allocated.
    let empty = s.path("empty.raw");
    set_size(&empty, SIZE);
    Ingest::new(&repo, "blank").disk("sda", &empty).run().ok();
    let fuse = FuseMount::start(&repo, &s.mnt("fuse2"));
    let img = fuse.image("blank", &point_names(&repo, "blank")[0], "sda");
    assert_eq!(seek(&img, 0, Whence::SeekData), Err(Errno::ENXIO));
    assert_eq!(seek(&img, 0, Whence::SeekHole), Ok(0));
    assert_eq!(allocated(&img), 0);
}

/// Points recorded before the index counted data blocks show as fully
/// allocated (never wrong for a copy, only slower); the next incremental
/// counts its previous point from the versions, records that count, and
/// its own. A wrong count is counted again.
#[test]
fn points_without_a_count_are_counted_by_the_next_incremental() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let mut rng = Rng::new(0x01d);
    let src = s.path("disk.raw");
    set_size(&src, SIZE);
    write_at(&src, 3 * BS, &rng.bytes(2 * BS as usize));
    Ingest::new(&repo, "vm").disk("sda", &src).checkpoint("c1").run().ok();
    // As a repository from before schema 4 is after its upgrade.
    sh("python3", &["-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('UPDATE point_disks SET data_blocks = NULL'); c.commit()", &p(&repo.join("index.sqlite"))]);

    let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
    let img = fuse.image("vm", &point_names(&repo, "vm")[0], "sda");
    assert_eq!(allocated(&img), SIZE.next_multiple_of(512), "an uncounted point is reported fully allocated");
    // Seeks need no count: they read the versions.
    assert_eq!(data_extents(&img), runs(&[3, 4]));
    drop(fuse);

    write_at(&src, 9 * BS, &rng.bytes(BS as usize));
    let map = s.path("map.json");
    write_map(&map, &[(9 * BS, BS)]);
    Ingest::new(&repo, "vm").disk("sda", &src).changes("sda", &map).since("c1").checkpoint("c2").run().ok();
    let fuse = FuseMount::start(&repo, &s.mnt("fuse2"));
    let names = point_names(&repo, "vm");
    assert_eq!(allocated(&fuse.image("vm", &names[0], "sda")), 2 * BS, "the previous point, counted");
    let img = fuse.image("vm", &names[1], "sda");
    assert_eq!(allocated(&img), 3 * BS);
    assert_eq!(data_extents(&img), runs(&[3, 4, 9]));
    drop(fuse);

    // A count that is wrong (too small for what the next point zeroes) is
    // counted again, and corrected; the backup does not fail over it.
    sh("python3", &["-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('UPDATE point_disks SET data_blocks = 0 WHERE point_id = (SELECT max(id) FROM points)'); c.commit()", &p(&repo.join("index.sqlite"))]);
    write_at(&src, 3 * BS, &vec![0u8; BS as usize]);
    write_map(&map, &[(3 * BS, BS)]);
    Ingest::new(&repo, "vm").disk("sda", &src).changes("sda", &map).since("c2").checkpoint("c3").run().ok();
    let fuse = FuseMount::start(&repo, &s.mnt("fuse3"));
    let img = fuse.image("vm", &point_names(&repo, "vm")[2], "sda");
    assert_eq!(allocated(&img), 2 * BS);
    assert_eq!(data_extents(&img), runs(&[4, 9]));
    drop(fuse);
    // Every count recorded now is what the versions hold.
    verify_ok(&repo);

    // A wrong count is index damage to verify; a count of none for a disk
    // with data is not believed by the mount (GNU tar skips a file
    // allocated as empty).
    let sql = |q: &str| sh("python3", &["-c", &format!("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute({q:?}); c.commit()"), &p(&repo.join("index.sqlite"))]);
    sql("UPDATE point_disks SET data_blocks = 0 WHERE point_id = (SELECT max(id) FROM points)");
    let out = cbtfs(&["verify", &p(&repo)]).code_is(3);
    let names = point_names(&repo, "vm");
    assert!(
        out.stderr.contains(&format!("vm/{}/sda: the index records 0 blocks with data, its versions hold 2", names[2])),
        "{}",
        out.describe()
    );
    let fuse = FuseMount::start(&repo, &s.mnt("fuse4"));
    assert_eq!(allocated(&fuse.image("vm", &names[2], "sda")), SIZE.next_multiple_of(512), "a count of none for a disk with data");
}
