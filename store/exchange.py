"""The exchange object tables: trunks, campaigns, buyers and their endpoints and profiles.

Each object is a msgspec-encoded JSONB document, so the admin API can add fields without a
migration. Endpoints and profiles belong to a buyer and keep their list ``position`` (the
failover order). Buyer API keys are stored as SHA-256 only (``hash_api_key``).

``ExchangeTables`` is reached as ``Store.exchange``: ``seed_config`` stores the config file at
the first start only (table ``config_seed`` records it), ``sync_config`` compares a config file
with what is stored and applies the difference (``dce config apply``; the diff itself is
store/config_diff.py), ``read_config`` gives back everything stored as one ``ExchangeConfig``
(the switch's snapshot), and the rest are the admin API's per-object reads and writes.
``upsert_config`` writes a whole config unconditionally (tests seed with it).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Literal, TypeVar

import asyncpg
import msgspec

from exchange.models import BidProfile, Buyer, Campaign, Endpoint, ExchangeConfig, Trunk
from store.config_diff import ConfigDiff, ObjectChange, plan
from store.errors import StoreConflict, StoreError, StoreNotFound

if TYPE_CHECKING:
    from store.database import Store

__all__ = ["ChildTable", "DocTable", "ExchangeTables", "hash_api_key"]

logger = logging.getLogger(__name__)

# Document tables of the admin API; names are interpolated into SQL, so only these are allowed.
DocTable = Literal["trunks", "campaigns"]
ChildTable = Literal["endpoints", "profiles"]
_DOC_TABLES = frozenset({"trunks", "campaigns"})
_CHILD_TABLES = frozenset({"endpoints", "profiles"})
_S = TypeVar("_S", bound=msgspec.Struct)
_JSON = msgspec.json.Encoder()

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
# Seeding and applying a config file take this lock for their whole transaction: one at a time,
# also across switch instances that share the database. Plain reads are not blocked.
_LOCK_CONFIG = "LOCK TABLE config_seed IN SHARE ROW EXCLUSIVE MODE"


def hash_api_key(api_key: str) -> str:
    """The stored form of a buyer API key: SHA-256, hex. Keys are random, so no salt is needed."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def _table(name: str, allowed: frozenset[str]) -> str:
    if name not in allowed:
        raise ValueError(f"not an admin API table: {name!r}")  # our bug, never user input
    return name


def _doc(obj: msgspec.Struct) -> str:
    return _JSON.encode(obj).decode()


def _bare(buyer: Buyer) -> Buyer:
    """A buyer's own row: no key (only its hash is stored), endpoints and profiles apart."""
    return msgspec.structs.replace(buyer, api_key=None, endpoints=[], profiles=[])


