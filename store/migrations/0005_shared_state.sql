-- 0005: state shared by several switch instances on one database (docs/settings.md "Several
-- instances"; dce/sync.py). Every change to what an instance holds in memory bumps a version
-- and sends NOTIFY dce_sync '<schema> <kind> <version>' from a trigger, so the notification
-- is part of the writing transaction whatever wrote it (the admin API, dce config apply,
-- dce dnc import, psql). Kinds: exchange (trunks, campaigns, buyers, endpoints, profiles),
-- consent, erasure (suppressions), dnc (the lists, now stored here).

-- One counter per kind. Bumping it locks its row until commit, so versions are given in commit
-- order: a reader that sees version N also sees every change numbered below N.
CREATE TABLE sync_versions (
    kind     text   PRIMARY KEY CHECK (kind IN ('exchange', 'consent', 'erasure', 'dnc')),
    version  bigint NOT NULL DEFAULT 0,
    -- Bumped when rows are deleted: a reader that copies rows by version cannot see a
    -- deletion, so it reloads the whole kind when this moves.
    resets   bigint NOT NULL DEFAULT 0
);
INSERT INTO sync_versions (kind) VALUES ('exchange'), ('consent'), ('erasure'), ('dnc');

CREATE FUNCTION dce_bump(kind text, reset boolean DEFAULT false) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE v bigint;
BEGIN
    UPDATE sync_versions s SET version = s.version + 1,
                               resets = s.resets + (CASE WHEN reset THEN 1 ELSE 0 END)
     WHERE s.kind = dce_bump.kind RETURNING s.version INTO v;
    RETURN v;
END $$;

CREATE FUNCTION dce_notify(kind text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dce_sync', current_schema() || ' ' || kind || ' ' ||
                      (SELECT version FROM sync_versions s WHERE s.kind = dce_notify.kind));
END $$;

-- Statement level: any write to the table bumps the kind's version and notifies.
CREATE FUNCTION dce_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dce_bump(TG_ARGV[0], TG_OP IN ('DELETE', 'TRUNCATE'));
    PERFORM dce_notify(TG_ARGV[0]);
    RETURN NULL;
END $$;

-- Row level, before the write: the row carries the version that changed it, so an instance
-- can fetch only the rows newer than what it holds.
CREATE FUNCTION dce_row_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := dce_bump(TG_ARGV[0]);
    RETURN NEW;
END $$;

-- After the rows of a statement got their versions: one notification per statement.
CREATE FUNCTION dce_rows_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'TRUNCATE') THEN
        PERFORM dce_bump(TG_ARGV[0], true);
    END IF;
    PERFORM dce_notify(TG_ARGV[0]);
    RETURN NULL;
END $$;

-- Exchange objects: an instance reloads the whole configuration (it compiles it as a whole).
CREATE TRIGGER trunks_sync AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON trunks
    FOR EACH STATEMENT EXECUTE FUNCTION dce_changed('exchange');
CREATE TRIGGER campaigns_sync AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON campaigns
    FOR EACH STATEMENT EXECUTE FUNCTION dce_changed('exchange');
CREATE TRIGGER buyers_sync AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON buyers
    FOR EACH STATEMENT EXECUTE FUNCTION dce_changed('exchange');
CREATE TRIGGER endpoints_sync AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON endpoints
    FOR EACH STATEMENT EXECUTE FUNCTION dce_changed('exchange');
CREATE TRIGGER profiles_sync AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON profiles
    FOR EACH STATEMENT EXECUTE FUNCTION dce_changed('exchange');

-- Consent records and suppressions: an instance applies the rows newer than its version.
ALTER TABLE consents ADD COLUMN version bigint NOT NULL DEFAULT 0;
CREATE INDEX consents_version ON consents (version);
CREATE TRIGGER consents_version BEFORE INSERT OR UPDATE ON consents
    FOR EACH ROW EXECUTE FUNCTION dce_row_version('consent');
CREATE TRIGGER consents_sync AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON consents
    FOR EACH STATEMENT EXECUTE FUNCTION dce_rows_changed('consent');

ALTER TABLE suppressions ADD COLUMN version bigint NOT NULL DEFAULT 0;
CREATE INDEX suppressions_version ON suppressions (version);
CREATE TRIGGER suppressions_version BEFORE INSERT OR UPDATE ON suppressions
    FOR EACH ROW EXECUTE FUNCTION dce_row_version('erasure');
CREATE TRIGGER suppressions_sync AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON suppressions
    FOR EACH STATEMENT EXECUTE FUNCTION dce_rows_changed('erasure');

-- DNC lists (compliance/dnc): one row per list, its numbers as the sorted array of doubles
-- the gate searches (little-endian, live keys only), cut in chunks of at most 1M numbers so
-- neither side ever holds a second copy of a whole 80 MB list. A new version of a list is
-- written beside the old one and the old chunks deleted, in one transaction: readers in a
-- snapshot keep seeing the version they started with.
CREATE TABLE dnc_lists (
    name          text        PRIMARY KEY,
    version       bigint      NOT NULL DEFAULT 0,
    source        text        NOT NULL,
    loaded_at     timestamptz NOT NULL,
    max_age_days  integer,
    count         bigint      NOT NULL,
    crc32         bigint      NOT NULL,  -- of the whole array's bytes, in order
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE dnc_chunks (
    name     text    NOT NULL REFERENCES dnc_lists (name) ON DELETE CASCADE,
    version  bigint  NOT NULL,
    seq      integer NOT NULL,
    keys     bytea   NOT NULL,
    PRIMARY KEY (name, version, seq)
);
-- Sorted doubles barely compress: skip pglz, which would cost more time than it saves.
ALTER TABLE dnc_chunks ALTER COLUMN keys SET STORAGE EXTERNAL;
CREATE TRIGGER dnc_lists_version BEFORE INSERT OR UPDATE ON dnc_lists
    FOR EACH ROW EXECUTE FUNCTION dce_row_version('dnc');
CREATE TRIGGER dnc_lists_sync AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON dnc_lists
    FOR EACH STATEMENT EXECUTE FUNCTION dce_rows_changed('dnc');

-- The erasure secret's fingerprint (HMAC of a fixed text under it, never the secret): every
-- instance must hash erased numbers with the same secret, or one instance's suppression
-- entries would not match on another. The first instance records it; the others must agree.
CREATE TABLE shared_secrets (
    name         text PRIMARY KEY,
    fingerprint  text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
