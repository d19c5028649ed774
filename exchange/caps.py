"""Cap slots per bid profile: take one atomically when a call is routed, release it when it ends.

Theory of operation
-------------------
A *slot* is what one call holds on one bid profile from :meth:`take` until :meth:`release`:

* a **concurrency lease** (``call_id -> expiry``); the call is in flight until released, so
  concurrent routing cannot oversubscribe a buyer (domain.md §7.6, Retreaver counts
  reservations toward caps). The lease expires after ``lease_s`` so that a crashed switch (or a
  lost release) cannot hold a slot for ever;
* one count in the **hourly, daily and monthly** buckets of the buyer's own time zone (the
  bucket ids, ``Buckets``, are computed by the auction from the call's wall time);
* the **price reserved** against the daily and monthly budgets;
* a concurrency lease on each **endpoint** with ``max_concurrent`` that had room.

Every check and every increment of one take happen in one atomic step: a plain synchronous
function in-process (asyncio runs it without interleaving), one Lua script in Redis
(storage.md §3: check-then-INCR over-admits, INCR-then-check starves, Lua is exact).

:meth:`release` ends the slot. Its outcome says what the call turned out to be:

* ``counted``: the buyer answered, so the call stays in the hourly/daily/monthly counts
  (caps count *connected* calls; a call that rang out or went to the next bidder is uncounted);
* ``spent``: the price actually charged (0 unless billable); the rest of the reserve is refunded;
* ``record_duplicate``: remember (buyer, caller) for the profile's duplicate-caller rule.

Release is idempotent: the concurrency lease is removed first and, if it was already gone (a
repeated release, a retransmitted BYE), nothing else changes, so a slot is never freed twice.

Caps are ``-1`` for "no limit" everywhere below (the Lua script takes integers only).

This module holds the model (specs, requests, outcomes, the backend protocol) and the
in-process backend; the Redis backend, shared by several switch instances, is caps_redis.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import msgspec

logger = logging.getLogger(__name__)

NO_LIMIT: Final = -1
DEFAULT_LEASE_S: Final = 4 * 3600.0
# TTLs of the Redis time buckets: a bucket outlives its period by a margin, then vanishes.
HOUR_TTL_S: Final = 2 * 3600
DAY_TTL_S: Final = 2 * 86400
MONTH_TTL_S: Final = 32 * 86400

# Reasons a take or an eligibility check refuses a profile (auction records and CDRs use them).
CAP_CONCURRENT: Final = "cap_concurrent"
CAP_HOURLY: Final = "cap_hourly"
CAP_DAILY: Final = "cap_daily"
CAP_MONTHLY: Final = "cap_monthly"
BUDGET_DAILY: Final = "budget_daily"
BUDGET_MONTHLY: Final = "budget_monthly"
DUPLICATE: Final = "duplicate"
ENDPOINT_BUSY: Final = "endpoint_busy"
CAPS_UNAVAILABLE: Final = "caps_unavailable"


class Buckets(msgspec.Struct, frozen=True, gc=False):
    """A call's time buckets in the buyer's zone: ``YYYYMMDDHH``, ``YYYYMMDD``, ``YYYYMM``."""

    hour: int
    day: int
    month: int


class CapSpec(msgspec.Struct, frozen=True, gc=False):
    """The compiled limits of one profile (or of a fallback buyer's endpoints).

    ``key`` is ``"<buyer_id>/<profile_id>"`` (``"<buyer_id>/*"`` for a buyer without profiles).
    Money is micro-dollars. ``endpoints`` lists the buyer's active endpoints in config order with
    their ``max_concurrent`` (0 = no limit). ``dup_window_ms`` is the duplicate-caller window
    (``-1``: no rule); ``dup_on_billable`` says whether a call counts for it on billable rather
    than on connect. ``needs_take`` is False when nothing here limits anything: such profiles
    skip the take entirely.
    """

    key: str
    buyer_id: str
    profile_id: str
    concurrent: int = NO_LIMIT
    hourly: int = NO_LIMIT
    daily: int = NO_LIMIT
    monthly: int = NO_LIMIT
    budget_daily: int = NO_LIMIT
    budget_monthly: int = NO_LIMIT
    dup_window_ms: int = NO_LIMIT
    dup_on_billable: bool = False
    endpoints: tuple[tuple[str, int], ...] = ()
    endpoint_ids: tuple[str, ...] = ()
    endpoints_limited: bool = False
    needs_take: bool = False


def make_spec(
    buyer_id: str,
    profile_id: str,
    *,
    concurrent: int = NO_LIMIT,
    hourly: int = NO_LIMIT,
    daily: int = NO_LIMIT,
    monthly: int = NO_LIMIT,
    budget_daily: int = NO_LIMIT,
    budget_monthly: int = NO_LIMIT,
    dup_window_ms: int = NO_LIMIT,
    dup_on_billable: bool = False,
    endpoints: Sequence[tuple[str, int]] = (),
) -> CapSpec:
    """Build a :class:`CapSpec`, deriving ``key``, ``endpoints_limited`` and ``needs_take``."""
    eps = tuple(endpoints)
    limited = any(m > 0 for _, m in eps)
    needs = limited or any(
        v >= 0
        for v in (concurrent, hourly, daily, monthly, budget_daily, budget_monthly, dup_window_ms)
    )
    return CapSpec(
        key=f"{buyer_id}/{profile_id}",
        buyer_id=buyer_id,
        profile_id=profile_id,
        concurrent=concurrent,
        hourly=hourly,
        daily=daily,
        monthly=monthly,
        budget_daily=budget_daily,
        budget_monthly=budget_monthly,
        dup_window_ms=dup_window_ms,
        dup_on_billable=dup_on_billable,
        endpoints=eps,
        endpoint_ids=tuple(e for e, _ in eps),
        endpoints_limited=limited,
        needs_take=needs,
    )


class TakeRequest(msgspec.Struct, frozen=True, gc=False):
    """One slot to take for one call: whose caps, which buckets, how much budget to reserve.

    ``caller_key`` is a keyed hash of the caller (never the number itself: it ends up in
    Redis keys), or ``""`` when unknown, which disables the duplicate check. ``now_ms`` is the
    call's wall time (epoch ms), used for the duplicate window.
    """

    spec: CapSpec
    buckets: Buckets
    amount: int
    caller_key: str
    now_ms: int


class TakeOutcome(msgspec.Struct, frozen=True, gc=False):
    """Result of one take: ``ok`` with the endpoint ids the call may use, or the reason."""

    ok: bool
    reason: str | None = None
    endpoints: tuple[str, ...] = ()


class CapsView(Protocol):
    """What the auction asks while checking eligibility: is there room, and why not."""

    def room(
        self, spec: CapSpec, buckets: Buckets, amount: int, caller_key: str, now_ms: int
    ) -> str | None:
        """None when a take would succeed now (as far as known), else the refusing reason."""
        ...


class CapsBackend(CapsView, Protocol):
    """Atomic take/release of cap slots (in-process or Redis)."""

    async def take(self, call_id: str, requests: Sequence[TakeRequest]) -> list[TakeOutcome]:
        """Take one slot per request for ``call_id``, each atomically; one outcome per request."""
        ...

    def release(
        self,
        call_id: str,
        request: TakeRequest,
        *,
        counted: bool,
        spent: int,
        record_duplicate: bool,
    ) -> None:
        """End the slot ``take`` gave; idempotent. Never blocks: remote work is scheduled."""
        ...

    async def flush(self) -> None:
        """Wait until every scheduled release has reached the store."""
        ...

    async def aclose(self) -> None:
        """Flush and close connections."""
        ...


@dataclass(slots=True)
class _Lease:
    expires: float
    hour: int
    day: int
    month: int
    amount: int
    endpoints: tuple[str, ...]


@dataclass(slots=True)
class _State:
    """Counters of one profile. Buckets roll over lazily when a newer bucket is seen."""

    leases: dict[str, _Lease] = field(default_factory=dict)
    hour: int = 0
    hour_n: int = 0
    day: int = 0
    day_n: int = 0
    month: int = 0
    month_n: int = 0
    spent_day: int = 0
    spent_month: int = 0


_EMPTY: Final = _State()


class InProcessCaps:
    """Cap counters in this process (the default when DCE_REDIS_URL is unset).

    Each take is one synchronous function, so asyncio cannot interleave two takes: that is the
    atomicity. ``monotonic`` is the clock of lease expiry (injectable for tests).
    """

    def __init__(
        self,
        *,
        lease_s: float = DEFAULT_LEASE_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lease_s = lease_s
        self._mono = monotonic
        self._profiles: dict[str, _State] = {}
        self._endpoints: dict[tuple[str, str], dict[str, float]] = {}
        # (buyer_id, caller_key) -> (counted_at_ms, forget_after_ms)
        self._dups: dict[tuple[str, str], tuple[int, int]] = {}
        self._dup_sweep_at = 4096

    # -- eligibility -----------------------------------------------------------------------

    def room(
        self, spec: CapSpec, buckets: Buckets, amount: int, caller_key: str, now_ms: int
    ) -> str | None:
        """None if a take would succeed now, else the first refusing reason."""
        b = buckets
        st = self._profiles.get(spec.key, _EMPTY)
        lim = spec.concurrent
        if lim >= 0 and len(st.leases) >= lim and self._purge(st) >= lim:
            return CAP_CONCURRENT
        # Buckets roll over lazily: the state's counts belong to its own bucket, so a request in
        # a newer bucket sees 0. One in an older bucket (clock skew between calls) is counted
        # against the current bucket, never against an empty one.
        hour_now = b.hour <= st.hour
        lim = spec.hourly
        if lim >= 0 and (st.hour_n if hour_now else 0) >= lim:
            return CAP_HOURLY
        day_now = b.day <= st.day
        lim = spec.daily
        if lim >= 0 and (st.day_n if day_now else 0) >= lim:
            return CAP_DAILY
        month_now = b.month <= st.month
        lim = spec.monthly
        if lim >= 0 and (st.month_n if month_now else 0) >= lim:
            return CAP_MONTHLY
        lim = spec.budget_daily
        if lim >= 0 and (st.spent_day if day_now else 0) + amount > lim:
            return BUDGET_DAILY
        lim = spec.budget_monthly
        if lim >= 0 and (st.spent_month if month_now else 0) + amount > lim:
            return BUDGET_MONTHLY
        if spec.dup_window_ms >= 0 and caller_key:
            seen = self._dups.get((spec.buyer_id, caller_key))
            if seen is not None and now_ms - seen[0] < spec.dup_window_ms:
                return DUPLICATE
        if spec.endpoints_limited and not self._free_endpoints(spec):
            return ENDPOINT_BUSY
        return None

    def _purge(self, st: _State) -> int:
        """Drop expired leases (a lost release); returns the live count.

        Every lease lasts ``lease_s`` from its take, so insertion order is expiry order: the
        scan stops at the first live lease (O(1) when nothing expired, which is the rule).
        """
        now = self._mono()
        dead: list[str] = []
        for cid, lease in st.leases.items():
            if lease.expires > now:
                break
            dead.append(cid)
        for cid in dead:
            del st.leases[cid]
        return len(st.leases)

    def _free_endpoints(self, spec: CapSpec) -> tuple[str, ...]:
        free: list[str] = []
        for ep_id, limit in spec.endpoints:
            if limit <= 0:
                free.append(ep_id)
                continue
            leases = self._endpoints.get((spec.buyer_id, ep_id))
            if leases is None or len(leases) < limit:
                free.append(ep_id)
                continue
            now = self._mono()
            dead: list[str] = []
            for cid, exp in leases.items():  # expiry order, as in _purge
                if exp > now:
                    break
                dead.append(cid)
            for cid in dead:
                del leases[cid]
            if len(leases) < limit:
                free.append(ep_id)
        return tuple(free)

    # -- take / release ----------------------------------------------------------------------

    def take_now(self, call_id: str, request: TakeRequest) -> TakeOutcome:
        """Synchronous atomic take (what :meth:`take` runs for each request)."""
        spec = request.spec
        st = self._profiles.get(spec.key)
        if st is None:
            st = self._profiles[spec.key] = _State()
        held = st.leases.get(call_id)
        if held is not None:  # the same call taking twice: idempotent, nothing more is counted
            return TakeOutcome(True, None, held.endpoints)
        reason = self.room(
            spec, request.buckets, request.amount, request.caller_key, request.now_ms
        )
        if reason is not None:
            return TakeOutcome(False, reason)
        return TakeOutcome(True, None, self._apply(st, call_id, request))

    def force_take(self, call_id: str, request: TakeRequest, endpoints: tuple[str, ...]) -> None:
        """Record a slot without checking limits (RedisCaps mirrors what Redis granted)."""
        spec = request.spec
        st = self._profiles.get(spec.key)
        if st is None:
            st = self._profiles[spec.key] = _State()
        if call_id not in st.leases:
            self._apply(st, call_id, request, endpoints)

    def _apply(
        self,
        st: _State,
        call_id: str,
        request: TakeRequest,
        endpoints: tuple[str, ...] | None = None,
    ) -> tuple[str, ...]:
        spec, b, amount = request.spec, request.buckets, request.amount
        hour, day, month = b.hour, b.day, b.month
        if hour > st.hour:
            st.hour, st.hour_n = hour, 0
        if day > st.day:
            st.day, st.day_n, st.spent_day = day, 0, 0
        if month > st.month:
            st.month, st.month_n, st.spent_month = month, 0, 0
        st.hour_n += 1
        st.day_n += 1
        st.month_n += 1
        if amount:
            st.spent_day += amount
            st.spent_month += amount
        expires = self._mono() + self._lease_s
        if endpoints is None:
            endpoints = self._free_endpoints(spec) if spec.endpoints_limited else spec.endpoint_ids
        if spec.endpoints_limited:
            for ep_id, limit in spec.endpoints:
                if limit > 0 and ep_id in endpoints:
                    self._endpoints.setdefault((spec.buyer_id, ep_id), {})[call_id] = expires
        # The lease remembers the buckets it was counted in: a release after the hour rolled
        # over must not decrement the new hour.
        st.leases[call_id] = _Lease(expires, st.hour, st.day, st.month, amount, endpoints)
        return endpoints

    async def take(self, call_id: str, requests: Sequence[TakeRequest]) -> list[TakeOutcome]:
        """Take one slot per request; each is atomic (no await inside)."""
        return [self.take_now(call_id, r) for r in requests]

    def release(
        self,
        call_id: str,
        request: TakeRequest,
        *,
        counted: bool,
        spent: int,
        record_duplicate: bool,
    ) -> None:
        """End the slot; a second release of the same slot changes nothing."""
        spec = request.spec
        st = self._profiles.get(spec.key)
        lease = st.leases.pop(call_id, None) if st is not None else None
        if st is None or lease is None:
            return
        for ep_id in lease.endpoints:
            leases = self._endpoints.get((spec.buyer_id, ep_id))
            if leases is not None:
                leases.pop(call_id, None)
        if not counted:
            if lease.hour == st.hour and st.hour_n > 0:
                st.hour_n -= 1
            if lease.day == st.day and st.day_n > 0:
                st.day_n -= 1
            if lease.month == st.month and st.month_n > 0:
                st.month_n -= 1
        refund = lease.amount - spent
        if lease.day == st.day:
            st.spent_day = max(0, st.spent_day - refund)
        if lease.month == st.month:
            st.spent_month = max(0, st.spent_month - refund)
        if record_duplicate and spec.dup_window_ms >= 0 and request.caller_key:
            self._record_dup(spec, request.caller_key, request.now_ms)

    def _record_dup(self, spec: CapSpec, caller_key: str, now_ms: int) -> None:
        k = (spec.buyer_id, caller_key)
        old = self._dups.get(k)
        forget = now_ms + spec.dup_window_ms
        if old is not None:
            forget = max(forget, old[1])
        self._dups[k] = (now_ms, forget)
        if len(self._dups) >= self._dup_sweep_at:
            # Amortised sweep: forget callers whose longest window has passed.
            for key in [key for key, (_, until) in self._dups.items() if until <= now_ms]:
                del self._dups[key]
            self._dup_sweep_at = max(4096, 2 * len(self._dups))

    async def flush(self) -> None:
        """Nothing is ever pending in-process."""

    async def aclose(self) -> None:
        """Nothing to close."""

    # -- introspection for tests and /metrics -----------------------------------------------

    def in_flight(self, key: str) -> int:
        """Live concurrency leases of a profile."""
        st = self._profiles.get(key)
        return 0 if st is None else self._purge(st)

    def counts(self, key: str) -> tuple[int, int, int, int, int]:
        """(hour, day, month, spent_day, spent_month) of a profile's current buckets."""
        st = self._profiles.get(key, _EMPTY)
        return st.hour_n, st.day_n, st.month_n, st.spent_day, st.spent_month
