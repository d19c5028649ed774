"""A real RFC 7118 caller without a browser: sipua (PyPI) with ICE + DTLS-SRTP (libs.md §4).

sipua calls through the mini switch (real SwitchCore, WsHub, open_webrtc) to a Python buyer
that echoes RTP. sipua pins aiortc<1.16, so .ci/run installs it with --no-deps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aioice.ice
import pytest

from switch.record import HangupSide, Outcome
from tests.webrtc.harness import Buyer, MiniSwitch, wait_for

sipua = pytest.importorskip("sipua", reason="sipua not installed (.ci/run: pip install --no-deps)")
sipmessage = pytest.importorskip("sipmessage")


@pytest.fixture
async def switch(buyer: Buyer) -> AsyncIterator[MiniSwitch]:
    sw = MiniSwitch([buyer.uri])
    await sw.start()
    yield sw
    await sw.stop()


@pytest.fixture
def loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    # sipua gathers with aioice, which skips loopback (libs.md §2).
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


async def place_call(switch: MiniSwitch) -> tuple[object, object, list[int]]:
    app = sipua.Application()
    await app.connect_websocket(f"ws://127.0.0.1:{switch.http_port}/sip")
    call = sipua.Call.create_uac(
        dialog_layer=app.dialog_layer,
        dtls=True,
        local_address=sipmessage.Address.parse("<sip:alice@127.0.0.1>"),
        remote_address=sipmessage.Address.parse("<sip:+15550100000@127.0.0.1;transport=ws>"),
    )
    frames = [0]

    async def read() -> None:
        track = call.audioTransceiver.receiver.track
        while True:
            await track.recv()
            frames[0] += 1

    await asyncio.wait_for(call.invite(), 10)
    reader = asyncio.ensure_future(read())
    call._dce_reader = reader  # keep a reference
    return app, call, frames


async def test_sipua_call_carries_audio_both_ways_and_bye_ends_the_buyer_leg(
    loopback: None, switch: MiniSwitch, buyer: Buyer
) -> None:
    app, call, frames = await place_call(switch)
    try:
        assert await wait_for(lambda: buyer.rtp_in >= 25 and frames[0] >= 20, 10)
        await asyncio.wait_for(call.hangup(), 5)  # type: ignore[attr-defined]
        assert await wait_for(lambda: bool(buyer.calls) and buyer.calls[0].bye, 5)
        assert await wait_for(lambda: len(switch.cdrs) == 1, 3)
        cdr = switch.cdrs[0]
        assert cdr.source == "webrtc" and cdr.outcome == Outcome.ANSWERED
        assert cdr.hangup_side == HangupSide.CALLER
        stats = switch.media_stats[cdr.call_id]
        assert stats["packets_a_to_b"] >= 25 and stats["packets_b_to_a"] >= 20
        assert await wait_for(lambda: switch.ports.free == switch.ports.capacity, 3)
    finally:
        call._dce_reader.cancel()  # type: ignore[attr-defined]
        await app.close()  # type: ignore[attr-defined]


async def test_dropped_websocket_ends_both_legs_with_a_cdr(
    loopback: None, switch: MiniSwitch, buyer: Buyer
) -> None:
    app, call, _ = await place_call(switch)
    try:
        assert await wait_for(lambda: buyer.rtp_in >= 10, 10)
        # The browser's tab dies: the socket goes, no BYE is sent.
        await app.close()  # type: ignore[attr-defined]
        assert await wait_for(lambda: bool(buyer.calls) and buyer.calls[0].bye, 5)
        assert await wait_for(lambda: len(switch.cdrs) == 1, 3)
        assert switch.cdrs[0].hangup_side == HangupSide.CALLER
    finally:
        call._dce_reader.cancel()  # type: ignore[attr-defined]
