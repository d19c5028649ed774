"""SIP over WebSocket (RFC 7118): the ``GET /sip`` edge beside UDP and TCP.

Theory of operation
-------------------
A browser SIP client opens ``ws(s)://<http listen>/sip`` offering the ``sip`` subprotocol
(RFC 7118 §4.1). :meth:`WsHub.handle` refuses the upgrade with plain HTTP when it cannot serve
the connection: 403 for a banned source (switch/pike.py), 400 without the ``sip``
subprotocol, 403 when ``token_check`` refuses the ``?token=`` credential, and, for a
connection not bound to a trunk by its token, 429 above ``ConnLimits.max_per_source``
connections from its address and 503 above ``ConnLimits.max_connections`` such connections in
all (each refusal closes the HTTP connection). Otherwise every WebSocket message is
one SIP message (RFC 7118 §5: "each SIP message MUST be carried within a single WebSocket
message"), text or binary. Each becomes one ``feed(data, peer)`` call into the sans-IO core,
with ``peer = Peer("ws" | "wss", remote host, remote port, conn_id)``, followed by
``after()`` (the glue's ``transmit()``), exactly as :class:`switch.transport.TcpHub` does for
framed TCP messages. Responses and in-dialog requests come back through :meth:`send`, which
finds the socket by ``peer.conn``.

What is not SIP never reaches the core and never stops the process:

* a message of only CR/LF (a keep-alive some clients send, RFC 5626 §3.5.1 style) is answered
  with a CRLF "pong";
* a message whose first line is a SIP request or status line, or that carries a ``Via``
  header, goes to the core, whose parser answers a malformed request 400 over this socket
  when it can (RFC 3261 §18.2.1 needs the Via) and drops a malformed response;
* anything else (JSON, HTML, random bytes) closes the socket with 1003 "unsupported data"
  and a reason; a text message that is not UTF-8 is closed by aiohttp with 1007, and a message
  above ``max_frame`` (64 KiB) with 1009.

Each message of a connection not bound to a trunk counts against its address's rate limit
(``Guard.pike``); a source banned meanwhile has its socket closed with 1008. A connection that
carried no SIP message (nor CRLF keep-alive) either way for ``ConnLimits.idle_timeout`` is
closed with 1000 "idle timeout", unless it carries a live call (``Guard.busy``).

When a socket closes, for whatever reason, ``on_close(peer)`` is called once, so the core can
end that connection's calls (BYE toward the buyer, CDR written). A connection never holds a
task while idle: outgoing messages are queued per connection and one short-lived writer task
drains the queue, which keeps 1,000 idle browsers cheap (see bench/bench_webrtc.py ws-idle).

Admission: ``token_check(request)`` (when given) runs on every upgrade and returns the trunk
id the token belongs to, ``""`` to accept the connection without binding it to a trunk (the
core then admits its INVITEs by digest, like UDP), or ``None`` to refuse it with 403.
:meth:`WsHub.trunk_of` gives the glue the trunk bound to a peer's connection.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections import deque
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field

from aiohttp import WSCloseCode, WSMsgType, web

from switch.peer import Peer
from switch.transport import ConnLimits, Guard

logger = logging.getLogger(__name__)

Feed = Callable[[bytes, Peer], None]

#: RFC 7118 §4.1: the WebSocket subprotocol that carries SIP.
SUBPROTOCOL = "sip"
#: The largest SIP message accepted in one WebSocket message (the UDP limit is smaller).
MAX_FRAME = 64 * 1024
#: WebSocket pings every so often; a peer that does not answer is dropped (aiohttp closes it).
HEARTBEAT = 30.0

# RFC 3261 §25.1: Request-Line = Method SP Request-URI SP SIP-Version; Status-Line starts with
# SIP-Version. Only the shape of the first line is checked here; the core parses the rest.
_START_LINE = re.compile(rb"^(?:[A-Za-z!%*_+`'~.-]+ \S+ SIP/\d|SIP/\d\.\d \d{3})")
_VIA_LINE = re.compile(rb"(?im)^(?:via|v)[ \t]*:")


@dataclass(slots=True)
class WsStats:
    """Counters for /metrics: ``open`` is a gauge, the rest only go up."""

    open: int = 0
    opened: int = 0
    refused: int = 0  # upgrades answered 400/403/429/503
    refused_banned: int = 0  # of which: the source is banned
    refused_per_source: int = 0  # of which: 429, too many from its address
    refused_total: int = 0  # of which: 503, too many in all
    closed_idle: int = 0
    dropped: int = 0  # messages from banned sources, dropped unread
    frames_in: int = 0
    frames_out: int = 0
    bad_frames: int = 0  # closed 1003/1007/1009
    keepalives: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "ws_connections_open": self.open,
            "ws_connections_total": self.opened,
            "ws_upgrades_refused": self.refused,
            "ws_refused_banned": self.refused_banned,
            "ws_refused_per_source": self.refused_per_source,
            "ws_refused_total_cap": self.refused_total,
            "ws_closed_idle": self.closed_idle,
            "ws_dropped_banned": self.dropped,
            "ws_frames_in": self.frames_in,
            "ws_frames_out": self.frames_out,
            "ws_bad_frames": self.bad_frames,
            "ws_keepalives": self.keepalives,
        }


@dataclass(slots=True, eq=False)
class _Conn:
    ws: web.WebSocketResponse
    peer: Peer
    trunk_id: str
    binary: bool = False  # the client speaks in binary frames: answer in kind
    counted: bool = False  # counted against the caps of an untrusted source
    last_activity: float = 0.0  # last SIP message or keep-alive either way (idle check)
    out: deque[bytes] = field(default_factory=deque)
    writer: asyncio.Task[None] | None = None


class WsHub:
    """Every SIP-over-WebSocket connection of this process, by connection id."""

    def __init__(
        self,
        feed: Feed,
        after: Callable[[], None],
        on_close: Callable[[Peer], None],
        *,
        token_check: Callable[[web.Request], str | None] | None = None,
        guard: Guard | None = None,
        limits: ConnLimits | None = None,
        max_frame: int = MAX_FRAME,
        heartbeat: float | None = HEARTBEAT,
        first_conn_id: int = 1_000_000_000,
    ) -> None:
        self._feed = feed
        self._after = after
        self._on_close = on_close
        self._token_check = token_check
        self.guard = guard = guard or Guard()
        self._banned = guard.banned
        self.limits = limits or ConnLimits()
        self.max_frame = max_frame
        self.heartbeat = heartbeat
        # Connection ids start far above TcpHub's so a Peer never names the wrong socket.
        self._ids = itertools.count(first_conn_id)
        self._conns: dict[int, _Conn] = {}
        self._untrusted = 0
        self._by_host: dict[str, int] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[bool]] = set()
        self.stats = WsStats()

    def __len__(self) -> int:
        return len(self._conns)

    def trunk_of(self, peer: Peer) -> str | None:
        """The trunk id a connection's token bound it to; None if unbound or gone."""
        conn = self._conns.get(peer.conn)
        return conn.trunk_id or None if conn is not None else None

    # ------------------------------------------------------------------ inbound

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /sip``: upgrade to a SIP WebSocket and pump it until it closes."""
        ws = web.WebSocketResponse(
            protocols=(SUBPROTOCOL,),
            max_msg_size=self.max_frame,
            heartbeat=self.heartbeat,
            compress=False,  # permessage-deflate costs ~100 KB per connection; SIP is small
        )
        peername = request.transport.get_extra_info("peername") if request.transport else None
        host, port = (peername[0], peername[1]) if peername else (request.remote or "", 0)
        if host in self._banned:
            self.stats.refused += 1
            self.stats.refused_banned += 1
            return _refuse(403, "Forbidden\n")
        ready = ws.can_prepare(request)
        if not ready.ok:
            self.stats.refused += 1
            return _refuse(400, "WebSocket upgrade expected\n")
        if ready.protocol != SUBPROTOCOL:
            # RFC 7118 §4.1: the client MUST offer "sip"; without it we cannot speak SIP.
            self.stats.refused += 1
            return _refuse(400, "Sec-WebSocket-Protocol: sip is required\n")
        trunk_id = ""
        if self._token_check is not None:
            checked = self._token_check(request)
            if checked is None:
                self.stats.refused += 1
                logger.info("websocket refused: bad token", extra={"peer": request.remote})
                return _refuse(403, "Forbidden\n")
            trunk_id = checked
        # A connection bound to a trunk by its token, or from a trusted address, is never
        # refused for the caps: they keep floods of anonymous sockets in check.
        counted = not trunk_id and not self.guard.trusted(host)
        if counted:
            limits = self.limits
            if limits.max_connections and self._untrusted >= limits.max_connections:
                self.stats.refused += 1
                self.stats.refused_total += 1
                return _refuse(503, "Busy\n", {"Retry-After": "5"})
            if limits.max_per_source and self._by_host.get(host, 0) >= limits.max_per_source:
                self.stats.refused += 1
                self.stats.refused_per_source += 1
                return _refuse(429, "Too many connections from this address\n")
        await ws.prepare(request)
        loop = asyncio.get_running_loop()
        conn_id = next(self._ids)
        peer = Peer("wss" if request.secure else "ws", host, port, conn_id)
        conn = _Conn(ws, peer, trunk_id, counted=counted, last_activity=loop.time())
        self._conns[conn_id] = conn
        if counted:
            self._untrusted += 1
            self._by_host[host] = self._by_host.get(host, 0) + 1
        self.stats.open += 1
        self.stats.opened += 1
        self._arm_sweep(loop)
        try:
            await self._pump(conn)
        finally:
            self._conns.pop(conn_id, None)
            if counted:
                self._untrusted -= 1
                left = self._by_host.get(host, 1) - 1
                if left:
                    self._by_host[host] = left
                else:
                    self._by_host.pop(host, None)
            self.stats.open -= 1
            if conn.writer is not None and not conn.writer.done():
                conn.writer.cancel()
            try:
                self._on_close(peer)
            except Exception:
                logger.exception("websocket close handling failed", extra={"peer": str(peer)})
            self._after()
        return ws

    async def _pump(self, conn: _Conn) -> None:
        ws = conn.ws
        host = conn.peer.host
        pike = None if conn.trunk_id else self.guard.pike
        banned = self._banned
        time = asyncio.get_running_loop().time
        async for msg in ws:
            if host in banned:
                self.stats.dropped += 1
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"banned")
                return
            now = time()
            if pike is not None and not pike.hit(host, now):
                self.stats.dropped += 1
                self.guard.on_ban(host)
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"rate limit")
                return
            conn.last_activity = now
            if msg.type is WSMsgType.TEXT:
                data = msg.data.encode("utf-8")
            elif msg.type is WSMsgType.BINARY:
                data = msg.data
                conn.binary = True
            else:  # ERROR (too big, bad UTF-8): aiohttp has already closed it with a code
                self.stats.bad_frames += 1
                logger.info(
                    "websocket protocol error",
                    extra={"peer": str(conn.peer), "reason": str(ws.exception())},
                )
                return
            self.stats.frames_in += 1
            if not data.strip(b"\r\n"):
                self.stats.keepalives += 1
                self.send(b"\r\n", conn.peer)
                continue
            if not (_START_LINE.match(data) or _VIA_LINE.search(data, 0, 8192)):
                self.stats.bad_frames += 1
                logger.info("websocket message is not SIP", extra={"peer": str(conn.peer)})
                await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=b"not a SIP message")
                return
            try:
                self._feed(data, conn.peer)
            except Exception:
                logger.exception(
                    "websocket message handling failed", extra={"peer": str(conn.peer)}
                )
            self._after()

    # ----------------------------------------------------------------- outbound

    def send(self, data: bytes, peer: Peer) -> None:
        """Queue one SIP message for ``peer``'s connection; dropped if it has closed.

        RFC 7118 §5: text frames for UTF-8 messages, binary otherwise; but a client that
        sends binary frames gets binary ones back (some, like sipua, read only those).
        """
        conn = self._conns.get(peer.conn)
        if conn is None or conn.ws.closed:
            logger.debug("websocket gone, message dropped", extra={"peer": str(peer)})
            return
        conn.out.append(data)
        loop = asyncio.get_running_loop()
        conn.last_activity = loop.time()
        if conn.writer is None or conn.writer.done():
            conn.writer = loop.create_task(self._write(conn))

    async def _write(self, conn: _Conn) -> None:
        ws, out = conn.ws, conn.out
        try:
            while out:
                data = out.popleft()
                if conn.binary:
                    await ws.send_bytes(data)
                    self.stats.frames_out += 1
                    continue
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    await ws.send_bytes(data)
                else:
                    await ws.send_str(text)
                self.stats.frames_out += 1
        except (ConnectionError, RuntimeError) as exc:
            # Closed under us: the pump sees the close and reports it.
            out.clear()
            logger.debug(
                "websocket send failed", extra={"peer": str(conn.peer), "reason": str(exc)}
            )

    # ----------------------------------------------------------------- idleness

    def _arm_sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sweeper is None and self._conns and self.limits.idle_timeout:
            self._sweeper = loop.call_later(self.limits.sweep_interval(), self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close the connections idle for ``idle_timeout`` that carry no live call."""
        self._sweeper = None
        now = loop.time()
        idle = self.limits.idle_timeout
        busy: Container[object] | None = None
        for conn in list(self._conns.values()):
            if conn.ws.closed or now - conn.last_activity < idle:
                continue
            if busy is None:
                busy = self.guard.busy()
            if conn.peer.conn in busy:
                continue  # a live call's connection is not idle until the call ends
            self.stats.closed_idle += 1
            conn.last_activity = now  # closing takes a moment: count it once
            logger.info("closing idle websocket", extra={"peer": str(conn.peer)})
            task = loop.create_task(
                conn.ws.close(code=WSCloseCode.OK, message=b"idle timeout")
            )
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        self._arm_sweep(loop)

    async def close_all(self) -> None:
        """Shutdown: close every socket with 1001 (going away), after pending sends."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        conns = list(self._conns.values())
        for conn in conns:
            if conn.writer is not None and not conn.writer.done():
                try:
                    await asyncio.wait_for(asyncio.shield(conn.writer), 1.0)
                except (TimeoutError, asyncio.CancelledError):
                    pass
        await asyncio.gather(
            *(c.ws.close(code=WSCloseCode.GOING_AWAY, message=b"shutting down") for c in conns),
            return_exceptions=True,
        )


def _refuse(status: int, text: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """A refused upgrade: the answer, then the HTTP connection is closed at once."""
    response = web.Response(status=status, headers=headers, text=text)
    response.force_close()
    return response
