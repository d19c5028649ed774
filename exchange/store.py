"""The PostgreSQL store: migrations, monthly CDR partitions, and the exchange objects.

Works the same on the embedded server (exchange/pgembed.py) and on an external PostgreSQL
(DCE_DATABASE_URL): core features only, no extensions (research/storage.md §4).

* Migrations are ``exchange/migrations/NNNN_name.sql``, applied in name order, each in its own
  transaction and recorded in ``schema_migrations``. A session advisory lock serialises
  processes that start at once, so each file runs exactly once.
* ``cdrs`` is partitioned by month of ``received_at`` (UTC). Partitions ``cdrs_YYYY_MM`` are
  created ahead: the current month and the next two, at start and then daily
  (:meth:`Store.maintain_partitions`); the CDR writer creates a missing month on demand.
* Trunks, campaigns, buyers, endpoints and profiles are msgspec-encoded JSONB documents, so the
  admin API can add fields without a migration. Buyer API keys are stored as SHA-256 only.

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
from typing import Any

import asyncpg
import msgspec

from exchange.cdr import Cdr
from exchange.errors import ExchangeError
from exchange.models import BidProfile, Buyer, Campaign, Endpoint, ExchangeConfig, Trunk
from exchange.money import to_decimal

logger = logging.getLogger(__name__)

MIGRATIONS_PACKAGE = "exchange.migrations"
# Columns of ``cdrs`` in table order: exactly the fields of Cdr (a test keeps them equal).
CDR_COLUMNS: tuple[str, ...] = Cdr.__struct_fields__
_MONEY_IDX = tuple(CDR_COLUMNS.index(f) for f in ("bid", "price", "payout"))
_ENUM_IDX = tuple(CDR_COLUMNS.index(f) for f in ("disposition", "hangup_side"))
_AUCTION_IDX = CDR_COLUMNS.index("auction")
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_JSON = msgspec.json.Encoder()


class StoreError(ExchangeError):
    """A store operation failed for a reason the operator must fix (the message says which)."""


def hash_api_key(api_key: str) -> str:
    """The stored form of a buyer API key: SHA-256, hex. Keys are random, so no salt is needed."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def migrations() -> list[tuple[str, str]]:
    """(version, SQL) for every migration file, in apply order; version is the file stem."""
    files = [
        f
        for f in importlib.resources.files(MIGRATIONS_PACKAGE).iterdir()
        if f.name.endswith(".sql")
    ]
    files.sort(key=lambda f: f.name)
    return [(f.name[:-4], f.read_text(encoding="utf-8")) for f in files]


def cdr_record(cdr: Cdr) -> tuple[Any, ...]:
    """One ``cdrs`` row in CDR_COLUMNS order, as asyncpg's COPY wants it.

    Raises:
        TypeError: a money field is not an integer (floats are refused, never rounded).
    """
    row = list(msgspec.structs.astuple(cdr))
    for i in _MONEY_IDX:
        v = row[i]
        if v is not None:
            if type(v) is not int:
                raise TypeError(f"{CDR_COLUMNS[i]} must be integer micro-dollars, got {v!r}")
            row[i] = to_decimal(v)
    for i in _ENUM_IDX:
        if row[i] is not None:
            row[i] = str(row[i])
    if row[_AUCTION_IDX] is not None:
        row[_AUCTION_IDX] = _JSON.encode(row[_AUCTION_IDX]).decode()
    return tuple(row)


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


def _doc(obj: msgspec.Struct) -> str:
    return _JSON.encode(obj).decode()


_UPSERT_DOC = (
    "INSERT INTO {t} (id, doc) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE "
    "SET doc = EXCLUDED.doc, updated_at = now() WHERE {t}.doc IS DISTINCT FROM EXCLUDED.doc"
)
# A buyer whose config has no api_key keeps the key it was given through the API.
_UPSERT_BUYER = (
    "INSERT INTO buyers (id, doc, api_key_hash) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE "
    "SET doc = EXCLUDED.doc, "
    "api_key_hash = COALESCE(EXCLUDED.api_key_hash, buyers.api_key_hash), updated_at = now() "
    "WHERE buyers.doc IS DISTINCT FROM EXCLUDED.doc OR (EXCLUDED.api_key_hash IS NOT NULL "
    "AND buyers.api_key_hash IS DISTINCT FROM EXCLUDED.api_key_hash)"
)
_UPSERT_CHILD = (
    "INSERT INTO {t} (buyer_id, id, doc, position) VALUES ($1, $2, $3, $4) "
    "ON CONFLICT (buyer_id, id) DO UPDATE SET doc = EXCLUDED.doc, position = EXCLUDED.position, "
    "updated_at = now() WHERE {t}.doc IS DISTINCT FROM EXCLUDED.doc "
    "OR {t}.position IS DISTINCT FROM EXCLUDED.position"
)


