//! The data behind `cbtfs list`: machines, points, disks.

use crate::error::{Error, Result};
use crate::ids::MachineId;
use crate::index::{Index, PointDiskRow};
use crate::names::rfc3339;

#[derive(Debug, Clone, serde::Serialize)]
pub struct DiskInfo {
    pub name: String,
    pub size: u64,
    pub kind: String,
    pub reason: Option<String>,
    pub blocks_read: u64,
    pub blocks_stored: u64,
    pub bytes_stored: u64,
}

impl From<PointDiskRow> for DiskInfo {
    fn from(d: PointDiskRow) -> DiskInfo {
        DiskInfo {
            name: d.name,
            size: d.size,
            kind: d.kind,
            reason: d.reason,
            blocks_read: d.blocks_read,
            blocks_stored: d.blocks_stored,
            bytes_stored: d.bytes_stored,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PointInfo {
    pub name: String,
    pub seq: i64,
    pub created: String,
    pub checkpoint: Option<String>,
    /// "full" if every disk is full, "scan" if any disk was scanned, else
    /// "map" if any disk was read by a map, else "bitmap".
    pub kind: String,
    /// Protected from `forget` (`cbtfs protect`).
    pub protected: bool,
    pub disks: Vec<DiskInfo>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MachineInfo {
    pub name: String,
    pub points: Vec<PointInfo>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Listing {
    pub machines: Vec<MachineInfo>,
}

fn point_kind(disks: &[DiskInfo]) -> &'static str {
    if disks.iter().all(|d| d.kind == "full") {
        "full"
    } else if disks.iter().any(|d| d.kind == "scan") {
        "scan"
    } else if disks.iter().any(|d| d.kind == "map") {
        "map"
    } else {
        "bitmap"
    }
}

/// The machine named `name`; an error telling how to see the names if
/// there is none.
pub fn machine(idx: &Index, name: &str) -> Result<MachineId> {
    idx.machine_id(name)?.ok_or_else(|| {
        Error::Input(format!("no machine named {name} in this repository; `cbtfs list REPO` shows the machines"))
    })
}

pub fn listing(idx: &Index, machine: Option<&str>) -> Result<Listing> {
    let machines = match machine {
        Some(name) => vec![(self::machine(idx, name)?, name.to_string())],
        None => idx.machines()?,
    };
    let mut out = Vec::new();
    for (id, name) in machines {
        let mut points = Vec::new();
        for p in idx.points(id)? {
            let disks: Vec<DiskInfo> = idx.point_disks(p.id)?.into_iter().map(DiskInfo::from).collect();
            points.push(PointInfo {
                name: p.name(),
                seq: p.seq,
                created: rfc3339(p.created),
                checkpoint: p.checkpoint.clone(),
                kind: point_kind(&disks).to_string(),
                protected: crate::retention::is_protected(idx, p.id)?,
                disks,
            });
        }
        out.push(MachineInfo { name, points });
    }
    Ok(Listing { machines: out })
}
