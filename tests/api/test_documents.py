"""api/documents.py over real HTTP: trunks, campaigns, endpoints and profiles round trips."""

from __future__ import annotations

from typing import Any

import pytest

from api.routes import API_PREFIX
from tests.api.conftest import Api

V = API_PREFIX
B1 = f"{V}/buyers/b1"


@pytest.mark.parametrize(
    ("base", "create", "put", "patch", "field", "value"),
    [
        (f"{V}/trunks", {"id": "t9", "name": "N", "payout_share": "55.5"},
         {"id": "t9", "name": "M", "source_ips": ["198.51.100.0/24"]},
         {"payout_share": "60"}, "payout_share", "60"),
        (f"{V}/campaigns", {"id": "c9", "name": "N", "numbers": ["+18005550999"]},
         {"id": "c9", "name": "M", "numbers": ["+18005550998"], "auction": "first_price"},
         {"compliance": {"consent_required": True}}, "compliance",
         {"calling_hours": True, "hours_window": "08:00-21:00", "consent_required": True,
          "dnc_lists": [], "min_attestation": None, "fraud_threshold": 80}),
        (f"{B1}/endpoints", {"id": "e9", "uri": "sip:n@192.0.2.30"},
         {"id": "e9", "uri": "sips:m@example.com:5061", "max_concurrent": 3},
         {"active": False}, "active", False),
        (f"{B1}/profiles", {"id": "p9", "campaign_id": "c1", "bid": "4.125"},
         {"id": "p9", "numbers": ["+18005550100"], "bid": "5", "timezone": "America/Chicago",
          "hours": {"mon": ["09:00-17:00"]}, "caps": {"daily": 10}},
         {"caps": {"hourly": 2}}, "caps",
         {"concurrent": None, "hourly": 2, "daily": 10, "monthly": None, "budget_daily": None,
          "budget_monthly": None}),
    ],
    ids=["trunks", "campaigns", "endpoints", "profiles"],
)  # fmt: skip
async def test_crud_round_trip(
    api: Api,
    base: str,
    create: dict[str, Any],
    put: dict[str, Any],
    patch: dict[str, Any],
    field: str,
    value: Any,
) -> None:
    item = f"{base}/{create['id']}"
    r = await api.call("POST", base, json=create)
    assert r.status == 201, r.body
    assert r.headers["Location"] == item
    assert len(api.changes) == 1
    got = await api.call("GET", item)
    assert got.status == 200 and got.body == r.body
    assert _contains(got.body, create)
    listed = await api.call("GET", base)
    assert create["id"] in [x["id"] for x in listed.body["items"]]

    r = await api.call("PUT", item, json=put)
    assert r.status == 200, r.body
    got = await api.call("GET", item)
    assert _contains(got.body, put)
    # PUT replaces: a field set at creation and absent now is back to its default.
    dropped = set(create) - set(put)
    assert all(got.body[k] != create[k] for k in dropped)

    r = await api.call("PATCH", item, json=patch, content_type="application/merge-patch+json")
    assert r.status == 200, r.body
    got = await api.call("GET", item)
    assert got.body[field] == value
    assert _contains(got.body, {k: v for k, v in put.items() if k not in patch})  # merged

    assert (await api.call("DELETE", item)).status == 204
    assert (await api.call("GET", item)).status == 404
    assert (await api.call("DELETE", item)).status == 404
    assert len(api.changes) == 4  # create, put, patch, delete: each reloaded the switch


def _contains(actual: Any, expected: Any) -> bool:
    """``expected`` is ``actual`` with some object fields left out (responses show defaults)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and _contains(actual[k], v) for k, v in expected.items()
        )
    return bool(actual == expected)


async def test_endpoints_keep_failover_order(api: Api) -> None:
    for eid in ("z", "a", "m"):
        r = await api.call("POST", f"{B1}/endpoints", json={"id": eid, "uri": f"sip:{eid}@h"})
        assert r.status == 201
    await api.call("PUT", f"{B1}/endpoints/a", json={"id": "a", "uri": "sip:a2@h"})
    listed = await api.call("GET", f"{B1}/endpoints")
    assert [e["id"] for e in listed.body["items"]] == ["e1", "z", "a", "m"]
    cfg = api.changes[-1]
    assert [e.id for e in next(b for b in cfg.buyers if b.id == "b1").endpoints] == [
        "e1",
        "z",
        "a",
        "m",
    ]


async def test_change_reaches_the_switch_reload(api: Api) -> None:
    r = await api.call("PATCH", f"{B1}/profiles/p1", who="own", json={"bid": "99.5"})
    assert r.status == 200
    cfg = api.changes[-1]
    profile = next(b for b in cfg.buyers if b.id == "b1").profiles[0]
    assert str(profile.bid) == "99.5"


async def test_patch_null_resets_to_default(api: Api) -> None:
    await api.call("PATCH", f"{B1}/profiles/p1", json={"timezone": "America/Denver"})
    r = await api.call("PATCH", f"{B1}/profiles/p1", json={"timezone": None})
    assert r.status == 200 and r.body["timezone"] == "America/New_York"


async def test_trunk_password_is_write_only(api: Api) -> None:
    body = {"id": "t9", "name": "Digest", "username": "seller", "password": "s3cret"}
    r = await api.call("POST", f"{V}/trunks", json=body)
    assert r.status == 201 and r.body["username"] == "seller" and r.body["password"] is None
    got = await api.call("GET", f"{V}/trunks/t9")
    assert got.body["password"] is None
    assert "s3cret" not in str((await api.call("GET", f"{V}/trunks")).body)
    # PATCH keeps it (the switch still authenticates the trunk with it).
    await api.call("PATCH", f"{V}/trunks/t9", json={"name": "Renamed"})
    trunk = next(t for t in api.changes[-1].trunks if t.id == "t9")
    assert trunk.password == "s3cret" and trunk.name == "Renamed"
