"""The sealed-bid auction: which buyers may take a call, in which order, and at what price.

Pure logic: no I/O and no clock reads. The wall time of the call, the caps view, the RTB answers
and a per-call sequence number are passed in (STYLE.md "The sans-IO core").

Theory of operation
-------------------
``compile_index(config)`` turns an :class:`~exchange.models.ExchangeConfig` into an
:class:`AuctionIndex` once per config change: called number -> (campaign, its profiles sorted
by static expected value, the fallback buyers); money as integer micro-dollars; hours as one
bitmask of minutes per weekday; states and area codes as frozensets; each profile's caps as a
:class:`~exchange.caps.CapSpec`. ``run_auction`` then does, per call:

1. **Eligibility**, cheapest test first; every profile that fails gets a reason in
   ``excluded``: ``profile_inactive``, ``buyer_inactive``, ``no_endpoint`` (no active
   endpoint), ``below_reserve``, ``state``, ``area_code``, ``hours`` (outside the hours of
   operation in the profile's time zone), then the caps view (``cap_concurrent``,
   ``cap_hourly``, ``cap_daily``, ``cap_monthly``, ``budget_daily``, ``budget_monthly``,
   ``duplicate``, ``endpoint_busy``; calls in flight count as taken). The budget must cover the
   *bid*: the price is never above the bid and is not known before the ranking is, so the bid
   is the price's upper bound. RTB profiles: ``rtb_no_bid`` (late, malformed, failing),
   ``rtb_declined`` (answered bid 0).
2. **Ranking by expected value.** A bid is (amount, minimum billable duration). A buyer pays
   only for calls that last at least its minimum duration, so bids are compared on::

       EV = bid * S(min_duration),   S(d) = exp(-d / τ)

   ``S(d)`` is the probability that an answered call lasts at least ``d`` seconds under an
   exponential duration model with mean ``τ`` (``survival_mean_s``, default 180 s; the
   maximum-likelihood ``τ`` of an exponential is simply the mean answered duration, so it can be
   fitted from CDRs). ``S`` is kept as an integer in parts per million and ``EV`` as
   ``bid_micros * S_ppm``: exact integer arithmetic, no float. With equal minimum durations EV
   ranks exactly as the bids do.
3. **One bid per buyer**: a buyer's best profile represents it; its other eligible profiles are
   ``same_buyer`` (a buyer must not set its own second price).
4. **Ties** (equal EV) are broken by ``splitmix64(splitmix64(seq) XOR h(profile))`` ascending,
   where ``h`` is a 64-bit BLAKE2b hash of ``"<buyer>/<profile>"`` and ``seq`` is derived from
   the call id (CRC-32 in the engine; splitmix64 spreads it over 64 bits). The order is
   deterministic for a call (replayable from ``seq`` in the record) and, since the seed differs
   from call to call, each of ``k`` tied buyers comes first with probability ``1/k``: no buyer
   wins every tie, whatever the ids are. Rotating by a global counter was rejected: two
   campaigns taking alternate calls would give one of them only even numbers.
5. **Pricing.** Second price (default): bidder ``i`` in the order pays the least bid that would
   still have ranked it above the next bidder ``j``, and at least the campaign reserve::

       price_i = min(bid_i, max(reserve, ceil(EV_j / S_i)))     (reserve alone if no j)

   With equal minimum durations ``ceil(EV_j / S_i) = bid_j``: the winner pays the higher of the
   runner-up's bid and the reserve, as SPEC.md says. ``price_i <= bid_i`` always and
   ``price_i >= reserve`` because bids below the reserve are excluded. A bidder further down
   the failover order is priced the same way against the bidder after it: it is the winner of
   the auction that remains once those above it failed to answer. First price (setting): each
   pays its own bid.
6. **Failover order**: the winner, then the losing eligible bidders in rank order, at most
   ``max_bidders`` in all (default 3: the winner and two failovers; each holds cap slots while
   the call is being placed, and a caller should not wait through more than ~3 ring timeouts);
   each buyer contributes its active endpoints in config order. After them come the **fallback
   buyers**: active buyers that have no bid profile at all take calls at price 0 with their
   endpoints in config order (issue 3's "configured endpoints of active buyers in config
   order"), unless the campaign has a reserve above 0.

The result (:class:`AuctionResult`) can drop bidders whose cap take failed and re-price
(``without``), and renders the auction record stored with the CDR (``record``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from operator import attrgetter
from typing import Any, Final, NamedTuple, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from exchange.caps import Buckets, CapSpec, CapsView, make_spec
from exchange.errors import ConfigInvalid
from exchange.models import BidProfile, Buyer, Campaign, ExchangeConfig, Weekday
from exchange.money import to_decimal, to_micros
from exchange.routing import CallFacts

DEFAULT_SURVIVAL_MEAN_S: Final = 180
DEFAULT_MAX_BIDDERS: Final = 3
PPM: Final = 1_000_000
_M64: Final = (1 << 64) - 1
_WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MINUTE: Final = timedelta(minutes=1)
_MS: Final = timedelta(milliseconds=1)

# Exclusion reasons decided here (the caps view adds its own, exchange.caps).
PROFILE_INACTIVE: Final = "profile_inactive"
BUYER_INACTIVE: Final = "buyer_inactive"
NO_ENDPOINT: Final = "no_endpoint"
BELOW_RESERVE: Final = "below_reserve"
STATE: Final = "state"
AREA_CODE: Final = "area_code"
HOURS: Final = "hours"
RTB_NO_BID: Final = "rtb_no_bid"
RTB_DECLINED: Final = "rtb_declined"
SAME_BUYER: Final = "same_buyer"
# Profile id in the cap key of a buyer without profiles (ids cannot contain "*").
FALLBACK_PROFILE: Final = "*"


def usd_text(micros: int) -> str:
    """Micro-dollars as a USD decimal string with six places (``to_decimal`` without Decimal)."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), 1_000_000)
    return f"{sign}{whole}.{frac:06d}"


