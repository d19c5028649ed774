"""Whole calls through the sans-IO switch core: bytes in, bytes and effects out, fake time."""

from __future__ import annotations

import random

import pytest

from switch.context import CoreConfig
from switch.core import SwitchCore
from switch.effects import (
    CallAnswered,
    CallEnded,
    OpenMedia,
    Rejected,
    RouteCall,
    Routed,
    RouteResult,
    SendDtmf,
)
from switch.media_session import MediaRefused
from switch.message import SipRequest, SipResponse, make_response, parse_message
from switch.outside import AdmitResult
from switch.peer import Peer
from switch.record import HangupSide, Outcome
from switch.timers import TimerConfig

A = Peer("udp", "127.0.0.1", 5080)
B1 = Peer("udp", "127.0.0.1", 5070)
B2 = Peer("udp", "127.0.0.1", 5071)
TARGETS = ["sip:buyer@127.0.0.1:5070", "sip:buyer@127.0.0.1:5071"]
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"
)


class Admit:
    def __init__(self, allow: bool = True) -> None:
        self.allow = allow

    def admit_request(self, req: SipRequest, peer: Peer, now: float) -> AdmitResult:
        if self.allow:
            return AdmitResult(trunk_id="t1")
        return AdmitResult(trunk_id=None, reason="unknown_source")


class Bypass:
    """A media session that passes SDP untouched (as DCE_MEDIA_MODE=bypass does)."""

    def __init__(self, offer: bytes, *, dtmf: bool = False, refuse: bool = False) -> None:
        self.offer = offer
        self.dtmf = dtmf
        self.refuse = refuse  # refuse every buyer answer (488)
        self.answered_calls = 0

    @property
    def b_offer(self) -> bytes:
        return self.offer

    @property
    def dtmf_to_buyer(self) -> bool:
        return self.dtmf

    def new_attempt(self) -> None:
        return None

    def b_answered(self, sdp: bytes) -> bytes:
        if self.refuse:
            raise MediaRefused("no audio stream we can relay", 488)
        return sdp

    def answered(self) -> None:
        self.answered_calls += 1

    def reoffer(self, from_a: bool, sdp: bytes) -> bytes:
        return sdp

    def reanswer(self, from_a: bool, sdp: bytes) -> bytes:
        return sdp


class Harness:
    def __init__(self, *, ring_timeout: float = 30.0, max_calls: int = 100, allow: bool = True):
        self.now = 0.0
        self.core = SwitchCore(
            CoreConfig(
                host="127.0.0.1",
                port=5060,
                ring_timeout=ring_timeout,
                max_calls=max_calls,
                timers=TimerConfig(),
            ),
            Admit(allow),
            rng=random.Random(7),
        )
        self.media: Bypass | None = None
        self.media_kwargs: dict[str, bool] = {}
        self.sent: dict[Peer, list[SipRequest | SipResponse]] = {}
        self.effects: list[object] = []

    def feed(self, peer: Peer, msg: SipRequest | SipResponse | bytes) -> None:
        data = msg if isinstance(msg, bytes) else msg.to_bytes()
        self.core.receive_datagram(data, peer, self.now)
        self.pump()

    def pump(self) -> None:
        for data, peer in self.core.datagrams_to_send():
            self.sent.setdefault(Peer(peer.transport, peer.host, peer.port), []).append(
                parse_message(data)
            )
        while (e := self.core.next_effect()) is not None:
            self.effects.append(e)

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while (t := self.core.get_timer()) is not None and t <= end:
            self.now = max(self.now, t)
            self.core.handle_timer(self.now)
            self.pump()
        self.now = end

    def take(self, peer: Peer) -> list[SipRequest | SipResponse]:
        return self.sent.pop(peer, [])

    def route(self, result: RouteResult, *, open_media: bool = True) -> None:
        """Answer the RouteCall effect and, with targets, the OpenMedia that follows."""
        route = next(e for e in self.effects if isinstance(e, RouteCall))
        self.effects.remove(route)
        assert self.core.routed(route.call_id, result, self.now)
        self.pump()
        if open_media and isinstance(result, Routed) and result.targets:
            self.open_media()

    def open_media(self) -> bool:
        opening = next(e for e in self.effects if isinstance(e, OpenMedia))
        self.effects.remove(opening)
        self.media = Bypass(opening.offer, **self.media_kwargs)
        done = self.core.media_opened(opening.call_id, self.media, self.now)
        self.pump()
        return done

    def cdrs(self) -> list[CallEnded]:
        return [e for e in self.effects if isinstance(e, CallEnded)]


def invite(call_id: str = "a1@x", branch: str = "z9hG4bKa1", mf: int = 70) -> bytes:
    return (
        f"INVITE sip:+18005550100@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5080;branch={branch};rport\r\n"
        f"Max-Forwards: {mf}\r\nFrom: <sip:2125551234@127.0.0.1:5080>;tag=ft\r\n"
        f"To: <sip:+18005550100@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:caller@127.0.0.1:5080>\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n"
    ).encode() + SDP


