//! Partitioned disks: the mount shows each partition of an MBR or GPT disk
//! as a file of its own (`sda-partN.img`, numbered as Linux numbers them),
//! byte-exact, and loop-mountable without `losetup -P`. The disks are
//! partitioned by sfdisk and formatted by mkfs.ext4, mkfs.xfs and
//! mkfs.vfat; FAT is read with mtools, so no vfat driver is needed.

mod common;

use common::*;
use serde_json::Value;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

const MIB: u64 = 1 << 20;

/// Partitions `img` with an sfdisk script; returns (number, start, length)
/// in bytes as sfdisk reports them.
fn sfdisk(img: &Path, script: &str) -> Vec<(u32, u64, u64)> {
    let mut child = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(img)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sfdisk");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed on {script:?}");
    layout(img)
}

fn layout(img: &Path) -> Vec<(u32, u64, u64)> {
    let v: Value = serde_json::from_str(&sh("sfdisk", &["--json", &p(img)])).unwrap();
    let name = p(img);
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|part| {
            let node = part["node"].as_str().unwrap();
            let number = node.strip_prefix(&name).unwrap().parse().unwrap();
            (number, part["start"].as_u64().unwrap() * 512, part["size"].as_u64().unwrap() * 512)
        })
        .collect()
}

/// A loop device over bytes `start..start+len` of `img`, detached on drop.
struct LoopDev(String);

impl LoopDev {
    fn new(img: &Path, start: u64, len: u64) -> LoopDev {
        let dev = sh(
            "losetup",
            &["--find", "--show", "--offset", &start.to_string(), "--sizelimit", &len.to_string(), &p(img)],
        );
        LoopDev(dev.trim().to_string())
    }
}

impl Drop for LoopDev {
    /// Flushes what was written through the device (mtools writes through
    /// its page cache) into the image before detaching: a detach does not
    /// wait for it, and a copy of the image taken next would miss it.
    fn drop(&mut self) {
        let _ = Command::new("blockdev").args(["--flushbufs", &self.0]).status();
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// Makes a filesystem of `kind` on a partition and fills it with `files`
/// (FAT through mtools, the others through a loop mount).
fn format_and_fill(img: &Path, (start, len): (u64, u64), kind: &str, files: &Tree, mp: &Path) {
    let dev = LoopDev::new(img, start, len);
    match kind {
        "ext4" => sh("mkfs.ext4", &["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", &dev.0]),
        "xfs" => sh("mkfs.xfs", &["-q", "-f", &dev.0]),
        "vfat" => sh("mkfs.vfat", &[&dev.0]),
        _ => unreachable!(),
    };
    if kind == "vfat" {
        for (name, data) in files {
            let src = mp.with_extension("tmp");
            fs::write(&src, data).unwrap();
            let st = Command::new("mcopy").env("MTOOLS_SKIP_CHECK", "1").args(["-i", &dev.0, &p(&src), &format!("::/{name}")]).status().unwrap();
            assert!(st.success(), "mcopy {name} into FAT");
            fs::remove_file(&src).unwrap();
        }
    } else {
        let dev_path = Path::new(&dev.0).to_path_buf();
        let m = LoopMount::with_options(&dev_path, mp, "rw");
        for (name, data) in files {
            let path = m.mp.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, data).unwrap();
        }
        drop(m);
    }
}

/// Asserts that `file` holds exactly bytes `start..start+len` of `disk`.
#[track_caller]
fn assert_is_range(file: &Path, disk: &Path, start: u64, len: u64) {
    assert_eq!(fs::metadata(file).unwrap().len(), len, "size of {}", file.display());
    let mut f = fs::File::open(file).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    let mut at = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        let want = read_at(disk, start + at, n).unwrap();
        if buf[..n] != want[..] {
            let i = buf[..n].iter().zip(&want).position(|(a, b)| a != b).unwrap();
            panic!("{} differs from the disk at partition byte {}", file.display(), at + i as u64);
        }
        at += n as u64;
    }
    assert_eq!(at, len, "{} read short", file.display());
}

/// A partition file reports as allocated at most its disk's data, so a
/// partition of a mostly empty disk looks sparse and `cp` copies it
/// sparsely (seeking past the holes), equal to its range of the disk.
#[track_caller]
fn assert_copies_sparsely(file: &Path, disk: &Path, start: u64, len: u64, scratch: &Scratch) {
    use std::os::unix::fs::MetadataExt;
    let blocks = fs::metadata(file).unwrap().blocks();
    let disk_blocks = fs::metadata(file.with_file_name("sda.img")).unwrap().blocks();
    assert_eq!(blocks, disk_blocks.min(len.div_ceil(512)), "st_blocks of {}", file.display());
    assert!(blocks * 512 < len, "{} should look sparse: {blocks} blocks for {len} bytes", file.display());
    let copy = scratch.path("partition-copy.img");
    sh("cp", &[&p(file), &p(&copy)]);
    assert_is_range(&copy, disk, start, len);
    let data: u64 = data_extents(file).iter().map(|(a, b)| b - a).sum();
    let used = disk_usage(&copy);
    assert!(used <= data + MIB, "copy of {} uses {used} bytes for {data} bytes of data: cp read its holes", file.display());
    fs::remove_file(&copy).unwrap();
}

