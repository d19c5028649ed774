"""The admin API: JSON over HTTP under ``/api/v1`` (SPEC.md "Admin API"; issues 4 and 5).

Theory of operation
-------------------
``build_api()`` returns an aiohttp application that the switch mounts at ``/api/v1``
(``mount_api()`` does that and adds the top-level ``/openapi.json``). Every route is one row
of ``ROUTES``: method, path, handler, who may call it, and the request/response models that
``/openapi.json`` is generated from, so the document cannot drift from the routes.

Authorization (RFC 6750 bearer tokens). One middleware authenticates every request except the
OpenAPI document: the admin token (compared as SHA-256 digests with ``hmac.compare_digest``, so
neither its content nor its length leaks through timing), else a buyer's API key looked up by
its SHA-256 (``hash_api_key``; the store keeps only that hash). No token: 401 with
``WWW-Authenticate: Bearer``. Routes are ``admin`` (trunks, campaigns, creating and deleting
buyers, DNC, consent, erasure: a buyer key gets 403) or ``buyer`` (a buyer, its endpoints,
profiles and calls: a buyer key reaches only its own, and another buyer's objects answer the
same 404 as objects that do not exist, before anything is read or changed).

Writes to exchange objects are serialised by one lock and validated three ways before anything
is stored: msgspec decodes the body into the model (types, limits, unknown fields; one
``Decoder`` per type, built at import); per-object checks the model cannot express (time zone,
SIP URI, hours, money ceiling, CIDRs); and the whole candidate config - what is stored, with the
change applied - is compiled by ``exchange.auction.compile_index`` exactly as the switch will
compile it. An error inside the written object is 422 naming its field; one elsewhere (deleting
a campaign that profiles name, a called number another campaign owns) is 409. After the write
``on_change()`` runs, still under the lock, so the switch reloads snapshots in commit order and
the next call sees the change.

Compliance routes (issue 5) change the gate's in-memory stores in place (the gate reads them on
every call, so there is nothing to reload) and persist: consent records and erasure suppression
entries in PostgreSQL, DNC lists as files under ``dnc_dir`` (the format ``dce dnc import``
writes and the switch's watcher reloads). They do not call ``on_change``.

Conventions: bodies are JSON (``application/json``; PATCH also takes
``application/merge-patch+json``, RFC 7396) up to 1 MiB, else 413; another content type is
415. ``POST /dnc`` takes ``text/plain`` or ``text/csv`` and streams the body, up to
``dnc_max_bytes`` (default 512 MiB). Errors are ``{"error": ..., "detail": ...}``: 400 for
malformed JSON, 422 for anything well-formed that fails validation (bodies and query parameters
alike; ``detail`` is ``{"field": "caps.daily", "message": ...}``), 404, 405 (with ``Allow``),
409 for duplicates and conflicts, 413, 415, 503 when erasure has no secret configured.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Any, Final, Generic, TypeVar, cast
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from aiohttp import web
from yarl import URL

from api.models import (
    BuyerCreated,
    BuyerList,
    BuyerUpdate,
    BuyerView,
    CallDetail,
    CallPage,
    CallSummary,
    CampaignList,
    ConsentIn,
    ConsentList,
    ConsentRevoked,
    DncImported,
    DncListInfo,
    DncLists,
    DncLookup,
    EndpointList,
    ErasureResult,
    ErrorBody,
    ProfileList,
    TrunkList,
)
from compliance.check import Gate
from compliance.consent import ConsentRecord
from compliance.dnc import DEFAULT_MAX_AGE_DAYS, DncImporter
from compliance.erasure import ALL, erase_caller
from compliance.errors import ComplianceError, InvalidWindow
from compliance.hours import parse_window
from compliance.numbers import normalize
from exchange.auction import compile_index
from exchange.errors import ConfigInvalid, ExchangeError
from exchange.models import (
    BidProfile,
    Buyer,
    Campaign,
    Endpoint,
    ExchangeConfig,
    Trunk,
)
from store.cdr import Disposition
from store.database import ChildTable, DocTable, Store, StoreConflict, StoreNotFound, hash_api_key
from switch.errors import SipParseError
from switch.uri import SipUri

__all__ = [
    "API_PREFIX",
    "MAX_BODY",
    "ROUTES",
    "ApiError",
    "build_api",
    "load_compliance",
    "mount_api",
    "openapi_document",
    "openapi_handler",
]

logger = logging.getLogger(__name__)

API_PREFIX: Final = "/api/v1"
MAX_BODY: Final = 1 << 20  # JSON bodies (SPEC: 413 above 1 MiB)
DNC_MAX_BODY: Final = 512 << 20  # streamed DNC imports (~40 million numbers)
MAX_PAGE: Final = 500
DEFAULT_PAGE: Final = 100
# cdrs money columns are NUMERIC(12, 6): a larger amount could never be written to a CDR.
MONEY_MAX: Final = Decimal("999999.999999")
_DNC_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")  # compliance/dnc.py's rule
_JSON_TYPES: Final = frozenset({"application/json"})
_PATCH_TYPES: Final = frozenset({"application/json", "application/merge-patch+json"})
_DNC_TYPES: Final = frozenset({"text/plain", "text/csv"})
_BEARER: Final = 'Bearer realm="dce"'


# ----------------------------------------------------------------------------------------------
# Errors


class ApiError(ExchangeError):
    """An error answer: ``status``, a short ``error`` and a ``detail`` for the body."""

    status = 500
    error = "internal error"

    def __init__(
        self,
        detail: Any = None,
        *,
        error: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(error or self.error)
        self.detail = detail
        if error is not None:
            self.error = error
        self.headers = headers or {}


class BadRequest(ApiError):
    status = 400
    error = "bad request"


class Unauthorized(ApiError):
    status = 401
    error = "unauthorized"


class Forbidden(ApiError):
    status = 403
    error = "forbidden"


class NotFound(ApiError):
    status = 404
    error = "not found"


class Conflict(ApiError):
    status = 409
    error = "conflict"


class PayloadTooLarge(ApiError):
    status = 413
    error = "request body too large"


class UnsupportedMediaType(ApiError):
    status = 415
    error = "unsupported media type"


class Invalid(ApiError):
    """422: a well-formed request with a value that fails validation; names the field."""

    status = 422
    error = "validation failed"

    def __init__(self, field: str, message: str) -> None:
        super().__init__({"field": field, "message": message})
        self.field = field


class Unavailable(ApiError):
    status = 503
    error = "unavailable"


# msgspec names the path as " - at `$.caps.daily`" (or " - at `key` in `$.hours`" for a
# mapping key); unknown/missing fields and our own __post_init__ checks name the field in
# backticks at the start of the message.
_AT = re.compile(r" - at `(?P<path>[^`]*)`(?: in `(?P<outer>[^`]*)`)?$")
_NAMED = re.compile(
    r"^(?:Object contains unknown field|Object missing required field) `(?P<name>[^`]+)`"
    r"|^`(?P<own>[A-Za-z_][A-Za-z0-9_]*)`"
)


def field_of(message: str) -> str:
    """The field a msgspec validation message is about, as ``caps.daily`` ("" for the body)."""
    path = "$"
    at = _AT.search(message)
    if at is not None:
        path = at["outer"] if at["path"] == "key" and at["outer"] else at["path"]
    named = _NAMED.search(message)
    if named is not None:
        path = f"{path}.{named['name'] or named['own']}"
    return path.removeprefix("$").removeprefix(".")


def _invalid(exc: msgspec.ValidationError, prefix: str = "") -> Invalid:
    message = str(exc)
    return Invalid(_join(prefix, field_of(message)), message)


def _join(prefix: str, name: str) -> str:
    if not prefix:
        return name
    if not name:
        return prefix
    return f"{prefix}{name}" if name.startswith("[") else f"{prefix}.{name}"


# ----------------------------------------------------------------------------------------------
# Decoding, built once at import (STYLE.md "Events and models")

_T = TypeVar("_T")
_DECODE_TRUNK = msgspec.json.Decoder(Trunk)
_DECODE_CAMPAIGN = msgspec.json.Decoder(Campaign)
_DECODE_ENDPOINT = msgspec.json.Decoder(Endpoint)
_DECODE_PROFILE = msgspec.json.Decoder(BidProfile)
_DECODE_BUYER = msgspec.json.Decoder(Buyer)
_DECODE_BUYER_UPDATE = msgspec.json.Decoder(BuyerUpdate)
_DECODE_CONSENT = msgspec.json.Decoder(ConsentIn)
# Merge patches: JSON numbers become Decimal from their text, so money stays exact.
_DECODE_PATCH = msgspec.json.Decoder(dict[str, Any], float_hook=Decimal)
_DECODE_CURSOR = msgspec.json.Decoder(tuple[datetime, str])
_DECODE_ID_CURSOR = msgspec.json.Decoder(str)
_ENCODER = msgspec.json.Encoder()


def _decode(decoder: msgspec.json.Decoder[_T], body: bytes) -> _T:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from exc
    except msgspec.DecodeError as exc:
        raise BadRequest(str(exc), error="malformed JSON") from exc


def _convert(obj: Any, kind: type[_T]) -> _T:
    try:
        return msgspec.convert(obj, kind)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from exc


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge recursively, null removes, the rest replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _full(obj: Any) -> Any:
    """Plain data for a response: every struct field written, defaults included (the models
    omit defaults when stored, but a client should see ``"active": true``)."""
    if isinstance(obj, msgspec.Struct):
        return {f: _full(getattr(obj, f)) for f in obj.__struct_fields__}
    if isinstance(obj, list | tuple):
        return [_full(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _full(v) for k, v in obj.items()}
    return obj


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=_ENCODER.encode(_full(obj)),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _error_response(
    status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None
) -> web.Response:
    return _json(ErrorBody(error=error, detail=detail), status, headers)


# ----------------------------------------------------------------------------------------------
# Per-object checks the models cannot express. ``at`` is the field prefix ("" or "profiles[0]").


def _check_money(value: Decimal | None, name: str) -> None:
    if value is not None and value > MONEY_MAX:
        raise Invalid(name, f"at most {MONEY_MAX} USD, got {value}")


def check_trunk(t: Trunk, at: str = "") -> None:
    for i, net in enumerate(t.source_ips):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            raise Invalid(_join(at, f"source_ips[{i}]"), f"not an IP or CIDR: {net!r}") from exc


def check_campaign(c: Campaign, at: str = "") -> None:
    _check_money(c.reserve, _join(at, "reserve"))
    try:
        parse_window(c.compliance.hours_window)
    except InvalidWindow as exc:
        raise Invalid(_join(at, "compliance.hours_window"), str(exc)) from exc
    for i, name in enumerate(c.compliance.dnc_lists):
        if not _DNC_NAME.match(name):
            raise Invalid(
                _join(at, f"compliance.dnc_lists[{i}]"),
                f"DNC list name {name!r} must match {_DNC_NAME.pattern}",
            )


def check_endpoint(e: Endpoint, at: str = "") -> None:
    try:
        uri = SipUri.parse(e.uri)
    except SipParseError as exc:
        raise Invalid(_join(at, "uri"), f"not a SIP URI: {exc}") from exc
    if uri.scheme not in ("sip", "sips"):
        raise Invalid(_join(at, "uri"), f"expected a sip: or sips: URI, got {e.uri!r}")


def check_profile(p: BidProfile, at: str = "") -> None:
    _check_money(p.bid, _join(at, "bid"))
    _check_money(p.caps.budget_daily, _join(at, "caps.budget_daily"))
    _check_money(p.caps.budget_monthly, _join(at, "caps.budget_monthly"))
    try:
        ZoneInfo(p.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise Invalid(_join(at, "timezone"), f"unknown time zone {p.timezone!r}") from exc
    for day, ranges in (p.hours or {}).items():
        for i, text in enumerate(ranges):
            start, _, end = text.partition("-")
            if start == end:
                raise Invalid(_join(at, f"hours.{day}[{i}]"), f"empty time range {text!r}")
    if p.rtb_url is not None:
        try:
            url = URL(p.rtb_url)
        except ValueError as exc:
            raise Invalid(_join(at, "rtb_url"), f"not a URL: {p.rtb_url!r}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise Invalid(_join(at, "rtb_url"), f"expected an http(s) URL, got {p.rtb_url!r}")


def check_buyer(b: Buyer) -> None:
    if b.api_key is not None and not 16 <= len(b.api_key) <= 200:
        raise Invalid("api_key", "an API key has 16 to 200 characters")
    for i, e in enumerate(b.endpoints):
        check_endpoint(e, f"endpoints[{i}]")
    for i, p in enumerate(b.profiles):
        check_profile(p, f"profiles[{i}]")


_PATH_RE = re.compile(
    r"^(?P<top>trunks|campaigns|buyers)\[(?P<i>\d+)\]"
    r"(?:\.(?P<sub>endpoints|profiles)\[(?P<j>\d+)\])?(?P<rest>.*)$"
)


def _readable(cfg: ExchangeConfig, path: str) -> str:
    """``buyers[2].profiles[0].campaign_id`` -> ``buyers/b7/profiles/p1.campaign_id``."""
    m = _PATH_RE.match(path)
    if m is None:
        return path
    try:
        top = getattr(cfg, m["top"])[int(m["i"])]
        out = f"{m['top']}/{top.id}"
        if m["sub"]:
            out += f"/{m['sub']}/{getattr(top, m['sub'])[int(m['j'])].id}"
    except (IndexError, AttributeError):
        return path
    return out + m["rest"]


def validate_candidate(candidate: ExchangeConfig, prefix: str | None) -> None:
    """Compile ``candidate`` as the switch will; ``prefix`` is where the written object sits.

    Raises:
        Invalid: the problem is inside the written object (field relative to it).
        Conflict: the change breaks another stored object.
    """
    try:
        compile_index(candidate)
    except ConfigInvalid as exc:
        f = exc.field
        if prefix is not None and (f == prefix or f.startswith((prefix + ".", prefix + "["))):
            raise Invalid(_join("", f[len(prefix) :].removeprefix(".")), exc.message) from exc
        raise Conflict(
            {"field": _readable(candidate, f), "message": exc.message},
            error="the change conflicts with stored objects",
        ) from exc


# ----------------------------------------------------------------------------------------------
# Who is calling


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of a request: the admin (``buyer_id`` None) or one buyer."""

    buyer_id: str | None

    @property
    def admin(self) -> bool:
        return self.buyer_id is None


