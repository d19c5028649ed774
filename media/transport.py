"""The asyncio edge of the relay: four UDP sockets per call on uvloop, and their manager.

Everything that decides lives in ``media/relay.py``; this module binds sockets, feeds each
datagram to its :class:`~media.relay.Stream` with ``now = loop.time()`` and sends what the
stream says to forward. Per packet that is one ``datagram_received`` call, one
``Stream.receive`` call and one ``sendto`` on the peer socket: no object is built beyond the
``bytes`` and address tuple asyncio already made, nothing is logged, and the payload is sent
as the same ``bytes`` object it arrived in (no copy).

Socket pool
-----------
Binding four sockets and creating their transports, then closing them, was most of what
anchoring cost per call (issue 13). With ``RelayManager(pool=N)`` (``MediaManager`` sets it) a
call's two RTP/RTCP pairs come from a :class:`SocketPool` of bound, receiving pairs and go back
to it when the call ends, so opening a call's media does not suspend and binds nothing. A pair
in the pool drops whatever arrives; it serves another call only after ``min_idle`` seconds,
with its socket buffers drained and fresh streams (no latch survives), so the previous call's
late packets never reach the next one. Idle pairs close after ``linger`` seconds: the pool
holds what the recent call rate needs, and ``/metrics`` counts idle pooled pairs as free.

Scaling beyond one core
-----------------------
One relay process forwards about as many calls as one core allows (see ``bench/bench_relay.py``
for the figures). With DCE_MEDIA_WORKERS=N the relay runs in N media worker processes
(``media/worker.py``), each running its own uvloop with its own :class:`RelayManager` over a
contiguous, disjoint share of DCE_RTP_PORTS, pinned one per core. The signalling process keeps
the SDP work (``media/sdp.py`` is pure) and talks to the workers over a Unix socket with a tiny
command set (``media/workers.py``): ``open(call_id) -> (a_port, b_port)``,
``set_remote(call_id, leg, endpoint, signal_ip)``, ``answered``, ``reset_leg``,
``close(call_id) -> stats``, plus a periodic push of media-timeout call ids and totals for
/metrics. The data path never crosses processes: RTP arrives at, and leaves from, the worker
that owns the ports, so there is no shared state and no lock. The worker for a new call is the
one with the fewest live calls. With N=0 (the default) this module runs in the switch process.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from media.errors import InvalidStateError, MediaError, PortsExhausted
from media.ports import PortAllocator
from media.relay import CallMediaStats, CallRelay, Leg, RelayConfig, Stream

logger = logging.getLogger(__name__)

#: Ports already taken by another process are skipped; give up after this many tries.
_BIND_ATTEMPTS = 8
_NEVER = float("-inf")


class _Endpoint(asyncio.DatagramProtocol):
    """One bound socket. ``out`` is the peer socket's transport (set once all four exist)."""

    __slots__ = ("_time", "errors", "on_lost", "out", "sock", "stream", "transport")

    def __init__(
        self, stream: Stream, time: Callable[[], float], sock: socket.socket | None = None
    ) -> None:
        self.stream = stream
        self._time = time
        self.sock = sock  # the bound socket itself: a pooled pair drains it before reuse
        self.transport: asyncio.DatagramTransport | None = None
        self.out: asyncio.DatagramTransport | None = None
        self.on_lost: Callable[[], None] | None = None
        self.errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDPTransport is not a DatagramTransport subclass (libs.md §1); same API.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # The hot path: one call into the sans-IO stream, one send. Nothing else.
        dest = self.stream.receive(data, addr, self._time())
        if dest is not None:
            self.out.sendto(data, dest)  # type: ignore[union-attr]

    def error_received(self, exc: Exception) -> None:
        # ICMP errors and send failures: counted, never logged per packet.
        self.errors += 1

    def connection_lost(self, exc: Exception | None) -> None:
        # asyncio and uvloop both close the socket right after this, in the same callback,
        # so a port released here can be bound again by the next callback.
        callback, self.on_lost = self.on_lost, None
        if callback is not None:
            callback()


