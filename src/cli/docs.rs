//! `generate-docs DIR` (hidden): writes the man pages (cbtfs(1) and one
//! per subcommand) and the bash, zsh and fish completions, all from the
//! clap definitions, so they cannot drift from the real options. Each page
//! also gets the EXIT STATUS and EXAMPLES sections below. The committed
//! copies in `man/` are checked against this by the tests.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;
use clap_mangen::Man;
use roff::{Roff, bold, roman};

use super::exit;

/// No arguments to a roff request.
const NONE: [&str; 0] = [];

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory to write the pages into (completions go to DIR/completions)
    pub dir: PathBuf,
}

/// (code, meaning) of every exit status a command can end with.
fn exit_statuses(command: &str) -> Vec<(u8, &'static str)> {
    let mut v = vec![
        (exit::OK, "Success."),
        (exit::ERROR, "Error: bad input, a missing source, an I/O failure. The repository is unchanged."),
        (exit::USAGE, "Usage error: unknown option, missing argument."),
    ];
    match command {
        "verify" => {
            v.push((exit::DAMAGE, "Damage found: a block does not read back as stored, or the index is unsound."));
            v.push((exit::BUSY, "The repository is being pruned (forget or gc); try again later."));
        }
        "ingest" | "protect" => v.push((exit::BUSY, "Another ingest, forget, gc or protect is writing the repository.")),
        "forget" | "gc" => v.push((
            exit::BUSY,
            "Another writer holds the repository, or a mount or verify is reading it (see --wait).",
        )),
        "mount" | "export" => v.push((exit::BUSY, "The repository is being pruned (forget or gc); try again later.")),
        "cbtfs" => {
            v.push((exit::DAMAGE, "verify found damage."));
            v.push((
                exit::BUSY,
                "The repository is busy: another writer holds it; for forget and gc, a mount or verify reads it; for mount, verify and export, forget or gc is pruning it.",
            ));
        }
        _ => {}
    }
    v
}

/// (what it does, command line) examples of each page.
fn examples(command: &str) -> &'static [(&'static str, &'static str)] {
    match command {
        "cbtfs" => &[
            ("Back up a machine's disk, then mount every restore point and restore a file:", "cbtfs init /backup/repo\ncbtfs ingest /backup/repo web01 --disk sda=/dev/vg/web01-snap --checkpoint cp-001\ncbtfs mount /backup/repo /mnt/backups &\nmount -o loop,ro,noload /mnt/backups/web01/latest/sda-part1.img /mnt/restore"),
            ("Keep two weeks of dailies and two months of weeklies, and reclaim the space:", "cbtfs forget /backup/repo web01 --keep-daily 14 --keep-weekly 8 && cbtfs gc /backup/repo"),
        ],
        "init" => &[
            ("A repository with the default 64 KiB blocks and 16 MiB packs:", "cbtfs init /backup/repo"),
            ("Smaller blocks, for disks with many small scattered writes:", "cbtfs init /backup/repo --block-size 16K"),
        ],
        "ingest" => &[
            ("The first (full) backup of a machine, from an LVM snapshot:", "cbtfs ingest /backup/repo web01 --disk sda=/dev/vg/web01-snap --checkpoint cp-001"),
            ("An incremental from a changed-block map relative to checkpoint cp-001:", "cbtfs ingest /backup/repo web01 --disk sda=/dev/vg/web01-snap --changes sda=changes.json --since cp-001 --checkpoint cp-002"),
            ("An incremental from the QEMU dirty bitmap named after the last checkpoint:", "cbtfs ingest /backup/repo web01 --disk sda=vm.qcow2 --bitmap sda=cp-002 --checkpoint cp-003"),
            ("Two disks over NBD, with a JSON summary for a script:", "cbtfs ingest /backup/repo db01 --disk vda=nbd+unix:///vda?socket=/run/backup.sock --disk vdb=nbd://10.0.0.5/vdb --json"),
        ],
        "list" => &[
            ("Every machine and restore point:", "cbtfs list /backup/repo"),
            ("One machine, for a script:", "cbtfs list /backup/repo web01 --json"),
        ],
        "mount" => &[
            ("Mount, restore a file from the root partition, unmount:", "cbtfs mount /backup/repo /mnt/backups &\nmount -o loop,ro,noload /mnt/backups/web01/latest/sda-part1.img /mnt/restore\ncp -a /mnt/restore/etc/nginx /tmp/\numount /mnt/restore; umount /mnt/backups"),
            ("Boot a VM from a restore point without copying it:", "qemu-img create -f qcow2 -b /mnt/backups/web01/000007-20261123T093200Z/sda.img -F raw web01-boot.qcow2"),
        ],
        "verify" => &[
            ("Check every stored block; exit status 3 names damage:", "cbtfs verify /backup/repo || echo 'repository damaged'"),
        ],
        "forget" => &[
            ("Forget one restore point by number:", "cbtfs forget /backup/repo web01 3"),
            ("See what a policy would forget, without changing anything:", "cbtfs forget /backup/repo web01 --keep-last 7 --keep-monthly 12 --dry-run"),
        ],
        "gc" => &[
            ("Reclaim all garbage, waiting for running mounts to end:", "cbtfs gc /backup/repo --max-garbage 0 --wait"),
        ],
        "protect" => &[
            ("Keep the point taken before an upgrade whatever the policy:", "cbtfs protect /backup/repo web01 000042-20261123T093200Z"),
            ("Lift the protection:", "cbtfs protect /backup/repo web01 42 --off"),
        ],
        "stats" => &[("Sizes and ratios of the repository:", "cbtfs stats /backup/repo")],
        "export" => &[
            ("Copy the newest state of a disk to a sparse raw file:", "cbtfs export /backup/repo web01 latest sda /srv/web01-sda.img"),
            ("An older point, as a qcow2 image:", "cbtfs export /backup/repo web01 3 sda /srv/web01-sda.qcow2 --format qcow2"),
        ],
        _ => &[],
    }
}

