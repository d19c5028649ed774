"""The admin API under test: a real HTTP server on 127.0.0.1 over a real PostgreSQL schema.

``api`` seeds two buyers (b1, b2, each with an endpoint e1 and a profile p1), two trunks and
two campaigns, and serves ``api.app`` exactly as the switch mounts it. ``on_change``
compiles what is stored, as the switch's reload does, and counts the calls. ``snapshot()``
is everything a request could change, to prove that a refused one changed nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from api.app import mount_api
from api.live import LiveSource
from compliance.check import Gate
from compliance.erasure import Suppression
from exchange.auction_index import compile_index
from exchange.models import BidProfile, Buyer, Campaign, Endpoint, ExchangeConfig, Trunk
from store.cdr import Cdr, Disposition
from store.cdrs import cdr_record
from store.database import Store
from tests.conftest import FakeClock

ADMIN_TOKEN = "admin-" + "a" * 40
KEY_B1 = "bk_test_b1_" + "1" * 24
KEY_B2 = "bk_test_b2_" + "2" * 24
TOKENS: dict[str, str | None] = {
    "admin": ADMIN_TOKEN,
    "own": KEY_B1,  # b1 is "own" in every table: the objects under test are b1's
    "other": KEY_B2,
    "none": None,
    "bad": "not-a-token-anyone-has-0000000000",
}
CALLER = "+12125551234"


def seed_config() -> ExchangeConfig:
    def buyer(bid: str, key: str) -> Buyer:
        return Buyer(
            id=bid,
            name=f"Buyer {bid}",
            api_key=key,
            endpoints=[Endpoint(id="e1", uri=f"sip:{bid}@192.0.2.10")],
            profiles=[BidProfile(id="p1", campaign_id="c1", bid=Decimal("10.50"))],
        )

    return ExchangeConfig(
        trunks=[
            Trunk(id="t1", name="Seller One", source_ips=["192.0.2.0/24"]),
            Trunk(id="t2", name="Seller Two", username="u", password="p"),
        ],
        campaigns=[
            Campaign(id="c1", name="Auto", numbers=["+18005550100"], reserve=Decimal("1.25")),
            Campaign(id="c2", name="Home", numbers=["+18005550200"]),
        ],
        buyers=[buyer("b1", KEY_B1), buyer("b2", KEY_B2)],
    )


def make_cdr(
    i: int,
    *,
    at: datetime,
    buyer_id: str | None = "b1",
    caller: str = CALLER,
    disposition: Disposition = Disposition.ANSWERED,
    campaign_id: str | None = "c1",
    trunk_id: str | None = "t1",
    auction: dict[str, Any] | None = None,
) -> Cdr:
    return Cdr(
        call_id=f"call-{i:05d}",
        a_call_id=f"a-{i}@192.0.2.1",
        trunk_id=trunk_id,
        caller=caller,
        called="+18005550100",
        caller_state="NY",
        received_at=at,
        answered_at=at + timedelta(seconds=2),
        ended_at=at + timedelta(seconds=62),
        duration_ms=60_000,
        disposition=disposition,
        sip_status=200,
        campaign_id=campaign_id,
        buyer_id=buyer_id,
        endpoint="sip:b1@192.0.2.10",
        bid=10_500_000,
        price=7_250_000,
        payout=5_075_000,
        billable=True,
        attempts=1,
        compliance=["dnc:pass"],
        auction=auction,
    )


def auction_record() -> dict[str, Any]:
    """An auction record shaped like exchange/auction.py's, b1 winning over b2."""
    return {
        "campaign_id": "c1",
        "rule": "second_price",
        "reserve": "1.250000",
        "ranking": "ev",
        "tie_break": "x",
        "seq": 7,
        "eligible": ["b1/p1", "b2/p1"],
        "excluded": {"b3/p9": "hours"},
        "bids": {"b1/p1": "10.500000", "b2/p1": "7.250000"},
        "order": [
            {"buyer_id": "b1", "profile_id": "p1", "bid": "10.500000", "price": "7.250000"},
            {"buyer_id": "b2", "profile_id": "p1", "bid": "7.250000", "price": "1.250000"},
        ],
        "winner": {"buyer_id": "b1", "profile_id": "p1", "bid": "10.500000", "price": "7.250000"},
        "price": "7.250000",
        "fallback": [],
        "elapsed_us": 12,
        # Not in today's records; erasure must reach the number wherever it appears.
        "note": f"caller {CALLER} via rtb",
    }


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


