"""SDP parsing and rewriting for anchored media: RFC 4566 syntax, RFC 3264 offer/answer rules.

Pure functions, no I/O. The switch anchors media by handing each leg an SDP whose addresses and
ports are its own; everything that describes *what* is sent (codecs, ``a=rtpmap``/``a=fmtp``,
RFC 4733 telephone-event, ``a=ptime``, SRTP ``a=crypto``, unknown attributes) passes through
byte for byte, so the two endpoints negotiate end to end and the relay never transcodes.

Theory of operation
-------------------
``parse(body)`` splits the body into a session section and one section per ``m=`` line and keeps
every line as ``(type, value)``, so ``rewrite`` can replay them unchanged. Bodies are decoded as
Latin-1, which maps every byte to one character and back: untouched lines leave exactly as they
arrived (RFC 4566 §5 allows UTF-8 in ``s=``/``i=``; Latin-1 round-trips it). Lines may end in CRLF
or LF (RFC 4566 §5: "parsers SHOULD be tolerant and also accept records terminated with a single
newline"); ``rewrite`` always writes CRLF. Garbage raises :class:`SdpError` (488) naming the line.

``rewrite(sd, media_ip, ports, origin)`` changes only what reveals or routes to the peer:

* ``o=`` is the switch's own per leg (:class:`LegOrigin`): the same sess-id for the whole dialog
  and a sess-version that goes up by one exactly when the body changes (RFC 3264 §8).
* every ``c=`` (session and media level) becomes ``IN IP4|IP6 <media_ip>``;
* each ``m=`` port becomes ``ports[i]``; a port that is 0 (rejected or disabled stream, RFC 3264
  §5.1/§6) stays 0, and ``ports[i] == 0`` disables a stream the relay does not carry;
* ``a=rtcp`` (RFC 3605) becomes ``port + 1`` on the switch's address, which is where the relay's
  RTCP socket is; ``a=rtcp-mux`` (RFC 5761) passes through so the endpoints negotiate it and the
  relay accepts RTCP on either socket;
* ICE attributes (``a=candidate``, ``a=ice-ufrag``, ...; RFC 8839) are removed: candidates carry
  the peer's own addresses, and the switch does not run ICE, so the far end must use ``c=``/``m=``.

Hold (RFC 3264 §8.4)
--------------------
Direction attributes (``a=sendonly``/``recvonly``/``inactive``) pass through untouched, at
session and media level. The RFC 2543 form, ``c=IN IP4 0.0.0.0``, is *kept* as the unspecified
address of the switch's family (``0.0.0.0`` or ``::``) rather than replaced by ``media_ip``.
Why: the sender said "do not send to me"; writing our address there would invite the far end
to send media the holder does not want, and rewriting it into ``a=sendonly`` would invent an
attribute the sender did not send (RFC 3264 §8.4 names the two forms equivalent, and a B2BUA
should not translate between them). The ``m=`` port is still the switch's, so the resuming
re-INVITE re-anchors on the same ports. The exception is ICE's placeholder (``c=0.0.0.0`` with
``a=candidate`` lines, as browsers send when trickling): that is not hold, so it is rewritten to
``media_ip`` like any other address. :func:`media_endpoints` reports a ``c=0.0.0.0`` hold as the
equivalent direction (``sendrecv`` -> ``sendonly``, ``recvonly`` -> ``inactive``) so the relay
treats the leg as held.
"""

from __future__ import annotations

import functools
import ipaddress
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from media.errors import InvalidStateError, SdpError

#: Bodies larger than this are refused (a SIP message is capped well below; this is a backstop).
MAX_SDP_BYTES = 65536
#: More m= lines than any real call carries: a guard against quadratic work on hostile input.
MAX_MEDIA = 32

DIRECTIONS = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})
#: RFC 8839 §5 (ICE SDP attributes) plus RFC 8840 trickle's end-of-candidates: all dropped.
ICE_ATTRIBUTES = frozenset(
    {
        "candidate",
        "remote-candidates",
        "ice-ufrag",
        "ice-pwd",
        "ice-options",
        "ice-lite",
        "ice-mismatch",
        "ice-pacing",
        "end-of-candidates",
    }
)
_UNSPECIFIED = frozenset({"0.0.0.0", "::", "0:0:0:0:0:0:0:0"})
CRLF = "\r\n"


