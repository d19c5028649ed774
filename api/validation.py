"""Validation of what the admin API reads: bodies, query parameters, and whole configs.

Four checks stand between a request and the store. ``check_input`` reads the plain JSON
against the model first: text must hold no control character (``TEXT_PATTERN``; path and
query values too, ``check_text``), decimals (money, percentages) must be strings matching
their pattern, never JSON numbers (exchange/models.py ``check_decimals``), and a merge patch
may name only the model's fields. msgspec then decodes the body into its model (types,
limits, unknown fields; one ``Decoder`` per type, built at import by the resource modules) and
``field_of`` turns its message into the field the 422 names. The ``check_*`` functions do what
the models cannot express (time zone, SIP URI, hours, money ceiling, CIDRs); ``CHECKED`` says
which fields they are, for /openapi.json (``x-checked``).
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
import msgspec.inspect as mi
from aiohttp import web
from yarl import URL

from api.errors import BadRequest, Conflict, Invalid
from compliance.errors import InvalidWindow
from compliance.hours import parse_window
from compliance.numbers import normalize
from exchange.auction_index import compile_index
from exchange.errors import ConfigInvalid
from exchange.models import (
    MONEY_PATTERN,
    BidProfile,
    Buyer,
    Campaign,
    Endpoint,
    ExchangeConfig,
    Trunk,
    check_decimals,
    map_leaves,
    typed_leaves,
)

__all__ = [
    "CHECKED",
    "DNC_NAME",
    "MONEY_MAX",
    "MONEY_PATTERN",
    "MULTILINE_FIELDS",
    "MULTILINE_PATTERN",
    "PATH_CHECKED",
    "PHONE_NUMBER",
    "SCHEMA_EXTRA",
    "TEXT_PATTERN",
    "bool_param",
    "check_buyer",
    "check_campaign",
    "check_endpoint",
    "check_input",
    "check_patch",
    "check_profile",
    "check_request_text",
    "check_sip_uri",
    "check_text",
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

# cdrs money columns are NUMERIC(12, 6): a larger amount could never be written to a CDR
# (exchange/models.py MONEY_PATTERN allows no more).
MONEY_MAX: Final = Decimal("999999.999999")
DNC_NAME: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")  # compliance/dnc.py's rule

# Text refuses the control characters (Unicode category Cc: C0, DEL and C1): a NUL cannot be
# stored in PostgreSQL at all, CR/LF would end a SIP or HTTP header line, and none belongs in
# a name, id or URL. Free text a person reads (a consent's disclosure) may hold TAB, LF, CR.
# ECMA-262 and Python read these escapes alike, so /openapi.json carries the same patterns.
TEXT_PATTERN: Final = r"^[^\u0000-\u001f\u007f-\u009f]*$"
MULTILINE_PATTERN: Final = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"
_CONTROL: Final = re.compile(r"[\u0000-\u001f\u007f-\u009f]")
_CONTROL_BUT_LINES: Final = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]")

PHONE_NUMBER: Final = "a phone number: E.164, or national in the US"
# What the server checks beyond /openapi.json's JSON Schema: (schema, property) -> the rule.
# openapi.py puts each on its property as "x-checked"; a schema-valid value can fail only
# these (422 naming the field), and tests/api/test_schemathesis.py holds the server to that.
CHECKED: Final[dict[tuple[str, str], str]] = {
    ("Trunk", "source_ips"): "each an IP address or CIDR",
    ("Trunk", "username"): "given together with password",
    ("Trunk", "password"): "given together with username",
    ("Trunk", "cps_burst"): "needs max_cps",
    ("CompliancePolicy", "hours_window"): "a window that parses (compliance/hours.py)",
    ("Endpoint", "uri"): "a sip: or sips: URI with a host and a port up to 65535",
    ("BidProfile", "campaign_id"): "a stored campaign",
    ("BidProfile", "timezone"): "an IANA time zone name",
    ("BidProfile", "hours"): "each range starts before it ends",
    ("BidProfile", "rtb_url"): "an http or https URL with a host",
    ("ConsentIn", "caller"): PHONE_NUMBER,
    ("ConsentIn", "campaign_id"): "a stored campaign",
    ("ConsentIn", "trunk_id"): "a stored trunk",
    ("ConsentIn", "revoked_at"): "not before granted_at",
}
# Path parameters checked the same way, by name.
PATH_CHECKED: Final[dict[str, str]] = {"number": PHONE_NUMBER}
# Limits the handlers check that the models do not carry: added to the property's schema in
# /openapi.json (to its non-null branches).
SCHEMA_EXTRA: Final[dict[tuple[str, str], dict[str, Any]]] = {
    ("Buyer", "api_key"): {"minLength": 16, "maxLength": 200},
    ("CompliancePolicy", "dnc_lists"): {"items": {"type": "string", "pattern": DNC_NAME.pattern}},
}
# Fields whose text may hold line breaks (MULTILINE_PATTERN), by (model, field).
MULTILINE_FIELDS: Final = frozenset({("ConsentIn", "disclosure")})

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
# Text and decimals in plain data


def check_text(value: str, field: str, *, lines: bool = False) -> None:
    """422 naming ``field`` when ``value`` holds a control character (TAB, LF, CR allowed
    with ``lines``)."""
    bad = (_CONTROL_BUT_LINES if lines else _CONTROL).search(value)
    if bad is not None:
        allowed = "; TAB, LF and CR are allowed" if lines else ""
        raise Invalid(
            field,
            f"control character U+{ord(bad.group()):04X} at position {bad.start()} is not "
            f"allowed in text{allowed}",
        )


def _is_text(t: mi.Type) -> bool:
    return isinstance(t.type if isinstance(t, mi.Metadata) else t, mi.StrType)


def _multiline_fields(kind: Any) -> frozenset[str]:
    """Encoded names of ``kind``'s fields that take MULTILINE_PATTERN text."""
    name = getattr(kind, "__name__", "")
    return frozenset(f for m, f in MULTILINE_FIELDS if m == name)


