"""dce/load.py: the overload controller on virtual time, and reading the kernel's UDP queue."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from dce.load import TICK, LoadGate, udp_rx_queue


def run(gate: LoadGate, ticks: int, cpu_share: float, queue: int = 0, rate: int = 500_000,
        start: float = 0.0) -> float:
    """Feed ``ticks`` readings of a steady load; returns the last shed share."""
    now, cpu, read = start, start * cpu_share, int(start * rate)
    gate.update(now, cpu, 0.0, queue, read)
    for _ in range(ticks):
        now += TICK
        cpu += TICK * cpu_share
        read += int(TICK * rate)
        gate.update(now, cpu, 0.0, queue, read)
    return gate.shed


def test_below_target_nothing_is_shed() -> None:
    assert run(LoadGate(), 50, cpu_share=0.6) == 0.0


def test_a_saturated_core_sheds_more_and_more() -> None:
    gate = LoadGate()
    first = run(gate, 8, cpu_share=1.0)  # the smoothed share passes the target after ~6 ticks
    later = run(gate, 10, cpu_share=1.0, start=10.0)
    assert 0.0 < first < later


def test_a_standing_kernel_queue_sheds_even_when_cpu_looks_low() -> None:
    # A core shared with other processes: little CPU of our own, but requests wait 100 ms.
    gate = LoadGate()
    shed = run(gate, 10, cpu_share=0.5, queue=50_000, rate=500_000)
    assert gate.delay > gate.max_delay and shed >= 0.5


def test_shedding_stops_within_seconds_once_the_load_drops() -> None:
    gate = LoadGate()
    run(gate, 40, cpu_share=1.0, queue=200_000)
    assert gate.shed > 0.9
    ticks = 0
    now = 100.0
    gate.update(now, 0.0, 0.0, 0, 0)
    while gate.shed > 0.0:
        now += TICK
        ticks += 1
        gate.update(now, now * 0.3, 0.0, 0, int(now * 1000))
    assert ticks * TICK <= 2.0


def test_zero_target_turns_it_off() -> None:
    assert run(LoadGate(target_cpu=0.0), 20, cpu_share=1.0, queue=10**6) == 0.0


def test_udp_rx_queue_reads_a_real_socket_backlog(tmp_path: Path) -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    port = rx.getsockname()[1]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert udp_rx_queue(port) == 0
        for _ in range(10):
            tx.sendto(b"x" * 500, ("127.0.0.1", port))
        deadline = time.monotonic() + 2
        while udp_rx_queue(port) < 5000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert udp_rx_queue(port) >= 5000  # kernel accounting adds overhead per datagram
        rx.settimeout(1)
        for _ in range(10):
            rx.recv(1000)
        assert udp_rx_queue(port) == 0
    finally:
        rx.close()
        tx.close()
