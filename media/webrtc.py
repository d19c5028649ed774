"""WebRTC callers: ICE + DTLS-SRTP terminated with aiortc, bridged to a plain RTP/AVP G.711 leg.

SPEC.md "Media", WebRTC. A browser's offer (RFC 8829 JSEP, RFC 8835 transports) carries
``UDP/TLS/RTP/SAVPF`` audio with ICE credentials and candidates (RFC 8839), a DTLS
fingerprint and ``a=setup`` (RFC 5763, RFC 8842) and ``a=rtcp-mux`` (RFC 5761). The buyer
speaks plain ``RTP/AVP`` G.711. :func:`open_webrtc` builds a :class:`WebRtcSession`, which
implements :class:`media.session.MediaSession` for the core and carries RTP between the two.

Theory of operation
-------------------
Signalling (all in :func:`open_webrtc`, before the first buyer is tried):

* :func:`parse_offer` validates the browser's SDP: a live audio ``m=`` with a DTLS-SRTP
  profile, ``a=ice-ufrag``/``a=ice-pwd``, a usable ``a=fingerprint`` and ``a=rtcp-mux``,
  otherwise :class:`~media.errors.SdpError` (488). It picks the browser's first G.711 codec
  (PCMU or PCMA) and its ``telephone-event/8000`` payload type. A browser that offers neither
  PCMU nor PCMA gets 488 too: every browser shipping today offers both, and pass-through
  is the point (no Opus transcoding).
* The switch binds two port pairs from ``ports``: one for the buyer's plain RTP/RTCP and one
  whose even port is the ICE host candidate, on ``media_ip`` only. aioice would gather on
  every interface except loopback; here the host candidate is created on our own socket,
  so loopback works and the port stays inside DCE_RTP_PORTS (firewall rules).
* The browser's answer (``a=setup:active``, our fingerprint, one host candidate, the chosen
  codec and telephone-event, ``a=rtcp-mux``, other ``m=`` lines refused with port 0) is
  prepared now and returned by :meth:`WebRtcSession.b_answered`. ICE connectivity checks
  start at once (we are ICE-controlled), DTLS follows when the browser nominates a pair.
* ``b_offer`` is plain SDP: ``m=audio PORT RTP/AVP 0 8 101`` (the browser's codec first),
  ``c=media_ip``, ``telephone-event/8000``.

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
  DTMF that arrived as SIP INFO (:func:`parse_dtmf_info`).

Liveness: ``on_dead(call_id)`` is called once, from the event loop, when ICE fails or its
consent expires (RFC 7675), when DTLS closes or fails, when ICE + DTLS are not up
``connect_timeout`` seconds after the browser got our answer, or when a browser that is
supposed to send has sent nothing for ``dead_after`` seconds (the default 5 s). The glue then
ends the call (both legs, CDR).

Private aiortc/aioice API used (pinned aiortc==1.16.0, aioice==0.13.0): the DTLS transport's
``_rtp_router``, ``_set_role``, ``_tx_srtp`` and the ICE connection's ``_nominated``,
``_protocols`` and ``_local_candidates*``. This is the "hook below RTCDtlsTransport" route of
libs.md §2: it avoids aiortc's per-receiver decoder thread, jitter buffer and encoder.

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
import enum
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
from media.dtmf import DTMF_EVENTS, parse_dtmf_info
from media.errors import InvalidStateError, SdpError
from media.ports import PortAllocator
from media.relay import CallMediaStats, DirectionStats
from media.rtp import KIND_RTCP, KIND_RTP, SeqStats, classify
from media.transport import bind_pair

logger = logging.getLogger(__name__)

__all__ = [
    "DTMF_EVENTS",
    "WebRtcConfig",
    "WebRtcOffer",
    "WebRtcSession",
    "open_webrtc",
    "parse_dtmf_info",
    "parse_offer",
]

#: Payload types on the buyer leg (RFC 3551 static 0/8; 101 is the usual dynamic te PT).
PT_PCMU = 0
PT_PCMA = 8
PT_TE = 101
#: 20 ms of G.711 at 8 kHz.
SAMPLES_PER_PACKET = 160
#: DTLS-SRTP profiles (RFC 5764) as browsers send them in the m= line.
DTLS_PROTOS = frozenset({"UDP/TLS/RTP/SAVPF", "UDP/TLS/RTP/SAVP", "TCP/TLS/RTP/SAVPF"})
#: RFC 8122 hash functions aiortc can check (X509_DIGEST_ALGORITHMS).
FINGERPRINT_ALGORITHMS = frozenset({"sha-256", "sha-384", "sha-512"})
#: RFC 4733 §3.2 event codes for the DTMF digits.

_RTP_HEADER = struct.Struct("!BBHII")
_EVENT = struct.Struct("!BBH")


# --------------------------------------------------------------------------------------------
# G.711 laws (ITU-T G.711), for a buyer that picks the other law than the browser.


def _ulaw_to_linear(u: int) -> int:
    u = ~u & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return 0x84 - t if u & 0x80 else t - 0x84


def _alaw_to_linear(a: int) -> int:
    a ^= 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


def _linear_to_alaw(pcm: int) -> int:
    pcm >>= 3
    if pcm >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        pcm = -pcm - 1
    for seg, end in enumerate((0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)):
        if pcm <= end:
            aval = seg << 4
            aval |= (pcm >> 1) & 0x0F if seg < 2 else (pcm >> seg) & 0x0F
            return aval ^ mask
    return 0x7F ^ mask


def _linear_to_ulaw(pcm: int) -> int:
    pcm >>= 2
    if pcm < 0:
        pcm = -pcm
        mask = 0x7F
    else:
        mask = 0xFF
    pcm = min(pcm, 8159) + (0x84 >> 2)
    for seg, end in enumerate((0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)):
        if pcm <= end:
            return ((seg << 4) | ((pcm >> (seg + 1)) & 0x0F)) ^ mask
    return 0x7F ^ mask


#: ``payload.translate(ULAW_TO_ALAW)``: one C loop per packet, no PCM in between.
ULAW_TO_ALAW = bytes(_linear_to_alaw(_ulaw_to_linear(u)) for u in range(256))
ALAW_TO_ULAW = bytes(_linear_to_ulaw(_alaw_to_linear(a)) for a in range(256))


# --------------------------------------------------------------------------------------------
# The browser's offer


class Role(enum.Enum):
    """Our DTLS role (RFC 5763 §5): ``active`` is the DTLS client."""

    ACTIVE = "active"
    PASSIVE = "passive"


@dataclass(slots=True, frozen=True)
class WebRtcOffer:
    """What :func:`parse_offer` found in a browser's SDP offer."""

    index: int  # the audio m= line we answer
    mid: str | None
    bundle: bool  # a=group:BUNDLE lists our mid
    ice_ufrag: str
    ice_pwd: str
    ice_lite: bool
    fingerprints: tuple[tuple[str, str], ...]  # (algorithm, value)
    role: Role  # ours, from the offer's a=setup
    codec: str  # "PCMU" | "PCMA"
    codec_pt: int
    te_pt: int | None
    direction: str  # the browser's, as offered
    candidates: tuple[str, ...]  # a=candidate values
    media: tuple[tuple[str, str, str], ...]  # every m= line: (media, proto, first format)


