//! Retention: which restore points to forget, and forgetting them.
//!
//! Forgetting rewrites no block data, and needs no merge step either: the
//! content of a block at point S is its version with the greatest sequence
//! number `<= S`, so a version written by a forgotten point still serves
//! every later point that did not overwrite the block. Forgetting deletes
//! the point's rows, and then exactly the block versions no remaining point
//! can see: a version at seq `v`, superseded at seq `n`, is kept iff some
//! remaining point of its lineage has a seq in `v..n`. Blocks left without
//! versions are garbage for `gc`.
//!
//! Retention changes what a point reads, so it runs only while no mount
//! or verify reads the repository (see `repo::ReaderLock`).

use std::collections::{BTreeSet, HashSet};

use rusqlite::params;

use crate::error::{Error, Result};
use crate::ids::{LineageId, MachineId, PointId};
use crate::index::{Index, PointRow};

/// Which points a keep policy keeps, restic- and borg-style: the newest N,
/// and the newest point of each of the newest N days, weeks and months
/// (UTC) that have points. Protected points are always kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    pub last: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }

    /// Indexes (into `points`, oldest first) of the points kept.
    pub fn keep(&self, points: &[PointRow]) -> BTreeSet<usize> {
        let mut keep = BTreeSet::new();
        let newest_first: Vec<usize> = (0..points.len()).rev().collect();
        keep.extend(newest_first.iter().take(self.last as usize));
        let mut by_period = |n: u32, period: &dyn Fn(i64) -> i64| {
            let mut seen = HashSet::new();
            for &i in &newest_first {
                if seen.len() >= n as usize {
                    break;
                }
                if seen.insert(period(points[i].created)) {
                    keep.insert(i);
                }
            }
        };
        let day = |t: i64| t.div_euclid(86_400);
        // Weeks start on Monday; 1970-01-01 was a Thursday.
        let week = |t: i64| (t.div_euclid(86_400) + 3).div_euclid(7);
        let month = |t: i64| {
            let (y, m) = civil_month(t.div_euclid(86_400));
            y * 12 + m
        };
        by_period(self.daily, &day);
        by_period(self.weekly, &week);
        by_period(self.monthly, &month);
        keep
    }
}

/// (year, month) of a day number since 1970-01-01 (proleptic Gregorian).
fn civil_month(days: i64) -> (i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m)
}

/// The point of `points` named `name`: its full name, or its sequence
/// number (`7` or `000007`).
pub fn find_point<'a>(points: &'a [PointRow], name: &str, machine: &str) -> Result<&'a PointRow> {
    let by_seq = name.parse::<i64>().ok();
    points.iter().find(|p| p.name() == name || Some(p.seq) == by_seq).ok_or_else(|| {
        Error::Input(format!(
            "machine {machine} has no restore point {name}; `cbtfs list REPO {machine}` shows its points"
        ))
    })
}

pub fn is_protected(idx: &Index, point: PointId) -> Result<bool> {
    Ok(idx.conn().query_row("SELECT protected FROM points WHERE id = ?1", [point], |r| r.get::<_, i64>(0))? != 0)
}

pub fn set_protected(idx: &Index, point: PointId, on: bool) -> Result<()> {
    idx.conn().execute("UPDATE points SET protected = ?1 WHERE id = ?2", params![on as i64, point])?;
    Ok(())
}

/// What a forget removed.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Forgotten {
    pub points: Vec<String>,
    pub versions_removed: u64,
}

