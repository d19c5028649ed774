"""media/webrtc.py: real ICE + DTLS-SRTP calls, in process.

The "browser" here is an aiortc RTCPeerConnection in the same process (its own candidates
forced onto 127.0.0.1); Chromium itself is in test_browser.py. The pure parts (SDP, G.711,
RTP re-numbering, DTMF) have their unit tests in tests/media.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aioice.ice
import pytest
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack

from media.errors import SdpError
from media.ports import PortAllocator
from media.webrtc import WebRtcConfig, WebRtcSession, open_webrtc
from media.webrtc_sdp import parse_offer
from tests.media.webrtc_offers import CHROME_OFFER, UNUSABLE_OFFERS
from tests.ports import free_port_range
from tests.webrtc.harness import Buyer, wait_for

# ------------------------------------------------------------------------- the offer


@pytest.mark.parametrize(("body", "words"), UNUSABLE_OFFERS)
async def test_unusable_offers_get_488_before_any_port_is_taken(body: bytes, words: str) -> None:
    ports = PortAllocator(*free_port_range(100))
    with pytest.raises(SdpError) as exc:
        await open_webrtc("c", body, media_ip="127.0.0.1", ports=ports, on_dead=lambda c: None)
    assert exc.value.status == 488 and words in exc.value.reason
    assert ports.free == ports.capacity  # nothing was taken


# ------------------------------------------------------------------------- real calls


@pytest.fixture
def loopback_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """The aiortc "browser" gathers on 127.0.0.1 (aioice skips loopback, libs.md §2)."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


class Client:
    """An aiortc peer connection playing the browser: G.711 only, counts frames received."""

    def __init__(self, codec: str = "PCMU") -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        tr = self.pc.addTransceiver(AudioStreamTrack(), direction="sendrecv")
        caps = RTCRtpSender.getCapabilities("audio").codecs
        tr.setCodecPreferences([c for c in caps if c.mimeType == f"audio/{codec}"])
        self.frames = 0
        self._reader: asyncio.Task[None] | None = None

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._reader = asyncio.ensure_future(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                await track.recv()
                self.frames += 1
        except MediaStreamError:
            pass

    async def offer(self) -> bytes:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp.encode()

    async def answer(self, sdp: bytes) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp.decode(), "answer"))

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()


def buyer_sdp(buyer: Buyer, codec: int = 0) -> bytes:
    name = "PCMU" if codec == 0 else "PCMA"
    return (
        "v=0\r\no=b 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {buyer.rtp_port} RTP/AVP {codec} 101\r\na=rtpmap:{codec} {name}/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
    ).encode()


@pytest.fixture
def ports() -> Iterator[PortAllocator]:
    # Above the kernel's ephemeral range, so no outgoing socket can hold one of these ports.
    allocator = PortAllocator(*free_port_range(100), rng=random.Random(3))
    yield allocator


@pytest.fixture
async def client(loopback_client: None) -> AsyncIterator[Client]:
    c = Client()
    yield c
    await c.close()


async def open_session(
    client: Client, ports: PortAllocator, dead: list[str], **config: Any
) -> WebRtcSession:
    return await open_webrtc(
        "call-1",
        await client.offer(),
        media_ip="127.0.0.1",
        ports=ports,
        on_dead=dead.append,
        config=WebRtcConfig(**config),
        rng=random.Random(5),
    )


async def test_media_flows_both_ways_and_ports_come_back(
    client: Client, buyer: Buyer, ports: PortAllocator
) -> None:
    dead: list[str] = []
    session = await open_session(client, ports, dead)
    assert ports.in_use == 2  # plain RTP/RTCP pair + ICE pair
    b_offer = session.b_offer.decode()
    assert f"m=audio {session.plain_port} RTP/AVP 0 8 101" in b_offer
    assert "c=IN IP4 127.0.0.1" in b_offer and "telephone-event/8000" in b_offer
    answer = session.b_answered(buyer_sdp(buyer))
    text = answer.decode()
    assert "a=setup:active" in text and "a=fingerprint:sha-256" in text
    assert f"127.0.0.1 {session.ice_port} typ host" in text
    await client.answer(answer)
    assert await wait_for(lambda: buyer.rtp_in >= 50 and client.frames >= 40, 10)
    assert buyer.rtp_from == {("127.0.0.1", session.plain_port)}
    assert buyer.payload_types == {0}
    # SIP INFO DTMF becomes RFC 4733 toward the buyer.
    assert session.send_dtmf("5") and session.send_dtmf("#", 100)
    assert await wait_for(lambda: buyer.events == [5, 11], 3)
    stats = session.stats().cdr_fields()
    assert stats["packets_a_to_b"] >= 50 and stats["packets_b_to_a"] >= 40
    assert dead == []
    session.close()
    await session.wait_closed()
    assert ports.free == ports.capacity


