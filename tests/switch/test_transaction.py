"""The RFC 3261 §17 transaction layer on virtual time: feed messages, advance ``now``, check
events, deadlines and bytes. No sockets, no sleeps."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
import pytest

from switch.errors import InvalidStateError, SipParseError
from switch.events import (
    RequestReceived,
    ResponseReceived,
    StrayResponse,
    TransactionEvent,
    TransactionTerminated,
    TransactionTimedOut,
)
from switch.message import Headers, SipRequest, SipResponse, make_response, parse_message
from switch.peer import Peer
from switch.timers import TimerConfig
from switch.transaction import (
    ClientInviteState,
    ClientNonInviteState,
    ServerInviteState,
    ServerNonInviteState,
    TransactionLayer,
)

UDP = Peer("udp", "192.0.2.10", 5060)
TCP = Peer("tcp", "192.0.2.10", 5060, conn=7)
PEERS = [UDP, TCP]
PEER_IDS = ["udp", "tcp"]


# --- Builders -------------------------------------------------------------------------------


def request_bytes(
    method: str = "INVITE",
    *,
    branch: str | None = "z9hG4bK-b1",
    host: str = "192.0.2.10",
    port: int = 5060,
    uri: str = "sip:bob@198.51.100.1",
    call_id: str = "call-1@192.0.2.10",
    cseq: int = 1,
    cseq_method: str | None = None,
    from_tag: str = "ft1",
    to_tag: str | None = None,
    extra: tuple[str, ...] = (),
) -> bytes:
    via = f"Via: SIP/2.0/UDP {host}:{port}" + (f";branch={branch}" if branch else "")
    lines = [
        f"{method} {uri} SIP/2.0",
        via,
        "Max-Forwards: 70",
        f'From: "Alice" <sip:alice@example.com>;tag={from_tag}',
        "To: <sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
        *extra,
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def request(method: str = "INVITE", **kw: Any) -> SipRequest:
    """A request as it arrives from the wire; ``kw`` as for :func:`request_bytes`."""
    msg = parse_message(request_bytes(method, **kw))
    assert isinstance(msg, SipRequest)
    return msg


def response(
    req: SipRequest, status: int, reason: str = "X", to_tag: str | None = "tt1"
) -> SipResponse:
    """A response to ``req`` as it arrives from the wire (serialised and parsed)."""
    msg = parse_message(make_response(req, status, reason, to_tag=to_tag).to_bytes())
    assert isinstance(msg, SipResponse)
    return msg


def ack_for_2xx(invite: SipRequest, ok: SipResponse, branch: str = "z9hG4bK-ack2xx") -> SipRequest:
    """The UAC core's ACK for a 2xx (§13.2.2.4): a new transaction, hence a new branch."""
    return request(
        "ACK",
        branch=branch,
        call_id=invite.call_id,
        cseq=invite.cseq[0],
        from_tag=invite.from_tag or "",
        to_tag=ok.to_tag,
    )


def events(layer: TransactionLayer) -> list[TransactionEvent]:
    out = []
    while (ev := layer.next_event()) is not None:
        out.append(ev)
    return out


def responses(layer: TransactionLayer) -> list[SipResponse]:
    """Drain events, which must all be ResponseReceived; return their responses."""
    out = []
    for ev in events(layer):
        assert isinstance(ev, ResponseReceived), ev
        out.append(ev.response)
    return out


def new_server_tx(layer: TransactionLayer) -> str:
    """Drain the single RequestReceived that started a server transaction; return its key."""
    (ev,) = events(layer)
    assert isinstance(ev, RequestReceived) and ev.tx is not None
    return ev.tx


def sent(layer: TransactionLayer) -> list[bytes]:
    return [data for data, _ in layer.datagrams_to_send()]


def deadlines(layer: TransactionLayer, until: float) -> list[float]:
    """Fire every timer before ``until``; return the deadlines that fired, in order."""
    fired = []
    while (t := layer.get_timer()) is not None and t < until:
        layer.handle_timer(t)
        fired.append(t)
    return fired


def deliver(src: TransactionLayer, dst: TransactionLayer, peer: Peer, now: float) -> None:
    """The fake link: everything ``src`` wants to send arrives at ``dst`` from ``peer``."""
    for data, _ in src.datagrams_to_send():
        dst.receive(parse_message(data), peer, now)


# --- Timer configuration --------------------------------------------------------------------


def test_timer_config_defaults_and_derived_values() -> None:
    cfg = TimerConfig()
    assert (cfg.t1, cfg.t2, cfg.t4) == (0.5, 4.0, 5.0)
    assert cfg.timer_b == cfg.timer_f == cfg.timer_h == cfg.timer_l == cfg.timer_m == 32.0
    assert (cfg.timer_d(False), cfg.timer_d(True)) == (32.0, 0.0)
    assert (cfg.timer_i(False), cfg.timer_i(True)) == (5.0, 0.0)
    assert (cfg.timer_j(False), cfg.timer_j(True)) == (32.0, 0.0)
    assert (cfg.timer_k(False), cfg.timer_k(True)) == (5.0, 0.0)
    # Timer D outlasts the peer's Timer H (64*T1) when T1 grows.
    assert TimerConfig(t1=1.0, t2=4.0).timer_d(False) == 64.0


@pytest.mark.parametrize(
    "kwargs",
    [{"t1": 0.0}, {"t1": 1.0, "t2": 0.5}, {"t4": -1.0}],
    ids=["t1-zero", "t2-below-t1", "t4-negative"],
)
def test_timer_config_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TimerConfig(**kwargs)


