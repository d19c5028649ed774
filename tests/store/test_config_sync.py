"""Seeding and applying a config file against a real PostgreSQL (store/exchange.py).

The file seeds a database once; after that, only ``sync_config`` (``dce config apply``) writes
it, with a diff first.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import msgspec
import pytest

from exchange.auction_index import compile_index
from exchange.errors import ConfigInvalid
from exchange.models import BidProfile, Buyer, Campaign, Endpoint, ExchangeConfig, Trunk
from store.database import Store, migrations
from store.errors import StoreConflict
from store.exchange import hash_api_key
from tests.store.conftest import fetch_rows

KEY = "bk_live_" + "s" * 24


def file_config(bid: str = "12.00") -> ExchangeConfig:
    return ExchangeConfig(
        trunks=[
            Trunk(id="t1", name="Seller", source_ips=["192.0.2.0/24"]),
            Trunk(id="t2", name="Digest", username="u", password="pw"),
        ],
        campaigns=[Campaign(id="c1", name="Auto", numbers=["+18005550100"])],
        buyers=[
            Buyer(
                id="b1",
                name="Buyer One",
                api_key=KEY,
                endpoints=[
                    Endpoint(id="e1", uri="sip:b1@192.0.2.10"),
                    Endpoint(id="e2", uri="sip:b1@192.0.2.11"),
                ],
                profiles=[BidProfile(id="p1", campaign_id="c1", bid=Decimal(bid))],
            )
        ],
    )


async def seed_rows(store: Store) -> list[dict[str, object]]:
    return await fetch_rows(store, "SELECT source FROM config_seed")


async def test_the_file_seeds_a_fresh_database_once(store: Store) -> None:
    assert await store.exchange.seed_config(file_config(), source="a.toml", check=compile_index)
    assert await seed_rows(store) == [{"source": "a.toml"}]
    got = await store.exchange.read_config()
    assert got.buyers[0].profiles[0].bid == Decimal("12.00")
    # A changed file at the next start: not written.
    assert not await store.exchange.seed_config(file_config("99.00"), source="b.toml")
    got = await store.exchange.read_config()
    assert got.buyers[0].profiles[0].bid == Decimal("12.00")
    assert await seed_rows(store) == [{"source": "a.toml"}]


async def test_an_api_change_and_a_deletion_survive_the_next_seed(store: Store) -> None:
    await store.exchange.seed_config(file_config(), source="a.toml")
    p1 = (await store.exchange.read_config()).buyers[0].profiles[0]
    await store.exchange.update_child(
        "profiles", "b1", msgspec.structs.replace(p1, bid=Decimal("13.00"))
    )
    await store.exchange.delete_child("endpoints", "b1", "e2")
    await store.exchange.delete_doc("trunks", "t2")
    assert not await store.exchange.seed_config(file_config(), source="a.toml")
    got = await store.exchange.read_config()
    assert got.buyers[0].profiles[0].bid == Decimal("13.00")
    assert [e.id for e in got.buyers[0].endpoints] == ["e1"]
    assert [t.id for t in got.trunks] == ["t1"]


async def test_a_file_without_objects_seeds_nothing(store: Store) -> None:
    assert not await store.exchange.seed_config(ExchangeConfig(), source="empty.toml")
    assert await seed_rows(store) == []
    assert await store.exchange.seed_config(file_config(), source="a.toml")


async def test_seeding_never_overwrites_objects_made_before_it(store: Store) -> None:
    """Started without a file, objects made through the API; then a file: insert only."""
    await store.exchange.insert_doc("trunks", Trunk(id="t1", name="Made through the API"))
    assert await store.exchange.seed_config(file_config(), source="a.toml")
    got = await store.exchange.read_config()
    assert [(t.id, t.name) for t in got.trunks] == [
        ("t1", "Made through the API"),
        ("t2", "Digest"),
    ]


async def test_a_seed_that_does_not_compile_writes_nothing(store: Store) -> None:
    bad = file_config()
    bad = msgspec.structs.replace(
        bad,
        buyers=[
            msgspec.structs.replace(
                bad.buyers[0], profiles=[BidProfile(id="p1", campaign_id="nope", bid=Decimal(1))]
            )
        ],
    )
    with pytest.raises(ConfigInvalid):
        await store.exchange.seed_config(bad, source="bad.toml", check=compile_index)
    assert await seed_rows(store) == []
    assert await store.exchange.read_config() == ExchangeConfig()


async def test_concurrent_seeds_seed_once(store: Store) -> None:
    results = await asyncio.gather(
        *(store.exchange.seed_config(file_config(), source=f"s{i}") for i in range(4))
    )
    assert sorted(results) == [False, False, False, True]
    assert len(await seed_rows(store)) == 1


async def test_migration_counts_a_populated_database_as_seeded(
    database_url: str, pg_schema: str
) -> None:
    """An upgrade: the old version wrote the file at every start, so its objects are there."""
    store = Store(schema=pg_schema)
    await store.connect(database_url)
    try:
        async with store.pool.acquire() as conn:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{pg_schema}"')
            await conn.execute(
                "CREATE TABLE schema_migrations (version text PRIMARY KEY, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
        # Apply up to 0003 by hand, add an object, then let migrate() run 0004.
        async with store.pool.acquire() as conn:
            for version, sql in migrations():
                if version >= "0004":
                    break
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations VALUES ($1)", version)
        await store.exchange.upsert_config(file_config())
        await store.migrate()
        assert len(await seed_rows(store)) == 1
        assert not await store.exchange.seed_config(file_config("50.00"), source="new.toml")
        assert (await store.exchange.read_config()).buyers[0].profiles[0].bid == Decimal("12.00")
    finally:
        await store.close()


# -- sync_config: dce config apply ---------------------------------------------------------


async def test_apply_writes_the_difference(store: Store) -> None:
    await store.exchange.seed_config(file_config(), source="a.toml")
    before = await fetch_rows(store, "SELECT id, updated_at FROM trunks ORDER BY id")
    diff = await store.exchange.sync_config(file_config("14.50"))
    assert diff.applied and diff.changed == 1
    assert [(c.path, [f.field for f in c.fields]) for c in diff.changes] == [
        ("buyers/b1/profiles/p1", ["bid"])
    ]
    got = await store.exchange.read_config()
    assert got.buyers[0].profiles[0].bid == Decimal("14.50")
    # Untouched rows are not rewritten.
    assert await fetch_rows(store, "SELECT id, updated_at FROM trunks ORDER BY id") == before
    again = await store.exchange.sync_config(file_config("14.50"))
    assert again.pending == 0 and not again.applied


async def test_dry_run_changes_nothing(store: Store) -> None:
    await store.exchange.seed_config(file_config(), source="a.toml")
    before = await store.exchange.read_config()
    diff = await store.exchange.sync_config(file_config("14.50"), dry_run=True, prune=True)
    assert diff.changed == 1 and not diff.applied
    assert await store.exchange.read_config() == before


async def test_apply_restores_deleted_objects_and_prune_removes(store: Store) -> None:
    await store.exchange.seed_config(file_config(), source="a.toml")
    await store.exchange.delete_child("endpoints", "b1", "e2")
    await store.exchange.insert_doc("trunks", Trunk(id="t9", name="API only"))
    diff = await store.exchange.sync_config(file_config())
    assert [(c.action, c.path) for c in diff.changes] == [
        ("keep", "trunks/t9"),
        ("add", "buyers/b1/endpoints/e2"),
    ]
    got = await store.exchange.read_config()
    assert [e.id for e in got.buyers[0].endpoints] == ["e1", "e2"]
    assert [t.id for t in got.trunks] == ["t1", "t2", "t9"]
    pruned = await store.exchange.sync_config(file_config(), prune=True)
    assert [(c.action, c.path) for c in pruned.changes] == [("remove", "trunks/t9")]
    assert [t.id for t in (await store.exchange.read_config()).trunks] == ["t1", "t2"]


async def test_apply_reorders_endpoints(store: Store) -> None:
    await store.exchange.seed_config(file_config(), source="a.toml")
    cfg = file_config()
    b1 = cfg.buyers[0]
    swapped = msgspec.structs.replace(b1, endpoints=list(reversed(b1.endpoints)))
    await store.exchange.sync_config(msgspec.structs.replace(cfg, buyers=[swapped]))
    got = await store.exchange.read_config()
    assert [e.id for e in got.buyers[0].endpoints] == ["e2", "e1"]


async def test_apply_keys_and_credentials(store: Store) -> None:
    await store.exchange.seed_config(file_config(), source="a.toml")
    cfg = file_config()
    # Without secrets (an export): the stored key and digest credentials stay.
    no_secrets = msgspec.structs.replace(
        cfg,
        trunks=[
            cfg.trunks[0],
            msgspec.structs.replace(cfg.trunks[1], username=None, password=None),
        ],
        buyers=[msgspec.structs.replace(cfg.buyers[0], api_key=None)],
    )
    assert (await store.exchange.sync_config(no_secrets)).pending == 0
    rows = await fetch_rows(store, "SELECT api_key_hash FROM buyers")
    assert rows == [{"api_key_hash": hash_api_key(KEY)}]
    assert (await store.exchange.read_config()).trunks[1].password == "pw"
    # A new key replaces the old one.
    new_key = "bk_rotated_" + "r" * 24
    rotated = msgspec.structs.replace(
        cfg, buyers=[msgspec.structs.replace(cfg.buyers[0], api_key=new_key)]
    )
    diff = await store.exchange.sync_config(rotated)
    assert [f.field for f in diff.changes[0].fields] == ["api_key"]
    rows = await fetch_rows(store, "SELECT api_key_hash FROM buyers")
    assert rows == [{"api_key_hash": hash_api_key(new_key)}]


async def test_apply_refuses_another_buyers_key(store: Store) -> None:
    await store.exchange.seed_config(file_config(), source="a.toml")
    cfg = file_config()
    other = Buyer(id="b2", name="Two", api_key=KEY)
    file = msgspec.structs.replace(
        cfg, buyers=[msgspec.structs.replace(cfg.buyers[0], api_key=None), other]
    )
    before = await store.exchange.read_config()
    with pytest.raises(StoreConflict, match="API key"):
        await store.exchange.sync_config(file)
    assert await store.exchange.read_config() == before


async def test_apply_runs_the_check_before_writing(store: Store) -> None:
    await store.exchange.seed_config(file_config(), source="a.toml")
    before = await store.exchange.read_config()
    seen: list[ExchangeConfig] = []

    def refuse(target: ExchangeConfig) -> None:
        seen.append(target)
        raise ConfigInvalid("buyers[0]", "no")

    with pytest.raises(ConfigInvalid):
        await store.exchange.sync_config(file_config("20.00"), check=refuse)
    assert await store.exchange.read_config() == before
    assert seen[0].buyers[0].profiles[0].bid == Decimal("20.00")


async def test_apply_marks_a_fresh_database_seeded(store: Store) -> None:
    await store.exchange.sync_config(file_config(), source="dce config apply a.toml")
    assert await seed_rows(store) == [{"source": "dce config apply a.toml"}]
    assert not await store.exchange.seed_config(file_config("1.00"), source="b.toml")