def live_call(call_id: str, buyer_id: str | None = "b1", **extra: Any) -> dict[str, Any]:
    """A live call as the switch's LiveSource hands it over (api.models.LiveCall fields)."""
    at = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
    call: dict[str, Any] = {
        "call_id": call_id, "a_call_id": f"a-{call_id}@192.0.2.1", "trunk_id": "t1",
        "source": "sip", "caller": CALLER, "called": "+18005550100", "campaign_id": "c1",
        "buyer_id": buyer_id, "endpoint": "sip:b1@192.0.2.10", "state": "answered",
        "received_at": at, "answered_at": at + timedelta(seconds=2), "duration_ms": 30_000,
        "attempts": 1, "packets_a_to_b": 1500, "packets_b_to_a": 1490,
        "bytes_a_to_b": 258_000, "bytes_b_to_a": 256_280, "packets_dropped": 0,
    }
    call.update(extra)
    return call


@dataclass
class LiveTable:
    """The live calls a switch would report: plain data, hung up by removing them."""

    calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    hung_up: list[str] = field(default_factory=list)

    def source(self) -> LiveSource:
        return LiveSource(calls=lambda: list(self.calls.values()), hang_up=self._hang_up)

    def _hang_up(self, call_id: str) -> dict[str, Any] | None:
        call = self.calls.pop(call_id, None)
        if call is not None:
            self.hung_up.append(call_id)
        return call


@dataclass
class Api:
    client: TestClient[web.Request, web.Application]
    store: Store
    gate: Gate
    clock: FakeClock
    changes: list[ExchangeConfig] = field(default_factory=list)
    live: LiveTable = field(default_factory=LiveTable)

    async def call(
        self,
        method: str,
        path: str,
        *,
        who: str = "admin",
        json: Any = None,
        data: bytes | str | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        h = dict(headers or {})
        token = TOKENS[who]
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        body: bytes | str | None = data
        if json is not None:
            body = msgspec.json.encode(json)
            h.setdefault("Content-Type", "application/json")
        if content_type is not None:
            h["Content-Type"] = content_type
        async with self.client.request(method, path, data=body, headers=h) as resp:
            raw = await resp.read()
            parsed = msgspec.json.decode(raw) if raw else None
            return Reply(resp.status, parsed, dict(resp.headers))

    async def insert_cdrs(self, cdrs: list[Cdr]) -> None:
        """Rows as the CDR writer's COPY writes them (store.cdrs.cdr_record)."""
        months = {(c.received_at.year, c.received_at.month) for c in cdrs}
        for y, m in months:
            await self.store.ensure_partitions(datetime(y, m, 1, tzinfo=UTC), months_ahead=0)
        async with self.store.pool.acquire() as conn:
            await conn.copy_records_to_table(
                "cdrs",
                records=[cdr_record(c) for c in cdrs],
                columns=list(Cdr.__struct_fields__),
                schema_name=self.store.schema,
            )

    async def rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        async with self.store.pool.acquire() as conn:
            return [dict(r) for r in await conn.fetch(sql, *args)]

    async def snapshot(self) -> bytes:
        """Everything a request could change, as one comparable value."""
        cfg = await self.store.exchange.read_config()
        keys = await self.rows("SELECT id, api_key_hash FROM buyers ORDER BY id")
        consents = await self.rows("SELECT id, caller, doc::text AS doc FROM consents ORDER BY id")
        cdrs = await self.rows(
            "SELECT call_id, caller, auction::text AS a FROM cdrs ORDER BY call_id"
        )
        dnc = sorted((lst.name, len(lst)) for lst in self.gate.dnc)
        consent_mem = sorted((r.id, r.caller, str(r.revoked_at)) for r in self.gate.consent)
        return msgspec.json.encode(
            [cfg, keys, consents, cdrs, dnc, consent_mem, len(self.gate.suppression or ()),
             sorted(self.live.calls)],
            enc_hook=str,
        )


@pytest.fixture
async def api(database_url: str, pg_schema: str, tmp_path: Path) -> AsyncIterator[Api]:
    store = Store(schema=pg_schema, max_size=4)
    await store.connect(database_url)
    await store.migrate()
    await store.exchange.upsert_config(seed_config())
    clock = FakeClock()
    gate = Gate(suppression=Suppression(secrets.token_bytes(32)))
    changes: list[ExchangeConfig] = []

    async def on_change() -> None:
        cfg = await store.exchange.read_config()
        compile_index(cfg)  # what the switch's reload does; raises if the API let junk in
        changes.append(cfg)

    live = LiveTable({c["call_id"]: c for c in (live_call("live-1"), live_call("live-2", "b2"))})
    root = web.Application()
    mount_api(
        root,
        store,
        admin_token=ADMIN_TOKEN,
        on_change=on_change,
        gate=gate,
        wall=clock.wall,
        live_calls=live.source(),
    )
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(root, host="127.0.0.1")
    )
    await client.start_server()
    try:
        yield Api(client, store, gate, clock, changes, live)
    finally:
        await client.close()
        await store.close()
