"""The whole exchange configuration at once, ``/config`` (admin only): export and apply.

The database is the one source of truth for trunks, campaigns and buyers; a config file seeds
it at the first start only (store/exchange.py ``seed_config``). These two routes are how a file
reaches it later, with a running switch (``dce config export`` and ``dce config apply`` use
them; without a running switch they call ``apply_config`` on the database directly).

``GET /config`` answers what is stored in the config file's shape (``trunks``, ``campaigns``,
``buyers`` with their endpoints and profiles, defaults left out), without secrets: buyers have
no ``api_key`` (only its hash is stored) and trunks no ``username``/``password``. A file
without them keeps the stored ones when applied (store/config_diff.py), so an export applies
back unchanged.

``PUT /config`` takes a config file's trunks, campaigns and buyers as JSON and answers the
diff (``ConfigDiff``: objects added, changed field by field, kept or, with ``prune=true``,
removed; secrets shown as ``***``). Unless ``dry_run=true`` it applies the diff in one
transaction and the switch reloads, as after any API change. The body passes the checks of
every API write (api/validation.py) and the resulting configuration is compiled as the switch
will, before anything is written: a problem in the body is 422 naming its field
(``buyers[0].profiles[1].bid``), one with an object the body does not name (kept) is 409.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

import msgspec
from aiohttp import web

from api.auth import Access
from api.bodies import JSON_TYPES, read_body
from api.context import ApiContext
from api.errors import ApiError, Conflict, Invalid
from api.routes import Param, Route
from api.validation import (
    bool_param,
    check_buyer,
    check_campaign,
    check_trunk,
    decode,
    join,
    query_params,
)
from exchange.auction_index import compile_index
from exchange.errors import ConfigInvalid
from exchange.models import ExchangeConfig
from store.config_diff import ConfigDiff
from store.database import Store
from store.errors import StoreConflict

__all__ = ["MAX_CONFIG_BODY", "ROUTES", "apply_config", "check_file", "export"]

# A whole config in one body: thousands of buyers and profiles fit in a few MiB.
MAX_CONFIG_BODY: Final = 8 << 20
_DECODE: Final = msgspec.json.Decoder(ExchangeConfig)
_ENCODE: Final = msgspec.json.Encoder()
_QUERY: Final = frozenset({"dry_run", "prune"})
_PATH: Final = re.compile(
    r"^(?P<top>trunks|campaigns|buyers)\[(?P<i>\d+)\]"
    r"(?:\.(?P<sub>endpoints|profiles)\[(?P<j>\d+)\])?"
)


def export(cfg: ExchangeConfig) -> ExchangeConfig:
    """``cfg`` without secrets: trunks lose their digest credentials, buyers their API key."""
    return msgspec.structs.replace(
        cfg,
        trunks=[msgspec.structs.replace(t, username=None, password=None) for t in cfg.trunks],
        buyers=[msgspec.structs.replace(b, api_key=None) for b in cfg.buyers],
    )


def check_file(cfg: ExchangeConfig) -> None:
    """The per-object checks of every API write, with fields named from the file's top.

    Raises:
        Invalid: 422 naming the field (``buyers[1].endpoints[0].uri``).
    """
    for i, t in enumerate(cfg.trunks):
        check_trunk(t, f"trunks[{i}]")
    for i, c in enumerate(cfg.campaigns):
        check_campaign(c, f"campaigns[{i}]")
    for i, b in enumerate(cfg.buyers):
        try:
            check_buyer(b)
        except Invalid as exc:
            raise Invalid(join(f"buyers[{i}]", exc.field), exc.detail["message"]) from exc


def _compiles(file: ExchangeConfig) -> Callable[[ExchangeConfig], None]:
    """The check run on the resulting config: compile it as the switch will."""

    def check(target: ExchangeConfig) -> None:
        try:
            compile_index(target)
        except ConfigInvalid as exc:
            raise _blame(exc, file, target) from exc

    return check


def _blame(exc: ConfigInvalid, file: ExchangeConfig, target: ExchangeConfig) -> ApiError:
    """422 when the field is inside the file (its objects come first in the target, so the
    path is the same), else 409 naming the stored object by id."""
    m = _PATH.match(exc.field)
    if m is None:
        return Invalid(exc.field, exc.message)
    i = int(m["i"])
    items = getattr(file, m["top"])
    in_file = i < len(items)
    if in_file and m["sub"]:
        in_file = int(m["j"]) < len(getattr(items[i], m["sub"]))
    if in_file:
        return Invalid(exc.field, exc.message)
    top = getattr(target, m["top"])[i]
    where = f"{m['top']}/{top.id}"
    if m["sub"]:
        where += f"/{m['sub']}/{getattr(top, m['sub'])[int(m['j'])].id}"
    return Conflict(
        {"field": where + exc.field[m.end() :], "message": exc.message},
        error="the file conflicts with stored objects it does not name",
    )


async def apply_config(
    store: Store, cfg: ExchangeConfig, *, prune: bool, dry_run: bool, source: str
) -> ConfigDiff:
    """Check a config file, diff it with the database and, unless ``dry_run``, apply it.

    Args:
        source: what applied it, recorded if this seeds the database.

    Raises:
        Invalid: the file fails a check (422).
        Conflict: it conflicts with a stored object it does not name, or gives a buyer
            another buyer's API key (409).
    """
    check_file(cfg)
    try:
        return await store.exchange.sync_config(
            cfg, prune=prune, dry_run=dry_run, check=_compiles(cfg), source=source
        )
    except ConfigInvalid as exc:  # the file repeats an id or an API key
        raise Invalid(exc.field, exc.message) from exc
    except StoreConflict as exc:
        raise Conflict(str(exc), error="duplicate") from exc


async def get_config(ctx: ApiContext, request: web.Request) -> web.Response:
    cfg = await ctx.store.exchange.read_config()
    return web.Response(body=_ENCODE.encode(export(cfg)), content_type="application/json")


async def put_config(ctx: ApiContext, request: web.Request) -> web.Response:
    q = query_params(request, _QUERY)
    dry_run = bool_param(q, "dry_run", False)
    prune = bool_param(q, "prune", False)
    cfg = decode(_DECODE, await read_body(request, JSON_TYPES, MAX_CONFIG_BODY))
    source = "PUT /api/v1/config"
    if dry_run:
        diff = await apply_config(ctx.store, cfg, prune=prune, dry_run=True, source=source)
    else:
        # Serialised with every other exchange write; the switch reloads before the answer.
        async with ctx.changing():
            diff = await apply_config(ctx.store, cfg, prune=prune, dry_run=False, source=source)
    return web.Response(body=_ENCODE.encode(diff), content_type="application/json")


_BOOL: Final = {"type": "boolean"}
ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/config", "get_config", get_config, Access.ADMIN,
          "Export the trunks, campaigns and buyers in the config file's shape, without "
          "secrets", None, ExchangeConfig),
    Route("PUT", "/config", "put_config", put_config, Access.ADMIN,
          "Apply a config file's trunks, campaigns and buyers; answers the diff",
          ExchangeConfig, ConfigDiff, errors=(400, 409, 413, 415, 422),
          query=(Param("dry_run", _BOOL, "only answer the diff; change nothing"),
                 Param("prune", _BOOL, "also remove stored objects the body does not name"))),
)  # fmt: skip
