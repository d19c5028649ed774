"""Helpers for the conformance, torture and fuzz tests: feed raw bytes to a real
:class:`switch.core.SwitchCore` over each transport's path, and check that what comes back is
an answer RFC 3261 allows.

The paths are the ones ``dce run`` takes: a UDP datagram or a WebSocket message goes to the
core whole; a TCP byte stream is cut by :class:`switch.framing.StreamFramer` first, and a
framing error is answered with :func:`switch.framing.error_response` before the connection
closes (switch/transport.py).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from switch.context import ALLOW, CoreConfig
from switch.core import SwitchCore
from switch.errors import SipParseError
from switch.framing import FramingError, StreamFramer, error_response
from switch.message import SipRequest, SipResponse, header_end, parse_message
from switch.outside import AdmitResult
from switch.peer import Peer
from switch.timers import TimerConfig
from switch.uri import Via, split_unquoted

_TAG = re.compile(rb";[ \t]*tag[ \t]*=", re.I)
UDP = Peer("udp", "192.0.2.7", 5060)
WS = Peer("ws", "192.0.2.7", 40000, conn=5)
TCP = Peer("tcp", "192.0.2.7", 41000, conn=6)


class AdmitAll:
    def admit_request(self, req: SipRequest, peer: Peer, now: float) -> AdmitResult:
        return AdmitResult(trunk_id="t1")


def new_core(seed: int = 7) -> SwitchCore:
    return SwitchCore(
        CoreConfig(host="127.0.0.1", port=5060, timers=TimerConfig()),
        AdmitAll(),
        rng=random.Random(seed),
    )


@dataclass(slots=True)
class Exchange:
    """What one input produced: the messages the core received and the bytes sent back."""

    # (message handed to the core, datagram sent back to the peer), in order; a TCP framing
    # error's answer is paired with the bytes that could not be framed.
    answers: list[tuple[bytes, bytes]]
    closed: bool = False  # TCP: a framing error closed the connection

    @property
    def sent(self) -> list[bytes]:
        return [data for _, data in self.answers]

    def statuses(self) -> list[int]:
        out = []
        for data in self.sent:
            line = data.split(b"\r\n", 1)[0]
            if line.startswith(b"SIP/2.0 "):
                out.append(int(line[8:11]))
        return out


def feed(core: SwitchCore, data: bytes, peer: Peer, now: float = 0.0) -> Exchange:
    """Send ``data`` to ``core`` as ``peer``'s transport would; return what came back."""
    answers: list[tuple[bytes, bytes]] = []
    closed = False
    if peer.transport == "tcp":
        framer = StreamFramer()
        try:
            framer.receive_data(data)
            while (msg := framer.next_message()) is not None:
                core.receive_datagram(msg, peer, now)
                answers.extend((msg, d) for d in _sent(core, peer))
        except FramingError as exc:
            closed = True
            answer = error_response(exc)
            if answer is not None:
                answers.append((exc.head, answer))
    else:
        core.receive_datagram(data, peer, now)
        answers.extend((data, d) for d in _sent(core, peer))
    return Exchange(answers, closed)


def _sent(core: SwitchCore, peer: Peer) -> list[bytes]:
    out = core.datagrams_to_send()
    assert all(to == peer for _, to in out), f"sent to another peer: {out}"
    return [data for data, _ in out]


def top_via(data: bytes) -> Via | None:
    """The top Via of a raw message when it can be read, else None."""
    try:
        data = data.lstrip(b"\r\n")
        cut = header_end(data)
        text = (data[: cut[0]] if cut is not None else data).decode("utf-8", "surrogateescape")
    except Exception:  # pragma: no cover - surrogateescape never fails
        return None
    lines = text.replace("\r\n", "\n").split("\n")
    for i, line in enumerate(lines[1:], 1):
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() in ("via", "v"):
            j = i + 1
            while j < len(lines) and lines[j][:1] in (" ", "\t"):
                value += " " + lines[j].strip()
                j += 1
            try:
                return Via.parse(split_unquoted(value, ",")[0])
            except SipParseError:
                return None
    return None


