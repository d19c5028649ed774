"""The OpenAPI 3.1 document of the admin API, and the same document as Markdown (docs/api.md).

Both are built from the route table the server mounts (``api.app.ROUTES``) and the msgspec
models, so neither can drift from the routes: ``document(routes)`` is what ``/openapi.json``
serves; ``markdown(routes)`` renders that document for people. ``python -m api.openapi``
prints the Markdown; docs/api.md is its output, and a test fails when the two differ.

The document says what the server accepts, no more and no less (tests/api/test_schemathesis.py
holds the server to it): msgspec's schemas get what the handlers check beyond the models
(api/validation.py): the text pattern on every request string without one of its own,
``format: date-time`` on times, the extra limits of ``SCHEMA_EXTRA``, and ``x-checked`` on the
fields whose rule JSON Schema cannot say (``CHECKED``). A merge patch has its own schema
(``TrunkPatch``): every field optional, ``null`` only where the field has a default.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from typing import Any, Final

import msgspec
import msgspec.inspect as mi

from api.auth import Access
from api.bodies import MAX_BODY
from api.dnc import DNC_BODY_RULE, DNC_MAX_BODY
from api.errors import Invalid
from api.models import ErrorBody
from api.pagination import DEFAULT_PAGE, MAX_PAGE
from api.routes import API_PREFIX, STR, Route
from api.validation import (
    CHECKED,
    MONEY_MAX,
    MONEY_PATTERN,
    MULTILINE_FIELDS,
    MULTILINE_PATTERN,
    PATH_CHECKED,
    SCHEMA_EXTRA,
    TEXT_PATTERN,
    decode,
)
from exchange.models import BidProfile

__all__ = ["document", "encode", "main", "markdown"]

_REF = "#/components/schemas/{name}"
_ERROR_TEXT: Final = {
    400: "Malformed JSON",
    401: "No or unknown bearer token",
    403: "The route needs the admin token",
    404: "No such object (or another buyer's)",
    405: "Method not allowed",
    409: "Duplicate id, an id that is not the path's, or a conflict with stored objects",
    413: "Body too large",
    415: "Wrong Content-Type",
    422: "Validation failed; detail names the field",
    503: "Not configured",
}
_ENCODER = msgspec.json.Encoder()
_DNC_BODY: Final = "phone numbers, one a line (CSV: the first column); bad lines are counted"


def encode(doc: dict[str, Any]) -> bytes:
    """The document as the JSON /openapi.json serves."""
    return _ENCODER.encode(doc)


# ----------------------------------------------------------------------------------------------
# Schemas: msgspec's, plus what the handlers check (module docstring)


def _structs(models: Sequence[Any]) -> dict[str, mi.StructType]:
    """Every struct type reachable from ``models``, by component name."""
    out: dict[str, mi.StructType] = {}

    def visit(t: mi.Type) -> None:
        if isinstance(t, mi.Metadata):
            visit(t.type)
        elif isinstance(t, mi.StructType):
            if t.cls.__name__ not in out:
                out[t.cls.__name__] = t
                for f in t.fields:
                    visit(f.type)
        elif isinstance(t, mi.UnionType):
            for b in t.types:
                visit(b)
        elif isinstance(t, mi.ListType | mi.SetType | mi.VarTupleType):
            visit(t.item_type)
        elif isinstance(t, mi.DictType):
            visit(t.value_type)

    for t in mi.multi_type_info(models):
        visit(t)
    return out


def _is_datetime(t: mi.Type) -> bool:
    if isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.UnionType):
        return any(_is_datetime(b) for b in t.types)
    return isinstance(t, mi.DateTimeType)


def _literal_keys(t: mi.Type) -> list[Any] | None:
    """The keys a ``dict[Literal[...], ...]`` field (alone or with None) takes, sorted."""
    if isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.UnionType):
        return next((k for b in t.types if (k := _literal_keys(b)) is not None), None)
    if isinstance(t, mi.DictType) and isinstance(t.key_type, mi.LiteralType):
        return sorted(t.key_type.values)
    return None


def _text(schema: dict[str, Any], pattern: str) -> None:
    """Give every plain string inside ``schema`` the text ``pattern`` (in place)."""
    for branch in schema.get("anyOf", ()):
        _text(branch, pattern)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _text(schema[key], pattern)
    plain = not any(k in schema for k in ("pattern", "format", "enum", "const"))
    if schema.get("type") == "string" and plain:
        schema["pattern"] = pattern


def _reachable(names: list[str], components: dict[str, Any]) -> set[str]:
    """Component names reachable from ``names`` through $refs."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += [_schema_name(r) for r in _refs(components[name])]
    return seen


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return out + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    branches = schema["anyOf"] if "anyOf" in schema and len(schema) == 1 else [schema]
    if any(b.get("type") == "null" for b in branches):
        return {"anyOf": branches}
    return {"anyOf": [*branches, {"type": "null"}]}


