//! A repository directory: `index.sqlite`, `packs/`, `lock`, `readers`.
//!
//! Locking: writers (ingest, protect, forget, gc) take an exclusive
//! `flock` on `lock` for their whole run; a second writer fails at once
//! with [`Error::Busy`]. Ingest only adds: readers see committed index
//! state and the committed bytes of packs, which never change (writers only
//! append past them), so mounts run during ingests. Forget and gc change
//! what points read and delete packs, so they also take `readers`
//! exclusively, which mounts and verify hold shared: the two never overlap.
//!
//! Crash safety: pack bytes are fsynced before the index commit that
//! references them. Leftovers of an interrupted writer are harmless and
//! removed later under the lock: pack files with no index row by the next
//! ingest or gc, bytes past a pack's committed length by the next ingest
//! appending to that pack, or by gc.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{INDEX_FILE, LOCK_FILE, PACK_DIR, READERS_FILE};
use crate::index::Index;
use crate::pack::parse_pack_file_name;

pub struct Repo {
    pub path: PathBuf,
    pub index: Index,
    pub block_size: u32,
    /// Size at which packs are closed.
    pub pack_size: u64,
}

/// Held while writing; released on drop (or when the process dies).
pub struct WriterLock {
    _file: File,
}

/// Readers that need the repository to stay as it is (mounts, exports,
/// verify) hold this shared; retention (forget, gc), which changes what
/// points read and deletes packs, holds it exclusively, so the two never
/// overlap.
/// Ingest does not take it: it only adds. Released on drop.
pub struct ReaderLock {
    _file: Option<File>,
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Opens a lock file (the writers' or the readers'), making it if it is
/// not there yet; its content is never used.
fn open_lock_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)
}

/// Whether `e` is something an interrupted `init` leaves: the empty pack
/// directory, the lock file, the index being built. A directory holding
/// only those is taken over by `init` run again.
fn left_by_init(e: &std::fs::DirEntry) -> bool {
    let name = e.file_name();
    let Some(name) = name.to_str() else { return false };
    match name {
        PACK_DIR => std::fs::read_dir(e.path()).is_ok_and(|mut d| d.next().is_none()),
        LOCK_FILE | READERS_FILE => true,
        _ => name.starts_with(crate::index::INDEX_BUILDING),
    }
}

