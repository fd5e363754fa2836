//! The SQLite block index: open with pragmas, migrate, typed queries.
//!
//! Concurrency: one writer at a time (the ingest holding the repository
//! lock, see `repo.rs`); any number of readers (mounts, list, verify). WAL
//! mode lets readers see the last committed state while an ingest runs;
//! an ingest is one transaction, so readers never see half of one.
//!
//! Lookup cost: the content of block N of a disk at point S is the row of
//! `block_versions` with key (lineage, N, greatest seq <= S): one B-tree
//! seek, O(log of all versions), the same at chain depth 1 and 1000.

pub mod migrate;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::ids::{BlockId, BlockNo, Digest, LineageId, MachineId, PackId, PointDiskId, PointId};
use crate::pack::FrameLoc;

/// The latest version at or before ?4 of each block in ?2..?3 of lineage
/// ?1 that has any: (block, seq, block id or NULL for zeros), in block
/// order. SQLite's bare-column rule: with max(seq), the other columns come
/// from the row holding the maximum. The primary key's order serves the
/// grouping, so rows stream and a caller may stop early.
const LATEST_IN_RANGE: &str = "SELECT block_no, max(seq), block_id FROM block_versions
     WHERE lineage_id = ?1 AND block_no >= ?2 AND block_no < ?3 AND seq <= ?4
     GROUP BY block_no ORDER BY block_no";

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{0} is not a cbtfs repository (no {idx}); create one with `cbtfs init`", idx = crate::format::INDEX_FILE)]
    NotARepo(PathBuf),
    #[error("cannot open the repository index {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("cannot create the repository index {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("the repository index {path} is damaged: {what}")]
    BadMeta { path: PathBuf, what: String },
    #[error("repository {0} cannot be written here and its index has changes not yet folded in (index.sqlite-wal) without the file needed to read them (index.sqlite-shm); open it once where it can be written (e.g. with `cbtfs list`), or copy it to writable storage")]
    ReadOnlyWithLog(PathBuf),
    #[error("repository {0} can be changed by others but not by this user, and reading it alongside them needs index.sqlite-wal and index.sqlite-shm, which only they can create; run this as a user who can write the repository, have one run `cbtfs list {0}` once, or work on a copy")]
    NotShared(PathBuf),
    #[error("the index {path} has schema version {found} and needs an upgrade to {known}, which needs write access; open it once where it can be written")]
    ReadOnlyOld { path: PathBuf, found: u32, known: u32 },
    #[error(transparent)]
    Migrate(#[from] migrate::MigrateError),
    #[error("repository index: {0}")]
    Sql(#[from] rusqlite::Error),
}

pub type Result<T> = std::result::Result<T, IndexError>;

/// A restore point row.
#[derive(Debug, Clone)]
pub struct PointRow {
    pub id: PointId,
    pub machine: MachineId,
    pub seq: i64,
    pub created: i64,
    pub checkpoint: Option<String>,
}

impl PointRow {
    /// Folder name in the mount and in `list`: zero-padded seq, then UTC
    /// creation time, so plain byte order is creation order.
    pub fn name(&self) -> String {
        crate::names::point_name(self.seq, self.created)
    }
}

/// A disk of a restore point.
#[derive(Debug, Clone)]
pub struct PointDiskRow {
    pub id: PointDiskId,
    pub point: PointId,
    pub name: String,
    pub lineage: LineageId,
    pub size: u64,
    pub kind: String,
    pub reason: Option<String>,
    pub blocks_read: u64,
    pub blocks_stored: u64,
    pub bytes_stored: u64,
    /// Blocks that hold data at this point (the others read as zeros);
    /// `None` for disks recorded before the index kept the count.
    pub data_blocks: Option<u64>,
}

/// A disk whose recorded count of blocks with data is not what its
/// versions hold.
#[derive(Debug)]
pub struct CountMismatch {
    pub machine: String,
    pub point: PointRow,
    pub disk: String,
    pub recorded: u64,
    pub counted: u64,
}

/// A stored block, for verify.
#[derive(Debug, Clone)]
pub struct BlockRow {
    pub id: BlockId,
    pub digest: Digest,
    pub loc: FrameLoc,
}

pub struct Index {
    conn: Connection,
    path: PathBuf,
}

/// Log size past which an ingest folds the log into the index as it ends
/// ([`Index::fold_large_log`]); well below the 1000 pages at which SQLite
/// folds it on its own, which would leave the file at that size.
pub const LOG_FOLD_BYTES: u64 = 1 << 20;

/// The name an index is built under by [`Index::create`].
pub const INDEX_BUILDING: &str = "index.sqlite.init";

/// Removes what an interrupted [`Index::create`] left in `repo`: the
/// index being built and SQLite's files beside it.
fn remove_building(repo: &Path) -> std::io::Result<()> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        match std::fs::remove_file(repo.join(format!("{INDEX_BUILDING}{suffix}"))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// SQLite's log of the index at `index` and the log's shared-memory file.
fn log_files(index: &Path) -> [PathBuf; 2] {
    ["-wal", "-shm"].map(|suffix| {
        let mut p = index.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    })
}

fn set_pragmas(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a committed ingest survives power loss, not only a crash.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

impl Index {
    /// Creates the index of a new repository. Fails if it exists.
    ///
    /// The index is built whole under a temporary name and then renamed
    /// into place, so `init` killed at any moment leaves no index at all,
    /// never one without its settings: the directory is not a repository
    /// yet, and `init` run again starts over (see `Repo::init`).
    pub fn create(repo: &Path, block_size: u32, pack_size: u64, now: i64) -> Result<Index> {
        let path = repo.join(crate::format::INDEX_FILE);
        let tmp = repo.join(INDEX_BUILDING);
        let open = |e| IndexError::Open { path: path.clone(), source: e };
        let io = |source| IndexError::Create { path: path.clone(), source };
        if path.exists() {
            return Err(io(std::io::Error::from(std::io::ErrorKind::AlreadyExists)));
        }
        // What an interrupted create left.
        remove_building(repo).map_err(io)?;
        {
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
            let mut conn = Connection::open_with_flags(&tmp, flags).map_err(open)?;
            set_pragmas(&conn).map_err(open)?;
            migrate::migrate(&mut conn)?;
            let tx = conn.transaction()?;
            for (k, v) in [
                ("format_version", crate::format::REPO_FORMAT_VERSION.to_string()),
                ("block_size", block_size.to_string()),
                ("pack_size", pack_size.to_string()),
                ("created", now.to_string()),
            ] {
                tx.execute("INSERT INTO repo_meta(key, value) VALUES (?1, ?2)", params![k, v])?;
            }
            tx.commit()?;
            // Closing the only connection folds the log into the file.
            conn.close().map_err(|(_, e)| open(e))?;
        }
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(repo).and_then(|d| d.sync_all()).map_err(io)?;
        Index::open_read_write(path)
    }

    /// Opens the index of an existing repository, migrating it if needed.
    /// A repository this process cannot write to (a backup disk attached
    /// read-only, a read-only snapshot or export: the usual state of
    /// things during a restore) is opened read-only; see
    /// [`Index::open_read_only`].
    pub fn open(repo: &Path) -> Result<Index> {
        let path = repo.join(crate::format::INDEX_FILE);
        if !path.is_file() {
            return Err(IndexError::NotARepo(repo.to_path_buf()));
        }
        let idx = match nix::unistd::access(repo, nix::unistd::AccessFlags::W_OK) {
            Ok(()) => Index::open_read_write(path)?,
            Err(e) => Index::open_read_only(repo, path, e == nix::errno::Errno::EROFS)?,
        };
        let fv: u32 = idx.meta_u64("format_version")? as u32;
        if fv > crate::format::REPO_FORMAT_VERSION {
            return Err(IndexError::BadMeta {
                path: idx.path.clone(),
                what: format!("format version {fv} is newer than this cbtfs supports; upgrade cbtfs"),
            });
        }
        Ok(idx)
    }

    fn open_read_write(path: PathBuf) -> Result<Index> {
        let open = |e| IndexError::Open { path: path.clone(), source: e };
        let mut conn =
            Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(open)?;
        set_pragmas(&conn).map_err(open)?;
        // Leave the log and its shared-memory file in place when the last
        // connection closes, instead of folding the log in and deleting
        // both: a user who may read the repository but not write it can
        // follow a writer only through them (see `open_read_only`).
        // Forget and gc fold the log in as they finish, ingests once it
        // passes `LOG_FOLD_BYTES`, so it stays small.
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true).map_err(open)?;
        migrate::migrate(&mut conn)?;
        Ok(Index { conn, path })
    }

    /// Opens the index for a process that cannot write the repository.
    ///
    /// Others may still write it: the repository's owner while another
    /// user mounts it, or this machine through another, writable, mount of
    /// the same file system. So the index is first opened as SQLite's
    /// read-only reader, which follows commits through the log and keeps
    /// writers from folding the log into pages it is reading. That needs
    /// the log and its shared-memory file to exist, since this process
    /// cannot create them; writers leave both behind (see
    /// `open_read_write`). SQLite's log needs shared memory that all its
    /// users see, so none of this works across machines (network file
    /// systems).
    ///
    /// Without them, an index on storage nobody can write
    /// (`read_only_storage`: a backup disk attached read-only, a read-only
    /// snapshot) cannot change, and is opened as immutable: no locks, no
    /// log. That would hide commits still in the log, so a non-empty log
    /// is refused, not ignored. Anywhere else, an immutable reader would
    /// keep pages a writer has since replaced and read blocks from the
    /// wrong places, so opening is refused with what to do.
    fn open_read_only(repo: &Path, path: PathBuf, read_only_storage: bool) -> Result<Index> {
        let open = |e| IndexError::Open { path: path.clone(), source: e };
        let log_files = log_files(&path);
        match Index::open_read_only_with(&path, "mode=ro") {
            Ok(conn) => return Index::checked_read_only(conn, path),
            // Another reason (no read permission, a damaged file) is
            // reported as it is.
            Err(e) if log_files.iter().all(|f| f.exists()) => return Err(open(e)),
            Err(e) if !read_only_storage => {
                log::debug!("cannot open {} as a read-only reader of its log: {e}", path.display());
                return Err(IndexError::NotShared(repo.to_path_buf()));
            }
            Err(e) => log::debug!("{}: no log to follow ({e}); nothing can change it here", path.display()),
        }
        let [wal, _] = &log_files;
        if std::fs::metadata(wal).is_ok_and(|m| m.len() > 0) {
            return Err(IndexError::ReadOnlyWithLog(repo.to_path_buf()));
        }
        let conn = Index::open_read_only_with(&path, "immutable=1").map_err(open)?;
        Index::checked_read_only(conn, path)
    }

    /// A read-only connection to `path` with the URI parameter `param`,
    /// once it has read the schema version: SQLite opens lazily, so a
    /// reader that cannot work fails only at its first read.
    fn open_read_only_with(path: &Path, param: &str) -> rusqlite::Result<Connection> {
        // A URI, with the characters URIs give a meaning escaped.
        let mut uri = String::from("file:");
        for c in path.to_string_lossy().chars() {
            match c {
                '%' => uri.push_str("%25"),
                '?' => uri.push_str("%3f"),
                '#' => uri.push_str("%23"),
                c => uri.push(c),
            }
        }
        uri.push('?');
        uri.push_str(param);
        let conn = Connection::open_with_flags(&uri, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI)?;
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, u32>(0))?;
        Ok(conn)
    }

    /// Refuses a read-only index whose schema this cbtfs does not match:
    /// an older one needs its upgrade, which needs write access.
    fn checked_read_only(conn: Connection, path: PathBuf) -> Result<Index> {
        let open = |e| IndexError::Open { path: path.clone(), source: e };
        let version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(open)?;
        if version < migrate::latest_version() {
            return Err(IndexError::ReadOnlyOld { path, found: version, known: migrate::latest_version() });
        }
        if version > migrate::latest_version() {
            return Err(migrate::MigrateError::TooNew { found: version, known: migrate::latest_version() }.into());
        }
        Ok(Index { conn, path })
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Folds the log into the index and empties it, once it holds more
    /// than [`LOG_FOLD_BYTES`]. Best effort: readers may keep part of it
    /// busy, and the next writer tries again.
    ///
    /// Folding costs a writer two fsyncs, and SQLite starting the
    /// emptied log again at the next commit one more: half of the six
    /// fsyncs a small incremental did. A large log (after a full ingest)
    /// is folded, since SQLite would reuse it but never shrink it while
    /// mounts hold the index open.
    pub fn fold_large_log(&self) {
        let [log, _] = log_files(&self.path);
        if std::fs::metadata(&log).is_ok_and(|m| m.len() > LOG_FOLD_BYTES) {
            let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
        }
    }

    pub fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    fn meta_u64(&self, key: &str) -> Result<u64> {
        let v: Option<String> = self
            .conn
            .query_row("SELECT value FROM repo_meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?;
        v.and_then(|s| s.parse().ok()).ok_or_else(|| IndexError::BadMeta {
            path: self.path.clone(),
            what: format!("missing or invalid setting {key}"),
        })
    }

    /// The repository's block size; anything `init` could not have set
    /// is damage (a wrong size would read every block from the wrong
    /// place).
    pub fn block_size(&self) -> Result<u32> {
        let v = self.meta_u64("block_size")?;
        let (min, max) = (crate::format::MIN_BLOCK_SIZE as u64, crate::format::MAX_BLOCK_SIZE as u64);
        if !v.is_power_of_two() || v < min || v > max {
            return Err(IndexError::BadMeta {
                path: self.path.clone(),
                what: format!("block size {v} is not a power of two from {min} to {max}"),
            });
        }
        Ok(v as u32)
    }

    /// Size at which a pack is closed and the next one started. Absent in
    /// repositories made before the setting existed: the default then.
    pub fn pack_size(&self) -> Result<u64> {
        let set: bool = self.conn.query_row("SELECT count(*) > 0 FROM repo_meta WHERE key = 'pack_size'", [], |r| r.get(0))?;
        if set { self.meta_u64("pack_size") } else { Ok(crate::format::DEFAULT_PACK_SIZE) }
    }

    // ---- machines and points -------------------------------------------

    pub fn machine_id(&self, name: &str) -> Result<Option<MachineId>> {
        Ok(self
            .conn
            .prepare_cached("SELECT id FROM machines WHERE name = ?1")?
            .query_row([name], |r| r.get(0))
            .optional()?)
    }

    pub fn machines(&self) -> Result<Vec<(MachineId, String)>> {
        let mut st = self.conn.prepare_cached("SELECT id, name FROM machines ORDER BY name")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn machine_name(&self, id: MachineId) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached("SELECT name FROM machines WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?)
    }

    pub fn insert_machine(&self, name: &str) -> Result<MachineId> {
        self.conn.prepare_cached("INSERT INTO machines(name) VALUES (?1)")?.execute([name])?;
        Ok(MachineId(self.conn.last_insert_rowid()))
    }

    fn point_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PointRow> {
        Ok(PointRow {
            id: r.get(0)?,
            machine: r.get(1)?,
            seq: r.get(2)?,
            created: r.get(3)?,
            checkpoint: r.get(4)?,
        })
    }

    /// Points of a machine, oldest first.
    pub fn points(&self, machine: MachineId) -> Result<Vec<PointRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, machine_id, seq, created, checkpoint FROM points
             WHERE machine_id = ?1 ORDER BY seq",
        )?;
        let rows = st.query_map([machine], Self::point_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn latest_point(&self, machine: MachineId) -> Result<Option<PointRow>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id, machine_id, seq, created, checkpoint FROM points
                 WHERE machine_id = ?1 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row([machine], Self::point_from_row)
            .optional()?)
    }

    pub fn point(&self, id: PointId) -> Result<Option<PointRow>> {
        Ok(self
            .conn
            .prepare_cached("SELECT id, machine_id, seq, created, checkpoint FROM points WHERE id = ?1")?
            .query_row([id], Self::point_from_row)
            .optional()?)
    }

    pub fn checkpoint_used(&self, machine: MachineId, checkpoint: &str) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM points WHERE machine_id = ?1 AND checkpoint = ?2")?
            .exists(params![machine, checkpoint])?)
    }

    pub fn insert_point(
        &self,
        machine: MachineId,
        seq: i64,
        created: i64,
        checkpoint: Option<&str>,
    ) -> Result<PointId> {
        self.conn
            .prepare_cached(
                "INSERT INTO points(machine_id, seq, created, checkpoint) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![machine, seq, created, checkpoint])?;
        let id = PointId(self.conn.last_insert_rowid());
        self.conn
            .prepare_cached("UPDATE machines SET last_seq = max(last_seq, ?2) WHERE id = ?1")?
            .execute(params![machine, seq])?;
        Ok(id)
    }

    /// The highest point sequence number `machine` ever had, forgotten
    /// points included: new points number on from it.
    pub fn last_seq(&self, machine: MachineId) -> Result<i64> {
        Ok(self.conn.prepare_cached("SELECT last_seq FROM machines WHERE id = ?1")?.query_row([machine], |r| r.get(0))?)
    }

    pub fn insert_lineage(&self, machine: MachineId, disk: &str) -> Result<LineageId> {
        self.conn
            .prepare_cached("INSERT INTO lineages(machine_id, disk_name) VALUES (?1, ?2)")?
            .execute(params![machine, disk])?;
        Ok(LineageId(self.conn.last_insert_rowid()))
    }

    fn disk_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PointDiskRow> {
        Ok(PointDiskRow {
            id: r.get(0)?,
            point: r.get(1)?,
            name: r.get(2)?,
            lineage: r.get(3)?,
            size: r.get::<_, i64>(4)? as u64,
            kind: r.get(5)?,
            reason: r.get(6)?,
            blocks_read: r.get::<_, i64>(7)? as u64,
            blocks_stored: r.get::<_, i64>(8)? as u64,
            bytes_stored: r.get::<_, i64>(9)? as u64,
            data_blocks: r.get::<_, Option<i64>>(10)?.map(|n| n as u64),
        })
    }

    const DISK_COLS: &'static str = "id, point_id, name, lineage_id, size, kind, reason,
        blocks_read, blocks_stored, bytes_stored, data_blocks";

    /// Disks of a point, by name.
    pub fn point_disks(&self, point: PointId) -> Result<Vec<PointDiskRow>> {
        let sql = format!(
            "SELECT {} FROM point_disks WHERE point_id = ?1 ORDER BY name",
            Self::DISK_COLS
        );
        let mut st = self.conn.prepare_cached(&sql)?;
        let rows = st.query_map([point], Self::disk_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn point_disk(&self, id: PointDiskId) -> Result<Option<PointDiskRow>> {
        let sql = format!("SELECT {} FROM point_disks WHERE id = ?1", Self::DISK_COLS);
        Ok(self.conn.prepare_cached(&sql)?.query_row([id], Self::disk_from_row).optional()?)
    }

    pub fn insert_point_disk(&self, d: &PointDiskRow) -> Result<PointDiskId> {
        self.conn
            .prepare_cached(
                "INSERT INTO point_disks(point_id, name, lineage_id, size, kind, reason,
                   blocks_read, blocks_stored, bytes_stored, data_blocks)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                d.point,
                d.name,
                d.lineage,
                d.size as i64,
                d.kind,
                d.reason,
                d.blocks_read as i64,
                d.blocks_stored as i64,
                d.bytes_stored as i64,
                d.data_blocks.map(|n| n as i64)
            ])?;
        Ok(PointDiskId(self.conn.last_insert_rowid()))
    }

    /// Records the count of a disk recorded before the index kept it.
    pub fn set_data_blocks(&self, id: PointDiskId, n: u64) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE point_disks SET data_blocks = ?1 WHERE id = ?2")?
            .execute(params![n as i64, id])?;
        Ok(())
    }

    // ---- blocks and versions -------------------------------------------

    pub fn find_block(&self, digest: &Digest) -> Result<Option<BlockId>> {
        Ok(self
            .conn
            .prepare_cached("SELECT id FROM blocks WHERE digest = ?1")?
            .query_row([digest], |r| r.get(0))
            .optional()?)
    }

    pub fn insert_block(&self, digest: &Digest, loc: &FrameLoc) -> Result<BlockId> {
        self.conn
            .prepare_cached(
                "INSERT INTO blocks(digest, pack_id, offset, stored_len, raw_len)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                digest,
                loc.pack,
                loc.offset as i64,
                loc.stored_len as i64,
                loc.raw_len as i64
            ])?;
        Ok(BlockId(self.conn.last_insert_rowid()))
    }

    /// Records the content of `block` of `lineage` as of point `seq`;
    /// `None` means all zeros.
    pub fn insert_version(
        &self,
        lineage: LineageId,
        block: BlockNo,
        seq: i64,
        id: Option<BlockId>,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO block_versions(lineage_id, block_no, seq, block_id)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![lineage, block, seq, id])?;
        Ok(())
    }

    /// Highest block number with any version in `lineage`, if any.
    pub fn last_block_no(&self, lineage: LineageId) -> Result<Option<BlockNo>> {
        Ok(self
            .conn
            .prepare_cached("SELECT max(block_no) FROM block_versions WHERE lineage_id = ?1")?
            .query_row([lineage], |r| r.get(0))?)
    }

    /// Latest version at or before `seq` of every block in `lo..hi` that has
    /// any version: (block, digest), digest `None` for an all-zero version.
    /// Blocks without a row are zero. Costs the number of versions in range.
    pub fn versions_in_range(
        &self,
        lineage: LineageId,
        seq: i64,
        lo: BlockNo,
        hi: BlockNo,
    ) -> Result<Vec<(BlockNo, Option<Digest>)>> {
        // SQLite's bare-column rule: with max(seq), the other columns come
        // from the row holding the maximum.
        let mut st = self.conn.prepare_cached(
            "SELECT v.block_no, max(v.seq), b.digest FROM block_versions v
             LEFT JOIN blocks b ON b.id = v.block_id
             WHERE v.lineage_id = ?1 AND v.block_no >= ?2 AND v.block_no < ?3 AND v.seq <= ?4
             GROUP BY v.block_no ORDER BY v.block_no",
        )?;
        let rows = st.query_map(params![lineage, lo, hi, seq], |r| Ok((r.get(0)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The first block in `from..end` of `lineage` at point `seq` that holds
    /// data, if any: where SEEK_DATA lands. Walks the versions from `from`
    /// in block order and stops at the first with data, so it costs the
    /// zero versions passed, never the size of the holes between rows.
    pub fn next_data_block(&self, lineage: LineageId, seq: i64, from: BlockNo, end: BlockNo) -> Result<Option<BlockNo>> {
        Ok(self.next_data_block_within(lineage, seq, from, end, usize::MAX)?.unwrap_or(None))
    }

    /// [`Index::next_data_block`], giving up (`None`) after `max_blocks`
    /// blocks with versions.
    pub fn next_data_block_within(
        &self,
        lineage: LineageId,
        seq: i64,
        from: BlockNo,
        end: BlockNo,
        max_blocks: usize,
    ) -> Result<Option<Option<BlockNo>>> {
        let mut st = self.conn.prepare_cached(LATEST_IN_RANGE)?;
        let mut rows = st.query(params![lineage, from, end, seq])?;
        let mut seen = 0;
        while let Some(r) = rows.next()? {
            if r.get::<_, Option<i64>>(2)?.is_some() {
                return Ok(Some(Some(r.get(0)?)));
            }
            seen += 1;
            if seen >= max_blocks {
                return Ok(None);
            }
        }
        Ok(Some(None))
    }

    /// The first block in `from..end` of `lineage` at point `seq` that is
    /// all zeros (never stored, or zeroed by a later point), if any: where
    /// SEEK_HOLE lands. Costs the blocks with data passed on the way.
    pub fn next_zero_block(&self, lineage: LineageId, seq: i64, from: BlockNo, end: BlockNo) -> Result<Option<BlockNo>> {
        let mut st = self.conn.prepare_cached(LATEST_IN_RANGE)?;
        let mut rows = st.query(params![lineage, from, end, seq])?;
        let mut expect = from.0;
        while let Some(r) = rows.next()? {
            let b: u64 = r.get(0)?;
            if b > expect || r.get::<_, Option<i64>>(2)?.is_none() {
                // A block without any version so far, or a zero version.
                return Ok(Some(BlockNo(expect.min(b))));
            }
            expect = b + 1;
        }
        Ok((expect < end.0).then_some(BlockNo(expect)))
    }

    /// Blocks of `lineage` that hold data at point `seq`. Costs every
    /// version up to `seq`; ingest keeps the count per point instead and
    /// needs this only for points recorded before it did.
    pub fn count_data_blocks(&self, lineage: LineageId, seq: i64) -> Result<u64> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT count(*) FROM
                   (SELECT max(seq), block_id FROM block_versions
                    WHERE lineage_id = ?1 AND seq <= ?2 GROUP BY block_no)
                 WHERE block_id IS NOT NULL",
            )?
            .query_row(params![lineage, seq], |r| r.get(0))?)
    }

    /// Disks whose recorded count of blocks with data (`data_blocks`)
    /// differs from what their versions hold, by machine, point and disk.
    /// For verify: one pass over all versions in key order, whatever the
    /// number of points. Each version with data counts for the points from
    /// its own up to the block's next version, added up over the points of
    /// its lineage in sequence order.
    pub fn data_block_mismatches(&self) -> Result<Vec<CountMismatch>> {
        use std::collections::HashMap;
        // Per lineage: its disks' point sequence numbers, in order, with
        // the disk rows; and a difference array over them.
        struct Lineage {
            seqs: Vec<i64>,
            disks: Vec<(PointDiskId, PointId, u64)>,
            diff: Vec<i64>,
        }
        let mut lineages: HashMap<LineageId, Lineage> = HashMap::new();
        {
            let mut st = self.conn.prepare(
                "SELECT d.lineage_id, p.seq, d.id, d.point_id, d.data_blocks FROM point_disks d
                 JOIN points p ON p.id = d.point_id WHERE d.data_blocks IS NOT NULL ORDER BY d.lineage_id, p.seq",
            )?;
            let rows = st.query_map([], |r| {
                Ok((r.get::<_, LineageId>(0)?, r.get::<_, i64>(1)?, r.get(2)?, r.get(3)?, r.get::<_, i64>(4)? as u64))
            })?;
            for row in rows {
                let (lineage, seq, disk, point, recorded) = row?;
                let l = lineages.entry(lineage).or_insert_with(|| Lineage { seqs: Vec::new(), disks: Vec::new(), diff: Vec::new() });
                l.seqs.push(seq);
                l.disks.push((disk, point, recorded));
            }
        }
        for l in lineages.values_mut() {
            l.diff = vec![0; l.seqs.len() + 1];
        }
        let mut st = self.conn.prepare(
            "SELECT lineage_id, block_no, seq, block_id IS NOT NULL FROM block_versions ORDER BY lineage_id, block_no, seq",
        )?;
        let mut rows = st.query([])?;
        // The version before the current row, of the same block: (lineage,
        // block, seq, holds data).
        let mut prev: Option<(LineageId, i64, i64, bool)> = None;
        let close = |lineages: &mut HashMap<LineageId, Lineage>, (lineage, _, from, data): (LineageId, i64, i64, bool), until: Option<i64>| {
            if let (true, Some(l)) = (data, lineages.get_mut(&lineage)) {
                let lo = l.seqs.partition_point(|&s| s < from);
                let hi = until.map_or(l.seqs.len(), |u| l.seqs.partition_point(|&s| s < u));
                l.diff[lo] += 1;
                l.diff[hi] -= 1;
            }
        };
        while let Some(r) = rows.next()? {
            let cur: (LineageId, i64, i64, bool) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            if let Some(p) = prev {
                let same_block = p.0 == cur.0 && p.1 == cur.1;
                close(&mut lineages, p, same_block.then_some(cur.2));
            }
            prev = Some(cur);
        }
        if let Some(p) = prev {
            close(&mut lineages, p, None);
        }
        let mut out = Vec::new();
        for l in lineages.values() {
            let mut counted = 0i64;
            for (i, &(disk, point, recorded)) in l.disks.iter().enumerate() {
                counted += l.diff[i];
                if counted as u64 != recorded {
                    let Some(d) = self.point_disk(disk)? else { continue };
                    let Some(p) = self.point(point)? else { continue };
                    let machine = self.machine_name(p.machine)?.unwrap_or_default();
                    out.push(CountMismatch { machine, point: p, disk: d.name, recorded, counted: counted as u64 });
                }
            }
        }
        out.sort_by(|a, b| (&a.machine, a.point.seq, &a.disk).cmp(&(&b.machine, b.point.seq, &b.disk)));
        Ok(out)
    }

    /// [`Index::locate`] for each of `blocks`, in one read transaction.
    /// Each statement outside a transaction starts and ends one of its own,
    /// taking and dropping the log's shared-memory lock with `fcntl` calls:
    /// for the 16 lookups of a megabyte of 64 KiB blocks, that was two
    /// thirds of the lookups' CPU time in a cold sequential read. A single
    /// lookup (a random read) gains nothing from it and pays for two more
    /// statements, so it runs alone. Inside a transaction of the caller's,
    /// the lookups simply join it.
    pub fn locate_each(
        &self,
        lineage: LineageId,
        seq: i64,
        blocks: impl Iterator<Item = u64>,
    ) -> Result<Vec<Option<(BlockId, FrameLoc, Digest)>>> {
        let blocks: Vec<u64> = blocks.collect();
        let own_tx = blocks.len() > 1 && self.conn.is_autocommit();
        if own_tx {
            self.conn.prepare_cached("BEGIN")?.execute([])?;
        }
        let found = blocks.iter().map(|&b| self.locate(lineage, seq, BlockNo(b))).collect::<Result<Vec<_>>>();
        if own_tx {
            // Nothing was written: ending the transaction only drops its
            // read lock, whichever way it ends.
            // A connection left inside it would keep its snapshot: every
            // later lookup would join the transaction and never see a
            // point committed since.
            let ended = match found {
                Ok(_) => self.conn.prepare_cached("COMMIT").and_then(|mut st| st.execute([])),
                Err(_) => Ok(0),
            };
            if found.is_err() || ended.is_err() {
                let _ = self.conn.prepare_cached("ROLLBACK").and_then(|mut st| st.execute([]));
            }
            ended?;
        }
        found
    }

    /// Where the bytes of `block` of `lineage` at point `seq` live; `None`
    /// when the block is all zeros. One index seek, independent of depth.
    pub fn locate(&self, lineage: LineageId, seq: i64, block: BlockNo) -> Result<Option<(BlockId, FrameLoc, Digest)>> {
        let row: Option<Option<(BlockId, FrameLoc, Digest)>> = self
            .conn
            .prepare_cached(
                "SELECT b.id, b.pack_id, b.offset, b.stored_len, b.raw_len, b.digest FROM
                   (SELECT block_id FROM block_versions
                    WHERE lineage_id = ?1 AND block_no = ?2 AND seq <= ?3
                    ORDER BY seq DESC LIMIT 1) v
                 LEFT JOIN blocks b ON b.id = v.block_id",
            )?
            .query_row(params![lineage, block, seq], |r| {
                let id: Option<BlockId> = r.get(0)?;
                Ok(match id {
                    None => None,
                    Some(id) => Some((
                        id,
                        FrameLoc {
                            pack: r.get(1)?,
                            offset: r.get::<_, i64>(2)? as u64,
                            stored_len: r.get::<_, i64>(3)? as u32,
                            raw_len: r.get::<_, i64>(4)? as u32,
                        },
                        r.get(5)?,
                    )),
                })
            })
            .optional()?;
        Ok(row.flatten())
    }

    // ---- packs ------------------------------------------------------------

    pub fn pack_ids(&self) -> Result<Vec<PackId>> {
        let mut st = self.conn.prepare_cached("SELECT id FROM packs ORDER BY id")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn pack_sizes(&self) -> Result<Vec<(PackId, u64)>> {
        let mut st = self.conn.prepare_cached("SELECT id, size FROM packs ORDER BY id")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The pack with the highest id and its committed length, if any.
    pub fn newest_pack(&self) -> Result<Option<(PackId, u64)>> {
        Ok(self
            .conn
            .prepare_cached("SELECT id, size FROM packs ORDER BY id DESC LIMIT 1")?
            .query_row([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
            .optional()?)
    }

    pub fn next_pack_id(&self) -> Result<PackId> {
        let max: Option<i64> = self.conn.query_row("SELECT max(id) FROM packs", [], |r| r.get(0))?;
        Ok(PackId(max.unwrap_or(0) + 1))
    }

    pub fn insert_pack(&self, id: PackId, size: u64, created: i64) -> Result<()> {
        self.conn
            .prepare_cached("INSERT INTO packs(id, size, created) VALUES (?1, ?2, ?3)")?
            .execute(params![id, size as i64, created])?;
        Ok(())
    }

    /// Up to `limit` stored blocks in pack order, starting after the frame
    /// at `after` (from the first when `None`): verify walks the index a
    /// page at a time, so its memory does not grow with the repository. A
    /// list of all blocks took about 60 bytes a block: a gigabyte for a
    /// terabyte stored in 64 KiB blocks.
    ///
    /// The block id breaks ties: two rows at one place are damage, and
    /// verify must see both.
    pub fn blocks_after(&self, after: Option<&BlockRow>, limit: usize) -> Result<Vec<BlockRow>> {
        let (pack, offset, id) =
            after.map(|b| (b.loc.pack.0, b.loc.offset as i64, b.id.0)).unwrap_or((i64::MIN, i64::MIN, i64::MIN));
        let mut st = self.conn.prepare_cached(
            "SELECT id, digest, pack_id, offset, stored_len, raw_len FROM blocks
             WHERE (pack_id, offset, id) > (?1, ?2, ?3)
             ORDER BY pack_id, offset, id LIMIT ?4",
        )?;
        let rows = st.query_map(params![pack, offset, id, limit as i64], |r| {
            Ok(BlockRow {
                id: r.get(0)?,
                digest: r.get(1)?,
                loc: FrameLoc {
                    pack: r.get(2)?,
                    offset: r.get::<_, i64>(3)? as u64,
                    stored_len: r.get::<_, i64>(4)? as u32,
                    raw_len: r.get::<_, i64>(5)? as u32,
                },
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Stored blocks and their stored bytes, in all.
    pub fn block_totals(&self) -> Result<(u64, u64)> {
        Ok(self.conn.query_row("SELECT count(*), coalesce(sum(stored_len), 0) FROM blocks", [], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })?)
    }

    /// (machine, point, disk) triples whose content uses `block` (at any
    /// of their versions visible at that point). Used to tell the user what
    /// damage affects; cost is a scan of the block's versions.
    pub fn users_of_block(&self, block: BlockId) -> Result<Vec<(String, PointRow, String)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT DISTINCT v.lineage_id, v.block_no, v.seq FROM block_versions v
             WHERE v.block_id = ?1",
        )?;
        let versions: Vec<(LineageId, BlockNo, i64)> = st
            .query_map([block], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut out = Vec::new();
        for (lineage, block_no, seq) in versions {
            // Points of this lineage from seq on, until the block is replaced.
            let mut st = self.conn.prepare_cached(
                "SELECT p.id, p.machine_id, p.seq, p.created, p.checkpoint, d.name, m.name, d.size
                 FROM point_disks d JOIN points p ON p.id = d.point_id
                 JOIN machines m ON m.id = p.machine_id
                 WHERE d.lineage_id = ?1 AND p.seq >= ?2
                   AND p.seq < coalesce((SELECT min(seq) FROM block_versions
                       WHERE lineage_id = ?1 AND block_no = ?3 AND seq > ?2), 9223372036854775807)
                 ORDER BY p.seq",
            )?;
            let block_size = self.block_size()? as u64;
            let rows = st.query_map(params![lineage, seq, block_no], |r| {
                Ok((
                    Self::point_from_row(r)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, i64>(7)? as u64,
                ))
            })?;
            for row in rows {
                let (p, disk, machine, size) = row?;
                if block_no.0 * block_size < size {
                    out.push((machine, p, disk));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_page_through_in_pack_order_once_each() {
        let d = tempfile::tempdir().unwrap();
        let idx = Index::create(d.path(), 65536, 16 << 20, 0).unwrap();
        assert_eq!(idx.block_totals().unwrap(), (0, 0));
        assert!(idx.blocks_after(None, 10).unwrap().is_empty());
        for p in 1..=3 {
            idx.insert_pack(PackId(p), 0, 0).unwrap();
        }
        // Inserted out of pack order; offsets 0 and beyond (a frame at 0
        // must not be taken for "before the first").
        let mut want = Vec::new();
        for i in 0..2500u64 {
            let pack = PackId(3 - (i % 3) as i64);
            let loc = FrameLoc { pack, offset: i * 10, stored_len: 7, raw_len: 65536 };
            idx.insert_block(&Digest::of(&i.to_le_bytes()), &loc).unwrap();
            want.push((pack.0, i * 10));
        }
        want.sort();
        assert_eq!(idx.block_totals().unwrap(), (2500, 2500 * 7));
        // Every row, paging as verify does.
        let all = |limit| {
            let (mut rows, mut after) = (Vec::new(), None);
            loop {
                let page = idx.blocks_after(after.as_ref(), limit).unwrap();
                assert!(page.len() <= limit);
                let Some(last) = page.last().cloned() else { return rows };
                rows.extend(page);
                after = Some(last);
            }
        };
        let got: Vec<(i64, u64)> = all(1000).iter().map(|b| (b.loc.pack.0, b.loc.offset)).collect();
        assert_eq!(got, want);
        // Two rows at one place (damage) across a page boundary: both seen.
        // Block 1 went to pack 2 at offset 10.
        let twin = FrameLoc { pack: PackId(2), offset: 10, stored_len: 7, raw_len: 65536 };
        idx.insert_block(&Digest::of(b"twin"), &twin).unwrap();
        let twins = all(1).iter().filter(|b| b.loc.pack.0 == 2 && b.loc.offset == 10).count();
        assert_eq!(twins, 2);
    }

    #[test]
    fn locate_each_finds_what_locate_finds() {
        let d = tempfile::tempdir().unwrap();
        let idx = Index::create(d.path(), 65536, 16 << 20, 0).unwrap();
        let m = idx.insert_machine("vm").unwrap();
        let l = idx.insert_lineage(m, "sda").unwrap();
        idx.insert_pack(PackId(1), 0, 0).unwrap();
        let block = |i: u64| {
            let loc = FrameLoc { pack: PackId(1), offset: i * 100, stored_len: 60, raw_len: 65536 };
            idx.insert_block(&Digest::of(&i.to_le_bytes()), &loc).unwrap()
        };
        let (a, b, c, e) = (block(0), block(1), block(2), block(3));
        // Block 0: stored at 1, zeroed at 3. Block 1: stored at 2.
        // Block 2: never. Block 3: stored at 1, changed at 5.
        for (no, seq, id) in [(0, 1, Some(a)), (0, 3, None), (1, 2, Some(b)), (3, 1, Some(c)), (3, 5, Some(e))] {
            idx.insert_version(l, BlockNo(no), seq, id).unwrap();
        }
        let id_of = |found: Vec<Option<(BlockId, FrameLoc, Digest)>>| -> Vec<Option<i64>> {
            found.into_iter().map(|f| f.map(|(id, _, _)| id.0)).collect()
        };
        let want: [(i64, [Option<BlockId>; 4]); 5] = [
            (1, [Some(a), None, None, Some(c)]),
            (2, [Some(a), Some(b), None, Some(c)]),
            (3, [None, Some(b), None, Some(c)]),
            (4, [None, Some(b), None, Some(c)]),
            (5, [None, Some(b), None, Some(e)]),
        ];
        for (seq, w) in want {
            let each = id_of(idx.locate_each(l, seq, 0..4).unwrap());
            let one: Vec<_> = (0..4).map(|n| idx.locate(l, seq, BlockNo(n)).unwrap().map(|(id, _, _)| id.0)).collect();
            assert_eq!(each, w.iter().map(|b| b.map(|b| b.0)).collect::<Vec<_>>(), "point {seq}");
            assert_eq!(each, one, "point {seq}");
        }
        // The lookups' own transaction has ended; inside a caller's, they
        // join it and leave it open.
        assert!(idx.conn.is_autocommit());
        idx.conn.execute_batch("BEGIN").unwrap();
        assert_eq!(id_of(idx.locate_each(l, 5, 2..4).unwrap()), vec![None, Some(e.0)]);
        assert!(!idx.conn.is_autocommit());
        idx.conn.execute_batch("COMMIT").unwrap();
    }
}
