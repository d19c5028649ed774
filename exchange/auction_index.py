"""The auction's index: an exchange config compiled once, for the per-call hot path.

Pure logic: no I/O and no clock reads. :mod:`exchange.auction` runs one auction on the index and
its docstring holds the whole theory of operation; this module is its first half.

Theory of operation
-------------------
``compile_index(config)`` turns an :class:`~exchange.models.ExchangeConfig` into an
:class:`AuctionIndex` once per config change (the engine's ``update``; the admin API also calls
it to validate a config before storing it), so that a call only looks things up:

* **Routes.** Called number -> :class:`NumberRoute`: the number's campaign (None when no
  campaign has it), the profiles that bid on it (the campaign's, those that name the number,
  those that bid on every call), and the fallback buyers. A number nobody names takes the
  default route (the profiles that bid on every call).
* **Profiles** (:class:`CompiledProfile`): money as integer micro-dollars with its decimal text;
  hours as one bitmask of minutes per weekday in the profile's time zone (a range such as
  ``22:00-02:00`` runs past midnight into the next day); states and area codes as frozensets;
  caps as a :class:`~exchange.caps.CapSpec`; the static exclusion reason, if any
  (``buyer_inactive``, ``profile_inactive``, ``no_endpoint``: no active endpoint); the survival
  ``S(min_duration)`` in parts per million and ``EV = bid * S``; the 64-bit tie-break key
  ``hash64("<buyer>/<profile>")``. A route lists static bids by EV descending (config order
  among equals) and then the RTB profiles, whose EV is only known per call.
* **Fallback buyers** (:class:`FallbackBuyer`): active buyers with no bid profile, with their
  active endpoints in config order and a cap spec for endpoint ``max_concurrent``.

The index is immutable once built, apart from two bounded memo tables the auction fills: the
survival for RTB minimum durations, and the call's local time per (zone, minute)
(:class:`LocalTime`: weekday, minute of the day and the cap buckets).

**Endpoints that are down** (their OPTIONS probes fail, dce/endpoint_health.py) are taken out
by :func:`without_endpoints`, which derives a new index from the compiled one whenever the set
of down URIs changes: each affected profile loses those endpoints (in its targets and in its
cap spec, so an endpoint limit counts only endpoints that can take the call), and a profile
left with none gets the static reason ``endpoints_down``; so does a fallback buyer
(``NumberRoute.fallback_down``). The auction itself never looks at health: a down endpoint
costs a call nothing, and a buyer that cannot take the call neither wins nor sets a price.

A config that cannot be compiled raises :class:`~exchange.errors.ConfigInvalid` naming the
entry: duplicate ids, a number claimed by two campaigns, an unknown campaign or time zone,
hours that do not parse, an RTB URL that is not http(s).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from exchange.caps import Buckets, CapSpec, make_spec
from exchange.errors import ConfigInvalid
from exchange.models import BidProfile, Buyer, Campaign, ExchangeConfig, Weekday
from exchange.money import to_decimal, to_micros

DEFAULT_SURVIVAL_MEAN_S: Final = 180
PPM: Final = 1_000_000
_WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MINUTE: Final = timedelta(minutes=1)

# Exclusion reasons known when compiling (exchange.auction decides the per-call ones, the caps
# view adds its own, exchange.caps).
PROFILE_INACTIVE: Final = "profile_inactive"
BUYER_INACTIVE: Final = "buyer_inactive"
NO_ENDPOINT: Final = "no_endpoint"
# Every active endpoint of the buyer fails its health probes (``without_endpoints``).
ENDPOINTS_DOWN: Final = "endpoints_down"
# Profile id in the cap key of a buyer without profiles (ids cannot contain "*").
FALLBACK_PROFILE: Final = "*"


def hash64(text: str) -> int:
    """A stable 64-bit hash of ``text`` (BLAKE2b): the per-profile tie-break key."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def survival_ppm(min_duration_s: int, mean_s: int) -> int:
    """``S(d) = exp(-d/τ)`` in parts per million, at least 1 (so that prices stay finite)."""
    s = (Decimal(-min_duration_s) / Decimal(mean_s)).exp() * PPM
    return max(1, int(s.to_integral_value()))


@dataclass(frozen=True, slots=True)
class CompiledEndpoint:
    id: str
    uri: str


