use std::path::PathBuf;

use anyhow::bail;

use cbtfs::export::{Format, Step, check_output, export};
use cbtfs::catalog;
use cbtfs::image::{ImageReader, Store};
use cbtfs::repo::Repo;
use cbtfs::retention;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Repository directory
    pub repo: PathBuf,
    /// Machine of the restore point
    pub machine: String,
    /// Restore point: its name, its sequence number, or `latest`
    pub point: String,
    /// Disk of the point, or one of its partitions as the mount names it (DISK-partN)
    pub disk: String,
    /// File to write (must not exist)
    pub output: PathBuf,
    /// raw (sparse) or qcow2 (through qemu-img)
    #[arg(long, default_value = "raw", value_parser = ["raw", "qcow2"])]
    pub format: String,
    /// Print a JSON summary on stdout
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> super::Outcome {
    let repo = Repo::open(&a.repo)?;
    let _readers = repo.lock_readers_shared()?;
    let machine = cbtfs::list::machine(&repo.index, &a.machine)?;
    let points = repo.index.points(machine)?;
    let point = if a.point == "latest" {
        match points.last() {
            Some(p) => p,
            None => bail!("machine {} has no restore points", a.machine),
        }
    } else {
        retention::find_point(&points, &a.point, &a.machine)?
    };
    let disks = repo.index.point_disks(point.id)?;
    let store = Store::new(&repo.path, 64 << 20, repo.block_size);
    // A disk, or one of its partitions by its file name in the mount
    // (DISK-partN), spelt as the mount spells it (not `sda-part01`).
    let part_of = |d: &cbtfs::index::PointDiskRow| {
        let n = a.disk.strip_prefix(d.name.as_str())?.strip_prefix("-part")?.parse::<u32>().ok()?;
        (catalog::partition_name(&d.name, n) == a.disk).then_some(n)
    };
    let img = if let Some(d) = disks.iter().find(|d| d.name == a.disk) {
        ImageReader::new(store, d.lineage, point.seq, d.size)
    } else if let Some((d, n)) = disks.iter().find_map(|d| part_of(d).map(|n| (d, n))) {
        let table = ImageReader::new(store.clone(), d.lineage, point.seq, d.size).partition_table()?;
        let Some(p) = table.partitions.iter().find(|p| p.number == n) else {
            let have: Vec<String> = table.partitions.iter().map(|p| catalog::partition_name(&d.name, p.number)).collect();
            bail!(
                "disk {} of restore point {} has no partition {n}; {}",
                d.name,
                point.name(),
                if have.is_empty() { "it has no partition table".to_string() } else { format!("it has {}", have.join(", ")) }
            );
        };
        ImageReader::new(store, d.lineage, point.seq, d.size).window(p.start, p.len)
    } else {
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        bail!("restore point {} has no disk {}; it has {}", point.name(), a.disk, names.join(", "));
    };
    let format = if a.format == "qcow2" { Format::Qcow2 } else { Format::Raw };
    check_output(&a.output)?;
    let started = std::time::Instant::now();
    let bar = super::progress::bytes(&a.disk, img.size());
    // SIGINT or SIGTERM end the export cleanly (see `export`): within a
    // chunk's work, or once a final fsync in progress returns. A second
    // one ends the process at once, leaving the temporary file for the
    // next export to that name to remove.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, super::exit::ERROR.into(), stop.clone())?;
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let r = export(&img, &a.output, format, &stop, |step| match step {
        Step::Copied { done, .. } => bar.set_position(done),
        Step::Converting => super::progress::converting(&bar, "converting to qcow2 (qemu-img)"),
    })?;
    bar.finish_and_clear();
    if a.json {
        let v = serde_json::json!({
            "machine": a.machine, "point": point.name(), "disk": a.disk, "output": a.output,
            "format": a.format, "size": r.size, "data_bytes": r.data_bytes,
            "seconds": started.elapsed().as_secs_f64(),
        });
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        outln!(
            "{} {} {}: {} bytes written to {} ({}, {} bytes of data)",
            a.machine,
            point.name(),
            a.disk,
            r.size,
            a.output.display(),
            a.format,
            r.data_bytes
        )?;
    }
    Ok(super::exit::OK)
}
