"""api/auth.py over real HTTP and a real PostgreSQL: who may call which route.

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

import pytest

from api.app import ROUTES
from api.routes import API_PREFIX
from compliance.consent import ConsentRecord
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
    await api.store.compliance.insert_consent(record)
    api.gate.consent.add(record)


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
    Case("GET", f"{V}/calls/live", "buyer-list", 200),
    Case("DELETE", f"{V}/calls/live/live-1", "admin", 200),
    Case("GET", f"{V}/calls", "buyer-list", 200),
    Case("GET", f"{V}/calls/call-00001", "buyer", 200),
    Case("GET", f"{V}/reports?by=buyer&from=2026-11-20T00:00:00Z&to=2026-11-21T00:00:00Z",
         "buyer-list", 200),
    Case("POST", f"{V}/dnc?list=internal", "admin", 200, text="2125550000\n"),
    Case("GET", f"{V}/dnc", "admin", 200),
    Case("GET", f"{V}/dnc/{CALLER}", "admin", 200),
    Case("POST", f"{V}/consent", "admin", 201, {"caller": "2125550000", "campaign_id": "c1"}),
    Case("GET", f"{V}/consent", "admin", 200),
    Case("GET", f"{V}/consent/k1", "admin", 200),
    Case("DELETE", f"{V}/consent/k1", "admin", 200),
    Case("DELETE", f"{V}/consent?caller=2125551234", "admin", 200),
    Case("DELETE", f"{V}/callers/{CALLER}", "admin", 200),
    Case("GET", f"{V}/config", "admin", 200),
    Case("PUT", f"{V}/config?dry_run=true", "admin", 200, {}),
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
    before = await api.snapshot()
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
        assert await api.snapshot() == before, "a refused request changed something"
        assert len(api.changes) == changes
    if expected == 401:
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    if case.access == "buyer-list" and who in ("own", "other"):
        # A report's rows are its list, keyed by buyer here.
        items = reply.body.get("items", reply.body.get("rows"))
        owners = {item.get("buyer_id", item.get("key", item.get("id"))) for item in items}
    if case.access == "buyer-list" and who == "other":
        # b2's view of a list: none of b1's objects.
        assert "b1" not in owners
        # (b2 has objects of its own only among the buyers and the live calls.)
        assert items == [] or case.path.endswith(("/buyers", "/calls/live"))
    if case.access == "buyer-list" and who == "own":
        assert items, "b1 sees its own objects"
        assert owners == {"b1"}


async def test_bearer_scheme_required(api: Api) -> None:
    r = await api.call("GET", f"{V}/trunks", who="none", headers={"Authorization": "Basic eA=="})
    assert r.status == 401 and "invalid_request" in r.headers["WWW-Authenticate"]
    r = await api.call("GET", f"{V}/trunks", who="none", headers={"Authorization": "bearer " + (
        "admin-" + "a" * 40)})  # fmt: skip
    assert r.status == 200  # the scheme is case-insensitive (RFC 6750 / RFC 9110)
