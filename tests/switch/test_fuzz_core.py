"""Stateful fuzzing of the whole switch core (hypothesis RuleBasedStateMachine).

A caller (UDP, and one on TCP), two buyer endpoints and a peer that only sends junk talk to
one :class:`switch.core.SwitchCore` on virtual time, in random order: new INVITEs (some with
Require, odd bodies, no offer), routing and media results, buyer provisionals and finals
(forks, retransmissions, late answers), CANCEL, ACK, BYE, re-INVITE, INFO, PRACK, unknown
methods from either side, answers (or none) to what the switch sends, responses that match
nothing, OPTIONS probes, junk from sipgen.py, and time going by.

Checked after every step: nothing raises; every datagram the core sends parses; a response
reaches a caller or a buyer only for a request that peer sent (a response matching no
transaction is never forwarded; the only answer to a stray 2xx is our own ACK again); each
request gets at most one final (resent the same), with a To tag, and to an INVITE the
caller sees a single To tag; each call reports one CDR. At the end every call is hung up, all
timers run, and then: every request the callers sent got a final the RFC allows (but for a
relayed non-INVITE the other side never answered, RFC 4320), and no state is left.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from switch.call import CallState
from switch.context import CoreConfig
from switch.core import SwitchCore
from switch.effects import CallEnded, OpenMedia, Rejected, RouteCall, Routed
from switch.message import SipRequest, SipResponse, make_response, parse_message
from switch.peer import Peer
from switch.record import Outcome
from switch.timers import TimerConfig
from tests.switch import sipgen
from tests.switch.sipcheck import AdmitAll
from tests.switch.test_core import SDP, Bypass

A = Peer("udp", "127.0.0.1", 5080)
A_TCP = Peer("tcp", "127.0.0.1", 5081, conn=3)
B1 = Peer("udp", "127.0.0.1", 5070)
B2 = Peer("udp", "127.0.0.1", 5071)
B3 = Peer("udp", "127.0.0.1", 5072)  # probed only
JUNK = Peer("udp", "192.0.2.66", 5099)
TARGETS = ["sip:buyer@127.0.0.1:5070", "sip:buyer@127.0.0.1:5071"]
BUYER_STATUSES = [100, 180, 183, 183, 200, 200, 302, 404, 408, 480, 486, 487, 488, 500, 503, 603]
SETTINGS = settings(
    max_examples=int(os.environ.get("DCE_FUZZ_EXAMPLES", "50")),
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Finals a caller may see for a request, besides whatever a buyer answered a relayed one.
SWITCH_FINALS = {
    "INVITE": {200, 400, 403, 408, 415, 420, 480, 481, 483, 487, 488, 491, 500, 503},
    "CANCEL": {200, 481},
    "BYE": {200, 420, 481, 500},
    "PRACK": {405},
}
DEFAULT_FINALS = {400, 405, 420, 481, 491, 500, 501}


@dataclass
class Sent:
    """A request a caller or buyer sent, and what came back."""

    peer: Peer
    method: str
    branch: str
    cseq: int
    data: bytes
    at: float  # when it was first sent
    relayed: bool = False  # in-dialog, may go to the other side (RFC 4320: maybe no final)
    finals: list[bytes] = field(default_factory=list)
    final_at: float | None = None
    provisionals: list[int] = field(default_factory=list)
    early_tag: str | None = None  # the To tag of a provisional (an early dialog)
    acked: bool = False  # an INVITE whose non-2xx final was ACKed (then Timer I, T4)

    def may_resend(self, now: float) -> bool:
        """A retransmission, not a new request: over UDP, while its transaction surely lives
        (a final less than 32 s ago, Timers H, J, L; not after the ACK of a non-2xx)."""
        if self.peer.transport != "udp":
            return False
        return self.final_at is None or (now - self.final_at < 30.0 and not self.acked)


@dataclass
class CallerDialog:
    """One caller INVITE and the dialog it makes."""

    n: int
    peer: Peer
    invite: Sent
    to_tag: str | None = None
    answered: bytes | None = None  # the 200, for the ACK
    seq: int = 1
    acked: bool = False


@dataclass
class BuyerLeg:
    """One INVITE the switch sent a buyer."""

    peer: Peer
    req: SipRequest
    tag: str
    answered: list[SipResponse] = field(default_factory=list)
    seq: int = 0  # the buyer's own CSeq in this dialog


def _a_request(
    method: str, n: int, seq: int, branch: str, *, to_tag: str | None = None,
    body: bytes = b"", extra: str = "", uri: str = "sip:+18005550100@127.0.0.1:5060",
    transport: str = "UDP",
) -> bytes:
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    to = "<sip:+18005550100@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} {uri} SIP/2.0\r\nVia: SIP/2.0/{transport} 127.0.0.1:5080;branch={branch}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:2125551234@127.0.0.1:5080>;tag=f{n}\r\nTo: {to}\r\n"
        f"Call-ID: c{n}@caller\r\nCSeq: {seq} {method}\r\n"
        f"Contact: <sip:caller@127.0.0.1:5080>\r\n{extra}{ctype}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _parse(data: bytes) -> SipRequest | SipResponse:
    msg = parse_message(data)
    return msg


class CoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = SwitchCore(
            CoreConfig(host="127.0.0.1", port=5060, ring_timeout=20.0, timers=TimerConfig()),
            AdmitAll(),
            rng=random.Random(11),
        )
        self.now = 0.0
        self.n = 0
        # (peer, branch, CSeq number, method) -> request; CANCEL shares its INVITE's branch.
        self.sent: dict[tuple[Peer, str, int, str], Sent] = {}
        self.calls: list[CallerDialog] = []
        self.legs: dict[str, BuyerLeg] = {}  # B INVITE branch -> leg
        self.to_a: list[tuple[Peer, SipRequest]] = []  # requests the switch sent callers
        self.to_b: list[tuple[Peer, SipRequest]] = []  # ... and buyers (not INVITE/ACK)
        self.routes: list[RouteCall] = []
        self.route_ids: set[str] = set()
        self.buyer_statuses: set[int] = set()
        self.openings: list[OpenMedia] = []
        self.routed: set[str] = set()
        self.ended: list[str] = []
        self.last_stray = False

    # --- plumbing -----------------------------------------------------------------------------

    def _send(self, peer: Peer, data: bytes, *, record: bool = True, relayed: bool = False) -> None:
        if record:
            msg = parse_message(data)
            assert isinstance(msg, SipRequest)
            if msg.method != "ACK":
                key = (peer, msg.via.branch or "", msg.cseq[0], msg.method)
                self.sent.setdefault(
                    key, Sent(peer, msg.method, key[1], msg.cseq[0], data, self.now, relayed)
                )
        self.core.receive_datagram(data, peer, self.now)
        self._pump()

    def _pump(self) -> None:
        for data, peer in self.core.datagrams_to_send():
            if peer == JUNK:
                continue  # stateless answers to junk: checked by test_fuzz_parser
            msg = _parse(data)
            if isinstance(msg, SipResponse):
                self._response_out(peer, msg, data)
            else:
                self._request_out(peer, msg)
        while (effect := self.core.next_effect()) is not None:
            if isinstance(effect, RouteCall):
                self.routes.append(effect)
                self.route_ids.add(effect.call_id)
            elif isinstance(effect, OpenMedia):
                self.openings.append(effect)
            elif isinstance(effect, CallEnded):
                assert effect.record.call_id not in self.ended, "two CDRs for one call"
                self.ended.append(effect.record.call_id)

    def _response_out(self, peer: Peer, resp: SipResponse, data: bytes) -> None:
        key = (peer, resp.via.branch or "", resp.cseq[0], resp.cseq[1])
        req = self.sent.get(key)
        assert req is not None, f"a response to nothing {peer} sent: {data[:60]!r}"
        assert resp.cseq[1] == req.method
        assert not self.last_stray, "a stray response was forwarded"
        if resp.status < 200:
            assert resp.status != 100 or req.method == "INVITE"
            req.provisionals.append(resp.status)
            req.early_tag = req.early_tag or resp.to_tag
            return
        assert resp.to_tag, "a final needs a To tag"
        if req.finals:
            assert data == req.finals[0], "two different finals for one request"
        else:
            req.final_at = self.now
        req.finals.append(data)

    def _request_out(self, peer: Peer, req: SipRequest) -> None:
        if peer in (A, A_TCP):
            assert not self.last_stray or req.method == "ACK"
            if req.method != "ACK":
                self.to_a.append((peer, req))
            return
        assert peer in (B1, B2, B3), peer
        if self.last_stray:
            assert req.method == "ACK", "a stray response made the switch send a request"
        if req.method == "INVITE" and req.to_tag is None:
            branch = req.via.branch or ""
            if branch not in self.legs:
                self.legs[branch] = BuyerLeg(peer, req, f"b{len(self.legs)}")
        elif req.method != "ACK":
            self.to_b.append((peer, req))

    def _pick(self, items: list, i: int):  # type: ignore[no-untyped-def]
        return items[i % len(items)]

    # --- the caller ---------------------------------------------------------------------------

    @rule(
        tcp=st.booleans(),
        kind=st.sampled_from(["sdp", "sdp", "sdp", "no-offer", "require", "text", "mf0"]),
    )
    def caller_invites(self, tcp: bool, kind: str) -> None:
        self.n += 1
        peer = A_TCP if tcp else A
        body = b"" if kind == "no-offer" else SDP if kind != "text" else b"hello"
        extra = {"require": "Require: 100rel\r\n", "mf0": "Max-Forwards: 0\r\n"}.get(kind, "")
        data = _a_request(
            "INVITE", self.n, 1, f"z9hG4bKinv{self.n}", body=body, extra=extra,
            transport="TCP" if tcp else "UDP",
        )
        if kind == "text":
            data = data.replace(b"application/sdp", b"text/plain")
        if kind == "mf0":
            data = data.replace(b"Max-Forwards: 70\r\n", b"", 1)
        self._send(peer, data)
        sent = self.sent[(peer, f"z9hG4bKinv{self.n}", 1, "INVITE")]
        self.calls.append(CallerDialog(self.n, peer, sent))

    @precondition(lambda self: self.calls)
    @rule(i=st.integers(0, 99))
    def caller_retransmits(self, i: int) -> None:
        call = self._pick(self.calls, i)
        mark = f"Call-ID: c{call.n}@caller\r\n".encode()
        reqs = [s for s in self.sent.values() if s.peer == call.peer and mark in s.data]
        req = self._pick(reqs, i)
        if req.may_resend(self.now):
            self._send(req.peer, req.data, record=False)

    @precondition(lambda self: self.calls)
    @rule(i=st.integers(0, 99))
    def caller_cancels(self, i: int) -> None:
        call = self._pick(self.calls, i)
        sent = self.sent.get((call.peer, call.invite.branch, 1, "CANCEL"))
        if sent is not None and not sent.may_resend(self.now):
            return
        data = _a_request("CANCEL", call.n, 1, call.invite.branch)
        self._send(call.peer, data)

    @precondition(lambda self: any(c.invite.finals for c in self.calls))
    @rule(i=st.integers(0, 99))
    def caller_acks(self, i: int) -> None:
        done = [c for c in self.calls if c.invite.finals]
        call = self._pick(done, i)
        final = parse_message(call.invite.finals[0])
        assert isinstance(final, SipResponse)
        ok = 200 <= final.status < 300
        branch = f"z9hG4bKack{call.n}-{i}" if ok else call.invite.branch  # §17.1.1.3
        self._send(call.peer, _a_request("ACK", call.n, 1, branch, to_tag=final.to_tag))
        call.acked = call.acked or ok
        call.invite.acked = call.invite.acked or not ok

    @precondition(lambda self: any(c.to_tag for c in self.calls))
    @rule(
        i=st.integers(0, 99),
        method=st.sampled_from(["BYE", "INVITE", "INFO", "UPDATE", "PRACK", "OPTIONS", "FOO"]),
        offer=st.booleans(),
    )
    def caller_in_dialog(self, i: int, method: str, offer: bool) -> None:
        call = self._pick([c for c in self.calls if c.to_tag], i)
        call.seq += 1
        body = SDP if offer and method in ("INVITE", "UPDATE") else b""
        data = _a_request(
            method, call.n, call.seq, f"z9hG4bKin{call.n}-{call.seq}", to_tag=call.to_tag,
            body=body, uri="sip:dce@127.0.0.1:5060",
        )
        self._send(call.peer, data, relayed=method not in ("BYE", "PRACK"))

    @precondition(lambda self: self.to_a)
    @rule(i=st.integers(0, 99), status=st.sampled_from([200, 200, 481, 486, 500]))
    def caller_answers(self, i: int, status: int) -> None:
        peer, req = self._pick(self.to_a, i)
        resp = make_response(req, status, "A", to_tag=None if req.to_tag else "at")
        self._send(peer, resp.to_bytes(), record=False)

    # --- routing and media --------------------------------------------------------------------

    def _live_routes(self) -> list[RouteCall]:
        self.routes = [r for r in self.routes if r.call_id in self.core.calls]
        return self.routes

    def _live_openings(self) -> list[OpenMedia]:
        self.openings = [o for o in self.openings if o.call_id in self.core.calls]
        return self.openings

    @precondition(lambda self: self._live_routes())
    @rule(i=st.integers(0, 99), how=st.sampled_from(["one", "two", "two", "none", "reject"]))
    def route(self, i: int, how: str) -> None:
        effect = self.routes.pop(i % len(self.routes))
        result: Routed | Rejected
        if how == "reject":
            result = Rejected(status=403, reason="Forbidden", rule="dnc")
        else:
            result = Routed(targets={"one": TARGETS[:1], "two": TARGETS, "none": []}[how])
        self.core.routed(effect.call_id, result, self.now)
        self._pump()

    @precondition(lambda self: self._live_openings())
    @rule(i=st.integers(0, 99), ok=st.sampled_from([True, True, True, False]))
    def open_media(self, i: int, ok: bool) -> None:
        effect = self.openings.pop(i % len(self.openings))
        if ok:
            self.core.media_opened(effect.call_id, Bypass(effect.offer), self.now)  # type: ignore[arg-type]
        else:
            self.core.media_failed(effect.call_id, 503, "no_media_ports", self.now)
        self._pump()

    @precondition(lambda self: self._live_routes())
    @rule(two=st.booleans())
    def call_goes_to_a_buyer(self, two: bool) -> None:
        """The usual path in one step: the newest call is routed and its media opened."""
        effect = self.routes.pop()
        self.core.routed(effect.call_id, Routed(targets=TARGETS if two else TARGETS[:1]), self.now)
        self._pump()
        if self._live_openings():
            opening = self.openings.pop()
            self.core.media_opened(opening.call_id, Bypass(opening.offer), self.now)  # type: ignore[arg-type]
            self._pump()

    # --- the buyers ---------------------------------------------------------------------------

    @precondition(lambda self: self.legs)
    @rule(i=st.integers(0, 99), status=st.sampled_from(BUYER_STATUSES), fork=st.integers(0, 6))
    def buyer_responds(self, i: int, status: int, fork: int) -> None:
        legs = list(self.legs.values())
        leg = self._pick(legs[-2:] if i % 4 else legs, i)  # mostly the newest
        tag = leg.tag if fork else leg.tag + "-fork"
        body = SDP if status in (183, 200) else b""
        resp = make_response(
            leg.req, status, "B", to_tag=None if status == 100 else tag,
            headers=[("contact", f"<sip:buyer@{leg.peer.host}:{leg.peer.port}>")], body=body,
        )
        if body:
            resp.headers.add("content-type", "application/sdp")
        leg.answered.append(resp)
        self.buyer_statuses.add(status)
        self.core.receive_datagram(resp.to_bytes(), leg.peer, self.now)
        self._pump()

    @precondition(lambda self: any(leg.answered for leg in self.legs.values()))
    @rule(i=st.integers(0, 99))
    def buyer_retransmits(self, i: int) -> None:
        leg = self._pick([leg for leg in self.legs.values() if leg.answered], i)
        resp = self._pick(leg.answered, i)
        self.core.receive_datagram(resp.to_bytes(), leg.peer, self.now)
        self._pump()

    @precondition(lambda self: self.to_b)
    @rule(i=st.integers(0, 99), status=st.sampled_from([200, 200, 200, 481, 487, 488, 500]))
    def buyer_answers(self, i: int, status: int) -> None:
        peer, req = self._pick(self.to_b, i)
        resp = make_response(req, status, "B", headers=[("contact", "<sip:buyer@127.0.0.1>")])
        self.buyer_statuses.add(status)
        self.core.receive_datagram(resp.to_bytes(), peer, self.now)
        self._pump()

    @precondition(lambda self: any(
        any(r.status == 200 for r in leg.answered) for leg in self.legs.values()))
    @rule(i=st.integers(0, 99), method=st.sampled_from(["BYE", "INVITE", "INFO", "PRACK"]))
    def buyer_in_dialog(self, i: int, method: str) -> None:
        legs = [leg for leg in self.legs.values() if any(r.status == 200 for r in leg.answered)]
        leg = self._pick(legs, i)
        leg.seq += 1
        inv = leg.req
        body = SDP if method == "INVITE" else b""
        data = (
            f"{method} sip:dce@127.0.0.1:5060 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {leg.peer.host}:{leg.peer.port};branch=z9hG4bKb{leg.tag}-{leg.seq}\r\n"
            f"Max-Forwards: 70\r\nFrom: {inv.headers.get('to')};tag={leg.tag}\r\n"
            f"To: {inv.headers.get('from')}\r\nCall-ID: {inv.call_id}\r\n"
            f"CSeq: {leg.seq} {method}\r\nContact: <sip:buyer@{leg.peer.host}:{leg.peer.port}>\r\n"
            + ("Content-Type: application/sdp\r\n" if body else "")
            + f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self._send(leg.peer, data, relayed=method not in ("BYE", "PRACK"))

    # --- the rest of the world ----------------------------------------------------------------

    @rule(
        status=st.sampled_from([100, 180, 200, 486]),
        who=st.sampled_from([A, B1, B2]),
        known=st.booleans(),
    )
    def stray_response(self, status: int, who: Peer, known: bool) -> None:
        """A response for no transaction; with ``known``, one naming a dialog we own."""
        call_id, tag = "nobody@x", "nobody"
        if known and self.legs:
            leg = next(iter(self.legs.values()))
            call_id, tag = leg.req.call_id, leg.req.from_tag or ""
        data = (
            f"SIP/2.0 {status} S\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKstray{self.n}\r\n"
            f"From: <sip:x@127.0.0.1>;tag={tag}\r\nTo: <sip:y@127.0.0.1>;tag=t\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        self.last_stray = True
        try:
            self.core.receive_datagram(data, who, self.now)
            self._pump()
        finally:
            self.last_stray = False

    @rule(data=sipgen.messages)
    def junk(self, data: bytes) -> None:
        self.core.receive_datagram(data, JUNK, self.now)
        self._pump()

    @rule(uri=st.sampled_from([*TARGETS, "sip:buyer@127.0.0.1:5072", "http://x"]))
    def probe(self, uri: str) -> None:
        self.core.send_options(uri, self.now)
        self._pump()

    @rule(dt=st.sampled_from([0.01, 0.5, 1.0, 2.0, 4.0, 5.0, 10.0, 20.0, 33.0]))
    def advance(self, dt: float) -> None:
        self._advance(self.now + dt)

    def _advance(self, end: float) -> None:
        while (t := self.core.get_timer()) is not None and t <= end:
            assert t >= self.now, "a timer in the past"
            self.now = t
            self.core.handle_timer(t)
            self._pump()
        self.now = end

    # --- invariants ---------------------------------------------------------------------------

    @invariant()
    def nothing_is_due(self) -> None:
        t = self.core.get_timer()
        assert t is None or t > self.now

    @invariant()
    def a_caller_sees_one_dialog_per_invite(self) -> None:
        for call in self.calls:
            tags = set()
            for data in call.invite.finals:
                resp = parse_message(data)
                assert isinstance(resp, SipResponse)
                if 200 <= resp.status < 300:
                    tags.add(resp.to_tag)
                    call.answered = data
            assert len(tags) <= 1
            for data in call.invite.finals[:1]:
                resp = parse_message(data)
                assert isinstance(resp, SipResponse)
                call.to_tag = call.to_tag or (resp.to_tag if resp.status < 300 else None)
            if call.invite.early_tag and not call.invite.finals:
                call.to_tag = call.to_tag or call.invite.early_tag

    def teardown(self) -> None:
        # Hang up whatever is still up (no media timeout runs here), then let every timer run.
        for call_id in list(self.core.calls):
            self.core.end_call(call_id, Outcome.MEDIA_TIMEOUT, self.now)
            self._pump()
        for effect in self.routes:
            self.core.routed(effect.call_id, Rejected(status=480, reason="X", rule="t"), self.now)
        self._pump()
        self._advance(self.now + 600.0)
        core = self.core
        assert core.calls == {}
        assert list(core.tables()) == [0] * len(core.tables()), core.tables()
        assert len(core.layer) == 0 and core.get_timer() is None
        # One CDR per call taken for routing, and none for a request refused before.
        assert sorted(self.ended) == sorted(self.route_ids)
        # Every caller request got one final the RFC allows (RFC 4320: a relayed non-INVITE
        # the other side never answered gets none; the caller's Timer F ends it).
        buyer_finals = {s for s in self.buyer_statuses if s >= 200}
        for req in self.sent.values():
            if req.peer not in (A, A_TCP):
                continue
            if not req.finals:
                assert req.relayed and req.method != "INVITE", (req.method, req.data[:80])
                continue
            status = int(req.finals[0][8:11])
            allowed = SWITCH_FINALS.get(req.method, DEFAULT_FINALS)
            if req.relayed or req.method == "INVITE":
                allowed = allowed | buyer_finals | {200, 408}
            assert status in allowed, (req.method, status)


TestCore = CoreMachine.TestCase
TestCore.settings = SETTINGS


def test_a_stray_2xx_for_a_dialog_we_own_only_gets_our_ack() -> None:
    """The one thing a response to no transaction can cause (§13.2.2.4)."""
    m = CoreMachine()
    m.caller_invites(tcp=False, kind="sdp")
    m.route(0, "one")
    m.open_media(0, True)
    m.buyer_responds(0, 200, 1)
    m.caller_acks(0)
    m.advance(33.0)  # Timer M: the B INVITE transaction is over
    m.advance(10.0)
    leg = next(iter(m.legs.values()))
    m.core.receive_datagram(leg.answered[-1].to_bytes(), leg.peer, m.now)
    out = m.core.datagrams_to_send()
    assert [(d.split(b" ", 1)[0], p) for d, p in out] == [(b"ACK", B1)]
    m.teardown()


def test_requests_the_switch_refuses_never_reach_a_buyer() -> None:
    m = CoreMachine()
    m.caller_invites(tcp=False, kind="require")
    m.caller_invites(tcp=False, kind="text")
    assert m.routes == [] and m.legs == {}
    statuses = [int(s.finals[0][8:11]) for s in m.sent.values()]
    assert statuses == [420, 415]
    m.teardown()


def test_the_corpus_from_another_peer_leaves_a_live_call_alone() -> None:
    """Every torture and fuzz corpus message, from another peer in the middle of a ringing
    call: nothing reaches the call's caller or buyer, and the call rings on."""
    m = CoreMachine()
    m.caller_invites(tcp=False, kind="sdp")
    m.route(0, "two")
    m.open_media(0, True)
    m.buyer_responds(0, 180, 1)
    (first,) = m.core.calls
    before = list(m.calls[0].invite.provisionals)
    for data in corpus():
        m.junk(data)  # _pump: a response to the caller or a buyer must be for their request
    assert m.calls[0].invite.provisionals == before and m.calls[0].invite.finals == []
    assert m.core.calls[first].state is CallState.EARLY
    m.teardown()


def corpus() -> list[bytes]:
    from pathlib import Path

    here = Path(__file__).parent / "data"
    return [p.read_bytes() for p in sorted(here.glob("*/*.sip"))]
