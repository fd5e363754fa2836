//! The command line as a script or an administrator meets it: JSON output
//! in the shapes docs/json.md documents, progress bars on a terminal only
//! (a real pseudo-terminal, through script(1)), and -v / -q.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

const MIB: u64 = 1 << 20;

/// The example of `command` in docs/json.md (a block fenced as ```json NAME).
fn documented(command: &str) -> Value {
    let doc = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/json.md")).unwrap();
    let fence = format!("```json {command}\n");
    let start = doc.find(&fence).unwrap_or_else(|| panic!("docs/json.md has no example for {command}")) + fence.len();
    let end = start + doc[start..].find("```").unwrap();
    serde_json::from_str(&doc[start..end]).unwrap_or_else(|e| panic!("example for {command} is not JSON: {e}"))
}

/// Same keys at every level; numbers, strings and booleans where the
/// example has them; `null` in the example allows null or a string; each
/// element of an array has the shape of the example's first element.
fn same_shape(doc: &Value, got: &Value, at: &str) -> Result<(), String> {
    match (doc, got) {
        (Value::Object(d), Value::Object(g)) => {
            let (dk, gk): (BTreeSet<&String>, BTreeSet<&String>) = (d.keys().collect(), g.keys().collect());
            if dk != gk {
                return Err(format!("{at}: keys {gk:?}, documented {dk:?}"));
            }
            d.iter().try_for_each(|(k, v)| same_shape(v, &g[k], &format!("{at}.{k}")))
        }
        (Value::Array(d), Value::Array(g)) => {
            let example = d.first().ok_or_else(|| format!("{at}: the documented array has no example element"))?;
            g.iter().enumerate().try_for_each(|(i, v)| same_shape(example, v, &format!("{at}[{i}]")))
        }
        (Value::Null, Value::Null | Value::String(_))
        | (Value::Number(_), Value::Number(_))
        | (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_)) => Ok(()),
        _ => Err(format!("{at}: got {got}, documented {doc}")),
    }
}

/// Checks a command's JSON against its documented shape, and that every
/// array of the example was exercised by at least one element.
#[track_caller]
fn assert_documented(command: &str, out: &Out) -> Value {
    let got = out.stdout_json();
    if let Err(e) = same_shape(&documented(command), &got, command) {
        panic!("{command} --json does not match docs/json.md: {e}\n{got:#}");
    }
    got
}

fn arrays_are_filled(v: &Value, at: &str, skip: &[&str], empty: &mut Vec<String>) {
    match v {
        Value::Object(o) => o.iter().for_each(|(k, x)| arrays_are_filled(x, &format!("{at}.{k}"), skip, empty)),
        Value::Array(a) if a.is_empty() && !skip.contains(&at) => empty.push(at.to_string()),
        Value::Array(a) => a.iter().for_each(|x| arrays_are_filled(x, &format!("{at}[]"), skip, empty)),
        _ => {}
    }
}

/// A repository with two points of one disk (the second by map).
fn two_points(s: &Scratch) -> (std::path::PathBuf, std::path::PathBuf) {
    let repo = s.repo();
    init_repo(&repo, None);
    let disk = s.path("sda.raw");
    set_size(&disk, 64 * MIB);
    write_at(&disk, 0, &Rng::new(71).bytes(24 * MIB as usize));
    write_at(&disk, 30 * MIB, &Rng::new(72).text(8 * MIB as usize));
    Ingest::new(&repo, "vm1").disk("sda", &disk).checkpoint("c1").run().ok();
    write_at(&disk, 2 * MIB, &Rng::new(73).bytes(MIB as usize));
    // The same bytes twice: one of them deduplicates.
    write_at(&disk, 40 * MIB, &Rng::new(74).bytes(128 << 10));
    write_at(&disk, 41 * MIB, &Rng::new(74).bytes(128 << 10));
    let map = s.path("c2.json");
    write_map(&map, &[(2 * MIB, MIB), (40 * MIB, 2 * MIB)]);
    Ingest::new(&repo, "vm1").disk("sda", &disk).changes("sda", &map).since("c1").checkpoint("c2").run().ok();
    (repo, disk)
}

