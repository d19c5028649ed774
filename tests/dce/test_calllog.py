"""One log line and the labelled metrics of each ended call, through the sans-IO path.

Raw SIP into the switch core on fake time, routing by the real compliance gate and exchange
(dce.bridge.CallBridge), each CallEnded made into its cleaned CDR as dce/pump.py does, then
fed to :class:`dce.metrics.CallMetrics` and :class:`dce.logs.CallLines`, whose lines go
through the real JSON formatter. Calls: answered and billable with ringback, answered too short
to bill, busy, refused by compliance (403), no buyer (480), overload (503, refused before
routing).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

import dce.metrics
from compliance.check import Gate
from compliance.policy import CompliancePolicy
from dce.bridge import CallBridge
from dce.logs import CallLines, JsonFormatter, mask_number
from dce.metrics import OTHER, CallMetrics, call_families
from exchange.engine import Exchange
from exchange.models import BidProfile, Buyer, Campaign, Endpoint, ExchangeConfig, Trunk
from store.cdr import Cdr, Disposition
from store.cdrtext import clean_cdr
from switch.effects import CallAnswered, CallEnded, OpenMedia, RouteCall
from switch.message import SipRequest, SipResponse, make_response
from switch.record import CallRecord, Outcome
from tests.switch.test_core import B1, SDP, A, Bypass, Harness, in_dialog, invite

T0 = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
CALLER = "+12125551234"  # From user 2125551234 of tests.switch.test_core.invite, normalised
OPEN_POLICY = CompliancePolicy(calling_hours=False, fraud_threshold=100)
CONFIG = ExchangeConfig(
    trunks=[Trunk(id="t1", name="t1", payout_share=Decimal(70))],
    campaigns=[
        Campaign(id="c1", name="c1", numbers=["+18005550100"], compliance=OPEN_POLICY),
        # A required DNC list that was never loaded: 403 dnc_stale (fails closed).
        Campaign(id="c2", name="c2", numbers=["+18005550102"], compliance=CompliancePolicy(
            calling_hours=False, fraud_threshold=100, dnc_lists=["internal"])),
        Campaign(id="c3", name="c3", numbers=["+18005550103"], compliance=OPEN_POLICY,
                 reserve=Decimal(100)),
    ],
    buyers=[
        Buyer(id="b1", name="b1", endpoints=[Endpoint(id="e1", uri="sip:buyer@127.0.0.1:5070")],
              profiles=[BidProfile(id="p1", campaign_id="c1", bid=Decimal("12"),
                                   min_duration=30)]),
    ],
)


class Path(Harness):
    """The core plus what the pump does with its effects (dce/pump.py), on fake time."""

    def __init__(self, max_calls: int = 100) -> None:
        super().__init__(max_calls=max_calls)
        self.bridge = CallBridge(Gate(), Exchange(CONFIG), CONFIG)
        self.metrics = CallMetrics()
        self.out = io.StringIO()
        logger = logging.getLogger(f"test.calls.{id(self)}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        handler = logging.StreamHandler(self.out)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        self.lines = CallLines(logger=logger)
        self.cdrs_made: list[Cdr] = []

    def wall(self, mono: float) -> datetime:
        return T0 + timedelta(seconds=mono)

    def pump(self) -> None:
        super().pump()
        while self.effects:
            effect = self.effects.pop(0)
            match effect:
                case RouteCall():
                    result = asyncio.run(self.bridge.route(effect, self.wall(effect.at)))
                    self.core.routed(effect.call_id, result, self.now)
                case OpenMedia():
                    self.core.media_opened(effect.call_id, Bypass(effect.offer), self.now)
                case CallAnswered():
                    self.bridge.answered(effect, self.wall)
                case CallEnded():
                    cdr = clean_cdr(self.bridge.ended(effect.record, self.wall, {}))
                    self.cdrs_made.append(cdr)
                    self.metrics.ended(effect.record, cdr)
                    self.lines.ended(effect.record, cdr)
            super().pump()

    def logged(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.getvalue().splitlines()]

    def call(self, called: str, n: int, buyer: Any) -> None:
        """One call to ``called``; ``buyer(b_invite)`` plays the buyer's part."""
        self.feed(A, invite_to(called, n))
        b_invites = [m for m in self.take(B1) if isinstance(m, SipRequest)]
        if b_invites:
            buyer(b_invites[0])
        self.take(A)
        self.take(B1)


def invite_to(called: str, n: int) -> bytes:
    return invite(call_id=f"a{n}@x", branch=f"z9hG4bKa{n}").replace(
        b"+18005550100", called.encode())


def respond(h: Path, req: SipRequest, status: int) -> SipResponse:
    resp = make_response(req, status, "X", to_tag="bt",
                         headers=[("contact", "<sip:buyer@127.0.0.1:5070>")],
                         body=SDP if status == 200 else b"")
    if status == 200:
        resp.headers.add("content-type", "application/sdp")
    h.feed(B1, resp)
    return resp


