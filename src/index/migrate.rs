//! Schema migrations built from `schema/NNNN_*.sql`, tracked by
//! `PRAGMA user_version` and applied in one exclusive transaction, so two
//! processes opening an old repository at once cannot both migrate it.

use rusqlite::{Connection, TransactionBehavior};

/// Every migration in order; entry i brings the schema to version i + 1.
/// Append only.
pub const MIGRATIONS: &[&str] =
    &[
        include_str!("../../schema/0001_init.sql"),
        include_str!("../../schema/0002_bitmap_kind.sql"),
        include_str!("../../schema/0003_protected_points.sql"),
        include_str!("../../schema/0004_data_blocks.sql"),
    ];

/// Schema version this build writes and understands.
pub fn latest_version() -> u32 {
    MIGRATIONS.len() as u32
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("the repository index has schema version {found}, newer than this cbtfs understands ({known}); upgrade cbtfs")]
    TooNew { found: u32, known: u32 },
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
}

/// Brings the schema up to date. Harmless when already current.
pub fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
    let current: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current == latest_version() {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    // Re-read under the lock: another process may have migrated meanwhile.
    let current: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > latest_version() {
        return Err(MigrateError::TooNew { found: current, known: latest_version() });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as u32)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrating_twice_is_harmless() {
        let mut c = Connection::open_in_memory().unwrap();
        migrate(&mut c).unwrap();
        c.execute("INSERT INTO machines(name) VALUES ('vm1')", []).unwrap();
        migrate(&mut c).unwrap();
        let v: u32 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, latest_version());
        let n: i64 = c.query_row("SELECT count(*) FROM machines", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1, "a second migration must not touch data");
    }

    /// A version-1 index with data, migrated: rows kept, and the new kind
    /// accepted where version 1 refused it.
    #[test]
    fn version_1_index_migrates_with_its_rows() {
        let mut c = Connection::open_in_memory().unwrap();
        c.execute_batch(MIGRATIONS[0]).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        c.execute_batch(
            "INSERT INTO machines(id, name) VALUES (1, 'vm1');
             INSERT INTO points(id, machine_id, seq, created, checkpoint) VALUES (1, 1, 1, 0, 'c1');
             INSERT INTO lineages(id, machine_id, disk_name) VALUES (1, 1, 'sda');
             INSERT INTO point_disks(point_id, name, lineage_id, size, kind, reason, blocks_read, blocks_stored, bytes_stored)
                 VALUES (1, 'sda', 1, 4096, 'scan', 'no map', 1, 1, 100);",
        )
        .unwrap();
        let bitmap_row = "INSERT INTO point_disks(point_id, name, lineage_id, size, kind, reason, blocks_read, blocks_stored, bytes_stored)
                          VALUES (1, 'sdb', 1, 4096, 'bitmap', NULL, 1, 1, 100)";
        assert!(c.execute(bitmap_row, []).is_err(), "version 1 refuses kind bitmap");
        migrate(&mut c).unwrap();
        let (kind, reason): (String, String) =
            c.query_row("SELECT kind, reason FROM point_disks WHERE name = 'sda'", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert_eq!((kind.as_str(), reason.as_str()), ("scan", "no map"));
        c.execute(bitmap_row, []).unwrap();
        let last_seq: i64 = c.query_row("SELECT last_seq FROM machines WHERE id = 1", [], |r| r.get(0)).unwrap();
        assert_eq!(last_seq, 1, "version 3 fills in each machine's highest point number");
        assert!(c.execute(&bitmap_row.replace("'bitmap'", "'other'").replace("'sdb'", "'sdc'"), []).is_err());
    }

    #[test]
    fn newer_schema_is_refused() {
        let mut c = Connection::open_in_memory().unwrap();
        c.pragma_update(None, "user_version", latest_version() + 1).unwrap();
        assert!(matches!(migrate(&mut c), Err(MigrateError::TooNew { .. })));
    }
}
