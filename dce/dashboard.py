"""The live dashboard: ``GET /dashboard`` for the operator and for each buyer.

The page (``dce/static/dashboard.*``: the project's own HTML, CSS and JavaScript, plots drawn
in SVG; no CDN, no build step, no third-party code) is public. Its data is not:

* ``GET /dashboard/events``: server-sent events (``text/event-stream``), one ``snapshot``
  event a second, each the whole picture as JSON (dce/aggregates.py ``LiveStats.snapshot``).
* ``GET /dashboard/snapshot``: the same JSON once.

Both take ``Authorization: Bearer <token>``, like the admin API (api/auth.py): the admin token
gives the operator's view; a buyer's API key gives that buyer's, with only the calls it took
and its own money (its spend as ``revenue``; no payout, no margin). The page keeps the token
in ``sessionStorage``, typed into its form or passed once as ``#token=...`` in the URL
fragment (which browsers never send), and reads the stream with ``fetch()`` so that the token
travels in a header: ``EventSource`` cannot send one, and a token in a query string ends up in
proxies' logs. This module never logs a token (aiohttp's access log is off). A buyer's stream
checks its key again every ``REAUTH_S`` seconds and ends with a ``denied`` event once the
key is replaced or the buyer deleted.

Updates need no database query: the numbers are the switch's own (``LiveStats``, fed by the
pump). At start a background task seeds them with what the database holds of the last hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import msgspec
from aiohttp import web

from api.auth import Authenticator, Principal
from api.bodies import error_response
from api.errors import ApiError
from dce.aggregates import LiveStats
from store.database import Store
from store.reports import recent

__all__ = ["MAX_STREAMS", "PUSH_S", "REAUTH_S", "Dashboard"]

logger = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
PUSH_S: Final = 1.0  # a snapshot a second on each stream
REAUTH_S: Final = 60.0
MAX_STREAMS: Final = 64
SEED_TIMEOUT: Final = 15.0

FILES: Final = {
    "dashboard.js": ("dashboard.js", "text/javascript"),
    "dashboard.css": ("dashboard.css", "text/css"),
}
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS: Final = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_ENCODER = msgspec.json.Encoder()


class Dashboard:
    """The dashboard's routes over one switch's ``LiveStats``."""

    def __init__(
        self,
        stats: LiveStats,
        auth: Authenticator,
        live_calls: Callable[[], int],
        *,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
        push_s: float = PUSH_S,
        reauth_s: float = REAUTH_S,
    ) -> None:
        self.stats = stats
        self.auth = auth
        self.live_calls = live_calls
        self.store = store  # None: no seed from the database
        self.clock = clock
        self.push_s = push_s
        self.reauth_s = reauth_s
        self.streams = 0
        self._closing = asyncio.Event()
        # One encoded snapshot per view and second, shared by every stream on that view.
        self._cache: dict[str | None, tuple[tuple[int, int, int], bytes]] = {}

    def add_routes(self, app: web.Application) -> None:
        """``/dashboard`` (page and assets), ``/dashboard/snapshot``, ``/dashboard/events``."""
        app.router.add_get("/dashboard", self._page)
        app.router.add_get("/dashboard/", self._page)
        app.router.add_get("/dashboard/snapshot", self._snapshot, allow_head=False)
        app.router.add_get("/dashboard/events", self._events, allow_head=False)
        app.router.add_get("/dashboard/{name}", self._asset)
        app.cleanup_ctx.append(self._background)
        app.on_shutdown.append(self._shutdown)

    # -- data ----------------------------------------------------------------------------------

    def encoded(self, buyer_id: str | None) -> bytes:
        """The snapshot for a view as JSON bytes (cached for the second)."""
        now = self.clock()
        live = self.live_calls()
        key = (int(now), self.stats.version, live)
        hit = self._cache.get(buyer_id)
        if hit is not None and hit[0] == key:
            return hit[1]
        self.stats.sample(now, live)
        body = _ENCODER.encode(self.stats.snapshot(now, buyer_id=buyer_id, live_calls=live))
        self._cache[buyer_id] = (key, body)
        return body

    async def _principal(self, request: web.Request) -> Principal | web.Response:
        try:
            return await self.auth.authenticate(request)
        except ApiError as exc:
            return error_response(exc.status, exc.error, exc.detail, exc.headers)
        except Exception:
            # A buyer key is looked up in the database; it may be down. The token is not logged.
            logger.exception("dashboard: checking a token failed")
            return error_response(503, "unavailable", "the database did not answer; try again")

    async def _snapshot(self, request: web.Request) -> web.Response:
        principal = await self._principal(request)
        if isinstance(principal, web.Response):
            return principal
        return web.Response(
            body=self.encoded(principal.buyer_id),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def _events(self, request: web.Request) -> web.StreamResponse:
        principal = await self._principal(request)
        if isinstance(principal, web.Response):
            return principal
        if self.streams >= MAX_STREAMS:
            return error_response(503, "unavailable", f"{MAX_STREAMS} dashboards are open")
        response = web.StreamResponse(
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )
        response.content_type = "text/event-stream"
        response.charset = "utf-8"
        self.streams += 1
        try:
            await response.prepare(request)
            await self._stream(request, response, principal)
        except (ConnectionResetError, ConnectionError):
            pass  # the page went away
        finally:
            self.streams -= 1
        return response

    async def _stream(
        self, request: web.Request, response: web.StreamResponse, principal: Principal
    ) -> None:
        loop = asyncio.get_running_loop()
        recheck = loop.time() + self.reauth_s
        while not self._closing.is_set():
            body = self.encoded(principal.buyer_id)
            await response.write(b"event: snapshot\ndata: " + body + b"\n\n")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.push_s)
            if not principal.admin and loop.time() >= recheck:
                recheck = loop.time() + self.reauth_s
                again = await self._principal(request)
                if isinstance(again, web.Response) and again.status == 401:
                    await response.write(b'event: denied\ndata: {"error": "unknown token"}\n\n')
                    return

    # -- the page ------------------------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.Response:
        return _file("dashboard.html", "text/html")

    async def _asset(self, request: web.Request) -> web.Response:
        entry = FILES.get(request.match_info["name"])
        if entry is None:
            raise web.HTTPNotFound()
        return _file(*entry)

    # -- lifecycle -----------------------------------------------------------------------------

    async def _background(self, app: web.Application) -> AsyncIterator[None]:
        """The live-calls sampler, and the seed from the database, while HTTP runs."""
        tasks = [asyncio.create_task(self._sample())]
        if self.store is not None:
            tasks.append(asyncio.create_task(self._seed(self.store)))
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _shutdown(self, app: web.Application) -> None:
        self._closing.set()  # streams end within PUSH_S, before aiohttp waits for handlers

    async def _sample(self) -> None:
        while True:
            self.stats.sample(self.clock(), self.live_calls())
            await asyncio.sleep(self.push_s)

    async def _seed(self, store: Store) -> None:
        """The last hour from the database: what ended before this process started."""
        stats = self.stats
        until = stats.started_at
        window = stats.slot_s * stats.slots
        try:
            async with asyncio.timeout(SEED_TIMEOUT):
                tallies, arrivals = await recent(
                    store,
                    since=datetime.fromtimestamp(until - window, UTC),
                    until=datetime.fromtimestamp(until, UTC),
                    slot_s=stats.slot_s,
                )
        except Exception:
            # Task edge: the page then starts from this process's calls only.
            logger.warning("dashboard: reading the last hour from the database failed",
                           exc_info=True)  # fmt: skip
            return
        stats.seed(self.clock(), tallies, arrivals)


def _file(name: str, content_type: str) -> web.Response:
    body = (STATIC / name).read_bytes()
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=HEADERS)
