"""One row of the route table: what the router mounts and what /openapi.json says about it.

Each resource module lists its rows (``ROUTES``); api/app.py joins them into the one table the
application and the OpenAPI document (api/openapi.py) are both built from.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from api.auth import Access
from api.context import ApiContext

__all__ = ["API_PREFIX", "STR", "Handler", "Param", "Route"]

API_PREFIX: Final = "/api/v1"
STR: Final = {"type": "string"}

# A route's handler: called with the shared context and the request (build_api binds the first).
Handler = Callable[[ApiContext, web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Param:
    """A query parameter: its JSON schema and what it means."""

    name: str
    schema: dict[str, Any]
    description: str
    required: bool = False
    # What the handler checks beyond ``schema`` (a 422 naming the parameter), in a few words:
    # /openapi.json's "x-checked".
    checked: str = ""


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # under API_PREFIX
    name: str  # operationId and route name
    handler: Handler
    access: Access
    summary: str
    body: type[Any] | str | None = None  # a model, "patch:<Model>", "text" (DNC)
    response: type[Any] | None = None
    status: int = 200
    query: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    # Other content types the success answer may have (a text body, e.g. "text/csv"),
    # besides ``response`` as JSON.
    alt_types: tuple[str, ...] = ()
