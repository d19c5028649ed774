"""Per-source message rate limits with temporary bans, like Kamailio's pike module (sans-IO).

Theory of operation
-------------------
The transports count every message a source sends (a UDP datagram, a framed TCP message, a
WebSocket message) with :meth:`Pike.hit`. Time is cut into sampling windows of ``window``
seconds (Kamailio's ``sampling_time_unit``); a source that sends more than ``limit`` messages
within one window (``reqs_density_per_unit``) is banned for ``ban`` seconds. While a source is
banned, the transports drop what it sends before anything reads it: one ``dict`` lookup
(``host in pike.banned``) and a counter, the cheapest check there is in Python. A window
starts at the first message after the previous one ended, so a source may send up to twice
``limit`` across a window boundary before it is caught.

Trusted sources are never banned. ``trusted(host)`` (the application's: trunk source
addresses and networks, buyer endpoint hosts) is asked only when a source crosses the limit,
at most once per window per source, so the common path never pays for it. A source that
proved a password (digest) is trusted too, for ``trust_ttl`` after its last success
(:meth:`Pike.trust`). Why never rather than a higher limit: UDP source addresses can be
forged, and a limit that could ban a trunk's address would let anyone cut that trunk off by
flooding in its name. A trunk's own excess is the business of its per-trunk limits and of
the overload control, which answer 503 instead of going silent.

Memory is bounded: the counts live in one ``dict`` per window, replaced (not emptied) when the
window ends so that a burst's table is freed, and at most ``max_sources`` sources are tracked
per window. Beyond that, new sources pass uncounted (``stats.untracked``): a flood from forged,
ever-changing sources is beyond what per-source limits can stop, and is the overload control's
to shed.

Bans end by :meth:`handle_timer` at :meth:`get_timer`, never later than ``ban`` seconds after
they started. :meth:`bans_to_push` hands the bans started since its last call to whoever
mirrors them elsewhere (an nftables set, so that the kernel drops the packets instead).
:meth:`ban` bans a source on another module's word (e.g. repeated authentication failures).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Ban", "Pike", "PikeConfig", "PikeStats"]


@dataclass(frozen=True, slots=True)
class PikeConfig:
    """Limits; see the module docstring. Raises ValueError on a value that cannot work."""

    window: float = 2.0  # seconds per sampling window
    limit: int = 100  # messages per window per source before a ban
    ban: float = 60.0  # seconds a ban lasts
    trust_ttl: float = 3600.0  # seconds a source stays trusted after a digest success
    max_sources: int = 100_000  # sources counted per window

    def __post_init__(self) -> None:
        if self.window <= 0:
            raise ValueError(f"pike window must be positive, got {self.window}")
        if self.limit < 1:
            raise ValueError(f"pike limit must be at least 1, got {self.limit}")
        if self.ban <= 0:
            raise ValueError(f"pike ban must be positive, got {self.ban}")
        if self.max_sources < 1:
            raise ValueError(f"pike max_sources must be at least 1, got {self.max_sources}")


@dataclass(frozen=True, slots=True)
class Ban:
    """A ban that started: ``host`` is dropped for ``seconds`` from ``at``."""

    host: str
    seconds: float
    at: float
    reason: str


@dataclass(slots=True)
class PikeStats:
    """Counters for /metrics (the packets dropped are counted by the transports)."""

    bans: int = 0  # bans started (sources banned), every reason
    untracked: int = 0  # messages let through uncounted: the window's table was full
    trusted_over_limit: int = 0  # times a trusted source crossed the limit (never banned)


@dataclass(slots=True)
class Pike:
    """Counts messages per source and bans those over the limit (module docstring).

    Args:
        config: the limits.
        trusted: ``trusted(host)`` is True for sources that are never banned.
    """

    config: PikeConfig = field(default_factory=PikeConfig)
    trusted: Callable[[str], bool] = lambda host: False
    #: host -> when its ban ends. Transports hold this very dict and test ``host in banned``;
    #: it is never replaced, only changed.
    banned: dict[str, float] = field(default_factory=dict)
    stats: PikeStats = field(default_factory=PikeStats)
    _counts: dict[str, int] = field(default_factory=dict)
    _exempt: set[str] = field(default_factory=set)  # trusted sources over the limit, this window
    _window_end: float = float("-inf")
    _ends: list[tuple[float, str]] = field(default_factory=list)  # heap of (ban end, host)
    _proven: dict[str, float] = field(default_factory=dict)  # host -> trusted until
    _proven_sweep: float = float("inf")  # the earliest end of a proven source's trust
    _started: list[Ban] = field(default_factory=list)

    # ------------------------------------------------------------------ inputs

    def hit(self, host: str, now: float) -> bool:
        """Count one message from ``host``. False: it just got banned; drop the message.

        Call it only for a source that is not banned (the caller has checked ``banned``).
        """
        if now >= self._window_end:
            self._new_window(now)
        counts = self._counts
        n = counts.get(host)
        if n is None:
            if len(counts) >= self.config.max_sources:
                self.stats.untracked += 1
                return True
            counts[host] = 1
            return True
        n += 1
        counts[host] = n
        if n <= self.config.limit or host in self._exempt:
            return True
        # Over the limit: once per window per source from here on.
        if self.is_trusted(host, now):
            self._exempt.add(host)
            self.stats.trusted_over_limit += 1
            return True
        self._start_ban(host, now, self.config.ban, "rate")
        return False

    def ban(self, host: str, now: float, seconds: float | None = None, reason: str = "") -> bool:
        """Ban ``host`` for ``seconds`` (default: the configured ban) on another module's word.

        Returns False, banning nothing, for a trusted source; a ban already running is
        extended if this one ends later.
        """
        if self.is_trusted(host, now):
            return False
        self._start_ban(host, now, self.config.ban if seconds is None else seconds, reason)
        return True

    def unban(self, host: str) -> None:
        """Lift a ban now (an operator's decision); its heap entry is skipped when due."""
        self.banned.pop(host, None)

    def trust(self, host: str, now: float) -> None:
        """``host`` proved a password: never ban it for ``trust_ttl`` from now."""
        until = now + self.config.trust_ttl
        self._proven[host] = until
        self._proven_sweep = min(self._proven_sweep, until)
        self.banned.pop(host, None)

    def is_trusted(self, host: str, now: float) -> bool:
        until = self._proven.get(host)
        if until is not None and until > now:
            return True
        return self.trusted(host)

    def handle_timer(self, now: float) -> None:
        """Lift the bans that are over, drop an ended window's counts, forget old trust."""
        ends = self._ends
        banned = self.banned
        while ends and ends[0][0] <= now:
            until, host = heapq.heappop(ends)
            if banned.get(host) == until:
                del banned[host]
        if now >= self._window_end and self._counts:
            self._new_window(now)
        if now >= self._proven_sweep:
            self._proven = {h: t for h, t in self._proven.items() if t > now}
            self._proven_sweep = min(self._proven.values(), default=float("inf"))

    # ----------------------------------------------------------------- outputs

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` has work: a ban to lift or a window's counts to free."""
        when = self._proven_sweep
        if self._ends:
            when = min(when, self._ends[0][0])
        if self._counts:
            when = min(when, self._window_end)
        return None if when == float("inf") else when

    def bans_to_push(self) -> list[Ban]:
        """The bans started since the last call (for a kernel set), oldest first."""
        started, self._started = self._started, []
        return started

    @property
    def active(self) -> int:
        """Sources banned right now."""
        return len(self.banned)

    # ----------------------------------------------------------------- internal

    def _new_window(self, now: float) -> None:
        # A new dict, not clear(): a flood's big table is freed instead of kept at its size.
        self._counts = {}
        self._exempt = set()
        self._window_end = now + self.config.window

    def _start_ban(self, host: str, now: float, seconds: float, reason: str) -> None:
        until = now + seconds
        current = self.banned.get(host)
        if current is not None and current >= until:
            return
        self.banned[host] = until
        heapq.heappush(self._ends, (until, host))
        if current is None:
            self.stats.bans += 1
        self._started.append(Ban(host=host, seconds=seconds, at=now, reason=reason or "rate"))