impl Repo {
    /// Creates a repository at `path` (a new or empty directory).
    pub fn init(path: &Path, block_size: u32, pack_size: u64) -> Result<Repo> {
        if path.join(INDEX_FILE).exists() {
            return Err(Error::Input(format!(
                "{} is already a cbtfs repository; choose another directory",
                path.display()
            )));
        }
        if path.exists() {
            let entries: Vec<std::fs::DirEntry> = std::fs::read_dir(path)
                .and_then(|d| d.collect())
                .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
            if !entries.iter().all(left_by_init) {
                return Err(Error::Input(format!(
                    "{} exists and is not empty; give a new or empty directory",
                    path.display()
                )));
            }
            if !entries.is_empty() {
                log::info!("{}: finishing an interrupted init", path.display());
            }
        } else {
            std::fs::create_dir(path)
                .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
        }
        let mkerr = |e| Error::io(format!("cannot initialise {}", path.display()), e);
        // Held until the index is in place: two inits of one directory at
        // once would build it under the same temporary name, each removing
        // or renaming the other's.
        let lock = open_lock_file(&path.join(LOCK_FILE)).map_err(mkerr)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Input(format!("another process is creating or writing {}; try again when it has finished", path.display())));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(mkerr(e)),
        }
        match std::fs::create_dir(path.join(PACK_DIR)) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(mkerr(e)),
            _ => {}
        }
        open_lock_file(&path.join(READERS_FILE)).map_err(mkerr)?;
        // The index is created last, whole or not at all: its presence is
        // what makes the directory a repository.
        let index = Index::create(path, block_size, pack_size, now_unix())?;
        drop(lock);
        Ok(Repo { path: path.to_path_buf(), index, block_size, pack_size })
    }

    pub fn open(path: &Path) -> Result<Repo> {
        if !path.is_dir() {
            return Err(Error::Input(format!(
                "repository {} does not exist; create it with `cbtfs init {}`",
                path.display(),
                path.display()
            )));
        }
        let index = Index::open(path)?;
        let block_size = index.block_size()?;
        let pack_size = index.pack_size()?;
        let repo = Repo { path: path.to_path_buf(), index, block_size, pack_size };
        // Made where it can be (repositories from before `init` made it),
        // so that users who may only read the repository can take the
        // readers' lock; see `lock_readers_shared`.
        let _ = repo.readers_file();
        Ok(repo)
    }

    /// Takes the writer lock without waiting.
    pub fn lock_writer(&self) -> Result<WriterLock> {
        self.lock_writer_with(false)
    }

    /// [`Repo::lock_writer`], waiting for the writer that holds it when
    /// `wait`.
    fn lock_writer_with(&self, wait: bool) -> Result<WriterLock> {
        let p = self.path.join(LOCK_FILE);
        let file = open_lock_file(&p).map_err(|e| match e.raw_os_error() {
            Some(code) if code == nix::libc::EROFS || code == nix::libc::EACCES => Error::Input(format!(
                "repository {} cannot be written here ({e}); adding restore points needs write access",
                self.path.display()
            )),
            _ => Error::io(format!("cannot open lock file {}", p.display()), e),
        })?;
        if wait {
            file.lock().map_err(|e| Error::io(format!("cannot lock {}", p.display()), e))?;
            return Ok(WriterLock { _file: file });
        }
        match file.try_lock() {
            Ok(()) => Ok(WriterLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Busy(self.path.clone())),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(Error::io(format!("cannot lock {}", p.display()), e))
            }
        }
    }

    fn readers_file(&self) -> std::io::Result<File> {
        open_lock_file(&self.path.join(READERS_FILE))
    }

    /// Shared reader lock, for mounts, exports and verify. It needs no
    /// write access (flock(2) on a file opened for reading), so a user who
    /// may only read the repository holds it too, and its owner cannot
    /// prune what that user's mount shows. `init` makes the lock file, and
    /// any command that can makes it in older repositories; only on
    /// storage that nobody can write may it be missing without remedy,
    /// and there nothing can be pruned.
    pub fn lock_readers_shared(&self) -> Result<ReaderLock> {
        let path = self.path.join(READERS_FILE);
        let file = match self.readers_file().or_else(|_| File::open(&path)) {
            Ok(f) => f,
            Err(_) if nix::unistd::access(&self.path, nix::unistd::AccessFlags::W_OK) == Err(nix::errno::Errno::EROFS) => {
                return Ok(ReaderLock { _file: None });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Input(format!(
                    "cannot lock repository {} for reading: {} is missing and this user cannot create it; run this as a user who can write the repository, or have one run `cbtfs list {}` once",
                    self.path.display(),
                    path.display(),
                    self.path.display()
                )));
            }
            Err(e) => return Err(Error::io(format!("cannot open {}", path.display()), e)),
        };
        match file.try_lock_shared() {
            Ok(()) => Ok(ReaderLock { _file: Some(file) }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Pruning(self.path.clone())),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io("cannot lock the repository for reading", e)),
        }
    }

    /// Exclusive reader lock, for retention: fails with [`Error::Busy`]
    /// while a mount or verify runs, unless `wait`, which waits for them.
    pub fn lock_readers_exclusive(&self, wait: bool) -> Result<ReaderLock> {
        let file = self
            .readers_file()
            .map_err(|e| Error::io(format!("cannot open {}", self.path.join(READERS_FILE).display()), e))?;
        if wait {
            file.lock().map_err(|e| Error::io("cannot lock the repository", e))?;
            return Ok(ReaderLock { _file: Some(file) });
        }
        match file.try_lock() {
            Ok(()) => Ok(ReaderLock { _file: Some(file) }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::InUse(self.path.clone())),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io("cannot lock the repository", e)),
        }
    }

    /// The locks forget and gc hold: the writers' (no ingest meanwhile)
    /// and the readers', exclusively (no mount, export or verify).
    /// Without `wait`, either being held is an error ([`Error::Busy`],
    /// [`Error::InUse`]). With `wait`, it waits for each in turn, never
    /// holding one while it waits for the other: holding the writers' lock
    /// while waiting for a mount that may run for days would fail every
    /// ingest meanwhile, and holding the readers' lock while an ingest
    /// ends would refuse new mounts.
    pub fn lock_for_pruning(&self, wait: bool) -> Result<(WriterLock, ReaderLock)> {
        if !wait {
            let writer = self.lock_writer()?;
            return Ok((writer, self.lock_readers_exclusive(false)?));
        }
        loop {
            let readers = self.lock_readers_exclusive(true)?;
            match self.lock_writer() {
                Ok(writer) => return Ok((writer, readers)),
                Err(Error::Busy(_)) => drop(readers),
                Err(e) => return Err(e),
            }
            let writer = self.lock_writer_with(true)?;
            match self.lock_readers_exclusive(false) {
                Ok(readers) => return Ok((writer, readers)),
                Err(Error::InUse(_)) => drop(writer),
                Err(e) => return Err(e),
            }
        }
    }

    /// Pack files the index does not know, by name and path: leftovers of
    /// an interrupted ingest, or the pack of an ingest still running.
    pub fn unreferenced_packs(&self) -> Result<Vec<(String, PathBuf)>> {
        let known: std::collections::HashSet<_> = self.index.pack_ids()?.into_iter().collect();
        let dir = self.path.join(PACK_DIR);
        let rd = std::fs::read_dir(&dir).map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?;
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if parse_pack_file_name(&name).is_some_and(|id| !known.contains(&id)) {
                out.push((name, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes pack files the index does not know: leftovers of an ingest
    /// killed before its commit. Returns their bytes. Call only under the
    /// writer lock, so that no running ingest's pack is taken for a
    /// leftover.
    pub fn remove_orphan_packs(&self, lock: &WriterLock) -> Result<u64> {
        self.orphan_packs(lock, true)
    }

    /// The bytes of pack files the index does not know, which are removed
    /// when `remove` is set.
    pub fn orphan_packs(&self, _lock: &WriterLock, remove: bool) -> Result<u64> {
        let mut bytes = 0;
        for (name, path) in self.unreferenced_packs()? {
            bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if remove {
                log::info!("removing leftover pack {name} of an interrupted ingest");
                std::fs::remove_file(&path).map_err(|e| Error::io(format!("cannot remove {}", path.display()), e))?;
            }
        }
        Ok(bytes)
    }

    /// The bytes packs hold past the length the index records, the
    /// appends of an ingest that was killed or failed, which no point
    /// references; with `cut`, every pack is cut back to its recorded
    /// length. Packs shorter than recorded are damage, left for `verify`
    /// to report.
    pub fn uncommitted_tails(&self, _lock: &WriterLock, cut: bool) -> Result<u64> {
        let mut tails = 0;
        for (id, size) in self.index.pack_sizes()? {
            let path = crate::pack::pack_path(&self.path, id);
            let len = match std::fs::metadata(&path) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
            };
            if len > size {
                tails += len - size;
                if cut {
                    log::info!("cutting {} uncommitted bytes off pack {}", len - size, path.display());
                    OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| f.set_len(size))
                        .map_err(|e| Error::io(format!("cannot cut {} back to {size} bytes", path.display()), e))?;
                }
            }
        }
        Ok(tails)
    }
}
