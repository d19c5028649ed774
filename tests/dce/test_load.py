"""dce/load.py: the overload controller on virtual time, and reading the kernel's UDP queue."""

from __future__ import annotations

import socket
import time

import pytest

from config.errors import ConfigError
from config.settings import load_settings
from dce.load import TICK, LoadGate, RunClock, socket_rx_queue, udp_rx_queue

RATE = 500_000  # bytes/s the process reads in these readings


def run(gate: LoadGate, ticks: int, cpu_share: float, queue: int = 0, rate: int = RATE,
        start: float = 0.0, lag: float = 0.0, busy: float | None = None) -> float:
    """Feed ``ticks`` readings of a steady load; returns the last shed share. ``busy``: the
    share of the time the loop ran or waited for a CPU (None: not measured)."""
    now, cpu, read = start, start * cpu_share, int(start * rate)
    ran = None if busy is None else start * busy
    gate.update(now, cpu, lag, queue, read, ran)
    for _ in range(ticks):
        now += TICK
        cpu += TICK * cpu_share
        read += int(TICK * rate)
        ran = None if ran is None or busy is None else ran + TICK * busy
        gate.update(now, cpu, lag, queue, read, ran)
    return gate.shed


class Switch:
    """A single-core switch on virtual time: calls offered at ``offered`` per second, each
    costing ``call_cpu`` seconds (``shed_cpu`` when refused), work waiting in a kernel queue
    that the switch reads as fast as its core allows."""

    BYTES_PER_CPU_S = 2_000_000

    def __init__(self, gate: LoadGate, call_cpu: float = 0.001, shed_cpu: float = 0.00005):
        self.gate, self.call_cpu, self.shed_cpu = gate, call_cpu, shed_cpu
        self.now = self.cpu = 0.0
        self.backlog = 0.0  # seconds of work waiting in the kernel queue
        self.read = 0
        self.admitted = 0.0

    def run(self, seconds: float, offered: float) -> list[tuple[float, float]]:
        """(shed share, queue delay in seconds) after each tick."""
        out = []
        for _ in range(round(seconds / TICK)):
            shed = self.gate.shed
            self.admitted += offered * TICK * (1 - shed)
            self.backlog += offered * TICK * ((1 - shed) * self.call_cpu + shed * self.shed_cpu)
            done = min(TICK, self.backlog)
            self.backlog -= done
            self.cpu += done
            self.read += int(done * self.BYTES_PER_CPU_S)
            self.now += TICK
            # The loop ran for the work it did (here no other process waits for the core).
            self.gate.update(self.now, self.cpu, 0.0,
                             int(self.backlog * self.BYTES_PER_CPU_S), self.read, self.cpu)
            out.append((self.gate.shed, self.backlog))
        return out


