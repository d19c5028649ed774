"""Buyer endpoint health: OPTIONS probes, up/down state, and routing that skips what is down.

:class:`HealthTracker` is sans-IO (every input takes ``now``, monotonic seconds): it decides
which endpoint URIs to probe when, counts answers and silences, and says which are down.
:class:`Prober` is its asyncio driver: it sends the probes through the switch core
(``SwitchCore.send_options``), feeds the answers back (the pump dispatches
``ProbeAnswered``), and hands the down set to the exchange (``Exchange.set_down``), which
leaves those endpoints out of routing from the next call on.

Theory of operation
-------------------
* **What is probed.** Every distinct URI of an active endpoint of an active buyer, rebuilt
  when the config changes (``set_uris``): a URI that stays keeps its state, a new one starts
  ``unknown``, a removed one is forgotten (and so is no longer down).
* **When.** Each URI once per ``interval`` (DCE_PROBE_INTERVAL). URIs added together are
  spread evenly over one interval (the first at once), and each keeps its phase, so a
  thousand endpoints make a steady trickle of OPTIONS rather than a burst.
* **Answers.** A probe fails when no final response arrives within ``timeout``
  (DCE_PROBE_TIMEOUT, on our own clock: the core's Timer F, 32 s, is far too slow to judge
  health) or when the response says the server cannot serve: ``408`` (a proxy in front says
  the UA behind it is silent), ``5xx`` except ``501``, and ``6xx``. Anything else is an
  answer from a live UA: ``200``, but also ``404``/``405``/``501`` from one that does not
  like OPTIONS or the user part, and ``403`` from one that refuses us. A call to those fails
  at once if it fails at all, and fast failures already fail over at once; health is about
  the silent endpoints, each of which costs a caller DCE_TRYING_TIMEOUT. An answer that comes
  after the probe was given up is ignored (the core keeps the transaction until Timer F;
  ``ProbeAnswered`` does not say which probe it answers).
* **States** (like Kamailio's dispatcher: ``ds_probing_threshold`` and
  ``ds_inactive_threshold``): ``unknown`` until the first result, and routed like ``up``;
  ``down`` after ``down_after`` consecutive failures; ``up`` again after ``up_after``
  consecutive successes (one success is enough from ``unknown``).

::

    unknown --success--> up --down_after failures--> down --up_after successes--> up
       \\------------------down_after failures-------->/
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from exchange.models import ExchangeConfig

logger = logging.getLogger(__name__)


class Health(enum.Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


def answers_alive(status: int) -> bool:
    """Whether a final response to OPTIONS shows a UA that can take calls (module doc)."""
    if status == 408:
        return False
    if status == 501:  # Not Implemented: a live UA that does not do OPTIONS
        return True
    return status < 500


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """DCE_PROBE_INTERVAL (0: no probing), DCE_PROBE_TIMEOUT, DCE_PROBE_DOWN_AFTER,
    DCE_PROBE_UP_AFTER."""

    interval: float = 10.0
    timeout: float = 2.0
    down_after: int = 2
    up_after: int = 2

    def __post_init__(self) -> None:
        if self.interval < 0 or self.timeout <= 0:
            raise ValueError(
                f"probe interval must be >= 0 and timeout > 0, got {self.interval}, {self.timeout}"
            )
        if self.down_after < 1 or self.up_after < 1:
            raise ValueError(
                f"down_after and up_after must be at least 1, got {self.down_after}, "
                f"{self.up_after}"
            )

    @property
    def enabled(self) -> bool:
        return self.interval > 0


@dataclass(slots=True)
class EndpointState:
    """One probed URI. Times are monotonic seconds."""

    uri: str
    since: float  # when it entered ``health`` (or started being probed)
    next_at: float  # when the next probe is due
    health: Health = Health.UNKNOWN
    sent_at: float | None = None  # a probe in flight since then
    last_status: int | None = None  # the last answer's status; None: silence, or none yet
    last_result_at: float | None = None  # when the last probe was answered or given up
    failures: int = 0  # consecutive
    successes: int = 0  # consecutive


class HealthTracker:
    """The sans-IO tracker: ``due(now)`` -> probes to send; ``answered()`` / ``handle_timer()``
    -> results; ``down`` -> the URIs to leave out of routing (module doc)."""

    def __init__(self, config: ProbeConfig) -> None:
        self.config = config
        # A probe given up after ``timeout``; never later than the next one is due.
        self._timeout = min(config.timeout, config.interval) if config.enabled else config.timeout
        self._eps: dict[str, EndpointState] = {}
        # Lazy heaps of (when, uri): an entry is live only while it matches the state.
        self._due: list[tuple[float, str]] = []
        self._deadlines: list[tuple[float, str]] = []
        self._down: frozenset[str] = frozenset()
        self.version = 0  # bumped whenever ``down`` changes
        self.sent = 0
        self.failed = 0
        self.late = 0  # answers to probes already given up, ignored

    # -- inputs ------------------------------------------------------------------------------

    def set_uris(self, uris: Iterable[str], now: float) -> None:
        """Probe exactly these URIs from now on (module doc, "What is probed")."""
        wanted = set(uris) if self.config.enabled else set()
        for uri in [u for u in self._eps if u not in wanted]:
            del self._eps[uri]
        new = sorted(u for u in wanted if u not in self._eps)
        step = self.config.interval / len(new) if new else 0.0
        for i, uri in enumerate(new):
            at = now + i * step
            self._eps[uri] = EndpointState(uri=uri, since=now, next_at=at)
            heapq.heappush(self._due, (at, uri))
        self._refresh_down()

    def due(self, now: float) -> list[str]:
        """The URIs to probe now; each counts as sent (call ``unsendable`` if it was not)."""
        self.handle_timer(now)
        out: list[str] = []
        interval = self.config.interval
        heap = self._due
        while heap and heap[0][0] <= now:
            at, uri = heapq.heappop(heap)
            ep = self._eps.get(uri)
            if ep is None or ep.next_at != at:
                continue  # forgotten, or re-scheduled
            # Keep the phase; a late wake-up does not pile probes up.
            ep.next_at = at + interval
            while ep.next_at <= now:
                ep.next_at += interval
            heapq.heappush(heap, (ep.next_at, uri))
            if ep.sent_at is not None:
                continue  # the previous probe is still out (timeout == interval)
            ep.sent_at = now
            heapq.heappush(self._deadlines, (now + self._timeout, uri))
            self.sent += 1
            out.append(uri)
        return out

    def answered(self, uri: str, status: int | None, now: float) -> None:
        """A final response to our OPTIONS (``ProbeAnswered``); None: the core gave up."""
        ep = self._eps.get(uri)
        if ep is None or ep.sent_at is None:
            self.late += 1
            return
        ep.sent_at = None
        ep.last_status = status
        self._result(ep, status is not None and answers_alive(status), now)

    def unsendable(self, uri: str, now: float) -> None:
        """The probe could not be sent (not a SIP URI the core can reach): a failure."""
        ep = self._eps.get(uri)
        if ep is None or ep.sent_at is None:
            return
        ep.sent_at = None
        ep.last_status = None
        self._result(ep, False, now)

    def handle_timer(self, now: float) -> None:
        """Give up probes that had no final answer within the timeout: failures."""
        heap = self._deadlines
        timeout = self._timeout
        while heap and heap[0][0] <= now:
            deadline, uri = heapq.heappop(heap)
            ep = self._eps.get(uri)
            if ep is None or ep.sent_at is None or ep.sent_at + timeout != deadline:
                continue  # answered meanwhile, or forgotten
            ep.sent_at = None
            ep.last_status = None
            self._result(ep, False, now)

    # -- outputs -----------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next probe due or the next probe deadline, whichever is first."""
        while self._due and self._stale_due(self._due[0]):
            heapq.heappop(self._due)
        while self._deadlines and self._stale_deadline(self._deadlines[0]):
            heapq.heappop(self._deadlines)
        times = [h[0][0] for h in (self._due, self._deadlines) if h]
        return min(times) if times else None

    @property
    def down(self) -> frozenset[str]:
        return self._down

    def state(self, uri: str) -> EndpointState | None:
        """The probed state of ``uri``; None when it is not probed."""
        return self._eps.get(uri)

    def counts(self) -> dict[Health, int]:
        out = dict.fromkeys(Health, 0)
        for ep in self._eps.values():
            out[ep.health] += 1
        return out

    # -- internals ---------------------------------------------------------------------------

    def _stale_due(self, item: tuple[float, str]) -> bool:
        ep = self._eps.get(item[1])
        return ep is None or ep.next_at != item[0]

    def _stale_deadline(self, item: tuple[float, str]) -> bool:
        ep = self._eps.get(item[1])
        return ep is None or ep.sent_at is None or ep.sent_at + self._timeout != item[0]

    def _result(self, ep: EndpointState, ok: bool, now: float) -> None:
        ep.last_result_at = now
        cfg = self.config
        if ok:
            ep.successes += 1
            ep.failures = 0
            if ep.health is Health.UNKNOWN or (
                ep.health is Health.DOWN and ep.successes >= cfg.up_after
            ):
                self._move(ep, Health.UP, now)
        else:
            self.failed += 1
            ep.failures += 1
            ep.successes = 0
            if ep.health is not Health.DOWN and ep.failures >= cfg.down_after:
                self._move(ep, Health.DOWN, now)

    def _move(self, ep: EndpointState, health: Health, now: float) -> None:
        was = ep.health
        ep.health = health
        ep.since = now
        if Health.DOWN in (was, health):
            self._refresh_down()
            logger.warning(
                "buyer endpoint down" if health is Health.DOWN else "buyer endpoint up again",
                extra={"peer": ep.uri, "status": ep.last_status},
            )

    def _refresh_down(self) -> None:
        down = frozenset(u for u, ep in self._eps.items() if ep.health is Health.DOWN)
        if down != self._down:
            self._down = down
            self.version += 1


