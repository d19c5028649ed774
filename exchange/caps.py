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

The Redis backend (``RedisCaps``) keeps every key of one buyer under the hash tag
``{b:<buyer_id>}`` so that a script's keys share one Cluster slot; time buckets carry TTLs
(hour 2 h, day 2 d, month 32 d) so that nothing needs sweeping. For eligibility, which must not
wait on the network, it answers from a local mirror of this process's own slots plus a short
negative cache of takes Redis refused; the Lua take stays the authority.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from exchange.errors import CapsUnavailable

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


# ----------------------------------------------------------------------------------------------
# Redis

# KEYS: 1 conc zset, 2 hour, 3 day, 4 month, 5 spent day, 6 spent month, 7 duplicate, 8.. zsets
#       of the endpoints that have a max_concurrent
# ARGV: 1 call_id, 2 lease_ms, 3 conc, 4 hourly, 5 daily, 6 monthly, 7 budget_day,
#       8 budget_month, 9 amount, 10 dup_window_ms, 11 now_ms (call wall time), 12 hour_ttl,
#       13 day_ttl, 14 month_ttl, 15 has an unlimited endpoint (0|1), 16.. endpoint limits
# Returns {1, 'ok'|'already', {indexes of endpoint keys taken, 1-based}} or {0, reason}.
TAKE_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cid = ARGV[1]
local neps = #KEYS - 7
if redis.call('ZSCORE', KEYS[1], cid) then
  local held = {}
  for i = 1, neps do
    if redis.call('ZSCORE', KEYS[7 + i], cid) then held[#held + 1] = i end
  end
  return {1, 'already', held}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local lim = tonumber(ARGV[3])
if lim >= 0 and redis.call('ZCARD', KEYS[1]) >= lim then return {0, 'cap_concurrent'} end
local names = {'cap_hourly', 'cap_daily', 'cap_monthly'}
for i = 2, 4 do
  lim = tonumber(ARGV[i + 2])
  if lim >= 0 and tonumber(redis.call('GET', KEYS[i]) or '0') >= lim then
    return {0, names[i - 1]}
  end
end
local amount = tonumber(ARGV[9])
lim = tonumber(ARGV[7])
if lim >= 0 and tonumber(redis.call('GET', KEYS[5]) or '0') + amount > lim then
  return {0, 'budget_daily'}
end
lim = tonumber(ARGV[8])
if lim >= 0 and tonumber(redis.call('GET', KEYS[6]) or '0') + amount > lim then
  return {0, 'budget_monthly'}
end
local win = tonumber(ARGV[10])
if win >= 0 then
  local at = redis.call('GET', KEYS[7])
  if at and tonumber(ARGV[11]) - tonumber(at) < win then return {0, 'duplicate'} end
end
local free = {}
for i = 1, neps do
  local k = KEYS[7 + i]
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  if redis.call('ZCARD', k) < tonumber(ARGV[15 + i]) then free[#free + 1] = i end
end
if neps > 0 and #free == 0 and ARGV[15] == '0' then return {0, 'endpoint_busy'} end
local lease = tonumber(ARGV[2])
local exp = now + lease
redis.call('ZADD', KEYS[1], exp, cid)
redis.call('PEXPIRE', KEYS[1], lease)
for i = 2, 4 do
  if redis.call('INCR', KEYS[i]) == 1 then redis.call('EXPIRE', KEYS[i], ARGV[i + 10]) end
end
if amount ~= 0 then
  redis.call('INCRBY', KEYS[5], amount)
  redis.call('EXPIRE', KEYS[5], ARGV[13])
  redis.call('INCRBY', KEYS[6], amount)
  redis.call('EXPIRE', KEYS[6], ARGV[14])
end
for _, i in ipairs(free) do
  redis.call('ZADD', KEYS[7 + i], exp, cid)
  redis.call('PEXPIRE', KEYS[7 + i], lease)
end
return {1, 'ok', free}
"""

# KEYS: as TAKE. ARGV: 1 call_id, 2 uncount (0|1), 3 refund, 4 duplicate at_ms (-1: none),
#       5 duplicate ttl_ms.  Returns 1 if the slot was released now, 0 if it was already gone.
RELEASE_LUA: Final = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
for i = 8, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
if ARGV[2] == '1' then
  for i = 2, 4 do
    if tonumber(redis.call('GET', KEYS[i]) or '0') > 0 then redis.call('DECR', KEYS[i]) end
  end
end
local refund = tonumber(ARGV[3])
if refund ~= 0 then
  for i = 5, 6 do
    if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('DECRBY', KEYS[i], refund) end
  end
end
local at = tonumber(ARGV[4])
if at >= 0 then
  local ttl = tonumber(ARGV[5])
  local old = redis.call('PTTL', KEYS[7])
  if old > ttl then ttl = old end
  redis.call('SET', KEYS[7], at, 'PX', ttl)
end
return 1
"""


def _keys(prefix: str, request: TakeRequest) -> list[str]:
    spec, b = request.spec, request.buckets
    # The hash tag {b:<buyer>} keeps one buyer's keys in one Cluster slot. Ids may contain ":"
    # but never "/" or braces, so "/" ends an id and no two keys can collide.
    base = f"{prefix}{{b:{spec.buyer_id}}}:"
    p = f"{base}p:{spec.profile_id}/"
    keys = [
        p + "conc",
        f"{p}h:{b.hour}",
        f"{p}d:{b.day}",
        f"{p}m:{b.month}",
        f"{p}bd:{b.day}",
        f"{p}bm:{b.month}",
        f"{base}dup:{request.caller_key or '-'}",
    ]
    keys.extend(f"{base}ep:{ep}/conc" for ep, limit in spec.endpoints if limit > 0)
    return keys


class RedisCaps:
    """Cap counters shared by several switch instances through Redis (DCE_REDIS_URL).

    One Lua script per take and per release; several takes of one call go in one pipeline (one
    round trip). Releases are scheduled as tasks (``settle`` is synchronous) and retried a few
    times; a release that never arrives is bounded by the lease expiry and the bucket TTLs.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "dce:cap:",
        lease_s: float = DEFAULT_LEASE_S,
        max_connections: int = 64,
        pool_timeout: float = 5.0,
        full_ttl_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        # storage.md §3: the plain pool raises MaxConnectionsError past max_connections under a
        # burst; the blocking pool queues instead.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=pool_timeout
        )
        self._redis: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self._take_script = self._redis.register_script(TAKE_LUA)
        self._release_script = self._redis.register_script(RELEASE_LUA)
        self._prefix = prefix
        self._lease_ms = int(lease_s * 1000)
        self._mono = monotonic
        self._full_ttl = full_ttl_s
        # Local knowledge for eligibility: this process's own slots (a lower bound of the shared
        # counts) and the profiles Redis recently refused.
        self._mirror = InProcessCaps(lease_s=lease_s, monotonic=monotonic)
        self._full: dict[str, tuple[str, float]] = {}
        self._pending: set[asyncio.Task[None]] = set()

    def room(
        self, spec: CapSpec, buckets: Buckets, amount: int, caller_key: str, now_ms: int
    ) -> str | None:
        """Local estimate: a recent refusal from Redis, else this process's own counts."""
        full = self._full.get(spec.key)
        if full is not None:
            if full[1] > self._mono():
                return full[0]
            del self._full[spec.key]
        return self._mirror.room(spec, buckets, amount, caller_key, now_ms)

    async def take(self, call_id: str, requests: Sequence[TakeRequest]) -> list[TakeOutcome]:
        """Run one TAKE script per request in one pipelined round trip.

        Raises:
            CapsUnavailable: Redis did not answer; nothing can be assumed taken (the caller
                releases every request, which is harmless for slots that were never taken).
        """
        if not requests:
            return []
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for r in requests:
                    await self._take_script(
                        keys=_keys(self._prefix, r), args=self._take_args(call_id, r), client=pipe
                    )
                replies: list[Any] = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise CapsUnavailable(f"redis take failed: {exc}") from exc
        out: list[TakeOutcome] = []
        for r, reply in zip(requests, replies, strict=True):
            out.append(self._outcome(call_id, r, reply))
        return out

    def _take_args(self, call_id: str, r: TakeRequest) -> list[str | int]:
        spec = r.spec
        limited = [limit for _, limit in spec.endpoints if limit > 0]
        unlimited = len(limited) < len(spec.endpoints)
        return [
            call_id,
            self._lease_ms,
            spec.concurrent,
            spec.hourly,
            spec.daily,
            spec.monthly,
            spec.budget_daily,
            spec.budget_monthly,
            r.amount,
            spec.dup_window_ms if r.caller_key else NO_LIMIT,
            r.now_ms,
            HOUR_TTL_S,
            DAY_TTL_S,
            MONTH_TTL_S,
            1 if unlimited else 0,
            *limited,
        ]

    def _outcome(self, call_id: str, r: TakeRequest, reply: Any) -> TakeOutcome:
        spec = r.spec
        if isinstance(reply, Exception):
            logger.warning(
                "redis cap take failed", extra={"buyer_id": spec.buyer_id, "rule": str(reply)}
            )
            return TakeOutcome(False, CAPS_UNAVAILABLE)
        if int(reply[0]) != 1:
            reason = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
            if reason != DUPLICATE:  # a duplicate is about one caller, not the profile
                self._full[spec.key] = (reason, self._mono() + self._full_ttl)
            return TakeOutcome(False, reason)
        limited = [ep for ep, limit in spec.endpoints if limit > 0]
        taken = {limited[int(i) - 1] for i in reply[2]}
        eps = tuple(ep for ep, limit in spec.endpoints if limit <= 0 or ep in taken)
        self._mirror.force_take(call_id, r, eps)
        return TakeOutcome(True, None, eps)

    def release(
        self,
        call_id: str,
        request: TakeRequest,
        *,
        counted: bool,
        spent: int,
        record_duplicate: bool,
    ) -> None:
        """Schedule the RELEASE script (idempotent in Redis) and update the local mirror."""
        self._mirror.release(
            call_id, request, counted=counted, spent=spent, record_duplicate=record_duplicate
        )
        self._full.pop(request.spec.key, None)  # a slot may have just become free
        spec = request.spec
        dup_at = (
            request.now_ms
            if record_duplicate and spec.dup_window_ms >= 0 and request.caller_key
            else NO_LIMIT
        )
        args: list[str | int] = [
            call_id,
            0 if counted else 1,
            request.amount - spent,
            dup_at,
            max(spec.dup_window_ms, 1),
        ]
        task = asyncio.get_running_loop().create_task(
            self._release(call_id, _keys(self._prefix, request), args)
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _release(self, call_id: str, keys: list[str], args: list[str | int]) -> None:
        delay = 0.05
        for attempt in range(5):  # 0.05 + 0.1 + 0.2 + 0.4 + 0.8 s; then the lease expiry does it
            try:
                await self._release_script(keys=keys, args=args)
                return
            except (RedisError, OSError) as exc:
                logger.warning(
                    "redis cap release failed",
                    extra={"call_id": call_id, "rule": str(exc), "attempt": attempt},
                )
                await asyncio.sleep(delay)
                delay *= 2
        logger.error("redis cap release given up; the lease expires", extra={"call_id": call_id})

    async def flush(self) -> None:
        """Wait for scheduled releases."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def aclose(self) -> None:
        """Flush releases and close the pool."""
        await self.flush()
        await self._redis.aclose()
