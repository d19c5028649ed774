"""The PostgreSQL store: the connection pool, migrations and the monthly CDR partitions.

Works the same on the embedded server (store/embedded.py) and on an external PostgreSQL
(DCE_DATABASE_URL): core features only, no extensions (research/storage.md §4).

* Migrations are ``store/migrations/NNNN_name.sql``, applied in name order, each in its own
  transaction and recorded in ``schema_migrations``. A session advisory lock serialises
  processes that start at once, so each file runs exactly once.
* ``cdrs`` is partitioned by month of ``received_at`` (UTC). Partitions ``cdrs_YYYY_MM`` are
  created ahead: the current month and the next two, at start and then daily
  (:meth:`Store.maintain_partitions`); the CDR writer creates a missing month on demand.

The tables hang off the ``Store`` in four groups that share its pool: ``store.exchange``
(trunks, campaigns, buyers, endpoints, profiles: store/exchange.py), ``store.cdrs`` (CDR
queries: store/cdrs.py), ``store.compliance`` (consent, suppressions, erasure:
store/compliance.py) and ``store.dnc`` (DNC lists: store/dnc.py).

Several switch instances may share one database. Triggers (migration 0005) version every change
to what an instance holds in memory and NOTIFY ``SYNC_CHANNEL`` in the writing transaction;
:meth:`Store.versions` reads the versions and :meth:`Store.listener` opens the dedicated
connection that LISTENs (dce/sync.py keeps it up).

Every statement uses unqualified names; a Store built with ``schema=`` sets ``search_path``
so tests (or tenants) get their own copy of every table.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.resources
import logging
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import asyncpg

from store.cdrs import CdrTable
from store.compliance import ComplianceTables
from store.dnc import DncTables
from store.errors import StoreConflict, StoreError
from store.exchange import ExchangeTables

__all__ = [
    "MIGRATIONS_PACKAGE",
    "SYNC_CHANNEL",
    "SYNC_KINDS",
    "Store",
    "add_months",
    "create_partitions",
    "lock_key",
    "migrations",
    "month_of",
    "partition_name",
]

logger = logging.getLogger(__name__)

MIGRATIONS_PACKAGE = "store.migrations"
# NOTIFY channel of migration 0005; the payload is "<schema> <kind> <version>".
SYNC_CHANNEL = "dce_sync"
SYNC_KINDS = ("exchange", "consent", "erasure", "dnc")
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def migrations() -> list[tuple[str, str]]:
    """(version, SQL) for every migration file, in apply order; version is the file stem."""
    files = [
        f
        for f in importlib.resources.files(MIGRATIONS_PACKAGE).iterdir()
        if f.name.endswith(".sql")
    ]
    files.sort(key=lambda f: f.name)
    return [(f.name[:-4], f.read_text(encoding="utf-8")) for f in files]


def month_of(ts: datetime) -> tuple[int, int]:
    """(year, month) in UTC; a naive timestamp is taken as UTC, as asyncpg stores it."""
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC)
    return ts.year, ts.month


def add_months(year: int, month: int, n: int) -> tuple[int, int]:
    q, r = divmod(month - 1 + n, 12)
    return year + q, r + 1


def partition_name(year: int, month: int) -> str:
    return f"cdrs_{year:04d}_{month:02d}"


def lock_key(purpose: str, schema: str | None) -> int:
    """A signed 64-bit advisory lock key for ``purpose`` within ``schema``."""
    digest = hashlib.sha256(f"dce:{purpose}:{schema or ''}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def create_partitions(
    conn: asyncpg.Connection, months: Iterable[tuple[int, int]], schema: str | None = None
) -> list[str]:
    """Create the missing monthly partitions of ``cdrs``; returns the names created.

    Runs under a transaction-scoped advisory lock so two processes never race on the DDL.
    """
    wanted = {partition_name(y, m): (y, m) for y, m in months}
    existing = await _partitions(conn)
    missing = sorted(set(wanted) - existing)
    if not missing:
        return []
    created: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key("partitions", schema))
        existing = await _partitions(conn)
        for name in missing:
            if name in existing:
                continue
            y, m = wanted[name]
            ny, nm = add_months(y, m, 1)
            # Bounds carry +00 so the session TimeZone cannot shift a month.
            await conn.execute(
                f'CREATE TABLE "{name}" PARTITION OF cdrs FOR VALUES '
                f"FROM ('{y:04d}-{m:02d}-01 00:00:00+00') TO ('{ny:04d}-{nm:02d}-01 00:00:00+00')"
            )
            created.append(name)
    if created:
        logger.info("created CDR partitions %s", ", ".join(created))
    return created


async def _partitions(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'cdrs'::regclass"
    )
    return {r["relname"] for r in rows}


class Store:
    """An asyncpg pool, the schema it keeps up to date, and the table groups over it."""

    def __init__(
        self,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 5,
        command_timeout: float = 30.0,
    ) -> None:
        if schema is not None and not _SCHEMA_RE.match(schema):
            raise StoreError(f"schema name {schema!r} must match {_SCHEMA_RE.pattern}")
        self.schema = schema
        self._min_size = min_size
        self._max_size = max_size
        self._command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None
        self._dsn: str | None = None
        self.exchange = ExchangeTables(self)
        self.cdrs = CdrTable(self)
        self.compliance = ComplianceTables(self)
        self.dnc = DncTables(self)

    @property
    def dsn(self) -> str:
        if self._dsn is None:
            raise StoreError("Store.connect() has not been called")
        return self._dsn

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("Store.connect() has not been called")
        return self._pool

    def server_settings(self) -> dict[str, str]:
        """Session settings for every connection to this store (also the CDR writer's)."""
        settings = {"application_name": "dce"}
        if self.schema is not None:
            settings["search_path"] = self.schema
        return settings

    async def connect(self, dsn: str) -> None:
        """Open a small pool. Raises the connection error if the database is unreachable."""
        if self._pool is not None:
            return
        self._pool = await asyncpg.create_pool(
            dsn,
            min_size=self._min_size,
            max_size=self._max_size,
            command_timeout=self._command_timeout,
            server_settings=self.server_settings(),
        )
        self._dsn = dsn

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    # -- shared state (several instances) -----------------------------------------------------

    async def versions(self) -> dict[str, tuple[int, int]]:
        """kind -> (version, resets) of every kind in SYNC_KINDS (migration 0005)."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("SELECT kind, version, resets FROM sync_versions")
        return {r["kind"]: (r["version"], r["resets"]) for r in rows}

    async def current_schema(self) -> str:
        """The schema the tables live in (what the notifications name)."""
        async with self.pool.acquire() as conn:
            return str(await conn.fetchval("SELECT current_schema()"))

    async def listener(self, timeout: float = 10.0) -> asyncpg.Connection:
        """A new connection of its own (not from the pool) for LISTEN; the caller closes it."""
        conn: asyncpg.Connection = await asyncpg.connect(
            self.dsn, timeout=timeout, command_timeout=self._command_timeout,
            server_settings=self.server_settings(),
        )  # fmt: skip
        return conn

    async def check_secret(self, name: str, fingerprint: str) -> None:
        """Record the fingerprint of secret ``name`` if none is, else insist it is the same.

        Raises:
            StoreConflict: another fingerprint is recorded (the instances' secrets differ).
        """
        async with self.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO shared_secrets (name, fingerprint) VALUES ($1, $2) "
                "ON CONFLICT (name) DO NOTHING",
                name,
                fingerprint,
            )
            stored = await conn.fetchval(
                "SELECT fingerprint FROM shared_secrets WHERE name = $1", name
            )
        if stored != fingerprint:
            raise StoreConflict(f"the {name} differs from the one this database was used with")

    # -- schema ------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply pending migrations in order; returns the versions applied by this call."""
        applied: list[str] = []
        key = lock_key("migrate", self.schema)
        async with self.pool.acquire() as conn:
            # Session-level: the lock spans several transactions, one per migration file.
            await conn.execute("SELECT pg_advisory_lock($1)", key)
            try:
                if self.schema is not None:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    "version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                rows = await conn.fetch("SELECT version FROM schema_migrations")
                done = {r["version"] for r in rows}
                for version, sql in migrations():
                    if version in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(sql)
                        await conn.execute(
                            "INSERT INTO schema_migrations (version) VALUES ($1)", version
                        )
                    logger.info("applied migration %s", version)
                    applied.append(version)
            finally:
                # A dead connection drops the lock by itself; do not mask the real error.
                with contextlib.suppress(Exception):
                    await conn.execute("SELECT pg_advisory_unlock($1)", key)
        return applied

    async def ensure_partitions(self, now: datetime, months_ahead: int = 2) -> list[str]:
        """Create partitions for ``now``'s month and ``months_ahead`` more; returns new names."""
        y, m = month_of(now)
        months = [add_months(y, m, i) for i in range(months_ahead + 1)]
        async with self.pool.acquire() as conn:
            return await create_partitions(conn, months, self.schema)

    async def maintain_partitions(
        self, wall: Callable[[], datetime], interval: float = 86400.0
    ) -> None:
        """Run forever (as a supervised task): ensure partitions now and every ``interval`` s."""
        while True:
            try:
                await self.ensure_partitions(wall())
                delay = interval
            except Exception:
                # Task edge: log and retry soon; two months of headroom make this harmless.
                logger.exception("creating CDR partitions failed; retrying in 60 s")
                delay = min(interval, 60.0)
            await asyncio.sleep(delay)
