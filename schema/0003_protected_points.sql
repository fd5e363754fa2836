-- cbtfs block index, schema version 3: restore points can be protected
-- from retention (`cbtfs protect`); forget refuses to remove them.
ALTER TABLE points ADD COLUMN protected INTEGER NOT NULL DEFAULT 0 CHECK (protected IN (0, 1));