@dataclass(frozen=True, slots=True)
class CompiledCampaign:
    id: str
    reserve: int
    reserve_text: str
    first_price: bool
    expose_caller: bool
    active: bool


@dataclass(frozen=True, slots=True, eq=False)
class CompiledProfile:
    """A bid profile ready for the hot path. Also the bidder object for static bids (an RTB
    profile bids through an ``exchange.auction.RtbOffer``)."""

    key: str
    buyer_id: str
    profile_id: str
    bid: int
    bid_text: str
    min_duration: int
    survival: int
    ev: int
    tie: int
    static_reason: str | None
    states: frozenset[str] | None
    area_codes: frozenset[str] | None
    hours: tuple[int, ...] | None  # 7 bitmasks of minutes, Monday first
    tz: ZoneInfo
    tz_key: str
    cap: CapSpec
    rtb_url: str | None
    rtb: bool
    endpoints: tuple[CompiledEndpoint, ...]

    @property
    def profile(self) -> CompiledProfile:
        return self


@dataclass(frozen=True, slots=True)
class FallbackBuyer:
    """An active buyer without bid profiles: its endpoints at price 0, after the bidders."""

    buyer_id: str
    cap: CapSpec
    endpoints: tuple[CompiledEndpoint, ...]


@dataclass(frozen=True, slots=True)
class NumberRoute:
    campaign: CompiledCampaign | None
    profiles: tuple[CompiledProfile, ...]  # static bids by EV descending, then RTB profiles
    fallback: tuple[FallbackBuyer, ...]
    duplicate_rules: bool = False  # some profile has one: the caller's hash is needed
    # Cap keys of fallback buyers left out because every endpoint is down (for the record).
    fallback_down: tuple[str, ...] = ()


def _route(
    campaign: CompiledCampaign | None,
    profiles: Sequence[CompiledProfile],
    fallback: tuple[FallbackBuyer, ...],
) -> NumberRoute:
    ps = _sorted(profiles)
    return NumberRoute(campaign, ps, fallback, any(p.cap.dup_window_ms >= 0 for p in ps))


@dataclass(frozen=True, slots=True)
class LocalTime:
    """The call's wall time in one time zone, as eligibility and caps need it."""

    weekday: int  # Monday = 0
    minute: int  # minute of the day
    buckets: Buckets


@dataclass(slots=True, eq=False)
class AuctionIndex:
    """A compiled config. Immutable once built, apart from two memo tables."""

    routes: dict[str, NumberRoute]
    default_route: NumberRoute
    profiles: dict[str, CompiledProfile]
    campaigns: dict[str, CompiledCampaign]
    payout_shares: dict[str, Decimal]  # trunk id -> percent
    survival_mean_s: int
    ranking: str
    _survival_memo: dict[int, int] = field(default_factory=dict)
    _local_memo: dict[tuple[str, int], LocalTime] = field(default_factory=dict)

    def route_for(self, called: str) -> NumberRoute:
        """The campaign and profiles for a called number (the default route if unknown)."""
        return self.routes.get(called, self.default_route)

    def survival(self, min_duration_s: int) -> int:
        s = self._survival_memo.get(min_duration_s)
        if s is None:
            s = self._survival_memo[min_duration_s] = survival_ppm(
                min_duration_s, self.survival_mean_s
            )
        return s

    def local_time(self, tz: ZoneInfo, now: datetime, minute: int | None = None) -> LocalTime:
        """``now`` in ``tz``; memoised per (zone, epoch minute) since calls share minutes.

        ``minute`` is ``now`` in whole minutes since the epoch, when the caller has it.
        """
        if minute is None:
            minute = (now - _EPOCH) // _MINUTE
        k = (tz.key, minute)
        lt = self._local_memo.get(k)
        if lt is None:
            if len(self._local_memo) > 4096:
                self._local_memo.clear()
            d = now.astimezone(tz)
            day = (d.year * 100 + d.month) * 100 + d.day
            lt = self._local_memo[k] = LocalTime(
                d.weekday(),
                d.hour * 60 + d.minute,
                Buckets(hour=day * 100 + d.hour, day=day, month=d.year * 100 + d.month),
            )
        return lt


# ----------------------------------------------------------------------------------------------
# Compiling a config


