"""Fraud score 0-100 for every call, from the pay-per-call signals of domain.md §5.

Each signal that fires adds its weight; the score is the sum, capped at 100. A campaign rejects
the call (``rejected_fraud``) when the score is above its ``fraud_threshold`` (default 80), so
with the default weights no single signal rejects a call on its own: it takes two strong ones
or three weaker ones. The weights and why:

==================== ====== ==============================================================
signal               weight  fires when / source
==================== ====== ==============================================================
invalid_number         45   libphonenumber says the caller is not an assigned-range number
                            [CF-fraud, LV-dnc]; nothing a real consumer dials from.
unassignable_number    45   NANP N11 as NPA or NXX, or 555-0100..0199 (fictional range)
                            [CF-fraud]; spoofers' favourites.
rotation               35   >= 5 distinct callers from one 100-number block (same number but
                            the last two digits) within 10 min [TL-fraud: "last 2-3 digits
                            incremented to dodge exact-match dedupe"].
velocity_15m           30   >= 4 calls from one caller within 15 min [CIP-types: pumping].
stir_failed            30   an Identity header was present and did not verify, or upstream
                            said TN-Validation-Failed: an active spoofing hint [TL-fraud].
velocity_day           25   >= 20 calls from one caller within 24 h [CIP-types, CQ-game].
short_calls            25   on this trunk, >= 30 % of the last hour's ended calls (at least
                            10) ended within 5 s *under* the buyer's minimum duration
                            [TL-fraud: "clustered at the qualifying threshold (+/-5 s)"].
neighbour_spoof        20   caller NPA-NXX equals the called number's [FC-robo, CIP-types].
attestation_none       15   no attestation at all; weak alone, TDM hops strip it [NUM-scoop].
attestation_c          10   gateway attestation only [TL-fraud].
==================== ====== ==============================================================

Memory is bounded: each window keeps two fixed time buckets (the current and the previous one,
each as long as the window) and estimates the sliding count as ``current + previous x overlap``,
the sliding-window counter of rate limiters; each bucket holds at most ``max_keys`` keys and a
key that does not fit is not counted (``overflow`` says how often), so a flood cannot grow
memory without limit. Worst case: 10 buckets x ``max_keys`` entries (~50 MB at the default).
The estimate can be off by the previous bucket's unevenness; for thresholds of a handful of
calls that is the price of two dict reads per signal.
"""

from __future__ import annotations

from typing import Final

import msgspec

from compliance.numbers import NumberInfo
from compliance.stir import StirResult

__all__ = ["WEIGHTS", "FraudConfig", "FraudScore", "FraudScorer", "unassignable"]

WEIGHTS: Final[dict[str, int]] = {
    "invalid_number": 45,
    "unassignable_number": 45,
    "rotation": 35,
    "velocity_15m": 30,
    "stir_failed": 30,
    "velocity_day": 25,
    "short_calls": 25,
    "neighbour_spoof": 20,
    "attestation_none": 15,
    "attestation_c": 10,
}


class FraudConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Thresholds, windows and weights of the fraud signals (see the module docstring)."""

    velocity_15m: int = 4
    velocity_day: int = 20
    rotation_callers: int = 5
    rotation_window_s: int = 600
    short_window_s: int = 3600
    short_margin_s: int = 5
    short_min_calls: int = 10
    short_ratio_pct: int = 30
    max_keys: int = 50_000  # per time bucket; bounds memory under a flood
    weights: dict[str, int] = msgspec.field(default_factory=lambda: dict(WEIGHTS))


class FraudScore(msgspec.Struct, frozen=True, gc=False):
    """The score and the names of the signals that fired, in weight order."""

    score: int
    signals: tuple[str, ...]


_CLEAN: Final = FraudScore(0, ())


class _Window:
    """Per-key counts over a sliding window, estimated from two fixed buckets.

    The current bucket counts exactly; the previous one is weighted by how much of it still
    overlaps the window (the "sliding window counter" of rate limiters), so a lookup is two
    dict reads. A bucket holds at most ``max_keys`` keys. Retired buckets are emptied a few
    entries per call (``drain``) rather than freed at once, which would stall one call for as
    long as freeing tens of thousands of entries takes.
    """

    __slots__ = ("_cur", "_end", "_graveyard", "_prev", "_start", "max_keys", "overflow", "width")

    def __init__(self, width: int, max_keys: int) -> None:
        self.width = width
        self.max_keys = max_keys
        self._cur: dict[str, int] = {}
        self._prev: dict[str, int] = {}
        self._start = float("-inf")  # the current bucket is [_start, _end)
        self._end = float("-inf")
        self._graveyard: list[dict[str, int]] = []
        self.overflow = 0

    def _roll(self, ts: float) -> None:
        """Open the bucket holding ``ts`` when ``ts`` has passed the current one."""
        if ts < self._end:
            return  # inside, or before it: wall time stepped back, count in the newest bucket
        start = float(int(ts) // self.width * self.width)
        if self._prev:
            self._graveyard.append(self._prev)
        if start == self._end:
            self._prev = self._cur  # the next bucket: the current one becomes the previous
        else:
            if self._cur:
                self._graveyard.append(self._cur)
            self._prev = {}
        self._cur = {}
        self._start = start
        self._end = start + self.width

    def _weight(self, ts: float) -> float:
        # Share of the previous bucket still inside the window that ends at ts.
        w = (self._end - ts) / self.width
        return w if w < 1.0 else 1.0

    def add(self, key: str, ts: float) -> float:
        """Count one event for ``key`` at ``ts``; return the estimated count in the window."""
        if ts >= self._end:
            self._roll(ts)
        cur = self._cur
        n = cur.get(key, 0) + 1
        if n > 1 or len(cur) < self.max_keys:
            cur[key] = n
        else:
            self.overflow += 1
            n = 0
        p = self._prev.get(key)
        return n + p * self._weight(ts) if p else n

    def or_bits(self, key: str, ts: float, bits: int) -> int:
        """OR ``bits`` into ``key`` at ``ts``; return the OR over both buckets."""
        if ts >= self._end:
            self._roll(ts)
        cur = self._cur
        old = cur.get(key)
        if old is not None:
            bits |= old
            cur[key] = bits
        elif len(cur) < self.max_keys:
            cur[key] = bits
        else:
            self.overflow += 1
        return bits | self._prev.get(key, 0)

    def estimate(self, key: str, ts: float) -> float:
        """The key's estimated count in the window ending at ``ts``, without counting."""
        if ts >= self._end:
            self._roll(ts)
        p = self._prev.get(key)
        n = self._cur.get(key, 0)
        return n + p * self._weight(ts) if p else n

    def drain(self, budget: int = 16) -> None:
        """Empty retired buckets, at most ``budget`` entries per call."""
        graveyard = self._graveyard
        while graveyard and budget > 0:
            d = graveyard[-1]
            k = min(budget, len(d))
            for _ in range(k):
                d.popitem()
            budget -= k
            if not d:
                graveyard.pop()

    def keys(self) -> int:
        """Keys held in live buckets (memory accounting, tests)."""
        return len(self._cur) + len(self._prev)


def unassignable(number: NumberInfo) -> bool:
    """NANP numbers no consumer can have: N11 codes as NPA or NXX, and 555-0100..0199.

    ATIS-0300115 (NANP numbering guidelines) reserves N11 for service codes; 555-0100 to
    555-0199 are set aside for fiction.
    """
    e = number.e164  # "+1" NPA(2-4) NXX(5-7) line(8-11)
    if len(e) != 12 or not e.startswith("+1"):
        return False
    # One-character indexing returns cached strings; startswith with an offset parses its
    # arguments and costs twice as much, on every call's fraud score.
    if (e[3] == "1" and e[4] == "1") or (e[6] == "1" and e[7] == "1"):
        return True
    return e[5:10] == "55501"