ADMIN: Final = Principal(None)
PRINCIPAL: Final = web.RequestKey("dce_principal", Principal)


class Access(Enum):
    PUBLIC = "public"
    ADMIN = "admin"
    BUYER = "buyer"  # the admin, or a buyer key on its own objects


# ----------------------------------------------------------------------------------------------
# Trunks, campaigns, endpoints, profiles: one generic set of handlers over ``_Kind``

_D = TypeVar("_D", Trunk, Campaign, Endpoint, BidProfile)


@dataclass(frozen=True, slots=True)
class _Kind(Generic[_D]):
    """One collection of documents: top-level (trunks, campaigns) or a buyer's (child)."""

    name: str  # "trunk"
    table: str  # "trunks"; the ExchangeConfig / Buyer attribute too
    model: type[_D]
    decoder: msgspec.json.Decoder[_D]
    check: Callable[[_D, str], None]
    child: bool
    view: Callable[[_D], Any] = lambda obj: obj  # what a response shows of a stored object

    def find(self, cfg: ExchangeConfig, parent: str | None, obj_id: str) -> _D | None:
        items = self._items(cfg, parent)
        return next((x for x in items if x.id == obj_id), None) if items is not None else None

    def _items(self, cfg: ExchangeConfig, parent: str | None) -> list[_D] | None:
        if not self.child:
            return cast(list[_D], getattr(cfg, self.table))
        buyer = _buyer_in(cfg, parent or "")
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
        buyer = _buyer_in(cfg, parent or "")
        assert buyer is not None  # callers check the parent first
        buyers = [b for b in cfg.buyers if b.id != buyer.id]
        buyers.append(msgspec.structs.replace(buyer, **{self.table: items}))
        candidate = msgspec.structs.replace(cfg, buyers=buyers)
        prefix = f"buyers[{len(buyers) - 1}].{self.table}[{len(items) - 1}]"
        return candidate, prefix if obj is not None else None

    async def list(self, store: Store, parent: str | None) -> list[_D]:
        if self.child:
            return await store.list_children(self._child, parent or "", self.model)
        return await store.list_docs(self._doc, self.model)

    async def get(self, store: Store, parent: str | None, obj_id: str) -> _D | None:
        if self.child:
            return await store.get_child(self._child, parent or "", obj_id, self.model)
        return await store.get_doc(self._doc, obj_id, self.model)

    async def insert(self, store: Store, parent: str | None, obj: _D) -> None:
        if self.child:
            assert isinstance(obj, Endpoint | BidProfile)
            await store.insert_child(self._child, parent or "", obj)
        else:
            assert isinstance(obj, Trunk | Campaign)
            await store.insert_doc(self._doc, obj)

    async def update(self, store: Store, parent: str | None, obj: _D) -> bool:
        if self.child:
            assert isinstance(obj, Endpoint | BidProfile)
            return await store.update_child(self._child, parent or "", obj)
        assert isinstance(obj, Trunk | Campaign)
        return await store.update_doc(self._doc, obj)

    async def delete(self, store: Store, parent: str | None, obj_id: str) -> bool:
        if self.child:
            return await store.delete_child(self._child, parent or "", obj_id)
        return await store.delete_doc(self._doc, obj_id)

    @property
    def _doc(self) -> DocTable:
        return cast(DocTable, self.table)

    @property
    def _child(self) -> ChildTable:
        return cast(ChildTable, self.table)


