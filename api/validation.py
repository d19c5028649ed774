"""Validation of what the admin API reads: bodies, query parameters, and whole configs.

Three checks stand between a request and the store. msgspec decodes the body into its model
(types, limits, unknown fields; one ``Decoder`` per type, built at import by the resource
modules) and ``field_of`` turns its message into the field the 422 names. The ``check_*``
functions do what the models cannot express (time zone, SIP URI, hours, money ceiling, CIDRs).
``validate_candidate`` compiles the whole candidate config, what is stored with the change
applied, with ``exchange.auction_index.compile_index`` exactly as the switch will: an error inside
the written object is 422 naming its field, one elsewhere is 409.

The SIP URI check reads ``sip:``/``sips:`` URIs as switch/uri.py's ``SipUri.parse`` does
(RFC 3261 §19.1.1), without importing the switch: tests/api/test_validation.py keeps the two
in step.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from aiohttp import web
from yarl import URL

from api.errors import BadRequest, Conflict, Invalid
from compliance.errors import InvalidWindow
from compliance.hours import parse_window
from compliance.numbers import normalize
from exchange.auction_index import compile_index
from exchange.errors import ConfigInvalid
from exchange.models import BidProfile, Buyer, Campaign, Endpoint, ExchangeConfig, Trunk

__all__ = [
    "DNC_NAME",
    "MONEY_MAX",
    "bool_param",
    "check_buyer",
    "check_campaign",
    "check_endpoint",
    "check_profile",
    "check_sip_uri",
    "check_trunk",
    "convert",
    "decode",
    "decode_patch",
    "field_of",
    "int_param",
    "join",
    "merge_patch",
    "parse_time",
    "phone_number",
    "query_params",
    "validate_candidate",
]

# cdrs money columns are NUMERIC(12, 6): a larger amount could never be written to a CDR.
MONEY_MAX: Final = Decimal("999999.999999")
DNC_NAME: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")  # compliance/dnc.py's rule

_T = TypeVar("_T")

# ----------------------------------------------------------------------------------------------
# Field naming

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


def join(prefix: str, name: str) -> str:
    """``prefix`` and ``name`` as one field path: ``profiles[0]`` + ``bid``, ``a`` + ``[1]``."""
    if not prefix:
        return name
    if not name:
        return prefix
    return f"{prefix}{name}" if name.startswith("[") else f"{prefix}.{name}"


def _invalid(exc: msgspec.ValidationError) -> Invalid:
    message = str(exc)
    return Invalid(field_of(message), message)


# ----------------------------------------------------------------------------------------------
# Decoding

# Merge patches: JSON numbers become Decimal from their text, so money stays exact.
_DECODE_PATCH = msgspec.json.Decoder(dict[str, Any], float_hook=Decimal)


def decode(decoder: msgspec.json.Decoder[_T], body: bytes) -> _T:
    """``body`` decoded; 400 when it is not JSON, 422 naming the field when it does not fit."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from exc
    except msgspec.DecodeError as exc:
        raise BadRequest(str(exc), error="malformed JSON") from exc


def decode_patch(body: bytes) -> dict[str, Any]:
    """A merge-patch body: a JSON object (its numbers as Decimal)."""
    return decode(_DECODE_PATCH, body)


def convert(obj: Any, kind: type[_T]) -> _T:
    """Plain data (a patched object) as ``kind``; 422 naming the field when it does not fit."""
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
            raise Invalid(join(at, f"source_ips[{i}]"), f"not an IP or CIDR: {net!r}") from exc


def check_campaign(c: Campaign, at: str = "") -> None:
    _check_money(c.reserve, join(at, "reserve"))
    try:
        parse_window(c.compliance.hours_window)
    except InvalidWindow as exc:
        raise Invalid(join(at, "compliance.hours_window"), str(exc)) from exc
    for i, name in enumerate(c.compliance.dnc_lists):
        if not DNC_NAME.match(name):
            raise Invalid(
                join(at, f"compliance.dnc_lists[{i}]"),
                f"DNC list name {name!r} must match {DNC_NAME.pattern}",
            )


