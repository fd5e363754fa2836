use std::path::PathBuf;

use cbtfs::repo::Repo;
use cbtfs::retention;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Repository directory
    pub repo: PathBuf,
    /// Machine of the restore point
    pub machine: String,
    /// Restore point, by name or sequence number
    pub point: String,
    /// Lift the protection instead
    #[arg(long)]
    pub off: bool,
}

pub fn run(a: Args) -> super::Outcome {
    let repo = Repo::open(&a.repo)?;
    let _writer = repo.lock_writer()?;
    let machine = cbtfs::list::machine(&repo.index, &a.machine)?;
    let points = repo.index.points(machine)?;
    let p = retention::find_point(&points, &a.point, &a.machine)?;
    retention::set_protected(&repo.index, p.id, !a.off)?;
    outln!("{} {}: {}", a.machine, p.name(), if a.off { "not protected" } else { "protected" })?;
    Ok(super::exit::OK)
}