def in_dialog(method: str, resp_to: SipResponse, seq: int, branch: str, ruri: str) -> bytes:
    """A request from the caller inside the dialog established by ``resp_to``."""
    return (
        f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch={branch}\r\n"
        f"Max-Forwards: 70\r\nFrom: {resp_to.headers.get('from')}\r\nTo: {resp_to.headers.get('to')}\r\n"
        f"Call-ID: {resp_to.call_id}\r\nCSeq: {seq} {method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def answer(h: Harness, peer: Peer, req: SipRequest, status: int, tag: str = "bt") -> SipResponse:
    resp = make_response(
        req,
        status,
        "X",
        to_tag=tag,
        headers=[("contact", f"<sip:buyer@{peer.host}:{peer.port}>")],
        body=SDP if status == 200 else b"",
    )
    if status == 200:
        resp.headers.add("content-type", "application/sdp")
    h.feed(peer, resp)
    return resp


def start_call(h: Harness, targets: list[str] = TARGETS) -> SipRequest:
    h.feed(A, invite())
    assert [m.status for m in h.take(A) if isinstance(m, SipResponse)] == [100]
    h.route(Routed(targets=targets))
    b_inv = h.take(B1)
    assert len(b_inv) == 1 and isinstance(b_inv[0], SipRequest)
    return b_inv[0]


def test_normal_call_caller_hangs_up() -> None:
    h = Harness()
    b_inv = start_call(h)
    assert b_inv.method == "INVITE"
    assert b_inv.call_id != "a1@x"  # a new dialog with the switch's own Call-ID
    assert b_inv.from_tag != "ft"
    assert b_inv.body == SDP
    assert b_inv.headers.get("max-forwards") == "69"
    answer(h, B1, b_inv, 180)
    ringing = h.take(A)
    assert [m.status for m in ringing] == [180]  # type: ignore[union-attr]
    a_tag = ringing[0].to_tag
    ok = answer(h, B1, b_inv, 200)
    a_ok = h.take(A)
    assert [m.status for m in a_ok] == [200]  # type: ignore[union-attr]
    assert a_ok[0].to_tag == a_tag and a_ok[0].body == SDP
    assert "dce@127.0.0.1:5060" in (a_ok[0].headers.get("contact") or "")
    assert h.take(B1) == []  # B's ACK waits for A's ACK (end to end)
    a_resp = a_ok[0]
    assert isinstance(a_resp, SipResponse)
    # The exchange hears who answered at once (it frees the other bidders' cap slots).
    (ans,) = [e for e in h.effects if isinstance(e, CallAnswered)]
    assert ans.target_index == 0
    h.feed(A, in_dialog("ACK", a_resp, 1, "z9hG4bKack", "sip:dce@127.0.0.1:5060"))
    b_ack = h.take(B1)
    assert [m.method for m in b_ack] == ["ACK"]  # type: ignore[union-attr]
    assert b_ack[0].uri == "sip:buyer@127.0.0.1:5070"  # the 2xx Contact (§13.2.2.4)
    assert b_ack[0].to_tag == ok.to_tag
    h.advance(5)
    h.feed(A, in_dialog("BYE", a_resp, 2, "z9hG4bKbye", "sip:dce@127.0.0.1:5060"))
    assert [m.status for m in h.take(A)] == [200]  # type: ignore[union-attr]
    b_bye = h.take(B1)
    assert [m.method for m in b_bye] == ["BYE"]  # type: ignore[union-attr]
    assert isinstance(b_bye[0], SipRequest)
    h.feed(B1, make_response(b_bye[0], 200, "OK"))
    (w,) = h.cdrs()
    assert w.record.outcome is Outcome.ANSWERED
    assert w.record.hangup_side is HangupSide.CALLER
    assert w.record.sip_status == 200
    assert w.record.duration_ms == 5000
    assert w.record.attempts == 1
    assert w.record.b_call_id == b_inv.call_id
    assert w.record.answered is not None
    h.advance(40)
    assert h.core.live_calls == 0
    assert len(h.core.layer) == 0


def test_buyer_hangs_up_first() -> None:
    h = Harness()
    b_inv = start_call(h)
    ok = answer(h, B1, b_inv, 200)
    (a_ok,) = h.take(A)
    assert isinstance(a_ok, SipResponse)
    h.feed(A, in_dialog("ACK", a_ok, 1, "z9hG4bKack", "sip:dce@127.0.0.1:5060"))
    h.take(B1)
    bye = (
        f"BYE sip:dce@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKbb\r\n"
        f"Max-Forwards: 70\r\nFrom: {ok.headers.get('to')}\r\nTo: {b_inv.headers.get('from')}\r\n"
        f"Call-ID: {b_inv.call_id}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    h.feed(B1, bye)
    assert [m.status for m in h.take(B1)] == [200]  # type: ignore[union-attr]
    a_bye = h.take(A)
    assert [m.method for m in a_bye] == ["BYE"]  # type: ignore[union-attr]
    assert a_bye[0].uri == "sip:caller@127.0.0.1:5080"
    assert a_bye[0].to_tag == "ft" and a_bye[0].call_id == "a1@x"
    (w,) = h.cdrs()
    assert w.record.hangup_side is HangupSide.BUYER


def test_busy_fails_over_to_next_target() -> None:
    h = Harness()
    b_inv = start_call(h)
    answer(h, B1, b_inv, 486)
    acks = h.take(B1)
    assert [m.method for m in acks] == ["ACK"]  # type: ignore[union-attr]
    (b2_inv,) = h.take(B2)
    assert isinstance(b2_inv, SipRequest) and b2_inv.method == "INVITE"
    answer(h, B2, b2_inv, 200)
    assert [m.status for m in h.take(A)] == [200]  # type: ignore[union-attr]
    assert h.core.calls[next(iter(h.core.calls))].attempts == 2


def test_all_busy_caller_gets_last_status() -> None:
    h = Harness()
    b_inv = start_call(h)
    answer(h, B1, b_inv, 486)
    (b2_inv,) = [m for m in h.take(B2) if isinstance(m, SipRequest)]
    answer(h, B2, b2_inv, 603)
    assert [m.status for m in h.take(A)] == [603]  # type: ignore[union-attr]
    (w,) = h.cdrs()
    assert w.record.outcome is Outcome.FAILED
    assert w.record.sip_status == 603
    assert w.record.attempts == 2


def test_ring_timeout_cancels_and_tries_next() -> None:
    h = Harness(ring_timeout=3.0)
    b_inv = start_call(h)
    answer(h, B1, b_inv, 180)
    h.take(A)
    h.advance(3.0)
    cancels = [m for m in h.take(B1) if isinstance(m, SipRequest)]
    assert [m.method for m in cancels] == ["CANCEL"]
    assert cancels[0].via.branch == b_inv.via.branch  # §9.1: same branch as the INVITE
    (b2_inv,) = [m for m in h.take(B2) if isinstance(m, SipRequest)]
    h.feed(B1, make_response(cancels[0], 200, "OK"))
    answer(h, B1, b_inv, 487)
    assert h.take(A) == []  # the caller hears nothing of the abandoned attempt
    answer(h, B2, b2_inv, 180)
    assert [m.status for m in h.take(A)] == [180]  # type: ignore[union-attr]
    h.advance(3.0)
    (last,) = h.take(A)
    assert isinstance(last, SipResponse) and last.status == 480
    assert 'text="ring_timeout"' in (last.headers.get("reason") or "")
    (w,) = h.cdrs()
    assert w.record.outcome is Outcome.NO_ANSWER and w.record.rule == "ring_timeout"
    assert b2_inv.method == "INVITE"


def test_a_dead_endpoint_fails_over_in_two_seconds_not_the_ring_timeout() -> None:
    h = Harness(ring_timeout=30.0)
    start_call(h)
    h.advance(1.9)
    assert h.take(B2) == []
    assert [m.method for m in h.take(B1)] == ["INVITE", "INVITE"]  # type: ignore[union-attr]
    h.advance(0.2)  # 2 s without even a 100 Trying: the next target
    (b2_inv,) = [m for m in h.take(B2) if isinstance(m, SipRequest)]
    assert b2_inv.method == "INVITE"
    h.feed(B2, make_response(b2_inv, 100, "Trying"))
    h.advance(10.0)  # it answered 100: alive, it gets the whole ring timeout
    assert [m for m in h.take(A) if isinstance(m, SipResponse) and m.status >= 200] == []
    answer(h, B2, b2_inv, 200)
    assert [m.status for m in h.take(A)] == [200]  # type: ignore[union-attr]


def test_no_endpoint_responding_is_480_no_response() -> None:
    h = Harness()
    start_call(h)
    h.advance(4.1)
    finals = [m for m in h.take(A) if isinstance(m, SipResponse) and m.status >= 200]
    assert finals and finals[0].status == 480
    assert 'text="no_response"' in (finals[0].headers.get("reason") or "")
    (w,) = h.cdrs()
    assert w.record.rule == "no_response" and w.record.attempts == 2


def test_cancel_before_answer() -> None:
    h = Harness()
    b_inv = start_call(h)
    answer(h, B1, b_inv, 180)
    h.take(A)
    cancel = (
        invite()
        .decode()
        .replace("INVITE sip:", "CANCEL sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")
        .split("\r\n\r\n")[0]
    )
    cancel = cancel.replace(f"Content-Length: {len(SDP)}", "Content-Length: 0") + "\r\n\r\n"
    h.feed(A, cancel.encode())
    statuses = sorted(m.status for m in h.take(A))  # type: ignore[union-attr]
    assert statuses == [200, 487]
    (b_cancel,) = h.take(B1)
    assert isinstance(b_cancel, SipRequest) and b_cancel.method == "CANCEL"
    (w,) = h.cdrs()
    assert w.record.outcome is Outcome.CANCELLED
    assert w.record.hangup_side is HangupSide.CALLER


def test_late_2xx_from_abandoned_buyer_is_acked_and_hung_up() -> None:
    h = Harness(ring_timeout=2.0)
    b_inv = start_call(h)
    h.advance(2.0)  # no provisional: the CANCEL waits (§9.1)
    assert [m for m in h.take(B1) if isinstance(m, SipRequest) and m.method == "CANCEL"] == []
    h.take(B2)
    answer(h, B1, b_inv, 200)
    methods = [m.method for m in h.take(B1) if isinstance(m, SipRequest)]
    assert methods == ["ACK", "BYE"]


def test_rejection_carries_reason() -> None:
    h = Harness()
    h.feed(A, invite())
    h.take(A)
    h.route(Rejected(status=403, reason="Forbidden", rule="dnc"))
    (resp,) = h.take(A)
    assert isinstance(resp, SipResponse) and resp.status == 403
    assert 'text="dnc"' in (resp.headers.get("reason") or "")
    (w,) = h.cdrs()
    assert w.record.outcome is Outcome.REJECTED and w.record.rule == "dnc"


def test_no_targets_is_480_no_buyer() -> None:
    h = Harness()
    h.feed(A, invite())
    h.take(A)
    h.route(Routed(targets=[]))
    assert [m.status for m in h.take(A)] == [480]  # type: ignore[union-attr]
    (w,) = h.cdrs()
    assert w.record.outcome is Outcome.REJECTED and w.record.rule == "no_buyer"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (invite(mf=0), 483),
        (
            b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKo\r\n"
            b"From: <sip:a@b>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: o1\r\nCSeq: 1 OPTIONS\r\n"
            b"Content-Length: 0\r\n\r\n",
            200,
        ),
        (
            b"BYE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKb\r\n"
            b"From: <sip:a@b>;tag=1\r\nTo: <sip:x@127.0.0.1>;tag=nope\r\nCall-ID: nope\r\n"
            b"CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            481,
        ),
        (
            b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKm\r\n"
            b"From: <sip:a@b>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCSeq: 1 INVITE\r\n"
            b"Content-Length: 0\r\n\r\n",
            400,
        ),
    ],
    ids=["max-forwards-0", "options", "bye-no-dialog", "no-call-id"],
)
def test_simple_answers(raw: bytes, status: int) -> None:
    h = Harness()
    h.feed(A, raw)
    out = h.take(A)
    assert out and isinstance(out[-1], SipResponse) and out[-1].status == status


