"""Thin asyncio transports for SIP over UDP and TCP (RFC 3261 §18), with their guards.

Each transport only moves bytes: ``datagram_received``/``data_received`` feed the sans-IO core
with ``now = loop.time()`` and then ask the owner to ``transmit()``. TCP connections are framed
by :class:`switch.framing.StreamFramer`; a connection that stalls half-way through a message,
or sends something that cannot be framed, is answered (when possible) and closed, never left
to grow.

Before anything reads a packet, the :class:`Guard` the application hands in is consulted
(switch/pike.py): a banned source's datagram or connection is dropped after one ``dict``
lookup, and every message is counted against its source's rate limit. TCP connections are
capped (:class:`ConnLimits`): per source and in total for sources that are not trusted (a
trunk's addresses are never refused), and a connection that carried no SIP message either
way for ``idle_timeout`` is closed, unless it carries a live call (``Guard.busy``): a caller's
connection is the only way to send it a BYE, so it stays open until the call ends.

Behind a trusted proxy (switch/proxy.py), ``Guard.identity`` names the source each of the
proxy's messages counts against: the rate limit and the bans apply to the callers the proxy
names, and a banned caller's messages are dropped one by one while the proxy's own address
(and its connection) is never refused.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import Any, cast

from switch.framing import FramingError, StreamFramer, error_response
from switch.peer import Peer
from switch.pike import Pike

logger = logging.getLogger(__name__)

Feed = Callable[[bytes, Peer], None]

# A peer that has sent part of a message and then nothing for this long is dropped.
STALL_TIMEOUT = 30.0
UDP_RCVBUF = 4 * 1024 * 1024


def _nothing_busy() -> Container[object]:
    return ()


def _never(host: str) -> bool:
    return False


def _ignore(host: str) -> None:
    return None


@dataclass(slots=True)
class Guard:
    """What the transports ask before they feed the core; the application fills it in.

    ``pike`` counts messages per source and bans (None: no rate limit). ``on_ban(host)`` is
    called once when a transport's count banned ``host`` (the application arms the pike's
    timer and mirrors the ban to the kernel). ``trusted(host)`` exempts a source from the
    connection caps. ``busy()`` names the connections that carry a live call: connection ids
    (``Peer.conn``) and, for connections we opened, ``(host, port)``. ``identity(data, host)``
    names the source a message from ``host`` counts against (for a trusted proxy's message,
    the source it names: switch/proxy.py); None when no proxy is trusted.
    """

    pike: Pike | None = None
    on_ban: Callable[[str], None] = _ignore
    trusted: Callable[[str], bool] = _never
    busy: Callable[[], Container[object]] = _nothing_busy
    identity: Callable[[bytes, str], str] | None = None

    @property
    def banned(self) -> dict[str, float]:
        return self.pike.banned if self.pike is not None else {}


@dataclass(frozen=True, slots=True)
class ConnLimits:
    """Stream connection limits (docs/settings.md); 0 turns a limit off.

    ``max_connections`` and ``max_per_source`` count inbound connections from sources that
    are not trusted; ``idle_timeout`` applies to every connection without a live call.
    """

    max_connections: int = 2048
    max_per_source: int = 32
    idle_timeout: float = 180.0

    def sweep_interval(self) -> float:
        """How often connections are checked for stalls and idleness."""
        shortest = min(STALL_TIMEOUT, self.idle_timeout or STALL_TIMEOUT)
        return min(5.0, max(0.05, shortest / 4))


@dataclass(slots=True)
class ConnStats:
    """Counters for /metrics; ``open`` is a gauge, the rest only go up."""

    open: int = 0
    opened: int = 0
    dropped: int = 0  # messages (or connections) from banned sources, dropped unread
    refused_banned: int = 0
    refused_per_source: int = 0
    refused_total: int = 0
    closed_idle: int = 0
    closed_stalled: int = 0


class UdpTransport(asyncio.DatagramProtocol):
    def __init__(self, feed: Feed, after: Callable[[], None], guard: Guard | None = None) -> None:
        self._feed = feed
        self._after = after
        guard = guard or Guard()
        self._pike = guard.pike
        self._banned = guard.banned
        self._on_ban = guard.on_ban
        self._identity = guard.identity
        self._time: Callable[[], float] = lambda: 0.0
        self.dropped = 0  # datagrams from banned sources
        # Every byte read, dropped or not: the overload control's read rate (dce/load.py),
        # which must not mistake a flood it drops unread for a queue it cannot drain.
        self.rx_bytes = 0
        self.transport: asyncio.DatagramTransport | None = None
        # Source address -> its Peer, one object per source: a live call keeps its caller's
        # Peer, and each transaction one for 32 s after it; a Peer (a NamedTuple) is a tracked
        # object the collector walks (issue 13). Sources are few; cleared when full.
        self._peers: dict[tuple[Any, ...], Peer] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self._time = asyncio.get_running_loop().time
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                # A burst of INVITEs must queue in the kernel, not be dropped (sip-floor.md).
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
            except OSError:
                pass

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.rx_bytes += len(data)
        host = addr[0]
        # Behind a trusted proxy, the caller it names is who the limits count.
        who = host if self._identity is None else self._identity(data, host)
        # A banned source costs this lookup and nothing more: no parse, no log, no transmit.
        if who in self._banned:
            self.dropped += 1
            return
        pike = self._pike
        if pike is not None and not pike.hit(who, self._time()):
            self.dropped += 1
            self._on_ban(who)
            return
        peer = self._peers.get(addr)
        if peer is None:
            if len(self._peers) >= 4096:
                self._peers.clear()
            peer = self._peers[addr] = Peer("udp", host, addr[1])
        try:
            self._feed(data, peer)
        except Exception:
            logger.exception("udp datagram handling failed", extra={"peer": f"{host}:{addr[1]}"})
        self._after()

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: the transaction timers deal with the loss.
        logger.debug("udp error: %s", exc)

    def send(self, data: bytes, host: str, port: int) -> None:
        if self.transport is not None:
            self.transport.sendto(data, (host, port))


class TcpConnection(asyncio.Protocol):
    """One SIP-over-TCP connection, inbound or outbound."""

    def __init__(self, owner: TcpHub, conn_id: int, *, inbound: bool = True) -> None:
        self.owner = owner
        self.conn_id = conn_id
        self.inbound = inbound
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None
        self.last_progress = 0.0  # last whole message or keep-alive received (stall check)
        self.last_activity = 0.0  # last message or keep-alive either way (idle check)
        self.counted = False  # counted against the caps of an untrusted source
        self.refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have its methods.
        self.transport = cast(asyncio.Transport, transport)
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = Peer("tcp", host, port, self.conn_id)
        owner = self.owner
        if self.inbound and not owner.accept(self):
            self.refused = True
            # Refused at once: a banned source gets a reset, a capped one an orderly close.
            if host in owner.banned:
                self.transport.abort()
            else:
                self.transport.close()
            return
        owner.connections[self.conn_id] = self
        owner.stats.open += 1
        owner.stats.opened += 1
        self.last_progress = self.last_activity = owner.loop.time()
        owner.arm_sweep()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        peer = self.peer
        assert peer is not None
        owner = self.owner
        if peer.host in owner.banned:
            # Banned while connected: what it sends is not read, and the connection goes.
            owner.stats.dropped += 1
            self.refused = True
            if self.transport is not None:
                self.transport.abort()
            return
        pike = owner.pike
        identity = owner.guard.identity
        try:
            self.framer.receive_data(data)
            while (msg := self.framer.next_message()) is not None:
                now = owner.loop.time()
                who = peer.host if identity is None else identity(msg, peer.host)
                if who != peer.host:
                    # A trusted proxy's message for a caller: the caller's limits, and only
                    # this message dropped, never the proxy's connection.
                    if who in owner.banned:
                        owner.stats.dropped += 1
                        continue
                    if pike is not None and not pike.hit(who, now):
                        owner.stats.dropped += 1
                        owner.on_ban(who)
                        continue
                    self.last_progress = self.last_activity = now
                    owner.feed(msg, peer)
                    continue
                if pike is not None and not pike.hit(peer.host, now):
                    owner.stats.dropped += 1
                    owner.on_ban(peer.host)
                    self.refused = True
                    if self.transport is not None:
                        self.transport.abort()
                    break
                self.last_progress = self.last_activity = now
                owner.feed(msg, peer)
            pong = self.framer.data_to_send()
            if pong and self.transport is not None and not self.refused:
                self.last_progress = self.last_activity = owner.loop.time()
                self.transport.write(pong)
        except FramingError as exc:
            logger.info(
                "tcp framing error, closing", extra={"peer": f"{peer}", "reason": exc.reason}
            )
            if self.transport is not None:
                answer = error_response(exc)  # with the request's Via, From, To ...
                if answer is not None:
                    self.transport.write(answer)
                self.transport.close()
        except Exception:
            logger.exception("tcp data handling failed", extra={"peer": f"{peer}"})
        owner.after()

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.forget(self)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.last_activity = self.owner.loop.time()
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass(slots=True)
class _Sources:
    """Inbound connections of untrusted sources: in total and per address."""

    total: int = 0
    by_host: dict[str, int] = field(default_factory=dict)

    def add(self, host: str) -> None:
        self.total += 1
        self.by_host[host] = self.by_host.get(host, 0) + 1

    def remove(self, host: str) -> None:
        self.total -= 1
        left = self.by_host.get(host, 1) - 1
        if left:
            self.by_host[host] = left
        else:
            self.by_host.pop(host, None)


class TcpHub:
    """All TCP connections, by id; outbound connections to buyers are opened on demand."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        feed: Feed,
        after: Callable[[], None],
        *,
        guard: Guard | None = None,
        limits: ConnLimits | None = None,
    ) -> None:
        self.loop = loop
        self.feed = feed
        self.after = after
        self.guard = guard = guard or Guard()
        self.pike = guard.pike
        self.banned = guard.banned
        self.on_ban = guard.on_ban
        self.limits = limits or ConnLimits()
        self.stats = ConnStats()
        self.connections: dict[int, TcpConnection] = {}
        self.outbound: dict[tuple[str, int], int] = {}
        self._pending: dict[tuple[str, int], list[bytes]] = {}
        self._ids = itertools.count(1)
        self._sources = _Sources()
        self._sweeper: asyncio.TimerHandle | None = None

    def factory(self) -> TcpConnection:
        """Protocol factory for the listening socket (inbound connections)."""
        return TcpConnection(self, next(self._ids))

    # ----------------------------------------------------------- admission of connections

    def accept(self, conn: TcpConnection) -> bool:
        """May this inbound connection stay? Counts it when it may (ConnLimits)."""
        assert conn.peer is not None
        host = conn.peer.host
        stats = self.stats
        if host in self.banned:
            stats.refused_banned += 1
            stats.dropped += 1
            return False
        if self.guard.trusted(host):
            return True
        limits, sources = self.limits, self._sources
        if limits.max_connections and sources.total >= limits.max_connections:
            stats.refused_total += 1
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("tcp connection refused: total cap", extra={"peer": host})
            return False
        if limits.max_per_source and sources.by_host.get(host, 0) >= limits.max_per_source:
            stats.refused_per_source += 1
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("tcp connection refused: per-source cap", extra={"peer": host})
            return False
        sources.add(host)
        conn.counted = True
        return True

    def forget(self, conn: TcpConnection) -> None:
        """A connection closed: release its slot, whatever closed it."""
        if self.connections.pop(conn.conn_id, None) is not None:
            self.stats.open -= 1
        if conn.counted and conn.peer is not None:
            conn.counted = False
            self._sources.remove(conn.peer.host)
        if conn.peer is not None and not conn.inbound:
            key = (conn.peer.host, conn.peer.port)
            if self.outbound.get(key) == conn.conn_id:
                del self.outbound[key]

    def untrusted_from(self, host: str) -> int:
        """Inbound connections counted against ``host``'s cap (for tests and metrics)."""
        return self._sources.by_host.get(host, 0)

    # ----------------------------------------------------------- stalls and idleness

    def arm_sweep(self) -> None:
        if self._sweeper is None and self.connections:
            self._sweeper = self.loop.call_later(self.limits.sweep_interval(), self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = self.loop.time()
        idle = self.limits.idle_timeout
        busy: Container[object] | None = None
        for conn in list(self.connections.values()):
            transport = conn.transport
            if transport is None or transport.is_closing():
                continue
            if conn.framer.buffered and now - conn.last_progress >= STALL_TIMEOUT:
                self.stats.closed_stalled += 1
                logger.info(
                    "closing stalled tcp connection",
                    extra={"peer": f"{conn.peer}", "buffered": conn.framer.buffered},
                )
                transport.abort()
            elif idle and now - conn.last_activity >= idle:
                if busy is None:
                    busy = self.guard.busy()
                peer = conn.peer
                if conn.conn_id in busy or (peer is not None and (peer.host, peer.port) in busy):
                    continue  # a live call's connection is not idle until the call ends
                self.stats.closed_idle += 1
                logger.info("closing idle tcp connection", extra={"peer": f"{peer}"})
                transport.close()
        self.arm_sweep()

    # ----------------------------------------------------------- sending

    def send(self, data: bytes, peer: Peer) -> None:
        conn = self.connections.get(peer.conn) if peer.conn else None
        if conn is None:
            conn_id = self.outbound.get((peer.host, peer.port))
            conn = self.connections.get(conn_id) if conn_id is not None else None
        if conn is not None:
            conn.send(data)
            return
        key = (peer.host, peer.port)
        queue = self._pending.get(key)
        if queue is not None:
            queue.append(data)
            return
        self._pending[key] = [data]
        self.loop.create_task(self._connect(key))

    async def _connect(self, key: tuple[str, int]) -> None:
        try:
            _, proto = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: TcpConnection(self, next(self._ids), inbound=False), key[0], key[1]
                ),
                5.0,
            )
        except (OSError, TimeoutError) as exc:
            # The transaction's Timer B/F turns this into a failed attempt.
            logger.info(
                "tcp connect failed", extra={"peer": f"{key[0]}:{key[1]}", "reason": str(exc)}
            )
            self._pending.pop(key, None)
            return
        assert isinstance(proto, TcpConnection)
        self.outbound[key] = proto.conn_id
        for data in self._pending.pop(key, []):
            proto.send(data)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.connections.values()):
            conn.close()