def talk(h: Path, b_inv: SipRequest, seconds: float, ring: float = 0.4) -> None:
    """The buyer rings for ``ring`` s, answers after 1 s; the caller hangs up after ``seconds``."""
    start = h.now
    h.now = start + ring
    h.feed(B1, make_response(b_inv, 180, "Ringing", to_tag="bt"))
    h.now = start + 1.0
    respond(h, b_inv, 200)
    ok = next(m for m in h.take(A) if isinstance(m, SipResponse) and m.status == 200)
    h.feed(A, in_dialog("ACK", ok, 1, f"z9hG4bKack{start}", "sip:x@127.0.0.1:5060"))
    h.now += seconds
    h.feed(A, in_dialog("BYE", ok, 2, f"z9hG4bKbye{start}", "sip:x@127.0.0.1:5060"))
    for m in h.take(B1):
        if isinstance(m, SipRequest) and m.method == "BYE":
            h.feed(B1, make_response(m, 200, "OK"))


@pytest.fixture
def path() -> Iterator[Path]:
    h = Path()
    h.now = 100.0
    h.call("+18005550100", 1, lambda inv: talk(h, inv, 45.0))  # billable: 45 s >= 30 s
    h.now += 1
    h.call("+18005550100", 2, lambda inv: talk(h, inv, 5.0, ring=0.2))  # answered, too short
    h.now += 1
    h.call("+18005550100", 3, lambda inv: respond(h, inv, 486))  # busy
    h.now += 1
    h.call("+18005550102", 4, lambda inv: pytest.fail("c2 is refused"))  # 403 dnc_stale
    h.now += 1
    h.call("+18005550103", 5, lambda inv: pytest.fail("c3 has no buyer"))  # 480
    yield h


def test_one_line_per_call_with_every_field(path: Path) -> None:
    lines = path.logged()
    assert [line["call_id"] for line in lines] == [c.call_id for c in path.cdrs_made]
    assert len(lines) == 5
    assert {line["msg"] for line in lines} == {"call ended"}
    billable, short, busy, refused, no_buyer = lines
    expected = {
        "trunk_id": "t1", "campaign_id": "c1", "buyer_id": "b1",
        "endpoint": "sip:buyer@127.0.0.1:5070", "disposition": "answered", "rule": None,
        "sip_status": 200, "hangup_side": "caller", "attempts": 1, "setup_ms": 1000,
        "talk_ms": 45000, "billable": True, "price": "0.000000", "payout": "0.000000",
        "caller": "***1234", "called": "***0100", "level": "info",
    }
    assert {k: billable[k] for k in expected} == expected
    assert billable["decision_us"] >= 0 and billable["sip_call_id"] == "a1@x"
    assert (short["talk_ms"], short["billable"], short["price"]) == (5000, False, None)
    assert (busy["disposition"], busy["sip_status"], busy["setup_ms"], busy["talk_ms"]) == (
        "busy", 486, 0, 0)
    assert (refused["disposition"], refused["rule"], refused["sip_status"],
            refused["campaign_id"], refused["buyer_id"]) == (
        "rejected_compliance", "dnc_stale", 403, "c2", None)
    assert (no_buyer["disposition"], no_buyer["sip_status"], no_buyer["campaign_id"]) == (
        "no_buyer", 480, "c3")
    # Masked by default: nowhere in the log is the caller's number whole.
    assert CALLER not in path.out.getvalue() and "2125551234" not in path.out.getvalue()


def test_full_numbers_when_asked(path: Path) -> None:
    path.lines.full_numbers = True
    path.now += 1
    path.call("+18005550102", 6, lambda inv: None)
    last = path.logged()[-1]
    assert (last["caller"], last["called"]) == (CALLER, "+18005550102")


def test_price_and_payout_are_decimal_strings() -> None:
    """A billable call at a non-zero price: the second price is the reserve when bidding
    alone; payout is the trunk's 70 %."""
    config = with_reserve(Decimal("5.25"))
    h = Path()
    h.bridge = CallBridge(Gate(), Exchange(config), config)
    h.call("+18005550100", 1, lambda inv: talk(h, inv, 40.0))
    (line,) = h.logged()
    assert (line["price"], line["payout"], line["billable"]) == ("5.250000", "3.675000", True)
    assert h.metrics.campaigns["c1"].revenue == 5_250_000
    assert h.metrics.trunks["t1"].payout == 3_675_000


def with_reserve(reserve: Decimal) -> ExchangeConfig:
    c1 = msgspec.structs.replace(CONFIG.campaigns[0], reserve=reserve)
    return msgspec.structs.replace(CONFIG, campaigns=[c1, *CONFIG.campaigns[1:]])


def test_overload_refusal_gets_its_line_and_counts() -> None:
    """Refused before routing (503 overload): no decision, still one line and one count."""
    h = Path(max_calls=1)
    h.feed(A, invite_to("+18005550100", 1))  # stays ringing at the buyer
    h.feed(A, invite_to("+18005550100", 2))
    (line,) = h.logged()
    assert (line["disposition"], line["rule"], line["sip_status"], line["decision_us"]) == (
        "overload", "overload", 503, None)
    assert h.metrics.trunks["t1"].calls == {"overload": 1}
    assert h.metrics.rules == {("t1", "overload"): 1}