def test_timer_config_is_frozen_and_decodable() -> None:
    cfg = msgspec.json.decode(b'{"t1": 0.25}', type=TimerConfig)
    assert cfg.timer_b == 16.0
    with pytest.raises(AttributeError):
        cfg.t1 = 1.0  # type: ignore[misc]


# --- Client transactions: Timers A, B, E, F -------------------------------------------------


@pytest.mark.parametrize(
    ("method", "retransmits", "timer"),
    [
        # §17.1.1.2: Timer A doubles with no cap; Timer B ends it at 64*T1.
        ("INVITE", [0.5, 1.5, 3.5, 7.5, 15.5, 31.5], "B"),
        # §17.1.2.2: Timer E doubles up to T2; Timer F at 64*T1.
        ("OPTIONS", [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5], "F"),
    ],
    ids=["timer-A-then-B", "timer-E-then-F"],
)
def test_client_retransmits_then_times_out(
    method: str, retransmits: list[float], timer: Literal["B", "F"]
) -> None:
    layer = TransactionLayer()
    req = request(method)
    tx = layer.send_request(req, UDP, now=0.0)
    assert sent(layer) == [req.to_bytes()]
    assert layer.get_timer() == 0.5

    fired = []
    while (t := layer.get_timer()) is not None and t < 32.0:
        layer.handle_timer(t)
        assert sent(layer) == [req.to_bytes()], f"one retransmission at {t}"
        fired.append(t)
    assert fired == retransmits
    assert events(layer) == []

    assert layer.get_timer() == 32.0
    layer.handle_timer(32.0)
    assert events(layer) == [
        TransactionTimedOut(tx=tx, method=method, timer=timer, at=32.0),
        TransactionTerminated(tx=tx, at=32.0),
    ]
    assert sent(layer) == []
    assert len(layer) == 0 and layer.get_timer() is None


def test_timer_a_counts_from_the_send_time_and_fires_late() -> None:
    layer = TransactionLayer()
    layer.send_request(request(), UDP, now=100.0)
    sent(layer)
    assert layer.get_timer() == 100.5
    layer.handle_timer(100.7)  # the loop woke late: the next interval counts from now
    assert len(sent(layer)) == 1
    assert layer.get_timer() == pytest.approx(101.7)


def test_the_timer_that_ends_a_transaction_goes_first_on_a_tie() -> None:
    # T2 = T1: Timer E's 64th interval ends exactly when Timer F does (64*T1). The client
    # gives up then, without a 64th copy of the request.
    layer = TransactionLayer(TimerConfig(t1=0.5, t2=0.5))
    req = request("OPTIONS")
    tx = layer.send_request(req, UDP, now=0.0)
    sent(layer)
    assert deadlines(layer, 32.0) == [0.5 * k for k in range(1, 64)]
    assert sent(layer) == [req.to_bytes()] * 63
    assert layer.get_timer() == 32.0
    layer.handle_timer(32.0)
    assert events(layer) == [
        TransactionTimedOut(tx=tx, method="OPTIONS", timer="F", at=32.0),
        TransactionTerminated(tx=tx, at=32.0),
    ]
    assert sent(layer) == [] and layer.get_timer() is None


def test_a_late_wake_up_fires_what_is_due_in_deadline_order() -> None:
    layer = TransactionLayer()
    invite = request("INVITE", branch="z9hG4bK-late-1")
    bye = request("BYE", branch="z9hG4bK-late-2")
    a = layer.send_request(invite, UDP, now=0.0)  # A at 0.5, B at 32
    b = layer.send_request(bye, UDP, now=0.25)  # E at 0.75, F at 32.25
    sent(layer)
    layer.handle_timer(40.0)
    # Each retransmission timer fires once (its next interval counts from the late now),
    # then Timer B and Timer F, in the order of their deadlines.
    assert sent(layer) == [invite.to_bytes(), bye.to_bytes()]
    assert events(layer) == [
        TransactionTimedOut(tx=a, method="INVITE", timer="B", at=40.0),
        TransactionTerminated(tx=a, at=40.0),
        TransactionTimedOut(tx=b, method="BYE", timer="F", at=40.0),
        TransactionTerminated(tx=b, at=40.0),
    ]
    assert len(layer) == 0 and layer.get_timer() is None


def test_timer_e_is_t2_once_proceeding() -> None:
    layer = TransactionLayer()
    req = request("BYE")
    tx = layer.send_request(req, UDP, now=0.0)
    sent(layer)
    layer.handle_timer(0.5)  # Trying: next E in min(2*T1, T2) = 1.0
    assert layer.get_timer() == 1.5
    layer.receive(response(req, 100, "Trying", to_tag=None), UDP, now=1.0)
    assert layer.state(tx) is ClientNonInviteState.PROCEEDING
    layer.handle_timer(1.5)  # Proceeding: E = T2
    assert sent(layer) == [req.to_bytes(), req.to_bytes()]
    assert layer.get_timer() == 5.5
    layer.handle_timer(5.5)
    assert layer.get_timer() == 9.5


def test_client_invite_provisional_stops_timers_a_and_b() -> None:
    layer = TransactionLayer()
    req = request()
    tx = layer.send_request(req, UDP, now=0.0)
    layer.receive(response(req, 100, "Trying", to_tag=None), UDP, now=0.1)
    assert layer.state(tx) is ClientInviteState.PROCEEDING
    # Figure 5: nothing runs in Proceeding; the TU decides how long to ring (CANCEL).
    assert layer.get_timer() is None
    layer.handle_timer(100.0)
    assert sent(layer) == [req.to_bytes()]


