use std::path::PathBuf;

use anyhow::bail;

use cbtfs::index::PointRow;
use cbtfs::repo::Repo;
use cbtfs::retention::{self, Policy};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Repository directory
    pub repo: PathBuf,
    /// Machine whose restore points to forget
    pub machine: String,
    /// Restore points to forget, by name or sequence number (or give --keep-* options)
    pub points: Vec<String>,
    /// Keep the newest N points
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest point of each of the newest N days (UTC)
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// Keep the newest point of each of the newest N weeks (Monday to Sunday, UTC)
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// Keep the newest point of each of the newest N months (UTC)
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// Show what would be forgotten; change nothing
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
    let policy = Policy {
        last: a.keep_last.unwrap_or(0),
        daily: a.keep_daily.unwrap_or(0),
        weekly: a.keep_weekly.unwrap_or(0),
        monthly: a.keep_monthly.unwrap_or(0),
    };
    let by_policy = a.keep_last.is_some() || a.keep_daily.is_some() || a.keep_weekly.is_some() || a.keep_monthly.is_some();
    match (a.points.is_empty(), by_policy) {
        (true, false) => bail!("name the restore points to forget, or give --keep-last/--keep-daily/--keep-weekly/--keep-monthly"),
        (false, true) => bail!("give either restore points or --keep-* options, not both"),
        _ => {}
    }
    if by_policy && policy.is_empty() {
        bail!("this policy keeps no restore point; keep at least one (e.g. --keep-last 1)");
    }
    let repo = Repo::open(&a.repo)?;
    let (_writer, _readers) = repo.lock_for_pruning(a.wait)?;
    let idx = &repo.index;
    let machine = cbtfs::list::machine(idx, &a.machine)?;
    let all = idx.points(machine)?;
    let mut doomed: Vec<PointRow> = Vec::new();
    let mut protected_kept = Vec::new();
    if by_policy {
        let keep = policy.keep(&all);
        for (i, p) in all.iter().enumerate() {
            if keep.contains(&i) {
                continue;
            }
            if retention::is_protected(idx, p.id)? {
                protected_kept.push(p.name());
            } else {
                doomed.push(p.clone());
            }
        }
    } else {
        for name in &a.points {
            let p = retention::find_point(&all, name, &a.machine)?;
            if !doomed.iter().any(|d| d.id == p.id) {
                doomed.push(p.clone());
            }
        }
    }
    idx.conn().execute_batch("BEGIN IMMEDIATE")?;
    let res = retention::forget(idx, machine, &doomed);
    let finish = match (&res, a.dry_run) {
        (Ok(_), false) => "COMMIT",
        _ => "ROLLBACK",
    };
    idx.conn().execute_batch(finish)?;
    let forgotten = res?;
    if !a.dry_run {
        let _ = idx.conn().execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
    }
    if a.json {
        let v = serde_json::json!({
            "machine": a.machine,
            "dry_run": a.dry_run,
            "forgotten": forgotten.points,
            "kept_protected": protected_kept,
            "versions_removed": forgotten.versions_removed,
        });
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        let verb = if a.dry_run { "would forget" } else { "forgot" };
        outln!("{}: {verb} {} restore point(s)", a.machine, forgotten.points.len())?;
        for n in &forgotten.points {
            outln!("  {n}")?;
        }
        for n in &protected_kept {
            outln!("  kept {n} (protected)")?;
        }
        if !a.dry_run && !forgotten.points.is_empty() {
            outln!("run `cbtfs gc {}` to reclaim the space", a.repo.display())?;
        }
    }
    Ok(super::exit::OK)
}