# ----------------------------------------------------------------------------------------------
# The asyncio driver


class Core(Protocol):
    """What the prober needs of the switch core (``switch.core.SwitchCore``)."""

    def send_options(self, uri: str, now: float) -> bool: ...


class Router(Protocol):
    """What the prober needs of the exchange (``exchange.engine.Exchange``)."""

    def set_down(self, uris: frozenset[str]) -> None: ...


def probed_uris(config: ExchangeConfig) -> set[str]:
    """The URIs to probe: every active endpoint of every active buyer."""
    return {e.uri for b in config.buyers if b.active for e in b.endpoints if e.active}


class Prober:
    """Runs a :class:`HealthTracker` on the event loop: sends its probes through the core,
    takes the answers from the pump, and keeps the exchange's down set up to date."""

    def __init__(
        self,
        health: HealthTracker,
        core: Core,
        transmit: Callable[[], None],
        clock: Callable[[], float],
    ) -> None:
        self.health = health
        self.core = core
        self.transmit = transmit  # SipPump.transmit: sends what the core produced
        self.clock = clock  # loop.time
        self.router: Router | None = None
        self._applied = -1  # the health version the router has
        self._wake = asyncio.Event()  # new URIs to probe: tick now, not at the old deadline

    def set_config(self, config: ExchangeConfig) -> None:
        """The exchange config changed: probe its endpoints (module doc)."""
        self.health.set_uris(probed_uris(config), self.clock())
        self._apply()
        self._wake.set()

    def answered(self, uri: str, status: int | None, at: float) -> None:
        """``ProbeAnswered`` from the core (the pump calls this)."""
        self.health.answered(uri, status, at)
        self._apply()

    def tick(self) -> float | None:
        """Send what is due, give up what timed out; returns when to tick next."""
        now = self.clock()
        health = self.health
        uris = health.due(now)
        for uri in uris:
            if not self.core.send_options(uri, now):
                health.unsendable(uri, now)
        if uris:
            self.transmit()
        self._apply()
        return health.get_timer()

    async def run(self) -> None:
        """Tick until cancelled (a background task of ``dce run``)."""
        while True:
            self._wake.clear()
            try:
                when = self.tick()
            except Exception:
                # A bug here must not stop probing for good, nor take the switch down.
                logger.exception("endpoint probing failed")
                when = self.clock() + 1.0
            delay = None if when is None else max(0.0, when - self.clock())
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def view(self, uri: str, wall: Callable[[float], datetime]) -> dict[str, Any]:
        """What the admin API shows of ``uri``; ``wall`` turns monotonic times into UTC."""
        ep = self.health.state(uri)
        if ep is None:
            return {"state": Health.UNKNOWN.value, "probing": False}
        at = ep.last_result_at
        return {
            "state": ep.health.value,
            "probing": True,
            "since": wall(ep.since),
            "last_status": ep.last_status,
            "last_probe_at": None if at is None else wall(at),
            "failures": ep.failures,
            "successes": ep.successes,
        }

    def _apply(self) -> None:
        health = self.health
        if self.router is not None and health.version != self._applied:
            self._applied = health.version
            self.router.set_down(health.down)
