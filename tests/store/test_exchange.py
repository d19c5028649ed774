"""store/exchange.py against a real PostgreSQL: the config upsert, API key hashes, read back."""

from __future__ import annotations

from decimal import Decimal

import pytest

from exchange.models import (
    BidProfile,
    Buyer,
    Campaign,
    Caps,
    Endpoint,
    ExchangeConfig,
    Trunk,
)
from store.database import Store
from store.errors import StoreError
from store.exchange import hash_api_key
from tests.store.conftest import fetch_rows


def _config(api_key: str = "bk_live_9f8e7d6c5b4a") -> ExchangeConfig:
    return ExchangeConfig(
        trunks=[
            Trunk(
                id="t1",
                name="Seller One",
                source_ips=["192.0.2.0/24"],
                payout_share=Decimal("62.5"),
            ),
            Trunk(id="t2", name="Seller Two", username="u", password="p"),
        ],
        campaigns=[
            Campaign(
                id="c1",
                name="Auto insurance",
                numbers=["+18005550100"],
                reserve=Decimal("1.250000"),
            ),
        ],
        buyers=[
            Buyer(
                id="b1",
                name="Buyer One",
                api_key=api_key,
                # Deliberately not in id order: position is the failover order.
                endpoints=[
                    Endpoint(id="zz", uri="sip:first@192.0.2.10"),
                    Endpoint(id="aa", uri="sip:second@192.0.2.11", max_concurrent=5),
                    Endpoint(id="mm", uri="sip:third@192.0.2.12"),
                ],
                profiles=[
                    BidProfile(
                        id="p1",
                        campaign_id="c1",
                        bid=Decimal("12.345678"),
                        caps=Caps(daily=100, budget_daily=Decimal("500")),
                    ),
                    BidProfile(id="p0", numbers=["+18005550100"], bid=Decimal("3")),
                ],
            ),
            Buyer(id="b2", name="Buyer Two"),
        ],
    )


async def test_upsert_config_twice_changes_nothing(store: Store) -> None:
    cfg = _config()
    await store.exchange.upsert_config(cfg)
    tables = ("trunks", "campaigns", "buyers", "endpoints", "profiles")
    before = {t: await fetch_rows(store, f"SELECT * FROM {t} ORDER BY 1, 2") for t in tables}
    await store.exchange.upsert_config(cfg)
    after = {t: await fetch_rows(store, f"SELECT * FROM {t} ORDER BY 1, 2") for t in tables}
    assert after == before  # updated_at included: no row was rewritten
    assert [len(before[t]) for t in tables] == [2, 1, 2, 3, 2]


async def test_api_key_is_stored_hashed_only(store: Store) -> None:
    key = "bk_live_9f8e7d6c5b4a"
    await store.exchange.upsert_config(_config(api_key=key))
    dump = await fetch_rows(store, "SELECT b.*, b::text AS whole FROM buyers b ORDER BY id")
    assert dump[0]["api_key_hash"] == hash_api_key(key)
    assert len(dump[0]["api_key_hash"]) == 64
    assert all(key not in r["whole"] for r in dump)
    assert dump[1]["api_key_hash"] is None
    # A later config without the key keeps the stored hash; a new key replaces it.
    cfg = _config()
    no_key = ExchangeConfig(
        trunks=cfg.trunks,
        campaigns=cfg.campaigns,
        buyers=[
            Buyer(
                id="b1",
                name="Buyer One",
                endpoints=cfg.buyers[0].endpoints,
                profiles=cfg.buyers[0].profiles,
            ),
            cfg.buyers[1],
        ],
    )
    await store.exchange.upsert_config(no_key)
    assert (await fetch_rows(store, "SELECT api_key_hash FROM buyers WHERE id = 'b1'"))[0][
        "api_key_hash"
    ] == hash_api_key(key)
    await store.exchange.upsert_config(_config(api_key="bk_new"))
    assert (await fetch_rows(store, "SELECT api_key_hash FROM buyers WHERE id = 'b1'"))[0][
        "api_key_hash"
    ] == hash_api_key("bk_new")


async def test_same_api_key_for_two_buyers_is_refused(store: Store) -> None:
    cfg = ExchangeConfig(
        buyers=[Buyer(id="b1", name="x", api_key="k"), Buyer(id="b2", name="y", api_key="k")]
    )
    with pytest.raises(StoreError, match="conflicts"):
        await store.exchange.upsert_config(cfg)


async def test_read_config_round_trip(store: Store) -> None:
    cfg = _config()
    await store.exchange.upsert_config(cfg)
    got = await store.exchange.read_config()
    assert got.trunks == cfg.trunks
    assert got.campaigns == cfg.campaigns
    b1 = got.buyers[0]
    assert b1.api_key is None  # only the hash is kept
    assert [e.id for e in b1.endpoints] == ["zz", "aa", "mm"]
    assert [p.id for p in b1.profiles] == ["p1", "p0"]
    assert b1.profiles[0].bid == Decimal("12.345678")
    assert b1.profiles[0].caps.budget_daily == Decimal("500")
    assert got.buyers[1] == cfg.buyers[1]
