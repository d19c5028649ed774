"""RTB against real local HTTP bidders: fast, slow past the deadline, garbage, failing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from exchange.rtb import RtbAnswer, RtbClient, RtbRequest, parse_answer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Bidders:
    """Real aiohttp servers on 127.0.0.1, one path per behaviour; counts and keeps requests."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.bodies: dict[str, list[dict[str, Any]]] = {}
        self.base = ""
        self._runner: web.AppRunner | None = None

    def _wrap(self, name: str, fn: Handler) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            self.hits[name] = self.hits.get(name, 0) + 1
            self.bodies.setdefault(name, []).append(await request.json())
            return await fn(request)

        return handler

    async def start(self) -> None:
        async def fast(_: web.Request) -> web.Response:
            return web.json_response({"bid": "12.50", "expires_in": 30, "min_duration": 60})

        async def slow(_: web.Request) -> web.Response:
            await asyncio.sleep(0.5)
            return web.json_response({"bid": "99.00", "expires_in": 30})

        async def garbage(_: web.Request) -> web.Response:
            return web.Response(body=b"\x00not json{{", content_type="application/json")

        async def float_bid(_: web.Request) -> web.Response:
            return web.Response(text='{"bid": 12.5}', content_type="application/json")

        async def negative(_: web.Request) -> web.Response:
            return web.json_response({"bid": "-1"})

        async def error(_: web.Request) -> web.Response:
            return web.Response(status=500, text="boom")

        async def nobid(_: web.Request) -> web.Response:
            return web.Response(status=204)

        async def decline(_: web.Request) -> web.Response:
            return web.json_response({"bid": "0", "expires_in": 60})

        async def huge(_: web.Request) -> web.Response:
            return web.Response(text='{"bid": "1", "pad": "' + "x" * 100_000 + '"}')

        async def nocache(_: web.Request) -> web.Response:
            return web.json_response({"bid": "3.000001"})

        app = web.Application()
        for name, fn in [
            ("fast", fast),
            ("slow", slow),
            ("garbage", garbage),
            ("float", float_bid),
            ("negative", negative),
            ("error", error),
            ("nobid", nobid),
            ("decline", decline),
            ("huge", huge),
            ("nocache", nocache),
        ]:
            app.router.add_post(f"/{name}", self._wrap(name, fn))
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def req(self, name: str, caller: str = "+12125550100", key: str | None = None) -> RtbRequest:
        return RtbRequest(
            key=key or f"{name}/p1", url=f"{self.base}/{name}", caller=caller, body={"id": "c1"}
        )


@pytest.fixture
async def bidders() -> AsyncIterator[Bidders]:
    b = Bidders()
    await b.start()
    yield b
    await b.stop()


@pytest.fixture
async def client() -> AsyncIterator[RtbClient]:
    c = RtbClient(timeout=0.1)
    yield c
    await c.aclose()


async def test_only_answers_before_the_deadline_count(bidders: Bidders, client: RtbClient) -> None:
    names = ["fast", "slow", "garbage", "float", "negative", "error", "nobid", "huge"]
    t0 = time.perf_counter()
    answers = await client.collect([bidders.req(n) for n in names])
    elapsed = time.perf_counter() - t0
    assert answers == {"fast/p1": RtbAnswer(bid=12_500_000, min_duration=60, expires_in=30)}
    assert elapsed < 0.3  # the slow bidder (0.5 s) is not waited for
    assert all(bidders.hits.get(n) == 1 for n in names)  # every one was asked, in parallel
    s = client.stats
    assert s["requests"] == 8
    assert s["answers"] == 1
    assert s["late"] == 1
    assert s["malformed"] == 3  # garbage, a float bid, a negative bid
    assert s["failed"] == 2  # HTTP 500, an oversized body
    assert s["declined"] == 1  # 204


async def test_answers_are_reused_for_the_same_caller_until_they_expire(bidders: Bidders) -> None:
    now = [1000.0]
    client = RtbClient(timeout=0.2, monotonic=lambda: now[0])
    try:
        first = await client.collect([bidders.req("fast")])
        again = await client.collect([bidders.req("fast")])
        assert first == again
        assert bidders.hits["fast"] == 1  # no second ping
        assert client.stats["cache_hits"] == 1
        await client.collect([bidders.req("fast", caller="+13105550100")])
        assert bidders.hits["fast"] == 2  # another caller is another question
        now[0] += 31  # expires_in was 30 s
        await client.collect([bidders.req("fast")])
        assert bidders.hits["fast"] == 3
        # A decline with expires_in is an answer too: no re-ping while it stands.
        await client.collect([bidders.req("decline")])
        assert await client.collect([bidders.req("decline")]) == {
            "decline/p1": RtbAnswer(bid=0, expires_in=60)
        }
        assert bidders.hits["decline"] == 1
        # Without expires_in nothing is cached.
        await client.collect([bidders.req("nocache")])
        await client.collect([bidders.req("nocache")])
        assert bidders.hits["nocache"] == 2
        # Without a caller there is no cache key.
        await client.collect([bidders.req("fast", caller="")])
        await client.collect([bidders.req("fast", caller="")])
        assert bidders.hits["fast"] == 5
    finally:
        await client.aclose()


async def test_concurrent_requests_for_one_caller_share_one_ping(
    bidders: Bidders, client: RtbClient
) -> None:
    results = await asyncio.gather(*(client.collect([bidders.req("fast")]) for _ in range(10)))
    assert bidders.hits["fast"] == 1
    assert all(r == results[0] and r for r in results)


async def test_unreachable_bidder_is_out(client: RtbClient) -> None:
    r = RtbRequest(key="x/p1", url="http://127.0.0.1:1/bid", caller="+1", body={})
    assert await client.collect([r]) == {}
    assert client.stats["failed"] == 1


async def test_request_carries_the_time_left(bidders: Bidders, client: RtbClient) -> None:
    await client.collect([bidders.req("fast")])
    body = bidders.bodies["fast"][0]
    assert body["id"] == "c1"
    assert 0 < body["tmax_ms"] <= 100


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"bid": "12.50", "expires_in": 30, "min_duration": 60}', RtbAnswer(12_500_000, 60, 30)),
        (b'{"bid": "0.000001"}', RtbAnswer(1)),
        (b'{"bid": "7", "extra": {"x": 1}}', RtbAnswer(7_000_000)),
        (b'{"bid": "0"}', RtbAnswer(0)),
    ],
    ids=["full", "micro", "extra-fields", "decline"],
)
def test_parse_answer(raw: bytes, expected: RtbAnswer) -> None:
    assert parse_answer(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b'{"bid": 12.5}',
        b'{"bid": "1e3"}',
        b'{"bid": "1.0000001"}',
        b'{"bid": "NaN"}',
        b'{"bid": "-1"}',
        b'{"bid": "5", "expires_in": -1}',
        b'{"bid": "5", "min_duration": 99999}',
        b'{"expires_in": 3}',
        json.dumps({"bid": "12345678"}).encode(),
    ],
    ids=[
        "empty",
        "array",
        "float",
        "exponent",
        "7-decimals",
        "nan",
        "negative",
        "neg-expiry",
        "long-duration",
        "no-bid",
        "too-large",
    ],
)
def test_parse_answer_refuses(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_answer(raw)
