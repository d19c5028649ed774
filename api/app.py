"""The admin API: JSON over HTTP under ``/api/v1`` (SPEC.md "Admin API"; issues 4 and 5).

Theory of operation
-------------------
``build_api()`` returns an aiohttp application that the switch mounts at ``/api/v1``
(``mount_api()`` does that and adds the top-level ``/openapi.json``). Every route is one row
of ``ROUTES``, joined here from the resource modules (trunks, campaigns, buyers with their
endpoints and profiles, live calls, calls, reports, DNC, consent, erasure, the whole
config): method, path, handler, who may call it, and the request/response models that
``/openapi.json`` (api/openapi.py) is generated from, so the document cannot drift from the
routes.

One middleware authenticates every request except the OpenAPI document (api/auth.py) and
turns errors into answers: an ``ApiError`` is its own ``{"error": ..., "detail": ...}``; a
4xx of the router (404, 405 with ``Allow``) gets the same shape; anything else, errors of the
layers below included, is logged and answered 500.

Writes to exchange objects are validated before anything is stored (api/validation.py) and
serialised with the switch's reload (api/context.py). Compliance routes change the gate's
in-memory stores in place and persist them in PostgreSQL: consent records, erasure suppression
entries and DNC lists. They do not call ``on_change``; the database's notifications carry their
changes to other switch instances (dce/sync.py).

Errors: 400 for malformed JSON, 422 for anything well-formed that fails validation (bodies and
query parameters alike; ``detail`` is ``{"field": "caps.daily", "message": ...}``; a path or
query value with a control character too, checked here before any handler), 404, 405, 409 for
duplicates and conflicts (and a body whose id is not the path's), 413, 415, 503 when erasure
has no secret configured.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from functools import partial
from typing import Any, Final

from aiohttp import web

from api import (
    buyers,
    calls,
    campaigns,
    config,
    consent,
    dnc,
    erasure,
    live,
    openapi,
    reports,
    trunks,
)
from api.auth import PRINCIPAL, Access, Authenticator
from api.bodies import error_response
from api.context import ApiContext
from api.errors import ApiError, Forbidden
from api.routes import API_PREFIX, Route
from api.validation import check_request_text
from compliance.check import Gate
from store.database import Store

__all__ = ["ROUTES", "build_api", "mount_api"]

logger = logging.getLogger(__name__)

_RequestHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@functools.cache
def _document() -> bytes:
    """The OpenAPI document as JSON (built on first use, then cached: it never changes)."""
    return openapi.encode(openapi.document(ROUTES))


async def _openapi(request: web.Request) -> web.Response:
    """GET /openapi.json (public: it holds no data)."""
    return web.Response(body=_document(), content_type="application/json")


async def _openapi_route(ctx: ApiContext, request: web.Request) -> web.Response:
    return await _openapi(request)


ROUTES: Final[tuple[Route, ...]] = (
    *trunks.ROUTES,
    *campaigns.ROUTES,
    *buyers.ROUTES,
    *live.ROUTES,  # before calls: /calls/{call_id} would take /calls/live
    *calls.ROUTES,
    *reports.ROUTES,
    *dnc.ROUTES,
    *consent.ROUTES,
    *erasure.ROUTES,
    *config.ROUTES,
    Route("GET", "/openapi.json", "openapi", _openapi_route, Access.PUBLIC, "This document"),
)
_ACCESS: Final = {r.name: r.access for r in ROUTES}


def _middleware(auth: Authenticator) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Authentication, authorization by route, and errors as answers (see the module doc)."""

    @web.middleware
    async def middleware(request: web.Request, handler: _RequestHandler) -> web.StreamResponse:
        try:
            name = request.match_info.route.name
            access = _ACCESS.get(name) if name else None
            if access is not Access.PUBLIC:
                principal = await auth.authenticate(request)
                request[PRINCIPAL] = principal
                if access is Access.ADMIN and not principal.admin:
                    raise Forbidden("this route needs the admin token")
                check_request_text(request)  # bodies: api/validation.py check_input
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.error, exc.detail, exc.headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            return error_response(exc.status, (exc.reason or "error").lower(), None, headers)
        except Exception:
            # The API edge: log with what identifies the request, answer 500, keep serving.
            logger.exception(
                "admin API request failed", extra={"method": request.method, "path": request.path}
            )
            return error_response(500, "internal error")

    return middleware


def build_api(
    store: Store,
    *,
    admin_token: str,
    on_change: Callable[[], Awaitable[None]],
    gate: Gate | None = None,
    wall: Callable[[], datetime],
    dnc_versions: dict[str, int] | None = None,
    dnc_max_bytes: int = dnc.DNC_MAX_BODY,
    flush_cdrs: Callable[[], Awaitable[None]] | None = None,
    endpoint_health: Callable[[str], Mapping[str, Any]] | None = None,
    live_calls: live.LiveSource | None = None,
) -> web.Application:
    """The admin API as an aiohttp application to mount at ``/api/v1`` (see ``mount_api``).

    Args:
        store: connected and migrated.
        admin_token: the bearer token that may do everything (DCE_ADMIN_TOKEN).
        on_change: awaited after every committed change to trunks, campaigns, buyers,
            endpoints or profiles; it should reload the exchange config into the switch.
        gate: the switch's compliance gate, whose DNC, consent and suppression stores the
            compliance routes change in place; None: a private gate (erasure answers 503).
        wall: UTC wall clock (consent times, DNC ``loaded_at``, staleness).
        dnc_versions: the stored version of each DNC list in ``gate`` (dce/sync.py keeps it
            and the DNC routes update it); None: a private one.
        dnc_max_bytes: the largest DNC import body.
        flush_cdrs: awaited before an erasure so that queued CDRs are in the table
            (``CdrWriter.flush``).
        endpoint_health: an endpoint URI -> its probed health (``EndpointHealth`` fields),
            shown when endpoints are read; None: they read as not probed.
        live_calls: the running switch's live calls (api/live.py); None: there are none.
    """
    auth = Authenticator(admin_token, store)
    ctx = ApiContext(
        store=store,
        on_change=on_change,
        # Without the switch's gate the compliance routes work on a private one (no erasure).
        gate=gate if gate is not None else Gate(),
        wall=wall,
        dnc_versions=dnc_versions if dnc_versions is not None else {},
        dnc_max_bytes=dnc_max_bytes,
        flush_cdrs=flush_cdrs,
        endpoint_health=endpoint_health,
        live=live_calls,
    )
    app = web.Application(middlewares=[_middleware(auth)])
    for r in ROUTES:
        app.router.add_route(r.method, r.path, partial(r.handler, ctx), name=r.name)
    return app


def mount_api(root: web.Application, store: Store, **kwargs: Any) -> web.Application:
    """Mount ``build_api(store, **kwargs)`` at ``/api/v1`` and serve ``/openapi.json``."""
    api = build_api(store, **kwargs)
    root.add_subapp(API_PREFIX, api)
    root.router.add_get("/openapi.json", _openapi, allow_head=False)
    return api
