"""DNC lists in PostgreSQL, shared by every switch instance (``Store.dnc``).

A list is one ``dnc_lists`` row (source, load time, staleness, count, CRC-32 and the version
that wrote it) and its sorted key array (compliance/dnc/lookup.py: little-endian doubles, live
keys only) cut into ``dnc_chunks`` of at most ``CHUNK_KEYS`` numbers. Neither side ever holds
the array twice: a writer sends slices of it, a reader appends chunk after chunk to one array.

Writes go through ``writing(name)``: one transaction under an advisory lock per list, so two
instances that merge into the same list at once are serialised and the second merges into the
first's result, never into a copy it holds from before (``DncWrite.version`` tells whether the
caller's copy is still the stored one). The new version's chunks are written beside the old
ones, which are then deleted; the trigger of migration 0005 gives the row its version and
notifies the other instances when the transaction commits. ``load`` reads a list in one
snapshot, so a write committing meanwhile cannot mix two versions.

``adopt_files`` moves the lists an earlier version kept in DCE_DATA_DIR/dnc into the database
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import zlib
from array import array
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

import asyncpg
import msgspec

from compliance.dnc import DncList, DncStore, trim_heap
from store.errors import StoreError

if TYPE_CHECKING:
    from store.database import Store

__all__ = ["CHUNK_KEYS", "MOVED_DIR", "DncRow", "DncTables", "DncWrite"]

logger = logging.getLogger(__name__)

CHUNK_KEYS: Final = 1 << 20  # 8 MiB a chunk
MOVED_DIR: Final = "dnc.moved-to-database"
_ROW_COLUMNS: Final = "name, version, source, loaded_at, max_age_days, count, crc32"


class DncRow(msgspec.Struct, frozen=True, kw_only=True):
    """A stored list's metadata (``dnc_lists``), without its numbers."""

    name: str
    version: int
    source: str
    loaded_at: datetime
    max_age_days: int | None
    count: int
    crc32: int


def _row(r: asyncpg.Record) -> DncRow:
    return DncRow(
        name=r["name"],
        version=r["version"],
        source=r["source"],
        loaded_at=r["loaded_at"],
        max_age_days=r["max_age_days"],
        count=r["count"],
        crc32=r["crc32"],
    )


async def _read_list(conn: asyncpg.Connection, row: DncRow) -> DncList:
    """The list ``row`` describes, read chunk by chunk on ``conn`` (inside a transaction).

    Raises:
        StoreError: the chunks do not add up to the row's count and CRC-32.
    """
    # The whole array at once (no growth by reallocation), filled chunk by chunk.
    keys: array[float] = array("d", bytes(8)) * row.count
    view = memoryview(keys).cast("B")
    crc = filled = 0
    async for rec in conn.cursor(
        "SELECT keys FROM dnc_chunks WHERE name = $1 AND version = $2 ORDER BY seq",
        row.name,
        row.version,
        prefetch=1,
    ):
        data: bytes = rec["keys"]
        end = filled + len(data)
        if end > len(view):
            break  # more than the row says: the check below refuses it
        # CRC-32 of 8 MiB is milliseconds of C that releases the GIL: off the event loop.
        crc = await asyncio.to_thread(zlib.crc32, data, crc)
        view[filled:end] = data
        filled = end
        del data, rec
    view.release()
    if filled != len(keys) * 8 or crc != row.crc32:
        raise StoreError(
            f"DNC list {row.name!r} version {row.version}: {filled // 8} numbers with CRC-32 "
            f"{crc:#x} stored, expected {row.count} with {row.crc32:#x}"
        )
    # The 8 MiB pieces were freed into the heap; give it back (RSS stays ~8.5 MB a million).
    await asyncio.to_thread(trim_heap)
    if sys.byteorder != "little":
        keys.byteswap()
    # The lookup directory of a big list takes a while to build: in a thread as well.
    return await asyncio.to_thread(
        DncList,
        row.name,
        source=row.source,
        loaded_at=row.loaded_at,
        keys=keys,
        max_age_days=row.max_age_days,
    )