def check_input(data: Any, kind: Any) -> Any:
    """Plain JSON ``data`` for ``kind``: no control character in text, decimals as strings.

    Returns ``data`` with each integral number where ``kind`` wants an integer (``98.0``) as
    that integer: JSON has one number type, and JSON Schema's ``integer`` is any number
    without a fraction.

    Raises:
        Invalid: 422 naming the field.
    """
    try:
        check_decimals(data, kind, integers=False)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from exc
    lines = _multiline_fields(kind)
    for path, value, t in typed_leaves(data, kind):
        if isinstance(value, str) and _is_text(t):
            field = path.removeprefix("$").removeprefix(".")
            check_text(value, field, lines=field in lines)
    return map_leaves(data, kind, _integral)


def _integral(path: str, value: Any, t: mi.Type) -> Any:
    inner = t.type if isinstance(t, mi.Metadata) else t
    if isinstance(inner, mi.IntType) and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def check_patch(patch: dict[str, Any], kind: Any, at: str = "") -> None:
    """A merge patch of ``kind`` names only its fields, and nulls only those with a default
    (RFC 7396: null removes, and a required field cannot be removed); nested objects alike.

    Raises:
        Invalid: 422 naming the field.
    """
    info = mi.type_info(kind)
    assert isinstance(info, mi.StructType)
    fields = {f.encode_name: f for f in info.fields}
    for key, value in patch.items():
        name = join(at, key)
        f = fields.get(key)
        if f is None:
            raise Invalid(name, f"unknown field; expected one of {sorted(fields)}")
        if value is None and f.required:
            raise Invalid(name, "required: it cannot be removed (null)")
        nested = _struct_of(f.type)
        if nested is not None and isinstance(value, dict):
            check_patch(value, nested, name)


def _struct_of(t: mi.Type) -> type[Any] | None:
    """The struct class a field holds (alone or in a union with None), if any."""
    if isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.StructType):
        return t.cls
    if isinstance(t, mi.UnionType):
        return next((b.cls for b in t.types if isinstance(b, mi.StructType)), None)
    return None


# ----------------------------------------------------------------------------------------------
# Decoding

_DECODE_ANY = msgspec.json.Decoder()


def _json(body: bytes) -> Any:
    try:
        return _DECODE_ANY.decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequest(str(exc), error="malformed JSON") from exc


def decode(decoder: msgspec.json.Decoder[_T], body: bytes) -> _T:
    """``body`` decoded; 400 when it is not JSON, 422 naming the field when it does not fit
    (``check_input``, then the model)."""
    data = check_input(_json(body), decoder.type)
    return convert(data, decoder.type)  # type: ignore[no-any-return]


def decode_patch(body: bytes, kind: Any) -> dict[str, Any]:
    """A merge-patch body for ``kind``: a JSON object naming only fields of ``kind``, with
    text and numbers as ``check_input`` wants them (``convert`` the merged result)."""
    raw = _json(body)
    if not isinstance(raw, dict):
        raise Invalid("", f"Expected `object`, got `{type(raw).__name__}`")
    check_patch(raw, kind)
    patch: dict[str, Any] = check_input(raw, kind)
    return patch


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


_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")  # RFC 3986 scheme, as switch/uri.py


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
        if sep and rest and _SCHEME.fullmatch(scheme):
            raise Invalid(field, f"not a SIP URI: Unsupported URI Scheme {scheme[:20]!r}")
        raise Invalid(field, f"not a SIP URI: malformed URI {text[:80]!r}")
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
    # ASCII digits only: int() would also read other scripts' digits.
    if port and (not (port.isascii() and port.isdigit()) or int(port) > 65535):
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
    """The query string as a dict; 422 for a parameter not in ``allowed`` or given twice (and,
    as for every request, one holding a control character: ``check_request_text``)."""
    out: dict[str, str] = {}
    for key, value in request.query.items():
        if key not in allowed:
            raise Invalid(key, f"unknown query parameter; expected one of {sorted(allowed)}")
        if key in out:
            raise Invalid(key, "given more than once")
        out[key] = value
    return out


def check_request_text(request: web.Request) -> None:
    """422 naming the parameter when a path or query value (or query name) holds a control
    character: run for every authenticated request, before its handler."""
    for name, value in request.match_info.items():
        check_text(value, name)
    for key, value in request.query.items():
        check_text(key, key)
        check_text(value, key)


_INTEGER: Final = re.compile(r"[+-]?[0-9]+")


def int_param(q: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    text = q.get(name)
    if text is None:
        return default
    # Digits with an optional sign: int() would also take spaces, "1_000" and other scripts.
    if not _INTEGER.fullmatch(text):
        raise Invalid(name, f"expected an integer, got {text[:40]!r}")
    value = int(text)
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
