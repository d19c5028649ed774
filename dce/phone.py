"""The softphone page, ``GET /phone`` (SPEC.md "Media": "The switch serves a small softphone
page at /phone").

The page and its script are the project's own files in ``dce/static/``: no build step, no
CDN, no third-party bundle. Its SIP client speaks RFC 7118 to ``ws(s)://<same host>/sip``
(subprotocol ``sip``) and its media is the browser's WebRTC stack; the switch terminates both
(switch/websocket.py, media/webrtc.py).

Query parameters the page understands (all optional): ``token`` (the trunk's WebSocket
credential, passed on to ``/sip?token=``), ``user`` and ``password`` (digest, RFC 8760
SHA-256), ``number`` (pre-filled), ``autodial=1`` (tests).

A browser cannot read the status of a refused WebSocket upgrade, so ``GET /phone/check?token=``
answers what the upgrade would say of the token (``{"token": "accepted" | "refused" |
"none"}``), and the page tells "token refused" from "switch unreachable". It reveals no more
than the upgrade itself does, and is logged like a refused upgrade.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

logger = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")

#: What /phone serves, by name: file and content type. Nothing else under /phone/ exists.
FILES = {
    "phone.js": ("phone.js", "text/javascript"),
    "phone.css": ("phone.css", "text/css"),
}

# Same-origin everything; the SIP WebSocket is same-origin too ('self' covers ws/wss in CSP3,
# the explicit schemes keep older engines working).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; media-src 'self' blob: mediastream:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def _page(request: web.Request) -> web.StreamResponse:
    return _file("phone.html", "text/html")


async def _asset(request: web.Request) -> web.StreamResponse:
    entry = FILES.get(request.match_info["name"])
    if entry is None:
        raise web.HTTPNotFound()
    return _file(*entry)


def _file(name: str, content_type: str) -> web.Response:
    body = (STATIC / name).read_bytes()
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=HEADERS)


def add_phone_routes(
    app: web.Application, token_check: Callable[[web.Request], str | None] | None = None
) -> None:
    """``GET /phone`` (the page), ``GET /phone/{phone.js,phone.css}`` and
    ``GET /phone/check`` with the WebSocket upgrade's token check (dce/admit.py
    ``TrunkAdmitter.ws_token``: "" no token, a trunk id, None refused; None: no check)."""

    async def check(request: web.Request) -> web.Response:
        if "token" not in request.query:
            verdict = "none"
        elif token_check is None or token_check(request) is not None:
            verdict = "accepted"
        else:
            verdict = "refused"
            logger.info("phone page: token refused", extra={"peer": request.remote})
        return web.json_response({"token": verdict}, headers={"Cache-Control": "no-store"})

    app.router.add_get("/phone", _page)
    app.router.add_get("/phone/", _page)
    app.router.add_get("/phone/check", check)  # before {name}, which would take it
    app.router.add_get("/phone/{name}", _asset)