/// Forgets `points` (all of machine `machine`) in the caller's
/// transaction. Refuses protected points.
pub fn forget(idx: &Index, machine: MachineId, points: &[PointRow]) -> Result<Forgotten> {
    for p in points {
        if is_protected(idx, p.id)? {
            return Err(Error::Input(format!(
                "restore point {} is protected; `cbtfs protect --off` it first to forget it",
                p.name()
            )));
        }
    }
    let conn = idx.conn();
    // Lineages the forgotten points used.
    let mut lineages: BTreeSet<i64> = BTreeSet::new();
    for p in points {
        for d in idx.point_disks(p.id)? {
            lineages.insert(d.lineage.0);
        }
        conn.execute("DELETE FROM point_disks WHERE point_id = ?1", [p.id])?;
        conn.execute("DELETE FROM points WHERE id = ?1", [p.id])?;
    }
    let mut removed = 0u64;
    for l in lineages {
        removed += prune_versions(idx, machine, LineageId(l))?;
    }
    Ok(Forgotten { points: points.iter().map(PointRow::name).collect(), versions_removed: removed })
}

/// Deletes the versions of `lineage` that no remaining point sees; with no
/// point left, the lineage itself.
fn prune_versions(idx: &Index, machine: MachineId, lineage: LineageId) -> Result<u64> {
    let conn = idx.conn();
    conn.execute_batch("CREATE TEMP TABLE IF NOT EXISTS kept_seqs(seq INTEGER PRIMARY KEY); DELETE FROM kept_seqs;")?;
    conn.execute(
        "INSERT INTO kept_seqs(seq)
           SELECT p.seq FROM points p JOIN point_disks d ON d.point_id = p.id
           WHERE p.machine_id = ?1 AND d.lineage_id = ?2",
        params![machine, lineage],
    )?;
    let n = conn.execute(
        "DELETE FROM block_versions
         WHERE lineage_id = ?1 AND (block_no, seq) IN (
           SELECT block_no, seq FROM (
             SELECT block_no, seq, lead(seq) OVER (PARTITION BY block_no ORDER BY seq) AS next
             FROM block_versions WHERE lineage_id = ?1) v
           WHERE NOT EXISTS (
             SELECT 1 FROM kept_seqs k WHERE k.seq >= v.seq AND (v.next IS NULL OR k.seq < v.next)))",
        [lineage],
    )? as u64;
    let used: bool = conn.query_row("SELECT EXISTS (SELECT 1 FROM kept_seqs)", [], |r| r.get(0))?;
    if !used {
        conn.execute("DELETE FROM lineages WHERE id = ?1", [lineage])?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{MachineId, PointId};

    fn pt(seq: i64, created: i64) -> PointRow {
        PointRow { id: PointId(seq), machine: MachineId(1), seq, created, checkpoint: None }
    }

    #[test]
    fn months_and_weeks() {
        assert_eq!(civil_month(0), (1970, 1));
        assert_eq!(civil_month(59), (1970, 3)); // 1970-03-01
        assert_eq!(civil_month(19_723), (2024, 1)); // 2024-01-01
        assert_eq!(civil_month(19_782), (2024, 2)); // 2024-02-29
    }

    #[test]
    fn keep_policies() {
        let h = 3600;
        let d = 86_400;
        // Points every 12 hours over 40 days.
        let points: Vec<PointRow> = (0..80).map(|i| pt(i + 1, 19_723 * d + i * 12 * h)).collect();
        let keep = |p: Policy| p.keep(&points);
        assert_eq!(keep(Policy { last: 3, ..Policy::default() }), BTreeSet::from([77, 78, 79]));
        // Daily 5: the newest point of each of the last 5 days.
        let daily = keep(Policy { daily: 5, ..Policy::default() });
        assert_eq!(daily, BTreeSet::from([71, 73, 75, 77, 79]));
        let monthly = keep(Policy { monthly: 2, ..Policy::default() });
        // 2024-01 ends at point index 61 (day 30, 12:00); Feb is the newest.
        assert_eq!(monthly, BTreeSet::from([61, 79]));
        assert!(keep(Policy::default()).is_empty());
        let weekly = keep(Policy { weekly: 2, ..Policy::default() });
        assert_eq!(weekly.len(), 2);
        assert!(weekly.contains(&79));
    }
}
