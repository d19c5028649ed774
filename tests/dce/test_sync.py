"""dce/sync.py: two instances' in-memory state on one real PostgreSQL, kept equal.

Instance A writes through the store (as its admin API does); instance B is a ``SharedState``
listening on its own connection, and the tests wait (bounded) until B's gate or exchange
shows the change. A TCP proxy between B and the database cuts B off to show that it catches
up on what it missed once it is back.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from array import array
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from compliance.check import Gate
from compliance.consent import ConsentRecord
from compliance.dnc import DncList
from compliance.erasure import ALL, Suppression
from dce.sync import SecretMismatch, SharedState, check_erasure_secret
from exchange.auction_index import AuctionIndex, compile_index
from exchange.models import BidProfile, Buyer, Campaign, ExchangeConfig
from store.database import Store
from tests.integration.pgproxy import PgProxy, upstream_of, via_port

AT = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
CALLER = "+12125551234"


@dataclass
class Instance:
    """What one switch holds: its gate, the configs it applied, its SharedState."""

    store: Store
    gate: Gate
    state: SharedState
    applied: list[tuple[ExchangeConfig, AuctionIndex]] = field(default_factory=list)


async def make_instance(url: str, schema: str, secret: bytes, poll: float = 5.0) -> Instance:
    store = Store(schema=schema, max_size=3)
    await store.connect(url)
    await store.migrate()
    gate = Gate(suppression=Suppression(secret))
    applied: list[tuple[ExchangeConfig, AuctionIndex]] = []
    state = SharedState(
        store, gate, secret, compile=compile_index,
        apply_exchange=lambda c, i: applied.append((c, i)), poll=poll,
    )  # fmt: skip
    await state.load()
    state.start()
    return Instance(store, gate, state, applied)


async def close(i: Instance) -> None:
    await i.state.stop()
    await i.store.close()


async def until(check: Callable[[], bool], timeout: float = 1.0) -> float:
    """Seconds until ``check()`` holds; fails the test after ``timeout``."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout}s")
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


@pytest.fixture
def secret() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
async def pair(
    database_url: str, pg_schema: str, secret: bytes
) -> AsyncIterator[tuple[Store, Instance]]:
    """(A's store, instance B) on one schema."""
    a = Store(schema=pg_schema, max_size=3)
    await a.connect(database_url)
    await a.migrate()
    b = await make_instance(database_url, pg_schema, secret)
    yield a, b
    await close(b)
    await a.close()


def config(bid: str) -> ExchangeConfig:
    return ExchangeConfig(
        campaigns=[Campaign(id="c1", name="c", numbers=["+18005550100"])],
        buyers=[
            Buyer(id="b1", name="b", profiles=[BidProfile(id="p1", campaign_id="c1",
                                                          bid=Decimal(bid))])
        ],
    )  # fmt: skip


async def test_an_exchange_change_is_compiled_and_applied_within_a_second(
    pair: tuple[Store, Instance],
) -> None:
    a, b = pair
    assert len(b.applied) == 1  # load(): what was stored at start (nothing yet)
    await a.exchange.sync_config(config("5.00"))
    await until(lambda: len(b.applied) == 2)
    await a.exchange.sync_config(config("7.25"))
    await until(lambda: len(b.applied) == 3)
    cfg, index = b.applied[-1]
    assert cfg.buyers[0].profiles[0].bid == Decimal("7.25")
    assert index.profiles["b1/p1"].bid == 7_250_000  # compiled: micro-dollars
    # Nothing newer is stored: a reload (what the API asks for) compiles nothing again.
    await b.state.reload_exchange()
    await asyncio.sleep(0.2)
    assert len(b.applied) == 3


async def test_consent_and_its_revocation_reach_the_other_instance(
    pair: tuple[Store, Instance],
) -> None:
    a, b = pair
    record = ConsentRecord(id="k1", caller=CALLER, campaign_id="c1", granted_at=AT)
    await a.compliance.insert_consent(record)
    await until(lambda: b.gate.consent.has_valid(CALLER, "c1", AT))
    await a.compliance.update_consent(
        ConsentRecord(id="k1", caller=CALLER, campaign_id="c1", granted_at=AT, revoked_at=AT)
    )
    await until(lambda: not b.gate.consent.has_valid(CALLER, "c1", AT))


async def test_an_erasure_reaches_the_other_instance(
    pair: tuple[Store, Instance], secret: bytes
) -> None:
    a, b = pair
    await a.compliance.insert_consent(
        ConsentRecord(id="k1", caller=CALLER, campaign_id="c1", granted_at=AT)
    )
    await until(lambda: len(b.gate.consent.for_caller(CALLER)) == 1)
    h = Suppression(secret).hash(CALLER)
    await a.compliance.erase_caller([CALLER, CALLER[1:]], h, [ALL])
    await until(lambda: b.gate.suppression is not None and b.gate.suppression.scope(CALLER) == {ALL})
    await until(lambda: b.gate.consent.for_caller(CALLER) == [])
    assert [r.id for r in b.gate.consent.for_caller(h)] == ["k1"]


