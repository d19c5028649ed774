"""The routing bridge answers with the right reason (dce/bridge.py ``CallBridge.route``).

A called number that no campaign and no buyer profile names is 404 ``no_campaign`` before the
gate runs (it used to fail the default policy's rules: ``calling_hours`` at night,
``invalid_number`` for a browser caller); an inactive campaign's number is 480
``campaign_inactive``, also before the gate. A real gate and a real exchange (in-process caps).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from compliance.check import Gate
from dce.bridge import CallBridge
from exchange.engine import Exchange
from exchange.models import BidProfile, Buyer, Campaign, Endpoint, ExchangeConfig
from store.cdr import Disposition
from switch.effects import Rejected, RouteCall, Routed
from switch.record import CallRecord, Outcome

# 03:00 in Chicago: outside every calling-hours window, so the gate's hours rule would fail.
NIGHT = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)


def config() -> ExchangeConfig:
    return ExchangeConfig(
        campaigns=[
            Campaign(id="live", name="Live", numbers=["+18005550100"]),
            Campaign(id="paused", name="Paused", numbers=["+18005550200"], active=False),
        ],
        buyers=[
            Buyer(
                id="b1", name="B1",
                endpoints=[Endpoint(id="e1", uri="sip:b1@192.0.2.10")],
                profiles=[
                    BidProfile(id="any", bid=Decimal("2.00")),  # no campaign, no numbers
                    BidProfile(id="own", numbers=["+18005550300"], bid=Decimal("3.00")),
                ],
            ),
        ],
    )  # fmt: skip


def bridge() -> CallBridge:
    cfg = config()
    return CallBridge(Gate(), Exchange.from_settings(cfg, redis_url=None, auction_timeout=0.1),
                      cfg)


def route_call(called: str, caller: str = "+13122600123", call_id: str = "c1") -> RouteCall:
    return RouteCall(call_id=call_id, trunk_id="t1", source="sip", caller=caller, called=called,
                     at=1.0)


def record(call_id: str, status: int, rule: str) -> CallRecord:
    return CallRecord(
        call_id=call_id, a_call_id="a@x", b_call_id=None, trunk_id="t1", source="sip",
        caller="+13122600123", called="", received=1.0, answered=None, confirmed=False,
        ended=1.0, duration_ms=0, outcome=Outcome.REJECTED, sip_status=status, hangup_side=None,
        target_index=None, endpoint=None, attempts=0, rule=rule,
    )  # fmt: skip


async def test_a_number_nobody_owns_is_404_no_campaign_and_the_gate_never_runs() -> None:
    b = bridge()
    for caller in ("+13122600123", "webrtc"):  # a real number at night; a browser's name
        result = await b.route(route_call("+18005550999", caller), NIGHT)
        assert result == Rejected(status=404, reason="Not Found", rule="no_campaign"), caller
        cdr = b.ended(record("c1", 404, "no_campaign"), lambda _: NIGHT, {})
        assert cdr.disposition is Disposition.NO_CAMPAIGN and cdr.rule == "no_campaign"
        assert cdr.compliance == [] and cdr.campaign_id is None and cdr.billable is False


async def test_an_inactive_campaigns_number_is_480_campaign_inactive_before_the_gate() -> None:
    b = bridge()
    result = await b.route(route_call("+18005550200"), NIGHT)
    assert result == Rejected(status=480, reason="Temporarily Unavailable",
                              rule="campaign_inactive")
    cdr = b.ended(record("c1", 480, "campaign_inactive"), lambda _: NIGHT, {})
    assert cdr.disposition is Disposition.NO_BUYER and cdr.campaign_id == "paused"
    assert cdr.compliance == []


async def test_a_campaign_number_still_meets_the_gate() -> None:
    b = bridge()
    result = await b.route(route_call("+18005550100"), NIGHT)
    assert result == Rejected(status=403, reason="Forbidden", rule="calling_hours")


async def test_a_number_a_profile_buys_without_a_campaign_is_routed() -> None:
    b = bridge()
    day = NIGHT.replace(hour=18)  # noon in Chicago
    result = await b.route(route_call("+18005550300"), day)
    assert isinstance(result, Routed) and result.targets == ["sip:b1@192.0.2.10"]
    assert b.live("c1", 0) == {"caller": "+13122600123", "called": "+18005550300",
                               "campaign_id": None, "buyer_id": "b1"}


async def test_a_config_change_applies_to_the_next_call() -> None:
    b = bridge()
    cfg = config()
    cfg.campaigns.append(Campaign(id="new", name="New", numbers=["+18005550999"]))
    b.update(cfg)
    result = await b.route(route_call("+18005550999"), NIGHT)
    assert isinstance(result, Rejected) and result.rule == "calling_hours"  # now it is owned