class Store:
    """An asyncpg pool plus the queries the switch needs at start and for the API."""

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

    # -- exchange objects --------------------------------------------------------------------

    async def load_config(self, cfg: ExchangeConfig) -> None:
        """Upsert the config file's trunks, campaigns and buyers (idempotent).

        Objects absent from the file are kept (the admin API may have made them). A buyer's
        endpoints and profiles from the file are upserted with their list position. Rows whose
        document did not change are not written, so ``updated_at`` stays put.
        """
        trunks = [(t.id, _doc(t)) for t in cfg.trunks]
        campaigns = [(c.id, _doc(c)) for c in cfg.campaigns]
        buyers = []
        endpoints = []
        profiles = []
        for b in cfg.buyers:
            bare = msgspec.structs.replace(b, api_key=None, endpoints=[], profiles=[])
            key_hash = hash_api_key(b.api_key) if b.api_key else None
            buyers.append((b.id, _doc(bare), key_hash))
            endpoints += [(b.id, e.id, _doc(e), i) for i, e in enumerate(b.endpoints)]
            profiles += [(b.id, p.id, _doc(p), i) for i, p in enumerate(b.profiles)]
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                if trunks:
                    await conn.executemany(_UPSERT_DOC.format(t="trunks"), trunks)
                if campaigns:
                    await conn.executemany(_UPSERT_DOC.format(t="campaigns"), campaigns)
                if buyers:
                    await conn.executemany(_UPSERT_BUYER, buyers)
                if endpoints:
                    await conn.executemany(_UPSERT_CHILD.format(t="endpoints"), endpoints)
                if profiles:
                    await conn.executemany(_UPSERT_CHILD.format(t="profiles"), profiles)
        except asyncpg.UniqueViolationError as exc:
            raise StoreError(f"config conflicts with stored data: {exc.detail or exc}") from exc
        logger.info(
            "config loaded",
            extra={"trunks": len(trunks), "campaigns": len(campaigns), "buyers": len(buyers)},
        )

    async def load_exchange(self) -> ExchangeConfig:
        """Everything stored, as the config model; endpoints in failover (position) order.

        Buyer API keys come back as None: only their hashes are stored.
        """
        async with (
            self.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            trunk_rows = await conn.fetch("SELECT doc FROM trunks ORDER BY id")
            campaign_rows = await conn.fetch("SELECT doc FROM campaigns ORDER BY id")
            buyer_rows = await conn.fetch("SELECT id, doc FROM buyers ORDER BY id")
            endpoint_rows = await conn.fetch(
                "SELECT buyer_id, doc FROM endpoints ORDER BY buyer_id, position, id"
            )
            profile_rows = await conn.fetch(
                "SELECT buyer_id, doc FROM profiles ORDER BY buyer_id, position, id"
            )
        try:
            endpoints: dict[str, list[Endpoint]] = {r["id"]: [] for r in buyer_rows}
            profiles: dict[str, list[BidProfile]] = {r["id"]: [] for r in buyer_rows}
            for r in endpoint_rows:
                endpoints[r["buyer_id"]].append(msgspec.json.decode(r["doc"], type=Endpoint))
            for r in profile_rows:
                profiles[r["buyer_id"]].append(msgspec.json.decode(r["doc"], type=BidProfile))
            buyers = [
                msgspec.structs.replace(
                    msgspec.json.decode(r["doc"], type=Buyer),
                    endpoints=endpoints[r["id"]],
                    profiles=profiles[r["id"]],
                )
                for r in buyer_rows
            ]
            return ExchangeConfig(
                trunks=[msgspec.json.decode(r["doc"], type=Trunk) for r in trunk_rows],
                campaigns=[msgspec.json.decode(r["doc"], type=Campaign) for r in campaign_rows],
                buyers=buyers,
            )
        except msgspec.ValidationError as exc:
            raise StoreError(f"a stored exchange object no longer validates: {exc}") from exc

    # -- CDRs --------------------------------------------------------------------------------

    async def fetch_cdr(self, call_id: str) -> dict[str, Any] | None:
        """One CDR as a dict (money as Decimal USD, auction decoded), or None."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM cdrs WHERE call_id = $1 ORDER BY received_at DESC LIMIT 1", call_id
            )
        if row is None:
            return None
        out = dict(row)
        if out.get("auction") is not None:
            out["auction"] = msgspec.json.decode(out["auction"])
        return out

    async def count_cdrs(self) -> int:
        async with self.pool.acquire() as conn:
            n = await conn.fetchval("SELECT count(*) FROM cdrs")
        return int(n)
