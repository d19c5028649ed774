"""Media workers as real processes (DCE_MEDIA_WORKERS, media/workers.py): RTP through a worker
both ways on 127.0.0.1, the counters back at close, disjoint ports, a media timeout, and a
worker that dies. ``MediaManager`` is driven the way dce/pump.py drives it."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from media import workers
from media.anchor import MediaManager, RelayMediaSession
from media.ports import PortAllocator
from media.relay import Leg
from media.sdp import MediaEndpoint
from media.workers import WorkerPool, split_ports
from tests.ports import free_port_range

pytestmark = pytest.mark.integration

WAIT = 10.0  # generous: the machine is shared; nothing here measures time


def sdp(port: int) -> bytes:
    return (
        f"v=0\r\no=peer 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=sendrecv\r\n"
    ).encode()


def rtp(seq: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x1234) + payload


class Phone:
    """A caller or buyer: one RTP socket (RTCP unused)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    async def recv(self) -> tuple[bytes, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while loop.time() < deadline:
            try:
                return self.sock.recvfrom(2048)
            except BlockingIOError:
                await asyncio.sleep(0.005)
        raise TimeoutError("no RTP")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
async def media() -> AsyncIterator[MediaManager]:
    mm = MediaManager(
        mode="relay", media_ip="127.0.0.1", ports=free_port_range(400), rng=random.Random(3),
        workers=2,
    )  # fmt: skip
    await mm.start()
    yield mm
    mm.close_all()
    await mm.wait_closed()
    assert isinstance(mm.relay, WorkerPool)
    assert all(w.proc is not None and w.proc.poll() is not None for w in mm.relay.workers)


async def call(mm: MediaManager, call_id: str, a: Phone, b: Phone) -> RelayMediaSession:
    session = await mm.open(call_id, sdp(a.port), "127.0.0.1")
    assert isinstance(session, RelayMediaSession)
    session.b_answered(sdp(b.port))
    session.answered()
    assert isinstance(mm.relay, WorkerPool)
    await mm.relay.barrier()  # the worker knows both legs before the first packet
    return session


async def test_rtp_through_a_worker_both_ways_and_counters_at_close(media: MediaManager) -> None:
    a, b = Phone(), Phone()
    session = await call(media, "call-1", a, b)
    a_port, b_port = session.session.ports
    sent_a = [rtp(i, bytes([i]) * 160) for i in range(1, 6)]
    sent_b = [rtp(i, bytes([0x80 + i]) * 80) for i in range(1, 4)]
    for pkt in sent_a:
        a.sock.sendto(pkt, ("127.0.0.1", a_port))
        data, source = await b.recv()
        assert data == pkt and source == ("127.0.0.1", b_port)  # from the B-facing port
    for pkt in sent_b:
        b.sock.sendto(pkt, ("127.0.0.1", b_port))
        data, source = await a.recv()
        assert data == pkt and source == ("127.0.0.1", a_port)
    fields = media.close("call-1")
    assert isinstance(fields, asyncio.Future)
    assert await fields == {
        "packets_a_to_b": 5,
        "packets_b_to_a": 3,
        "bytes_a_to_b": sum(map(len, sent_a)),
        "bytes_b_to_a": sum(map(len, sent_b)),
        "packets_dropped": 0,
    }
    a.close()
    b.close()


async def test_calls_spread_over_workers_on_disjoint_ports(media: MediaManager) -> None:
    pool = media.relay
    assert isinstance(pool, WorkerPool)
    sessions = [await media.open(f"c{i}", sdp(4000 + 2 * i), "127.0.0.1") for i in range(10)]
    ports: dict[int, set[int]] = {}
    for s in sessions:
        assert isinstance(s, RelayMediaSession)
        worker = pool.session(s.session.call_id).worker  # type: ignore[union-attr]
        ports.setdefault(worker.index, set()).update(s.session.ports)
    assert sorted(len(p) for p in ports.values()) == [10, 10]  # 5 calls each, 2 ports a call
    assert not ports[0] & ports[1]
    for index, used in ports.items():
        lo, hi = pool.workers[index].ports
        assert all(lo <= p <= hi for p in used)
    # Ports come only from the workers' shares, never from WebRTC's (this process's).
    assert not any(media.allocator.low <= p <= media.allocator.high for p in ports[0] | ports[1])
    assert pool.pids and len(set(pool.pids)) == 2 and os.getpid() not in pool.pids


async def test_silent_call_is_reported_as_media_timeout() -> None:
    lo, hi = free_port_range(40)
    _, shares = split_ports(lo, hi, 1)
    pool = WorkerPool("127.0.0.1", shares, interval=0.1, local=PortAllocator(lo, hi))
    await pool.start()
    try:
        timed_out: asyncio.Queue[str] = asyncio.Queue()
        pool.start_watchdog(0.3, timed_out.put_nowait)
        quiet, ringing = await pool.open_session("quiet"), await pool.open_session("ringing")
        for session in (quiet, ringing):
            session.relay.set_remote(Leg.A, MediaEndpoint("127.0.0.1", 4000, 4001, "sendrecv"), 0)
            session.relay.set_remote(Leg.B, MediaEndpoint("127.0.0.1", 4002, 4003, "sendrecv"), 0)
        quiet.relay.answered(0)  # "ringing" is not answered: no media timeout for it
        assert await asyncio.wait_for(timed_out.get(), WAIT) == "quiet"
        # A tick hands over every due call at once: "ringing" would be queued by now.
        assert timed_out.empty()
        final = pool.close_final("quiet")
        assert final is not None and (await final).a_to_b.packets == 0
    finally:
        pool.close_all()
        await pool.wait_closed()


async def test_a_dead_workers_calls_end_and_new_calls_go_elsewhere() -> None:
    lo, hi = free_port_range(40)
    _, shares = split_ports(lo, hi, 2)
    pool = WorkerPool("127.0.0.1", shares, restart_delay=0.2)
    await pool.start()
    try:
        lost: asyncio.Queue[str] = asyncio.Queue()
        pool.on_lost = lost.put_nowait
        first = await pool.open_session("on-0")
        second = await pool.open_session("on-1")
        assert {first.worker.index, second.worker.index} == {0, 1}
        victim = first.worker
        assert victim.proc is not None
        os.kill(victim.proc.pid, signal.SIGKILL)
        assert await asyncio.wait_for(lost.get(), WAIT) == "on-0"
        # Its CDR gets the counters last heard of, at once.
        final = pool.close_final("on-0")
        assert final is not None and (await final).a_to_b.packets == 0
        third = await pool.open_session("after")
        assert third.worker.index == 1 - victim.index or pool.workers[victim.index].ready
        # Restarted on the same share of ports.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while not pool.workers[victim.index].ready and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert pool.workers[victim.index].ready and pool.restarts == 1
        assert pool.workers[victim.index].ports == victim.ports
        assert lost.empty()  # the other worker's calls were not touched
    finally:
        pool.close_all()
        await pool.wait_closed()


async def test_a_stopped_worker_holds_no_cdr_back(monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker alive but not answering (SIGSTOP here; swamped in life): the call's CDR goes
    # after CLOSE_WAIT with the counters last heard of, instead of waiting for ever.
    monkeypatch.setattr(workers, "CLOSE_WAIT", 0.3)
    lo, hi = free_port_range(40)
    _, shares = split_ports(lo, hi, 1)
    pool = WorkerPool("127.0.0.1", shares)
    await pool.start()
    worker = pool.workers[0]
    assert worker.proc is not None
    try:
        await pool.open_session("stuck")
        os.kill(worker.proc.pid, signal.SIGSTOP)
        final = pool.close_final("stuck")
        assert final is not None
        stats = await asyncio.wait_for(final, WAIT)
        assert stats.a_to_b.packets == 0 and stats.b_to_a.packets == 0
    finally:
        os.kill(worker.proc.pid, signal.SIGCONT)
        pool.close_all()
        await pool.wait_closed()


async def test_a_worker_without_free_ports_passes_the_call_to_another() -> None:
    lo, hi = free_port_range(40)
    _, shares = split_ports(lo, hi, 2)
    # Another process holds every port of worker 1's share: it cannot open a call.
    held = []
    for port in range(shares[1][0], shares[1][1] + 1):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", port))
        held.append(s)
    pool = WorkerPool("127.0.0.1", shares)
    await pool.start()
    try:
        first = await pool.open_session("first")  # the tie goes to worker 0
        second = await pool.open_session("second")  # worker 1 is tried first, then 0
        assert first.worker.index == second.worker.index == 0
        assert pool.totals().sessions_refused == 0
    finally:
        pool.close_all()
        await pool.wait_closed()
        for s in held:
            s.close()
