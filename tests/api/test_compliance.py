"""The compliance routes (issue 5): DNC import and lookup, consent records, GDPR erasure."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from api.app import API_PREFIX, load_compliance
from compliance.check import Gate
from compliance.dnc import DncStore
from compliance.erasure import ALL, caller_hash
from tests.api.conftest import CALLER, Api, auction_record, make_cdr

V = API_PREFIX
T0 = datetime(2026, 11, 20, 12, tzinfo=UTC)


# ----------------------------------------------------------------------------------------------
# DNC


async def test_dnc_import_counts_and_lookup(api: Api) -> None:
    body = "\n".join(
        [
            "phone,name",  # a header: rejected, counted
            "(212) 555-1234,Alice",
            "+1 646 555 0000",
            "12125550001",
            "not a number",
            "",  # blank lines are neither read nor rejected
            "2125551234",  # a duplicate of the first
        ]
    )
    r = await api.call(
        "POST", f"{V}/dnc?list=federal&source=FTC%20SAN%201234", data=body, content_type="text/csv"
    )
    assert r.status == 200, r.body
    assert r.body == {
        "list": "federal",
        "read": 6,
        "imported": 4,
        "rejected": 2,
        "duplicates": 1,
        "total": 3,
    }
    hit = await api.call("GET", f"{V}/dnc/{CALLER}")
    assert hit.body == {"number": CALLER, "lists": ["federal"], "suppressed": False}
    # Any spelling of the number is looked up by its E.164 form.
    assert (await api.call("GET", f"{V}/dnc/(646)%20555-0000")).body["lists"] == ["federal"]
    miss = await api.call("GET", f"{V}/dnc/+13125550000")
    assert miss.body["lists"] == []
    bad = await api.call("GET", f"{V}/dnc/hello")
    assert bad.status == 422 and bad.body["detail"]["field"] == "number"

    listed = (await api.call("GET", f"{V}/dnc")).body["items"]
    assert listed == [
        {
            "name": "federal",
            "source": "FTC SAN 1234",
            "loaded_at": "2026-11-23T15:00:00Z",  # the API's wall clock
            "numbers": 3,
            "max_age_days": 31,
            "stale": False,
        }
    ]
    # The gate sees it at once, and it is saved where the switch's watcher reloads from.
    assert api.gate.dnc.lookup(CALLER) == ["federal"]
    assert DncStore.load(api.dnc_dir).lookup(CALLER) == ["federal"]


async def test_dnc_replace_merge_and_staleness(api: Api) -> None:
    await api.call("POST", f"{V}/dnc?list=internal", data="2125551234\n", content_type="text/plain")
    r = await api.call(
        "POST", f"{V}/dnc?list=internal&merge=true&max_age_days=none", data="2125550001\n",
        content_type="text/plain",
    )  # fmt: skip
    assert r.body["total"] == 2
    r = await api.call(
        "POST", f"{V}/dnc?list=internal&loaded_at=2026-09-01T00:00:00Z", data="2125550002\n",
        content_type="text/plain",
    )  # fmt: skip
    assert r.body["total"] == 1  # replaced
    info = (await api.call("GET", f"{V}/dnc")).body["items"][0]
    assert info["stale"] is True and info["max_age_days"] == 31


async def test_dnc_import_of_nothing_keeps_the_list(api: Api) -> None:
    await api.call("POST", f"{V}/dnc?list=internal", data="2125551234\n", content_type="text/plain")
    for body in ("", '{"numbers": []}\n'):
        r = await api.call("POST", f"{V}/dnc?list=internal", data=body, content_type="text/plain")
        assert r.status == 422 and r.body["detail"]["field"] == "body"
    assert api.gate.dnc.lookup(CALLER) == ["internal"]


async def test_dnc_import_streams_bodies_over_1_mib(api: Api) -> None:
    n = 200_000  # ~2.2 MB: more than the 1 MiB JSON limit
    body = "".join(f"212{i:07d}\n" for i in range(2_000_000, 2_000_000 + n)).encode()
    assert len(body) > 1 << 20
    r = await api.call("POST", f"{V}/dnc?list=big", data=body, content_type="text/plain")
    assert r.status == 200, r.body
    assert r.body["imported"] == n and r.body["rejected"] == 0
    assert api.gate.dnc.lookup("+12122000000") == ["big"]


async def test_dnc_import_over_its_limit_is_413(api: Api, tmp_path: object) -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from api.app import build_api

    async def nothing() -> None:
        return None

    app = build_api(
        api.store, admin_token="t" * 20, on_change=nothing, wall=api.clock.wall, dnc_max_bytes=1000
    )
    root = web.Application()
    root.add_subapp(V, app)
    async with TestClient(TestServer(root, host="127.0.0.1")) as client:
        headers = {"Authorization": "Bearer " + "t" * 20, "Content-Type": "text/plain"}
        async with client.post(f"{V}/dnc?list=x", data=b"2125550000\n" * 200, headers=headers) as r:
            assert r.status == 413
            assert set(json.loads(await r.read())) == {"error", "detail"}

        async def chunks() -> AsyncIterator[
            bytes
        ]:  # no Content-Length: the limit holds while streaming
            for _ in range(200):
                yield b"2125550000\n"

        async with client.post(f"{V}/dnc?list=x", data=chunks(), headers=headers) as r:
            assert r.status == 413


# ----------------------------------------------------------------------------------------------
# Consent


async def test_consent_lifecycle(api: Api) -> None:
    r = await api.call(
        "POST",
        f"{V}/consent",
        json={
            "id": "lead-1",
            "caller": "(212) 555-1234",
            "campaign_id": "c1",
            "trunk_id": "t1",
            "disclosure": "v3 of the TCPA disclosure",
            "source_url": "https://lander.example/quote",
            "certificate_id": "https://cert.trustedform.com/abc123",
            "granted_at": "2026-11-01T10:00:00-05:00",
        },
    )
    assert r.status == 201, r.body
    assert r.headers["Location"] == f"{V}/consent/lead-1"
    assert r.body["caller"] == CALLER and r.body["revoked_at"] is None
    assert api.gate.consent.has_valid(CALLER, "c1", T0)
    assert api.changes == []  # compliance data is not an exchange reload

    dup = await api.call("POST", f"{V}/consent", json={"id": "lead-1", "caller": CALLER,
                                                       "campaign_id": "c1"})  # fmt: skip
    assert dup.status == 409
    # Without id and time: generated, and granted now (the API's clock).
    r2 = await api.call("POST", f"{V}/consent", json={"caller": CALLER, "campaign_id": "c2"})
    assert r2.status == 201 and r2.body["granted_at"] == "2026-11-23T15:00:00Z"

    got = await api.call("GET", f"{V}/consent/lead-1")
    assert got.body == r.body
    listed = await api.call("GET", f"{V}/consent?caller=2125551234&campaign_id=c1")
    assert [x["id"] for x in listed.body["items"]] == ["lead-1"]

    revoked = await api.call("DELETE", f"{V}/consent/lead-1")
    assert revoked.status == 200 and revoked.body["revoked_at"] == "2026-11-23T15:00:00Z"
    assert not api.gate.consent.has_valid(CALLER, "c1", T0 + timedelta(days=10))
    stored = await api.store.get_consent("lead-1")
    assert stored is not None and stored.revoked_at is not None  # kept as evidence
    again = await api.call("DELETE", f"{V}/consent/lead-1")
    assert again.body["revoked_at"] == revoked.body["revoked_at"]  # the first revocation stands

    n = await api.call("DELETE", f"{V}/consent?caller=%2B12125551234")
    assert n.body == {"revoked": 1}  # only the live one (c2)
    assert (await api.call("DELETE", f"{V}/consent")).status == 422
    assert (await api.call("GET", f"{V}/consent/nope")).status == 404


async def test_consent_pagination(api: Api) -> None:
    for i in range(7):
        await api.call("POST", f"{V}/consent", json={"id": f"k{i}", "caller": CALLER,
                                                     "campaign_id": "c1"})  # fmt: skip
    seen: list[str] = []
    cursor = ""
    while True:
        r = await api.call("GET", f"{V}/consent?limit=3{cursor}")
        seen += [x["id"] for x in r.body["items"]]
        if r.body["next_cursor"] is None:
            break
        cursor = f"&cursor={r.body['next_cursor']}"
    assert seen == [f"k{i}" for i in range(7)]


# ----------------------------------------------------------------------------------------------
# Erasure


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
    cdr = await api.store.fetch_cdr("call-00001")
    assert cdr is not None and cdr["caller"] == h
    assert cdr["auction"]["note"] == f"caller {h} via rtb"
    assert cdr["auction"]["bids"] == auction_record()["bids"]  # the rest of the record stays
    consent = await api.store.get_consent("k1")
    assert consent is not None and consent.caller == h and h in (consent.source_url or "")

    # In memory: off the DNC list but still blocked on it; consent rewritten.
    assert api.gate.dnc["internal"].contains(CALLER) is False
    assert api.gate.suppression.scope(CALLER) == frozenset({"internal"})  # type: ignore[union-attr]
    assert api.gate.consent.for_caller(CALLER) == []
    assert DncStore.load(api.dnc_dir)["internal"].contains(CALLER) is False
    lookup = await api.call("GET", f"{V}/dnc/{CALLER}")
    assert lookup.body == {"number": CALLER, "lists": ["internal"], "suppressed": True}
    assert (await api.rows("SELECT hash, scope FROM suppressions")) == [
        {"hash": h, "scope": ["internal"]}
    ]

    # Erasing again (now with a block on every call) finds nothing more and widens the scope.
    r = await api.call("DELETE", f"{V}/callers/{CALLER}?block_all=true")
    assert r.body["cdrs"] == 0 and r.body["suppressed"] == sorted([ALL, "internal"])
    assert (await api.store.load_suppressions()) == {h: sorted([ALL, "internal"])}


async def test_erasure_survives_a_restart(api: Api) -> None:
    await api.call("POST", f"{V}/consent", json={"caller": CALLER, "campaign_id": "c1"})
    await api.call("POST", f"{V}/consent", json={"caller": "+13125550000", "campaign_id": "c1"})
    await api.call("DELETE", f"{V}/callers/{CALLER}?block_all=true")
    # A new process: the gate is filled from the database with the same secret.
    gate = Gate()
    secret = api.gate.suppression._secret  # type: ignore[union-attr]
    await load_compliance(api.store, gate, secret)
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
    assert (await api.store.fetch_cdr("call-00001") or {})["caller"] == CALLER


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
        assert await api.store.count_cdrs() == 0
        async with TestClient(TestServer(root, host="127.0.0.1")) as client:
            headers = {"Authorization": "Bearer " + "t" * 20}
            async with client.delete(f"{V}/callers/{CALLER}", headers=headers) as r:
                assert r.status == 200
                assert (await r.json())["cdrs"] == 1
    finally:
        await writer.close()
    row = await api.store.fetch_cdr("call-00001")
    assert row is not None and row["caller"].startswith("hmac:")