async def test_buyer_on_the_other_law_is_translated(
    client: Client, buyer: Buyer, ports: PortAllocator
) -> None:
    buyer.codec = 8
    session = await open_session(client, ports, [])
    await client.answer(session.b_answered(buyer_sdp(buyer, codec=8)))
    assert await wait_for(lambda: buyer.rtp_in >= 20 and client.frames >= 20, 10)
    assert buyer.payload_types == {8}
    session.close()
    await session.wait_closed()


async def test_browser_that_goes_away_is_reported_dead(
    client: Client, buyer: Buyer, ports: PortAllocator
) -> None:
    dead: list[str] = []
    session = await open_session(client, ports, dead, dead_after=2.0)
    await client.answer(session.b_answered(buyer_sdp(buyer)))
    assert await wait_for(lambda: buyer.rtp_in >= 10, 10)
    # Stop the browser's sender without any goodbye: silence, then on_dead.
    await client.pc.getTransceivers()[0].sender.stop()
    assert await wait_for(lambda: dead == ["call-1"], 6)
    assert "no media" in (session.dead_reason or "")
    session.close()
    await session.wait_closed()
    assert ports.free == ports.capacity


async def test_dtls_close_is_reported_dead(
    client: Client, buyer: Buyer, ports: PortAllocator
) -> None:
    dead: list[str] = []
    session = await open_session(client, ports, dead)
    await client.answer(session.b_answered(buyer_sdp(buyer)))
    assert await wait_for(lambda: session.connected, 10)
    await client.pc.close()  # DTLS close_notify
    assert await wait_for(lambda: dead == ["call-1"], 3)
    session.close()
    await session.wait_closed()


async def test_browser_that_never_connects_is_reported_dead(
    client: Client, buyer: Buyer, ports: PortAllocator
) -> None:
    dead: list[str] = []
    session = await open_session(client, ports, dead, connect_timeout=1.5)
    session.b_answered(buyer_sdp(buyer))  # the answer never reaches the "browser"
    assert await wait_for(lambda: dead == ["call-1"], 5)
    assert "not up" in (session.dead_reason or "")
    session.close()
    await session.wait_closed()
    assert ports.free == ports.capacity


async def test_hold_and_resume_from_the_browser(
    client: Client, buyer: Buyer, ports: PortAllocator
) -> None:
    dead: list[str] = []
    session = await open_session(client, ports, dead, dead_after=1.5)
    await client.answer(session.b_answered(buyer_sdp(buyer)))
    assert await wait_for(lambda: session.connected, 10)
    offer = (await client.offer()).replace(b"a=sendrecv", b"a=sendonly")
    b_offer = session.reoffer(True, offer)
    assert b"a=sendonly" in b_offer
    a_answer = session.reanswer(
        True, buyer_sdp(buyer).replace(b"t=0 0\r\n", b"t=0 0\r\na=recvonly\r\n")
    )
    assert b"a=recvonly" in a_answer
    # An ICE restart is refused.
    restart = offer.replace(parse_offer(offer).ice_ufrag.encode(), b"zzzz")
    with pytest.raises(SdpError):
        session.reoffer(True, restart)
    session.close()
    await session.wait_closed()


async def test_concurrent_sessions_share_the_allocator(
    loopback_client: None, buyer: Buyer, ports: PortAllocator
) -> None:
    clients = [Client() for _ in range(5)]
    offers = [await c.offer() for c in clients]
    sessions = await asyncio.gather(
        *(
            open_webrtc(f"c{i}", offer, media_ip="127.0.0.1", ports=ports, on_dead=lambda c: None)
            for i, offer in enumerate(offers)
        )
    )
    assert ports.in_use == 10
    assert len({s.ice_port for s in sessions} | {s.plain_port for s in sessions}) == 10
    for c, s in zip(clients, sessions, strict=True):
        await c.answer(s.b_answered(buyer_sdp(buyer)))
    assert await wait_for(lambda: all(c.frames > 10 for c in clients), 10)
    for c, s in zip(clients, sessions, strict=True):
        s.close()
        await c.close()
    for s in sessions:
        await s.wait_closed()
    assert ports.free == ports.capacity


async def test_the_callers_set_holds_each_shutdown_until_it_is_done() -> None:
    ports = PortAllocator(*free_port_range(100))
    closing: set[asyncio.Task[None]] = set()
    session = await open_webrtc(
        "c",
        CHROME_OFFER,
        media_ip="127.0.0.1",
        ports=ports,
        on_dead=lambda c: None,
        closing=closing,
    )
    assert ports.in_use == 2
    session.close()
    assert len(closing) == 1  # the caller may drop the session now
    await asyncio.gather(*closing)
    assert not closing
    assert ports.free == ports.capacity
