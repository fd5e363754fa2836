//! Pack files: append-only files of compressed, checksummed block frames.
//!
//! Invariants:
//! - Packs are written only by an ingest holding the repository lock, and
//!   only by appending: to a new pack, or to the newest one while it is
//!   below the pack size. What an ingest wrote is fsynced before the SQLite
//!   commit that references it and records the pack's new length, so a
//!   committed block always has its bytes on disk, and bytes within a
//!   pack's committed length never change.
//! - A pack file with no row in `packs`, or bytes past a pack's committed
//!   length, are leftovers of an interrupted ingest: the next writer
//!   deletes the file, or cuts the bytes off before appending.
//! - Readers never trust a frame: the header must match what the index says,
//!   and the xxh3 checksum must match, or the read fails. Damage is an error,
//!   never wrong bytes.

pub mod frame;
pub mod reader;
pub mod writer;

use std::path::{Path, PathBuf};

use crate::format::{PACK_DIR, PACK_EXT};
use crate::ids::PackId;

pub use frame::FrameError;
pub use reader::PackReader;
pub use writer::PackWriter;

/// Path of pack `id` inside repository `repo`.
pub fn pack_path(repo: &Path, id: PackId) -> PathBuf {
    repo.join(PACK_DIR).join(pack_file_name(id))
}

/// File name of pack `id`: 16 hex digits, so names sort by id.
pub fn pack_file_name(id: PackId) -> String {
    format!("{:016x}.{PACK_EXT}", id.0)
}

/// Inverse of [`pack_file_name`]; `None` for anything else.
pub fn parse_pack_file_name(name: &str) -> Option<PackId> {
    let stem = name.strip_suffix(&format!(".{PACK_EXT}"))?;
    if stem.len() != 16 {
        return None;
    }
    i64::from_str_radix(stem, 16).ok().map(PackId)
}

/// Where a stored block's frame lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLoc {
    pub pack: PackId,
    pub offset: u64,
    /// Payload length (the frame is header + payload).
    pub stored_len: u32,
    pub raw_len: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_names_round_trip() {
        let id = PackId(0x1234);
        assert_eq!(pack_file_name(id), "0000000000001234.pack");
        assert_eq!(parse_pack_file_name(&pack_file_name(id)), Some(id));
        assert_eq!(parse_pack_file_name("1234.pack"), None);
        assert_eq!(parse_pack_file_name("0000000000001234.tmp"), None);
    }
}
