"""The operator ends a live call (``SwitchCore.hang_up``: admin API, ``dce hangup``)."""

from __future__ import annotations

from switch.effects import Routed
from switch.message import SipRequest, SipResponse, make_response
from switch.record import OPERATOR_HANGUP, HangupSide, Outcome
from tests.switch.test_core import B1, TARGETS, A, Harness, answer, in_dialog, invite, start_call


def test_answered_call_gets_bye_on_both_legs_and_says_operator() -> None:
    h = Harness()
    b_inv = start_call(h)
    answer(h, B1, b_inv, 200)
    (a_ok,) = h.take(A)
    assert isinstance(a_ok, SipResponse)
    h.feed(A, in_dialog("ACK", a_ok, 1, "z9hG4bKack", "sip:dce@127.0.0.1:5060"))
    h.take(B1)
    h.advance(3)
    (call_id,) = h.core.calls
    assert h.core.hang_up(call_id, h.now)
    h.pump()
    a_bye, b_bye = h.take(A), h.take(B1)
    assert [m.method for m in a_bye] == ["BYE"]  # type: ignore[union-attr]
    assert [m.method for m in b_bye] == ["BYE"]  # type: ignore[union-attr]
    assert h.core.live_calls == 0
    (ended,) = h.cdrs()
    assert ended.record.outcome is Outcome.ANSWERED  # still billable by its duration
    assert ended.record.hangup_side is HangupSide.OPERATOR
    assert ended.record.duration_ms == 3000
    for peer, bye in ((A, a_bye[0]), (B1, b_bye[0])):
        assert isinstance(bye, SipRequest)
        h.feed(peer, make_response(bye, 200, "OK"))
    h.advance(40)
    assert h.core.tables() == (0, 0, 0, 0, 0, 0, 0)


def test_ringing_call_is_cancelled_and_the_caller_told_why() -> None:
    h = Harness()
    b_inv = start_call(h)
    answer(h, B1, b_inv, 180)
    h.take(A)
    (call_id,) = h.core.calls
    assert h.core.hang_up(call_id, h.now)
    h.pump()
    (final,) = h.take(A)
    assert isinstance(final, SipResponse) and final.status == 480
    assert f'text="{OPERATOR_HANGUP}"' in (final.headers.get("reason") or "")
    assert [m.method for m in h.take(B1)] == ["CANCEL"]  # type: ignore[union-attr]
    (ended,) = h.cdrs()
    assert ended.record.outcome is Outcome.CANCELLED
    assert ended.record.hangup_side is HangupSide.OPERATOR
    assert ended.record.rule == OPERATOR_HANGUP
    assert ended.record.sip_status == 480


def test_call_still_routing_ends_and_a_late_route_is_ignored() -> None:
    h = Harness()
    h.feed(A, invite())
    h.take(A)
    (call_id,) = h.core.calls
    assert h.core.hang_up(call_id, h.now)
    h.pump()
    (final,) = h.take(A)
    assert isinstance(final, SipResponse) and final.status == 480
    assert not h.core.routed(call_id, Routed(targets=TARGETS), h.now)
    h.pump()
    assert h.take(B1) == []
    (ended,) = h.cdrs()
    assert ended.record.hangup_side is HangupSide.OPERATOR


def test_unknown_call_is_false() -> None:
    h = Harness()
    assert not h.core.hang_up("nope", 0.0)
