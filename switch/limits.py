"""Per-trunk call limits: new calls per second (a token bucket) and concurrent calls.

Theory of operation
-------------------
:meth:`TrunkLimiter.admit` is asked once per admitted INVITE, with the INVITE's arrival time
``now``, and names the rule it breaks, or ``None``:

* ``trunk_concurrent``: the trunk already has ``max_concurrent`` live calls. Checked first: it
  is the lasting condition, and a call it refuses spends no CPS token.
* ``trunk_cps``: the trunk's bucket is empty. The bucket holds up to ``burst`` tokens (default
  ``ceil(max_cps)``, one second's worth) and refills at ``max_cps`` per second; each call let
  through takes one. A trunk sending at its rate, with some jitter, is never refused; one
  sending faster gets exactly ``max_cps`` calls per second through.

A refused call takes nothing from either limit. The caller then answers it 503 (and writes its
CDR); that call's end must not be counted as the end of a live one.

Counting live calls needs to know when calls start and end, which only the switch core knows.
The glue reports them: :meth:`started` when a call became live (the core's ``RouteCall``),
:meth:`ended` when any call ended (``CallEnded``; calls never started are ignored, which covers
those refused here or by the core's overload check), and :meth:`settled` once it has carried
out every effect of the messages fed so far. Between an admission and the next
:meth:`settled`, the admitted call counts as *pending*, so INVITEs fed in one batch (several
messages of one TCP read) cannot overshoot the limit. An admitted INVITE that never became a
call (e.g. answered 400 for a bad Request-URI) is forgotten at :meth:`settled`.

Limits change with the trunks (:meth:`configure`); live counts and buckets survive the change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import msgspec

__all__ = ["CONCURRENT", "CPS", "TrunkLimit", "TrunkLimiter"]

CPS = "trunk_cps"
CONCURRENT = "trunk_concurrent"


class TrunkLimit(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One trunk's limits; ``None`` is no limit."""

    max_cps: float | None = None
    burst: int | None = None  # tokens; None: ceil(max_cps)
    max_concurrent: int | None = None

    def __post_init__(self) -> None:
        if self.max_cps is not None and not (self.max_cps > 0 and math.isfinite(self.max_cps)):
            raise ValueError(f"max_cps must be positive, got {self.max_cps}")
        if self.burst is not None and self.burst < 1:
            raise ValueError(f"burst must be >= 1, got {self.burst}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {self.max_concurrent}")

    @property
    def capacity(self) -> float:
        """The bucket's size in tokens."""
        if self.burst is not None:
            return float(self.burst)
        return float(max(1, math.ceil(self.max_cps or 1.0)))


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class TrunkLimiter:
    """Per-trunk buckets and live-call counts (see the module docstring)."""

    def __init__(self, limits: Mapping[str, TrunkLimit] | None = None) -> None:
        self._limits: dict[str, TrunkLimit] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._live: dict[str, int] = {}  # trunk -> live calls (started, not ended)
        self._pending: dict[str, int] = {}  # trunk -> admitted since the last settled()
        self._calls: dict[str, str] = {}  # live call id -> trunk
        # (trunk, rule) -> calls refused; read by /metrics
        self.refused: dict[tuple[str, str], int] = {}
        self.configure(limits or {})

    def configure(self, limits: Mapping[str, TrunkLimit]) -> None:
        """The trunks' limits changed. Trunks without limits may be left out."""
        self._limits = {tid: lim for tid, lim in limits.items() if lim != _UNLIMITED}
        for tid in list(self._buckets):
            limit = self._limits.get(tid)
            if limit is None or limit.max_cps is None:
                del self._buckets[tid]
            else:
                bucket = self._buckets[tid]
                bucket.tokens = min(bucket.tokens, limit.capacity)

    def admit(self, trunk_id: str, now: float) -> str | None:
        """A new INVITE of ``trunk_id`` arrived at ``now``: the rule it breaks, or None (it is
        then counted as pending until :meth:`settled`)."""
        limit = self._limits.get(trunk_id)
        if limit is not None:
            rule = self._check(trunk_id, limit, now)
            if rule is not None:
                key = (trunk_id, rule)
                self.refused[key] = self.refused.get(key, 0) + 1
                return rule
        self._pending[trunk_id] = self._pending.get(trunk_id, 0) + 1
        return None

    def _check(self, trunk_id: str, limit: TrunkLimit, now: float) -> str | None:
        if limit.max_concurrent is not None and self.live(trunk_id) >= limit.max_concurrent:
            return CONCURRENT
        if limit.max_cps is None:
            return None
        capacity = limit.capacity
        bucket = self._buckets.get(trunk_id)
        if bucket is None:
            bucket = self._buckets[trunk_id] = _Bucket(capacity, now)
        elif now > bucket.stamp:
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.stamp) * limit.max_cps)
            bucket.stamp = now
        if bucket.tokens < 1.0:
            return CPS
        bucket.tokens -= 1.0
        return None

    # -- what the glue reports -----------------------------------------------------------------

    def started(self, call_id: str, trunk_id: str) -> None:
        """Call ``call_id`` of ``trunk_id`` became live."""
        if call_id in self._calls:
            return
        self._calls[call_id] = trunk_id
        self._live[trunk_id] = self._live.get(trunk_id, 0) + 1
        pending = self._pending.get(trunk_id, 0)
        if pending > 1:
            self._pending[trunk_id] = pending - 1
        elif pending:
            del self._pending[trunk_id]

    def ended(self, call_id: str) -> None:
        """A call ended; one that never started (refused at once) changes nothing."""
        trunk_id = self._calls.pop(call_id, None)
        if trunk_id is None:
            return
        left = self._live[trunk_id] - 1
        if left:
            self._live[trunk_id] = left
        else:
            del self._live[trunk_id]

    def settled(self) -> None:
        """Every admission so far has become a live call or been refused."""
        if self._pending:
            self._pending.clear()

    def live(self, trunk_id: str) -> int:
        """Live calls of the trunk, pending admissions included."""
        return self._live.get(trunk_id, 0) + self._pending.get(trunk_id, 0)

    def live_by_trunk(self) -> dict[str, int]:
        """Trunk -> live calls, for /metrics (trunks with none are left out)."""
        return dict(self._live)


_UNLIMITED = TrunkLimit()
