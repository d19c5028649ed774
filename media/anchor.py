"""Media sessions for the switch core: anchored RTP (default) or bypass (DCE_MEDIA_MODE).

:class:`RelayMediaSession` is the :class:`media.session.MediaSession` of an anchored call: it
parses every SDP the call carries, lets :class:`media.relay.CallRelay` learn each leg's media
address, and hands back the SDP for the other leg pointing at the switch's own ports, with the
switch's own ``o=`` line per leg (RFC 3264 §8: version bumped on each change).
:class:`MediaManager` opens the right kind of session while a call is being routed and closes
it, returning the packet counters for the CDR, when the call ends.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from media.errors import SdpError
from media.ports import PortAllocator
from media.relay import CallMediaStats, Leg, RelayConfig
from media.sdp import LegOrigin, SessionDescription, parse
from media.session import PassthroughSession
from media.transport import RelayManager, RelaySession
from media.workers import RemoteSession, WorkerPool, split_ports

if TYPE_CHECKING:
    from media.webrtc import WebRtcSession


class RelayMediaSession:
    """SDP through the relay: both legs see only DCE_MEDIA_IP and the switch's ports."""

    def __init__(
        self,
        session: RelaySession | RemoteSession,
        a_offer: bytes,
        *,
        clock: Callable[[], float],
        rng: random.Random,
        a_signal_ip: str | None,
        parsed: SessionDescription | None = None,
    ) -> None:
        self.session = session
        # CallRelay in this process, or RemoteCallRelay (a media worker): the same calls.
        self.relay = session.relay
        self._clock = clock
        self._a_signal_ip = a_signal_ip
        self._b_signal_ip: str | None = None
        # The o= line the switch presents to each leg: one per dialog.
        self._origin = {Leg.A: LegOrigin.create(rng), Leg.B: LegOrigin.create(rng)}
        self._b_offer = self._anchor(Leg.A, a_offer, parsed)

    def _anchor(self, from_leg: Leg, body: bytes, sd: SessionDescription | None = None) -> bytes:
        """Learn ``from_leg``'s media from ``body`` (``sd``: already parsed); the SDP for the
        other leg."""
        if sd is None:
            sd = parse(body)  # SdpError (488) when it does not parse
        signal_ip = self._a_signal_ip if from_leg is Leg.A else self._b_signal_ip
        return self.relay.anchor(
            from_leg, sd, self._clock(), self._origin[from_leg.other], signal_ip
        )

    @property
    def b_offer(self) -> bytes:
        return self._b_offer

    @property
    def dtmf_to_buyer(self) -> bool:
        return False  # plain RTP callers send their own RFC 4733 events through the relay

    def new_attempt(self) -> None:
        self.relay.reset_leg(Leg.B)

    def b_answered(self, sdp: bytes) -> bytes:
        return self._anchor(Leg.B, sdp)

    def answered(self) -> None:
        self.relay.answered(self._clock())

    def reoffer(self, from_a: bool, sdp: bytes) -> bytes:
        return self._anchor(Leg.A if from_a else Leg.B, sdp)

    def reanswer(self, from_a: bool, sdp: bytes) -> bytes:
        # The answer comes from the leg that did not make the offer.
        return self._anchor(Leg.B if from_a else Leg.A, sdp)

    def close(self) -> None:
        self.session.close()


