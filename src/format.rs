//! On-disk format constants of a cbtfs repository.
//!
//! ############################################################################
//! # DO NOT MODIFY these values: repositories written with them exist.        #
//! # A change of layout gets a new version constant and a migration, and the #
//! # byte layout is written down again in `schema/FORMAT.md`.                 #
//! ############################################################################
//!
//! All integers on disk are little-endian.

/// Name of the SQLite block index inside a repository directory.
pub const INDEX_FILE: &str = "index.sqlite";
/// Directory holding the pack files.
pub const PACK_DIR: &str = "packs";
/// Lock file taken exclusively by writers (ingest).
pub const LOCK_FILE: &str = "lock";
/// flock(2)ed shared by mounts, exports and verify, exclusively by forget
/// and gc; made by `init` (and by any command that can, in repositories
/// from before), so that users who may only read the repository can lock
/// it too.
pub const READERS_FILE: &str = "readers";
/// Extension of pack files; the stem is the pack id as 16 hex digits.
pub const PACK_EXT: &str = "pack";

/// Repository format version, stored in `repo_meta.format_version`.
/// Bumped only for changes an older cbtfs must not read.
pub const REPO_FORMAT_VERSION: u32 = 1;

/// First 8 bytes of every pack file: ASCII "CBTFSPK" followed by the pack
/// format version byte 0x01.
pub const PACK_MAGIC: [u8; 8] = *b"CBTFSPK\x01";
/// Size of the pack header: magic (8), pack id (8), reserved zeros (16).
pub const PACK_HEADER_LEN: usize = 32;

/// First 4 bytes of every frame: ASCII "CBFR". Lets `verify` and a future
/// salvage tool find frame boundaries without the index.
pub const FRAME_MAGIC: [u8; 4] = *b"CBFR";
/// Size of a frame header:
///
/// | offset | size | field                                                  |
/// |-------:|-----:|--------------------------------------------------------|
/// | 0      | 4    | magic `CBFR`                                           |
/// | 4      | 1    | codec: 0 = stored raw, 1 = lz4 block                   |
/// | 5      | 3    | reserved, zero                                         |
/// | 8      | 4    | raw (uncompressed) length                              |
/// | 12     | 4    | stored (payload) length                                |
/// | 16     | 8    | xxh3-64 over header bytes 0..16, 24..32 and payload    |
/// | 24     | 8    | first 8 bytes of the block's BLAKE3 digest             |
pub const FRAME_HEADER_LEN: usize = 32;

/// Codec byte: payload is the raw block.
pub const CODEC_RAW: u8 = 0;
/// Codec byte: payload is an lz4 block (lz4_flex, no size prefix).
pub const CODEC_LZ4: u8 = 1;

/// A pack is closed and the next one started once it grows past this size
/// (`init --pack-size`, kept as `pack_size` in `repo_meta`); until then
/// later ingests append to it. 16 MiB, as restic's default: large enough
/// that a long chain of small incrementals shares a few packs, small enough
/// that `gc` rewriting a pack for a few garbage blocks copies little (with
/// 1 GiB packs, reclaiming 128 KiB of a 100-point chain rewrote 199 MiB).
pub const DEFAULT_PACK_SIZE: u64 = 16 << 20;
pub const MIN_PACK_SIZE: u64 = 1 << 20;
pub const MAX_PACK_SIZE: u64 = 1 << 36;

/// Default block size: 64 KiB, the granularity of changed-block maps of most
/// hypervisors and the qcow2 default cluster size.
pub const DEFAULT_BLOCK_SIZE: u32 = 64 * 1024;
/// Smallest block size accepted by `init`.
pub const MIN_BLOCK_SIZE: u32 = 4 * 1024;
/// Largest block size accepted by `init`.
pub const MAX_BLOCK_SIZE: u32 = 4 * 1024 * 1024;

/// Length of a block digest (BLAKE3-256).
pub const DIGEST_LEN: usize = 32;
