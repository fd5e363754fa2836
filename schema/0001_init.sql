-- cbtfs block index, schema version 1.
-- Applied by src/index/migrate.rs inside one exclusive transaction; the
-- version lives in PRAGMA user_version. Never edit a released migration:
-- append 0002_*.sql instead.

-- Repository-wide settings: format_version, block_size, created.
CREATE TABLE repo_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- One row per pack file packs/<id as 16 hex digits>.pack. A pack file with
-- no row here is the leftover of an interrupted ingest.
CREATE TABLE packs (
    id      INTEGER PRIMARY KEY,
    size    INTEGER NOT NULL,
    created INTEGER NOT NULL
) STRICT;

-- Unique stored blocks, deduplicated by BLAKE3 digest of the raw bytes.
-- All-zero blocks are never stored.
CREATE TABLE blocks (
    id         INTEGER PRIMARY KEY,
    digest     BLOB    NOT NULL UNIQUE,
    pack_id    INTEGER NOT NULL REFERENCES packs(id),
    offset     INTEGER NOT NULL,
    stored_len INTEGER NOT NULL,
    raw_len    INTEGER NOT NULL
) STRICT;
CREATE INDEX blocks_by_pack ON blocks(pack_id, offset);

CREATE TABLE machines (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
) STRICT;

-- Restore points. seq counts 1, 2, 3... per machine and never repeats, so
-- a point's folder name (seq + creation time) sorts in creation order.
CREATE TABLE points (
    id         INTEGER PRIMARY KEY,
    machine_id INTEGER NOT NULL REFERENCES machines(id),
    seq        INTEGER NOT NULL,
    created    INTEGER NOT NULL,  -- unix seconds, UTC
    checkpoint TEXT,              -- hypervisor checkpoint id, NULL if none
    UNIQUE (machine_id, seq),
    UNIQUE (machine_id, checkpoint)
) STRICT;

-- A lineage is the block history of one disk of one machine from one full
-- backup onward. Incrementals add versions to their predecessor's lineage;
-- a full starts a new lineage, so nothing older can show through it.
CREATE TABLE lineages (
    id         INTEGER PRIMARY KEY,
    machine_id INTEGER NOT NULL REFERENCES machines(id),
    disk_name  TEXT NOT NULL
) STRICT;

-- The disks of a restore point.
CREATE TABLE point_disks (
    id            INTEGER PRIMARY KEY,
    point_id      INTEGER NOT NULL REFERENCES points(id),
    name          TEXT    NOT NULL,
    lineage_id    INTEGER NOT NULL REFERENCES lineages(id),
    size          INTEGER NOT NULL,  -- bytes, exact
    kind          TEXT    NOT NULL CHECK (kind IN ('full', 'map', 'scan')),
    reason        TEXT,              -- why a scan happened
    blocks_read   INTEGER NOT NULL,
    blocks_stored INTEGER NOT NULL,  -- new unique blocks written to packs
    bytes_stored  INTEGER NOT NULL,  -- their stored (compressed) bytes
    UNIQUE (point_id, name)
) STRICT;

-- Block versions: the content of block block_no of a lineage as of point
-- seq, until a later version. block_id NULL means all zeros. The content
-- of a block at point S is the row with the greatest seq <= S: one B-tree
-- seek, whatever the chain depth.
CREATE TABLE block_versions (
    lineage_id INTEGER NOT NULL REFERENCES lineages(id),
    block_no   INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    block_id   INTEGER REFERENCES blocks(id),
    PRIMARY KEY (lineage_id, block_no, seq)
) STRICT, WITHOUT ROWID;