class MediaManager:
    """Opens and closes every call's media session; owns the relay's ports and sockets."""

    def __init__(
        self,
        *,
        mode: str,
        media_ip: str,
        ports: tuple[int, int],
        rng: random.Random,
        config: RelayConfig | None = None,
        pool: int = 1024,
        workers: int = 0,
    ) -> None:
        self.mode = mode
        self.media_ip = media_ip
        self.rng = rng
        self.relay: RelayManager | WorkerPool
        if workers > 0 and mode != "bypass":
            # DCE_MEDIA_WORKERS (media/workers.py): relayed calls in N worker processes, each
            # on its own share of the ports; WebRTC calls stay here, on a share of their own.
            local, shares = split_ports(ports[0], ports[1], workers)
            self.allocator = PortAllocator(local[0], local[1], rng=rng)
            self.relay = WorkerPool(media_ip, shares, config, pool=pool, local=self.allocator)
            self.relay.on_lost = self._dead  # its RTP died with the worker: end the call
        else:
            self.allocator = PortAllocator(ports[0], ports[1], rng=rng)
            # ``pool``: pre-bound RTP/RTCP pairs reused across calls (media/transport.py
            # SocketPool), so opening and closing a call's media binds and closes nothing.
            self.relay = RelayManager(
                media_ip, self.allocator, config, pool=pool if mode != "bypass" else 0
            )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._webrtc: dict[str, WebRtcSession] = {}
        # Browser sessions' shutdown tasks, held until done (the loop keeps only weak refs).
        self._closing: set[asyncio.Task[None]] = set()
        self._on_dead: Callable[[str], object] = lambda call_id: None
        self._certificate: Any = None

    async def start(self) -> None:
        """Start the media workers, if any (raises MediaError when one does not start)."""
        if isinstance(self.relay, WorkerPool):
            await self.relay.start()

    async def open(
        self, call_id: str, a_offer: bytes, a_signal_ip: str, *, webrtc: bool = False
    ) -> PassthroughSession | RelayMediaSession | WebRtcSession:
        """The media session for a new call (raises MediaError: 488 bad SDP, 503 no ports).

        A browser (``webrtc``) always gets its ICE/DTLS-SRTP terminated here, whatever
        DCE_MEDIA_MODE says: its media cannot reach a plain-RTP buyer otherwise. A caller
        without an SDP offer (offer in the 200, RFC 3261 §13.2.1) gets bypass: the relay
        anchors offers, and a late offer is passed through untouched.
        """
        if webrtc:
            return await self._open_webrtc(call_id, a_offer)
        if self.mode == "bypass" or not a_offer:
            return PassthroughSession(a_offer)
        sd = parse(a_offer)  # a bad offer is refused before any port is taken
        loop = self._loop = self._loop or asyncio.get_running_loop()
        # Does not suspend while the socket pool has pairs: no Task for the caller to make.
        session = await self.relay.open_session(call_id)
        try:
            return RelayMediaSession(
                session,
                a_offer,
                clock=loop.time,
                rng=self.rng,
                a_signal_ip=a_signal_ip,
                parsed=sd,
            )
        except SdpError:
            self.relay.close_session(call_id)
            raise

    async def _open_webrtc(self, call_id: str, a_offer: bytes) -> WebRtcSession:
        # Imported on first use: aiortc and PyAV are heavy, and only browsers need them.
        from aiortc import RTCCertificate

        from media.webrtc import WebRtcConfig, open_webrtc

        if self._certificate is None:
            # One DTLS certificate for the process (generating one per call costs ~ms).
            self._certificate = RTCCertificate.generateCertificate()
        session = await open_webrtc(
            call_id,
            a_offer,
            media_ip=self.media_ip,
            ports=self.allocator,
            on_dead=self._dead,
            config=WebRtcConfig(certificate=self._certificate),
            rng=self.rng,
            closing=self._closing,
        )
        self._webrtc[call_id] = session
        return session

    def _dead(self, call_id: str) -> None:
        self._on_dead(call_id)  # looked up late: the watchdog's handler is set after open

    def send_dtmf(self, call_id: str, digit: str, duration_ms: int) -> None:
        """An RFC 4733 digit toward the buyer of a browser's call (its keypad as SIP INFO)."""
        web = self._webrtc.get(call_id)
        if web is not None:
            web.send_dtmf(digit, duration_ms)

    def close(self, call_id: str) -> dict[str, Any] | asyncio.Future[dict[str, Any]]:
        """Close the call's media; the CDR's media fields (empty in bypass).

        A call relayed by a media worker gets them in a future: its final counters come back
        from the worker (one round trip), and the CDR waits for them.
        """
        web = self._webrtc.pop(call_id, None)
        if web is not None:
            web.close()
            return web.stats().cdr_fields()
        if isinstance(self.relay, WorkerPool):
            final = self.relay.close_final(call_id)
            if final is None:
                return {}
            fields: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            final.add_done_callback(lambda f: fields.set_result(f.result().cdr_fields()))
            return fields
        stats: CallMediaStats | None = self.relay.close_session(call_id)
        return stats.cdr_fields() if stats is not None else {}

    def counters(self, call_id: str) -> dict[str, Any]:
        """A live call's media counters so far, as ``close`` gives them (empty in bypass or
        before the media is open); the media stays open."""
        web = self._webrtc.get(call_id)
        if web is not None:
            return web.stats().cdr_fields()
        session = self.relay.session(call_id)
        return session.relay.stats().cdr_fields() if session is not None else {}

    def start_watchdog(self, timeout: float, on_timeout: Callable[[str], object]) -> None:
        """Media timeouts end calls through ``on_timeout``; so do dead browsers (ICE/DTLS)."""
        self._on_dead = on_timeout
        if self.mode != "bypass" and timeout > 0:
            self.relay.start_watchdog(timeout, on_timeout)

    def close_all(self) -> None:
        self.relay.close_all()
        for call_id in list(self._webrtc):
            self.close(call_id)

    async def wait_closed(self) -> None:
        """Until the media workers, if any, have exited (after :meth:`close_all`)."""
        if isinstance(self.relay, WorkerPool):
            await self.relay.wait_closed()

    @property
    def webrtc_sessions(self) -> int:
        return len(self._webrtc)
