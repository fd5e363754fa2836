//! Bad input is refused with a one-line error, a non-zero exit, and no
//! change to the repository.

mod common;

use common::*;
use std::fs;
use std::path::PathBuf;

struct Fixture {
    s: Scratch,
    repo: PathBuf,
    src: PathBuf,
}

/// A repository with one point (vm1, disk sda of 1 MiB, checkpoint c1).
fn fixture(seed: u64) -> Fixture {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    let src = s.path("sda.raw");
    write_at(&src, 0, &Rng::new(seed).bytes(MIB as usize));
    Ingest::new(&repo, "vm1").disk("sda", &src).checkpoint("c1").run().ok();
    Fixture { s, repo, src }
}

/// Asserts a one-line error: exactly one non-empty line on stderr.
#[track_caller]
fn assert_one_line_error(out: &Out) {
    let err = out.stderr.trim_end_matches('\n');
    assert!(!err.trim().is_empty(), "no error message:\n{}", out.describe());
    assert!(
        !err.contains('\n'),
        "error message must be a single line:\n{}",
        out.describe()
    );
}

/// Runs a command that must be refused with exit 1 and leave the
/// repository as it was.
#[track_caller]
fn refused(f: &Fixture, args: &[String]) -> Out {
    refused_with(f, args, &[1])
}

