//! `verify`: re-reads every stored block, checks frame, checksum and
//! digest, and names the restore points a damaged block belongs to.

use rayon::prelude::*;

use crate::error::Result;
use crate::index::BlockRow;
use crate::pack::PackReader;
use crate::pack::reader::ReadError;
use crate::repo::Repo;

#[derive(Debug, Clone, serde::Serialize)]
pub struct UsedBy {
    pub machine: String,
    pub point: String,
    pub disk: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Damage {
    pub pack: String,
    pub offset: u64,
    pub error: String,
    pub used_by: Vec<UsedBy>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub blocks_checked: u64,
    pub bytes_checked: u64,
    pub index_ok: bool,
    pub index_problems: Vec<String>,
    pub damaged: Vec<Damage>,
    /// Pack files the index does not reference: leftovers of an
    /// interrupted ingest (or the pack of one running now). Harmless; the
    /// next ingest removes them. Not damage.
    pub leftover_packs: Vec<String>,
    /// Packs longer than the index records: the uncommitted appends of an
    /// interrupted ingest. Harmless; the next ingest that appends to the
    /// pack cuts them off, and gc does for every pack. Not damage.
    pub uncommitted_tails: Vec<PackTail>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PackTail {
    pub pack: String,
    /// Bytes past the committed length.
    pub bytes: u64,
}

/// Checks the index and every stored block; `progress` is called with
/// (bytes checked, bytes to check) as it goes.
pub fn verify(repo: &Repo, mut progress: impl FnMut(u64, u64)) -> Result<VerifyReport> {
    let idx = &repo.index;
    let problems: Vec<String> = {
        let mut st = idx.conn().prepare("PRAGMA quick_check")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?.into_iter().filter(|s| s != "ok").collect()
    };
    let fk_problems: i64 = idx.conn().query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| r.get(0))?;
    let mut index_problems = problems;
    if fk_problems > 0 {
        index_problems.push(format!("{fk_problems} rows reference missing rows"));
    }
    // The mount reports these counts as allocated sizes, and some copy
    // tools skip a file allocated as empty: a wrong one is index damage.
    for m in idx.data_block_mismatches()? {
        index_problems.push(format!(
            "{}/{}/{}: the index records {} blocks with data, its versions hold {} (only the allocated size the mount reports is wrong)",
            m.machine,
            m.point.name(),
            m.disk,
            m.recorded,
            m.counted
        ));
    }

    let (total, total_bytes) = idx.block_totals()?;
    log::info!("checking {total} blocks ({total_bytes} bytes stored)");
    let reader = PackReader::new(&repo.path);
    let mut bad: Vec<(BlockRow, String)> = Vec::new();
    let (mut bytes, mut checked) = (0u64, 0u64);
    // A page of blocks at a time, checked on all cores: memory stays
    // bounded, and progress is reported as it goes.
    let mut after = None;
    loop {
        let page = idx.blocks_after(after.as_ref(), 1024)?;
        let Some(last) = page.last() else { break };
        after = Some(last.clone());
        // Every block is one block long: a frame that holds another
        // length, however sound, would be read from the wrong place.
        let block_size = repo.block_size;
        let results: Vec<Option<String>> = page
            .par_iter()
            .map(|b| match b.loc.raw_len {
                n if n != block_size => Some(format!("holds {n} bytes, but the repository's blocks are {block_size} bytes")),
                // What is wrong only: the report names the pack and offset.
                _ => reader.read_block_verified(&b.loc, &b.digest).err().map(|e| match e {
                    ReadError::Damaged { source, .. } => source.to_string(),
                    ReadError::Io { source, .. } => format!("cannot read: {source}"),
                }),
            })
            .collect();
        for (b, r) in page.into_iter().zip(results) {
            bytes += b.loc.stored_len as u64;
            checked += 1;
            if let Some(e) = r {
                bad.push((b, e));
            }
        }
        progress(bytes, total_bytes.max(bytes));
    }
    let mut damaged = Vec::new();
    for (b, error) in bad {
        let used_by = idx
            .users_of_block(b.id)?
            .into_iter()
            .map(|(machine, p, disk)| UsedBy { machine, point: p.name(), disk })
            .collect();
        damaged.push(Damage { pack: crate::pack::pack_file_name(b.loc.pack), offset: b.loc.offset, error, used_by });
    }
    let index_ok = index_problems.is_empty();
    let leftover_packs = repo.unreferenced_packs()?.into_iter().map(|(name, _)| name).collect();
    let mut uncommitted_tails = Vec::new();
    for (id, committed) in idx.pack_sizes()? {
        // A missing or short pack shows as damage of its blocks above.
        if let Ok(m) = std::fs::metadata(crate::pack::pack_path(&repo.path, id))
            && m.len() > committed
        {
            uncommitted_tails.push(PackTail { pack: crate::pack::pack_file_name(id), bytes: m.len() - committed });
        }
    }
    Ok(VerifyReport {
        ok: damaged.is_empty() && index_ok,
        blocks_checked: checked,
        bytes_checked: bytes,
        index_ok,
        index_problems,
        damaged,
        leftover_packs,
        uncommitted_tails,
    })
}
