//! Ingest is atomic under SIGKILL, two ingests never interleave, and what
//! ingests leave in SQLite's log reads back and stays small.

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

/// Writes `size` bytes of incompressible data to `path`.
fn random_file(path: &Path, size: u64, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; 4 * MIB as usize];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        write_at(path, off, &buf[..n]);
        off += n as u64;
    }
}

/// What the mount shows for a machine: sorted folder entries.
fn mounted_entries(repo: &Path, s: &Scratch, tag: &str, machine: &str) -> Vec<String> {
    let fuse = FuseMount::start(repo, &s.mnt(tag));
    let dir = fuse.machine_dir(machine);
    if dir.exists() {
        dir_names(&dir)
    } else {
        Vec::new()
    }
}

fn expected_entries(repo: &Path, machine: &str) -> Vec<String> {
    let mut v = point_names(repo, machine);
    if !v.is_empty() {
        v.push("latest".into());
    }
    v.sort();
    v
}

#[test]
fn sigkill_during_ingest_leaves_repository_as_before() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);

    // A first, small point the kills must not disturb.
    let small = s.path("small.raw");
    write_at(&small, 0, &Rng::new(9).bytes(3 * MIB as usize + 5));
    Ingest::new(&repo, "vm1").disk("sda", &small).checkpoint("k0").run().ok();

    let big = s.path("big.raw");
    random_file(&big, 256 * MIB, 0xb16);
    let big_copy = s.path("big.copy");
    save_copy(&big, &big_copy);

    let mut completed_early = 0;
    let mut killed_with_leftovers = 0;
    for (i, delay_ms) in [30u64, 80, 150, 300, 500].into_iter().enumerate() {
        let before = list_json(&repo);
        let points_before = point_names(&repo, "vm1").len();
        let ing = Ingest::new(&repo, "vm1")
            .disk("sda", &small)
            .disk("sdb", &big)
            .checkpoint(&format!("k{}", i + 1));
        let mut child = ing.spawn(s.dir.path(), &format!("kill{i}"));
        sleep(Duration::from_millis(delay_ms));
        if let Some(st) = child.try_wait() {
            // Finished before it could be killed: it must have succeeded.
            assert!(st.success(), "ingest failed on its own: {st}");
            completed_early += 1;
            continue;
        }
        child.kill();
        eprintln!("ingest killed after {delay_ms} ms: {}", child.stderr_so_far().trim());
        drop(child);

        let after = list_json(&repo);
        if after != before {
            // The kill landed after the commit (while the ingest tidied
            // up): then the point must be there whole.
            let pts = point_names(&repo, "vm1");
            assert_eq!(pts.len(), points_before + 1, "one new point, or none: {after}");
            let fuse = FuseMount::start(&repo, &s.mnt(&format!("late{i}")));
            assert_same_file(&fuse.image("vm1", pts.last().unwrap(), "sdb"), &big_copy);
            assert_same_file(&fuse.image("vm1", pts.last().unwrap(), "sda"), &small);
            drop(fuse);
            verify_ok(&repo);
            completed_early += 1;
            continue;
        }
        // A killed ingest leaves packs unknown to the index, and uncommitted
        // bytes at the end of the pack it appended to; each ingest first
        // removes what the previous one left, so there is at most one tail.
        let v = verify_ok(&repo);
        let tails = v["uncommitted_tails"].as_array().unwrap().len();
        assert!(tails <= 1, "uncommitted tails pile up: {v}");
        killed_with_leftovers += v["leftover_packs"].as_array().unwrap().len() + tails;
        assert_eq!(
            mounted_entries(&repo, &s, &format!("k{i}"), "vm1"),
            expected_entries(&repo, "vm1"),
            "mount shows a partial point after SIGKILL at {delay_ms} ms"
        );
    }
    assert!(completed_early < 5, "no ingest was ever interrupted");
    assert!(killed_with_leftovers > 0, "no kill left uncommitted bytes: the reclaim path went untested");

    // The next ingest works, and reads back exactly.
    let out = Ingest::new(&repo, "vm1")
        .disk("sda", &small)
        .disk("sdb", &big)
        .checkpoint("final")
        .run();
    assert_eq!(out.code, Some(0), "ingest after kills failed:\n{}", out.describe());
    let v = verify_ok(&repo);
    assert_eq!(v["leftover_packs"], serde_json::json!([]), "the next ingest reclaims leftover packs: {v}");
    assert_eq!(v["uncommitted_tails"], serde_json::json!([]), "the next ingest cuts uncommitted bytes off: {v}");
    // Ingests append to the newest pack until it is full: every pack but
    // the newest holds at least the pack size (16 MiB by default).
    let packs = pack_files(&repo);
    let (newest, full) = packs.split_last().unwrap();
    assert!(full.iter().all(|(_, n)| *n >= 16 * MIB), "only the newest pack may be short: {packs:?}");
    assert!(newest.1 > 0);
    let names = point_names(&repo, "vm1");
    for (i, n) in names.iter().enumerate() {
        assert_point_name(n, i as u64 + 1);
    }
    let fuse = FuseMount::start(&repo, &s.mnt("final"));
    let last = names.last().unwrap();
    assert_same_file(&fuse.image("vm1", last, "sdb"), &big_copy);
    assert_same_file(&fuse.image("vm1", last, "sda"), &small);
    assert_same_file(&fuse.image("vm1", &names[0], "sda"), &small);
    assert_latest(&fuse.machine_dir("vm1"), last);
}

