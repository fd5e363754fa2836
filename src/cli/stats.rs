use std::path::PathBuf;

use cbtfs::repo::Repo;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Repository directory
    pub repo: PathBuf,
    /// Print JSON on stdout
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> super::Outcome {
    let repo = Repo::open(&a.repo)?;
    let s = cbtfs::stats::stats(&repo.index)?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&s)?)?;
        return Ok(super::exit::OK);
    }
    for p in &s.points {
        outln!("  {:<16} {}  {:>15} bytes, {:>15} bytes of data", p.machine, p.point, p.logical_bytes, p.data_bytes)?;
    }
    outln!("points:        {}, {} bytes logical, {} bytes of data", s.points.len(), s.logical_bytes, s.data_bytes)?;
    outln!("unique blocks: {} ({} bytes); dedup ratio {:.2}", s.unique_blocks, s.unique_bytes, s.dedup_ratio)?;
    outln!("stored:        {} bytes; compression ratio {:.2}", s.stored_bytes, s.compression_ratio)?;
    outln!("packs:         {} ({} bytes), {} bytes of garbage, {} unused blocks", s.pack_count, s.pack_bytes, s.garbage_bytes, s.unused_blocks)?;
    Ok(super::exit::OK)
}