def test_provisionals_are_surfaced_once_each() -> None:
    layer = TransactionLayer()
    req = request()
    tx = layer.send_request(req, UDP, now=0.0)
    trying = response(req, 100, "Trying", to_tag=None)
    ringing = response(req, 180, "Ringing", to_tag="a")
    ringing_fork = response(req, 180, "Ringing", to_tag="b")
    progress = response(req, 183, "Session Progress", to_tag="a")
    for i, resp in enumerate([trying, ringing, ringing, trying, ringing_fork, progress, ringing]):
        layer.receive(resp, UDP, now=float(i))
    got = [(resp.status, resp.to_tag) for resp in responses(layer)]
    assert got == [(100, None), (180, "a"), (180, "b"), (183, "a")]
    assert layer.state(tx) is ClientInviteState.PROCEEDING


def test_reliable_provisionals_deduplicated_by_rseq() -> None:
    layer = TransactionLayer()
    req = request()
    layer.send_request(req, TCP, now=0.0)
    first = parse_message(
        make_response(req, 183, "SP", to_tag="a", headers=[("RSeq", "1")]).to_bytes()
    )
    second = parse_message(
        make_response(req, 183, "SP", to_tag="a", headers=[("RSeq", "2")]).to_bytes()
    )
    for i, resp in enumerate([first, first, second]):
        layer.receive(resp, TCP, now=float(i))
    assert [resp.headers.get("rseq") for resp in responses(layer)] == ["1", "2"]


# --- Client INVITE: non-2xx ACK and Timer D; 2xx and Timer M --------------------------------