/// Two ingests at once: the second either reports the repository busy
/// (exit 4) or waits; both never interleave, and what succeeded reads back.
#[test]
fn concurrent_ingests_do_not_interleave() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let big = s.path("big.raw");
    random_file(&big, 192 * MIB, 0xc0c0);
    let small = s.path("small.raw");
    write_at(&small, 0, &Rng::new(77).bytes(2 * MIB as usize + 3));

    let packs_before: u64 = pack_files(&repo).iter().map(|(_, n)| n).sum();
    let mut a = Ingest::new(&repo, "vm1")
        .disk("big", &big)
        .checkpoint("a")
        .spawn(s.dir.path(), "a");
    // Wait until A is writing data (so it holds the lock), or has ended.
    wait_until(Duration::from_secs(30), || {
        let now: u64 = pack_files(&repo).iter().map(|(_, n)| n).sum();
        now > packs_before + MIB || a.try_wait().is_some()
    });
    let b = Ingest::new(&repo, "vm1")
        .disk("small", &small)
        .checkpoint("b")
        .spawn(s.dir.path(), "b");
    let out_b = b.wait_timeout(Duration::from_secs(240));
    let out_a = a_wait(a);
    eprintln!("first ingest: exit {:?}; second ingest: exit {:?} {}", out_a.code, out_b.code, out_b.stderr.trim());

    for out in [&out_a, &out_b] {
        match out.code {
            Some(0) => {}
            Some(4) => assert!(
                out.stderr.to_lowercase().contains("busy"),
                "exit 4 must say the repository is busy:\n{}",
                out.describe()
            ),
            _ => panic!("ingest must succeed or exit 4:\n{}", out.describe()),
        }
    }
    assert!(
        out_a.code == Some(0) || out_b.code == Some(0),
        "one of the two ingests must succeed"
    );
    verify_ok(&repo);

    let pts = points(&repo, "vm1");
    let ok_count = [&out_a, &out_b].iter().filter(|o| o.code == Some(0)).count();
    assert_eq!(pts.len(), ok_count, "one point per successful ingest: {pts:?}");
    let fuse = FuseMount::start(&repo, &s.mnt("fuse"));
    for (i, pt) in pts.iter().enumerate() {
        let name = pt["name"].as_str().unwrap();
        assert_point_name(name, i as u64 + 1);
        let disks = pt["disks"].as_array().unwrap();
        assert_eq!(disks.len(), 1, "each point holds exactly its own disk: {pt}");
        let disk = disks[0]["name"].as_str().unwrap();
        let (src, cp) = match disk {
            "big" => (&big, "a"),
            "small" => (&small, "b"),
            other => panic!("unexpected disk {other}"),
        };
        assert_eq!(pt["checkpoint"], cp, "{pt}");
        assert_eq!(
            dir_names(&fuse.point_dir("vm1", name)),
            [format!("{disk}.img")],
            "point folder {name}"
        );
        assert_same_file(&fuse.image("vm1", name, disk), src);
    }
}

fn a_wait(a: Spawned) -> Out {
    a.wait_timeout(Duration::from_secs(240))
}