def _attr(m: sdp.MediaDescription, sd: sdp.SessionDescription, name: str) -> list[str]:
    """Media-level values of ``a=name``, else session-level ones (RFC 8839 §5.4)."""
    values = m.attributes(name)
    if values:
        return values
    out = []
    for typ, value in sd.lines:
        if typ == "a":
            attr, _, val = value.partition(":")
            if attr == name:
                out.append(val)
    return out


def parse_offer(body: bytes) -> WebRtcOffer:
    """Check a WebRTC offer and choose what to answer.

    Raises:
        SdpError: (488) unparseable SDP; no live audio; not DTLS-SRTP; no ICE credentials;
            no fingerprint with sha-256/384/512; no rtcp-mux; no PCMU/PCMA offered.
    """
    sd = sdp.parse(body)
    audio = next((m for m in sd.media if m.media == "audio" and m.port != 0), None)
    if audio is None:
        raise SdpError("WebRTC offer has no live audio m= line")
    if audio.proto not in DTLS_PROTOS:
        raise SdpError(f"audio m= line is {audio.proto}, not DTLS-SRTP (UDP/TLS/RTP/SAVPF)")
    ufrag = next(iter(_attr(audio, sd, "ice-ufrag")), "").strip()
    pwd = next(iter(_attr(audio, sd, "ice-pwd")), "").strip()
    if not ufrag or not pwd:
        raise SdpError("WebRTC offer has no ICE credentials (a=ice-ufrag, a=ice-pwd)")
    # RFC 8839 §5.4: ice-char is ALPHA / DIGIT / "+" / "/"; ufrag 4-256, pwd 22-256.
    if not (4 <= len(ufrag) <= 256 and 22 <= len(pwd) <= 256) or not _ice_chars(ufrag + pwd):
        raise SdpError("malformed ICE credentials")
    fingerprints = []
    for value in _attr(audio, sd, "fingerprint"):
        alg, _, fp = value.strip().partition(" ")
        if alg.lower() in FINGERPRINT_ALGORITHMS and fp.strip():
            fingerprints.append((alg.lower(), fp.strip().upper()))
    if not fingerprints:
        raise SdpError("WebRTC offer has no DTLS fingerprint (a=fingerprint:sha-256 ...)")
    setup = next(iter(_attr(audio, sd, "setup")), "actpass").strip().lower()
    # RFC 5763 §5 / RFC 8842: we answer active (DTLS client) unless the offerer is active.
    if setup == "active":
        role = Role.PASSIVE
    elif setup in ("actpass", "passive"):
        role = Role.ACTIVE
    else:
        raise SdpError(f"unsupported a=setup:{setup}")
    if not audio.rtcp_mux:
        raise SdpError("WebRTC offer lacks a=rtcp-mux (RFC 8835 requires it)")
    rtpmap = audio.rtpmap()
    codec: tuple[str, int] | None = None
    te_pt: int | None = None
    for fmt in audio.formats:
        if not fmt.isdigit():
            continue
        enc = rtpmap.get(fmt, {"0": "PCMU/8000", "8": "PCMA/8000"}.get(fmt, "")).upper()
        name, _, rate = enc.partition("/")
        rate = rate.split("/")[0]
        if codec is None and name in ("PCMU", "PCMA") and rate == "8000":
            codec = (name, int(fmt))
        elif te_pt is None and name == "TELEPHONE-EVENT" and rate == "8000":
            te_pt = int(fmt)
    if codec is None:
        raise SdpError("WebRTC offer has no PCMU/PCMA (G.711 is required, no Opus transcoding)")
    mid = next(iter(audio.attributes("mid")), None)
    bundle = False
    for typ, value in sd.lines:
        if typ == "a" and value.startswith("group:BUNDLE"):
            bundle = mid is not None and mid in value.split()[1:]
    candidates = tuple(v for v in _attr(audio, sd, "candidate"))
    return WebRtcOffer(
        index=audio.index,
        mid=mid,
        bundle=bundle,
        ice_ufrag=ufrag,
        ice_pwd=pwd,
        ice_lite=bool(_attr(audio, sd, "ice-lite")),
        fingerprints=tuple(fingerprints),
        role=role,
        codec=codec[0],
        codec_pt=codec[1],
        te_pt=te_pt,
        direction=sd.direction_for(audio),
        candidates=candidates,
        media=tuple((m.media, m.proto, m.formats[0] if m.formats else "0") for m in sd.media),
    )


