//! `ingest`: adds one restore point to a machine's chain.
//!
//! Two phases. [`plan`] validates everything (names, sources, maps,
//! checkpoints) and decides per disk how to read it, writing nothing.
//! [`Plan::execute`] then reads, stores and commits in one index
//! transaction, so the point appears whole or not at all.
//!
//! How each disk is read:
//! - *full* (first ingest, a disk not in the latest point, or `--full`): a
//!   new lineage; only allocated data is read, zero blocks are not stored.
//! - *map*: the map is tied to the chain (`--since` is the latest point's
//!   checkpoint); only blocks overlapping its extents are read, plus any
//!   region the disk grew by.
//! - *bitmap*: the same, with the changed extents taken from a QEMU dirty
//!   bitmap of a qcow2 image or NBD export. A bitmap is relative to the
//!   checkpoint named by `--since`, or without it to the checkpoint of its
//!   own name (the convention of oVirt and Proxmox: a bitmap is created
//!   with, and named after, the checkpoint it counts changes from). It is
//!   used only when enabled, saved cleanly and tied to the chain.
//! - *scan*: no trustworthy map; every allocated block is read and stored
//!   only if it differs from the previous point; holes become zero where
//!   the previous point had data.
//!
//! In map and scan modes a block whose content equals the previous
//! version writes nothing, and a disk that shrank gets zero versions for
//! the cut-off blocks, so that growing it later cannot expose old data.

pub mod changemap;
pub mod source;
mod store;

use std::collections::HashSet;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::ids::{LineageId, PointDiskId};
use crate::index::{PointDiskRow, PointRow};
use crate::names::{check_checkpoint, check_name};
use crate::ranges::RangeSet;
pub use source::SourceFormat;
use crate::repo::Repo;
use source::Source;

/// What the user asked for, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub machine: String,
    pub disks: Vec<(String, PathBuf)>,
    pub changes: Vec<(String, PathBuf)>,
    /// Dirty bitmaps: (disk, bitmap name).
    pub bitmaps: Vec<(String, String)>,
    /// Formats of source files, where given: (disk, format).
    pub formats: Vec<(String, SourceFormat)>,
    pub since: Option<String>,
    pub checkpoint: Option<String>,
    pub full: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Full,
    Map,
    Bitmap,
    Scan,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Map => "map",
            Kind::Bitmap => "bitmap",
            Kind::Scan => "scan",
        }
    }
}

/// The previous version of a disk that an incremental builds on.
#[derive(Debug, Clone)]
pub struct Previous {
    /// Its row in `point_disks`.
    pub id: PointDiskId,
    pub lineage: LineageId,
    pub seq: i64,
    pub size: u64,
    /// Its blocks holding data; `None` if recorded before the index kept
    /// the count.
    pub data_blocks: Option<u64>,
}

/// How one disk will be ingested.
pub struct DiskPlan {
    pub name: String,
    pub source: Source,
    pub kind: Kind,
    /// Why a scan happens (shown to the user and kept in the index).
    pub reason: Option<String>,
    pub prev: Option<Previous>,
    /// Changed byte ranges, for kinds Map and Bitmap.
    pub changed: Option<RangeSet>,
}

pub struct Plan {
    pub machine: String,
    pub latest: Option<PointRow>,
    pub checkpoint: Option<String>,
    pub disks: Vec<DiskPlan>,
    /// Messages for the user (stderr), e.g. full-scan fallbacks.
    pub warnings: Vec<String>,
    _lock: crate::repo::WriterLock,
}

/// Per-disk result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiskReport {
    pub name: String,
    /// How the disk was read: full, map, bitmap or scan.
    pub kind: &'static str,
    /// Why a disk was scanned rather than read by map or bitmap.
    pub reason: Option<String>,
    pub size: u64,
    pub blocks_read: u64,
    pub bytes_read: u64,
    pub blocks_stored: u64,
    pub blocks_deduplicated: u64,
    pub bytes_stored: u64,
    pub seconds: f64,
}

/// What an ingest reports as it goes, for progress display.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// Reading of a disk starts; `bytes` is what it will read.
    Disk { name: &'a str, bytes: u64 },
    /// `bytes` more of the current disk were read and stored.
    Read { bytes: u64 },
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub machine: String,
    pub point: String,
    pub seq: i64,
    pub checkpoint: Option<String>,
    pub disks: Vec<DiskReport>,
}

