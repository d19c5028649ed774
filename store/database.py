"""The PostgreSQL store: migrations, monthly CDR partitions, and the exchange objects.

Works the same on the embedded server (store/embedded.py) and on an external PostgreSQL
(DCE_DATABASE_URL): core features only, no extensions (research/storage.md §4).

* Migrations are ``store/migrations/NNNN_name.sql``, applied in name order, each in its own
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
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import asyncpg
import msgspec

from compliance.consent import ConsentRecord
from exchange.errors import ExchangeError
from exchange.models import BidProfile, Buyer, Campaign, Endpoint, ExchangeConfig, Trunk
from exchange.money import to_decimal
from store.cdr import Cdr

logger = logging.getLogger(__name__)

MIGRATIONS_PACKAGE = "store.migrations"
# Columns of ``cdrs`` in table order: exactly the fields of Cdr (a test keeps them equal).
CDR_COLUMNS: tuple[str, ...] = Cdr.__struct_fields__
_MONEY_IDX = tuple(CDR_COLUMNS.index(f) for f in ("bid", "price", "payout"))
_ENUM_IDX = tuple(CDR_COLUMNS.index(f) for f in ("disposition", "hangup_side"))
_AUCTION_IDX = CDR_COLUMNS.index("auction")
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_JSON = msgspec.json.Encoder()


class StoreError(ExchangeError):
    """A store operation failed for a reason the operator must fix (the message says which)."""


class StoreConflict(StoreError):
    """A write collides with stored data: a duplicate id or API key (the API answers 409)."""

    status = 409


class StoreNotFound(StoreError):
    """A write names a parent that does not exist, e.g. an endpoint of a missing buyer (404)."""

    status = 404


# Document tables of the admin API; names are interpolated into SQL, so only these are allowed.
DocTable = Literal["trunks", "campaigns"]
ChildTable = Literal["endpoints", "profiles"]
_DOC_TABLES = frozenset({"trunks", "campaigns"})
_CHILD_TABLES = frozenset({"endpoints", "profiles"})
# CDR columns for list views: everything but the (large) auction record.
CDR_LIST_COLUMNS: tuple[str, ...] = tuple(c for c in CDR_COLUMNS if c != "auction")
_CDR_LIST_SQL = ", ".join(CDR_LIST_COLUMNS)
_S = TypeVar("_S", bound=msgspec.Struct)


class ErasedRows(msgspec.Struct, frozen=True, kw_only=True):
    """Rows a GDPR erasure rewrote in the database."""

    cdrs: int
    consents: int


def _table(name: str, allowed: frozenset[str]) -> str:
    if name not in allowed:
        raise ValueError(f"not an admin API table: {name!r}")  # our bug, never user input
    return name


def scrub(value: Any, pattern: re.Pattern[str], replacement: str) -> Any:
    """``value`` (decoded JSON) with every match of ``pattern`` in its strings replaced."""
    if isinstance(value, str):
        return pattern.sub(replacement, value)
    if isinstance(value, list):
        return [scrub(v, pattern, replacement) for v in value]
    if isinstance(value, dict):
        return {
            scrub(k, pattern, replacement): scrub(v, pattern, replacement) for k, v in value.items()
        }
    return value


def number_pattern(forms: Sequence[str]) -> re.Pattern[str]:
    """Any of ``forms`` (spellings of one number) not inside a longer run of digits."""
    alts = "|".join(re.escape(f) for f in sorted(set(forms), key=len, reverse=True))
    return re.compile(rf"(?<![0-9+])(?:{alts})(?![0-9])")


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

_INSERT_CHILD = "INSERT INTO {t} (buyer_id, id, doc, position) VALUES ($1, $2, $3, $4)"


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

    # -- admin API: trunks and campaigns -----------------------------------------------------

    async def list_docs(self, table: DocTable, kind: type[_S]) -> list[_S]:
        """Every document of ``table`` in id order, decoded as ``kind``."""
        t = _table(table, _DOC_TABLES)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(f"SELECT doc FROM {t} ORDER BY id")
        return [msgspec.json.decode(r["doc"], type=kind) for r in rows]

    async def get_doc(self, table: DocTable, obj_id: str, kind: type[_S]) -> _S | None:
        t = _table(table, _DOC_TABLES)
        async with self.pool.acquire() as conn:
            doc = await conn.fetchval(f"SELECT doc FROM {t} WHERE id = $1", obj_id)
        return None if doc is None else msgspec.json.decode(doc, type=kind)

    async def insert_doc(self, table: DocTable, obj: Trunk | Campaign) -> None:
        """Store a new object. Raises StoreConflict if its id is taken."""
        t = _table(table, _DOC_TABLES)
        try:
            async with self.pool.acquire() as conn:
                await conn.execute(f"INSERT INTO {t} (id, doc) VALUES ($1, $2)", obj.id, _doc(obj))
        except asyncpg.UniqueViolationError as exc:
            raise StoreConflict(f"{t[:-1]} {obj.id!r} already exists") from exc

    async def update_doc(self, table: DocTable, obj: Trunk | Campaign) -> bool:
        """Replace a stored object; False if there is none with that id."""
        t = _table(table, _DOC_TABLES)
        async with self.pool.acquire() as conn:
            status = await conn.execute(
                f"UPDATE {t} SET doc = $2, updated_at = now() WHERE id = $1", obj.id, _doc(obj)
            )
        return bool(status != "UPDATE 0")

    async def delete_doc(self, table: DocTable, obj_id: str) -> bool:
        t = _table(table, _DOC_TABLES)
        async with self.pool.acquire() as conn:
            status = await conn.execute(f"DELETE FROM {t} WHERE id = $1", obj_id)
        return bool(status != "DELETE 0")

    # -- admin API: buyers, endpoints, profiles ----------------------------------------------

    async def buyer_for_key(self, key_hash: str) -> str | None:
        """The id of the buyer whose API key hashes to ``key_hash`` (``hash_api_key``)."""
        async with self.pool.acquire() as conn:
            buyer_id = await conn.fetchval(
                "SELECT id FROM buyers WHERE api_key_hash = $1", key_hash
            )
        return None if buyer_id is None else str(buyer_id)

    async def list_buyers(self, only: str | None = None) -> list[Buyer]:
        """Buyers (or just ``only``) with endpoints and profiles in position order; api_key None."""
        async with (
            self.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            where = "" if only is None else " WHERE id = $1"
            child_where = "" if only is None else " WHERE buyer_id = $1"
            args = () if only is None else (only,)
            buyers = await conn.fetch(f"SELECT id, doc FROM buyers{where} ORDER BY id", *args)
            endpoints = await conn.fetch(
                f"SELECT buyer_id, doc FROM endpoints{child_where} ORDER BY position, id", *args
            )
            profiles = await conn.fetch(
                f"SELECT buyer_id, doc FROM profiles{child_where} ORDER BY position, id", *args
            )
        eps: dict[str, list[Endpoint]] = {r["id"]: [] for r in buyers}
        profs: dict[str, list[BidProfile]] = {r["id"]: [] for r in buyers}
        for r in endpoints:
            eps[r["buyer_id"]].append(msgspec.json.decode(r["doc"], type=Endpoint))
        for r in profiles:
            profs[r["buyer_id"]].append(msgspec.json.decode(r["doc"], type=BidProfile))
        return [
            msgspec.structs.replace(
                msgspec.json.decode(r["doc"], type=Buyer),
                api_key=None,
                endpoints=eps[r["id"]],
                profiles=profs[r["id"]],
            )
            for r in buyers
        ]

    async def has_buyer(self, buyer_id: str) -> bool:
        async with self.pool.acquire() as conn:
            found = await conn.fetchval("SELECT true FROM buyers WHERE id = $1", buyer_id)
        return bool(found)

    async def get_buyer(self, buyer_id: str) -> Buyer | None:
        found = await self.list_buyers(only=buyer_id)
        return found[0] if found else None

    async def insert_buyer(self, buyer: Buyer, key_hash: str) -> None:
        """Store a new buyer with its endpoints and profiles, in one transaction.

        Raises:
            StoreConflict: the id, an endpoint or profile id, or the API key is taken.
        """
        bare = msgspec.structs.replace(buyer, api_key=None, endpoints=[], profiles=[])
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO buyers (id, doc, api_key_hash) VALUES ($1, $2, $3)",
                    buyer.id,
                    _doc(bare),
                    key_hash,
                )
                if buyer.endpoints:
                    await conn.executemany(
                        _INSERT_CHILD.format(t="endpoints"),
                        [(buyer.id, e.id, _doc(e), i) for i, e in enumerate(buyer.endpoints)],
                    )
                if buyer.profiles:
                    await conn.executemany(
                        _INSERT_CHILD.format(t="profiles"),
                        [(buyer.id, p.id, _doc(p), i) for i, p in enumerate(buyer.profiles)],
                    )
        except asyncpg.UniqueViolationError as exc:
            what = "API key" if exc.constraint_name == "buyers_api_key_hash" else "id"
            raise StoreConflict(f"buyer {buyer.id!r}: {what} already in use") from exc

    async def update_buyer(self, buyer: Buyer, key_hash: str | None = None) -> bool:
        """Replace a buyer's own fields (its endpoints and profiles are kept); a ``key_hash``
        replaces its API key. False if there is no such buyer.

        Raises:
            StoreConflict: the new API key is another buyer's.
        """
        bare = msgspec.structs.replace(buyer, api_key=None, endpoints=[], profiles=[])
        try:
            async with self.pool.acquire() as conn:
                status = await conn.execute(
                    "UPDATE buyers SET doc = $2, api_key_hash = COALESCE($3, api_key_hash), "
                    "updated_at = now() WHERE id = $1",
                    buyer.id,
                    _doc(bare),
                    key_hash,
                )
        except asyncpg.UniqueViolationError as exc:
            raise StoreConflict(f"buyer {buyer.id!r}: API key already in use") from exc
        return bool(status != "UPDATE 0")

    async def delete_buyer(self, buyer_id: str) -> bool:
        """Delete a buyer with its endpoints and profiles (ON DELETE CASCADE)."""
        async with self.pool.acquire() as conn:
            status = await conn.execute("DELETE FROM buyers WHERE id = $1", buyer_id)
        return bool(status != "DELETE 0")

    async def list_children(self, table: ChildTable, buyer_id: str, kind: type[_S]) -> list[_S]:
        """A buyer's endpoints or profiles in position (failover) order."""
        t = _table(table, _CHILD_TABLES)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT doc FROM {t} WHERE buyer_id = $1 ORDER BY position, id", buyer_id
            )
        return [msgspec.json.decode(r["doc"], type=kind) for r in rows]

    async def get_child(
        self, table: ChildTable, buyer_id: str, obj_id: str, kind: type[_S]
    ) -> _S | None:
        t = _table(table, _CHILD_TABLES)
        async with self.pool.acquire() as conn:
            doc = await conn.fetchval(
                f"SELECT doc FROM {t} WHERE buyer_id = $1 AND id = $2", buyer_id, obj_id
            )
        return None if doc is None else msgspec.json.decode(doc, type=kind)

    async def insert_child(
        self, table: ChildTable, buyer_id: str, obj: Endpoint | BidProfile
    ) -> None:
        """Append an endpoint or profile after the buyer's last one.

        Raises:
            StoreConflict: the buyer already has one with this id.
            StoreNotFound: there is no such buyer.
        """
        t = _table(table, _CHILD_TABLES)
        try:
            async with self.pool.acquire() as conn:
                await conn.execute(
                    f"INSERT INTO {t} (buyer_id, id, doc, position) SELECT $1, $2, $3, "
                    f"COALESCE((SELECT max(position) + 1 FROM {t} WHERE buyer_id = $1), 0)",
                    buyer_id,
                    obj.id,
                    _doc(obj),
                )
        except asyncpg.UniqueViolationError as exc:
            raise StoreConflict(
                f"{t[:-1]} {obj.id!r} of buyer {buyer_id!r} already exists"
            ) from exc
        except asyncpg.ForeignKeyViolationError as exc:
            raise StoreNotFound(f"no buyer {buyer_id!r}") from exc

    async def update_child(
        self, table: ChildTable, buyer_id: str, obj: Endpoint | BidProfile
    ) -> bool:
        """Replace an endpoint or profile in place (its position is kept)."""
        t = _table(table, _CHILD_TABLES)
        async with self.pool.acquire() as conn:
            status = await conn.execute(
                f"UPDATE {t} SET doc = $3, updated_at = now() WHERE buyer_id = $1 AND id = $2",
                buyer_id,
                obj.id,
                _doc(obj),
            )
        return bool(status != "UPDATE 0")

    async def delete_child(self, table: ChildTable, buyer_id: str, obj_id: str) -> bool:
        t = _table(table, _CHILD_TABLES)
        async with self.pool.acquire() as conn:
            status = await conn.execute(
                f"DELETE FROM {t} WHERE buyer_id = $1 AND id = $2", buyer_id, obj_id
            )
        return bool(status != "DELETE 0")

    # -- admin API: CDR queries --------------------------------------------------------------

    async def list_cdrs(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        buyer_id: str | None = None,
        disposition: str | None = None,
        campaign_id: str | None = None,
        trunk_id: str | None = None,
        before: tuple[datetime, str] | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """CDRs newest first (``received_at`` then ``call_id`` descending), without ``auction``.

        ``since`` is inclusive and ``until`` exclusive; ``before`` is a keyset cursor: only rows
        strictly after it in this order (the last row of the previous page).
        """
        conds: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if since is not None:
            conds.append(f"received_at >= {arg(since)}")
        if until is not None:
            conds.append(f"received_at < {arg(until)}")
        for column, value in (
            ("buyer_id", buyer_id),
            ("disposition", disposition),
            ("campaign_id", campaign_id),
            ("trunk_id", trunk_id),
        ):
            if value is not None:
                conds.append(f"{column} = {arg(value)}")
        if before is not None:
            conds.append(f"(received_at, call_id) < ({arg(before[0])}, {arg(before[1])})")
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        sql = (
            f"SELECT {_CDR_LIST_SQL} FROM cdrs{where} "
            f"ORDER BY received_at DESC, call_id DESC LIMIT {arg(limit)}"
        )
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(sql, *args)
        return [dict(r) for r in rows]

    # -- consent records ---------------------------------------------------------------------

    async def insert_consent(self, record: ConsentRecord) -> None:
        """Store a new consent record. Raises StoreConflict if its id is taken."""
        try:
            async with self.pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO consents (id, caller, campaign_id, doc) VALUES ($1, $2, $3, $4)",
                    record.id,
                    record.caller,
                    record.campaign_id,
                    _doc(record),
                )
        except asyncpg.UniqueViolationError as exc:
            raise StoreConflict(f"consent {record.id!r} already exists") from exc

    async def update_consent(self, record: ConsentRecord) -> bool:
        """Replace a stored record (a revocation); False if there is none with that id."""
        async with self.pool.acquire() as conn:
            status = await conn.execute(
                "UPDATE consents SET caller = $2, campaign_id = $3, doc = $4, updated_at = now() "
                "WHERE id = $1",
                record.id,
                record.caller,
                record.campaign_id,
                _doc(record),
            )
        return bool(status != "UPDATE 0")

    async def get_consent(self, record_id: str) -> ConsentRecord | None:
        async with self.pool.acquire() as conn:
            doc = await conn.fetchval("SELECT doc FROM consents WHERE id = $1", record_id)
        return None if doc is None else msgspec.json.decode(doc, type=ConsentRecord)

    async def list_consents(
        self,
        *,
        caller: str | None = None,
        campaign_id: str | None = None,
        after_id: str | None = None,
        limit: int | None = None,
    ) -> list[ConsentRecord]:
        """Consent records in id order, filtered; ``after_id`` is a keyset cursor."""
        conds: list[str] = []
        args: list[Any] = []
        for cond, value in (
            ("caller = ${}", caller),
            ("campaign_id = ${}", campaign_id),
            ("id > ${}", after_id),
        ):
            if value is not None:
                args.append(value)
                conds.append(cond.format(len(args)))
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        sql = f"SELECT doc FROM consents{where} ORDER BY id"
        if limit is not None:
            args.append(limit)
            sql += f" LIMIT ${len(args)}"
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(sql, *args)
        return [msgspec.json.decode(r["doc"], type=ConsentRecord) for r in rows]

    async def load_consents(self) -> list[ConsentRecord]:
        """Every consent record, to fill the compliance gate's ConsentStore at start."""
        return await self.list_consents()

    # -- GDPR erasure ------------------------------------------------------------------------

    async def load_suppressions(self) -> dict[str, list[str]]:
        """Erased numbers' hashes -> the DNC lists they stay blocked on (for ``Suppression``)."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("SELECT hash, scope FROM suppressions ORDER BY hash")
        return {r["hash"]: list(r["scope"]) for r in rows}

    async def erase_caller(
        self, forms: Sequence[str], replacement: str, scope: Sequence[str]
    ) -> ErasedRows:
        """Replace a caller number by ``replacement`` in CDRs and consent records, and keep a
        suppression entry ``replacement`` -> ``scope``, all in one transaction.

        ``forms`` are the number's spellings (E.164 first, then e.g. without the plus). CDRs
        whose ``caller`` is one of them get ``replacement`` there and in every string of their
        auction record; consent records likewise, in every field.
        """
        pattern = number_pattern(forms)
        wanted = list(forms)
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT call_id, received_at, auction FROM cdrs WHERE caller = ANY($1::text[]) "
                "FOR UPDATE",
                wanted,
            )
            if rows:
                await conn.executemany(
                    "UPDATE cdrs SET caller = $1, auction = $2::jsonb "
                    "WHERE call_id = $3 AND received_at = $4",
                    [
                        (
                            replacement,
                            None
                            if r["auction"] is None
                            else _JSON.encode(
                                scrub(msgspec.json.decode(r["auction"]), pattern, replacement)
                            ).decode(),
                            r["call_id"],
                            r["received_at"],
                        )
                        for r in rows
                    ],
                )
            consents = await conn.fetch(
                "SELECT id, doc FROM consents WHERE caller = ANY($1::text[]) FOR UPDATE", wanted
            )
            if consents:
                await conn.executemany(
                    "UPDATE consents SET caller = $2, doc = $3::jsonb, updated_at = now() "
                    "WHERE id = $1",
                    [
                        (
                            r["id"],
                            replacement,
                            _JSON.encode(
                                scrub(msgspec.json.decode(r["doc"]), pattern, replacement)
                            ).decode(),
                        )
                        for r in consents
                    ],
                )
            await conn.execute(
                "INSERT INTO suppressions (hash, scope) VALUES ($1, $2::text[]) "
                "ON CONFLICT (hash) DO UPDATE SET scope = ARRAY(SELECT DISTINCT s FROM "
                "unnest(suppressions.scope || EXCLUDED.scope) AS s ORDER BY s), updated_at = now()",
                replacement,
                sorted(set(scope)),
            )
        return ErasedRows(cdrs=len(rows), consents=len(consents))
