"""The softphone page, ``GET /phone`` (SPEC.md "Media": "The switch serves a small softphone
page at /phone").

The page and its script are the project's own files in ``dce/static/``: no build step, no
CDN, no third-party bundle. Its SIP client speaks RFC 7118 to ``ws(s)://<same host>/sip``
(subprotocol ``sip``) and its media is the browser's WebRTC stack; the switch terminates both
(switch/websocket.py, media/webrtc.py).

Query parameters the page understands (all optional): ``token`` (the trunk's WebSocket
credential, passed on to ``/sip?token=``), ``user`` and ``password`` (digest, RFC 8760
SHA-256), ``number`` (pre-filled), ``autodial=1`` (tests).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

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


def add_phone_routes(app: web.Application) -> None:
    """``GET /phone`` (the page) and ``GET /phone/{phone.js,phone.css}``."""
    app.router.add_get("/phone", _page)
    app.router.add_get("/phone/", _page)
    app.router.add_get("/phone/{name}", _asset)
