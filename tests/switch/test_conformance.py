"""RFC 3261 answers the switch owes: 405/501 with Allow, 416, 420 with Unsupported, 415, 400
for conflicting Content-Length and 513 above the size limit on every transport, no PRACK in
Allow, and responses that match no transaction never forwarded (docs/sip.md)."""

from __future__ import annotations

import pytest

from switch.context import ALLOW
from switch.message import MAX_MESSAGE, SipRequest, SipResponse, make_response, parse_message
from tests.switch.sipcheck import TCP, UDP, WS, check_answer, feed, new_core
from tests.switch.test_core import (
    B1,
    SDP,
    A,
    Harness,
    answer,
    in_dialog,
    start_call,
)

TRANSPORTS = pytest.mark.parametrize("peer", [UDP, WS, TCP], ids=["udp", "ws", "tcp"])


def request(method: str = "OPTIONS", extra: str = "", body: bytes = b"", cseq: str = "") -> bytes:
    return (
        f"{method} sip:+18005550100@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKconf{method}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:a@192.0.2.7>;tag=fc\r\nTo: <sip:b@127.0.0.1>\r\n"
        f"Call-ID: conf-{method}@192.0.2.7\r\nCSeq: {cseq or '1 ' + method}\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def one_answer(data: bytes, peer: object = UDP) -> SipResponse:
    got = feed(new_core(), data, peer)  # type: ignore[arg-type]
    (raw,) = got.sent
    check_answer(data, raw)
    resp = parse_message(raw)
    assert isinstance(resp, SipResponse)
    return resp


def test_unknown_require_and_proxy_require_tags_get_420_listing_them() -> None:
    resp = one_answer(request(extra="Require: 100rel, foo\r\nProxy-Require: bar, foo\r\n"))
    assert (resp.status, resp.reason) == (420, "Bad Extension")
    assert resp.headers.get("unsupported") == "100rel, foo, bar"


@pytest.mark.parametrize("method", ["ACK", "CANCEL"])
def test_ack_and_cancel_are_exempt_from_require(method: str) -> None:
    got = feed(new_core(), request(method, extra="Require: foo\r\n"), UDP)
    assert got.statuses() == ([] if method == "ACK" else [481])  # no INVITE to cancel


@pytest.mark.parametrize(
    ("method", "status", "reason"),
    [
        ("REGISTER", 405, "Method Not Allowed"),
        ("SUBSCRIBE", 405, "Method Not Allowed"),
        ("PRACK", 405, "Method Not Allowed"),
        ("NEWMETHOD", 501, "Not Implemented"),
        ("options", 501, "Not Implemented"),
    ],
)
def test_methods_the_switch_does_not_take(method: str, status: int, reason: str) -> None:
    resp = one_answer(request(method))
    assert (resp.status, resp.reason) == (status, reason)
    assert resp.headers.get("allow") == ALLOW


def test_allow_tells_the_truth() -> None:
    assert "PRACK" not in ALLOW  # no 100rel (RFC 3262)
    resp = one_answer(request("OPTIONS"))
    assert resp.status == 200 and resp.headers.get("allow") == ALLOW
    h = Harness()
    b_inv = start_call(h)
    assert b_inv.headers.get("allow") == ALLOW
    assert b_inv.headers.get("supported") is None and b_inv.headers.get("require") is None


def test_unsupported_request_uri_scheme_is_416() -> None:
    data = request().replace(b"OPTIONS sip:+18005550100@127.0.0.1", b"OPTIONS im:bob@example.com")
    resp = one_answer(data)
    assert (resp.status, resp.reason) == (416, "Unsupported URI Scheme 'im'")


def test_non_sdp_offer_is_415_with_accept() -> None:
    resp = one_answer(request("INVITE", "Content-Type: text/plain\r\n", b"hello"))
    assert resp.status == 415 and resp.headers.get("accept") == "application/sdp"


@TRANSPORTS
def test_conflicting_content_length_is_400_on_every_transport(peer: object) -> None:
    data = request(extra="Content-Length: 4\r\n", body=b"hello")
    got = feed(new_core(), data, peer)  # type: ignore[arg-type]
    (raw,) = got.sent
    assert check_answer(data, raw) == 400
    assert b"Content-Length" in raw.split(b"\r\n", 1)[0]


@TRANSPORTS
def test_a_request_above_the_limit_is_513_on_every_transport(peer: object) -> None:
    small = request("INVITE", "Content-Type: application/sdp\r\n", SDP)
    pad = MAX_MESSAGE + 1 - len(small)
    big = request("INVITE", "Content-Type: application/sdp\r\n", SDP + b"a=x:" + b"p" * pad)
    assert len(big) > MAX_MESSAGE >= len(small) + pad - 1
    got = feed(new_core(), big, peer)  # type: ignore[arg-type]
    (raw,) = got.sent
    assert check_answer(big, raw) == 513
    fits = request("INVITE", "Content-Type: application/sdp\r\n", SDP + b"a=x:" + b"p" * (pad - 40))
    assert len(fits) <= MAX_MESSAGE
    assert feed(new_core(), fits, peer).statuses() == [100]  # type: ignore[arg-type]


def test_stateless_answers_keep_their_to_tag_across_retransmissions() -> None:
    data = request(cseq="x OPTIONS")
    first = feed(new_core(), data, UDP).sent
    again = feed(new_core(seed=99), data, UDP).sent
    assert first == again and b";tag=" in first[0]


def test_max_forwards_with_leading_zeros_is_a_number() -> None:
    data = request("INVITE", "Content-Type: application/sdp\r\n", SDP).replace(
        b"Max-Forwards: 70", b"Max-Forwards: 0068"
    )
    assert feed(new_core(), data, UDP).statuses() == [100]


# --- inside a call --------------------------------------------------------------------------


def _answered(h: Harness) -> SipResponse:
    b_inv = start_call(h)
    answer(h, B1, b_inv, 200)
    (a_ok,) = [m for m in h.take(A) if isinstance(m, SipResponse)]
    h.feed(A, in_dialog("ACK", a_ok, 1, "z9hG4bKack", "sip:dce@127.0.0.1:5060"))
    h.take(B1)
    return a_ok


def test_prack_in_the_early_dialog_is_405_not_491() -> None:
    h = Harness()
    b_inv = start_call(h)
    answer(h, B1, b_inv, 183)
    (early,) = h.take(A)
    assert isinstance(early, SipResponse)
    h.feed(A, in_dialog("PRACK", early, 2, "z9hG4bKprack", "sip:dce@127.0.0.1:5060"))
    (resp,) = h.take(A)
    assert isinstance(resp, SipResponse) and resp.status == 405
    assert resp.headers.get("allow") == ALLOW
    assert h.take(B1) == []


def test_a_reinvite_requiring_an_extension_is_420_and_not_relayed() -> None:
    h = Harness()
    a_ok = _answered(h)
    reinvite = in_dialog("INVITE", a_ok, 2, "z9hG4bKre", "sip:dce@127.0.0.1:5060").replace(
        b"Content-Length: 0", b"Require: timer\r\nContent-Length: 0"
    )
    h.feed(A, reinvite)
    (resp,) = h.take(A)
    assert isinstance(resp, SipResponse) and resp.status == 420
    assert resp.headers.get("unsupported") == "timer"
    assert h.take(B1) == []


def test_a_buyers_100rel_and_extensions_are_not_passed_off_as_the_switchs() -> None:
    h = Harness()
    b_inv = start_call(h)
    ringing = make_response(
        b_inv,
        180,
        "Ringing",
        to_tag="bt",
        headers=[("require", "100rel"), ("rseq", "1"), ("supported", "timer, 100rel")],
    )
    h.feed(B1, ringing)
    (relayed,) = h.take(A)
    assert isinstance(relayed, SipResponse) and relayed.status == 180
    for name in ("require", "rseq", "supported"):
        assert relayed.headers.get(name) is None


# --- responses that match no transaction ------------------------------------------------------


def _response(status: int, branch: str, method: str = "INVITE", call_id: str = "x@y") -> bytes:
    return (
        f"SIP/2.0 {status} Whatever\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch={branch}\r\n"
        f"From: <sip:a@127.0.0.1>;tag=f1\r\nTo: <sip:b@127.0.0.1>;tag=t1\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("status", [100, 180, 200, 486, 503])
def test_a_response_to_no_transaction_is_never_forwarded(status: int) -> None:
    h = Harness()
    start_call(h)  # a live call whose legs could be (wrongly) written to
    h.take(A)
    for peer in (A, B1):
        h.feed(peer, _response(status, "z9hG4bKnobody"))
    assert h.sent == {}


def test_a_late_2xx_retransmission_gets_our_ack_again_and_nothing_else() -> None:
    h = Harness()
    b_inv = start_call(h)
    ok = answer(h, B1, b_inv, 200)
    (a_ok,) = [m for m in h.take(A) if isinstance(m, SipResponse)]
    h.feed(A, in_dialog("ACK", a_ok, 1, "z9hG4bKack", "sip:dce@127.0.0.1:5060"))
    (ack,) = h.take(B1)
    h.advance(40.0)  # Timer M: the buyer INVITE transaction is gone
    h.take(A)
    h.take(B1)
    h.feed(B1, ok)  # now a stray 2xx
    again = h.take(B1)
    assert [m.method for m in again if isinstance(m, SipRequest)] == ["ACK"]
    assert again[0].to_bytes() == ack.to_bytes()
    assert h.take(A) == []  # the caller hears nothing of it


# --- found by the fuzzers (test_fuzz_*.py); each once left state behind or raised -----------


def test_a_request_with_a_broken_to_leaves_no_transaction() -> None:
    core = new_core()
    data = request().replace(b"To: <sip:b@127.0.0.1>", b'To: "Mr. J. User <sip:b@127.0.0.1>')
    got = feed(core, data, UDP)
    assert got.statuses() == [400]
    assert len(core.layer) == 0  # no server transaction waiting for an answer forever


@pytest.mark.parametrize("header", ["CSeq: \u00b2 OPTIONS", "Content-Length: \u00b2"])
def test_digits_int_refuses_are_a_400_not_an_exception(header: str) -> None:
    name = header.split(":")[0].encode()
    data = b"\r\n".join(
        header.encode() if line.startswith(name + b":") else line
        for line in request().split(b"\r\n")
    )
    assert feed(new_core(), data, UDP).statuses() == [400]


def test_a_buyer_that_only_sends_100_is_cancelled_and_forgotten() -> None:
    """§9.1: a 100 is a provisional, so the CANCEL may go; the attempt does not leak."""
    h = Harness(ring_timeout=3.0)
    b_inv = start_call(h)
    h.feed(B1, make_response(b_inv, 100, "Trying"))
    h.advance(3.0)  # ring timeout: the attempt is abandoned
    cancels = [m for m in h.take(B1) if isinstance(m, SipRequest) and m.method == "CANCEL"]
    assert len(cancels) == 1
    h.advance(200.0)
    assert list(h.core.tables()) == [0] * len(h.core.tables())
    assert len(h.core.layer) == 0


def test_a_relayed_info_the_buyer_never_answers_leaves_nothing() -> None:
    """RFC 4320: no 408 to the caller, but its server transaction must still end."""
    h = Harness()
    a_ok = _answered(h)
    h.feed(A, in_dialog("INFO", a_ok, 2, "z9hG4bKinfo", "sip:dce@127.0.0.1:5060"))
    (info,) = h.take(B1)
    assert isinstance(info, SipRequest) and info.method == "INFO"
    h.advance(40.0)  # Timer F on the buyer leg
    assert [m for m in h.take(A) if isinstance(m, SipResponse)] == []  # no 408 (RFC 4320)
    h.feed(A, in_dialog("BYE", a_ok, 3, "z9hG4bKbye", "sip:dce@127.0.0.1:5060"))
    (bye,) = [m for m in h.take(B1) if isinstance(m, SipRequest) and m.method == "BYE"]
    h.feed(B1, make_response(bye, 200, "OK"))
    h.advance(200.0)
    assert len(h.core.layer) == 0 and h.core.calls == {}
