"""The UDP and TCP transports' guards with real sockets on loopback: bans drop packets before
anything reads them, connection caps close refused connections at once, idle connections are
closed unless they carry a live call (switch/transport.py)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from switch.peer import Peer
from switch.pike import Pike, PikeConfig
from switch.transport import ConnLimits, Guard, TcpHub, UdpTransport

TRUSTED = "127.0.0.1"
STRANGER = "127.0.0.2"
OTHER = "127.0.0.3"
OPTIONS = (
    b"OPTIONS sip:dce@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.2;branch=z9hG4bK1\r\n"
    b"Call-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


@dataclass
class Sink:
    """Stands for the core: what reached it, and how often the glue was asked to transmit."""

    fed: list[tuple[bytes, Peer]] = field(default_factory=list)
    after: int = 0
    bans: list[str] = field(default_factory=list)
    busy: set[object] = field(default_factory=set)

    def feed(self, data: bytes, peer: Peer) -> None:
        self.fed.append((data, peer))

    def transmit(self) -> None:
        self.after += 1

    def guard(self, pike: Pike | None = None) -> Guard:
        return Guard(pike=pike, on_ban=self.bans.append, trusted=lambda h: h == TRUSTED,
                     busy=lambda: self.busy)


async def until(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------------------- UDP


@pytest.fixture
async def udp() -> AsyncIterator[tuple[Sink, UdpTransport, Pike, int]]:
    sink = Sink()
    pike = Pike(PikeConfig(window=10.0, limit=5, ban=60.0), trusted=lambda h: h == TRUSTED)
    transport, proto = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: UdpTransport(sink.feed, sink.transmit, sink.guard(pike)),
        local_addr=("127.0.0.1", 0),
    )
    yield sink, proto, pike, transport.get_extra_info("sockname")[1]
    transport.close()


def udp_sender(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


async def test_udp_flooder_is_banned_and_then_costs_nothing_but_a_counter(
    udp: tuple[Sink, UdpTransport, Pike, int],
) -> None:
    sink, proto, pike, port = udp
    with udp_sender(STRANGER) as flooder:
        for i in range(50):
            flooder.sendto(b"INVITE %d" % i, ("127.0.0.1", port))
        await until(lambda: proto.dropped == 45)
    # The first five reached the core; the sixth banned the source; the rest were dropped
    # before anything read them, without even a transmit().
    assert [d for d, _ in sink.fed] == [b"INVITE %d" % i for i in range(5)]
    assert sink.after == 5
    assert sink.bans == [STRANGER]  # reported once, when the ban started
    assert STRANGER in pike.banned


async def test_udp_trusted_source_is_never_banned(
    udp: tuple[Sink, UdpTransport, Pike, int],
) -> None:
    sink, proto, pike, port = udp
    with udp_sender(TRUSTED) as trunk:
        for i in range(50):
            trunk.sendto(b"INVITE %d" % i, ("127.0.0.1", port))
        await until(lambda: len(sink.fed) == 50)
    assert proto.dropped == 0
    assert pike.banned == {}
    assert sink.bans == []


async def test_udp_ban_of_one_source_leaves_others_alone(
    udp: tuple[Sink, UdpTransport, Pike, int],
) -> None:
    sink, proto, pike, port = udp
    pike.ban(STRANGER, asyncio.get_running_loop().time())
    with udp_sender(STRANGER) as banned, udp_sender(OTHER) as other:
        banned.sendto(b"dropped", ("127.0.0.1", port))
        other.sendto(b"fed", ("127.0.0.1", port))
        await until(lambda: len(sink.fed) == 1 and proto.dropped == 1)
    assert sink.fed[0][0] == b"fed"
    assert sink.fed[0][1].host == OTHER


# --------------------------------------------------------------------------------------- TCP


@dataclass
class TcpServer:
    sink: Sink
    hub: TcpHub
    port: int

    async def connect(self, host: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port, local_addr=(host, 0))


async def tcp_server(limits: ConnLimits, pike: Pike | None = None) -> tuple[TcpServer, Any]:
    sink = Sink()
    loop = asyncio.get_running_loop()
    hub = TcpHub(loop, sink.feed, sink.transmit, guard=sink.guard(pike), limits=limits)
    server = await loop.create_server(hub.factory, "127.0.0.1", 0)
    return TcpServer(sink, hub, server.sockets[0].getsockname()[1]), server


@pytest.fixture
async def closing() -> AsyncIterator[list[Any]]:
    """Servers, hubs and writers to close after the test."""
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        thing.close()


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float = 2.0) -> bool:
    """True when the switch closed the connection (EOF or reset) within ``timeout``."""
    try:
        data = await asyncio.wait_for(reader.read(1024), timeout)
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return data == b""


async def test_tcp_per_source_cap_refuses_at_once_and_frees_slots(closing: list[Any]) -> None:
    srv, server = await tcp_server(ConnLimits(max_connections=100, max_per_source=3))
    closing += [server, srv.hub]
    held = [await srv.connect(STRANGER) for _ in range(3)]
    closing += [w for _, w in held]
    await until(lambda: srv.hub.untrusted_from(STRANGER) == 3)
    reader, writer = await srv.connect(STRANGER)
    closing.append(writer)
    assert await closed_by_peer(reader)
    assert srv.hub.stats.refused_per_source == 1
    # Another address is not affected, nor is a trusted one, however many it opens.
    other = await srv.connect(OTHER)
    trunk = [await srv.connect(TRUSTED) for _ in range(5)]
    closing += [other[1], *(w for _, w in trunk)]
    await until(lambda: srv.hub.stats.open == 9)
    assert srv.hub.untrusted_from(TRUSTED) == 0
    # A connection that goes frees its slot.
    held[0][1].close()
    await until(lambda: srv.hub.untrusted_from(STRANGER) == 2)
    reader, writer = await srv.connect(STRANGER)
    closing.append(writer)
    assert not await closed_by_peer(reader, timeout=0.3)
    assert srv.hub.untrusted_from(STRANGER) == 3


async def test_tcp_total_cap_counts_untrusted_sources_only(closing: list[Any]) -> None:
    srv, server = await tcp_server(ConnLimits(max_connections=2, max_per_source=10))
    closing += [server, srv.hub]
    a = await srv.connect(STRANGER)
    b = await srv.connect(OTHER)
    closing += [a[1], b[1]]
    await until(lambda: srv.hub.stats.open == 2)
    reader, writer = await srv.connect("127.0.0.4")
    closing.append(writer)
    assert await closed_by_peer(reader)
    assert srv.hub.stats.refused_total == 1
    _, trunk_writer = await srv.connect(TRUSTED)  # a trunk still gets in
    closing.append(trunk_writer)
    trunk_writer.write(OPTIONS)
    await until(lambda: len(srv.sink.fed) == 1)
    assert srv.sink.fed[0][1].host == TRUSTED


async def test_tcp_banned_source_is_refused_and_a_flooder_is_cut_off(closing: list[Any]) -> None:
    pike = Pike(PikeConfig(window=10.0, limit=3), trusted=lambda h: h == TRUSTED)
    srv, server = await tcp_server(ConnLimits(), pike)
    closing += [server, srv.hub]
    reader, writer = await srv.connect(STRANGER)
    closing.append(writer)
    writer.write(OPTIONS * 10)  # ten messages in one read: the fourth bans it
    assert await closed_by_peer(reader)
    assert len(srv.sink.fed) == 3
    assert srv.sink.bans == [STRANGER]
    assert srv.hub.stats.dropped == 1
    await until(lambda: srv.hub.stats.open == 0)
    assert srv.hub.untrusted_from(STRANGER) == 0
    # While banned, a new connection is closed before a byte is read.
    reader, writer = await srv.connect(STRANGER)
    closing.append(writer)
    writer.write(OPTIONS)
    assert await closed_by_peer(reader)
    assert srv.hub.stats.refused_banned == 1
    assert len(srv.sink.fed) == 3


async def test_tcp_idle_connection_is_closed_but_not_while_it_carries_a_call(
    closing: list[Any],
) -> None:
    srv, server = await tcp_server(ConnLimits(idle_timeout=0.3))
    closing += [server, srv.hub]
    idle_reader, idle_writer = await srv.connect(STRANGER)
    call_reader, call_writer = await srv.connect(OTHER)
    closing += [idle_writer, call_writer]
    call_writer.write(OPTIONS)
    await until(lambda: len(srv.sink.fed) == 1)
    call_conn = srv.sink.fed[0][1].conn
    srv.sink.busy = {call_conn}  # the core has a live call on this connection
    assert await closed_by_peer(idle_reader, timeout=2.0)
    assert srv.hub.stats.closed_idle == 1
    assert not await closed_by_peer(call_reader, timeout=0.8)
    assert call_conn in srv.hub.connections
    srv.sink.busy = set()  # the call ended: now it is idle
    assert await closed_by_peer(call_reader, timeout=2.0)
    assert srv.hub.stats.closed_idle == 2


async def test_tcp_traffic_and_keepalives_keep_a_connection_open(closing: list[Any]) -> None:
    srv, server = await tcp_server(ConnLimits(idle_timeout=0.4))
    closing += [server, srv.hub]
    reader, writer = await srv.connect(STRANGER)
    closing.append(writer)
    for _ in range(6):  # 1.2 s in all, a keep-alive every 0.2 s
        writer.write(b"\r\n\r\n")  # RFC 5626 ping
        assert await asyncio.wait_for(reader.readexactly(2), 1.0) == b"\r\n"
        await asyncio.sleep(0.2)
    assert srv.hub.stats.closed_idle == 0
    assert await closed_by_peer(reader, timeout=2.0)  # silent from here on: closed
