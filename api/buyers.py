"""Buyers, ``/buyers``, with their endpoints and bid profiles (``/buyers/{buyer_id}/...``).

The admin creates and deletes buyers; a buyer's key reads and changes its own buyer, endpoints
and profiles (api/auth.py). A buyer is created with its endpoints and profiles in one request
and its API key is shown once, in that answer (generated when not given); only the key's hash
is stored. PUT and PATCH change a buyer's own fields (``api_key`` rotates the key); its
endpoints and profiles have their own routes, the generic ones of api/documents.py.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Final
from urllib.parse import quote

import msgspec
from aiohttp import web

from api.auth import PRINCIPAL, Access, require_own
from api.bodies import JSON_TYPES, PATCH_TYPES, json_response, read_body
from api.context import ApiContext
from api.documents import Kind, buyer_in, crud_routes, id_conflict
from api.errors import Conflict, NotFound
from api.models import (
    BuyerCreated,
    BuyerList,
    BuyerUpdate,
    BuyerView,
    EndpointHealth,
    EndpointList,
    EndpointView,
    ProfileList,
)
from api.routes import Route
from api.validation import (
    check_buyer,
    check_endpoint,
    check_profile,
    convert,
    decode,
    decode_patch,
    merge_patch,
    validate_candidate,
)
from exchange.models import BidProfile, Buyer, Endpoint
from store.errors import StoreConflict
from store.exchange import hash_api_key

__all__ = ["ENDPOINTS", "PROFILES", "ROUTES"]

_DECODE_BUYER = msgspec.json.Decoder(Buyer)
_DECODE_BUYER_UPDATE = msgspec.json.Decoder(BuyerUpdate)

_NOT_PROBED: Final = EndpointHealth(state="unknown", probing=False)


def _endpoint_view(ctx: ApiContext, ep: Endpoint) -> EndpointView:
    """An endpoint with its health, as the switch's OPTIONS probes see its URI."""
    probed = ctx.endpoint_health
    health = _NOT_PROBED if probed is None else msgspec.convert(probed(ep.uri), EndpointHealth)
    return EndpointView(
        id=ep.id, uri=ep.uri, max_concurrent=ep.max_concurrent, active=ep.active, health=health
    )


ENDPOINTS: Final = Kind(
    "endpoint", "endpoints", Endpoint, msgspec.json.Decoder(Endpoint), check_endpoint, child=True,
    live_view=_endpoint_view, live_model=EndpointView,
)
PROFILES: Final = Kind(
    "profile", "profiles", BidProfile, msgspec.json.Decoder(BidProfile), check_profile, child=True
)


def _buyer_view(b: Buyer) -> BuyerView:
    return BuyerView(
        id=b.id, name=b.name, active=b.active, endpoints=b.endpoints, profiles=b.profiles
    )


