//! `stats`: how much the repository holds and how well it stores it.
//!
//! - logical bytes: the disk sizes of every point, as a restore sees them;
//! - data bytes: of those, the blocks that are not all zeros;
//! - unique bytes: the raw size of the distinct blocks stored, which
//!   deduplication across points, disks and machines leaves;
//! - stored bytes: their frames in packs (compressed, with headers);
//! - garbage bytes: pack bytes no point uses, which `gc` reclaims.
//!
//! Dedup ratio = data bytes / unique bytes; compression ratio = unique
//! bytes / stored bytes. Costs one pass over each point's block versions.

use crate::error::Result;
use crate::format::{FRAME_HEADER_LEN, PACK_HEADER_LEN};
use crate::index::Index;
use rusqlite::OptionalExtension;

#[derive(Debug, Clone, serde::Serialize)]
pub struct PointStats {
    pub machine: String,
    pub point: String,
    pub logical_bytes: u64,
    pub data_bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Stats {
    pub points: Vec<PointStats>,
    pub logical_bytes: u64,
    pub data_bytes: u64,
    pub unique_blocks: u64,
    pub unique_bytes: u64,
    pub stored_bytes: u64,
    pub pack_count: u64,
    pub pack_bytes: u64,
    pub garbage_bytes: u64,
    /// Blocks no point uses (`gc` drops them).
    pub unused_blocks: u64,
    pub dedup_ratio: f64,
    pub compression_ratio: f64,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 1.0 } else { ((a as f64 / b as f64) * 1000.0).round() / 1000.0 }
}

pub fn stats(idx: &Index) -> Result<Stats> {
    let conn = idx.conn();
    let bs = idx.block_size()? as u64;
    let mut points = Vec::new();
    for (mid, machine) in idx.machines()? {
        for p in idx.points(mid)? {
            let (mut logical, mut data) = (0u64, 0u64);
            for d in idx.point_disks(p.id)? {
                logical += d.size;
                // SQLite's bare-column rule: block_id comes from the row
                // holding max(seq), the version this point reads.
                let blocks: i64 = conn.query_row(
                    "SELECT count(*) FROM (
                       SELECT max(seq), block_id FROM block_versions
                       WHERE lineage_id = ?1 AND seq <= ?2 GROUP BY block_no)
                     WHERE block_id IS NOT NULL",
                    rusqlite::params![d.lineage, p.seq],
                    |r| r.get(0),
                )?;
                data += blocks as u64 * bs;
                // A last, partial block counts only the disk's part of it.
                let tail = d.size % bs;
                if tail != 0 {
                    let last: Option<Option<i64>> = conn
                        .query_row(
                            "SELECT block_id FROM block_versions
                             WHERE lineage_id = ?1 AND block_no = ?2 AND seq <= ?3 ORDER BY seq DESC LIMIT 1",
                            rusqlite::params![d.lineage, (d.size / bs) as i64, p.seq],
                            |r| r.get(0),
                        )
                        .optional()?;
                    if matches!(last, Some(Some(_))) {
                        data -= bs - tail;
                    }
                }
            }
            points.push(PointStats { machine: machine.clone(), point: p.name(), logical_bytes: logical, data_bytes: data });
        }
    }
    let (unique_blocks, unique_bytes, stored): (i64, i64, i64) = conn.query_row(
        "SELECT count(*), coalesce(sum(raw_len), 0), coalesce(sum(stored_len + ?1), 0) FROM blocks
         WHERE id IN (SELECT block_id FROM block_versions WHERE block_id IS NOT NULL)",
        [FRAME_HEADER_LEN as i64],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let unused: i64 = conn.query_row(
        "SELECT count(*) FROM blocks WHERE id NOT IN (SELECT block_id FROM block_versions WHERE block_id IS NOT NULL)",
        [],
        |r| r.get(0),
    )?;
    let (pack_count, pack_bytes): (i64, i64) =
        conn.query_row("SELECT count(*), coalesce(sum(size), 0) FROM packs", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let logical_bytes = points.iter().map(|p| p.logical_bytes).sum();
    let data_bytes: u64 = points.iter().map(|p| p.data_bytes).sum();
    let frames = (pack_bytes as u64).saturating_sub(pack_count as u64 * PACK_HEADER_LEN as u64);
    Ok(Stats {
        points,
        logical_bytes,
        data_bytes,
        unique_blocks: unique_blocks as u64,
        unique_bytes: unique_bytes as u64,
        stored_bytes: stored as u64,
        pack_count: pack_count as u64,
        pack_bytes: pack_bytes as u64,
        garbage_bytes: frames.saturating_sub(stored as u64),
        unused_blocks: unused as u64,
        dedup_ratio: ratio(data_bytes, unique_bytes as u64),
        compression_ratio: ratio(unique_bytes as u64, stored as u64),
    })
}
