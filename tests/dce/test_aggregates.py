"""dce/aggregates.py: the dashboard's hour of 10-second slots, fed as the pump feeds it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from dce.aggregates import SLOT_S, SLOTS, LiveStats
from store.cdr import Cdr, Disposition
from store.reports import RecentArrivals, RecentTally

T0 = datetime(2026, 11, 23, 15, 0, tzinfo=UTC).timestamp()


def cdr(
    call_id: str,
    end: float,
    *,
    buyer: str | None = "b1",
    campaign: str | None = "c1",
    talk_s: float | None = 30.0,
    price: int | None = 2_500_000,
    payout: int | None = 1_750_000,
    rule: str | None = None,
    setup_s: float = 2.0,
) -> Cdr:
    answered = talk_s is not None
    ended = datetime.fromtimestamp(end, UTC)
    received = ended - timedelta(seconds=setup_s + (talk_s or 0))
    return Cdr(
        call_id=call_id,
        a_call_id=call_id + "@a",
        received_at=received,
        answered_at=received + timedelta(seconds=setup_s) if answered else None,
        ended_at=ended,
        duration_ms=int((talk_s or 0) * 1000),
        disposition=Disposition.ANSWERED if answered else Disposition.NO_BUYER,
        sip_status=200 if answered else 480,
        buyer_id=buyer,
        campaign_id=campaign,
        price=price if answered else None,
        payout=payout if answered and price is not None else None,
        billable=answered and price is not None,
        rule=rule,
    )


def call(stats: LiveStats, c: Cdr) -> None:
    """One call through the pump's three hooks."""
    stats.routed(c.call_id, c.received_at.timestamp())
    if c.answered_at is not None:
        stats.connected(c.call_id, c.buyer_id, c.campaign_id)
    stats.ended(c)


def rows(table: list[dict[str, Any]], *fields: str) -> list[tuple[Any, ...]]:
    return [tuple(r[f] for f in ("id", *fields)) for r in table]