fn check_request(req: &Request) -> Result<()> {
    check_name("machine", &req.machine)?;
    if req.disks.is_empty() {
        return Err(Error::Input("no disk given; name at least one with --disk NAME=SOURCE".into()));
    }
    let mut seen = HashSet::new();
    for (name, _) in &req.disks {
        check_name("disk", name)?;
        if !seen.insert(name.as_str()) {
            return Err(Error::Input(format!("disk {name} is given twice; name each disk once")));
        }
    }
    let mut mapped = HashSet::new();
    for (name, path) in &req.changes {
        if !seen.contains(name.as_str()) {
            return Err(Error::Input(format!(
                "map {} is for disk {name}, which is not in this ingest; add --disk {name}=SOURCE or drop the map",
                path.display()
            )));
        }
        if !mapped.insert(name.as_str()) {
            return Err(Error::Input(format!("disk {name} has two maps; give one --changes per disk")));
        }
    }
    let mut with_format = HashSet::new();
    for (name, _) in &req.formats {
        if !seen.contains(name.as_str()) {
            return Err(Error::Input(format!(
                "--format is for disk {name}, which is not in this ingest; add --disk {name}=SOURCE or drop the format"
            )));
        }
        if !with_format.insert(name.as_str()) {
            return Err(Error::Input(format!("disk {name} has two formats; give one --format per disk")));
        }
    }
    let mut with_bitmap = HashSet::new();
    for (name, bitmap) in &req.bitmaps {
        if !seen.contains(name.as_str()) {
            return Err(Error::Input(format!(
                "bitmap {bitmap} is for disk {name}, which is not in this ingest; add --disk {name}=SOURCE or drop the bitmap"
            )));
        }
        if mapped.contains(name.as_str()) {
            return Err(Error::Input(format!("disk {name} has a map and a bitmap; give one of --changes and --bitmap")));
        }
        if !with_bitmap.insert(name.as_str()) {
            return Err(Error::Input(format!("disk {name} has two bitmaps; give one --bitmap per disk")));
        }
        // Bitmap names double as checkpoint names: the same rules.
        check_checkpoint(bitmap)?;
        // The bitmap named after the checkpoint being recorded started
        // with it (`qemu-img bitmap --add` just before this ingest): it
        // holds the changes from now on, and with --since it would be
        // trusted for those since the latest point.
        if req.checkpoint.as_deref() == Some(bitmap.as_str()) {
            return Err(Error::Input(format!(
                "disk {name}: bitmap {bitmap} is named after the checkpoint this ingest records, so it counts changes from now on; \
                 give the bitmap of the latest restore point's checkpoint"
            )));
        }
    }
    if let Some(c) = &req.checkpoint {
        check_checkpoint(c)?;
    }
    if let Some(c) = &req.since {
        check_checkpoint(c)?;
    }
    Ok(())
}

