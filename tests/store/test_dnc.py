"""store/dnc.py on a real PostgreSQL: DNC lists stored in chunks, versioned, locked per list."""

from __future__ import annotations

import asyncio
from array import array
from datetime import UTC, datetime
from pathlib import Path

import pytest

import store.dnc as store_dnc
from compliance.dnc import DncList, DncStore
from compliance.dnc.lookup import sorted_unique
from store.database import Store
from store.dnc import MOVED_DIR
from store.errors import StoreError
from tests.store.conftest import fetch_rows

AT = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def make(name: str, keys: list[float], **kw: object) -> DncList:
    return DncList(name, source="test", loaded_at=AT, keys=sorted_unique(keys), **kw)  # type: ignore[arg-type]


async def test_a_list_round_trips_in_several_chunks(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_dnc, "CHUNK_KEYS", 1000)
    keys = [float(2_125_550_000 + 3 * i) for i in range(2500)]
    lst = make("federal", keys, max_age_days=None)
    lst.discard(keys[7])  # a tombstone: only live keys are stored
    version = await store.dnc.save(lst)
    rows = await fetch_rows(store, "SELECT seq, length(keys) AS n FROM dnc_chunks ORDER BY seq")
    assert [(r["seq"], r["n"]) for r in rows] == [(0, 8000), (1, 8000), (2, 3992)]
    found = await store.dnc.load_version("federal")
    assert found is not None
    got_version, got = found
    assert got_version == version
    assert got.live_keys() == array("d", keys[:7] + keys[8:])
    assert (got.source, got.loaded_at, got.max_age_days) == ("test", AT, None)
    assert got.contains("+12125550003") and not got.contains("+12125550021")
    catalog = await store.dnc.catalog()
    assert list(catalog) == ["federal"] and catalog["federal"].count == 2499
    assert await store.dnc.load("nope") is None


async def test_a_new_version_replaces_the_old_chunks(store: Store) -> None:
    v1 = await store.dnc.save(make("internal", [2125551234.0]))
    v2 = await store.dnc.save(make("internal", [2125550000.0, 2125550001.0]))
    assert v2 > v1
    rows = await fetch_rows(store, "SELECT version FROM dnc_chunks")
    assert [r["version"] for r in rows] == [v2]
    got = await store.dnc.load("internal")
    assert got is not None and list(got.numbers()) == ["+12125550000", "+12125550001"]


async def test_an_empty_list_is_stored(store: Store) -> None:
    await store.dnc.save(make("empty", []))
    got = await store.dnc.load("empty")
    assert got is not None and len(got) == 0


async def test_a_damaged_chunk_is_refused(store: Store) -> None:
    await store.dnc.save(make("federal", [2125551234.0, 2125551235.0]))
    async with store.pool.acquire() as conn:
        await conn.execute("UPDATE dnc_chunks SET keys = overlay(keys placing '\\x00' from 3)")
    with pytest.raises(StoreError, match="CRC-32"):
        await store.dnc.load("federal")


async def test_writers_of_one_list_take_turns(store: Store) -> None:
    """Two instances merging into one list at once: the second builds on the first's."""
    await store.dnc.save(make("internal", [2125550001.0]))
    first_has_lock = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with store.dnc.writing("internal") as w:
            first_has_lock.set()
            base = await w.load()
            assert base is not None
            await release.wait()
            await w.save(make("internal", [*base.live_keys(), 2125550002.0]))

    async def second() -> int | None:
        await first_has_lock.wait()
        async with store.dnc.writing("internal") as w:
            base = await w.load()  # only once the first committed
            assert base is not None
            await w.save(make("internal", [*base.live_keys(), 2125550003.0]))
            return w.version

    t1 = asyncio.create_task(first())
    t2 = asyncio.create_task(second())
    await asyncio.sleep(0.2)
    assert not t2.done()  # waiting for the first writer's lock
    release.set()
    await asyncio.gather(t1, t2)
    got = await store.dnc.load("internal")
    assert got is not None
    assert list(got.numbers()) == ["+12125550001", "+12125550002", "+12125550003"]


async def test_list_files_of_an_earlier_version_move_into_the_database(
    store: Store, tmp_path: Path
) -> None:
    files = DncStore()
    files.put(make("federal", [2125551234.0, 2125551235.0]))
    files.put(make("internal", [3125550000.0], max_age_days=None))
    directory = tmp_path / "dnc"
    files.save(directory)
    await store.dnc.save(make("internal", [4155550000.0]))  # another instance stored it: it wins

    assert await store.dnc.adopt_files(directory) == ["federal"]
    assert not directory.exists() and (tmp_path / MOVED_DIR / "federal.f64").exists()
    federal = await store.dnc.load("federal")
    internal = await store.dnc.load("internal")
    assert federal is not None and federal.contains("+12125551234")
    assert internal is not None and list(internal.numbers()) == ["+14155550000"]
    assert await store.dnc.adopt_files(directory) == []  # nothing left to move
