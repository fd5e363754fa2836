//! Retention: forget (by name and by policy), protect, gc; every remaining
//! point byte-exact after every step, kills at any moment harmless, bad
//! input refused with nothing changed, and mounts never pulled from under.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

/// A chain of `n` points of a `size`-byte disk, each changing a few
/// random blocks (by map, or by scan every fifth point); returns the saved
/// state of each point, by sequence number.
fn build_chain(s: &Scratch, repo: &Path, n: u64, size: u64, seed: u64) -> BTreeMap<u64, PathBuf> {
    init_repo(repo, None);
    let disk = s.path("disk.raw");
    let mut rng = Rng::new(seed);
    write_at(&disk, 0, &rng.bytes(size as usize));
    let mut states = BTreeMap::new();
    for seq in 1..=n {
        let mut ing = Ingest::new(repo, "vm1").disk("sda", &disk).checkpoint(&format!("c{seq}"));
        if seq > 1 {
            let mut extents = Vec::new();
            for _ in 0..1 + rng.below(4) {
                let off = rng.below(size / 4096) * 4096;
                let len = (4096 * (1 + rng.below(24))).min(size - off);
                write_at(&disk, off, &rng.bytes(len as usize));
                extents.push((off, len));
            }
            if seq % 5 != 0 {
                let map = s.path(&format!("map{seq}.json"));
                write_map(&map, &extents);
                ing = ing.changes("sda", &map).since(&format!("c{}", seq - 1));
            }
        }
        ing.run().ok();
        let state = s.path(&format!("state{seq}.raw"));
        save_copy(&disk, &state);
        states.insert(seq, state);
    }
    states
}

fn seqs(repo: &Path) -> Vec<u64> {
    points(repo, "vm1").iter().map(|p| p["seq"].as_u64().unwrap()).collect()
}

/// Every remaining point reads exactly its saved state.
#[track_caller]
fn assert_points_exact(repo: &Path, s: &Scratch, tag: &str, states: &BTreeMap<u64, PathBuf>) {
    let fuse = FuseMount::start(repo, &s.mnt(tag));
    for pt in points(repo, "vm1") {
        let name = pt["name"].as_str().unwrap();
        let seq = pt["seq"].as_u64().unwrap();
        assert_same_file(&fuse.image("vm1", name, "sda"), &states[&seq]);
    }
}

fn json(out: Out) -> Value {
    out.ok().stdout_json()
}

#[test]
fn random_forget_orders_keep_every_point_exact() {
    let s = Scratch::new();
    let repo = s.repo();
    let states = build_chain(&s, &repo, 55, 1 << 20, 0xf0);
    let mut rng = Rng::new(0xf1);
    let mut step = 0;
    while seqs(&repo).len() > 3 {
        step += 1;
        let left = seqs(&repo);
        // Forget 1 to 5 random points, never all; base and middle alike.
        let k = (1 + rng.below(5) as usize).min(left.len() - 1);
        let mut pick = left.clone();
        let mut doomed = Vec::new();
        for _ in 0..k {
            let i = rng.below(pick.len() as u64) as usize;
            doomed.push(pick.remove(i).to_string());
        }
        let mut args = vec!["forget".to_string(), p(&repo), "vm1".into()];
        args.extend(doomed.iter().cloned());
        cbtfs(&args).ok();
        let now = seqs(&repo);
        assert_eq!(now.len(), left.len() - k, "step {step}: forgot {doomed:?}, left {now:?}");
        if step % 3 == 0 {
            cbtfs(&["gc", &p(&repo), "--max-garbage", "0"]).ok();
            verify_ok(&repo);
        }
        assert_points_exact(&repo, &s, &format!("step{step}"), &states);
    }
    assert!(step >= 10, "too few steps: {step}");
}

