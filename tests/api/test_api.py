"""api/app.py over real HTTP and a real PostgreSQL: authorization, CRUD, bad input, OpenAPI.

Every route is in the authorization matrix, for five callers: the admin token, b1's key (the
objects under test are b1's: "own"), b2's key ("other"), no token and an unknown token. A
refused request must leave everything as it was: the exchange objects, consent, CDRs, DNC
lists, and no reload of the switch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from api.app import API_PREFIX, ROUTES, field_of, merge_patch
from compliance.consent import ConsentRecord
from store.database import hash_api_key
from tests.api.conftest import CALLER, Api, make_cdr

V = API_PREFIX


async def _prepare(api: Api) -> None:
    """One CDR of b1 and one consent record, for the routes that read them."""
    await api.insert_cdrs([make_cdr(1, at=datetime(2026, 11, 20, 12, tzinfo=UTC))])
    record = ConsentRecord(
        id="k1",
        caller=CALLER,
        campaign_id="c1",
        granted_at=datetime(2026, 11, 1, tzinfo=UTC),
    )
    await api.store.insert_consent(record)
    api.gate.consent.add(record)


async def _snapshot(api: Api) -> bytes:
    """Everything a request could change, as one comparable value."""
    cfg = await api.store.load_exchange()
    keys = await api.rows("SELECT id, api_key_hash FROM buyers ORDER BY id")
    consents = await api.rows("SELECT id, caller, doc::text AS doc FROM consents ORDER BY id")
    cdrs = await api.rows("SELECT call_id, caller, auction::text AS a FROM cdrs ORDER BY call_id")
    dnc = sorted((lst.name, len(lst)) for lst in api.gate.dnc)
    consent_mem = sorted((r.id, r.caller, str(r.revoked_at)) for r in api.gate.consent)
    return msgspec.json.encode(
        [cfg, keys, consents, cdrs, dnc, consent_mem, len(api.gate.suppression or ())],
        enc_hook=str,
    )


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    access: str  # admin | buyer | buyer-list | public
    ok: int
    json: Any = None
    text: str | None = None

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"


B1 = f"{V}/buyers/b1"
MATRIX = [
    Case("GET", f"{V}/trunks", "admin", 200),
    Case("POST", f"{V}/trunks", "admin", 201, {"id": "t9", "name": "New"}),
    Case("GET", f"{V}/trunks/t1", "admin", 200),
    Case("PUT", f"{V}/trunks/t1", "admin", 200, {"id": "t1", "name": "Renamed"}),
    Case("PATCH", f"{V}/trunks/t1", "admin", 200, {"name": "Patched"}),
    Case("DELETE", f"{V}/trunks/t2", "admin", 204),
    Case("GET", f"{V}/campaigns", "admin", 200),
    Case("POST", f"{V}/campaigns", "admin", 201, {"id": "c9", "name": "N"}),
    Case("GET", f"{V}/campaigns/c1", "admin", 200),
    Case("PUT", f"{V}/campaigns/c1", "admin", 200, {"id": "c1", "name": "A2"}),
    Case("PATCH", f"{V}/campaigns/c1", "admin", 200, {"reserve": "2.00"}),
    Case("DELETE", f"{V}/campaigns/c2", "admin", 204),
    Case("GET", f"{V}/buyers", "buyer-list", 200),
    Case("POST", f"{V}/buyers", "admin", 201, {"id": "b9", "name": "Nine"}),
    Case("GET", B1, "buyer", 200),
    Case("PUT", B1, "buyer", 200, {"id": "b1", "name": "Renamed"}),
    Case("PATCH", B1, "buyer", 200, {"active": False}),
    Case("DELETE", B1, "admin", 204),
    Case("GET", f"{B1}/endpoints", "buyer", 200),
    Case("POST", f"{B1}/endpoints", "buyer", 201, {"id": "e9", "uri": "sip:x@192.0.2.20"}),
    Case("GET", f"{B1}/endpoints/e1", "buyer", 200),
    Case("PUT", f"{B1}/endpoints/e1", "buyer", 200, {"id": "e1", "uri": "sip:y@192.0.2.21"}),
    Case("PATCH", f"{B1}/endpoints/e1", "buyer", 200, {"max_concurrent": 5}),
    Case("DELETE", f"{B1}/endpoints/e1", "buyer", 204),
    Case("GET", f"{B1}/profiles", "buyer", 200),
    Case("POST", f"{B1}/profiles", "buyer", 201, {"id": "p9", "campaign_id": "c1", "bid": "3"}),
    Case("GET", f"{B1}/profiles/p1", "buyer", 200),
    Case("PUT", f"{B1}/profiles/p1", "buyer", 200, {"id": "p1", "bid": "11.00"}),
    Case("PATCH", f"{B1}/profiles/p1", "buyer", 200, {"bid": "12.00"}),
    Case("DELETE", f"{B1}/profiles/p1", "buyer", 204),
    Case("GET", f"{V}/calls", "buyer-list", 200),
    Case("GET", f"{V}/calls/call-00001", "buyer", 200),
    Case("POST", f"{V}/dnc?list=internal", "admin", 200, text="2125550000\n"),
    Case("GET", f"{V}/dnc", "admin", 200),
    Case("GET", f"{V}/dnc/{CALLER}", "admin", 200),
    Case("POST", f"{V}/consent", "admin", 201, {"caller": "2125550000", "campaign_id": "c1"}),
    Case("GET", f"{V}/consent", "admin", 200),
    Case("GET", f"{V}/consent/k1", "admin", 200),
    Case("DELETE", f"{V}/consent/k1", "admin", 200),
    Case("DELETE", f"{V}/consent?caller=2125551234", "admin", 200),
    Case("DELETE", f"{V}/callers/{CALLER}", "admin", 200),
    Case("GET", f"{V}/openapi.json", "public", 200),
    Case("GET", "/openapi.json", "public", 200),
]
WHO = ["admin", "own", "other", "none", "bad"]


def _expected(case: Case, who: str) -> int:
    if case.access == "public":
        return 200
    if who in ("none", "bad"):
        return 401
    if who == "admin":
        return case.ok
    if case.access == "admin":
        return 403
    if who == "own" or case.access == "buyer-list":
        return case.ok
    return 404  # another buyer's objects do not exist for this key


def test_matrix_covers_every_route() -> None:
    for r in ROUTES:
        pattern = re.compile(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(V + r.path)) + "$")
        assert any(c.method == r.method and pattern.match(c.path.split("?")[0]) for c in MATRIX), (
            f"{r.method} {r.path} is not in the authorization matrix"
        )


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("case", MATRIX, ids=[c.id for c in MATRIX])
async def test_authorization_matrix(api: Api, case: Case, who: str) -> None:
    await _prepare(api)
    before = await _snapshot(api)
    changes = len(api.changes)
    reply = await api.call(
        case.method,
        case.path,
        who=who,
        json=case.json,
        data=case.text,
        content_type="text/plain" if case.text is not None else None,
    )
    expected = _expected(case, who)
    assert reply.status == expected, reply.body
    if expected >= 400:
        assert set(reply.body) == {"error", "detail"}
        assert await _snapshot(api) == before, "a refused request changed something"
        assert len(api.changes) == changes
    if expected == 401:
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    if case.access == "buyer-list" and who == "other":
        # b2's view of a list: none of b1's objects.
        assert all(item.get("buyer_id", item.get("id")) != "b1" for item in reply.body["items"])
        assert reply.body["items"] == [] or case.path.endswith("/buyers")
    if case.access == "buyer-list" and who == "own":
        assert reply.body["items"], "b1 sees its own objects"
        assert {item.get("buyer_id", item.get("id")) for item in reply.body["items"]} == {"b1"}


# ----------------------------------------------------------------------------------------------
# CRUD round trips


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


async def test_buyer_round_trip_key_shown_once(api: Api) -> None:
    r = await api.call(
        "POST",
        f"{V}/buyers",
        json={
            "id": "b9",
            "name": "Nine",
            "endpoints": [{"id": "e1", "uri": "sip:nine@192.0.2.9"}],
            "profiles": [{"id": "p1", "campaign_id": "c2", "bid": "2.5"}],
        },
    )
    assert r.status == 201, r.body
    key = r.body["api_key"]
    assert key.startswith("dce_") and len(key) > 32
    rows = await api.rows("SELECT api_key_hash FROM buyers WHERE id = 'b9'")
    assert rows == [{"api_key_hash": hash_api_key(key)}]  # only the hash is stored

    got = await api.call("GET", f"{V}/buyers/b9")
    assert "api_key" not in got.body
    assert [e["id"] for e in got.body["endpoints"]] == ["e1"]
    assert got.body["profiles"][0]["bid"] == "2.5"
    listed = await api.call("GET", f"{V}/buyers")
    assert all("api_key" not in b for b in listed.body["items"])

    # The generated key works, for b9 only.
    api_tokens = {"Authorization": f"Bearer {key}"}
    mine = await api.call("GET", f"{V}/buyers/b9/profiles", who="none", headers=api_tokens)
    assert mine.status == 200
    theirs = await api.call("GET", f"{V}/buyers/b1/profiles", who="none", headers=api_tokens)
    assert theirs.status == 404

    # Rotation by PATCH: the old key stops working, the new one is never echoed.
    new_key = "rotated-key-" + "9" * 20
    r = await api.call(
        "PATCH", f"{V}/buyers/b9", who="none", headers=api_tokens, json={"api_key": new_key}
    )
    assert r.status == 200 and "api_key" not in r.body
    old = await api.call("GET", f"{V}/buyers/b9", who="none", headers=api_tokens)
    assert old.status == 401
    new = await api.call(
        "GET", f"{V}/buyers/b9", who="none", headers={"Authorization": f"Bearer {new_key}"}
    )
    assert new.status == 200 and new.body["name"] == "Nine"

    # PUT keeps endpoints and profiles (they have their own routes).
    r = await api.call("PUT", f"{V}/buyers/b9", json={"id": "b9", "name": "Nine!"})
    assert r.status == 200 and r.body["name"] == "Nine!" and len(r.body["profiles"]) == 1

    assert (await api.call("DELETE", f"{V}/buyers/b9")).status == 204
    assert await api.rows("SELECT id FROM profiles WHERE buyer_id = 'b9'") == []


async def test_given_api_key_is_returned_once_and_duplicates_refused(api: Api) -> None:
    key = "my-own-key-" + "x" * 20
    r = await api.call("POST", f"{V}/buyers", json={"id": "b8", "name": "E", "api_key": key})
    assert r.status == 201 and r.body["api_key"] == key
    r = await api.call("POST", f"{V}/buyers", json={"id": "b7", "name": "F", "api_key": key})
    assert r.status == 409
    assert await api.rows("SELECT id FROM buyers WHERE id = 'b7'") == []


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


# ----------------------------------------------------------------------------------------------
# Bad input: a 4xx naming the field, nothing stored, no reload


@dataclass(frozen=True)
class Bad:
    id: str
    method: str
    path: str
    body: Any
    status: int
    field: str | None = None
    content_type: str | None = None


_PROFILE = {"id": "p9", "campaign_id": "c1", "bid": "1"}
BAD = [
    Bad("unknown field", "POST", f"{B1}/profiles", {**_PROFILE, "colour": "red"}, 422, "colour"),
    Bad("unknown nested field", "POST", f"{B1}/profiles", {**_PROFILE, "caps": {"x": 1}}, 422,
        "caps.x"),
    Bad("wrong type", "POST", f"{B1}/profiles", {**_PROFILE, "caps": {"daily": "ten"}}, 422,
        "caps.daily"),
    Bad("negative bid", "POST", f"{B1}/profiles", {**_PROFILE, "bid": "-1"}, 422, "bid"),
    Bad("float-ish huge bid", "POST", f"{B1}/profiles", {**_PROFILE, "bid": 1e300}, 422, "bid"),
    Bad("too many decimals", "POST", f"{B1}/profiles", {**_PROFILE, "bid": "0.0000001"}, 422,
        "bid"),
    Bad("negative cap", "POST", f"{B1}/profiles", {**_PROFILE, "caps": {"hourly": -1}}, 422,
        "caps.hourly"),
    Bad("negative budget", "POST", f"{B1}/profiles",
        {**_PROFILE, "caps": {"budget_daily": "-5"}}, 422, "caps.budget_daily"),
    Bad("hours do not parse", "POST", f"{B1}/profiles",
        {**_PROFILE, "hours": {"mon": ["9am-5pm"]}}, 422, "hours[...][0]"),
    Bad("empty hours range", "POST", f"{B1}/profiles",
        {**_PROFILE, "hours": {"tue": ["09:00-09:00"]}}, 422, "hours.tue[0]"),
    Bad("unknown weekday", "POST", f"{B1}/profiles", {**_PROFILE, "hours": {"mon2": []}}, 422,
        "hours"),
    Bad("unknown time zone", "POST", f"{B1}/profiles", {**_PROFILE, "timezone": "Mars/Olympus"},
        422, "timezone"),
    Bad("path-like time zone", "POST", f"{B1}/profiles", {**_PROFILE, "timezone": "../etc"},
        422, "timezone"),
    Bad("unknown campaign", "POST", f"{B1}/profiles", {**_PROFILE, "campaign_id": "nope"}, 422,
        "campaign_id"),
    Bad("rtb url not http", "POST", f"{B1}/profiles", {**_PROFILE, "rtb_url": "ftp://x"}, 422,
        "rtb_url"),
    Bad("missing bid", "POST", f"{B1}/profiles", {"id": "p9"}, 422, "bid"),
    Bad("bad id", "POST", f"{B1}/profiles", {**_PROFILE, "id": "a b"}, 422, "id"),
    Bad("duplicate profile", "POST", f"{B1}/profiles", {**_PROFILE, "id": "p1"}, 409),
    Bad("invalid SIP URI", "POST", f"{B1}/endpoints", {"id": "e9", "uri": "http://x.example"},
        422, "uri"),
    Bad("SIP URI without host", "POST", f"{B1}/endpoints", {"id": "e9", "uri": "sip:user@"},
        422, "uri"),
    Bad("SIP URI bad port", "POST", f"{B1}/endpoints", {"id": "e9", "uri": "sip:h:99999"}, 422,
        "uri"),
    Bad("negative max_concurrent", "POST", f"{B1}/endpoints",
        {"id": "e9", "uri": "sip:a@h", "max_concurrent": -2}, 422, "max_concurrent"),
    Bad("nested endpoint uri", "POST", f"{V}/buyers",
        {"id": "b9", "name": "N", "endpoints": [{"id": "e", "uri": "mailto:x"}]}, 422,
        "endpoints[0].uri"),
    Bad("nested profile zone", "POST", f"{V}/buyers",
        {"id": "b9", "name": "N", "profiles": [{**_PROFILE, "timezone": "Nowhere/X"}]}, 422,
        "profiles[0].timezone"),
    Bad("short api key", "POST", f"{V}/buyers", {"id": "b9", "name": "N", "api_key": "short"},
        422, "api_key"),
    Bad("duplicate buyer", "POST", f"{V}/buyers", {"id": "b2", "name": "N"}, 409),
    Bad("negative reserve", "POST", f"{V}/campaigns", {"id": "c9", "name": "N", "reserve": "-1"},
        422, "reserve"),
    Bad("bad number", "POST", f"{V}/campaigns", {"id": "c9", "name": "N", "numbers": ["555"]},
        422, "numbers[0]"),
    Bad("number of another campaign", "POST", f"{V}/campaigns",
        {"id": "c9", "name": "N", "numbers": ["+18005550100"]}, 409, "numbers[0]"),
    Bad("bad hours window", "POST", f"{V}/campaigns",
        {"id": "c9", "name": "N", "compliance": {"hours_window": "8-9"}}, 422,
        "compliance.hours_window"),
    Bad("fraud threshold", "POST", f"{V}/campaigns",
        {"id": "c9", "name": "N", "compliance": {"fraud_threshold": 101}}, 422,
        "compliance.fraud_threshold"),
    Bad("bad CIDR", "POST", f"{V}/trunks", {"id": "t9", "name": "N", "source_ips": ["1.2.3/8"]},
        422, "source_ips[0]"),
    Bad("payout share", "POST", f"{V}/trunks", {"id": "t9", "name": "N", "payout_share": 120},
        422, "payout_share"),
    Bad("username alone", "POST", f"{V}/trunks", {"id": "t9", "name": "N", "username": "u"},
        422, "username"),
    Bad("duplicate trunk", "POST", f"{V}/trunks", {"id": "t1", "name": "N"}, 409),
    Bad("put id mismatch", "PUT", f"{V}/trunks/t1", {"id": "t2", "name": "N"}, 422, "id"),
    Bad("patch id change", "PATCH", f"{V}/trunks/t1", {"id": "t7"}, 422, "id"),
    Bad("patch wrong type", "PATCH", f"{B1}/profiles/p1", {"caps": {"daily": -1}}, 422,
        "caps.daily"),
    Bad("patch negative bid", "PATCH", f"{B1}/profiles/p1", {"bid": -3}, 422, "bid"),
    Bad("patch bad zone", "PATCH", f"{B1}/profiles/p1", {"timezone": "Europe/Nowhere"}, 422,
        "timezone"),
    Bad("patch not an object", "PATCH", f"{B1}/profiles/p1", [1, 2], 422, ""),
    Bad("patch buyer unknown", "PATCH", B1, {"colour": "red"}, 422, "colour"),
    Bad("delete referenced campaign", "DELETE", f"{V}/campaigns/c1", None, 409),
    Bad("put missing", "PUT", f"{V}/trunks/t404", {"id": "t404", "name": "N"}, 404),
    Bad("consent bad caller", "POST", f"{V}/consent", {"caller": "hello", "campaign_id": "c1"},
        422, "caller"),
    Bad("consent unknown campaign", "POST", f"{V}/consent",
        {"caller": CALLER, "campaign_id": "c404"}, 422, "campaign_id"),
    Bad("consent naive time", "POST", f"{V}/consent",
        {"caller": CALLER, "campaign_id": "c1", "granted_at": "2026-01-01T00:00:00"}, 422,
        "granted_at"),
    Bad("consent revoked before", "POST", f"{V}/consent",
        {"caller": CALLER, "campaign_id": "c1", "granted_at": "2026-01-02T00:00:00Z",
         "revoked_at": "2026-01-01T00:00:00Z"}, 422, "revoked_at"),
    Bad("consent unknown field", "POST", f"{V}/consent",
        {"caller": CALLER, "campaign_id": "c1", "ip": "1.2.3.4"}, 422, "ip"),
    Bad("wrong content type", "POST", f"{V}/trunks", b'{"id":"t9","name":"N"}', 415,
        content_type="text/plain"),
    Bad("form content type", "POST", f"{V}/trunks", b"id=t9", 415,
        content_type="application/x-www-form-urlencoded"),
    Bad("malformed JSON", "POST", f"{V}/trunks", b'{"id": "t9",', 400,
        content_type="application/json"),
    Bad("empty body", "POST", f"{V}/trunks", b"", 400, content_type="application/json"),
    Bad("body over 1 MiB", "POST", f"{V}/trunks",
        b'{"id":"t9","name":"' + b"x" * (1 << 20) + b'"}', 413, content_type="application/json"),
    Bad("dnc JSON body", "POST", f"{V}/dnc?list=x", b"[]", 415, content_type="application/json"),
    Bad("dnc no list", "POST", f"{V}/dnc", b"2125550000", 422, "list", "text/plain"),
    Bad("dnc bad list name", "POST", f"{V}/dnc?list=../x", b"2125550000", 422, "list",
        "text/plain"),
    Bad("dnc unknown param", "POST", f"{V}/dnc?list=x&lst=y", b"2125550000", 422, "lst",
        "text/plain"),
]  # fmt: skip


@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
async def test_bad_input(api: Api, bad: Bad) -> None:
    before = await _snapshot(api)
    if bad.content_type is not None:
        reply = await api.call(bad.method, bad.path, data=bad.body, content_type=bad.content_type)
    else:
        reply = await api.call(bad.method, bad.path, json=bad.body)
    assert reply.status == bad.status, reply.body
    assert set(reply.body) == {"error", "detail"}
    if bad.field is not None:
        assert reply.body["detail"]["field"] == bad.field, reply.body
    assert await _snapshot(api) == before
    assert api.changes == []


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ("Expected `int`, got `str` - at `$.caps.daily`", "caps.daily"),
        ("Object contains unknown field `zzz`", "zzz"),
        ("Object contains unknown field `zzz` - at `$.caps`", "caps.zzz"),
        ("Object missing required field `bid`", "bid"),
        ("`budget_daily` must be a non-negative amount, got -3 - at `$.caps`", "caps.budget_daily"),
        ("`bid` must be a non-negative amount, got -1", "bid"),
        ("Invalid enum value 'xyz' - at `key` in `$.hours`", "hours"),
        ("Expected `str` matching regex 'x' - at `$.endpoints[0].uri`", "endpoints[0].uri"),
        ("Expected `object`, got `array`", ""),
    ],
)
def test_field_of(message: str, field: str) -> None:
    assert field_of(message) == field


def test_merge_patch_rfc7396() -> None:
    assert merge_patch({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": None, "e": 4}, "f": [1]}) == {
        "a": 1,
        "b": {"d": 3, "e": 4},
        "f": [1],
    }
    assert merge_patch({"a": 1}, {"a": None}) == {}


async def test_patch_null_resets_to_default(api: Api) -> None:
    await api.call("PATCH", f"{B1}/profiles/p1", json={"timezone": "America/Denver"})
    r = await api.call("PATCH", f"{B1}/profiles/p1", json={"timezone": None})
    assert r.status == 200 and r.body["timezone"] == "America/New_York"


async def test_unknown_route_and_method(api: Api) -> None:
    r = await api.call("GET", f"{V}/nothing")
    assert r.status == 404 and r.body["error"] == "not found"
    r = await api.call("PATCH", f"{V}/trunks")
    assert r.status == 405 and "GET" in r.headers["Allow"] and "POST" in r.headers["Allow"]
    assert set(r.body) == {"error", "detail"}
    r = await api.call("GET", f"{V}/nothing", who="none")
    assert r.status == 401


async def test_bearer_scheme_required(api: Api) -> None:
    r = await api.call("GET", f"{V}/trunks", who="none", headers={"Authorization": "Basic eA=="})
    assert r.status == 401 and "invalid_request" in r.headers["WWW-Authenticate"]
    r = await api.call("GET", f"{V}/trunks", who="none", headers={"Authorization": "bearer " + (
        "admin-" + "a" * 40)})  # fmt: skip
    assert r.status == 200  # the scheme is case-insensitive (RFC 6750 / RFC 9110)


async def test_openapi_lists_every_path(api: Api) -> None:
    doc = (await api.call("GET", "/openapi.json", who="none")).body
    assert doc["openapi"].startswith("3.")
    for r in ROUTES:
        op = doc["paths"][V + r.path][r.method.lower()]
        assert op["operationId"] == r.name
        assert "responses" in op
    assert "/openapi.json" in doc["paths"]
    schemas = doc["components"]["schemas"]
    for name in ("Trunk", "Campaign", "BidProfile", "Caps", "Endpoint", "BuyerView", "ErrorBody",
                 "CallPage", "CallDetail", "ConsentRecord", "ErasureResult"):  # fmt: skip
        assert name in schemas
    # Every $ref resolves.
    refs = set(_refs(doc))
    assert refs and all(ref.removeprefix("#/components/schemas/") in schemas for ref in refs)
    same = (await api.call("GET", f"{V}/openapi.json", who="none")).body
    assert same == doc


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        for v in node.values():
            out += _refs(v)
        return out
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


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
