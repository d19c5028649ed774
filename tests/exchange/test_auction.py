"""The pure auction: eligibility, ranking, pricing, ties, the record.

Compiling the index is tested in test_auction_index.py.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.auction import AuctionResult, run_auction
from exchange.auction_index import AuctionIndex, compile_index, hash64, survival_ppm
from exchange.caps import InProcessCaps, TakeRequest
from exchange.models import Caps, DuplicateRule, ExchangeConfig
from exchange.money import to_micros
from exchange.routing import CallFacts
from tests.exchange.auctionkit import DID, buyer, config, prof

CALLER = "+12125550100"
# Monday 2026-11-23 15:00 UTC = 10:00 in New York, 07:00 in Los Angeles.
NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Info:
    state: str | None = "NY"
    area_code: str | None = "212"


def facts(call_id: str = "call-1", called: str = DID, at: datetime = NOW) -> CallFacts:
    return CallFacts(
        call_id=call_id, trunk_id="t1", source="sip", caller=CALLER, called=called, received_at=at
    )


def auction(
    cfg: ExchangeConfig | AuctionIndex,
    *,
    call_id: str = "call-1",
    info: Info | None = None,
    at: datetime = NOW,
    caps: InProcessCaps | None = None,
    rtb: dict[str, Any] | None = None,
    caller_key: str = "",
    max_bidders: int = 5,
    seq: int | None = None,
) -> AuctionResult:
    index = cfg if isinstance(cfg, AuctionIndex) else compile_index(cfg)
    return run_auction(
        index,
        facts(call_id, at=at),
        info if info is not None else Info(),
        at,
        caps,
        rtb,
        hash64(call_id) if seq is None else seq,
        caller_key=caller_key,
        max_bidders=max_bidders,
    )


def winner(r: AuctionResult) -> str | None:
    w = r.winner
    return None if w is None else w.bidder.buyer_id


def order(r: AuctionResult) -> list[tuple[str, int]]:
    return [(p.bidder.buyer_id, p.price) for p in r.order]


# -- eligibility ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile_kw", "info", "at", "reason"),
    [
        ({"states": ["NY"]}, Info(), NOW, None),
        ({"states": ["CA"]}, Info(), NOW, "state"),
        ({"states": ["NY"]}, Info(state=None), NOW, "state"),
        ({"area_codes": ["212"]}, Info(), NOW, None),
        ({"area_codes": ["310"]}, Info(), NOW, "area_code"),
        ({"hours": {"mon": ["09:00-17:00"]}}, Info(), NOW, None),  # 10:00 in New York
        (
            {"hours": {"mon": ["09:00-17:00"]}, "timezone": "America/Los_Angeles"},
            Info(),
            NOW,
            "hours",  # 07:00 in Los Angeles
        ),
        ({"hours": {"tue": ["00:00-24:00"]}}, Info(), NOW, "hours"),  # Monday is closed
        ({"hours": {"sun": ["22:00-11:00"]}}, Info(), NOW, None),  # overnight into Monday
        ({"hours": {"sun": ["22:00-10:00"]}}, Info(), NOW, "hours"),  # ends at 10:00 sharp
        ({"active": False}, Info(), NOW, "profile_inactive"),
    ],
    ids=[
        "state-in",
        "state-out",
        "state-unknown",
        "ac-in",
        "ac-out",
        "hours-in",
        "hours-buyer-tz",
        "day-closed",
        "overnight-in",
        "overnight-end",
        "inactive",
    ],
)
def test_eligibility(
    profile_kw: dict[str, Any], info: Info, at: datetime, reason: str | None
) -> None:
    r = auction(config(buyer("a", prof("p1", "5", **profile_kw))), info=info, at=at)
    if reason is None:
        assert winner(r) == "a"
    else:
        assert winner(r) is None
        assert r.excluded == {"a/p1": reason}


def test_inactive_buyer_and_buyer_without_endpoints_are_excluded() -> None:
    cfg = config(
        buyer("a", prof("p1", "5"), active=False),
        buyer("b", prof("p1", "5"), endpoints=0),
        buyer("c", prof("p1", "1")),
    )
    r = auction(cfg)
    assert r.excluded == {"a/p1": "buyer_inactive", "b/p1": "no_endpoint"}
    assert winner(r) == "c"


def test_bids_below_reserve_are_excluded() -> None:
    r = auction(config(buyer("a", prof("p1", "0.99")), buyer("b", prof("p1", "1")), reserve="1"))
    assert r.excluded == {"a/p1": "below_reserve"}
    assert order(r) == [("b", 1_000_000)]


def _slot(r_key: str, index: AuctionIndex, amount: int = 0, caller_key: str = "") -> TakeRequest:
    p = index.profiles[r_key]
    now_ms = int(NOW.timestamp()) * 1000
    return TakeRequest(p.cap, index.local_time(p.tz, NOW).buckets, amount, caller_key, now_ms)


@pytest.mark.parametrize(
    ("caps", "reason"),
    [
        (Caps(concurrent=1), "cap_concurrent"),
        (Caps(hourly=1), "cap_hourly"),
        (Caps(daily=1), "cap_daily"),
        (Caps(monthly=1), "cap_monthly"),
        (Caps(budget_daily=Decimal("7")), "budget_daily"),  # 5 in flight + bid 5 > 7
        (Caps(budget_monthly=Decimal("9.99")), "budget_monthly"),
        (Caps(concurrent=2, hourly=2, budget_daily=Decimal("10")), None),
    ],
    ids=["concurrent", "hourly", "daily", "monthly", "budget-day", "budget-month", "room"],
)
def test_caps_count_calls_in_flight(caps: Caps, reason: str | None) -> None:
    index = compile_index(
        config(buyer("a", prof("p1", "5", caps=caps)), buyer("b", prof("p1", "1")))
    )
    view = InProcessCaps()
    assert view.take_now("other-call", _slot("a/p1", index, amount=5_000_000)).ok
    r = auction(index, caps=view)
    if reason is None:
        assert winner(r) == "a"
    else:
        assert r.excluded == {"a/p1": reason}
        assert winner(r) == "b"


def test_duplicate_caller_rule() -> None:
    rule = DuplicateRule(window_days=30)
    index = compile_index(config(buyer("a", prof("p1", "5", duplicate=rule))))
    view = InProcessCaps()
    req = _slot("a/p1", index, caller_key="k1")
    assert view.take_now("earlier", req).ok
    view.release("earlier", req, counted=True, spent=0, record_duplicate=True)
    r = auction(index, caps=view, caller_key="k1")
    assert r.excluded == {"a/p1": "duplicate"}
    assert winner(auction(index, caps=view, caller_key="k2")) == "a"  # another caller
    later = NOW + timedelta(days=31)
    assert winner(auction(index, caps=view, caller_key="k1", at=later)) == "a"


def test_inactive_campaign_has_no_bidders() -> None:
    r = auction(config(buyer("a", prof("p1", "5")), active=False))
    assert r.order == [] and r.fallback == ()
    assert r.rule == "none"


# -- ranking and pricing ----------------------------------------------------------------------


def test_second_price_winner_pays_runner_up_bid() -> None:
    cfg = config(
        buyer("a", prof("p1", "10")), buyer("b", prof("p1", "7.5")), buyer("c", prof("p1", "3"))
    )
    r = auction(cfg)
    assert r.rule == "second_price"
    # Each bidder in the failover order pays the bid of the one after it; the last the reserve.
    assert order(r) == [("a", 7_500_000), ("b", 3_000_000), ("c", 0)]


def test_reserve_raises_the_second_price() -> None:
    r = auction(config(buyer("a", prof("p1", "10")), buyer("b", prof("p1", "2")), reserve="4"))
    assert order(r)[0] == ("a", 4_000_000)
    lone = auction(config(buyer("a", prof("p1", "10")), reserve="4"))
    assert order(lone) == [("a", 4_000_000)]  # a lone bidder pays the reserve


def test_first_price_pays_own_bid() -> None:
    cfg = config(buyer("a", prof("p1", "10")), buyer("b", prof("p1", "7.5")), auction="first_price")
    r = auction(cfg)
    assert r.rule == "first_price"
    assert order(r) == [("a", 10_000_000), ("b", 7_500_000)]


def test_expected_value_ranking_and_price() -> None:
    # $12 for calls of 120 s or more is worth less than $10 for any answered call when
    # S(120) = exp(-120/180) = 0.513: EV 6.16 < 10.
    cfg = config(buyer("a", prof("p1", "10")), buyer("b", prof("p1", "12", min_duration=120)))
    r = auction(cfg)
    assert [p.bidder.buyer_id for p in r.order] == ["a", "b"]
    s120 = survival_ppm(120, 180)
    assert s120 == round(math.exp(-120 / 180) * 1_000_000)
    # a pays the least bid that still beats b's EV at its own duration (S(0) = 1).
    assert r.order[0].price == math.ceil(12_000_000 * s120 / 1_000_000)
    # Longer minimum, but a high enough bid: it wins, and pays b's EV converted to its terms.
    cfg2 = config(buyer("a", prof("p1", "10")), buyer("b", prof("p1", "25", min_duration=120)))
    r2 = auction(cfg2)
    assert [p.bidder.buyer_id for p in r2.order] == ["b", "a"]
    assert r2.order[0].price == -(-(10_000_000 * 1_000_000) // s120)  # ceil(EV_a / S_b)
    assert r2.order[0].price <= 25_000_000


def test_equal_minimum_durations_price_exactly_at_runner_up_bid() -> None:
    cfg = config(
        buyer("a", prof("p1", "10.000001", min_duration=90)),
        buyer("b", prof("p1", "9.999999", min_duration=90)),
    )
    assert order(auction(cfg))[0] == ("a", 9_999_999)


def test_one_bid_per_buyer() -> None:
    cfg = config(buyer("a", prof("p1", "10"), prof("p2", "9")), buyer("b", prof("p1", "5")))
    r = auction(cfg)
    assert order(r) == [("a", 5_000_000), ("b", 0)]  # a's own 9 does not set its price
    assert r.same_buyer == {"a/p2": "same_buyer"}
    assert r.record(0)["excluded"]["a/p2"] == "same_buyer"


def test_max_bidders_limits_failover_order() -> None:
    cfg = config(*(buyer(f"b{i}", prof("p1", str(10 + i))) for i in range(8)))
    r = auction(cfg, max_bidders=3)
    assert [b for b, _ in order(r)] == ["b7", "b6", "b5"]
    assert order(r)[-1][1] == 14_000_000  # priced against b4, the first left out
    assert len(r.eligible) == 8


def test_without_reranks_and_reprices() -> None:
    cfg = config(
        buyer("a", prof("p1", "10")), buyer("b", prof("p1", "8")), buyer("c", prof("p1", "6"))
    )
    r = auction(cfg).without({"b/p1": "cap_concurrent"})
    assert order(r) == [("a", 6_000_000), ("c", 0)]
    assert r.excluded["b/p1"] == "cap_concurrent"


# -- fallback buyers (no profiles) ------------------------------------------------------------


def test_buyers_without_profiles_follow_the_bidders_at_price_zero_in_config_order() -> None:
    cfg = config(buyer("z"), buyer("a", prof("p1", "5")), buyer("y", endpoints=2))
    r = auction(cfg)
    assert order(r) == [("a", 0)]
    assert [f.buyer_id for f in r.fallback] == ["z", "y"]
    assert [e.id for e in r.fallback[1].endpoints] == ["e0", "e1"]


def test_config_without_profiles_or_campaigns_routes_to_all_active_buyers() -> None:
    cfg = ExchangeConfig(buyers=[buyer("a"), buyer("b", active=False), buyer("c")])
    r = auction(cfg)
    assert r.rule == "fallback"
    assert [f.buyer_id for f in r.fallback] == ["a", "c"]


def test_fallback_buyers_are_below_a_positive_reserve() -> None:
    r = auction(config(buyer("z"), reserve="0.01"))
    assert r.fallback == ()
    assert r.excluded == {"z/*": "below_reserve"}


# -- RTB in the auction -------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    bid: int
    min_duration: int | None = None


def test_rtb_profiles_are_reported_first_then_ranked_with_their_answers() -> None:
    cfg = config(
        buyer("a", prof("p1", "5")),
        buyer("r", prof("p1", "0", rtb_url="http://127.0.0.1:1/bid")),
        buyer("s", prof("p1", "0", rtb_url="http://127.0.0.1:1/bid", states=["CA"])),
        buyer("t", prof("p1", "0", rtb_url="http://127.0.0.1:1/bid")),
        buyer("u", prof("p1", "0", rtb_url="http://127.0.0.1:1/bid")),
        reserve="1",
    )
    index = compile_index(cfg)
    first = auction(index)
    assert [p.key for p in first.rtb_needed] == ["r/p1", "t/p1", "u/p1"]  # s is out: state
    assert order(first) == [("a", 1_000_000)]
    second = auction(
        index, rtb={"r/p1": Answer(9_000_000, 30), "t/p1": Answer(0), "u/p1": Answer(500_000)}
    )
    assert [p.bidder.buyer_id for p in second.order] == ["r", "a"]
    assert second.order[0].bidder.min_duration == 30
    assert second.excluded["t/p1"] == "rtb_declined"
    assert second.excluded["u/p1"] == "below_reserve"
    rec = second.record(1)
    assert rec["order"][0]["rtb"] is True and rec["bids"]["r/p1"] == "9.000000"
    third = auction(index, rtb={})
    assert third.excluded["r/p1"] == "rtb_no_bid"


# -- ties -----------------------------------------------------------------------------------------


def test_ties_are_deterministic_per_call() -> None:
    cfg = config(*(buyer(f"b{i}", prof("p1", "5")) for i in range(4)))
    index = compile_index(cfg)
    a = [p.bidder.buyer_id for p in auction(index, call_id="x").order]
    b = [p.bidder.buyer_id for p in auction(index, call_id="x").order]
    assert a == b
    assert (
        len(
            {
                tuple(p.bidder.buyer_id for p in auction(index, call_id=f"c{i}").order)
                for i in range(50)
            }
        )
        > 1
    )


def test_ties_are_fair_over_many_calls() -> None:
    cfg = config(*(buyer(f"b{i}", prof("p1", "5")) for i in range(3)))
    index = compile_index(cfg)
    wins = Counter(winner(auction(index, call_id=f"call-{i}")) for i in range(3000))
    assert set(wins) == {"b0", "b1", "b2"}
    for n in wins.values():
        assert 850 < n < 1150  # 1000 ± ~6 standard deviations


def test_ties_are_fair_for_sequential_seeds() -> None:
    # The engine hashes the call id; even a plain counter as seq must not favour anyone.
    cfg = config(*(buyer(f"b{i}", prof("p1", "5")) for i in range(2)))
    index = compile_index(cfg)
    wins = Counter(winner(auction(index, seq=i)) for i in range(2000))
    assert 850 < wins["b0"] < 1150
    # Alternating calls (e.g. two campaigns sharing a counter) must not favour anyone either.
    evens = Counter(winner(auction(index, seq=2 * i)) for i in range(1000))
    assert 400 < evens["b0"] < 600


@settings(max_examples=25, deadline=None)
@given(
    ids=st.lists(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=12),
        min_size=2,
        max_size=5,
        unique=True,
    ),
    salt=st.text(min_size=0, max_size=8),
)
def test_property_tie_order_is_fair(ids: list[str], salt: str) -> None:
    """Over many calls every tied buyer comes first about 1/k of the time."""
    k = len(ids)
    index = compile_index(config(*(buyer(i, prof("p1", "5")) for i in ids)))
    calls = 150 * k
    wins = Counter(winner(auction(index, call_id=f"{salt}{n}")) for n in range(calls))
    assert set(wins) == set(ids)  # no buyer wins every tie; nobody is starved
    for n in wins.values():
        assert 0.5 * calls / k < n < 1.5 * calls / k


# -- properties of pricing ----------------------------------------------------------------------

money = st.integers(min_value=0, max_value=50_000_000).map(lambda m: Decimal(m) / 1_000_000)


@settings(max_examples=200, deadline=None)
@given(
    bids=st.lists(
        st.tuples(money, st.sampled_from([0, 0, 30, 60, 90, 120, 600])), min_size=1, max_size=8
    ),
    reserve=money,
    first_price=st.booleans(),
    max_bidders=st.integers(min_value=1, max_value=8),
    call=st.integers(min_value=0, max_value=10**6),
)
def test_property_winner_pays_at_most_own_bid_and_at_least_reserve(
    bids: list[tuple[Decimal, int]],
    reserve: Decimal,
    first_price: bool,
    max_bidders: int,
    call: int,
) -> None:
    cfg = config(
        *(buyer(f"b{i}", prof("p1", str(b), min_duration=d)) for i, (b, d) in enumerate(bids)),
        reserve=str(reserve),
        auction="first_price" if first_price else "second_price",
    )
    r = auction(cfg, call_id=f"c{call}", max_bidders=max_bidders)
    res = to_micros(reserve)
    eligible = [(to_micros(b), d) for b, d in bids if to_micros(b) >= res]
    assert len(r.order) == min(max_bidders, len(eligible))
    evs = [p.bidder.ev for p in r.order]
    assert evs == sorted(evs, reverse=True)
    if r.order:
        assert r.order[0].bidder.ev == max(p.ev for p in r.eligible)
    for placed in r.order:
        assert res <= placed.price <= placed.bidder.bid
        if first_price:
            assert placed.price == placed.bidder.bid


def test_record_is_json_and_complete() -> None:
    cfg = config(
        buyer("a", prof("p1", "10")),
        buyer("b", prof("p1", "7", states=["CA"])),
        buyer("c", prof("p1", "6")),
        reserve="1",
    )
    rec = auction(cfg).record(42)
    assert set(rec) >= {"eligible", "excluded", "bids", "winner", "price", "rule", "elapsed_us"}
    assert rec["eligible"] == ["a/p1", "c/p1"]
    assert rec["excluded"] == {"b/p1": "state"}
    assert rec["bids"] == {"a/p1": "10.000000", "c/p1": "6.000000"}
    assert rec["winner"]["buyer_id"] == "a"
    assert rec["price"] == "6.000000"
    assert rec["rule"] == "second_price"
    assert rec["elapsed_us"] == 42
    assert msgspec.json.decode(msgspec.json.encode(rec)) == rec
