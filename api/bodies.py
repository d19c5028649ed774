"""Bodies on the wire: reading a request body within its limits, writing a JSON answer.

Request bodies are JSON (``application/json``; PATCH also takes
``application/merge-patch+json``, RFC 7396) up to ``MAX_BODY``, else 413; another content
type is 415. Answers write every field of a struct, defaults included.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from aiohttp import web

from api.errors import PayloadTooLarge, UnsupportedMediaType
from api.models import ErrorBody

__all__ = [
    "JSON_TYPES",
    "MAX_BODY",
    "PATCH_TYPES",
    "error_response",
    "full",
    "json_response",
    "read_body",
]

MAX_BODY: Final = 1 << 20  # JSON bodies (SPEC: 413 above 1 MiB)
JSON_TYPES: Final = frozenset({"application/json"})
PATCH_TYPES: Final = frozenset({"application/json", "application/merge-patch+json"})
_ENCODER = msgspec.json.Encoder()


async def read_body(request: web.Request, types: frozenset[str], limit: int = MAX_BODY) -> bytes:
    """The whole body, once its content type is one of ``types`` and it is within ``limit``.

    Raises:
        UnsupportedMediaType: another content type (415).
        PayloadTooLarge: Content-Length, or the bytes received, exceed ``limit`` (413).
    """
    if request.content_type not in types:
        raise UnsupportedMediaType(
            f"expected {' or '.join(sorted(types))}, got {request.content_type}"
        )
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"Content-Length {request.content_length} exceeds {limit}")
    data = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        data += chunk
        if len(data) > limit:
            raise PayloadTooLarge(f"body exceeds {limit} bytes")
    return bytes(data)


def full(obj: Any) -> Any:
    """Plain data for a response: every struct field written, defaults included (the models
    omit defaults when stored, but a client should see ``"active": true``)."""
    if isinstance(obj, msgspec.Struct):
        names = zip(obj.__struct_fields__, obj.__struct_encode_fields__, strict=True)
        return {wire: full(getattr(obj, f)) for f, wire in names}
    if isinstance(obj, list | tuple):
        return [full(v) for v in obj]
    if isinstance(obj, dict):
        return {k: full(v) for k, v in obj.items()}
    return obj


def json_response(
    obj: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=_ENCODER.encode(full(obj)),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(
    status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None
) -> web.Response:
    return json_response(ErrorBody(error=error, detail=detail), status, headers)
