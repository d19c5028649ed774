"""Calls: CDRs, ``/calls`` (a page, newest first) and ``/calls/{call_id}`` (with the auction).

The admin sees every CDR; a buyer key sees only the calls its buyer took, without ``payout``
(the seller's share) and with only its own entries of the sealed-bid auction record
(``auction_for_buyer``). Pages are keyset-paginated on ``(received_at, call_id)``
(api/pagination.py), so a walk with any page size sees every CDR once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import msgspec
from aiohttp import web

from api.auth import PRINCIPAL, Access, Principal
from api.bodies import json_response
from api.context import ApiContext
from api.errors import Invalid, NotFound
from api.models import CallDetail, CallPage, CallSummary
from api.pagination import PAGING, decode_key, encode_key, not_ours, page_limit
from api.routes import STR, Param, Route
from api.validation import parse_time, query_params
from store.cdr import Disposition

__all__ = ["ROUTES", "auction_for_buyer", "decode_cursor", "encode_cursor"]

_DECODE_CURSOR = msgspec.json.Decoder(tuple[datetime, str])
_OWN_AUCTION_KEYS: Final = ("campaign_id", "rule", "ranking", "tie_break", "elapsed_us")
_CALL_PARAMS: Final = frozenset(
    {"from", "to", "buyer_id", "disposition", "campaign_id", "trunk_id", "limit", "cursor"}
)


def encode_cursor(received_at: datetime, call_id: str) -> str:
    """The opaque cursor after a row: base64url of ``[received_at, call_id]``."""
    return encode_key([received_at, call_id])


def decode_cursor(text: str) -> tuple[datetime, str]:
    ts, call_id = decode_key(text, _DECODE_CURSOR)
    if ts.tzinfo is None:
        raise not_ours()
    return ts, call_id


def auction_for_buyer(record: dict[str, Any] | None, buyer_id: str) -> dict[str, Any] | None:
    """What a buyer may see of a sealed-bid auction: its own entries, never the others' bids
    (nor the clearing price unless it won)."""
    if not isinstance(record, dict):
        return None
    own = f"{buyer_id}/"

    def mine(key: object) -> bool:
        return isinstance(key, str) and key.startswith(own)

    def as_dict(v: object) -> dict[str, Any]:
        return v if isinstance(v, dict) else {}

    def as_list(v: object) -> list[Any]:
        return v if isinstance(v, list) else []

    out: dict[str, Any] = {k: record[k] for k in _OWN_AUCTION_KEYS if k in record}
    out["eligible"] = [k for k in as_list(record.get("eligible")) if mine(k)]
    out["excluded"] = {k: v for k, v in as_dict(record.get("excluded")).items() if mine(k)}
    out["bids"] = {k: v for k, v in as_dict(record.get("bids")).items() if mine(k)}
    out["order"] = [
        o for o in as_list(record.get("order")) if as_dict(o).get("buyer_id") == buyer_id
    ]
    winner = record.get("winner")
    won = isinstance(winner, dict) and winner.get("buyer_id") == buyer_id
    out["winner"] = winner if won else None
    out["price"] = record.get("price") if won else None
    out["fallback"] = [b for b in as_list(record.get("fallback")) if b == buyer_id]
    return out


def _call(kind: type[CallSummary], row: dict[str, Any], principal: Principal) -> CallSummary:
    values: dict[str, Any] = {f: row.get(f) for f in kind.__struct_fields__}
    values["compliance"] = list(values["compliance"] or [])
    if not principal.admin:
        values["payout"] = None  # the seller's share is not the buyer's business
    return kind(**values)


async def list_calls(ctx: ApiContext, request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    q = query_params(request, _CALL_PARAMS)
    since = parse_time("from", q["from"]) if "from" in q else None
    until = parse_time("to", q["to"]) if "to" in q else None
    disposition = q.get("disposition")
    if disposition is not None and disposition not in Disposition.__members__.values():
        raise Invalid(
            "disposition",
            f"expected one of {[str(d) for d in Disposition]}, got {disposition!r}",
        )
    limit = page_limit(q)
    before = decode_cursor(q["cursor"]) if "cursor" in q else None
    buyer_id = q.get("buyer_id")
    if not principal.admin:
        if buyer_id not in (None, principal.buyer_id):
            return json_response(CallPage(items=[], next_cursor=None))
        buyer_id = principal.buyer_id
    rows = await ctx.store.cdrs.query(
        since=since,
        until=until,
        buyer_id=buyer_id,
        disposition=disposition,
        campaign_id=q.get("campaign_id"),
        trunk_id=q.get("trunk_id"),
        before=before,
        limit=limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    items = [_call(CallSummary, row, principal) for row in rows]
    cursor = encode_cursor(rows[-1]["received_at"], rows[-1]["call_id"]) if more else None
    return json_response(CallPage(items=items, next_cursor=cursor))


async def get_call(ctx: ApiContext, request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    call_id = request.match_info["call_id"]
    row = await ctx.store.cdrs.fetch(call_id)
    if row is None or (not principal.admin and row.get("buyer_id") != principal.buyer_id):
        raise NotFound(f"no call {call_id!r}")
    if not principal.admin:
        row["auction"] = auction_for_buyer(row.get("auction"), principal.buyer_id or "")
    return json_response(_call(CallDetail, row, principal))


ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/calls", "list_calls", list_calls, Access.BUYER,
          "List CDRs newest first (a buyer key sees only its calls)", None, CallPage,
          query=(
              Param("from", {"type": "string", "format": "date-time"},
                    "received at or after (ISO 8601; naive is UTC)"),
              Param("to", {"type": "string", "format": "date-time"}, "received before"),
              Param("buyer_id", STR, "the buyer that took the call"),
              Param("disposition", {"enum": [str(d) for d in Disposition]}, "outcome"),
              Param("campaign_id", STR, "campaign"),
              Param("trunk_id", STR, "seller trunk"),
              *PAGING,
          ), errors=(422,)),
    Route("GET", "/calls/{call_id}", "get_call", get_call, Access.BUYER,
          "Read a CDR with its auction record", None, CallDetail),
)  # fmt: skip
