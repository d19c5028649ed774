"""The instants a call's record gives /metrics: the first buyer response relayed to the caller
and the first ringback (``CallRecord.first_response``, ``CallRecord.ringing``), on fake time."""

from __future__ import annotations

from switch.message import SipResponse, make_response
from switch.record import CallRecord
from tests.switch.test_core import B1, B2, A, Harness, answer, in_dialog, start_call


def ended(h: Harness) -> CallRecord:
    (done,) = h.cdrs()
    return done.record


def test_ringing_then_answer() -> None:
    h = Harness()
    h.now = 10.0
    b_inv = start_call(h)
    h.now = 10.05
    h.feed(B1, make_response(b_inv, 100, "Trying"))  # not a response the caller hears
    h.now = 10.3
    h.feed(B1, make_response(b_inv, 180, "Ringing", to_tag="bt"))
    h.now = 10.5
    h.feed(B1, make_response(b_inv, 183, "Session Progress", to_tag="bt"))
    h.now = 12.0
    answer(h, B1, b_inv, 200)
    ok = next(m for m in h.take(A) if isinstance(m, SipResponse) and m.status == 200)
    h.feed(A, in_dialog("ACK", ok, 1, "z9hG4bKack", "sip:x@127.0.0.1:5060"))
    h.now = 20.0
    h.feed(A, in_dialog("BYE", ok, 2, "z9hG4bKbye", "sip:x@127.0.0.1:5060"))
    record = ended(h)
    assert (record.received, record.first_response, record.ringing, record.answered) == (
        10.0, 10.3, 10.3, 12.0)


def test_answer_without_ringback_is_the_first_response() -> None:
    h = Harness()
    b_inv = start_call(h)
    h.now = 0.7
    answer(h, B1, b_inv, 200)
    ok = next(m for m in h.take(A) if isinstance(m, SipResponse) and m.status == 200)
    h.feed(A, in_dialog("ACK", ok, 1, "z9hG4bKack", "sip:x@127.0.0.1:5060"))
    h.feed(A, in_dialog("BYE", ok, 2, "z9hG4bKbye", "sip:x@127.0.0.1:5060"))
    record = ended(h)
    assert (record.first_response, record.ringing) == (0.7, None)


def test_failover_hides_the_first_buyers_status() -> None:
    """The first buyer's 486 never reaches the caller; the second one's 486 does."""
    h = Harness()
    b_inv = start_call(h)
    h.now = 0.2
    answer(h, B1, b_inv, 486)
    (b2_inv,) = h.take(B2)
    h.now = 0.9
    answer(h, B2, b2_inv, 486)  # type: ignore[arg-type]
    record = ended(h)
    assert record.sip_status == 486
    assert (record.first_response, record.ringing) == (0.9, None)


def test_no_buyer_response_means_no_first_response() -> None:
    """Every endpoint silent (not even 100 Trying): the caller's 480 is the switch's own."""
    h = Harness()
    start_call(h)
    h.advance(40.0)
    record = ended(h)
    assert record.sip_status == 480
    assert (record.first_response, record.ringing) == (None, None)