def test_non_2xx_ack_is_built_per_17_1_1_3() -> None:
    layer = TransactionLayer()
    req = request(
        extra=(
            "Route: <sip:edge1.example.net;lr>",
            "Route: <sip:edge2.example.net;lr>",
            "Content-Type: application/sdp",
        ),
    )
    layer.send_request(req, UDP, now=0.0)
    sent(layer)
    busy = response(req, 486, "Busy Here", to_tag="callee-7")
    layer.receive(busy, UDP, now=1.0)
    (ack_bytes,) = sent(layer)
    assert ack_bytes == (
        b"ACK sip:bob@198.51.100.1 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-b1\r\n"
        b"Max-Forwards: 70\r\n"
        b"Route: <sip:edge1.example.net;lr>\r\n"
        b"Route: <sip:edge2.example.net;lr>\r\n"
        b'From: "Alice" <sip:alice@example.com>;tag=ft1\r\n'
        b"To: <sip:bob@example.com>;tag=callee-7\r\n"
        b"Call-ID: call-1@192.0.2.10\r\n"
        b"CSeq: 1 ACK\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    ack = parse_message(ack_bytes)
    assert isinstance(ack, SipRequest)
    assert ack.via.branch == req.via.branch  # same transaction
    assert ack.cseq == (1, "ACK") and ack.to_tag == "callee-7" and ack.body == b""


@pytest.mark.parametrize(("peer", "timer_d"), [(UDP, 32.0), (TCP, 0.0)], ids=PEER_IDS)
def test_client_invite_completed_and_timer_d(peer: Peer, timer_d: float) -> None:
    layer = TransactionLayer()
    req = request()
    tx = layer.send_request(req, peer, now=0.0)
    sent(layer)
    busy = response(req, 486, "Busy Here")
    layer.receive(busy, peer, now=2.0)
    (ack,) = sent(layer)
    evs = events(layer)
    assert evs[0] == ResponseReceived(tx=tx, response=busy, at=2.0)
    if timer_d == 0.0:
        assert evs[1:] == [TransactionTerminated(tx=tx, at=2.0)]
        assert len(layer) == 0 and layer.get_timer() is None
        return
    assert evs[1:] == []
    assert layer.state(tx) is ClientInviteState.COMPLETED
    assert layer.get_timer() == 2.0 + timer_d
    # A retransmitted final is absorbed and ACKed again (§17.1.1.2).
    layer.receive(response(req, 486, "Busy Here"), peer, now=3.0)
    assert sent(layer) == [ack]
    assert events(layer) == []
    layer.handle_timer(2.0 + timer_d)
    assert events(layer) == [TransactionTerminated(tx=tx, at=2.0 + timer_d)]
    assert len(layer) == 0


@pytest.mark.parametrize("peer", PEERS, ids=PEER_IDS)
def test_client_invite_accepted_passes_every_2xx_until_timer_m(peer: Peer) -> None:
    layer = TransactionLayer()
    req = request()
    tx = layer.send_request(req, peer, now=0.0)
    sent(layer)
    ok = response(req, 200, "OK", to_tag="a")
    layer.receive(ok, peer, now=1.0)
    assert layer.state(tx) is ClientInviteState.ACCEPTED
    assert sent(layer) == []  # the ACK for a 2xx is the TU's (send_stateless)
    assert layer.get_timer() == 33.0  # Timer M = 64*T1 on any transport
    ok_again = response(req, 200, "OK", to_tag="a")
    ok_fork = response(req, 200, "OK", to_tag="b")
    layer.receive(ok_again, peer, now=1.5)
    layer.receive(ok_fork, peer, now=1.6)
    layer.receive(response(req, 486, "Busy Here", to_tag="c"), peer, now=1.7)  # absorbed
    assert events(layer) == [
        ResponseReceived(tx=tx, response=ok, at=1.0),
        ResponseReceived(tx=tx, response=ok_again, at=1.5),
        ResponseReceived(tx=tx, response=ok_fork, at=1.6),
    ]
    layer.handle_timer(33.0)
    assert events(layer) == [TransactionTerminated(tx=tx, at=33.0)]
    late = response(req, 200, "OK", to_tag="a")
    layer.receive(late, peer, now=40.0)
    assert events(layer) == [StrayResponse(response=late, peer=peer, at=40.0)]


# --- Client non-INVITE: Timer K -------------------------------------------------------------


@pytest.mark.parametrize(("peer", "timer_k"), [(UDP, 5.0), (TCP, 0.0)], ids=PEER_IDS)
def test_client_non_invite_completed_and_timer_k(peer: Peer, timer_k: float) -> None:
    layer = TransactionLayer()
    req = request("OPTIONS")
    tx = layer.send_request(req, peer, now=0.0)
    sent(layer)
    ok = response(req, 200, "OK")
    layer.receive(ok, peer, now=0.2)
    assert events(layer)[0] == ResponseReceived(tx=tx, response=ok, at=0.2)
    if timer_k == 0.0:
        assert len(layer) == 0 and layer.get_timer() is None
        return
    assert layer.get_timer() == 5.2  # E and F are off; only K runs
    layer.receive(response(req, 200, "OK"), peer, now=0.3)
    assert events(layer) == [] and sent(layer) == []
    layer.handle_timer(5.2)
    assert events(layer) == [TransactionTerminated(tx=tx, at=5.2)]


# --- Reliable transports: no A/E/G retransmissions ------------------------------------------


@pytest.mark.parametrize("method", ["INVITE", "BYE"], ids=["client-invite", "client-bye"])
def test_reliable_client_never_retransmits(method: str) -> None:
    layer = TransactionLayer()
    req = request(method)
    tx = layer.send_request(req, TCP, now=0.0)
    assert layer.datagrams_to_send() == [(req.to_bytes(), TCP)]
    assert layer.get_timer() == 32.0  # only Timer B / F
    layer.handle_timer(32.0)
    assert sent(layer) == []
    assert [type(ev) for ev in events(layer)] == [TransactionTimedOut, TransactionTerminated]
    assert layer.state(tx) is None


def test_reliable_server_invite_never_retransmits_non_2xx() -> None:
    layer = TransactionLayer()
    inv = request()
    layer.receive(inv, TCP, now=0.0)
    (ev,) = events(layer)
    assert isinstance(ev, RequestReceived) and ev.tx is not None
    sent(layer)
    layer.send_response(ev.tx, response(inv, 503, "Service Unavailable"), now=0.0)
    assert len(sent(layer)) == 1
    assert layer.get_timer() == 32.0  # Timer H only, no G
    layer.receive(request("ACK", to_tag="tt1"), TCP, now=0.1)
    # Timer I is 0 over TCP: the ACK ends the transaction at once.
    assert events(layer) == [TransactionTerminated(tx=ev.tx, at=0.1)]
    assert len(layer) == 0 and layer.get_timer() is None


# --- Server INVITE: 100 Trying, retransmissions, Timers G, H, I -----------------------------


def start_server_invite(
    peer: Peer = UDP, now: float = 0.0, **kw: Any
) -> tuple[TransactionLayer, SipRequest, str]:
    layer = TransactionLayer()
    inv = request(**kw)
    layer.receive(inv, peer, now)
    (ev,) = events(layer)
    assert isinstance(ev, RequestReceived) and ev.tx is not None and ev.request is inv
    return layer, inv, ev.tx


def test_server_invite_sends_100_trying_and_absorbs_retransmissions() -> None:
    layer, inv, tx = start_server_invite(extra=("Timestamp: 54.2",))
    ((trying_bytes, to),) = layer.datagrams_to_send()
    assert to == UDP
    trying = parse_message(trying_bytes)
    assert isinstance(trying, SipResponse)
    assert trying.status == 100 and trying.to_tag is None  # §17.2.1: no To tag on 100
    assert trying.headers.get("timestamp") == "54.2"  # §8.2.6.1
    assert layer.state(tx) is ServerInviteState.PROCEEDING

    layer.receive(request(extra=("Timestamp: 54.2",)), UDP, now=0.5)
    assert sent(layer) == [trying_bytes]  # absorbed; the last provisional is resent
    ringing = response(inv, 180, "Ringing")
    layer.send_response(tx, ringing, now=1.0)
    assert sent(layer) == [ringing.to_bytes()]
    layer.receive(request(), UDP, now=1.5)
    assert sent(layer) == [ringing.to_bytes()]
    assert events(layer) == []
    assert layer.get_timer() is None  # Proceeding waits for the TU


def test_server_invite_without_automatic_trying() -> None:
    layer = TransactionLayer(send_trying=False)
    layer.receive(request(), UDP, now=0.0)
    assert sent(layer) == []
    layer.receive(request(), UDP, now=0.5)  # nothing to resend yet
    assert sent(layer) == []
    assert len(events(layer)) == 1


def test_server_invite_timer_g_then_h() -> None:
    layer, inv, tx = start_server_invite(now=10.0)
    sent(layer)
    busy = response(inv, 486, "Busy Here")
    layer.send_response(tx, busy, now=10.0)
    assert sent(layer) == [busy.to_bytes()]
    assert layer.state(tx) is ServerInviteState.COMPLETED
    # §17.2.1: G starts at T1, doubles, caps at T2; H = 64*T1.
    fired = []
    while (t := layer.get_timer()) is not None and t < 42.0:
        layer.handle_timer(t)
        assert sent(layer) == [busy.to_bytes()]
        fired.append(t - 10.0)
    assert fired == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    layer.receive(request(), UDP, now=41.0)  # retransmitted INVITE: the final again
    assert sent(layer) == [busy.to_bytes()]
    assert layer.get_timer() == 42.0
    layer.handle_timer(42.0)
    assert events(layer) == [
        TransactionTimedOut(tx=tx, method="INVITE", timer="H", at=42.0),
        TransactionTerminated(tx=tx, at=42.0),
    ]
    assert len(layer) == 0


def test_server_invite_ack_confirms_then_timer_i() -> None:
    layer, inv, tx = start_server_invite()
    sent(layer)
    layer.send_response(tx, response(inv, 404, "Not Found", to_tag="srv"), now=0.0)
    sent(layer)
    layer.handle_timer(0.5)
    assert len(sent(layer)) == 1  # one Timer G retransmission
    ack = request("ACK", to_tag="srv")  # same branch as the INVITE (§17.1.1.3)
    layer.receive(ack, UDP, now=1.0)
    assert layer.state(tx) is ServerInviteState.CONFIRMED
    assert events(layer) == []  # the ACK for a non-2xx is the transaction's
    assert layer.get_timer() == 6.0  # G and H off; Timer I = T4
    layer.receive(request("ACK", to_tag="srv"), UDP, now=2.0)  # absorbed
    layer.receive(request(), UDP, now=2.5)  # a very late INVITE copy: absorbed too
    assert sent(layer) == [] and events(layer) == []
    layer.handle_timer(6.0)
    assert events(layer) == [TransactionTerminated(tx=tx, at=6.0)]
    assert len(layer) == 0 and layer.get_timer() is None


def test_server_invite_discards_responses_after_the_final() -> None:
    layer, inv, tx = start_server_invite()
    sent(layer)
    layer.send_response(tx, response(inv, 486, "Busy Here"), now=0.0)
    sent(layer)
    layer.send_response(tx, response(inv, 500, "Oops"), now=0.1)
    layer.send_response(tx, response(inv, 180, "Ringing"), now=0.1)
    assert sent(layer) == []
    assert layer.state(tx) is ServerInviteState.COMPLETED


# --- Server INVITE: 2xx retransmission, ACK, Timer L (RFC 6026) -----------------------------


@pytest.mark.parametrize("peer", PEERS, ids=PEER_IDS)
def test_2xx_retransmitted_until_ack_then_timer_l(peer: Peer) -> None:
    layer, inv, tx = start_server_invite(peer)
    sent(layer)
    ok = response(inv, 200, "OK", to_tag="srv")
    layer.send_response(tx, ok, now=0.0)
    assert sent(layer) == [ok.to_bytes()]
    assert layer.state(tx) is ServerInviteState.ACCEPTED
    # §13.3.1.4: T1, 2T1 ... capped at T2, on reliable transports too.
    assert deadlines(layer, until=8.0) == [0.5, 1.5, 3.5, 7.5]
    assert sent(layer) == [ok.to_bytes()] * 4
    layer.receive(request(), peer, now=8.0)  # RFC 6026: a retransmitted INVITE is absorbed
    assert sent(layer) == [] and events(layer) == []

    ack = ack_for_2xx(inv, ok)
    layer.receive(ack, peer, now=9.0)
    assert events(layer) == [RequestReceived(tx=None, request=ack, peer=peer, at=9.0)]
    assert layer.get_timer() == 32.0  # retransmissions stopped; only Timer L left
    layer.receive(ack_for_2xx(inv, ok), peer, now=10.0)  # ACKs keep going to the TU
    assert len(events(layer)) == 1
    layer.handle_timer(32.0)
    assert sent(layer) == []
    assert events(layer) == [TransactionTerminated(tx=tx, at=32.0)]
    assert len(layer) == 0 and layer.get_timer() is None


def test_timer_l_without_ack_times_out() -> None:
    layer, inv, tx = start_server_invite()
    sent(layer)
    ok = response(inv, 200, "OK", to_tag="srv")
    layer.send_response(tx, ok, now=0.0)
    sent(layer)
    fired = deadlines(layer, until=32.0)
    assert fired == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert sent(layer) == [ok.to_bytes()] * len(fired)
    assert layer.get_timer() == 32.0
    layer.handle_timer(32.0)
    assert events(layer) == [
        TransactionTimedOut(tx=tx, method="INVITE", timer="L", at=32.0),
        TransactionTerminated(tx=tx, at=32.0),
    ]
    assert len(layer) == 0


def test_ack_reusing_the_invite_branch_also_stops_2xx() -> None:
    layer, inv, tx = start_server_invite()
    sent(layer)
    layer.send_response(tx, response(inv, 200, "OK", to_tag="srv"), now=0.0)
    sent(layer)
    ack = request("ACK", to_tag="srv")  # a sloppy UAC: same branch as the INVITE
    layer.receive(ack, UDP, now=0.2)
    assert events(layer) == [RequestReceived(tx=None, request=ack, peer=UDP, at=0.2)]
    assert layer.get_timer() == 32.0


def test_ack_for_another_cseq_does_not_stop_2xx() -> None:
    layer, inv, tx = start_server_invite()
    sent(layer)
    ok = response(inv, 200, "OK", to_tag="srv")
    layer.send_response(tx, ok, now=0.0)
    stale = request("ACK", branch="z9hG4bK-old", cseq=0, to_tag="srv")
    layer.receive(stale, UDP, now=0.2)
    assert events(layer) == [RequestReceived(tx=None, request=stale, peer=UDP, at=0.2)]
    assert layer.get_timer() == 0.5  # still retransmitting


def test_further_2xx_from_tu_replaces_the_retransmitted_one() -> None:
    layer, inv, tx = start_server_invite()
    sent(layer)
    layer.send_response(tx, response(inv, 200, "OK", to_tag="srv"), now=0.0)
    second = make_response(inv, 200, "OK", to_tag="srv", body=b"v=0\r\n")
    layer.send_response(tx, second, now=0.1)
    sent(layer)
    layer.handle_timer(0.5)
    assert sent(layer) == [second.to_bytes()]


# --- Server non-INVITE: Trying, Proceeding, Timer J, RFC 4320 -------------------------------


@pytest.mark.parametrize(("peer", "timer_j"), [(UDP, 32.0), (TCP, 0.0)], ids=PEER_IDS)
def test_server_non_invite_and_timer_j(peer: Peer, timer_j: float) -> None:
    layer = TransactionLayer()
    bye = request("BYE", to_tag="tt1")
    layer.receive(bye, peer, now=0.0)
    (ev,) = events(layer)
    assert isinstance(ev, RequestReceived) and ev.tx is not None
    tx = ev.tx
    assert sent(layer) == []  # no automatic 100 for non-INVITE (RFC 4320 §4.1)
    layer.receive(request("BYE", to_tag="tt1"), peer, now=0.1)  # Trying: absorbed silently
    assert sent(layer) == [] and events(layer) == []
    ok = response(bye, 200, "OK", to_tag=None)
    layer.send_response(tx, ok, now=0.2)
    assert sent(layer) == [ok.to_bytes()]
    if timer_j == 0.0:
        assert events(layer) == [TransactionTerminated(tx=tx, at=0.2)]
        return
    assert layer.state(tx) is ServerNonInviteState.COMPLETED
    layer.receive(request("BYE", to_tag="tt1"), peer, now=1.0)
    assert sent(layer) == [ok.to_bytes()]  # Completed: the final again
    layer.send_response(tx, response(bye, 500, "Late"), now=1.1)  # §17.2.2: discarded
    assert sent(layer) == []
    assert layer.get_timer() == 32.2
    layer.handle_timer(32.2)
    assert events(layer) == [TransactionTerminated(tx=tx, at=32.2)]


def test_server_non_invite_proceeding_resends_provisional() -> None:
    layer = TransactionLayer()
    sub = request("SUBSCRIBE")
    layer.receive(sub, UDP, now=0.0)
    tx = new_server_tx(layer)
    trying = response(sub, 100, "Trying", to_tag=None)
    layer.send_response(tx, trying, now=2.0)
    assert layer.state(tx) is ServerNonInviteState.PROCEEDING
    sent(layer)
    layer.receive(request("SUBSCRIBE"), UDP, now=2.5)
    assert sent(layer) == [trying.to_bytes()]


def test_rfc4320_no_408_to_non_invite_the_transaction_just_ends() -> None:
    layer = TransactionLayer()
    msg = request("MESSAGE")
    layer.receive(msg, UDP, now=0.0)
    tx = new_server_tx(layer)
    layer.send_response(tx, response(msg, 408, "Request Timeout"), now=31.0)
    assert sent(layer) == []  # §4.2: never sent
    assert events(layer) == [TransactionTerminated(tx=tx, at=31.0)]
    assert len(layer) == 0


@pytest.mark.parametrize(
    ("status", "reason"),
    [(180, "Ringing"), (183, "Session Progress")],
    ids=["180", "183"],
)
def test_rfc4320_only_100_as_provisional_to_non_invite(status: int, reason: str) -> None:
    layer = TransactionLayer()
    msg = request("INFO", to_tag="tt1")
    layer.receive(msg, UDP, now=0.0)
    tx = new_server_tx(layer)
    layer.send_response(tx, response(msg, status, reason), now=1.0)
    assert sent(layer) == []  # §4.1: dropped
    assert layer.state(tx) is ServerNonInviteState.TRYING
    ok = response(msg, 200, "OK")
    layer.send_response(tx, ok, now=2.0)
    assert sent(layer) == [ok.to_bytes()]


def test_408_to_invite_is_fine() -> None:
    layer, inv, tx = start_server_invite()
    sent(layer)
    layer.send_response(tx, response(inv, 408, "Request Timeout"), now=1.0)
    assert layer.state(tx) is ServerInviteState.COMPLETED


# --- Matching: CANCEL, strays, RFC 2543, requests for nothing -------------------------------


def test_cancel_matches_the_invite_server_transaction() -> None:
    layer, _, invite_tx = start_server_invite()
    cancel = request("CANCEL")
    layer.receive(cancel, UDP, now=1.0)
    (ev,) = events(layer)
    assert isinstance(ev, RequestReceived) and ev.tx is not None
    assert ev.tx != invite_tx  # CANCEL has its own non-INVITE server transaction
    assert layer.invite_tx_for_cancel(cancel) == invite_tx
    assert layer.state(ev.tx) is ServerNonInviteState.TRYING


@pytest.mark.parametrize(
    "kwargs",
    [{"branch": "z9hG4bK-other"}, {"host": "192.0.2.99"}, {"port": 5080}],
    ids=["other-branch", "other-sent-by-host", "other-sent-by-port"],
)
def test_cancel_for_no_invite_is_still_surfaced(kwargs: dict[str, Any]) -> None:
    layer, _, _ = start_server_invite()
    cancel = request("CANCEL", **kwargs)
    layer.receive(cancel, UDP, now=1.0)
    (ev,) = events(layer)
    assert isinstance(ev, RequestReceived) and ev.tx is not None  # the TU answers 481
    assert layer.invite_tx_for_cancel(cancel) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "BYE", "to_tag": "nobody"},
        {"method": "INFO", "to_tag": "nobody"},
        {"method": "OPTIONS"},
    ],
    ids=["bye-no-dialog", "info-no-dialog", "options"],
)
def test_requests_matching_nothing_start_a_transaction(kwargs: dict[str, Any]) -> None:
    layer = TransactionLayer()
    req = request(**kwargs)
    layer.receive(req, UDP, now=0.0)
    (ev,) = events(layer)
    assert isinstance(ev, RequestReceived) and ev.tx is not None and ev.request is req
    gone = response(req, 481, "Call/Transaction Does Not Exist")
    layer.send_response(ev.tx, gone, now=0.0)
    assert sent(layer) == [gone.to_bytes()]


