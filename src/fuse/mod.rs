//! The FUSE layer: translation only. Inodes map to catalog nodes
//! (`inode`), requests map to `Catalog` and `ImageReader` calls (`fs`).
//! Internal failures become EIO with a log line.

pub mod fs;
pub mod inode;

pub use fs::{CbtFs, mount, serve};
