"""Overload control: how much of the new-call load to refuse, from what the process measures.

A switch that accepts every INVITE past its capacity collapses: replies queue behind new work,
callers retransmit, retransmissions are more work, and goodput falls below what an idle switch
carries. Refusing the surplus early, with a stateless 503 + Retry-After (the core's
``set_shedding``), keeps the admitted calls fast.

Theory of operation
-------------------
Every ``TICK`` the glue feeds :meth:`LoadGate.update` with the process's CPU seconds, how
late the tick itself ran (event-loop lag), and how many bytes wait in the SIP UDP socket's
kernel queue (``/proc/net/udp``: :func:`udp_rx_queue`). The share of new INVITEs to shed is
an integral controller: it grows while the smoothed CPU share (EWMA over about half a second)
is above ``target_cpu``, and by a step while requests wait in the kernel longer than
``max_delay`` (the queue's bytes over the rate this process reads them) or the loop lags more
than ``max_lag``; it shrinks slowly while none of these holds, and quickly once the process is
well below its target with an empty queue (the load dropped). An integral controller needs no
model of what a call costs: it settles where the admitted calls keep the process just under
its target, whatever the machine.

Why the queue: the socket's buffer is large (switch/transport.py: bursts must queue, not be
dropped), so a saturated switch turns overload into seconds of queueing, not into lag of its
own loop, and a CPU share alone misses a core shared with other processes. A standing queue
is latency every caller already suffers: measured, 2x the clean rate without it kept 8 MiB in
the queue and gave p50 2 s, p99 17 s.

Sans-IO: the caller passes the readings; nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

TICK = 0.1  # seconds between readings
SMOOTHING = 0.3  # EWMA weight of the newest reading (about half a second of memory)
GAIN = 1.0  # shed share per tick per unit of CPU share above the target
QUEUE_STEP = 0.05  # growth per tick while requests wait longer than max_delay (x depth, <= 4)
LAG_STEP = 0.05  # growth per tick while the event loop lags
RELEASE = 0.03  # shrink per tick when nothing says overload ...
IDLE_RELEASE = 0.15  # ... and this when there is plenty of room (the load dropped)


@dataclass(slots=True)
class LoadGate:
    target_cpu: float = 0.85  # DCE_OVERLOAD_CPU; 0 turns shedding off
    max_lag: float = 0.05  # DCE_OVERLOAD_LAG, seconds
    max_delay: float = 0.02  # how long requests may wait in the kernel queue, seconds
    cpu: float = 0.0  # smoothed CPU share of the process (0..1 of one core)
    lag: float = 0.0  # the last tick's lateness, seconds
    queue: int = 0  # the last reading of the kernel queue, bytes
    delay: float = 0.0  # how long that queue takes to read at the rate bytes were read
    shed: float = 0.0  # share of new INVITEs to refuse (0..1)
    _at: float | None = None
    _cpu_s: float = 0.0
    _read: int = 0

    def update(
        self, now: float, cpu_seconds: float, lag: float, queue: int = 0, read: int = 0
    ) -> float:
        """Take one reading: monotonic ``now``, the process's CPU seconds, the tick's lag, the
        bytes waiting in the kernel's receive queue and the bytes read so far (a counter).
        Returns the share of new INVITEs to shed."""
        if self._at is None or now <= self._at:
            self._at, self._cpu_s, self._read = now, cpu_seconds, read
            return self.shed
        span = now - self._at
        share = (cpu_seconds - self._cpu_s) / span
        rate = (read - self._read) / span
        self._at, self._cpu_s, self._read = now, cpu_seconds, read
        self.cpu += SMOOTHING * (min(share, 1.0) - self.cpu)
        self.lag = lag
        self.queue = queue
        # Time to read what waits, at the rate this process reads (a queue it reads fast is
        # short; one it barely touches is long, however few bytes).
        self.delay = queue / rate if rate > 0 else (1.0 if queue else 0.0)
        if self.target_cpu <= 0.0:
            self.shed = 0.0
            return 0.0
        if self.delay > self.max_delay:
            # The deeper the queue, the faster: it must drain, not just stop growing.
            step = QUEUE_STEP * min(4.0, self.delay / self.max_delay)
        elif self.cpu > self.target_cpu:
            step = GAIN * (self.cpu - self.target_cpu)
        elif lag > self.max_lag:
            step = LAG_STEP
        elif self.cpu < self.target_cpu - 0.25 and not queue:
            step = -IDLE_RELEASE
        else:
            step = -RELEASE
        self.shed = min(0.99, max(0.0, self.shed + step))
        return self.shed


def udp_rx_queue(port: int, tables: tuple[str, ...] = ("/proc/net/udp", "/proc/net/udp6")) -> int:
    """Bytes waiting in the receive queues of the UDP sockets bound to ``port`` (Linux)."""
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
