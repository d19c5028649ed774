"""Real-time bidding: ask every eligible RTB profile for a bid, in parallel, under one deadline.

Bid request: ``POST <rtb_url>`` with ``Content-Type: application/json``::

    {
      "id": "<call id>",
      "campaign_id": "c1",                 // null when the called number has no campaign
      "buyer_id": "b1", "profile_id": "p1",
      "called": "+18005550100",
      "caller": "+12125550100",            // ONLY when the campaign sets expose_caller
      "caller_state": "NY", "caller_area_code": "212",   // null when unknown
      "min_duration": 60,                  // the profile's configured minimum, seconds
      "reserve": "1.000000",               // campaign reserve, USD
      "tmax_ms": 100,                      // time left to answer (OpenRTB's tmax)
      "received_at": "2026-11-23T15:00:00+00:00"
    }

Bid response: status 200 and a JSON object::

    {"bid": "12.50", "expires_in": 30, "min_duration": 60}

* ``bid``: USD as a decimal *string* (``^[0-9]{1,7}(\\.[0-9]{1,6})?$``; a JSON number is
  refused, as money is never a float); ``"0"`` declines.
* ``expires_in``: seconds (0-3600, default 0) during which this answer stands for the same
  caller: further calls from that caller to that profile reuse it instead of pinging again
  (Ringba returns a cached bid the same way, domain.md §2).
* ``min_duration``: seconds (0-3600), optional: the billable minimum this bid is for; default
  the profile's. Other fields are ignored.

Only answers complete before the deadline (DCE_AUCTION_TIMEOUT, from the start of the round)
count. A late, non-200, non-JSON, oversized or otherwise malformed answer, or a connection
error, puts that bidder out of this auction (``rtb_no_bid`` in the auction record) and is
counted in :attr:`RtbClient.stats`. 204 means "no bid". Pings for the same (profile, caller)
already in flight are shared rather than sent twice.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Annotated, Any, Final

import aiohttp
import msgspec

from exchange.money import to_micros

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S: Final = 0.1
MAX_BODY: Final = 16 * 1024

BidText = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,7}(\.[0-9]{1,6})?$")]
Seconds = Annotated[int, msgspec.Meta(ge=0, le=3600)]


class _WireAnswer(msgspec.Struct):
    bid: BidText
    expires_in: Seconds = 0
    min_duration: Seconds | None = None


_DECODER: Final = msgspec.json.Decoder(_WireAnswer)
_ENCODER: Final = msgspec.json.Encoder()


class RtbAnswer(msgspec.Struct, frozen=True, gc=False):
    """A valid answer: bid in micro-dollars (0 = declined), optional minimum duration."""

    bid: int
    min_duration: int | None = None
    expires_in: int = 0


class RtbRequest(msgspec.Struct, frozen=True, gc=False):
    """One ping: to ``url`` for profile ``key``; ``caller`` keys the answer cache ("" = none)."""

    key: str
    url: str
    caller: str
    body: dict[str, Any]


def parse_answer(data: bytes) -> RtbAnswer:
    """Decode a bid response body.

    Raises:
        ValueError: not JSON, wrong types, a bid that is not a decimal string, out of range.
    """
    try:
        wire = _DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"malformed bid response: {exc}") from exc
    return RtbAnswer(
        bid=to_micros(Decimal(wire.bid)),
        min_duration=wire.min_duration,
        expires_in=wire.expires_in,
    )


class RtbClient:
    """Pings RTB bidders with aiohttp under one deadline and caches answers per caller.

    Args:
        timeout: the deadline in seconds (DCE_AUCTION_TIMEOUT, default 100 ms).
        max_body: answers longer than this are malformed.
        max_cache: cached answers kept at most (expired ones go first).
        monotonic: clock for cache expiry (injectable for tests).
        session: an aiohttp session to use; by default one is created on first use.
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_body: int = MAX_BODY,
        max_cache: int = 100_000,
        monotonic: Callable[[], float] = time.monotonic,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.timeout = timeout
        self._max_body = max_body
        self._max_cache = max_cache
        self._mono = monotonic
        self._session = session
        self._own_session = session is None
        self._cache: dict[tuple[str, str], tuple[RtbAnswer, float]] = {}
        # (profile, caller) -> the ping in flight and its deadline
        self._inflight: dict[tuple[str, str], tuple[asyncio.Task[RtbAnswer | None], float]] = {}
        self._tasks: set[asyncio.Task[RtbAnswer | None]] = set()
        self.stats: dict[str, int] = dict.fromkeys(
            ("requests", "cache_hits", "answers", "declined", "late", "malformed", "failed"), 0
        )

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=None),
            )
            self._own_session = True
        return self._session

    def cached(self, key: str, caller: str) -> RtbAnswer | None:
        """A still valid cached answer of profile ``key`` for ``caller``."""
        if not caller:
            return None
        hit = self._cache.get((key, caller))
        if hit is None:
            return None
        if hit[1] <= self._mono():
            del self._cache[(key, caller)]
            return None
        return hit[0]

    def clear_cache(self) -> None:
        """Forget cached answers (the engine calls this when the config changes)."""
        self._cache.clear()

    async def collect(self, requests: Sequence[RtbRequest]) -> dict[str, RtbAnswer]:
        """Ping all ``requests`` in parallel; the answers that came in time, by profile key."""
        out: dict[str, RtbAnswer] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        waiting: dict[asyncio.Task[RtbAnswer | None], list[RtbRequest]] = {}
        for r in requests:
            hit = self.cached(r.key, r.caller)
            if hit is not None:
                self.stats["cache_hits"] += 1
                out[r.key] = hit
                continue
            ck = (r.key, r.caller)
            shared = self._inflight.get(ck) if r.caller else None
            # Share a ping in flight only while it can still answer: one whose deadline has
            # passed is about to give up, and this call deserves its own chance.
            if shared is not None and shared[1] > loop.time():
                task = shared[0]
            else:
                task = loop.create_task(self._ping(r, deadline))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                if r.caller:
                    self._inflight[ck] = (task, deadline)
                    task.add_done_callback(functools.partial(self._forget_inflight, ck))
            waiting.setdefault(task, []).append(r)
        if waiting:
            # Pings stop themselves at their deadline (asyncio.timeout_at in _ping), so nothing
            # is left running for long.
            done, _ = await asyncio.wait(waiting.keys(), timeout=max(0.0, deadline - loop.time()))
            for task in done:
                answer = None if task.cancelled() else task.result()
                if answer is not None:
                    for r in waiting[task]:
                        out[r.key] = answer
        return out

    def _forget_inflight(self, ck: tuple[str, str], task: asyncio.Task[RtbAnswer | None]) -> None:
        entry = self._inflight.get(ck)
        if entry is not None and entry[0] is task:
            del self._inflight[ck]

    async def _ping(self, r: RtbRequest, deadline: float) -> RtbAnswer | None:
        """One bid request; None for anything but a valid answer in time."""
        self.stats["requests"] += 1
        try:
            tmax_ms = max(0, int((deadline - asyncio.get_running_loop().time()) * 1000))
            async with asyncio.timeout_at(deadline):
                data = await self._post(r, tmax_ms)
        except TimeoutError:
            self.stats["late"] += 1
            return None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            self.stats["failed"] += 1
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("rtb bidder failed", extra={"peer": r.url, "rule": str(exc)})
            return None
        except Exception:
            # The network edge: whatever a bidder makes the client raise, it is only out of
            # this auction. Logged with the traceback, since it is not a known failure mode.
            self.stats["failed"] += 1
            logger.warning("rtb bidder raised", exc_info=True, extra={"peer": r.url})
            return None
        if data is None:
            self.stats["declined"] += 1
            return None
        try:
            answer = parse_answer(data)
        except ValueError as exc:
            self.stats["malformed"] += 1
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("rtb answer malformed", extra={"peer": r.url, "rule": str(exc)})
            return None
        self.stats["answers" if answer.bid > 0 else "declined"] += 1
        if answer.expires_in > 0 and r.caller:
            self._store(r.key, r.caller, answer)
        return answer

    async def _post(self, r: RtbRequest, tmax_ms: int) -> bytes | None:
        body = {**r.body, "tmax_ms": tmax_ms}
        async with self._get_session().post(
            r.url,
            data=_ENCODER.encode(body),
            headers={"Content-Type": "application/json"},
            allow_redirects=False,
        ) as resp:
            if resp.status == 204:
                return None
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            if resp.content_length is not None and resp.content_length > self._max_body:
                raise ValueError(f"body of {resp.content_length} bytes exceeds {self._max_body}")
            chunks: list[bytes] = []
            size = 0
            while True:
                chunk = await resp.content.read(4096)
                if not chunk:
                    break
                size += len(chunk)
                if size > self._max_body:
                    raise ValueError(f"body exceeds {self._max_body} bytes")
                chunks.append(chunk)
            return b"".join(chunks)

    def _store(self, key: str, caller: str, answer: RtbAnswer) -> None:
        if len(self._cache) >= self._max_cache:
            now = self._mono()
            for k in [k for k, (_, exp) in self._cache.items() if exp <= now]:
                del self._cache[k]
            if len(self._cache) >= self._max_cache:
                # Still full of live answers: drop the oldest half (dicts keep insertion order).
                for k in list(self._cache)[: len(self._cache) // 2]:
                    del self._cache[k]
        self._cache[(key, caller)] = (answer, self._mono() + answer.expires_in)

    async def aclose(self) -> None:
        """Wait for pings still running (they end at their deadline) and close the session."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._session is not None and self._own_session:
            await self._session.close()