/// The holes SEEK_HOLE shows in a partition file of a mount are the disk
/// image's holes within the partition, and read as zeros on the source
/// disk.
#[track_caller]
fn assert_holes_are_the_disks(file: &Path, disk: &Path, start: u64, len: u64) {
    let got = data_extents(file);
    let image = file.with_file_name("sda.img");
    let want: Vec<(u64, u64)> = data_extents(&image)
        .into_iter()
        .map(|(a, b)| (a.max(start), b.min(start + len)))
        .filter(|(a, b)| a < b)
        .map(|(a, b)| (a - start, b - start))
        .collect();
    assert_eq!(got, want, "data extents of {}", file.display());
    let mut at = 0;
    for &(data, hole) in got.iter().chain([(len, len)].iter()) {
        if data > at {
            let zeros = read_at(disk, start + at, (data - at) as usize).unwrap();
            assert!(zeros.iter().all(|&b| b == 0), "{}: a hole at {at}..{data} holds data on the disk", file.display());
        }
        at = hole;
    }
}

fn tree(rng: &mut Rng, names: &[&str]) -> Tree {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), if i % 2 == 0 { rng.text(70_000 + i * 999) } else { rng.bytes(200_000 + i * 777) }))
        .collect()
}

fn fat_file(part: &Path, name: &str) -> Vec<u8> {
    let o = Command::new("mcopy").env("MTOOLS_SKIP_CHECK", "1").args(["-i", &p(part), &format!("::/{name}"), "-"]).output().unwrap();
    assert!(o.status.success(), "mcopy from {}: {}", part.display(), String::from_utf8_lossy(&o.stderr));
    o.stdout
}

#[test]
fn mbr_primary_and_logical_partitions_are_files() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let disk = s.path("sda.raw");
    set_size(&disk, 448 * MIB);
    // 1: ext4, starting off the 64 KiB block grid; 2: extended holding
    // 5: FAT and 6: XFS (at least 300 MiB), which ends where the disk ends.
    let parts = sfdisk(&disk, "label: dos\nstart=2049, size=81920, type=83\nstart=86016, type=5\nstart=88064, size=32MiB, type=c\nstart=157696, type=83\n");
    let numbers: Vec<u32> = parts.iter().map(|p| p.0).collect();
    assert_eq!(numbers, [1, 2, 5, 6], "sfdisk made another layout: {parts:?}");
    let range = |n: u32| parts.iter().find(|p| p.0 == n).map(|p| (p.1, p.2)).unwrap();
    assert_eq!(range(1).0, 2049 * 512);
    assert_eq!(range(6).0 + range(6).1, 448 * MIB, "partition 6 ends at the end of the disk");
    let mut rng = Rng::new(61);
    let (t1, t5, t6) = (tree(&mut rng, &["etc/hosts", "srv/a.bin"]), tree(&mut rng, &["BOOT.TXT", "EFI.BIN"]), tree(&mut rng, &["var/log/x", "home/u/y.bin", "z"]));
    format_and_fill(&disk, range(1), "ext4", &t1, &s.mnt("fill"));
    format_and_fill(&disk, range(5), "vfat", &t5, &s.mnt("fill"));
    format_and_fill(&disk, range(6), "xfs", &t6, &s.mnt("fill"));
    let first = s.path("first.raw");
    save_copy(&disk, &first);
    Ingest::new(&repo, "vm1").disk("sda", &disk).checkpoint("c1").run().ok();

    // Change the ext4 partition; the next point is a scan.
    let mut t1b = t1.clone();
    let dev = LoopDev::new(&disk, range(1).0, range(1).1);
    let rw = LoopMount::with_options(Path::new(&dev.0), &s.mnt("fill"), "rw");
    put(&rw.mp, &mut t1b, "etc/new.conf", rng.text(5000));
    remove(&rw.mp, &mut t1b, "srv/a.bin");
    drop(rw);
    drop(dev);
    Ingest::new(&repo, "vm1").disk("sda", &disk).checkpoint("c2").run().ok();

    let m = FuseMount::start(&repo, &s.mnt("m"));
    let names = point_names(&repo, "vm1");
    let (old, new) = (m.point_dir("vm1", &names[0]), m.point_dir("vm1", &names[1]));
    // The extended container holds no filesystem and gets no file.
    let want = ["sda-part1.img", "sda-part5.img", "sda-part6.img", "sda.img"];
    assert_eq!(dir_names(&old), want);
    assert_eq!(dir_names(&new), want);
    for n in [1, 5, 6] {
        let (start, len) = range(n);
        for (dir, src) in [(&new, &disk), (&old, &first)] {
            assert_is_range(&dir.join(format!("sda-part{n}.img")), src, start, len);
            assert_holes_are_the_disks(&dir.join(format!("sda-part{n}.img")), src, start, len);
        }
    }
    let part = |dir: &Path, n: u32| dir.join(format!("sda-part{n}.img"));
    // The XFS partition, most of the disk, holds little data.
    assert_copies_sparsely(&part(&new, 6), &disk, range(6).0, range(6).1, &s);
    assert_image_tree(&part(&old, 1), &s.mnt("l"), &t1, "ext4 partition, first point");
    assert_image_tree(&part(&new, 1), &s.mnt("l"), &t1b, "ext4 partition, second point");
    let xfs = LoopMount::with_options(&part(&new, 6), &s.mnt("l"), "loop,ro,norecovery");
    assert_tree_eq(&read_tree(&xfs.mp), &t6, "xfs partition");
    drop(xfs);
    for (name, data) in &t5 {
        assert_eq!(&fat_file(&part(&new, 5), name), data, "FAT partition, file {name}");
    }
    // Not writable, like the images.
    let err = fs::OpenOptions::new().write(true).open(part(&new, 1)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "EROFS expected: {err}");
    m.unmount().ok();
}

