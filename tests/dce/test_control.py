"""``dce calls``'s table (dce/control.py): aligned columns, and no terminal control from text a
peer chose (a caller number is whatever the INVITE said)."""

from __future__ import annotations

from datetime import UTC, datetime

from dce.control import _duration, _row, render_table


def test_columns_are_aligned_two_spaces_apart() -> None:
    lines = render_table(("A", "LONGER"), [["xyz", "1"], ["x", "22"]])
    assert lines == ["A    LONGER", "xyz  1", "x    22"]


def test_control_characters_are_escaped() -> None:
    (_, row) = render_table(("CALLER",), [["+1312\x1b[2J\r\n"]])
    assert row == "+1312\\x1b[2J\\x0d\\x0a"


def test_a_row_reads_the_api_item() -> None:
    now = datetime(2026, 1, 15, 12, 1, 5, tzinfo=UTC)
    item = {"call_id": "c1", "state": "answered", "received_at": "2026-01-15T12:00:00Z",
            "duration_ms": 61_000, "trunk_id": None, "caller": "+13122600123",
            "called": "+18005550100", "campaign_id": "main", "buyer_id": "b1",
            "packets_a_to_b": 3050, "packets_b_to_a": None}
    assert _row(item, now) == ["c1", "answered", "1m05s", "1m01s", "-", "+13122600123",
                               "+18005550100", "main", "b1", "3050", "-"]


def test_durations() -> None:
    assert [_duration(s) for s in (-1, 0, 59.9, 60, 3599, 3600, 7322)] == [
        "0s", "0s", "59s", "1m00s", "59m59s", "1h00m", "2h02m"]
