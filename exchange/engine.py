"""The exchange as the switch sees it: :class:`Exchange` implements ``exchange.routing.Router``.

Theory of operation
-------------------
``route(facts)``, once per admitted call:

1. looks up the caller's state and area code (``compliance.numbers.info``, cached there);
2. runs the pure auction (:func:`exchange.auction.run_auction`) on the current compiled index;
3. only if some *eligible* profile has an RTB URL, pings those (and only those) under
   DCE_AUCTION_TIMEOUT and runs the auction again with their answers;
4. takes a cap slot, atomically, for every bidder of the failover order that has any cap (and
   for fallback buyers whose endpoints have ``max_concurrent``). The switch tries targets one
   after the other without asking back (the Router protocol has no per-attempt hook), so a
   failover bidder's slot is held from the start: that is what guarantees a cap is never
   exceeded, at the price of holding up to ``max_bidders`` slots per call while it rings. A
   refused take (another call got there first, or another switch instance) drops that bidder;
   the auction is re-ranked and re-priced without it (``AuctionResult.without``);
5. returns the targets (winner's endpoints first, then the failover bidders', then the
   fallback buyers') with the auction record.

``settle(facts, target, answered, duration_ms)`` when the call ends: the call is billable when
answered and ``duration_ms >= target.min_duration_s * 1000``; the buyer pays the target's price
and the seller earns ``trunk.payout_share`` % of it (``exchange.money.share``). Every slot of
the call is released: the answering bidder's call stays counted in its hourly/daily/monthly
caps, its budget is charged the price when billable, and the caller is remembered for its
duplicate-caller rule (on connect or on billable, as the rule says); the other slots are
returned whole. ``settle`` is synchronous, so Redis releases run as tasks (``aclose`` waits).

``update(config)`` compiles a new index and swaps it in; calls in progress keep the slots (and
so the cap specs) they took, and the next call uses the new config.

``set_down(uris)`` takes the buyer endpoints whose health probes fail out of routing
(dce/endpoint_health.py): the index in use is derived from the compiled one without them
(``exchange.auction_index.without_endpoints``), once per change of the set, so the per-call
path is the same whether anything is down or not. A buyer left without a live endpoint is
excluded as ``endpoints_down`` before ranking, so it neither wins nor sets the second price.
"""

from __future__ import annotations

import hashlib
import logging
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from compliance.numbers import info as number_info
from exchange.auction import DEFAULT_MAX_BIDDERS, AuctionResult, CallerInfo, run_auction
from exchange.auction_index import (
    DEFAULT_SURVIVAL_MEAN_S,
    FALLBACK_PROFILE,
    AuctionIndex,
    CompiledCampaign,
    CompiledProfile,
    compile_index,
    without_endpoints,
)
from exchange.caps import (
    CAPS_UNAVAILABLE,
    DEFAULT_LEASE_S,
    Buckets,
    CapsBackend,
    InProcessCaps,
    TakeOutcome,
    TakeRequest,
)
from exchange.caps_redis import RedisCaps
from exchange.errors import CapsUnavailable
from exchange.models import ExchangeConfig
from exchange.money import share
from exchange.routing import CallFacts, Decision, Settlement, Target
from exchange.rtb import RtbClient, RtbRequest

logger = logging.getLogger(__name__)

# Why a Decision has no targets (CDR disposition no_buyer; the switch's SIP Reason header).
NO_ELIGIBLE_BUYER: Final = "no_eligible_buyer"
CAMPAIGN_INACTIVE: Final = "campaign_inactive"

# Take rounds per call: a refused take brings the next bidder in, which needs its own take.
_TAKE_ROUNDS: Final = 4
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)


def call_seq(call_id: str) -> int:
    """The per-call number that seeds the auction's tie-break: stable across processes."""
    return zlib.crc32(call_id.encode())