/// Pages to point to from each page.
fn related(command: &str) -> &'static [&'static str] {
    match command {
        "cbtfs" => &["init", "ingest", "list", "mount", "verify", "forget", "gc", "protect", "stats", "export"],
        "init" => &["ingest"],
        "ingest" => &["list", "mount", "forget"],
        "list" => &["ingest", "stats"],
        "mount" => &["export", "list"],
        "verify" => &["gc"],
        "forget" => &["gc", "protect"],
        "gc" => &["forget", "stats"],
        "protect" => &["forget"],
        "stats" => &["gc"],
        "export" => &["mount"],
        _ => &[],
    }
}

/// The command line as shells complete it: without hidden subcommands,
/// which clap_complete would otherwise offer.
fn visible(cmd: &clap::Command) -> clap::Command {
    debug_assert_eq!(cmd.get_name(), "cbtfs");
    let mut out = clap::Command::new("cbtfs");
    for a in cmd.get_arguments() {
        out = out.arg(a.clone());
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        out = out.subcommand(sub.clone());
    }
    out
}

/// The clap-rendered page with EXIT STATUS and EXAMPLES before VERSION.
fn page(cmd: &clap::Command, command: &str, dir: &Path) -> anyhow::Result<()> {
    let man = Man::new(cmd.clone()).source(format!("cbtfs {}", env!("CARGO_PKG_VERSION")));
    let path = dir.join(man.get_filename());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut out)?;
    }
    let mut roff = Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in exit_statuses(command) {
        roff.control("TP", NONE).text([bold(code.to_string())]).text([roman(meaning)]);
    }
    roff.control("SH", ["EXAMPLES"]);
    for (what, line) in examples(command) {
        roff.control("PP", NONE).text([roman(*what)]).control("PP", NONE).control("RS", ["4"]).control("nf", NONE);
        for l in line.lines() {
            roff.text([roman(l)]);
        }
        roff.control("fi", NONE).control("RE", NONE);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    roff.control("TP", NONE).text([bold("RUST_LOG")]).text([roman(
        "Which log lines to print, as env_logger reads it (for example cbtfs=debug). When set, it replaces what -v and -q choose.",
    )]);
    roff.control("SH", ["SEE ALSO"]);
    let mut see: Vec<String> = Vec::new();
    if command != "cbtfs" {
        see.push("cbtfs(1)".into());
    }
    for other in related(command) {
        see.push(format!("cbtfs-{other}(1)"));
    }
    roff.text([roman(see.join(", "))]);
    if cmd.get_arguments().any(|a| a.get_id() == "json") {
        roff.control("PP", NONE).text([roman(
            "The --json output and its fields are described, with examples, in docs/json.md of the cbtfs sources.",
        )]);
    }
    roff.to_writer(&mut out)?;
    if cmd.get_version().is_some() {
        man.render_version_section(&mut out)?;
    }
    std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

pub fn run(a: Args) -> super::Outcome {
    let mut cmd = super::Cli::command().disable_help_subcommand(true);
    cmd.build();
    std::fs::create_dir_all(&a.dir).with_context(|| format!("cannot create {}", a.dir.display()))?;
    page(&cmd, "cbtfs", &a.dir)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        anyhow::ensure!(!examples(sub.get_name()).is_empty(), "no examples for {}", sub.get_name());
        page(sub, sub.get_name(), &a.dir)?;
    }
    let comp = a.dir.join("completions");
    std::fs::create_dir_all(&comp).with_context(|| format!("cannot create {}", comp.display()))?;
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
        clap_complete::generate_to(shell, &mut visible(&super::Cli::command()), "cbtfs", &comp)
            .with_context(|| format!("cannot write {shell} completions to {}", comp.display()))?;
    }
    Ok(super::exit::OK)
}
