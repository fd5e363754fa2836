//! `gc`: reclaims the space of blocks no restore point uses any more.
//!
//! Blocks without versions are dropped from the index; packs holding any
//! garbage above a threshold share are rewritten: their live frames are
//! checked and copied, unchanged, into new packs, and the old packs go.
//! Crash safety follows ingest's: the new packs are fsynced before the one
//! index transaction that moves the blocks to them and drops the old packs'
//! rows; old pack files are deleted only after that commit. Killed before
//! the commit, the new packs are leftovers; killed after it, the old ones
//! are; the next writer deletes either. Every point reads the same bytes
//! at every moment. gc also cuts the bytes a killed ingest appended past
//! any pack's committed length: an ingest does so only for the newest
//! pack, the one it appends to, and once a newer pack exists nothing else
//! would.

use crate::error::{Error, Result};
use crate::format::{FRAME_HEADER_LEN, PACK_HEADER_LEN};
use crate::ids::PackId;
use crate::pack::writer::SealedPack;
use crate::pack::{FrameLoc, PackReader, PackWriter, pack_path};
use crate::repo::{Repo, WriterLock, now_unix};

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GcReport {
    /// Blocks no point used, dropped from the index.
    pub blocks_removed: u64,
    /// Bytes of packs holding no live block or rewritten.
    pub packs_removed: u64,
    pub packs_written: u64,
    /// Garbage in packs before: bytes of frames no point uses.
    pub garbage_bytes: u64,
    /// Pack bytes freed (removed minus written).
    pub bytes_reclaimed: u64,
    /// Garbage left in packs below the threshold.
    pub garbage_kept: u64,
    /// What interrupted ingests left, removed (or, in a dry run, to be
    /// removed): pack files the index does not know, and bytes past packs'
    /// committed ends.
    pub leftover_bytes: u64,
}

struct PackUse {
    id: PackId,
    size: u64,
    live: u64,
}