def _ice_chars(text: str) -> bool:
    return all(c.isascii() and (c.isalnum() or c in "+/") for c in text)


def _sends(direction: str) -> bool:
    return direction in ("sendrecv", "sendonly")


def _receives(direction: str) -> bool:
    return direction in ("sendrecv", "recvonly")


def _direction(send: bool, recv: bool) -> str:
    """RFC 3264 §6.1: the direction attribute for what one side sends and receives."""
    if send:
        return "sendrecv" if recv else "sendonly"
    return "recvonly" if recv else "inactive"


def _toward_browser(browser: str, buyer: str) -> str:
    """Our direction toward the browser when each end states its own: media flows only where
    both ends agree, as it would if they talked directly."""
    return _direction(
        send=_receives(browser) and _sends(buyer), recv=_sends(browser) and _receives(buyer)
    )


# --------------------------------------------------------------------------------------------
# The buyer's SDP


@dataclass(slots=True, frozen=True)
class BuyerMedia:
    """Where and how the buyer receives audio (its answer, or its re-offer)."""

    ip: str
    port: int
    codec_pt: int  # PT_PCMU or PT_PCMA (or the buyer's own dynamic number for them)
    codec: str  # "PCMU" | "PCMA"
    te_pt: int | None
    direction: str


def parse_buyer(body: bytes) -> BuyerMedia:
    """The buyer's audio stream from plain SDP.

    Raises:
        SdpError: (488) unparseable; no live RTP audio; no PCMU/PCMA among its formats.
    """
    sd = sdp.parse(body)
    index = sdp.relay_index(sd)
    if index is None:
        raise SdpError("buyer SDP has no live RTP audio stream")
    m = sd.media[index]
    endpoint = sdp.media_endpoints(sd)[index]
    rtpmap = m.rtpmap()
    codec: tuple[str, int] | None = None
    te_pt: int | None = None
    for fmt in m.formats:
        if not fmt.isdigit():
            continue
        enc = rtpmap.get(fmt, {"0": "PCMU/8000", "8": "PCMA/8000"}.get(fmt, "")).upper()
        name, _, rate = enc.partition("/")
        if codec is None and name in ("PCMU", "PCMA") and rate.split("/")[0] == "8000":
            codec = (name, int(fmt))
        elif te_pt is None and name == "TELEPHONE-EVENT":
            te_pt = int(fmt)
    if codec is None:
        raise SdpError(f"buyer SDP has no PCMU/PCMA (formats {' '.join(m.formats)[:60]})")
    return BuyerMedia(
        ip=endpoint.ip,
        port=endpoint.rtp_port,
        codec_pt=codec[1],
        codec=codec[0],
        te_pt=te_pt,
        direction=endpoint.direction,
    )