@dataclass(slots=True)
class RelayTotals:
    """Process-wide relay figures for /metrics (Prometheus counters and gauges)."""

    sessions_active: int
    sessions_opened: int
    sessions_refused: int  # PortsExhausted or bind failure
    packets: int  # forwarded, all calls, both ways
    bytes: int
    malformed: int
    foreign: int
    unroutable: int
    lost: int
    send_errors: int
    ports_free: int
    ports_capacity: int

    def add(self, stats: CallMediaStats, send_errors: int) -> None:
        """Add one call's counters (both directions)."""
        for d in (stats.a_to_b, stats.b_to_a):
            self.packets += d.packets
            self.bytes += d.bytes
            self.malformed += d.malformed
            self.foreign += d.foreign
            self.unroutable += d.unroutable
            self.lost += d.lost
        self.send_errors += send_errors

    def add_tally(self, tally: list[int], send_errors: int) -> None:
        """Add a :meth:`CallRelay.tally <media.relay.CallRelay.tally>` sum."""
        self.packets += tally[0]
        self.bytes += tally[1]
        self.malformed += tally[2]
        self.foreign += tally[3]
        self.unroutable += tally[4]
        self.lost += tally[5]
        self.send_errors += send_errors

    def copy(self) -> RelayTotals:
        return RelayTotals(
            self.sessions_active, self.sessions_opened, self.sessions_refused, self.packets,
            self.bytes, self.malformed, self.foreign, self.unroutable, self.lost,
            self.send_errors, self.ports_free, self.ports_capacity,
        )  # fmt: skip


