"""Fuzzing the parser and the stateless edge of the core with generated SIP (sipgen.py).

Properties, for any bytes:

- the parser raises nothing but SipParseError (status 400, 416, 505 or 513), and a message
  it takes comes back the same from its own serialisation;
- a whole core, fed the bytes over UDP, WebSocket or TCP and then run until no timer is left,
  raises nothing, sends only to that peer, never answers a response or an ACK, answers every
  request it could parse exactly once (one final, retransmitted the same; a 100 first for an
  INVITE) with a status RFC 3261 allows for it, copies what §8.2.6.2 says, and is left with
  no state at all.

The corpus: every file in ``data/fuzz/`` is a message these tests once failed on or found
interesting; its name starts with the statuses a UDP peer gets (``none`` for nothing) and the
test replays each. ``DCE_FUZZ_EXAMPLES=5000`` runs longer; ``DCE_FUZZ_SAVE=<dir>`` writes one
file per new outcome into <dir>, to be looked at and added to the corpus.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from switch.core import SwitchCore
from switch.errors import SipParseError
from switch.message import SipRequest, SipResponse, parse_message, stateless_response
from switch.peer import Peer
from tests.switch import sipgen
from tests.switch.sipcheck import TCP, UDP, WS, check_answer, feed, new_core, top_via

CORPUS = Path(__file__).parent / "data" / "fuzz"
FUZZ = settings(
    max_examples=int(os.environ.get("DCE_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_SAVE = os.environ.get("DCE_FUZZ_SAVE")
_seen: set[str] = set()

# Final statuses a request may get from a switch that admits it and never routes it.
ALLOWED = {400, 405, 415, 416, 420, 481, 483, 501, 505, 513}
ALLOWED_BY_METHOD = {"INVITE": {500}, "OPTIONS": {200}}  # 500: routing never came back


def check_parser(data: bytes) -> SipRequest | SipResponse | None:
    try:
        msg = parse_message(data)
    except SipParseError as exc:
        assert exc.status in (400, 416, 505, 513)
        return None
    for name in ("via", "cseq", "call_id", "from_", "to", "from_tag", "to_tag"):
        try:
            getattr(msg, name)
        except SipParseError:
            pass
    again = parse_message(msg.to_bytes())
    assert type(again) is type(msg)
    if isinstance(msg, SipRequest):
        assert isinstance(again, SipRequest)
        assert (again.method, again.uri) == (msg.method, msg.uri)
    else:
        assert isinstance(again, SipResponse)
        assert (again.status, again.reason) == (msg.status, msg.reason)
    items = [kv for kv in msg.headers.items() if kv[0] != "content-length"]
    assert [kv for kv in again.headers.items() if kv[0] != "content-length"] == items
    assert again.body == msg.body
    return msg


def _run(core: SwitchCore, data: bytes, peer: Peer) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    """Feed ``data``, then fire every timer; (messages framed, (message, answer) pairs)."""
    got = feed(core, data, peer)
    framed = _framed(data) if peer.transport == "tcp" else [data]
    answers = list(got.answers)
    now = 0.0
    while (t := core.get_timer()) is not None:
        assert t >= now, "a timer in the past"
        now = t
        assert now < 3600, "timers that never stop"
        core.handle_timer(now)
        for out, to in core.datagrams_to_send():
            assert to == peer, f"sent to {to}, not the only peer"
            answers.append((framed[-1] if framed else data, out))
    assert list(core.tables()) == [0] * len(core.tables())
    assert len(core.layer) == 0 and core.calls == {}
    return framed, answers


def _framed(data: bytes) -> list[bytes]:
    from switch.framing import FramingError, StreamFramer

    framer = StreamFramer()
    out: list[bytes] = []
    try:
        framer.receive_data(data)
        while (msg := framer.next_message()) is not None:
            out.append(msg)
    except FramingError:
        pass
    return out


def check_core(data: bytes, peer: Peer) -> list[int]:
    """Run ``data`` through a fresh core as ``peer``; check the answers; their statuses."""
    core = new_core()
    framed, answers = _run(core, data, peer)
    statuses = [int(a[8:11]) for _, a in answers]
    for message, answer in answers:
        if top_via(message) is not None:
            check_answer(message, answer)
    if len(framed) != 1:
        return statuses  # several messages in one stream: answers checked one by one above
    (message,) = framed
    lead = message.lstrip(b"\r\n")
    if lead[:4].upper() == b"SIP/" or lead[:4] == b"ACK ":
        assert answers == [], "a response or an ACK is never answered"
        return statuses
    try:
        req = parse_message(message)
        req.to_tag  # noqa: B018 - read for every request; a broken To is a stateless 400
    except SipParseError as exc:
        # Answered statelessly when it has a Via line, once (retransmissions are new inputs).
        stateless = stateless_response(message, exc.status, exc.reason)
        assert len(answers) == (0 if stateless is None else 1)
        return statuses
    assert isinstance(req, SipRequest)
    finals = {a for _, a in answers if int(a[8:11]) >= 200}
    assert len(finals) == 1, f"one final for {req.method}, got {statuses}"
    final = int(next(iter(finals))[8:11])
    assert final in ALLOWED | ALLOWED_BY_METHOD.get(req.method, set()), (req.method, final)
    provisional = [s for s in statuses if s < 200]
    assert provisional in ([], [100]) and (not provisional or req.method == "INVITE")
    assert statuses.index(final) == len(provisional), "provisionals come first"
    return statuses


def _signature(statuses: list[int]) -> str:
    return "-".join(str(s) for s in dict.fromkeys(statuses)) or "none"


def _save(data: bytes, statuses: list[int]) -> None:
    """DCE_FUZZ_SAVE: keep one example of every new outcome (a failing example is best taken
    shrunk, from the report: it is in the ``note``)."""
    if not _SAVE:
        return
    parsed = "parsed" if _parses(data) else "refused"
    key = f"{_signature(statuses)}/{parsed}/{data[:3]!r}"
    if key in _seen:
        return
    _seen.add(key)
    digest = hashlib.sha1(data).hexdigest()[:10]
    Path(_SAVE).mkdir(parents=True, exist_ok=True)
    (Path(_SAVE) / f"{_signature(statuses)}--{digest}.sip").write_bytes(data)


def _parses(data: bytes) -> bool:
    try:
        parse_message(data)
    except SipParseError:
        return False
    return True


@FUZZ
@given(sipgen.messages)
def test_parser_takes_or_refuses_and_round_trips(data: bytes) -> None:
    note(repr(data))
    check_parser(data)


@FUZZ
@given(sipgen.messages, st.sampled_from([UDP, WS, TCP]))
def test_core_answers_every_request_as_the_rfc_allows(data: bytes, peer: Peer) -> None:
    note(f"{peer.transport}: {data!r}")
    statuses = check_core(data, peer)
    if peer is UDP:
        _save(data, statuses)


@FUZZ
@given(sipgen.requests())
def test_well_formed_requests_parse_the_same_on_every_transport(data: bytes) -> None:
    """A datagram and the same bytes on a stream get the same answers (one message)."""
    framed = _framed(data)
    if len(framed) != 1 or framed[0] != data.lstrip(b"\r\n"):
        return  # not one whole message with its Content-Length: stream framing differs
    udp, tcp, ws = (_signature(check_core(data, peer)) for peer in (UDP, TCP, WS))
    assert udp == tcp == ws  # the same answers (UDP retransmits its finals, streams do not)


CORPUS_FILES = sorted(CORPUS.glob("*.sip"))


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.stem for p in CORPUS_FILES])
def test_corpus(path: Path) -> None:
    data = path.read_bytes()
    check_parser(data)
    statuses = check_core(data, UDP)
    assert _signature(statuses) == path.stem.split("--")[0]
    check_core(data, WS)
    check_core(data, TCP)