def _parse_hours(
    hours: Mapping[Weekday, Sequence[str]] | None, where: str
) -> tuple[int, ...] | None:
    """Per-weekday minute bitmasks. ``"22:00-02:00"`` runs past midnight into the next day."""
    if hours is None:
        return None
    masks = [0] * 7
    for day, ranges in hours.items():
        if day not in _WEEKDAYS:
            raise ConfigInvalid(f"{where}.{day}", "expected mon, tue, wed, thu, fri, sat or sun")
        wd = _WEEKDAYS.index(day)
        for i, text in enumerate(ranges):
            try:
                a, b = text.split("-")
                start = int(a[:2]) * 60 + int(a[3:5])
                end = int(b[:2]) * 60 + int(b[3:5])
            except (ValueError, IndexError) as exc:
                raise ConfigInvalid(
                    f"{where}.{day}[{i}]", f"expected HH:MM-HH:MM, got {text!r}"
                ) from exc
            if not (0 <= start < 1440 and 0 <= end <= 1440) or start == end:
                raise ConfigInvalid(f"{where}.{day}[{i}]", f"not a time range: {text!r}")
            if end > start:
                masks[wd] |= ((1 << (end - start)) - 1) << start
            else:  # overnight: to midnight, then the next weekday from 00:00
                masks[wd] |= ((1 << (1440 - start)) - 1) << start
                masks[(wd + 1) % 7] |= (1 << end) - 1
    return tuple(masks)


