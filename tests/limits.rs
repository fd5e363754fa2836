//! Long chains against process limits: a chain of many points can spread
//! a disk over many pack files. Reading it must not need one open file per
//! pack.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn long_chain_reads_under_a_low_open_files_limit() {
    let s = Scratch::new();
    let repo = s.repo();
    // 1 MiB packs, so that every incremental below fills at least one.
    cbtfs(&["init", &p(&repo), "--block-size", "4K", "--pack-size", "1M"]).ok();
    let points: u64 = 120;
    let churn = points * 4096;
    let disk = s.path("sda.raw");
    write_at(&disk, 0, &Rng::new(5).bytes((churn + MIB) as usize));
    Ingest::new(&repo, "vm").disk("sda", &disk).checkpoint("c0").run().ok();
    // Each incremental rewrites its own 4 KiB marker block and a 1 MiB
    // churn region: the newest point's marker blocks live in 120 packs.
    for i in 1..=points {
        write_at(&disk, (i - 1) * 4096, &Rng::new(100 + i).bytes(4096));
        write_at(&disk, churn, &Rng::new(10_000 + i).bytes(MIB as usize));
        let map = s.path(&format!("m{i}.json"));
        std::fs::write(
            &map,
            format!(r#"[{{"offset":{},"length":4096}},{{"offset":{churn},"length":{MIB}}}]"#, (i - 1) * 4096),
        )
        .unwrap();
        Ingest::new(&repo, "vm")
            .disk("sda", &disk)
            .changes("sda", &map)
            .since(&format!("c{}", i - 1))
            .checkpoint(&format!("c{i}"))
            .run()
            .ok();
    }
    assert!(pack_files(&repo).len() as u64 > points, "each incremental fills a pack: {}", pack_files(&repo).len());

    // Hard limit 96: fewer files than packs, so the mount cannot keep them all.
    let mp = s.mnt("limited");
    let mut child = Command::new("prlimit")
        .args(["--nofile=96:96", "--", bin(), "mount", &p(&repo), &p(&mp)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux) runs the mount");
    assert!(wait_until(Duration::from_secs(10), || is_fuse_mounted(&mp)), "mount did not come up");
    let img = mp.join("vm").join(latest_point(&repo, "vm")).join("sda.img");
    let res = std::panic::catch_unwind(|| assert_same_file(&img, &disk));
    let _ = Command::new("umount").arg(&mp).status();
    let _ = child.wait();
    res.expect("the newest point reads back exactly under the limit");

    let out = Command::new("prlimit").args(["--nofile=96:96", "--", bin(), "verify", &p(&repo)]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "verify under the limit: {}", String::from_utf8_lossy(&out.stderr));
}
