"""The asyncio edge of the relay: four UDP sockets per call on uvloop, and their manager.

Everything that decides lives in ``media/relay.py``; this module binds sockets, feeds each
datagram to its :class:`~media.relay.Stream` with ``now = loop.time()`` and sends what the
stream says to forward. Per packet that is one ``datagram_received`` call, one
``Stream.receive`` call and one ``sendto`` on the peer socket: no object is built beyond the
``bytes`` and address tuple asyncio already made, nothing is logged, and the payload is sent
as the same ``bytes`` object it arrived in (no copy).

Scaling beyond one core
-----------------------
One relay process forwards about as many calls as one core allows (see ``bench/bench_relay.py``
for the figures). The layout that scales is N media worker processes, each running its own
uvloop with its own :class:`RelayManager` over a disjoint slice of DCE_RTP_PORTS (worker i
gets pairs ``low + 2*i, low + 2*(i + N), ...`` or a contiguous sub-range), pinned one per
core. The signalling process keeps the SDP work (``media/sdp.py`` is pure) and talks to the
workers over a local socket with a tiny command set: ``open(call_id) -> (a_port, b_port)``,
``set_remote(call_id, leg, endpoint, signal_ip)``, ``answered``, ``close(call_id) -> stats``,
plus a periodic push of media-timeout call ids and totals for /metrics. The data path never
crosses processes: RTP arrives at, and leaves from, the worker that owns the ports, so there
is no shared state and no lock. The worker for a new call is the one with the fewest live
calls. ``CallRelay`` and ``RelayManager`` already have exactly this command surface, so the
worker is a loop around them; what is not built yet is that RPC layer.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from media.errors import InvalidStateError, MediaError, PortsExhausted
from media.ports import PortAllocator
from media.relay import CallMediaStats, CallRelay, Leg, RelayConfig, Stream

logger = logging.getLogger(__name__)

#: Ports already taken by another process are skipped; give up after this many tries.
_BIND_ATTEMPTS = 8


class _Endpoint(asyncio.DatagramProtocol):
    """One bound socket. ``out`` is the peer socket's transport (set once all four exist)."""

    __slots__ = ("_time", "errors", "on_lost", "out", "stream", "transport")

    def __init__(self, stream: Stream, time: Callable[[], float]) -> None:
        self.stream = stream
        self._time = time
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