def _check_numbers_free(cfg: ExchangeConfig, c: Campaign, at: str = "") -> None:
    """409 when a called number of ``c`` already selects another campaign."""
    owners = {n: o.id for o in cfg.campaigns if o.id != c.id for n in o.numbers}
    for i, n in enumerate(c.numbers):
        if n in owners:
            raise Conflict(
                {
                    "field": _join(at, f"numbers[{i}]"),
                    "message": f"{n} already selects campaign {owners[n]!r}",
                },
                error="called number in use",
            )


def _trunk_view(t: Trunk) -> dict[str, Any]:
    """A trunk as answered: the digest password is write-only (PUT must repeat it)."""
    out: dict[str, Any] = _full(t)
    if out["password"] is not None:
        out["password"] = None
    return out


TRUNKS: Final = _Kind(
    "trunk", "trunks", Trunk, _DECODE_TRUNK, check_trunk, child=False, view=_trunk_view
)
CAMPAIGNS: Final = _Kind(
    "campaign", "campaigns", Campaign, _DECODE_CAMPAIGN, check_campaign, child=False
)
ENDPOINTS: Final = _Kind(
    "endpoint", "endpoints", Endpoint, _DECODE_ENDPOINT, check_endpoint, child=True
)
PROFILES: Final = _Kind(
    "profile", "profiles", BidProfile, _DECODE_PROFILE, check_profile, child=True
)


def _buyer_in(cfg: ExchangeConfig, buyer_id: str) -> Buyer | None:
    return next((b for b in cfg.buyers if b.id == buyer_id), None)


def _buyer_view(b: Buyer) -> BuyerView:
    return BuyerView(
        id=b.id, name=b.name, active=b.active, endpoints=b.endpoints, profiles=b.profiles
    )


# ----------------------------------------------------------------------------------------------
# Calls


def encode_cursor(received_at: datetime, call_id: str) -> str:
    """The opaque cursor after a row: base64url of ``[received_at, call_id]``."""
    raw = _ENCODER.encode([received_at, call_id])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise Invalid("cursor", "not a cursor this API returned") from exc


def decode_cursor(text: str) -> tuple[datetime, str]:
    try:
        ts, call_id = _DECODE_CURSOR.decode(_unb64(text))
    except msgspec.DecodeError as exc:
        raise Invalid("cursor", "not a cursor this API returned") from exc
    if ts.tzinfo is None:
        raise Invalid("cursor", "not a cursor this API returned")
    return ts, call_id


_OWN_AUCTION_KEYS: Final = ("campaign_id", "rule", "ranking", "tie_break", "elapsed_us")


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


# ----------------------------------------------------------------------------------------------
# Query parameters