def test_the_hour_in_totals_tables_rules_and_money() -> None:
    stats = LiveStats(T0)
    call(stats, cdr("1", T0 + 100, buyer="b1", campaign="c1", talk_s=30))
    call(stats, cdr("2", T0 + 110, buyer="b1", campaign="c2", talk_s=50, price=1_000_001,
                    payout=700_000))  # fmt: skip
    call(stats, cdr("3", T0 + 120, buyer="b2", campaign="c1", talk_s=10, price=None))
    call(stats, cdr("4", T0 + 130, buyer=None, campaign="c1", talk_s=None,
                    rule="no_eligible_buyer"))  # fmt: skip
    call(stats, cdr("5", T0 + 131, buyer=None, campaign=None, talk_s=None, rule="dnc"))
    call(stats, cdr("6", T0 + 132, buyer=None, campaign=None, talk_s=None, rule="dnc"))
    snap = stats.snapshot(T0 + 140, buyer_id=None, live_calls=7)
    t = snap["totals"]
    assert (t["calls"], t["answered"], t["billable"], t["live_calls"]) == (6, 3, 2, 7)
    assert (t["revenue"], t["payout"], t["margin"]) == ("3.500001", "2.450000", "1.050001")
    assert t["answer_rate"] == 0.5 and t["avg_duration_s"] == 30.0
    assert snap["rules"] == [{"rule": "dnc", "calls": 2},
                             {"rule": "no_eligible_buyer", "calls": 1}]  # fmt: skip
    # Most calls first; the calls without a campaign or buyer are a row of their own.
    assert rows(snap["campaigns"], "calls", "revenue", "margin") == [
        ("c1", 3, "2.500000", "0.750000"),
        (None, 2, "0.000000", "0.000000"),
        ("c2", 1, "1.000001", "0.300001"),
    ]
    assert rows(snap["buyers"], "calls", "answered", "payout") == [
        (None, 3, 0, "0.000000"),
        ("b1", 2, 2, "2.450000"),
        ("b2", 1, 1, "0.000000"),
    ]
    assert sum(snap["series"]["arrivals"]) == 6
    assert sum(snap["series"]["calls"]) == 6 and sum(snap["series"]["answered"]) == 3
    assert sum(snap["series"]["revenue_micros"]) == 3_500_001
    assert len(snap["series"]["calls"]) == SLOTS
    assert snap["series"]["start"] == (int((T0 + 140) // SLOT_S) - SLOTS + 1) * SLOT_S


def test_a_buyer_sees_its_calls_and_spend_only() -> None:
    stats = LiveStats(T0)
    call(stats, cdr("1", T0 + 100, buyer="b1", campaign="c1"))
    call(stats, cdr("2", T0 + 101, buyer="b1", campaign="c2", talk_s=None, rule="busy"))
    call(stats, cdr("3", T0 + 102, buyer="b2", campaign="c1"))
    call(stats, cdr("4", T0 + 103, buyer=None, talk_s=None, rule="dnc"))
    stats.connected("live-1", "b1", "c1")  # a call of b1's in progress
    stats.connected("live-2", "b2", "c1")
    snap = stats.snapshot(T0 + 110, buyer_id="b1", live_calls=9)
    assert snap["role"] == "buyer" and snap["buyer_id"] == "b1"
    t = snap["totals"]
    assert (t["calls"], t["answered"], t["revenue"], t["live_calls"]) == (2, 1, "2.500000", 1)
    assert "payout" not in t and "margin" not in t
    assert [r["id"] for r in snap["buyers"]] == ["b1"]
    assert rows(snap["campaigns"], "calls", "live") == [("c1", 1, 1), ("c2", 1, 0)]
    for r in snap["campaigns"] + snap["buyers"]:
        assert "payout" not in r and "margin" not in r
    assert snap["rules"] == [{"rule": "busy", "calls": 1}]
    assert "arrivals" not in snap["series"]
    assert sum(snap["series"]["calls"]) == 2


def test_the_ring_forgets_what_is_older_than_an_hour() -> None:
    stats = LiveStats(T0)
    call(stats, cdr("old", T0 + 5, rule=None))
    call(stats, cdr("new", T0 + 1800, talk_s=None, buyer=None, rule="dnc"))
    snap = stats.snapshot(T0 + 3599, buyer_id=None, live_calls=0)  # 360 slots: T0 to now
    assert snap["totals"]["calls"] == 2
    snap = stats.snapshot(T0 + 3610, buyer_id=None, live_calls=0)  # slot of T0+5 is gone
    assert snap["totals"]["calls"] == 1 and snap["totals"]["revenue"] == "0.000000"
    assert [r["id"] for r in snap["buyers"]] == [None]
    snap = stats.snapshot(T0 + 9 * 3600, buyer_id=None, live_calls=0)  # a long quiet spell
    assert snap["totals"]["calls"] == 0 and snap["rules"] == [] and snap["campaigns"] == []
    # A CDR that ended before the window (a late one) is not counted.
    stats.ended(cdr("late", T0 + 10))
    assert stats.snapshot(T0 + 9 * 3600, buyer_id=None, live_calls=0)["totals"]["calls"] == 0


def test_calls_per_second_counts_arrivals_of_the_last_minute() -> None:
    stats = LiveStats(T0)
    now = T0 + 1000.0  # a slot boundary: the last six slots span [950, 1000]
    for i in range(30):
        stats.routed(f"c{i}", now - 55 + i)  # 30 arrivals in the last minute, still up
    stats.routed("older", now - 120)
    snap = stats.snapshot(now, buyer_id=None, live_calls=31)
    assert snap["totals"]["cps"] == round(30 / 60, 2)
    assert snap["totals"]["calls"] == 0  # nothing ended yet


def test_a_call_refused_before_routing_is_an_arrival_at_its_end() -> None:
    stats = LiveStats(T0)
    stats.ended(cdr("x", T0 + 50, buyer=None, talk_s=None, rule="trunk_cps", setup_s=0))
    routed = cdr("y", T0 + 51, buyer=None, talk_s=None, rule="dnc", setup_s=0)
    call(stats, routed)
    snap = stats.snapshot(T0 + 55, buyer_id=None, live_calls=0)
    assert sum(snap["series"]["arrivals"]) == 2  # not 3: y was counted when routed


def test_live_calls_are_sampled_into_the_plot() -> None:
    stats = LiveStats(T0)
    stats.connected("a", "b1", "c1")
    stats.connected("b", "b1", "c1")
    stats.sample(T0 + 1, 5)
    stats.sample(T0 + 2, 3)
    stats.ended(cdr("a", T0 + 3))
    stats.sample(T0 + 12, 1)
    operator = stats.snapshot(T0 + 13, buyer_id=None, live_calls=1)["series"]["live"]
    assert operator[-2:] == [5, 1]
    buyer = stats.snapshot(T0 + 13, buyer_id="b1", live_calls=1)
    assert buyer["series"]["live"][-2:] == [2, 1]
    assert buyer["totals"]["live_calls"] == 1


def test_the_seed_adds_the_database_hour() -> None:
    stats = LiveStats(T0)
    call(stats, cdr("live", T0 + 20))
    slot = int((T0 - 600) // SLOT_S)
    stats.seed(
        T0 + 30,
        [RecentTally(slot=slot, buyer_id="b1", campaign_id="c1", rule=None, calls=3, answered=2,
                     billable=2, revenue=5_000_000, payout=3_500_000, talk_ms=80_000),
         RecentTally(slot=slot, buyer_id=None, campaign_id="c1", rule="dnc", calls=1,
                     answered=0, billable=0, revenue=0, payout=0, talk_ms=0),
         RecentTally(slot=slot - SLOTS, buyer_id="b1", campaign_id="c1", rule=None, calls=9,
                     answered=9, billable=9, revenue=1, payout=1, talk_ms=1)],  # too old
        [RecentArrivals(slot=slot - 1, calls=4)],
    )  # fmt: skip
    snap = stats.snapshot(T0 + 30, buyer_id=None, live_calls=0)
    t = snap["totals"]
    assert (t["calls"], t["answered"], t["revenue"]) == (5, 3, "7.500000")
    assert t["avg_duration_s"] == round((80_000 + 30_000) / 3 / 1000, 1)
    assert snap["rules"] == [{"rule": "dnc", "calls": 1}]
    assert sum(snap["series"]["arrivals"]) == 5