#[test]
fn gpt_partitions_numbered_by_entry_and_read_from_backup_header() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let disk = s.path("sda.raw");
    set_size(&disk, 96 * MIB);
    sfdisk(&disk, "label: gpt\nsize=24MiB\nsize=8MiB\nsize=40MiB\n");
    // Remove entry 2: Linux keeps calling the third partition sda3.
    sh("sfdisk", &["--quiet", "--no-reread", "--no-tell-kernel", "--delete", &p(&disk), "2"]);
    let parts = layout(&disk);
    let numbers: Vec<u32> = parts.iter().map(|p| p.0).collect();
    assert_eq!(numbers, [1, 3]);
    let mut rng = Rng::new(62);
    let (t1, t3) = (tree(&mut rng, &["BOOTX64.EFI", "X.CFG"]), tree(&mut rng, &["root/.profile", "data/d.bin"]));
    format_and_fill(&disk, (parts[0].1, parts[0].2), "vfat", &t1, &s.mnt("fill"));
    format_and_fill(&disk, (parts[1].1, parts[1].2), "ext4", &t3, &s.mnt("fill"));
    Ingest::new(&repo, "vm1").disk("sda", &disk).checkpoint("c1").run().ok();
    // A second machine whose primary GPT header is damaged: the backup
    // header at the end of the disk gives the same partitions.
    let damaged = s.path("damaged.raw");
    save_copy(&disk, &damaged);
    write_at(&damaged, 512 + 8, &[0xFF; 16]);
    // And a disk without any partition table.
    let plain = s.path("plain.raw");
    mkfs_ext4(&plain, 32 * MIB);
    Ingest::new(&repo, "vm2").disk("sda", &damaged).disk("sdb", &plain).run().ok();

    let m = FuseMount::start(&repo, &s.mnt("m"));
    let p1 = m.point_dir("vm1", &latest_point(&repo, "vm1"));
    let p2 = m.point_dir("vm2", &latest_point(&repo, "vm2"));
    assert_eq!(dir_names(&p1), ["sda-part1.img", "sda-part3.img", "sda.img"]);
    assert_eq!(dir_names(&p2), ["sda-part1.img", "sda-part3.img", "sda.img", "sdb.img"]);
    for (n, start, len) in &parts {
        for (dir, src) in [(&p1, &disk), (&p2, &damaged)] {
            assert_is_range(&dir.join(format!("sda-part{n}.img")), src, *start, *len);
            assert_holes_are_the_disks(&dir.join(format!("sda-part{n}.img")), src, *start, *len);
        }
    }
    for (name, data) in &t1 {
        assert_eq!(&fat_file(&p1.join("sda-part1.img"), name), data, "FAT partition, file {name}");
    }
    assert_image_tree(&p1.join("sda-part3.img"), &s.mnt("l"), &t3, "ext4 on GPT partition 3");
    assert_image_tree(&p2.join("sda-part3.img"), &s.mnt("l"), &t3, "ext4 found through the backup GPT");
    // A partition that does not exist is not there.
    assert!(!p1.join("sda-part2.img").exists());
    m.unmount().ok();

    // export takes a partition by the same name.
    let out = s.path("part3.img");
    cbtfs(&["export", &p(&repo), "vm1", "latest", "sda-part3", &p(&out)]).ok();
    assert_is_range(&out, &disk, parts[1].1, parts[1].2);
    let missing = s.path("part2.img");
    let err = cbtfs(&["export", &p(&repo), "vm1", "latest", "sda-part2", &p(&missing)]).code_is(1);
    assert!(err.stderr.contains("no partition 2") && err.stderr.contains("sda-part1, sda-part3"), "{}", err.describe());
    let err = cbtfs(&["export", &p(&repo), "vm2", "latest", "sdb-part1", &p(&missing)]).code_is(1);
    assert!(err.stderr.contains("no partition table"), "{}", err.describe());
    // Only as the mount spells it.
    for name in ["sda-part03", "sda-part+3"] {
        let err = cbtfs(&["export", &p(&repo), "vm1", "latest", name, &p(&missing)]).code_is(1);
        assert!(err.stderr.contains(&format!("no disk {name}")), "{}", err.describe());
    }
    assert!(!missing.exists());
}