def test_malformed_400_names_the_fault() -> None:
    h = Harness()
    h.feed(A, invite().replace(b"Call-ID: a1@x\r\n", b""))
    (resp,) = h.take(A)
    assert isinstance(resp, SipResponse) and resp.status == 400
    assert "Call-ID" in resp.reason
    h.feed(A, b"\x00\xff garbage")
    assert h.take(A) == []
    assert h.core.stats["malformed_requests"] == 2


def test_invite_with_an_unterminated_to_is_400_and_costs_no_other_call() -> None:
    # Found by the core fuzzer: the To is read before the transaction layer checks it.
    h = Harness()
    h.feed(A, invite().replace(b"To: <sip:", b"To: <sip:broken;tag=0\r\nX-Was: <sip:", 1))
    (resp,) = h.take(A)
    assert isinstance(resp, SipResponse) and resp.status == 400
    assert "<" in resp.reason
    h.feed(A, invite(call_id="a2@x", branch="z9hG4bKa2"))
    assert [r.status for r in h.take(A) if isinstance(r, SipResponse)] == [100]


def test_unknown_source_403_without_cdr() -> None:
    h = Harness(allow=False)
    h.feed(A, invite())
    (resp,) = h.take(A)
    assert isinstance(resp, SipResponse) and resp.status == 403
    assert h.cdrs() == [] and h.effects == []


