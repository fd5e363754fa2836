//! Damage in a pack file: `verify` exits 3 naming the pack and the users
//! of the damaged block; reading that block through the mount fails with
//! EIO and never returns wrong bytes; the rest still reads right.

mod common;

use common::*;
use serde_json::Value;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const BS: u64 = 64 * KIB;

fn flip_byte(path: &Path, offset: u64) {
    let b = read_at(path, offset, 1).unwrap();
    assert_eq!(b.len(), 1, "offset {offset} is past the end of {}", path.display());
    write_at(path, offset, &[b[0] ^ 0xFF]);
}

#[track_caller]
fn assert_eio<T: std::fmt::Debug>(r: std::io::Result<T>, what: &str) {
    match r {
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(EIO),
            "{what}: expected EIO, got {e} ({:?})",
            e.kind()
        ),
        Ok(v) => panic!("{what}: expected EIO, read succeeded ({} )", short_debug(&v)),
    }
}

fn short_debug<T: std::fmt::Debug>(v: &T) -> String {
    let s = format!("{v:?}");
    s.chars().take(80).collect()
}

fn read_whole(path: &Path) -> std::io::Result<Vec<u8>> {
    fs::read(path)
}

#[test]
fn damaged_block_is_reported_and_unreadable() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let mut rng = Rng::new(0xbad);
    // Two random blocks at 0 and 64 KiB, zeros after.
    let src = s.path("sda.raw");
    set_size(&src, MIB);
    let blk0 = rng.bytes(BS as usize);
    let blk1 = rng.bytes(BS as usize);
    write_at(&src, 0, &blk0);
    write_at(&src, BS, &blk1);
    Ingest::new(&repo, "vm1").disk("sda", &src).run().ok();
    let point = latest_point(&repo, "vm1");
    // A second machine with the same content shares the blocks.
    let twin = s.path("twin.raw");
    save_copy(&src, &twin);
    Ingest::new(&repo, "vm2").disk("xvda", &twin).run().ok();
    let point2 = latest_point(&repo, "vm2");
    let v = verify_ok(&repo);
    assert!(v["blocks_checked"].as_u64().unwrap() >= 2, "{v}");
    assert_eq!(v["damaged"], Value::Array(vec![]), "{v}");
    cbtfs(&["verify", &p(&repo)]).ok();

    let packs: Vec<PathBuf> = pack_paths(&repo)
        .into_iter()
        .filter(|p| fs::metadata(p).unwrap().len() > 32)
        .collect();
    assert_eq!(packs.len(), 1, "expected a single pack holding data: {packs:?}");
    let pack = &packs[0];
    let pack_name = pack.file_name().unwrap().to_string_lossy().into_owned();
    // Inside the payload of the first frame.
    flip_byte(pack, 32 + 32 + 100);

    // verify --json
    let out = cbtfs(&["verify", &p(&repo), "--json"]);
    assert_eq!(out.code, Some(3), "verify must exit 3 on damage:\n{}", out.describe());
    let v = out.stdout_json();
    assert_eq!(v["ok"], Value::Bool(false), "{v}");
    let damaged = v["damaged"].as_array().expect("damaged array");
    assert_eq!(damaged.len(), 1, "exactly one block is damaged: {v}");
    let d = &damaged[0];
    assert_eq!(d["pack"], pack_name.as_str(), "{d}");
    assert!(d["offset"].is_u64(), "offset must be a number: {d}");
    // What is wrong, as docs/json.md shows it; the pack and offset have
    // fields of their own.
    assert_eq!(d["error"], "checksum mismatch", "{d}");
    let users = d["used_by"].as_array().expect("used_by");
    assert!(
        users
            .iter()
            .any(|u| u["machine"] == "vm1" && u["point"] == point.as_str() && u["disk"] == "sda"),
        "used_by must name vm1/{point}/sda: {d}"
    );
    assert!(
        users
            .iter()
            .any(|u| u["machine"] == "vm2" && u["point"] == point2.as_str() && u["disk"] == "xvda"),
        "used_by must name vm2/{point2}/xvda, which shares the block: {d}"
    );

    // verify, text mode.
    let out = cbtfs(&["verify", &p(&repo)]);
    assert_eq!(out.code, Some(3), "{}", out.describe());
    for needle in [pack_name.as_str(), "vm1", point.as_str(), "sda", "vm2", point2.as_str(), "xvda"] {
        assert!(
            out.stderr.contains(needle),
            "verify's report must name {needle:?}:\n{}",
            out.describe()
        );
    }

    // Reading through the mount.
    let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
    let img = fuse.image("vm1", &point, "sda");
    assert_eq!(fs::metadata(&img).unwrap().len(), MIB);
    // Zero regions still read.
    assert_zero_at(&img, 512 * KIB, 256 * KIB as usize);
    assert_zero_at(&img, MIB - 4096, 4096);
    // Exactly one of the two data blocks is damaged; the other reads right.
    let r0 = read_at(&img, 0, BS as usize);
    let r1 = read_at(&img, BS, BS as usize);
    let (bad, good, good_data, good_off) = match (&r0, &r1) {
        (Err(_), Ok(_)) => (r0, r1, &blk1, BS),
        (Ok(_), Err(_)) => (r1, r0, &blk0, 0),
        (Err(_), Err(_)) => panic!("both blocks fail to read, only one is damaged: {r0:?} / {r1:?}"),
        (Ok(a), Ok(b)) => panic!(
            "the damaged block read without error (block 0 right: {}, block 1 right: {})",
            a == &blk0,
            b == &blk1
        ),
    };
    assert_eio(bad, "read of the damaged block");
    assert_eq!(good.unwrap(), *good_data, "undamaged block at {good_off} reads wrong");
    // The twin shares the damaged block.
    let img2 = fuse.image("vm2", &point2, "xvda");
    assert_eio(read_whole(&img2), "read of the twin image");
    assert_zero_at(&img2, 512 * KIB, 4096);
    // A whole-image read (like cmp) fails with EIO too.
    assert_eio(read_whole(&img), "read of the whole image");
    // Repeated reads keep failing (no cached wrong data).
    assert_eio(read_whole(&img), "second read of the whole image");
}