#[test]
fn gc_reclaims_the_garbage_it_reports() {
    let s = Scratch::new();
    let repo = s.repo();
    // Incompressible data, rewritten much: lots of garbage once forgotten.
    let states = build_chain(&s, &repo, 30, 4 << 20, 0xa0);
    let packs_before: u64 = pack_files(&repo).iter().map(|(_, n)| n).sum();
    cbtfs(&["forget", &p(&repo), "vm1", "--keep-last", "3"]).ok();
    let dry = json(cbtfs(&["gc", &p(&repo), "--max-garbage", "0", "--dry-run", "--json"]));
    let garbage = dry["garbage_bytes"].as_u64().unwrap();
    assert!(garbage > packs_before / 4, "forgetting 27 of 30 points must leave garbage: {dry}");
    assert_eq!(pack_files(&repo).iter().map(|(_, n)| n).sum::<u64>(), packs_before, "a dry run changes nothing");
    let r = json(cbtfs(&["gc", &p(&repo), "--max-garbage", "0", "--json"]));
    let reclaimed = r["bytes_reclaimed"].as_u64().unwrap();
    assert!(reclaimed * 10 >= garbage * 9, "reclaimed {reclaimed} of {garbage} garbage bytes: {r}");
    let packs_after: u64 = pack_files(&repo).iter().map(|(_, n)| n).sum();
    assert_eq!(packs_before - packs_after, reclaimed, "the pack files shrank by what gc reports");
    let again = json(cbtfs(&["gc", &p(&repo), "--max-garbage", "0", "--dry-run", "--json"]));
    assert_eq!(again["garbage_bytes"], 0, "nothing left: {again}");
    verify_ok(&repo);
    assert_points_exact(&repo, &s, "after", &states);
}

#[test]
fn policies_and_protection() {
    let s = Scratch::new();
    let repo = s.repo();
    let states = build_chain(&s, &repo, 8, 512 << 10, 0xb0);
    cbtfs(&["protect", &p(&repo), "vm1", "2"]).ok();
    let listed = points(&repo, "vm1");
    assert_eq!(listed[1]["protected"], true);
    let dry = json(cbtfs(&["forget", &p(&repo), "vm1", "--keep-last", "2", "--dry-run", "--json"]));
    assert_eq!(dry["forgotten"].as_array().unwrap().len(), 5, "{dry}");
    assert_eq!(dry["kept_protected"].as_array().unwrap().len(), 1, "{dry}");
    assert_eq!(seqs(&repo), (1..=8).collect::<Vec<_>>(), "a dry run changes nothing");
    cbtfs(&["forget", &p(&repo), "vm1", "--keep-last", "2"]).ok();
    assert_eq!(seqs(&repo), vec![2, 7, 8]);
    // All points were made now: one per day at most keeps the newest.
    cbtfs(&["protect", &p(&repo), "vm1", "2", "--off"]).ok();
    cbtfs(&["forget", &p(&repo), "vm1", "--keep-daily", "1"]).ok();
    assert_eq!(seqs(&repo), vec![8]);
    cbtfs(&["gc", &p(&repo), "--max-garbage", "0"]).ok();
    verify_ok(&repo);
    assert_points_exact(&repo, &s, "left", &states);
    // The chain goes on from the point left.
    let disk = s.path("disk.raw");
    let out = Ingest::new(&repo, "vm1").disk("sda", &disk).changes("sda", &s.path("map8.json")).since("c8").checkpoint("c9").run().ok();
    assert!(!out.warns_full_scan("sda"), "{}", out.describe());
    // Forgetting the newest point does not free its number.
    cbtfs(&["forget", &p(&repo), "vm1", "9"]).ok();
    Ingest::new(&repo, "vm1").disk("sda", &disk).checkpoint("c10").run().ok();
    assert_eq!(seqs(&repo), vec![8, 10], "numbers of forgotten points are not reused");
    let fuse = FuseMount::start(&repo, &s.mnt("last"));
    let names = point_names(&repo, "vm1");
    assert_point_name(&names[1], 10);
    assert_same_file(&fuse.image("vm1", &names[1], "sda"), &disk);
}

#[test]
fn bad_input_changes_nothing() {
    let s = Scratch::new();
    let repo = s.repo();
    build_chain(&s, &repo, 4, 256 << 10, 0xc0);
    cbtfs(&["protect", &p(&repo), "vm1", "3"]).ok();
    let before = repo_state(&repo);
    let r = p(&repo);
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["forget", &r, "vm1", "99"], 1, "no restore point 99"),
        (vec!["forget", &r, "nosuch", "1"], 1, "no machine named nosuch"),
        (vec!["forget", &r, "vm1", "1", "2", "3", "4"], 1, "is protected"),
        (vec!["forget", &r, "vm1", "3"], 1, "is protected"),
        (vec!["forget", &r, "vm1", "--keep-last=-1"], 2, "invalid value"),
        (vec!["forget", &r, "vm1", "--keep-last", "-1"], 2, "'-1'"),
        (vec!["forget", &r, "vm1", "--keep-last", "0"], 1, "keeps no restore point"),
        (vec!["forget", &r, "vm1", "1", "--keep-last", "2"], 1, "not both"),
        (vec!["forget", &r, "vm1"], 1, "name the restore points"),
        (vec!["protect", &r, "vm1", "nope"], 1, "no restore point nope"),
        (vec!["gc", &r, "--max-garbage", "150"], 1, "percentage"),
    ];
    for (args, code, needle) in cases {
        let out = cbtfs(&args);
        assert_eq!(out.code, Some(code), "{args:?}:\n{}", out.describe());
        assert!(out.stderr.contains(needle), "{args:?}: must say {needle:?}:\n{}", out.describe());
        assert_eq!(repo_state(&repo), before, "{args:?} changed the repository");
    }
}

