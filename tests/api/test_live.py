"""``/calls/live``: the running switch's calls through the API (api/live.py).

The switch side is a plain-data LiveSource (tests/api/conftest.py ``LiveTable``); the real
one, over a running ``dce run``, is tested in tests/integration/test_live_calls.py.
"""

from __future__ import annotations

from tests.api.conftest import Api, live_call


async def test_admin_sees_every_live_call_oldest_first(api: Api) -> None:
    api.live.calls["live-0"] = live_call("live-0", received_at="2026-01-15T11:00:00Z",
                                         state="ringing", answered_at=None, duration_ms=0)
    r = await api.call("GET", "/api/v1/calls/live")
    assert r.status == 200, r.body
    assert [c["call_id"] for c in r.body["items"]] == ["live-0", "live-1", "live-2"]
    first = r.body["items"][1]
    assert first["buyer_id"] == "b1" and first["state"] == "answered"
    assert first["received_at"] == "2026-01-15T12:00:00Z"
    assert first["packets_a_to_b"] == 1500 and first["duration_ms"] == 30_000
    assert r.body["items"][0]["answered_at"] is None


async def test_filters(api: Api) -> None:
    r = await api.call("GET", "/api/v1/calls/live?buyer_id=b2")
    assert [c["call_id"] for c in r.body["items"]] == ["live-2"]
    r = await api.call("GET", "/api/v1/calls/live?campaign_id=c9")
    assert r.body["items"] == []
    r = await api.call("GET", "/api/v1/calls/live?state=answered")
    assert r.status == 422 and r.body["detail"]["field"] == "state"


async def test_a_buyer_sees_only_its_own_calls(api: Api) -> None:
    r = await api.call("GET", "/api/v1/calls/live", who="own")
    assert [c["call_id"] for c in r.body["items"]] == ["live-1"]
    r = await api.call("GET", "/api/v1/calls/live?buyer_id=b2", who="own")
    assert r.status == 200 and r.body["items"] == []


async def test_hang_up_answers_the_call_it_ended(api: Api) -> None:
    r = await api.call("DELETE", "/api/v1/calls/live/live-2")
    assert r.status == 200, r.body
    assert r.body["call_id"] == "live-2" and r.body["buyer_id"] == "b2"
    assert api.live.hung_up == ["live-2"]
    r = await api.call("GET", "/api/v1/calls/live")
    assert [c["call_id"] for c in r.body["items"]] == ["live-1"]
    r = await api.call("DELETE", "/api/v1/calls/live/live-2")
    assert r.status == 404 and "live-2" in r.body["detail"]


async def test_a_buyer_cannot_hang_up(api: Api) -> None:
    r = await api.call("DELETE", "/api/v1/calls/live/live-1", who="own")
    assert r.status == 403
    assert api.live.hung_up == []


async def test_cdr_routes_still_answer_beside_live(api: Api) -> None:
    # /calls/live is registered before /calls/{call_id}; a CDR id is still a CDR id.
    r = await api.call("GET", "/api/v1/calls/nope")
    assert r.status == 404
