"""Create, read, replace, patch and delete one kind of exchange document, generically.

Trunks and campaigns are top-level documents; endpoints and profiles are a buyer's (a
"child" kind, under ``/buyers/{buyer_id}``). A ``Kind`` says where its documents live, how to
decode and check one, and what an answer shows; ``crud_routes`` gives the six routes of a
kind, all served by the handlers below.

A write runs under ``ApiContext.changing()``: the candidate config (what is stored, with the
object placed last in its list) is compiled by ``validate_candidate`` before the store is
touched, so a refused write changes nothing and does not reload the switch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar, cast
from urllib.parse import quote

import msgspec
from aiohttp import web

from api.auth import Access, require_own
from api.bodies import JSON_TYPES, PATCH_TYPES, json_response, read_body
from api.context import ApiContext
from api.errors import Conflict, NotFound
from api.routes import Handler, Route
from api.validation import convert, decode, decode_patch, merge_patch, validate_candidate
from exchange.models import BidProfile, Buyer, Campaign, Endpoint, ExchangeConfig, Trunk
from store.database import Store
from store.errors import StoreConflict, StoreNotFound
from store.exchange import ChildTable, DocTable

__all__ = ["Kind", "buyer_in", "crud_routes", "id_conflict"]

_D = TypeVar("_D", Trunk, Campaign, Endpoint, BidProfile)


def buyer_in(cfg: ExchangeConfig, buyer_id: str) -> Buyer | None:
    return next((b for b in cfg.buyers if b.id == buyer_id), None)


def _no_stored_check(cfg: ExchangeConfig, obj: Any) -> None:
    return None


def id_conflict(path_id: str) -> Conflict:
    """409 for a body whose ``id`` is not the path's: the representation conflicts with the
    target resource (RFC 9110 §9.3.4 suggests 409 for such a PUT); an id never changes."""
    return Conflict(
        {"field": "id", "message": f"must equal the id in the path ({path_id!r})"},
        error="the id cannot change",
    )


@dataclass(frozen=True, slots=True)
class Kind(Generic[_D]):
    """One collection of documents: top-level (trunks, campaigns) or a buyer's (child)."""

    name: str  # "trunk"
    table: str  # "trunks"; the ExchangeConfig / Buyer attribute too
    model: type[_D]
    decoder: msgspec.json.Decoder[_D]
    check: Callable[[_D, str], None]  # what the model cannot express (api/validation.py)
    child: bool
    view: Callable[[_D], Any] = lambda obj: obj  # what a response shows of a stored object
    # Checks against the other stored objects, before the candidate is compiled (409s).
    check_stored: Callable[[ExchangeConfig, _D], None] = _no_stored_check
    # What every answer shows when the running switch adds to the stored object (an
    # endpoint's health), and its model for /openapi.json; None: ``view`` and ``model``.
    live_view: Callable[[ApiContext, _D], Any] | None = None
    live_model: type[Any] | None = None

    def find(self, cfg: ExchangeConfig, parent: str | None, obj_id: str) -> _D | None:
        items = self._items(cfg, parent)
        return next((x for x in items if x.id == obj_id), None) if items is not None else None

    def _items(self, cfg: ExchangeConfig, parent: str | None) -> list[_D] | None:
        if not self.child:
            return cast(list[_D], getattr(cfg, self.table))
        buyer = buyer_in(cfg, parent or "")
        return None if buyer is None else cast(list[_D], getattr(buyer, self.table))

    def place(
        self, cfg: ExchangeConfig, parent: str | None, obj_id: str, obj: _D | None
    ) -> tuple[ExchangeConfig, str | None]:
        """``cfg`` with ``obj`` replacing (or, None, removing) ``obj_id``, moved last; and the
        path where it sits, for ``validate_candidate``."""
        items = [x for x in self._items(cfg, parent) or [] if x.id != obj_id]
        if obj is not None:
            items.append(obj)
        if not self.child:
            candidate = msgspec.structs.replace(cfg, **{self.table: items})
            return candidate, f"{self.table}[{len(items) - 1}]" if obj is not None else None
        buyer = buyer_in(cfg, parent or "")
        assert buyer is not None  # callers check the parent first
        buyers = [b for b in cfg.buyers if b.id != buyer.id]
        buyers.append(msgspec.structs.replace(buyer, **{self.table: items}))
        candidate = msgspec.structs.replace(cfg, buyers=buyers)
        prefix = f"buyers[{len(buyers) - 1}].{self.table}[{len(items) - 1}]"
        return candidate, prefix if obj is not None else None

    async def list(self, store: Store, parent: str | None) -> list[_D]:
        if self.child:
            return await store.exchange.list_children(self._child, parent or "", self.model)
        return await store.exchange.list_docs(self._doc, self.model)

    async def get(self, store: Store, parent: str | None, obj_id: str) -> _D | None:
        if self.child:
            return await store.exchange.get_child(self._child, parent or "", obj_id, self.model)
        return await store.exchange.get_doc(self._doc, obj_id, self.model)

    async def insert(self, store: Store, parent: str | None, obj: _D) -> None:
        if self.child:
            assert isinstance(obj, Endpoint | BidProfile)
            await store.exchange.insert_child(self._child, parent or "", obj)
        else:
            assert isinstance(obj, Trunk | Campaign)
            await store.exchange.insert_doc(self._doc, obj)

    async def update(self, store: Store, parent: str | None, obj: _D) -> bool:
        if self.child:
            assert isinstance(obj, Endpoint | BidProfile)
            return await store.exchange.update_child(self._child, parent or "", obj)
        assert isinstance(obj, Trunk | Campaign)
        return await store.exchange.update_doc(self._doc, obj)

    async def delete(self, store: Store, parent: str | None, obj_id: str) -> bool:
        if self.child:
            return await store.exchange.delete_child(self._child, parent or "", obj_id)
        return await store.exchange.delete_doc(self._doc, obj_id)

    @property
    def _doc(self) -> DocTable:
        return cast(DocTable, self.table)

    @property
    def _child(self) -> ChildTable:
        return cast(ChildTable, self.table)


