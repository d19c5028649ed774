"""A migrated Store on a fresh schema of the test PostgreSQL, and a helper to read raw rows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from store.database import Store


@pytest.fixture
async def store(database_url: str, pg_schema: str) -> AsyncIterator[Store]:
    s = Store(schema=pg_schema)
    await s.connect(database_url)
    await s.migrate()
    yield s
    await s.close()


async def fetch_rows(store: Store, sql: str) -> list[dict[str, Any]]:
    async with store.pool.acquire() as conn:
        return [dict(r) for r in await conn.fetch(sql)]
