"""store/cdrs.py against a real PostgreSQL: the table matches the Cdr struct; exact reads."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from store.cdrs import CDR_COLUMNS
from store.database import Store
from tests.store.conftest import fetch_rows


async def test_cdrs_columns_match_the_cdr_struct(store: Store) -> None:
    rows = await fetch_rows(
        store,
        "SELECT attname FROM pg_attribute WHERE attrelid = 'cdrs'::regclass "
        "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    )
    assert tuple(r["attname"] for r in rows) == CDR_COLUMNS


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
    row = await store.cdrs.fetch("c-1")
    assert row is not None
    assert row["bid"] == Decimal("999999.999999")
    assert row["received_at"] == received
    assert row["auction"] == {"bids": [1, 2]}
    assert row["compliance"] == []
    assert await store.cdrs.fetch("nope") is None
    assert await store.cdrs.count() == 1
