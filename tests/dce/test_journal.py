"""dce/journal.py: records, recovery planning, segments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from dce.journal import (
    Beat,
    Confirmed,
    Durable,
    End,
    Journal,
    Recovery,
    Start,
    Up,
    plan_recovery,
    read_records,
)
from store.cdr import Cdr, Disposition
from switch.dialog import DialogSnapshot
from switch.record import HangupSide

T0 = datetime(2026, 12, 3, 15, 0, tzinfo=UTC)


def leg(call_id: str, port: int) -> DialogSnapshot:
    return DialogSnapshot(
        call_id=call_id,
        local_tag="lt",
        remote_tag="rt",
        local_uri="<sip:dce@127.0.0.1>",
        remote_uri=f"<sip:peer@127.0.0.1:{port}>",
        local_seq=7,
        remote_target=f"sip:peer@127.0.0.1:{port}",
        route_set=[],
        transport="udp",
        host="127.0.0.1",
        port=port,
    )


def start(call_id: str) -> Start:
    return Start(
        call_id=call_id, trunk_id="t1", source="sip", caller="13122600123",
        called="18005550100", received_at=T0,
    )


def up(call_id: str, *, min_duration_s: int = 60, price: int = 7_000_000) -> Up:
    cdr = Cdr(
        call_id=call_id, a_call_id=f"a-{call_id}", b_call_id=f"b-{call_id}", trunk_id="t1",
        caller="+13122600123", called="+18005550100", received_at=T0,
        answered_at=T0 + timedelta(seconds=2), ended_at=T0 + timedelta(seconds=2),
        disposition=Disposition.ANSWERED, sip_status=200, buyer_id="b1",
        endpoint="sip:b@127.0.0.1:5070", bid=9_000_000, price=price, attempts=1,
    )
    return Up(
        cdr=cdr, min_duration_s=min_duration_s, payout_pct=Decimal(70),
        a_leg=leg(f"a-{call_id}", 5080), b_leg=leg(f"b-{call_id}", 5070),
    )


def test_an_answered_call_cut_by_a_crash_is_ended_and_billed_to_the_last_beat() -> None:
    plan = plan_recovery([
        start("c1"), up("c1"), Confirmed(call_id="c1"),
        Beat(at=T0 + timedelta(seconds=30)), Beat(at=T0 + timedelta(seconds=92)),
    ])
    (cdr,) = plan.cdrs
    assert cdr.disposition is Disposition.INTERRUPTED and cdr.rule == "crash_recovery"
    assert cdr.hangup_side is HangupSide.SYSTEM
    assert cdr.duration_ms == 90_000  # answered at +2 s, last beat at +92 s
    assert cdr.ended_at == T0 + timedelta(seconds=92)
    assert cdr.billable and cdr.price == 7_000_000 and cdr.payout == 4_900_000
    assert [(s.call_id, s.port) for s in plan.legs] == [("a-c1", 5080), ("b-c1", 5070)]
    assert plan.interrupted == 1


def test_too_short_to_bill_and_unconfirmed_calls_are_not_billable() -> None:
    plan = plan_recovery([
        start("short"), up("short"), Confirmed(call_id="short"),
        start("noack"), up("noack", min_duration_s=0),
        Beat(at=T0 + timedelta(seconds=32)),
    ])
    short, noack = sorted(plan.cdrs, key=lambda c: c.call_id, reverse=True)
    assert short.call_id == "short" and short.duration_ms == 30_000 and not short.billable
    assert short.price is None and short.payout is None
    assert noack.answered_at is None and noack.duration_ms == 0 and not noack.billable
    assert len(plan.legs) == 4  # both calls' legs get a BYE


def test_finished_calls_are_rewritten_unless_durable_and_setup_calls_get_a_cdr() -> None:
    done = up("done").cdr
    ended = up("ended").cdr
    plan = plan_recovery([
        start("done"), End(cdr=done), Durable(call_ids=["done"]),
        start("ended"), End(cdr=ended),
        start("ringing"),
    ])
    by_id = {c.call_id: c for c in plan.cdrs}
    assert set(by_id) == {"ended", "ringing"}
    assert by_id["ended"] == ended
    ringing = by_id["ringing"]
    assert ringing.disposition is Disposition.INTERRUPTED and not ringing.billable
    assert ringing.caller == "+13122600123"  # normalised as routing would have
    assert plan.legs == [] and plan.rewritten == 1 and plan.unanswered == 1


def test_a_torn_last_line_is_counted_not_fatal() -> None:
    recovery = Recovery()
    good = b'{"type":"start","call_id":"c","trunk_id":"t","source":"sip","caller":"x","called":"y","received_at":"2026-12-03T15:00:00Z"}'
    records = list(read_records([good, b'{"type":"up","cdr":{"call'], recovery))
    assert len(records) == 1 and recovery.bad_lines == 1


def test_segments_rotate_and_go_once_their_calls_are_durable(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_bytes=600)
    journal.open()
    for i in range(6):
        journal.append(start(f"c{i}"))
        journal.flush()
    segments = sorted(tmp_path.glob("*.jnl"))
    assert len(segments) >= 2
    journal.durable([f"c{i}" for i in range(6)])
    journal.flush()
    # Every call is durable: only the segment being written is left.
    assert len(list(tmp_path.glob("*.jnl"))) == 1
    journal.close()


def test_a_new_process_recovers_what_the_old_one_wrote(tmp_path: Path) -> None:
    old = Journal(tmp_path)
    old.open()
    old.append(start("c1"))
    old.append(up("c1"))
    old.append(Confirmed(call_id="c1"))
    old.append(Beat(at=T0 + timedelta(seconds=12)))
    old.flush()  # then the process is killed: no close()
    new = Journal(tmp_path)
    plan, paths = new.recover()
    new.open()
    assert plan.interrupted == 1 and plan.cdrs[0].duration_ms == 10_000
    assert len(paths) == 1
    Journal.forget(paths)
    assert new.leftovers() == []
    new.close()


def test_bytes_that_are_not_utf8_are_journaled_and_come_back_exact(tmp_path: Path) -> None:
    from dce.journal import safe_start, safe_up

    odd = b"call\xff\x00\\x".decode("utf-8", "surrogateescape")
    old = Journal(tmp_path)
    old.open()
    rec = up("c1")
    rec = Up(cdr=rec.cdr, min_duration_s=0, payout_pct=None,
             a_leg=DialogSnapshot(**{**{f: getattr(rec.a_leg, f) for f in rec.a_leg.__struct_fields__},
                                    "call_id": odd}),
             b_leg=rec.b_leg)
    old.append(safe_start(Start(call_id="c1", trunk_id="t1", source="sip", caller=odd,
                                called="x", received_at=T0)))
    old.append(safe_up(rec))
    old.flush()
    plan, _ = Journal(tmp_path).recover()
    assert plan.bad_lines == 0
    assert plan.legs[0].call_id == odd  # exact: the BYE goes into the very dialog
    assert [c.call_id for c in plan.cdrs] == ["c1"]


@pytest.mark.parametrize("field", ["local_tag", "remote_tag", "local_uri", "remote_uri",
                                   "remote_target", "route_set", "host"])
def test_odd_bytes_in_any_dialog_field_come_back_exact(tmp_path: Path, field: str) -> None:
    from dce.journal import safe_up

    odd = b"x\xfe\x1b\\y".decode("utf-8", "surrogateescape")
    rec = up("c1")
    value: object = [f"<sip:{odd}>"] if field == "route_set" else odd
    b_leg = msgspec.structs.replace(rec.b_leg, **{field: value})
    journal = Journal(tmp_path)
    journal.open()
    journal.append(safe_up(msgspec.structs.replace(rec, b_leg=b_leg)))
    journal.flush()
    plan, _ = Journal(tmp_path).recover()
    assert plan.bad_lines == 0
    assert plan.legs == [rec.a_leg, b_leg]  # the plain leg as it was, the odd one exact
