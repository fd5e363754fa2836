//! Shape of `cbtfs list --json` and the full/map/scan kinds per point and
//! per disk.

mod common;

use common::*;
use serde_json::Value;

const BS: u64 = 64 * KIB;

#[track_caller]
fn as_u64(v: &Value, what: &str) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("{what} is not an unsigned integer: {v}"))
}

/// Checks the fields every disk object has, returns (blocks_read, blocks_stored, bytes_stored).
#[track_caller]
fn disk_fields(d: &Value, name: &str, size: u64, kind: &str) -> (u64, u64, u64) {
    assert_eq!(d["name"], name, "disk name in {d}");
    assert_eq!(as_u64(&d["size"], "size"), size, "size of {name} in {d}");
    assert_eq!(d["kind"], kind, "kind of {name} in {d}");
    assert!(
        d["reason"].is_null() || d["reason"].is_string(),
        "reason must be null or a string: {d}"
    );
    let read = as_u64(&d["blocks_read"], "blocks_read");
    let stored = as_u64(&d["blocks_stored"], "blocks_stored");
    let bytes = as_u64(&d["bytes_stored"], "bytes_stored");
    assert!(stored <= read, "more blocks stored than read: {d}");
    assert!(read <= size.div_ceil(BS), "more blocks read than the disk has: {d}");
    (read, stored, bytes)
}

#[track_caller]
fn point_fields(pt: &Value, seq: u64, checkpoint: Option<&str>, kind: &str, disks: &[&str]) {
    let name = pt["name"].as_str().expect("name");
    assert_point_name(name, seq);
    assert_eq!(as_u64(&pt["seq"], "seq"), seq, "{pt}");
    match checkpoint {
        Some(c) => assert_eq!(pt["checkpoint"], c, "{pt}"),
        None => assert!(pt["checkpoint"].is_null(), "checkpoint must be null: {pt}"),
    }
    assert_eq!(pt["kind"], kind, "point kind: {pt}");
    // created "YYYY-MM-DDTHH:MM:SSZ" is the time in the folder name.
    let created = pt["created"].as_str().expect("created");
    assert_eq!(created.len(), 20, "created {created:?}");
    let b = created.as_bytes();
    assert!(
        b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':' && b[19] == b'Z',
        "created {created:?} is not YYYY-MM-DDTHH:MM:SSZ"
    );
    let compact: String = created.chars().filter(|c| *c != '-' && *c != ':').collect();
    assert_eq!(&name[7..], compact, "folder name and created time disagree: {pt}");
    let mut got: Vec<&str> = pt["disks"]
        .as_array()
        .expect("disks")
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, disks, "disks of point {name}");
}

