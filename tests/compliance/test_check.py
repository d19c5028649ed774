"""compliance.check: the gate's verdicts, rule by rule, and that it never crashes on input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compliance.check import RULES, CallFacts, Gate, Verdict
from compliance.consent import ConsentRecord, ConsentStore
from compliance.dnc import DncStore
from compliance.erasure import Suppression, erase_caller
from compliance.errors import InvalidStateError
from compliance.policy import CompliancePolicy
from compliance.stir import TrustStore
from tests.compliance.stirkit import make_ca, make_leaf, passport, write_store

# 15:00 UTC on a May Friday: 11:00 in New York, 08:00 in Seattle.
NOW = datetime(2026, 5, 1, 15, 0, tzinfo=UTC)
CALLER = "+12125551234"
CALLED = "+18005550100"
SECRET = b"0123456789abcdef0123456789abcdef"


def facts(caller: str = CALLER, called: str = CALLED, **kw: str | None) -> CallFacts:
    return CallFacts(caller=caller, called=called, trunk_id="pub1", campaign_id="solar", **kw)


def gate(**kw: object) -> Gate:
    dnc = DncStore()
    dnc.add_numbers("federal", ["+13055551234"], source="ftc", loaded_at=NOW - timedelta(days=3))
    dnc["federal"].max_age_days = 31
    dnc.add_numbers("internal", ["+14155551234"], source="opt-outs", loaded_at=NOW)
    return Gate(dnc=dnc, **kw)  # type: ignore[arg-type]


def rules_of(v: Verdict) -> dict[str, str]:
    return dict(r.split(":") for r in v.rules)


def test_clean_call_is_allowed() -> None:
    v = gate().check(facts(), CompliancePolicy(), NOW)
    assert v.allowed and v.rule is None and v.disposition is None
    assert [r.split(":")[0] for r in v.rules] == list(RULES)
    assert rules_of(v) == {
        "invalid_number": "pass",
        "suppressed": "pass",
        "dnc_stale": "skip",
        "dnc": "skip",
        "calling_hours": "pass",
        "consent": "skip",
        "attestation": "skip",
        "fraud": "pass",
    }
    assert (v.caller, v.called, v.caller_state, v.attestation) == (CALLER, CALLED, "NY", "none")
    assert v.fraud_signals == ("attestation_none",) and v.fraud_score == 15
    # It encodes for the CDR and the API as is.
    assert b'"rules":["invalid_number:pass"' in msgspec.json.encode(v)


def test_raw_sip_user_parts_are_normalised() -> None:
    v = gate().check(
        facts(caller="sip:2125551234@pbx", called="18005550100"), CompliancePolicy(), NOW
    )
    assert v.allowed and v.caller == CALLER and v.called == CALLED


@pytest.mark.parametrize(
    ("caller", "called", "detail"),
    [("anonymous", CALLED, "caller"), (CALLER, "", "called"), ("", "x" * 500, "caller")],
)
def test_unparseable_numbers_are_judged(caller: str, called: str, detail: str) -> None:
    v = gate().check(
        facts(caller=caller, called=called), CompliancePolicy(dnc_lists=["federal"]), NOW
    )
    assert (v.allowed, v.rule, v.disposition, v.detail) == (
        False,
        "invalid_number",
        "rejected_compliance",
        detail,
    )
    assert rules_of(v)["invalid_number"] == "fail"


def test_dnc_listed_caller() -> None:
    g = gate()
    policy = CompliancePolicy(dnc_lists=["internal", "federal"])
    v = g.check(facts(caller="+13055551234"), policy, NOW)
    assert (v.allowed, v.rule, v.detail, v.disposition) == (
        False,
        "dnc",
        "federal",
        "rejected_compliance",
    )
    assert rules_of(v)["dnc"] == "fail" and rules_of(v)["dnc_stale"] == "pass"
    # Not required by this campaign: allowed.
    assert g.check(
        facts(caller="+13055551234"), CompliancePolicy(dnc_lists=["internal"]), NOW
    ).allowed


def test_stale_or_missing_list_fails_closed() -> None:
    g = gate()
    later = NOW + timedelta(days=29)  # federal was 3 days old at NOW
    v = g.check(facts(), CompliancePolicy(dnc_lists=["federal"]), later)
    assert (v.rule, v.detail) == ("dnc_stale", "federal")
    # The internal opt-out list never goes stale.
    assert g.check(facts(), CompliancePolicy(dnc_lists=["internal"]), later).allowed
    v = g.check(facts(), CompliancePolicy(dnc_lists=["state_tx"]), NOW)
    assert (v.rule, v.detail) == ("dnc_stale", "state_tx")


def test_outside_calling_hours() -> None:
    policy = CompliancePolicy()
    v = gate().check(facts(), policy, NOW.replace(hour=2))  # 22:00 in New York
    assert (v.allowed, v.rule, v.detail) == (False, "calling_hours", "outside_window")
    assert gate().check(facts(), CompliancePolicy(calling_hours=False), NOW.replace(hour=2)).allowed
    # Florida stops at 20:00: 00:30 UTC is 20:30 EDT.
    v = gate().check(facts(caller="+13055559999"), policy, NOW.replace(day=2, hour=0, minute=30))
    assert (v.rule, v.detail, v.caller_state) == ("calling_hours", "outside_state_window", "FL")
    v = gate().check(facts(), CompliancePolicy(hours_window="12:00-13:00"), NOW)
    assert v.rule == "calling_hours"


def test_consent_required() -> None:
    consent = ConsentStore()
    g = gate(consent=consent)
    policy = CompliancePolicy(consent_required=True)
    v = g.check(facts(), policy, NOW)
    assert (v.rule, v.disposition) == ("consent", "rejected_compliance")
    consent.add(
        ConsentRecord(
            id="c1", caller=CALLER, campaign_id="solar", granted_at=NOW - timedelta(days=1)
        )
    )
    assert g.check(facts(), policy, NOW).allowed
    consent.revoke("c1", NOW - timedelta(minutes=1))
    assert g.check(facts(), policy, NOW).rule == "consent"


def test_min_attestation(tmp_path: Path) -> None:
    ca = make_ca()
    leaf = make_leaf(ca)
    trust = TrustStore.from_directory(write_store(tmp_path, ca, {"sp1.pem": leaf}))
    g = gate(trust=trust)
    policy = CompliancePolicy(min_attestation="B")
    v = g.check(facts(), policy, NOW)
    assert (v.rule, v.detail, v.attestation) == ("attestation", "missing", "none")
    ident = passport(leaf, orig="12125551234", dest="18005550100", attest="A", iat=NOW)
    v = g.check(facts(identity=ident), policy, NOW)
    assert v.allowed and v.attestation == "A" and "attestation_none" not in v.fraud_signals
    ident_c = passport(leaf, attest="C", iat=NOW)
    v = g.check(facts(identity=ident_c), policy, NOW)
    assert (v.rule, v.attestation) == ("attestation", "C")
    # Without a campaign minimum, the attestation is recorded and the call goes through.
    v = g.check(facts(identity=ident_c), CompliancePolicy(), NOW)
    assert v.allowed and v.attestation == "C" and "attestation_c" in v.fraud_signals
    # A forged header: a failed verification with its reason, and a fraud signal.
    token, _, params = ident.partition(";")
    forged = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB") + ";" + params
    v = g.check(facts(identity=forged), CompliancePolicy(), NOW)
    assert v.allowed and v.stir_reason and "stir_failed" in v.fraud_signals
    # An upstream carrier's verstat counts.
    pai = "<sip:+12125551234;verstat=TN-Validation-Passed@carrier;user=phone>"
    assert g.check(facts(pai=pai), policy, NOW).attestation == "A"


def test_fraud_threshold() -> None:
    g = gate()
    policy = CompliancePolicy(fraud_threshold=40)
    v = g.check(facts(caller="+12129111234"), policy, NOW)  # N11 exchange (45) + no attestation
    assert (v.allowed, v.rule, v.disposition) == (False, "fraud", "rejected_fraud")
    assert v.fraud_score == 60 and v.detail == "unassignable_number,attestation_none"
    assert g.check(facts(caller="+12129111234"), CompliancePolicy(), NOW).allowed
    # A compliance failure comes first and decides the disposition.
    v = g.check(facts(caller="+12129111234"), policy, NOW.replace(hour=3))
    assert (v.rule, v.disposition) == ("calling_hours", "rejected_compliance")
    assert rules_of(v)["fraud"] == "fail"


def test_erased_caller_stays_blocked_where_it_asked() -> None:
    g = gate(suppression=Suppression(SECRET), consent=ConsentStore())
    policy = CompliancePolicy(dnc_lists=["internal"])
    assert g.check(facts(caller="+14155551234"), policy, NOW).rule == "dnc"
    assert g.suppression is not None
    report = erase_caller("+14155551234", suppression=g.suppression, dnc=g.dnc, consent=g.consent)
    assert report.dnc_lists == ["internal"]
    assert not g.dnc["internal"].contains("+14155551234")
    v = g.check(facts(caller="+14155551234"), policy, NOW)
    assert (v.rule, v.detail) == ("dnc", "internal")
    assert g.check(facts(caller="+14155551234"), CompliancePolicy(), NOW).allowed
    erase_caller(CALLER, suppression=g.suppression, dnc=g.dnc, consent=g.consent, block_all=True)
    v = g.check(facts(), CompliancePolicy(), NOW)
    assert (v.rule, v.disposition) == ("suppressed", "rejected_compliance")


def test_naive_now_is_a_bug() -> None:
    with pytest.raises(InvalidStateError):
        gate().check(facts(), CompliancePolicy(), NOW.replace(tzinfo=None))


@given(
    caller=st.text(max_size=40),
    called=st.text(max_size=40),
    identity=st.none() | st.text(max_size=200),
    pai=st.none() | st.text(max_size=100),
)
@settings(max_examples=200, deadline=None)
def test_any_input_gets_a_verdict(
    caller: str, called: str, identity: str | None, pai: str | None
) -> None:
    g = gate(trust=TrustStore())
    policy = CompliancePolicy(dnc_lists=["federal"], consent_required=True, min_attestation="C")
    v = g.check(facts(caller=caller, called=called, identity=identity, pai=pai), policy, NOW)
    assert not v.allowed and v.rule in RULES and len(v.rules) == len(RULES)
    assert 0 <= v.fraud_score <= 100


@pytest.mark.parametrize(
    ("policy", "allowed"),
    [
        (CompliancePolicy(calling_hours=False), True),
        (CompliancePolicy(calling_hours=True), False),
        (CompliancePolicy(calling_hours=False, dnc_lists=["internal"]), False),
        (CompliancePolicy(calling_hours=False, consent_required=True), False),
    ],
    ids=["no-rule-needs-the-number", "hours-need-it", "dnc-needs-it", "consent-needs-it"],
)
def test_caller_without_a_number_blocks_only_where_a_rule_needs_it(
    policy: CompliancePolicy, allowed: bool
) -> None:
    v = gate().check(facts(caller="anonymous"), policy, NOW)
    assert v.allowed is allowed
    assert rules_of(v)["invalid_number"] == ("skip" if allowed else "fail")
    if not allowed:
        assert v.rule == "invalid_number" and v.disposition == "rejected_compliance"
    else:
        assert "invalid_number" in " ".join(v.fraud_signals)  # still scored as a fraud signal


def test_called_number_that_does_not_parse_always_fails() -> None:
    v = gate().check(facts(called="not-a-number"), CompliancePolicy(calling_hours=False), NOW)
    assert not v.allowed and v.rule == "invalid_number"
