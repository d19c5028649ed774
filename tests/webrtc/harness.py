"""A small switch for the WebRTC tests: the real SwitchCore fed by the real WsHub, with
open_webrtc as the media, and a Python SIP buyer that echoes RTP.

This is the wiring of dce/pump.py, in miniature: ``transmit()`` sends the core's output by
``peer.transport`` (UDP to the buyer, WebSocket to the browser), runs its effects
(``RouteCall`` answers with the targets, ``OpenMedia`` opens the WebRTC session,
``SendDtmf`` sends through it, ``CallEnded`` closes the session and keeps the call's record)
and re-arms the core's single timer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web

from dce.phone import add_phone_routes
from media.errors import MediaError
from media.ports import PortAllocator
from media.webrtc import WebRtcConfig, WebRtcSession, open_webrtc
from switch.context import CoreConfig
from switch.core import SwitchCore
from switch.effects import CallEnded, OpenMedia, RouteCall, Routed, SendDtmf
from switch.message import SipRequest, SipResponse, make_response, parse_message
from switch.outside import AdmitResult
from switch.peer import Peer
from switch.record import CallRecord, Outcome
from switch.websocket import WsHub
from tests.ports import free_port_range

logger = logging.getLogger(__name__)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, on_data: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.on_data = on_data
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.on_data(data, (addr[0], addr[1]))


# --------------------------------------------------------------------------------- buyer


@dataclass
class BuyerCall:
    call_id: str
    invite: SipRequest
    acked: bool = False
    bye: bool = False
    cancelled: bool = False


@dataclass
class Buyer:
    """A SIP UAS on UDP that answers every INVITE and echoes the RTP it receives."""

    answer_delay: float = 0.2
    echo: bool = True
    codec: int = 0  # 0 PCMU, 8 PCMA
    calls: list[BuyerCall] = field(default_factory=list)
    rtp_in: int = 0
    rtp_out: int = 0
    events: list[int] = field(default_factory=list)  # RFC 4733 event codes (first packet each)
    payload_types: set[int] = field(default_factory=set)
    rtp_from: set[tuple[str, int]] = field(default_factory=set)
    port: int = 0  # the SIP port: given (a config names it), or 0 for any free one
    rtp_port: int = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        t1, self._sip = await loop.create_datagram_endpoint(
            lambda: _Udp(self._on_sip), local_addr=("127.0.0.1", self.port)
        )
        t2, self._rtp = await loop.create_datagram_endpoint(
            lambda: _Udp(self._on_rtp), local_addr=("127.0.0.1", 0)
        )
        self.port = t1.get_extra_info("sockname")[1]
        self.rtp_port = t2.get_extra_info("sockname")[1]
        self._last_event_ts = -1
        self._peer: tuple[str, int] | None = None

    def close(self) -> None:
        for proto in (self._sip, self._rtp):
            if proto.transport is not None:
                proto.transport.close()

    @property
    def uri(self) -> str:
        return f"sip:buyer@127.0.0.1:{self.port}"

    def _on_rtp(self, data: bytes, addr: tuple[str, int]) -> None:
        self.rtp_in += 1
        self.rtp_from.add(addr)
        pt = data[1] & 0x7F
        self.payload_types.add(pt)
        if pt == 101:
            ts = struct.unpack_from("!I", data, 4)[0]
            if ts != self._last_event_ts:
                self._last_event_ts = ts
                self.events.append(data[12])
            return
        if self.echo and self._rtp.transport is not None:
            self._rtp.transport.sendto(data, addr)
            self.rtp_out += 1

    def _on_sip(self, data: bytes, addr: tuple[str, int]) -> None:
        msg = parse_message(data)
        if not isinstance(msg, SipRequest):
            return
        send = self._sip.transport
        assert send is not None
        self._peer = addr
        if msg.method == "INVITE" and msg.to_tag is None:
            call = BuyerCall(msg.call_id, msg)
            self.calls.append(call)
            send.sendto(make_response(msg, 180, "Ringing", to_tag="b1").to_bytes(), addr)
            asyncio.get_running_loop().call_later(self.answer_delay, self._answer, call, addr)
        elif msg.method == "ACK":
            for call in self.calls:
                if call.call_id == msg.call_id:
                    call.acked = True
        elif msg.method == "BYE":
            for call in self.calls:
                if call.call_id == msg.call_id:
                    call.bye = True
            send.sendto(make_response(msg, 200, "OK").to_bytes(), addr)
        elif msg.method == "CANCEL":
            for call in self.calls:
                if call.call_id == msg.call_id:
                    call.cancelled = True
                    send.sendto(
                        make_response(
                            call.invite, 487, "Request Terminated", to_tag="b1"
                        ).to_bytes(),
                        addr,
                    )
            send.sendto(make_response(msg, 200, "OK").to_bytes(), addr)
        else:
            send.sendto(make_response(msg, 200, "OK").to_bytes(), addr)

    def hangup(self, call: BuyerCall) -> None:
        """The buyer ends the call: BYE in its dialog (RFC 3261 §15.1.1)."""
        inv = call.invite
        contact = inv.headers.get("contact") or ""
        target = contact[contact.find("<") + 1 : contact.find(">")] if "<" in contact else contact
        to_ = inv.headers.get("to") or ""
        bye = (
            f"BYE {target} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bKbye{call.call_id[:8]};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: {to_};tag=b1\r\n"
            f"To: {inv.headers.get('from')}\r\n"
            f"Call-ID: {call.call_id}\r\n"
            "CSeq: 1 BYE\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        assert self._sip.transport is not None and self._peer is not None
        self._sip.transport.sendto(bye.encode(), self._peer)

    def _answer(self, call: BuyerCall, addr: tuple[str, int]) -> None:
        if call.cancelled or self._sip.transport is None:
            return
        name = "PCMU" if self.codec == 0 else "PCMA"
        sdp = (
            "v=0\r\no=buyer 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {self.rtp_port} RTP/AVP {self.codec} 101\r\n"
            f"a=rtpmap:{self.codec} {name}/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"
        ).encode()
        resp = make_response(
            call.invite,
            200,
            "OK",
            to_tag="b1",
            headers=[
                ("contact", f"<sip:buyer@127.0.0.1:{self.port}>"),
                ("content-type", "application/sdp"),
            ],
            body=sdp,
        )
        self._sip.transport.sendto(resp.to_bytes(), addr)


# --------------------------------------------------------------------------------- switch


class _Admit:
    """WebSocket peers: admitted when their token bound them to a trunk (or no token check)."""

    def __init__(self, switch: MiniSwitch) -> None:
        self.switch = switch

    def admit_request(self, req: SipRequest, peer: Peer, now: float) -> AdmitResult:
        if peer.transport in ("ws", "wss") and self.switch.token_check is not None:
            trunk = self.switch.hub.trunk_of(peer)
            if trunk is None:
                return AdmitResult(trunk_id=None, reason="no_ws_token")
            return AdmitResult(trunk_id=trunk)
        return AdmitResult(trunk_id="t-webrtc")


class MiniSwitch:
    """SwitchCore + WsHub + open_webrtc on 127.0.0.1, for tests and the bench."""

    def __init__(
        self,
        targets: list[str],
        *,
        token_check: Callable[[web.Request], str | None] | None = None,
        rtp_ports: tuple[int, int] | None = None,
        webrtc: WebRtcConfig | None = None,
        routes: Callable[[web.Application], None] | None = None,
    ) -> None:
        self._routes = routes
        self.target_uris = targets
        self.token_check = token_check
        self.loop = asyncio.get_running_loop()
        # Above the kernel's ephemeral range (free_port_range), so that no outgoing socket of
        # this or another process can be holding one of these ports.
        self.ports = PortAllocator(*(rtp_ports or free_port_range(1000)), rng=random.Random(1))
        self.webrtc = webrtc or WebRtcConfig(dead_after=3.0, connect_timeout=15.0)
        self.media: dict[str, WebRtcSession] = {}
        self.cdrs: list[CallRecord] = []
        self.dead: list[str] = []
        self.media_stats: dict[str, dict[str, int]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.hub = WsHub(self._feed, self.transmit, self._ws_closed, token_check=token_check)

    async def start(self) -> None:
        loop = self.loop
        _, self.udp = await loop.create_datagram_endpoint(
            lambda: _Udp(lambda d, a: self._feed(d, Peer("udp", a[0], a[1]))),
            local_addr=("127.0.0.1", 0),
        )
        assert self.udp.transport is not None
        self.sip_port = self.udp.transport.get_extra_info("sockname")[1]
        self.core = SwitchCore(
            CoreConfig(host="127.0.0.1", port=self.sip_port, media_error=MediaError),
            _Admit(self),
            rng=random.Random(7),
        )
        app = web.Application()
        app.router.add_get("/sip", self.hub.handle)
        add_phone_routes(app)
        if self._routes is not None:
            self._routes(app)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = cast(Any, site._server)
        self.http_port = server.sockets[0].getsockname()[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def stop(self) -> None:
        await self.hub.close_all()
        for session in list(self.media.values()):
            session.close()
            await session.wait_closed()
        if self._timer is not None:
            self._timer.cancel()
        await self.runner.cleanup()
        if self.udp.transport is not None:
            self.udp.transport.close()

    # ---------------------------------------------------------------- pump

    def _feed(self, data: bytes, peer: Peer) -> None:
        self.core.receive_datagram(data, peer, self.loop.time())
        if peer.transport == "udp":
            self.transmit()

    def transmit(self) -> None:
        core = self.core
        for data, peer in core.datagrams_to_send():
            if peer.transport == "udp":
                assert self.udp.transport is not None
                self.udp.transport.sendto(data, (peer.host, peer.port))
            elif peer.transport in ("ws", "wss"):
                self.hub.send(data, peer)
            else:
                logger.warning("no transport for %s", peer)
        while (effect := core.next_effect()) is not None:
            if isinstance(effect, RouteCall):
                self.core.routed(effect.call_id, Routed(targets=self.target_uris), self.loop.time())
            elif isinstance(effect, OpenMedia):
                task = self.loop.create_task(self._open_media(effect))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif isinstance(effect, SendDtmf):
                session = self.media.get(effect.call_id)
                if session is not None:
                    session.send_dtmf(effect.digit, effect.duration_ms)
            elif isinstance(effect, CallEnded):
                self._ended(effect.record)
        when = core.get_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if when is not None:
            self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.core.handle_timer(self.loop.time())
        self.transmit()

    async def _open_media(self, effect: OpenMedia) -> None:
        now = self.loop.time
        if not effect.webrtc:
            self.core.media_failed(effect.call_id, 488, "webrtc_media", now())
            self.transmit()
            return
        try:
            media = await open_webrtc(
                effect.call_id,
                effect.offer,
                media_ip="127.0.0.1",
                ports=self.ports,
                on_dead=self._on_dead,
                config=self.webrtc,
            )
        except MediaError as exc:
            self.core.media_failed(effect.call_id, exc.status, "webrtc_media", now())
        else:
            self.media[effect.call_id] = media
            if not self.core.media_opened(effect.call_id, media, now()):
                self.media.pop(effect.call_id, None)  # the caller gave up meanwhile
                media.close()
        self.transmit()

    def _ended(self, record: CallRecord) -> None:
        self.cdrs.append(record)
        session = self.media.pop(record.call_id, None)
        if session is not None:
            self.media_stats[record.call_id] = session.stats().cdr_fields()
            session.close()

    def _on_dead(self, call_id: str) -> None:
        self.dead.append(call_id)
        self.core.end_call(call_id, Outcome.MEDIA_TIMEOUT, self.loop.time())
        self.transmit()

    def _ws_closed(self, peer: Peer) -> None:
        self.core.connection_closed(peer, self.loop.time())


async def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(step)
    return True


__all__ = ["Buyer", "MiniSwitch", "SipResponse", "wait_for"]