def test_overload_503_retry_after() -> None:
    h = Harness(max_calls=1)
    h.feed(A, invite())
    h.take(A)
    h.feed(A, invite(call_id="a2@x", branch="z9hG4bKa2"))
    (resp,) = h.take(A)
    assert isinstance(resp, SipResponse) and resp.status == 503
    assert resp.headers.get("retry-after") == "5"
    assert h.cdrs()[0].record.outcome is Outcome.OVERLOAD


def test_retransmitted_invite_is_absorbed() -> None:
    h = Harness()
    h.feed(A, invite())
    h.feed(A, invite())
    assert len([e for e in h.effects if isinstance(e, RouteCall)]) == 1
    assert [m.status for m in h.take(A)] == [100, 100]  # type: ignore[union-attr]


def test_drain_byes_answered_calls() -> None:
    h = Harness()
    b_inv = start_call(h)
    answer(h, B1, b_inv, 200)
    (a_ok,) = h.take(A)
    assert isinstance(a_ok, SipResponse)
    h.feed(A, in_dialog("ACK", a_ok, 1, "z9hG4bKack", "sip:dce@127.0.0.1:5060"))
    h.take(B1)
    h.core.drain(h.now)
    h.pump()
    assert [m.method for m in h.take(A)] == ["BYE"]  # type: ignore[union-attr]
    assert [m.method for m in h.take(B1)] == ["BYE"]  # type: ignore[union-attr]
    assert h.cdrs()[0].record.hangup_side is HangupSide.SYSTEM


