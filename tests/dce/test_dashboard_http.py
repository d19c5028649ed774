"""dce/dashboard.py over HTTP: the public page, the token-guarded snapshot and event stream,
the buyer's view, a revoked key, the seed from a real PostgreSQL, and shutdown."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from api.auth import Authenticator
from dce.aggregates import LiveStats
from dce.dashboard import Dashboard
from store.database import Store
from tests.api.conftest import ADMIN_TOKEN, KEY_B1, seed_config
from tests.dce.test_aggregates import call, cdr
from tests.store.test_reports import insert


class Board:
    def __init__(self, client: TestClient[web.Request, web.Application], stats: LiveStats,
                 dashboard: Dashboard, store: Store) -> None:  # fmt: skip
        self.client = client
        self.stats = stats
        self.dashboard = dashboard
        self.store = store

    async def get(self, path: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.client.get(path, headers=headers) as resp:
            return resp.status, dict(resp.headers), await resp.read()


@pytest.fixture
async def store(database_url: str, pg_schema: str) -> AsyncIterator[Store]:
    s = Store(schema=pg_schema)
    await s.connect(database_url)
    await s.migrate()
    await s.exchange.upsert_config(seed_config())  # buyers b1 and b2 with their keys
    yield s
    await s.close()


async def _board(store: Store, started_at: float, **kw: Any) -> AsyncIterator[Board]:
    stats = LiveStats(started_at)
    live = {"n": 0}
    dashboard = Dashboard(stats, Authenticator(ADMIN_TOKEN, store), lambda: live["n"],
                          store=store, push_s=0.05, **kw)  # fmt: skip
    app = web.Application()
    dashboard.add_routes(app)
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield Board(client, stats, dashboard, store)
    finally:
        await client.close()


@pytest.fixture
async def board(store: Store) -> AsyncIterator[Board]:
    async for b in _board(store, time.time()):
        yield b


async def test_the_page_is_public_and_locked_down(board: Board) -> None:
    status, headers, body = await board.get("/dashboard")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'src="/dashboard/dashboard.js"' in body
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "connect-src 'self'" in csp
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        status, headers, _ = await board.get(f"/dashboard/{name}")
        assert status == 200 and headers["Content-Type"].startswith(kind)
    assert (await board.get("/dashboard/secrets.txt"))[0] == 404
    assert (await board.get("/dashboard/../server.py"))[0] == 404


@pytest.mark.parametrize("token", [None, "not-a-token-anyone-has-0000000000"], ids=["none", "bad"])
@pytest.mark.parametrize("path", ["/dashboard/snapshot", "/dashboard/events"])
async def test_data_needs_a_token(board: Board, path: str, token: str | None) -> None:
    status, headers, body = await board.get(path, token)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert json.loads(body)["error"] == "unauthorized"


async def test_operator_and_buyer_snapshots(board: Board) -> None:
    now = time.time()
    call(board.stats, cdr("1", now - 5, buyer="b1", campaign="c1"))
    call(board.stats, cdr("2", now - 4, buyer="b2", campaign="c1"))
    status, headers, body = await board.get("/dashboard/snapshot", ADMIN_TOKEN)
    assert status == 200 and headers["Cache-Control"] == "no-store"
    operator = json.loads(body)
    assert operator["role"] == "operator"
    assert operator["totals"]["calls"] == 2 and operator["totals"]["payout"] == "3.500000"
    status, _, body = await board.get("/dashboard/snapshot", KEY_B1)
    buyer = json.loads(body)
    assert (buyer["role"], buyer["buyer_id"]) == ("buyer", "b1")
    assert buyer["totals"]["calls"] == 1 and buyer["totals"]["revenue"] == "2.500000"
    assert b"payout" not in body and b"margin" not in body and b"b2" not in body


async def _events(resp: Any, n: int) -> list[tuple[str, Any]]:
    """The next ``n`` events of an SSE body."""
    out: list[tuple[str, Any]] = []
    buffer = b""
    while len(out) < n:
        chunk = await asyncio.wait_for(resp.content.readany(), 5)
        assert chunk, "the stream ended"
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            fields = dict(line.split(b": ", 1) for line in block.split(b"\n"))
            out.append((fields[b"event"].decode(), json.loads(fields[b"data"])))
    return out


async def test_the_stream_pushes_each_change(board: Board) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with board.client.get("/dashboard/events", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        [(kind, first)] = await _events(resp, 1)
        assert kind == "snapshot" and first["totals"]["calls"] == 0
        call(board.stats, cdr("1", time.time() - 1))
        for _ in range(20):
            [(kind, later)] = await _events(resp, 1)
            if later["totals"]["calls"] == 1:
                break
        assert later["totals"]["revenue"] == "2.500000"
        assert board.dashboard.streams == 1
    for _ in range(50):  # the server notices the closed stream at its next write
        if board.dashboard.streams == 0:
            break
        await asyncio.sleep(0.05)
    assert board.dashboard.streams == 0


async def test_a_replaced_buyer_key_ends_its_stream(store: Store) -> None:
    async for board in _board(store, time.time(), reauth_s=0.1):
        headers = {"Authorization": f"Bearer {KEY_B1}"}
        async with board.client.get("/dashboard/events", headers=headers) as resp:
            [(kind, _)] = await _events(resp, 1)
            assert kind == "snapshot"
            cfg = seed_config()
            cfg.buyers[0].api_key = "bk_test_b1_replaced_" + "9" * 20
            await store.exchange.upsert_config(cfg)
            kinds = []
            for _ in range(40):
                [(kind, _)] = await _events(resp, 1)
                kinds.append(kind)
                if kind == "denied":
                    break
            assert kinds[-1] == "denied"
            assert await resp.content.read() == b""  # and the stream ends


async def test_the_seed_reads_the_hour_before_the_start(store: Store) -> None:
    started = time.time()
    start = datetime.fromtimestamp(started, UTC)
    await insert(store, [
        cdr("db-1", (start - timedelta(minutes=10)).timestamp(), buyer="b1"),
        cdr("db-2", (start - timedelta(minutes=20)).timestamp(), buyer=None, talk_s=None,
            rule="dnc"),
        cdr("db-old", (start - timedelta(minutes=90)).timestamp()),  # before the hour
        # Ended after the start: the pump feeds such calls, the seed must not count them again.
        cdr("db-after", started + 0.5, talk_s=None, setup_s=0.1, rule="busy"),
    ])  # fmt: skip
    async for board in _board(store, started):
        for _ in range(100):
            status, _, body = await board.get("/dashboard/snapshot", ADMIN_TOKEN)
            assert status == 200
            snap = json.loads(body)
            if snap["totals"]["calls"]:
                break
            await asyncio.sleep(0.05)
        assert snap["totals"]["calls"] == 2 and snap["totals"]["answered"] == 1
        assert snap["rules"] == [{"rule": "dnc", "calls": 1}]
        assert sum(snap["series"]["arrivals"]) == 2


async def test_shutdown_ends_open_streams_at_once(board: Board) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    resp = await board.client.get("/dashboard/events", headers=headers)
    await _events(resp, 1)
    t0 = time.monotonic()
    await board.client.close()  # the runner's cleanup: on_shutdown, then waits for handlers
    assert time.monotonic() - t0 < 2.0
    resp.release()
