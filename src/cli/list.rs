use std::path::PathBuf;

use cbtfs::list::listing;
use cbtfs::repo::Repo;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Repository directory
    pub repo: PathBuf,
    /// Only this machine
    pub machine: Option<String>,
    /// Print JSON on stdout
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> super::Outcome {
    let repo = Repo::open(&a.repo)?;
    let l = listing(&repo.index, a.machine.as_deref())?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&l)?)?;
        return Ok(super::exit::OK);
    }
    for m in &l.machines {
        outln!("{}", m.name)?;
        for p in &m.points {
            outln!(
                "  {}  {}  checkpoint {}  {}{}",
                p.name,
                p.created,
                p.checkpoint.as_deref().unwrap_or("-"),
                p.kind,
                if p.protected { "  protected" } else { "" }
            )?;
            for d in &p.disks {
                let why = d.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
                outln!("      {:<12} {:>15} bytes  {}{why}", d.name, d.size, d.kind)?;
            }
        }
    }
    Ok(super::exit::OK)
}