class FraudScorer:
    """Scores calls and keeps the bounded history the velocity signals need."""

    def __init__(self, config: FraudConfig | None = None) -> None:
        c = config if config is not None else FraudConfig()
        self.config = c
        self._w = {**WEIGHTS, **c.weights}
        self._v15 = _Window(15 * 60, c.max_keys)
        self._vday = _Window(24 * 3600, c.max_keys)
        self._rot = _Window(max(1, c.rotation_window_s), c.max_keys)
        self._short_all = _Window(max(1, c.short_window_s), c.max_keys)
        self._short_near = _Window(max(1, c.short_window_s), c.max_keys)
        self._windows = (self._v15, self._vday, self._rot, self._short_all, self._short_near)
        # Signals in weight order, so the fired list needs no sort.
        self._order = {name: i for i, name in enumerate(sorted(self._w, key=lambda k: -self._w[k]))}

    @property
    def overflow(self) -> int:
        """Keys that did not fit their bucket since start (a flood, or ``max_keys`` too low)."""
        return sum(w.overflow for w in self._windows)

    def observe(
        self,
        *,
        caller: NumberInfo | None,
        called: NumberInfo | None,
        trunk_id: str,
        stir: StirResult,
        ts: float,
    ) -> FraudScore:
        """Count this call and score it. ``caller`` None means it did not parse.

        ``ts`` is wall time in seconds since the epoch (``now.timestamp()``).
        """
        c = self.config
        fired: list[str] = []
        if caller is None or not caller.valid:
            fired.append("invalid_number")
        if caller is not None:
            e = caller.e164
            if unassignable(caller):
                fired.append("unassignable_number")
            if self._v15.add(e, ts) >= c.velocity_15m:
                fired.append("velocity_15m")
            if self._vday.add(e, ts) >= c.velocity_day:
                fired.append("velocity_day")
            if len(e) > 4:
                # E.164 is all digits after the "+": the last two pick one of 100 bits.
                last2 = ord(e[-2]) * 10 + ord(e[-1]) - 528  # 528 == ord("0") * 11
                mask = self._rot.or_bits(e[:-2], ts, 1 << last2)
                if mask.bit_count() >= c.rotation_callers:
                    fired.append("rotation")
            if (
                called is not None
                and len(e) == 12
                and e.startswith("+1")
                and e != called.e164
                and e[:8] == called.e164[:8]
            ):
                fired.append("neighbour_spoof")
        if stir.attestation == "none":
            fired.append("attestation_none")
        elif stir.attestation == "C":
            fired.append("attestation_c")
        if stir.reason not in (None, "missing"):
            fired.append("stir_failed")
        if self._short_clustered(trunk_id, ts):
            fired.append("short_calls")
        if self._v15._graveyard or self._vday._graveyard or self._rot._graveyard:
            for win in self._windows:
                win.drain()
        if not fired:
            return _CLEAN
        w = self._w
        if len(fired) > 1:
            fired.sort(key=self._order.__getitem__)
        total = 0
        for name in fired:
            total += w[name]
        return FraudScore(min(100, total), tuple(fired))

    def _short_clustered(self, trunk_id: str, ts: float) -> bool:
        c = self.config
        if not (self._short_all._cur or self._short_all._prev):
            return False  # no ended calls with a minimum duration in the window at all
        total = self._short_all.estimate(trunk_id, ts)
        if total < c.short_min_calls:
            return False
        return self._short_near.estimate(trunk_id, ts) * 100 >= c.short_ratio_pct * total

    def record_call_end(
        self, trunk_id: str, duration_ms: int, min_duration_s: int, ts: float
    ) -> None:
        """Feed an ended, answered call: did it stop just under the buyer's minimum duration?

        Calls with no minimum (``min_duration_s == 0``) say nothing about clustering and are
        ignored.
        """
        if min_duration_s <= 0:
            return
        self._short_all.add(trunk_id, ts)
        margin_ms = self.config.short_margin_s * 1000
        if min_duration_s * 1000 - margin_ms <= duration_ms < min_duration_s * 1000:
            self._short_near.add(trunk_id, ts)