def _patch_value(schema: dict[str, Any]) -> dict[str, Any]:
    """What a merge patch may put where ``schema`` is: objects are patches themselves."""
    if "$ref" in schema:
        return {"$ref": schema["$ref"] + "Patch"}
    if "anyOf" in schema:
        return {**schema, "anyOf": [_patch_value(b) for b in schema["anyOf"]]}
    if schema.get("type") == "object" and isinstance(schema.get("additionalProperties"), dict):
        values = _nullable(_patch_value(schema["additionalProperties"]))
        return {**schema, "additionalProperties": values}
    return schema


_MERGE_REQUIRED: Final = "required when nothing is stored here to merge into"


def _patch(name: str, schema: dict[str, Any], nested: bool) -> dict[str, Any]:
    """The merge-patch schema of component ``name`` (RFC 7396): any of its fields; ``null``
    resets one that has a default; a nested object's required field is needed only when
    nothing is stored there to merge into."""
    required = set(schema.get("required", ()))
    props: dict[str, Any] = {}
    for field, prop in schema["properties"].items():
        extra = {k: v for k, v in prop.items() if k in ("description", "x-checked")}
        value = _patch_value({k: v for k, v in prop.items() if k not in ("default", "x-checked")})
        if field not in required:
            value = {**_nullable(value), **extra}
        elif nested:
            value = {**value, **extra, "x-checked": _MERGE_REQUIRED}
        else:
            value = {**value, **extra}
        props[field] = value
    return {
        "title": f"{name}Patch",
        "description": f"A merge patch (RFC 7396) of {name}: any of its fields; null resets "
        "a field to its default, objects merge field by field.",
        "type": "object",
        "properties": props,
        "additionalProperties": False,
    }


def _schemas(routes: Sequence[Route]) -> tuple[dict[Any, dict[str, Any]], dict[str, Any]]:
    """The schema of each body model (a $ref) and the components, completed (module doc)."""
    models: list[Any] = [ErrorBody]
    patched: list[str] = []
    for r in routes:
        for t in (r.body, r.response):
            if isinstance(t, type) and t not in models:
                models.append(t)
        if isinstance(r.body, str) and r.body.startswith("patch:"):
            patched.append(r.body.removeprefix("patch:"))
    schemas, components = msgspec.json.schema_components(models, ref_template=_REF)
    ref = dict(zip(models, schemas, strict=True))
    structs = _structs(models)
    for name, struct in structs.items():
        props = components[name]["properties"]
        for f in struct.fields:
            branches = props[f.encode_name].get("anyOf", [props[f.encode_name]])
            if _is_datetime(f.type):
                for branch in branches:
                    if branch.get("type") == "string":
                        branch["format"] = "date-time"
            keys = _literal_keys(f.type)
            if keys is not None:  # msgspec leaves out which keys a dict[Literal, ...] takes
                for branch in branches:
                    if branch.get("type") == "object":
                        branch["propertyNames"] = {"enum": keys}
    requests = [_schema_name(ref[r.body]["$ref"]) for r in routes if isinstance(r.body, type)]
    for name in sorted(_reachable(requests + patched, components)):
        for field, prop in components[name]["properties"].items():
            for branch in prop.get("anyOf", [prop]):
                if branch.get("type") != "null":
                    branch.update(SCHEMA_EXTRA.get((name, field), {}))
            multiline = (name, field) in MULTILINE_FIELDS
            _text(prop, MULTILINE_PATTERN if multiline else TEXT_PATTERN)
            if (name, field) in CHECKED:
                prop["x-checked"] = CHECKED[name, field]
    top = set(patched)
    for name in sorted(_reachable(patched, components)):
        components[f"{name}Patch"] = _patch(name, components[name], nested=name not in top)
    return ref, components


