"""Stateless final responses built from a request's raw bytes (RFC 3261 §8.2.7), for the
requests worth the least: initial INVITEs from sources no trunk owns.

Through the core, such an INVITE is parsed whole, gets a server transaction, and over UDP its
403 or 401 is retransmitted by Timer G about ten times over Timer H's 32 s while no ACK comes
(a flooder never sends one): some 130 us of CPU, eleven packets out for one in, and 32 s of
memory per INVITE. Answered here, it costs one scan of the header section and one packet, and
nothing is kept. A stateless UAS may do this (§8.2.7); what it owes is the same To tag for a
retransmission of the same request, so the tag is a keyed hash of the request's Call-ID,
From, CSeq and top Via. Its ACK then finds no transaction and is absorbed by the core.

:func:`answer` copies Via (every value, in order), From, To, Call-ID and CSeq (§8.2.6.2), adds
the To tag, ``received``/``rport`` to the top Via when the request asked for rport (RFC 3581),
and the given extra header fields. It returns None, leaving the request to the core, whenever
it is not plainly an initial INVITE: another method in CSeq, a To tag, a header it needs
missing or repeated, folded header lines, no blank line.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Final

from switch.peer import Peer

__all__ = ["answer", "is_initial_invite", "is_stateless_ack", "top_branch"]

# Compact forms (RFC 3261 §7.3.3) of the header fields a response copies.
_NAMES: Final = {
    b"via": b"via", b"v": b"via",
    b"from": b"from", b"f": b"from",
    b"to": b"to", b"t": b"to",
    b"call-id": b"call-id", b"i": b"call-id",
    b"cseq": b"cseq",
}
_SINGLE: Final = (b"from", b"to", b"call-id", b"cseq")
_TAG: Final = re.compile(rb";[ \t]*tag[ \t]*=", re.IGNORECASE)
_RPORT: Final = re.compile(rb";[ \t]*rport(?=[ \t]*(?:[;,]|$))", re.IGNORECASE)
_CREDENTIALS: Final = re.compile(rb"(?im)^(?:proxy-)?authorization[ \t]*:")


def is_initial_invite(data: bytes) -> bool:
    """A cheap first look: an INVITE request line (a To tag is checked by :func:`answer`)."""
    return data.startswith(b"INVITE ")


# The first Via header line, and a branch parameter in its first value.
_FIRST_VIA: Final = re.compile(rb"\r\n(?:via|v)[ \t]*:([^\r\n]*)", re.IGNORECASE)
_BRANCH: Final = re.compile(rb";[ \t]*branch[ \t]*=[ \t]*([^;, \t]+)", re.IGNORECASE)
# A To tag of exactly 16 hex digits: what answer() makes (the core's own tags are 12).
_TO_LINE: Final = re.compile(rb"\r\n(?:to|t)[ \t]*:([^\r\n]*)", re.IGNORECASE)
_HASH_TAG: Final = re.compile(rb";[ \t]*tag[ \t]*=[ \t]*[0-9a-f]{16}[ \t]*(?:;|$)", re.IGNORECASE)


def top_branch(data: bytes) -> bytes | None:
    """The branch of the request's top Via value, or None (no Via, no branch)."""
    via = _FIRST_VIA.search(data)
    if via is None:
        return None
    first = via.group(1).split(b",", 1)[0]
    m = _BRANCH.search(first)
    return m.group(1) if m is not None else None


def is_stateless_ack(data: bytes) -> bool:
    """An ACK whose To tag is one :func:`answer` made: it acknowledges a stateless final
    response, so no transaction or dialog of the switch waits for it."""
    if not data.startswith(b"ACK "):
        return False
    to = _TO_LINE.search(data)
    return to is not None and _HASH_TAG.search(to.group(1)) is not None


def has_credentials(data: bytes) -> bool:
    """Whether the header section carries Authorization or Proxy-Authorization."""
    end = data.find(b"\r\n\r\n")
    return _CREDENTIALS.search(data, 0, end if end >= 0 else len(data)) is not None


def answer(
    data: bytes,
    peer: Peer,
    status: int,
    reason: str,
    headers: Sequence[tuple[str, str]],
    key: bytes,
) -> bytes | None:
    """The response to an initial INVITE, or None to leave the request to the core.

    Args:
        data: the request as received.
        peer: where it came from (for ``received`` and ``rport``).
        status, reason: the status line (a final status, 3xx-6xx).
        headers: extra header fields, as (name, value).
        key: secret bytes keying the To tag's hash.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    vias: list[bytes] = []
    found: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if not line or line[0] in b" \t" or b"\n" in line or b"\r" in line:
            return None  # folded lines, bare CR or LF: leave them to the full parser
        name, colon, value = line.partition(b":")
        if not colon:
            return None
        canon = _NAMES.get(name.strip().lower())
        if canon is None:
            continue
        value = value.strip()
        if canon == b"via":
            vias.append(value)
        elif canon in found:
            return None  # two From/To/Call-ID/CSeq: the core answers 400
        else:
            found[canon] = value
    if not vias or len(found) != len(_SINGLE):
        return None
    cseq = found[b"cseq"].split()
    if len(cseq) != 2 or cseq[1] != b"INVITE" or not cseq[0].isdigit():
        return None
    to = found[b"to"]
    if _TAG.search(to):
        return None  # inside a dialog: not ours to refuse
    top = vias[0]
    tag = hashlib.blake2b(
        b"\0".join((found[b"call-id"], found[b"from"], found[b"cseq"], top)),
        digest_size=8, key=key[:64],
    ).hexdigest().encode()
    if _RPORT.search(top):
        # RFC 3581 §4: fill rport, and received with it, in the top Via.
        host = peer.host.encode()
        top = _RPORT.sub(b";received=" + host + b";rport=" + str(peer.port).encode(), top, 1)
        vias[0] = top
    out = [f"SIP/2.0 {status} {reason}".encode()]
    out.extend(b"Via: " + via for via in vias)
    out.append(b"From: " + found[b"from"])
    out.append(b"To: " + to + b";tag=" + tag)
    out.append(b"Call-ID: " + found[b"call-id"])
    out.append(b"CSeq: " + found[b"cseq"])
    out.extend(f"{name}: {value}".encode() for name, value in headers)
    out.append(b"Content-Length: 0")
    return b"\r\n".join(out) + b"\r\n\r\n"