def _zone(name: str, where: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigInvalid(where, f"unknown time zone {name!r}") from exc


def _endpoints(buyer: Buyer) -> tuple[CompiledEndpoint, ...]:
    return tuple(CompiledEndpoint(e.id, e.uri) for e in buyer.endpoints if e.active)


def _endpoint_limits(buyer: Buyer) -> tuple[tuple[str, int], ...]:
    return tuple((e.id, e.max_concurrent) for e in buyer.endpoints if e.active)


def _micros_or_none(v: Decimal | None) -> int:
    return -1 if v is None else to_micros(v)


def _compile_profile(
    buyer: Buyer, p: BidProfile, where: str, mean_s: int, campaigns: Mapping[str, Campaign]
) -> CompiledProfile:
    if p.campaign_id is not None and p.campaign_id not in campaigns:
        raise ConfigInvalid(f"{where}.campaign_id", f"no campaign {p.campaign_id!r}")
    if p.rtb_url is not None and not p.rtb_url.startswith(("http://", "https://")):
        raise ConfigInvalid(f"{where}.rtb_url", f"expected an http(s) URL, got {p.rtb_url!r}")
    tz = _zone(p.timezone, f"{where}.timezone")
    hours = _parse_hours(p.hours, f"{where}.hours")
    eps = _endpoints(buyer)
    reason: str | None = None
    if not buyer.active:
        reason = BUYER_INACTIVE
    elif not p.active:
        reason = PROFILE_INACTIVE
    elif not eps:
        reason = NO_ENDPOINT
    c = p.caps
    spec = make_spec(
        buyer.id,
        p.id,
        concurrent=-1 if c.concurrent is None else c.concurrent,
        hourly=-1 if c.hourly is None else c.hourly,
        daily=-1 if c.daily is None else c.daily,
        monthly=-1 if c.monthly is None else c.monthly,
        budget_daily=_micros_or_none(c.budget_daily),
        budget_monthly=_micros_or_none(c.budget_monthly),
        dup_window_ms=-1 if p.duplicate is None else p.duplicate.window_days * 86_400_000,
        dup_on_billable=p.duplicate is not None and p.duplicate.count_on == "billable",
        endpoints=_endpoint_limits(buyer),
    )
    bid = to_micros(p.bid)
    surv = survival_ppm(p.min_duration, mean_s)
    return CompiledProfile(
        key=spec.key,
        buyer_id=buyer.id,
        profile_id=p.id,
        bid=bid,
        bid_text=str(to_decimal(bid)),
        min_duration=p.min_duration,
        survival=surv,
        ev=bid * surv,
        tie=hash64(spec.key),
        static_reason=reason,
        states=frozenset(p.states) if p.states else None,
        area_codes=frozenset(p.area_codes) if p.area_codes else None,
        hours=hours,
        tz=tz,
        tz_key=tz.key,
        cap=spec,
        rtb_url=p.rtb_url,
        rtb=p.rtb_url is not None,
        endpoints=eps,
    )


def _unique(ids: Sequence[str], where: str, what: str) -> None:
    seen: set[str] = set()
    for i, x in enumerate(ids):
        if x in seen:
            raise ConfigInvalid(f"{where}[{i}].id", f"duplicate {what} id {x!r}")
        seen.add(x)


def _sorted(profiles: Sequence[CompiledProfile]) -> tuple[CompiledProfile, ...]:
    # Static bids by EV descending (stable: config order among equals); RTB profiles last, as
    # their EV is only known per call.
    static = sorted((p for p in profiles if p.rtb_url is None), key=lambda p: -p.ev)
    return (*static, *(p for p in profiles if p.rtb_url is not None))


def compile_index(
    config: ExchangeConfig, *, survival_mean_s: int = DEFAULT_SURVIVAL_MEAN_S
) -> AuctionIndex:
    """Compile a config for the hot path.

    Raises:
        ConfigInvalid: duplicate ids, a number claimed by two campaigns, an unknown campaign or
            time zone, hours that do not parse, an RTB URL that is not http(s); ``field`` names
            the entry (the admin API can call this to validate before storing).
    """
    if survival_mean_s < 1:
        raise ConfigInvalid("survival_mean_s", f"must be at least 1, got {survival_mean_s}")
    _unique([t.id for t in config.trunks], "trunks", "trunk")
    _unique([c.id for c in config.campaigns], "campaigns", "campaign")
    _unique([b.id for b in config.buyers], "buyers", "buyer")
    campaigns = {c.id: c for c in config.campaigns}
    compiled_campaigns: dict[str, CompiledCampaign] = {}
    number_campaign: dict[str, str] = {}
    for ci, c in enumerate(config.campaigns):
        reserve = to_micros(c.reserve)
        compiled_campaigns[c.id] = CompiledCampaign(
            c.id,
            reserve,
            str(to_decimal(reserve)),
            c.auction == "first_price",
            c.expose_caller,
            c.active,
        )
        for ni, n in enumerate(c.numbers):
            other = number_campaign.get(n)
            if other is not None and other != c.id:
                raise ConfigInvalid(
                    f"campaigns[{ci}].numbers[{ni}]", f"{n} already belongs to campaign {other!r}"
                )
            number_campaign[n] = c.id

    all_profiles: list[CompiledProfile] = []
    fallback: list[FallbackBuyer] = []
    for bi, buyer in enumerate(config.buyers):
        where = f"buyers[{bi}]"
        _unique([e.id for e in buyer.endpoints], f"{where}.endpoints", "endpoint")
        _unique([p.id for p in buyer.profiles], f"{where}.profiles", "profile")
        if not buyer.profiles:
            if buyer.active and _endpoints(buyer):
                fallback.append(
                    FallbackBuyer(
                        buyer.id,
                        make_spec(buyer.id, FALLBACK_PROFILE, endpoints=_endpoint_limits(buyer)),
                        _endpoints(buyer),
                    )
                )
            continue
        for pi, p in enumerate(buyer.profiles):
            all_profiles.append(
                _compile_profile(buyer, p, f"{where}.profiles[{pi}]", survival_mean_s, campaigns)
            )

    raw = {
        (b.id, p.id): p for b in config.buyers for p in b.profiles
    }  # the wire profiles, for their campaign_id / numbers
    by_campaign: dict[str, list[CompiledProfile]] = {}
    by_number: dict[str, list[CompiledProfile]] = {}
    global_profiles: list[CompiledProfile] = []
    for cp in all_profiles:
        wire = raw[(cp.buyer_id, cp.profile_id)]
        if wire.campaign_id is not None:
            by_campaign.setdefault(wire.campaign_id, []).append(cp)
        elif wire.numbers:
            for n in wire.numbers:
                by_number.setdefault(n, []).append(cp)
        else:
            global_profiles.append(cp)

    fb = tuple(fallback)
    routes: dict[str, NumberRoute] = {}
    for c in config.campaigns:
        cc = compiled_campaigns[c.id]
        for n in c.numbers:
            matched = [
                cp
                for cp in by_campaign.get(c.id, ())
                if not raw[(cp.buyer_id, cp.profile_id)].numbers
                or n in raw[(cp.buyer_id, cp.profile_id)].numbers
            ]
            matched += by_number.get(n, ())
            matched += global_profiles
            routes[n] = _route(cc, _config_order(matched, all_profiles), fb)
    for n, profs in by_number.items():
        if n not in routes:
            routes[n] = _route(None, _config_order([*profs, *global_profiles], all_profiles), fb)
    default = _route(None, global_profiles, fb)
    return AuctionIndex(
        routes=routes,
        default_route=default,
        profiles={p.key: p for p in all_profiles},
        campaigns=compiled_campaigns,
        payout_shares={t.id: t.payout_share for t in config.trunks},
        survival_mean_s=survival_mean_s,
        ranking=f"ev = bid * exp(-min_duration / {survival_mean_s}s)",
    )


def _config_order(
    profiles: Sequence[CompiledProfile], order: Sequence[CompiledProfile]
) -> list[CompiledProfile]:
    wanted = {id(p) for p in profiles}
    return [p for p in order if id(p) in wanted]


def without_endpoints(index: AuctionIndex, down: frozenset[str]) -> AuctionIndex:
    """``index`` with every endpoint whose URI is in ``down`` left out (see the module doc).

    Cheap next to ``compile_index``: only the profiles and fallback buyers that have such an
    endpoint are rebuilt, and the routes are re-tupled around them (same order: EV does not
    depend on endpoints). Returns ``index`` itself when nothing in it is down. The memo tables
    are shared with ``index``.
    """
    if not down:
        return index
    changed: dict[str, CompiledProfile] = {}
    for key, p in index.profiles.items():
        if any(e.uri in down for e in p.endpoints):
            live = tuple(e for e in p.endpoints if e.uri not in down)
            reason = p.static_reason if p.static_reason is not None or live else ENDPOINTS_DOWN
            changed[key] = replace(
                p, endpoints=live, cap=_with_endpoints(p.cap, live), static_reason=reason
            )
    fb_cache: dict[int, tuple[tuple[FallbackBuyer, ...], tuple[str, ...]]] = {}

    def fallback(
        fb: tuple[FallbackBuyer, ...],
    ) -> tuple[tuple[FallbackBuyer, ...], tuple[str, ...]]:
        done = fb_cache.get(id(fb))  # every route shares the one tuple of fallback buyers
        if done is None:
            if not any(e.uri in down for f in fb for e in f.endpoints):
                done = (fb, ())
            else:
                kept: list[FallbackBuyer] = []
                gone: list[str] = []
                for f in fb:
                    live = tuple(e for e in f.endpoints if e.uri not in down)
                    if len(live) == len(f.endpoints):
                        kept.append(f)
                    elif live:
                        kept.append(FallbackBuyer(f.buyer_id, _with_endpoints(f.cap, live), live))
                    else:
                        gone.append(f.cap.key)
                done = (tuple(kept), tuple(gone))
            fb_cache[id(fb)] = done
        return done

    def patched(r: NumberRoute) -> NumberRoute:
        fb, gone = fallback(r.fallback)
        if fb is r.fallback and not any(p.key in changed for p in r.profiles):
            return r
        profiles = tuple(changed.get(p.key, p) for p in r.profiles)
        return replace(r, profiles=profiles, fallback=fb, fallback_down=gone)

    default = patched(index.default_route)
    routes = {n: patched(r) for n, r in index.routes.items()}
    if not changed and default is index.default_route:
        return index  # nothing in this index is down (routes share the default's fallback)
    return replace(
        index,
        routes=routes,
        default_route=default,
        profiles={k: changed.get(k, p) for k, p in index.profiles.items()},
    )


def _with_endpoints(spec: CapSpec, live: tuple[CompiledEndpoint, ...]) -> CapSpec:
    """``spec`` limited to the ``live`` endpoints (same key, same limits otherwise)."""
    ids = {e.id for e in live}
    return make_spec(
        spec.buyer_id,
        spec.profile_id,
        concurrent=spec.concurrent,
        hourly=spec.hourly,
        daily=spec.daily,
        monthly=spec.monthly,
        budget_daily=spec.budget_daily,
        budget_monthly=spec.budget_monthly,
        dup_window_ms=spec.dup_window_ms,
        dup_on_billable=spec.dup_on_billable,
        endpoints=[(e, m) for e, m in spec.endpoints if e in ids],
    )