@dataclass(slots=True, frozen=True)
class Connection:
    """A ``c=`` line or the address part of ``a=rtcp`` (RFC 4566 §5.7), without TTL/count."""

    nettype: str
    addrtype: str
    address: str

    @property
    def unspecified(self) -> bool:
        """True for ``0.0.0.0``/``::``: RFC 2543 hold, or ICE's "no address yet"."""
        return self.address in _UNSPECIFIED


@dataclass(slots=True, frozen=True)
class Origin:
    """The peer's ``o=`` line (RFC 4566 §5.2). Read only; the switch writes its own."""

    username: str
    sess_id: str
    sess_version: str
    nettype: str
    addrtype: str
    address: str


@dataclass(slots=True)
class MediaDescription:
    """One ``m=`` section (RFC 4566 §5.14) and the lines under it, in order."""

    index: int
    media: str
    port: int
    port_count: int | None
    proto: str
    formats: tuple[str, ...]
    connection: Connection | None = None
    direction: str | None = None
    rtcp: tuple[int, Connection | None] | None = None
    rtcp_mux: bool = False
    has_candidates: bool = False
    lines: list[tuple[str, str]] = field(default_factory=list)

    def attributes(self, name: str) -> list[str]:
        """Values of every ``a=name:value`` (``""`` for a flag) under this m= line."""
        out = []
        for typ, value in self.lines:
            if typ == "a":
                attr, _, val = value.partition(":")
                if attr == name:
                    out.append(val)
        return out

    def rtpmap(self) -> dict[str, str]:
        """Payload type -> encoding (``{"0": "PCMU/8000", "101": "telephone-event/8000"}``)."""
        out = {}
        for value in self.attributes("rtpmap"):
            pt, _, enc = value.partition(" ")
            out[pt] = enc.strip()
        return out

    @property
    def is_rtp(self) -> bool:
        """RTP/AVP, RTP/SAVP, RTP/AVPF, RTP/SAVPF, UDP/TLS/RTP/SAVPF: carried as RTP over UDP."""
        return "RTP/" in self.proto


@dataclass(slots=True)
class SessionDescription:
    """A parsed SDP body: the session section and its media sections."""

    origin: Origin
    session_name: str | None
    connection: Connection | None
    direction: str | None
    has_candidates: bool
    lines: list[tuple[str, str]]  # session-level lines after v=, o= included, in order
    media: list[MediaDescription]

    def connection_for(self, m: MediaDescription) -> Connection | None:
        """RFC 4566 §5.7: a media-level c= overrides the session-level one."""
        return m.connection if m.connection is not None else self.connection

    def direction_for(self, m: MediaDescription) -> str:
        """RFC 3264 §5.1: media-level direction, else session-level, else sendrecv."""
        return m.direction or self.direction or "sendrecv"

    def is_address_hold(self, m: MediaDescription) -> bool:
        """RFC 3264 §8.4: c=0.0.0.0 without ICE candidates is the RFC 2543 hold."""
        conn = self.connection_for(m)
        return conn is not None and conn.unspecified and not m.has_candidates


class MediaEndpoint(NamedTuple):
    """Where one m= line says a peer receives media (for latching and the first sends)."""

    ip: str
    rtp_port: int
    rtcp_port: int
    direction: str


# --------------------------------------------------------------------------------------------
# Parsing


def _digits(text: str) -> bool:
    # str.isdigit() alone accepts "²" and other Latin-1 digits.
    return text.isascii() and text.isdigit()


def _connection(value: str, number: int) -> Connection:
    # ``number``: the SDP line, for the error (the message is only built for a bad line).
    parts = value.split()
    if len(parts) != 3:
        raise SdpError(f"bad c= on line {number}: {value!r}")
    nettype, addrtype, addr = parts
    if nettype != "IN" or addrtype not in ("IP4", "IP6"):
        raise SdpError(f"unsupported c= on line {number}: {value!r}")
    address = addr.split("/", 1)[0]  # drop multicast /ttl/count (RFC 4566 §5.7)
    if not address:
        raise SdpError(f"empty c= address on line {number}")
    return Connection(nettype, addrtype, address)


def _rtcp(value: str, number: int) -> tuple[int, Connection | None]:
    # RFC 3605 §2.1: a=rtcp:<port> [<nettype> <addrtype> <connection-address>]
    parts = value.split()
    if not parts or not _digits(parts[0]) or int(parts[0]) > 65535:
        raise SdpError(f"bad a=rtcp on line {number}: {value!r}")
    if len(parts) == 1:
        return int(parts[0]), None
    if len(parts) != 4:
        raise SdpError(f"bad a=rtcp on line {number}: {value!r}")
    return int(parts[0]), _connection(" ".join(parts[1:]), number)


