"""One call's decision: the compliance gate, then the auction (SPEC.md call path).

``CallDecider.decide`` turns the core's ``RouteCall`` effect into a ``RouteOutcome``: a 403
with the failed rule when the gate rejects, a 480 when no buyer is eligible, else the ordered
targets. Either way the CDR fields the decision knows (compliance rules, fraud score,
attestation, caller state, campaign, auction record, decision time) ride along.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from compliance.check import CallFacts as GateFacts
from compliance.check import Gate
from compliance.policy import CompliancePolicy
from exchange.engine import Exchange
from exchange.models import Campaign, ExchangeConfig
from switch.effects import RouteCall, RouteOutcome

_DEFAULT_POLICY = CompliancePolicy()


class CallDecider:
    def __init__(self, gate: Gate, exchange: Exchange, config: ExchangeConfig) -> None:
        self.gate = gate
        self.exchange = exchange
        self._campaigns: dict[str, Campaign] = {}
        self.update(config)

    def update(self, config: ExchangeConfig) -> None:
        """New config from the next call on (the exchange keeps its own compiled copy)."""
        self._campaigns = {n: c for c in config.campaigns if c.active for n in c.numbers}
        self.exchange.update(config)

    def campaign_for(self, called: str) -> Campaign | None:
        return self._campaigns.get(called)

    async def decide(self, effect: RouteCall, now: datetime) -> RouteOutcome:
        t0 = time.perf_counter_ns()
        facts = effect.facts
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
            now,
        )
        cdr: dict[str, Any] = {
            "campaign_id": campaign.id if campaign is not None else None,
            "compliance": verdict.rules,
            "fraud_score": verdict.fraud_score,
            "attestation": verdict.attestation,
            "caller_state": verdict.caller_state,
        }
        if not verdict.allowed:
            cdr["decision_us"] = (time.perf_counter_ns() - t0) // 1000
            return RouteOutcome(
                reject_status=403,
                reject_reason="Forbidden",
                rule=verdict.rule or "compliance",
                disposition=verdict.disposition or "rejected_compliance",
                cdr=cdr,
            )
        decision = await self.exchange.route(facts)
        cdr["decision_us"] = (time.perf_counter_ns() - t0) // 1000
        if decision.campaign_id is not None:
            cdr["campaign_id"] = decision.campaign_id
        if decision.record is not None:
            cdr["auction"] = decision.record
        if not decision.targets:
            return RouteOutcome(
                reject_status=480,
                reject_reason="Temporarily Unavailable",
                rule=decision.reason or "no_buyer",
                disposition="no_buyer",
                cdr=cdr,
            )
        return RouteOutcome(targets=decision.targets, cdr=cdr)