/// A fresh repository with one point of 8 distinct random blocks.
fn eight_block_repo(dir: PathBuf, src: &Path) -> PathBuf {
    init_repo(&dir, None);
    Ingest::new(&dir, "vm1").disk("sda", src).run().ok();
    dir
}

/// Frame boundaries of a pack: (offset, stored payload length).
fn frames(pack: &Path) -> Vec<(u64, u64)> {
    let data = fs::read(pack).unwrap();
    assert_eq!(&data[..8], b"CBTFSPK\x01", "pack magic");
    let mut v = Vec::new();
    let mut off = 32usize;
    while off + 32 <= data.len() {
        assert_eq!(&data[off..off + 4], b"CBFR", "frame magic at {off}");
        let stored = u32::from_le_bytes(data[off + 12..off + 16].try_into().unwrap()) as usize;
        v.push((off as u64, stored as u64));
        off += 32 + stored;
    }
    assert_eq!(off, data.len(), "frames do not tile the pack");
    v
}

/// Any byte flipped after offset 64 is caught by verify and makes the
/// image unreadable (EIO), never wrong.
#[test]
fn any_flipped_byte_is_detected() {
    let s = Scratch::new();
    // Four incompressible blocks, then four compressible (text) ones.
    let src = s.path("sda.raw");
    let mut rng = Rng::new(8);
    write_at(&src, 0, &rng.bytes(4 * BS as usize));
    write_at(&src, 4 * BS, &rng.text(4 * BS as usize));

    let pristine = eight_block_repo(s.path("pristine"), &src);
    let pack0 = pack_paths(&pristine).remove(0);
    let fr = frames(&pack0);
    assert_eq!(fr.len(), 8, "8 distinct blocks make 8 frames: {fr:?}");
    let len = fs::metadata(&pack0).unwrap().len();
    let (second, second_len) = fr[1];
    let positions: [(&str, u64); 12] = [
        ("first payload byte", 64),
        ("second frame magic", second),
        ("second frame codec", second + 4),
        ("second frame raw length", second + 9),
        ("second frame stored length", second + 13),
        ("second frame checksum", second + 20),
        ("second frame digest", second + 30),
        ("second frame payload middle", second + 32 + second_len / 2),
        ("sixth frame codec", fr[5].0 + 4),
        ("sixth frame payload middle", fr[5].0 + 32 + fr[5].1 / 2),
        ("sixth frame payload last byte", fr[5].0 + 32 + fr[5].1 - 1),
        ("last byte", len - 1),
    ];
    for (i, (what, pos)) in positions.iter().enumerate() {
        let repo = eight_block_repo(s.path(&format!("r{i}")), &src);
        let packs = pack_paths(&repo);
        assert_eq!(packs.len(), 1);
        flip_byte(&packs[0], *pos);
        let out = cbtfs(&["verify", &p(&repo), "--json"]);
        assert_eq!(
            out.code,
            Some(3),
            "verify must detect a flipped byte at {pos} ({what}):\n{}",
            out.describe()
        );
        let v = out.stdout_json();
        assert_eq!(v["ok"], Value::Bool(false), "{v}");
        assert!(!v["damaged"].as_array().unwrap().is_empty(), "{v}");

        let fuse = FuseMount::start(&repo, &s.mnt(&format!("f{i}")));
        let img = fuse.image("vm1", &latest_point(&repo, "vm1"), "sda");
        match read_whole(&img) {
            Err(e) => assert_eq!(
                e.raw_os_error(),
                Some(EIO),
                "flipped byte at {pos} ({what}): expected EIO, got {e}"
            ),
            Ok(data) => {
                let right = data == fs::read(&src).unwrap();
                panic!(
                    "flipped byte at {pos} ({what}): the image read without error \
                     (bytes {}), expected EIO",
                    if right { "right" } else { "WRONG" }
                );
            }
        }
        drop(fuse);
    }
}

