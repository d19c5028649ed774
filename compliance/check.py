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

The rules are data: ``TABLE`` lists them in this order, each a ``Rule`` with its name, its judge
and the disposition its failure gives. A judge is a small function of its rule and the call under
judgement (``_Call``: the facts with the numbers normalised, their metadata, the suppression scope
and the STIR/SHAKEN result, all worked out once) that returns the rule's ``name:pass|fail|skip``
label; a failure also records its detail on the call. ``Gate.check`` runs the table in a loop.
Every rule is evaluated even after one fails, so the CDR shows the whole picture and the fraud
history counts every attempt.

The caller is the consumer: TCPA hours are "local time at the called party's location" of the
telemarketing leg, which for a pay-per-call exchange is the consumer calling in (domain.md §4.1).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Final, Literal

import msgspec

from compliance.consent import ConsentStore
from compliance.dnc import DncStore, dnc_key
from compliance.erasure import ALL, Suppression
from compliance.errors import InvalidStateError
from compliance.fraud import FraudScore, FraudScorer
from compliance.hours import check_hours
from compliance.numbers import NumberInfo, info, normalize
from compliance.policy import CompliancePolicy
from compliance.stir import (
    DEFAULT_MAX_AGE,
    MISSING,
    Attestation,
    StirResult,
    TrustStore,
    attestation_rank,
    evaluate,
)

__all__ = ["RULES", "TABLE", "CallFacts", "Gate", "Rule", "Verdict"]

Disposition = Literal["rejected_compliance", "rejected_fraud"]
_NO_SCORE: Final = FraudScore(0, ())  # until the fraud rule has run


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


class Rule:
    """One row of the table: a rule's name, its judge and the disposition its failure gives.

    The judge is a small function of the rule and the call under judgement; it returns the
    rule's ``passed`` or ``skipped`` label, or ``call.fail(rule, detail)``, which records the
    failure and returns the ``failed`` label. The labels (``name:pass|fail|skip``, as
    ``Verdict.rules`` lists them) are made once, so building a verdict formats nothing per call.
    """

    __slots__ = ("disposition", "failed", "judge", "name", "passed", "skipped")

    def __init__(
        self,
        name: str,
        judge: Callable[[Rule, _Call], str],
        disposition: Disposition = "rejected_compliance",
    ) -> None:
        self.name = name
        self.judge = judge
        self.disposition: Disposition = disposition
        self.passed = f"{name}:pass"
        self.failed = f"{name}:fail"
        self.skipped = f"{name}:skip"

    def __repr__(self) -> str:
        return f"Rule({self.name!r})"


class _Call(msgspec.Struct, gc=False):
    """One call under judgement: what every rule may read, worked out once per call.

    ``caller``/``called`` are the E.164 forms (None when they did not parse), ``cinfo``/``dinfo``
    their metadata, ``scope`` the caller's suppression entry (None when not erased), ``stir``
    the STIR/SHAKEN result (evaluated for every call: it goes on the CDR and feeds the fraud
    score). The judges write back only the first failure (``fail``) and the fraud score (the
    fraud rule, the one judge with a side effect: it counts the attempt in the fraud history).
    A Struct because its constructor is C: the gate makes one per INVITE.
    """

    gate: Gate
    facts: CallFacts
    policy: CompliancePolicy
    now: datetime
    caller: str | None
    called: str | None
    cinfo: NumberInfo | None
    dinfo: NumberInfo | None
    scope: frozenset[str] | None
    stir: StirResult
    failed: Rule | None = None
    detail: str | None = None
    score: FraudScore = _NO_SCORE

    def fail(self, rule: Rule, detail: str | None) -> str:
        """Record that ``rule`` failed (the first failure decides the verdict); its label."""
        if self.failed is None:
            self.failed = rule
            self.detail = detail
        return rule.failed


# -- the judges, in table order ---------------------------------------------------------------


def _invalid_number(rule: Rule, c: _Call) -> str:
    """A number we cannot even parse is judged, not crashed on.

    A caller without a usable number (withheld, "anonymous", a test tool's name) blocks the call
    only where a rule needs the number (hours, DNC, consent); elsewhere it is left to the fraud
    score, which counts invalid numbers as a signal.
    """
    caller = c.caller
    p = c.policy
    if c.called is None or (
        caller is None and (p.calling_hours or bool(p.dnc_lists) or p.consent_required)
    ):
        return c.fail(rule, "caller" if caller is None else "called")
    return rule.skipped if caller is None else rule.passed


def _suppressed(rule: Rule, c: _Call) -> str:
    """Erased (GDPR) with a block on every call."""
    scope = c.scope
    if scope is not None and ALL in scope:
        return c.fail(rule, None)
    return rule.passed if c.caller is not None else rule.skipped


def _dnc_stale(rule: Rule, c: _Call) -> str:
    """A required list is missing or older than its maximum age (the first such): fail closed."""
    names = c.policy.dnc_lists
    if not names:
        return rule.skipped
    get = c.gate.dnc.get
    now = c.now
    for name in names:
        lst = get(name)
        if lst is None or lst.is_stale(now):
            return c.fail(rule, name)
    return rule.passed


