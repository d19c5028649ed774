"""DNC lists: bulk import (``POST /dnc``), the loaded lists, and a number's lookup (admin only).

An import stores the new list in PostgreSQL (store/dnc.py), then swaps it into the gate's
``DncStore`` (the switch reads it on every call); the database's notification carries it to
every other switch instance (dce/sync.py). ``update_list`` is that path for any change to a
list: under the list's lock in the database it builds on the stored version (this instance's
copy when it is that version), so two instances merging into one list at once both count.
Its answer names the campaigns that use the list, and warns when none does.
The body is ``text/plain`` or ``text/csv`` (the first column is the number), streamed and
parsed chunk by chunk up to ``dnc_max_bytes`` (default ``DNC_MAX_BODY``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import multiprocessing
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Final

import msgspec
from aiohttp import web

from api.auth import Access
from api.bodies import json_response
from api.context import ApiContext
from api.errors import Invalid, PayloadTooLarge, UnsupportedMediaType
from api.models import DncImported, DncListInfo, DncLists, DncLookup
from api.routes import STR, Param, Route
from api.validation import (
    DNC_NAME,
    bool_param,
    int_param,
    parse_time,
    phone_number,
    query_params,
)
from compliance.dnc import (
    DEFAULT_MAX_AGE_DAYS,
    DncImporter,
    DncList,
    ImportReport,
    build_import,
    release_memory,
)
from compliance.erasure import ALL

__all__ = [
    "DNC_BODY_RULE",
    "DNC_MAX_BODY",
    "MAX_AGE_DAYS",
    "ROUTES",
    "campaigns_using",
    "unused_warning",
    "update_list",
]

logger = logging.getLogger(__name__)

DNC_MAX_BODY: Final = 512 << 20  # streamed DNC imports (~40 million numbers)
MAX_AGE_DAYS: Final = 3650
DNC_BODY_RULE: Final = "at least one phone number, unless merge=true"
_DNC_TYPES: Final = frozenset({"text/plain", "text/csv"})
# Below this many numbers the sort takes under ~50 ms here: cheaper than a trip to the worker.
_INLINE_SORT: Final = 200_000
_pool: ProcessPoolExecutor | None = None


def _sort_pool() -> ProcessPoolExecutor:
    """One worker process for big imports, started on first use ("spawn": never fork a
    process that runs an event loop and sockets)."""
    global _pool
    if _pool is None:
        _pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    return _pool
_DNC_PARAMS: Final = frozenset({"list", "source", "merge", "loaded_at", "max_age_days"})


async def import_dnc(ctx: ApiContext, request: web.Request) -> web.Response:
    q = query_params(request, _DNC_PARAMS)
    name = q.get("list")
    if name is None:
        raise Invalid("list", "the list name is required (?list=NAME)")
    if not DNC_NAME.match(name):
        raise Invalid("list", f"DNC list name {name!r} must match {DNC_NAME.pattern}")
    loaded_at = parse_time("loaded_at", q["loaded_at"]) if "loaded_at" in q else ctx.wall()
    merge = bool_param(q, "merge", False)
    max_age: int | None = DEFAULT_MAX_AGE_DAYS
    if q.get("max_age_days") == "none":
        max_age = None
    elif "max_age_days" in q:
        max_age = int_param(q, "max_age_days", DEFAULT_MAX_AGE_DAYS, 1, MAX_AGE_DAYS)
    if request.content_type not in _DNC_TYPES:
        raise UnsupportedMediaType(f"expected text/plain or text/csv, got {request.content_type}")
    limit = ctx.dnc_max_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"Content-Length {request.content_length} exceeds {limit}")
    # Streamed: each chunk is parsed as it arrives, so memory is the numbers, not the body;
    # 256 KiB chunks hold the loop for ~8 ms each (parsing runs ~35 MB/s).
    importer = DncImporter()
    async for chunk in request.content.iter_chunked(1 << 18):
        if importer.bytes_read + len(chunk) > limit:
            raise PayloadTooLarge(f"body exceeds {limit} bytes")
        importer.feed(chunk)
    importer.finish()  # the last line (finish_import's own call is then a no-op)
    if importer.imported == 0 and not merge:
        # Replacing a list with nothing is almost always the wrong file: keep the list.
        raise Invalid(
            "body",
            f"no number in {importer.read} lines ({importer.rejected} rejected); "
            "the list is unchanged",
        )
    reports: list[ImportReport] = []
    job = functools.partial(
        build_import,
        name,
        importer,
        source=q.get("source", "api"),
        loaded_at=loaded_at,
        merge=merge,
        max_age_days=max_age,
    )

    async def build(base: DncList | None) -> DncList:
        # The gate keeps the list in use until the new one is stored. Big lists are sorted in
        # a worker process: sorting 10 M numbers holds the GIL for seconds, and the switch
        # must go on routing calls meanwhile.
        size = importer.imported + (len(base) if base is not None else 0)
        if size < _INLINE_SORT:
            new, report = job(base)
        else:
            new, report = await asyncio.get_running_loop().run_in_executor(
                _sort_pool(), job, base
            )
            importer.drop_keys()  # the worker had its own copy
            release_memory()
        reports.append(report)
        return new

    async with ctx.compliance_lock:
        await update_list(ctx, name, build, base=merge)
    report = reports[0]
    try:
        users = await campaigns_using(ctx, name)
        warning = None if users else unused_warning(name)
    except Exception as exc:  # the list is saved: answer that, not a 500
        logger.exception("reading the campaigns after a DNC import failed")
        users, warning = [], f"the list is imported; which campaigns use it is unknown ({exc})"
    logger.info(
        "DNC list imported",
        extra={"list": name, "imported": report.imported, "rejected": report.rejected,
               "campaigns": users},
    )
    if warning is not None:
        logger.warning(warning, extra={"list": name})
    return json_response(
        DncImported(**msgspec.structs.asdict(report), campaigns=users, warning=warning)
    )


async def campaigns_using(ctx: ApiContext, name: str) -> list[str]:
    """The campaigns whose policy requires the list ``name`` (inactive ones included)."""
    cfg = await ctx.store.exchange.read_config()
    return sorted(c.id for c in cfg.campaigns if name in c.compliance.dnc_lists)


def unused_warning(name: str) -> str:
    """What an import into a list no campaign uses is told (the API and ``dce dnc import``)."""
    return (
        f"no campaign uses the DNC list {name!r}: it blocks no call until a campaign names it "
        "in compliance.dnc_lists"
    )


async def update_list(
    ctx: ApiContext,
    name: str,
    change: Callable[[DncList | None], DncList | Awaitable[DncList | None] | None],
    *,
    base: bool = True,
) -> DncList | None:
    """Store ``change(stored list)`` as list ``name``'s new version, then put it in the gate.

    ``change`` gets the stored list (None if there is none, or if ``base`` is False: a
    replacement needs none) and returns the new one, or None to change nothing. It may change
    the list it is given in place: that is this instance's copy only when it is the stored
    version already, and the gate takes the result only once it is stored.
    """
    async with ctx.store.dnc.writing(name) as w:
        current = None
        if base and w.version is not None:
            mine = ctx.gate.dnc.get(name)
            if mine is not None and ctx.dnc_versions.get(name) == w.version:
                current = mine
            else:  # another instance changed it since this one loaded it
                current = await w.load()
        changed = change(current)
        new = await changed if inspect.isawaitable(changed) else changed
        if new is None:
            return None
        version = await w.save(new)
    if version > ctx.dnc_versions.get(name, -1):  # not if a newer one was synced meanwhile
        ctx.gate.dnc.put(new)
        ctx.dnc_versions[name] = version
    return new


async def list_dnc(ctx: ApiContext, request: web.Request) -> web.Response:
    now = ctx.wall()
    items = [
        DncListInfo(
            name=lst.name,
            source=lst.source,
            loaded_at=lst.loaded_at,
            numbers=len(lst),
            max_age_days=lst.max_age_days,
            stale=lst.is_stale(now),
        )
        for lst in sorted(ctx.gate.dnc, key=lambda x: x.name)
    ]
    return json_response(DncLists(items=items))


async def lookup_dnc(ctx: ApiContext, request: web.Request) -> web.Response:
    e164 = phone_number(request.match_info["number"], "number")
    lists = set(ctx.gate.dnc.lookup(e164))
    sup = ctx.gate.suppression
    scope = sup.scope(e164) if sup is not None else None
    if scope is not None:
        lists |= scope - {ALL}
    return json_response(DncLookup(number=e164, lists=sorted(lists), suppressed=scope is not None))


ROUTES: Final[tuple[Route, ...]] = (
    Route("POST", "/dnc", "import_dnc", import_dnc, Access.ADMIN,
          "Bulk-import a DNC list (text/plain or CSV; first column; streamed)", "text",
          DncImported, query=(
              Param("list", {"type": "string", "pattern": DNC_NAME.pattern},
                    "list name, e.g. federal, internal", required=True),
              Param("source", STR, "where the data came from (default: api)"),
              Param("merge", {"type": "boolean"}, "add to the list instead of replacing it"),
              Param("loaded_at", {"type": "string", "format": "date-time"},
                    "when the data was pulled (default now); staleness counts from here"),
              Param("max_age_days", {"anyOf": [
                        {"type": "integer", "minimum": 1, "maximum": MAX_AGE_DAYS},
                        {"const": "none"}]},
                    "days before the list is stale (31), or none"),
          ), errors=(413, 415, 422)),
    Route("GET", "/dnc", "list_dnc", list_dnc, Access.ADMIN,
          "List the loaded DNC lists", None, DncLists),
    Route("GET", "/dnc/{number}", "lookup_dnc", lookup_dnc, Access.ADMIN,
          "Which DNC lists hold a number", None, DncLookup, errors=(422,)),
)  # fmt: skip