/// An intact pack of another repository put in place of ours (a restore
/// from the wrong backup, a copy mix-up): every frame passes its checksum
/// and has the right lengths, so only the digest prefix tells. The mount
/// must answer EIO, never the other repository's bytes.
#[test]
fn pack_of_another_repository_reads_as_eio() {
    let s = Scratch::new();
    let (ra, rb) = (s.path("ra"), s.path("rb"));
    init_repo(&ra, Some("4K"));
    init_repo(&rb, Some("4K"));
    let (da, db) = (s.path("a.raw"), s.path("b.raw"));
    // Random data: stored raw, so every frame has the same length.
    write_at(&da, 0, &Rng::new(1).bytes(64 * 1024));
    write_at(&db, 0, &Rng::new(2).bytes(64 * 1024));
    Ingest::new(&ra, "vm").disk("sda", &da).run().ok();
    Ingest::new(&rb, "vm").disk("sda", &db).run().ok();
    let packs = pack_files(&ra);
    assert_eq!(packs.len(), 1);
    assert_eq!(pack_files(&rb), packs, "same names and sizes, so the swap is undetectable by size");
    let name = &packs[0].0;
    std::fs::copy(rb.join("packs").join(name), ra.join("packs").join(name)).unwrap();

    let fuse = FuseMount::start(&ra, &s.mnt("swap"));
    let img = File::open(fuse.image("vm", &latest_point(&ra, "vm"), "sda")).unwrap();
    let mut buf = vec![0u8; 4096];
    assert_eio(img.read_exact_at(&mut buf, 0), "read of a block from a foreign pack");
    let out = cbtfs(&["verify", &p(&ra)]);
    assert_eq!(out.code, Some(3), "verify must report the swapped pack:\n{}", out.describe());
}

