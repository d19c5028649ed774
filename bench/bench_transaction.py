"""Micro-benchmark: µs per complete INVITE exchange through a client and a server
TransactionLayer (no sockets, virtual time).

One exchange: the UAC layer sends an INVITE; the UAS layer receives it (and answers 100 Trying
by itself); the UAS TU sends 180 and 200, which the UAC layer receives; the UAC TU sends the ACK
for the 2xx statelessly and the UAS layer receives it (stopping the 2xx retransmissions); then
Timers L and M end both transactions. Two figures:

- ``layer``: only the transaction layers' work. Every message the layers receive was parsed
  beforehand (fresh objects, so header caches start empty), and the datagrams they emit are
  drained but not parsed. Serialising the 100/180/200 the UAS layer sends is counted.
- ``wire``: the same exchange with the bytes carried across: each datagram is parsed with
  ``parse_message`` and the UAS TU builds its responses with ``make_response``.

Run: ``.venv/bin/python bench/bench_transaction.py [exchanges] [rounds]``
"""

from __future__ import annotations

import gc
import sys
import time

from switch.message import SipRequest, SipResponse, make_response, parse_message
from switch.peer import Peer
from switch.transaction import TransactionLayer

UAC_ADDR = Peer("udp", "192.0.2.10", 5060)
UAS_ADDR = Peer("udp", "198.51.100.1", 5060)

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
)


def invite_bytes(i: int) -> bytes:
    head = (
        f"INVITE sip:+15551230000@198.51.100.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-{i:08x};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f'From: "Caller" <sip:+15559870000@192.0.2.10>;tag=f{i:08x}\r\n'
        f"To: <sip:+15551230000@198.51.100.1>\r\n"
        f"Call-ID: bench-{i:08x}@192.0.2.10\r\n"
        f"CSeq: 1 INVITE\r\n"
        f"Contact: <sip:+15559870000@192.0.2.10:5060>\r\n"
        f"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n"
        f"Content-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n"
    )
    return head.encode() + SDP


def ack_bytes(i: int) -> bytes:
    return (
        f"ACK sip:+15551230000@198.51.100.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-a{i:08x};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f'From: "Caller" <sip:+15559870000@192.0.2.10>;tag=f{i:08x}\r\n'
        f"To: <sip:+15551230000@198.51.100.1>;tag=t{i:08x}\r\n"
        f"Call-ID: bench-{i:08x}@192.0.2.10\r\n"
        f"CSeq: 1 ACK\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def _request(data: bytes) -> SipRequest:
    msg = parse_message(data)
    assert isinstance(msg, SipRequest)
    return msg


def _response(data: bytes) -> SipResponse:
    msg = parse_message(data)
    assert isinstance(msg, SipResponse)
    return msg


def _drain(layer: TransactionLayer) -> None:
    while layer.next_event() is not None:
        pass


def _freeze() -> None:
    """Keep the prepared input out of the collector's way (GC stays on for what the layers
    allocate): otherwise every full collection walks the whole input and the figure grows
    with the round size."""
    gc.collect()
    gc.freeze()


def _finish(uac: TransactionLayer, uas: TransactionLayer, n: int) -> None:
    """Fire Timers L and M (and every stale entry) and check that nothing is left."""
    for layer in (uac, uas):
        layer.handle_timer(1e9)
        _drain(layer)
        assert len(layer) == 0 and layer.get_timer() is None, "leak"
        assert layer.datagrams_to_send() == []


def bench_layer(n: int) -> float:
    """Seconds for ``n`` exchanges, counting only the transaction layers."""
    uac = TransactionLayer()
    uas = TransactionLayer()
    # Everything each layer will be fed, prepared outside the timed region.
    work = []
    for i in range(n):
        inv_out = _request(invite_bytes(i))  # what the UAC TU hands its layer
        inv_in = _request(invite_bytes(i))  # the same INVITE as the UAS layer parses it
        ringing = make_response(inv_in, 180, "Ringing", to_tag=f"t{i:08x}")
        ok = make_response(inv_in, 200, "OK", to_tag=f"t{i:08x}", body=SDP)
        ok.headers.add("Content-Type", "application/sdp")
        wire_100 = _response(make_response(inv_in, 100, "Trying").to_bytes())
        wire_180 = _response(ringing.to_bytes())
        wire_200 = _response(ok.to_bytes())
        ack_out = _request(ack_bytes(i))
        ack_in = _request(ack_bytes(i))
        work.append((inv_out, inv_in, ringing, ok, wire_100, wire_180, wire_200, ack_out, ack_in))
    _freeze()
    start = time.perf_counter()
    for i, (inv_out, inv_in, ringing, ok, w100, w180, w200, ack_out, ack_in) in enumerate(work):
        now = i * 1e-4
        uac.send_request(inv_out, UAS_ADDR, now)
        uac.datagrams_to_send()
        uas.receive(inv_in, UAC_ADDR, now)
        ev = uas.next_event()
        tx = ev.tx  # type: ignore[union-attr]
        assert tx is not None
        uas.datagrams_to_send()  # 100 Trying
        uac.receive(w100, UAS_ADDR, now)
        uas.send_response(tx, ringing, now)
        uas.datagrams_to_send()
        uac.receive(w180, UAS_ADDR, now)
        uas.send_response(tx, ok, now)
        uas.datagrams_to_send()
        uac.receive(w200, UAS_ADDR, now)
        _drain(uac)
        uac.send_stateless(ack_out, UAS_ADDR)
        uac.datagrams_to_send()
        uas.receive(ack_in, UAC_ADDR, now)
        _drain(uas)
    _finish(uac, uas, n)
    elapsed = time.perf_counter() - start
    gc.unfreeze()
    return elapsed


def bench_wire(n: int) -> float:
    """Seconds for ``n`` exchanges with parsing and TU-built responses included."""
    uac = TransactionLayer()
    uas = TransactionLayer()
    invites = [_request(invite_bytes(i)) for i in range(n)]
    acks = [_request(ack_bytes(i)) for i in range(n)]
    _freeze()
    start = time.perf_counter()
    for i in range(n):
        now = i * 1e-4
        uac.send_request(invites[i], UAS_ADDR, now)
        for data, _ in uac.datagrams_to_send():
            uas.receive(parse_message(data), UAC_ADDR, now)
        ev = uas.next_event()
        tx = ev.tx  # type: ignore[union-attr]
        req = ev.request  # type: ignore[union-attr]
        assert tx is not None and isinstance(req, SipRequest)
        uas.send_response(tx, make_response(req, 180, "Ringing", to_tag=f"t{i:08x}"), now)
        ok = make_response(req, 200, "OK", to_tag=f"t{i:08x}", body=SDP)
        ok.headers.add("Content-Type", "application/sdp")
        uas.send_response(tx, ok, now)
        for data, _ in uas.datagrams_to_send():  # 100, 180, 200
            uac.receive(parse_message(data), UAS_ADDR, now)
        _drain(uac)
        uac.send_stateless(acks[i], UAS_ADDR)
        for data, _ in uac.datagrams_to_send():
            uas.receive(parse_message(data), UAC_ADDR, now)
        _drain(uas)
    _finish(uac, uas, n)
    elapsed = time.perf_counter() - start
    gc.unfreeze()
    return elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    print(f"Python {sys.version.split()[0]}, {n} INVITE exchanges per round, best of {rounds}")
    for name, fn in (("layer", bench_layer), ("wire", bench_wire)):
        best = min(fn(n) for _ in range(rounds))
        print(f"{name:5s}: {best / n * 1e6:7.1f} µs per INVITE client+server transaction pair")


if __name__ == "__main__":
    main()
