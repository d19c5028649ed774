"""Per-call relay logic, sans-IO: symmetric latching, counters and the media timeout.

The asyncio edge (``media/transport.py``) owns the sockets and calls :meth:`Stream.receive`
for every datagram with ``now = loop.time()``; the return value says where to forward it, or
None to drop it. Nothing here reads a clock, opens a socket or logs per packet, so every rule
below runs in a unit test with plain floats for time.

Theory of operation
-------------------
A call has two legs, A (caller) and B (buyer). The switch has four sockets per call: RTP and
RTCP (RTP port + 1, RFC 3550 §11) facing A, and the same facing B. Each socket has a
:class:`Stream`: the filter and counters for what arrives from its leg, and ``dest``, where
packets for that leg are sent. A packet accepted on A's RTP socket leaves through B's RTP
socket to ``B.rtp.dest``, and so on; RTCP multiplexed on the RTP port (RFC 5761,
``a=rtcp-mux``, negotiated end to end because the SDP passes ``a=rtcp-mux`` through) follows
the RTP path and is counted as RTCP.

Symmetric latching and RTP Bleed
--------------------------------
NAT means a peer's packets may come from another port than the SDP announced, so the relay
sends to where a leg's packets actually come from ("latching"). rtpproxy and Asterisk once
latched onto *any* source, and re-latched mid-call, which let anyone who guessed a port steal
the media ("RTP Bleed"). Here a leg's address is learnt only:

* from a packet whose source IP equals the address the SDP announced (any port: NAT); the
  first such packet latches; after that only the latched address is accepted, except that a
  new port on the same IP may take over once the latched one has been silent for
  ``relatch_idle`` seconds (a NAT binding that expired during a long silence);
* if the SDP address is unusable (``0.0.0.0`` without a previous latch, a host name, or a
  private address while the switch is on a public one: the peer is behind a NAT whose public
  address SDP cannot tell us), from the SIP signalling source IP when the caller passes it
  (``signal_ip``), else from the first source within ``learn_window`` seconds of the SDP (the
  window re-opens when the call is answered, since phones start sending then). After that one
  latch the IP is fixed as above.

A re-INVITE or UPDATE that changes the announced address or port re-opens learning under the
same rules; one that does not (hold/resume, session refresh) keeps the latch. A ``c=0.0.0.0``
hold keeps the latch too, so the resume needs no re-learning. Anything else is dropped and
counted as ``foreign``; short or non-version-2 datagrams as ``malformed``; packets for a leg
whose address is not known yet as ``unroutable``.

Media timeout
-------------
After the answer, :meth:`CallRelay.media_timeout_due` is true once a leg that should be sending
(sendrecv, not held, not disabled) has sent no RTP for ``timeout`` seconds, counting from the
answer or the last SDP change, whichever is later. ``RelayConfig.timeout_requires_both`` makes
it wait until both legs are silent. A call on hold (any direction but sendrecv, or c=0.0.0.0 on
either leg) or without an audio stream is exempt. Only the RTP socket counts: RTCP keeps
flowing from a dead-air endpoint whose media path is broken.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from media.rtp import MAX_DROPOUT, MAX_MISORDER, RTCP_MIN_LEN, RTP_HEADER_LEN, SEQ_MOD, SeqStats
from media.sdp import (
    LegOrigin,
    MediaEndpoint,
    SessionDescription,
    is_usable_address,
    media_endpoints,
    plan_ports,
    relay_index,
    rewrite,
)

#: A socket address as asyncio gives it: (host, port) or (host, port, flowinfo, scope_id).
Addr = tuple[Any, ...]
_NEVER = float("-inf")


class Leg(enum.Enum):
    """A is the caller's leg, B the buyer's (SPEC.md "SIP")."""

    A = "A"
    B = "B"

    # Members are singletons compared by identity: the identity hash is consistent with that,
    # and keeps Enum's Python-level __hash__ off the (leg, rtcp) lookups of every SDP.
    __hash__ = object.__hash__

    @property
    def other(self) -> Leg:
        return Leg.B if self is Leg.A else Leg.A


@dataclass(slots=True, frozen=True)
class RelayConfig:
    """Latching and timeout policy; the defaults suit SIP trunks and NAT'ed phones."""

    #: Seconds after an SDP (or the answer) during which an unusable-address leg may latch.
    learn_window: float = 5.0
    #: Seconds a latched source must be silent before another port on its IP may take over.
    relatch_idle: float = 2.0
    #: True: time out only when both legs are silent; False: when either is.
    timeout_requires_both: bool = False