# ----------------------------------------------------------------------------------------------
# Handlers: ``handler(kind, ctx, request)``; crud_routes binds the kind.


def _parent(request: web.Request, kind: Kind[Any]) -> str | None:
    if not kind.child:
        return None
    buyer_id = request.match_info["buyer_id"]
    require_own(request, buyer_id)
    return buyer_id


async def _require_buyer(ctx: ApiContext, buyer_id: str | None) -> None:
    if buyer_id is not None and not await ctx.store.exchange.has_buyer(buyer_id):
        raise NotFound(f"no buyer {buyer_id!r}")


async def list_objects(kind: Kind[_D], ctx: ApiContext, request: web.Request) -> web.Response:
    parent = _parent(request, kind)
    await _require_buyer(ctx, parent)
    show = _shown(kind, ctx)
    return json_response({"items": [show(x) for x in await kind.list(ctx.store, parent)]})


async def get_object(kind: Kind[_D], ctx: ApiContext, request: web.Request) -> web.Response:
    parent = _parent(request, kind)
    obj_id = request.match_info["id"]
    obj = await kind.get(ctx.store, parent, obj_id)
    if obj is None:
        await _require_buyer(ctx, parent)
        raise NotFound(f"no {kind.name} {obj_id!r}")
    return json_response(_shown(kind, ctx)(obj))


def _shown(kind: Kind[_D], ctx: ApiContext) -> Callable[[_D], Any]:
    live = kind.live_view
    return kind.view if live is None else partial(live, ctx)


async def create_object(kind: Kind[_D], ctx: ApiContext, request: web.Request) -> web.Response:
    parent = _parent(request, kind)
    obj = decode(kind.decoder, await read_body(request, JSON_TYPES))
    kind.check(obj, "")
    async with ctx.changing() as cfg:
        if kind.child and buyer_in(cfg, parent or "") is None:
            raise NotFound(f"no buyer {parent!r}")
        if kind.find(cfg, parent, obj.id) is not None:
            raise Conflict(f"{kind.name} {obj.id!r} already exists", error="duplicate id")
        await _write(kind, ctx, cfg, parent, obj, insert=True)
    location = f"{request.path.rstrip('/')}/{quote(obj.id, safe='')}"
    return json_response(_shown(kind, ctx)(obj), 201, {"Location": location})


async def put_object(kind: Kind[_D], ctx: ApiContext, request: web.Request) -> web.Response:
    parent = _parent(request, kind)
    obj_id = request.match_info["id"]
    obj = decode(kind.decoder, await read_body(request, JSON_TYPES))
    if obj.id != obj_id:
        raise id_conflict(obj_id)
    kind.check(obj, "")
    async with ctx.changing() as cfg:
        _current(kind, cfg, parent, obj_id)
        await _write(kind, ctx, cfg, parent, obj, insert=False)
    return json_response(_shown(kind, ctx)(obj))


