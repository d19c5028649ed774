"""Between the switch core and the business: decide each call, settle it, build its CDR.

``route()`` answers the core's ``RouteCall``. A called number that no campaign and no buyer
profile names gets 404 ``no_campaign`` and one of an inactive campaign 480
``campaign_inactive``, before any rule runs: the gate's rules are the campaign's, and a call
with none must not be told it broke one. Otherwise the compliance gate first (403 with the
failed rule), then the exchange's auction (480 when no buyer is eligible, else the ordered
targets).
What the decision knew (compliance rules, fraud score, attestation, caller state, campaign,
auction record, decision time) is kept per call until ``ended()`` joins it with the core's
:class:`switch.record.CallRecord`, the settlement (price, payout, billable) and the media
counters into the one CDR of the call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from compliance.check import CallFacts as GateFacts
from compliance.check import Gate
from compliance.numbers import normalize
from compliance.policy import CompliancePolicy
from dce.journal import Up
from exchange.auction_index import AuctionIndex
from exchange.engine import CAMPAIGN_INACTIVE, Exchange
from exchange.models import Campaign, ExchangeConfig
from exchange.routing import CallFacts, Target
from store.cdr import Cdr, Disposition
from switch.calllog import CallLog
from switch.effects import CallAnswered, Rejected, RouteCall, Routed, RouteResult
from switch.record import CallRecord, Outcome

logger = logging.getLogger(__name__)

_DEFAULT_POLICY = CompliancePolicy()
NO_CAMPAIGN = "no_campaign"  # the SIP Reason and CDR rule of a number no campaign owns


@dataclass(slots=True)
class Decision:
    """What routing decided for one call, kept until the call ends."""

    facts: CallFacts
    targets: list[Target] = field(default_factory=list)
    disposition: Disposition | None = None  # set when routing refused the call
    campaign_id: str | None = None
    compliance: list[str] = field(default_factory=list)
    fraud_score: int | None = None
    attestation: str | None = None
    caller_state: str | None = None
    decision_us: int | None = None
    auction: dict[str, Any] | None = None


def _decided(decision: Decision) -> dict[str, Any]:
    """The CDR fields routing decided."""
    return {
        "campaign_id": decision.campaign_id,
        "compliance": decision.compliance,
        "fraud_score": decision.fraud_score,
        "attestation": decision.attestation,
        "caller_state": decision.caller_state,
        "decision_us": decision.decision_us,
        "auction": decision.auction,
    }


_UNDECIDED: dict[str, Any] = {}  # a call never routed: the CDR's defaults


class CallBridge:
    def __init__(self, gate: Gate, exchange: Exchange, config: ExchangeConfig) -> None:
        self.gate = gate
        self.exchange = exchange
        self._campaigns: dict[str, Campaign] = {}
        self._inactive: dict[str, str] = {}  # an inactive campaign's number -> its id
        self._known: set[str] = set()  # numbers a campaign or a buyer profile names
        self._decisions: dict[str, Decision] = {}
        self.update(config)

    def update(self, config: ExchangeConfig, compiled: AuctionIndex | None = None) -> None:
        """New config from the next call on (the exchange keeps its own compiled copy;
        ``compiled`` is ``exchange.compile(config)`` if the caller did it already)."""
        campaigns = {n: c for c in config.campaigns if c.active for n in c.numbers}
        inactive = {n: c.id for c in config.campaigns if not c.active for n in c.numbers}
        # A buyer profile may buy numbers of its own without a campaign (docs/settings.md).
        profiled = {n for b in config.buyers for p in b.profiles for n in p.numbers}
        # Compiles first (unless given); raises and keeps the old one if invalid.
        self.exchange.update(config, compiled)
        self._campaigns = campaigns
        self._inactive = {n: c for n, c in inactive.items() if n not in campaigns}
        self._known = campaigns.keys() | inactive | profiled

    async def route(self, effect: RouteCall, received_at: datetime) -> RouteResult:
        """Decide one call: the gate, then the auction."""
        t0 = time.perf_counter_ns()
        facts = CallFacts(
            call_id=effect.call_id,
            trunk_id=effect.trunk_id,
            source=effect.source,
            caller=normalize(effect.caller) or effect.caller,
            called=normalize(effect.called) or effect.called,
            received_at=received_at,
        )
        decision = self._decisions[effect.call_id] = Decision(facts=facts)
        refused = self._unowned(facts.called, decision)
        if refused is not None:
            decision.decision_us = (time.perf_counter_ns() - t0) // 1000
            return refused
        campaign = self._campaigns.get(facts.called)
        policy = campaign.compliance if campaign is not None else _DEFAULT_POLICY
        verdict = self.gate.check(
            GateFacts(
                caller=facts.caller,
                called=facts.called,
                trunk_id=facts.trunk_id,
                campaign_id=campaign.id if campaign is not None else "",
                identity=effect.identity,
                pai=effect.pai,
            ),
            policy,
            received_at,
        )
        decision.campaign_id = campaign.id if campaign is not None else None
        decision.compliance = verdict.rules
        decision.fraud_score = verdict.fraud_score
        decision.attestation = verdict.attestation
        decision.caller_state = verdict.caller_state
        if not verdict.allowed:
            decision.decision_us = (time.perf_counter_ns() - t0) // 1000
            decision.disposition = Disposition(verdict.disposition or "rejected_compliance")
            return Rejected(status=403, reason="Forbidden", rule=verdict.rule or "compliance")
        routed = await self.exchange.route(facts)
        decision.decision_us = (time.perf_counter_ns() - t0) // 1000
        if routed.campaign_id is not None:
            decision.campaign_id = routed.campaign_id
        decision.auction = routed.record
        if not routed.targets:
            decision.disposition = Disposition.NO_BUYER
            return Rejected(
                status=480, reason="Temporarily Unavailable", rule=routed.reason or "no_buyer"
            )
        decision.targets = routed.targets
        return Routed(targets=[t.uri for t in routed.targets], present_as=facts.caller)

    def _unowned(self, called: str, decision: Decision) -> Rejected | None:
        """404 for a number nobody owns, 480 for an inactive campaign's; None to go on."""
        if called not in self._known:
            decision.disposition = Disposition.NO_CAMPAIGN
            return Rejected(status=404, reason="Not Found", rule=NO_CAMPAIGN)
        if called in self._inactive:
            decision.campaign_id = self._inactive[called]
            decision.disposition = Disposition.NO_BUYER
            return Rejected(status=480, reason="Temporarily Unavailable", rule=CAMPAIGN_INACTIVE)
        return None

    def live(self, call_id: str, target_index: int | None) -> dict[str, Any]:
        """What routing knows of a live call, for the live-calls view (dce/livecalls.py):
        the numbers as the CDR will hold them, the campaign, and the buyer of attempt
        ``target_index``. Empty before routing started."""
        decision = self._decisions.get(call_id)
        if decision is None:
            return {}
        buyer = None
        if target_index is not None and target_index < len(decision.targets):
            buyer = decision.targets[target_index].buyer_id
        facts = decision.facts
        return {"caller": facts.caller, "called": facts.called,
                "campaign_id": decision.campaign_id, "buyer_id": buyer}

    def failed(self, call_id: str, status: int, rule: str) -> Rejected:
        """Routing raised (our bug, or a store down): the call fails with ``status``."""
        decision = self._decisions.get(call_id)
        if decision is not None:
            decision.disposition = Disposition.FAILED
        return Rejected(status=status, reason="Server Internal Error", rule=rule)

    def answered(self, effect: CallAnswered, wall: Callable[[float], datetime]) -> Up | None:
        """A buyer answered: the slots held for the other bidders go back now.

        Returns the journal's record of the answered call: its CDR so far and its money
        terms, so that a crash cannot lose it (dce/journal.py).
        """
        decision = self._decisions.get(effect.call_id)
        if decision is None or effect.target_index >= len(decision.targets):
            return None
        target = decision.targets[effect.target_index]
        self.exchange.answered(decision.facts, target)
        facts = decision.facts
        at = wall(effect.at)
        cdr = Cdr(
            call_id=facts.call_id,
            a_call_id=effect.a_leg.call_id,
            b_call_id=effect.b_leg.call_id,
            trunk_id=facts.trunk_id or None,
            source=facts.source,
            caller=facts.caller,
            called=facts.called,
            received_at=facts.received_at,
            answered_at=at,
            ended_at=at,
            disposition=Disposition.ANSWERED,
            sip_status=200,
            buyer_id=target.buyer_id,
            endpoint=target.uri,
            bid=target.bid,
            price=target.price,
            attempts=effect.attempts,
            **_decided(decision),
        )
        return Up(
            cdr=cdr,
            min_duration_s=target.min_duration_s,
            payout_pct=self.exchange.payout_share(facts.trunk_id),
            a_leg=effect.a_leg,
            b_leg=effect.b_leg,
        )

    def abandon(self, call_id: str) -> None:
        """The call ended while it was being routed: release what routing took."""
        decision = self._decisions.pop(call_id, None)
        if decision is not None:
            self.exchange.settle(decision.facts, None, False, 0)

    def ended(
        self,
        record: CallRecord,
        wall: Callable[[float], datetime],
        media: dict[str, Any],
    ) -> Cdr:
        """The call's CDR: the core's record, the decision, the settlement, the media."""
        decision = self._decisions.pop(record.call_id, None)
        target: Target | None = None
        index = record.target_index
        if decision is not None and index is not None and index < len(decision.targets):
            target = decision.targets[index]
        # Connected: the buyer's 2xx reached the caller and the caller confirmed it.
        answered = record.answered is not None and record.confirmed
        if record.outcome is Outcome.REJECTED:
            disposition = (
                decision.disposition
                if decision is not None and decision.disposition is not None
                else Disposition.FAILED
            )
        else:
            disposition = Disposition(record.outcome.value)
        ended_at = wall(record.ended)
        # The CDR is built in one go (no fields patched in afterwards): the settlement first.
        bid = price = payout = None
        billable = False
        if decision is not None:
            facts = decision.facts
            caller, called = facts.caller, facts.called
            if answered and target is not None and record.trunk_id:
                # Feeds the fraud score's "short calls just under the buyers' minimum" signal.
                self.gate.record_call_end(
                    record.trunk_id, record.duration_ms, target.min_duration_s, ended_at
                )
            try:
                s = self.exchange.settle(facts, target, answered, record.duration_ms)
            except Exception:
                CallLog(logger, record.call_id).exception("settlement failed")
            else:
                bid, price, payout, billable = s.bid, s.price, s.payout, s.billable
        else:
            caller = normalize(record.caller) or record.caller
            called = normalize(record.called) or record.called
        return Cdr(
            call_id=record.call_id,
            a_call_id=record.a_call_id,
            b_call_id=record.b_call_id,
            trunk_id=record.trunk_id or None,
            source=record.source,
            caller=caller,
            called=called,
            received_at=wall(record.received),
            answered_at=(
                wall(record.answered) if answered and record.answered is not None else None
            ),
            ended_at=ended_at,
            duration_ms=record.duration_ms,
            disposition=disposition,
            sip_status=record.sip_status,
            hangup_side=record.hangup_side,
            buyer_id=target.buyer_id if target is not None else None,
            endpoint=record.endpoint,
            attempts=record.attempts,
            rule=record.rule,
            bid=bid,
            price=price,
            payout=payout,
            billable=billable,
            **media,
            **(_decided(decision) if decision is not None else _UNDECIDED),
        )

    @property
    def pending(self) -> int:
        """Calls decided and not yet ended."""
        return len(self._decisions)