@dataclass(slots=True, eq=False)
class Stream:
    """One switch socket seen from the leg it faces: who may send, where to send, counters."""

    leg: Leg
    rtcp: bool
    config: RelayConfig
    peer: Stream | None = None  # the socket accepted packets leave through
    allowed_ip: str | None = None  # None: not known; see ``learning``
    learning: bool = False  # first source before ``learn_until`` latches
    learn_until: float = _NEVER
    announced: tuple[str, int] | None = None
    latched: Addr | None = None
    heard_announced: bool = False  # a packet came from exactly ``announced`` since the SDP
    dest: Addr | None = None  # where packets for this leg go: latched, else announced
    last_at: float = _NEVER  # last accepted packet from this leg
    packets: int = 0  # accepted and forwarded
    octets: int = 0  # forwarded, whole datagrams (headers included)
    rtcp_packets: int = 0  # forwarded RTCP (on this socket or multiplexed)
    malformed: int = 0
    foreign: int = 0
    unroutable: int = 0
    seq: SeqStats = field(default_factory=SeqStats)

    # ---------------------------------------------------------------- per packet (hot path)

    def receive(self, data: bytes, addr: Addr, now: float) -> Addr | None:
        """Account one datagram from this leg; the address to forward it to, or None to drop.

        The caller sends ``data`` unchanged through the peer socket. Kept to a few attribute
        reads and compares: no objects, no logging, no clock (``now`` is passed in).
        """
        # RFC 3550 §5.1/§6.4: version 2 and at least an RTCP header; RTP needs 12 octets.
        # Checked before the source, so garbage never latches.
        size = len(data)
        if size < RTCP_MIN_LEN or data[0] & 0xC0 != 0x80:
            self.malformed += 1
            return None
        control = self.rtcp or 192 <= data[1] <= 223  # RFC 5761 §4: RTCP on a muxed port
        if not control and size < RTP_HEADER_LEN:
            self.malformed += 1
            return None
        if addr != self.latched and not self._learn(addr, now):
            self.foreign += 1
            return None
        self.last_at = now
        if control:
            self.rtcp_packets += 1
        else:
            # media.rtp.SeqStats.update, inlined: a method call per packet costs more than this.
            seq = (data[2] << 8) | data[3]
            s = self.seq
            max_seq = s.max_seq
            if max_seq < 0:
                s.base = s.max_seq = seq
            else:
                delta = (seq - max_seq) & 0xFFFF
                if delta < MAX_DROPOUT:
                    if seq < max_seq:
                        s.cycles += SEQ_MOD
                    s.max_seq = seq
                elif delta <= SEQ_MOD - MAX_MISORDER:
                    s.restart(seq)
            s.received += 1
        peer = self.peer
        dest = peer.dest if peer is not None else None
        if dest is None:
            self.unroutable += 1
            return None
        self.packets += 1
        self.octets += size
        return dest

    def _learn(self, addr: Addr, now: float) -> bool:
        """May ``addr`` become (or replace) this leg's latched source? Latches if so."""
        if self.allowed_ip is None:
            if not self.learning or now > self.learn_until:
                return False
            self.allowed_ip = addr[0]  # from now on only this IP (first-source learning)
            self.learning = False
        elif addr[0] != self.allowed_ip:
            return False
        elif (
            self.latched is not None
            and now - self.last_at < self.config.relatch_idle
            and (self.heard_announced or addr[:2] != self.announced)
        ):
            # A live latched source is never replaced (RTP Bleed), except by the SDP's own
            # address while that has not been heard from: another port on the same IP sent
            # first, and must not keep the stream from the peer that announced it.
            return False
        if addr[:2] == self.announced:
            self.heard_announced = True
        self.latched = addr
        self.dest = addr
        return True

    # ---------------------------------------------------------------- signalling updates

    def announce(self, allowed_ip: str, announced: tuple[str, int] | None) -> None:
        """Strict latching on ``allowed_ip``; ``announced`` is where to send until latched."""
        if allowed_ip != self.allowed_ip or announced != self.announced:
            self.latched = None  # the SDP moved: learn again, from the new address only
            self.heard_announced = False
        self.allowed_ip = allowed_ip
        self.announced = announced
        self.learning = False
        self.dest = self.latched if self.latched is not None else announced

    def learn(self, announced: tuple[str, int], now: float) -> None:
        """First-source learning for ``learn_window`` (unusable SDP address)."""
        if announced == self.announced and self.latched is not None:
            return  # same SDP as before: keep what was learnt
        self.allowed_ip = None
        self.latched = None
        self.heard_announced = False
        self.dest = None
        self.announced = announced
        self.learning = True
        self.learn_until = now + self.config.learn_window

    def reopen_learning(self, now: float) -> None:
        """The call was answered: give a still-unlatched learning leg a fresh window."""
        if self.learning and self.latched is None:
            self.learn_until = max(self.learn_until, now + self.config.learn_window)

    def disable(self) -> None:
        """The stream is rejected or gone: accept nothing, send nothing."""
        self.allowed_ip = None
        self.learning = False
        self.learn_until = _NEVER
        self.announced = None
        self.latched = None
        self.dest = None
        self.heard_announced = False

    @property
    def dropped(self) -> int:
        return self.malformed + self.foreign + self.unroutable


