"""store/database.py against a real PostgreSQL (DCE_TEST_DATABASE_URL, else embedded):
the pool, migrations and the monthly CDR partitions."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import pytest

from store.database import Store, migrations
from store.errors import StoreError
from tests.store.conftest import fetch_rows


async def test_migrate_is_idempotent(store: Store) -> None:
    assert await store.migrate() == []  # the fixture already applied everything
    rows = await fetch_rows(store, "SELECT version FROM schema_migrations ORDER BY version")
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
        assert await stores[0].cdrs.count() == 0
    finally:
        for s in stores:
            await s.close()


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
    rows = await fetch_rows(
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
            names = {r["relname"] for r in await fetch_rows(store, PARTITIONS)}
            if "cdrs_2032_02" in names:
                break
            await asyncio.sleep(0.01)
        wall = datetime(2032, 1, 1, tzinfo=UTC)  # a month later the task adds March
        for _ in range(200):
            names = {r["relname"] for r in await fetch_rows(store, PARTITIONS)}
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


async def test_bad_schema_name_is_refused() -> None:
    with pytest.raises(StoreError):
        Store(schema="x; DROP TABLE cdrs")


async def test_connect_to_nothing_fails_fast() -> None:
    s = Store()
    with pytest.raises((OSError, asyncpg.PostgresError)):
        await s.connect("postgresql://nobody@127.0.0.1:1/none")
