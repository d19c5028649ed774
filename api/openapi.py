"""The OpenAPI 3.1 document of the admin API, and the same document as Markdown (docs/api.md).

Both are built from the route table the server mounts (``api.app.ROUTES``) and the msgspec
models, so neither can drift from the routes: ``document(routes)`` is what ``/openapi.json``
serves; ``markdown(routes)`` renders that document for people. ``python -m api.openapi``
prints the Markdown; docs/api.md is its output, and a test fails when the two differ.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from api.auth import Access
from api.bodies import MAX_BODY
from api.dnc import DNC_MAX_BODY
from api.errors import Invalid
from api.models import ErrorBody
from api.pagination import DEFAULT_PAGE, MAX_PAGE
from api.routes import API_PREFIX, STR, Route
from api.validation import MONEY_MAX, decode
from exchange.models import BidProfile

__all__ = ["document", "encode", "main", "markdown"]

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
_ENCODER = msgspec.json.Encoder()


def encode(doc: dict[str, Any]) -> bytes:
    """The document as the JSON /openapi.json serves."""
    return _ENCODER.encode(doc)


def document(routes: Sequence[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` (plain data, ready for JSON)."""
    models: list[Any] = [ErrorBody]
    for r in routes:
        for t in (r.body, r.response):
            if isinstance(t, type) and t not in models:
                models.append(t)
    schemas, components = msgspec.json.schema_components(models, ref_template=_REF)
    ref = dict(zip(models, schemas, strict=True))
    error_ref = ref[ErrorBody]
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        full = API_PREFIX + r.path
        params = [
            {"name": p, "in": "path", "required": True, "schema": STR}
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
profiles, CDRs, DNC lists, consent records and GDPR erasure. The server publishes the same
description as an OpenAPI 3.1 document at `/openapi.json` (and `{API_PREFIX}/openapi.json`);
this page is rendered from that document.

- [Authentication](#authentication)
- [Errors](#errors)
- [Request and response bodies](#request-and-response-bodies)
- [Money and times](#money-and-times)
- [Pagination](#pagination)
- [Routes](#routes), one by one
- [Schemas](#schemas) of the bodies

## Authentication

Every route except the OpenAPI document needs a bearer token (RFC 6750):
`Authorization: Bearer <token>`. There are two kinds of token.

- **The admin token** (`DCE_ADMIN_TOKEN`) may call every route.
- **A buyer key** may call the routes marked *buyer key* below, for its own buyer only: its
  buyer, its endpoints and profiles, and the calls it took. Another buyer's objects answer
  404, exactly as objects that do not exist; lists show only its own. The key is shown once,
  in the answer to `POST {API_PREFIX}/buyers` (it is generated unless the body gives
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
or `application/json`): the fields it names replace the stored ones, objects merge, and `null`
resets a field to its default. `PUT` replaces the whole object, id included (it must match
the path). `POST {API_PREFIX}/dnc` is the exception: its body is a text or CSV file of up to
{DNC_MAX_BODY} bytes by default, streamed.

Answers write every field, defaults included. Creating answers 201 with a `Location` header;
deleting answers 204 without a body.

## Money and times

Money is US dollars as a decimal string, such as `"10.500000"`: at most six decimals and at
most {MONEY_MAX}, never negative. Answers always write strings; send strings too, so that no
float rounding happens on the way. Times are ISO 8601 (RFC 3339); answers give UTC, as in
`"2026-11-23T15:00:00Z"`. A time in a query parameter without an offset is UTC.

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
        return out
    lo, hi = schema.get("minLength"), schema.get("maxLength")
    if lo is not None and hi is not None:
        out.append(f"{lo} to {hi} characters")
    elif hi is not None:
        out.append(f"at most {hi} characters")
    elif lo is not None:
        out.append(f"at least {lo} characters")
    if "pattern" in schema:
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
        if "$ref" in schema:
            name = _schema_name(schema["$ref"])
            lines += [f"Request body ({types}): {_link(name)}.", ""]
            lines += [*_fields(schemas[name]), ""]
        elif str(schema.get("description", "")).startswith("merge patch of "):
            name = schema["description"].removeprefix("merge patch of ")
            lines += [
                f"Request body ({types}): a merge patch of {_link(name)}, any of its fields "
                "(`null` resets one to its default).",
                "",
            ]
        else:
            lines += [f"Request body ({types}): {_type(schema)}.", ""]
    lines += ["Responses:", "", "| status | body | meaning |", "|---|---|---|"]
    for status, resp in op["responses"].items():
        content = resp.get("content", {}).get("application/json")
        if content is None:
            what = "none"
        elif content["schema"].get("$ref", "").endswith("/ErrorBody"):
            what = "[error](#errors)"
        else:
            what = _type(content["schema"])
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
