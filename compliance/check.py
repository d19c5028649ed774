"""The compliance and fraud gate: one decision per INVITE, before the auction (issue 5).

``Gate`` holds the loaded data (DNC lists, consent records, the STIR/SHAKEN trust store, the
hashed suppression set, the fraud history) and answers ``check(facts, policy, now)`` with a
``Verdict``. It does no I/O and reads no clock; the switch passes wall time in.

Rules run in this order; ``Verdict.rule`` is the first that failed and becomes the SIP
``Reason`` header of the 403, while ``Verdict.rules`` lists every rule as ``name:pass|fail|skip``
for the CDR's ``compliance`` field:

==================== ===================================================================
rule                 fails when
==================== ===================================================================
invalid_number       the caller or called number does not parse to E.164
suppressed           the caller was erased (GDPR) with a block on every call
dnc_stale            a DNC list the campaign requires is not loaded or older than its
                     maximum age (31 days, FTC safe harbour): fail closed
dnc                  the caller is on a required list (or was, before erasure)
calling_hours        outside the campaign window / the state's window in any of the
                     caller's time zones (TCPA 47 CFR 64.1200(c)(1), FL/OK/WA)
consent              the campaign requires consent and no valid, unrevoked record names it
attestation          the STIR/SHAKEN level is below the campaign's minimum
fraud                the fraud score is above the campaign's threshold (``rejected_fraud``)
==================== ===================================================================

Every rule is evaluated even after one fails, so the CDR shows the whole picture and the fraud
history counts every attempt. The caller is the consumer: TCPA hours are "local time at the
called party's location" of the telemarketing leg, which for a pay-per-call exchange is the
consumer calling in (domain.md §4.1).
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal

import msgspec

from compliance.consent import ConsentStore
from compliance.dnc import DncStore, dnc_key
from compliance.erasure import ALL, Suppression
from compliance.errors import InvalidStateError
from compliance.fraud import FraudScorer
from compliance.hours import check_hours
from compliance.numbers import NumberInfo, info, normalize
from compliance.policy import CompliancePolicy
from compliance.stir import DEFAULT_MAX_AGE, Attestation, TrustStore, attestation_rank, evaluate

__all__ = ["RULES", "CallFacts", "Gate", "Verdict"]

RULES: Final = (
    "invalid_number",
    "suppressed",
    "dnc_stale",
    "dnc",
    "calling_hours",
    "consent",
    "attestation",
    "fraud",
)
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


class CallFacts(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What the switch knows about an INVITE when it asks the gate.

    ``caller`` and ``called`` are as received (P-Asserted-Identity or From user part, and the
    Request-URI user part); the gate normalises them. ``identity`` is the Identity header value
    and ``pai`` the P-Asserted-Identity value, each None when absent.
    """

    caller: str
    called: str
    trunk_id: str
    campaign_id: str
    identity: str | None = None
    pai: str | None = None


class Verdict(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The gate's answer.

    ``rule`` is the first failed rule (the ``Reason`` header), None when allowed. ``detail``
    adds what a human needs: the DNC list that matched, the hours reason, the STIR failure.
    ``caller``/``called`` are the E.164 forms (None when they did not parse).
    """

    allowed: bool
    disposition: Literal["rejected_compliance", "rejected_fraud"] | None
    rule: str | None
    rules: list[str]
    fraud_score: int
    fraud_signals: tuple[str, ...]
    attestation: Attestation
    caller_state: str | None
    caller: str | None = None
    called: str | None = None
    detail: str | None = None
    stir_reason: str | None = None


class Gate:
    """The compliance gate with its in-memory data. Mutate the stores in place to update it."""

    def __init__(
        self,
        *,
        dnc: DncStore | None = None,
        consent: ConsentStore | None = None,
        trust: TrustStore | None = None,
        suppression: Suppression | None = None,
        fraud: FraudScorer | None = None,
        stir_max_age: int = DEFAULT_MAX_AGE,
        default_region: str = "US",
    ) -> None:
        self.dnc = dnc if dnc is not None else DncStore()
        self.consent = consent if consent is not None else ConsentStore()
        self.trust = trust
        self.suppression = suppression
        self.fraud = fraud if fraud is not None else FraudScorer()
        self.stir_max_age = stir_max_age
        self.default_region = default_region

    def check(self, facts: CallFacts, policy: CompliancePolicy, now: datetime) -> Verdict:
        """Judge one call. Never raises for anything a peer or the data can cause.

        Raises:
            InvalidStateError: ``now`` is naive (our bug, not the call's).
            InvalidWindow: ``policy.hours_window`` is malformed (config validation missed it).
        """
        if now.tzinfo is None:
            raise InvalidStateError("Gate.check needs an aware datetime")
        caller = normalize(facts.caller, self.default_region)
        called = normalize(facts.called, self.default_region)
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
        suppression = self.suppression
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
            lists = self.dnc
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
        elif caller is not None and self.consent.has_valid(caller, facts.campaign_id, now):
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
            trust=self.trust,
            max_age=self.stir_max_age,
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
        score = self.fraud.observe(
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

    def record_call_end(
        self, trunk_id: str, duration_ms: int, min_duration_s: int, now: datetime
    ) -> None:
        """Tell the fraud history how an answered call ended (the short-call signal)."""
        self.fraud.record_call_end(trunk_id, duration_ms, min_duration_s, now.timestamp())