async def patch_object(kind: Kind[_D], ctx: ApiContext, request: web.Request) -> web.Response:
    parent = _parent(request, kind)
    obj_id = request.match_info["id"]
    patch = decode_patch(await read_body(request, PATCH_TYPES), kind.model)
    if "id" in patch and patch["id"] != obj_id:
        raise id_conflict(obj_id)
    async with ctx.changing() as cfg:
        current = _current(kind, cfg, parent, obj_id)
        obj = convert(merge_patch(msgspec.to_builtins(current), patch), kind.model)
        kind.check(obj, "")
        await _write(kind, ctx, cfg, parent, obj, insert=False)
    return json_response(_shown(kind, ctx)(obj))


async def delete_object(kind: Kind[_D], ctx: ApiContext, request: web.Request) -> web.Response:
    parent = _parent(request, kind)
    obj_id = request.match_info["id"]
    async with ctx.changing() as cfg:
        _current(kind, cfg, parent, obj_id)
        candidate, _ = kind.place(cfg, parent, obj_id, None)
        validate_candidate(candidate, None)
        await kind.delete(ctx.store, parent, obj_id)
    return web.Response(status=204)


def _current(kind: Kind[_D], cfg: ExchangeConfig, parent: str | None, obj_id: str) -> _D:
    if kind.child and buyer_in(cfg, parent or "") is None:
        raise NotFound(f"no buyer {parent!r}")
    current = kind.find(cfg, parent, obj_id)
    if current is None:
        raise NotFound(f"no {kind.name} {obj_id!r}")
    return current


async def _write(
    kind: Kind[_D],
    ctx: ApiContext,
    cfg: ExchangeConfig,
    parent: str | None,
    obj: _D,
    *,
    insert: bool,
) -> None:
    kind.check_stored(cfg, obj)
    candidate, prefix = kind.place(cfg, parent, obj.id, obj)
    validate_candidate(candidate, prefix)
    try:
        if insert:
            await kind.insert(ctx.store, parent, obj)
        elif not await kind.update(ctx.store, parent, obj):
            raise NotFound(f"no {kind.name} {obj.id!r}")
    except StoreConflict as exc:
        raise Conflict(str(exc), error="duplicate id") from exc
    except StoreNotFound as exc:
        raise NotFound(str(exc)) from exc


# ----------------------------------------------------------------------------------------------
# The six routes of a kind


def _bind(handler: Callable[[Kind[Any], ApiContext, web.Request], Any], kind: Kind[Any]) -> Handler:
    return cast(Handler, partial(handler, kind))


def crud_routes(base: str, kind: Kind[Any], access: Access, listing: type[Any]) -> list[Route]:
    """List and create at ``base``; read, replace, patch and delete at ``base/{id}``."""
    model = kind.model
    shown = kind.live_model or model  # what answers carry
    item = f"{base}/{{id}}"
    n = kind.name
    a_n = f"{'an' if n[0] in 'aeiou' else 'a'} {n}"  # "an endpoint", "a trunk"
    return [
        Route("GET", base, f"list_{kind.table}", _bind(list_objects, kind), access,
              f"List {kind.table}", None, listing),
        Route("POST", base, f"create_{n}", _bind(create_object, kind), access,
              f"Create {a_n}", model, shown, 201, errors=(400, 409, 413, 415, 422)),
        Route("GET", item, f"get_{n}", _bind(get_object, kind), access, f"Read {a_n}",
              None, shown),
        Route("PUT", item, f"put_{n}", _bind(put_object, kind), access,
              f"Replace {a_n} (the full object, id included)", model, shown,
              errors=(400, 409, 413, 415, 422)),
        Route("PATCH", item, f"patch_{n}", _bind(patch_object, kind), access,
              f"Change some fields of {a_n} (RFC 7396 merge patch)", f"patch:{model.__name__}",
              shown, errors=(400, 409, 413, 415, 422)),
        Route("DELETE", item, f"delete_{n}", _bind(delete_object, kind), access,
              f"Delete {a_n}", None, None, 204, errors=(409,)),
    ]  # fmt: skip
