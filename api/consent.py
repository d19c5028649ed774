"""Consent records, ``/consent`` (admin only): record, list, read and revoke.

A record is stored in PostgreSQL and added to the gate's ``ConsentStore`` at once (the switch
reads it on every call). Revoking keeps the record as evidence with ``revoked_at`` set
(domain.md §4.3); ``DELETE /consent?caller=`` revokes every live consent of a caller ("stop
calling me"). Lists are keyset-paginated on the record id (api/pagination.py).
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Final
from urllib.parse import quote

import msgspec
from aiohttp import web

from api.auth import Access
from api.bodies import JSON_TYPES, json_response, read_body
from api.context import ApiContext
from api.errors import ApiError, Conflict, Invalid, NotFound
from api.models import ConsentIn, ConsentList, ConsentRevoked
from api.pagination import PAGING, decode_key, encode_key, page_limit
from api.routes import STR, Param, Route
from api.validation import PHONE_NUMBER, decode, phone_number, query_params
from compliance.consent import ConsentRecord
from compliance.errors import ComplianceError
from exchange.models import Campaign, Trunk
from store.errors import StoreConflict

__all__ = ["ROUTES"]

logger = logging.getLogger(__name__)

_DECODE_CONSENT = msgspec.json.Decoder(ConsentIn)
_DECODE_ID_CURSOR = msgspec.json.Decoder(str)
_LIST_PARAMS: Final = frozenset({"caller", "campaign_id", "limit", "cursor"})


def _revoked(record: ConsentRecord, at: datetime) -> ConsentRecord:
    """``ConsentStore.revoke``'s rule: an earlier revocation stands; never before the grant."""
    if record.revoked_at is not None and record.revoked_at <= at:
        return record
    return msgspec.structs.replace(record, revoked_at=max(at, record.granted_at))


async def create_consent(ctx: ApiContext, request: web.Request) -> web.Response:
    body = decode(_DECODE_CONSENT, await read_body(request, JSON_TYPES))
    caller = phone_number(body.caller, "caller")
    granted = body.granted_at or ctx.wall()
    if granted.tzinfo is None:
        raise Invalid("granted_at", "needs a time zone (e.g. Z or +00:00)")
    if body.revoked_at is not None:
        if body.revoked_at.tzinfo is None:
            raise Invalid("revoked_at", "needs a time zone (e.g. Z or +00:00)")
        if body.revoked_at < granted:
            raise Invalid("revoked_at", "is before granted_at")
    if await ctx.store.exchange.get_doc("campaigns", body.campaign_id, Campaign) is None:
        raise Invalid("campaign_id", f"no campaign {body.campaign_id!r}")
    if body.trunk_id is not None and (
        await ctx.store.exchange.get_doc("trunks", body.trunk_id, Trunk) is None
    ):
        raise Invalid("trunk_id", f"no trunk {body.trunk_id!r}")
    record = ConsentRecord(
        id=body.id or uuid.uuid4().hex,
        caller=caller,
        campaign_id=body.campaign_id,
        trunk_id=body.trunk_id,
        disclosure=body.disclosure,
        source_url=body.source_url,
        certificate_id=body.certificate_id,
        granted_at=granted,
        revoked_at=body.revoked_at,
    )
    try:
        await ctx.store.compliance.insert_consent(record)
    except StoreConflict as exc:
        raise Conflict(str(exc), error="duplicate id") from exc
    try:
        ctx.gate.consent.add(record)
    except ComplianceError as exc:
        # Checked above; a disagreement is our bug: the record is stored, the gate is not.
        logger.exception("consent stored but refused by the gate", extra={"id": record.id})
        raise ApiError() from exc
    location = f"{request.path.rstrip('/')}/{quote(record.id, safe='')}"
    return json_response(record, 201, {"Location": location})


async def list_consent(ctx: ApiContext, request: web.Request) -> web.Response:
    q = query_params(request, _LIST_PARAMS)
    caller = phone_number(q["caller"], "caller") if "caller" in q else None
    limit = page_limit(q)
    after = decode_key(q["cursor"], _DECODE_ID_CURSOR) if "cursor" in q else None
    rows = await ctx.store.compliance.list_consents(
        caller=caller, campaign_id=q.get("campaign_id"), after_id=after, limit=limit + 1
    )
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = encode_key(rows[-1].id) if more else None
    return json_response(ConsentList(items=rows, next_cursor=cursor))


async def get_consent(ctx: ApiContext, request: web.Request) -> web.Response:
    record_id = request.match_info["id"]
    record = await ctx.store.compliance.get_consent(record_id)
    if record is None:
        raise NotFound(f"no consent {record_id!r}")
    return json_response(record)


async def revoke_consent(ctx: ApiContext, request: web.Request) -> web.Response:
    """DELETE /consent/{id}: revoke now; the record is kept as evidence (domain.md §4.3)."""
    record_id = request.match_info["id"]
    record = await ctx.store.compliance.get_consent(record_id)
    if record is None:
        raise NotFound(f"no consent {record_id!r}")
    at = ctx.wall()
    new = _revoked(record, at)
    if new is not record:
        await ctx.store.compliance.update_consent(new)
        ctx.gate.consent.revoke(record_id, at)
    return json_response(new)


async def revoke_caller_consent(ctx: ApiContext, request: web.Request) -> web.Response:
    """DELETE /consent?caller=E164[&campaign_id=]: "stop calling me" revokes them all."""
    q = query_params(request, frozenset({"caller", "campaign_id"}))
    if "caller" not in q:
        raise Invalid("caller", "required: whose consent to revoke")
    caller = phone_number(q["caller"], "caller")
    at = ctx.wall()
    n = 0
    for record in await ctx.store.compliance.list_consents(
        caller=caller, campaign_id=q.get("campaign_id")
    ):
        if record.revoked_at is None:
            await ctx.store.compliance.update_consent(_revoked(record, at))
            ctx.gate.consent.revoke(record.id, at)
            n += 1
    return json_response(ConsentRevoked(revoked=n))


ROUTES: Final[tuple[Route, ...]] = (
    Route("POST", "/consent", "create_consent", create_consent, Access.ADMIN,
          "Record a consent", ConsentIn, ConsentRecord, 201,
          errors=(400, 409, 413, 415, 422)),
    Route("GET", "/consent", "list_consent", list_consent, Access.ADMIN,
          "List consent records", None, ConsentList, query=(
              Param("caller", STR, "the consumer's number", checked=PHONE_NUMBER),
              Param("campaign_id", STR, "campaign named by the consent"),
              *PAGING,
          ), errors=(422,)),
    Route("DELETE", "/consent", "revoke_caller_consent", revoke_caller_consent,
          Access.ADMIN, "Revoke every live consent of a caller (kept as evidence)", None,
          ConsentRevoked, query=(
              Param("caller", STR, "the consumer's number", required=True,
                    checked=PHONE_NUMBER),
              Param("campaign_id", STR, "only consents naming this campaign"),
          ), errors=(422,)),
    Route("GET", "/consent/{id}", "get_consent", get_consent, Access.ADMIN,
          "Read a consent record", None, ConsentRecord),
    Route("DELETE", "/consent/{id}", "revoke_consent", revoke_consent, Access.ADMIN,
          "Revoke a consent now (the record is kept as evidence)", None, ConsentRecord),
)  # fmt: skip