def test_closed_connection_ends_its_calls() -> None:
    ws = Peer("ws", "127.0.0.1", 40000)  # how the harness files what it sent
    h = Harness()
    h.feed(ws._replace(conn=7), invite().replace(b"SIP/2.0/UDP", b"SIP/2.0/WS"))
    assert [m.status for m in h.take(ws)] == [100]  # type: ignore[union-attr]
    route = next(e for e in h.effects if isinstance(e, RouteCall))
    assert route.source == "webrtc"
    h.route(Routed(targets=TARGETS))
    (b_inv,) = h.take(B1)
    assert isinstance(b_inv, SipRequest)
    ok = answer(h, B1, b_inv, 200)
    h.take(ws)
    h.core.connection_closed(Peer("ws", "127.0.0.1", 40000, conn=7), h.now)
    h.pump()
    b_out = [m.method for m in h.take(B1) if isinstance(m, SipRequest)]
    assert b_out == ["ACK", "BYE"]
    assert h.take(ws) == []
    (w,) = h.cdrs()
    assert w.record.hangup_side is HangupSide.CALLER and w.record.source == "webrtc"
    assert ok.status == 200


def assert_clean(h: Harness) -> None:
    """After every timer has run, nothing about any call is left anywhere in the core."""
    h.advance(200.0)
    core = h.core
    assert core.calls == {}
    # calls, CANCEL map, attempts, BYEs, dialogs, relays, probes
    assert list(core.tables()) == [0] * 7
    assert core.get_timer() is None
    assert len(core.layer) == 0


def _busy_then_answer(h: Harness) -> None:
    b_inv = start_call(h)
    answer(h, B1, b_inv, 486)
    (b2,) = [m for m in h.take(B2) if isinstance(m, SipRequest)]
    ok = answer(h, B2, b2, 200)
    (a_ok,) = [m for m in h.take(A) if isinstance(m, SipResponse)]
    h.feed(A, in_dialog("ACK", a_ok, 1, "z9hG4bKack", "sip:dce@127.0.0.1:5060"))
    h.feed(A, in_dialog("BYE", a_ok, 2, "z9hG4bKbye", "sip:dce@127.0.0.1:5060"))
    bye = next(m for m in h.take(B2) if isinstance(m, SipRequest) and m.method == "BYE")
    h.feed(B2, make_response(bye, 200, "OK"))
    assert ok.status == 200


def _ring_timeout_dead_buyer(h: Harness) -> None:
    # The first buyer rings, then never answers anything again (not even our CANCEL).
    b_inv = start_call(h)
    answer(h, B1, b_inv, 180, tag="early")
    h.advance(3.0)
    (b2,) = [m for m in h.take(B2) if isinstance(m, SipRequest)]
    answer(h, B2, b2, 486)


def _cancelled(h: Harness) -> None:
    b_inv = start_call(h)
    answer(h, B1, b_inv, 183, tag="early")
    h.feed(A, invite().replace(b"INVITE sip:", b"CANCEL sip:", 1).replace(
        b"CSeq: 1 INVITE", b"CSeq: 1 CANCEL"))
    cancel = next(m for m in h.take(B1) if isinstance(m, SipRequest))
    h.feed(B1, make_response(cancel, 200, "OK"))
    answer(h, B1, b_inv, 487, tag="early")


def _no_ack_from_caller(h: Harness) -> None:
    b_inv = start_call(h)
    answer(h, B1, b_inv, 200)
    h.advance(40.0)  # Timer L: the caller never ACKed, both legs get BYE
    methods = [m.method for m in h.take(B1) if isinstance(m, SipRequest)]
    # ACK, BYE, then Timer E retransmissions of that BYE (this buyer never answers it).
    assert methods[:2] == ["ACK", "BYE"] and set(methods[1:]) == {"BYE"}
    (w,) = h.cdrs()
    assert w.record.hangup_side is HangupSide.SYSTEM
    # Never connected on the caller's side: a failure with no duration, not an answered call.
    assert w.record.outcome is Outcome.FAILED and w.record.rule == "no_ack"
    assert not w.record.confirmed and w.record.duration_ms == 0


@pytest.mark.parametrize(
    "scenario",
    [_busy_then_answer, _ring_timeout_dead_buyer, _cancelled, _no_ack_from_caller],
    ids=["busy-then-answer", "ring-timeout-dead-buyer", "cancelled", "no-ack-from-caller"],
)
def test_no_state_is_left_behind(scenario: object) -> None:
    h = Harness(ring_timeout=3.0)
    scenario(h)  # type: ignore[operator]
    assert len(h.cdrs()) == 1
    assert_clean(h)