def scrape(metrics: CallMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The Prometheus text of ``call_families``, parsed back: (sample, labels) -> value."""

    class One(Collector):
        def collect(self) -> Iterator[Any]:
            yield from call_families(metrics)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(One())
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_labelled_counters(path: Path) -> None:
    got = scrape(path.metrics)
    assert got[("dce_trunk_calls_total", (("disposition", "answered"), ("trunk", "t1")))] == 2
    assert got[("dce_trunk_calls_total", (("disposition", "busy"), ("trunk", "t1")))] == 1
    assert got[("dce_trunk_answered_calls_total", (("trunk", "t1"),))] == 2
    assert got[("dce_trunk_billable_calls_total", (("trunk", "t1"),))] == 1
    assert got[("dce_trunk_talk_seconds_total", (("trunk", "t1"),))] == 50.0
    assert got[("dce_campaign_calls_total", (("campaign", "c1"), ("disposition", "answered")))] == 2
    assert got[("dce_campaign_calls_total",
                (("campaign", "c2"), ("disposition", "rejected_compliance")))] == 1
    assert got[("dce_campaign_calls_total", (("campaign", "c3"), ("disposition", "no_buyer")))] == 1
    assert got[("dce_buyer_calls_total", (("buyer", "b1"), ("disposition", "busy")))] == 1
    assert got[("dce_buyer_answered_calls_total", (("buyer", "b1"),))] == 2
    assert got[("dce_buyer_revenue_micros_total", (("buyer", "b1"),))] == 0  # reserve 0
    assert got[("dce_call_rules_total", (("rule", "dnc_stale"), ("trunk", "t1")))] == 1
    assert got[("dce_call_rules_total", (("rule", "no_eligible_buyer"), ("trunk", "t1")))] == 1
    # Refused calls never reached a buyer: no buyer series for them.
    assert not [k for k in got if k[0] == "dce_buyer_calls_total"
                and ("disposition", "rejected_compliance") in k[1]]


def buckets(got: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str
            ) -> dict[str, float]:
    return {dict(k[1])["le"]: v for k, v in got.items() if k[0] == f"{name}_bucket"}


def test_setup_histograms(path: Path) -> None:
    got = scrape(path.metrics)
    # Ringback after 0.4 s and 0.2 s on the answered calls; the busy one had none.
    pdd = buckets(got, "dce_post_dial_delay_seconds")
    assert (pdd["0.1"], pdd["0.25"], pdd["0.5"], pdd["+Inf"]) == (0, 1, 2, 2)
    # First buyer response: the two ringbacks, and the busy 486 at once (0 s).
    first = buckets(got, "dce_first_response_seconds")
    assert (first["0.01"], first["0.25"], first["0.5"], first["+Inf"]) == (1, 2, 3, 3)
    # Every routed call was decided (compliance + auction), the 403 and 480 included.
    assert got[("dce_decision_seconds_count", ())] == 5


def test_a_label_never_takes_more_values_than_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dce.metrics, "MAX_VALUES", 3)
    h = Path()
    cdr = Cdr(call_id="x", a_call_id="x", received_at=T0, ended_at=T0, sip_status=503,
              disposition=Disposition.OVERLOAD, trunk_id="t0")
    record = _record()
    for i in range(10):
        h.metrics.ended(record, _with(cdr, trunk_id=f"t{i}", rule=f"r{i}"))
    assert sorted(h.metrics.trunks) == ["(other)", "t0", "t1", "t2"]
    assert h.metrics.trunks[OTHER].calls == {"overload": 7}
    assert h.metrics.rules[(OTHER, OTHER)] == 7 and len(h.metrics.rules) == 4


def test_the_line_is_on_logger_dce_calls() -> None:
    assert CallLines().logger.name == "dce.calls"


def _record() -> CallRecord:
    return CallRecord(call_id="x", a_call_id="x", b_call_id=None, trunk_id="t0", source="sip",
                      caller="1", called="2", received=0.0, answered=None, confirmed=False,
                      ended=0.0, duration_ms=0, outcome=Outcome.OVERLOAD, sip_status=503,
                      hangup_side=None, target_index=None, endpoint=None, attempts=0)


def _with(cdr: Cdr, **changes: Any) -> Cdr:
    return msgspec.structs.replace(cdr, **changes)


@pytest.mark.parametrize(("number", "shown"), [
    ("+13125550123", "***0123"), ("2125551234", "***1234"), ("anonymous", "***mous"),
    ("911", "***"), ("123456", "***"), (None, None),
], ids=["e164", "national", "name", "short", "six", "none"])
def test_mask(number: str | None, shown: str | None) -> None:
    assert mask_number(number) == shown