#[test]
fn json_output_matches_the_documented_shapes() {
    let s = Scratch::new();
    let (repo, disk) = two_points(&s);
    let r = p(&repo);
    write_at(&disk, 50 * MIB, &Rng::new(75).bytes(MIB as usize));
    let map = s.path("c3.json");
    write_map(&map, &[(50 * MIB, MIB)]);
    let out = Ingest::new(&repo, "vm1").disk("sda", &disk).changes("sda", &map).since("c2").arg("--json").run().ok();
    let v = assert_documented("ingest", &out);
    let d = &v["disks"][0];
    assert_eq!((d["kind"].as_str(), d["blocks_read"].as_u64(), d["bytes_read"].as_u64()), (Some("map"), Some(16), Some(MIB)), "{v}");
    assert!(v["checkpoint"].is_null() && d["reason"].is_null(), "{v}");
    assert!(d["seconds"].as_f64().unwrap() <= v["seconds"].as_f64().unwrap(), "{v}");
    // A scan has a reason, and a checkpoint given shows. It replaces the
    // data the point before added, so that forgetting that point leaves
    // garbage for gc.
    write_at(&disk, 50 * MIB, &Rng::new(77).bytes(MIB as usize));
    let out = Ingest::new(&repo, "vm1").disk("sda", &disk).checkpoint("c4").arg("--json").run().ok();
    let v = assert_documented("ingest", &out);
    assert_eq!(v["disks"][0]["kind"], "scan");
    assert!(v["disks"][0]["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
    assert_eq!(v["checkpoint"], "c4");

    let mut empty = Vec::new();
    let list = assert_documented("list", &cbtfs(&["list", &r, "--json"]).ok());
    arrays_are_filled(&list, "list", &[], &mut empty);
    assert_documented("list", &cbtfs(&["list", &r, "vm1", "--json"]).ok());
    let stats = assert_documented("stats", &cbtfs(&["stats", &r, "--json"]).ok());
    arrays_are_filled(&stats, "stats", &[], &mut empty);
    assert_eq!(stats["points"].as_array().unwrap().len(), 4);
    let out = s.path("out.img");
    let exported = assert_documented("export", &cbtfs(&["export", &r, "vm1", "latest", "sda", &p(&out), "--json"]).ok());
    assert_eq!(exported["size"], 64 * MIB);
    assert_same_file(&out, &disk);

    cbtfs(&["protect", &r, "vm1", "1"]).ok();
    let forget = assert_documented("forget", &cbtfs(&["forget", &r, "vm1", "--keep-last", "1", "--json"]).ok());
    arrays_are_filled(&forget, "forget", &[], &mut empty);
    assert_eq!(forget["kept_protected"].as_array().unwrap().len(), 1, "{forget}");
    let gc = assert_documented("gc", &cbtfs(&["gc", &r, "--max-garbage", "0", "--json"]).ok());
    assert!(gc["packs_written"].as_u64().unwrap() >= 1, "{gc}");

    // Damage, a leftover pack and an uncommitted tail, so that every list
    // of the verify report has an element.
    let packs = pack_paths(&repo);
    let victim = &packs[0];
    let len = fs::metadata(victim).unwrap().len();
    let mut byte = read_at(victim, len / 2, 1).unwrap();
    byte[0] ^= 0x55;
    write_at(victim, len / 2, &byte);
    let tail = &packs[packs.len() - 1];
    write_at(tail, fs::metadata(tail).unwrap().len(), &[7u8; 100]);
    fs::copy(tail, victim.with_file_name("00000000000000ff.pack")).unwrap();
    let v = cbtfs(&["verify", &r, "--json"]).code_is(3);
    let verify = assert_documented("verify", &v);
    arrays_are_filled(&verify, "verify", &["verify.index_problems"], &mut empty);
    assert_eq!(verify["ok"], false);
    assert!(empty.is_empty(), "documented lists never filled by the test: {empty:?}");
}

/// Runs `cbtfs ARGS` under a pseudo-terminal (script(1)); returns all the
/// terminal showed.
fn on_terminal(args: &[&str]) -> String {
    let line = std::iter::once(bin()).chain(args.iter().copied()).map(shell_quote).collect::<Vec<_>>().join(" ");
    let o = Command::new("script").args(["-qefc", &format!("stty cols 120; {line}"), "/dev/null"]).env_remove("RUST_LOG").output().unwrap();
    let shown = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "cbtfs {args:?} on a terminal failed: {shown}");
    shown
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn progress_on_a_terminal_only() {
    let s = Scratch::new();
    let (repo, disk) = two_points(&s);
    let r = p(&repo);
    let big = s.path("big.raw");
    set_size(&big, 256 * MIB);
    write_at(&big, 0, &Rng::new(76).bytes(160 * MIB as usize));

    // Not a terminal: not a byte on stderr.
    let quiet_runs = [
        cbtfs(&["ingest", &r, "vm2", "--disk", &format!("sdb={}", p(&big))]).ok(),
        cbtfs(&["verify", &r]).ok(),
        cbtfs(&["export", &r, "vm2", "latest", "sdb", &p(&s.path("e1.img"))]).ok(),
        cbtfs(&["forget", &r, "vm1", "1"]).ok(),
        cbtfs(&["gc", &r, "--max-garbage", "0"]).ok(),
    ];
    for out in &quiet_runs {
        assert!(out.stderr.is_empty(), "stderr must stay empty off a terminal:\n{}", out.describe());
    }

    // A terminal: a bar with rate and ETA for each command that moves data.
    let ingest = on_terminal(&["ingest", &r, "vm2", "--disk", &format!("sdb={}", p(&big)), "--full"]);
    assert!(ingest.contains("sdb [") && ingest.contains("ETA") && ingest.contains("/s"), "ingest showed no progress: {ingest:?}");
    assert!(ingest.contains("restore point"), "the result still shows: {ingest:?}");
    let verify = on_terminal(&["verify", &r]);
    assert!(verify.contains("verify [") && verify.contains("ETA"), "verify showed no progress: {verify:?}");
    let export = on_terminal(&["export", &r, "vm2", "latest", "sdb", &p(&s.path("e2.img"))]);
    assert!(export.contains("sdb [") && export.contains("ETA"), "export showed no progress: {export:?}");
    assert_same_file(&s.path("e2.img"), &big);
    write_at(&big, 0, &Rng::new(78).bytes(32 * MIB as usize));
    cbtfs(&["ingest", &r, "vm2", "--disk", &format!("sdb={}", p(&big))]).ok();
    cbtfs(&["forget", &r, "vm2", "1", "2"]).ok();
    let gc = on_terminal(&["gc", &r, "--max-garbage", "0"]);
    assert!(gc.contains("gc [") && gc.contains("ETA"), "gc showed no progress: {gc:?}");
    assert!(cbtfs(&["stats", &r, "--json"]).ok().stdout_json()["garbage_bytes"] == 0, "gc reclaimed it all");

    // --quiet on a terminal: results only.
    let q = on_terminal(&["-q", "ingest", &r, "vm1", "--disk", &format!("sda={}", p(&disk))]);
    assert!(!q.contains("ETA") && !q.contains("warning"), "--quiet still showed progress or a warning: {q:?}");
    assert!(q.contains("restore point"), "{q:?}");
    let q = on_terminal(&["verify", "--quiet", &r]);
    assert!(!q.contains("ETA") && q.contains("ok:"), "{q:?}");
}

#[test]
fn verbose_and_quiet_flags() {
    let s = Scratch::new();
    let (repo, disk) = two_points(&s);
    let r = p(&repo);
    let disk_arg = format!("sda={}", p(&disk));
    // Default: the fallback warning, no log lines.
    let out = cbtfs(&["ingest", &r, "vm1", "--disk", &disk_arg]).ok();
    assert!(out.warns_full_scan("sda") && !out.stderr.contains("INFO"), "{}", out.describe());
    // -v: info log lines too.
    let out = cbtfs(&["-v", "ingest", &r, "vm1", "--disk", &disk_arg]).ok();
    assert!(out.warns_full_scan("sda"), "{}", out.describe());
    assert!(out.stderr.lines().any(|l| l.contains("INFO") && l.contains("disk sda: scan")), "{}", out.describe());
    assert!(!out.stderr.contains("DEBUG"), "{}", out.describe());
    // -vv: debug lines.
    let out = cbtfs(&["ingest", "-vv", &r, "vm1", "--disk", &disk_arg]).ok();
    assert!(out.stderr.lines().any(|l| l.contains("DEBUG") && l.contains("blocks to read")), "{}", out.describe());
    // -q: no warning; the result on stdout stays.
    let out = cbtfs(&["ingest", &r, "vm1", "--disk", &disk_arg, "-q"]).ok();
    assert!(out.stderr.is_empty() && out.stdout.contains("restore point"), "{}", out.describe());
    // -q with -v makes no sense: a usage error, nothing done.
    let before = point_names(&repo, "vm1").len();
    cbtfs(&["-q", "-v", "ingest", &r, "vm1", "--disk", &disk_arg]).code_is(2);
    assert_eq!(point_names(&repo, "vm1").len(), before);
    // Errors are never silenced.
    let out = cbtfs(&["-q", "ingest", &r, "vm1", "--disk", "sda=/nonexistent/disk"]).code_is(1);
    assert!(out.stderr.starts_with("cbtfs: error:"), "{}", out.describe());
    assert_eq!(point_names(&repo, "vm1").len(), before);
    assert!(Path::new(&r).join("index.sqlite").exists());
}

/// `mount --allow-other` lets another user (here: nobody) read the images,
/// as a VM run by libvirt's QEMU user needs; without it FUSE refuses them.
#[test]
fn allow_other_lets_other_users_read() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new();
    let (repo, disk) = two_points(&s);
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |path: &Path| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cmp", "-s"])
            .arg(path)
            .arg(&disk)
            .status()
            .unwrap()
    };
    let m = FuseMount::start(&repo, &s.mnt("m"));
    let img = m.image("vm1", &latest_point(&repo, "vm1"), "sda");
    assert!(!as_nobody(&img).success(), "without --allow-other another user must not read the mount");
    m.unmount().ok();

    let mp = s.mnt("m2");
    fs::create_dir_all(&mp).unwrap();
    let proc_ = spawn_cbtfs(&["mount", &p(&repo), &p(&mp), "--allow-other"], s.dir.path(), "allow-other");
    assert!(wait_until(std::time::Duration::from_secs(10), || is_fuse_mounted(&mp)), "{}", proc_.stderr_so_far());
    let img = mp.join("vm1").join(latest_point(&repo, "vm1")).join("sda.img");
    let st = as_nobody(&img);
    sh("umount", &[&p(&mp)]);
    let _ = proc_.wait_timeout(std::time::Duration::from_secs(10));
    assert!(st.success(), "with --allow-other, another user reads the same bytes");
}

/// Output into a pipe whose reader has gone (`cbtfs list | head -1`):
/// the command still ends as it would have, with its own exit code and no
/// panic, since its work is done.
#[test]
fn a_reader_that_goes_away_changes_no_exit_code() {
    let s = Scratch::new();
    let (repo, _) = two_points(&s);
    let r = p(&repo);
    let gone = |args: &[&str]| {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = Command::new(bin()).args(args).stdout(writer).output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    for args in [
        vec!["list", r.as_str()],
        vec!["list", r.as_str(), "--json"],
        vec!["stats", r.as_str()],
        vec!["verify", r.as_str(), "--json"],
        vec!["protect", r.as_str(), "vm1", "1"],
    ] {
        let (code, err) = gone(&args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // The export is published, and says so in its exit code.
    let out = s.path("sda.img");
    let (code, err) = gone(&["export", &r, "vm1", "latest", "sda", &p(&out), "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.exists());
    // Damage found is still exit code 3.
    let pack = pack_paths(&repo)[0].clone();
    let f = fs::OpenOptions::new().write(true).open(&pack).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"\xff\xff\xff\xff", 4096).unwrap();
    let (code, err) = gone(&["verify", &r]);
    assert_eq!(code, Some(3), "{err}");
}
