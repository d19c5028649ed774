"""The sealed-bid auction: which buyers may take a call, in which order, and at what price.

Pure logic: no I/O and no clock reads. The wall time of the call, the caps view, the RTB answers
and a per-call sequence number are passed in (STYLE.md "The sans-IO core").

This module runs one auction on a compiled index; :mod:`exchange.auction_index` compiles the
config into that index (its docstring details the compiled forms). The whole picture is here.

Theory of operation
-------------------
``compile_index(config)`` (:mod:`exchange.auction_index`) turns an
:class:`~exchange.models.ExchangeConfig` into an :class:`~exchange.auction_index.AuctionIndex`
once per config change: called number -> (campaign, its profiles sorted by static expected
value, the fallback buyers); money as integer micro-dollars; hours as one bitmask of minutes per
weekday; states and area codes as frozensets; each profile's caps as a
:class:`~exchange.caps.CapSpec`. ``run_auction`` (here) then does, per call:

1. **Eligibility**, cheapest test first; every profile that fails gets a reason in
   ``excluded``: ``profile_inactive``, ``buyer_inactive``, ``no_endpoint`` (no active
   endpoint), ``endpoints_down`` (every active endpoint fails its health probes; a fallback
   buyer too), ``below_reserve``, ``state``, ``area_code``, ``hours`` (outside the hours of
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
   each buyer contributes its active endpoints in config order, less those that are down
   (``exchange.auction_index.without_endpoints``). After them come the **fallback
   buyers**: active buyers that have no bid profile at all take calls at price 0 with their
   endpoints in config order (issue 3's "configured endpoints of active buyers in config
   order"), unless the campaign has a reserve above 0.

The result (:class:`AuctionResult`) can drop bidders whose cap take failed and re-price
(``without``), and renders the auction record stored with the CDR (``record``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any, Final, NamedTuple, Protocol

from exchange.auction_index import (
    ENDPOINTS_DOWN,
    AuctionIndex,
    CompiledCampaign,
    CompiledProfile,
    FallbackBuyer,
    LocalTime,
)
from exchange.caps import CapsView
from exchange.routing import CallFacts

DEFAULT_MAX_BIDDERS: Final = 3
_M64: Final = (1 << 64) - 1
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)

# Exclusion reasons decided per call (the index holds the static ones, exchange.auction_index;
# the caps view adds its own, exchange.caps).
BELOW_RESERVE: Final = "below_reserve"
STATE: Final = "state"
AREA_CODE: Final = "area_code"
HOURS: Final = "hours"
RTB_NO_BID: Final = "rtb_no_bid"
RTB_DECLINED: Final = "rtb_declined"
SAME_BUYER: Final = "same_buyer"


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
    if route.fallback_down:
        for key in route.fallback_down:
            excluded[key] = ENDPOINTS_DOWN
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