# --------------------------------------------------------------------------------------------
# Sequence/timestamp rewriting


class _Rewriter:
    """One outgoing RTP stream built from incoming ones (RFC 3550 §7.2, like a translator).

    Output SSRC is fixed; each new input SSRC gets offsets that continue the output numbering,
    so the receiver sees one stream. Within an input stream, gaps and reordering are kept.
    """

    __slots__ = ("in_ssrc", "last_seq", "last_ts", "seq_off", "ssrc", "started", "ts_off")

    def __init__(self, ssrc: int, seq: int, ts: int) -> None:
        self.ssrc = ssrc
        self.in_ssrc = -1
        self.seq_off = 0
        self.ts_off = 0
        self.last_seq = (seq - 1) & 0xFFFF
        self.last_ts = (ts - SAMPLES_PER_PACKET) & 0xFFFFFFFF
        self.started = False

    def map(self, in_ssrc: int, seq: int, ts: int) -> tuple[int, int]:
        if in_ssrc != self.in_ssrc:
            self.in_ssrc = in_ssrc
            self.seq_off = (self.last_seq + 1 - seq) & 0xFFFF
            self.ts_off = (self.last_ts + SAMPLES_PER_PACKET - ts) & 0xFFFFFFFF
        out_seq = (seq + self.seq_off) & 0xFFFF
        out_ts = (ts + self.ts_off) & 0xFFFFFFFF
        if not self.started or 0 < ((out_seq - self.last_seq) & 0xFFFF) < 0x8000:
            self.started = True
            self.last_seq = out_seq
            self.last_ts = out_ts
        return out_seq, out_ts

    def insert(self) -> int:
        """A sequence number for a packet we originate (DTMF); later input shifts past it."""
        self.seq_off = (self.seq_off + 1) & 0xFFFF
        self.last_seq = (self.last_seq + 1) & 0xFFFF
        self.started = True
        return self.last_seq


def _rtp_header(marker: int, pt: int, seq: int, ts: int, ssrc: int) -> bytes:
    return _RTP_HEADER.pack(0x80, (marker << 7) | pt, seq, ts, ssrc)


def _payload_offset(data: bytes) -> int:
    """Where the RTP payload starts (after CSRCs and the header extension), or -1."""
    n = len(data)
    offset = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:
        if n < offset + 4:
            return -1
        offset += 4 + 4 * int.from_bytes(data[offset + 2 : offset + 4], "big")
    return offset if offset <= n else -1