/// Validates the request against the repository and decides how to read
/// each disk. Takes the writer lock; writes nothing.
pub fn plan(repo: &Repo, req: &Request) -> Result<Plan> {
    check_request(req)?;
    let lock = repo.lock_writer()?;
    let machine = repo.index.machine_id(&req.machine)?;
    let latest = match machine {
        Some(m) => repo.index.latest_point(m)?,
        None => None,
    };
    if let (Some(m), Some(c)) = (machine, &req.checkpoint)
        && repo.index.checkpoint_used(m, c)? {
            return Err(Error::Input(format!(
                "checkpoint {c} is already recorded for machine {}; checkpoint ids must be unique per machine",
                req.machine
            )));
        }
    let prev_disks = match &latest {
        Some(p) => repo.index.point_disks(p.id)?,
        None => Vec::new(),
    };
    let latest_cp = latest.as_ref().and_then(|p| p.checkpoint.clone());
    let is_latest = |since: Option<&str>| matches!((since, &latest_cp), (Some(s), Some(l)) if s == l);
    let untied = |what: &str, since: Option<&str>| match since {
        None => format!("the {what} is not tied to a checkpoint (no --since)"),
        Some(s) => format!(
            "the {what} is relative to checkpoint {s}, but the latest restore point {}",
            match &latest_cp {
                Some(c) => format!("has checkpoint {c}"),
                None => "has no checkpoint".to_string(),
            }
        ),
    };

    let mut warnings = Vec::new();
    let mut disks = Vec::new();
    for (name, path) in &req.disks {
        let bitmap = req.bitmaps.iter().find(|(n, _)| n == name).map(|(_, b)| b.as_str());
        let format = req.formats.iter().find(|(n, _)| n == name).map(|&(_, f)| f);
        let source = Source::open(name, path, bitmap, format)?;
        let map_path = req.changes.iter().find(|(n, _)| n == name).map(|(_, p)| p);
        let mut changed = match map_path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    Error::Input(format!("disk {name}: cannot read map {}: {e}", p.display()))
                })?;
                Some(changemap::parse(&text, source.size).map_err(|e| {
                    Error::Input(format!("disk {name}: map {}: {e}", p.display()))
                })?)
            }
            None => None,
        };
        let prev_row: Option<&PointDiskRow> = prev_disks.iter().find(|d| d.name == *name);
        let prev = prev_row.map(|d| Previous {
            id: d.id,
            lineage: d.lineage,
            seq: latest.as_ref().map(|p| p.seq).unwrap_or(0),
            size: d.size,
            data_blocks: d.data_blocks,
        });
        let (kind, reason) = if req.full || prev.is_none() {
            if let Some(what) = if changed.is_some() { Some("map") } else { bitmap.map(|_| "bitmap") } {
                warnings.push(format!(
                    "disk {name}: {what} ignored: {}",
                    if req.full { "--full was given" } else { "the disk has no previous version, so this is a full backup" }
                ));
            }
            (Kind::Full, None)
        } else if let Some(b) = bitmap {
            // Relative to --since, or to the checkpoint it is named after.
            let since = req.since.as_deref().or(Some(b));
            match &source.bitmap {
                Some(Ok(dirty)) if is_latest(since) => {
                    changed = Some(dirty.clone());
                    (Kind::Bitmap, None)
                }
                Some(Ok(_)) => (Kind::Scan, Some(untied(&format!("bitmap {b}"), since))),
                Some(Err(why)) => (Kind::Scan, Some(why.clone())),
                None => (Kind::Scan, Some(format!("bitmap {b} could not be read"))),
            }
        } else if changed.is_some() && is_latest(req.since.as_deref()) {
            (Kind::Map, None)
        } else if changed.is_none() {
            (Kind::Scan, Some("no changed-block map was given".to_string()))
        } else {
            (Kind::Scan, Some(untied("map", req.since.as_deref())))
        };
        if let (Kind::Scan, Some(why)) = (kind, &reason) {
            warnings.push(format!("disk {name}: full scan: {why}; reading the whole disk"));
        }
        disks.push(DiskPlan { name: name.clone(), source, kind, reason, prev: if kind == Kind::Full { None } else { prev }, changed });
    }
    Ok(Plan {
        machine: req.machine.clone(),
        latest,
        checkpoint: req.checkpoint.clone(),
        disks,
        warnings,
        _lock: lock,
    })
}

impl Plan {
    /// Reads, stores and commits. On any error nothing is committed and
    /// packs written so far are removed.
    pub fn execute(self, repo: &mut Repo) -> Result<Report> {
        self.execute_with_progress(repo, &mut |_| {})
    }