def test_ack_matching_nothing_goes_to_the_tu() -> None:
    layer = TransactionLayer()
    ack = request("ACK", branch="z9hG4bK-lost", to_tag="x")
    layer.receive(ack, UDP, now=0.0)
    assert events(layer) == [RequestReceived(tx=None, request=ack, peer=UDP, at=0.0)]
    assert len(layer) == 0 and sent(layer) == []


@pytest.mark.parametrize(
    ("branch", "method"),
    [("z9hG4bK-unknown", "INVITE"), ("z9hG4bK-b1", "CANCEL"), (None, "INVITE")],
    ids=["unknown-branch", "known-branch-other-method", "no-branch"],
)
def test_stray_responses(branch: str | None, method: str) -> None:
    layer = TransactionLayer()
    layer.send_request(request(), UDP, now=0.0)
    stray = response(request(method, branch=branch), 200, "OK")
    layer.receive(stray, UDP, now=1.0)
    assert events(layer) == [StrayResponse(response=stray, peer=UDP, at=1.0)]
    assert len(layer) == 1


@pytest.mark.parametrize("branch", [None, "1234abcd"], ids=["no-branch", "rfc2543-branch"])
def test_rfc2543_matching(branch: str | None) -> None:
    layer, inv, tx = start_server_invite(branch=branch)
    (trying,) = sent(layer)
    layer.receive(request(branch=branch), UDP, now=0.5)  # retransmission
    assert sent(layer) == [trying] and events(layer) == []
    # Another Call-ID (or CSeq) is another transaction.
    layer.receive(request(branch=branch, call_id="call-2@192.0.2.10"), UDP, now=0.6)
    assert len(events(layer)) == 1 and len(layer) == 2
    sent(layer)
    # CANCEL matches by the same key with the method set aside (§9.2).
    assert layer.invite_tx_for_cancel(request("CANCEL", branch=branch)) == tx
    # The ACK for our 486 carries our To tag; it still matches (§17.2.3).
    layer.send_response(tx, response(inv, 486, "Busy Here", to_tag="srv"), now=1.0)
    sent(layer)
    layer.receive(request("ACK", branch=branch, to_tag="srv"), UDP, now=1.1)
    assert layer.state(tx) is ServerInviteState.CONFIRMED
    assert events(layer) == []
    # An ACK with a To tag we never sent does not.
    odd = request("ACK", branch=branch, to_tag="someone-else")
    layer.receive(odd, UDP, now=1.2)
    assert events(layer) == [RequestReceived(tx=None, request=odd, peer=UDP, at=1.2)]


