"""compliance.consent: valid, unrevoked consent naming the campaign."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from compliance.consent import ConsentRecord, ConsentStore
from compliance.errors import ConsentInvalid

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def rec(
    id: str = "c1", caller: str = "(212) 555-1234", campaign: str = "solar", **kw: object
) -> ConsentRecord:
    fields: dict[str, object] = {
        "id": id,
        "caller": caller,
        "campaign_id": campaign,
        "trunk_id": "pub1",
        "disclosure": "v3",
        "source_url": "https://lander.example/form",
        "certificate_id": "https://cert.trustedform.com/0123456789abcdef",
        "granted_at": T0,
    }
    fields.update(kw)
    return ConsentRecord(**fields)  # type: ignore[arg-type]


def test_valid_consent_names_the_campaign() -> None:
    s = ConsentStore([rec()])
    assert s.get("c1") is not None and s.get("c1").caller == "+12125551234"  # type: ignore[union-attr]
    assert s.has_valid("+12125551234", "solar", T0)
    assert not s.has_valid("+12125551234", "roofing", T0)
    assert not s.has_valid("+13055551234", "solar", T0)
    assert not s.has_valid("+12125551234", "solar", T0 - timedelta(seconds=1))


def test_revocation() -> None:
    s = ConsentStore([rec()])
    s.revoke("c1", T0 + timedelta(days=1))
    assert s.has_valid("+12125551234", "solar", T0 + timedelta(hours=23))
    assert not s.has_valid("+12125551234", "solar", T0 + timedelta(days=1))
    # A later revoke keeps the first time; the record stays as evidence.
    r = s.revoke("c1", T0 + timedelta(days=5))
    assert r is not None and r.revoked_at == T0 + timedelta(days=1)
    assert len(s) == 1 and s.revoke("nope", T0) is None


def test_revoke_caller_per_campaign() -> None:
    s = ConsentStore([rec("a"), rec("b", campaign="roofing")])
    assert s.revoke_caller("+12125551234", T0, campaign_id="roofing") == 1
    assert s.has_valid("+12125551234", "solar", T0)
    assert not s.has_valid("+12125551234", "roofing", T0)


def test_replace_by_id_reindexes() -> None:
    s = ConsentStore([rec()])
    s.add(rec(caller="+13055551234"))
    assert not s.has_valid("+12125551234", "solar", T0)
    assert s.has_valid("+13055551234", "solar", T0)
    assert len(s) == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"caller": "not a number"},
        {"revoked_at": T0 - timedelta(days=1)},
        {"granted_at": datetime(2026, 5, 1)},
    ],
)
def test_invalid_records(bad: dict[str, object]) -> None:
    with pytest.raises(ConsentInvalid):
        ConsentStore().add(msgspec.structs.replace(rec(), **bad))


def test_decodes_from_api_json() -> None:
    body = (
        b'{"id":"c9","caller":"+12125551234","campaign_id":"solar",'
        b'"granted_at":"2026-05-01T12:00:00Z","certificate_id":"LeadiD-123"}'
    )
    r = msgspec.json.decode(body, type=ConsentRecord)
    assert ConsentStore([r]).has_valid("+12125551234", "solar", T0)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(body[:-1] + b',"extra":1}', type=ConsentRecord)


def test_replace_caller_for_erasure() -> None:
    s = ConsentStore([rec("a"), rec("b", campaign="roofing")])
    out = s.replace_caller("+12125551234", "hmac:abc")
    assert [r.caller for r in out] == ["hmac:abc", "hmac:abc"]
    assert s.for_caller("+12125551234") == []
    assert not s.has_valid("+12125551234", "solar", T0)
    assert len(s.for_caller("hmac:abc")) == 2