/// Collects garbage; packs whose garbage is at least `threshold` (0.0 to
/// 1.0) of their frame bytes are rewritten. `dry_run` only reports.
/// `progress` is called with (pack bytes done, pack bytes to rewrite).
pub fn gc(
    repo: &Repo,
    lock: &WriterLock,
    threshold: f64,
    dry_run: bool,
    mut progress: impl FnMut(u64, u64),
) -> Result<GcReport> {
    let leftover_bytes = repo.orphan_packs(lock, !dry_run)? + repo.uncommitted_tails(lock, !dry_run)?;
    let repo_path = repo.path.clone();
    let pack_size = repo.pack_size;
    let conn = repo.index.conn();
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let res = (|| -> Result<(GcReport, Vec<SealedPack>, Vec<PackId>)> {
        let blocks_removed = conn.execute(
            "DELETE FROM blocks WHERE id NOT IN (SELECT block_id FROM block_versions WHERE block_id IS NOT NULL)",
            [],
        )? as u64;
        let mut report = GcReport { blocks_removed, leftover_bytes, ..GcReport::default() };
        let uses: Vec<PackUse> = {
            let mut st = conn.prepare(
                "SELECT p.id, p.size, coalesce(sum(b.stored_len + ?1), 0) FROM packs p
                 LEFT JOIN blocks b ON b.pack_id = p.id GROUP BY p.id ORDER BY p.id",
            )?;
            let rows = st.query_map([FRAME_HEADER_LEN as i64], |r| {
                Ok(PackUse { id: r.get(0)?, size: r.get::<_, i64>(1)? as u64, live: r.get::<_, i64>(2)? as u64 })
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut rewrite = Vec::new();
        for u in &uses {
            let frames = u.size.saturating_sub(PACK_HEADER_LEN as u64);
            let garbage = frames.saturating_sub(u.live);
            report.garbage_bytes += garbage;
            if garbage > 0 && (u.live == 0 || garbage as f64 >= threshold * frames as f64) {
                rewrite.push((u.id, u.size));
                report.packs_removed += 1;
                report.bytes_reclaimed += u.size;
            } else {
                report.garbage_kept += garbage;
            }
        }
        if dry_run || rewrite.is_empty() {
            return Ok((report, Vec::new(), Vec::new()));
        }
        let total: u64 = rewrite.iter().map(|&(_, size)| size).sum();
        let mut done = 0u64;
        log::info!("rewriting {} packs ({total} bytes)", rewrite.len());
        // Copy live frames, in pack order, into new packs.
        let reader = PackReader::new(&repo_path);
        let mut next = repo.index.next_pack_id()?;
        let mut writer: Option<PackWriter> = None;
        let mut sealed = Vec::new();
        let now = now_unix();
        let seal = |w: PackWriter, sealed: &mut Vec<SealedPack>| -> Result<()> {
            let id = w.id();
            let s = w.seal().map_err(|e| Error::io(format!("cannot sync pack {}", id.0), e))?;
            conn.execute("UPDATE packs SET size = ?1 WHERE id = ?2", rusqlite::params![s.len as i64, id])?;
            sealed.push(s);
            Ok(())
        };
        for &(old, old_size) in &rewrite {
            let live: Vec<(i64, FrameLoc, crate::ids::Digest)> = {
                let mut st = conn.prepare(
                    "SELECT id, offset, stored_len, raw_len, digest FROM blocks WHERE pack_id = ?1 ORDER BY offset",
                )?;
                let rows = st.query_map([old], |r| {
                    Ok((
                        r.get(0)?,
                        FrameLoc {
                            pack: old,
                            offset: r.get::<_, i64>(1)? as u64,
                            stored_len: r.get::<_, i64>(2)? as u32,
                            raw_len: r.get::<_, i64>(3)? as u32,
                        },
                        r.get(4)?,
                    ))
                })?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            for (block, loc, digest) in live {
                // Copied only once checked: gc must not spread damage.
                let frame = reader.read_frame_checked(&loc, &digest)?;
                if writer.as_ref().is_some_and(|w| w.len() >= pack_size)
                    && let Some(w) = writer.take()
                {
                    seal(w, &mut sealed)?;
                }
                if writer.is_none() {
                    let id = next;
                    next = PackId(id.0 + 1);
                    let w = PackWriter::create(&repo_path, id)
                        .map_err(|e| Error::io(format!("cannot create pack {}", pack_path(&repo_path, id).display()), e))?;
                    repo.index.insert_pack(id, PACK_HEADER_LEN as u64, now)?;
                    writer = Some(w);
                    report.packs_written += 1;
                }
                let w = writer.as_mut().unwrap();
                let at = w.append(frame).map_err(|e| Error::io(format!("cannot write pack {}", w.id().0), e))?;
                conn.execute(
                    "UPDATE blocks SET pack_id = ?1, offset = ?2 WHERE id = ?3",
                    rusqlite::params![w.id(), at as i64, block],
                )?;
            }
            conn.execute("DELETE FROM packs WHERE id = ?1", [old])?;
            done += old_size;
            progress(done, total);
        }
        if let Some(w) = writer.take() {
            seal(w, &mut sealed)?;
        }
        for s in &sealed {
            report.bytes_reclaimed = report.bytes_reclaimed.saturating_sub(s.len);
        }
        Ok((report, sealed, rewrite.into_iter().map(|(id, _)| id).collect()))
    })();
    match res {
        Ok((report, sealed, old)) => {
            let committed = conn.execute_batch(if dry_run { "ROLLBACK" } else { "COMMIT" });
            for s in sealed {
                s.publish();
            }
            committed?;
            // The old packs are unreferenced now; a failure here leaves
            // leftovers the next writer removes.
            for id in old {
                let path = pack_path(&repo_path, id);
                if let Err(e) = std::fs::remove_file(&path) {
                    log::warn!("cannot remove {}: {e}; the next writer will", path.display());
                }
            }
            let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
            Ok(report)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}