@dataclass(slots=True, frozen=True)
class DirectionStats:
    """Counters for what one leg sent through the relay (the CDR's "each way")."""

    packets: int  # forwarded, RTP and RTCP
    bytes: int
    rtcp_packets: int
    lost: int  # RFC 3550 A.3 estimate from RTP sequence gaps
    malformed: int
    foreign: int
    unroutable: int

    @property
    def dropped(self) -> int:
        return self.malformed + self.foreign + self.unroutable


@dataclass(slots=True, frozen=True)
class CallMediaStats:
    """A call's media counters; ``cdr_fields()`` gives the columns of ``store.cdr.Cdr``."""

    a_to_b: DirectionStats
    b_to_a: DirectionStats

    def cdr_fields(self) -> dict[str, int]:
        return {
            "packets_a_to_b": self.a_to_b.packets,
            "packets_b_to_a": self.b_to_a.packets,
            "bytes_a_to_b": self.a_to_b.bytes,
            "bytes_b_to_a": self.b_to_a.bytes,
            "packets_dropped": self.a_to_b.dropped + self.b_to_a.dropped,
        }


def _direction(rtp: Stream, rtcp: Stream) -> DirectionStats:
    return DirectionStats(
        packets=rtp.packets + rtcp.packets,
        bytes=rtp.octets + rtcp.octets,
        rtcp_packets=rtp.rtcp_packets + rtcp.rtcp_packets,
        lost=rtp.seq.lost,
        malformed=rtp.malformed + rtcp.malformed,
        foreign=rtp.foreign + rtcp.foreign,
        unroutable=rtp.unroutable + rtcp.unroutable,
    )


@dataclass(slots=True)
class _LegState:
    endpoint: MediaEndpoint | None = None
    held: bool = False  # direction other than sendrecv (c=0.0.0.0 included)
    disabled: bool = True  # no live audio stream (no SDP yet, port 0, no audio m= line)


