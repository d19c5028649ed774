-- 0001: CDRs (monthly partitions) and the exchange objects as JSONB documents.
-- Applied by exchange/store.py inside one transaction; unqualified names land in the
-- store's schema (search_path). Core PostgreSQL only: no extensions (research/storage.md §4).

-- One row per inbound call (SPEC.md "CDR"); columns mirror exchange/cdr.py Cdr, in order.
-- Partitioned by month of received_at; partitions cdrs_YYYY_MM are created ahead by the
-- store (current + 2 months, at start and daily), and on demand by the CDR writer. There is no
-- DEFAULT partition on purpose: rows parked there would block creating their month later.
CREATE TABLE cdrs (
    call_id          text        NOT NULL,
    a_call_id        text        NOT NULL,
    b_call_id        text,
    trunk_id         text,
    source           text        NOT NULL DEFAULT 'sip',
    caller           text,
    called           text,
    caller_state     text,
    received_at      timestamptz NOT NULL,
    answered_at      timestamptz,
    ended_at         timestamptz NOT NULL,
    duration_ms      bigint      NOT NULL DEFAULT 0,
    disposition      text        NOT NULL,
    sip_status       integer     NOT NULL,
    hangup_side      text,
    campaign_id      text,
    buyer_id         text,
    endpoint         text,
    bid              numeric(12, 6),   -- USD, exact: micro-dollars / 1e6
    price            numeric(12, 6),
    payout           numeric(12, 6),
    billable         boolean     NOT NULL DEFAULT false,
    attempts         integer     NOT NULL DEFAULT 0,
    compliance       text[]      NOT NULL DEFAULT '{}',
    fraud_score      integer,
    attestation      text,
    decision_us      bigint,
    auction          jsonb,
    packets_a_to_b   bigint,
    packets_b_to_a   bigint,
    bytes_a_to_b     bigint,
    bytes_b_to_a     bigint,
    packets_dropped  bigint,
    -- A partitioned table's key must contain the partition key. call_id is unique per call
    -- and a replayed CDR carries the same received_at, so ON CONFLICT DO NOTHING dedupes it.
    PRIMARY KEY (call_id, received_at)
) PARTITION BY RANGE (received_at);

CREATE INDEX cdrs_buyer_received ON cdrs (buyer_id, received_at);
CREATE INDEX cdrs_received ON cdrs (received_at);

-- Exchange objects: the admin API's models (exchange/models.py) encoded by msgspec, so they
-- can gain fields without a migration. Money inside is decimal strings, never floats.
CREATE TABLE trunks (
    id          text PRIMARY KEY,
    doc         jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE campaigns (
    id          text PRIMARY KEY,
    doc         jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- doc holds the buyer without api_key, endpoints and profiles. The API key is kept only as
-- its SHA-256 (hex): keys are random and long, so an unsalted hash is safe and lets the API
-- look a buyer up by key.
CREATE TABLE buyers (
    id            text PRIMARY KEY,
    doc           jsonb       NOT NULL,
    api_key_hash  text,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX buyers_api_key_hash ON buyers (api_key_hash) WHERE api_key_hash IS NOT NULL;

-- Endpoints are tried in position order (failover), so the order is data.
CREATE TABLE endpoints (
    buyer_id    text        NOT NULL REFERENCES buyers (id) ON DELETE CASCADE,
    id          text        NOT NULL,
    doc         jsonb       NOT NULL,
    position    integer     NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (buyer_id, id)
);

CREATE TABLE profiles (
    buyer_id    text        NOT NULL REFERENCES buyers (id) ON DELETE CASCADE,
    id          text        NOT NULL,
    doc         jsonb       NOT NULL,
    position    integer     NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (buyer_id, id)
);
