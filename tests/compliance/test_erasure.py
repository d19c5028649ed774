"""compliance.erasure: keyed hashes and the suppression set."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from compliance.consent import ConsentRecord, ConsentStore
from compliance.dnc import DncStore
from compliance.erasure import ALL, Suppression, caller_hash, erase_caller

SECRET = b"s" * 32
T0 = datetime(2026, 5, 1, tzinfo=UTC)


def test_hash_is_keyed_and_stable() -> None:
    h = caller_hash("+12125551234", SECRET)
    assert h.startswith("hmac:") and len(h) == 5 + 64
    assert h == caller_hash("+12125551234", SECRET)
    assert h != caller_hash("+12125551234", b"t" * 32)
    assert h != caller_hash("+12125551235", SECRET)


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        Suppression(b"short")


def test_suppression_scope_and_persistence() -> None:
    s = Suppression(SECRET)
    assert not s and s.scope("+12125551234") is None
    s.add("+12125551234", ["internal"])
    s.add("+12125551234", [ALL])
    assert s.scope("+12125551234") == frozenset({"internal", ALL})
    again = Suppression(SECRET, s.entries())
    assert again.scope("+12125551234") == frozenset({"internal", ALL})
    assert "+12125551234" not in repr(s.entries())


def test_erase_caller() -> None:
    dnc = DncStore()
    dnc.add_numbers("internal", ["+12125551234", "+13055551234"], source="t", loaded_at=T0)
    consent = ConsentStore(
        [ConsentRecord(id="c1", caller="+12125551234", campaign_id="solar", granted_at=T0)]
    )
    sup = Suppression(SECRET)
    rep = erase_caller("+12125551234", suppression=sup, dnc=dnc, consent=consent)
    assert rep.hash == caller_hash("+12125551234", SECRET)
    assert (rep.dnc_lists, rep.consent_records, rep.suppressed) == (["internal"], 1, ["internal"])
    assert dnc.lookup("+12125551234") == [] and dnc.lookup("+13055551234") == ["internal"]
    assert consent.get("c1") is not None and consent.get("c1").caller == rep.hash  # type: ignore[union-attr]
    assert sup.scope("+12125551234") == frozenset({"internal"})
    # A number on no list and without block_all leaves no suppression entry.
    rep = erase_caller("+14155551234", suppression=sup, dnc=dnc, consent=consent)
    assert rep.suppressed == [] and sup.scope("+14155551234") is None
