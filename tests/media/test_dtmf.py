"""DTMF (media/dtmf.py): SIP INFO bodies, and RFC 4733 event sequencing on virtual time."""

from __future__ import annotations

import pytest

from media.dtmf import DtmfPacket, DtmfSequencer

# ------------------------------------------------------------------------- SIP INFO


# ------------------------------------------------------------------------- RFC 4733 sequencing


def drive(seq: DtmfSequencer, until: float = 60.0) -> list[tuple[float, DtmfPacket]]:
    """Fire the sequencer's timer until it is idle: (when, packet) for every packet."""
    out: list[tuple[float, DtmfPacket]] = []
    while (at := seq.get_timer()) is not None and at <= until:
        out += [(round(at, 6), p) for p in seq.packets_to_send(at)]
    return out


def test_one_digit_grows_every_20ms_then_ends_three_times() -> None:
    seq = DtmfSequencer()
    assert seq.get_timer() is None
    assert seq.send("5", 160, now=10.0)
    assert seq.get_timer() == 10.0  # the first packet is due at once
    sent = drive(seq)
    # 160 ms = 1280 samples: 7 growing packets (160 .. 1120), then the end three times.
    assert [(t, p.duration, p.end, p.marker) for t, p in sent] == [
        (10.0, 160, False, True),
        (10.02, 320, False, False),
        (10.04, 480, False, False),
        (10.06, 640, False, False),
        (10.08, 800, False, False),
        (10.1, 960, False, False),
        (10.12, 1120, False, False),
        (10.14, 1280, True, False),
        (10.14, 1280, True, False),
        (10.14, 1280, True, False),
    ]
    assert {p.event for _, p in sent} == {5}
    assert seq.get_timer() is None  # idle once the 60 ms gap is over


def test_nothing_is_sent_before_the_timer() -> None:
    seq = DtmfSequencer()
    seq.send("1", 100, now=0.0)
    assert len(seq.packets_to_send(0.0)) == 1
    assert seq.get_timer() == pytest.approx(0.02)
    assert seq.packets_to_send(0.019) == []
    assert seq.get_timer() == pytest.approx(0.02)


def test_a_late_step_delays_the_next_one() -> None:
    """Each step is due one interval after the previous one was taken (like call_later)."""
    seq = DtmfSequencer()
    seq.send("1", 100, now=0.0)
    seq.packets_to_send(0.0)
    assert len(seq.packets_to_send(0.05)) == 1  # one step only, however late
    assert seq.get_timer() == pytest.approx(0.07)


def test_digits_queue_behind_each_other_with_a_gap() -> None:
    seq = DtmfSequencer()
    assert seq.send("5", 40, now=0.0)
    assert seq.send("#", 100, now=0.001)  # busy: queued, the timer is unchanged
    assert seq.get_timer() == 0.0
    sent = drive(seq)
    starts = [(t, p.event) for t, p in sent if p.marker]
    assert starts == [(0.0, 5), (0.08, 11)]  # "5" ends at 0.02, then 60 ms of gap
    # 40 ms: one growing packet and the end; 100 ms: 4 growing packets and the end.
    assert [p.duration for t, p in sent if p.event == 5] == [160, 320, 320, 320]
    assert [p.duration for t, p in sent if p.event == 11] == [160, 320, 480, 640, 800, 800, 800]


def test_a_digit_during_the_gap_waits_for_it_and_one_after_starts_at_once() -> None:
    seq = DtmfSequencer()
    seq.send("1", 40, now=0.0)
    seq.packets_to_send(0.0)
    seq.packets_to_send(0.02)  # the end: the gap runs to 0.08
    assert seq.send("2", 40, now=0.03)
    assert seq.get_timer() == pytest.approx(0.08)
    assert seq.packets_to_send(0.05) == []
    first = seq.packets_to_send(0.08)
    assert [(p.event, p.marker) for p in first] == [(2, True)]
    drive(seq)
    assert seq.get_timer() is None
    assert seq.send("3", 40, now=5.0)
    assert seq.get_timer() == 5.0


@pytest.mark.parametrize(
    ("duration_ms", "samples"),
    [(10, 320), (40, 320), (250, 2000), (5000, 40000), (60000, 40000)],
    ids=["clamped-up", "shortest", "plain", "longest", "clamped-down"],
)
def test_duration_is_clamped_to_40ms_5s(duration_ms: int, samples: int) -> None:
    seq = DtmfSequencer()
    seq.send("9", duration_ms, now=0.0)
    assert drive(seq)[-1][1].duration == samples


def test_unknown_digits_are_refused_and_letters_accepted() -> None:
    seq = DtmfSequencer()
    assert not seq.send("X", 160, now=0.0)
    assert not seq.send("12", 160, now=0.0)
    assert seq.get_timer() is None
    assert seq.send("d", 160, now=0.0)
    assert drive(seq)[0][1].event == 15


def test_packet_payload_is_the_rfc4733_event() -> None:
    # event, E|R|volume (-10 dBm0), duration in samples.
    assert DtmfPacket(event=11, end=True, duration=800, marker=False).payload == b"\x0b\x8a\x03\x20"
    assert DtmfPacket(event=0, end=False, duration=160, marker=True).payload == b"\x00\x0a\x00\xa0"
