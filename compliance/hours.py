"""TCPA calling hours, judged in the consumer's local time (domain.md §4.1).

47 CFR § 64.1200(c)(1) forbids telephone solicitation "before the hour of 8 a.m. or after 9 p.m.
(local time at the called party's location)". The mini-TCPAs of Florida (FTSA, Fla. Stat.
§ 501.059(8)(a)), Oklahoma (OTSA, 2022) and Washington (RCW 80.36.390 as amended by HB 1497)
narrow that to 8 a.m.-8 p.m. Where the consumer is comes from the number alone: the state from
its area code (the presumption the Oklahoma statute writes down) and its IANA zones from
libphonenumber.

Theory of operation:

- A window is ``"HH:MM-HH:MM"`` (``compliance.policy.TimeRange``), half-open ``[start, end)`` in
  local wall time: a call at 20:59:59 is inside ``08:00-21:00``, one at 21:00:00 is not. An end
  before the start wraps past midnight; ``00:00-24:00`` is the whole day.
- The campaign's window and the state's statutory window must both hold.
- An area code that spans several zones (Idaho's 208, Alaska's 907, toll-free 8XX) is judged by
  the strictest reading: the call must be inside the window in *every* zone.
- A number with no known zone fails closed: we cannot show the call was inside hours.
- DST is zoneinfo's job: ``now`` is an aware UTC instant converted per zone, so the skipped and
  repeated hours of a transition day fall where the tz database puts them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from compliance.errors import InvalidStateError, InvalidWindow
from compliance.numbers import NumberInfo

__all__ = [
    "DEFAULT_WINDOW",
    "INSIDE",
    "OUTSIDE",
    "OUTSIDE_STATE",
    "STATE_WINDOWS",
    "UNKNOWN_ZONE",
    "HoursResult",
    "check_hours",
    "parse_window",
]

DEFAULT_WINDOW: Final = "08:00-21:00"
# Seconds since local midnight, [start, end). Source: domain.md §4.1 (FTSA, OTSA, WA HB 1497).
STATE_WINDOWS: Final[Mapping[str, tuple[int, int]]] = {
    "FL": (8 * 3600, 20 * 3600),
    "OK": (8 * 3600, 20 * 3600),
    "WA": (8 * 3600, 20 * 3600),
}
_DAY: Final = 24 * 3600


class HoursResult(msgspec.Struct, frozen=True, gc=False):
    """Outcome of the hours rule; only the four instances below exist, so judging allocates
    nothing."""

    allowed: bool
    reason: str | None


INSIDE: Final = HoursResult(True, None)
OUTSIDE: Final = HoursResult(False, "outside_window")
OUTSIDE_STATE: Final = HoursResult(False, "outside_state_window")
UNKNOWN_ZONE: Final = HoursResult(False, "unknown_time_zone")


@functools.lru_cache(maxsize=256)
def parse_window(spec: str) -> tuple[int, int]:
    """``"08:00-21:00"`` -> ``(28800, 75600)`` seconds since local midnight.

    Raises:
        InvalidWindow: not ``HH:MM-HH:MM`` with hours 00-24 and minutes 00-59.
    """
    try:
        a, b = spec.split("-")
        start = _clock_seconds(a)
        end = _clock_seconds(b)
    except ValueError as exc:
        raise InvalidWindow(f"calling-hours window {spec!r} is not HH:MM-HH:MM") from exc
    if start >= _DAY:
        raise InvalidWindow(f"calling-hours window {spec!r} starts at 24:00")
    return start, end


def _clock_seconds(hhmm: str) -> int:
    h, m = hhmm.strip().split(":")
    if len(h) != 2 or len(m) != 2 or not (h.isdigit() and m.isdigit()):
        raise ValueError(hhmm)
    hours, minutes = int(h), int(m)
    if hours > 24 or minutes > 59 or (hours == 24 and minutes):
        raise ValueError(hhmm)
    return hours * 3600 + minutes * 60


def _inside(t: int, window: tuple[int, int]) -> bool:
    start, end = window
    if start <= end:
        return start <= t < end
    return t >= start or t < end  # wraps past midnight, e.g. 22:00-06:00


@functools.lru_cache(maxsize=1024)
def _zones(names: tuple[str, ...]) -> tuple[ZoneInfo, ...]:
    out: list[ZoneInfo] = []
    for name in names:
        try:
            out.append(ZoneInfo(name))
        except (ZoneInfoNotFoundError, ValueError):
            # A zone libphonenumber knows but this tzdata does not: judged by the others; if it
            # was the only one the number has no usable zone and fails closed.
            continue
    return tuple(out)


# Zone set -> (UTC minute, the distinct UTC offsets in seconds during that minute). Offsets
# change only at transitions, which tzdata puts on whole minutes, so one conversion per zone
# per minute serves every call; a toll-free caller's 42 zones collapse to ~10 offsets. Bounded:
# NANP numbers use a few dozen distinct zone sets.
_OFFSETS: dict[tuple[str, ...], tuple[int, tuple[int, ...]]] = {}
_OFFSETS_MAX: Final = 4096


def _offsets(names: tuple[str, ...], now: datetime, minute: int) -> tuple[int, ...]:
    hit = _OFFSETS.get(names)
    if hit is not None and hit[0] == minute:
        return hit[1]
    offs: set[int] = set()
    for tz in _zones(names):
        off = now.astimezone(tz).utcoffset()
        if off is not None:
            offs.add(int(off.total_seconds()))
    result = tuple(sorted(offs))
    if len(_OFFSETS) >= _OFFSETS_MAX:
        _OFFSETS.clear()
    _OFFSETS[names] = (minute, result)
    return result


def check_hours(number: NumberInfo, now: datetime, window: str = DEFAULT_WINDOW) -> HoursResult:
    """Is ``now`` inside the calling window at the consumer's location, in every zone it may be?

    Args:
        number: the consumer's number (the caller, for calls the exchange receives).
        now: an aware instant (UTC).
        window: the campaign's ``hours_window``.

    Returns:
        ``INSIDE``, or a failure naming why (``outside_window``, ``outside_state_window``,
        ``unknown_time_zone``).

    Raises:
        InvalidWindow: ``window`` is malformed (a configuration error, not a call outcome).
        InvalidStateError: ``now`` is naive; ``astimezone`` would read the host's zone.
    """
    if now.tzinfo is None:
        raise InvalidStateError("check_hours needs an aware datetime")
    campaign = parse_window(window)
    if not number.time_zones:
        return UNKNOWN_ZONE
    epoch = int(now.timestamp())
    offsets = _offsets(number.time_zones, now, epoch // 60)
    if not offsets:
        return UNKNOWN_ZONE
    state = STATE_WINDOWS.get(number.state) if number.state is not None else None
    for off in offsets:
        t = (epoch + off) % _DAY  # local seconds since midnight in this zone
        if not _inside(t, campaign):
            return OUTSIDE
        if state is not None and not _inside(t, state):
            return OUTSIDE_STATE
    return INSIDE
