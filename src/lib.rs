//! cbtfs: a backup repository for virtual machine disk images built on
//! changed block tracking, with every restore point served read-only as a
//! full disk image through FUSE.
//!
//! Layers, bottom up: `format` (on-disk constants), `pack` (frames and
//! pack files), `index` (SQLite block index), `repo` (directory, locking),
//! `ingest` (adding points), `chain` + `image` (reading points),
//! `catalog` (the browsable tree), `fuse` (translation to the kernel).

pub mod aligned;
pub mod catalog;
pub mod chain;
pub mod error;
pub mod export;
pub mod format;
pub mod gc;
pub mod fuse;
pub mod ids;
pub mod image;
pub mod index;
pub mod ingest;
pub mod list;
pub mod names;
pub mod nbd;
pub mod pack;
pub mod partition;
pub mod process;
pub mod qemu_args;
pub mod ranges;
pub mod readahead;
pub mod repo;
pub mod retention;
pub mod span;
pub mod stats;
pub mod verify;
pub mod writeback;
pub mod zeros;

pub use error::{Error, Result};
