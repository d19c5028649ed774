"""Overload control: how much of the new-call load to refuse, from what the process measures.

A switch that accepts every INVITE past its capacity collapses: replies queue behind new work,
callers retransmit, retransmissions are more work, and goodput falls below what an idle switch
carries. Refusing the surplus early, with a stateless 503 + Retry-After (the core's
``set_shedding``), keeps the admitted calls fast.

Theory of operation
-------------------
What a caller suffers under overload is queueing: the SIP UDP socket's buffer is large
(switch/transport.py: bursts must queue, not be dropped), so a saturated switch turns its
surplus into seconds of waiting in the kernel, not into lag of its own loop. Measured, 2x the
clean rate with no control kept 8 MiB queued and gave an INVITE->200 p50 of 2 s, p99 17 s.
So the controlled quantity is that wait: every ``TICK`` the glue feeds :meth:`LoadGate.update`
with the bytes waiting in the socket's receive queue (:func:`socket_rx_queue`, one
``getsockopt``), the bytes read so far, the process's CPU seconds, how late the tick ran, and
how long the event loop's thread ran or waited for a CPU (:class:`RunClock`). The wait is the
queue over the rate this process reads it (``delay``; the kernel counts each datagram's buffer,
larger than its bytes, so this errs long, about twice on loopback).

Only a saturated loop sheds: one that ran or waited to run nearly all of the last ticks
(``busy`` >= ``BUSY``). On a core shared with other processes, the scheduler's time slices
alone queue requests for tens of ms while the switch is preempted, and a tick (which runs just
after the switch is scheduled again) sees that queue at its longest; refusing calls cannot
shorten it, and a loop that still sleeps part of the time has room for them. Measured before
this rule, on a core another process used half of: 76 % of 500 calls/s refused by a switch that
could carry them.

The share of new INVITEs to shed follows the delay as PIE (RFC 8033) drives its drop
probability: each tick it moves by ``ALPHA`` times how far the delay is from ``target_delay``
(relative to the target: up above it, down below it) plus ``BETA`` times how much the delay
grew since the last tick (a queue already draining needs no more shedding: this damps the
overshoot a plain integral controller has: 0.99 shed for a second at 2x in the model of
tests/dce/test_load.py), and drops
quickly once the process has plenty of room with an empty queue (the load dropped). A lagging
event loop counts as a delay above target; so does a CPU share above ``max_cpu`` when one is
set (headroom for something else on the core). The queue says when the core is full whoever
else uses it, so no model of what a call costs is needed: the share admitted settles where the
queue stays near the target, i.e. where the core is just busy, not on/off.

What it cannot prevent: a switch whose refusals alone cost more CPU than it gets (a core held
mostly by another process) still queues for seconds; callers then retransmit all that waits,
and each retransmission of a refused INVITE is refused again. Shrinking the socket's buffer
then (letting the kernel drop the surplus) was tried and is not done: it drops BYEs too, and a
BYE that comes back by retransmission seconds later makes a 0 s call billable.

Sans-IO: :class:`LoadGate` is given every reading and reads no clock; the readers below
(:func:`socket_rx_queue`, :class:`RunClock`) are what the glue calls.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

TICK = 0.1  # seconds between readings
SMOOTHING = 0.3  # EWMA weight of the newest CPU reading (about half a second of memory)
ALPHA = 0.05  # shed change per tick per unit of relative excess (delay / target - 1) ...
BETA = 0.15  # ... plus this per unit of relative growth of the delay since the last tick
STEP_MAX = 0.5  # at most this change per tick, either way
IDLE_RELEASE = 0.2  # shrink per tick once the queue is empty and the CPU well below full
IDLE_CPU = 0.7  # "well below"
BUSY = 0.9  # share of the time the loop ran or waited to run, above which it is saturated
BUSY_RISE = 0.5  # EWMA weight of a busier tick: saturation is seen within two or three ...
SO_MEMINFO = 55  # Linux >= 4.12: struct sk_meminfo; [0] is the receive queue's bytes


@dataclass(slots=True)
class LoadGate:
    target_delay: float = 0.05  # DCE_OVERLOAD_DELAY, seconds in the kernel queue; 0: off
    max_lag: float = 0.05  # DCE_OVERLOAD_LAG, seconds
    max_cpu: float = 1.0  # DCE_OVERLOAD_CPU: CPU share to stay under (0 or 1: no limit)
    cpu: float = 0.0  # smoothed CPU share of the process (0..1 of one core)
    lag: float = 0.0  # the last tick's lateness, seconds
    queue: int = 0  # the last reading of the kernel queue, bytes
    delay: float = 0.0  # how long that queue takes to read at the rate bytes were read
    shed: float = 0.0  # share of new INVITEs to refuse (0..1)
    busy: float = 1.0  # smoothed share of the time the loop ran or waited to run
    _at: float | None = None
    _cpu_s: float = 0.0
    _read: int = 0
    _busy_s: float | None = None

    def update(
        self, now: float, cpu_seconds: float, lag: float, queue: int = 0, read: int = 0,
        busy_seconds: float | None = None,
    ) -> float:
        """Take one reading: monotonic ``now``, the process's CPU seconds, the tick's lag, the
        bytes waiting in the kernel's receive queue, the bytes read so far (a counter) and the
        seconds the loop's thread ran or waited for a CPU so far (None: unknown, taken as
        saturated). Returns the share of new INVITEs to shed."""
        if self._at is None or now <= self._at:
            self._at, self._cpu_s, self._read = now, cpu_seconds, read
            self._busy_s = busy_seconds
            return self.shed
        span = now - self._at
        share = (cpu_seconds - self._cpu_s) / span
        rate = (read - self._read) / span
        busy = 1.0
        if busy_seconds is not None and self._busy_s is not None:
            busy = min(1.0, (busy_seconds - self._busy_s) / span)
        self._at, self._cpu_s, self._read = now, cpu_seconds, read
        self._busy_s = busy_seconds
        self.cpu += SMOOTHING * (min(share, 1.0) - self.cpu)
        # ... while room is believed slowly, as the CPU share.
        self.busy += (BUSY_RISE if busy > self.busy else SMOOTHING) * (busy - self.busy)
        self.lag = lag
        self.queue = queue
        before = self.delay
        # Time to read what waits, at the rate this process reads (a queue it reads fast is
        # short; one it barely touches is long, however few bytes).
        self.delay = queue / rate if rate > 0 else (1.0 if queue else 0.0)
        if self.target_delay <= 0.0:
            self.shed = 0.0
            return 0.0
        # Relative excess over the target: > 0 asks for more shedding, < 0 for less.
        excess = self.delay / self.target_delay - 1.0
        if lag > self.max_lag:
            excess = max(excess, lag / self.max_lag - 1.0)
        saturated = self.busy >= BUSY
        if not saturated:
            # Room left: what waits, waits for the scheduler, not for this process's work.
            excess = min(excess, 0.0) if queue else -1.0
        if 0.0 < self.max_cpu < 1.0 and self.cpu > self.max_cpu:
            saturated = True  # the operator's ceiling, whatever else uses the core
            excess = max(excess, 10.0 * (self.cpu - self.max_cpu))
        if excess <= 0.0 and not queue and self.cpu < IDLE_CPU:
            step = -IDLE_RELEASE
        elif not saturated:
            step = ALPHA * excess - ALPHA  # ease off steadily, whatever the delay does
        else:
            step = ALPHA * excess + BETA * (self.delay - before) / self.target_delay
            # Below the target a growing queue is no reason to refuse anyone yet (on a shared
            # core it grows and shrinks with every time slice).
            step = min(STEP_MAX if excess > 0.0 else 0.0, max(-STEP_MAX, step))
        self.shed = min(0.99, max(0.0, self.shed + step))
        return self.shed


class RunClock:
    """Seconds the calling thread ran or waited for a CPU since it started (Linux
    ``/proc/thread-self/schedstat``: on-CPU and run-queue nanoseconds). Open it on the
    thread to measure; :meth:`read` is one ``pread``. None where the kernel does not say."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self._fd = None

    def read(self) -> float | None:
        if self._fd is None:
            return None
        try:
            fields = os.pread(self._fd, 128, 0).split()
            return (int(fields[0]) + int(fields[1])) / 1e9
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def socket_rx_queue(sock: socket.socket) -> int | None:
    """Bytes in ``sock``'s receive queue (SO_MEMINFO: one syscall, this socket only), or None
    where the kernel or the socket object cannot say."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * 9)
    except (OSError, AttributeError, TypeError):
        return None
    return int(struct.unpack_from("=I", raw)[0]) if len(raw) >= 4 else None


def udp_rx_queue(port: int, tables: tuple[str, ...] = ("/proc/net/udp", "/proc/net/udp6")) -> int:
    """Bytes waiting in the receive queues of the UDP sockets bound to ``port`` (Linux), read
    from /proc: the fallback of :func:`socket_rx_queue`, slower with many sockets open."""
    suffix = f":{port:04X}"
    total = 0
    for table in tables:
        try:
            with open(table) as fh:
                next(fh, None)
                for line in fh:
                    fields = line.split()
                    if len(fields) > 4 and fields[1].endswith(suffix):
                        total += int(fields[4].split(":")[1], 16)
        except OSError:
            continue
    return total