def _media_line(value: str, index: int) -> MediaDescription:
    # RFC 4566 §5.14: m=<media> <port>[/<number of ports>] <proto> <fmt> ...
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"bad m= line {index + 1}: {value!r}")
    media, port_text, proto, *formats = parts
    port_str, slash, count_str = port_text.partition("/")
    if not _digits(port_str) or int(port_str) > 65535:
        raise SdpError(f"bad port in m= line {index + 1}: {port_text!r}")
    if slash and not _digits(count_str):
        raise SdpError(f"bad port count in m= line {index + 1}: {port_text!r}")
    port = int(port_str)
    # RFC 3264 §6: even a rejected stream keeps its formats, but tolerate none on port 0.
    if not formats and port != 0:
        raise SdpError(f"no formats in m= line {index + 1}: {value!r}")
    return MediaDescription(
        index=index,
        media=media,
        port=port,
        port_count=int(count_str) if slash else None,
        proto=proto,
        formats=tuple(formats),
    )


def _raise_syntax_error(lines: list[str]) -> None:
    """Raise for the first line that is not ``<type>=<value>``, if any (error path only)."""
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\r")
        if not line or line.isspace():
            continue
        if len(line) < 2 or line[1] != "=" or not "a" <= line[0] <= "z":
            raise SdpError(f"SDP line {number} is not <type>=<value>: {line[:40]!r}")


def parse(body: bytes) -> SessionDescription:
    """Parse an SDP body (RFC 4566).

    Raises:
        SdpError: (status 488) the body is empty, too large, not ``<type>=<value>`` lines,
            lacks ``v=0`` or ``o=``, has a bad ``m=``/``c=``/``a=rtcp`` line, or a live stream
            has no connection address.
    """
    if len(body) > MAX_SDP_BYTES:
        raise SdpError(f"SDP body of {len(body)} bytes exceeds {MAX_SDP_BYTES}")
    lines = body.decode("latin-1").split("\n")
    origin: Origin | None = None
    session_name: str | None = None
    session_conn: Connection | None = None
    session_dir: str | None = None
    session_ice = False
    session_lines: list[tuple[str, str]] = []
    media: list[MediaDescription] = []
    current: MediaDescription | None = None
    seen_v = False

    # One pass (a call's SDP is parsed twice per call, so this loop is per-call cost). A line
    # that is not <type>=<value> anywhere in the body is still the error reported first, as
    # with a separate syntax pass: see the except clause.
    try:
        for number, raw in enumerate(lines, 1):
            line = raw.rstrip("\r") if raw[-1:] == "\r" else raw
            if not line or line.isspace():
                continue  # blank lines, including the one after the final CRLF
            typ = line[0]
            if len(line) < 2 or line[1] != "=" or not "a" <= typ <= "z":
                raise SdpError(f"SDP line {number} is not <type>=<value>: {line[:40]!r}")
            value = line[2:]
            if not seen_v:
                if typ != "v" or value != "0":
                    raise SdpError(f"SDP must start with v=0, got {typ}={value[:20]!r}")
                seen_v = True
                continue
            if typ == "m":
                if len(media) >= MAX_MEDIA:
                    raise SdpError(f"more than {MAX_MEDIA} m= lines")
                current = _media_line(value, len(media))
                media.append(current)
                continue
            if typ == "v":
                raise SdpError(f"second v= line on line {number}")
            if current is None:
                if typ == "o":
                    if origin is not None:
                        raise SdpError(f"second o= line on line {number}")
                    fields = value.split()
                    if len(fields) != 6:
                        raise SdpError(f"bad o= line on line {number}: {value!r}")
                    origin = Origin(*fields)
                elif typ == "s":
                    session_name = value
                elif typ == "c":
                    session_conn = _connection(value, number)
                elif typ == "a":
                    name = _attr_name(value)
                    if name in DIRECTIONS:
                        session_dir = name
                    elif name in ICE_ATTRIBUTES:
                        session_ice = session_ice or name == "candidate"
                session_lines.append((typ, value))
                continue
            if typ == "c":
                current.connection = _connection(value, number)
            elif typ == "a":
                name, _, attr_value = value.partition(":")
                if name in DIRECTIONS:
                    current.direction = name
                elif name == "rtcp":
                    current.rtcp = _rtcp(attr_value, number)
                elif name == "rtcp-mux":
                    current.rtcp_mux = True
                elif name == "candidate":
                    current.has_candidates = True
            current.lines.append((typ, value))
    except SdpError:
        _raise_syntax_error(lines)
        raise
    if not seen_v:
        raise SdpError("empty SDP body")

    if origin is None:
        raise SdpError("SDP has no o= line")
    for m in media:
        if m.port != 0 and m.connection is None and session_conn is None:
            raise SdpError(f"m= line {m.index + 1} ({m.media}) has no c= line and no session c=")
    return SessionDescription(
        origin=origin,
        session_name=session_name,
        connection=session_conn,
        direction=session_dir,
        has_candidates=session_ice,
        lines=session_lines,
        media=media,
    )