def _param_schema(schema: dict[str, Any], checked: str = "") -> dict[str, Any]:
    out = dict(schema)
    _text(out, TEXT_PATTERN)
    if checked:
        out["x-checked"] = checked
    return out


def document(routes: Sequence[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` (plain data, ready for JSON)."""
    ref, components = _schemas(routes)
    error_ref = ref[ErrorBody]
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        full = API_PREFIX + r.path
        params = [
            {
                "name": p,
                "in": "path",
                "required": True,
                "schema": _param_schema(STR, PATH_CHECKED.get(p, "")),
            }
            for p in re.findall(r"\{(\w+)\}", r.path)
        ]
        params += [
            {"name": p.name, "in": "query", "required": p.required,
             "schema": _param_schema(p.schema, p.checked), "description": p.description}
            for p in r.query
        ]  # fmt: skip
        op: dict[str, Any] = {"operationId": r.name, "summary": r.summary}
        if params:
            op["parameters"] = params
        if r.access is not Access.PUBLIC:
            op["security"] = [{"bearer": []}]
        if r.body == "text":
            # No JSON type: any bytes are a text body (the importer rejects lines, not types).
            text = {"schema": {"description": _DNC_BODY, "x-checked": DNC_BODY_RULE}}
            op["requestBody"] = {
                "required": True,
                "content": {"text/plain": text, "text/csv": text},
            }
        elif isinstance(r.body, str):
            model = r.body.removeprefix("patch:")
            patch = {"schema": {"$ref": _REF.format(name=f"{model}Patch")}}
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
        for alt in r.alt_types:  # a text body (e.g. CSV) that a query parameter asks for
            ok.setdefault("content", {})[alt] = {"schema": {"type": "string"}}
        responses: dict[str, Any] = {str(r.status): ok}
        codes = set(r.errors)
        if r.access is not Access.PUBLIC:
            # 422 too: a path or query value with a control character (check_request_text).
            codes |= {401, 404, 422}
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
            "live calls; CDRs; DNC lists, consent records and GDPR erasure. Money is USD as "
            "decimal strings. Errors are {error, detail}.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


# ----------------------------------------------------------------------------------------------
# Markdown: the same document, for people (docs/api.md)

_WHO: Final = {
    Access.PUBLIC: "anyone, no token",
    Access.ADMIN: "admin token",
    Access.BUYER: "admin token, or the buyer's key (its own objects only)",
}
_WHO_SHORT: Final = {Access.PUBLIC: "public", Access.ADMIN: "admin", Access.BUYER: "buyer key"}


def _example_error() -> dict[str, Any]:
    """The body of a real 422: what the API answers for ``"caps": {"daily": "ten"}``."""
    try:
        decode(
            msgspec.json.Decoder(BidProfile), b'{"id": "p1", "bid": "1", "caps": {"daily": "ten"}}'
        )
    except Invalid as exc:
        return {"error": exc.error, "detail": exc.detail}
    raise AssertionError("the example body decoded")  # pragma: no cover


def _intro() -> str:
    """The part of docs/api.md that is not per route: auth, errors, bodies, money, pages."""
    texts = {**_ERROR_TEXT, 500: "A bug, or the database is unreachable; the server logs it"}
    errors = "\n".join(f"| {code} | {text} |" for code, text in sorted(texts.items()))
    example = json.dumps(_example_error(), indent=2)
    return f"""\
# DCE admin API

<!-- Generated by `.venv/bin/python -m api.openapi > docs/api.md` (api/openapi.py) from the
route table the server mounts; tests/api/test_openapi.py fails when this file is stale. -->

JSON over HTTP under `{API_PREFIX}`: trunks, campaigns, buyers with their endpoints and bid
profiles, live calls (listed, and hung up by the operator), CDRs, DNC lists, consent records
and GDPR erasure. The server publishes the same
description as an OpenAPI 3.1 document at `/openapi.json` (and `{API_PREFIX}/openapi.json`);
this page is rendered from that document.

- [Authentication](#authentication)
- [Errors](#errors)
- [Request and response bodies](#request-and-response-bodies)
- [Text](#text)
- [Money and times](#money-and-times)
- [Pagination](#pagination)
- [Routes](#routes), one by one
- [Schemas](#schemas) of the bodies

## Authentication

Every route except the OpenAPI document needs a bearer token (RFC 6750):
`Authorization: Bearer <token>`. There are two kinds of token.

- **The admin token** (`DCE_ADMIN_TOKEN`) may call every route.
- **A buyer key** may call the routes marked *buyer key* below, for its own buyer only: its
  buyer, its endpoints and profiles, the calls it took and its live calls. Another buyer's
  objects answer 404, exactly as objects that do not exist; lists show only its own. The key
  is shown once, in the answer to `POST {API_PREFIX}/buyers` (it is generated unless the body gives
  `api_key`); only its hash is stored. `api_key` in `PUT` or `PATCH
  {API_PREFIX}/buyers/{{buyer_id}}` replaces it, and the old key stops working at once.

No token, another scheme or an unknown token: 401 with a `WWW-Authenticate: Bearer` header. A
buyer key on a route for the admin token only: 403.

## Errors

Every error answer has the same JSON body ([`ErrorBody`](#schema-errorbody)):

```json
{example}
```

`error` says what went wrong in a few words; `detail` gives the specifics: null, a string,
or an object. A 422 names the field that failed, relative to the body (`caps.daily`,
`profiles[0].timezone`) or the query parameter (`limit`). A 409 about another stored object
names it as a path (`buyers/b7/profiles/p1.campaign_id`).

| status | meaning |
|---|---|
{errors}

A 405 carries an `Allow` header with the methods the path does take.

## Request and response bodies

Request bodies are JSON (`Content-Type: application/json`) of at most {MAX_BODY} bytes
(1 MiB): a larger one is 413, another content type 415, a body that is not JSON 400. Unknown
fields are errors (422). `PATCH` takes an RFC 7396 merge patch (`application/merge-patch+json`
or `application/json`; its schema is the model's name plus `Patch`): the fields it names
replace the stored ones, objects merge, and `null` resets a field to its default (a required
field cannot be reset: 422). `PUT` replaces the whole object, id included: a body whose `id`
is not the one in the path is 409, as is a patch that changes `id`. `POST {API_PREFIX}/dnc` is
the exception: its body is a text or CSV file of up to {DNC_MAX_BODY} bytes by default,
streamed.

Answers write every field, defaults included. Creating answers 201 with a `Location` header;
deleting answers 204 without a body.

The schemas below say what the server accepts. A few rules JSON Schema cannot express (a
known time zone, a phone number, an object that must exist) are marked *checked* in the
limits column (`x-checked` in `/openapi.json`): a value that fits the schema can fail only
those, with a 422 naming the field.

## Text

Text must not contain control characters (Unicode category Cc): U+0000 to U+001F, U+007F
and U+0080 to U+009F. That holds for every string in a request body, in the path and in the
query string (parameter names too) of every route but `/openapi.json`: one with a control
character is 422 naming the field or parameter, and nothing is stored. A NUL can never be
stored in PostgreSQL, CR and LF would end a SIP or HTTP header line, and none belongs in a
name, an id or a URL. The one exception is free text meant to be read: a consent's
`disclosure` may contain TAB, LF and CR. Every string field without a pattern of its own has
this one (*text* in the limits below):

    {TEXT_PATTERN}

and `disclosure` this one (*text with line breaks*):

    {MULTILINE_PATTERN}

Text is otherwise any Unicode. A JSON escape of a lone surrogate (`"\\ud800"`) is not a
character at all: 400, as malformed JSON.

## Money and times

Money is US dollars as a decimal string, such as `"10.50"`: digits, at most six decimals,
at most {MONEY_MAX}, never negative, no sign, exponent or spaces:

    {MONEY_PATTERN}

A JSON number is refused (422 naming the field, asking for a string): `5.5` may already
have been rounded to a binary float on its way, and even `5` is refused so that the rule
has no exception. A percentage (`payout_share`) is a decimal string too, 0 to 100. Answers
always write strings. Times are RFC 3339 with an offset (`format: date-time`); answers give
UTC, as in `"2026-11-23T15:00:00Z"`. A time in a query parameter without an offset is UTC.

## Pagination

`GET {API_PREFIX}/calls` and `GET {API_PREFIX}/consent` answer one page at a time: `limit`
(1 to {MAX_PAGE}, default {DEFAULT_PAGE}) items, and `next_cursor`. Pass `next_cursor` as
`cursor`, with the same filters, for the next page; it is null on the last page. A cursor is
opaque and stays valid: the pages follow the sort order (CDRs newest first, consent records
by id), so rows written while you walk neither repeat nor go missing. The other lists come
whole.
"""


def _cell(text: str) -> str:
    """``text`` fit for a Markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _paragraphs(text: str) -> str:
    """A docstring as Markdown paragraphs: each re-flowed onto one line."""
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n") if p.strip())


def _schema_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _link(name: str) -> str:
    return f"[`{name}`](#schema-{name.lower()})"


def _type(schema: dict[str, Any]) -> str:
    """A JSON schema as a few words: ``string``, ``array of [`Endpoint`](...)``."""
    if "$ref" in schema:
        return _link(_schema_name(schema["$ref"]))
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    if "enum" in schema:
        return "one of " + ", ".join(f"`{v}`" for v in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object (values: {_type(schema['additionalProperties'])})"
    if kind == "string" and schema.get("format") == "decimal":
        return "decimal string"
    if kind == "string" and "format" in schema:
        return f"string ({schema['format']})"
    return str(kind) if kind is not None else "any"


def _limits(schema: dict[str, Any]) -> list[str]:
    """The constraints of a schema, in words (those of items and values too)."""
    out: list[str] = []
    if "anyOf" in schema:
        for branch in schema["anyOf"]:
            out += _limits(branch)
        if "x-checked" in schema:
            out.append(f"checked: {schema['x-checked']}")
        return out
    lo, hi = schema.get("minLength"), schema.get("maxLength")
    if lo is not None and hi is not None:
        out.append(f"{lo} to {hi} characters")
    elif hi is not None:
        out.append(f"at most {hi} characters")
    elif lo is not None:
        out.append(f"at least {lo} characters")
    if schema.get("pattern") == TEXT_PATTERN:
        out.append("[text](#text)")
    elif schema.get("pattern") == MULTILINE_PATTERN:
        out.append("[text](#text) with line breaks")
    elif "pattern" in schema:
        out.append(f"matches `{schema['pattern']}`")
    if "minimum" in schema:
        out.append(f">= {schema['minimum']}")
    if "exclusiveMinimum" in schema:
        out.append(f"> {schema['exclusiveMinimum']}")
    if "maximum" in schema:
        out.append(f"<= {schema['maximum']}")
    if "minItems" in schema:
        out.append(f"at least {schema['minItems']} items")
    if "maxItems" in schema:
        out.append(f"at most {schema['maxItems']} items")
    if "x-checked" in schema:
        out.append(f"checked: {schema['x-checked']}")
    if schema.get("type") == "array":
        out += [f"each {x}" for x in _limits(schema.get("items", {}))]
    values = schema.get("additionalProperties")
    if isinstance(values, dict):
        out += [f"values {x}" for x in _limits(values)]
    return out


def _json(value: Any) -> str:
    return _ENCODER.encode(value).decode()


def _fields(schema: dict[str, Any]) -> list[str]:
    """A table of an object schema's fields: type, required or default, limits."""
    required = set(schema.get("required", ()))
    lines = ["| field | type | required | default | limits |", "|---|---|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        default = f"`{_json(prop['default'])}`" if "default" in prop else ""
        need = "yes" if name in required else "no"
        cells = (f"`{name}`", _type(prop), need, default, "; ".join(_limits(prop)))
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _operation(
    method: str, path: str, op: dict[str, Any], access: Access, schemas: dict[str, Any]
) -> list[str]:
    lines = [f'<a id="{op["operationId"]}"></a>', "", f"### `{method.upper()} {path}`", ""]
    lines += [f"{op['summary']}.", ""]
    lines += [f"Who may call it: {_WHO[access]}. Operation id: `{op['operationId']}`.", ""]
    params = op.get("parameters", [])
    if params:
        lines += ["Parameters:", ""]
        lines += ["| name | in | type | required | description |", "|---|---|---|---|---|"]
        for p in params:
            cells = (
                f"`{p['name']}`",
                p["in"],
                _type(p["schema"]) + "".join(f"; {x}" for x in _limits(p["schema"])),
                "yes" if p["required"] else "no",
                p.get("description", ""),
            )
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        lines.append("")
    body = op.get("requestBody")
    if body is not None:
        types = ", ".join(f"`{t}`" for t in body["content"])
        schema = next(iter(body["content"].values()))["schema"]
        if "$ref" in schema and schema["$ref"].endswith("Patch"):
            patch = _schema_name(schema["$ref"])
            lines += [
                f"Request body ({types}): {_link(patch)}, a merge patch of "
                f"{_link(patch.removesuffix('Patch'))}: any of its fields (`null` resets one to "
                "its default).",
                "",
                *_fields(schemas[patch]),
                "",
            ]
        elif "$ref" in schema:
            name = _schema_name(schema["$ref"])
            lines += [f"Request body ({types}): {_link(name)}.", ""]
            lines += [*_fields(schemas[name]), ""]
        else:
            what = schema.get("description") or _type(schema)
            checked = f" (checked: {schema['x-checked']})" if "x-checked" in schema else ""
            lines += [f"Request body ({types}): {what}{checked}.", ""]
    lines += ["Responses:", "", "| status | body | meaning |", "|---|---|---|"]
    for status, resp in op["responses"].items():
        content = resp.get("content", {}).get("application/json")
        if content is None:
            what = "none"
        elif content["schema"].get("$ref", "").endswith("/ErrorBody"):
            what = "[error](#errors)"
        else:
            what = _type(content["schema"])
        others = [f"`{t}`" for t in resp.get("content", {}) if t != "application/json"]
        if others:
            what += ", or " + ", ".join(others)
        lines.append(f"| {status} | {_cell(what)} | {_cell(resp['description'])} |")
    lines.append("")
    return lines


def markdown(routes: Sequence[Route]) -> str:
    """``document(routes)`` as Markdown: the intro, every route, every schema (docs/api.md)."""
    doc = document(routes)
    access = {r.name: r.access for r in routes}
    schemas: dict[str, Any] = doc["components"]["schemas"]
    ops = [
        (method, path, op)
        for path, methods in doc["paths"].items()
        for method, op in methods.items()
    ]

    def who(op: dict[str, Any]) -> Access:
        if "security" not in op:
            return Access.PUBLIC
        return access[op["operationId"]]

    lines = [_intro(), "## Routes", ""]
    lines += ["| method | path | who | what |", "|---|---|---|---|"]
    for method, path, op in ops:
        link = f"[`{path}`](#{op['operationId']})"
        cells = (method.upper(), link, _WHO_SHORT[who(op)], op["summary"])
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines.append("")
    for method, path, op in ops:
        lines += _operation(method, path, op, who(op), schemas)
    lines += ["## Schemas", ""]
    for name, schema in schemas.items():
        lines += [f'<a id="schema-{name.lower()}"></a>', "", f"### {name}", ""]
        if schema.get("description"):
            lines += [_paragraphs(schema["description"]), ""]
        lines += [*_fields(schema), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    """``python -m api.openapi``: print docs/api.md."""
    from api.app import ROUTES  # here, not at import: api.app imports this module

    sys.stdout.write(markdown(ROUTES))


if __name__ == "__main__":
    main()
