"""GET /api/v1/reports: JSON and CSV, time zones, a buyer's own rows without payout and margin,
the defaults and limits of the range, and the 422s."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest

from api.routes import API_PREFIX
from store.cdr import Disposition
from tests.api.conftest import ADMIN_TOKEN, KEY_B1, Api, make_cdr

V = API_PREFIX
# Around New York's fall-back night: 01:00-02:00 local happens at 05:00Z and again at 06:00Z.
NIGHT = datetime(2026, 11, 1, 5, 10, tzinfo=UTC)


def _cdrs() -> list[Any]:
    """Seven calls on 2026-11-01 (UTC): b1 takes four, b2 two, one finds no buyer."""
    out = [
        make_cdr(1, at=NIGHT, buyer_id="b1", campaign_id="c1", trunk_id="t1"),
        make_cdr(2, at=NIGHT + timedelta(minutes=20), buyer_id="b1", campaign_id="c1"),
        make_cdr(3, at=NIGHT + timedelta(hours=1), buyer_id="b1", campaign_id="c2",
                 trunk_id="t2"),
        make_cdr(4, at=NIGHT + timedelta(hours=1), buyer_id="b2", campaign_id="c1"),
        make_cdr(5, at=NIGHT + timedelta(hours=1, minutes=5), buyer_id="b2", campaign_id="c1"),
        make_cdr(6, at=NIGHT + timedelta(hours=2), buyer_id=None, campaign_id="c1",
                 disposition=Disposition.NO_BUYER),
        make_cdr(7, at=NIGHT + timedelta(hours=3), buyer_id="b1", campaign_id="c2"),
    ]  # fmt: skip
    # b1's call 2 was answered but too short to bill; call 6 never connected.
    out[1].billable, out[1].price, out[1].payout, out[1].duration_ms = False, None, None, 5_000
    out[5].answered_at, out[5].duration_ms, out[5].billable = None, 0, False
    out[5].price = out[5].payout = None
    out[5].rule = "no_eligible_buyer"
    return out


@pytest.fixture
async def reports(api: Api) -> Api:
    await api.insert_cdrs(_cdrs())
    return api


def _q(**params: str) -> str:
    return f"{V}/reports?" + urlencode(params)


async def _csv(api: Api, path: str, token: str = ADMIN_TOKEN) -> list[list[str]]:
    async with api.client.get(path, headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200, await resp.text()
        return list(csv.reader(io.StringIO((await resp.read()).decode())))


RANGE = {"from": "2026-11-01T04:00:00Z", "to": "2026-11-02T05:00:00Z"}  # Nov 1 in New York


async def test_hours_in_new_york_across_the_fall_back_night(reports: Api) -> None:
    r = await reports.call("GET", _q(period="hour", by="campaign", tz="America/New_York",
                                     **RANGE))  # fmt: skip
    assert r.status == 200, r.body
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.body
    assert (body["period"], body["by"], body["tz"]) == ("hour", "campaign", "America/New_York")
    assert body["from"] == "2026-11-01T00:00:00-04:00"
    assert body["to"] == "2026-11-02T00:00:00-05:00"
    got = [(row["start"], row["key"], row["calls"], row["answered"]) for row in body["rows"]]
    assert got == [
        ("2026-11-01T01:00:00-04:00", "c1", 2, 2),  # the first 01:00 hour
        ("2026-11-01T01:00:00-05:00", "c1", 2, 2),  # the second one
        ("2026-11-01T01:00:00-05:00", "c2", 1, 1),
        ("2026-11-01T02:00:00-05:00", "c1", 1, 0),
        ("2026-11-01T03:00:00-05:00", "c2", 1, 1),
    ]


async def test_money_rates_and_totals_for_the_admin(reports: Api) -> None:
    r = await reports.call("GET", _q(by="buyer", tz="America/New_York", **RANGE))
    assert r.status == 200, r.body
    rows = {row["key"]: row for row in r.body["rows"]}
    assert [row["start"] for row in r.body["rows"]] == ["2026-11-01T00:00:00-04:00"] * 3
    b1 = rows["b1"]
    # make_cdr: price 7.25, payout 5.075, 60 s; call 2 answered for 5 s, not billable.
    assert (b1["calls"], b1["answered"], b1["billable"]) == (4, 4, 3)
    assert (b1["revenue"], b1["payout"], b1["margin"]) == ("21.750000", "15.225000", "6.525000")
    assert b1["answer_rate"] == 1.0
    assert b1["avg_duration_s"] == 46.25  # (60 + 5 + 60 + 60) / 4
    nobody = rows[None]
    assert (nobody["calls"], nobody["answered"], nobody["revenue"]) == (1, 0, "0.000000")
    assert nobody["answer_rate"] == 0.0 and nobody["avg_duration_s"] is None
    totals = r.body["totals"]
    assert (totals["calls"], totals["answered"], totals["billable"]) == (7, 6, 5)
    assert (totals["revenue"], totals["payout"], totals["margin"]) == (
        "36.250000", "25.375000", "10.875000")  # fmt: skip
    assert totals["answer_rate"] == round(6 / 7, 4)


async def test_a_buyer_sees_its_own_rows_without_payout_or_margin(reports: Api) -> None:
    r = await reports.call("GET", _q(by="campaign", tz="America/New_York", **RANGE), who="own")
    assert r.status == 200, r.body
    assert [(row["key"], row["calls"], row["revenue"]) for row in r.body["rows"]] == [
        ("c1", 2, "7.250000"),
        ("c2", 2, "14.500000"),
    ]
    for row in [*r.body["rows"], r.body["totals"]]:
        assert row["payout"] is None and row["margin"] is None
    assert r.body["totals"]["calls"] == 4
    # Another buyer's id is no way in: nothing, as with /calls.
    other = await reports.call("GET", _q(buyer_id="b2", **RANGE), who="own")
    assert other.status == 200 and other.body["rows"] == [] and other.body["totals"]["calls"] == 0
    # By buyer, only its own row.
    mine = await reports.call("GET", _q(by="buyer", **RANGE), who="own")
    assert [row["key"] for row in mine.body["rows"]] == ["b1"]


async def test_csv_for_the_admin_and_for_a_buyer(reports: Api) -> None:
    path = _q(by="trunk", period="day", tz="America/New_York", format="csv", **RANGE)
    async with reports.client.get(path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
                                  ) as resp:  # fmt: skip
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
        assert resp.headers["Content-Disposition"] == (
            'attachment; filename="dce-report-trunk-day-20261101T0000-20261102T0000.csv"'
        )
        raw = await resp.read()
    assert raw.endswith(b"\r\n")
    table = list(csv.reader(io.StringIO(raw.decode())))
    assert table == [
        ["start", "trunk_id", "calls", "answered", "billable", "revenue", "payout", "margin",
         "answer_rate", "avg_duration_s"],
        ["2026-11-01T00:00:00-04:00", "t1", "6", "5", "4", "29.000000", "20.300000",
         "8.700000", "0.8333", "49.0"],
        ["2026-11-01T00:00:00-04:00", "t2", "1", "1", "1", "7.250000", "5.075000", "2.175000",
         "1.0", "60.0"],
    ]  # fmt: skip
    table = await _csv(reports, path, KEY_B1)
    assert table[0] == ["start", "trunk_id", "calls", "answered", "billable", "revenue",
                        "answer_rate", "avg_duration_s"]  # fmt: skip
    assert [row[1:6] for row in table[1:]] == [["t1", "3", "3", "2", "14.500000"],
                                               ["t2", "1", "1", "1", "7.250000"]]  # fmt: skip


async def test_a_cell_a_spreadsheet_would_run_is_quoted(api: Api) -> None:
    at = datetime(2026, 11, 1, 12, tzinfo=UTC)
    await api.insert_cdrs([make_cdr(1, at=at, trunk_id="-2+3")])
    table = await _csv(
        api,
        _q(
            by="trunk",
            format="csv",
            **{"from": "2026-11-01T00:00:00Z", "to": "2026-11-02T00:00:00Z"},
        ),
    )
    assert table[1][1] == "'-2+3"


async def test_the_default_range_ends_now_at_period_starts_in_the_zone(api: Api) -> None:
    # The fixture's clock: 2026-11-23 15:00 UTC, 10:00 in New York.
    r = await api.call("GET", _q(tz="America/New_York"))
    assert r.status == 200, r.body
    assert (r.body["from"], r.body["to"]) == ("2026-11-17T00:00:00-05:00",
                                              "2026-11-23T10:00:00-05:00")  # fmt: skip
    r = await api.call("GET", _q(period="hour"))
    assert (r.body["from"], r.body["to"]) == ("2026-11-22T16:00:00Z", "2026-11-23T15:00:00Z")
    assert r.body["rows"] == [] and r.body["totals"]["answer_rate"] is None


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"tz": "Mars/Olympus_Mons"}, "tz"),
        ({"tz": "localtime"}, "tz"),
        ({"period": "week"}, "period"),
        ({"by": "endpoint"}, "by"),
        ({"format": "xlsx"}, "format"),
        ({"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"}, "from"),
        ({"from": "2026-11-01T00:00:00Z", "to": "2026-11-01T00:00:00Z"}, "from"),
        ({"period": "hour", "from": "2026-09-01T00:00:00Z", "to": "2026-10-04T00:00:00Z"},
         "from"),
        ({"from": "2025-01-01T00:00:00Z", "to": "2026-01-04T00:00:00Z"}, "from"),
        ({"from": "yesterday"}, "from"),
        ({"to": "0001-01-02T00:00:00Z"}, "to"),
        ({"limit": "10"}, "limit"),
    ],
    ids=["zone", "localtime", "period", "by", "format", "reversed", "empty", "hours-too-long",
         "days-too-long", "not-a-time", "before-year-1", "unknown-param"],
)  # fmt: skip
async def test_bad_parameters_are_422_naming_them(
    api: Api, params: dict[str, str], field: str
) -> None:
    r = await api.call("GET", _q(**params))
    assert r.status == 422, r.body
    assert r.body["detail"]["field"] == field


async def test_a_month_by_hour_and_a_year_by_day_fit_in_any_zone(api: Api) -> None:
    # October in Paris has 31 days and 1 hour; 2028 has 366 days.
    r = await api.call("GET", _q(period="hour", tz="Europe/Paris",
                                 **{"from": "2026-10-01T00:00:00+02:00",
                                    "to": "2026-11-01T00:00:00+01:00"}))  # fmt: skip
    assert r.status == 200, r.body
    r = await api.call("GET", _q(**{"from": "2028-01-01T00:00:00Z", "to": "2029-01-01T00:00:00Z"}))
    assert r.status == 200, r.body
