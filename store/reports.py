"""Aggregates over ``cdrs``: the reports of ``GET /api/v1/reports`` and the dashboard's last hour.

``report()`` groups calls by period (hour or day) in an IANA time zone and by campaign, buyer
or trunk. Buckets are ``date_trunc(period, received_at, zone)`` (PostgreSQL 12+), which does
the daylight-saving arithmetic in the zone: a day is 23 or 25 hours long on the days the
clocks change, and the repeated hour of a fall-back night is two buckets, one per UTC offset.
The range is a half-open ``[since, until)`` on ``received_at``, so PostgreSQL prunes the
monthly partitions outside it and scans the others through the ``received_at`` indexes
(``cdrs_received``, or ``cdrs_buyer_received`` with a buyer filter); ``report_query()`` is
the statement itself, for EXPLAIN in tests.

``recent()`` is the dashboard's seed at start (dce/aggregates.py): the last hour in 10-second
slots of ``ended_at``, and arrivals in slots of ``received_at``.

Money leaves as integer micro-dollars (sums of NUMERIC(12,6) are exact Decimals).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Literal

import asyncpg

from exchange.money import to_micros
from store.errors import StoreError

if TYPE_CHECKING:
    from store.database import Store

__all__ = [
    "GROUP_COLUMNS",
    "PERIODS",
    "RecentArrivals",
    "RecentTally",
    "ReportRow",
    "ReportTooLarge",
    "Tally",
    "UnknownTimeZone",
    "recent",
    "report",
    "report_query",
]

Period = Literal["hour", "day"]
GroupBy = Literal["campaign", "buyer", "trunk"]
PERIODS: Final[tuple[str, ...]] = ("hour", "day")
GROUP_COLUMNS: Final[dict[str, str]] = {
    "campaign": "campaign_id",
    "buyer": "buyer_id",
    "trunk": "trunk_id",
}
# Calls that ended in the seeded hour were received at most this long before it: a longer
# call is left out of the dashboard's seed (the scan stays on the received_at index).
SEED_LOOKBACK: Final = timedelta(hours=6)


class UnknownTimeZone(StoreError):
    """PostgreSQL does not know the time zone (its zone database may differ from Python's)."""

    status = 422


class ReportTooLarge(StoreError):
    """More rows than the caller's limit: narrow the range or filter."""

    status = 422


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One bucket of one group. Money in micro-dollars; ``talk_ms`` over answered calls."""

    start: datetime  # the bucket's start (UTC; the zone's offset is the caller's to apply)
    key: str | None  # campaign, buyer or trunk id; None for calls without one
    calls: int
    answered: int
    billable: int
    revenue: int
    payout: int
    talk_ms: int


def report_query(
    *,
    period: Period,
    by: GroupBy,
    zone: str,
    since: datetime,
    until: datetime,
    campaign_id: str | None = None,
    buyer_id: str | None = None,
    trunk_id: str | None = None,
    limit: int | None = None,
) -> tuple[str, list[Any]]:
    """The report's SELECT and its arguments (``$n`` placeholders)."""
    if period not in PERIODS:
        raise ValueError(f"period must be one of {PERIODS}, got {period!r}")
    column = GROUP_COLUMNS[by]  # KeyError for anything else: never interpolated unchecked
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    # The zone goes in as a parameter; the period as one too (date_trunc takes text).
    bucket = f"date_trunc({arg(period)}, received_at, {arg(zone)})"
    conds = [f"received_at >= {arg(since)}", f"received_at < {arg(until)}"]
    for name, value in (("campaign_id", campaign_id), ("buyer_id", buyer_id),
                        ("trunk_id", trunk_id)):  # fmt: skip
        if value is not None:
            conds.append(f"{name} = {arg(value)}")
    sql = (
        f"SELECT {bucket} AS start, {column} AS key, count(*) AS calls, "
        "count(*) FILTER (WHERE answered_at IS NOT NULL) AS answered, "
        "count(*) FILTER (WHERE billable) AS billable, "
        "coalesce(sum(price), 0) AS revenue, coalesce(sum(payout), 0) AS payout, "
        "coalesce(sum(duration_ms) FILTER (WHERE answered_at IS NOT NULL), 0) AS talk_ms "
        f"FROM cdrs WHERE {' AND '.join(conds)} "
        "GROUP BY 1, 2 ORDER BY 1, 2 NULLS LAST"
    )
    if limit is not None:
        sql += f" LIMIT {arg(limit)}"
    return sql, args


@dataclass(slots=True)
class Tally:
    """Sums over ended calls, as a report row or a dashboard slot adds them up: counts, money
    in micro-dollars, connected time of answered calls."""

    calls: int = 0
    answered: int = 0
    billable: int = 0
    revenue: int = 0
    payout: int = 0
    talk_ms: int = 0

    def add(self, other: Tally, sign: int = 1) -> None:
        """Add ``other`` in (``sign=-1`` takes it out: the dashboard's ring moving on)."""
        self.calls += sign * other.calls
        self.answered += sign * other.answered
        self.billable += sign * other.billable
        self.revenue += sign * other.revenue
        self.payout += sign * other.payout
        self.talk_ms += sign * other.talk_ms

    @property
    def answer_rate(self) -> float | None:
        return round(self.answered / self.calls, 4) if self.calls else None

    def avg_duration_s(self, digits: int) -> float | None:
        """Mean connected time of the answered calls, in seconds."""
        return round(self.talk_ms / self.answered / 1000, digits) if self.answered else None


def _micros(value: Decimal | int) -> int:
    return int(to_micros(Decimal(value)))


async def report(
    db: Store,
    *,
    period: Period,
    by: GroupBy,
    zone: str,
    since: datetime,
    until: datetime,
    campaign_id: str | None = None,
    buyer_id: str | None = None,
    trunk_id: str | None = None,
    max_rows: int = 50_000,
) -> list[ReportRow]:
    """Rows in bucket order, then key order (calls without a key last).

    Raises:
        UnknownTimeZone: PostgreSQL does not know ``zone``.
        ReportTooLarge: more than ``max_rows`` rows.
    """
    sql, args = report_query(
        period=period, by=by, zone=zone, since=since, until=until, campaign_id=campaign_id,
        buyer_id=buyer_id, trunk_id=trunk_id, limit=max_rows + 1,
    )  # fmt: skip
    try:
        async with db.pool.acquire() as conn:
            # The zone is checked on its own: the report evaluates it only if a row matches.
            await conn.fetchval("SELECT now() AT TIME ZONE $1", zone)
            rows = await conn.fetch(sql, *args)
    except asyncpg.InvalidParameterValueError as exc:
        # 22023: 'time zone "X" not recognized'; nothing else in the statement can raise it.
        raise UnknownTimeZone(f"PostgreSQL does not know the time zone {zone!r}") from exc
    if len(rows) > max_rows:
        raise ReportTooLarge(f"more than {max_rows} rows")
    return [
        ReportRow(
            start=r["start"],
            key=r["key"],
            **_sums(r),
        )
        for r in rows
    ]



def _sums(r: asyncpg.Record) -> dict[str, int]:
    """The money and count columns every aggregate query selects, as integers."""
    return {
        "calls": int(r["calls"]),
        "answered": int(r["answered"]),
        "billable": int(r["billable"]),
        "revenue": _micros(r["revenue"]),
        "payout": _micros(r["payout"]),
        "talk_ms": int(r["talk_ms"]),
    }

# ----------------------------------------------------------------------------------------------
# The dashboard's seed


@dataclass(frozen=True, slots=True)
class RecentTally:
    """Calls that ended in one slot, for one (buyer, campaign, rule)."""

    slot: int  # floor(epoch seconds of ended_at / slot_s)
    buyer_id: str | None
    campaign_id: str | None
    rule: str | None  # the Reason rule of calls that did not connect
    calls: int
    answered: int
    billable: int
    revenue: int
    payout: int
    talk_ms: int


@dataclass(frozen=True, slots=True)
class RecentArrivals:
    slot: int  # floor(epoch seconds of received_at / slot_s)
    calls: int


async def recent(
    db: Store, *, since: datetime, until: datetime, slot_s: int
) -> tuple[list[RecentTally], list[RecentArrivals]]:
    """What the dashboard holds for ``[since, until)``: CDR tallies by slot of ``ended_at``
    and arrivals by slot of ``received_at`` (calls received before ``since - SEED_LOOKBACK``
    are not looked at)."""
    slot = f"floor(extract(epoch FROM {{col}}) / {int(slot_s)})::bigint"
    tallies_sql = (
        f"SELECT {slot.format(col='ended_at')} AS slot, buyer_id, campaign_id, "
        "CASE WHEN answered_at IS NULL THEN rule END AS rule, count(*) AS calls, "
        "count(*) FILTER (WHERE answered_at IS NOT NULL) AS answered, "
        "count(*) FILTER (WHERE billable) AS billable, "
        "coalesce(sum(price), 0) AS revenue, coalesce(sum(payout), 0) AS payout, "
        "coalesce(sum(duration_ms) FILTER (WHERE answered_at IS NOT NULL), 0) AS talk_ms "
        "FROM cdrs WHERE received_at >= $1 AND received_at < $3 "
        "AND ended_at >= $2 AND ended_at < $3 GROUP BY 1, 2, 3, 4"
    )
    arrivals_sql = (
        f"SELECT {slot.format(col='received_at')} AS slot, count(*) AS calls FROM cdrs "
        "WHERE received_at >= $1 AND received_at < $2 GROUP BY 1"
    )
    async with db.pool.acquire() as conn:
        tallies = await conn.fetch(tallies_sql, since - SEED_LOOKBACK, since, until)
        arrivals = await conn.fetch(arrivals_sql, since, until)
    return (
        [
            RecentTally(
                slot=int(r["slot"]),
                buyer_id=r["buyer_id"],
                campaign_id=r["campaign_id"],
                rule=r["rule"],
                **_sums(r),
            )
            for r in tallies
        ],
        [RecentArrivals(slot=int(r["slot"]), calls=int(r["calls"])) for r in arrivals],
    )