def caller_info_from_number(caller: str) -> CallerInfo | None:
    """State and area code of an E.164 caller (``compliance.numbers.info``, cached there);
    None for a caller that did not normalise (no plus): nothing can be told from it."""
    return number_info(caller) if caller.startswith("+") else None


@dataclass(slots=True)
class _Held:
    """The slots one call holds between route and settle."""

    requests: list[TakeRequest]
    at: float  # monotonic time of the take, for the stale sweep


class Exchange:
    """The pay-per-call exchange: auction, caps and RTB behind the switch's Router protocol.

    Args:
        config: buyers, campaigns and trunks.
        caps: the cap backend (default in-process).
        rtb: the RTB client (default one with a 100 ms deadline).
        caller_info: caller number -> state/area code (default ``compliance.numbers.info``).
        max_bidders: bidders in the failover order (each holds cap slots while the call rings).
        survival_mean_s: τ of the expected-value ranking (see ``exchange.auction``).
        caller_salt: key of the caller hash used for duplicate-caller history; instances that
            share Redis must share it.
        monotonic: clock of the stale-call sweep.
    """

    def __init__(
        self,
        config: ExchangeConfig,
        *,
        caps: CapsBackend | None = None,
        rtb: RtbClient | None = None,
        caller_info: Callable[[str], CallerInfo | None] | None = None,
        max_bidders: int = DEFAULT_MAX_BIDDERS,
        survival_mean_s: int = DEFAULT_SURVIVAL_MEAN_S,
        caller_salt: bytes = b"dce-duplicate-callers",
        stale_after_s: float = DEFAULT_LEASE_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bidders < 1:
            raise ValueError(f"max_bidders must be at least 1, got {max_bidders}")
        self._survival_mean_s = survival_mean_s
        # What the config compiles to, and what calls use: the same less down endpoints.
        self._compiled = compile_index(config, survival_mean_s=survival_mean_s)
        self._down: frozenset[str] = frozenset()
        self._index = self._compiled
        self._caps: CapsBackend = caps if caps is not None else InProcessCaps()
        self._rtb = rtb if rtb is not None else RtbClient()
        self._caller_info = caller_info if caller_info is not None else caller_info_from_number
        self._max_bidders = max_bidders
        self._salt = caller_salt[:64]
        self._stale_after = stale_after_s
        self._mono = monotonic
        self._calls: dict[str, _Held] = {}
        self._next_sweep = 0.0

    @classmethod
    def from_settings(
        cls, config: ExchangeConfig, *, redis_url: str | None, auction_timeout: float
    ) -> Exchange:
        """The exchange for ``dce run``: Redis caps when DCE_REDIS_URL (``redis_url``) is set,
        else in-process; the RTB deadline is DCE_AUCTION_TIMEOUT (``auction_timeout``, s)."""
        caps: CapsBackend = RedisCaps(redis_url) if redis_url else InProcessCaps()
        return cls(config, caps=caps, rtb=RtbClient(timeout=auction_timeout))

    @property
    def index(self) -> AuctionIndex:
        """The compiled config in use."""
        return self._index

    @property
    def caps(self) -> CapsBackend:
        return self._caps

    @property
    def rtb(self) -> RtbClient:
        return self._rtb

    @property
    def down(self) -> frozenset[str]:
        """Endpoint URIs left out of routing (``set_down``)."""
        return self._down

    def set_down(self, uris: frozenset[str]) -> None:
        """Leave the endpoints with these URIs out of routing from the next call on (their
        health probes fail); the previous set comes back. Costs one pass over the compiled
        profiles per change, nothing per call."""
        if uris == self._down:
            return
        self._down = uris
        self._index = without_endpoints(self._compiled, uris)

    def compile(self, config: ExchangeConfig) -> AuctionIndex:
        """``config`` compiled as ``update`` would (pure: a worker thread may run it).

        Raises:
            ConfigInvalid: see ``compile_index``.
        """
        return compile_index(config, survival_mean_s=self._survival_mean_s)

    def update(self, config: ExchangeConfig, compiled: AuctionIndex | None = None) -> None:
        """Use ``config`` from the next call on; raises ConfigInvalid and keeps the old one.

        ``compiled`` is ``compile(config)`` done beforehand (off the event loop), if it was.
        """
        self._compiled = compiled if compiled is not None else self.compile(config)
        self._index = without_endpoints(self._compiled, self._down)
        # A bid cached for a profile may no longer match what the profile buys.
        self._rtb.clear_cache()

    def caller_key(self, caller: str) -> str:
        """Keyed hash of a caller number: duplicate history never stores the number itself."""
        if not caller:
            return ""
        return hashlib.blake2b(caller.encode(), digest_size=12, key=self._salt).hexdigest()

    # -- route -------------------------------------------------------------------------------

    async def route(self, facts: CallFacts) -> Decision:
        """Decide the targets of one call (winner first), taking cap slots for them."""
        t0 = time.perf_counter_ns()
        if self._calls and self._mono() >= self._next_sweep:
            self._sweep()
        index = self._index
        now = facts.received_at
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        info = self._caller_info(facts.caller)
        # The caller's hash costs a BLAKE2b: only when some profile has a duplicate rule.
        caller_key = (
            self.caller_key(facts.caller) if index.route_for(facts.called).duplicate_rules else ""
        )
        seq = call_seq(facts.call_id)
        result = run_auction(
            index,
            facts,
            info,
            now,
            self._caps,
            None,
            seq,
            caller_key=caller_key,
            max_bidders=self._max_bidders,
        )
        pinged = 0
        if result.rtb_needed:
            pinged = len(result.rtb_needed)
            answers = await self._rtb.collect(
                [self._rtb_request(facts, info, result.campaign, p) for p in result.rtb_needed]
            )
            result = run_auction(
                index,
                facts,
                info,
                now,
                self._caps,
                answers,
                seq,
                caller_key=caller_key,
                max_bidders=self._max_bidders,
            )
        campaign = result.campaign
        targets: list[Target] = []
        if campaign is None or campaign.active:
            result, granted = await self._take(facts.call_id, index, result, now, caller_key)
            targets = _targets(result, granted)
        elapsed_us = (time.perf_counter_ns() - t0) // 1000
        record = result.record(elapsed_us)
        if pinged:
            record["rtb_asked"] = pinged  # RTB profiles asked for a bid (cached answers included)
        reason = None
        if not targets:
            reason = (
                CAMPAIGN_INACTIVE
                if campaign is not None and not campaign.active
                else NO_ELIGIBLE_BUYER
            )
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "auction decided",
                extra={
                    "call_id": facts.call_id,
                    "rule": record["rule"],
                    "buyer_id": targets[0].buyer_id if targets else None,
                    "elapsed_us": elapsed_us,
                },
            )
        return Decision(
            targets=targets,
            campaign_id=None if campaign is None else campaign.id,
            reason=reason,
            record=record,
            decision_us=elapsed_us,
        )

    def _rtb_request(
        self,
        facts: CallFacts,
        info: CallerInfo | None,
        campaign: CompiledCampaign | None,
        p: CompiledProfile,
    ) -> RtbRequest:
        body: dict[str, Any] = {
            "id": facts.call_id,
            "campaign_id": None if campaign is None else campaign.id,
            "buyer_id": p.buyer_id,
            "profile_id": p.profile_id,
            "called": facts.called,
            "caller_state": None if info is None else info.state,
            "caller_area_code": None if info is None else info.area_code,
            "min_duration": p.min_duration,
            "reserve": "0.000000" if campaign is None else campaign.reserve_text,
            "received_at": facts.received_at.isoformat(),
        }
        # domain.md §7.3: losing bidders could market to callers they saw in pings, so the
        # number goes out only when the campaign says so. The cache still keys on it.
        if campaign is not None and campaign.expose_caller:
            body["caller"] = facts.caller
        assert p.rtb_url is not None
        return RtbRequest(key=p.key, url=p.rtb_url, caller=facts.caller, body=body)

    async def _take(
        self,
        call_id: str,
        index: AuctionIndex,
        result: AuctionResult,
        now: datetime,
        caller_key: str,
    ) -> tuple[AuctionResult, dict[str, tuple[str, ...]]]:
        """Take slots for the order (and capped fallback buyers); re-rank on refusals.

        Returns the final result and, per cap key taken, the endpoints the call may use.
        """
        granted: dict[str, tuple[str, ...]] = {}
        held: list[TakeRequest] = []
        asked: list[TakeRequest] = []
        now_ms = (now - _EPOCH) // _MS
        try:
            for _ in range(_TAKE_ROUNDS):
                asked = _requests(index, result, granted, now, caller_key, now_ms)
                if not asked:
                    break
                try:
                    outcomes = await self._caps.take(call_id, asked)
                except CapsUnavailable as exc:
                    logger.error(
                        "cap store unavailable", extra={"call_id": call_id, "rule": str(exc)}
                    )
                    held.extend(
                        asked
                    )  # may have been taken before the failure; release is idempotent
                    outcomes = [TakeOutcome(False, CAPS_UNAVAILABLE)] * len(asked)
                dropped: dict[str, str] = {}
                fb_dropped: dict[str, str] = {}
                for req, out in zip(asked, outcomes, strict=True):
                    if out.ok:
                        held.append(req)
                        granted[req.spec.key] = out.endpoints
                    elif req.spec.profile_id == FALLBACK_PROFILE:
                        fb_dropped[req.spec.key] = out.reason or CAPS_UNAVAILABLE
                    else:
                        dropped[req.spec.key] = out.reason or CAPS_UNAVAILABLE
                asked = []
                if not dropped and not fb_dropped:
                    break
                result = result.without(dropped, fb_dropped)
        except BaseException:
            # Cancelled or failed mid-take: give back whatever may have been taken.
            for req in [*held, *asked]:
                self._caps.release(call_id, req, counted=False, spent=0, record_duplicate=False)
            raise
        if held:
            prev = self._calls.get(call_id)
            if prev is not None:  # routed twice: keep every slot so that settle frees them all
                held = prev.requests + held
            self._calls[call_id] = _Held(held, self._mono())
        return result, granted

    def _sweep(self) -> None:
        """Release the slots of calls never settled (a switch bug); oldest first."""
        now = self._mono()
        self._next_sweep = now + 1.0  # at most once a second: the head check is all it costs
        limit = now - self._stale_after
        while self._calls:
            call_id, held = next(iter(self._calls.items()))
            if held.at > limit:
                break
            del self._calls[call_id]
            logger.warning("call never settled; releasing its slots", extra={"call_id": call_id})
            for req in held.requests:
                self._caps.release(call_id, req, counted=False, spent=0, record_duplicate=False)

    # -- settle ------------------------------------------------------------------------------

    def payout_share(self, trunk_id: str) -> Decimal | None:
        """The seller's share (percent) of a billable call's price; None for an unknown trunk."""
        return self._index.payout_shares.get(trunk_id)

    def answered(self, facts: CallFacts, target: Target) -> None:
        """``target`` answered: the other bidders' slots, held for failover, go back now.

        Without this a buyer that only stood in line for a call would stay counted (its
        concurrency slot taken) for the whole conversation of the buyer that won it.
        """
        held = self._calls.get(facts.call_id)
        if held is None:
            return
        key = f"{target.buyer_id}/{target.profile_id or FALLBACK_PROFILE}"
        keep: list[TakeRequest] = []
        for req in held.requests:
            if req.spec.key == key:
                keep.append(req)
            else:
                self._caps.release(
                    facts.call_id, req, counted=False, spent=0, record_duplicate=False
                )
        held.requests = keep

    def settle(
        self, facts: CallFacts, target: Target | None, answered: bool, duration_ms: int
    ) -> Settlement:
        """Money of a finished call, and release of its cap slots.

        Args:
            facts: the call.
            target: the target that answered, or the last one tried, or None if none was.
            answered: whether ``target`` answered.
            duration_ms: connected duration (0 if not answered).
        """
        held = self._calls.pop(facts.call_id, None)
        billable = target is not None and answered and duration_ms >= target.min_duration_s * 1000
        price: int | None = None
        payout: int | None = None
        if target is not None and billable:
            price = target.price
            pct = self._index.payout_shares.get(facts.trunk_id)
            if pct is None:
                logger.warning(
                    "unknown trunk: no payout",
                    extra={"call_id": facts.call_id, "peer": facts.trunk_id},
                )
                pct = Decimal(0)
            payout = share(price, pct)
        if held is not None:
            final_key = (
                None
                if target is None
                else f"{target.buyer_id}/{target.profile_id or FALLBACK_PROFILE}"
            )
            for req in held.requests:
                spec = req.spec
                final = spec.key == final_key
                spent = price if final and price is not None else 0
                self._caps.release(
                    facts.call_id,
                    req,
                    counted=final and answered,
                    spent=spent,
                    record_duplicate=final
                    and spec.dup_window_ms >= 0
                    and (billable if spec.dup_on_billable else answered),
                )
        return Settlement(
            bid=None if target is None else target.bid,
            price=price,
            payout=payout,
            billable=billable,
        )

    async def aclose(self) -> None:
        """Wait for scheduled cap releases and RTB pings; close connections."""
        await self._caps.aclose()
        await self._rtb.aclose()