def test_rfc2543_ack_for_2xx_stops_retransmissions() -> None:
    layer, inv, tx = start_server_invite(branch=None)
    sent(layer)
    layer.send_response(tx, response(inv, 200, "OK", to_tag="srv"), now=0.0)
    ack = request("ACK", branch=None, to_tag="srv")
    layer.receive(ack, UDP, now=0.1)
    assert events(layer) == [RequestReceived(tx=None, request=ack, peer=UDP, at=0.1)]
    assert layer.get_timer() == 32.0


def test_broken_invite_raises_and_changes_nothing() -> None:
    layer = TransactionLayer()
    good = request()
    # Built by hand (parse_message would refuse it): no Call-ID, which the 100 Trying copies.
    headers = Headers([(k, v) for k, v in good.headers.items() if k != "call-id"])
    with pytest.raises(SipParseError, match="Call-ID"):
        layer.receive(SipRequest("INVITE", good.uri, headers), UDP, now=0.0)
    assert len(layer) == 0 and events(layer) == [] and sent(layer) == []


def test_broken_response_raises_and_changes_nothing() -> None:
    layer = TransactionLayer()
    layer.send_request(request(), UDP, now=0.0)
    # parse_message refuses this now; the layer must still not be corrupted by one built by hand.
    bad = SipResponse(200, "OK", Headers([("Call-ID", "x")]))
    with pytest.raises(SipParseError):
        layer.receive(bad, UDP, now=1.0)
    assert events(layer) == [] and len(layer) == 1