/// Damage met by a long sequential read, whose blocks read-ahead fetched
/// ahead of it (runs of frames read with direct I/O and staged): the
/// damaged block's megabyte fails with EIO, every other megabyte reads
/// right, before and after, and a second pass fails the same way.
#[test]
fn damage_in_a_long_sequential_read_is_eio() {
    let s = Scratch::new();
    let repo = s.repo();
    let src = s.path("sda.raw");
    set_size(&src, 48 * MIB);
    write_at(&src, 0, &Rng::new(0x5eed).bytes(48 * MIB as usize));
    eight_block_repo(repo.clone(), &src);
    let packs = pack_paths(&repo);
    // Block 400 (in the 26th megabyte): its frame, wherever it lies.
    let mut all: Vec<(PathBuf, u64, u64)> = Vec::new();
    for p in &packs {
        all.extend(frames(p).into_iter().map(|(o, l)| (p.clone(), o, l)));
    }
    assert_eq!(all.len(), 768, "one frame per block");
    // The frame holding block 400 (random data, so stored raw): ingest
    // does not lay blocks down in disk order.
    let target = 400usize;
    let want = read_at(&src, target as u64 * BS, BS as usize).unwrap();
    let holding: Vec<&(PathBuf, u64, u64)> =
        all.iter().filter(|(p, o, l)| *l == BS && read_at(p, o + 32, BS as usize).unwrap() == want).collect();
    assert_eq!(holding.len(), 1, "one frame holds block {target}");
    let (pack, off, len) = holding[0].clone();
    flip_byte(&pack, off + 32 + len / 2);
    let m = FuseMount::start(&repo, &s.mnt("m"));
    let img = m.image("vm1", &latest_point(&repo, "vm1"), "sda");
    for pass in 0..2 {
        let f = File::open(&img).unwrap();
        for mb in 0..48u64 {
            let mut buf = vec![0u8; MIB as usize];
            let r = f.read_exact_at(&mut buf, mb * MIB);
            if mb == target as u64 * BS / MIB {
                assert_eio(r, &format!("pass {pass}, megabyte {mb} holding the damaged block"));
            } else {
                r.unwrap_or_else(|e| panic!("pass {pass}, megabyte {mb}: {e}"));
                assert!(buf == read_at(&src, mb * MIB, MIB as usize).unwrap(), "pass {pass}, megabyte {mb} read wrong bytes");
            }
        }
    }
    m.unmount().ok();
}

/// A damaged block size in the index (the setting every block's place is
/// computed from): verify reports every block, a read through the mount
/// fails with EIO instead of returning another place's bytes, and a size
/// `init` could not have set is refused as damage by every command.
#[test]
fn damaged_block_size_is_reported_and_unreadable() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let src = s.path("sda.raw");
    write_at(&src, 0, &Rng::new(9).bytes(3 << 20));
    Ingest::new(&repo, "vm").disk("sda", &src).run().ok();
    let set_block_size = |v: &str| {
        let script = "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nc.execute(\"UPDATE repo_meta SET value = ? WHERE key = 'block_size'\", (sys.argv[2],))\nc.commit()\nc.close()";
        sh("python3", &["-c", script, &p(&repo.join("index.sqlite")), v]);
    };
    set_block_size("32768");
    let out = cbtfs(&["verify", &p(&repo), "--json"]);
    assert_eq!(out.code, Some(3), "{}", out.describe());
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["damaged"].as_array().unwrap().len(), 48, "{v}");
    assert!(v["damaged"][0]["error"].as_str().unwrap().contains("32768 bytes"), "{v}");
    {
        let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
        let img = File::open(fuse.image("vm", &latest_point(&repo, "vm"), "sda")).unwrap();
        let mut buf = vec![0u8; 4096];
        assert_eio(img.read_exact_at(&mut buf, 32768), "a read inside a block of the wrong size");
        assert_eio(img.read_exact_at(&mut vec![0u8; 32768], 0), "a whole block of the wrong size");
    }
    for bad in ["0", "12345", "1073741824"] {
        set_block_size(bad);
        let out = cbtfs(&["list", &p(&repo)]);
        assert_eq!(out.code, Some(1), "{}", out.describe());
        assert!(out.stderr.contains("damaged") && out.stderr.contains("block size"), "{}", out.describe());
    }
}
