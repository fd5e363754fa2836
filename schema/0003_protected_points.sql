-- cbtfs block index, schema version 3, for retention:
-- - restore points can be protected (`cbtfs protect`); forget refuses them;
-- - each machine remembers the highest point sequence number it ever had,
--   so a point added after the newest was forgotten gets a new number:
--   names and numbers of restore points are never reused.
ALTER TABLE points ADD COLUMN protected INTEGER NOT NULL DEFAULT 0 CHECK (protected IN (0, 1));
ALTER TABLE machines ADD COLUMN last_seq INTEGER NOT NULL DEFAULT 0;
UPDATE machines SET last_seq = coalesce((SELECT max(seq) FROM points WHERE machine_id = machines.id), 0);