async def list_buyers(ctx: ApiContext, request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    buyers = await ctx.store.exchange.list_buyers(only=principal.buyer_id)
    return json_response(BuyerList(items=[_buyer_view(b) for b in buyers]))


async def get_buyer(ctx: ApiContext, request: web.Request) -> web.Response:
    buyer_id = request.match_info["buyer_id"]
    require_own(request, buyer_id)
    buyer = await ctx.store.exchange.get_buyer(buyer_id)
    if buyer is None:
        raise NotFound(f"no buyer {buyer_id!r}")
    return json_response(_buyer_view(buyer))


async def create_buyer(ctx: ApiContext, request: web.Request) -> web.Response:
    buyer = decode(_DECODE_BUYER, await read_body(request, JSON_TYPES))
    check_buyer(buyer)
    api_key = buyer.api_key or f"dce_{secrets.token_urlsafe(32)}"
    bare = msgspec.structs.replace(buyer, api_key=None)
    async with ctx.changing() as cfg:
        if buyer_in(cfg, buyer.id) is not None:
            raise Conflict(f"buyer {buyer.id!r} already exists", error="duplicate id")
        candidate = msgspec.structs.replace(cfg, buyers=[*cfg.buyers, bare])
        validate_candidate(candidate, f"buyers[{len(candidate.buyers) - 1}]")
        try:
            await ctx.store.exchange.insert_buyer(bare, hash_api_key(api_key))
        except StoreConflict as exc:
            raise Conflict(str(exc), error="duplicate") from exc
    view = _buyer_view(bare)
    created = BuyerCreated(**{f: getattr(view, f) for f in view.__struct_fields__}, api_key=api_key)
    location = f"{request.path.rstrip('/')}/{quote(buyer.id, safe='')}"
    return json_response(created, 201, {"Location": location})


async def put_buyer(ctx: ApiContext, request: web.Request) -> web.Response:
    buyer_id = request.match_info["buyer_id"]
    require_own(request, buyer_id)
    update = decode(_DECODE_BUYER_UPDATE, await read_body(request, JSON_TYPES))
    if update.id != buyer_id:
        raise id_conflict(buyer_id)
    return await _update_buyer(ctx, buyer_id, lambda current: update)


async def patch_buyer(ctx: ApiContext, request: web.Request) -> web.Response:
    buyer_id = request.match_info["buyer_id"]
    require_own(request, buyer_id)
    patch = decode_patch(await read_body(request, PATCH_TYPES), BuyerUpdate)
    if "id" in patch and patch["id"] != buyer_id:
        raise id_conflict(buyer_id)

    def merged(current: Buyer) -> BuyerUpdate:
        base = msgspec.to_builtins(
            BuyerUpdate(id=current.id, name=current.name, active=current.active)
        )
        return convert(merge_patch(base, patch), BuyerUpdate)

    return await _update_buyer(ctx, buyer_id, merged)


async def _update_buyer(
    ctx: ApiContext, buyer_id: str, make: Callable[[Buyer], BuyerUpdate]
) -> web.Response:
    async with ctx.changing() as cfg:
        current = buyer_in(cfg, buyer_id)
        if current is None:
            raise NotFound(f"no buyer {buyer_id!r}")
        update = make(current)
        new = msgspec.structs.replace(current, name=update.name, active=update.active)
        candidate = msgspec.structs.replace(
            cfg, buyers=[*(b for b in cfg.buyers if b.id != buyer_id), new]
        )
        validate_candidate(candidate, f"buyers[{len(candidate.buyers) - 1}]")
        key_hash = hash_api_key(update.api_key) if update.api_key else None
        try:
            if not await ctx.store.exchange.update_buyer(new, key_hash):
                raise NotFound(f"no buyer {buyer_id!r}")
        except StoreConflict as exc:
            raise Conflict(str(exc), error="duplicate") from exc
    return json_response(_buyer_view(new))


async def delete_buyer(ctx: ApiContext, request: web.Request) -> web.Response:
    buyer_id = request.match_info["buyer_id"]
    async with ctx.changing() as cfg:
        if buyer_in(cfg, buyer_id) is None:
            raise NotFound(f"no buyer {buyer_id!r}")
        validate_candidate(
            msgspec.structs.replace(cfg, buyers=[b for b in cfg.buyers if b.id != buyer_id]),
            None,
        )
        await ctx.store.exchange.delete_buyer(buyer_id)
    return web.Response(status=204)


_BUYER = "/buyers/{buyer_id}"
ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/buyers", "list_buyers", list_buyers, Access.BUYER,
          "List buyers (a buyer key sees only its own)", None, BuyerList),
    Route("POST", "/buyers", "create_buyer", create_buyer, Access.ADMIN,
          "Create a buyer, with endpoints and profiles; the answer shows its API key, once",
          Buyer, BuyerCreated, 201, errors=(400, 409, 413, 415, 422)),
    Route("GET", _BUYER, "get_buyer", get_buyer, Access.BUYER,
          "Read a buyer with its endpoints and profiles", None, BuyerView),
    Route("PUT", _BUYER, "put_buyer", put_buyer, Access.BUYER,
          "Replace a buyer's own fields; api_key rotates its key", BuyerUpdate, BuyerView,
          errors=(400, 409, 413, 415, 422)),
    Route("PATCH", _BUYER, "patch_buyer", patch_buyer, Access.BUYER,
          "Change some of a buyer's own fields (RFC 7396 merge patch)", "patch:BuyerUpdate",
          BuyerView, errors=(400, 409, 413, 415, 422)),
    Route("DELETE", _BUYER, "delete_buyer", delete_buyer, Access.ADMIN,
          "Delete a buyer with its endpoints and profiles", None, None, 204, errors=(409,)),
    *crud_routes(f"{_BUYER}/endpoints", ENDPOINTS, Access.BUYER, EndpointList),
    *crud_routes(f"{_BUYER}/profiles", PROFILES, Access.BUYER, ProfileList),
)  # fmt: skip
