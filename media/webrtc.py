"""WebRTC callers: ICE + DTLS-SRTP terminated with aiortc, bridged to a plain RTP/AVP G.711 leg.

SPEC.md "Media", WebRTC. :func:`open_webrtc` builds a :class:`WebRtcSession`, which
implements :class:`media.session.MediaSession` for the core and carries RTP between the
browser (ICE, DTLS-SRTP, rtcp-mux) and the buyer (plain G.711). This module is the asyncio
and aiortc glue; the pure parts live beside it: the SDP of both legs in
:mod:`media.webrtc_sdp`, the G.711 law tables in :mod:`media.g711`, RTP re-numbering in
:mod:`media.rtp_rewrite`, RFC 4733 event sequencing in :mod:`media.dtmf`.

Theory of operation
-------------------
Signalling (all in :func:`open_webrtc`, before the first buyer is tried):

* :func:`~media.webrtc_sdp.parse_offer` validates the browser's SDP (488 otherwise) and picks
  its G.711 codec and telephone-event payload type.
* The switch binds two port pairs from ``ports``: one for the buyer's plain RTP/RTCP and one
  whose even port is the ICE host candidate, on ``media_ip`` only. aioice would gather on
  every interface except loopback; here the host candidate is created on our own socket,
  so loopback works and the port stays inside DCE_RTP_PORTS (firewall rules).
* The browser's answer (:func:`~media.webrtc_sdp.browser_sdp`) is prepared now and returned
  by :meth:`WebRtcSession.b_answered`. ICE connectivity checks start at once (we are
  ICE-controlled), DTLS follows when the browser nominates a pair.
* ``b_offer`` is plain SDP (:func:`~media.webrtc_sdp.buyer_sdp`).

Media (pass-through, no decode; about the cost of a relay plus one SRTP operation):

* browser -> buyer: aiortc's DTLS transport decrypts SRTP and hands each RTP packet to our
  receiver (registered in its RTP router). The payload goes out unchanged (G.711 µ-law <->
  A-law by table lookup if the buyer picked the other law), with our SSRC and the payload
  types the buyer negotiated; sequence numbers and timestamps keep their gaps so the buyer
  sees the browser's loss and timing as they are.
* buyer -> browser: a plain UDP socket latches the buyer's RTP (symmetric RTP, RFC 4961),
  rewrites it likewise, SRTP-protects it and sends it on the nominated ICE pair.
* DTMF: RFC 4733 events from the browser are forwarded with the buyer's telephone-event
  payload type; :meth:`WebRtcSession.send_dtmf` injects RFC 4733 events toward the buyer for
  DTMF that arrived as SIP INFO: a :class:`~media.dtmf.DtmfSequencer` says which packets and
  when, the session numbers them in its stream to the buyer and keeps one timer.

Liveness: ``on_dead(call_id)`` is called once, from the event loop, when ICE fails or its
consent expires (RFC 7675), when DTLS closes or fails, when ICE + DTLS are not up
``connect_timeout`` seconds after the browser got our answer, or when a browser that is
supposed to send has sent nothing for ``dead_after`` seconds (the default 5 s). The glue then
ends the call (both legs, CDR).

Private aiortc/aioice API used (pinned aiortc==1.16.0, aioice==0.13.0): the DTLS transport's
``_rtp_router``, ``_set_role``, ``_tx_srtp`` and the ICE connection's ``_nominated``,
``_protocols`` and ``_local_candidates*``. This is the "hook below RTCDtlsTransport" route of
libs.md §2: it avoids aiortc's per-receiver decoder thread, jitter buffer and encoder.

Size: this module is over 600 lines because it is one object's lifecycle against two
libraries' private state: binding and gathering, connecting, liveness, shutdown, and the two
per-packet paths all touch the same aiortc/aioice objects and the session's counters;
splitting them would spread those private hooks over several modules.

CPU and scale-out: see bench/bench_webrtc.py. Should WebRTC media ever need more than the
signalling process can spare, the session splits cleanly at :func:`open_webrtc`: a media
worker process (one per core, each with its own slice of DCE_RTP_PORTS) runs this module
behind a small RPC (``open(call_id, offer) -> (b_offer, answer)``, ``b_answered``,
``reoffer``/``reanswer``, ``dtmf``, ``close -> stats``, plus pushed ``dead`` events); the
SDP work is already a pure function of the request, so the core keeps calling a
:class:`MediaSession` proxy whose methods return the SDP the worker computed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import secrets
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from aioice import Candidate
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import StunProtocol, server_reflexive_candidate
from aiortc import (
    RTCCertificate,
    RTCDtlsFingerprint,
    RTCDtlsParameters,
    RTCDtlsTransport,
    RTCIceGatherer,
    RTCIceParameters,
    RTCIceTransport,
)
from aiortc.rtcicetransport import candidate_from_aioice

from media import sdp
from media.dtmf import DtmfSequencer
from media.errors import InvalidStateError, SdpError
from media.g711 import ALAW_TO_ULAW, ULAW_TO_ALAW
from media.ports import PortAllocator
from media.relay import CallMediaStats, DirectionStats
from media.rtp import KIND_RTCP, KIND_RTP, SeqStats, classify
from media.rtp_rewrite import RtpRewriter, payload_end, payload_offset, rtp_header
from media.transport import bind_pair
from media.webrtc_sdp import (
    BuyerMedia,
    LocalIce,
    Role,
    WebRtcOffer,
    browser_sdp,
    buyer_sdp,
    direction_attr,
    parse_buyer,
    parse_offer,
    receives,
    sends,
    toward_browser,
)

logger = logging.getLogger(__name__)

__all__ = ["WebRtcConfig", "WebRtcSession", "open_webrtc"]


# --------------------------------------------------------------------------------------------
# Configuration and host candidates


@dataclass(slots=True, frozen=True)
class WebRtcConfig:
    """Deployment knobs. The defaults suit loopback and a switch on a public address."""

    #: STUN server (host, port) for a server-reflexive candidate; None: no STUN traffic at all.
    stun_server: tuple[str, int] | None = None
    #: Address written into the host candidate instead of media_ip (1:1 NAT, e.g. a cloud VM).
    advertise_ip: str | None = None
    #: A browser that should be sending and has sent nothing for this long is dead.
    dead_after: float = 5.0
    #: ICE + DTLS must be up this long after the browser received our answer.
    connect_timeout: float = 10.0
    #: Reuse one DTLS certificate for every call (RFC 8827 allows it); None: one per call.
    certificate: RTCCertificate | None = None


def _reachable(candidate: Candidate, media_ip: str) -> bool:
    """Whether our socket on ``media_ip`` can reach a browser's candidate at all.

    UDP, no mDNS name (RFC 8839 would need a multicast lookup), and an address
    :func:`_same_scope` allows: the switch never probes addresses it cannot route to. A
    browser behind NAT still connects through the peer-reflexive candidate its own checks
    create (RFC 8445 §7.3.1.3).
    """
    return candidate.transport.lower() == "udp" and _same_scope(candidate.host, media_ip)


def _same_scope(ip: str, media_ip: str) -> bool:
    """Same address family, unicast, and loopback only with loopback."""
    try:
        theirs = ipaddress.ip_address(ip)
        ours = ipaddress.ip_address(media_ip)
    except ValueError:
        return False
    if theirs.version != ours.version or theirs.is_unspecified or theirs.is_multicast:
        return False
    return theirs.is_loopback == ours.is_loopback


class _HostProtocol(StunProtocol):
    """aioice's socket for our host candidate, deaf to sources out of ``media_ip``'s scope.

    A browser sends checks from every interface it has; one from an address our socket could
    not answer on its own scope (a LAN address reaching a loopback-bound socket) would
    otherwise become a peer-reflexive candidate that we then probe (RFC 8445 §7.3.1.3).
    """

    def __init__(self, receiver: Any, media_ip: str) -> None:
        super().__init__(receiver)
        self._media_ip = media_ip
        self._allowed: dict[str, bool] = {}

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        ok = self._allowed.get(addr[0])
        if ok is None:
            ok = self._allowed[addr[0]] = _same_scope(addr[0], self._media_ip)
        if ok:
            super().datagram_received(data, addr)


# --------------------------------------------------------------------------------------------
# The session


_P = TypeVar("_P", bound=asyncio.BaseProtocol)


async def _endpoint(
    loop: asyncio.AbstractEventLoop, factory: Callable[[], _P], sock: socket.socket
) -> _P:
    """A datagram endpoint on an already bound socket, which is closed if that fails."""
    try:
        _, protocol = await loop.create_datagram_endpoint(factory, sock=sock)
    except BaseException:
        sock.close()
        raise
    return protocol


class _Plain(asyncio.DatagramProtocol):
    """The buyer-facing RTP (or RTCP) socket."""

    __slots__ = ("closed", "rtcp", "session", "transport")

    def __init__(self, session: WebRtcSession, rtcp: bool) -> None:
        self.session = session
        self.rtcp = rtcp
        self.transport: asyncio.DatagramTransport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDPTransport is not a DatagramTransport subclass (libs.md §1); same API.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.session._from_buyer(data, addr, self.rtcp)

    def error_received(self, exc: Exception) -> None:
        self.session._send_errors += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _BrowserReceiver:
    """Registered in aiortc's RTP router: receives the browser's decrypted RTP/RTCP."""

    def __init__(self, session: WebRtcSession) -> None:
        self.session = session

    async def _handle_rtp_packet(self, packet: Any, arrival_time_ms: int) -> None:
        self.session._from_browser(packet)

    async def _handle_rtcp_packet(self, packet: Any) -> None:
        self.session._browser_rtcp += 1

    def _handle_disconnect(self) -> None:
        self.session._dead("dtls transport disconnected")


@dataclass(slots=True)
class _Counters:
    packets: int = 0
    bytes: int = 0
    rtcp: int = 0
    dropped: int = 0
    foreign: int = 0
    seq: SeqStats = field(default_factory=SeqStats)

    def stats(self) -> DirectionStats:
        return DirectionStats(
            packets=self.packets,
            bytes=self.bytes,
            rtcp_packets=self.rtcp,
            lost=self.seq.lost,
            malformed=0,
            foreign=self.foreign,
            unroutable=self.dropped,
        )


class WebRtcSession:
    """One WebRTC call's media: implements :class:`media.session.MediaSession`.

    Build with :func:`open_webrtc`. Methods are synchronous and cheap, as the core needs;
    the ICE/DTLS work runs in this session's own tasks.
    """

    def __init__(
        self,
        call_id: str,
        offer: WebRtcOffer,
        *,
        media_ip: str,
        ports: PortAllocator,
        on_dead: Callable[[str], None],
        config: WebRtcConfig,
        rng: random.Random,
        closing: set[asyncio.Task[None]] | None = None,
    ) -> None:
        self.call_id = call_id
        self.offer = offer
        self.media_ip = media_ip
        self.config = config
        self._ports = ports
        self._on_dead = on_dead
        self._loop = asyncio.get_running_loop()
        self._rng = rng
        self._closed = False
        self._dead_reason: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._closing_tasks = closing
        self._closing: asyncio.Task[None] | None = None  # close()'s shutdown, once started
        # Ports: [plain RTP pair, ICE pair]; released after their sockets have closed.
        self._port_list: list[int] = []
        self._plain_rtp: _Plain | None = None
        self._plain_rtcp: _Plain | None = None
        self.plain_port = 0
        self.ice_port = 0
        # aiortc objects
        self._gatherer: RTCIceGatherer | None = None
        self._ice: RTCIceTransport | None = None
        self._dtls: RTCDtlsTransport | None = None
        self._receiver = _BrowserReceiver(self)
        self.connected = False  # DTLS up, SRTP keys in place
        # negotiation state
        self.browser_direction = offer.direction  # the browser's own, from its last SDP
        self._a_dir = toward_browser(offer.direction, "sendrecv")  # ours, in our last SDP to it
        self._local_ice: LocalIce | None = None  # set once ICE/DTLS objects exist (_start)
        self.buyer: BuyerMedia | None = None
        self._buyer_addr: tuple[str, int] | None = None  # latched RTP source/destination
        self._answer_sent_at: float | None = None
        self._answered_at: float | None = None
        self._remote_added = 0
        self._a_origin = sdp.LegOrigin.create(rng)
        self._b_origin = sdp.LegOrigin.create(rng)
        self._answer = b""
        self._b_offer = b""
        # streams
        self._to_buyer = RtpRewriter(rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(32))
        self._to_browser = RtpRewriter(
            rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(32)
        )
        self._a_to_b = _Counters()
        self._b_to_a = _Counters()
        self._browser_rtcp = 0
        self._send_errors = 0
        self._last_browser_rx: float | None = None
        self._last_buyer_rx: float | None = None
        self._connected_at: float | None = None
        # SIP INFO DTMF toward the buyer: the sequencer's one timer, the current event's RTP ts.
        self._dtmf = DtmfSequencer()
        self._dtmf_timer: asyncio.TimerHandle | None = None
        self._dtmf_ts = 0

    # ------------------------------------------------------------------ setup

    async def _start(self) -> None:
        """Bind sockets, create the host candidate, prepare both SDPs, start ICE."""
        loop = self._loop
        cert = self.config.certificate or RTCCertificate.generateCertificate()
        plain_port, (rtp_sock, rtcp_sock) = bind_pair(self.media_ip, self._ports)
        self._port_list.append(plain_port)
        self.plain_port = plain_port
        try:
            self._plain_rtp = await _endpoint(loop, lambda: _Plain(self, False), rtp_sock)
        except BaseException:
            rtcp_sock.close()
            raise
        self._plain_rtcp = await _endpoint(loop, lambda: _Plain(self, True), rtcp_sock)
        ice_port, (ice_sock, spare) = bind_pair(self.media_ip, self._ports)
        spare.close()  # the odd port stays allocated, unused: rtcp-mux is mandatory
        self._port_list.append(ice_port)
        self.ice_port = ice_port

        # An empty server list: aiortc's default would send STUN to a public server.
        self._gatherer = RTCIceGatherer(iceServers=[])
        connection = self._gatherer._connection
        protocol = await _endpoint(loop, lambda: _HostProtocol(connection, self.media_ip), ice_sock)
        connection._protocols.append(protocol)  # closed with the connection from here on
        host = self.config.advertise_ip or self.media_ip
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("host", "udp", host),
            component=1,
            transport="udp",
            priority=candidate_priority(1, "host"),
            host=host,
            port=ice_port,
            type="host",
        )
        local = [protocol.local_candidate]
        if self.config.stun_server is not None:
            try:
                srflx, _ = await asyncio.wait_for(
                    server_reflexive_candidate(protocol, self.config.stun_server), 3.0
                )
                local.append(srflx)
            except Exception as exc:  # STUN is best effort; host candidates still work
                logger.info("stun failed", extra={"call_id": self.call_id, "reason": str(exc)})
        # What aioice's gather_candidates would have set (we gathered ourselves).
        connection._local_candidates.extend(local)
        connection._local_candidates_start = True
        connection._local_candidates_end = True

        self._ice = RTCIceTransport(self._gatherer)
        self._dtls = RTCDtlsTransport(self._ice, [cert])
        self._dtls._set_role("client" if self.offer.role is Role.ACTIVE else "server")
        self._dtls._rtp_router.register_receiver(
            self._receiver,
            ssrcs=[],
            payload_types=[p for p in (self.offer.codec_pt, self.offer.te_pt) if p is not None],
            mid=self.offer.mid,
        )
        self._ice.on("statechange", self._ice_state)
        self._dtls.on("statechange", self._dtls_state)

        added = 0
        for value in self.offer.candidates:
            try:
                cand = Candidate.from_sdp(value)
            except ValueError:
                continue
            if _reachable(cand, self.media_ip):
                await self._ice.addRemoteCandidate(candidate_from_aioice(cand))
                added += 1
        if added:
            # RFC 8838: without trickle the offer had every candidate; say so, so ICE can fail.
            await self._ice.addRemoteCandidate(None)
        self._remote_added = added

        params = self._gatherer.getLocalParameters()
        # aioice makes the credentials with the connection; None only before it exists.
        assert params.usernameFragment is not None and params.password is not None
        self._local_ice = LocalIce(
            address=self.config.advertise_ip or self.media_ip,
            port=self.ice_port,
            ufrag=params.usernameFragment,
            pwd=params.password,
            fingerprints=tuple(
                (fp.algorithm, fp.value) for fp in self._dtls.getLocalParameters().fingerprints
            ),
            candidates=tuple(cand.to_sdp() for cand in local),
            ssrc=self._to_browser.ssrc,
        )
        self._answer = self._build_answer(self._a_dir)
        self._b_offer = self._build_b_offer(self.offer.direction)

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self) -> None:
        assert self._ice is not None and self._dtls is not None
        remote = RTCIceParameters(
            usernameFragment=self.offer.ice_ufrag,
            password=self.offer.ice_pwd,
            iceLite=self.offer.ice_lite,
        )
        connection = self._ice._connection
        if not self._remote_added:
            # No candidate we can reach (mDNS names, another family): the browser's own checks
            # will give us a peer-reflexive one (RFC 8445 §7.3.1.3). aioice fails a connect()
            # with an empty check list at once, so wait for the first check.
            deadline = self._loop.time() + self.config.connect_timeout
            while not connection._early_checks and self._loop.time() < deadline:
                await asyncio.sleep(0.05)
        try:
            await self._ice.start(remote)
            if self._ice.state != "completed" or self._closed:
                self._dead("ICE failed")
                return
            await self._dtls.start(
                RTCDtlsParameters(
                    fingerprints=[
                        RTCDtlsFingerprint(algorithm=a, value=v) for a, v in self.offer.fingerprints
                    ],
                    role="auto",
                )
            )
        except Exception as exc:  # aiortc raises assorted errors on a peer that goes away
            if not self._closed:
                logger.info(
                    "webrtc connect failed", extra={"call_id": self.call_id, "reason": repr(exc)}
                )
                self._dead(f"connect failed: {exc!r}")
            return
        if self._dtls.state != "connected":
            self._dead("DTLS handshake failed")
            return
        self.connected = True
        self._connected_at = self._loop.time()
        logger.debug("webrtc media connected", extra={"call_id": self.call_id})

    def _ice_state(self) -> None:
        if self._ice is not None and self._ice.state == "failed":
            self._dead("ICE failed (or consent expired)")

    def _dtls_state(self) -> None:
        if self._dtls is not None and self._dtls.state in ("failed", "closed"):
            self._dead(f"DTLS {self._dtls.state}")

    def _arm(self) -> None:
        if self._timer is None and not self._closed:
            self._timer = self._loop.call_later(1.0, self._check)

    def _check(self) -> None:
        """Once a second after the browser has its answer: connect timeout and silence."""
        self._timer = None
        if self._closed or self._dead_reason is not None:
            return
        now = self._loop.time()
        if not self.connected:
            if (
                self._answer_sent_at is not None
                and now - self._answer_sent_at > self.config.connect_timeout
            ):
                self._dead(f"ICE/DTLS not up {self.config.connect_timeout:g}s after the answer")
                return
        elif receives(self._a_dir):
            since = self._last_browser_rx or self._connected_at or now
            if now - since > self.config.dead_after:
                self._dead(f"no media from the browser for {now - since:.1f}s")
                return
        self._arm()

    def _dead(self, reason: str) -> None:
        if self._closed or self._dead_reason is not None:
            return
        self._dead_reason = reason
        logger.info("webrtc media dead", extra={"call_id": self.call_id, "reason": reason})
        # Never call back into the caller's stack: the core may be mid-method.
        self._loop.call_soon(self._on_dead, self.call_id)

    # ------------------------------------------------------------------ SDP

    def _build_answer(self, direction: str) -> bytes:
        """Our answer (or re-offer) to the browser."""
        assert self._local_ice is not None
        return browser_sdp(self.offer, self._local_ice, direction, self.call_id, self._a_origin)

    def _build_b_offer(self, direction: str, answer_to: BuyerMedia | None = None) -> bytes:
        """Plain SDP for the buyer: our offer, or (``answer_to``) our answer to its offer."""
        return buyer_sdp(
            self.offer,
            media_ip=self.media_ip,
            port=self.plain_port,
            direction=direction,
            origin=self._b_origin,
            answer_to=answer_to,
        )

    # ------------------------------------------------------- MediaSession API

    @property
    def b_offer(self) -> bytes:
        return self._b_offer

    def new_attempt(self) -> None:
        self.buyer = None
        self._buyer_addr = None

    def b_answered(self, sdp_body: bytes) -> bytes:
        """Learn the buyer's RTP address and codec; the browser gets the prepared answer."""
        if self._closed:
            raise InvalidStateError("b_answered on a closed WebRTC session")
        buyer = parse_buyer(sdp_body)
        self._set_buyer(buyer)
        self._a_dir = toward_browser(self.offer.direction, buyer.direction)
        self._answer = self._build_answer(self._a_dir)  # as prepared, unless the buyer holds
        if self._answer_sent_at is None:
            # The browser starts its checks once it has this answer; so do we (RFC 8445 §6.1).
            self._answer_sent_at = self._loop.time()
            self._spawn(self._connect())
            self._arm()
        return self._answer

    def answered(self) -> None:
        """The 200 went to the browser: DCE_MEDIA_TIMEOUT accounting starts now."""
        if self._answered_at is None:
            self._answered_at = self._loop.time()

    def reoffer(self, from_a: bool, sdp_body: bytes) -> bytes:
        """A re-INVITE/UPDATE offer: hold/resume either way; ICE restarts are refused (488)."""
        if from_a:
            offer = parse_offer(sdp_body)
            if (offer.ice_ufrag, offer.ice_pwd) != (self.offer.ice_ufrag, self.offer.ice_pwd):
                raise SdpError("ICE restart is not supported")
            if offer.fingerprints != self.offer.fingerprints:
                raise SdpError("DTLS fingerprint changed mid-call")
            self.browser_direction = offer.direction
            self._b_offer = self._build_b_offer(offer.direction)
            return self._b_offer
        buyer = parse_buyer(sdp_body)
        self._set_buyer(buyer)
        # Our offer to the browser keeps ICE/DTLS as they are (RFC 8842: the same setup role).
        self._a_dir = buyer.direction
        return self._build_answer(buyer.direction)

    def reanswer(self, from_a: bool, sdp_body: bytes) -> bytes:
        """The answer to a relayed offer -> the answer for the offering leg."""
        if from_a:
            buyer = parse_buyer(sdp_body)
            self._set_buyer(buyer)
            self._a_dir = toward_browser(self.browser_direction, buyer.direction)
            return self._build_answer(self._a_dir)
        answer = parse_offer(sdp_body)  # same checks: an answer from a browser looks alike
        self.browser_direction = answer.direction
        self._a_dir = direction_attr(send=receives(answer.direction), recv=sends(answer.direction))
        if self.buyer is None:
            raise SdpError("browser answer without a buyer offer")
        return self._build_b_offer(answer.direction, answer_to=self.buyer)

    def close(self) -> None:
        """Stop both directions, free sockets and ports (in a task); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._dtmf_timer is not None:
            self._dtmf_timer.cancel()
            self._dtmf_timer = None
        for task in list(self._tasks):
            task.cancel()
        for plain in (self._plain_rtp, self._plain_rtcp):
            if plain is not None and plain.transport is not None:
                plain.transport.close()
        task = self._loop.create_task(self._shutdown())
        self._closing = task
        if self._closing_tasks is not None:
            # asyncio keeps only weak references to tasks, and the caller may drop this session
            # right after close(): its set keeps the shutdown (and the ports it frees) alive.
            self._closing_tasks.add(task)
            task.add_done_callback(self._closing_tasks.discard)

    async def wait_closed(self) -> None:
        """Until every socket is closed and every port is back in the allocator."""
        if self._closing is not None:
            await asyncio.shield(self._closing)

    async def _shutdown(self) -> None:
        try:
            if self._dtls is not None:
                self._dtls.remove_all_listeners()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._dtls.stop(), 2.0)
            if self._ice is not None:
                self._ice.remove_all_listeners()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._ice.stop(), 2.0)
            elif self._gatherer is not None:  # _start failed half-way
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._gatherer._connection.close(), 2.0)
            for plain in (self._plain_rtp, self._plain_rtcp):
                if plain is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(plain.closed), 2.0)
        finally:
            for port in self._port_list:
                self._ports.release(port)
            self._port_list.clear()

    # ----------------------------------------------------------- extras

    @property
    def dtmf_to_buyer(self) -> bool:
        """The buyer's media takes RFC 4733 events: the caller's SIP INFO keys become them."""
        return self.buyer is not None and self.buyer.te_pt is not None and not self._closed

    def send_dtmf(self, digit: str, duration_ms: int = 160) -> bool:
        """Send ``digit`` to the buyer as RFC 4733 events (DTMF that came as SIP INFO).

        Returns False when it cannot be sent: unknown digit, buyer without telephone-event.
        """
        if self.buyer is None or self.buyer.te_pt is None or self._closed:
            return False
        if not self._dtmf.send(digit, duration_ms, self._loop.time()):
            return False
        if self._dtmf_timer is None:  # idle: the first packet goes now
            self._transmit_dtmf()
        return True

    def _transmit_dtmf(self) -> None:
        """Send the DTMF packets due now, then re-arm the one timer for the next ones."""
        self._dtmf_timer = None
        if self._closed:
            return
        for packet in self._dtmf.packets_to_send(self._loop.time()):
            if packet.marker:
                # RFC 4733 §2.5.1.2: every packet of an event carries the timestamp it began at.
                self._dtmf_ts = self._to_buyer.next_ts()
            self._send_event(packet.payload, self._dtmf_ts, packet.marker)
        at = self._dtmf.get_timer()
        if at is not None:
            self._dtmf_timer = self._loop.call_at(at, self._transmit_dtmf)

    def _send_event(self, payload: bytes, ts: int, marker: bool) -> None:
        buyer, addr, plain = self.buyer, self._buyer_addr, self._plain_rtp
        if buyer is None or buyer.te_pt is None or addr is None or plain is None:
            return
        if plain.transport is None:
            return
        seq = self._to_buyer.insert()
        data = rtp_header(int(marker), buyer.te_pt, seq, ts, self._to_buyer.ssrc) + payload
        plain.transport.sendto(data, addr)
        self._a_to_b.packets += 1
        self._a_to_b.bytes += len(data)

    def stats(self) -> CallMediaStats:
        """Counters for the CDR (``stats().cdr_fields()``): A is the browser, B the buyer."""
        return CallMediaStats(a_to_b=self._a_to_b.stats(), b_to_a=self._b_to_a.stats())

    def media_timeout_due(self, now: float, timeout: float) -> bool:
        """DCE_MEDIA_TIMEOUT on the buyer side: answered and no RTP from the buyer for so long."""
        if self.buyer is None or not sends(self.buyer.direction) or self._answered_at is None:
            return False
        since = max(self._last_buyer_rx or 0.0, self._answered_at)
        return now - since > timeout

    @property
    def dead_reason(self) -> str | None:
        return self._dead_reason

    # ---------------------------------------------------------- data path

    def _set_buyer(self, buyer: BuyerMedia) -> None:
        self.buyer = buyer
        if sdp.is_usable_address(buyer.ip, self.media_ip):
            self._buyer_addr = (buyer.ip, buyer.port)
        else:
            self._buyer_addr = None  # latch on the first packet instead

    def _from_browser(self, packet: Any) -> None:
        """A decrypted RTP packet from the browser (an aiortc RtpPacket)."""
        if self._closed:
            return
        self._last_browser_rx = self._loop.time()
        counters = self._a_to_b
        counters.seq.update(packet.sequence_number)
        buyer, addr, plain = self.buyer, self._buyer_addr, self._plain_rtp
        if buyer is None or addr is None or plain is None or plain.transport is None:
            counters.dropped += 1
            return
        pt = packet.payload_type
        payload = packet.payload
        if pt == self.offer.codec_pt:
            out_pt = buyer.codec_pt
            if buyer.codec != self.offer.codec:
                payload = payload.translate(ULAW_TO_ALAW if buyer.codec == "PCMA" else ALAW_TO_ULAW)
        elif pt == self.offer.te_pt and buyer.te_pt is not None:
            out_pt = buyer.te_pt
        else:
            counters.dropped += 1
            return
        rw = self._to_buyer
        seq, ts = rw.map(packet.ssrc, packet.sequence_number, packet.timestamp)
        data = rtp_header(packet.marker, out_pt, seq, ts, rw.ssrc) + payload
        plain.transport.sendto(data, addr)
        counters.packets += 1
        counters.bytes += len(data)

    def _from_buyer(self, data: bytes, addr: Any, rtcp: bool) -> None:
        if self._closed:
            return
        counters = self._b_to_a
        buyer = self.buyer
        if buyer is None:
            counters.dropped += 1
            return
        expected = self._buyer_addr
        if expected is None:
            if rtcp:
                counters.dropped += 1
                return
            # Latch: the buyer's address was unusable (NAT), so its first packet decides.
            self._buyer_addr = expected = (addr[0], addr[1])
        elif addr[0] != expected[0]:
            counters.foreign += 1
            return
        elif not rtcp and addr[1] != expected[1]:
            self._buyer_addr = (addr[0], addr[1])  # symmetric RTP: answer where it comes from
        kind = classify(data)
        if kind == KIND_RTCP or rtcp:
            counters.rtcp += 1  # the browser's view of the stream is ours; not forwarded
            return
        if kind != KIND_RTP:
            counters.dropped += 1
            return
        self._last_buyer_rx = self._loop.time()
        pt = data[1] & 0x7F
        seq, ts, ssrc = struct.unpack_from("!HII", data, 2)
        counters.seq.update(seq)
        dtls = self._dtls
        if not self.connected or dtls is None:
            counters.dropped += 1
            return
        start, end = payload_offset(data), payload_end(data)
        if start < 0 or end < start:
            counters.dropped += 1
            return
        payload = data[start:end]
        if pt == buyer.codec_pt:
            out_pt = self.offer.codec_pt
            if buyer.codec != self.offer.codec:
                payload = payload.translate(
                    ULAW_TO_ALAW if self.offer.codec == "PCMA" else ALAW_TO_ULAW
                )
        elif pt == buyer.te_pt and self.offer.te_pt is not None:
            out_pt = self.offer.te_pt
        else:
            counters.dropped += 1  # comfort noise and anything not negotiated with the browser
            return
        rw = self._to_browser
        out_seq, out_ts = rw.map(ssrc, seq, ts)
        rtp = rtp_header(data[1] >> 7, out_pt, out_seq, out_ts, rw.ssrc) + payload
        if self._send_srtp(dtls, rtp):
            counters.packets += 1
            counters.bytes += len(rtp)
        else:
            counters.dropped += 1

    def _send_srtp(self, dtls: RTCDtlsTransport, rtp: bytes) -> bool:
        """SRTP-protect and send on the nominated ICE pair, without a task per packet."""
        assert self._ice is not None
        pair = self._ice._connection._nominated.get(1)
        srtp = dtls._tx_srtp
        if pair is None or srtp is None:
            return False
        try:
            pair.protocol.transport.sendto(srtp.protect(rtp), pair.remote_addr)
        except Exception:
            self._send_errors += 1
            return False
        return True


# --------------------------------------------------------------------------------------------
# Entry point


async def open_webrtc(
    call_id: str,
    a_offer: bytes,
    *,
    media_ip: str,
    ports: PortAllocator,
    on_dead: Callable[[str], None],
    config: WebRtcConfig | None = None,
    rng: random.Random | None = None,
    closing: set[asyncio.Task[None]] | None = None,
) -> WebRtcSession:
    """Terminate a browser's ICE + DTLS-SRTP and bridge it to a plain G.711 RTP leg.

    Args:
        call_id: the switch's call id (logs, and the argument of ``on_dead``).
        a_offer: the browser's SDP offer from the INVITE.
        media_ip: the only address candidates and the plain leg use (DCE_MEDIA_IP).
        ports: two pairs are taken (plain RTP/RTCP, ICE) and given back after ``close()``.
        on_dead: called once, from the loop, when the browser's media is gone.
        closing: the caller's set of shutdown tasks. ``close()`` puts the session's shutdown
            in it until done, so the caller can drop the session at once and still await
            every shutdown when it stops. None: only the session refers to that task (the
            loop keeps it running meanwhile: each of its awaits is under a timeout).

    Raises:
        SdpError: (488) the offer is not a usable WebRTC audio offer.
        PortsExhausted: (503) no port pairs left.
        MediaError: sockets could not be bound.
    """
    offer = parse_offer(a_offer)
    session = WebRtcSession(
        call_id,
        offer,
        media_ip=media_ip,
        ports=ports,
        on_dead=on_dead,
        config=config or WebRtcConfig(),
        rng=rng or random.Random(secrets.randbits(64)),
        closing=closing,
    )
    try:
        await session._start()
    except BaseException:
        session.close()
        raise
    return session