def _dnc(rule: Rule, c: _Call) -> str:
    """The caller is on a required list, or was before erasure (the first such; stale count)."""
    names = c.policy.dnc_lists
    caller = c.caller
    if not names or caller is None:
        return rule.skipped
    key = dnc_key(caller)
    scope = c.scope
    get = c.gate.dnc.get
    for name in names:
        lst = get(name)
        if lst is not None and (key in lst or (scope is not None and name in scope)):
            return c.fail(rule, name)
    return rule.passed


def _calling_hours(rule: Rule, c: _Call) -> str:
    """Outside the campaign's window, or the state's, in any of the caller's time zones."""
    cinfo = c.cinfo
    policy = c.policy
    if not policy.calling_hours or cinfo is None:
        return rule.skipped
    hours = check_hours(cinfo, c.now, policy.hours_window)
    return rule.passed if hours.allowed else c.fail(rule, hours.reason)


def _consent(rule: Rule, c: _Call) -> str:
    """The campaign requires consent and no valid, unrevoked record names it."""
    if not c.policy.consent_required:
        return rule.skipped
    caller = c.caller
    if caller is not None and c.gate.consent.has_valid(caller, c.facts.campaign_id, c.now):
        return rule.passed
    return c.fail(rule, None)


def _attestation(rule: Rule, c: _Call) -> str:
    """The STIR/SHAKEN level is below the campaign's minimum."""
    minimum = c.policy.min_attestation
    if minimum is None:
        return rule.skipped
    stir = c.stir
    if attestation_rank(stir.attestation) >= attestation_rank(minimum):
        return rule.passed
    return c.fail(rule, stir.reason)


def _fraud(rule: Rule, c: _Call) -> str:
    """Count the attempt in the fraud history; fails above the campaign's threshold."""
    c.score = score = c.gate.fraud.observe(
        caller=c.cinfo,
        called=c.dinfo,
        trunk_id=c.facts.trunk_id,
        stir=c.stir,
        ts=c.now.timestamp(),
    )
    if score.score > c.policy.fraud_threshold:
        return c.fail(rule, ",".join(score.signals))
    return rule.passed


TABLE: Final[tuple[Rule, ...]] = (
    Rule("invalid_number", _invalid_number),
    Rule("suppressed", _suppressed),
    Rule("dnc_stale", _dnc_stale),
    Rule("dnc", _dnc),
    Rule("calling_hours", _calling_hours),
    Rule("consent", _consent),
    Rule("attestation", _attestation),
    Rule("fraud", _fraud, "rejected_fraud"),
)
RULES: Final = tuple(rule.name for rule in TABLE)
# The table as (judge, rule) pairs for the per-call loop, so it reads no attribute per rule.
_STEPS: Final = tuple((rule.judge, rule) for rule in TABLE)


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
        """Judge one call by every rule of ``TABLE``, in order.

        Never raises for anything a peer or the data can cause.

        Raises:
            InvalidStateError: ``now`` is naive (our bug, not the call's).
            InvalidWindow: ``policy.hours_window`` is malformed (config validation missed it).
        """
        if now.tzinfo is None:
            raise InvalidStateError("Gate.check needs an aware datetime")
        region = self.default_region
        caller = normalize(facts.caller, region)
        called = normalize(facts.called, region)
        suppression = self.suppression
        # The hash is computed only when someone was erased: the common case costs nothing.
        scope = (
            suppression.scope(caller)
            if (caller is not None and suppression is not None and suppression)
            else None
        )
        # Most calls carry neither header: no need to run the STIR/SHAKEN parser for them.
        stir = (
            evaluate(
                facts.identity,
                facts.pai,
                caller=caller,
                called=called,
                now=now,
                trust=self.trust,
                max_age=self.stir_max_age,
            )
            if facts.identity or facts.pai
            else MISSING
        )
        cinfo = info(caller) if caller is not None else None
        dinfo = info(called) if called is not None else None
        call = _Call(self, facts, policy, now, caller, called, cinfo, dinfo, scope, stir)
        rules: list[str] = []
        for judge, rule in _STEPS:  # a plain loop: cheaper than a comprehension's frame
            rules.append(judge(rule, call))
        failed = call.failed
        score = call.score
        return Verdict(
            allowed=failed is None,
            disposition=failed.disposition if failed is not None else None,
            rule=failed.name if failed is not None else None,
            rules=rules,
            fraud_score=score.score,
            fraud_signals=score.signals,
            attestation=stir.attestation,
            caller_state=cinfo.state if cinfo is not None else None,
            caller=caller,
            called=called,
            detail=call.detail,
            stir_reason=stir.reason,
        )

    def record_call_end(
        self, trunk_id: str, duration_ms: int, min_duration_s: int, now: datetime
    ) -> None:
        """Tell the fraud history how an answered call ended (the short-call signal)."""
        self.fraud.record_call_end(trunk_id, duration_ms, min_duration_s, now.timestamp())