class SdpAnchor:
    """What anchoring a call's SDP needs: the switch's two RTP ports, the relayed m= line and
    where the peer's media is to go (``set_remote``). :class:`CallRelay` keeps the state
    here; ``media/workers.py`` sends ``set_remote`` to the worker that does."""

    __slots__ = ("a_port", "b_port", "index", "media_ip")

    def __init__(self, media_ip: str, a_port: int, b_port: int) -> None:
        self.media_ip = media_ip
        self.a_port = a_port  # the switch's RTP port facing A (RTCP is +1)
        self.b_port = b_port
        self.index: int | None = None  # relayed m= line

    def port(self, leg: Leg) -> int:
        """The switch's RTP port facing ``leg``: what the SDP sent to ``leg`` announces."""
        return self.a_port if leg is Leg.A else self.b_port

    def anchor(
        self,
        from_leg: Leg,
        sd: SessionDescription,
        now: float,
        origin: LegOrigin,
        signal_ip: str | None = None,
    ) -> bytes:
        """Learn ``from_leg``'s media from its SDP; return the SDP to send to the other leg.

        Use for every SDP in either direction: the INVITE offer (A), 18x/2xx answers (B),
        re-INVITE/UPDATE offers and answers. ``origin`` is the *other* leg's
        :class:`LegOrigin`; ``signal_ip`` is the SIP source IP of the message carrying ``sd``.
        """
        index = relay_index(sd, self.index)
        self.index = index
        endpoint = media_endpoints(sd)[index] if index is not None else None
        self.set_remote(from_leg, endpoint, now, signal_ip)
        ports = plan_ports(sd, self.port(from_leg.other), index)
        return rewrite(sd, self.media_ip, ports, origin)

    def set_remote(
        self,
        leg: Leg,
        endpoint: MediaEndpoint | None,
        now: float,
        signal_ip: str | None = None,
    ) -> None:
        raise NotImplementedError