#[test]
fn list_json_shape_and_kinds() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let mut rng = Rng::new(0x11);

    // sda: 16 distinct random blocks; sdb: 8 blocks + a 100 byte tail;
    // sdc: 1 MiB of written zeros with one random block.
    let sda = s.path("sda.raw");
    let sdb = s.path("sdb.raw");
    let sdc = s.path("sdc.raw");
    write_at(&sda, 0, &rng.bytes(MIB as usize));
    write_at(&sdb, 0, &rng.bytes(512 * KIB as usize + 100));
    write_at(&sdc, 0, &vec![0u8; MIB as usize]);
    write_at(&sdc, 3 * BS, &rng.bytes(BS as usize));

    let all = |i: Ingest| i.disk("sda", &sda).disk("sdb", &sdb).disk("sdc", &sdc);

    // 1: first ingest -> full.
    all(Ingest::new(&repo, "vm1")).checkpoint("c1").run().ok();
    let pts = points(&repo, "vm1");
    assert_eq!(pts.len(), 1);
    point_fields(&pts[0], 1, Some("c1"), "full", &["sda", "sdb", "sdc"]);
    let (_, st, by) = disk_fields(point_disk(&pts[0], "sda"), "sda", MIB, "full");
    assert_eq!(st, 16, "16 distinct random blocks must be stored");
    assert!(by >= 16 * BS * 9 / 10, "random data cannot shrink much: {by}");
    let (_, st, _) = disk_fields(point_disk(&pts[0], "sdb"), "sdb", 512 * KIB + 100, "full");
    assert_eq!(st, 9);
    let (_, st, _) = disk_fields(point_disk(&pts[0], "sdc"), "sdc", MIB, "full");
    assert_eq!(st, 1, "all-zero blocks must not be stored");

    // 2: maps tied to c1 for every disk -> map.
    let new2 = rng.bytes(BS as usize);
    write_at(&sda, 2 * BS, &new2);
    let new5 = rng.bytes(BS as usize);
    write_at(&sda, 5 * BS, &new5);
    let tiny = rng.bytes(10);
    write_at(&sdb, 10, &tiny);
    let m_sda = s.path("m_sda.json");
    let m_sdb = s.path("m_sdb.json");
    let m_sdc = s.path("m_sdc.json");
    write_map(&m_sda, &[(2 * BS, BS), (5 * BS, BS)]);
    write_map(&m_sdb, &[(10, 10)]);
    write_map(&m_sdc, &[]);
    let out = all(Ingest::new(&repo, "vm1"))
        .changes("sda", &m_sda)
        .changes("sdb", &m_sdb)
        .changes("sdc", &m_sdc)
        .since("c1")
        .checkpoint("c2")
        .run()
        .ok();
    assert!(!out.stderr.contains("full scan"), "{}", out.describe());
    let pts = points(&repo, "vm1");
    assert_eq!(pts.len(), 2);
    point_fields(&pts[1], 2, Some("c2"), "map", &["sda", "sdb", "sdc"]);
    let (rd, st, _) = disk_fields(point_disk(&pts[1], "sda"), "sda", MIB, "map");
    assert_eq!((rd, st), (2, 2), "map of two blocks: read 2, stored 2");
    let (rd, st, _) = disk_fields(point_disk(&pts[1], "sdb"), "sdb", 512 * KIB + 100, "map");
    assert_eq!((rd, st), (1, 1), "10-byte extent touches one block");
    let (rd, st, by) = disk_fields(point_disk(&pts[1], "sdc"), "sdc", MIB, "map");
    assert_eq!((rd, st, by), (0, 0, 0), "empty map reads and stores nothing");

    // 3: a map for sda only; sdb and sdc have no map -> scanned.
    let new7 = rng.bytes(BS as usize);
    write_at(&sda, 7 * BS, &new7);
    let m3 = s.path("m3.json");
    write_map(&m3, &[(7 * BS, BS)]);
    let out = all(Ingest::new(&repo, "vm1"))
        .changes("sda", &m3)
        .since("c2")
        .run()
        .ok();
    assert!(out.warns_full_scan("sdb"), "{}", out.describe());
    assert!(out.warns_full_scan("sdc"), "{}", out.describe());
    let pts = points(&repo, "vm1");
    assert_eq!(pts.len(), 3);
    point_fields(&pts[2], 3, None, "scan", &["sda", "sdb", "sdc"]);
    let (rd, st, _) = disk_fields(point_disk(&pts[2], "sda"), "sda", MIB, "map");
    assert_eq!((rd, st), (1, 1));
    for d in ["sdb", "sdc"] {
        let size = if d == "sdb" { 512 * KIB + 100 } else { MIB };
        let dj = point_disk(&pts[2], d);
        let (_, st, _) = disk_fields(dj, d, size, "scan");
        assert_eq!(st, 0, "an unchanged scanned disk stores no block: {dj}");
        let reason = dj["reason"].as_str().unwrap_or("");
        assert!(!reason.trim().is_empty(), "a scanned disk must give a reason: {dj}");
    }

    // 4: --full -> full for every disk.
    all(Ingest::new(&repo, "vm1")).full().checkpoint("c4").run().ok();
    let pts = points(&repo, "vm1");
    assert_eq!(pts.len(), 4);
    point_fields(&pts[3], 4, Some("c4"), "full", &["sda", "sdb", "sdc"]);
    disk_fields(point_disk(&pts[3], "sda"), "sda", MIB, "full");
    disk_fields(point_disk(&pts[3], "sdb"), "sdb", 512 * KIB + 100, "full");
    disk_fields(point_disk(&pts[3], "sdc"), "sdc", MIB, "full");

    // A second machine; filtering by machine.
    Ingest::new(&repo, "vm2").disk("xvda", &sdb).run().ok();
    let v = list_json(&repo);
    let mut names: Vec<&str> = v["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["vm1", "vm2"]);
    let v2 = list_machine_json(&repo, "vm2");
    let ms = v2["machines"].as_array().expect("machines");
    assert_eq!(ms.len(), 1, "list REPO vm2 must show only vm2: {v2}");
    assert_eq!(ms[0]["name"], "vm2");
    let p2 = ms[0]["points"].as_array().unwrap();
    assert_eq!(p2.len(), 1);
    point_fields(&p2[0], 1, None, "full", &["xvda"]);
    let v1 = list_machine_json(&repo, "vm1");
    let full_vm1 = v["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "vm1")
        .unwrap();
    assert_eq!(&v1["machines"][0], full_vm1, "filtered and full listing differ for vm1");

    // The text listing names every point.
    let out = cbtfs(&["list", &p(&repo)]).ok();
    for pt in point_names(&repo, "vm1").iter().chain(point_names(&repo, "vm2").iter()) {
        assert!(out.stdout.contains(pt.as_str()), "text list lacks {pt}:\n{}", out.stdout);
    }

    // And the data read back matches the sources at each step.
    let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
    let last = latest_point(&repo, "vm1");
    assert_same_file(&fuse.image("vm1", &last, "sda"), &sda);
    assert_same_file(&fuse.image("vm1", &last, "sdb"), &sdb);
    assert_same_file(&fuse.image("vm1", &last, "sdc"), &sdc);
    let p2name = &point_names(&repo, "vm1")[1];
    assert_bytes_at(&fuse.image("vm1", p2name, "sda"), 2 * BS, &new2);
    assert_bytes_at(&fuse.image("vm1", p2name, "sdb"), 10, &tiny);
}

/// An empty repository lists no machine.
#[test]
fn list_json_empty_repository() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let v = list_json(&repo);
    assert_eq!(v["machines"], Value::Array(vec![]), "{v}");
}
