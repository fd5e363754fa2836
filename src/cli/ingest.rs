use std::path::PathBuf;
use std::time::Instant;

use anyhow::anyhow;

use cbtfs::ingest::{self, Request};
use cbtfs::repo::Repo;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Repository directory
    pub repo: PathBuf,
    /// Machine the restore point belongs to
    pub machine: String,
    /// A disk of this point and its source: a raw image file, a block device, a qcow2 image, or an
    /// NBD export (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH); repeat per disk
    #[arg(long = "disk", value_name = "NAME=SOURCE", required = true)]
    pub disks: Vec<String>,
    /// Changed-block map (JSON [{"offset":BYTES,"length":BYTES},...]) of a disk since --since
    #[arg(long = "changes", value_name = "NAME=MAPFILE")]
    pub changes: Vec<String>,
    /// QEMU dirty bitmap of a disk (qcow2 or NBD source) holding the changes since checkpoint
    /// BITMAP (or since --since, if given)
    #[arg(long = "bitmap", value_name = "NAME=BITMAP")]
    pub bitmaps: Vec<String>,
    /// Format of a disk's source file or block device: raw or qcow2. Needed for a file that starts
    /// like a qcow2 image but is not named *.qcow2 (a raw disk's first bytes are its guest's to write),
    /// and for qcow2 on a block device
    #[arg(long = "format", value_name = "NAME=FORMAT")]
    pub formats: Vec<String>,
    /// Checkpoint the maps or bitmaps are relative to; must be the latest point's checkpoint to be trusted
    #[arg(long, value_name = "CHECKPOINT")]
    pub since: Option<String>,
    /// Checkpoint id of this point (unique per machine); later maps are relative to it
    #[arg(long, value_name = "CHECKPOINT")]
    pub checkpoint: Option<String>,
    /// Full backup of every disk, whatever the chain holds
    #[arg(long)]
    pub full: bool,
    /// Print a JSON summary on stdout
    #[arg(long)]
    pub json: bool,
}

fn split_pair(flag: &str, s: &str) -> anyhow::Result<(String, PathBuf)> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("--{flag} {s:?}: expected NAME=PATH"))?;
    if path.is_empty() {
        return Err(anyhow!("--{flag} {s:?}: the path after '=' is empty"));
    }
    Ok((name.to_string(), PathBuf::from(path)))
}

pub fn run(a: Args) -> super::Outcome {
    let req = Request {
        machine: a.machine.clone(),
        disks: a.disks.iter().map(|s| split_pair("disk", s)).collect::<anyhow::Result<_>>()?,
        changes: a.changes.iter().map(|s| split_pair("changes", s)).collect::<anyhow::Result<_>>()?,
        bitmaps: a
            .bitmaps
            .iter()
            .map(|s| split_pair("bitmap", s).map(|(n, b)| (n, b.to_string_lossy().into_owned())))
            .collect::<anyhow::Result<_>>()?,
        formats: a
            .formats
            .iter()
            .map(|s| {
                let (n, f) = split_pair("format", s)?;
                let f = f.to_string_lossy();
                ingest::SourceFormat::parse(&f)
                    .map(|f| (n, f))
                    .ok_or_else(|| anyhow!("--format {s:?}: the format must be raw or qcow2"))
            })
            .collect::<anyhow::Result<_>>()?,
        since: a.since.clone(),
        checkpoint: a.checkpoint.clone(),
        full: a.full,
    };
    let started = Instant::now();
    let mut repo = Repo::open(&a.repo)?;
    let plan = ingest::plan(&repo, &req)?;
    for w in &plan.warnings {
        super::warn(w);
    }
    let mut bar = None;
    let report = plan.execute_with_progress(&mut repo, &mut |p| match p {
        ingest::Progress::Disk { name, bytes } => {
            if let Some(b) = bar.replace(super::progress::bytes(name, bytes)) {
                b.finish_and_clear();
            }
        }
        ingest::Progress::Read { bytes } => {
            if let Some(b) = &bar {
                b.inc(bytes);
            }
        }
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let report = report?;
    let secs = started.elapsed().as_secs_f64();
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["seconds"] = serde_json::json!(secs);
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        outln!("{} {}: restore point {} in {secs:.2}s", report.machine, report.checkpoint.as_deref().unwrap_or("-"), report.point)?;
        for d in &report.disks {
            outln!(
                "  {:<12} {:>5}  {} bytes, {} blocks read, {} stored ({} bytes), {} deduplicated",
                d.name, d.kind, d.size, d.blocks_read, d.blocks_stored, d.bytes_stored, d.blocks_deduplicated
            )?;
        }
    }
    Ok(super::exit::OK)
}