class ExchangeTables:
    """Trunks, campaigns, buyers, endpoints and profiles (``Store.exchange``)."""

    def __init__(self, db: Store) -> None:
        self._db = db

    # -- the whole config ----------------------------------------------------------------------

    async def upsert_config(self, cfg: ExchangeConfig) -> None:
        """Upsert trunks, campaigns and buyers, whatever is stored (idempotent).

        ``dce run`` seeds with ``seed_config`` instead; tests use this to fill a database.
        Objects absent from ``cfg`` are kept. A buyer's
        endpoints and profiles from the file are upserted with their list position. Rows whose
        document did not change are not written, so ``updated_at`` stays put.

        Raises:
            StoreError: the file conflicts with stored data (e.g. an API key already in use).
        """
        hashes = {b.id: hash_api_key(b.api_key) if b.api_key else None for b in cfg.buyers}
        try:
            async with self._db.pool.acquire() as conn, conn.transaction():
                await _write(conn, cfg, hashes)
        except asyncpg.UniqueViolationError as exc:
            raise StoreError(f"config conflicts with stored data: {exc.detail or exc}") from exc
        logger.info(
            "config loaded",
            extra={
                "trunks": len(cfg.trunks),
                "campaigns": len(cfg.campaigns),
                "buyers": len(cfg.buyers),
            },
        )

    async def seed_config(
        self,
        cfg: ExchangeConfig,
        *,
        source: str,
        check: Callable[[ExchangeConfig], object] | None = None,
    ) -> bool:
        """Seed a database that was never seeded with the config file's objects; True if so.

        Only inserts: an object whose id is already stored (made through the admin API before
        any file was given) is left as it is. A file without trunks, campaigns and buyers
        seeds nothing. Once seeded (here, by ``sync_config``, or by migration 0004 on a
        database that already held objects), a database is never seeded again.

        Args:
            source: what seeded it, recorded in ``config_seed`` (the file's path).
            check: called with everything stored after the seed, before it commits; an
                exception it raises (e.g. ``compile_index``'s ``ConfigInvalid``) rolls back.

        Raises:
            StoreError: the file conflicts with stored data (an API key already in use).
        """
        if not (cfg.trunks or cfg.campaigns or cfg.buyers):
            return False
        try:
            async with self._db.pool.acquire() as conn, conn.transaction():
                await conn.execute(_LOCK_CONFIG)
                if await conn.fetchval("SELECT true FROM config_seed"):
                    return False
                stored = await _read_config(conn)
                new = _missing(cfg, stored)
                if check is not None:
                    check(
                        ExchangeConfig(
                            trunks=[*stored.trunks, *new.trunks],
                            campaigns=[*stored.campaigns, *new.campaigns],
                            buyers=[*stored.buyers, *new.buyers],
                        )
                    )
                hashes = {b.id: hash_api_key(b.api_key) if b.api_key else None for b in new.buyers}
                await _write(conn, new, hashes)
                await conn.execute("INSERT INTO config_seed (source) VALUES ($1)", source)
        except asyncpg.UniqueViolationError as exc:
            raise StoreError(f"config conflicts with stored data: {exc.detail or exc}") from exc
        logger.info(
            "database seeded from the config file",
            extra={
                "source": source,
                "trunks": len(new.trunks),
                "campaigns": len(new.campaigns),
                "buyers": len(new.buyers),
            },
        )
        return True

    async def sync_config(
        self,
        cfg: ExchangeConfig,
        *,
        prune: bool = False,
        dry_run: bool = False,
        check: Callable[[ExchangeConfig], object] | None = None,
        source: str = "dce config apply",
    ) -> ConfigDiff:
        """Compare a config file with what is stored and, unless ``dry_run``, apply it.

        The rules are store/config_diff.py's. Applying writes the objects that differ and
        deletes the pruned ones in one transaction, and marks the database seeded.

        Args:
            check: called with the whole resulting config before anything is written (also on
                a dry run); an exception it raises aborts.
            source: recorded in ``config_seed`` when this is the first write of a config.

        Raises:
            ConfigInvalid: the file repeats an id or an API key.
            StoreConflict: an API key of the file is a kept buyer's (one the file does not
                name, or one without ``api_key`` in the file).
        """
        file_hashes = {b.id: hash_api_key(b.api_key) for b in cfg.buyers if b.api_key}
        async with self._db.pool.acquire() as conn:
            if dry_run:
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    stored, hashes = await _read_config(conn), await _key_hashes(conn)
                p = plan(cfg, stored, hashes, file_hashes, prune=prune)
                _check_keys(p.key_hashes, p.new_keys)
                if check is not None:
                    check(p.target)
                return p.diff
            try:
                async with conn.transaction():
                    await conn.execute(_LOCK_CONFIG)
                    stored, hashes = await _read_config(conn), await _key_hashes(conn)
                    p = plan(cfg, stored, hashes, file_hashes, prune=prune)
                    _check_keys(p.key_hashes, p.new_keys)
                    if check is not None:
                        check(p.target)
                    if p.diff.pending:
                        await _delete(conn, p.removed)
                        await _write(conn, p.target, p.key_hashes)
                    await conn.execute(
                        "INSERT INTO config_seed (source) VALUES ($1) ON CONFLICT DO NOTHING",
                        source,
                    )
            except asyncpg.UniqueViolationError as exc:
                # exc.detail would show the key's hash: name no value.
                raise StoreConflict("an API key of the file is already in use") from exc
        if not p.diff.pending:
            return p.diff
        logger.info(
            "config applied",
            extra={
                "added": p.diff.added,
                "changed": p.diff.changed,
                "removed": p.diff.removed,
                "source": source,
            },
        )
        return msgspec.structs.replace(p.diff, applied=True)

    async def read_config(self) -> ExchangeConfig:
        """Everything stored, as the config model; endpoints in failover (position) order.

        Buyer API keys come back as None: only their hashes are stored.

        Raises:
            StoreError: a stored document no longer validates against the model.
        """
        async with (
            self._db.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            return await _read_config(conn)

    async def read_config_versioned(self) -> tuple[int, ExchangeConfig]:
        """``read_config`` with the version of the last change it includes (migration 0005).

        Raises:
            StoreError: a stored document no longer validates against the model.
        """
        async with (
            self._db.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            version = await conn.fetchval(
                "SELECT version FROM sync_versions WHERE kind = 'exchange'"
            )
            return int(version), await _read_config(conn)

    # -- trunks and campaigns ------------------------------------------------------------------

    async def list_docs(self, table: DocTable, kind: type[_S]) -> list[_S]:
        """Every document of ``table`` in id order, decoded as ``kind``."""
        t = _table(table, _DOC_TABLES)
        async with self._db.pool.acquire() as conn:
            rows = await conn.fetch(f"SELECT doc FROM {t} ORDER BY id")
        return [msgspec.json.decode(r["doc"], type=kind) for r in rows]

    async def get_doc(self, table: DocTable, obj_id: str, kind: type[_S]) -> _S | None:
        t = _table(table, _DOC_TABLES)
        async with self._db.pool.acquire() as conn:
            doc = await conn.fetchval(f"SELECT doc FROM {t} WHERE id = $1", obj_id)
        return None if doc is None else msgspec.json.decode(doc, type=kind)

    async def insert_doc(self, table: DocTable, obj: Trunk | Campaign) -> None:
        """Store a new object. Raises StoreConflict if its id is taken."""
        t = _table(table, _DOC_TABLES)
        try:
            async with self._db.pool.acquire() as conn:
                await conn.execute(f"INSERT INTO {t} (id, doc) VALUES ($1, $2)", obj.id, _doc(obj))
        except asyncpg.UniqueViolationError as exc:
            raise StoreConflict(f"{t[:-1]} {obj.id!r} already exists") from exc

    async def update_doc(self, table: DocTable, obj: Trunk | Campaign) -> bool:
        """Replace a stored object; False if there is none with that id."""
        t = _table(table, _DOC_TABLES)
        async with self._db.pool.acquire() as conn:
            status = await conn.execute(
                f"UPDATE {t} SET doc = $2, updated_at = now() WHERE id = $1", obj.id, _doc(obj)
            )
        return bool(status != "UPDATE 0")

    async def delete_doc(self, table: DocTable, obj_id: str) -> bool:
        t = _table(table, _DOC_TABLES)
        async with self._db.pool.acquire() as conn:
            status = await conn.execute(f"DELETE FROM {t} WHERE id = $1", obj_id)
        return bool(status != "DELETE 0")

    # -- buyers --------------------------------------------------------------------------------

    async def buyer_for_key(self, key_hash: str) -> str | None:
        """The id of the buyer whose API key hashes to ``key_hash`` (``hash_api_key``)."""
        async with self._db.pool.acquire() as conn:
            buyer_id = await conn.fetchval(
                "SELECT id FROM buyers WHERE api_key_hash = $1", key_hash
            )
        return None if buyer_id is None else str(buyer_id)

    async def list_buyers(self, only: str | None = None) -> list[Buyer]:
        """Buyers (or just ``only``) with endpoints and profiles in position order; api_key None."""
        async with (
            self._db.pool.acquire() as conn,
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
        async with self._db.pool.acquire() as conn:
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
        try:
            async with self._db.pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO buyers (id, doc, api_key_hash) VALUES ($1, $2, $3)",
                    buyer.id,
                    _doc(_bare(buyer)),
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
        try:
            async with self._db.pool.acquire() as conn:
                status = await conn.execute(
                    "UPDATE buyers SET doc = $2, api_key_hash = COALESCE($3, api_key_hash), "
                    "updated_at = now() WHERE id = $1",
                    buyer.id,
                    _doc(_bare(buyer)),
                    key_hash,
                )
        except asyncpg.UniqueViolationError as exc:
            raise StoreConflict(f"buyer {buyer.id!r}: API key already in use") from exc
        return bool(status != "UPDATE 0")

    async def delete_buyer(self, buyer_id: str) -> bool:
        """Delete a buyer with its endpoints and profiles (ON DELETE CASCADE)."""
        async with self._db.pool.acquire() as conn:
            status = await conn.execute("DELETE FROM buyers WHERE id = $1", buyer_id)
        return bool(status != "DELETE 0")

    # -- a buyer's endpoints and profiles ------------------------------------------------------

    async def list_children(self, table: ChildTable, buyer_id: str, kind: type[_S]) -> list[_S]:
        """A buyer's endpoints or profiles in position (failover) order."""
        t = _table(table, _CHILD_TABLES)
        async with self._db.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT doc FROM {t} WHERE buyer_id = $1 ORDER BY position, id", buyer_id
            )
        return [msgspec.json.decode(r["doc"], type=kind) for r in rows]

    async def get_child(
        self, table: ChildTable, buyer_id: str, obj_id: str, kind: type[_S]
    ) -> _S | None:
        t = _table(table, _CHILD_TABLES)
        async with self._db.pool.acquire() as conn:
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
            async with self._db.pool.acquire() as conn:
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
        async with self._db.pool.acquire() as conn:
            status = await conn.execute(
                f"UPDATE {t} SET doc = $3, updated_at = now() WHERE buyer_id = $1 AND id = $2",
                buyer_id,
                obj.id,
                _doc(obj),
            )
        return bool(status != "UPDATE 0")

    async def delete_child(self, table: ChildTable, buyer_id: str, obj_id: str) -> bool:
        t = _table(table, _CHILD_TABLES)
        async with self._db.pool.acquire() as conn:
            status = await conn.execute(
                f"DELETE FROM {t} WHERE buyer_id = $1 AND id = $2", buyer_id, obj_id
            )
        return bool(status != "DELETE 0")


# -- whole configs, on one connection (inside the caller's transaction) --------------------------


async def _read_config(conn: asyncpg.Connection) -> ExchangeConfig:
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


def _check_keys(key_hashes: Mapping[str, str | None], new_keys: Iterable[str]) -> None:
    """StoreConflict when a key the file sets is another buyer's (one the file keeps)."""
    owner = {h: b for b, h in key_hashes.items() if h is not None and b not in set(new_keys)}
    for buyer_id in sorted(new_keys):
        other = owner.get(key_hashes[buyer_id] or "")
        if other is not None and other != buyer_id:
            raise StoreConflict(f"buyer {buyer_id!r}: its API key is already buyer {other!r}'s")


async def _key_hashes(conn: asyncpg.Connection) -> dict[str, str | None]:
    rows = await conn.fetch("SELECT id, api_key_hash FROM buyers")
    return {r["id"]: r["api_key_hash"] for r in rows}


def _missing(cfg: ExchangeConfig, stored: ExchangeConfig) -> ExchangeConfig:
    """The objects of ``cfg`` whose id is not stored (a stored buyer's children included)."""
    have_t = {t.id for t in stored.trunks}
    have_c = {c.id for c in stored.campaigns}
    have_b = {b.id for b in stored.buyers}
    return ExchangeConfig(
        trunks=[t for t in cfg.trunks if t.id not in have_t],
        campaigns=[c for c in cfg.campaigns if c.id not in have_c],
        buyers=[b for b in cfg.buyers if b.id not in have_b],
    )


async def _write(
    conn: asyncpg.Connection, cfg: ExchangeConfig, key_hashes: Mapping[str, str | None]
) -> None:
    """Upsert every object of ``cfg``; rows whose content is the same are not rewritten.

    A buyer's endpoints and profiles get their list index as position (the failover order);
    a None key hash keeps the stored one.
    """
    trunks = [(t.id, _doc(t)) for t in cfg.trunks]
    campaigns = [(c.id, _doc(c)) for c in cfg.campaigns]
    buyers = [(b.id, _doc(_bare(b)), key_hashes.get(b.id)) for b in cfg.buyers]
    endpoints = [(b.id, e.id, _doc(e), i) for b in cfg.buyers for i, e in enumerate(b.endpoints)]
    profiles = [(b.id, p.id, _doc(p), i) for b in cfg.buyers for i, p in enumerate(b.profiles)]
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


_DELETE: Mapping[str, str] = {
    "trunk": "DELETE FROM trunks WHERE id = $1",
    "campaign": "DELETE FROM campaigns WHERE id = $1",
    "buyer": "DELETE FROM buyers WHERE id = $1",  # endpoints and profiles: ON DELETE CASCADE
    "endpoint": "DELETE FROM endpoints WHERE buyer_id = $2 AND id = $1",
    "profile": "DELETE FROM profiles WHERE buyer_id = $2 AND id = $1",
}


async def _delete(conn: asyncpg.Connection, removed: Iterable[ObjectChange]) -> None:
    for c in removed:
        if c.buyer_id is None:
            await conn.execute(_DELETE[c.kind], c.id)
        else:
            await conn.execute(_DELETE[c.kind], c.id, c.buyer_id)
