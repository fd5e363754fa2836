-- cbtfs block index, schema version 2: a disk version may be made from a
-- dirty bitmap (kind 'bitmap': only the blocks a hypervisor's persistent
-- dirty bitmap marks as changed since the previous checkpoint were read).
-- SQLite cannot change a CHECK constraint in place, so point_disks is
-- rebuilt; no other table references it.

CREATE TABLE point_disks_v2 (
    id            INTEGER PRIMARY KEY,
    point_id      INTEGER NOT NULL REFERENCES points(id),
    name          TEXT    NOT NULL,
    lineage_id    INTEGER NOT NULL REFERENCES lineages(id),
    size          INTEGER NOT NULL,  -- bytes, exact
    kind          TEXT    NOT NULL CHECK (kind IN ('full', 'bitmap', 'map', 'scan')),
    reason        TEXT,              -- why a scan happened
    blocks_read   INTEGER NOT NULL,
    blocks_stored INTEGER NOT NULL,  -- new unique blocks written to packs
    bytes_stored  INTEGER NOT NULL,  -- their stored (compressed) bytes
    UNIQUE (point_id, name)
) STRICT;

INSERT INTO point_disks_v2 (id, point_id, name, lineage_id, size, kind, reason, blocks_read, blocks_stored, bytes_stored)
    SELECT id, point_id, name, lineage_id, size, kind, reason, blocks_read, blocks_stored, bytes_stored FROM point_disks;
DROP TABLE point_disks;
ALTER TABLE point_disks_v2 RENAME TO point_disks;
