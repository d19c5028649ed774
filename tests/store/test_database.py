"""store/database.py against a real PostgreSQL (DCE_TEST_DATABASE_URL, else embedded)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from exchange.models import (
    BidProfile,
    Buyer,
    Campaign,
    Caps,
    Endpoint,
    ExchangeConfig,
    Trunk,
)
from store.database import CDR_COLUMNS, Store, StoreError, hash_api_key, migrations


@pytest.fixture
async def store(database_url: str, pg_schema: str) -> AsyncIterator[Store]:
    s = Store(schema=pg_schema)
    await s.connect(database_url)
    await s.migrate()
    yield s
    await s.close()


async def _rows(store: Store, sql: str) -> list[dict[str, Any]]:
    async with store.pool.acquire() as conn:
        return [dict(r) for r in await conn.fetch(sql)]


def _config(api_key: str = "bk_live_9f8e7d6c5b4a") -> ExchangeConfig:
    return ExchangeConfig(
        trunks=[
            Trunk(
                id="t1",
                name="Seller One",
                source_ips=["192.0.2.0/24"],
                payout_share=Decimal("62.5"),
            ),
            Trunk(id="t2", name="Seller Two", username="u", password="p"),
        ],
        campaigns=[
            Campaign(
                id="c1",
                name="Auto insurance",
                numbers=["+18005550100"],
                reserve=Decimal("1.250000"),
            ),
        ],
        buyers=[
            Buyer(
                id="b1",
                name="Buyer One",
                api_key=api_key,
                # Deliberately not in id order: position is the failover order.
                endpoints=[
                    Endpoint(id="zz", uri="sip:first@192.0.2.10"),
                    Endpoint(id="aa", uri="sip:second@192.0.2.11", max_concurrent=5),
                    Endpoint(id="mm", uri="sip:third@192.0.2.12"),
                ],
                profiles=[
                    BidProfile(
                        id="p1",
                        campaign_id="c1",
                        bid=Decimal("12.345678"),
                        caps=Caps(daily=100, budget_daily=Decimal("500")),
                    ),
                    BidProfile(id="p0", numbers=["+18005550100"], bid=Decimal("3")),
                ],
            ),
            Buyer(id="b2", name="Buyer Two"),
        ],
    )


async def test_migrate_is_idempotent(store: Store) -> None:
    assert await store.migrate() == []  # the fixture already applied everything
    rows = await _rows(store, "SELECT version FROM schema_migrations ORDER BY version")
    assert [r["version"] for r in rows] == [v for v, _ in migrations()]


async def test_concurrent_migrations_apply_each_file_once(
    database_url: str, pg_schema: str
) -> None:
    stores = [Store(schema=pg_schema) for _ in range(4)]
    for s in stores:
        await s.connect(database_url)
    try:
        results = await asyncio.gather(*(s.migrate() for s in stores))
        applied = [v for r in results for v in r]
        assert sorted(applied) == [v for v, _ in migrations()]  # exactly once in total
        assert await stores[0].count_cdrs() == 0
    finally:
        for s in stores:
            await s.close()


async def test_cdrs_columns_match_the_cdr_struct(store: Store) -> None:
    rows = await _rows(
        store,
        "SELECT attname FROM pg_attribute WHERE attrelid = 'cdrs'::regclass "
        "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    )
    assert tuple(r["attname"] for r in rows) == CDR_COLUMNS


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (datetime(2026, 11, 23, 15, tzinfo=UTC), ["cdrs_2026_11", "cdrs_2026_12", "cdrs_2027_01"]),
        (datetime(2027, 1, 31, 23, tzinfo=UTC), ["cdrs_2027_01", "cdrs_2027_02", "cdrs_2027_03"]),
    ],
    ids=["year-wrap", "january"],
)
async def test_partitions_for_now_and_two_months_ahead(
    store: Store, now: datetime, expected: list[str]
) -> None:
    assert await store.ensure_partitions(now) == expected
    assert await store.ensure_partitions(now) == []  # daily re-run: nothing new
    rows = await _rows(
        store,
        "SELECT c.relname FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'cdrs'::regclass "
        "ORDER BY c.relname",
    )
    assert [r["relname"] for r in rows] == expected


async def test_partition_bounds_are_utc_months(store: Store) -> None:
    await store.ensure_partitions(datetime(2026, 11, 23, tzinfo=UTC))
    async with store.pool.acquire() as conn:
        # A session far from UTC must not shift the month boundaries.
        await conn.execute("SET TIME ZONE 'Pacific/Kiritimati'")
        for i, ts in enumerate(("2026-11-30 23:59:59.999999+00", "2026-12-01 00:00:00+00")):
            await conn.execute(
                "INSERT INTO cdrs (call_id, a_call_id, received_at, ended_at, disposition, "
                "sip_status) VALUES ($1, 'a', $2::text::timestamptz, $2::text::timestamptz, "
                "'failed', 500)",
                f"edge-{i}",
                ts,
            )
        rows = await conn.fetch(
            "SELECT call_id, tableoid::regclass::text AS part FROM cdrs ORDER BY call_id"
        )
    assert [r["part"] for r in rows] == ["cdrs_2026_11", "cdrs_2026_12"]


async def test_partitions_for_the_real_clock(store: Store) -> None:
    now = datetime.now(UTC)
    created = await store.ensure_partitions(now)
    assert created[0] == f"cdrs_{now.year:04d}_{now.month:02d}"
    assert len(created) == 3


PARTITIONS = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = 'cdrs'::regclass"
)


async def test_partition_task_keeps_months_ahead(store: Store) -> None:
    wall = datetime(2031, 12, 5, tzinfo=UTC)
    task = asyncio.create_task(store.maintain_partitions(lambda: wall, interval=0.01))
    try:
        for _ in range(200):
            names = {r["relname"] for r in await _rows(store, PARTITIONS)}
            if "cdrs_2032_02" in names:
                break
            await asyncio.sleep(0.01)
        wall = datetime(2032, 1, 1, tzinfo=UTC)  # a month later the task adds March
        for _ in range(200):
            names = {r["relname"] for r in await _rows(store, PARTITIONS)}
            if "cdrs_2032_03" in names:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert {"cdrs_2031_12", "cdrs_2032_01", "cdrs_2032_02", "cdrs_2032_03"} <= names


async def test_concurrent_partition_creation(database_url: str, pg_schema: str) -> None:
    stores = [Store(schema=pg_schema) for _ in range(3)]
    for s in stores:
        await s.connect(database_url)
    try:
        await stores[0].migrate()
        now = datetime(2030, 6, 1, tzinfo=UTC)
        results = await asyncio.gather(*(s.ensure_partitions(now) for s in stores))
        assert sorted(n for r in results for n in r) == [
            "cdrs_2030_06",
            "cdrs_2030_07",
            "cdrs_2030_08",
        ]
    finally:
        for s in stores:
            await s.close()


async def test_load_config_twice_changes_nothing(store: Store) -> None:
    cfg = _config()
    await store.load_config(cfg)
    tables = ("trunks", "campaigns", "buyers", "endpoints", "profiles")
    before = {t: await _rows(store, f"SELECT * FROM {t} ORDER BY 1, 2") for t in tables}
    await store.load_config(cfg)
    after = {t: await _rows(store, f"SELECT * FROM {t} ORDER BY 1, 2") for t in tables}
    assert after == before  # updated_at included: no row was rewritten
    assert [len(before[t]) for t in tables] == [2, 1, 2, 3, 2]


async def test_api_key_is_stored_hashed_only(store: Store) -> None:
    key = "bk_live_9f8e7d6c5b4a"
    await store.load_config(_config(api_key=key))
    dump = await _rows(store, "SELECT b.*, b::text AS whole FROM buyers b ORDER BY id")
    assert dump[0]["api_key_hash"] == hash_api_key(key)
    assert len(dump[0]["api_key_hash"]) == 64
    assert all(key not in r["whole"] for r in dump)
    assert dump[1]["api_key_hash"] is None
    # A later config without the key keeps the stored hash; a new key replaces it.
    cfg = _config()
    no_key = ExchangeConfig(
        trunks=cfg.trunks,
        campaigns=cfg.campaigns,
        buyers=[
            Buyer(
                id="b1",
                name="Buyer One",
                endpoints=cfg.buyers[0].endpoints,
                profiles=cfg.buyers[0].profiles,
            ),
            cfg.buyers[1],
        ],
    )
    await store.load_config(no_key)
    assert (await _rows(store, "SELECT api_key_hash FROM buyers WHERE id = 'b1'"))[0][
        "api_key_hash"
    ] == hash_api_key(key)
    await store.load_config(_config(api_key="bk_new"))
    assert (await _rows(store, "SELECT api_key_hash FROM buyers WHERE id = 'b1'"))[0][
        "api_key_hash"
    ] == hash_api_key("bk_new")


async def test_same_api_key_for_two_buyers_is_refused(store: Store) -> None:
    cfg = ExchangeConfig(
        buyers=[Buyer(id="b1", name="x", api_key="k"), Buyer(id="b2", name="y", api_key="k")]
    )
    with pytest.raises(StoreError, match="conflicts"):
        await store.load_config(cfg)


async def test_load_exchange_round_trip(store: Store) -> None:
    cfg = _config()
    await store.load_config(cfg)
    got = await store.load_exchange()
    assert got.trunks == cfg.trunks
    assert got.campaigns == cfg.campaigns
    b1 = got.buyers[0]
    assert b1.api_key is None  # only the hash is kept
    assert [e.id for e in b1.endpoints] == ["zz", "aa", "mm"]
    assert [p.id for p in b1.profiles] == ["p1", "p0"]
    assert b1.profiles[0].bid == Decimal("12.345678")
    assert b1.profiles[0].caps.budget_daily == Decimal("500")
    assert got.buyers[1] == cfg.buyers[1]


async def test_fetch_and_count_with_exact_money(store: Store) -> None:
    # The writer is the only insert path; here a plain INSERT proves the read side.
    await store.ensure_partitions(datetime(2026, 11, 23, tzinfo=UTC))
    received = datetime(2026, 11, 23, 15, 0, 1, 123456, tzinfo=UTC)
    async with store.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO cdrs (call_id, a_call_id, received_at, ended_at, disposition, "
            "sip_status, bid, auction) VALUES ('c-1', 'a-1', $1, $1, 'answered', 200, "
            "999999.999999, '{\"bids\": [1, 2]}')",
            received,
        )
    row = await store.fetch_cdr("c-1")
    assert row is not None
    assert row["bid"] == Decimal("999999.999999")
    assert row["received_at"] == received
    assert row["auction"] == {"bids": [1, 2]}
    assert row["compliance"] == []
    assert await store.fetch_cdr("nope") is None
    assert await store.count_cdrs() == 1


async def test_bad_schema_name_is_refused() -> None:
    with pytest.raises(StoreError):
        Store(schema="x; DROP TABLE cdrs")


async def test_connect_to_nothing_fails_fast() -> None:
    s = Store()
    with pytest.raises((OSError, asyncpg.PostgresError)):
        await s.connect("postgresql://nobody@127.0.0.1:1/none")