/// A mount keeps the repository as it is: retention refuses (exit 4), or
/// with --wait waits for the mount to end.
#[test]
fn retention_waits_for_mounts() {
    let s = Scratch::new();
    let repo = s.repo();
    let states = build_chain(&s, &repo, 4, 256 << 10, 0xd0);
    let fuse = FuseMount::start(&repo, &s.mnt("m"));
    let before = repo_state(&repo);
    let out = cbtfs(&["forget", &p(&repo), "vm1", "1"]);
    assert_eq!(out.code, Some(4), "{}", out.describe());
    assert!(out.stderr.contains("in use by a mount"), "{}", out.describe());
    assert_eq!(cbtfs(&["gc", &p(&repo)]).code, Some(4));
    assert_eq!(repo_state(&repo), before);

    let mut waiting = spawn_cbtfs(&["forget", &p(&repo), "vm1", "1", "--wait"], s.dir.path(), "wait");
    sleep(Duration::from_millis(500));
    assert!(waiting.try_wait().is_none(), "forget --wait must wait for the mount");
    // The mount still reads every point, the one being forgotten too.
    for pt in points(&repo, "vm1") {
        let seq = pt["seq"].as_u64().unwrap();
        assert_same_file(&fuse.image("vm1", pt["name"].as_str().unwrap(), "sda"), &states[&seq]);
    }
    // Backups go on meanwhile: the waiting forget holds no lock.
    let disk = s.path("disk.raw");
    Ingest::new(&repo, "vm1").disk("sda", &disk).checkpoint("c5").run().ok();
    let mut gc_waiting = spawn_cbtfs(&["gc", &p(&repo), "--wait"], s.dir.path(), "gc-wait");
    sleep(Duration::from_millis(300));
    Ingest::new(&repo, "vm1").disk("sda", &disk).checkpoint("c6").run().ok();
    assert!(waiting.try_wait().is_none() && gc_waiting.try_wait().is_none(), "forget and gc must wait for the mount");
    fuse.unmount().ok();
    let out = waiting.wait_timeout(Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let out = gc_waiting.wait_timeout(Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(seqs(&repo), vec![2, 3, 4, 5, 6]);

    // An ingest (here its lock, held with flock(1)): without --wait, exit
    // 4 naming every writer; with it, gc runs once the ingest ends.
    let lock = p(&repo.join("lock"));
    let mut holder = std::process::Command::new("flock").args(["-x", "--no-fork", &lock, "sleep", "2"]).spawn().unwrap();
    sleep(Duration::from_millis(300));
    let out = cbtfs(&["gc", &p(&repo)]);
    assert_eq!(out.code, Some(4), "{}", out.describe());
    assert!(out.stderr.contains("another writer (ingest, forget, gc or protect)"), "{}", out.describe());
    let started = std::time::Instant::now();
    let out = spawn_cbtfs(&["gc", &p(&repo), "--wait"], s.dir.path(), "gc-ingest").wait_timeout(Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(started.elapsed() > Duration::from_millis(1200), "gc --wait ran before the ingest's lock was released");
    let _ = holder.wait();
    let fuse = FuseMount::start(&repo, &s.mnt("m2"));
    let latest = points(&repo, "vm1").last().unwrap()["name"].as_str().unwrap().to_string();
    assert_same_file(&fuse.image("vm1", &latest, "sda"), &disk);
}

/// While forget or gc holds the repository (here: its exclusive readers
/// lock, held with flock(1) as they hold it), mounts, verifies and exports
/// do not start: exit 4, a message saying why, nothing created.
#[test]
fn readers_refused_while_pruning() {
    let s = Scratch::new();
    let repo = s.repo();
    build_chain(&s, &repo, 2, 256 << 10, 0xd1);
    let mut holder = std::process::Command::new("flock")
        .args(["-x", "--no-fork", &p(&repo.join("readers")), "sleep", "30"])
        .spawn()
        .unwrap();
    sleep(Duration::from_millis(300));
    let r = p(&repo);
    let out_file = s.path("out.img");
    let mp = s.mnt("m");
    std::fs::create_dir_all(&mp).unwrap();
    for args in [
        vec!["verify", &r],
        vec!["export", &r, "vm1", "latest", "sda", out_file.to_str().unwrap()],
        vec!["mount", &r, mp.to_str().unwrap()],
    ] {
        let out = cbtfs(&args);
        assert_eq!(out.code, Some(4), "{}", out.describe());
        assert!(out.stderr.contains("being pruned"), "{}", out.describe());
    }
    assert!(!out_file.exists() && !is_fuse_mounted(&mp));
    let _ = holder.kill();
    let _ = holder.wait();
    verify_ok(&repo);
}

/// SIGKILL at several moments of gc and forget: every remaining point
/// reads exactly, verify passes, and the next gc finishes the job.
#[test]
fn kills_during_gc_and_forget_are_harmless() {
    let s = Scratch::new();
    let repo = s.repo();
    let states = build_chain(&s, &repo, 12, 48 << 20, 0xe0);
    cbtfs(&["forget", &p(&repo), "vm1", "1", "3", "4", "6", "7", "9"]).ok();
    let mut interrupted = 0;
    for (i, delay_ms) in [5u64, 30, 80, 200].into_iter().enumerate() {
        let before = seqs(&repo);
        let mut gc = spawn_cbtfs(&["gc", &p(&repo), "--max-garbage", "0"], s.dir.path(), &format!("gc{i}"));
        sleep(Duration::from_millis(delay_ms));
        if gc.try_wait().is_none() {
            gc.kill();
            interrupted += 1;
        } else {
            assert_eq!(gc.wait().code, Some(0));
        }
        assert_eq!(seqs(&repo), before);
        verify_ok(&repo);
        assert_points_exact(&repo, &s, &format!("gc{i}"), &states);
        // Give the next round garbage again.
        if i == 1 {
            cbtfs(&["forget", &p(&repo), "vm1", "2"]).ok();
        }
    }
    assert!(interrupted > 0, "no gc was interrupted: the test proved nothing");
    for (i, delay_ms) in [0u64, 2, 5].into_iter().enumerate() {
        let before = seqs(&repo);
        let victim = before[0].to_string();
        let mut f = spawn_cbtfs(&["forget", &p(&repo), "vm1", &victim], s.dir.path(), &format!("f{i}"));
        sleep(Duration::from_millis(delay_ms));
        if f.try_wait().is_none() {
            f.kill();
        }
        let after = seqs(&repo);
        assert!(after == before || after == before[1..], "forget is all or nothing: {before:?} -> {after:?}");
        verify_ok(&repo);
    }
    cbtfs(&["gc", &p(&repo), "--max-garbage", "0"]).ok();
    let v = verify_ok(&repo);
    assert_eq!(v["leftover_packs"], serde_json::json!([]), "the next writer removes leftovers: {v}");
    assert_points_exact(&repo, &s, "end", &states);
}

#[test]
fn stats_report_sizes_ratios_and_garbage() {
    let s = Scratch::new();
    let repo = s.repo();
    build_chain(&s, &repo, 6, 1 << 20, 0x51);
    // A second machine with compressible data (a repeated text line).
    let text = s.path("text.raw");
    write_at(&text, 0, &"a line of a log file\n".repeat(50_000).into_bytes()[..1 << 20]);
    Ingest::new(&repo, "vm2").disk("sda", &text).run().ok();

    let st = json(cbtfs(&["stats", &p(&repo), "--json"]));
    let n = |k: &str| st[k].as_u64().unwrap_or_else(|| panic!("{k} missing: {st}"));
    assert_eq!(st["points"].as_array().unwrap().len(), 7, "{st}");
    assert_eq!(n("logical_bytes"), 7 << 20);
    assert_eq!(n("data_bytes"), 7 << 20, "random and text data: no zero blocks");
    assert_eq!(n("unique_bytes"), n("unique_blocks") * 65536, "{st}");
    let dedup = st["dedup_ratio"].as_f64().unwrap();
    assert!((dedup - n("data_bytes") as f64 / n("unique_bytes") as f64).abs() < 0.001, "{st}");
    assert!(dedup > 1.5, "six points of one slowly changing disk share blocks: {st}");
    let compression = st["compression_ratio"].as_f64().unwrap();
    assert!((compression - n("unique_bytes") as f64 / n("stored_bytes") as f64).abs() < 0.001, "{st}");
    assert!(compression > 1.05, "the text disk compresses: {st}");
    assert_eq!(n("garbage_bytes"), 0);
    assert_eq!(n("pack_bytes"), pack_files(&repo).iter().map(|(_, b)| b).sum::<u64>(), "{st}");

    cbtfs(&["forget", &p(&repo), "vm1", "1", "2", "3", "4"]).ok();
    let st = json(cbtfs(&["stats", &p(&repo), "--json"]));
    assert!(st["garbage_bytes"].as_u64().unwrap() > 0 && st["unused_blocks"].as_u64().unwrap() > 0, "{st}");
    assert_eq!(st["points"].as_array().unwrap().len(), 3);
    cbtfs(&["gc", &p(&repo), "--max-garbage", "0"]).ok();
    let st = json(cbtfs(&["stats", &p(&repo), "--json"]));
    assert_eq!((st["garbage_bytes"].as_u64(), st["unused_blocks"].as_u64()), (Some(0), Some(0)), "{st}");
    let out = cbtfs(&["stats", &p(&repo)]).ok();
    assert!(out.stdout.contains("dedup ratio") && out.stdout.contains("compression ratio"), "{}", out.describe());
}

/// What killed writers leave (a pack the index does not know, bytes past
/// a pack's committed end) is removed by gc, even from a pack no ingest
/// appends to any more, and a dry run leaves it all as it is.
#[test]
fn gc_removes_what_killed_writers_left_but_a_dry_run_does_not() {
    let s = Scratch::new();
    let repo = s.repo();
    let mut states = build_chain(&s, &repo, 8, 24 << 20, 0xd7);
    let packs = pack_paths(&repo);
    assert!(packs.len() >= 2, "the test needs an older pack than the newest: {packs:?}");
    let oldest = packs[0].clone();
    let committed = fs::metadata(&oldest).unwrap().len();
    let tail = Rng::new(0xd8).bytes(70_000);
    OpenOptions::new().append(true).open(&oldest).unwrap().write_all(&tail).unwrap();
    // A new point appends to the newest pack, not to the oldest.
    let disk = s.path("disk.raw");
    write_at(&disk, 4096, &Rng::new(0xd9).bytes(8192));
    Ingest::new(&repo, "vm1").disk("sda", &disk).run().ok();
    let state = s.path("state9.raw");
    save_copy(&disk, &state);
    states.insert(9, state);
    assert_eq!(fs::metadata(&oldest).unwrap().len(), committed + tail.len() as u64, "the ingest left the oldest pack alone");

    // Left by an ingest killed after that one.
    let leftover = repo.join("packs").join("00000000000fffff.pack");
    fs::copy(&oldest, &leftover).unwrap();
    let leftover_bytes = fs::metadata(&leftover).unwrap().len() + tail.len() as u64;
    let v = json(cbtfs(&["verify", &p(&repo), "--json"]));
    assert_eq!(v["uncommitted_tails"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["leftover_packs"].as_array().unwrap().len(), 1, "{v}");

    let dry = json(cbtfs(&["gc", &p(&repo), "--dry-run", "--json"]));
    assert_eq!(dry["leftover_bytes"], leftover_bytes, "a dry run says what it would remove: {dry}");
    assert!(leftover.exists(), "a dry run must not remove a leftover pack");
    assert_eq!(fs::metadata(&oldest).unwrap().len(), committed + tail.len() as u64, "a dry run must not cut a pack");

    let r = json(cbtfs(&["gc", &p(&repo), "--json"]));
    assert_eq!(r["leftover_bytes"], leftover_bytes, "{r}");
    assert!(!leftover.exists(), "gc removes the leftover pack");
    assert_eq!(fs::metadata(&oldest).unwrap().len(), committed, "gc cuts the uncommitted tail");
    let v = verify_ok(&repo);
    assert_eq!(v["uncommitted_tails"], serde_json::json!([]), "{v}");
    assert_eq!(v["leftover_packs"], serde_json::json!([]), "{v}");
    assert_points_exact(&repo, &s, "after", &states);
}