def check_sip_uri(uri: str, field: str) -> None:
    """422 unless ``uri`` is a ``sip:`` or ``sips:`` URI the switch can dial.

    Reads it as ``SipUri.parse`` does: the scheme before the first ``:``; headers after ``?``
    and userinfo up to the last ``@`` set aside; then host[:port] up to the first ``;``, where
    the host is required and the port is decimal and at most 65535 (RFC 3261 §19.1.1).
    """
    text = uri.strip()
    scheme, sep, rest = text.partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in ("sip", "sips", "tel"):
        raise Invalid(field, f"not a SIP URI: unsupported URI scheme in {text[:80]!r}")
    if scheme == "tel":
        raise Invalid(field, f"expected a sip: or sips: URI, got {uri!r}")
    hostport = rest.partition("?")[0].rpartition("@")[2].partition(";")[0].strip()
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise Invalid(field, f"not a SIP URI: unterminated IPv6 reference in {text[:80]!r}")
        host = hostport[1:end]
        after = hostport[end + 1 :]
        port = after[1:] if after.startswith(":") else ""
    else:
        host, _, port = hostport.partition(":")
    if not host:
        raise Invalid(field, f"not a SIP URI: missing host in {text[:80]!r}")
    # isdecimal: exactly the characters int() reads as digits.
    if port and (not port.isdecimal() or int(port) > 65535):
        raise Invalid(field, f"not a SIP URI: bad port {port[:10]!r} in {text[:80]!r}")


def check_endpoint(e: Endpoint, at: str = "") -> None:
    check_sip_uri(e.uri, join(at, "uri"))


def check_profile(p: BidProfile, at: str = "") -> None:
    _check_money(p.bid, join(at, "bid"))
    _check_money(p.caps.budget_daily, join(at, "caps.budget_daily"))
    _check_money(p.caps.budget_monthly, join(at, "caps.budget_monthly"))
    try:
        ZoneInfo(p.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise Invalid(join(at, "timezone"), f"unknown time zone {p.timezone!r}") from exc
    for day, ranges in (p.hours or {}).items():
        for i, text in enumerate(ranges):
            start, _, end = text.partition("-")
            if start == end:
                raise Invalid(join(at, f"hours.{day}[{i}]"), f"empty time range {text!r}")
    if p.rtb_url is not None:
        try:
            url = URL(p.rtb_url)
        except ValueError as exc:
            raise Invalid(join(at, "rtb_url"), f"not a URL: {p.rtb_url!r}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise Invalid(join(at, "rtb_url"), f"expected an http(s) URL, got {p.rtb_url!r}")


def check_buyer(b: Buyer) -> None:
    if b.api_key is not None and not 16 <= len(b.api_key) <= 200:
        raise Invalid("api_key", "an API key has 16 to 200 characters")
    for i, e in enumerate(b.endpoints):
        check_endpoint(e, f"endpoints[{i}]")
    for i, p in enumerate(b.profiles):
        check_profile(p, f"profiles[{i}]")


# ----------------------------------------------------------------------------------------------
# The whole candidate config

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
            raise Invalid(join("", f[len(prefix) :].removeprefix(".")), exc.message) from exc
        raise Conflict(
            {"field": _readable(candidate, f), "message": exc.message},
            error="the change conflicts with stored objects",
        ) from exc


# ----------------------------------------------------------------------------------------------
# Query parameters and path values


def query_params(request: web.Request, allowed: frozenset[str]) -> dict[str, str]:
    """The query string as a dict; 422 for a parameter not in ``allowed`` or given twice."""
    out: dict[str, str] = {}
    for key, value in request.query.items():
        if key not in allowed:
            raise Invalid(key, f"unknown query parameter; expected one of {sorted(allowed)}")
        if key in out:
            raise Invalid(key, "given more than once")
        out[key] = value
    return out


def int_param(q: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
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


def bool_param(q: dict[str, str], name: str, default: bool) -> bool:
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


def phone_number(text: str, name: str) -> str:
    """``text`` as E.164; 422 naming ``name`` when it is not a phone number."""
    e164 = normalize(text)
    if e164 is None:
        raise Invalid(name, f"not a phone number: {text!r}")
    return e164