def _raw_headers(data: bytes) -> list[tuple[str, bytes]]:
    """(lower-case name, value) of each header line, folded lines joined; no checking."""
    data = data.lstrip(b"\r\n")
    cut = header_end(data)
    head = data[: cut[0]] if cut is not None else data
    out: list[tuple[str, bytes]] = []
    folds = False  # the line before was a header line, which a fold continues
    for line in head.replace(b"\r\n", b"\n").split(b"\n")[1:]:
        if line[:1] in (b" ", b"\t"):
            if folds:
                out[-1] = (out[-1][0], (out[-1][1] + b" " + line.strip()).strip())
            continue
        name, sep, value = line.partition(b":")
        folds = bool(sep)
        if sep:
            out.append((name.strip().lower().decode("latin-1"), value.strip()))
    return out


def check_answer(request: bytes, answer: bytes) -> int:
    """Assert that ``answer`` is a response RFC 3261 allows to ``request`` (which has a
    readable top Via); return its status.

    A request that parses must get a response that parses, with its Via branch, Call-ID,
    CSeq and To tag. One that does not parse was answered statelessly with its own header
    lines copied as they came (so the answer may not parse either): those are compared raw.
    """
    assert answer.startswith(b"SIP/2.0 ") and answer[11:12] == b" ", answer[:40]
    status = int(answer[8:11])
    line = answer.split(b"\r\n", 1)[0]
    assert b"\r" not in line and b"\n" not in line
    req_via = top_via(request)
    assert req_via is not None
    start = request.lstrip(b"\r\n").split(b" ", 1)[0].decode("utf-8", "replace")
    assert start != "ACK", "§17: an ACK is never answered"
    try:
        req = parse_message(request)
        req.to_tag  # noqa: B018 - lazy, but the core reads it for every request
    except SipParseError:
        req = None
    resp_headers = _raw_headers(answer)
    names = {name for name, _ in resp_headers}
    compact = {"v": "via", "f": "from", "t": "to", "i": "call-id"}
    had = {compact.get(name, name) for name, _ in _raw_headers(request)}
    for needed in ("via", "from", "to", "call-id", "cseq"):
        assert needed in names or needed not in had, f"§8.2.6.2: {needed} is copied"
    if isinstance(req, SipRequest):
        resp = parse_message(answer)
        assert isinstance(resp, SipResponse)
        assert resp.via.branch == req_via.branch, "§8.2.6.2: the top Via is copied"
        assert resp.call_id == req.call_id
        assert resp.cseq == req.cseq
        if req.to_tag is not None:
            assert resp.to_tag == req.to_tag, "§8.2.6.2: the To tag is kept"
        if status == 100:
            assert req.method == "INVITE", "RFC 4320: no 100 to a non-INVITE request"
        if status > 100:
            assert resp.to_tag, f"§8.2.6.2: a {status} needs a To tag"
        if status in (405, 501):
            assert resp.headers.get("allow") == ALLOW, "§8.2.1: Allow"
            if status == 405:
                assert req.method not in {m.strip() for m in ALLOW.split(",")}
        if status == 420:
            assert resp.headers.get("unsupported"), "§8.2.2.3: 420 lists the tags"
        if status == 415:
            assert resp.headers.get("accept") or resp.headers.get("accept-encoding")
    else:
        assert status in (400, 416, 505, 513), status
        req_lines = _raw_headers(request)
        for key in ("via", "call-id", "cseq", "from"):
            want = [v for n, v in req_lines if compact.get(n, n) == key]
            got = [v for n, v in resp_headers if n == key]
            assert got == want, f"{key} copied as it came"
        to = [v for n, v in resp_headers if n == "to"]
        assert not to or _TAG.search(to[0]), "a stateless final needs a To tag"
    return status
