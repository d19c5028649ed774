"""store/reports.py on a real PostgreSQL: time-zone buckets across daylight saving, the sums,
the index and the partitions a report reads, and the dashboard's seed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from store.cdr import Cdr, Disposition
from store.cdrs import cdr_record
from store.database import Store
from store.reports import UnknownTimeZone, recent, report, report_query

NY = "America/New_York"


def cdr(
    i: int,
    at: datetime,
    *,
    buyer: str | None = "b1",
    campaign: str | None = "c1",
    trunk: str = "t1",
    answered_s: int | None = 60,
    price: int | None = 2_500_000,
    payout: int | None = 1_750_000,
    rule: str | None = None,
) -> Cdr:
    answered = answered_s is not None
    return Cdr(
        call_id=f"r{i:06d}",
        a_call_id=f"a{i}@192.0.2.1",
        trunk_id=trunk,
        received_at=at,
        answered_at=at + timedelta(seconds=1) if answered else None,
        ended_at=at + timedelta(seconds=1 + (answered_s or 0)),
        duration_ms=(answered_s or 0) * 1000,
        disposition=Disposition.ANSWERED if answered else Disposition.NO_BUYER,
        sip_status=200 if answered else 480,
        campaign_id=campaign,
        buyer_id=buyer,
        price=price if answered else None,
        payout=payout if answered and price is not None else None,
        billable=answered and price is not None,
        rule=rule,
    )


async def insert(store: Store, cdrs: list[Cdr]) -> None:
    months = sorted({(c.received_at.year, c.received_at.month) for c in cdrs})
    for y, m in months:
        await store.ensure_partitions(datetime(y, m, 1, tzinfo=UTC), months_ahead=0)
    async with store.pool.acquire() as conn:
        await conn.copy_records_to_table(
            "cdrs",
            records=[cdr_record(c) for c in cdrs],
            columns=list(Cdr.__struct_fields__),
            schema_name=store.schema,
        )


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def test_hours_of_a_fall_back_night_are_two_buckets(store: Store) -> None:
    # 2026-11-01 in New York: 01:00-02:00 happens twice, at -04:00 (05:00Z) then -05:00 (06:00Z).
    await insert(store, [
        cdr(1, at("2026-11-01T05:10:00+00:00")),
        cdr(2, at("2026-11-01T05:50:00+00:00")),
        cdr(3, at("2026-11-01T06:10:00+00:00"), answered_s=None),
    ])  # fmt: skip
    rows = await report(
        store, period="hour", by="campaign", zone=NY,
        since=at("2026-11-01T00:00:00+00:00"), until=at("2026-11-02T00:00:00+00:00"),
    )  # fmt: skip
    assert [(r.start.astimezone(UTC).isoformat(), r.calls, r.answered) for r in rows] == [
        ("2026-11-01T05:00:00+00:00", 2, 2),
        ("2026-11-01T06:00:00+00:00", 1, 0),
    ]


async def test_days_follow_the_zone_23_and_25_hours_long(store: Store) -> None:
    # New York's 2026-03-08 lasts 23 hours (05:00Z to 04:00Z), 2026-11-01 25 (04:00Z to 05:00Z).
    await insert(store, [
        cdr(1, at("2026-03-08T04:59:00+00:00")),  # 23:59 on the 7th (EST)
        cdr(2, at("2026-03-08T05:00:00+00:00")),  # 00:00 on the 8th (EST)
        cdr(3, at("2026-03-09T03:59:00+00:00")),  # 23:59 on the 8th (EDT)
        cdr(4, at("2026-03-09T04:00:00+00:00")),  # 00:00 on the 9th
        cdr(5, at("2026-11-01T04:00:00+00:00")),  # 00:00 on Nov 1 (EDT)
        cdr(6, at("2026-11-02T04:59:00+00:00")),  # 23:59 on Nov 1 (EST)
        cdr(7, at("2026-11-02T05:00:00+00:00")),  # 00:00 on Nov 2
    ])  # fmt: skip
    spring = await report(
        store, period="day", by="campaign", zone=NY,
        since=at("2026-03-07T00:00:00+00:00"), until=at("2026-03-10T00:00:00+00:00"),
    )  # fmt: skip
    assert [(r.start.astimezone(UTC).isoformat(), r.calls) for r in spring] == [
        ("2026-03-07T05:00:00+00:00", 1),
        ("2026-03-08T05:00:00+00:00", 2),
        ("2026-03-09T04:00:00+00:00", 1),
    ]
    fall = await report(
        store, period="day", by="campaign", zone=NY,
        since=at("2026-10-31T00:00:00+00:00"), until=at("2026-11-03T00:00:00+00:00"),
    )  # fmt: skip
    assert [(r.start.astimezone(UTC).isoformat(), r.calls) for r in fall] == [
        ("2026-11-01T04:00:00+00:00", 2),
        ("2026-11-02T05:00:00+00:00", 1),
    ]
    # The same calls by UTC day: the zone is what moved them.
    utc = await report(
        store, period="day", by="campaign", zone="UTC",
        since=at("2026-10-31T00:00:00+00:00"), until=at("2026-11-03T00:00:00+00:00"),
    )  # fmt: skip
    assert [(r.start.isoformat(), r.calls) for r in utc] == [
        ("2026-11-01T00:00:00+00:00", 1),
        ("2026-11-02T00:00:00+00:00", 2),
    ]


async def test_half_hour_zones_cut_hours_at_their_own_minutes(store: Store) -> None:
    await insert(store, [cdr(1, at("2026-06-01T10:20:00+00:00")),
                         cdr(2, at("2026-06-01T10:40:00+00:00"))])  # fmt: skip
    rows = await report(
        store, period="hour", by="campaign", zone="Asia/Kolkata",  # +05:30
        since=at("2026-06-01T00:00:00+00:00"), until=at("2026-06-02T00:00:00+00:00"),
    )  # fmt: skip
    assert [r.start.astimezone(UTC).isoformat() for r in rows] == [
        "2026-06-01T09:30:00+00:00",
        "2026-06-01T10:30:00+00:00",
    ]


async def test_sums_groups_filters_and_the_half_open_range(store: Store) -> None:
    t = at("2026-05-04T12:00:00+00:00")
    await insert(store, [
        cdr(1, t, buyer="b1", campaign="c1", trunk="t1", answered_s=30),
        cdr(2, t + timedelta(minutes=1), buyer="b1", campaign="c2", trunk="t2", answered_s=90,
            price=1_000_001, payout=700_000),
        cdr(3, t + timedelta(minutes=2), buyer="b2", campaign="c1", trunk="t1", answered_s=10,
            price=None),  # answered, not billable
        cdr(4, t + timedelta(minutes=3), buyer=None, campaign="c1", answered_s=None,
            rule="no_eligible_buyer"),
        cdr(5, t + timedelta(hours=1), buyer="b1"),  # == until: outside
        cdr(6, t - timedelta(microseconds=1), buyer="b1"),  # before since: outside
    ])  # fmt: skip
    since, until = t, t + timedelta(hours=1)
    by_buyer = await report(store, period="day", by="buyer", zone="UTC", since=since,
                            until=until)  # fmt: skip
    got = [(r.key, r.calls, r.answered, r.billable, r.revenue, r.payout, r.talk_ms)
           for r in by_buyer]  # fmt: skip
    assert got == [
        ("b1", 2, 2, 2, 3_500_001, 2_450_000, 120_000),
        ("b2", 1, 1, 0, 0, 0, 10_000),
        (None, 1, 0, 0, 0, 0, 0),
    ]
    by_trunk = await report(store, period="day", by="trunk", zone="UTC", since=since,
                            until=until)  # fmt: skip
    assert [(r.key, r.calls) for r in by_trunk] == [("t1", 3), ("t2", 1)]
    only = await report(store, period="day", by="campaign", zone="UTC", since=since,
                        until=until, buyer_id="b1", trunk_id="t1")  # fmt: skip
    assert [(r.key, r.calls, r.revenue) for r in only] == [("c1", 1, 2_500_000)]


async def test_a_zone_postgresql_does_not_know_is_its_own_error(store: Store) -> None:
    with pytest.raises(UnknownTimeZone):
        await report(store, period="day", by="campaign", zone="Mars/Olympus_Mons",
                     since=at("2026-01-01T00:00:00+00:00"),
                     until=at("2026-01-02T00:00:00+00:00"))  # fmt: skip


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out = [plan]
    for child in plan.get("Plans", []):
        out += _plan_nodes(child)
    return out


@pytest.mark.parametrize("buyer", [None, "b1"], ids=["all", "one-buyer"])
async def test_a_report_reads_one_partition_through_a_received_at_index(
    store: Store, buyer: str | None
) -> None:
    # Three months of calls, one every 4 minutes (~33,000 rows): a day is 0.3 % of them.
    start = at("2026-09-01T00:00:00+00:00")
    rows = [cdr(i, start + timedelta(minutes=4 * i), buyer=f"b{i % 7}",
                answered_s=None if i % 3 else 40) for i in range(33_000)]  # fmt: skip
    await insert(store, rows)
    async with store.pool.acquire() as conn:
        await conn.execute("ANALYZE cdrs")
        sql, args = report_query(
            period="hour", by="campaign", zone=NY, since=at("2026-10-14T04:00:00+00:00"),
            until=at("2026-10-15T04:00:00+00:00"), buyer_id=buyer,
        )  # fmt: skip
        plan = json.loads(await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args))
    nodes = _plan_nodes(plan[0]["Plan"])
    relations = {n["Relation Name"] for n in nodes if "Relation Name" in n}
    assert relations == {"cdrs_2026_10"}, relations  # the other months are pruned
    indexes = {n["Index Name"] for n in nodes if "Index Name" in n}
    assert indexes, f"no index scan: {[n['Node Type'] for n in nodes]}"
    # cdrs_received, or cdrs_buyer_received (buyer_id, received_at) with a buyer filter.
    assert all("received_at" in name for name in indexes), indexes


async def test_the_dashboard_seed_slots_calls_by_end_and_arrivals_by_start(store: Store) -> None:
    now = at("2026-05-04T12:00:00+00:00")
    since = now - timedelta(hours=1)
    await insert(store, [
        # Received 2 h ago, a 70-minute call: ended 50 minutes ago, in the window.
        cdr(1, now - timedelta(hours=2), answered_s=70 * 60 - 1),
        cdr(2, now - timedelta(minutes=5), answered_s=None, buyer=None, rule="dnc"),
        cdr(3, now - timedelta(minutes=5), answered_s=20),
        cdr(4, now - timedelta(hours=3)),  # ended long ago
    ])  # fmt: skip
    tallies, arrivals = await recent(store, since=since, until=now, slot_s=10)
    ended_at_1 = (now - timedelta(minutes=50)).timestamp()
    got = sorted((t.slot, t.buyer_id, t.rule, t.calls, t.answered, t.revenue) for t in tallies)
    assert got == sorted([
        (int(ended_at_1 // 10), "b1", None, 1, 1, 2_500_000),
        (int((now - timedelta(minutes=5) + timedelta(seconds=1)).timestamp() // 10), None,
         "dnc", 1, 0, 0),
        (int((now - timedelta(minutes=5) + timedelta(seconds=21)).timestamp() // 10), "b1",
         None, 1, 1, 2_500_000),
    ])  # fmt: skip
    assert [(a.slot, a.calls) for a in arrivals] == [
        (int((now - timedelta(minutes=5)).timestamp() // 10), 2)
    ]