class DncWrite:
    """One list's write in progress (``DncTables.writing``): what is stored, and the writes.

    ``version`` is the stored list's version (None: no such list yet). A caller whose own copy
    is of that version may build on it; otherwise ``load()`` gives the stored one.
    """

    def __init__(self, conn: asyncpg.Connection, name: str, row: DncRow | None) -> None:
        self._conn = conn
        self.name = name
        self.row = row
        self.saved: int | None = None

    @property
    def version(self) -> int | None:
        return None if self.row is None else self.row.version

    async def load(self) -> DncList | None:
        """The stored list (None if there is none), read inside this write's transaction."""
        if self.row is None:
            return None
        return await _read_list(self._conn, self.row)

    async def save(self, lst: DncList) -> int:
        """Store ``lst`` (named as this write) as the list's new version; returns the version.

        The version is visible to others when the ``writing`` block commits.
        """
        if lst.name != self.name:
            raise ValueError(f"writing list {self.name!r}, given {lst.name!r}")  # our bug
        keys = lst.live_keys()
        if sys.byteorder != "little":
            keys = array("d", keys)
            keys.byteswap()
        data = memoryview(keys).cast("B")  # no copy of a list that may be 80 MB
        crc = await asyncio.to_thread(zlib.crc32, data)
        conn = self._conn
        version: int = await conn.fetchval(
            "INSERT INTO dnc_lists (name, source, loaded_at, max_age_days, count, crc32) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO UPDATE SET "
            "source = EXCLUDED.source, loaded_at = EXCLUDED.loaded_at, "
            "max_age_days = EXCLUDED.max_age_days, count = EXCLUDED.count, "
            "crc32 = EXCLUDED.crc32, updated_at = now() RETURNING version",
            lst.name,
            lst.source,
            lst.loaded_at,
            lst.max_age_days,
            len(keys),
            crc,
        )
        step = CHUNK_KEYS * 8
        for seq, start in enumerate(range(0, len(data), step)):
            await conn.execute(
                "INSERT INTO dnc_chunks (name, version, seq, keys) VALUES ($1, $2, $3, $4)",
                lst.name,
                version,
                seq,
                data[start : start + step],
            )
        await conn.execute(
            "DELETE FROM dnc_chunks WHERE name = $1 AND version <> $2", lst.name, version
        )
        self.saved = version
        return version

    async def delete(self) -> bool:
        """Remove the list (its chunks go with it); True if it existed."""
        status = await self._conn.execute("DELETE FROM dnc_lists WHERE name = $1", self.name)
        return bool(status != "DELETE 0")


class DncTables:
    """The stored DNC lists (``Store.dnc``)."""

    def __init__(self, db: Store) -> None:
        self._db = db

    async def catalog(self) -> dict[str, DncRow]:
        """Every stored list's metadata by name (no numbers)."""
        async with self._db.pool.acquire() as conn:
            rows = await conn.fetch(f"SELECT {_ROW_COLUMNS} FROM dnc_lists ORDER BY name")
        return {r["name"]: _row(r) for r in rows}

    async def load(self, name: str) -> DncList | None:
        """The stored list ``name`` in one snapshot, or None if there is none.

        Raises:
            StoreError: its chunks do not match its count and CRC-32.
        """
        async with (
            self._db.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            r = await conn.fetchrow(f"SELECT {_ROW_COLUMNS} FROM dnc_lists WHERE name = $1", name)
            return None if r is None else await _read_list(conn, _row(r))

    async def load_version(self, name: str) -> tuple[int, DncList] | None:
        """Like ``load``, with the version read: (version, list), or None."""
        async with (
            self._db.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            r = await conn.fetchrow(f"SELECT {_ROW_COLUMNS} FROM dnc_lists WHERE name = $1", name)
            if r is None:
                return None
            row = _row(r)
            return row.version, await _read_list(conn, row)

    @contextlib.asynccontextmanager
    async def writing(self, name: str) -> AsyncIterator[DncWrite]:
        """A transaction that owns list ``name`` until it commits (at the end of the block)."""
        from store.database import lock_key  # store.database imports this module

        async with self._db.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1)", lock_key(f"dnc:{name}", self._db.schema)
            )
            r = await conn.fetchrow(f"SELECT {_ROW_COLUMNS} FROM dnc_lists WHERE name = $1", name)
            yield DncWrite(conn, name, None if r is None else _row(r))

    async def save(self, lst: DncList) -> int:
        """Store ``lst`` whole, replacing what is stored under its name; returns the version."""
        async with self.writing(lst.name) as w:
            return await w.save(lst)

    async def adopt_files(self, directory: Path) -> list[str]:
        """Move the lists an earlier version saved as files in ``directory`` into the database.

        Lists the database already holds win (another instance stored them, maybe newer). The
        directory is then renamed ``MOVED_DIR`` beside it, so that the files are kept but never
        read again. Returns the names stored.

        Raises:
            DncStoreCorrupt: a file does not match its metadata (nothing is moved).
        """
        if not directory.is_dir() or not any(directory.glob("*.json")):
            return []
        files = await asyncio.to_thread(DncStore.load, directory)
        stored = await self.catalog()
        moved = []
        for lst in files:
            if lst.name in stored:
                logger.warning(
                    "DNC list file ignored: the database holds this list",
                    extra={"list": lst.name, "path": str(directory)},
                )
                continue
            async with self.writing(lst.name) as w:
                if w.version is None:  # not stored meanwhile by another instance
                    await w.save(lst)
                    moved.append(lst.name)
        target = directory.with_name(MOVED_DIR)
        n = 1
        while target.exists():
            n += 1
            target = directory.with_name(f"{MOVED_DIR}.{n}")
        directory.rename(target)
        logger.warning(
            "DNC list files moved into the database",
            extra={"lists": moved, "path": str(target)},
        )
        return moved
