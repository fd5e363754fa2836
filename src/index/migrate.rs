//! Schema migrations built from `schema/NNNN_*.sql`, tracked by
//! `PRAGMA user_version` and applied in one exclusive transaction, so two
//! processes opening an old repository at once cannot both migrate it.

use rusqlite::{Connection, TransactionBehavior};

/// Every migration in order; entry i brings the schema to version i + 1.
/// Append only.
pub const MIGRATIONS: &[&str] = &[include_str!("../../schema/0001_init.sql")];

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

    #[test]
    fn newer_schema_is_refused() {
        let mut c = Connection::open_in_memory().unwrap();
        c.pragma_update(None, "user_version", latest_version() + 1).unwrap();
        assert!(matches!(migrate(&mut c), Err(MigrateError::TooNew { .. })));
    }
}