def splitmix64(x: int) -> int:
    """The splitmix64 finaliser: a bijective 64-bit mixer with full avalanche."""
    x &= _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def hash64(text: str) -> int:
    """A stable 64-bit hash of ``text`` (BLAKE2b): the per-profile tie-break key."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def survival_ppm(min_duration_s: int, mean_s: int) -> int:
    """``S(d) = exp(-d/τ)`` in parts per million, at least 1 (so that prices stay finite)."""
    s = (Decimal(-min_duration_s) / Decimal(mean_s)).exp() * PPM
    return max(1, int(s.to_integral_value()))


class CallerInfo(Protocol):
    """What the auction needs to know about the caller (``compliance.numbers.NumberInfo``)."""

    @property
    def state(self) -> str | None: ...

    @property
    def area_code(self) -> str | None: ...


class RtbBid(Protocol):
    """An RTB answer as the auction uses it (``exchange.rtb.RtbAnswer``)."""

    @property
    def bid(self) -> int: ...

    @property
    def min_duration(self) -> int | None: ...


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
    """A bid profile ready for the hot path. Also the bidder object for static bids."""

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


@dataclass(slots=True, eq=False)
class RtbOffer:
    """A bidder whose amount and minimum duration came from its RTB answer."""

    profile: CompiledProfile
    bid: int
    bid_text: str
    min_duration: int
    survival: int
    ev: int

    @property
    def key(self) -> str:
        return self.profile.key

    @property
    def buyer_id(self) -> str:
        return self.profile.buyer_id

    @property
    def profile_id(self) -> str:
        return self.profile.profile_id

    @property
    def tie(self) -> int:
        return self.profile.tie


Bidder = CompiledProfile | RtbOffer


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


# ----------------------------------------------------------------------------------------------
# Running an auction


class Placed(NamedTuple):
    """A bidder in the failover order with the price it pays if its call is billable."""

    bidder: Bidder
    price: int


@dataclass(slots=True, eq=False)
class AuctionResult:
    """The outcome of one auction; ``order[0]`` is the winner.

    ``eligible`` holds every profile that passed eligibility, in rank order; ``order`` the top
    ``max_bidders`` bidders (one per buyer) with their prices; ``rtb_needed`` the eligible RTB
    profiles to ping when the auction ran without RTB answers.
    """

    campaign: CompiledCampaign | None
    eligible: list[Bidder]
    excluded: dict[str, str]
    order: list[Placed]
    fallback: tuple[FallbackBuyer, ...]
    rtb_needed: list[CompiledProfile]
    seq: int
    max_bidders: int
    ranking: str
    same_buyer: dict[str, str] = field(default_factory=dict)
    # The call's local times by zone, as computed for eligibility (the cap take reuses them).
    local: dict[str, LocalTime] = field(default_factory=dict)

    @property
    def rule(self) -> str:
        if not self.order:
            return "fallback" if self.fallback else "none"
        if self.campaign is not None and self.campaign.first_price:
            return "first_price"
        return "second_price"

    @property
    def winner(self) -> Placed | None:
        return self.order[0] if self.order else None

    def without(
        self, dropped: Mapping[str, str], fallback_dropped: Mapping[str, str] | None = None
    ) -> AuctionResult:
        """The same auction with bidders (by profile key) excluded afterwards, re-ranked and
        re-priced; used when a cap take fails. ``fallback_dropped`` drops fallback buyers."""
        excluded = {**self.excluded, **dropped}
        eligible = [b for b in self.eligible if b.key not in dropped]
        order, same = _rank_and_price(eligible, self.campaign, self.seq, self.max_bidders)
        fallback = self.fallback
        if fallback_dropped:
            excluded.update(fallback_dropped)
            fallback = tuple(f for f in fallback if f.cap.key not in fallback_dropped)
        return AuctionResult(
            self.campaign,
            eligible,
            excluded,
            order,
            fallback,
            self.rtb_needed,
            self.seq,
            self.max_bidders,
            self.ranking,
            same,
            self.local,
        )

    def record(self, elapsed_us: int) -> dict[str, Any]:
        """The auction record stored with the CDR and returned by ``/api/v1/calls/{id}``.

        Money is decimal strings (USD); keys of ``excluded``/``bids`` are
        ``"<buyer_id>/<profile_id>"`` (``"<buyer_id>/*"`` for a fallback buyer).
        """
        campaign = self.campaign
        win = self.order[0] if self.order else None
        order = [
            {
                "buyer_id": p.bidder.buyer_id,
                "profile_id": p.bidder.profile_id,
                "bid": p.bidder.bid_text,
                "min_duration": p.bidder.min_duration,
                "price": usd_text(p.price),
                "rtb": isinstance(p.bidder, RtbOffer),
            }
            for p in self.order
        ]
        excluded = {**self.excluded, **self.same_buyer} if self.same_buyer else self.excluded
        return {
            "campaign_id": None if campaign is None else campaign.id,
            "rule": self.rule,
            "reserve": "0.000000" if campaign is None else campaign.reserve_text,
            "ranking": self.ranking,
            "tie_break": "splitmix64(splitmix64(seq) ^ blake2b64(buyer/profile)) ascending",
            "seq": self.seq,
            "eligible": [b.key for b in self.eligible],
            "excluded": excluded,
            "bids": {b.key: b.bid_text for b in self.eligible},
            "order": order,
            "winner": order[0] if order else None,
            "price": None if win is None else order[0]["price"],
            "fallback": [f.buyer_id for f in self.fallback],
            "elapsed_us": elapsed_us,
        }


def _tie_sorted(group: Sequence[Bidder], seed: int) -> list[Bidder]:
    return sorted(group, key=lambda b: splitmix64(seed ^ b.tie))


def _rank_and_price(
    eligible: Sequence[Bidder],
    campaign: CompiledCampaign | None,
    seq: int,
    max_bidders: int,
) -> tuple[list[Placed], dict[str, str]]:
    """Rank ``eligible`` (already EV-descending), one bidder per buyer, ties broken by the
    call's seed; stop after ``max_bidders + 1`` (the last one only sets a price)."""
    seed = -1  # mixed only when there is a tie to break
    need = max_bidders + 1
    ranked: list[Bidder] = []
    buyers: set[str] = set()
    same: dict[str, str] = {}
    n = len(eligible)
    i = 0
    while i < n:
        first = eligible[i]
        j = i + 1
        group: Sequence[Bidder]
        if j < n and eligible[j].ev == first.ev:
            ev = first.ev
            while j < n and eligible[j].ev == ev:
                j += 1
            if seed < 0:
                seed = splitmix64(seq)
            group = _tie_sorted(eligible[i:j], seed)
        else:
            group = (first,)
        for b in group:
            buyer_id = b.buyer_id
            if buyer_id in buyers:
                same[b.key] = SAME_BUYER
            else:
                buyers.add(buyer_id)
                ranked.append(b)
                need -= 1
                if not need:
                    break
        if not need:
            break
        i = j
    reserve = 0 if campaign is None else campaign.reserve
    first_price = campaign is not None and campaign.first_price
    order: list[Placed] = []
    last = min(max_bidders, len(ranked))
    for k in range(last):
        b = ranked[k]
        bid = b.bid
        if first_price:
            price = bid
        else:
            if k + 1 < len(ranked):
                # ceil(EV_next / S_self) in integers: the least bid that still outranks the next.
                price = -(-ranked[k + 1].ev // b.survival)
                if price < reserve:
                    price = reserve
            else:
                price = reserve
            if price > bid:  # cannot happen (EV order, reserve <= bid); kept as the guarantee
                price = bid
        order.append(Placed(b, price))
    return order, same


_EV: Final = attrgetter("ev")


def run_auction(
    index: AuctionIndex,
    facts: CallFacts,
    caller_info: CallerInfo | None,
    now: datetime,
    caps_view: CapsView | None,
    rtb_bids: Mapping[str, RtbBid] | None,
    seq: int,
    *,
    caller_key: str = "",
    max_bidders: int = DEFAULT_MAX_BIDDERS,
) -> AuctionResult:
    """Decide eligibility, ranking and prices for one call.

    Args:
        index: the compiled config.
        facts: the call (its ``called`` number selects the campaign).
        caller_info: the caller's state and area code, None when unknown (then profiles that
            target states or area codes do not match).
        now: the call's wall time, timezone-aware (hours and cap buckets are in each profile's
            own time zone).
        caps_view: room in caps, or None to skip cap checks.
        rtb_bids: RTB answers by profile key; None means RTB has not run yet, and eligible RTB
            profiles are returned in ``rtb_needed`` instead of being ranked.
        seq: per-call number seeding the tie-break (``hash64(call_id)`` in the engine).
        caller_key: the caller's hash for duplicate-caller rules ("" disables them).
        max_bidders: length of the failover order.
    """
    route = index.route_for(facts.called)
    campaign = route.campaign
    excluded: dict[str, str] = {}
    rtb_needed: list[CompiledProfile] = []
    if campaign is not None and not campaign.active:
        return AuctionResult(
            campaign, [], excluded, [], (), rtb_needed, seq, max_bidders, index.ranking
        )
    reserve = 0 if campaign is None else campaign.reserve
    state = caller_info.state if caller_info is not None else None
    area = caller_info.area_code if caller_info is not None else None
    now_ms = (now - _EPOCH) // _MS
    minute = now_ms // 60_000
    room = caps_view.room if caps_view is not None else None
    eligible: list[Bidder] = []
    offers: list[Bidder] = []
    local: dict[str, LocalTime] = {}  # per call: zone -> local time
    # The hot loop: one pass, cheapest and most selective tests first, locals for speed.
    for p in route.profiles:
        r = p.static_reason
        if r is not None:
            excluded[p.key] = r
            continue
        rtb = p.rtb
        if p.bid < reserve and not rtb:
            excluded[p.key] = BELOW_RESERVE
            continue
        wanted = p.states
        if wanted is not None and state not in wanted:
            excluded[p.key] = STATE
            continue
        wanted = p.area_codes
        if wanted is not None and area not in wanted:
            excluded[p.key] = AREA_CODE
            continue
        lt: LocalTime | None = None
        hours = p.hours
        if hours is not None:
            lt = local.get(p.tz_key)
            if lt is None:
                lt = local[p.tz_key] = index.local_time(p.tz, now, minute)
            if not (hours[lt.weekday] >> lt.minute) & 1:
                excluded[p.key] = HOURS
                continue
        amount = p.bid
        bidder: Bidder = p
        if rtb:
            if rtb_bids is None:
                amount = 0
            else:
                answer = rtb_bids.get(p.key)
                if answer is None:
                    excluded[p.key] = RTB_NO_BID
                    continue
                amount = answer.bid
                if amount <= 0:
                    excluded[p.key] = RTB_DECLINED
                    continue
                if amount < reserve:
                    excluded[p.key] = BELOW_RESERVE
                    continue
                md = p.min_duration if answer.min_duration is None else answer.min_duration
                surv = index.survival(md)
                bidder = RtbOffer(p, amount, usd_text(amount), md, surv, amount * surv)
        spec = p.cap
        if room is not None and spec.needs_take:
            if lt is None:
                lt = local.get(p.tz_key)
                if lt is None:
                    lt = local[p.tz_key] = index.local_time(p.tz, now, minute)
            r = room(spec, lt.buckets, amount, caller_key, now_ms)
            if r is not None:
                excluded[p.key] = r
                continue
        if not rtb:
            eligible.append(p)
        elif rtb_bids is None:
            rtb_needed.append(p)
        else:
            offers.append(bidder)
    if offers:
        # Static bidders are already EV-descending (compiled so); merge the RTB offers in.
        # sorted() is stable, so equal EVs keep static-then-RTB order until the tie-break.
        eligible = sorted(eligible + offers, key=_EV, reverse=True)
    order, same = _rank_and_price(eligible, campaign, seq, max_bidders)
    fallback = route.fallback
    if fallback and reserve > 0:
        # Fallback buyers pay 0, which is below any positive reserve.
        for f in fallback:
            excluded[f.cap.key] = BELOW_RESERVE
        fallback = ()
    return AuctionResult(
        campaign,
        eligible,
        excluded,
        order,
        fallback,
        rtb_needed,
        seq,
        max_bidders,
        index.ranking,
        same,
        local,
    )
