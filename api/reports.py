"""Reports: ``GET /reports``, calls and money by hour or day and by campaign, buyer or trunk.

The numbers are those of the CDRs received in ``[from, to)`` (store/reports.py groups them in
PostgreSQL, in the requested IANA time zone, daylight saving included). JSON by default;
``format=csv`` answers the same rows as ``text/csv`` for a spreadsheet, as a download.

A buyer key sees only the calls its buyer took, with its spend as ``revenue``; ``payout`` (the
seller's share) and ``margin`` (the exchange's) are null in JSON and absent from CSV, as
``/calls`` hides ``payout`` from buyers.

Limits: ``to - from`` at most 32 days by hour and 367 days by day (a month, a year, in any
zone), and at most ``MAX_ROWS`` rows; beyond either the answer is 422 naming ``from``.
"""

from __future__ import annotations

import csv
import functools
import io
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any, Final, cast
from zoneinfo import ZoneInfo, available_timezones

from aiohttp import web

from api.auth import PRINCIPAL, Access
from api.bodies import json_response
from api.context import ApiContext
from api.errors import Invalid
from api.models import Report, ReportRow, ReportTotals
from api.routes import STR, Param, Route
from api.validation import parse_time, query_params
from exchange.money import to_decimal
from store.reports import (
    GROUP_COLUMNS,
    PERIODS,
    GroupBy,
    Period,
    ReportTooLarge,
    Tally,
    UnknownTimeZone,
    report,
)

__all__ = ["CSV_TYPE", "MAX_ROWS", "MAX_SPAN", "ROUTES", "csv_safe", "default_from"]

MAX_ROWS: Final = 50_000
MAX_SPAN: Final[dict[str, timedelta]] = {"hour": timedelta(days=32), "day": timedelta(days=367)}
CSV_TYPE: Final = "text/csv"
FORMATS: Final = ("json", "csv")
_PARAMS: Final = frozenset(
    {"from", "to", "period", "by", "tz", "format", "campaign_id", "buyer_id", "trunk_id"}
)
# Spreadsheets run a cell that starts with one of these as a formula (CSV injection).
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")
_TO_RULE: Final = "a time tz can express, late enough for the default from"
_TZ_RULE: Final = "an IANA time zone name (e.g. America/New_York)"
_FROM_RULE: Final = (
    "before to, at most 32 days before it by hour and 367 by day; at most 50000 rows"
)


@functools.cache
def _zones() -> frozenset[str]:
    # "localtime" is whatever this host is set to, "Factory" a placeholder: neither is a zone
    # a report could mean.
    return frozenset(available_timezones() - {"localtime", "Factory", "posixrules"})


def _zone(name: str) -> ZoneInfo:
    if name not in _zones():
        raise Invalid("tz", f"not an IANA time zone name: {name[:64]!r}")
    return ZoneInfo(name)


