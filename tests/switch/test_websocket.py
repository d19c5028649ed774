"""SIP-over-WebSocket connection guards with real sockets (switch/websocket.py): per-address
and total caps, bans, rate limits and the idle timeout. Upgrade rules and framing are tested
in tests/webrtc/test_websocket.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from switch.peer import Peer
from switch.pike import Pike, PikeConfig
from switch.transport import ConnLimits, Guard
from switch.websocket import WsHub
from tests.switch.test_transport import until

STRANGER = "127.0.0.2"
OTHER = "127.0.0.3"
OPTIONS = (
    "OPTIONS sip:dce@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WS a.invalid;branch=z9hG4bK1\r\n"
    "Call-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


def tokens(request: web.Request) -> str | None:
    token = request.query.get("token")
    return "" if token is None else {"good": "trunk-7"}.get(token)


@dataclass
class Server:
    hub: WsHub
    url: str
    fed: list[Peer] = field(default_factory=list)
    busy: set[object] = field(default_factory=set)
    bans: list[str] = field(default_factory=list)
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    async def client(self, host: str) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(local_addr=(host, 0), force_close=True)
        return await self.stack.enter_async_context(aiohttp.ClientSession(connector=connector))

    async def connect(self, host: str, query: str = "") -> aiohttp.ClientWebSocketResponse:
        session = await self.client(host)
        return await self.stack.enter_async_context(
            session.ws_connect(self.url + query, protocols=("sip",))
        )

    async def refused(self, host: str, query: str = "") -> int:
        session = await self.client(host)
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await session.ws_connect(self.url + query, protocols=("sip",))
        return exc.value.status


Make = Callable[..., Awaitable[Server]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    runners: list[web.AppRunner] = []
    servers: list[Server] = []

    async def start(limits: ConnLimits, pike: Pike | None = None) -> Server:
        holder: dict[str, Server] = {}
        guard = Guard(pike=pike, on_ban=lambda h: holder["s"].bans.append(h),
                      busy=lambda: holder["s"].busy)
        hub = WsHub(lambda data, peer: holder["s"].fed.append(peer), lambda: None,
                    lambda peer: None, token_check=tokens, guard=guard, limits=limits)
        app = web.Application()
        app.router.add_get("/sip", hub.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        server = holder["s"] = Server(hub, f"http://127.0.0.1:{port}/sip")
        runners.append(runner)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stack.aclose()
        await server.hub.close_all()
    for runner in runners:
        await runner.cleanup()


async def test_per_address_cap_answers_429_and_a_token_is_exempt(make: Make) -> None:
    server = await make(ConnLimits(max_connections=100, max_per_source=2))
    await server.connect(STRANGER)
    await server.connect(STRANGER)
    assert await server.refused(STRANGER) == 429
    assert server.hub.stats.refused_per_source == 1
    await server.connect(OTHER)  # another address has its own slots
    await server.connect(STRANGER, "?token=good")  # bound to a trunk: never capped
    assert len(server.hub) == 4


async def test_total_cap_answers_503_with_retry_after(make: Make) -> None:
    server = await make(ConnLimits(max_connections=2, max_per_source=10))
    await server.connect(STRANGER)
    ws = await server.connect(OTHER)
    assert await server.refused("127.0.0.4") == 503
    assert server.hub.stats.refused_total == 1
    await ws.close()
    await until(lambda: len(server.hub) == 1)
    await server.connect("127.0.0.4")  # a slot came free


async def test_flooder_is_closed_with_1008_and_refused_while_banned(
    make: Make,
) -> None:
    pike = Pike(PikeConfig(window=10.0, limit=3))
    server = await make(ConnLimits(), pike)
    ws = await server.connect(STRANGER)
    for _ in range(10):
        await ws.send_str(OPTIONS)
    msg = await ws.receive(timeout=3)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1008
    assert len(server.fed) == 3
    assert server.bans == [STRANGER]
    assert await server.refused(STRANGER) == 403
    assert server.hub.stats.refused_banned == 1
    # A token-bound connection from the same address is not rate-limited but still banned:
    # the ban is on the address.
    assert await server.refused(STRANGER, "?token=good") == 403


async def test_idle_socket_is_closed_unless_it_carries_a_call(make: Make) -> None:
    server = await make(ConnLimits(idle_timeout=0.3))
    idle = await server.connect(STRANGER)
    busy = await server.connect(OTHER)
    await busy.send_str(OPTIONS)
    await until(lambda: len(server.fed) == 1)
    server.busy = {server.fed[0].conn}
    msg = await idle.receive(timeout=3)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert (idle.close_code, msg.extra) == (1000, "idle timeout")
    assert server.hub.stats.closed_idle == 1
    with pytest.raises(TimeoutError):
        await busy.receive(timeout=0.8)  # still open: its call is live
    server.busy = set()
    msg = await busy.receive(timeout=3)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert server.hub.stats.closed_idle == 2
