"""The relay on real UDP sockets on 127.0.0.1 (media/transport.py), under asyncio and uvloop.

Two fake endpoints (plain datagram sockets) stand for the caller and the buyer; packets go
through a RelaySession and must arrive byte for byte.
"""

from __future__ import annotations

import asyncio
import gc
import random
import socket
import struct
from typing import Any

import pytest

from media import transport
from media.errors import PortsExhausted
from media.ports import PortAllocator
from media.relay import Leg
from media.sdp import MediaEndpoint
from media.transport import RelayManager, RelaySession
from tests.ports import free_port_range

# Away from DCE_RTP_PORTS' default and from bench/bench_relay.py's range.
# Above the kernel's ephemeral range: no outgoing socket anywhere can hold one of these.
LOW, HIGH = free_port_range(1000)


class Peer(asyncio.DatagramProtocol):
    """A fake phone: one socket, everything it receives queued as (data, source)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait((data, addr))

    @property
    def port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port

    def send(self, data: bytes, port: int, host: str = "127.0.0.1") -> None:
        assert self.transport is not None
        self.transport.sendto(data, (host, port))

    async def recv(self, timeout: float = 2.0) -> tuple[bytes, Any]:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def nothing(self, wait: float = 0.1) -> bool:
        try:
            await asyncio.wait_for(self.queue.get(), wait)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def peer(host: str = "127.0.0.1") -> Peer:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(Peer, local_addr=(host, 0))
    return proto


def rtp(seq: int, pt: int = 0, payload: bytes | None = None, marker: bool = False) -> bytes:
    body = payload if payload is not None else bytes((seq + i) & 0xFF for i in range(160))
    return (
        struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq, seq * 160, 0xC0FFEE) + body
    )


def rtcp_sr() -> bytes:
    # RFC 3550 §6.4.1 sender report with no report blocks (28 octets).
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, 0xC0FFEE, 1, 2, 3, 4, 5)


class Call:
    """A relay session with both fake phones announced (as their SDP would) and answered."""

    def __init__(self, session: RelaySession, a: Peer, a_rtcp: Peer, b: Peer, b_rtcp: Peer) -> None:
        self.session, self.a, self.a_rtcp, self.b, self.b_rtcp = session, a, a_rtcp, b, b_rtcp
        self.a_port, self.b_port = session.ports

    def close(self) -> None:
        for p in (self.a, self.a_rtcp, self.b, self.b_rtcp):
            p.close()


async def call(manager: RelayManager, call_id: str) -> Call:
    loop = asyncio.get_running_loop()
    session = await manager.open_session(call_id)
    a, a_rtcp, b, b_rtcp = [await peer() for _ in range(4)]
    now = loop.time()
    session.relay.set_remote(
        Leg.A, MediaEndpoint("127.0.0.1", a.port, a_rtcp.port, "sendrecv"), now
    )
    session.relay.set_remote(
        Leg.B, MediaEndpoint("127.0.0.1", b.port, b_rtcp.port, "sendrecv"), now
    )
    session.relay.answered(now)
    return Call(session, a, a_rtcp, b, b_rtcp)


def manager(
    low: int = LOW, high: int = HIGH, pool: int = 0, min_idle: float = 0.25
) -> RelayManager:
    return RelayManager(
        "127.0.0.1",
        PortAllocator(low, high, random.Random(11)),
        pool=pool,
        pool_min_idle=min_idle,
    )


async def reused_call(mgr: RelayManager, call_id: str) -> Call:
    """A call whose four sockets come from the socket pool: a call before it gave them back."""
    assert mgr.pool is not None
    used: set[int] = set()
    for i in range(10):  # more pairs than the pool holds: every idle pair has carried a call
        before = await mgr.open_session(f"{call_id}-before-{i}")
        used.update(before.ports)
        mgr.close_session(before.call_id)
    hits = mgr.pool.hits
    c = await call(mgr, call_id)
    assert mgr.pool.hits == hits + 2 and set(c.session.ports) <= used
    return c


# Every test that carries packets runs on freshly bound sockets and on pooled ones.
POOLED = pytest.mark.parametrize("pooled", [False, True], ids=["bound", "pooled"])


@POOLED
async def test_rtp_both_ways_payload_unchanged(pooled: bool) -> None:
    mgr = manager(pool=8, min_idle=0.0) if pooled else manager()
    c = await (reused_call if pooled else call)(mgr, "call-1")
    try:
        for seq in range(20):
            sent = rtp(seq)
            c.a.send(sent, c.a_port)
            data, src = await c.b.recv()
            assert data == sent and src == ("127.0.0.1", c.b_port)
            back = rtp(1000 + seq, pt=8)
            c.b.send(back, c.b_port)
            data, src = await c.a.recv()
            assert data == back and src == ("127.0.0.1", c.a_port)
        # RFC 4733 telephone-event (end of digit 5, marker set) passes untouched.
        dtmf = rtp(20, pt=101, payload=bytes([5, 0x80, 0x03, 0x20]), marker=True)
        c.a.send(dtmf, c.a_port)
        assert (await c.b.recv())[0] == dtmf
        stats = mgr.close_session("call-1")
        assert stats is not None
        assert stats.a_to_b.packets == 21 and stats.b_to_a.packets == 20
        assert stats.a_to_b.bytes == 20 * 172 + 16 and stats.a_to_b.lost == 0
    finally:
        c.close()
        mgr.close_all()


@POOLED
async def test_rtcp_on_its_own_port(pooled: bool) -> None:
    mgr = manager(pool=8, min_idle=0.0) if pooled else manager()
    c = await (reused_call if pooled else call)(mgr, "call-rtcp")
    try:
        report = rtcp_sr()
        c.a_rtcp.send(report, c.a_port + 1)
        data, src = await c.b_rtcp.recv()
        assert data == report and src == ("127.0.0.1", c.b_port + 1)
        c.b_rtcp.send(report, c.b_port + 1)
        data, src = await c.a_rtcp.recv()
        assert data == report and src == ("127.0.0.1", c.a_port + 1)
        assert await c.b.nothing(0.05)  # nothing leaked onto the RTP path
        assert c.session.relay.stats().a_to_b.rtcp_packets == 1
    finally:
        c.close()
        mgr.close_all()


@POOLED
async def test_spoofed_source_mid_call_is_ignored(pooled: bool) -> None:
    mgr = manager(pool=8, min_idle=0.0) if pooled else manager()
    c = await (reused_call if pooled else call)(mgr, "call-spoof")
    same_ip = await peer()
    other_ip = await peer("127.0.0.2")
    try:
        c.a.send(rtp(1), c.a_port)
        await c.b.recv()
        # RTP Bleed: strangers send to A's relay port hoping to be latched and get B's audio.
        for attacker in (same_ip, other_ip):
            for seq in range(5):
                attacker.send(rtp(50_000 + seq, payload=b"EVIL" * 40), c.a_port)
        c.b.send(rtp(2), c.b_port)
        data, _ = await c.a.recv()  # B's audio still reaches the real caller...
        assert data == rtp(2)
        assert await same_ip.nothing() and await other_ip.nothing()  # ...and no one else
        c.a.send(rtp(3), c.a_port)
        data, _ = await c.b.recv()
        assert data == rtp(3)  # the attacker's packets were never forwarded to B
        assert await c.b.nothing(0.05)
        assert c.session.relay.stats().a_to_b.foreign == 10
    finally:
        for p in (same_ip, other_ip):
            p.close()
        c.close()
        mgr.close_all()


async def test_garbage_burst_does_not_disturb_other_calls() -> None:
    mgr = manager()
    victim = await call(mgr, "victim")
    other = await call(mgr, "other")
    flooders = [await peer(), await peer("127.0.0.2")]
    try:
        victim.a.send(rtp(0), victim.a_port)  # the real caller latches first
        await victim.b.recv()
        for i in range(3000):
            # Bytes 0x80-0xBF look like RTP version 2: half of this passes the header check
            # and is refused on source; the rest is malformed.
            flooders[i & 1].send(bytes([i & 0xFF]) * (i % 200), victim.a_port)
            if i % 100 == 0:
                other.a.send(rtp(i // 100), other.a_port)
                await asyncio.sleep(0)
        got = [await other.b.recv() for _ in range(30)]
        assert [d for d, _ in got] == [rtp(i) for i in range(30)]
        await asyncio.sleep(0.05)
        v = victim.session.relay.stats().a_to_b
        # (The kernel drops part of a burst this dense before the relay sees it.)
        assert v.packets == 1 and v.malformed > 0 and v.foreign > 0
        assert v.dropped == v.malformed + v.foreign
        assert await victim.b.nothing(0.05)  # not one garbage datagram was forwarded
        assert other.session.relay.stats().a_to_b.dropped == 0
    finally:
        for f in flooders:
            f.close()
        victim.close()
        other.close()
        mgr.close_all()


async def test_ports_all_free_after_1000_calls() -> None:
    low, high = free_port_range(200)
    mgr = manager(low, high)  # 100 pairs: every pair is reused about 20 times
    cap = mgr.allocator.capacity
    a, b = await peer(), await peer()
    try:
        for i in range(1000):
            session = await mgr.open_session(f"c{i}")
            if i % 100 == 0:  # now and then, carry a packet through to be sure it is live
                now = asyncio.get_running_loop().time()
                session.relay.set_remote(
                    Leg.A, MediaEndpoint("127.0.0.1", a.port, 1, "sendrecv"), now
                )
                session.relay.set_remote(
                    Leg.B, MediaEndpoint("127.0.0.1", b.port, 1, "sendrecv"), now
                )
                a.send(rtp(i), session.ports[0])
                assert (await b.recv())[0] == rtp(i)
            mgr.close_session(f"c{i}")
        await mgr.wait_closed()
        assert mgr.allocator.free == cap and len(mgr) == 0
        totals = mgr.totals()
        assert totals.sessions_opened == 1000 and totals.packets == 10
        # The sockets are really closed: every port in the range binds again.
        await asyncio.sleep(0)
        for port in range(low, high + 1):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", port))
            s.close()
    finally:
        a.close()
        b.close()
        mgr.close_all()


async def test_exhaustion_refused_without_leak() -> None:
    mgr = manager(*free_port_range(4))  # two pairs: exactly one call
    first = await mgr.open_session("one")
    with pytest.raises(PortsExhausted) as info:
        await mgr.open_session("two")
    assert info.value.status == 503
    assert mgr.allocator.free == 0 and mgr.totals().sessions_refused == 1
    assert mgr.session("two") is None
    mgr.close_session("one")
    assert first.closed
    await first.wait_closed()  # ports come back once the sockets are really closed
    assert mgr.allocator.free == 2
    assert mgr.close_session("one") is None  # idempotent
    again = await mgr.open_session("two")
    assert again.ports
    mgr.close_all()
    await mgr.wait_closed()
    assert mgr.allocator.free == 2


async def test_ports_taken_by_another_process_are_skipped() -> None:
    low, high = free_port_range(16)  # 8 pairs
    squatters = []
    for port in range(low, low + 10, 2):  # the first five RTP ports are busy
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", port))
        squatters.append(s)
    squatter_rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter_rtcp.bind(("127.0.0.1", low + 11))  # and the sixth pair's RTCP port
    try:
        mgr = manager(low, high)  # only the last two pairs are usable
        session = await mgr.open_session("x")
        assert sorted(session.ports) == [low + 12, low + 14]
        assert mgr.allocator.in_use == 2  # the skipped ones went back to the pool
        with pytest.raises(PortsExhausted):
            await mgr.open_session("y")
        assert mgr.allocator.in_use == 2
        mgr.close_all()
        await mgr.wait_closed()
        assert mgr.allocator.free == 8
    finally:
        for s in [*squatters, squatter_rtcp]:
            s.close()


async def test_media_timeout_sweep_and_watchdog() -> None:
    mgr = manager()
    c = await call(mgr, "quiet")
    loop = asyncio.get_running_loop()
    try:
        assert mgr.timed_out(loop.time() + 1.0, 60.0) == []
        assert mgr.timed_out(loop.time() + 61.0, 60.0) == ["quiet"]
        fired: asyncio.Queue[str] = asyncio.Queue()
        mgr.start_watchdog(0.0, fired.put_nowait, interval=0.01)
        assert await asyncio.wait_for(fired.get(), 2.0) == "quiet"
        mgr.stop_watchdog()
    finally:
        c.close()
        mgr.close_all()


async def test_scan_in_slices_counts_calls_that_end_during_it_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One call per slice, so calls can end while the pass is under way.
    monkeypatch.setattr(transport, "SCAN_SLICE", 1)
    mgr = manager()
    calls = [await call(mgr, f"c{i}") for i in range(3)]
    try:
        for i, c in enumerate(calls):
            for seq in range(i + 1):  # 1, 2 and 3 packets
                c.a.send(rtp(seq), c.a_port)
                await c.b.recv()
        results: list[transport.ScanResult] = []
        quiet = asyncio.get_running_loop().time() + 61.0
        mgr.scan(results.append, timeout=60.0, counters=True)
        assert results == []  # the first slice only: the rest come in later loop turns
        mgr.close_session("c0")  # already counted by the first slice
        mgr.close_session("c2")  # not reached yet: counted as it ends
        while not results:
            await asyncio.sleep(0)
        (result,) = results
        assert result.totals.packets == 6 and result.totals.bytes == 6 * 172
        assert result.totals.sessions_active == 1
        assert result.counters is not None and sorted(result.counters) == ["c0", "c1", "c2"]
        assert result.counters["c2"].a_to_b.packets == 3
        assert result.timed_out == []  # the media timeout is far off
        assert mgr.totals().packets == 6  # the same figure the plain totals give
        assert mgr.timed_out(quiet, 60.0) == ["c1"]
    finally:
        for c in calls:
            c.close()
        mgr.close_all()


@POOLED
async def test_an_ended_call_is_freed_without_the_garbage_collector(pooled: bool) -> None:
    # A collection stops every call's packets: what a call leaves must go by refcounting.
    mgr = manager(pool=8, min_idle=0.0) if pooled else manager()
    c = await call(mgr, "short")
    c.a.send(rtp(1), c.a_port)
    await c.b.recv()
    gc.collect()
    gc.disable()
    try:
        mgr.close_session("short")
        await mgr.wait_closed()
        c.close()
        del c
        await asyncio.sleep(0.05)
        assert gc.collect() == 0
    finally:
        gc.enable()
        mgr.close_all()


async def test_duplicate_call_id_is_our_bug() -> None:
    from media.errors import InvalidStateError

    mgr = manager()
    await mgr.open_session("dup")
    with pytest.raises(InvalidStateError):
        await mgr.open_session("dup")
    mgr.close_all()
    await mgr.wait_closed()
    assert mgr.allocator.free == mgr.allocator.capacity


async def test_cancelled_open_leaks_nothing() -> None:
    mgr = manager(*free_port_range(20))
    for yields in range(8):
        task = asyncio.create_task(mgr.open_session(f"c{yields}"))
        for _ in range(yields):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            assert mgr.session(f"c{yields}") is None
        else:
            mgr.close_session(f"c{yields}")  # it finished before the cancel landed
    await mgr.wait_closed()
    await asyncio.sleep(0.01)  # sockets closed by the failure path close on the next turn
    assert mgr.allocator.free == mgr.allocator.capacity and len(mgr) == 0


async def test_ipv6_media_address() -> None:
    mgr = RelayManager("::1", PortAllocator(*free_port_range(20), random.Random(1)))
    loop = asyncio.get_running_loop()
    session = await mgr.open_session("v6")
    a, b = await peer("::1"), await peer("::1")
    try:
        now = loop.time()
        session.relay.set_remote(Leg.A, MediaEndpoint("::1", a.port, a.port + 1, "sendrecv"), now)
        session.relay.set_remote(Leg.B, MediaEndpoint("::1", b.port, b.port + 1, "sendrecv"), now)
        a.send(rtp(1), session.ports[0], host="::1")
        data, src = await b.recv()
        assert data == rtp(1) and src[:2] == ("::1", session.ports[1])
        b.send(rtp(2), session.ports[1], host="::1")
        assert (await a.recv())[0] == rtp(2)
    finally:
        a.close()
        b.close()
        mgr.close_all()


# -------------------------------------------------------------------------------- socket pool


async def test_pooled_sockets_never_carry_the_previous_calls_late_packets() -> None:
    mgr = manager(*free_port_range(80), pool=16, min_idle=0.0)
    old = await call(mgr, "old")
    fresh = [await peer() for _ in range(2)]  # the next calls' phones, on the same IP
    try:
        old.a.send(rtp(1), old.a_port)
        assert (await old.b.recv())[0] == rtp(1)  # both legs latched
        old.b.send(rtp(2), old.b_port)
        assert (await old.a.recv())[0] == rtp(2)
        mgr.close_session("old")
        # After the BYE the old phones still send: queued on sockets that are in the pool now.
        for seq in range(3):
            old.a.send(rtp(100 + seq), old.a_port)
            old.b.send(rtp(200 + seq), old.b_port)
            old.a_rtcp.send(rtcp_sr(), old.a_port + 1)
        # New calls take pairs until the old ones are handed out again (nothing yields
        # meanwhile, so the late packets are still waiting in the sockets).
        loop = asyncio.get_running_loop()
        sessions: list[RelaySession] = []
        handed: set[int] = set()
        while not {old.a_port, old.b_port} <= handed:
            s = await mgr.open_session(f"new-{len(sessions)}")
            now = loop.time()
            s.relay.set_remote(Leg.A, MediaEndpoint("127.0.0.1", fresh[0].port, 9, "sendrecv"), now)
            s.relay.set_remote(Leg.B, MediaEndpoint("127.0.0.1", fresh[1].port, 9, "sendrecv"), now)
            s.relay.answered(now)
            sessions.append(s)
            handed.update(s.ports)
        assert mgr.pool is not None and mgr.pool.hits >= 2
        await asyncio.sleep(0.1)
        for p in (*fresh, old.a, old.b, old.a_rtcp, old.b_rtcp):
            assert await p.nothing(0.01)
        for s in sessions:
            stats = s.relay.stats()
            assert stats.a_to_b.packets == stats.b_to_a.packets == 0
            assert all(st.latched is None for st in s.relay.streams())
        # The new call's own phone is latched and relayed as usual.
        reused = next(s for s in sessions if old.a_port in s.ports)
        leg_port = reused.ports[0] if reused.ports[0] == old.a_port else reused.ports[1]
        sender = fresh[0] if leg_port == reused.ports[0] else fresh[1]
        receiver = fresh[1] if sender is fresh[0] else fresh[0]
        sender.send(rtp(300), leg_port)
        assert (await receiver.recv())[0] == rtp(300)
    finally:
        for p in fresh:
            p.close()
        old.close()
        mgr.close_all()


async def test_pair_given_back_idles_before_reuse_unless_ports_run_out() -> None:
    mgr = manager(*free_port_range(40), pool=8, min_idle=60.0)  # 20 pairs, pool of 5
    first = await mgr.open_session("first")
    mgr.close_session("first")
    second = await mgr.open_session("second")
    assert not set(first.ports) & set(second.ports)  # the just-released pairs wait
    # Every other pair taken: a pair that idled too briefly beats refusing the call.
    others: list[RelaySession] = []
    while mgr.allocator.free:
        others.append(await mgr.open_session(f"o{len(others)}"))
        await asyncio.sleep(0)  # let the pool's refill run too
    last = await mgr.open_session("last")
    assert set(last.ports) <= {p for s in [first, *others] for p in s.ports}
    assert mgr.totals().sessions_refused == 0
    mgr.close_all()
    await mgr.wait_closed()
    assert mgr.allocator.free == mgr.allocator.capacity


async def test_idle_pool_closes_its_sockets() -> None:
    low, high = free_port_range(80)
    mgr = RelayManager(
        "127.0.0.1",
        PortAllocator(low, high, random.Random(5)),
        pool=16,
        pool_min_idle=0.0,
        pool_linger=0.2,
    )
    for i in range(20):
        await mgr.open_session(f"c{i}")
    for i in range(20):
        mgr.close_session(f"c{i}")
    await mgr.wait_closed()  # the pairs a full pool did not take back are closed
    assert mgr.pool is not None and len(mgr.pool) > 0
    assert mgr.totals().ports_free == mgr.allocator.capacity  # pooled pairs count as free
    # No call comes: after the linger time every socket is closed and every port binds again.
    await asyncio.sleep(0.6)
    assert len(mgr.pool) == 0 and mgr.allocator.free == mgr.allocator.capacity
    for port in range(low, high + 1):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", port))
        s.close()
    mgr.close_all()


async def test_close_all_closes_the_pool() -> None:
    low, high = free_port_range(80)
    mgr = manager(low, high, pool=16, min_idle=0.0)
    for i in range(6):
        await mgr.open_session(f"c{i}")
        await asyncio.sleep(0)
    for i in range(3):
        mgr.close_session(f"c{i}")
    mgr.close_all()
    await mgr.wait_closed()
    await asyncio.sleep(0)
    assert mgr.allocator.free == mgr.allocator.capacity and len(mgr) == 0
    for port in range(low, high + 1):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", port))
        s.close()
