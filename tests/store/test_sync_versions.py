"""Migration 0005's triggers: every write of shared state bumps a version and notifies, in the
writing transaction; rows carry their version; the erasure secret's fingerprint."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest

from compliance.consent import ConsentRecord
from exchange.models import BidProfile, Buyer, Campaign, ExchangeConfig, Trunk
from store.database import SYNC_CHANNEL, Store
from store.errors import StoreConflict

AT = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


class Heard:
    """Notifications on ``dce_sync`` as (schema, kind, version), from a connection of its own;
    only those of ``schemas`` (other tests may write in the same database meanwhile)."""

    def __init__(self, *schemas: str) -> None:
        self.schemas = set(schemas)
        self.items: list[tuple[str, str, int]] = []
        self.arrived = asyncio.Event()

    def __call__(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        schema, kind, version = payload.split(" ")
        if schema in self.schemas:
            self.items.append((schema, kind, int(version)))
            self.arrived.set()

    async def next(self, timeout: float = 2.0) -> tuple[str, str, int]:
        await asyncio.wait_for(self.arrived.wait(), timeout)
        self.arrived.clear()
        return self.items[-1]

    async def quiet(self, seconds: float = 0.2) -> bool:
        """Nothing arrives for ``seconds``."""
        n = len(self.items)
        await asyncio.sleep(seconds)
        return len(self.items) == n


@pytest.fixture
async def heard(store: Store, pg_schema: str) -> AsyncIterator[Heard]:
    conn = await store.listener()
    h = Heard(pg_schema, pg_schema + "_b")
    await conn.add_listener(SYNC_CHANNEL, h)
    yield h
    await conn.close()


def consent(cid: str, caller: str = "+12125551234") -> ConsentRecord:
    return ConsentRecord(id=cid, caller=caller, campaign_id="c1", granted_at=AT)


async def test_exchange_writes_notify_at_commit_with_a_new_version(
    store: Store, heard: Heard, pg_schema: str
) -> None:
    before = (await store.versions())["exchange"][0]
    await store.exchange.insert_doc("trunks", Trunk(id="t1", name="seller"))
    schema, kind, v1 = await heard.next()
    assert (schema, kind) == (pg_schema, "exchange") and v1 > before
    await store.exchange.insert_buyer(
        Buyer(id="b1", name="buyer", profiles=[BidProfile(id="p1", bid=Decimal(5))]), "h" * 64
    )
    assert (await heard.next())[2] > v1
    version, cfg = await store.exchange.read_config_versioned()
    assert version == heard.items[-1][2] and [b.id for b in cfg.buyers] == ["b1"]
    # dce config apply's path, several tables in one transaction: the last notification
    # names the version that holds all of it.
    await store.exchange.sync_config(
        ExchangeConfig(campaigns=[Campaign(id="c1", name="c", numbers=["+18005550100"])])
    )
    await heard.next()
    assert (await store.exchange.read_config_versioned())[0] == heard.items[-1][2]


async def test_nothing_is_notified_before_commit_or_after_rollback(
    store: Store, heard: Heard
) -> None:
    async with store.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("INSERT INTO trunks (id, doc) VALUES ('t9', '{}')")
        assert await heard.quiet()
        await tx.rollback()
    assert await heard.quiet()
    assert (await store.versions())["exchange"][0] == 0


async def test_consent_rows_carry_their_version(store: Store, heard: Heard) -> None:
    await store.compliance.insert_consent(consent("k1"))
    v1 = (await heard.next())[2]
    await store.compliance.insert_consent(consent("k2", "+13125550000"))
    v2 = (await heard.next())[2]
    assert v2 > v1
    changes = await store.compliance.consents_since(v1)
    assert [r.id for r in changes.consents] == ["k2"] and changes.version == v2
    assert [r.id for r in (await store.compliance.consents_since(0)).consents] == ["k1", "k2"]
    # A revocation rewrites the row: it comes again, newer.
    await store.compliance.update_consent(
        ConsentRecord(id="k1", caller="+12125551234", campaign_id="c1", granted_at=AT,
                      revoked_at=AT)
    )  # fmt: skip
    changes = await store.compliance.consents_since(v2)
    assert [(r.id, r.revoked_at) for r in changes.consents] == [("k1", AT)]
    # A deletion cannot be read by version: it moves the reset counter.
    resets = changes.resets
    async with store.pool.acquire() as conn:
        await conn.execute("DELETE FROM consents WHERE id = 'k2'")
    assert (await heard.next())[1] == "consent"
    assert (await store.compliance.consents_since(0)).resets == resets + 1


async def test_an_erasure_notifies_consent_and_erasure(store: Store, heard: Heard) -> None:
    await store.compliance.insert_consent(consent("k1"))
    await heard.next()
    held = (await store.versions())["erasure"][0]
    await store.compliance.erase_caller(["+12125551234", "12125551234"], "hmac:ab", ["internal"])
    await asyncio.sleep(0.2)
    kinds = {k for _, k, _ in heard.items[1:]}
    assert kinds == {"consent", "erasure"}
    changes = await store.compliance.suppressions_since(held)
    assert changes.suppressions == {"hmac:ab": ["internal"]}
    consents = await store.compliance.consents_since(0)
    assert [r.caller for r in consents.consents] == ["hmac:ab"]


async def test_dnc_list_writes_notify(store: Store, heard: Heard) -> None:
    from array import array

    from compliance.dnc import DncList

    v = await store.dnc.save(
        DncList("internal", source="t", loaded_at=AT, keys=array("d", [2125551234.0]))
    )
    assert (await heard.next())[1:] == ("dnc", v)


async def test_the_erasure_secret_fingerprint_must_match(store: Store) -> None:
    await store.check_secret("erasure_secret", "aa")
    await store.check_secret("erasure_secret", "aa")  # the same again: fine
    with pytest.raises(StoreConflict):
        await store.check_secret("erasure_secret", "bb")


async def test_notifications_of_another_schema_name_it(
    store: Store, heard: Heard, database_url: str, pg_schema: str
) -> None:
    other = Store(schema=pg_schema + "_b")
    await other.connect(database_url)
    try:
        await other.migrate()
        await other.exchange.insert_doc("trunks", Trunk(id="t1", name="seller"))
        schema, _, _ = await heard.next()
        assert schema == pg_schema + "_b"  # a listener of another schema tells them apart
    finally:
        async with other.pool.acquire() as conn:
            await conn.execute(f'DROP SCHEMA "{pg_schema}_b" CASCADE')
        await other.close()


async def test_the_listener_is_a_connection_of_its_own(store: Store) -> None:
    conn = await store.listener()
    try:
        assert isinstance(conn, asyncpg.Connection)
        assert await conn.fetchval("SELECT count(*) FROM sync_versions") == 4
    finally:
        await conn.close()
