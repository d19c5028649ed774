"""SIP over WebSocket (RFC 7118) at the edge: upgrade rules, framing, bad input, admission."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from switch.message import SipResponse, parse_message
from tests.webrtc.harness import Buyer, MiniSwitch, wait_for

OPTIONS = (
    "OPTIONS sip:dce@127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/WS abc.invalid;branch=z9hG4bKopt{n}\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:ws@abc.invalid>;tag=f{n}\r\n"
    "To: <sip:dce@127.0.0.1>\r\n"
    "Call-ID: opt-{n}\r\n"
    "CSeq: 1 OPTIONS\r\n"
    "Content-Length: 0\r\n\r\n"
)


def tokens(request: web.Request) -> str | None:
    token = request.query.get("token")
    if token is None:
        return ""  # no token: digest decides, as for UDP
    return {"good": "trunk-7"}.get(token)


@pytest.fixture
async def switch(buyer: Buyer) -> AsyncIterator[MiniSwitch]:
    sw = MiniSwitch([buyer.uri], token_check=tokens)
    await sw.start()
    yield sw
    await sw.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def receive_sip(ws: aiohttp.ClientWebSocketResponse, binary: bool = False) -> SipResponse:
    msg = await ws.receive(timeout=5)
    if binary:
        assert msg.type is aiohttp.WSMsgType.BINARY, msg
        parsed = parse_message(msg.data)
    else:
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        parsed = parse_message(msg.data.encode())
    assert isinstance(parsed, SipResponse)
    return parsed


async def test_options_over_websocket_is_answered_on_the_same_socket(
    switch: MiniSwitch, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(f"{switch.base_url}/sip?token=good", protocols=("sip",)) as ws:
        assert ws.protocol == "sip"
        await ws.send_str(OPTIONS.format(n=1))
        resp = await receive_sip(ws)
        assert resp.status == 200
        # RFC 3261 §18.2.1: the switch notes where the request really came from.
        assert "received=127.0.0.1" in (resp.headers.get("via") or "")
        assert switch.hub.stats.frames_in == 1 and switch.hub.stats.frames_out == 1
        # Binary frames carry SIP too (RFC 7118 §5), and get binary frames back.
        await ws.send_bytes(OPTIONS.format(n=2).encode())
        assert (await receive_sip(ws, binary=True)).status == 200
        assert switch.hub.stats.open == 1
    assert await wait_for(lambda: switch.hub.stats.open == 0, 3)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 400),  # not a WebSocket upgrade at all
        (
            {
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
            400,
        ),  # no sip subprotocol
        (
            {
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Protocol": "chat",
            },
            400,
        ),
    ],
    ids=["plain-get", "no-subprotocol", "wrong-subprotocol"],
)
async def test_upgrade_without_sip_subprotocol_is_refused(
    switch: MiniSwitch, http: aiohttp.ClientSession, headers: dict[str, str], status: int
) -> None:
    async with http.get(f"{switch.base_url}/sip", headers=headers) as resp:
        assert resp.status == status
    assert switch.hub.stats.refused == 1 and switch.hub.stats.opened == 0


async def test_unknown_token_gets_403_at_upgrade(
    switch: MiniSwitch, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await http.ws_connect(f"{switch.base_url}/sip?token=stolen", protocols=("sip",))
    assert exc.value.status == 403
    async with http.ws_connect(f"{switch.base_url}/sip?token=good", protocols=("sip",)) as ws:
        await ws.send_str(OPTIONS.format(n=3))
        await receive_sip(ws)
        (conn,) = switch.hub._conns.values()
        assert switch.hub.trunk_of(conn.peer) == "trunk-7"
    async with http.ws_connect(f"{switch.base_url}/sip", protocols=("sip",)) as ws:
        await ws.send_str(OPTIONS.format(n=4))
        await receive_sip(ws)
        (conn,) = switch.hub._conns.values()
        assert switch.hub.trunk_of(conn.peer) is None  # digest decides for this one


@pytest.mark.parametrize(
    "frame",
    [
        '{"type": "hello"}',
        "<html><body>hi</body></html>",
        "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00\x01\x02\xff\xfe garbage",
    ],
    ids=["json", "html", "http", "binary-garbage"],
)
async def test_non_sip_frame_closes_the_socket_with_1003(
    switch: MiniSwitch, http: aiohttp.ClientSession, frame: str | bytes
) -> None:
    async with http.ws_connect(f"{switch.base_url}/sip", protocols=("sip",)) as ws:
        if isinstance(frame, bytes):
            await ws.send_bytes(frame)
        else:
            await ws.send_str(frame)
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == 1003 and msg.extra == "not a SIP message"
    assert switch.hub.stats.bad_frames == 1
    # The process and other connections are unaffected.
    async with http.ws_connect(f"{switch.base_url}/sip", protocols=("sip",)) as ws:
        await ws.send_str(OPTIONS.format(n=5))
        assert (await receive_sip(ws)).status == 200


async def test_malformed_request_with_via_gets_400_and_the_socket_stays(
    switch: MiniSwitch, http: aiohttp.ClientSession
) -> None:
    broken = (
        "INVITE sip:+15550100000@127.0.0.1 SIP/2.0\r\n"
        "Via: SIP/2.0/WS abc.invalid;branch=z9hG4bKbad1\r\n"
        "From: <sip:ws@abc.invalid>;tag=1\r\n"
        "To: <sip:+15550100000@127.0.0.1>\r\n"
        "Call-ID: bad-1\r\n"
        "CSeq: one INVITE\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    async with http.ws_connect(f"{switch.base_url}/sip", protocols=("sip",)) as ws:
        await ws.send_str(broken)
        msg = await ws.receive(timeout=5)
        # Raw text: the 400 echoes the broken CSeq, so it does not parse either.
        assert msg.type is aiohttp.WSMsgType.TEXT
        assert msg.data.startswith("SIP/2.0 400 ") and "Call-ID: bad-1" in msg.data
        await ws.send_str(OPTIONS.format(n=6))
        assert (await receive_sip(ws)).status == 200
    assert switch.core.stats["malformed_requests"] == 1


async def test_oversized_frame_closes_with_1009(
    switch: MiniSwitch, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(f"{switch.base_url}/sip", protocols=("sip",)) as ws:
        await ws.send_str(OPTIONS.format(n=7).replace("Content-Length: 0", "X: " + "a" * 70_000))
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1009
    assert switch.hub.stats.bad_frames == 1


async def test_crlf_keepalive_gets_a_crlf_pong(
    switch: MiniSwitch, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(f"{switch.base_url}/sip", protocols=("sip",)) as ws:
        await ws.send_str("\r\n\r\n")
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.TEXT and msg.data == "\r\n"
    assert switch.hub.stats.keepalives == 1 and switch.core.stats["malformed_requests"] == 0


async def test_close_all_says_going_away(switch: MiniSwitch, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(f"{switch.base_url}/sip", protocols=("sip",)) as ws:
        await ws.send_str(OPTIONS.format(n=8))
        await receive_sip(ws)
        await switch.hub.close_all()
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1001
