"""Test databases and CDR reads: CREATE/DROP DATABASE per switch, queries through asyncpg.

Every helper here opens a fresh connection and is callable from sync code, also from inside an
async test (:func:`run_sync`). :func:`wait_cdr` polls until the switch has written a call's CDR.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import secrets
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

T = TypeVar("T")


def _with_database(url: str, name: str) -> str:
    """``url`` with its database (path) replaced by ``name``; query string kept."""
    m = re.match(r"^(postgres(?:ql)?://[^/?]*)(/[^?]*)?(\?.*)?$", url)
    if m is None:
        raise ValueError(f"not a PostgreSQL URL: {url!r}")
    return f"{m.group(1)}/{name}{m.group(3) or ''}"


async def _admin_connect(url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(url, timeout=10)
    except asyncpg.InvalidCatalogNameError:
        # DCE_TEST_DATABASE_URL may name a database that does not exist yet: use the
        # maintenance database of the same server to create ours.
        return await asyncpg.connect(_with_database(url, "postgres"), timeout=10)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code, also when called inside a running loop
    (an async test): then it runs on a loop of its own in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def create_database(server_url: str, prefix: str = "dce_it") -> str:
    """CREATE DATABASE ``<prefix>_<random>`` on the server of ``server_url``; returns its URL."""
    name = f"{prefix}_{secrets.token_hex(5)}"

    async def go() -> None:
        conn = await _admin_connect(server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    run_sync(go())
    return _with_database(server_url, name)


def drop_database(server_url: str, db_url: str) -> None:
    name = db_url.split("?")[0].rsplit("/", 1)[1]

    async def go() -> None:
        conn = await _admin_connect(server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    run_sync(go())


def embedded_dsn(data_dir: Path) -> str:
    """The DSN of the switch's embedded PostgreSQL under ``data_dir`` (Unix socket, no TCP)."""
    from store.embedded import dsn_for, socket_dir_for

    return dsn_for(socket_dir_for(data_dir.resolve()))


def fetch(dsn: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Run one query on a fresh connection; rows as dicts."""

    async def go() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return [dict(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return run_sync(go())


def wait_cdr(dsn: str, a_call_id: str, timeout: float = 8.0) -> dict[str, Any]:
    """The one ``cdrs`` row of the call whose caller leg had ``a_call_id``, once written."""
    deadline = time.monotonic() + timeout
    while True:
        rows = fetch(dsn, "SELECT * FROM cdrs WHERE a_call_id = $1", a_call_id)
        if rows:
            assert len(rows) == 1, f"{len(rows)} CDRs for {a_call_id}: {rows}"
            return rows[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no CDR with a_call_id={a_call_id!r} after {timeout}s")
        time.sleep(0.1)


def count_cdrs(dsn: str, like: str | None = None) -> int:
    if like is None:
        rows = fetch(dsn, "SELECT count(*) AS n FROM cdrs")
    else:
        rows = fetch(dsn, "SELECT count(*) AS n FROM cdrs WHERE a_call_id LIKE $1", like)
    return int(rows[0]["n"])