def test_response_with_a_header_broken_beyond_the_top_via_is_dropped() -> None:
    h = Harness()
    b_inv = start_call(h)
    bad = make_response(b_inv, 180, "Ringing", to_tag="t1").to_bytes().replace(
        b"To: <sip:buyer@127.0.0.1:5070>;tag=t1", b"To: <sip:buyer@127.0.0.1:5070;tag=t1")
    h.feed(B1, bad)
    assert h.take(A) == []  # nothing relayed
    assert h.core.stats["malformed_responses"] == 1
    answer(h, B1, b_inv, 200)  # the call still completes with a sound response
    assert [m.status for m in h.take(A)] == [200]  # type: ignore[union-attr]


def _answered_call(h: Harness) -> SipResponse:
    b_inv = start_call(h)
    answer(h, B1, b_inv, 200)
    (a_ok,) = [m for m in h.take(A) if isinstance(m, SipResponse)]
    h.feed(A, in_dialog("ACK", a_ok, 1, "z9hG4bKack", "sip:dce@127.0.0.1:5060"))
    h.take(B1)
    return a_ok


def _info(a_ok: SipResponse, seq: int, body: bytes) -> bytes:
    head = in_dialog("INFO", a_ok, seq, f"z9hG4bKinfo{seq}", "sip:dce@127.0.0.1:5060")
    head = head.replace(b"Content-Length: 0\r\n\r\n", b"")
    return head + (
        f"Content-Type: application/dtmf-relay\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def test_caller_info_dtmf_becomes_an_effect_when_media_can_send_it() -> None:
    h = Harness()
    h.media_kwargs = {"dtmf": True}
    a_ok = _answered_call(h)
    h.feed(A, _info(a_ok, 2, b"Signal=5\r\nDuration=200\r\n"))
    assert [m.status for m in h.take(A)] == [200]  # type: ignore[union-attr]
    assert h.take(B1) == []  # not relayed: the buyer gets RFC 4733 in its media
    (dtmf,) = [e for e in h.effects if isinstance(e, SendDtmf)]
    assert (dtmf.digit, dtmf.duration_ms) == ("5", 200)


def test_caller_info_is_relayed_when_media_cannot_send_dtmf() -> None:
    h = Harness()
    a_ok = _answered_call(h)
    h.feed(A, _info(a_ok, 2, b"Signal=5\r\nDuration=200\r\n"))
    (relayed,) = h.take(B1)
    assert isinstance(relayed, SipRequest) and relayed.method == "INFO"
    assert [e for e in h.effects if isinstance(e, SendDtmf)] == []


def test_media_refused_before_any_attempt() -> None:
    h = Harness()
    h.feed(A, invite())
    h.take(A)
    h.route(Routed(targets=TARGETS), open_media=False)
    opening = next(e for e in h.effects if isinstance(e, OpenMedia))
    assert opening.offer.startswith(b"v=0") and not opening.webrtc
    h.core.media_failed(opening.call_id, 488, "sdp", h.now)
    h.pump()
    (resp,) = h.take(A)
    assert isinstance(resp, SipResponse) and resp.status == 488
    assert 'text="sdp"' in (resp.headers.get("reason") or "")
    assert h.take(B1) == []  # no buyer was called
    (w,) = h.cdrs()
    assert w.record.outcome is Outcome.FAILED and w.record.attempts == 0
    assert_clean(h)


def test_caller_cancels_while_media_opens() -> None:
    h = Harness()
    h.feed(A, invite())
    h.take(A)
    h.route(Routed(targets=TARGETS), open_media=False)
    cancel = invite().replace(b"INVITE sip:", b"CANCEL sip:", 1).replace(
        b"CSeq: 1 INVITE", b"CSeq: 1 CANCEL")
    h.feed(A, cancel)
    assert sorted(m.status for m in h.take(A)) == [200, 487]  # type: ignore[union-attr]
    assert h.open_media() is False  # the glue closes the session it opened
    assert h.take(B1) == []
    assert h.cdrs()[0].record.outcome is Outcome.CANCELLED


def test_buyer_sdp_refused_fails_over_and_logs_the_call_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    h.media_kwargs = {"refuse": True}
    b_inv = start_call(h)
    with caplog.at_level("INFO", logger="switch.call"):
        answer(h, B1, b_inv, 200)
    assert [m.method for m in h.take(B1) if isinstance(m, SipRequest)] == ["ACK", "BYE"]
    (b2_inv,) = [m for m in h.take(B2) if isinstance(m, SipRequest)]
    assert b2_inv.method == "INVITE"
    (line,) = [r for r in caplog.records if r.getMessage() == "buyer SDP refused"]
    (call_id,) = h.core.calls
    assert getattr(line, "call_id", None) == call_id
    assert getattr(line, "reason", "").startswith("no audio")


def test_routing_that_never_answers_fails_the_call() -> None:
    h = Harness()
    h.feed(A, invite())
    h.take(A)
    h.advance(5.0)  # CoreConfig.route_timeout
    (resp,) = h.take(A)
    assert isinstance(resp, SipResponse) and resp.status == 500
    assert 'text="routing_timeout"' in (resp.headers.get("reason") or "")
    route = next(e for e in h.effects if isinstance(e, RouteCall))
    assert h.core.routed(route.call_id, Routed(targets=TARGETS), h.now) is False


def test_every_call_state_has_its_transitions_listed() -> None:
    from switch.call import _NEXT, CallState

    assert set(_NEXT) == set(CallState)
    # ENDED is final; every other state can reach it directly.
    assert _NEXT[CallState.ENDED] == frozenset()
    assert all(CallState.ENDED in nxt for s, nxt in _NEXT.items() if s is not CallState.ENDED)


def test_trunk_limit_named_by_the_admitter_is_503_with_its_rule() -> None:
    class Limited:
        def admit_request(self, req: SipRequest, peer: Peer, now: float) -> AdmitResult:
            return AdmitResult(trunk_id="t1", limit="trunk_cps")

    h = Harness()
    h.core = SwitchCore(CoreConfig(host="127.0.0.1", port=5060), Limited(), rng=random.Random(1))
    h.feed(A, invite())
    (resp,) = h.take(A)
    assert isinstance(resp, SipResponse) and resp.status == 503
    assert resp.headers.get("retry-after") == "5"
    assert 'text="trunk_cps"' in (resp.headers.get("reason") or "")
    (w,) = h.cdrs()
    assert w.record.outcome is Outcome.OVERLOAD and w.record.rule == "trunk_cps"
    assert w.record.trunk_id == "t1"
    assert [e for e in h.effects if isinstance(e, RouteCall)] == []


def test_answered_call_reports_its_dialogs_and_confirmation() -> None:
    from switch.effects import CallConfirmed

    h = Harness()
    b_inv = start_call(h)
    ok = answer(h, B1, b_inv, 200)
    (ans,) = [e for e in h.effects if isinstance(e, CallAnswered)]
    assert ans.b_leg.call_id == b_inv.call_id and ans.b_leg.remote_tag == ok.to_tag
    assert (ans.b_leg.host, ans.b_leg.port) == ("127.0.0.1", 5070)
    assert ans.a_leg.call_id == "a1@x" and ans.a_leg.remote_tag == "ft"
    assert ans.a_leg.remote_target == "sip:caller@127.0.0.1:5080"
    assert [e for e in h.effects if isinstance(e, CallConfirmed)] == []
    (a_ok,) = [m for m in h.take(A) if isinstance(m, SipResponse)]
    h.feed(A, in_dialog("ACK", a_ok, 1, "z9hG4bKack", "sip:dce@127.0.0.1:5060"))
    assert len([e for e in h.effects if isinstance(e, CallConfirmed)]) == 1


def test_a_bye_after_a_lost_ack_still_counts_the_call_as_connected() -> None:
    h = Harness()
    b_inv = start_call(h)
    answer(h, B1, b_inv, 200)
    (a_ok,) = [m for m in h.take(A) if isinstance(m, SipResponse)]
    h.advance(7.0)  # the caller's ACK is lost; it talks, then hangs up
    h.feed(A, in_dialog("BYE", a_ok, 2, "z9hG4bKbye", "sip:dce@127.0.0.1:5060"))
    (w,) = h.cdrs()
    assert w.record.outcome is Outcome.ANSWERED and w.record.confirmed
    assert w.record.duration_ms == 7000


def test_shedding_refuses_new_invites_statelessly_but_never_admitted_ones() -> None:
    h = Harness()
    h.feed(A, invite())  # admitted before the overload
    assert [m.status for m in h.take(A)] == [100]  # type: ignore[union-attr]
    h.core.set_shedding(1.0)
    h.feed(A, invite())  # its retransmission is absorbed as usual
    assert [m.status for m in h.take(A)] == [100]  # type: ignore[union-attr]
    h.feed(A, invite(call_id="a2@x", branch="z9hG4bKa2"))
    (resp,) = h.take(A)
    assert isinstance(resp, SipResponse) and resp.status == 503
    assert resp.headers.get("retry-after") == "5"
    assert 'text="overload"' in (resp.headers.get("reason") or "")
    assert h.core.stats["calls_shed"] == 1
    assert len(h.core.layer) == 1  # no transaction for the shed one; the admitted one is kept
    assert len([e for e in h.effects if isinstance(e, RouteCall)]) == 1
    h.core.set_shedding(0.5)
    for i in range(10):
        h.feed(A, invite(call_id=f"b{i}@x", branch=f"z9hG4bKb{i}"))
    statuses = [m.status for m in h.take(A)]  # type: ignore[union-attr]
    assert statuses.count(503) == 5 and statuses.count(100) == 5  # exactly the share


def test_shed_invites_and_their_retransmissions_and_acks_cost_no_parse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import switch.core

    h = Harness()
    h.feed(A, invite())  # admitted before the overload
    h.take(A)
    h.core.set_shedding(1.0)
    parsed: list[bytes] = []
    real_parse = switch.core.parse_message

    def counting(data: bytes) -> SipRequest | SipResponse:
        parsed.append(data)
        return real_parse(data)

    monkeypatch.setattr(switch.core, "parse_message", counting)
    shed = invite(call_id="s1@x", branch="z9hG4bKs1")
    h.feed(A, shed)
    h.feed(A, shed)  # the caller retransmits: the same answer, the same To tag
    first, again = h.take(A)
    assert isinstance(first, SipResponse) and isinstance(again, SipResponse)
    assert first.status == again.status == 503 and first.to_tag == again.to_tag
    assert first.to_tag is not None and len(first.to_tag) == 16
    ack = (
        f"ACK sip:+18005550100@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKs1\r\nMax-Forwards: 70\r\n"
        f"From: <sip:2125551234@127.0.0.1:5080>;tag=ft\r\n"
        f"To: {first.headers.get('to')}\r\nCall-ID: s1@x\r\nCSeq: 1 ACK\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()
    h.feed(A, ack)
    assert parsed == []  # the 503s and the ACK: no message parsed
    assert h.take(A) == []
    h.feed(A, invite())  # the admitted call's retransmission still reaches its transaction
    assert [m.status for m in h.take(A)] == [100]  # type: ignore[union-attr]
    assert len(parsed) == 1
    assert h.core.stats["calls_shed"] == 2 and len(h.core.layer) == 1


def test_options_probe_reports_the_answer_or_its_absence() -> None:
    from switch.effects import ProbeAnswered

    h = Harness()
    assert h.core.send_options("sip:buyer@127.0.0.1:5070", h.now)
    h.pump()
    (probe,) = h.take(B1)
    assert isinstance(probe, SipRequest) and probe.method == "OPTIONS"
    h.feed(B1, make_response(probe, 200, "OK"))
    (ans,) = [e for e in h.effects if isinstance(e, ProbeAnswered)]
    assert (ans.uri, ans.status) == ("sip:buyer@127.0.0.1:5070", 200)
    h.effects.clear()
    assert h.core.send_options("sip:dead@127.0.0.1:5071", h.now)
    h.pump()
    h.advance(33.0)  # Timer F: 64*T1
    (gone,) = [e for e in h.effects if isinstance(e, ProbeAnswered)]
    assert gone.uri == "sip:dead@127.0.0.1:5071" and gone.status is None
    assert not h.core.send_options("mailto:x@y", h.now)
    assert_clean(h)


def test_record_route_of_the_invite_is_copied_into_18x_and_2xx() -> None:
    """RFC 3261 §12.1.1: behind a record-routing proxy (Kamailio, an SBC) the caller's ACK and
    BYE only come back if our responses carry the Record-Route set."""
    h = Harness()
    rr = b"Record-Route: <sip:10.0.0.1;lr>, <sip:10.0.0.2;lr;ftag=x>\r\n"
    h.feed(A, invite().replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\n" + rr))
    h.take(A)
    h.route(Routed(targets=TARGETS))
    (b_inv,) = h.take(B1)
    assert isinstance(b_inv, SipRequest)
    assert b_inv.headers.get_list("record-route") == []  # our own leg: we are the UAC
    answer(h, B1, b_inv, 180)
    answer(h, B1, b_inv, 200)
    for resp in h.take(A):
        assert isinstance(resp, SipResponse)
        assert resp.headers.get_list("record-route") == [
            "<sip:10.0.0.1;lr>", "<sip:10.0.0.2;lr;ftag=x>"], resp.status
    # Our BYE to the caller follows that route set: first hop in Route, Request-URI its Contact.
    h.core.drain(h.now)
    h.pump()
    (bye,) = [m for m in h.take(Peer("udp", "10.0.0.1", 5060)) if isinstance(m, SipRequest)]
    assert bye.headers.get_list("route") == ["<sip:10.0.0.1;lr>", "<sip:10.0.0.2;lr;ftag=x>"]
    assert bye.uri == "sip:caller@127.0.0.1:5080"


def test_a_second_copy_of_an_invite_by_another_path_is_482_and_one_call() -> None:
    # RFC 3261 §8.2.2.2: same Call-ID, From tag and CSeq, another branch (a fork upstream).
    h = Harness()
    h.feed(A, invite(branch="z9hG4bKpath1"))
    assert [m.status for m in h.take(A)] == [100]  # type: ignore[union-attr]
    h.feed(A, invite(branch="z9hG4bKpath2"))
    (resp,) = h.take(A)
    assert isinstance(resp, SipResponse) and resp.status == 482
    assert resp.via.branch == "z9hG4bKpath2"  # answered on the copy's own transaction
    assert h.core.stats["merged_482"] == 1
    h.route(Routed(targets=[]))
    assert [m.status for m in h.take(A)] == [480]  # type: ignore[union-attr]
    h.advance(40)  # the first call and its transactions are over (finals unACKed: Timer H)
    h.take(A)  # their retransmissions
    assert len(h.cdrs()) == 1
    # Once that call is gone the same identifiers start a new call (a caller reusing them).
    h.feed(A, invite(branch="z9hG4bKpath3"))
    assert [m.status for m in h.take(A)] == [100]  # type: ignore[union-attr]