def media_endpoints(sd: SessionDescription) -> list[MediaEndpoint]:
    """Per m= line: the peer's announced (ip, rtp port, rtcp port, direction).

    ``rtcp_port`` is ``a=rtcp`` if given (RFC 3605), else ``rtp_port + 1`` (RFC 3550 §11).
    A ``c=0.0.0.0`` hold reports the equivalent direction (RFC 3264 §8.4). A disabled stream
    (port 0) reports ports 0; a stream with no address reports ip ``""``.
    """
    out = []
    for m in sd.media:
        conn = sd.connection_for(m)
        direction = sd.direction_for(m)
        if sd.is_address_hold(m):
            direction = "inactive" if direction in ("recvonly", "inactive") else "sendonly"
        if m.port == 0:
            out.append(MediaEndpoint(conn.address if conn else "", 0, 0, direction))
            continue
        rtcp_port = m.rtcp[0] if m.rtcp is not None else m.port + 1
        out.append(MediaEndpoint(conn.address if conn else "", m.port, rtcp_port, direction))
    return out


def relay_index(sd: SessionDescription, prefer: int | None = None) -> int | None:
    """Which m= line the relay carries: ``prefer`` if still live, else the first live RTP audio.

    An answer keeps the offer's m= order (RFC 3264 §6), so passing the offer's index keeps the
    relay on the same stream. Returns None when no audio stream is live (all port 0, no media).
    """

    def live(m: MediaDescription) -> bool:
        return m.media == "audio" and m.port != 0 and m.is_rtp

    if prefer is not None and 0 <= prefer < len(sd.media) and live(sd.media[prefer]):
        return prefer
    for m in sd.media:
        if live(m):
            return m.index
    return None


def plan_ports(sd: SessionDescription, rtp_port: int, index: int | None) -> list[int]:
    """``ports`` for :func:`rewrite`: ``rtp_port`` on the relayed m= line, 0 elsewhere.

    The relay carries one audio stream per call; any other stream (video, T.38 image) is
    disabled with port 0 (RFC 3264 §8.2) rather than passed with the peer's own address.
    """
    return [rtp_port if i == index else 0 for i in range(len(sd.media))]


# --------------------------------------------------------------------------------------------
# The switch's own o= line


@dataclass(slots=True)
class LegOrigin:
    """The ``o=`` line the switch presents on one leg (one per dialog).

    RFC 3264 §8: within a dialog the sess-id stays, and sess-version goes up by exactly one
    each time the SDP differs from the previous one sent on that leg (an identical re-send
    keeps it). Build with :meth:`create` and pass it to every :func:`rewrite` for that leg.
    """

    sess_id: int
    version: int
    username: str = "dce"
    last_body: str | None = None

    @classmethod
    def create(cls, rng: random.Random, username: str = "dce") -> LegOrigin:
        """A fresh origin. RFC 4566 §5.2: sess-id is any unique number (63 bits here)."""
        sess_id = rng.randrange(1, 2**62)
        return cls(sess_id=sess_id, version=sess_id % 1_000_000 + 1, username=username)

    def stamp(self, address: str, rest: str) -> str:
        """The ``o=`` value for a body whose other lines are ``rest``; bumps on change."""
        if self.last_body is not None and rest != self.last_body:
            self.version += 1
        self.last_body = rest
        family = "IP6" if ":" in address else "IP4"
        return f"{self.username} {self.sess_id} {self.version} IN {family} {address}"


