"""Cap slots in Redis, shared by every switch instance (the model is in caps.py).

``RedisCaps`` keeps every key of one buyer under the hash tag ``{b:<buyer_id>}`` so that a
script's keys share one Cluster slot; time buckets carry TTLs (hour 2 h, day 2 d, month 32 d)
so that nothing needs sweeping. A take and a release are one Lua script each: check and
increment in one atomic step (storage.md §3: check-then-INCR over-admits, INCR-then-check
starves, Lua is exact). For eligibility, which must not wait on the network, it answers from a
local mirror of this process's own slots plus a short negative cache of takes Redis refused;
the Lua take stays the authority.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from exchange.caps import (
    CAPS_UNAVAILABLE,
    DAY_TTL_S,
    DEFAULT_LEASE_S,
    DUPLICATE,
    HOUR_TTL_S,
    MONTH_TTL_S,
    NO_LIMIT,
    Buckets,
    CapSpec,
    InProcessCaps,
    TakeOutcome,
    TakeRequest,
)
from exchange.errors import CapsUnavailable

logger = logging.getLogger(__name__)

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
