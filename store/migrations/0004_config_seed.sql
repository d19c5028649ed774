-- 0004: the database is the one source of truth for trunks, campaigns and buyers. A config file
-- seeds it once (store/exchange.py seed_config); this one row says that it happened, so that
-- later starts never write the file again (`dce config apply` does, on request).
CREATE TABLE config_seed (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    source     text        NOT NULL,  -- the config file, or what else seeded the database
    seeded_at  timestamptz NOT NULL DEFAULT now()
);

-- Earlier versions wrote the file at every start: a database that already holds exchange
-- objects reflects its file as of the last start, plus API changes since. Seeding it again
-- would undo those changes, so it counts as seeded.
INSERT INTO config_seed (source)
SELECT 'exchange objects present before migration 0004'
WHERE EXISTS (SELECT 1 FROM trunks)
   OR EXISTS (SELECT 1 FROM campaigns)
   OR EXISTS (SELECT 1 FROM buyers);