    /// [`Plan::execute`], reporting progress as it reads.
    pub fn execute_with_progress(self, repo: &mut Repo, progress: &mut dyn FnMut(Progress)) -> Result<Report> {
        let lock = &self._lock;
        repo.remove_orphan_packs(lock)?;
        let block_size = repo.block_size;
        let repo_path = repo.path.clone();
        // One transaction for the whole point. Index methods borrow the
        // connection, so it is opened with SQL rather than a Transaction
        // guard; every exit path below commits or rolls back.
        repo.index.conn().execute_batch("BEGIN IMMEDIATE")?;
        let result = self.execute_in_tx(repo, &repo_path, block_size, progress);
        match result {
            Ok((report, packs)) => {
                let committed = repo.index.conn().execute_batch("COMMIT");
                // Keep the packs even if COMMIT reported an error: the
                // commit may still have reached the log, and then the index
                // references them. If it did not, the next ingest removes
                // them as leftovers, checking against the index.
                for p in packs {
                    p.publish();
                }
                committed?;
                // An ingest is one transaction, so the log grew by about the
                // size of what it added.
                repo.index.fold_large_log();
                Ok(report)
            }
            Err(e) => {
                let _ = repo.index.conn().execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    fn execute_in_tx(
        &self,
        repo: &Repo,
        repo_path: &std::path::Path,
        block_size: u32,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Report, Vec<crate::pack::writer::SealedPack>)> {
        let idx = &repo.index;
        let now = crate::repo::now_unix();
        let machine = match idx.machine_id(&self.machine)? {
            Some(m) => m,
            None => idx.insert_machine(&self.machine)?,
        };
        // Never a number a forgotten point had.
        let seq = idx.last_seq(machine)?.max(self.latest.as_ref().map_or(0, |p| p.seq)) + 1;
        let point = idx.insert_point(machine, seq, now, self.checkpoint.as_deref())?;
        let mut store = store::BlockStore::new(idx, repo_path, block_size, repo.pack_size, now)?;
        let mut reports = Vec::new();
        for d in &self.disks {
            let lineage = match &d.prev {
                Some(p) => p.lineage,
                None => idx.insert_lineage(machine, &d.name)?,
            };
            let started = std::time::Instant::now();
            // Counted once for a point recorded before the index kept the
            // count; from then on each point's follows from its own.
            let data_before = match &d.prev {
                None => 0,
                Some(p) => match p.data_blocks {
                    Some(n) => n,
                    None => {
                        let n = idx.count_data_blocks(lineage, p.seq)?;
                        idx.set_data_blocks(p.id, n)?;
                        n
                    }
                },
            };
            let stats = store.ingest_disk(d, lineage, seq, progress)?;
            let data_blocks = match data_before.checked_add_signed(stats.data_blocks_delta) {
                Some(n) => n,
                // Only a wrong count recorded before can get here. It is a
                // figure for st_blocks, not data: count again (and correct
                // the previous point's) rather than fail a backup.
                None => {
                    log::warn!("disk {}: the recorded count of blocks with data was wrong; counted again", d.name);
                    if let Some(p) = &d.prev {
                        idx.set_data_blocks(p.id, idx.count_data_blocks(lineage, p.seq)?)?;
                    }
                    idx.count_data_blocks(lineage, seq)?
                }
            };
            let seconds = started.elapsed().as_secs_f64();
            log::info!(
                "disk {}: {} in {seconds:.2} s, {} blocks read, {} stored, {} deduplicated",
                d.name,
                d.kind.as_str(),
                stats.blocks_read,
                stats.blocks_stored,
                stats.blocks_deduplicated
            );
            idx.insert_point_disk(&PointDiskRow {
                id: crate::ids::PointDiskId(0),
                point,
                name: d.name.clone(),
                lineage,
                size: d.source.size,
                kind: d.kind.as_str().to_string(),
                reason: d.reason.clone(),
                blocks_read: stats.blocks_read,
                blocks_stored: stats.blocks_stored,
                bytes_stored: stats.bytes_stored,
                data_blocks: Some(data_blocks),
            })?;
            reports.push(DiskReport {
                name: d.name.clone(),
                kind: d.kind.as_str(),
                reason: d.reason.clone(),
                size: d.source.size,
                blocks_read: stats.blocks_read,
                bytes_read: stats.bytes_read,
                blocks_stored: stats.blocks_stored,
                blocks_deduplicated: stats.blocks_deduplicated,
                bytes_stored: stats.bytes_stored,
                seconds,
            });
        }
        let sealing = std::time::Instant::now();
        let packs = store.finish()?;
        log::debug!("packs written out and synced in {:.2} s", sealing.elapsed().as_secs_f64());
        Ok((
            Report {
                machine: self.machine.clone(),
                point: crate::names::point_name(seq, now),
                seq,
                checkpoint: self.checkpoint.clone(),
                disks: reports,
            },
            packs,
        ))
    }
}
