//! Newtypes for every id that crosses SQLite or FUSE, so that a pack id can
//! never be passed where a block id is expected.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

macro_rules! row_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub i64);

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                self.0.to_sql()
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                i64::column_result(value).map($name)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

row_id!(
    /// A machine: the owner of a backup chain.
    MachineId
);
row_id!(
    /// A restore point of one machine.
    PointId
);
row_id!(
    /// One disk inside one restore point.
    PointDiskId
);
row_id!(
    /// A run of restore points of one disk sharing block history; a full
    /// backup starts a new lineage.
    LineageId
);
row_id!(
    /// A pack file.
    PackId
);
row_id!(
    /// A unique stored block (deduplicated by digest).
    BlockId
);

/// Index of a block within a disk: byte offset / block size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockNo(pub u64);

impl ToSql for BlockNo {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        // Block numbers are bounded by disk size / 4 KiB < 2^52, so they fit.
        Ok(ToSqlOutput::from(self.0 as i64))
    }
}

impl FromSql for BlockNo {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let v = i64::column_result(value)?;
        u64::try_from(v).map(BlockNo).map_err(|_| FromSqlError::OutOfRange(v))
    }
}

/// BLAKE3-256 digest of a block's raw bytes: its identity for dedup. A
/// cryptographic hash because guests control disk contents and could craft
/// collisions against a non-cryptographic one.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; crate::format::DIGEST_LEN]);

impl Digest {
    pub fn of(data: &[u8]) -> Digest {
        Digest(*blake3::hash(data).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// First 8 bytes as stored in a frame header.
    pub fn prefix(&self) -> [u8; 8] {
        let mut p = [0u8; 8];
        p.copy_from_slice(&self.0[..8]);
        p
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl ToSql for Digest {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(&self.0[..]))
    }
}

impl FromSql for Digest {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let b = value.as_blob()?;
        let arr: [u8; crate::format::DIGEST_LEN] = b
            .try_into()
            .map_err(|_| FromSqlError::InvalidBlobSize { expected_size: 32, blob_size: b.len() })?;
        Ok(Digest(arr))
    }
}
