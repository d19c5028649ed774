"""compliance.check: the gate's verdicts, rule by rule, that it never crashes on input, and
that its table of rules gives the verdicts of the unrolled gate it replaced (kept below)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compliance.check import RULES, CallFacts, Gate, Verdict
from compliance.consent import ConsentRecord, ConsentStore
from compliance.dnc import DncStore, dnc_key
from compliance.erasure import ALL, Suppression, erase_caller
from compliance.errors import InvalidStateError, InvalidWindow
from compliance.hours import check_hours
from compliance.numbers import NumberInfo, info, normalize
from compliance.policy import CompliancePolicy
from compliance.stir import TrustStore, attestation_rank, evaluate
from tests.compliance.stirkit import Signer, make_ca, make_leaf, passport, pem, write_store

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


# -- the gate before its rules became a table, frozen as the reference --------------------------
# Gate.check as it was at e629e10 (one unrolled 153-line method), kept here only so the property
# test below can show the table-driven gate gives the same verdict for every input. Do not edit.

# "rule:outcome" constants, so building ``Verdict.rules`` formats nothing per call.
_INVALID_PASS: Final = "invalid_number:pass"
_INVALID_FAIL: Final = "invalid_number:fail"
_INVALID_SKIP: Final = "invalid_number:skip"
_SUPPRESSED_PASS: Final = "suppressed:pass"
_SUPPRESSED_FAIL: Final = "suppressed:fail"
_SUPPRESSED_SKIP: Final = "suppressed:skip"
_STALE_PASS: Final = "dnc_stale:pass"
_STALE_FAIL: Final = "dnc_stale:fail"
_STALE_SKIP: Final = "dnc_stale:skip"
_DNC_PASS: Final = "dnc:pass"
_DNC_FAIL: Final = "dnc:fail"
_DNC_SKIP: Final = "dnc:skip"
_HOURS_PASS: Final = "calling_hours:pass"
_HOURS_FAIL: Final = "calling_hours:fail"
_HOURS_SKIP: Final = "calling_hours:skip"
_CONSENT_PASS: Final = "consent:pass"
_CONSENT_FAIL: Final = "consent:fail"
_CONSENT_SKIP: Final = "consent:skip"
_ATTEST_PASS: Final = "attestation:pass"
_ATTEST_FAIL: Final = "attestation:fail"
_ATTEST_SKIP: Final = "attestation:skip"
_FRAUD_PASS: Final = "fraud:pass"
_FRAUD_FAIL: Final = "fraud:fail"


def reference_check(
    gate: Gate, facts: CallFacts, policy: CompliancePolicy, now: datetime
) -> Verdict:
    """The old ``Gate.check`` body, verbatim but for ``self`` -> ``gate``."""
    if now.tzinfo is None:
        raise InvalidStateError("Gate.check needs an aware datetime")
    caller = normalize(facts.caller, gate.default_region)
    called = normalize(facts.called, gate.default_region)
    cinfo: NumberInfo | None = info(caller) if caller is not None else None
    dinfo: NumberInfo | None = info(called) if called is not None else None

    rules: list[str] = []
    first: str | None = None
    detail: str | None = None

    # invalid_number: a number we cannot even parse is judged, not crashed on. A caller
    # without a usable number (withheld, "anonymous", a test tool's name) blocks the call
    # only where a rule needs the number (hours, DNC, consent); elsewhere it is left to
    # the fraud score, which counts invalid numbers as a signal.
    needs_caller = policy.calling_hours or bool(policy.dnc_lists) or policy.consent_required
    if called is None or (caller is None and needs_caller):
        rules.append(_INVALID_FAIL)
        first = "invalid_number"
        detail = "caller" if caller is None else "called"
    elif caller is None:
        rules.append(_INVALID_SKIP)
    else:
        rules.append(_INVALID_PASS)

    # suppressed: erased (GDPR) and blocked on every call.
    suppression = gate.suppression
    scope = (
        suppression.scope(caller)
        if (caller is not None and suppression is not None and suppression)
        else None
    )
    if scope is not None and ALL in scope:
        rules.append(_SUPPRESSED_FAIL)
        if first is None:
            first = "suppressed"
    else:
        rules.append(_SUPPRESSED_PASS if caller is not None else _SUPPRESSED_SKIP)

    # dnc_stale, dnc: one pass over the campaign's lists.
    if not policy.dnc_lists:
        rules.append(_STALE_SKIP)
        rules.append(_DNC_SKIP)
    else:
        stale: str | None = None
        hit: str | None = None
        key = dnc_key(caller) if caller is not None else -1.0
        lists = gate.dnc
        for name in policy.dnc_lists:
            lst = lists.get(name)
            if lst is None or lst.is_stale(now):
                if stale is None:
                    stale = name
                if lst is None:
                    continue
            if (
                hit is None
                and caller is not None
                and (key in lst or (scope is not None and name in scope))
            ):
                hit = name
        if stale is not None:
            rules.append(_STALE_FAIL)
            if first is None:
                first, detail = "dnc_stale", stale
        else:
            rules.append(_STALE_PASS)
        if caller is None:
            rules.append(_DNC_SKIP)
        elif hit is not None:
            rules.append(_DNC_FAIL)
            if first is None:
                first, detail = "dnc", hit
        else:
            rules.append(_DNC_PASS)

    # calling_hours
    if not policy.calling_hours or cinfo is None:
        rules.append(_HOURS_SKIP)
    else:
        hours = check_hours(cinfo, now, policy.hours_window)
        if hours.allowed:
            rules.append(_HOURS_PASS)
        else:
            rules.append(_HOURS_FAIL)
            if first is None:
                first, detail = "calling_hours", hours.reason

    # consent
    if not policy.consent_required:
        rules.append(_CONSENT_SKIP)
    elif caller is not None and gate.consent.has_valid(caller, facts.campaign_id, now):
        rules.append(_CONSENT_PASS)
    else:
        rules.append(_CONSENT_FAIL)
        if first is None:
            first, detail = "consent", None

    # attestation (STIR/SHAKEN); evaluated for every call, it goes on the CDR.
    stir = evaluate(
        facts.identity,
        facts.pai,
        caller=caller,
        called=called,
        now=now,
        trust=gate.trust,
        max_age=gate.stir_max_age,
    )
    if policy.min_attestation is None:
        rules.append(_ATTEST_SKIP)
    elif attestation_rank(stir.attestation) >= attestation_rank(policy.min_attestation):
        rules.append(_ATTEST_PASS)
    else:
        rules.append(_ATTEST_FAIL)
        if first is None:
            first, detail = "attestation", stir.reason

    # fraud
    score = gate.fraud.observe(
        caller=cinfo, called=dinfo, trunk_id=facts.trunk_id, stir=stir, ts=now.timestamp()
    )
    fraud_failed = score.score > policy.fraud_threshold
    if fraud_failed:
        rules.append(_FRAUD_FAIL)
        if first is None:
            first, detail = "fraud", ",".join(score.signals)
    else:
        rules.append(_FRAUD_PASS)

    disposition: Literal["rejected_compliance", "rejected_fraud"] | None = None
    if first is not None:
        disposition = "rejected_fraud" if first == "fraud" else "rejected_compliance"
    return Verdict(
        allowed=first is None,
        disposition=disposition,
        rule=first,
        rules=rules,
        fraud_score=score.score,
        fraud_signals=score.signals,
        attestation=stir.attestation,
        caller_state=cinfo.state if cinfo is not None else None,
        caller=caller,
        called=called,
        detail=detail,
        stir_reason=stir.reason,
    )


# -- the table-driven gate against the reference ---------------------------------------------

BASE = NOW  # passports are signed for BASE; DNC ages and consent count from it
ERASED_DNC = "+14155550111"  # erased while on "internal": stays blocked there
ERASED_ALL = "+13125550199"  # erased with a block on every call
CONSENTED = "+12125550123"
REVOKED = "+12125550124"
CALLERS = [
    CALLER,
    "+13055551234",  # on federal (and Florida: 8 a.m.-8 p.m.)
    "+14155551234",  # on internal
    "+12065551234",  # Washington: 8 a.m.-8 p.m.
    "+19075551234",  # Alaska: several zones
    "+18885551234",  # toll free: every NANP zone
    "+12129111234",  # N11 exchange
    "+12125550142",  # 555-01xx
    "+18005550199",  # same NPA-NXX as CALLED
    "+442079460000",  # not NANP
    "+11234567890",  # not a valid number
    ERASED_DNC,
    ERASED_ALL,
    CONSENTED,
    REVOKED,
    "sip:2125551234@pbx",
    "(305) 555-1234",
    "2065551234",
    "anonymous",
    "",
    "x" * 80,
]
# Drawn more often: repeat callers fill the fraud windows, and these hit the most rules.
HOT = [CALLER, "+13055551234", "+12065551234", ERASED_DNC, ERASED_ALL, CONSENTED, REVOKED]
CALLEDS = [CALLED, "18005550100", "+12125550000", "+442079460001", "", "not-a-number"]
# The last is malformed (config validation would refuse it): both gates must raise, and
# before the fraud history counts the attempt.
WINDOWS = ["08:00-21:00", "09:00-17:00", "22:00-06:00", "00:00-24:00", "12:00-12:30", "8-21"]
ZONES = [UTC, timezone(timedelta(hours=-5)), ZoneInfo("America/Los_Angeles")]


@functools.cache
def _pki() -> tuple[Signer, Signer, list[str | None]]:
    """A CA, its signing certificate and Identity header values, made once (keys are slow)."""
    ca = make_ca()
    leaf = make_leaf(ca)
    identities: list[str | None] = [
        passport(leaf, orig=CALLER[1:], dest=CALLED[1:], attest=level, iat=BASE)
        for level in ("A", "B", "C")
    ]
    good = identities[0]
    assert good is not None
    token, _, params = good.partition(";")
    identities += [
        passport(leaf, orig=CONSENTED[1:], dest=CALLED[1:], attest="B", iat=BASE),
        token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB") + ";" + params,
        passport(leaf, x5u="https://certs.example.org/unknown.pem", iat=BASE),
        "not a passport",
        None,
    ]
    return ca, leaf, identities


PAIS = [
    None,
    "<sip:+12125551234;verstat=TN-Validation-Passed@carrier;user=phone>",
    "<sip:+12125551234;verstat=TN-Validation-Passed-C@carrier;user=phone>",
    "<sip:+12125551234;verstat=TN-Validation-Failed@carrier;user=phone>",
    "<sip:+12125551234;verstat=No-TN-Validation@carrier;user=phone>",
    "<sip:+12125551234@carrier>",
]


def build_gate(default_region: str) -> Gate:
    """The same data every time: two gates built here differ only in their identity."""
    ca, leaf, _ = _pki()
    trust = TrustStore()
    trust.add_anchor(ca.cert)
    trust.add_certificate("https://certs.example.org/sp1.pem", pem(leaf.cert))
    dnc = DncStore()
    dnc.add_numbers(
        "federal",
        ["+13055551234", "+19075551234"],
        source="ftc",
        loaded_at=BASE - timedelta(days=3),
        max_age_days=31,
    )
    dnc.add_numbers("internal", ["+14155551234", ERASED_DNC], source="opt-outs", loaded_at=BASE)
    # Goes stale six hours after BASE, inside the times the test draws.
    dnc.add_numbers(
        "state_fl",
        ["+13055551234", "+12065551234"],
        source="fl",
        loaded_at=BASE - timedelta(days=31, hours=-6),
        max_age_days=31,
    )
    consent = ConsentStore()
    for i, caller in enumerate((CONSENTED, REVOKED, CALLER)):
        consent.add(
            ConsentRecord(
                id=f"c{i}",
                caller=caller,
                campaign_id="solar" if i < 2 else "roofing",
                granted_at=BASE - timedelta(days=1),
            )
        )
    consent.revoke("c1", BASE + timedelta(hours=12))
    suppression = Suppression(SECRET)
    erase_caller(ERASED_DNC, suppression=suppression, dnc=dnc, consent=consent)
    erase_caller(ERASED_ALL, suppression=suppression, dnc=dnc, consent=consent, block_all=True)
    return Gate(
        dnc=dnc,
        consent=consent,
        trust=trust,
        suppression=suppression,
        default_region=default_region,
    )


policies = st.builds(
    CompliancePolicy,
    calling_hours=st.booleans(),
    hours_window=st.sampled_from(WINDOWS),
    consent_required=st.booleans(),
    dnc_lists=st.lists(
        st.sampled_from(["federal", "internal", "state_fl", "state_tx"]), max_size=3
    ),
    min_attestation=st.sampled_from([None, "A", "B", "C"]),
    fraud_threshold=st.integers(0, 100),
)
checks = st.tuples(
    st.just("check"),
    st.sampled_from([0, 1, 30]) | st.integers(0, 900),  # seconds since the previous step
    st.sampled_from(ZONES),
    st.sampled_from(HOT) | st.sampled_from(CALLERS) | st.text(max_size=16),
    st.sampled_from(CALLEDS),
    st.integers(0, 7),  # index into the identities
    st.sampled_from(PAIS),
    st.sampled_from(["pub1", "pub2"]),
    st.sampled_from(["solar", "roofing"]),
    policies,
)
call_ends = st.tuples(
    st.just("end"),
    st.sampled_from([0, 1, 30]) | st.integers(0, 900),
    st.sampled_from(["pub1", "pub2"]),
    st.sampled_from([56_000, 59_000, 30_000]) | st.integers(0, 120_000),  # minimum is 60 s
)


@given(
    region=st.sampled_from(["US", "CA", "GB"]),
    start=st.integers(-120, 2 * 86_400),  # seconds from BASE: around the clock, two days
    steps=st.lists(checks | call_ends, min_size=1, max_size=25),
)
@settings(max_examples=300, deadline=None)
def test_table_gives_the_reference_verdicts(
    region: str, start: int, steps: list[tuple[Any, ...]]
) -> None:
    new, old = build_gate(region), build_gate(region)
    identities = _pki()[2]
    t = BASE + timedelta(seconds=start)
    for step in steps:
        t += timedelta(seconds=step[1])
        if step[0] == "end":
            _, _, trunk, duration_ms = step
            for g in (new, old):
                g.record_call_end(trunk, duration_ms, 60, t)
            continue
        _, _, zone, caller, called, ident, pai, trunk, campaign, policy = step
        f = CallFacts(
            caller=caller,
            called=called,
            trunk_id=trunk,
            campaign_id=campaign,
            identity=identities[ident],
            pai=pai,
        )
        now = t.astimezone(zone)
        try:
            want = reference_check(old, f, policy, now)
        except InvalidWindow:
            with pytest.raises(InvalidWindow):
                new.check(f, policy, now)
            continue
        assert new.check(f, policy, now) == want
