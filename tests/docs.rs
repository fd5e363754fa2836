//! The man pages and shell completions in `man/` are generated from the
//! command-line definitions (`cbtfs generate-docs`): they must be current,
//! render with man(1), and load in bash.

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::process::Command;

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in ["", "completions"] {
        for e in fs::read_dir(dir.join(sub)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                out.push((format!("{sub}/{}", e.file_name().to_string_lossy()), fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn man_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/man"))
}

#[test]
fn committed_pages_are_current() {
    let s = Scratch::new();
    let fresh = s.path("man");
    cbtfs(&["generate-docs", &p(&fresh)]).ok();
    let (got, want) = (files(&fresh), files(man_dir()));
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&want), names(&got), "man/ must hold exactly what generate-docs writes");
    for ((name, a), (_, b)) in want.iter().zip(&got) {
        assert!(a == b, "man{name} is stale: run `cbtfs generate-docs man`");
    }
    for sub in ["init", "ingest", "list", "mount", "verify", "forget", "gc", "protect", "stats", "export"] {
        assert!(got.iter().any(|(n, _)| n == &format!("/cbtfs-{sub}.1")), "no page for {sub}");
    }
}

#[test]
fn pages_render_and_completions_load() {
    for (name, _) in files(man_dir()).iter().filter(|(n, _)| n.ends_with(".1")) {
        let out = Command::new("man").args(["-l", "-P", "cat"]).arg(man_dir().join(&name[1..])).env("MANWIDTH", "100").output().unwrap();
        assert!(out.status.success(), "man -l {name}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("NAME") && text.contains("SYNOPSIS"), "{name} did not render:\n{text}");
        // Every page: its exit statuses and at least one example command.
        let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(words.contains("EXIT STATUS 0 Success. 1 Error"), "{name} lists no exit statuses:\n{text}");
        let command = name.trim_start_matches('/').trim_end_matches(".1").replacen('-', " ", 1);
        let example = words.split("EXAMPLES").nth(1).unwrap_or("");
        assert!(example.contains(&command), "{name} has no example of `{command}`:\n{text}");
    }
    let verify = Command::new("man").args(["-l", "-P", "cat"]).arg(man_dir().join("cbtfs-verify.1")).output().unwrap();
    let words = String::from_utf8_lossy(&verify.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(words.contains("3 Damage found"), "verify documents exit status 3:\n{words}");

    // Each shell loads its completion and offers the subcommands, and
    // never the hidden generate-docs.
    let bash = man_dir().join("completions/cbtfs.bash");
    let script = format!(
        "source {} && complete -p cbtfs >/dev/null && COMP_WORDS=(cbtfs '') COMP_CWORD=1 && _cbtfs cbtfs '' cbtfs && echo ${{COMPREPLY[@]}}",
        p(&bash)
    );
    let out = Command::new("bash").arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let offered = String::from_utf8_lossy(&out.stdout).into_owned();
    let fish = Command::new("fish")
        .arg("-c")
        .arg(format!("source {}; complete -C 'cbtfs '", p(&man_dir().join("completions/cbtfs.fish"))))
        .output()
        .unwrap();
    assert!(fish.status.success(), "{}", String::from_utf8_lossy(&fish.stderr));
    let zsh_dir = man_dir().join("completions");
    let zsh = Command::new("zsh")
        .arg("-c")
        .arg(format!("zsh -n {0}/_cbtfs && fpath=({0} $fpath) && autoload -U compinit && compinit -u -D && echo $_comps[cbtfs]", p(&zsh_dir)))
        .output()
        .unwrap();
    assert!(zsh.status.success(), "{}", String::from_utf8_lossy(&zsh.stderr));
    assert_eq!(String::from_utf8_lossy(&zsh.stdout).trim(), "_cbtfs", "zsh did not register the completion");
    for (shell, words) in [("bash", offered), ("fish", String::from_utf8_lossy(&fish.stdout).into_owned())] {
        for sub in ["ingest", "mount", "export", "gc"] {
            assert!(words.split_whitespace().any(|w| w == sub), "{shell} does not offer {sub}: {words}");
        }
        assert!(!words.contains("generate-docs"), "{shell} offers the hidden generate-docs: {words}");
    }

    let v = cbtfs(&["--version"]).ok();
    assert_eq!(v.stdout.trim(), format!("cbtfs {}", env!("CARGO_PKG_VERSION")));
}