# --- API misuse and terminate() -------------------------------------------------------------


@pytest.mark.parametrize(
    ("req", "match"),
    [
        (request("ACK"), "send_stateless"),
        (request(branch="abc"), "z9hG4bK"),
        (request(branch=None), "z9hG4bK"),
    ],
    ids=["ack", "no-magic-cookie", "no-branch"],
)
def test_send_request_refuses(req: SipRequest, match: str) -> None:
    with pytest.raises(InvalidStateError, match=match):
        TransactionLayer().send_request(req, UDP, now=0.0)


def test_send_request_refuses_a_duplicate_branch() -> None:
    layer = TransactionLayer()
    layer.send_request(request(), UDP, now=0.0)
    with pytest.raises(InvalidStateError, match="already"):
        layer.send_request(request(), UDP, now=0.0)
    # CANCEL shares the INVITE's branch (§9.1) but is its own transaction.
    layer.send_request(request("CANCEL"), UDP, now=0.0)
    assert len(layer) == 2


def test_send_response_refuses_unknown_and_client_transactions() -> None:
    layer = TransactionLayer()
    req = request()
    client_tx = layer.send_request(req, UDP, now=0.0)
    for tx in ("s|nope", client_tx):
        with pytest.raises(InvalidStateError, match="No live server transaction"):
            layer.send_response(tx, response(req, 200, "OK"), now=0.0)


