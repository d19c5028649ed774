-- 0002: what the admin API (exchange/api.py) needs: CDR indexes for its filters, cursor
-- pagination and GDPR erasure; consent records; the hashed erasure suppression entries.

-- /api/v1/calls pages newest first on (received_at, call_id); erasure finds a caller's rows.
-- On a partitioned table these cascade to every partition, present and future.
CREATE INDEX cdrs_received_call ON cdrs (received_at, call_id);
CREATE INDEX cdrs_caller ON cdrs (caller);

-- Consent records (compliance/consent.py ConsentRecord, msgspec-encoded). caller and
-- campaign_id are copied out of doc for lookups; erasure rewrites caller in both places.
-- Records are kept after revocation: they are evidence.
CREATE TABLE consents (
    id           text PRIMARY KEY,
    caller       text        NOT NULL,
    campaign_id  text        NOT NULL,
    doc          jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consents_caller ON consents (caller);
CREATE INDEX consents_campaign ON consents (campaign_id);

-- GDPR erasure (compliance/erasure.py): the keyed hash (HMAC-SHA256, "hmac:<hex>") of an erased
-- number and the DNC lists it stays blocked on ("*": every call). Never the number itself.
CREATE TABLE suppressions (
    hash        text PRIMARY KEY,
    scope       text[]      NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
