"""A migrated Store on a fresh schema of the test PostgreSQL, and a helper to read raw rows.

For the embedded server's tests (test_embedded.py, test_pgbinaries.py): a cluster dir per
test module, stopped after each test, and helpers that look at the postmaster from outside.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from store.database import Store
from store.embedded import EmbeddedPostgres
from store.errors import EmbeddedPostgresError
from store.pgbinaries import find_pginstall


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


# --- the embedded server ----------------------------------------------------------------------

try:
    PGINSTALL: Path | None = find_pginstall()
except EmbeddedPostgresError:
    PGINSTALL = None
needs_pgserver = pytest.mark.skipif(PGINSTALL is None, reason="pgserver wheel not installed")


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """A temp dir the server's user may enter (mkdtemp is 0700; as root that user is not us)."""
    d = Path(tempfile.mkdtemp(prefix="dce-pgembed-"))
    d.chmod(0o755)
    yield d
    for pid_file in d.glob("*/pg/postmaster.pid"):
        kill_postmaster(pid_file.parent.parent)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_dir(base: Path) -> Path:
    """One cluster for the module: initdb costs ~0.7 s, so tests reuse it (stopped between)."""
    return base / "shared"


@pytest.fixture
async def data_dir(shared_dir: Path) -> AsyncIterator[Path]:
    yield shared_dir
    # Whatever the test did, leave no server behind: reattach to any survivor, then stop it.
    pg = EmbeddedPostgres(shared_dir)
    try:
        await pg.start()
        await pg.stop()
    except EmbeddedPostgresError:
        kill_postmaster(shared_dir)  # a failed test still holds the dir lock
        raise


def kill_postmaster(data_dir: Path) -> None:
    """Immediate shutdown (SIGQUIT) of a server a failed test left running."""
    try:
        pid = postmaster_pid(data_dir)
    except (OSError, ValueError, IndexError):
        return
    if alive(pid):
        os.kill(pid, signal.SIGQUIT)
        for _ in range(100):
            if not alive(pid):
                break
            time.sleep(0.05)


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rpartition(b")")[2].split()[0] != b"Z"
    except FileNotFoundError:
        return False


async def query(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()
