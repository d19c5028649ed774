"""The SDP of a WebRTC call: the browser's offer, the buyer's media, and what each is given.

Pure (no sockets, no aiortc): :mod:`media.webrtc` feeds it the SDP bodies and its ICE/DTLS
parameters, and sends what comes back. SPEC.md "Media", WebRTC.

The browser leg. A browser's offer (RFC 8829 JSEP, RFC 8835 transports) carries
``UDP/TLS/RTP/SAVPF`` audio with ICE credentials and candidates (RFC 8839), a DTLS
fingerprint and ``a=setup`` (RFC 5763, RFC 8842) and ``a=rtcp-mux`` (RFC 5761).
:func:`parse_offer` validates it: a live audio ``m=`` with a DTLS-SRTP profile,
``a=ice-ufrag``/``a=ice-pwd``, a usable ``a=fingerprint`` and ``a=rtcp-mux``, otherwise
:class:`~media.errors.SdpError` (488). It picks the browser's first G.711 codec (PCMU or
PCMA) and its ``telephone-event/8000`` payload type. A browser that offers neither PCMU nor
PCMA gets 488 too: every browser shipping today offers both, and pass-through is the point
(no Opus transcoding). The browser's answer (:func:`browser_sdp`: our ``a=setup`` role,
fingerprint and candidates, the chosen codec and telephone-event, ``a=rtcp-mux``, other
``m=`` lines refused with port 0) is also our re-offer to it.

The buyer leg speaks plain ``RTP/AVP`` G.711. :func:`buyer_sdp` offers
``m=audio PORT RTP/AVP 0 8 101`` (the browser's codec first), ``c=media_ip`` and
``telephone-event/8000``, or answers a buyer's re-offer with the codec it chose;
:func:`parse_buyer` reads its answer (or re-offer).

Directions: each end states its own; media flows only where both agree
(:func:`toward_browser`), as it would if they talked directly.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from media import sdp
from media.errors import SdpError

#: Payload types on the buyer leg (RFC 3551 static 0/8; 101 is the usual dynamic te PT).
PT_PCMU = 0
PT_PCMA = 8
PT_TE = 101
#: DTLS-SRTP profiles (RFC 5764) as browsers send them in the m= line.
DTLS_PROTOS = frozenset({"UDP/TLS/RTP/SAVPF", "UDP/TLS/RTP/SAVP", "TCP/TLS/RTP/SAVPF"})
#: RFC 8122 hash functions aiortc can check (X509_DIGEST_ALGORITHMS).
FINGERPRINT_ALGORITHMS = frozenset({"sha-256", "sha-384", "sha-512"})


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


# --------------------------------------------------------------------------------------------
# Directions


def sends(direction: str) -> bool:
    """Whether the side that states ``direction`` sends media."""
    return direction in ("sendrecv", "sendonly")


def receives(direction: str) -> bool:
    """Whether the side that states ``direction`` receives media."""
    return direction in ("sendrecv", "recvonly")


def direction_attr(send: bool, recv: bool) -> str:
    """RFC 3264 §6.1: the direction attribute for what one side sends and receives."""
    if send:
        return "sendrecv" if recv else "sendonly"
    return "recvonly" if recv else "inactive"


def toward_browser(browser: str, buyer: str) -> str:
    """Our direction toward the browser when each end states its own: media flows only where
    both ends agree, as it would if they talked directly."""
    return direction_attr(
        send=receives(browser) and sends(buyer), recv=sends(browser) and receives(buyer)
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
# The SDP each side is given


@dataclass(slots=True, frozen=True)
class LocalIce:
    """Our end of the browser leg: what the browser needs to reach us and check our DTLS."""

    address: str  # c= and a=rtcp: the advertised address, else media_ip
    port: int  # the ICE host candidate's port (rtcp-mux: the only one)
    ufrag: str
    pwd: str
    fingerprints: tuple[tuple[str, str], ...]  # (algorithm, value) of our DTLS certificate
    candidates: tuple[str, ...]  # a=candidate values
    ssrc: int  # of the stream we send to the browser


def browser_sdp(
    offer: WebRtcOffer, local: LocalIce, direction: str, call_id: str, origin: sdp.LegOrigin
) -> bytes:
    """Our answer (or re-offer) to the browser: one audio stream, everything else port 0."""
    o = offer
    addr = local.address
    fam = "IP6" if ":" in addr else "IP4"
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
            f"m=audio {local.port} {proto} {' '.join(fmts)}",
            f"c=IN {fam} {addr}",
            f"a=rtcp:{local.port} IN {fam} {addr}",
            f"a=ice-ufrag:{local.ufrag}",
            f"a=ice-pwd:{local.pwd}",
        ]
        for algorithm, value in local.fingerprints:
            lines.append(f"a=fingerprint:{algorithm} {value}")
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
            f"a=msid:dce {call_id[:32]}",
            f"a=ssrc:{local.ssrc} cname:dce",
        ]
        for cand in local.candidates:
            lines.append(f"a=candidate:{cand}")
        lines.append("a=end-of-candidates")
    rest = "\r\n".join(lines)
    return f"v=0\r\no={origin.stamp(addr, rest)}\r\n{rest}\r\n".encode()


def buyer_sdp(
    offer: WebRtcOffer,
    *,
    media_ip: str,
    port: int,
    direction: str,
    origin: sdp.LegOrigin,
    answer_to: BuyerMedia | None = None,
) -> bytes:
    """Plain SDP for the buyer: our offer, or (``answer_to``) our answer to its offer."""
    fam = "IP6" if ":" in media_ip else "IP4"
    if answer_to is not None:
        codecs = [answer_to.codec_pt]
        names = {answer_to.codec_pt: answer_to.codec}
        te = answer_to.te_pt
    else:
        first, second = (PT_PCMU, PT_PCMA) if offer.codec == "PCMU" else (PT_PCMA, PT_PCMU)
        codecs = [first, second]
        names = {PT_PCMU: "PCMU", PT_PCMA: "PCMA"}
        te = PT_TE
    fmts = [str(c) for c in codecs] + ([str(te)] if te is not None else [])
    lines = [
        "s=dce",
        f"c=IN {fam} {media_ip}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(fmts)}",
    ]
    for c in codecs:
        lines.append(f"a=rtpmap:{c} {names[c]}/8000")
    if te is not None:
        lines += [f"a=rtpmap:{te} telephone-event/8000", f"a=fmtp:{te} 0-16"]
    lines += ["a=ptime:20", f"a={direction}"]
    rest = "\r\n".join(lines)
    return f"v=0\r\no={origin.stamp(media_ip, rest)}\r\n{rest}\r\n".encode()
