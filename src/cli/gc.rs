use std::path::PathBuf;

use anyhow::bail;

use cbtfs::repo::Repo;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Repository directory
    pub repo: PathBuf,
    /// Rewrite packs in which at least this share of the bytes is garbage (0 to 100)
    #[arg(long, value_name = "PERCENT", default_value_t = 10.0)]
    pub max_garbage: f64,
    /// Report what would be reclaimed; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Wait for mounts, exports, verifies and ingests of the repository to end instead of failing (exit 4)
    #[arg(long)]
    pub wait: bool,
    /// Print a JSON summary on stdout
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> super::Outcome {
    if !(0.0..=100.0).contains(&a.max_garbage) {
        bail!("--max-garbage {} must be a percentage from 0 to 100", a.max_garbage);
    }
    let repo = Repo::open(&a.repo)?;
    let (writer, _readers) = repo.lock_for_pruning(a.wait)?;
    let mut bar = super::progress::Tracker::new("gc");
    let r = cbtfs::gc::gc(&repo, &writer, a.max_garbage / 100.0, a.dry_run, |d, t| bar.update(d, t))?;
    bar.finish();
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["dry_run"] = serde_json::json!(a.dry_run);
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        let verb = if a.dry_run { "would reclaim" } else { "reclaimed" };
        outln!(
            "{verb} {} bytes: {} unused blocks, {} packs rewritten or removed, {} written; {} bytes of garbage found, {} left in packs below {}% garbage; {} bytes left by interrupted ingests",
            r.bytes_reclaimed, r.blocks_removed, r.packs_removed, r.packs_written, r.garbage_bytes, r.garbage_kept, a.max_garbage, r.leftover_bytes
        )?;
    }
    Ok(super::exit::OK)
}
