"""GDPR erasure, ``DELETE /callers/{number}`` (admin only).

The number is replaced by a keyed hash (the gate's ``Suppression``; without the switch's
erasure secret the route answers 503) in CDRs, auction records and consent records, all its
spellings included; it leaves the DNC lists it was on but stays blocked on them (and on every
call with ``block_all``) through a hashed suppression entry. Queued CDRs are flushed first so
that none escapes the rewrite; the database is rewritten before memory, so a failure leaves
the two agreeing. The suppression entry is stored before the DNC lists lose the number, and
other instances apply it first (dce/sync.py), so nowhere is the number off both at once.
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web

from api.auth import Access
from api.bodies import json_response
from api.context import ApiContext
from api.dnc import update_list
from api.errors import Unavailable
from api.models import ErasureResult
from api.routes import Param, Route
from api.validation import bool_param, phone_number, query_params
from compliance.dnc import DncList, dnc_key
from compliance.erasure import ALL, erase_caller

__all__ = ["ROUTES", "number_forms"]

logger = logging.getLogger(__name__)


def number_forms(e164: str) -> list[str]:
    """Spellings of one E.164 number that may be stored: with and without ``+`` (and the
    ten-digit national form in the NANP)."""
    forms = [e164, e164[1:]]
    if e164.startswith("+1") and len(e164) == 12:
        forms.append(e164[2:])
    return forms


async def erase(ctx: ApiContext, request: web.Request) -> web.Response:
    e164 = phone_number(request.match_info["number"], "number")
    q = query_params(request, frozenset({"block_all"}))
    block_all = bool_param(q, "block_all", False)
    sup = ctx.gate.suppression
    if sup is None:
        raise Unavailable("erasure needs the switch's erasure secret (no suppression set)")
    if ctx.flush_cdrs is not None:
        await ctx.flush_cdrs()  # CDRs still queued reach the table before the rewrite
    async with ctx.compliance_lock:
        replacement = sup.hash(e164)
        lists = ctx.gate.dnc.lookup(e164)
        scope = set(lists) | set(sup.scope(e164) or ()) | ({ALL} if block_all else set())
        # The database first: if it fails, memory still agrees with what is stored.
        rows = await ctx.store.compliance.erase_caller(
            number_forms(e164), replacement, sorted(scope)
        )
        report = erase_caller(
            e164,
            suppression=sup,
            dnc=ctx.gate.dnc,
            consent=ctx.gate.consent,
            block_all=block_all,
        )
        sup.add(e164, scope)  # also when empty: the entry records that the number was erased
        key = dnc_key(e164)

        def drop(lst: DncList | None) -> DncList | None:
            # This instance's copy lost the number above; a newer stored one loses it here.
            if lst is not None:
                lst.discard(key)
            return lst

        for name in report.dnc_lists:
            await update_list(ctx, name, drop)
    logger.info("caller erased", extra={"hash": replacement, "cdrs": rows.cdrs})
    return json_response(
        ErasureResult(
            hash=replacement,
            cdrs=rows.cdrs,
            consent_records=rows.consents,
            dnc_lists=report.dnc_lists,
            suppressed=sorted(scope),
        )
    )


ROUTES: Final[tuple[Route, ...]] = (
    Route("DELETE", "/callers/{number}", "erase_caller", erase, Access.ADMIN,
          "GDPR erasure: replace the number by a keyed hash in CDRs, auction records and "
          "consent; keep a hashed suppression entry", None, ErasureResult,
          query=(Param("block_all", {"type": "boolean"},
                       "also block the number on every call, not only its DNC lists"),),
          errors=(422, 503)),
)  # fmt: skip
