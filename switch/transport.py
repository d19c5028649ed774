"""Thin asyncio transports for SIP over UDP and TCP (RFC 3261 §18).

Each transport only moves bytes: ``datagram_received``/``data_received`` feed the sans-IO core
with ``now = loop.time()`` and then ask the owner to ``transmit()``. TCP connections are framed
by :class:`switch.framing.StreamFramer`; a connection that stalls half-way through a message,
or sends something that cannot be framed, is answered (when possible) and closed, never left
to grow.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any, cast

from switch.framing import FramingError, StreamFramer
from switch.peer import Peer

logger = logging.getLogger(__name__)

Feed = Callable[[bytes, Peer], None]

# A peer that has sent part of a message and then nothing for this long is dropped.
STALL_TIMEOUT = 30.0
# A connection with no traffic at all for this long is closed (RFC 5626 keep-alives reset it).
IDLE_TIMEOUT = 600.0
UDP_RCVBUF = 4 * 1024 * 1024


class UdpTransport(asyncio.DatagramProtocol):
    def __init__(self, feed: Feed, after: Callable[[], None]) -> None:
        self._feed = feed
        self._after = after
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket

            try:
                # A burst of INVITEs must queue in the kernel, not be dropped (sip-floor.md).
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
            except OSError:
                pass

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            self._feed(data, Peer("udp", addr[0], addr[1]))
        except Exception:
            logger.exception("udp datagram handling failed", extra={"peer": f"{addr[0]}:{addr[1]}"})
        self._after()

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: the transaction timers deal with the loss.
        logger.debug("udp error: %s", exc)

    def send(self, data: bytes, host: str, port: int) -> None:
        if self.transport is not None:
            self.transport.sendto(data, (host, port))


class TcpConnection(asyncio.Protocol):
    """One SIP-over-TCP connection, inbound or outbound."""

    def __init__(self, owner: TcpHub, conn_id: int) -> None:
        self.owner = owner
        self.conn_id = conn_id
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None
        self.last_progress = 0.0
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have its methods.
        self.transport = cast(asyncio.Transport, transport)
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = Peer("tcp", host, port, self.conn_id)
        self.owner.connections[self.conn_id] = self
        self.last_progress = self.owner.loop.time()
        self._arm()

    def _arm(self) -> None:
        self._watchdog = self.owner.loop.call_later(STALL_TIMEOUT, self._check)

    def _check(self) -> None:
        now = self.owner.loop.time()
        idle = now - self.last_progress
        if (self.framer.buffered and idle >= STALL_TIMEOUT) or idle >= IDLE_TIMEOUT:
            logger.info(
                "closing stalled tcp connection",
                extra={"peer": f"{self.peer}", "buffered": self.framer.buffered},
            )
            if self.transport is not None:
                self.transport.abort()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        try:
            self.framer.receive_data(data)
            while (msg := self.framer.next_message()) is not None:
                self.last_progress = self.owner.loop.time()
                self.owner.feed(msg, self.peer)
            pong = self.framer.data_to_send()
            if pong and self.transport is not None:
                self.last_progress = self.owner.loop.time()
                self.transport.write(pong)
        except FramingError as exc:
            logger.info(
                "tcp framing error, closing", extra={"peer": f"{self.peer}", "reason": exc.reason}
            )
            if self.transport is not None:
                self.transport.write(
                    f"SIP/2.0 {exc.status} {exc.reason}\r\nContent-Length: 0\r\n\r\n".encode()
                )
                self.transport.close()
        except Exception:
            logger.exception("tcp data handling failed", extra={"peer": f"{self.peer}"})
        self.owner.after()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        self.owner.connections.pop(self.conn_id, None)
        if self.peer is not None:
            self.owner.outbound.pop((self.peer.host, self.peer.port), None)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class TcpHub:
    """All TCP connections, by id; outbound connections to buyers are opened on demand."""

    def __init__(self, loop: asyncio.AbstractEventLoop, feed: Feed, after: Callable[[], None]):
        self.loop = loop
        self.feed = feed
        self.after = after
        self.connections: dict[int, TcpConnection] = {}
        self.outbound: dict[tuple[str, int], int] = {}
        self._pending: dict[tuple[str, int], list[bytes]] = {}
        self._ids = itertools.count(1)

    def factory(self) -> TcpConnection:
        return TcpConnection(self, next(self._ids))

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
                self.loop.create_connection(self.factory, key[0], key[1]), 5.0
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
        for conn in list(self.connections.values()):
            if conn.transport is not None:
                conn.transport.close()
