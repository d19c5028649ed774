"""api/consent.py over real HTTP: consent records, their revocation and pagination."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from api.routes import API_PREFIX
from tests.api.conftest import CALLER, Api

V = API_PREFIX
T0 = datetime(2026, 11, 20, 12, tzinfo=UTC)


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
    stored = await api.store.compliance.get_consent("lead-1")
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