def default_from(until: datetime, period: str, zone: tzinfo) -> datetime:
    """The start of the default range ending at ``until``: the last 24 hours by hour and
    the last 7 days by day, each from the start of a period in ``zone``."""
    local = until.astimezone(zone)
    if period == "hour":
        return local.replace(minute=0, second=0, microsecond=0).astimezone(UTC) - timedelta(
            hours=23
        )
    day = local.date() - timedelta(days=6)
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def csv_safe(text: str) -> str:
    """A CSV cell a spreadsheet shows as text: a leading formula character is quoted away."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _metrics(t: Tally, admin: bool) -> dict[str, Any]:
    """The ``ReportTotals`` fields of a tally; money as exact Decimals."""
    return {
        "calls": t.calls,
        "answered": t.answered,
        "billable": t.billable,
        "revenue": to_decimal(t.revenue),
        "payout": to_decimal(t.payout) if admin else None,
        "margin": to_decimal(t.revenue - t.payout) if admin else None,
        "answer_rate": t.answer_rate,
        "avg_duration_s": t.avg_duration_s(3),
    }


def _range(
    q: dict[str, str], period: str, zone: ZoneInfo, now: datetime
) -> tuple[datetime, datetime]:
    """``[from, to)`` in ``zone``: given, or by default (``default_from``); 422 when out of
    bounds. Times near year 1 or 9999 may not exist in every zone: 422 too."""
    until = parse_time("to", q["to"]) if "to" in q else now
    try:
        until = until.astimezone(zone)
    except OverflowError:
        raise Invalid("to", "out of range in this time zone") from None
    if "from" in q:
        try:
            since = parse_time("from", q["from"]).astimezone(zone)
        except OverflowError:
            raise Invalid("from", "out of range in this time zone") from None
    else:
        try:
            since = default_from(until, period, zone).astimezone(zone)
        except OverflowError:
            raise Invalid("to", "too early: the default range would start before year 1") from None
    if since >= until:
        raise Invalid("from", "must be before to")
    if until - since > MAX_SPAN[period]:
        days = MAX_SPAN[period].days
        raise Invalid("from", f"at most {days} days before to when period={period}")
    return since, until


async def get_report(ctx: ApiContext, request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    q = query_params(request, _PARAMS)
    period = q.get("period", "day")
    if period not in PERIODS:
        raise Invalid("period", f"expected one of {list(PERIODS)}, got {period!r}")
    by = q.get("by", "campaign")
    if by not in GROUP_COLUMNS:
        raise Invalid("by", f"expected one of {list(GROUP_COLUMNS)}, got {by!r}")
    fmt = q.get("format", "json")
    if fmt not in FORMATS:
        raise Invalid("format", f"expected one of {list(FORMATS)}, got {fmt!r}")
    tz = q.get("tz", "UTC")
    zone = _zone(tz)
    since, until = _range(q, period, zone, ctx.wall())
    buyer_id = q.get("buyer_id")
    rows = []
    if principal.admin or buyer_id in (None, principal.buyer_id):
        try:
            rows = await report(
                ctx.store, period=cast(Period, period), by=cast(GroupBy, by), zone=tz,
                since=since, until=until, campaign_id=q.get("campaign_id"),
                buyer_id=buyer_id if principal.admin else principal.buyer_id,
                trunk_id=q.get("trunk_id"), max_rows=MAX_ROWS,
            )  # fmt: skip
        except UnknownTimeZone as exc:
            raise Invalid("tz", str(exc)) from exc
        except ReportTooLarge as exc:
            raise Invalid("from", f"{exc}: narrow from and to, or filter") from exc
    admin = principal.admin
    total = Tally()
    out: list[ReportRow] = []
    for r in rows:
        s = Tally(r.calls, r.answered, r.billable, r.revenue, r.payout, r.talk_ms)
        total.add(s)
        out.append(ReportRow(start=r.start.astimezone(zone), key=r.key, **_metrics(s, admin)))
    body = Report(
        period=cast(Any, period), by=cast(Any, by), tz=tz, from_=since,
        to=until, rows=out, totals=ReportTotals(**_metrics(total, admin)),
    )  # fmt: skip
    if fmt == "csv":
        return _csv(body, admin)
    return json_response(body)


def _csv(body: Report, admin: bool) -> web.Response:
    """The rows as RFC 4180 CSV (CRLF lines, a header line), money as decimal strings."""
    money = ["revenue", "payout", "margin"] if admin else ["revenue"]
    columns = ["start", GROUP_COLUMNS[body.by], "calls", "answered", "billable", *money,
               "answer_rate", "avg_duration_s"]  # fmt: skip
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(columns)
    for row in body.rows:
        cells: list[object] = [row.start.isoformat(), csv_safe(row.key or ""), row.calls,
                               row.answered, row.billable, row.revenue]  # fmt: skip
        if admin:
            cells += [row.payout, row.margin]
        cells += [row.answer_rate, "" if row.avg_duration_s is None else row.avg_duration_s]
        writer.writerow(cells)
    stamp = "%Y%m%dT%H%M"
    name = (
        f"dce-report-{body.by}-{body.period}-{body.from_.strftime(stamp)}-"
        f"{body.to.strftime(stamp)}.csv"
    )
    return web.Response(
        text=buf.getvalue(),
        content_type=CSV_TYPE,
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/reports", "get_report", get_report, Access.BUYER,
          "Calls and money by hour or day and by campaign, buyer or trunk (JSON or CSV; a "
          "buyer key sees only its calls, without payout and margin)", None, Report,
          query=(
              Param("from", {"type": "string", "format": "date-time"},
                    "calls received at or after (ISO 8601; naive is UTC); default: the start "
                    "of the hour 23 hours before to (by hour), of the day 6 days before to "
                    "(by day)", checked=_FROM_RULE),
              Param("to", {"type": "string", "format": "date-time"},
                    "calls received before; default: now", checked=_TO_RULE),
              Param("period", {"enum": list(PERIODS)}, "bucket size; default day"),
              Param("by", {"enum": list(GROUP_COLUMNS)}, "group by; default campaign"),
              Param("tz", STR, "IANA time zone the periods are cut in; default UTC",
                    checked=_TZ_RULE),
              Param("format", {"enum": list(FORMATS)},
                    "json (default) or csv: the rows as a text/csv download"),
              Param("campaign_id", STR, "only this campaign's calls"),
              Param("buyer_id", STR, "only this buyer's calls"),
              Param("trunk_id", STR, "only this seller trunk's calls"),
          ), errors=(422,), alt_types=(CSV_TYPE,)),
)  # fmt: skip