class CallRelay(SdpAnchor):
    """The relay state of one call: four :class:`Stream` objects and the call-level rules.

    Sans-IO: the asyncio edge creates one per call with the switch ports it bound, feeds
    packets to :meth:`stream` objects and SDP events to :meth:`anchor`/:meth:`set_remote`.
    """

    __slots__ = ("_a", "_b", "_legs", "_streams", "answered_at", "config", "quiet_since")

    def __init__(
        self, media_ip: str, a_port: int, b_port: int, config: RelayConfig | None = None
    ) -> None:
        super().__init__(media_ip, a_port, b_port)
        self.config = config or RelayConfig()
        self.answered_at: float | None = None
        self.quiet_since = _NEVER
        cfg = self.config
        a_rtp, a_rtcp = Stream(Leg.A, False, cfg), Stream(Leg.A, True, cfg)
        b_rtp, b_rtcp = Stream(Leg.B, False, cfg), Stream(Leg.B, True, cfg)
        a_rtp.peer, b_rtp.peer = b_rtp, a_rtp
        a_rtcp.peer, b_rtcp.peer = b_rtcp, a_rtcp
        self._streams = {
            (Leg.A, False): a_rtp,
            (Leg.A, True): a_rtcp,
            (Leg.B, False): b_rtp,
            (Leg.B, True): b_rtcp,
        }
        self._legs = {Leg.A: _LegState(), Leg.B: _LegState()}
        # Direct references for the periodic scans over every call (timeout, totals): they
        # run in the relay's loop, so each lookup saved is latency off the packets behind them.
        self._a, self._b = self._legs[Leg.A], self._legs[Leg.B]

    def stream(self, leg: Leg, rtcp: bool = False) -> Stream:
        """The stream of the socket facing ``leg`` (RTP, or RTCP with ``rtcp=True``)."""
        return self._streams[(leg, rtcp)]

    # ---------------------------------------------------------------- signalling

    def set_remote(
        self,
        leg: Leg,
        endpoint: MediaEndpoint | None,
        now: float,
        signal_ip: str | None = None,
    ) -> None:
        """``leg``'s SDP announced ``endpoint`` (None: no live audio stream)."""
        state = self._legs[leg]
        rtp, rtcp = self._streams[(leg, False)], self._streams[(leg, True)]
        state.endpoint = endpoint
        self.quiet_since = now  # media may pause while an SDP change settles
        if endpoint is None or endpoint.rtp_port == 0:
            state.disabled, state.held = True, False
            rtp.disable()
            rtcp.disable()
            return
        state.disabled = False
        state.held = endpoint.direction != "sendrecv"
        ip = endpoint.ip
        rtp_to, rtcp_to = (ip, endpoint.rtp_port), (ip, endpoint.rtcp_port)
        if is_usable_address(ip, self.media_ip):
            rtp.announce(ip, rtp_to)
            rtcp.announce(ip, rtcp_to)
        elif ip in ("0.0.0.0", "::") and rtp.latched is not None:
            pass  # RFC 2543 hold: keep the latch so the resume needs no re-learning
        elif signal_ip is not None and is_usable_address(signal_ip, self.media_ip):
            # Behind NAT: media comes from where signalling came from; no guessable port.
            rtp.announce(signal_ip, None)
            rtcp.announce(signal_ip, None)
            rtp.announced, rtcp.announced = rtp_to, rtcp_to
        else:
            rtp.learn(rtp_to, now)
            rtcp.learn(rtcp_to, now)

    def reset_leg(self, leg: Leg) -> None:
        """Forget everything learnt about ``leg`` (a new B attempt after failover)."""
        state = self._legs[leg] = _LegState()
        if leg is Leg.A:
            self._a = state
        else:
            self._b = state
        for rtcp in (False, True):
            self._streams[(leg, rtcp)].disable()

    def answered(self, now: float) -> None:
        """The call was answered: the media timeout starts; learning windows re-open."""
        self.answered_at = now
        self.quiet_since = now
        for stream in self._streams.values():
            stream.reopen_learning(now)

    # ---------------------------------------------------------------- media timeout

    @property
    def held(self) -> bool:
        """No media is expected on some leg: hold, inactive, or no live audio stream."""
        a, b = self._a, self._b
        return a.held or a.disabled or b.held or b.disabled

    def timeout_at(self, timeout: float) -> float | None:
        """When :meth:`media_timeout_due` turns true if nothing arrives; None if exempt."""
        if self.answered_at is None or self.held:
            return None
        a_rtp, _, b_rtp, _ = self._streams.values()  # insertion order: A RTP, A RTCP, B ...
        a, b = a_rtp.last_at, b_rtp.last_at
        last = max(a, b) if self.config.timeout_requires_both else min(a, b)
        return max(last, self.quiet_since) + timeout

    def media_timeout_due(self, now: float, timeout: float) -> bool:
        """True when the answered, un-held call has been silent (see module doc) for ``timeout``."""
        at = self.timeout_at(timeout)
        return at is not None and now >= at

    # ---------------------------------------------------------------- counters

    def stats(self) -> CallMediaStats:
        s = self._streams
        return CallMediaStats(
            a_to_b=_direction(s[(Leg.A, False)], s[(Leg.A, True)]),
            b_to_a=_direction(s[(Leg.B, False)], s[(Leg.B, True)]),
        )

    def tally(self, into: list[int]) -> None:
        """Add this call's counters, both ways, to ``into``: [packets, bytes, malformed,
        foreign, unroutable, lost]. What :meth:`stats` gives, summed, without building it:
        /metrics totals read every live call once a second."""
        for st in self._streams.values():
            into[0] += st.packets
            into[1] += st.octets
            into[2] += st.malformed
            into[3] += st.foreign
            into[4] += st.unroutable
            if not st.rtcp:
                into[5] += st.seq.lost

    def release(self) -> None:
        """The call's sockets are gone: cut the streams' links to each other, the only cycle
        in a call's relay state, so that it is freed by reference counting when the call ends
        rather than by a garbage collection, which stops every other call's packets.
        Counters and :meth:`stats` are unaffected; nothing is forwarded any more."""
        for stream in self._streams.values():
            stream.peer = None

    def streams(self) -> list[Stream]:
        return list(self._streams.values())