def _payload_end(data: bytes) -> int:
    """RFC 3550 §5.1: with P set, the last octet counts the padding."""
    if data[0] & 0x20:
        return len(data) - data[-1]
    return len(data)


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
        self._a_dir = _toward_browser(offer.direction, "sendrecv")  # ours, in our last SDP to it
        self._local: list[Candidate] = []
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
        self._to_buyer = _Rewriter(rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(32))
        self._to_browser = _Rewriter(rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(32))
        self._a_to_b = _Counters()
        self._b_to_a = _Counters()
        self._browser_rtcp = 0
        self._send_errors = 0
        self._last_browser_rx: float | None = None
        self._last_buyer_rx: float | None = None
        self._connected_at: float | None = None
        self._dtmf: list[tuple[int, int]] = []  # queued (event, duration in samples)
        self._dtmf_busy = False

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

        self._local = local
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
        elif _receives(self._a_dir):
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
        """Our answer (or re-offer) to the browser: one audio stream, everything else port 0."""
        assert self._dtls is not None and self._gatherer is not None
        o = self.offer
        params = self._gatherer.getLocalParameters()
        fam = "IP6" if ":" in (self.config.advertise_ip or self.media_ip) else "IP4"
        addr = self.config.advertise_ip or self.media_ip
        lines = ["s=-", "t=0 0"]
        if o.bundle and o.mid is not None:
            lines.append(f"a=group:BUNDLE {o.mid}")
        lines.append("a=msid-semantic: WMS dce")
        for i, (kind, proto, fmt) in enumerate(o.media):
            if i != o.index:
                # RFC 3264 §6: a refused stream keeps its m= line, port 0.
                lines.append(f"m={kind} 0 {proto} {fmt}")
                continue
            fmts = [str(o.codec_pt)] + ([str(o.te_pt)] if o.te_pt is not None else [])
            lines += [
                f"m=audio {self.ice_port} {proto} {' '.join(fmts)}",
                f"c=IN {fam} {addr}",
                f"a=rtcp:{self.ice_port} IN {fam} {addr}",
                f"a=ice-ufrag:{params.usernameFragment}",
                f"a=ice-pwd:{params.password}",
            ]
            for fp in self._dtls.getLocalParameters().fingerprints:
                lines.append(f"a=fingerprint:{fp.algorithm} {fp.value}")
            lines.append(f"a=setup:{o.role.value}")
            if o.mid is not None:
                lines.append(f"a=mid:{o.mid}")
            lines += [
                f"a={direction}",
                "a=rtcp-mux",
                f"a=rtpmap:{o.codec_pt} {o.codec}/8000",
            ]
            if o.te_pt is not None:
                lines += [f"a=rtpmap:{o.te_pt} telephone-event/8000", f"a=fmtp:{o.te_pt} 0-16"]
            lines += [
                "a=ptime:20",
                f"a=msid:dce {self.call_id[:32]}",
                f"a=ssrc:{self._to_browser.ssrc} cname:dce",
            ]
            for cand in self._local:
                lines.append(f"a=candidate:{cand.to_sdp()}")
            lines.append("a=end-of-candidates")
        rest = "\r\n".join(lines)
        origin = self._a_origin.stamp(addr, rest)
        return f"v=0\r\no={origin}\r\n{rest}\r\n".encode()

    def _build_b_offer(self, direction: str, answer_to: BuyerMedia | None = None) -> bytes:
        """Plain SDP for the buyer: our offer, or (``answer_to``) our answer to its offer."""
        fam = "IP6" if ":" in self.media_ip else "IP4"
        if answer_to is not None:
            codecs = [answer_to.codec_pt]
            names = {answer_to.codec_pt: answer_to.codec}
            te = answer_to.te_pt
        else:
            first, second = (PT_PCMU, PT_PCMA) if self.offer.codec == "PCMU" else (PT_PCMA, PT_PCMU)
            codecs = [first, second]
            names = {PT_PCMU: "PCMU", PT_PCMA: "PCMA"}
            te = PT_TE
        fmts = [str(c) for c in codecs] + ([str(te)] if te is not None else [])
        lines = [
            "s=dce",
            f"c=IN {fam} {self.media_ip}",
            "t=0 0",
            f"m=audio {self.plain_port} RTP/AVP {' '.join(fmts)}",
        ]
        for c in codecs:
            lines.append(f"a=rtpmap:{c} {names[c]}/8000")
        if te is not None:
            lines += [f"a=rtpmap:{te} telephone-event/8000", f"a=fmtp:{te} 0-16"]
        lines += ["a=ptime:20", f"a={direction}"]
        rest = "\r\n".join(lines)
        origin = self._b_origin.stamp(self.media_ip, rest)
        return f"v=0\r\no={origin}\r\n{rest}\r\n".encode()

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
        self._a_dir = _toward_browser(self.offer.direction, buyer.direction)
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
            self._a_dir = _toward_browser(self.browser_direction, buyer.direction)
            return self._build_answer(self._a_dir)
        answer = parse_offer(sdp_body)  # same checks: an answer from a browser looks alike
        self.browser_direction = answer.direction
        self._a_dir = _direction(send=_receives(answer.direction), recv=_sends(answer.direction))
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
        for task in list(self._tasks):
            task.cancel()
        for plain in (self._plain_rtp, self._plain_rtcp):
            if plain is not None and plain.transport is not None:
                plain.transport.close()
        task = self._loop.create_task(self._shutdown())
        _CLOSING.add(task)  # asyncio keeps only weak references to tasks
        task.add_done_callback(_CLOSING.discard)
        self._closing = task

    async def wait_closed(self) -> None:
        """Until every socket is closed and every port is back in the allocator."""
        task = getattr(self, "_closing", None)
        if task is not None:
            await asyncio.shield(task)

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

    def send_dtmf(self, digit: str, duration_ms: int = 160) -> bool:
        """Send ``digit`` to the buyer as RFC 4733 events (DTMF that came as SIP INFO).

        Returns False when it cannot be sent: unknown digit, buyer without telephone-event.
        """
        event = DTMF_EVENTS.get(digit.upper())
        if event is None or self.buyer is None or self.buyer.te_pt is None or self._closed:
            return False
        samples = max(40, min(duration_ms, 5000)) * 8
        self._dtmf.append((event, samples))
        if not self._dtmf_busy:
            self._dtmf_busy = True
            self._next_dtmf()
        return True

    def _next_dtmf(self) -> None:
        if not self._dtmf or self._closed:
            self._dtmf_busy = False
            return
        event, samples = self._dtmf.pop(0)
        start_ts = (self._to_buyer.last_ts + SAMPLES_PER_PACKET) & 0xFFFFFFFF
        self._dtmf_step(event, samples, start_ts, SAMPLES_PER_PACKET, True)

    def _dtmf_step(self, event: int, total: int, ts: int, elapsed: int, first: bool) -> None:
        if self._closed:
            return
        end = elapsed >= total
        duration = min(elapsed, total)
        # RFC 4733 §2.5.1.4: the final packet (E bit) is sent three times.
        for _ in range(3 if end else 1):
            payload = _EVENT.pack(event, (0x80 if end else 0) | 10, duration)
            self._send_event(payload, ts, first)
            first = False
        if end:
            # A gap before the next digit, so the buyer sees two events.
            self._loop.call_later(0.06, self._next_dtmf)
        else:
            self._loop.call_later(
                0.02, self._dtmf_step, event, total, ts, elapsed + SAMPLES_PER_PACKET, False
            )

    def _send_event(self, payload: bytes, ts: int, marker: bool) -> None:
        buyer, addr, plain = self.buyer, self._buyer_addr, self._plain_rtp
        if buyer is None or buyer.te_pt is None or addr is None or plain is None:
            return
        if plain.transport is None:
            return
        seq = self._to_buyer.insert()
        data = _rtp_header(int(marker), buyer.te_pt, seq, ts, self._to_buyer.ssrc) + payload
        plain.transport.sendto(data, addr)
        self._a_to_b.packets += 1
        self._a_to_b.bytes += len(data)

    def stats(self) -> CallMediaStats:
        """Counters for the CDR (``stats().cdr_fields()``): A is the browser, B the buyer."""
        return CallMediaStats(a_to_b=self._a_to_b.stats(), b_to_a=self._b_to_a.stats())

    def media_timeout_due(self, now: float, timeout: float) -> bool:
        """DCE_MEDIA_TIMEOUT on the buyer side: answered and no RTP from the buyer for so long."""
        if self.buyer is None or not _sends(self.buyer.direction) or self._answered_at is None:
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
        data = _rtp_header(packet.marker, out_pt, seq, ts, rw.ssrc) + payload
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
        start, end = _payload_offset(data), _payload_end(data)
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
        rtp = _rtp_header(data[1] >> 7, out_pt, out_seq, out_ts, rw.ssrc) + payload
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


_CLOSING: set[asyncio.Task[None]] = set()


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
) -> WebRtcSession:
    """Terminate a browser's ICE + DTLS-SRTP and bridge it to a plain G.711 RTP leg.

    Args:
        call_id: the switch's call id (logs, and the argument of ``on_dead``).
        a_offer: the browser's SDP offer from the INVITE.
        media_ip: the only address candidates and the plain leg use (DCE_MEDIA_IP).
        ports: two pairs are taken (plain RTP/RTCP, ICE) and given back after ``close()``.
        on_dead: called once, from the loop, when the browser's media is gone.

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
    )
    try:
        await session._start()
    except BaseException:
        session.close()
        raise
    return session