def test_a_busy_core_with_a_short_queue_sheds_nothing() -> None:
    # All of a core, but requests wait 10 ms: the switch keeps up, so every call is carried.
    assert run(LoadGate(), 100, cpu_share=1.0, queue=RATE // 100) == 0.0


def test_a_queue_past_the_target_sheds_more_and_more_the_longer_it_stands() -> None:
    gate = LoadGate()
    first = run(gate, 3, cpu_share=1.0, queue=RATE // 10)  # 100 ms against 50
    later = run(gate, 3, cpu_share=1.0, queue=RATE // 10, start=10.0)
    assert 0.0 < first < later < 1.0


def test_a_deeper_queue_sheds_faster() -> None:
    shallow, deep = LoadGate(), LoadGate()
    run(shallow, 3, cpu_share=1.0, queue=RATE // 10)
    run(deep, 3, cpu_share=1.0, queue=RATE)
    assert deep.shed > shallow.shed > 0.0


def test_a_starved_process_sheds_on_its_queue_whatever_its_own_cpu() -> None:
    # Another process holds the core: little CPU of our own, the loop never sleeps (it runs
    # or waits for the CPU all the time), and requests wait 200 ms.
    gate = LoadGate()
    shed = run(gate, 10, cpu_share=0.3, queue=RATE // 5, busy=1.0)
    assert gate.delay > gate.target_delay and shed >= 0.5


def test_a_shared_core_with_room_left_sheds_nothing_however_long_the_queue_looks() -> None:
    # The switch is preempted by another process (its requests wait out the time slices) but
    # its loop still sleeps 40 % of the time: it has room for every call, refusing none.
    gate = LoadGate()
    assert run(gate, 50, cpu_share=0.3, queue=RATE // 5, lag=0.08, busy=0.6) == 0.0


def test_shedding_eases_off_once_the_loop_sleeps_again() -> None:
    gate = LoadGate()
    run(gate, 20, cpu_share=1.0, queue=RATE // 5, busy=1.0)
    assert gate.shed > 0.5
    run(gate, 20, cpu_share=0.5, queue=RATE // 5, busy=0.5, start=10.0)
    assert gate.shed == 0.0


def test_at_twice_its_capacity_the_switch_admits_a_steady_share_near_what_it_can_carry() -> None:
    # The closed loop: not on/off but a share, with the queue held near the target.
    sw = Switch(LoadGate())
    sw.run(10.0, offered=2000.0)  # capacity 1000 calls/s, offered 2000
    sw.admitted = 0.0
    tail = sw.run(20.0, offered=2000.0)
    sheds = [s for s, _ in tail]
    assert min(sheds) > 0.35 and max(sheds) < 0.65  # never all or nothing
    assert max(d for _, d in tail) < 0.2  # seconds queued: bounded near the 50 ms target
    assert sw.admitted / 20.0 >= 0.9 * 1000  # goodput: at least 90 % of capacity


def test_at_three_times_its_capacity_goodput_holds() -> None:
    sw = Switch(LoadGate())
    sw.run(10.0, offered=3000.0)
    sw.admitted = 0.0
    tail = sw.run(20.0, offered=3000.0)
    assert max(d for _, d in tail) < 0.2
    assert sw.admitted / 20.0 >= 0.85 * 1000


def test_below_capacity_the_controller_stays_off() -> None:
    sw = Switch(LoadGate())
    assert all(s == 0.0 for s, _ in sw.run(20.0, offered=900.0))


def test_near_the_target_shedding_eases_off_slowly_not_at_once() -> None:
    # Hysteresis: a queue just under the target is no reason to admit everyone at once.
    gate = LoadGate()
    run(gate, 10, cpu_share=1.0, queue=RATE // 5)
    run(gate, 1, cpu_share=1.0, queue=RATE // 25, start=10.0)  # 40 ms, just under 50
    before = gate.shed
    run(gate, 10, cpu_share=1.0, queue=RATE // 25, start=20.0)  # a second more of it
    assert before - 0.15 < gate.shed < before


def test_shedding_stops_within_a_second_or_two_once_the_load_drops() -> None:
    sw = Switch(LoadGate())
    sw.run(10.0, offered=3000.0)
    assert sw.gate.shed > 0.5
    after = sw.run(5.0, offered=500.0)
    first_zero = next(i for i, (s, _) in enumerate(after) if s == 0.0)
    assert first_zero * TICK <= 2.0
    assert all(s == 0.0 for s, _ in after[first_zero:])  # and stays off


def test_a_lagging_loop_counts_as_overload() -> None:
    gate = LoadGate()
    assert run(gate, 5, cpu_share=0.9, lag=0.2) > 0.0


def test_a_cpu_ceiling_sheds_only_when_one_is_set() -> None:
    assert run(LoadGate(), 20, cpu_share=1.0) == 0.0  # default 1: the whole core is ours
    assert run(LoadGate(max_cpu=0.0), 20, cpu_share=1.0) == 0.0  # 0: no limit either
    assert run(LoadGate(max_cpu=0.7), 20, cpu_share=1.0) > 0.0
    assert run(LoadGate(max_cpu=0.5), 20, cpu_share=0.8, busy=0.8) > 0.5  # even with room


def test_zero_target_turns_it_off() -> None:
    assert run(LoadGate(target_delay=0.0), 20, cpu_share=1.0, queue=10**6, lag=1.0) == 0.0


def test_the_settings() -> None:
    s = load_settings(env={"DCE_OVERLOAD_DELAY": "80ms", "DCE_OVERLOAD_CPU": "0.9"})
    assert (s.overload_delay, s.overload_cpu, s.overload_lag) == (0.08, 0.9, 0.05)
    assert load_settings(env={}).overload_cpu == 1.0
    with pytest.raises(ConfigError):
        load_settings(env={"DCE_OVERLOAD_CPU": "1.5"})


def test_the_kernel_queue_of_a_real_socket_both_ways() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    port = rx.getsockname()[1]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert socket_rx_queue(rx) == 0 and udp_rx_queue(port) == 0
        for _ in range(10):
            tx.sendto(b"x" * 500, ("127.0.0.1", port))
        deadline = time.monotonic() + 2
        while (socket_rx_queue(rx) or 0) < 5000 and time.monotonic() < deadline:
            time.sleep(0.01)
        queued = socket_rx_queue(rx)
        assert queued is not None and queued >= 5000  # the kernel counts overhead per datagram
        assert udp_rx_queue(port) == queued
        rx.settimeout(1)
        for _ in range(10):
            rx.recv(1000)
        assert socket_rx_queue(rx) == 0 and udp_rx_queue(port) == 0
    finally:
        rx.close()
        tx.close()


def test_the_run_clock_counts_this_threads_time_on_the_cpu() -> None:
    clock = RunClock()
    try:
        first = clock.read()
        if first is None:
            pytest.skip("no /proc/thread-self/schedstat here")
        end = time.thread_time() + 0.05
        while time.thread_time() < end:
            pass
        second = clock.read()
        assert second is not None and second - first >= 0.04
    finally:
        clock.close()


def test_a_socket_that_cannot_say_falls_back() -> None:
    assert socket_rx_queue(object()) is None  # type: ignore[arg-type]