def _open_socket(media_ip: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in media_ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((media_ip, port))
    except BaseException:
        sock.close()
        raise
    return sock


def bind_pair(
    media_ip: str, allocator: PortAllocator
) -> tuple[int, tuple[socket.socket, socket.socket]]:
    """An even/odd port pair from ``allocator`` with both sockets bound on ``media_ip``.

    Ports another process holds are skipped (and given back at the end of the pool).

    Raises:
        PortsExhausted: (503) no free pair, or every tried pair was taken by others.
        MediaError: binding failed for another reason (the address is not ours ...).
    """
    skipped: list[int] = []
    try:
        for _ in range(_BIND_ATTEMPTS):
            port = allocator.allocate()
            try:
                rtp = _open_socket(media_ip, port)
            except OSError as exc:
                if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                    allocator.release(port)
                    raise MediaError(f"cannot bind {media_ip}:{port}: {exc}") from exc
                skipped.append(port)  # another process holds it: try the next pair
                continue
            try:
                rtcp = _open_socket(media_ip, port + 1)
            except OSError as exc:
                rtp.close()
                if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                    allocator.release(port)
                    raise MediaError(f"cannot bind {media_ip}:{port + 1}: {exc}") from exc
                skipped.append(port)
                continue
            return port, (rtp, rtcp)
    finally:
        # Taken ports go back to the end of the pool: another process may free them later.
        for port in skipped:
            allocator.release(port)
    raise PortsExhausted(f"{_BIND_ATTEMPTS} RTP port pairs in a row are taken by others")


#: What an idle pooled socket feeds its datagrams to: a stream that knows no peer, so every
#: datagram is dropped (counted here as foreign, a figure nobody reads).
_IDLE = Stream(Leg.A, False, RelayConfig())
#: Datagrams discarded from one socket when a pooled pair is taken; beyond that the socket is
#: being flooded, and the new call's latching (announced IP only) is what stands in the way.
_DRAIN_MAX = 256


class _Pair:
    """An even/odd port pair bound on the media address: RTP and RTCP endpoints, receiving.

    A pair belongs to one call at a time (:meth:`attach`), or idles in a :class:`SocketPool`
    dropping whatever arrives. Its port goes back to the allocator once both sockets are
    really closed (:meth:`close`, then the loop's next turn).
    """

    __slots__ = (
        "_open",
        "_release",
        "idle_since",
        "on_released",
        "port",
        "ready_at",
        "rtcp",
        "rtp",
    )

    def __init__(
        self, port: int, rtp: _Endpoint, rtcp: _Endpoint, release: Callable[[int], object]
    ) -> None:
        self.port = port
        self.rtp, self.rtcp = rtp, rtcp
        self._release = release
        self._open = 2
        self.idle_since = _NEVER  # in a pool since (closed after the pool's linger time)
        self.ready_at = _NEVER  # in a pool: may serve a call from then on
        self.on_released: Callable[[], object] | None = None
        rtp.on_lost = rtcp.on_lost = self._lost

    def attach(self, rtp: Stream, rtcp: Stream) -> None:
        self.rtp.stream, self.rtcp.stream = rtp, rtcp
        self.rtp.errors = self.rtcp.errors = 0  # ICMP errors while idle were not this call's

    def detach(self) -> int:
        """Back to idle: drop everything from now on; the send errors counted while attached."""
        errors = self.rtp.errors + self.rtcp.errors
        for ep in (self.rtp, self.rtcp):
            ep.stream, ep.out, ep.errors = _IDLE, None, 0
        return errors

    def drain(self) -> None:
        """Discard datagrams already queued on both sockets (sent to the previous call)."""
        for ep in (self.rtp, self.rtcp):
            sock = ep.sock
            if sock is None:
                continue
            for _ in range(_DRAIN_MAX):
                try:
                    sock.recv(1)  # a datagram is consumed whole, whatever the buffer size
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue  # a queued ICMP error (ECONNREFUSED ...): consumed, go on

    def close(self) -> None:
        for ep in (self.rtp, self.rtcp):
            ep.out = None
            if ep.transport is not None:
                ep.transport.close()

    @property
    def released(self) -> bool:
        return self._open == 0

    @property
    def intact(self) -> bool:
        """Both sockets still open (a socket error can close one while the pair idles)."""
        return self._open == 2 and not any(
            ep.transport is None or ep.transport.is_closing() for ep in (self.rtp, self.rtcp)
        )

    def _lost(self) -> None:
        self._open -= 1
        if self._open:
            return
        self._release(self.port)
        callback, self.on_released = self.on_released, None
        if callback is not None:
            callback()


async def _open_pair(
    media_ip: str, allocator: PortAllocator, loop: asyncio.AbstractEventLoop
) -> _Pair:
    """Bind a pair (:func:`bind_pair`) and start receiving on it, idle.

    Raises what :func:`bind_pair` raises; nothing stays allocated or bound when it raises.
    """
    port, socks = bind_pair(media_ip, allocator)
    endpoints = [_Endpoint(_IDLE, loop.time, sock) for sock in socks]
    transports: list[asyncio.BaseTransport] = []
    try:
        for sock, ep in zip(socks, endpoints, strict=True):
            transport, _ = await loop.create_datagram_endpoint(
                lambda ep=ep: ep,  # type: ignore[misc]
                sock=sock,
            )
            transports.append(transport)
    except BaseException:
        # Cancelled or failed half way: close what was opened, give the port back.
        for tr in transports:
            tr.close()
        for sock in socks[len(transports) :]:
            sock.close()
        allocator.release(port)
        raise
    return _Pair(port, endpoints[0], endpoints[1], allocator.release)


def _fd_limit() -> int:
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 1024
    return soft if soft > 0 else 1 << 20  # RLIM_INFINITY is -1


class SocketPool:
    """Bound, receiving RTP/RTCP pairs kept across calls: a call's media opens and closes
    without a bind, a transport or a close (issue 13: those were most of its setup cost).

    A call's pairs come back here when it ends (:meth:`give`) and serve later calls
    (:meth:`take`). Safety: a pair given back drops every datagram from then on; it is taken
    again only after ``min_idle`` seconds (FIFO, so as late as the pool allows), its sockets
    drained; and the call taking it gets fresh streams, so nothing latched for the previous
    call survives. Bounded: at most ``size`` idle pairs (and never more than a quarter of the
    port range, which WebRTC calls share, nor of RLIMIT_NOFILE); a pair given back to a full
    pool is closed, and so is one that idled ``linger`` seconds: the pool holds what the recent
    call rate needs, and an idle switch holds no socket. Pairs missing when calls come faster
    than calls end are bound off the call path by one background task (the call that missed
    binds its own).
    """

    def __init__(
        self,
        media_ip: str,
        allocator: PortAllocator,
        size: int,
        *,
        min_idle: float = 0.25,
        linger: float = 1.0,
    ) -> None:
        self.media_ip = media_ip
        self.allocator = allocator
        # Idle pairs use at most a quarter of the port range and of the file descriptors
        # (two per pair): calls must never fail for sockets the pool sits on.
        self.size = max(0, min(size, allocator.capacity // 4, _fd_limit() // 8))
        self.min_idle = min_idle
        self.linger = max(linger, min_idle)
        self._idle: deque[_Pair] = deque()
        self._deficit = 0  # pairs the refill task should bind
        self._refill: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closing: set[_Pair] = set()
        self.closed = False
        self.hits = 0  # pairs taken from the pool
        self.misses = 0  # takes that found no pair idle long enough (the caller binds one)

    def __len__(self) -> int:
        return len(self._idle)

    def take(self, now: float, *, force: bool = False) -> _Pair | None:
        """An idle pair, drained; None if none has idled ``min_idle`` s (``force``: any)."""
        self._trim(now)
        idle = self._idle
        while idle and not idle[0].intact:
            self._close(idle.popleft())
        if not idle or (not force and idle[0].ready_at > now):
            if not force:
                self.misses += 1
                self._want()
            return None
        self.hits += 1
        pair = idle.popleft()
        pair.drain()
        return pair

    def give(self, pair: _Pair, now: float) -> bool:
        """Take ``pair`` back (detached) for a later call; False (the caller closes it) when
        the pool is full or closed."""
        self._trim(now)
        if self.closed or len(self._idle) >= self.size:
            return False
        pair.idle_since = now
        pair.ready_at = now + self.min_idle
        self._idle.append(pair)
        self._arm()
        return True

    def _trim(self, now: float) -> None:
        idle = self._idle
        while idle and idle[0].idle_since + self.linger < now:
            self._close(idle.popleft())

    def _arm(self) -> None:
        if self._timer is not None or self.closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(self.linger / 2, self._on_timer, loop)

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        # Trims a pool no call touches any more (the calls stopped).
        self._timer = None
        self._trim(loop.time())
        if self._idle:
            self._arm()

    def _close(self, pair: _Pair) -> None:
        pair.close()
        if not pair.released:
            self._closing.add(pair)
            pair.on_released = lambda: self._closing.discard(pair)

    def _want(self) -> None:
        if self.closed or not self.size:
            return
        self._deficit = min(self._deficit + 1, self.size - len(self._idle))
        if self._refill is not None or self._deficit <= 0:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._refill = loop.create_task(self._fill(loop))
        # Cleared when done, cancelled before it ran included (its finally never runs then).
        self._refill.add_done_callback(self._refilled)

    def _refilled(self, task: asyncio.Task[None]) -> None:
        if self._refill is task:
            self._refill = None
            self._deficit = 0

    async def _fill(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            # Keep a quarter of the free pairs for calls that bind their own (WebRTC).
            while (
                self._deficit > 0
                and not self.closed
                and len(self._idle) < self.size
                and self.allocator.free > self.allocator.capacity // 4
            ):
                pair = await _open_pair(self.media_ip, self.allocator, loop)
                if self.closed:
                    self._close(pair)
                    break
                self._deficit -= 1
                # Never used: ready at once, so ahead of the pairs still idling.
                pair.idle_since = pair.ready_at = loop.time()
                self._idle.appendleft(pair)
                self._arm()
        except MediaError as exc:  # PortsExhausted too: calls bind their own meanwhile
            logger.warning("RTP socket pool refill stopped: %s", exc)

    def close(self) -> None:
        """Close every idle pair and stop refilling (shutdown)."""
        self.closed = True
        if self._refill is not None:
            self._refill.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._idle:
            self._close(self._idle.popleft())

    async def wait_closed(self) -> None:
        """Until every pair closed by the pool is closed and its port back."""
        if self._refill is not None:
            await asyncio.wait([self._refill])
        while self._closing:
            await asyncio.sleep(0)  # closed sockets go within a loop turn or two


class RelaySession:
    """One call's four sockets (A RTP/RTCP, B RTP/RTCP) around its :class:`CallRelay`.

    Build with :meth:`RelayManager.open_session`. ``relay`` is the sans-IO state the call logic
    drives (``anchor``, ``set_remote``, ``answered``, ``media_timeout_due``, ``stats``).
    """

    __slots__ = (
        "_closing",
        "_errors",
        "_pairs",
        "_pending",
        "_pool",
        "_time",
        "_waiter",
        "call_id",
        "on_released",
        "relay",
    )

    def __init__(
        self,
        call_id: str,
        relay: CallRelay,
        pairs: tuple[_Pair, _Pair],
        pool: SocketPool | None = None,
        time: Callable[[], float] | None = None,
    ) -> None:
        self.call_id = call_id
        self.relay = relay
        self._pairs = pairs
        self._pool = pool
        self._time = time  # the loop's clock: when a pair went back to the pool
        self._closing = False
        self._errors = 0
        self._pending = 2  # pairs not yet back in the pool or released
        self._waiter: asyncio.Future[None] | None = None
        self.on_released: Callable[[RelaySession], object] | None = None
        a, b = pairs
        a.attach(relay.stream(Leg.A, False), relay.stream(Leg.A, True))
        b.attach(relay.stream(Leg.B, False), relay.stream(Leg.B, True))
        # A's RTP goes out of B's RTP socket and so on (relay.py pairs the streams the same way).
        a.rtp.out, b.rtp.out = b.rtp.transport, a.rtp.transport
        a.rtcp.out, b.rtcp.out = b.rtcp.transport, a.rtcp.transport

    @classmethod
    async def open(
        cls,
        call_id: str,
        media_ip: str,
        allocator: PortAllocator,
        config: RelayConfig | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        pool: SocketPool | None = None,
    ) -> RelaySession:
        """Two port pairs (from ``pool`` when it has idle ones, else bound now), receiving.

        Raises:
            PortsExhausted: (503) no free pair, or every tried port was taken by another
                process. Nothing stays allocated or bound when this raises.
        """
        loop = loop or asyncio.get_running_loop()
        now = loop.time()
        pairs: list[_Pair] = []
        try:
            for _ in range(2):
                pair = pool.take(now) if pool is not None else None
                if pair is None:
                    try:
                        pair = await _open_pair(media_ip, allocator, loop)
                    except PortsExhausted:
                        # Every port is a call's or idles in the pool: a pair that idled
                        # less than min_idle (drained, fresh latch) beats a 503.
                        pair = pool.take(now, force=True) if pool is not None else None
                        if pair is None:
                            raise
                pairs.append(pair)
        except BaseException:
            for pair in pairs:
                if pool is None or not pool.give(pair, now):
                    pair.close()
            raise
        relay = CallRelay(media_ip, pairs[0].port, pairs[1].port, config)
        return cls(call_id, relay, (pairs[0], pairs[1]), pool, loop.time)

    @property
    def ports(self) -> tuple[int, int]:
        """The switch's RTP ports facing A and B (RTCP is each + 1)."""
        return self._pairs[0].port, self._pairs[1].port

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (the ports come back a moment later)."""
        return self._closing

    @property
    def send_errors(self) -> int:
        if self._closing:
            return self._errors
        a, b = self._pairs
        return a.rtp.errors + a.rtcp.errors + b.rtp.errors + b.rtcp.errors

    def close(self) -> CallMediaStats:
        """Stop relaying (idempotent); the final counters.

        Each pair goes back to the pool, or is closed: its port then returns to the allocator
        when its sockets are really closed, on the next loop iteration (:meth:`wait_closed`),
        so a new call never gets a port still bound.
        """
        if not self._closing:
            self._closing = True
            pool = self._pool
            now = self._time() if self._time is not None else 0.0
            for pair in self._pairs:
                self._errors += pair.detach()
                if (pool is not None and pool.give(pair, now)) or pair.released:
                    self._pair_released()
                else:
                    pair.on_released = self._pair_released
                    pair.close()
            self.relay.release()
        return self.relay.stats()

    async def wait_closed(self) -> None:
        """Until every socket is closed and the ports are back in the pool."""
        if self.ports_released:
            return
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._waiter)

    def _pair_released(self) -> None:
        self._pending -= 1
        if self._pending:
            return
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self.on_released is not None:
            self.on_released(self)

    @property
    def ports_released(self) -> bool:
        return self._pending == 0


#: Live sessions a periodic scan (media timeouts, /metrics totals, live counters) reads per
#: loop turn. The scans run on the relay's own loop: one pass over 800 calls held the packets
#: queued behind it for 4 to 15 ms on the bench machine (issue 13), a slice of 64 for about
#: half a millisecond, and the packets that arrived meanwhile go through between two slices.
SCAN_SLICE = 64


@dataclass(slots=True)
class ScanResult:
    """What one :meth:`RelayManager.scan` found."""

    totals: RelayTotals
    timed_out: list[str]  # calls due a media timeout (none asked: empty)
    counters: dict[str, CallMediaStats] | None  # every live call's counters, if asked


class _Scan:
    """One pass over the live sessions, :data:`SCAN_SLICE` per loop turn.

    Totals stay monotonic although calls end during the pass: each session live when the pass
    began is counted once, either when the pass reaches it or, if it ends first, with its
    final counters when it closes (:meth:`closing`); the closed calls' totals are those from
    when the pass began.
    """

    __slots__ = (
        "_done", "_loop", "_manager", "_order", "_pending", "_pos", "_tally", "_timeout",
        "_totals", "cancelled", "counters", "errors", "result",
    )  # fmt: skip

    def __init__(
        self,
        manager: RelayManager,
        loop: asyncio.AbstractEventLoop,
        timeout: float | None,
        counters: bool,
        done: Callable[[ScanResult], object],
        totals: bool = True,
    ) -> None:
        self._manager = manager
        self._totals = totals
        self._loop = loop
        self._timeout = timeout
        self._done = done
        self._order = list(manager._sessions.values())
        self._pending = set(self._order)  # live when the pass began, not counted yet
        self._pos = 0
        self.cancelled = False
        self._tally = [0, 0, 0, 0, 0, 0]
        self.errors = 0
        self.counters: dict[str, CallMediaStats] | None = {} if counters else None
        self.result = ScanResult(manager._closed.copy(), [], self.counters)

    def closing(self, session: RelaySession) -> None:
        """``session`` is ending: count it now, with its final counters, if not yet counted."""
        if session in self._pending:
            self._count(session)

    def _count(self, session: RelaySession) -> None:
        self._pending.discard(session)
        if self._totals:
            session.relay.tally(self._tally)
            self.errors += session.send_errors
        if self.counters is not None:
            self.counters[session.call_id] = session.relay.stats()

    def cancel(self) -> None:
        """Stop after the current slice; ``done`` is not called."""
        self.cancelled = True
        self._manager._scans.discard(self)

    def step(self) -> None:
        if self.cancelled:
            return
        order, pending, timeout = self._order, self._pending, self._timeout
        now = self._loop.time()
        end = min(self._pos + SCAN_SLICE, len(order))
        for session in order[self._pos : end]:
            if session not in pending:
                continue  # ended since the pass began: counted then
            self._count(session)
            if timeout is not None and session.relay.media_timeout_due(now, timeout):
                self.result.timed_out.append(session.call_id)
        self._pos = end
        if end < len(order):
            self._loop.call_soon(self.step)
            return
        self._manager._scans.discard(self)
        m, t = self._manager, self.result.totals
        t.add_tally(self._tally, self.errors)
        t.sessions_active = len(m._sessions)
        t.sessions_opened = m._opened
        t.sessions_refused = m._refused
        t.ports_free = m.allocator.free + (len(m.pool) if m.pool is not None else 0)
        t.ports_capacity = m.allocator.capacity
        self._done(self.result)


class RelayManager:
    """All relay sessions of this process: ports, open/close by call id, totals, timeouts."""

    def __init__(
        self,
        media_ip: str,
        allocator: PortAllocator,
        config: RelayConfig | None = None,
        *,
        pool: int = 0,
        pool_min_idle: float = 0.25,
        pool_linger: float = 1.0,
    ) -> None:
        self.media_ip = media_ip
        self.allocator = allocator
        self.config = config or RelayConfig()
        # Pre-bound pairs reused across calls (0: every call binds and closes its own).
        self.pool = (
            SocketPool(media_ip, allocator, pool, min_idle=pool_min_idle, linger=pool_linger)
            if pool > 0
            else None
        )
        self._sessions: dict[str, RelaySession] = {}
        self._opened = 0
        self._refused = 0
        # Counters of closed sessions, so totals stay monotonic for Prometheus.
        self._closed = RelayTotals(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        self._watchdog: asyncio.TimerHandle | None = None
        self._watch_scan: _Scan | None = None
        self._scans: set[_Scan] = set()  # passes under way (see scan())
        self._closing_sessions: set[RelaySession] = set()

    async def open_session(self, call_id: str) -> RelaySession:
        """Anchor a new call: two port pairs, four sockets.

        Raises:
            PortsExhausted: (503) no ports; nothing leaks.
            InvalidStateError: ``call_id`` already has a session (our bug).
        """
        if call_id in self._sessions:
            raise InvalidStateError(f"relay session for {call_id} already open")
        try:
            session = await RelaySession.open(
                call_id, self.media_ip, self.allocator, self.config, pool=self.pool
            )
        except PortsExhausted:
            self._refused += 1
            raise
        if call_id in self._sessions:  # opened twice concurrently: keep the first
            session.close()
            raise InvalidStateError(f"relay session for {call_id} already open")
        self._sessions[call_id] = session
        self._opened += 1
        return session

    def session(self, call_id: str) -> RelaySession | None:
        return self._sessions.get(call_id)

    def close_session(self, call_id: str) -> CallMediaStats | None:
        """Close ``call_id``'s session (idempotent); its final counters for the CDR."""
        session = self._sessions.pop(call_id, None)
        if session is None:
            return None
        stats = session.close()
        for scan in self._scans:
            scan.closing(session)
        if not session.ports_released:
            self._closing_sessions.add(session)
            session.on_released = self._closing_sessions.discard
        self._closed.add(stats, session.send_errors)
        return stats

    def close_all(self) -> None:
        """Close every session and the socket pool (shutdown, after the BYEs)."""
        self.stop_watchdog()
        for call_id in list(self._sessions):
            self.close_session(call_id)
        if self.pool is not None:
            self.pool.close()

    async def wait_closed(self) -> None:
        """Until the sockets of every session closed so far are closed (ports back)."""
        for session in list(self._closing_sessions):
            await session.wait_closed()
        if self.pool is not None and self.pool.closed:
            await self.pool.wait_closed()

    def __len__(self) -> int:
        return len(self._sessions)

    def totals(self) -> RelayTotals:
        """Closed plus live sessions' counters (O(live sessions); for a /metrics scrape)."""
        c = self._closed
        t = RelayTotals(
            sessions_active=len(self._sessions),
            sessions_opened=self._opened,
            sessions_refused=self._refused,
            packets=c.packets,
            bytes=c.bytes,
            malformed=c.malformed,
            foreign=c.foreign,
            unroutable=c.unroutable,
            lost=c.lost,
            send_errors=c.send_errors,
            ports_free=self.allocator.free + (len(self.pool) if self.pool is not None else 0),
            ports_capacity=self.allocator.capacity,
        )
        tally = [0, 0, 0, 0, 0, 0]
        errors = 0
        for session in self._sessions.values():
            session.relay.tally(tally)
            errors += session.send_errors
        t.add_tally(tally, errors)
        return t

    def scan(
        self,
        done: Callable[[ScanResult], object],
        *,
        timeout: float | None = None,
        counters: bool = False,
        totals: bool = True,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> _Scan | None:
        """:meth:`totals` (unless ``totals=False``), :meth:`timed_out` (with ``timeout``) and
        :meth:`counters` (if ``counters``) in one pass that reads :data:`SCAN_SLICE` sessions
        per loop turn, so that packets are not held up behind it; ``done(result)`` at the end
        (within this call when there are few sessions). Time-outs are judged by the loop's
        clock when the pass reaches each call. The pass still under way (to cancel), or None
        when it ended within this call."""
        scan = _Scan(self, loop or asyncio.get_running_loop(), timeout, counters, done, totals)
        self._scans.add(scan)
        scan.step()
        return scan if scan in self._scans else None

    def counters(self) -> dict[str, CallMediaStats]:
        """Every live call's counters so far (a media worker's ``Snapshot``)."""
        return {call_id: s.relay.stats() for call_id, s in self._sessions.items()}

    def timed_out(self, now: float, timeout: float) -> list[str]:
        """Call ids whose media timeout is due (DCE_MEDIA_TIMEOUT); the caller ends them."""
        return [
            call_id
            for call_id, session in self._sessions.items()
            if session.relay.media_timeout_due(now, timeout)
        ]

    def start_watchdog(
        self,
        timeout: float,
        on_timeout: Callable[[str], object],
        interval: float = 1.0,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """Every ``interval`` s, call ``on_timeout(call_id)`` for each call due a media timeout.

        ``on_timeout`` should end the call (BYE both legs, disposition media_timeout) and
        :meth:`close_session` it; until closed, a due call is reported again each sweep.
        """
        loop = loop or asyncio.get_running_loop()
        self.stop_watchdog()

        def swept(result: ScanResult) -> None:
            self._watch_scan = None
            for call_id in result.timed_out:
                if call_id not in self._sessions:
                    continue  # ended while the pass went on
                try:
                    on_timeout(call_id)
                except Exception:
                    logger.exception("media timeout handler failed", extra={"call_id": call_id})
            self._watchdog = loop.call_later(interval, sweep)

        def sweep() -> None:
            # In slices (scan()): a pass over every call in one callback delays the packets.
            self._watchdog = None
            self._watch_scan = self.scan(swept, timeout=timeout, totals=False, loop=loop)

        self._watchdog = loop.call_later(interval, sweep)

    def stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._watch_scan is not None:
            self._watch_scan.cancel()
            self._watch_scan = None
