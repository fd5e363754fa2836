//! The library's top-level error. Each layer has its own typed error
//! (`IndexError`, pack `ReadError`, `NameError`, `MapError`); this one
//! carries them to the binary, which maps them to exit codes.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
    #[error(transparent)]
    Pack(#[from] crate::pack::reader::ReadError),
    #[error(transparent)]
    Name(#[from] crate::names::NameError),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    /// Bad input from the user: arguments, maps, sources.
    #[error("{0}")]
    Input(String),
    /// Another process holds the repository lock.
    #[error("repository {0} is busy: another writer (ingest, forget, gc or protect) holds its lock file; try again when it has finished, or give forget and gc --wait")]
    Busy(PathBuf),
    /// A mount or verify reads the repository, and retention must not
    /// change it under them.
    #[error("repository {0} is in use by a mount, an export or a verify; stop them first, or pass --wait to wait for them")]
    InUse(PathBuf),
    /// Retention (forget, gc) is changing the repository: readers must
    /// not start until it ends.
    #[error("repository {0} is being pruned (forget or gc); try again when that has finished")]
    Pruning(PathBuf),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Index(e.into())
    }
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