def _utc_buckets(now: datetime) -> Buckets:
    d = now.astimezone(UTC)
    day = (d.year * 100 + d.month) * 100 + d.day
    return Buckets(hour=day * 100 + d.hour, day=day, month=d.year * 100 + d.month)


def _requests(
    index: AuctionIndex,
    result: AuctionResult,
    granted: Mapping[str, tuple[str, ...]],
    now: datetime,
    caller_key: str,
    now_ms: int,
) -> list[TakeRequest]:
    """Take requests for the bidders (and fallback buyers) that need a slot and lack one."""
    asked: list[TakeRequest] = []
    for placed in result.order:
        p = placed.bidder.profile
        if p.cap.needs_take and p.key not in granted:
            # The budget reserve is the price: it can only fall if the order is re-priced.
            lt = result.local.get(p.tz_key)
            if lt is None:
                lt = index.local_time(p.tz, now, now_ms // 60_000)
            b = lt.buckets
            asked.append(TakeRequest(p.cap, b, placed.price, caller_key, now_ms))
    for f in result.fallback:
        if f.cap.needs_take and f.cap.key not in granted:
            asked.append(TakeRequest(f.cap, _utc_buckets(now), 0, "", now_ms))
    return asked


def _targets(result: AuctionResult, granted: Mapping[str, tuple[str, ...]]) -> list[Target]:
    """The failover list: each bidder's endpoints in config order, then the fallback buyers'."""
    targets: list[Target] = []
    for placed in result.order:
        b = placed.bidder
        p = b.profile
        allowed: Sequence[str] | None = None
        if p.cap.needs_take:
            allowed = granted.get(p.key)
            if allowed is None:  # its take never succeeded (rounds ran out): not a target
                continue
        for ep in p.endpoints:
            if allowed is None or ep.id in allowed:
                targets.append(
                    Target(
                        buyer_id=p.buyer_id,
                        endpoint_id=ep.id,
                        uri=ep.uri,
                        profile_id=p.profile_id,
                        bid=b.bid,
                        price=placed.price,
                        min_duration_s=b.min_duration,
                    )
                )
    for f in result.fallback:
        allowed = None
        if f.cap.needs_take:
            allowed = granted.get(f.cap.key)
            if allowed is None:
                continue
        for ep in f.endpoints:
            if allowed is None or ep.id in allowed:
                targets.append(Target(buyer_id=f.buyer_id, endpoint_id=ep.id, uri=ep.uri))
    return targets
