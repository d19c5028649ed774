"""DTMF toward the buyer: digits -> RFC 4733 telephone-event packets.

The switch turns a browser's SIP INFO key presses into digits (switch/dtmf.py, the
``SendDtmf`` effect); :class:`DtmfSequencer` turns digits into the RFC 4733 packets to send
and says when (sans-IO: the caller passes ``now`` and arms one timer for
:meth:`DtmfSequencer.get_timer`).

Theory of operation (RFC 4733 §2.5): one event per digit, one packet every 20 ms whose
duration field grows by 160 samples (8 kHz clock), the first packet with the marker bit.
When the duration reaches the digit's length the final packet (E bit) goes three times
(§2.5.1.4), then a 60 ms gap before the next queued digit, so the receiver sees two events.
Every packet of an event shares one RTP timestamp, chosen by the sender when the marker
packet goes; sequence numbers, SSRC and payload type are the sender's too.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

#: RFC 4733 §3.2 event codes for the DTMF digits.
DTMF_EVENTS = {d: i for i, d in enumerate("0123456789*#ABCD")}
#: One event packet every 20 ms ...
PACKET_INTERVAL = 0.02
#: ... whose duration field grows by 20 ms of the 8 kHz telephone-event clock.
PACKET_SAMPLES = 160
#: Silence between two digits, so the receiver sees two events.
GAP = 0.06
#: RFC 4733 §2.3.4: the power level, in -dBm0 (10: -10 dBm0).
VOLUME = 10
#: How often the final packet goes (RFC 4733 §2.5.1.4).
END_COPIES = 3
#: Digit lengths (ms) the sequencer accepts; shorter or longer ones are clamped.
MIN_DURATION_MS = 40
MAX_DURATION_MS = 5000

_EVENT = struct.Struct("!BBH")


@dataclass(slots=True, frozen=True)
class DtmfPacket:
    """One RFC 4733 telephone-event packet (§2.3), without its RTP header."""

    event: int  # DTMF_EVENTS value
    end: bool  # E bit: the event is over
    duration: int  # samples since the event began
    marker: bool  # first packet of an event: the sender picks the event's RTP timestamp

    @property
    def payload(self) -> bytes:
        """The 4-octet event payload: event, E|R|volume, duration."""
        return _EVENT.pack(self.event, (0x80 if self.end else 0) | VOLUME, self.duration)


class DtmfSequencer:
    """Digits in, RFC 4733 packets out, one digit after the other (sans-IO).

    :meth:`send` queues a digit; :meth:`packets_to_send` returns what is due at ``now``
    (one step: the next packet, or the three final ones); :meth:`get_timer` says when the
    next step is due, or None when idle. Each step is due one interval after the previous
    step was taken, as chained ``loop.call_later`` calls would be.
    """

    __slots__ = ("_current", "_due", "_queue")

    def __init__(self) -> None:
        self._queue: deque[tuple[int, int]] = deque()  # (event, length in samples)
        # The event being sent: (event, length in samples, samples elapsed at the next step).
        self._current: tuple[int, int, int] | None = None
        self._due: float | None = None  # None: idle, nothing queued and no gap pending

    def send(self, digit: str, duration_ms: int, now: float) -> bool:
        """Queue ``digit`` (0-9, *, #, A-D) for ``duration_ms``; False for an unknown digit."""
        event = DTMF_EVENTS.get(digit.upper())
        if event is None:
            return False
        ms = max(MIN_DURATION_MS, min(duration_ms, MAX_DURATION_MS))
        self._queue.append((event, ms * 8))  # the 8 kHz clock: 8 samples per ms
        if self._due is None:
            self._due = now
        return True

    def get_timer(self) -> float | None:
        """When :meth:`packets_to_send` has something to do next; None when idle."""
        return self._due

    def packets_to_send(self, now: float) -> list[DtmfPacket]:
        """The packets due at ``now`` (empty when none are); schedules the next step."""
        if self._due is None or now < self._due:
            return []
        if self._current is None:
            if not self._queue:
                self._due = None  # the gap after the last digit is over
                return []
            event, total = self._queue.popleft()
            self._current = (event, total, PACKET_SAMPLES)
            marker = True
        else:
            marker = False
        event, total, elapsed = self._current
        if elapsed < total:
            self._current = (event, total, elapsed + PACKET_SAMPLES)
            self._due = now + PACKET_INTERVAL
            return [DtmfPacket(event=event, end=False, duration=elapsed, marker=marker)]
        self._current = None
        self._due = now + GAP
        first = DtmfPacket(event=event, end=True, duration=total, marker=marker)
        again = DtmfPacket(event=event, end=True, duration=total, marker=False)
        return [first] + [again] * (END_COPIES - 1)
