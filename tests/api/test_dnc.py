"""api/dnc.py over real HTTP: DNC import (streamed, limited), the lists, a number's lookup."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from api.routes import API_PREFIX
from tests.api.conftest import CALLER, Api

V = API_PREFIX


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
        # No campaign of the seed config names the list: the answer says it blocks nothing.
        "campaigns": [],
        "warning": "no campaign uses the DNC list 'federal': it blocks no call until a "
        "campaign names it in compliance.dnc_lists",
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
    # The gate sees it at once, and it is stored in the database every instance loads from.
    assert api.gate.dnc.lookup(CALLER) == ["federal"]
    stored = await api.store.dnc.load("federal")
    assert stored is not None and stored.contains(CALLER) and len(stored) == 3


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


async def test_big_dnc_merge_is_built_in_the_worker_and_counts_right(api: Api) -> None:
    # Above _INLINE_SORT numbers the list is sorted in a worker process: merging must still
    # count duplicates against the stored list and keep both parts.
    first = "".join(f"212{i:07d}\n" for i in range(3_000_000, 3_150_000)).encode()
    r = await api.call("POST", f"{V}/dnc?list=merged", data=first, content_type="text/plain")
    assert r.status == 200 and r.body["total"] == 150_000
    second = "".join(f"212{i:07d}\n" for i in range(3_100_000, 3_250_000)).encode()
    r = await api.call(
        "POST", f"{V}/dnc?list=merged&merge=true", data=second, content_type="text/plain"
    )
    assert r.status == 200, r.body
    assert r.body["imported"] == 150_000 and r.body["duplicates"] == 50_000
    assert r.body["total"] == 250_000
    for number in ("+12123000000", "+12123120000", "+12123249999"):
        assert api.gate.dnc.lookup(number) == ["merged"]
    assert api.gate.dnc.lookup("+12123250000") == []
    stored = await api.store.dnc.load("merged")
    assert stored is not None and len(stored) == 250_000


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


async def test_dnc_import_names_the_campaigns_that_use_the_list(api: Api) -> None:
    c1 = (await api.call("GET", f"{V}/campaigns/c1")).body
    c1["compliance"]["dnc_lists"] = ["internal"]
    assert (await api.call("PUT", f"{V}/campaigns/c1", json=c1)).status == 200
    r = await api.call("POST", f"{V}/dnc?list=internal", data="2125551234\n",
                       content_type="text/plain")
    assert r.status == 200, r.body
    assert r.body["campaigns"] == ["c1"] and r.body["warning"] is None
    r = await api.call("POST", f"{V}/dnc?list=intrenal", data="2125551234\n",
                       content_type="text/plain")
    assert r.body["campaigns"] == [] and "'intrenal'" in r.body["warning"]
