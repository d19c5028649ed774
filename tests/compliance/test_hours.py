"""compliance.hours: TCPA windows in the consumer's zones, DST edges, strict states."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compliance.errors import InvalidStateError, InvalidWindow
from compliance.hours import check_hours, parse_window
from compliance.numbers import NumberInfo, info

NY = "+12125551234"  # New York, America/New_York
FL = "+13055551234"  # Miami, America/New_York, 8-20
OK = "+14055551234"  # Oklahoma City, America/Chicago, 8-20
WA = "+12065551234"  # Seattle, America/Los_Angeles, 8-20
AK = "+19075551234"  # Alaska: America/Anchorage and America/Adak
ID = "+12085551234"  # Idaho: America/Boise and America/Los_Angeles


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


# (number, instant, window, allowed, reason)
CASES = [
    # New York in winter, EST = UTC-5
    (NY, utc(2026, 1, 15, 12, 59, 59), "08:00-21:00", False, "outside_window"),
    (NY, utc(2026, 1, 15, 13, 0), "08:00-21:00", True, None),
    (NY, utc(2026, 1, 16, 1, 59, 59), "08:00-21:00", True, None),
    (NY, utc(2026, 1, 16, 2, 0), "08:00-21:00", False, "outside_window"),
    # DST starts 2026-03-08 02:00 EST: 12:00 UTC is 08:00 EDT that day, 07:00 EST the day before
    (NY, utc(2026, 3, 7, 12, 0), "08:00-21:00", False, "outside_window"),
    (NY, utc(2026, 3, 8, 11, 59), "08:00-21:00", False, "outside_window"),
    (NY, utc(2026, 3, 8, 12, 0), "08:00-21:00", True, None),
    (NY, utc(2026, 3, 8, 7, 30), "00:00-24:00", True, None),  # 03:30 EDT, just after the gap
    # DST ends 2026-11-01 02:00 EDT: 12:30 UTC is 08:30 EDT on Oct 31, 07:30 EST on Nov 1
    (NY, utc(2026, 10, 31, 12, 30), "08:00-21:00", True, None),
    (NY, utc(2026, 11, 1, 12, 30), "08:00-21:00", False, "outside_window"),
    (NY, utc(2026, 11, 1, 13, 0), "08:00-21:00", True, None),
    (NY, utc(2026, 11, 2, 1, 59), "08:00-21:00", True, None),  # 20:59 EST
    (NY, utc(2026, 11, 2, 2, 0), "08:00-21:00", False, "outside_window"),
    # Florida, Oklahoma, Washington: 8 p.m. is the end, whatever the campaign says
    (FL, utc(2026, 1, 16, 0, 59), "08:00-21:00", True, None),  # 19:59 EST
    (FL, utc(2026, 1, 16, 1, 0), "08:00-21:00", False, "outside_state_window"),
    (NY, utc(2026, 1, 16, 1, 0), "08:00-21:00", True, None),  # same instant, New York is fine
    (FL, utc(2026, 1, 16, 1, 0), "00:00-24:00", False, "outside_state_window"),
    (OK, utc(2026, 1, 16, 1, 59), "08:00-21:00", True, None),  # 19:59 CST
    (OK, utc(2026, 1, 16, 2, 0), "08:00-21:00", False, "outside_state_window"),
    (WA, utc(2026, 7, 16, 2, 59), "08:00-21:00", True, None),  # 19:59 PDT
    (WA, utc(2026, 7, 16, 3, 0), "08:00-21:00", False, "outside_state_window"),
    (WA, utc(2026, 7, 15, 15, 0), "08:00-21:00", True, None),  # 08:00 PDT
    # Multi-zone area codes: inside the window in every zone
    (AK, utc(2026, 1, 15, 17, 0), "08:00-21:00", False, "outside_window"),  # 08 AKST, 07 HST
    (AK, utc(2026, 1, 15, 18, 0), "08:00-21:00", True, None),  # 09 AKST, 08 HST
    (AK, utc(2026, 1, 16, 5, 59), "08:00-21:00", True, None),  # 20:59 AKST
    (AK, utc(2026, 1, 16, 6, 0), "08:00-21:00", False, "outside_window"),  # 21:00 AKST
    (ID, utc(2026, 1, 15, 15, 0), "08:00-21:00", False, "outside_window"),  # 08 MST, 07 PST
    (ID, utc(2026, 1, 15, 16, 0), "08:00-21:00", True, None),
    (ID, utc(2026, 1, 16, 3, 59), "08:00-21:00", True, None),  # 20:59 MST, 19:59 PST
    (ID, utc(2026, 1, 16, 4, 0), "08:00-21:00", False, "outside_window"),
    # Campaign windows
    (NY, utc(2026, 1, 15, 14, 0), "09:00-17:00", True, None),
    (NY, utc(2026, 1, 15, 13, 30), "09:00-17:00", False, "outside_window"),
    (NY, utc(2026, 1, 16, 4, 0), "22:00-06:00", True, None),  # 23:00, window wraps midnight
    (NY, utc(2026, 1, 15, 12, 0), "22:00-06:00", False, "outside_window"),  # 07:00
    (NY, utc(2026, 1, 15, 9, 0), "00:00-24:00", True, None),  # 04:00, whole day
]


@pytest.mark.parametrize(
    ("number", "now", "window", "allowed", "reason"),
    CASES,
    ids=[f"{c[0][-10:-7]}-{c[1]:%m%dT%H%M%S}-{c[2]}" for c in CASES],
)
def test_hours(number: str, now: datetime, window: str, allowed: bool, reason: str | None) -> None:
    r = check_hours(info(number), now, window)
    assert (r.allowed, r.reason) == (allowed, reason)


def test_unknown_zone_fails_closed() -> None:
    n = NumberInfo(e164="+999", valid=False, region="ZZ", state=None, area_code=None, time_zones=())
    r = check_hours(n, utc(2026, 1, 15, 17, 0))
    assert (r.allowed, r.reason) == (False, "unknown_time_zone")


def test_unknown_zone_name_is_ignored_if_others_remain() -> None:
    n = NumberInfo(
        e164="+12125551234",
        valid=True,
        region="US",
        state="NY",
        area_code="212",
        time_zones=("Mars/Olympus_Mons", "America/New_York"),
    )
    assert check_hours(n, utc(2026, 1, 15, 13, 0)).allowed
    assert not check_hours(n, utc(2026, 1, 15, 12, 0)).allowed


def test_naive_now_is_a_bug() -> None:
    with pytest.raises(InvalidStateError):
        check_hours(info(NY), datetime(2026, 1, 15, 13, 0))


@pytest.mark.parametrize("bad", ["8-21", "08:00", "25:00-26:00", "08:60-21:00", "24:00-08:00", ""])
def test_parse_window_rejects(bad: str) -> None:
    with pytest.raises(InvalidWindow):
        parse_window(bad)


def test_parse_window() -> None:
    assert parse_window("08:00-21:00") == (8 * 3600, 21 * 3600)
    assert parse_window("00:00-24:00") == (0, 24 * 3600)


@given(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 12, 31)))
@settings(max_examples=300)
def test_new_york_matches_local_clock(naive: datetime) -> None:
    now = naive.replace(tzinfo=UTC)
    local = now.astimezone(ZoneInfo("America/New_York"))
    assert check_hours(info(NY), now).allowed == (8 <= local.hour < 21)


@given(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 12, 31)))
@settings(max_examples=200)
def test_multi_zone_is_the_intersection(naive: datetime) -> None:
    now = naive.replace(tzinfo=UTC)
    each = [
        8 <= now.astimezone(ZoneInfo(z)).hour < 21 for z in ("America/Anchorage", "America/Adak")
    ]
    assert check_hours(info(AK), now).allowed == all(each)


def test_every_hour_of_a_dst_day_is_judged_once() -> None:
    # 2026-03-08 has 23 local hours in New York; 13 of them are inside 08-21.
    start = utc(2026, 3, 8, 5, 0)  # local midnight EST
    inside = sum(check_hours(info(NY), start + timedelta(hours=h)).allowed for h in range(23))
    assert inside == 13