#[track_caller]
fn refused_with(f: &Fixture, args: &[String], codes: &[i32]) -> Out {
    let before = repo_state(&f.repo);
    let out = cbtfs(args);
    assert!(
        out.code.is_some_and(|c| codes.contains(&c)),
        "expected exit code in {codes:?}:\n{}",
        out.describe()
    );
    if out.code == Some(2) {
        // A command-line usage error reported by the argument parser.
        assert!(
            out.stderr.trim_start().starts_with("error"),
            "usage error without message:\n{}",
            out.describe()
        );
    } else {
        assert_one_line_error(&out);
    }
    let after = repo_state(&f.repo);
    assert_eq!(before, after, "repository changed by refused command:\n{}", out.describe());
    verify_ok(&f.repo);
    out
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn ingest_args(f: &Fixture, machine: &str, extra: &[String]) -> Vec<String> {
    let mut a = vec!["ingest".to_string(), p(&f.repo), machine.to_string()];
    a.extend_from_slice(extra);
    a
}

const BAD_NAMES: [&str; 10] = ["", "a/b", "/", ".", "..", "a\nb", "tab\there", "\u{1}x", "esc\u{1b}", "del\u{7f}"];

#[test]
fn bad_machine_names() {
    let f = fixture(1);
    let disk = format!("sda={}", p(&f.src));
    for name in BAD_NAMES {
        refused(&f, &ingest_args(&f, name, &args(&["--disk", &disk])));
    }
    // Nothing of the refused machines appears.
    let v = list_json(&f.repo);
    assert_eq!(v["machines"].as_array().unwrap().len(), 1, "{v}");
}

#[test]
fn bad_disk_names() {
    let f = fixture(2);
    for name in BAD_NAMES {
        let disk = format!("{name}={}", p(&f.src));
        refused(&f, &ingest_args(&f, "vm1", &args(&["--disk", &disk])));
        // Also on a new machine (first ingest).
        refused(&f, &ingest_args(&f, "vm9", &args(&["--disk", &disk])));
    }
}

#[test]
fn bad_sources() {
    let f = fixture(3);
    // Missing source.
    let missing = f.s.path("no-such-file.raw");
    refused(
        &f,
        &ingest_args(&f, "vm1", &args(&["--disk", &format!("sda={}", p(&missing))])),
    );
    // A directory cannot be read as a disk.
    let dir = f.s.path("a-directory");
    fs::create_dir(&dir).unwrap();
    refused(
        &f,
        &ingest_args(&f, "vm1", &args(&["--disk", &format!("sda={}", p(&dir))])),
    );
    // A named pipe: refused at once, not opened (which would wait for a
    // writer while holding the repository's lock).
    let fifo = f.s.path("a-fifo");
    sh("mkfifo", &[&p(&fifo)]);
    let before = repo_state(&f.repo);
    let out = spawn_cbtfs(&ingest_args(&f, "vm1", &args(&["--disk", &format!("sda={}", p(&fifo))])), f.s.dir.path(), "fifo")
        .wait_timeout(std::time::Duration::from_secs(20));
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert_one_line_error(&out);
    assert!(out.stderr.contains("not a regular file or a block device"), "{}", out.describe());
    assert_eq!(repo_state(&f.repo), before);
    // One good and one missing disk: nothing is stored.
    refused(
        &f,
        &ingest_args(
            &f,
            "vm1",
            &args(&[
                "--disk",
                &format!("sda={}", p(&f.src)),
                "--disk",
                &format!("sdb={}", p(&missing)),
            ]),
        ),
    );
    // The same disk twice.
    let other = f.s.path("other.raw");
    write_at(&other, 0, &[1u8; 5000]);
    refused(
        &f,
        &ingest_args(
            &f,
            "vm1",
            &args(&[
                "--disk",
                &format!("sda={}", p(&f.src)),
                "--disk",
                &format!("sda={}", p(&other)),
            ]),
        ),
    );
    // A --disk without NAME=.
    refused_with(
        &f,
        &ingest_args(&f, "vm1", &args(&["--disk", &p(&f.src)])),
        &[1, 2],
    );
    // No disk at all.
    refused_with(&f, &ingest_args(&f, "vm1", &[]), &[1, 2]);
}

#[test]
fn bad_maps() {
    let f = fixture(4);
    let disk = format!("sda={}", p(&f.src));
    let cases: &[(&str, &str)] = &[
        ("not-json", "this is not json"),
        ("truncated", r#"[{"offset": 0, "#),
        ("object", r#"{"offset": 0, "length": 4096}"#),
        ("missing-length", r#"[{"offset": 0}]"#),
        ("missing-offset", r#"[{"length": 4096}]"#),
        ("string-numbers", r#"[{"offset": "0", "length": "4096"}]"#),
        ("fraction", r#"[{"offset": 0.5, "length": 4096}]"#),
        ("negative-offset", r#"[{"offset": -1, "length": 4096}]"#),
        ("negative-length", r#"[{"offset": 0, "length": -4096}]"#),
        ("overflow-offset", r#"[{"offset": 18446744073709551616, "length": 1}]"#),
        ("overflow-length", r#"[{"offset": 0, "length": 99999999999999999999999}]"#),
        ("overflow-sum", r#"[{"offset": 18446744073709551615, "length": 2}]"#),
        ("past-end", r#"[{"offset": 1048570, "length": 20}]"#),
        ("starts-at-end", r#"[{"offset": 1048576, "length": 1}]"#),
        ("far-past-end", r#"[{"offset": 4096, "length": 4096}, {"offset": 1099511627776, "length": 4096}]"#),
    ];
    for (name, text) in cases {
        let m = f.s.path(&format!("{name}.json"));
        fs::write(&m, text).unwrap();
        let out = refused(
            &f,
            &ingest_args(
                &f,
                "vm1",
                &args(&["--disk", &disk, "--changes", &format!("sda={}", p(&m)), "--since", "c1"]),
            ),
        );
        assert!(!out.stderr.is_empty(), "case {name}");
    }
    // A map file that does not exist.
    let missing = f.s.path("missing.json");
    refused(
        &f,
        &ingest_args(
            &f,
            "vm1",
            &args(&["--disk", &disk, "--changes", &format!("sda={}", p(&missing)), "--since", "c1"]),
        ),
    );
    // A map for a disk that is not in the ingest.
    let good = f.s.path("good.json");
    write_map(&good, &[(0, 4096)]);
    refused(
        &f,
        &ingest_args(
            &f,
            "vm1",
            &args(&["--disk", &disk, "--changes", &format!("sdx={}", p(&good)), "--since", "c1"]),
        ),
    );
    // The good map itself is accepted (the cases above fail for their
    // own reason only).
    Ingest::new(&f.repo, "vm1")
        .disk("sda", &f.src)
        .changes("sda", &good)
        .since("c1")
        .run()
        .ok();
}

#[test]
fn checkpoint_reuse() {
    let f = fixture(5);
    let disk = format!("sda={}", p(&f.src));
    refused(&f, &ingest_args(&f, "vm1", &args(&["--disk", &disk, "--checkpoint", "c1"])));
    // Unique per machine only: another machine may use c1.
    Ingest::new(&f.repo, "vm2").disk("sda", &f.src).checkpoint("c1").run().ok();
    let pts = points(&f.repo, "vm2");
    assert_eq!(pts.len(), 1);
    assert_eq!(pts[0]["checkpoint"], "c1");
    // And vm2 then refuses c1 too.
    refused(&f, &ingest_args(&f, "vm2", &args(&["--disk", &disk, "--checkpoint", "c1"])));
}

#[test]
fn bad_repositories() {
    let f = fixture(6);
    let disk = format!("sda={}", p(&f.src));

    // init over an existing repository.
    refused(&f, &args(&["init", &p(&f.repo)]));
    refused(&f, &args(&["init", &p(&f.repo), "--block-size", "4K"]));

    // Missing repository: every command fails and creates nothing.
    let missing = f.s.path("missing-repo");
    for a in [
        args(&["ingest", &p(&missing), "vm1", "--disk", &disk]),
        args(&["list", &p(&missing)]),
        args(&["list", &p(&missing), "--json"]),
        args(&["verify", &p(&missing)]),
        args(&["verify", &p(&missing), "--json"]),
        args(&["mount", &p(&missing), &p(&f.s.mnt("m1"))]),
    ] {
        let out = cbtfs(&a);
        assert_eq!(out.code, Some(1), "{}", out.describe());
        assert_one_line_error(&out);
        assert!(!missing.exists(), "{} created {}", out.describe(), missing.display());
        assert!(!is_fuse_mounted(&f.s.mnt("m1")));
    }

    // An empty directory is not a repository, and stays empty.
    let empty = f.s.path("empty-dir");
    fs::create_dir(&empty).unwrap();
    for a in [
        args(&["ingest", &p(&empty), "vm1", "--disk", &disk]),
        args(&["list", &p(&empty), "--json"]),
        args(&["verify", &p(&empty)]),
        args(&["mount", &p(&empty), &p(&f.s.mnt("m2"))]),
    ] {
        let out = cbtfs(&a);
        assert_eq!(out.code, Some(1), "{}", out.describe());
        assert_one_line_error(&out);
        assert!(dir_names(&empty).is_empty(), "{} wrote into {}", out.describe(), empty.display());
        assert!(!is_fuse_mounted(&f.s.mnt("m2")));
    }

    // The fixture repository is untouched by all of that.
    verify_ok(&f.repo);
}

#[test]
fn bad_block_sizes() {
    let s = Scratch::new();
    for (i, bs) in ["3K", "2K", "8M", "1000", "0", "65537", "abc", "-64K", "1G"].iter().enumerate() {
        let repo = s.path(&format!("repo{i}"));
        let out = cbtfs(&["init", &p(&repo), "--block-size", bs]);
        assert!(
            matches!(out.code, Some(1) | Some(2)),
            "init --block-size {bs} must fail:\n{}",
            out.describe()
        );
        if out.code == Some(1) {
            assert_one_line_error(&out);
        }
        assert!(
            !repo.join("index.sqlite").exists(),
            "init --block-size {bs} left a repository behind"
        );
    }
    // The limits themselves are accepted.
    init_repo(&s.path("min"), Some("4K"));
    init_repo(&s.path("max"), Some("4M"));
}

/// Usage errors (unknown subcommand or option) exit 2.
#[test]
fn usage_errors_exit_2() {
    let s = Scratch::new();
    let repo = s.repo();
    init_repo(&repo, None);
    for a in [
        args(&["frobnicate"]),
        args(&["list", &p(&repo), "--no-such-option"]),
        args(&["ingest", &p(&repo)]),
        args(&[]),
    ] {
        let out = cbtfs(&a);
        assert_eq!(out.code, Some(2), "{}", out.describe());
    }
}

/// `init` killed part way leaves what it made so far (the pack directory,
/// the lock files, the index still under its temporary name), never an
/// index without its settings. Such a directory is not a repository, and
/// `init` run again takes it over; anything else in a directory still
/// makes `init` refuse it, unchanged.
#[test]
fn init_finishes_what_an_interrupted_init_left() {
    let s = Scratch::new();
    let left = s.path("left-by-init");
    fs::create_dir_all(left.join("packs")).unwrap();
    fs::write(left.join("lock"), b"").unwrap();
    fs::write(left.join("readers"), b"").unwrap();
    fs::write(left.join("index.sqlite.init"), b"half a database").unwrap();
    fs::write(left.join("index.sqlite.init-wal"), b"half a log").unwrap();
    // Not a repository.
    let out = cbtfs(&["list", &p(&left), "--json"]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert_one_line_error(&out);
    assert!(out.stderr.contains("not a cbtfs repository"), "{}", out.describe());
    // init takes it over: a working repository, nothing left of the attempt.
    let out = cbtfs(&["init", &p(&left)]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(dir_names(&left), ["index.sqlite", "index.sqlite-shm", "index.sqlite-wal", "lock", "packs", "readers"]);
    let out = cbtfs(&["list", &p(&left), "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());

    // A pack in the pack directory is not init's: refused, unchanged.
    let other = s.path("not-init");
    fs::create_dir_all(other.join("packs")).unwrap();
    fs::write(other.join("packs").join("0000000000000001.pack"), b"data").unwrap();
    fs::write(other.join("index.sqlite.init"), b"").unwrap();
    let out = cbtfs(&["init", &p(&other)]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert_one_line_error(&out);
    assert_eq!(dir_names(&other), ["index.sqlite.init", "packs"]);
    assert_eq!(dir_names(&other.join("packs")), ["0000000000000001.pack"]);
}

/// Two `init`s of one directory at once: the second is refused while the
/// first holds the directory, and leaves it as it was.
#[test]
fn init_refuses_a_directory_another_init_holds() {
    let s = Scratch::new();
    let dir = s.path("new-repo");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("lock"), b"").unwrap();
    // The first init, stood in for by a process holding its lock.
    let mut holder = std::process::Command::new("flock").args(["--no-fork", "-x", &p(&dir.join("lock")), "sleep", "30"]).spawn().unwrap();
    let held = wait_until(std::time::Duration::from_secs(5), || {
        !std::process::Command::new("flock").args(["-n", "-x", &p(&dir.join("lock")), "true"]).status().unwrap().success()
    });
    let out = cbtfs(&["init", &p(&dir)]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(held, "the lock was never taken");
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert_one_line_error(&out);
    assert!(out.stderr.contains("another process"), "{}", out.describe());
    assert_eq!(dir_names(&dir), ["lock"], "nothing made while another init holds the directory");
    cbtfs(&["init", &p(&dir)]).ok();
    cbtfs(&["list", &p(&dir)]).ok();
}