def test_send_stateless_queues_bytes_only() -> None:
    layer = TransactionLayer()
    ack = request("ACK", branch="z9hG4bK-2xx", to_tag="a")
    layer.send_stateless(ack, UDP)
    assert layer.datagrams_to_send() == [(ack.to_bytes(), UDP)]
    assert layer.datagrams_to_send() == []
    assert len(layer) == 0 and layer.get_timer() is None


def test_terminate_frees_silently() -> None:
    layer, inv, tx = start_server_invite()
    layer.send_response(tx, response(inv, 200, "OK"), now=0.0)
    layer.terminate(tx)
    layer.terminate(tx)  # unknown: a no-op
    assert len(layer) == 0 and layer.state(tx) is None
    assert layer.get_timer() is None  # its timers went stale
    layer.handle_timer(100.0)
    sent(layer)
    # The Accepted index is cleared too: a late ACK is just passed up.
    ack = ack_for_2xx(inv, response(inv, 200, "OK"))
    layer.receive(ack, UDP, now=101.0)
    assert events(layer) == [RequestReceived(tx=None, request=ack, peer=UDP, at=101.0)]


def test_events_are_frozen() -> None:
    ev = TransactionTerminated(tx="t", at=1.0)
    with pytest.raises(AttributeError):
        ev.at = 2.0  # type: ignore[misc]


# --- Whole exchanges and leaks ---------------------------------------------------------------


def test_ten_thousand_transactions_leave_nothing_behind() -> None:
    uac = TransactionLayer()
    uas = TransactionLayer()
    a_side = Peer("udp", "192.0.2.10", 5060)
    b_side = Peer("udp", "198.51.100.1", 5060)
    for i in range(10_000):
        now = i * 0.001
        invite = request(branch=f"z9hG4bK-{i}", call_id=f"leak-{i}")
        uac.send_request(invite, b_side, now)
        deliver(uac, uas, a_side, now)
        (rx,) = events(uas)
        assert isinstance(rx, RequestReceived) and rx.tx is not None
        if i % 2:
            uas.send_response(rx.tx, response(rx.request, 486, "Busy Here"), now)
            deliver(uas, uac, b_side, now)  # 100 Trying and 486: the UAC ACKs by itself
            deliver(uac, uas, a_side, now)
        else:
            uas.send_response(rx.tx, response(rx.request, 200, "OK"), now)
            deliver(uas, uac, b_side, now)
            ok = events(uac)[-1]
            assert isinstance(ok, ResponseReceived) and ok.response.status == 200
            uac.send_stateless(ack_for_2xx(invite, ok.response, f"z9hG4bK-ack-{i}"), b_side)
            deliver(uac, uas, a_side, now)
        events(uac)
        events(uas)
    assert len(uac) == len(uas) == 10_000
    for layer in (uac, uas):
        layer.handle_timer(100.0)
        evs = events(layer)
        assert len(evs) == 10_000 and all(isinstance(e, TransactionTerminated) for e in evs)
        assert not any(isinstance(e, TransactionTimedOut) for e in evs)
        assert len(layer) == 0 and layer.get_timer() is None
        assert layer._accepted == {} and layer._heap == []  # white box: no index keeps a ref
        assert layer.datagrams_to_send() == []


@pytest.mark.parametrize("method", ["INVITE", "OPTIONS"], ids=["invite", "options"])
def test_compaction_never_loses_a_live_timer(method: str) -> None:
    layer = TransactionLayer()
    n = 3_000  # two timers each: the heap crosses the compaction threshold several times
    for i in range(n):
        layer.send_request(request(method, branch=f"z9hG4bK-{i}"), UDP, now=0.0)
    sent(layer)
    layer.handle_timer(0.5)
    assert len(sent(layer)) == n  # every transaction still has its Timer A / E
    layer.handle_timer(32.0)
    assert len([e for e in events(layer) if isinstance(e, TransactionTimedOut)]) == n


def test_stale_timers_are_compacted() -> None:
    layer = TransactionLayer()
    for i in range(5_000):
        req = request("OPTIONS", branch=f"z9hG4bK-{i}")
        layer.send_request(req, UDP, now=0.0)  # arms E and F
        layer.receive(response(req, 200, "OK"), UDP, now=0.0)  # cancels both, arms K
    # Two stale entries per transaction would be 10,000 more; compaction keeps the heap near
    # the live timer count (one K each).
    assert len(layer._heap) <= 2 * 5_000 + 1
    assert layer.get_timer() == 5.0