class RelaySession:
    """One call's four sockets (A RTP/RTCP, B RTP/RTCP) around its :class:`CallRelay`.

    Build with :meth:`RelayManager.open_session`. ``relay`` is the sans-IO state the call logic
    drives (``anchor``, ``set_remote``, ``answered``, ``media_timeout_due``, ``stats``).
    """

    __slots__ = (
        "_closing",
        "_endpoints",
        "_open",
        "_ports",
        "_release",
        "_waiter",
        "call_id",
        "on_released",
        "relay",
    )

    def __init__(
        self,
        call_id: str,
        relay: CallRelay,
        endpoints: list[_Endpoint],
        ports: tuple[int, int],
        release: Callable[[int], object],
    ) -> None:
        self.call_id = call_id
        self.relay = relay
        self._endpoints = endpoints
        self._ports = ports
        self._release = release
        self._closing = False
        self._open = len(endpoints)  # sockets not yet closed
        self._waiter: asyncio.Future[None] | None = None
        self.on_released: Callable[[RelaySession], object] | None = None
        for ep in endpoints:
            ep.on_lost = self._socket_closed

    @classmethod
    async def open(
        cls,
        call_id: str,
        media_ip: str,
        allocator: PortAllocator,
        config: RelayConfig | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> RelaySession:
        """Allocate two port pairs, bind four sockets on ``media_ip``, start receiving.

        Raises:
            PortsExhausted: (503) no free pair, or every tried port was taken by another
                process. Nothing stays allocated or bound when this raises.
        """
        loop = loop or asyncio.get_running_loop()
        pairs: list[int] = []
        socks: list[socket.socket] = []
        transports: list[asyncio.BaseTransport] = []
        try:
            for _ in range(2):
                port, pair = bind_pair(media_ip, allocator)
                pairs.append(port)
                socks.extend(pair)
            relay = CallRelay(media_ip, pairs[0], pairs[1], config)
            streams = [
                relay.stream(Leg.A, False),
                relay.stream(Leg.A, True),
                relay.stream(Leg.B, False),
                relay.stream(Leg.B, True),
            ]
            endpoints = [_Endpoint(s, loop.time) for s in streams]
            for sock, ep in zip(socks, endpoints, strict=True):
                transport, _ = await loop.create_datagram_endpoint(
                    lambda ep=ep: ep,  # type: ignore[misc]
                    sock=sock,
                )
                transports.append(transport)
        except BaseException:
            # Cancelled or failed half way: close what was opened, give every port back.
            for tr in transports:
                tr.close()
            for sock in socks[len(transports) :]:
                sock.close()
            for port in pairs:
                allocator.release(port)
            raise
        # A's RTP goes out of B's RTP socket and so on (relay.py pairs the streams the same way).
        a_rtp, a_rtcp, b_rtp, b_rtcp = endpoints
        a_rtp.out, b_rtp.out = b_rtp.transport, a_rtp.transport
        a_rtcp.out, b_rtcp.out = b_rtcp.transport, a_rtcp.transport
        return cls(call_id, relay, endpoints, (pairs[0], pairs[1]), allocator.release)

    @property
    def ports(self) -> tuple[int, int]:
        """The switch's RTP ports facing A and B (RTCP is each + 1)."""
        return self._ports

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (the ports come back a moment later)."""
        return self._closing

    @property
    def send_errors(self) -> int:
        return sum(ep.errors for ep in self._endpoints)

    def close(self) -> CallMediaStats:
        """Close the four sockets (idempotent); the final counters.

        The ports return to the allocator when the sockets are really closed, on the next
        loop iteration (:meth:`wait_closed`), so a new call never gets a port still bound.
        """
        if not self._closing:
            self._closing = True
            for ep in self._endpoints:
                ep.out = None
                if ep.transport is not None:
                    ep.transport.close()
        return self.relay.stats()

    async def wait_closed(self) -> None:
        """Until every socket is closed and the ports are back in the pool."""
        if self.ports_released:
            return
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._waiter)

    def _socket_closed(self) -> None:
        self._open -= 1
        if self._open:
            return
        for port in self._ports:
            self._release(port)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self.on_released is not None:
            self.on_released(self)

    @property
    def ports_released(self) -> bool:
        return self._open == 0


class RelayManager:
    """All relay sessions of this process: ports, open/close by call id, totals, timeouts."""

    def __init__(
        self,
        media_ip: str,
        allocator: PortAllocator,
        config: RelayConfig | None = None,
    ) -> None:
        self.media_ip = media_ip
        self.allocator = allocator
        self.config = config or RelayConfig()
        self._sessions: dict[str, RelaySession] = {}
        self._opened = 0
        self._refused = 0
        # Counters of closed sessions, so totals stay monotonic for Prometheus.
        self._closed = RelayTotals(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        self._watchdog: asyncio.TimerHandle | None = None
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
            session = await RelaySession.open(call_id, self.media_ip, self.allocator, self.config)
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
        if not session.ports_released:
            self._closing_sessions.add(session)
            session.on_released = self._closing_sessions.discard
        self._closed.add(stats, session.send_errors)
        return stats

    def close_all(self) -> None:
        """Close every session (shutdown, after the BYEs)."""
        self.stop_watchdog()
        for call_id in list(self._sessions):
            self.close_session(call_id)

    async def wait_closed(self) -> None:
        """Until the sockets of every session closed so far are closed (ports back)."""
        for session in list(self._closing_sessions):
            await session.wait_closed()

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
            ports_free=self.allocator.free,
            ports_capacity=self.allocator.capacity,
        )
        for session in self._sessions.values():
            t.add(session.relay.stats(), session.send_errors)
        return t

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

        def sweep() -> None:
            for call_id in self.timed_out(loop.time(), timeout):
                try:
                    on_timeout(call_id)
                except Exception:
                    logger.exception("media timeout handler failed", extra={"call_id": call_id})
            self._watchdog = loop.call_later(interval, sweep)

        self._watchdog = loop.call_later(interval, sweep)

    def stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