async def test_a_dnc_list_reaches_the_other_instance_and_goes_with_it(
    pair: tuple[Store, Instance],
) -> None:
    a, b = pair
    keys = array("d", [2125551234.0])
    await a.dnc.save(DncList("internal", source="api", loaded_at=AT, keys=keys))
    waited = await until(lambda: b.gate.dnc.lookup(CALLER) == ["internal"])
    assert waited < 1.0
    async with a.pool.acquire() as conn:
        await conn.execute("DELETE FROM dnc_lists WHERE name = 'internal'")
    await until(lambda: "internal" not in b.gate.dnc)


async def test_an_instance_that_starts_later_loads_everything(
    pair: tuple[Store, Instance], database_url: str, pg_schema: str, secret: bytes
) -> None:
    a, _ = pair
    await a.exchange.sync_config(config("5.00"))
    await a.compliance.insert_consent(
        ConsentRecord(id="k1", caller=CALLER, campaign_id="c1", granted_at=AT)
    )
    await a.compliance.erase_caller(["+13125550000"], Suppression(secret).hash("+13125550000"),
                                    ["internal"])  # fmt: skip
    await a.dnc.save(
        DncList("internal", source="api", loaded_at=AT, keys=array("d", [2125550000.0]))
    )
    c = await make_instance(database_url, pg_schema, secret)
    try:
        assert c.gate.consent.has_valid(CALLER, "c1", AT)
        assert c.gate.suppression is not None
        assert c.gate.suppression.scope("+13125550000") == {"internal"}
        assert c.gate.dnc.lookup("+12125550000") == ["internal"]
        assert c.applied and c.applied[-1][0].buyers[0].id == "b1"
    finally:
        await close(c)


async def test_after_a_database_outage_the_instance_catches_up(
    database_url: str, pg_schema: str, secret: bytes
) -> None:
    a = Store(schema=pg_schema, max_size=3)
    await a.connect(database_url)
    await a.migrate()
    with PgProxy(upstream_of(database_url)) as proxy:
        b = await make_instance(via_port(database_url, proxy.port), pg_schema, secret, poll=0.5)
        try:
            await until(lambda: b.state.connected)
            proxy.cut()
            await until(lambda: not b.state.connected, timeout=3.0)
            # Changes while B cannot hear them: their notifications are lost to it.
            await a.compliance.insert_consent(
                ConsentRecord(id="k1", caller=CALLER, campaign_id="c1", granted_at=AT)
            )
            await a.dnc.save(
                DncList("internal", source="api", loaded_at=AT, keys=array("d", [2125551234.0]))
            )
            await asyncio.sleep(0.3)
            assert not b.gate.consent.has_valid(CALLER, "c1", AT)
            proxy.restore()
            await until(lambda: b.state.connected, timeout=8.0)
            await until(lambda: b.gate.consent.has_valid(CALLER, "c1", AT))
            await until(lambda: b.gate.dnc.lookup(CALLER) == ["internal"])
        finally:
            await close(b)
    await a.close()


async def test_a_notification_never_takes_memory_back(pair: tuple[Store, Instance]) -> None:
    """A list the API stored itself (newer) is not replaced by an older sync."""
    a, b = pair
    v = await a.dnc.save(
        DncList("internal", source="api", loaded_at=AT, keys=array("d", [2125551234.0]))
    )
    await until(lambda: b.state.dnc_versions.get("internal") == v)
    newer = DncList("internal", source="api", loaded_at=AT, keys=array("d", [2125550000.0]))
    b.gate.dnc.put(newer)
    b.state.dnc_versions["internal"] = v + 100  # as if B's API had stored version v + 100
    await a.dnc.save(
        DncList("other", source="api", loaded_at=AT, keys=array("d", [2125550001.0]))
    )
    await until(lambda: "other" in b.gate.dnc)
    assert b.gate.dnc["internal"] is newer


async def test_instances_must_share_the_erasure_secret(pair: tuple[Store, Instance]) -> None:
    store, _ = pair
    first = secrets.token_bytes(32)
    await check_erasure_secret(store, first, "DCE_ERASURE_SECRET")
    await check_erasure_secret(store, first, "DCE_ERASURE_SECRET")
    with pytest.raises(SecretMismatch, match="same secret"):
        await check_erasure_secret(store, secrets.token_bytes(32), "/var/dce/erasure_secret")