/// The file system under the repository fills up in the middle of an
/// ingest that appends to a pack, seals it and starts another: the ingest
/// fails with the write's error, and the repository is as before (the same
/// listing, the same packs at the same sizes, verify clean). Once the
/// source is small enough to fit, the next ingest succeeds and reads back.
#[test]
fn ingest_into_a_full_file_system_changes_nothing() {
    let s = Scratch::new();
    let small = LoopMount::of_type("tmpfs", "size=24m", &s.mnt("small"));
    let repo = small.mp.join("repo");
    init_repo(&repo, None);
    let disk = s.path("sda.raw");
    random_file(&disk, 8 * MIB, 1);
    Ingest::new(&repo, "vm").disk("sda", &disk).checkpoint("c0").run().ok();
    let before = repo_state(&repo);
    assert_eq!(before.packs.len(), 1, "one pack, below the pack size: {:?}", before.packs);

    // 40 MiB of new data: fills the first pack, then runs out of room in
    // the second.
    random_file(&disk, 40 * MIB, 2);
    let o = Ingest::new(&repo, "vm").disk("sda", &disk).checkpoint("c1").full().run();
    assert_eq!(o.code, Some(1), "{}", o.describe());
    assert!(o.stderr.contains("No space left"), "{}", o.describe());
    assert_eq!(o.stderr.trim().lines().count(), 1, "one line: {}", o.describe());
    assert_eq!(repo_state(&repo), before, "the failed ingest left changes");
    verify_ok(&repo);

    set_size(&disk, 4 * MIB);
    random_file(&disk, 4 * MIB, 3);
    Ingest::new(&repo, "vm").disk("sda", &disk).checkpoint("c1").run().ok();
    verify_ok(&repo);
    let fuse = FuseMount::start(&repo, &s.mnt("m"));
    assert_same_file(&fuse.image("vm", &latest_point(&repo, "vm"), "sda"), &disk);
}

/// Small ingests leave their commits in SQLite's log instead of folding
/// it into the index every time; once it passes 1 MiB, the ingest that
/// took it there folds it in and empties it. Every point reads back
/// exactly either way, from the log or from the index.
#[test]
fn the_log_keeps_small_ingests_and_is_folded_once_large() {
    const FOLD: u64 = MIB;
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, Some("4K"));
    let wal = repo.join("index.sqlite-wal");
    let log_len = || fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    let mut rng = Rng::new(0x10c);
    let src = s.path("sda.raw");
    write_at(&src, 0, &rng.bytes(8 * MIB as usize));
    Ingest::new(&repo, "vm1").disk("sda", &src).checkpoint("c1").run().ok();
    assert!(log_len() > 0, "a small full ingest left its commit in the log");
    let mut copies = vec![s.path("v1.raw")];
    save_copy(&src, &copies[0]);

    // Incrementals of 50 random 4 KiB blocks each, by map: each adds
    // about 200 KiB to the log, so it is folded every five or six.
    let (mut folds, mut prev) = (0, log_len());
    for i in 2..=40 {
        let mut map = Vec::new();
        for _ in 0..50 {
            let at = rng.below(2048) * 4 * KIB;
            write_at(&src, at, &rng.bytes(4 * KIB as usize));
            map.push((at, 4 * KIB));
        }
        let m = s.path("map.json");
        write_map(&m, &map);
        let prev_cp = format!("c{}", i - 1);
        Ingest::new(&repo, "vm1").disk("sda", &src).changes("sda", &m).since(&prev_cp).checkpoint(&format!("c{i}")).run().ok();
        let now = log_len();
        assert!(now <= 2 * FOLD, "the log grew to {now} bytes without being folded");
        if now < prev {
            assert_eq!(now, 0, "a folded log is emptied");
            folds += 1;
        }
        prev = now;
        if i % 10 == 0 {
            copies.push(s.path(&format!("v{i}.raw")));
            save_copy(&src, copies.last().unwrap());
        }
    }
    assert!((1..=13).contains(&folds), "{folds} folds in 39 small ingests");
    assert!(log_len() > 0, "the last ingests' commits stay in the log");

    let names = point_names(&repo, "vm1");
    assert_eq!(names.len(), 40);
    let fuse = FuseMount::start(&repo, &s.mnt("log"));
    for (copy, idx) in copies.iter().zip([0usize, 9, 19, 29, 39]) {
        assert_same_file(&fuse.image("vm1", &names[idx], "sda"), copy);
    }
    drop(fuse);
    verify_ok(&repo);

    // A copy of the directory, taken under the writers' lock as the README
    // says, is the whole repository: its last commits are in the log.
    let copy = s.path("copy");
    let lock = p(&repo.join("lock"));
    sh("flock", &[&lock, "cp", "-a", &p(&repo), &p(&copy)]);
    assert!(fs::metadata(copy.join("index.sqlite-wal")).unwrap().len() > 0);
    assert_eq!(point_names(&copy, "vm1"), names);
    let fuse = FuseMount::start(&copy, &s.mnt("copy"));
    assert_same_file(&fuse.image("vm1", &names[39], "sda"), copies.last().unwrap());
    drop(fuse);
    verify_ok(&copy);
}
