"""api/erasure.py over real HTTP and PostgreSQL: GDPR erasure, and the gate after a restart."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from api.routes import API_PREFIX
from compliance.check import Gate
from compliance.erasure import ALL, caller_hash
from dce.sync import SharedState
from exchange.auction_index import compile_index
from tests.api.conftest import CALLER, Api, auction_record, make_cdr

V = API_PREFIX
T0 = datetime(2026, 11, 20, 12, tzinfo=UTC)


async def test_erasure_replaces_the_number_everywhere(api: Api) -> None:
    other = "+13125550000"
    await api.insert_cdrs(
        [
            make_cdr(1, at=T0, auction=auction_record()),
            make_cdr(2, at=T0 + timedelta(days=40), caller=CALLER[1:]),  # stored without "+"
            make_cdr(3, at=T0, caller=other),
        ]
    )
    for cid, caller in (("k1", CALLER), ("k2", other)):
        r = await api.call("POST", f"{V}/consent", json={
            "id": cid, "caller": caller, "campaign_id": "c1",
            "source_url": f"https://lander.example/?phone={caller[2:]}"})  # fmt: skip
        assert r.status == 201
    await api.call(
        "POST", f"{V}/dnc?list=internal", data="2125551234\n3125550000\n", content_type="text/plain"
    )

    r = await api.call("DELETE", f"{V}/callers/%2B12125551234")
    assert r.status == 200, r.body
    h = api.gate.suppression.hash(CALLER)  # type: ignore[union-attr]
    assert r.body == {
        "hash": h,
        "cdrs": 2,
        "consent_records": 1,
        "dnc_lists": ["internal"],
        "suppressed": ["internal"],
    }
    assert h.startswith("hmac:") and h != caller_hash(CALLER, b"0" * 32)

    # Nothing in the database holds the number in any spelling any more.
    dump = await api.rows(
        "SELECT caller, auction::text AS a FROM cdrs UNION ALL "
        "SELECT caller, doc::text FROM consents"
    )
    text = json.dumps(dump, default=str)
    assert "2125551234" not in text
    assert "3125550000" in text  # the other caller is untouched
    cdr = await api.store.cdrs.fetch("call-00001")
    assert cdr is not None and cdr["caller"] == h
    assert cdr["auction"]["note"] == f"caller {h} via rtb"
    assert cdr["auction"]["bids"] == auction_record()["bids"]  # the rest of the record stays
    consent = await api.store.compliance.get_consent("k1")
    assert consent is not None and consent.caller == h and h in (consent.source_url or "")

    # In memory: off the DNC list but still blocked on it; consent rewritten.
    assert api.gate.dnc["internal"].contains(CALLER) is False
    assert api.gate.suppression.scope(CALLER) == frozenset({"internal"})  # type: ignore[union-attr]
    assert api.gate.consent.for_caller(CALLER) == []
    stored = await api.store.dnc.load("internal")
    assert stored is not None and stored.contains(CALLER) is False
    lookup = await api.call("GET", f"{V}/dnc/{CALLER}")
    assert lookup.body == {"number": CALLER, "lists": ["internal"], "suppressed": True}
    assert (await api.rows("SELECT hash, scope FROM suppressions")) == [
        {"hash": h, "scope": ["internal"]}
    ]

    # Erasing again (now with a block on every call) finds nothing more and widens the scope.
    r = await api.call("DELETE", f"{V}/callers/{CALLER}?block_all=true")
    assert r.body["cdrs"] == 0 and r.body["suppressed"] == sorted([ALL, "internal"])
    assert (await api.store.compliance.load_suppressions()) == {h: sorted([ALL, "internal"])}


async def test_erasure_survives_a_restart(api: Api) -> None:
    await api.call("POST", f"{V}/consent", json={"caller": CALLER, "campaign_id": "c1"})
    await api.call("POST", f"{V}/consent", json={"caller": "+13125550000", "campaign_id": "c1"})
    await api.call("DELETE", f"{V}/callers/{CALLER}?block_all=true")
    # A new process: the gate is filled from the database with the same secret.
    gate = Gate()
    secret = api.gate.suppression._secret  # type: ignore[union-attr]
    await SharedState(
        api.store, gate, secret, compile=compile_index, apply_exchange=lambda c, i: None
    ).load()
    assert gate.suppression is not None and gate.suppression.scope(CALLER) == frozenset({ALL})
    # The erased caller's record is in the database (as evidence) but cannot match a number.
    assert len(gate.consent) == 1
    assert gate.consent.has_valid("+13125550000", "c1", api.clock.wall())


async def test_erasure_without_secret_is_503(api: Api) -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from api.app import build_api

    async def nothing() -> None:
        return None

    app = build_api(api.store, admin_token="t" * 20, on_change=nothing, wall=api.clock.wall)
    root = web.Application()
    root.add_subapp(V, app)
    await api.insert_cdrs([make_cdr(1, at=T0)])
    async with TestClient(TestServer(root, host="127.0.0.1")) as client:
        headers = {"Authorization": "Bearer " + "t" * 20}
        async with client.delete(f"{V}/callers/{CALLER}", headers=headers) as r:
            assert r.status == 503
    assert (await api.store.cdrs.fetch("call-00001") or {})["caller"] == CALLER


async def test_erasure_bad_number(api: Api) -> None:
    r = await api.call("DELETE", f"{V}/callers/anonymous")
    assert r.status == 422 and r.body["detail"]["field"] == "number"


async def test_erasure_flushes_queued_cdrs_first(api: Api, tmp_path: Path) -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from api.app import build_api
    from store.writer import CdrWriter

    async def nothing() -> None:
        return None

    await api.store.ensure_partitions(T0, months_ahead=0)
    writer = CdrWriter(api.store, tmp_path / "spool", flush_interval=60.0, batch_size=1000)
    await writer.start()
    try:
        app = build_api(
            api.store,
            admin_token="t" * 20,
            on_change=nothing,
            gate=api.gate,
            wall=api.clock.wall,
            flush_cdrs=writer.flush,
        )
        root = web.Application()
        root.add_subapp(V, app)
        writer.submit(make_cdr(1, at=T0))  # still queued: the writer waits up to 60 s
        assert await api.store.cdrs.count() == 0
        async with TestClient(TestServer(root, host="127.0.0.1")) as client:
            headers = {"Authorization": "Bearer " + "t" * 20}
            async with client.delete(f"{V}/callers/{CALLER}", headers=headers) as r:
                assert r.status == 200
                assert (await r.json())["cdrs"] == 1
    finally:
        await writer.close()
    row = await api.store.cdrs.fetch("call-00001")
    assert row is not None and row["caller"].startswith("hmac:")
