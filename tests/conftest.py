"""Shared test helpers: a fake wall clock, and the real PostgreSQL/Redis the tests use.

Every test under tests/integration and tests/webrtc is marked ``integration`` here, by path, so
``pytest -m "not integration"`` is the quick unit run and a new file in those folders needs no
marker of its own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

# They start real processes or real network peers: `dce run`, SIPp, baresip, PostgreSQL
# per switch, Chromium, sipua, in-process ICE/DTLS.
INTEGRATION_DIRS = tuple(Path(__file__).resolve().parent / d for d in ("integration", "webrtc"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = item.path.resolve()
        if any(path.is_relative_to(d) for d in INTEGRATION_DIRS):
            item.add_marker(pytest.mark.integration)


class FakeClock:
    """A Clock for code that takes one: monotonic ``now()`` and wall ``wall()``, moved by hand."""

    def __init__(self, wall: datetime | None = None, mono: float = 1000.0) -> None:
        self._wall = wall or datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
        self._mono = mono

    def now(self) -> float:
        return self._mono

    def wall(self) -> datetime:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._wall += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """DCE_TEST_REDIS_URL, or skip: Redis-backed tests need a real server."""
    url = os.environ.get("DCE_TEST_REDIS_URL")
    if not url:
        pytest.skip("DCE_TEST_REDIS_URL not set")
    return url


# --- PostgreSQL (store/embedded.py, store/database.py, store/writer.py) -------------


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """DCE_TEST_DATABASE_URL if set, else an embedded PostgreSQL in a temp dir for the session."""
    url = os.environ.get("DCE_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from store.embedded import EmbeddedPostgres
    from store.errors import EmbeddedPostgresError
    from store.pgbinaries import find_pginstall

    try:
        find_pginstall()
    except EmbeddedPostgresError as exc:
        pytest.skip(str(exc))
    base = Path(tempfile.mkdtemp(prefix="dce-test-pg-"))
    # mkdtemp makes 0700; as root the server runs as dce-postgres, which must enter it.
    base.chmod(0o755)
    pg = EmbeddedPostgres(base / "data")
    dsn = asyncio.run(pg.start())
    try:
        yield dsn
    finally:
        asyncio.run(pg.stop())
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def pg_schema(database_url: str) -> AsyncIterator[str]:
    """A fresh schema name for one test (Store(schema=...) creates it); dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()
