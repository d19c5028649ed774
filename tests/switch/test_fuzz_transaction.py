"""Stateful fuzzing of the RFC 3261 §17 transaction layer (hypothesis RuleBasedStateMachine).

Random interleavings of: new requests (INVITE, non-INVITE, RFC 2543 branches, UDP and TCP),
their retransmissions, ACKs (for 2xx with a new branch, for non-2xx with the INVITE's),
responses from the TU (any status, in any state, also on dead transactions), requests we
send and the responses they get (provisionals repeated, finals retransmitted, forks),
responses for nothing, ``terminate()``, and time moving on.

A small model of each transaction's RFC state says what must come out: which event, which
bytes, and for a retransmitted request exactly the last response sent (or nothing). On top,
after every step: the layer holds exactly the transactions the events said are alive, the
next deadline is in the future, and every byte sent was either new output or a copy of
earlier output of the same transaction (retransmission). After the run every timer is fired:
nothing may be left.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from switch.errors import InvalidStateError
from switch.events import (
    RequestReceived,
    ResponseReceived,
    StrayResponse,
    TransactionTerminated,
    TransactionTimedOut,
)
from switch.message import SipRequest, SipResponse, make_response, parse_message
from switch.peer import Peer
from switch.transaction import TransactionLayer

PEERS = {"udp": Peer("udp", "192.0.2.10", 5060), "tcp": Peer("tcp", "192.0.2.10", 5060, 7)}
STATUSES = [100, 180, 183, 200, 202, 302, 404, 408, 486, 487, 500, 503, 603]
SETTINGS = settings(
    max_examples=int(os.environ.get("DCE_FUZZ_EXAMPLES", "150")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _request(
    method: str, branch: str, n: int, *, cseq_method: str | None = None, to_tag: str | None = None
) -> bytes:
    lines = [
        f"{method} sip:bob@198.51.100.1 SIP/2.0",
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch={branch}",
        "Max-Forwards: 70",
        f"From: <sip:alice@example.com>;tag=f{n}",
        "To: <sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: c{n}@192.0.2.10",
        f"CSeq: {n} {cseq_method or method}",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def _parse_req(data: bytes) -> SipRequest:
    msg = parse_message(data)
    assert isinstance(msg, SipRequest)
    return msg


@dataclass
class ServerTx:
    """What the model knows of one server transaction."""

    key: str
    method: str
    reliable: bool
    request: bytes  # as received, for retransmissions
    n: int
    branch: str
    state: str = "proceeding"  # IST: proceeding accepted completed confirmed; NIST: trying ...
    last: bytes | None = None  # the last response sent
    to_tag: str | None = None
    sent: set[bytes] = field(default_factory=set)


@dataclass
class ClientTx:
    key: str
    method: str
    reliable: bool
    request: SipRequest
    state: str = "calling"  # ICT: calling proceeding accepted completed; NICT: trying ...
    seen_1xx: set[tuple[int, str]] = field(default_factory=set)
    ack: bytes | None = None
    sent: set[bytes] = field(default_factory=set)


class TransactionMachine(RuleBasedStateMachine):
    send_trying = False

    def __init__(self) -> None:
        super().__init__()
        self.layer = TransactionLayer(send_trying=self.send_trying)
        self.now = 0.0
        self.n = 0
        self.servers: dict[str, ServerTx] = {}  # live, by layer key
        self.clients: dict[str, ClientTx] = {}
        self.dead_servers: list[ServerTx] = []
        self.dead_clients: list[ClientTx] = []
        self.ended: set[str] = set()
        self.timed_out: set[str] = set()

    # --- helpers ------------------------------------------------------------------------------

    def _out(self) -> list[bytes]:
        return [data for data, _ in self.layer.datagrams_to_send()]

    def _events(self) -> list[object]:
        out = []
        while (ev := self.layer.next_event()) is not None:
            out.append(ev)
        return out

    def _settle(self, events: list[object]) -> list[object]:
        """Apply Terminated/TimedOut events to the model; return the other events."""
        rest = []
        for ev in events:
            if isinstance(ev, TransactionTerminated):
                assert ev.tx not in self.ended, f"{ev.tx} terminated twice"
                self.ended.add(ev.tx)
                self._drop(ev.tx)
            elif isinstance(ev, TransactionTimedOut):
                assert ev.tx not in self.timed_out, f"{ev.tx} timed out twice"
                self.timed_out.add(ev.tx)
                expected = {"INVITE": {"B", "H", "L"}}.get(ev.method, {"F"})
                assert ev.timer in expected, (ev.method, ev.timer)
            else:
                rest.append(ev)
        return rest

    def _drop(self, key: str) -> None:
        if key in self.servers:
            self.dead_servers.append(self.servers.pop(key))
        elif key in self.clients:
            tx = self.clients.pop(key)
            tx.state = "gone"
            self.dead_clients.append(tx)

    def _pick(self, pool: dict[str, ServerTx] | dict[str, ClientTx], i: int) -> str:
        keys = sorted(pool)
        return keys[i % len(keys)]

    # --- server side --------------------------------------------------------------------------

    @rule(
        method=st.sampled_from(["INVITE", "INVITE", "BYE", "OPTIONS", "INFO", "CANCEL"]),
        transport=st.sampled_from(["udp", "tcp"]),
        rfc2543=st.integers(0, 5),
    )
    def new_request(self, method: str, transport: str, rfc2543: int) -> None:
        self.n += 1
        branch = f"old{self.n}" if rfc2543 == 0 else f"z9hG4bKs{self.n}"
        data = _request(method, branch, self.n)
        peer = PEERS[transport]
        self.layer.receive(_parse_req(data), peer, self.now)
        events = self._settle(self._events())
        assert len(events) == 1, events
        (ev,) = events
        assert isinstance(ev, RequestReceived) and ev.tx is not None
        assert ev.tx not in self.servers
        tx = ServerTx(ev.tx, method, peer.reliable, data, self.n, branch)
        tx.state = "proceeding" if method == "INVITE" else "trying"
        out = self._out()
        if self.send_trying and method == "INVITE":
            (trying,) = out
            assert trying.startswith(b"SIP/2.0 100 ")
            tx.last = trying
            tx.sent.add(trying)
        else:
            assert out == []
        self.servers[ev.tx] = tx

    @precondition(lambda self: self.servers or self.dead_servers)
    @rule(i=st.integers(0, 1000), dead=st.booleans())
    def retransmit_request(self, i: int, dead: bool) -> None:
        if dead and self.dead_servers:
            tx = self.dead_servers[i % len(self.dead_servers)]
            tx = self.servers.get(tx.key, tx)  # the same request may have started a new one
        else:
            if not self.servers:
                return
            tx = self.servers[self._pick(self.servers, i)]
        peer = PEERS["tcp" if tx.reliable else "udp"]
        self.layer.receive(_parse_req(tx.request), peer, self.now)
        events = self._settle(self._events())
        out = self._out()
        if tx.key not in self.servers:
            # Its transaction is over: the retransmission starts a new one (the TU's call).
            assert len(events) == 1 and isinstance(events[0], RequestReceived)
            assert events[0].tx == tx.key
            fresh = ServerTx(tx.key, tx.method, tx.reliable, tx.request, tx.n, tx.branch)
            fresh.state = "proceeding" if tx.method == "INVITE" else "trying"
            if self.send_trying and tx.method == "INVITE":
                fresh.last = out[0]
                fresh.sent.add(out[0])
            self.ended.discard(tx.key)
            self.timed_out.discard(tx.key)
            self.servers[tx.key] = fresh
            return
        assert events == []
        if tx.state in ("accepted", "accepted-acked", "confirmed", "trying"):
            assert out == [], (tx.state, out)  # absorbed (RFC 6026 for accepted)
        else:
            assert out == ([tx.last] if tx.last is not None else []), tx.state

    @precondition(lambda self: self.servers or self.dead_servers)
    @rule(i=st.integers(0, 1000), status=st.sampled_from(STATUSES), dead=st.booleans())
    def tu_responds(self, i: int, status: int, dead: bool) -> None:
        if dead and self.dead_servers:
            tx = self.dead_servers[i % len(self.dead_servers)]
            if tx.key in self.servers:
                return
            resp = make_response(_parse_req(tx.request), status, "X", to_tag="tt")
            try:
                self.layer.send_response(tx.key, resp, self.now)
            except InvalidStateError:
                return
            raise AssertionError("a dead transaction took a response")
        if not self.servers:
            return
        tx = self.servers[self._pick(self.servers, i)]
        to_tag = None if status == 100 else (tx.to_tag or f"tt{i % 3}")
        resp = make_response(_parse_req(tx.request), status, "X", to_tag=to_tag)
        data = resp.to_bytes()
        self.layer.send_response(tx.key, resp, self.now)
        assert self._settle(self._events()) == []  # only a Terminated, if any
        out = self._out()
        sent_it = out == [data]
        if tx.method == "INVITE":
            if tx.state == "proceeding":
                assert sent_it
                tx.last = data
                if status >= 200:
                    tx.to_tag = to_tag
                    tx.state = "accepted" if status < 300 else "completed"
            elif tx.state in ("accepted", "accepted-acked") and 200 <= status < 300:
                assert sent_it  # RFC 6026: further 2xx go out
                tx.last = data
            else:
                assert out == []
        else:
            if tx.state in ("trying", "proceeding"):
                if status == 408:
                    assert out == [] and tx.key in self.ended  # RFC 4320 §4.2
                elif 100 < status < 200:
                    assert out == []  # RFC 4320 §4.1
                elif status == 100:
                    assert sent_it
                    tx.last, tx.state = data, "proceeding"
                else:
                    assert sent_it
                    tx.last, tx.state = data, "completed"
                    if tx.reliable:
                        assert tx.key in self.ended  # Timer J is 0
            else:
                assert out == []
        if sent_it:
            tx.sent.add(data)

    @precondition(lambda self: any(t.method == "INVITE" for t in self.servers.values()))
    @rule(i=st.integers(0, 1000))
    def ack(self, i: int) -> None:
        invites = sorted(k for k, t in self.servers.items() if t.method == "INVITE")
        tx = self.servers[invites[i % len(invites)]]
        if tx.state == "accepted" or (tx.state == "proceeding" and i % 2):
            # §13.2.2.4: the ACK for a 2xx is its own transaction: a new branch.
            branch = f"z9hG4bKack{self.n}-{i}"
        else:
            branch = tx.branch  # §17.1.1.3: the ACK for a non-2xx reuses the INVITE's
        data = _request("ACK", branch, tx.n, cseq_method="ACK", to_tag=tx.to_tag or "tt")
        peer = PEERS["tcp" if tx.reliable else "udp"]
        self.layer.receive(_parse_req(data), peer, self.now)
        events = self._settle(self._events())
        assert self._out() == []  # an ACK is never answered
        if tx.state in ("accepted", "accepted-acked"):
            # RFC 6026: the ACK for a 2xx belongs to the TU (end to end); it also stops the
            # 2xx retransmissions. Matched by branch or by (Call-ID, CSeq, From tag).
            (ev,) = events
            assert isinstance(ev, RequestReceived) and ev.tx is None
            tx.state = "accepted-acked"
        elif branch == tx.branch:
            assert events == []  # for our non-2xx (Completed -> Confirmed), else absorbed
            if tx.state == "completed":
                tx.state = "confirmed"
        else:
            (ev,) = events  # matches no transaction: the TU's to judge
            assert isinstance(ev, RequestReceived) and ev.tx is None

    # --- client side --------------------------------------------------------------------------

    @rule(
        method=st.sampled_from(["INVITE", "INVITE", "BYE", "OPTIONS", "CANCEL"]),
        transport=st.sampled_from(["udp", "tcp"]),
    )
    def send_request(self, method: str, transport: str) -> None:
        self.n += 1
        data = _request(method, f"z9hG4bKc{self.n}", self.n)
        req = _parse_req(data)
        peer = PEERS[transport]
        key = self.layer.send_request(req, peer, self.now)
        assert self._out() == [req.to_bytes()]
        assert self._settle(self._events()) == []
        tx = ClientTx(key, method, peer.reliable, req)
        tx.state = "calling" if method == "INVITE" else "trying"
        tx.sent.add(req.to_bytes())
        self.clients[key] = tx

    @precondition(lambda self: self.clients or self.dead_clients)
    @rule(
        i=st.integers(0, 1000),
        status=st.sampled_from(STATUSES),
        tag=st.sampled_from(["a", "a", "b", None]),
        dead=st.booleans(),
    )
    def receive_response(self, i: int, status: int, tag: str | None, dead: bool) -> None:
        if (dead or not self.clients) and self.dead_clients:
            tx = self.dead_clients[i % len(self.dead_clients)]
            if tx.key in self.clients:
                return  # the same branch was reused by a live one: not dead after all
        else:
            tx = self.clients[self._pick(self.clients, i)]
        wire = make_response(tx.request, status, "R", to_tag=tag if status > 100 else None)
        resp = parse_message(wire.to_bytes())
        assert isinstance(resp, SipResponse)
        peer = PEERS["tcp" if tx.reliable else "udp"]
        self.layer.receive(resp, peer, self.now)
        before = tx.state
        events = self._settle(self._events())
        tx.state = before  # the model moves it below
        out = self._out()
        if tx.state == "gone":
            assert [type(e) for e in events] == [StrayResponse] and out == []
            return
        up = [e for e in events if isinstance(e, ResponseReceived)]
        assert len(up) == len(events), events
        mark = (status, (tag or "") if status > 100 else "")  # a 100 carries no To tag
        if tx.method == "INVITE":
            if tx.state in ("calling", "proceeding"):
                if status < 200:
                    assert len(up) == (0 if mark in tx.seen_1xx else 1) and out == []
                    tx.seen_1xx.add(mark)
                    tx.state = "proceeding"
                elif status < 300:
                    assert len(up) == 1 and out == []
                    tx.state = "accepted"
                else:  # §17.1.1.3: the transaction ACKs a non-2xx itself
                    assert len(up) == 1 and len(out) == 1 and out[0].startswith(b"ACK ")
                    tx.ack = out[0]
                    tx.sent.add(out[0])
                    tx.state = "completed"
            elif tx.state == "accepted":  # RFC 6026: every 2xx goes up, the rest stops here
                assert len(up) == (1 if 200 <= status < 300 else 0) and out == []
            else:  # completed: a retransmitted final gets the same ACK
                assert up == []
                assert out == ([tx.ack] if status >= 300 else [])
        else:
            if tx.state in ("trying", "proceeding"):
                if status < 200:
                    assert len(up) == (0 if mark in tx.seen_1xx else 1)
                    tx.seen_1xx.add(mark)
                    tx.state = "proceeding"
                else:
                    assert len(up) == 1
                    tx.state = "completed"
            else:
                assert up == []
            assert out == []
        if tx.key not in self.clients:
            tx.state = "gone"  # a final on a stream ends it at once (Timer D/K are 0)

    @rule(status=st.sampled_from(STATUSES), method=st.sampled_from(["INVITE", "BYE"]))
    def stray_response(self, status: int, method: str) -> None:
        self.n += 1
        req = _parse_req(_request(method, f"z9hG4bKnobody{self.n}", self.n))
        wire = parse_message(make_response(req, status, "S", to_tag="x").to_bytes())
        assert isinstance(wire, SipResponse)
        self.layer.receive(wire, PEERS["udp"], self.now)
        events = self._settle(self._events())
        assert [type(e) for e in events] == [StrayResponse]
        assert self._out() == []

    @precondition(lambda self: self.servers or self.clients)
    @rule(i=st.integers(0, 1000), server=st.booleans())
    def terminate(self, i: int, server: bool) -> None:
        pool: dict[str, ServerTx] | dict[str, ClientTx] = (
            self.servers if server and self.servers else self.clients or self.servers
        )
        key = self._pick(pool, i)
        self.layer.terminate(key)
        assert self.layer.state(key) is None
        assert self._events() == [] and self._out() == []
        tx = pool.pop(key)
        if isinstance(tx, ClientTx):
            tx.state = "gone"
            self.dead_clients.append(tx)
        else:
            self.dead_servers.append(tx)  # type: ignore[arg-type]

    # --- time ---------------------------------------------------------------------------------

    @rule(dt=st.sampled_from([0.1, 0.5, 1.0, 2.0, 4.5, 5.0, 16.0, 32.0, 40.0]))
    def advance(self, dt: float) -> None:
        self._advance(self.now + dt)

    def _advance(self, end: float) -> None:
        while (t := self.layer.get_timer()) is not None and t <= end:
            assert t >= self.now
            self.now = t
            self.layer.handle_timer(t)
            events = self._settle(self._events())
            for ev in events:
                # Timers surface nothing but timeouts and terminations.
                raise AssertionError(f"a timer surfaced {ev}")
            for data in self._out():
                self._is_retransmission(data)
        self.now = end
        # Model: states the timers moved (completed/confirmed end; accepted end at L/M).
        for key in list(self.servers):
            if self.layer.state(key) is None:
                self._drop(key)

    def _is_retransmission(self, data: bytes) -> None:
        """Every byte a timer sends repeats what its transaction sent before."""
        if data.startswith(b"SIP/2.0"):
            owners = [t for t in [*self.servers.values(), *self.dead_servers] if data in t.sent]
            assert owners, f"a timer sent a response no transaction sent: {data[:40]!r}"
            assert all(not t.reliable or data.split(b" ")[1].startswith(b"2") for t in owners)
        else:
            owners_c = [t for t in [*self.clients.values(), *self.dead_clients] if data in t.sent]
            assert owners_c, f"a timer sent a request no transaction sent: {data[:40]!r}"
            assert all(not t.reliable for t in owners_c), "retransmitted over a stream"

    # --- invariants ---------------------------------------------------------------------------

    @invariant()
    def nothing_is_due(self) -> None:
        t = self.layer.get_timer()
        assert t is None or t > self.now

    @invariant()
    def the_layer_holds_what_the_events_say(self) -> None:
        for key in list(self.servers):
            if self.layer.state(key) is None:
                assert key in self.ended
                self._drop(key)
        assert len(self.layer) == len(self.servers) + len(self.clients)
        for key in self.clients:
            assert self.layer.state(key) is not None

    def teardown(self) -> None:
        # What a TU owes: a final for every request (a server transaction the TU never
        # answers has no timer), and ending an INVITE it sent that stays in Proceeding (after
        # a CANCEL, §9.1; Figure 5 has no timer there either).
        for tx in list(self.servers.values()):
            if tx.state in ("trying", "proceeding"):
                resp = make_response(_parse_req(tx.request), 500, "X", to_tag="end")
                self.layer.send_response(tx.key, resp, self.now)
                tx.sent.update(self._out())
        for ctx in list(self.clients.values()):
            if ctx.method == "INVITE" and ctx.state == "proceeding":
                self.layer.terminate(ctx.key)
                self.clients.pop(ctx.key)
        self._settle(self._events())
        self._advance(self.now + 10_000.0)
        assert len(self.layer) == 0
        assert self.layer.get_timer() is None
        assert self.layer._accepted == {}
        assert self.layer.datagrams_to_send() == [] and self.layer.next_event() is None


class TransactionMachineWithTrying(TransactionMachine):
    send_trying = True


TestTransactionLayer = TransactionMachine.TestCase
TestTransactionLayer.settings = SETTINGS
TestTransactionLayerWithTrying = TransactionMachineWithTrying.TestCase
TestTransactionLayerWithTrying.settings = SETTINGS
