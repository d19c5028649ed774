"""Live calls: ``GET /calls/live`` (who, since when, which buyer, media so far) and
``DELETE /calls/live/{call_id}`` (the operator hangs one up).

The API never imports the switch (tests/test_imports.py): the application hands it a
:class:`LiveSource`, two callables over plain data (dce/livecalls.py builds it from the running
switch core, the routing bridge and the media). Without one (an API with no switch behind it)
there are no live calls. A buyer key sees only the calls its buyer is on; hanging up is for
the admin token. A hung-up call's CDR follows within a moment, with ``hangup_side``
``operator`` (docs/cdr.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from aiohttp import web

from api.auth import PRINCIPAL, Access
from api.bodies import json_response
from api.context import ApiContext
from api.errors import NotFound
from api.models import LiveCall, LiveCallList
from api.routes import STR, Param, Route
from api.validation import query_params

__all__ = ["ROUTES", "LiveSource"]

_PARAMS: Final = frozenset({"trunk_id", "campaign_id", "buyer_id"})


@dataclass(frozen=True, slots=True)
class LiveSource:
    """The running switch's live calls, as plain data (``LiveCall`` fields by name).

    ``calls()`` lists them; ``hang_up(call_id)`` ends one and returns it as it was just
    before, or None when no live call has that id.
    """

    calls: Callable[[], Sequence[Mapping[str, Any]]]
    hang_up: Callable[[str], Mapping[str, Any] | None]


def _view(values: Mapping[str, Any]) -> LiveCall:
    return msgspec.convert(dict(values), LiveCall)


async def list_live(ctx: ApiContext, request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    q = query_params(request, _PARAMS)
    rows = ctx.live.calls() if ctx.live is not None else ()
    if not principal.admin:
        if q.get("buyer_id", principal.buyer_id) != principal.buyer_id:
            return json_response(LiveCallList(items=[]))  # another buyer's: none to see
        q["buyer_id"] = principal.buyer_id or ""
    items = [_view(row) for row in rows if all(row.get(k) == v for k, v in q.items())]
    items.sort(key=lambda c: (c.received_at, c.call_id))
    return json_response(LiveCallList(items=items))


async def hang_up(ctx: ApiContext, request: web.Request) -> web.Response:
    call_id = request.match_info["call_id"]
    ended = ctx.live.hang_up(call_id) if ctx.live is not None else None
    if ended is None:
        raise NotFound(f"no live call {call_id!r}")
    return json_response(_view(ended))


ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/calls/live", "list_live_calls", list_live, Access.BUYER,
          "List the calls in progress (a buyer key sees only its own)", None, LiveCallList,
          query=(
              Param("trunk_id", STR, "seller trunk"),
              Param("campaign_id", STR, "campaign"),
              Param("buyer_id", STR, "the buyer the call is offered to or talks with"),
          ), errors=(422,)),
    Route("DELETE", "/calls/live/{call_id}", "hang_up_call", hang_up, Access.ADMIN,
          "Hang up a call in progress: BYE to both legs (before the answer the caller gets "
          "480 operator_hangup); its CDR says hangup_side operator", None, LiveCall,
          errors=(404,)),
)  # fmt: skip