def _query(request: web.Request, allowed: frozenset[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in request.query.items():
        if key not in allowed:
            raise Invalid(key, f"unknown query parameter; expected one of {sorted(allowed)}")
        if key in out:
            raise Invalid(key, "given more than once")
        out[key] = value
    return out


def _int_param(q: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    text = q.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError as exc:
        raise Invalid(name, f"expected an integer, got {text!r}") from exc
    if not lo <= value <= hi:
        raise Invalid(name, f"must be between {lo} and {hi}, got {value}")
    return value


def _bool_param(q: dict[str, str], name: str, default: bool) -> bool:
    text = q.get(name)
    if text is None:
        return default
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise Invalid(name, f"expected true or false, got {text!r}")


_SPACED_OFFSET = re.compile(r" (\d{2}(?::?\d{2})?)$")


def parse_time(name: str, text: str) -> datetime:
    """ISO 8601; a naive time is UTC. An unescaped ``+`` of an offset arrives as a space."""
    for candidate in (text, _SPACED_OFFSET.sub(r"+\1", text)):
        try:
            ts = datetime.fromisoformat(candidate)
        except ValueError:
            continue
        return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
    raise Invalid(name, f"not an ISO 8601 time: {text!r}")


def _number(text: str, name: str) -> str:
    e164 = normalize(text)
    if e164 is None:
        raise Invalid(name, f"not a phone number: {text!r}")
    return e164


def number_forms(e164: str) -> list[str]:
    """Spellings of one E.164 number that may be stored: with and without ``+`` (and the
    ten-digit national form in the NANP)."""
    forms = [e164, e164[1:]]
    if e164.startswith("+1") and len(e164) == 12:
        forms.append(e164[2:])
    return forms


def _revoked(record: ConsentRecord, at: datetime) -> ConsentRecord:
    """``ConsentStore.revoke``'s rule: an earlier revocation stands; never before the grant."""
    if record.revoked_at is not None and record.revoked_at <= at:
        return record
    return msgspec.structs.replace(record, revoked_at=max(at, record.granted_at))


# ----------------------------------------------------------------------------------------------
# The application


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Api:
    """The handlers and what they share; built by ``build_api``."""

    def __init__(
        self,
        store: Store,
        *,
        admin_token: str,
        on_change: Callable[[], Awaitable[None]],
        gate: Gate | None,
        wall: Callable[[], datetime],
        dnc_dir: Path | None,
        dnc_max_bytes: int,
        flush_cdrs: Callable[[], Awaitable[None]] | None,
    ) -> None:
        if not admin_token:
            raise ValueError("the admin token must not be empty")
        self.store = store
        self._admin_digest = hashlib.sha256(admin_token.encode()).digest()
        self._on_change = on_change
        # Without the switch's gate the compliance routes work on a private one (no erasure).
        self.gate = gate if gate is not None else Gate()
        self._wall = wall
        self._dnc_dir = dnc_dir
        self._dnc_max = dnc_max_bytes
        self._flush_cdrs = flush_cdrs
        self._lock = asyncio.Lock()  # exchange writes + on_change, in commit order
        self._compliance_lock = asyncio.Lock()  # DNC imports and erasures

    # -- plumbing ----------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            name = request.match_info.route.name
            access = _ACCESS.get(name) if name else None
            if access is not Access.PUBLIC:
                principal = await self._authenticate(request)
                request[PRINCIPAL] = principal
                if access is Access.ADMIN and not principal.admin:
                    raise Forbidden("this route needs the admin token")
            return await handler(request)
        except ApiError as exc:
            return _error_response(exc.status, exc.error, exc.detail, exc.headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            return _error_response(exc.status, (exc.reason or "error").lower(), None, headers)
        except Exception:
            # The API edge: log with what identifies the request, answer 500, keep serving.
            logger.exception(
                "admin API request failed", extra={"method": request.method, "path": request.path}
            )
            return _error_response(500, "internal error")

    async def _authenticate(self, request: web.Request) -> Principal:
        header = request.headers.get("Authorization")
        if not header:
            raise Unauthorized("a bearer token is required", headers={"WWW-Authenticate": _BEARER})
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized(
                "expected Authorization: Bearer <token>",
                headers={"WWW-Authenticate": _BEARER + ', error="invalid_request"'},
            )
        digest = hashlib.sha256(token.encode()).digest()
        if hmac.compare_digest(digest, self._admin_digest):
            return ADMIN
        buyer_id = await self.store.buyer_for_key(hash_api_key(token))
        if buyer_id is None:
            raise Unauthorized(
                "unknown token", headers={"WWW-Authenticate": _BEARER + ', error="invalid_token"'}
            )
        return Principal(buyer_id)

    @staticmethod
    def _own(request: web.Request, buyer_id: str) -> None:
        """A buyer key reaches only its own buyer: another's is 404, exactly as a missing one."""
        principal = request[PRINCIPAL]
        if not principal.admin and principal.buyer_id != buyer_id:
            raise NotFound(f"no buyer {buyer_id!r}")

    @staticmethod
    async def _body(request: web.Request, types: frozenset[str], limit: int = MAX_BODY) -> bytes:
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

    @contextlib.asynccontextmanager
    async def _changing(self) -> AsyncIterator[ExchangeConfig]:
        """Serialise an exchange write: yields what is stored; after the block commits,
        ``on_change()`` runs while the lock is still held."""
        async with self._lock:
            yield await self.store.load_exchange()
            try:
                await self._on_change()
            except Exception as exc:
                logger.exception("the change is stored but the switch did not reload it")
                raise ApiError("the change is stored; reloading it failed") from exc

    # -- trunks, campaigns, endpoints, profiles ----------------------------------------------

    async def _parent(self, request: web.Request, kind: _Kind[Any]) -> str | None:
        if not kind.child:
            return None
        buyer_id = request.match_info["buyer_id"]
        self._own(request, buyer_id)
        return buyer_id

    async def _require_buyer(self, buyer_id: str | None) -> None:
        if buyer_id is not None and not await self.store.has_buyer(buyer_id):
            raise NotFound(f"no buyer {buyer_id!r}")

    async def list_objects(self, kind: _Kind[_D], request: web.Request) -> web.Response:
        parent = await self._parent(request, kind)
        await self._require_buyer(parent)
        return _json({"items": [kind.view(x) for x in await kind.list(self.store, parent)]})

    async def get_object(self, kind: _Kind[_D], request: web.Request) -> web.Response:
        parent = await self._parent(request, kind)
        obj_id = request.match_info["id"]
        obj = await kind.get(self.store, parent, obj_id)
        if obj is None:
            await self._require_buyer(parent)
            raise NotFound(f"no {kind.name} {obj_id!r}")
        return _json(kind.view(obj))

    async def create_object(self, kind: _Kind[_D], request: web.Request) -> web.Response:
        parent = await self._parent(request, kind)
        obj = _decode(kind.decoder, await self._body(request, _JSON_TYPES))
        kind.check(obj, "")
        async with self._changing() as cfg:
            if kind.child and _buyer_in(cfg, parent or "") is None:
                raise NotFound(f"no buyer {parent!r}")
            if kind.find(cfg, parent, obj.id) is not None:
                raise Conflict(f"{kind.name} {obj.id!r} already exists", error="duplicate id")
            await self._write(kind, cfg, parent, obj, insert=True)
        location = f"{request.path.rstrip('/')}/{quote(obj.id, safe='')}"
        return _json(kind.view(obj), 201, {"Location": location})

    async def put_object(self, kind: _Kind[_D], request: web.Request) -> web.Response:
        parent = await self._parent(request, kind)
        obj_id = request.match_info["id"]
        obj = _decode(kind.decoder, await self._body(request, _JSON_TYPES))
        if obj.id != obj_id:
            raise Invalid("id", f"must equal the id in the path ({obj_id!r})")
        kind.check(obj, "")
        async with self._changing() as cfg:
            self._current(kind, cfg, parent, obj_id)
            await self._write(kind, cfg, parent, obj, insert=False)
        return _json(kind.view(obj))

    async def patch_object(self, kind: _Kind[_D], request: web.Request) -> web.Response:
        parent = await self._parent(request, kind)
        obj_id = request.match_info["id"]
        patch = _decode(_DECODE_PATCH, await self._body(request, _PATCH_TYPES))
        if "id" in patch and patch["id"] != obj_id:
            raise Invalid("id", f"cannot change the id ({obj_id!r})")
        async with self._changing() as cfg:
            current = self._current(kind, cfg, parent, obj_id)
            obj = _convert(merge_patch(msgspec.to_builtins(current), patch), kind.model)
            kind.check(obj, "")
            await self._write(kind, cfg, parent, obj, insert=False)
        return _json(kind.view(obj))

    async def delete_object(self, kind: _Kind[_D], request: web.Request) -> web.Response:
        parent = await self._parent(request, kind)
        obj_id = request.match_info["id"]
        async with self._changing() as cfg:
            self._current(kind, cfg, parent, obj_id)
            candidate, _ = kind.place(cfg, parent, obj_id, None)
            validate_candidate(candidate, None)
            await kind.delete(self.store, parent, obj_id)
        return web.Response(status=204)

    @staticmethod
    def _current(kind: _Kind[_D], cfg: ExchangeConfig, parent: str | None, obj_id: str) -> _D:
        if kind.child and _buyer_in(cfg, parent or "") is None:
            raise NotFound(f"no buyer {parent!r}")
        current = kind.find(cfg, parent, obj_id)
        if current is None:
            raise NotFound(f"no {kind.name} {obj_id!r}")
        return current

    async def _write(
        self, kind: _Kind[_D], cfg: ExchangeConfig, parent: str | None, obj: _D, *, insert: bool
    ) -> None:
        if isinstance(obj, Campaign):
            _check_numbers_free(cfg, obj)
        candidate, prefix = kind.place(cfg, parent, obj.id, obj)
        validate_candidate(candidate, prefix)
        try:
            if insert:
                await kind.insert(self.store, parent, obj)
            elif not await kind.update(self.store, parent, obj):
                raise NotFound(f"no {kind.name} {obj.id!r}")
        except StoreConflict as exc:
            raise Conflict(str(exc), error="duplicate id") from exc
        except StoreNotFound as exc:
            raise NotFound(str(exc)) from exc

    # -- buyers ------------------------------------------------------------------------------

    async def list_buyers(self, request: web.Request) -> web.Response:
        principal = request[PRINCIPAL]
        buyers = await self.store.list_buyers(only=principal.buyer_id)
        return _json(BuyerList(items=[_buyer_view(b) for b in buyers]))

    async def get_buyer(self, request: web.Request) -> web.Response:
        buyer_id = request.match_info["buyer_id"]
        self._own(request, buyer_id)
        buyer = await self.store.get_buyer(buyer_id)
        if buyer is None:
            raise NotFound(f"no buyer {buyer_id!r}")
        return _json(_buyer_view(buyer))

    async def create_buyer(self, request: web.Request) -> web.Response:
        buyer = _decode(_DECODE_BUYER, await self._body(request, _JSON_TYPES))
        check_buyer(buyer)
        api_key = buyer.api_key or f"dce_{secrets.token_urlsafe(32)}"
        bare = msgspec.structs.replace(buyer, api_key=None)
        async with self._changing() as cfg:
            if _buyer_in(cfg, buyer.id) is not None:
                raise Conflict(f"buyer {buyer.id!r} already exists", error="duplicate id")
            candidate = msgspec.structs.replace(cfg, buyers=[*cfg.buyers, bare])
            validate_candidate(candidate, f"buyers[{len(candidate.buyers) - 1}]")
            try:
                await self.store.insert_buyer(bare, hash_api_key(api_key))
            except StoreConflict as exc:
                raise Conflict(str(exc), error="duplicate") from exc
        view = _buyer_view(bare)
        created = BuyerCreated(
            **{f: getattr(view, f) for f in view.__struct_fields__}, api_key=api_key
        )
        location = f"{request.path.rstrip('/')}/{quote(buyer.id, safe='')}"
        return _json(created, 201, {"Location": location})

    async def put_buyer(self, request: web.Request) -> web.Response:
        buyer_id = request.match_info["buyer_id"]
        self._own(request, buyer_id)
        update = _decode(_DECODE_BUYER_UPDATE, await self._body(request, _JSON_TYPES))
        if update.id != buyer_id:
            raise Invalid("id", f"must equal the id in the path ({buyer_id!r})")
        return await self._update_buyer(buyer_id, lambda current: update)

    async def patch_buyer(self, request: web.Request) -> web.Response:
        buyer_id = request.match_info["buyer_id"]
        self._own(request, buyer_id)
        patch = _decode(_DECODE_PATCH, await self._body(request, _PATCH_TYPES))
        if "id" in patch and patch["id"] != buyer_id:
            raise Invalid("id", f"cannot change the id ({buyer_id!r})")

        def merged(current: Buyer) -> BuyerUpdate:
            base = msgspec.to_builtins(
                BuyerUpdate(id=current.id, name=current.name, active=current.active)
            )
            return _convert(merge_patch(base, patch), BuyerUpdate)

        return await self._update_buyer(buyer_id, merged)

    async def _update_buyer(
        self, buyer_id: str, make: Callable[[Buyer], BuyerUpdate]
    ) -> web.Response:
        async with self._changing() as cfg:
            current = _buyer_in(cfg, buyer_id)
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
                if not await self.store.update_buyer(new, key_hash):
                    raise NotFound(f"no buyer {buyer_id!r}")
            except StoreConflict as exc:
                raise Conflict(str(exc), error="duplicate") from exc
        return _json(_buyer_view(new))

    async def delete_buyer(self, request: web.Request) -> web.Response:
        buyer_id = request.match_info["buyer_id"]
        async with self._changing() as cfg:
            if _buyer_in(cfg, buyer_id) is None:
                raise NotFound(f"no buyer {buyer_id!r}")
            validate_candidate(
                msgspec.structs.replace(cfg, buyers=[b for b in cfg.buyers if b.id != buyer_id]),
                None,
            )
            await self.store.delete_buyer(buyer_id)
        return web.Response(status=204)

    # -- calls -------------------------------------------------------------------------------

    _CALL_PARAMS: Final = frozenset(
        {"from", "to", "buyer_id", "disposition", "campaign_id", "trunk_id", "limit", "cursor"}
    )

    async def list_calls(self, request: web.Request) -> web.Response:
        principal = request[PRINCIPAL]
        q = _query(request, self._CALL_PARAMS)
        since = parse_time("from", q["from"]) if "from" in q else None
        until = parse_time("to", q["to"]) if "to" in q else None
        disposition = q.get("disposition")
        if disposition is not None and disposition not in Disposition.__members__.values():
            raise Invalid(
                "disposition",
                f"expected one of {[str(d) for d in Disposition]}, got {disposition!r}",
            )
        limit = _int_param(q, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
        before = decode_cursor(q["cursor"]) if "cursor" in q else None
        buyer_id = q.get("buyer_id")
        if not principal.admin:
            if buyer_id not in (None, principal.buyer_id):
                return _json(CallPage(items=[], next_cursor=None))
            buyer_id = principal.buyer_id
        rows = await self.store.list_cdrs(
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
        items = [self._call(CallSummary, row, principal) for row in rows]
        cursor = encode_cursor(rows[-1]["received_at"], rows[-1]["call_id"]) if more else None
        return _json(CallPage(items=items, next_cursor=cursor))

    async def get_call(self, request: web.Request) -> web.Response:
        principal = request[PRINCIPAL]
        call_id = request.match_info["call_id"]
        row = await self.store.fetch_cdr(call_id)
        if row is None or (not principal.admin and row.get("buyer_id") != principal.buyer_id):
            raise NotFound(f"no call {call_id!r}")
        if not principal.admin:
            row["auction"] = auction_for_buyer(row.get("auction"), principal.buyer_id or "")
        return _json(self._call(CallDetail, row, principal))

    @staticmethod
    def _call(kind: type[CallSummary], row: dict[str, Any], principal: Principal) -> CallSummary:
        values: dict[str, Any] = {f: row.get(f) for f in kind.__struct_fields__}
        values["compliance"] = list(values["compliance"] or [])
        if not principal.admin:
            values["payout"] = None  # the seller's share is not the buyer's business
        return kind(**values)

    # -- DNC ---------------------------------------------------------------------------------

    _DNC_PARAMS: Final = frozenset({"list", "source", "merge", "loaded_at", "max_age_days"})

    async def import_dnc(self, request: web.Request) -> web.Response:
        q = _query(request, self._DNC_PARAMS)
        name = q.get("list")
        if name is None:
            raise Invalid("list", "the list name is required (?list=NAME)")
        if not _DNC_NAME.match(name):
            raise Invalid("list", f"DNC list name {name!r} must match {_DNC_NAME.pattern}")
        loaded_at = parse_time("loaded_at", q["loaded_at"]) if "loaded_at" in q else self._wall()
        merge = _bool_param(q, "merge", False)
        max_age: int | None = DEFAULT_MAX_AGE_DAYS
        if q.get("max_age_days", "").lower() == "none":
            max_age = None
        elif "max_age_days" in q:
            max_age = _int_param(q, "max_age_days", DEFAULT_MAX_AGE_DAYS, 1, 3650)
        if request.content_type not in _DNC_TYPES:
            raise UnsupportedMediaType(
                f"expected text/plain or text/csv, got {request.content_type}"
            )
        limit = self._dnc_max
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
        async with self._compliance_lock:
            report = self.gate.dnc.finish_import(
                name,
                importer,
                source=q.get("source", "api"),
                loaded_at=loaded_at,
                merge=merge,
                max_age_days=max_age,
            )
            await self._save_dnc([name])
        logger.info(
            "DNC list imported",
            extra={"list": name, "imported": report.imported, "rejected": report.rejected},
        )
        return _json(DncImported(**msgspec.structs.asdict(report)))

    async def _save_dnc(self, names: Sequence[str]) -> None:
        if self._dnc_dir is None or not names:
            return
        dnc, directory = self.gate.dnc, self._dnc_dir
        loop = asyncio.get_running_loop()
        for name in names:
            # Writing tens of MB is slow work: off the loop (file I/O releases the GIL).
            await loop.run_in_executor(None, dnc.save, directory, name)

    async def list_dnc(self, request: web.Request) -> web.Response:
        now = self._wall()
        items = [
            DncListInfo(
                name=lst.name,
                source=lst.source,
                loaded_at=lst.loaded_at,
                numbers=len(lst),
                max_age_days=lst.max_age_days,
                stale=lst.is_stale(now),
            )
            for lst in sorted(self.gate.dnc, key=lambda x: x.name)
        ]
        return _json(DncLists(items=items))

    async def lookup_dnc(self, request: web.Request) -> web.Response:
        e164 = _number(request.match_info["number"], "number")
        lists = set(self.gate.dnc.lookup(e164))
        sup = self.gate.suppression
        scope = sup.scope(e164) if sup is not None else None
        if scope is not None:
            lists |= scope - {ALL}
        return _json(DncLookup(number=e164, lists=sorted(lists), suppressed=scope is not None))

    # -- consent -----------------------------------------------------------------------------

    _CONSENT_LIST_PARAMS: Final = frozenset({"caller", "campaign_id", "limit", "cursor"})

    async def create_consent(self, request: web.Request) -> web.Response:
        body = _decode(_DECODE_CONSENT, await self._body(request, _JSON_TYPES))
        caller = _number(body.caller, "caller")
        granted = body.granted_at or self._wall()
        if granted.tzinfo is None:
            raise Invalid("granted_at", "needs a time zone (e.g. Z or +00:00)")
        if body.revoked_at is not None:
            if body.revoked_at.tzinfo is None:
                raise Invalid("revoked_at", "needs a time zone (e.g. Z or +00:00)")
            if body.revoked_at < granted:
                raise Invalid("revoked_at", "is before granted_at")
        if await self.store.get_doc("campaigns", body.campaign_id, Campaign) is None:
            raise Invalid("campaign_id", f"no campaign {body.campaign_id!r}")
        if body.trunk_id is not None and (
            await self.store.get_doc("trunks", body.trunk_id, Trunk) is None
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
            await self.store.insert_consent(record)
        except StoreConflict as exc:
            raise Conflict(str(exc), error="duplicate id") from exc
        try:
            self.gate.consent.add(record)
        except ComplianceError:
            # Checked above; a disagreement is our bug: the record is stored, the gate is not.
            logger.exception("consent stored but refused by the gate", extra={"id": record.id})
            raise
        location = f"{request.path.rstrip('/')}/{quote(record.id, safe='')}"
        return _json(record, 201, {"Location": location})

    async def list_consent(self, request: web.Request) -> web.Response:
        q = _query(request, self._CONSENT_LIST_PARAMS)
        caller = _number(q["caller"], "caller") if "caller" in q else None
        limit = _int_param(q, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
        after: str | None = None
        if "cursor" in q:
            try:
                after = _DECODE_ID_CURSOR.decode(_unb64(q["cursor"]))
            except msgspec.DecodeError as exc:
                raise Invalid("cursor", "not a cursor this API returned") from exc
        rows = await self.store.list_consents(
            caller=caller, campaign_id=q.get("campaign_id"), after_id=after, limit=limit + 1
        )
        more = len(rows) > limit
        rows = rows[:limit]
        cursor = (
            base64.urlsafe_b64encode(_ENCODER.encode(rows[-1].id)).rstrip(b"=").decode()
            if more
            else None
        )
        return _json(ConsentList(items=rows, next_cursor=cursor))

    async def get_consent(self, request: web.Request) -> web.Response:
        record_id = request.match_info["id"]
        record = await self.store.get_consent(record_id)
        if record is None:
            raise NotFound(f"no consent {record_id!r}")
        return _json(record)

    async def revoke_consent(self, request: web.Request) -> web.Response:
        """DELETE /consent/{id}: revoke now; the record is kept as evidence (domain.md §4.3)."""
        record_id = request.match_info["id"]
        record = await self.store.get_consent(record_id)
        if record is None:
            raise NotFound(f"no consent {record_id!r}")
        at = self._wall()
        new = _revoked(record, at)
        if new is not record:
            await self.store.update_consent(new)
            self.gate.consent.revoke(record_id, at)
        return _json(new)

    async def revoke_caller_consent(self, request: web.Request) -> web.Response:
        """DELETE /consent?caller=E164[&campaign_id=]: "stop calling me" revokes them all."""
        q = _query(request, frozenset({"caller", "campaign_id"}))
        if "caller" not in q:
            raise Invalid("caller", "required: whose consent to revoke")
        caller = _number(q["caller"], "caller")
        at = self._wall()
        n = 0
        for record in await self.store.list_consents(
            caller=caller, campaign_id=q.get("campaign_id")
        ):
            if record.revoked_at is None:
                await self.store.update_consent(_revoked(record, at))
                self.gate.consent.revoke(record.id, at)
                n += 1
        return _json(ConsentRevoked(revoked=n))

    # -- GDPR erasure ------------------------------------------------------------------------

    async def erase(self, request: web.Request) -> web.Response:
        e164 = _number(request.match_info["number"], "number")
        q = _query(request, frozenset({"block_all"}))
        block_all = _bool_param(q, "block_all", False)
        sup = self.gate.suppression
        if sup is None:
            raise Unavailable("erasure needs the switch's erasure secret (no suppression set)")
        if self._flush_cdrs is not None:
            await self._flush_cdrs()  # CDRs still queued reach the table before the rewrite
        async with self._compliance_lock:
            replacement = sup.hash(e164)
            lists = self.gate.dnc.lookup(e164)
            scope = set(lists) | set(sup.scope(e164) or ()) | ({ALL} if block_all else set())
            # The database first: if it fails, memory still agrees with what is stored.
            rows = await self.store.erase_caller(number_forms(e164), replacement, sorted(scope))
            report = erase_caller(
                e164,
                suppression=sup,
                dnc=self.gate.dnc,
                consent=self.gate.consent,
                block_all=block_all,
            )
            sup.add(e164, scope)  # also when empty: the entry records that the number was erased
            await self._save_dnc(report.dnc_lists)
        logger.info("caller erased", extra={"hash": replacement, "cdrs": rows.cdrs})
        return _json(
            ErasureResult(
                hash=replacement,
                cdrs=rows.cdrs,
                consent_records=rows.consents,
                dnc_lists=report.dnc_lists,
                suppressed=sorted(scope),
            )
        )

    # -- OpenAPI -----------------------------------------------------------------------------

    async def openapi(self, request: web.Request) -> web.Response:
        return await openapi_handler(request)


# ----------------------------------------------------------------------------------------------
# Routes: the one table the app and /openapi.json are built from


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    schema: dict[str, Any]
    description: str
    required: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # under API_PREFIX
    name: str  # operationId and route name
    handler: Callable[[_Api], Handler]
    access: Access
    summary: str
    body: type[Any] | str | None = None  # a model, "patch:<Model>", "text" (DNC)
    response: type[Any] | None = None
    status: int = 200
    query: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()


def _h(name: str) -> Callable[[_Api], Handler]:
    return lambda api: cast(Handler, getattr(api, name))


def _k(name: str, kind: _Kind[Any]) -> Callable[[_Api], Handler]:
    return lambda api: cast(Handler, partial(getattr(api, name), kind))


_STR: Final = {"type": "string"}
_PAGING: Final = (
    Param("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, "page size (100)"),
    Param("cursor", _STR, "next_cursor of the previous page"),
)


def _crud(base: str, kind: _Kind[Any], access: Access, listing: type[Any]) -> list[Route]:
    model = kind.model
    item = f"{base}/{{id}}"
    n = kind.name
    return [
        Route("GET", base, f"list_{kind.table}", _k("list_objects", kind), access,
              f"List {kind.table}", None, listing),
        Route("POST", base, f"create_{n}", _k("create_object", kind), access,
              f"Create a {n}", model, model, 201, errors=(400, 409, 413, 415, 422)),
        Route("GET", item, f"get_{n}", _k("get_object", kind), access, f"Read a {n}",
              None, model),
        Route("PUT", item, f"put_{n}", _k("put_object", kind), access,
              f"Replace a {n} (the full object, id included)", model, model,
              errors=(400, 409, 413, 415, 422)),
        Route("PATCH", item, f"patch_{n}", _k("patch_object", kind), access,
              f"Change some fields of a {n} (RFC 7396 merge patch)", f"patch:{model.__name__}",
              model, errors=(400, 409, 413, 415, 422)),
        Route("DELETE", item, f"delete_{n}", _k("delete_object", kind), access,
              f"Delete a {n}", None, None, 204, errors=(409,)),
    ]  # fmt: skip


_BUYER = "/buyers/{buyer_id}"
ROUTES: Final[tuple[Route, ...]] = (
    *_crud("/trunks", TRUNKS, Access.ADMIN, TrunkList),
    *_crud("/campaigns", CAMPAIGNS, Access.ADMIN, CampaignList),
    Route("GET", "/buyers", "list_buyers", _h("list_buyers"), Access.BUYER,
          "List buyers (a buyer key sees only its own)", None, BuyerList),
    Route("POST", "/buyers", "create_buyer", _h("create_buyer"), Access.ADMIN,
          "Create a buyer, with endpoints and profiles; the answer shows its API key, once",
          Buyer, BuyerCreated, 201, errors=(400, 409, 413, 415, 422)),
    Route("GET", _BUYER, "get_buyer", _h("get_buyer"), Access.BUYER,
          "Read a buyer with its endpoints and profiles", None, BuyerView),
    Route("PUT", _BUYER, "put_buyer", _h("put_buyer"), Access.BUYER,
          "Replace a buyer's own fields; api_key rotates its key", BuyerUpdate, BuyerView,
          errors=(400, 409, 413, 415, 422)),
    Route("PATCH", _BUYER, "patch_buyer", _h("patch_buyer"), Access.BUYER,
          "Change some of a buyer's own fields (RFC 7396 merge patch)", "patch:BuyerUpdate",
          BuyerView, errors=(400, 409, 413, 415, 422)),
    Route("DELETE", _BUYER, "delete_buyer", _h("delete_buyer"), Access.ADMIN,
          "Delete a buyer with its endpoints and profiles", None, None, 204, errors=(409,)),
    *_crud(f"{_BUYER}/endpoints", ENDPOINTS, Access.BUYER, EndpointList),
    *_crud(f"{_BUYER}/profiles", PROFILES, Access.BUYER, ProfileList),
    Route("GET", "/calls", "list_calls", _h("list_calls"), Access.BUYER,
          "List CDRs newest first (a buyer key sees only its calls)", None, CallPage,
          query=(
              Param("from", {"type": "string", "format": "date-time"},
                    "received at or after (ISO 8601; naive is UTC)"),
              Param("to", {"type": "string", "format": "date-time"}, "received before"),
              Param("buyer_id", _STR, "the buyer that took the call"),
              Param("disposition", {"enum": [str(d) for d in Disposition]}, "outcome"),
              Param("campaign_id", _STR, "campaign"),
              Param("trunk_id", _STR, "seller trunk"),
              *_PAGING,
          ), errors=(422,)),
    Route("GET", "/calls/{call_id}", "get_call", _h("get_call"), Access.BUYER,
          "Read a CDR with its auction record", None, CallDetail),
    Route("POST", "/dnc", "import_dnc", _h("import_dnc"), Access.ADMIN,
          "Bulk-import a DNC list (text/plain or CSV; first column; streamed)", "text",
          DncImported, query=(
              Param("list", _STR, "list name, e.g. federal, internal", required=True),
              Param("source", _STR, "where the data came from (default: api)"),
              Param("merge", {"type": "boolean"}, "add to the list instead of replacing it"),
              Param("loaded_at", {"type": "string", "format": "date-time"},
                    "when the data was pulled (default now); staleness counts from here"),
              Param("max_age_days", _STR, "days before the list is stale (31), or none"),
          ), errors=(413, 415, 422)),
    Route("GET", "/dnc", "list_dnc", _h("list_dnc"), Access.ADMIN,
          "List the loaded DNC lists", None, DncLists),
    Route("GET", "/dnc/{number}", "lookup_dnc", _h("lookup_dnc"), Access.ADMIN,
          "Which DNC lists hold a number", None, DncLookup, errors=(422,)),
    Route("POST", "/consent", "create_consent", _h("create_consent"), Access.ADMIN,
          "Record a consent", ConsentIn, ConsentRecord, 201,
          errors=(400, 409, 413, 415, 422)),
    Route("GET", "/consent", "list_consent", _h("list_consent"), Access.ADMIN,
          "List consent records", None, ConsentList, query=(
              Param("caller", _STR, "the consumer's number"),
              Param("campaign_id", _STR, "campaign named by the consent"),
              *_PAGING,
          ), errors=(422,)),
    Route("DELETE", "/consent", "revoke_caller_consent", _h("revoke_caller_consent"),
          Access.ADMIN, "Revoke every live consent of a caller (kept as evidence)", None,
          ConsentRevoked, query=(
              Param("caller", _STR, "the consumer's number", required=True),
              Param("campaign_id", _STR, "only consents naming this campaign"),
          ), errors=(422,)),
    Route("GET", "/consent/{id}", "get_consent", _h("get_consent"), Access.ADMIN,
          "Read a consent record", None, ConsentRecord),
    Route("DELETE", "/consent/{id}", "revoke_consent", _h("revoke_consent"), Access.ADMIN,
          "Revoke a consent now (the record is kept as evidence)", None, ConsentRecord),
    Route("DELETE", "/callers/{number}", "erase_caller", _h("erase"), Access.ADMIN,
          "GDPR erasure: replace the number by a keyed hash in CDRs, auction records and "
          "consent; keep a hashed suppression entry", None, ErasureResult,
          query=(Param("block_all", {"type": "boolean"},
                       "also block the number on every call, not only its DNC lists"),),
          errors=(422, 503)),
    Route("GET", "/openapi.json", "openapi", _h("openapi"), Access.PUBLIC,
          "This document", None, None),
)  # fmt: skip
_ACCESS: Final = {r.name: r.access for r in ROUTES}


def build_api(
    store: Store,
    *,
    admin_token: str,
    on_change: Callable[[], Awaitable[None]],
    gate: Gate | None = None,
    wall: Callable[[], datetime],
    dnc_dir: Path | None = None,
    dnc_max_bytes: int = DNC_MAX_BODY,
    flush_cdrs: Callable[[], Awaitable[None]] | None = None,
) -> web.Application:
    """The admin API as an aiohttp application to mount at ``/api/v1`` (see ``mount_api``).

    Args:
        store: connected and migrated.
        admin_token: the bearer token that may do everything (DCE_ADMIN_TOKEN).
        on_change: awaited after every committed change to trunks, campaigns, buyers,
            endpoints or profiles; it should reload the exchange config into the switch.
        gate: the switch's compliance gate, whose DNC, consent and suppression stores the
            compliance routes change in place; None: a private gate (erasure answers 503).
        wall: UTC wall clock (consent times, DNC ``loaded_at``, staleness).
        dnc_dir: where DNC lists are saved (DCE_DATA_DIR/dnc); None keeps them in memory.
        dnc_max_bytes: the largest DNC import body.
        flush_cdrs: awaited before an erasure so that queued CDRs are in the table
            (``CdrWriter.flush``).
    """
    api = _Api(
        store,
        admin_token=admin_token,
        on_change=on_change,
        gate=gate,
        wall=wall,
        dnc_dir=dnc_dir,
        dnc_max_bytes=dnc_max_bytes,
        flush_cdrs=flush_cdrs,
    )
    app = web.Application(middlewares=[api.middleware])
    for r in ROUTES:
        app.router.add_route(r.method, r.path, r.handler(api), name=r.name)
    return app


def mount_api(root: web.Application, store: Store, **kwargs: Any) -> web.Application:
    """Mount ``build_api(store, **kwargs)`` at ``/api/v1`` and serve ``/openapi.json``."""
    api = build_api(store, **kwargs)
    root.add_subapp(API_PREFIX, api)
    root.router.add_get("/openapi.json", openapi_handler, allow_head=False)
    return api


async def load_compliance(store: Store, gate: Gate, erasure_secret: bytes) -> None:
    """Fill the gate from the database at start: consent records and erasure suppressions.

    Erased consent records (their caller is a hash) are left out: the gate looks consent up
    by number, and they can no longer match one.
    """
    from compliance.consent import ConsentStore
    from compliance.erasure import Suppression

    records = [r for r in await store.load_consents() if r.caller.startswith("+")]
    gate.consent = ConsentStore(records)
    gate.suppression = Suppression(erasure_secret, await store.load_suppressions())


# ----------------------------------------------------------------------------------------------
# OpenAPI 3.1, generated from the route table and the msgspec models

_REF = "#/components/schemas/{name}"
_ERROR_TEXT: Final = {
    400: "Malformed JSON",
    401: "No or unknown bearer token",
    403: "The route needs the admin token",
    404: "No such object (or another buyer's)",
    405: "Method not allowed",
    409: "Duplicate id, or the change conflicts with stored objects",
    413: "Body too large",
    415: "Wrong Content-Type",
    422: "Validation failed; detail names the field",
    503: "Not configured",
}


def _openapi() -> dict[str, Any]:
    models: list[Any] = [ErrorBody]
    for r in ROUTES:
        for t in (r.body, r.response):
            if isinstance(t, type) and t not in models:
                models.append(t)
    schemas, components = msgspec.json.schema_components(models, ref_template=_REF)
    ref = dict(zip(models, schemas, strict=True))
    error_ref = ref[ErrorBody]
    paths: dict[str, dict[str, Any]] = {}
    for r in ROUTES:
        full = API_PREFIX + r.path
        params = [
            {"name": p, "in": "path", "required": True, "schema": _STR}
            for p in re.findall(r"\{(\w+)\}", r.path)
        ]
        params += [
            {"name": p.name, "in": "query", "required": p.required, "schema": p.schema,
             "description": p.description}
            for p in r.query
        ]  # fmt: skip
        op: dict[str, Any] = {"operationId": r.name, "summary": r.summary}
        if params:
            op["parameters"] = params
        if r.access is not Access.PUBLIC:
            op["security"] = [{"bearer": []}]
        if r.body == "text":
            text = {"schema": {"type": "string"}}
            op["requestBody"] = {
                "required": True,
                "content": {"text/plain": text, "text/csv": text},
            }
        elif isinstance(r.body, str):
            model = r.body.removeprefix("patch:")
            patch = {
                "schema": {"type": "object", "description": f"merge patch of {model}"},
            }
            op["requestBody"] = {
                "required": True,
                "content": {"application/merge-patch+json": patch, "application/json": patch},
            }
        elif r.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref[r.body]}},
            }
        ok: dict[str, Any] = {"description": "OK" if r.status < 300 else "Done"}
        if r.response is not None:
            ok["content"] = {"application/json": {"schema": ref[r.response]}}
        elif r.name == "openapi":
            ok["content"] = {"application/json": {"schema": {"type": "object"}}}
        responses: dict[str, Any] = {str(r.status): ok}
        codes = set(r.errors)
        if r.access is not Access.PUBLIC:
            codes |= {401, 404}
        if r.access is Access.ADMIN:
            codes.add(403)
        for code in sorted(codes):
            responses[str(code)] = {
                "description": _ERROR_TEXT[code],
                "content": {"application/json": {"schema": error_ref}},
            }
        op["responses"] = responses
        paths.setdefault(full, {})[r.method.lower()] = op
    paths["/openapi.json"] = {"get": {**paths[API_PREFIX + "/openapi.json"]["get"],
                                      "operationId": "openapi_root"}}  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "DCE admin API",
            "version": "1",
            "description": "Trunks, campaigns, buyers and their endpoints and bid profiles; "
            "CDRs; DNC lists, consent records and GDPR erasure. Money is USD as decimal "
            "strings. Errors are {error, detail}.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


@functools.cache
def openapi_document() -> bytes:
    """The OpenAPI document as JSON (built on first use, then cached: it never changes)."""
    return _ENCODER.encode(_openapi())


async def openapi_handler(request: web.Request) -> web.Response:
    """GET /openapi.json (public: it holds no data)."""
    return web.Response(body=openapi_document(), content_type="application/json")