# --------------------------------------------------------------------------------------------
# Rewriting


def _attr_name(value: str) -> str:
    return value.partition(":")[0]


def rewrite(
    sdp: bytes | SessionDescription,
    media_ip: str,
    ports: Sequence[int],
    origin: LegOrigin,
) -> bytes:
    """The SDP to send on one leg: the switch's addresses and ports, the peer's codecs.

    Args:
        sdp: the body received from the other leg, or its :func:`parse` result.
        media_ip: DCE_MEDIA_IP (IPv4 or IPv6 literal).
        ports: one entry per m= line: the switch's RTP port for that stream on this leg
            (RTCP is ``port + 1``), or 0 to disable it. Port 0 in the input stays 0.
        origin: this leg's :class:`LegOrigin`; its version is bumped if the body changed
            since the last call (the only state touched).

    Raises:
        SdpError: ``sdp`` is bytes that do not parse.
        InvalidStateError: ``len(ports)`` differs from the number of m= lines (our bug).
    """
    sd = parse(sdp) if isinstance(sdp, bytes) else sdp
    if len(ports) != len(sd.media):
        raise InvalidStateError(f"{len(ports)} ports for {len(sd.media)} m= lines")
    family = "IP6" if ":" in media_ip else "IP4"
    ours = f"IN {family} {media_ip}"
    held = f"IN {family} {'::' if family == 'IP6' else '0.0.0.0'}"
    any_candidates = sd.has_candidates or any(m.has_candidates for m in sd.media)
    session_hold = sd.connection is not None and sd.connection.unspecified and not any_candidates

    out: list[str] = []
    have_s = have_t = False
    for typ, value in sd.lines:
        if typ == "o":
            continue  # written last, once the rest is known (version depends on it)
        if typ == "c":
            out.append("c=" + (held if session_hold else ours))
            continue
        if typ == "a":
            name = _attr_name(value)
            if name in ICE_ATTRIBUTES or name == "rtcp":
                continue  # both are media-level by RFC; at session level they only leak
        elif typ == "s":
            have_s = True
        elif typ == "t":
            have_t = True
        out.append(f"{typ}={value}")
    if not have_s:
        out.insert(0, "s=-")  # RFC 4566 §5.3: s= is mandatory; "-" when there is no name
    if not have_t:
        # RFC 4566 §5.9: t= is mandatory and comes before session attributes.
        first_attr = next((i for i, line in enumerate(out) if line[0] in "rzka"), len(out))
        out.insert(first_attr, "t=0 0")

    for m, port in zip(sd.media, ports, strict=True):
        new_port = 0 if m.port == 0 or port == 0 else port
        formats = " " + " ".join(m.formats) if m.formats else ""
        out.append(f"m={m.media} {new_port} {m.proto}{formats}")
        media_hold = sd.is_address_hold(m)
        conn = held if media_hold else ours
        for typ, value in m.lines:
            if typ == "c":
                out.append("c=" + conn)
                continue
            if typ == "a":
                name = _attr_name(value)
                if name in ICE_ATTRIBUTES:
                    continue
                if name == "rtcp":
                    if new_port == 0 or m.rtcp is None:
                        continue  # a disabled stream has no RTCP to announce
                    # RFC 3605: keep the peer's form (port only, or port + address).
                    suffix = f" {conn}" if m.rtcp[1] is not None else ""
                    out.append(f"a=rtcp:{new_port + 1}{suffix}")
                    continue
            out.append(f"{typ}={value}")

    rest = CRLF.join(out)
    o_line = origin.stamp(media_ip, rest)
    return f"v=0{CRLF}o={o_line}{CRLF}{rest}{CRLF}".encode("latin-1")


@functools.lru_cache(maxsize=4096)  # pure; ipaddress parsing was a fifth of a call's SDP work
def is_usable_address(ip: str, media_ip: str) -> bool:
    """Whether packets from ``ip`` can be expected as the SDP says (for strict latching).

    Unusable: empty, not an IP literal (a host name: the core does no DNS), unspecified,
    multicast, or a private/non-global address while the switch itself is on a global one
    (the peer is behind a NAT and its packets will come from the NAT's public address).
    """
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if addr.is_unspecified or addr.is_multicast:
        return False
    try:
        ours = ipaddress.ip_address(media_ip)
    except ValueError:
        return True
    if addr.version != ours.version:
        return False
    return addr.is_global or not ours.is_global
